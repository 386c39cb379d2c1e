#!/usr/bin/env python3
"""Where does the test suite's time go? The machine's busy CPU-seconds (from /proc/stat, so
every process counts: the local RunPod servers, their pods, the detached trainers, which
`time make test` misses) against what its cores could give in the same wall time.

Without --per-test it runs `make test` itself (pytest-xdist, its 6 workers): wall time,
busy CPU-s and their share of cores x wall. A share near 100% means the suite is CPU-bound
and only spending less CPU can shorten it. With --per-test it runs `make test
TEST_WORKERS=0` (one process) and the busy CPU-s around each test (its pods, servers and
`inv` runs included), written as JSON and summed per module. Both count whatever else runs
on the machine: run them on a quiet one.

    .venv/bin/python bench/suite_cpu.py                          # about as long as make test
    .venv/bin/python bench/suite_cpu.py --per-test --top 20      # serial: about twice that
    .venv/bin/python bench/suite_cpu.py --per-test -- tests/test_cycle.py -k full_smoke

With --workers 4,6 it runs `make test` with each number of workers in turn (--rounds times,
alternating, so that a machine's drift touches both), and prints each run and the wall time
of each number against the first's:

    .venv/bin/python bench/suite_cpu.py --workers 4,6 --rounds 2

With --by-program (root, and BSD process accounting: Debian's `acct` package) it runs
`make test` once with the kernel's accounting on, and sums the CPU of every process that
ended by what it was: each `inv` by its task, each Python program by its module or script
(a sitecustomize.py put into the venv for the run names them, i:TASK, m:MODULE, s:SCRIPT, the
last 13 characters; removed after), any other by its command name (a torch process may show
as the thread that ended last, pt_elastic for torchrun's agent). That tells where the CPU
goes across pods, trainers and tasks alike:

    sudo .venv/bin/python bench/suite_cpu.py --by-program --top 25

Both at once charge each process to the test that started it (its pid within the pids the
kernel gave out during the test), whenever it ended, in one serial run:

    sudo .venv/bin/python bench/suite_cpu.py --per-test --by-program --top 20
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import shlex
import shutil
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


def last_pid() -> int | None:
    """The last pid the kernel gave out: the processes a test starts have pids between its
    value before and after the test (with --by-program, each is charged to its test)."""
    try:
        return int(Path("/proc/sys/kernel/ns_last_pid").read_text())
    except (OSError, ValueError):
        return None


# -- the pytest plugin (loaded with -p suite_cpu by --per-test) --------------------------------
_rows: list[dict] = []


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item: pytest.Item, nextitem: pytest.Item | None):
    """Around each test (setup, call, teardown): the machine's busy CPU-s and the wall time,
    appended to the rows in $SUITE_CPU_OUT after every test (a crash keeps the ones done)."""
    cpu, wall, first = busy_seconds(), time.monotonic(), last_pid()
    yield
    _rows.append({"test": item.nodeid, "cpu_s": round(busy_seconds() - cpu, 2),
                  "wall_s": round(time.monotonic() - wall, 2),
                  "pids": [first, last_pid()]})
    Path(os.environ[OUT_VAR]).write_text(json.dumps(_rows, indent=1) + "\n")


# -- the runs ----------------------------------------------------------------------------------
def command_line(extra: list[str], per_test: bool, workers: int | None = None) -> list[str]:
    """`make test` itself (its workers, their distribution, its environment), in one process
    with the per-test plugin for --per-test; `extra` goes to pytest."""
    pytest_args = [*(["-p", "suite_cpu"] if per_test else []), *extra]
    if per_test:
        workers = 0
    return ["make", "--no-print-directory", "test",
            *([f"TEST_WORKERS={workers}"] if workers is not None else []),
            f"PYTEST_ARGS={shlex.join(pytest_args)}"]


def compare_workers(counts: list[int], rounds: int, extra: list[str]) -> int:
    """`make test` with each number of workers in turn, `rounds` times: wall and busy share
    of each run, then each number's mean wall time against the first number's."""
    cores = os.cpu_count() or 1
    walls: dict[int, list[float]] = {n: [] for n in counts}
    for round_ in range(1, rounds + 1):
        for n in counts:
            cpu, wall = busy_seconds(), time.monotonic()
            code = subprocess.run(command_line(extra, False, n), cwd=ROOT,
                                  capture_output=True).returncode
            cpu, wall = busy_seconds() - cpu, time.monotonic() - wall
            print(f"round {round_}, {n} workers: wall {wall:.1f} s, machine busy {cpu:.0f} "
                  f"CPU-s ({100 * cpu / (cores * wall):.0f}% of {cores} cores); exit {code}",
                  flush=True)
            if code != 0:
                return code
            walls[n].append(wall)
    first = sum(walls[counts[0]]) / rounds
    for n in counts:
        mean = sum(walls[n]) / rounds
        print(f"{n} workers: mean wall {mean:.1f} s = {mean / first:.2f}x of {counts[0]} workers")
    return 0


# -- --by-program: BSD process accounting -----------------------------------------------------
# Put into the venv for the run: names each Python process (its kernel `comm`, which the
# accounting records) by what it runs, since they would all be "python" or "inv".
SITECUSTOMIZE = '''# bench/suite_cpu.py --by-program put this here for its run; it removes it after.
import os, sys


def _name():
    argv = list(getattr(sys, "orig_argv", sys.argv))
    program, args = os.path.basename(argv[0]), argv[1:]
    if program != "inv" and args and os.path.basename(args[0]) == "inv":
        program, args = "inv", args[1:]  # python .venv/bin/inv TASK
    if program == "inv":
        tasks = [a for a in args if not a.startswith("-") and "." in a]
        return "i:" + (tasks[0] if tasks else "?")[-13:]
    while args and args[0].startswith("-") and args[0] not in ("-m", "-c"):
        args = args[2:] if args[0] in ("-X", "-W") else args[1:]  # -u, -X opt, ...
    if len(args) > 1 and args[0] == "-m":
        return "m:" + args[1][-13:]
    if args and args[0] == "-c":
        return "c:-c"
    return "s:" + os.path.basename(args[0])[-13:] if args else None


try:
    _n = _name()
    if _n:
        import ctypes
        ctypes.CDLL(None).prctl(15, _n.encode()[:15], 0, 0, 0)  # PR_SET_NAME
except Exception:
    pass
'''


GROUPS = {"i:": "inv TASK", "m:": "python -m MODULE", "s:": "python SCRIPT", "c:": "python -c"}


def by_program(pacct: Path) -> tuple[collections.Counter, collections.Counter,
                                     list[tuple[int, float]]]:
    """CPU-s (user + system) and processes per recorded command name, from `dump-acct`; and
    each process's (pid, CPU-s)."""
    dump = subprocess.run(["dump-acct", str(pacct)], capture_output=True, text=True,
                          check=True).stdout
    seconds: collections.Counter = collections.Counter()
    processes: collections.Counter = collections.Counter()
    each: list[tuple[int, float]] = []
    for line in dump.splitlines():
        fields = line.split("|")
        if len(fields) > 9:
            name = fields[0].rstrip()
            cpu = (float(fields[2]) + float(fields[3])) / 100  # AHZ
            seconds[name] += cpu
            processes[name] += 1
            each.append((int(fields[9]), cpu))
    return seconds, processes, each


def charged(rows: list[dict], each: list[tuple[int, float]]) -> collections.Counter:
    """Each accounted process's CPU-s charged to the test that started it (its pid between
    the test's first and last), whenever it ended: a pod, a trainer or a server a test left
    running counts to that test, not to the ones that ran while it lived on. A module's
    server goes to the module's first test. The pytest process itself is charged to none."""
    import bisect

    spans = sorted((r["pids"][0], r["pids"][1], r["test"]) for r in rows
                   if r.get("pids") and None not in r["pids"])
    starts = [span[0] for span in spans]
    cost: collections.Counter = collections.Counter()
    for pid, cpu in each:
        at = bisect.bisect_left(starts, pid) - 1
        if at >= 0 and spans[at][0] < pid <= spans[at][1]:
            cost[spans[at][2]] += cpu
    return cost


def accounted(command: list[str], env: dict[str, str]
              ) -> tuple[int, tuple[collections.Counter, collections.Counter]]:
    """Run `command` with process accounting on and the naming sitecustomize in the venv."""
    import sysconfig
    import tempfile

    if os.geteuid() != 0:
        raise SystemExit("--by-program turns the kernel's process accounting on: run it as root")
    for tool in ("accton", "dump-acct"):
        if shutil.which(tool) is None:
            raise SystemExit(f"--by-program needs {tool} (BSD process accounting): "
                             "apt-get install acct, and run as root")
    site = Path(sysconfig.get_path("purelib")) / "sitecustomize.py"
    if site.exists():
        raise SystemExit(f"{site} exists already: --by-program would replace it; move it away")
    with tempfile.TemporaryDirectory() as folder:
        pacct = Path(folder) / "pacct"
        pacct.touch()
        site.write_text(SITECUSTOMIZE)
        try:
            subprocess.run(["accton", str(pacct)], check=True, stdout=subprocess.DEVNULL)
            try:
                code = subprocess.run(command, cwd=ROOT, env=env).returncode
            finally:
                subprocess.run(["accton", "off"], stdout=subprocess.DEVNULL)
        finally:
            site.unlink()
        return code, by_program(pacct)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--per-test", action="store_true",
                        help="one process, the busy CPU-s around each test (JSON + summary)")
    parser.add_argument("--by-program", action="store_true",
                        help="the CPU of every process by task, module or program (root, "
                             "BSD process accounting)")
    parser.add_argument("--out", type=Path, default=ROOT / "artifacts" / "suite_cpu.json",
                        help="where --per-test writes its rows (default: %(default)s)")
    parser.add_argument("--top", type=int, default=15,
                        help="tests, modules or programs shown (default 15)")
    parser.add_argument("--workers", type=lambda v: [int(n) for n in v.split(",")],
                        help="numbers of test workers to compare, e.g. 4,6 (make test with "
                             "each in turn)")
    parser.add_argument("--rounds", type=int, default=1,
                        help="with --workers: runs of each number (default 1)")
    parser.add_argument("pytest_args", nargs="*", help="after --: passed to pytest")
    args = parser.parse_args()
    if args.workers:
        return compare_workers(args.workers, args.rounds, args.pytest_args)

    env = dict(os.environ)
    if args.per_test:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.unlink(missing_ok=True)
        env[OUT_VAR] = str(args.out)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT / "bench"),
                                                           env.get("PYTHONPATH")]))
    cores = os.cpu_count() or 1
    cpu, wall = busy_seconds(), time.monotonic()
    command = command_line(args.pytest_args, args.per_test)
    if args.by_program:
        code, programs = accounted(command, env)
    else:
        code, programs = subprocess.run(command, cwd=ROOT, env=env).returncode, None
    cpu, wall = busy_seconds() - cpu, time.monotonic() - wall
    print(f"\nwall {wall:.1f} s; machine busy {cpu:.0f} CPU-s of {cores * wall:.0f} "
          f"({cores} cores x wall): {100 * cpu / (cores * wall):.0f}%; make test exit {code}")
    each: list[tuple[int, float]] = []
    if programs is not None:
        programs, processes, each = programs
        total = sum(programs.values())
        print(f"\nprocesses that ended: {total:.0f} CPU-s; by what they ran "
              "(CPU-s, share, processes, CPU-s each):")
        for name, seconds in programs.most_common(args.top):
            print(f"  {seconds:7.1f} {100 * seconds / total:5.1f}% {processes[name]:6d} "
                  f"{seconds / processes[name]:6.2f}  {name}")
        groups: collections.Counter = collections.Counter()
        for name, seconds in programs.items():
            groups[GROUPS.get(name[:2], "other programs")] += seconds
        print("\nby kind: " + "; ".join(f"{g} {v:.0f}" for g, v in groups.most_common()))
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
        if each:
            cost = charged(rows, each)
            print(f"\nby the processes each test started (--by-program: {sum(cost.values()):.0f}"
                  f" CPU-s charged by pid; the pytest process's own not included):")
            for test, seconds in cost.most_common(args.top):
                print(f"  {seconds:7.1f}  {test}")
    return code


if __name__ == "__main__":
    sys.exit(main())
