#!/usr/bin/env python3
"""What a small training's start and end cost: a CPU training (1,500 positions of the smoke
set, a 1x8 model, 2 epochs, one thread) run three ways, alternating, --rounds times each, so
that a machine's drift touches all three:

- as the pod runs it, `python -m chessbot.train`: the cyclic collector off while torch and
  torch._dynamo import (then frozen and on again), and exit_now at the end (os._exit once the
  atexit handlers ran and the output is flushed);
- exit_now only: main() and exit_now from `python -c`, the collector on throughout;
- neither: `sys.exit(main())` from `python -c`, Python's own collector and exit.

CPU-seconds (user + system) of each training and their median per way, and the ratios.

    .venv/bin/python bench/trainer_overhead.py [--rounds 5] [--json]

The end-to-end tests start some 65 such trainers per `make test`, where this is most of
what each costs.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SMOKE = ROOT / "data" / "dataset" / "_smoke_runpod"
WAYS = {
    "as shipped": ["-m", "chessbot.train"],
    "exit_now only": ["-c", "import sys\nfrom chessbot.train import exit_now, main\n"
                            "exit_now(main(sys.argv[1:]))"],
    "neither": ["-c", "import sys\nfrom chessbot.train import main\n"
                      "sys.exit(main(sys.argv[1:]))"],
}


def tiny_dataset(folder: Path) -> Path:
    for name, lines in (("train.jsonl", 1500), ("val.jsonl", 300)):
        with open(SMOKE / name) as source:
            (folder / name).write_text("".join(next(source) for _ in range(lines)))
    return folder


def one_training(way: list[str], dataset: Path, out: Path) -> tuple[float, float]:
    """CPU-seconds and wall seconds of one training, run to its end."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    subprocess.run([sys.executable, *way, "--dataset-dir", str(dataset), "--output-dir",
                    str(out), "--epochs", "2", "--batch-size", "128", "--blocks", "1",
                    "--channels", "8", "--device", "cpu", "--tb-every-steps", "0"],
                   cwd=ROOT, env={**os.environ, "OMP_NUM_THREADS": "1"}, check=True,
                   stdout=subprocess.DEVNULL)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime), wall


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5, help="trainings per way (default 5)")
    parser.add_argument("--json", action="store_true", help="the figures as JSON")
    args = parser.parse_args()
    cpu: dict[str, list[float]] = {name: [] for name in WAYS}
    wall: dict[str, list[float]] = {name: [] for name in WAYS}
    with tempfile.TemporaryDirectory() as folder:
        dataset = tiny_dataset(Path(folder))
        for round_ in range(args.rounds):
            for name, way in WAYS.items():
                c, w = one_training(way, dataset, Path(folder) / f"out-{round_}-{len(cpu[name])}")
                cpu[name].append(c)
                wall[name].append(w)
    medians = {name: statistics.median(values) for name, values in cpu.items()}
    result = {"rounds": args.rounds, "cpu_s": cpu, "wall_s": wall, "median_cpu_s": medians,
              "ratio_to_neither": {name: medians[name] / medians["neither"] for name in WAYS}}
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    for name in WAYS:
        each = ", ".join(f"{v:.2f}" for v in cpu[name])
        print(f"{name:13} median {medians[name]:.2f} CPU-s, wall median "
              f"{statistics.median(wall[name]):.2f} s  ({each})")
    for name in ("as shipped", "exit_now only"):
        print(f"{name} / neither: {result['ratio_to_neither'][name]:.2f} of the CPU-seconds")
    return 0


if __name__ == "__main__":
    sys.exit(main())
