"""The closing summary of a cycle, printed on stdout."""

from __future__ import annotations

from podcycle import report
from podcycle.runs import BillingCheck, RunFolder


def print_summary(run: RunFolder) -> None:
    state = run.state
    pod = state.pod
    price, cost = report.estimated_cost(state)
    metrics = report.collected_metrics(run) or {}
    final = metrics.get("final") or {}
    validation = state.local_validation or {}
    train = report.on_pod_train_seconds(run)
    total = state.total_seconds
    cluster = state.cluster
    if cluster is not None:
        ended = ("DELETE FAILED, still billing: inv cluster.delete "
                 f"{cluster.id} --yes" if cluster.delete_failed
                 else "deleted" if cluster.deleted_at else "still running (billing)")
        pod_line = (f"  cluster    {cluster.id} ({cluster.pod_count} nodes x "
                    f"{cluster.gpu_count_per_pod} {cluster.gpu_id}, world size "
                    f"{cluster.world_size}, {state.backend}), {ended}")
    elif pod is None:
        pod_line = "  pod        -"
    elif pod.stop_failed:
        pod_line = f"  pod        {pod.id}: POD STILL RUNNING (stop failed): inv pod.stop {pod.id}"
    else:
        pod_line = (f"  pod        {pod.id} ({pod.gpu_count}x {pod.gpu_id}, {state.backend}), "
                    + ("still running" if pod.running_since else "stopped"))
    # A pod the run lost and replaced (or one a killed create made, stopped since) is billed
    # with the run: named, or a teammate who finds it in RunPod's bill takes it for another's.
    earlier = (["  earlier    " + ", ".join(state.replaced) + ": the run's pods before "
                + (pod.id if pod else "this one") + ", in its bill"]
               if state.replaced and cluster is None else [])
    lines = [
        "",
        f"cycle {run.run_id}: {state.outcome or 'done'}",
        pod_line,
        *earlier,
        "  time       " + (f"{total:.1f}s total" if total is not None else "-")
        + (f", {train:.1f}s training on the pod" if train is not None else "")
        # Less than the training: part of the run was driven by a command killed outright
        # ("2.5s total, 34.8s training" read as a contradiction).
        + (" (a command killed outright is not timed)" if total is not None
           and train is not None and total < train else ""),
        (f"  cost       ~${cost:.4f} at ${price:.2f}/h" if cost is not None and price else
         "  cost       -") + (f"; billed ${state.billing.amount:.4f}"
                              + ("" if report.run_cost(state)[1] == "billed" else
                                 " so far (RunPod's billing lags)")
                              if state.billing and state.billing.available else
                              _billing_missing(state.billing) if state.billing else ""),
        _model_line(final) + f"; local check {validation.get('move', '-')}",
        f"  run folder {run.path}",
        f"  report     {run.observations}",
    ]
    strength = getattr(state, "strength", None)
    if strength:
        from podcycle.match import strength_line

        lines.insert(-2, f"  strength   {strength_line(strength)}; games {strength['pgn']}")
    fired = report.fired_text(state)
    if fired:
        lines.insert(3, f"  guard      {fired} ({pod.guard.reason})")  # of the pod above
    for failure in getattr(state, "node_failures", None) or []:
        lines.insert(3, f"  node lost  rank {failure['rank']} (pod {failure['pod_id']}) "
                        f"{failure['why']}")
    if state.backend == "local":
        lines.append("  (the local RunPod keeps running for the next cycle: inv local.down "
                     "stops it)")
    print("\n".join(lines), flush=True)


def _model_line(final: dict) -> str:
    """The collected model's last validation: 'after 1 epoch', and no made-up figures for a
    run that collected none (it said 'val top-1 0.000 after None epochs')."""
    epoch = final.get("epoch")
    if epoch is None:
        return "  model      no training metrics collected"
    return (f"  model      val top-1 {final.get('val_top1', 0):.3f} after {epoch} "
            f"epoch{'' if epoch == 1 else 's'}")


def _billing_missing(billing: BillingCheck) -> str:
    """The summary's word on a bill not read: RunPod's lag, or the read that failed (an
    unreadable answer was "not yet available", as if RunPod were only late)."""
    from podcycle.redact import clipped

    if not billing.failed:
        return "; billed: not yet available"
    return f"; billed: not read ({clipped(billing.detail, 80)}; the report has the rest)"
