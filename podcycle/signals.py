"""SIGINT, SIGTERM and SIGHUP as the cycle takes them: an interruption that the `finally`s on
the way out handle (trap_signals), or held back while a create request is answered and its
pod recorded (held_signals), so an interrupted start never leaves a pod nobody knows of.

SIGHUP is the terminal or SSH session that ran `inv` going away. Its default ends the process
on the spot, no `finally` run: a pod started would bill on with nothing to stop it."""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any


class Interrupted(KeyboardInterrupt):
    """A trapped signal; `signum` says which (Python's own Ctrl-C has none: SIGINT)."""

    signum = signal.SIGINT


# Ctrl-C; a `kill`, a CI job cancelled, a supervisor's stop; the terminal or SSH session gone.
TRAPPED = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)

# What pod-cycle sends a process of its own to interrupt it (sweep.stop, a pruned trial): taken
# as Ctrl-C is, where SIGINT may not be. A command started with `&` by a script (no job
# control) runs with SIGINT ignored, and so does every process it starts.
STOP_SIGNAL = signal.SIGTERM


def _a_pid(pid: Any) -> bool:
    return isinstance(pid, int) and not isinstance(pid, bool) and pid > 0


def alive(pid: Any) -> bool:
    """Whether process `pid` exists (another user's included), on Linux and macOS alike."""
    if not _a_pid(pid):
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's: alive
        return True
    return True


def suspended(pid: Any) -> bool:
    """Whether process `pid` is stopped (Ctrl-Z in its terminal, SIGSTOP): it keeps its locks
    and does nothing, and a Ctrl-C or STOP_SIGNAL sent to it waits until it is continued. `ps`
    answers alike on Linux and macOS."""
    import subprocess

    if not _a_pid(pid):
        return False
    try:
        stat = subprocess.run(["ps", "-o", "stat=", "-p", str(pid)], capture_output=True,
                              text=True, timeout=5).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return False
    return stat.startswith("T")


def how_to_continue(pid: int) -> str:
    """What to do with a suspended process holding a run: the one wording of it."""
    return (f"continue it (fg in its terminal, or kill -CONT {pid}) and let it finish, or "
            "Ctrl-C it there (a full-smoke then stops its pod)")


def interrupt(pid: int, announce: Callable[[str], None] | None = None) -> None:
    """STOP_SIGNAL to a process of pod-cycle's own (a sweep, a trial's cycle), continued after
    it when it is suspended: Ctrl-Z stops a sweep's whole process group, trials included, and
    the signal then waited with them while their pods billed on (sweep.stop gave up after its
    wait). ProcessLookupError when it is gone."""
    os.kill(pid, STOP_SIGNAL)
    if suspended(pid):
        if announce is not None:
            announce(f"pid {pid} was suspended (Ctrl-Z or SIGSTOP): continuing it, so that "
                     "it stops")
        os.kill(pid, signal.SIGCONT)


def _handlers() -> dict[int, Any]:
    """The handlers of the TRAPPED signals, as they are now."""
    return {sig: signal.getsignal(sig) for sig in TRAPPED}


def handlers_to_trap() -> dict[int, Any]:
    """The handlers of the TRAPPED signals that are not ignored. One the process was started
    ignoring stays ignored, as Python leaves SIGINT: `nohup inv cycle.full-smoke &` must go
    on training after the logout's SIGHUP."""
    return {sig: handler for sig, handler in _handlers().items()
            if handler is not signal.SIG_IGN}


def trap_signals() -> dict[int, Any]:
    """From now on SIGINT, SIGTERM and SIGHUP raise Interrupted, as Ctrl-C does: the step ends
    as `interrupted` in the run state, and whatever bills is dealt with by the `finally`s on
    the way out. A signal the process was started ignoring (nohup) stays ignored. Returns the
    handlers that were there (give them back with `restore_signals`). Only the main thread
    can take signals; elsewhere this changes nothing."""
    if threading.current_thread() is not threading.main_thread():
        return {}
    previous = handlers_to_trap()

    def interrupted(signum: int, frame: Any) -> None:
        if signum == signal.SIGHUP:  # a closing terminal sends it twice (kernel, then shell):
            signal.signal(signum, signal.SIG_IGN)  # one interruption; restore gives it back
        error = Interrupted(f"signal {signal.Signals(signum).name}")
        error.signum = signum
        raise error

    for sig in previous:
        signal.signal(sig, interrupted)
    return previous


def restore_signals(previous: dict[int, Any]) -> None:
    for sig, handler in previous.items():
        signal.signal(sig, handler)


@contextmanager
def ignored_signals() -> Iterator[None]:
    """SIGINT, SIGTERM and SIGHUP ignored for the block, then given back (main thread only):
    a bounded clean-up on the way out that a second Ctrl-C, or the SIGTERM a CI runner sends
    after its SIGINT, must not cut short."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = _handlers()
    for sig in previous:
        signal.signal(sig, signal.SIG_IGN)
    try:
        yield
    finally:
        restore_signals(previous)


@contextmanager
def held_signals(announce: Callable[[str], None] | None,
                 until: str = "RunPod has answered the create, so that what it made can be "
                              "stopped too") -> Iterator[None]:
    """SIGINT, SIGTERM and SIGHUP wait until the block ends (a create request and the
    recording of what it made): a signal while the request is in flight would leave a pod
    RunPod made but the run never recorded, billing with no `finally` to stop it. The signal
    is delivered to the handler that was there once the block is done (or fails). Main
    thread only. `announce` says, once, that the stop waits `until` (None: in silence)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = handlers_to_trap()
    pending: list[int] = []

    def hold(signum: int, frame: Any) -> None:
        if not pending and announce is not None:
            announce(f"{signal.Signals(signum).name}: stopping once {until}")
        pending.append(signum)

    for sig in previous:
        signal.signal(sig, hold)
    try:
        yield
    finally:
        restore_signals(previous)
        if pending:
            signal.raise_signal(pending[0])


@contextmanager
def interruptible(what: str, then: str) -> Iterator[None]:
    """A command that makes nothing that bills (an import, an encoding): Ctrl-C, SIGTERM or
    SIGHUP during the block ends it with exit 130 and one line, `interrupted: WHAT` then `→ THEN`,
    once the `finally`s inside have removed its temporary files."""
    from invoke.exceptions import Exit

    previous = trap_signals()
    try:
        yield
    except KeyboardInterrupt:
        raise Exit(f"interrupted: {what}\n  → {then}", code=130) from None
    finally:
        restore_signals(previous)


def pyplot() -> Any:
    """matplotlib.pyplot on its Agg backend (no display), imported with the signals held:
    an interruption raised inside the import of its C extensions failed it ("ImportError:
    initialization failed") and once aborted Python itself ("PyThreadState_Get: ... GIL is
    released"). A Ctrl-C then takes effect a moment later, once the import is done."""
    from podcycle.config import say

    # A first import builds matplotlib's font cache: seconds, in which a Ctrl-C is said.
    with held_signals(say, "matplotlib has loaded (a first run builds its font cache)"):
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    return plt
