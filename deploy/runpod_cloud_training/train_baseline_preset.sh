#!/usr/bin/env bash
# The baseline training preset: env-driven, writes phase timings, exit code tells success.
#   DATASET_DIR   folder with train.jsonl/val.jsonl (default: $REPO_DIR/data/dataset/_smoke_runpod)
#   OUTPUT_DIR    checkpoints (default: $REPO_DIR/artifacts/runs/<utc time>)
#   METRICS_PATH  metrics JSON (default: $OUTPUT_DIR/metrics.json)
#   EPOCHS (3), BATCH_SIZE (0 = 16384 on GPU, less on a small set, 256 on CPU:
#   chessbot.train_args.default_batch_size), LR (3e-3),
#   MODEL_BLOCKS (6), MODEL_CHANNELS (64), TRAIN_DEVICE (auto: cuda where nvidia-smi lists a
#   GPU, so a torch that cannot use it fails instead of training on the CPU; else torch's
#   choice), NPROC (auto = visible GPUs),
#   TRAIN_RESUME (empty; "auto" resumes from OUTPUT_DIR/checkpoint_last.pt), TRAIN_EXTRA_ARGS
# A cluster node (RunPod Instant Clusters set these on every node; NUM_NODES > 1 turns it on):
#   NUM_NODES, NODE_RANK, MASTER_ADDR (or PRIMARY_ADDR), MASTER_PORT (or PRIMARY_PORT),
#   NUM_TRAINERS (processes on this node: its GPUs; on a CPU node that many CPU processes),
#   NODE_ADDR (this node's address: NCCL/gloo use the interface that holds it unless
#   NCCL_SOCKET_IFNAME/GLOO_SOCKET_IFNAME are set). torchrun runs with a static rendezvous,
#   global rank 0 on node 0 (the primary, the only node that writes into OUTPUT_DIR).
#   TRAIN_RENDEZVOUS_TIMEOUT (180 s): a node that never joins fails the others in this time;
#   TRAIN_DIST_TIMEOUT (300 s): a collective whose peer died fails in this time.
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

# The network interface that holds address $1 (loopback: lo), empty when none does.
iface_of() {
  local addr=$1 name=""
  case $addr in 127.*|localhost) printf 'lo'; return ;; esac
  if command -v ip >/dev/null 2>&1; then
    name=$(ip -o -4 addr show 2>/dev/null \
      | awk -v a="$addr" '{split($4, p, "/"); if (p[1] == a) {print $2; exit}}')
  fi
  if [ -z "$name" ]; then  # no iproute2 in the image: ask the kernel through Python
    name=$("$PY" - "$addr" 2>/dev/null <<'PY'
import fcntl, socket, struct, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
for _, name in socket.if_nameindex():
    try:
        raw = fcntl.ioctl(s.fileno(), 0x8915, struct.pack("256s", name.encode()[:15]))
    except OSError:
        continue
    if socket.inet_ntoa(raw[20:24]) == sys.argv[1]:
        print(name)
        break
PY
)
  fi
  printf '%s' "$name"
}

nodes=${NUM_NODES:-1}
cluster=0
if [ "$nodes" != 1 ]; then
  if ! [[ "$nodes" =~ ^[0-9]+$ ]] || [ "$nodes" -lt 1 ]; then
    log "NUM_NODES=$nodes is not a node count"
    exit 2
  fi
  [ "$nodes" -gt 1 ] && cluster=1
fi
if [ "$cluster" = 1 ]; then
  : "${MASTER_ADDR:=${PRIMARY_ADDR:-}}"
  : "${MASTER_PORT:=${PRIMARY_PORT:-}}"
  : "${TRAIN_RENDEZVOUS_TIMEOUT:=180}"
  : "${TRAIN_DIST_TIMEOUT:=300}"
  export TRAIN_DIST_TIMEOUT
  for var in NODE_RANK MASTER_ADDR MASTER_PORT; do
    if [ -z "${!var:-}" ]; then
      log "NUM_NODES=$nodes but $var is not set: a cluster node needs NODE_RANK, MASTER_ADDR" \
        "and MASTER_PORT (RunPod sets them on every node of an Instant Cluster)"
      exit 2
    fi
  done
  if ! [[ "$NODE_RANK" =~ ^[0-9]+$ ]] || [ "$NODE_RANK" -ge "$nodes" ]; then
    log "NODE_RANK=$NODE_RANK is not a node of $nodes (0 to $((nodes - 1)))"
    exit 2
  fi
  if [ -n "${NUM_TRAINERS:-}" ]; then
    NPROC=$NUM_TRAINERS
  fi
  if [ -n "${NODE_ADDR:-}" ]; then
    iface=$(iface_of "$NODE_ADDR")
    if [ -n "$iface" ]; then
      export NCCL_SOCKET_IFNAME=${NCCL_SOCKET_IFNAME:-$iface}
      export GLOO_SOCKET_IFNAME=${GLOO_SOCKET_IFNAME:-$iface}
    else
      log "no network interface holds NODE_ADDR=$NODE_ADDR: NCCL and gloo pick one themselves"
    fi
  fi
fi

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
# A pod with GPUs trains on them, or not at all: left to torch's own choice (auto), a driver
# older than this image's CUDA made it train on the CPU, slowly and silently, the GPUs billed
# for nothing. With --device cuda the trainer refuses, saying why.
if [ "$TRAIN_DEVICE" = auto ] && command -v nvidia-smi >/dev/null 2>&1 &&
  [ "$(nvidia-smi -L 2>/dev/null | grep -c '^GPU ' || true)" -gt 0 ]; then
  TRAIN_DEVICE=cuda
fi
args=(--dataset-dir "$DATASET_DIR" --output-dir "$OUTPUT_DIR" --metrics-path "$METRICS_PATH"
  --epochs "$EPOCHS" --batch-size "$BATCH_SIZE" --lr "$LR" --blocks "$MODEL_BLOCKS"
  --channels "$MODEL_CHANNELS" --device "$TRAIN_DEVICE")
[ -z "$TRAIN_RESUME" ] || args+=(--resume "$TRAIN_RESUME")
# Split on spaces, and only that: with globbing off, a `*` or `?` in them reaches the
# trainer as typed (the host checked them so), never expanded against the pod's files.
set -f
# shellcheck disable=SC2206 # extra args are meant to split on spaces
[ -z "$TRAIN_EXTRA_ARGS" ] || args+=($TRAIN_EXTRA_ARGS)
set +f

log "training: ${EPOCHS} epoch(s), dataset $DATASET_DIR, output $OUTPUT_DIR, GPUs: $NPROC"
phase_event train start
if [ "$cluster" = 1 ]; then
  [ "${NPROC:-0}" -ge 1 ] 2>/dev/null || NPROC=1  # a CPU node: one process unless told
  log "cluster node $NODE_RANK of $nodes: torchrun with $NPROC process(es) here, rendezvous at" \
    "$MASTER_ADDR:$MASTER_PORT (${TRAIN_RENDEZVOUS_TIMEOUT}s for every node to join;" \
    "interface ${NCCL_SOCKET_IFNAME:-auto})"
  flags=$(mktemp -d)
  # torchrun sets each process's RANK, LOCAL_RANK, WORLD_SIZE, ...: not the node's own.
  env -u WORLD_SIZE -u RANK -u LOCAL_RANK -u LOCAL_WORLD_SIZE -u GROUP_RANK \
    TRAIN_JOINED_FLAG="$flags/joined" "$PY" -m torch.distributed.run --nnodes "$nodes" \
    --node-rank "$NODE_RANK" --nproc-per-node "$NPROC" --master-addr "$MASTER_ADDR" \
    --master-port "$MASTER_PORT" --rdzv-conf "timeout=$TRAIN_RENDEZVOUS_TIMEOUT" \
    -m chessbot.train "${args[@]}"
  rc=$?
  if [ "$rc" != 0 ] && [ ! -e "$flags/joined" ]; then
    log "rendezvous FAILED: not all $nodes nodes joined at $MASTER_ADDR:$MASTER_PORT within" \
      "${TRAIN_RENDEZVOUS_TIMEOUT}s (TRAIN_RENDEZVOUS_TIMEOUT), or a trainer failed before it" \
      "joined: start the preset on every node; see the lines above"
  fi
  rm -rf "$flags"
elif [ "${NPROC:-0}" -gt 1 ] 2>/dev/null; then
  "$PY" -m torch.distributed.run --standalone --nproc-per-node "$NPROC" -m chessbot.train \
    "${args[@]}"
  rc=$?
else
  "$PY" -m chessbot.train "${args[@]}"
  rc=$?
fi
if [ "$rc" = 0 ]; then
  phase_event train end ok
  if [ "$cluster" = 1 ] && [ "$NODE_RANK" != 0 ]; then
    log "training finished: node $NODE_RANK's part is done; the model and metrics are on node 0"
  else
    log "training finished: $OUTPUT_DIR/model.pt, metrics $METRICS_PATH"
  fi
else
  phase_event train end "failed_rc_$rc"
  log "training FAILED with exit code $rc"
fi
exit "$rc"
