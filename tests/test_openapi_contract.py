"""Every response of the local RunPod (each implemented operation, success and error) and every
request the client sends are validated against RunPod's official REST v2 OpenAPI spec
(tests/data/runpod-rest-v2.openapi.json, RunPod's public contract) with openapi-core."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import requests
from openapi_core import Config, OpenAPI
from openapi_core.contrib.requests import RequestsOpenAPIRequest, RequestsOpenAPIResponse
from openapi_core.validation.request.exceptions import InvalidRequestBody

from podcycle.runpod.client import RunPodClient
from podcycle.runpod.errors import ApiError
from tests.conftest import eventually

SPEC = Path(__file__).parent / "data" / "runpod-rest-v2.openapi.json"
SPEC_SERVER = "https://api.runpod.io"


@pytest.fixture(scope="module")
def openapi() -> OpenAPI:
    # RFC 9457 problem documents are JSON; openapi-core needs to be told so.
    # The logs stream is text/event-stream, a string in the spec.
    config = Config(extra_media_type_deserializers={
        "application/problem+json": json.loads,
        "text/event-stream": lambda body: body.decode() if isinstance(body, bytes) else body})
    return OpenAPI.from_file_path(str(SPEC), config=config)


class Recorder:
    def __init__(self, base_url: str) -> None:
        self.base_url = base_url
        self.exchanges: list[tuple[requests.PreparedRequest, requests.Response]] = []

    def hook(self, response: requests.Response, *args, **kwargs) -> None:
        request = copy.copy(response.request)
        request.url = request.url.replace(self.base_url, SPEC_SERVER)
        self.exchanges.append((request, response))

    def attach(self, client: RunPodClient) -> RunPodClient:
        client._session.hooks["response"].append(self.hook)
        return client

    def raw(self, method: str, path: str, key: str | None, **kwargs) -> requests.Response:
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        response = requests.request(method, f"{self.base_url}{path}", headers=headers,
                                    timeout=30, hooks={"response": [self.hook]}, **kwargs)
        return response


CLUSTER_BODY = {"name": "contract-cluster", "type": "TRAINING",
                "compute": {"gpuTypeId": "NVIDIA RTX A5000", "gpuCountPerPod": 1, "podCount": 2},
                "image": "ghcr.io/example/chess-bot-runpod:latest", "ports": ["22/tcp"],
                "env": {"START_JUPYTER": "0", "START_INFERENCE_API": "0"}, "startSsh": True,
                "disk": 20, "dataCenterIds": ["LOCAL-1"]}


def exercise_clusters(runpod, recorder: Recorder, client: RunPodClient,
                      limited: RunPodClient) -> None:
    """Every cluster operation, in success and error forms, and the member rules on /v2/pods."""
    expect_error = pytest.raises(ApiError)
    client.list_clusters()
    with expect_error:
        limited.list_clusters()  # 403
    client.list_gpu_types(product="CLUSTER", count=2)
    cluster = client.create_cluster(CLUSTER_BODY)
    for bad in ({"templateId": "tpl-local-chessbot"}, {"registry": "reg1"}, {"cloud": "SECURE"},
                {"compute": {**CLUSTER_BODY["compute"], "podCount": 1}}):
        recorder.raw("POST", "/v2/clusters", runpod.key, json={**CLUSTER_BODY, **bad})  # 422
    with expect_error:  # 400: more GPUs per node than the type has
        client.create_cluster({**CLUSTER_BODY, "name": "wide", "compute": {
            **CLUSTER_BODY["compute"], "gpuCountPerPod": 99}})
    eventually(lambda: client.get_cluster_with_pods(cluster.id).ready, timeout=30,
               what="the cluster's members to run")
    client.get_cluster(cluster.id)
    with expect_error:
        client.get_cluster("missing")  # 404
    members = client.cluster_pods(cluster.id)
    with expect_error:
        client.cluster_pods("missing")  # 404
    client.list_pods(include_cluster_pods=True)
    client.update_cluster(cluster.id, {"name": "contract-cluster-renamed"})
    recorder.raw("PATCH", f"/v2/clusters/{cluster.id}", runpod.key, json={"podCount": 3})
    with expect_error:
        client.update_cluster("missing", {"name": "x"})  # 404
    member = members[1].id
    recorder.raw("PATCH", f"/v2/pods/{member}", runpod.key, json={"name": "x"})  # 409
    recorder.raw("DELETE", f"/v2/pods/{member}", runpod.key)  # 409
    recorder.raw("POST", f"/v2/pods/{member}/action", runpod.key, json={"action": "stop"})
    client.cluster_billing(cluster_id=cluster.id, bucket="hour", start="2026-01-01T00:00:00Z")
    recorder.raw("GET", "/v2/billing/clusters?lastN=3&bucketSize=day", runpod.key)
    recorder.raw("GET", "/v2/billing/clusters?bucketSize=fortnight", runpod.key)  # 400
    client.delete_cluster(cluster.id)  # 204
    with expect_error:
        client.delete_cluster(cluster.id)  # 404


def exercise(runpod, recorder: Recorder) -> set[tuple[str, str, int]]:
    """Call every operation the local RunPod implements, in success and error forms."""
    client = recorder.attach(runpod.client())
    runpod.add_key("contract-limited-key", ["templates", "pods", "ssh-keys"])
    limited = recorder.attach(RunPodClient(runpod.url, "contract-limited-key"))
    expect_error = pytest.raises(ApiError)

    client.list_templates()
    client.get_template("tpl-local-chessbot")
    with expect_error:
        client.get_template("missing")
    made = client.create_template({"name": "contract-tpl", "image": "example/image:1",
                                   "ports": ["22/tcp"], "env": {"A": "1"}, "disk": 10,
                                   "mounts": {"persistent": {"size": 10, "path": "/workspace"}},
                                   "startSsh": True, "startJupyter": False})
    with expect_error:
        client.create_template({"name": "contract-tpl", "image": "x"})  # 400: name taken
    recorder.raw("POST", "/v2/templates", runpod.key, json={"name": "x", "bogus": 1})  # 422
    client.update_template(made["id"], {"disk": 12, "env": {"A": "2"}})
    with expect_error:
        client.update_template("missing", {"disk": 12})  # 404
    recorder.raw("PATCH", f"/v2/templates/{made['id']}", runpod.key, json={"disk": "big"})
    client.delete_template(made["id"])
    with expect_error:
        client.delete_template(made["id"])  # 404
    client.list_gpu_types(availability=False)
    client.list_gpu_types(cloud="community", count=2)
    recorder.raw("GET", "/v2/catalog/gpus?include=AVAILABILITY", runpod.key)  # 400
    with expect_error:
        limited.list_gpu_types()  # 403
    client.list_data_centers()
    with expect_error:
        limited.list_data_centers()  # 403
    keys = client.get_ssh_keys()
    client.put_ssh_keys(keys)
    recorder.raw("PUT", "/v2/account/ssh-keys", runpod.key, json={"keys": ["not a key"]})  # 422
    recorder.raw("GET", "/v2/pods", None)  # 401
    client.list_pods()
    body = {"name": "contract", "templateId": "tpl-local-chessbot",
            "gpu": {"id": "NVIDIA RTX A5000", "count": 1}, "cloud": "SECURE",
            "env": {"START_INFERENCE_API": "0"}, "startSsh": True}
    pod = client.create_pod(body)
    with expect_error:
        client.create_pod({**body, "name": "bad-gpu", "gpu": {"id": "NVIDIA Nope", "count": 1}})
    with expect_error:
        client.create_pod({**body, "name": "bad-template", "templateId": "missing"})
    recorder.raw("POST", "/v2/pods", runpod.key, json={**body, "bogus": 1})  # 422
    eventually(lambda: client.get_pod(pod.id).status == "RUNNING", timeout=30,
               what="the pod to run")
    with expect_error:
        client.get_pod("missing")
    client.pod_action(pod.id, "stop")
    # The log stream ends once the pod is stopped, so a plain GET reads it whole.
    logs = recorder.raw("GET", f"/v2/pods/{pod.id}/logs?tail=5", runpod.key)
    assert logs.headers["Content-Type"] == "text/event-stream" and "data: " in logs.text
    recorder.raw("GET", f"/v2/pods/{pod.id}/logs?source=system&since=2026-01-01T00:00:00Z",
                 runpod.key)
    recorder.raw("GET", f"/v2/pods/{pod.id}/logs?tail=9999", runpod.key)  # 422
    recorder.raw("GET", "/v2/pods/missing/logs", runpod.key)  # 404
    with expect_error:
        client.pod_action(pod.id, "stop")  # 409
    recorder.raw("POST", f"/v2/pods/{pod.id}/action", runpod.key, json={"action": "fly"})
    client.get_pod(pod.id)
    client.pod_action(pod.id, "terminate")  # 204
    with expect_error:
        client.delete_pod(pod.id)  # 404
    second = client.create_pod({**body, "name": "contract-2"})
    client.delete_pod(second.id)  # 204
    volume = client.create_volume({"name": "contract-vol", "size": 10, "dataCenter": "LOCAL-1"})
    client.list_volumes()
    client.get_volume(volume["id"])
    client.update_volume(volume["id"], {"size": 20})
    with expect_error:
        client.update_volume(volume["id"], {"size": 10})  # 400: a volume cannot shrink
    with expect_error:
        client.get_volume("missing")  # 404
    with expect_error:
        client.create_volume({"name": "x", "size": 10, "dataCenter": "MARS-1"})  # 400
    recorder.raw("POST", "/v2/network-volumes", runpod.key, json={"name": "x", "size": 5,
                                                                   "dataCenter": "LOCAL-1"})
    mounted = client.create_pod({**body, "name": "contract-vol", **{
        "mounts": {"network": [{"volumeId": volume["id"], "path": "/runpod-volume"}]},
        "dataCenterIds": ["LOCAL-1"]}})
    client.delete_pod(mounted.id)
    client.delete_volume(volume["id"])
    with expect_error:
        client.delete_volume(volume["id"])  # 404
    client.pod_billing(pod_id=pod.id, bucket="hour", start="2026-01-01T00:00:00Z")
    recorder.raw("GET", "/v2/billing/pods?lastN=3&bucketSize=day", runpod.key)
    recorder.raw("GET", "/v2/billing/pods?bucketSize=fortnight", runpod.key)  # 400
    exercise_clusters(runpod, recorder, client, limited)
    runpod.fault(method="GET", path="/v2/templates", status=429, times=1, retry_after=1)
    client.list_templates()
    # Each operation's error answers too: a key that may only read the catalog.
    runpod.add_key("contract-catalog-only", ["catalog"])
    for method, path, payload in (("GET", "/v2/templates", None),
                               ("GET", "/v2/templates/tpl-local-chessbot", None),
                               ("POST", "/v2/templates", {"name": "n", "image": "i"}),
                               ("PATCH", "/v2/templates/tpl-local-chessbot", {"disk": 9}),
                               ("DELETE", "/v2/templates/tpl-local-chessbot", None),
                               ("GET", "/v2/account/ssh-keys", None),
                               ("PUT", "/v2/account/ssh-keys", {"keys": []}),
                               ("GET", "/v2/pods", None), ("POST", "/v2/pods", body),
                               ("GET", "/v2/pods/x", None), ("DELETE", "/v2/pods/x", None),
                               ("GET", "/v2/pods/x/logs", None),
                               ("GET", "/v2/billing/pods", None),
                               ("GET", "/v2/network-volumes", None),
                               ("POST", "/v2/network-volumes",
                                {"name": "n", "size": 10, "dataCenter": "LOCAL-1"}),
                               ("GET", "/v2/network-volumes/v", None),
                               ("PATCH", "/v2/network-volumes/v", {"size": 20}),
                               ("DELETE", "/v2/network-volumes/v", None),
                               ("POST", "/v2/pods/x/action", {"action": "stop"}),
                               ("GET", "/v2/clusters", None),
                               ("POST", "/v2/clusters", CLUSTER_BODY),
                               ("GET", "/v2/clusters/c", None),
                               ("PATCH", "/v2/clusters/c", {"name": "n"}),
                               ("DELETE", "/v2/clusters/c", None),
                               ("GET", "/v2/clusters/c/pods", None),
                               ("GET", "/v2/billing/clusters", None)):
        recorder.raw(method, path, "contract-catalog-only", json=payload)  # 403
    recorder.raw("GET", "/v2/catalog/gpus", "not-a-key")  # 401
    return {(r.method, r.url.split("?")[0].replace(SPEC_SERVER, ""), s.status_code)
            for r, s in recorder.exchanges}


@pytest.mark.slow
def test_local_server_and_client_follow_the_spec(runpod, openapi: OpenAPI) -> None:
    recorder = Recorder(runpod.url)
    seen = exercise(runpod, recorder)
    statuses = {status for _, _, status in seen}
    assert {200, 201, 204, 400, 401, 403, 404, 409, 422, 429} <= statuses
    def operation(method: str, path: str) -> tuple[str, str]:
        parts = path.split("/")
        if len(parts) >= 4 and parts[2] in ("pods", "templates", "network-volumes",
                                            "clusters") \
                and parts[3]:
            parts[3] = "{id}"
        return method, "/".join(parts)

    successes = {operation(m, p) for m, p, status in seen if status < 400}
    failures_seen = {operation(m, p) for m, p, status in seen if status >= 400}
    assert len(successes) == 28, sorted(successes)  # every operation the server implements
    assert successes <= failures_seen, sorted(successes - failures_seen)
    failures = []
    for request, response in recorder.exchanges:
        oa_request = RequestsOpenAPIRequest(request)
        label = f"{request.method} {request.path_url} → {response.status_code}"
        try:
            openapi.validate_response(oa_request, RequestsOpenAPIResponse(response))
        except Exception as exc:  # noqa: BLE001 - collect every violation
            failures.append(f"response of {label}: {exc!r}"[:600])
        if response.status_code < 400 or response.status_code == 429:
            # The client's own requests (not the deliberately malformed raw ones).
            try:
                openapi.validate_request(oa_request)
            except Exception as exc:  # noqa: BLE001
                failures.append(f"request {label}: {exc!r}"[:600])
    assert not failures, "\n".join(failures)


def test_every_request_body_the_client_sends_is_valid(runpod, openapi: OpenAPI) -> None:
    from podcycle.provision import TRAINING_PRESET_ENV, create_body

    template = {"id": "tpl-local-chessbot"}
    bodies = [
        create_body(name="a", template=template, gpu_id="NVIDIA H200", gpu_count=2,
                    cloud="community", env={"X": "1"}, use_preset_env=True),
        create_body(name="b", template=template, gpu_id="NVIDIA L4", gpu_count=1,
                    cloud="secure", env={}, use_preset_env=False),
    ]
    assert bodies[0]["env"]["START_IDLE_WATCHDOG"] == TRAINING_PRESET_ENV["START_IDLE_WATCHDOG"]
    # The host's CUDA floor (RUNPOD_MIN_CUDA_VERSION): sent as gpu.minCudaVersion, unless
    # "any", or the template names its own set (a set beside a floor is a 400).
    floored = create_body(name="c", template=template, gpu_id="NVIDIA L4", gpu_count=1,
                          cloud="secure", env={}, use_preset_env=False, min_cuda_version="12.8")
    assert floored["gpu"] == {"id": "NVIDIA L4", "count": 1, "minCudaVersion": "12.8"}
    bodies.append(floored)
    for kept_off in (create_body(name="d", template={**template, "allowedCudaVersions": ["12.4"]},
                                 gpu_id="NVIDIA L4", gpu_count=1, cloud="secure", env={},
                                 use_preset_env=False, min_cuda_version="12.8"),
                     create_body(name="e", template=template, gpu_id="NVIDIA L4", gpu_count=1,
                                 cloud="secure", env={}, use_preset_env=False,
                                 min_cuda_version="any")):
        assert "minCudaVersion" not in kept_off["gpu"]
    prepared = requests.Request("POST", f"{SPEC_SERVER}/v2/pods",
                                json={**floored, "gpu": {**floored["gpu"], "minCudaVersion": "12"}},
                                headers={"Authorization": "Bearer abc"}).prepare()
    with pytest.raises(InvalidRequestBody):  # the spec's pattern: major.minor
        openapi.validate_request(RequestsOpenAPIRequest(prepared))
    for body in bodies:
        prepared = requests.Request("POST", f"{SPEC_SERVER}/v2/pods", json=body,
                                    headers={"Authorization": "Bearer x" * 3}).prepare()
        openapi.validate_request(RequestsOpenAPIRequest(prepared))
    for body in (CLUSTER_BODY, {**CLUSTER_BODY, "type": "APPLICATION", "mounts": {
            "network": [{"volumeId": "vol1", "path": "/workspace"}]}}):
        prepared = requests.Request("POST", f"{SPEC_SERVER}/v2/clusters", json=body,
                                    headers={"Authorization": "Bearer abc"}).prepare()
        openapi.validate_request(RequestsOpenAPIRequest(prepared))
    # What the local RunPod answers 422 to, the spec refuses too (unevaluatedProperties).
    for bad in ({"templateId": "tpl-local-chessbot"}, {"registry": "reg1"}, {"cloud": "SECURE"},
                {"compute": {**CLUSTER_BODY["compute"], "podCount": 1}}):
        prepared = requests.Request("POST", f"{SPEC_SERVER}/v2/clusters",
                                    json={**CLUSTER_BODY, **bad},
                                    headers={"Authorization": "Bearer abc"}).prepare()
        with pytest.raises(InvalidRequestBody):
            openapi.validate_request(RequestsOpenAPIRequest(prepared))
    for action in ("start", "stop", "terminate"):
        prepared = requests.Request("POST", f"{SPEC_SERVER}/v2/pods/p1/action",
                                    json={"action": action},
                                    headers={"Authorization": "Bearer abc"}).prepare()
        openapi.validate_request(RequestsOpenAPIRequest(prepared))


def test_the_local_runpods_cuda_check_follows_the_spec() -> None:
    """CreatePodRequest.templateId: sending either CUDA field replaces the template's
    constraint (an explicit [] is none); a floor beside a non-empty set in the body is a
    400; the local hosts report CUDA 12.8. The check once applied a template's set beside
    the body's floor (a 400 the spec never gives) and read [] as "the template's"."""
    from podcycle.local.server import LocalRunPod, ProblemError

    check = LocalRunPod._check_cuda
    old_template = {"allowedCudaVersions": ["11.8"]}
    check({"minCudaVersion": "12.8"}, old_template)  # the body's floor replaces the set
    check({"allowedCudaVersions": []}, old_template)  # [] states no constraint
    check({"allowedCudaVersions": ["12.8", "12.6"]}, {})
    check({}, {})
    for gpu, template, status, said in [
            ({}, old_template, 400, "no machine reports one of CUDA 11.8"),
            ({"minCudaVersion": "12.0", "allowedCudaVersions": ["12.8"]}, {}, 400,
             "mutually exclusive"),
            ({"minCudaVersion": "13.0"}, {}, 400, "no machine offers CUDA 13.0 or later"),
            ({"minCudaVersion": "12.10"}, {}, 400, "no machine offers CUDA 12.10 or later"),
            ({"minCudaVersion": "12"}, {}, 422, "Request validation failed."),
            ({"allowedCudaVersions": "12.8"}, {}, 422, "Request validation failed.")]:
        with pytest.raises(ProblemError) as refused:
            check(gpu, template)
        assert refused.value.status == status and said in str(refused.value), (gpu, template)
