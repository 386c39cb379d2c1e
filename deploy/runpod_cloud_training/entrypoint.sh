#!/usr/bin/env bash
# Pod entrypoint: repo bootstrap, Python env sync, SSH keys, then the services, each under a
# supervisor. An optional service that dies is logged and restarted with backoff; it never
# takes the others (or the pod) down — the 2026-02-26 restart loop came from exactly that.
set -uo pipefail

RUNPOD_TRAINING_DIR=${RUNPOD_TRAINING_DIR:-/opt/runpod_cloud_training}
# shellcheck source=deploy/runpod_cloud_training/lib.sh
. "$RUNPOD_TRAINING_DIR/lib.sh"
LOG_TAG=entrypoint

: "${REPO_URL:=}"
: "${REPO_REF:=main}"
: "${REPO_SEED_DIR:=/opt/chess-bot}"
: "${CLONE_REPO_ON_START:=1}"
: "${GIT_AUTO_PULL:=0}"
: "${SYNC_REQUIREMENTS_ON_START:=1}"
: "${FORCE_PIP_SYNC:=0}"
: "${START_SSHD:=1}"
: "${START_JUPYTER:=1}"
: "${START_INFERENCE_API:=1}"
: "${START_HF_WATCH:=0}"
: "${START_IDLE_WATCHDOG:=0}"
# Minutes this pod may run per boot before it stops itself (pod-cycle --max-minutes /
# --max-cost); empty: no spend guard.
: "${SPEND_GUARD_MINUTES:=}"
: "${AUTHORIZED_KEYS:=}"
: "${PUBLIC_KEY:=}"
: "${SSHD_BIN:=/usr/sbin/sshd}"
: "${SSHD_PORT:=22}"
: "${SSHD_LISTEN_ADDRESS:=0.0.0.0}"
: "${SSH_HOST_KEY_DIR:=/etc/ssh}"
: "${SSHD_CONFIG_FILE:=/etc/ssh/sshd_config.d/pod.conf}"
: "${SSHD_PID_FILE:=/run/sshd.pid}"
: "${SSHD_STRICT_MODES:=yes}"
: "${SSHD_AUTHORIZED_KEYS_FILE:=.ssh/authorized_keys}"
: "${SSH_AUTHORIZED_KEYS_FILES:=/root/.ssh/authorized_keys /home/runner/.ssh/authorized_keys}"
: "${SSH_CREATE_RUNNER_USER:=1}"
: "${JUPYTER_PORT:=8888}"
: "${SUPERVISE_MAX_BACKOFF:=60}"

mkdir -p "$POD_LOG_DIR"
STOP_FLAG="$POD_LOG_DIR/.stopping"
rm -f "$STOP_FLAG"
SUPERVISORS=()
STOPPING=0

alive() {
  local pid
  for pid in "$@"; do
    kill -0 "$pid" 2>/dev/null && return 0
  done
  return 1
}

on_term() {
  STOPPING=1
  trap '' TERM INT
  : >"$STOP_FLAG"
  log "stopping: ending services"
  [ -z "${IDLE_SLEEP_PID:-}" ] || kill -TERM "$IDLE_SLEEP_PID" 2>/dev/null
  local pid deadline
  for pid in "${SUPERVISORS[@]}"; do
    kill -TERM "$pid" 2>/dev/null
  done
  # Up to 10 s by the clock for a clean exit (docker stop's grace), then force whatever is
  # left: a stop must stop. Not a count of sleeps: a loaded machine stretches each one.
  deadline=$((SECONDS + 10))
  while alive "${SUPERVISORS[@]}" && ((SECONDS < deadline)); do
    sleep 0.1
  done
  for pid in "${SUPERVISORS[@]}"; do
    pkill -KILL -P "$pid" 2>/dev/null
    kill -KILL "$pid" 2>/dev/null
  done
  kill -TERM 0 2>/dev/null
  phase_event pod_lifetime end stopped
  exit 0
}
trap on_term TERM INT

# supervise NAME CMD...: run CMD forever; log each exit and restart with exponential backoff
# (reset after a minute of healthy running). TERM ends the service and the loop.
supervise() {
  local name=$1
  shift
  (
    STOP=0
    child=""
    trap 'STOP=1; [ -z "$child" ] || kill -TERM "$child" 2>/dev/null' TERM
    backoff=1
    while [ "$STOP" = 0 ] && [ ! -e "$STOP_FLAG" ]; do
      started=$SECONDS
      log "service $name: starting"
      "$@" >>"$POD_LOG_DIR/$name.log" 2>&1 &
      child=$!
      [ "$STOP" = 0 ] || kill -TERM "$child" 2>/dev/null
      wait "$child"
      rc=$?
      while [ "$STOP" = 1 ] && kill -0 "$child" 2>/dev/null; do
        wait "$child"
      done
      [ "$STOP" = 0 ] && [ ! -e "$STOP_FLAG" ] || break
      # The container log (what RunPod's UI and `inv pod.logs` show) names the cause.
      last=$(redacted "$(tail -n 1 "$POD_LOG_DIR/$name.log" 2>/dev/null)")
      log "service $name: exited with code $rc (log: $POD_LOG_DIR/$name.log); restarting in" \
        "${backoff}s; its last output: ${last:-none}"
      sleep "$backoff" &
      child=$!
      wait "$child"
      child=""
      if [ $((SECONDS - started)) -gt 60 ]; then
        backoff=1
      else
        backoff=$((backoff * 2 > SUPERVISE_MAX_BACKOFF ? SUPERVISE_MAX_BACKOFF : backoff * 2))
      fi
    done
    exit 0
  ) &
  SUPERVISORS+=($!)
}

# redacted TEXT: TEXT with the values of the pod's secrets masked, for a line copied into the
# container log (a crashed service's last words may quote one).
redacted() {
  local text=$1 name value
  for name in RUNPOD_API_KEY HF_TOKEN JUPYTER_PASSWORD; do
    value=${!name:-}
    value=${value//[$'\n\r']/}
    [ "${#value}" -lt 4 ] || text=${text//"$value"/***}
  done
  printf '%s' "$text"
}

# A URL as it may be logged: without the user:token@ of a private repo's clone URL (git
# hides it in its own messages; the container log is read by inv pod.logs).
without_credentials() {
  printf '%s' "$1" | sed -E 's#^([A-Za-z][A-Za-z0-9+.-]*://)[^/@]*@#\1#'
}

# A private repo's user:token@ out of the checkout's origin: git clone keeps the URL it was
# given in .git/config, a file every user of the pod reads, on /workspace, the volume that
# outlives the pod.
forget_credentials() {
  local url bare
  url=$(git -C "$REPO_DIR" remote get-url origin 2>/dev/null) || return 0
  bare=$(without_credentials "$url")
  [ "$bare" = "$url" ] || git -C "$REPO_DIR" remote set-url origin "$bare"
}

bootstrap_repo() {
  phase_event repo_bootstrap start
  if [ "$CLONE_REPO_ON_START" != "1" ] || [ -z "$REPO_URL" ]; then
    if [ -z "$(ls -A "$REPO_DIR" 2>/dev/null)" ] && [ -d "$REPO_SEED_DIR" ]; then
      log "repo: clone on start disabled or REPO_URL unset; seeding $REPO_DIR from the image"
      mkdir -p "$REPO_DIR" && cp -a "$REPO_SEED_DIR/." "$REPO_DIR/"
    else
      log "repo: clone on start disabled or REPO_URL unset; using $REPO_DIR as it is"
    fi
  elif [ ! -e "$REPO_DIR" ] || [ -z "$(ls -A "$REPO_DIR" 2>/dev/null)" ]; then
    log "repo: cloning $(without_credentials "$REPO_URL") ($REPO_REF) into $REPO_DIR"
    if ! git clone --branch "$REPO_REF" "$REPO_URL" "$REPO_DIR"; then
      log "repo: clone FAILED; services that need the repo will be retried with backoff." \
        "Check REPO_URL/REPO_REF and network access"
      phase_event repo_bootstrap end clone_failed
      return 0
    fi
    forget_credentials
  elif git -C "$REPO_DIR" rev-parse --git-dir >/dev/null 2>&1; then
    forget_credentials  # a checkout an older image made kept them
    if [ "$GIT_AUTO_PULL" = "1" ]; then
      log "repo: updating $REPO_DIR to $REPO_REF"
      # The URL's token, if any, for these commands only (origin holds the URL without it).
      local with=() bare
      bare=$(without_credentials "$REPO_URL")
      [ "$bare" = "$REPO_URL" ] || with=(-c "url.$REPO_URL.insteadOf=$bare")
      if ! { git -C "$REPO_DIR" "${with[@]}" fetch --quiet origin "$REPO_REF" &&
        git -C "$REPO_DIR" checkout --quiet "$REPO_REF" &&
        git -C "$REPO_DIR" "${with[@]}" pull --quiet --ff-only origin "$REPO_REF"; }; then
        log "repo: update FAILED (local changes or diverged?); keeping the checkout as it is"
      fi
    fi
  else
    log "repo: REPO_DIR=$REPO_DIR exists and is NOT a git checkout; not cloning over it." \
      "Use a fresh REPO_DIR (e.g. /workspace/chess-bot-\$RUNPOD_POD_ID) or empty that folder"
    phase_event repo_bootstrap end not_a_git_checkout
    return 0
  fi
  phase_event repo_bootstrap end ok
}

sync_requirements() {
  [ "$SYNC_REQUIREMENTS_ON_START" = "1" ] || { log "python: requirement sync disabled"; return 0; }
  phase_event requirements_sync start
  local req="$REPO_DIR/deploy/runpod_cloud_training/requirements-pod.txt"
  [ -f "$req" ] || req="$RUNPOD_TRAINING_DIR/requirements-pod.txt"
  if [ ! -x "$VENV_DIR/bin/python" ]; then
    log "python: creating $VENV_DIR (with the image's site packages, so torch is shared)"
    python3 -m venv --system-site-packages "$VENV_DIR" || {
      log "python: venv creation FAILED; using the system python"
      phase_event requirements_sync end venv_failed
      return 0
    }
  fi
  local stamp="$VENV_DIR/.requirements.sha256" want
  want=$(sha256sum "$req" | cut -d' ' -f1)
  if [ "$FORCE_PIP_SYNC" != "1" ] && [ "$(cat "$stamp" 2>/dev/null)" = "$want" ]; then
    log "python: requirements unchanged; skipping pip"
    phase_event requirements_sync end unchanged
    return 0
  fi
  if "$VENV_DIR/bin/python" -m pip install -q -r "$req"; then
    printf '%s\n' "$want" >"$stamp"
    phase_event requirements_sync end ok
  else
    log "python: pip install FAILED for $req; services will report what is missing"
    phase_event requirements_sync end pip_failed
  fi
}

install_keys() {
  local keys
  # One key a line: accept real newlines and literal \n separators, drop CRs and blanks.
  keys=$(printf '%s\n%s\n' "$AUTHORIZED_KEYS" "$PUBLIC_KEY" | sed 's/\\n/\n/g' | tr -d '\r' |
    sed 's/^[[:space:]]*//; s/[[:space:]]*$//' | grep -E '^(ssh|ecdsa|sk)-' | awk '!seen[$0]++')
  if [ -z "$keys" ]; then
    log "ssh: no AUTHORIZED_KEYS or PUBLIC_KEY given; key login will fail"
  fi
  if [ "$(id -u)" = 0 ] && [ "$SSH_CREATE_RUNNER_USER" = "1" ]; then
    id runner >/dev/null 2>&1 || useradd -m -s /bin/bash runner
    # Unlocked ('*' is no password, not locked) so sshd accepts its keys;
    # PasswordAuthentication stays off.
    usermod -p '*' runner
  fi
  # One file per line, or (no line break) separated by spaces: a local pod's paths may hold
  # spaces (a checkout under "My Projects"), so it gives them a line each.
  local file files
  if [[ "$SSH_AUTHORIZED_KEYS_FILES" == *$'\n'* ]]; then
    mapfile -t files <<<"$SSH_AUTHORIZED_KEYS_FILES"
  else
    read -r -a files <<<"$SSH_AUTHORIZED_KEYS_FILES"
  fi
  for file in "${files[@]}"; do
    [ -n "$file" ] || continue
    mkdir -p "$(dirname "$file")" && chmod 700 "$(dirname "$file")"
    printf '%s\n' "$keys" >"$file" && chmod 600 "$file"
    case "$file" in
      /home/runner/*)
        if [ "$(id -u)" = 0 ] && id runner >/dev/null 2>&1; then
          chown -R runner:runner "$(dirname "$file")"
        fi ;;
    esac
  done
  log "ssh: installed $(printf '%s' "$keys" | grep -c .) key(s) into: ${files[*]}"
}

# A value for sshd_config, double-quoted (sshd splits an unquoted one at whitespace), with
# its backslashes and double quotes escaped.
sshd_quote() {
  local value=${1//\\/\\\\}
  printf '"%s"' "${value//\"/\\\"}"
}

# One NAME=VALUE of sshd_config's SetEnv, quoted whole (older sshd reads a quote only at the
# start of an argument).
setenv_item() {
  printf ' %s' "$(sshd_quote "$1=$2")"
}

write_sshd_config() {
  local key="$SSH_HOST_KEY_DIR/ssh_host_ed25519_key"
  mkdir -p "$SSH_HOST_KEY_DIR" "$(dirname "$SSHD_CONFIG_FILE")"
  [ -f "$key" ] || ssh-keygen -q -t ed25519 -N "" -f "$key"
  [ "$(id -u)" != 0 ] || mkdir -p /run/sshd
  {
    printf 'Port %s\nListenAddress %s\nHostKey %s\nPidFile %s\n' \
      "$SSHD_PORT" "$SSHD_LISTEN_ADDRESS" "$(sshd_quote "$key")" "$(sshd_quote "$SSHD_PID_FILE")"
    # One file (quoted, so a path with a space stays one; the default is relative to home).
    printf 'AuthorizedKeysFile %s\nStrictModes %s\n' \
      "$(sshd_quote "$SSHD_AUTHORIZED_KEYS_FILE")" "$SSHD_STRICT_MODES"
    printf 'PubkeyAuthentication yes\nPasswordAuthentication no\n'
    printf 'KbdInteractiveAuthentication no\nPermitRootLogin prohibit-password\nUsePAM no\n'
    printf 'Subsystem sftp internal-sftp\nLogLevel INFO\nMaxStartups 50\n'
    # SSH sessions see the pod's paths, so host-side commands need no per-pod knowledge.
    printf 'SetEnv'
    setenv_item REPO_DIR "$REPO_DIR"
    setenv_item VENV_DIR "$VENV_DIR"
    setenv_item RUNPOD_TRAINING_DIR "$RUNPOD_TRAINING_DIR"
    setenv_item RUNPOD_PHASE_TIMING_LOG "$RUNPOD_PHASE_TIMING_LOG"
    setenv_item POD_LOG_DIR "$POD_LOG_DIR"
    setenv_item RUNPOD_POD_ID "${RUNPOD_POD_ID:-unknown}"
    # A local pod's SSH sessions log in as a user of the host, whose home sshd would take
    # from the host's passwd: they get the pod's own home and /tmp, as a container's do.
    if [ -n "${POD_CYCLE_LOCAL_POD:-}" ]; then
      setenv_item POD_CYCLE_LOCAL_POD "$POD_CYCLE_LOCAL_POD"
      setenv_item HOME "$HOME"
      [ -z "${TMPDIR:-}" ] || setenv_item TMPDIR "$TMPDIR"
    fi
    [ -z "${NETWORK_VOLUME_DIR:-}" ] || setenv_item NETWORK_VOLUME_DIR "$NETWORK_VOLUME_DIR"
    # A cluster node's rendezvous env (RunPod sets it for the container, not for SSH
    # sessions), for the train preset's torchrun. WORLD_SIZE is left out on purpose: a plain
    # python -m chessbot.train started over SSH must never inherit a world size above 1.
    # And the container's CPU thread limits: without them a training started over SSH runs
    # one OpenMP thread per core, which spin-wait whenever the cores are shared.
    local name
    for name in PRIMARY_ADDR PRIMARY_PORT MASTER_ADDR MASTER_PORT NODE_ADDR NODE_RANK \
      NUM_NODES NUM_TRAINERS OMP_NUM_THREADS MKL_NUM_THREADS; do
      [ -z "${!name:-}" ] || setenv_item "$name" "${!name}"
    done
    printf '\n'
  } >"$SSHD_CONFIG_FILE"
}

start_services() {
  local py
  py=$(pick_python)
  phase_event services_start start
  if [ "$START_SSHD" = "1" ]; then
    install_keys
    write_sshd_config
    supervise sshd "$SSHD_BIN" -D -e -f "$SSHD_CONFIG_FILE"
  fi
  if [ "$START_JUPYTER" = "1" ]; then
    # RunPod's convention: a pod created with startJupyter gets JUPYTER_PASSWORD, its
    # Jupyter's password (Jupyter's JUPYTER_TOKEN: through the environment, never on a
    # command line). Without one, Jupyter makes a token and writes it to its own log.
    local jupyter=("$py" -m jupyter lab --ip=0.0.0.0 --port="$JUPYTER_PORT" --no-browser
      --allow-root --ServerApp.root_dir="${WORKSPACE_DIR:-/workspace}")
    if [ -n "${JUPYTER_PASSWORD:-}" ]; then
      JUPYTER_TOKEN=$JUPYTER_PASSWORD supervise jupyter "${jupyter[@]}"
    else
      log "jupyter: no JUPYTER_PASSWORD set; its token is in $POD_LOG_DIR/jupyter.log"
      supervise jupyter "${jupyter[@]}"
    fi
  fi
  if [ "$START_INFERENCE_API" = "1" ]; then
    supervise inference_api env PYTHONPATH="$REPO_DIR" "$py" -m chessbot.api
  fi
  if [ "$START_HF_WATCH" = "1" ]; then
    if [ -n "${HF_REPO:-}" ]; then
      supervise hf_watch "$py" "$RUNPOD_TRAINING_DIR/hf_watch.py"
    else
      log "hf watch: HF_REPO is not set; skipping (set HF_REPO and HF_TOKEN to upload checkpoints)"
    fi
  fi
  if [ "$START_IDLE_WATCHDOG" = "1" ]; then
    supervise idle_watchdog "$py" "$RUNPOD_TRAINING_DIR/idle_watchdog.py"
  fi
  phase_event services_start end ok
}

# The spend guard first, before the repo's clone and the pip sync (either can stall on the
# network for as long as it likes, git has no timeout of its own): it needs neither, and a
# pod that bills while it waits on them is what it is for.
start_spend_guard() {
  [ -n "$SPEND_GUARD_MINUTES" ] || return 0
  log "spend guard: this pod stops itself $SPEND_GUARD_MINUTES minute(s) after boot" \
    "(${SPEND_GUARD_REASON:-its budget})"
  supervise spend_guard "$(pick_python)" "$RUNPOD_TRAINING_DIR/spend_guard.py"
}

phase_event pod_lifetime start
# The spend guard counts from here (a restarted guard keeps the same deadline) and writes its
# decisive lines to the container log as well as to its own.
POD_BOOT_EPOCH=$(date +%s)
export POD_BOOT_EPOCH
open_container_log
log "pod ${RUNPOD_POD_ID:-?} starting (REPO_DIR=$REPO_DIR, training dir $RUNPOD_TRAINING_DIR)"
start_spend_guard
bootstrap_repo
sync_requirements
cd "$REPO_DIR" 2>/dev/null || log "repo: $REPO_DIR is missing; staying in $(pwd)"
start_services
log "services started; supervising"
while [ "$STOPPING" = 0 ]; do
  sleep 3600 &
  IDLE_SLEEP_PID=$!
  wait "$IDLE_SLEEP_PID"
done
