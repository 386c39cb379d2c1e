"""The v2 client against the real local RunPod server: retries, no duplicate pods, typed
errors."""

from __future__ import annotations

import time

import pytest

from podcycle.runpod.client import RunPodClient
from podcycle.runpod.errors import Conflict, Forbidden, NotFound, ServerError, Unauthorized
from tests.conftest import eventually


def create_body(name: str) -> dict:
    return {"name": name, "templateId": "tpl-local-chessbot",
            "gpu": {"id": "NVIDIA RTX A5000", "count": 1}, "cloud": "SECURE",
            "env": {"START_INFERENCE_API": "0"}}


def count(requests: list[dict], method: str, path: str) -> int:
    return sum(1 for r in requests if r["method"] == method and r["path"] == path)


def test_429_with_retry_after_is_retried_and_succeeds(runpod) -> None:
    runpod.admin("DELETE", "/_local/requests")
    runpod.fault(method="GET", path="/v2/templates", status=429, times=2, retry_after=1)
    client = runpod.client()
    started = time.monotonic()
    templates = client.list_templates()
    waited = time.monotonic() - started
    assert templates[0]["name"] == "chess-bot-training"
    log = runpod.requests()
    assert [r["status"] for r in log if r["path"] == "/v2/templates"] == [429, 429, 200]
    assert waited >= 1.9, "Retry-After: 1 must be honoured on each retry"


@pytest.mark.slow
def test_429_is_retried_even_for_create(runpod) -> None:
    runpod.fault(method="POST", path="/v2/pods", status=429, times=1, retry_after=1)
    pod = runpod.client().create_pod(create_body("rl-create"))
    assert pod.name == "rl-create"
    runpod.client().delete_pod(pod.id)


@pytest.mark.slow
def test_5xx_is_retried_for_get_but_not_for_create(runpod) -> None:
    runpod.fault(method="GET", path="/v2/pods", status=503, times=1)
    assert isinstance(runpod.client().list_pods(), list)
    runpod.admin("DELETE", "/_local/requests")
    runpod.fault(method="POST", path="/v2/pods", status=500, times=1)
    with pytest.raises(ServerError):
        runpod.client().create_pod(create_body("no-blind-retry"))
    assert count(runpod.requests(), "POST", "/v2/pods") == 1


@pytest.mark.slow
def test_create_that_times_out_never_makes_two_pods(runpod) -> None:
    # The server answers the create only after 3 s; the client gives up after 1 s. The pod
    # does get created: the client must find it by name instead of creating a second one.
    runpod.fault(method="POST", path="/v2/pods", delay=3, times=1)
    runpod.admin("DELETE", "/_local/requests")
    client = runpod.client(create_timeout=1.0, create_settle=15.0)
    pod = client.create_pod(create_body("slow-create"))
    # The server answers the slow create late; wait for that answer (in its request log).
    eventually(lambda: any(r["method"] == "POST" and r["path"] == "/v2/pods"
                           and r.get("status") for r in runpod.requests()),
               what="the slow create to be answered")
    same_name = client.find_pods_by_name("slow-create")
    assert len(same_name) == 1 and same_name[0].id == pod.id
    assert count(runpod.requests(), "POST", "/v2/pods") == 1
    client.delete_pod(pod.id)


def test_create_on_a_dead_port_is_unreachable_fast() -> None:
    from podcycle.local.pods import free_port
    from podcycle.runpod.errors import Unreachable

    client = RunPodClient(f"http://127.0.0.1:{free_port()}", "k" * 20, max_retries=1,
                          sleep=lambda s: None)
    with pytest.raises(Unreachable, match="cannot reach"):
        client.create_pod(create_body("nowhere"))


@pytest.mark.slow
def test_typed_errors(runpod) -> None:
    with pytest.raises(Unauthorized) as err:
        RunPodClient(runpod.url, "wrong-key-000000").list_templates()
    assert "API Keys" in err.value.remedy
    runpod.add_key("templates-only-key-1", ["templates"])
    limited = RunPodClient(runpod.url, "templates-only-key-1")
    with pytest.raises(Forbidden) as denied:
        limited.list_gpu_types()
    assert denied.value.scope == "catalog"
    with pytest.raises(NotFound):
        runpod.client().get_pod("nope")
    pod = runpod.client().create_pod(create_body("typed"))
    client = runpod.client()
    eventually(lambda: client.get_pod(pod.id).status == "RUNNING", timeout=30,
               what="the pod to run")
    client.pod_action(pod.id, "stop")
    with pytest.raises(Conflict):
        client.pod_action(pod.id, "stop")
    client.delete_pod(pod.id)
