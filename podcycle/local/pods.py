"""Local pods: a pod folder laid out like the image's filesystem, and the pod entrypoint run
with the pod's env and its paths rooted in that folder. The entrypoint starts the real sshd."""

from __future__ import annotations

import errno
import getpass
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from podcycle import PROJECT_ROOT
from podcycle.local import procs
from podcycle.runpod.models import ENV_NAME, ENV_NAME_RULE, MAX_ARG_STRLEN

# What the image carries (Dockerfile COPY lines), copied into each pod's folder.
REPO_PARTS = ("chessbot", "scripts", "deploy", "requirements.txt")
# What the image leaves out of them (.dockerignore): a .env there holds the API key.
NOT_COPIED = ("__pycache__", "*.pyc", ".env", ".env.*")
ENTRYPOINT = "entrypoint.sh"
TMP_RECORD = "tmpdir"  # in the pod's folder: where its /tmp lies this boot


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def sshd_answers(port: int, timeout: float = 0.5) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
            s.settimeout(timeout)
            return s.recv(4).startswith(b"SSH-")
    except OSError:
        return False


def find_sshd() -> str | None:
    return shutil.which("sshd") or next(
        (p for p in ("/usr/sbin/sshd", "/usr/local/sbin/sshd") if os.access(p, os.X_OK)), None)


class LocalPod:
    def __init__(self, pod_dir: Path, pod_id: str, project_root: Path = PROJECT_ROOT) -> None:
        self.dir = pod_dir
        self.id = pod_id
        self.project_root = project_root
        self.root = pod_dir / "root"
        self.repo_dir = self.root / "workspace" / "chess-bot"
        self.training_dir = self.root / "opt" / "runpod_cloud_training"
        self.log_path = pod_dir / "pod.log"

    @property
    def user(self) -> str:
        return getpass.getuser()

    def materialize(self) -> None:
        """Lay out the 'image': the training scripts (always fresh, as a new container) and
        the repo checkout (kept across stop/start, like a pod's volume)."""
        if self.training_dir.exists():
            shutil.rmtree(self.training_dir)
        ignore = shutil.ignore_patterns(*NOT_COPIED)
        shutil.copytree(self.project_root / "deploy" / "runpod_cloud_training", self.training_dir,
                        ignore=ignore)
        if not self.repo_dir.exists():
            for part in REPO_PARTS:
                src = self.project_root / part
                dst = self.repo_dir / part
                if src.is_dir():
                    shutil.copytree(src, dst, ignore=ignore)
                elif src.is_file():
                    dst.parent.mkdir(parents=True, exist_ok=True)
                    shutil.copy2(src, dst)
        for sub in ("root/.ssh", "home/runner/.ssh", "etc/ssh", "var/log/pod", "run"):
            (self.root / sub).mkdir(parents=True, exist_ok=True)

    def mount(self, source: Path, path: str) -> Path:
        """A network volume: its folder linked at `path` inside the pod's root (a container
        would see it at `path` itself)."""
        target = self.root / path.lstrip("/")
        target.parent.mkdir(parents=True, exist_ok=True)
        if target.is_symlink() or target.exists():
            if target.is_symlink() and target.resolve() == source.resolve():
                return target
            if target.is_symlink():
                target.unlink()
        source.mkdir(parents=True, exist_ok=True)
        target.symlink_to(source, target_is_directory=True)
        return target

    def env(self, pod_env: dict[str, str], ports: dict[str, int], api: dict[str, str]) -> dict:
        # What a container would get from its host: locale, time zone, and the CPU thread
        # limits (a local pod shares this machine's cores with everything else on it). Not the
        # host user's home: a container's HOME is its own /root, so the user's dotfiles (a
        # .bashrc that runs `conda init` or pyenv, prints a banner, or puts another python
        # first on PATH) never reach the pod's services or its SSH sessions.
        base = {k: v for k, v in os.environ.items()
                if k in ("PATH", "LANG", "LC_ALL", "USER", "LOGNAME", "TZ",
                         "OMP_NUM_THREADS", "MKL_NUM_THREADS")}
        env = dict(base)
        env.update(pod_env)
        sshd = find_sshd() or "sshd"
        root = str(self.root)
        env.update({
            procs.MARKER: self.id,
            "HOME": f"{root}/root",
            "POD_ROOT": root,
            "WORKSPACE_DIR": f"{root}/workspace",
            "REPO_DIR": str(self.repo_dir),
            "RUNPOD_TRAINING_DIR": str(self.training_dir),
            "VENV_DIR": sys.prefix,
            "CLONE_REPO_ON_START": pod_env.get("CLONE_REPO_ON_START", "0"),
            "SYNC_REQUIREMENTS_ON_START": pod_env.get("SYNC_REQUIREMENTS_ON_START", "0"),
            "POD_LOG_DIR": f"{root}/var/log/pod",
            "SSHD_BIN": sshd,
            "SSHD_PORT": str(ports["22"]),
            "SSHD_LISTEN_ADDRESS": "127.0.0.1",
            "SSHD_CONFIG_FILE": f"{root}/etc/ssh/sshd_config",
            "SSH_HOST_KEY_DIR": f"{root}/etc/ssh",
            "SSHD_STRICT_MODES": "no",
            "SSHD_PID_FILE": f"{root}/run/sshd.pid",
            "SSHD_AUTHORIZED_KEYS_FILE": f"{root}/root/.ssh/authorized_keys",
            # One per line: the pod's folder may hold a space (entrypoint.sh install_keys).
            "SSH_AUTHORIZED_KEYS_FILES": f"{root}/root/.ssh/authorized_keys\n"
                                         f"{root}/home/runner/.ssh/authorized_keys",
            "SSH_CREATE_RUNNER_USER": "0",
            "INFERENCE_API_HOST": "127.0.0.1",
            "INFERENCE_API_PORT": str(ports["8000"]),
            "JUPYTER_PORT": str(ports["8888"]),
            "RUNPOD_POD_ID": self.id,
            "RUNPOD_API_BASE_URL": api["url"],
            "RUNPOD_API_KEY": api["key"],
            "PYTHONUNBUFFERED": "1",
        })
        env.setdefault("RUNPOD_PHASE_TIMING_ENABLED", "1")
        return env

    @staticmethod
    def check_env(env: dict[str, str]) -> None:
        """What a container runtime and Linux's execve refuse, as the OSError the server
        turns into an ERROR pod with the reason in its log (instead of a boot thread that
        dies on Popen's ValueError and a pod left STARTING, billing, without a word)."""
        for name, value in env.items():
            if not ENV_NAME.fullmatch(name):
                raise OSError(errno.EINVAL, f"container env: invalid variable name {name!r} "
                                            f"(names are {ENV_NAME_RULE})")
            if "\0" in value:
                raise OSError(errno.EINVAL, f"container env: {name} holds a NUL byte")
            size = len(name.encode()) + len(value.encode()) + 2
            if size > MAX_ARG_STRLEN:
                raise OSError(errno.E2BIG, f"exec entrypoint: Argument list too long (env "
                                           f"{name} is {size} bytes; Linux's MAX_ARG_STRLEN "
                                           f"is {MAX_ARG_STRLEN})")

    def start(self, env: dict[str, str]) -> int:
        self.check_env(env)
        self.materialize()
        env = {**env, "TMPDIR": str(self.fresh_tmp())}
        log = open(self.log_path, "ab")
        try:
            proc = subprocess.Popen(
                ["bash", str(self.training_dir / ENTRYPOINT)],
                cwd=self.root, env=env, stdin=subprocess.DEVNULL, stdout=log,
                stderr=subprocess.STDOUT, start_new_session=True,
            )
        finally:
            log.close()
        return proc.pid

    def stop(self, root_pid: int | None, grace: float = 5.0) -> None:
        # As `docker stop` does, the entrypoint (the container's PID 1) gets SIGTERM first and
        # alone: it ends each supervisor before its service, so a service the stop ended is not
        # logged as "exited ... restarting" (it was, when every process got SIGTERM at once and
        # a supervisor saw its sshd die before its own signal). Then whatever is left (a
        # trainer started over SSH, a service that did not end) gets SIGTERM, SIGKILL after
        # `grace`. Scan again after each round: a process forked while we were signalling (a
        # service restart, the entrypoint's sleep) is not in the first snapshot.
        if root_pid and procs.of_pod(root_pid, self.id):  # alive, and not a pid given out again
            procs.terminate({root_pid}, grace=grace, kill=False)
        for _ in range(5):
            found = procs.pod_processes(self.id, root_pid)
            if not found:
                break
            procs.terminate(found, grace=grace)
        # Reap our direct child so it does not linger as a zombie in the server.
        if root_pid:
            try:
                os.waitpid(root_pid, os.WNOHANG)
            except ChildProcessError:
                pass
        self.clear_tmp()

    def fresh_tmp(self) -> Path:
        """The pod's /tmp for this boot (its TMPDIR): a new private folder under the host's
        temp folder, recorded in the pod's folder so that the pod's stop removes it, as a
        container's /tmp goes with the container. Not inside the pod's folder: torchrun and
        multiprocessing put Unix sockets there, and a socket's path is limited to 107 bytes.
        Without it each training under torchrun left a torchelastic_* folder in the host's
        /tmp for good."""
        self.clear_tmp()
        path = tempfile.mkdtemp(prefix=f"podcycle-pod-{self.id}-")
        (self.dir / TMP_RECORD).write_text(path)
        return Path(path)

    def clear_tmp(self) -> None:
        record = self.dir / TMP_RECORD
        try:
            path = record.read_text()
        except OSError:
            return
        if path:
            shutil.rmtree(path, ignore_errors=True)
        record.unlink(missing_ok=True)

    def wait_ready(self, port: int, root_pid: int, timeout: float) -> tuple[bool, str]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if sshd_answers(port):
                return True, ""
            try:
                pid, status = os.waitpid(root_pid, os.WNOHANG)
            except ChildProcessError:
                pid, status = root_pid, 0
            if pid == root_pid:
                return False, f"entrypoint exited ({status >> 8}) before sshd answered"
            time.sleep(0.1)
        return False, f"sshd did not answer on 127.0.0.1:{port} within {timeout:.0f}s"

    def tail_log(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def remove(self) -> None:
        self.clear_tmp()
        shutil.rmtree(self.dir, ignore_errors=True)
