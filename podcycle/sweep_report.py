"""The sweep report, `reports/sweep.md` in the sweep's folder, rewritten as trials end (see
Sweep.report_due) and when the sweep ends:
the trials ranked by the objective (parameters, state, duration, billed cost), the best
trial's run, two pictures (the objective against each parameter; every trial's validation
loss per epoch) and a footer with every pod the sweep made and its final state."""

from __future__ import annotations

import json
import math
import time
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING, Any

from podcycle.runs import RunFolder, atomic_write

if TYPE_CHECKING:
    from podcycle.sweep import SweepFolder


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    seconds = int(seconds)
    return f"{seconds // 60}m{seconds % 60:02d}s" if seconds >= 60 else f"{seconds}s"


def _value(value: float | None) -> str:
    return "-" if value is None else f"{value:.5g}"


def _cost(value: float | None) -> str:
    return "-" if value is None else f"${value:.4f}"


def rows_of(meta: dict[str, Any], trials: list[Any]) -> list[dict[str, Any]]:
    from podcycle.sweep import run_cost
    from podcycle.sweep_status import CREATE_SENT, pod_state

    artifacts = Path(meta["artifacts_dir"])
    rows = []
    for trial in trials:
        run_id = trial.user_attrs.get("run_id")
        run = RunFolder(artifacts, run_id) if run_id else None
        cost = trial.user_attrs.get("cost")
        if cost is None and run is not None:
            cost = run_cost(run)
        seconds = None
        if trial.datetime_start is not None:
            end = trial.datetime_complete
            seconds = (end.timestamp() if end else time.time()) - \
                trial.datetime_start.timestamp()
        pod = None
        if run is not None and run.exists():
            try:  # read once: run_cost above may have read it already (a folder made here)
                record = run.state.pod
                sent = run.state.create_sent_at
            except Exception:  # noqa: BLE001 - another version's state: no pod line
                record = sent = None
            if record is not None:
                pod = {"id": record.id, "state": pod_state(record), "gpu": record.gpu_id,
                       "guard": record.guard.reason if record.guard else None}
            elif sent is not None:  # given up on, or its process killed: it may still land
                pod = {"id": "(not yet known)", "state": CREATE_SENT, "gpu": "-", "guard": None}
        state = trial.state.name
        if state == "RUNNING" and trial.user_attrs.get("interrupted"):
            state = "STOPPED"
        rows.append({"number": trial.number, "state": state, "params": dict(trial.params),
                     "value": trial.value if trial.state.name == "COMPLETE" else None,
                     "run_id": run_id, "run": run, "cost": cost, "seconds": seconds,
                     "pod": pod, "failure": trial.user_attrs.get("failure"),
                     "intermediate": dict(trial.intermediate_values)})
    return rows


def ranked(meta: dict[str, Any], rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Trials with a value first, best first; then the others by number."""
    sign = 1 if meta["direction"] == "minimize" else -1
    scored = sorted((r for r in rows if r["value"] is not None),
                    key=lambda r: (sign * r["value"], r["number"]))
    return scored + sorted((r for r in rows if r["value"] is None), key=lambda r: r["number"])


def curve(row: dict[str, Any], folder: SweepFolder) -> list[tuple[int, float]]:
    """Validation loss per epoch: the run's metrics.json, else the trial's log (a pruned or
    stopped trial brought no metrics home)."""
    from podcycle.sweep import epoch_curve, read_metrics

    run = row["run"]
    if run is not None:
        metrics = read_metrics(run)
        if metrics and metrics.get("epochs"):
            return [(int(e["epoch"]), float(e["val_loss"])) for e in metrics["epochs"]
                    if e.get("val_loss") is not None]
    return [(int(e["epoch"]), e["val_loss"]) for e in epoch_curve(folder.trial_log(
        row["number"]))]


def write(folder: SweepFolder, meta: dict[str, Any], trials: list[Any]) -> Path:
    from podcycle.sweep_status import ENDED

    rows = ranked(meta, rows_of(meta, trials))
    folder.reports.mkdir(parents=True, exist_ok=True)
    pictures = _pictures(folder, meta, rows)
    objective = meta["objective"]
    names = [p["name"] for p in meta["params"]]
    spent = sum(r["cost"] or 0.0 for r in rows)
    lines = [f"# Sweep {meta['name']}", ""]
    budget = (f"${spent:.4f} spent of ${meta['budget']:g} (each trial's worst case "
              f"${meta['share']:.4f}: {meta['max_minutes']:g} min at "
              f"${meta['gpu']['price_per_hour']:.2f}/h, its pod's spend guard)"
              if meta.get("budget") else f"${spent:.4f} spent (no budget)")
    gpu = meta.get("gpu") or {}
    lines += [f"- status: {meta.get('status')}",
              f"- objective: {objective} ({meta['direction']})",
              f"- trials: {len(rows)} of {meta['trials']} planned, {meta['parallel']} at a time"
              + (f"; {meta['not_started']} not started (budget)" if meta.get("not_started")
                 else ""),
              f"- budget: {budget}",
              f"- GPU: {gpu.get('id')}" + (f" ({gpu.get('cloud')})" if gpu.get("cloud")
                                          else ""),
              "- parameters: " + "; ".join(
                  f"{p['name']} {_describe(p)}" for p in meta["params"]),
              f"- sampler: {'grid' if all(p['kind'] == 'grid' for p in meta['params']) else 'TPE'}"
              f"; pruning: {'median' if meta.get('prune') else 'off'}",
              f"- written: {time.strftime('%Y-%m-%d %H:%M:%S UTC', time.gmtime())}", ""]
    best = next((r for r in rows if r["value"] is not None), None)
    if best:
        shown = ", ".join(f"{k}={_shown(v)}" for k, v in best["params"].items())
        lines += [f"**Best: trial {best['number']}, run `{best['run_id']}`: {objective} "
                  f"{_value(best['value'])}** ({shown})", ""]
    elif rows and meta.get("status") not in ("new", "running") and \
            not any(r.get("state") in ("RUNNING", "WAITING") for r in rows):
        # Ended (finished, budget reached, stopped) with no value: "No trial has finished
        # yet" stood under "status: finished".
        ended = Counter(str(r.get("state")).lower() for r in rows)
        lines += [f"No best: none of its {len(rows)} trial(s) gave a value ("
                  + ", ".join(f"{n} {state}" for state, n in sorted(ended.items()))
                  + "); each trial's run says why: inv runs.show RUN_ID.", ""]
    else:
        lines += ["No trial has finished yet.", ""]
    lines += ["## Trials, ranked by " + objective, "",
              "| rank | trial | " + " | ".join(names) + f" | {objective} | state | duration | "
              "billed | run |",
              "|" + "---|" * (len(names) + 7)]
    for rank, row in enumerate(rows, start=1):
        cells = [str(rank) if row["value"] is not None else "-", str(row["number"])]
        cells += [_shown(row["params"].get(name)) for name in names]
        state = row["state"].lower() + (f" ({row['failure']})" if row["failure"] else "")
        cells += [_value(row["value"]), state.replace("|", "/"), _duration(row["seconds"]),
                  _cost(row["cost"]), f"`{row['run_id']}`" if row["run_id"] else "-"]
        lines.append("| " + " | ".join(cells) + " |")
    lines.append("")
    if pictures:
        lines += ["## Pictures", ""]
        for title, path in pictures:
            lines += [f"![{title}]({path.relative_to(folder.reports)})", ""]
    lines += ["## Pods", "", "Every pod the sweep's trials made, and its final state (from "
              "each run's state):", "", "| trial | run | pod | GPU | state | spend guard |",
              "|---|---|---|---|---|---|"]
    for row in sorted(rows, key=lambda r: r["number"]):
        pod = row["pod"]
        if pod is None:
            lines.append(f"| {row['number']} | `{row['run_id']}` | - | - | no pod | - |")
            continue
        lines.append(f"| {row['number']} | `{row['run_id']}` | {pod['id']} | {pod['gpu']} | "
                     f"{pod['state']} | {pod['guard'] or '-'} |")
    pods = [r["pod"] for r in rows if r["pod"]]
    billing = [p for p in pods if p["state"] not in ENDED]
    ended = ("stopped or terminated" if any(p["state"] == "terminated" for p in pods)
             else "stopped")
    lines += ["", (f"All {len(pods)} pod(s) are {ended}." if not billing else
                   f"**{len(billing)} pod(s) not stopped**: "
                   + ", ".join(p["id"] for p in billing) + f" (inv sweep.stop {meta['name']})"),
              ""]
    atomic_write(folder.report, "\n".join(lines))
    atomic_write(folder.reports / "trials.json", json.dumps(
        [{k: v for k, v in r.items() if k != "run"} for r in rows], indent=2, default=str))
    return folder.report


def _describe(param: dict[str, Any]) -> str:
    if param["kind"] in ("grid", "choices"):
        return f"{param['kind']} [{', '.join(_shown(v) for v in param['values'])}]"
    return f"{param['kind']} [{param['low']:g}, {param['high']:g}]" + (
        " log" if param.get("log") else "")


def _shown(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, str) and "/" in value:
        return Path(value).name
    return str(value)


# Trials named in a picture, the best first: past a few dozen, a name per trial made the
# curves' legend cover the plot and run off the image (500 trials: 500 legend lines), and
# the rest are drawn unnamed.
NAMED = 10


def named_count(drawn: int) -> int:
    """How many of `drawn` trials (the best first) a picture names: all of up to NAMED + 2
    (two or fewer left unnamed would say nothing), else the NAMED best."""
    return drawn if drawn <= NAMED + 2 else NAMED


def _pictures(folder: SweepFolder, meta: dict[str, Any], rows: list[dict[str, Any]]
              ) -> list[tuple[str, Path]]:
    """The objective against each parameter (one panel each) and every trial's curve;
    `rows` ranked, best first (the NAMED best are named)."""
    from podcycle.signals import pyplot

    plt = pyplot()
    made = []
    scored = [r for r in rows if r["value"] is not None]
    params = meta["params"]
    if scored and params:
        fig, axes = plt.subplots(1, len(params), figsize=(4 * len(params), 3.4),
                                 squeeze=False)
        for ax, param in zip(axes[0], params, strict=True):
            name = param["name"]
            values = [r["params"].get(name) for r in scored]
            numeric = all(isinstance(v, int | float) and not isinstance(v, bool)
                          for v in values)
            labels = sorted({_shown(v) for v in values}) if not numeric else []
            xs = [float(v) if numeric else labels.index(_shown(v)) for v in values]
            ys = [r["value"] for r in scored]
            named = named_count(len(scored))
            ax.scatter(xs[named:], ys[named:], color="0.75")  # the others, unnamed
            ax.scatter(xs[:named], ys[:named], color="C0")
            if numeric and (param.get("log") or (min(xs) > 0 and max(xs) / min(xs) >= 10)):
                ax.set_xscale("log")
            if not numeric:
                ax.set_xticks(range(len(labels)), labels)
            for row, x in zip(scored[:named], xs, strict=False):
                ax.annotate(f"t{row['number']}", (x, row["value"]), fontsize=7,
                            xytext=(3, 3), textcoords="offset points")
            ax.set_xlabel(name)
            ax.set_ylabel(meta["objective"])
            ax.grid(alpha=0.3)
        fig.suptitle(f"sweep {meta['name']}: {meta['objective']} per parameter")
        fig.tight_layout()
        fig.savefig(folder.objective_png, dpi=90)
        plt.close(fig)
        made.append(("objective against each parameter", folder.objective_png))
    curves = [(r, curve(r, folder)) for r in rows]
    curves = [(r, c) for r, c in curves if c and all(math.isfinite(v) for _, v in c)]
    if curves:
        fig, ax = plt.subplots(figsize=(6.5, 4))
        others = curves[named_count(len(curves)):]
        for index, (_, points) in enumerate(others):
            ax.plot([e for e, _ in points], [v for _, v in points], color="0.75",
                    linewidth=0.8, label=f"{len(others)} other trials" if not index else None)
        for row, points in curves[:len(curves) - len(others)]:
            ax.plot([e for e, _ in points], [v for _, v in points], marker="o",
                    label=f"t{row['number']} ({row['state'].lower()})")
        from matplotlib.ticker import MaxNLocator

        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlabel("epoch")
        ax.set_ylabel("val loss")
        ax.set_title(f"sweep {meta['name']}: validation loss per epoch")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(folder.curves_png, dpi=90)
        plt.close(fig)
        made.append(("every trial's validation loss per epoch", folder.curves_png))
    return made
