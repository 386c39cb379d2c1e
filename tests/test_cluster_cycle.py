"""A cluster run end to end on the local RunPod: a cluster of local pods (real sshd, real
rsync) whose nodes reach each other over loopback, torchrun with gloo on CPU. Done when: the
run trains with world size 4 on 2 nodes x 2 trainers, every rank ends with the same weights,
only the primary writes the artifacts; the operator's SSH sessions cut mid-training are
reconnected to node by node while the trainers run on; a node killed mid-training (kill -9 of
its processes) fails the run naming the node (not its peer), every member goes and no trainer
is left; --resume then makes a new cluster and finishes from the last checkpoint, deleting the
cluster at the end. Tiny data and the smallest model: these are about the mechanics, not the
model."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import threading
from pathlib import Path
from typing import Any

import pytest

from podcycle.local import procs
from tests.conftest import (
    INV,
    ROOT,
    child_environ,
    cut,
    eventually,
    frozen,
    ssh_sessions,
    trainers,
)

pytestmark = pytest.mark.slow

SMALL = ["--train-extra-args", "--blocks 1 --channels 8"]


def env_for(runpod, tmp_path: Path, run_id: str) -> dict[str, str]:
    return {"RUNPOD_BACKEND": "local", "POD_CYCLE_LOCAL_DIR": str(runpod.dir),
            "RUNPOD_CYCLE_RUN_ID": run_id, "POD_CYCLE_ARTIFACTS_DIR": str(tmp_path / "art")}


def state_of(tmp_path: Path, run_id: str) -> dict[str, Any]:
    try:
        return json.loads((tmp_path / "art" / run_id / "state.json").read_text())
    except (OSError, ValueError):
        return {}


def member_ids(state: dict[str, Any]) -> list[str]:
    return [m["pod_id"] for m in (state.get("cluster") or {}).get("members") or []]


def nothing_runs_on(pod_ids: list[str]) -> bool:
    return not any(procs.marked_processes_for(pod) for pod in pod_ids)


def cluster_gone(runpod, cluster_id: str, pod_ids: list[str]) -> bool:
    client = runpod.client()
    live = {c.id for c in client.list_clusters()}
    pods = {p["id"]: p for p in runpod.pods()}
    return cluster_id not in live and all(
        pod not in pods or pods[pod].get("status") == "TERMINATED" for pod in pod_ids)


def settle(proc: subprocess.Popen, reader: threading.Thread) -> None:
    """The cycle a test drove ended (killed if a failed check left it running), its output
    read to the end."""
    if proc.poll() is None:
        proc.kill()
        proc.wait()
    reader.join(10)


def primary_checkpoint(tmp_path: Path, run_id: str) -> Path | None:
    """The last checkpoint on the run's primary node, once it has written one."""
    remote = state_of(tmp_path, run_id).get("remote") or {}
    found = Path(remote["out"]) / "run_artifacts" / "checkpoint_last.pt" \
        if remote.get("out") else None
    return found if found and found.is_file() else None


def same_weights(metrics: dict[str, Any]) -> list[str]:
    hashes = metrics["rank_weights_sha256"]
    hashes = list(hashes.values()) if isinstance(hashes, dict) else list(hashes)
    assert len(set(hashes)) == 1, f"the ranks ended with different weights: {hashes}"
    return hashes


def test_full_smoke_on_two_nodes_of_two_trainers(runpod, inv, tiny_dataset, tmp_path) -> None:
    run_id = "cluster-smoke"
    env = env_for(runpod, tmp_path, run_id)
    # --keep-pod so the nodes' folders can be looked at; the deletion at the end of a run is
    # checked by the resume below, which ends on its own.
    result = inv("cycle.full-smoke", "--nodes", "2", "--gpu-count", "2", "--epochs", "2",
                 *SMALL, "-d", str(tiny_dataset), "--keep-pod", env=env, timeout=900)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    run = tmp_path / "art" / run_id
    metrics = json.loads((run / "collected" / "run_artifacts" / "metrics.json").read_text())
    assert metrics["world_size"] == 4 and metrics["nodes"] == 2
    assert len(same_weights(metrics)) == 4
    state = state_of(tmp_path, run_id)
    cluster = state["cluster"]
    assert cluster["pod_count"] == 2 and cluster["gpu_count_per_pod"] == 2
    assert [m["rank"] for m in cluster["members"]] == [0, 1]
    # Billed from its create, as RunPod bills the nodes' boot, not from when SSH answered.
    assert cluster["billing_since"] == cluster["created_at"] <= cluster["running_since"]
    assert state["pod"]["billing_since"] == cluster["billing_since"]
    primary_out = Path(state["remote"]["out"]) / "run_artifacts"
    other = cluster["members"][1]
    other_out = Path(other["paths"]["out"]) / "run_artifacts"
    assert (primary_out / "model.pt").is_file() and (primary_out / "metrics.json").is_file()
    assert (other_out / "train.log").is_file(), "node 1 ran its own cycle_train.sh"
    written = sorted(p.name for p in other_out.iterdir() if p.name != "train.log")
    assert written == [], f"node 1 wrote artifacts: {written}"
    assert "--keep-pod: cluster" in result.stderr and "inv cluster.delete" in result.stderr
    # What is shown about it, then its deletion by hand.
    listed = inv("cluster.list", "--json", env=env)
    assert cluster["id"] in [c["id"] for c in json.loads(listed.stdout)]
    status = inv("cluster.status", cluster["id"], env=env)
    assert other["pod_id"] in status.stdout and "RUNNING" in status.stdout
    left = json.loads(inv("pod.leftovers", "--json", env=env).stdout)
    [ours] = [item for item in left if item.get("cluster_id") == cluster["id"]]
    assert ours["kind"] == "leftover" and ours["run_id"] == run_id
    assert not any(item.get("pod_id") in member_ids(state) for item in left)
    refused = inv("cluster.delete", cluster["id"], env=env)
    assert refused.returncode != 0 and "--yes" in refused.stderr
    deleted = inv("cluster.delete", cluster["id"], "--yes", "--json", env=env)
    assert json.loads(deleted.stdout)["outcome"] == "deleted"
    # The run's record takes the delete: runs.show said the cluster ran on, its estimated
    # cost (a sweep's spending with it) rising on and on.
    assert f"cluster {cluster['id']}: deleted (recorded in run {run_id})" in deleted.stderr
    after = state_of(tmp_path, run_id)
    assert after["cluster"]["deleted_at"] and after["cluster"]["running_since"] is None
    assert any("by cluster.delete" in e["text"] for e in after["events"])
    ids = member_ids(state)
    eventually(lambda: cluster_gone(runpod, cluster["id"], ids), timeout=60,
               what="the cluster and its members to be gone")
    eventually(lambda: nothing_runs_on(ids), timeout=30, what="no process left on the nodes")


def test_a_killed_node_fails_the_run_and_resume_finishes_on_a_new_cluster(
        runpod, tiny_dataset, tmp_path) -> None:
    run_id = "cluster-kill"
    env = {**child_environ(),
           **env_for(runpod, tmp_path, run_id)}
    first = subprocess.Popen(
        [INV, "cycle.full-smoke", "--nodes", "2", "--epochs", "40", *SMALL,
         "-d", str(tiny_dataset)], cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE, text=True)
    said: list[str] = []

    def read() -> None:
        for line in first.stderr:
            said.append(line)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        eventually(lambda: primary_checkpoint(tmp_path, run_id), timeout=600, interval=0.2,
                   what="the primary's first checkpoint")
        state = state_of(tmp_path, run_id)
        old_cluster = state["cluster"]["id"]
        victim = state["cluster"]["members"][1]["pod_id"]
        dirs = {p["id"]: Path(p["dir"]) for p in runpod.pods()}
        # Both nodes' trainers paused while the test acts (a slow GPU's epoch), so the
        # training is still on when the node is killed.
        with frozen(run_id), frozen(f"{run_id}-node1") as node1_trainers:
            # The operator's network drops: the pod side of every SSH session to both nodes.
            # Each node is reached again and followed; its trainer runs on.
            sessions = {pod: ssh_sessions(dirs[pod]) for pod in member_ids(state)}
            assert all(sessions.values())
            cut(set().union(*sessions.values()))
            for rank in (0, 1):
                eventually(lambda rank=rank: any(
                    f"lost the SSH connection to node rank {rank} (pod" in line
                    and "reconnecting to follow it (1 of 3)" in line for line in said),
                    timeout=60, what=lambda: "the reconnects: " + "".join(said[-20:]))
            for rank, pod in enumerate(member_ids(state)):
                eventually(lambda rank=rank, pod=pod: any(
                    f"node rank {rank} (pod {pod}) reached again: its trainer running" in line
                    for line in said), timeout=60,
                    what=lambda: "the nodes reached again: " + "".join(said[-20:]))
                assert ssh_sessions(dirs[pod]) - sessions[pod], "a new SSH session to the node"
            assert trainers(f"{run_id}-node1") == node1_trainers
            killed = procs.marked_processes_for(victim)  # looked for while paused: a slow
            assert killed, "node 1 has processes to kill"  # scan is no epochs trained on
        # Then, the trainers going on, node 1 is lost for good (its host dies): every process
        # of it killed.
        for pid in killed:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        # The bound (60 s from the kill) is the issue's: the run names the killed node in it
        # (not node 0, whose collective fails a moment later: the failure waits for node 1's
        # reconnect, which fails within RECONNECT_OPEN_SECONDS), then deletes the cluster.
        eventually(lambda: any(f"node rank 1 (pod {victim})" in line
                               and "reconnecting" not in line for line in said),
                   timeout=60, what=lambda: "the failure naming node 1: " + "".join(said[-20:]))
        first.wait(timeout=300)
    finally:
        settle(first, reader)
    err = "".join(said)
    assert first.returncode != 0
    assert f"error: node rank 1 (pod {victim})" in err, err[-3000:]
    ids = member_ids(state)
    eventually(lambda: cluster_gone(runpod, old_cluster, ids), timeout=60,
               what="every member of the failed cluster to be gone")
    eventually(lambda: nothing_runs_on(ids), timeout=30, what="no trainer left on any node")
    failed = state_of(tmp_path, run_id)
    assert failed["node_failures"][0]["rank"] == 1
    reconnects = [e["text"] for e in failed["events"]
                  if "; reconnected, its trainer running" in e["text"]]
    assert len(reconnects) >= 2, [e["text"] for e in failed["events"]]
    assert failed["cluster"]["deleted_at"]
    saved = tmp_path / "art" / run_id / "collected" / "run_artifacts" / "checkpoint_last.pt"
    assert saved.is_file(), "the primary's last checkpoint came home"

    # With a data centre set for the new cluster (a standing RUNPOD_DATA_CENTER in .env):
    # it was refused as "this run is one pod" (--nodes left out: the settings' 1, not the
    # run's recorded 2), and every resume of a cluster run with it.
    resumed = subprocess.run(
        [INV, "cycle.full-smoke", "--resume", "--epochs", "3", *SMALL, "-d",
         str(tiny_dataset)], cwd=ROOT, env={**env, "RUNPOD_DATA_CENTER": "LOCAL-1"},
        capture_output=True, text=True, timeout=900)
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    assert "pushed the run's last checkpoint" in resumed.stderr
    done = state_of(tmp_path, run_id)
    assert done["cluster"]["id"] != old_cluster and done["cluster"]["deleted_at"]
    assert done["cluster"]["data_center"] == "LOCAL-1"
    log = (tmp_path / "art" / run_id / "collected" / "run_artifacts" / "train.log").read_text()
    assert "resumed from" in log, log[-2000:]
    metrics = json.loads((tmp_path / "art" / run_id / "collected" / "run_artifacts" /
                          "metrics.json").read_text())
    assert metrics["world_size"] == 2 and metrics["final"]["epoch"] == 3
    same_weights(metrics)
    new_ids = member_ids(done)
    eventually(lambda: cluster_gone(runpod, done["cluster"]["id"], new_ids), timeout=60,
               what="the new cluster to be deleted at the end")
    eventually(lambda: nothing_runs_on(new_ids), timeout=30, what="no process left")
    report = (tmp_path / "art" / run_id / "reports" / "observations.md").read_text()
    assert "deleted" in report and f"node rank 1 (pod {victim})" in report


def test_a_trained_model_the_collect_could_not_bring_home_keeps_its_cluster(
        runpod, inv, tiny_dataset, tmp_path) -> None:
    """A cluster cannot be stopped, only deleted with its nodes' disks. A run that trained and
    then failed its collect (a full disk here: a file where the collected folder goes)
    deleted the cluster and the model with it, and said "the pod keeps the files". The model
    is now collected before any delete; when that fails too the cluster is kept, said loudly,
    and the collect done later brings the model home."""
    run_id = "cluster-keep"
    env = env_for(runpod, tmp_path, run_id)
    for step in (["cycle.start", "--nodes", "2"], ["cycle.push-dataset", "-d", str(tiny_dataset)],
                 ["cycle.train", "--epochs", "1", *SMALL]):
        done = inv(*step, env=env, timeout=900)
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    run = tmp_path / "art" / run_id
    (run / "collected").write_text("a file where the collected folder should be")
    failed = inv("cycle.full-smoke", "--resume", "-d", str(tiny_dataset), env=env, timeout=900)
    assert failed.returncode != 0
    state = state_of(tmp_path, run_id)
    cluster = state["cluster"]
    assert state["steps"]["train"]["status"] == "done"
    assert state["steps"]["collect"]["status"] == "failed" and not cluster["deleted_at"]
    assert "collecting it before the cluster is deleted" in failed.stderr
    assert (f"cluster {cluster['id']} is kept running (every one of its 2 nodes bills): the "
            "trained model is only on it") in failed.stderr, failed.stderr[-3000:]
    assert f"inv cycle.collect -r {run_id}" in failed.stderr
    assert cluster["id"] in {c.id for c in runpod.client().list_clusters()}
    model = (Path(state["remote"]["out"]) / "run_artifacts" / "model.pt").read_bytes()
    (run / "collected").unlink()
    resumed = inv("cycle.full-smoke", "--resume", "-d", str(tiny_dataset), env=env,
                  timeout=900)
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    assert "train: done earlier in this run, skipped" in resumed.stderr
    assert (run / "collected" / "run_artifacts" / "model.pt").read_bytes() == model
    ids = member_ids(state)
    eventually(lambda: cluster_gone(runpod, cluster["id"], ids), timeout=60,
               what="the cluster to be deleted once its model is home")
    eventually(lambda: nothing_runs_on(ids), timeout=30, what="no process left on the nodes")


def test_ctrl_c_during_a_clusters_training_brings_its_last_checkpoint_home(
        runpod, tiny_dataset, tmp_path) -> None:
    """A cluster cannot be stopped, only deleted with the primary's disk: Ctrl-C during train
    deleted it with every epoch trained, and --resume (which the message offered) trained
    from the start on a new cluster. The primary's last checkpoint now comes home first,
    where a node failure's collect puts it, for --resume to push to the new primary."""
    run_id = "cluster-ctrl-c"
    env = {**child_environ(), **env_for(runpod, tmp_path, run_id)}
    first = subprocess.Popen(
        [INV, "cycle.full-smoke", "--nodes", "2", "--epochs", "40", *SMALL,
         "-d", str(tiny_dataset)], cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE, text=True)
    said: list[str] = []
    reader = threading.Thread(target=lambda: said.extend(first.stderr), daemon=True)
    reader.start()
    try:
        eventually(lambda: primary_checkpoint(tmp_path, run_id), timeout=600, interval=0.2,
                   what="the primary's first checkpoint")
        state = state_of(tmp_path, run_id)
        # The trainers paused (a slow GPU's epoch): the training is still on at the Ctrl-C.
        with frozen(run_id), frozen(f"{run_id}-node1"):
            first.send_signal(signal.SIGINT)
            eventually(lambda: any("interrupted during train: bringing the primary's last "
                                   "checkpoint home" in line for line in said), timeout=60,
                       what=lambda: "the rescue to begin: " + "".join(said[-20:]))
        first.wait(timeout=300)
    finally:
        settle(first, reader)
    err = "".join(said)
    assert first.returncode == 130, err[-3000:]
    assert "brought the primary's last checkpoint home" in err, err[-3000:]
    saved = tmp_path / "art" / run_id / "collected" / "run_artifacts" / "checkpoint_last.pt"
    assert saved.is_file() and saved.stat().st_size > 0
    ids = member_ids(state)
    eventually(lambda: cluster_gone(runpod, state["cluster"]["id"], ids), timeout=60,
               what="every member of the interrupted cluster to be gone")
    eventually(lambda: nothing_runs_on(ids), timeout=30, what="no trainer left on any node")
    after = state_of(tmp_path, run_id)
    assert after["steps"]["train"]["status"] == "interrupted" and after["cluster"]["deleted_at"]
    assert any("checkpoint was brought home" in e["text"] for e in after["events"])


def test_a_training_the_host_lost_that_finished_is_kept_by_the_stop(
        runpod, inv, tiny_dataset, tmp_path) -> None:
    """A Ctrl-C'd `cycle.train` leaves the cluster's trainers running, detached. Once they
    finished, `cycle.stop` collected the model and deleted the cluster, but the run still said
    train `interrupted`: runs.show called a finished training interrupted, and a --resume paid
    for a new cluster to train it again. The stop now keeps it as `cycle.train` would (the
    primary's smoke runs) before the collect."""
    run_id = "cluster-lost-finished"
    env = env_for(runpod, tmp_path, run_id)
    for step in (["cycle.start", "--nodes", "2"], ["cycle.push-dataset", "-d", str(tiny_dataset)]):
        done = inv(*step, env=env, timeout=900)
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    train = subprocess.Popen([INV, "cycle.train", "--epochs", "2", *SMALL], cwd=ROOT,
                             env={**child_environ(), **env}, stdout=subprocess.DEVNULL,
                             stderr=subprocess.PIPE, text=True)
    said: list[str] = []
    reader = threading.Thread(target=lambda: said.extend(train.stderr), daemon=True)
    reader.start()
    try:
        # Interrupted while it follows the trainers, which run on, detached.
        with frozen(run_id, train), frozen(f"{run_id}-node1"):
            train.send_signal(signal.SIGINT)
            train.wait(timeout=120)
    finally:
        settle(train, reader)
    assert train.returncode == 130, "".join(said)[-3000:]
    state = state_of(tmp_path, run_id)
    assert state["steps"]["train"]["status"] == "interrupted"
    primary_rc = Path(state["remote"]["out"]) / ".control" / "trainer.rc"
    primary_log = Path(state["remote"]["out"]) / "run_artifacts" / "train.log"

    def how_it_stands() -> str:  # the pod goes with the cluster: say what it showed
        rc = primary_rc.read_text().strip() if primary_rc.is_file() else "none yet"
        log = primary_log.read_text()[-2000:] if primary_log.is_file() else "(none)"
        return f"the primary's trainer to finish on its own (trainer.rc: {rc}); its log:\n{log}"

    # Its end, whatever it is: a training that failed fails the test at once, with its log.
    eventually(lambda: primary_rc.is_file() and primary_rc.read_text().strip(), timeout=600,
               what=how_it_stands)
    assert primary_rc.read_text().strip() == "0", how_it_stands()
    model = (Path(state["remote"]["out"]) / "run_artifacts" / "model.pt").read_bytes()

    stopped = inv("cycle.stop", env=env, timeout=900)
    assert stopped.returncode == 0, stopped.stdout[-3000:] + stopped.stderr[-3000:]
    assert "its training finished on the cluster after the host lost it: keeping it" \
        in stopped.stderr, stopped.stderr[-3000:]
    after = state_of(tmp_path, run_id)
    assert after["steps"]["train"]["status"] == "done"
    assert after["steps"]["collect"]["status"] == "done" and after["cluster"]["deleted_at"]
    home = tmp_path / "art" / run_id / "collected" / "run_artifacts"
    assert (home / "model.pt").read_bytes() == model
    assert json.loads((home / "metrics.json").read_text())["final"]["epoch"] == 2
    ids = member_ids(state)
    eventually(lambda: cluster_gone(runpod, state["cluster"]["id"], ids), timeout=60,
               what="the cluster to be deleted once its model is home")
    eventually(lambda: nothing_runs_on(ids), timeout=30, what="no process left on the nodes")
