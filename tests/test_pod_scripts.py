"""The pod scripts for real: entrypoint.sh supervising a crashing inference API, key install,
repo bootstrap messages; shellcheck and hadolint; image.build --dry-run."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from podcycle.local import procs
from podcycle.local.pods import LocalPod, free_port, sshd_answers
from tests.conftest import ROOT, eventually, run_inv

TRAINING_DIR = ROOT / "deploy" / "runpod_cloud_training"
SHELL_SCRIPTS = sorted(TRAINING_DIR.glob("*.sh")) + [ROOT / ".ci" / "run"]


def entrypoint_env(tmp_path: Path, marker: str, **extra: str) -> dict[str, str]:
    (tmp_path / "repo").mkdir(exist_ok=True)
    env = {
        "PATH": os.environ["PATH"], "HOME": str(tmp_path),
        procs.MARKER: marker,
        "RUNPOD_TRAINING_DIR": str(TRAINING_DIR),
        "REPO_DIR": str(tmp_path / "repo"),
        "REPO_SEED_DIR": str(tmp_path / "no-seed"),
        "VENV_DIR": sys.prefix,
        "CLONE_REPO_ON_START": "0",
        "SYNC_REQUIREMENTS_ON_START": "0",
        "START_SSHD": "0", "START_JUPYTER": "0", "START_INFERENCE_API": "1",
        "START_HF_WATCH": "0", "START_IDLE_WATCHDOG": "0",
        "INFERENCE_API_HOST": "127.0.0.1", "INFERENCE_API_PORT": str(free_port()),
        "POD_LOG_DIR": str(tmp_path / "logs"),
        "RUNPOD_PHASE_TIMING_LOG": str(tmp_path / "timings.jsonl"),
        "RUNPOD_POD_ID": "pod-test",
        "SUPERVISE_MAX_BACKOFF": "1",
    }
    env.update(extra)
    return env


def start(tmp_path: Path, env: dict[str, str]) -> tuple[subprocess.Popen, Path]:
    log = tmp_path / "entrypoint.log"
    # Appending, as a local pod's log (and a container runtime's) is: the services also write
    # to it through /proc/<pid>/fd (CONTAINER_LOG), and the shell's own offset would overwrite
    # their lines.
    log.unlink(missing_ok=True)  # a fresh log for each start
    handle = open(log, "ab")
    proc = subprocess.Popen(["bash", str(TRAINING_DIR / "entrypoint.sh")], env=env,
                            stdout=handle, stderr=subprocess.STDOUT, start_new_session=True)
    handle.close()
    return proc, log


def wait_for(predicate, timeout: float = 20.0) -> bool:
    try:
        return bool(eventually(predicate, timeout=timeout))
    except AssertionError:
        return False


def stop(proc: subprocess.Popen, marker: str) -> int:
    os.kill(proc.pid, signal.SIGTERM)
    code = proc.wait(timeout=15)
    assert wait_for(lambda: not procs.marked_processes_for(marker), 10)
    return code


@pytest.mark.slow
def test_a_crashing_inference_api_never_takes_the_pod_down(tmp_path: Path) -> None:
    # The seed's incident: REPO_DIR without the code, so the API dies with ModuleNotFoundError.
    marker = "entrypoint-crash"
    # The image's Python does not have the project installed; this checkout's venv does
    # (pip install -e .), so the pod's Python here runs without site-packages.
    python = tmp_path / "venv" / "bin" / "python"
    python.parent.mkdir(parents=True)
    python.write_text(f"#!/bin/sh\nexec {sys.executable} -S \"$@\"\n")
    python.chmod(0o755)
    proc, log = start(tmp_path, entrypoint_env(tmp_path, marker, START_HF_WATCH="1",
                                               VENV_DIR=str(tmp_path / "venv")))
    try:
        assert wait_for(lambda: log.read_text().count(
            "service inference_api: exited with code 1") >= 3, 30), log.read_text()
        assert proc.poll() is None, "the entrypoint must keep running"
        api_log = (tmp_path / "logs" / "inference_api.log").read_text()
        assert "No module named 'chessbot'" in api_log
        assert "restarting in" in log.read_text()
        assert "hf watch: HF_REPO is not set; skipping" in log.read_text()
    finally:
        assert stop(proc, marker) == 0
    events = [json.loads(line) for line in (tmp_path / "timings.jsonl").read_text().splitlines()]
    phases = [(e["phase"], e["event"]) for e in events]
    assert phases[0] == ("pod_lifetime", "start") and phases[-1] == ("pod_lifetime", "end")
    assert ("repo_bootstrap", "end") in phases and ("services_start", "end") in phases
    assert all(isinstance(e["ts_ms"], int) and e["pod_id"] == "pod-test" for e in events)
    assert all("elapsed_s" in e for e in events if e["event"] == "end")


@pytest.mark.slow
def test_a_crashed_services_last_words_reach_the_container_log_without_a_secret(
        tmp_path: Path) -> None:
    """The supervisor copies a crashed service's last output line into the container log (what
    `inv pod.logs` shows): a service that died quoting the pod's key (a header error, a
    traceback's locals) put it there. The pod's secrets' values are masked in that line."""
    marker = f"entrypoint-leak-{tmp_path.name}"
    python = tmp_path / "venv" / "bin" / "python"  # the inference API's stand-in: says, dies
    python.parent.mkdir(parents=True)
    python.write_text('#!/bin/sh\necho "ValueError: bad header Bearer $RUNPOD_API_KEY, '
                      'hf $HF_TOKEN"\nexit 1\n')
    python.chmod(0o755)
    proc, log = start(tmp_path, entrypoint_env(
        tmp_path, marker, VENV_DIR=str(tmp_path / "venv"), RUNPOD_API_KEY="rpa_leak_5555",
        HF_TOKEN="hf_leak_6666"))
    try:
        assert wait_for(lambda: "service inference_api: exited with code 1" in log.read_text(),
                        30), log.read_text()
        said = log.read_text()
        assert "its last output: ValueError: bad header Bearer ***, hf ***" in said, said
        assert "rpa_leak_5555" not in said and "hf_leak_6666" not in said
    finally:
        assert stop(proc, marker) == 0


@pytest.mark.slow
@pytest.mark.parametrize("password", ["pw-from-runpod-42", ""])
def test_jupyter_takes_runpods_jupyter_password_through_its_environment(
        tmp_path: Path, password: str) -> None:
    """RunPod gives a pod created with startJupyter a JUPYTER_PASSWORD: that is the password
    `inv pod.jupyter` names, so Jupyter gets it (as JUPYTER_TOKEN, never on a command line).
    Before, Jupyter made a token of its own, and the password named was no password."""
    marker = f"entrypoint-jupyter-{tmp_path.name}"  # a run's leftovers never fail the next
    seen = tmp_path / "jupyter-seen"
    python = tmp_path / "venv" / "bin" / "python"  # stands in for the image's Jupyter
    python.parent.mkdir(parents=True)
    python.write_text(f'#!/bin/sh\nprintf "%s|%s\\n" "${{JUPYTER_TOKEN-unset}}" "$*" > {seen}\n'
                      "exec sleep 60\n")
    python.chmod(0o755)
    extra = {"JUPYTER_PASSWORD": password} if password else {}
    proc, log = start(tmp_path, entrypoint_env(
        tmp_path, marker, START_JUPYTER="1", START_INFERENCE_API="0",
        VENV_DIR=str(tmp_path / "venv"), **extra))
    try:
        assert wait_for(seen.exists), log.read_text()
        token, args = eventually(lambda: seen.read_text().strip() or None).split("|")
        assert args.startswith("-m jupyter lab")
        if password:
            assert token == password and password not in args
            assert "no JUPYTER_PASSWORD" not in log.read_text()
        else:
            assert token == "unset"  # never an empty token: that would turn auth off
            assert "jupyter: no JUPYTER_PASSWORD set; its token is in" in log.read_text()
    finally:
        assert stop(proc, marker) == 0


@pytest.mark.slow
def test_a_stop_forces_a_service_that_ignores_sigterm_within_its_bound(tmp_path: Path) -> None:
    """docker stop gives a container 10 s, then SIGKILL: the entrypoint forces what is left
    after 10 s by the clock. It counted 100 sleeps of 0.1 s instead, which a loaded machine
    stretches (a stop outlived a test's 15 s wait under load once); here each sleep takes
    2 s, as on a starved machine, so that count would take 200 s."""
    marker = f"entrypoint-stubborn-{tmp_path.name}"
    seen = tmp_path / "stubborn-started"
    slow = tmp_path / "slow-bin" / "sleep"
    slow.parent.mkdir()
    slow.write_text("#!/bin/sh\nexec /bin/sleep 2\n")
    slow.chmod(0o755)
    python = tmp_path / "venv" / "bin" / "python"  # stands in for Jupyter: ignores SIGTERM
    python.parent.mkdir(parents=True)
    python.write_text(f"#!/bin/sh\ntrap '' TERM\ntouch {seen}\nexec /bin/sleep 300\n")
    python.chmod(0o755)
    proc, log = start(tmp_path, entrypoint_env(
        tmp_path, marker, START_JUPYTER="1", START_INFERENCE_API="0",
        VENV_DIR=str(tmp_path / "venv"), PATH=f"{slow.parent}:{os.environ['PATH']}"))
    try:
        assert wait_for(seen.exists), log.read_text()
        os.kill(proc.pid, signal.SIGTERM)
        assert proc.wait(timeout=60) == 0, log.read_text()
        assert "stopping: ending services" in log.read_text()
        assert wait_for(lambda: not procs.marked_processes_for(marker), 10)
    finally:
        for pid in procs.marked_processes_for(marker):
            os.kill(pid, signal.SIGKILL)


@pytest.mark.slow
def test_keys_are_installed_one_a_line_and_sshd_starts(tmp_path: Path) -> None:
    marker = "entrypoint-keys"
    root_keys = tmp_path / "root" / ".ssh" / "authorized_keys"
    runner_keys = tmp_path / "home" / "runner" / ".ssh" / "authorized_keys"
    port = free_port()
    env = entrypoint_env(
        tmp_path, marker, START_SSHD="1", START_INFERENCE_API="0",
        AUTHORIZED_KEYS="ssh-ed25519 AAAAone a@x\\nssh-ed25519 AAAAtwo b@x",
        PUBLIC_KEY="ssh-ed25519 AAAAthree c@x\r\nssh-ed25519 AAAAone a@x",
        SSHD_BIN=str(Path("/usr/sbin/sshd")), SSHD_PORT=str(port),
        SSHD_LISTEN_ADDRESS="127.0.0.1", SSH_HOST_KEY_DIR=str(tmp_path / "etc"),
        SSHD_CONFIG_FILE=str(tmp_path / "etc" / "sshd_config"),
        SSHD_PID_FILE=str(tmp_path / "sshd.pid"), SSHD_STRICT_MODES="no",
        SSHD_AUTHORIZED_KEYS_FILE=str(root_keys), SSH_CREATE_RUNNER_USER="0",
        SSH_AUTHORIZED_KEYS_FILES=f"{root_keys} {runner_keys}", OMP_NUM_THREADS="3")
    proc, log = start(tmp_path, env)
    try:
        assert wait_for(lambda: sshd_answers(port), 20), log.read_text()
        for path in (root_keys, runner_keys):
            assert path.read_text().splitlines() == [
                "ssh-ed25519 AAAAone a@x", "ssh-ed25519 AAAAtwo b@x",
                "ssh-ed25519 AAAAthree c@x"]
            assert oct(path.stat().st_mode & 0o777) == "0o600"
        config = (tmp_path / "etc" / "sshd_config").read_text()
        # Each SetEnv value quoted whole: a local pod's paths may hold spaces.
        assert "PasswordAuthentication no" in config
        assert f'"REPO_DIR={tmp_path / "repo"}"' in config
        # The container's thread limit reaches SSH sessions (a training is started over SSH).
        assert ' "OMP_NUM_THREADS=3"' in config and "MKL_NUM_THREADS" not in config
    finally:
        assert stop(proc, marker) == 0


@pytest.mark.slow
@pytest.mark.parametrize(("existing", "url", "expected"), [
    ("not a checkout", None, "is NOT a git checkout; not cloning over it"),
    (None, None, "clone FAILED"),
    # A private repo's clone URL: its token is never logged (git hides it in its own lines).
    (None, "https://x-access-token:tok_SECRET_42@127.0.0.1:9/me/repo.git",
     "repo: cloning https://127.0.0.1:9/me/repo.git (main)"),
])
def test_bad_repo_dir_and_failed_clone_are_logged_clearly(tmp_path: Path, existing: str | None,
                                                          url: str | None,
                                                          expected: str) -> None:
    marker = "entrypoint-repo"
    (tmp_path / "repo").mkdir()
    if existing:
        (tmp_path / "repo" / "notes.txt").write_text(existing)
    env = entrypoint_env(tmp_path, marker, CLONE_REPO_ON_START="1",
                         REPO_URL=url or str(tmp_path / "no-such-remote"),
                         START_INFERENCE_API="0")
    proc, log = start(tmp_path, env)
    try:
        assert wait_for(lambda: "services started" in log.read_text())
        assert expected in log.read_text()
        assert "tok_SECRET_42" not in log.read_text()
        assert proc.poll() is None
    finally:
        assert stop(proc, marker) == 0


@pytest.mark.slow
def test_a_private_repos_token_is_kept_out_of_the_checkout(tmp_path: Path) -> None:
    """git clone keeps the URL it is given, user:token@ and all, in .git/config: a file every
    user of the pod reads, on /workspace, the volume that outlives the pod. The checkout's
    origin now holds the URL without it, and an update (GIT_AUTO_PULL) gets the token for its
    own commands only. The repo is served over git's dumb HTTP on 127.0.0.1 (the server
    ignores the credentials, as a public mirror would)."""
    import functools
    import threading
    from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer

    def git(*args: str, cwd: Path) -> None:
        subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", *args], cwd=cwd,
                       check=True, capture_output=True, timeout=60)

    served, work = tmp_path / "served", tmp_path / "work"
    served.mkdir()
    work.mkdir()
    git("init", "-q", "--bare", "-b", "main", "chess-bot.git", cwd=served)
    git("init", "-q", "-b", "main", cwd=work)
    (work / "first.txt").write_text("1")
    git("add", "first.txt", cwd=work)
    git("commit", "-q", "-m", "first", cwd=work)
    git("push", "-q", str(served / "chess-bot.git"), "main", cwd=work)
    git("update-server-info", cwd=served / "chess-bot.git")

    class Quiet(SimpleHTTPRequestHandler):
        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Quiet, directory=served))
    threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True).start()
    token = "tok_SECRET_77"
    url = f"http://puller:{token}@127.0.0.1:{server.server_address[1]}/chess-bot.git"
    clone = tmp_path / "clone"
    marker = f"entrypoint-token-{tmp_path.name}"
    try:
        for round_ in ("clone", "update"):
            env = entrypoint_env(tmp_path, marker, CLONE_REPO_ON_START="1", REPO_URL=url,
                                 REPO_DIR=str(clone), GIT_AUTO_PULL="1",
                                 START_INFERENCE_API="0")
            proc, log = start(tmp_path, env)
            try:
                assert wait_for(lambda log=log: "services started" in log.read_text(), 60)
            finally:
                assert stop(proc, marker) == 0
            config = (clone / ".git" / "config").read_text()
            assert token not in config and "url = http://127.0.0.1:" in config, config
            assert token not in log.read_text()
            if round_ == "clone":
                assert (clone / "first.txt").read_text() == "1"
                (work / "second.txt").write_text("2")  # a new commit, for the update
                git("add", "second.txt", cwd=work)
                git("commit", "-q", "-m", "second", cwd=work)
                git("push", "-q", str(served / "chess-bot.git"), "main", cwd=work)
                git("update-server-info", cwd=served / "chess-bot.git")
        assert (clone / "second.txt").read_text() == "2", log.read_text()  # fetched with it
    finally:
        server.shutdown()
        server.server_close()


def test_shellcheck_passes_on_every_shell_script() -> None:
    shellcheck = Path(sys.executable).parent / "shellcheck"
    result = subprocess.run([str(shellcheck), "-x", *map(str, SHELL_SCRIPTS)], cwd=ROOT,
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    assert len(SHELL_SCRIPTS) >= 5


def test_hadolint_passes_on_the_dockerfile() -> None:
    hadolint = Path(sys.executable).parent / "hadolint"
    result = subprocess.run([str(hadolint), str(TRAINING_DIR / "Dockerfile")],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_build_context_holds_what_the_dockerfile_copies_and_no_secret() -> None:
    """The build context is the repository root: .dockerignore lets through what the
    Dockerfile's COPY lines name and nothing else (a .env holds the API key, .pod-cycle/ the
    local RunPod's), however the builder is reached."""
    rules = [line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines()
             if line.strip() and not line.startswith("#")]
    assert rules[0] == "*"
    allowed = {rule[1:].rstrip("/") for rule in rules if rule.startswith("!")}
    copied = {source.split("/")[0]
              for line in (TRAINING_DIR / "Dockerfile").read_text().splitlines()
              if line.startswith(("COPY ", "ADD "))
              for source in line.split()[1:-1] if not source.startswith("--")}
    assert copied and copied <= allowed, (copied, allowed)
    assert not allowed & {".env", "artifacts", ".pod-cycle", ".venv", ".git", "data"}
    # Hunt: a .env inside a copied folder (`inv` run from scripts/ reads scripts/.env) went
    # into the image, key and all. Matched as Docker does: the last rule that matches a path
    # or one of its parent folders decides.
    for path, sent in [("scripts/.env", False), ("deploy/runpod_cloud_training/.env", False),
                       ("chessbot/.env.local", False), (".env", False),
                       ("scripts/cycle_train.sh", True), ("chessbot/train.py", True),
                       ("deploy/runpod_cloud_training/Dockerfile", True),
                       ("artifacts/run/state.json", False)]:
        assert in_build_context(rules, path) == sent, path


def in_build_context(rules: list[str], path: str) -> bool:
    """Whether .dockerignore's `rules` send `path` to the builder (moby's patternmatcher:
    `**` any folders, `*` within one name, a rule matching a parent folder matches)."""
    import re

    def regex(pattern: str) -> re.Pattern:
        out, i = "", 0
        while i < len(pattern):
            if pattern.startswith("**/", i):
                out, i = out + "(?:.*/)?", i + 3
            elif pattern.startswith("**", i):
                out, i = out + ".*", i + 2
            else:
                out += {"*": "[^/]*", "?": "[^/]"}.get(pattern[i], re.escape(pattern[i]))
                i += 1
        return re.compile(out)

    parts = path.split("/")
    prefixes = ["/".join(parts[:n]) for n in range(1, len(parts) + 1)]
    sent = True
    for rule in rules:
        negated = rule.startswith("!")
        pattern = regex(rule.lstrip("!").rstrip("/"))
        if any(pattern.fullmatch(prefix) for prefix in prefixes):
            sent = negated
    return sent


def test_a_local_pod_never_gets_a_env_file_of_the_project(tmp_path: Path) -> None:
    """The local RunPod lays out each pod's "image" by copying scripts/, deploy/ and chessbot/:
    a .env in one of them (the API key) was copied into every pod, as into the image."""
    from podcycle.local.pods import LocalPod

    project = tmp_path / "project"
    for name in ("deploy/runpod_cloud_training/entrypoint.sh", "scripts/cycle_train.sh",
                 "chessbot/train.py"):
        (project / name).parent.mkdir(parents=True, exist_ok=True)
        (project / name).write_text("x\n")
    for folder in ("deploy/runpod_cloud_training", "scripts", "chessbot"):
        (project / folder / ".env").write_text("RUNPOD_API_KEY=rpa_NOTINTHEPOD\n")
        (project / folder / ".env.local").write_text("RUNPOD_API_KEY=rpa_NOTINTHEPOD\n")
    pod = LocalPod(tmp_path / "pod", "p1", project_root=project)
    pod.materialize()
    laid_out = {str(p.relative_to(pod.root)) for p in pod.root.rglob("*") if p.is_file()}
    assert {"opt/runpod_cloud_training/entrypoint.sh",
            "workspace/chess-bot/scripts/cycle_train.sh"} <= laid_out
    assert not [name for name in laid_out if ".env" in name], laid_out


def test_dockerfile_meets_the_seed_requirements() -> None:
    text = (TRAINING_DIR / "Dockerfile").read_text()
    for needle in ("openssh-server", "rsync", "rclone", "jupyterlab", "useradd -m",
                   "usermod -p '*' runner", "PasswordAuthentication no", "HEALTHCHECK",
                   "requirements-pod.txt"):
        assert needle in text, needle
    base = next(line for line in text.splitlines() if line.startswith("FROM "))
    assert ":" in base and not base.endswith(":latest")


# Commands the pod's scripts run that the base image lacks, with the Debian package that
# brings each: fuser (psmisc) is the train stop's last resort for a process that escaped the
# trainer's group but holds its lock; without it that stop waited out its 15 s and failed.
POD_COMMANDS = {"fuser": "psmisc", "pkill": "procps", "rsync": "rsync", "curl": "curl",
                "sshd": "openssh-server", "git": "git"}


def test_the_image_installs_every_command_the_pod_scripts_run() -> None:
    dockerfile = (TRAINING_DIR / "Dockerfile").read_text()
    install = dockerfile[dockerfile.index("apt-get install"):]
    install = install[:install.index("&&")].split()
    scripts = "\n".join(path.read_text() for path in sorted(TRAINING_DIR.glob("*.sh")))
    for command, package in POD_COMMANDS.items():
        if re.search(rf"(^|[\s;(&|]){command}\b", scripts, re.MULTILINE):
            assert package in install, f"{command} is run by a pod script, {package} missing"
    assert re.search(r"(^|\s)fuser\b", scripts, re.MULTILINE)  # the check above covers it


@pytest.mark.slow
def test_image_build_dry_run_tags_and_lowercases() -> None:
    sha = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, text=True,
                         capture_output=True, check=True).stdout.strip()
    result = run_inv("image.build", "--dry-run",
                     env={"IMAGE_REPO": "GHCR.io/SomeUser/Chess-Bot-RunPod"})
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == (
        f"docker build -t ghcr.io/someuser/chess-bot-runpod:{sha} "
        "-t ghcr.io/someuser/chess-bot-runpod:latest "
        "-f deploy/runpod_cloud_training/Dockerfile .")
    assert "lowercased" in result.stderr
    pushed = run_inv("image.build", "--dry-run", env={"IMAGE_REPO": "x/y", "PUSH_IMAGE": "1"})
    assert pushed.stdout.startswith("docker buildx build --push -t x/y:")
    flag = run_inv("image.build", "--dry-run", "--push", "--repo", "x/y")
    assert flag.stdout.startswith("docker buildx build --push")


@pytest.mark.slow
def test_invoke_dry_prints_the_docker_command_and_runs_nothing(tmp_path: Path) -> None:
    # A stand-in `docker` (no Docker engine can exist here) that records any call.
    calls = tmp_path / "docker-calls"
    fake = tmp_path / "bin" / "docker"
    fake.parent.mkdir()
    fake.write_text(f"#!/bin/sh\necho \"$@\" >> {calls}\n")
    fake.chmod(0o755)
    env = {"IMAGE_REPO": "ghcr.io/me/chess-bot", "PATH": f"{fake.parent}:{os.environ['PATH']}"}
    result = run_inv("--dry", "image.build", env=env)
    assert result.returncode == 0, result.stderr
    assert "docker build -t ghcr.io/me/chess-bot:" in result.stdout
    assert "-f deploy/runpod_cloud_training/Dockerfile ." in result.stdout
    assert not calls.exists(), "inv --dry ran docker: " + calls.read_text()
    # Without --dry the same stand-in is called with that command.
    built = run_inv("image.build", env=env)
    assert built.returncode == 0, built.stderr
    assert calls.read_text().splitlines()[-1].startswith("build -t ghcr.io/me/chess-bot:")


@pytest.mark.slow
def test_image_build_errors_are_one_line() -> None:
    missing = run_inv("image.build", "--dry-run")
    assert missing.returncode != 0 and "IMAGE_REPO is not set" in missing.stderr
    # This machine has no Docker engine (CI neither): the real failure path, no mock.
    no_engine = run_inv("image.build", env={"IMAGE_REPO": "x/y", "PATH": os.environ["PATH"]})
    assert no_engine.returncode != 0
    assert ("docker is not installed" in no_engine.stderr
            or "no Docker engine answers" in no_engine.stderr)
    assert "Traceback" not in no_engine.stderr


def test_regression_check_reports_docker_smoke_without_an_engine() -> None:
    from podcycle.config import resolve
    from podcycle.regression import Check, docker_smoke, render

    # No Docker engine here (nor in CI): the real failure path, no mock.
    check = docker_smoke(resolve({}, {}, environ={}, use_keyring=False))
    assert check.status == "fail" and "docker" in check.detail.lower()
    text = render([check, Check("api.doctor", "pass", "exit 0", 1.0),
                   Check("live RunPod probes", "skip", "no key")])
    assert text.splitlines()[-1] == "1 failed, 1 passed, 1 skipped"


def _preset_env(tmp_path: Path, dataset: Path, **extra: str) -> dict[str, str]:
    env = {"PATH": os.environ["PATH"], "HOME": str(tmp_path),
           "RUNPOD_TRAINING_DIR": str(TRAINING_DIR), "REPO_DIR": str(ROOT),
           "VENV_DIR": sys.prefix, "DATASET_DIR": str(dataset),
           "OUTPUT_DIR": str(tmp_path / "out"), "METRICS_PATH": str(tmp_path / "m.json"),
           "RUNPOD_PHASE_TIMING_LOG": str(tmp_path / "t.jsonl"), "EPOCHS": "1",
           "MODEL_BLOCKS": "2", "MODEL_CHANNELS": "16", "TRAIN_DEVICE": "cpu"}
    env.update(extra)
    return env


@pytest.mark.slow
def test_train_preset_runs_ddp_under_torchrun_when_several_devices(tmp_path: Path,
                                                                    short_tmp: Path) -> None:
    from tests.test_dataset_and_encoding import SMOKE

    dataset = tmp_path / "ds"
    dataset.mkdir()
    for name, lines in (("train.jsonl", 1200), ("val.jsonl", 200)):
        head = (SMOKE / name).read_text().splitlines()[:lines]
        (dataset / name).write_text("\n".join(head) + "\n")
    # NPROC=2 on CPU: the same torchrun/DDP path a multi-GPU pod takes (gloo instead of nccl).
    result = subprocess.run(["bash", str(TRAINING_DIR / "train_baseline_preset.sh")],
                            env=_preset_env(tmp_path, dataset, NPROC="2",
                                            TMPDIR=str(short_tmp)), capture_output=True,
                            text=True, timeout=240)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    metrics = json.loads((tmp_path / "m.json").read_text())
    assert metrics["world_size"] == 2 and (tmp_path / "out" / "model.pt").is_file()
    events = [json.loads(line) for line in (tmp_path / "t.jsonl").read_text().splitlines()]
    assert ("train", "end", "ok") in [(e["phase"], e["event"], e.get("status")) for e in events]


@pytest.mark.slow
def test_a_pod_whose_gpus_torch_cannot_use_fails_instead_of_training_on_the_cpu(
        tmp_path: Path, tiny_dataset: Path) -> None:
    """nvidia-smi lists a GPU, torch finds none (a driver older than the image's CUDA; here a
    CPU build of torch and an nvidia-smi that stands in for the pod's, since this machine has
    no GPU): the preset left the device to torch, which trained on the CPU and exited 0 while
    the GPU billed. It now asks for cuda, and the trainer refuses before encoding anything."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    smi = bin_dir / "nvidia-smi"
    smi.write_text("#!/bin/sh\necho 'GPU 0: NVIDIA H100 80GB HBM3 (UUID: GPU-0)'\n")
    smi.chmod(0o755)
    env = _preset_env(tmp_path, tiny_dataset, PATH=f"{bin_dir}:{os.environ['PATH']}",
                      OMP_NUM_THREADS="1")
    del env["TRAIN_DEVICE"]  # auto, the preset's default
    result = subprocess.run(["bash", str(TRAINING_DIR / "train_baseline_preset.sh")], env=env,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 2, result.stdout[-2000:] + result.stderr[-2000:]
    assert "error: --device cuda, but torch " in result.stderr
    assert "finds no usable GPU" in result.stderr and "or --device cpu" in result.stderr
    assert "training FAILED with exit code 2" in result.stderr
    assert not (tmp_path / "out" / "model.pt").exists()


def test_train_extra_args_reach_the_trainer_as_typed_never_globbed(tmp_path: Path,
                                                                    tiny_dataset: Path) -> None:
    """The preset split TRAIN_EXTRA_ARGS unquoted, so bash also expanded `*` against the
    pod's files: checked fine on the host, `--cache-dir /x/*.toml` reached the trainer as
    several words (unrecognized arguments) after the pod was paid for."""
    stub = tmp_path / "venv" / "bin" / "python"
    stub.parent.mkdir(parents=True)
    said = tmp_path / "argv"
    stub.write_text(f'#!/bin/sh\nprintf "%s\\n" "$@" > {said}\n')
    stub.chmod(0o755)
    globbed = tmp_path / "g"
    globbed.mkdir()
    for name in ("a.toml", "b.toml"):
        (globbed / name).touch()
    pattern = f"{globbed}/*.toml"
    result = subprocess.run(["bash", str(TRAINING_DIR / "train_baseline_preset.sh")],
                            env=_preset_env(tmp_path, tiny_dataset,
                                            VENV_DIR=str(stub.parent.parent),
                                            TRAIN_EXTRA_ARGS=f"--cache-dir {pattern}  --seed 7"),
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    argv = said.read_text().splitlines()
    assert argv[-4:] == ["--cache-dir", pattern, "--seed", "7"], argv


def test_train_preset_without_a_dataset_says_so(tmp_path: Path) -> None:
    result = subprocess.run(["bash", str(TRAINING_DIR / "train_baseline_preset.sh")],
                            env=_preset_env(tmp_path, tmp_path / "missing"),
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 3
    assert "missing or empty (push a dataset first)" in result.stderr


def test_idle_watchdog_on_a_cluster_node_never_asks_for_a_stop(tmp_path: Path) -> None:
    """A cluster member's stop is a 409 and a cluster is deleted, not stopped: the watchdog
    says so and stays idle. The API here is a closed port: any request would be an error
    line, and the watchdog must make none."""
    env = {"PATH": os.environ["PATH"], "RUNPOD_POD_ID": "member-1",
           "RUNPOD_API_KEY": "rpa_local_test", "NUM_NODES": "2", "IDLE_MINUTES": "0.001",
           "IDLE_CHECK_SECONDS": "0.01", "RUNPOD_API_BASE_URL": f"http://127.0.0.1:{free_port()}"}
    proc = subprocess.Popen([sys.executable, str(TRAINING_DIR / "idle_watchdog.py")], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        first = proc.stdout.readline()
    finally:
        proc.kill()
        rest = proc.communicate(timeout=30)[0]
    assert "cannot stop its pod (clusters are deleted, not stopped)" in first, first + rest
    assert "stop" not in rest, rest  # no request, no later line


def test_a_guard_line_reaches_the_container_log_while_the_entrypoint_silences_fd_2(
        tmp_path: Path) -> None:
    """The spend guard writes its decisive line to the container log (CONTAINER_LOG). For each
    `cmd 2>/dev/null` the entrypoint's shell runs (phase_event, kill -0 ...), its fd 2 is
    /dev/null: a line written then through /proc/<pid>/fd/2 was lost, and a pod its guard
    stopped at boot showed no reason (a flaky test found it). Here the shell silences fd 2
    for the whole write."""
    script = (f'. "{TRAINING_DIR}/lib.sh"; open_container_log; '
              f'{{ "{sys.executable}" -c "import spend_guard; spend_guard.log(\'the reason\')"; }}'
              ' 2>/dev/null')
    env = {"PATH": os.environ["PATH"], "RUNPOD_TRAINING_DIR": str(TRAINING_DIR),
           "POD_LOG_DIR": str(tmp_path / "logs"), "PYTHONPATH": str(TRAINING_DIR),
           "RUNPOD_PHASE_TIMING_ENABLED": "0"}
    result = subprocess.run(["bash", "-c", script], env=env, capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 0, result.stderr
    assert "[spend_guard] the reason" in result.stderr, (result.stdout, result.stderr)


class StopRecorder:
    """RunPod's POST /v2/pods/{id}/action on 127.0.0.1, refusing the first `refuse` stops
    with 401 as a key that may not stop pods is answered, then taking them: each request's
    path and Authorization header recorded. A stand-in for the RunPod cloud, which cannot be
    reached from here (the local RunPod's own server is what the end-to-end guard tests use)."""

    def __init__(self, refuse: int) -> None:
        import threading
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        self.seen: list[tuple[str, str]] = []
        recorder = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802
                self.rfile.read(int(self.headers.get("Content-Length") or 0))
                recorder.seen.append((self.path, self.headers.get("Authorization", "")))
                self.send_response(401 if len(recorder.seen) <= refuse else 200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.mark.slow
def test_the_spend_guard_starts_before_the_clone_and_says_its_stop_was_refused(
        tmp_path: Path) -> None:
    """A git server that never answers (git has no timeout of its own): the guard started only
    after the clone, so it never started, and the pod billed on. A stop RunPod refused was
    said only in the guard's own log: `inv pod.logs` showed "stopping pod" and nothing after.
    And a key pasted with its newline crashed the guard in a loop, the supervisor copying the
    key into the container log with the crash."""
    import socket

    stalled = socket.socket()
    stalled.bind(("127.0.0.1", 0))
    stalled.listen(8)  # connections are taken by the kernel and never answered
    api = StopRecorder(refuse=2)
    marker = f"entrypoint-guard-{tmp_path.name}"
    env = entrypoint_env(
        tmp_path, marker, CLONE_REPO_ON_START="1", REPO_DIR=str(tmp_path / "clone"),
        REPO_URL=f"http://127.0.0.1:{stalled.getsockname()[1]}/chess-bot.git",
        START_INFERENCE_API="0", SPEND_GUARD_MINUTES="0.005",
        SPEND_GUARD_CHECK_SECONDS="0.2", RUNPOD_API_BASE_URL=api.url,
        RUNPOD_API_KEY="rpa_guard_key_4321\n")
    proc, log = start(tmp_path, env)
    try:
        assert wait_for(lambda: "stop requested" in log.read_text(), 60), log.read_text()
        said = log.read_text()
        assert "repo: cloning" in said and "services started" not in said  # still cloning
        assert "[spend_guard] the stop request answered 401 (1 attempt(s)): pod pod-test " \
               "bills on until RunPod takes it" in said
        assert "[spend_guard] stop requested (taken after 2 refusal(s))" in said
        assert api.seen == [("/v2/pods/pod-test/action", "Bearer rpa_guard_key_4321")] * 3
        assert "rpa_guard_key_4321" not in said
        assert "spend_guard: exited with code 1" not in said  # no crash (0: its stop done)
    finally:
        stalled.close()  # the clone fails now, and the entrypoint goes on to its services
        try:
            assert wait_for(lambda: "services started" in log.read_text(), 60)
            assert stop(proc, marker) == 0
        finally:
            api.close()


def test_a_stop_that_cannot_be_sent_is_an_answer_without_the_key() -> None:
    """A key no HTTP header can carry (a newline inside, a pasted smart quote) raised from the
    request, and the exception's text held the key: the guard crashed and the supervisor
    logged it. Now every failure is a reason, the key never in it."""
    sys.path.insert(0, str(TRAINING_DIR))
    try:
        from idle_watchdog import stop_refusal
    finally:
        sys.path.remove(str(TRAINING_DIR))
    closed = f"http://127.0.0.1:{free_port()}"
    for key in ("rpa_in\nside_9876", "rpa_smart\u201cquote_9876"):
        why = stop_refusal(closed, "pod-x", key)
        assert why and why.startswith("failed (") and "9876" not in why
    assert stop_refusal("not a url", "pod-x", "rpa_9876") == "failed (ValueError)"
    assert stop_refusal(closed, "pod-x", "rpa_fine") == "failed (URLError)"


def test_phase_events_are_json_lines_written_by_builtins_alone(tmp_path: Path) -> None:
    """phase_event runs inside the entrypoint's signal-handling loops and at every step of a
    pod's life: builtins only (it ran dirname, mkdir and four subshells an event, some 1,400
    events per `make test`). With no PATH at all, so no external command, it still writes
    its lines, each one JSON, with the phase, status and pod id escaped and the elapsed time
    of an ended phase."""
    log = tmp_path / "timings" / "phases.jsonl"
    log.parent.mkdir()  # made by the first event that finds it missing (mkdir: one fork)
    script = (f'. "{TRAINING_DIR}/lib.sh"; PATH=; '
              r"""phase_event 'a "quoted" \ phase' start; """
              r"""phase_event 'a "quoted" \ phase' end $'two\nlines\t'; phase_event other end""")
    env = {"PATH": os.environ["PATH"], "RUNPOD_PHASE_TIMING_LOG": str(log),
           "RUNPOD_POD_ID": 'pod "7"'}
    result = subprocess.run(["bash", "-c", script], env=env, capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 0, result.stderr
    events = [json.loads(line) for line in log.read_text().splitlines()]
    assert [(e["phase"], e["event"], e.get("status")) for e in events] == [
        ('a "quoted" \\ phase', "start", None), ('a "quoted" \\ phase', "end", "two\nlines\t"),
        ("other", "end", "ok")]
    assert {e["pod_id"] for e in events} == {'pod "7"'}
    assert "elapsed_s" in events[1] and "elapsed_s" not in events[0] | events[2]


@pytest.mark.slow
def test_a_finished_training_is_kept_only_for_the_same_settings(tmp_path: Path,
                                                                 tiny_dataset: Path) -> None:
    """cycle_train.sh with REUSE_FINISHED=1 (the host never saw the training end) keeps a
    finished training of the same dataset and settings, and trains again for other settings
    (a new run that found an old pod by its name must not take its model)."""
    env = {"PATH": os.environ["PATH"], "HOME": str(tmp_path), "REPO_DIR": str(ROOT),
           "RUNPOD_TRAINING_DIR": str(TRAINING_DIR), "VENV_DIR": sys.prefix,
           "RUNPOD_PHASE_TIMING_ENABLED": "0", "RUN_OUT": str(tmp_path / "run"),
           "DATASET_DIR": str(tiny_dataset), "DATASET_SHA256": "same-data",
           "REUSE_FINISHED": "1", "EPOCHS": "1", "BATCH_SIZE": "256", "MODEL_BLOCKS": "1",
           "MODEL_CHANNELS": "4", "TRAIN_DEVICE": "cpu", "NPROC": "0",
           "TRAIN_EXTRA_ARGS": f"--cache-dir {tmp_path / 'cache'}"}

    def train(**changed: str) -> str:
        result = subprocess.run(["bash", str(TRAINING_DIR / "cycle_train.sh")],
                                env={**env, **changed}, capture_output=True, text=True,
                                timeout=600)
        assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
        return result.stdout + result.stderr

    assert "started the trainer" in train()

    def keeps(**changed: str) -> tuple[int, str]:
        # What a cluster's primary answers before a train that may keep (no DATASET_DIR).
        asked = subprocess.run(["bash", str(TRAINING_DIR / "cycle_train.sh")],
                               env={**{k: v for k, v in env.items() if k != "DATASET_DIR"},
                                    "TRAIN_ACTION": "status", "KEEPS": "1", **changed},
                               capture_output=True, text=True, timeout=60)
        return asked.returncode, asked.stdout.strip()

    assert keeps() == (0, "finished")
    assert keeps(EPOCHS="2")[0] == 3  # other settings: it trains again
    assert "already finished on this pod" in train()  # the same training: kept
    # A cluster's other node holds no model.pt (the primary writes it): it keeps its part of
    # the training too, instead of starting a trainer that waits for the primary in vain.
    model = tmp_path / "run" / "run_artifacts" / "model.pt"
    kept_model = model.read_bytes()
    model.unlink()
    assert keeps()[0] == 3  # a primary without its model trains again
    other_node = train(CYCLE_NODE_RANK="1")
    assert "already finished on this pod" in other_node
    assert "started the trainer" not in other_node
    assert "node rank 1: its trainer finished" in other_node
    model.write_bytes(kept_model)
    again = train(EPOCHS="2")  # other settings: trained again
    assert "started the trainer" in again and "already finished" not in again
    # ... from the checkpoint on this pod's disk (REUSE_FINISHED: a training the host may
    # have lost goes on, as after a stopped pod was started again), not from epoch 1
    assert "resumed from" in again and "[train] epoch 1/2" not in again
    assert "[train] epoch 2/2" in again
    # Asked to train anew (after a train step done): the earlier checkpoint goes first, so
    # that a retry of this training, should it end before its first save (here: at once),
    # never resumes from another training's.
    checkpoint = tmp_path / "run" / "run_artifacts" / "checkpoint_last.pt"
    assert checkpoint.is_file()
    stub = tmp_path / "stub-venv" / "bin" / "python"
    stub.parent.mkdir(parents=True)
    stub.write_text("#!/bin/sh\nexit 137\n")
    stub.chmod(0o755)

    def stub_train(**changed: str) -> subprocess.CompletedProcess:
        return subprocess.run(["bash", str(TRAINING_DIR / "cycle_train.sh")],
                              env={**env, "REUSE_FINISHED": "0", "EPOCHS": "3",
                                   "VENV_DIR": str(stub.parent.parent), **changed},
                              capture_output=True, text=True, timeout=120)

    # ... unless the training asks to resume (more epochs on a done run): it is kept.
    extra = f"{env['TRAIN_EXTRA_ARGS']} --resume auto"
    assert stub_train(TRAIN_EXTRA_ARGS=extra).returncode == 137
    assert checkpoint.is_file()
    died = stub_train()
    assert died.returncode == 137, died.stdout + died.stderr
    assert not checkpoint.exists()


@pytest.mark.slow
@pytest.mark.parametrize("stub", ["exit 1", "kill -KILL 0"], ids=["failed", "killed"])
def test_a_trainer_that_ends_on_a_full_disk_is_named_as_such(tmp_path: Path,
                                                              tiny_dataset: Path,
                                                              stub: str) -> None:
    """A full disk left the trainer unable to write even its exit code: cycle_train.sh said
    87 and the host "killed: out of memory, or the pod restarted?". Now a failed or vanished
    trainer on a full disk is exit 89, said with the free space. A disk cannot be filled
    here: DISK_FULL_BELOW_KB is set above what df reports for this one (the real df runs)."""
    run = tmp_path / "run"
    stub_python = tmp_path / "stub-venv" / "bin" / "python"
    stub_python.parent.mkdir(parents=True)
    # The trainer fails, or its whole process group is killed before it writes an exit
    # code; the infer_move smoke started beside it (the same python) just fails.
    stub_python.write_text(f'#!/bin/sh\ncase "$*" in *chessbot.train*) {stub};; esac\nexit 1\n')
    stub_python.chmod(0o755)
    env = {"PATH": os.environ["PATH"], "HOME": str(tmp_path), "REPO_DIR": str(ROOT),
           "RUNPOD_TRAINING_DIR": str(TRAINING_DIR), "VENV_DIR": str(stub_python.parent.parent),
           "RUNPOD_PHASE_TIMING_ENABLED": "0", "RUN_OUT": str(run),
           "DATASET_DIR": str(tiny_dataset), "DATASET_SHA256": "same-data", "EPOCHS": "1",
           "TRAIN_DEVICE": "cpu", "NPROC": "0"}

    def train(**changed: str) -> subprocess.CompletedProcess:
        return subprocess.run(["bash", str(TRAINING_DIR / "cycle_train.sh")],
                              env={**env, **changed}, capture_output=True, text=True,
                              timeout=120)

    plain = train()
    assert plain.returncode == (1 if stub == "exit 1" else 87), plain.stdout + plain.stderr
    assert "is full" not in plain.stdout + plain.stderr
    full = train(DISK_FULL_BELOW_KB=str(1 << 62))
    said = full.stdout + full.stderr
    assert full.returncode == 89, said
    ended = "exit 1" if stub == "exit 1" else "no exit code"
    assert f"the disk holding {run} is full (" in said
    assert f"KiB free): the trainer ({ended}) could not write its files" in said
    # A reconnect that finds the trainer gone, on a full disk, says the same.
    lost = train(ATTACH_ONLY="1", REUSE_FINISHED="1", DISK_FULL_BELOW_KB=str(1 << 62))
    assert lost.returncode == 89, lost.stdout + lost.stderr
    assert "could not write its files" in lost.stdout + lost.stderr


@pytest.mark.slow
def test_a_running_trainer_of_other_settings_is_followed_and_said_never_joined(
        tmp_path: Path, tiny_dataset: Path) -> None:
    """A train while this run's trainer runs on the pod follows it, whatever this train
    asked: a resume with EPOCHS=3 followed a 12-epoch trainer and said ok as if its model
    were a 3-epoch one. A trainer whose trainer.key (the dataset and settings) is another
    is still followed (killing it would throw its epochs away), never joined by a second
    one, and the line the host reads says it was started with other settings."""
    run = tmp_path / "run"
    control = run / ".control"
    control.mkdir(parents=True)
    (run / "run_artifacts").mkdir()
    log = run / "run_artifacts" / "train.log"
    log.write_text("[train] epoch 4/12 ...\n")
    (control / "trainer.key").write_text("the-12-epoch-training\n")
    held = tmp_path / "held"  # the running trainer: it holds the run's trainer lock (in
    # its own process, -F: killed, the lock goes with it)
    holder = subprocess.Popen(["flock", "-F", str(control / "trainer.lock"), "-c",
                               f"touch {held}; exec sleep 60"])
    follower = None
    try:
        eventually(held.exists, what="the lock held")
        (control / "trainer.pid").write_text(f"{holder.pid}\n")
        env = {"PATH": os.environ["PATH"], "HOME": str(tmp_path), "REPO_DIR": str(ROOT),
               "RUNPOD_TRAINING_DIR": str(TRAINING_DIR), "VENV_DIR": sys.prefix,
               "RUNPOD_PHASE_TIMING_ENABLED": "0", "RUN_OUT": str(run),
               "DATASET_DIR": str(tiny_dataset), "DATASET_SHA256": "same-data",
               "REUSE_FINISHED": "1", "EPOCHS": "3", "TRAIN_DEVICE": "cpu", "NPROC": "0"}
        follower = subprocess.Popen(["bash", str(TRAINING_DIR / "cycle_train.sh")], env=env,
                                    stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                    text=True, start_new_session=True)
        said = []
        for line in follower.stdout:
            said.append(line)
            if "following its log" in line:
                break
        text = "".join(said)
        assert ("the trainer running on this pod was started with other settings than this "
                "train's (dataset, epochs, batch size, model or trainer arguments): following "
                "it to its end; its model will be that training's") in text, text
        assert f"already running on this pod (pid {holder.pid})" in text
        (control / "trainer.rc").write_text("3\n")  # that training ends (failed, say)
        holder.kill()
        holder.wait()  # reaped: tail --pid sees a zombie as alive
        rest = follower.communicate(timeout=60)[0]
        assert follower.returncode == 3, text + rest
        assert "started the trainer" not in text + rest
        assert log.read_text() == "[train] epoch 4/12 ...\n"  # followed, not made anew
        # A reconnect (ATTACH_ONLY) after a connection lost while following it: that
        # training finished meanwhile. It is kept, said so (on stderr, where the host reads
        # the pod's lines), not taken for a killed trainer (87).
        from tests.test_uci import make_model

        make_model(run / "run_artifacts" / "model.pt")
        (control / "trainer.rc").write_text("0\n")
        back = subprocess.run(["bash", str(TRAINING_DIR / "cycle_train.sh")],
                              env={**env, "ATTACH_ONLY": "1"}, capture_output=True, text=True,
                              timeout=120)
        assert back.returncode == 0, back.stdout + back.stderr
        assert ("the trainer running on this pod was started with other settings than this "
                "train's (dataset, epochs, batch size, model or trainer arguments): it "
                "finished while the connection was down; its model is that training's"
                ) in back.stderr
        assert "remote infer_move smoke:" in back.stdout
        (control / "trainer.rc").write_text("5\n")  # ... or failed meanwhile: its exit code
        failed = subprocess.run(["bash", str(TRAINING_DIR / "cycle_train.sh")],
                                env={**env, "ATTACH_ONLY": "1"}, capture_output=True,
                                text=True, timeout=120)
        assert failed.returncode == 5, failed.stdout + failed.stderr
        assert "ended while the connection was down (exit 5)" in failed.stderr
    finally:
        holder.kill()
        holder.wait()
        if follower is not None and follower.poll() is None:
            os.killpg(follower.pid, signal.SIGKILL)  # its tail and smoke too: they hold stdout
            follower.communicate()


@pytest.mark.slow
def test_a_reconnect_never_starts_a_trainer_behind_the_hosts_back(tmp_path: Path,
                                                                   tiny_dataset: Path) -> None:
    """After a lost connection the train step reconnects with ATTACH_ONLY=1. A trainer that
    died meanwhile (an OOM kill, a restart that also dropped SSH) made the reconnect start a
    new one from epoch 1, wiping its log, and the run said ok. Now: its exit code, or 87."""
    run = tmp_path / "run"
    env = {"PATH": os.environ["PATH"], "HOME": str(tmp_path), "REPO_DIR": str(ROOT),
           "RUNPOD_TRAINING_DIR": str(TRAINING_DIR), "VENV_DIR": sys.prefix,
           "RUNPOD_PHASE_TIMING_ENABLED": "0", "RUN_OUT": str(run),
           "DATASET_DIR": str(tiny_dataset), "DATASET_SHA256": "same-data",
           "REUSE_FINISHED": "1", "ATTACH_ONLY": "1", "EPOCHS": "1"}
    (run / "run_artifacts").mkdir(parents=True)
    (run / "run_artifacts" / "train.log").write_text("[train] epoch 1/1 ...\n")

    def attach() -> subprocess.CompletedProcess:
        return subprocess.run(["bash", str(TRAINING_DIR / "cycle_train.sh")], env=env,
                              capture_output=True, text=True, timeout=120)

    lost = attach()  # no trainer, no exit code: killed
    assert lost.returncode == 87, lost.stdout + lost.stderr
    assert "none finished" in lost.stdout + lost.stderr
    assert "started the trainer" not in lost.stdout + lost.stderr
    assert (run / "run_artifacts" / "train.log").read_text() == "[train] epoch 1/1 ...\n"
    key = subprocess.run(["bash", str(TRAINING_DIR / "cycle_train.sh")],  # learn its key
                         env={**env, "ATTACH_ONLY": "0", "EPOCHS": "1", "BATCH_SIZE": "256",
                              "MODEL_BLOCKS": "1", "MODEL_CHANNELS": "4",
                              "TRAIN_DEVICE": "cpu", "NPROC": "0",
                              "TRAIN_EXTRA_ARGS": f"--cache-dir {tmp_path / 'cache'}"},
                         capture_output=True, text=True, timeout=600)
    assert key.returncode == 0, key.stdout[-2000:] + key.stderr[-2000:]
    (run / ".control" / "trainer.rc").write_text("137\n")  # that training: OOM-killed
    env.update(BATCH_SIZE="256", MODEL_BLOCKS="1", MODEL_CHANNELS="4", TRAIN_DEVICE="cpu",
               NPROC="0", TRAIN_EXTRA_ARGS=f"--cache-dir {tmp_path / 'cache'}")
    failed = attach()
    assert failed.returncode == 137, failed.stdout + failed.stderr
    assert "ended while the connection was down (exit 137)" in failed.stdout + failed.stderr

    def status() -> subprocess.CompletedProcess:
        return subprocess.run(["bash", str(TRAINING_DIR / "cycle_train.sh")],
                              env={**env, "TRAIN_ACTION": "status"}, capture_output=True,
                              text=True, timeout=60)

    ended = status()  # what a cluster node reached again is asked first
    assert (ended.returncode, ended.stdout) == (3, "ended with exit 137\n"), ended.stderr
    # A cluster's other node: its training finished while the connection was down, and it
    # writes no model (the primary does). It is kept, not taken for a killed trainer (87).
    (run / ".control" / "trainer.rc").write_text("0\n")
    (run / "run_artifacts" / "model.pt").unlink()
    env["CYCLE_NODE_RANK"] = "1"
    kept = attach()
    assert kept.returncode == 0, kept.stdout + kept.stderr
    assert "already finished on this pod" in kept.stdout + kept.stderr
    assert "node rank 1: its trainer finished (the primary writes the artifacts)" \
        in kept.stdout + kept.stderr
    # A new train step whose primary trains again (the host asked it: REUSE_FINISHED=0 for
    # the others): every node trains again with it (a node that kept its training while the
    # primary trained again would leave the primary's ranks waiting for it).
    stub = tmp_path / "stub-venv" / "bin" / "python"  # a trainer that ends at once
    stub.parent.mkdir(parents=True)
    stub.write_text("#!/bin/sh\nexit 3\n")
    stub.chmod(0o755)
    again = subprocess.run(["bash", str(TRAINING_DIR / "cycle_train.sh")],
                           env={**env, "ATTACH_ONLY": "0", "REUSE_FINISHED": "0",
                                "VENV_DIR": str(stub.parent.parent)},
                           capture_output=True, text=True, timeout=120)
    assert "started the trainer" in again.stdout + again.stderr, again.stdout + again.stderr
    assert again.returncode != 0
    (run / ".control" / "trainer.rc").write_text("0\n")
    assert (status().returncode, status().stdout) == (0, "finished\n")
    held = tmp_path / "held"  # a trainer still running: it holds the run's trainer lock
    holder = subprocess.Popen(["flock", str(run / ".control" / "trainer.lock"), "-c",
                               f"touch {held}; exec sleep 60"])
    try:
        eventually(held.exists, what="the lock held")
        running = status()
        assert (running.returncode, running.stdout) == (0, "running\n"), running.stderr
    finally:
        holder.kill()
        holder.wait()


def test_regression_check_with_local_backend_runs_doctor_there_and_reads_no_keyring(
        monkeypatch) -> None:
    """check.regression -b local: api.doctor runs against the local RunPod, and the keyring
    is not read (README). The checks' commands are recorded, not run: the real ones start
    this whole suite again."""
    from podcycle import regression
    from podcycle.config import resolve

    ran: list[tuple[str, dict]] = []
    monkeypatch.setattr(regression, "_run", lambda name, command, env=None: (
        ran.append((name, dict(env or {}))) or regression.Check(name, "pass")))

    def keyring_read() -> str:
        raise AssertionError("the keyring must not be read with -b local")

    monkeypatch.setattr(regression, "keyring_api_key", keyring_read)
    settings = resolve({"backend": "local"}, {}, environ={}, use_keyring=False)
    checks = regression.run_checks(settings, local_smoke=False, live=True)
    assert dict(ran)["api.doctor"] == {"RUNPOD_BACKEND": "local"}
    skipped = [c for c in checks if c.name == "live RunPod probes"]
    assert skipped and skipped[0].status == "skip" and "keyring is not read" in skipped[0].detail


def test_regression_check_hands_a_flag_key_to_its_commands_in_their_environment(
        monkeypatch) -> None:
    """check.regression --api-key KEY: api.doctor and the live probes get the key in their
    environment, never on their command line (`ps` shows that); a key from the environment
    reaches them as it reached this process. Commands recorded, not run, as above."""
    from podcycle import regression
    from podcycle.config import resolve

    ran: list[tuple[str, list[str], dict]] = []
    monkeypatch.setattr(regression, "_run", lambda name, command, env=None: (
        ran.append((name, command, dict(env or {}))) or regression.Check(name, "pass")))
    key = "rpa_REGRESSIONFLAGKEY0123456789"
    flagged = resolve({"api_key": key}, {}, environ={}, use_keyring=False)
    regression.run_checks(flagged, local_smoke=False, live=True)
    started = {name: (command, env) for name, command, env in ran}
    for name in ("api.doctor", "live template.list", "live gpu.search"):
        command, env = started[name]
        assert env.get("RUNPOD_API_KEY") == key, name
        assert not any(key in word for word in command), name
    ran.clear()
    from_environment = resolve({}, {}, environ={"RUNPOD_API_KEY": key}, use_keyring=False)
    regression.run_checks(from_environment, local_smoke=False, live=True)
    assert ran and not any("RUNPOD_API_KEY" in env for _, _, env in ran)


def test_a_recorded_entrypoint_pid_given_out_again_is_never_signalled(tmp_path: Path) -> None:
    """A pod's recorded entrypoint pid may be another process's by now (the entrypoint ended,
    a server that died reaped it, and Linux gave the pid out again): stopping the pod, as a
    restarted server does for the pods its predecessor left, signals neither that process
    nor its children."""
    stranger = subprocess.Popen(["bash", "-c", "sleep 300 & wait"], start_new_session=True)
    try:
        pod_id = "lp0123456789ab"
        assert not procs.pod_processes(pod_id, stranger.pid)
        LocalPod(tmp_path / pod_id, pod_id).stop(stranger.pid, grace=0.5)
        assert stranger.poll() is None and procs.alive(stranger.pid)
    finally:
        os.killpg(stranger.pid, signal.SIGKILL)
        stranger.wait()


def test_the_manifest_script_says_how_much_collect_will_bring(tmp_path: Path) -> None:
    """cycle_manifest.sh's `bytes=N` is what the host checks its free disk against before a
    byte moves: the sum of the files the manifest lists, a sparse one at its full size."""
    out = tmp_path / "run"
    (out / "run_artifacts").mkdir(parents=True)
    (out / "run_artifacts" / "model.pt").write_bytes(b"w" * 1000)
    with open(out / "run_artifacts" / "sparse.bin", "wb") as sparse:
        sparse.truncate(5_000_000)  # a few blocks on disk, 5 MB to copy
    timings = tmp_path / "t.jsonl"
    timings.write_text("{}\n")
    result = subprocess.run(["bash", str(TRAINING_DIR / "cycle_manifest.sh")],
                            env={"PATH": os.environ["PATH"], "RUN_OUT": str(out),
                                 "RUNPOD_TRAINING_DIR": str(TRAINING_DIR),
                                 "RUNPOD_PHASE_TIMING_LOG": str(timings)},
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[-1] == f"bytes={1000 + 5_000_000 + 3}"
    assert len((out / "MANIFEST.sha256").read_text().splitlines()) == 3


def test_a_run_folder_made_by_another_run_of_the_id_is_refused_by_train_and_collect(
        tmp_path: Path) -> None:
    """RUN_TOKEN names the host's run. A folder that records no run becomes this run's at
    its first train; one another run of the same id made (a network volume's, which
    outlives runs) is refused with 90 before anything there is kept, resumed or listed."""
    stub = tmp_path / "stub-venv" / "bin" / "python"
    stub.parent.mkdir(parents=True)
    stub.write_text("#!/bin/sh\nexit 3\n")  # a trainer that fails at once: no torch needed
    stub.chmod(0o755)
    data = tmp_path / "data"
    data.mkdir()
    out = tmp_path / "run"
    env = {"PATH": os.environ["PATH"], "HOME": str(tmp_path), "REPO_DIR": str(ROOT),
           "RUNPOD_TRAINING_DIR": str(TRAINING_DIR), "VENV_DIR": str(stub.parent.parent),
           "RUNPOD_PHASE_TIMING_ENABLED": "0", "RUN_OUT": str(out),
           "DATASET_DIR": str(data), "REUSE_FINISHED": "1", "RUN_TOKEN": "r1@100.000000",
           "RUNPOD_PHASE_TIMING_LOG": str(tmp_path / "t.jsonl")}

    def script(name: str, **changed: str) -> subprocess.CompletedProcess:
        return subprocess.run(["bash", str(TRAINING_DIR / name)], env={**env, **changed},
                              capture_output=True, text=True, timeout=120)

    first = script("cycle_train.sh")
    assert first.returncode == 3 and "started the trainer" in first.stderr, first.stderr
    token = out / ".control" / "run.token"
    assert token.read_text() == "r1@100.000000\n"
    assert script("cycle_train.sh").returncode == 3  # the same run: it trains there again
    (out / "run_artifacts" / "model.pt").write_bytes(b"the earlier run's model")
    assert script("cycle_manifest.sh").returncode == 0
    manifest = (out / "MANIFEST.sha256").read_text()

    again = script("cycle_train.sh", RUN_TOKEN="r1@200.000000")  # the id made again
    assert again.returncode == 90
    assert (f"this run's folder {out} was made by another run of its id (r1@100.000000, "
            "not this run's r1@200.000000)") in again.stderr
    assert "started the trainer" not in again.stderr
    assert token.read_text() == "r1@100.000000\n"  # still the earlier run's
    listed = script("cycle_manifest.sh", RUN_TOKEN="r1@200.000000")
    assert listed.returncode == 90 and "bytes=" not in listed.stdout
    assert (out / "MANIFEST.sha256").read_text() == manifest
    # An older host sends no RUN_TOKEN: nothing is checked, as before.
    assert script("cycle_manifest.sh", RUN_TOKEN="").returncode == 0
