"""Runs read back from their folders: typed rows for `runs.list`, one run's screen for
`runs.show`, a side-by-side comparison with one picture for `runs.compare`, and the
TensorBoard command and live sync of `runs.board`.

Every run folder is self-describing (state.json, collected/run_artifacts/metrics.json, the
report, TensorBoard event files), so nothing here keeps a database: each call reads the
folders. A folder that cannot be read becomes a row saying so; it never stops the listing.

A run's status comes from its state and its lock, never from a guess (`run_status`, the one
place it is decided; STATUS_MEANINGS says what each word means).
"""

from __future__ import annotations

import errno
import json
import math
import os
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from podcycle.elo import signed
from podcycle.errors import ConfigError, PodCycleError
from podcycle.files import read_regular
from podcycle.runs import STEPS, WORK_STEPS, RunFolder, RunState, known_runs_hint

# -- status ------------------------------------------------------------------------------------
STATUS_MEANINGS = {
    "running": "a live process holds the run's lock (cycle.full-smoke or a cycle.* step is "
               "driving it now)",
    "finished": "every step finished (outcome ok; a step-by-step run: every step done)",
    "failed": "it ended on an error (outcome failed; a step-by-step run: its last step failed)",
    "interrupted": "stopped mid-way by Ctrl-C or SIGTERM (outcome interrupted); --resume "
                   "continues it",
    "unfinished": "no outcome and nobody drives it: a step-by-step run waiting for its next "
                  "step, or one whose host died mid-step",
    "unreadable": "its state.json cannot be read (not JSON, or written by another version)",
    "foreign": "a folder under the artifacts folder that is not a run (no state.json)",
}
STATUSES = tuple(STATUS_MEANINGS)


def run_status(state: RunState, driven: bool) -> tuple[str, str]:
    """(status, detail) of a readable run: `driven` is whether a live process holds its lock
    (RunFolder.is_driven). The outcome the driver recorded wins; a run without one (a
    step-by-step run, or a driver that died) is judged by its steps."""
    if state.outcome == "ok":
        return "finished", "outcome ok"
    if state.outcome == "failed":
        failed = [n for n, s in state.steps.items() if s.status == "failed"]
        return "failed", f"{', '.join(failed) or 'a step'} failed"
    if state.outcome == "interrupted":
        where = [n for n, s in state.steps.items() if s.status == "interrupted"]
        return "interrupted", f"stopped during {', '.join(where) or 'the run'}"
    if state.outcome is not None:
        return "unreadable", f"unknown outcome {state.outcome!r}"
    if driven:
        current = [n for n, s in state.steps.items() if s.status == "running"]
        return "running", f"{', '.join(current) or 'starting'} (lock held)"
    if all(state.done(name) for name in WORK_STEPS):
        stop = state.steps.get("stop")
        kept = stop is None or stop.status != "done"
        return "finished", ("every step done; its pod was not stopped by the run" if kept
                            else "every step done (step by step)")
    last = _last_step(state)
    if last is not None and last[1].status in ("failed", "interrupted"):
        status = last[1].status
        return status, f"step {last[0]} {status}; nobody drives it now"
    if any(step.status == "running" for step in state.steps.values()):
        return "unfinished", "a step was running when its process died"
    if state.open_between_steps:
        return "unfinished", f"waiting for its next step ({', '.join(state.pending())})"
    if last is not None and last[0] == "stop" and last[1].status == "done":
        pending = state.pending()
        # A step that had run and was made outdated by an earlier one run again (another
        # dataset pushed after the train) was shown as never reached ("stopped before
        # train"), its old model's numbers beside it.
        outdated = [n for n in pending if state.step(n).status == "outdated"]
        if outdated:
            return "unfinished", (f"{', '.join(outdated)} outdated (a step before it ran "
                                  f"again), then its pod was stopped; cycle.full-smoke "
                                  "--resume redoes it")
        return "unfinished", (f"its pod was stopped before {', '.join(pending)}; "
                              "cycle.full-smoke --resume continues it")
    return "unfinished", "no outcome recorded and nobody drives it"


def _last_step(state: RunState) -> tuple[str, Any] | None:
    started = [(name, step) for name, step in state.steps.items() if step.started_at]
    return max(started, key=lambda item: item[1].started_at) if started else None


# -- one row per run ---------------------------------------------------------------------------
@dataclass
class RunRow:
    id: str
    path: str
    status: str
    status_detail: str = ""
    started: float | None = None
    driver: str | None = None
    backend: str | None = None
    dataset_name: str | None = None
    dataset_sha256: str | None = None
    dataset_hash: str | None = None  # the encoded set's digest the trainer records
    blocks: int | None = None
    channels: int | None = None
    params: int | None = None
    epochs: int | None = None
    train_loss: float | None = None
    val_loss: float | None = None
    val_top1: float | None = None
    batch_size: int | None = None
    lr: float | None = None
    nodes: int | None = None
    world_size: int | None = None
    elo: float | None = None
    elo_low: float | None = None
    elo_high: float | None = None
    sprt: str | None = None
    strength_opponent: str | None = None
    pod: str | None = None
    cluster: str | None = None
    cluster_nodes: int | None = None
    gpu: str | None = None
    cost_usd: float | None = None
    cost_kind: str | None = None  # billed (RunPod's billing) | estimated (price × time)
    duration_s: float | None = None
    has_metrics: bool = False
    curves: list[dict[str, Any]] = field(default_factory=list, repr=False)

    @property
    def model(self) -> str | None:
        if self.blocks is None or self.channels is None:
            return None
        return f"{self.blocks}x{self.channels}"

    @property
    def dataset(self) -> str | None:
        short = (self.dataset_sha256 or self.dataset_hash or "")[:10]
        if self.dataset_name and short:
            return f"{self.dataset_name} ({short})"
        return self.dataset_name or short or None

    def as_dict(self) -> dict[str, Any]:
        # Field by field, not asdict(): that deep-copied every epoch of the curves only for
        # them to be dropped (8 s of runs.list --json over 1,000 runs of 1,000 epochs).
        data = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "curves"}
        data["model"] = self.model
        data["dataset"] = self.dataset
        data["started_at"] = _iso(self.started)
        data["strength"] = strength_text(self)
        return data


def _iso(ts: float | None) -> str | None:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ts)) if ts else None


def _get(obj: Any, *names: str) -> Any:
    """A field of a record that may be an object (a dataclass) or a dict, first name found."""
    for name in names:
        value = obj.get(name) if isinstance(obj, dict) else getattr(obj, name, None)
        if value is not None:
            return value
    return None


def _number(value: Any, kind: type = float) -> Any:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return kind(value)


def read_metrics(run: RunFolder) -> dict[str, Any] | None:
    """The collected metrics.json (the trainer's format), or None when absent or unreadable."""
    try:
        data = json.loads(read_regular(run.run_artifacts / "metrics.json"))  # a FIFO: None
    except (OSError, ValueError, RecursionError):  # a JSON nested past Python's stack too
        return None
    if not isinstance(data, dict):
        return None
    # The curves are numbers: a hand-edited or foreign file keeps only the values that are
    # (every reader formats and plots them as such; NaN stays, as the trainer wrote it).
    epochs = data.get("epochs") if isinstance(data.get("epochs"), list) else []
    data["epochs"] = [{k: v for k, v in e.items() if _is_number(v)}
                      for e in epochs if isinstance(e, dict)]
    if "final" in data:
        final = data["final"] if isinstance(data["final"], dict) else {}
        data["final"] = {k: v for k, v in final.items() if _is_number(v)}
    return data


def _is_number(value: Any) -> bool:
    """An int or float; NaN and inf too (a diverged epoch shows as nan, not as missing)."""
    return isinstance(value, int | float) and not isinstance(value, bool)


def pushed_after_the_metrics(steps: dict[str, Any]) -> bool:
    """Whether the run's dataset was pushed after the model its collected metrics are of was
    trained (its steps as state.json holds them): its train outdated, or the last push ended
    after the last collect began (a train again under way, failed or interrupted)."""
    def field(step: str, name: str) -> Any:  # a StepRecord, or its JSON (runs.show)
        record = steps.get(step)
        return record.get(name) if isinstance(record, dict) else getattr(record, name, None)

    if field("train", "status") == "outdated":
        return True
    pushed, collected = field("push-dataset", "finished_at"), field("collect", "started_at")
    return isinstance(pushed, int | float) and isinstance(collected, int | float) \
        and pushed > collected


def _apply_metrics(row: RunRow, metrics: dict[str, Any], curves: bool) -> None:
    epochs = [e for e in metrics.get("epochs") or [] if isinstance(e, dict)]
    final = metrics.get("final") if isinstance(metrics.get("final"), dict) else None
    last = final or (epochs[-1] if epochs else {})
    row.has_metrics = True
    row.curves = epochs if curves else []
    row.epochs = _number(last.get("epoch"), int) if last else None
    if row.epochs is None and epochs:
        row.epochs = len(epochs)
    row.train_loss = _number(last.get("train_loss"))
    row.val_loss = _number(last.get("val_loss"))
    row.val_top1 = _number(last.get("val_top1"))
    config = metrics.get("model_config") if isinstance(metrics.get("model_config"), dict) \
        else {}
    row.blocks = _number(config.get("blocks"), int)
    row.channels = _number(config.get("channels"), int)
    row.params = _number(_get(metrics, "params", "parameters") or _get(config, "params"), int)
    row.batch_size = _number(metrics.get("batch_size"), int)
    args = metrics.get("args") if isinstance(metrics.get("args"), dict) else {}
    row.lr = _number(_get(metrics, "lr", "learning_rate") or _get(args, "lr"))
    row.world_size = _number(metrics.get("world_size"), int)
    row.nodes = _number(metrics.get("nodes"), int)
    row.dataset_hash = metrics.get("dataset_hash") if isinstance(
        metrics.get("dataset_hash"), str) else None
    if not row.gpu and metrics.get("gpu"):
        row.gpu = str(metrics["gpu"])


def _apply_state(row: RunRow, state: RunState) -> None:
    from podcycle import report

    row.started = state.created_at
    row.driver = state.driver
    row.backend = state.backend
    if state.dataset is not None:
        row.dataset_name = Path(state.dataset.local).name
        row.dataset_sha256 = state.dataset.sha256
    pod = state.pod
    if pod is not None:
        row.pod = pod.id
        row.gpu = f"{pod.gpu_count}x {pod.gpu_id}" if pod.gpu_id else None
    cluster = getattr(state, "cluster", None)
    if cluster:
        row.cluster = _get(cluster, "id", "cluster_id", "name")
        count = _get(cluster, "pod_count", "nodes", "node_count", "num_nodes")
        row.cluster_nodes = len(count) if isinstance(count, (list, tuple)) else _number(
            count, int)
        gpu_id, per_pod = _get(cluster, "gpu_id"), _get(cluster, "gpu_count_per_pod")
        if gpu_id and row.cluster_nodes:
            row.gpu = f"{row.cluster_nodes} nodes x {per_pod or 1}x {gpu_id}"
    row.cost_usd, row.cost_kind = report.run_cost(state)
    if state.total_seconds is not None:
        seconds = [state.total_seconds]
    else:
        seconds = [s.seconds for s in state.steps.values() if s.seconds is not None]
    if row.status == "running":
        # The step under way counts up to now ("1s" ten minutes into a training): the one
        # begun last, the live process's (an older "running" one is a killed process's).
        under_way = [s.started_at for s in state.steps.values()
                     if s.status == "running" and s.started_at]
        if under_way:
            seconds.append(max(0.0, time.time() - max(under_way)))
    row.duration_s = round(sum(seconds), 3) if seconds else None
    strength = getattr(state, "strength", None)
    if isinstance(strength, dict):
        row.elo = _number(strength.get("elo"))
        row.elo_low = _number(strength.get("elo_low"))
        row.elo_high = _number(strength.get("elo_high"))
        sprt = strength.get("sprt")
        row.sprt = sprt.get("verdict") if isinstance(sprt, dict) else None
        row.strength_opponent = strength.get("opponent")


def read_run(artifacts_dir: Path, name: str, *, curves: bool = True) -> RunRow:
    """One folder under the artifacts folder as a row; never raises for a bad folder.
    curves=False leaves out the epochs' curves (row.curves empty), which only a comparison
    draws."""
    path = artifacts_dir / name
    try:
        run = RunFolder(artifacts_dir, name)
    except PodCycleError:
        return RunRow(name, str(path), "foreign", "not a run id")
    row = RunRow(name, str(run.path), "unreadable")
    if not run.exists():
        if run.is_driven():
            row.status, row.status_detail = "running", "starting (lock held, no state yet)"
        else:
            row.status, row.status_detail = "foreign", "no state.json"
        return row
    try:
        state = run.state
    except PodCycleError as exc:
        row.status_detail = exc.message
        return row
    except Exception as exc:  # noqa: BLE001 - a damaged folder is a row, never a crash
        row.status_detail = f"state.json: {type(exc).__name__}: {exc}"[:200]
        return row
    try:
        row.status, row.status_detail = run_status(state, run.is_driven())
        _apply_state(row, state)
        metrics = read_metrics(run)
        if metrics is not None:
            _apply_metrics(row, metrics, curves)
            if pushed_after_the_metrics(state.steps):
                # A dataset pushed after the train: these metrics are the old model's, and
                # the push's name and digest labelled them. The trainer's own record of
                # what it encoded is the one that is true of them.
                row.dataset_name = row.dataset_sha256 = None
    except Exception as exc:  # noqa: BLE001 - a state with odd values is still listed
        row.status_detail = f"{row.status_detail}; partly unreadable: " \
                            f"{type(exc).__name__}: {exc}"[:300]
    return row


def read_runs(artifacts_dir: Path) -> list[RunRow]:
    """Every folder under the artifacts folder (hidden ones aside), newest first, without
    their curves: 1,000 runs of 1,000 epochs kept 500 MB for runs.list, which shows none."""
    if not artifacts_dir.is_dir():
        return []
    rows = [read_run(artifacts_dir, p.name, curves=False) for p in artifacts_dir.iterdir()
            if p.is_dir() and not p.name.startswith(".")]
    return sort_rows(rows, "started")


# -- filters and sorting -----------------------------------------------------------------------
# Each column sorts in the direction an operator wants first: newest, best loss, best top-1,
# strongest, cheapest, quickest. Rows without the value come last.
SORTS: dict[str, tuple[Callable[[RunRow], Any], bool]] = {
    "started": (lambda r: r.started, True),
    "id": (lambda r: r.id, False),
    "status": (lambda r: r.status, False),
    "dataset": (lambda r: r.dataset, False),
    "model": (lambda r: (r.blocks or 0) * 10000 + (r.channels or 0) if r.model else None,
              True),
    "params": (lambda r: r.params, True),
    "epochs": (lambda r: r.epochs, True),
    "val_loss": (lambda r: r.val_loss, False),
    "val_top1": (lambda r: r.val_top1, True),
    "elo": (lambda r: r.elo, True),
    "cost": (lambda r: r.cost_usd, False),
    "duration": (lambda r: r.duration_s, False),
}


def check_choice(flag: str, value: str, accepted: Sequence[str]) -> str:
    cleaned = value.strip().lower().replace("-", "_") if flag == "--sort" else \
        value.strip().lower()
    if cleaned not in accepted:
        raise ConfigError(f"{flag} {value!r} is not one of: {', '.join(accepted)}",
                          f"e.g. {flag} {accepted[0]}")
    return cleaned


def sort_rows(rows: list[RunRow], column: str) -> list[RunRow]:
    key, descending = SORTS[column]
    present = [r for r in rows if key(r) is not None]
    missing = [r for r in rows if key(r) is None]
    present.sort(key=key, reverse=descending)
    missing.sort(key=lambda r: r.id)
    return present + missing


def parse_since(text: str, now: float | None = None) -> float:
    """--since: an age (90m, 36h, 7d) or a date/time (2026-11-01, 2026-11-01T08:00:00Z)."""
    from podcycle.pods import parse_since as parse

    return parse(text, now, flag="--since", max_days=3660)


def matches_dataset(row: RunRow, wanted: str) -> bool:
    """A dataset by folder name (case-insensitive) or by a prefix (4+ hex digits) of its
    sha256 or of the encoded set's hash."""
    wanted = wanted.strip()
    if row.dataset_name and row.dataset_name.lower() == wanted.lower():
        return True
    if len(wanted) >= 4 and re.fullmatch(r"[0-9a-fA-F]+", wanted):
        return any(h and h.lower().startswith(wanted.lower())
                   for h in (row.dataset_sha256, row.dataset_hash))
    return False


def select(rows: list[RunRow], *, status: str | None = None, dataset: str | None = None,
           since: float | None = None, sort: str = "started", limit: int | None = None
           ) -> list[RunRow]:
    if status:
        rows = [r for r in rows if r.status == status]
    if dataset:
        rows = [r for r in rows if matches_dataset(r, dataset)]
    if since is not None:
        rows = [r for r in rows if r.started is not None and r.started >= since]
    rows = sort_rows(rows, sort)
    return rows[:limit] if limit else rows


# -- text --------------------------------------------------------------------------------------
def _f(value: float | None, digits: int = 4) -> str:
    """A metric for a table: fixed digits, or scientific from a million up (a diverged loss
    of 1e308 was 309 digits wide and pushed every column off the screen)."""
    if value is None:
        return "-"
    return f"{value:.{digits}g}" if abs(value) >= 1e6 else f"{value:.{digits}f}"


def duration_text(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    if seconds < 120:
        return f"{seconds:.0f}s"
    if seconds < 7200:
        return f"{seconds / 60:.1f}m"
    return f"{seconds / 3600:.1f}h"


def strength_text(row: RunRow) -> str | None:
    if row.elo is None and row.sprt is None:
        return None
    text = ""
    if row.elo is not None:
        if row.elo_low is not None and row.elo_high is None:
            text = f">{signed(row.elo_low, 0)}"  # every game pair won: one end (podcycle.elo)
        elif row.elo_high is not None and row.elo_low is None:
            text = f"<{signed(row.elo_high, 0)}"
        else:
            text = f"{signed(row.elo, 0)}"
            if row.elo_high is not None:
                text += f"±{row.elo_high - row.elo:.0f}"
    if row.sprt:
        text += f" SPRT {row.sprt}"
    return text.strip()


def opponents_note(rows: list[RunRow]) -> str | None:
    """When the rows' Elo values were played against different opponents (each run's strength
    check plays the previous finished run by default), one line saying they do not compare."""
    played = sorted({r.strength_opponent for r in rows
                     if r.elo is not None and r.strength_opponent})
    if len(played) < 2:
        return None
    shown = ", ".join(played[:4]) + (f" and {len(played) - 4} more" if len(played) > 4 else "")
    return (f"note: each Elo is against its run's own opponent ({shown}): compare Elo only "
            "between runs that played the same one (inv eval.match plays any two)")


def cost_text(row: RunRow) -> str:
    if row.cost_usd is None:
        return "-"
    return f"${row.cost_usd:.4f}" if row.cost_kind == "billed" else f"~${row.cost_usd:.4f}"


def where_text(row: RunRow) -> str:
    if row.cluster:
        nodes = f" ({row.cluster_nodes} nodes)" if row.cluster_nodes else ""
        return f"cluster {row.cluster}{nodes}"
    return row.pod or "-"


def model_text(row: RunRow) -> str:
    if not row.model:
        return "-"
    return row.model + (f" ({row.params:,} params)" if row.params else "")


LIST_HEADERS = ["ID", "STATUS", "STARTED", "DATASET", "MODEL", "EPOCHS", "VAL LOSS", "TOP-1",
                "STRENGTH", "POD", "GPU", "COST", "TIME"]


def list_table(rows: list[RunRow]) -> list[list[str]]:
    return [[r.id, r.status, time.strftime("%Y-%m-%d %H:%M", time.gmtime(r.started))
             if r.started else "-", r.dataset or "-", model_text(r),
             "-" if r.epochs is None else str(r.epochs), _f(r.val_loss), _f(r.val_top1),
             strength_text(r) or "-", where_text(r), r.gpu or "-", cost_text(r),
             duration_text(r.duration_s)] for r in rows]


# -- one run -----------------------------------------------------------------------------------
def find_run(artifacts_dir: Path, run_id: str) -> RunFolder:
    """The run folder of `run_id`, or a one-line error with the known runs."""
    run = RunFolder(artifacts_dir, run_id)
    if not run.exists():
        raise ConfigError(f"no run {run_id!r} under {artifacts_dir}",
                          known_runs_hint(artifacts_dir))
    return run


def show(artifacts_dir: Path, run_id: str) -> dict[str, Any]:
    """Everything runs.show prints: the row, the state, the metrics and the paths."""
    run = find_run(artifacts_dir, run_id)
    row = read_run(artifacts_dir, run.run_id)
    data: dict[str, Any] = {"run": row.as_dict()}
    try:
        data["state"] = run.state.to_json()
    except PodCycleError as exc:
        data["state"] = None
        data["state_error"] = exc.message
    data["metrics"] = read_metrics(run)
    collected = run.run_artifacts / "metrics.json"
    if data["metrics"] is None and os.path.lexists(collected):
        # A damaged file read as "none collected (the run had not trained when it
        # collected)", where runs.compare names it.
        data["metrics_error"] = f"{collected} is not the trainer's JSON (damaged?)"
    model = run.run_artifacts / "model.pt"
    data["paths"] = {
        "folder": str(run.path),
        "state": str(run.state_path),
        "report": str(run.observations) if run.observations.is_file() else None,
        "model": str(model) if model.is_file() else None,
        "loss_curve": str(run.loss_curve) if run.loss_curve.is_file() else None,
        "metrics": str(collected) if data["metrics"] else None,
        "train_log": str(run.run_artifacts / "train.log")
        if (run.run_artifacts / "train.log").is_file() else None,
        "tensorboard": str(run.run_artifacts / "tensorboard")
        if (run.run_artifacts / "tensorboard").is_dir() else None,
    }
    return data


def _visible(value: Any) -> Any:
    """Every text inside `value` with its control characters (line breaks too) made visible:
    what a state.json or metrics.json holds is not to forge a line of runs.show."""
    from podcycle.redact import printable

    if isinstance(value, str):
        return printable(value)
    if isinstance(value, dict):
        return {key: _visible(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_visible(item) for item in value]
    return value


# runs.show is one run on one screen: a run of 1,000 epochs or of 100,000 events printed them
# all. The first 4 epochs and the last, and the latest events, are shown; --json, the report
# and metrics.json have the rest.
SHOWN_EPOCHS = 24
SHOWN_EVENTS = 20


def show_text(data: dict[str, Any]) -> str:
    data = _visible(data)
    row, state, metrics = data["run"], data.get("state"), data.get("metrics")
    lines = [f"run {row['id']}: {row['status']} ({row['status_detail']})",
             f"  started    {row['started_at'] or '-'}"
             + (f", driven by {row['driver']}" if row.get("driver") else "")
             + (f", backend {row['backend']}" if row.get("backend") else ""),
             f"  duration   {duration_text(row['duration_s'])}"]
    if row.get("cluster"):
        nodes = f" ({row['cluster_nodes']} nodes)" if row.get("cluster_nodes") else ""
        lines.append(f"  cluster    {row['cluster']}{nodes}")
    if state and state.get("pod"):
        pod = state["pod"]
        # A stop killed after RunPod took its request (not one going on now: its lock held).
        stop_killed = (pod.get("running_since") and row["status"] != "running"
                       and ((state.get("steps") or {}).get("stop") or {}).get("status")
                       == "running")
        guard = pod.get("guard") or {}
        due = (pod["running_since"] + guard["minutes"] * 60
               if pod.get("running_since") and isinstance(guard.get("minutes"), int | float)
               and guard.get("fired") is not False else None)
        running = "still running"
        if due is not None and due < time.time():  # it stopped itself: nobody saw it yet
            running = (f"stopped by its spend guard by {_iso(due)} (no cycle has seen it "
                       f"since: inv pod.leftovers makes sure)")
        lines.append(f"  pod        {pod['id']} ({pod.get('gpu_count')}x {pod.get('gpu_id')}, "
                     f"{pod.get('cloud') or '-'} cloud), "
                     + (running if pod.get("running_since") else
                        f"terminated {_iso(pod['terminated_at'])} (its disk with it)"
                        if pod.get("terminated_at") else
                        f"{'deleted with its cluster' if pod.get('cluster_id') else 'stopped'} "
                        f"{_iso(pod.get('stopped_at'))}" if pod.get("stopped_at") else
                        "starting (may be billing)")
                     + (" — STOP FAILED, it may be billing" if pod.get("stop_failed") else "")
                     + ((" — its cluster's delete was under way when its process ended, "
                         "so it may be deleted already" if row.get("cluster") else
                         " — its stop was under way when its process ended, so it may be "
                         "stopped already") + f" (inv cycle.stop -r {row['id']} makes sure)"
                        if stop_killed else ""))
    cost = "-"
    if row["cost_usd"] is not None:
        cost = f"${row['cost_usd']:.4f} ({row['cost_kind']})"
    lines.append(f"  cost       {cost}")
    pushed = state.get("dataset") if state else None
    # The model's numbers are from before the push (runs.list labels them with the trainer's
    # own record of its dataset, read_run).
    after = pushed and row.get("has_metrics") and \
        pushed_after_the_metrics(state.get("steps") or {})
    if row.get("dataset") or after:
        extra = ""
        if after:
            extra = (f" (the model's); {pushed['local']} was pushed after its train "
                     f"({pushed['train']} train / {pushed['val']} val positions)")
        elif pushed:
            extra = (f": {pushed['train']} train / {pushed['val']} val positions from "
                     f"{pushed['local']}")
        lines.append(f"  dataset    {row.get('dataset') or '-'}{extra}")
    if state and state.get("steps"):
        lines += ["", "  step            status        seconds"]
        for name in STEPS:
            step = state["steps"].get(name)
            if step:
                seconds = "-" if step.get("seconds") is None else f"{step['seconds']:.2f}"
                error = f"  {step['error']}" if step.get("error") else ""
                status = step["status"]
                if status == "running" and row["status"] != "running":
                    status = "cut short"  # its process died mid-step: nothing runs it
                lines.append(f"  {name:<15} {status:<12} {seconds:>8}{error}")
    if metrics:
        lines += ["", f"  model      {row['model'] or '-'}"
                  + (f", {row['params']:,} params" if row.get("params") else "")
                  + (f", batch {row['batch_size']}" if row.get("batch_size") else "")
                  + (f", lr {row['lr']:g}" if row.get("lr") else "")
                  + (f", world size {row['world_size']}" if row.get("world_size") else ""),
                  "  epoch  train loss  val loss  val top-1"]
        epochs = metrics.get("epochs") or []
        if len(epochs) > SHOWN_EPOCHS + 2:  # one screen: the first few and the last
            left_out = len(epochs) - SHOWN_EPOCHS
            epochs = [*epochs[:4], None, *epochs[left_out + 4:]]
        for epoch in epochs:
            if epoch is None:
                lines.append(f"  ({left_out} epochs not shown: runs.show --json has them all)")
                continue
            lines.append(f"  {epoch.get('epoch', '-'):>5}  {_f(epoch.get('train_loss')):>10}"
                         f"  {_f(epoch.get('val_loss')):>8}  {_f(epoch.get('val_top1')):>9}")
        if metrics.get("random_legal_top1") is not None:
            lines.append(f"  (random legal move top-1: {metrics['random_legal_top1']})")
    elif data.get("metrics_error"):
        lines += ["", f"  metrics    {data['metrics_error']}"]
    else:
        steps = (state or {}).get("steps") or {}
        collect = (steps.get("collect") or {}).get("status")
        lines += ["", "  metrics    none collected " + (
            "(the run had not trained when it collected)" if collect == "done"
            # A collect that ran and did not finish was "did not reach collect".
            else "(its collect failed)" if collect == "failed"
            else "(its collect was interrupted)" if collect == "interrupted"
            else "(its collect has not finished)" if collect == "running"
            else "(the run did not reach collect)")]
    strength = (state or {}).get("strength")
    if strength:
        from podcycle.match import strength_line

        try:
            lines += ["", f"  strength   {strength_line(strength)}"]
        except (KeyError, TypeError, ValueError):
            lines += ["", f"  strength   {row.get('strength') or '-'}"]
    if state and state.get("billing"):
        billing = state["billing"]
        source = "clusters" if state.get("cluster") else "pods"
        # (RunState.from_json reads "available" with no amount as not available.)
        lines.append("  billed     " + (f"${billing['amount']:.4f} (GET /v2/billing/{source})"
                                        if billing.get("available") else
                                        f"not available ({billing.get('detail') or '-'})"))
    if state and state.get("events"):
        events = state["events"]
        lines += ["", "  events"]
        if len(events) > SHOWN_EVENTS + 2:  # the latest: the report and --json hold them all
            lines.append(f"  ({len(events) - SHOWN_EVENTS} earlier events not shown: the "
                         "report and runs.show --json have them all)")
            events = events[-SHOWN_EVENTS:]
        lines += [f"  {e['at']}  {e['text']}" for e in events]
    if data.get("state_error"):
        lines += ["", f"  state      {data['state_error']}"]
    lines += [""] + [f"  {name:<10} {path}" for name, path in data["paths"].items() if path]
    return "\n".join(lines)


# -- compare -----------------------------------------------------------------------------------
COMPARE_ROWS: list[tuple[str, str, Callable[[RunRow], str]]] = [
    ("settings", "status", lambda r: r.status),
    ("settings", "dataset", lambda r: r.dataset or "-"),
    ("settings", "model", lambda r: model_text(r)),
    ("settings", "epochs", lambda r: "-" if r.epochs is None else str(r.epochs)),
    ("settings", "batch size", lambda r: "-" if r.batch_size is None else str(r.batch_size)),
    ("settings", "lr", lambda r: "-" if r.lr is None else f"{r.lr:g}"),
    ("settings", "GPU", lambda r: r.gpu or "-"),
    ("settings", "nodes", lambda r: str(r.nodes or r.cluster_nodes or 1)),
    ("results", "train loss", lambda r: _f(r.train_loss)),
    ("results", "val loss", lambda r: _f(r.val_loss)),
    ("results", "val top-1", lambda r: _f(r.val_top1)),
    ("results", "strength", lambda r: strength_text(r) or "-"),
    ("results", "cost", cost_text),
    ("results", "duration", lambda r: duration_text(r.duration_s)),
]


@dataclass
class Comparison:
    rows: list[RunRow]
    picture: Path

    def table(self) -> list[list[str]]:
        return [[label, *(render(r) for r in self.rows)] for _, label, render in COMPARE_ROWS]

    def as_json(self) -> dict[str, Any]:
        return {"picture": str(self.picture),
                "runs": [{**r.as_dict(), "epochs_history": r.curves} for r in self.rows]}


def compare(artifacts_dir: Path, run_ids: Sequence[str], out: Path | None = None
            ) -> Comparison:
    """The runs side by side and one picture of their curves; each must have metrics."""
    ids = [i for i in run_ids if i]
    if len(ids) < 2:
        raise ConfigError("runs.compare needs at least two run ids",
                          f"e.g. inv runs.compare ID1 ID2; {known_runs_hint(artifacts_dir)}")
    duplicated = sorted({i for i in ids if ids.count(i) > 1})
    if duplicated:
        raise ConfigError(f"run {duplicated[0]} is named twice", "name each run once")
    rows = []
    for run_id in ids:
        run = find_run(artifacts_dir, run_id)
        row = read_run(artifacts_dir, run.run_id)
        if row.status == "unreadable":  # its state.json: its metrics were never read
            raise ConfigError(f"run {run_id} cannot be compared: {row.status_detail}",
                              f"fix or move away {run.state_path} (inv runs.show {run_id} "
                              "says what is wrong with it)")
        if not row.has_metrics or not row.curves:
            metrics = run.run_artifacts / "metrics.json"
            why = ("is missing" if not metrics.exists() else "is not the trainer's JSON"
                   if not row.has_metrics else "holds no epoch to draw")
            raise ConfigError(f"run {run_id} has no metrics to compare ({row.status}: "
                              f"{metrics} {why})",
                              "compare runs that reached collect (inv runs.list shows their "
                              "val loss)")
        rows.append(row)
    if out is None:
        name = "compare-" + "-".join(ids) + ".png"
        if len(name) > 120:
            import hashlib

            digest = hashlib.sha256("\0".join(ids).encode()).hexdigest()[:12]
            name = f"compare-{ids[0]}-and-{len(ids) - 1}-more-{digest}.png"
        out = artifacts_dir / name
    else:
        check_picture_target(out)
    return Comparison(rows, plot_curves(rows, out))


PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def check_picture_target(out: Path) -> None:
    """runs.compare --out: a .png path the picture may take, a new file or an earlier
    picture. Any file there was replaced (notes.png holding text, lost without a word), and a
    path under a file failed with a bare "File exists"."""
    if out.is_dir():  # a folder (no suffix) was told "e.g. --out FOLDER.png"
        raise ConfigError(f"--out {out} is a folder", f"e.g. --out {out / 'compare.png'}")
    if out.suffix.lower() != ".png":
        # x.jpg was told "e.g. --out x.jpg.png": the suffix replaced, not added to.
        raise ConfigError(f"--out {out} is not a .png path",
                          f"e.g. --out {out.with_suffix('.png') if out.suffix else f'{out}.png'}")
    for parent in out.parents:
        if os.path.lexists(parent):
            if not parent.is_dir():
                raise ConfigError(f"--out {out}: {parent} is not a folder",
                                  "give a path whose folders exist or can be made")
            break
    if not os.path.lexists(out):
        return
    if out.is_dir():
        raise ConfigError(f"--out {out} is a folder", f"e.g. --out {out / 'compare.png'}")
    if not out.is_file():  # opened, a FIFO held the command for ever (second read)
        raise ConfigError(f"--out {out} is not a regular file (a FIFO, a device, a broken "
                          "link)", "give another path")
    try:
        with open(out, "rb") as existing:
            head = existing.read(len(PNG_SIGNATURE))
    except OSError as exc:
        raise ConfigError(f"--out {out} cannot be read ({exc.strerror})",
                          "give another path") from None
    if head != PNG_SIGNATURE:
        raise ConfigError(f"--out {out} exists and is not a picture (no PNG): it would be "
                          "overwritten", "give another path, or remove it first (an earlier "
                          "picture is replaced)")


def plot_curves(rows: Sequence[RunRow], out: Path) -> Path:
    """Two panels: train (dashed) and val (solid) loss, and val top-1, one colour per run."""
    from podcycle.signals import pyplot

    plt = pyplot()
    from matplotlib.ticker import MaxNLocator

    fig, (loss_ax, top1_ax) = plt.subplots(1, 2, figsize=(11, 4.2), dpi=100)
    for index, row in enumerate(rows):
        colour = f"C{index % 10}"
        points = [e for e in row.curves if isinstance(e.get("epoch"), int)]
        x = [e["epoch"] for e in points]
        loss_ax.plot(x, [e.get("train_loss") for e in points], linestyle="--", marker=".",
                     color=colour, label=f"{row.id} train")
        loss_ax.plot(x, [e.get("val_loss") for e in points], marker="o", color=colour,
                     label=f"{row.id} val")
        top1_ax.plot(x, [e.get("val_top1") for e in points], marker="o", color=colour,
                     label=row.id)
    loss_ax.set_title("loss (dashed: train, solid: val)")
    loss_ax.set_ylabel("cross-entropy")
    top1_ax.set_title("val top-1")
    top1_ax.set_ylabel("accuracy")
    for ax in (loss_ax, top1_ax):
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
        ax.legend(fontsize="small")
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp.png")
    try:
        fig.savefig(tmp)
        tmp.replace(out)  # a folder in the way (a run named as the picture) refuses it
    except BaseException:
        tmp.unlink(missing_ok=True)  # no half-made picture left beside the runs
        raise
    finally:
        plt.close(fig)
    return out


# -- TensorBoard -------------------------------------------------------------------------------
LOOPBACK = ("127.0.0.1", "localhost", "::1")
LIVE_FOLDER = ("live", "tensorboard")  # under the run folder: <run>/live/tensorboard/


def port_in_use(host: str, port: int) -> str | None:
    """Why TensorBoard could not listen on host:port (another board, another server
    there), or None: a bind tried and let go at once."""
    import socket

    # The family as TensorBoard's werkzeug server picks it: IPv6 for an address with a ':'
    # in it, else IPv4 ('localhost' then binds 127.0.0.1, whatever /etc/hosts lists first).
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as servers bind
        try:
            probe.bind((host.strip("[]"), port))
        except OSError as exc:
            return (PORT_IN_USE if exc.errno == errno.EADDRINUSE
                    else exc.strerror or str(exc))
    return None


PORT_IN_USE = "the port is in use"


def board_command(python: str, logdir: Path, host: str, port: int) -> list[str]:
    """TensorBoard's own program over the runs folder (it finds every run's event files)."""
    return [python, "-m", "tensorboard.main", "--logdir", str(logdir), "--host", host,
            "--port", str(port), "--reload_interval", "15"]


def live_folder(run: RunFolder) -> Path:
    return run.path.joinpath(*LIVE_FOLDER)


def running_runs(artifacts_dir: Path) -> list[RunRow]:
    return [r for r in read_runs(artifacts_dir) if r.status == "running"]


def sync_live(artifacts_dir: Path, rsync_one: Callable[[RunFolder], None],
              say: Callable[[str], None], said: set[str] | None = None) -> list[str]:
    """One pass of the live sync: for each running run whose training is under way, copy
    its pod's tensorboard/ into <run>/live/tensorboard/ (rsync_one does the copy); a run
    that is no longer running and whose collected event files are home has its live copy
    removed (the collected one, manifest-checked, takes over). Returns the runs synced.
    A failure is said once (`said` remembers across passes) and never ends the board."""
    import shutil

    synced = []
    for row in read_runs(artifacts_dir):
        run = RunFolder(artifacts_dir, row.id) if row.status != "foreign" else None
        if run is None:
            continue
        live = live_folder(run)
        if row.status != "running":
            if live.is_dir() and (run.run_artifacts / "tensorboard").is_dir():
                shutil.rmtree(live, ignore_errors=True)
            continue
        try:
            state = run.state
        except PodCycleError:
            continue
        train = state.steps.get("train")
        if state.remote is None or state.pod is None or train is None or \
                train.status not in ("running", "done"):
            continue
        try:
            rsync_one(run)
            synced.append(row.id)
        except Exception as exc:  # noqa: BLE001 - best effort: the board goes on
            reason = exc.message if isinstance(exc, PodCycleError) else \
                f"{type(exc).__name__}: {exc}"
            text = f"live sync of {row.id} skipped: {reason}"
            if said is None or text not in said:
                say(text)
            if said is not None:
                said.add(text)
    return synced


def pod_rsync(settings: Any) -> Callable[[RunFolder], None]:
    """The copy step of the live sync through the settings' backend: the run's pod from the
    API (its SSH endpoint), then rsync of <pod out>/run_artifacts/tensorboard/ into
    <run>/live/tensorboard/ with the run's known_hosts (the host key the cycle pinned) and
    SSH connection sharing (the cycle's ControlMaster when it has one)."""
    from podcycle import remote, sshkeys
    from podcycle.backend import connect
    from podcycle.config import effective_backend

    backend: list[Any] = []
    if effective_backend(settings) == "runpod":
        # Made now (no request): `-b runpod` with no key is refused before the board starts,
        # not said again at each copy. The local RunPod is started only when a copy needs it.
        backend.append(connect(settings, announce=False))

    def rsync_one(run: RunFolder) -> None:
        state = run.state
        if not backend:
            backend.append(connect(settings, announce=False))
        pod = backend[0].client.get_pod(state.pod.id)
        endpoint = remote.endpoint_for(pod, settings,
                                       sshkeys.private_key(settings, backend[0].own_ssh_key))
        live = live_folder(run)
        live.mkdir(parents=True, exist_ok=True)
        remote.rsync(endpoint, run.known_hosts, run.run_id,
                     f":{state.remote.out}/run_artifacts/tensorboard/", f"{live}/", retries=0)

    return rsync_one
