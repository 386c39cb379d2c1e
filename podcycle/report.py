"""The run report: reports/observations.md (rewritten from the run state after every step)
and, once metrics are collected, reports/loss_curve.png."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from podcycle.redact import redact
from podcycle.runs import STEPS, RunFolder, atomic_write


def _when(ts: float | None) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(ts)) if ts else "-"


def collected_metrics(run: RunFolder) -> dict[str, Any] | None:
    try:
        return json.loads((run.run_artifacts / "metrics.json").read_text())
    except (OSError, ValueError):
        return None


def on_pod_train_seconds(run: RunFolder) -> float | None:
    """The train phase as the pod timed it (collected timing log), else as seen from SSH."""
    timings = run.collected / "timings"
    for path in sorted(timings.glob("*.jsonl")) if timings.is_dir() else []:
        found = None
        for line in path.read_text().splitlines():
            try:
                event = json.loads(line)
            except ValueError:
                continue
            if event.get("phase") == "train" and event.get("event") == "end":
                found = event.get("elapsed_s")
        if found is not None:
            return float(found)
    return run.state.get("train_remote_seconds")


def estimated_cost(state: dict[str, Any]) -> tuple[float | None, float | None]:
    price = state.get("price_per_hour")
    seconds = state.get("pod_billed_seconds", 0.0)
    if state.get("pod_running_since"):
        seconds += time.time() - state["pod_running_since"]
    if price is None or not seconds:
        return price, None
    return price, round(price * seconds / 3600, 4)


def loss_curve(run: RunFolder, metrics: dict[str, Any]) -> Path | None:
    epochs = metrics.get("epochs") or []
    if not epochs:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    x = [e["epoch"] for e in epochs]
    fig, ax = plt.subplots(figsize=(6, 3.6), dpi=100)
    ax.plot(x, [e["train_loss"] for e in epochs], marker="o", label="train loss")
    ax.plot(x, [e["val_loss"] for e in epochs], marker="o", label="val loss")
    ax.set_xlabel("epoch")
    ax.set_ylabel("cross-entropy")
    ax.set_title(f"run {run.run_id}: val top-1 {epochs[-1]['val_top1']:.3f}")
    ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    run.reports.mkdir(parents=True, exist_ok=True)
    tmp = run.loss_curve.with_suffix(".tmp.png")
    fig.savefig(tmp)
    plt.close(fig)
    tmp.replace(run.loss_curve)
    return run.loss_curve


def write(run: RunFolder, final: bool = False) -> Path:
    state = run.state
    lines = [f"# Training cycle {run.run_id}", ""]
    outcome = state.get("outcome")
    if outcome:
        lines += [f"**Outcome: {outcome}**", ""]
    lines += ["## Pod", "",
              f"- backend: {state.get('backend', '-')}",
              f"- pod id: {state.get('pod_id', '-')}",
              f"- GPU: {state.get('gpu_count', '-')}x {state.get('gpu_id', '-')} "
              f"({state.get('cloud', '-')} cloud), template {state.get('template', '-')}"]
    price, cost = estimated_cost(state)
    price_text = f"${price:.2f}/h" if price is not None else "unknown"
    cost_text = f"${cost:.4f}" if cost is not None else "-"
    lines.append(f"- price: {price_text}; estimated cost: {cost_text} "
                 f"({state.get('pod_billed_seconds', 0):.0f}s billed while running)")
    lines += [f"- created: {_when(state.get('pod_created_at'))}; "
              f"stopped: {_when(state.get('pod_stopped_at'))}", "",
              "## Phases", "", "| step | status | seconds |", "| --- | --- | ---: |"]
    for name in STEPS:
        step = state.get("steps", {}).get(name)
        if step:
            seconds = step.get("seconds")
            shown = f"{seconds:.2f}" if seconds is not None else "-"
            lines.append(f"| {name} | {step.get('status')} | {shown} |")
    total = state.get("total_seconds")
    train = on_pod_train_seconds(run)
    if total is not None:
        lines.append(f"| **total** | | {total:.2f} |")
    lines.append("")
    if train is not None:
        lines.append(f"On-pod training phase: {train:.2f}s"
                     + (f"; host-side overhead (total − training): {total - train:.2f}s"
                        if total is not None else ""))
        lines.append("")
    dataset = state.get("dataset")
    if dataset:
        lines += ["## Dataset", "", f"- {dataset['local']} → pod:{dataset['remote']}",
                  f"- {dataset['train']} train / {dataset['val']} val positions, "
                  f"{dataset['bytes']} bytes, sha256 {dataset['sha256'][:16]}…", ""]
    transfers = state.get("transfers")
    if transfers:
        lines += ["## Transfers (rsync)", "", "| step | sent | received | seconds |",
                  "| --- | ---: | ---: | ---: |"]
        lines += [f"| {t['step']} | {t['sent']} | {t['received']} | {t['seconds']:.2f} |"
                  for t in transfers]
        lines.append("")
    metrics = collected_metrics(run)
    if metrics and metrics.get("final"):
        f = metrics["final"]
        lines += ["## Final metrics (on the pod)", "",
                  f"- epochs: {f['epoch']}, train loss {f['train_loss']:.4f}, "
                  f"val loss {f['val_loss']:.4f}, val top-1 {f['val_top1']:.4f}",
                  f"- random legal move baseline: {metrics.get('random_legal_top1')}",
                  f"- device: {metrics.get('device')} {metrics.get('gpu') or ''}".rstrip(),
                  f"- training speed (last epoch): {f.get('positions_per_s')} positions/s", ""]
        if final or not run.loss_curve.exists():
            curve = loss_curve(run, metrics)
            if curve:
                lines += ["![loss curve](loss_curve.png)", ""]
        elif run.loss_curve.exists():
            lines += ["![loss curve](loss_curve.png)", ""]
    validation = state.get("local_validation")
    if validation:
        lines += ["## Local validation", "",
                  f"- infer_move: {validation['move']} "
                  "(local_validation/infer_move_output.txt)",
                  f"- val top-1 on the host: {validation['val_top1']:.4f} over "
                  f"{validation['positions']} positions (random legal "
                  f"{validation['random_legal_top1']:.4f})", ""]
    failed = [(n, s) for n, s in state.get("steps", {}).items()
              if s.get("status") in ("failed", "interrupted")]
    if failed:
        lines += ["## Problems", ""]
        lines += [f"- {name}: {step['status']}: {step.get('error', '')}" for name, step in failed]
        lines += ["", f"Resume with: `RUNPOD_CYCLE_RUN_ID={run.run_id} inv cycle.full-smoke "
                      "--resume`", ""]
    events = state.get("events")
    if events:
        lines += ["## Events", ""] + [f"- {e['at']}: {e['text']}" for e in events] + [""]
    atomic_write(run.observations, redact("\n".join(lines)))
    return run.observations
