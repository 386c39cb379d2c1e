"""The one-process lock of a run and of a sweep (podcycle.owner_lock), in-process: two
OwnerLock objects on one file conflict as two processes do (an flock belongs to an open file,
not to a process)."""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

import pytest

from podcycle.owner_lock import OwnerLock, _record
from podcycle.runs import RunBusy, RunFolder


def test_one_holder_at_a_time_and_the_refused_one_learns_who(tmp_path: Path) -> None:
    path = tmp_path / "run" / ".lock"
    first, second = OwnerLock(path), OwnerLock(path)
    assert not first.held() and first.holder() is None
    assert first.acquire(command="inv cycle.full-smoke") is None and first.held_here
    assert first.acquire() is None  # held here already
    refused = second.acquire(command="inv cycle.train")
    assert refused is not None and not second.held_here
    assert (refused["pid"], refused["command"]) == (os.getpid(), "inv cycle.full-smoke")
    assert second.held() and second.holder()["command"] == "inv cycle.full-smoke"
    first.release()
    assert not second.held() and second.holder() is None
    assert second.acquire(command="inv cycle.train") is None
    assert first.holder()["command"] == "inv cycle.train"
    second.release()


def test_a_holder_that_wrote_no_record_yet_is_named_as_unknown(tmp_path: Path) -> None:
    path = tmp_path / ".lock"
    fd = os.open(path, os.O_RDWR | os.O_CREAT)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)  # taken, its record not written yet
        assert _record(fd, patience=0) == {}
        assert OwnerLock(path).holder() == {}
    finally:
        os.close(fd)


def test_a_run_in_use_is_refused_naming_its_holder(tmp_path: Path) -> None:
    first, second = RunFolder(tmp_path, "busy"), RunFolder(tmp_path, "busy")
    first.lock()
    try:
        assert second.is_driven() and second.holder_pid() == os.getpid()
        with pytest.raises(RunBusy) as refused:
            second.lock()
        assert f"run busy is in use by another process (pid {os.getpid()}: " in str(refused.value)
    finally:
        first.unlock()
    assert not second.is_driven() and second.holder_pid() is None


def test_a_lock_file_on_a_read_only_disk_still_locks(tmp_path: Path, monkeypatch) -> None:
    """cycle.stop on a run folder gone read-only failed at its lock ("Read-only file system:
    .lock"), and the pod billed on: the lock needs no write, so it is taken read-only."""
    import errno

    path = tmp_path / "run" / ".lock"
    earlier = OwnerLock(path)
    earlier.acquire(command="inv cycle.start")
    earlier.release()  # an earlier holder, gone now: its lock file stays
    real_open = os.open

    def read_only(name, flags, *args):
        if flags & (os.O_RDWR | os.O_WRONLY):
            raise OSError(errno.EROFS, "Read-only file system", str(name))
        return real_open(name, flags, *args)

    monkeypatch.setattr(os, "open", read_only)
    first, second = OwnerLock(path), OwnerLock(path)
    assert first.acquire(command="inv cycle.stop") is None and first.held_here
    assert second.acquire() is not None  # still one holder at a time
    first.release()
    with pytest.raises(OSError):  # nothing to lock on a read-only disk: said as it is
        OwnerLock(tmp_path / "other" / ".lock").acquire()


def test_a_full_disk_names_the_lock_file_and_leaves_no_half_made_run(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A run made on a full disk: `error: No space left on device` with no path (the lock
    record's pwrite), a lock held with nothing recorded, and a run folder left behind that
    runs.list showed as `foreign`."""
    import errno

    from podcycle.config import resolve
    from podcycle.cycle import open_run

    def full(fd: int, data: bytes, offset: int) -> int:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "pwrite", full)
    lock = OwnerLock(tmp_path / "held" / ".lock")
    with pytest.raises(OSError) as refused:
        lock.acquire()
    assert refused.value.filename == str(tmp_path / "held" / ".lock")
    assert not lock.held_here and not lock.held()  # its descriptor closed: nothing held
    settings = resolve({}, {}, environ={"POD_CYCLE_ARTIFACTS_DIR": str(tmp_path / "art"),
                                        "RUNPOD_CYCLE_RUN_ID": "full"}, use_keyring=False)
    with pytest.raises(OSError):
        open_run(settings, mode="start", announce=lambda _: None)
    assert not (tmp_path / "art" / "full").exists()


def test_a_run_held_by_a_suspended_process_is_said_so(tmp_path: Path) -> None:
    """A full-smoke suspended with Ctrl-Z (or SIGSTOP) keeps its run's lock: a --resume was
    told to "wait for it to finish, or end it with Ctrl-C there", though it never finishes and
    a Ctrl-C or kill does nothing until it is continued, while its pod bills on."""
    import signal
    import subprocess
    import sys

    from podcycle.signals import suspended
    from tests.conftest import ROOT, eventually

    code = ("import sys\nfrom pathlib import Path\nfrom podcycle.runs import RunFolder\n"
            "run = RunFolder(Path(sys.argv[1]), 'paused')\nrun.lock()\n"
            "print('locked', flush=True)\nsys.stdin.read()\n")
    holder = subprocess.Popen([sys.executable, "-c", code, str(tmp_path)], cwd=ROOT,
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline() == "locked\n"
        assert not suspended(holder.pid)
        with pytest.raises(RunBusy) as running:
            RunFolder(tmp_path, "paused").lock()
        assert "is in use by another process" in running.value.message
        os.kill(holder.pid, signal.SIGSTOP)
        eventually(lambda: suspended(holder.pid), timeout=30, what="the holder stopped")
        with pytest.raises(RunBusy) as refused:
            RunFolder(tmp_path, "paused").lock()
        assert refused.value.message.startswith(
            f"run paused is held by a suspended process (pid {holder.pid}: ")
        assert f"kill -CONT {holder.pid}" in refused.value.remedy
    finally:
        os.kill(holder.pid, signal.SIGCONT)
        holder.stdin.close()
        holder.wait(timeout=30)
    assert not suspended(None) and not suspended(True)  # no pid: nothing to ask ps about


def test_a_run_a_sweep_drives_is_refused_naming_the_sweep(tmp_path: Path,
                                                          monkeypatch) -> None:
    """cycle.stop -r on a trial's run while its sweep drives it: "end it with Ctrl-C there",
    though the trial's cycle has no terminal. The refusal names the sweep and sweep.stop."""
    from podcycle.runs import DRIVING_SWEEP

    monkeypatch.setenv(DRIVING_SWEEP, "night-lr")  # as the sweep starts a trial's cycle
    trial = RunFolder(tmp_path, "night-lr-t3")
    trial.lock()
    monkeypatch.delenv(DRIVING_SWEEP)
    try:
        with pytest.raises(RunBusy) as refused:
            RunFolder(tmp_path, "night-lr-t3").lock()
    finally:
        trial.unlock()
    assert refused.value.message.startswith("run night-lr-t3 is in use by another process "
                                            f"(pid {os.getpid()}: ")
    assert refused.value.message.endswith("a trial of sweep night-lr")
    assert refused.value.remedy == ("wait for the sweep (inv sweep.status night-lr), or stop "
                                    "it with inv sweep.stop night-lr (each trial stops its pod)")


def test_a_look_at_the_lock_never_refuses_one_who_takes_it(tmp_path: Path) -> None:
    """held() (runs.list, pod.leftovers, sweep.status: every run, over and over) takes a
    shared lock for a moment: a lock() in that moment was refused, naming the last holder's
    record (a process long gone, or the caller itself), and pod.leftovers --stop then kept a
    billing pod as "driven again". Another process looks at the lock without pause here."""
    import subprocess
    import sys

    from tests.conftest import ROOT

    path = tmp_path / "run" / ".lock"
    earlier = OwnerLock(path)
    earlier.acquire(command="inv cycle.start")
    earlier.release()  # a holder before, gone: its record stays in the file
    code = ("import sys\nfrom pathlib import Path\nfrom podcycle.owner_lock import OwnerLock\n"
            "lock = OwnerLock(Path(sys.argv[1]))\nprint('looking', flush=True)\n"
            "while True:\n"
            "    lock.held()\n")
    looker = subprocess.Popen([sys.executable, "-c", code, str(path)], cwd=ROOT,
                              stdout=subprocess.PIPE, text=True)
    try:
        assert looker.stdout.readline() == "looking\n"
        refused = []
        for _ in range(1000):
            lock = OwnerLock(path)
            holder = lock.acquire(command="inv cycle.train")
            if holder is not None:
                refused.append(holder)
            lock.release()
        assert refused == []
    finally:
        looker.kill()
        looker.wait()
