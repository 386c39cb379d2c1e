"""Clusters against RunPod REST v2, through a STAND-IN for the RunPod cloud (the real one cannot
be reached from a test): an in-memory account that answers the calls a cluster run makes and
validates every request it gets (path, query and body) against RunPod's official OpenAPI spec
with openapi-core, as tests/test_openapi_contract.py does for the local RunPod. A request the
spec refuses fails the test. Checked here: the create body is spec-valid and carries no
templateId, registry or cloud; readiness waits for every member; DELETE is sent at the end,
after Ctrl-C and after a node's failure; leftovers list our clusters with
includeClusterPods=true; the spend guard's deadline deletes the cluster."""

from __future__ import annotations

import copy
import io
import json
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
import requests
from openapi_core import Config, OpenAPI
from openapi_core.contrib.requests import RequestsOpenAPIRequest

from podcycle import clusters, leftovers, remote
from podcycle.backend import CPU_TRAINING, Backend
from podcycle.config import resolve
from podcycle.cycle import Cycle, open_run
from podcycle.driver import full_smoke
from podcycle.errors import PodCycleError, StepFailed
from podcycle.remote import Result, Transfer
from podcycle.runpod.client import RunPodClient
from tests.conftest import ROOT, eventually

SPEC = Path(__file__).parent / "data" / "runpod-rest-v2.openapi.json"
SPEC_SERVER = "https://api.runpod.io"
GPU = "NVIDIA H100 80GB HBM3"
KEY_LINE = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIClusterStandInKeyForTests0000000000 test"
PATHS = ("repo=/w/repo\ntraining=/opt/training\ntiming_log=/w/repo/t.jsonl\nvenv=/opt/venv\n"
         "volume=\n")
SMOKE = ROOT / "data" / "dataset" / "_smoke_runpod"


@pytest.fixture(scope="module")
def openapi() -> OpenAPI:
    config = Config(extra_media_type_deserializers={"application/problem+json": json.loads})
    return OpenAPI.from_file_path(str(SPEC), config=config)


class SpecViolation(AssertionError):
    pass


@dataclass
class CloudStandIn:
    """The RunPod cloud's v2 API for clusters, in memory (a stand-in: see the module
    docstring). Members turn RUNNING one node at a time, `polls_per_node` member listings
    apart, so readiness has to wait for the last one."""

    openapi: OpenAPI
    private_template: bool = False
    polls_per_node: int = 2
    requests: list[dict[str, Any]] = field(default_factory=list)
    clusters: dict[str, dict[str, Any]] = field(default_factory=dict)
    members: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    member_polls: int = 0
    seen_members: list[list[str]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    cluster_bills: list[dict[str, Any]] = field(default_factory=list)
    # The next create makes its cluster, then answers 500: a create whose answer is lost
    # (looked up at once by its name, so the listing right after it does not show it yet).
    lose_create_answer: bool = False
    unlisted_once: bool = False
    # The next create is refused (400) and makes nothing: no capacity, say.
    refuse_create: bool = False
    # Every DELETE of a cluster fails (500) and deletes nothing.
    fail_deletes: bool = False
    # GET paths answered 404 once, though what they name is there (RunPod's glitch).
    glitch_404: set[str] = field(default_factory=set)

    # -- validation -------------------------------------------------------------------------
    def validate(self, method: str, path: str, query: str, body: bytes | None) -> None:
        url = f"{SPEC_SERVER}{path}" + (f"?{query}" if query else "")
        prepared = requests.Request(method, url, data=body or None, headers={
            "Content-Type": "application/json", "Authorization": "Bearer k"}).prepare()
        try:
            self.openapi.validate_request(RequestsOpenAPIRequest(prepared))
        except Exception as exc:  # noqa: BLE001 - reported as the test's failure
            detail = "; ".join(str(e) for e in getattr(exc, "schema_errors", []) or [exc])
            raise SpecViolation(f"{method} {path}?{query} breaks the spec: {detail}") from None

    # -- the account ------------------------------------------------------------------------
    def handle(self, method: str, path: str, query: str, body: bytes | None
               ) -> tuple[int, Any]:
        self.validate(method, path, query, body)
        params = {k: v[0] for k, v in parse_qs(query).items()}
        data = json.loads(body) if body else None
        with self.lock:
            self.requests.append({"method": method, "path": path, "params": params,
                                  "body": data})
            return self._route(method, path, params, data)

    def _route(self, method: str, path: str, params: dict[str, str], body: Any
               ) -> tuple[int, Any]:
        parts = path.strip("/").split("/")[1:]
        if path == "/v2/templates":
            template = {"id": "tpl1", "name": "chess-bot-training",
                        "image": "ghcr.io/example/chess-bot-runpod:latest"}
            if self.private_template:
                template["registry"] = "reg-1"
            return 200, {"templates": [template]}
        if path == "/v2/catalog/gpus":
            return 200, {"gpus": [{
                "id": GPU, "name": "H100 SXM", "pool": None, "manufacturer": "NVIDIA",
                "memory": 80, "secure": True, "community": False,
                "price": {"secure": 2.5, "community": 0}, "maxCount": {"secure": 8,
                                                                       "community": 0},
                "availability": "HIGH"}]}
        if path == "/v2/account/ssh-keys":
            return 200, {"keys": [KEY_LINE]}
        if path == "/v2/catalog/datacenters":
            return 200, {"dataCenters": [
                {"id": dc, "name": dc, "region": "UNKNOWN", "globalNetwork": False,
                 "networkVolumeTypes": ["STANDARD"], "compliance": []}
                for dc in ("EU-RO-1", "US-TX-3")]}
        if path == "/v2/clusters" and method == "POST":
            if self.refuse_create:
                self.refuse_create = False
                return 400, {"title": "Bad Request", "status": 400,
                             "detail": "no instances available"}
            made = self._create(body)
            if self.lose_create_answer:
                self.lose_create_answer = False
                self.unlisted_once = True
                return 500, {"title": "Internal Server Error", "status": 500,
                             "detail": "the answer was lost"}
            return 201, made
        if path == "/v2/clusters":
            if self.unlisted_once:
                self.unlisted_once = False
                return 200, {"clusters": []}
            return 200, {"clusters": list(self.clusters.values())}
        if parts[:1] == ["clusters"]:
            cluster_id = parts[1]
            if method == "GET" and path in self.glitch_404:
                self.glitch_404.discard(path)
                return 404, {"title": "Not Found", "status": 404}
            if cluster_id not in self.clusters:
                return 404, {"title": "Not Found", "status": 404}
            if len(parts) == 3:
                return 200, {"pods": self._poll_members(cluster_id)}
            if method == "DELETE" and self.fail_deletes:
                return 500, {"title": "Internal Server Error", "status": 500,
                             "detail": "the delete failed"}
            if method == "DELETE":
                del self.clusters[cluster_id]
                self.members.pop(cluster_id)
                return 204, None
            return 200, self.clusters[cluster_id]
        if path == "/v2/pods":
            shown = [p for ms in self.members.values() for p in ms] \
                if params.get("includeClusterPods") == "true" else []
            return 200, {"pods": shown}
        if parts[:1] == ["pods"]:
            pod = next((p for ms in self.members.values() for p in ms if p["id"] == parts[1]),
                       None)
            if pod is None:
                return 404, {"title": "Not Found", "status": 404}
            if method != "GET":
                return 409, {"title": "Conflict", "status": 409,
                             "detail": "a cluster member: delete its cluster"}
            return 200, pod
        if path == "/v2/billing/clusters":
            records = [r for r in self.cluster_bills
                       if params.get("clusterId") in (None, r["clusterId"])]
            return 200, {"records": records, "metadata": {
                "query": {"startTime": params.get("startTime")}, "recordCount": len(records),
                "uniqueClusterCount": len(records), "totals": {}}}
        if path == "/v2/billing/pods":
            return 200, {"records": [], "metadata": {"query": {}}}
        return 404, {"title": "Not Found", "status": 404}

    def _create(self, body: dict[str, Any]) -> dict[str, Any]:
        cluster_id = f"cl{len(self.sent('POST', '/v2/clusters'))}"  # never one reused
        compute = body["compute"]
        cluster = {"id": cluster_id, "name": body["name"], "type": body["type"],
                   "compute": compute, "pods": {"total": compute["podCount"],
                                                "byStatus": {"PROVISIONING": 2}},
                   # RunPod's clock at the create (a run adopts only what it may have made)
                   "createdAt": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
        self.clusters[cluster_id] = cluster
        self.members[cluster_id] = [
            {"id": f"{cluster_id}n{rank}", "name": f"{body['name']}-{rank}",
             "status": "PROVISIONING", "cloud": "SECURE", "cost": 2.5 * compute["gpuCountPerPod"],
             "gpu": {"id": compute["gpuTypeId"], "count": compute["gpuCountPerPod"]},
             "ports": body.get("ports", []), "ssh": {"direct": None, "proxy": None},
             "cluster": {"id": cluster_id, "rank": rank}}
            for rank in range(compute["podCount"])]
        self.member_polls = 0
        return cluster

    def _poll_members(self, cluster_id: str) -> list[dict[str, Any]]:
        self.member_polls += 1
        members = self.members[cluster_id]
        for pod in members:
            rank = pod["cluster"]["rank"]
            if pod["status"] != "RUNNING" and self.member_polls > (rank + 1) * \
                    self.polls_per_node:
                pod["status"] = "RUNNING"
                pod["ssh"]["direct"] = {"host": "10.1.0.1", "port": 22000 + rank,
                                        "username": "root"}
        self.seen_members.append([p["status"] for p in members])
        return copy.deepcopy(members)

    def sent(self, method: str, path_start: str = "") -> list[dict[str, Any]]:
        return [r for r in self.requests if r["method"] == method
                and r["path"].startswith(path_start)]


class StandInAdapter(requests.adapters.BaseAdapter):
    """Hands the client's requests to the stand-in, in process."""

    def __init__(self, cloud: CloudStandIn) -> None:
        super().__init__()
        self.cloud = cloud

    def send(self, request: requests.PreparedRequest, **kwargs: Any) -> requests.Response:
        url = urlsplit(request.url)
        body = request.body.encode() if isinstance(request.body, str) else request.body
        status, answer = self.cloud.handle(request.method, url.path, url.query, body)
        response = requests.Response()
        response.status_code = status
        response._content = b"" if answer is None else json.dumps(answer).encode()
        response.raw = io.BytesIO(response._content)  # for a streamed read (a pod's logs)
        response.headers["Content-Type"] = ("application/json" if status < 400
                                            else "application/problem+json")
        response.request, response.url = request, request.url
        return response

    def close(self) -> None:
        pass


def stand_in_client(cloud: CloudStandIn) -> RunPodClient:
    client = RunPodClient(SPEC_SERVER, "stand-in-key-0000", sleep=lambda s: None)
    client._session.mount(SPEC_SERVER, StandInAdapter(cloud))
    return client


def settings_for(tmp_path: Path, **environ: str):
    return resolve({}, {}, environ={"POD_CYCLE_ARTIFACTS_DIR": str(tmp_path / "art"),
                                    "RUNPOD_READY_TIMEOUT": "60", **environ},
                   use_keyring=False)


def backend_for(tmp_path: Path, cloud: CloudStandIn) -> Backend:
    key = tmp_path / "key"
    key.write_text("not a real key: the stand-in's nodes run no sshd\n")
    key.with_name("key.pub").write_text(KEY_LINE + "\n")
    return Backend("runpod", SPEC_SERVER, stand_in_client(cloud), "test", own_ssh_key=key,
                   training_env=dict(CPU_TRAINING))


# -- the create body and readiness ---------------------------------------------------------
def test_the_create_body_is_spec_valid_from_the_template_file(openapi, tmp_path) -> None:
    cloud = CloudStandIn(openapi)
    settings = settings_for(tmp_path, RUNPOD_NODES="2", RUNPOD_GPU_COUNT="2",
                            RUNPOD_MAX_MINUTES="90")
    made = clusters.provision_cluster(backend_for(tmp_path, cloud), settings,
                                      name="pod-cycle-r1", key_path=tmp_path / "key")
    [create] = cloud.sent("POST", "/v2/clusters")
    body = create["body"]
    assert not {"templateId", "registry", "cloud", "gpu"} & set(body)
    assert body["type"] == "TRAINING" and body["startSsh"] is True
    assert body["compute"] == {"gpuTypeId": GPU, "gpuCountPerPod": 2, "podCount": 2}
    assert body["image"] == "ghcr.io/example/chess-bot-runpod:latest"
    assert "22/tcp" in body["ports"] and body["disk"] == 50
    assert body["mounts"] == {"persistent": {"size": 20, "path": "/workspace"}}
    assert body["env"]["SPEND_GUARD_MINUTES"] == "90" and body["env"]["START_SSHD"] == "1"
    assert made.price_per_hour == pytest.approx(2.5 * 2 * 2)
    # The catalog was asked about clusters, in the secure cloud, per node.
    [catalog] = cloud.sent("GET", "/v2/catalog/gpus")
    assert catalog["params"]["cloud"] == "SECURE" and catalog["params"]["count"] == "2"
    assert catalog["params"]["product"] == "CLUSTER"


def test_the_stand_in_refuses_what_the_spec_refuses(openapi) -> None:
    """The validator is real: the same body with a templateId (or a registry) is refused."""
    cloud = CloudStandIn(openapi)
    body = {"name": "x", "type": "TRAINING", "image": "a/b:1",
            "compute": {"gpuTypeId": GPU, "gpuCountPerPod": 1, "podCount": 2}}
    cloud.validate("POST", "/v2/clusters", "", json.dumps(body).encode())
    for extra in ({"templateId": "tpl1"}, {"registry": "reg-1"}, {"cloud": "SECURE"}):
        with pytest.raises(SpecViolation):
            cloud.validate("POST", "/v2/clusters", "", json.dumps({**body, **extra}).encode())
    with pytest.raises(SpecViolation):  # one node is not a cluster
        cloud.validate("POST", "/v2/clusters", "", json.dumps(
            {**body, "compute": {**body["compute"], "podCount": 1}}).encode())


def test_readiness_waits_for_every_member(openapi, tmp_path) -> None:
    cloud = CloudStandIn(openapi, polls_per_node=2)
    client = stand_in_client(cloud)
    made = client.create_cluster({"name": "ready", "type": "TRAINING", "image": "a/b:1",
                                  "compute": {"gpuTypeId": GPU, "gpuCountPerPod": 1,
                                              "podCount": 3}})
    said: list[str] = []
    ready = clusters.wait_ready(client, made.id, timeout=60, progress=said.append,
                                sleep=lambda s: None)
    assert [p.status.value for p in ready.pods] == ["RUNNING"] * 3
    assert [p.node_rank for p in ready.pods] == [0, 1, 2]
    # It saw the cluster partly up (the primary RUNNING, the last node not) and went on.
    assert ["RUNNING", "RUNNING", "PROVISIONING"] in cloud.seen_members
    assert cloud.seen_members[-1] == ["RUNNING"] * 3
    assert any("1/3" not in line and "3/3 node(s)" in line for line in said)


def test_a_private_image_is_refused_before_any_create(openapi, tmp_path) -> None:
    cloud = CloudStandIn(openapi, private_template=True)
    settings = settings_for(tmp_path, RUNPOD_NODES="2")
    with pytest.raises(clusters.ConfigError, match="cannot pull private images") as refused:
        clusters.provision_cluster(backend_for(tmp_path, cloud), settings, name="p",
                                   key_path=tmp_path / "key")
    assert "public" in refused.value.remedy
    assert not cloud.sent("POST")


# -- the cycle on a cluster: DELETE at the end, after Ctrl-C, after a failure -------------
@dataclass
class NodeSessions:
    """Recording SSH sessions to the stand-in's nodes (by SSH port: 22000 + rank). `train`
    decides what cycle_train.sh does on a node: an exit code, or a callable."""

    train: dict[int, Any] = field(default_factory=dict)
    calls: list[tuple[int, str, dict[str, str]]] = field(default_factory=list)
    released: threading.Event = field(default_factory=threading.Event)
    node_class: type | None = None  # a FakeNode subclass a test plays a node with

    def factory(self, endpoint: Any, *_: Any) -> Any:
        return (self.node_class or FakeNode)(self, endpoint.port - 22000, endpoint)


class FakeNode:
    def __init__(self, owner: NodeSessions, rank: int, endpoint: Any) -> None:
        self.owner, self.rank, self.endpoint = owner, rank, endpoint

    def open(self, timeout: float = 60.0) -> None:
        pass

    def warm_master(self) -> None:
        pass

    def script(self, name: str, env: dict[str, str] | None = None, **_: Any) -> Result:
        env = dict(env or {})
        self.owner.calls.append((self.rank, name, env))
        if name == "cycle_paths.sh":
            return Result(0, PATHS, "")
        if name == "cycle_train.sh" and env.get("TRAIN_ACTION") == "stop":
            self.owner.released.set()  # the node's trainer ends: its cycle_train.sh returns
            return Result(0, "", "")
        if name == "cycle_train.sh" and env.get("TRAIN_ACTION") == "status":
            if getattr(self.owner, "old_image", False):  # its cycle_train.sh has no status
                return Result(1, "", "DATASET_DIR is required\n")
            if env.get("KEEPS") == "1":  # the primary, before a train that may keep
                keeps = getattr(self.owner, "primary_keeps", False)
                if keeps:
                    return Result(0, "running\n" if keeps == "running" else "finished\n", "")
                return Result(3, "ended without an exit code\n", "")  # nothing ran yet
            ended = self.rank in getattr(self.owner, "trainer_gone", ())
            return Result(3, "ended without an exit code\n", "") if ended \
                else Result(0, "running\n", "")
        if name == "cycle_train.sh":
            what = self.owner.train.get(self.rank, 0)
            if callable(what):
                return what(self)
            return Result(what, f"node {self.rank} line\n", "")
        return Result(0, "", "")

    def rsync(self, *args: Any, **kwargs: Any) -> Transfer:
        return Transfer(10, 5, 0.01)

    def close(self) -> None:
        pass


def run_cluster_cycle(tmp_path: Path, cloud: CloudStandIn, sessions: NodeSessions,
                      said: list[str] | None = None) -> Any:
    settings = settings_for(tmp_path, RUNPOD_NODES="2", RUNPOD_CYCLE_RUN_ID="cl-run")
    return full_smoke(settings, dataset_dir=SMOKE,
                      announce=said.append if said is not None else lambda _: None,
                      backend=backend_for(tmp_path, cloud), session_factory=sessions.factory)


def step_cycles(backend: Backend, sessions: NodeSessions) -> Any:
    """A maker of one step task's Cycle (settings, mode): its own process would open the run
    again."""

    def step(settings: Any, mode: str = "step") -> Cycle:
        return Cycle.for_run(settings, open_run(settings, mode=mode, announce=lambda _: None),
                             announce=lambda _: None, backend=backend,
                             session_factory=sessions.factory)

    return step


def test_delete_is_sent_at_the_end_of_a_cluster_run(openapi, tmp_path) -> None:
    cloud = CloudStandIn(openapi)
    settings = settings_for(tmp_path, RUNPOD_NODES="2", RUNPOD_CYCLE_RUN_ID="end")
    sessions = NodeSessions()
    step = step_cycles(backend_for(tmp_path, cloud), sessions)

    with step(settings, "start") as cycle:
        cycle.start()
    later = settings_for(tmp_path, RUNPOD_CYCLE_RUN_ID="end")  # no --nodes: the run knows
    with step(later) as cycle:
        cycle.push_dataset(SMOKE)
    with step(later) as cycle:
        cycle.train()
    reshaped = settings_for(tmp_path, RUNPOD_CYCLE_RUN_ID="end", RUNPOD_NODES="3")
    with step(reshaped) as cycle, pytest.raises(clusters.PodCycleError,
                                                match="a run keeps its shape") as refused:
        cycle.start()
    assert refused.value.exit_code == 2
    with step(later) as cycle:
        cycle.stop()
        run = cycle.run
    cluster_id = run.state.cluster.id
    assert len(cloud.sent("POST", "/v2/clusters")) == 1
    assert [r["path"] for r in cloud.sent("DELETE")] == [f"/v2/clusters/{cluster_id}"]
    assert not cloud.sent("POST", "/v2/pods")  # a member is never stopped on its own
    trained = [(rank, env) for rank, name, env in sessions.calls
               if name == "cycle_train.sh" and "TRAIN_ACTION" not in env]
    assert sorted(rank for rank, _ in trained) == [0, 1]
    assert {env["CYCLE_NODE_RANK"] for _, env in trained} == {"0", "1"}
    assert run.state.cluster.deleted_at and run.state.done("stop")
    [billing] = cloud.sent("GET", "/v2/billing/clusters")
    assert billing["params"]["clusterId"] == cluster_id
    assert "deleted" in run.observations.read_text()



def test_a_cluster_train_that_followed_a_trainer_of_other_settings_says_so(openapi, tmp_path
                                                                          ) -> None:
    """A cluster's train that followed the run's earlier trainer, started with other
    settings, reported that training's model as its own and recorded the new settings as
    the run's: ClusterCycle did not read the line the primary's cycle_train.sh prints."""
    from podcycle.cycle import OTHER_SETTINGS_LINE

    cloud = CloudStandIn(openapi)
    sessions = NodeSessions()
    said: list[str] = []
    backend = backend_for(tmp_path, cloud)

    def step(settings: Any, mode: str = "step") -> Cycle:
        return Cycle.for_run(settings, open_run(settings, mode=mode, announce=said.append),
                             announce=said.append, backend=backend,
                             session_factory=sessions.factory)

    first = settings_for(tmp_path, RUNPOD_NODES="2", RUNPOD_CYCLE_RUN_ID="other",
                         TRAIN_EPOCHS="12")
    with step(first, "start") as cycle:
        cycle.start()
    with step(first) as cycle:
        cycle.push_dataset(SMOKE)
    with step(first) as cycle:
        cycle.train()
    # The next train asks 3 epochs; the primary's script finds the 12-epoch trainer still
    # running, follows it to its end and says so (on stderr, where the pod's lines come).
    sessions.train[0] = lambda node: Result(0, "", f"{OTHER_SETTINGS_LINE} (pid 7)\n")
    again = settings_for(tmp_path, RUNPOD_CYCLE_RUN_ID="other", TRAIN_EPOCHS="3")
    said.clear()
    with step(again) as cycle:
        cycle.train()
        run = cycle.run
        cluster_id = run.state.cluster.id
    assert run.state.train_settings.epochs == 12
    [line] = [line for line in said if "was started with" in line]
    assert line.startswith(f"train: the trainer already running on cluster {cluster_id} "
                           "(its primary, pod ")
    assert "other settings (epochs 12) than this train's (epochs 3)" in line
    with step(again) as cycle:
        cycle.stop()


def test_a_cluster_made_again_keeps_the_runs_spend_guard_and_shape(openapi, tmp_path) -> None:
    """A run's cluster deleted under it (by its own spend guard, or a teammate) is made again
    by the next start with the limit and the GPUs the run was started with: a $57/h cluster
    came back with no guard when --resume was run without the flags."""
    cloud = CloudStandIn(openapi)
    backend = backend_for(tmp_path, cloud)
    step = step_cycles(backend, NodeSessions())
    with step(settings_for(tmp_path, RUNPOD_NODES="2", RUNPOD_GPU_COUNT="2",
                           RUNPOD_MAX_MINUTES="30", RUNPOD_CYCLE_RUN_ID="g"), "start") as cycle:
        cycle.start()
        first = cycle.state.cluster.id
    backend.client.delete_cluster(first)
    with step(settings_for(tmp_path, RUNPOD_CYCLE_RUN_ID="g")) as cycle:
        cycle.start()
        again = cycle.state.cluster
    assert again.id != first and again.guard.minutes == 30
    before, after = (c["body"] for c in cloud.sent("POST", "/v2/clusters"))
    assert after["env"]["SPEND_GUARD_MINUTES"] == before["env"]["SPEND_GUARD_MINUTES"] == "30"
    assert after["compute"] == before["compute"]
    # Given again, the flag wins.
    backend.client.delete_cluster(again.id)
    with step(settings_for(tmp_path, RUNPOD_CYCLE_RUN_ID="g", RUNPOD_MAX_MINUTES="45")) as cycle:
        cycle.start()
    assert cloud.sent("POST", "/v2/clusters")[-1]["body"]["env"]["SPEND_GUARD_MINUTES"] == "45"

class CollectingNode(FakeNode):
    """A node whose collect works: cycle_manifest.sh exits `owner.manifest_exit` (3: a
    trainer still runs), and rsync brings home a model and its manifest."""

    def script(self, name: str, env: dict[str, str] | None = None, **kwargs: Any) -> Result:
        if name == "cycle_manifest.sh":
            self.owner.calls.append((self.rank, name, dict(env or {})))
            return Result(getattr(self.owner, "manifest_exit", 0), "bytes=6\n", "")
        return super().script(name, env, **kwargs)

    def rsync(self, source: Any, dest: str, **kwargs: Any) -> Transfer:
        import hashlib

        if not (isinstance(source, str) and source.startswith(":")):  # a push
            return super().rsync(source, dest, **kwargs)
        self.owner.calls.append((self.rank, "collect", {"source": source}))
        model = Path(dest) / "run_artifacts" / "model.pt"
        model.parent.mkdir(parents=True, exist_ok=True)
        model.write_bytes(b"model!")
        digest = hashlib.sha256(b"model!").hexdigest()
        (Path(dest) / "MANIFEST.sha256").write_text(f"{digest}  run_artifacts/model.pt\n")
        return Transfer(10, 6, 0.01)


def pushed_cluster_run(openapi, tmp_path: Path, run_id: str, manifest_exit: int = 0,
                       train: dict[int, Any] | None = None):
    """A step-by-step cluster run started and its dataset pushed, on nodes whose collect
    works (`train`: what cycle_train.sh does on each): (cloud, sessions, step, settings)."""
    cloud = CloudStandIn(openapi)
    sessions = NodeSessions(train=dict(train or {}), node_class=CollectingNode)
    sessions.manifest_exit = manifest_exit  # type: ignore[attr-defined]
    step = step_cycles(backend_for(tmp_path, cloud), sessions)
    with step(settings_for(tmp_path, RUNPOD_NODES="2", RUNPOD_CYCLE_RUN_ID=run_id),
              "start") as cycle:
        cycle.start()
    later = settings_for(tmp_path, RUNPOD_CYCLE_RUN_ID=run_id)
    with step(later) as cycle:
        cycle.push_dataset(SMOKE)
    return cloud, sessions, step, later


def trained_cluster_run(openapi, tmp_path: Path, run_id: str, manifest_exit: int = 0):
    """A step-by-step cluster run trained and never collected: (cloud, sessions, step,
    settings)."""
    cloud, sessions, step, later = pushed_cluster_run(openapi, tmp_path, run_id,
                                                      manifest_exit)
    with step(later) as cycle:
        cycle.train()
    return cloud, sessions, step, later


def test_cycle_stop_collects_a_clusters_model_before_deleting_it(openapi, tmp_path) -> None:
    """Deleting a cluster deletes its disks: cycle.stop of a run that trained there and never
    collected brought nothing home before (the model it paid for went with the cluster)."""
    cloud, sessions, step, later = trained_cluster_run(openapi, tmp_path, "rescued")
    with step(later) as cycle:
        cycle.stop(rescue=True)
        run = cycle.run
    assert (run.collected / "run_artifacts" / "model.pt").read_bytes() == b"model!"
    assert run.state.done("collect") and run.state.cluster.deleted_at
    assert [r["path"] for r in cloud.sent("DELETE")] == [f"/v2/clusters/{run.state.cluster.id}"]
    names = [name for _, name, _ in sessions.calls]
    assert names.index("collect") > names.index("cycle_manifest.sh")
    with step(later) as cycle:  # collected now: a second stop has nothing to bring home
        cycle.stop(rescue=True)
    again = [name for _, name, _ in sessions.calls]
    assert again.count("collect") == 1 and len(cloud.sent("DELETE")) == 1


def test_a_node_that_fails_after_the_primary_trained_keeps_the_model_for_the_stop(
        openapi, tmp_path) -> None:
    """The primary's trainer finished and its smoke passed (exit 0), then another node
    failed: the train step failed without saying a model was trained, so cycle.stop (the
    remedy printed) deleted the cluster with the model, never collected."""
    _, sessions, step, later = pushed_cluster_run(openapi, tmp_path, "late",
                                                  train={0: 0, 1: 1})
    with step(later) as cycle, pytest.raises(clusters.PodCycleError,
                                             match=r"node rank 1 \(pod cl1n1\) failed"):
        cycle.train()
    with step(later) as cycle:
        state = cycle.run.state
        assert state.steps["train"].status == "failed" and state.steps["train"].model_trained
        assert state.left_on(state.cluster.primary.pod_id) == "trained model"
        cycle.stop(rescue=True)
        run = cycle.run
    assert (run.collected / "run_artifacts" / "model.pt").read_bytes() == b"model!"
    assert run.state.done("collect") and run.state.cluster.deleted_at
    names = [name for _, name, _ in sessions.calls]
    assert names.index("collect") > names.index("cycle_manifest.sh")


def test_a_train_that_may_keep_a_finished_training_asks_the_primary_for_every_node(
        openapi, tmp_path) -> None:
    """The host lost a cluster's training (killed, connection gone) and trains again: every
    node was told to keep what finished, but only the primary holds model.pt, so node 1
    started a new trainer that waited for a primary that kept its own, until the rendezvous
    timed out, on every try. Now the primary is asked first and its answer holds for all."""
    # The first train fails on node 1: the next may keep.
    _, sessions, step, later = pushed_cluster_run(openapi, tmp_path, "keep", train={1: 1})
    with step(later) as cycle, pytest.raises(clusters.PodCycleError):
        cycle.train()
    sessions.train = {}
    # A primary still running says nothing of node 1 (its trainer may be gone, or never
    # started): node 1 trains again, which attaches to a trainer that runs, else joins.
    for keeps, node_one in ((True, {"REUSE_FINISHED": "1", "ATTACH_ONLY": "1"}),
                            (False, {"REUSE_FINISHED": "0"}),
                            ("running", {"REUSE_FINISHED": "0"})):
        sessions.primary_keeps = keeps  # type: ignore[attr-defined]
        sessions.calls.clear()
        with step(later) as cycle:
            cycle.run.state.steps["train"].status = "interrupted"  # the host lost it
            cycle.run.save()
            cycle.train()
        trains = [(rank, env) for rank, name, env in sessions.calls if name == "cycle_train.sh"]
        asked = [(rank, env) for rank, env in trains if env.get("KEEPS") == "1"]
        assert [rank for rank, _ in asked] == [0]
        assert asked[0][1]["TRAIN_ACTION"] == "status" and "DATASET_DIR" not in asked[0][1]
        assert asked[0][1]["DATASET_SHA256"] and asked[0][1]["REUSE_FINISHED"] == "1"
        launched = {rank: env for rank, env in trains if "TRAIN_ACTION" not in env}
        assert launched[0]["REUSE_FINISHED"] == "1" and "ATTACH_ONLY" not in launched[0]
        assert {k: launched[1].get(k) for k in ("REUSE_FINISHED", "ATTACH_ONLY")} == \
            {"REUSE_FINISHED": node_one["REUSE_FINISHED"],
             "ATTACH_ONLY": node_one.get("ATTACH_ONLY")}


def test_a_data_centre_or_gpu_given_again_that_the_live_cluster_lacks_is_refused(
        openapi, tmp_path) -> None:
    """`cycle.start --data-center X` on a run whose cluster lives elsewhere said "already has
    cluster ...: using it" and exit 0: the flag was dropped without a word (a new run with
    an unknown data centre is refused; --nodes 3 here is too)."""
    cloud = CloudStandIn(openapi)
    sessions = NodeSessions()
    step = step_cycles(backend_for(tmp_path, cloud), sessions)
    with step(settings_for(tmp_path, RUNPOD_NODES="2", RUNPOD_CYCLE_RUN_ID="dc",
                           RUNPOD_DATA_CENTER="EU-RO-1"), "start") as cycle:
        cycle.start()
        cluster_id = cycle.run.state.cluster.id
    def given(**flags: Any) -> Any:  # as the task's flags pass them
        return resolve(flags, {}, environ={"POD_CYCLE_ARTIFACTS_DIR": str(tmp_path / "art"),
                                           "RUNPOD_READY_TIMEOUT": "60",
                                           "RUNPOD_CYCLE_RUN_ID": "dc"}, use_keyring=False)

    for flags, said in (({"data_center": "US-TX-3"},
                         f"--data-center US-TX-3: run dc's cluster {cluster_id} has EU-RO-1, "
                         "and a cluster is not moved or resized"),
                        ({"gpu_count": 2},
                         f"--gpu-count 2: run dc's cluster {cluster_id} has 1, and a cluster "
                         "is not moved or resized")):
        with step(given(**flags)) as cycle, pytest.raises(clusters.PodCycleError) as refused:
            cycle.start()
        assert refused.value.message == said
        assert "inv cycle.stop -r dc" in refused.value.remedy
        assert refused.value.exit_code == 2  # a refused flag
    for same in (given(data_center="EU-RO-1"),  # the same, given again: on with it
                 settings_for(tmp_path, RUNPOD_CYCLE_RUN_ID="dc",  # a standing setting is
                              RUNPOD_DATA_CENTER="US-TX-3")):  # for new clusters
        with step(same) as cycle:
            cycle.start()
    assert len(cloud.sent("POST", "/v2/clusters")) == 1


def test_a_delete_that_fails_before_local_validate_is_tried_once_over(openapi, tmp_path
                                                                     ) -> None:
    """The model home, the cluster is deleted before local-validate. When that delete failed
    (CLUSTER STILL RUNNING), the run's `finally` tried the whole of it again, with a resume
    hint between the two and, on a read that failed, "gone" said before the error."""
    cloud = CloudStandIn(openapi)
    sessions = NodeSessions(node_class=CollectingNode)
    cloud.fail_deletes = True
    with pytest.raises(clusters.DeleteFailed):
        full_smoke(settings_for(tmp_path, RUNPOD_NODES="2", RUNPOD_CYCLE_RUN_ID="once"),
                   dataset_dir=SMOKE, announce=lambda _: None,
                   backend=backend_for(tmp_path, cloud), session_factory=sessions.factory)
    # One delete_cluster: its 4 tries, each retried by the client on the 500 (5 in all).
    assert len(cloud.sent("DELETE")) == 4 * 5
    state = json.loads((tmp_path / "art" / "once" / "state.json").read_text())
    assert state["cluster"]["delete_failed"] and not state["cluster"]["deleted_at"]
    assert state["steps"]["collect"]["status"] == "done"


def test_a_ctrl_c_in_the_stop_before_local_validate_leaves_it_to_the_finally(
        openapi, tmp_path, monkeypatch) -> None:
    """Ctrl-C while the cluster was being deleted before local-validate (the model home):
    that stop counts as done only once it ends or fails, so the run's finally deletes the
    cluster still; it must never be left billing because a stop was begun."""
    from podcycle import cluster_cycle

    cloud = CloudStandIn(openapi)
    sessions = NodeSessions(node_class=CollectingNode)
    real, calls = clusters.delete_cluster, []

    def interrupted_once(*args: Any, **kwargs: Any) -> str:
        calls.append(args[1])
        if len(calls) == 1:
            raise KeyboardInterrupt  # the operator's Ctrl-C, as the delete begins
        return real(*args, **kwargs)

    monkeypatch.setattr(cluster_cycle.clusters, "delete_cluster", interrupted_once)
    with pytest.raises(KeyboardInterrupt):
        full_smoke(settings_for(tmp_path, RUNPOD_NODES="2", RUNPOD_CYCLE_RUN_ID="ctrl-c"),
                   dataset_dir=SMOKE, announce=lambda _: None,
                   backend=backend_for(tmp_path, cloud), session_factory=sessions.factory)
    assert len(calls) == 2 and not cloud.clusters


def test_cycle_stop_of_a_cluster_already_gone_records_it_gone(openapi, tmp_path) -> None:
    """Its spend guard (or a teammate) deleted the cluster: nothing is left to collect, and
    cycle.stop records it gone instead of asking forever to delete what is not there."""
    cloud, sessions, step, later = trained_cluster_run(openapi, tmp_path, "gone", manifest_exit=3)
    with step(later) as cycle:
        cluster_id = cycle.run.state.cluster.id
    stand_in_client(cloud).delete_cluster(cluster_id)
    with step(later) as cycle:
        cycle.stop(rescue=True)
        assert cycle.run.state.cluster.deleted_at and cycle.run.state.done("stop")
    assert "cycle_manifest.sh" not in [name for _, name, _ in sessions.calls]


def test_a_model_trained_before_a_failed_smoke_counts_and_an_unreadable_run_keeps_its_cluster(
        openapi, tmp_path) -> None:
    from podcycle.runs import RunState, StepRecord

    state = RunState("r")
    state.steps["train"] = StepRecord("failed", started_at=1.0, pod_id="p0",
                                      model_trained=True)
    assert state.left_on("p0") == "trained model"
    state.steps["train"].model_trained = False
    assert state.left_on("p0") is None  # failed before a model: nothing of it on the pod
    cloud, _, step, later = trained_cluster_run(openapi, tmp_path, "garbled")
    with step(later) as cycle:
        cycle.run.state_path.write_text("{ not json")
    [left] = leftovers.survey_clusters(stand_in_client(cloud), later)
    assert left.holds == leftovers.UNREADABLE
    assert "state cannot be read, so what is on the cluster is unknown" in left.keep_reason()


def test_a_cluster_whose_model_cannot_be_collected_is_kept_by_stop_and_leftovers(
        openapi, tmp_path) -> None:
    from podcycle.errors import PodCycleError

    cloud, _, step, later = trained_cluster_run(openapi, tmp_path, "kept", manifest_exit=3)
    with step(later) as cycle, pytest.raises(PodCycleError) as kept:
        cycle.stop(rescue=True)
    cluster_id = cycle.run.state.cluster.id
    assert f"cluster {cluster_id} not deleted (it bills on)" in kept.value.message
    assert "trained model is only on it" in kept.value.message
    assert "still running" in kept.value.message
    assert kept.value.remedy.endswith(f"inv cluster.delete {cluster_id} --yes")
    assert cloud.sent("DELETE") == []
    [left] = leftovers.survey_clusters(stand_in_client(cloud), later)
    assert (left.run_id, left.holds) == ("kept", "trained model")
    assert "inv cycle.stop -r kept collects it" in left.keep_reason()
    assert left.as_dict()["holds"] == "trained model"


def test_a_cluster_made_but_never_recorded_is_resumed_as_the_runs_cluster(openapi, tmp_path
                                                                         ) -> None:
    """The run's shape is saved before its create: a cluster made but never recorded (the
    create's answer lost, or the process killed before the record) is found by its name at
    the next start, --nodes left out. The run went on as a single pod before (the shape was
    known only from a record), and the cluster billed beside it."""
    from podcycle.cluster_cycle import ClusterCycle
    from podcycle.runpod.errors import ServerError

    cloud = CloudStandIn(openapi, lose_create_answer=True)
    sessions = NodeSessions()
    step = step_cycles(backend_for(tmp_path, cloud), sessions)

    first = settings_for(tmp_path, RUNPOD_NODES="2", RUNPOD_CYCLE_RUN_ID="lost")
    with step(first, "start") as cycle, pytest.raises(ServerError):
        cycle.start()
    assert cycle.state.cluster is None and cycle.state.nodes == 2
    one_pod = settings_for(tmp_path, RUNPOD_CYCLE_RUN_ID="lost", RUNPOD_NODES="1")
    with step(one_pod) as cycle, pytest.raises(clusters.PodCycleError) as refused:
        cycle.start()  # not reshaped: RunPod made the cluster after all
    assert refused.value.message == ("--nodes 1: run lost was started on a cluster of 2 "
                                     "nodes, and RunPod has cluster cl1 of its name; a run "
                                     "keeps its shape")
    later = settings_for(tmp_path, RUNPOD_CYCLE_RUN_ID="lost")  # no --nodes
    with step(later) as cycle:
        assert isinstance(cycle, ClusterCycle) and cycle.nodes == 2
        cycle.start()
        assert cycle.state.cluster.id == "cl1" and cycle.state.pod.id == "cl1n0"
    assert len(cloud.sent("POST", "/v2/clusters")) == 1 and not cloud.sent("POST", "/v2/pods")
    with step(one_pod) as cycle, pytest.raises(clusters.PodCycleError,
                                               match="a cluster of 2 nodes; a run keeps"):
        cycle.start()


def test_a_new_run_folder_never_takes_over_a_cluster_of_its_name(openapi, tmp_path) -> None:
    """Another folder's run of the same id (another checkout, a typo'd artifacts dir) made
    cluster cl1 a minute ago: a new folder's `--nodes 2` start took it by its name, trained
    on it, and deleted it at its end, with the other run's uncollected model on its disks."""
    cloud = CloudStandIn(openapi)
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    first = step_cycles(backend_for(tmp_path / "a", cloud), NodeSessions())
    with first(settings_for(tmp_path / "a", RUNPOD_NODES="2", RUNPOD_CYCLE_RUN_ID="shared1"),
               "start") as cycle:
        cycle.start()
        assert cycle.state.cluster.id == "cl1"
    said: list[str] = []
    second = step_cycles(backend_for(tmp_path / "b", cloud), NodeSessions())  # its own client
    with second(settings_for(tmp_path / "b", RUNPOD_NODES="2", RUNPOD_CYCLE_RUN_ID="shared1"),
                "start") as cycle:
        cycle.say = said.append
        cycle.start()
        assert cycle.state.cluster.id == "cl2"  # its own
    assert ("note: cluster cl1 has run shared1's name but predates it (another folder's run "
            "of that id?), so it is left alone") in said
    assert "cl1" in cloud.clusters and len(cloud.sent("POST", "/v2/clusters")) == 2


def test_a_run_whose_create_was_refused_may_start_again_in_another_shape(openapi, tmp_path
                                                                          ) -> None:
    """The saved shape binds only what RunPod made: a create refused (no capacity) made
    nothing, so the run may start again with another --nodes."""
    from podcycle.runpod.errors import BadRequest

    cloud = CloudStandIn(openapi, refuse_create=True)
    step = step_cycles(backend_for(tmp_path, cloud), NodeSessions())
    with step(settings_for(tmp_path, RUNPOD_NODES="2", RUNPOD_CYCLE_RUN_ID="again"),
              "start") as cycle, pytest.raises(BadRequest):
        cycle.start()
    with step(settings_for(tmp_path, RUNPOD_NODES="3", RUNPOD_CYCLE_RUN_ID="again")) as cycle:
        cycle.start()
        assert cycle.state.nodes == 3 and cycle.state.cluster.pod_count == 3


def test_delete_is_sent_after_ctrl_c(openapi, tmp_path) -> None:
    cloud = CloudStandIn(openapi)
    sessions = NodeSessions()

    def interrupted(node: FakeNode) -> Result:
        os.kill(os.getpid(), signal.SIGINT)  # Ctrl-C while the nodes train
        sessions.released.wait(30)
        return Result(143, "", "")

    sessions.train = {0: interrupted, 1: interrupted}
    with pytest.raises(KeyboardInterrupt):
        run_cluster_cycle(tmp_path, cloud, sessions)
    [delete] = cloud.sent("DELETE")
    assert delete["path"].startswith("/v2/clusters/")
    sessions.released.set()


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGHUP])
def test_sigterm_during_a_clusters_training_says_its_epochs_go_with_it(openapi, tmp_path,
                                                                      signum) -> None:
    """SIGTERM or SIGHUP during a cluster's training deletes the cluster at once (SIGKILL
    may follow), without the checkpoint rescue a Ctrl-C makes. The epochs went without a
    word: "interrupted: the cluster was deleted", and a --resume trained from epoch 1."""
    cloud = CloudStandIn(openapi)
    sessions = NodeSessions()

    def told_to_end(node: FakeNode) -> Result:
        os.kill(os.getpid(), signum)  # a CI job cancelled, a terminal closed
        sessions.released.wait(30)
        return Result(143, "", "")

    sessions.train = {0: told_to_end, 1: told_to_end}
    said: list[str] = []
    with pytest.raises(KeyboardInterrupt):
        run_cluster_cycle(tmp_path, cloud, sessions, said)
    sessions.released.set()
    assert any("told to end (SIGTERM or SIGHUP) during train: deleting the cluster now, "
               "with the epochs trained on it (Ctrl-C brings the last checkpoint home first); "
               "--resume trains from the start" in line for line in said), said
    assert not any("bringing the primary's last checkpoint home" in line for line in said)
    [delete] = cloud.sent("DELETE")
    state = json.loads((tmp_path / "art" / "cl-run" / "state.json").read_text())
    assert any("the cluster was deleted without bringing its last checkpoint home" in e["text"]
               for e in state["events"])


def test_a_cluster_created_under_ctrl_c_is_billed_from_its_create(openapi, tmp_path
                                                                   ) -> None:
    """Ctrl-C while the create call was out is held until the cluster is recorded, then
    raised: the bill opened only after the create step returned, so a cluster made under a
    Ctrl-C was recorded billing nothing while its nodes booted, and nothing at its delete."""
    cloud = CloudStandIn(openapi)
    made = cloud._create

    def create(body: Any) -> Any:
        os.kill(os.getpid(), signal.SIGINT)  # Ctrl-C while the create call is out
        return made(body)

    cloud._create = create
    settings = settings_for(tmp_path, RUNPOD_NODES="2", RUNPOD_CYCLE_RUN_ID="ctrl-c")
    step = step_cycles(backend_for(tmp_path, cloud), NodeSessions())
    with pytest.raises(KeyboardInterrupt), step(settings, "start") as cycle:
        cycle.start()
    from podcycle.runs import RunFolder, billed_so_far

    cluster = RunFolder(tmp_path / "art", "ctrl-c").state.cluster
    assert cluster.deleted_at is None and cluster.running_since is None  # it boots on
    assert cluster.billing_since == cluster.created_at
    # What runs.show and a sweep's budget count ten minutes on, were it still booting.
    assert billed_so_far(cluster, cluster.created_at + 600) == 600


def test_delete_is_sent_after_a_node_fails_and_the_others_are_stopped(openapi, tmp_path
                                                                      ) -> None:
    cloud = CloudStandIn(openapi)
    sessions = NodeSessions()

    def primary(node: FakeNode) -> Result:
        sessions.released.wait(30)  # trains until the gang stops it
        return Result(143, "", "")

    sessions.train = {0: primary, 1: 1}
    with pytest.raises(clusters.PodCycleError, match=r"node rank 1 \(pod cl1n1\) failed"):
        run_cluster_cycle(tmp_path, cloud, sessions)
    stops = [rank for rank, name, env in sessions.calls
             if name == "cycle_train.sh" and env.get("TRAIN_ACTION") == "stop"]
    assert stops == [0]
    assert [r["path"] for r in cloud.sent("DELETE")] == ["/v2/clusters/cl1"]
    state = json.loads((tmp_path / "art" / "cl-run" / "state.json").read_text())
    assert state["node_failures"][0]["rank"] == 1
    assert state["node_failures"][0]["last_lines"] == ["node 1 line"]



def connection_drops(sessions: NodeSessions, times: dict[int, int]) -> Any:
    """cycle_train.sh on a node whose SSH connection drops under it its first `times[rank]`
    calls (the trainer runs on, detached), then follows the trainer to its end."""
    calls: dict[int, int] = {}

    def train(node: FakeNode) -> Result:
        calls[node.rank] = calls.get(node.rank, 0) + 1
        if calls[node.rank] <= times.get(node.rank, 0):
            raise remote.ConnectionLost("the SSH connection broke (the pod's sshd closed the "
                                        "session)")
        return Result(0, f"node {node.rank} followed its trainer\n", "")

    return train


def train_calls(sessions: NodeSessions, rank: int) -> list[dict[str, str]]:
    return [env for r, name, env in sessions.calls
            if r == rank and name == "cycle_train.sh" and "TRAIN_ACTION" not in env]


def test_a_dropped_connection_to_a_node_reconnects_and_the_cluster_trains_on(
        openapi, tmp_path) -> None:
    """The operator's network drops during a cluster's train: every node's trainer runs
    detached, so each lost session is opened again and follows its trainer (ATTACH_ONLY),
    and the run goes on. Before, the first lost session failed the gang: every node's trainer
    was stopped and the cluster deleted with its training."""
    cloud = CloudStandIn(openapi)
    sessions = NodeSessions()
    sessions.train = {rank: connection_drops(sessions, {0: 1, 1: 2}) for rank in (0, 1)}
    backend = backend_for(tmp_path, cloud)
    step = step_cycles(backend, sessions)
    with step(settings_for(tmp_path, RUNPOD_NODES="2", RUNPOD_CYCLE_RUN_ID="blip"),
              "start") as cycle:
        cycle.start()
    later = settings_for(tmp_path, RUNPOD_CYCLE_RUN_ID="blip")
    with step(later) as cycle:
        cycle.push_dataset(SMOKE)
    said: list[str] = []
    with Cycle.for_run(later, open_run(later, mode="step", announce=lambda _: None),
                       announce=said.append, backend=backend,
                       session_factory=sessions.factory) as cycle:
        cycle.train()
        notes = [e["text"] for e in cycle.state.events]
        assert cycle.state.done("train")
    for rank, drops in ((0, 1), (1, 2)):
        calls = train_calls(sessions, rank)
        assert len(calls) == drops + 1
        assert calls[0].get("ATTACH_ONLY", "0") == "0"
        assert all(env["ATTACH_ONLY"] == "1" and env["REUSE_FINISHED"] == "1"
                   for env in calls[1:])
        assert all(env["CYCLE_NODE_RANK"] == str(rank) for env in calls)
    text = "\n".join(said)
    assert "lost the SSH connection to node rank 1 (pod cl1n1) during train" in text
    assert "reconnecting to follow it (2 of 3)" in text
    assert sum("reconnected, its trainer running" in note for note in notes) == 3
    asked = [rank for rank, name, env in sessions.calls
             if env.get("TRAIN_ACTION") == "status" and "KEEPS" not in env]
    assert sorted(asked) == [0, 1, 1]  # each node reached again is asked first
    stops = [r for r, name, env in sessions.calls if env.get("TRAIN_ACTION") == "stop"]
    assert stops == [] and cloud.sent("DELETE") == []


def test_a_node_whose_connection_keeps_dropping_fails_the_gang(openapi, tmp_path) -> None:
    """Three reconnects, then the node counts as lost: the others are stopped and the
    cluster deleted, naming the node."""
    cloud = CloudStandIn(openapi)
    sessions = NodeSessions()

    def primary(node: FakeNode) -> Result:
        sessions.released.wait(30)  # trains until the gang stops it
        return Result(143, "", "")

    sessions.train = {0: primary, 1: connection_drops(sessions, {1: 99})}
    with pytest.raises(clusters.PodCycleError,
                       match=r"node rank 1 \(pod cl1n1\) lost its SSH session"):
        run_cluster_cycle(tmp_path, cloud, sessions)
    assert len(train_calls(sessions, 1)) == 4  # the first, and 3 reconnects
    stops = [rank for rank, name, env in sessions.calls if env.get("TRAIN_ACTION") == "stop"]
    assert stops == [0]
    assert [r["path"] for r in cloud.sent("DELETE")] == ["/v2/clusters/cl1"]


def join_this_gangs_node_0(before: set[threading.Thread]) -> None:
    """Wait for the gang's "node-0" thread of this test (one a test before left running,
    say a stand-in trainer waiting out its own timeout, is not this one)."""
    for thread in threading.enumerate():
        if thread.name == "node-0" and thread not in before:
            thread.join(30)


def reconnect_during_a_peer_failure(openapi, tmp_path: Path, reached_again: bool) -> Any:
    """Node 1's session drops; while it is being reached again, node 0 fails (its collective,
    say). Node 1 is then reached (`reached_again`) or not: the run's error, raised."""
    before = set(threading.enumerate())
    cloud = CloudStandIn(openapi)
    sessions = NodeSessions()
    opens = {0: 0, 1: 0}
    reopening = threading.Event()

    class Node(FakeNode):
        def open(self, timeout: float = 60.0) -> None:
            opens[self.rank] += 1
            if self.rank == 1 and opens[1] == 2:  # the reconnect
                assert timeout == clusters.RECONNECT_OPEN_SECONDS
                reopening.set()
                # Answered once node 0's failure is in the gang's hands: its thread (the
                # gang's "node-0") has handed its exit code over and ended.
                join_this_gangs_node_0(before)
                if not reached_again:
                    raise StepFailed("could not reach node rank 1 (connection refused)", "")
            elif self.rank == 1 and opens[1] > 2 and not reached_again:  # the gang's stop
                raise StepFailed("could not reach node rank 1 (connection refused)", "")

    def primary(node: FakeNode) -> Result:
        reopening.wait(30)  # node 1 is being reached again when node 0's collective fails
        return Result(1, "rank 0: gloo: connection closed by peer\n", "")

    def node1(node: FakeNode) -> Result:
        if opens[1] == 1:
            raise remote.ConnectionLost("the SSH connection broke (the pod's sshd closed the "
                                        "session)")
        sessions.released.wait(30)  # follows its trainer until the gang stops it
        return Result(143, "", "")

    sessions.train = {0: primary, 1: node1}
    sessions.node_class = Node
    with pytest.raises(clusters.PodCycleError) as failed:
        run_cluster_cycle(tmp_path, cloud, sessions)
    assert [r["path"] for r in cloud.sent("DELETE")] == ["/v2/clusters/cl1"]
    state = json.loads((tmp_path / "art" / "cl-run" / "state.json").read_text())
    return failed.value, state, opens


def test_a_peer_failure_while_a_node_cannot_be_reached_again_is_that_nodes(openapi, tmp_path
                                                                         ) -> None:
    """A node that dies takes its session with it at once, and its peers' collectives fail a
    moment later: the failure waits for the lost node's reconnect, and once that fails it is
    named after the lost node (with its peer's), not after a healthy peer."""
    error, state, opens = reconnect_during_a_peer_failure(openapi, tmp_path,
                                                          reached_again=False)
    assert error.message.startswith(
        "node rank 1 (pod cl1n1) lost its SSH session (the SSH connection broke")
    assert "node rank 0 then failed: cycle_train.sh exited 1" in error.message
    assert state["node_failures"][0]["rank"] == 1
    assert opens[1] == 2  # no stop is tried on a node that could not be reached: it is gone


def test_a_peer_failure_while_a_node_is_reached_again_is_the_peers(openapi, tmp_path) -> None:
    """The same, but the lost node answers again (a network blip): the failure is the peer's
    own, and the node reached again is stopped with the others."""
    error, state, opens = reconnect_during_a_peer_failure(openapi, tmp_path,
                                                          reached_again=True)
    assert error.message.startswith("node rank 0 (pod cl1n0) failed: cycle_train.sh exited 1")
    assert state["node_failures"][0]["rank"] == 0
    # Reached again, asked whether it is there once node 0 failed (it is), then stopped
    # with the others.
    assert opens[1] == 4


def test_a_peer_failure_before_a_dead_nodes_session_ended_is_the_dead_nodes(
        openapi, tmp_path) -> None:
    """A node dies: its peers' collectives fail, and node 0's exit code can come back before
    the dead node's own session has ended (a busy host). The failure was named after node 0,
    and its checkpoint collected from a primary taken for the culprit. Now, with no node
    known lost, the others are asked whether they are there: node 1 cannot be reached, so
    the failure is node 1's."""
    cloud = CloudStandIn(openapi)
    sessions = NodeSessions()
    died = threading.Event()

    class Node(FakeNode):
        def open(self, timeout: float = 60.0) -> None:
            if self.rank == 1 and died.is_set():
                gone = remote.RemoteError("cannot open an SSH connection to 127.0.0.1:22001 "
                                          "(Connection refused)")
                gone.refused = True  # nothing listens there any more, on every try
                raise gone

    def primary(node: FakeNode) -> Result:
        died.set()
        return Result(1, "rank 0: gloo: connection closed by peer\n", "")

    def node1(node: FakeNode) -> Result:
        sessions.released.wait(30)  # its session ends only once the gang gave up on it
        raise remote.ConnectionLost("the SSH connection broke")

    sessions.train = {0: primary, 1: node1}
    sessions.node_class = Node
    said: list[str] = []
    with pytest.raises(clusters.PodCycleError) as failed:
        run_cluster_cycle(tmp_path, cloud, sessions, said)
    sessions.released.set()
    assert failed.value.message.startswith(
        "node rank 1 (pod cl1n1) cannot be reached (cannot open an SSH connection to "
        "127.0.0.1:22001 (Connection refused): its pod died, or restarted); node rank "
        "0 then failed: cycle_train.sh exited 1; no other node's trainer was left to stop"), \
        failed.value.message
    state = json.loads((tmp_path / "art" / "cl-run" / "state.json").read_text())
    assert state["node_failures"][0]["rank"] == 1
    assert any("collecting its log and last checkpoint from the primary" in line
               for line in said), said


def test_a_node_slow_to_answer_is_not_named_for_a_peers_own_failure(openapi,
                                                                      tmp_path) -> None:
    """Node 1 fails on its own (out of memory) while the primary, busy, does not open a
    new connection in time: a timeout is no death. The failure stays node 1's, and the
    primary's checkpoint is collected (a primary named 'gone' was left uncollected)."""
    cloud = CloudStandIn(openapi)
    sessions = NodeSessions()
    failed_once = threading.Event()

    class Node(FakeNode):
        def open(self, timeout: float = 60.0) -> None:
            if self.rank == 0 and failed_once.is_set():
                raise remote.RemoteError("cannot open SSH to 127.0.0.1:22000: its sshd took "
                                         "the connection but never answered within 10s")

    def primary(node: FakeNode) -> Result:
        sessions.released.wait(30)  # trains until the gang stops it
        return Result(143, "", "")

    def node1(node: FakeNode) -> Result:
        failed_once.set()
        return Result(1, "torch.OutOfMemoryError: CUDA out of memory\n", "")

    sessions.train = {0: primary, 1: node1}
    sessions.node_class = Node
    said: list[str] = []
    with pytest.raises(clusters.PodCycleError) as failed:
        run_cluster_cycle(tmp_path, cloud, sessions, said)
    sessions.released.set()  # the primary's stand-in trainer ends (its stop could not reach it)
    assert failed.value.message.startswith("node rank 1 (pod cl1n1) failed: cycle_train.sh "
                                           "exited 1"), failed.value.message
    state = json.loads((tmp_path / "art" / "cl-run" / "state.json").read_text())
    assert state["node_failures"][0]["rank"] == 1


def test_a_node_reached_again_whose_trainer_is_gone_is_the_one_named(openapi, tmp_path
                                                                      ) -> None:
    """A node's container restarts: its session drops and its sshd answers again a moment
    later, but its trainer is gone, and node 0's collective fails. Reached is not enough: the
    node is asked whether its trainer still runs, and as it does not, the failure is named
    after it, not after the primary (whose checkpoint is then collected, not given up)."""
    before = set(threading.enumerate())
    cloud = CloudStandIn(openapi)
    sessions = NodeSessions()
    sessions.trainer_gone = {1}  # type: ignore[attr-defined]
    opens = {0: 0, 1: 0}
    asked = threading.Event()

    class Node(FakeNode):
        def open(self, timeout: float = 60.0) -> None:
            opens[self.rank] += 1

        def script(self, name: str, env: dict[str, str] | None = None, **kw: Any) -> Result:
            result = super().script(name, env, **kw)
            if (env or {}).get("TRAIN_ACTION") == "status":
                asked.set()
            return result

    def primary(node: FakeNode) -> Result:
        asked.wait(30)  # node 1 is back, its trainer gone: node 0's collective fails
        return Result(1, "rank 0: gloo: connection closed by peer\n", "")

    def node1(node: FakeNode) -> Result:
        if opens[1] == 1:
            raise remote.ConnectionLost("the SSH connection broke (the pod's sshd closed the "
                                        "session)")
        # The attach finds no trainer and no exit code; it answers once node 0's failure is
        # in the gang's hands (its thread, the gang's "node-0", handed it over and ended).
        join_this_gangs_node_0(before)
        return Result(87, "no trainer of this run runs on this pod, and none finished\n", "")

    sessions.train = {0: primary, 1: node1}
    sessions.node_class = Node
    said: list[str] = []
    with pytest.raises(clusters.PodCycleError) as failed:
        run_cluster_cycle(tmp_path, cloud, sessions, said)
    assert failed.value.message.startswith("node rank 1 (pod cl1n1) lost its SSH session"), \
        failed.value.message
    assert "node rank 0 then failed: cycle_train.sh exited 1" in failed.value.message
    assert "the primary node is lost" not in "\n".join(said)
    assert any("collecting its log and last checkpoint from the primary" in line
               for line in said), said


def test_a_node_reached_again_on_an_older_image_is_not_held_for_lost(openapi, tmp_path
                                                                     ) -> None:
    """An image from before TRAIN_ACTION=status answers it with an error, not "ended" (3):
    the node reached again counts as reached, and a later failure of another node is that
    node's, not blamed on the primary (whose checkpoint would then be given up)."""
    cloud = CloudStandIn(openapi)
    sessions = NodeSessions()
    sessions.old_image = True  # type: ignore[attr-defined]
    attached = threading.Event()

    def primary(node: FakeNode) -> Result:
        if not attached.is_set():
            attached.set()
            raise remote.ConnectionLost("the SSH connection broke (the pod's sshd closed the "
                                        "session)")
        sessions.released.wait(30)  # follows its trainer until the gang stops it
        return Result(143, "", "")

    def other(node: FakeNode) -> Result:
        # Fails once the primary is followed again (its attach is the 2nd train call).
        eventually(lambda: len(train_calls(sessions, 0)) == 2, what="the primary's attach")
        return Result(1, "rank 1: CUDA error\n", "")

    sessions.train = {0: primary, 1: other}
    said: list[str] = []
    with pytest.raises(clusters.PodCycleError) as failed:
        run_cluster_cycle(tmp_path, cloud, sessions, said)
    assert failed.value.message.startswith(
        "node rank 1 (pod cl1n1) failed: cycle_train.sh exited 1"), failed.value.message
    assert "the primary node is lost" not in "\n".join(said)

def test_a_primary_that_fails_with_an_exit_code_has_its_checkpoint_collected(openapi, tmp_path
                                                                           ) -> None:
    """A primary whose trainer failed answered with its exit code: it is there to collect
    from (it was taken for lost, and its last checkpoint went with the cluster)."""
    cloud = CloudStandIn(openapi)
    sessions = NodeSessions()

    def other(node: FakeNode) -> Result:
        sessions.released.wait(30)  # trains until the gang stops it
        return Result(143, "", "")

    sessions.train = {0: 1, 1: other}
    said: list[str] = []
    with pytest.raises(clusters.PodCycleError, match=r"node rank 0 \(pod cl1n0\) failed"):
        run_cluster_cycle(tmp_path, cloud, sessions, said)
    assert "the primary node is lost: nothing to collect from it" not in said
    assert any("collecting its log and last checkpoint from the primary" in line
               for line in said), said
    assert [r["path"] for r in cloud.sent("DELETE")] == ["/v2/clusters/cl1"]

# -- leftovers -----------------------------------------------------------------------------
def test_leftovers_list_our_clusters_and_members_are_not_pods(openapi, tmp_path) -> None:
    cloud = CloudStandIn(openapi)
    client = stand_in_client(cloud)
    base = {"type": "TRAINING", "image": "a/b:1",
            "compute": {"gpuTypeId": GPU, "gpuCountPerPod": 1, "podCount": 2}}
    ours = client.create_cluster({**base, "name": "pod-cycle-rc-left"})
    client.create_cluster({**base, "name": "someone-elses"})
    settings = settings_for(tmp_path)
    pods = leftovers.survey(client, settings)
    found = leftovers.survey_clusters(client, settings)
    assert pods == []  # the members are counted with their cluster
    assert [(item.cluster.id, item.run_id) for item in found] == [(ours.id, "rc-left")]
    assert {p.id for p in found[0].cluster.pods} == {f"{ours.id}n0", f"{ours.id}n1"}
    listed = [r for r in cloud.sent("GET", "/v2/pods") if r["path"] == "/v2/pods"]
    assert listed and all(r["params"].get("includeClusterPods") == "true" for r in listed)


# -- a cluster deleted under a step ----------------------------------------------------------
@pytest.mark.parametrize("by", ["a teammate", "its spend guard"])
def test_a_cluster_deleted_during_the_push_to_its_other_nodes_is_said_so(openapi, tmp_path,
                                                                         by: str) -> None:
    """The cluster deleted while the dataset went to its other nodes (a teammate's
    cluster.delete, or its spend guard at its deadline): the push failed as "rsync failed",
    which sent the user to check SSH. It is now said as the cluster's deletion, recorded,
    and --resume is offered; the cycle's stop sends no second DELETE."""
    from podcycle.cycle import PodStoppedUnderStep

    cloud = CloudStandIn(openapi)
    sessions = NodeSessions()

    class Node(FakeNode):
        def rsync(self, *args: Any, **kwargs: Any) -> Transfer:
            if self.rank == 1:  # the primary has its copy; the cluster goes now
                stand_in_client(cloud).delete_cluster(next(iter(cloud.clusters)))
                raise remote.RemoteError("rsync to 127.0.0.1:22001 failed (exit 255): "
                                         "connection closed", "check SSH to the pod")
            return super().rsync(*args, **kwargs)

    sessions.node_class = Node
    step = step_cycles(backend_for(tmp_path, cloud), sessions)
    with step(settings_for(tmp_path, RUNPOD_NODES="2", RUNPOD_CYCLE_RUN_ID="gone-push",
                           RUNPOD_MAX_MINUTES="1"), "start") as cycle:
        cycle.start()
        cluster_id = cycle.state.cluster.id
        if by == "its spend guard":  # its minute is up
            cycle.state.pod.created_at = time.time() - 120
            cycle.run.save()
    later = settings_for(tmp_path, RUNPOD_CYCLE_RUN_ID="gone-push")
    with step(later) as cycle, pytest.raises(PodStoppedUnderStep) as failed:
        cycle.push_dataset(SMOKE)
    if by == "a teammate":
        assert failed.value.message.startswith(
            f"cluster {cluster_id} was deleted during push-dataset, not by this run (its 2 "
            "nodes and their disks went with it"), failed.value.message
    else:
        assert failed.value.message == (f"the spend guard deleted cluster {cluster_id} after "
                                         "1 minute(s) (--max-minutes 1), during push-dataset")
    assert "rsync" not in failed.value.message
    assert "inv cycle.full-smoke --resume" in failed.value.remedy \
        and "(a new cluster)" in failed.value.remedy, failed.value.remedy
    with step(later) as cycle:
        assert cycle.run.state.cluster.deleted_at is None  # said; the stop reads it back
        cycle.stop()
        state = cycle.run.state
    assert state.cluster.deleted_at and state.done("stop")
    assert [r["path"] for r in cloud.sent("DELETE")] == [f"/v2/clusters/{cluster_id}"] * 2


def test_a_cluster_one_404_called_deleted_is_still_deleted_by_the_stop(openapi, tmp_path
                                                                      ) -> None:
    """A transfer broke, and RunPod's one answer for the cluster was a 404 while it ran on:
    recorded deleted there, nothing deleted it after (the finally and cycle.stop skip a
    deleted cluster), every node billing. The deletion is said, never recorded, there: the
    run's own stop reads it back and deletes it."""
    cloud = CloudStandIn(openapi)
    sessions = NodeSessions()

    class Node(FakeNode):
        def rsync(self, *args: Any, **kwargs: Any) -> Transfer:
            if self.rank == 1:
                cloud.glitch_404.add(f"/v2/clusters/{next(iter(cloud.clusters))}")
                raise remote.RemoteError("rsync to 127.0.0.1:22001 failed (exit 12)", "")
            return super().rsync(*args, **kwargs)

    sessions.node_class = Node
    step = step_cycles(backend_for(tmp_path, cloud), sessions)
    with step(settings_for(tmp_path, RUNPOD_NODES="2", RUNPOD_CYCLE_RUN_ID="glitch"),
              "start") as cycle:
        cycle.start()
        cluster_id = cycle.state.cluster.id
    later = settings_for(tmp_path, RUNPOD_CYCLE_RUN_ID="glitch")
    with step(later) as cycle, pytest.raises(clusters.PodCycleError):
        cycle.push_dataset(SMOKE)
    with step(later) as cycle:
        cycle.stop()
        assert cycle.run.state.cluster.deleted_at
    assert cluster_id not in cloud.clusters


def test_a_cluster_deleted_during_its_training_is_no_nodes_failure(openapi, tmp_path) -> None:
    """A teammate deleted the cluster while it trained: its nodes' sessions ended and the
    run failed as "node rank 1 lost its SSH session", blaming a node. It is now the
    cluster's deletion, said and recorded, and the run's own stop deletes nothing more."""
    cloud = CloudStandIn(openapi)
    sessions = NodeSessions()
    deleted = threading.Event()

    class Node(FakeNode):
        def open(self, timeout: float = 60.0) -> None:
            if deleted.is_set():
                gone = remote.RemoteError("cannot open an SSH connection (Connection refused)")
                gone.refused = True
                raise gone

    def primary(node: FakeNode) -> Result:
        stand_in_client(cloud).delete_cluster(next(iter(cloud.clusters)))
        deleted.set()
        raise remote.ConnectionLost("the SSH connection broke")

    def node1(node: FakeNode) -> Result:
        sessions.released.wait(30)
        raise remote.ConnectionLost("the SSH connection broke")

    sessions.train = {0: primary, 1: node1}
    sessions.node_class = Node
    with pytest.raises(clusters.PodCycleError) as failed:
        run_cluster_cycle(tmp_path, cloud, sessions)
    sessions.released.set()
    assert failed.value.message.startswith("cluster cl1 was deleted during train, not by this "
                                           "run"), failed.value.message
    assert "trains from epoch 1 unless a checkpoint was brought home" in failed.value.remedy
    state = json.loads((tmp_path / "art" / "cl-run" / "state.json").read_text())
    assert state["cluster"]["deleted_at"] and not state.get("node_failures")
    # The teammate's, then the run's own, which finds it gone (a 404, read back).
    assert [r["path"] for r in cloud.sent("DELETE")] == ["/v2/clusters/cl1"] * 2


# -- the spend guard -----------------------------------------------------------------------
class StandInHandler(BaseHTTPRequestHandler):
    cloud: CloudStandIn

    def _answer(self) -> None:
        url = urlsplit(self.path)
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else None
        try:
            status, answer = self.cloud.handle(self.command, url.path, url.query, body)
        except SpecViolation as exc:
            status, answer = 422, {"title": "spec", "status": 422, "detail": str(exc)}
        data = b"" if answer is None else json.dumps(answer).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    do_GET = do_POST = do_DELETE = _answer  # noqa: N815 - http.server's names

    def log_message(self, *args: Any) -> None:
        pass


@pytest.mark.slow
def test_the_spend_guards_deadline_deletes_the_cluster(openapi, tmp_path) -> None:
    import time

    cloud = CloudStandIn(openapi)
    made = stand_in_client(cloud).create_cluster({
        "name": "guarded", "type": "TRAINING", "image": "a/b:1",
        "compute": {"gpuTypeId": GPU, "gpuCountPerPod": 1, "podCount": 2}})
    handler = type("Handler", (StandInHandler,), {"cloud": cloud})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    training = ROOT / "deploy" / "runpod_cloud_training"
    env = {"PATH": os.environ["PATH"], "RUNPOD_POD_ID": f"{made.id}n1",
           "RUNPOD_API_KEY": "stand-in-key-0000", "NUM_NODES": "2", "NODE_RANK": "1",
           "RUNPOD_API_BASE_URL": f"http://127.0.0.1:{server.server_address[1]}",
           "SPEND_GUARD_MINUTES": "0.01", "SPEND_GUARD_CHECK_SECONDS": "0.2",
           "POD_BOOT_EPOCH": str(time.time()), "PYTHONPATH": str(training)}
    try:
        guard = subprocess.run([sys.executable, str(training / "spend_guard.py")], env=env,
                               capture_output=True, text=True, timeout=60)
    finally:
        server.shutdown()
    assert guard.returncode == 0, guard.stdout + guard.stderr
    assert "spend guard fired" in guard.stdout and "deleting the cluster" in guard.stdout
    deletes = [r["path"] for r in cloud.sent("DELETE")]
    assert deletes == [f"/v2/clusters/{made.id}"]
    assert not cloud.sent("POST", "/v2/pods")  # a member never tries to stop itself
    eventually(lambda: made.id not in cloud.clusters, what="the cluster to be gone")


# -- the run state -------------------------------------------------------------------------
def test_the_run_state_keeps_the_cluster_and_old_states_still_load() -> None:
    from podcycle.runs import ClusterMember, ClusterRecord, RemotePaths, RunState, SpendGuard

    state = RunState("r1")
    state.cluster = ClusterRecord(
        id="cl1", name="pod-cycle-r1", gpu_id=GPU, gpu_count_per_pod=2, pod_count=2,
        price_per_hour=10.0, guard=SpendGuard(minutes=90, reason="--max-minutes 90"),
        members=[ClusterMember("cl1n0", 0, "10.1.0.1", 22000, "root"),
                 ClusterMember("cl1n1", 1, "10.1.0.1", 22001, "root",
                               RemotePaths("cl1n1", "/w", "/t", "/w/t.jsonl", "/v", "/w/o"))])
    again = RunState.from_json(json.loads(json.dumps(state.to_json())))
    assert again.cluster == state.cluster
    assert again.cluster.primary.pod_id == "cl1n0" and again.cluster.world_size == 4
    assert isinstance(again.cluster.members[1].paths, RemotePaths)
    old = {k: v for k, v in state.to_json().items() if k not in ("cluster", "node_failures")}
    assert RunState.from_json(old).cluster is None


def test_pod_cost_shows_what_clusters_were_billed(openapi) -> None:
    from podcycle.pods import cost_table

    cloud = CloudStandIn(openapi)
    client = stand_in_client(cloud)
    live = client.create_cluster({"name": "billed", "type": "TRAINING", "image": "a/b:1",
                                  "compute": {"gpuTypeId": GPU, "gpuCountPerPod": 1,
                                              "podCount": 2}})
    cloud.cluster_bills = [
        {"clusterId": live.id, "totalAmount": 1.5, "gpuAmount": 1.4, "diskAmount": 0.1,
         "networkingAmount": 0.0},
        {"clusterId": "gone1", "totalAmount": 0.25, "gpuAmount": 0.25, "diskAmount": 0.0,
         "networkingAmount": 0.0}]
    answer = cost_table(client)
    assert answer["clusters"] == [
        {"cluster_id": live.id, "name": "billed", "billed_usd": 1.5, "status": "running"},
        {"cluster_id": "gone1", "name": None, "billed_usd": 0.25, "status": "deleted"}]
    assert answer["total_usd"] == 1.75 and answer["pods"] == []
    [asked] = cloud.sent("GET", "/v2/billing/clusters")
    assert asked["params"]["bucketSize"] == "day" and asked["params"]["startTime"]  # 30 days
    # One pod: its bill only (and an id that is no pod and has no bill is refused, stop 51).
    with pytest.raises(PodCycleError, match="no pod somepod on this account"):
        cost_table(client, "somepod")
    assert len(cloud.sent("GET", "/v2/billing/clusters")) == 1


# -- the gang --------------------------------------------------------------------------------
def test_a_node_that_vanishes_from_the_api_stops_the_others_at_once() -> None:
    from podcycle.runs import ClusterMember

    nodes = [ClusterMember(f"n{rank}", rank) for rank in range(3)]
    ended = threading.Event()
    stopped: list[int] = []
    asked = {"times": 0}

    def launch(member: ClusterMember, tap: clusters.LineTap) -> int:
        tap.write(f"rank {member.rank} trains\n")
        ended.wait(30)  # trains until stopped
        return 143

    def stop(member: ClusterMember) -> None:
        stopped.append(member.rank)

    def vanished() -> list[tuple[ClusterMember, str]]:
        asked["times"] += 1
        return [(nodes[2], "vanished: its pod is gone from the API")] if asked["times"] > 1 \
            else []

    try:
        with pytest.raises(clusters.GangFailed) as failed:
            clusters.Gang(nodes, launch, stop, vanished, say=lambda _: None,
                          check_every=0.05).run()
    finally:
        ended.set()
    assert failed.value.failure.rank == 2 and failed.value.failure.pod_id == "n2"
    assert failed.value.message.startswith("node rank 2 (pod n2) vanished")
    assert sorted(stopped) == [0, 1]
    assert failed.value.failure.lines == ["rank 2 trains"]
    assert "; the other node(s)' trainers: rank 0 stopped, rank 1 stopped" in \
        failed.value.message


def test_a_stop_that_failed_is_not_said_to_have_stopped() -> None:
    """After a cluster.delete mid-train: "the trainers on the other node(s) were stopped
    (rank 1: stop failed (...))", a line that said both."""
    from podcycle.runs import ClusterMember

    nodes = [ClusterMember(f"n{rank}", rank) for rank in range(2)]

    def launch(member: ClusterMember, tap: clusters.LineTap) -> int:
        return 1 if member.rank == 0 else 143

    def stop(member: ClusterMember) -> None:
        raise clusters.PodCycleError("cannot open SSH to the node: its pod is gone")

    with pytest.raises(clusters.GangFailed) as failed:
        clusters.Gang(nodes, launch, stop, None, say=lambda _: None).run()
    message = failed.value.message
    assert "were stopped" not in message, message
    assert ("the other node(s)' trainers: rank 1: stop failed (cannot open SSH to the node: "
            "its pod is gone)") in message, message


def test_a_gang_whose_nodes_all_succeed_returns_their_codes() -> None:
    from podcycle.runs import ClusterMember

    nodes = [ClusterMember(f"n{rank}", rank) for rank in range(2)]
    codes = clusters.Gang(nodes, lambda member, tap: 0, lambda member: None, None,
                          say=lambda _: None).run()
    assert codes == {0: 0, 1: 0}


def test_a_nodes_lines_are_kept_and_echoed_escaped() -> None:
    """Rank 0's log is echoed live and every node's last lines go into the failure message
    and state.json: a hostile node's escape sequences and carriage returns are shown as
    escapes there, never obeyed by the terminal, and forge no line of an error."""
    echoed: list[str] = []
    tap = clusters.LineTap(echoed.append)
    tap.write("epoch 1 ok\n\x1b]52;c;ZWNobw==\x07\x1b[2Jforged\rerror: fake")
    tap.write(" line\npartial\x1b[1m")
    assert echoed == ["epoch 1 ok", "\\x1b]52;c;ZWNobw==\\x07\\x1b[2Jforged\\x0derror: fake line"]
    assert tap.last() == [*echoed, "partial\\x1b[1m"]


def test_a_ctrl_c_rescue_says_what_the_resume_will_train_from(openapi, tmp_path) -> None:
    """The checkpoint pulled from the primary at a Ctrl-C during train: none yet, the one
    already home (pushed to this cluster at its resume, no epoch since: the pull changes
    nothing, and it said "--resume trains from the start", which was not so), or a newer one."""
    import os

    cloud, sessions, step, later = pushed_cluster_run(openapi, tmp_path, "rescue")
    with step(later) as cycle:
        home = cycle.run.run_artifacts / "checkpoint_last.pt"
        pulls: list[Any] = []
        primary = cycle.session()
        primary.rsync = lambda *args, **kwargs: pulls.append(args) or (
            home.write_bytes(b"newer") if writes else None) or Transfer(1, 1, 0.01)
        writes = False
        assert cycle.rescue_checkpoint().startswith("no checkpoint had been written yet")
        home.parent.mkdir(parents=True, exist_ok=True)
        home.write_bytes(b"pushed at the resume")
        os.utime(home, (1_000_000_000, 1_000_000_000))
        said = cycle.rescue_checkpoint()
        assert said.startswith("the run's last checkpoint is the one already home") and \
            said.endswith("--resume trains on from its epoch"), said
        writes = True
        assert cycle.rescue_checkpoint().startswith("brought the primary's last checkpoint "
                                                    "home")
        assert [args[0] for args in pulls] == [[f":{cycle.paths().out}/run_artifacts/"
                                                "checkpoint_last.pt"]] * 3


@pytest.mark.parametrize("replacing", [False, True])
def test_a_cluster_a_killed_start_asked_for_is_deleted_by_the_stop(openapi, tmp_path,
                                                                   monkeypatch, replacing
                                                                   ) -> None:
    """A cluster start killed while RunPod made the cluster (its first, or one replacing a
    deleted one): cycle.stop returned at once, exit 0, and 30 s later the cluster was there,
    every node billing. The stop now awaits the killed create and deletes what it made."""
    from podcycle import cycle as cycle_mod

    monkeypatch.setattr(cycle_mod, "CREATE_POLL_SECONDS", 0.001)
    cloud = CloudStandIn(openapi)
    sessions = NodeSessions()
    backend = backend_for(tmp_path, cloud)
    step = step_cycles(backend, sessions)
    settings = settings_for(tmp_path, RUNPOD_NODES="2", RUNPOD_CYCLE_RUN_ID="killed")
    with step(settings, "start") as cycle:
        if replacing:  # the run's first cluster, then deleted (its spend guard, a teammate)
            cycle.start()
            cycle.delete_cluster()
        cycle.settle_shape()
        cycle.create_sending()  # the start killed as its create went out
    base = {"type": "TRAINING", "image": "a/b:1",
            "compute": {"gpuTypeId": GPU, "gpuCountPerPod": 1, "podCount": 2}}
    late = backend.client.create_cluster({**base, "name": "pod-cycle-killed"})
    listed = backend.client.list_clusters
    calls = {"n": 0}

    def answered_late() -> list:  # RunPod answers that create a few looks later
        calls["n"] += 1
        return [c for c in listed() if calls["n"] > 2 or c.id != late.id]

    monkeypatch.setattr(backend.client, "list_clusters", answered_late)
    said: list[str] = []
    with step(settings_for(tmp_path, RUNPOD_CYCLE_RUN_ID="killed")) as cycle:
        cycle.say = said.append
        cycle.stop()
        assert cycle.state.create_sent_at is None
    assert f"/v2/clusters/{late.id}" in [r["path"] for r in cloud.sent("DELETE")], said
    assert calls["n"] > 2
    assert any("looked for by name" in line and "before the stop ends" in line
               for line in said), said


def test_a_deleted_clusters_remedy_names_its_network_volumes_checkpoints() -> None:
    """Second read, stop 53: a cluster deleted under train sent a run on a network volume to
    a resume that "trains from epoch 1", though its checkpoints are on the volume. The
    method alone, on a stand-in for the cycle (the cloud would need a volume here)."""
    from types import SimpleNamespace

    from podcycle.cluster_cycle import ClusterCycle
    from podcycle.runpod.errors import NotFound
    from podcycle.runs import ClusterRecord, RunState, VolumeRef

    def get_cluster(cluster_id: str) -> None:
        raise NotFound("not found", status=404)

    def remedy(volume: VolumeRef | None) -> str:
        state = RunState("cl-run", cluster=ClusterRecord("cl1", pod_count=2),
                         network_volume=volume)
        cycle = SimpleNamespace(state=state, client=SimpleNamespace(get_cluster=get_cluster),
                                close=lambda: None, run=SimpleNamespace(run_id="cl-run",
                                                                       save=lambda: None))
        return ClusterCycle._cluster_deleted_under(cycle, "train").remedy

    assert remedy(VolumeRef(id="vol1", name="v1", dataCenter="EU-RO-1")).endswith(
        "(a new cluster; the checkpoints on the network volume go on)")
    assert remedy(None).endswith("; its checkpoints went with this one, so it trains from "
                                 "epoch 1 unless a checkpoint was brought home)")


def test_a_cluster_of_the_run_that_landed_late_is_deleted_with_it(openapi, tmp_path) -> None:
    """Second read (stop 54): a cluster create given up on (no answer) whose cluster landed
    after the next start's wait, when that start had made another: the stop deleted only the
    recorded cluster, and the late one billed, every node. Every delete of the run's cluster
    now looks once for another of the run's and deletes it too, as a pod's stop does."""
    cloud = CloudStandIn(openapi)
    sessions = NodeSessions()
    step = step_cycles(backend_for(tmp_path, cloud), sessions)
    with step(settings_for(tmp_path, RUNPOD_NODES="2", RUNPOD_CYCLE_RUN_ID="late"),
              "start") as cycle:
        cycle.start()
        recorded = cycle.state.cluster.id
    # The given-up create's cluster, landed late: the run's name, made since the run began.
    cloud.clusters["cl9"] = {**cloud.clusters[recorded], "id": "cl9"}
    cloud.members["cl9"] = [{**member, "id": member["id"].replace(recorded, "cl9")}
                            for member in cloud.members[recorded]]
    with step(settings_for(tmp_path, RUNPOD_CYCLE_RUN_ID="late")) as cycle:
        cycle.stop()
    deleted = [r["path"] for r in cloud.sent("DELETE")]
    assert f"/v2/clusters/{recorded}" in deleted and "/v2/clusters/cl9" in deleted
    assert recorded != "cl9"
