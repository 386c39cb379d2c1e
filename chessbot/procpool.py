"""An ordered map over jobs on worker processes (multiprocessing's forkserver Pool) that ends
cleanly however its consumer stops: at the end, early (--max-games reached), on an error, or
on Ctrl-C / SIGTERM.

Two traps of a plain `Pool` are avoided here:
- `Pool.terminate()` (also what `with Pool()` does on the way out) can hang for ever. Its
  result thread stops reading, while a worker is still writing a result larger than the pipe
  holds; that worker keeps the result queue's lock, which terminate() needs for its sentinel.
  A Ctrl-C during `data.import-pgn --workers 2` hung about one time in eight. So this map
  never terminates a busy pool. On the way out it tells the workers to stop (an event they
  read through `stopping()`), feeds them nothing more, reads and drops what they still send,
  then closes and joins the pool.
- A Ctrl-C that lands while the forkserver or a worker is still starting printed their own
  KeyboardInterrupt tracebacks. SIGINT and SIGTERM are blocked while the pool starts, which
  the processes inherit, as CPython's own resource tracker does; the workers then ignore
  SIGINT, SIGTERM and SIGHUP. The consumer alone hears Ctrl-C, a group's kill or a closed
  terminal, once the pool has started.
"""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Callable, Iterable, Iterator
from typing import Any

_stop: Any = None  # in a worker: the map's stop event (multiprocessing.Event)


def stopping() -> bool:
    """In a worker: True once the map's consumer has gone. A long job may return early
    (what it returns is dropped); False outside a pool."""
    return _stop is not None and _stop.is_set()


# What reaches a whole process group (Ctrl-C, a `kill -TERM -PGID`, a CI job cancelled, a
# terminal closed): the consumer's to handle, never a worker's. A worker that died of one was
# replaced by the pool, and the jobs it held never answered: the consumer, draining them on
# its way out, waited for ever. The workers stop when told (stopping()), or when the consumer
# is gone (_watch). The same three are held while the pool starts (_hold).
_GROUP_SIGNALS = (signal.SIGINT, signal.SIGTERM) + (
    (signal.SIGHUP,) if hasattr(signal, "SIGHUP") else ())
_HELD = set(_GROUP_SIGNALS)
_SIGMASK = hasattr(signal, "pthread_sigmask")  # not on Windows, where nothing is held


def _hold() -> Any:
    """Block SIGINT, SIGTERM and SIGHUP in this thread; returns the mask to give back to
    _release."""
    return signal.pthread_sigmask(signal.SIG_BLOCK, _HELD) if _SIGMASK else None


def _release(previous: Any) -> None:
    if _SIGMASK:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


def _start_worker(stop: Any, alive: Any) -> None:
    global _stop
    _stop = stop
    for signum in _GROUP_SIGNALS:
        signal.signal(signum, signal.SIG_IGN)
    if _SIGMASK:
        signal.pthread_sigmask(signal.SIG_UNBLOCK, _HELD)
    threading.Thread(target=_watch, args=(alive,), daemon=True).start()


def _watch(alive: Any) -> None:
    """In a worker: end it once its consumer is gone, which closes the other end of `alive`
    (nothing is ever sent on it). A consumer with no handler of its own (chessbot.train
    encoding its dataset) dies of the group's SIGTERM at once, never telling its workers to
    stop, and they, ignoring it, worked through their jobs, then died on the write with a
    BrokenPipeError traceback in the log (second read). The pipe ends even while the dead
    consumer waits, a zombie, for its parent to reap it; its pid would not."""
    try:
        alive.recv()
    except (EOFError, OSError):
        pass
    os._exit(0)


def ordered_map(fn: Callable[[Any], Any], jobs: Iterable[Any], workers: int,
                in_flight: int = 4) -> Iterator[Any]:
    """fn over the jobs, results in the jobs' order, on `workers` processes (in this process
    when workers <= 1). At most `in_flight` jobs per worker are read ahead of the consumer,
    so a stream of jobs (games read from a file) is never read whole into memory. `fn` and
    the jobs must pickle (a module-level function)."""
    if workers <= 1:
        yield from map(fn, jobs)
        return
    import multiprocessing

    context = multiprocessing.get_context("forkserver" if os.name == "posix" else "spawn")
    slots = threading.Semaphore(workers * in_flight)
    done = threading.Event()

    def bounded() -> Iterator[Any]:
        for job in jobs:
            while not slots.acquire(timeout=0.1):
                if done.is_set():
                    return
            if done.is_set():
                return
            yield job

    # The three are held while the helper processes start, which inherit the mask: the
    # resource tracker (the event starts it), the forkserver and the workers, and the pool's
    # threads (see _drain). A terminal closed (SIGHUP to the group) killed the tracker and
    # the forkserver, which ignore only SIGINT and SIGTERM, and the consumer then hung on its
    # way out. The tracker's start unblocks SIGINT and SIGTERM on its way out: held again.
    blocked = _hold()
    try:
        stop = context.Event()
        _hold()
        # Its sending end is this process's alone (see _watch); the receiving end is kept
        # too, for a worker the pool starts again in place of one that died.
        alive, consumer_alive = context.Pipe(duplex=False)
        pool = context.Pool(workers, initializer=_start_worker, initargs=(stop, alive))
    finally:
        _release(blocked)
    finished = False
    results: Iterator[Any] = iter(())
    try:
        results = pool.imap(fn, bounded(), chunksize=1)
        for result in results:
            slots.release()
            yield result
        finished = True
    finally:
        done.set()
        stop.set()
        if not finished:
            _drain(results)
        pool.close()
        pool.join()
        consumer_alive.close()
        alive.close()


def _drain(results: Iterator[Any]) -> None:
    """Read what the workers still send (at most the jobs already handed out, each cut short
    by stopping()), so none is left writing into a pipe nobody reads. A second Ctrl-C or a
    SIGTERM during this is delivered once it ends."""
    held = _hold()
    try:
        while True:
            try:
                next(results)
            except StopIteration:
                return
            except Exception:  # noqa: BLE001 - a failed job's error: dropped with its result
                continue
    finally:
        _release(held)
