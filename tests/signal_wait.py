"""For the small scripts the tests start, then signal: wait for a signal as `signal.pause()`
does, without its race. A script prints that it is ready, the test reads that and sends the
signal. Where the signal lands after the script's last check for signals but before pause()
starts (a busy machine preempts the script just there), its Python handler runs only once
pause() returns, which no later signal makes it do: the script waited for ever (CI saw
test_ctrl_c_to_the_whole_group_is_one_exception_in_the_consumer_alone hang once). Python's
handler also writes the signal to a wakeup fd, which keeps it until read: a read of it returns
at once for a signal that came early, and the handler then runs (KeyboardInterrupt, a
sys.exit). Light on purpose: a stand-in process imports it in a few milliseconds."""

from __future__ import annotations

import os
import signal


def until_a_signal() -> None:
    """Return never: block until a signal's Python handler raises, however early it came.
    Main thread only (signal.set_wakeup_fd); ignored signals and SIG_DFL ones never reach it
    (the kernel drops or acts on them)."""
    reader, writer = os.pipe()
    os.set_blocking(writer, False)
    signal.set_wakeup_fd(writer)
    while True:
        os.read(reader, 1)
