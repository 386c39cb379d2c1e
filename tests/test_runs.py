"""runs.list / show / compare in-process, over run folders built from real RunState objects
saved by RunFolder and a metrics.json written by the real trainer (chessbot.train, in this
process, on a few hundred positions). No local RunPod, no `inv` process: the end-to-end
version with three real cycles is tests/test_runs_e2e.py."""

from __future__ import annotations

import json
import os
import re
import time
from pathlib import Path
from typing import Any

import pytest

from podcycle import history
from podcycle.errors import ConfigError
from podcycle.runs import (
    SCHEMA,
    WORK_STEPS,
    BillingCheck,
    ClusterRecord,
    DatasetRecord,
    PodRecord,
    RemotePaths,
    RunFolder,
    RunState,
    StepRecord,
    list_runs,
    read_state,
)
from tests.conftest import ROOT

SMOKE = ROOT / "data" / "dataset" / "_smoke_runpod"


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """metrics.json as the trainer writes it: 2 epochs of a 1x8 model on 300 positions."""
    from chessbot.train import main

    root = tmp_path_factory.mktemp("trained")
    data = root / "tiny"
    data.mkdir()
    for name, count in (("train.jsonl", 300), ("val.jsonl", 100)):
        with open(SMOKE / name) as source:
            (data / name).write_text("".join(next(source) for _ in range(count)))
    assert main(["--dataset-dir", str(data), "--output-dir", str(root / "out"), "--epochs",
                 "2", "--blocks", "1", "--channels", "8", "--batch-size", "64", "--device",
                 "cpu", "--workers", "1", "--cache-dir", str(root / "cache")]) == 0
    return json.loads((root / "out" / "metrics.json").read_text())


def shifted(metrics: dict[str, Any], by: float) -> dict[str, Any]:
    """The same run's metrics with its losses moved by `by` (a second, different run)."""
    copy = json.loads(json.dumps(metrics))
    for row in copy["epochs"]:
        row["val_loss"] = round(row["val_loss"] + by, 5)
        row["train_loss"] = round(row["train_loss"] + by, 5)
        row["val_top1"] = round(max(0.0, row["val_top1"] - by / 10), 5)
    copy["final"] = copy["epochs"][-1]
    copy["model_config"] = {"blocks": 2, "channels": 16}
    copy["dataset_hash"] = "77ee" * 16
    return copy


NOW = time.time()


def make_run(artifacts: Path, run_id: str, *, outcome: str | None, steps: dict[str, str],
             age_hours: float = 1.0, metrics: dict[str, Any] | None = None,
             driver: str = "full-smoke", billed: float | None = None,
             strength: dict[str, Any] | None = None, dataset: str = "tiny-set",
             sha: str = "ab12cd34" * 8, running_pod: bool = False) -> RunFolder:
    run = RunFolder(artifacts, run_id)
    state = run.state
    start = NOW - age_hours * 3600
    state.created_at = start
    state.backend, state.driver, state.outcome = "local", driver, outcome
    state.pod = PodRecord(id=f"lp-{run_id}", name=run_id, gpu_id="NVIDIA RTX A5000",
                          gpu_count=1, cloud="secure", price_per_hour=0.36, created_at=start,
                          billed_seconds=600.0,
                          running_since=NOW - 60 if running_pod else None,
                          stopped_at=None if running_pod else start + 700)
    for at, (name, status) in enumerate(steps.items()):
        state.steps[name] = StepRecord(status=status, started_at=start + at,
                                       finished_at=start + at + 1, seconds=10.0 + at,
                                       pod_id=state.pod.id,
                                       error="boom" if status == "failed" else None)
    state.dataset = DatasetRecord(pod_id=state.pod.id, local=f"/data/{dataset}",
                                  remote="/pod/data", bytes=1234, sha256=sha, train=300,
                                  val=100, files=["train.jsonl", "val.jsonl"])
    state.remote = RemotePaths(pod_id=state.pod.id, repo_dir="/r", training_dir="/t",
                               timing_log="/t.log", venv_dir="/v", out=f"/r/out/{run_id}")
    if outcome is not None:
        state.total_seconds = 700.0
    if billed is not None:
        state.billing = BillingCheck(checked_at=start + 800, amount=billed, available=True)
    state.strength = strength
    state.note("pod created")
    run.save()
    if metrics is not None:
        run.run_artifacts.mkdir(parents=True, exist_ok=True)
        (run.run_artifacts / "metrics.json").write_text(json.dumps(metrics, indent=2))
    return run


ALL_DONE = {name: "done" for name in (*WORK_STEPS, "stop")}
STRENGTH = {"model": "m", "opponent": "random", "games": 10, "wins": 6, "draws": 2,
            "losses": 2, "score": 0.7, "elo": 147.2, "elo_low": 40.1, "elo_high": 260.3,
            "pentanomial": [0, 1, 1, 2, 1], "pgn": "x.pgn",
            "sprt": {"elo0": 0, "elo1": 50, "llr": 3.1, "lower": -2.94, "upper": 2.94,
                     "verdict": "H1"}}


@pytest.fixture
def artifacts(tmp_path: Path, trained: dict[str, Any]) -> dict[str, Any]:
    folder = tmp_path / "runs"
    runs = {
        "done-a": make_run(folder, "done-a", outcome="ok", steps=ALL_DONE, age_hours=5,
                           metrics=trained, billed=0.0612, strength=STRENGTH),
        "done-b": make_run(folder, "done-b", outcome="ok", steps=ALL_DONE, age_hours=4,
                           metrics=shifted(trained, 0.5), dataset="other-set",
                           sha="99ff" * 16),
        "broke": make_run(folder, "broke", outcome="failed", age_hours=3,
                          steps={"start": "done", "push-dataset": "done", "train": "failed",
                                 "stop": "done"}),
        "ctrl-c": make_run(folder, "ctrl-c", outcome="interrupted", age_hours=2,
                           steps={"start": "done", "push-dataset": "done",
                                  "train": "interrupted", "stop": "done"}),
        "waiting": make_run(folder, "waiting", outcome=None, driver="steps", age_hours=1.5,
                            steps={"start": "done", "push-dataset": "done"},
                            running_pod=True),
        "host-died": make_run(folder, "host-died", outcome=None, age_hours=1.2,
                              steps={"start": "done", "push-dataset": "done",
                                     "train": "running"}, running_pod=True),
        "live": make_run(folder, "live", outcome=None, age_hours=0.5,
                         steps={"start": "done", "push-dataset": "done", "train": "running"},
                         running_pod=True),
    }
    runs["live"].lock()  # this process drives it now
    (folder / "corrupt").mkdir()
    (folder / "corrupt" / "state.json").write_text("{not json")
    (folder / "future").mkdir()
    (folder / "future" / "state.json").write_text(json.dumps({"run_id": "future",
                                                               "schema": 99}))
    # Valid JSON of the wrong shape (hand-edited, another tool's file): unreadable, and
    # never a crash that would take every other run's command down with it.
    (folder / "shape").mkdir()
    (folder / "shape" / "state.json").write_text("[]")
    (folder / "types").mkdir()
    (folder / "types" / "state.json").write_text(json.dumps(
        {"run_id": "types", "schema": SCHEMA, "steps": "x", "pod": 5}))
    (folder / "notes").mkdir()  # someone's folder, not a run
    (folder / "notes" / "todo.txt").write_text("x")
    yield {"dir": folder, "runs": runs, "metrics": trained}
    runs["live"].unlock()


def rows_by_id(folder: Path) -> dict[str, history.RunRow]:
    return {row.id: row for row in history.read_runs(folder)}


def test_every_folder_gets_the_status_its_state_and_lock_say(artifacts) -> None:
    rows = rows_by_id(artifacts["dir"])
    assert {k: r.status for k, r in rows.items()} == {
        "done-a": "finished", "done-b": "finished", "broke": "failed",
        "ctrl-c": "interrupted", "waiting": "unfinished", "host-died": "unfinished",
        "live": "running", "corrupt": "unreadable", "future": "unreadable",
        "shape": "unreadable", "types": "unreadable", "notes": "foreign"}
    assert "train failed" in rows["broke"].status_detail
    assert "train" in rows["ctrl-c"].status_detail
    assert "waiting for its next step (train, collect, local-validate)" in \
        rows["waiting"].status_detail
    assert "died" in rows["host-died"].status_detail
    assert "not valid JSON" in rows["corrupt"].status_detail
    assert "schema 99" in rows["future"].status_detail
    assert "wrong shape" in rows["shape"].status_detail
    assert "wrong shape" in rows["types"].status_detail
    assert {name for name, state in list_runs(artifacts["dir"]) if state is None} >= {
        "corrupt", "future", "shape", "types"}
    with pytest.raises(ConfigError, match="not a pod-cycle run state"):
        RunFolder(artifacts["dir"], "types").reload()
    # Newest first by default; rows without a start (unreadable, foreign) last.
    ids = [r.id for r in history.read_runs(artifacts["dir"])]
    assert ids[:7] == ["live", "host-died", "waiting", "ctrl-c", "broke", "done-b", "done-a"]
    assert set(ids[7:]) == {"corrupt", "future", "shape", "types", "notes"}


def test_a_step_by_step_run_without_outcome_is_judged_by_its_steps(tmp_path) -> None:
    folder = tmp_path / "runs"
    make_run(folder, "steps-done", outcome=None, driver="steps", steps=ALL_DONE)
    make_run(folder, "steps-failed", outcome=None, driver="steps",
             steps={"start": "done", "push-dataset": "done", "train": "failed"},
             running_pod=True)
    make_run(folder, "steps-stopped", outcome=None, driver="steps",
             steps={"start": "done", "push-dataset": "done", "stop": "done"})
    rows = rows_by_id(folder)
    assert (rows["steps-done"].status, rows["steps-failed"].status) == ("finished", "failed")
    assert "nobody drives it" in rows["steps-failed"].status_detail
    assert rows["steps-stopped"].status == "unfinished"
    assert "its pod was stopped before train, collect, local-validate" in \
        rows["steps-stopped"].status_detail
    # Trained, collected and validated, then another dataset pushed: its train is outdated,
    # not "never reached" (it said "stopped before train" beside the old model's numbers).
    make_run(folder, "steps-outdated", outcome=None, driver="steps",
             steps={"start": "done", "push-dataset": "done", "train": "outdated",
                    "collect": "done", "local-validate": "done", "stop": "done"})
    outdated = rows_by_id(folder)["steps-outdated"]
    assert outdated.status == "unfinished"
    assert outdated.status_detail == ("train outdated (a step before it ran again), then its "
                                      "pod was stopped; cycle.full-smoke --resume redoes it")


def test_an_old_models_metrics_are_not_labelled_with_a_dataset_pushed_after_it(
        tmp_path: Path) -> None:
    """Trained on one dataset, then another pushed (its train now outdated): runs.list named
    the new push beside the old model's val loss, as if that model had trained on it."""
    folder = tmp_path / "runs"
    metrics = {"final": {"epoch": 3, "val_loss": 2.5}, "dataset_hash": "0123456789abcdef"}
    make_run(folder, "pushed-after", outcome=None, driver="steps", dataset="newer-set",
             steps={"start": "done", "push-dataset": "done", "train": "outdated",
                    "collect": "done", "stop": "done"}, metrics=metrics)
    make_run(folder, "trained-on-it", outcome=None, driver="steps", dataset="newer-set",
             steps={"start": "done", "push-dataset": "done", "train": "done",
                    "collect": "done", "stop": "done"}, metrics=metrics)
    rows = rows_by_id(folder)
    assert rows["pushed-after"].dataset == "0123456789"  # what the trainer encoded
    assert rows["pushed-after"].val_loss == 2.5
    assert rows["trained-on-it"].dataset == "newer-set (ab12cd34ab)"
    shown = history.show_text(history.show(folder, "pushed-after"))
    assert ("  dataset    0123456789 (the model's); /data/newer-set was pushed after its "
            "train (300 train / 100 val positions)") in shown.splitlines()
    shown = history.show_text(history.show(folder, "trained-on-it"))
    assert ("  dataset    newer-set (ab12cd34ab): 300 train / 100 val positions from "
            "/data/newer-set") in shown.splitlines()
    # Trained again on the new push, that train under way, failed or interrupted: the
    # metrics are still the old model's (collected before the push).
    for status in ("running", "failed", "interrupted"):
        run = make_run(folder, f"again-{status}", outcome=None, driver="steps",
                       dataset="newer-set", metrics=metrics,
                       steps={"start": "done", "collect": "done", "push-dataset": "done",
                              "train": status})
        assert rows_by_id(folder)[f"again-{status}"].dataset == "0123456789", status
        assert run.state.steps["push-dataset"].finished_at > \
            run.state.steps["collect"].started_at


def test_rows_carry_the_runs_metrics_dataset_cost_and_strength(artifacts) -> None:
    rows = rows_by_id(artifacts["dir"])
    metrics = artifacts["metrics"]
    a = rows["done-a"]
    assert (a.epochs, a.val_loss, a.val_top1, a.train_loss) == (
        metrics["final"]["epoch"], metrics["final"]["val_loss"], metrics["final"]["val_top1"],
        metrics["final"]["train_loss"])
    assert (a.model, a.batch_size, a.dataset_hash) == ("1x8", 64, metrics["dataset_hash"])
    assert a.dataset == "tiny-set (ab12cd34ab)"
    assert (a.cost_usd, a.cost_kind) == (0.0612, "billed")
    assert (a.elo, a.sprt) == (147.2, "H1")
    assert history.strength_text(a) == "+147±113 SPRT H1"
    assert (a.pod, a.gpu, a.duration_s) == ("lp-done-a", "1x NVIDIA RTX A5000", 700.0)
    b = rows["done-b"]
    assert b.model == "2x16" and b.val_loss == round(metrics["final"]["val_loss"] + 0.5, 5)
    # No billing looked up: price × billed time, marked as an estimate.
    assert (b.cost_usd, b.cost_kind) == (round(0.36 * 600 / 3600, 4), "estimated")
    assert history.cost_text(b) == "~$0.0600"
    broke = rows["broke"]
    assert not broke.has_metrics and broke.val_loss is None and broke.epochs is None
    table = history.list_table(history.read_runs(artifacts["dir"]))
    assert len({len(line) for line in table}) == 1 == len(
        {len(history.LIST_HEADERS)} | {len(table[0])})
    line = next(line for line in table if line[0] == "done-a")
    assert line[6:9] == [f"{metrics['final']['val_loss']:.4f}",
                         f"{metrics['final']['val_top1']:.4f}", "+147±113 SPRT H1"]
    listed = [r.as_dict() for r in history.read_runs(artifacts["dir"])]
    json.dumps(listed)  # serialisable
    # The list keeps no curves (500 MB for 1,000 runs of 1,000 epochs); one run read for a
    # comparison has them.
    assert a.curves == [] and "curves" not in listed[0]
    assert history.read_run(artifacts["dir"], "done-a").curves == metrics["epochs"]


def test_a_cluster_run_shows_its_cluster(artifacts) -> None:
    run = artifacts["runs"]["done-b"]
    state = run.state
    data = state.to_json()
    data["cluster"] = {"id": "cl-42", "name": "c", "gpu_id": "NVIDIA H100", "pod_count": 3,
                       "gpu_count_per_pod": 8, "price_per_hour": 3.0, "billed_seconds": 1200.0}
    run.state_path.write_text(json.dumps(data))
    row = history.read_run(artifacts["dir"], "done-b")
    if getattr(RunState(run_id="x"), "cluster", "absent") == "absent":
        pytest.skip("this RunState has no cluster record yet")
    assert (row.cluster, row.cluster_nodes) == ("cl-42", 3)
    assert history.where_text(row) == "cluster cl-42 (3 nodes)"
    assert row.gpu == "3 nodes x 8x NVIDIA H100"


def test_a_cluster_runs_bill_is_named_from_the_clusters_billing(tmp_path: Path) -> None:
    """runs.show said "(GET /v2/billing/pods)" of a cluster run's bill, which comes from
    /v2/billing/clusters (the report said so)."""
    folder = tmp_path / "runs"
    run = make_run(folder, "on-cluster", outcome="ok", steps=ALL_DONE, billed=0.42)
    data = run.state.to_json()
    data["cluster"] = {"id": "cl-42", "name": "c", "gpu_id": "NVIDIA H100", "pod_count": 2,
                       "gpu_count_per_pod": 1, "price_per_hour": 3.0, "billed_seconds": 600.0}
    run.state_path.write_text(json.dumps(data))
    make_run(folder, "on-pod", outcome="ok", steps=ALL_DONE, billed=0.17)
    shown = history.show_text(history.show(folder, "on-cluster")).splitlines()
    assert "  billed     $0.4200 (GET /v2/billing/clusters)" in shown
    shown = history.show_text(history.show(folder, "on-pod")).splitlines()
    assert "  billed     $0.1700 (GET /v2/billing/pods)" in shown


def test_filters_and_sorting(artifacts) -> None:
    rows = history.read_runs(artifacts["dir"])
    pick = history.select
    assert [r.id for r in pick(rows, status="finished")] == ["done-b", "done-a"]
    assert [r.id for r in pick(rows, dataset="other-set")] == ["done-b"]
    assert [r.id for r in pick(rows, dataset="99FF")] == ["done-b"]
    metrics_hash = artifacts["metrics"]["dataset_hash"][:8]
    assert [r.id for r in pick(rows, dataset=metrics_hash)] == ["done-a"]
    assert pick(rows, dataset="ab1") == []  # too short to be a hash prefix
    since = history.parse_since("90m", now=NOW)
    assert [r.id for r in pick(rows, since=since)] == ["live", "host-died", "waiting"]
    by_loss = pick(rows, status="finished", sort="val_loss")
    assert [r.id for r in by_loss] == ["done-a", "done-b"]  # lowest loss first
    assert [r.id for r in pick(rows, sort="val_top1")][:2] == ["done-a", "done-b"]
    assert [r.id for r in pick(rows, sort="started", limit=2)] == ["live", "host-died"]
    cheapest = pick(rows, sort="cost")
    assert cheapest[0].cost_usd == min(r.cost_usd for r in rows if r.cost_usd is not None)
    assert [r.id for r in cheapest[-5:]] == ["corrupt", "future", "notes", "shape",
                                             "types"]  # none: last


@pytest.mark.parametrize(("flag", "value", "accepted"), [
    ("--status", "done", history.STATUSES), ("--sort", "loss", tuple(history.SORTS))])
def test_bad_choices_are_refused_naming_the_flag_and_the_choices(flag, value,
                                                                 accepted) -> None:
    with pytest.raises(ConfigError) as caught:
        history.check_choice(flag, value, accepted)
    message = caught.value.message
    assert message.startswith(f"{flag} {value!r} is not one of: ")
    assert all(choice in message for choice in accepted)
    assert history.check_choice("--sort", "val-top1", tuple(history.SORTS)) == "val_top1"


@pytest.mark.parametrize("value", ["yesterday", "3 weeks", "2099-01-01", "-5d"])
def test_bad_since_is_refused(value) -> None:
    with pytest.raises(ConfigError) as caught:
        history.parse_since(value)
    assert caught.value.message.startswith(f"--since '{value}'") or \
        caught.value.message.startswith(f"--since {value!r}")


def test_show_puts_state_and_report_on_one_screen(artifacts) -> None:
    run = artifacts["runs"]["done-a"]
    from podcycle import report

    report.write(run)
    data = history.show(artifacts["dir"], "done-a")
    text = history.show_text(data)
    metrics = artifacts["metrics"]
    assert text.splitlines()[0] == "run done-a: finished (outcome ok)"
    for needle in ("pod        lp-done-a (1x NVIDIA RTX A5000, secure cloud), stopped",
                   "cost       $0.0612 (billed)", "dataset    tiny-set (ab12cd34ab): 300 "
                   "train / 100 val", "train           done",
                   "model      1x8, 3,440 params, batch 64, lr 0.003",
                   "W 6 D 2 L 2 against random, Elo +147.2", "SPRT [0, 50]: H1",
                   "pod created", f"report     {run.observations}",
                   f"loss_curve {run.loss_curve}"):
        assert needle in text, needle
    for epoch in metrics["epochs"]:
        assert f"{epoch['val_loss']:.4f}" in text
    assert data["paths"]["model"] is None  # no model.pt in this folder: not claimed
    failed = history.show_text(history.show(artifacts["dir"], "broke"))
    assert "train           failed" in failed and "boom" in failed
    assert "none collected" in failed
    # A pod created (or started again) that never answered SSH: booting, and billing.
    booting = make_run(artifacts["dir"], "booting", outcome=None, steps={"start": "running"})
    booting.state.pod.stopped_at = None
    booting.save()
    shown = history.show_text(history.show(artifacts["dir"], "booting"))
    assert "secure cloud), starting (may be billing)" in shown
    # A cycle.stop killed after RunPod took its request: "still running" and a rising
    # estimate, though the pod may be stopped; the stop again makes sure.
    make_run(artifacts["dir"], "stopping", outcome=None, running_pod=True,
             steps={"start": "done", "stop": "running"})
    shown = history.show_text(history.show(artifacts["dir"], "stopping"))
    assert ("still running — its stop was under way when its process ended, so it may be "
            "stopped already (inv cycle.stop -r stopping makes sure)") in shown, shown
    # A step whose process died was listed as "running": nothing runs it.
    assert "stop            cut short" in shown and " running " not in shown.split("step")[-1]
    # Hunt: the same for a cluster whose delete was killed: "still running", no word.
    deleting = make_run(artifacts["dir"], "deleting", outcome=None, running_pod=True,
                        steps={"start": "done", "stop": "running"})
    deleting.state.cluster = ClusterRecord("cl9", name="pod-cycle-deleting", pod_count=2,
                                           running_since=NOW - 60)
    deleting.state.pod.cluster_id = "cl9"
    deleting.save()
    shown = history.show_text(history.show(artifacts["dir"], "deleting"))
    assert ("still running — its cluster's delete was under way when its process ended, so "
            "it may be deleted already (inv cycle.stop -r deleting makes sure)") in shown, shown
    # A cluster's primary went with its deleted cluster: not "stopped".
    clustered = make_run(artifacts["dir"], "clustered", outcome="ok", steps=ALL_DONE)
    clustered.state.pod.cluster_id = "cl1"
    clustered.save()
    shown = history.show_text(history.show(artifacts["dir"], "clustered"))
    assert "secure cloud), deleted with its cluster 20" in shown, shown
    with pytest.raises(ConfigError) as caught:
        history.show(artifacts["dir"], "nope")
    assert "no run 'nope'" in caught.value.message
    assert "runs here, last used first" in caught.value.remedy  # state.json mtime order


@pytest.mark.parametrize(("collect", "said"), [
    ("failed", "(its collect failed)"), ("interrupted", "(its collect was interrupted)"),
    ("running", "(its collect has not finished)"), (None, "(the run did not reach collect)"),
    ("done", "(the run had not trained when it collected)")])
def test_show_says_why_no_metrics_were_collected(tmp_path: Path, collect: str | None,
                                                 said: str) -> None:
    """A collect that failed (the spend guard stopped the pod under it) was shown as "the
    run did not reach collect"."""
    steps = {"start": "done", "push-dataset": "done", "train": "done",
             **({"collect": collect} if collect else {})}
    make_run(tmp_path, "r", outcome=None, driver="steps", steps=steps)
    shown = history.show_text(history.show(tmp_path, "r"))
    assert f"  metrics    none collected {said}" in shown.splitlines()


def test_show_names_a_damaged_metrics_file_not_none_collected(tmp_path: Path) -> None:
    """A collected metrics.json that is no trainer's JSON (`[1, 2]`, damaged) was shown as
    "none collected (the run had not trained when it collected)"; runs.compare named it."""
    steps = {name: "done" for name in ("start", "push-dataset", "train", "collect")}
    run = make_run(tmp_path, "r", outcome=None, driver="steps", steps=steps)
    metrics = run.run_artifacts / "metrics.json"
    metrics.parent.mkdir(parents=True, exist_ok=True)
    metrics.write_text("[1, 2]")
    shown = history.show_text(history.show(tmp_path, "r"))
    assert f"  metrics    {metrics} is not the trainer's JSON (damaged?)" in shown.splitlines()
    assert "none collected" not in shown


def test_show_keeps_a_long_run_on_one_screen(tmp_path: Path) -> None:
    """A run of 1,000 epochs, or of 100,000 events (reconnects over weeks), was printed
    whole by runs.show, "one run on one screen". The first epochs and the last, and the
    latest events, are shown, with the count left out and where it is."""
    epochs = [{"epoch": n, "train_loss": 3.0, "val_loss": 2.0 + n / 1000, "val_top1": 0.1}
              for n in range(1, 41)]
    run = make_run(tmp_path, "long", outcome="ok", steps=ALL_DONE,
                   metrics={"epochs": epochs, "final": epochs[-1]})
    for n in range(30):
        run.state.note(f"reconnected {n}")
    run.save()
    data = history.show(tmp_path, "long")
    shown = history.show_text(data)
    lines = shown.splitlines()
    epoch_lines = [line.split()[0] for line in lines if re.match(r"^ +\d+  ", line)]
    assert epoch_lines == ["1", "2", "3", "4", *map(str, range(21, 41))]
    assert "  (16 epochs not shown: runs.show --json has them all)" in lines
    assert "  (11 earlier events not shown: the report and runs.show --json have them all)" \
        in lines
    shown_events = [line.rsplit("  ", 1)[1] for line in lines if "  reconnected " in line]
    assert shown_events == [f"reconnected {n}" for n in range(10, 30)]
    assert lines.index("  (11 earlier events not shown: the report and runs.show --json have "
                       "them all)") + 1 == next(i for i, line in enumerate(lines)
                                                if "reconnected 10" in line)
    assert len(data["metrics"]["epochs"]) == 40 and len(data["state"]["events"]) == 31
    short = make_run(tmp_path, "short", outcome="ok", steps=ALL_DONE,
                     metrics={"epochs": epochs[:26], "final": epochs[25]})
    shown = history.show_text(history.show(tmp_path, short.run_id))
    assert "not shown" not in shown and "     26  " in shown


def test_compare_table_equals_the_metrics_and_writes_one_picture(artifacts) -> None:
    found = history.compare(artifacts["dir"], ["done-a", "done-b"])
    assert found.picture == artifacts["dir"] / "compare-done-a-done-b.png"
    assert found.picture.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    table = {line[0]: line[1:] for line in found.table()}
    for index, run_id in enumerate(("done-a", "done-b")):
        metrics = json.loads((artifacts["runs"][run_id].run_artifacts /
                              "metrics.json").read_text())
        assert table["val loss"][index] == f"{metrics['final']['val_loss']:.4f}"
        assert table["val top-1"][index] == f"{metrics['final']['val_top1']:.4f}"
        assert table["epochs"][index] == str(metrics["final"]["epoch"])
        assert table["batch size"][index] == str(metrics["batch_size"])
        model = metrics["model_config"]
        assert table["model"][index] == \
            f"{model['blocks']}x{model['channels']} ({metrics['params']:,} params)"
        assert table["lr"][index] == f"{metrics['lr']:g}"
        assert table["nodes"][index] == str(metrics.get("nodes") or 1)
        as_json = found.as_json()["runs"][index]
        assert as_json["epochs_history"] == metrics["epochs"]
    assert table["dataset"] == ["tiny-set (ab12cd34ab)", "other-set (99ff99ff99)"]
    assert table["cost"] == ["$0.0612", "~$0.0600"]
    out = artifacts["dir"].parent / "pictures" / "mine.png"
    assert history.compare(artifacts["dir"], ["done-b", "done-a"], out).picture == out
    assert out.read_bytes()[:4] == b"\x89PNG"
    # A folder where the picture goes: the drawn picture beside it was left behind as
    # .NAME.tmp.png when the rename failed; --out now refuses it before drawing.
    blocked = artifacts["dir"].parent / "pictures" / "blocked.png"
    (blocked / "inside").mkdir(parents=True)
    with pytest.raises(ConfigError, match=r"blocked.png is a folder\n"):
        history.compare(artifacts["dir"], ["done-b", "done-a"], blocked)
    # Hunt: a folder named without .png was told "e.g. --out FOLDER.png", and x.jpg
    # "e.g. --out x.jpg.png".
    for given, example in ((blocked.parent, blocked.parent / "compare.png"),
                           (blocked.parent / "x.jpg", blocked.parent / "x.png")):
        with pytest.raises(ConfigError) as odd:
            history.check_picture_target(given)
        assert odd.value.remedy == f"e.g. --out {example}"
    assert sorted(p.name for p in blocked.parent.iterdir()) == ["blocked.png", "mine.png"]
    # Any file at --out was replaced in silence (notes.png holding text); an earlier picture
    # is replaced, as the default path's is. A path under a file was a bare "File exists".
    notes = blocked.parent / "notes.png"
    notes.write_text("precious")
    with pytest.raises(ConfigError) as refused:
        history.compare(artifacts["dir"], ["done-b", "done-a"], notes)
    assert refused.value.message == (f"--out {notes} exists and is not a picture (no PNG): "
                                     "it would be overwritten")
    assert notes.read_text() == "precious"
    assert history.compare(artifacts["dir"], ["done-a", "done-b"], out).picture == out
    under = notes / "x.png"
    with pytest.raises(ConfigError) as refused:
        history.compare(artifacts["dir"], ["done-b", "done-a"], under)
    assert refused.value.message == f"--out {under}: {notes} is not a folder"
    fifo = blocked.parent / "fifo.png"  # opened to be read, it held the command for ever
    os.mkfifo(fifo)
    with pytest.raises(ConfigError) as refused:
        history.compare(artifacts["dir"], ["done-b", "done-a"], fifo)
    assert refused.value.message.startswith(f"--out {fifo} is not a regular file")


@pytest.mark.parametrize(("ids", "needle"), [
    (["done-a", "broke"], "run broke has no metrics to compare (failed"),
    (["done-a", "broke"], "metrics.json is missing)"),
    (["done-a", "nope"], "no run 'nope'"),
    (["done-a"], "at least two run ids"),
    (["done-a", "done-a"], "run done-a is named twice"),
])
def test_compare_refuses_runs_it_cannot_draw(artifacts, ids, needle) -> None:
    with pytest.raises(ConfigError) as caught:
        history.compare(artifacts["dir"], ids)
    assert needle in caught.value.message
    assert not list(artifacts["dir"].glob("compare-*.png"))


def test_compare_says_a_metrics_file_that_is_there_but_empty_is_not_missing(artifacts
                                                                              ) -> None:
    empty = artifacts["runs"]["done-b"].run_artifacts / "metrics.json"
    empty.write_text("")
    with pytest.raises(ConfigError) as caught:
        history.compare(artifacts["dir"], ["done-a", "done-b"])
    assert f"{empty} is not the trainer's JSON)" in caught.value.message


def test_compare_names_a_damaged_state_not_the_healthy_metrics(artifacts) -> None:
    """A run whose state.json is damaged was refused as "metrics.json is not the trainer's
    JSON", a file that was fine: its metrics were never read. The state is named."""
    state = artifacts["runs"]["done-b"].state_path
    state.write_text("{damaged")
    with pytest.raises(ConfigError) as caught:
        history.compare(artifacts["dir"], ["done-a", "done-b"])
    assert caught.value.message == (f"run done-b cannot be compared: {state} is not valid "
                                    "JSON")
    assert "metrics" not in caught.value.message and str(state) in caught.value.remedy


def test_the_live_sync_copies_only_running_runs_and_drops_stale_copies(artifacts) -> None:
    folder = artifacts["dir"]
    stale = history.live_folder(artifacts["runs"]["done-a"])
    stale.mkdir(parents=True)
    (artifacts["runs"]["done-a"].run_artifacts / "tensorboard").mkdir()
    copied: list[str] = []
    said: list[str] = []

    def rsync_one(run: RunFolder) -> None:
        copied.append(run.run_id)
        if run.run_id == "live":
            from podcycle.remote import RemoteError

            raise RemoteError("rsync failed (exit 23)", "")

    remembered: set[str] = set()
    assert history.sync_live(folder, rsync_one, said.append, remembered) == []
    history.sync_live(folder, rsync_one, said.append, remembered)
    assert copied == ["live", "live"]  # the running run only, once per pass
    assert said == ["live sync of live skipped: rsync failed (exit 23)"]  # said once
    assert not stale.exists()  # the collected event files took over


def test_the_board_command_is_tensorboards_own_program(tmp_path) -> None:
    argv = history.board_command("/venv/bin/python", tmp_path, "127.0.0.1", 6123)
    assert argv[:3] == ["/venv/bin/python", "-m", "tensorboard.main"]
    assert argv[argv.index("--logdir") + 1] == str(tmp_path)
    assert argv[argv.index("--host") + 1] == "127.0.0.1"
    assert argv[argv.index("--port") + 1] == "6123"


def test_the_live_copy_on_runpod_without_a_key_is_refused_before_the_board(tmp_path) -> None:
    """runs.board --live -b runpod with no key started TensorBoard and its copies anyway,
    each copy then failing on the missing key; every other task refuses it at once."""
    from podcycle.config import resolve

    keyless = resolve({"backend": "runpod", "artifacts_dir": str(tmp_path)}, {}, environ={},
                      use_keyring=False)
    with pytest.raises(ConfigError, match="backend is runpod but no RunPod API key"):
        history.pod_rsync(keyless)
    local = resolve({"backend": "local", "artifacts_dir": str(tmp_path),
                     "local_dir": str(tmp_path / "local")}, {}, environ={}, use_keyring=False)
    assert callable(history.pod_rsync(local))
    assert not (tmp_path / "local").exists()  # the local RunPod starts only for a copy


@pytest.mark.parametrize("metrics", [
    {"epochs": [{"epoch": "x", "val_loss": "y"}], "final": {"val_loss": "abc"}},
    {"epochs": "nope", "final": 5},
    {"epochs": [{"epoch": 1, "val_loss": {"a": 1}, "train_loss": True}, "x"],
     "final": {"val_top1": [1]}, "params": "many"},
    {"epochs": [{"epoch": 1, "val_loss": {"nan": 1}}]},
])
def test_a_metrics_file_of_the_wrong_types_is_shown_not_a_traceback(tmp_path, metrics) -> None:
    """A hand-edited or foreign metrics.json: runs.show, runs.list and runs.compare keep
    what is a number and show '-' for the rest."""
    art = tmp_path / "art"
    for run_id in ("odd", "good"):
        make_run(art, run_id, outcome="ok", steps=ALL_DONE,
                 metrics=metrics if run_id == "odd" else {
                     "epochs": [{"epoch": 1, "val_loss": 2.5, "val_top1": 0.1}]})
    shown = history.show_text(history.show(art, "odd"))
    assert "run odd: finished" in shown
    assert history.show(art, "odd")["metrics"]["epochs"] == [
        {k: v for k, v in e.items() if k == "epoch" and isinstance(v, int)}
        for e in (metrics["epochs"] if isinstance(metrics["epochs"], list) else [])
        if isinstance(e, dict)]
    assert "odd" in rows_by_id(art)
    try:
        drawn = history.compare(art, ["odd", "good"], tmp_path / "c.png")
    except ConfigError as refused:  # no curve to draw: said, not a crash
        assert "has no metrics to compare" in refused.message
        assert "metrics.json holds no epoch to draw" in refused.message  # not "is missing"
    else:
        assert drawn.picture.is_file() and [r.id for r in drawn.rows] == ["odd", "good"]


@pytest.mark.parametrize("fields, where", [
    ({"created_at": "abc"}, 'state.created_at is "abc"'),
    # A number that is no time: gmtime overflowed in runs.list, for every run.
    ({"created_at": 1e300}, "state.created_at is 1e+300, which is no time"),
    ({"created_at": float("nan")}, "state.created_at is NaN"),
    ({"events": [{"bogus": "1"}]}, "state.events holds an entry without its 'at'"),
    ({"total_seconds": "abc", "outcome": "ok"}, 'state.total_seconds is "abc"'),
    ({"events": "xyz"}, 'state.events is "xyz"'),
    ({"steps": {"train": {"status": 3}}}, "state.steps.train.status is 3"),  # its step named
    # A record that is no object: "AttributeError: 'list' object has no attribute 'items'".
    ({"pod": [1, 2]}, "wrong shape: state.pod is [1, 2], which is not an object)"),
    ({"steps": {"train": "done"}}, 'state.steps.train is "done", which is not an object'),
    ({"transfers": [5]}, "state.transfers[0] is 5, which is not an object"),
    ({"cluster": {"id": "c1", "name": "n", "pod_count": 2,
                  "members": [{"pod_id": "p", "rank": 0, "paths": [1, 2]}]}},
     "state.cluster.members[0].paths is [1, 2], which is not an object"),
    ({"pod": {"id": "p1", "price_per_hour": "cheap"}}, 'state.pod.price_per_hour is "cheap"'),
    ({"nodes": True}, "state.nodes is true"),
    ({"run_id": None}, "KeyError: 'run_id'"),  # {} read as 'another version' before
])
def test_a_state_of_the_wrong_types_is_unreadable_not_a_traceback(tmp_path, fields: dict,
                                                                    where: str) -> None:
    """A hand-edited state.json with a field of the wrong type: runs.list crashed for every
    run (sorting, formatting), and runs.show too. It is now refused when read, naming the
    field, and listed as unreadable beside the runs that are fine."""
    art = tmp_path / "art"
    make_run(art, "good", outcome="ok", steps=ALL_DONE)
    bad = art / "bad" / "state.json"
    bad.parent.mkdir(parents=True)
    bad.write_text(json.dumps({"schema": SCHEMA, "run_id": "bad", **fields}))
    with pytest.raises(ConfigError) as refused:
        read_state(bad)
    assert where in refused.value.message
    rows = history.sort_rows(history.read_runs(art), "started")
    assert {r.id: r.status for r in rows} == {"good": "finished", "bad": "unreadable"}
    assert where in history.show(art, "bad")["run"]["status_detail"]


def test_runs_show_lets_no_field_of_a_state_forge_a_line(tmp_path) -> None:
    """runs.show made an ESC visible but printed a line break in a state's field as it was:
    a gpu_id of "RTX\\nFORGED LINE" (a hand-edited or hostile state.json) printed a line
    of its own. runs.list already showed it as \\x0a."""
    art = tmp_path / "art"
    run = make_run(art, "forged", outcome="ok", steps=ALL_DONE)
    run.state.pod.gpu_id = "\x1b[31mRED\nFORGED LINE"
    run.state.dataset.local = "/data/x\r\nFORGED DATASET"
    run.save()
    text = history.show_text(history.show(art, "forged"))
    assert not [line for line in text.splitlines() if line.startswith("FORGED")], text
    assert "\\x1b[31mRED\\x0aFORGED LINE" in text
    assert "/data/x\\x0d\\x0aFORGED DATASET" in text


def test_a_state_json_nested_past_pythons_stack_is_one_unreadable_run(tmp_path) -> None:
    """A state.json of 100,000 nested objects made json.loads raise RecursionError, which no
    reader caught: runs.show and pod.leftovers ended in a traceback, and every later
    cycle.full-smoke (which lists the runs) failed, so every trial of a sweep failed."""
    art = tmp_path / "art"
    make_run(art, "good", outcome="ok", steps=ALL_DONE)
    bad = art / "nested" / "state.json"
    bad.parent.mkdir(parents=True)
    bad.write_text('{"a":' * 100_000 + "1" + "}" * 100_000)
    with pytest.raises(ConfigError, match=r"state\.json is not valid JSON"):
        read_state(bad)
    with pytest.raises(ConfigError, match=r"state\.json is not valid JSON"):
        RunFolder(art, "nested").reload()  # what every cycle step reads first
    assert dict(list_runs(art))["nested"] is None and dict(list_runs(art))["good"]
    assert {r.id: r.status for r in history.read_runs(art)} == {"good": "finished",
                                                               "nested": "unreadable"}
    assert history.show(art, "nested")["run"]["status"] == "unreadable"


@pytest.mark.parametrize("kind", ["folder", "broken link"])
def test_a_state_json_that_is_no_file_is_an_unreadable_run_not_no_run(tmp_path,
                                                                      kind: str) -> None:
    """A folder (or a link to nothing) where state.json belongs: runs.show said "no run 'bad'"
    and then listed bad among the runs here; runs.list called it foreign. It is a run whose
    state cannot be read, and the cycle refuses to drive it, naming the file."""
    art = tmp_path / "art"
    make_run(art, "good", outcome="ok", steps=ALL_DONE)
    bad = art / "bad" / "state.json"
    bad.parent.mkdir(parents=True)
    if kind == "folder":
        bad.mkdir()
    else:
        bad.symlink_to(tmp_path / "nothing-here")
    assert RunFolder(art, "bad").exists()
    with pytest.raises(ConfigError, match=r"state\.json is not a file"):
        read_state(bad)
    with pytest.raises(ConfigError, match=r"state\.json is not a file"):
        RunFolder(art, "bad").reload()  # what every cycle step reads first
    assert {r.id: r.status for r in history.read_runs(art)} == {"good": "finished",
                                                               "bad": "unreadable"}
    shown = history.show(art, "bad")
    assert shown["run"]["status"] == "unreadable" and shown["state"] is None
    assert "is not a file" in shown["state_error"]
    states = dict(list_runs(art))  # the hints of "no run" errors list these
    assert states["good"] is not None and "bad" in states and states["bad"] is None


def test_a_diverged_epoch_shows_as_nan_not_as_missing(tmp_path) -> None:
    art = tmp_path / "art"
    make_run(art, "diverged", outcome="ok", steps=ALL_DONE, metrics={
        "epochs": [{"epoch": 1, "train_loss": 2.0, "val_loss": float("nan"), "val_top1": 0.1}]})
    assert "nan" in history.show_text(history.show(art, "diverged"))


def test_a_huge_metric_is_shown_short(tmp_path) -> None:
    """A loss of 1e308 (a diverged run, or a hostile metrics.json) was 309 digits wide in
    runs.list and runs.show, pushing every column off the screen."""
    art = tmp_path / "art"
    make_run(art, "huge", outcome="ok", steps=ALL_DONE, metrics={
        "epochs": [{"epoch": 1, "train_loss": 1e308, "val_loss": -3e7, "val_top1": 0.25}],
        "final": {"epoch": 1, "train_loss": 1e308, "val_loss": -3e7, "val_top1": 0.25}})
    row = history.list_table(history.read_runs(art))[0]
    assert "-3e+07" in row and "0.2500" in row
    shown = history.show_text(history.show(art, "huge"))
    assert "1e+308" in shown and max(len(line) for line in shown.splitlines()) < 200


def test_runs_show_prints_what_came_from_the_pod_escaped(tmp_path, monkeypatch, capsys) -> None:
    """A step's error (a manifest name from the pod) and metrics.json's free fields reached
    the terminal raw through runs.show (OSC 0 retitles the window, CSI 2J clears it)."""
    from tasks import runs as runs_tasks

    art = tmp_path / "art"
    run = make_run(art, "evil", outcome="failed", steps={"start": "done", "collect": "failed"},
                   metrics={"epochs": [{"epoch": 1, "train_loss": 2.0, "val_loss": 2.1,
                                        "val_top1": 0.2}],
                            "random_legal_top1": "\x1b]0;TITLE\x07\x1b[2J"})
    run.state.steps["collect"].error = "run_artifacts/\x1b]0;OWNED\x07x is missing"
    run.save()
    monkeypatch.setenv("POD_CYCLE_ARTIFACTS_DIR", str(art))
    runs_tasks.show.body(None, "evil")
    out = capsys.readouterr().out
    assert "\x1b" not in out and "\x07" not in out
    assert "run_artifacts/\\x1b]0;OWNED\\x07x is missing" in out


def test_resume_without_a_run_id_never_picks_a_done_run_or_guesses_past_a_broken_one(
        tmp_path) -> None:
    """`full-smoke --resume` with no run id took a step-by-step run whose every step was done
    (it has no outcome) and rewrote its record; with the latest run unreadable, it revived an
    older run the user had stopped and ran a paid cycle on it."""
    import os

    from podcycle.config import resolve
    from podcycle.cycle import open_run
    from podcycle.errors import StepFailed

    art = tmp_path / "art"
    settings = resolve({}, {}, environ={"POD_CYCLE_ARTIFACTS_DIR": str(art)},
                       use_keyring=False)
    half = make_run(art, "half", outcome=None, driver="steps",
                    steps={"start": "done", "stop": "done"})
    made = make_run(art, "all-done", outcome=None, driver="steps", steps=ALL_DONE)
    now = time.time()  # the runs are ordered by their state file's time
    os.utime(half.state_path, (now, now))
    os.utime(made.state_path, (now + 10, now + 10))  # the latest
    run = open_run(settings, mode="resume", announce=lambda _: None)
    assert run.run_id == "half"
    run.unlock()
    broken = art / "late" / "state.json"
    broken.parent.mkdir()
    broken.write_text("{ not json")
    os.utime(broken, (now + 20, now + 20))
    with pytest.raises(StepFailed) as refused:
        open_run(settings, mode="resume", announce=lambda _: None)
    assert "the latest run, late, cannot be read" in refused.value.message
    # The latest is done, yet its pod bills (cycle.stop never ran): it is the one meant.
    broken.unlink()
    billing = make_run(art, "billing", outcome=None, driver="steps",
                       steps={name: "done" for name in WORK_STEPS}, running_pod=True)
    os.utime(billing.state_path, (now + 30, now + 30))
    with pytest.raises(StepFailed) as still:
        open_run(settings, mode="resume", announce=lambda _: None)
    assert "the latest run, billing, is done but its pod lp-billing still bills" in \
        still.value.message and "inv cycle.stop -r billing" in still.value.remedy


def test_elo_against_different_opponents_is_said_not_to_compare() -> None:
    """runs.list --sort elo ranked an Elo against random above one against the previous run
    and one made against a crashing engine, as if they measured the same thing."""
    def row(run_id: str, elo: float, opponent: str) -> Any:
        return history.RunRow(id=run_id, path=run_id, status="ok", elo=elo,
                              strength_opponent=opponent)

    same = [row("a", 191.0, "random"), row("b", 88.0, "random")]
    assert history.opponents_note(same) is None
    mixed = [*same, row("c", -20.0, "chessbot:rc-1")]
    assert history.opponents_note(mixed) == (
        "note: each Elo is against its run's own opponent (chessbot:rc-1, random): compare "
        "Elo only between runs that played the same one (inv eval.match plays any two)")


def test_a_pod_its_guard_has_stopped_unseen_is_not_shown_running_at_a_rising_cost(
        tmp_path: Path) -> None:
    """`cycle.start --max-minutes 0.5`, then nothing: the pod stopped itself after 30 s,
    yet runs.show said "still running" and its estimated cost rose by the minute (runs.list
    too), until a cycle looked. The estimate ends at the guard's deadline."""
    from podcycle.runs import SpendGuard

    run = make_run(tmp_path, "guarded", outcome=None, steps={"start": "done"},
                   running_pod=True)  # at $0.36/h
    run.state.pod.billed_seconds = 0.0
    run.state.pod.running_since = time.time() - 60  # answered SSH a minute ago
    run.state.pod.guard = SpendGuard(minutes=0.5, reason="--max-minutes 0.5",
                                     max_minutes=0.5)
    run.save()
    row = history.read_run(tmp_path, "guarded")
    assert row.cost_usd == pytest.approx(0.36 * 30 / 3600, abs=1e-4)  # 30 s, not 60 and on
    shown = history.show_text(history.show(tmp_path, "guarded"))
    assert "stopped by its spend guard by 20" in shown and "still running" not in shown
    run.state.pod.guard.minutes = 90  # not due yet: it runs, and counts up
    run.save()
    assert history.read_run(tmp_path, "guarded").cost_usd == pytest.approx(0.36 * 60 / 3600,
                                                                          abs=2e-4)
    assert "still running" in history.show_text(history.show(tmp_path, "guarded"))


def test_a_running_runs_duration_counts_its_step_under_way(tmp_path: Path) -> None:
    """runs.list and runs.show said "1s" for a run ten minutes into its training: only the
    steps that had ended were summed."""
    run = make_run(tmp_path, "live", outcome=None, steps={"start": "done"}, running_pod=True)
    run.state.steps["train"] = StepRecord(status="running", started_at=time.time() - 600)
    run.save()
    run.lock()  # a live process drives it
    try:
        row = history.read_run(tmp_path, "live")
    finally:
        run.unlock()
    assert row.status == "running" and row.duration_s == pytest.approx(610, abs=5)
    crashed = history.read_run(tmp_path, "live")  # nobody drives it: no clock runs on
    assert crashed.status != "running" and crashed.duration_s == 10.0
    # A full-smoke resumed (its earlier invocations' total recorded), whose killed process
    # left a step "running" a day ago: only the step the live process began counts on.
    run.state.total_seconds = 100.0
    run.state.steps["collect"] = StepRecord(status="running", started_at=time.time() - 30)
    run.state.steps["train"].started_at = time.time() - 86400
    run.save()
    run.lock()
    try:
        resumed = history.read_run(tmp_path, "live")
    finally:
        run.unlock()
    assert resumed.duration_s == pytest.approx(130, abs=5)


def within(seconds: float, call):  # noqa: ANN001, ANN201
    """call() in a thread, bounded: a read that waits on a FIFO fails the test, not the suite."""
    import threading

    done: dict[str, Any] = {}

    def run() -> None:
        try:
            done["value"] = call()
        except BaseException as exc:  # noqa: BLE001 - handed to the test
            done["error"] = exc

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(seconds)
    assert not thread.is_alive(), f"still waiting after {seconds} s (a FIFO read?)"
    if "error" in done:
        raise done["error"]
    return done.get("value")


def test_files_that_are_fifos_or_devices_are_refused_never_waited_on(tmp_path) -> None:
    """A FIFO where a run's metrics.json, a sweep's meta.json, a sweep file or a template
    file belongs made runs.list, runs.show, sweep.status and sweep.run wait for ever, and
    `sweep.run --config /dev/zero` read until the kernel killed it for memory."""
    import os

    from podcycle import sweep, sweep_config, templates
    from podcycle.files import MAX_CONFIG_BYTES, NotARegularFile, read_regular

    art = tmp_path / "art"
    run = make_run(art, "fifo", outcome="ok", steps=ALL_DONE,
                   metrics={"epochs": [{"epoch": 1, "val_loss": 2.5}]})
    metrics = run.run_artifacts / "metrics.json"
    metrics.unlink()
    os.mkfifo(metrics)
    assert within(30, lambda: history.read_metrics(run)) is None
    assert within(30, lambda: "fifo" in rows_by_id(art))
    assert "run fifo: finished" in within(30, lambda: history.show_text(history.show(art,
                                                                                       "fifo")))
    assert within(30, lambda: sweep.read_metrics(run)) is None
    from podcycle import report

    timings = run.collected / "timings"
    timings.mkdir(parents=True, exist_ok=True)
    os.mkfifo(timings / "x.jsonl")  # report.write (cycle.stop, full-smoke's end) read it
    within(30, lambda: report.on_pod_train_seconds(run))
    fifo = tmp_path / "f.toml"
    os.mkfifo(fifo)
    for path in (fifo, Path("/dev/zero")):
        with pytest.raises(ConfigError, match=r"cannot be read \(not a regular file \(a FIFO, "
                                              r"a device\)\)"):
            within(30, lambda path=path: sweep_config.load(path))
        with pytest.raises(ConfigError, match="not a regular file"):
            within(30, lambda path=path: templates.read_text(path))
    big = tmp_path / "big.toml"
    big.write_bytes(b"#" * (MAX_CONFIG_BYTES + 1))
    with pytest.raises(ConfigError, match="cannot be read .over 1,048,576 bytes"):
        sweep_config.load(big)
    folder = sweep.SweepFolder(tmp_path / "sweeps", "s1")
    folder.path.mkdir(parents=True)
    os.mkfifo(folder.meta_path)
    with pytest.raises(sweep.SweepError, match=r"sweep.json cannot be read \(not a regular file"):
        within(30, folder.meta)
    with pytest.raises(NotARegularFile):
        read_regular(tmp_path)  # a folder
    assert read_regular(big, limit=None) == big.read_bytes()


def test_the_runs_here_hint_offers_run_ids_alone(tmp_path: Path) -> None:
    """A folder with a state.json whose name no run id can have (a terminal escape, a shell
    substitution) was offered as a run to name, to be pasted into the next command."""
    from podcycle.runs import known_runs_hint

    steps = {"start": "done"}
    make_run(tmp_path, "good-1", outcome=None, driver="steps", steps=steps)
    for odd in ("esc\x1b[2Jname", "bad$(id)name"):
        (tmp_path / odd).mkdir()
        (tmp_path / odd / "state.json").write_text("{}")
    assert known_runs_hint(tmp_path) == "runs here, last used first: good-1"
