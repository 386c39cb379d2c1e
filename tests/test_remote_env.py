"""The env of a pod-side script survives Fabric's inline `export K=V && command`, which does
not quote (fabric.runners.Remote.start): podcycle.remote.shell_env quotes each value. Checked
through a real bash, with the same prefix Fabric builds."""

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from podcycle.remote import shell_env

VALUES = [
    "--blocks 1 --channels 8",  # TRAIN_EXTRA_ARGS: several words
    "/data/my dataset/",  # a path with a space
    "it's $HOME; `id` && rm -rf / #",  # shell syntax must stay text
    "",
    "tab\there\nnewline",
]


@pytest.mark.parametrize("value", VALUES)
def test_values_arrive_as_themselves(value: str) -> None:
    env = shell_env({"TRAIN_EXTRA_ARGS": value, "RUN_OUT": "/w/run 1"})
    prefix = " ".join(f"{k}={v}" for k, v in sorted(env.items()))  # Fabric's own format
    out = subprocess.run(["bash", "-c", f'export {prefix} && printf %s "$TRAIN_EXTRA_ARGS"'],
                         capture_output=True, text=True, check=True).stdout
    assert out == value


@pytest.mark.parametrize("name", ["A B", "X=1", "$(id)", "1ABC", ""])
def test_a_name_that_is_not_a_variable_is_refused(name: str) -> None:
    with pytest.raises(ValueError, match="not a shell variable name"):
        shell_env({name: "x"})


def test_the_cycles_ssh_reads_no_user_config_and_its_options_hold(tmp_path) -> None:
    """`ssh -G` prints the configuration ssh would use, without connecting: the installed
    ssh takes every option, and -F none keeps ~/.ssh/config (a Host * with RemoteCommand or
    RequestTTY breaks rsync) out of the cycle's connections."""
    from pathlib import Path

    from podcycle.remote import Endpoint, ssh_options

    endpoint = Endpoint("127.0.0.1", 2222, "root", Path(tmp_path / "key"))
    options = ssh_options(endpoint, tmp_path / "known_hosts", "run-1")
    assert options[:2] == ["-F", "none"]
    shown = subprocess.run(["ssh", "-G", *options, endpoint.host], capture_output=True,
                           text=True, check=True, stdin=subprocess.DEVNULL).stdout
    settings = dict(line.split(" ", 1) for line in shown.splitlines() if " " in line)
    assert settings["port"] == "2222" and settings["batchmode"] == "yes"
    assert settings["identitiesonly"] == "yes" and settings["controlmaster"] == "auto"
    assert settings["stricthostkeychecking"] == "true"
    # rsync's transport too: a link dead without a word ends after a minute, not never.
    assert (settings["serveraliveinterval"], settings["serveralivecountmax"]) == ("15", "4")
    assert "remotecommand" not in settings and settings.get("requesttty") in (None, "auto")
    # A hostile user config, given as ssh's config file: read without the cycle's options
    # (the control), ignored with them, since their -F none comes last and wins.
    hostile = tmp_path / "config"
    hostile.write_text("Host *\n  RemoteCommand echo hijacked\n  RequestTTY force\n"
                       "  ProxyCommand nc evil.example 22\n  User mallory\n")

    def resolved(*args: str) -> dict[str, str]:
        out = subprocess.run(["ssh", "-G", *args, endpoint.host], capture_output=True,
                             text=True, check=True, stdin=subprocess.DEVNULL).stdout
        return dict(line.split(" ", 1) for line in out.splitlines() if " " in line)

    read = resolved("-F", str(hostile))
    assert read["remotecommand"] == "echo hijacked" and read["user"] == "mallory"
    kept_out = resolved("-F", str(hostile), *options)
    assert "remotecommand" not in kept_out and "proxycommand" not in kept_out
    assert kept_out.get("requesttty") in (None, "auto")
    assert kept_out["user"] != "mallory"


class _EchoingConnection:
    """Stands in for Fabric's Connection (no pod needed): its command 'prints' `said` to the
    streams the caller gave, as Invoke's runner does, and returns an ordinary result."""

    def __init__(self, said: str) -> None:
        self.said = said

    def run(self, command: str, **kwargs):
        from types import SimpleNamespace

        kwargs["out_stream"].write(self.said)
        kwargs["err_stream"].write(self.said)
        return SimpleNamespace(exited=0, stdout=self.said, stderr=self.said)


def test_what_a_pod_streams_is_shown_never_obeyed(capsys) -> None:
    """A hostile pod's training log (a compromised image, a process on the pod) reached the
    terminal raw: OSC 52 writes the clipboard, OSC 0 retitles the window, CSI 2J clears the
    screen, a carriage return forges a line. They are shown as escapes; the captured output
    the cycle parses stays exactly what the pod sent."""
    from podcycle.remote import run

    said = "epoch 1\tok\n\x1b]52;c;ZWNobyBwd25lZA==\x07\x1b]0;title\x07\x1b[2Jforged\r[cycle] ok\n"
    result = run(_EchoingConnection(said), "true")
    shown = capsys.readouterr()
    expected = ("epoch 1\tok\n\\x1b]52;c;ZWNobyBwd25lZA==\\x07\\x1b]0;title\\x07\\x1b[2Jforged"
                "\\x0d[cycle] ok\n")
    assert (shown.out, shown.err) == (expected, expected)
    assert result.stdout == said and result.exited == 0


@pytest.mark.parametrize("buffering", [1, -1])
def test_a_full_disk_under_the_output_loses_lines_not_the_training(monkeypatch, capsys,
                                                                   buffering: int) -> None:
    """`inv cycle.full-smoke > log` on a full disk: the write of the training's log failed
    the command as a broken SSH connection, three reconnects failed alike, and the training
    was stopped and thrown away. /dev/full fails every write with ENOSPC, as a full disk
    does: the lines are lost, said once, and the command runs to its end."""
    from podcycle.remote import _Shown, run

    monkeypatch.setattr(_Shown, "lost_said", False)
    said = "".join(f"[train] epoch {n}/3 val_top1=0.1\n" for n in range(1, 4))
    full = open("/dev/full", "w", buffering=buffering)  # noqa: SIM115 - closed below
    try:
        monkeypatch.setattr(sys, "stdout", full)
        result = run(_EchoingConnection(said), "true")
        assert run(_EchoingConnection(said), "true").exited == 0  # the collect's, after
    finally:
        monkeypatch.undo()
        try:
            full.close()  # what it still buffers cannot be written either
        except OSError:
            pass
    assert result.exited == 0 and result.stdout == said
    err = capsys.readouterr().err
    assert err.count("note: the pod's output could not be shown (No space left on "
                     "device): it goes on") == 1
    assert said in err  # stderr still shows it


def on_path(monkeypatch: pytest.MonkeyPatch, folder: Path, name: str, script: str) -> Path:
    """A stand-in program `name` (its `script`, a #! line first) found first on PATH."""
    program = folder / name
    program.write_text(script)
    program.chmod(0o755)
    monkeypatch.setenv("PATH", f"{folder}:{os.environ['PATH']}")
    return program


@pytest.fixture
def fresh_rsync_version():
    """hosttools caches rsync's version per path: each test reads its own stand-in's."""
    from podcycle import hosttools

    hosttools.rsync_version.cache_clear()
    yield
    hosttools.rsync_version.cache_clear()


# Folders a user's checkout or artifacts may lie in: a space ("My Projects"), an apostrophe,
# shell syntax. ssh split UserKnownHostsFile at the space and reported a changed host key.
HOSTILE_FOLDERS = ["My Projects", "Jane's runs", "$HOME `id` (v2) & co; rm -rf"]


@pytest.mark.parametrize("folder", HOSTILE_FOLDERS)
def test_rsync_hands_ssh_its_options_whole_in_any_folder(tmp_path, monkeypatch,
                                                         folder: str) -> None:
    """The cycle's rsync, through the real rsync, which splits the -e string itself (its
    own rules, not a shell's): a stand-in `ssh` first on PATH writes the arguments it was
    given and fails (no pod needed). They are ssh_options exactly, the quoted known_hosts
    option and the key path whole."""
    import json
    import sys

    from podcycle.remote import Endpoint, RemoteError, rsync, ssh_options

    where = tmp_path / folder
    where.mkdir()
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    on_path(monkeypatch, bin_dir, "ssh", f"#!{sys.executable}\nimport json, sys\n"
            f"open({str(tmp_path / 'argv.json')!r}, 'w').write(json.dumps(sys.argv))\n"
            "sys.exit(255)\n")
    endpoint = Endpoint("127.0.0.1", 2222, "root", Path(where / "key"))
    source = where / "file"
    source.write_text("x")
    with pytest.raises(RemoteError, match=r"failed \(exit \d+\)"):  # 255 or 12: a race
        rsync(endpoint, where / "known_hosts", "run-1", [str(source)], ":/tmp/x/", retries=0)
    given = json.loads((tmp_path / "argv.json").read_text())
    options = ssh_options(endpoint, where / "known_hosts", "run-1")
    assert given[1:1 + len(options)] == options


@pytest.mark.parametrize("folder", HOSTILE_FOLDERS)
def test_ssh_reads_the_known_hosts_path_whole_in_any_folder(tmp_path, folder: str) -> None:
    """ssh's own parser of an option's value (`ssh -G` prints what it resolved): the path
    itself. (-G joins several files with spaces, so a space's split shows only end to end,
    in test_cycle's full smoke; an apostrophe, which began a quote, shows here.)"""
    from podcycle.remote import Endpoint, ssh_options

    path = tmp_path / folder / "known_hosts"
    options = ssh_options(Endpoint("127.0.0.1", 2222, "root", Path(tmp_path / "key")), path,
                          "run-1")
    shown = subprocess.run(["ssh", "-G", *options, "127.0.0.1"], capture_output=True,
                           text=True, check=True, stdin=subprocess.DEVNULL).stdout
    assert f"userknownhostsfile {path}\n" in shown
    unquoted = subprocess.run(["ssh", "-G", "-F", "none", "-o", f"UserKnownHostsFile={path}",
                               "127.0.0.1"], capture_output=True, text=True,
                              stdin=subprocess.DEVNULL).stdout
    if "'" in folder:
        assert f"userknownhostsfile {path}\n" not in unquoted  # the control: it was broken


@pytest.mark.parametrize(("folder", "why"), [
    ("100%h", "a %, which ssh reads as a token"), ("${HOME}x", "a ${, which ssh reads"),
    ('say "hi"', 'a ", which OpenSSH before 8.7'), ("back\\slash", "a backslash, which"),
    ("two\nlines", "a line break")])
def test_a_path_ssh_would_misread_is_refused_before_any_connection(tmp_path, folder: str,
                                                                   why: str) -> None:
    """`%` starts a token in ssh's file paths (%h the host, %d the home), `${` a variable; a
    quote or a backslash is read only by OpenSSH 8.7+; a line break ends an option. Refused,
    saying which setting to change, for the run's known_hosts and for the key."""
    from podcycle.config import resolve
    from podcycle.errors import ConfigError, PodCycleError
    from podcycle.remote import Endpoint, ssh_options
    from podcycle.sshkeys import private_key

    endpoint = Endpoint("127.0.0.1", 2222, "root", Path(tmp_path / "key"))
    with pytest.raises(ConfigError, match="POD_CYCLE_ARTIFACTS_DIR") as refused:
        ssh_options(endpoint, tmp_path / folder / "known_hosts", "run-1")
    assert f"holds {why}" in str(refused.value)
    key = tmp_path / folder / "id_ed25519"
    key.parent.mkdir()
    key.write_text("-----BEGIN OPENSSH PRIVATE KEY-----\n")
    settings = resolve({}, {}, environ={"RUNPOD_SSH_KEY": str(key)}, use_keyring=False)
    with pytest.raises(PodCycleError, match="RUNPOD_SSH_KEY") as refused:
        private_key(settings)
    assert f"holds {why}" in str(refused.value)


@pytest.mark.parametrize(("said", "refused"), [
    ("rsync  version 2.6.9  protocol version 29", "rsync at {} is version 2.6.9;"),  # macOS
    ("openrsync: protocol version 29", "rsync at {} is of no version it names"),  # macOS 15
    ("rsync version 2.6.9 compatible", "rsync at {} is version 2.6.9;"),  # openrsync
    ("rsync  version v3.0.9  protocol version 30", "rsync at {} is version 3.0.9;"),
    ("rsync  version 3.1.3  protocol version 31", "rsync at {} is version 3.1.3;"),  # no --mkpath
    ("rsync  version v3.2.3  protocol version 31", None),
    ("rsync  version 3.2.7  protocol version 31", None),
])
def test_a_start_refuses_an_rsync_the_cycle_cannot_use(tmp_path, monkeypatch,
                                                       fresh_rsync_version, said: str,
                                                       refused: str | None) -> None:
    """Checked when a run starts, before its pod is made: an old rsync (macOS's own, or the
    3.1.3 of Ubuntu 20.04 without --mkpath) failed at push-dataset, with the pod billing. A
    stand-in `rsync` on PATH says its version."""
    from podcycle import hosttools
    from podcycle.errors import ConfigError

    fake = on_path(monkeypatch, tmp_path, "rsync", f"#!/bin/sh\necho '{said}'\n")
    if refused is None:
        hosttools.check()
        return
    with pytest.raises(ConfigError) as info:
        hosttools.check()
    assert str(info.value).startswith(refused.format(fake))
    assert "brew install rsync" in info.value.remedy


def test_a_start_without_ssh_or_rsync_says_which_to_install(tmp_path, monkeypatch) -> None:
    from podcycle import hosttools
    from podcycle.errors import ConfigError

    monkeypatch.setenv("PATH", str(tmp_path))  # neither is there
    with pytest.raises(ConfigError, match="ssh is not installed") as info:
        hosttools.check()
    assert "openssh-client" in info.value.remedy
    on_path(monkeypatch, tmp_path, "ssh", "#!/bin/sh\n")
    with pytest.raises(ConfigError, match="rsync is not installed"):
        hosttools.check()


def test_doctor_reports_this_machines_ssh_and_rsync(tmp_path, monkeypatch, capsys,
                                                    fresh_rsync_version) -> None:
    """api.doctor says what a start would refuse: an rsync too old, with what to install; and
    the tools found when they do."""
    from podcycle import doctor

    found = doctor._host_tools_check()
    assert found["status"] == "ok" and found["detail"].startswith("rsync ")
    fake = on_path(monkeypatch, tmp_path, "rsync",
                   "#!/bin/sh\necho 'rsync  version 3.1.3  protocol version 31'\n")
    old = doctor._host_tools_check()
    assert old["status"] == "error" and "is version 3.1.3" in old["detail"]
    doctor.render({"backend": "local", "key_source": "none", "scopes": {}, "host_tools": old,
                   "remedies": [old["remedy"]], "ok": False})
    shown = capsys.readouterr().out
    assert f"ssh, rsync:   error (rsync at {fake} is version 3.1.3;" in shown
    assert "→ install rsync 3.2.3 or newer" in shown and "doctor: problems found" in shown


def test_a_secret_a_pod_prints_is_masked_even_across_chunks() -> None:
    """The training's log streams in chunks: a known secret (the API key, a registry
    password) that a pod prints was shown in clear, and one cut by a chunk's end could not be
    matched. Lines are masked whole; a last line without a break comes out at the close."""
    import io

    from podcycle.redact import register_secret
    from podcycle.remote import _Shown

    secret = "rpa_SHOWN_ACROSS_CHUNKS_0123456789"
    register_secret(secret)
    out = io.StringIO()
    shown = _Shown(out)
    text = f"epoch 1\nthe key is {secret} \x1b]0;x\x07\r\nlast line {secret}"
    for start in range(0, len(text), 7):  # chunks that cut the key
        shown.write(text[start:start + 7])
    assert out.getvalue() == "epoch 1\nthe key is **** \\x1b]0;x\\x07\\x0d\n"
    shown.close()
    assert out.getvalue().endswith("last line ****") and secret[4:12] not in out.getvalue()


def test_echo_masks_secrets_and_shows_control_characters(capsys) -> None:
    """registry.create printed the API's answer as it came: a name that echoed the registry
    token, or carried escape sequences, reached the terminal as such."""
    from podcycle.cli import echo
    from podcycle.redact import register_secret

    register_secret("ghp_RegistryToken0123456789abcdef")
    echo("created registry credential ghcr \x1b]0;PWNED\x07\x1b[2J token="
         "ghp_RegistryToken0123456789abcdef (r1)")
    assert capsys.readouterr().out == ("created registry credential ghcr \\x1b]0;PWNED\\x07"
                                       "\\x1b[2J token=**** (r1)\n")


def test_rsync_reaches_an_ipv6_endpoint_whole(tmp_path, monkeypatch) -> None:
    """rsync splits "root@::1:/path" at its first colon, so an IPv6 SSH endpoint reached ssh
    as a wrong host. Through the real rsync to a stand-in ssh (no pod): the address arrives
    whole, without its brackets."""
    import json
    import sys

    from podcycle.remote import Endpoint, RemoteError, rsync

    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    on_path(monkeypatch, bin_dir, "ssh", f"#!{sys.executable}\nimport json, sys\n"
            f"open({str(tmp_path / 'argv.json')!r}, 'w').write(json.dumps(sys.argv))\n"
            "sys.exit(255)\n")
    source = tmp_path / "file"
    source.write_text("x")
    with pytest.raises(RemoteError, match=r"failed \(exit \d+\)"):
        rsync(Endpoint("2001:db8::7", 2222, "root", tmp_path / "key"), tmp_path / "known_hosts",
              "run-1", [str(source)], ":/tmp/x/", retries=0)
    given = json.loads((tmp_path / "argv.json").read_text())
    assert "2001:db8::7" in given and not [a for a in given if "[" in a], given
    assert given[given.index("2001:db8::7") - 2:given.index("2001:db8::7")] == ["-l", "root"]


def test_an_rsync_failure_names_its_cause_not_its_last_line() -> None:
    """A pod's full disk showed as 'rsync: [sender] write error: Broken pipe (32)': the
    receiver's 'No space left on device (28)' came first and was dropped."""
    from podcycle.remote import rsync_cause

    full = ("rsync: [receiver] write failed on \"/w/data/train.jsonl\": No space left on "
            "device (28)\nrsync error: error in file IO (code 11) at receiver.c(381)\n"
            "rsync: [sender] write error: Broken pipe (32)\n")
    assert rsync_cause(full) == ("rsync: [receiver] write failed on \"/w/data/train.jsonl\": "
                                 "No space left on device (28)")
    assert rsync_cause("rsync error: unexplained error (code 255) at io.c(285)\n") == \
        "rsync error: unexplained error (code 255) at io.c(285)"
    assert rsync_cause("") == "no output"


def test_an_sshd_that_takes_the_connection_but_never_answers_is_one_line(tmp_path,
                                                                          capfd) -> None:
    """A frozen sshd (the port open, no banner): paramiko printed three tracebacks, then the
    error said 'SSHException: No existing session'."""
    import socket

    from podcycle.remote import Endpoint, RemoteError, connect

    key = tmp_path / "key"
    key.write_text("not a key\n")
    with socket.socket() as silent:  # accepts (the backlog), never speaks
        silent.bind(("127.0.0.1", 0))
        silent.listen(1)
        endpoint = Endpoint("127.0.0.1", silent.getsockname()[1], "root", key)
        with pytest.raises(RemoteError) as frozen:
            connect(endpoint, tmp_path / "known_hosts", timeout=1)
    assert "its sshd took the connection but never answered within 1s" in frozen.value.message
    assert frozen.value.pod_side  # what a train's reconnect tries again
    assert "Traceback" not in capfd.readouterr().err


def test_a_login_sshd_does_not_finish_in_time_is_no_refused_key(tmp_path) -> None:
    """paramiko says "Authentication timeout." when sshd takes the key exchange and then does
    not answer the login in time (a pod, or this machine, overloaded): that read as
    "permission denied (publickey) ... register that key's .pub", and a busy pod's cycle
    failed after the 10 s given to a refused key. A paramiko server in this process stands
    for that sshd: it holds the login until the client has given up."""
    import threading

    import paramiko

    from podcycle.remote import Endpoint, KeyRefused, RemoteError, connect

    key = tmp_path / "key"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
    given_up = threading.Event()

    class Slow(paramiko.ServerInterface):
        def get_allowed_auths(self, username: str) -> str:
            return "publickey"

        def check_auth_publickey(self, username: str, key: object) -> int:
            given_up.wait(30)  # answered only after the client's timeout
            return paramiko.AUTH_FAILED

    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)

        def serve() -> None:
            conn, _ = listener.accept()
            transport = paramiko.Transport(conn)
            transport.add_server_key(paramiko.RSAKey.generate(1024))
            try:
                transport.start_server(server=Slow())
                given_up.wait(30)
            finally:
                transport.close()

        server = threading.Thread(target=serve, daemon=True)
        server.start()
        endpoint = Endpoint("127.0.0.1", listener.getsockname()[1], "root", key)
        try:
            with pytest.raises(RemoteError) as slow:
                connect(endpoint, tmp_path / "known_hosts", timeout=1)
        finally:
            given_up.set()
            server.join(30)
    assert not isinstance(slow.value, KeyRefused)
    assert slow.value.message == (f"cannot open SSH to {endpoint.label()}: its sshd did not "
                                  "finish the login within 1s (the pod overloaded?)")
    assert slow.value.pod_side  # tried again until the wait for SSH runs out


def test_a_connection_that_stops_answering_is_lost_not_waited_on_forever(monkeypatch) -> None:
    """A link that dies without a word (a NAT's idle timeout, a frozen pod) left train,
    push and collect waiting forever while the pod billed: nothing in the SSH stack timed
    out. A keepalive unanswered for DEAD_AFTER seconds ends the command as a lost connection.
    (A stand-in connection: a link that drops packets silently cannot be made on loopback.)"""
    import threading

    from podcycle import remote

    monkeypatch.setattr(remote, "KEEPALIVE_EVERY", 0.05)
    monkeypatch.setattr(remote, "DEAD_AFTER", 0.5)

    class FrozenLink:
        def __init__(self) -> None:
            self.closed = threading.Event()
            self.asked = 0

        def global_request(self, kind: str, wait: bool) -> None:
            self.asked += 1
            self.closed.wait()  # no reply ever comes

        def close(self) -> None:
            self.closed.set()

    class Silent:  # a command that prints nothing for longer than the link lives
        def __init__(self) -> None:
            self.transport = FrozenLink()

        def run(self, command: str, **kwargs: object) -> None:
            self.transport.closed.wait()
            raise EOFError("the channel closed")

    conn = Silent()
    with pytest.raises(remote.ConnectionLost, match=r"stopped answering \(no reply for 0.5s"):
        remote.run(conn, "python -m chessbot.train")
    assert conn.transport.asked == 1 and conn.transport.closed.is_set()

    class Answering(Silent):  # a quiet command on a live link is left alone
        def __init__(self) -> None:
            super().__init__()
            self.transport.global_request = lambda kind, wait: None

        def run(self, command: str, **kwargs: object) -> object:
            threading.Event().wait(1.0)  # quiet for twice DEAD_AFTER, answering keepalives
            return type("R", (), {"exited": 0, "stdout": "", "stderr": ""})()

    assert remote.run(Answering(), "true", hide=True).exited == 0


def test_a_pull_killed_outright_leaves_no_temp_file_among_the_collected(tmp_path, monkeypatch
                                                                        ) -> None:
    """A collect killed with its process group (kill -9: no rsync cleans up) left rsync's
    `.model.pt.XXXXXX` beside the collected files, for good: a checkpoint's size each time.
    A pull now writes into a scratch folder of its own that the next pull empties. Through
    the real rsync, its "pod" side run here by a stand-in ssh (no sshd needed)."""
    import signal
    import sys

    from podcycle.remote import TEMP_DIR, Endpoint, rsync
    from tests.conftest import eventually

    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    # The remote command rsync gives ssh ("rsync --server --sender ...") run here.
    on_path(monkeypatch, bin_dir, "ssh", f"#!{sys.executable}\nimport os, sys\n"
            "args = sys.argv[sys.argv.index('rsync'):]\n"
            "os.execvp('sh', ['sh', '-c', ' '.join(args)])\n")
    src = tmp_path / "pod" / "run"
    (src / "run_artifacts").mkdir(parents=True)
    (src / "run_artifacts" / "model.pt").write_bytes(os.urandom(3_000_000))
    dst = tmp_path / "collected"
    dst.mkdir()
    pull = (f"from pathlib import Path\nfrom podcycle.remote import Endpoint, rsync\n"
            f"rsync(Endpoint('127.0.0.1', 2222, 'root', Path('key')), Path('kh'), 'r1', "
            f"[':{src}/'], '{dst}/', extra=['--bwlimit=500'], retries=0)\n")
    host = subprocess.Popen([sys.executable, "-c", pull], cwd=tmp_path, env=os.environ.copy(),
                            start_new_session=True)
    try:
        eventually(lambda: any(dst.rglob("*model.pt.*")), timeout=60,
                   interval=0.02, what="the pull to be writing model.pt")
        os.killpg(host.pid, signal.SIGKILL)  # the host and its rsync and ssh, at once
        host.wait(timeout=30)
    finally:
        if host.poll() is None:
            os.killpg(host.pid, signal.SIGKILL)
    beside = [p for p in dst.rglob("*") if p.is_file() and TEMP_DIR not in p.parts]
    assert beside == [], beside  # the unfinished file is in the scratch folder only
    rsync(Endpoint("127.0.0.1", 2222, "root", tmp_path / "key"), tmp_path / "kh", "r1",
          [f":{src}/"], f"{dst}/", retries=0)
    left = sorted(str(p.relative_to(dst)) for p in dst.rglob("*"))
    assert left == ["run_artifacts", "run_artifacts/model.pt"], left
    assert (dst / "run_artifacts" / "model.pt").read_bytes() == \
        (src / "run_artifacts" / "model.pt").read_bytes()
    # Another live pull into the same folder (a second runs.board --live) keeps its own.
    live = dst / TEMP_DIR / str(os.getppid())
    live.mkdir(parents=True)
    (live / "model.pt.AbCdEf").write_bytes(b"being written")
    rsync(Endpoint("127.0.0.1", 2222, "root", tmp_path / "key"), tmp_path / "kh", "r1",
          [f":{src}/"], f"{dst}/", retries=0)
    assert (live / "model.pt.AbCdEf").read_bytes() == b"being written"


@pytest.mark.parametrize("damage, said", [
    (b"[127.0.0.1]:2222 ssh-ed25519 AAAA!!notbase64\n", "a line that is not a host key"),
    (b"\xff\xfe not text\n", "something that is not a list of host keys"),
])
def test_a_damaged_known_hosts_is_named_not_a_traceback(tmp_path: Path, damage: bytes,
                                                        said: str) -> None:
    """An edited or damaged line in the run's known_hosts was a paramiko traceback (64 lines,
    no word of the pod billing on), recorded raw as the step's error. It is one line naming
    the file and what to remove; read before any connection is tried."""
    from podcycle.remote import Endpoint, RemoteError, connect

    known = tmp_path / "known_hosts"
    known.write_bytes(b"# kept\n" + damage)
    with pytest.raises(RemoteError) as failed:
        connect(Endpoint("127.0.0.1", 1, "root", tmp_path / "key"), known, timeout=1)
    assert failed.value.message.startswith(f"the run's known_hosts {known} holds {said}")
    assert "remove that line, or the whole file" in failed.value.remedy
    folder = tmp_path / "known_hosts_folder"
    folder.mkdir()
    with pytest.raises(RemoteError, match="cannot be read"):
        connect(Endpoint("127.0.0.1", 1, "root", tmp_path / "key"), folder, timeout=1)


def test_the_ssh_socket_folder_is_made_for_this_user_alone(tmp_path, monkeypatch) -> None:
    """The cycle's ssh sockets live in /tmp/podcycle-ssh-UID (short, for a socket's path):
    made 0700 under any umask, and closed again when it is ours but open to others."""
    from podcycle import remote

    monkeypatch.setattr(remote, "CONTROL_ROOT", tmp_path)
    old = os.umask(0)
    try:
        folder = remote.control_folder()
    finally:
        os.umask(old)
    assert folder == tmp_path / f"podcycle-ssh-{os.getuid()}"
    assert folder.stat().st_mode & 0o777 == 0o700
    endpoint = remote.Endpoint("127.0.0.1", 2222, "root", tmp_path / "key")
    theirs = remote.control_path(endpoint, "run-1")
    folder.chmod(0o777)
    ours = folder / "0123456789abcdef"
    ours.write_text("")
    theirs.write_text("")  # planted at a run's socket name while the folder was open
    if os.getuid() == 0:
        os.chown(theirs, 4242, 4242)
    assert remote.control_path(endpoint, "run-1").parent == folder
    assert folder.stat().st_mode & 0o777 == 0o700
    assert ours.exists() and theirs.exists() == (os.getuid() != 0)  # another user's: gone


@pytest.mark.parametrize("made_by", ["another user", "a link", "a file"])
def test_a_socket_folder_someone_else_made_is_refused_at_a_start(tmp_path, monkeypatch,
                                                                 made_by: str) -> None:
    """Another user who made /tmp/podcycle-ssh-UID first (open to all, or a link to their
    own folder) could swap the control socket for their own and read or feed the dataset's
    and the model's transfers. A start refuses it before its run folder, let alone a pod, is
    made; a stop on the way out does not fail on it."""
    from podcycle import remote
    from podcycle.config import resolve
    from podcycle.cycle import open_run

    monkeypatch.setattr(remote, "CONTROL_ROOT", tmp_path)
    folder = tmp_path / f"podcycle-ssh-{os.getuid()}"
    if made_by == "another user":
        if os.getuid() != 0:
            pytest.skip("giving a folder to another user needs root")
        folder.mkdir(mode=0o777)
        os.chown(folder, 4242, 4242)
        why = "owned by another user (uid 4242)"
    elif made_by == "a link":
        (tmp_path / "theirs").mkdir()
        folder.symlink_to(tmp_path / "theirs")
        why = "a link"
    else:
        folder.write_text("")
        why = "not a folder"
    artifacts = tmp_path / "artifacts"
    settings = resolve({"run_id": "r1"}, {}, environ={
        "POD_CYCLE_ARTIFACTS_DIR": str(artifacts), "RUNPOD_BACKEND": "local"},
        use_keyring=False)
    with pytest.raises(remote.RemoteError) as refused:
        open_run(settings, mode="start", announce=lambda _: None)
    assert str(refused.value).startswith(f"{folder}, where pod-cycle keeps its SSH "
                                         f"connections' sockets, is {why}")
    assert f"rm -r {folder}" in refused.value.remedy
    assert not artifacts.exists()
    remote.close_master(remote.Endpoint("127.0.0.1", 2222, "root", tmp_path / "key"), "r1")


def test_the_runs_known_hosts_is_this_users_alone_under_any_umask(tmp_path) -> None:
    """umask 000 left the run's known_hosts 0666: anyone on the machine could plant the
    host key the cycle then trusts."""
    from podcycle.remote import Endpoint, RemoteError, connect

    with socket.socket() as free:  # a port nothing listens on: the connect fails at once
        free.bind(("127.0.0.1", 0))
        port = free.getsockname()[1]
    known_hosts = tmp_path / "run" / "known_hosts"
    old = os.umask(0)
    try:
        with pytest.raises(RemoteError):
            connect(Endpoint("127.0.0.1", port, "root", tmp_path / "key"), known_hosts,
                    timeout=2)
    finally:
        os.umask(old)
    assert known_hosts.stat().st_mode & 0o777 == 0o600


def test_an_rsync_a_file_size_limit_stopped_names_the_limit(tmp_path) -> None:
    """A collect under `ulimit -f` said 'error in file IO' and to check SSH. The stderr
    here is a real rsync's, run under a real RLIMIT_FSIZE."""
    import resource

    from podcycle.remote import Endpoint, RemoteError, _raise_or_count

    (tmp_path / "model.pt").write_bytes(os.urandom(200_000))
    (tmp_path / "home").mkdir()
    limited = subprocess.run(
        ["rsync", "-a", str(tmp_path / "model.pt"), str(tmp_path / "home") + "/"],
        capture_output=True, text=True, preexec_fn=lambda: resource.setrlimit(
            resource.RLIMIT_FSIZE, (16 * 1024, resource.RLIM_INFINITY)))
    assert limited.returncode == 11, limited.stderr
    with pytest.raises(RemoteError) as failed:
        _raise_or_count(limited, 1.0, False, Endpoint("127.0.0.1", 22, "root", tmp_path / "k"),
                        tmp_path / "known_hosts", "pod:model.pt", "home/")
    assert "File too large" in failed.value.message
    assert failed.value.remedy.startswith("a file-size limit stopped the write (ulimit -f")
