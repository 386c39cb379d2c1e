#!/usr/bin/env bash
# The run's artifact manifest, made on the pod before collect: the phase timing log is copied
# into $RUN_OUT/timings/, then the sha256 of every file under run_artifacts/ and timings/ goes
# to $RUN_OUT/MANIFEST.sha256, which the host verifies after the transfer. Prints
# `bytes=N`, the size of what collect will bring home, so the host can refuse a transfer its
# disk cannot hold before it starts.
#   RUN_OUT    the run's folder on the pod
#   RUN_TOKEN  the host's run: a RUN_OUT made by another run of the same id is not listed
# Exit: 0 ok; 3 a trainer of this run is still writing (collect after it ends); 90 RUN_OUT was
# made by another run of the same id (lib.sh check_run_token); 1 other errors.
set -euo pipefail
RUNPOD_TRAINING_DIR=${RUNPOD_TRAINING_DIR:-/opt/runpod_cloud_training}
# shellcheck source=deploy/runpod_cloud_training/lib.sh
. "$RUNPOD_TRAINING_DIR/lib.sh"
LOG_TAG=cycle_manifest

: "${RUN_OUT:?RUN_OUT is required}"
check_run_token || exit 90
mkdir -p "$RUN_OUT/run_artifacts" "$RUN_OUT/timings" "$RUN_OUT/.control"
if ! flock -n "$RUN_OUT/.control/trainer.lock" true; then
  log "a trainer of this run is still running: its artifacts are not final yet"
  exit 3
fi
cp "$RUNPOD_PHASE_TIMING_LOG" "$RUN_OUT/timings/" 2>/dev/null || true
cd "$RUN_OUT"
find run_artifacts timings -type f -print0 | sort -z | xargs -0 -r sha256sum >MANIFEST.sha256.tmp
mv MANIFEST.sha256.tmp MANIFEST.sha256
find run_artifacts timings -type f -printf '%s\n' | awk '{n += $1} END {printf "bytes=%d\n", n}'
