"""Issue 18, pod and volume operations: nothing a user owns is lost, nothing is misreported.
A volume a pod mounts is never deleted; the pod of an open step-by-step run is no leftover;
a pod stopped by its spend guard mid-train is reported as such, not as a lost connection
(in test_spend_guard_e2e.py, with the guard's other waits); api.doctor probes every scope
the tool uses; the SSH key message says what is true.

Against the real local RunPod. Pods that only need to exist (and bill) are held in
PROVISIONING by the server's provision delay, so no pod process starts for them."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from podcycle.config import resolve
from podcycle.errors import ConfigError, PodCycleError
from tests.conftest import ROOT, child_environ, cmdline_of, eventually, run_inv

GPU = {"id": "NVIDIA RTX A5000", "count": 1}


@pytest.fixture
def held(runpod) -> Iterator[Any]:
    """Pods created during the test stay PROVISIONING (billing, no processes); all of them
    are terminated afterwards."""
    before = {p["id"] for p in runpod.pods()}
    previous = runpod.admin("POST", "/_local/settings", {})
    runpod.admin("POST", "/_local/settings", {"provision_delay": 3600})
    try:
        yield runpod
    finally:
        runpod.admin("POST", "/_local/settings",
                     {"provision_delay": previous.get("provision_delay", 0.2)})
        client = runpod.client()
        for pod in runpod.pods():
            if pod["id"] not in before:
                try:
                    client.delete_pod(pod["id"])
                except PodCycleError:
                    pass


def deletes(runpod, volume_id: str) -> list[dict[str, Any]]:
    return [r for r in runpod.requests() if r["method"] == "DELETE"
            and r["path"] == f"/v2/network-volumes/{volume_id}"]


def mounting_pod(client: Any, volume: dict[str, Any], name: str) -> Any:
    return client.create_pod({"name": name, "templateId": "tpl-local-chessbot", "gpu": GPU,
                              "mounts": {"network": [{"volumeId": volume["id"],
                                                      "path": "/runpod-volume"}]},
                              "dataCenterIds": [volume["dataCenter"]]})


# -- 1. a mounted network volume is never deleted ------------------------------------------
@pytest.mark.slow
def test_a_volume_mounted_by_a_running_or_stopped_pod_is_not_deleted(held) -> None:
    from podcycle.volumes import check_deletable, mounted_volume_ids

    client = held.client()
    volume = client.create_volume({"name": "in-use", "size": 10, "dataCenter": "LOCAL-1"})
    other = client.create_volume({"name": "free", "size": 10, "dataCenter": "LOCAL-1"})
    try:
        pod = mounting_pod(client, volume, "mounts-in-use")
        # The spec's Pod.mounts.network[].volumeId, as the local RunPod returns it.
        assert mounted_volume_ids(client.get_pod(pod.id)) == [volume["id"]]
        with pytest.raises(PodCycleError) as billing:
            check_deletable(client, volume)
        assert f"is mounted by 1 pod(s): {pod.id} (mounts-in-use, PROVISIONING)" in \
            billing.value.message
        assert f"inv pod.terminate {pod.id} --yes" in billing.value.remedy
        client.pod_action(pod.id, "stop")  # a stopped pod restarts onto the volume
        with pytest.raises(PodCycleError, match=r"mounts-in-use, EXITED"):
            check_deletable(client, volume)
        check_deletable(client, other)  # nobody mounts it
        assert deletes(held, volume["id"]) == []
        client.delete_pod(pod.id)
        check_deletable(client, volume)
    finally:
        for made in (volume, other):
            client.delete_volume(made["id"])


@pytest.mark.slow
def test_a_volume_a_clusters_nodes_mount_is_not_deleted(held) -> None:
    """GET /v2/pods hides cluster members unless includeClusterPods=true: the check asks for
    them, and tells to delete the cluster (its nodes cannot be terminated alone)."""
    from podcycle.volumes import check_deletable
    from tests.test_local_clusters import cluster_body

    client = held.client()
    volume = client.create_volume({"name": "cluster-data", "size": 10, "dataCenter": "LOCAL-1"})
    cluster = None
    try:
        cluster = client.create_cluster(cluster_body(
            "c-on-volume", mounts={"network": [{"volumeId": volume["id"],
                                                "path": "/runpod-volume"}]},
            dataCenterIds=[volume["dataCenter"]]))
        with pytest.raises(PodCycleError) as refused:
            check_deletable(client, volume)
        assert "is mounted by 2 pod(s)" in refused.value.message
        assert f"node of cluster {cluster.id}" in refused.value.message
        assert f"inv cluster.delete {cluster.id} --yes" in refused.value.remedy
        alone = mounting_pod(client, volume, "alone-on-volume")  # both ways out are named
        with pytest.raises(PodCycleError) as both:
            check_deletable(client, volume)
        assert "is mounted by 3 pod(s)" in both.value.message
        assert f"inv pod.terminate {alone.id} --yes" in both.value.remedy
        assert f"inv cluster.delete {cluster.id} --yes" in both.value.remedy
        client.delete_pod(alone.id)
        assert deletes(held, volume["id"]) == []
        client.delete_cluster(cluster.id)
        cluster = None
        check_deletable(client, volume)
    finally:
        if cluster is not None:
            client.delete_cluster(cluster.id)
        client.delete_volume(volume["id"])


@pytest.mark.slow
def test_cycle_stop_stops_the_runs_pod_by_its_name_when_the_state_is_unreadable(
        held, inv, tmp_path) -> None:
    """A damaged state.json made cycle.stop one error ("fix or remove it"), the pod billing
    on and not named; removing the file as told made it "no run". The pod carries the run's
    name: it is stopped all the same, and the error says so."""
    client = held.client()
    pod = client.create_pod({"name": "pod-cycle-garbled", "templateId": "tpl-local-chessbot",
                             "gpu": GPU})
    state = tmp_path / "art" / "garbled" / "state.json"
    state.parent.mkdir(parents=True)
    state.write_text("{ not json")
    result = inv("cycle.stop", "-r", "garbled",
                 env={"POD_CYCLE_ARTIFACTS_DIR": str(tmp_path / "art")})
    assert result.returncode != 0 and "Traceback" not in result.stderr
    assert f"{state} is not valid JSON" in result.stderr
    assert f"pod {pod.id} of run garbled: stopped" in result.stderr
    assert client.get_pod(pod.id).status.stopped


@pytest.mark.slow
def test_volume_delete_yes_refuses_before_any_delete_is_sent(held, inv) -> None:
    client = held.client()
    volume = client.create_volume({"name": "keep-me", "size": 10, "dataCenter": "LOCAL-1"})
    try:
        pod = mounting_pod(client, volume, "trains-on-keep-me")
        refused = inv("volume.delete", "keep-me", "--yes")
        assert refused.returncode != 0
        assert f"{pod.id} (trains-on-keep-me" in refused.stderr
        assert "terminate those pods first" in refused.stderr
        assert "Traceback" not in refused.stderr
        assert deletes(held, volume["id"]) == []
        assert volume["id"] in {v["id"] for v in client.list_volumes()}
        client.delete_pod(pod.id)
        deleted = inv("volume.delete", "keep-me", "--yes")
        assert deleted.returncode == 0, deleted.stderr
        assert volume["id"] not in {v["id"] for v in client.list_volumes()}
    finally:
        if volume["id"] in {v["id"] for v in client.list_volumes()}:
            client.delete_volume(volume["id"])


# -- 3. an open step-by-step run's pod is no leftover --------------------------------------
def settings_for(artifacts: Path, **env: str) -> Any:
    return resolve({}, {}, environ={"POD_CYCLE_ARTIFACTS_DIR": str(artifacts), **env},
                   use_keyring=False)


def record_run(artifacts: Path, run_id: str, pod_id: str, *, driver: str | None,
               done: tuple[str, ...], running: str | None = None,
               outcome: str | None = None) -> None:
    from podcycle.runs import PodRecord, RunFolder

    run = RunFolder(artifacts, run_id)
    state = run.state
    state.set_pod(PodRecord(id=pod_id, name=f"pod-cycle-{run_id}"))
    state.driver = driver
    for name in done:
        state.begin(name)
        state.end(name, "done", 1.0)
    if running:
        state.begin(running)
    state.outcome = outcome
    run.save()


@pytest.mark.slow
def test_an_open_step_by_step_runs_pod_is_listed_apart_and_not_a_leftover(held, tmp_path
                                                                          ) -> None:
    from podcycle import leftovers

    client = held.client()
    artifacts = tmp_path / "artifacts"
    pods = {run_id: client.create_pod({"name": f"pod-cycle-{run_id}", "gpu": GPU,
                                       "templateId": "tpl-local-chessbot"}).id
            for run_id in ("between-steps", "stopped-steps", "host-died", "kept-pod",
                           "no-folder", "stop-failed")}
    # cycle.start, later cycle.push-dataset: between the two, nobody holds the lock.
    record_run(artifacts, "between-steps", pods["between-steps"], driver="steps",
               done=("start",))
    # Stopped with cycle.stop, then started again by hand: a leftover.
    record_run(artifacts, "stopped-steps", pods["stopped-steps"], driver="steps",
               done=("start", "stop"))
    # A full-smoke whose host was killed mid-train, and a --keep-pod forgotten.
    record_run(artifacts, "host-died", pods["host-died"], driver="full-smoke",
               done=("start", "push-dataset"), running="train")
    record_run(artifacts, "kept-pod", pods["kept-pod"], driver="full-smoke",
               done=("start", "push-dataset", "train", "collect", "local-validate"),
               outcome="ok")
    # cycle.stop after cycle.start, and its stop failed (POD STILL RUNNING): the catch-all
    # pod.leftovers --stop kept it as an "open step-by-step run", the one pod asked to stop.
    record_run(artifacts, "stop-failed", pods["stop-failed"], driver="steps",
               done=("start",))
    from podcycle.runs import RunFolder

    failed = RunFolder(artifacts, "stop-failed")
    failed.state.begin("stop")
    failed.state.end("stop", "failed", 1.0)
    failed.state.pod.stop_failed = True
    failed.save()
    settings = settings_for(artifacts)
    found = {item.pod.id: item for item in leftovers.survey(client, settings)}
    waiting = found[pods["between-steps"]]
    assert waiting.open_run and waiting.next_step == "push-dataset"
    assert waiting.open_line().startswith("open step-by-step run between-steps (pod ")
    assert "resume with inv cycle.push-dataset -r between-steps or stop with inv " \
           "cycle.stop -r between-steps" in waiting.open_line()
    assert waiting.as_dict()["kind"] == "open-run"
    left = {item.pod.id for item in leftovers.find(client, settings)}
    assert left == {pods[r] for r in ("stopped-steps", "host-died", "kept-pod", "no-folder",
                                      "stop-failed")}
    assert "note: 1 pod(s) bill between the steps" in leftovers.open_runs_note([waiting])


@pytest.mark.slow
def test_leftovers_stop_keeps_the_pod_of_an_open_step_by_step_run(held, inv, tmp_path
                                                                 ) -> None:
    client = held.client()
    artifacts = tmp_path / "artifacts"
    open_pod = client.create_pod({"name": "pod-cycle-stepwise", "gpu": GPU,
                                  "templateId": "tpl-local-chessbot"}).id
    orphan = client.create_pod({"name": "pod-cycle-orphan", "gpu": GPU,
                                "templateId": "tpl-local-chessbot"}).id
    # Made by no run of this tool (pod.provision's, the console's): a row of its own in
    # --json (it was only on the text output's last line), never stopped.
    console = client.create_pod({"name": "chess-bot-20261205-014255", "gpu": GPU,
                                 "templateId": "tpl-local-chessbot"}).id
    record_run(artifacts, "stepwise", open_pod, driver="steps", done=("start", "push-dataset"))
    env = {"POD_CYCLE_ARTIFACTS_DIR": str(artifacts)}
    listed = inv("pod.leftovers", env=env)
    assert listed.returncode == 0, listed.stderr
    assert "open step-by-step run stepwise" in listed.stdout
    assert "resume with inv cycle.train -r stepwise or stop with inv cycle.stop -r " \
           "stepwise" in listed.stdout
    stopped = inv("pod.leftovers", "--stop", "--json", env=env)
    assert stopped.returncode == 0, stopped.stderr
    rows = {row["pod_id"]: row for row in json.loads(stopped.stdout)}
    assert rows[orphan]["stop"] == "stopped" and rows[orphan]["kind"] == "leftover"
    assert rows[open_pod]["kind"] == "open-run"
    assert rows[open_pod]["stop"] == "kept (open step-by-step run)"
    assert rows[console]["kind"] == "other" and rows[console]["run_id"] is None
    assert rows[console]["stop"].startswith("left alone (made by no run of this tool)")
    assert client.get_pod(open_pod).status.value == "PROVISIONING"
    assert client.get_pod(console).status.value == "PROVISIONING"
    assert client.get_pod(orphan).status.value == "EXITED"
    stop_actions = [r for r in held.requests() if r["method"] == "POST"
                    and r["path"] == f"/v2/pods/{open_pod}/action"]
    assert stop_actions == []


@pytest.mark.slow
def test_leftovers_stop_tries_every_pod_when_one_fails_and_names_it(held, inv, tmp_path
                                                                     ) -> None:
    """One leftover's stop refused (here a 403 on its action): the others are still stopped,
    the failed one is named as maybe billing, and the exit is non-zero. The first failure
    ended the loop, and the leftovers after it billed on unstopped and unreported."""
    client = held.client()
    stuck = client.create_pod({"name": "pod-cycle-stuck", "gpu": GPU,
                               "templateId": "tpl-local-chessbot"}).id
    others = [client.create_pod({"name": f"pod-cycle-orphan-{n}", "gpu": GPU,
                                 "templateId": "tpl-local-chessbot"}).id for n in (1, 2)]
    held.fault(method="POST", path=f"/v2/pods/{stuck}/action", status=403,
               detail="refused for the test")
    env = {"POD_CYCLE_ARTIFACTS_DIR": str(tmp_path / "artifacts")}
    stopped = inv("pod.leftovers", "--stop", "--json", env=env)
    assert stopped.returncode == 4, stopped.stdout + stopped.stderr
    rows = {row["pod_id"]: row for row in json.loads(stopped.stdout)}
    assert rows[stuck]["stop"].startswith("FAILED, may still bill: ")
    assert [rows[pod]["stop"] for pod in others] == ["stopped", "stopped"]
    assert [client.get_pod(pod).status.value for pod in others] == ["EXITED", "EXITED"]
    assert client.get_pod(stuck).status.value == "PROVISIONING"
    assert f"could not stop 1 leftover(s), which may still bill: pod {stuck}" in stopped.stderr
    assert "Traceback" not in stopped.stderr


@pytest.mark.slow
def test_a_stop_held_back_by_the_rate_limit_is_said_after_the_clients_waits(held) -> None:
    """RunPod's rate limit on every stop: the client waits it out (5 tries), and stop_pod
    then tried the whole of that three times more: 8 minutes of a billing pod at a
    Retry-After of 30 s, ending the same. Said after the client's own waits."""
    from podcycle.pods import StopFailed, stop_pod

    client = held.client(sleep=lambda _: None)  # the Retry-After waits are not checked
    pod = client.create_pod({"name": "pod-cycle-limited", "gpu": GPU,
                             "templateId": "tpl-local-chessbot"}).id
    held.fault(method="POST", path=f"/v2/pods/{pod}/action", status=429, retry_after=30)
    held.admin("DELETE", "/_local/requests")
    with pytest.raises(StopFailed) as still:
        stop_pod(client, pod, sleep=lambda _: None)
    assert still.value.message.startswith(f"POD STILL RUNNING: could not stop pod {pod}: ")
    assert "rate limit" in still.value.message and "RunPod console" in still.value.remedy
    tries = [r for r in held.requests() if r["path"].endswith("/action")]
    assert len(tries) == client.max_retries + 1
    held.clear_faults()
    assert stop_pod(client, pod, sleep=lambda _: None) == "stopped"


@pytest.mark.slow
def test_a_404_to_the_stop_of_a_pod_that_is_there_is_no_stop(held) -> None:
    """A 404 to the stop action (a gateway's, an API not yet consistent) was taken for "the
    pod is gone": cycle.stop said `gone`, the summary `stopped`, exit 0, and pod.leftovers
    --stop the same of every leftover, all billing on. The pod is read back first."""
    from podcycle.pods import StopFailed, stop_pod

    client = held.client()
    pod = client.create_pod({"name": "pod-cycle-not-gone", "gpu": GPU,
                             "templateId": "tpl-local-chessbot"}).id
    held.fault(method="POST", path=f"/v2/pods/{pod}/action", status=404,
               detail="pod not found")
    with pytest.raises(StopFailed) as still:
        stop_pod(client, pod, sleep=lambda _: None)
    assert still.value.message.startswith(f"POD STILL RUNNING: could not stop pod {pod}: "
                                          "RunPod answered the stop with 404")
    assert client.get_pod(pod).status.billing
    held.clear_faults()
    assert stop_pod(client, pod, sleep=lambda _: None) == "stopped"
    client.delete_pod(pod)
    assert stop_pod(client, pod, sleep=lambda _: None) == "gone"  # a 404 that is true


@pytest.mark.slow
@pytest.mark.parametrize(("status", "said"), [
    (401, "RunPod no longer accepts this API key (revoked or expired?)"),
    (403, "this API key may not stop pods")])
def test_a_stop_the_key_may_not_make_sends_the_user_to_the_console_at_once(
        held, status: int, said: str) -> None:
    """The key revoked (or stripped of its pods scope) while a run trained: the stop was
    tried four times (and the cycle's whole stop twice), then said "stop it now with inv
    pod.stop", which fails with the same key. Said at once, sending to the console."""
    from podcycle.pods import StopFailed, stop_pod

    client = held.client()
    pod = client.create_pod({"name": "pod-cycle-keyless", "gpu": GPU,
                             "templateId": "tpl-local-chessbot"}).id
    held.fault(method="POST", path=f"/v2/pods/{pod}/action", status=status,
               detail="refused for the test")
    held.admin("DELETE", "/_local/requests")
    with pytest.raises(StopFailed) as still:
        stop_pod(client, pod, sleep=lambda _: None)
    assert still.value.message.startswith(f"POD STILL RUNNING: could not stop pod {pod}: "
                                          f"{said}")
    assert still.value.remedy.startswith(f"it is billing: stop it now in the RunPod console "
                                         f"(Pods → {pod} → Stop); no command with this key")
    assert "inv pod.stop" not in still.value.remedy
    assert len([r for r in held.requests() if r["path"].endswith("/action")]) == 1
    held.clear_faults()
    assert stop_pod(client, pod, sleep=lambda _: None) == "stopped"


@pytest.mark.slow
@pytest.mark.parametrize(("answer", "said"), [
    ("", "RunPod accepted the stop of pod {pod}, and 4s later still shows it PROVISIONING"),
    ("{}", "could not stop pod {pod}: RunPod answered with a pod record that has no id")])
def test_a_stop_the_api_accepts_but_does_not_do_is_never_called_stopped(held, answer: str,
                                                                        said: str) -> None:
    """A 200 to the stop action is no proof: an empty answer, or a pod record that does not
    show it stopped, and the pod is read back; one RunPod still shows billing is POD STILL
    RUNNING. pod.stop said `stopped` (exit 0) and cycle.stop recorded the stop done while
    the pod billed on."""
    from podcycle.pods import StopFailed, stop_pod

    client = held.client()
    pod = client.create_pod({"name": "pod-cycle-unstoppable", "gpu": GPU,
                             "templateId": "tpl-local-chessbot"}).id
    held.fault(method="POST", path=f"/v2/pods/{pod}/action", status=200, text=answer)
    with pytest.raises(StopFailed) as still:
        stop_pod(client, pod, sleep=lambda _: None, confirm_within=4)
    assert still.value.message == "POD STILL RUNNING: " + said.format(pod=pod)
    assert f"inv pod.stop {pod}" in still.value.remedy
    held.clear_faults()
    assert stop_pod(client, pod, sleep=lambda _: None) == "stopped"
    assert client.get_pod(pod).status.value == "EXITED"


# -- 4. api.doctor probes billing and network volumes --------------------------------------
def doctor_settings(runpod, key: str, tmp_path: Path) -> Any:
    return settings_for(tmp_path / "artifacts", RUNPOD_BACKEND="runpod", RUNPOD_API_KEY=key,
                        RUNPOD_API_BASE_URL=runpod.url, RUNPOD_SSH_KEY=os.devnull)


def test_doctor_probes_the_billing_and_volume_scopes_with_a_remedy_each(runpod, tmp_path,
                                                                       capsys) -> None:
    from podcycle.doctor import render, run_doctor

    key = "rpa_OPS_NO_BILLING_NO_VOLUMES_0001"
    runpod.add_key(key, ["templates", "catalog", "pods", "ssh-keys"])
    report = run_doctor(doctor_settings(runpod, key, tmp_path))
    scopes = report["scopes"]
    assert scopes["billing"]["status"] == "denied"
    assert scopes["billing"]["call"] == "GET /v2/billing/pods"
    assert "pod.cost" in scopes["billing"]["remedy"]
    assert scopes["network-volumes"]["status"] == "denied"
    assert scopes["network-volumes"]["call"] == "GET /v2/network-volumes"
    assert "volume.list|create|delete" in scopes["network-volumes"]["remedy"]
    assert report["optional_failed"] == ["billing", "network-volumes", "clusters"]
    assert scopes["clusters"]["call"] == "GET /v2/clusters"
    assert "--nodes" in scopes["clusters"]["remedy"] and not scopes["clusters"]["required"]
    assert scopes["pods"]["status"] == "ok" and scopes["pods"]["required"]
    assert scopes["network-volumes"]["remedy"] in report["remedies"]
    render(report)
    text = capsys.readouterr().out
    assert any(line.split()[:2] == ["billing", "denied"] for line in text.splitlines())
    assert any(line.split()[:2] == ["network-volumes", "denied"]
               for line in text.splitlines())
    assert "→ network-volumes: denied to this key; volume.list|create|delete" in text
    assert key not in text

    full = "rpa_OPS_ALL_SCOPES_BUT_A_FAULT_0002"
    runpod.add_key(full, ["templates", "catalog", "pods", "ssh-keys", "billing",
                          "network-volumes"])
    runpod.fault(path="/v2/billing/pods", status=403, detail="billing denied here")
    faulted = run_doctor(doctor_settings(runpod, full, tmp_path))
    assert faulted["scopes"]["billing"]["status"] == "denied"
    assert faulted["scopes"]["network-volumes"]["status"] == "ok"
    assert "pod.cost" in faulted["scopes"]["billing"]["remedy"]


def test_doctor_under_rate_limiting_says_so_and_does_not_judge_the_key(runpod, tmp_path
                                                                      ) -> None:
    """RunPod's rate limit on every call: each scope's line said 429, but the verdict was
    "no call works with this key: check it is current", sending the user to rotate a good
    key; and every later probe waited the limit out again. The first limited call now ends
    the probing, and the verdict is the rate limit with the time to try again."""
    from podcycle.doctor import run_doctor

    full = "rpa_OPS_DOCTOR_RATE_LIMITED_0004"
    runpod.add_key(full, ["templates", "catalog", "pods", "ssh-keys", "billing",
                          "network-volumes", "clusters"])
    runpod.fault(path="/v2/.*", status=429, retry_after=3600)
    runpod.admin("DELETE", "/_local/requests")
    report = run_doctor(doctor_settings(runpod, full, tmp_path))
    assert not report["ok"]
    assert report["scopes"]["templates"]["status"] == "error"
    assert {v["status"] for s, v in report["scopes"].items() if s != "templates"} \
        == {"skipped"}
    [verdict] = [r for r in report["remedies"] if "429" in r]
    assert verdict.startswith("RunPod is rate limiting this account (429), so the key was "
                              "not judged: run the command again after "), verdict
    assert not any("check it is current" in r or "revoked" in r for r in report["remedies"])
    assert len([r for r in runpod.requests() if r["path"].startswith("/v2/")]) == 1


# -- 6. the SSH key message ----------------------------------------------------------------
def test_the_unregistered_ssh_key_message_says_what_is_true_once(runpod, tmp_path) -> None:
    from podcycle.backend import Backend
    from podcycle.doctor import run_doctor
    from podcycle.provision import ensure_ssh_key

    client = runpod.client()
    saved = client.get_ssh_keys()
    client.put_ssh_keys([])
    try:
        backend = Backend("runpod", runpod.url, client, "test")
        with pytest.raises(PodCycleError) as none:
            ensure_ssh_key(backend, None, None)
        assert "no SSH key is not" not in none.value.message
        assert none.value.message.startswith(
            "the RunPod account has no SSH public key registered, so a pod")
        key = tmp_path / "id_ed25519"
        # A real key: its file is read (ssh and paramiko must load it, api.doctor checks).
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "ops@test", "-f",
                        str(key)], check=True)
        line = key.with_name("id_ed25519.pub").read_text().strip()
        with pytest.raises(PodCycleError) as mine:
            ensure_ssh_key(backend, line, key)
        assert mine.value.message.startswith(f"your SSH key {key}.pub is not registered")
        full = "rpa_OPS_DOCTOR_SSH_0003"
        runpod.add_key(full, ["templates", "catalog", "pods", "ssh-keys", "billing",
                              "network-volumes"])
        settings = settings_for(tmp_path / "artifacts", RUNPOD_BACKEND="runpod",
                                RUNPOD_API_KEY=full, RUNPOD_API_BASE_URL=runpod.url,
                                RUNPOD_SSH_KEY=str(key))
        report = run_doctor(settings)
        assert report["ssh_key"]["status"] == "not registered"
        assert report["ssh_key"]["remedy"] == mine.value.render()  # one message, both places
        assert sum("is not registered" in r for r in report["remedies"]) == 1
    finally:
        client.put_ssh_keys(saved)


def test_doctor_on_a_fresh_local_runpod_passes_and_registers_nothing(runpod, tmp_path) -> None:
    """The local RunPod adds the cycle's key when it creates a pod, so a fresh one (no key on
    its account yet) is all green for api.doctor, as for check.regression, and doctor itself
    writes no key: it only reads unless told --register-ssh-key."""
    from podcycle.doctor import run_doctor

    client = runpod.client()
    saved = client.get_ssh_keys()
    client.put_ssh_keys([])
    try:
        settings = settings_for(tmp_path / "artifacts", RUNPOD_BACKEND="local",
                                POD_CYCLE_LOCAL_DIR=str(runpod.dir))
        report = run_doctor(settings)
        assert report["backend"] == "local"
        assert report["ssh_key"]["status"] == "ok", report["ssh_key"]
        assert report["ssh_key"]["registered_at_create"] is True
        assert report["ok"] and not report["remedies"]
        assert client.get_ssh_keys() == []
    finally:
        client.put_ssh_keys(saved)


# -- 5. make setup waits for another apt process --------------------------------------------
APT = ROOT / "scripts" / "apt_install.sh"


@pytest.fixture
def fake_apt(tmp_path: Path) -> dict[str, Any]:
    """apt-get replaced by a script that records its arguments; apt's locks by files here.
    Nothing touches the machine's apt."""
    calls = tmp_path / "apt-get-calls"
    fake = tmp_path / "apt-get"
    fake.write_text(f'#!/bin/sh\necho "$*" >> {calls}\n')
    fake.chmod(0o755)
    locks = [tmp_path / "lists-lock", tmp_path / "dpkg-lock-frontend"]
    for lock in locks:
        lock.touch()
    env = {**child_environ(),
           "APT_GET": str(fake), "APT_LOCKS": " ".join(map(str, locks))}
    return {"env": env, "calls": calls, "locks": locks}


def hold(path: Path) -> Any:
    """An fcntl lock on the file, as apt takes it (released when the handle closes)."""
    import fcntl

    handle = open(path, "r+")  # noqa: SIM115 - held across the test, closed there
    fcntl.lockf(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    return handle


def test_apt_install_script_is_shellcheck_clean() -> None:
    import subprocess

    shellcheck = Path(sys.executable).parent / "shellcheck"  # pinned in requirements-dev
    result = subprocess.run([str(shellcheck), str(APT)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "scripts/apt_install.sh $$missing" in (ROOT / "Makefile").read_text()


def test_apt_install_waits_for_another_apt_process_then_installs(fake_apt) -> None:
    import subprocess

    from tests.conftest import eventually

    lock = hold(fake_apt["locks"][1])
    proc = subprocess.Popen([str(APT), "rsync", "stockfish"], env={
        **fake_apt["env"], "APT_LOCK_TIMEOUT": "120"}, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True)
    try:
        first = proc.stdout.readline()  # the event: it says it waits
        assert first.startswith("waiting up to 120 s for another apt process "
                                "(unattended-upgrades?) to finish"), first
        assert not fake_apt["calls"].exists()  # nothing ran while the lock was held
        lock.close()  # the other apt process ends
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err
    calls = eventually(lambda: fake_apt["calls"].read_text().splitlines(), timeout=5,
                       what="apt-get's calls")
    assert calls == ["-o DPkg::Lock::Timeout=120 update -qq",
                     "-o DPkg::Lock::Timeout=120 install -y -qq --no-install-recommends "
                     "rsync stockfish"]


def test_apt_install_gives_up_after_its_bound_with_a_remedy(fake_apt) -> None:
    import subprocess

    lock = hold(fake_apt["locks"][0])
    try:
        result = subprocess.run([str(APT), "rsync"], env={**fake_apt["env"],
                                                          "APT_LOCK_TIMEOUT": "1"},
                                capture_output=True, text=True, timeout=60)
    finally:
        lock.close()
    assert result.returncode != 0
    assert "waiting up to 1 s for another apt process" in result.stdout
    assert "still holds" in result.stderr and "APT_LOCK_TIMEOUT=" in result.stderr
    assert "make setup" in result.stderr
    assert not fake_apt["calls"].exists()
    bad = subprocess.run([str(APT), "rsync"], env={**fake_apt["env"],
                                                   "APT_LOCK_TIMEOUT": "soon"},
                         capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and "APT_LOCK_TIMEOUT=soon" in bad.stderr


# -- a pod replacing a lost one ------------------------------------------------------------
@pytest.mark.slow
def test_a_pod_replacing_a_lost_one_keeps_the_runs_spend_guard_and_gpus(held, tmp_path) -> None:
    """A start (or --resume) that finds the run's pod gone makes a new one with the spend
    guard and the GPU count the run was started with, unless given again: it made a 1-GPU
    pod with no guard at all, which billed without the limit the run was given."""
    from podcycle.backend import connect
    from podcycle.cycle import Cycle, open_run
    from podcycle.runs import PodRecord, SpendGuard

    def provision(**env: str) -> dict[str, Any]:
        settings = settings_for(tmp_path / "art", RUNPOD_BACKEND="local",
                                POD_CYCLE_LOCAL_DIR=str(held.dir),
                                RUNPOD_TEMPLATE_ID="tpl-local-chessbot",
                                RUNPOD_CYCLE_RUN_ID="keeps", **env)
        run = open_run(settings, mode="resume", announce=lambda _: None)
        with Cycle(settings, run, announce=lambda _: None,
                   backend=connect(settings, announce=False)) as cycle:
            made = cycle._provision()  # what start does once the run's pod is found gone
            record = cycle.state.pod
        pods = json.loads((held.dir / "state.json").read_text())["pods"]  # the server's own
        return {"pod": pods[made.id], "record": record}

    run = open_run(settings_for(tmp_path / "art", RUNPOD_CYCLE_RUN_ID="keeps"), mode="start",
                   announce=lambda _: None)
    run.state.set_pod(PodRecord(id="lp0000000000", name="pod-cycle-keeps", gpu_count=2,
                                guard=SpendGuard(minutes=30, reason="--max-minutes 30",
                                                 max_minutes=30)))
    run.save()
    run.unlock()
    kept = provision()
    assert kept["pod"]["env"]["SPEND_GUARD_MINUTES"] == "30"
    assert kept["pod"]["gpu"]["count"] == 2
    assert kept["record"].guard.max_minutes == 30 and kept["record"].gpu_count == 2
    # Given again, the flags win.
    given = provision(RUNPOD_MAX_MINUTES="45", RUNPOD_GPU_COUNT="1")
    assert given["pod"]["env"]["SPEND_GUARD_MINUTES"] == "45"
    assert given["pod"]["gpu"]["count"] == 1


@pytest.mark.parametrize(("text", "problem"), [
    ("", "it is empty"), ('{"pods": {', "not JSON: "), ("[]", "not the local RunPod's record"),
    # json's own message ends in "at": it read "Invalid control character at at line 1".
    ('{"a": "x\x01"}', "not JSON: Invalid control character at line 1)"),
    ('{"pods": [], "api_key": "k", "admin_token": "t"}', "not the local RunPod's record"),
    ('{"api_key": "k", "pods": {}}', "not the local RunPod's record"),
    ('{"api_key": "k", "n": 1' + "0" * 5000 + "}", "a number too long to read"),
    # A hand edit inside: the server exited at start, local.status ended in a KeyError.
    ('{"api_key": "k", "admin_token": "t", "pods": {"lp1": {"id": "lp1"}}}',
     "its pod lp1 is not as the server writes it"),
    ('{"api_key": "k", "admin_token": "t", "pods": {"lp1": 3}}', "its pod lp1 is not"),
    ('{"api_key": "k", "admin_token": "t", "pods": {"lp1": {"id": "lp2", "status": "EXITED"}}}',
     "its pod lp1 is not"),
    ('{"api_key": "k", "admin_token": "t", "clusters": {"c1": {}}}',
     "its cluster c1 is not as the server writes it"),
    ('{"api_key": "k", "admin_token": "t", "clusters": {"c1": {"id": "c1", "name": "n", '
     '"compute": {"podCount": "2"}}}}', "its cluster c1 is not"),
])
def test_a_damaged_local_runpod_state_is_one_line_before_any_server_starts(
        tmp_path: Path, text: str, problem: str) -> None:
    """A state.json cut short (a full disk, a kill mid-write) or of another shape: every
    command said "the local RunPod server exited at start (code 1) → see server.log", whose
    last line was a traceback, and local.down itself ended in an AttributeError."""
    from podcycle.local import control

    (tmp_path / "state.json").write_text(text)
    with pytest.raises(PodCycleError) as refused:
        control.up(tmp_path)
    assert refused.value.message.startswith(
        f"the local RunPod's state {tmp_path / 'state.json'} cannot be read ({problem}")
    assert f"mv {tmp_path / 'state.json'} " in refused.value.remedy
    assert not (tmp_path / "server.log").exists()  # no server was started
    assert control.down(tmp_path) is False  # and the way out the remedy gives works
    assert control.inventory(tmp_path) == {"pods": {}, "clusters": []}


@pytest.mark.slow
def test_a_damaged_server_json_of_a_running_local_runpod_is_named_and_local_down_works(
        tmp_path: Path) -> None:
    """The server's server.json edited or cut short while it runs: local.status, local.up,
    local.down and every other command ended in a traceback (TypeError, ValueError,
    KeyError), and the server could not be stopped by the tool."""
    from podcycle.local import control

    info, _ = control.up(tmp_path)
    env = {"RUNPOD_BACKEND": "local", "POD_CYCLE_LOCAL_DIR": str(tmp_path)}
    try:
        for text in ("[]", '{"pid": "x"}', "{}", "", '{"pid": 1, "url": "u"}'):
            (tmp_path / "server.json").write_text(text)
            assert control.read_info(tmp_path) is None
            for args in (["local.status"], ["local.up"], ["pod.list"]):
                result = run_inv(*args, env=env)
                assert result.returncode == 1 and "Traceback" not in result.stderr, result
                assert result.stderr.startswith(
                    f"error: the local RunPod (pid {info['pid']}) runs, but its "
                    f"{tmp_path / 'server.json'} is missing or damaged"), (args, result.stderr)
                assert "inv local.down" in result.stderr
        result = run_inv("local.down", env=env)
        assert result.returncode == 0 and "stopped the local RunPod" in result.stderr, result
        assert not control._alive(info["pid"])
    finally:
        control.down(tmp_path)


def test_a_local_pod_whose_boot_fails_unexpectedly_turns_error_not_provisioning(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The local RunPod's folder on a full disk: the save as the pod turned STARTING raised
    in the boot's thread, which ended without a word, and the pod stayed PROVISIONING,
    billing, until the cycle gave up on it ten minutes later. The disk filling up is stood
    in for by the save raising (a full disk cannot be made here without root)."""
    import errno

    from podcycle.local.server import LocalRunPod

    (tmp_path / "local").mkdir()
    server = LocalRunPod(tmp_path / "local")
    save = server.save

    def full() -> None:  # the disk fills up as the pod boots
        if any(p["status"] == "STARTING" for p in server.state["pods"].values()):
            raise OSError(errno.ENOSPC, "No space left on device")
        save()

    monkeypatch.setattr(server, "save", full)
    pod = server.create_pod({"name": "full", "image": "img", "gpu": {"id": "NVIDIA H100 80GB "
                                                                     "HBM3"}})
    record = eventually(lambda: server.state["pods"][pod["id"]]["status"] == "ERROR"
                        and server.state["pods"][pod["id"]], timeout=30,
                        what="the pod to turn ERROR")
    assert "No space left on device" in record["_error"]
    assert server.state["billing"][pod["id"]]["intervals"][-1][1] is not None  # not billing


@pytest.mark.slow
def test_a_local_pods_processes_end_when_its_boot_fails_after_they_started(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The save that records a booting pod's pid failed (a full disk, stood in for as in the
    test above): the pod turned ERROR, its pid forgotten, and its sshd and entrypoint ran on,
    out of local.down's reach (an sshd's title hides the pod's marker)."""
    import errno

    from podcycle.local import procs
    from podcycle.local.server import LocalRunPod

    (tmp_path / "local").mkdir()
    server = LocalRunPod(tmp_path / "local")
    save = server.save

    def full() -> None:
        if any(p.get("_pid") and p["status"] == "STARTING"
               for p in server.state["pods"].values()):
            raise OSError(errno.ENOSPC, "No space left on device")
        save()

    monkeypatch.setattr(server, "save", full)
    pod = server.create_pod({"name": "full", "image": "img", "gpu": {"id": "NVIDIA H100 80GB "
                                                                     "HBM3"}})
    try:
        eventually(lambda: server.state["pods"][pod["id"]]["status"] == "ERROR", timeout=60,
                   what="the pod to turn ERROR")
        folder = f"/pods/{pod['id']}/"

        def left() -> set[int]:  # marked, or naming the pod's folder (its sshd's title)
            return procs.pod_processes(pod["id"]) | {
                pid for pid in procs.all_pids() if folder in cmdline_of(pid)}

        assert eventually(lambda: not left(), timeout=30, what="the pod's processes to end")
        # and its /tmp (fresh_tmp's folder, made as it booted) goes, as a stop's does
        assert not list(Path(tempfile.gettempdir()).glob(f"podcycle-pod-{pod['id']}-*"))
    finally:
        procs.terminate(procs.pod_processes(pod["id"]))


@pytest.mark.slow
def test_a_folder_setting_that_is_a_symlink_loop_is_named_not_a_traceback(tmp_path) -> None:
    """`ln -s loop loop; inv local.up --local-dir loop` (or POD_CYCLE_LOCAL_DIR so): every
    command ended in Python's `RuntimeError: Symlink loop from ...` traceback."""
    loop = tmp_path / "loop"
    loop.symlink_to(loop)
    for args, env in ((["local.status", "--local-dir", str(loop)], {}),
                      (["local.down", "--local-dir", str(loop)], {}),
                      (["pod.list"], {"RUNPOD_BACKEND": "local",
                                      "POD_CYCLE_LOCAL_DIR": str(loop)})):
        result = run_inv(*args, env=env)
        assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr
        assert result.stderr.startswith(f"error: '{loop}' is a loop of symbolic links"), \
            result.stderr


def test_a_local_runpod_folder_that_takes_no_files_is_named(tmp_path) -> None:
    """`inv local.up --local-dir /proc/self`: a folder that is there, yet takes no new file,
    said `No such file or directory: /proc/PID/up.lock → check the path`."""
    from podcycle.errors import PodCycleError
    from podcycle.local import control

    with pytest.raises(PodCycleError) as refused:
        control.up(Path("/proc/self"))
    assert refused.value.message == (f"/proc/{os.getpid()} is a folder that takes no new "
                                     "files (creating up.lock in it: No such file or "
                                     "directory)")
    assert "POD_CYCLE_LOCAL_DIR or --local-dir" in refused.value.remedy
    # Hunt: a folder to make under one that takes no folders said "No such file or
    # directory: /proc/1/nope", as if a typo. It names the folder that refused.
    with pytest.raises(PodCycleError) as refused:
        control.up(Path("/proc/self/nope/deeper"))
    assert refused.value.message == (f"cannot make the folder /proc/{os.getpid()}/nope/deeper: "
                                     f"/proc/{os.getpid()} takes no new folders")
    assert "POD_CYCLE_LOCAL_DIR or --local-dir" in refused.value.remedy
    # A folder that takes files, whose up.lock is a link to nowhere: that link is named.
    folder = tmp_path / "local"
    folder.mkdir()
    (folder / "up.lock").symlink_to(tmp_path / "nowhere" / "up.lock")
    with pytest.raises(PodCycleError) as refused:
        control.up(folder)
    assert refused.value.message == (f"{folder / 'up.lock'} is a broken link (to "
                                     f"{tmp_path / 'nowhere' / 'up.lock'})")


def test_a_local_runpod_folder_ssh_would_misread_is_refused_before_a_server_starts(
        tmp_path) -> None:
    """POD_CYCLE_LOCAL_DIR=/tmp/rp%d: local.up and pod.provision made a server and a pod,
    then every SSH to it failed (ssh reads % as a token); with a line break in the path the
    pod's sshd never started and the pod sat in ERROR after a minute."""
    from podcycle.local import control

    for name in ("rp%d", "rp\nx"):
        folder = tmp_path / name
        with pytest.raises(ConfigError, match="the local RunPod's folder .* holds"):
            control.up(folder)
        assert not folder.exists()


def test_a_starting_local_runpod_is_not_called_damaged(tmp_path) -> None:
    """A server starting holds its folder's lock before it writes server.json (it first
    stops the pods a crashed server left, seconds each): local.status called it damaged and
    sent the operator to local.down. Only a server that said it started (`PID ready` in its
    lock) and has no server.json is."""
    import subprocess
    import sys

    from podcycle.local import control

    def holder(text: str) -> subprocess.Popen:
        proc = subprocess.Popen(
            [sys.executable, "-c", "import fcntl, os, sys; fd = os.open(sys.argv[1], os.O_RDWR "
             "| os.O_CREAT); fcntl.flock(fd, fcntl.LOCK_EX); os.ftruncate(fd, 0); "
             "os.pwrite(fd, sys.argv[2].replace('PID', str(os.getpid())).encode(), 0); "
             "print('held', flush=True); sys.stdin.read()", str(tmp_path / "server.lock"),
             text], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        assert proc.stdout.readline() == "held\n"
        return proc

    for text, said in (("PID", "is still starting"), ("PID ready", "is missing or damaged")):
        proc = holder(text)
        try:
            with pytest.raises(PodCycleError) as refused:
                control.check_reachable(tmp_path, grace=0.3)
            assert refused.value.message.startswith(f"the local RunPod (pid {proc.pid}) ")
            assert said in refused.value.message
            control.check_reachable(tmp_path, wait_if_starting=True) if text == "PID" else None
            assert control.serving_pid(tmp_path) == proc.pid
        finally:
            proc.stdin.close()
            proc.wait(timeout=30)
    control.check_reachable(tmp_path)  # nothing holds it: nothing to say


@pytest.mark.slow
def test_leftovers_stop_says_a_kept_cluster_once(held, inv, tmp_path) -> None:
    """`pod.leftovers --stop` with a cluster it must keep (its run's folder is elsewhere, so
    what is on it is unknown) said the kept line as it went, then again as the listing."""
    from tests.test_local_clusters import cluster_body

    cluster = held.client().create_cluster(cluster_body("pod-cycle-elsewhere")).id
    try:
        stopped = inv("pod.leftovers", "--stop",
                      env={"POD_CYCLE_ARTIFACTS_DIR": str(tmp_path / "artifacts")})
        assert stopped.returncode == 0, stopped.stderr
        said = stopped.stdout + stopped.stderr
        assert said.count(f"cluster {cluster}") == 1, said
        assert f"cluster {cluster} (run elsewhere): kept: " in stopped.stderr
    finally:
        held.client().delete_cluster(cluster)


def test_a_local_runpod_of_another_checkout_is_said(tmp_path) -> None:
    """An older clone's local RunPod, sharing POD_CYCLE_LOCAL_DIR, served that clone's
    pod-side scripts to this checkout's runs without a word: an upgraded resume trained from
    epoch 1 again (the older cycle_train.sh ignores TRAIN_RESUME). Said, with the way out."""
    from podcycle import PROJECT_ROOT
    from podcycle.local.control import other_checkout

    here = {"url": "http://127.0.0.1:1", "project_root": str(PROJECT_ROOT)}
    assert other_checkout(here) is None
    note = other_checkout({**here, "project_root": str(tmp_path / "old-clone")})
    assert note == (f"note: the local RunPod at http://127.0.0.1:1 was started from another "
                    f"checkout ({tmp_path / 'old-clone'}): its pods run that code's pod-side "
                    "scripts (chessbot/, deploy/), not this checkout's; inv local.down, then "
                    "any command, starts this one's (local.down stops its pods)")
    # A server of an older version writes no project_root: its Python's virtualenv tells.
    older = {"url": "http://127.0.0.1:1", "pid": os.getpid()}
    venv_python = Path(sys.executable)
    if venv_python.parent.parent.name == ".venv" and \
            venv_python.parent.parent.parent.resolve() == PROJECT_ROOT.resolve():
        assert other_checkout(older) is None  # this process runs this checkout's venv
    # Nothing tells (no such process, no /proc), or a damaged server.json: no note, and no
    # traceback.
    assert other_checkout({"url": "http://127.0.0.1:1", "pid": 2 ** 22 + 12345}) is None
    assert other_checkout({**here, "project_root": "/old\x00clone"}) is None


@pytest.mark.slow
def test_local_down_refuses_while_a_cycle_drives_one_of_its_pods(tmp_path) -> None:
    """`inv local.down` in one terminal while a full-smoke trained in another: its pod went
    with the server, mid-training, and the cycle ended with "POD STILL RUNNING" (its stop
    could not reach the API taken down). Refused now, naming the run and its process;
    --force stops everything, as before."""
    from podcycle.runs import DRIVING_SWEEP, PodRecord, RunFolder
    from tests.conftest import LocalRunPod

    server = LocalRunPod(tmp_path / "local")
    try:
        client = server.client()
        pod = client.create_pod({"name": "live", "templateId": "tpl-local-chessbot",
                                 "gpu": {"id": "NVIDIA RTX A5000", "count": 1},
                                 "env": {"START_INFERENCE_API": "0"}})
        eventually(lambda: client.get_pod(pod.id).status.value == "RUNNING",
                   what=f"pod {pod.id} to run")
        art = tmp_path / "art"
        run = RunFolder(art, "live-run")
        run.state.pod = PodRecord(id=pod.id, name="pod-cycle-live-run")
        run.save()
        run.lock()  # this process drives it, as a full-smoke in another terminal would
        env = {"POD_CYCLE_LOCAL_DIR": str(server.dir), "POD_CYCLE_ARTIFACTS_DIR": str(art)}
        refused = run_inv("local.down", env=env)
        assert refused.returncode == 1 and "Traceback" not in refused.stderr
        assert (f"error: run live-run is driven by process {os.getpid()} on pod {pod.id} of "
                "this local RunPod: local.down would stop its pod under it") \
            in refused.stderr, refused.stderr
        assert "inv local.down --force stops everything now" in refused.stderr
        assert client.get_pod(pod.id).status.value == "RUNNING"
        # A sweep's trial has no terminal to Ctrl-C it in: the sweep is named (second read).
        run.unlock()
        os.environ[DRIVING_SWEEP] = "sw1"
        try:
            run.lock()
        finally:
            del os.environ[DRIVING_SWEEP]
        trial = run_inv("local.down", env=env)
        assert trial.returncode == 1 and "inv sweep.stop sw1" in trial.stderr, trial.stderr
        forced = run_inv("local.down", "--force", env=env)
        assert forced.returncode == 0, forced.stderr
        assert "stopped the local RunPod and its pods" in forced.stderr
        run.unlock()
    finally:
        server.down()
