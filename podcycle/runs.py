"""Run ids, run folders (artifacts/runpod_cycles/<run_id>/), the run's state and its lock.

The state is a typed, versioned object (`RunState`) saved atomically as state.json. Each step
records when it ran and on which pod; steps whose results live on the pod (the pushed dataset,
a finished training not yet collected) are invalidated when the run's pod changes, and a step
that is redone invalidates the steps built on it. One process at a time holds a run: an OS
file lock in the run folder, released by the kernel when the holder dies.
"""

from __future__ import annotations

import functools
import json
import math
import os
import re
import secrets
import sys
import tempfile
import time
import types
import typing
from dataclasses import asdict, dataclass, field, fields, is_dataclass
from pathlib import Path
from typing import Any

from podcycle.errors import ConfigError, PodCycleError
from podcycle.owner_lock import OwnerLock

RUN_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
RUN_ID_RULE = "letters, digits, '.', '_' and '-' only (no path separators), at most 64"
# The state's schema. Bumped when a field is added whose loss would bill or lose work: an
# older version reading a newer state keeps none of the fields it does not know, and its
# rewrite dropped what this one keeps for safety (a create's outstanding record, the pod's
# name, the run's training settings): a second pod billed. An older version refuses another
# schema outright ("finish it with that version"). 3: from 2026-12-07; this version reads
# the 2 of older ones (READABLE) and writes 3.
SCHEMA = 3
READABLE = (2, SCHEMA)
# The cycle's steps in order. "stop" ends a run but produces nothing later steps need.
STEPS = ("start", "push-dataset", "train", "collect", "local-validate", "stop")
WORK_STEPS = STEPS[:-1]
# Steps that need the run's pod to be up.
NEEDS_POD = frozenset({"start", "push-dataset", "train", "collect"})
# Steps whose results live only on the pod until `collect` brings them home.
ON_POD = frozenset({"push-dataset", "train"})
# Redoing a step makes these stale (their inputs changed).
DOWNSTREAM = {
    "push-dataset": ("train", "collect", "local-validate"),
    "train": ("collect", "local-validate"),
    "collect": ("local-validate",),
}


def new_run_id() -> str:
    return time.strftime("rc-%Y%m%d-%H%M%S-", time.gmtime()) + secrets.token_hex(2)


def validate_run_id(run_id: str) -> str:
    if not isinstance(run_id, str) or not RUN_ID.fullmatch(run_id) or ".." in run_id:
        shown = (repr(run_id) if not isinstance(run_id, str) or len(run_id) <= 80
                 else f"{run_id[:60]!r}... ({len(run_id):,} characters)")
        raise ConfigError(f"invalid run id {shown}", f"use {RUN_ID_RULE}")
    return run_id


def nearest_existing(path: Path) -> Path:
    """`path` itself, or the closest folder above it that exists: where a folder still to be
    made would be created, so what can be checked of it (room, writability) before it is."""
    existing = Path(path).absolute()
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    return existing


def write_refusal(folder: Path) -> str | None:
    """Why no file can be made in `folder` (a read-only mount, another user's, a file in its
    place), or None when one can: the test is making one, as the writer will."""
    try:
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as exc:
        return exc.strerror or str(exc)
    return None


def atomic_write(path: Path, data: str | bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data.encode() if isinstance(data, str) else data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        Path(tmp).unlink(missing_ok=True)
        if exc.filename is None:  # a write or flush on a full disk names no file: this one
            raise OSError(exc.errno, exc.strerror, str(path)) from None
        raise
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


# -- the state -------------------------------------------------------------------------------
@dataclass
class StepRecord:
    status: str = "pending"  # pending | running | done | failed | interrupted | outdated
    started_at: float | None = None
    finished_at: float | None = None
    seconds: float | None = None
    error: str | None = None
    pod_id: str | None = None  # the pod the step ran against
    # A train that failed after its model was written (a cluster's smoke check): the model
    # is on the pod all the same.
    model_trained: bool = False


@dataclass
class SpendGuard:
    """The spend guard a pod enforces itself (deploy/.../spend_guard.py): it stops the pod
    `minutes` after each boot, the tighter of --max-minutes and --max-cost at its price."""
    minutes: float
    reason: str  # e.g. "--max-minutes 90" or "--max-cost $5 at $2.00/h"
    max_minutes: float | None = None
    max_cost: float | None = None
    fired: bool | None = None  # None: not known (yet)
    fired_line: str | None = None  # the guard's own log line when it fired


@dataclass
class TrainSettings:
    """What the run's training was asked for (flags, env, invoke.yaml), recorded at its first
    train: a later train or --resume that does not give them again trains the same way. A
    rerun with other epochs replaced a finished model with a shorter one, and a resume from
    the printed hint trained the default 3 epochs on the default dataset."""
    epochs: int | None = None
    batch_size: int | None = None
    blocks: int | None = None
    channels: int | None = None
    extra_args: str | None = None


# A billing check's detail when RunPod has nothing for the pod yet: its billing lags.
NO_BILLING_YET = "RunPod has no billing records for the pod yet"


@dataclass
class BillingCheck:
    """What RunPod billed for the run's pod (/v2/billing/pods), looked up at stop."""
    checked_at: float
    amount: float | None = None  # USD, when available
    available: bool = False
    detail: str | None = None  # why it is not available

    @property
    def failed(self) -> bool:
        """The read failed (an error, an unreadable answer): not RunPod's lag."""
        return not self.available and bool(self.detail) and self.detail != NO_BILLING_YET


@dataclass
class VolumeRef:
    """The network volume a run's pods mount; its keys are the API's (dataCenter)."""
    id: str
    name: str
    dataCenter: str  # noqa: N815 - the API's and the state file's key


def billing_from(record: Any) -> float | None:
    """When the open billed interval of a pod or cluster record began: its create or start
    (`billing_since`: RunPod bills while it boots), else when it answered SSH
    (`running_since`, all a record written before billing_since was recorded has), or None
    while it is not billing."""
    times = [t for t in (record.billing_since, record.running_since) if t]
    return min(times) if times else None


def billing_started(record: Any, now: float) -> None:
    """The record's pod or cluster was created or started at `now`: its billed interval
    opens there, unless one is open already."""
    if billing_from(record) is None:
        record.billing_since = now


def billed_so_far(record: Any, now: float) -> float:
    """The record's billed seconds with its open interval counted up to `now`."""
    since = billing_from(record)
    return record.billed_seconds + (max(0.0, now - since) if since else 0.0)


def guard_deadline(record: Any) -> float | None:
    """When the record's spend guard stops its pod (deletes its cluster) at the latest: its
    minutes after the boot it answered SSH from. None: no guard, not booted, or a guard seen
    not to fire."""
    guard = getattr(record, "guard", None)
    if guard is None or not guard.minutes or not record.running_since or guard.fired is False:
        return None
    return record.running_since + guard.minutes * 60


def estimated_billed(record: Any, now: float) -> float:
    """billed_so_far for an estimate: an open interval ends by the guard's deadline at the
    latest, whether or not a cycle has seen the guard fire (runs.show said "still running"
    at a cost that rose on and on after the pod had stopped itself)."""
    deadline = guard_deadline(record)
    return billed_so_far(record, now if deadline is None else min(now, deadline))


def close_billing(record: Any, now: float) -> None:
    """End the billed interval of a pod or cluster record (from its create or start, added
    into `billed_seconds`): the one bookkeeping of a stop, a cluster's delete and a
    leftover's."""
    if billing_from(record) is not None:
        record.billed_seconds = round(billed_so_far(record, now), 3)
    record.running_since = record.billing_since = None


@dataclass
class PodRecord:
    id: str
    name: str = ""
    gpu_id: str | None = None
    gpu_count: int = 1
    cloud: str | None = None
    template: str | None = None
    price_per_hour: float | None = None
    created_at: float | None = None
    # Set from the create or start of the pod by this run until it stops: RunPod bills
    # while the pod boots, before it answers SSH.
    billing_since: float | None = None
    running_since: float | None = None  # set while the pod runs for this run
    billed_seconds: float = 0.0
    stopped_at: float | None = None
    # When pod.terminate (by hand) deleted the pod and its disk: runs.show said "stopped",
    # as if a resume could start it again with what the run kept on it. Lost to an older
    # version's rewrite, it costs only that line (no schema bump: nothing bills for it).
    terminated_at: float | None = None
    stop_failed: bool = False
    guard: SpendGuard | None = None  # the spend guard the pod enforces itself
    # The cluster this pod is the primary (node rank 0) of; None for a standalone pod.
    cluster_id: str | None = None
    # The private key the pod was made for (its .pub is what the pod lets in): a later step
    # run with another RUNPOD_SSH_KEY is refused, and told which key the pod takes.
    ssh_key: str | None = None

    @property
    def may_bill(self) -> bool:
        """Not known to be stopped: running, or created or started again and still booting
        (running_since is set only once SSH answers; a booting pod bills already), or its
        stop failed."""
        return self.stop_failed or billing_from(self) is not None or self.stopped_at is None

    def record_stop(self, outcome: str, now: float, boot_bound: float | None = None) -> None:
        """What a stop (podcycle.pods.stop_pod's outcome) leaves in the record: its billed
        time closed, and when it stopped (one already stopped keeps its time). A pod its
        spend guard stopped billed no longer than the guard let it: its boot came before
        running_since (set once SSH answered), so that bound is never short. One never seen
        to answer SSH booted within `boot_bound` seconds of its create or start (the cycle's
        ready timeout), when given."""
        guard = self.guard
        booted = self.running_since
        if not booted and self.billing_since and boot_bound is not None:
            booted = self.billing_since + boot_bound
        if guard is not None and guard.fired and booted:
            now = min(now, booted + guard.minutes * 60)
        close_billing(self, now)
        if outcome != "already stopped" or self.stopped_at is None:
            self.stopped_at = now


@dataclass
class RemotePaths:
    pod_id: str
    repo_dir: str
    training_dir: str
    timing_log: str
    venv_dir: str
    out: str  # the run's folder on the pod (on its network volume when it has one)
    volume_dir: str | None = None  # where the pod mounts the run's network volume


@dataclass
class ClusterMember:
    """One node of the run's cluster: its pod, NODE_RANK (0 = the primary, where global rank
    0 and the artifacts live) and SSH endpoint, and its cycle paths once asked."""
    pod_id: str
    rank: int
    ssh_host: str | None = None
    ssh_port: int | None = None
    ssh_user: str | None = None
    paths: RemotePaths | None = None


@dataclass
class ClusterRecord:
    """The run's RunPod Instant Cluster (`--nodes N`): N pods of `gpu_count_per_pod` GPUs.
    A cluster cannot be stopped, only deleted: `deleted_at` ends it."""
    id: str
    name: str = ""
    gpu_id: str | None = None
    gpu_count_per_pod: int = 1
    pod_count: int = 2
    price_per_hour: float | None = None  # the whole cluster (every node)
    created_at: float | None = None
    billing_since: float | None = None  # from its create: it bills while its nodes boot
    running_since: float | None = None
    billed_seconds: float = 0.0
    deleted_at: float | None = None
    delete_failed: bool = False
    data_center: str | None = None
    guard: SpendGuard | None = None
    members: list[ClusterMember] = field(default_factory=list)

    @property
    def primary(self) -> ClusterMember | None:
        return next((m for m in self.members if m.rank == 0), None)

    def member(self, pod_id: str) -> ClusterMember | None:
        return next((m for m in self.members if m.pod_id == pod_id), None)

    @property
    def world_size(self) -> int:
        return self.pod_count * self.gpu_count_per_pod


@dataclass
class DatasetRecord:
    pod_id: str
    local: str
    remote: str
    bytes: int
    sha256: str
    train: int
    val: int
    files: list[str] = field(default_factory=list)


@dataclass
class TransferRecord:
    step: str
    sent: int
    received: int
    seconds: float
    dataset_bytes: int | None = None


def _build(cls: type, data: Any, where: str = "a record") -> Any:
    if data is None:
        return None
    if not isinstance(data, dict):  # `"pod": [1, 2]` was "AttributeError: 'list' object ..."
        raise TypeError(f"{where} is {json.dumps(data)[:40]}, which is not an object")
    names = {f.name for f in fields(cls)}
    return cls(**{k: v for k, v in data.items() if k in names})


@functools.cache
def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _fits(value: Any, hint: Any) -> bool:
    """Whether a value read from JSON is of the type a field declares (None, bool, int,
    float, str, list, dict, a record; anything else is not checked)."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        return any(_fits(value, arg) for arg in args)
    if hint is type(None):
        return value is None
    if hint is float:  # JSON's NaN and Infinity are no number a run records
        return isinstance(value, (int, float)) and not isinstance(value, bool) and \
            math.isfinite(value)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint in (str, bool):
        return isinstance(value, hint)
    if hint is list or origin is list:
        return isinstance(value, list) and (not args or all(_fits(v, args[0]) for v in value))
    if hint is dict or origin is dict:
        return isinstance(value, dict) and (not args or all(_fits(v, args[1])
                                                            for v in value.values()))
    if is_dataclass(hint):
        return isinstance(value, hint)
    return True


# A time past this (2242) in a state.json is damage: time.gmtime overflows long before
# JSON's numbers do.
LATEST_TIME = 2 ** 33


def _check_types(record: Any, where: str) -> None:
    """A record read from a state.json holds the types its fields declare, records within
    it too: a hand-edited or damaged file is refused as such when it is read, not met
    later as a crash (a created_at of "abc" once broke runs.list for every run)."""
    for f in fields(record):
        value, hint = getattr(record, f.name), _hints(type(record))[f.name]
        if not _fits(value, hint):
            raise TypeError(f"{where}.{f.name} is {json.dumps(value)[:40]}, which is not "
                            f"of its type ({hint.__name__ if isinstance(hint, type) else hint})")
        if f.name.endswith("_at") and isinstance(value, int | float) and \
                not 0 <= value < LATEST_TIME:
            raise TypeError(f"{where}.{f.name} is {json.dumps(value)[:40]}, which is no time "
                            "a run was at (seconds since 1970)")
        if f.name == "events" and not all({"at", "text"} <= set(e) for e in value):
            raise TypeError(f"{where}.events holds an entry without its 'at' and 'text'")
        # Each inner record named by its key or place: state.steps.train, not state.steps.
        inner = (((f"{where}.{f.name}[{i}]", v) for i, v in enumerate(value))
                 if isinstance(value, list) else
                 ((f"{where}.{f.name}.{k}", v) for k, v in value.items())
                 if isinstance(value, dict) else [(f"{where}.{f.name}", value)])
        for place, item in inner:
            if is_dataclass(item):
                _check_types(item, place)


@dataclass
class RunState:
    run_id: str
    schema: int = SCHEMA
    created_at: float = field(default_factory=time.time)
    backend: str | None = None
    pod: PodRecord | None = None
    steps: dict[str, StepRecord] = field(default_factory=dict)
    remote: RemotePaths | None = None
    dataset: DatasetRecord | None = None
    transfers: list[TransferRecord] = field(default_factory=list)
    train_remote_seconds: float | None = None
    local_validation: dict[str, Any] | None = None
    total_seconds: float | None = None
    outcome: str | None = None  # ok | failed | interrupted
    events: list[dict[str, str]] = field(default_factory=list)
    # What RunPod billed for the run's pod (/v2/billing/pods), looked up at stop.
    billing: BillingCheck | None = None
    # The network volume the run's pods mount: a pod that replaces a lost one mounts it
    # too, and finds the dataset and checkpoints there.
    network_volume: VolumeRef | None = None
    # What drives the run: "full-smoke" (one process, to its end) or "steps" (cycle.start,
    # cycle.train, ... as separate commands, the pod waiting between them). None: recorded
    # before pod-cycle kept it.
    driver: str | None = None
    # The strength check of local-validate (--strength-games): podcycle.match's summary
    # (wins, draws, losses, elo, elo_low, elo_high, sprt, pgn, ...). None: not asked, or a
    # state written before pod-cycle had it.
    strength: dict[str, Any] | None = None
    # The strength check a full-smoke was started with ({"games": N, "opponent": X}): a
    # --resume without --strength-games plays it all the same (an interrupted match was
    # dropped in silence, and the run said "ok"). None: none asked, or a state from before.
    strength_asked: dict[str, Any] | None = None
    # The run's cluster (--nodes N): its primary is also `pod` (where the artifacts live).
    # None: a single-pod run, or a state written before pod-cycle had clusters.
    cluster: ClusterRecord | None = None
    # The cluster nodes that failed the run (gang failure): rank, pod id, why, last lines.
    node_failures: list[dict[str, Any]] = field(default_factory=list)
    # The run's shape, recorded at its first start before anything is created: 1 (a pod) or
    # the node count of its cluster (--nodes). A cluster whose record was lost (its create's
    # answer, a process killed) is found again in that shape. None: a state from before.
    nodes: int | None = None
    # The name of the run's pods and clusters (RUNPOD_POD_NAME's prefix and the run id),
    # recorded with `nodes`: a create whose record was lost is found again under it, by a
    # resume or pod.leftovers, whatever RUNPOD_POD_NAME says then. None: a state from before.
    pod_name: str | None = None
    # When the run's last create request (of its pod or cluster) was sent, until what it
    # made is recorded, or RunPod refused it: RunPod goes on making a pod after the process
    # that asked is killed, so the next start or stop looks for it before it makes another
    # or ends (Cycle.await_a_killed_create). None: no create is outstanding.
    create_sent_at: float | None = None
    # The ids of the pods (and clusters) the run had before its current one (lost, deleted,
    # terminated): what they billed is the run's too.
    replaced: list[str] = field(default_factory=list)
    # The training's own settings, from its first train (TrainSettings), or from the start
    # of a full-smoke. None: not trained yet, or a state from before.
    train_settings: TrainSettings | None = None
    # The dataset folder a full-smoke was started with (resolved), recorded before its
    # steps: a --resume without -d pushes it when the run's first push never happened (one
    # killed during its create pushed the default dataset, and trained on it). None: a run
    # started step by step, or a state from before.
    dataset_asked: str | None = None
    # A pod or cluster of the run was found stopped or gone, so its billed time was closed
    # later than it really stopped: the estimate is then an upper bound, and RunPod's bill
    # is the run's cost even when it is under the estimate (report.run_cost).
    stop_time_unknown: bool = False

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> RunState:
        if not isinstance(data, dict):
            raise TypeError("a run state is a JSON object")
        if not isinstance(data.get("run_id"), str):  # every version wrote it ({} is no run)
            raise KeyError("run_id")
        if data.get("schema") not in READABLE:
            raise ConfigError(
                f"run {data.get('run_id')!r} was recorded by another version of pod-cycle "
                f"(state schema {data.get('schema', 1)}, this one reads {SCHEMA})",
                "finish it with that version, or start a new run (a new RUNPOD_CYCLE_RUN_ID)")
        state = cls(run_id=data["run_id"])
        for f in fields(cls):
            if f.name in data and f.name not in ("pod", "steps", "remote", "dataset",
                                                  "transfers", "billing", "network_volume",
                                                  "cluster", "train_settings"):
                setattr(state, f.name, data[f.name])
        state.pod = _build(PodRecord, data.get("pod"), "state.pod")
        if state.pod is not None:
            state.pod.guard = _build(SpendGuard, state.pod.guard, "state.pod.guard")
        state.billing = _build(BillingCheck, data.get("billing"), "state.billing")
        if state.billing is not None and state.billing.available \
                and state.billing.amount is None:
            # "available" with no amount (an edited or cut-short record) is no bill read:
            # the report and the summary failed on it with a traceback.
            state.billing.available = False
        state.train_settings = _build(TrainSettings, data.get("train_settings"),
                                      "state.train_settings")
        state.network_volume = _build(VolumeRef, data.get("network_volume"),
                                      "state.network_volume")
        state.cluster = _build(ClusterRecord, data.get("cluster"), "state.cluster")
        if state.cluster is not None:
            state.cluster.guard = _build(SpendGuard, state.cluster.guard,
                                         "state.cluster.guard")
            members = state.cluster.members or []
            if not isinstance(members, list):
                raise TypeError("state.cluster.members is not a list")
            state.cluster.members = [_build(ClusterMember, m, f"state.cluster.members[{i}]")
                                     for i, m in enumerate(members)]
            for i, member in enumerate(state.cluster.members):
                member.paths = _build(RemotePaths, member.paths,
                                      f"state.cluster.members[{i}].paths")
        state.remote = _build(RemotePaths, data.get("remote"), "state.remote")
        state.dataset = _build(DatasetRecord, data.get("dataset"), "state.dataset")
        steps, transfers = data.get("steps") or {}, data.get("transfers") or []
        if not isinstance(steps, dict) or not isinstance(transfers, list):
            raise TypeError("state.steps is not an object" if not isinstance(steps, dict)
                            else "state.transfers is not a list")
        state.steps = {k: _build(StepRecord, v, f"state.steps.{k}") for k, v in steps.items()}
        state.transfers = [_build(TransferRecord, t, f"state.transfers[{i}]")
                           for i, t in enumerate(transfers)]
        _check_types(state, "state")
        if data["schema"] != SCHEMA:
            state.upgraded_from(data["schema"])
        return state

    def upgraded_from(self, schema: int) -> None:
        """A state an older version wrote (schema 2), read as this version's. Its start
        killed during a create recorded no create_sent_at (older versions had none), and a
        resume made a second pod at once while RunPod was still making the first: such a
        start (begun, no pod or cluster recorded) is taken as a create sent when it began, so
        the next start looks for what it made first."""
        start = self.steps.get("start")
        if self.pod is None and self.cluster is None and self.create_sent_at is None and \
                start is not None and start.status in ("running", "interrupted"):
            self.create_sent_at = start.started_at or self.created_at
        if self.total_seconds is None:
            # Driven by hand under an older version, which timed only full-smoke: its steps'
            # seconds were its duration; every command now adds to that.
            seconds = [step.seconds for step in self.steps.values() if step.seconds]
            if seconds:
                self.total_seconds = round(sum(seconds), 3)
        self.schema = SCHEMA
        self.older_version = True  # not a field: what this process read, never written

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    # -- steps ------------------------------------------------------------------------------
    def step(self, name: str) -> StepRecord:
        return self.steps.get(name) or StepRecord()

    def done(self, name: str) -> bool:
        """Done, and (for results that live on the pod) done on the run's current pod."""
        step = self.steps.get(name)
        if step is None or step.status != "done":
            return False
        if name in ON_POD and not self.done("collect"):
            return self.pod is not None and step.pod_id == self.pod.id
        return True

    @property
    def finished(self) -> bool:
        return self.outcome == "ok" and all(self.done(s) for s in WORK_STEPS)

    def pending(self) -> list[str]:
        return [s for s in WORK_STEPS if not self.done(s)]

    @property
    def open_between_steps(self) -> bool:
        """A step-by-step run that is still going: its pod waits for the next step (a pod
        left by a full-smoke whose host died, a finished or stopped run, or a step whose
        process was killed mid-way is not waiting for anyone)."""
        if self.driver == "full-smoke" or self.outcome is not None or self.pod is None:
            return False
        if any(step.status == "running" for step in self.steps.values()):
            return False  # its process died mid-step: nobody drives it
        if all(self.done(name) for name in WORK_STEPS):
            return False  # finished: only the stop is missing
        stop = self.steps.get("stop")
        later = stop is not None and any((step.started_at or 0) > (stop.started_at or 0)
                                         for name, step in self.steps.items() if name != "stop")
        if self.stop_failed and not later:
            # Its stop was asked for and failed: nobody waits for a next step, and
            # pod.leftovers --stop, the catch-all, skipped it as an "open run".
            return False
        if stop is None or stop.status != "done":
            return True
        return later

    @property
    def stop_failed(self) -> bool:
        """Whether the run's last stop of its pod (or delete of its cluster) failed: it may
        bill on (its record says STOP FAILED)."""
        return bool((self.pod is not None and self.pod.stop_failed)
                    or (self.cluster is not None and self.cluster.delete_failed))

    @property
    def may_bill(self) -> bool:
        """Whether the run's pod (a cluster: the cluster) is not known to be stopped:
        running, still booting from its create or a start, or its stop failed."""
        if self.cluster is not None:
            return self.cluster.deleted_at is None
        return self.pod is not None and self.pod.may_bill

    def left_on(self, pod_id: str | None) -> str | None:
        """What of the run lives only on pod `pod_id` (a cluster's primary, whose disk goes
        with its cluster): "trained model" (a train done there, not collected since),
        "training" (a train there that the host lost, running or interrupted: it may have
        finished since), else None."""
        train = self.steps.get("train")
        if pod_id is None or train is None or train.pod_id != pod_id:
            return None
        return self._uncollected(pod_id)

    def left_on_volume(self) -> str | None:
        """left_on for a run on a network volume: what of it lives only on its volume (the
        run's folder on the pod is on the volume, and outlives every pod that mounts it)."""
        train = self.steps.get("train")
        if self.network_volume is None or train is None:
            return None
        return self._uncollected(None)

    def _uncollected(self, pod_id: str | None) -> str | None:
        """What the train step left that no collect (on pod `pod_id`; None: on any pod)
        has brought home since."""
        train = self.steps["train"]
        if train.status not in ("done", "running", "interrupted") and not train.model_trained:
            return None
        collect = self.steps.get("collect")
        if collect is not None and collect.status == "done" \
                and (pod_id is None or collect.pod_id == pod_id) \
                and (collect.started_at or 0) >= (train.started_at or 0):
            return None
        return "trained model" if train.status == "done" or train.model_trained else "training"

    def begin(self, name: str) -> None:
        self.steps[name] = StepRecord("running", started_at=time.time(),
                                      pod_id=self.pod.id if self.pod else None)

    def end(self, name: str, status: str, seconds: float, error: str | None = None) -> None:
        step = self.steps.setdefault(name, StepRecord())
        step.status, step.seconds, step.error = status, seconds, error
        if status == "done":
            step.finished_at = time.time()
            for later in DOWNSTREAM.get(name, ()):
                if later in self.steps and self.steps[later].status == "done":
                    self.steps[later].status = "outdated"
                    self.note(f"{later} is outdated: {name} ran again")

    # -- the pod ----------------------------------------------------------------------------
    def set_pod(self, record: PodRecord) -> None:
        """Record the run's pod. A different pod than before takes with it what lived on the
        old one (dataset, uncollected training): those steps are redone."""
        old = self.pod
        self.pod = record
        if old is None or old.id == record.id:
            return
        if billing_from(old):  # vanished: it billed until then at the most
            self.stop_time_unknown = True
        close_billing(old, time.time())
        record.billed_seconds += old.billed_seconds
        if old.cluster_id is None:  # a cluster's members are billed as their cluster
            self.replaced.append(old.id)
        self.remote = None
        lost = [s for s in ON_POD if self.steps.get(s) and self.steps[s].status == "done"
                and not self.done("collect")]
        self.dataset = None
        for name in lost:
            self.steps[name].status = "outdated"
        self.note(f"the run's pod changed from {old.id} to {record.id}"
                  + (f": {', '.join(sorted(lost))} will run again on the new pod" if lost
                     else ""))

    def record_pod_stopped(self, outcome: str, now: float,
                           boot_bound: float | None = None) -> None:
        """What a stop of the run's pod (cycle.stop, pod.leftovers --stop) leaves in the
        record: PodRecord.record_stop, and a pod found already stopped or gone marks its
        billed time an upper bound (stop_time_unknown)."""
        pod = self.pod
        if outcome in ("already stopped", "gone") and billing_from(pod):
            self.stop_time_unknown = True  # stopped by someone else, some time ago
        pod.record_stop(outcome, now, boot_bound)

    def record_cluster_deleted(self, now: float, outcome: str = "deleted") -> None:
        """What a cluster's delete (cycle.stop, pod.leftovers --stop) leaves in the record:
        the cluster and its primary's billed time closed, both ended at `now`. A cluster
        found gone marks that time an upper bound (stop_time_unknown)."""
        record = self.cluster
        if record is None:
            return
        if outcome == "gone":
            self.stop_time_unknown = True  # deleted earlier (its guard, a teammate)
        record.delete_failed = False
        record.deleted_at = now
        close_billing(record, now)
        pod = self.pod
        if pod is not None and pod.cluster_id == record.id:
            close_billing(pod, now)
            pod.stopped_at = now

    def note(self, text: str) -> None:
        self.events.append({"at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                            "text": text})


# -- the run folder --------------------------------------------------------------------------
class RunFolder:
    def __init__(self, artifacts_dir: Path, run_id: str) -> None:
        self.run_id = validate_run_id(run_id)
        self.path = (artifacts_dir / run_id).resolve()
        self.provision_json = self.path / "provision.json"
        self.reports = self.path / "reports"
        self.observations = self.reports / "observations.md"
        self.loss_curve = self.reports / "loss_curve.png"
        self.collected = self.path / "collected"
        self.run_artifacts = self.collected / "run_artifacts"
        self.local_validation = self.path / "local_validation"
        self.infer_output = self.local_validation / "infer_move_output.txt"
        self.state_path = self.path / "state.json"
        self.known_hosts = self.path / "known_hosts"
        self.lock_path = self.path / ".lock"
        self._state: RunState | None = None  # read on first use (a lock check needs none)
        self._lock = OwnerLock(self.lock_path)
        self.fresh = False  # its folder was made by this process (cycle.open_run)
        # An older version wrote the run as this process first found it (its first read),
        # kept across the reloads of a lock once this version has saved it as its own.
        self.older_version = False

    @property
    def state(self) -> RunState:
        if self._state is None:
            self._state = self._load()
        return self._state

    def exists(self) -> bool:
        """Whether the run has a state.json: one that cannot be read (a folder in its place
        included) is a run that exists and is unreadable, never "no run"."""
        return os.path.lexists(self.state_path)

    def _load(self) -> RunState:
        try:
            state = read_state(self.state_path)
        except FileNotFoundError:
            return RunState(self.run_id)
        self.older_version = self.older_version or getattr(state, "older_version", False)
        return state

    def reload(self) -> None:
        self._state = self._load()

    def save(self) -> None:
        atomic_write(self.state_path, json.dumps(self.state.to_json(), indent=2,
                                                 sort_keys=True))

    # -- one process per run ----------------------------------------------------------------
    def lock(self) -> None:
        """Hold the run for this process, or refuse at once naming the holder."""
        if self._lock.held_here:
            return
        sweep = os.environ.get(DRIVING_SWEEP)
        holder = self._lock.acquire(command=_own_command(),
                                    **({"sweep": sweep} if sweep else {}))
        if holder is not None:
            who = (f"pid {holder['pid']}: {holder['command']}" if "command" in holder
                   else "pid unknown")
            from podcycle.signals import suspended

            paused = suspended(holder.get("pid"))
            if isinstance(holder.get("sweep"), str):  # no terminal to Ctrl-C it in
                from podcycle.redact import printable

                name = printable(holder["sweep"])[:80]
                raise RunBusy(
                    f"run {self.run_id} is in use by another process ({who}), a trial of "
                    f"sweep {name}" + (", suspended (Ctrl-Z or SIGSTOP)" if paused else ""),
                    freeing(holder, paused))
            if paused:
                # Ctrl-Z'd or SIGSTOPped: "wait for it" waited forever, and a Ctrl-C or kill
                # sent to it does nothing until it runs again; its pod bills on meanwhile.
                raise RunBusy(
                    f"run {self.run_id} is held by a suspended process ({who}): it drives "
                    "nothing while suspended, and the run's pod may bill on",
                    freeing(holder, paused))
            raise RunBusy(
                f"run {self.run_id} is in use by another process ({who})",
                freeing(holder, paused) + "; one process at a time drives a run")
        self.reload()  # what the previous holder saved is what counts now

    def is_driven(self) -> bool:
        """Whether a live process (this one included) holds the run's lock."""
        return self._lock.held()

    def holder(self) -> dict[str, Any]:
        """What the lock's live holder recorded (pid, command, sweep), or {}."""
        return self._lock.holder() or {}

    def holder_pid(self) -> int | None:
        """The pid of the live process driving the run, or None."""
        pid = self.holder().get("pid")
        return pid if isinstance(pid, int) else None

    def unlock(self) -> None:
        self._lock.release()


# The environment variable that tells a trial's cycle which sweep started it (the sweep sets
# it): the run's lock records it, so a command refused that run names sweep.stop.
DRIVING_SWEEP = "POD_CYCLE_DRIVING_SWEEP"


class RunBusy(PodCycleError):
    exit_code = 5


def freeing(holder: dict[str, Any], paused: bool | None = None) -> str:
    """How a run's holder lets it go, by what its lock recorded: a sweep's trial has no
    terminal (sweep.stop), a suspended process neither finishes nor hears a Ctrl-C until
    continued, any other finishes or is Ctrl-C'd in its terminal. `paused`: whether the
    holder is suspended, when the caller asked already (a `ps` each time)."""
    from podcycle.signals import how_to_continue, suspended

    if paused is None:
        paused = suspended(holder.get("pid"))
    if isinstance(holder.get("sweep"), str):
        from podcycle.redact import printable

        name = printable(holder["sweep"])[:80]
        return (f"wait for the sweep (inv sweep.status {name}), or stop it with inv "
                f"sweep.stop {name} (each trial stops its pod"
                + ("; a suspended sweep is continued so that it stops)" if paused else ")"))
    if paused:
        return how_to_continue(holder["pid"])
    return ("wait for it to finish, or end it with Ctrl-C there (a full-smoke then stops its "
            "pod; a step task leaves it running for the next step)")


def _own_command() -> str:
    """This process's command line for the lock file, with any --api-key value masked (the
    lock file lives in the run folder)."""
    from podcycle.redact import MASK, redact

    args = [Path(sys.argv[0]).name, *sys.argv[1:]]
    masked = []
    hide_next = False
    for arg in args:
        if hide_next:
            masked.append(MASK)
            hide_next = False
        elif arg in ("--api-key", "-a"):
            masked.append(arg)
            hide_next = True
        elif arg.startswith("--api-key="):
            masked.append("--api-key=" + MASK)
        else:
            masked.append(arg)
    return redact(" ".join(masked))


def driving(artifacts_dir: Path, pod_ids: set[str]) -> list[tuple[str, str, dict[str, Any]]]:
    """(run id, pod id, its lock's holder) of the runs under the artifacts folder that a
    live process drives on one of `pod_ids` (its pod, or a member of its cluster)."""
    found = []
    for run_id, state in list_runs(artifacts_dir):
        if state is None:
            continue
        ours = ([state.pod.id] if state.pod else []) + \
            ([m.pod_id for m in state.cluster.members] if state.cluster else [])
        hit = next((pod_id for pod_id in ours if pod_id in pod_ids), None)
        if hit is None:
            continue
        run = RunFolder(artifacts_dir, run_id)
        if run.is_driven():
            found.append((run_id, hit, run.holder()))
    return found


def list_runs(artifacts_dir: Path) -> list[tuple[str, RunState | None]]:
    """(run id, state or None when unreadable), in the order they were last used (their
    state file's time: a step, a resume), the latest last."""
    runs = []
    # Each folder with a state.json of any kind: glob() would skip one that is a broken link.
    folders = artifacts_dir.iterdir() if artifacts_dir.is_dir() else ()
    paths = sorted((folder / "state.json" for folder in folders
                    if not folder.name.startswith(".")
                    and os.path.lexists(folder / "state.json")), key=_mtime)
    for path in paths:
        try:
            runs.append((path.parent.name, read_state(path)))
        except (OSError, PodCycleError):
            runs.append((path.parent.name, None))  # one broken folder never hides the others
    return runs


def _mtime(path: Path) -> float:
    """When the file last changed; 0 for one removed since it was listed (a run deleted
    while the runs are listed is listed first, as unreadable, never a crash)."""
    try:
        return path.lstat().st_mtime
    except OSError:
        return 0.0


class StateUnreadable(ConfigError):
    """A run's state.json that cannot be read as this version's run state."""


def read_state(path: Path) -> RunState:
    """A run's state.json; StateUnreadable (a ConfigError) naming the file when it is not
    JSON or not a run state of this schema or not a file. OSError (a missing file included)
    as the file system says."""
    if os.path.lexists(path) and not path.is_file():
        raise StateUnreadable(f"{path} is not a file (a folder, a broken link or another special "
                          "file)",
                          "remove it and put the run's state.json back if you have it (the run "
                          "can no longer resume)")
    try:
        data = json.loads(path.read_bytes())
    except (ValueError, RecursionError):  # not JSON, not UTF-8, or nested past the stack
        raise StateUnreadable(f"{path} is not valid JSON",
                              "fix or remove it (the run can no longer resume)") from None
    try:
        return RunState.from_json(data)
    except StateUnreadable:
        raise
    except ConfigError as exc:  # another version's schema
        raise StateUnreadable(exc.message, exc.remedy) from None
    except TypeError as exc:  # ours name the field: no Python type name beside them
        raise StateUnreadable(f"{path} is not a pod-cycle run state (JSON of the wrong shape: "
                              f"{str(exc)[:160]})",
                              "fix or remove it (the run can no longer resume)") from None
    except (AttributeError, KeyError, ValueError) as exc:
        raise StateUnreadable(f"{path} is not a pod-cycle run state (JSON of the wrong shape: "
                          f"{type(exc).__name__}: {str(exc)[:160]})",
                          "fix or remove it (the run can no longer resume)") from None


def known_runs_hint(artifacts_dir: Path, limit: int = 5) -> str:
    # Run ids alone: a folder named `esc\x1b[2Jname` or `bad$(id)name` (no run of ours) was
    # offered as one, to be pasted into a command line.
    runs = [name for name, _ in list_runs(artifacts_dir) if RUN_ID.fullmatch(name)]
    if not runs:
        return f"no runs exist under {artifacts_dir}: start one with inv cycle.start"
    shown = ", ".join(reversed(runs[-limit:]))
    more = f" (and {len(runs) - limit} more)" if len(runs) > limit else ""
    return f"runs here, last used first: {shown}{more}"
