"""Between commands, against the real local RunPod with real sshd: a vanished pod, concurrent
resumes, a host killed during training, a finished run resumed, local server cold starts."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from podcycle.local import procs
from podcycle.runs import RunFolder
from tests.conftest import (
    INV,
    ROOT,
    SMALL_MODEL,
    child_environ,
    cmdline_of,
    cut,
    environ_of,
    eventually,
    frozen,
    ssh_sessions,
    trainers,
)

pytestmark = pytest.mark.slow


@pytest.fixture
def env(local_runpod, tmp_path: Path, tiny_dataset: Path) -> dict[str, str]:
    return cycle_env(local_runpod, tmp_path, tiny_dataset)


def cycle_env(local_runpod, tmp_path: Path, tiny_dataset: Path) -> dict[str, str]:
    """The environment of a cycle on the module's local RunPod: the tiny dataset, a small
    model, two epochs, the run folders under tmp_path."""
    full = child_environ()
    full.update(POD_CYCLE_LOCAL_DIR=str(local_runpod.dir), RUNPOD_BACKEND="local",
                POD_CYCLE_ARTIFACTS_DIR=str(tmp_path / "artifacts"), TRAIN_EPOCHS="2",
                RUNPOD_DATASET_DIR=str(tiny_dataset), **SMALL_MODEL)
    return full


def inv(env: dict[str, str], *args: str, **extra: str) -> subprocess.CompletedProcess:
    return subprocess.run([INV, *args], cwd=ROOT, env={**env, **extra}, capture_output=True,
                          text=True, timeout=600)


def spawn(env: dict[str, str], *args: str, **extra: str) -> subprocess.Popen:
    return subprocess.Popen([INV, *args], cwd=ROOT, env={**env, **extra}, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)


# The local backend's own CPU preset: its epochs are slow enough that the host is killed well
# before the run's last (the network-volume scenario, where the pod is lost with the host).
PRESET_MODEL = {"TRAIN_BLOCKS": "4", "TRAIN_CHANNELS": "32"}


def wait_for_line(proc: subprocess.Popen, needle: str, seen: list[str]) -> None:
    for line in proc.stdout:
        seen.append(line)
        if needle in line:
            return
    pytest.fail(f"never saw {needle!r}:\n" + "".join(seen[-40:]))


@contextmanager
def training(env: dict[str, str], run_id: str, epochs: int) -> Iterator[subprocess.Popen]:
    """A full-smoke of this run, handed over once its first epoch is done; killed if the test
    leaves it running."""
    proc = spawn(env, "cycle.full-smoke", RUNPOD_CYCLE_RUN_ID=run_id, TRAIN_EPOCHS=str(epochs))
    try:
        wait_for_line(proc, f"[train] epoch 1/{epochs}", [])
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()


def live_pods(local_runpod, run_id: str) -> list:
    return [p for p in local_runpod.client().list_pods()
            if p.name == f"pod-cycle-{run_id}" and not p.status.gone]


def state_of(env: dict[str, str], run_id: str):
    return RunFolder(Path(env["POD_CYCLE_ARTIFACTS_DIR"]), run_id).state


def test_a_vanished_pod_is_replaced_and_the_dataset_pushed_again(env, local_runpod) -> None:
    run_id = "vanish"
    # Paused: the pod is terminated while it trains, however long that takes here.
    with training(env, run_id, epochs=50) as proc, frozen(run_id):
        old = state_of(env, run_id).pod.id
        assert inv(env, "pod.terminate", old, "--yes").returncode == 0  # from another terminal
        rest = proc.communicate(timeout=600)[0]
    assert proc.returncode != 0, rest
    resumed = inv(env, "cycle.full-smoke", "--resume", RUNPOD_CYCLE_RUN_ID=run_id)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"the run's pod {old} no longer exists" in resumed.stderr
    assert "push-dataset: done earlier" not in resumed.stderr
    state = state_of(env, run_id)
    assert state.pod.id != old and state.dataset.pod_id == state.pod.id
    assert len([t for t in state.transfers if t.step == "push-dataset"]) == 2
    assert len(live_pods(local_runpod, run_id)) == 1
    assert "[train] epoch 2/2" in resumed.stdout


@contextmanager
def gateway(local_runpod, run_id: str) -> Iterator[int]:
    """One fixed SSH address for the run's pod, whichever pod that is (a bastion or a port
    forward, given as RUNPOD_SSH_HOST/PORT): each connection goes to the SSH port of the
    run's live pod of the moment. Yields its port."""
    import socket

    listener = socket.create_server(("127.0.0.1", 0))
    client = local_runpod.client()

    def pipe(source: socket.socket, sink: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                sink.sendall(data)
        except OSError:
            pass
        finally:
            for end in (source, sink):
                try:
                    end.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def serve() -> None:
        while True:
            try:
                incoming, _ = listener.accept()
            except OSError:
                return  # closed: the test is over
            pods = live_pods(local_runpod, run_id)
            direct = client.get_pod(pods[0].id).ssh_direct if pods else None
            if direct is None:
                incoming.close()
                continue
            outgoing = socket.create_connection(("127.0.0.1", direct.port))
            for ends in ((incoming, outgoing), (outgoing, incoming)):
                threading.Thread(target=pipe, args=ends, daemon=True).start()

    threading.Thread(target=serve, daemon=True).start()
    try:
        yield listener.getsockname()[1]
    finally:
        listener.close()


def test_a_pod_replaced_behind_one_ssh_address_is_trusted_as_the_new_pod(env, local_runpod
                                                                        ) -> None:
    """Behind one SSH address (a gateway, RunPod giving an address out again), the pod that
    replaced the run's vanished one has a new host key: the start that had just said it
    replaced the pod refused it as "changed within this run: someone may be intercepting",
    on every --resume, while the new pod billed. A new pod of the run starts its trust anew,
    as a restarted one did."""
    run_id = "gateway"
    with gateway(local_runpod, run_id) as port:
        via = {"RUNPOD_CYCLE_RUN_ID": run_id, "RUNPOD_SSH_HOST": "127.0.0.1",
               "RUNPOD_SSH_PORT": str(port)}
        first = inv(env, "cycle.start", **via)
        assert first.returncode == 0, first.stderr[-3000:]
        old = state_of(env, run_id).pod.id
        assert inv(env, "pod.terminate", old, "--yes").returncode == 0  # another terminal
        again = inv(env, "cycle.start", **via)
        assert again.returncode == 0, again.stderr[-3000:]
        assert f"the run's pod {old} no longer exists" in again.stderr
        assert "host key" not in again.stderr
        new = state_of(env, run_id).pod.id
        assert new != old and f"pod {new} answers SSH at root@127.0.0.1:{port}" in again.stderr
        stopped = inv(env, "cycle.stop", **via)
        assert stopped.returncode == 0, stopped.stderr[-3000:]
    assert not [p for p in live_pods(local_runpod, run_id) if p.status.billing]


def test_a_reader_that_goes_away_during_train_interrupts_the_run_and_stops_the_pod(
        env, local_runpod) -> None:
    """`inv cycle.full-smoke | head`: once head has its lines, the next line of the streamed
    training cannot be written. That was called a broken SSH connection, with Invoke's
    thread traceback in the message, the state and runs.show, and a hint that training may
    go on. It is the end a SIGPIPE gives a pipeline's writer: an interruption, the pod
    stopped, --resume to go on."""
    run_id = "reader-gone"
    read, write = os.pipe()
    proc = subprocess.Popen([INV, "cycle.full-smoke"], cwd=ROOT, text=True, stdout=write,
                            stderr=subprocess.PIPE, env={**env, "RUNPOD_CYCLE_RUN_ID": run_id})
    os.close(write)
    try:
        with frozen(run_id, proc):  # the epochs are still to be streamed when head goes
            os.close(read)
        err = proc.communicate(timeout=600)[1]
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, err[-3000:]
    assert "interrupted (the reader of the output went away): the pod was stopped" in err
    assert "Traceback" not in err and "SSH connection" not in err, err[-3000:]
    state = state_of(env, run_id)
    assert (state.outcome, state.steps["train"].status) == ("interrupted", "interrupted")
    assert "the reader of the output went away" in state.steps["train"].error
    pods = live_pods(local_runpod, run_id)
    assert len(pods) == 1 and pods[0].status.stopped, pods  # stopped, its disk kept


def race(env: dict[str, str], args: list[str], run_id: str) -> tuple[str, str]:
    """Two processes at once on one run id: (the refused one's output, the other's)."""
    procs_ = [spawn(env, *args, RUNPOD_CYCLE_RUN_ID=run_id) for _ in range(2)]
    try:
        eventually(lambda: any(p.poll() is not None for p in procs_), timeout=120,
                   what="one of the two processes to end")
        first = next(p for p in procs_ if p.poll() is not None)
        other = next(p for p in procs_ if p is not first)
        refused = first.communicate()[0]
        seen: list[str] = []
        wait_for_line(other, "answers SSH", seen)  # it got (or reused) the pod
        other.send_signal(signal.SIGINT)
        winner = "".join(seen) + other.communicate(timeout=60)[0]
    finally:
        for p in procs_:
            if p.poll() is None:
                p.kill()
    assert first.returncode != 0, refused
    return refused, winner


def test_concurrent_runs_on_one_run_id_make_one_pod_and_one_refusal(env, local_runpod) -> None:
    refused, _ = race(env, ["cycle.full-smoke"], "twice")
    assert "run twice is in use by another process (pid " in refused
    assert "cycle.full-smoke" in refused and "Traceback" not in refused
    assert len(live_pods(local_runpod, "twice")) == 1
    # A run whose start failed (its create was sent, so the run is kept), then two --resume
    # at once. (A start refused before any create leaves no run: test_cluster_inputs.)
    local_runpod.fault(method="POST", path="/v2/pods", status=500, detail="create failed")
    try:
        failed = inv(env, "cycle.full-smoke", RUNPOD_CYCLE_RUN_ID="resumed-twice")
    finally:
        local_runpod.clear_faults()
    assert failed.returncode != 0 and "create failed" in failed.stderr
    refused, _ = race(env, ["cycle.full-smoke", "--resume"], "resumed-twice")
    assert "is in use by another process" in refused
    assert len(live_pods(local_runpod, "resumed-twice")) == 1


def test_host_killed_during_training_then_resumed_gives_one_trainer(env, local_runpod) -> None:
    run_id = "killed"
    with training(env, run_id, epochs=12) as proc, frozen(run_id) as first:
        proc.kill()  # SIGKILL: no finally, no stop, the pod goes on
        proc.wait(30)
        # Still training when the resume starts (paused until the resume has attached).
        assert len(first) == 1
        # Started over SSH, it still has the container's CPU thread limit (sshd's SetEnv).
        threads = environ_of(next(iter(first))).get("OMP_NUM_THREADS")
        assert threads == os.environ["OMP_NUM_THREADS"]
        resumed, seen = spawn(env, "cycle.full-smoke", "--resume", RUNPOD_CYCLE_RUN_ID=run_id
                              ), []
        try:
            wait_for_line(resumed, "already running on this pod", seen)
        except BaseException:
            resumed.kill()
            raise
    most = [0]
    done = threading.Event()

    def watch() -> None:
        while not done.is_set():
            most[0] = max(most[0], len(trainers(run_id)))
            done.wait(0.1)  # a sampling period, ended at once when the resume is over

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    try:
        out = "".join(seen) + resumed.communicate(timeout=600)[0]
    finally:
        done.set()
        watcher.join(5)
        if resumed.poll() is None:
            resumed.kill()
    assert resumed.returncode == 0, out[-3000:]
    assert most[0] == 1, "never two trainers for one run"
    folder = RunFolder(Path(env["POD_CYCLE_ARTIFACTS_DIR"]), run_id)
    assert "sha256 verified" in out
    metrics = json.loads((folder.run_artifacts / "metrics.json").read_text())
    assert metrics["final"]["epoch"] == 12
    assert_resume_changes_nothing(env, local_runpod, folder)


def assert_resume_changes_nothing(env: dict[str, str], local_runpod, folder: RunFolder) -> None:
    """A finished run resumed: no pod start, report and state untouched."""
    run_id = folder.run_id
    pod_id = folder.state.pod.id
    started_at = local_runpod.client().get_pod(pod_id).started_at
    report, state = folder.observations.read_bytes(), folder.state_path.read_bytes()
    before = len(local_runpod.requests())
    again = inv(env, "cycle.full-smoke", "--resume", RUNPOD_CYCLE_RUN_ID=run_id)
    assert again.returncode == 0, again.stderr
    assert "nothing to do" in again.stderr
    assert local_runpod.client().get_pod(pod_id).started_at == started_at
    assert folder.observations.read_bytes() == report
    assert folder.state_path.read_bytes() == state
    actions = [r for r in local_runpod.requests()[before:] if r["path"].endswith("/action")]
    assert actions == []


def test_concurrent_cold_starts_leave_one_server(tmp_path: Path) -> None:
    base = child_environ()
    base["POD_CYCLE_LOCAL_DIR"] = str(tmp_path / "local")
    ups = [subprocess.Popen([INV, "local.up"], cwd=ROOT, env=base, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True) for _ in range(3)]
    urls = {p.communicate(timeout=60)[0].strip() for p in ups}
    assert all(p.returncode == 0 for p in ups)
    assert len(urls) == 1

    def servers() -> list[int]:
        return [p for p in procs.all_pids()
                if f"--state-dir {tmp_path / 'local'}" in cmdline_of(p)]

    assert len(servers()) == 1
    down = subprocess.run([INV, "local.down"], cwd=ROOT, env=base, capture_output=True,
                          text=True, timeout=60)
    assert down.returncode == 0
    assert servers() == []


def test_a_lost_connection_during_train_is_named_and_train_reattaches(env, local_runpod
                                                                      ) -> None:
    """The network drops during train: the loss is named, and the step reconnects and
    attaches to the trainer, which ran on detached (it used to end the step; a full-smoke
    then stopped the pod and the training with it). One trainer, to its last epoch."""
    run_id = "lost-ssh"
    for step in ("start", "push-dataset"):
        assert inv(env, f"cycle.{step}", RUNPOD_CYCLE_RUN_ID=run_id).returncode == 0
    pod_id = state_of(env, run_id).pod.id
    pod_dir = Path(next(p["dir"] for p in local_runpod.pods() if p["id"] == pod_id))
    proc = spawn(env, "cycle.train", RUNPOD_CYCLE_RUN_ID=run_id, TRAIN_EPOCHS="12")
    seen: list[str] = []
    try:
        wait_for_line(proc, "[train] epoch 1/12", seen)
        # Still training when the sessions are cut and when train attaches.
        with frozen(run_id) as first:
            sessions = ssh_sessions(pod_dir)
            assert sessions
            cut(sessions)  # the network drops: the pod's side of every SSH session
            wait_for_line(proc, f"lost the SSH connection to pod {pod_id} during train", seen)
            assert "reconnecting to follow it (1 of 3)" in seen[-1]
            wait_for_line(proc, "already running on this pod", seen)
            assert trainers(run_id) == first, "the trainer runs on without the session"
        rest = "".join(seen) + proc.communicate(timeout=600)[0]
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, rest[-2000:]
    assert "[train] epoch 12/12" in rest
    assert "training failed" not in rest and rest.count("started the trainer") == 1
    assert inv(env, "cycle.stop", RUNPOD_CYCLE_RUN_ID=run_id).returncode == 0


def test_a_pod_left_by_a_killed_host_is_listed_warned_about_and_stopped(env, local_runpod
                                                                       ) -> None:
    run_id = "orphaned"
    # Still training (paused) until leftovers stops its pod.
    with training(env, run_id, epochs=50) as proc, frozen(run_id):
        proc.kill()  # the host dies: no finally, the pod keeps billing
        proc.wait(30)
        orphaned_pod_is_listed_warned_about_and_stopped(env, local_runpod, run_id)


def orphaned_pod_is_listed_warned_about_and_stopped(env, local_runpod, run_id: str) -> None:
    pod_id = state_of(env, run_id).pod.id
    listed = inv(env, "pod.leftovers", "--json")
    assert listed.returncode == 0, listed.stderr
    rows = {row["pod_id"]: row for row in json.loads(listed.stdout)}
    assert rows[pod_id]["run_id"] == run_id and rows[pod_id]["run_folder_here"]
    new = inv(env, "cycle.start", RUNPOD_CYCLE_RUN_ID="next-run")
    assert new.returncode == 0, new.stderr
    assert f"{pod_id} (run {run_id}" in new.stderr and "pod.leftovers --stop" in new.stderr
    assert inv(env, "cycle.stop", RUNPOD_CYCLE_RUN_ID="next-run").returncode == 0
    stopped = inv(env, "pod.leftovers", "--stop", "--json")
    assert stopped.returncode == 0, stopped.stderr
    assert {row["pod_id"]: row["stop"] for row in json.loads(stopped.stdout)}[pod_id] == \
        "stopped"
    assert local_runpod.client().get_pod(pod_id).status.value == "EXITED"
    assert pod_id not in inv(env, "pod.leftovers", "--json").stdout
    # The run's record learns it: runs.show said the pod still ran, its estimate rising.
    record = state_of(env, run_id).pod
    assert record.running_since is None and record.stopped_at is not None
    assert any("by pod.leftovers --stop" in e["text"] for e in state_of(env, run_id).events)


def test_runs_on_a_network_volume_share_the_data_and_resume_from_its_checkpoint(
        env, local_runpod) -> None:
    """Two cycles on one network volume, each on a new pod: the second push moves < 1% of
    the dataset's bytes. A pod terminated mid-training is replaced and --resume continues
    from the checkpoint on the volume."""
    client = local_runpod.client()
    volume = client.create_volume({"name": "shared-data", "size": 10, "dataCenter": "LOCAL-1"})
    try:
        for run_id in ("vol-a", "vol-b"):  # two runs, each on a new pod (trained below)
            started = inv(env, "cycle.start", "--network-volume", "shared-data",
                          RUNPOD_CYCLE_RUN_ID=run_id)
            assert started.returncode == 0, started.stderr
            assert "mounts network volume shared-data" in started.stderr
            for step in ("cycle.push-dataset", "cycle.stop"):
                made = inv(env, step, RUNPOD_CYCLE_RUN_ID=run_id)
                assert made.returncode == 0, made.stdout + made.stderr
        first, second = (state_of(env, r) for r in ("vol-a", "vol-b"))
        assert first.pod.id != second.pod.id
        # One copy on the volume, by content (a local pod sees the volume inside its root).
        assert "/runpod-volume/pod-cycle/datasets/" in first.dataset.remote
        assert first.dataset.remote.split("/runpod-volume/")[1] == \
            second.dataset.remote.split("/runpod-volume/")[1]
        push = [t for t in second.transfers if t.step == "push-dataset"][-1]
        assert push.sent < 0.01 * push.dataset_bytes, (push.sent, push.dataset_bytes)

        run_id = "vol-resume"
        # The preset's 4x32: its epochs are slow enough that the host is killed and the pod
        # lost well before epoch 4, the resume's last.
        preset = PRESET_MODEL
        proc = spawn(env, "cycle.full-smoke", "--network-volume", "shared-data",
                     RUNPOD_CYCLE_RUN_ID=run_id, TRAIN_EPOCHS="40", **preset)
        try:
            wait_for_line(proc, "[train] epoch 2/40", [])  # epoch 1's checkpoint is saved
            proc.kill()
            proc.wait(30)
        finally:
            if proc.poll() is None:
                proc.kill()
        lost = state_of(env, run_id).pod.id
        client.pod_action(lost, "terminate")  # the pod is lost with the host
        resumed = inv(env, "cycle.full-smoke", "--resume", RUNPOD_CYCLE_RUN_ID=run_id,
                      TRAIN_EPOCHS="4", **preset)
        assert resumed.returncode == 0, resumed.stdout + resumed.stderr
        state = state_of(env, run_id)
        assert state.pod.id != lost and state.network_volume.id == volume["id"]
        line = next(x for x in resumed.stdout.splitlines() if "resumed from" in x)
        assert "checkpoint_last.pt at epoch" in line and int(line.split()[-1]) >= 1, line
        assert "[train] epoch 1/4 " not in resumed.stdout  # not from epoch 0
        assert "[train] epoch 4/4 " in resumed.stdout

        # The run made again under its id (its local folder deleted): the volume's folder is
        # the earlier run's, whose model it neither keeps, resumes nor collects as its own.
        model = Path(state.remote.out) / "run_artifacts" / "model.pt"
        kept = model.read_bytes()
        shutil.rmtree(Path(env["POD_CYCLE_ARTIFACTS_DIR"]) / run_id)
        again = inv(env, "cycle.full-smoke", "--network-volume", "shared-data",
                    RUNPOD_CYCLE_RUN_ID=run_id, TRAIN_EPOCHS="4", **preset)
        assert again.returncode != 0, again.stdout + again.stderr
        remade = state_of(env, run_id)
        assert (f"the run's folder on the network volume, {remade.remote.out}, was made by an "
                f"earlier run of the same id ({run_id})") in again.stderr, again.stderr
        assert remade.pod.stopped_at and not remade.done("collect")
        assert not any(remade.pod.id == p.id and not p.status.stopped
                       for p in client.list_pods())
        assert model.read_bytes() == kept
    finally:
        for pod in client.list_pods():
            if pod.name.startswith("pod-cycle-vol") and not pod.status.gone:
                client.pod_action(pod.id, "terminate")
        client.delete_volume(volume["id"])
