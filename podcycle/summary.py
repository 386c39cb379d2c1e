"""The closing summary of a cycle, printed on stdout."""

from __future__ import annotations

from podcycle import report
from podcycle.runs import RunFolder


def print_summary(run: RunFolder) -> None:
    state = run.state
    price, cost = report.estimated_cost(state)
    metrics = report.collected_metrics(run) or {}
    final = metrics.get("final") or {}
    validation = state.get("local_validation", {})
    train = report.on_pod_train_seconds(run)
    total = state.get("total_seconds")
    lines = [
        "",
        f"cycle {run.run_id}: {state.get('outcome', 'done')}",
        f"  pod        {state.get('pod_id')} ({state.get('gpu_count')}x {state.get('gpu_id')}, "
        f"{state.get('backend')}), stopped" if state.get("pod_stopped_at") else
        f"  pod        {state.get('pod_id')} (still running)",
        "  time       " + (f"{total:.1f}s total" if total is not None else "-")
        + (f", {train:.1f}s training on the pod" if train is not None else ""),
        f"  cost       ~${cost:.4f} at ${price:.2f}/h" if cost is not None and price else
        "  cost       -",
        f"  model      val top-1 {final.get('val_top1', 0):.3f} after {final.get('epoch')} "
        f"epochs; local check {validation.get('move', '-')}",
        f"  run folder {run.path}",
        f"  report     {run.observations}",
    ]
    if state.get("backend") == "local":
        lines.append("  (the local RunPod keeps running for the next cycle: inv local.down "
                     "stops it)")
    print("\n".join(lines), flush=True)
