"""The spend guard firing for real, in the pod, while the host is gone or still watching:
scenarios that wait out a deadline of half a minute or a minute, on a trainer paused meanwhile.
They spend that time waiting, not computing, so they have a module of their own that the
suite starts first (tests/conftest.py LONGEST_FIRST): the wait then runs beside the
CPU-bound scenarios instead of after them."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from podcycle.runs import RunFolder
from tests.conftest import INV, ROOT, child_environ, eventually, frozen
from tests.test_run_state import cycle_env, inv, spawn, state_of, wait_for_line

pytestmark = pytest.mark.slow


@pytest.fixture
def env(local_runpod, tmp_path: Path, tiny_dataset: Path) -> dict[str, str]:
    return cycle_env(local_runpod, tmp_path, tiny_dataset)


def test_the_spend_guard_stops_a_pod_whose_host_died(env, local_runpod) -> None:
    """--max-minutes 1, host killed as training starts: the pod stops itself through the API
    (the server's log shows the stop within 90 s of the guard's deadline), and the run's
    report says the guard fired. The host dies at the train step's first line, not after an
    epoch: on a loaded machine an epoch can outlast the guard."""
    from datetime import datetime, timedelta

    from podcycle.pods import read_logs

    run_id = "guarded"
    proc = spawn(env, "cycle.full-smoke", "--max-minutes", "1", RUNPOD_CYCLE_RUN_ID=run_id,
                 TRAIN_EPOCHS="200")
    seen: list[str] = []
    try:
        wait_for_line(proc, "==> train", seen)
        assert any("spend guard: the pod stops itself 1 minute(s)" in s for s in seen)
        # Paused while the guard's minute runs out: the pod is still training when it stops.
        with frozen(run_id):
            proc.kill()  # the host dies mid-training; nothing on this side stops the pod
            proc.wait(30)
            pod_id = state_of(env, run_id).pod.id
            client = local_runpod.client()
            eventually(lambda: client.get_pod(pod_id).status.value != "RUNNING",
                       timeout=180, interval=1, what="the spend guard to stop the pod")
    finally:
        if proc.poll() is None:
            proc.kill()
    events = list(read_logs(client, pod_id, tail=500))
    planned = next(e for e in events if "[spend_guard] pod" in e.line and "stops at" in e.line)
    stopped = next(e for e in events if e.source == "system" and "action stop" in e.line)
    due = datetime.strptime(planned.line.split("stops at ")[1][:9], "%H:%M:%SZ").time()
    day = datetime.fromisoformat(planned.ts.replace("Z", "+00:00"))
    due_at = day.replace(hour=due.hour, minute=due.minute, second=due.second)
    if due_at < day:  # the deadline fell after midnight
        due_at += timedelta(days=1)
    stop_at = datetime.fromisoformat(stopped.ts.replace("Z", "+00:00"))
    assert 0 <= (stop_at - due_at).total_seconds() <= 90, (planned.line, stopped.ts)
    finished = inv(env, "cycle.stop", RUNPOD_CYCLE_RUN_ID=run_id)
    assert finished.returncode == 0, finished.stderr
    assert "the spend guard stopped pod" in finished.stderr
    report = RunFolder(Path(env["POD_CYCLE_ARTIFACTS_DIR"]), run_id).observations.read_text()
    assert "spend guard: the pod stops itself 1 min after boot (--max-minutes 1); " \
           "**it fired and stopped the pod**" in report


def test_the_spend_guard_stopping_the_pod_mid_train_is_reported_as_such(
        runpod, tmp_path, tiny_dataset) -> None:
    """No host trouble at all: the pod's own guard (--max-minutes 0.5) stops it while it
    trains. The cycle says so (not "lost the SSH connection"), and state and report say
    fired: true, whatever the cycle's own stop found afterwards."""
    artifacts = tmp_path / "artifacts"
    run_id = "guard-mid-train"
    env = child_environ()
    env.update(RUNPOD_BACKEND="local", POD_CYCLE_LOCAL_DIR=str(runpod.dir),
               POD_CYCLE_ARTIFACTS_DIR=str(artifacts), TRAIN_EPOCHS="400",
               RUNPOD_CYCLE_RUN_ID=run_id, RUNPOD_DATASET_DIR=str(tiny_dataset))
    proc = subprocess.Popen([INV, "cycle.full-smoke", "--max-minutes", "0.5"], cwd=ROOT,
                            env=env, text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        with frozen(run_id, proc):  # still training (paused) when the guard stops it
            stdout, stderr = proc.communicate(timeout=600)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    out = stdout + stderr
    assert proc.returncode != 0, out[-3000:]
    assert "[cycle_train] started the trainer" in out, out[-3000:]  # it was training
    assert "the spend guard stopped pod" in out and "after 0.5 minute(s) (--max-minutes " \
           "0.5), during train" in out, out[-3000:]
    assert "lost the SSH connection" not in out
    assert "training may still be running" not in out
    assert "training failed" not in out
    run = RunFolder(artifacts, run_id)
    guard = run.state.pod.guard
    assert guard.fired is True and "spend guard fired" in guard.fired_line
    assert "during train" in run.state.steps["train"].error
    report = run.observations.read_text()
    assert "**it fired and stopped the pod** (fired: true): the spend guard stopped the pod " \
           "after 0.5 minute(s)" in report
    assert runpod.client().get_pod(run.state.pod.id).status.value == "EXITED"
    runpod.client().delete_pod(run.state.pod.id)
