#!/usr/bin/env bash
# The baseline training preset: env-driven, writes phase timings, exit code tells success.
#   DATASET_DIR   folder with train.jsonl/val.jsonl (default: $REPO_DIR/data/dataset/_smoke_runpod)
#   OUTPUT_DIR    checkpoints (default: $REPO_DIR/artifacts/runs/<utc time>)
#   METRICS_PATH  metrics JSON (default: $OUTPUT_DIR/metrics.json)
#   EPOCHS (3), BATCH_SIZE (0 = 16384 on GPU, 256 on CPU), LR (3e-3),
#   MODEL_BLOCKS (6), MODEL_CHANNELS (64), TRAIN_DEVICE (auto), NPROC (auto = visible GPUs),
#   TRAIN_RESUME (empty; "auto" resumes from OUTPUT_DIR/checkpoint_last.pt), TRAIN_EXTRA_ARGS
set -uo pipefail

RUNPOD_TRAINING_DIR=${RUNPOD_TRAINING_DIR:-/opt/runpod_cloud_training}
# shellcheck source=deploy/runpod_cloud_training/lib.sh
. "$RUNPOD_TRAINING_DIR/lib.sh"
LOG_TAG=train_preset

: "${DATASET_DIR:=$REPO_DIR/data/dataset/_smoke_runpod}"
: "${OUTPUT_DIR:=$REPO_DIR/artifacts/runs/$(date -u +%Y%m%dT%H%M%SZ)}"
: "${METRICS_PATH:=$OUTPUT_DIR/metrics.json}"
: "${EPOCHS:=3}"
: "${BATCH_SIZE:=0}"
: "${LR:=3e-3}"
: "${MODEL_BLOCKS:=6}"
: "${MODEL_CHANNELS:=64}"
: "${TRAIN_DEVICE:=auto}"
: "${NPROC:=auto}"
: "${TRAIN_RESUME:=}"
: "${TRAIN_EXTRA_ARGS:=}"

PY=$(pick_python)
cd "$REPO_DIR" || { log "REPO_DIR=$REPO_DIR is missing: nothing to train"; exit 2; }
export PYTHONPATH="$REPO_DIR${PYTHONPATH:+:$PYTHONPATH}"
mkdir -p "$OUTPUT_DIR" "$(dirname "$METRICS_PATH")"

phase_event dataset_check start
for split in train.jsonl val.jsonl; do
  if [ ! -s "$DATASET_DIR/$split" ]; then
    log "dataset: $DATASET_DIR/$split is missing or empty (push a dataset first)"
    phase_event dataset_check end missing
    exit 3
  fi
done
phase_event dataset_check end ok

if [ "$NPROC" = "auto" ]; then
  # nvidia-smi answers in milliseconds; importing torch just to count GPUs costs a second.
  if command -v nvidia-smi >/dev/null 2>&1; then
    NPROC=$(nvidia-smi -L 2>/dev/null | grep -c '^GPU ' || true)
    if [ -n "${CUDA_VISIBLE_DEVICES:-}" ]; then
      visible=$(printf '%s' "$CUDA_VISIBLE_DEVICES" | tr ',' '\n' | grep -c .)
      [ "$visible" -lt "$NPROC" ] && NPROC=$visible
    fi
  else
    NPROC=0
  fi
fi
args=(--dataset-dir "$DATASET_DIR" --output-dir "$OUTPUT_DIR" --metrics-path "$METRICS_PATH"
  --epochs "$EPOCHS" --batch-size "$BATCH_SIZE" --lr "$LR" --blocks "$MODEL_BLOCKS"
  --channels "$MODEL_CHANNELS" --device "$TRAIN_DEVICE")
[ -z "$TRAIN_RESUME" ] || args+=(--resume "$TRAIN_RESUME")
# shellcheck disable=SC2206 # extra args are meant to split on spaces
[ -z "$TRAIN_EXTRA_ARGS" ] || args+=($TRAIN_EXTRA_ARGS)

log "training: ${EPOCHS} epoch(s), dataset $DATASET_DIR, output $OUTPUT_DIR, GPUs: $NPROC"
phase_event train start
if [ "${NPROC:-0}" -gt 1 ] 2>/dev/null; then
  "$PY" -m torch.distributed.run --standalone --nproc-per-node "$NPROC" -m chessbot.train \
    "${args[@]}"
else
  "$PY" -m chessbot.train "${args[@]}"
fi
rc=$?
if [ "$rc" = 0 ]; then
  phase_event train end ok
  log "training finished: $OUTPUT_DIR/model.pt, metrics $METRICS_PATH"
else
  phase_event train end "failed_rc_$rc"
  log "training FAILED with exit code $rc"
fi
exit "$rc"
