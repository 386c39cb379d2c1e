"""pod.health, pod.move and pod.jupyter reach a local pod's HTTP ports (the mapped ports on
127.0.0.1, as RunPod's proxy URL would be); pod.ssh opens a real SSH session to its sshd.
A real inference API (chessbot.api) serves a real model trained here."""

from __future__ import annotations

import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import chess
import pytest

from podcycle.local import procs
from podcycle.local.pods import free_port
from tests.conftest import INV, ROOT, child_environ, cmdline_of, environ_of, eventually


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory: pytest.TempPathFactory, tiny_dataset: Path) -> Path:
    out = tmp_path_factory.mktemp("model")
    result = subprocess.run(
        [sys.executable, "-m", "chessbot.train", "--dataset-dir", str(tiny_dataset),
         "--output-dir", str(out), "--cache-dir", str(out / "cache"), "--epochs", "1",
         "--blocks", "1", "--channels", "8", "--device", "cpu"],
        cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    return out / "model.pt"


class Terminal:
    """`bash -i` on a pseudo-terminal: job control (Ctrl-Z, fg) as at a user's terminal."""

    def __init__(self, fd: int) -> None:
        self.fd, self.out = fd, b""

    def send(self, keys: str) -> None:
        os.write(self.fd, keys.encode())

    def text(self) -> str:
        return self.out.decode("utf-8", "replace").replace("\r", "")

    def expect(self, needle: str, timeout: float = 60, count: int = 1) -> None:
        """Read the terminal until `needle` shows `count` times in all (a bound on the wait,
        never a measurement)."""
        import select

        def seen() -> bool:
            readable, _, _ = select.select([self.fd], [], [], 0.1)
            if readable:
                try:
                    self.out += os.read(self.fd, 65536)
                except OSError:  # the shell ended
                    pass
            return self.text().count(needle) >= count

        eventually(seen, timeout=timeout, interval=0,
                   what=lambda: f"{needle!r} on the terminal: {self.text()[-1500:]!r}")


@contextmanager
def interactive_shell(env: dict[str, str]) -> Iterator[Terminal]:
    import pty

    pid, fd = pty.fork()
    if pid == 0:  # the child: an interactive bash, no rc files
        os.chdir(ROOT)
        os.execvpe("bash", ["bash", "--norc", "--noprofile", "-i"], env)
    shell = Terminal(fd)
    try:
        shell.send("PS1='PROMPT$ '\r")
        shell.expect("PROMPT$ ")
        yield shell
    finally:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        os.waitpid(pid, 0)
        os.close(fd)


def pod_dir(runpod, pod_id: str) -> Path:
    return Path(next(p["dir"] for p in runpod.pods() if p["id"] == pod_id))


class _HostileApi:
    """An inference API on 127.0.0.1 that answers as a hostile or broken pod might: in this
    process (no pod needed), one way per test."""

    def __init__(self, way: str) -> None:
        import http.server
        import threading

        self.stop = threading.Event()
        stop = self.stop

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:
                pass

            def do_POST(self) -> None:
                self.do_GET()

            def do_GET(self) -> None:
                if self.headers.get("Content-Length"):
                    self.rfile.read(int(self.headers["Content-Length"]))
                body = {
                    "not-json": b"<html>proxy error</html>",
                    "deep": b"[" * 100_000 + b"]" * 100_000,
                    "list": b"[1, 2]",
                    "list-201": b"[1]",
                    "prob-text": b'{"move": "e2e4", "top": [{"move": "e2e4", "prob": "x"}]}',
                    "escapes": json.dumps({
                        "move": "e2e4\x1b]52;c;ZWNobw==\x07", "top": [],
                        "model_loaded": True, "model_path": "m.pt\x1b[2J"}).encode(),
                }.get(way, b"{}")
                if way == "redirect":  # to another address the host must not fetch
                    self.send_response(302)
                    self.send_header("Location", "http://127.0.0.1:9/latest/meta-data/")
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                if way == "slow-headers":  # its status line, then a header byte at a time
                    self.wfile.write(b"HTTP/1.1 200 OK\r\nX-Slow: ")
                    while not stop.is_set():
                        self.wfile.write(b"x")
                        self.wfile.flush()
                        stop.wait(0.5)
                    return
                self.send_response(201 if way == "list-201" else 200)
                self.send_header("Content-Type", "application/json")
                self.end_headers()
                if way == "huge":  # no Content-Length, never-ending
                    while not stop.is_set():
                        self.wfile.write(b" " * 65536)
                elif way == "trickle":
                    while not stop.is_set():
                        self.wfile.write(b" ")
                        self.wfile.flush()
                        stop.wait(0.5)
                else:
                    self.wfile.write(body)

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.stop.set()
        self.server.shutdown()
        self.server.server_close()


@pytest.mark.parametrize(("way", "said"), [
    ("not-json", "answered something that is not JSON"),
    ("deep", "answered something that is not JSON"),
    ("huge", "answered over 1024 KiB"),
    ("trickle", "answered too slowly (no whole answer within 2 s)"),
    ("list", "answered /move (HTTP 200) with something that is not a move"),
    ("prob-text", "answered /move (HTTP 200) with something that is not a move"),
    ("list-201", "answered /move (HTTP 201) with something that is not a move"),
    ("slow-headers", "answered too slowly (no whole answer within 2 s)"),
    ("redirect", "answered HTTP 302 at"),
])
def test_an_inference_api_that_answers_badly_is_one_line(way: str, said: str) -> None:
    """A pod's API (hostile, or another program on its port) answered /move with HTML, a
    JSON 100,000 levels deep, a list, or a string where a number belongs (tracebacks), with a
    body that never ends (the host's memory) or one byte at a time (for ever)."""
    from podcycle.errors import PodCycleError
    from podcycle.pods import ask_move, call_api
    from podcycle.runpod.models import Pod

    pod = Pod.from_api({"id": "p1", "name": "p1", "status": "RUNNING"})
    api = _HostileApi(way)
    try:
        with pytest.raises(PodCycleError) as refused:
            if way in ("trickle", "slow-headers"):
                call_api(pod, api.url, "GET", "/healthz", timeout=2)
            else:
                ask_move(pod, api.url, chess.STARTING_FEN, 3)
    finally:
        api.close()
    assert said in refused.value.message and refused.value.remedy


def test_what_the_pods_api_says_is_shown_never_obeyed(capsys, monkeypatch) -> None:
    """pod.move and pod.health printed the pod's move and model path raw: an OSC 52 in them
    wrote the operator's clipboard, a CSI 2J cleared the screen. The tasks run here in
    process against the hostile API (the pod lookup stood in for: no RunPod needed)."""
    from podcycle.runpod.models import Pod
    from tasks import pod as pod_tasks

    pod = Pod.from_api({"id": "p1", "name": "p1", "status": "RUNNING"})
    api = _HostileApi("escapes")
    monkeypatch.setattr(pod_tasks, "_pod_port", lambda *args: (pod, api.url))
    try:
        pod_tasks.move.body(None, "p1")
        pod_tasks.health.body(None, "p1")
    finally:
        api.close()
    out = capsys.readouterr().out
    assert "\x1b" not in out and "\x07" not in out
    assert out.splitlines()[0] == "e2e4\\x1b]52;c;ZWNobw==\\x07   (top: )"
    assert out.splitlines()[1].endswith("answers; model m.pt\\x1b[2J")


def test_a_bad_fen_is_refused_before_the_pod_is_asked(monkeypatch) -> None:
    """`pod.move --fen garbage` on a pod with no model yet said "has no model" (exit 1), and
    on one with a model "invalid FEN" (exit 2): the FEN is now checked first, as the pod's
    API checks it, and the pod is not looked up."""
    from invoke.exceptions import Exit

    from tasks import pod as pod_tasks

    def no_pod(*args: Any) -> None:
        raise AssertionError("the pod was asked about a FEN refused here")

    monkeypatch.setattr(pod_tasks, "_pod_port", no_pod)
    for fen, said in (("garbage", "--fen: invalid FEN 'garbage': "),
                      ("7k/6Q1/6K1/8/8/8/8/8 b - - 0 1", "--fen: no legal move: the game is "
                                                          "over in '7k/6Q1/6K1/8/8/8/8/8 b - - 0 "
                                                          "1' (checkmate, 1-0)")):
        with pytest.raises(Exit) as refused:
            pod_tasks.move.body(None, "p1", fen=fen)
        assert str(refused.value.message).startswith(f"error: {said}"), refused.value.message
        assert refused.value.code == 2


@pytest.mark.slow
def test_health_and_move_answer_from_a_local_pod(inv, runpod, tiny_model: Path) -> None:
    with runpod.running_pod("http", {"START_INFERENCE_API": "1"}) as pod:
        # The API starts with the pod.
        health = eventually(lambda: (h := inv("pod.health", pod.id, "--json")).returncode == 0
                            and h, interval=0.5, what="pod.health to answer")
        answer = json.loads(health.stdout)
        assert answer["http_status"] == 200 and answer["model_loaded"] is False
        assert answer["url"].startswith("http://127.0.0.1:")
        no_model = inv("pod.move", pod.id)
        assert no_model.returncode == 1 and "has no model" in no_model.stderr
        target = pod_dir(runpod, pod.id) / "root/workspace/chess-bot/artifacts/run1/model.pt"
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(tiny_model, target)
        loaded = inv("pod.health", pod.id)
        assert loaded.returncode == 0 and "model" in loaded.stdout and "run1" in loaded.stdout
        fen = "r1bqkbnr/pppp1ppp/2n5/4p3/4P3/5N2/PPPP1PPP/RNBQKB1R w KQkq - 2 3"
        moved = inv("pod.move", pod.id, "--fen", fen, "--json")
        assert moved.returncode == 0, moved.stderr
        best = json.loads(moved.stdout)["move"]
        assert chess.Move.from_uci(best) in chess.Board(fen).legal_moves
        plain = inv("pod.move", pod.id)
        assert plain.returncode == 0 and "(top:" in plain.stdout
        bad = inv("pod.move", pod.id, "--fen", "not a fen")
        assert bad.returncode == 2 and "invalid FEN" in bad.stderr
        jupyter = inv("pod.jupyter", pod.id, "--json")
        assert json.loads(jupyter.stdout)["url"].startswith("http://127.0.0.1:")


@pytest.mark.slow
def test_a_down_api_is_one_clear_line(inv, runpod) -> None:
    with runpod.running_pod("no-api", {"START_INFERENCE_API": "0"}) as pod:
        down = inv("pod.health", pod.id)
        assert down.returncode == 1 and "Traceback" not in down.stderr
        error = [line for line in down.stderr.splitlines() if line.startswith("error:")]
        assert len(error) == 1 and "does not answer" in error[0]
        assert f"inv pod.logs {pod.id}" in down.stderr
        moved = inv("pod.move", pod.id)
        assert moved.returncode == 1 and "does not answer" in moved.stderr
    stopped = inv("pod.health", pod.id)
    assert stopped.returncode != 0 and "Traceback" not in stopped.stderr


@pytest.mark.slow
def test_ssh_runs_a_command_over_real_ssh_and_print_keeps_the_command(inv, runpod,
                                                                     tmp_path) -> None:
    from podcycle import sshkeys

    key = sshkeys.local_backend_key(runpod.dir)  # the key pod.ssh uses on the local backend
    line = " ".join(Path(f"{key}.pub").read_text().split()[:2])
    sshkeys.register(runpod.client(), line)  # RunPod puts registered keys into new pods
    with runpod.running_pod("ssh", {"START_INFERENCE_API": "0"}) as pod:
        printed = inv("pod.ssh", pod.id, "--print")
        assert printed.returncode == 0 and printed.stdout.startswith("ssh ")
        # What --print shows is what pod.ssh runs: its per-pod known_hosts, its key only.
        assert "UserKnownHostsFile=" in printed.stdout and "IdentitiesOnly=yes" in printed.stdout
        pasted = subprocess.run(f"{printed.stdout.strip()} echo pasted-$((6*7))", shell=True,
                                capture_output=True, text=True, timeout=60)
        assert pasted.returncode == 0 and "pasted-42" in pasted.stdout, pasted.stderr
        ran = inv("pod.ssh", pod.id, "--command", "echo hello-from-$((6*7))")
        assert ran.returncode == 0, ran.stderr
        assert "hello-from-42" in ran.stdout
        again = inv("pod.ssh", pod.id, "--command", "exit 3")
        assert again.returncode == 3
        # An SSH key set but unusable: ssh ran without -i, and all that showed was ssh's own
        # "Permission denied (publickey)". Now said, before ssh runs.
        keyless = inv("pod.ssh", pod.id, "--print", env={"RUNPOD_SSH_KEY": "/nonexistent"})
        assert keyless.returncode == 0 and " -i " not in keyless.stdout, keyless.stdout
        assert "warning: no SSH key is given to ssh: SSH private key not found: /nonexistent " \
               "(from RUNPOD_SSH_KEY)" in keyless.stderr, keyless.stderr
        # ssh could not connect or log in: its own words were all pod.ssh showed (it was an
        # exec of ssh). Now why, for a pod, and what to do follow them; the exit code stays.
        wrong = tmp_path / "not-the-pods-key"
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(wrong)],
                       check=True)
        cache = {"POD_CYCLE_CACHE_DIR": str(tmp_path / "cache")}
        refused = inv("pod.ssh", pod.id, "--command", "true",
                      env={**cache, "RUNPOD_SSH_KEY": str(wrong)})
        assert refused.returncode == 255 and "Permission denied (publickey)" in refused.stderr
        assert f"error: pod {pod.id} refused the key {wrong}: a pod lets in only the public " \
               "keys registered on the account when it was made" in refused.stderr
        assert "→ give pod.ssh the key the pod was made with" in refused.stderr
        known_hosts = tmp_path / "cache" / "known_hosts" / pod.id
        assert inv("pod.ssh", pod.id, "--command", "true", env=cache).returncode == 0
        pinned = known_hosts.read_text().split()
        other = Path(f"{wrong}.pub").read_text().split()[1]  # an ed25519 key, not the pod's
        known_hosts.write_text(f"{pinned[0]} ssh-ed25519 {other}\n")
        changed = inv("pod.ssh", pod.id, "--command", "true", env=cache)
        assert changed.returncode == 255 and "REMOTE HOST IDENTIFICATION HAS CHANGED" in \
            changed.stderr
        assert f"error: ssh refused pod {pod.id}: its host key is not the one pod.ssh kept " \
               f"when it first connected ({known_hosts})" in changed.stderr
        port = free_port()  # nothing listens there
        closed = inv("pod.ssh", pod.id, "--command", "true",
                     env={**cache, "RUNPOD_SSH_HOST": "127.0.0.1", "RUNPOD_SSH_PORT": str(port)})
        assert closed.returncode == 255 and "Connection refused" in closed.stderr
        assert f"error: ssh could not reach pod {pod.id}: nothing listens on " \
               f"root@127.0.0.1:{port}" in closed.stderr
        assert "→ RUNPOD_SSH_HOST" in closed.stderr, closed.stderr
        # An sshd that takes the connection and drops it before the login (still starting,
        # MaxStartups full): at pod.ssh's LogLevel=ERROR ssh names no host, and no hint came.
        import socket
        import threading

        with socket.socket() as dropping:
            dropping.bind(("127.0.0.1", 0))
            dropping.listen()

            def drop() -> None:
                conn, _ = dropping.accept()
                conn.close()

            threading.Thread(target=drop, daemon=True).start()
            dropped = inv("pod.ssh", pod.id, "--command", "true", env={
                **cache, "RUNPOD_SSH_HOST": "127.0.0.1",
                "RUNPOD_SSH_PORT": str(dropping.getsockname()[1])})
        assert dropped.returncode == 255 and "kex_exchange_identification" in dropped.stderr
        assert f"error: ssh could not reach pod {pod.id}: its sshd at root@127.0.0.1:" \
               in dropped.stderr, dropped.stderr
        # A command's own 255, even with such words about another host, is the command's.
        own = inv("pod.ssh", pod.id, "--command",
                  "echo 'ssh: connect to host 10.9.9.9 port 22: Connection refused' >&2; "
                  "exit 255")
        assert own.returncode == 255 and "error:" not in own.stderr, own.stderr
        # Ctrl-Z at a terminal, then `fg`: pod.ssh stopped with ssh, and once continued found
        # ssh's stop still to report and stopped again; ssh's ~^Z escape held the terminal
        # with a stopped ssh. Both through a real terminal and job control (bash -i).
        with interactive_shell(env={**child_environ(), "RUNPOD_BACKEND": "local",
                                    "POD_CYCLE_LOCAL_DIR": str(runpod.dir)}) as shell:
            shell.send(f"{INV} pod.ssh {pod.id} --command 'echo started-$((6*7)); sleep 3; "
                       "echo done-$((6*7))'\r")
            shell.expect("started-42")
            prompts = shell.text().count("PROMPT$ ")
            shell.send("\x1a")  # Ctrl-Z
            shell.expect("Stopped")
            shell.expect("PROMPT$ ", count=prompts + 1)
            shell.send("fg\r")
            shell.expect("done-42")
            shell.expect("PROMPT$ ", count=prompts + 2)  # typed earlier, ssh would read it
            shell.send("echo rc=$?\r")
            shell.expect("rc=0")
            assert shell.text().count("Stopped") == 1, shell.text()[-2000:]
            shell.send(f"{INV} pod.ssh {pod.id}\r")  # a shell on the pod, on a terminal
            shell.send("echo remote-$((6*7))\r")
            shell.expect("remote-42")
            prompts = shell.text().count("PROMPT$ ")
            shell.send("\r~\x1a")  # ssh's own suspend escape
            shell.expect("Stopped", count=2)
            shell.expect("PROMPT$ ", count=prompts + 1)
            shell.send("echo local-$((6*7))\r")  # the prompt came back to this shell
            shell.expect("local-42")
            shell.expect("PROMPT$ ", count=prompts + 2)
            shell.send("fg\r")
            shell.send("echo again-$((6*7)); exit 4\r")
            shell.expect("again-42")
            shell.expect("PROMPT$ ", count=prompts + 3)
            shell.send("echo rc=$?\r")
            shell.expect("rc=4")
        # A kill of `inv pod.ssh` reaches ssh itself: no session runs on, holding the terminal.
        started = runpod.dir / f"started-{pod.id}"
        env = child_environ()
        env.update(RUNPOD_BACKEND="local", POD_CYCLE_LOCAL_DIR=str(runpod.dir))
        long = subprocess.Popen([INV, "pod.ssh", pod.id, "--command",
                                 f"touch {shlex.quote(str(started))}; sleep 300"],
                                cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)

        def clients() -> list[int]:
            return [pid for pid in procs.all_pids() if (cmd := cmdline_of(pid)).startswith("ssh ")
                    and str(started) in cmd and procs.alive(pid)]

        try:
            eventually(started.exists, what="the command to start on the pod")
            long.send_signal(signal.SIGTERM)
            long.wait(timeout=30)
            left = clients()
        finally:
            if long.poll() is None:
                long.kill()
                long.wait()
            for pid in clients():  # what a failure would leave
                os.kill(pid, signal.SIGKILL)
        assert long.returncode != 0 and not left, left
        # The pod's own home, as a container has, for its sessions and its services: not the
        # host user's, whose .bashrc (conda, pyenv, a banner) sshd's bash would otherwise run.
        home = str(runpod.dir / "pods" / pod.id / "root" / "root")
        session = inv("pod.ssh", pod.id, "--command", "echo home=$HOME")
        assert f"home={home}\n" in session.stdout, session.stdout + session.stderr
        homes = {environ_of(pid).get("HOME") for pid in procs.pod_processes(pod.id)}
        assert homes - {None} == {home}  # None: a process that ended since the scan
        # Its own /tmp too, gone with the pod: torchrun left a torchelastic_* folder in the
        # host's /tmp at each training, for good.
        tmp = Path((runpod.dir / "pods" / pod.id / "tmpdir").read_text())
        made = inv("pod.ssh", pod.id, "--command", "echo tmp=$TMPDIR; mktemp")
        assert made.stdout.splitlines()[0] == f"tmp={tmp}", made.stdout + made.stderr
        assert Path(made.stdout.splitlines()[1]).parent == tmp and tmp.is_dir()
        tmps = {environ_of(pid).get("TMPDIR") for pid in procs.pod_processes(pod.id)}
        assert tmps - {None} == {str(tmp)}
    assert not tmp.exists()


@pytest.mark.slow
def test_a_key_the_pod_refuses_fails_at_once_naming_the_key(runpod, tmp_path) -> None:
    """A key the pod does not hold was tried again until the whole wait for SSH ran out (60 s
    in the cycle), with the pod billing: sshd's refusal now ends the wait once the grace for
    keys installed late is over (none here), and says which key and how to fix it."""
    from podcycle import remote

    key = tmp_path / "not_registered"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
    said: list[str] = []
    with runpod.running_pod("refused", {"START_INFERENCE_API": "0"}) as pod:
        direct = runpod.client().get_pod(pod.id).ssh_direct
        endpoint = remote.Endpoint(direct.host, direct.port, direct.username, key)
        with pytest.raises(remote.KeyRefused) as refused:
            remote.connect_when_ready(endpoint, tmp_path / "known_hosts", timeout=120,
                                      progress=said.append, auth_grace=0)
        # An RSA key: paramiko's key_filename tried every key type on it and raised the last
        # one's "Invalid key", which was retried for a minute and then named a frozen sshd;
        # and each failed try kept its socket open, filling sshd's MaxStartups.
        rsa = tmp_path / "rsa"
        subprocess.run(["ssh-keygen", "-q", "-t", "rsa", "-b", "2048", "-N", "", "-f",
                        str(rsa)], check=True)
        before = open_sockets()
        for _ in range(3):
            with pytest.raises(remote.KeyRefused) as rsa_refused:
                remote.connect(remote.Endpoint(direct.host, direct.port, direct.username,
                                               rsa), tmp_path / "known_hosts", timeout=30)
        assert rsa_refused.value.message == (f"SSH to {endpoint.label()} was refused: "
                                             f"permission denied (publickey) for key {rsa}")
        assert open_sockets() <= before, "a failed login left its socket open"
        # A file paramiko cannot load: named as such, once the pod's sshd answered, and not
        # tried again for the minute of the wait.
        junk = tmp_path / "junk"
        junk.write_text("-----BEGIN OPENSSH PRIVATE KEY-----\nAAAA\n"
                        "-----END OPENSSH PRIVATE KEY-----\n")
        tries: list[str] = []
        with pytest.raises(remote.KeyUnreadable) as unreadable:
            remote.connect_when_ready(remote.Endpoint(direct.host, direct.port,
                                                      direct.username, junk),
                                      tmp_path / "known_hosts", timeout=120,
                                      progress=tries.append)
        assert unreadable.value.message.startswith(f"the SSH private key {junk} cannot be "
                                                   "loaded: ")
        assert "ssh-keygen -y -f KEY" in unreadable.value.remedy and tries == []
    assert refused.value.message == (f"SSH to {endpoint.label()} was refused: permission "
                                     f"denied (publickey) for key {key}")
    assert "api.doctor --register-ssh-key" in refused.value.remedy
    assert not any("permission denied" in line for line in said), said  # not tried again


def open_sockets() -> int:
    """How many sockets this process holds open."""
    count = 0
    for fd in os.listdir("/proc/self/fd"):
        try:
            count += os.readlink(f"/proc/self/fd/{fd}").startswith("socket:")
        except OSError:
            pass
    return count


@pytest.mark.slow
def test_a_key_only_an_agent_holds_is_given_by_its_pub(runpod, tmp_path, monkeypatch) -> None:
    """A key that lives in an agent alone (1Password's, Secretive's, a YubiKey's): only its
    .pub is a file. RUNPOD_SSH_KEY=KEY.pub was refused ("a public key; point it at KEY"),
    and KEY, which does not exist, was refused in turn. Given by its .pub, it is used through
    the agent, by the cycle's SSH and its rsync alike; with no agent holding it, refused as
    before."""
    from podcycle import sshkeys
    from podcycle.config import resolve
    from podcycle.errors import PodCycleError

    key = tmp_path / "in-agent"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
    pub = Path(f"{key}.pub")
    settings = resolve({}, {}, environ={"RUNPOD_SSH_KEY": str(pub)}, use_keyring=False)
    monkeypatch.delenv("SSH_AUTH_SOCK", raising=False)
    with pytest.raises(PodCycleError, match="is a public key; SSH needs the private half"):
        sshkeys.private_key(settings)
    with ssh_agent(tmp_path) as sock:
        subprocess.run(["ssh-add", "-q", str(key)], check=True, stdin=subprocess.DEVNULL,
                       env={**child_environ(), "SSH_AUTH_SOCK": str(sock)})
        key.unlink()  # the private half is the agent's alone now
        monkeypatch.setenv("SSH_AUTH_SOCK", str(sock))
        assert sshkeys.private_key(settings) == pub
        line = sshkeys.public_line(pub)
        assert line == pub.read_text().strip()
        client = runpod.client()
        before = client.get_ssh_keys()
        sshkeys.register(client, line, before)
        try:
            with pod_reached(runpod, "agent-only", pub, tmp_path) as (endpoint, known):
                rsync_reaches(endpoint, known, "agent-only", "through the agent alone\n",
                              tmp_path)
        finally:
            client.put_ssh_keys(before)


@contextmanager
def ssh_agent(tmp_path: Path) -> Iterator[Path]:
    """A private ssh-agent for the test: the path of its socket, once it accepts connections.
    ssh-agent binds its socket before it listens, so the socket's file appears while a
    connection is still refused ("Error connecting to agent: Connection refused" failed
    ssh-add once on a busy CI machine): wait for a connection to succeed, not for the file."""
    import socket

    sock = tmp_path / "agent.sock"
    agent = subprocess.Popen(["ssh-agent", "-D", "-a", str(sock)], stdout=subprocess.DEVNULL)

    def accepts() -> bool:
        with socket.socket(socket.AF_UNIX) as probe:
            try:
                probe.connect(str(sock))
            except OSError:  # not made yet, or made and not yet listening
                return False
            return True

    try:
        eventually(accepts, what="ssh-agent's socket to accept connections",
                   interval=0.02)
        yield sock
    finally:
        agent.terminate()
        agent.wait()


@contextmanager
def pod_reached(runpod, name: str, key: Path, tmp_path: Path) -> Iterator[tuple[Any, Path]]:
    """A running local pod that the cycle's SSH reached with `key`: (endpoint, known_hosts)."""
    from podcycle import remote

    with runpod.running_pod(name, {"START_INFERENCE_API": "0"}) as pod:
        direct = runpod.client().get_pod(pod.id).ssh_direct
        endpoint = remote.Endpoint(direct.host, direct.port, direct.username, key)
        known = tmp_path / "known_hosts"
        conn = remote.connect_when_ready(endpoint, known, timeout=120,
                                         progress=lambda _: None, auth_grace=0)
        try:
            assert remote.run(conn, "echo in", hide=True).stdout.strip() == "in"
        finally:
            conn.close()
        yield endpoint, known


def rsync_reaches(endpoint, known: Path, run_id: str, text: str, tmp_path: Path) -> None:
    """The cycle's rsync sends a file to the pod's home, which SSH then reads back."""
    from podcycle import remote

    sent = tmp_path / "sent.txt"
    sent.write_text(text)
    remote.rsync(endpoint, known, run_id, [str(sent)], ":", retries=0)
    echoed = remote.connect(endpoint, known)
    try:
        assert remote.run(echoed, "cat sent.txt", hide=True).stdout == text
    finally:
        echoed.close()


@pytest.mark.slow
def test_a_key_with_a_passphrase_goes_through_the_agent_or_is_refused_before_a_pod(
        runpod, tmp_path, monkeypatch) -> None:
    """A key with a passphrase (most people's), even one ssh-agent held: paramiko was told to
    use neither the agent nor a passphrase, so sshd's refusal read as "register that key's
    .pub on the account", and api.doctor said the key was fine. Without an agent holding it,
    it is now refused before anything is made, saying so; with one, the cycle's SSH and
    rsync use the agent's copy of that key."""
    from podcycle import remote, sshkeys
    from podcycle.config import resolve
    from podcycle.errors import PodCycleError

    key = tmp_path / "locked"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "two words", "-f", str(key)],
                   check=True)
    assert sshkeys.needs_passphrase(key)
    monkeypatch.delenv("SSH_AUTH_SOCK", raising=False)
    settings = resolve({"ssh_key": str(key)}, {}, environ={}, use_keyring=False)
    with pytest.raises(PodCycleError) as refused:
        sshkeys.private_key(settings)
    assert refused.value.message.startswith(f"the SSH private key {key} (from --ssh-key) is "
                                            "protected by a passphrase, and no ssh-agent")
    assert f"ssh-add {key}" in refused.value.remedy
    # An agent that holds it (ssh-add given the passphrase by an askpass program).
    with ssh_agent(tmp_path) as sock:
        askpass = tmp_path / "askpass"
        askpass.write_text("#!/bin/sh\necho 'two words'\n")
        askpass.chmod(0o700)
        subprocess.run(["ssh-add", "-q", str(key)], check=True, stdin=subprocess.DEVNULL,
                       env={**child_environ(), "SSH_AUTH_SOCK": str(sock),
                            "SSH_ASKPASS": str(askpass), "SSH_ASKPASS_REQUIRE": "force",
                            "DISPLAY": ":0"})
        monkeypatch.setenv("SSH_AUTH_SOCK", str(sock))
        assert sshkeys.private_key(settings) == key
        client = runpod.client()
        before = client.get_ssh_keys()
        sshkeys.register(client, sshkeys.public_line(key), before)
        try:
            with pod_reached(runpod, "locked-key", key, tmp_path) as (endpoint, known):
                # A cluster opens its nodes' sessions at once: each signs through a
                # connection to the agent of its own (one shared hung or was refused).
                import threading

                answers: list[str] = []

                def one() -> None:
                    opened = remote.connect(endpoint, known, timeout=30)
                    try:
                        answers.append(remote.run(opened, "echo in", hide=True).stdout)
                    finally:
                        opened.close()

                threads = [threading.Thread(target=one, daemon=True) for _ in range(8)]
                for thread in threads:
                    thread.start()
                for thread in threads:
                    thread.join(120)  # a bound on a hang
                assert answers == ["in\n"] * 8
                rsync_reaches(endpoint, known, "locked-key", "through the agent\n", tmp_path)
        finally:
            client.put_ssh_keys(before)


@pytest.mark.slow
def test_an_ssh_user_or_port_given_in_the_settings_is_named_when_ssh_fails(runpod,
                                                                          tmp_path) -> None:
    """RUNPOD_SSH_USER set wrong: sshd's refusal said "register that key's .pub", of a key
    the account holds; RUNPOD_SSH_PORT where nothing listens: "NoValidConnectionsError:
    [Errno None]" and "check the pod is RUNNING", of a pod that ran. Each now says first
    which setting replaced the pod's own address, and that nothing listens there."""
    import socket

    from podcycle import remote, sshkeys
    from podcycle.config import Settings

    key = sshkeys.local_backend_key(runpod.dir)
    with runpod.running_pod("overridden", {"START_INFERENCE_API": "0"}) as pod:
        pod = runpod.client().get_pod(pod.id)
        own = f"{pod.ssh_direct.username}@127.0.0.1:{pod.ssh_direct.port}"
        endpoint = remote.endpoint_for(pod, Settings(ssh_user="nosuchuser"), key)
        with pytest.raises(remote.KeyRefused) as refused:
            remote.connect_when_ready(endpoint, tmp_path / "known_hosts", timeout=60,
                                      progress=lambda _: None, auth_grace=0)
        assert refused.value.remedy.startswith(
            f"RUNPOD_SSH_USER=nosuchuser replaces the pod's own {own}: unset them to use the "
            "pod's own if that is not your way in; register"), refused.value.remedy
        with socket.socket() as closed:
            closed.bind(("127.0.0.1", 0))
            port = closed.getsockname()[1]
        endpoint = remote.endpoint_for(pod, Settings(ssh_port=port), key)
        with pytest.raises(remote.RemoteError) as nothing:
            remote.connect(endpoint, tmp_path / "known_hosts", timeout=5)
        assert nothing.value.message == (f"cannot open SSH to root@127.0.0.1:{port}: nothing "
                                         "listens on that port (connection refused)")
        assert nothing.value.remedy.startswith(f"RUNPOD_SSH_PORT={port} replaces the pod's "
                                               f"own {own}")
        assert nothing.value.refused


@pytest.mark.slow
def test_pod_ssh_keeps_a_key_with_a_passphrase_for_ssh_to_ask(runpod, inv, tmp_path) -> None:
    """A key with a passphrase and no agent holding it: the cycle refuses it (it never asks),
    and pod.ssh, whose ssh asks for the passphrase itself, dropped it with a warning and
    ran ssh without -i, trying only the default identities."""
    key = tmp_path / "locked"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "two words", "-f", str(key)],
                   check=True)
    with runpod.running_pod("locked-shell", {"START_INFERENCE_API": "0"}) as pod:
        printed = inv("pod.ssh", pod.id, "--print",
                      env={"RUNPOD_SSH_KEY": str(key), "SSH_AUTH_SOCK": ""})
    assert printed.returncode == 0, printed.stderr
    argv = shlex.split(printed.stdout)
    assert argv[argv.index("-i") + 1] == str(key)
    assert "no SSH key is given" not in printed.stderr


def test_a_stopped_pods_http_ports_name_what_starts_it() -> None:
    """Hunt: pod.move, pod.health and pod.jupyter of a stopped pod said "start it (RunPod
    console or a new cycle)": no console on the local RunPod, no such task. The remedy names
    the command that starts a run's pod again."""
    from podcycle.errors import PodCycleError
    from podcycle.pods import http_url
    from podcycle.runpod.models import Pod

    pod = Pod.from_api({"id": "lp1", "name": "pod-cycle-r1", "status": "EXITED",
                        "gpu": {"id": "NVIDIA H200", "count": 1}, "cloud": "SECURE",
                        "ports": ["8000/http", "22/tcp"]})
    with pytest.raises(PodCycleError) as down:
        http_url(pod, 8000, None)
    assert down.value.message == "pod lp1 is EXITED, so its HTTP ports are down"
    assert down.value.remedy == ("a run's pod starts again with inv cycle.start -r RUN (inv "
                                 "runs.list shows the runs), another pod in the RunPod "
                                 "console; then try again")
