#!/usr/bin/env bash
# The pod's paths for the cycle as key=value lines (keys as below; each value from the pod's
# env, else the image's default, see lib.sh): repo, training, timing_log, venv, and volume (the
# network volume's mount point, NETWORK_VOLUME_DIR; empty without a volume). Keys, not line
# positions, so a path added later cannot shift the others.
set -u
# shellcheck source=deploy/runpod_cloud_training/lib.sh
. "${RUNPOD_TRAINING_DIR:-/opt/runpod_cloud_training}/lib.sh"
printf 'repo=%s\ntraining=%s\ntiming_log=%s\nvenv=%s\nvolume=%s\n' "$REPO_DIR" \
  "$RUNPOD_TRAINING_DIR" "$RUNPOD_PHASE_TIMING_LOG" "$VENV_DIR" "${NETWORK_VOLUME_DIR:-}"
