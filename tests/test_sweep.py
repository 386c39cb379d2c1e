"""Sweeps end to end on the local RunPod: real pods, sshd, rsync and training per trial.

Three sweeps, kept small (the suite is CPU-bound): 4 trials 2 at a time to its end (ranking,
report, pods stopped, never more than 2 pods at once, status and stop); a host killed with -9
mid-sweep and resumed; a budget that holds trials back, each pod carrying its share."""

from __future__ import annotations

import json
import os
import signal
import subprocess
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import pytest

from podcycle.runs import RunFolder
from tests.conftest import INV, ROOT, child_environ, frozen

pytestmark = pytest.mark.slow
POD_PREFIX = "pod-cycle-"


def sweep_file(tmp_path: Path, name: str, dataset: Path, *, lrs: list[float],
               batch_sizes: list[int] | None = None, extra: str = "") -> Path:
    """A sweep of the smallest model (1x8) for 1 epoch on the tiny dataset: the sweep's
    mechanics, not the models, are under test."""
    lines = ["[sweep]", f'name = "{name}"', 'objective = "val_loss"', "parallel = 2",
             f'dataset = "{dataset}"', "epochs = 1", "blocks = 1", "channels = 8", extra,
             "[params.lr]", f"grid = {lrs}"]
    if batch_sizes:
        lines += ["[params.batch_size]", f"grid = {batch_sizes}"]
    path = tmp_path / f"{name}.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


def sweep_env(tmp_path: Path) -> dict[str, str]:
    return {"POD_CYCLE_ARTIFACTS_DIR": str(tmp_path / "artifacts")}


def local_state(runpod) -> dict[str, Any]:
    return json.loads((runpod.dir / "state.json").read_text())


def sweep_pods(runpod, name: str) -> dict[str, dict[str, Any]]:
    """The local RunPod's pods of this sweep's trials, by id."""
    return {pod_id: pod for pod_id, pod in local_state(runpod)["pods"].items()
            if pod["name"].startswith(f"{POD_PREFIX}{name}-t")}


def most_at_once(runpod, name: str) -> int:
    """The most pods of the sweep billing at the same moment, from the server's own billing
    intervals (a pod bills from its create or start until its stop)."""
    billing = local_state(runpod)["billing"]
    edges = []
    for pod_id in sweep_pods(runpod, name):
        for start, end in billing[pod_id]["intervals"]:
            edges += [(start, 1), (end if end is not None else float("inf"), -1)]
    now = most = 0
    for _, step in sorted(edges, key=lambda e: (e[0], e[1])):  # an end before a start
        now += step
        most = max(most, now)
    return most


def status_of(inv, tmp_path: Path, name: str) -> dict[str, Any]:
    result = inv("sweep.status", name, "--json", env=sweep_env(tmp_path))
    assert result.returncode == 0, result.stderr[-2000:]
    return json.loads(result.stdout)


def run_state(tmp_path: Path, run_id: str) -> dict[str, Any]:
    return json.loads(RunFolder(tmp_path / "artifacts", run_id).state_path.read_text())


def assert_every_pod_stopped(runpod, name: str, count: int) -> None:
    pods = sweep_pods(runpod, name)
    assert len(pods) == count, sorted(p["name"] for p in pods.values())
    assert all(p["status"] == "EXITED" for p in pods.values()), \
        {p["name"]: p["status"] for p in pods.values()}


def test_four_trials_two_at_a_time_ranked_reported_and_stopped(inv, local_runpod, tmp_path,
                                                               tiny_dataset) -> None:
    config = sweep_file(tmp_path, "four", tiny_dataset, lrs=[0.001, 0.01],
                        batch_sizes=[64, 128], extra="max_cost = 1.0\nmax_minutes = 30")
    result = inv("sweep.run", "--config", str(config), "--json", env=sweep_env(tmp_path),
                 timeout=1800)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    status = json.loads(result.stdout)
    trials = status["trials"]
    assert [t["state"] for t in trials] == ["COMPLETE"] * 4
    assert sorted((t["params"]["lr"], t["params"]["batch_size"]) for t in trials) == \
        [(0.001, 64), (0.001, 128), (0.01, 64), (0.01, 128)]
    # Each trial is an ordinary run: its value is its metrics.json's last val_loss, and its
    # pod's spend guard carries its share of the budget.
    for trial in trials:
        assert trial["run_id"] == f"four-t{trial['number']}"
        metrics = json.loads((RunFolder(tmp_path / "artifacts", trial["run_id"]).run_artifacts
                              / "metrics.json").read_text())
        assert trial["value"] == metrics["epochs"][-1]["val_loss"]
        guard = run_state(tmp_path, trial["run_id"])["pod"]["guard"]
        assert guard["max_cost"] == status["share"] and guard["max_minutes"] == 30
        assert trial["cost"] and 0 < trial["cost"] <= status["share"]
    best = min(trials, key=lambda t: t["value"])
    assert status["best"]["run_id"] == best["run_id"]

    # The report ranks the trials by val loss, names the best run, draws both pictures and
    # ends with every pod stopped.
    folder = tmp_path / "sweeps" / "four"
    report = (folder / "reports" / "sweep.md").read_text()
    table = report.split("## Trials")[1].split("## Pictures")[0]
    ranked = [line.split("|")[2].strip() for line in table.splitlines()
              if line.startswith("| ") and line.split("|")[1].strip().isdigit()]
    assert ranked == [str(t["number"]) for t in sorted(trials, key=lambda t: t["value"])]
    assert f"run `{best['run_id']}`" in report.split("## Trials")[0]
    for picture in ("objective_vs_params.png", "curves.png"):
        assert (folder / "reports" / picture).read_bytes().startswith(b"\x89PNG")
    assert "All 4 pod(s) are stopped." in report
    assert_every_pod_stopped(local_runpod, "four", 4)
    assert most_at_once(local_runpod, "four") == 2

    # status says the same; stop finds nothing billing.
    assert status_of(inv, tmp_path, "four")["status"] == "finished"
    stopped = inv("sweep.stop", "four", env=sweep_env(tmp_path))
    assert stopped.returncode == 0, stopped.stderr
    assert "no pod of its trials is billing" in stopped.stderr


def test_a_host_killed_mid_sweep_resumes_without_rerunning_finished_trials(
        inv, local_runpod, tmp_path, tiny_dataset) -> None:
    """kill -9 of the sweep and of every cycle it started (the host dies): the running
    trials' pods are left running. --resume keeps the finished trial as it is, continues
    the interrupted runs on their own pods, and leaves nothing billing."""
    config = sweep_file(tmp_path, "crash", tiny_dataset, lrs=[0.001, 0.003, 0.01])
    env = child_environ()
    env.update(sweep_env(tmp_path), RUNPOD_BACKEND="local",
               POD_CYCLE_LOCAL_DIR=str(local_runpod.dir))
    proc = subprocess.Popen([INV, "sweep.run", "--config", str(config)], cwd=ROOT, env=env,
                            text=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            start_new_session=True)
    seen: list[str] = []
    try:
        for line in proc.stdout:
            seen.append(line)
            if " finished: val_loss " in line:
                break
        else:
            pytest.fail("no trial finished:\n" + "".join(seen[-40:]))
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # the host dies: the sweep and its cycles
        proc.wait(timeout=30)
    first = int(seen[-1].split()[1])
    folder = RunFolder(tmp_path / "artifacts", f"crash-t{first}")
    kept = folder.state_path.read_bytes(), folder.state_path.stat().st_mtime_ns
    log = tmp_path / "sweeps" / "crash" / "trials" / f"t{first}.log"
    log_size = log.stat().st_size

    crashed = status_of(inv, tmp_path, "crash")
    assert crashed["status"] == "crashed"
    assert [t["state"] for t in crashed["trials"]].count("COMPLETE") == 1
    # No process runs them now (the host died with their cycles): said stopped, while their
    # pods may still bill (the pod column says so).
    left_running = [t["run_id"] for t in crashed["trials"] if t["state"] == "STOPPED"]
    assert left_running, "a trial was running when the host died"
    assert "RUNNING" not in [t["state"] for t in crashed["trials"]]

    # --trials may change on a resume, but not past the grid: Optuna's grid sampler then hands
    # out combinations again, each repeat a paid pod (a new sweep is refused the same way).
    too_many = inv("sweep.run", "--resume", "crash", "--trials", "4", env=sweep_env(tmp_path))
    assert too_many.returncode != 0 and "Traceback" not in too_many.stderr
    assert "--trials 4 is more than sweep crash's grid of 3 combination(s)" in too_many.stderr
    resumed = inv("sweep.run", "--resume", "crash", "--json", env=sweep_env(tmp_path),
                  timeout=1800)
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    status = json.loads(resumed.stdout)
    assert [t["state"] for t in status["trials"]] == ["COMPLETE"] * 3
    assert sorted(t["params"]["lr"] for t in status["trials"]) == [0.001, 0.003, 0.01]
    # The finished trial was not run again: its run and its log are as they were.
    assert (folder.state_path.read_bytes(), folder.state_path.stat().st_mtime_ns) == kept
    assert log.stat().st_size == log_size
    assert f"run crash-t{first}): " not in resumed.stderr  # never launched again
    # An interrupted run went on (its missing steps only), on its own pod, never doubled.
    for run_id in left_running:
        assert f"run {run_id}" in resumed.stderr
    names = [p["name"] for p in sweep_pods(local_runpod, "crash").values()]
    assert sorted(names) == sorted(set(names)) and len(names) == 3
    assert_every_pod_stopped(local_runpod, "crash", 3)
    leftovers = inv("pod.leftovers", "--json", env=sweep_env(tmp_path))
    assert leftovers.returncode == 0, leftovers.stderr
    assert json.loads(leftovers.stdout) == []
    assert status_of(inv, tmp_path, "crash")["status"] == "finished"


def test_a_budget_below_the_grids_estimate_stops_launching(inv, local_runpod, tmp_path,
                                                          tiny_dataset) -> None:
    """On an RTX A5000 ($0.27/h in the local catalog) a 30-minute trial's worst case is
    $0.135: a budget of $0.13501 lets one trial start; the next waits for it and then finds
    the spent plus its share over the budget. Any spend does it: the first trial's pod need
    bill 0.14 s. (The budget was $0.1353, which needed 4 s: a trial on a quiet machine now
    bills less, and a second trial started.)"""
    config = sweep_file(tmp_path, "budget", tiny_dataset, lrs=[0.001, 0.01],
                        batch_sizes=[64, 128],
                        extra='max_minutes = 30\ngpu_type_id = "NVIDIA RTX A5000"')
    result = inv("sweep.run", "--config", str(config), "--max-cost", "0.13501",
                 env=sweep_env(tmp_path), timeout=1200)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "below the 4 trials' worst case ($0.5400)" in result.stderr
    assert "budget reached: $" in result.stderr
    assert "running of $0.1350; 3 trial(s) not started" in result.stderr
    status = status_of(inv, tmp_path, "budget")
    assert status["status"] == "budget reached" and status["not_started"] == 3
    assert status["share"] == 0.135 and status["budget"] == 0.13501
    assert [t["state"] for t in status["trials"]] == ["COMPLETE"]
    guard = run_state(tmp_path, "budget-t0")["pod"]["guard"]
    assert guard["max_cost"] == 0.135 and guard["max_minutes"] == 30
    assert status["spent"] + status["share"] > status["budget"]
    assert_every_pod_stopped(local_runpod, "budget", 1)
    report = (tmp_path / "sweeps" / "budget" / "reports" / "sweep.md").read_text()
    assert "- status: budget reached" in report and "3 not started (budget)" in report


def test_sweep_stop_interrupts_a_live_sweep_and_stops_every_pod(inv, local_runpod, tmp_path,
                                                                tiny_dataset) -> None:
    """sweep.stop on a live sweep: its process is interrupted as by Ctrl-C, each trial stops
    its pod, the sweep exits 130 saying how to resume, and nothing is left billing. The sweep
    runs as `inv sweep.run ... &` in a script starts it: with SIGINT ignored, for it and for
    every trial it starts."""
    config = sweep_file(tmp_path, "halt", tiny_dataset, lrs=[0.001, 0.01])
    env = child_environ()
    env.update(sweep_env(tmp_path), RUNPOD_BACKEND="local",
               POD_CYCLE_LOCAL_DIR=str(local_runpod.dir))
    proc = subprocess.Popen(["bash", "-c", 'trap "" INT; exec "$@"', "bash", INV, "sweep.run",
                             "--config", str(config), "-e", "500"],
                            cwd=ROOT, env=env, text=True, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT)
    seen: list[str] = []
    training: set[str] = set()
    try:
        with ExitStack() as paused:  # each trial's trainer paused once it trains (and stopped so)
            for line in proc.stdout:
                seen.append(line)
                trial = line.split(":")[0]  # "trial N"
                if ": epoch 1/500 " in line and trial not in training:
                    training.add(trial)
                    paused.enter_context(frozen(f"halt-t{trial.split()[1]}"))
                    if len(training) == 2:
                        break
            else:
                pytest.fail("the trials never trained:\n" + "".join(seen[-40:]))
            assert len(sweep_pods(local_runpod, "halt")) == 2
            stopped = inv("sweep.stop", "halt", "--json", env=sweep_env(tmp_path), timeout=300)
            rest = proc.communicate(timeout=120)[0]
    finally:
        if proc.poll() is None:
            proc.kill()
    assert stopped.returncode == 0, stopped.stderr[-2000:]
    assert f"sweep halt runs in pid {proc.pid}: interrupting it" in stopped.stderr
    assert json.loads(stopped.stdout)[0] == {"what": "sweep", "pid": proc.pid}
    assert proc.returncode == 130, rest[-3000:]
    assert "continue with inv sweep.run --resume halt" in rest
    assert_every_pod_stopped(local_runpod, "halt", 2)
    status = status_of(inv, tmp_path, "halt")
    assert status["status"] == "stopped"
    assert [t["state"] for t in status["trials"]] == ["STOPPED", "STOPPED"]
    leftovers = inv("pod.leftovers", "--json", env=sweep_env(tmp_path))
    assert json.loads(leftovers.stdout) == []
