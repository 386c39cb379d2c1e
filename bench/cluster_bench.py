#!/usr/bin/env python3
"""Multi-node training on this machine, CPU and gloo: does 2 nodes x 2 processes learn what
1 node x 2 processes learns, and at what speed? Both sides run the real train preset
(deploy/runpod_cloud_training/train_baseline_preset.sh): 1x2 as a pod with NPROC=2 (torchrun
--standalone), 2x2 as two cluster nodes started at once with RunPod's cluster env (NUM_NODES=2,
NODE_RANK 0/1, NUM_TRAINERS=2, MASTER_ADDR 127.0.0.1; torchrun's static rendezvous over
loopback). The same global batch (the 4-process side gets half the per-process batch), the same
epochs, seed and learning rate, on the committed smoke set (encoded once beforehand, so neither
side pays for it). Prints both final validation losses, whether they agree within --tolerance
(2%), and positions/s of each side; exits 1 when they do not agree.

    python bench/cluster_bench.py                         # about a minute or two on 2 cores
    python bench/cluster_bench.py --epochs 4 --global-batch 512 --blocks 2 --channels 32
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PRESET = ROOT / "deploy" / "runpod_cloud_training" / "train_baseline_preset.sh"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def preset_env(args: argparse.Namespace, work: Path, name: str, batch: int,
               **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if k not in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "NUM_NODES", "NODE_RANK")}
    env.setdefault("OMP_NUM_THREADS", "1")  # 4 processes on a few cores: no spinning threads
    env.update({"RUNPOD_TRAINING_DIR": str(PRESET.parent), "REPO_DIR": str(ROOT),
                "VENV_DIR": sys.prefix, "DATASET_DIR": str(args.dataset_dir),
                "OUTPUT_DIR": str(work / name), "METRICS_PATH": str(work / name / "metrics.json"),
                "RUNPOD_PHASE_TIMING_LOG": str(work / f"{name}.timings.jsonl"),
                "EPOCHS": str(args.epochs), "BATCH_SIZE": str(batch), "LR": str(args.lr),
                "MODEL_BLOCKS": str(args.blocks), "MODEL_CHANNELS": str(args.channels),
                "TRAIN_DEVICE": args.device,
                "TRAIN_EXTRA_ARGS": f"--cache-dir {work / 'cache'} --seed {args.seed} "
                                    f"--compile off --tb-every-steps 0"})
    env.update(extra)
    return env


def run(envs: list[dict[str, str]], what: str) -> None:
    """The presets of one side, at once; stop with their logs if one fails."""
    procs = [subprocess.Popen(["bash", str(PRESET)], env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True) for env in envs]
    outputs = [proc.communicate()[0] for proc in procs]
    for node, (proc, output) in enumerate(zip(procs, outputs, strict=True)):
        if proc.returncode != 0:
            sys.exit(f"{what}, node {node}: the preset failed (exit {proc.returncode}):\n"
                     + "\n".join(output.splitlines()[-20:]))


def figures(metrics_path: Path) -> dict:
    metrics = json.loads(metrics_path.read_text())
    rates = [row["positions_per_s"] for row in metrics["epochs"] if row["positions_per_s"]]
    later = rates[1:] or rates  # the first epoch pays for warm-up
    return {"world_size": metrics["world_size"], "nodes": metrics["nodes"],
            "per_process_batch": metrics["batch_size"],
            "val_loss": metrics["final"]["val_loss"], "val_top1": metrics["final"]["val_top1"],
            "positions_per_s": round(statistics.median(later), 1),
            "same_weights_on_every_rank": len(set(metrics["rank_weights_sha256"])) == 1}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset-dir", type=Path, default=ROOT / "data/dataset/_smoke_runpod")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--global-batch", type=int, default=256,
                        help="positions per optimizer step over all processes (default 256)")
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--blocks", type=int, default=2)
    parser.add_argument("--channels", type=int, default=16)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--tolerance", type=float, default=0.02,
                        help="largest relative gap of the validation losses (default 0.02)")
    parser.add_argument("--device", default="cpu", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.global_batch % 4:
        parser.error("--global-batch must be a multiple of 4 (4 processes share it)")

    from chessbot.compact import encode_dataset

    with tempfile.TemporaryDirectory(prefix="cluster-bench-") as tmp:
        work = Path(tmp)
        encode_dataset(args.dataset_dir, work / "cache")  # both sides read it from the cache
        run([preset_env(args, work, "one_node", args.global_batch // 2, NPROC="2")],
            "1 node x 2")
        port = free_port()
        run([preset_env(args, work, f"two_nodes_{rank}", args.global_batch // 4,
                        NUM_NODES="2", NODE_RANK=str(rank), NUM_TRAINERS="2",
                        MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), NODE_ADDR="127.0.0.1",
                        WORLD_SIZE="4") for rank in (0, 1)], "2 nodes x 2")
        one = figures(work / "one_node" / "metrics.json")
        two = figures(work / "two_nodes_0" / "metrics.json")
        written = sorted(p.name for p in (work / "two_nodes_1").iterdir())
    gap = abs(two["val_loss"] - one["val_loss"]) / one["val_loss"]
    agree = gap <= args.tolerance
    result = {"device": args.device, "model": f"{args.blocks}x{args.channels}",
              "epochs": args.epochs, "global_batch": args.global_batch,
              "one_node_x2": one, "two_nodes_x2": two, "val_loss_gap": round(gap, 4),
              "within_tolerance": agree, "tolerance": args.tolerance,
              "files_written_by_node_1": written}
    print(json.dumps(result))
    print(f"val loss: 1x2 {one['val_loss']:.4f}, 2x2 {two['val_loss']:.4f} "
          f"(gap {100 * gap:.2f}%, {'within' if agree else 'NOT within'} "
          f"{100 * args.tolerance:g}%)")
    print(f"positions/s: 1x2 {one['positions_per_s']:,.0f}, 2x2 {two['positions_per_s']:,.0f} "
          f"(2x2 = {100 * two['positions_per_s'] / one['positions_per_s']:.0f}% of 1x2); "
          f"global batch {args.global_batch} = 2 x {one['per_process_batch']} = "
          f"4 x {two['per_process_batch']}")
    return 0 if agree else 1


if __name__ == "__main__":
    sys.exit(main())
