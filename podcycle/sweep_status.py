"""sweep.status and sweep.stop: a sweep as it stands, read from its folder (the study, read
without writing while a live sweep appends to it, and each trial's run), and the one way to
stop a sweep and everything it started: its process (Ctrl-C: each trial stops its pod), any
trial's cycle that outlived it, and any trial's pod still billing (through the cycle's stop)."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

from podcycle.config import Settings, say
from podcycle.errors import PodCycleError
from podcycle.runs import RunFolder
from podcycle.signals import interrupt
from podcycle.sweep import (
    SweepError,
    SweepFolder,
    SweepStarting,
    journal_storage,
    pid_runs,
    quiet_optuna,
    run_cost,
    sweeps_root,
)


def status(settings: Settings, name: str, *, root: Path | None = None) -> dict[str, Any]:
    """The sweep as it stands: every trial (state, parameters, value, run, cost), the best
    so far, spent against the budget, and whether a process drives it."""
    folder = SweepFolder(root or sweeps_root(settings), name)
    meta = folder.meta()
    artifacts = Path(meta["artifacts_dir"])
    trials = load_trials(folder, meta)
    holder = folder.holder()
    rows = []
    for trial in trials:
        run_id = trial.user_attrs.get("run_id")
        run = RunFolder(artifacts, run_id) if run_id else None
        # The run's own record first: the cost a trial kept as it ended (a Ctrl-C) stayed
        # shown after a --resume took its run on and it billed more (sweep.run's resume
        # itself counts the run's). The kept one where the run can no longer be read.
        cost = run_cost(run) if run is not None else None
        if cost is None:
            cost = trial.user_attrs.get("cost")
        state = trial.state.name
        if state == "RUNNING" and (trial.user_attrs.get("interrupted") or (
                holder is None and not (run is not None and run.is_driven()))):
            # Ctrl-C marked it; a sweep killed (-9), or one that ended on its budget with a
            # trial left to continue, marks nothing: no process runs it either way.
            state = "STOPPED"
        pod = None
        if run is not None and run.exists():
            try:
                record = run.state.pod
                if record is not None:
                    pod = {"id": record.id, "state": pod_state(record),
                           "guard_max_cost": record.guard.max_cost if record.guard else None}
                elif run.state.create_sent_at is not None:  # its answer not yet recorded
                    pod = {"id": None, "state": CREATE_SENT, "guard_max_cost": None}
            except PodCycleError:
                pod = None
        seconds = None
        if trial.datetime_start is not None:
            end = trial.datetime_complete
            seconds = ((end.timestamp() if end else time.time())
                       - trial.datetime_start.timestamp())
        rows.append({"number": trial.number, "state": state, "params": dict(trial.params),
                     "value": trial.value if trial.state.name == "COMPLETE" else None,
                     "run_id": run_id, "cost": None if cost is None else round(cost, 6),
                     "share": trial.user_attrs.get("share"), "seconds": seconds,
                     "failure": trial.user_attrs.get("failure"), "pod": pod,
                     "epochs": {str(k): v for k, v in trial.intermediate_values.items()}})
    done = [r for r in rows if r["value"] is not None]
    best = None
    if done:
        pick = min if meta["direction"] == "minimize" else max
        top = pick(done, key=lambda r: r["value"])
        best = {k: top[k] for k in ("number", "value", "run_id", "params")}
    spent = sum(r["cost"] or 0.0 for r in rows)
    shown = meta.get("status")
    if shown in ("running", "new") and holder is None:
        shown = "crashed"  # nobody drives it: --resume continues
    return {"name": meta["name"], "status": shown, "pid": (holder or {}).get("pid"),
            "objective": meta["objective"], "direction": meta["direction"],
            "planned_trials": meta["trials"], "parallel": meta["parallel"],
            "budget": meta.get("budget"), "share": meta.get("share"),
            "max_minutes": meta.get("max_minutes"), "spent": round(spent, 6),
            "not_started": meta.get("not_started"), "gpu": meta.get("gpu"),
            "folder": str(folder.path), "report": str(folder.report), "trials": rows,
            "best": best}


# A trial's pod state while its run's create is outstanding (RunState.create_sent_at): its
# answer lost or its process killed, RunPod may still make the pod (status and report alike).
CREATE_SENT = "create sent (may be billing)"


def billing_trials(result: dict[str, Any]) -> list[str]:
    """The trials of `result` (status()) whose pod may still bill, each as 'trial N (pod ID:
    its state)': a sweep that ended, or was stopped, with a trial's stop failed said "every
    trial's pod was stopped", or "finished" (exit 0), while that pod billed on."""
    return [f"trial {row['number']} (pod {row['pod']['id'] or 'not yet known'}: "
            f"{row['pod']['state']})" for row in result["trials"]
            if row["pod"] is not None and row["pod"]["state"] not in ENDED]


# The pod states (pod_state) in which a trial's pod bills no more.
ENDED = ("stopped", "terminated")


def pod_state(record: Any) -> str:
    if record.stop_failed:
        return "STOP FAILED (may be billing)"
    if record.running_since:
        return "running"
    if getattr(record, "terminated_at", None):  # by hand: its disk, and the run's, went
        return "terminated"
    # Created (or started again) and not yet answering SSH: booting, and billing.
    return "stopped" if record.stopped_at else "starting (may be billing)"


def load_trials(folder: SweepFolder, meta: dict[str, Any]) -> list[Any]:
    """The study's trials, read without writing (a live sweep may be appending)."""
    import optuna

    quiet_optuna()
    if not folder.journal.exists():
        return []
    storage = journal_storage(folder)
    try:
        study = optuna.load_study(study_name=meta["name"], storage=storage)
    except KeyError:
        return []
    return study.get_trials(deepcopy=False)


def _interrupt_sweep(folder: SweepFolder, pid: Any, doing: str, then: str,
                     announce: Callable[[str], None], wait: float) -> dict[str, Any]:
    """Interrupt the process driving the sweep, as Ctrl-C does, and wait until it lets go."""
    announce(f"sweep {folder.name} {doing} in pid {pid}: interrupting it {then}")
    try:
        interrupt(int(pid), announce)
    except ProcessLookupError:
        pass
    _await(lambda: not folder.is_driven(), wait, f"sweep {folder.name} to stop")
    return {"what": "sweep", "pid": pid}


def stop(settings: Settings, name: str, *, announce: Callable[[str], None] = say,
         wait: float = 300.0) -> list[dict[str, Any]]:
    """sweep.stop: a live sweep interrupted as Ctrl-C does (it stops each trial, each trial its
    pod), by STOP_SIGNAL, which it takes even when started with SIGINT ignored; then every
    trial's run still driven is interrupted so, and any of their pods still billing is
    stopped through the cycle's stop path. Returns what was stopped."""
    from podcycle.backend import connect

    folder = SweepFolder(sweeps_root(settings), name)
    try:
        meta = folder.meta()
    except SweepStarting as starting:
        # No record yet (a damaged one is refused as such: that sweep may have pods). It
        # said "no sweep" and the sweep went on to make its pods. Interrupted now, it makes
        # nothing, and its folder goes.
        return [_interrupt_sweep(folder, starting.pid, "is starting", "before it makes "
                                 "anything", announce, wait)]
    artifacts = Path(meta["artifacts_dir"])
    stopped: list[dict[str, Any]] = []
    holder = folder.holder()
    if holder and holder.get("pid"):
        stopped.append(_interrupt_sweep(folder, holder["pid"], "runs", "(each trial stops its "
                                        "pod)", announce, wait))
    run_ids = [t.user_attrs["run_id"] for t in load_trials(folder, meta)
               if t.user_attrs.get("run_id")]
    for run_id in run_ids:
        run = RunFolder(artifacts, run_id)
        if run.is_driven():
            pid = run.holder_pid()
            if pid and pid_runs(pid, run_id):
                announce(f"run {run_id}: interrupting its cycle (pid {pid}); it stops its pod")
                try:
                    interrupt(pid, announce)
                except ProcessLookupError:
                    pass
                stopped.append({"what": "cycle", "run_id": run_id, "pid": pid})
            _await(lambda run=run: not run.is_driven(), wait, f"run {run_id} to stop")
    local_dir = (meta.get("child_env") or {}).get("POD_CYCLE_LOCAL_DIR")
    client_settings = replace(settings, artifacts_dir=artifacts,
                              backend=meta.get("backend") or settings.backend,
                              local_dir=Path(local_dir) if local_dir else settings.local_dir)
    if run_ids:  # each trial's pods live on the backend its run started on
        from podcycle.config import effective_backend
        from podcycle.cycle import other_backend

        using = effective_backend(client_settings)
        for run_id in run_ids:
            try:
                started = RunFolder(artifacts, run_id).state.backend
            except (PodCycleError, OSError):
                continue  # unreadable: its pods are looked for by name all the same
            refused = other_backend(run_id, started, using, client_settings)
            if refused is not None:  # "no pod is billing" would be said of the wrong place
                refused.message = f"sweep {name}'s trial {refused.message}"
                raise refused
    # A trial whose cycle was killed (-9, with the sweep's process group) as it created its
    # pod: RunPod goes on making that pod. One listing saw nothing yet, said "no pod of its
    # trials is billing", and the pods billed on. The cycle's stop waits for such a create.
    # Each trial is tried: one that fails (a --resume took its run meanwhile, RunPod refused
    # a stop) ended sweep.stop before the others' pods were stopped.
    failed: list[str] = []

    def attempt(run_id: str, stop: Callable[[], dict[str, Any]]) -> None:
        try:
            stopped.append({"what": "pod", "run_id": run_id, **stop()})
        except PodCycleError as exc:
            announce(f"run {run_id}: not stopped: {exc.message}")
            failed.append(run_id)

    for run_id in run_ids:
        if _create_outstanding(artifacts, run_id):
            attempt(run_id, lambda run_id=run_id: _stop_a_killed_create(
                client_settings, run_id, announce))
    client = connect(client_settings, announce=False).client if run_ids else None
    prefix = f"{settings.pod_name or 'pod-cycle'}-"
    # One listing for every trial (a listing per trial took 38 s for 1,000 trials beside
    # 1,000 pods, in silence, and as many rate-limited calls on RunPod): the cycles above
    # are stopped, so no trial makes a pod meanwhile.
    billing: dict[str, list[Any]] = {}
    for pod in client.list_pods() if run_ids else []:
        if pod.status.billing:
            billing.setdefault(pod.name, []).append(pod)
    for run_id in run_ids:
        for pod in billing.get(prefix + run_id, []):
            attempt(run_id, lambda run_id=run_id, pod=pod: {"pod_id": pod.id, "outcome": (
                _stop_run_pod(client_settings, run_id, pod.id, client, announce))})
    if meta.get("status") not in ("finished", "budget reached"):
        meta = folder.meta()
        meta["status"] = "stopped"
        folder.save_meta(meta)
    if failed:
        from podcycle.pods import StopFailed

        raise StopFailed(f"sweep {name}: could not stop the pods of {len(failed)} trial(s), "
                         f"which may still bill: {', '.join(failed)}",
                         "see why above; run inv sweep.stop again, or stop each with inv "
                         "cycle.stop -r RUN_ID (inv pod.leftovers lists what bills)")
    if not any(item["what"] == "pod" and item.get("pod_id") for item in stopped):
        announce(f"sweep {name}: no pod of its trials is billing")
    return stopped


def _create_outstanding(artifacts: Path, run_id: str) -> bool:
    """Whether the run's last create was sent by a process that ended before it recorded
    what it made (RunState.create_sent_at), and no process drives the run now."""
    run = RunFolder(artifacts, run_id)
    try:
        return run.exists() and run.state.create_sent_at is not None and not run.is_driven()
    except (PodCycleError, OSError):
        return False


def _stop_a_killed_create(settings: Settings, run_id: str,
                          announce: Callable[[str], None]) -> dict[str, Any]:
    """The run's stop through the cycle, which waits for its outstanding create and stops
    what it made ({"pod_id", "outcome"}; pod_id None when it made nothing)."""
    pod = _cycle_stop(settings, run_id, announce)
    if pod is None:
        return {"pod_id": None, "outcome": "nothing made"}
    return {"pod_id": pod.id, "outcome": "stopped"}


def _cycle_stop(settings: Settings, run_id: str, announce: Callable[[str], None]) -> Any:
    """cycle.stop of the run (its state and report updated), under its lock; the run's pod
    record after it (None: it had none)."""
    from podcycle import report
    from podcycle.cycle import Cycle, open_run

    run_settings = replace(settings, run_id=run_id)
    opened = open_run(run_settings, mode="step", announce=announce)
    try:
        with Cycle.for_run(run_settings, opened, announce=announce) as cycle:
            cycle.stop()
            report.write(opened)
            return cycle.state.pod
    finally:
        opened.unlock()


def _stop_run_pod(settings: Settings, run_id: str, pod_id: str, client: Any,
                  announce: Callable[[str], None]) -> str:
    """The run's pod through the cycle's stop (its state and report updated); a pod the run
    never recorded through the one pod-stop path."""
    from podcycle.pods import stop_pod

    run = RunFolder(settings.artifacts_dir, run_id)
    if run.exists():
        try:
            recorded = run.state.pod.id if run.state.pod else None
        except PodCycleError:
            recorded = None
        if recorded == pod_id:
            _cycle_stop(settings, run_id, announce)
            return "stopped"
    outcome = stop_pod(client, pod_id)
    announce(f"pod {pod_id} (run {run_id}): {outcome}")
    return outcome


def _await(check: Callable[[], bool], timeout: float, what: str) -> None:
    give_up = time.monotonic() + timeout
    while not check():
        if time.monotonic() >= give_up:
            raise SweepError(f"gave up after {timeout:.0f}s waiting for {what}",
                             "look at it with inv sweep.status, and run inv sweep.stop again")
        time.sleep(0.5)
