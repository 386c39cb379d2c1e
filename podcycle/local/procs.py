"""Find and end the processes of a local pod (Linux /proc), including SSH sessions that
sshd moved into their own sessions: they carry the pod marker in their environment."""

from __future__ import annotations

import os
import re
import signal
import time
from pathlib import Path

MARKER = "POD_CYCLE_LOCAL_POD"


def _ids(pid: int) -> tuple[int, int] | None:
    """The parent's pid and the session's id, from /proc/PID/stat; None once it is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return int(fields[1]), int(fields[3])
    except (OSError, ValueError, IndexError):
        return None


def _ppid(pid: int) -> int | None:
    ids = _ids(pid)
    return ids[0] if ids else None


def _environ_has(pid: int, needle: bytes) -> bool:
    try:
        return needle in Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    except OSError:
        return False


def of_pod(pid: int, pod_id: str) -> bool:
    """Whether `pid` is a process the pod started: it carries the pod's marker. A recorded
    entrypoint pid may be another process's by now (the entrypoint ended and was reaped by
    a server that died, and Linux gave its pid out again): never signal that one."""
    return _environ_has(pid, f"{MARKER}={pod_id}".encode())


def all_pids() -> list[int]:
    return [int(p) for p in os.listdir("/proc") if p.isdigit()]


def _cmdline(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""


def pod_processes(pod_id: str, root_pid: int | None = None) -> set[int]:
    """Descendants of root_pid (while it is the pod's: of_pod), every process marked with
    this pod's id, and the processes of root_pid's session that name the pod's folder. The
    last are sshd: it writes its title over its environment, so it carries no readable
    marker, and once the entrypoint is dead (a node killed) it is no one's descendant; it
    stays in the pod's session."""
    me = os.getpid()
    pids = all_pids()
    found: set[int] = set()
    needle = f"{MARKER}={pod_id}".encode()
    folder = f"/pods/{pod_id}/".encode()
    ids = {pid: _ids(pid) for pid in pids} if root_pid else {}  # one read of each stat
    for pid in pids:
        if pid == me:
            continue
        pair = ids.get(pid)
        in_session = pair is not None and pair[1] == root_pid
        if _environ_has(pid, needle) or (in_session and folder in _cmdline(pid)):
            found.add(pid)
    if root_pid:
        children: dict[int, list[int]] = {}
        for pid, pair in ids.items():
            if pair is not None:
                children.setdefault(pair[0], []).append(pid)
        stack = [root_pid] if of_pod(root_pid, pod_id) else []  # not a pid given out again
        while stack:
            pid = stack.pop()
            if pid != me:
                found.add(pid)
            stack.extend(children.get(pid, []))
    return found


def marked_processes_for(pod_id: str) -> set[int]:
    return pod_processes(pod_id)


POD_FOLDER = re.compile(rb"/pods/lp[0-9a-f]+/root/")


def marked_processes() -> set[int]:
    """Every process of any local pod (for the 'nothing left behind' checks): marked, or
    naming a pod's folder in its command line as a pod's sshd does (see pod_processes)."""
    prefix = f"{MARKER}=".encode()
    found = set()
    for pid in all_pids():
        try:
            env = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if pid != os.getpid() and (any(item.startswith(prefix) for item in env)
                                   or POD_FOLDER.search(_cmdline(pid))):
            found.add(pid)
    return found


def alive(pid: int) -> bool:
    """Whether `pid` is a running process: in /proc and not a zombie (a killed child that
    its parent has not reaped yet still answers os.kill)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        return stat.rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def wait_gone(pids: set[int], timeout: float) -> set[int]:
    """Wait up to `timeout` seconds for the processes to end (a zombie counts as ended);
    returns those still alive."""
    deadline = time.monotonic() + timeout
    while True:
        pids = {p for p in pids if alive(p)}
        if not pids or time.monotonic() >= deadline:
            return pids
        time.sleep(0.05)


def terminate(pids: set[int], grace: float = 5.0, kill: bool = True) -> None:
    """SIGTERM, then SIGKILL whatever is still alive after `grace` seconds (with `kill`; else
    only wait that long for them to end). A stopped process (SIGSTOP, a debugger) gets SIGCONT
    after its SIGTERM, as systemd does, so it handles the SIGTERM now instead of holding it
    until the SIGKILL."""
    for sig in (signal.SIGTERM, signal.SIGKILL) if kill else (signal.SIGTERM,):
        for pid in pids:
            try:
                os.kill(pid, sig)
                if sig == signal.SIGTERM:
                    os.kill(pid, signal.SIGCONT)
            except (ProcessLookupError, PermissionError):
                pass
        pids = wait_gone(pids, grace if sig == signal.SIGTERM else 2.0)
        if not pids:
            return
