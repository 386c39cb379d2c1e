"""The run report: reports/observations.md (rewritten from the run state after every step)
and, once metrics are collected, reports/loss_curve.png."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from podcycle.redact import printable, redact
from podcycle.runs import STEPS, RunFolder, RunState, atomic_write, estimated_billed


def _when(ts: float | None) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(ts)) if ts else "-"


def collected_metrics(run: RunFolder) -> dict[str, Any] | None:
    """The collected metrics.json as history reads it: a file from the pod, so only its
    numbers are kept where numbers belong (a hostile or broken one never breaks a report)."""
    from podcycle.history import read_metrics

    return read_metrics(run)


def _number(value: Any, spec: str) -> str:
    return format(value, spec) if isinstance(value, int | float) else "-"


def on_pod_train_seconds(run: RunFolder) -> float | None:
    """The train phase as the pod timed it (collected timing log), else as seen from SSH."""
    timings = run.collected / "timings"
    from podcycle.files import read_regular

    for path in sorted(timings.glob("*.jsonl")) if timings.is_dir() else []:
        found = None
        try:
            text = read_regular(path).decode(errors="replace")  # a FIFO: never waited on
        except OSError:
            continue
        for line in text.splitlines():
            try:  # a file from the pod: any line may be anything
                event = json.loads(line)
            except (ValueError, RecursionError):
                continue
            if isinstance(event, dict) and event.get("phase") == "train" and \
                    event.get("event") == "end" and \
                    isinstance(event.get("elapsed_s"), int | float) and \
                    not isinstance(event.get("elapsed_s"), bool):
                found = event["elapsed_s"]
        if found is not None:
            return float(found)
    return run.state.train_remote_seconds


def billed_seconds(state: RunState) -> float:
    pod = state.pod
    if pod is None:
        return 0.0
    return estimated_billed(pod, time.time())


def estimated_cost(state: RunState) -> tuple[float | None, float | None]:
    price = state.pod.price_per_hour if state.pod else None
    seconds = billed_seconds(state)
    if price is None or not seconds:
        return price, None
    return price, round(price * seconds / 3600, 4)


# RunPod's billing lags: an amount under this share of the estimate is still catching up.
BILLING_CAUGHT_UP = 0.9


def estimate(state: RunState) -> float | None:
    """Price x billed time: a cluster's price covers every node; a record still running
    counts up to now."""
    cluster = state.cluster
    if cluster is not None and cluster.price_per_hour:
        seconds = estimated_billed(cluster, time.time())
        if seconds:
            return round(cluster.price_per_hour * seconds / 3600, 4)
    return estimated_cost(state)[1]


def run_cost(state: RunState) -> tuple[float | None, str | None]:
    """The run's cost and its kind: RunPod's billed amount ("billed") once it has caught up
    with the estimate, else the estimate ("estimated"): a bill read while RunPod's billing
    still lags (seconds after a stop, an hour's bucket not yet written) is never taken for
    the whole cost, in a report or against a sweep's budget."""
    guess = estimate(state)
    billing = state.billing
    if billing is not None and billing.available and billing.amount is not None and (
            guess is None or billing.amount >= guess * BILLING_CAUGHT_UP
            or state.stop_time_unknown):  # the estimate then overshoots: the bill is truer
        return round(billing.amount, 4), "billed"
    return guess, ("estimated" if guess is not None else None)


def guard_text(state: RunState) -> str:
    guard = state.pod.guard if state.pod else None
    if not guard:
        return "none (the pod was made without --max-minutes / --max-cost)"
    text = (f"the cluster deletes itself {guard.minutes:g} min after its nodes boot "
            f"({guard.reason})" if getattr(state, "cluster", None) else
            f"the pod stops itself {guard.minutes:g} min after boot ({guard.reason})")
    if guard.fired:
        return (f"{text}; **it fired and stopped the pod** (fired: true): {fired_text(state)}"
                f": {guard.fired_line or ''}")
    earlier = f" (it fired on an earlier boot: {guard.fired_line})" if guard.fired_line else ""
    if guard.fired is False:
        return f"{text}; it did not fire{earlier}"
    return f"{text}; not fired as far as this run saw{earlier}"


def fired_text(state: RunState) -> str | None:
    """"the spend guard stopped the pod after N minutes" when it did, else None."""
    guard = state.pod.guard if state.pod else None
    if not guard or not guard.fired:
        return None
    return f"the spend guard stopped the pod after {guard.minutes:g} minute(s)"


def billed_text(state: RunState) -> str:
    """The billed amount from /v2/billing/pods (looked up at stop), or why it is missing."""
    billing = state.billing
    pod_id = state.pod.id if state.pod else "ID"
    cluster = getattr(state, "cluster", None)
    if not billing:
        return ("not looked up yet (it is, when the cluster is deleted)" if cluster
                else "not looked up yet (it is, when the pod stops)")
    source = "/v2/billing/clusters" if cluster else "/v2/billing/pods"
    if billing.available:
        said = f"${billing.amount:.4f} (GET {source}, at {_when(billing.checked_at)})"
        if run_cost(state)[1] == "estimated":
            said += (f"; under the estimate ${estimate(state):.4f}: RunPod's billing was "
                     f"still catching up, see `inv pod.cost` later")
        return said
    if cluster:
        return (f"not yet available ({billing.detail}); billing lags the cluster: see "
                "`inv pod.cost` later")
    return (f"not yet available ({billing.detail}); billing lags the pod: see "
            f"`inv pod.cost {pod_id}` later")


def loss_curve(run: RunFolder, metrics: dict[str, Any]) -> Path | None:
    epochs = [e for e in metrics.get("epochs") or []
              if all(k in e for k in ("epoch", "train_loss", "val_loss"))]
    if not epochs:
        return None
    from podcycle.signals import pyplot

    plt = pyplot()
    from matplotlib.ticker import MaxNLocator

    x = [e["epoch"] for e in epochs]
    fig, ax = plt.subplots(figsize=(6, 3.6), dpi=100)
    ax.plot(x, [e["train_loss"] for e in epochs], marker="o", label="train loss")
    ax.plot(x, [e["val_loss"] for e in epochs], marker="o", label="val loss")
    ax.set_xlabel("epoch")
    ax.set_ylabel("cross-entropy")
    ax.set_title(f"run {run.run_id}: val top-1 {_number(epochs[-1].get('val_top1'), '.3f')}")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    run.reports.mkdir(parents=True, exist_ok=True)
    tmp = run.loss_curve.with_suffix(".tmp.png")
    fig.savefig(tmp)
    plt.close(fig)
    tmp.replace(run.loss_curve)
    return run.loss_curve


def write(run: RunFolder) -> Path:
    state = run.state
    pod = state.pod
    lines = [f"# Training cycle {run.run_id}", ""]
    if pod is not None and pod.stop_failed:
        lines += [f"**POD STILL RUNNING: stopping pod {pod.id} failed; it is billing. Stop it "
                  f"now: `inv pod.stop {pod.id}`**", ""]
    cluster = state.cluster
    if cluster is not None and cluster.delete_failed:
        lines += [f"**CLUSTER STILL RUNNING: deleting cluster {cluster.id} failed; every node "
                  f"bills. Delete it now: `inv cluster.delete {cluster.id} --yes`**", ""]
    if state.outcome:
        lines += [f"**Outcome: {state.outcome}**", ""]
    if cluster is not None:
        ended = (f"deleted {_when(cluster.deleted_at)} (every node and its disk; clusters "
                 "cannot be stopped)" if cluster.deleted_at else
                 "still running (billing): delete it with `inv cycle.stop` or "
                 f"`inv cluster.delete {cluster.id} --yes`")
        lines += ["## Cluster", "",
                  f"- cluster id: {cluster.id} ({cluster.name}); {cluster.pod_count} nodes x "
                  f"{cluster.gpu_count_per_pod} {cluster.gpu_id or '-'}, world size "
                  f"{cluster.world_size}",
                  f"- created: {_when(cluster.created_at)}; {ended}",
                  f"- price: ${cluster.price_per_hour:.2f}/h for the whole cluster"
                  if cluster.price_per_hour else "- price: unknown"]
        lines += [f"- node rank {m.rank}: pod {m.pod_id} "
                  f"({m.ssh_user or '-'}@{m.ssh_host or '-'}:{m.ssh_port or '-'})"
                  + (" — primary: the artifacts come from here" if m.rank == 0 else "")
                  for m in cluster.members]
        for failure in state.node_failures:
            lines.append(f"- **node rank {failure['rank']} (pod {failure['pod_id']}) "
                         f"{failure['why']}**; its last lines:")
            lines += [f"    {line}" for line in failure.get("last_lines", [])[-10:]]
        lines.append("")
    lines += ["## Pod" if cluster is None else "## Primary node (billing for the cluster)", "",
              f"- backend: {state.backend or '-'}",
              f"- pod id: {pod.id if pod else '-'}"]
    if pod is not None:
        lines.append(f"- GPU: {pod.gpu_count}x {pod.gpu_id or '-'} ({pod.cloud or '-'} cloud), "
                     f"template {pod.template or '-'}")
    price, cost = estimated_cost(state)
    price_text = f"${price:.2f}/h" if price is not None else "unknown"
    cost_text = f"${cost:.4f}" if cost is not None else "-"
    running = " so far, still running" if pod is not None and pod.running_since else ""
    lines.append(f"- price: {price_text}; estimated cost: {cost_text} "
                 f"({billed_seconds(state):.0f}s billed from its start{running})")
    lines.append(f"- billed by RunPod: {billed_text(state)}")
    lines.append(f"- spend guard: {guard_text(state)}")
    if pod is not None:
        lines.append(f"- created: {_when(pod.created_at)}; "
                     f"{'deleted' if pod.cluster_id else 'stopped'}: {_when(pod.stopped_at)}"
                     + (f"; terminated: {_when(pod.terminated_at)}" if pod.terminated_at
                        else ""))
    lines += ["", "## Phases", "", "| step | status | seconds |", "| --- | --- | ---: |"]
    for name in STEPS:
        step = state.steps.get(name)
        if step:
            shown = f"{step.seconds:.2f}" if step.seconds is not None else "-"
            lines.append(f"| {name} | {step.status} | {shown} |")
    total = state.total_seconds
    train = on_pod_train_seconds(run)
    if total is not None:
        lines.append(f"| **total** | | {total:.2f} |")
    lines.append("")
    if train is not None:
        # A total under the training's time is a run part of which nobody timed (a host
        # killed outright while the pod trained on): no overhead can be told from it.
        lines.append(f"On-pod training phase: {train:.2f}s"
                     + (f"; host-side overhead (total − training): {total - train:.2f}s"
                        if total is not None and total >= train else ""))
        lines.append("")
    dataset = state.dataset
    if dataset:
        lines += ["## Dataset", "", f"- {dataset.local} → pod:{dataset.remote} "
                  f"({', '.join(dataset.files)})",
                  f"- {dataset.train} train / {dataset.val} val positions, "
                  f"{dataset.bytes} bytes, sha256 {dataset.sha256[:16]}…", ""]
    if state.transfers:
        lines += ["## Transfers (rsync)", "", "| step | sent | received | seconds |",
                  "| --- | ---: | ---: | ---: |"]
        lines += [f"| {t.step} | {t.sent} | {t.received} | {t.seconds:.2f} |"
                  for t in state.transfers]
        lines.append("")
    metrics = collected_metrics(run)
    if metrics and metrics.get("final"):
        f = metrics["final"]
        lines += ["## Final metrics (on the pod)", "",
                  f"- epochs: {_number(f.get('epoch'), 'g')}, train loss "
                  f"{_number(f.get('train_loss'), '.4f')}, val loss "
                  f"{_number(f.get('val_loss'), '.4f')}, val top-1 "
                  f"{_number(f.get('val_top1'), '.4f')}",
                  f"- random legal move baseline: {metrics.get('random_legal_top1')}",
                  f"- device: {metrics.get('device')} {metrics.get('gpu') or ''}".rstrip(),
                  f"- training speed (last epoch): {f.get('positions_per_s')} positions/s", ""]
        # Drawn once per collected metrics: a collect removes the previous run's curve.
        if run.loss_curve.exists() or loss_curve(run, metrics):
            lines += ["![loss curve](loss_curve.png)", ""]
    validation = state.local_validation
    if validation:
        lines += ["## Local validation", "",
                  f"- infer_move: {validation['move']} "
                  "(local_validation/infer_move_output.txt)",
                  f"- val top-1 on the host: {validation['val_top1']:.4f} over "
                  f"{validation['positions']} positions (random legal "
                  f"{validation['random_legal_top1']:.4f})", ""]
    strength = getattr(state, "strength", None)
    if strength:
        lines += ["## Strength", "", f"- {strength['model']} vs {strength['opponent']}: "
                  f"{strength['games']} games, W {strength['wins']} D {strength['draws']} "
                  f"L {strength['losses']} (score {strength['score']})"]
        if strength.get("elo") is not None:
            from podcycle.elo import interval_text, summary_elo_text

            lines.append(f"- Elo {summary_elo_text(strength)} ({interval_text(strength)}, "
                         f"from game pairs {strength.get('pentanomial')})")
        if strength.get("sprt"):
            sprt = strength["sprt"]
            lines.append(f"- SPRT elo0={sprt['elo0']:g} elo1={sprt['elo1']:g}: LLR "
                         f"{sprt['llr']:.2f} (bounds {sprt['lower']:.2f}, {sprt['upper']:.2f})"
                         f": {sprt['verdict']}")
        from podcycle.match import caveats

        lines += [f"- **note**: {said}" for said in caveats(strength)]
        lines += [f"- games: {strength['pgn']}", ""]
    failed = [(n, s) for n, s in state.steps.items() if s.status in ("failed", "interrupted")]
    if failed:
        lines += ["## Problems", ""]
        lines += [f"- {name}: {step.status}: {step.error or ''}" for name, step in failed]
        lines += ["", f"Resume with: `RUNPOD_CYCLE_RUN_ID={run.run_id} inv cycle.full-smoke "
                      "--resume`", ""]
    if state.events:
        lines += ["## Events", ""] + [f"- {e['at']}: {e['text']}" for e in state.events] + [""]
    # Values from the pod (metrics, device names) must not carry escape sequences into a
    # terminal that shows the report (cat, less -R).
    atomic_write(run.observations, printable(redact("\n".join(lines)), lines=True))
    return run.observations
