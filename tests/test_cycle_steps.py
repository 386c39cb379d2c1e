"""The fast layer: each cycle step's logic in-process, in milliseconds, against a recording fake
of the SSH session (which pod-side script, with which env; which rsync) and a small in-memory
stand-in for the RunPod API. The end-to-end tests (test_cycle.py, test_run_state.py) drive
the same code against the real local RunPod, sshd and rsync."""

from __future__ import annotations

import json
import multiprocessing
import os
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import pytest

from podcycle import cycle as cycle_mod
from podcycle.backend import CPU_TRAINING, Backend
from podcycle.config import resolve
from podcycle.cycle import Cycle, StepFailed, open_run
from podcycle.errors import ConfigError, PodCycleError
from podcycle.pods import StopFailed, stop_pod
from podcycle.remote import ConnectionLost, Result, Transfer
from podcycle.runpod.errors import Conflict, Forbidden, NotFound, ServerError
from podcycle.runpod.models import Cluster, Pod
from podcycle.runs import PodRecord, RunBusy, RunFolder, RunState
from tests.conftest import ROOT, eventually

SMOKE = ROOT / "data" / "dataset" / "_smoke_runpod"
PATHS = ("repo=/w/repo\ntraining=/opt/training\ntiming_log=/w/repo/artifacts/timings/t.jsonl\n"
         "venv=/opt/venv\nvolume=\n")


def pod_json(pod_id: str = "pod1", status: str = "RUNNING", name: str = "pod-cycle-r1"
             ) -> dict[str, Any]:
    direct = {"host": "127.0.0.1", "port": 2222, "username": "root", "command": "ssh"}
    return {"id": pod_id, "name": name, "status": status, "gpu": {"id": "NVIDIA H200",
                                                                   "count": 1},
            "cloud": "SECURE", "cost": 3.59, "ports": ["22/tcp"],
            "ssh": {"direct": direct if status == "RUNNING" else None, "proxy": None}}


class FakeClient:
    """The RunPod API as a dict of pods (a stand-in: the real API cannot exist here)."""

    def __init__(self) -> None:
        self.pods: dict[str, dict[str, Any]] = {}
        self.actions: list[tuple[str, str]] = []
        self.fail_stop: list[Exception] = []
        self.billed: dict[str, float] = {}  # what /v2/billing/pods reports per pod
        self.billing_error: Exception | None = None
        self.clusters: dict[str, dict[str, Any]] = {}

    def hasty(self, timeout: float = 10.0) -> FakeClient:
        self.hasty_reads = getattr(self, "hasty_reads", 0) + 1  # a one-try read asked for
        return self

    def list_clusters(self) -> list[Cluster]:
        return [Cluster.from_api(c) for c in self.clusters.values()]

    def get_cluster(self, cluster_id: str, *, retry: bool = True) -> Cluster:
        if cluster_id not in self.clusters:
            raise NotFound("not found", status=404)
        return Cluster.from_api(self.clusters[cluster_id])

    def delete_cluster(self, cluster_id: str) -> None:
        if self.clusters.pop(cluster_id, None) is None:
            raise NotFound("not found", status=404)

    def cluster_pods(self, cluster_id: str, *, retry: bool = True) -> list[Pod]:
        if cluster_id not in self.clusters:
            raise NotFound("not found", status=404)
        return []  # members are not modelled here

    def get_pod(self, pod_id: str, *, retry: bool = True) -> Pod:
        if pod_id not in self.pods:
            raise NotFound("not found", status=404)
        return Pod.from_api(self.pods[pod_id])

    def list_pods(self) -> list[Pod]:
        return [Pod.from_api(p) for p in self.pods.values()]

    def find_pods_by_name(self, name: str) -> list[Pod]:
        return [Pod.from_api(p) for p in self.pods.values() if p["name"] == name]

    def pod_logs(self, pod_id: str, **query: Any) -> Iterator[Any]:
        return iter(())  # a pod that logged nothing (no spend guard line)

    def pod_billing(self, *, pod_id=None, start=None, end=None, bucket="day") -> dict:
        if self.billing_error:
            raise self.billing_error
        records = [{"podId": pid, "totalAmount": amount} for pid, amount in self.billed.items()
                   if pod_id in (None, pid)]
        return {"records": records, "metadata": {"query": {"startTime": start}}}

    def pod_action(self, pod_id: str, action: str) -> Pod | None:
        self.actions.append((pod_id, action))
        if action == "stop" and self.fail_stop:
            raise self.fail_stop.pop(0)
        pod = self.get_pod(pod_id)
        if action == "stop":
            if pod.status.value != "RUNNING":
                raise Conflict("cannot stop", status=409)
            self.pods[pod_id] = pod_json(pod_id, "EXITED", pod.name)
        if action == "start":
            self.pods[pod_id] = pod_json(pod_id, "RUNNING", pod.name)
        return self.get_pod(pod_id)


@dataclass
class Call:
    name: str
    env: dict[str, str]
    training_dir: str | None


@dataclass
class RecordingSession:
    """Records every pod-side script call and rsync; answers from `results`."""

    results: dict[str, Result] = field(default_factory=dict)
    scripts: list[Call] = field(default_factory=list)
    transfers: list[tuple[list[str], str, list[str]]] = field(default_factory=list)
    on_rsync: Any = None
    closed: bool = False
    endpoint: Any = None

    def attach(self, endpoint: Any) -> RecordingSession:
        self.endpoint = endpoint
        return self

    def open(self, timeout: float = 60.0) -> None:
        pass

    def script(self, name: str, env: dict[str, str] | None = None, *,
               training_dir: str | None = None, hide: bool = False) -> Result:
        self.scripts.append(Call(name, dict(env or {}), training_dir))
        answer = self.results.get(name, Result(0, "", ""))
        if isinstance(answer, Exception):
            raise answer
        return answer

    def rsync(self, sources: Any, dest: str, *, extra: list[str] | None = None,
              progress: Any = None, stop_when: Any = None) -> Transfer:
        from podcycle.remote import TransferStopped

        sources = [sources] if isinstance(sources, str) else list(sources)
        self.transfers.append((sources, dest, list(extra or [])))
        if self.on_rsync:
            self.on_rsync(sources, dest)
        reason = stop_when() if stop_when else None  # as the real one checks while it runs
        if reason:
            raise TransferStopped(reason)
        return Transfer(sent=123, received=45, seconds=0.01)

    def warm_master(self) -> None:
        pass

    def close(self) -> None:
        self.closed = True


def runpod_time(ts: float) -> str:
    """A moment as RunPod's createdAt gives it (UTC, whole seconds)."""
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ts))


def make_cycle(tmp_path: Path, *, client: FakeClient | None = None, run_id: str = "r1",
               env: dict[str, str] | None = None) -> tuple[Cycle, RecordingSession, FakeClient]:
    settings = resolve({}, {}, environ={"RUNPOD_CYCLE_RUN_ID": run_id,
                                        "POD_CYCLE_ARTIFACTS_DIR": str(tmp_path / "art"),
                                        **(env or {})}, use_keyring=False)
    client = client or FakeClient()
    client.pods.setdefault("pod1", pod_json())
    session = RecordingSession(results={"cycle_paths.sh": Result(0, PATHS, "")})
    backend = Backend("fake", "http://fake", client, "test", own_ssh_key=tmp_path / "key",
                      training_env=dict(CPU_TRAINING))
    run = open_run(settings, mode="start", announce=lambda _: None)
    if run.state.pod is None:
        run.state.set_pod(PodRecord(id="pod1", name="pod-cycle-r1", price_per_hour=3.59))
        run.save()
    cycle = Cycle(settings, run, announce=lambda _: None, backend=backend,
                  session_factory=lambda endpoint, *_: session.attach(endpoint))
    return cycle, session, client


def test_start_reuses_the_runs_live_pod_and_asks_for_its_paths(tmp_path: Path) -> None:
    cycle, session, client = make_cycle(tmp_path)
    cycle.start()
    assert client.actions == []  # neither created nor started again
    assert [(c.name, c.env, c.training_dir) for c in session.scripts] == [
        ("cycle_paths.sh", {}, None)]
    assert cycle.state.remote.out == "/w/repo/artifacts/runpod_cycles/r1"
    assert cycle.state.done("start") and cycle.state.pod.running_since is not None


def test_start_of_a_run_with_a_pod_says_which_placement_flags_cannot_apply(
        tmp_path: Path) -> None:
    """Hunt: `cycle.start -r RUN -g 'NVIDIA A100' --gpu-count 2 -c community` on a run whose
    pod exists said only "already has pod ..." (exit 0): the run went on on the pod's H200,
    the operator believing it had the GPUs asked for. Said in one warning, never refused (a
    --resume repeats the first command's flags); flags that match the pod say nothing."""
    for case, (env, named) in enumerate((
            ({"RUNPOD_GPU_TYPE_ID": "NVIDIA A100 80GB PCIe", "RUNPOD_GPU_COUNT": "2",
              "RUNPOD_CLOUD": "community"},
             ("RUNPOD_GPU_TYPE_ID 'NVIDIA A100 80GB PCIe'", "RUNPOD_GPU_COUNT 2",
              "RUNPOD_CLOUD community")),
            ({"RUNPOD_GPU_TYPE_ID": "NVIDIA H200", "RUNPOD_CLOUD": "all"}, ()),
            # Second read: a --resume repeating the first command's flags as the create took
            # them (any case, the catalog's display name) was told to terminate its pod.
            ({"RUNPOD_GPU_TYPE_ID": "h200", "RUNPOD_CLOUD": "SECURE",
              "RUNPOD_TEMPLATE_NAME": "pod-cycle-tpl"}, ()))):
        folder = tmp_path / str(case)
        cycle, _, client = make_cycle(folder, env=env)
        said: list[str] = []
        cycle.say = said.append
        cycle.start()
        assert client.actions == []
        warnings = [line for line in said if line.startswith("warning: run r1's pod pod1")]
        if not named:
            assert warnings == [], warnings
            continue
        assert len(warnings) == 1, said
        assert "was made with 1x NVIDIA H200, secure cloud: " in warnings[0]
        for flag in named:
            assert flag in warnings[0], (flag, warnings[0])
        assert "inv pod.terminate pod1 --yes" in warnings[0]


def test_start_restarts_a_stopped_pod_instead_of_creating_one(tmp_path: Path) -> None:
    client = FakeClient()
    client.pods["pod1"] = pod_json(status="EXITED")
    cycle, _, _ = make_cycle(tmp_path, client=client)
    cycle.state.pod.record_stop("stopped", 1000.0)  # as its last cycle.stop left it
    cycle.run.save()
    recorded: list[Any] = []
    start = client.pod_action

    def pod_action(pod_id: str, action: str) -> Any:
        # What a host killed from here on leaves on disk: a pod that may bill (a sweep's
        # park, leftovers), not one stopped at 1000.
        recorded.append(json.loads(cycle.run.state_path.read_text())["pod"]["stopped_at"])
        return start(pod_id, action)

    client.pod_action = pod_action
    cycle.start()
    assert client.actions == [("pod1", "start")] and recorded == [None]
    assert cycle.state.pod.id == "pod1" and cycle.state.pod.may_bill


class SteppedClock:
    """A stand-in for the time module in the modules that bill: time.time() is `now`, which
    a test moves on; everything else is the real module's."""

    def __init__(self, now: float) -> None:
        self.now = now

    def __getattr__(self, name: str) -> Any:
        return getattr(time, name)

    def time(self) -> float:
        return self.now


def test_a_pod_bills_from_its_start_while_it_boots_not_from_when_ssh_answers(
        tmp_path: Path, monkeypatch) -> None:
    """The billed time began when the pod answered SSH: a pod that booted for 10 minutes
    was estimated at none of them (RunPod, and the local RunPod, bill from the start), so
    runs.show and a sweep's budget read $0 for a booting pod and short after it."""
    from podcycle import report, runs
    from podcycle.report import estimate

    client = FakeClient()
    client.pods["pod1"] = pod_json(status="EXITED")
    cycle, _, _ = make_cycle(tmp_path, client=client)
    cycle.state.pod.record_stop("stopped", 1000.0)
    cycle.run.save()
    clock = SteppedClock(10_000.0)
    for module in (cycle_mod, runs, report):
        monkeypatch.setattr(module, "time", clock)
    seen_booting: list[float | None] = []
    ready = cycle_mod.provision.wait_ready

    def boots_ten_minutes(*args: Any, **kwargs: Any) -> Pod:
        clock.now += 600
        # What runs.show or a sweep reads from disk while the pod boots.
        seen_booting.append(estimate(RunFolder(cycle.settings.artifacts_dir, "r1").state))
        return ready(*args, **kwargs)

    monkeypatch.setattr(cycle_mod.provision, "wait_ready", boots_ten_minutes)
    cycle.start()
    pod = cycle.state.pod
    assert (pod.billing_since, pod.running_since) == (10_000.0, 10_600.0)
    assert seen_booting == [pytest.approx(3.59 * 600 / 3600, abs=1e-4)]
    clock.now += 60
    cycle.stop()
    assert pod.billed_seconds == 660 and pod.billing_since is None is pod.running_since
    assert estimate(cycle.state) == pytest.approx(3.59 * 660 / 3600, abs=1e-4)


def test_a_pod_stopped_unseen_while_it_booted_ends_that_bill_before_its_restart(
        tmp_path: Path, monkeypatch) -> None:
    """A host killed while its pod booted leaves the pod's bill open (billing_since, never
    seen to answer SSH); its spend guard then stopped it. The restart a day later kept that
    interval open, so the run was billed for the day the pod sat stopped. The interval now
    ends before the restart, at the latest the guard allowed (a boot within the ready
    timeout, then its minutes), the stop's time marked unknown; the restart opens anew."""
    from podcycle import report, runs
    from podcycle.runs import SpendGuard

    client = FakeClient()
    client.pods["pod1"] = pod_json(status="EXITED")
    cycle, _, _ = make_cycle(tmp_path, client=client, env={"RUNPOD_READY_TIMEOUT": "600"})
    record = cycle.state.pod
    record.billing_since = 10_000.0  # created; the host died before SSH answered
    record.guard = SpendGuard(minutes=10, reason="--max-minutes 10", max_minutes=10,
                              fired=True)
    cycle.run.save()
    clock = SteppedClock(10_000.0 + 86_400)
    for module in (cycle_mod, runs, report):
        monkeypatch.setattr(module, "time", clock)
    cycle.start()
    pod = cycle.state.pod
    assert pod.billed_seconds == 600 + 600  # its boot's bound, then the guard's 10 minutes
    assert cycle.state.stop_time_unknown
    assert pod.billing_since == clock.now and pod.running_since == clock.now
    clock.now += 60
    cycle.stop()
    assert pod.billed_seconds == 1200 + 60


def test_a_restart_runpod_refuses_leaves_the_pod_recorded_stopped(tmp_path: Path) -> None:
    """A stopped pod's start refused (no free GPU on its host, common for stopped pods):
    the pod is still stopped, and its record says so, not 'starting (may be billing)'."""
    client = FakeClient()
    client.pods["pod1"] = pod_json(status="EXITED")
    cycle, _, _ = make_cycle(tmp_path, client=client)
    cycle.state.pod.record_stop("stopped", 1000.0)
    cycle.run.save()

    def refused(pod_id: str, action: str) -> Any:
        raise Conflict("There are not enough free GPUs on the host machine", status=409)

    client.pod_action = refused
    with pytest.raises(Conflict):
        cycle.start()
    stored = json.loads(cycle.run.state_path.read_text())["pod"]
    assert stored["stopped_at"] == 1000.0 and not cycle.state.pod.may_bill
    assert stored["billing_since"] is None and stored["billed_seconds"] == 0  # none opened
    # Cut short otherwise (Ctrl-C, a lost answer, a 5xx), the start may have reached RunPod
    # and the pod turn RUNNING after one look: the record keeps saying it may bill.
    cycle.run.unlock()
    again, _, _ = make_cycle(tmp_path, client=client)

    def cut_short(pod_id: str, action: str) -> Any:
        raise ServerError("bad gateway", status=502)

    client.pod_action = cut_short
    with pytest.raises(ServerError):
        again.start()
    assert json.loads(again.run.state_path.read_text())["pod"]["stopped_at"] is None


def test_a_limit_given_again_is_never_silently_dropped_on_the_runs_pod(tmp_path: Path,
                                                                        capsys) -> None:
    """A pod's spend guard is set when it is made: --max-cost given to a run whose pod was
    made without one was ignored, the pod started and billed with no limit, and the report
    said to pass the flag just passed. A stopped pod is not started under a limit it does
    not keep; a running one is said to run under its own; the pod's own limit goes on."""
    from podcycle.runs import SpendGuard

    client = FakeClient()
    client.pods["pod1"] = pod_json(status="EXITED")
    cycle, _, _ = make_cycle(tmp_path, client=client, env={"RUNPOD_MAX_COST": "1"})
    with pytest.raises(StepFailed) as refused:
        cycle.start()
    assert client.actions == []  # not started: it would bill without the limit asked for
    assert refused.value.message == (
        "run r1's pod pod1 keeps no spend guard (it was made without one): a limit is set "
        "when the pod is made, so RUNPOD_MAX_COST cannot apply to it; it was not started")
    assert "inv pod.terminate pod1 --yes" in refused.value.remedy
    cycle.run.unlock()

    client.pods["pod1"] = pod_json(status="RUNNING")
    cycle, _, _ = make_cycle(tmp_path, client=client, env={"RUNPOD_MAX_MINUTES": "30"})
    cycle.say = print
    cycle.start()
    assert "warning: pod pod1 keeps no spend guard" in capsys.readouterr().out
    cycle.run.unlock()

    # The limit the pod was made with, given again: it simply goes on.
    cycle.state.pod.guard = SpendGuard(minutes=30, reason="--max-minutes 30", max_minutes=30)
    cycle.run.save()
    client.pods["pod1"] = pod_json(status="EXITED")
    cycle, _, _ = make_cycle(tmp_path, client=client, env={"RUNPOD_MAX_MINUTES": "30"})
    cycle.start()
    assert client.actions == [("pod1", "start")]

def resumed(tmp_path: Path, run_id: str, backend: Backend, session: RecordingSession
            ) -> list[str]:
    """`cycle.full-smoke --resume -r RUN_ID` of a run under tmp_path/art: what it said."""
    from podcycle.driver import full_smoke

    settings = resolve({}, {}, environ={"RUNPOD_CYCLE_RUN_ID": run_id,
                                        "POD_CYCLE_ARTIFACTS_DIR": str(tmp_path / "art")},
                       use_keyring=False)
    said: list[str] = []
    full_smoke(settings, dataset_dir=SMOKE, resume=True, announce=said.append,
               backend=backend, session_factory=lambda *a: session)
    return said


def test_a_refused_start_leaves_a_finished_run_finished_and_its_pod_stopped(
        tmp_path: Path) -> None:
    """`cycle.start --max-minutes 90` on a finished run whose pod is stopped is refused (the
    pod keeps the guard it was made with). The refusal was recorded as the start's failure:
    `runs.list` said the run failed, and `full-smoke --resume` booted the stopped pod again
    to redo the start (billed), then stopped it. A refusal changes nothing in the record."""
    from podcycle.driver import full_smoke
    from podcycle.runs import WORK_STEPS, StepRecord

    client = FakeClient()
    client.pods["pod1"] = pod_json(status="EXITED")
    cycle, session, _ = make_cycle(tmp_path, client=client)
    cycle.state.steps = {name: StepRecord("done") for name in WORK_STEPS}
    cycle.state.driver, cycle.state.outcome = "full-smoke", "ok"
    cycle.run.save()
    cycle.run.unlock()
    saved = json.loads(cycle.run.state_path.read_text())
    refused_cycle, _, _ = make_cycle(tmp_path, client=client,
                                     env={"RUNPOD_MAX_MINUTES": "90"})
    with pytest.raises(StepFailed) as refused:
        refused_cycle.start()
    assert refused.value.message.endswith("; it was not started")
    assert refused.value.exit_code == 2  # a refused setting, as the other refusals
    refused_cycle.run.unlock()
    after = json.loads(cycle.run.state_path.read_text())
    assert after["steps"] == saved["steps"] and after["driver"] == "full-smoke"
    assert after["outcome"] == "ok"

    said = resumed(tmp_path, "r1", refused_cycle.backend, session)
    assert any("nothing to do" in line for line in said), said
    assert client.actions == []  # the stopped pod was never booted again

    # Second read: on an unfinished run, the refusal inside full-smoke --resume still set the
    # run's outcome "failed" and sent its stopped pod a stop.
    record = json.loads(cycle.run.state_path.read_text())
    record["steps"].pop("collect")
    record["outcome"] = "interrupted"
    cycle.run.state_path.write_text(json.dumps(record))
    limited = resolve({}, {}, environ={"RUNPOD_CYCLE_RUN_ID": "r1", "RUNPOD_MAX_MINUTES": "90",
                                       "POD_CYCLE_ARTIFACTS_DIR": str(tmp_path / "art")},
                      use_keyring=False)
    said.clear()
    with pytest.raises(StepFailed) as refused:
        full_smoke(limited, dataset_dir=SMOKE, resume=True, announce=said.append,
                   backend=refused_cycle.backend, session_factory=lambda *a: session)
    assert refused.value.exit_code == 2 and client.actions == []
    assert json.loads(cycle.run.state_path.read_text()) == record
    assert not any("continue with" in line for line in said), said


def test_stop_stops_the_pod_and_counts_its_billed_time(tmp_path: Path) -> None:
    cycle, _, client = make_cycle(tmp_path)
    cycle.start()
    cycle.stop()
    assert client.actions == [("pod1", "stop")]
    pod = cycle.state.pod
    assert pod.running_since is None and pod.stopped_at and pod.billed_seconds > 0
    assert cycle.state.done("stop")


def test_cycle_stop_says_what_only_the_stopped_pods_disk_holds(tmp_path: Path) -> None:
    """`inv cycle.stop` after a train said only "pod X: stopped": nothing said the trained
    model (or a training the host lost) was on the pod's disk, not home, nor how to get it."""
    cycle, _, client = make_cycle(tmp_path)
    said: list[str] = []
    cycle.say = said.append
    pushed(cycle)
    cycle.train()
    cycle.stop(rescue=True)
    assert any("run r1's trained model stays on pod pod1's disk, not collected: "
               "RUNPOD_CYCLE_RUN_ID=r1 inv cycle.full-smoke --resume starts the pod again and "
               "collects it" in line for line in said), said
    said.clear()
    cycle.state.steps["train"].status = "interrupted"  # a Ctrl-C'd train: it ran on
    client.pods["pod1"] = pod_json()
    cycle.stop(rescue=True)
    assert any("run r1's training was not followed to its end (the host lost it): what it "
               "wrote stays on pod pod1's disk" in line for line in said), said
    said.clear()
    cycle.state.steps["train"].status = "done"  # and the pod terminated meanwhile
    client.pods.pop("pod1")
    cycle.stop(rescue=True)
    assert not any("stays on pod" in line for line in said), said
    assert any("run r1's trained model was only on pod pod1, which is gone (terminated): it "
               "went with the pod" in line for line in said), said
    said.clear()
    cycle.state.begin("collect")  # as a collect after the train leaves it: the model home
    cycle.state.end("collect", "done", 0.1)
    client.pods["pod1"] = pod_json()
    cycle.stop(rescue=True)
    assert not any("stays on pod" in line for line in said), said


def test_a_network_volume_runs_model_is_said_to_stay_on_its_volume(tmp_path: Path) -> None:
    """Hunt: cycle.stop of a run on a network volume said its trained model stayed "on pod
    X's disk (inv pod.terminate X --yes deletes it with the pod)": it is on the volume, which
    the terminate leaves, and which volume.delete deletes; and once the pod was gone it said
    the model "went with the pod", which --resume then collected from the volume."""
    from podcycle.runs import VolumeRef

    cycle, _, client = make_cycle(tmp_path)
    said: list[str] = []
    cycle.say = said.append
    cycle.state.network_volume = VolumeRef(id="vol1", name="v1", dataCenter="EU-RO-1")
    pushed(cycle)
    cycle.train()
    for gone in (False, True):
        if gone:
            client.pods.pop("pod1")
        else:
            client.pods["pod1"] = pod_json()
        said.clear()
        cycle.stop(rescue=True)
        assert any("run r1's trained model stays on network volume v1 (vol1), not collected: "
                   "RUNPOD_CYCLE_RUN_ID=r1 inv cycle.full-smoke --resume collects it (inv "
                   "volume.delete vol1 --yes deletes it with the volume)" in line
                   for line in said), said
        assert not any("pod1's disk" in line or "went with the pod" in line for line in said)
    assert cycle.state.left_on_volume() == "trained model"
    cycle.state.begin("collect")  # collected on another pod of the volume: home all the same
    cycle.state.steps["collect"].pod_id = "pod2"
    cycle.state.end("collect", "done", 0.1)
    assert cycle.state.left_on_volume() is None


def test_volume_delete_names_the_uncollected_model_on_it(tmp_path: Path) -> None:
    """Hunt: volume.delete of a volume holding a run's trained, uncollected model (its pod
    terminated, which pod.terminate rightly allows) refused only with "every file on it would
    be gone", and --yes deleted the model in silence."""
    from podcycle import leftovers
    from podcycle.runs import VolumeRef

    cycle, _, _ = make_cycle(tmp_path)
    cycle.state.network_volume = VolumeRef(id="vol1", name="v1", dataCenter="EU-RO-1")
    pushed(cycle)
    cycle.train()
    cycle.run.save()
    settings = cycle.settings
    assert leftovers.uncollected_model(settings, volume_id="vol1") == ("r1", "trained model")
    assert leftovers.uncollected_model(settings, volume_id="vol2") is None
    assert leftovers.uncollected_model(settings, pod_id="pod1") is None  # not on its disk
    assert leftovers.lost_with_volume_line(("r1", "trained model")) == (
        "run r1's trained model (not yet collected) went with the volume: run r1 cannot go on "
        "without it; a new run trains again (inv cycle.full-smoke)")


def test_pod_terminate_by_hand_is_recorded_in_the_pods_run(tmp_path: Path) -> None:
    """Hunt: after `inv pod.terminate ID --yes` of a run's running pod, runs.show said the pod
    was still running, its estimated cost rising on and on (pod.stop was recorded)."""
    from podcycle import leftovers

    cycle, _, _ = make_cycle(tmp_path)
    cycle.start()
    cycle.run.unlock()
    assert cycle.state.pod.may_bill
    terminated = {"outcome": "terminated", "by": "pod.terminate"}  # as pod.terminate says
    assert leftovers.record_stop_by_hand(cycle.settings, "pod9", **terminated) is None
    assert leftovers.record_stop_by_hand(cycle.settings, "pod1", **terminated) == "r1"
    state = RunFolder(cycle.settings.artifacts_dir, "r1").state
    assert not state.pod.may_bill and state.pod.stopped_at
    assert state.events[-1]["text"] == "pod pod1 terminated by pod.terminate"

    # Hunt (stop 54): a stopped pod (pod.stop, a --keep-pod run's) terminated said only
    # "terminated pod ...", and runs.show went on saying "stopped", as if it could start again.
    stopped_cycle, _, _ = make_cycle(tmp_path, run_id="r2")
    stopped_cycle.start()
    stopped_cycle.run.unlock()
    assert leftovers.record_stop_by_hand(stopped_cycle.settings, "pod1", "stopped") == "r2"
    stopped_at = RunFolder(cycle.settings.artifacts_dir, "r2").state.pod.stopped_at
    assert leftovers.record_stop_by_hand(cycle.settings, "pod1", **terminated) == "r2"
    state = RunFolder(cycle.settings.artifacts_dir, "r2").state
    assert state.pod.stopped_at == stopped_at  # when it stopped billing stands
    assert state.events[-1]["text"] == "pod pod1 terminated by pod.terminate"
    assert leftovers.record_stop_by_hand(cycle.settings, "pod1", **terminated) is None  # once
    # The note alone left runs.show's pod line at "stopped <time>": the pod record says it.
    from podcycle import history

    assert state.pod.terminated_at is not None and state.pod.terminated_at >= stopped_at
    shown = history.show_text(history.show(cycle.settings.artifacts_dir, "r2"))
    pod_line = next(line for line in shown.splitlines() if line.startswith("  pod "))
    assert ", terminated 20" in pod_line and pod_line.endswith("(its disk with it)")
    assert "stopped" not in pod_line
    from podcycle import report

    folder = RunFolder(cycle.settings.artifacts_dir, "r2")
    report.write(folder)
    assert "; terminated: 20" in folder.observations.read_text()


def pushed(cycle: Cycle) -> None:
    cycle.push_dataset(SMOKE)


def test_push_dataset_sends_only_the_dataset_files(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    for name in ("train.jsonl", "val.jsonl"):
        (data / name).write_bytes((SMOKE / name).read_bytes()[:2000].rsplit(b"\n", 1)[0] + b"\n")
    (data / "huge-stray.bin").write_bytes(b"x" * 10_000)
    (data / "notes").mkdir()
    cycle, session, _ = make_cycle(tmp_path)
    said: list[str] = []
    cycle.say = said.append
    cycle.push_dataset(data)
    assert [c.name for c in session.scripts] == ["cycle_paths.sh"]
    sources, dest, extra = session.transfers[-1]
    assert sources == [str(data / "train.jsonl"), str(data / "val.jsonl")]
    assert dest == ":/w/repo/data/dataset/data/"
    assert "--copy-links" in extra and "--mkpath" in extra
    assert any("not pushed" in line and "huge-stray.bin" in line and "notes/" in line
               for line in said)
    record = cycle.state.dataset
    assert record.bytes == sum((data / n).stat().st_size for n in ("train.jsonl", "val.jsonl"))
    assert record.pod_id == "pod1" and record.files == ["train.jsonl", "val.jsonl"]


def test_train_calls_one_pod_side_script_with_its_env(tmp_path: Path) -> None:
    cycle, session, _ = make_cycle(tmp_path, env={"TRAIN_EPOCHS": "7"})
    pushed(cycle)
    cycle.train("--lr 1e-3")
    call = session.scripts[-1]
    assert call.name == "cycle_train.sh" and call.training_dir == "/opt/training"
    assert call.env == {
        **CPU_TRAINING, "EPOCHS": "7", "TRAIN_EXTRA_ARGS": "--lr 1e-3",
        "RUN_OUT": "/w/repo/artifacts/runpod_cycles/r1",
        "RUN_TOKEN": f"r1@{cycle.state.created_at:.6f}",
        "DATASET_DIR": "/w/repo/data/dataset/_smoke_runpod",
        "DATASET_SHA256": cycle.state.dataset.sha256,
        "RUNPOD_PHASE_TIMING_LOG": "/w/repo/artifacts/timings/t.jsonl",
        "REUSE_FINISHED": "1"}
    assert cycle.state.done("train")
    # Asked again after it is done: a new training, not the finished one kept nor resumed.
    cycle.train()
    assert session.scripts[-1].env["REUSE_FINISHED"] == "0"
    assert "TRAIN_RESUME" not in session.scripts[-1].env


def test_a_later_train_or_resume_trains_as_the_run_was_started(tmp_path: Path) -> None:
    """The printed way on after a lost connection (inv cycle.train -r RUN, or full-smoke
    --resume) gave no -e: it trained the default epochs, and replaced a finished 8-epoch
    model with a 3-epoch one. The run's first train records its settings; a later train
    that does not give them again uses them; a flag given again wins."""
    cycle, session, _ = make_cycle(tmp_path, env={"TRAIN_EPOCHS": "8", "TRAIN_BLOCKS": "2"})
    pushed(cycle)
    cycle.train("--lr 1e-3")
    cycle.run.unlock()
    said: list[str] = []
    again, session, _ = make_cycle(tmp_path)  # a new process, no flags
    again.say = said.append
    again.train()
    env = session.scripts[-1].env
    assert (env["EPOCHS"], env["MODEL_BLOCKS"], env["TRAIN_EXTRA_ARGS"]) == ("8", "2",
                                                                              "--lr 1e-3")
    assert "train: as the run was started: epochs 8, blocks 2, extra args '--lr 1e-3' " \
           "(given again, a flag wins)" in said
    again.run.unlock()
    given, session, _ = make_cycle(tmp_path, env={"TRAIN_EPOCHS": "3"})
    given.train("--lr 3e-4")
    env = session.scripts[-1].env
    assert (env["EPOCHS"], env["MODEL_BLOCKS"], env["TRAIN_EXTRA_ARGS"]) == ("3", "2",
                                                                              "--lr 3e-4")
    assert given.state.train_settings.epochs == 3  # the next one trains as this one did
    given.run.unlock()
    # --train-extra-args "" clears the recorded ones, for this train and the next.
    cleared, session, _ = make_cycle(tmp_path)
    cleared.train("")
    assert "TRAIN_EXTRA_ARGS" not in session.scripts[-1].env
    cleared.run.unlock()
    later, session, _ = make_cycle(tmp_path)
    later.train()
    assert "TRAIN_EXTRA_ARGS" not in session.scripts[-1].env
    assert session.scripts[-1].env["EPOCHS"] == "3"


def test_a_push_without_a_dataset_sends_the_runs_own(tmp_path: Path) -> None:
    """full-smoke --resume as the hint prints it (no -d) pushed the default smoke set to a
    run started on another dataset, trained on it, and said ok."""
    cycle, _, _ = make_cycle(tmp_path)
    own = tmp_path / "own-set"
    own.mkdir()
    for name in ("train.jsonl", "val.jsonl"):
        (own / name).write_bytes((SMOKE / name).read_bytes())
    cycle.push_dataset(own)
    assert cycle.run_dataset(None) == own.resolve()
    assert cycle.run_dataset(SMOKE) == SMOKE  # one given wins
    cycle.push_dataset()
    assert cycle.state.dataset.local == str(own.resolve())


def test_model_size_settings_reach_the_preset(tmp_path: Path) -> None:
    cycle, session, _ = make_cycle(tmp_path, env={"TRAIN_BLOCKS": "1", "TRAIN_CHANNELS": "8"})
    pushed(cycle)
    cycle.train()
    env = session.scripts[-1].env
    assert (env["MODEL_BLOCKS"], env["MODEL_CHANNELS"]) == ("1", "8")  # over the CPU preset


def test_a_followed_training_of_other_settings_is_said_and_its_settings_kept(
        tmp_path: Path) -> None:
    """A resume with --epochs 3 while the run's 12-epoch trainer still ran on the pod
    followed that trainer and said ok as if its model were a 3-epoch one, and recorded 3
    epochs as the run's. cycle_train.sh now says when it followed a trainer started with
    other settings: the step says the model is that training's, and the run keeps the
    settings that trainer has."""
    cycle, session, _ = make_cycle(tmp_path, env={"TRAIN_EPOCHS": "12"})
    pushed(cycle)
    session.results["cycle_train.sh"] = ConnectionLost("the SSH connection broke (EOF)")
    with pytest.raises(cycle_mod.LostConnection):  # the host loses it; the trainer runs on
        cycle.train()
    assert cycle.state.train_settings.epochs == 12
    cycle.run.unlock()
    resumed, session, _ = make_cycle(tmp_path, env={"TRAIN_EPOCHS": "3"})
    said: list[str] = []
    resumed.say = said.append
    session.results["cycle_train.sh"] = Result(  # a log line: on stderr, as the pod's are
        0, "[train] epoch 12/12 ...\n", "[cycle_train] the trainer running on this pod was "
        "started with other settings than this train's (dataset, epochs, ...): following it "
        "to its end\n")
    resumed.train()
    assert session.scripts[-1].env["EPOCHS"] == "3"  # asked, and the pod told otherwise
    assert resumed.state.step("train").status == "done"
    assert resumed.state.train_settings.epochs == 12
    assert ("train: the trainer already running on pod pod1 was started with other settings "
            "(epochs 12) than this train's (epochs 3): followed it to its end, so the model is "
            "that training's; the run keeps its settings. Train again with the flags for a "
            "model of the new ones") in said
    resumed.run.unlock()
    # A difference the recorded settings do not hold (the dataset, the learning rate, the
    # device, the trainers: in the pod's key only) is said in words, not as two equal lists.
    def train_following(run_id: str = "r1") -> Cycle:
        """A train whose cycle_train.sh followed a trainer of other settings."""
        following, session, _ = make_cycle(tmp_path, run_id=run_id)
        if run_id != "r1":
            pushed(following)
        said.clear()
        following.say = said.append
        session.results["cycle_train.sh"] = Result(0, "", "[cycle_train] the trainer running "
                                                   "on this pod was started with other "
                                                   "settings than this train's (...)\n")
        following.train()
        return following

    same = train_following()
    assert any("was started with another dataset, learning rate, device or number of "
               "trainers than this train's: followed it to its end" in line for line in said)
    same.run.unlock()
    # Without that line (the trainer this train started, or one of its own settings), the
    # settings given are the run's, as before.
    given, session, _ = make_cycle(tmp_path, env={"TRAIN_EPOCHS": "5"})
    given.train()
    assert given.state.train_settings.epochs == 5
    given.run.unlock()
    # A trainer an older version started, which recorded no settings: a difference nobody
    # can know was claimed ("other settings (none recorded)") and a train again advised.
    older = train_following("older")
    assert said[-1] == ("train: the trainer already running on pod pod1 was started by a "
                        "train whose settings this run did not record (an older version's), "
                        "and may differ from this train's (the defaults): followed it to its "
                        "end, so the model is that training's")
    assert older.state.train_settings is None and older.state.step("train").status == "done"


@pytest.mark.parametrize("code, message", [
    (1, "training failed on the pod (exit code 1)"),
    # A trainer out of disk showed only this code on the host (torch's log: iostream error).
    (120, "training failed on the pod (exit code 120): its output could not be written at "
          "exit, the pod's disk may be full"),
    (87, "ended without an exit code"),
    # A full disk: the trainer could not write even its exit code, which read as a kill.
    (89, "training failed on the pod: its disk is full (the trainer could not write its "
         "checkpoint, log or exit code)"),
    (86, "remote infer_move smoke failed"),
])
def test_train_names_what_failed(tmp_path: Path, code: int, message: str) -> None:
    cycle, session, _ = make_cycle(tmp_path)
    pushed(cycle)
    session.results["cycle_train.sh"] = Result(code, "", "")
    with pytest.raises(StepFailed, match=re.escape(message)) as failure:
        cycle.train()
    assert "collected" not in failure.value.render()  # nothing was collected
    assert cycle.state.step("train").status == "failed"


def test_a_run_folder_an_earlier_run_of_the_id_left_is_neither_trained_nor_collected(
        tmp_path: Path) -> None:
    """A network volume outlives runs: a run made again under an earlier one's id (its
    local folder deleted) kept that run's finished model, or resumed its checkpoint, as its
    own, and a collect brought it home. The pod scripts are told the run (RUN_TOKEN: its id
    and when its folder was made) and refuse another run's folder with 90."""
    cycle, session, _ = make_cycle(tmp_path)
    pushed(cycle)
    token = f"r1@{cycle.state.created_at:.6f}"
    session.results["cycle_train.sh"] = Result(90, "", "made by another run of its id\n")
    with pytest.raises(StepFailed) as refused:
        cycle.train()
    assert session.scripts[-1].env["RUN_TOKEN"] == token
    out = "/w/repo/artifacts/runpod_cycles/r1"
    assert refused.value.message == (
        f"the run's folder on the pod, {out}, was made by an earlier run of the same id (r1): "
        "its checkpoint and model are not this run's, so train does not use it")
    assert refused.value.remedy == (
        "start this run again under another id (RUNPOD_CYCLE_RUN_ID), or, if that earlier "
        f"run is done with, remove its folder (inv pod.ssh pod1, then rm -rf {out}) and run "
        "train again")
    session.results["cycle_manifest.sh"] = Result(90, "", "")
    with pytest.raises(StepFailed, match="so collect does not use it"):
        cycle.collect()
    assert session.scripts[-1].env["RUN_TOKEN"] == token
    assert not cycle.run.collected.exists() or not any(cycle.run.collected.iterdir())


def test_a_lost_connection_is_reported_as_one_with_what_may_still_run(tmp_path: Path) -> None:
    cycle, session, _ = make_cycle(tmp_path)
    pushed(cycle)
    session.results["cycle_train.sh"] = ConnectionLost("the SSH connection broke (EOF)")
    with pytest.raises(cycle_mod.LostConnection) as lost:
        cycle.train()
    text = lost.value.render()
    assert "lost the SSH connection to pod pod1 during train" in text
    assert "training may still be running on the pod" in text and "attaches" in text
    assert "training failed" not in text
    session.results["cycle_manifest.sh"] = ConnectionLost("the SSH connection broke")
    with pytest.raises(cycle_mod.LostConnection, match="during collect"):
        cycle.collect()


@pytest.mark.parametrize("gone", [True, False])
def test_a_pod_stopped_under_a_step_ends_its_bill_in_the_runs_record(tmp_path: Path,
                                                                     gone: bool) -> None:
    """`inv pod.terminate` (or pod.stop) in another terminal while cycle.train ran: the step
    failed saying so, but the run's record kept the pod running, so runs.show said "still
    running" and its estimated cost rose on by the minute."""
    cycle, session, client = make_cycle(tmp_path)
    pushed(cycle)
    cycle.state.pod.running_since = time.time() - 600
    if gone:
        del client.pods["pod1"]
    else:
        client.pods["pod1"] = pod_json("pod1", "EXITED")
    session.results["cycle_train.sh"] = ConnectionLost("the SSH connection broke (EOF)")
    # A terminated pod is said terminated (hunt, stop 53), a stopped one stopped.
    with pytest.raises(cycle_mod.PodStoppedUnderStep, match="was terminated during train"
                       if gone else "was stopped during train"):
        cycle.train()
    cycle.run.reload()
    record = cycle.run.state.pod
    assert record.stopped_at and record.running_since is None and not record.may_bill
    assert record.billed_seconds == pytest.approx(600, abs=5)
    assert cycle.run.state.stop_time_unknown  # stopped some time before it was seen


@pytest.mark.parametrize("step", ["push-dataset", "collect"])
def test_a_pod_stopped_under_a_transfer_is_named_not_blamed_on_rsync(tmp_path: Path,
                                                                     step: str) -> None:
    """`inv pod.stop` in another terminal during push-dataset or collect: the step failed
    as "rsync ... failed (exit 20) ... check SSH to the pod works", where README promises a
    pod stopped under a step is reported as such."""
    from podcycle.remote import RemoteError

    cycle, session, client = make_cycle(tmp_path)
    if step == "collect":
        pushed(cycle)
        cycle.train()

    def stopped_meanwhile(sources: Any, dest: str) -> None:
        client.pods["pod1"] = pod_json("pod1", "EXITED")
        raise RemoteError("rsync :/out/ → /collected/ failed (exit 20): received SIGINT, "
                          "SIGTERM, or SIGHUP", "check SSH to the pod works (inv pod.ssh)")

    session.on_rsync = stopped_meanwhile
    with pytest.raises(cycle_mod.PodStoppedUnderStep,
                       match=f"pod pod1 was stopped during {step}, not by this run"):
        pushed(cycle) if step == "push-dataset" else cycle.collect()
    assert cycle.state.step(step).status == "failed" and not cycle.state.pod.may_bill
    # A transfer that fails with the pod running is rsync's failure, said as before.
    client.pods["pod1"] = pod_json("pod1")
    session.on_rsync = lambda *_: (_ for _ in ()).throw(RemoteError("rsync failed", "x"))
    with pytest.raises(RemoteError, match="rsync failed"):
        pushed(cycle) if step == "push-dataset" else cycle.collect()
    # Hunt: a pod terminated under the step was "stopped ... someone stopped it (inv
    # pod.stop ...)", sent to `inv pod.logs` of a pod that no longer exists.
    cycle.state.pod.running_since, cycle.state.pod.stopped_at = time.time(), None

    def terminated_meanwhile(sources: Any, dest: str) -> None:
        client.pods.pop("pod1", None)
        raise RemoteError("rsync failed (exit 255)", "check SSH to the pod works")

    session.on_rsync = terminated_meanwhile
    with pytest.raises(cycle_mod.PodStoppedUnderStep) as gone:
        pushed(cycle) if step == "push-dataset" else cycle.collect()
    assert gone.value.message.startswith(f"pod pod1 was terminated during {step}, not by this "
                                         "run (it is gone; ")
    assert "pod.logs" not in gone.value.remedy and "makes a new pod" in gone.value.remedy
    # Second read: a run on a network volume keeps its folder there.
    from podcycle.runs import VolumeRef

    cycle.state.network_volume = VolumeRef(id="vol1", name="v1", dataCenter="EU-RO-1")
    cycle.state.pod.running_since, cycle.state.pod.stopped_at = time.time(), None
    client.pods["pod1"] = pod_json("pod1")
    with pytest.raises(cycle_mod.PodStoppedUnderStep) as gone:
        pushed(cycle) if step == "push-dataset" else cycle.collect()
    assert "the run's folder is on network volume v1, which keeps it" in gone.value.message
    assert "what was on its disk" not in gone.value.message
    assert gone.value.remedy.endswith("(it makes a new pod and goes on from the volume)")


def test_a_pod_in_a_status_this_tool_does_not_know_is_not_recorded_stopped(
        tmp_path: Path) -> None:
    """A status newer than the tool (UNKNOWN here) is no stop: recorded as one, the run's
    pod no longer "may bill", and a sweep's park or leftovers would pass it by."""
    cycle, session, client = make_cycle(tmp_path)
    pushed(cycle)
    cycle.state.pod.running_since = time.time() - 600
    client.pods["pod1"] = pod_json("pod1", "HIBERNATING")
    session.results["cycle_train.sh"] = ConnectionLost("the SSH connection broke (EOF)")
    with pytest.raises(cycle_mod.PodStoppedUnderStep):
        cycle.train()
    cycle.run.reload()
    assert cycle.run.state.pod.may_bill and cycle.run.state.pod.stopped_at is None


def test_a_pod_stopped_while_the_train_reconnects_is_said_so(tmp_path: Path) -> None:
    """`inv pod.stop` mid-train: the pod still said RUNNING while it stopped, so the train
    reconnected, waited a minute for SSH, and ended "cannot open SSH ... check the pod is
    RUNNING" instead of naming the stop."""
    from podcycle.remote import RemoteError

    cycle, session, client = make_cycle(tmp_path)
    pushed(cycle)
    session.results["cycle_train.sh"] = ConnectionLost("the SSH connection broke (EOF)")

    def refuse() -> None:  # the reconnect: sshd is gone, and by now so is the pod
        client.pods["pod1"] = pod_json("pod1", "EXITED")
        raise RemoteError("cannot open SSH to root@127.0.0.1:2222: connection refused")

    cycle.close()
    session.open = refuse
    with pytest.raises(cycle_mod.PodStoppedUnderStep) as stopped:
        cycle.train()
    assert "pod pod1 was stopped during train, not by this run (it is now EXITED" in \
        stopped.value.message
    assert cycle.state.pod.stopped_at is not None


def test_a_connection_lost_during_train_reconnects_to_the_detached_trainer(tmp_path: Path
                                                                           ) -> None:
    """A one-second drop during full-smoke's train ended the step: the pod was stopped, the
    trainer with it, and --resume trained from epoch 1 (h1: epoch 5 of 12 thrown away). The
    trainer runs detached: the step reconnects and follows it (cycle_train.sh attaches, or
    keeps what finished meanwhile), a bounded number of times."""
    cycle, session, client = make_cycle(tmp_path, env={"TRAIN_EPOCHS": "12"})
    pushed(cycle)
    answers = [ConnectionLost("the SSH connection broke (EOF)"), Result(0, "", "")]
    recorded = session.script

    def flaky(name: str, env: dict[str, str] | None = None, **kwargs: Any) -> Result:
        if name == "cycle_train.sh":
            session.results[name] = answers.pop(0)
        return recorded(name, env, **kwargs)

    session.script = flaky
    said: list[str] = []
    cycle.say = said.append
    cycle.train()
    assert cycle.state.done("train")
    trains = [c for c in session.scripts if c.name == "cycle_train.sh"]
    assert len(trains) == 2 and trains[1].env["REUSE_FINISHED"] == "1"
    assert trains[1].env["ATTACH_ONLY"] == "1" and "ATTACH_ONLY" not in trains[0].env
    assert trains[1].env["EPOCHS"] == "12"  # the same training, so it attaches to it
    assert any("the trainer runs on, detached: reconnecting to follow it (1 of 3)" in line
               for line in said)
    # Hunt: the reconnect's wait for SSH asks the API whether the pod still runs (a pod
    # stopped under it answered "connection refused" for the whole half minute).
    assert session.abandon is not None and session.abandon() is False
    client.pods["pod1"] = pod_json("pod1", "STARTING")  # second read: not a stop
    assert session.abandon() is False
    client.pods["pod1"] = pod_json("pod1", "EXITED")
    assert session.abandon() is True


def lost_then_unreachable(cycle: Cycle, session: RecordingSession, refusals: int) -> list[str]:
    """The train's connection drops, then the next `refusals` SSH opens fail (a frozen sshd
    that takes the connection and never answers); the ones after open again."""
    from podcycle.remote import RemoteError

    answers = [ConnectionLost("the SSH connection broke (EOF)"), Result(0, "", "")]
    recorded, opened = session.script, []

    def flaky(name: str, env: dict[str, str] | None = None, **kwargs: Any) -> Result:
        if name == "cycle_train.sh":
            session.results[name] = answers.pop(0)
        return recorded(name, env, **kwargs)

    def reopen(timeout: float = 60.0) -> None:
        opened.append(timeout)
        if len(opened) > 1 and len(opened) <= refusals + 1:  # the first is the step's own
            error = RemoteError("cannot open SSH to root@127.0.0.1:2222: its sshd took the "
                                "connection but never answered within 20s (frozen, or the "
                                "pod overloaded)", "check the pod is RUNNING (inv pod.status)")
            error.pod_side = True  # as remote.connect marks it
            raise error

    session.script, session.open = flaky, reopen
    return opened


def test_a_reconnect_that_ssh_will_not_open_is_tried_again(tmp_path: Path) -> None:
    """The connection drops during train ("reconnecting to follow it (1 of 3)"), and the
    reconnect's SSH does not open within its minute (a frozen sshd, the network still down):
    the step ended there, after one of the three tries it had announced, and full-smoke
    stopped the pod and the trainer on it. A failed reconnect is one of the tries."""
    cycle, session, _ = make_cycle(tmp_path, env={"TRAIN_EPOCHS": "12"})
    pushed(cycle)
    cycle.close()
    opened = lost_then_unreachable(cycle, session, refusals=2)
    said: list[str] = []
    cycle.say = said.append
    cycle.train()
    assert cycle.state.done("train") and len(opened) == 4
    # Each reconnect waits half a minute for SSH, as a cluster node's: a minute each of
    # "connection refused" came before the API was asked whether the pod was stopped.
    assert opened == [60.0, 30.0, 30.0, 30.0]
    cycle.close()
    cycle.session()  # a later step's session waits its own minute again
    assert opened[-1] == 60.0
    trains = [c for c in session.scripts if c.name == "cycle_train.sh"]
    assert len(trains) == 2 and trains[1].env["ATTACH_ONLY"] == "1"
    assert any("never answered within 20s (frozen, or the pod overloaded)): trying again "
               "(3 of 3)" in line for line in said), said
    assert any("could not reach pod pod1 again" in e["text"] for e in cycle.state.events)


def test_a_reconnect_that_nothing_listens_for_ends_train_at_once(tmp_path: Path) -> None:
    """Nothing listened on the pod's SSH port throughout the reconnect's minute: its container
    is gone, and the trainer with it. No more tries (each a minute of the pod's billing)."""
    from podcycle.remote import RemoteError

    cycle, session, _ = make_cycle(tmp_path)
    pushed(cycle)
    cycle.close()
    opened = lost_then_unreachable(cycle, session, refusals=3)
    tried = session.open

    def refused(timeout: float = 60.0) -> None:
        try:
            tried(timeout)
        except RemoteError:
            error = RemoteError("cannot open SSH to root@127.0.0.1:2222: nothing listens on "
                                "that port (connection refused)")
            error.refused = error.pod_side = True
            raise error from None

    session.open = refused
    with pytest.raises(RemoteError, match="connection refused"):
        cycle.train()
    assert len(opened) == 2


def test_reconnects_that_all_fail_end_train_naming_the_tries(tmp_path: Path) -> None:
    cycle, session, _ = make_cycle(tmp_path)
    pushed(cycle)
    cycle.close()
    opened = lost_then_unreachable(cycle, session, refusals=3)
    with pytest.raises(cycle_mod.LostConnection) as lost:
        cycle.train()
    assert len(opened) == 4  # the step's own open and three tries, no more
    assert lost.value.message.startswith(
        "lost the SSH connection to pod pod1 during train, and 3 tries to reach it again "
        "failed: cannot open SSH to root@127.0.0.1:2222: its sshd took the connection")
    assert lost.value.remedy.startswith("training may still be running on the pod")
    assert cycle.state.step("train").status == "failed"


def test_full_smoke_that_stopped_the_pod_does_not_send_the_user_to_it(tmp_path: Path) -> None:
    """full-smoke stops the pod when a step fails; its error then said "check the pod is
    RUNNING" or "run inv cycle.train again to follow it" about a pod it had just stopped."""
    from podcycle.driver import full_smoke

    cycle, session, client = make_cycle(tmp_path, run_id="gone-quiet")
    cycle.start()
    pushed(cycle)
    cycle.close()
    cycle.run.unlock()
    lost_then_unreachable(cycle, session, refusals=3)
    settings = resolve({}, {}, environ={"RUNPOD_CYCLE_RUN_ID": "gone-quiet",
                                        "POD_CYCLE_ARTIFACTS_DIR": str(tmp_path / "art")},
                       use_keyring=False)
    said: list[str] = []
    with pytest.raises(cycle_mod.LostConnection) as lost:
        full_smoke(settings, dataset_dir=SMOKE, resume=True, announce=said.append,
                   backend=cycle.backend, session_factory=lambda *a: session)
    assert ("pod1", "stop") in client.actions
    assert lost.value.remedy == ("pod pod1 no longer runs, and what ran on it ended with it; "
                                 "continue with RUNPOD_CYCLE_RUN_ID=gone-quiet inv "
                                 "cycle.full-smoke --resume")
    assert "follow it" not in lost.value.render()


def test_a_reconnect_that_meets_a_changed_host_key_ends_train_at_once(tmp_path: Path
                                                                     ) -> None:
    """A host key that changed between two connections (someone in the middle, or another
    pod behind the address) was tried twice more within milliseconds and ended as "lost the
    SSH connection ... training may still be running": the interception warning was gone."""
    from podcycle import remote

    cycle, session, _ = make_cycle(tmp_path)
    pushed(cycle)
    cycle.close()
    opened = lost_then_unreachable(cycle, session, refusals=0)
    endpoint = remote.Endpoint("127.0.0.1", 2222, "root", tmp_path / "key")
    tried = session.open

    def changed(timeout: float = 60.0) -> None:
        tried(timeout)
        if len(opened) > 1:
            raise remote.host_key_changed(endpoint, tmp_path / "known_hosts")

    session.open = changed
    with pytest.raises(remote.RemoteError) as refused:
        cycle.train()
    assert "host key" in refused.value.message and len(opened) == 2


def test_full_smoke_keeps_a_remedy_that_holds_for_the_resume(tmp_path: Path) -> None:
    """full-smoke's stop replaced a key's refusal's remedy ("run the step with
    RUNPOD_SSH_KEY=...") with "continue with --resume", which then failed the same way."""
    from podcycle import remote
    from podcycle.driver import full_smoke

    cycle, session, client = make_cycle(tmp_path, run_id="wrong-key")
    cycle.start()
    pushed(cycle)
    cycle.close()
    cycle.run.unlock()
    answers = [ConnectionLost("the SSH connection broke (EOF)")]
    recorded, opened = session.script, []

    def flaky(name: str, env: dict[str, str] | None = None, **kwargs: Any) -> Result:
        if name == "cycle_train.sh" and answers:
            session.results[name] = answers.pop(0)
        return recorded(name, env, **kwargs)

    def reopen(timeout: float = 60.0) -> None:
        opened.append("try")
        if len(opened) > 1:
            raise remote.KeyRefused("SSH to root@127.0.0.1:2222 was refused: permission "
                                    "denied (publickey) for key /k", "run the step with "
                                    "RUNPOD_SSH_KEY=/made-for")

    session.script, session.open = flaky, reopen
    settings = resolve({}, {}, environ={"RUNPOD_CYCLE_RUN_ID": "wrong-key",
                                        "POD_CYCLE_ARTIFACTS_DIR": str(tmp_path / "art")},
                       use_keyring=False)
    with pytest.raises(remote.KeyRefused) as refused:
        full_smoke(settings, dataset_dir=SMOKE, resume=True, announce=lambda _: None,
                   backend=cycle.backend, session_factory=lambda *a: session)
    assert ("pod1", "stop") in client.actions
    assert refused.value.remedy == "run the step with RUNPOD_SSH_KEY=/made-for"


def test_a_key_the_runs_pod_refuses_is_told_the_key_the_pod_was_made_for(tmp_path: Path
                                                                         ) -> None:
    """A step run with another RUNPOD_SSH_KEY than the pod was made for (a new shell without
    the export) was told to register that key's .pub; registered, it was refused all the
    same (a pod takes the keys of its create), and api.doctor said the key was fine."""
    from podcycle.remote import KeyRefused

    cycle, session, _ = make_cycle(tmp_path)
    cycle.state.pod.ssh_key = "/home/me/.ssh/pod-cycle"  # what its start recorded
    cycle.run.save()

    def refuse(timeout: float = 60.0) -> None:
        raise KeyRefused("SSH to root@127.0.0.1:2222 was refused: permission denied "
                         f"(publickey) for key {tmp_path / 'key'}",
                         "register that key's .pub on the account (inv api.doctor "
                         "--register-ssh-key) before creating the pod")

    session.open = refuse
    with pytest.raises(KeyRefused) as refused:
        cycle.paths()
    assert refused.value.remedy == (
        "pod pod1 was made for the key /home/me/.ssh/pod-cycle: run the step with "
        "RUNPOD_SSH_KEY=/home/me/.ssh/pod-cycle (a key registered since is let in only by "
        "pods made after it)")
    cycle.state.pod.ssh_key = str(tmp_path / "key")  # the same key: the remedy as it was
    cycle.close()
    with pytest.raises(KeyRefused) as refused:
        cycle.paths()
    assert refused.value.remedy.startswith("register that key's .pub")


def test_pod_ssh_refused_names_the_key_the_runs_pod_was_made_for(tmp_path: Path) -> None:
    """pod.ssh in a shell without the run's RUNPOD_SSH_KEY export: its pod refused the
    default key, and the remedy said only "the key the pod was made with" while the run's
    record names it (as a step's refusal does)."""
    from podcycle import pods
    from podcycle.runpod.models import Pod

    cycle, _, _ = make_cycle(tmp_path)
    art = cycle.settings.artifacts_dir
    assert pods.recorded_key(art, "pod1") is None  # recorded before keys were kept
    cycle.state.pod.ssh_key = "/home/me/.ssh/pod cycle"
    cycle.run.save()
    assert pods.recorded_key(art, "pod1") == ("r1", "/home/me/.ssh/pod cycle")
    assert pods.recorded_key(art, "pod9") is None
    pod = Pod.from_api(pod_json("pod1"))
    where = {"user": "root", "host": "127.0.0.1", "port": 2222, "known_hosts": tmp_path / "kh",
             "made_for": lambda: pods.recorded_key(art, "pod1")}
    refused = pods.ssh_failure(pod, 255, "root@127.0.0.1: Permission denied (publickey).",
                               key=Path("/home/me/.ssh/id_ed25519"), **where)
    assert refused.remedy.startswith(
        "run r1 made it for the key /home/me/.ssh/pod cycle: RUNPOD_SSH_KEY='/home/me/.ssh/pod "
        "cycle' inv pod.ssh pod1; a key registered later")
    same = pods.ssh_failure(pod, 255, "root@127.0.0.1: Permission denied (publickey).",
                            key=Path("/home/me/.ssh/pod cycle"), **where)
    assert same.remedy.startswith("give pod.ssh the key the pod was made with")


def test_a_pod_the_run_creates_records_the_key_it_was_made_for(tmp_path: Path,
                                                               monkeypatch) -> None:
    cycle, _, client = make_cycle(tmp_path)
    del client.pods["pod1"]
    cycle.state.pod = None

    def provision_pod(backend, settings, *, key_path, record, **kwargs):
        from types import SimpleNamespace

        from podcycle.runpod.models import Pod

        client.pods["pod2"] = pod_json("pod2")
        made = SimpleNamespace(pod=Pod.from_api(client.pods["pod2"]), offer=None,
                               template={"name": "t"}, volume=None, guard=None, gpu_id="g",
                               cloud="secure", record=lambda backend: {"id": "pod2"})
        record(made)
        return made

    monkeypatch.setattr(cycle_mod.provision, "provision_pod", provision_pod)
    cycle._provision()
    assert cycle.state.pod.id == "pod2" and cycle.state.pod.ssh_key == str(tmp_path / "key")


def test_train_needs_the_dataset_on_this_pod(tmp_path: Path) -> None:
    cycle, _, _ = make_cycle(tmp_path)
    with pytest.raises(StepFailed, match="no dataset was pushed") as refused:
        cycle.train()
    assert refused.value.remedy == "run inv cycle.push-dataset -r r1 first"  # this run's


def test_collect_builds_the_manifest_on_the_pod_and_verifies_it(tmp_path: Path) -> None:
    cycle, session, _ = make_cycle(tmp_path)

    def land(sources: list[str], dest: str) -> None:  # what rsync would bring home
        folder = Path(dest)
        (folder / "run_artifacts").mkdir(parents=True, exist_ok=True)
        (folder / "run_artifacts" / "model.pt").write_bytes(b"weights")
        import hashlib

        digest = hashlib.sha256(b"weights").hexdigest()
        (folder / "MANIFEST.sha256").write_text(f"{digest}  run_artifacts/model.pt\n")

    session.on_rsync = land
    cycle.collect()
    call = session.scripts[-1]
    assert call.name == "cycle_manifest.sh"
    assert call.env == {"RUN_OUT": "/w/repo/artifacts/runpod_cycles/r1",
                        "RUN_TOKEN": f"r1@{cycle.state.created_at:.6f}",
                        "RUNPOD_PHASE_TIMING_LOG": "/w/repo/artifacts/timings/t.jsonl"}
    sources, dest, extra = session.transfers[-1]
    assert sources == [":/w/repo/artifacts/runpod_cycles/r1/"]
    assert extra == ["--exclude", "/.control/"]
    session.results["cycle_manifest.sh"] = Result(3, "", "")
    with pytest.raises(StepFailed, match="still running on the pod"):
        cycle.collect()
    # More than the host's disk holds (a huge checkpoint, a pod's sparse file of terabytes):
    # refused before a byte moves, with where to put it instead.
    moved = len(session.transfers)
    session.results["cycle_manifest.sh"] = Result(0, f"bytes={10 ** 18}\n", "")
    with pytest.raises(StepFailed, match=r"collect would bring 1000000 TB home") as full:
        cycle.collect()
    assert "POD_CYCLE_ARTIFACTS_DIR" in full.value.remedy
    # The run's record goes with its folder (only a new artifacts dir: "no run 'r1'"), and
    # --resume starts a pod full-smoke had stopped (cycle.collect refused an EXITED one).
    assert f"move the run folder {cycle.run.path}" in full.value.remedy
    assert "inv cycle.full-smoke --resume" in full.value.remedy
    assert len(session.transfers) == moved
    # A small run on a nearly full disk said "would bring 0.00 GB home ... has 0.00 GB free".
    assert [cycle_mod._size(n) for n in (512, 1536, 42_000_000, 1_530_000_000, 15.3e9)] == [
        "512 bytes", "1.54 kB", "42.0 MB", "1.53 GB", "15.3 GB"]


def test_a_pod_that_sends_more_than_it_declared_is_stopped_before_the_disk_fills(
        tmp_path: Path, monkeypatch) -> None:
    """bytes=N is the pod's own word: a pod that lies (or a file growing on it) must not
    fill the operator's disk. The transfer is checked while it runs and stopped once the
    disk is down to half the reserve. The host's disk cannot be filled in a test: its free
    space is what shutil.disk_usage says here, low from the moment the transfer starts."""
    import shutil as real_shutil

    from podcycle import cycle as cycle_module

    cycle, session, _ = make_cycle(tmp_path)
    session.results["cycle_manifest.sh"] = Result(0, "bytes=1000\n", "")
    disk = real_shutil.disk_usage(tmp_path)
    free = [10 ** 12]
    monkeypatch.setattr(cycle_module.shutil, "disk_usage",
                        lambda path: disk._replace(free=free[0]))
    session.on_rsync = lambda sources, dest: free.__setitem__(0, 200_000_000)
    with pytest.raises(StepFailed) as stopped:
        cycle.collect()
    assert stopped.value.message.startswith("collect stopped: ")
    assert "disk is down to 200 MB free, under the 500 MB kept spare (the pod declared " \
           "1,000 bytes)" in stopped.value.message
    assert "sent more than it said" in stopped.value.remedy
    # An honest transfer, with the disk as it was, is never stopped.
    free[0] = 10 ** 12
    session.on_rsync = None
    assert cycle._disk_filling(1000) is None


def test_a_stopped_pull_keeps_no_half_written_file(tmp_path: Path) -> None:
    """Real rsync between two local folders, slowed down, stopped by its guard: the
    unfinished file waits in the partial folder (never among the collected files) and is
    removed with it."""
    from podcycle.remote import PARTIAL_DIR, TransferStopped, _remove_partials, _run_rsync

    (tmp_path / "src" / "run_artifacts").mkdir(parents=True)
    (tmp_path / "src" / "run_artifacts" / "model.pt").write_bytes(os.urandom(4_000_000))
    dst = tmp_path / "dst"

    def arrived() -> int:
        return sum(p.stat().st_size for p in dst.rglob("*") if p.is_file()) \
            if dst.exists() else 0

    with pytest.raises(TransferStopped, match="too much"):
        _run_rsync(["rsync", "-a", "--stats", f"--partial-dir={PARTIAL_DIR}", "--bwlimit=2000",
                    f"{tmp_path}/src/", f"{dst}/"], None, check_every=0.05,
                   stop_when=lambda: "too much" if arrived() > 100_000 else None)
    assert not (dst / "run_artifacts" / "model.pt").exists()
    _remove_partials(dst)
    assert arrived() == 0, [str(p) for p in dst.rglob("*")]


@pytest.mark.parametrize(("line", "problem"), [
    ("{digest}  ../outside.txt", "'../outside.txt' is outside the collected folder"),
    ("{digest}  /etc/hostname", "'/etc/hostname' is outside the collected folder"),
    ("{digest}  run_artifacts/link.pt", "run_artifacts/link.pt is not a regular file"),
    ("{digest}  run_artifacts/gone.pt", "run_artifacts/gone.pt is missing"),
    ("justonefield", "manifest line 'justonefield' is not 'SHA256  NAME'"),
    # A name that would retitle the terminal from the step's error (state.json, runs.show).
    ("{digest}  run_artifacts/\x1b]0;OWNED\x07x", "run_artifacts/\\x1b]0;OWNED\\x07x is missing"),
])
def test_a_manifest_from_a_hostile_pod_never_reaches_outside(tmp_path: Path, line: str,
                                                               problem: str) -> None:
    """The manifest is written on the pod: a name outside the collected folder, a symlink
    to a host file (its sha256 the pod could compute from a copy), or a line of the wrong
    shape fails the check naming it, never a traceback, never a host file called verified."""
    import hashlib

    from podcycle.validation import verify_manifest

    collected = tmp_path / "collected"
    (collected / "run_artifacts").mkdir(parents=True)
    outside = tmp_path / "outside.txt"
    outside.write_bytes(b"host")
    (collected / "run_artifacts" / "link.pt").symlink_to(outside)
    digest = hashlib.sha256(b"host").hexdigest()
    (collected / "MANIFEST.sha256").write_text(line.format(digest=digest) + "\n")
    with pytest.raises(StepFailed) as failed:
        verify_manifest(collected)
    assert problem in failed.value.message


def test_the_loss_curve_is_drawn_once_per_collected_metrics(tmp_path: Path) -> None:
    """Drawn when a collect brings metrics home, kept by the later reports (stop, the end of
    a full-smoke), and drawn again when a resumed run collects new metrics."""
    import hashlib

    from podcycle import report

    cycle, session, _ = make_cycle(tmp_path)

    def metrics(epochs: int) -> bytes:
        rows = [{"epoch": e, "train_loss": 3.0 - e / 10, "val_loss": 3.1 - e / 10,
                 "val_top1": 0.1 * e} for e in range(1, epochs + 1)]
        return json.dumps({"epochs": rows, "final": rows[-1]}).encode()

    def landing(data: bytes):
        def land(sources: list[str], dest: str) -> None:
            folder = Path(dest) / "run_artifacts"
            folder.mkdir(parents=True, exist_ok=True)
            (folder / "metrics.json").write_bytes(data)
            (Path(dest) / "MANIFEST.sha256").write_text(
                f"{hashlib.sha256(data).hexdigest()}  run_artifacts/metrics.json\n")
        return land

    session.on_rsync = landing(metrics(2))
    cycle.collect()
    curve = cycle.run.loss_curve
    assert curve.read_bytes().startswith(b"\x89PNG")
    curve.write_bytes(b"drawn from the collected metrics")  # a marker: redrawn or not
    report.write(cycle.run)  # as cycle.stop and the end of a full-smoke do
    assert curve.read_bytes() == b"drawn from the collected metrics"
    assert "![loss curve](loss_curve.png)" in cycle.run.observations.read_text()
    session.on_rsync = landing(metrics(3))  # a resumed run trained on and collects again
    cycle.collect()
    assert curve.read_bytes().startswith(b"\x89PNG")


@pytest.mark.parametrize("metrics", [
    b"[" * 100_000 + b"]" * 100_000,  # deeper than Python's stack: RecursionError
    json.dumps({"epochs": [{"epoch": 1, "train_loss": 2.0, "val_loss": "x", "val_top1": "y"}],
                "final": {"epoch": "one", "val_top1": "high"}}).encode(),
    json.dumps({"epochs": [{"epoch": 1, "train_loss": 2.0, "val_loss": 2.1, "val_top1": 0.2}],
                "final": {"epoch": 1, "train_loss": 2.0, "val_loss": 2.1, "val_top1": 0.2},
                "device": "cpu\x1b]52;c;ZWNobw==\x07", "gpu": "\x1b[2J"}).encode(),
])
def test_a_hostile_metrics_file_never_breaks_a_step_or_reaches_the_terminal(
        tmp_path: Path, metrics: bytes) -> None:
    """metrics.json and the timing log come from the pod. A JSON nested 100,000 deep, or
    strings where numbers belong, ended collect, local-validate and stop in tracebacks after
    each step was recorded done; escape sequences in its device or GPU reached the report
    (and the terminal that cats it)."""
    import hashlib

    cycle, session, _ = make_cycle(tmp_path)
    timing = b'{"phase": "train", "event": "end", "elapsed_s": "soon"}\n' + b"[" * 50_000

    def land(sources: list[str], dest: str) -> None:
        folder = Path(dest)
        (folder / "run_artifacts").mkdir(parents=True, exist_ok=True)
        (folder / "timings").mkdir(exist_ok=True)
        (folder / "run_artifacts" / "metrics.json").write_bytes(metrics)
        (folder / "timings" / "t.jsonl").write_bytes(timing)
        (folder / "MANIFEST.sha256").write_text(
            f"{hashlib.sha256(metrics).hexdigest()}  run_artifacts/metrics.json\n"
            f"{hashlib.sha256(timing).hexdigest()}  timings/t.jsonl\n")

    session.on_rsync = land
    cycle.collect()  # writes the report, as every step does
    cycle.stop()
    assert cycle.state.steps["collect"].status == "done"
    text = cycle.run.observations.read_text()
    assert "\x1b" not in text and "\x07" not in text
    if b"device" in metrics:
        assert "- device: cpu\\x1b]52;c;ZWNobw==\\x07 \\x1b[2J" in text


def test_local_validate_needs_no_pod_and_refuses_tampered_files(tmp_path: Path) -> None:
    cycle, session, client = make_cycle(tmp_path)
    cycle.run.collected.mkdir(parents=True)
    (cycle.run.collected / "MANIFEST.sha256").write_text("00  run_artifacts/model.pt\n")
    with pytest.raises(StepFailed, match="model.pt is missing"):
        cycle.local_validate()
    assert session.scripts == [] and client.actions == []
    # A model the manifest leaves out was never checked: an empty manifest passed, and the
    # file was loaded as the run's model.
    (cycle.run.run_artifacts).mkdir()
    (cycle.run.run_artifacts / "model.pt").write_bytes(b"not checked")
    (cycle.run.collected / "MANIFEST.sha256").write_text("")
    with pytest.raises(StepFailed, match="run_artifacts/model.pt is not in the manifest of "
                                         "the last collect") as unlisted:
        cycle.local_validate()
    assert "inv cycle.train" in unlisted.value.remedy  # collecting again brings no model


def test_local_validate_before_anything_was_trained_asks_for_the_train(tmp_path: Path
                                                                      ) -> None:
    """cycle.local-validate on a run only started said "no manifest ... run inv
    cycle.collect", and a collect then found nothing trained: the train comes first."""
    cycle, _, _ = make_cycle(tmp_path)
    cycle.start()
    with pytest.raises(StepFailed) as refused:
        cycle.local_validate()
    assert refused.value.message.startswith("no collected model at ")
    assert refused.value.message.endswith("run r1 has not trained (its train step is "
                                          "pending)")
    assert refused.value.remedy == "run inv cycle.train -r r1, then inv cycle.collect -r r1"
    # Trained, not collected: the collect is what is missing.
    cycle.state.end("train", "done", 1.0)
    cycle.state.steps["train"].pod_id = cycle.state.pod.id
    with pytest.raises(StepFailed, match="no manifest at ") as uncollected:
        cycle.local_validate()
    assert uncollected.value.remedy == "run inv cycle.collect"


@pytest.mark.parametrize("collect", ["failed", "outdated", "interrupted"])
def test_local_validate_refuses_files_a_failed_or_outdated_collect_left(tmp_path: Path,
                                                                        collect: str) -> None:
    """train ran again, then its collect failed: local-validate checked the earlier model's
    files (their manifest intact), said done, and runs.show showed the old numbers."""
    from podcycle.runs import StepRecord

    cycle, _, _ = make_cycle(tmp_path)
    cycle.state.steps["collect"] = StepRecord(collect)
    with pytest.raises(StepFailed) as refused:
        cycle.local_validate()
    assert refused.value.message.startswith(f"the run's last collect is {collect}")
    assert refused.value.remedy == "run inv cycle.collect -r r1 first"
    assert cycle.state.step("local-validate").status == "pending"


def test_a_step_cut_short_by_a_killed_process_is_said_so(tmp_path: Path) -> None:
    """Hunt: after a `kill -9`'d collect, local-validate said "the run's last collect is
    running" (nothing ran it); after a `kill -9`'d second push, train said "no dataset was
    pushed to this run's pod" while runs.show listed the first push."""
    from podcycle.runs import StepRecord

    cycle, _, _ = make_cycle(tmp_path)
    cycle.state.steps["collect"] = StepRecord("running")
    with pytest.raises(StepFailed) as refused:
        cycle.local_validate()
    assert refused.value.message.startswith("the run's last collect was cut short (its "
                                            "process ended mid-way)")
    pushed(cycle)
    cycle.state.steps["push-dataset"] = StepRecord("running")
    with pytest.raises(StepFailed) as refused:
        cycle.train()
    assert refused.value.message == ("the run's last push-dataset was cut short (its process "
                                     "ended mid-way)")
    assert refused.value.remedy == "run inv cycle.push-dataset -r r1 first"
    cycle.state.steps.pop("push-dataset")
    cycle.state.dataset = None
    with pytest.raises(StepFailed) as never:
        cycle.train()
    assert never.value.message == "no dataset was pushed to this run's pod"


def test_a_new_pod_invalidates_what_lived_on_the_old_one() -> None:
    state = RunState("r1")
    state.set_pod(PodRecord(id="a"))
    for name in ("start", "push-dataset", "train"):
        state.begin(name)
        state.end(name, "done", 1.0)
    assert state.pending() == ["collect", "local-validate"]
    state.set_pod(PodRecord(id="b"))
    assert state.pending() == ["push-dataset", "train", "collect", "local-validate"]
    assert state.dataset is None and state.remote is None
    assert "changed from a to b" in state.events[-1]["text"]


def test_collected_results_survive_a_new_pod() -> None:
    state = RunState("r1")
    state.set_pod(PodRecord(id="a"))
    for name in ("start", "push-dataset", "train", "collect"):
        state.begin(name)
        state.end(name, "done", 1.0)
    state.set_pod(PodRecord(id="b"))
    assert state.pending() == ["local-validate"]


def test_redoing_a_step_outdates_the_steps_built_on_it() -> None:
    state = RunState("r1")
    state.set_pod(PodRecord(id="a"))
    for name in ("start", "push-dataset", "train", "collect", "local-validate"):
        state.begin(name)
        state.end(name, "done", 1.0)
    state.begin("push-dataset")
    state.end("push-dataset", "done", 1.0)
    assert state.pending() == ["train", "collect", "local-validate"]


def test_state_round_trips_and_refuses_another_schema(tmp_path: Path) -> None:
    run = RunFolder(tmp_path, "r1")
    run.state.set_pod(PodRecord(id="a", price_per_hour=1.5))
    run.state.begin("start")
    run.state.end("start", "done", 2.0)
    run.save()
    again = RunFolder(tmp_path, "r1")
    assert again.state == run.state
    data = json.loads(run.state_path.read_text())
    run.state_path.write_text(json.dumps({**data, "schema": 1}))
    with pytest.raises(ConfigError, match="another version"):
        RunFolder(tmp_path, "r1").state  # noqa: B018 - read on first use


def _hold(path: str, ready: Any, release: Any) -> None:
    run = RunFolder(Path(path), "busy")
    run.lock()
    ready.set()
    release.wait(30)


def test_a_second_process_on_a_run_is_refused_naming_the_holder(tmp_path: Path) -> None:
    ctx = multiprocessing.get_context("fork")
    ready, release = ctx.Event(), ctx.Event()
    holder = ctx.Process(target=_hold, args=(str(tmp_path), ready, release))
    holder.start()
    try:
        assert ready.wait(30)
        with pytest.raises(RunBusy) as busy:
            RunFolder(tmp_path, "busy").lock()
        assert f"pid {holder.pid}" in busy.value.message
    finally:
        release.set()
        holder.join(30)
    RunFolder(tmp_path, "busy").lock()  # the kernel freed it with the holder


@pytest.mark.parametrize("bad", ["abc\n", "x/../y", "../../v2", "a b", "", "-rf", "a" * 65])
def test_bad_run_ids_are_refused(bad: str) -> None:
    with pytest.raises(ConfigError, match="invalid run id"):
        RunFolder(Path("/nonexistent"), bad)


def test_a_huge_run_id_is_quoted_short() -> None:
    """runs.show with a 100,000-character id printed it whole: one 100 KB error line."""
    with pytest.raises(ConfigError) as refused:
        RunFolder(Path("/nonexistent"), "a" * 100_000)
    assert refused.value.message == f"invalid run id {'a' * 60!r}... (100,000 characters)"


def test_steps_never_create_a_run_folder(tmp_path: Path) -> None:
    settings = resolve({}, {}, environ={"RUNPOD_CYCLE_RUN_ID": "typo",
                                        "POD_CYCLE_ARTIFACTS_DIR": str(tmp_path)},
                       use_keyring=False)
    (tmp_path / "real-run").mkdir()
    RunFolder(tmp_path, "real-run").save()
    with pytest.raises(StepFailed) as unnamed:
        open_run(resolve({}, {}, environ={"POD_CYCLE_ARTIFACTS_DIR": str(tmp_path)},
                         use_keyring=False), mode="step")
    assert unnamed.value.message.startswith("no run id") and unnamed.value.exit_code == 2
    with pytest.raises(StepFailed) as missing:
        open_run(settings, mode="step")
    assert "no run 'typo'" in missing.value.message and "real-run" in missing.value.remedy
    assert missing.value.exit_code == 2  # refused input, as runs.show's "no run" is
    assert not (tmp_path / "typo").exists()


def test_a_stray_404_on_a_stop_is_tried_again_never_taken_for_gone(capsys) -> None:
    """Hunt (stop 54): a gateway's 404 page on the stop and on its read-back said "gone" (exit
    0), the run recorded its pod stopped, and it billed on. Such a 404 (StrayNotFound, not
    RunPod's problem+json) proves nothing: the stop is tried again."""
    from podcycle.runpod.errors import NotFound, StrayNotFound

    stray = StrayNotFound("a gateway's page", status=404)

    class Gateway(FakeClient):
        def pod_action(self, pod_id: str, action: str) -> Pod | None:
            if not self.actions:  # RunPod's 404 (not yet consistent): read back
                self.actions.append((pod_id, "lost"))
                raise NotFound("not found", status=404)
            return super().pod_action(pod_id, action)

        def get_pod(self, pod_id: str, *, retry: bool = True) -> Pod:
            if len(self.actions) == 1:
                raise stray
            return super().get_pod(pod_id, retry=retry)

    client = Gateway()
    client.pods["p"] = pod_json("p")
    assert stop_pod(client, "p", sleep=lambda _: None) == "stopped"
    assert client.pods["p"]["status"] == "EXITED" and client.actions[-1] == ("p", "stop")

    # Second read: a 409 whose read-back got such a page escaped stop_pod as that error (no
    # "POD STILL RUNNING", exit 1, stop_failed never recorded). It is tried again too.
    class Busy(Gateway):
        def pod_action(self, pod_id: str, action: str) -> Pod | None:
            if not self.actions:
                self.actions.append((pod_id, "busy"))
                raise Conflict("not in a state that can be stopped", status=409)
            return FakeClient.pod_action(self, pod_id, action)

    client = Busy()
    client.pods["p"] = pod_json("p")
    assert stop_pod(client, "p", sleep=lambda _: None) == "stopped"
    assert client.pods["p"]["status"] == "EXITED"


def test_a_stop_is_bounded_in_time_not_only_in_tries(monkeypatch) -> None:
    """Hunt (stop 54): an API that hung 40 s on each stop held cycle.stop for 619 s before
    "POD STILL RUNNING ... stop it in the console": stop_pod's 4 tries times the client's 5
    requests of 30 s each. The stop's client now waits at most 20 s a request, and no new
    try of the stop begins a minute after the first."""
    from podcycle import pods

    clock = [0.0]
    asked: list[float] = []

    class Hanging(FakeClient):
        def brief(self, timeout: float) -> Hanging:
            asked.append(timeout)
            return self

        def pod_action(self, pod_id: str, action: str) -> Pod | None:
            self.actions.append((pod_id, action))
            clock[0] += 25  # a try: its requests timed out
            raise ServerError("bad gateway", status=502)

    monkeypatch.setattr(pods.time, "monotonic", lambda: clock[0])
    client = Hanging()
    client.pods["p"] = pod_json("p")
    with pytest.raises(StopFailed) as failed:
        stop_pod(client, "p", sleep=lambda _: None, announce=lambda _: None)
    assert asked == [20.0] and len(client.actions) == 3  # ended at 25 s, 50 s, 75 s
    assert failed.value.message == ("POD STILL RUNNING: could not stop pod p: bad gateway "
                                    "(tried for 60s)")
    assert "RunPod console" in failed.value.remedy


def test_stop_has_one_meaning_of_409(capsys) -> None:
    client = FakeClient()
    client.pods["p"] = pod_json("p")
    assert stop_pod(client, "p", sleep=lambda _: None) == "stopped"
    assert stop_pod(client, "p", sleep=lambda _: None) == "already stopped"
    assert stop_pod(client, "missing", sleep=lambda _: None) == "gone"
    client.pods["q"] = pod_json("q")
    client.fail_stop = [ServerError("boom", status=500)] * 4
    with pytest.raises(StopFailed, match="POD STILL RUNNING"):
        stop_pod(client, "q", sleep=lambda _: None)
    # Each retry is said: an API that hangs kept the operator waiting minutes in silence.
    assert capsys.readouterr().err.splitlines() == [
        f"stopping pod q: boom; trying again in {n}s ({n + 1} of 4)" for n in (1, 2, 3)]


def test_a_failed_stop_is_loud_in_the_state_and_report(tmp_path: Path, monkeypatch) -> None:
    cycle, _, client = make_cycle(tmp_path)
    client.fail_stop = [ServerError("boom", status=500)] * 4
    real = cycle_mod.stop_pod
    monkeypatch.setattr(cycle_mod, "stop_pod",
                        lambda c, pod_id: real(c, pod_id, sleep=lambda _: None))
    with pytest.raises(StopFailed):
        cycle.stop_pod()
    assert cycle.state.pod.stop_failed
    from podcycle import report

    report.write(cycle.run)
    assert "POD STILL RUNNING" in cycle.run.observations.read_text()


def test_a_stop_after_local_down_says_nothing_bills(tmp_path: Path, monkeypatch) -> None:
    """Hunt: `inv local.down --force` under a full-smoke ended it with "POD STILL RUNNING: ...
    it is billing: stop it now with inv pod.stop" (exit 4): every process of the local pod
    had gone with the server. On the local RunPod, down, with no process of the pod left,
    the stop says so and records the pod gone. Elsewhere a failed stop stays loud."""
    cycle, _, client = make_cycle(tmp_path, env={"POD_CYCLE_LOCAL_DIR": str(tmp_path / "lr")})
    said: list[str] = []
    cycle.say = said.append
    client.fail_stop = [ServerError("connection refused", status=500)] * 4
    real = cycle_mod.stop_pod
    monkeypatch.setattr(cycle_mod, "stop_pod",
                        lambda c, pod_id: real(c, pod_id, sleep=lambda _: None))
    with pytest.raises(StopFailed):  # a backend of RunPod's: the pod may bill
        cycle.stop_pod()
    cycle.state.pod.stop_failed = False
    cycle._backend = replace(cycle.backend, name="local")  # no server in that folder
    cycle.state.backend = "local"
    client.fail_stop = [ServerError("connection refused", status=500)] * 4
    cycle.stop_pod()
    assert ("the local RunPod is not running (inv local.down stops it with every pod): pod "
            "pod1 stopped with it; nothing bills") in said, said
    assert not cycle.state.pod.stop_failed and cycle.state.pod.stopped_at
    # Second read: its disk stays (the server, up again, shows it EXITED): not "gone".
    assert "pod pod1: already stopped" in said, said


@pytest.mark.parametrize("works", [0, 1], ids=["before-the-stop", "after-the-stop"])
def test_a_run_folder_that_cannot_be_written_never_keeps_the_pod_billing(
        tmp_path: Path, monkeypatch, works: int) -> None:
    """The disk fills up (or the folder turns read-only) by the stop step: its first save
    raised before the stop was sent, and the pod billed on with the error saying nothing of
    it. The pod is stopped all the same, once, and said so; the error still goes up."""
    import errno

    cycle, _, client = make_cycle(tmp_path)
    cycle.start()
    said: list[str] = []
    cycle.say = said.append
    saves = []

    def full_disk() -> None:
        saves.append(1)
        if len(saves) > works:
            raise OSError(errno.ENOSPC, "No space left on device", str(cycle.run.state_path))

    monkeypatch.setattr(cycle.run, "save", full_disk)
    with pytest.raises(OSError, match="No space left"):
        cycle.stop()
    assert client.actions == [("pod1", "stop")]
    assert client.get_pod("pod1").status.value == "EXITED"
    assert any("the run's state could not be saved" in line for line in said) == (works == 0)


def test_leftovers_are_billing_pods_of_this_tool_whose_run_nobody_drives(tmp_path: Path) -> None:
    from podcycle import leftovers

    cycle, _, client = make_cycle(tmp_path)  # holds run r1's lock, as a live cycle does
    client.pods.update({
        "pod2": {**pod_json("pod2", name="pod-cycle-old-run"), "cost": 2.0,
                 "runtime": {"uptime": 1800}, "createdAt": "2026-11-29T00:00:00Z"},
        "pod3": pod_json("pod3", name="someone-elses-pod"),
        "pod4": pod_json("pod4", "EXITED", name="pod-cycle-stopped-run"),
    })
    old_run = cycle.settings.artifacts_dir / "old-run"  # recorded by an older pod-cycle
    old_run.mkdir(parents=True)
    (old_run / "state.json").write_text('{"run_id": "old-run", "schema": 1}')
    found = leftovers.find(client, cycle.settings)
    assert [(f.pod.id, f.run_id, f.run_here) for f in found] == [("pod2", "old-run", True)]
    assert found[0].cost_so_far == pytest.approx(1.0)  # $2/h for the 30 min it has run
    assert "1 pod(s) of earlier runs" in leftovers.warning(found)
    said: list[str] = []
    cycle.say = said.append
    cycle.start()
    assert any("pod2 (run old-run" in line for line in said)


def test_a_run_made_under_another_pod_name_still_has_its_leftover_found(tmp_path: Path) -> None:
    """A run made with RUNPOD_POD_NAME=exp names its pod exp-<run>: once the variable was
    unset (or set otherwise), its billing pod was no leftover, and pod.leftovers said there
    were none. The pods the runs recorded are theirs whatever their name; a pod no run made
    is not this tool's, and is only named (pod.provision's, the console's)."""
    from podcycle import leftovers

    cycle, _, client = make_cycle(tmp_path)
    cycle.run.unlock()  # the run's process is gone: nobody drives it
    client.pods["pod1"] = pod_json("pod1", name="exp-r1")
    client.pods["pod9"] = pod_json("pod9", name="chess-bot-20261205-014255")
    others: list = []
    found = leftovers.survey(client, cycle.settings, others=others)
    assert [(f.pod.id, f.run_id, f.run_here) for f in found] == [("pod1", "r1", True)]
    assert [p.id for p in others] == ["pod9"]


def test_a_pod_whose_run_a_suspended_process_holds_is_named_by_leftovers(tmp_path: Path
                                                                          ) -> None:
    """A full-smoke suspended with Ctrl-Z in a terminal forgotten holds its run's lock: its
    pod billed, and pod.leftovers said "no leftovers: every pod ... is driven by a live
    process". It is named now (never stopped: the process goes on when continued)."""
    import signal
    import subprocess
    import sys

    from podcycle import leftovers
    from podcycle.signals import suspended

    cycle, _, client = make_cycle(tmp_path)
    cycle.run.unlock()
    code = ("import sys\nfrom pathlib import Path\nfrom podcycle.runs import RunFolder\n"
            "run = RunFolder(Path(sys.argv[1]), 'r1')\nrun.lock()\n"
            "print('locked', flush=True)\nsys.stdin.read()\n")
    holder = subprocess.Popen([sys.executable, "-c", code, str(tmp_path / "art")], cwd=ROOT,
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline() == "locked\n"
        paused: list = []
        assert leftovers.survey(client, cycle.settings, suspended=paused) == []
        assert paused == []  # driven, and running: nothing to say
        os.kill(holder.pid, signal.SIGSTOP)
        eventually(lambda: suspended(holder.pid), timeout=30, what="the holder suspended")
        assert leftovers.survey(client, cycle.settings, suspended=paused) == []
        assert [(pod.id, run_id, pid) for pod, run_id, pid in paused] == [
            ("pod1", "r1", holder.pid)]
    finally:
        os.kill(holder.pid, signal.SIGCONT)
        holder.stdin.close()
        holder.wait(timeout=30)


def test_resume_without_a_run_id_skips_a_run_a_live_process_drives(tmp_path: Path) -> None:
    """`full-smoke --resume` with no run id picked the latest unfinished run, which another
    terminal was training, and was refused "end it with Ctrl-C there" (a teammate's run)."""
    older, _, _ = make_cycle(tmp_path, run_id="older")
    older.state.begin("train")
    older.state.end("train", "interrupted", 1.0)
    older.run.save()
    older.run.unlock()  # its process was interrupted and is gone
    newer, _, _ = make_cycle(tmp_path, run_id="newer")  # its lock held: another terminal's
    newer.state.begin("train")
    newer.run.save()
    settings = resolve({}, {}, environ={"POD_CYCLE_ARTIFACTS_DIR": str(tmp_path / "art")},
                       use_keyring=False)
    said: list[str] = []
    run = open_run(settings, mode="resume", announce=said.append)
    try:
        assert run.run_id == "older"
        assert said == ["--resume: continuing the latest unfinished run older (not newer: a "
                        "live process drives it)"]
    finally:
        run.unlock()
    newer.run.unlock()


def test_a_cluster_deleted_as_a_leftover_ends_in_its_runs_record(tmp_path: Path) -> None:
    """pod.leftovers --stop deleted a run's cluster, and runs.show went on saying it ran,
    its estimated cost rising by the minute (as it did for a pod before 745e8bd)."""
    from podcycle import leftovers
    from podcycle.report import run_cost
    from podcycle.runs import ClusterRecord

    cycle, _, _ = make_cycle(tmp_path)
    state = cycle.state
    state.cluster = ClusterRecord("cl1", name="pod-cycle-r1", price_per_hour=3.6,
                                  running_since=time.time() - 600)
    state.pod.cluster_id, state.pod.running_since = "cl1", state.cluster.running_since
    cycle.run.save()
    cycle.run.unlock()
    run = RunFolder(cycle.settings.artifacts_dir, "r1")  # pod.leftovers --stop's hold of it
    run.lock()
    leftovers.record_deleted(run, "cl1", "deleted")
    run.unlock()
    cycle.run.reload()
    after = cycle.run.state
    assert after.cluster.deleted_at and after.cluster.running_since is None
    assert after.pod.stopped_at and after.pod.running_since is None
    cost, _ = run_cost(after)
    assert run_cost(after)[0] == cost == pytest.approx(0.6, abs=0.01)
    assert "by pod.leftovers --stop" in after.events[-1]["text"]


def test_a_pod_stopped_with_pod_stop_ends_in_its_runs_record(tmp_path: Path) -> None:
    """A --keep-pod run's summary offers `inv pod.stop ID`; after it, runs.show still said
    "still running", its estimated cost rising by the minute, while nothing billed. The
    run's record takes the stop, as pod.leftovers --stop's does."""
    from podcycle import leftovers
    from podcycle.report import run_cost

    cycle, _, _ = make_cycle(tmp_path)
    cycle.state.pod.running_since = time.time() - 600
    cycle.run.save()
    cycle.run.unlock()
    assert leftovers.record_stop_by_hand(cycle.settings, "pod9", "stopped") is None  # not its
    assert leftovers.record_stop_by_hand(cycle.settings, "pod1", "stopped") == "r1"
    cycle.run.reload()
    after = cycle.run.state
    assert after.pod.stopped_at and after.pod.running_since is None and not after.may_bill
    assert run_cost(after)[0] == pytest.approx(3.59 / 6, abs=0.01)  # ten minutes, no more
    assert "pod pod1 stopped by pod.stop" in after.events[-1]["text"]
    events = len(after.events)
    assert leftovers.record_stop_by_hand(cycle.settings, "pod1", "already stopped") is None
    cycle.run.reload()
    assert len(cycle.run.state.events) == events  # a second pod.stop changes nothing


def test_each_boot_of_a_run_is_judged_by_its_own_spend_guard_firing(tmp_path: Path,
                                                                     monkeypatch) -> None:
    """The guard fired on the first boot; the run resumed and the pod started again. Its
    firing on that boot was recorded with the first boot's line (the log holds both), and a
    stop of the new boot by anyone else was blamed on the guard, whose flag stayed set."""
    from types import SimpleNamespace

    from podcycle import pods, report
    from podcycle.runs import SpendGuard

    log: list[str] = ["boot 1", "02:11:35Z [spend_guard] spend guard fired: 0.5 min"]
    monkeypatch.setattr(pods, "read_logs", lambda *a, **k: [SimpleNamespace(line=x)
                                                              for x in log])
    client = FakeClient()
    client.pods["pod1"] = pod_json(status="EXITED")
    cycle, _, _ = make_cycle(tmp_path, client=client)
    cycle.state.pod.guard = SpendGuard(minutes=0.5, reason="--max-minutes 0.5",
                                       max_minutes=0.5)
    cycle.run.save()
    cycle.start()  # the first boot's firing is seen and recorded, then the pod starts again
    guard = cycle.state.pod.guard
    assert guard.fired_line == log[1] and guard.fired is None
    assert not cycle.check_guard()  # the new boot: only the first boot's line in the log
    assert "it fired on an earlier boot: 02:11:35Z" in report.guard_text(cycle.state)
    log += ["boot 2", "02:14:41Z [spend_guard] spend guard fired: 0.5 min"]
    assert cycle.check_guard()
    assert guard.fired and guard.fired_line == log[-1]
    assert cycle.state.events[-1]["text"].endswith(log[-1])


def test_a_step_that_finds_its_pod_stopped_by_the_guard_records_the_stop(
        tmp_path: Path, monkeypatch) -> None:
    """The spend guard fired during a step-by-step collect (a laptop asleep past its
    deadline): the collect said so, but the record kept the pod running, and runs.show said
    "stopped by its spend guard ... (no cycle has seen it since)" of a step that had."""
    from types import SimpleNamespace

    from podcycle import history, pods
    from podcycle.runs import SpendGuard

    line = "02:11:35Z [spend_guard] spend guard fired: 1 min"
    monkeypatch.setattr(pods, "read_logs", lambda *a, **k: [SimpleNamespace(line=line)])
    client = FakeClient()
    cycle, _, _ = make_cycle(tmp_path, client=client)
    started = time.time() - 600
    cycle.state.pod.running_since = cycle.state.pod.billing_since = started
    cycle.state.pod.guard = SpendGuard(minutes=1, reason="--max-minutes 1", max_minutes=1)
    client.pods["pod1"] = pod_json(status="EXITED")
    stopped = cycle.stopped_under_step("collect")
    assert stopped is not None and "the spend guard stopped pod pod1" in str(stopped)
    saved = RunFolder(tmp_path / "art", "r1").state.pod
    assert saved.guard.fired and saved.stopped_at == pytest.approx(started + 60)
    assert saved.billed_seconds == pytest.approx(60)
    cycle.run.unlock()
    shown = history.show_text(history.show(tmp_path / "art", "r1"))
    assert "no cycle has seen it since" not in shown and "still running" not in shown


def test_a_pod_its_guard_stopped_is_not_billed_up_to_the_later_stop() -> None:
    """cycle.stop after the spend guard had stopped the pod closed its billed time at the
    stop: a pod the guard stopped after 1 minute was estimated at the hour it sat stopped."""
    from podcycle.runs import SpendGuard

    now = time.time()
    record = PodRecord("pod1", running_since=now - 3600, guard=SpendGuard(
        minutes=1, reason="--max-minutes 1", max_minutes=1, fired=True))
    record.record_stop("already stopped", now)
    assert record.billed_seconds == 60 and record.stopped_at == now - 3540
    unfired = PodRecord("pod2", running_since=now - 3600, guard=SpendGuard(
        minutes=1, reason="--max-minutes 1", max_minutes=1, fired=False))
    unfired.record_stop("stopped", now)
    assert unfired.billed_seconds == 3600  # not seen fired: the whole time counts

def test_stop_records_the_bill_or_why_it_is_missing(tmp_path: Path) -> None:
    from podcycle.report import billed_text

    cycle, _, client = make_cycle(tmp_path)
    client.billed = {"pod1": 0.0421}
    cycle.stop_pod()
    assert cycle.state.billing.available and cycle.state.billing.amount == 0.0421
    assert client.hasty_reads == 1  # one try, short: the pod is stopped already
    assert billed_text(cycle.state).startswith("$0.0421")
    # Saved with the same keys as before it was a dataclass, and read back as one.
    saved = json.loads(cycle.run.state_path.read_text())["billing"]
    assert saved["available"] is True and saved["amount"] == 0.0421 and "checked_at" in saved
    recorded = cycle.state.billing
    cycle.run.reload()
    assert cycle.run.state.billing is not recorded and cycle.run.state.billing == recorded
    client.billed = {}
    cycle.record_billing()
    assert "not yet available" in billed_text(cycle.state)
    assert "inv pod.cost pod1" in billed_text(cycle.state)
    client.billing_error = Forbidden("no billing scope", status=403)
    cycle.record_billing()
    assert "no billing scope" in billed_text(cycle.state)


def test_the_summary_tells_a_bill_not_read_from_one_not_yet_there(tmp_path: Path,
                                                                  capsys) -> None:
    """An unreadable billing answer was "billed: not yet available" in the summary, as if
    RunPod were only late; the report had the reason. The summary gives it too."""
    from podcycle.runpod.errors import ApiError
    from podcycle.summary import print_summary

    cycle, _, client = make_cycle(tmp_path)
    client.billed = {}
    cycle.record_billing()
    print_summary(cycle.run)
    assert "; billed: not yet available" in capsys.readouterr().out
    client.billing_error = ApiError("RunPod answered the billing query without a list of "
                                    "records")
    cycle.record_billing()
    print_summary(cycle.run)
    assert ("; billed: not read (RunPod answered the billing query without a list of "
            "records; the report has the rest)") in capsys.readouterr().out


def test_an_older_versions_run_killed_in_its_create_is_looked_for_before_another(
        tmp_path: Path) -> None:
    """An older checkout (state schema 2, no create_sent_at) killed while RunPod made its
    pod; this version's start made a second pod at once, both billing, and cycle.stop knew
    one. Its begun start with no pod recorded is taken as a create sent then: the start
    finds the pod of the run's name and takes it up. The state is written back as this
    version's schema, which older checkouts refuse rather than rewrite without it."""
    from podcycle.runs import SCHEMA, RunFolder

    client = FakeClient()
    cycle, _, _ = make_cycle(tmp_path, client=client, run_id="old")
    data = json.loads(cycle.run.state_path.read_text())
    cycle.run.unlock()
    older = {k: v for k, v in data.items() if k not in ("create_sent_at", "pod_name",
                                                          "strength_asked")}
    older.update(schema=2, pod=None, steps={"start": {"status": "running",
                                                      "started_at": time.time() - 5}})
    cycle.run.state_path.write_text(json.dumps(older))
    client.pods["made-late"] = pod_json("made-late", "RUNNING", name="pod-cycle-old")
    run = RunFolder(tmp_path / "art", "old")
    assert run.state.create_sent_at == older["steps"]["start"]["started_at"]
    settings = resolve({}, {}, environ={"RUNPOD_CYCLE_RUN_ID": "old", "POD_CYCLE_ARTIFACTS_DIR":
                                        str(tmp_path / "art")}, use_keyring=False)
    session = RecordingSession(results={"cycle_paths.sh": Result(0, PATHS, "")})
    again = Cycle(settings, open_run(settings, mode="start", announce=lambda _: None),
                  announce=lambda _: None, backend=cycle.backend,
                  session_factory=lambda endpoint, *_: session.attach(endpoint))
    again.start()
    assert again.state.pod.id == "made-late" and client.actions == []  # taken up, not made
    assert json.loads(again.run.state_path.read_text())["schema"] == SCHEMA == 3
    again.run.unlock()
    # A start that failed (RunPod refused the create) made nothing: not waited on; and a run
    # an older version drove by hand (no total) keeps its steps' seconds as its duration.
    older.update(steps={"start": {"status": "failed", "started_at": time.time() - 5,
                                  "error": "RunPod refused the create"},
                        "push-dataset": {"status": "done", "seconds": 40.0}})
    cycle.run.state_path.write_text(json.dumps(older))
    upgraded = RunFolder(tmp_path / "art", "old").state
    assert upgraded.create_sent_at is None and upgraded.total_seconds == 40.0


def test_a_total_under_the_training_says_why(tmp_path: Path, capsys) -> None:
    """A full-smoke killed outright (kill -9) while the pod trained on, then resumed: the
    summary read "2.5s total, 34.8s training on the pod", a contradiction left unexplained."""
    from podcycle.summary import print_summary

    cycle, _, _ = make_cycle(tmp_path)
    cycle.state.train_remote_seconds = 34.8
    cycle.state.total_seconds = 2.5
    print_summary(cycle.run)
    assert ("time       2.5s total, 34.8s training on the pod (a command killed outright is "
            "not timed)") in capsys.readouterr().out
    cycle.state.total_seconds = 40.0
    print_summary(cycle.run)
    assert "time       40.0s total, 34.8s training on the pod\n" in capsys.readouterr().out


def test_the_summary_says_what_model_was_collected_and_invents_none(tmp_path: Path,
                                                                    capsys) -> None:
    """A run that collected no metrics (failed before its collect) said "val top-1 0.000
    after None epochs"; one trained 1 epoch said "after 1 epochs"."""
    from podcycle.summary import print_summary

    cycle, _, _ = make_cycle(tmp_path)
    print_summary(cycle.run)
    assert "  model      no training metrics collected; local check -\n" in \
        capsys.readouterr().out
    cycle.run.run_artifacts.mkdir(parents=True)
    for epochs, said in ((1, "after 1 epoch;"), (3, "after 3 epochs;")):
        (cycle.run.run_artifacts / "metrics.json").write_text(json.dumps(
            {"final": {"epoch": epochs, "val_top1": 0.25}}))
        print_summary(cycle.run)
        assert f"  model      val top-1 0.250 {said} local check -" in capsys.readouterr().out


def test_the_summary_names_the_pods_a_run_replaced(tmp_path: Path, capsys) -> None:
    """A run whose pod vanished and was replaced named only the new pod in its summary,
    though RunPod's bill (and the run's) holds both: the old one looked like someone else's."""
    from podcycle.summary import print_summary

    cycle, _, _ = make_cycle(tmp_path)
    cycle.start()
    print_summary(cycle.run)
    assert "earlier" not in capsys.readouterr().out
    first = cycle.state.pod.id
    cycle.state.set_pod(replace(cycle.state.pod, id="pod-new"))
    print_summary(cycle.run)
    out = capsys.readouterr().out
    assert f"  earlier    {first}: the run's pods before pod-new, in its bill\n" in out
    # A guard that fired is said right after the pod it stopped, then the earlier pods.
    from podcycle.runs import SpendGuard

    cycle.state.pod.guard = SpendGuard(90, "--max-minutes 90", fired=True)
    print_summary(cycle.run)
    lines = capsys.readouterr().out.splitlines()
    assert [line.split()[0] for line in lines[2:5]] == ["pod", "guard", "earlier"]


def test_a_bill_still_catching_up_is_never_the_runs_cost(tmp_path: Path) -> None:
    """RunPod's billing lags: an amount read right after the stop was saved as the run's
    cost for good (runs.list, and a sweep's budget: 12 trials spent $2.56 of a $2 budget
    while the sweep said $1.29). Under the estimate, the estimate is the cost."""
    from podcycle.history import read_run
    from podcycle.report import billed_text, run_cost
    from podcycle.sweep import run_cost as sweep_run_cost

    cycle, _, client = make_cycle(tmp_path)  # pod1 at $3.59/h
    cycle.state.pod.billed_seconds = 3600.0  # an hour: ~$3.59
    client.billed = {"pod1": 0.80}  # the first minutes' bucket only
    cycle.record_billing()
    assert run_cost(cycle.state) == (3.59, "estimated")
    assert "still catching up" in billed_text(cycle.state)
    assert sweep_run_cost(cycle.run) == 3.59
    row = read_run(cycle.run.path.parent, "r1")
    assert (row.cost_usd, row.cost_kind) == (3.59, "estimated")
    client.billed = {"pod1": 3.70}  # caught up (RunPod bills from the create: a bit more)
    cycle.record_billing()
    assert run_cost(cycle.state) == (3.7, "billed") and sweep_run_cost(cycle.run) == 3.7


def test_a_run_that_changed_pods_costs_all_of_them(tmp_path: Path) -> None:
    """A run whose pod was lost and replaced showed only the last pod's bill, and its
    estimate dropped the time the lost pod ran until it was found gone."""
    from podcycle.report import run_cost

    cycle, _, client = make_cycle(tmp_path)
    old = cycle.state.pod
    old.running_since = time.time() - 1800  # ran half an hour, then vanished
    cycle.state.set_pod(PodRecord(id="pod2", name="pod-cycle-r1", price_per_hour=3.59,
                                  created_at=time.time()))
    assert cycle.state.replaced == ["pod1"]
    assert 1799 < cycle.state.pod.billed_seconds < 1900
    client.pods["pod2"] = pod_json("pod2")
    client.billed = {"pod1": 1.80, "pod2": 0.02, "other": 9.0}
    cycle.record_billing()
    assert cycle.state.billing.amount == 1.82 and run_cost(cycle.state) == (1.82, "billed")

def test_the_spend_guard_takes_the_tighter_limit() -> None:
    from podcycle.errors import ConfigError
    from podcycle.provision import spend_guard

    assert spend_guard(None, None, 3.0) is None
    by_cost = spend_guard(90, 2.0, 3.0)  # $2 at $3/h lasts 40 minutes
    assert by_cost.minutes == 40 and by_cost.reason == "--max-cost $2 at $3.00/h"
    assert spend_guard(10, 2.0, 3.0).reason == "--max-minutes 10"
    with pytest.raises(ConfigError, match="needs the GPU's price"):
        spend_guard(None, 1.0, None)
    with pytest.raises(ConfigError, match="above 0"):
        spend_guard(0, None, 1.0)


def test_a_volume_is_found_by_id_or_unique_name() -> None:
    from podcycle.volumes import pod_fields, resolve

    class Volumes:
        def list_volumes(self) -> list[dict]:
            return [{"id": "v1", "name": "data", "dataCenter": "EU-RO-1"},
                    {"id": "v2", "name": "twin", "dataCenter": "EU-RO-1"},
                    {"id": "v3", "name": "twin", "dataCenter": "US-TX-3"}]

    assert resolve(Volumes(), "v3")["dataCenter"] == "US-TX-3"
    assert resolve(Volumes(), "data")["id"] == "v1"
    with pytest.raises(PodCycleError, match="2 network volumes are named 'twin'"):
        resolve(Volumes(), "twin")
    with pytest.raises(PodCycleError, match="volumes on the account: data"):
        resolve(Volumes(), "nope")
    assert pod_fields({"id": "v1", "dataCenter": "EU-RO-1"}) == {
        "mounts": {"network": [{"volumeId": "v1", "path": "/runpod-volume"}]},
        "dataCenterIds": ["EU-RO-1"]}


def test_rsync_progress_becomes_plain_lines_and_the_stats_survive(tmp_path: Path) -> None:
    """Real rsync between two local folders, its progress2 output turned into lines."""
    from podcycle.remote import _run_rsync, _stat

    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "blob").write_bytes(os.urandom(30_000_000))
    lines: list[str] = []
    result = _run_rsync(["rsync", "-a", "--stats", "--info=progress2", "--no-inc-recursive",
                         "--bwlimit=20000", f"{tmp_path}/src/", f"{tmp_path}/dst/"],
                        lines.append, every=0)
    assert result.returncode == 0, result.stderr
    assert lines and all(" MB (" in line and "/s, " in line and " left" in line
                         for line in lines)
    assert _stat(result.stdout, "Total bytes sent") > 30_000_000
    assert (tmp_path / "dst" / "blob").stat().st_size == 30_000_000


def test_a_failed_step_task_says_billing_only_of_a_pod_that_bills() -> None:
    """cycle.train after the pod was stopped elsewhere (its spend guard, a teammate, the local
    RunPod shut down) said both "the run's pod is EXITED" and "pod ... is still running and
    billing": the second line came from the run's record alone. RunPod is asked first."""
    from types import SimpleNamespace

    from podcycle.driver import still_billing
    from podcycle.runs import StepRecord

    client = FakeClient()
    state = RunState("r1", pod=PodRecord("pod1", running_since=1.0),
                     steps={"train": StepRecord("failed", started_at=2.0)})
    cycle = SimpleNamespace(state=state, run=SimpleNamespace(run_id="r1"), client=client,
                            _backend=object())
    client.pods["pod1"] = pod_json("pod1", "RUNNING")
    assert still_billing(cycle).startswith("pod pod1 of run r1 is still running and billing")
    client.pods["pod1"] = pod_json("pod1", "EXITED")
    assert still_billing(cycle) is None
    del client.pods["pod1"]
    assert still_billing(cycle) is None
    # A cluster deleted under the step (its spend guard did it) was said to bill on.
    from podcycle.runs import ClusterRecord

    state.cluster = ClusterRecord("cl1", name="pod-cycle-r1", pod_count=2)
    client.clusters["cl1"] = {"id": "cl1", "name": "pod-cycle-r1"}
    assert still_billing(cycle).startswith("cluster cl1 of run r1 is still running and billing")
    del client.clusters["cl1"]
    assert still_billing(cycle) is None
    assert state.cluster.deleted_at is None  # one 404 alone: said, never recorded
    # The step failed finding it deleted (cycle.train under a teammate's cluster.delete), and
    # it is gone again: recorded deleted. It stayed "still running" in runs.show, its
    # estimated cost rising, until a cycle.stop nobody was told to run.
    saved: list[bool] = []
    cycle.run.save = lambda: saved.append(True)
    assert still_billing(cycle, "train", found_gone=True) is None
    assert state.cluster.deleted_at and state.stop_time_unknown and saved
    assert state.events[-1]["text"] == "cluster cl1 found gone again after train: recorded " \
        "deleted"
    # A full disk refused the state's save as the step began: its failure was never
    # recorded (the step is "running" in memory), and nothing was said of the pod.
    state.cluster = None
    state.steps = {"start": StepRecord("done", started_at=1.0),
                   "push-dataset": StepRecord("running", started_at=2.0)}
    client.pods["pod1"] = pod_json("pod1", "RUNNING")
    assert still_billing(cycle) == ("pod pod1 of run r1 is still running and billing: run inv "
                                    "cycle.push-dataset -r r1 again, or inv cycle.stop -r r1 "
                                    "stops it")
    # A refusal before the task's step began (a dataset refused, no dataset pushed yet, bad
    # --train-extra-args) records nothing: the run's last failed step (a local-validate run
    # too early) was named as the one to run again (hunt, stop 51). The task names its own.
    state.steps = {"start": StepRecord("done", started_at=1.0),
                   "local-validate": StepRecord("failed", started_at=2.0)}
    assert still_billing(cycle, "train") == (
        "pod pod1 of run r1 is still running and billing: run inv cycle.train -r r1 again, or "
        "inv cycle.stop -r r1 stops it")
    # A cycle.start refused before its step began (no rsync here) on a run whose pod is
    # stopped sent nothing: said to be "may be starting again" (second read). One whose
    # step began may have restarted it.
    state.pod = PodRecord("pod1", stopped_at=5.0)
    client.pods["pod1"] = pod_json("pod1", "EXITED")
    cycle._backend = None  # not connected yet: RunPod is not asked
    assert still_billing(cycle, "start") is None
    cycle.begun = ["start"]
    assert still_billing(cycle, "start").startswith("pod pod1 of run r1 may be starting again")


def test_an_interrupted_step_task_names_what_still_bills() -> None:
    """The last lines of a step task stopped by Ctrl-C or SIGTERM (tasks/cycle._cycle)."""
    from types import SimpleNamespace

    from podcycle.driver import after_interrupt
    from podcycle.runs import ClusterRecord, StepRecord

    def said(state: RunState) -> str:
        return after_interrupt(SimpleNamespace(state=state, run=SimpleNamespace(run_id="r1"),
                                               made_nothing=lambda: False))

    state = RunState("r1", pod=PodRecord("pod1", running_since=1.0))
    state.steps = {"push-dataset": StepRecord("done", started_at=1.0),
                   "train": StepRecord("interrupted", started_at=2.0)}
    # The trainer runs on, detached: "train ended early" read as a training stopped.
    assert said(state) == (
        "interrupted: train stopped following the trainer, which runs on, detached, if it "
        "had started; pod pod1 is still running and billing\n"
        "  → run inv cycle.train -r r1 again to follow it to its end (it attaches; a finished "
        "one is kept), or inv cycle.stop -r r1 stops the pod")
    state.steps["start"] = StepRecord("interrupted", started_at=0.5)  # an older one
    assert said(state).startswith("interrupted: train stopped following the trainer")

    starting = RunState("r1", pod=PodRecord("pod1"),
                        steps={"start": StepRecord("interrupted", started_at=1.0)})
    assert said(starting) == (
        "interrupted: start ended early; pod pod1 was created and goes on starting (it bills "
        "while it boots)\n  → run inv cycle.start -r r1 again to wait for it (it reuses the "
        "pod), or inv cycle.stop -r r1 stops it")

    cluster = RunState("r1", pod=PodRecord("pod1", running_since=1.0),
                       cluster=ClusterRecord("c1"),
                       steps={"collect": StepRecord("interrupted", started_at=1.0)})
    assert said(cluster) == (
        "interrupted: collect ended early; cluster c1 is still running and billing\n"
        "  → run inv cycle.collect -r r1 again to go on, or inv cycle.stop -r r1 deletes the "
        "cluster")

    stopped = RunState("r1", pod=PodRecord("pod1", stopped_at=3.0),
                       steps={"collect": StepRecord("interrupted", started_at=1.0)})
    assert said(stopped) == ("interrupted: collect ended early (run r1)\n"
                             "  → run inv cycle.collect -r r1 again to go on")
    assert said(RunState("r1")) == ("interrupted: stopped before its step began (run r1)\n"
                                    "  → run the step again to go on")
    # Hunt: a signal once the task's step was done and recorded (as the run's report was
    # written) said "stopped before its step began", and offered the step again.
    collected = RunState("r1", pod=PodRecord("pod1", running_since=1.0),
                         steps={"collect": StepRecord("done", started_at=10.0)})
    ran = SimpleNamespace(state=collected, run=SimpleNamespace(run_id="r1"),
                          made_nothing=lambda: False)
    assert after_interrupt(ran, own="collect", since=9.0) == (
        "interrupted after collect finished (it is recorded done; inv runs.show r1 shows it); "
        "pod pod1 is still running and billing\n  → go on with the run's next step, or inv "
        "cycle.stop -r r1 stops the pod")
    # A step done by an earlier command: this one stopped before its own began.
    assert after_interrupt(ran, own="collect", since=11.0).startswith(
        "interrupted: stopped before its step began; pod pod1 is still running")
    collected.pod.stopped_at, collected.pod.running_since = 12.0, None
    assert after_interrupt(ran, own="collect", since=9.0) == (
        "interrupted after collect finished (it is recorded done; inv runs.show r1 shows it)\n"
        "  → go on with the run's next step")
    # Second read: an older command's interrupted step did not make this one's finish read
    # as that step's interruption; and a stop has no next step.
    collected.steps["train"] = StepRecord("interrupted", started_at=5.0)
    assert after_interrupt(ran, own="collect", since=9.0).startswith(
        "interrupted after collect finished")
    collected.steps["stop"] = StepRecord("done", started_at=10.5)
    assert after_interrupt(ran, own="stop", since=10.0) == (
        "interrupted after stop finished (it is recorded done; inv runs.show r1 shows it); "
        "nothing of the run bills")
    stopping = RunState("r1", pod=PodRecord("pod1", running_since=1.0),
                        steps={"stop": StepRecord("interrupted", started_at=1.0)})
    assert said(stopping) == ("interrupted: stop ended early; what it was stopping may still "
                              "bill\n  → run inv cycle.stop -r r1 again (inv pod.leftovers "
                              "lists what bills)")
    assert after_interrupt(SimpleNamespace(state=RunState("r1"), made_nothing=lambda: True)
                           ).startswith("interrupted before anything was created: nothing bills")


def test_resume_with_another_node_count_is_refused_even_for_a_finished_run(
        tmp_path: Path) -> None:
    """A run keeps its shape: `full-smoke --resume --nodes 2` on a finished one-pod run is
    refused as cycle.start refuses it, not answered "nothing to do"."""
    from podcycle.driver import full_smoke
    from podcycle.runs import WORK_STEPS, StepRecord

    cycle, session, client = make_cycle(tmp_path, run_id="one-pod")
    cycle.state.steps = {name: StepRecord("done") for name in WORK_STEPS}
    cycle.state.outcome = "ok"
    cycle.run.save()
    cycle.run.unlock()
    settings = resolve({}, {}, environ={"RUNPOD_CYCLE_RUN_ID": "one-pod", "RUNPOD_NODES": "2",
                                        "POD_CYCLE_ARTIFACTS_DIR": str(tmp_path / "art")},
                       use_keyring=False)
    said: list[str] = []
    with pytest.raises(StepFailed) as info:
        full_smoke(settings, dataset_dir=SMOKE, resume=True, announce=said.append,
                   backend=cycle.backend, session_factory=lambda *a: session)
    # Not a flag anybody gave: "--nodes 2" and "leave out --nodes" sent the user looking for
    # one; nor a variable anybody set when it came from invoke.yaml ("unset RUNPOD_NODES").
    assert info.value.message == ("2 nodes (from RUNPOD_NODES): run one-pod runs on one pod; "
                                  "a run keeps its shape")
    assert info.value.remedy.startswith("unset RUNPOD_NODES to continue it")
    assert info.value.exit_code == 2  # a refused input, as the other refusals
    assert not any("nothing to do" in line for line in said)
    assert client.actions == []  # nothing was asked of RunPod
    in_file = resolve({}, {"nodes": 2}, environ={
        "RUNPOD_CYCLE_RUN_ID": "one-pod", "POD_CYCLE_ARTIFACTS_DIR": str(tmp_path / "art")},
        use_keyring=False)
    with pytest.raises(StepFailed) as info:
        full_smoke(in_file, dataset_dir=SMOKE, resume=True, announce=said.append,
                   backend=cycle.backend, session_factory=lambda *a: session)
    assert info.value.message.startswith("2 nodes (from podcycle.nodes in invoke.yaml): run "
                                         "one-pod runs on one pod")
    assert info.value.remedy.startswith("remove podcycle.nodes from invoke.yaml to continue it")


def test_a_strength_check_asked_of_a_finished_run_says_how_to_play_it(tmp_path: Path) -> None:
    """`full-smoke --resume --strength-games 4` on a finished run said "nothing to do" and
    exited 0: no match played, none recorded, and not a word about the flag."""
    from podcycle.driver import full_smoke
    from podcycle.runs import WORK_STEPS, StepRecord

    cycle, session, client = make_cycle(tmp_path, run_id="done-run")
    cycle.state.steps = {name: StepRecord("done") for name in (*WORK_STEPS, "stop")}
    cycle.state.outcome = "ok"
    cycle.state.pod.record_stop("stopped", 100.0)
    cycle.run.save()
    cycle.run.unlock()
    settings = resolve({}, {}, environ={"RUNPOD_CYCLE_RUN_ID": "done-run",
                                        "POD_CYCLE_ARTIFACTS_DIR": str(tmp_path / "art")},
                       use_keyring=False)
    said: list[str] = []
    full_smoke(settings, dataset_dir=SMOKE, resume=True, announce=said.append,
               strength_games=4, strength_opponent="uci:/opt/my engine",
               backend=cycle.backend, session_factory=lambda *a: session)
    assert said[-2] == "run done-run finished earlier (ok): nothing to do"
    assert said[-1] == ("--strength-games 4 is not played on a finished run: inv "
                        "cycle.local-validate -r done-run --strength-games 4 "
                        "--strength-opponent 'uci:/opt/my engine' plays it against the model "
                        "it collected")
    assert client.actions == []
    full_smoke(settings, dataset_dir=SMOKE, resume=True, announce=said.append,
               backend=cycle.backend, session_factory=lambda *a: session)
    assert said[-1] == "run done-run finished earlier (ok): nothing to do"  # none asked


def test_sigterm_on_a_cluster_run_on_a_volume_says_its_checkpoint_stays(tmp_path: Path
                                                                        ) -> None:
    """SIGTERM during a cluster's training on a network volume said "--resume trains from
    the start", and the resume then went on from the volume's checkpoint at epoch 8."""
    from podcycle.driver import _epochs_go_with_the_cluster
    from podcycle.runs import RemotePaths

    cycle, _, _ = make_cycle(tmp_path)
    said: list[str] = []
    _epochs_go_with_the_cluster(cycle, said.append)
    assert said[-1].endswith("; --resume trains from the start")
    cycle.state.remote = RemotePaths(pod_id="pod1", repo_dir="/r", training_dir="/t",
                                     timing_log="/t.log", venv_dir="/v",
                                     out="/runpod-volume/pod-cycle/runs/r1",
                                     volume_dir="/runpod-volume")
    _epochs_go_with_the_cluster(cycle, said.append)
    assert said[-1].endswith("; --resume trains on from the last checkpoint on the run's "
                             "network volume")
    assert cycle.run.state.events[-1]["text"].endswith("on the run's network volume")


def test_a_run_finished_step_by_step_is_left_as_it_is_by_a_resume(tmp_path: Path) -> None:
    """Every step done by hand, its pod stopped: `full-smoke --resume` said "to do: " (none)
    and rewrote the record: a total of 0 s (a negative host-side overhead in the report), a
    duration of 0 s in runs.list. It says there is nothing to do and changes nothing."""
    from podcycle.runs import WORK_STEPS, StepRecord

    cycle, session, client = make_cycle(tmp_path, run_id="by-hand")
    cycle.state.steps = {name: StepRecord("done", seconds=30.0)
                         for name in (*WORK_STEPS, "stop")}
    cycle.state.pod.record_stop("stopped", 100.0)
    cycle.state.backend = "fake"  # as its start recorded it
    cycle.run.save()
    cycle.run.unlock()
    before = cycle.run.state_path.read_bytes()
    said = resumed(tmp_path, "by-hand", cycle.backend, session)
    assert said[-1] == ("run by-hand finished earlier (every step done, step by step): "
                        "nothing to do")
    assert cycle.run.state_path.read_bytes() == before
    assert not cycle.run.observations.exists() and client.actions == []
    # Its pod never stopped: said, and left to cycle.stop (the resume made the record 0 s).
    state = cycle.run.state
    state.steps.pop("stop")
    state.pod.running_since, state.pod.stopped_at = 100.0, None
    cycle.run.save()
    before = cycle.run.state_path.read_bytes()
    said = resumed(tmp_path, "by-hand", cycle.backend, session)
    assert said[-1].endswith("nothing to do; what it runs still bills: inv cycle.stop -r "
                             "by-hand stops it")
    assert cycle.run.state_path.read_bytes() == before and client.actions == []


def test_stop_deletes_a_cluster_of_the_run_that_it_never_recorded(tmp_path: Path) -> None:
    """A cluster create whose answer was lost (or whose process was killed before the record)
    leaves a cluster of the run's name that the run does not know: cycle.stop, with or
    without --nodes, deleted nothing and said the stop was done while every node billed."""
    now = runpod_time(time.time() + 5)
    client = FakeClient()
    client.clusters["cl1"] = {"id": "cl1", "name": "pod-cycle-r1", "type": "TRAINING",
                              "createdAt": now,
                              "compute": {"gpuTypeId": "NVIDIA H100", "gpuCountPerPod": 8,
                                          "podCount": 2}}
    client.clusters["cl2"] = {**client.clusters["cl1"], "id": "cl2", "name": "someone-else"}
    # The run's name, made a day before the run began: another checkout's run of that id.
    client.clusters["cl3"] = {**client.clusters["cl1"], "id": "cl3",
                              "createdAt": runpod_time(time.time() - 86400)}
    cycle, _, client = make_cycle(tmp_path, client=client)
    client.pods.clear()  # nor any pod of the run's name
    cycle.state.pod = None
    cycle.run.save()
    cycle.run.fresh = False  # cycle.stop is a later process: the run's folder was there
    said: list[str] = []
    cycle.say = said.append
    cycle.stop()
    assert list(client.clusters) == ["cl2", "cl3"]
    assert ("note: cluster cl3 has run r1's name but may predate it, so it is left alone: inv "
            "cluster.delete cl3 --yes deletes it if it is this run's") in said
    assert ("run r1 recorded no cluster, but cluster cl1 (pod-cycle-r1, 2 nodes) is its own: "
            "deleting it") in said and "cluster cl1: deleted" in said
    assert "cluster cl1, never recorded, deleted at the stop" in [
        event["text"] for event in cycle.state.events]


def unrecorded_pod_made(tmp_path: Path, *, seconds_ago: float):
    """A run whose record holds no pod, and a pod of its name made `seconds_ago`: the
    cycle, its client and what it says."""
    cycle, _, client = make_cycle(tmp_path)
    client.pods["pod1"]["createdAt"] = runpod_time(time.time() - seconds_ago)
    cycle.state.pod = None
    cycle.run.save()
    said: list[str] = []
    cycle.say = said.append
    return cycle, client, said


def test_a_pod_of_the_runs_name_from_before_the_run_is_left_alone(tmp_path: Path) -> None:
    """Two folders running one run id on one account: the second run adopted the first's
    pod (it has the run's name), attached to its trainer, and whichever ended first stopped
    the pod under the other. A pod of the run's name made before the run began is named
    once and left alone, at the start as at the stop; the cluster path did so already."""
    cycle, client, said = unrecorded_pod_made(tmp_path, seconds_ago=86400)
    assert cycle.live_pods_of_the_run() == [] and cycle._existing_pod() is None
    cycle.stop()
    assert client.actions == [] and cycle.state.pod is None
    assert said.count("note: pod pod1 has run r1's name but predates it (another folder's run "
                      "of that id?), so it is left alone") == 1, said


def test_a_pod_made_for_another_folders_run_of_the_id_is_left_alone(tmp_path: Path) -> None:
    """Two folders, one account, one run id: the first run's pod lost, its --resume took up
    the pod the second folder's run had made since (made after the first began, it passed
    for a create of its own), trained on it and stopped it under the second's training. A
    pod's env names the run a cycle made it for (POD_CYCLE_RUN: its id and start)."""
    cycle, client, said = unrecorded_pod_made(tmp_path, seconds_ago=10)
    client.pods["pod1"]["env"] = {"POD_CYCLE_RUN": "r1@1796000000.000000"}  # the other's
    assert cycle.live_pods_of_the_run() == [] and cycle._existing_pod() is None
    assert said.count("note: pod pod1 has run r1's name but was made for another run of that "
                      "id (another folder's?), so it is left alone") == 1, said
    client.pods["pod1"]["env"] = {"POD_CYCLE_RUN": cycle.run_token()}  # its own, however old
    client.pods["pod1"]["createdAt"] = runpod_time(time.time() - 86400)
    assert [p.id for p in cycle.live_pods_of_the_run()] == ["pod1"]


def test_a_pod_the_cycle_makes_names_its_run_in_its_env(tmp_path: Path, monkeypatch) -> None:
    cycle, _, client = make_cycle(tmp_path)
    del client.pods["pod1"]
    cycle.state.pod = None
    sent: list[dict[str, str]] = []

    def provision_pod(backend, settings, *, env, record, **kwargs):
        sent.append(env)
        raise StepFailed("stand-in: no create", "")

    monkeypatch.setattr(cycle_mod.provision, "provision_pod", provision_pod)
    with pytest.raises(StepFailed):
        cycle._provision()
    assert sent == [{"POD_CYCLE_RUN": cycle.run_token()}]


def test_the_runs_own_pod_is_found_on_a_machine_whose_clock_is_off(tmp_path: Path) -> None:
    """A pod's createdAt is RunPod's clock, the run's start this machine's: on a laptop an
    hour fast, the run's own unrecorded pod (a create whose answer was lost) read as made
    before the run, and was left billing while a second one was made. The difference the
    API's Date header shows is taken into account."""
    from email.utils import formatdate

    cycle, _, client = make_cycle(tmp_path)
    client.create_requests = 1  # the create went out; its answer was lost
    server_now = time.time() - 3600  # this machine's clock runs an hour ahead of RunPod's
    client.last_headers = {"Date": formatdate(server_now, usegmt=True)}
    cycle.state.created_at = time.time() - 600
    created = server_now - 300  # five minutes after the run began, on RunPod's clock
    client.pods["pod1"]["createdAt"] = runpod_time(created)
    assert [p.id for p in cycle.live_pods_of_the_run()] == ["pod1"]
    client.last_headers = {}  # no Date header: this machine's clock alone
    assert cycle.live_pods_of_the_run() == []


def test_stop_finds_a_pod_whose_create_was_never_recorded(tmp_path: Path) -> None:
    """A start killed (kill -9) between RunPod's answer and the record: the run has no pod,
    but RunPod has one of the run's name. cycle.stop stops it, instead of saying nothing."""
    cycle, _, client = make_cycle(tmp_path)
    cycle.state.pod = None
    cycle.run.save()
    cycle.run.fresh = False  # cycle.stop is a later process: the run's folder was there
    said: list[str] = []
    cycle.say = said.append
    cycle.stop()
    assert client.actions == [("pod1", "stop")]
    assert cycle.state.pod is not None and cycle.state.pod.id == "pod1"
    assert "run r1 recorded no pod, but pod pod1 (pod-cycle-r1) is its own: stopping it" in said


def test_a_cluster_models_rescue_yields_to_sigterm_and_keeps_the_cluster_on_ctrl_c() -> None:
    """Before a cluster is deleted with a trained model not yet home, the model is collected.
    A Ctrl-C during that collect keeps the cluster (the model is worth more than a minute's
    bill); a SIGTERM or SIGHUP (a CI job cancelled, SIGKILL seconds away) deletes it at once,
    as the delete must go out before the kill."""
    import signal
    from types import SimpleNamespace

    from podcycle.driver import _rescue_model, _told_to_end
    from podcycle.errors import StepFailed
    from podcycle.signals import Interrupted

    def ended_by(error: BaseException) -> str | None:
        def collect() -> None:
            raise error
        said: list[str] = []
        return _rescue_model(SimpleNamespace(collect=collect), said.append)

    term = Interrupted("signal SIGTERM")
    term.signum = signal.SIGTERM
    assert ended_by(term) is None and _told_to_end(term)
    assert ended_by(Interrupted("signal SIGINT")) == "interrupted by Ctrl-C"
    assert ended_by(KeyboardInterrupt()) == "interrupted by Ctrl-C"
    assert ended_by(StepFailed("the disk is full", "free space")) == "the disk is full"
    assert _rescue_model(SimpleNamespace(collect=lambda: None), print) is None


def test_a_new_pods_guard_keeps_each_limit_not_given_again() -> None:
    """keep_guard was all or nothing: --max-minutes given alone dropped the run's --max-cost
    (a $57/h cluster then ran 120 minutes instead of $5), and a guard recorded before the
    limits were kept came back as none."""
    from podcycle.cycle import keep_guard
    from podcycle.runs import SpendGuard

    by_cost = SpendGuard(5.226, "--max-cost $5 at $57.41/h", max_cost=5)
    kept = keep_guard(resolve({"max_minutes": 120}, {}, environ={}, use_keyring=False), by_cost)
    assert (kept.max_minutes, kept.max_cost) == (120, 5)
    older = SpendGuard(minutes=30, reason="--max-minutes 30")  # no max_* recorded
    kept = keep_guard(resolve({}, {}, environ={}, use_keyring=False), older)
    assert (kept.max_minutes, kept.max_cost) == (30, None)


def test_a_pod_found_stopped_is_costed_by_its_bill_not_by_when_it_was_found(tmp_path: Path
                                                                             ) -> None:
    """A pod stopped outside the run (pod.stop, the console) and found so at cycle.stop an
    hour later: the estimate counts that hour, the bill does not. The bill is the cost then
    (it was shown as 'still catching up' under a $3.59 estimate)."""
    from podcycle.report import billed_text, run_cost

    cycle, _, client = make_cycle(tmp_path)
    cycle.state.pod.running_since = time.time() - 3600
    client.pods["pod1"] = pod_json(status="EXITED")  # stopped a minute after its start
    client.billed = {"pod1": 0.06}
    cycle.stop_pod()
    assert cycle.state.stop_time_unknown
    assert run_cost(cycle.state) == (0.06, "billed")
    assert "catching up" not in billed_text(cycle.state)


def test_an_interrupt_before_the_steps_says_what_still_bills(tmp_path: Path,
                                                            monkeypatch) -> None:
    """Ctrl-C (or a SIGTERM) while `full-smoke --resume` validated a large dataset, before
    its steps ran: the task said "the pod was stopped" while the run's pod ran on, and a
    SIGTERM then killed it without a word. Now the run is said to be as it was, with the way
    to stop it; a new run interrupted there made nothing."""
    import signal

    from podcycle import driver
    from podcycle.driver import NothingMade, full_smoke

    cycle, session, client = make_cycle(tmp_path)
    cycle.start()
    cycle.run.unlock()
    settings = resolve({}, {}, environ={"RUNPOD_CYCLE_RUN_ID": "r1",
                                        "POD_CYCLE_ARTIFACTS_DIR": str(tmp_path / "art")},
                       use_keyring=False)

    def sigterm_while_validating(path: Path) -> None:
        os.kill(os.getpid(), signal.SIGTERM)

    class NotTrapped(Exception):
        pass

    def untrapped(signum: int, frame: Any) -> None:
        raise NotTrapped  # what the default handler would do: end the process, unsaid

    monkeypatch.setattr(driver, "validate", sigterm_while_validating)
    before = signal.signal(signal.SIGTERM, untrapped)
    try:
        with pytest.raises(KeyboardInterrupt) as interrupted:
            full_smoke(settings, dataset_dir=SMOKE, resume=True, announce=lambda _: None,
                       backend=cycle.backend, session_factory=lambda *a: session)
        assert signal.getsignal(signal.SIGTERM) is untrapped  # given back
    finally:
        signal.signal(signal.SIGTERM, before)
    assert getattr(interrupted.value, "signum", None) == signal.SIGTERM
    assert interrupted.value.ended == ("pod pod1 is still running and billing (inv cycle.stop "
                                       "-r r1 stops it)")
    assert ("pod1", "stop") not in client.actions

    def ctrl_c(path: Path) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(driver, "validate", ctrl_c)
    fresh = resolve({}, {}, environ={"RUNPOD_CYCLE_RUN_ID": "r2",
                                     "POD_CYCLE_ARTIFACTS_DIR": str(tmp_path / "art")},
                    use_keyring=False)
    with pytest.raises(NothingMade):
        full_smoke(fresh, dataset_dir=SMOKE, announce=lambda _: None, backend=cycle.backend,
                   session_factory=lambda *a: session)
    assert not (tmp_path / "art" / "r2").exists()


@pytest.mark.parametrize(("extra", "why"), [
    ("--blocks abc --channels 8", "argument --blocks: invalid int value: 'abc'"),
    ("--lr nan", "--lr nan: must be a finite number"),
    ("--blocks 0", "--blocks 0: must be from 1 to 64"),
    ("--lerning-rate 1e-3", "unrecognized arguments: --lerning-rate 1e-3"),
    # Python's split() split it, the pod's shell did not: "--lr\xa01e-3" reached the trainer
    # as one word ("unrecognized arguments"), after the pod was paid for.
    ("--lr\xa01e-3", "it holds a no-break space ('\\xa0'), which the pod's shell does not "
                     "split on: type plain spaces"),
    # A shell's quotes, which the preset does not read: "unrecognized arguments: b'" (hunt,
    # stop 51).
    ("--cache-dir '/a b'", "it holds a quote ('), which reaches the trainer as typed: the "
                           "pod's preset splits on spaces only, so no value can hold a space "
                           "(give one without)"),
    # argparse's SystemExit(0) escaped: the trainer's usage, exit 0, nothing trained.
    ("--help", "--help prints the trainer's usage and trains nothing: its flags are listed by "
               "python -m chessbot.train --help"),
    ("--lr 1e-3 -h", "--help prints the trainer's usage and trains nothing: its flags are "
                     "listed by python -m chessbot.train --help"),
    # The cycle's own: the model went elsewhere (the collect missed it, the infer smoke
    # failed), or the metrics did (a run "ok" with no epochs).
    ("--output-dir /tmp/elsewhere", "--output-dir is the cycle's own (it pushes the dataset, "
                                    "collects the model and its metrics from where it put "
                                    "them): leave it out"),
    ("--metrics /tmp/m.json", "--metrics-path is the cycle's own (it pushes the dataset, "
                              "collects the model and its metrics from where it put them): "
                              "leave it out"),
    ("--dataset-dir d", "--dataset-dir is the cycle's own (it pushes the dataset, collects "
                        "the model and its metrics from where it put them): leave it out"),
    # Hunt: `-e 1 --train-extra-args "--epochs 2"` trained 2 epochs (the preset's own flag
    # came first) while the run recorded 1; runs.show read 2 from the metrics. Any value, a
    # prefix and the = form too.
    *((extra, "--epochs is the cycle's own (the run records it, and a resume trains with it "
              "again): give it as -e/--epochs or TRAIN_EPOCHS, not here")
      for extra in ("--epochs 2", "--lr 1e-3 --epoch 3", "--epochs=3")),
])
def test_train_extra_args_the_trainer_would_refuse_are_refused_before_anything(
        tmp_path: Path, extra: str, why: str) -> None:
    """--train-extra-args went to the pod unread: a pod was made and paid for, the dataset
    pushed and the trainer started before argparse refused them there, or torch.optim
    crashed with a traceback (--lr nan). Now refused first, in one line."""
    from podcycle.driver import full_smoke

    settings = resolve({}, {}, environ={"RUNPOD_CYCLE_RUN_ID": "bad-extra",
                                        "POD_CYCLE_ARTIFACTS_DIR": str(tmp_path / "art")},
                       use_keyring=False)
    client = FakeClient()
    with pytest.raises(ConfigError) as refused:
        full_smoke(settings, dataset_dir=SMOKE, train_extra_args=extra,
                   announce=lambda _: None,
                   backend=Backend("fake", "http://fake", client, "test",
                                   own_ssh_key=tmp_path / "key", training_env={}))
    assert refused.value.message == f"--train-extra-args {extra!r}: {why}"
    assert "python -m chessbot.train --help" in refused.value.remedy
    assert client.actions == [] and not (tmp_path / "art" / "bad-extra").exists()
    cycle, session, _ = make_cycle(tmp_path)  # a step task: refused before the step begins
    pushed(cycle)
    with pytest.raises(ConfigError):
        cycle.train(extra)
    assert not [c for c in session.scripts if c.name == "cycle_train.sh"]
    assert cycle.state.step("train").status == "pending"


def test_a_new_run_folder_never_adopts_a_pod_of_its_name(tmp_path: Path) -> None:
    """A second folder (another checkout, a typo'd POD_CYCLE_ARTIFACTS_DIR) started run
    `shared1` a minute after the first folder's: its pod was within the five minutes allowed
    for clock skew, so the new run adopted it, trained on it and stopped it under the first.
    A run whose folder this process made, and which sent no create, owns nothing yet."""
    cycle, client, said = unrecorded_pod_made(tmp_path, seconds_ago=60)
    assert cycle.run.fresh and cycle.live_pods_of_the_run() == []
    assert said == ["note: pod pod1 has run r1's name but predates it (another folder's run "
                    "of that id?), so it is left alone"]
    client.create_requests = 1  # once this run sent its create, a pod of its name may be its
    assert [p.id for p in cycle.live_pods_of_the_run()] == ["pod1"]


def test_leftovers_stop_keeps_a_pod_whose_run_was_taken_up_since_the_listing(
        tmp_path: Path) -> None:
    """pod.leftovers --stop listed the run's pod as left over, then a `--resume` took the
    run up while earlier pods were being stopped (each stop can take 30 s on RunPod), and
    the listing's word stopped the pod under the live run. Each stop now holds the run's
    lock from its check to its record."""
    from podcycle import leftovers

    cycle, _, client = make_cycle(tmp_path)
    cycle.state.driver = "full-smoke"  # its host was killed: a leftover
    cycle.state.pod.running_since = time.time() - 60
    cycle.run.save()
    cycle.run.unlock()
    [item] = leftovers.survey(client, cycle.settings)
    assert not item.open_run and item.run_here
    resumed = RunFolder(cycle.settings.artifacts_dir, "r1")
    resumed.lock()  # the run is driven again
    try:
        outcome = leftovers.stop_one(client, cycle.settings, item)
    finally:
        resumed.unlock()
    assert outcome.startswith("kept: run r1 is driven again (pid ") and client.actions == []
    assert leftovers.stop_one(client, cycle.settings, item) == "stopped"
    assert client.actions == [("pod1", "stop")]
    cycle.run.reload()
    assert cycle.run.state.pod.stopped_at and cycle.run.state.pod.running_since is None
    # A record that became unreadable since the listing: nobody drives the run, so its pod
    # is stopped (it was "kept: driven again (pid <this one>)", its lock then left held).
    client.pods["pod1"] = pod_json("pod1", "RUNNING")
    cycle.run.state_path.write_text("{not json")
    assert leftovers.stop_one(client, cycle.settings, item) == "stopped"
    assert not RunFolder(cycle.settings.artifacts_dir, "r1").is_driven()


def test_leftovers_keep_a_cluster_whose_run_folder_is_not_here(tmp_path: Path) -> None:
    """A cluster of this tool's name whose run folder is not under this artifacts folder
    (another checkout's, another machine's): its model may be only on it, and a delete takes
    the nodes' disks. It is kept, said so, like one whose record cannot be read."""
    from podcycle import leftovers

    client = FakeClient()
    client.clusters["cl9"] = {"id": "cl9", "name": "pod-cycle-elsewhere", "type": "TRAINING",
                              "podCount": 2}
    settings = resolve({}, {}, environ={"POD_CYCLE_ARTIFACTS_DIR": str(tmp_path / "art")},
                       use_keyring=False)
    [item] = leftovers.survey_clusters(client, settings)
    assert item.run_id == "elsewhere" and not item.run_here and not item.open_run
    assert leftovers.delete_one(client, settings, item).startswith(
        "kept: run elsewhere's folder is not under this artifacts folder")
    assert "cl9" in client.clusters and "its run's folder is not here" in item.line()
    assert leftovers.cluster_warning([item]).endswith(
        "(inv pod.leftovers --stop deletes those that hold nothing of their run's alone)")


def test_leftovers_name_a_pod_whose_run_folder_is_not_here(tmp_path: Path) -> None:
    """A pod of this tool's name whose run has no folder under this artifacts folder (a
    teammate's full-smoke from another checkout on this machine, or another machine's) was
    listed as billing "with no process driving" it, like a laptop's killed run: --stop then
    stopped a training someone watched. No process here drives it; the listing now says its
    run's folder is elsewhere, and that one there may."""
    from podcycle import leftovers

    client = FakeClient()
    client.pods.update({"pod7": pod_json("pod7", name="pod-cycle-elsewhere"),
                        "pod8": pod_json("pod8", name="pod-cycle-here")})
    art = tmp_path / "art"
    settings = resolve({}, {}, environ={"POD_CYCLE_ARTIFACTS_DIR": str(art)}, use_keyring=False)
    (art / "here").mkdir(parents=True)
    (art / "here" / "state.json").write_text('{"run_id": "here", "schema": 1}')
    found = {item.pod.id: item for item in leftovers.find(client, settings)}
    assert found["pod7"].run_elsewhere and not found["pod8"].run_elsewhere
    assert found["pod7"].line().endswith("; its run's folder is not here)")
    assert "not here" not in found["pod8"].line()
    assert leftovers.elsewhere_note([found["pod8"]], art) is None
    assert leftovers.elsewhere_note(list(found.values()), art) == (
        f"note: the run of 1 of these pod(s) has no folder under this artifacts folder ({art}): "
        "pod7 (run elsewhere). No process here drives them, but one in another checkout or "
        "on another machine may: look there before --stop, which stops them too (a stopped "
        "pod keeps its disk)")


@pytest.mark.parametrize(("folder", "said"), [
    ("/".join(["d" * 200] * 19 + ["e" * 100]), "past this system's limit of"),  # 4,000 bytes
    ("100%h", "which ssh reads as a token"), ("${HOME}x", "which ssh reads as a variable")],
    ids=["too-deep", "percent", "dollar-brace"])
def test_an_artifacts_folder_a_run_cannot_use_is_refused_before_its_folder_is_made(
        tmp_path: Path, folder: str, said: str) -> None:
    """An artifacts folder of about 4,000 characters: the pod was made and trained, then the
    collect failed on "File name too long" and the model stayed on the pod. A `%` or `${`
    (ssh reads them in the run's known_hosts path) was refused only once the run's folder
    had been made: an empty run was left for runs.list to show."""
    settings = resolve({}, {}, environ={"RUNPOD_CYCLE_RUN_ID": "odd",
                                        "POD_CYCLE_ARTIFACTS_DIR": str(tmp_path / folder)},
                       use_keyring=False)
    with pytest.raises(ConfigError) as refused:
        open_run(settings, mode="start", announce=lambda _: None)
    assert said in refused.value.message
    assert "POD_CYCLE_ARTIFACTS_DIR" in refused.value.remedy
    assert not (tmp_path / folder.split("/")[0]).exists()


def test_a_bill_recorded_available_without_an_amount_is_shown_not_a_traceback(
        tmp_path: Path) -> None:
    """Hunt: a state.json whose billing said available with no amount (edited, or cut short)
    made runs.show end in `TypeError: unsupported format string passed to NoneType`, while
    runs.list called the run finished. It reads as a bill not available."""
    from podcycle import history, report

    cycle, _, _ = make_cycle(tmp_path)
    cycle.run.unlock()
    data = json.loads(cycle.run.state_path.read_text())
    data["billing"] = {"available": True, "amount": None, "detail": "", "checked_at": 1.0}
    cycle.run.state_path.write_text(json.dumps(data))
    shown = history.show_text(history.show(tmp_path / "art", "r1"))
    assert "  billed     not available (-)" in shown
    state = RunFolder(tmp_path / "art", "r1").state
    assert state.billing is not None and not state.billing.available
    assert report.billed_text(state)  # the report's line, no traceback


def test_a_step_refused_for_its_backend_leaves_the_runs_record_as_it_was(
        tmp_path: Path) -> None:
    """Hunt: `cycle.collect -r RUN -b runpod` of a finished local run was refused (exit 2),
    but the refusal was recorded as the collect's failure and the run as driven by steps:
    cycle.local-validate then refused the run's model ("the run's last collect is failed")."""
    from podcycle.cycle import OtherBackend

    cycle, _, _ = make_cycle(tmp_path)
    cycle.state.backend, cycle.state.driver = "local", "full-smoke"
    cycle.state.begin("collect")
    cycle.state.end("collect", "done", 1.0)
    cycle.run.save()
    cycle.run.unlock()
    before = RunFolder(tmp_path / "art", "r1").state
    settings = resolve({"backend": "runpod"}, {}, environ={
        "RUNPOD_CYCLE_RUN_ID": "r1", "RUNPOD_API_KEY": "rpa_0123456789abcdef",
        "POD_CYCLE_ARTIFACTS_DIR": str(tmp_path / "art")}, use_keyring=False)
    for step in ("collect", "stop"):
        run = open_run(settings, mode="step", announce=lambda _: None)
        with pytest.raises(OtherBackend) as refused:
            getattr(Cycle(settings, run, announce=lambda _: None), step)()
        run.unlock()
        assert refused.value.exit_code == 2 and isinstance(refused.value, ConfigError)
        assert "was started on the local RunPod, but this command would use RunPod" in \
            refused.value.message
        after = RunFolder(tmp_path / "art", "r1").state
        assert after.steps == before.steps and after.driver == "full-smoke"
        assert after.outcome == before.outcome


def test_a_run_is_driven_only_on_the_backend_it_started_on(tmp_path: Path) -> None:
    """The key given once (--api-key) and left out on the next command: the run's RunPod pod
    was looked for on the local RunPod, its stop said "gone" and exited 0 while the pod
    billed on, and a resume made a second pod. The other backend is refused before any
    request; a server for it is not even started."""
    cycle, session, client = make_cycle(tmp_path)
    cycle.state.backend = "runpod"
    cycle.run.save()
    cycle.run.unlock()
    local_dir = tmp_path / "local"
    for env, needs in (({"POD_CYCLE_LOCAL_DIR": str(local_dir)}, "give the key the run used"),
                       ({"RUNPOD_BACKEND": "local", "POD_CYCLE_LOCAL_DIR": str(local_dir)},
                        "give the key the run used")):
        settings = resolve({}, {}, environ={"RUNPOD_CYCLE_RUN_ID": "r1",
                                            "POD_CYCLE_ARTIFACTS_DIR": str(tmp_path / "art"),
                                            **env}, use_keyring=False)
        run = open_run(settings, mode="resume", announce=lambda _: None)
        later = Cycle(settings, run, announce=lambda _: None)
        with pytest.raises(ConfigError, match=r"run r1 was started on RunPod, but this command "
                           r"would use the local RunPod.*: its pods are not there") as refused:
            later.stop()
        assert needs in refused.value.remedy
        run.unlock()
        assert not local_dir.exists()  # no local RunPod was started for it
    assert client.actions == [] and session.scripts == []
    assert RunFolder(tmp_path / "art", "r1").state.pod.stopped_at is None
    # A run of the local RunPod, continued with a RunPod key configured.
    record = RunFolder(tmp_path / "art", "r1")
    record.state.backend = "local"
    record.save()
    settings = resolve({}, {}, environ={"RUNPOD_CYCLE_RUN_ID": "r1", "RUNPOD_API_KEY":
                                        "rpa_0123456789abcdef", "POD_CYCLE_ARTIFACTS_DIR":
                                        str(tmp_path / "art")}, use_keyring=False)
    run = open_run(settings, mode="resume", announce=lambda _: None)
    with pytest.raises(ConfigError, match="was started on the local RunPod, but this command "
                       "would use RunPod") as refused:
        Cycle(settings, run, announce=lambda _: None).stop()
    assert "--backend local" in refused.value.remedy
    run.unlock()
    # A RunPod run driven with --backend local, the key given all the same: the remedy is
    # to leave the flag out, not to give the key.
    record = RunFolder(tmp_path / "art", "r1")
    record.state.backend = "runpod"
    record.save()
    settings = resolve({"backend": "local"}, {}, environ={
        "RUNPOD_CYCLE_RUN_ID": "r1", "RUNPOD_API_KEY": "rpa_0123456789abcdef",
        "POD_CYCLE_ARTIFACTS_DIR": str(tmp_path / "art")}, use_keyring=False)
    run = open_run(settings, mode="resume", announce=lambda _: None)
    with pytest.raises(ConfigError) as refused:
        Cycle(settings, run, announce=lambda _: None).stop()
    assert refused.value.remedy == ("leave out --backend local (from --backend): the run's "
                                    "pods are on RunPod")
    run.unlock()


def test_a_refused_stop_does_not_point_back_at_itself(tmp_path: Path, monkeypatch) -> None:
    """cycle.stop of a cluster whose trainer still runs: its own error says what bills and
    the ways on, and the step tasks' 'still billing' line was added after it, pointing at the
    collect it had tried (which refuses for the same reason) or at cycle.stop itself. The
    other step tasks keep that line."""
    from contextlib import contextmanager

    from invoke import Config, Context

    from podcycle import driver
    from podcycle.errors import PodCycleError
    from tasks import cycle as cycle_tasks

    class Refusing:
        run = None

        def stop(self, rescue: bool = False) -> None:
            raise PodCycleError("cluster c1 not deleted (it bills on)", "wait for its trainer")

        def collect(self) -> None:
            self.stop()

    @contextmanager
    def for_run(*args: Any, **kwargs: Any) -> Iterator[Refusing]:
        yield Refusing()

    monkeypatch.setattr(cycle_mod.Cycle, "for_run", staticmethod(for_run))
    monkeypatch.setattr(cycle_mod, "open_run", lambda *args, **kwargs: None)
    monkeypatch.setattr(driver, "still_billing",
                        lambda cycle, step, **_: "cluster c1 of run r1 is still running and "
                                            f"billing: run inv cycle.{step} again")
    c = Context(Config(overrides={"podcycle": {
        "artifacts_dir": str(tmp_path / "art"), "run_id": "r1"}}))
    with pytest.raises(PodCycleError) as stopped:
        cycle_tasks.stop.body.__wrapped__(c, run_id="r1")
    assert stopped.value.remedy == "wait for its trainer"
    with pytest.raises(PodCycleError) as collected:
        cycle_tasks.collect.body.__wrapped__(c, run_id="r1")
    # The task's own step is the one to run again (hunt, stop 51: the run's last failed
    # step was named, whatever the task).
    assert collected.value.remedy.endswith("→ cluster c1 of run r1 is still running and "
                                           "billing: run inv cycle.collect again")


def test_a_model_trained_before_the_last_push_is_said_so_at_collect_and_validate(
        tmp_path: Path) -> None:
    """push-dataset of another dataset after the train: collect brought the earlier
    training's model home and local-validate measured it on the new dataset, all exit 0, as
    if it were a model of that dataset."""
    from podcycle.runs import StepRecord

    cycle, _, _ = make_cycle(tmp_path)
    said: list[str] = []
    cycle.say = said.append
    pushed(cycle)
    cycle.state.steps["train"] = StepRecord("outdated")
    for step in (cycle.collect, lambda: cycle.local_validate(0, None)):
        cycle.state.steps["collect"] = StepRecord("done")  # an earlier training's, collected
        with pytest.raises(Exception):  # noqa: B017 - the stand-in pod has no model to give
            step()
    warnings = [line for line in said if line.startswith("warning: ")]
    assert [w.split(":")[1].strip() for w in warnings] == ["collect", "local-validate"], said
    assert all(f"(now {SMOKE})" in w and "inv cycle.train -r r1" in w for w in warnings)
    said.clear()
    cycle.state.steps["train"] = StepRecord("done")  # trained after the push: nothing to say
    with pytest.raises(Exception):  # noqa: B017
        cycle.collect()
    assert not [line for line in said if line.startswith("warning: ")]


def test_a_pod_made_under_another_pod_name_is_found_again_by_its_run(tmp_path: Path) -> None:
    """A start killed during its create under RUNPOD_POD_NAME=custom left pod custom-r1,
    which the run never recorded. A --resume without the variable looked for pod-cycle-r1,
    found none and made a second pod while the first billed on, and pod.leftovers called the
    first "made by no run of this tool". The run's pod name is recorded with its shape,
    before anything is created, and both look for that."""
    from podcycle import leftovers

    cycle, _, client = make_cycle(tmp_path, env={"RUNPOD_POD_NAME": "custom"})
    cycle.state.pod = None  # the create's answer never came: nothing recorded
    cycle.settle_shape()
    assert cycle.state.pod_name == "custom-r1"
    cycle.run.unlock()  # the process was killed
    client.pods.clear()
    client.pods["lost"] = {**pod_json("lost", name="custom-r1"),
                           "createdAt": runpod_time(time.time())}
    resumed, _, _ = make_cycle(tmp_path, client=client)  # RUNPOD_POD_NAME unset now
    del client.pods["pod1"]  # make_cycle's usual pod: not in this story
    resumed.state.pod = None
    said: list[str] = []
    resumed.say = said.append
    resumed.start()
    assert resumed.state.pod.id == "lost" and client.actions == []  # adopted, none made
    resumed.run.unlock()
    found = leftovers.survey(client, resumed.settings)
    assert [(f.pod.id, f.run_id) for f in found] == [("lost", "r1")]

    # Given another name later, the run keeps its own, and says where the new one applies.
    again, _, _ = make_cycle(tmp_path, client=client, env={"RUNPOD_POD_NAME": "other"})
    again.say = said.append
    again.settle_shape()
    assert again.pod_name() == "custom-r1"
    assert any("run r1's pods are named custom-r1 (from its first start); RUNPOD_POD_NAME "
               "(other) names the pods of new runs" in line for line in said), said


class LateClient(FakeClient):
    """RunPod answering, a few lookups late, the create of a start whose process was killed
    (kill -9 while its create was under way): the pod shows up under the run's name after
    the process that asked for it is gone."""

    def __init__(self, late: dict[str, Any], after: int) -> None:
        super().__init__()
        self.late, self.after, self.lookups = late, after, 0

    def find_pods_by_name(self, name: str) -> list[Pod]:
        self.lookups += 1
        if self.lookups > self.after:
            self.pods.setdefault(self.late["id"], self.late)
        return super().find_pods_by_name(name)


def killed_during_its_create(tmp_path: Path, client: FakeClient, *, ago: float = 1.0,
                             keep_pod: bool = False) -> None:
    """Run r1's start, killed during its create: the create's sending recorded (as
    Cycle.create_sending records it), nothing it made recorded, the lock gone with the
    process. `keep_pod`: a replacement's create (the run's recorded pod is gone)."""
    cycle, _, _ = make_cycle(tmp_path, client=client)
    del client.pods["pod1"]
    if not keep_pod:
        cycle.state.pod = None
    cycle.state.begin("start")
    cycle.create_sending()
    cycle.state.create_sent_at -= ago
    cycle.run.save()
    cycle.run.unlock()


def resumed_with_no_pod(tmp_path: Path, client: FakeClient) -> tuple[Cycle, list[str]]:
    cycle, _, _ = make_cycle(tmp_path, client=client)
    del client.pods["pod1"]  # make_cycle's usual pod: not in this story
    cycle.state.pod = None
    said: list[str] = []
    cycle.say = said.append
    return cycle, said


@pytest.mark.parametrize("then", ["start", "stop"])
def test_the_pod_a_killed_start_asked_for_is_awaited_not_made_twice(
        tmp_path: Path, monkeypatch, then: str) -> None:
    """`inv cycle.full-smoke` killed while RunPod made its pod: a --resume at once found no
    pod of the run's name yet and made a second one, and the first appeared moments later,
    both billing; a cycle.stop at once stopped nothing. Both now look for it by name until
    the killed create must have been answered, and take it up."""
    monkeypatch.setattr(cycle_mod, "CREATE_POLL_SECONDS", 0.001, raising=False)
    client = LateClient({**pod_json("late", name="pod-cycle-r1"),
                         "createdAt": runpod_time(time.time())}, after=3)
    killed_during_its_create(tmp_path, client)
    cycle, said = resumed_with_no_pod(tmp_path, client)
    if then == "start":
        cycle.start()  # FakeClient has no create_pod: a create would fail the test
        assert cycle.state.pod.id == "late" and client.actions == []
    else:
        cycle.stop()
        assert client.actions == [("late", "stop")]
        assert cycle.state.pod.id == "late" and not cycle.state.may_bill
    assert client.lookups > 3 and cycle.state.create_sent_at is None
    assert any("run r1's last create was sent 1s ago and no pod it made was recorded (its "
               "process killed, or its answer lost)" in line and "looked for by name" in line
               for line in said), said
    assert any("found pod late, made for that create: taking it up" in line
               for line in said), said


def test_a_create_answered_long_ago_is_not_awaited(tmp_path: Path) -> None:
    """Past the client's own create timeout and look-up time, a killed create was answered:
    nothing is awaited, and the record of it is dropped."""
    client = LateClient(pod_json("late"), after=10**6)
    killed_during_its_create(tmp_path, client, ago=3600)
    cycle, said = resumed_with_no_pod(tmp_path, client)
    assert cycle.await_a_killed_create("pod", cycle.live_pods_of_the_run) == []
    assert client.lookups == 1 and not said and cycle.state.create_sent_at is None


def test_a_recent_create_that_made_nothing_in_its_wait_is_said(tmp_path: Path) -> None:
    """Hunt (stop 54): RunPod made a pod 150 s after its create, which the client gave up on
    at 90 s; a --resume past that wait made another pod in silence, and the first billed on
    after the run ended. Past the wait nothing is awaited still, but a create sent minutes
    ago is said, with where a late pod would show."""
    client = LateClient(pod_json("late"), after=10**6)
    killed_during_its_create(tmp_path, client, ago=100)
    cycle, said = resumed_with_no_pod(tmp_path, client)
    assert cycle.await_a_killed_create("pod", cycle.live_pods_of_the_run) == []
    assert len(said) == 1 and re.fullmatch(
        r"note: run r1's last create, sent 1\d\ds ago, made no pod that RunPod shows; should "
        r"one appear later, inv pod.leftovers lists it and inv cycle.stop -r r1 stops it",
        said[0]), said
    assert cycle.state.create_sent_at is None and client.lookups == 1


def test_a_ctrl_c_in_the_wait_leaves_the_create_outstanding(tmp_path: Path, monkeypatch
                                                           ) -> None:
    """Ctrl-C while a resume waited for a killed start's pod marked the start interrupted,
    and the next resume, looking only for a start left running, made a second pod at once.
    The outstanding create is the record now, and a Ctrl-C leaves it."""
    monkeypatch.setattr(cycle_mod, "CREATE_POLL_SECONDS", 0.001, raising=False)

    class Interrupted(LateClient):
        def find_pods_by_name(self, name: str) -> list[Pod]:
            if self.lookups == 2:
                raise KeyboardInterrupt
            return super().find_pods_by_name(name)

    client = Interrupted(pod_json("late"), after=10**6)
    killed_during_its_create(tmp_path, client)
    cycle, _ = resumed_with_no_pod(tmp_path, client)
    with pytest.raises(KeyboardInterrupt):
        cycle.start()
    cycle.run.reload()
    assert cycle.state.steps["start"].status == "interrupted"
    assert cycle.state.create_sent_at is not None  # the next start waits again


def test_a_killed_replacements_pod_is_stopped_with_the_run(tmp_path: Path, monkeypatch
                                                          ) -> None:
    """The run's pod was gone, its start asked for a new one and was killed: cycle.stop
    stopped the recorded pod ("gone") and the new one billed on; the next start made a
    third. The stop now awaits it and stops it too."""
    monkeypatch.setattr(cycle_mod, "CREATE_POLL_SECONDS", 0.001, raising=False)
    client = LateClient({**pod_json("new", name="pod-cycle-r1"),
                         "createdAt": runpod_time(time.time())}, after=2)
    killed_during_its_create(tmp_path, client, keep_pod=True)  # pod1, recorded, is gone
    cycle, _, _ = make_cycle(tmp_path, client=client)
    del client.pods["pod1"]
    said: list[str] = []
    cycle.say = said.append
    cycle.stop()
    assert ("new", "stop") in client.actions and "new" in cycle.state.replaced
    assert any("pod new (pod-cycle-r1) is also run r1's, made for a create whose process "
               "was killed: stopping it" in line for line in said), said
    assert cycle.state.create_sent_at is None


def test_a_create_is_recorded_as_sent_before_it_goes_out(tmp_path: Path) -> None:
    """The wait needs to know when the killed create went out: recorded just before the
    request (after the template, GPU and key look-ups), dropped once what it made is
    recorded, and dropped when RunPod refuses it (it made nothing)."""
    from podcycle.provision import provision_pod
    from tests.test_inputs import CandidateClient, refusal

    seen: list[Any] = []
    client = CandidateClient([refusal(400, "no capacity")])
    settings = resolve({"template_id": "tpl-chess"}, {}, environ={}, use_keyring=False)
    made = provision_pod(Backend("runpod", "http://x", client, "env"), settings, name="p",
                         env={}, sending=lambda: seen.append(("sending", len(client.created))),
                         refused=lambda: seen.append(("refused", len(client.created))))
    assert made.pod.id == "p2"
    assert seen == [("sending", 0), ("refused", 1), ("sending", 1)]


def test_a_step_after_a_start_killed_mid_create_says_a_pod_may_exist(tmp_path: Path) -> None:
    """push-dataset after a start killed during its create said "run r1 has no pod yet"
    while RunPod had made pod-cycle-r1 and it billed: the start again takes it up."""
    client = FakeClient()
    killed_during_its_create(tmp_path, client)
    cycle, _ = resumed_with_no_pod(tmp_path, client)
    with pytest.raises(StepFailed) as refused:
        pushed(cycle)
    assert refused.value.message == ("run r1 recorded no pod: its last create got no answer "
                                     "it recorded (its process killed, or RunPod silent), "
                                     "and may have made one")
    assert refused.value.remedy.startswith("run inv cycle.start -r r1: it takes up a pod")


def test_a_step_on_a_booting_pod_says_to_wait_for_it(tmp_path: Path) -> None:
    """push-dataset while the run's pod still booted (a start killed in its wait) said
    "continue with --resume, or cycle.start", then "run push-dataset again": that failed the
    same way until it booted. It now says it boots, and that cycle.start waits for it."""
    cycle, _, client = make_cycle(tmp_path)
    client.pods["pod1"] = pod_json("pod1", "STARTING")
    with pytest.raises(StepFailed) as refused:
        pushed(cycle)
    assert refused.value.message == ("the run's pod pod1 is STARTING, not RUNNING yet: it is "
                                     "still booting")
    assert refused.value.remedy.startswith("wait for it with inv cycle.start -r r1")


def test_a_create_that_failed_in_this_process_leaves_nothing_to_await(tmp_path: Path,
                                                                       monkeypatch) -> None:
    """A create RunPod answered with a 500 (the client then looked for it by name, and
    nothing was there): the same process's stop waited 90 s for it, and so did a --resume
    at once. Only a process killed mid-create leaves a create outstanding."""
    from podcycle.runpod.errors import error_for

    def failing(*_args: Any, sending: Any = None, **_kwargs: Any) -> Any:
        sending()  # it went out
        raise error_for(500, "POST", "/v2/pods", "create failed", "http://x")

    monkeypatch.setattr(cycle_mod.provision, "provision_pod", failing)
    cycle, _, client = make_cycle(tmp_path)
    del client.pods["pod1"]
    cycle.state.pod = None
    with pytest.raises(ServerError):
        cycle._provision()
    assert cycle.state.create_sent_at is None
    cycle.run.reload()
    assert cycle.run.state.create_sent_at is None


def test_a_resume_plays_the_strength_check_the_run_was_started_with(tmp_path: Path,
                                                                   monkeypatch) -> None:
    """`full-smoke --strength-games 20`, Ctrl-C during the match, then `--resume`: the match
    was dropped without a word (the run said "ok", no strength). The run keeps the check it
    was started with, and a resume whose local-validate is still to come plays it."""
    from podcycle import driver
    from podcycle.runs import RunFolder, StepRecord

    played: list[tuple[int, str | None]] = []
    monkeypatch.setattr(driver, "_drive", lambda *a, strength, **k: played.append(strength))
    cycle, session, _ = make_cycle(tmp_path, run_id="s1")
    cycle.run.unlock()
    settings = resolve({}, {}, environ={"RUNPOD_CYCLE_RUN_ID": "s1",
                                        "POD_CYCLE_ARTIFACTS_DIR": str(tmp_path / "art")},
                       use_keyring=False)

    def smoke(resume: bool, games: int | None = None, opponent: str | None = None
              ) -> list[str]:
        said: list[str] = []
        driver.full_smoke(settings, dataset_dir=SMOKE, resume=resume, announce=said.append,
                          strength_games=games, strength_opponent=opponent,
                          backend=cycle.backend, session_factory=lambda *a: session)
        return said

    state = cycle.run.state
    state.steps = {}
    cycle.run.save()
    smoke(False, 20, "random")
    assert played[-1] == (20, "random")
    saved = RunFolder(tmp_path / "art", "s1").state
    assert saved.strength_asked == {"games": 20, "opponent": "random"}
    said = smoke(True)  # local-validate still to come: the run's own check
    assert played[-1] == (20, "random")
    assert "strength check: the run's own, 20 games against random (as it was started)" in said
    assert smoke(True, 4, "uci:/bin/true") and played[-1] == (4, "uci:/bin/true")  # given wins
    later = RunFolder(tmp_path / "art", "s1")
    later.state.steps["local-validate"] = StepRecord("done")
    later.save()
    said = smoke(True)  # validated already: nothing of strength to play
    assert played[-1] == (0, None) and not any("strength" in line for line in said)
    later.state.steps.pop("local-validate")
    later.save()
    smoke(True, 0)  # --strength-games 0 given: none, and none kept for later resumes
    assert played[-1] == (0, None)
    assert RunFolder(tmp_path / "art", "s1").state.strength_asked is None
    smoke(True)
    assert played[-1] == (0, None)
    # A PGN in strength/ of this version's run (eval.match --run writes there too): no note.
    (tmp_path / "art" / "s1" / "strength").mkdir()
    (tmp_path / "art" / "s1" / "strength" / "match-20261207-021854.pgn").write_text("")
    said = smoke(True)
    assert not any("strength" in line for line in said)
    # Started by an older version (state schema 2), which kept no record of the check: its
    # cut-short match is said, not skipped in silence.
    state_path = tmp_path / "art" / "s1" / "state.json"
    older = json.loads(state_path.read_text())
    del older["strength_asked"]
    state_path.write_text(json.dumps({**older, "schema": 2}))
    said = smoke(True)
    assert played[-1] == (0, None) and any(
        line.startswith("note: this run's strength match was cut short") for line in said)


def test_a_pods_id_given_as_a_clusters_is_said_to_be_a_pod() -> None:
    """cluster.status or cluster.delete of a pod's id said only "not found: GET
    /v2/clusters/ID/pods (404)" or "no cluster ... deleted already": it is a pod."""
    from podcycle.clusters import pod_not_cluster

    client = FakeClient()
    client.pods["lone1"] = pod_json("lone1")
    client.pods["node1"] = {**pod_json("node1"), "cluster": {"id": "cl7"}}
    lone = pod_not_cluster(client, "lone1")
    assert lone.message == "lone1 is a pod, not a cluster"
    assert lone.remedy.startswith("inv pod.status lone1 shows it")
    node = pod_not_cluster(client, "node1")
    assert node.message == "node1 is a pod, a node of cluster cl7, not a cluster"
    assert pod_not_cluster(client, "nothing") is None


@pytest.mark.parametrize("finished", [False, True], ids=["mid-run", "every-step-done"])
def test_a_step_on_a_stopped_pod_names_a_start_of_this_run(tmp_path: Path,
                                                           finished: bool) -> None:
    """A step on a run whose pod was stopped said "... --resume, or inv cycle.start": that
    cycle.start, run as printed (no run id), made a new run and a second billed pod, and
    --resume of a run whose steps are all done did nothing (hunt, stop 51). The start named
    is this run's; the --resume only where it has steps left."""
    from podcycle.runs import WORK_STEPS, StepRecord

    client = FakeClient()
    client.pods["pod1"] = pod_json(status="EXITED")
    cycle, _, _ = make_cycle(tmp_path, client=client)
    if finished:
        cycle.state.steps = {name: StepRecord("done", pod_id="pod1") for name in WORK_STEPS}
    with pytest.raises(StepFailed) as refused:
        cycle.session()
    assert refused.value.message == "the run's pod pod1 is EXITED, not RUNNING"
    start = ("run inv cycle.start -r r1 (it starts the pod again, or replaces it), then this "
             "step again")
    assert refused.value.remedy == (start if finished else
                                    "continue the run with RUNPOD_CYCLE_RUN_ID=r1 inv "
                                    f"cycle.full-smoke --resume (it starts or replaces the "
                                    f"pod), or {start}")


def test_a_step_task_on_a_run_a_full_smoke_ended_reopens_it(tmp_path: Path) -> None:
    """A run a full-smoke had ended (outcome ok), trained again by step tasks (cycle.start,
    cycle.train): its old outcome kept it finished, not an open step-by-step run, and
    pod.leftovers --stop stopped its pod before its new model was collected (hunt, stop 51).
    A step that changes none of its results keeps it finished: a local-validate with
    --strength-games (the README's way to play a finished run), a start, a stop (its kept
    pod), a train that fails."""
    from podcycle.runs import WORK_STEPS, StepRecord

    cycle, _, _ = make_cycle(tmp_path)
    cycle.state.steps = {name: StepRecord("done", started_at=1.0, pod_id="pod1")
                         for name in WORK_STEPS}
    cycle.state.driver, cycle.state.outcome = "full-smoke", "ok"
    cycle.run.save()
    for step in ("stop", "local-validate", "start"):
        with cycle.step(step):
            pass
    with pytest.raises(StepFailed), cycle.step("train"):
        raise StepFailed("the run's pod pod1 is EXITED, not RUNNING", "")
    assert cycle.state.outcome == "ok"
    with cycle.step("train"):
        pass
    saved = RunFolder(cycle.run.path.parent, "r1").state  # as the next command reads it
    assert saved.outcome is None and saved.driver == "steps" and not saved.finished
    assert saved.open_between_steps
    assert [e["text"] for e in saved.events if "reopened" in e["text"]] == [
        "reopened step by step (train); it had ended: ok"]


def test_a_step_after_the_pod_and_its_uncollected_model_went_says_train_again(
        tmp_path: Path) -> None:
    """The run's pod terminated (or its cluster deleted) after its train, before its collect:
    cycle.collect said to run `inv cycle.start -r r1, then this step again`, which started a
    new pod with no model on it. The model went with the disk: train again (hunt, stop 52)."""
    from podcycle.runs import StepRecord

    client = FakeClient()
    cycle, _, _ = make_cycle(tmp_path, client=client)
    del client.pods["pod1"]  # terminated: RunPod knows it no more
    cycle.state.steps = {name: StepRecord("done", pod_id="pod1")
                         for name in ("start", "push-dataset", "train")}
    with pytest.raises(StepFailed) as refused:
        cycle.session()
    assert refused.value.message == ("the run's pod pod1 is gone, and the model it trained "
                                     "went with its disk before it was collected")
    assert refused.value.remedy == ("train it again: RUNPOD_CYCLE_RUN_ID=r1 inv "
                                    "cycle.full-smoke --resume (on a new pod)")
    client.pods["pod1"] = pod_json("pod1", "TERMINATED")  # RunPod's word for it, same
    with pytest.raises(StepFailed) as refused:
        cycle.session()
    assert refused.value.message.startswith("the run's pod pod1 is gone, and the model")
    del client.pods["pod1"]
    cycle.state.steps["collect"] = StepRecord("done", pod_id="pod1")  # brought home: as before
    with pytest.raises(StepFailed) as refused:
        cycle.session()
    assert refused.value.message == "the run's pod pod1 is gone, not RUNNING"


def test_deleting_the_pod_or_cluster_of_an_uncollected_model_names_it_before_yes(
        tmp_path: Path, monkeypatch) -> None:
    """pod.terminate --yes and cluster.delete --yes of a run's pod (cluster) after its train,
    before its collect, deleted the model in silence; cluster.delete's refusal without --yes
    named no model at all (hunt, stop 52). Both refusals now name the run and the collect
    that brings the model home; with --yes they say it went (and how to train again)."""
    from types import SimpleNamespace

    from invoke import Config, Context

    from podcycle import backend
    from podcycle.leftovers import lost_model_line, uncollected_model
    from podcycle.runs import ClusterRecord, StepRecord
    from tasks import cluster as cluster_tasks
    from tasks import pod as pod_tasks

    class Account:  # the pod and the cluster exist (a stand-in: no RunPod here); a refusal
        def get_pod(self, pod_id: str) -> Any:  # without --yes looks its id up first
            return Pod.from_api(pod_json(pod_id))

        def get_cluster(self, cluster_id: str) -> Any:
            return cluster_id

    monkeypatch.setattr(backend, "connect", lambda *a, **k: SimpleNamespace(client=Account()))

    cycle, _, _ = make_cycle(tmp_path)
    cycle.state.steps = {name: StepRecord("done", pod_id="pod1")
                         for name in ("start", "push-dataset", "train")}
    cycle.run.save()
    settings = cycle.settings
    assert uncollected_model(settings, pod_id="pod1") == ("r1", "trained model")
    assert uncollected_model(settings, pod_id="pod2") is None
    c = Context(Config(overrides={"podcycle": {"artifacts_dir": str(tmp_path / "art")}}))
    with pytest.raises(ConfigError) as refused:
        pod_tasks.terminate.body.__wrapped__(c, "pod1")
    assert refused.value.message == ("pod pod1 holds run r1's trained model (not yet "
                                     "collected), and terminating it deletes its disk for good: "
                                     "refused without --yes")
    assert refused.value.remedy.startswith("bring the model home first: inv cycle.collect -r r1")
    assert lost_model_line(("r1", "trained model"), "the pod's disk") == (
        "run r1's trained model (not yet collected) went with the pod's disk: "
        "RUNPOD_CYCLE_RUN_ID=r1 inv cycle.full-smoke --resume trains it again")
    # Second read: what RunState.left_on counts, the same: a train that failed after its
    # model was written (a cluster's smoke check), and one the host lost mid-way.
    cycle.state.steps["train"] = StepRecord("failed", pod_id="pod1", model_trained=True)
    cycle.run.save()
    assert uncollected_model(settings, pod_id="pod1") == ("r1", "trained model")
    cycle.state.steps["train"] = StepRecord("interrupted", pod_id="pod1")
    cycle.run.save()
    assert uncollected_model(settings, pod_id="pod1") == ("r1", "training")
    # A run on a network volume keeps its model on the volume, which outlives the pod.
    from podcycle.runs import VolumeRef

    cycle.state.network_volume = VolumeRef(id="vol1", name="v", dataCenter="EU-RO-1")
    cycle.run.save()
    assert uncollected_model(settings, pod_id="pod1") is None
    cycle.state.network_volume = None
    cycle.state.steps["train"] = StepRecord("done", pod_id="pod1")
    cycle.run.save()
    # A cluster's run: its model sits on the cluster's primary.
    cycle.state.cluster = ClusterRecord("cl1", name="pod-cycle-r1", pod_count=2)
    cycle.run.save()
    assert uncollected_model(settings, pod_id="pod1") is None
    assert uncollected_model(settings, cluster_id="cl1") == ("r1", "trained model")
    with pytest.raises(ConfigError) as refused:
        cluster_tasks.delete.body.__wrapped__(c, "cl1")
    assert refused.value.message.startswith("cluster cl1 holds run r1's trained model (not "
                                            "yet collected)")
    assert "inv cycle.collect -r r1" in refused.value.remedy
    # Collected: the plain refusals, as before.
    cycle.state.steps["collect"] = StepRecord("done", pod_id="pod1")
    cycle.run.save()
    with pytest.raises(ConfigError) as refused:
        cluster_tasks.delete.body.__wrapped__(c, "cl1")
    assert refused.value.message.startswith("deleting cluster cl1 terminates every node")


def test_leftovers_never_says_none_after_naming_a_leftover_cluster(
        tmp_path: Path, monkeypatch, capsys) -> None:
    """Hunt: pod.leftovers listed `leftover cluster lc1 (run cl1 ...)`, then, beside an open
    step-by-step run's pod, `no leftovers: every pod ...`. It is the pods that are not."""
    from types import SimpleNamespace

    from invoke import Config, Context

    from podcycle import backend, leftovers
    from podcycle.leftovers import ClusterLeftover, Leftover
    from tasks import pod as pod_tasks

    cluster = Cluster.from_api({"id": "lc1", "name": "pod-cycle-cl1", "type": "TRAINING",
                                "pods": [pod_json("n1"), pod_json("n2")]})
    open_pod = Leftover(Pod.from_api(pod_json("pod2", name="pod-cycle-r2")), "r2", True,
                        60.0, 0.01, next_step="train")
    monkeypatch.setattr(backend, "connect", lambda *a, **k: SimpleNamespace(client=None))
    monkeypatch.setattr(leftovers, "survey", lambda *a, **k: [open_pod])
    monkeypatch.setattr(leftovers, "survey_clusters", lambda *a, **k: [
        ClusterLeftover(cluster, "cl1", True, 60.0, 0.02)])
    c = Context(Config(overrides={"podcycle": {"artifacts_dir": str(tmp_path / "art")}}))
    pod_tasks.leftovers.body.__wrapped__(c)
    captured = capsys.readouterr()
    said = captured.out + captured.err
    assert "leftover cluster lc1 (" in said and "run cl1" in said, said
    assert "no leftovers" not in said, said
    assert ("no leftover pods: every pod of this tool's runs that bills is driven by a live "
            "process or waits for the next step of its run") in said, said


def test_a_resume_after_a_killed_create_trains_what_the_run_was_started_with(
        tmp_path: Path, monkeypatch) -> None:
    """Hunt: `full-smoke -e 2 -d DS` killed during its create (or Ctrl-C'd before its first
    push), then the printed `--resume`: it pushed the default dataset and trained 3 epochs,
    exit 0, no word. Only a push and a train recorded what the run was asked for. A new
    full-smoke now records both before its steps."""
    import shutil

    from podcycle.driver import full_smoke

    ds = tmp_path / "my data"
    ds.mkdir()
    for split in ("train.jsonl", "val.jsonl"):
        shutil.copy(SMOKE / split, ds / split)
    client = FakeClient()
    client.create_requests = 1  # the create was sent: the run is no refusal to forget
    session = RecordingSession(results={"cycle_paths.sh": Result(0, PATHS, "")})
    backend = Backend("fake", "http://fake", client, "test", own_ssh_key=tmp_path / "key",
                      training_env=dict(CPU_TRAINING))

    def killed_in_the_create(self: Cycle) -> None:
        self.state.create_sent_at = time.time()
        self.run.save()
        raise KeyboardInterrupt  # stands for the kill -9: the record is what it left

    pushed: list[Path] = []

    class Pushed(Exception):
        pass

    def push(self: Cycle, dataset: Path) -> None:
        pushed.append(dataset)
        raise Pushed

    environ = {"RUNPOD_CYCLE_RUN_ID": "k1", "POD_CYCLE_ARTIFACTS_DIR": str(tmp_path / "art")}
    monkeypatch.setattr(Cycle, "start", killed_in_the_create)
    asked = resolve({}, {}, environ={**environ, "TRAIN_EPOCHS": "2", "TRAIN_BLOCKS": "1"},
                    use_keyring=False)
    with pytest.raises(KeyboardInterrupt):
        full_smoke(asked, dataset_dir=ds, train_extra_args="--lr 0.01",
                   announce=lambda _: None, backend=backend,
                   session_factory=lambda *a: session)
    state = RunFolder(tmp_path / "art", "k1").state
    assert state.dataset_asked == str(ds.resolve()) and state.dataset is None
    assert (state.train_settings.epochs, state.train_settings.blocks,
            state.train_settings.extra_args) == (2, 1, "--lr 0.01")

    # The resume's start takes up the pod that create made (Cycle.await_a_killed_create).
    def took_up(self: Cycle) -> None:
        self.state.create_sent_at = None
        self.state.set_pod(PodRecord(id="pod1", name="pod-cycle-k1", price_per_hour=3.59))
        self.run.save()

    client.pods["pod1"] = pod_json(name="pod-cycle-k1")
    monkeypatch.setattr(Cycle, "start", took_up)
    monkeypatch.setattr(Cycle, "push_dataset", push)
    said: list[str] = []
    plain = resolve({}, {}, environ=environ, use_keyring=False)  # the hint: no -d, no -e
    with pytest.raises(Pushed):
        full_smoke(plain, resume=True, announce=said.append, backend=backend,
                   session_factory=lambda *a: session)
    assert pushed == [ds.resolve()]
    assert f"dataset: the run's own, {ds.resolve()} (-d gives another)" in said, said
    # Second read: a standing RUNPOD_DATASET_DIR (or TRAIN_EPOCHS) beats the run's own, as
    # it always has; a resume pushed it, and trained so, without a word. It is said now.
    other = tmp_path / "other"
    shutil.copytree(ds, other)
    said.clear()
    pushed.clear()
    standing = resolve({}, {}, environ={**environ, "RUNPOD_DATASET_DIR": str(other),
                                        "TRAIN_EPOCHS": "3"}, use_keyring=False)
    client.pods["pod1"] = pod_json(name="pod-cycle-k1")  # the first resume stopped it
    with pytest.raises(Pushed):
        full_smoke(standing, resume=True, announce=said.append, backend=backend,
                   session_factory=lambda *a: session)
    assert pushed == [other.resolve()]
    assert any(line.startswith(f"dataset: {other.resolve()} from RUNPOD_DATASET_DIR") and
               f"not the run's own {ds.resolve()}" in line for line in said), said
    resumed = Cycle(standing, RunFolder(tmp_path / "art", "k1"), announce=lambda _: None,
                    backend=backend, session_factory=lambda *a: session)
    told: list[str] = []
    resumed.say = told.append
    resumed.keep_train_settings(None)
    assert any(line.startswith("train: epochs 3 from TRAIN_EPOCHS") and
               "not the run's 2" in line for line in told), told


def test_leftovers_names_a_create_a_killed_process_left_in_flight(
        tmp_path: Path, monkeypatch, capsys) -> None:
    """Hunt: pod.leftovers right after a full-smoke was killed (-9) in its create said "no
    leftovers: every pod ... is driven by a live process"; nothing drove it, and its pod
    appeared seconds later. Such a run is named, with the stop that waits for its pod."""
    import json as json_mod
    from types import SimpleNamespace

    from invoke import Config, Context

    from podcycle import backend, leftovers
    from tasks import pod as pod_tasks

    state = RunState("k9", create_sent_at=time.time() - 3)
    (tmp_path / "art" / "k9").mkdir(parents=True)
    (tmp_path / "art" / "k9" / "state.json").write_text(json_mod.dumps(state.to_json()))
    monkeypatch.setattr(backend, "connect",
                        lambda *a, **k: SimpleNamespace(client=SimpleNamespace()))
    monkeypatch.setattr(leftovers, "survey", lambda *a, **k: [])
    monkeypatch.setattr(leftovers, "survey_clusters", lambda *a, **k: [])
    c = Context(Config(overrides={"podcycle": {"artifacts_dir": str(tmp_path / "art")}}))
    pod_tasks.leftovers.body.__wrapped__(c)
    said = capsys.readouterr().err
    assert "note: run k9's create was sent 3s ago by a process that ended before it " \
        "recorded what it made: RunPod may still make its pod (inv cycle.stop -r k9 waits " \
        "for it and stops it)" in said, said
    # Second read: the line before it still said every billing pod was driven.
    assert "no leftover pods listed yet" in said and "driven by a live process" not in said
    pod_tasks.leftovers.body.__wrapped__(c, json=True)
    rows = json_mod.loads(capsys.readouterr().out)
    assert rows == [{"kind": "create-in-flight", "run_id": "k9", "seconds_since_create": 3}]
    # A run started on another backend makes its pod there: not this listing's.
    state.backend = "runpod"
    (tmp_path / "art" / "k9" / "state.json").write_text(json_mod.dumps(state.to_json()))
    pod_tasks.leftovers.body.__wrapped__(c)
    assert "create was sent" not in capsys.readouterr().err
    state.backend = None
    # Once RunPod must have answered, the pod (if any) is listed by name: no note.
    state.create_sent_at = time.time() - 600
    (tmp_path / "art" / "k9" / "state.json").write_text(json_mod.dumps(state.to_json()))
    pod_tasks.leftovers.body.__wrapped__(c)
    assert "create was sent" not in capsys.readouterr().err


def test_a_create_given_up_on_stays_outstanding_and_its_late_pod_is_stopped(
        tmp_path: Path, monkeypatch) -> None:
    """Hunt (stop 54): a create that got no answer ("no pod of that name appeared within 30s
    ... RunPod may still make it") was settled all the same: the next start made a second
    pod at once, the first landed a minute later, and cycle.stop (which the error offered)
    stopped only the second, while the first billed on, the run saying "ok". The create now
    stays outstanding (the next start and stop wait for it), and a stop looks once for a pod
    of the run that landed later still and stops it too. A create RunPod refused, or that
    never left, is settled as before."""
    from podcycle import provision
    from podcycle.errors import ConfigError
    from podcycle.runpod.client import _outstanding
    from podcycle.runpod.errors import Unreachable

    client = FakeClient()
    cycle, _ = resumed_with_no_pod(tmp_path, client)

    def unanswered(*args: Any, sending: Any, **kwargs: Any) -> None:
        sending()
        raise _outstanding(Unreachable("creating pod 'pod-cycle-r1' got no answer, and no pod "
                                       "of that name appeared within 30s"))

    monkeypatch.setattr(provision, "provision_pod", unanswered)
    with pytest.raises(Unreachable):
        cycle.start()
    cycle.run.reload()
    assert cycle.state.create_sent_at is not None  # the next start or stop waits for it

    def refused(*args: Any, sending: Any, **kwargs: Any) -> None:
        sending()
        raise ConfigError("no GPU of that type in stock")

    monkeypatch.setattr(provision, "provision_pod", refused)
    cycle.state.create_sent_at = None  # its wait is not this story
    with pytest.raises(ConfigError):
        cycle._provision()
    assert cycle.state.create_sent_at is None  # RunPod said no: nothing is outstanding

    # The run's pod, made by a later start; the given-up create's pod lands after its wait.
    client.pods["pod1"] = pod_json("pod1", name="pod-cycle-r1")
    cycle._record_pod(Pod.from_api(client.pods["pod1"]), price=3.59)
    made_for = {"env": {"POD_CYCLE_RUN": cycle.run_token()}}  # as the create asked
    client.pods["late"] = {**pod_json("late", name="pod-cycle-r1"), **made_for}
    client.pods["other"] = {**pod_json("other", name="pod-cycle-r2"), **made_for}  # not its name
    said: list[str] = []
    cycle.say = said.append
    cycle.stop()
    assert ("pod1", "stop") in client.actions and ("late", "stop") in client.actions
    assert ("other", "stop") not in client.actions and "late" in cycle.state.replaced
    assert any("pod late (pod-cycle-r1) is also run r1's, made for a create that got no "
               "answer in time: stopping it" in line for line in said), said
