"""The training cycle's steps: start → push-dataset → train → collect → local-validate → stop.

`open_run` finds (or makes) the run folder and takes the run's lock; `Cycle` runs the steps
against it: each step records what it produced and on which pod (`podcycle.runs.RunState`),
and its remote work is a pod-side script of deploy/runpod_cloud_training/ called over the
run's SSH session with its env passed by Fabric. A run on a cluster is a `ClusterCycle`
(`podcycle.cluster_cycle`). `podcycle.driver.full_smoke` drives them all;
`podcycle.validation` checks what a run collected. The same code drives RunPod and the local
RunPod.
"""

from __future__ import annotations

import json
import re
import shlex
import shutil
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import fields, replace
from pathlib import Path
from typing import Any

from podcycle import hosttools, provision, remote, report, sshkeys, validation
from podcycle.backend import Backend, connect
from podcycle.config import Settings, effective_backend, say
from podcycle.dataset import dataset_files, validate, wire_estimate
from podcycle.errors import ConfigError, PodCycleError, StepFailed, StepRefused
from podcycle.pods import StopFailed, start_pod, stop_pod
from podcycle.redact import printable, redact, scrub_pod
from podcycle.runpod.errors import BadRequest, Conflict, Forbidden, NotFound
from podcycle.runpod.models import Pod, PodStatus
from podcycle.runs import (
    NO_BILLING_YET,
    BillingCheck,
    DatasetRecord,
    PodRecord,
    RemotePaths,
    RunFolder,
    RunState,
    SpendGuard,
    TrainSettings,
    TransferRecord,
    atomic_write,
    billing_from,
    billing_started,
    known_runs_hint,
    list_runs,
    nearest_existing,
    new_run_id,
)
from podcycle.validation import verify_manifest

# How long to look for the spend guard's "fired" line once its time is up (the log lags).
GUARD_LOG_SETTLE = 15.0
# Datasets from this size (bytes) get a line on how they travel (compressed JSONL).
LARGE_DATASET = 10_000_000
# How often a killed start's create is looked for by name (await_a_killed_create).
CREATE_POLL_SECONDS = 2.0
# A create that made nothing seen within its wait, sent this recently: said, since RunPod may
# still make it (a wait is a bound on the client, not on RunPod).
LATE_CREATE_NOTE_SECONDS = 600.0
# Exit codes of the pod-side scripts (see their headers).
TRAIN_SMOKE_FAILED = 86
TRAIN_TRAINER_LOST = 87
TRAIN_DISK_FULL = 89
RUN_FOLDER_OF_ANOTHER_RUN = 90  # cycle_train.sh and cycle_manifest.sh (lib.sh check_run_token)
# cycle_train.sh's line when it followed a trainer of this run started with other settings.
OTHER_SETTINGS_LINE = "the trainer running on this pod was started with other settings than " \
    "this train's"
MANIFEST_TRAINER_RUNNING = 3


# Times a train step reconnects to follow its detached trainer after a lost connection.
TRAIN_REATTACH = 3

COLLECT_RESERVE = 1_000_000_000  # bytes a collect leaves free on the host's disk


def _settings_text(settings: TrainSettings | None) -> str:
    """A run's recorded training settings in a line: epochs 12, blocks 1, extra args '...'."""
    if settings is None:
        return "none recorded"
    said = []
    for field in fields(settings):
        value = getattr(settings, field.name)
        if value is not None and value != "":
            shown = repr(value) if isinstance(value, str) else value
            said.append(f"{field.name.replace('_', ' ')} {shown}")
    return ", ".join(said) or "the defaults"


def _size(count: float) -> str:
    """Bytes in the unit that shows them: 1.53 GB, 42.0 MB, 512 bytes (a collect refused
    for want of space said it would bring "0.00 GB" home, and had "0.00 GB" free)."""
    for unit, scale in (("TB", 1e12), ("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if count >= scale:
            return f"{count / scale:.3g} {unit}" if count < 10 * scale else \
                f"{count / scale:.1f} {unit}" if count < 1000 * scale else \
                f"{count / scale:.0f} {unit}"
    return f"{count:.0f} bytes"


def keep_guard(settings: Settings, guard: SpendGuard | None) -> Settings:
    """The settings a run's new pod or cluster is made with: the spend guard the run was
    started with (a --max-minutes or --max-cost given then), unless one is given again. A
    replacement must never bill without the limit its run was given."""
    if guard is None:
        return settings
    minutes, cost = guard.max_minutes, guard.max_cost
    if minutes is None and cost is None:  # recorded before the limits were: its minutes
        minutes = guard.minutes
    kept = {}  # each limit on its own: one given again leaves the other as recorded
    if settings.source("max_minutes") == "default" and minutes is not None:
        kept["max_minutes"] = minutes
    if settings.source("max_cost") == "default" and cost is not None:
        kept["max_cost"] = cost
    return replace(settings, **kept)


class TrainingFailed(StepFailed):
    """The trainer itself failed on the pod (its log is there to collect)."""


class LostConnection(StepFailed):
    """The SSH connection broke during a step; the remote work may go on."""

    def __init__(self, step: str, message: str, remedy: str) -> None:
        self.step = step
        super().__init__(message, remedy)


class ClusterNodeFailed(TrainingFailed):
    """A node of the run's cluster failed or vanished during training; the trainers on the
    other nodes were stopped (gang failure). `primary_alive`: the primary (rank 0, where the
    checkpoints are) can still be reached, to collect from."""

    def __init__(self, message: str, remedy: str, *, primary_alive: bool) -> None:
        self.primary_alive = primary_alive
        super().__init__(message, remedy)


class PodStoppedUnderStep(StepFailed):
    """The run's pod was stopped while a step ran on it (by its spend guard, or by someone
    else): the SSH connection and the trainer ended with it. Nothing runs there any more."""


def check_train_extra_args(text: str | None) -> None:
    """--train-extra-args as chessbot.train reads them on the pod, checked here before
    anything is created: a flag it refuses or a value it crashes on (--lr nan) showed only
    after a pod was made, the dataset pushed and the trainer started."""
    if not text:
        return
    from chessbot.train_args import ArgsError, check_extra

    try:
        check_extra(text)
    except ArgsError as refused:
        raise ConfigError(f"--train-extra-args {text!r}: {refused}",
                          "give chessbot.train's own flags (python -m chessbot.train --help "
                          "lists them), e.g. --train-extra-args \"--lr 1e-3 --blocks 2\"") \
            from None


# What a collect lays out below a run's folder, at its deepest: collected/run_artifacts/
# tensorboard/steps/events.out.tfevents.<time>.<host>.<pid>.<n> (a long host name included).
COLLECTED_DEPTH = 200


def check_path_room(folder: Path) -> None:
    """A run folder whose path leaves no room for what a collect brings home (past the
    system's PATH_MAX): the pod was made and trained, then the collect failed on "File name
    too long" and the model stayed on the pod. Refused before anything is made."""
    import os

    existing = nearest_existing(folder)
    try:
        limit = os.pathconf(existing, "PC_PATH_MAX")
    except (OSError, ValueError):
        limit = 4096
    length = len(os.fsencode(folder.absolute()))
    if length + COLLECTED_DEPTH >= limit:
        raise ConfigError(
            f"the run's folder {str(folder)[:60]}... is {length} bytes long, and what a "
            f"collect brings home lies up to {COLLECTED_DEPTH} bytes deeper, past this "
            f"system's limit of {limit}",
            "set POD_CYCLE_ARTIFACTS_DIR to a shorter path")


def dataset_target(paths: RemotePaths, dataset_dir: Path, sha256: str) -> str:
    """Where a pod keeps a pushed dataset: under its repo, or on its network volume by
    content (every run on the volume shares one copy)."""
    if paths.volume_dir:
        return f"{paths.volume_dir}/pod-cycle/datasets/{dataset_dir.name}-{sha256[:12]}"
    return f"{paths.repo_dir}/data/dataset/{dataset_dir.name}"


# The steps whose results a finished run's outcome speaks for: one of them done again by a
# step task reopens the run (Cycle.step).
REOPENING = ("push-dataset", "train", "collect")


def resume_hint(run_id: str) -> str:
    return f"RUNPOD_CYCLE_RUN_ID={run_id} inv cycle.full-smoke --resume"


# -- which run ------------------------------------------------------------------------------
class OtherBackend(StepRefused, ConfigError):
    """other_backend's refusal raised inside a step: refused input (a ConfigError, exit 2)
    that leaves the step's record as it was (StepRefused)."""


def other_backend(run_id: str, started: str | None, name: str,
                  settings: Settings) -> ConfigError | None:
    """The refusal of driving run `run_id`, started on backend `started`, through backend
    `name` (its pods are not there), or None when they are the same or the run recorded
    none."""
    if started is None or started == name:
        return None
    where = {"runpod": "RunPod", "local": "the local RunPod"}
    why = (" (no RunPod API key was found)" if name == "local" and settings.backend == "auto"
           else "")
    key = "give the key the run used (RUNPOD_API_KEY, the keyring or --api-key)"
    if started != "runpod":
        remedy = "add --backend local (or RUNPOD_BACKEND=local)"
    elif settings.backend == "local":  # asked for by name
        remedy = (f"leave out --backend local (from {settings.source('backend')})"
                  + (": the run's pods are on RunPod" if settings.api_key else f", and {key}"))
    else:
        remedy = key
    return ConfigError(f"run {run_id} was started on {where.get(started, started)}, but this "
                       f"command would use {where.get(name, name)}{why}: its pods are not "
                       "there", remedy)


def open_run(settings: Settings, *, mode: str, announce: Callable[[str], None] = say
             ) -> RunFolder:
    """The run folder, locked for this process.

    mode "start": the given run id (made when it does not exist yet) or a new one;
    "step": an existing run only (steps after start never create a run folder);
    "resume": the given run, or the latest unfinished one when none is given."""
    artifacts = settings.artifacts_dir
    run_id = settings.run_id
    if not run_id and mode == "step":
        raise StepRefused("no run id: this step continues a run started by cycle.start",
                          f"set RUNPOD_CYCLE_RUN_ID (cycle.start printed it); "
                          f"{known_runs_hint(artifacts)}")
    if not run_id and mode == "resume":
        runs = list_runs(artifacts)
        if runs and runs[-1][1] is None:  # it may be the one meant: never guess past it
            raise StepFailed(f"--resume without a run id: the latest run, {runs[-1][0]}, "
                             "cannot be read", "name the run to continue with "
                             "RUNPOD_CYCLE_RUN_ID or -r (inv runs.list shows them all)")
        latest, latest_state = runs[-1] if runs else (None, None)
        pod = latest_state.pod if latest_state is not None else None
        if latest_state is not None and not latest_state.pending() and pod is not None \
                and pod.running_since is not None:  # done, yet its pod bills: it is meant
            raise StepFailed(f"--resume without a run id: the latest run, {latest}, is done "
                             f"but its pod {pod.id} still bills",
                             f"stop it with inv cycle.stop -r {latest}, or name the run to "
                             "continue with RUNPOD_CYCLE_RUN_ID or -r")
        # A run whose every step is done (a step-by-step run has no outcome) is finished.
        unfinished = [name for name, state in runs
                      if state is not None and not state.finished and state.pending()]
        # One a live process drives (another terminal's, a teammate's) is no run to take up:
        # it was picked, and refused with "end it with Ctrl-C there".
        driven = [name for name in unfinished if RunFolder(artifacts, name).is_driven()]
        free = [name for name in unfinished if name not in driven]
        if not free:
            raise StepFailed(f"--resume without a run id, and no unfinished run under "
                             f"{artifacts} that no live process drives"
                             + (f" ({', '.join(driven[-3:])} driven now)" if driven else ""),
                             "run without --resume to start a new run, or name one with "
                             "RUNPOD_CYCLE_RUN_ID")
        run_id = free[-1]
        later = unfinished[unfinished.index(run_id) + 1:]  # each driven: run_id is the last free
        announce(f"--resume: continuing the latest unfinished run {run_id}"
                 + (f" (not {', '.join(later)}: a live process drives it)" if later else ""))
    if not run_id:
        run_id = new_run_id()
        announce(f"run id: {run_id} (set RUNPOD_CYCLE_RUN_ID={run_id} to continue it "
                 "step by step)")
    run = RunFolder(artifacts, run_id)
    if mode != "start" and not run.exists():
        # A run id that names nothing is refused input (exit 2), as runs.show refuses it.
        raise StepRefused(f"no run {run_id!r} under {artifacts}",
                          f"check the run id; {known_runs_hint(artifacts)}")
    if mode == "start":  # refused before the folder is made: none left behind
        check_path_room(run.path)
        remote.check_known_hosts(run.known_hosts)
        remote.control_folder()
    fresh = not run.path.exists()
    try:
        run.lock()
    except OSError:
        if fresh:  # a full disk: no half-made run folder left for runs.list to show
            import shutil

            shutil.rmtree(run.path, ignore_errors=True)
        raise
    run.fresh = fresh
    return run


# -- the steps ------------------------------------------------------------------------------
SessionFactory = Callable[[remote.Endpoint, Path, str, Callable[[str], None]], Any]


class Cycle:
    """The steps of one run on one pod. The run must be locked by this process (`open_run`).
    A run on a cluster (--nodes N) is a `podcycle.cluster_cycle.ClusterCycle`: make either
    with `Cycle.for_run`, which picks by the run's shape."""

    @classmethod
    def for_run(cls, settings: Settings, run: RunFolder, **kwargs: Any) -> Cycle:
        """The Cycle for this run's shape: a ClusterCycle for a run that recorded a cluster,
        or (nothing created and recorded yet) a run started or given --nodes 2 or more; a Cycle
        otherwise (a run that recorded a pod
        given another --nodes is refused by `start`, as a run keeps its shape)."""
        state = run.state
        nodes = (settings.nodes if settings.source("nodes") != "default" or state.nodes is None
                 else state.nodes)
        if state.cluster is not None or (state.pod is None and nodes >= 2):
            from podcycle.cluster_cycle import ClusterCycle

            return ClusterCycle(settings, run, **kwargs)
        return cls(settings, run, **kwargs)

    def __init__(self, settings: Settings, run: RunFolder, *,
                 announce: Callable[[str], None] = say, backend: Backend | None = None,
                 session_factory: SessionFactory = remote.PodSession) -> None:
        self.settings = settings
        self.run = run
        self._stop_sent = False  # this stop's request went out (see stop)
        self._stop_outcome: str | None = None  # what this stop found: stopped, gone, ...
        self._not_ours: set[str] = set()  # pods of the run's name from before it (said once)
        self.say = announce
        self._backend = backend
        self._session_factory = session_factory
        self._session: Any = None
        # How long a new session waits for SSH (None: the session's own minute); a train's
        # reconnect waits as a cluster node's does.
        self._open_timeout: float | None = None
        self._current_step = "start"
        self.begun: list[str] = []  # the steps this process began, in order
        # "steps" for the cycle.* step tasks; full_smoke says "full-smoke" (RunState.driver).
        self.driver = "steps"

    @property
    def state(self) -> RunState:
        return self.run.state  # never a stale copy: the lock reloads what is on disk

    def __enter__(self) -> Cycle:
        return self

    def __exit__(self, kind: object, exc: object, tb: object) -> None:
        self.close()
        try:
            if exc is not None and self.made_nothing():
                shutil.rmtree(self.run.path, ignore_errors=True)
                self.say(f"nothing was created: the new run's folder {self.run.path} is "
                         "removed")
        finally:
            self.run.unlock()

    def made_nothing(self) -> bool:
        """This process made the run's folder and nothing billable: no pod or cluster is
        recorded and no create request was sent (refused input, an unknown GPU or template,
        a rejected key). Such a run's folder is removed when it fails: a refusal leaves no
        `failed` run behind for runs.list or a later --resume to find."""
        state = self.run.state
        client = getattr(self._backend, "client", None)
        return (self.run.fresh and state.pod is None and state.cluster is None
                and getattr(client, "create_requests", 0) == 0)

    # -- plumbing ----------------------------------------------------------------------------
    @property
    def backend(self) -> Backend:
        if self._backend is None:
            self.check_same_backend(effective_backend(self.settings))
            self._backend = connect(self.settings)
        self.check_same_backend(self._backend.name)
        if self.state.backend is None:
            self.state.backend = self._backend.name
            self.run.save()
        return self._backend

    def check_same_backend(self, name: str) -> None:
        """A run's pods live on the backend it started on: on the other one the run's pod is
        not found, and a stop said "gone" (exit 0) while the pod billed on, a resume made a
        second pod. The key given once with --api-key and left out later did that."""
        refused = other_backend(self.run.run_id, self.state.backend, name, self.settings)
        if refused is not None:
            # Nothing was done: the step's record stays as it was. Recorded as the step's
            # failure, a --backend typo on a finished run's collect made it "failed", and
            # local-validate then refused the run's model.
            raise OtherBackend(refused.message, refused.remedy)

    @property
    def client(self):  # noqa: ANN201
        return self.backend.client

    def key(self) -> Path:
        return sshkeys.private_key(self.settings, self.backend.own_ssh_key)

    @property
    def pod_id(self) -> str:
        if self.state.pod is None:
            if self.state.create_sent_at is not None:  # RunPod may have made one after all
                raise StepFailed(f"run {self.run.run_id} recorded no pod: its last create "
                                 "got no answer it recorded (its process killed, or RunPod "
                                 "silent), and may have made one",
                                 f"run inv cycle.start -r {self.run.run_id}: it takes up a pod "
                                 "made for that start, or makes one")
            raise StepFailed(f"run {self.run.run_id} has no pod yet",
                             f"run inv cycle.start -r {self.run.run_id} first")
        return self.state.pod.id

    def session(self) -> Any:
        if self._session is None:
            hosttools.check()  # ssh and rsync, named, before a step needs them
            try:
                pod = self.client.get_pod(self.pod_id)
            except NotFound:
                pod = None
            if pod is None or pod.status is not PodStatus.RUNNING:
                status = "gone" if pod is None else str(pod.status)
                if pod is not None and pod.status.stopped and self.check_guard():
                    raise PodStoppedUnderStep(self.guard_stopped_text(),
                                              self._after_guard_stop())
                if pod is not None and pod.status in (PodStatus.PROVISIONING,
                                                      PodStatus.STARTING):
                    # Booting: "--resume, or cycle.start" beside "run the step again" read
                    # as two ways, and the step again failed the same way while it booted.
                    raise StepFailed(f"the run's pod {self.pod_id} is {status}, not RUNNING "
                                     "yet: it is still booting",
                                     f"wait for it with inv cycle.start -r {self.run.run_id} "
                                     "(it takes up the pod and waits until SSH answers), then "
                                     "run this step again")
                if (pod is None or pod.status.gone) and self.state.network_volume is None \
                        and self.state.done("train") and not self.state.done("collect"):
                    # Terminated, or its cluster deleted (pod.terminate --yes, cluster.delete
                    # --yes): its disk went, with the model trained there. "cycle.start, then
                    # this step again" started a new pod with no model on it (hunt, stop 52).
                    # A network volume's run keeps its model there, which a resume reuses.
                    raise StepFailed(f"the run's pod {self.pod_id} is gone, and the model it "
                                     "trained went with its disk before it was collected",
                                     f"train it again: {resume_hint(self.run.run_id)} (on a "
                                     "new pod)")
                # `inv cycle.start` without the run's id made a new run and a second pod, and
                # --resume of a run whose steps are all done does nothing (hunt, stop 51).
                start = (f"inv cycle.start -r {self.run.run_id} (it starts the pod again, or "
                         "replaces it), then this step again")
                done = self.state.finished or (self.state.outcome is None
                                               and not self.state.pending())
                raise StepFailed(f"the run's pod {self.pod_id} is {status}, not RUNNING",
                                 f"run {start}" if done else
                                 f"continue the run with {resume_hint(self.run.run_id)} (it "
                                 f"starts or replaces the pod), or run {start}")
            self._open_session(pod)
        return self._session

    def _not_running(self, pod_id: str) -> bool:
        """Whether RunPod says pod `pod_id` no longer runs (stopped, gone); False when the
        API cannot tell."""
        try:  # one try: a hung API must not stretch the half-minute wait it shortens
            status = self.client.get_pod(pod_id, retry=False).status
        except NotFound:
            return True
        except PodCycleError:
            return False
        # STARTING, or a status newer than this tool: it may still come up, so wait on.
        return status.stopped or status.gone

    def _open_session(self, pod: Pod) -> None:
        key = self.key()
        endpoint = remote.endpoint_for(pod, self.settings, key)
        self._session = self._session_factory(endpoint, self.run.known_hosts,
                                              self.run.run_id, self.say)
        if self._open_timeout:  # a reconnect: a pod stopped under the step answers "refused"
            self._session.abandon = lambda: self._not_running(pod.id)  # until the API knows
        try:
            # Records the host key (trust on first use) rsync requires.
            self._session.open(**({"timeout": self._open_timeout} if self._open_timeout
                                  else {}))
        except remote.KeyRefused as refused:
            made_for = self.state.pod.ssh_key if self.state.pod else None
            if made_for and Path(made_for) != key and self.state.pod.id == pod.id:
                # "register that key's .pub" sent the user round in a loop: registered, the
                # key is still not one this pod was made with (its keys are its create's).
                refused.remedy = (f"pod {pod.id} was made for the key {made_for}: run the "
                                  f"step with RUNPOD_SSH_KEY={made_for} (a key registered "
                                  "since is let in only by pods made after it)")
            raise

    def close(self) -> None:
        if self._session is not None:
            self._session.close()
            self._session = None

    def paths(self) -> RemotePaths:
        """The run's paths on its current pod (asked once per pod)."""
        if self.state.remote is None or self.state.remote.pod_id != self.pod_id:
            result = self._remote("cycle_paths.sh", {}, hide=True, default_dir=True)
            if result.exited != 0:
                said = printable(result.stderr.strip()[-200:])  # the pod's text, one line
                raise StepFailed("the pod's cycle scripts did not answer (cycle_paths.sh "
                                 f"exit {result.exited}): {said}",
                                 "check the pod runs the pod-cycle image "
                                 "(RUNPOD_TRAINING_DIR holds deploy/runpod_cloud_training)")
            found = dict(line.split("=", 1) for line in result.stdout.splitlines()
                         if "=" in line)
            missing = [k for k in ("repo", "training", "timing_log", "venv") if not found.get(k)]
            if missing:
                raise StepFailed(f"the pod's cycle_paths.sh did not name {', '.join(missing)}",
                                 "the pod runs an older pod-cycle image: rebuild and push it "
                                 "(inv image.build --push), then sync the template")
            repo, training, timing, venv = (found[k] for k in ("repo", "training",
                                                                "timing_log", "venv"))
            volume = found.get("volume", "")
            out = (f"{volume}/pod-cycle/runs/{self.run.run_id}" if volume
                   else f"{repo}/artifacts/runpod_cycles/{self.run.run_id}")
            self.state.remote = RemotePaths(
                pod_id=self.pod_id, repo_dir=repo, training_dir=training, timing_log=timing,
                venv_dir=venv, out=out, volume_dir=volume or None)
            self.run.save()
        return self.state.remote

    def _remote(self, script: str, env: dict[str, str], *, hide: bool = False,
                default_dir: bool = False) -> remote.Result:
        """A pod-side script; a broken connection is reported as such, for this step."""
        step = self._current_step
        try:
            session = self.session()
        except remote.RemoteError:
            # SSH would not open (a reconnect during train): a pod being stopped under the
            # step still says RUNNING for a while, then refuses every connection.
            stopped = self.stopped_under_step(step)
            if stopped is not None:
                raise stopped from None
            raise
        training_dir = None if default_dir else self.paths().training_dir
        try:
            return session.script(script, env, hide=hide, training_dir=training_dir)
        except remote.ConnectionLost as exc:
            # Before SSH is blamed: a pod stopped under the step ends its connection too.
            stopped = self.stopped_under_step(step)
            if stopped is not None:
                raise stopped from None
            raise LostConnection(step, f"lost the SSH connection to pod {self.pod_id} during "
                                 f"{step}: {exc.message}",
                                 self._after_lost_connection(step)) from None

    def _rsync(self, sources: str | list[str], dest: str, **kwargs: Any) -> remote.Transfer:
        """An rsync with the run's pod (push-dataset, collect). A failure is first checked
        against a pod stopped under the step (inv pod.stop in another terminal, its spend
        guard), as _remote does: it was an "rsync failed ... check SSH" error that sent the
        user the wrong way."""
        try:
            return self.session().rsync(sources, dest, **kwargs)
        except remote.TransferStopped:
            raise  # its own guard stopped it, not the pod
        except remote.RemoteError:
            stopped = self.stopped_under_step(self._current_step)
            if stopped is not None:
                raise stopped from None
            raise

    def stopped_under_step(self, step: str) -> PodStoppedUnderStep | None:
        """When the connection dropped or the trainer vanished: was the pod stopped under the
        step? Its spend guard is asked first (its line in the pod's log, waited for a few
        seconds when the guard's time is up or the pod is down, as RunPod's log lags), then
        the pod's status. None: the pod runs on, the trouble was elsewhere."""
        record = self.state.pod
        if record is None:
            return None
        try:
            pod: Pod | None = self.client.get_pod(record.id)
        except NotFound:
            pod = None
        except PodCycleError:
            return None  # the API is unreachable too: nothing more to learn
        down = pod is None or pod.status is not PodStatus.RUNNING
        # A pod found stopped or gone: its bill ended with it, and is recorded so (runs.show
        # said "still running", its cost rising on; after the guard, "no cycle has seen it
        # since" of a step that had). A status this tool does not know is no stop: the
        # record keeps "may bill". Recorded once the guard's firing is known: a stop the
        # guard made bills to its time.
        found = "gone" if pod is None or pod.status.gone else \
            "already stopped" if pod.status.stopped else None
        if record.guard and self.check_guard(settle=GUARD_LOG_SETTLE if down or
                                             self._guard_due() else 0.0):
            self.close()
            if found:
                self.state.record_pod_stopped(found, time.time(), self.settings.ready_timeout)
                self.run.save()
            return PodStoppedUnderStep(f"{self.guard_stopped_text()}, during {step}",
                                       self._after_guard_stop())
        if not down:
            return None
        self.close()
        if found:
            self.state.record_pod_stopped(found, time.time(), self.settings.ready_timeout)
            self.state.note(f"pod {record.id} was {'terminated' if found == 'gone' else 'stopped'}"
                            f" during {step}, not by this run")
            self.run.save()
        if pod is None or pod.status.gone:  # terminated: no log to read, a new pod to make
            volume = self.state.network_volume
            kept = (f"; the run's folder is on network volume {volume.name}, which keeps it"
                    if volume is not None else ", and so did what was on its disk")
            return PodStoppedUnderStep(
                f"pod {record.id} was terminated during {step}, not by this run (it is gone; "
                f"the SSH connection ended with it{kept}): someone terminated it (inv "
                "pod.terminate, the RunPod console)",
                f"continue with {resume_hint(self.run.run_id)} (it makes a new pod and "
                + ("goes on from the volume)" if volume is not None else
                   "does what was lost again)"))
        return PodStoppedUnderStep(
            f"pod {record.id} was stopped during {step}, not by this run (it is now "
            f"{pod.status}; the SSH connection ended with it): someone stopped it (inv "
            "pod.stop, the RunPod console) or its idle watchdog did",
            f"see why with inv pod.logs {record.id}; continue with "
            f"{resume_hint(self.run.run_id)} (it restarts or replaces the pod)")

    def _guard_due(self) -> bool:
        """Whether the spend guard's time may be up by this host's clock (the pod booted
        after it was created, so its deadline is no earlier than this)."""
        record = self.state.pod
        since = (record.created_at or record.running_since) if record else None
        if record is None or not record.guard or since is None:
            return False
        return time.time() >= since + record.guard.minutes * 60

    def guard_stopped_text(self) -> str:
        record = self.state.pod
        guard = record.guard if record else None
        return (f"the spend guard stopped pod {record.id if record else '?'} after "
                f"{guard.minutes if guard else 0:g} minute(s) "
                f"({guard.reason if guard else '?'})")

    def _after_guard_stop(self) -> str:
        guard = self.state.pod.guard if self.state.pod else None
        minutes = guard.minutes if guard else 0.0
        return (f"the pod is stopped, its disk kept; continue with "
                f"{resume_hint(self.run.run_id)} (the restarted pod stops itself again "
                f"{minutes:g} minute(s) after it boots), or give a new run a larger "
                "--max-minutes / --max-cost")

    def _after_lost_connection(self, step: str) -> str:
        if step == "train":
            return ("training may still be running on the pod (it runs detached); run inv "
                    "cycle.train again to follow it to the end (it attaches, never starts a "
                    f"second trainer), or {resume_hint(self.run.run_id)}")
        return (f"check the pod (inv pod.status {self.pod_id}), then run inv cycle.{step} "
                f"again, or {resume_hint(self.run.run_id)}")

    @contextmanager
    def step(self, name: str) -> Iterator[None]:
        started = time.monotonic()
        self.say(f"==> {name} (run {self.run.run_id})")
        self._current_step = name
        self.begun.append(name)
        before = self.state.steps.get(name), self.state.driver
        self.state.driver = self.driver
        self.state.begin(name)
        self.run.save()
        try:
            yield
        except StepRefused:  # nothing was done: the step's record is what it was
            record, self.state.driver = before
            if record is None:
                del self.state.steps[name]
            else:
                self.state.steps[name] = record
            self.begun.pop()
            self.run.save()
            raise
        except BaseException as exc:
            status = "interrupted" if isinstance(exc, KeyboardInterrupt) else "failed"
            self.state.end(name, status, round(time.monotonic() - started, 3),
                           str(getattr(exc, "message", exc))[:500])
            if getattr(exc, "model_trained", False):
                self.state.steps[name].model_trained = True
            self.run.save()
            report.write(self.run)
            raise
        self.state.end(name, "done", round(time.monotonic() - started, 3))
        if self.driver == "steps" and name in REOPENING and self.state.outcome is not None:
            # A run a full-smoke ended, pushed to, trained or collected again by a step task:
            # its old outcome kept it "finished", so pod.leftovers --stop took its pod as
            # nobody's before the new model was collected (hunt, stop 51). It is a
            # step-by-step run from here. A local-validate (--strength-games on a finished
            # run), a start, a stop or a step that fails changes none of its results.
            self.state.note(f"reopened step by step ({name}); it had ended: "
                            f"{self.state.outcome}")
            self.state.outcome = None
        self.run.save()
        report.write(self.run)

    # -- start -------------------------------------------------------------------------------
    def start(self) -> Pod:
        """Reconcile the run's pod: reuse a live one, start a stopped one, provision one only
        when none exists (never two for one run: the caller holds the run's lock)."""
        self.settle_shape()
        with self.step("start"):
            self._warn_leftovers()
            pod = self._existing_pod()
            if pod is None:
                pod = self._provision()  # recorded billing from its create (it boots)
            elif pod.status.stopped:
                self._warn_given_placement(pod)
                self._check_given_guard(f"pod {pod.id}", pod.cost_per_hour, starting=True)
                self.say(f"run {self.run.run_id} already has pod {pod.id} ({pod.status}): "
                         "starting it again instead of creating another")
                self.check_guard()  # stopped by its spend guard? the report will say so
                if billing_from(self.state.pod) is not None:
                    # Stopped without this run seeing it (its spend guard or idle watchdog,
                    # after a host killed while it booted): that billed interval ends first,
                    # its end unknown, or its boot and stopped time would count as billed.
                    self.state.record_pod_stopped("already stopped", time.time(),
                                                  self.settings.ready_timeout)
                # Stopped no more from here on (it bills while it boots): a host killed
                # before it answers leaves a record that a sweep's park or leftovers stop.
                stopped_at, self.state.pod.stopped_at = self.state.pod.stopped_at, None
                billing_started(self.state.pod, time.time())
                if self.state.pod.guard is not None and self.state.pod.guard.fired:
                    # The new boot's guard has not fired: a later stop (a teammate's) was
                    # blamed on it, and its own firing went unseen behind the first one's.
                    self.state.pod.guard.fired = None
                self.run.save()
                try:
                    start_pod(self.client, pod.id)
                except (BadRequest, Conflict, Forbidden, NotFound):
                    # RunPod answered no (no free GPU on the pod's host): nothing started.
                    # Anything else (Ctrl-C, a lost answer, a 5xx) may have reached it: the
                    # record keeps saying the pod may bill.
                    self._still_stopped(pod.id, stopped_at)
                    raise
                self.run.known_hosts.unlink(missing_ok=True)  # a new container, new host key
                self.state.note(f"restarted pod {pod.id}")
            else:
                self.say(f"run {self.run.run_id} already has pod {pod.id} ({pod.status})")
                self._warn_given_placement(pod)
                self._check_given_guard(f"pod {pod.id}", pod.cost_per_hour, starting=False)
                billing_started(self.state.pod, time.time())  # from now at least, if unknown
                self.run.save()
            pod = provision.wait_ready(self.client, pod.id,
                                       timeout=self.settings.ready_timeout, progress=self.say)
            if self.state.pod.running_since is None:
                self.state.pod.running_since = time.time()
                self.state.pod.stopped_at = None
            self.run.save()
            self.close()
            self._open_session(pod)
            self.paths()
            self.say(f"pod {pod.id} answers SSH at {self._session.endpoint.label()}")
            return pod

    def _still_stopped(self, pod_id: str, stopped_at: float | None) -> None:
        """A start RunPod refused (no free GPU on the pod's host): a pod it still shows
        stopped gets its stop time back (asked once; unknown stays 'may bill')."""
        try:
            stopped = self.client.get_pod(pod_id, retry=False).status.stopped
        except Exception:  # noqa: BLE001 - the start's own error is what matters here
            return
        if stopped and self.state.pod is not None:
            self.state.pod.stopped_at = stopped_at
            self.state.pod.billing_since = None  # it never started: nothing billed
            self.run.save()

    def _warn_given_placement(self, pod: Pod) -> None:
        """-g, --gpu-count, -c or -t given to a run whose pod exists, and not what the pod was
        made with: they choose where a pod is made, so they cannot apply to it. They were
        ignored in silence (exit 0), and the operator believed the run trained on the GPU
        asked for. Said, never refused: a --resume repeats the first command's flags."""
        def given(name: str) -> str | None:
            source, value = self.settings.source(name), getattr(self.settings, name)
            return None if source == "default" or value in (None, "") else source

        record = self.state.pod
        # What the pod has: RunPod's answer, else the run's record (a stopped pod's answer
        # may lack its GPU). -g and -t are matched as the create matched them: any case, and
        # -g by the catalog's display name too ("H100 80GB HBM3" is NVIDIA H100 80GB HBM3).
        gpu_id = pod.gpu_id or (record.gpu_id if record is not None else None)
        count = pod.gpu_count or (record.gpu_count if record is not None else None)
        asked = []
        wanted_gpu = str(self.settings.gpu_type_id or "").strip().lower()
        if given("gpu_type_id") and gpu_id and wanted_gpu not in gpu_id.lower():
            asked.append(f"{given('gpu_type_id')} {self.settings.gpu_type_id!r}")
        if given("gpu_count") and count and self.settings.gpu_count != count:
            asked.append(f"{given('gpu_count')} {self.settings.gpu_count}")
        cloud = str(self.settings.cloud or "").lower()
        if given("cloud") and pod.cloud and cloud not in ("all", str(pod.cloud).lower()):
            asked.append(f"{given('cloud')} {self.settings.cloud}")
        made_from = record.template if record is not None else None
        if given("template_name") and made_from and \
                str(self.settings.template_name).lower() != made_from.lower():
            asked.append(f"{given('template_name')} {self.settings.template_name!r}")
        if not asked:
            return
        made = (f"{count or 1}x {gpu_id or 'its GPU'}, {str(pod.cloud).lower()} cloud"
                + (f", template {made_from!r}" if made_from else ""))
        self.say(f"warning: run {self.run.run_id}'s pod {pod.id} was made with {made}: "
                 f"{', '.join(asked)} choose where a new pod is made and do not apply to it "
                 f"(inv pod.terminate {pod.id} --yes, then the same command, makes one with "
                 "them; its disk goes, and the steps on it run again)")

    def _check_given_guard(self, thing: str, price: float | None, *, starting: bool
                           ) -> None:
        """A --max-minutes or --max-cost given to a run whose pod exists: a pod's spend guard
        is set when it is made, so one that differs from the pod's cannot apply to it. A
        stopped pod is not started under a limit it does not keep (refused before it bills);
        a running one is said to be running under its own."""
        given = [self.settings.source(name) for name in ("max_minutes", "max_cost")
                 if self.settings.source(name) != "default"]  # "--max-cost", an env var...
        record = self.state.pod
        if not given or record is None:
            return
        wanted = provision.spend_guard(self.settings.max_minutes, self.settings.max_cost,
                                       record.price_per_hour or price or None)
        has = record.guard
        if wanted is None or (has is not None and has.minutes == wanted.minutes):
            return
        keeps = (f"the spend guard it was made with ({has.minutes:g} min after boot, "
                 f"{has.reason})" if has else "no spend guard (it was made without one)")
        what = (f"{thing} keeps {keeps}: a limit is set when the pod is made, so "
                f"{' and '.join(given)} cannot apply to it")
        if starting:
            raise StepRefused(
                f"run {self.run.run_id}'s {what}; it was not started",
                f"leave out {' and '.join(given)} to start it as it is, or make the run a new "
                f"pod with the limit: inv pod.terminate {thing.split()[-1]} --yes (its disk "
                "goes; the steps on it run again), then the same command")
        self.say(f"warning: {what}; it bills until it is stopped (inv cycle.stop -r "
                 f"{self.run.run_id})")

    def _warn_leftovers(self) -> None:
        """One line when pods of other runs bill with nobody driving them (this run holds
        its own lock, so its pod is never among them)."""
        from podcycle import leftovers

        try:
            found = leftovers.survey(self.client, self.settings)
            found_clusters = leftovers.survey_clusters(self.client, self.settings)
        except PodCycleError:
            return  # a warning must never stop the cycle
        left = [item for item in found if not item.open_run]
        waiting = [item for item in found if item.open_run]
        if left:
            self.say(leftovers.warning(left))
        if waiting:
            self.say(leftovers.open_runs_note(waiting))
        left_clusters = [item for item in found_clusters if not item.open_run
                         and item.run_id != self.run.run_id]
        if left_clusters:
            self.say(leftovers.cluster_warning(left_clusters))

    def _existing_pod(self) -> Pod | None:
        if self.state.pod is not None:
            try:
                pod = self.client.get_pod(self.state.pod.id)
                if not pod.status.gone:
                    return pod
            except NotFound:
                pass
            self.say(f"the run's pod {self.state.pod.id} no longer exists: provisioning a new "
                     "one")
            self.state.note(f"pod {self.state.pod.id} no longer exists")
        # A create that died half-way (or another terminal) may have made the pod already.
        named = self.await_a_killed_create("pod", self.live_pods_of_the_run)
        if named:
            pod = named[0]
            if self.state.pod is None or self.state.pod.id != pod.id:
                self._record_pod(pod, price=pod.cost_per_hour or None)
            return pod
        return None

    def _record_pod(self, pod: Pod, *, price: float | None, template: str | None = None,
                    created: bool = False) -> None:
        """The run's pod, recorded; `created`: by this run just now, so it bills from here
        (saved with the create, so that a Ctrl-C held through it leaves the bill open)."""
        now = time.time()
        if self.state.pod is None or self.state.pod.id != pod.id:
            # Another pod, another host key: one behind the same address as the run's last
            # (a gateway, an address given out again) was refused as an interception.
            self.run.known_hosts.unlink(missing_ok=True)
        self.state.set_pod(PodRecord(id=pod.id, name=pod.name, gpu_id=pod.gpu_id,
                                     gpu_count=pod.gpu_count, cloud=pod.cloud,
                                     template=template, price_per_hour=price,
                                     created_at=now, billing_since=now if created else None))
        self.state.create_sent_at = None  # what an outstanding create made is recorded
        self.run.save()

    def pod_name(self) -> str:
        """The run's pod (and cluster) name. Unique per run: it is how a pod whose create
        call died half-way is found again. The name recorded at the run's first start wins
        (`settle_shape`): a resume under another RUNPOD_POD_NAME looked for the pod under a
        name it never had, and made a second one while the first billed on."""
        return self.state.pod_name or self.named_now()

    def named_now(self) -> str:
        """The name the settings give the run's pods."""
        return f"{self.settings.pod_name or 'pod-cycle'}-{self.run.run_id}"

    def _provision(self) -> Pod:
        settings = self.settings
        if not settings.network_volume and self.state.network_volume:
            # A pod replacing a lost one mounts the run's volume: its data is there.
            settings = replace(settings, network_volume=self.state.network_volume.id)
        old = self.state.pod
        if old is not None:  # a pod replacing a lost one: the run's GPUs and spend guard
            if settings.source("gpu_count") == "default" and old.gpu_count:
                settings = replace(settings, gpu_count=old.gpu_count)
            settings = keep_guard(settings, old.guard)
        from podcycle import volumes

        key = self.key()

        def record(made: provision.Provisioned) -> None:
            self._record_pod(made.pod, price=made.offer.price_per_hour if made.offer
                             else made.pod.cost_per_hour or None,
                             template=made.template["name"], created=True)
            self.state.pod.ssh_key = str(key)
            if made.volume:
                self.state.network_volume = volumes.record(made.volume)
            if made.guard:
                self.state.pod.guard = made.guard
            self.run.save()

        # Recorded with its create, SIGINT/SIGTERM held between the two: the run's finally
        # then stops the pod an interruption would otherwise leave unknown.
        try:
            made = provision.provision_pod(self.backend, settings, name=self.pod_name(),
                                           env={"POD_CYCLE_RUN": self.run_token()},
                                           key_path=key, record=record,
                                           sending=self.create_sending,
                                           refused=self.create_settled)
        except BaseException as exc:
            self.create_failed(exc)
            raise
        pod = made.pod
        if made.volume:
            self.say(f"pod {pod.id} mounts network volume {made.volume['name']} "
                     f"({made.volume['id']}) at {volumes.VOLUME_PATH}: the dataset and the "
                     "checkpoints live there; "
                     + volumes.PINNED.format(dc=made.volume["dataCenter"]))
        if made.guard:
            self.say(f"spend guard: the pod stops itself {made.guard.minutes:g} minute(s) "
                     f"after it boots ({made.guard.reason}), even if this machine dies")
        atomic_write(self.run.provision_json,
                     redact(json.dumps(scrub_pod(made.record(self.backend)), indent=2)))
        self.say(f"created pod {pod.id} ({pod.name}): {pod.gpu_label}, {made.cloud} cloud"
                 + (f", ${made.offer.price_per_hour:.2f}/h" if made.offer else ""))
        return pod

    # -- the run's shape (a cluster: podcycle.cluster_cycle) --------------------------------
    @property
    def nodes(self) -> int:
        """The run's node count: --nodes when given, else what the run recorded (1: a pod),
        else the shape its first start saved. A run keeps its shape: --nodes that differs
        from a recorded pod or cluster is refused (from a saved shape only: `settle_shape`)."""
        explicit = self.settings.source("nodes") != "default"
        recorded = (self.state.cluster.pod_count if self.state.cluster
                    else 1 if self.state.pod else None)
        if not explicit and recorded is None:
            return self.state.nodes or 1
        if explicit and recorded is not None and recorded != self.settings.nodes:
            from podcycle.config import undo

            origin = self.settings.source("nodes")
            given = f"--nodes {self.settings.nodes}" if origin == "--nodes" else \
                f"{self.settings.nodes} nodes (from {origin})"
            raise StepRefused(
                f"{given}: run {self.run.run_id} runs on "
                + (f"a cluster of {recorded} nodes" if recorded > 1 else "one pod")
                + "; a run keeps its shape",
                undo(origin, "--nodes") + " to continue it, or start a new run (a new "
                "RUNPOD_CYCLE_RUN_ID) with another --nodes")
        return self.settings.nodes if explicit else (recorded or 1)

    @property
    def on_cluster(self) -> bool:
        return self.nodes >= 2

    def check_shape(self) -> None:
        """Before a start: --nodes that differs from the run's recorded shape is refused
        (`nodes`); a run on a cluster driven by a Cycle, or on one pod by a ClusterCycle, is
        a caller's bug (make it with `Cycle.for_run`)."""
        from podcycle.cluster_cycle import ClusterCycle

        if self.on_cluster != isinstance(self, ClusterCycle):
            raise RuntimeError(f"run {self.run.run_id} is for {self.nodes} node(s): make its "
                               f"Cycle with Cycle.for_run, not {type(self).__name__}")

    def settle_shape(self) -> None:
        """A start's first act: this machine's ssh and rsync, the run folder (for ssh) and
        the shape (`check_shape`) checked, then the shape saved in the run's state before
        anything is created, so that a create whose record is lost (its answer, a killed
        process) is resumed in the same shape, --nodes given or not."""
        from podcycle import clusters

        hosttools.check()
        remote.check_known_hosts(self.run.known_hosts)
        remote.control_folder()
        self.check_shape()
        recorded = self.state.pod or self.state.cluster or self.state.nodes
        clusters.check_settings(self.settings, self.nodes,  # against the run's own shape
                                self.run.run_id if recorded else None)
        if self.state.nodes not in (None, self.nodes) and self.state.pod is None \
                and self.state.cluster is None:
            # Another --nodes for a run whose start made nothing it recorded: fine when RunPod
            # refused that create, not when it made something after all (an answer lost).
            made = self._made_under_the_run_name()
            if made:
                raise StepRefused(
                    f"--nodes {self.nodes}: run {self.run.run_id} was started on "
                    + (f"a cluster of {self.state.nodes} nodes" if self.state.nodes > 1
                       else "one pod")
                    + f", and RunPod has {made} of its name; a run keeps its shape",
                    "leave out --nodes to continue it on that, or start a new run (a new "
                    "RUNPOD_CYCLE_RUN_ID) with another --nodes")
        self._settle_name()
        if self.state.nodes != self.nodes:
            self.state.nodes = self.nodes
            self.run.save()

    def _settle_name(self) -> None:
        """The run's pod name, saved with its shape before anything is created (a state from
        before it was kept: the name its pod or cluster has, else the settings'). Another
        RUNPOD_POD_NAME given later applies to new runs, and is said so."""
        if self.state.pod_name is None:
            made = self.state.cluster or self.state.pod
            self.state.pod_name = made.name if made is not None and made.name \
                else self.named_now()
            self.run.save()
        elif self.settings.source("pod_name") != "default" \
                and self.named_now() != self.state.pod_name:
            self.say(f"note: run {self.run.run_id}'s pods are named {self.state.pod_name} "
                     f"(from its first start); {self.settings.source('pod_name')} "
                     f"({printable(self.settings.pod_name)}) names the pods of new runs")

    def _made_under_the_run_name(self) -> str | None:
        """A cluster or live pod of the run's name on RunPod, said in words, or None."""
        clusters, pods = self.clusters_of_the_run(), self.live_pods_of_the_run()
        return (f"cluster {clusters[0].id}" if clusters else f"pod {pods[0].id}" if pods
                else None)

    def create_sending(self) -> None:
        """A create request is about to go out: recorded first (RunState.create_sent_at),
        so that if this process is killed before its answer is recorded, the next start or
        stop looks for what it made."""
        self.state.create_sent_at = time.time()
        self.run.save()

    def create_failed(self, exc: BaseException) -> None:
        """A create that raised `exc`: settled when RunPod refused it or it was never sent.
        One given up on (no answer, a gateway's, nothing of its name found yet) stays
        outstanding (ApiError.may_have_made), as a killed process's does: settled here, the
        next start made a second pod when the first landed a minute later, and cycle.stop,
        which the error itself offered, stopped only the second."""
        if isinstance(exc, PodCycleError) and not getattr(exc, "may_have_made", False):
            self.create_settled()

    def create_settled(self) -> None:
        """What the outstanding create made is recorded, or RunPod refused it."""
        if self.state.create_sent_at is not None:
            self.state.create_sent_at = None
            self.run.save()

    def await_a_killed_create(self, kind: str, find: Callable[[], list[Any]], *,
                              then: str = "before another is made") -> list[Any]:
        """What `find` finds of the run's name; and, when nothing is there yet while a create
        of a killed process is outstanding (RunState.create_sent_at), what it finds until
        that create must have been answered: the client's own create timeout and look-up
        time from when it was sent. RunPod goes on making a pod or cluster after the process
        that asked is gone: a --resume at once found nothing and made a second one, both
        billing. `kind`: pod, cluster; `then`: what waits, in words."""
        found = find()
        sent = self.state.create_sent_at
        if found or sent is None:
            return found
        client = self.client
        until = sent + getattr(client, "create_timeout", 60.0) + \
            getattr(client, "create_settle", 30.0)
        if until > time.time():
            self.say(f"run {self.run.run_id}'s last create was sent {time.time() - sent:.0f}s "
                     f"ago and no {kind} it made was recorded (its process killed, or "
                     f"its answer lost): RunPod may "
                     f"still be making it, so it is looked for by name for up to "
                     f"{until - time.time():.0f}s {then}")
        while not found and time.time() < until:
            time.sleep(min(CREATE_POLL_SECONDS, max(0.0, until - time.time())))
            found = find()
        if found:
            self.say(f"found {kind} {found[0].id}, made for that create: taking it up")
        else:
            if time.time() - sent < LATE_CREATE_NOTE_SECONDS:
                # RunPod took 150 s to make a pod the client gave up on at 90: the next start
                # made another, and the first billed after the run ended, unsaid.
                self.say(f"note: run {self.run.run_id}'s last create, sent "
                         f"{time.time() - sent:.0f}s ago, made no {kind} that RunPod shows; "
                         f"should one appear later, inv pod.leftovers lists it and inv "
                         f"cycle.stop -r {self.run.run_id} stops it")
            self.create_settled()  # answered by now, with nothing: no create is outstanding
        return found

    def live_pods_of_the_run(self) -> list[Pod]:
        """Pods of the run's name that are not gone: how one whose create was never recorded
        (its answer lost, its process killed) is found again. One made before the run began
        is another checkout's run of the same id (two folders, one account): it was adopted,
        trained on and stopped under that run. It is named once and left alone."""
        return [pod for pod in self.client.find_pods_by_name(self.pod_name())
                if not pod.status.gone and self._of_this_run("pod", pod)]

    def _of_this_run(self, kind: str, found: Any) -> bool:
        """Whether a pod or cluster of the run's name is this run's to take up: made since
        the run began. One made before is another folder's run of the same id, named once
        (`kind`: pod, cluster) and left alone."""
        made_for = getattr(found, "cycle_run", None)
        if made_for is not None:
            # Made by a cycle of this version or later: its env names the run it was made
            # for. Another folder's run of the same id, started since this one (a teammate's
            # -r exp2), had its training pod taken up by this run's --resume, and stopped.
            if made_for == self.run_token():
                return True
            why = "was made for another run of that id (another folder's?)"
        elif self._made_since_the_run_began(found.created_at, unknown=True):
            return True
        else:
            why = "predates it (another folder's run of that id?)"
        if found.id not in self._not_ours:
            self._not_ours.add(found.id)
            self.say(f"note: {kind} {found.id} has run {self.run.run_id}'s name but {why}, "
                     "so it is left alone")
        return False

    def clusters_of_the_run(self) -> list[Any]:
        """Clusters of the run's name (a cluster is named like the run's pod)."""
        return [c for c in self.client.list_clusters() if c.name == self.pod_name()]

    # -- push-dataset ------------------------------------------------------------------------
    def push_dataset(self, dataset_dir: Path | None = None) -> dict[str, Any]:
        note = self.standing_dataset_note(dataset_dir)
        if note:
            self.say(note)
        dataset_dir = self.run_dataset(dataset_dir).resolve()
        summary = validate(dataset_dir)  # again: the files may have changed since start
        files, skipped = dataset_files(dataset_dir)
        with self.step("push-dataset"):
            paths = self.paths()
            target = dataset_target(paths, dataset_dir, str(summary["sha256"]))
            if skipped:
                self.say(f"not pushed (only {' and '.join(files)} make the dataset): "
                         f"{', '.join(skipped)}")
            size = sum((dataset_dir / f).stat().st_size for f in files)
            if size >= LARGE_DATASET:
                wire = wire_estimate(dataset_dir, files)
                alternative = (f"; as encoded files it would be about "
                               f"{wire['encoded_compressed'] / 1e6:.1f} MB"
                               if wire["encoded_compressed"] else "")
                self.say(f"pushing {size / 1e6:.1f} MB of JSONL compressed (zstd): about "
                         f"{wire['jsonl_compressed'] / 1e6:.1f} MB on the wire{alternative}; "
                         "the pod encodes it on all its cores")
            # --copy-links: a symlinked split is sent as its content, never as a link that
            # would dangle on the pod. --compress: rsync negotiates zstd with a current rsync.
            moved = self._rsync([str(dataset_dir / f) for f in files], f":{target}/",
                                extra=["--mkpath", "--copy-links", "--compress"],
                                progress=lambda line: self.say(f"pushing: {line}"))
            self.state.dataset = DatasetRecord(
                pod_id=self.pod_id, local=str(dataset_dir), remote=target, bytes=size,
                sha256=str(summary["sha256"]), train=int(summary["train"]),
                val=int(summary["val"]), files=list(files))
            self.state.transfers.append(TransferRecord("push-dataset", moved.sent,
                                                       moved.received, round(moved.seconds, 3),
                                                       dataset_bytes=size))
            self.run.save()
            self._push_to_other_nodes(dataset_dir, files, target, str(summary["sha256"]), size)
            self.say(f"pushed {dataset_dir} → pod:{target} ({summary['train']} train / "
                     f"{summary['val']} val positions, {size} bytes of dataset, {moved.sent} "
                     f"bytes sent compressed in {moved.seconds:.1f}s, "
                     f"{size / max(moved.seconds, 1e-3) / 1e6:.1f} MB/s of dataset)")
            return summary

    def _push_to_other_nodes(self, dataset_dir: Path, files: list[str], primary_target: str,
                             sha256: str, size: int) -> None:
        """A cluster's other nodes get the dataset here (ClusterCycle); one pod has none."""

    # -- train -------------------------------------------------------------------------------
    def train_env(self, extra_args: str | None, *, reuse_finished: bool) -> dict[str, str]:
        paths = self.paths()
        dataset = self.state.dataset
        env = dict(self.backend.training_env)
        env.update({"RUN_OUT": paths.out, "RUN_TOKEN": self.run_token(),
                    "DATASET_DIR": dataset.remote, "DATASET_SHA256": dataset.sha256,
                    "RUNPOD_PHASE_TIMING_LOG": paths.timing_log,
                    "REUSE_FINISHED": "1" if reuse_finished else "0"})
        if self.settings.train_epochs:
            env["EPOCHS"] = str(self.settings.train_epochs)
        if self.settings.train_batch_size:
            env["BATCH_SIZE"] = str(self.settings.train_batch_size)
        if self.settings.train_blocks:
            env["MODEL_BLOCKS"] = str(self.settings.train_blocks)
        if self.settings.train_channels:
            env["MODEL_CHANNELS"] = str(self.settings.train_channels)
        if extra_args:
            env["TRAIN_EXTRA_ARGS"] = extra_args
        if paths.volume_dir and reuse_finished:
            # The run's checkpoints are on the volume: a pod that replaced a lost one goes on
            # from the last epoch saved instead of epoch 0. (On the pod's own disk,
            # cycle_train.sh resumes a lost training itself: an image whose trainer cannot
            # tell another training's checkpoint is not asked to.)
            env["TRAIN_RESUME"] = "auto"
        return env

    def run_token(self) -> str:
        """This run, told from an earlier one of the same id: its id and when its run folder
        was made. The pod's run folder records the first it was trained for, so a folder an
        earlier run left on a network volume is never taken for this run's."""
        return f"{self.run.run_id}@{self.state.created_at:.6f}"

    def other_runs_folder(self, step: str, paths: RemotePaths | None = None) -> StepFailed:
        """The pod's run folder (a cluster node's: `paths`) was made by an earlier run of
        this id (exit 90)."""
        paths = paths or self.paths()
        where = ("on the network volume" if paths.volume_dir else "on the pod")
        return StepFailed(
            f"the run's folder {where}, {paths.out}, was made by an earlier run of the same "
            f"id ({self.run.run_id}): its checkpoint and model are not this run's, so {step} "
            "does not use it",
            "start this run again under another id (RUNPOD_CYCLE_RUN_ID), or, if that "
            f"earlier run is done with, remove its folder (inv pod.ssh {paths.pod_id}, then "
            f"rm -rf {shlex.quote(paths.out)}) and run {step} again")

    def train(self, extra_args: str | None = None) -> None:
        check_train_extra_args(extra_args)
        push = self.state.step("push-dataset").status
        if self.state.dataset is None or not self.state.done("push-dataset"):
            # A later push cut short left the earlier one's record: "no dataset was pushed"
            # while runs.show listed that push.
            why = {"running": "the run's last push-dataset was cut short (its process ended "
                              "mid-way)",
                   "failed": "the run's last push-dataset failed",
                   "interrupted": "the run's last push-dataset was interrupted",
                   "outdated": "the run's pod changed since its dataset was pushed"}
            raise StepFailed(why.get(push, "no dataset was pushed to this run's pod"),
                             f"run inv cycle.push-dataset -r {self.run.run_id} first")
        # A training the host never saw end (host killed, connection lost) may have finished
        # on the pod: keep it then. A training recorded as done is redone on request.
        reuse = self.state.step("train").status != "done"
        tried = self.state.step("train").status in ("failed", "interrupted", "outdated")
        recorded = self.state.train_settings
        extra_args = self.keep_train_settings(extra_args)
        with self.step("train"):
            if self._train(extra_args, reuse=reuse, tried=tried):
                # It followed the run's earlier trainer, started with other settings, to its
                # end: the model is that training's, and so are the run's settings.
                asked = self.state.train_settings
                if recorded is None:
                    # Started by a train whose settings the run never recorded (an older
                    # version's): "other settings (none recorded) than this train's" claimed
                    # a difference nobody can know, and sent the user to train again.
                    self.state.train_settings = None
                    self.state.note("train: followed the trainer already running on the pod, "
                                    "whose settings the run did not record; its model is "
                                    "that training's")
                    self.say(f"train: the trainer already running on {self.trains_on()} was "
                             "started by a train whose settings this run did not record (an "
                             "older version's), and may differ from this train's "
                             f"({_settings_text(asked)}): followed it to its end, so the "
                             "model is that training's")
                    return
                self.state.train_settings = recorded
                before, now = _settings_text(recorded), _settings_text(asked)
                what = (f"other settings ({before}) than this train's ({now})" if before != now
                        else "another dataset, learning rate, device or number of trainers "
                        "than this train's")
                self.state.note("train: followed the trainer already running on the pod, "
                                "started with other settings; its model is that training's")
                self.say(f"train: the trainer already running on {self.trains_on()} was "
                         f"started with {what}: followed it to its end, so the model is that "
                         "training's; the run keeps its settings. Train again with the flags "
                         "for a model of the new ones")

    def trains_on(self) -> str:
        """Where the run trains, in words (a cluster: ClusterCycle)."""
        return f"pod {self.pod_id}"

    TRAIN_FIELDS = {"epochs": "train_epochs", "batch_size": "train_batch_size",
                    "blocks": "train_blocks", "channels": "train_channels"}

    def keep_train_settings(self, extra_args: str | None) -> str | None:
        """The training's settings: those given now, else those the run's first train
        recorded (a later train or a --resume trains as the run was started), recorded for
        the next. Returns the extra trainer arguments to use."""
        recorded = self.state.train_settings
        kept, standing = [], []
        if recorded is not None:
            changes = {}
            for name, setting in self.TRAIN_FIELDS.items():
                value, now = getattr(recorded, name), getattr(self.settings, setting)
                source = self.settings.source(setting)
                if value is None or now == value:
                    continue
                if source == "default":
                    changes[setting] = value
                    kept.append(f"{name} {value}")
                elif not source.startswith("-"):
                    # A standing setting (the environment, .env, a config file) beats the
                    # run's record, as it always has: said, since a resume after the run's
                    # flags trained with it in silence.
                    standing.append(f"{name} {now} from {source}, not the run's {value}")
            self.settings = replace(self.settings, **changes)
            if extra_args is None and recorded.extra_args:
                extra_args = recorded.extra_args
                kept.append(f"extra args {extra_args!r}")
        if kept:
            self.say(f"train: as the run was started: {', '.join(kept)} (given again, a flag "
                     "wins)")
        if standing:
            self.say(f"train: {'; '.join(standing)} (give the run's as a flag to train as it "
                     "was started)")
        self.state.train_settings = TrainSettings(
            **{name: getattr(self.settings, setting)
               for name, setting in self.TRAIN_FIELDS.items()}, extra_args=extra_args)
        self.run.save()
        return extra_args

    def standing_dataset_note(self, dataset_dir: Path | None) -> str | None:
        """The line saying a standing setting (RUNPOD_DATASET_DIR in the environment, .env or
        a config file) sends another dataset than the run's own, when no -d was given: it
        wins, as it always has, and a resume after the run's -d pushed it in silence."""
        source = self.settings.source("dataset_dir")
        own = self.own_dataset()
        if dataset_dir is not None or source == "default" or source.startswith("-") \
                or not own:
            return None
        standing = Path(self.settings.dataset_dir).expanduser().resolve()
        if standing == Path(own).resolve():
            return None
        return (f"dataset: {standing} from {source}, not the run's own {own} (-d "
                f"{shlex.quote(own)} pushes the run's)")

    def run_dataset(self, dataset_dir: Path | None) -> Path:
        """The dataset a push sends: the one given, else the settings' when set, else the one
        the run pushed before (a --resume or a push again without -d sends the run's own),
        else the one its full-smoke was started with, else the default."""
        own = self.own_dataset()
        if dataset_dir is None and self.settings.source("dataset_dir") == "default" and own:
            return Path(own)
        return Path(dataset_dir or self.settings.dataset_dir)

    def own_dataset(self) -> str | None:
        """The run's own dataset folder: the one it pushed, else the one its full-smoke was
        started with (interrupted before its push); None when it has neither."""
        recorded = self.state.dataset
        if recorded is not None and recorded.local:
            return recorded.local
        return self.state.dataset_asked or None

    def _train(self, extra_args: str | None, *, reuse: bool, tried: bool) -> bool:
        """cycle_train.sh on the pod, its log streamed here (a cluster: ClusterCycle). True
        when what it followed to its end was a trainer of this run with other settings."""
        env = self.train_env(extra_args, reuse_finished=reuse)
        started = time.monotonic()
        try:
            result = self._follow_the_trainer(env, extra_args)
        finally:
            self._open_timeout = None
        self.state.train_remote_seconds = round(time.monotonic() - started, 3)
        self.run.save()
        if result.exited == RUN_FOLDER_OF_ANOTHER_RUN:
            raise self.other_runs_folder("train")
        if result.exited == TRAIN_SMOKE_FAILED:
            raise StepFailed("the model trained, but the remote infer_move smoke failed",
                             "see the line above from the pod; collect the artifacts "
                             "(inv cycle.collect) to look at the model")
        if result.exited != 0:  # a trainer killed by its pod's stop is no training bug
            stopped = self.stopped_under_step("train")
            if stopped is not None:
                raise stopped
        if result.exited == TRAIN_DISK_FULL:
            raise TrainingFailed("training failed on the pod: its disk is full (the trainer "
                                 "could not write its checkpoint, log or exit code)",
                                 f"free space there (inv pod.ssh {self.pod_id}, then df -h), or "
                                 "give pods more disk ([mounts.persistent] size and disk in "
                                 "config/template.toml, then inv template.sync), and train "
                                 "again")
        if result.exited == TRAIN_TRAINER_LOST:
            raise TrainingFailed("the trainer on the pod ended without an exit code (it "
                                 "was killed: out of memory, or the pod restarted?)",
                                 "collect its log (inv cycle.collect) and train again")
        if result.exited != 0:
            # 120: Python could not write out what it had buffered as it ended, which on a
            # pod is a full disk (the trainer's log showed torch's "iostream error" only).
            hint = (": its output could not be written at exit, the pod's disk may be full "
                    f"(inv pod.ssh {self.pod_id}, then df -h)" if result.exited == 120 else "")
            raise TrainingFailed(f"training failed on the pod (exit code {result.exited})"
                                 f"{hint}",
                                 "its log is train.log in the run's artifacts (inv "
                                 "cycle.collect brings it home); fix and train again")
        # The pod's log lines (this one too) come on stderr.
        return OTHER_SETTINGS_LINE in (result.stdout or "") + (result.stderr or "")

    def _follow_the_trainer(self, env: dict[str, str], extra_args: str | None
                            ) -> remote.Result:
        """cycle_train.sh to its end, reconnecting after a lost connection (TRAIN_REATTACH
        times) to follow the trainer, which runs on detached."""
        from podcycle.clusters import RECONNECT_OPEN_SECONDS  # a node's reconnect waits alike

        for attempt in range(1, TRAIN_REATTACH + 2):
            try:
                return self._remote("cycle_train.sh", env)
            except (LostConnection, remote.RemoteError) as lost:
                # The trainer runs on, detached: a new connection follows it (cycle_train.sh
                # attaches to it, or keeps what it finished meanwhile), instead of a stopped
                # pod and a training thrown away for a network blip.
                # A reconnect that SSH would not open in its half minute (a frozen sshd, a
                # network still down) is one of the tries too: it ended the step at once, right
                # after "reconnecting (1 of 3)" was said. Not when SSH never opened (no trainer
                # was started), nor when nothing listened throughout (the container is gone, and
                # its trainer with it) or the key or name is wrong (no new try helps).
                if not isinstance(lost, LostConnection) and (
                        attempt == 1 or lost.refused or not lost.pod_side):
                    raise  # a key, a name, a host key: no new try changes them
                if attempt > TRAIN_REATTACH:
                    if isinstance(lost, LostConnection):
                        raise
                    raise LostConnection(
                        "train", f"lost the SSH connection to pod {self.pod_id} during train, "
                        f"and {TRAIN_REATTACH} tries to reach it again failed: {lost.message}",
                        self._after_lost_connection("train")) from None
                if isinstance(lost, LostConnection):
                    what = f"{lost.message}; the trainer runs on, detached: reconnecting to " \
                        "follow it"
                else:
                    what = f"could not reach pod {self.pod_id} again ({lost.message}): trying again"
                self.say(f"{what} ({attempt} of {TRAIN_REATTACH})")
                self.state.note(f"train: {what} ({attempt} of {TRAIN_REATTACH})")
                self.close()
                # Half a minute a try, as a cluster node's reconnect: a pod stopped under the
                # train answers "connection refused" until the API says so, and each try's
                # full minute of it came before the next one asked the API.
                self._open_timeout = RECONNECT_OPEN_SECONDS
                env = {**self.train_env(extra_args, reuse_finished=True), "ATTACH_ONLY": "1"}
        raise AssertionError("unreachable: the last try returns or raises")

    # -- collect -----------------------------------------------------------------------------
    def collect(self) -> dict[str, Any]:
        self.warn_if_trained_before_the_push("collect")
        if self.state.step("train").status == "pending":
            # A collect before any train brought the timings home and was "done"; then
            # local-validate asked for a collect, and a collect again changed nothing.
            self.say(f"warning: collect: run {self.run.run_id} has not trained yet, so there "
                     f"is no model to bring home; train first (inv cycle.train -r "
                     f"{self.run.run_id}), then collect")
        with self.step("collect"):
            return self.collect_files()

    def warn_if_trained_before_the_push(self, step: str) -> None:
        """A push after the train (another dataset) left the model the pod holds an earlier
        training's: collected and validated without a word, it passed for a model of the
        new dataset."""
        if self.state.step("train").status != "outdated" or not self.state.done("push-dataset"):
            return
        dataset = self.state.dataset.local if self.state.dataset else "the pushed one"
        self.say(f"warning: {step}: the run's training predates its last push-dataset (now "
                 f"{dataset}): the model is that earlier training's, not one of this "
                 f"dataset; train again (inv cycle.train -r {self.run.run_id}) for one")

    def collect_files(self) -> dict[str, Any]:
        paths = self.paths()
        made = self._remote("cycle_manifest.sh", {"RUN_OUT": paths.out,
                                                  "RUN_TOKEN": self.run_token(),
                                                  "RUNPOD_PHASE_TIMING_LOG": paths.timing_log},
                            hide=True)
        if made.exited == RUN_FOLDER_OF_ANOTHER_RUN:
            raise self.other_runs_folder("collect")
        if made.exited == MANIFEST_TRAINER_RUNNING:
            raise StepFailed("a trainer of this run is still running on the pod: its "
                             "artifacts are not final",
                             "follow it to the end with inv cycle.train (it attaches), then "
                             "collect")
        if made.exited != 0:
            raise StepFailed(f"cycle_manifest.sh failed on the pod (exit {made.exited}): "
                             f"{printable(made.stderr.strip()[-300:]) or 'no output'}",
                             "check the pod's disk (inv pod.ssh) and run inv cycle.collect "
                             "again")
        self.run.collected.mkdir(parents=True, exist_ok=True)
        need = self._check_room(made.stdout)
        # The loss curve is drawn from the collected metrics: the report redraws it after this.
        self.run.loss_curve.unlink(missing_ok=True)
        try:
            moved = self._rsync(f":{paths.out}/", f"{self.run.collected}/",
                                extra=["--exclude", "/.control/"],
                                progress=lambda line: self.say(f"collecting: {line}"),
                                stop_when=lambda: self._disk_filling(need))
        except remote.TransferStopped as stopped:
            raise StepFailed(f"collect stopped: {stopped.message}",
                             "the pod sent more than it said it holds: look at its files "
                             "(inv pod.ssh), then run inv cycle.collect again; the partial "
                             "transfer was removed") from None
        self.state.transfers.append(TransferRecord("collect", moved.sent, moved.received,
                                                   round(moved.seconds, 3)))
        self.run.save()
        files = verify_manifest(self.run.collected)
        self.say(f"collected {len(files)} files into {self.run.collected} (sha256 verified; "
                 f"{moved.received} bytes in {moved.seconds:.1f}s)")
        return {"files": files}

    def _check_room(self, said: str) -> int | None:
        """Refuse, before any byte moves, a collect the host's disk cannot hold with
        COLLECT_RESERVE to spare (a checkpoint too big for a laptop; a sparse file of
        terabytes the pod counts at its full size). `said` is cycle_manifest.sh's output
        (`bytes=N`; a pod image from before it said nothing, and is not checked). Returns N.
        It is the pod's own count: a pod that lies about it is stopped by _disk_filling."""
        found = re.search(r"^bytes=(\d+)$", said, re.M)
        if not found:
            return None
        need, free = int(found.group(1)), shutil.disk_usage(self.run.collected).free
        if need + COLLECT_RESERVE > free:
            raise StepFailed(f"collect would bring {_size(need)} home, and "
                             f"{self.run.collected} has {_size(free)} free (keeping "
                             f"{_size(COLLECT_RESERVE)} spare)",
                             f"free space there, or move the run folder {self.run.path} to "
                             "a larger disk and set POD_CYCLE_ARTIFACTS_DIR to the folder "
                             "that holds it (the run's record goes with it); then "
                             f"{resume_hint(self.run.run_id)} brings the files home (a "
                             "stopped pod is started again; the pod keeps the files)")
        return need

    def _disk_filling(self, need: int | None) -> str | None:
        """While collect runs: why it must stop, once the host's disk is down to half of
        COLLECT_RESERVE. _check_room left the whole reserve, so an honest pod never gets
        here; a pod that sends more than it declared (or a file growing on it) would fill
        the operator's disk."""
        free = shutil.disk_usage(self.run.collected).free
        if free >= COLLECT_RESERVE // 2:
            return None
        said = f"the pod declared {need:,} bytes" if need is not None else \
            "the pod did not say how much"
        return (f"{self.run.collected}'s disk is down to {free / 1e6:,.0f} MB free, under the "
                f"{COLLECT_RESERVE // 2 / 1e6:,.0f} MB kept spare ({said})")

    # -- local-validate ----------------------------------------------------------------------
    def local_validate(self, strength_games: int = 0, strength_opponent: str | None = None,
                       dataset_dir: str | Path | None = None) -> dict[str, Any]:
        """infer_move and val metrics on `dataset_dir` (a --dataset-dir given; default: the
        dataset the run pushed, else the settings' one); with strength_games, also a match
        of the model against strength_opponent (default: the previous finished run on the
        dataset, else random)."""
        if dataset_dir:
            validate(Path(dataset_dir))  # refused before the step, as push-dataset does
        collect = self.state.step("collect").status
        if collect in ("failed", "interrupted", "outdated", "running"):
            # The files here are an earlier training's (train ran again), or a torn pull.
            # "running" under this process's lock: the collect's own process ended mid-way.
            raise StepFailed(
                "the run's last collect "
                + ("was cut short (its process ended mid-way)" if collect == "running"
                   else f"is {collect}")
                + (" (train ran again since)" if collect == "outdated" else "")
                + ": the files here may not be its model",
                f"run inv cycle.collect -r {self.run.run_id} first")
        self.warn_if_trained_before_the_push("local-validate")
        with self.step("local-validate"):
            model_path = self.run.collected / validation.MODEL_IN_MANIFEST
            never_trained = not model_path.is_file() and not self.state.done("train")
            # Nothing collected yet: "no manifest, run inv cycle.collect" sent the user to a
            # collect that would find nothing trained.
            if not never_trained or (self.run.collected / "MANIFEST.sha256").is_file():
                verify_manifest(self.run.collected, require=(
                    validation.MODEL_IN_MANIFEST,) if model_path.exists() else ())
            if never_trained:
                # "run inv cycle.collect first" sent the user to a collect that had run.
                raise StepFailed(f"no collected model at {model_path}: run "
                                 f"{self.run.run_id} has not trained (its train step is "
                                 f"{self.state.step('train').status})",
                                 f"run inv cycle.train -r {self.run.run_id}, then inv "
                                 f"cycle.collect -r {self.run.run_id}")
            model, answer = validation.model_answer(model_path)
            atomic_write(self.run.infer_output, json.dumps(answer) + "\n")
            validation.check_legal(answer)
            metrics = validation.val_metrics(
                model, Path(dataset_dir or (self.state.dataset.local if self.state.dataset
                                            else self.settings.dataset_dir)))
            atomic_write(self.run.local_validation / "val_metrics.json",
                         json.dumps(metrics, indent=2))
            self.state.local_validation = {"move": answer["move"], **metrics}
            self.run.save()
            self.say(f"local validation: {answer['move']} for {validation.VALIDATION_FEN}; val "
                     f"top-1 "
                     f"{metrics['val_top1']:.3f} (random legal {metrics['random_legal_top1']:.3f})")
            if strength_games:
                from podcycle.match import strength_check, strength_line

                self.state.strength = strength_check(
                    self.run, strength_games, strength_opponent, self.settings.artifacts_dir,
                    self.say)
                self.run.save()
                self.say(f"strength: {strength_line(self.state.strength)}")
            return metrics

    # -- stop --------------------------------------------------------------------------------
    def stop(self, *, rescue: bool = False) -> None:
        """Stop what the run bills. `rescue` (inv cycle.stop): first bring home what would be
        lost with it (a cluster's uncollected model; a pod keeps its disk: nothing)."""
        if rescue:
            self.rescue_before_stop()
        self._stop_sent = False
        try:
            with self.step("stop"):
                self.stop_pod()
        except OSError:
            # The run's folder cannot be written (a full disk, a folder gone read-only): the
            # step's own bookkeeping failed, before the stop request or after it. Whatever
            # bills is stopped all the same, and said so; the error then goes up.
            if not self._stop_sent:
                self._stop_unsaved()
            raise
        if rescue:
            self.say_what_the_pod_keeps()

    def say_what_the_pod_keeps(self) -> None:
        """After inv cycle.stop: what of the run only the stopped pod's disk holds (a model
        trained there and never collected, a training the host lost), and the way to it.
        The stop said only "stopped", and the model looked gone or safe at home."""
        pod = self.state.pod
        if pod is None or self.state.cluster is not None:
            return  # a cluster's was collected before its delete (rescue_before_stop)
        run_id = self.run.run_id
        volume = self.state.network_volume
        if volume is not None:  # the run's folder on the pod is on the volume, not its disk
            holds = self.state.left_on_volume()
            where = f"network volume {volume.name} ({volume.id})"
            if holds == "trained model":
                self.say(f"run {run_id}'s trained model stays on {where}, not collected: "
                         f"{resume_hint(run_id)} collects it (inv volume.delete {volume.id} "
                         "--yes deletes it with the volume)")
            elif holds == "training":
                self.say(f"run {run_id}'s training was not followed to its end (the host lost "
                         f"it): what it wrote stays on {where}, and {resume_hint(run_id)} "
                         "keeps it if it finished, else trains on from its last checkpoint")
            return
        holds = self.state.left_on(pod.id)
        if holds is not None and self._stop_outcome == "gone":  # no disk left to hold it
            self.say(f"run {run_id}'s {holds} was only on pod {pod.id}, which is gone "
                     f"(terminated): it went with the pod; {resume_hint(run_id)} makes a new "
                     "pod and trains again")
        elif holds == "trained model":
            self.say(f"run {run_id}'s trained model stays on pod {pod.id}'s disk, not "
                     f"collected: {resume_hint(run_id)} starts the pod again and collects it "
                     f"(inv pod.terminate {pod.id} --yes deletes it with the pod)")
        elif holds == "training":
            self.say(f"run {run_id}'s training was not followed to its end (the host lost "
                     f"it): what it wrote stays on pod {pod.id}'s disk, and "
                     f"{resume_hint(run_id)} keeps it if it finished, else trains on from its "
                     "last checkpoint")

    def rescue_before_stop(self) -> None:
        """A stopped pod keeps its disk: nothing of the run is lost by stopping it."""

    def delete_unrecorded_clusters(self) -> None:
        """A cluster of the run's name that the run never recorded (its create's answer lost,
        or the process killed before it recorded it; a cluster is named like the pod) is its
        own: deleted here, as a pod of that name is stopped, so `cycle.stop` leaves nothing of
        the run billing, with or without --nodes."""
        from podcycle import clusters

        recorded = self.state.cluster.id if self.state.cluster else None

        def unrecorded() -> list[Any]:
            return [c for c in self.clusters_of_the_run() if c.id != recorded]

        try:
            listed = self.await_a_killed_create("cluster", unrecorded,
                                                then="before the stop ends")
        except PodCycleError as exc:  # a key without the clusters scope: nothing to go on
            self.say(f"note: could not look for a cluster of run {self.run.run_id} that it "
                     f"never recorded ({exc.message}); inv cluster.list shows them")
            return
        self.create_settled()  # what it made, if anything, is dealt with below
        for found in listed:
            if not self._made_since_the_run_began(found.created_at):
                # Deleting is for good: one that may be another checkout's run of the same id
                # is named, not deleted.
                self.say(f"note: cluster {found.id} has run {self.run.run_id}'s name but may "
                         "predate it, so it is left alone: inv cluster.delete "
                         f"{found.id} --yes deletes it if it is this run's")
                continue
            self.say(f"run {self.run.run_id} recorded no cluster, but cluster {found.id} "
                     f"({found.name}, {found.pod_count} nodes) is its own: deleting it")
            outcome = clusters.delete_cluster(self.client, found.id)
            self.state.note(f"cluster {found.id}, never recorded, {outcome} at the stop")
            self.run.save()
            self.say(f"cluster {found.id}: {outcome}")

    def _made_since_the_run_began(self, created_at: str | None, unknown: bool = False) -> bool:
        """Whether an API time (createdAt, RunPod's clock) falls after this run began (this
        machine's clock, moved onto RunPod's by the difference its last answer's Date header
        shows: a laptop's clock minutes off, a VM resumed from sleep; five minutes allowed
        on top); `unknown` when there is none or it does not parse."""
        from podcycle.runpod.models import api_time

        if self.run.fresh and getattr(getattr(self._backend, "client", None),
                                      "create_requests", 0) == 0:
            # This process made the run's folder and sent no create: nothing of the run's
            # name can be its own, however close its createdAt (another folder's run of the
            # same id, started a minute ago, is within the clock allowance).
            return False
        created = api_time(created_at)
        if created is None:
            return unknown
        began = (self.state.created_at or 0) + self._clock_difference()
        return created.timestamp() >= began - 300

    def _clock_difference(self) -> float:
        """RunPod's clock minus this machine's, in seconds, from the Date header of the
        client's last answer (to the second); 0 when there is none."""
        from email.utils import parsedate_to_datetime

        headers = getattr(getattr(self._backend, "client", None), "last_headers", None) or {}
        try:
            return parsedate_to_datetime(headers["Date"]).timestamp() - time.time()
        except (KeyError, TypeError, ValueError, IndexError, OverflowError):
            return 0.0

    def _stop_unsaved(self) -> None:
        """Stop the recorded pod without saving anything: the run's state cannot be
        written."""
        record = self.state.pod
        if record is None or record.stopped_at is not None:
            return
        outcome = stop_pod(self.client, record.id)
        self.say(f"pod {record.id}: {outcome}; the run's state could not be saved, so it "
                 "does not say so")

    def stop_pod(self) -> None:
        """Stop the run's pod (the one path, podcycle.pods.stop_pod); an already stopped or
        vanished pod is success. A failure is recorded loudly: the pod may be billing."""
        self.close()
        record = self.state.pod
        if record is None:
            # A create whose process died before it recorded the pod (kill -9): the pod has
            # the run's name, or will have once RunPod answers that create. Adopted here, it
            # is stopped and counted like any other.
            named = self.await_a_killed_create("pod", self.live_pods_of_the_run,
                                               then="before the stop ends")
            if not named:
                self.delete_unrecorded_clusters()
                return
            self._stop_extra_pods(named[1:])  # a killed start's and a resume's: both go
            self.say(f"run {self.run.run_id} recorded no pod, but pod {named[0].id} "
                     f"({named[0].name}) is its own: stopping it")
            self._record_pod(named[0], price=named[0].cost_per_hour or None)
            record = self.state.pod
        try:
            outcome = stop_pod(self.client, record.id)
        except StopFailed:
            if not self._local_runpod_gone(record.id):
                record.stop_failed = True
                self.run.save()
                raise
            # `inv local.down --force` under the run: "POD STILL RUNNING ... it is billing:
            # inv pod.stop" (exit 4), of a pod whose every process had gone with the server.
            # Its disk stays in the local RunPod's folder: the server, started again, shows
            # it stopped, not gone.
            self.say(f"the local RunPod is not running (inv local.down stops it with every "
                     f"pod): pod {record.id} stopped with it; nothing bills")
            outcome = "already stopped"
        self._stop_sent = True
        self._stop_outcome = outcome
        record.stop_failed = False
        if record.guard:  # its own stop may have raced the guard's: the pod's log says
            self.check_guard()
        self.state.record_pod_stopped(outcome, time.time(), self.settings.ready_timeout)
        if outcome == "gone":
            self.state.note(f"pod {record.id} was already gone at stop")
        self.run.save()
        self.say(f"pod {record.id}: {outcome}")
        self.record_billing()
        if self.state.create_sent_at is not None:
            self._stop_a_killed_creates_pod(record.id)
        else:
            self._stop_late_pods(record.id)

    def _local_runpod_gone(self, pod_id: str) -> bool:
        """Whether the run is on the local RunPod, which is down, and no process of pod
        `pod_id` is left: a stop that found no server stopped nothing that bills."""
        if getattr(self._backend, "name", None) != "local":
            return False
        from podcycle.local import control, procs

        return control.status(self.settings.local_dir) is None \
            and not procs.pod_processes(pod_id)

    def _stop_a_killed_creates_pod(self, recorded: str) -> None:
        """A replacement's create killed before it recorded its pod (the run's pod was gone,
        a new one asked for): the stop stopped the recorded one, and the new one billed on.
        Awaited, then stopped and counted with the run's pods."""
        self._stop_extra_pods(self.await_a_killed_create(
            "pod", lambda: [p for p in self.live_pods_of_the_run() if p.id != recorded],
            then="before the stop ends"))
        self.create_settled()

    def _stop_late_pods(self, recorded: str) -> None:
        """Pods of the run that may bill beside the recorded one, looked for once: a create
        given up on (no answer) whose pod landed after its wait, when the next start had
        made another (RunPod took 150 s; the wait is the client's 90 s). Both billed, and
        the stop stopped only the recorded one. A failed look is said, never the stop's
        failure."""
        try:
            late = [pod for pod in self.live_pods_of_the_run()
                    if pod.id != recorded and not pod.status.stopped]
        except PodCycleError as exc:
            self.say(f"note: could not look for other pods of run {self.run.run_id} "
                     f"({exc.message}); inv pod.leftovers lists any that bill")
            return
        self._stop_extra_pods(late, made_for="a create that got no answer in time")

    def _stop_extra_pods(self, pods: list[Pod],
                         made_for: str = "a create whose process was killed") -> None:
        """Pods of the run's name it never recorded (`made_for`: a create whose process was
        killed, or whose answer never came): stopped, and counted with the run's pods."""
        for extra in pods:
            self.say(f"pod {extra.id} ({extra.name}) is also run {self.run.run_id}'s, made for "
                     f"{made_for}: stopping it")
            self.state.replaced.append(extra.id)
            self.state.note(f"pod {extra.id} of the run's name, never recorded: "
                            f"{stop_pod(self.client, extra.id)}")
            self.run.save()

    def check_guard(self, *, settle: float = 0.0) -> bool:
        """Whether the pod's spend guard stopped it (its line in the pod's container log),
        recorded for the report (`fired`). Once seen fired, it stays fired: nothing the
        cycle does later (its own stop) says otherwise. `settle`: seconds to keep looking
        for the line, for when the guard's time is up (RunPod's log lags)."""
        record = self.state.pod
        if record is None or not record.guard or record.guard.fired:
            return bool(record and record.guard and record.guard.fired)
        from podcycle.pods import read_logs

        give_up = time.monotonic() + settle
        while True:
            try:
                lines = [e.line for e in read_logs(self.client, record.id, follow=False,
                                                   tail=200, source="container")]
            except PodCycleError:
                return False  # not known: what was recorded stands
            earlier = record.guard.fired_line  # an earlier boot's, still in the log
            if earlier in lines:
                lines = lines[len(lines) - lines[::-1].index(earlier):]
            fired = [line for line in lines if provision.SPEND_GUARD_FIRED in line]
            if fired or time.monotonic() >= give_up:
                break
            time.sleep(min(2.0, max(0.0, give_up - time.monotonic())))
        record.guard.fired = bool(fired)
        if fired:
            record.guard.fired_line = fired[-1]
            self.state.note(f"{self.guard_stopped_text()}: {fired[-1]}")
            self.say(f"{self.guard_stopped_text()}: {fired[-1]}")
        self.run.save()
        return bool(fired)

    def record_billing(self) -> None:
        """The billed amount for the run's pod (/v2/billing/pods), for the report beside the
        estimate. Best effort: the pod is stopped either way, and RunPod's billing lags."""
        if self.state.pod is None and self.state.cluster is None:
            return
        checked = BillingCheck(checked_at=time.time())
        try:
            amount = self._billed_amount(self.client.hasty())
        except PodCycleError as exc:
            checked.detail = exc.message
        else:
            if amount:
                checked.amount, checked.available = amount, True
            else:
                checked.detail = NO_BILLING_YET
        self.state.billing = checked
        self.run.save()

    def _billed_amount(self, client: Any) -> float | None:
        """What RunPod billed for the run's pod so far (a cluster: ClusterCycle)."""
        from podcycle.pods import billed

        record, earlier = self.state.pod, self.state.replaced
        if not earlier:
            return billed(client, record.id, since=record.created_at)["pods"].get(record.id)
        found = billed(client, since=self.state.created_at)["pods"]  # and its lost pods
        amounts = [found[i] for i in [*earlier, record.id] if i in found]
        return round(sum(amounts), 6) if amounts else None
