"""The cycle's steps on an Instant Cluster (--nodes N, podcycle.clusters): `ClusterCycle` is
`Cycle` where a run's pod is a cluster. `start` makes or reuses the run's cluster and opens a
session to every node; push-dataset reaches every node at once; train runs cycle_train.sh on
every node together (clusters.Gang: one node lost stops the others); stop deletes the cluster
(clusters cannot be stopped). Collect and local-validate are the primary's, as on one pod.
`Cycle.for_run` picks the class by the run's shape.
"""

from __future__ import annotations

import json
import threading
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from podcycle import clusters, remote
from podcycle.config import Settings
from podcycle.cycle import (
    OTHER_SETTINGS_LINE,
    RUN_FOLDER_OF_ANOTHER_RUN,
    TRAIN_REATTACH,
    TRAIN_SMOKE_FAILED,
    ClusterNodeFailed,
    Cycle,
    PodStoppedUnderStep,
    TrainingFailed,
    dataset_target,
    keep_guard,
    resume_hint,
)
from podcycle.errors import PodCycleError, StepFailed, StepRefused
from podcycle.redact import printable, redact, scrub_pod
from podcycle.runpod.errors import NotFound
from podcycle.runpod.models import Pod, PodStatus
from podcycle.runs import (
    ClusterMember,
    ClusterRecord,
    PodRecord,
    RemotePaths,
    RunFolder,
    TransferRecord,
    atomic_write,
    billing_started,
    close_billing,
)


class ClusterCycle(Cycle):
    """The steps of one run on a cluster. The primary (rank 0) is the run's pod: its session
    is `session()`, its paths `paths()`; the other nodes' are `member_session` and
    `member_paths`."""

    def __init__(self, settings: Settings, run: RunFolder, **kwargs: Any) -> None:
        super().__init__(settings, run, **kwargs)
        self._member_sessions: dict[str, Any] = {}  # the other nodes, by pod id
        # Train's node threads open sessions again after a lost connection.
        self._sessions_lock = threading.Lock()

    def close(self) -> None:
        with self._sessions_lock:
            sessions = [self._session, *self._member_sessions.values()]
            self._session = None
            self._member_sessions.clear()
        for session in sessions:
            if session is not None:
                session.close()

    def _cluster_settings(self) -> Settings:
        """The settings a (new) cluster of this run is made with: its recorded shape unless
        given again, and its network volume."""
        settings = replace(self.settings, nodes=self.nodes)
        record = self.state.cluster
        if record is not None:
            if settings.source("gpu_type_id") == "default" and record.gpu_id:
                settings = replace(settings, gpu_type_id=record.gpu_id)
            if settings.source("gpu_count") == "default":
                settings = replace(settings, gpu_count=record.gpu_count_per_pod)
            if settings.source("data_center") == "default" and record.data_center:
                settings = replace(settings, data_center=record.data_center)
            settings = keep_guard(settings, record.guard)
        if not settings.network_volume and self.state.network_volume:
            settings = replace(settings, network_volume=self.state.network_volume.id)
        return settings

    def start(self) -> Pod:
        """Reconcile the run's cluster: reuse a live one, else make one (a deleted cluster
        cannot be restarted); wait until every node answers SSH. Returns the primary."""
        self.settle_shape()
        with self.step("start"):
            self._warn_leftovers()
            cluster = self._existing_cluster()
            if cluster is None:
                cluster = self._provision_cluster()
                # New nodes, new host keys (a loopback port may come back with another).
                # (Recorded billing from its create: RunPod bills while its nodes boot.)
                self.run.known_hosts.unlink(missing_ok=True)
            else:
                self._check_given_hardware(cluster.id)
                self.say(f"run {self.run.run_id} already has cluster {cluster.id}: using it")
                self._check_given_guard(f"cluster {cluster.id}", None, starting=False)
                billing_started(self.state.cluster, time.time())  # from now at least
            self.run.save()
            cluster = clusters.wait_ready(self.client, cluster.id,
                                          timeout=self.settings.ready_timeout,
                                          progress=self.say)
            record = self.state.cluster
            record.members = clusters.members(cluster)
            primary = cluster.primary
            if self.state.pod is None or self.state.pod.id != primary.id:
                self.state.set_pod(PodRecord(
                    id=primary.id, name=primary.name, gpu_id=primary.gpu_id,
                    gpu_count=primary.gpu_count, cloud=primary.cloud,
                    template="config/template.toml", price_per_hour=record.price_per_hour,
                    created_at=record.created_at, billing_since=record.billing_since,
                    cluster_id=record.id, guard=record.guard))
            if record.running_since is None:
                record.running_since = time.time()
            if self.state.pod.running_since is None:
                self.state.pod.running_since = record.running_since
                self.state.pod.stopped_at = None
            self.run.save()
            self.close()
            self._open_session(primary)
            self.paths()
            for member in record.members:
                if member.rank != 0:
                    self.member_paths(member)
            self.say(f"cluster {record.id}: {len(record.members)} nodes answer SSH; primary "
                     f"(rank 0) pod {primary.id} at {self._session.endpoint.label()}")
            return primary

    def _check_given_hardware(self, cluster_id: str) -> None:
        """A --data-center or --gpu-count given on this command that differs from the run's
        live cluster cannot reach it (a cluster is not moved or resized): refused, not
        silently dropped. A standing setting (environment, .env) is for new clusters."""
        record, settings = self.state.cluster, self.settings
        given = [(flag, wanted, held) for name, flag, wanted, held in (
            ("data_center", "--data-center", settings.data_center, record.data_center),
            ("gpu_count", "--gpu-count", settings.gpu_count, record.gpu_count_per_pod))
            if settings.source(name) == flag and held is not None and wanted != held]
        if given:
            flag, wanted, held = given[0]
            raise StepRefused(
                f"{flag} {wanted}: run {self.run.run_id}'s cluster {cluster_id} has {held}, "
                "and a cluster is not moved or resized",
                f"leave {flag} out to go on with it, or delete it first (inv cycle.stop -r "
                f"{self.run.run_id}: it collects a trained model first) so that the next "
                f"start makes one with {flag} {wanted}")

    def _existing_cluster(self) -> Any:
        record = self.state.cluster
        if record is not None and record.deleted_at is None:
            try:
                return self.client.get_cluster(record.id)
            except NotFound:
                self.say(f"the run's cluster {record.id} no longer exists: creating a new one")
                self.state.note(f"cluster {record.id} no longer exists")
        elif record is not None:
            self.say(f"the run's cluster {record.id} was deleted (a cluster cannot be "
                     "restarted): creating a new one")
        # A create that died half-way may have made the cluster already; one made before the
        # run began (another folder's run of the same id) is not this run's to train on and
        # delete (_of_this_run, live_pods_of_the_run's rule).
        named = self.await_a_killed_create("cluster", lambda: [
            cluster for cluster in self.clusters_of_the_run()
            if not (record is not None and record.deleted_at and cluster.id == record.id)
            and self._of_this_run("cluster", cluster)])
        if named:
            self._record_cluster(named[0], price=None, guard=None)
            return named[0]
        return None

    def _record_cluster(self, cluster: Any, *, price: float | None,
                        guard: Any, data_center: str | None = None,
                        created: bool = False) -> None:
        """The run's cluster, recorded; `created`: by this run just now, so it bills from
        here (saved with the create: a Ctrl-C held through it leaves the bill open)."""
        old = self.state.cluster
        now = time.time()
        if old is None or old.id != cluster.id:
            self.run.known_hosts.unlink(missing_ok=True)  # new nodes, new host keys
        self.state.cluster = ClusterRecord(
            id=cluster.id, name=cluster.name, gpu_id=cluster.gpu_type_id,
            gpu_count_per_pod=cluster.gpu_count_per_pod, pod_count=cluster.pod_count,
            price_per_hour=price, created_at=now, billing_since=now if created else None,
            guard=guard, data_center=data_center or (old.data_center if old else None))
        self.state.create_sent_at = None  # what an outstanding create made is recorded
        if old is not None and old.id != cluster.id:
            close_billing(old, old.deleted_at or time.time())
            self.state.cluster.billed_seconds = old.billed_seconds
            self.state.replaced.append(old.id)
            self.state.note(f"the run's cluster changed from {old.id} to {cluster.id}")
        self.run.save()

    def _provision_cluster(self) -> Any:
        settings = self._cluster_settings()
        from podcycle import volumes

        def record(made: clusters.ProvisionedCluster) -> None:
            self._record_cluster(made.cluster, price=made.price_per_hour, guard=made.guard,
                                 data_center=settings.data_center, created=True)
            if made.volume:
                self.state.network_volume = volumes.record(made.volume)
                self.run.save()

        # Recorded with its create (SIGINT/SIGTERM held between): the finally deletes it.
        try:
            made = clusters.provision_cluster(self.backend, settings, name=self.pod_name(),
                                              key_path=self.key(), record=record,
                                              sending=self.create_sending)
        except BaseException as exc:
            self.create_failed(exc)
            raise
        cluster = made.cluster
        atomic_write(self.run.provision_json,
                     redact(json.dumps(scrub_pod(made.record(self.backend)), indent=2)))
        self.say(f"created cluster {cluster.id} ({cluster.name}): {cluster.pod_count} nodes of "
                 f"{settings.gpu_count}x {made.gpu_id} (world size "
                 f"{cluster.pod_count * settings.gpu_count})"
                 + (f", ${made.price_per_hour:.2f}/h for the cluster" if made.price_per_hour
                    else "") + "; it bills until it is deleted (clusters cannot be stopped)")
        if made.guard:
            self.say(f"spend guard: the cluster deletes itself {made.guard.minutes:g} minute(s) "
                     f"after its nodes boot ({made.guard.reason}), even if this machine dies")
        return cluster

    def member_session(self, member: ClusterMember) -> Any:
        """The SSH session to a node other than the primary (the primary's is session())."""
        if member.rank == 0:
            return self.session()
        with self._sessions_lock:
            session = self._member_sessions.get(member.pod_id)
        if session is None:
            session = self._new_session(member)
            session.open()
            with self._sessions_lock:
                self._member_sessions[member.pod_id] = session
        return session

    def _new_session(self, member: ClusterMember, say: Any = None) -> Any:
        """A session (not yet open) to a node's recorded SSH endpoint."""
        return self._session_factory(self._member_endpoint(member), self.run.known_hosts,
                                     self.run.run_id, say or self.say)

    def _reach_again(self, member: ClusterMember, over: threading.Event) -> Any:
        """A new session to a node whose session dropped during train, to its recorded SSH
        endpoint (no API call: an API that is down too must not cost the node), opened within
        RECONNECT_OPEN_SECONDS. One opened after the train step ended is closed at once."""
        session = self._new_session(member)
        session.open(timeout=clusters.RECONNECT_OPEN_SECONDS)
        with self._sessions_lock:
            if not over.is_set():
                if member.rank == 0:
                    self._session = session
                else:
                    self._member_sessions[member.pod_id] = session
                return session
        session.close()
        raise StepFailed("the train step ended while the node was being reached again", "")

    def _drop_session(self, member: ClusterMember, over: threading.Event) -> None:
        """Forget a node's broken session; the other nodes' stay open. Once the train step
        ended it is close()'s (a session's close ends the SSH master it shares with the
        collect that may follow)."""
        with self._sessions_lock:
            if over.is_set():
                return
            if member.rank == 0:
                session, self._session = self._session, None
            else:
                session = self._member_sessions.pop(member.pod_id, None)
        if session is not None:
            session.close()

    def member_paths(self, member: ClusterMember) -> RemotePaths:
        """A node's cycle paths (the primary's are paths()). Other nodes write under their
        own RUN_OUT (a node of rank r: the run's folder + "-node<r>"), so nodes that share a
        network volume never share a trainer lock or log."""
        if member.rank == 0:
            return self.paths()
        if member.paths is None:
            result = self.member_session(member).script("cycle_paths.sh", {}, hide=True)
            found = dict(line.split("=", 1) for line in result.stdout.splitlines()
                         if "=" in line)
            if result.exited != 0 or not all(found.get(k) for k in ("repo", "training",
                                                                     "timing_log", "venv")):
                raise StepFailed(f"node rank {member.rank} (pod {member.pod_id}): its "
                                 f"cycle_paths.sh did not answer (exit {result.exited})",
                                 "check the nodes run the pod-cycle image")
            volume = found.get("volume", "")
            out = (f"{volume}/pod-cycle/runs/{self.run.run_id}" if volume
                   else f"{found['repo']}/artifacts/runpod_cycles/{self.run.run_id}")
            member.paths = RemotePaths(
                pod_id=member.pod_id, repo_dir=found["repo"], training_dir=found["training"],
                timing_log=found["timing_log"], venv_dir=found["venv"],
                out=f"{out}-node{member.rank}", volume_dir=volume or None)
            self.run.save()
        return member.paths

    def _other_members(self) -> list[ClusterMember]:
        record = self.state.cluster
        return [m for m in record.members if m.rank != 0] if record else []

    def _push_to_other_nodes(self, dataset_dir: Path, files: list[str], primary_target: str,
                             sha256: str, size: int) -> None:
        """The dataset to every other node of the cluster, all at once (a node that shares
        the primary's network volume path already has it)."""
        import concurrent.futures

        jobs = []
        for member in self._other_members():
            target = dataset_target(self.member_paths(member), dataset_dir, sha256)
            if member.paths.volume_dir and target == primary_target:
                continue
            jobs.append((member, target, self.member_session(member)))
        if not jobs:
            self.say("the other nodes read the dataset from the shared network volume")
            return

        def push(job: tuple[ClusterMember, str, Any]) -> Any:
            member, target, session = job
            return session.rsync([str(dataset_dir / f) for f in files], f":{target}/",
                                 extra=["--mkpath", "--copy-links", "--compress"])

        try:
            with concurrent.futures.ThreadPoolExecutor(max_workers=min(8, len(jobs))) as pool:
                moved = list(pool.map(push, jobs))
        except remote.TransferStopped:
            raise
        except remote.RemoteError:
            stopped = self.stopped_under_step(self._current_step)
            if stopped is not None:  # the cluster went, not SSH
                raise stopped from None
            raise
        for (member, _, _), transfer in zip(jobs, moved, strict=True):
            self.state.transfers.append(TransferRecord(
                f"push-dataset (rank {member.rank})", transfer.sent, transfer.received,
                round(transfer.seconds, 3), dataset_bytes=size))
        self.run.save()
        self.say(f"pushed the dataset to {len(jobs)} other node(s) of cluster "
                 f"{self.state.cluster.id} in parallel")

    def trains_on(self) -> str:
        return f"cluster {self.state.cluster.id} (its primary, pod {self.pod_id})"

    def _train(self, extra_args: str | None, *, reuse: bool, tried: bool) -> bool:
        """cycle_train.sh on every node at once (each starts its node's torchrun under the
        run's pod-side trainer lock); rank 0's log streams here. A node whose session drops is
        reconnected to (its trainer runs on, detached), up to TRAIN_REATTACH times. One node
        that fails or vanishes stops the others at once (clusters.Gang) and fails the step
        naming it. True when the primary followed a trainer of this run with other settings
        to its end (Cycle.train says so and keeps that training's settings)."""
        record = self.state.cluster
        dataset = self.state.dataset
        base = self.train_env(extra_args, reuse_finished=reuse)
        if reuse and tried:
            self._push_checkpoint(base)
        envs: dict[str, dict[str, str]] = {}
        for member in record.members:
            paths = self.member_paths(member)
            env = {**base, "CYCLE_NODE_RANK": str(member.rank)}
            if member.rank != 0:
                env.update(RUN_OUT=paths.out, RUNPOD_PHASE_TIMING_LOG=paths.timing_log,
                           DATASET_DIR=dataset_target(paths, Path(dataset.local),
                                                      dataset.sha256))
            envs[member.pod_id] = env
            self.member_session(member)  # every session is open before any node starts
        if reuse:
            self._agree_on_reuse(record, envs)
        codes: dict[int, int] = {}
        # Whether the primary's cycle_train.sh followed a trainer of this run started with
        # other settings (its model is rank 0's, so that training is the run's).
        followed_other = threading.Event()
        over = threading.Event()  # the gang ended: a node still reconnecting gives up

        def launch(member: ClusterMember, tap: clusters.LineTap) -> int:
            env = envs[member.pod_id]
            training_dir = self.member_paths(member).training_dir
            session = self.member_session(member)
            lost_at, what = 0, ""  # how many times the session was lost, and the last time
            while True:
                try:
                    if lost_at:
                        session = self._reach_again(member, over)
                        # Reached: its trainer still runs (or finished well), so a failure of
                        # another node is that node's own. If not, the attach below says how
                        # it ended and the gang holds this node for the lost one.
                        asked = self._train_action(session, member, "status", env)
                        if asked.exited != 3:  # 3: ended (an older image says 1 or 2)
                            gang.reconnected(member)
                        trainer = printable(asked.stdout.strip()) or "unknown"
                        self.say(f"node rank {member.rank} (pod {member.pod_id}) reached "
                                 f"again: its trainer {trainer}")
                        self.state.note(f"train: {what}; reconnected, its trainer {trainer}")
                    result = session.script("cycle_train.sh", env, hide=member.rank != 0,
                                            training_dir=training_dir)
                    break
                except remote.ConnectionLost as lost:
                    # The node's trainer runs on, detached, and the other nodes' with it: a
                    # new session follows it (cycle_train.sh attaches, or keeps what finished
                    # meanwhile), instead of a network blip costing the cluster's training.
                    # A failure of another node meanwhile waits for this reconnect (gang).
                    gang.connection_lost(member, lost.message)
                    lost_at += 1
                    # No API question first: it may be down too, and a node gone from the
                    # API is the gang's `vanished` check's, every few seconds.
                    if lost_at > TRAIN_REATTACH or over.is_set():
                        raise
                    what = (f"lost the SSH connection to node rank {member.rank} (pod "
                            f"{member.pod_id}) during train: {lost.message}")
                    self.say(f"{what}; its trainer runs on, detached: reconnecting to follow "
                             f"it ({lost_at} of {TRAIN_REATTACH})")
                    self._drop_session(member, over)
                    env = {**env, "REUSE_FINISHED": "1", "ATTACH_ONLY": "1"}
            tap.write(result.stdout + result.stderr)
            if member.rank == 0 and OTHER_SETTINGS_LINE in result.stdout + result.stderr:
                followed_other.set()
            codes[member.rank] = result.exited
            return result.exited

        def stop(member: ClusterMember) -> None:
            session = self._new_session(member, say=lambda _line: None)
            try:
                session.open(timeout=20)
                self._train_action(session, member, "stop", envs[member.pod_id])
            finally:
                session.close()

        def vanished() -> list[tuple[ClusterMember, str]]:
            try:
                pods = {p.id: p for p in self.client.cluster_pods(record.id)}
            except NotFound:
                return [(record.primary, "vanished: its cluster is gone from the API")]
            gone = []
            for member in record.members:
                pod = pods.get(member.pod_id)
                if pod is None:
                    gone.append((member, "vanished: its pod is gone from the API"))
                elif pod.status is not PodStatus.RUNNING:
                    gone.append((member, f"vanished: its pod is {pod.status}"))
            return gone

        def probe(member: ClusterMember) -> str | None:
            """Whether a node is gone when another failed: its sshd refuses connections
            (nothing listens: its container died), or its trainer vanished without an exit
            code. None otherwise: a node merely slow to answer (a busy host) is not named
            for another's failure, nor left uncollected."""
            session = self._new_session(member, say=lambda _line: None)
            try:
                session.open(timeout=clusters.PROBE_OPEN_SECONDS)
                asked = self._train_action(session, member, "status", envs[member.pod_id])
            except Exception as exc:  # noqa: BLE001 - only a refusal says it is gone
                if not getattr(exc, "refused", False):
                    return None
                return (f"cannot be reached ({printable(getattr(exc, 'message', str(exc)))}: "
                        "its pod died, or restarted)")
            finally:
                session.close()
            if asked.exited == 3 and "without an exit code" in asked.stdout:
                return "lost its trainer without an exit code (killed, or its pod restarted)"
            return None

        self.say(f"training on cluster {record.id}: {record.pod_count} nodes x "
                 f"{record.gpu_count_per_pod} trainer(s), world size {record.world_size}; "
                 "rank 0's log follows")
        started = time.monotonic()
        gang = clusters.Gang(record.members, launch, stop, vanished, say=self.say,
                             probe=probe)
        try:
            gang.run()
        except clusters.GangFailed as exc:
            over.set()  # before any close: a node thread then ends, never reconnects
            deleted = self._cluster_deleted_under("train")  # no node's failure
            if deleted is not None:
                raise deleted from None
            failure = exc.failure
            if not [line for line in failure.lines if line.strip()]:
                # A node whose SSH session died said nothing more here: its pod's own log
                # (RunPod's container log) is what is left of it.
                from podcycle.pods import last_log_lines

                failure.lines = last_log_lines(self.client, failure.pod_id,
                                               clusters.LAST_LINES)
            self.state.node_failures.append({**failure.as_dict(), "at": time.time()})
            self.state.note(exc.message)
            self.run.save()
            if codes.get(failure.rank) == RUN_FOLDER_OF_ANOTHER_RUN:
                # An earlier run of this id left its folder on the network volume: no node
                # trained, and that folder's model is not this run's to collect.
                member = record.member(failure.pod_id)
                raise self.other_runs_folder(
                    "train", self.member_paths(member) if member else None) from None
            if failure.rank == 0 and codes.get(0) == TRAIN_SMOKE_FAILED:
                # A TrainingFailed: the driver collects the primary's files (the model
                # too) before the delete, which takes the nodes' disks with it.
                failed = TrainingFailed("the model trained, but the remote infer_move smoke "
                                        "failed", "see the line above from the primary; the "
                                        "model is collected before the cluster is deleted "
                                        "(by full-smoke, or by inv cycle.collect / cycle.stop "
                                        "step by step; kept, if that collect fails)")
                failed.model_trained = True  # the driver keeps the cluster if it cannot
                raise failed from None
            if failure.lines:
                self.say(f"the last lines of node rank {failure.rank} (pod {failure.pod_id}):")
                for line in failure.lines[-clusters.LAST_LINES:]:
                    self.say(f"  {line}")
            # The primary answered (an exit code) or is not the node named: its checkpoint
            # can be collected before the delete.
            primary_alive = failure.rank != 0 or failure.answered
            if not primary_alive:
                self.close()
            error = ClusterNodeFailed(exc.message, exc.remedy, primary_alive=primary_alive)
            if codes.get(0) == 0:
                # The primary trained and its smoke passed: the model is on it, and only
                # there. A stop (or the driver) collects it before the cluster is deleted.
                error.model_trained = True
            raise error from None
        finally:
            over.set()
            self.state.train_remote_seconds = round(time.monotonic() - started, 3)
            self.run.save()
        return followed_other.is_set()

    def _train_action(self, session: Any, member: ClusterMember, action: str,
                      env: dict[str, str]) -> Any:
        """cycle_train.sh's TRAIN_ACTION (status, stop) on a node, for the run's folder
        there (`env`: the node's train env); no training settings, no DATASET_DIR: an
        older image without the action refuses it instead of starting a trainer."""
        return session.script("cycle_train.sh", {"TRAIN_ACTION": action,
                                                 "RUN_OUT": env["RUN_OUT"]}, hide=True,
                              training_dir=self.member_paths(member).training_dir)

    def _agree_on_reuse(self, record: ClusterRecord, envs: dict[str, dict[str, str]]) -> None:
        """A train that may keep a training the host never saw end: the primary's keeps or
        trains again (its model and settings decide), and every other node must do the same.
        One that kept its part while the primary trained again, or trained again while the
        primary kept, would leave the other waiting for it until the rendezvous timed out,
        on every try. The primary is asked (status, KEEPS=1): running, or finished for these
        settings with its model, and the others follow their trainers or keep what finished
        (ATTACH_ONLY); else they train again with it."""
        # A primary still running says nothing of the others (one's trainer may be gone, or
        # never started): they train again, which attaches to a trainer that runs and joins
        # the primary's rendezvous otherwise.
        keeps = self._primary_keeps(envs[record.primary.pod_id])
        for member in record.members:
            if member.rank != 0:
                envs[member.pod_id].update(REUSE_FINISHED="1" if keeps else "0",
                                           **({"ATTACH_ONLY": "1"} if keeps else {}))

    def _primary_keeps(self, env: dict[str, str]) -> bool:
        """Whether the primary's last trainer finished for the settings of `env` (the
        primary's train env), its model there: a train with REUSE_FINISHED keeps it."""
        primary = self.state.cluster.primary
        # The settings, not DATASET_DIR: an older image, whose cycle_train.sh has no status,
        # then refuses the call instead of starting a trainer (and the others train again).
        env = {k: v for k, v in env.items() if k != "DATASET_DIR"}
        asked = self.member_session(primary).script(
            "cycle_train.sh", {**env, "TRAIN_ACTION": "status", "KEEPS": "1"}, hide=True,
            training_dir=self.member_paths(primary).training_dir)
        return asked.exited == 0 and asked.stdout.strip() == "finished"

    def stopped_under_step(self, step: str) -> PodStoppedUnderStep | None:
        """A node lost or a transfer broken under the step: was the run's cluster deleted
        (its spend guard, a teammate)? Every node and the SSH connections went with it, which
        is neither SSH's fault nor a node's. Else what Cycle asks of the primary's pod."""
        return self._cluster_deleted_under(step) or super().stopped_under_step(step)

    def _cluster_deleted_under(self, step: str) -> PodStoppedUnderStep | None:
        """The run's cluster gone while the step ran: by its spend guard once the guard's
        time is up (every node's guard deletes the cluster at its deadline), else by someone
        else (inv cluster.delete, pod.leftovers --stop, the RunPod console). None: it is
        there, or RunPod cannot say."""
        record = self.state.cluster
        if record is None or record.deleted_at is not None:
            return None
        try:
            self.client.get_cluster(record.id)
            return None
        except NotFound:
            pass
        except PodCycleError:
            return None
        self.close()
        # Said, not recorded: one 404 may be RunPod's glitch. The run's own delete (its stop,
        # the driver's finally) reads it back and records it gone, or deletes it.
        again = (f"continue with {resume_hint(self.run.run_id)} (a new cluster"
                 + (")" if step != "train" else
                    "; the checkpoints on the network volume go on)"
                    if self.state.network_volume is not None else
                    "; its checkpoints went with this one, so it trains from epoch 1 unless "
                    "a checkpoint was brought home)"))
        if record.guard is not None and self._guard_due():
            record.guard.fired = True
            if self.state.pod is not None and self.state.pod.guard is not None:
                self.state.pod.guard.fired = True
            self.state.note(f"the spend guard deleted cluster {record.id} during {step}")
            self.run.save()
            return PodStoppedUnderStep(
                f"the spend guard deleted cluster {record.id} after {record.guard.minutes:g} "
                f"minute(s) ({record.guard.reason}), during {step}",
                f"{again}, or give a new run a larger --max-minutes / --max-cost")
        self.state.note(f"cluster {record.id} was deleted during {step}, not by this run")
        self.run.save()
        return PodStoppedUnderStep(
            f"cluster {record.id} was deleted during {step}, not by this run (its "
            f"{record.pod_count} nodes and their disks went with it, and the SSH connections "
            "with them): someone deleted it (inv cluster.delete, pod.leftovers --stop, the "
            "RunPod console)", again)

    def _member_endpoint(self, member: ClusterMember) -> remote.Endpoint:
        return remote.Endpoint(member.ssh_host or "", int(member.ssh_port or 22),
                               self.settings.ssh_user or member.ssh_user or "root", self.key())

    def _push_checkpoint(self, env: dict[str, str]) -> None:
        """A training of this run that a lost node ended left its last checkpoint at home
        (collected from the primary): the new primary gets it, and every rank resumes from
        its epoch (rank 0 loads it and broadcasts)."""
        local = self.run.run_artifacts / "checkpoint_last.pt"
        if not local.is_file() or self.paths().volume_dir:
            return  # none, or the checkpoint is on the run's network volume already
        # Never over the primary's own (a cluster that outlived the failure): it is as new.
        self._rsync([str(local)], f":{env['RUN_OUT']}/run_artifacts/",
                    extra=["--mkpath", "--ignore-existing"])
        env["TRAIN_RESUME"] = "auto"
        self.say(f"pushed the run's last checkpoint ({local}) to the new primary: training "
                 "resumes from its epoch")

    def rescue_checkpoint(self) -> str:
        """A training on the cluster interrupted (Ctrl-C): the deletion that follows takes the
        primary's disk and every epoch trained with it. Its last checkpoint comes home first,
        where a node failure's collect puts it, and --resume's new cluster starts from its
        epoch (_push_checkpoint). Returns what was done, in words."""
        paths = self.paths()
        if paths.volume_dir:
            return "the last checkpoint stays on the run's network volume"
        home = self.run.run_artifacts
        home.mkdir(parents=True, exist_ok=True)
        before = _mtime(home / "checkpoint_last.pt")
        # The trainer writes each checkpoint whole, then renames it: what is copied is one.
        self.session().rsync([f":{paths.out}/run_artifacts/checkpoint_last.pt"], f"{home}/",
                             extra=["--ignore-missing-args"])
        now = _mtime(home / "checkpoint_last.pt")
        if now is None:
            return "no checkpoint had been written yet (no epoch had ended): --resume " \
                "trains from the start"
        if now == before:  # the one pushed to this cluster at its resume: no epoch since
            return (f"the run's last checkpoint is the one already home "
                    f"({home / 'checkpoint_last.pt'}; no epoch ended on this cluster): "
                    "--resume trains on from its epoch")
        self.state.note("interrupted during train: the primary's last checkpoint was "
                        "brought home before the cluster was deleted")
        self.run.save()
        return (f"brought the primary's last checkpoint home ({home / 'checkpoint_last.pt'}): "
                "--resume trains on from its epoch")

    def delete_cluster(self) -> None:
        """Delete the run's cluster (podcycle.clusters.delete_cluster, the one path); one
        already gone is success. A failure is recorded loudly: every node may be billing."""
        self.close()
        record = self.state.cluster
        if record is None or record.deleted_at is not None:
            # None made yet, or the last one deleted: a create killed before it recorded
            # what it made (the first, or a replacement) left one of the run's name.
            self.delete_unrecorded_clusters()
            return
        try:
            outcome = clusters.delete_cluster(self.client, record.id)
        except clusters.DeleteFailed:
            record.delete_failed = True
            self.run.save()
            raise
        self._stop_sent = True
        self.state.record_cluster_deleted(time.time(), outcome)
        if outcome == "gone":
            self.state.note(f"cluster {record.id} was already gone at the end")
        else:
            self.state.note(f"deleted cluster {record.id} (every node and its disk)")
        self.run.save()
        self.say(f"cluster {record.id}: {outcome} (its {record.pod_count} nodes and their "
                 "disks; clusters cannot be stopped)")
        self.record_billing()
        # A replacement's create, killed (create_sent_at), or one given up on whose cluster
        # landed after the next start's wait: looked for at every delete, as a pod's stop does.
        self.delete_unrecorded_clusters()

    def stop_pod(self) -> None:
        """A cluster cannot be stopped: the run's cluster is deleted (every node and its
        disk), once."""
        self.delete_cluster()

    def rescue_before_stop(self) -> None:
        """Deleting the cluster deletes its disks: the run's model trained there and never
        collected (or a training the host lost, which may have finished since) is collected
        first. When that fails, the cluster is kept and this says why: inv cluster.delete
        --yes is the way to delete it with the model."""
        record = self.state.cluster
        if record is None or record.deleted_at is not None or self.state.pod is None:
            return
        holds = self.state.left_on(self.state.pod.id)
        if holds is None:
            return
        try:
            self.client.get_cluster(record.id)
        except NotFound:  # gone already (its spend guard, a teammate): nothing to collect
            return
        self.say(f"run {self.run.run_id}'s {holds} is only on cluster {record.id}: collecting "
                 "it before the cluster is deleted")
        try:
            if holds == "training":
                self._keep_finished_training()
            self.collect()
        except PodCycleError as exc:
            raise PodCycleError(
                f"cluster {record.id} not deleted (it bills on): run {self.run.run_id}'s "
                f"{holds} is only on it, and collecting it failed: {exc.message}",
                f"{exc.remedy + '; ' if exc.remedy else ''}or delete it with what is on it: "
                f"inv cluster.delete {record.id} --yes") from None

    def _keep_finished_training(self) -> None:
        """The run's training that the host lost (a cycle.train interrupted, or its
        connection gone) ran on, detached. One that finished since with the run's settings
        is kept as cycle.train keeps it (the primary's smoke runs), so the run says trained
        and a --resume does not pay for a new cluster to train it again. One still running,
        failed, or of other settings is left as it is: the collect after this says so, or
        brings its log home."""
        extra_args = self.keep_train_settings(None)
        if not self._primary_keeps(self.train_env(extra_args, reuse_finished=True)):
            return
        self.say("its training finished on the cluster after the host lost it: keeping it, "
                 "as inv cycle.train would")
        try:
            self.train(extra_args)
        except PodCycleError as exc:
            self.say(f"keeping it failed ({exc.message}): collecting what the primary holds")

    def _stop_unsaved(self) -> None:
        """Delete the recorded cluster without saving anything: the run's state cannot be
        written."""
        record = self.state.cluster
        if record is None or record.deleted_at is not None:
            return
        outcome = clusters.delete_cluster(self.client, record.id)
        self.say(f"cluster {record.id}: {outcome}; the run's state could not be saved, so "
                 "it does not say so")

    def _billed_amount(self, client: Any) -> float | None:
        """What RunPod billed for the run's clusters so far (/v2/billing/clusters): its
        current one, and those it had before."""
        cluster, earlier = self.state.cluster, self.state.replaced
        if not earlier:
            found = clusters.billed(client, cluster.id, since=cluster.created_at)
            return found["clusters"].get(cluster.id)
        found = clusters.billed(client, since=self.state.created_at)["clusters"]
        amounts = [found[i] for i in [*earlier, cluster.id] if i in found]
        return round(sum(amounts), 6) if amounts else None


def _mtime(path: Path) -> int | None:
    try:
        return path.stat().st_mtime_ns
    except OSError:
        return None
