"""Shared fixtures: a real local RunPod server on 127.0.0.1 (own state folder per test module),
an `inv` runner for the CLI, and a check that no test leaves a process behind."""

from __future__ import annotations

import gc
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
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
# Nor its settings: every variable a setting reads (a developer's exported
# POD_CYCLE_ARTIFACTS_DIR, TRAIN_BLOCKS or RUNPOD_NODES failed tests that resolve their own),
# and Invoke's runtime config file, which every `inv` a test starts would load.
from podcycle.config import SPECS  # noqa: E402  (it reads no variable at import)

for var in (*(spec.env for spec in SPECS.values()), "INVOKE_RUNTIME_CONFIG", "RUN_LOCAL_SMOKE"):
    os.environ.pop(var, None)

from podcycle.errors import PodCycleError  # noqa: E402
from podcycle.local import control, procs  # noqa: E402
from podcycle.local.pods import TMP_RECORD  # noqa: E402

INV = str(Path(sys.executable).parent / "inv")



def eventually(check: Callable[[], Any], *, timeout: float = 60.0,
               what: str | Callable[[], str] = "the condition", interval: float = 0.1) -> Any:
    """Wait for an event another process produces (a pod status, a file, a log line, a request
    in the server's log): poll `check` until it returns something truthy and return that.
    After `timeout` seconds (a bound on the test, never a measurement) fail, saying `what`
    was awaited. The one place the tests pause: no test sleeps for a fixed time."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() >= deadline:
            detail = what() if callable(what) else what
            raise AssertionError(f"gave up after {timeout:g} s waiting for {detail}")
        time.sleep(interval)


def trainers(run_id: str) -> set[int]:
    """The pids of the pod trainers (`chessbot.train`) of run `run_id`, on any local pod. On a
    cluster's node these are torchrun's ranks, never its agent (`torch.distributed.run`, whose
    command line names the trainer too): the agents' rendezvous and heartbeats must go on
    while a test pauses the training (an agent paused mid-rendezvous failed a training that
    a test then waited 600 s to see finish)."""
    found = set()
    for pid in procs.all_pids():
        cmd = cmdline_of(pid)
        if "chessbot.train" in cmd and f"/runpod_cycles/{run_id}/" in cmd \
                and "torch.distributed.run" not in cmd and "torchrun" not in cmd:
            found.add(pid)
    return found


def ssh_sessions(pod_dir: Path) -> set[int]:
    """The pod side of a local pod's SSH sessions: the children of its sshd listener (sshd
    rewrites a session's environment, the pod marker, with its title)."""
    listener = int((pod_dir / "root" / "run" / "sshd.pid").read_text())
    return {pid for pid in procs.all_pids() if procs._ppid(pid) == listener}


def cut(sessions: set[int]) -> None:
    """The network drops: each of these pod-side SSH session processes killed. One that ended
    on its own since it was listed (a short command's session) is cut already."""
    for pid in sessions:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


@contextmanager
def frozen(run_id: str, cycle: subprocess.Popen | None = None) -> Iterator[set[int]]:
    """The run's pod trainer paused (SIGSTOP) while the test acts, as a slow GPU would keep
    it training, and continued (SIGCONT) when the block ends: a scenario that needs a training
    still running when it acts gets one without burning the CPU on long epochs. Given the
    `cycle` process (output piped), a cycle that ends before its trainer starts fails the test
    at once, with the end of what it printed."""
    def started() -> set[int]:
        if cycle is not None and cycle.poll() is not None:
            out, err = cycle.communicate()
            said = "".join(part or "" for part in (out, err))[-3000:]
            raise AssertionError(f"the cycle of run {run_id} ended (exit {cycle.returncode}) "
                                 f"before its trainer started:\n{said}")
        return trainers(run_id)

    pids = eventually(started, what=f"the trainer of run {run_id}")
    for pid in pids:
        os.kill(pid, signal.SIGSTOP)
    try:
        yield pids
    finally:
        for pid in pids:
            try:
                os.kill(pid, signal.SIGCONT)
            except ProcessLookupError:
                pass


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
            eventually(lambda: client.get_pod(pod.id).status.value == "RUNNING",
                       what=f"pod {pod.id} to run")
            yield pod
        finally:
            try:
                client.delete_pod(pod.id)
            except PodCycleError:
                pass  # the test terminated it already

    def down(self) -> None:
        control.down(self.dir)


# The modules in the order the test workers take them (conftest.pytest_collection_modifyitems,
# pytest-xdist --dist loadscope: a whole module per worker). First the spend guard's
# scenarios, which wait out deadlines of a minute and of half a minute on a paused trainer:
# started at once, that wait runs beside the CPU-bound scenarios instead of after them. Then
# the longest first, as measured in a whole `make test` (seconds on a worker, 2 cores, 6
# workers): cycle 127, run_state 116, sweep 104, chessbot 103, cluster_cycle 87, runs_e2e
# 73; runpod_client 54 (mostly waiting out client timeouts, also best started early),
# tasks_api 50, train_distributed 44, uci 38, then 25 s and less. Order only: a module
# missing here merely starts after these, and the short ones left for the end fill the
# workers there.
LONGEST_FIRST = ("test_spend_guard_e2e.py", "test_cycle.py", "test_run_state.py",
                 "test_sweep.py", "test_chessbot.py", "test_cluster_cycle.py",
                 "test_runs_e2e.py", "test_runpod_client.py", "test_tasks_api.py",
                 "test_train_distributed.py", "test_uci.py", "test_pod_http.py",
                 "test_pod_logs.py", "test_numbers_and_times.py", "test_compact.py",
                 "test_strength_cycle.py", "test_inputs.py", "test_ops_hostile.py",
                 "test_pod_scripts.py", "test_cluster_v2.py", "test_local_clusters.py",
                 "test_tensorboard_events.py")


@pytest.hookimpl(optionalhook=True)  # pytest -p no:xdist runs too
def pytest_xdist_make_scheduler(config: pytest.Config, log: Any) -> Any:
    """pytest-xdist's loadscope, but a worker takes its next module only when the one it runs
    is down to its last test (xdist's own takes it with two left: a worker sure to run two
    long scenarios more took a whole other long module with them, while other workers idled
    at the end). One test left is the least xdist allows: a worker runs a test only once it
    knows the next. Other --dist modes keep xdist's own scheduler."""
    if config.getoption("dist", None) != "loadscope":
        return None
    from xdist.scheduler import LoadScopeScheduling

    class ModuleWhenDone(LoadScopeScheduling):
        def _reschedule(self, node: Any) -> None:
            if node.shutting_down:
                return
            if not self.workqueue:
                node.shutdown()
                return
            if self._pending_of(self.assigned_work[node]) > 1:
                return
            self._assign_work_unit(node)

    return ModuleWhenDone(config, log)


def pytest_configure(config: pytest.Config) -> None:
    """Ctrl-C as a terminal gives it, for pytest and every process a test starts: a suite run
    with `&` from a script (no job control) starts with SIGINT ignored, which its children
    would inherit, and the tests that press Ctrl-C on a command would find it deaf. A hook,
    not an import-time line: a process that imports this module (a pool worker unpickling a
    test's function) may ignore SIGINT on purpose. Likewise SIGHUP for a suite run under
    `nohup`: the commands it starts would keep nohup's SIG_IGN, as pod-cycle means them to,
    and the tests of a closing terminal would find them deaf."""
    if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)
    if signal.getsignal(signal.SIGHUP) is signal.SIG_IGN:
        signal.signal(signal.SIGHUP, signal.SIG_DFL)
    # Collection imports torch, numpy and python-chess in every worker: the cyclic collector
    # stays off meanwhile, as chessbot.train does for its own imports (pytest_collection_finish
    # freezes what they made and turns it on again). Not in xdist's controller, which never
    # collects, so nothing there would turn it on again.
    if hasattr(config, "workerinput") or not config.getoption("numprocesses", None):
        gc.disable()


def pytest_collection_finish(session: pytest.Session) -> None:
    gc.freeze()
    gc.enable()


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """The longest tests first, then the other slow ones, then the fast ones. pytest-xdist
    hands tests to its workers in this order, so long scenarios start early and the quick
    tests fill the end, instead of one long scenario starting last and running alone while the
    other workers idle (longest processing time first)."""
    def rank(item: pytest.Item) -> tuple[int, int]:
        name = item.path.name
        if name in LONGEST_FIRST:
            return 0, LONGEST_FIRST.index(name)
        return (1 if item.get_closest_marker("slow") else 2), 0

    items.sort(key=rank)


@pytest.fixture(scope="module")
def local_runpod(tmp_path_factory: pytest.TempPathFactory):
    # A space and a quote in the folder, as a checkout under "My Projects" gives the default
    # one (.pod-cycle/local): every pod's paths, sshd_config and SSH sessions hold them.
    server = LocalRunPod(tmp_path_factory.mktemp("local runpod's"))
    yield server
    server.down()


@pytest.fixture
def runpod(local_runpod: LocalRunPod):
    """The module's server with faults cleared before and after each test."""
    local_runpod.clear_faults()
    yield local_runpod
    local_runpod.clear_faults()


def child_environ() -> dict[str, str]:
    """This process's environment for a command a test starts (`inv`, a trainer), without
    pytest's own variables."""
    return {k: v for k, v in os.environ.items() if not k.startswith("PYTEST_")}


def task_arguments() -> dict[str, list[Any]]:
    """Every task's parsed arguments, from copies: Invoke's get_arguments() pops the help
    texts it uses, so a test calling it on tasks.ns itself leaves later tests without help."""
    import copy

    import tasks

    arguments = {}
    for name in tasks.ns.task_names:
        task = copy.copy(tasks.ns[name])
        task.help = dict(task.help)
        arguments[name] = task.get_arguments()
    return arguments


def interrupt(command: list[str], ready: Callable[[subprocess.Popen], Any], *,
              sig: int = signal.SIGINT, group: bool = False, timeout: float = 120,
              **popen: Any) -> tuple[subprocess.Popen, str, str]:
    """Start `command` (output piped), wait for `ready(proc)` (the event: a line it reads
    from the output, a state another process reaches), then send `sig`: to the process
    alone (a `kill`, a cancelled CI job), or with `group` to its whole process group, as
    Ctrl-C at a terminal does. Returns the ended process and the rest of its stdout and
    stderr; one still alive after `timeout` seconds (a bound on a hang) is killed."""
    proc = subprocess.Popen(command, cwd=ROOT, text=True, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, start_new_session=group, **popen)

    def send(signum: int) -> None:
        (os.killpg if group else os.kill)(proc.pid, signum)

    try:
        ready(proc)
        send(sig)
        out, err = proc.communicate(timeout=timeout)
    finally:
        if proc.poll() is None:
            send(signal.SIGKILL)
            proc.communicate()
    return proc, out, err


def run_inv(*args: str, env: dict[str, str] | None = None, cwd: Path = ROOT,
            timeout: float = 300, input: str | None = None) -> subprocess.CompletedProcess:
    full_env = child_environ()
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


# The smallest model the cycle trains (settings TRAIN_BLOCKS/TRAIN_CHANNELS): for end-to-end
# tests of the cycle's mechanics, where the model's quality does not matter.
SMALL_MODEL = {"TRAIN_BLOCKS": "1", "TRAIN_CHANNELS": "8"}

# The smoke set's CPU-sized training (the GPU preset is 6x64, train_baseline_preset.sh). Three
# epochs of 3x32 reach 0.225 val top-1 (seed 1; 0.214 to 0.225 over seeds 1 to 4) against a
# 3x-random bar of 0.203, for 19 CPU-s; 4x32 over four epochs reached 0.224 for 34.
SMOKE_EPOCHS = 3
SMOKE_CPU_ARGS = ["--blocks", "3", "--channels", "32", "--batch-size", "128", "--device", "cpu"]


@pytest.fixture(scope="session")
def smoke_training(tmp_path_factory: pytest.TempPathFactory, worker_id: str) -> dict[str, Any]:
    """The smoke dataset trained once per test run by `python -m chessbot.train`, as a user
    runs it, and shared by every test worker (the first trains under a file lock, the others
    find it done): the quality check, the checkpoint tests and the strength match all read
    this model. Read-only for the tests: copy what you change."""
    import fcntl
    import json

    root = tmp_path_factory.getbasetemp()
    if worker_id != "master":
        root = root.parent  # shared by the workers of this run (pytest-xdist's own layout)
    out = root / "smoke-training"
    with open(root / "smoke-training.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (out / "done").exists():
            out.mkdir(exist_ok=True)
            result = subprocess.run(
                [sys.executable, "-m", "chessbot.train", "--dataset-dir",
                 str(ROOT / "data" / "dataset" / "_smoke_runpod"), "--output-dir",
                 str(out / "run"), "--metrics-path", str(out / "metrics.json"),
                 "--cache-dir", str(out / "cache"), "--epochs", str(SMOKE_EPOCHS),
                 *SMOKE_CPU_ARGS], cwd=ROOT, capture_output=True, text=True, timeout=600)
            assert result.returncode == 0, result.stdout + result.stderr
            (out / "train.log").write_text(result.stdout)
            (out / "done").touch()
    return {"dir": out, "model": out / "run" / "model.pt",
            "metrics": json.loads((out / "metrics.json").read_text()),
            "log": (out / "train.log").read_text()}


@pytest.fixture
def trainer_here() -> Iterator[None]:
    """For a test that runs the trainer's main() in this process: torch._dynamo's import
    sets TORCHINDUCTOR_CACHE_DIR, which every later command of this worker would inherit, and
    the training seeds torch's global generator. Both are given back after the test."""
    import torch

    saved = dict(os.environ)
    try:
        with torch.random.fork_rng(devices=[]):
            yield
    finally:
        os.environ.clear()
        os.environ.update(saved)


@pytest.fixture
def short_tmp() -> Iterator[Path]:
    """A TMPDIR for a training started outside a pod (a pod has its own): torchrun leaves a
    torchelastic_* folder in it per run, which went to the host's /tmp for good. Short, as a
    Unix socket's path is limited to 107 bytes; removed after the test."""
    import shutil
    import tempfile

    path = Path(tempfile.mkdtemp(prefix="podcycle-test-tmp-"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def inv(local_runpod: LocalRunPod):
    """`inv` against the module's local RunPod (local backend)."""

    def runner(*args: str, env: dict[str, str] | None = None, **kwargs: Any):
        base = {"RUNPOD_BACKEND": "local", "POD_CYCLE_LOCAL_DIR": str(local_runpod.dir)}
        base.update(env or {})
        return run_inv(*args, env=base, **kwargs)

    return runner


@pytest.fixture(scope="session", autouse=True)
def own_cache_folder(tmp_path_factory: pytest.TempPathFactory) -> None:
    """pod-cycle's cache folder (POD_CYCLE_CACHE_DIR: pod.ssh's known_hosts per pod, the
    validated-dataset marks, the volume-name locks) in this session's temporary folder, for
    this process and every command a test starts: the suite wrote into the developer's
    ~/.cache/pod-cycle (a known_hosts file per pod, kept for good), and suites run side by
    side on one machine shared its locks and marks."""
    os.environ["POD_CYCLE_CACHE_DIR"] = str(tmp_path_factory.getbasetemp() / "pod-cycle-cache")


@pytest.fixture(scope="session", autouse=True)
def nothing_left_behind(tmp_path_factory: pytest.TempPathFactory):
    """No local pod process or local RunPod server of this session outlives it. Scoped to this
    session's temporary folder: parallel workers (and other suites on the machine) each own
    their pods, and must not be blamed for each other's."""
    mine = str(tmp_path_factory.getbasetemp()) + os.sep  # pytest-4/ is not pytest-46/
    before = _ours(procs.marked_processes(), mine)
    yield

    def left() -> set[int]:
        return _ours(procs.marked_processes(), mine) - before

    # A bound, not a measurement: on two busy cores a pod stopped at a module's end can take
    # tens of seconds to go (SIGTERM, its grace, SIGKILL, the reaping).
    eventually(lambda: not left(), timeout=90, interval=0.2, what=lambda: (
        "local pod processes left behind to end: " + "; ".join(
            f"{pid} {cmdline_of(pid)[:120]}" for pid in sorted(left()))))
    servers = [p for p in procs.all_pids() if _is_test_server(p, mine)]
    assert not servers, f"local RunPod servers left behind: {servers}"
    # A pod's /tmp lies outside its folder (LocalPod.fresh_tmp): a pod that ended without
    # its stop's cleanup left it in the host's /tmp for good, one per suite run.
    kept = [record.parent.name for record in Path(mine).glob(f"**/pods/*/{TMP_RECORD}")
            if (where := record.read_text().strip()) and Path(where).exists()]
    assert not kept, f"local pods whose /tmp folder was left in the host's: {kept}"


def _ours(pids: set[int], basetemp: str) -> set[int]:
    """The pod processes whose pod folder lies under this session's temporary folder. A
    process without POD_ROOT (an SSH session's shell, a detached trainer) is traced by its
    pod id to the pod's folder; one whose folder is nowhere counts as ours (never let a leak
    pass), one whose folder belongs to another worker of this run does not (nor a pod of a
    local RunPod outside the tests)."""
    run_root = str(Path(basetemp).parent) + os.sep
    found = set()
    for pid in pids:
        env = environ_of(pid)
        root = env.get("POD_ROOT")
        command = cmdline_of(pid).encode()
        named = procs.POD_FOLDER.search(command)
        if root is None and named and command.startswith(b"sshd"):
            # A pod's sshd, its title written over its environment: its folder follows -f
            # (it may hold spaces). Another process naming a pod folder is traced by its pod
            # id below.
            root = command[:named.end()].decode().rpartition(" -f ")[2].rstrip("/")
        if root is None and env.get(procs.MARKER):
            pod = env[procs.MARKER]
            where = [str(p) for pattern in (f"*/pods/{pod}", f"*/*/pods/{pod}", f"*/*/*/pods/{pod}")
                     for p in Path(run_root).glob(pattern)]
            root = where[0] if where else _named_folder(command, named)
        if root is None or root.startswith(basetemp):
            found.add(pid)
    return found


def _named_folder(command: bytes, named: re.Match | None) -> str | None:
    """The pod folder a process names in its command line (a trainer's --dataset-dir, an
    rsync's `host:/path`, an ssh ControlMaster's remote command), when the local RunPod
    folder that holds it exists: a pod of a local RunPod outside this run (a developer's
    `make smoke` beside the suite) is then told from a leak of this run, whose local RunPod
    folders lie under the run's temporary folder. The path may hold spaces: each start after
    a space, a quote, a colon or an `=` is tried."""
    if named is None:
        return None
    head = command[:named.end()]
    local_dir = command[:named.start()]
    for start in [0] + [i + 1 for i, byte in enumerate(local_dir) if byte in b" '\":="]:
        candidate = local_dir[start:].decode(errors="replace")
        if candidate.startswith("/") and os.path.isdir(candidate):
            return head[start:].decode(errors="replace").rstrip("/")
    return None


def environ_of(pid: int) -> dict[str, str]:
    try:
        raw = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    except OSError:
        return {}
    return dict(item.decode(errors="replace").split("=", 1) for item in raw if b"=" in item)


def cmdline_of(pid: int) -> str:
    """A process's command line, its arguments joined by spaces; "(gone)" once it ended."""
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return "(gone)"


def _is_test_server(pid: int, basetemp: str) -> bool:
    cmd = cmdline_of(pid)
    return "podcycle.local.server" in cmd and basetemp in cmd
