"""Pod operations shared by the pod.* tasks and the cycle: one path to stop a pod (with one
meaning of a 409), summaries and SSH commands. Pods are `runpod.models.Pod` records."""

from __future__ import annotations

import os
import shlex
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from podcycle import sshopts
from podcycle.errors import ConfigError, PodCycleError
from podcycle.redact import clipped
from podcycle.runpod.errors import (
    Conflict,
    Forbidden,
    NotFound,
    RateLimited,
    Unauthorized,
    beyond_retry,
)
from podcycle.runpod.models import LogEvent, Pod, PodStatus

if TYPE_CHECKING:
    from podcycle.config import Settings
    from podcycle.runpod.client import RunPodClient

PROXY_LIMITS = ("RunPod's SSH proxy carries an interactive shell only: no rsync, scp, sftp or "
                "port forwarding. For the cycle, expose 22/tcp in the template (direct SSH) or "
                "set RUNPOD_SSH_USER/HOST/PORT to an endpoint that supports them.")

SUMMARY_HEADERS = ["ID", "NAME", "STATUS", "GPU", "CLOUD", "USD/H", "SSH"]


def select_pods(pods: list[Pod], *, billing: bool = False, name: str | None = None
                ) -> list[Pod]:
    """pod.list's filters: only the pods whose GPU time bills (provisioning, starting,
    running), and only those whose name holds `name` (case-insensitive)."""
    wanted = name.casefold() if name else None
    return [p for p in pods if (not billing or p.status.billing)
            and (wanted is None or wanted in (p.name or "").casefold())]


def summary_row(pod: Pod) -> tuple:
    where = pod.ssh_direct.label() if pod.ssh_direct else "-"
    return (pod.id, pod.name, pod.status.value, pod.gpu_label, pod.cloud,
            f"{pod.cost_per_hour:.2f}", where)


def node_alone(pod_id: str, cluster_id: str, refused: str) -> PodCycleError:
    """The refusal of an action on one node of a cluster (its 409): the whole cluster is the
    way, named by its id (the API's remedy says only CLUSTER_ID). `refused`: what cannot be
    done to a node, after "a cluster's nodes cannot be"."""
    return PodCycleError(
        f"pod {pod_id} is a node of cluster {cluster_id}: a cluster's nodes cannot be "
        f"{refused}",
        f"delete the whole cluster: inv cluster.delete {cluster_id} --yes (for a run's "
        "cluster, inv cycle.stop -r RUN collects its model first)")


def ssh_command(pod: Pod, key: Path | None) -> tuple[str, str, str | None]:
    """(kind, command, note): direct SSH first, else the proxy with its limits explained."""
    identity = f" -i {shlex.quote(str(key))}" if key else ""
    if pod.ssh_direct:
        d = pod.ssh_direct.check()
        return ("direct", f"ssh {d.username}@{d.host} -p {d.port}{identity}", None)
    if pod.ssh_proxy:
        p = pod.ssh_proxy.check()
        return ("proxy", f"ssh {p.username}@{p.host}{identity}", PROXY_LIMITS)
    if pod.status is PodStatus.RUNNING:  # "a stopped pod has none" sent it the wrong way
        raise PodCycleError(
            f"pod {pod.id} is RUNNING but offers no SSH endpoint yet",
            "RunPod publishes a booting pod's SSH address a little after it says RUNNING: try "
            f"again in a moment (inv pod.status {pod.id} shows it); if none ever comes, its "
            "template exposes no 22/tcp and it has no SSH proxy (RunPod gives one to a pod "
            "made with SSH keys registered; the local RunPod none): make a pod from a "
            "template with 22/tcp in its ports (inv template.show NAME)")
    raise PodCycleError(
        f"pod {pod.id} has no SSH endpoint (status {pod.status})",
        "a stopped pod has none until it starts again (a run's pod: inv cycle.start -r RUN "
        "restarts it; inv pod.status shows when it is RUNNING); a template needs 22/tcp in "
        "its ports and the pod must be created with SSH keys registered")


def ssh_target(pod: Pod, settings: Settings | None) -> tuple[str, str, int | None, str]:
    """(user, host, port or None for the proxy's, the settings that chose them in words or
    "") pod.ssh connects to: where the cycle's steps go (remote.endpoint_for, which takes
    RUNPOD_SSH_USER/HOST/PORT: a gateway; they were ignored here in silence), else the
    pod's SSH proxy."""
    if settings is not None and (settings.ssh_host or pod.ssh_direct is not None):
        from podcycle.remote import endpoint_for  # remote imports this module

        chosen = endpoint_for(pod, settings, Path())
        return chosen.user, chosen.host, chosen.port, chosen.given
    endpoint = pod.ssh_direct or pod.ssh_proxy
    return (endpoint.username, endpoint.host,
            endpoint.port if pod.ssh_direct is not None else None, "")


def ssh_argv(pod: Pod, key: Path | None, known_hosts: Path,
             settings: Settings | None = None) -> list[str]:
    """ssh arguments for an interactive shell (or one command) on the pod: direct SSH when
    the pod has it, else the proxy (ssh_target). Host keys are trusted on first use per pod,
    in their own file, so a reused address never trips over another pod's key. A connection
    that is never answered (a frozen sshd) ends after 20 s, where it waited for ever."""
    endpoint = pod.ssh_direct or pod.ssh_proxy
    if endpoint is None:
        ssh_command(pod, key)  # raises the explained "no SSH endpoint"
        raise AssertionError("unreachable")
    endpoint.check()
    sshopts.check_path(known_hosts, "pod.ssh's known_hosts",
                       f"set POD_CYCLE_CACHE_DIR to a folder {sshopts.CLEAN}")
    known_hosts.parent.mkdir(parents=True, exist_ok=True)
    if os.path.lexists(known_hosts) and not known_hosts.is_file():
        # ssh waited for ever on a FIFO there, and silently pinned no host key in a folder
        # or through a broken link or a loop.
        raise PodCycleError(f"pod.ssh's known_hosts {known_hosts} is not a file (a folder, a "
                            "FIFO, a broken link or a loop), so the pod's host key cannot be "
                            "kept there",
                            f"remove it (rm -r {shlex.quote(str(known_hosts))}): the next "
                            "pod.ssh trusts the pod's key again on first use")
    user, host, port, _ = ssh_target(pod, settings)
    argv = ["ssh", f"{user}@{host}",
            "-o", "StrictHostKeyChecking=accept-new",
            "-o", sshopts.file_option("UserKnownHostsFile", known_hosts),
            "-o", "ConnectTimeout=20", "-o", "LogLevel=ERROR"]
    if port is not None:
        argv += ["-p", str(port)]
    if key:
        argv += ["-i", str(key), "-o", "IdentitiesOnly=yes"]
    return argv


def run_ssh(argv: list[str]) -> tuple[int, str]:
    """Run ssh in the foreground, on this terminal, for pod.ssh: (its exit code, the end of
    what it wrote to stderr). Its stderr is passed on as it comes, and its last part kept, so
    a failure to connect or log in can be explained (ssh_failure) once ssh has said it.
    Ctrl-C, a `kill` and a closed terminal reach ssh (passed on to it) and end it, not this
    process before it; ssh suspended (its ~^Z escape) suspends this process too, so the
    shell's prompt comes back and `fg` goes on with both. A signal's end is returned as the
    shell gives it: 128 + its number."""
    import shutil
    import signal
    import subprocess
    import threading

    if shutil.which(argv[0]) is None:
        raise PodCycleError(f"{argv[0]} is not installed here (not on PATH), and pod.ssh runs "
                            "it", "install the OpenSSH client (Debian: sudo apt-get install "
                            "openssh-client), or paste the command inv pod.ssh ID --print "
                            "shows into a client of yours")
    started: list[subprocess.Popen] = []
    early: list[int] = []  # a signal that came while ssh was starting: passed on once it is

    def pass_on(signum: int, _frame: Any) -> None:
        if not started:
            early.append(signum)
            return
        try:  # os.kill: Popen.send_signal polls, and would reap ssh under our waitpid
            os.kill(started[0].pid, signum)  # not reaped but by this process: still ssh's
        except ProcessLookupError:
            pass

    passed = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT)
    previous = {signum: signal.signal(signum, pass_on) for signum in passed}
    # Ctrl-Z (the group's SIGTSTP) stops ssh; this process stops only when it sees ssh
    # stopped (_wait_following_stops), as sudo does: stopped by both at once, it found ssh's
    # stop still to be reported once continued, and stopped again. Caught, not ignored: ssh
    # starts with its default (an ignored signal would stay ignored in it, and its ~^Z with it).
    previous[signal.SIGTSTP] = signal.signal(signal.SIGTSTP, lambda *_: None)
    tail = bytearray()
    try:
        proc = subprocess.Popen(argv, stderr=subprocess.PIPE)
        started.append(proc)
        for signum in early:
            os.kill(proc.pid, signum)

        def relay() -> None:
            fd = proc.stderr.fileno()
            while chunk := os.read(fd, 65536):
                try:
                    view = memoryview(chunk)
                    while view:  # a write a signal cut short goes on with the rest
                        view = view[os.write(2, view):]
                except OSError:  # this stderr closed (2>&-): ssh's words are kept the same
                    pass
                tail.extend(chunk)
                del tail[:-8192]

        reader = threading.Thread(target=relay, daemon=True)
        reader.start()
        code = _wait_following_stops(proc)
        reader.join(timeout=5)
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    if not reader.is_alive():
        proc.stderr.close()
    return (128 - code if code < 0 else code), tail.decode("utf-8", "replace")


def _wait_following_stops(proc: Any) -> int:
    """Wait for `proc` to end (its returncode: negative for a signal's end). Each time it is
    stopped (ssh's ~^Z suspends itself), this process stops as well, as the shell's job, and
    once continued (`fg`) continues it: waiting on, the terminal was held by a stopped ssh
    that neither Ctrl-C nor `fg` reached. A signal run_ssh passes on to ssh is passed on
    while this waits, whenever it came (_signal_wakeups)."""
    import signal

    with _signal_wakeups() as sleep:
        while True:
            try:
                pid, status = os.waitpid(proc.pid, os.WUNTRACED | (os.WNOHANG if sleep else 0))
            except ChildProcessError:  # reaped elsewhere (a Popen.poll): its code is kept there
                return proc.returncode if proc.returncode is not None else 255
            if pid == 0:  # ssh runs on: until a signal (its SIGCHLD, a kill to pass on)
                sleep()
                continue
            if not os.WIFSTOPPED(status):
                proc.returncode = os.waitstatus_to_exitcode(status)
                return proc.returncode
            # A stop already undone (the group stopped and continued, this process with it:
            # `kill -STOP -PGID`, then -CONT) is no reason to stop: it stopped twice.
            try:
                changed, again = os.waitpid(proc.pid, os.WNOHANG | os.WCONTINUED)
            except ChildProcessError:
                return proc.returncode if proc.returncode is not None else 255
            if changed and not os.WIFCONTINUED(again):  # it ended meanwhile
                proc.returncode = os.waitstatus_to_exitcode(again)
                return proc.returncode
            if not changed:
                _stop_as_a_job()
            try:  # os.kill, not send_signal: that polls, and may reap ssh under waitpid
                os.kill(proc.pid, signal.SIGCONT)
            except ProcessLookupError:
                pass


@contextmanager
def _signal_wakeups() -> Iterator[Callable[[], None] | None]:
    """A sleep that every signal ends, for a wait in the main thread: a Python handler runs
    only between the main thread's bytecodes, so a signal that lands just before a blocking
    waitpid starts, or on another thread (the relay of ssh's stderr), waited with it until
    ssh ended by itself (a `kill` of pod.ssh was not passed on). Python's C handler also
    writes each signal to the wakeup fd, which keeps it until read: the sleep reads it, and
    the handler runs as the sleep returns. SIGCHLD gets a handler that does nothing, so that
    ssh's end or stop ends the sleep too. None outside the main thread, or where a wakeup fd
    is set already (an event loop's): a blocking waitpid then, as before."""
    import select
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        yield None
        return
    reader, writer = os.pipe()
    os.set_blocking(reader, False)
    os.set_blocking(writer, False)
    try:
        earlier = signal.set_wakeup_fd(writer, warn_on_full_buffer=False)
        if earlier != -1:  # somebody else's: theirs to keep
            signal.set_wakeup_fd(earlier)
            yield None
            return
        chld = signal.signal(signal.SIGCHLD, lambda *_: None)
        woken = select.poll()  # not select(): a descriptor past 1023 is out of its range
        woken.register(reader, select.POLLIN)
        try:
            def sleep() -> None:
                woken.poll()
                while True:
                    try:
                        if not os.read(reader, 4096):
                            break
                    except BlockingIOError:
                        break

            yield sleep
        finally:
            signal.set_wakeup_fd(-1)  # first: never left pointing at the pipe closed below
            if chld is not None:  # None: a handler not set from Python, not to be restored
                signal.signal(signal.SIGCHLD, chld)
    finally:
        os.close(reader)
        os.close(writer)


def _stop_as_a_job() -> None:
    """Stop this process as Ctrl-Z stops a job (SIGTSTP, its default action), as sudo does for
    its command. Where no shell does job control (an orphaned process group: a script, a
    setsid), the kernel discards it and this goes on, where a SIGSTOP stopped it for good."""
    import signal

    previous = signal.signal(signal.SIGTSTP, signal.SIG_DFL)
    try:
        os.kill(os.getpid(), signal.SIGTSTP)
    finally:
        signal.signal(signal.SIGTSTP, previous)


def recorded_key(artifacts_dir: Path, pod_id: str) -> tuple[str, str] | None:
    """(run id, SSH key) of the run under the artifacts folder whose pod is `pod_id`, as its
    start recorded the key the pod was made for (PodRecord.ssh_key); None when no run here
    made it, or its record predates that."""
    from podcycle.runs import list_runs

    for run_id, state in reversed(list_runs(artifacts_dir)):
        if state is not None and state.pod is not None and state.pod.id == pod_id \
                and state.pod.ssh_key:
            return run_id, state.pod.ssh_key
    return None


def _ssh_said(said: str, host: str, known_hosts: Path) -> str | None:
    """Which failure ssh's own words in `said` name for `host`, or None. ssh exits 255 when it
    could not connect or log in, and so may a command on the pod (an ssh of its own, whose
    words name another host): only words that name this host or pod.ssh's known_hosts are
    ssh's own about the pod."""
    if str(known_hosts) in said and "Host key verification failed" in said:
        return "hostkey"
    if f"@{host}: Permission denied (" in said:
        return "key"
    connect = f"connect to host {host} port "
    for kind, words in (("refused", ("Connection refused",)),
                        ("timeout", ("Connection timed out", "Operation timed out")),
                        ("network", ("No route to host", "Network is unreachable"))):
        if any(connect in line and word in line for line in said.splitlines()
               for word in words):
            return kind
    if f"Could not resolve hostname {host}" in said:
        return "dns"
    first = said.lstrip().split("\n", 1)[0]
    if first.startswith("kex_exchange_identification:") and "banner line" in first:
        return "notssh"  # something else answers on that port: no retry will help
    if f"Connection closed by {host}" in said or f"Connection reset by {host}" in said \
            or (first.startswith("kex_exchange_identification:")
                and ("Connection closed by remote host" in first
                     or "Connection reset by peer" in first)):
        # At pod.ssh's LogLevel=ERROR, a connection closed before the login is the one line
        # "kex_exchange_identification: Connection closed by remote host" (or "read:
        # Connection reset by peer"), naming no host: it is ssh's when it is all it said.
        return "closed"
    return None


def ssh_failure(pod: Pod, code: int, said: str, *, user: str, host: str, port: int | None,
                key: Path | None, known_hosts: Path, given: str = "",
                status: Callable[[], str] | None = None,
                made_for: Callable[[], tuple[str, str] | None] | None = None
                ) -> PodCycleError | None:
    """What pod.ssh adds when ssh could not connect to the pod or log in (exit 255 and one of
    ssh's own messages in `said`, the end of its stderr): why, for a pod, and what to do. None
    for anything else: a command's own exit code, ssh's words already enough. `user`, `host`,
    `port`: where ssh went (ssh_target; no port: the proxy's); `given`: the settings that
    chose it in words (RUNPOD_SSH_HOST...), checked first; `status`: asks the pod's status
    now, for a connection not made; `made_for`: (run id, key) of the run that made the pod
    and the key it was made for, for a refused key (recorded_key)."""
    where = f"{user}@{host}" + (f":{port}" if port else "")
    kind = _ssh_said(said, host, known_hosts) if code == 255 else None
    if kind is None:
        return None
    first = f"{given}: unset them to use the pod's own address if that is not your way in; " \
        if given else ""
    if kind == "hostkey":
        return PodCycleError(
            f"ssh refused pod {pod.id}: its host key is not the one pod.ssh kept when it first "
            f"connected ({known_hosts})",
            f"{first}if the pod was made again or reset, its sshd has a new key: remove that "
            f"file (rm {shlex.quote(str(known_hosts))}) and run pod.ssh again; if not, "
            "someone may be in the middle of the connection", code=255)
    if kind == "key":
        whose = f"the key {key}" if key else "the keys ssh offered (your ssh-agent's, " \
            "~/.ssh/config's)"
        run = made_for() if made_for is not None else None
        if run is not None and (key is None or Path(run[1]) != key):
            use = (f"run {run[0]} made it for the key {run[1]}: RUNPOD_SSH_KEY="
                   f"{shlex.quote(run[1])} inv pod.ssh {pod.id}")
        else:
            use = "give pod.ssh the key the pod was made with (RUNPOD_SSH_KEY=PATH)"
        return PodCycleError(
            f"pod {pod.id} refused {whose}: a pod lets in only the public keys registered on "
            "the account when it was made (and its template's AUTHORIZED_KEYS)",
            f"{first}{use}; a key registered later (inv api.doctor --register-ssh-key) "
            "reaches new pods only", code=255)
    now = ""
    if status is not None:
        try:
            now = status()
        except PodCycleError:
            now = ""
    if now and now != PodStatus.RUNNING.value:
        return PodCycleError(
            f"ssh could not reach pod {pod.id}: it is {now} now",
            f"{first}a pod answers SSH only while RUNNING (a run's pod: inv cycle.start -r "
            f"RUN starts it again; inv pod.status {pod.id} shows its state)", code=255)
    logs = f"inv pod.logs {pod.id} shows its last lines"
    why, remedy = {
        "refused": (f"nothing listens on {where}: its sshd is down, or not up yet",
                    f"a pod's sshd starts a little after RUNNING: try again in a moment; {logs}"),
        "timeout": (f"{where} did not answer",
                    "check that this machine's network (VPN, firewall) reaches it; inv "
                    f"pod.status {pod.id} shows the pod's state"),
        "dns": (f"the host name of {where} does not resolve",
                "check this machine's network and DNS"),
        "network": (f"this machine has no route to {where}",
                    "check this machine's network and VPN"),
        "notssh": (f"what answers at {where} is no SSH server",
                   "check the port (RUNPOD_SSH_PORT, when set, replaces the pod's own) and "
                   f"the pod's ports (inv pod.status {pod.id})"),
        "closed": (f"its sshd at {where} closed the connection before the login",
                   f"it may be starting, or taking too many logins at once: try again in a "
                   f"moment; {logs}"),
    }[kind]
    return PodCycleError(f"ssh could not reach pod {pod.id}: {why}", first + remedy, code=255)


def http_url(pod: Pod, port: int, proxy: str | None) -> str:
    """Where the pod's `port`/http answers: RunPod's HTTP proxy, or the pod's own mapping."""
    if f"{port}/http" not in pod.ports:
        raise PodCycleError(f"pod {pod.id} does not expose {port}/http (its ports: "
                            f"{', '.join(pod.ports) or 'none'})",
                            f"add {port}/http to the template's ports (config/template.toml, "
                            "inv template.sync) and create a new pod")
    if pod.status is not PodStatus.RUNNING:
        raise PodCycleError(f"pod {pod.id} is {pod.status}, so its HTTP ports are down",
                            "a run's pod starts again with inv cycle.start -r RUN (inv "
                            "runs.list shows the runs), another pod in the RunPod console; "
                            "then try again")
    if proxy:
        return proxy.format(pod=pod.id, port=port)
    mapping = pod.public_port(port)
    if mapping is None or not mapping.public:
        raise PodCycleError(f"pod {pod.id} reports no address for port {port} yet",
                            "wait a few seconds after it starts and try again")
    return f"http://{mapping.ip or '127.0.0.1'}:{mapping.public}"


MAX_API_ANSWER = 1 << 20  # bytes: a move or a health answer is a few hundred


def call_api(pod: Pod, url: str, method: str, path: str, body: Any = None,
             timeout: float = 30) -> tuple[int, Any]:
    """One request to the pod's inference API; (status, JSON). A down API is a one-line
    PodCycleError that says where to look. The pod may be hostile or broken: the whole call
    ends within `timeout` (not each read: an answer trickled a byte a second once held it
    for ever), an answer over MAX_API_ANSWER bytes or not JSON is refused, never a
    traceback or the host's memory."""
    import json as jsonlib
    import urllib.error
    import urllib.parse
    import urllib.request

    data = jsonlib.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(f"{url}{path}", data=data, method=method,
                                     headers={"Content-Type": "application/json"})

    def unreadable(why: str) -> PodCycleError:
        return _not_the_api(pod, f"answered {why} at {url}{path}")

    def read(response: Any) -> bytes:
        chunks, size = [], 0
        while chunk := response.read1(65536):
            size += len(chunk)
            if size > MAX_API_ANSWER:
                raise unreadable(f"over {MAX_API_ANSWER // 1024} KiB")
            chunks.append(chunk)
        return b"".join(chunks)

    def parsed(raw: bytes) -> Any:
        try:
            return jsonlib.loads(raw or b"null")
        except (ValueError, RecursionError):
            raise unreadable("something that is not JSON") from None

    class Stay(urllib.request.HTTPRedirectHandler):
        # A redirect is answered as what it is (an HTTP 3xx): the pod's API never sends the
        # host to fetch another address (another machine, a cloud's metadata service).
        def redirect_request(self, *args: Any, **kwargs: Any) -> None:
            return None

    # A pod's port on this machine's loopback (the local RunPod) is never asked through the
    # environment's HTTP proxy; RunPod's proxy URL is, as every HTTPS request of the host.
    handlers: list[Any] = [Stay]
    if urllib.parse.urlsplit(url).hostname in ("127.0.0.1", "localhost", "::1"):
        handlers.append(urllib.request.ProxyHandler({}))

    def exchange() -> tuple[int, Any]:
        # All of it in the worker _within bounds, an error's body too.
        try:
            with urllib.request.build_opener(*handlers).open(request,
                                                             timeout=timeout) as response:
                return response.status, parsed(read(response))
        except urllib.error.HTTPError as exc:
            try:
                payload = parsed(read(exc))
            except PodCycleError:
                payload = None
            if isinstance(payload, dict) and "error" in payload:
                return exc.code, payload
            raise PodCycleError(f"the inference API of pod {pod.id} answered HTTP {exc.code} "
                                f"at {url}{path}",
                                f"is the API up? inv pod.logs {pod.id} shows its last lines"
                                ) from None

    try:
        return _within(exchange, timeout, unreadable)
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise PodCycleError(f"the inference API of pod {pod.id} does not answer at {url} "
                            f"({reason})",
                            f"it may still be starting, or it died: inv pod.logs {pod.id} "
                            "shows why (START_INFERENCE_API=1 starts it)") from None


def _not_the_api(pod: Pod, what: str) -> PodCycleError:
    """An answer that is not the chess-bot API's, from pod `pod`: `what` it did."""
    return PodCycleError(f"the inference API of pod {pod.id} {what}",
                         f"is it the chess-bot API? inv pod.logs {pod.id} shows its last lines")


def _within(call: Callable[[], Any], timeout: float,
            too_slow: Callable[[str], Exception]) -> Any:
    """call() in a worker thread, given `timeout` seconds in all: a pod that sends its status
    line and then a header byte every few seconds keeps urlopen itself waiting (the socket
    timeout is per read), which no deadline checked between reads can end. The worker left
    behind is a daemon, stopped with the process."""
    import threading

    box: dict[str, Any] = {}

    def work() -> None:
        try:
            box["answer"] = call()
        except BaseException as exc:  # noqa: BLE001 - raised again in the caller's thread
            box["error"] = exc

    worker = threading.Thread(target=work, name="pod-api", daemon=True)
    worker.start()
    worker.join(timeout + 1)
    if worker.is_alive():
        raise too_slow(f"too slowly (no whole answer within {timeout:g} s)")
    if "error" in box:
        raise box["error"]
    return box["answer"]


def _is_move_answer(answer: Any) -> bool:
    """The shape chessbot.api answers /move with: a move, and its top candidates."""
    def candidate(item: Any) -> bool:
        return isinstance(item, dict) and isinstance(item.get("move"), str) and \
            isinstance(item.get("prob"), (int, float)) and not isinstance(item["prob"], bool)

    return isinstance(answer, dict) and isinstance(answer.get("move"), str) and \
        isinstance(answer.get("top", []), list) and all(map(candidate, answer.get("top", [])))


def jupyter_login_url(pod: Pod, url: str) -> str | None:
    """The URL of the pod's JupyterLab that logs in with the JUPYTER_PASSWORD RunPod set
    (Jupyter's token), or None when the pod has none. It holds the password."""
    from urllib.parse import quote

    env = pod.raw.get("env") if isinstance(pod.raw.get("env"), dict) else {}
    password = env.get("JUPYTER_PASSWORD")
    if not isinstance(password, str) or not password:
        return None
    return f"{url.rstrip('/')}/lab?token={quote(password, safe='')}"


def ask_move(pod: Pod, url: str, fen: str, top_k: int) -> dict[str, Any]:
    """POST /move to the pod's inference API: its answer, or the one meaning of each refusal
    (503: no model yet; any other: the request was refused)."""
    status, answer = call_api(pod, url, "POST", "/move", {"fen": fen, "top_k": top_k})
    if not isinstance(answer, dict) or (status == 200 and not _is_move_answer(answer)):
        raise _not_the_api(pod, f"answered /move (HTTP {status}) with something that is not "
                                f"a move: {clipped(answer, 200)}")
    if status == 503:
        raise PodCycleError(f"the inference API of pod {pod.id} has no model: "
                            f"{answer.get('error')}",
                            "train on the pod first (inv cycle.train), or put a model.pt under "
                            "its artifacts")
    if status != 200:
        raise PodCycleError(f"the inference API refused the request: {answer.get('error')}",
                            "check the FEN (six fields, a legal position)", code=2)
    return answer


def ask_health(pod: Pod, url: str) -> dict[str, Any]:
    """GET /healthz of the pod's inference API, with the URL and HTTP status beside it."""
    status, answer = call_api(pod, url, "GET", "/healthz")
    return {**(answer if isinstance(answer, dict) else {"answer": answer}), "url": url,
            "http_status": status}


# How far back --since may reach (pod.cost, pod.logs): a year. RunPod's billing API defaults
# to 30 days and buckets by hour up to year; a window past a year is a typo (99999999999d),
# not a question.
MAX_SINCE_DAYS = 366


def rfc3339(moment: float) -> str:
    """A Unix time as the RFC 3339 UTC time the v2 API takes (whole seconds)."""
    from datetime import UTC, datetime

    return datetime.fromtimestamp(moment, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_since(text: str, now: float | None = None, *, flag: str = "--since",
                max_days: float = MAX_SINCE_DAYS) -> float:
    """'90m', '36h', '7d' (an age) or an RFC 3339 date/time (no zone: UTC) → a Unix time,
    in the past and at most `max_days` back; anything else is a one-line ConfigError naming
    `flag`, whose examples are all accepted."""
    import math
    import re
    from datetime import UTC, datetime

    now = time.time() if now is None else now
    yesterday = rfc3339(now - 86400)
    remedy = (f"use an age such as 90m, 36h or 7d, or a time such as {yesterday[:10]} or "
              f"{yesterday} (at most {max_days:g} days back)")
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smhd])\s*", text)
    if match:
        seconds = float(match.group(1)) * {"s": 1, "m": 60, "h": 3600, "d": 86400}[
            match.group(2)]
        if not math.isfinite(seconds) or seconds > max_days * 86400:
            raise ConfigError(f"{flag} {text.strip()!r} reaches back more than {max_days:g} "
                              "days", remedy)
        return now - seconds
    try:
        when = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
        moment = (when if when.tzinfo else when.replace(tzinfo=UTC)).timestamp()
    except (ValueError, OverflowError):
        raise ConfigError(f"{flag} {text!r} is neither an age nor a date", remedy) from None
    if moment > now:
        raise ConfigError(f"{flag} {text.strip()!r} is in the future (now is {rfc3339(now)})",
                          remedy)
    if moment < now - max_days * 86400:
        raise ConfigError(f"{flag} {text.strip()!r} is more than {max_days:g} days ago",
                          remedy)
    return moment


def billed(client: RunPodClient, pod_id: str | None = None, since: float | None = None
           ) -> dict[str, Any]:
    """What RunPod billed (/v2/billing/pods), per pod: {"pods": {id: USD}, "total": USD,
    "window": [start, end], "records": n}. Hourly buckets for windows up to two days."""
    return billed_by(lambda **query: client.pod_billing(pod_id=pod_id, **query), "podId",
                     "pods", since)


def billed_by(fetch: Callable[..., dict[str, Any]], id_field: str, label: str,
              since: float | None) -> dict[str, Any]:
    """One billing endpoint's records since `since` (default: 30 days) summed per resource
    (`id_field` of each record): {label: {id: USD}, "total", "window", "records"}. `fetch`
    takes bucket= and start=; hourly buckets for windows up to two days."""
    now = time.time()
    start = since if since is not None else now - 30 * 86400
    bucket = "hour" if now - start <= 2 * 86400 else "day"
    from podcycle.runpod.errors import ApiError
    from podcycle.runpod.models import api_money

    answer = fetch(bucket=bucket, start=rfc3339(start))
    records = answer.get("records") if isinstance(answer, dict) else None
    if not isinstance(records, list):
        raise ApiError("RunPod answered the billing query without a list of records",
                       "check RUNPOD_API_BASE_URL points at the RunPod API; if it does, try "
                       "again in a minute")
    per: dict[str, float] = {}
    for record in records:
        if isinstance(record, dict) and isinstance(record.get(id_field), str):
            owner = record[id_field]
            per[owner] = per.get(owner, 0.0) + api_money(record.get("totalAmount"))
    metadata = answer.get("metadata") if isinstance(answer.get("metadata"), dict) else {}
    query = metadata.get("query") if isinstance(metadata.get("query"), dict) else {}
    return {label: {k: round(v, 6) for k, v in per.items()},
            "total": round(sum(per.values()), 6),
            # The window RunPod says it used, else the one asked for.
            "window": [str(query.get("startTime") or rfc3339(start)),
                       str(query.get("endTime") or rfc3339(now))],
            "records": len(records)}


def cost_table(client: RunPodClient, pod_id: str | None = None, since: float | None = None
               ) -> dict[str, Any]:
    """`pod.cost`'s answer: what RunPod billed per pod in the window, most first, beside each
    pod's name, price now and status ("gone" once terminated): {"window", "total_usd",
    "pods": [{"pod_id", "name", "billed_usd", "price_per_hour", "status"}]}."""
    found = billed(client, pod_id, since=since)
    pods = {p.id: p for p in client.list_pods()}
    rows = [{"pod_id": pid, "name": pods[pid].name if pid in pods else None,
             "billed_usd": amount,
             "price_per_hour": pods[pid].cost_per_hour if pid in pods else None,
             "status": str(pods[pid].status) if pid in pods else "gone"}
            for pid, amount in sorted(found["pods"].items(), key=lambda kv: -kv[1])]
    if pod_id is not None and not rows and pod_id not in pods \
            and pod_id not in {p.id for p in client.list_pods(include_cluster_pods=True)}:
        # A mistyped id read as "no records yet: billing lags", with exit 0 (hunt, stop 51).
        # A cluster's node is hidden from the plain list, and billed under its cluster.
        raise PodCycleError(f"no pod {pod_id} on this account, and RunPod billed nothing "
                            f"under that id from {found['window'][0]} to {found['window'][1]}",
                            "check the id with inv pod.list; a pod terminated before the "
                            "window has no records in it (--since 366d looks furthest back)")
    answer = {"window": found["window"], "total_usd": found["total"], "pods": rows}
    if pod_id is None and hasattr(client, "cluster_billing"):
        answer.update(cluster_costs(client, since))
        answer["total_usd"] = round(answer["total_usd"] + answer.get("clusters_usd", 0.0), 6)
    return answer


def cluster_costs(client: RunPodClient, since: float | None) -> dict[str, Any]:
    """What RunPod billed per cluster in the window (/v2/billing/clusters), for pod.cost:
    {"clusters": [{"cluster_id", "name", "billed_usd", "status"}], "clusters_usd"}; a key
    that may not read cluster billing gets {"clusters_note": why} instead."""
    from podcycle.clusters import billed as clusters_billed

    try:
        found = clusters_billed(client, since=since)
    except PodCycleError as exc:
        return {"clusters_note": f"cluster billing not read: {exc.message}"}
    if not found["clusters"]:
        return {}
    try:
        live = {c.id: c for c in client.list_clusters()}
    except PodCycleError:
        live = {}
    rows = [{"cluster_id": cid, "name": live[cid].name if cid in live else None,
             "billed_usd": amount, "status": "running" if cid in live else "deleted"}
            for cid, amount in sorted(found["clusters"].items(), key=lambda kv: -kv[1])]
    return {"clusters": rows, "clusters_usd": found["total"]}


def start_pod(client: RunPodClient, pod_id: str) -> None:
    """Start a stopped pod. The spec allows `start` only from EXITED or ERROR (409 in any
    other state), and a start is sent again after a lost answer (a gateway's 502 or 504, a
    read timeout): when the first one had been done, RunPod is already starting the pod and
    answers the second with 409. The pod is read back then: one starting or running is what
    was asked for; any other 409 is raised."""
    try:
        client.pod_action(pod_id, "start")
    except Conflict:
        if not client.get_pod(pod_id).status.billing:
            raise


class StopFailed(PodCycleError):
    exit_code = 4


def _confirm_stopped(client: RunPodClient, pod_id: str, within: float,
                     sleep: Callable[[float], None]) -> str:
    """After an accepted stop: "stopped" once RunPod shows the pod stopped or gone within
    `within` seconds (counted in the sleeps between reads), else StopFailed."""
    waited = 0.0
    while True:
        try:
            pod = client.get_pod(pod_id)
        except NotFound:
            return "stopped"
        if pod.status.stopped or pod.status.gone:
            return "stopped"
        if waited >= within:
            raise StopFailed(f"POD STILL RUNNING: RunPod accepted the stop of pod {pod_id}, and "
                             f"{within:.0f}s later still shows it {pod.status.value}",
                             f"it may be billing: look with inv pod.status {pod_id}, stop it "
                             f"with inv pod.stop {pod_id} (or in the RunPod console)")
        step = min(2.0, within - waited)
        sleep(step)
        waited += step


# How long a stop RunPod accepted may take to show: the pod is read back until then.
STOP_CONFIRM_SECONDS = 30.0
# A stop's bound: each request at most STOP_TRY_SECONDS (the client's own retries and its
# rate-limit waits as for any request), and no new try of the stop begun past
# STOP_GIVE_UP_SECONDS from the first, so that a hanging API gets the "stop it in the
# console" line within about two minutes, not ten (4 tries x 5 requests x 30 s).
STOP_TRY_SECONDS = 20.0
STOP_GIVE_UP_SECONDS = 60.0


def no_such_pod(pod_id: str, nothing: str) -> PodCycleError:
    """pod.stop's and pod.terminate's refusal of an id the account lacks: a typo must not read
    as done (`nothing`: "stopped", "terminated") while the real pod bills."""
    return PodCycleError(f"no pod {pod_id} on this account: a wrong id, or terminated already "
                         f"(nothing was {nothing})",
                         "inv pod.list shows the account's pods and their ids")


def terminate_pod(client: RunPodClient, pod_id: str) -> None:
    """Terminate a pod for good. A cluster's node cannot be (409): refused naming its
    cluster's id, as stop_pod does, where the API's remedy says only CLUSTER_ID."""
    from podcycle.runpod.errors import Conflict

    try:
        client.pod_action(pod_id, "terminate")
    except Conflict:
        try:
            cluster_id = client.get_pod(pod_id).cluster_id
        except PodCycleError:
            cluster_id = None
        if not cluster_id:
            raise
        raise node_alone(pod_id, cluster_id, "terminated alone (409)") from None


def bounded(client: Any) -> tuple[Any, float]:
    """A stop's (or a cluster delete's) client, each request at most STOP_TRY_SECONDS, and
    the time past which it begins no new try (STOP_GIVE_UP_SECONDS from now)."""
    brief = getattr(client, "brief", None)
    return (brief(STOP_TRY_SECONDS) if brief is not None else client,
            time.monotonic() + STOP_GIVE_UP_SECONDS)


def tries_over(attempt: int, attempts: int, give_up: float) -> bool:
    """Whether a stop (or a cluster delete) ends after try `attempt`: its last, or past its
    time (`bounded`)."""
    return attempt == attempts - 1 or time.monotonic() >= give_up


def tried_for(last: Exception | None) -> PodCycleError:
    """What a stop that ran out of time ends on: its last error, and that it gave up."""
    return PodCycleError(f"{getattr(last, 'message', last)} (tried for "
                         f"{STOP_GIVE_UP_SECONDS:.0f}s)")


def stop_pod(client: RunPodClient, pod_id: str, *, attempts: int = 4,
             sleep: Callable[[float], None] = time.sleep,
             confirm_within: float = STOP_CONFIRM_SECONDS,
             announce: Callable[[str], None] | None = None) -> str:
    """Stop a pod; the one path for pod.stop, cycle.stop and the cycle's `finally`.

    Returns "stopped", "already stopped" or "gone". A 409 means "not in a state that can be
    stopped": the pod is looked at, and only a pod that is not billing counts as success.
    An accepted stop counts once RunPod shows the pod stopped (in its answer, else read back
    for `confirm_within` seconds): an answer that is empty or still says RUNNING is no proof.
    Transient trouble is retried, each retry said (`announce`, default config.say: an API
    that hangs keeps the operator waiting minutes): a pod left running costs money. Raises
    StopFailed, which says loudly that the pod may still be billing."""
    if announce is None:
        from podcycle.config import say as announce
    client, give_up = bounded(client)
    last: Exception | None = None
    for attempt in range(attempts):
        try:
            answer = client.pod_action(pod_id, "stop")
            if answer is not None and (answer.status.stopped or answer.status.gone):
                return "stopped"
            return _confirm_stopped(client, pod_id, confirm_within, sleep)
        except NotFound as exc:
            # Read back: a 404 alone (a gateway's, an API not yet consistent) was taken for
            # "gone", exit 0, while the pod billed on.
            try:
                pod = client.get_pod(pod_id)
            except NotFound:
                return "gone"
            except PodCycleError:
                pod = None
            if pod is not None and pod.status.gone:
                return "gone"
            if pod is not None and pod.status.stopped:
                return "already stopped"
            last = exc if pod is None else PodCycleError(
                f"RunPod answered the stop with 404 ({exc.message}), yet shows the pod "
                f"{pod.status}")
        except Conflict as exc:
            try:
                pod = client.get_pod(pod_id)
            except NotFound:
                return "gone"
            except PodCycleError as unread:  # a gateway's 404 page, no answer: try again
                # (It escaped as that error: no "POD STILL RUNNING", exit 1, the run's record
                # not marked stop_failed.)
                pod, last = None, unread
            if pod is not None:
                if pod.status.gone:
                    return "gone"
                if pod.status.stopped:
                    return "already stopped"
                if pod.cluster_id:  # a cluster's node: no retry can stop it alone
                    raise node_alone(pod_id, pod.cluster_id, "stopped alone (409), and "
                                     "clusters cannot be stopped") from None
                last = exc  # e.g. still PROVISIONING on a slow API: try again
        except StopFailed:
            raise  # accepted, and not stopped: said at once, not after more of the same
        except (RateLimited, Unauthorized, Forbidden) as exc:
            # Four more rounds were minutes more of a pod billing (8 at a Retry-After of
            # 30 s), ending the same, or a command the same key cannot make.
            why, way = beyond_retry(exc, "stop", "pods", f"Pods → {pod_id} → Stop",
                                    f"inv pod.stop {pod_id}")
            raise StopFailed(f"POD STILL RUNNING: could not stop pod {pod_id}: {why}: "
                             f"{exc.message}", f"it is billing: {way}") from None
        except PodCycleError as exc:
            last = exc
        if tries_over(attempt, attempts, give_up):
            last = last if attempt == attempts - 1 else tried_for(last)
            break
        announce(f"stopping pod {pod_id}: {getattr(last, 'message', last)}; trying again "
                 f"in {1 + attempt}s ({attempt + 2} of {attempts})")
        sleep(1 + attempt)
    raise StopFailed(f"POD STILL RUNNING: could not stop pod {pod_id}: "
                     f"{getattr(last, 'message', last)}",
                     f"it is billing: stop it now with inv pod.stop {pod_id} (or in the RunPod "
                     "console)")


def read_logs(client: RunPodClient, pod_id: str, *, follow: bool = False,
              source: str | None = None, tail: int | None = None, since: str | None = None,
              quiet_end: float = 2.0, on_reconnect: Callable[[str], None] | None = None,
              sleep: Callable[[float], None] = time.sleep) -> Iterator[LogEvent]:
    """A pod's log lines (GET /v2/pods/{id}/logs). Without follow: the history, until the
    stream ends, is quiet for `quiet_end` seconds, or reaches lines written after the call
    began (a busy pod never goes quiet). With follow: until the server ends the stream (the
    pod stopped) or Ctrl-C; a dropped connection is resumed after the last event seen
    (Last-Event-ID), so no line is shown twice."""
    from datetime import UTC, datetime, timedelta

    import requests

    from podcycle.runpod.errors import Unreachable

    if since:  # an age or a time, checked; the server gets RFC 3339 UTC
        since = rfc3339(parse_since(since))
    history_ends = datetime.now(UTC) + timedelta(seconds=quiet_end)
    last_id: str | None = None
    failures = 0
    while True:
        try:
            for event in client.pod_logs(
                    pod_id, source=source, tail=tail if last_id is None else None,
                    since=since if last_id is None else None, last_event_id=last_id,
                    idle_timeout=60.0 if follow else quiet_end):
                if not follow and _after(event.ts, history_ends):
                    return
                last_id = event.id or last_id
                failures = 0
                yield event
            return
        except requests.exceptions.RequestException as exc:
            quiet = "timed out" in str(exc).lower()
            if not follow and quiet:
                return  # the history is out; the pod is still writing
            failures += 1
            if not follow or failures > 30:
                raise Unreachable(f"the log stream of pod {pod_id} broke: "
                                  f"{type(exc).__name__}",
                                  "check the network (inv api.doctor) and run the command "
                                  "again") from None
            if on_reconnect and not quiet:
                on_reconnect(f"log stream dropped ({type(exc).__name__}); resuming after "
                             f"{last_id or 'the start'}")
            sleep(min(5.0, 0.5 * failures))


def stream_end_note(client: RunPodClient, pod_id: str) -> str | None:
    """Why a followed log ended, for pod.logs --follow: the stream ends when the pod stops,
    and one already stopped showed its history and ended with no word why (outside hunt,
    stop 51). None while the pod runs, or when RunPod cannot be asked."""
    from podcycle.runpod.errors import NotFound

    try:
        status = str(client.get_pod(pod_id, retry=False).status)
    except NotFound:
        status = "gone"
    except PodCycleError:
        return None
    if status == "RUNNING":
        return None
    return f"pod {pod_id} is {status}: its log ends here (inv pod.status {pod_id})"


def _after(ts: str, moment: Any) -> bool:
    from podcycle.runpod.models import api_time

    when = api_time(ts)
    return when is not None and when > moment


def format_log(event: LogEvent) -> str:
    """One line: time, source, text (a line that starts with its own time keeps it once)."""
    line = event.line
    if event.ts and line.startswith(event.ts):
        line = line[len(event.ts):].lstrip()
    return f"{event.ts or '-'} {event.source:<9} {line}"


def last_log_lines(client: RunPodClient, pod_id: str, count: int = 20) -> list[str]:
    """The pod's last log lines for an error message; [] when they cannot be read."""
    try:
        return [format_log(e) for e in read_logs(client, pod_id, tail=count)]
    except PodCycleError:
        return []


def show_last_log_lines(client: RunPodClient, pod_id: str, say: Callable[[str], None]) -> None:
    """When a pod will not start: its last log lines, so nobody needs the web UI for them."""
    lines = last_log_lines(client, pod_id)
    if lines:
        say(f"the last lines of pod {pod_id}'s log (inv pod.logs {pod_id} for more):")
        for line in lines:
            say(f"  {line}")
