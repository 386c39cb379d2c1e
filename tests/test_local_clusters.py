"""The local RunPod's Instant Clusters, end to end through the v2 client: members are real local
pods (entrypoint + sshd) with RunPod's node env, hidden from GET /v2/pods, managed only through
their cluster, and deleted with it (processes and folders)."""

from __future__ import annotations

from pathlib import Path

import pytest

from podcycle.local import procs
from podcycle.local.pods import sshd_answers
from podcycle.runpod.client import RunPodClient
from podcycle.runpod.errors import BadRequest, Conflict, NotFound
from podcycle.runpod.models import PodStatus
from tests.conftest import cmdline_of, eventually

GPU = "NVIDIA RTX A5000"
# A cheap node: sshd only (no JupyterLab, no inference API).
CHEAP_ENV = {"START_JUPYTER": "0", "START_INFERENCE_API": "0", "START_HF_WATCH": "0",
             "START_IDLE_WATCHDOG": "0"}


def cluster_body(name: str, nodes: int = 2, per_node: int = 1, **extra) -> dict:
    return {"name": name, "type": "TRAINING",
            "compute": {"gpuTypeId": GPU, "gpuCountPerPod": per_node, "podCount": nodes},
            "image": "ghcr.io/example/chess-bot-runpod:latest", "ports": ["22/tcp"],
            "env": dict(CHEAP_ENV), "startSsh": True, **extra}


def environ(pid: int) -> dict[str, str]:
    raw = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    return dict(item.decode().split("=", 1) for item in raw if b"=" in item)


def members(runpod, cluster_id: str) -> list[dict]:
    found = [c for c in runpod.admin("GET", "/_local/clusters")["clusters"]
             if c["id"] == cluster_id]
    return found[0]["members"] if found else []


def wait_ready(client: RunPodClient, cluster_id: str):
    return eventually(lambda: (c := client.get_cluster_with_pods(cluster_id)).ready and c,
                      what=f"every member of cluster {cluster_id} RUNNING with SSH")


def test_cluster_bodies_the_spec_refuses_are_422(runpod) -> None:
    client = runpod.client()
    refused = {
        "templateId": cluster_body("c-tpl", templateId="tpl-local-chessbot"),
        "registry": cluster_body("c-reg", registry="reg123"),
        "cloud": cluster_body("c-cloud", cloud="SECURE"),
        "bogus": cluster_body("c-bogus", bogus=1),
        "podCount": cluster_body("c-one", nodes=1),
        "gpuCountPerPod": cluster_body("c-zero", per_node=0),
    }
    for field, body in refused.items():
        with pytest.raises(BadRequest) as caught:
            client.create_cluster(body)
        assert caught.value.status == 422, field
        assert field in caught.value.detail, (field, caught.value.detail)
    with pytest.raises(BadRequest) as caught:
        client.create_cluster({**cluster_body("c-type"), "type": "BATCH"})
    assert caught.value.status == 422
    assert client.list_clusters() == []
    assert [p for p in runpod.pods() if p["cluster"]] == []


def test_registry_refusal_says_clusters_take_no_private_registry(runpod) -> None:
    with pytest.raises(BadRequest) as caught:
        runpod.client().create_cluster(cluster_body("c-reg", registry="reg123"))
    assert "private registries are not supported for clusters" in caught.value.detail


def test_a_shape_the_catalog_cannot_place_is_400(runpod) -> None:
    client = runpod.client()
    with pytest.raises(BadRequest) as caught:
        client.create_cluster(cluster_body("c-wide", per_node=99))
    assert caught.value.status == 400 and "per node" in caught.value.detail
    with pytest.raises(BadRequest) as caught:
        client.create_cluster({**cluster_body("c-gpu"), "compute": {
            "gpuTypeId": "NVIDIA Nope", "gpuCountPerPod": 1, "podCount": 2}})
    assert caught.value.status == 400
    assert client.list_clusters() == []


def test_unknown_cluster_is_404_and_rename_takes_only_a_name(runpod) -> None:
    client = runpod.client()
    with pytest.raises(NotFound):
        client.get_cluster("lcmissing")
    with pytest.raises(NotFound):
        client.delete_cluster("lcmissing")
    with pytest.raises(NotFound):
        client.cluster_pods("lcmissing")
    with pytest.raises(BadRequest) as caught:
        client.update_cluster("lcmissing", {"podCount": 3})
    assert caught.value.status == 422


@pytest.mark.slow
def test_two_node_cluster_runs_with_runpods_node_env(runpod) -> None:
    client = runpod.client()
    first = client.create_cluster(cluster_body("c-env", per_node=2))
    second = client.create_cluster(cluster_body("c-env-2"))
    try:
        assert (first.type, first.gpu_type_id, first.gpu_count_per_pod, first.pod_count) == (
            "TRAINING", GPU, 2, 2)
        ready = wait_ready(client, first.id)
        assert [p.node_rank for p in ready.pods] == [0, 1]
        assert {p.cluster_id for p in ready.pods} == {first.id}
        assert ready.primary is not None and ready.primary.node_rank == 0
        assert ready.primary_pod_id == ready.primary.id
        assert ready.primary_ssh == ready.primary.ssh_direct.label()
        for pod in ready.pods:
            assert sshd_answers(pod.ssh_direct.port), f"{pod.id}: sshd does not answer"
        nodes = {m["rank"]: environ(m["pid"]) for m in members(runpod, first.id)}
        ports = {env["MASTER_PORT"] for env in nodes.values()}
        assert len(ports) == 1, "the members of one cluster share one MASTER_PORT"
        for rank, env in nodes.items():
            assert env["NODE_RANK"] == str(rank)
            assert env["PRIMARY_PORT"] == env["MASTER_PORT"]
            assert env["MASTER_ADDR"] == env["PRIMARY_ADDR"] == env["NODE_ADDR"] == "127.0.0.1"
            assert (env["NUM_NODES"], env["NUM_TRAINERS"], env["WORLD_SIZE"]) == ("2", "2", "4")
            assert env["START_JUPYTER"] == "0"  # the body's env reached the node
        other = wait_ready(client, second.id)
        other_env = environ(members(runpod, other.id)[0]["pid"])
        assert other_env["MASTER_PORT"] not in ports, "each cluster has its own MASTER_PORT"
        assert other_env["WORLD_SIZE"] == "2" and other_env["NUM_TRAINERS"] == "1"
        # The API's summary agrees with the members.
        summary = client.get_cluster(first.id)
        assert summary.pods_total == 2 and summary.pods_by_status == {"RUNNING": 2}
        assert client.update_cluster(first.id, {"name": "c-env-renamed"}).name == \
            "c-env-renamed"
        assert {c.id for c in client.list_clusters()} >= {first.id, second.id}
    finally:
        client.delete_cluster(first.id)
        client.delete_cluster(second.id)


@pytest.mark.slow
def test_members_are_hidden_managed_through_the_cluster_and_deleted_with_it(runpod) -> None:
    client = runpod.client()
    standalone_names = {p.name for p in client.list_pods()}
    cluster = client.create_cluster(cluster_body("c-life"))
    ready = wait_ready(client, cluster.id)
    ids = {p.id for p in ready.pods}
    assert not ids & {p.id for p in client.list_pods()}, "members hidden by default"
    assert {p.name for p in client.list_pods()} == standalone_names
    listed = {p.id: p for p in client.list_pods(include_cluster_pods=True)}
    assert ids <= set(listed) and all(listed[i].cluster_id == cluster.id for i in ids)
    member = ready.pods[1]
    assert client.get_pod(member.id).cluster_id == cluster.id  # readable one by one
    # Its `actions` (the spec: the valid transitions) are none: each is refused below, and
    # cluster.status --json listed stop and restart for every member.
    assert all(p.raw["actions"] == [] for p in client.get_cluster_with_pods(cluster.id).pods)
    assert client.get_pod(member.id).raw["actions"] == []
    for attempt in (lambda: client.pod_action(member.id, "stop"),
                    lambda: client.pod_action(member.id, "restart"),
                    lambda: client.delete_pod(member.id),
                    lambda: client._request("PATCH", f"/v2/pods/{member.id}",
                                            json={"name": "x"}, retry_transient=False)):
        with pytest.raises(Conflict) as caught:
            attempt()
        assert cluster.id in caught.value.detail and "cluster.delete" in caught.value.remedy
    # pod.stop's path: the 409 is not retried four times, then blamed on a billing pod to
    # "stop with inv pod.stop" again; it says at once that the cluster is the way.
    from podcycle.errors import PodCycleError
    from podcycle.pods import stop_pod

    runpod.admin("DELETE", "/_local/requests")
    with pytest.raises(PodCycleError) as alone:
        stop_pod(client, member.id, sleep=lambda s: None)
    assert f"node of cluster {cluster.id}" in alone.value.message
    assert f"inv cluster.delete {cluster.id} --yes" in alone.value.remedy
    assert len([r for r in runpod.requests() if r["method"] == "POST"]) == 1
    # pod.terminate's: the API's placeholder "inv cluster.delete CLUSTER_ID" was the remedy.
    from tests.conftest import run_inv

    terminated = run_inv("pod.terminate", member.id, "--yes", env={
        "RUNPOD_BACKEND": "local", "POD_CYCLE_LOCAL_DIR": str(runpod.dir)})
    assert terminated.returncode == 1 and "Traceback" not in terminated.stderr
    assert (f"error: pod {member.id} is a node of cluster {cluster.id}: a cluster's nodes "
            "cannot be terminated alone (409)") in terminated.stderr, terminated.stderr
    assert f"→ delete the whole cluster: inv cluster.delete {cluster.id} --yes" in \
        terminated.stderr
    # A node's id (cluster.status's rows show them) given as a cluster's: "not found: GET
    # /v2/clusters/<id>/pods (404)", and cluster.delete's "no cluster ... deleted already".
    local = {"RUNPOD_BACKEND": "local", "POD_CYCLE_LOCAL_DIR": str(runpod.dir)}
    for args in (("cluster.status", member.id), ("cluster.delete", member.id, "--yes")):
        said = run_inv(*args, env=local)
        assert said.returncode == 1 and (f"error: {member.id} is a pod, a node of cluster "
                                         f"{cluster.id}, not a cluster") in said.stderr, said
        assert f"inv cluster.status {cluster.id}" in said.stderr
    assert client.get_pod(member.id).status is PodStatus.RUNNING
    dirs = [Path(m["dir"]) for m in members(runpod, cluster.id)]
    assert all(d.is_dir() for d in dirs)
    assert all(procs.pod_processes(pod_id) for pod_id in ids)
    # A delete answered 2xx that deleted nothing (a gateway's 202) is read back, not trusted:
    # it was reported "deleted", exit 0, with every node billing on.
    from podcycle.clusters import DeleteFailed, delete_cluster

    runpod.fault(method="DELETE", path=f"/v2/clusters/{cluster.id}", status=202, times=1)
    waits: list[float] = []
    with pytest.raises(DeleteFailed) as kept:
        delete_cluster(client, cluster.id, sleep=waits.append)
    assert kept.value.message == (f"CLUSTER STILL RUNNING: RunPod accepted the delete of "
                                  f"cluster {cluster.id}, and 30s later still lists 2 of its "
                                  "nodes (RUNNING)")
    assert sum(waits) == 30 and f"inv cluster.delete {cluster.id} --yes" in kept.value.remedy
    assert delete_cluster(client, cluster.id, sleep=waits.append) == "deleted"
    for pod_id in ids:
        assert not procs.pod_processes(pod_id), f"{pod_id} left processes"
        with pytest.raises(NotFound):
            client.get_pod(pod_id)
    assert not any(d.exists() for d in dirs), "member folders removed"
    assert cluster.id not in {c.id for c in client.list_clusters()}
    with pytest.raises(NotFound):
        client.delete_cluster(cluster.id)


@pytest.mark.slow
def test_a_404_to_the_delete_of_a_cluster_that_is_there_is_no_delete(runpod) -> None:
    """A 404 to DELETE /v2/clusters/{id} was taken for "gone": cycle.stop said the cluster's
    nodes and disks were gone, exit 0, every node billing on. The cluster is read back."""
    from podcycle.clusters import DeleteFailed, delete_cluster

    client = runpod.client()
    cluster = wait_ready(client, client.create_cluster(cluster_body("c-404")).id)
    runpod.fault(method="DELETE", path=f"/v2/clusters/{cluster.id}", status=404,
                 detail="cluster not found")
    with pytest.raises(DeleteFailed) as kept:
        delete_cluster(client, cluster.id, sleep=lambda _: None)
    assert kept.value.message.startswith(f"CLUSTER STILL RUNNING: could not delete cluster "
                                         f"{cluster.id}: RunPod answered the delete with 404")
    assert cluster.id in {c.id for c in client.list_clusters()}
    runpod.clear_faults()
    assert delete_cluster(client, cluster.id, sleep=lambda _: None) == "deleted"
    assert delete_cluster(client, cluster.id, sleep=lambda _: None) == "gone"


@pytest.mark.slow
@pytest.mark.parametrize("status, said", [
    (401, "RunPod no longer accepts this API key"), (403, "this API key may not delete"),
    (429, "RunPod's rate limit held the delete back")])
def test_a_delete_the_key_may_not_make_goes_to_the_console_at_once(runpod, status: int,
                                                                    said: str) -> None:
    """A cluster's delete refused for the key (401, 403) or held by the rate limit: tried
    four rounds (each waiting the client's 429 retries out), then "delete it with inv
    cluster.delete", which the same key cannot. Said at once, with the console."""
    from podcycle.clusters import DeleteFailed, delete_cluster

    client = runpod.client(sleep=lambda _: None)
    cluster = wait_ready(client, client.create_cluster(cluster_body(f"c-{status}")).id)
    runpod.fault(method="DELETE", path=f"/v2/clusters/{cluster.id}", status=status,
                 detail="refused for the test", retry_after=30)
    runpod.admin("DELETE", "/_local/requests")
    with pytest.raises(DeleteFailed) as kept:
        delete_cluster(client, cluster.id, sleep=lambda _: None)
    assert kept.value.message.startswith(f"CLUSTER STILL RUNNING: could not delete cluster "
                                         f"{cluster.id}: {said}")
    assert "RunPod console" in kept.value.remedy
    deletes = [r for r in runpod.requests() if r["method"] == "DELETE"]
    assert len(deletes) == (client.max_retries + 1 if status == 429 else 1)
    runpod.clear_faults()
    assert delete_cluster(client, cluster.id, sleep=lambda _: None) == "deleted"


@pytest.mark.slow
def test_a_members_own_key_can_delete_its_cluster(runpod) -> None:
    """The spend guard's path: inside a member, RUNPOD_API_KEY (the pod's key) finds the
    pod's cluster (GET /v2/pods/{RUNPOD_POD_ID}) and deletes it."""
    client = runpod.client()
    cluster = client.create_cluster(cluster_body("c-guard"))
    try:
        wait_ready(client, cluster.id)
        node = members(runpod, cluster.id)[1]
        env = environ(node["pid"])
        assert env["RUNPOD_API_KEY"] != runpod.key
        own = RunPodClient(env["RUNPOD_API_BASE_URL"], env["RUNPOD_API_KEY"])
        me = own.get_pod(env["RUNPOD_POD_ID"])
        assert me.cluster_id == cluster.id and me.node_rank == 1
        own.delete_cluster(me.cluster_id)
        assert members(runpod, cluster.id) == []
        assert not any(p["cluster"] == cluster.id for p in runpod.pods())
    finally:
        try:
            client.delete_cluster(cluster.id)
        except NotFound:
            pass


@pytest.mark.slow
def test_cluster_billing_records_what_it_billed(runpod) -> None:
    client = runpod.client()
    cluster = client.create_cluster(cluster_body("c-bill"))
    try:
        ready = wait_ready(client, cluster.id)
    finally:
        client.delete_cluster(cluster.id)
    billing = client.cluster_billing(cluster_id=cluster.id, bucket="hour", last_n=2)
    assert billing["records"], "a deleted cluster's time stays billed"
    assert {r["clusterId"] for r in billing["records"]} == {cluster.id}
    total = billing["metadata"]["totals"]["totalAmount"]
    assert total == pytest.approx(sum(r["totalAmount"] for r in billing["records"]))
    assert total > 0 and billing["metadata"]["uniqueClusterCount"] == 1
    # Its members are not billed as pods as well.
    member_ids = {p.id for p in ready.pods}
    pods = client.pod_billing(bucket="hour")["records"]
    assert not member_ids & {r["podId"] for r in pods}


@pytest.mark.slow
def test_a_private_image_never_starts_on_a_cluster(runpod) -> None:
    client = runpod.client()
    body = {**cluster_body("c-private"), "image": "private.local/acme/trainer:1"}
    cluster = client.create_cluster(body)
    try:
        pods = eventually(lambda: (ps := client.cluster_pods(cluster.id)) and all(
            p.status is PodStatus.ERROR for p in ps) and ps,
            what="both members to fail their image pull")
        assert len(pods) == 2
        errors = [m["error"] for m in members(runpod, cluster.id)]
        assert all("make the image public" in e for e in errors), errors
    finally:
        client.delete_cluster(cluster.id)


def _stat(pid: int) -> str:
    """A process as a failure message shows it: its /proc stat line and command line."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text().strip()
    except OSError:
        return "(gone)"
    return f"{stat} | {cmdline_of(pid)}"


@pytest.mark.slow
def test_a_killed_node_turns_error_and_its_processes_are_gone(runpod) -> None:
    client = runpod.client()
    cluster = client.create_cluster(cluster_body("c-kill"))
    try:
        ready = wait_ready(client, cluster.id)
        victim = ready.pods[1]
        killed = runpod.admin("POST", f"/_local/pods/{victim.id}/kill")["killed"]
        assert killed
        assert client.get_pod(victim.id).status is PodStatus.ERROR
        eventually(lambda: not {p for p in procs.pod_processes(victim.id) if procs.alive(p)},
                   timeout=10, what=lambda: f"the killed node {victim.id}'s processes to end: "
                   f"{[(p, _stat(p)) for p in procs.pod_processes(victim.id)]}")
        assert client.get_pod(ready.pods[0].id).status is PodStatus.RUNNING
        assert not client.get_cluster_with_pods(cluster.id).ready
    finally:
        client.delete_cluster(cluster.id)


@pytest.mark.slow
def test_a_pod_whose_processes_were_killed_leaves_no_sshd_once_deleted(runpod) -> None:
    """A node dying as the cluster scenario kills it (kill -9 of every marked process) leaves
    its sshd to init: sshd writes its title over its environment, so it carries no readable
    pod marker. The delete finds it in the pod's session; it used to listen on for ever."""
    import os
    import signal

    def sshd_of(pod_id: str) -> set[int]:
        config = f"/pods/{pod_id}/root/etc/ssh/sshd_config"
        return {p for p in procs.all_pids() if config in cmdline_of(p) and procs.alive(p)}

    client = runpod.client()
    with runpod.running_pod("orphaned-sshd", {}) as pod:
        listening = eventually(lambda: sshd_of(pod.id), what=f"pod {pod.id}'s sshd")
        for pid in procs.marked_processes_for(pod.id):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        assert listening & sshd_of(pod.id), "the kill spared sshd, as a node's death does"
        client.delete_pod(pod.id)
        eventually(lambda: not sshd_of(pod.id), timeout=30,
                   what=lambda: f"pod {pod.id}'s sshd to end: {sorted(sshd_of(pod.id))}")


@pytest.mark.slow
def test_a_cluster_survives_a_server_restart_as_state_and_is_deleted_cleanly(tmp_path) -> None:
    """The server's state is on disk: after a restart the cluster is still listed (its nodes
    ended with the old server, as pods do), and its delete still removes every member."""
    from podcycle.local import control
    from tests.conftest import LocalRunPod

    server = LocalRunPod(tmp_path / "local")
    try:
        client = server.client()
        cluster = client.create_cluster(cluster_body("c-restart"))
        ready = wait_ready(client, cluster.id)
        assert control.inventory(server.dir)["clusters"] == [
            {"id": cluster.id, "name": "c-restart", "nodes": 2, "members": {"RUNNING": 2}}]
        server.down()
        for pod in ready.pods:
            assert not procs.pod_processes(pod.id), "a member outlived its server"
        server = LocalRunPod(tmp_path / "local")
        client = server.client()
        again = client.get_cluster_with_pods(cluster.id)
        assert [p.status for p in again.pods] == [PodStatus.EXITED] * 2 and not again.ready
        dirs = [Path(m["dir"]) for m in members(server, cluster.id)]
        client.delete_cluster(cluster.id)
        assert not any(d.exists() for d in dirs)
        assert control.inventory(server.dir)["clusters"] == []
        billed = client.cluster_billing(cluster_id=cluster.id, bucket="hour", last_n=2)
        assert billed["records"]
    finally:
        server.down()


@pytest.mark.slow
def test_the_spend_guard_on_a_member_deletes_its_cluster(runpod) -> None:
    """Inside the nodes, the pod entrypoint's spend guard reaches its deadline: a member
    cannot stop itself, so the guard deletes the cluster with the key its pod got, and the
    server ends every node (the calling guard's own included)."""
    client = runpod.client()
    cluster = client.create_cluster(cluster_body("c-spend", env={
        **CHEAP_ENV, "SPEND_GUARD_MINUTES": "0.05", "SPEND_GUARD_CHECK_SECONDS": "0.2"}))
    try:
        ready = wait_ready(client, cluster.id)

        def deleted() -> bool:
            try:
                client.get_cluster(cluster.id)
            except NotFound:
                return True
            return False

        eventually(deleted, what=f"a member's spend guard to delete cluster {cluster.id}")
        for pod in ready.pods:
            eventually(lambda pod_id=pod.id: not procs.pod_processes(pod_id), timeout=15,
                       what=f"member {pod.id}'s processes to end")
        # The guard's DELETE is answered (and logged) once every node has ended.
        eventually(lambda: any(r["method"] == "DELETE" and r["status"] == 204
                               and r["path"] == f"/v2/clusters/{cluster.id}"
                               for r in runpod.requests()),
                   what="the guard's DELETE of the cluster to be answered")
    finally:
        try:
            client.delete_cluster(cluster.id)
        except NotFound:
            pass


@pytest.mark.slow
def test_a_cluster_deleted_while_its_nodes_boot_leaves_nothing(runpod) -> None:
    """Ctrl-C right after the create: the delete races the members' boot; every node still
    ends, and no folder is left."""
    client = runpod.client()
    cluster = client.create_cluster(cluster_body("c-early", nodes=3))
    ids = [m["id"] for m in members(runpod, cluster.id)]
    dirs = [Path(m["dir"]) for m in members(runpod, cluster.id)]
    client.delete_cluster(cluster.id)
    for pod_id, folder in zip(ids, dirs, strict=True):
        eventually(lambda pod_id=pod_id, folder=folder: not procs.pod_processes(pod_id)
                   and not folder.exists(), timeout=30,
                   what=f"member {pod_id}'s processes and folder to go")
    assert not [p for p in runpod.pods() if p["id"] in ids]
