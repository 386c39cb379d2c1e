"""runs.list and runs.compare over real runs (issue 14, done-when 1): cycles on the local
RunPod (real sshd, rsync, training of the smallest model on a tiny set), one finished, one
failed, one stopped mid-way by Ctrl-C, then the listing and a comparison read them back."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import urllib.request
from pathlib import Path

import pytest

from podcycle import history
from podcycle.config import resolve
from podcycle.local.procs import alive, all_pids
from tests.conftest import INV, ROOT, child_environ, cmdline_of, eventually, frozen

pytestmark = pytest.mark.slow
# The smallest model, as several words: the extra arguments reach the trainer whole through
# the inline env export of the pod-side script (podcycle.remote.shell_env quotes them).
SMALLEST = "--blocks 1 --channels 8"


def test_three_runs_listed_with_their_status_and_compared(inv, local_runpod, tmp_path: Path,
                                                          tiny_dataset: Path) -> None:
    artifacts = tmp_path / "artifacts"
    env = {"POD_CYCLE_ARTIFACTS_DIR": str(artifacts), "RUNPOD_DATASET_DIR": str(tiny_dataset)}

    def cycle(run_id: str, epochs: int, extra: str) -> subprocess.CompletedProcess:
        return inv("cycle.full-smoke", "--epochs", str(epochs), "--train-extra-args", extra,
                   env={**env, "RUNPOD_CYCLE_RUN_ID": run_id}, timeout=600)

    finished = cycle("e2e-done", 2, SMALLEST)
    assert finished.returncode == 0, finished.stdout[-2000:] + finished.stderr[-2000:]
    small = cycle("e2e-small", 1, "--blocks 1 --channels 4")
    assert small.returncode == 0, small.stdout[-2000:] + small.stderr[-2000:]
    failed = cycle("e2e-failed", 1, "--resume /no/such/checkpoint.pt")  # fails on the pod
    assert failed.returncode != 0 and "training failed on the pod" in failed.stderr

    # Stopped mid-way: Ctrl-C once its first epoch is logged (the run would take 500).
    full = child_environ()
    full.update(env, RUNPOD_BACKEND="local", POD_CYCLE_LOCAL_DIR=str(local_runpod.dir),
                RUNPOD_CYCLE_RUN_ID="e2e-ctrl-c")
    proc = subprocess.Popen([INV, "cycle.full-smoke", "--epochs", "500", "--train-extra-args",
                             SMALLEST], cwd=ROOT, env=full, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    seen: list[str] = []
    try:
        for line in proc.stdout:
            seen.append(line)
            if "[train] epoch 1/500" in line:
                break
        else:
            pytest.fail("training never started:\n" + "".join(seen[-40:]))
        with frozen("e2e-ctrl-c"):  # still training (paused) while the test looks at it
            # The listing calls it running (its process holds the run's lock).
            during = json.loads(inv("runs.list", "--json", "--status", "running",
                                    env=env).stdout)
            assert [row["id"] for row in during] == ["e2e-ctrl-c"]
            # runs.board --live's copy: the pod's event files, over the run's SSH, into
            # <run>/live/tensorboard/ (in this process: the library call the board makes).
            live = artifacts / "e2e-ctrl-c" / "live" / "tensorboard"
            settings = resolve({"backend": "local", "local_dir": str(local_runpod.dir)}, {},
                               environ={}, use_keyring=False)
            copy = history.pod_rsync(settings)
            eventually(lambda: history.sync_live(artifacts, copy, print) == ["e2e-ctrl-c"]
                       and list(live.glob("events.out.tfevents.*")), timeout=60,
                       what="the live copy of the running run's event files")
            proc.send_signal(signal.SIGINT)
            rest = proc.communicate(timeout=120)[0]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 130, "".join(seen[-20:]) + rest

    listed = inv("runs.list", "--json", env=env)
    assert listed.returncode == 0, listed.stderr
    rows = {row["id"]: row for row in json.loads(listed.stdout)}
    assert {k: row["status"] for k, row in rows.items()} == {
        "e2e-done": "finished", "e2e-small": "finished", "e2e-failed": "failed",
        "e2e-ctrl-c": "interrupted"}
    assert [row["id"] for row in json.loads(listed.stdout)] == [
        "e2e-ctrl-c", "e2e-failed", "e2e-small", "e2e-done"]  # newest first
    for run_id in ("e2e-done", "e2e-small"):
        metrics = json.loads((artifacts / run_id / "collected" / "run_artifacts" /
                              "metrics.json").read_text())
        row = rows[run_id]
        assert (row["epochs"], row["val_loss"], row["val_top1"]) == (
            metrics["final"]["epoch"], metrics["final"]["val_loss"],
            metrics["final"]["val_top1"])
        assert row["model"] == "{blocks}x{channels}".format(**metrics["model_config"])
        assert row["dataset_name"] == tiny_dataset.name
        assert row["pod"].startswith("lp") and row["cost_usd"] is not None
    assert rows["e2e-done"]["epochs"] == 2 and rows["e2e-small"]["model"] == "1x4"
    for run_id in ("e2e-failed", "e2e-ctrl-c"):
        assert rows[run_id]["val_loss"] is None and not rows[run_id]["has_metrics"]
    assert "train failed" in rows["e2e-failed"]["status_detail"]
    assert "train" in rows["e2e-ctrl-c"]["status_detail"]
    table = inv("runs.list", env=env).stdout
    assert "interrupted" in table and "failed" in table
    shown = inv("runs.show", "e2e-failed", env=env)
    assert shown.returncode == 0, shown.stderr
    assert shown.stdout.startswith("run e2e-failed: failed (train failed)")
    assert "train           failed" in shown.stdout
    unknown = inv("runs.show", "e2e-nope", env=env)
    assert unknown.returncode != 0 and "Traceback" not in unknown.stderr
    assert "no run 'e2e-nope'" in unknown.stderr and "e2e-ctrl-c" in unknown.stderr

    compared = inv("runs.compare", "e2e-done", "e2e-small", "--json", env=env)
    assert compared.returncode == 0, compared.stderr
    answer = json.loads(compared.stdout)
    picture = Path(answer["picture"])
    assert picture == artifacts / "compare-e2e-done-e2e-small.png"
    assert picture.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    for run in answer["runs"]:
        metrics = json.loads((artifacts / run["id"] / "collected" / "run_artifacts" /
                              "metrics.json").read_text())
        assert run["epochs_history"] == metrics["epochs"]  # both curves, as trained
        assert (run["val_loss"], run["val_top1"], run["batch_size"]) == (
            metrics["final"]["val_loss"], metrics["final"]["val_top1"], metrics["batch_size"])
    text = inv("runs.compare", "e2e-done", "e2e-small", env=env).stdout
    val_loss = next(line for line in text.splitlines() if line.startswith("val loss"))
    assert val_loss.split()[2:] == [f"{run['val_loss']:.4f}" for run in answer["runs"]]
    assert f"picture: {picture}" in text
    refused = inv("runs.compare", "e2e-done", "e2e-ctrl-c", env=env)
    assert refused.returncode != 0
    assert "run e2e-ctrl-c has no metrics to compare (interrupted" in refused.stderr
    # Nothing of the four runs is left billing (the module's server holds only their pods).
    eventually(lambda: all(p["status"] == "EXITED" for p in local_runpod.pods()),
               what=lambda: f"every pod to be stopped: {local_runpod.pods()}")

    # runs.board: TensorBoard over the runs folder serves the finished run's collected event
    # files, one val/loss per epoch equal to metrics.json; Ctrl-C ends it cleanly.
    board_curves_equal_metrics(env, artifacts / "e2e-done")


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def board_curves_equal_metrics(env: dict[str, str], run: Path) -> None:
    import urllib.parse
    import urllib.request

    metrics = json.loads((run / "collected" / "run_artifacts" / "metrics.json").read_text())
    port = free_port()
    full = child_environ()
    full.update(env)
    proc = subprocess.Popen([INV, "runs.board", "--port", str(port)], cwd=ROOT, env=full,
                            text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    base = f"http://127.0.0.1:{port}"

    def get(path: str) -> object:
        try:
            with urllib.request.urlopen(base + path, timeout=5) as answer:
                return json.loads(answer.read())
        except (OSError, ValueError):
            return None

    name = f"{run.name}/collected/run_artifacts/tensorboard"
    try:
        eventually(lambda: name in (get("/data/runs") or []), timeout=180,
                   what=f"TensorBoard on port {port} to list {name}")
        query = urllib.parse.urlencode({"run": name, "tag": "val/loss"})
        points = eventually(lambda: get(f"/data/plugin/scalars/scalars?{query}"), timeout=60,
                            what="the val/loss scalars")
        # Event files hold float32; metrics.json rounds to 5 decimals.
        assert [step for _, step, _ in points] == [row["epoch"] for row in metrics["epochs"]]
        assert [value for _, _, value in points] == pytest.approx(
            [row["val_loss"] for row in metrics["epochs"]], abs=1e-5)
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, err
    assert f"TensorBoard on {base}/ over {run.parent.resolve()}" in out
    assert "Traceback" not in err


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGHUP], ids=["sigterm", "sighup"])
def test_sigterm_ends_the_board_and_its_tensorboard(tmp_path: Path, sig: signal.Signals) -> None:
    """`kill` (or a supervisor's stop), or its terminal closed, on runs.board ends it as Ctrl-C
    does: TensorBoard runs in its own session, so without this it would serve on alone,
    holding the port."""
    artifacts = tmp_path / "artifacts"
    artifacts.mkdir()
    port = free_port()
    env = child_environ()
    env.update(POD_CYCLE_ARTIFACTS_DIR=str(artifacts), RUNPOD_BACKEND="local",
               POD_CYCLE_LOCAL_DIR=str(tmp_path / "local"))
    proc = subprocess.Popen([INV, "runs.board", "--port", str(port)], cwd=ROOT, env=env,
                            text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE)

    def answers() -> bool:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/data/runs", timeout=5):
                return True
        except OSError:
            return False

    def boards() -> list[int]:
        return [pid for pid in all_pids()
                if "tensorboard.main" in (cmd := cmdline_of(pid)) and f"--port {port}" in cmd]

    try:
        eventually(answers, timeout=180, what=f"TensorBoard to answer on port {port}")
        served_by = boards()
        assert len(served_by) == 1
        proc.send_signal(sig)
        proc.wait(timeout=60)
        left = [pid for pid in served_by if alive(pid)]
    finally:
        if proc.poll() is None:
            proc.kill()
        for pid in boards():  # a TensorBoard left holds the pipes: ended before reading them
            os.kill(pid, signal.SIGKILL)
        err = proc.communicate()[1]
    assert not left, "TensorBoard served on after the board ended"
    assert proc.returncode == 0, err
    assert "stopping TensorBoard" in err and "Traceback" not in err
    assert not answers()


def test_a_board_on_a_port_in_use_is_refused_before_its_url(tmp_path: Path,
                                                            monkeypatch) -> None:
    """runs.board on a port another server holds printed "TensorBoard on http://...:6006/"
    (someone else's page there), then failed with a guess ("a port in use? try --port")."""
    import socket

    artifacts = tmp_path / "artifacts"
    artifacts.mkdir()
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        assert history.port_in_use("127.0.0.1", port) == "the port is in use"
        env = child_environ()
        env.update(POD_CYCLE_ARTIFACTS_DIR=str(artifacts))
        result = subprocess.run([INV, "runs.board", "--port", str(port)], cwd=ROOT, env=env,
                                capture_output=True, text=True, timeout=60)
    assert result.returncode != 0 and "TensorBoard on" not in result.stdout
    assert result.stderr.startswith(f"error: cannot serve on 127.0.0.1:{port}: the port is "
                                    "in use"), result.stderr
    assert f"pass --port {port + 1}" in result.stderr
    assert history.port_in_use("127.0.0.1", port) is None  # let go: free again
    # A host that is no address of this machine: the remedy named another port.
    nowhere = subprocess.run([INV, "runs.board", "--host", "no such host"], cwd=ROOT, env=env,
                             capture_output=True, text=True, timeout=60)
    assert nowhere.returncode != 0 and "cannot serve on no such host:6006" in nowhere.stderr
    assert "give --host an address of this machine" in nowhere.stderr, nowhere.stderr
    assert "--port" not in nowhere.stderr
    # Its "exposes the board to whoever reaches that address" came first, of no address.
    assert "exposes the board" not in nowhere.stderr
    # 'localhost' is checked where TensorBoard binds it, IPv4, even where the resolver
    # answers ::1 first (Debian's /etc/hosts, macOS): played here by a resolver that does.
    real = socket.getaddrinfo

    def v6_first(host: str, *args: object, **kwargs: object) -> list:
        answers = real(host, *args, **kwargs)
        if host == "localhost":
            answers = [(socket.AF_INET6, socket.SOCK_STREAM, 6, "", ("::1", args[0], 0, 0)),
                       *answers]
        return answers

    monkeypatch.setattr(socket, "getaddrinfo", v6_first)
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        assert history.port_in_use("localhost", holder.getsockname()[1]) == \
            "the port is in use"
