"""Training across nodes, as on a RunPod Instant Cluster, made real on this host: the train
preset started twice at once with a cluster node's env (NUM_NODES=2, NODE_RANK 0 and 1,
NUM_TRAINERS=2, MASTER_ADDR 127.0.0.1), so torchrun runs 2 "nodes" x 2 CPU processes over gloo
on loopback. One model (identical weights on every rank), artifacts on the primary only, a
resume from a checkpoint that only the primary holds, a node that never joins, and the trainer
refusing a cluster node's env without torchrun."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from podcycle.local.pods import free_port
from tests.conftest import ROOT

TRAINING_DIR = ROOT / "deploy" / "runpod_cloud_training"
PRESET = ["bash", str(TRAINING_DIR / "train_baseline_preset.sh")]


@pytest.fixture(autouse=True)
def node_tmp(short_tmp: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The nodes' TMPDIR (conftest.short_tmp), as each node of a cluster has its own /tmp."""
    monkeypatch.setenv("TMPDIR", str(short_tmp))


def node_env(tmp_path: Path, dataset: Path, rank: int, port: int, **extra: str) -> dict[str, str]:
    """The env RunPod gives cluster node `rank` (and the local RunPod its member pods), plus
    the preset's settings for a tiny CPU training. Each node has its own output folder and
    encode cache, as separate machines would."""
    node = tmp_path / f"node{rank}"
    env = {"PATH": os.environ["PATH"], "HOME": str(tmp_path), "OMP_NUM_THREADS": "1",
           "TMPDIR": os.environ["TMPDIR"],  # node_tmp: torchrun's folders go there
           "RUNPOD_TRAINING_DIR": str(TRAINING_DIR), "REPO_DIR": str(ROOT),
           "VENV_DIR": sys.prefix, "DATASET_DIR": str(dataset),
           "OUTPUT_DIR": str(node / "out"), "METRICS_PATH": str(node / "out" / "metrics.json"),
           "RUNPOD_PHASE_TIMING_LOG": str(node / "timings.jsonl"), "EPOCHS": "1",
           "MODEL_BLOCKS": "1", "MODEL_CHANNELS": "8", "TRAIN_DEVICE": "cpu",
           "TRAIN_EXTRA_ARGS": f"--cache-dir {node / 'cache'} --tb-every-steps 0",
           # RunPod's cluster env (WORLD_SIZE is the node's total: torchrun's must win)
           "NUM_NODES": "2", "NODE_RANK": str(rank), "NUM_TRAINERS": "2", "WORLD_SIZE": "4",
           "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "PRIMARY_ADDR": "127.0.0.1",
           "PRIMARY_PORT": str(port), "NODE_ADDR": "127.0.0.1",
           # a broken test fails in a minute instead of waiting out the production bounds
           "TRAIN_RENDEZVOUS_TIMEOUT": "120", "TRAIN_DIST_TIMEOUT": "120"}
    env.update(extra)
    return env


def run_cluster(tmp_path: Path, dataset: Path, **extra: str) -> list[subprocess.CompletedProcess]:
    """Both nodes' presets at once; their results, node 0 first."""
    port = free_port()
    procs = [subprocess.Popen(PRESET, env=node_env(tmp_path, dataset, rank, port, **extra),
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for rank in (0, 1)]
    results = []
    try:
        for proc in procs:
            out, err = proc.communicate(timeout=400)
            results.append(subprocess.CompletedProcess(proc.args, proc.returncode, out, err))
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    for rank, result in enumerate(results):
        assert result.returncode == 0, \
            f"node {rank}:\n{result.stdout[-3000:]}{result.stderr[-3000:]}"
    return results


@pytest.mark.slow
def test_two_nodes_train_one_model_written_by_the_primary_and_resume(
        tiny_dataset: Path, tmp_path: Path) -> None:
    primary, other = tmp_path / "node0" / "out", tmp_path / "node1" / "out"
    first = run_cluster(tmp_path, tiny_dataset)
    metrics = json.loads((primary / "metrics.json").read_text())
    assert metrics["world_size"] == 4 and metrics["nodes"] == 2
    hashes = metrics["rank_weights_sha256"]
    assert len(hashes) == 4 and len(set(hashes)) == 1 and len(hashes[0]) == 64
    assert {"model.pt", "checkpoint_last.pt", "tensorboard"} <= {p.name for p in primary.iterdir()}
    assert list(other.rglob("*")) == []  # node 1 wrote nothing into its OUTPUT_DIR
    assert "node 1: joined (2 node(s), world size 4, gloo)" in first[1].stdout
    assert "world=4" in first[0].stdout

    # A new cluster: the checkpoint is on the primary only (node 1's folder is empty). Every
    # rank must start from epoch 1; a rank that started elsewhere would run another number
    # of steps (the collectives would fail) or from other weights (the hashes would differ).
    second = run_cluster(tmp_path, tiny_dataset, EPOCHS="2", TRAIN_RESUME="auto")
    log = second[0].stdout
    assert log.count("resuming from epoch 1 on every rank (4)") == 1, log
    assert "epoch 2/2 " in log and "epoch 1/2 " not in log
    metrics = json.loads((primary / "metrics.json").read_text())
    assert [row["epoch"] for row in metrics["epochs"]] == [1, 2]
    assert len(set(metrics["rank_weights_sha256"])) == 1
    assert metrics["rank_weights_sha256"] != hashes
    assert list(other.rglob("*")) == []


@pytest.mark.slow
def test_ranks_of_unequal_shards_take_the_same_steps(tiny_dataset: Path, tmp_path: Path) -> None:
    """9 training positions on 2 processes in batches of 4: shards of 5 and 4 made 2 steps on
    rank 0 and 1 on rank 1, whose all-reduce of the epoch's loss then met rank 0's gradient
    all-reduce: a hang until the collective timeout (here 20 s), on every retry. Each rank now
    takes the padded permutation's half, as DistributedSampler does."""
    data = tmp_path / "nine"
    data.mkdir()
    for name, count in (("train.jsonl", 9), ("val.jsonl", 20)):
        lines = (tiny_dataset / name).read_text().splitlines(keepends=True)
        (data / name).write_text("".join(lines[:count]))
    env = {"PATH": os.environ["PATH"], "HOME": str(tmp_path), "OMP_NUM_THREADS": "1",
           "TMPDIR": os.environ["TMPDIR"], "PYTHONPATH": str(ROOT), "TRAIN_DIST_TIMEOUT": "20"}
    out = tmp_path / "out"
    result = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node",
         "2", "-m", "chessbot.train", "--dataset-dir", str(data), "--output-dir", str(out),
         "--cache-dir", str(tmp_path / "cache"), "--epochs", "2", "--batch-size", "4",
         "--blocks", "1", "--channels", "8", "--device", "cpu", "--tb-every-steps", "0"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["world_size"] == 2 and [e["epoch"] for e in metrics["epochs"]] == [1, 2]
    assert len(set(metrics["rank_weights_sha256"])) == 1


@pytest.mark.slow
def test_a_node_that_never_joins_fails_the_other_within_the_rendezvous_timeout(
        tiny_dataset: Path, tmp_path: Path) -> None:
    env = node_env(tmp_path, tiny_dataset, 0, free_port(), TRAIN_RENDEZVOUS_TIMEOUT="10")
    result = subprocess.run(PRESET, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode != 0
    assert "rendezvous FAILED: not all 2 nodes joined at 127.0.0.1" in result.stderr
    assert "within 10s (TRAIN_RENDEZVOUS_TIMEOUT)" in result.stderr
    assert not (tmp_path / "node0" / "out" / "model.pt").exists()


@pytest.mark.slow
def test_trainer_refuses_a_cluster_env_without_torchrun(tiny_dataset: Path,
                                                        tmp_path: Path) -> None:
    env = {**os.environ, "WORLD_SIZE": "4", "NUM_NODES": "2", "NODE_RANK": "0"}
    for name in ("RANK", "LOCAL_RANK", "TORCHELASTIC_RUN_ID"):
        env.pop(name, None)
    out = tmp_path / "out"
    result = subprocess.run(
        [sys.executable, "-m", "chessbot.train", "--dataset-dir", str(tiny_dataset),
         "--output-dir", str(out), "--epochs", "1", "--blocks", "1", "--channels", "8"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert len(result.stderr.splitlines()) == 1, result.stderr
    assert result.stderr.startswith("error: WORLD_SIZE=4 is set")
    assert "not started by torchrun" in result.stderr
    assert "train_baseline_preset.sh" in result.stderr
    assert not out.exists()


@pytest.mark.slow
def test_preset_refuses_a_cluster_env_without_its_rendezvous_address(
        tiny_dataset: Path, tmp_path: Path) -> None:
    env = node_env(tmp_path, tiny_dataset, 1, free_port())
    for name in ("MASTER_PORT", "PRIMARY_PORT"):
        del env[name]
    result = subprocess.run(PRESET, env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert "NUM_NODES=2 but MASTER_PORT is not set" in result.stderr
    bad = subprocess.run(PRESET, env={**env, "MASTER_PORT": "1", "NODE_RANK": "2"},
                         capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and "NODE_RANK=2 is not a node of 2" in bad.stderr
