#!/usr/bin/env bash
# Shared helpers for the pod scripts: logging, phase timings (JSONL), the Python to use.
# Every path comes from an env var with the image's default, so the same scripts run in a
# local pod rooted elsewhere.

: "${REPO_DIR:=/workspace/chess-bot}"
: "${RUNPOD_TRAINING_DIR:=/opt/runpod_cloud_training}"
: "${VENV_DIR:=/opt/venv}"
: "${POD_LOG_DIR:=/var/log/pod}"
: "${RUNPOD_PHASE_TIMING_ENABLED:=1}"
: "${RUNPOD_PHASE_TIMING_LOG:=${REPO_DIR}/artifacts/timings/runpod_phase_times.jsonl}"
export REPO_DIR RUNPOD_TRAINING_DIR VENV_DIR POD_LOG_DIR RUNPOD_PHASE_TIMING_ENABLED \
  RUNPOD_PHASE_TIMING_LOG

# Builtins only (no forks) in log and phase_event: they run inside signal-handling loops.
log() {
  local now
  TZ=UTC printf -v now '%(%Y-%m-%dT%H:%M:%SZ)T' -1
  printf '%s [%s] %s\n' "$now" "${LOG_TAG:-pod}" "$*" >&2
}

# The container log (the entrypoint's stderr: what RunPod's UI and `inv pod.logs` show) on a
# descriptor of its own, for a service to write its decisive lines to (CONTAINER_LOG, through
# /proc/<pid>/fd/N). Not fd 2 itself: for every `cmd 2>/dev/null` the shell runs, fd 2 points
# at /dev/null, and a line a service wrote at that moment was lost.
# Without an fd 2 (closed by whoever started the entrypoint) there is no container log: the
# services keep their own logs (`command`: a failed redirection must not end the shell).
open_container_log() {
  if command exec {CONTAINER_LOG_FD}>&2; then
    CONTAINER_LOG="/proc/$$/fd/$CONTAINER_LOG_FD"
  else
    CONTAINER_LOG=""
  fi
  export CONTAINER_LOG
}

# json_str VAR TEXT: VAR becomes TEXT as a JSON string (backslash, quote, newline, carriage
# return and tab escaped), by builtins alone.
json_str() {
  local s=$2
  s=${s//\\/\\\\}
  s=${s//\"/\\\"}
  s=${s//$'\n'/\\n}
  s=${s//$'\r'/\\r}
  s=${s//$'\t'/\\t}
  printf -v "$1" '"%s"' "$s"
}

declare -A PHASE_STARTED=()

# phase_event PHASE start|end [status]: one JSON line per event in RUNPOD_PHASE_TIMING_LOG.
phase_event() {
  [ "$RUNPOD_PHASE_TIMING_ENABLED" = "1" ] || return 0
  local phase=$1 event=$2 status=${3:-ok} now elapsed="" line value folder
  printf -v now '%s' "$(( ${EPOCHREALTIME/[.,]/} / 1000 ))"
  if [ "$event" = "start" ]; then
    PHASE_STARTED[$phase]=$now
  elif [ -n "${PHASE_STARTED[$phase]:-}" ]; then
    elapsed=$(( now - PHASE_STARTED[$phase] ))
  fi
  folder=.
  [[ $RUNPOD_PHASE_TIMING_LOG != */* ]] || folder=${RUNPOD_PHASE_TIMING_LOG%/*}
  [ -d "${folder:-/}" ] || mkdir -p "${folder:-/}" 2>/dev/null || return 0
  json_str value "$phase"
  line="{\"ts_ms\":$now,\"phase\":$value"
  json_str value "$event"
  line+=",\"event\":$value"
  if [ "$event" != "start" ]; then
    json_str value "$status"
    line+=",\"status\":$value"
  fi
  [ -z "$elapsed" ] || printf -v line '%s,"elapsed_s":%s.%03d' "$line" "$((elapsed / 1000))" \
    "$((elapsed % 1000))"
  json_str value "${RUNPOD_POD_ID:-}"
  printf '%s,"pod_id":%s}\n' "$line" "$value" >>"$RUNPOD_PHASE_TIMING_LOG" 2>/dev/null || true
}

pick_python() {
  if [ -x "$VENV_DIR/bin/python" ]; then
    printf '%s' "$VENV_DIR/bin/python"
  else
    command -v python3 || command -v python
  fi
}

# check_run_token [claim]: RUN_TOKEN (the host's run: its id and when its run folder was
# made) against the one the run's folder here records, $RUN_OUT/.control/run.token. A folder
# that an earlier run of the same id left (a network volume outlives runs and pods) is not
# this run's: nothing in it may be kept, resumed, followed or collected for this one. With
# `claim`, a folder that records none becomes this run's. Returns 90 (said on stderr) for
# another run's folder; 0 for this run's, or when no RUN_TOKEN is given (an older host).
check_run_token() {
  [ -n "${RUN_TOKEN:-}" ] || return 0
  local file=$RUN_OUT/.control/run.token owner
  owner=$(cat "$file" 2>/dev/null || true)
  if [ -n "$owner" ] && [ "$owner" != "$RUN_TOKEN" ]; then
    log "this run's folder $RUN_OUT was made by another run of its id ($owner, not this" \
      "run's $RUN_TOKEN): its checkpoint and model are not this run's"
    return 90
  fi
  if [ -z "$owner" ] && [ "${1:-}" = claim ]; then
    mkdir -p "$RUN_OUT/.control" && printf '%s\n' "$RUN_TOKEN" >"$file.tmp" \
      && mv "$file.tmp" "$file"
  fi
  return 0
}
