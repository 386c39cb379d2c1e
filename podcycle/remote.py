"""The pod over SSH: the endpoint (direct first, RUNPOD_SSH_* overrides), a Fabric Connection
reused for a whole cycle, rsync with the same port and key, a per-run known_hosts (trust on
first use, a changed host key refused) and an OpenSSH ControlMaster so rsync calls share one
handshake."""

from __future__ import annotations

import hashlib
import os
import re
import shlex
import shutil
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from podcycle import sshkeys, sshopts
from podcycle.config import READER_GONE, Settings, output_reader_gone, say
from podcycle.errors import OutputClosed, PodCycleError
from podcycle.pods import PROXY_LIMITS
from podcycle.redact import clipped, printable, redact
from podcycle.runpod.models import Pod


class RemoteError(PodCycleError):
    # Set on an SSH connection that could not be opened: the host refused it (nothing
    # listens on the port) on every try, not a timeout that a slow host also gives.
    refused = False
    # Set on one that failed on the pod's side (nothing listening, a frozen sshd, a dropped
    # handshake), not for a key, a name or a host key: one that another try may open.
    pod_side = False


class UnknownHost(RemoteError):
    """The SSH host name does not resolve: no retry will change that."""


class KeyUnreadable(RemoteError):
    """The SSH key file cannot be loaded (not a key, a format or key type paramiko does not
    read): no retry will change that."""


class KeyRefused(RemoteError):
    """sshd answered and refused the key: the pod's keys are installed before its sshd
    starts, so waiting longer rarely changes that (see AUTH_GRACE)."""


# Seconds a refused key is tried again: an image that installs its keys just after starting
# sshd gets them in; a wrong key fails in this time, not after the whole wait for SSH.
AUTH_GRACE = 10.0


@dataclass
class Endpoint:
    host: str
    port: int
    user: str
    key: Path
    # The settings that replaced the pod's own address, in words (endpoint_for): an SSH
    # failure there is first theirs to check.
    given: str = ""

    def label(self) -> str:
        return f"{self.user}@{self.host}:{self.port}"

    def unless_given(self, remedy: str) -> str:
        """`remedy`, after the settings that chose this address when some did."""
        if not self.given:
            return remedy
        return f"{self.given}: unset them to use the pod's own if that is not your way in; {remedy}"


def endpoint_for(pod: Pod, settings: Settings, key: Path) -> Endpoint:
    """Direct SSH from the pod, unless RUNPOD_SSH_USER/HOST/PORT override it (the seed's
    gateway use); the proxy alone cannot carry the cycle."""
    direct = pod.ssh_direct
    if settings.ssh_host:
        return Endpoint(settings.ssh_host, settings.ssh_port or 22,
                        settings.ssh_user or (direct.check().username if direct else "root"),
                        key, _given(settings, direct))
    if not direct:
        if pod.ssh_proxy:
            raise RemoteError(f"pod {pod.id} is reachable only through RunPod's SSH proxy",
                              PROXY_LIMITS)
        raise RemoteError(f"pod {pod.id} has no SSH endpoint (status {pod.status})",
                          "wait until it is RUNNING (inv pod.status) or check that the "
                          "template exposes 22/tcp")
    direct.check()
    return Endpoint(direct.host, int(settings.ssh_port or direct.port),
                    settings.ssh_user or direct.username, key, _given(settings, direct))


def _given(settings: Settings, direct: Any) -> str:
    """Which of RUNPOD_SSH_USER/HOST/PORT replace the pod's direct address, in words."""
    names = [f"{name}={value}" for name, value in (
        ("RUNPOD_SSH_USER", settings.ssh_user), ("RUNPOD_SSH_HOST", settings.ssh_host),
        ("RUNPOD_SSH_PORT", settings.ssh_port)) if value]
    if not names:
        return ""
    own = (f" {direct.username}@{direct.host}:{direct.port}" if direct else "")
    return f"{', '.join(names)} replace{'s' if len(names) == 1 else ''} the pod's own{own}"


def _tofu_policy(known_hosts: Path):
    import paramiko

    class TrustOnFirstUse(paramiko.MissingHostKeyPolicy):
        """Record an unknown host key in the run's known_hosts. A *changed* key never gets
        here: paramiko refuses it (BadHostKeyException) because the file already holds it."""

        def missing_host_key(self, client, hostname, key):  # noqa: ANN001
            client.get_host_keys().add(hostname, key.get_name(), key)
            known_hosts.parent.mkdir(parents=True, exist_ok=True)
            client.save_host_keys(str(known_hosts))

    return TrustOnFirstUse()


def host_key_changed(endpoint: Endpoint, known_hosts: Path) -> RemoteError:
    return RemoteError(
        f"the host key of {endpoint.label()} changed within this run: refusing to connect",
        f"if the pod was really replaced, remove its line from {known_hosts}; otherwise "
        "someone may be intercepting the connection")


def connect(endpoint: Endpoint, known_hosts: Path, timeout: float = 20.0):
    """An open Fabric Connection (one SSH handshake), or a RemoteError saying why not."""
    import logging

    import paramiko
    from fabric import Config, Connection

    # paramiko logs what it then raises (a banner that never came: three tracebacks on the
    # terminal); the error raised is what this module reports, once, in one line.
    quiet = logging.getLogger("paramiko")
    if not quiet.handlers:
        quiet.addHandler(logging.NullHandler())
    quiet.propagate = False

    config = Config(overrides={"load_ssh_configs": False, "run": {"in_stream": False}})
    conn = Connection(endpoint.host, user=endpoint.user, port=endpoint.port, config=config,
                      connect_timeout=timeout,
                      connect_kwargs={"key_filename": str(endpoint.key), "look_for_keys": False,
                                      "allow_agent": False, "banner_timeout": timeout,
                                      "auth_timeout": timeout})
    known_hosts.parent.mkdir(parents=True, exist_ok=True)
    # The run's trust on first use: writable by this user alone, under any umask (umask 000
    # made it 0666, for anyone to plant a host key in).
    known_hosts.touch(mode=0o600, exist_ok=True)
    try:
        conn.client.load_host_keys(str(known_hosts))
    except (paramiko.hostkeys.InvalidHostKey, paramiko.SSHException, UnicodeDecodeError,
            ValueError) as exc:
        # An edited or damaged line (not a key, not UTF-8): this was a traceback, with no
        # word of the pod billing on.
        bad = getattr(exc, "line", None)
        what = (f"a line that is not a host key ({clipped(str(bad).strip(), 60)})"
                if bad else "something that is not a list of host keys")
        raise RemoteError(f"the run's known_hosts {known_hosts} holds {what}",
                          "remove that line, or the whole file: the pod's host key is then "
                          "trusted again at the next connection") from None
    except OSError as exc:  # a folder where the file belongs, unreadable
        raise RemoteError(f"the run's known_hosts {known_hosts} cannot be read "
                          f"({exc.strerror})",
                          f"remove it (rm -r {shlex.quote(str(known_hosts))}): it is written "
                          "again at the next connection") from None
    conn.client.set_missing_host_key_policy(_tofu_policy(known_hosts))
    # The key file itself; one with a passphrase through ssh-agent's copy of that key only
    # (as ssh -i KEY -o IdentitiesOnly=yes does, and rsync's ssh with it): paramiko cannot
    # read it, and its refusal read as a key the pod does not hold. The connection to the
    # agent is this connection's own, closed once the key has signed.
    agent = None
    if sshkeys.through_agent(endpoint.key):
        agent, held = sshkeys.agent_key(endpoint.key)
        if held is None and not sshkeys.needs_passphrase(endpoint.key):  # a .pub given
            raise KeyRefused(f"no ssh-agent holds the key of {endpoint.key} (SSH_AUTH_SOCK: "
                             f"{'set' if os.environ.get('SSH_AUTH_SOCK') else 'not set'})",
                             "unlock your agent (1Password, Secretive, ssh-add) in this shell "
                             "and run the command again")
        if held is None:
            raise sshkeys.locked_without_agent(endpoint.key, "RUNPOD_SSH_KEY")
        conn.connect_kwargs = {**conn.connect_kwargs, "pkey": held}
        del conn.connect_kwargs["key_filename"]
    # Loaded here, not by paramiko's key_filename: that tries every key type on the file and
    # raised the last one's complaint ("Invalid key", "expected OPENSSH key") for an RSA key
    # the pod refused, which then read as a frozen sshd after a minute of tries. A key that
    # cannot be loaded is named once the host has answered (a host that does not resolve or
    # answer is said first, as before): paramiko is then left to fail on the file.
    unreadable: KeyUnreadable | None = None
    if agent is None:
        try:
            conn.connect_kwargs = {**conn.connect_kwargs, "pkey": load_key(endpoint.key)}
            del conn.connect_kwargs["key_filename"]
        except KeyUnreadable as exc:
            unreadable = exc
    try:
        try:
            conn.open()
        except BaseException:
            # A failed handshake or login left its socket open: each retry held one more of
            # the pod's sshd's unauthenticated connections (MaxStartups: 10 by default),
            # until sshd dropped new ones, pod.ssh's too.
            try:
                conn.client.close()  # Fabric's close() closes only a connection it opened
            except Exception:  # noqa: BLE001 - closing is best effort
                pass
            raise
        finally:
            if agent is not None:
                agent.close()
    except paramiko.BadHostKeyException:
        raise host_key_changed(endpoint, known_hosts) from None
    except paramiko.AuthenticationException as exc:
        if unreadable is not None:
            raise unreadable from None
        said = str(exc).lower()
        if "timeout" in said or "eof" in said or "shut down" in said:
            # paramiko's "Authentication timeout." (a login not finished within the timeout:
            # a pod or this machine overloaded) and "transport shut down or saw EOF" (sshd
            # dropped it): no refusal of the key. Read as one, a busy pod's cycle failed
            # after the 10 s given to a refused key, told to register a key it held.
            error = RemoteError(
                f"cannot open SSH to {endpoint.label()}: its sshd "
                + (f"did not finish the login within {timeout:g}s (the pod overloaded?)"
                   if "timeout" in said else "closed the connection during the login"),
                endpoint.unless_given("check the pod is RUNNING (inv pod.status) and its "
                                      "sshd is up (inv pod.logs shows its last lines)"))
            error.pod_side = True
            raise error from None
        raise KeyRefused(
            f"SSH to {endpoint.label()} was refused: permission denied (publickey) for key "
            f"{endpoint.key}",
            endpoint.unless_given(
                "register that key's .pub on the account (inv api.doctor "
                "--register-ssh-key) before creating the pod, or fix the template's "
                "AUTHORIZED_KEYS; the RunPod gateway (RUNPOD_SSH_USER/HOST/PORT) can get you "
                "in meanwhile")) from None
    except socket.gaierror as exc:
        if exc.errno == socket.EAI_AGAIN:  # DNS itself did not answer: worth another try
            raise RemoteError(f"cannot open SSH to {endpoint.label()}: the name server did "
                              f"not answer for {endpoint.host}",
                              "check this machine's network and DNS") from None
        raise UnknownHost(
            f"cannot open SSH to {endpoint.label()}: the host name {endpoint.host!r} does not "
            f"resolve ({exc.strerror})",
            "check the name (RUNPOD_SSH_HOST, when set, replaces the pod's own address; unset "
            "it to use the pod's)") from None
    except (paramiko.SSHException, OSError) as exc:
        said = f"{type(exc).__name__}: {exc}"
        refused = _refused(exc)
        if refused:  # paramiko's "NoValidConnectionsError: [Errno None] Unable to connect"
            said = "nothing listens on that port (connection refused)"
        elif "banner" in str(exc).lower() or "no existing session" in str(exc).lower():
            said = (f"its sshd took the connection but never answered within {timeout:g}s "
                    "(frozen, or the pod overloaded)")
        elif unreadable is not None:  # the host answered; the key file is what failed
            raise unreadable from None
        error = RemoteError(f"cannot open SSH to {endpoint.label()}: {said}",
                            endpoint.unless_given(
                                "check the pod is RUNNING (inv pod.status) and its sshd is up "
                                "(inv pod.logs shows its last lines)"))
        error.refused = refused
        error.pod_side = True
        raise error from None
    return conn


def _refused(exc: BaseException) -> bool:
    """The host answered that nothing listens on the port (not a timeout, not a slow sshd):
    paramiko's every address refused, or the socket's own refusal."""
    import paramiko

    if isinstance(exc, paramiko.ssh_exception.NoValidConnectionsError):
        return bool(exc.errors) and all(isinstance(e, ConnectionRefusedError)
                                        for e in exc.errors.values())
    return isinstance(exc, ConnectionRefusedError)


def load_key(path: Path) -> Any:
    """The private key file, as paramiko reads it (no passphrase: see sshkeys.agent_key)."""
    key, why = sshkeys.paramiko_key(path)
    if why is not None:
        raise KeyUnreadable(
            f"the SSH private key {path} cannot be loaded: {why}",
            "point RUNPOD_SSH_KEY at a key ssh reads (ssh-keygen -y -f KEY prints its public "
            "half), e.g. a new one from ssh-keygen -t ed25519, whose .pub inv api.doctor "
            "--register-ssh-key registers")
    return key


def connect_when_ready(endpoint: Endpoint, known_hosts: Path, timeout: float,
                       progress, auth_grace: float = AUTH_GRACE,
                       abandon: Callable[[], bool] | None = None) -> Any:
    """Retry until sshd accepts us (a fresh pod's sshd may still be starting). A refused
    key is tried again for `auth_grace` seconds from its first refusal, no longer.
    `abandon`, asked at most every ABANDON_EVERY seconds while nothing listens: True ends
    the wait with that refusal (the pod is no longer running: its port stays closed)."""
    deadline = time.monotonic() + timeout
    last: RemoteError | None = None
    refused_since: float | None = None
    refused_throughout = True  # every try refused (`refused` on the error raised at the end)
    ask_at = time.monotonic()
    while time.monotonic() < deadline:
        try:
            return connect(endpoint, known_hosts, timeout=min(20.0, timeout))
        except RemoteError as exc:
            refused_throughout = refused_throughout and getattr(exc, "refused", False)
            exc.refused = refused_throughout
            if "host key" in exc.message or isinstance(exc, UnknownHost | KeyUnreadable):
                raise
            if abandon is not None and exc.refused and time.monotonic() >= ask_at:
                ask_at = time.monotonic() + ABANDON_EVERY
                if abandon():
                    raise
            if isinstance(exc, KeyRefused):
                if refused_since is None:
                    refused_since = time.monotonic()
                if time.monotonic() - refused_since >= auth_grace:
                    raise
            if last is None or last.message != exc.message:
                progress(f"waiting for SSH on {endpoint.label()}: {exc.message}")
            last = exc
            time.sleep(1.0)
    raise last or RemoteError(f"SSH to {endpoint.label()} did not answer in {timeout:.0f}s")


# How often a wait for SSH that nothing answers asks whether to go on (connect_when_ready's
# `abandon`: an API call, so not every second of the wait).
ABANDON_EVERY = 5.0


class ConnectionLost(RemoteError):
    """The SSH connection broke while a command ran: its remote work may go on."""


@dataclass
class Result:
    exited: int
    stdout: str
    stderr: str


QUOTES_ENV = True  # run() quotes the env values itself (callers pass them as they are)


def shell_env(env: dict[str, str]) -> dict[str, str]:
    """`env` with every value shell-quoted for Fabric's inline `export K=V`; a name that is
    not a shell identifier is refused (it would be shell syntax, not a variable)."""
    for name in env:
        if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name):
            raise ValueError(f"not a shell variable name: {name!r}")
    return {name: shlex.quote(str(value)) for name, value in env.items()}


# How often a command's connection is asked whether the pod still answers, and after how
# long without an answer it counts as lost: a training may print nothing for minutes (one
# epoch of a large set), and a NAT or firewall drops a quiet connection without telling either
# end, which left the cycle waiting forever while the pod billed.
KEEPALIVE_EVERY = 15.0
DEAD_AFTER = 60.0


class _Keepalive:
    """Asks the pod's sshd for an answer (an OpenSSH keepalive, want_reply) every
    KEEPALIVE_EVERY seconds, in a thread of its own: `dead()` once one went unanswered for
    DEAD_AFTER seconds."""

    def __init__(self, transport: Any) -> None:
        self.transport = transport
        self.asked_at = time.monotonic()
        self.probe: threading.Thread | None = None

    def dead(self) -> bool:
        if self.transport is None:
            return False
        now = time.monotonic()
        if self.probe is not None:
            if self.probe.is_alive():
                return now - self.asked_at > DEAD_AFTER
            self.probe, self.asked_at = None, now  # answered: the next one in a while
        elif now - self.asked_at >= KEEPALIVE_EVERY:
            self.asked_at = now
            self.probe = threading.Thread(target=self._ask, daemon=True)
            self.probe.start()
        return False

    def _ask(self) -> None:
        try:
            self.transport.global_request("keepalive@openssh.com", wait=True)
        except Exception:  # noqa: BLE001 - a broken transport ends the command anyway
            pass


def run(conn: Any, command: str, *, env: dict[str, str] | None = None,
        hide: bool = False) -> Result:
    """Run a command on the pod, streaming its output live. `env` goes through Fabric, which
    exports it inline (`export K=V && command`) without quoting: the values are quoted here,
    so a value with spaces or shell syntax arrives as itself. It runs in a worker thread so
    Ctrl-C / SIGTERM reach the caller at once (Fabric would otherwise wait for the remote
    process). A connection that breaks (an error, or no exit status: paramiko's -1) is
    ConnectionLost."""
    box: dict[str, Any] = {}
    quoted = shell_env(env or {})

    def target() -> None:
        out, err = _Shown(sys.stdout), _Shown(sys.stderr)
        # Invoke shows a stream it is given even under hide=True: a hidden command gets none
        # (cycle_paths.sh's lines went to stdout, which is for results).
        streams = {} if hide else {"out_stream": out, "err_stream": err}
        try:
            box["result"] = conn.run(command, env=quoted, hide=hide, warn=True, pty=False,
                                     in_stream=False, **streams)
            out.close()
            err.close()
        except BaseException as exc:  # noqa: BLE001 - handed to the caller's thread
            box["error"] = exc

    worker = threading.Thread(target=target, daemon=True)
    worker.start()
    alive = _Keepalive(getattr(conn, "transport", None))
    while worker.is_alive():
        worker.join(0.2)
        if alive.dead():
            alive.transport.close()  # ends the command in the worker: its channel closes
            worker.join(10)
            raise ConnectionLost(f"the SSH connection stopped answering (no reply for "
                                 f"{DEAD_AFTER:g}s: a dead link, or the pod frozen)")
    if "error" in box:
        error = box["error"]
        if _our_output_closed(error):
            raise OutputClosed() from None
        raise ConnectionLost(f"the SSH connection broke ({type(error).__name__}: {error})")
    result = box["result"]
    if result.exited == -1:
        raise ConnectionLost("the SSH connection broke (the pod's sshd closed the session "
                             "without an exit status)")
    return Result(result.exited, result.stdout, result.stderr)


class _Shown:
    """A stream for what a pod prints while a command streams (the training's log): its
    control characters are shown as escapes, never obeyed by the operator's terminal (a
    hostile pod could retitle it, clear it, write the clipboard with OSC 52, or forge a line
    with a carriage return). Line breaks and tabs pass. Known secrets are masked, a whole
    line at a time: output comes in chunks, and a key cut in two by a chunk's end would
    show its halves (a line longer than LINE_MAX goes out as it is)."""

    LINE_MAX = 8192

    # Said once a process: a cycle streams its train and then its collect.
    lost_said = False

    def __init__(self, stream: Any) -> None:
        self.stream = stream
        self._part = ""

    def write(self, text: str) -> int:
        pending = self._part + text
        end = max(pending.rfind("\n"), pending.rfind("\r")) + 1
        if len(pending) - end > self.LINE_MAX:
            end = len(pending)
        self._part = pending[end:]
        if end:
            self._shown(lambda: self.stream.write(printable(redact(pending[:end]), lines=True)))
        return len(text)

    def flush(self) -> None:
        self._shown(self.stream.flush)

    def close(self) -> None:
        """The rest of a last line that had no line break."""
        if self._part:
            part, self._part = self._part, ""
            self._shown(lambda: self.stream.write(printable(redact(part), lines=True)))
        self._shown(self.stream.flush)

    def _shown(self, act: Callable[[], Any]) -> None:
        """`act` (a write or a flush), whose failure on a full disk under `> log` loses these
        lines, never the command: it failed as a broken SSH connection, and a training was
        stopped and thrown away for it. The pod keeps its own log (train.log, collected).
        A reader gone (a closed pipe, a terminal hung up) still ends the command
        (OutputClosed), as the operator chose."""
        try:
            act()
        except OSError as exc:
            if isinstance(exc, BrokenPipeError) or exc.errno in READER_GONE:
                raise
            if not _Shown.lost_said:
                _Shown.lost_said = True
                say(f"note: the pod's output could not be shown ({exc.strerror or exc}): "
                    "it goes on, and its log is kept on the pod (a training's train.log "
                    "is collected with the run)")


def _our_output_closed(error: BaseException) -> bool:
    """Whether the command's output thread failed writing to our own stdout or stderr, whose
    reader has gone (Invoke wraps it as a ThreadException of a BrokenPipeError): the SSH
    connection is fine, the pipe we stream to is not."""
    wrapped = [getattr(item, "value", None) for item in getattr(error, "exceptions", ())]
    return any(isinstance(e, BrokenPipeError) for e in [error, *wrapped]) and \
        output_reader_gone()


class PodSession:
    """The run's SSH to its pod: one Fabric connection for the pod-side scripts (their env
    passed by Fabric, never interpolated into a command) and rsync over an OpenSSH
    ControlMaster, all pinned to the run's known_hosts."""

    def __init__(self, endpoint: Endpoint, known_hosts: Path, run_id: str,
                 progress: Callable[[str], None]) -> None:
        self.endpoint = endpoint
        self.known_hosts = known_hosts
        self.run_id = run_id
        self.progress = progress
        self._conn: Any = None
        self._master: subprocess.Popen | None = None
        # Asked while nothing listens on the pod's SSH port (connect_when_ready's `abandon`).
        self.abandon: Callable[[], bool] | None = None

    def open(self, timeout: float = 60.0) -> None:
        if self._conn is None:
            self._conn = connect_when_ready(self.endpoint, self.known_hosts, timeout=timeout,
                                            progress=self.progress, abandon=self.abandon)

    def script(self, name: str, env: dict[str, str] | None = None, *,
               training_dir: str | None = None, hide: bool = False) -> Result:
        """Run one pod-side script of deploy/runpod_cloud_training/."""
        self.open()
        folder = (shlex.quote(training_dir) if training_dir
                  else '"${RUNPOD_TRAINING_DIR:-/opt/runpod_cloud_training}"')
        return run(self._conn, f"bash {folder}/{name}", env=env, hide=hide)

    def warm_master(self) -> None:
        """Start the rsync ControlMaster in the background (its handshake overlaps other
        work); needs the host key recorded by open() first."""
        if self._master is None and self.known_hosts.exists():
            self._master = open_master(self.endpoint, self.known_hosts, self.run_id)

    def rsync(self, sources: str | list[str], dest: str, **kwargs: Any) -> Transfer:
        if self._master is not None:
            self._master.wait()  # the shared connection is up (or failed: rsync says why)
        return rsync(self.endpoint, self.known_hosts, self.run_id, sources, dest, **kwargs)

    def close(self) -> None:
        if self._conn is not None:
            try:
                self._conn.close()
            except Exception:  # noqa: BLE001 - closing is best effort
                pass
            self._conn = None
        close_master(self.endpoint, self.run_id)


# Where control_folder() keeps the cycle's ssh sockets (a test moves it).
CONTROL_ROOT = Path("/tmp")


def control_folder() -> Path:
    """The folder of the cycle's ssh control sockets, /tmp/podcycle-ssh-UID: short, as a Unix
    socket's path holds ~104 bytes. Made 0700; refused when it is a link, not a folder, or
    another user's, who could swap a socket for one of their own and read or feed the
    transfers of the dataset and the model (tmux refuses its /tmp/tmux-UID alike). Ours but
    open to others (made under another umask, or by hand): closed again. Checked at a start,
    before anything is made."""
    import stat

    uid = os.getuid()
    folder = CONTROL_ROOT / f"podcycle-ssh-{uid}"
    try:
        folder.mkdir(mode=0o700)
    except FileExistsError:
        pass
    except OSError as exc:
        raise RemoteError(f"cannot make {folder}, where pod-cycle keeps its SSH connections' "
                          f"sockets: {exc.strerror or exc}",
                          f"make /tmp writable for this user ({CONTROL_ROOT} is used as is)"
                          ) from None
    info = os.lstat(folder)
    if stat.S_ISLNK(info.st_mode) or not stat.S_ISDIR(info.st_mode) or info.st_uid != uid:
        what = ("a link" if stat.S_ISLNK(info.st_mode) else "not a folder"
                if not stat.S_ISDIR(info.st_mode) else f"owned by another user (uid "
                f"{info.st_uid})")
        raise RemoteError(f"{folder}, where pod-cycle keeps its SSH connections' sockets, is "
                          f"{what}: whoever made it could take over those connections",
                          f"remove it if nobody needs it (rm -r {folder}), then run again; "
                          "pod-cycle makes it anew, for this user alone")
    if info.st_mode & 0o077:
        os.chmod(folder, 0o700)
        # Closed now, but whatever another user put in while it was open stays: a socket of
        # theirs at a run's name would be taken for its master (ControlMaster=auto).
        for entry in folder.iterdir():
            try:
                if entry.lstat().st_uid != uid:
                    entry.unlink()
            except OSError:
                raise RemoteError(f"{entry}, in the folder of pod-cycle's SSH sockets, is "
                                  "another user's and cannot be removed",
                                  f"remove {folder} (rm -r {folder}), then run again") from None
    return folder


def control_path(endpoint: Endpoint, run_id: str) -> Path:
    digest = hashlib.sha256(f"{run_id}|{endpoint.label()}".encode()).hexdigest()[:16]
    return control_folder() / digest


def check_known_hosts(known_hosts: Path) -> None:
    """Refuse a run folder ssh cannot be given (sshopts): at a start, before anything is made."""
    sshopts.check_path(known_hosts, "the run's known_hosts",
                       f"set POD_CYCLE_ARTIFACTS_DIR to a folder {sshopts.CLEAN}")


def ssh_options(endpoint: Endpoint, known_hosts: Path, run_id: str) -> list[str]:
    """The cycle's own ssh (its control master, rsync's transport): everything given here
    and nothing read from ~/.ssh/config (-F none), as the Fabric side reads none. A
    `Host *` there with a RemoteCommand, RequestTTY or ProxyCommand would break rsync's
    protocol or route a pod's connection elsewhere. pod.ssh, a shell for a person, keeps
    the person's config."""
    check_known_hosts(known_hosts)
    return ["-F", "none", "-p", str(endpoint.port), "-i", str(endpoint.key),
            "-o", "IdentitiesOnly=yes", "-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=yes",
            "-o", sshopts.file_option("UserKnownHostsFile", known_hosts),
            "-o", "ControlMaster=auto", "-o", f"ControlPath={control_path(endpoint, run_id)}",
            "-o", "ControlPersist=120", "-o", "ConnectTimeout=20", "-o", "LogLevel=ERROR",
            # A link that dies without a word (a NAT's idle timeout, a frozen pod) ends the
            # transfer after a minute, as a broken one would, instead of hanging while the
            # pod bills: rsync then retries, resuming its partial file.
            "-o", f"ServerAliveInterval={KEEPALIVE_EVERY:g}",
            "-o", f"ServerAliveCountMax={round(DEAD_AFTER / KEEPALIVE_EVERY)}"]


# rsync's lines that name a cause, most telling first: the receiver's disk error comes after
# the sender's "Broken pipe" it caused, and rsync's own summary ("error in rsync protocol data
# stream", "unexplained error") says least.
_RSYNC_CAUSES = ("No space left on device", "Disk quota exceeded", "File too large",
                 "Permission denied", "Read-only file system", "Connection timed out",
                 "Connection refused", "Connection reset", "No such file or directory")


def rsync_cause(stderr: str) -> str:
    """The line of rsync's stderr that says why it failed (one line, printable)."""
    lines = [line.strip() for line in stderr.strip().splitlines() if line.strip()]
    if not lines:
        return "no output"
    for cause in _RSYNC_CAUSES:
        found = next((line for line in lines if cause in line), None)
        if found:
            return printable(redact(found[-300:]))
    return printable(redact(lines[-1][-300:]))


@dataclass
class Transfer:
    sent: int
    received: int
    seconds: float


# rsync exit codes that mean the connection failed rather than the transfer itself:
# 255 (ssh could not connect), 12 (protocol stream), 30/35 (timeouts), 10 (socket I/O).
RETRYABLE_RSYNC = {10, 12, 30, 35, 255}


# What comes from a pod is data, never a way into the host: a pod's image or a process on it
# may be hostile. So a pull takes regular files and folders only (no symlink that points at
# a host file, no device node or FIFO), with no owner or group kept and no permission but
# the plain bits under the host's umask (no setuid or setgid file made, even when the host
# runs as root). The manifest lists regular files only, so nothing it checks is lost.
PULL_SAFETY = ["--no-links", "--no-devices", "--no-specials", "--no-perms", "--no-owner",
               "--no-group"]
# Where a pull keeps a file it did not finish (resumed by the next try; rsync's own advice
# over --partial): a transfer stopped by its guard leaves nothing half-written among the
# collected files, and what it had brought is removed with these folders.
PARTIAL_DIR = ".rsync-partial"
# Where a pull writes the file it is receiving (rsync --temp-dir): TEMP_DIR/<pid> in the
# destination folder. A pull killed outright (kill -9 of its process group) left rsync's
# `.name.XXXXXX` beside the collected files for good, a checkpoint's size each. A pull
# removes its own folder after it, and those of processes no longer alive before it (two
# live pulls into one folder, two `runs.board --live`, each keep theirs).
TEMP_DIR = ".rsync-tmp"


class TransferStopped(RemoteError):
    """A transfer ended by its `stop_when` guard (the host's disk filling): never retried."""


def rsync(endpoint: Endpoint, known_hosts: Path, run_id: str, sources: str | list[str],
          dest: str, *, extra: list[str] | None = None, retries: int = 3,
          progress: Callable[[str], None] | None = None,
          stop_when: Callable[[], str | None] | None = None) -> Transfer:
    """rsync -a with the same port, key and known_hosts; remote paths are written `:path`.
    A dropped connection is retried and the transfer resumes (--partial; a pull keeps its
    unfinished files in PARTIAL_DIR, and writes the file it receives in TEMP_DIR). Returns the
    bytes moved (rsync --stats). With `progress`, a line every few seconds while it runs:
    bytes done, percent, rate and time left (rsync --info=progress2). With `stop_when`, a
    check made while it runs: the reason it returns ends the transfer (TransferStopped),
    and a pull's unfinished files are removed."""
    sources = [sources] if isinstance(sources, str) else list(sources)
    source = " ".join(sources)
    shell = shlex.join(["ssh", *ssh_options(endpoint, known_hosts, run_id)])
    # rsync reads "user@::1:/path" as host "::1" split at its first colon: an IPv6 address
    # goes in brackets, which rsync takes off before it calls ssh.
    address = f"[{endpoint.host}]" if ":" in endpoint.host else endpoint.host
    host = f"{endpoint.user}@{address}"

    def expand(path: str) -> str:
        return f"{host}{path}" if path.startswith(":") else path

    pull = any(s.startswith(":") for s in sources)
    scratch = Path(dest).absolute() / TEMP_DIR / str(os.getpid())
    if pull:
        _remove_dead_scratch(scratch.parent)  # what a killed pull left
        scratch.mkdir(parents=True, exist_ok=True)
    command = ["rsync", "-a", "--stats",
               *([*PULL_SAFETY, f"--partial-dir={PARTIAL_DIR}", f"--temp-dir={scratch}"]
                 if pull else ["--partial"]),
               "-e", shell, *(extra or []),
               *(["--info=progress2", "--no-inc-recursive"] if progress else []),
               *(expand(s) for s in sources), expand(dest)]
    try:
        result, seconds, host_key = _rsync_tries(command, pull, dest, retries, progress,
                                                 stop_when)
    finally:
        if pull:
            shutil.rmtree(scratch, ignore_errors=True)
            try:
                scratch.parent.rmdir()  # the last pull out removes it
            except OSError:
                pass
    return _raise_or_count(result, seconds, host_key, endpoint, known_hosts, source, dest)


def _remove_dead_scratch(root: Path) -> None:
    """The TEMP_DIR/<pid> folders under `root` of processes no longer alive."""
    try:
        folders = [p for p in root.iterdir() if p.is_dir() and not p.is_symlink()]
    except OSError:
        return
    for folder in folders:
        try:
            os.kill(int(folder.name), 0)
            continue  # alive: its pull goes on
        except ValueError:
            pass  # not a pid: not a pull's
        except ProcessLookupError:
            pass
        except PermissionError:
            continue  # alive, another user's
        shutil.rmtree(folder, ignore_errors=True)


def _rsync_tries(command: list[str], pull: bool, dest: str, retries: int,
                 progress: Callable[[str], None] | None,
                 stop_when: Callable[[], str | None] | None
                 ) -> tuple[subprocess.CompletedProcess, float, bool]:
    """`command` run, and run again after a dropped connection (up to `retries` times):
    its last result, the seconds taken, and whether the host key was refused."""
    started = time.monotonic()
    for attempt in range(retries + 1):
        try:
            result = _run_rsync(command, progress, stop_when=stop_when)
        except TransferStopped:
            if pull:
                _remove_partials(Path(dest))
            raise
        host_key = ("Host key verification failed" in result.stderr
                    or "HOST IDENTIFICATION HAS CHANGED" in result.stderr)
        if result.returncode not in RETRYABLE_RSYNC or host_key or attempt == retries:
            break
        # The connection dropped or sshd is restarting: the kept partial file resumes it.
        time.sleep(2 ** attempt)
    return result, time.monotonic() - started, host_key


def _raise_or_count(result: subprocess.CompletedProcess, seconds: float, host_key: bool,
                    endpoint: Endpoint, known_hosts: Path, source: str, dest: str
                    ) -> Transfer:
    """rsync's outcome: the bytes moved, or the error that says why it failed."""
    if result.returncode != 0:
        if host_key:
            raise host_key_changed(endpoint, known_hosts)
        detail = rsync_cause(result.stderr)
        remedy = ("check SSH to the pod works (inv pod.ssh) and there is disk space; rerun the "
                  "step: the transfer resumes where it stopped")
        if "No space left on device" in detail or "Disk quota exceeded" in detail:
            remedy = ("free space on the receiving side (a pod: a larger volume or container "
                      "disk in its template), then rerun the step: it resumes where it stopped")
        elif "File too large" in detail:  # EFBIG: a file-size limit (ulimit -f), not SSH
            remedy = ("a file-size limit stopped the write (ulimit -f on this machine, for "
                      "a pull): raise it (ulimit -f unlimited), then rerun the step: it "
                      "resumes where it stopped")
        if endpoint.host.endswith("ssh.runpod.io"):
            remedy = PROXY_LIMITS
        raise RemoteError(f"rsync {source} → {dest} failed (exit {result.returncode}): {detail}",
                          remedy)
    sent = _stat(result.stdout, "Total bytes sent")
    received = _stat(result.stdout, "Total bytes received")
    return Transfer(sent, received, seconds)


PROGRESS2 = re.compile(r"^\s*([\d,.]+)\s+(\d+)%\s+(\S+/s)\s+(\d+:\d\d:\d\d)")


def _remove_partials(dest: Path) -> None:
    """The PARTIAL_DIR folders a stopped pull left under `dest`."""
    for folder in [dest, *(p for p in dest.rglob("*") if p.is_dir() and not p.is_symlink())]:
        partial = folder / PARTIAL_DIR
        if partial.is_dir() and not partial.is_symlink():
            shutil.rmtree(partial, ignore_errors=True)


def _run_rsync(command: list[str], progress: Callable[[str], None] | None,
               every: float = 5.0, *, stop_when: Callable[[], str | None] | None = None,
               check_every: float = 0.25) -> subprocess.CompletedProcess:
    """subprocess.run(command), but with `progress`: rsync's progress2 updates (\\r-separated)
    turned into a plain line at most every `every` seconds, the rest kept as its output.
    With `stop_when`, called every `check_every` seconds while rsync runs: a reason ends
    rsync (SIGTERM, so it puts an unfinished file aside) and raises TransferStopped."""
    if progress is None and stop_when is None:
        return subprocess.run(command, capture_output=True, text=True)

    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    errors: list[bytes] = []
    reader = threading.Thread(target=lambda: errors.append(proc.stderr.read()), daemon=True)
    reader.start()
    stopped: list[str] = []
    if stop_when is not None:
        def watch() -> None:
            while proc.poll() is None:
                reason = stop_when()
                if reason:
                    stopped.append(reason)
                    proc.terminate()
                    return
                time.sleep(check_every)

        threading.Thread(target=watch, daemon=True).start()
    kept: list[str] = []
    last = time.monotonic()
    buffer = b""
    while chunk := proc.stdout.read1(65536):
        buffer += chunk
        *pieces, buffer = re.split(rb"[\r\n]", buffer)
        for piece in pieces:
            text = piece.decode(errors="replace")
            match = PROGRESS2.match(text)
            if not match:
                kept.append(text)
            elif progress and time.monotonic() - last >= every and match.group(2) != "100":
                done = int(match.group(1).replace(",", "").replace(".", ""))
                if not done:
                    continue
                last = time.monotonic()
                progress(f"{done / 1e6:,.1f} MB ({match.group(2)}%) at {match.group(3)}, "
                         f"{match.group(4)} left")
    kept.append(buffer.decode(errors="replace"))
    code = proc.wait()
    reader.join()
    if stopped:
        raise TransferStopped(stopped[0], "nothing it brought is kept; see above for why")
    return subprocess.CompletedProcess(command, code, "\n".join(kept),
                                       b"".join(errors).decode(errors="replace"))


def _stat(output: str, name: str) -> int:
    match = re.search(rf"{name}: ([\d,.]+)", output)
    return int(match.group(1).replace(",", "").replace(".", "")) if match else 0


def open_master(endpoint: Endpoint, known_hosts: Path, run_id: str) -> subprocess.Popen:
    """Start the OpenSSH ControlMaster that rsync calls share, in the background (its
    handshake overlaps other work). Wait on the returned process before the first rsync, or
    that rsync may open a connection of its own."""
    return subprocess.Popen(
        ["ssh", *ssh_options(endpoint, known_hosts, run_id), "-f", "-N",
         f"{endpoint.user}@{endpoint.host}"],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def close_master(endpoint: Endpoint, run_id: str) -> None:
    try:
        path = control_path(endpoint, run_id)
    except RemoteError:  # on the way out (a stop): its master ends after ControlPersist
        return
    if path.exists():
        subprocess.run(["ssh", "-o", f"ControlPath={path}", "-O", "exit",
                        f"{endpoint.user}@{endpoint.host}"], capture_output=True)
