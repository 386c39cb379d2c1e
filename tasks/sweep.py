"""Sweeps: Optuna studies whose trials are cycle runs on their own pods, under one budget."""

from podcycle.cli import guarded, settings, task

RUN_HELP = {
    "config": "the sweep file: parameters (grid or distributions), objective, trials, "
              "parallel, budget (see config/sweep.toml; default: none, required unless --resume)",
    "parallel": "trials (pods) at a time, 1 to 64 (default: the file's parallel, else 1)",
    "max_cost": "the sweep's total budget in USD; each trial's pod carries its share as its "
                "spend guard (default: the file's max_cost, else no budget)",
    "max_minutes": "each trial's time bound in minutes (its pod's spend guard; with a budget, "
                   "its worst case is the GPU's price for this long) (default: the file's "
                   "max_minutes, else none)",
    "trials": "how many trials (default: the file's trials, else the grid's size)",
    "name": "the sweep's name, its folder under sweeps/ (default: the file's name, else a "
            "new sw-<time>-<hex>)",
    "dataset_dir": "every trial's dataset folder; [params.dataset] overrides it per trial "
                   "(default: the file's dataset, else RUNPOD_DATASET_DIR, "
                   "data/dataset/_smoke_runpod)",
    "epochs": "every trial's epochs; [params.epochs] overrides it per trial (default: the "
              "file's epochs, else the cycle's)",
    "resume": "continue the sweep NAME after a crash, kill -9 or Ctrl-C: finished trials "
              "stay, running ones are settled from their runs (default: a new sweep)",
    "backend": "auto|runpod|local for every trial (default: auto = runpod when a key is "
               "found, else local)",
    "api_key": "RunPod API key for the sweep and every trial, handed to them in their "
               "environment (default: RUNPOD_API_KEY, then keyring)",
    "json": "print the sweep's final status as JSON on stdout (default: off)",
}


@task(help=RUN_HELP)
@guarded
def run(c, config=None, parallel=None, max_cost=None, max_minutes=None, trials=None,
        name=None, dataset_dir=None, epochs=None, resume=None, backend=None, api_key=None,
        json=False):
    """Run a sweep: each trial a cycle run on its own pod, K at a time, under one budget."""
    from invoke.exceptions import Exit

    from podcycle import sweep
    from podcycle.cli import emit_json
    from podcycle.errors import ConfigError
    from podcycle.sweep_config import Overrides

    if not config and not resume:
        raise ConfigError("sweep.run needs --config FILE (a new sweep) or --resume NAME",
                          "e.g. inv sweep.run --config config/sweep.toml")
    s = settings(c, backend=backend, api_key=api_key)
    options = sweep.Options(
        config=_path(config), resume=resume or None, backend=backend,
        flags=Overrides(parallel=parallel, trials=trials, max_cost=max_cost,
                        max_minutes=max_minutes, dataset=dataset_dir, epochs=epochs,
                        name=name))
    try:
        result = sweep.run_sweep(s, options)
    except sweep.SweepNotStarted as stopped:
        raise Exit(f"interrupted: sweep {stopped} stopped before it started; nothing was made "
                   "(no trial, no pod), and its name is free\n  → start it again with the same "
                   "command", code=130) from None
    except sweep.SweepInterrupted as stopped:
        if stopped.billing:  # a trial's stop failed: its pod bills on
            raise Exit(f"interrupted, but POD STILL RUNNING: {'; '.join(stopped.billing)} may "
                       f"still bill\n  → stop them with inv sweep.stop "
                       f"{stopped}, then continue with inv sweep.run --resume {stopped}",
                       code=4) from None
        raise Exit(f"interrupted: every trial's pod was stopped; continue with inv sweep.run "
                   f"--resume {stopped}", code=130) from None
    if json:
        emit_json(result)


@task(help={"name": "the sweep's name (its folder under sweeps/)",
            "json": "machine-readable status on stdout (default: a table)"},
      positional=["name"])
@guarded
def status(c, name, json=False):
    """A sweep's trials (state, parameters, objective, run, cost), best so far, spent."""
    from podcycle.cli import emit_json, table
    from podcycle.config import say
    from podcycle.sweep_status import status as sweep_status

    result = sweep_status(settings(c), name)
    if json:
        emit_json(result)
        return
    budget = (f" of ${result['budget']:g} (worst case per trial ${result['share']:.4f})"
              if result.get("budget") else "")
    alive = f", pid {result['pid']}" if result.get("pid") else ""
    say(f"sweep {result['name']}: {result['status']}{alive}; {len(result['trials'])} of "
        f"{result['planned_trials']} trial(s), {result['parallel']} at a time; "
        f"${result['spent']:.4f} spent{budget}")
    names = sorted({k for t in result["trials"] for k in t["params"]})
    rows = []
    for t in result["trials"]:
        rows.append([t["number"], t["state"].lower()]
                    + [_shown(t["params"].get(k)) for k in names]
                    + ["-" if t["value"] is None else f"{t['value']:.5g}", t["run_id"] or "-",
                       "-" if t["cost"] is None else f"{t['cost']:.4f}",
                       (t["pod"] or {}).get("state", "-")])
    table(rows, ["TRIAL", "STATE", *[k.upper() for k in names], result["objective"].upper(),
                 "RUN", "USD", "POD"])
    best = result.get("best")
    if best:
        say(f"best: trial {best['number']} (run {best['run_id']}) {result['objective']} "
            f"{best['value']:.5g}")
    say(f"report: {result['report']}")


@task(help={"name": "the sweep's name (its folder under sweeps/)",
            "api_key": "RunPod API key to stop the trials' pods with (default: "
                       "RUNPOD_API_KEY, then keyring)",
            "json": "what was stopped, as JSON on stdout (default: lines on stderr)"},
      positional=["name"])
@guarded
def stop(c, name, api_key=None, json=False):
    """Stop a sweep: interrupt it and its trials, stop every pod of theirs still billing."""
    from podcycle.cli import emit_json
    from podcycle.sweep_status import stop as stop_sweep

    stopped = stop_sweep(settings(c, api_key=api_key), name)
    if json:
        emit_json(stopped)


def _path(value):
    from pathlib import Path

    return Path(value) if value else None


def _shown(value):
    from pathlib import Path

    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, str) and "/" in value:
        return Path(value).name
    return "-" if value is None else str(value)
