#!/usr/bin/env bash
# The cycle's train step on the pod. One trainer per run: the trainer is started detached (it
# outlives this SSH session) holding a lock in the run's folder; a later call while it still
# runs attaches to it (follows its log) instead of starting a second writer. When it ends, the
# infer_move smoke (started beside it, so Python loads while the pod trains; it runs the
# network in numpy, without torch) answers.
#   RUN_OUT          the run's folder on the pod (artifacts go to $RUN_OUT/run_artifacts)
#   RUN_TOKEN        the host's run (its id and when its run folder was made): a RUN_OUT made
#                    by another run of the same id is refused (90), one that records none
#                    becomes this run's (lib.sh check_run_token)
#   DATASET_DIR      the pushed dataset;  DATASET_SHA256  its fingerprint
#   REUSE_FINISHED   1: keep a training of this run that already finished on this pod with this
#                    dataset and settings (the host did not see it end; a cluster's other node
#                    keeps its part, the primary holds the model), else go on from its last
#                    checkpoint (TRAIN_RESUME=auto); 0: train anew (default)
#   ATTACH_ONLY      1: a reconnect after a lost connection, or a cluster's other node whose
#                    primary keeps its training: follow the running trainer or keep its
#                    finished training, never start one (a trainer that died meanwhile is
#                    reported, with its exit code, or 87 when it left none)
#   CYCLE_NODE_RANK  on a cluster: this node's rank (0 = the primary, where global rank 0 writes
#                    the artifacts and the infer_move smoke runs; other nodes skip the smoke)
#   TRAIN_ACTION     "stop": end this run's trainer on this node at once (its whole process
#                    group: TERM, then KILL after STOP_GRACE_SECONDS, default 5) and exit 0
#                    once every process holding the trainer lock is gone (the cluster's gang
#                    failure: one node failed, the others must not wait out their timeouts);
#                    "status": say whether this run's trainer runs here ("running", exit 0),
#                    finished well ("finished", exit 0) or neither ("ended ...", exit 3): a
#                    cluster node reached again after a lost connection is asked first; with
#                    KEEPS=1 and the train's settings, "finished" only for a training a train
#                    with REUSE_FINISHED=1 keeps (these settings, its model here): a cluster's
#                    primary is asked so before a train step, and its answer decides the others
#   and the train preset's settings (EPOCHS, BATCH_SIZE, MODEL_*, TRAIN_EXTRA_ARGS, ...).
# Exit codes (the host reads them: podcycle/cycle.py):
#   0     trained (or a finished training of this run was kept) and the infer_move smoke passed
#   1-85  the trainer's own exit code: training failed (its log: $RUN_OUT/run_artifacts/train.log)
#   2     bad setup: RUN_OUT/DATASET_DIR missing, REPO_DIR absent, folders not writable
#   86    the trainer succeeded but the infer_move smoke on its model failed
#   87    the trainer ended without an exit code (it was killed, e.g. by the OOM killer)
#   88    this call's output went away (its SSH session died) while the trainer goes on alone
#   89    the trainer failed, or ended without an exit code, with the disk of RUN_OUT full
#         (under DISK_FULL_BELOW_KB free, default 1024): it could not write its checkpoint,
#         its log, or even its exit code, which looked like a kill for want of memory
#   90    RUN_OUT was made by another run of the same id (RUN_TOKEN): an earlier run's folder
#         on a network volume, whose checkpoint and model are not this run's; nothing started
# A trainer of this run found running with other settings than this call's (trainer.key:
# the dataset and every setting above) is followed to its end, never joined by a second one,
# and a line (on stderr, as every log line) says OTHER_SETTINGS_LINE; so does a reconnect
# (ATTACH_ONLY) that finds such a trainer finished. The host then records that training's
# settings as the run's, and says the model is that training's, not one of those it asked.
set -uo pipefail
RUNPOD_TRAINING_DIR=${RUNPOD_TRAINING_DIR:-/opt/runpod_cloud_training}
# shellcheck source=deploy/runpod_cloud_training/lib.sh
. "$RUNPOD_TRAINING_DIR/lib.sh"
LOG_TAG=cycle_train
OTHER_SETTINGS_LINE="the trainer running on this pod was started with other settings than this train's"

: "${RUN_OUT:?RUN_OUT is required}"
: "${TRAIN_ACTION:=train}"
: "${CYCLE_NODE_RANK:=0}"

# What the training is: the dataset and every setting the trainer reads. A finished training
# is kept only for the same (a new run on a pod found by its name, or other settings, train
# again instead of keeping another training's model).
training_key() {
  printf '%s\n' "${DATASET_SHA256:-unknown}" "${EPOCHS:-}" "${BATCH_SIZE:-}" "${LR:-}" \
    "${MODEL_BLOCKS:-}" "${MODEL_CHANNELS:-}" "${TRAIN_EXTRA_ARGS:-}" "${TRAIN_DEVICE:-}" \
    "${NPROC:-}" "${NUM_NODES:-}" | sha256sum | cut -c1-64
}

# The last trainer (trainer.rc and trainer.key are its own) ended well, and on the primary
# (which writes it) its model is there.
ended_well_with_model() {
  [ "$(cat "$RUN_OUT/.control/trainer.rc" 2>/dev/null)" = 0 ] \
    && { [ "$CYCLE_NODE_RANK" != 0 ] || [ -s "$RUN_OUT/run_artifacts/model.pt" ]; }
}

# The last trainer's key is another training's (other dataset or settings than these).
trained_other() {
  local key
  key=$(cat "$RUN_OUT/.control/trainer.key" 2>/dev/null) && [ -n "$key" ] \
    && [ "$key" != "$(training_key)" ]
}

# A finished training of this run that a train with REUSE_FINISHED=1 keeps: it ended well,
# with these settings, and on the primary its model is there. Another node is told by the
# host whether to keep its part: the primary's KEEPS=1 status decides.
finished_here() {
  ended_well_with_model \
    && [ "$(cat "$RUN_OUT/.control/trainer.key" 2>/dev/null)" = "$(training_key)" ]
}

# A failed trainer on a full disk (df's available KiB for RUN_OUT under DISK_FULL_BELOW_KB)
# is said, how it ended ($1) too, and exit 89; else this returns to the caller's own exit.
exit_if_disk_full() {
  local avail
  avail=$(df -Pk "$RUN_OUT" 2>/dev/null | awk 'NR == 2 { print $4 }')
  [ -n "$avail" ] && [ "$avail" -lt "${DISK_FULL_BELOW_KB:-1024}" ] || return 0
  log "the disk holding $RUN_OUT is full ($avail KiB free): the trainer ($1) could not" \
    "write its files"
  exit 89
}

if [ "$TRAIN_ACTION" = status ]; then
  ctl=$RUN_OUT/.control
  if [ -e "$ctl/trainer.lock" ] && ! flock -n "$ctl/trainer.lock" true 2>/dev/null; then
    echo running
    exit 0
  fi
  rc=$(cat "$ctl/trainer.rc" 2>/dev/null || true)
  if [ "$rc" = 0 ]; then
    if [ "${KEEPS:-0}" = 1 ] && ! finished_here; then
      echo "finished, but not with these settings or without its model: trains again"
      exit 3
    fi
    echo finished
    exit 0
  fi
  if [ -n "$rc" ]; then echo "ended with exit $rc"; else echo "ended without an exit code"; fi
  exit 3
fi

if [ "$TRAIN_ACTION" = stop ]; then
  ctl=$RUN_OUT/.control
  pid=$(cat "$ctl/trainer.pid" 2>/dev/null || true)
  if [ -z "$pid" ] || flock -n "$ctl/trainer.lock" true 2>/dev/null; then
    log "no trainer of this run is running on this node"
    exit 0
  fi
  # The trainer runs under setsid: its pid is its process group (torchrun and every rank).
  log "stopping the trainer (process group $pid) on request: another node of the cluster failed"
  kill -TERM -- "-$pid" 2>/dev/null
  for ((i = 0; i < ${STOP_GRACE_SECONDS:-5} * 10; i++)); do
    flock -n "$ctl/trainer.lock" true 2>/dev/null && exit 0
    sleep 0.1
  done
  kill -KILL -- "-$pid" 2>/dev/null
  # Whatever escaped the group but holds the lock (fd 9) ends too.
  if command -v fuser >/dev/null 2>&1; then
    fuser -k -KILL "$ctl/trainer.lock" >/dev/null 2>&1
  fi
  flock -w 10 "$ctl/trainer.lock" true && exit 0
  log "the trainer did not end within 15 s of its stop"
  exit 1
fi

: "${DATASET_DIR:?DATASET_DIR is required}"
: "${DATASET_SHA256:=unknown}"
: "${REUSE_FINISHED:=0}"
: "${ATTACH_ONLY:=0}"
arts=$RUN_OUT/run_artifacts
ctl=$RUN_OUT/.control
check_run_token claim || exit 90
mkdir -p "$arts" "$ctl" || exit 2
cd "$REPO_DIR" || { log "REPO_DIR=$REPO_DIR is missing: nothing to train"; exit 2; }
PY=$(pick_python)
export OUTPUT_DIR=$arts METRICS_PATH=$arts/metrics.json DATASET_DIR

# Files of this call only ($$): a call whose SSH session died may still be finishing.
flag=$ctl/train_done.$$ smoke_out=$ctl/smoke.$$
trap 'rm -f "$flag" "$smoke_out".*' EXIT
smoke=""
if [ "$CYCLE_NODE_RANK" = 0 ]; then
  {
    PYTHONPATH="$REPO_DIR" "$PY" -m chessbot.infer --model "$arts/model.pt" --json \
      --wait-for "$flag" --wait-pid $$ >"$smoke_out.json" 2>"$smoke_out.err"
    echo $? >"$smoke_out.rc"
  } &
  smoke=$!
fi

train_key=$(training_key)

trainer=""
exec 9>>"$ctl/trainer.lock"
if flock -n 9; then
  if [ "$REUSE_FINISHED" = 1 ] && finished_here; then
    mode=finished
    log "the training of this run already finished on this pod with this dataset and these" \
      "settings: keeping it"
  elif [ "$ATTACH_ONLY" = 1 ] && ended_well_with_model && trained_other; then
    # The trainer of other settings this call followed finished while the connection was
    # down (trainer.rc and trainer.key are the last trainer's, the one followed): its
    # training is kept, as it would have been had the connection held.
    mode=finished
    log "$OTHER_SETTINGS_LINE (dataset, epochs, batch size, model or trainer arguments):" \
      "it finished while the connection was down; its model is that training's"
  elif [ "$ATTACH_ONLY" = 1 ]; then
    # The trainer this call came back to follow is gone: never start another behind the
    # host's back (its log and epochs would be lost, and the run would say ok). Its exit
    # code is the last trainer's: the one this call followed.
    ended=$(cat "$ctl/trainer.rc" 2>/dev/null || true)
    exec 9>&-
    [ -z "$smoke" ] || kill "$smoke" 2>/dev/null
    if [ -n "$ended" ] && [ "$ended" != 0 ]; then
      log "the trainer of this run ended while the connection was down (exit $ended)"
      exit_if_disk_full "exit $ended"
      exit "$ended"
    fi
    exit_if_disk_full "no exit code"
    log "no trainer of this run runs on this pod, and none finished: it ended while the" \
      "connection was down without an exit code (killed: out of memory, or a restart?)"
    exit 87
  else
    mode=start
    rm -f "$ctl/trainer.rc"
    printf '%s\n' "$train_key" >"$ctl/trainer.key"
    if [ "$REUSE_FINISHED" = 1 ]; then
      # A training the host lost (a stopped pod started again with its disk, a spend guard's
      # stop, a killed trainer): it goes on from its last checkpoint, not from epoch 1. The
      # trainer takes only one of this training's model size and dataset.
      export TRAIN_RESUME=${TRAIN_RESUME:-auto}
    else
      # Asked to train anew: an earlier training's checkpoint must not be what a retry of
      # this one resumes from, should it end before its first save. Unless the training
      # asks to resume itself (TRAIN_EXTRA_ARGS="--resume auto": more epochs on a done run).
      case " ${TRAIN_EXTRA_ARGS:-} " in
        *" --resume "* | *" --resume="*) ;;
        *) rm -f "$arts/checkpoint_last.pt" ;;
      esac
    fi
    # A fresh log before the follower below opens it (an earlier trainer's lines, say on a
    # network volume after a lost pod, are not this training's).
    : >"$arts/train.log"
    # The trainer inherits fd 9, so it (and every process it starts) holds the lock.
    # shellcheck disable=SC2016 # expanded by the inner bash
    setsid bash -c 'bash "$1/train_baseline_preset.sh" >>"$2" 2>&1 </dev/null
      echo $? >"$3.tmp" && mv "$3.tmp" "$3"' trainer \
      "$RUNPOD_TRAINING_DIR" "$arts/train.log" "$ctl/trainer.rc" &
    trainer=$!
    echo "$trainer" >"$ctl/trainer.pid"
    log "started the trainer (pid $trainer); it keeps running if this SSH session drops"
  fi
else
  mode=attach
  trainer=$(cat "$ctl/trainer.pid" 2>/dev/null || true)
  if trained_other; then
    # Its end was reported as this training's: a resume asking 3 epochs said ok for the
    # 12-epoch model the running trainer wrote. Killing it would throw its epochs away.
    log "$OTHER_SETTINGS_LINE (dataset, epochs, batch size, model or trainer arguments):" \
      "following it to its end; its model will be that training's"
  fi
  log "a trainer of this run is already running on this pod (pid ${trainer:-?}): following" \
    "its log instead of starting a second one"
fi
exec 9>&-

if [ "$mode" != finished ]; then
  if [ -n "$trainer" ]; then
    tail -n +1 -s 0.3 -F --pid="$trainer" "$arts/train.log" 2>/dev/null
    if [ $? -gt 128 ]; then
      exit 88  # our output is gone (the SSH session died): the trainer goes on alone
    fi
  fi
  flock "$ctl/trainer.lock" true  # every process of the trainer has ended
fi

rc=$(cat "$ctl/trainer.rc" 2>/dev/null || true)
if [ -z "$rc" ]; then
  [ -z "$smoke" ] || kill "$smoke" 2>/dev/null
  exit_if_disk_full "no exit code"
  log "the trainer ended without an exit code (was it killed?); its log: $arts/train.log"
  exit 87
fi
if [ "$rc" != 0 ]; then
  [ -z "$smoke" ] || kill "$smoke" 2>/dev/null
  exit_if_disk_full "exit $rc"
  exit "$rc"
fi
if [ -z "$smoke" ]; then
  log "node rank $CYCLE_NODE_RANK: its trainer finished (the primary writes the artifacts)"
  exit 0
fi
: >"$flag"
wait "$smoke"
smoke_rc=$(cat "$smoke_out.rc" 2>/dev/null || true)
if [ "$smoke_rc" != 0 ]; then
  log "the remote infer_move smoke failed (exit ${smoke_rc:-?}): $(tail -n 5 "$smoke_out.err")"
  exit 86
fi
mv "$smoke_out.json" "$arts/remote_infer_move.json"
printf 'remote infer_move smoke: %s\n' "$(cat "$arts/remote_infer_move.json")"
exit 0
