#!/usr/bin/env python3
"""How much does loading the task collection cost? Times `inv --list` against `inv --version`
(no collection load) side by side, interleaved, and prints medians and their ratio.
Goal: ratio <= 1.3 (no heavy import — fabric, paramiko, requests, torch — at collection load).

    .venv/bin/python bench/inv_list_speed.py [--runs 20]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
INV = str(Path(sys.executable).parent / "inv")


def once(args: list[str]) -> float:
    started = time.perf_counter()
    subprocess.run([INV, *args], cwd=ROOT, check=True, capture_output=True)
    return time.perf_counter() - started


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=20)
    args = parser.parse_args()
    once(["--list"])  # warm the page cache and .pyc files
    listing, version = [], []
    for _ in range(args.runs):
        listing.append(once(["--list"]))
        version.append(once(["--version"]))
    list_median, version_median = statistics.median(listing), statistics.median(version)
    ratio = list_median / version_median
    print(f"inv --version median {version_median * 1000:.1f} ms over {args.runs} runs")
    print(f"inv --list    median {list_median * 1000:.1f} ms over {args.runs} runs")
    print(f"ratio --list / --version = {ratio:.2f} (goal <= 1.3)")
    heavy = subprocess.run(
        [sys.executable, "-c", "import sys; import tasks; "
         "print(' '.join(m for m in ('fabric', 'paramiko', 'requests', 'torch', 'chess')"
         " if m in sys.modules))"], cwd=ROOT, capture_output=True, text=True, check=True)
    print(f"heavy modules imported by the collection: {heavy.stdout.strip() or 'none'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
