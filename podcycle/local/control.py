"""Start, find and stop the local RunPod server (a background process on 127.0.0.1)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from podcycle import PROJECT_ROOT
from podcycle.errors import PodCycleError
from podcycle.local import READY, procs
from podcycle.redact import is_secret_name, printable, register_secret


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return procs.alive(pid)


# The local RunPod is on this machine's loopback: a request to it never goes through the
# HTTP proxy of the environment (HTTP_PROXY, http_proxy), which urllib uses for 127.0.0.1 too.
# A dead proxy there made a healthy server "not answer", and the remedy offered to stop it.
LOOPBACK = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def _answers(url: str) -> bool:
    try:
        with LOOPBACK.open(f"{url}/v2/templates", timeout=2) as _:
            return True
    except urllib.error.HTTPError:
        return True  # 401 without a key: it is our server answering
    except OSError:
        return False


# How long local.status waits for a starting server to write its server.json (it stops the
# pods a crashed server left first: up to 12 s each).
START_GRACE = 10.0
INFO_FIELDS = {"url": str, "pid": int, "api_key": str, "admin_token": str, "state_dir": str}


def read_info(local_dir: Path) -> dict[str, Any] | None:
    """The running server's server.json (its url, pid, keys), or None: no server runs, or the
    file is not one a server wrote (damaged, or edited by hand: see up's refusal)."""
    path = local_dir / "server.json"
    try:
        info = json.loads(path.read_text())
    except (OSError, ValueError, RecursionError):
        return None
    if not isinstance(info, dict) or not all(
            type(info.get(name)) is kind for name, kind in INFO_FIELDS.items()) \
            or info["pid"] <= 0 or not _alive(info["pid"]):
        return None
    register_secret(info.get("api_key"))
    register_secret(info.get("admin_token"))
    return info


def check_reachable(local_dir: Path, grace: float = 0.0, *, wait_if_starting: bool = False
                    ) -> None:
    """Refuse a server that holds this folder while its server.json is gone or damaged
    (edited, cut short): it runs, and nothing can find its port or key. A server still
    starting has not written it yet (it first stops the pods a crashed server left, seconds
    each): waited for up to `grace` seconds, then said to be starting, or with
    `wait_if_starting` passed over (the caller waits on)."""
    local_dir = local_dir.resolve()
    deadline = time.monotonic() + grace
    while True:
        held = _serving(local_dir)
        if held is None or read_info(local_dir) is not None:
            return
        pid, starting = held[0], not held[1]
        if not starting or time.monotonic() >= deadline:
            break
        time.sleep(0.2)
    if starting:
        if wait_if_starting:
            return
        raise PodCycleError(f"the local RunPod (pid {pid}) is still starting: it first stops "
                            "the pods a crashed server left, which takes a few seconds each",
                            "run the command again in a moment")
    raise PodCycleError(
        f"the local RunPod (pid {pid}) runs, but its {local_dir / 'server.json'} is "
        "missing or damaged, so it cannot be reached",
        "restart it: inv local.down (its pods stop), then the same command")


def server_checkout(info: dict[str, Any]) -> Path | None:
    """The checkout whose code the local RunPod server runs (its pods get that checkout's
    chessbot/, scripts/ and deploy/): what its server.json says, else (a server of an older
    version) the one its Python's virtualenv belongs to; None when neither tells."""
    if isinstance(info.get("project_root"), str):
        return Path(info["project_root"])
    try:
        argv0 = Path(f"/proc/{int(info['pid'])}/cmdline").read_bytes().split(b"\0")[0]
    except (OSError, KeyError, TypeError, ValueError):
        return None
    python = Path(os.fsdecode(argv0))
    return python.parent.parent.parent if python.is_absolute() and \
        python.parent.parent.name == ".venv" else None


def other_checkout(info: dict[str, Any]) -> str | None:
    """A note when the running local RunPod serves another checkout's code (an older clone
    started it, sharing POD_CYCLE_LOCAL_DIR): this checkout's runs got that clone's pod-side
    scripts, and an upgraded resume trained from epoch 1 again, silently."""
    try:
        theirs = server_checkout(info)
        if theirs is None or theirs.resolve() == PROJECT_ROOT.resolve():
            return None  # this one, or nothing tells (a server of an older version): no word
    except (OSError, ValueError, RuntimeError):  # a damaged server.json: not worth an error
        return None
    where = f"from another checkout ({printable(theirs)})"
    return (f"note: the local RunPod at {info.get('url')} was started {where}: its pods run "
            "that code's pod-side scripts (chessbot/, deploy/), not this checkout's; inv "
            "local.down, then any command, starts this one's (local.down stops its pods)")


def say_other_checkout(info: dict[str, Any], started: bool) -> None:
    """other_checkout's note, said when the server was already running (one this command
    started runs this checkout's code)."""
    note = None if started else other_checkout(info)
    if note:
        from podcycle.config import say

        say(note)


def status(local_dir: Path) -> dict[str, Any] | None:
    info = read_info(local_dir.resolve())
    if info and _answers(info["url"]):
        return info
    return None


@contextmanager
def _exclusive(path: Path, timeout: float) -> Iterator[None]:
    """An OS file lock held for the block (freed by the kernel if this process dies)."""
    import fcntl

    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except FileNotFoundError:  # a folder under /proc/1 or /sys: its parent takes no folders
        from podcycle.runs import nearest_existing

        raise PodCycleError(f"cannot make the folder {path.parent}: "
                            f"{nearest_existing(path.parent)} takes no new folders",
                            "give the local RunPod a folder it can write in "
                            "(POD_CYCLE_LOCAL_DIR or --local-dir)") from None
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    except FileNotFoundError:  # the folder is there: a /proc or /sys folder takes no files
        if os.path.islink(path):  # or the lock is a link to nowhere (second read)
            import shlex

            raise PodCycleError(f"{path} is a broken link (to {os.readlink(path)})",
                                f"remove it (rm {shlex.quote(str(path))}): the local RunPod "
                                "makes its own") from None
        raise PodCycleError(f"{path.parent} is a folder that takes no new files (creating "
                            f"{path.name} in it: No such file or directory)",
                            "give the local RunPod a folder it can write in "
                            "(POD_CYCLE_LOCAL_DIR or --local-dir)") from None
    try:
        deadline = time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise PodCycleError(
                        f"another process is starting the local RunPod in {path.parent} and "
                        f"did not finish within {timeout:.0f}s",
                        f"try again; see {path.parent / 'server.log'}") from None
                time.sleep(0.05)
        yield
    finally:
        os.close(fd)


def serving_pid(local_dir: Path) -> int | None:
    """The pid of the server that holds this folder's server lock, if one does."""
    held = _serving(local_dir)
    return held[0] if held else None


def _serving(local_dir: Path) -> tuple[int, bool] | None:
    """(pid, started) of the server that holds this folder's server lock, if one does:
    started once it has written its server.json (the lock then says `PID ready`)."""
    import fcntl

    path = local_dir / "server.lock"
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            try:
                words = os.pread(fd, 32, 0).decode().split()
                pid = int(words[0]) if words else 0
            except (OSError, ValueError):
                return None
            return (pid, words[1:] == [READY]) if pid else None
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    finally:
        os.close(fd)


def up(local_dir: Path, timeout: float = 20.0) -> tuple[dict[str, Any], bool]:
    """Return (info, started): the running server's info, starting one if needed. Cold
    starts are serialised by a lock in the state folder: one server per folder."""
    from podcycle import sshopts

    local_dir = local_dir.resolve()
    # Its pods' sshd and the operator's ssh read keys and host keys under this folder: a path
    # ssh reads as something else (a %, a line break) made pods nobody could log into, or
    # whose sshd never started, found only after they were made.
    sshopts.check_path(local_dir, "the local RunPod's folder",
                       f"set POD_CYCLE_LOCAL_DIR (or --local-dir) to a folder {sshopts.CLEAN}")
    info = status(local_dir)
    if info:
        return info, False
    with _exclusive(local_dir / "up.lock", timeout + 10):
        return _up_locked(local_dir, timeout)


def check_state(path: Path) -> dict[str, Any]:
    """The local RunPod's record of its pods, which its server reads as it starts ({} when
    there is none yet): one cut short (a full disk, a kill mid-write) or not the server's
    made every command say "the local RunPod server exited at start" and sent the operator
    to a traceback in its log."""
    try:
        text = path.read_text()
    except FileNotFoundError:
        return {}
    except (OSError, UnicodeDecodeError) as exc:
        problem = getattr(exc, "strerror", None) or "it is not UTF-8 text"
    else:
        try:
            state = json.loads(text)
            problem = None if isinstance(state, dict) and all(
                isinstance(state.get(name, {}), dict) for name in ("pods", "keys", "clusters")
            ) and all(isinstance(state.get(name), str) for name in ("api_key", "admin_token")
                      ) else "not the local RunPod's record"
            problem = problem or _damaged_entry(state)
        except ValueError as exc:
            problem = ("it is empty" if not text.strip() else
                       # json's msg may end in "at" ("Invalid control character at")
                       f"not JSON: {exc.msg.removesuffix(' at')} at line {exc.lineno}"
                       if isinstance(exc, json.JSONDecodeError) else
                       "a number too long to read")  # past int's 4300-digit limit
        except RecursionError:
            problem = "JSON nested deeper than Python can read"
    if problem:
        raise PodCycleError(
            f"the local RunPod's state {path} cannot be read ({problem})",
            f"move it away to start the local RunPod afresh (it forgets its pods and keys): "
            f"inv local.down, then mv {path} {path}.broken")
    return state


def _damaged_entry(state: dict[str, Any]) -> str | None:
    """The first pod or cluster of the state that is not as the server writes it (a hand
    edit): the server read it at start and exited, local.status ended in a traceback."""
    def pod_ok(pod: Any) -> bool:
        return isinstance(pod.get("status"), str)

    def cluster_ok(cluster: Any) -> bool:
        compute, members = cluster.get("compute"), cluster.get("_members", [])
        return isinstance(cluster.get("name"), str) and isinstance(compute, dict) \
            and type(compute.get("podCount")) is int and isinstance(members, list) \
            and all(isinstance(m, str) for m in members)

    for kind, ok in (("pods", pod_ok), ("clusters", cluster_ok)):
        for key, entry in state.get(kind, {}).items():
            if not isinstance(entry, dict) or entry.get("id") != key or not ok(entry):
                return f"its {kind[:-1]} {printable(key)[:80]} is not as the server writes it"
    return None


def _up_locked(local_dir: Path, timeout: float) -> tuple[dict[str, Any], bool]:
    info = status(local_dir)
    if info:
        return info, False
    serving = serving_pid(local_dir)  # the kernel's lock: never stale, unlike a pid
    if serving:
        # A server holds the folder but did not answer in time (a machine loaded to the
        # hilt): its server.json must stay, and no second server can start. Wait for it.
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            info = status(local_dir)
            if info:
                return info, False
            # A damaged server.json heals by no wait; a starting server writes it soon.
            check_reachable(local_dir, wait_if_starting=True)
            time.sleep(0.2)
        pid = serving
        raise PodCycleError(f"the local RunPod (pid {pid}) runs but does not answer "
                            f"within {timeout:.0f}s: the machine may be overloaded",
                            "try again once it is less busy, or restart it: inv local.down "
                            "(its pods stop), then the same command")
    check_state(local_dir / "state.json")
    local_dir.mkdir(parents=True, exist_ok=True)
    (local_dir / "server.json").unlink(missing_ok=True)
    log = open(local_dir / "server.log", "ab")
    try:
        proc = subprocess.Popen(
            [sys.executable, "-m", "podcycle.local.server", "--state-dir", str(local_dir)],
            cwd=PROJECT_ROOT, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
            start_new_session=True,
            # Without this machine's secrets: a long-lived daemon kept the RunPod key (and
            # HF_TOKEN, ...) in its /proc/PID/environ, and needs none of them.
            env={**{name: value for name, value in os.environ.items()
                    if name != "RUNPOD_API_KEY" and not is_secret_name(name)},
                 "PYTHONPATH": str(PROJECT_ROOT)},
        )
    finally:
        log.close()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise PodCycleError(
                f"the local RunPod server exited at start (code {proc.returncode})",
                f"see {local_dir / 'server.log'}")
        info = read_info(local_dir)
        if info and _answers(info["url"]):
            return info, True
        time.sleep(0.05)
    proc.terminate()
    raise PodCycleError(f"the local RunPod server did not answer within {timeout:.0f}s",
                        f"see {local_dir / 'server.log'}")


def _is_server(pid: int) -> bool:
    try:
        return b"podcycle.local.server" in Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False


def down(local_dir: Path, timeout: float = 30.0) -> bool:
    """Stop the server and every process it started. Returns whether a server was running."""
    local_dir = local_dir.resolve()
    # The server holding the folder's lock; a server.json pid only when that process is a
    # local RunPod server (after a reboot its pid may be anyone's).
    pid = serving_pid(local_dir)
    info = read_info(local_dir)
    if pid is None and info and _is_server(info["pid"]):
        pid = info["pid"]
    was_running = pid is not None
    if pid is not None:
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and _alive(pid):
            time.sleep(0.05)
        if _alive(pid):
            os.kill(pid, signal.SIGKILL)
    # Whatever a crashed server may have left: every process of every pod it knew (cluster
    # members are pods too).
    try:
        state = json.loads((local_dir / "state.json").read_text())
    except (OSError, ValueError, RecursionError):
        state = {}
    pods = state.get("pods") if isinstance(state, dict) else None
    leftovers: set[int] = set()
    for pod_id, pod in (pods if isinstance(pods, dict) else {}).items():
        leftovers |= procs.pod_processes(pod_id, pod.get("_pid") if isinstance(pod, dict)
                                         else None)
    procs.terminate(leftovers)
    (local_dir / "server.json").unlink(missing_ok=True)
    return was_running


def running_pods(local_dir: Path) -> set[str]:
    """The ids of the pods (cluster members too) this folder's local RunPod has running or
    starting, read from its state (running or not); none when it cannot be read."""
    try:
        state = check_state(local_dir.resolve() / "state.json")
    except PodCycleError:
        return set()
    return {pod_id for pod_id, pod in state.get("pods", {}).items()
            if isinstance(pod, dict) and pod.get("status") in ("RUNNING", "STARTING",
                                                                "PROVISIONING")}


def inventory(local_dir: Path) -> dict[str, Any]:
    """What the local RunPod in this folder holds, read from its state (running or not):
    {"pods": {status: count} of standalone pods, "clusters": [{id, name, nodes,
    members: {status: count}}]}. Cluster members are counted under their cluster only."""
    try:
        state = check_state(local_dir.resolve() / "state.json")
    except PodCycleError:
        state = {}  # unreadable, or not the server's record: nothing known is held (up says why)
    pods = state.get("pods", {})
    standalone: dict[str, int] = {}
    for pod in pods.values():
        if not pod.get("cluster"):
            standalone[pod["status"]] = standalone.get(pod["status"], 0) + 1
    clusters = []
    for cluster in state.get("clusters", {}).values():
        members: dict[str, int] = {}
        for pod_id in cluster.get("_members", []):
            status = pods.get(pod_id, {}).get("status", "TERMINATED")
            members[status] = members.get(status, 0) + 1
        clusters.append({"id": cluster["id"], "name": cluster["name"],
                         "nodes": cluster["compute"]["podCount"], "members": members})
    return {"pods": standalone, "clusters": clusters}


def admin(info: dict[str, Any], method: str, path: str, body: Any = None) -> Any:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(
        f"{info['url']}{path}", data=data, method=method,
        headers={"X-Local-Admin": info["admin_token"], "Content-Type": "application/json"})
    with LOOPBACK.open(request, timeout=30) as response:
        return json.loads(response.read() or b"null")
