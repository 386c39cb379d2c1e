"""Shared fixtures: a real local RunPod server on 127.0.0.1 (own state folder per test module),
an `inv` runner for the CLI, and a check that no test leaves a process behind."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent

# One CPU thread for torch in tests and the local pods they start: on a loaded 2-core machine
# (CI may be busy) OpenMP threads spin-waiting for a core made CPU training 2x slower, and
# a local pod passes OMP_NUM_THREADS through from the machine, as a container would.
os.environ.setdefault("OMP_NUM_THREADS", "1")
# Never touch the developer's real keyring from tests.
os.environ["PYTHON_KEYRING_BACKEND"] = "keyring.backends.fail.Keyring"
for var in ("RUNPOD_API_KEY", "RUNPOD_BACKEND", "RUNPOD_API_BASE_URL", "RUNPOD_CYCLE_RUN_ID",
            "RUNPOD_GPU_TYPE_ID", "RUNPOD_TEMPLATE_NAME", "RUNPOD_SSH_USER", "RUNPOD_SSH_HOST",
            "RUNPOD_SSH_PORT", "IMAGE_REPO", "PUSH_IMAGE"):
    os.environ.pop(var, None)

from podcycle.errors import PodCycleError  # noqa: E402
from podcycle.local import control, procs  # noqa: E402

INV = str(Path(sys.executable).parent / "inv")


class LocalRunPod:
    def __init__(self, local_dir: Path) -> None:
        self.dir = local_dir
        self.info, _ = control.up(local_dir)
        self.url = self.info["url"]
        self.key = self.info["api_key"]

    def admin(self, method: str, path: str, body: Any = None) -> Any:
        return control.admin(self.info, method, path, body)

    def fault(self, **fault: Any) -> None:
        self.admin("POST", "/_local/faults", fault)

    def clear_faults(self) -> None:
        self.admin("DELETE", "/_local/faults")

    def add_key(self, key: str, scopes: list[str]) -> None:
        self.admin("POST", "/_local/keys", {"key": key, "scopes": scopes})

    def requests(self) -> list[dict[str, Any]]:
        return self.admin("GET", "/_local/requests")["requests"]

    def pods(self) -> list[dict[str, Any]]:
        return self.admin("GET", "/_local/pods")["pods"]

    def client(self, **kwargs: Any):
        from podcycle.runpod.client import RunPodClient

        return RunPodClient(self.url, self.key, **kwargs)

    @contextmanager
    def running_pod(self, name: str, env: dict[str, str]) -> Iterator[Any]:
        """A local pod from the default template, RUNNING, deleted afterwards."""
        client = self.client()
        pod = client.create_pod({"name": name, "templateId": "tpl-local-chessbot",
                                 "gpu": {"id": "NVIDIA RTX A5000", "count": 1}, "env": env})
        try:
            deadline = time.monotonic() + 60
            while client.get_pod(pod.id).status.value != "RUNNING":
                assert time.monotonic() < deadline, f"pod {pod.id} never ran"
                time.sleep(0.1)
            yield pod
        finally:
            try:
                client.delete_pod(pod.id)
            except PodCycleError:
                pass  # the test terminated it already

    def down(self) -> None:
        control.down(self.dir)


@pytest.fixture(scope="module")
def local_runpod(tmp_path_factory: pytest.TempPathFactory):
    server = LocalRunPod(tmp_path_factory.mktemp("local-runpod"))
    yield server
    server.down()


@pytest.fixture
def runpod(local_runpod: LocalRunPod):
    """The module's server with faults cleared before and after each test."""
    local_runpod.clear_faults()
    yield local_runpod
    local_runpod.clear_faults()


def run_inv(*args: str, env: dict[str, str] | None = None, cwd: Path = ROOT,
            timeout: float = 300, input: str | None = None) -> subprocess.CompletedProcess:
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST_")}
    full_env.update(env or {})
    return subprocess.run([INV, *args], cwd=cwd, env=full_env, capture_output=True, text=True,
                          timeout=timeout, input=input)


@pytest.fixture(scope="session")
def tiny_dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The first 1,500 train / 300 val positions of the smoke set: for end-to-end tests that
    check the cycle's mechanics, not the model's quality (test_chessbot does that)."""
    folder = tmp_path_factory.mktemp("tiny-dataset")
    smoke = ROOT / "data" / "dataset" / "_smoke_runpod"
    for name, lines in (("train.jsonl", 1500), ("val.jsonl", 300)):
        with open(smoke / name) as source:
            head = [next(source) for _ in range(lines)]
        (folder / name).write_text("".join(head))
    return folder


@pytest.fixture
def inv(local_runpod: LocalRunPod):
    """`inv` against the module's local RunPod (local backend)."""

    def runner(*args: str, env: dict[str, str] | None = None, **kwargs: Any):
        base = {"RUNPOD_BACKEND": "local", "POD_CYCLE_LOCAL_DIR": str(local_runpod.dir)}
        base.update(env or {})
        return run_inv(*args, env=base, **kwargs)

    return runner


@pytest.fixture(scope="session", autouse=True)
def nothing_left_behind():
    before = procs.marked_processes()
    yield
    import time

    deadline = time.monotonic() + 10
    left = procs.marked_processes() - before
    while left and time.monotonic() < deadline:
        time.sleep(0.2)
        left = procs.marked_processes() - before
    assert not left, "local pod processes left behind: " + "; ".join(
        f"{pid} {_cmdline(pid)[:120]}" for pid in sorted(left))
    servers = [p for p in procs.all_pids() if _is_test_server(p)]
    assert not servers, f"local RunPod servers left behind: {servers}"


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return "(gone)"


def _is_test_server(pid: int) -> bool:
    try:
        cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return False
    return "podcycle.local.server" in cmd and "/pytest-" in cmd
