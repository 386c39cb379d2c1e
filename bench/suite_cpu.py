#!/usr/bin/env python3
"""Where does the test suite's time go? The machine's busy CPU-seconds (from /proc/stat, so
every process counts: the local RunPod servers, their pods, the detached trainers, which
`time make test` misses) against what its cores could give in the same wall time.

Without --per-test it runs `make test` itself (pytest-xdist, its 4 workers): wall time,
busy CPU-s and their share of cores x wall. A share near 100% means the suite is CPU-bound
and only spending less CPU can shorten it. With --per-test it runs `make test
TEST_WORKERS=0` (one process) and the busy CPU-s around each test (its pods, servers and
`inv` runs included), written as JSON and summed per module. Both count whatever else runs
on the machine: run them on a quiet one.

    .venv/bin/python bench/suite_cpu.py                          # about as long as make test
    .venv/bin/python bench/suite_cpu.py --per-test --top 20      # serial: about twice that
    .venv/bin/python bench/suite_cpu.py --per-test -- tests/test_cycle.py -k full_smoke
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
TICKS = os.sysconf("SC_CLK_TCK")
OUT_VAR = "SUITE_CPU_OUT"


def busy_seconds() -> float:
    """CPU-seconds the machine has spent busy since boot: every field of the `cpu` line of
    /proc/stat but idle and iowait."""
    with open("/proc/stat") as stat:
        fields = [int(v) for v in stat.readline().split()[1:9]]
    return (sum(fields) - fields[3] - fields[4]) / TICKS


# -- the pytest plugin (loaded with -p suite_cpu by --per-test) --------------------------------
_rows: list[dict] = []


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item: pytest.Item, nextitem: pytest.Item | None):
    """Around each test (setup, call, teardown): the machine's busy CPU-s and the wall time,
    appended to the rows in $SUITE_CPU_OUT after every test (a crash keeps the ones done)."""
    cpu, wall = busy_seconds(), time.monotonic()
    yield
    _rows.append({"test": item.nodeid, "cpu_s": round(busy_seconds() - cpu, 2),
                  "wall_s": round(time.monotonic() - wall, 2)})
    Path(os.environ[OUT_VAR]).write_text(json.dumps(_rows, indent=1) + "\n")


# -- the runs ----------------------------------------------------------------------------------
def command_line(extra: list[str], per_test: bool) -> list[str]:
    """`make test` itself (its workers, their distribution, its environment), in one process
    with the per-test plugin for --per-test; `extra` goes to pytest."""
    pytest_args = [*(["-p", "suite_cpu"] if per_test else []), *extra]
    return ["make", "--no-print-directory", "test", *(["TEST_WORKERS=0"] if per_test else []),
            f"PYTEST_ARGS={shlex.join(pytest_args)}"]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--per-test", action="store_true",
                        help="one process, the busy CPU-s around each test (JSON + summary)")
    parser.add_argument("--out", type=Path, default=ROOT / "artifacts" / "suite_cpu.json",
                        help="where --per-test writes its rows (default: %(default)s)")
    parser.add_argument("--top", type=int, default=15, help="tests shown (default 15)")
    parser.add_argument("pytest_args", nargs="*", help="after --: passed to pytest")
    args = parser.parse_args()

    env = dict(os.environ)
    if args.per_test:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.unlink(missing_ok=True)
        env[OUT_VAR] = str(args.out)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT / "bench"),
                                                           env.get("PYTHONPATH")]))
    cores = os.cpu_count() or 1
    cpu, wall = busy_seconds(), time.monotonic()
    result = subprocess.run(command_line(args.pytest_args, args.per_test), cwd=ROOT, env=env)
    cpu, wall = busy_seconds() - cpu, time.monotonic() - wall
    print(f"\nwall {wall:.1f} s; machine busy {cpu:.0f} CPU-s of {cores * wall:.0f} "
          f"({cores} cores x wall): {100 * cpu / (cores * wall):.0f}%; make test exit "
          f"{result.returncode}")
    if args.per_test and args.out.exists():
        rows = json.loads(args.out.read_text())
        total = sum(r["cpu_s"] for r in rows)
        print(f"{len(rows)} tests, {total:.0f} CPU-s in all (rows: {args.out})")
        print(f"\nthe {args.top} costliest tests (CPU-s, wall s):")
        for row in sorted(rows, key=lambda r: -r["cpu_s"])[:args.top]:
            print(f"  {row['cpu_s']:7.1f} {row['wall_s']:7.1f}  {row['test']}")
        modules: collections.Counter = collections.Counter()
        for row in rows:
            modules[row["test"].split("::")[0]] += row["cpu_s"]
        print("\nby module (CPU-s):")
        for module, seconds in modules.most_common(args.top):
            print(f"  {seconds:7.1f}  {module}")
    return result.returncode


if __name__ == "__main__":
    sys.exit(main())
