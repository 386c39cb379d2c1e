"""The run driver: `full_smoke` runs every step whose result the run lacks, in order, as a
controller reconciles (read what the run recorded, look at the pod, do only what is
missing), inside try/finally so the pod is stopped (a cluster deleted) whatever happens,
SIGINT and SIGTERM included; a second Ctrl-C cannot abandon a billing pod. The steps are
`podcycle.cycle`'s."""

from __future__ import annotations

import shlex
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from podcycle import report, validation
from podcycle.backend import Backend
from podcycle.clusters import DeleteFailed
from podcycle.config import Settings, say
from podcycle.cycle import (
    ClusterNodeFailed,
    Cycle,
    LostConnection,
    SessionFactory,
    TrainingFailed,
    check_train_extra_args,
    open_run,
    resume_hint,
)
from podcycle.dataset import validate
from podcycle.errors import OutputClosed, PodCycleError, StepRefused
from podcycle.pods import StopFailed
from podcycle.runs import NEEDS_POD, WORK_STEPS, RunFolder, RunState
from podcycle.signals import restore_signals, trap_signals


class NothingMade(KeyboardInterrupt):
    """Interrupted before anything that bills was made: the new run's folder goes too."""


NOTHING_MADE = ("interrupted before anything was created: nothing bills, and the new run's "
                "folder is removed\n  → run the command again")


def _latest_step(state: RunState, status: str) -> str | None:
    """The step with this status that began last, or None."""
    named = [name for name, step in state.steps.items() if step.status == status]
    return max(named, key=lambda name: state.steps[name].started_at or 0, default=None)


def after_interrupt(cycle: Cycle, interrupted: BaseException | None = None, *,
                    own: str | None = None, since: float | None = None) -> str:
    """What a step task says when it was interrupted: which step (and why, when it was not
    a signal), what still bills, and the two ways on (the step again, or cycle.stop). `own`:
    the task's step, begun at `since` or later when this command ran it (a signal after it
    finished, as the run's report was written, said "stopped before its step began" and
    offered it again)."""
    if cycle.made_nothing():
        return NOTHING_MADE
    state, run_id = cycle.state, cycle.run.run_id
    step = _latest_step(state, "interrupted")
    ran = state.steps.get(own) if own else None
    if ran is not None and ran.status == "done" and since is not None \
            and (ran.started_at or 0) >= since:  # this command's, over an older interruption
        return _after_a_finished_step(state, run_id, own)
    what = f"{step} ended early" if step else "stopped before its step began"
    if isinstance(interrupted, OutputClosed):
        what += f" ({OutputClosed.reason})"
    again = f"inv cycle.{step} -r {run_id}" if step else "the step"
    if step == "stop":
        return (f"interrupted: stop ended early; what it was stopping may still bill\n"
                f"  → run {again} again (inv pod.leftovers lists what bills)")
    on = "again to go on"
    billing = (state.cluster is not None and state.cluster.deleted_at is None) or (
        state.cluster is None and state.pod is not None and state.pod.running_since)
    if step == "train" and billing:
        # The trainer runs detached (setsid): the Ctrl-C ended this command's following of
        # it, not the training. "train ended early" read as a training stopped.
        what = ("train stopped following the trainer, which runs on, detached, if it had "
                "started" + (f" ({OutputClosed.reason})"
                             if isinstance(interrupted, OutputClosed) else ""))
        on = "again to follow it to its end (it attaches; a finished one is kept)"
    if state.cluster is not None and state.cluster.deleted_at is None:
        return (f"interrupted: {what}; cluster {state.cluster.id} is still running and "
                f"billing\n  → run {again} {on}, or inv cycle.stop -r {run_id} deletes the "
                "cluster")
    if state.cluster is None and state.pod is not None and state.pod.running_since:
        return (f"interrupted: {what}; pod {state.pod.id} is still running and billing\n"
                f"  → run {again} {on}, or inv cycle.stop -r {run_id} stops the pod")
    if state.cluster is None and state.pod is not None and step == "start":
        return (f"interrupted: {what}; pod {state.pod.id} was created and goes on starting "
                f"(it bills while it boots)\n  → run {again} again to wait for it (it reuses "
                f"the pod), or inv cycle.stop -r {run_id} stops it")
    return f"interrupted: {what} (run {run_id})\n  → run {again} again to go on"


def _after_a_finished_step(state: RunState, run_id: str, step: str) -> str:
    """after_interrupt for a signal that came once the task's step was done and recorded."""
    done = (f"interrupted after {step} finished (it is recorded done; inv runs.show {run_id} "
            "shows it)")
    if step == "stop":  # nothing comes after it; what bills is what its stop left
        return done + ("\n  → inv pod.leftovers lists what still bills" if state.may_bill
                       else "; nothing of the run bills")
    if state.cluster is not None and state.cluster.deleted_at is None:
        return (f"{done}; cluster {state.cluster.id} is still running and billing\n  → go on "
                f"with the run's next step, or inv cycle.stop -r {run_id} deletes the cluster")
    if state.cluster is None and state.pod is not None and state.pod.running_since:
        return (f"{done}; pod {state.pod.id} is still running and billing\n  → go on with "
                f"the run's next step, or inv cycle.stop -r {run_id} stops the pod")
    return f"{done}\n  → go on with the run's next step"


def still_billing(cycle: Cycle, step: str | None = None, *, found_gone: bool = False
                  ) -> str | None:
    """After a step task failed: what of the run still bills, and the two ways on (the step
    again, or cycle.stop). `step`: the task's own, else the run's last failed one. None when
    nothing does, or when the stop itself failed (its error says so loudly). `found_gone`:
    the step failed finding the run's cluster deleted (PodStoppedUnderStep); gone again
    here, it is recorded deleted (one 404 alone may be RunPod's glitch, so the step only
    said it), or the run stayed "still running", its estimated cost rising, for good."""
    state, run_id = cycle.state, cycle.run.run_id
    # A step whose failure could not be recorded (a full disk refused the state's save as
    # the step began) is still "running" here, in memory.
    step = step or _latest_step(state, "failed") or _latest_step(state, "running")
    if step in (None, "stop"):
        return None
    again = f"inv cycle.{step} -r {run_id}"
    if state.cluster is not None and state.cluster.deleted_at is None:
        if _not_billing(cycle, state.cluster.id, cluster=True):  # deleted meanwhile (its
            if found_gone:                                         # spend guard, a teammate)
                import time

                state.record_cluster_deleted(time.time(), "gone")
                state.note(f"cluster {state.cluster.id} found gone again after {step}: "
                           "recorded deleted")
                cycle.run.save()
            return None
        return (f"cluster {state.cluster.id} of run {run_id} is still running and billing: "
                f"run {again} again, or inv cycle.stop -r {run_id} deletes it")
    pod = state.pod
    # A start that failed may have restarted a stopped pod (its stopped_at is cleared right
    # before the start request, which may have reached RunPod and still failed here); one
    # refused before its step began (ssh or rsync missing) sent nothing (second read).
    began = "start" in getattr(cycle, "begun", ())
    if state.cluster is None and pod is not None and (pod.stopped_at is None
                                                      or (step == "start" and began)):
        if _not_billing(cycle, pod.id):  # stopped or gone meanwhile (a spend guard, a
            return None                  # teammate, the local RunPod shut down)
        how = ("is still running and billing" if pod.running_since
               else "goes on starting (it bills while it boots)" if pod.stopped_at is None
               else "may be starting again (it bills while it boots)")
        return (f"pod {pod.id} of run {run_id} {how}: run {again} again, or inv "
                f"cycle.stop -r {run_id} stops it")
    return None


def _not_billing(cycle: Cycle, pod_id: str, *, cluster: bool = False) -> bool:
    """Whether RunPod shows the pod stopped or gone (the cluster gone), asked once and only
    when the step talked to it already (an error must not wait on retries, nor start the
    local RunPod); False when it cannot be asked: the run's record then speaks, erring on
    "still billing"."""
    from podcycle.runpod.errors import NotFound

    if getattr(cycle, "_backend", None) is None:
        return False
    try:
        if cluster:
            cycle.client.get_cluster(pod_id, retry=False)
            return False  # a cluster cannot be stopped: while it exists, it bills
        status = cycle.client.get_pod(pod_id, retry=False).status
    except NotFound:
        return True
    except Exception:  # noqa: BLE001 - the step's own error is what matters here
        return False
    return status.stopped or status.gone


def full_smoke(settings: Settings, *, dataset_dir: Path | None = None, keep_pod: bool = False,
               resume: bool = False, train_extra_args: str | None = None,
               announce: Callable[[str], None] = say, strength_games: int | None = None,
               strength_opponent: str | None = None, backend: Backend | None = None,
               session_factory: SessionFactory | None = None) -> RunFolder:
    """All steps whose results are missing, in order; the pod is stopped in `finally` (and on
    SIGINT/SIGTERM) unless keep_pod. A finished run resumed is left as it is. strength_games:
    local-validate also plays that many games against strength_opponent (podcycle.match);
    None (not given): on a resume, the check the run was started with; 0: none.
    backend, session_factory: what the Cycle talks to (default: the settings' backend, SSH).
    Interrupted (Ctrl-C, SIGTERM, SIGHUP), it raises a KeyboardInterrupt whose `ended` says
    what the run left (NothingMade when nothing was made)."""
    # From the start, not only once the steps run: a SIGTERM while a resume validates its
    # dataset (minutes for a large one) is told what the run left, as Ctrl-C is.
    previous = trap_signals()
    try:
        try:
            check_train_extra_args(train_extra_args)
            if not resume:
                validate((dataset_dir or settings.dataset_dir).resolve())  # nothing exists yet
            check_cluster_inputs(settings, run_may_exist=resume)
            run = open_run(settings, mode="resume" if resume else "start", announce=announce)
        except KeyboardInterrupt as interrupted:
            if not resume:
                raise NothingMade() from None
            interrupted.ended = ("nothing of the run was stopped: what it runs bills on "
                                 "(inv pod.leftovers lists it)")
            raise
        extra: dict[str, Any] = {"session_factory": session_factory} if session_factory else {}
        with Cycle.for_run(settings, run, announce=announce, backend=backend, **extra) as cycle:
            try:
                return _full_smoke(cycle, dataset_dir, keep_pod=keep_pod, resume=resume,
                                   train_extra_args=train_extra_args, announce=announce,
                                   strength=(strength_games, strength_opponent))
            except KeyboardInterrupt as interrupted:
                if cycle.made_nothing():
                    raise NothingMade() from None
                if getattr(interrupted, "ended", None) is None:  # before the steps ran
                    interrupted.ended = _left_as_it_was(cycle.state)
                raise
    finally:
        restore_signals(previous)


def _full_smoke(cycle: Cycle, dataset_dir: Path | None, *, keep_pod: bool, resume: bool,
                train_extra_args: str | None, announce: Callable[[str], None],
                strength: tuple[int | None, str | None]) -> RunFolder:
    run = cycle.run
    cycle.driver = "full-smoke"
    state = run.state
    dataset = cycle.run_dataset(dataset_dir).resolve()  # a resumed run's own, unless given
    if resume and not state.done("push-dataset"):  # only a push to come reads it
        validate(dataset)
        standing = cycle.standing_dataset_note(dataset_dir)
        if standing:
            announce(standing)
        elif cycle.own_dataset() and dataset_dir is None \
                and cycle.settings.source("dataset_dir") == "default":
            announce(f"dataset: the run's own, {dataset} (-d gives another)")
    cycle.check_shape()  # --nodes against the run's shape, finished or not
    if resume and state.finished:
        announce(f"run {run.run_id} finished earlier ({state.outcome}): nothing to do"
                 + (f"; its pod {state.pod.id} was kept running: inv cycle.stop stops "
                    "it" if state.pod and state.pod.running_since else ""))
        _strength_not_played(run.run_id, strength, announce)
        return run
    if resume and state.outcome is None and not state.pending():
        # Finished step by step: driving it again rewrote its record with a time of 0 s
        # (and a negative overhead) for a run that took minutes. Its pod still running is
        # said, as a finished full-smoke's kept pod is.
        announce(f"run {run.run_id} finished earlier (every step done, step by step): "
                 "nothing to do" + (f"; what it runs still bills: inv cycle.stop -r "
                                    f"{run.run_id} stops it" if state.may_bill else ""))
        _strength_not_played(run.run_id, strength, announce)
        return run
    if state.steps and not resume:
        raise PodCycleError(f"run {run.run_id} already has steps recorded",
                            "add --resume to continue it, or use a new RUNPOD_CYCLE_RUN_ID")
    if resume:
        announce(f"resuming run {run.run_id}: to do: {', '.join(state.pending())}")
    else:
        # What it was asked for, before anything that may be interrupted: a --resume after a
        # create killed (or a Ctrl-C before the first push) pushed the default dataset and
        # trained the default epochs, in silence, from the hint the run printed.
        state.dataset_asked = str(dataset)
        cycle.keep_train_settings(train_extra_args)
    strength = _strength_of_the_run(run, strength, resume, announce)
    _drive(cycle, dataset, keep_pod=keep_pod, train_extra_args=train_extra_args,
           announce=announce, strength=strength)
    return run


def _strength_not_played(run_id: str, strength: tuple[int | None, str | None],
                         announce: Callable[[str], None]) -> None:
    """--strength-games N given to a --resume of a finished run: nothing is driven, so no
    match is played (it was ignored without a word); said, with the command that plays it."""
    games, opponent = strength
    if games:
        against = f" --strength-opponent {shlex.quote(opponent)}" if opponent else ""
        announce(f"--strength-games {games} is not played on a finished run: inv "
                 f"cycle.local-validate -r {run_id} --strength-games {games}{against} plays "
                 "it against the model it collected")


def _strength_of_the_run(run: RunFolder, strength: tuple[int | None, str | None],
                         resume: bool, announce: Callable[[str], None]
                         ) -> tuple[int, str | None]:
    """The strength check to play: the one given, kept with the run (--strength-games 0:
    none, from now on); on a --resume that gives none, the one the run was started with,
    when its local-validate is still to come (said)."""
    state = run.state
    games, opponent = strength
    if games is not None:
        asked = {"games": games, "opponent": opponent} if games else None
        if state.strength_asked != asked:
            state.strength_asked = asked
            run.save()
        return games, opponent
    asked = state.strength_asked
    if resume and isinstance(asked, dict) and asked.get("games") and \
            "local-validate" in state.pending():
        announce(f"strength check: the run's own, {asked['games']} games against "
                 f"{asked.get('opponent') or 'the default opponent'} (as it was started)")
        return int(asked["games"]), asked.get("opponent")
    if resume and asked is None and state.strength is None and \
            run.older_version and "local-validate" in state.pending() \
            and any((run.path / "strength").glob("*.pgn")):
        # A match cut short, under a version that kept no record of the check asked for.
        announce("note: this run's strength match was cut short, and the run records no check "
                 "to play again (an older version started it): give --strength-games N (and "
                 "--strength-opponent) to play one")
    return 0, opponent


def count_command_time(cycle: Any) -> None:
    """count_time for a step task's command: its time since it began or since it was last
    counted (cycle.stop counts before it writes the report, then its `finally` the rest)."""
    now = time.monotonic()
    started = getattr(cycle, "command_started", None)
    if started is not None:
        cycle.command_started = now
        count_time(cycle.run, now - started)


def count_time(run: RunFolder, seconds: float, *, save: bool = True) -> None:
    """Add an invocation's time to the run's total: every command that drove the run counts,
    a full-smoke, a resume and each step task alike (a run begun step by step and finished
    with --resume counted only the resume, and one driven by hand had no total; runs.list's
    durations could not be compared). Bookkeeping in a `finally`: a record that cannot be
    read or saved keeps its old total, and the command's own outcome stands."""
    try:
        run.state.total_seconds = round((run.state.total_seconds or 0.0) + seconds, 3)
        if save:
            run.save()
    except Exception:  # noqa: BLE001 - never in place of the command's own error
        pass


def _left_as_it_was(state: RunState) -> str:
    """What an interrupt before the steps (a resume validating its dataset) left: the run as
    it was, nothing stopped; the words after `interrupted:`."""
    if not state.may_bill:
        return "nothing of the run bills"
    if state.cluster is not None:
        return (f"cluster {state.cluster.id} is still running and billing (inv cycle.stop -r "
                f"{state.run_id} deletes it)")
    return (f"pod {state.pod.id} is still running and billing (inv cycle.stop -r "
            f"{state.run_id} stops it)")


def _rescue_model(cycle: Cycle, announce: Callable[[str], None]) -> str | None:
    """A cluster cannot be stopped, only deleted with its nodes' disks: a run that trained
    and fails (or is interrupted) before its collect would lose the model it paid for. The
    model is collected first. Returns why the cluster must be kept (that collect failed, or a
    second Ctrl-C ended it), or None when the model is home."""
    announce("the trained model is only on the cluster: collecting it before the cluster is "
             "deleted (Ctrl-C now keeps the cluster instead)")
    try:
        cycle.collect()
    except BaseException as error:  # noqa: BLE001 - the cluster is kept, and says why
        if _told_to_end(error):  # a CI cancel's SIGTERM, SIGKILL seconds away: delete now
            announce("told to end (SIGTERM or SIGHUP): deleting the cluster now, with the "
                     "trained model on it")
            return None
        if isinstance(error, KeyboardInterrupt):
            return "interrupted by Ctrl-C"
        return str(getattr(error, "message", error))
    return None


def _rescue_checkpoint(cycle: Cycle, announce: Callable[[str], None]) -> None:
    """Ctrl-C during a cluster's training: its last checkpoint comes home before the cluster
    (and the primary's disk) is deleted, so that --resume does not train from the start. A
    second Ctrl-C, or SIGTERM, skips it: the deletion goes on."""
    announce("interrupted during train: bringing the primary's last checkpoint home before "
             "the cluster is deleted (Ctrl-C again skips it)")
    try:
        announce(cycle.rescue_checkpoint())
    except BaseException as error:  # noqa: BLE001 - the cluster is deleted all the same
        why = "interrupted" if isinstance(error, KeyboardInterrupt) else \
            str(getattr(error, "message", error))
        announce(f"the last checkpoint was not brought home ({why}): --resume trains from "
                 "the start")


def _epochs_go_with_the_cluster(cycle: Cycle, announce: Callable[[str], None]) -> None:
    """SIGTERM or SIGHUP during a cluster's training: the cluster goes at once, without the
    checkpoint rescue a Ctrl-C makes (SIGKILL may be seconds away), and with it the epochs
    trained there. Said, and noted in the run's record, instead of a bare "the cluster was
    deleted" and a --resume that trains from the start without a word why."""
    home = cycle.run.run_artifacts / "checkpoint_last.pt"
    remote = cycle.state.remote
    after = ("--resume trains on from the last checkpoint on the run's network volume"
             if remote is not None and remote.volume_dir else
             f"--resume trains on from the checkpoint already home ({home})" if home.is_file()
             else "--resume trains from the start")
    announce("told to end (SIGTERM or SIGHUP) during train: deleting the cluster now, with "
             "the epochs trained on it (Ctrl-C brings the last checkpoint home first); "
             f"{after}")
    cycle.state.note("told to end (SIGTERM or SIGHUP) during train: the cluster was deleted "
                     f"without bringing its last checkpoint home; {after}")
    cycle.run.save()


def _billing(state: RunState) -> bool:
    """Whether the run's pod or cluster may still bill (not stopped or deleted yet)."""
    if state.cluster is not None:
        return state.cluster.deleted_at is None
    return state.pod is not None and state.pod.running_since is not None


def _told_to_end(error: BaseException) -> bool:
    """SIGTERM or SIGHUP: a supervisor's stop, a CI job cancelled (SIGKILL follows in
    seconds), a terminal gone. Whatever bills must go at once, not after a collect."""
    return getattr(error, "signum", signal.SIGINT) in (signal.SIGTERM, signal.SIGHUP)


def _what_ended(state: RunState, keep_pod: bool, kept_for: str | None) -> str:
    """What an interrupted full-smoke left: the words after `interrupted:`."""
    if state.cluster is not None:
        if state.cluster.deleted_at is not None:
            return "the cluster was deleted"
        if kept_for:
            return "the cluster is kept (its trained model is only on it)"
        return "the cluster is still running (--keep-pod)" if keep_pod else \
            "the cluster may still be running"
    if state.pod is None:
        return "no pod was made"
    if keep_pod:
        return "the pod is still running (--keep-pod)"
    return "the pod was stopped" if state.pod.stopped_at else "the pod may still be running"


def _sends_to_the_pod(failure: BaseException | None) -> bool:
    """Whether a failure's remedy is about the live pod, so that it is untrue once the run's
    finally stopped it: a lost connection, SSH that would not open. Not a key, a name, a host
    key or a full disk, whose remedies hold for the --resume too (a second read: a key
    refused was told "continue with --resume", which failed the same way)."""
    return isinstance(failure, LostConnection) or getattr(failure, "pod_side", False)


def check_cluster_inputs(settings: Settings, *, run_may_exist: bool = False) -> None:
    """What --nodes needs that no request is needed for, refused before anything exists:
    cluster-only settings with one node, a cloud or SSH override a cluster cannot have, a
    private image (clusters cannot pull one). The GPU is checked against the catalog right
    before the create (podcycle.clusters.provision_cluster). `run_may_exist` (a --resume, a
    step given a run id) with no --nodes: the run's recorded shape decides, so cluster-only
    settings are left to Cycle.settle_shape (a RUNPOD_DATA_CENTER refused every resume of a
    cluster run as "one pod")."""
    from podcycle import clusters

    if run_may_exist and settings.source("nodes") == "default":
        return
    clusters.check_settings(settings)
    if settings.nodes >= 2:
        clusters.check_image_public(None, clusters.cluster_spec())


def _drive(cycle: Cycle, dataset: Path, *, keep_pod: bool, train_extra_args: str | None,
           announce: Callable[[str], None],
           strength: tuple[int, str | None] = (0, None)) -> None:
    run, state = cycle.run, cycle.state
    started = time.monotonic()
    previous = trap_signals()
    failure: BaseException | None = None
    touched_pod = False
    kept_for: str | None = None  # why the cluster is kept: its trained model is not home
    # Stopped (or its stop tried, and failed) before local-validate: the `finally` does not
    # stop it again (a failed stop was tried twice over, a resume hint between the two). A
    # Ctrl-C in the middle of that stop leaves it to the `finally`.
    stopped_early = False
    try:
        actions: dict[str, Callable[[], Any]] = {
            "push-dataset": lambda: cycle.push_dataset(dataset),
            "train": lambda: cycle.train(train_extra_args),
            "collect": cycle.collect,
            "local-validate": lambda: cycle.local_validate(*strength),
        }
        if any(name in NEEDS_POD for name in state.pending()):
            touched_pod = True
            cycle.start()  # reuses, restarts or replaces the pod; never doubles it
            cycle.session().warm_master()  # the rsync connection comes up while we go on
        for name in WORK_STEPS[1:]:
            if state.done(name):
                announce(f"==> {name}: done earlier in this run, skipped")
                continue
            if name == "train":
                validation.prewarm()  # the host only waits while the pod trains
            if name == "local-validate" and not keep_pod and _billing(state):
                # The model is home: the rest runs on this machine (a strength match can
                # take minutes), so the pod or cluster stops billing now, not after it.
                try:
                    cycle.stop()
                except (StopFailed, DeleteFailed):
                    stopped_early = True  # tried, and said: the finally does not repeat it
                    raise
                stopped_early = True
            actions[name]()
    except BaseException as exc:
        failure = exc
        primary_lost = isinstance(exc, ClusterNodeFailed) and not exc.primary_alive
        if primary_lost:
            announce("the primary node is lost: nothing to collect from it")
        elif isinstance(exc, TrainingFailed) and not state.done("collect"):
            announce("training failed: collecting its log"
                     + (" and last checkpoint from the primary before deleting the cluster"
                        if state.cluster is not None else " before stopping the pod"))
            try:
                cycle.collect_files()
                announce(f"the training log is in {run.run_artifacts / 'train.log'}")
            except BaseException as collect_error:  # noqa: BLE001 - the first failure matters
                announce(f"could not collect after the failure: "
                         f"{getattr(collect_error, 'message', collect_error)}")
                if (getattr(exc, "model_trained", False) and not keep_pod
                        and state.cluster is not None and not _told_to_end(collect_error)):
                    kept_for = str(getattr(collect_error, "message", collect_error))
        elif (isinstance(exc, KeyboardInterrupt) and not keep_pod
              and state.cluster is not None and state.cluster.deleted_at is None
              and state.step("train").status == "interrupted"):
            if _told_to_end(exc):  # SIGKILL may be seconds away: no rescue, but said
                _epochs_go_with_the_cluster(cycle, announce)
            else:
                _rescue_checkpoint(cycle, announce)
        elif (not keep_pod and state.cluster is not None and state.cluster.deleted_at is None
              and state.done("train") and not state.done("collect")):
            if _told_to_end(exc):
                announce("told to end (SIGTERM or SIGHUP): deleting the cluster now; the "
                         "trained model on it was never collected and goes with it")
            else:
                kept_for = _rescue_model(cycle, announce)
        if not cycle.made_nothing() and not isinstance(exc, StepRefused):
            # (Else the folder goes, nothing to continue; or a refusal says what to do.)
            announce(f"run folder: {run.path} (report: {run.observations}); continue with "
                     f"{resume_hint(run.run_id)}")
        raise
    finally:
        on_cluster = state.cluster is not None and state.cluster.deleted_at is None

        def hold_on(signum: int, frame: Any) -> None:
            announce(("deleting the cluster" if on_cluster else "stopping the pod")
                     + " first; it will take a few seconds")

        for sig in previous:  # a second Ctrl-C must not abandon a billing pod
            signal.signal(sig, hold_on)
        try:
            if keep_pod:
                cycle.close()
                if on_cluster:
                    announce(f"--keep-pod: cluster {state.cluster.id} is still running (and "
                             f"every one of its {state.cluster.pod_count} nodes bills); delete "
                             f"it with inv cycle.stop -r {run.run_id} or inv cluster.delete "
                             f"{state.cluster.id} "
                             "--yes (clusters cannot be stopped)")
                elif state.pod:
                    announce(f"--keep-pod: pod {state.pod.id} is still running (and billing); "
                             f"stop it with inv cycle.stop -r {run.run_id} or inv pod.stop "
                             f"{state.pod.id}")
            elif on_cluster and kept_for:
                cycle.close()
                announce(f"cluster {state.cluster.id} is kept running (every one of its "
                         f"{state.cluster.pod_count} nodes bills): the trained model is only "
                         f"on it, and collecting it failed ({kept_for}); collect it with inv "
                         f"cycle.collect -r {run.run_id}, then delete the cluster with inv "
                         f"cycle.stop -r {run.run_id} (it collects first; inv cluster.delete "
                         f"{state.cluster.id} --yes deletes the model with it)")
            elif isinstance(failure, StepRefused):
                pass  # refused before it did anything: what runs (a --keep-pod's) runs on
            elif not stopped_early and (on_cluster or (
                    state.cluster is None and state.pod
                    and (touched_pod or state.pod.running_since))):
                if isinstance(failure, LostConnection) and failure.step == "train":
                    announce(("deleting the cluster" if on_cluster else "stopping the pod")
                             + " ends the training that may have been running there; "
                             "--resume trains again")
                cycle.stop()
                if not on_cluster and _sends_to_the_pod(failure):
                    # Its remedy sent the user to the pod ("check the pod is RUNNING", "run
                    # inv cycle.train again to follow it"), which this stop just ended.
                    failure.remedy = (f"pod {state.pod.id} no longer runs, and what ran on it "
                                      f"ended with it; continue with {resume_hint(run.run_id)}")
        finally:
            if isinstance(failure, KeyboardInterrupt):  # the task's last line says which
                failure.ended = _what_ended(state, keep_pod, kept_for)
            restore_signals(previous)
            if not isinstance(failure, StepRefused):  # a refusal leaves the record as it was
                count_time(run, time.monotonic() - started, save=False)
                state.outcome = "ok" if failure is None else (
                    "interrupted" if isinstance(failure, KeyboardInterrupt) else "failed")
                run.save()
                report.write(run)
