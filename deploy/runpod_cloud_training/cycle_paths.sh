#!/usr/bin/env bash
# The pod's paths for the cycle, one a line: REPO_DIR, RUNPOD_TRAINING_DIR, the phase timing
# log, VENV_DIR (each from the pod's env, else the image's default; see lib.sh) and the
# network volume's mount point (NETWORK_VOLUME_DIR; an empty line without a volume).
set -u
# shellcheck source=deploy/runpod_cloud_training/lib.sh
. "${RUNPOD_TRAINING_DIR:-/opt/runpod_cloud_training}/lib.sh"
printf '%s\n' "$REPO_DIR" "$RUNPOD_TRAINING_DIR" "$RUNPOD_PHASE_TIMING_LOG" "$VENV_DIR" \
  "${NETWORK_VOLUME_DIR:-}"
