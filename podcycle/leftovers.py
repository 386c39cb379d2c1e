"""Leftovers: pods and clusters this tool made that still bill while no process drives their
run (a host killed mid-run, a --keep-pod forgotten). Found by the per-run name (a cluster is
named like a pod) and the run's lock.

A step-by-step run (cycle.start, then cycle.push-dataset, cycle.train, ... as separate
commands) holds no lock between its steps, yet its pod is waiting for the next one, not left
over: such a pod, recorded by a run whose state says it is still open, is listed apart and
never stopped by `pod.leftovers --stop`."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from podcycle.runs import RUN_ID, RunBusy, RunFolder, list_runs
from podcycle.signals import suspended as suspends

if TYPE_CHECKING:
    from pathlib import Path

    from podcycle.config import Settings
    from podcycle.runpod.models import Cluster, Pod


@dataclass
class Leftover:
    pod: Pod
    run_id: str | None
    run_here: bool  # the run's folder is on this machine
    age_seconds: float | None
    cost_so_far: float | None
    # The step the open step-by-step run goes on with (None: a leftover).
    next_step: str | None = None

    @property
    def open_run(self) -> bool:
        return self.next_step is not None

    def as_dict(self) -> dict[str, Any]:
        return {"pod_id": self.pod.id, "name": self.pod.name, "status": self.pod.status.value,
                "run_id": self.run_id, "run_folder_here": self.run_here,
                "age_seconds": None if self.age_seconds is None else round(self.age_seconds),
                "usd_per_hour": self.pod.cost_per_hour,
                "cost_so_far_usd": None if self.cost_so_far is None
                else round(self.cost_so_far, 4),
                "kind": "open-run" if self.open_run else "leftover",
                "next_step": self.next_step}

    @property
    def run_elsewhere(self) -> bool:
        """Its run's folder is not under this artifacts folder: another checkout's or another
        machine's run, which a process there may be driving (no lock here says)."""
        return bool(self.run_id) and not self.run_here

    def line(self) -> str:
        age = duration(self.age_seconds)
        cost = f", ~${self.cost_so_far:.4f} so far" if self.cost_so_far is not None else ""
        run = f"run {self.run_id}" if self.run_id else "no run id"
        where = "; its run's folder is not here" if self.run_elsewhere else ""
        return f"{self.pod.id} ({run}, up {age}{cost}{where})"

    def open_line(self) -> str:
        """What to do with an open step-by-step run's pod: go on, or stop it."""
        return (f"open step-by-step run {self.run_id} (pod {self.pod.id}, up "
                f"{duration(self.age_seconds)}): resume with inv cycle.{self.next_step} -r "
                f"{self.run_id} or stop with inv cycle.stop -r {self.run_id}")


def prefix(settings: Settings) -> str:
    return f"{settings.pod_name or 'pod-cycle'}-"


def stop_named(client: Any, settings: Settings, run_id: str,
               announce: Callable[[str], None]) -> list[str]:
    """Stop the pods named for run `run_id` (the cycle's per-run name) when its state cannot
    be read: cycle.stop's way to end the billing all the same. A cluster of that name is
    named, not deleted: without the state, nobody knows whose model is on it. Returns what
    was done, a line each."""
    from podcycle.pods import stop_pod

    name = prefix(settings) + run_id
    done = []
    for pod in client.find_pods_by_name(name):
        if not pod.status.gone and not pod.status.stopped:
            done.append(f"pod {pod.id} of run {run_id}: "
                        f"{stop_pod(client, pod.id, announce=announce)}")
    if hasattr(client, "list_clusters"):
        for cluster in client.list_clusters():
            if cluster.name == name:
                done.append(f"cluster {cluster.id} of run {run_id} is still running (not "
                            "deleted: its model may be on it; inv cluster.delete "
                            f"{cluster.id} --yes deletes it)")
    return done


def record_stopped(run: RunFolder, pod_id: str, outcome: str,
                   by: str = "pod.leftovers --stop") -> None:
    """Tell a run's record (`run`: locked by this process) that `by` stopped its pod, as
    cycle.stop would: its time billed closes, and runs.show no longer says it runs (its
    estimated cost rose on and on). A record that cannot be read or written is left as it
    is (the stop itself has happened)."""
    import time

    def stopped(state: Any) -> bool:
        record = state.pod
        if record is None or record.id != pod_id:
            return False
        now = time.time()
        if record.may_bill or outcome != "terminated":
            state.record_pod_stopped(outcome, now)
        # else a stopped pod terminated: its stop (and its time) stand
        if outcome == "terminated" and record.terminated_at is None:
            record.terminated_at = now
        return True

    if outcome in ("stopped", "already stopped", "gone", "terminated"):
        _record(run, f"pod {pod_id} {outcome} by {by}", stopped)


def record_stop_by_hand(settings: Settings, pod_id: str, outcome: str,
                        by: str = "pod.stop") -> str | None:
    """`inv pod.stop ID` of the pod of a run of this machine (the way a --keep-pod run's
    summary offers), or `inv pod.terminate ID --yes` (outcome "terminated"): the run's
    record takes it, as pod.leftovers --stop's does; runs.show said "still running" with a
    cost that rose on and on. A run a live process drives is left to it (it finds the pod
    stopped). A stopped pod terminated is recorded too: its disk, and what the run kept on
    it, went (runs.show still said "stopped", as if a resume could start it again). The
    run's id when recorded."""
    def billing(state: Any) -> bool:  # the run's pod, not yet recorded stopped (terminated)
        if state.pod is None or state.pod.id != pod_id:
            return False
        return state.pod.may_bill or (outcome == "terminated"
                                      and state.pod.terminated_at is None)

    return _record_by_hand(settings, billing,
                           lambda run: record_stopped(run, pod_id, outcome, by=by))


def record_delete_by_hand(settings: Settings, cluster_id: str, outcome: str) -> str | None:
    """record_stop_by_hand for `inv cluster.delete ID --yes` (which a refused cycle.stop
    offers): the run's record took no word of it, so runs.show said the cluster ran on and
    its estimated cost, a sweep's spending with it, rose on and on."""
    def billing(state: Any) -> bool:  # the run's cluster, not yet recorded deleted
        return state.cluster is not None and state.cluster.id == cluster_id \
            and state.cluster.deleted_at is None

    return _record_by_hand(settings, billing, lambda run: record_deleted(
        run, cluster_id, outcome, by="cluster.delete"))


def uncollected_model(settings: Settings, *, pod_id: str | None = None,
                      cluster_id: str | None = None,
                      volume_id: str | None = None) -> tuple[str, str] | None:
    """(run id, what) of the run of this machine whose pod `pod_id` (or cluster
    `cluster_id`, on its primary; or network volume `volume_id`) holds what only lives there
    (RunState.left_on: "trained model", or "training" a host lost), which terminating that
    pod, deleting that cluster or that volume deletes with it. A run on a network volume
    keeps it on the volume, not the pod. None: no such run (or the runs folder cannot be
    read)."""
    try:
        runs = list_runs(settings.artifacts_dir)
    except OSError:
        return None
    for run_id, state in runs:
        if state is not None and volume_id is not None and state.network_volume is not None \
                and state.network_volume.id == volume_id:
            what = state.left_on_volume()
            if what:
                return run_id, what
        if state is None or state.pod is None or state.network_volume is not None:
            continue
        on_cluster = state.cluster is not None and state.cluster.deleted_at is None
        if (cluster_id is not None and on_cluster and state.cluster.id == cluster_id) or \
                (pod_id is not None and state.cluster is None and state.pod.id == pod_id):
            what = state.left_on(state.pod.id)
            if what:
                return run_id, what
    return None


def creates_in_flight(settings: Settings, client: Any) -> list[tuple[str, float]]:
    """(run id, seconds since) of the runs of this machine whose last create was sent by a
    process that ended before it recorded what it made, and that RunPod may still be
    answering (Cycle.await_a_killed_create's window): a pod may appear, and no listing shows
    it yet. A run a live process drives waits for its own create."""
    import time

    from podcycle.config import effective_backend
    from podcycle.errors import PodCycleError

    window = getattr(client, "create_timeout", 60.0) + getattr(client, "create_settle", 30.0)
    here = effective_backend(settings)
    found = []
    try:
        runs = list_runs(settings.artifacts_dir)
    except OSError:
        return []
    for run_id, state in runs:
        sent = state.create_sent_at if state is not None else None
        if not isinstance(sent, int | float) or time.time() - sent > window \
                or (state.backend and state.backend != here):  # its pod is not made here
            continue
        try:
            if RunFolder(settings.artifacts_dir, run_id).is_driven():
                continue
        except (PodCycleError, OSError):
            continue
        found.append((run_id, time.time() - sent))
    return found


def held_text(holder: tuple[str, str]) -> str:
    """uncollected_model's find, in words: "run r1's trained model (not yet collected)"."""
    run_id, what = holder
    return (f"run {run_id}'s trained model (not yet collected)" if what == "trained model"
            else f"run {run_id}'s training (its host lost it; it may have finished)")


def lost_model_line(holder: tuple[str, str], what: str) -> str:
    """What pod.terminate and cluster.delete say after deleting `what` (a pod's disk, a
    cluster) that held uncollected_model's find."""
    from podcycle.cycle import resume_hint

    return f"{held_text(holder)} went with {what}: {resume_hint(holder[0])} trains it again"


def lost_with_volume_line(holder: tuple[str, str]) -> str:
    """lost_model_line for volume.delete: the run cannot go on without its volume (its
    --resume asks for it), so the training is done again by a new run."""
    return (f"{held_text(holder)} went with the volume: run {holder[0]} cannot go on without "
            "it; a new run trains again (inv cycle.full-smoke)")


def _record_by_hand(settings: Settings, billing: Callable[[Any], bool],
                    record: Callable[[RunFolder], None]) -> str | None:
    """The first run of this machine whose state `billing` picks, held while `record` takes
    what was done by hand; its id once its record no longer bills, else None (no such run,
    one a live process drives, or a record that could not be written)."""
    for run_id, state in list_runs(settings.artifacts_dir):
        if state is None or not billing(state):
            continue
        with _run_held(settings, run_id, True) as run:
            if run is None or isinstance(run, str) or not billing(run.state):
                return None
            record(run)
            return None if billing(run.state) else run_id
    return None


def record_deleted(run: RunFolder, cluster_id: str, outcome: str,
                   by: str = "pod.leftovers --stop") -> None:
    """record_stopped for a cluster that `by` deleted: the run's record says it is gone, and
    its estimated cost stops rising."""
    import time

    def deleted(state: Any) -> bool:
        record = state.cluster
        if record is None or record.id != cluster_id or record.deleted_at is not None:
            return False
        state.record_cluster_deleted(time.time(), outcome)
        return True

    if outcome in ("deleted", "gone"):
        _record(run, f"cluster {cluster_id} {outcome} by {by}", deleted)


def _record(run: RunFolder, note: str, change: Callable[[Any], bool]) -> None:
    """Apply `change` to the held run's state, with `note`, when it says it applied. A
    record that cannot be read or written is left as it is (what pod.leftovers did has
    happened either way)."""
    from podcycle.errors import PodCycleError

    try:
        if change(run.state):
            run.state.note(note)
            run.save()
    except (PodCycleError, OSError, KeyError, TypeError, ValueError):
        pass


def stop_one(client: Any, settings: Settings, item: Leftover) -> str:
    """`pod.leftovers --stop` for one pod: its run's lock held from the check to the record,
    so a run that a process took up again since the listing (a --resume, a next step) keeps
    its pod. What happened, in words (stopped, already stopped, kept: ...)."""
    from podcycle.pods import stop_pod

    with _run_held(settings, item.run_id, item.run_here) as run:
        if isinstance(run, str):
            return run
        if run is not None and _waiting_for(run, item.pod.id):
            return "kept (open step-by-step run)"
        outcome = stop_pod(client, item.pod.id)
        if run is not None:
            record_stopped(run, item.pod.id, outcome)
        return outcome


def delete_one(client: Any, settings: Settings, item: ClusterLeftover) -> str:
    """stop_one for a cluster: deleted unless it holds its run's work (item.keep_reason), or
    its run was taken up again since the listing."""
    from podcycle.clusters import delete_cluster

    if item.holds:
        return item.keep_reason()
    with _run_held(settings, item.run_id, item.run_here) as run:
        if isinstance(run, str):
            return run
        if run is None and item.run_id and item.run_here:  # unreadable since it was listed
            return replace(item, holds=UNREADABLE).keep_reason()
        if run is not None and (_cluster_waiting_for(run, item.cluster.id)
                                or _held_on(run, item.cluster.id)):
            return "kept: its run changed since it was listed (inv pod.leftovers again)"
        outcome = delete_cluster(client, item.cluster.id)
        if run is not None:
            record_deleted(run, item.cluster.id, outcome)
        return outcome


@contextmanager
def _run_held(settings: Settings, run_id: str | None, here: bool) -> Iterator[Any]:
    """The run's folder locked by this process for the block (None: no run folder here), or
    why not (a str): a live process drives the run again."""
    from podcycle.errors import PodCycleError

    if run_id is None:
        yield None
        return
    run = RunFolder(settings.artifacts_dir, run_id)
    if not here and not run.exists():
        yield None
        return
    try:
        run.lock()
    except RunBusy:
        pid = run.holder_pid()
        yield (f"kept: run {run_id} is driven again (pid {pid if pid else 'unknown'}) since it "
               "was listed")
        return
    except (PodCycleError, OSError):
        # Its state cannot be read (the lock was taken, then its reload failed) or its lock
        # file cannot be opened: nobody drives it, and its record cannot take the stop.
        run.unlock()
        yield None
        return
    try:
        yield run
    finally:
        run.unlock()


def find(client: Any, settings: Settings) -> list[Leftover]:
    """The leftovers only (what `pod.leftovers --stop` stops)."""
    return [item for item in survey(client, settings) if not item.open_run]


def _all_pods(client: Any) -> list[Pod]:
    """Every pod, cluster members included (they are counted with their cluster, never as
    pods of their own: a member cannot be stopped anyway)."""
    import inspect

    if "include_cluster_pods" in inspect.signature(client.list_pods).parameters:
        return client.list_pods(include_cluster_pods=True)
    return client.list_pods()


# In `recorded`'s map, a run's pod name (never an id: ids hold no colon).
NAMED = "name:"


def recorded(settings: Settings) -> dict[str, str]:
    """The pod and cluster ids that the runs under the artifacts folder recorded (their
    current ones and those they replaced), and their pods' names (NAMED + name), each to
    its run id: a run made under another RUNPOD_POD_NAME is still this tool's."""
    owners: dict[str, str] = {}
    for run_id, state in list_runs(settings.artifacts_dir):
        if state is None:
            continue
        for made in [*state.replaced, state.pod and state.pod.id,
                     state.cluster and state.cluster.id]:
            if made:
                owners[made] = run_id
        if state.pod_name:
            # A create whose answer was lost (its process killed) recorded no id: its pod
            # bears the name the run recorded, whatever RUNPOD_POD_NAME says now.
            owners.setdefault(NAMED + state.pod_name, run_id)
    return owners


def _owner(name: str, made_id: str, settings: Settings, owners: dict[str, str]
           ) -> tuple[bool, str | None]:
    """Whether a pod or cluster is this tool's (a run recorded it, or it bears a run's name),
    and its run id (None: named like one, without a valid id)."""
    if made_id in owners:
        return True, owners[made_id]
    if NAMED + name in owners:
        return True, owners[NAMED + name]
    if not name.startswith(prefix(settings)):
        return False, None
    run_id = name[len(prefix(settings)):]
    return True, (run_id if RUN_ID.fullmatch(run_id) and ".." not in run_id else None)


OTHER_KEPT = "left alone (made by no run of this tool): inv pod.stop ID stops it"
# A pod whose run a suspended process holds: that process goes on when continued, and a stop
# meanwhile would pull the pod from under it.
SUSPENDED_KEPT = "left alone (its run's process is suspended): continue it, or end it"


def other_as_dict(pod: Pod) -> dict[str, Any]:
    """pod.leftovers --json's row for a billing pod no run of this tool made (pod.provision's,
    the console's): named with its price, never stopped by pod.leftovers."""
    return {"pod_id": pod.id, "name": pod.name, "status": pod.status.value, "run_id": None,
            "usd_per_hour": pod.cost_per_hour, "kind": "other"}


def survey(client: Any, settings: Settings, *, others: list[Pod] | None = None,
           suspended: list[tuple[Pod, str, int]] | None = None) -> list[Leftover]:
    """Billing pods of this tool whose run no live process drives: the leftovers, and the pods
    of open step-by-step runs (`open_run`), waiting between two steps. Cluster members are
    left to `survey_clusters`. `others` collects the billing pods no run of this tool made
    (pod.provision's, the console's); `suspended`, (pod, run id, pid) of the pods whose run a
    suspended process holds (Ctrl-Z in a terminal forgotten: it bills, nothing happens)."""
    found = []
    now = datetime.now(UTC)
    owners = recorded(settings)
    for pod in _all_pods(client):
        if getattr(pod, "cluster_id", None) or not pod.status.billing:
            continue
        ours, run_id = _owner(pod.name, pod.id, settings, owners)
        if not ours:
            if others is not None:
                others.append(pod)
            continue
        run_here = False
        next_step = None
        if run_id is not None:
            run = RunFolder(settings.artifacts_dir, run_id)
            if run.is_driven():
                pid = run.holder_pid() if suspended is not None else None
                if pid is not None and suspends(pid):
                    suspended.append((pod, run_id, pid))
                continue
            run_here = run.exists()
            if run_here:
                next_step = _waiting_for(run, pod.id)
        age = age_of(pod.created_at, now)
        billed = pod.uptime_seconds if pod.uptime_seconds is not None else age
        cost = pod.cost_per_hour * billed / 3600 if billed is not None else None
        found.append(Leftover(pod, run_id, run_here, age, cost, next_step))
    return found


def age_of(created_at: str | None, now: datetime) -> float | None:
    """Seconds since an API timestamp; None when there is none or it does not parse."""
    from podcycle.runpod.models import api_time

    created = api_time(created_at)
    if created is None:
        return None
    return max(0.0, (now - created).total_seconds())


def _waiting_for(run: RunFolder, pod_id: str) -> str | None:
    """The next step of the run when it is an open step-by-step run and this is its pod."""
    return _next_step(run, lambda state: state.pod is not None and state.pod.id == pod_id)


def _next_step(run: RunFolder, owns: Callable[[Any], bool]) -> str | None:
    """The next step of an open step-by-step run whose state `owns` the resource."""
    from podcycle.errors import PodCycleError

    try:
        state = run.state
    except (PodCycleError, KeyError, TypeError, ValueError):
        return None  # unreadable, or another version's: nothing says it is open
    if not owns(state) or not state.open_between_steps:
        return None
    pending = state.pending()
    return pending[0] if pending else "stop"


def open_runs_note(waiting: list[Leftover]) -> str:
    """One line on pods of open step-by-step runs: billing, yet not left over."""
    runs = "; ".join(item.open_line() for item in waiting[:3])
    more = f" and {len(waiting) - 3} more" if len(waiting) > 3 else ""
    return (f"note: {len(waiting)} pod(s) bill between the steps of a step-by-step run: "
            f"{runs}{more}")


def elsewhere_note(leftovers: list[Leftover], artifacts_dir: Path) -> str | None:
    """A note on the listed pods whose run's folder is not under this artifacts folder: no
    process here drives them, but one in another checkout or on another machine may (a
    teammate's full-smoke), which `--stop` would interrupt. None when there are none."""
    elsewhere = [item for item in leftovers if item.run_elsewhere]
    if not elsewhere:
        return None
    named = ", ".join(f"{item.pod.id} (run {item.run_id})" for item in elsewhere[:3])
    more = f" and {len(elsewhere) - 3} more" if len(elsewhere) > 3 else ""
    return (f"note: the run of {len(elsewhere)} of these pod(s) has no folder under this "
            f"artifacts folder ({artifacts_dir}): {named}{more}. No process here drives "
            "them, but one in another checkout or on another machine may: look there before "
            "--stop, which stops them too (a stopped pod keeps its disk)")


def warning(leftovers: list[Leftover]) -> str:
    pods = "; ".join(item.line() for item in leftovers[:3])
    more = f" and {len(leftovers) - 3} more" if len(leftovers) > 3 else ""
    return (f"warning: {len(leftovers)} pod(s) of earlier runs still running and billing with "
            f"no process driving them: {pods}{more} (inv pod.leftovers --stop stops them)")


def duration(seconds: float | None) -> str:
    if seconds is None:
        return "?"
    minutes = int(seconds // 60)
    return f"{minutes // 60}h{minutes % 60:02d}m" if minutes >= 60 else f"{minutes}m"


# -- clusters -------------------------------------------------------------------------------
# What a cluster holds when its run's state cannot be read.
UNREADABLE = "unreadable record"
# A cluster whose run's folder is not under this artifacts folder: what is on it is unknown.
ELSEWHERE = "run folder elsewhere"

@dataclass
class ClusterLeftover:
    """A cluster of this tool (named by its run) whose run no live process drives. A cluster
    cannot be stopped: `pod.leftovers --stop` deletes it."""
    cluster: Cluster
    run_id: str | None
    run_here: bool
    age_seconds: float | None
    cost_so_far: float | None
    next_step: str | None = None
    holds: str | None = None  # what of its run lives only on it (RunState.left_on)

    @property
    def open_run(self) -> bool:
        return self.next_step is not None

    def keep_reason(self) -> str:
        """Why `pod.leftovers --stop` keeps it: deleting it would lose its run's work."""
        if self.holds == UNREADABLE:
            return (f"kept: run {self.run_id}'s state cannot be read, so what is on the cluster "
                    f"is unknown (inv runs.show {self.run_id} says why; inv cluster.delete "
                    f"{self.cluster.id} --yes deletes it with what is on it)")
        if self.holds == ELSEWHERE:
            return (f"kept: run {self.run_id}'s folder is not under this artifacts folder "
                    "(another machine's or checkout's run?), so what is on the cluster is "
                    f"unknown (inv cycle.stop -r {self.run_id} from the run's own folder "
                    f"collects, then deletes it; inv cluster.delete {self.cluster.id} --yes "
                    "deletes it with what is on it)")
        return (f"kept: run {self.run_id}'s {self.holds} is only on it (inv cycle.stop -r "
                f"{self.run_id} collects it, then deletes the cluster; inv cluster.delete "
                f"{self.cluster.id} --yes deletes it with it)")

    def as_dict(self) -> dict[str, Any]:
        return {"cluster_id": self.cluster.id, "name": self.cluster.name,
                "nodes": self.cluster.pod_count, "gpu": self.cluster.gpu_label,
                "member_pod_ids": [p.id for p in self.cluster.pods],
                "run_id": self.run_id, "run_folder_here": self.run_here,
                "age_seconds": None if self.age_seconds is None else round(self.age_seconds),
                "usd_per_hour": self.cluster.cost_per_hour,
                "cost_so_far_usd": None if self.cost_so_far is None
                else round(self.cost_so_far, 4),
                "kind": "open-run" if self.open_run else "leftover", "resource": "cluster",
                "next_step": self.next_step, "holds": self.holds}

    def line(self) -> str:
        cost = f", ~${self.cost_so_far:.4f} so far" if self.cost_so_far is not None else ""
        run = f"run {self.run_id}" if self.run_id else "no run id"
        holds = ("; its run's state cannot be read" if self.holds == UNREADABLE
                 else "; its run's folder is not here" if self.holds == ELSEWHERE
                 else f"; its {self.holds} is only on it" if self.holds else "")
        return (f"cluster {self.cluster.id} ({self.cluster.pod_count} nodes, {run}, up "
                f"{duration(self.age_seconds)}{cost}{holds})")

    def open_line(self) -> str:
        return (f"open step-by-step run {self.run_id} (cluster {self.cluster.id}, up "
                f"{duration(self.age_seconds)}): resume with inv cycle.{self.next_step} -r "
                f"{self.run_id} or delete it with inv cycle.stop -r {self.run_id}")


def survey_clusters(client: Any, settings: Settings) -> list[ClusterLeftover]:
    """Clusters of this tool (named `<prefix><run id>`) whose run no live process drives:
    leftovers, and the clusters of open step-by-step runs (`open_run`)."""
    if not hasattr(client, "list_clusters"):
        return []
    found = []
    now = datetime.now(UTC)
    owners = recorded(settings)
    for cluster in client.list_clusters():
        ours, run_id = _owner(cluster.name, cluster.id, settings, owners)
        if not ours:
            continue
        run_here, next_step, holds = False, None, None
        if run_id is not None:
            run = RunFolder(settings.artifacts_dir, run_id)
            if run.is_driven():
                continue
            run_here = run.exists()
            if run_here:
                next_step = _cluster_waiting_for(run, cluster.id)
                holds = _held_on(run, cluster.id)
            else:  # its model may be on it: a delete takes the nodes' disks
                holds = ELSEWHERE
        try:
            cluster = client.get_cluster_with_pods(cluster.id)
        except Exception:  # noqa: BLE001 - the summary is enough to list it
            pass
        age = age_of(cluster.created_at, now)
        cost = cluster.cost_per_hour * age / 3600 if age is not None and cluster.pods \
            else None
        found.append(ClusterLeftover(cluster, run_id, run_here, age, cost, next_step, holds))
    return found


def _held_on(run: RunFolder, cluster_id: str) -> str | None:
    """What of the run lives only on its cluster `cluster_id` (RunState.left_on)."""
    from podcycle.errors import PodCycleError

    try:
        state = run.state
    except (PodCycleError, OSError, KeyError, TypeError, ValueError):
        return UNREADABLE  # nobody knows whose model is on it: kept, as cycle.stop keeps it
    if state.cluster is None or state.cluster.id != cluster_id or state.pod is None:
        return None
    return state.left_on(state.pod.id)


def _cluster_waiting_for(run: RunFolder, cluster_id: str) -> str | None:
    return _next_step(run, lambda state: state.cluster is not None
                      and state.cluster.id == cluster_id)


def cluster_warning(leftovers: list[ClusterLeftover]) -> str:
    shown = "; ".join(item.line() for item in leftovers[:3])
    more = f" and {len(leftovers) - 3} more" if len(leftovers) > 3 else ""
    return (f"warning: {len(leftovers)} cluster(s) of earlier runs still running and billing "
            f"with no process driving them: {shown}{more} (inv pod.leftovers --stop deletes "
            + ("those that hold nothing of their run's alone)" if any(i.holds for i in leftovers)
               else "them)"))
