"""One process at a time on a run or a sweep: a kernel lock (flock) on a file, which the
kernel frees when its holder dies (never a stale lock file to remove by hand). The file holds
one JSON record of who holds it: its pid, since when, and what the caller adds (a command)."""

from __future__ import annotations

import errno
import json
import os
import time
from pathlib import Path
from typing import Any

from podcycle.signals import alive


class OwnerLock:
    def __init__(self, path: Path) -> None:
        self.path = path
        self._fd: int | None = None

    @property
    def held_here(self) -> bool:
        """Whether this process holds the lock (through this object)."""
        return self._fd is not None

    def acquire(self, **who: Any) -> dict[str, Any] | None:
        """Hold the lock for this process and write its record ({"pid", "since"} and `who`).
        None once held (or held here already); when another live process holds it, that
        holder's record ({} if it has written none yet), and nothing is held."""
        import fcntl

        if self._fd is not None:
            return None
        self.path.parent.mkdir(parents=True, exist_ok=True)
        writable = True
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        except OSError as exc:
            # A folder gone read-only (a full or remounted disk): a lock file there still
            # locks, read-only (flock needs no write access), so a stop can still run.
            if exc.errno not in (errno.EROFS, errno.EACCES) or not self.path.is_file():
                raise
            fd, writable = os.open(self.path, os.O_RDONLY), False
        # held() takes a shared lock for a moment (runs.list, pod.leftovers, sweep.status:
        # every run, over and over): a lock asked for in that moment was refused, naming the
        # last holder's record, long dead. A real holder keeps it past PROBE_SECONDS.
        give_up = time.monotonic() + PROBE_SECONDS
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() < give_up:
                    time.sleep(0.01)
                    continue
                try:
                    return _record(fd)
                finally:
                    os.close(fd)
        if writable:
            try:
                os.ftruncate(fd, 0)
                os.pwrite(fd, json.dumps({"pid": os.getpid(), **who,
                                          "since": time.time()}).encode(), 0)
            except OSError as exc:  # a full disk: said with the file's path, nothing held
                os.close(fd)
                raise OSError(exc.errno, exc.strerror, str(self.path)) from None
        self._fd = fd
        return None

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing the descriptor frees the flock
            self._fd = None

    def held(self) -> bool:
        """Whether a live process (this one included) holds the lock."""
        import fcntl

        try:
            fd = os.open(self.path, os.O_RDONLY)
        except OSError:
            return False
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        finally:
            os.close(fd)
        return False

    def holder(self) -> dict[str, Any] | None:
        """The live holder's record ({} if unreadable), or None when nobody holds the lock."""
        if not self.held():
            return None
        try:
            return json.loads(self.path.read_text() or "{}") or {}
        except (OSError, ValueError, RecursionError):
            return {}


# How long a lock that is taken is asked for again before the refusal: longer than held()'s
# shared lock lasts (microseconds), far shorter than any real holder's.
PROBE_SECONDS = 0.5


def _record(fd: int, patience: float = 2.0) -> dict[str, Any]:
    """The holder's record. A holder writes it right after taking the lock: a process refused
    in between waits a moment for it rather than name nobody, or the last holder, whose
    record stays in the file after it is gone."""
    give_up = time.monotonic() + patience
    while True:
        try:
            record = json.loads(os.pread(fd, 4096, 0) or b"{}")
            if isinstance(record, dict) and alive(record.get("pid")):
                return record
        except (OSError, ValueError, RecursionError):
            pass
        if time.monotonic() >= give_up:
            return {}
        time.sleep(0.05)
