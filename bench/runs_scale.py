#!/usr/bin/env python3
"""What `runs.list --json` costs over many long runs: --runs run folders of --epochs epochs
each (made here, in a temporary folder), read as `runs.list` reads them (history.read_runs)
and written as its JSON. Wall seconds and peak memory (max RSS) of a fresh process per
measurement, median of --rounds. With --against REV the same runs are read by that commit's
podcycle too (from `git archive`, not installed), alternating with this checkout's, and the
ratios are printed.

    .venv/bin/python bench/runs_scale.py [--runs 500] [--epochs 1000] [--against ff260e4]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

MEASURE = """
import json, resource, sys, time
from pathlib import Path
from podcycle import history
started = time.perf_counter()
rows = history.read_runs(Path(sys.argv[1]))
text = json.dumps([row.as_dict() for row in rows])
print(json.dumps({"seconds": time.perf_counter() - started, "rows": len(rows),
                  "max_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def make_runs(folder: Path, runs: int, epochs: int) -> None:
    """Finished runs as a cycle leaves them: state.json and collected metrics.json."""
    from podcycle.runs import WORK_STEPS, PodRecord, RunFolder, StepRecord

    curve = [{"epoch": n, "train_loss": 3.0 - n / epochs, "val_loss": 3.1 - n / epochs,
              "val_top1": 0.1 + n / epochs / 10, "seconds": 1.0} for n in range(1, epochs + 1)]
    metrics = json.dumps({"epochs": curve, "final": curve[-1],
                          "model_config": {"blocks": 1, "channels": 8}})
    now = time.time()
    for index in range(runs):
        run = RunFolder(folder, f"r{index:05d}")
        state = run.state
        state.created_at = now - 3600 - index
        state.backend, state.driver, state.outcome = "local", "full-smoke", "ok"
        state.pod = PodRecord(id=f"lp{index:05d}", name=run.run_id, gpu_id="NVIDIA RTX A5000",
                              price_per_hour=0.36, created_at=state.created_at,
                              billed_seconds=600.0, stopped_at=state.created_at + 700)
        state.steps = {name: StepRecord("done", seconds=1.0) for name in (*WORK_STEPS, "stop")}
        state.total_seconds = 700.0
        run.save()
        run.run_artifacts.mkdir(parents=True, exist_ok=True)
        (run.run_artifacts / "metrics.json").write_text(metrics)


def measure(source: Path, runs: Path) -> dict[str, float]:
    env = {**os.environ, "PYTHONPATH": str(source)}
    done = subprocess.run([sys.executable, "-c", MEASURE, str(runs)], env=env, cwd=source,
                          capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=500)
    parser.add_argument("--epochs", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--against", help="a git revision whose podcycle to compare with")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="runs-scale-") as tmp:
        folder = Path(tmp) / "runs"
        make_runs(folder, args.runs, args.epochs)
        sources = {"this checkout": ROOT}
        if args.against:
            old = Path(tmp) / "against"
            old.mkdir()
            archive = subprocess.run(["git", "archive", args.against, "podcycle", "chessbot"],
                                     cwd=ROOT, capture_output=True, check=True).stdout
            with tarfile.open(fileobj=__import__("io").BytesIO(archive)) as tar:
                tar.extractall(old, filter="data")
            sources[args.against] = old
        results: dict[str, list[dict[str, float]]] = {name: [] for name in sources}
        for _ in range(args.rounds):  # alternating, so that drift touches each alike
            for name, source in sources.items():
                results[name].append(measure(source, folder))
        print(f"{args.runs} runs of {args.epochs} epochs, read and written as runs.list "
              f"--json; median of {args.rounds}:")
        medians = {}
        for name, rows in results.items():
            seconds = statistics.median(r["seconds"] for r in rows)
            rss = statistics.median(r["max_rss_mib"] for r in rows)
            medians[name] = (seconds, rss)
            print(f"  {name:>14}: {seconds:6.2f} s, {rss:6.0f} MiB max RSS "
                  f"({rows[0]['rows']} rows)")
        if args.against:
            (new_s, new_m), (old_s, old_m) = medians["this checkout"], medians[args.against]
            print(f"  this checkout / {args.against}: time {new_s / old_s:.2f}, "
                  f"memory {new_m / old_m:.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
