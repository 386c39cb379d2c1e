"""How the cycle takes signals (podcycle.signals) and what it says on the way out
(podcycle.config.say), in this process: SIGHUP, a terminal or SSH session gone, is taken as
Ctrl-C and SIGTERM are; a message whose reader is gone never stops what comes after it (a
pod stopped). The end-to-end cases are in test_cycle.py."""

from __future__ import annotations

import os
import signal
import sys

import pytest

from podcycle.config import say
from podcycle.signals import (
    TRAPPED,
    Interrupted,
    held_signals,
    ignored_signals,
    restore_signals,
    trap_signals,
)


@pytest.fixture
def trapped():
    previous = trap_signals()
    yield
    restore_signals(previous)


@pytest.mark.parametrize("sig", TRAPPED, ids=lambda s: s.name)
def test_each_signal_interrupts_as_ctrl_c_does(trapped, sig: signal.Signals) -> None:
    with pytest.raises(Interrupted, match=sig.name):
        signal.raise_signal(sig)


def test_sighup_waits_for_a_create_then_interrupts(trapped) -> None:
    said: list[str] = []
    with pytest.raises(Interrupted, match="SIGHUP"):
        with held_signals(said.append):
            signal.raise_signal(signal.SIGHUP)
            signal.raise_signal(signal.SIGHUP)  # a second one is not said again
            reached = True  # the block goes on: the create is answered and recorded
        pytest.fail("the held SIGHUP was not delivered after the block")
    assert reached
    assert said == ["SIGHUP: stopping once RunPod has answered the create, so that what it "
                    "made can be stopped too"]


def test_sighup_is_ignored_during_a_clean_up_then_taken_again(trapped) -> None:
    with ignored_signals():
        signal.raise_signal(signal.SIGHUP)
    with pytest.raises(Interrupted):
        signal.raise_signal(signal.SIGHUP)


class GoneReader:
    """stderr whose reader is gone: a pipe to a `tee` that Ctrl-C ended."""

    def __init__(self) -> None:
        self.writes = 0

    def write(self, text: str) -> int:
        self.writes += 1
        raise BrokenPipeError(32, "Broken pipe")

    def flush(self) -> None:
        raise BrokenPipeError(32, "Broken pipe")


def test_a_message_with_no_reader_is_dropped_and_so_are_the_next(monkeypatch) -> None:
    gone = GoneReader()
    monkeypatch.setattr(sys, "stderr", gone)
    say("==> stop (run r1)")  # raised BrokenPipeError, and the stop after it never ran
    assert gone.writes == 1
    assert sys.stderr is not gone and sys.stderr.name == os.devnull
    say("pod lp1: stopped")  # later messages go nowhere, without trying the pipe again
    assert gone.writes == 1
    sys.stderr.close()


def not_interrupted(sig: signal.Signals) -> None:
    """Raise `sig` here; an Interrupted is this test failing, not pytest's own Ctrl-C."""
    try:
        signal.raise_signal(sig)
    except Interrupted:
        pytest.fail(f"{sig.name} interrupted")


def test_a_signal_started_ignored_stays_ignored() -> None:
    """`nohup inv cycle.full-smoke &`: the logout's SIGHUP must not end the training."""
    before = signal.signal(signal.SIGHUP, signal.SIG_IGN)
    try:
        previous = trap_signals()
        try:
            assert signal.SIGHUP not in previous
            not_interrupted(signal.SIGHUP)  # nothing happens
            with held_signals(pytest.fail):
                not_interrupted(signal.SIGHUP)  # nor held, nor said
        finally:
            restore_signals(previous)
        assert signal.getsignal(signal.SIGHUP) is signal.SIG_IGN
    finally:
        signal.signal(signal.SIGHUP, before)


def test_a_closing_terminal_interrupts_once(trapped) -> None:
    """The kernel and the shell each send SIGHUP when a terminal closes: the second copy must
    not cut short what the first one's interruption runs on its way out."""
    with pytest.raises(Interrupted):
        signal.raise_signal(signal.SIGHUP)
    not_interrupted(signal.SIGHUP)  # the second copy: taken, nothing raised
    with pytest.raises(Interrupted):
        signal.raise_signal(signal.SIGTERM)  # other signals still interrupt


def test_a_message_lost_to_a_full_disk_keeps_stderr_for_the_next(monkeypatch) -> None:
    import errno

    class FullDisk(GoneReader):
        def write(self, text: str) -> int:
            self.writes += 1
            raise OSError(errno.ENOSPC, "No space left on device")

    full = FullDisk()
    monkeypatch.setattr(sys, "stderr", full)
    say("one")
    say("two")
    assert sys.stderr is full and full.writes == 2


# matplotlib.use, inside the import pyplot() makes, interrupted as a Ctrl-C would be.
INTERRUPTED_IMPORT = """
import signal, sys
from podcycle.signals import pyplot, trap_signals
import matplotlib
trap_signals()
chosen = matplotlib.use
def use(*args, **kwargs):
    signal.raise_signal(signal.SIGINT)
    chosen(*args, **kwargs)
matplotlib.use = use
try:
    pyplot()
except KeyboardInterrupt:
    print("interrupted, pyplot imported:", "matplotlib.pyplot" in sys.modules)
"""


def test_a_ctrl_c_during_pyplots_import_waits_for_its_end() -> None:
    """Hunt: a Ctrl-C inside `import matplotlib.pyplot` (the run's loss curve, as a step's
    report is written) failed the import ("ImportError: initialization failed"), and once
    aborted Python ("GIL is released", exit -6). The import now ends first; the Ctrl-C
    follows it."""
    import subprocess

    from tests.conftest import ROOT, child_environ

    done = subprocess.run([sys.executable, "-c", INTERRUPTED_IMPORT], cwd=ROOT,
                          env=child_environ(), capture_output=True, text=True, timeout=120)
    assert done.stdout == "interrupted, pyplot imported: True\n", done.stdout + done.stderr
    # Second read: a first import builds the font cache for seconds: the wait is said.
    assert "SIGINT: stopping once matplotlib has loaded" in done.stderr, done.stderr
