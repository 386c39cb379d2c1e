"""Settings layering: one test per precedence rule, and the API key's own lookup order."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import keyring
import pytest
from keyring.backend import KeyringBackend

from podcycle.config import effective_backend, resolve
from podcycle.errors import ConfigError
from tasks import DEFAULTS
from tests.conftest import ROOT


class DictKeyring(KeyringBackend):
    """An in-memory keyring backend (a real backend class, no OS keyring here)."""

    priority = 1

    def __init__(self, items: dict[tuple[str, str], str]) -> None:
        super().__init__()
        self.items = items

    def get_password(self, service: str, username: str) -> str | None:
        return self.items.get((service, username))

    def set_password(self, service: str, username: str, password: str) -> None:
        self.items[(service, username)] = password

    def delete_password(self, service: str, username: str) -> None:
        self.items.pop((service, username), None)


@pytest.fixture
def dotenv(tmp_path: Path) -> Path:
    path = tmp_path / ".env"
    path.write_text("RUNPOD_TEMPLATE_NAME=from-dotenv\nRUNPOD_GPU_COUNT=3\n")
    return path


def test_defaults_come_from_the_collection(tmp_path: Path) -> None:
    s = resolve({}, DEFAULTS, environ={}, dotenv_path=tmp_path / "none")
    assert s.template_name == "chess-bot-training"
    # The collection's default is said to be one: "(from podcycle.ssh_key in invoke.yaml)"
    # named a file nobody had written, and a resumed cluster run took gpu_count 1 for a
    # setting given (only "default" keeps the run's recorded shape).
    assert s.source("template_name") == "default" and s.source("gpu_count") == "default"
    assert s.backend == "auto" and s.gpu_count == 1


def test_the_default_folders_are_the_projects_from_any_working_directory(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Invoke finds tasks/ from any folder below the project: `inv pod.leftovers --stop` run
    from data/ read data/artifacts/runpod_cycles, found no run folder there, and stopped the
    pods of live runs (and deleted a cluster holding an uncollected model)."""
    monkeypatch.chdir(tmp_path)
    s = resolve({}, DEFAULTS, environ={}, dotenv_path=tmp_path / "none")
    assert s.artifacts_dir == ROOT / "artifacts" / "runpod_cycles"
    assert s.local_dir == ROOT / ".pod-cycle" / "local"
    assert s.dataset_dir == ROOT / "data" / "dataset" / "_smoke_runpod"
    yaml = resolve({}, {**DEFAULTS, "artifacts_dir": "runs"}, environ={},
                   dotenv_path=tmp_path / "none")
    assert yaml.artifacts_dir == ROOT / "runs"  # invoke.yaml lies beside tasks/
    given = resolve({"artifacts_dir": "mine"}, DEFAULTS,
                    environ={"POD_CYCLE_LOCAL_DIR": "here"}, dotenv_path=tmp_path / "none")
    assert given.artifacts_dir == Path("mine") and given.local_dir == Path("here")


def test_the_projects_dotenv_is_read_from_a_folder_below_it(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`cd data && inv pod.leftovers --stop` read no .env (the working directory has none),
    so the project's POD_CYCLE_ARTIFACTS_DIR went unread: no run of its own was seen, and
    the pods of live runs were stopped. The working directory's .env still comes first; a
    relative path in a .env is from the .env's folder."""
    import podcycle.config as config

    project = tmp_path / "project"
    (project / "data").mkdir(parents=True)
    (project / ".env").write_text("POD_CYCLE_ARTIFACTS_DIR=runs\nRUNPOD_GPU_COUNT=2\n")
    monkeypatch.setattr(config, "PROJECT_ROOT", project)
    monkeypatch.chdir(project / "data")
    below = resolve({}, DEFAULTS, environ={}, use_keyring=False)
    assert below.artifacts_dir == project / "runs" and below.gpu_count == 2
    (project / "data" / ".env").write_text("RUNPOD_GPU_COUNT=3\n")
    own = resolve({}, DEFAULTS, environ={}, use_keyring=False)
    assert own.gpu_count == 3 and own.artifacts_dir == project / "artifacts/runpod_cycles"


@pytest.mark.parametrize(("environ", "config", "said"), [
    # Python's expanduser raised "Could not determine home directory." as a traceback.
    ({"POD_CYCLE_ARTIFACTS_DIR": "~nosuchuser9/runs"}, {},
     "POD_CYCLE_ARTIFACTS_DIR: '~nosuchuser9/runs' starts with ~nosuchuser9, and this "
     "machine has no user 'nosuchuser9'"),
    ({"RUNPOD_SSH_KEY": "~nosuchuser9/.ssh/id"}, {}, "RUNPOD_SSH_KEY: '~nosuchuser9/.ssh/id'"),
    # invoke.yaml: a list made the folder "['a', 'b']"; a NUL was a ValueError traceback at
    # the run's folder; `gpu_count: true` (true == 1) was said to come from the default.
    ({}, {"artifacts_dir": ["a", "b"]}, "setting artifacts_dir from podcycle.artifacts_dir in "
     "invoke.yaml is not a path (a text): ['a', 'b']"),
    ({}, {"artifacts_dir": 5}, "setting artifacts_dir from podcycle.artifacts_dir in invoke.yaml "
     "is not a path (a text): 5"),
    ({}, {"artifacts_dir": "/tmp/\0x"}, "podcycle.artifacts_dir in invoke.yaml holds a NUL"),
    ({}, {"gpu_count": True}, "podcycle.gpu_count in invoke.yaml must be an integer, got "
     "True"),
])
def test_paths_and_types_no_setting_can_hold_are_said_in_one_line(
        tmp_path: Path, environ: dict, config: dict, said: str) -> None:
    with pytest.raises(ConfigError) as refused:
        resolve({}, {**DEFAULTS, **config}, environ=environ, dotenv_path=tmp_path / "none",
                use_keyring=False)
    assert refused.value.message.startswith(said), refused.value.message
    assert "\n" not in refused.value.message and refused.value.remedy


def test_a_dotenv_line_that_is_no_setting_is_named_with_its_file_never_its_text(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """python-dotenv said "could not parse statement starting at line 1", naming no file."""
    dotenv = tmp_path / ".env"
    dotenv.write_text("rpa_PASTED KEY\nRUNPOD_GPU_COUNT=2\njunk junk\n")
    for _ in range(2):  # read again in the same process: said once
        s = resolve({}, DEFAULTS, environ={}, dotenv_path=dotenv, use_keyring=False)
    assert s.gpu_count == 2
    err = capsys.readouterr().err
    assert err == (f"warning: {dotenv}: line(s) 1, 3 are no KEY=value lines and were skipped "
                   "(.env.example shows the settings)\n")
    assert "PASTED" not in err and "python-dotenv" not in err


def test_invoke_yaml_beats_defaults(tmp_path: Path) -> None:
    config = {**DEFAULTS, "template_name": "from-yaml"}
    s = resolve({}, config, environ={}, dotenv_path=tmp_path / "none")
    assert s.template_name == "from-yaml"
    assert s.source("template_name") == "podcycle.template_name in invoke.yaml"


def test_dotenv_beats_invoke_yaml(dotenv: Path) -> None:
    s = resolve({}, {**DEFAULTS, "template_name": "from-yaml"}, environ={}, dotenv_path=dotenv)
    assert s.template_name == "from-dotenv"
    assert s.gpu_count == 3


def test_environment_beats_dotenv(dotenv: Path) -> None:
    s = resolve({}, DEFAULTS, environ={"RUNPOD_TEMPLATE_NAME": "from-env"}, dotenv_path=dotenv)
    assert s.template_name == "from-env"
    assert s.source("template_name") == "RUNPOD_TEMPLATE_NAME"


def test_flag_beats_environment(dotenv: Path) -> None:
    s = resolve({"template_name": "from-flag"}, DEFAULTS,
                environ={"RUNPOD_TEMPLATE_NAME": "from-env"}, dotenv_path=dotenv)
    assert s.template_name == "from-flag"
    assert s.source("template_name") == "--template-name"


def test_none_flag_falls_through(dotenv: Path) -> None:
    s = resolve({"template_name": None}, DEFAULTS, environ={}, dotenv_path=dotenv)
    assert s.template_name == "from-dotenv"


def test_bad_values_are_config_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="RUNPOD_GPU_COUNT"):
        resolve({}, DEFAULTS, environ={"RUNPOD_GPU_COUNT": "two"},
                dotenv_path=tmp_path / "none")
    with pytest.raises(ConfigError, match="backend"):
        resolve({"backend": "cloud"}, DEFAULTS, environ={}, dotenv_path=tmp_path / "none")


def test_api_key_order_flag_env_dotenv_keyring(tmp_path: Path) -> None:
    previous = keyring.get_keyring()
    keyring.set_keyring(DictKeyring({("runpod", "RUNPOD_API_KEY"): "key-from-keyring-123"}))
    try:
        dotenv = tmp_path / ".env"
        dotenv.write_text("RUNPOD_API_KEY=key-from-dotenv-123\n")
        env = {"RUNPOD_API_KEY": "key-from-env-12345"}
        s = resolve({"api_key": "key-from-flag-123"}, DEFAULTS, environ=env, dotenv_path=dotenv)
        assert (s.api_key, s.api_key_source) == ("key-from-flag-123", "--api-key")
        s = resolve({}, DEFAULTS, environ=env, dotenv_path=dotenv)
        assert (s.api_key, s.api_key_source) == ("key-from-env-12345", "RUNPOD_API_KEY")
        s = resolve({}, DEFAULTS, environ={}, dotenv_path=dotenv)
        assert s.api_key == "key-from-dotenv-123"
        s = resolve({}, DEFAULTS, environ={}, dotenv_path=tmp_path / "none")
        assert s.api_key == "key-from-keyring-123"
        assert s.api_key_source.startswith("keyring (service=runpod, username=RUNPOD_API_KEY)")
        assert effective_backend(s) == "runpod"
    finally:
        keyring.set_keyring(previous)


def test_a_key_with_a_line_break_or_quotes_around_it_is_taken_without_them(
        tmp_path: Path) -> None:
    """`echo KEY | secret-tool store ...` keeps the newline: the keyring gave it back and the
    key was refused as holding "a character no HTTP header can carry" (the same key from the
    environment was trimmed and worked). RUNPOD_API_KEY='"KEY"' was sent with its quotes, and
    RunPod's 401 sent the user to revoke a good key."""
    previous = keyring.get_keyring()
    keyring.set_keyring(DictKeyring({("runpod", "RUNPOD_API_KEY"): "key-from-keyring-123\n"}))
    try:
        s = resolve({}, DEFAULTS, environ={}, dotenv_path=tmp_path / "none")
        assert s.api_key == "key-from-keyring-123" and s.api_key_source.startswith("keyring")
    finally:
        keyring.set_keyring(previous)
    for given in ('"key-quoted-123"', "'key-quoted-123'\n", ' " key-quoted-123 " '):
        s = resolve({}, DEFAULTS, environ={"RUNPOD_API_KEY": given},
                    dotenv_path=tmp_path / "none", use_keyring=False)
        assert s.api_key == "key-quoted-123"
    with pytest.raises(ConfigError, match="no HTTP header can carry"):  # inside: not pasted
        resolve({}, DEFAULTS, environ={"RUNPOD_API_KEY": "key with-a-space"},
                dotenv_path=tmp_path / "none", use_keyring=False)


def test_the_local_backend_asked_for_by_name_leaves_the_keyring_alone(tmp_path: Path) -> None:
    asked: list[str] = []

    class Watched(DictKeyring):
        """Holds a key and notes each read (keyring_api_key would hide a raised error)."""

        def get_password(self, service: str, username: str) -> str | None:
            asked.append(service)
            return super().get_password(service, username)

    previous = keyring.get_keyring()
    keyring.set_keyring(Watched({("runpod", "RUNPOD_API_KEY"): "key-from-keyring-123"}))
    try:
        for named in ({"backend": "local"}, {}):
            environ = {} if named else {"RUNPOD_BACKEND": "local"}
            s = resolve(named, DEFAULTS, environ=environ, dotenv_path=tmp_path / "none")
            assert (s.api_key, s.api_key_source) == (None, "none")
        assert asked == []
        # A key given by the environment is still taken (and masked), local or not.
        s = resolve({"backend": "local"}, DEFAULTS, environ={"RUNPOD_API_KEY": "key-env-12345"},
                    dotenv_path=tmp_path / "none")
        assert (s.api_key, s.api_key_source) == ("key-env-12345", "RUNPOD_API_KEY")
        s = resolve({}, DEFAULTS, environ={}, dotenv_path=tmp_path / "none")  # auto reads it
        assert s.api_key == "key-from-keyring-123" and asked == ["runpod"]
    finally:
        keyring.set_keyring(previous)


def test_no_keyring_backend_is_simply_no_key(tmp_path: Path) -> None:
    from keyring.backends import fail

    previous = keyring.get_keyring()
    keyring.set_keyring(fail.Keyring())
    try:
        s = resolve({}, DEFAULTS, environ={}, dotenv_path=tmp_path / "none")
        assert s.api_key is None and s.api_key_source == "none"
        assert effective_backend(s) == "local"
    finally:
        keyring.set_keyring(previous)


def test_key_is_not_read_from_invoke_yaml(tmp_path: Path) -> None:
    s = resolve({}, {**DEFAULTS, "api_key": "in-yaml-123456"}, environ={},
                dotenv_path=tmp_path / "none", use_keyring=False)
    assert s.api_key is None


def test_env_example_lists_every_setting() -> None:
    """README: ".env.example lists every setting"; a new setting must be added there too."""
    from podcycle.config import SPECS

    listed = (ROOT / ".env.example").read_text()
    missing = [spec.env for spec in SPECS.values() if f"# {spec.env}=" not in listed]
    assert not missing, f"add to .env.example: {missing}"


def test_a_dotenv_that_is_not_utf8_is_named_without_its_text(tmp_path: Path) -> None:
    path = tmp_path / ".env"
    path.write_bytes(b"RUNPOD_API_KEY=rpa_SECRET_IN_DOTENV_\xff\xfe\n")
    with pytest.raises(ConfigError) as info:
        resolve({}, DEFAULTS, environ={}, dotenv_path=path, use_keyring=False)
    assert info.value.message == f"{path} is not UTF-8 text (a byte at offset 36 cannot be read)"
    assert "rpa_SECRET" not in info.value.render()


def test_an_empty_flag_is_refused_but_an_empty_variable_means_unset(tmp_path: Path) -> None:
    """`--run-id "$RUN"` with RUN unset must not quietly start a new run, nor `--api-key
    "$KEY"` quietly fall back to the local RunPod; `RUNPOD_CYCLE_RUN_ID=` is unset."""
    none = tmp_path / "none"
    for flags, flag in (({"run_id": ""}, "--run-id"), ({"template_name": " "}, "--template-name"),
                        ({"train_epochs": ""}, "--epochs"), ({"api_key": ""}, "--api-key")):
        with pytest.raises(ConfigError) as info:
            resolve(flags, DEFAULTS, environ={}, dotenv_path=none, use_keyring=False)
        assert info.value.message == f"{flag} is empty"
    s = resolve({}, DEFAULTS, environ={"RUNPOD_CYCLE_RUN_ID": "", "RUNPOD_API_KEY": ""},
                dotenv_path=none, use_keyring=False)
    assert s.run_id is None and s.api_key is None


def refused_api_url(tmp_path: Path, url: str) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        resolve({}, DEFAULTS, environ={"RUNPOD_API_BASE_URL": url},
                dotenv_path=tmp_path / "none", use_keyring=False)
    return info.value


# The last three: Python's urlsplit reads the host as 127.0.0.1 (loopback: plain http
# allowed) where urllib3 sends the request, key and all, to "vm" (found by a hostile test).
@pytest.mark.parametrize("url", ["http://[::1", "https://:80", "http://host:99999",
                                 "http://host:port", "ftp://host", "https://api .runpod.io",
                                 "api.runpod.io", "http://vm:18777\\@127.0.0.1",
                                 "http://vm@127.0.0.1:8080", "https://user:pw@api.runpod.io"])
def test_a_malformed_api_url_is_refused_as_such_not_as_a_network_failure(
        tmp_path: Path, url: str) -> None:
    assert refused_api_url(tmp_path, url).message == (
        f"RUNPOD_API_BASE_URL is not an http(s) URL (from RUNPOD_API_BASE_URL): {url!r}")


@pytest.mark.parametrize("url", ["http://api.runpod.io", "http://10.0.0.5:8080/v2",
                                 "http://[2001:db8::1]:9000", "http://localhost.evil.example",
                                 "HTTP://api.runpod.io"])
def test_plain_http_to_another_machine_is_refused_before_the_key_is_sent(
        tmp_path: Path, url: str) -> None:
    # Every request carries the key in its Authorization header: over plain http to another
    # machine anyone on the path reads it. Refused at configuration, before any request.
    refused = refused_api_url(tmp_path, url)
    assert refused.message == (
        "RUNPOD_API_BASE_URL is plain http to another machine (from RUNPOD_API_BASE_URL): "
        f"{url!r} would carry the API key across the network unencrypted")
    assert refused.remedy.startswith("use https://")


@pytest.mark.parametrize("name, value, said", [
    ("RUNPOD_SSH_HOST", "-oProxyCommand=touch pwned", "SSH host '-oProxyCommand=touch pwned' "
     "is not a host name or an IP address"),
    ("RUNPOD_SSH_HOST", "gw.example;id", "SSH host 'gw.example;id'"),
    ("RUNPOD_SSH_USER", "-oProxyCommand=id", "SSH user name '-oProxyCommand=id' is not a user "
     "name"),
    ("RUNPOD_SSH_USER", "me\x1b[2J", "SSH user name 'me\\x1b[2J'"),
])
def test_an_ssh_override_ssh_would_read_as_an_option_is_refused(
        tmp_path: Path, name: str, value: str, said: str) -> None:
    """RUNPOD_SSH_HOST / RUNPOD_SSH_USER go onto ssh's command line: one that starts with '-'
    is an option there ("-oProxyCommand=..." runs a command). Refused at configuration."""
    with pytest.raises(ConfigError) as info:
        resolve({}, DEFAULTS, environ={name: value}, dotenv_path=tmp_path / "none",
                use_keyring=False)
    assert info.value.message.startswith(f"{name} (from {name}): the {said}")
    assert "\x1b" not in info.value.message
    s = resolve({}, DEFAULTS, environ={"RUNPOD_SSH_HOST": "194.26.196.6",
                                       "RUNPOD_SSH_USER": "8y5rumuyb8p9v6-644110b0"},
                dotenv_path=tmp_path / "none", use_keyring=False)
    assert (s.ssh_host, s.ssh_user) == ("194.26.196.6", "8y5rumuyb8p9v6-644110b0")


@pytest.mark.parametrize("host, apart", [("127.0.0.1:2222", "RUNPOD_SSH_HOST=127.0.0.1 "
                                          "RUNPOD_SSH_PORT=2222"),
                                         ("gw.example:22", "RUNPOD_SSH_HOST=gw.example "
                                          "RUNPOD_SSH_PORT=22")])
def test_an_ssh_host_with_its_port_is_refused_naming_both_settings(
        tmp_path: Path, host: str, apart: str) -> None:
    """RUNPOD_SSH_HOST=127.0.0.1:2222 passed as an IPv6 address: the pod was made, then
    Fabric's "port via both shorthand and kwarg" traceback, the pod billing on."""
    with pytest.raises(ConfigError) as info:
        resolve({}, DEFAULTS, environ={"RUNPOD_SSH_HOST": host}, dotenv_path=tmp_path / "n",
                use_keyring=False)
    assert info.value.message == (f"RUNPOD_SSH_HOST (from RUNPOD_SSH_HOST): the SSH host "
                                  f"'{host}' holds a port: the host and the port are given "
                                  "apart")
    assert info.value.remedy == f"set {apart}"
    for address in ("::1", "fe80::1", "::ffff:194.26.196.6", "2001:db8::22"):
        s = resolve({}, DEFAULTS, environ={"RUNPOD_SSH_HOST": address},
                    dotenv_path=tmp_path / "n", use_keyring=False)
        assert s.ssh_host == address


def test_good_api_urls_pass(tmp_path: Path) -> None:
    for url in ("https://api.runpod.io", "http://127.0.0.1:8080", "https://api.runpod.io/v2",
                "http://[::1]:9000/", "http://localhost:8080", "http://127.0.0.2:80",
                "HTTPS://api.runpod.io"):
        s = resolve({}, DEFAULTS, environ={"RUNPOD_API_BASE_URL": url},
                    dotenv_path=tmp_path / "none", use_keyring=False)
        assert s.api_base_url == url


@pytest.mark.parametrize("name, problem", [
    ("", "is empty"), ("  ", "is empty"), ("a\nb", "holds a control character"),
    ("tab\there", "holds a control character"), (" data", "begins or ends with a space"),
    # A C1 control and a right-to-left override (shown as `a...exe` in RunPod's console).
    ("a\x9b2Jb", "holds a control character"), ("a\u202egnp.exe", "holds a control character"),
    ("x" * 129, "is 129 characters long, over 128"),
    # Characters that show as nothing: `a\u200bb` looked like `ab`, and was not `ab`.
    ("a\u200bb", "one that shows as nothing"), ("\ufeffdata", "one that shows as nothing"),
    ("a\u2060b", "one that shows as nothing"),
    # $'\xff' on a command line: Python keeps the byte as a lone surrogate, which no request
    # can encode (volume.create ended in a UnicodeEncodeError traceback).
    ("data\udcff", "holds bytes that are not UTF-8 text")])
def test_a_name_a_table_or_a_lookup_would_trip_on_is_refused(name: str, problem: str) -> None:
    from podcycle.config import check_name

    with pytest.raises(ConfigError) as info:
        check_name("--name", name)
    assert problem in info.value.message and info.value.message.startswith("--name")


def test_good_names_pass_and_a_pod_name_setting_is_checked(tmp_path: Path) -> None:
    from podcycle.config import check_name

    for name in ("chess-data", "My PyTorch Template", "x" * 128, "données_1",
                 "מודל\u200f-1", "مدل\u061c1"):  # a right-to-left or Arabic letter mark
        assert check_name("--name", name) == name
    with pytest.raises(ConfigError) as info:
        resolve({}, DEFAULTS, environ={"RUNPOD_POD_NAME": "a\nb"},
                dotenv_path=tmp_path / "none", use_keyring=False)
    assert info.value.message.startswith("RUNPOD_POD_NAME 'a\\nb' holds a control character")


def test_a_local_runpod_too_busy_to_answer_is_waited_for_never_replaced(tmp_path: Path) -> None:
    """On a machine loaded to the hilt the local RunPod missed the 2 s status check: `up`
    deleted its server.json and started a second server, which found the folder held and
    exited, and from then on every command said "the local RunPod server exited at start"
    until inv local.down. A server that holds its folder is waited for, then named."""
    import socket
    import subprocess
    import sys

    from podcycle.errors import PodCycleError
    from podcycle.local import control

    holder = subprocess.Popen(  # holds the folder's server lock as a live server does
        [sys.executable, "-c", "import fcntl, os, sys; fd = os.open(sys.argv[1], os.O_RDWR | "
         "os.O_CREAT); fcntl.flock(fd, fcntl.LOCK_EX); os.pwrite(fd, str(os.getpid())"
         ".encode(), 0); print('held', flush=True); sys.stdin.read()",
         str(tmp_path / "server.lock")], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
        text=True)
    try:
        assert holder.stdout.readline() == "held\n"
        with socket.socket() as probe:  # a port nothing answers on: the busy server
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        info = {"pid": holder.pid, "url": f"http://127.0.0.1:{port}", "api_key": "local-k",
                "admin_token": "local-admin", "state_dir": str(tmp_path)}
        (tmp_path / "server.json").write_text(json.dumps(info))
        with pytest.raises(PodCycleError) as busy:
            control.up(tmp_path, timeout=1)
        assert busy.value.message.startswith(f"the local RunPod (pid {holder.pid}) runs but "
                                             "does not answer within 1s")
        assert "inv local.down" in busy.value.remedy
        assert json.loads((tmp_path / "server.json").read_text()) == info
        assert not (tmp_path / "server.log").exists()  # no second server was started
    finally:
        holder.stdin.close()
        holder.wait(timeout=30)
    # A server.json whose pid now belongs to another process (a reboot, pids reused) holds
    # no lock: it is stale, and a new server starts, as before.
    stale = subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.read()"],
                             stdin=subprocess.PIPE)
    try:
        (tmp_path / "server.json").write_text(json.dumps({**info, "pid": stale.pid}))
        started, fresh = control.up(tmp_path, timeout=30)
        assert fresh and started["pid"] != stale.pid
    finally:
        control.down(tmp_path)
        assert stale.poll() is None  # local.down never touched the unrelated process
        (tmp_path / "server.json").write_text(json.dumps({**info, "pid": stale.pid}))
        control.down(tmp_path)  # a stale record alone: nothing of it is killed
        assert stale.poll() is None
        stale.stdin.close()
        stale.wait(timeout=30)


def test_the_cuda_floor_is_the_images_and_is_checked_before_anything() -> None:
    """Pods were created on any host: one whose driver offers a CUDA below the image's left
    torch without its GPU while the pod billed. The floor is the image's CUDA (the
    Dockerfile's base), a major.minor, or any."""
    import re

    from podcycle.config import IMAGE_CUDA

    base = next(line for line in (ROOT / "deploy" / "runpod_cloud_training" / "Dockerfile")
                .read_text().splitlines() if line.startswith("FROM "))
    assert re.search(r"-cuda([0-9]+\.[0-9]+)", base).group(1) == IMAGE_CUDA
    assert resolve({}, {}, environ={}, use_keyring=False).min_cuda_version == IMAGE_CUDA
    for good in ("13.0", "12.10", "any"):
        settings = resolve({}, {}, environ={"RUNPOD_MIN_CUDA_VERSION": good}, use_keyring=False)
        assert settings.min_cuda_version == good
    for bad in ("12", "12.8.1", "v12.8", "latest", "12.8 "):
        with pytest.raises(ConfigError) as refused:
            resolve({}, {}, environ={"RUNPOD_MIN_CUDA_VERSION": bad}, use_keyring=False)
        assert str(refused.value).startswith("RUNPOD_MIN_CUDA_VERSION (from "
                                             "RUNPOD_MIN_CUDA_VERSION) is not a CUDA version")
        assert "set it to e.g. 12.8" in refused.value.remedy
    # invoke.yaml: an unquoted 12.10 is the number 12.1 by the time it is read, refused
    # rather than taken as a lower floor than the one written; quoted, it is the text.
    with pytest.raises(ConfigError, match=r"is not a text \(quote it: YAML reads an unquoted "
                                          r"12\.10 as the number 12\.1\): 12\.1\n"):
        resolve({}, {"min_cuda_version": 12.1}, environ={}, use_keyring=False)
    assert resolve({}, {"min_cuda_version": "12.10"}, environ={},
                   use_keyring=False).min_cuda_version == "12.10"


LEAK_KEY = "rpa_PASTEDKEY0123456789ABCDEFGHIJKL"


@pytest.mark.parametrize(("name", "value"), [
    ("RUNPOD_CLOUD", LEAK_KEY), ("IMAGE_REPO", LEAK_KEY.lower()),
    ("POD_CYCLE_ARTIFACTS_DIR", f"/tmp/{LEAK_KEY}"), ("RUNPOD_CYCLE_RUN_ID", LEAK_KEY)])
def test_the_key_pasted_into_another_setting_is_refused_unshown(name, value) -> None:
    """RUNPOD_CLOUD=KEY was echoed lowercased ("unknown cloud 'rpa_...'", past the mask),
    IMAGE_REPO=KEY too, a folder named after the key was printed and written to, and a run
    id was sent to RunPod as the pod's name."""
    with pytest.raises(ConfigError) as refused:
        resolve({}, {}, environ={"RUNPOD_API_KEY": LEAK_KEY, name: value}, use_keyring=False)
    text = refused.value.render()
    assert text.startswith(f"{name} holds the RunPod API key")
    assert LEAK_KEY[4:14].lower() not in text.lower()


def test_a_task_argument_holding_a_configured_secret_is_refused_unshown() -> None:
    """`inv cycle.start -r KEY` named a pod on the account after the key and wrote it into a
    run folder's name and state; `pod.cost KEY` printed it back; `gpu.search -c KEY` echoed
    it lowercased. Every task argument is checked before the task runs (but --api-key's,
    --env's and a password's, which carry one on purpose)."""
    from podcycle.cli import secret_argument
    from podcycle.redact import register_secret

    register_secret(LEAK_KEY)
    for name, value in (("run_id", LEAK_KEY), ("pod_id", f"x{LEAK_KEY}"),
                        ("cloud", LEAK_KEY.lower()), ("dataset_dir", [f"/d/{LEAK_KEY}"])):
        said = secret_argument({name: value, "api_key": LEAK_KEY})
        assert said and said.startswith(f"error: the value of --{name.replace('_', '-')} is, "
                                        "or holds, a secret"), said
        assert LEAK_KEY[4:14].lower() not in said.lower()
    assert secret_argument({"api_key": LEAK_KEY, "env": [f"HF_TOKEN={LEAK_KEY}"],
                            "run_id": "my-run", "epochs": 3}) is None


def test_debug_lines_mask_a_pasted_key_and_a_mistyped_key_flag() -> None:
    """`inv --debug pod.status KEY` (the key set in the environment) printed it in Invoke's
    own lines; so did `--api_key KEY`, a typo Invoke refuses only after its debug lines."""
    from podcycle.redact import debugging, redact, register_command_line

    assert debugging(["inv", "--debug", "pod.list"]) and debugging(["inv", "-d", "x"])
    assert debugging(["inv", "-f", "dd.yaml", "-d", "x"])
    assert not debugging(["inv", "cycle.full-smoke", "-d", "data/set"])
    assert not debugging(["inv", "-f", "d", "x"])
    typo = "rpa_TYPOEDFLAG0123456789ABCDEFGHIJ"
    register_command_line(["inv", "pod.list", "--api_key", typo])
    other = "rpa_OTHERTYPO0123456789ABCDEFGHIJK"
    register_command_line(["inv", "pod.list", f"--apikey={other}"])
    assert redact(f"argv {typo} {other}") == "argv **** ****"


def test_a_table_masks_a_secret_before_it_cuts_a_long_cell(capsys) -> None:
    """A name of 211 characters with the key inside, cut at 180 before the mask: all of the
    key but its last letter was shown."""
    from podcycle.cli import table
    from podcycle.redact import register_secret

    register_secret(LEAK_KEY)
    table([("x" * 148 + LEAK_KEY + "y" * 30,)], ["NAME"])
    assert LEAK_KEY[4:20] not in capsys.readouterr().out


def test_the_local_runpod_daemon_keeps_no_secret_of_this_machine(tmp_path, monkeypatch
                                                                ) -> None:
    """The local RunPod's server was started with this shell's whole environment: a
    long-lived daemon held RUNPOD_API_KEY (and HF_TOKEN) in its /proc/PID/environ."""
    from podcycle.local import control

    monkeypatch.setenv("RUNPOD_API_KEY", LEAK_KEY)
    monkeypatch.setenv("HF_TOKEN", "hf_NOTFORTHEDAEMON0123456789")
    info, _ = control.up(tmp_path / "local")
    try:
        environ = Path(f"/proc/{info['pid']}/environ").read_bytes()
        assert LEAK_KEY.encode() not in environ and b"hf_NOTFORTHEDAEMON" not in environ
        assert b"PYTHONPATH=" in environ  # the rest of it is kept
    finally:
        control.down(tmp_path / "local")


def test_the_key_echoed_in_another_case_hex_or_escaped_is_masked() -> None:
    """A server that echoed the key lowercased ("unknown key rpa_leakcheck..."), in hex, or
    with every byte %-escaped had it printed: only the exact key (and base64) was masked."""
    from podcycle.redact import redact, register_secret

    register_secret(LEAK_KEY)
    raw = LEAK_KEY.encode()
    for echoed in (LEAK_KEY.lower(), LEAK_KEY.upper(), raw.hex(), raw.hex().upper(),
                   "".join(f"%{byte:02X}" for byte in raw)):
        assert redact(f"unknown key {echoed}!") == "unknown key ****!", echoed


def test_a_secret_with_bytes_that_are_not_utf8_is_masked_and_fails_nothing(monkeypatch
                                                                          ) -> None:
    """Hunt: a Latin-1 password exported in the shell (DB_PASSWORD=$'caf\\xe9...', which
    Python reads with a surrogate) made every task fail with a traceback in the mask, pod.stop
    included: a billing pod could not be stopped from that shell."""
    from podcycle import config
    from podcycle.redact import redact

    latin1 = "caf\udce9secret123"
    monkeypatch.setenv("DB_PASSWORD", latin1)
    monkeypatch.setattr(config, "_written_registered", None)
    config.register_written_secrets()
    assert redact(f"x {latin1} y") == "x **** y"


def test_texts_from_the_api_are_masked_before_they_are_cut() -> None:
    """Hunt: a pod id, an SSH host and a template name from the API were cut to 80
    characters, then masked: a key at the cut no longer matched its mask, and all of it but
    its last characters was shown (`... this account has: XXX...rpa_FAKEKEY1234567890ABCD`).
    A key too short for the fragment mask shows that the order is what masks it."""
    from podcycle.redact import register_secret
    from podcycle.runpod.errors import ApiError
    from podcycle.runpod.models import _usable_id, ssh_target_problem

    short = "rpa_CUTKEY0123456789"  # 20 characters
    register_secret(short)
    padded = "X" * 70 + short
    with pytest.raises(ApiError) as refused:
        _usable_id(padded, "pod")
    assert short[:10] not in refused.value.message, refused.value.message
    said = ssh_target_problem(padded, "root", 22)
    assert said and short[:10] not in said, said
    from podcycle.errors import PodCycleError
    from podcycle.provision import resolve_template

    class Account:  # the RunPod API's template listing (a stand-in: no cloud here)
        def list_templates(self) -> list[dict[str, str]]:
            return [{"id": "t1", "name": padded}]

    with pytest.raises(PodCycleError) as unnamed:
        resolve_template(Account(), "nosuch", None)
    assert "this account has: " in unnamed.value.message
    assert short[:10] not in unnamed.value.message, unnamed.value.message


def test_a_short_secret_is_masked_as_a_word_and_never_inside_ordinary_output(monkeypatch
                                                                            ) -> None:
    """Hunt: JUPYTER_PASSWORD=secure (or nvidia, exited) was masked in every case and inside
    any word: the cloud column and `"cloud"` in --json and provision.json read `****`, every
    GPU id `**** RTX A2000` (unusable as --gpu-type-id), a STATUS `****` where it said
    EXITED. A secret under 12 characters is masked as typed, as a word, and encoded."""
    from podcycle import redact as masks
    from podcycle.redact import redact, register_secret

    # This worker's later tests print "secure cloud": the masks are given back after.
    monkeypatch.setattr(masks, "_short", dict(masks._short))
    monkeypatch.setattr(masks, "_secrets", set(masks._secrets))
    for short in ("secure", "nvidia", "exited"):
        register_secret(short)
    assert redact("NVIDIA RTX A2000 | SECURE | EXITED | insecure | nvidia-smi") == \
        "NVIDIA RTX A2000 | SECURE | EXITED | insecure | ****-smi"
    assert redact("JUPYTER_PASSWORD=secure, echoed 736563757265") == \
        "JUPYTER_PASSWORD=****, echoed ****"


def test_the_key_echoed_cut_short_is_masked() -> None:
    """A server (or a proxy) that echoed the key cut short ("invalid key rpa_LEAKCHECK01234
    567...") had all it echoed printed: only the whole key's forms were masked. Sixteen
    characters or more of it, from anywhere in it, with its prefix or without, are masked
    now; text that merely shares a few characters with it is left alone."""
    from podcycle.redact import redact, register_secret

    register_secret(LEAK_KEY)
    for cut in (LEAK_KEY[:16], LEAK_KEY[:-1], LEAK_KEY[4:20], LEAK_KEY[-16:],
                LEAK_KEY[7:7 + 20]):
        assert redact(f"invalid key {cut}...") == "invalid key ****...", cut
    assert redact(f"a {LEAK_KEY[:12]}+{LEAK_KEY[12:28]} b") == f"a {LEAK_KEY[:12]}+**** b"
    for harmless in (LEAK_KEY[:15], "pod lp1a2b3c4d5e6f", "0123456789" * 5):
        assert redact(f"x {harmless} y") == f"x {harmless} y"
    # Second read: a secret-looking variable holding a path (HF_TOKEN_PATH) masked pieces of
    # every path beside it, the tool's own cache folder among them. Only tokens are cut up.
    path = "/home/alice/.cache/huggingface/token"
    register_secret(path)
    assert redact(f"cache in /home/alice/.cache/pod-cycle/x, key at {path}") == \
        "cache in /home/alice/.cache/pod-cycle/x, key at ****"


def test_the_key_echoed_with_characters_that_show_as_nothing_is_masked() -> None:
    """A server that echoed the key with a zero-width space, joiner or soft hyphen inside
    it had it printed: the exact forms did not match, and printable() then showed the key
    with a `\\u200b` in it. Masked whole, those characters with it; the text around and
    other invisible characters are kept (and shown escaped)."""
    from podcycle.config import masked
    from podcycle.redact import holds_secret, printable, redact, register_secret

    register_secret(LEAK_KEY)
    for mark in ("\u200b", "\u200d", "\u00ad", "\u2060", "\ufeff", "\u202e",
                 # and what printable() shows as an escape between the key's halves
                 "\x00", "\x1b", "\x7f", "\n", "\u2028", "\u2029", "\ufe0f",
                 "\U000e0041", "\u17b4", "\u3164"):
        split = LEAK_KEY[:6] + mark + LEAK_KEY[6:12] + mark + LEAK_KEY[12:]
        assert redact(f"unknown key \u200b{split}!") == "unknown key \u200b****!", repr(mark)
        shown = printable(masked(f"key={split.lower()} and {LEAK_KEY}"))
        assert shown == "key=**** and ****", shown
        assert holds_secret(f"run-{split}")
    assert redact("a\u200bb") == "a\u200bb"  # nothing secret: left as it is


def test_a_folder_setting_that_names_a_file_is_refused_naming_its_source(tmp_path: Path,
                                                                          monkeypatch) -> None:
    """POD_CYCLE_ARTIFACTS_DIR=/etc/passwd: runs.list said "no runs under /etc/passwd" and
    exited 0; POD_CYCLE_SWEEPS_DIR at a file failed on a bare "Not a directory", and
    sweep.status told the user to remove a healthy sweep's state. Refused up front, naming
    the setting and how to take it back."""
    from podcycle import sweep
    from podcycle.config import resolve

    afile = tmp_path / "notes.txt"
    afile.write_text("x")
    for flags, config, environ, said in (
            ({}, {}, {"POD_CYCLE_ARTIFACTS_DIR": str(afile)},
             f"{afile} (from POD_CYCLE_ARTIFACTS_DIR) is not a folder (a file?)\n  → point it "
             "at a folder, or unset POD_CYCLE_ARTIFACTS_DIR"),
            ({}, {"local_dir": str(afile)}, {},
             f"{afile} (from podcycle.local_dir in invoke.yaml) is not a folder (a file?)\n"
             "  → point it at a folder, or remove podcycle.local_dir from invoke.yaml"),
            ({"artifacts_dir": str(tmp_path / "gone")}, {}, {}, None)):
        if said is None:  # a broken link
            (tmp_path / "gone").symlink_to(tmp_path / "nowhere")
            said = f"{tmp_path / 'gone'} (from --artifacts-dir) is a broken link"
        with pytest.raises(ConfigError) as refused:
            resolve(flags, config, environ=environ, use_keyring=False)
        assert refused.value.render().startswith(said), refused.value.render()
        assert refused.value.exit_code == 2
    # A path under a file (second read): "no runs under <file>/runs" all the same.
    with pytest.raises(ConfigError) as refused:
        resolve({}, {}, environ={"POD_CYCLE_ARTIFACTS_DIR": str(afile / "runs")},
                use_keyring=False)
    assert refused.value.message == (f"{afile / 'runs'} (from POD_CYCLE_ARTIFACTS_DIR): "
                                     f"{afile} is not a folder (a file?)")
    # A loop of links is named where the path is resolved, as before (cli.guarded).
    (tmp_path / "loop").symlink_to(tmp_path / "loop")
    resolve({"artifacts_dir": str(tmp_path / "loop")}, {}, environ={}, use_keyring=False)
    good = resolve({"artifacts_dir": str(tmp_path / "art")}, {}, environ={}, use_keyring=False)
    assert not (tmp_path / "art").exists()  # a folder yet to be made is fine
    (tmp_path / "sweeps").write_text("x")  # the default: beside the runs folder
    with pytest.raises(ConfigError) as refused:
        sweep.sweeps_root(good)
    assert refused.value.message == (f"{tmp_path / 'sweeps'} (the default of "
                                     "POD_CYCLE_SWEEPS_DIR) is not a folder (a file?)")
    with pytest.raises(ConfigError) as refused:  # a setting, refused as the settings resolve
        resolve({"artifacts_dir": str(tmp_path / "art")}, {},
                environ={"POD_CYCLE_SWEEPS_DIR": str(afile)}, use_keyring=False)
    assert refused.value.message == f"{afile} (from POD_CYCLE_SWEEPS_DIR) is not a folder " \
        "(a file?)"
    assert refused.value.remedy == "point it at a folder, or unset POD_CYCLE_SWEEPS_DIR"
    # Only from the settings: a POD_CYCLE_SWEEPS_DIR in this process's environment (a user's
    # own, exported) was read past them, and made this test fail in check.regression.
    monkeypatch.setenv("POD_CYCLE_SWEEPS_DIR", str(tmp_path / "elsewhere"))
    with pytest.raises(ConfigError) as refused:
        sweep.sweeps_root(good)
    assert "(the default of POD_CYCLE_SWEEPS_DIR)" in refused.value.message
    # And from a .env, as every setting is (it went unseen there), relative to its folder.
    dotenv = tmp_path / "proj" / ".env"
    dotenv.parent.mkdir()
    dotenv.write_text("POD_CYCLE_SWEEPS_DIR=my-sweeps\n")
    from_env_file = resolve({"artifacts_dir": str(tmp_path / "art")}, {}, environ={},
                            dotenv_path=dotenv, use_keyring=False)
    assert sweep.sweeps_root(from_env_file) == tmp_path / "proj" / "my-sweeps"
    assert from_env_file.source("sweeps_dir") == "POD_CYCLE_SWEEPS_DIR in .env"
    # invoke.yaml's, relative, is the project's, as its runs folder is.
    from podcycle.config import PROJECT_ROOT

    from_yaml = resolve({"artifacts_dir": str(tmp_path / "art")}, {"sweeps_dir": "my-sweeps"},
                        environ={}, use_keyring=False)
    assert sweep.sweeps_root(from_yaml) == PROJECT_ROOT / "my-sweeps"


def test_a_message_is_one_write_with_its_newline(monkeypatch) -> None:
    """A SIGTERM as cycle.start said "created pod ...": print() wrote the line and its
    newline apart, the signal's handler ran between the two, and the interruption's own line
    was glued to the open one ("... $0.24/hinterrupted: start ended early"). A message is
    written whole, with its newline, in one write."""
    from podcycle.config import say

    writes: list[str] = []

    class Stream:
        def write(self, text: str) -> int:
            writes.append(text)
            return len(text)

        def flush(self) -> None:
            pass

    monkeypatch.setattr(sys, "stderr", Stream())
    say("created pod lp1 (pod-cycle-r1): 1x GPU, secure cloud, $0.24/h")
    assert writes == ["created pod lp1 (pod-cycle-r1): 1x GPU, secure cloud, $0.24/h\n"]
