"""chessbot.procpool: the worker pool behind data.import-pgn and the dataset encoding ends
cleanly however its consumer stops, with real worker processes (forkserver)."""

from __future__ import annotations

import signal
import subprocess
import sys
import threading
import time

import pytest

from chessbot.procpool import ordered_map, stopping
from tests.conftest import interrupt

BIG = 1 << 20  # bytes: a result much larger than a pipe holds (64 KiB)


def big_result(job: int) -> bytes:
    return bytes([job % 256]) * BIG


def until_stopped(job: int) -> int:
    """A long job that gives up once the consumer has gone (as an import batch does)."""
    if job == 0:
        return 0
    deadline = time.monotonic() + 120
    while not stopping() and time.monotonic() < deadline:
        sum(range(1000))  # work, not a wait
    return -1 if stopping() else job


def ends_within(action, seconds: float) -> bool:
    """Run `action` in a thread; False when it has not returned after `seconds` (a bound on
    a hang, never a measurement)."""
    worker = threading.Thread(target=action, daemon=True)
    worker.start()
    worker.join(seconds)
    return not worker.is_alive()


def test_results_come_in_order_as_map_gives_them() -> None:
    assert list(ordered_map(abs, range(-40, 0), 2)) == list(map(abs, range(-40, 0)))
    assert list(ordered_map(abs, iter(range(-5, 0)), 1)) == [5, 4, 3, 2, 1]


def test_a_consumer_that_stops_early_never_hangs_on_large_results() -> None:
    """Pool.terminate() hung here: a worker writing a result larger than the pipe, with the
    pool's result thread already gone, held the lock terminate() needed (one Ctrl-C in eight
    hung data.import-pgn --workers 2)."""
    for attempt in range(6):
        def stop_after_one() -> None:
            results = ordered_map(big_result, range(64), 2, in_flight=4)
            assert next(results) == bytes([0]) * BIG
            results.close()

        assert ends_within(stop_after_one, 120), f"the pool hung on attempt {attempt + 1}"


def test_workers_see_the_consumer_go_and_cut_their_jobs_short() -> None:
    def stop_after_one() -> None:
        results = ordered_map(until_stopped, range(6), 2)
        assert next(results) == 0
        results.close()  # returns once both workers gave up their running job

    assert ends_within(stop_after_one, 100), "the workers did not stop their running jobs"
    assert not stopping()  # only a worker of a stopped map says so


def test_an_error_in_a_job_reaches_the_consumer_and_the_pool_ends() -> None:
    def boom() -> None:
        with pytest.raises(ZeroDivisionError):
            list(ordered_map(divmod_by_zero_at_three, range(40), 2))

    assert ends_within(boom, 120)


def divmod_by_zero_at_three(job: int) -> bytes:
    if job == 3:
        raise ZeroDivisionError("job 3")
    return big_result(job)


SCRIPT = """
import signal, sys
from chessbot.procpool import ordered_map
from tests.signal_wait import until_a_signal
from tests.test_procpool import big_result
try:
    for n, result in enumerate(ordered_map(big_result, range(10**6), 2)):
        if n == 2:
            print("consuming", flush=True)
            until_a_signal()  # Ctrl-C lands while this process holds a result
except KeyboardInterrupt:
    print("interrupted", flush=True)
"""


@pytest.mark.slow
def test_ctrl_c_to_the_whole_group_is_one_exception_in_the_consumer_alone() -> None:
    """Ctrl-C reaches every process of the terminal's group: the workers and the forkserver
    ignore it (no KeyboardInterrupt traceback from them), the consumer ends cleanly."""
    def consuming(proc: subprocess.Popen) -> None:
        assert proc.stdout.readline() == "consuming\n"

    proc, out, err = interrupt([sys.executable, "-c", SCRIPT], consuming, group=True)
    assert out == "interrupted\n", err
    assert "Traceback" not in err and "KeyboardInterrupt" not in err, err
    assert proc.returncode == 0


TRAPPING_SCRIPT = """
import signal, sys
from chessbot.procpool import ordered_map
from tests.signal_wait import until_a_signal
from tests.test_procpool import until_stopped

def interrupted(signum, frame):  # as pod-cycle's tasks take them (podcycle.signals)
    raise KeyboardInterrupt

signal.signal(signal.SIGTERM, interrupted)
signal.signal(signal.SIGHUP, interrupted)
try:
    for n, result in enumerate(ordered_map(until_stopped, range(10**6), 2)):
        print("consuming", flush=True)  # job 0; the workers busy with the next ones
        until_a_signal()
except KeyboardInterrupt:
    print("interrupted", flush=True)
"""


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGHUP], ids=["SIGTERM", "SIGHUP"])
def test_a_kill_or_a_closed_terminal_to_the_whole_group_ends_the_consumer(sig: int) -> None:
    """`kill -TERM -PGID` (timeout, a CI job cancelled) or a closed terminal (SIGHUP) reaches
    every process of the group. The workers died of it, the pool replaced them, and the jobs
    they held never answered: data.import-pgn, data.encode and data.stats, draining them on
    the way out, hung for ever. SIGHUP also killed the forkserver and the resource tracker.
    Now the consumer alone hears them and ends, as on Ctrl-C."""
    def consuming(proc: subprocess.Popen) -> None:
        assert proc.stdout.readline() == "consuming\n"

    proc, out, err = interrupt([sys.executable, "-c", TRAPPING_SCRIPT], consuming, sig=sig,
                               group=True, timeout=60)
    assert out == "interrupted\n", err
    assert proc.returncode == 0 and "Traceback" not in err, err
    assert "died unexpectedly" not in err, err  # the resource tracker lived on


def pid_or_work(job: int) -> int:
    """Jobs 0 and 1: the worker's pid at once; the others: long work until stopped."""
    import os

    return os.getpid() if job < 2 else until_stopped(job)


UNTRAPPING_SCRIPT = """
from chessbot.procpool import ordered_map
from tests.signal_wait import until_a_signal
from tests.test_procpool import pid_or_work

for n, result in enumerate(ordered_map(pid_or_work, range(10**6), 2, in_flight=1)):
    print(result, flush=True)
    if n == 1:
        print("consuming", flush=True)
        until_a_signal()  # no handler: the group's SIGTERM ends this process on the spot
"""


@pytest.mark.slow
def test_workers_end_when_a_consumer_without_a_handler_dies() -> None:
    """The trainer encodes its dataset through this pool with no SIGTERM handler of its own:
    a `kill -TERM -PGID` (the pod's stop) ended it on the spot, and its workers, which ignore
    the group's SIGTERM, worked through their jobs, then died on the write with a
    BrokenPipeError traceback in the log. They now end once their consumer is gone."""
    from podcycle.signals import alive
    from tests.conftest import eventually

    pids: list[int] = []

    def consuming(proc: subprocess.Popen) -> None:
        while (line := proc.stdout.readline()) != "consuming\n":
            assert line, "the consumer ended early"
            pids.append(int(line))

    proc, out, err = interrupt([sys.executable, "-c", UNTRAPPING_SCRIPT], consuming,
                               sig=signal.SIGTERM, group=True, timeout=60)
    assert proc.returncode == -signal.SIGTERM and len(set(pids)) >= 1, (pids, err)

    eventually(lambda: not any(alive(pid) for pid in pids), timeout=30,
               what=lambda: f"the workers {pids} to end")
    assert "Traceback" not in err, err
