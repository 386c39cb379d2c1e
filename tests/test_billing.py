"""Real cost: the local RunPod bills a pod from create to stop (GET /v2/billing/pods, per the
spec), pod.cost reads it, and a lagging bill is said to be not yet available."""

from __future__ import annotations

import json
import time

import pytest

from podcycle.errors import PodCycleError
from podcycle.pods import parse_since


@pytest.mark.slow
def test_pod_cost_reports_what_the_pod_was_billed(inv, runpod) -> None:
    started = time.time()
    with runpod.running_pod("billed", {"START_INFERENCE_API": "0"}) as pod:
        runpod.client().pod_action(pod.id, "stop")
        wall = time.time() - started
        shown = inv("pod.cost", "--pod-id", pod.id, "--json")
        assert shown.returncode == 0, shown.stderr
        answer = json.loads(shown.stdout)
        [row] = answer["pods"]
        assert row["pod_id"] == pod.id and row["status"] == "EXITED"
        seconds = row["billed_usd"] / (answer_rate(runpod, pod.id)) * 3600
        assert 0 < seconds <= wall + 1, (seconds, wall)
        assert answer["total_usd"] == row["billed_usd"]
        table = inv("pod.cost", "--since", "1h")
        assert pod.id in table.stdout and "total $" in table.stdout
        one = inv("pod.cost", pod.id, "--since", "1h")  # the id as an argument works too
        assert one.returncode == 0 and pod.id in one.stdout and "total $" in one.stdout


def answer_rate(runpod, pod_id: str) -> float:
    """The pod's $/h as the local RunPod bills it (catalog price x GPU count)."""
    state = json.loads((runpod.dir / "state.json").read_text())
    return state["billing"][pod_id]["rate"]


@pytest.mark.slow
def test_a_bill_that_lags_is_not_yet_available(inv, runpod) -> None:
    runpod.admin("POST", "/_local/settings", {"billing_delay": 3600})
    try:
        with runpod.running_pod("lagging", {"START_INFERENCE_API": "0"}) as pod:
            shown = inv("pod.cost", "--pod-id", pod.id)
            assert shown.returncode == 0
            assert f"no billing records for pod {pod.id}" in shown.stdout
    finally:
        runpod.admin("POST", "/_local/settings", {"billing_delay": 0})


def test_since_takes_ages_and_dates() -> None:
    assert parse_since("90m", now=10_000) == 10_000 - 5400
    assert parse_since("2d", now=200_000) == 200_000 - 172_800
    assert parse_since("2026-11-01T00:00:00Z") == parse_since("2026-11-01")
    with pytest.raises(PodCycleError, match="neither an age nor a date"):
        parse_since("yesterday")


def test_a_billing_answer_of_the_wrong_shape_is_read_or_refused_in_one_line() -> None:
    """From an audit against an erratic API: an empty answer was a TypeError traceback in
    pod.cost and api.doctor, and an answer without its metadata said 'between None and
    None'. Records of the wrong shape are skipped; a window RunPod does not say is the one
    asked for."""
    from podcycle.pods import billed_by
    from podcycle.runpod.errors import ApiError

    found = billed_by(lambda **query: {"records": [
        {"podId": "p1", "totalAmount": 0.25}, {"podId": "p1", "totalAmount": "NaN"},
        {"totalAmount": 5}, None, {"podId": "p2", "totalAmount": float("inf")}]},
        "podId", "pods", since=0.0)
    assert found["pods"] == {"p1": 0.25, "p2": 0.0} and found["total"] == 0.25
    assert found["window"][0] == "1970-01-01T00:00:00Z" and found["window"][1] != "None"
    for answer in (None, [], {"records": None}):
        with pytest.raises(ApiError, match="without a list of records"):
            billed_by(lambda answer=answer, **query: answer, "podId", "pods", since=None)


def test_a_pod_id_that_is_nowhere_is_said_not_billed_yet() -> None:
    """`inv pod.cost lpnosuch` (a typo) said "no billing records ... (yet: RunPod's billing
    lags a running pod)" and exited 0 (hunt, stop 51). An id that is no pod and has no
    records is refused; a live pod with none yet, and a gone pod with some, are answered."""
    from types import SimpleNamespace

    from podcycle.pods import cost_table

    class Client:
        def __init__(self, records: list, pods: list) -> None:
            self.records, self.pods = records, pods

        def pod_billing(self, **query):
            return {"records": self.records}

        def list_pods(self, include_cluster_pods: bool = False):
            return self.pods + (self.nodes if include_cluster_pods else [])

        nodes: list = []

    with pytest.raises(PodCycleError) as refused:
        cost_table(Client([], []), "lpnosuch")
    assert refused.value.message.startswith("no pod lpnosuch on this account, and RunPod "
                                            "billed nothing under that id from ")
    assert refused.value.remedy == ("check the id with inv pod.list; a pod terminated before "
                                    "the window has no records in it (--since 366d looks "
                                    "furthest back)")
    live = SimpleNamespace(id="lp1", name="n", cost_per_hour=0.5, status="RUNNING")
    assert cost_table(Client([], [live]), "lp1")["pods"] == []  # its bill lags
    gone = cost_table(Client([{"podId": "lp2", "totalAmount": 0.5}], []), "lp2")
    assert [row["status"] for row in gone["pods"]] == ["gone"]
    # A cluster's node: hidden from the plain list, billed under its cluster (second read).
    cluster = Client([], [])
    cluster.nodes = [SimpleNamespace(id="node1", name="c", cost_per_hour=1.0,
                                     status="RUNNING")]
    assert cost_table(cluster, "node1")["pods"] == []
