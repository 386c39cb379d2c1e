#!/usr/bin/env python3
"""Multi-node training on one GPU machine, NCCL: 1 node x N GPUs against 2 "nodes" x N/2 GPUs
(each node its own half of the GPUs through CUDA_VISIBLE_DEVICES, torchrun's static rendezvous
over loopback), the same per-process batch, epochs and seed, through the real train preset
(deploy/runpod_cloud_training/train_baseline_preset.sh). Prints each side's final validation
loss, positions/s and whether every rank ended with the same weights. The data is the smoke set
repeated --repeat times (throughput needs more than a few steps an epoch).

Without a CUDA device it says so and exits 0 (bench/cluster_bench.py is the CPU comparison).
With one GPU it measures the 1x1 side and says why there is no 2-node side: NCCL needs a GPU
per process.

    python bench/cluster_gpu.py                 # on a machine with 2+ GPUs
    python bench/cluster_gpu.py --repeat 10 --epochs 2 --blocks 6 --channels 64
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
from pathlib import Path

from cluster_bench import PRESET, ROOT, free_port, run  # the same preset, launched the same way


def repeated(dataset: Path, times: int, folder: Path) -> Path:
    folder.mkdir(parents=True)
    for name, k in (("train.jsonl", times), ("val.jsonl", 1)):
        text = (dataset / name).read_text()
        (folder / name).write_text(text * k)
    return folder


def env_for(args: argparse.Namespace, work: Path, dataset: Path, name: str,
            **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if k not in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "NUM_NODES", "NODE_RANK")}
    env.update({"RUNPOD_TRAINING_DIR": str(PRESET.parent), "REPO_DIR": str(ROOT),
                "VENV_DIR": sys.prefix, "DATASET_DIR": str(dataset),
                "OUTPUT_DIR": str(work / name), "METRICS_PATH": str(work / name / "metrics.json"),
                "RUNPOD_PHASE_TIMING_LOG": str(work / f"{name}.timings.jsonl"),
                "EPOCHS": str(args.epochs), "BATCH_SIZE": str(args.batch_size),
                "MODEL_BLOCKS": str(args.blocks), "MODEL_CHANNELS": str(args.channels),
                "TRAIN_DEVICE": "cuda",
                "TRAIN_EXTRA_ARGS": f"--cache-dir {work / 'cache'} --seed {args.seed} "
                                    f"--compile {args.compile} --tb-every-steps 0"})
    env.update(extra)
    return env


def figures(path: Path) -> dict:
    metrics = json.loads(path.read_text())
    rates = [row["positions_per_s"] for row in metrics["epochs"] if row["positions_per_s"]]
    return {"world_size": metrics["world_size"], "nodes": metrics["nodes"],
            "gpu": metrics["gpu"], "per_process_batch": metrics["batch_size"],
            "val_loss": metrics["final"]["val_loss"],
            "positions_per_s": round(statistics.median(rates[1:] or rates)),
            "same_weights_on_every_rank": len(set(metrics["rank_weights_sha256"])) == 1}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset-dir", type=Path, default=ROOT / "data/dataset/_smoke_runpod")
    parser.add_argument("--repeat", type=int, default=40,
                        help="the train split repeated this many times (default 40: 540k)")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=8192, help="per process")
    parser.add_argument("--blocks", type=int, default=6)
    parser.add_argument("--channels", type=int, default=64)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--compile", default="off", choices=("auto", "on", "off"))
    args = parser.parse_args()

    import torch

    if not torch.cuda.is_available():
        print("no CUDA device here: nothing to measure (bench/cluster_bench.py compares "
              "1x2 and 2x2 CPU processes with gloo)")
        return 0
    gpus = torch.cuda.device_count()
    from chessbot.compact import encode_dataset

    with tempfile.TemporaryDirectory(prefix="cluster-gpu-") as tmp:
        work = Path(tmp)
        dataset = repeated(args.dataset_dir, args.repeat, work / "dataset")
        encode_dataset(dataset, work / "cache")
        run([env_for(args, work, dataset, "one_node", NPROC=str(gpus))], f"1 node x {gpus}")
        result: dict = {"gpus": gpus, "model": f"{args.blocks}x{args.channels}",
                        "epochs": args.epochs,
                        "one_node": figures(work / "one_node" / "metrics.json")}
        if gpus >= 2 and gpus % 2 == 0:
            half, port = gpus // 2, free_port()
            run([env_for(args, work, dataset, f"two_nodes_{rank}", NUM_NODES="2",
                         NODE_RANK=str(rank), NUM_TRAINERS=str(half), MASTER_ADDR="127.0.0.1",
                         MASTER_PORT=str(port), NODE_ADDR="127.0.0.1", WORLD_SIZE=str(gpus),
                         CUDA_VISIBLE_DEVICES=",".join(
                             str(g) for g in range(rank * half, (rank + 1) * half)))
                 for rank in (0, 1)], f"2 nodes x {half}")
            result["two_nodes"] = figures(work / "two_nodes_0" / "metrics.json")
        else:
            result["two_nodes"] = None
            result["why_no_two_nodes"] = (f"{gpus} GPU(s): 2 nodes need an even count of 2 or "
                                          "more (NCCL wants one GPU per process)")
    print(json.dumps(result))
    one, two = result["one_node"], result["two_nodes"]
    print(f"1 node x {gpus}: val loss {one['val_loss']:.4f}, {one['positions_per_s']:,} "
          f"positions/s ({one['gpu']})")
    if two:
        gap = abs(two["val_loss"] - one["val_loss"]) / one["val_loss"]
        print(f"2 nodes x {gpus // 2}: val loss {two['val_loss']:.4f} (gap {100 * gap:.2f}%), "
              f"{two['positions_per_s']:,} positions/s = "
              f"{100 * two['positions_per_s'] / one['positions_per_s']:.0f}% of 1 node; "
              f"same weights on every rank: {two['same_weights_on_every_rank']}")
    else:
        print(f"no 2-node side: {result['why_no_two_nodes']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
