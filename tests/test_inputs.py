"""Every input checked before it costs anything, every failure named for what it is, every
request as the spec says. CLI cases run the real `inv` against the local RunPod and check its
request log; the rest are in-process."""

from __future__ import annotations

import functools
import json
import os
from pathlib import Path
from typing import Any

import pytest

from podcycle.errors import ConfigError, PodCycleError
from tests.conftest import run_inv, task_arguments


def requests_since(runpod, before: int) -> list[dict[str, Any]]:
    return runpod.requests()[before:]


@pytest.fixture
def pod(runpod):
    with runpod.running_pod("inputs-target", {"START_INFERENCE_API": "0"}) as made:
        yield made


@pytest.mark.slow
@pytest.mark.parametrize("task, crafted", [
    ("pod.terminate", "x/../{id}"),
    ("pod.status", "../../v2/pods"),
    ("pod.status", "{id}/logs"),
    ("pod.stop", "{id}?action=x"),
    ("pod.ssh", "%2e%2e"),
])
def test_crafted_pod_ids_are_refused_before_any_request(inv, runpod, pod, task, crafted) -> None:
    before = len(runpod.requests())
    result = inv(task, crafted.format(id=pod.id))
    assert result.returncode == 2, result.stdout + result.stderr
    assert "invalid pod id" in result.stderr and "Traceback" not in result.stderr
    assert requests_since(runpod, before) == []
    assert runpod.client().get_pod(pod.id).status.value == "RUNNING"


def test_pod_paths_are_url_encoded() -> None:
    from podcycle.runpod.client import pod_path, segment

    assert pod_path("ab_c-1", "/action") == "/v2/pods/ab_c-1/action"
    assert segment("a/../b?c#d%") == "a%2F..%2Fb%3Fc%23d%25"


@pytest.mark.slow
@pytest.mark.parametrize("task", ["pod.status", "pod.stop", "pod.terminate", "pod.ssh"])
def test_help_after_a_positional_task_shows_the_help(task, tmp_path) -> None:
    local = tmp_path / "never-started"
    result = run_inv(task, "--help", env={"POD_CYCLE_LOCAL_DIR": str(local),
                                          "RUNPOD_BACKEND": "local"})
    assert result.returncode == 0, result.stderr
    assert f"inv[oke] [--core-opts] {task}" in result.stdout
    assert not local.exists(), "no local RunPod may be started for --help"


@pytest.mark.slow
@pytest.mark.parametrize("run_id", ["abc\n", "a/b", "../x", "-x", "a b"])
def test_bad_run_ids_are_refused_before_any_pod_exists(inv, runpod, run_id, tmp_path) -> None:
    before = len(runpod.pods())
    result = inv("cycle.full-smoke", env={"RUNPOD_CYCLE_RUN_ID": run_id,
                                          "POD_CYCLE_ARTIFACTS_DIR": str(tmp_path)})
    assert result.returncode == 2 and "invalid run id" in result.stderr, result.stderr
    assert "Traceback" not in result.stderr
    assert len(runpod.pods()) == before
    assert list(tmp_path.iterdir()) == []


@pytest.mark.slow
def test_a_dataset_dir_that_is_a_file_is_refused(inv, runpod, tmp_path) -> None:
    before = len(runpod.pods())
    afile = tmp_path / "train.jsonl"
    afile.write_text("{}\n")
    result = inv("cycle.full-smoke", "--dataset-dir", str(afile),
                 env={"POD_CYCLE_ARTIFACTS_DIR": str(tmp_path / "art")})
    assert result.returncode == 3, result.stderr
    assert "is a file, not a folder" in result.stderr and "Traceback" not in result.stderr
    assert len(runpod.pods()) == before


@pytest.mark.slow
@pytest.mark.parametrize("args, message", [
    (["gpu.search", "--min-memory", "abc"], "--min-memory must be an integer, got 'abc'"),
    (["gpu.search", "--max-price", "cheap"], "--max-price must be a number"),
    (["gpu.search", "--gpu-count", "0"], "--gpu-count must be at least 1"),
    (["cycle.full-smoke", "--epochs", "abc"], "--epochs must be an integer, got 'abc'"),
])
def test_bad_numbers_name_the_flag_given(inv, args, message) -> None:
    result = inv(*args)
    assert result.returncode == 2, result.stderr
    assert message in result.stderr and "Traceback" not in result.stderr


@pytest.mark.slow
def test_gpu_search_says_when_nothing_matches_and_never_cuts_json_silently(inv) -> None:
    empty = inv("gpu.search", "--max-price", "0.01")
    assert empty.returncode == 1 and "no GPU type matches" in empty.stderr
    assert empty.stdout == ""
    # Only the filters that narrowed it: "--cloud all" to a search of all clouds misled.
    assert "widen the search (a higher --max-price)" in empty.stderr, empty.stderr
    narrow = inv("gpu.search", "--min-memory", "4000", "--cloud", "secure")
    assert "widen the search (--cloud all, a lower --min-memory)" in narrow.stderr
    everything = json.loads(inv("gpu.search", "--json").stdout)
    assert len(everything) > 20  # the table's default limit is not applied to --json
    assert all(row["sample_data"] for row in everything)
    table = inv("gpu.search")
    assert "showing the 20 cheapest of" in table.stderr and "sample data" in table.stderr
    # RUNPOD_MAX_PRICE and RUNPOD_GPU_COUNT were checked, then ignored: the settings hold.
    cheap = json.loads(inv("gpu.search", "--json", env={"RUNPOD_MAX_PRICE": "0.5",
                                                        "RUNPOD_GPU_COUNT": "2"}).stdout)
    assert cheap and all(row["price_per_hour"] <= 0.5 and row["gpu_count"] == 2
                         for row in cheap)
    flag = json.loads(inv("gpu.search", "--json", "--gpu-count", "1",
                          env={"RUNPOD_GPU_COUNT": "2"}).stdout)
    assert {row["gpu_count"] for row in flag} == {1}  # the flag wins


@pytest.mark.slow
@pytest.mark.parametrize("repo, message", [
    ("-ghcr.io//foo!!/bar", "not a valid image repository name"),
    ("chess bot;x", "not a valid image repository name"),
    ("ghcr.io/me/bot:v1", "without a tag or digest"),
    ("ghcr.io/me/bot@sha256:abc", "without a tag or digest"),
])
def test_bad_image_repositories_are_refused_for_the_right_reason(repo, message) -> None:
    result = run_inv("image.build", "--dry-run", env={"IMAGE_REPO": repo})
    assert result.returncode == 2 and message in result.stderr, result.stderr


def test_a_checkout_that_differs_from_head_is_counted_for_image_builds_warning(
        tmp_path: Path) -> None:
    """image.build tags the image with HEAD's commit while its context is the working tree:
    an uncommitted change went into an image whose tag named a commit without it."""
    import subprocess

    from podcycle.image import changed_files

    def git(*args: str) -> None:
        subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", *args],
                       cwd=tmp_path, check=True, capture_output=True)

    git("init", "-q")
    (tmp_path / "a.py").write_text("a = 1\n")
    git("add", "a.py")
    git("commit", "-qm", "one")
    assert changed_files(tmp_path) == 0
    (tmp_path / "a.py").write_text("a = 2\n")
    (tmp_path / "new.py").write_text("")
    assert changed_files(tmp_path) == 2
    assert changed_files(tmp_path / "nope") == 0  # not a checkout: nothing said
    # A .dockerignore that lets in only some folders: files outside them never reach the
    # image, and were counted as if they did (a scratch t1.yaml at the top).
    (tmp_path / ".dockerignore").write_text("# the context\n*\n!chessbot/\n!deploy/\n"
                                            "**/__pycache__\n")
    git("add", ".dockerignore")
    git("commit", "-qm", "two", "--", ".dockerignore")
    (tmp_path / "chessbot").mkdir()
    (tmp_path / "chessbot" / "m.py").write_text("")
    assert changed_files(tmp_path) == 1  # chessbot/m.py, not a.py, new.py
    # .dockerignore itself decides what goes in: a change to it was not counted.
    (tmp_path / ".dockerignore").write_text("*\n!chessbot/\n!deploy/\n!scripts/\n")
    assert changed_files(tmp_path) == 2


def test_image_references_follow_dockers_grammar() -> None:
    """A template's image: RunPod's and Docker Hub's own forms, registries with ports, IPv6
    and capitals in their host name, digests pass; a space, a line break, a capital in a
    name part, a non-ASCII tag or a name over 255 characters do not."""
    from podcycle.image import reference_problem

    for good in ("ubuntu", "ubuntu:22.04", "library/ubuntu", "docker.io/library/ubuntu:latest",
                 "runpod/pytorch:2.4.0-py3.11-cuda12.4.1-devel-ubuntu22.04",
                 "ghcr.io/me/chess-bot-runpod:3f2a1c9", "localhost:5000/a/b_c:Tag-1",
                 "localhost/a", "myhost:5000/a", "Registry.Example.com/foo", "[::1]:5000/foo:1",
                 "ghcr.io/me/bot@sha256:" + "a" * 64):
        assert reference_problem(good) is None, good
    for bad in ("not an image", "ghcr.io/x/y:1\n--privileged", "Upper/case", "foo:tag\u00e9",
                "ghcr.io/" + "a" * 300, "ghcr.io/me/bot:", "-x"):
        assert reference_problem(bad) is not None, bad


def test_good_image_repositories_pass() -> None:
    from podcycle.image import normalise_repo

    for repo in ("ghcr.io/me/chess-bot-runpod", "localhost:5000/a/b_c", "ubuntu"):
        assert normalise_repo(repo) == repo
    assert normalise_repo("GHCR.io/Me/Bot") == "ghcr.io/me/bot"
    # Docker's grammar caps a repository name at 255 characters: 300 were accepted.
    with pytest.raises(ConfigError, match="is 308 characters: Docker takes a repository name "
                                          "of at most 255"):
        normalise_repo("ghcr.io/" + "a" * 300, "--repo")


# -- requests as the spec says -----------------------------------------------------------------
SPEC = json.loads((Path(__file__).parent / "data" / "runpod-rest-v2.openapi.json").read_text())


def test_the_client_accepts_problem_json_errors(runpod) -> None:
    from podcycle.runpod.client import ACCEPT

    error_types = {ctype for path in SPEC["paths"].values() for op in path.values()
                   if isinstance(op, dict)
                   for code, answer in op.get("responses", {}).items() if code.startswith("4")
                   for ctype in (answer.get("content") or {})}
    assert all(t in ACCEPT for t in error_types), error_types
    assert runpod.client()._session.headers["Accept"] == ACCEPT


class KeysClient:
    def __init__(self, keys: list[str]) -> None:
        self.keys = keys
        self.puts: list[list[str]] = []

    def get_ssh_keys(self) -> list[str]:
        return list(self.keys)

    def put_ssh_keys(self, keys: list[str]) -> list[str]:
        self.puts.append(keys)
        self.keys = keys
        return keys


MINE = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIMine me@host"


def test_a_malformed_key_on_the_account_is_reported_not_resent() -> None:
    from podcycle import sshkeys

    client = KeysClient(["ssh-ed25519 AAAAgood a@b", "not a key at all"])
    with pytest.raises(PodCycleError) as bad:
        sshkeys.register(client, MINE)
    assert "1 malformed SSH key" in bad.value.message and "not a key at all" in bad.value.message
    assert client.puts == []
    fine = KeysClient(["ssh-ed25519 AAAAgood a@b"])
    sshkeys.register(fine, MINE)
    assert fine.puts == [["ssh-ed25519 AAAAgood a@b", MINE]]


def test_provisioning_refuses_a_template_without_22_tcp_and_a_pod_nobody_can_log_into() -> None:
    from podcycle.backend import Backend
    from podcycle.provision import check_template_ssh, ensure_ssh_key

    with pytest.raises(PodCycleError, match="does not expose 22/tcp"):
        check_template_ssh({"name": "t", "ports": ["8888/http"]}, allow_proxy_ssh=False)
    check_template_ssh({"name": "t", "ports": ["8888/http"]}, allow_proxy_ssh=True)
    check_template_ssh({"name": "t", "ports": ["22/tcp"]}, allow_proxy_ssh=False)
    runpod_like = Backend("runpod", "http://x", KeysClient([]), "env")
    with pytest.raises(PodCycleError, match="no SSH public key registered|is not registered"):
        ensure_ssh_key(runpod_like, None, None)
    with pytest.raises(PodCycleError, match="inv api.doctor --register-ssh-key"):
        ensure_ssh_key(runpod_like, MINE, Path("/home/me/.ssh/id_ed25519"))
    assert runpod_like.client.puts == []
    local_like = Backend("local", "http://x", KeysClient([]), "local", registers_ssh_keys=True)
    ensure_ssh_key(local_like, MINE, Path("/k"))
    assert local_like.client.puts == [[MINE]]


def test_a_template_without_22_tcp_creates_nothing() -> None:
    from podcycle.backend import Backend
    from podcycle.config import resolve
    from podcycle.provision import provision_pod

    class TemplateClient(KeysClient):
        created: list[dict[str, Any]] = []

        def get_template(self, template_id: str) -> dict[str, Any]:
            return {"id": template_id, "name": "web-only", "ports": ["8888/http"]}

        def create_pod(self, body: dict[str, Any]) -> None:
            self.created.append(body)

    client = TemplateClient([MINE])
    settings = resolve({"template_id": "tpl-web", "gpu_type_id": "NVIDIA H200"}, {},
                       environ={}, use_keyring=False)
    with pytest.raises(PodCycleError, match="does not expose 22/tcp"):
        provision_pod(Backend("runpod", "http://x", client, "env"), settings, name="p",
                      env={})
    assert client.created == []


class CandidateClient(KeysClient):
    """RunPod's cloud for a pod create (a stand-in: the cloud cannot run here): a catalog of
    two GPU types, stock per cloud as the spec scopes it, and creates that answer from
    `answers` in turn (an error to raise, or None: made)."""

    CATALOG = [("NVIDIA A40", 0.35, 0.20), ("NVIDIA L40S", 0.80, 0.60)]

    def __init__(self, answers: list[Any], stock: dict[str, str] | None = None) -> None:
        super().__init__([MINE])
        self.answers, self.stock = list(answers), stock or {}
        self.created: list[dict[str, Any]] = []
        self.catalog_reads: list[str | None] = []

    def get_template(self, template_id: str) -> dict[str, Any]:
        return {"id": template_id, "name": "chess", "ports": ["22/tcp"]}

    def list_gpu_types(self, *, availability: bool = True, cloud: str | None = None,
                       count: int | None = None, product: str = "POD") -> list[dict[str, Any]]:
        self.catalog_reads.append(cloud)
        return [{"id": gpu, "name": gpu, "memory": 48, "secure": True, "community": True,
                 "price": {"secure": secure, "community": community},
                 "maxCount": {"secure": 8, "community": 8},
                 "availability": self.stock.get(f"{gpu}/{cloud}", "HIGH")}
                for gpu, secure, community in self.CATALOG]

    def create_pod(self, body: dict[str, Any]) -> Any:
        from podcycle.runpod.models import Pod

        self.created.append(body)
        answer = self.answers.pop(0) if self.answers else None
        if answer is not None:
            raise answer
        return Pod.from_api({"id": f"p{len(self.created)}", "status": "PROVISIONING",
                             "name": body["name"]})


def provision_with(client: CandidateClient, capsys, **chosen: str) -> Any:
    from podcycle.backend import Backend
    from podcycle.config import resolve
    from podcycle.provision import provision_pod

    settings = resolve({"template_id": "tpl-chess", **chosen}, {}, environ={},
                       use_keyring=False)
    made = provision_pod(Backend("runpod", "http://x", client, "env"), settings, name="p",
                         env={})
    return made, capsys.readouterr().err


def refusal(status: int, detail: str) -> Any:
    from podcycle.runpod.errors import error_for

    return error_for(status, "POST", "/v2/pods", detail, "http://x")


def test_a_create_refused_for_capacity_or_pool_tries_the_next_candidate(capsys) -> None:
    """The spec's createPod: 400 (no capacity) and 403 (a pool the account may not use) make
    no pod, "try your next candidate". The first candidate's 400 ended the run before."""
    client = CandidateClient([refusal(400, "no instances available"),
                              refusal(403, "pool not allowed")])
    made, said = provision_with(client, capsys, cloud="all")
    tried = [(b["gpu"]["id"] if "gpu" in b else b.get("gpuTypeIds"), b["cloud"].upper())
             for b in client.created]
    assert [cloud for _, cloud in tried] == ["COMMUNITY", "SECURE", "COMMUNITY"]
    assert made.pod.id == "p3" and made.offer.price_per_hour == 0.6
    assert "RunPod refused NVIDIA A40 in community cloud (400: no instances available); " \
           "no pod was made: trying NVIDIA A40 in secure cloud" in said


def test_a_create_that_breaks_the_contract_is_not_tried_again(capsys) -> None:
    client = CandidateClient([refusal(422, "gpu.count: must be >= 1")])
    with pytest.raises(PodCycleError) as refused:
        provision_with(client, capsys, cloud="all")
    assert len(client.created) == 1  # 422: fix the request, never retry (the spec)
    assert "breaks the API's contract" in refused.value.remedy


def test_every_candidate_refused_is_one_error_naming_each(capsys) -> None:
    client = CandidateClient([refusal(400, "no instances available")] * 4)
    with pytest.raises(PodCycleError) as refused:
        provision_with(client, capsys, cloud="all")
    assert refused.value.message.startswith("RunPod refused every candidate (4): NVIDIA A40 "
                                            "in community cloud (400: no instances available)")
    assert "another GPU type or cloud" in refused.value.remedy


def test_a_given_gpu_type_reads_each_clouds_stock_on_its_own(capsys) -> None:
    """include=AVAILABILITY is scoped by `cloud` (the spec): one read for both clouds showed
    the secure cloud's stock for the community offer."""
    client = CandidateClient([refusal(400, "no instances available")],
                             stock={"NVIDIA L40S/secure": "NONE",
                                    "NVIDIA L40S/community": "LOW"})
    made, _ = provision_with(client, capsys, cloud="all", gpu_type_id="NVIDIA L40S")
    assert client.catalog_reads == ["secure", "community"]
    assert [b["cloud"] for b in client.created] == ["COMMUNITY", "SECURE"]  # refused, next
    assert (made.offer.cloud, made.offer.availability) == ("SECURE", "NONE")
    stocked = CandidateClient([], stock={"NVIDIA L40S/secure": "HIGH",
                                         "NVIDIA L40S/community": "NONE"})
    made, _ = provision_with(stocked, capsys, cloud="all", gpu_type_id="NVIDIA L40S")
    # In stock first, though dearer: the $0.60 community offer has none.
    assert (made.offer.cloud, made.offer.availability) == ("SECURE", "HIGH")


def test_a_given_gpu_type_is_held_to_the_price_ceiling_and_its_clouds(capsys) -> None:
    """RUNPOD_MAX_PRICE bounded only the cheapest-type search: with --gpu-type-id a $3.59/h
    pod was made under a $0.30 ceiling. A type the chosen cloud does not offer was said to
    have no price ("the catalog gave none") with --max-cost, and a create otherwise."""
    client = CandidateClient([])
    with pytest.raises(ConfigError) as over:
        provision_with(client, capsys, cloud="all", gpu_type_id="NVIDIA L40S", max_price="0.5")
    assert over.value.message == ("NVIDIA L40S costs $0.60/h for 1 GPU(s) in the community "
                                  "cloud, over the price ceiling $0.5/h (RUNPOD_MAX_PRICE)")
    assert client.created == []
    made, _ = provision_with(client, capsys, cloud="all", gpu_type_id="NVIDIA L40S",
                             max_price="0.7")  # only the offer under the ceiling is tried
    assert (made.offer.cloud, made.offer.price_per_hour) == ("COMMUNITY", 0.6)

    class CommunityOnly(CandidateClient):
        def list_gpu_types(self, **query: Any) -> list[dict[str, Any]]:
            return [dict(gpu, secure=False) for gpu in super().list_gpu_types(**query)]

    elsewhere = CommunityOnly([])
    with pytest.raises(ConfigError) as absent:
        provision_with(elsewhere, capsys, cloud="secure", gpu_type_id="NVIDIA A40",
                       max_cost="1")
    assert absent.value.message == ("NVIDIA A40 is not offered in the secure cloud; the "
                                    "catalog lists it in community ($0.20/h per GPU)")
    assert absent.value.remedy == "pass --cloud community" and elsewhere.created == []

def test_a_lookup_refused_after_a_lost_create_is_no_refusal_of_the_create(capsys) -> None:
    """A create whose answer was lost is looked up by name; a 403 on that GET says nothing of
    what the create made: never "no pod was made", never a second create."""
    from podcycle.runpod.errors import error_for

    lookup = error_for(403, "GET", "/v2/pods", "denied", "http://x")
    client = CandidateClient([lookup])
    with pytest.raises(PodCycleError):
        provision_with(client, capsys, cloud="all")
    assert len(client.created) == 1


def test_a_pod_made_for_proxy_ssh_is_ready_when_running(capsys) -> None:
    """pod.provision --allow-proxy-ssh --wait waited for a direct SSH endpoint the template
    never offers, for the whole RUNPOD_READY_TIMEOUT while the pod billed, then blamed it."""
    from podcycle.provision import ReadinessTimeout, wait_for_ssh
    from podcycle.runpod.models import Pod

    class Running:
        def get_pod(self, pod_id: str) -> Pod:
            return Pod.from_api({"id": pod_id, "status": "RUNNING",
                                 "ssh": {"proxy": {"host": "ssh.runpod.io", "port": 22,
                                                   "username": f"{pod_id}-64410f5e"}}})

    said: list[str] = []
    pod = wait_for_ssh(Running(), "p1", timeout=5, progress=said.append, proxy_ok=True)
    assert pod.id == "p1" and "through RunPod's SSH proxy (inv pod.ssh p1)" in said[-1]
    with pytest.raises(ReadinessTimeout):
        wait_for_ssh(Running(), "p1", timeout=0, progress=said.append, poll=0.01)

    class NoProxy:  # the local RunPod: no proxy at all, so "reach it through" was a dead end
        def get_pod(self, pod_id: str) -> Pod:
            return Pod.from_api({"id": pod_id, "status": "RUNNING", "ssh": {}})

    wait_for_ssh(NoProxy(), "p1", timeout=5, progress=said.append, proxy_ok=True)
    assert "RUNNING without any SSH: no 22/tcp, and no SSH proxy for it" in said[-1]
    assert "inv pod.stop p1" in said[-1] and "reach it through" not in said[-1]


def test_a_running_pod_without_an_ssh_address_is_said_to_wait_for_one(monkeypatch) -> None:
    """A pod RUNNING whose SSH address RunPod has not published: the wait said "still
    RUNNING after 15s" every 15 s, never what it waited for. The heartbeat says it (the
    clock stands in for 40 s of waiting)."""
    from podcycle import provision
    from podcycle.provision import ReadinessTimeout, wait_for_ssh
    from podcycle.runpod.models import Pod

    class NoAddress:
        def get_pod(self, pod_id: str) -> Pod:
            return Pod.from_api({"id": pod_id, "status": "RUNNING", "ssh": {"direct": None}})

    clock = iter(range(0, 1000, 5))
    monkeypatch.setattr(provision.time, "monotonic", lambda: float(next(clock)))
    monkeypatch.setattr(provision.time, "sleep", lambda _: None)
    said: list[str] = []
    with pytest.raises(ReadinessTimeout):
        wait_for_ssh(NoAddress(), "p1", timeout=40, progress=said.append)
    beats = [line for line in said if "still RUNNING" in line]
    assert beats and all("no SSH address published yet" in line for line in beats), said


def test_refusals_name_what_to_change() -> None:
    from podcycle.runpod.errors import error_for

    keys = error_for(422, "PUT", "/v2/account/ssh-keys", "keys[0]: pattern", "http://x")
    assert "GPU" not in keys.remedy
    create = error_for(400, "POST", "/v2/pods", "no capacity", "http://x")
    assert "another GPU type" in create.remedy
    # The spec's table for a create: 404 is the template, 403 the pool (not the key's scope).
    template = error_for(404, "POST", "/v2/pods", "template tpl-x not found", "http://x")
    assert "inv template.list" in template.remedy and "BASE_URL" not in template.remedy
    pool = error_for(403, "POST", "/v2/pods", "pool", "http://x")
    assert "may not use that GPU pool, or this key may not create pods" in pool.message
    # The 400s the spec names for a registry still in use and a volume made smaller.
    in_use = error_for(400, "DELETE", "/v2/registries/r1", "in use by a pod", "http://x")
    assert "terminate it first" in in_use.remedy
    shrink = error_for(400, "PATCH", "/v2/network-volumes/v1", "size decrease", "http://x")
    assert "only grows" in shrink.remedy


@pytest.mark.slow
def test_doctor_on_an_unreachable_api_blames_the_network(tmp_path) -> None:
    result = run_inv("api.doctor", env={"RUNPOD_BACKEND": "runpod",
                                        "RUNPOD_API_KEY": "rpa_UNREACHABLE_TEST_KEY_123",
                                        "RUNPOD_API_BASE_URL": "http://127.0.0.1:9",
                                        "RUNPOD_SSH_KEY": str(tmp_path / "none")})
    assert result.returncode == 1
    assert "unreachable (a network problem, not the key)" in result.stdout
    assert "check it is current" not in result.stdout
    assert result.stdout.count("skipped") == 6  # every probe after the first: templates is tried
    assert "rpa_UNREACHABLE_TEST_KEY_123" not in result.stdout + result.stderr


@pytest.mark.slow
def test_doctor_with_a_rejected_key_does_not_call_it_a_scope_problem(runpod, tmp_path) -> None:
    result = run_inv("api.doctor", env={"RUNPOD_BACKEND": "runpod",
                                        "RUNPOD_API_KEY": "rpa_REJECTED_TEST_KEY_1234",
                                        "RUNPOD_API_BASE_URL": runpod.url,
                                        "RUNPOD_SSH_KEY": os.devnull})
    assert result.returncode == 1
    assert "rejects this key (401 on every call)" in result.stdout
    assert "scope" not in result.stdout.split("SSH key:")[1]


# -- flags and help --------------------------------------------------------------------------
@functools.cache
def test_short_flags_mean_the_same_in_every_task() -> None:
    from podcycle.cli import SHORT_FLAGS

    meaning: dict[str, set[str]] = {}
    for arguments in task_arguments().values():
        for argument in arguments:
            long_name, *shorts = argument.names
            for short in shorts:
                meaning.setdefault(short, set()).add(argument.attr_name or long_name)
    assert meaning, "no short flags at all"
    for short, names in meaning.items():
        assert len(names) == 1, f"-{short} means {sorted(names)}"
        assert SHORT_FLAGS[next(iter(names))] == short


def test_every_task_help_renders_and_matches_its_flags() -> None:
    """Invoke's own help output for every task, rendered in this process (one `inv` process
    per task cost 10 s; test_step_help_says_the_run_id_is_required runs the real one)."""
    import contextlib
    import copy
    import io

    from invoke import Program

    import tasks

    for name, arguments in task_arguments().items():
        shown = io.StringIO()
        # A copy: invoke consumes a task's help dict while it builds the arguments.
        namespace = copy.deepcopy(tasks.ns)
        with contextlib.redirect_stdout(shown):
            Program(namespace=namespace, version="test").run(["inv", "--help", name],
                                                             exit=False)
        help_text = shown.getvalue()
        assert help_text.startswith("Usage: inv"), name
        for argument in arguments:
            flag = "--" + argument.names[0]
            negatable = f"--[no-]{argument.names[0]}"  # a flag that defaults to on
            assert flag in help_text or negatable in help_text, (name, flag)
            assert argument.help and "default" in argument.help or argument.positional or \
                argument.kind is bool, (name, flag, argument.help)


@pytest.mark.slow
def test_step_help_says_the_run_id_is_required(tmp_path) -> None:
    help_text = run_inv("--help", "cycle.train").stdout
    assert "required" in help_text and "generated" not in help_text
    refused = run_inv("cycle.train", env={"POD_CYCLE_ARTIFACTS_DIR": str(tmp_path)})
    assert refused.returncode != 0 and "no run id" in refused.stderr


def test_config_error_for_a_bad_setting_names_its_origin() -> None:
    from podcycle.config import resolve

    with pytest.raises(ConfigError, match="--epochs must be an integer"):
        resolve({"train_epochs": "x"}, {}, environ={}, use_keyring=False)
    with pytest.raises(ConfigError, match="TRAIN_EPOCHS"):
        resolve({}, {}, environ={"TRAIN_EPOCHS": "x"}, use_keyring=False)


# -- a path the system refuses: one line naming it, never a traceback ------------------------
@pytest.mark.parametrize("make, call, shown, remedy", [
    (lambda d: (d / "data" / "train.jsonl").mkdir(parents=True),
     lambda d: (d / "data" / "train.jsonl").read_text(), "Is a directory", "a folder where"),
    (lambda d: (d / "file").write_text("x"),
     lambda d: (d / "file" / "sub").mkdir(), "Not a directory", "is a file, not a folder"),
    (lambda d: (d / "file").write_text("x"),
     lambda d: (d / "file").mkdir(), "File exists", "a file is in the way"),
])
def test_a_refused_path_is_one_line_naming_it(tmp_path, make, call, shown, remedy) -> None:
    from invoke.exceptions import Exit

    from podcycle.cli import guarded

    make(tmp_path)
    with pytest.raises(Exit) as caught:
        guarded(lambda: call(tmp_path))()
    message = str(caught.value.message)
    assert message.startswith(f"error: {shown}: {tmp_path}") and remedy in message
    assert caught.value.code == 1


def test_a_full_disk_is_one_line_naming_the_file_being_written(tmp_path, monkeypatch) -> None:
    """A write or flush on a full disk raises an OSError that names no file: it went up as
    eight chained tracebacks from the run's state save. The state's path is named now."""
    import errno

    from invoke.exceptions import Exit

    from podcycle import runs
    from podcycle.cli import guarded

    def full(fd: int) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(runs.os, "fsync", full)
    target = tmp_path / "run" / "state.json"
    with pytest.raises(Exit) as caught:
        guarded(lambda: runs.atomic_write(target, "{}"))()
    message = str(caught.value.message)
    assert message.startswith(f"error: No space left on device: {target}")
    assert "the disk is full" in message and caught.value.code == 1
    assert list(target.parent.iterdir()) == []  # no half-written temporary file is left
    with pytest.raises(Exit) as nameless:  # any other write on a full disk: one line too
        guarded(lambda: full(0))()
    assert str(nameless.value.message).splitlines() == [
        "error: No space left on device",
        "  → the disk is full: free space, or give a path on another disk"]


@pytest.mark.parametrize("flags", [{"name": ""}, {"out": "  "}, {"env": ["A=1", ""]}])
def test_an_empty_flag_of_any_task_is_refused_before_it_runs(flags: dict) -> None:
    """`sweep.run -n ""` ran a whole sweep (four pods) under a generated name; `data.import-pgn
    --out ""` wrote a dataset into the repository. Only the settings refused an empty flag.
    An optional positional argument that is absent arrives as "": it is not a flag."""
    from podcycle.cli import ABSENT, empty_flag

    flag = "--" + next(iter(flags))
    assert empty_flag({**flags, "json": False, "other": None}, ()).splitlines() == [
        f"error: {flag} is empty", f"  → give {flag} a value, or leave it out for its default"]
    assert empty_flag({"pod_id": ABSENT, "since": "1h"}, ("pod_id",)) is None
    # Given empty, it is refused as a flag is: `inv pod.cost ""` listed every pod's bill.
    assert empty_flag({"pod_id": "", "since": "1h"}, ("pod_id",), ("pod_id",)).splitlines() \
        == ["error: POD_ID (or --pod-id) is empty",
            "  → give it a value, or leave it out for its default"]
    # A required one is the task's to name (`the volume name '' ...`).
    assert empty_flag({"name": ""}, ("name",)) is None


@pytest.mark.slow
def test_an_empty_flag_is_refused_by_inv_before_anything_runs(tmp_path) -> None:
    made = tmp_path / "sweeps"
    refused = run_inv("sweep.run", "--config", "config/sweep.toml", "-n", "",
                      env={"POD_CYCLE_SWEEPS_DIR": str(made), "RUNPOD_BACKEND": "local",
                           "POD_CYCLE_LOCAL_DIR": str(tmp_path / "local")})
    assert refused.returncode == 2 and "error: --name is empty" in refused.stderr
    assert "Traceback" not in refused.stderr
    assert not made.exists() and not (tmp_path / "local").exists()
    # An optional positional argument, given empty by its flag or as the argument: the
    # parser must keep "left out" apart from "given empty".
    for args in (["pod.cost", ""], ["pod.cost", "--pod-id", ""]):
        refused = run_inv(*args, env={"RUNPOD_BACKEND": "local",
                                      "POD_CYCLE_LOCAL_DIR": str(tmp_path / "local")})
        assert refused.returncode == 2, refused.stderr
        assert refused.stderr.startswith("error: POD_ID (or --pod-id) is empty"), args
        assert not (tmp_path / "local").exists()  # no local RunPod was started for it


def test_what_a_terminal_is_shown_from_elsewhere_cannot_drive_it(capsys) -> None:
    """A name on the account (a pod a teammate named, a volume, a GPU type) fills a table
    cell, and an error may quote it: control characters are written as visible escapes,
    while the error's own two lines stay two lines."""
    from invoke.exceptions import Exit

    from podcycle.cli import guarded, table
    from podcycle.errors import PodCycleError

    table([["p1", "x\x1b[2Jy\nforged-row  RUNNING", None],
           ["p2", "a\u202egnp.exe", "café 训练"], ["p3", "a\u200bb", "-"]],
          ["ID", "NAME", "GPU"])
    printed = capsys.readouterr().out
    assert printed.splitlines()[2].split() == ["p1", "x\\x1b[2Jy\\x0aforged-row", "RUNNING"]
    # A right-to-left override shown, never obeyed; letters of any script left as they are.
    assert printed.splitlines()[3].split() == ["p2", "a\\u202egnp.exe", "café", "训练"]
    # A zero-width space shown: the name is not the `ab` it looked like.
    assert printed.splitlines()[4].split() == ["p3", "a\\u200bb", "-"]
    assert len(printed.splitlines()) == 5 and "\x1b" not in printed

    def refused() -> None:
        raise PodCycleError("no pod named 'a\x1b]0;t\x07'", "pick one from inv pod.list")

    with pytest.raises(Exit) as caught:
        guarded(refused)()
    assert str(caught.value.message).splitlines() == [
        "error: no pod named 'a\\x1b]0;t\\x07'", "  → pick one from inv pod.list"]


def test_a_ctrl_c_a_task_has_no_words_for_is_exit_130_saying_so() -> None:
    """Ctrl-C in a task that does not take it itself (`runs.compare` while it imports, a
    listing): Invoke exited 1 in silence, as for a failure. The shell's 130, and a line."""
    from invoke.exceptions import Exit

    from podcycle.cli import guarded

    def interrupted() -> None:
        raise KeyboardInterrupt

    with pytest.raises(Exit) as caught:
        guarded(interrupted)()
    assert caught.value.code == 130
    assert caught.value.message == "interrupted: the command stopped before it finished"


def test_a_huge_cell_is_cut_saying_so(capsys) -> None:
    """An API's 2 MB pod name was printed whole, padding every row to 2 MB (18 MB of
    output). A cell is cut at CELL_MAX characters, saying how long it was."""
    from podcycle.cli import CELL_MAX, table

    table([["p1", "n" * 2_000_000], ["p2", "short"]], ["ID", "NAME"])
    lines = capsys.readouterr().out.splitlines()
    assert lines[2].endswith("… (2,000,000 chars)") and len(lines[2]) < CELL_MAX + 10
    assert lines[3].split() == ["p2", "short"]


def test_a_progress_line_quoting_a_pod_is_shown_escaped(capsys) -> None:
    """say() carries the pod's own words at times (its spend guard's log line): an OSC 52
    and a carriage return in them would write the clipboard and forge the line."""
    from podcycle.config import say

    say("the spend guard stopped the pod: fired \x1b]52;c;ZWNobw==\x07\x1b[2K\rall good\n  → x")
    assert capsys.readouterr().err == ("the spend guard stopped the pod: fired "
                                       "\\x1b]52;c;ZWNobw==\\x07\\x1b[2K\\x0dall good\n  → x\n")


def test_an_os_error_without_a_path_is_not_blamed_on_one() -> None:
    from podcycle.cli import guarded

    def refused() -> None:
        raise ConnectionRefusedError(111, "Connection refused")

    with pytest.raises(ConnectionRefusedError):
        guarded(refused)()


@pytest.mark.slow
def test_a_dataset_whose_train_file_is_a_folder_is_refused_in_one_line(tmp_path) -> None:
    (tmp_path / "ds" / "train.jsonl").mkdir(parents=True)
    (tmp_path / "ds" / "val.jsonl").write_text("")
    result = run_inv("data.stats", str(tmp_path / "ds"))
    assert result.returncode == 3, result.stderr  # a dataset rejected, as any other
    assert "Traceback" not in result.stderr
    assert result.stderr.splitlines() == [
        f"error: dataset rejected: {tmp_path / 'ds' / 'train.jsonl'} is not a regular file "
        "(a folder, a FIFO or a device)", "  → put the train.jsonl file there"]


@pytest.mark.parametrize("name", ["a\nb", "tab\there", "esc\x1b[2J"])
def test_a_dataset_folder_whose_name_holds_a_control_character_is_refused(
        tmp_path, tiny_dataset, name) -> None:
    """A folder named `a<newline>b` was validated, the pod made, and its copy reached the pod
    as `ab`: the training failed there (train.jsonl missing), and so did every --resume."""
    from podcycle.dataset import validate
    from podcycle.errors import DatasetError

    folder = tmp_path / name
    folder.mkdir()
    for part in ("train.jsonl", "val.jsonl"):
        (folder / part).write_bytes((tiny_dataset / part).read_bytes())
    with pytest.raises(DatasetError) as refused:
        validate(folder)
    text = refused.value.render()
    assert "holds a control character" in text and "rename the folder" in text
    assert len(text.splitlines()) == 2 and "\\x" in text.splitlines()[0]  # shown, escaped
    assert "\\\\x" not in text  # once: repr() of the escaped name doubled its backslash


@pytest.mark.parametrize("key", ["rpa_KEYMARKER_77\u2713", "rpa_KEY\nMARKER_77",
                                 "rpa_KEY MARKER_77"])
def test_an_api_key_no_header_can_carry_is_refused_without_showing_it(key) -> None:
    from podcycle.config import resolve

    with pytest.raises(ConfigError) as caught:
        resolve({}, {}, environ={"RUNPOD_API_KEY": key}, use_keyring=False)
    text = caught.value.render()
    assert "RUNPOD_API_KEY" in text and "HTTP header" in text
    assert "KEYMARKER" not in text and "MARKER_77" not in text


# -- SSH: the key and the host, said for what they are --------------------------------------
def test_the_public_half_is_checked_against_the_private_key(tmp_path: Path) -> None:
    """api.doctor --register-ssh-key trusted <key>.pub as it was: another key's .pub was
    registered ("SSH key: ok"), and every pod then refused the real key; a .pub that is not
    UTF-8 ended in a UnicodeDecodeError traceback; a 32 MB file given as the key kept
    ssh-keygen -y busy for minutes."""
    import subprocess

    from podcycle.sshkeys import MAX_KEY_BYTES, blob, public_line

    mine, other = tmp_path / "mine", tmp_path / "other"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(mine)], check=True)
    # A passphrase: the public half is read all the same (it is in the clear in the file).
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "pass phrase", "-f", str(other)],
                   check=True)
    pub = Path(f"{mine}.pub")
    assert public_line(mine) == pub.read_text().strip()
    assert blob(public_line(other)) == blob(Path(f"{other}.pub").read_text())
    again = f"write it again with: ssh-keygen -y -f {mine} > {pub}"
    pub.write_bytes(Path(f"{other}.pub").read_bytes())
    with pytest.raises(PodCycleError) as swapped:
        public_line(mine)
    assert swapped.value.message == f"{pub} is not the public half of {mine}: it holds another key"
    assert swapped.value.remedy == again
    pub.write_bytes(b"ssh-ed25519 \xff\n")
    with pytest.raises(PodCycleError) as garbled:
        public_line(mine)
    assert garbled.value.message == f"{pub} is not an OpenSSH public key (not UTF-8 text)"
    pub.unlink()
    assert blob(public_line(mine)) == blob(subprocess.run(
        ["ssh-keygen", "-y", "-f", str(mine)], capture_output=True, text=True).stdout)
    huge = tmp_path / "huge"
    huge.write_bytes(b"x" * (MAX_KEY_BYTES + 1))
    with pytest.raises(PodCycleError, match="bytes: not an SSH private key"):
        public_line(huge)
    # A file that is no key at all: "passphrase?" and a remedy that left an empty .pub, which
    # api.doctor then read as an IndexError traceback.
    garbage = tmp_path / "garbage"
    garbage.write_text("not a key\n")
    with pytest.raises(PodCycleError) as not_a_key:
        public_line(garbage)
    assert not_a_key.value.message == f"{garbage} is not an SSH private key"
    Path(f"{garbage}.pub").write_text("")
    with pytest.raises(PodCycleError) as empty:
        public_line(garbage)
    assert empty.value.message == f"{garbage}.pub is not an OpenSSH public key line (it is empty)"


def test_the_ssh_key_setting_is_diagnosed_by_what_it_names(tmp_path: Path) -> None:
    import subprocess

    from podcycle.config import resolve
    from podcycle.sshkeys import private_key

    key = tmp_path / "id_ed25519"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)

    def refused(path: Path) -> str:
        settings = resolve({}, {}, environ={"RUNPOD_SSH_KEY": str(path)},
                           dotenv_path=tmp_path / "none", use_keyring=False)
        with pytest.raises(PodCycleError) as info:
            private_key(settings)
        return info.value.render()

    assert private_key(resolve({}, {}, environ={"RUNPOD_SSH_KEY": str(key)},
                               dotenv_path=tmp_path / "none", use_keyring=False)) == key
    assert refused(Path(f"{key}.pub")) == (
        f"{key}.pub (from RUNPOD_SSH_KEY) is a public key; SSH needs the private half\n"
        f"  → point RUNPOD_SSH_KEY at {key}")
    renamed = tmp_path / "mykey"
    renamed.write_bytes(Path(f"{key}.pub").read_bytes())
    assert refused(renamed).endswith("(the file without .pub)")
    assert refused(tmp_path) == (
        f"the SSH private key {tmp_path} (from RUNPOD_SSH_KEY) is a folder\n"
        f"  → point RUNPOD_SSH_KEY at the key file in it, e.g. {tmp_path / 'id_ed25519'}")
    assert refused(tmp_path / "absent").startswith(
        f"SSH private key not found: {tmp_path / 'absent'} (from RUNPOD_SSH_KEY)")
    # A key others may read: ssh itself refuses it (UNPROTECTED PRIVATE KEY FILE), so the pod
    # was made and every step after it failed with "Permission denied (publickey)".
    for mode in (0o644, 0o640, 0o604):
        key.chmod(mode)
        assert subprocess.run(["ssh-keygen", "-y", "-f", str(key)], capture_output=True,
                              stdin=subprocess.DEVNULL).returncode != 0  # OpenSSH's own rule
        assert refused(key) == (
            f"the SSH private key {key} (from RUNPOD_SSH_KEY) may be read by others (mode "
            f"{mode:04o}), and ssh refuses such a key\n  → chmod 600 {key}")
    from types import SimpleNamespace

    from podcycle.doctor import _ssh_key_check

    def doctor_says(path: Path) -> str:  # api.doctor's SSH key line
        settings = resolve({}, {}, environ={"RUNPOD_SSH_KEY": str(path)},
                           dotenv_path=tmp_path / "none", use_keyring=False)
        return _ssh_key_check(settings, SimpleNamespace(own_ssh_key=None), None, "ok",
                              False)["status"]

    assert doctor_says(key) == "unusable" and doctor_says(tmp_path / "absent") == "missing"
    key.chmod(0o400)
    assert private_key(resolve({}, {}, environ={"RUNPOD_SSH_KEY": str(key)},
                               dotenv_path=tmp_path / "none", use_keyring=False)) == key


def test_a_key_ssh_cannot_load_or_with_another_keys_pub_is_refused_before_a_pod(
        tmp_path: Path) -> None:
    """Three keys that passed every check, api.doctor's "all checks passed" too, and failed
    only once the pod was made: one saved with Windows line endings (paramiko reads it, ssh
    does not: each rsync "Permission denied (publickey)"), a file that is no key beside a
    good .pub, and a PEM key beside another key's .pub (only an OpenSSH-format key's .pub
    was checked)."""
    import subprocess
    from types import SimpleNamespace

    from podcycle.config import resolve
    from podcycle.doctor import _ssh_key_check
    from podcycle.sshkeys import private_key

    good = tmp_path / "good"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(good)], check=True)
    pem = tmp_path / "pem"
    subprocess.run(["ssh-keygen", "-q", "-t", "rsa", "-b", "2048", "-m", "PEM", "-N", "",
                    "-f", str(pem)], check=True)
    crlf, junk = tmp_path / "crlf", tmp_path / "junk"
    crlf.write_bytes(good.read_bytes().replace(b"\n", b"\r\n"))
    junk.write_text("this is not a key\n")
    for key in (crlf, junk):
        key.chmod(0o600)
        Path(f"{key}.pub").write_bytes(Path(f"{good}.pub").read_bytes())

    def settings(path: Path):
        return resolve({}, {}, environ={"RUNPOD_SSH_KEY": str(path)},
                       dotenv_path=tmp_path / "none", use_keyring=False)

    def refused(path: Path) -> PodCycleError:
        with pytest.raises(PodCycleError) as info:
            private_key(settings(path))
        assert _ssh_key_check(settings(path), SimpleNamespace(own_ssh_key=None), None, "ok",
                              False)["status"] == "unusable"  # api.doctor says so too
        return info.value

    assert private_key(settings(good)) == good and private_key(settings(pem)) == pem
    windows = refused(crlf)
    assert windows.message.startswith(f"ssh cannot load the SSH private key {crlf} (from "
                                      f"RUNPOD_SSH_KEY): Load key")
    assert windows.message.endswith("(it has Windows line endings)")
    assert windows.remedy == f"remove them (perl -pi -e 's/\\r$//' {crlf}) and run the " \
                             "command again"
    subprocess.run(["perl", "-pi", "-e", r"s/\r$//", str(crlf)], check=True)
    assert private_key(settings(crlf)) == crlf  # the remedy mends it
    not_a_key = refused(junk)
    assert not_a_key.message.startswith(f"ssh cannot load the SSH private key {junk}")
    assert "ssh-keygen -t ed25519" in not_a_key.remedy
    Path(f"{pem}.pub").write_bytes(Path(f"{good}.pub").read_bytes())
    swapped = refused(pem)
    assert swapped.message == f"{pem}.pub is not the public half of {pem}: it holds another key"
    assert swapped.remedy == f"write it again with: ssh-keygen -y -f {pem} > {pem}.pub"


# A security key's private file (sk-ssh-ed25519, no passphrase): its secret is a handle for
# a hardware token that does not exist, so it can be in a test.
SK_KEY = """-----BEGIN OPENSSH PRIVATE KEY-----
b3BlbnNzaC1rZXktdjEAAAAABG5vbmUAAAAEbm9uZQAAAAAAAAABAAAASgAAABpzay1zc2
gtZWQyNTUxOUBvcGVuc3NoLmNvbQAAACBoq2LEvtPwWmAoozv8YLAE0+b9h7zT7DwvdJOs
2Ru9ywAAAARzc2g6AAAAqPjOvqj4zr6oAAAAGnNrLXNzaC1lZDI1NTE5QG9wZW5zc2guY2
9tAAAAIGirYsS+0/BaYCijO/xgsATT5v2HvNPsPC90k6zZG73LAAAABHNzaDoBAAAAQEIx
D2xH9HnCdu7NuCO5VSld41ghu4R+/qkyu0WrHHSrwBb/+1sk7lEab4LXIJo3xrsbwek0jE
ZfVfitMEQKW9wAAAAAAAAAB3NrLXRlc3QBAg==
-----END OPENSSH PRIVATE KEY-----
"""


def test_a_security_key_is_refused_for_the_cycle_in_words_not_a_traceback(
        tmp_path: Path) -> None:
    """paramiko cannot load a security key (sk-ssh-ed25519): cryptography's
    UnsupportedAlgorithm went past every handler, a traceback from api.doctor, pod.provision
    and every step. ssh itself (pod.ssh) uses such a key: the refusal carries its path."""
    from types import SimpleNamespace

    from podcycle import remote
    from podcycle.config import resolve
    from podcycle.doctor import _ssh_key_check
    from podcycle.sshkeys import KeyNotForCycle, private_key

    key = tmp_path / "sk"
    key.write_text(SK_KEY)
    key.chmod(0o600)
    settings = resolve({}, {}, environ={"RUNPOD_SSH_KEY": str(key)},
                       dotenv_path=tmp_path / "none", use_keyring=False)
    with pytest.raises(KeyNotForCycle) as refused:
        private_key(settings)
    assert refused.value.message.startswith(
        f"the SSH private key {key} (from RUNPOD_SSH_KEY) cannot be loaded by paramiko, which "
        "runs the cycle's commands: ")
    assert refused.value.path == key and "ssh-keygen -t ed25519" in refused.value.remedy
    assert _ssh_key_check(settings, SimpleNamespace(own_ssh_key=None), None, "ok",
                          False)["status"] == "unusable"
    with pytest.raises(remote.KeyUnreadable, match="cannot be loaded"):
        remote.load_key(key)


def test_a_locked_pem_key_without_its_pub_asks_for_the_pub_not_the_agent(
        tmp_path: Path, monkeypatch) -> None:
    """A PEM key with a passphrase keeps its public half encrypted: without a .pub beside it,
    the agent's copy cannot be told apart, and "load it into your agent (ssh-add)" was said
    to one who had."""
    import subprocess

    from podcycle.config import resolve
    from podcycle.sshkeys import KeyLocked, private_key

    key = tmp_path / "pem"
    subprocess.run(["ssh-keygen", "-q", "-t", "rsa", "-b", "2048", "-m", "PEM", "-N",
                    "pass phrase", "-f", str(key)], check=True)
    Path(f"{key}.pub").unlink()
    monkeypatch.delenv("SSH_AUTH_SOCK", raising=False)
    settings = resolve({}, {}, environ={"RUNPOD_SSH_KEY": str(key)},
                       dotenv_path=tmp_path / "none", use_keyring=False)
    with pytest.raises(KeyLocked) as locked:
        private_key(settings)
    assert locked.value.message == (
        f"the SSH private key {key} (from RUNPOD_SSH_KEY) is protected by a passphrase, and "
        "its public half is not known (no pem.pub beside it), so its copy in an ssh-agent "
        "cannot be found")
    assert locked.value.remedy == (f"write it (ssh-keygen -y -f {key} > {key}.pub, which asks "
                                   "for the passphrase once) and run the command again")


def test_an_ssh_host_that_does_not_resolve_fails_at_once(tmp_path: Path, monkeypatch) -> None:
    """RUNPOD_SSH_HOST=typo: one error naming the name, not retries until the ready timeout.
    The resolver's answers are stood in for (what a name server says cannot be arranged
    here): "no such name" fails at once, "the name server did not answer" is retried."""
    import socket

    from podcycle.remote import Endpoint, UnknownHost, connect_when_ready

    answers: list[int] = []

    def resolver(answer: int):
        def getaddrinfo(host, *args, **kwargs):
            answers.append(answer)
            raise socket.gaierror(answer, "Name or service not known"
                                  if answer == socket.EAI_NONAME else "Temporary failure")
        return getaddrinfo

    said: list[str] = []
    endpoint = Endpoint("pod-host.invalid", 22, "root", tmp_path / "key")
    monkeypatch.setattr(socket, "getaddrinfo", resolver(socket.EAI_NONAME))
    with pytest.raises(UnknownHost) as info:
        connect_when_ready(endpoint, tmp_path / "known_hosts", timeout=30, progress=said.append)
    assert info.value.message.startswith(
        "cannot open SSH to root@pod-host.invalid:22: the host name 'pod-host.invalid' does "
        "not resolve")
    assert "RUNPOD_SSH_HOST" in info.value.remedy
    assert said == [] and len(answers) == 1  # asked once, no "waiting for SSH" retries

    answers.clear()
    monkeypatch.setattr(socket, "getaddrinfo", resolver(socket.EAI_AGAIN))
    from podcycle.remote import RemoteError

    with pytest.raises(RemoteError) as info:
        connect_when_ready(endpoint, tmp_path / "known_hosts", timeout=2.5,
                           progress=said.append)
    assert not isinstance(info.value, UnknownHost) and len(answers) >= 2  # retried
    assert said == ["waiting for SSH on root@pod-host.invalid:22: cannot open SSH to "
                    "root@pod-host.invalid:22: the name server did not answer for "
                    "pod-host.invalid"]


def test_a_wait_for_ssh_on_a_closed_port_ends_once_the_pod_is_said_stopped(
        tmp_path: Path, monkeypatch) -> None:
    """Hunt: `inv pod.stop` of a training pod while the API still said RUNNING: the train's
    reconnect waited its whole half minute on "connection refused" before the stop was
    named. A wait told how to ask (`abandon`: the cycle asks the API) ends at the first
    answer that the pod no longer runs, with the refusal."""
    import subprocess

    from podcycle import remote
    from podcycle.local.pods import free_port
    from podcycle.remote import Endpoint, RemoteError, connect_when_ready

    monkeypatch.setattr(remote, "ABANDON_EVERY", 0.0)  # asked at each refusal here

    key = tmp_path / "key"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
    endpoint = Endpoint("127.0.0.1", free_port(), "root", key)  # nothing listens there
    asked: list[bool] = []

    def stopped_by_now() -> bool:
        asked.append(True)
        return len(asked) >= 2  # RUNNING at first, then stopped

    with pytest.raises(RemoteError) as refused:
        connect_when_ready(endpoint, tmp_path / "known_hosts", timeout=600,
                           progress=lambda _: None, abandon=stopped_by_now)
    assert refused.value.refused and "connection refused" in refused.value.message
    assert len(asked) == 2


def test_a_bad_image_repository_names_where_it_came_from() -> None:
    from podcycle.config import resolve
    from podcycle.image import normalise_repo

    for flags, environ, origin in (({"image_repo": "Bad Repo"}, {}, "--repo"),
                                   ({}, {"IMAGE_REPO": "Bad Repo"}, "IMAGE_REPO")):
        settings = resolve(flags, {}, environ=environ, use_keyring=False)
        with pytest.raises(ConfigError) as info:
            normalise_repo(settings.image_repo, settings.source("image_repo"))
        assert info.value.message == (f"{origin} 'bad repo' is not a valid image repository "
                                      "name")


@pytest.mark.slow
def test_volume_names_are_checked_and_never_doubled(inv, runpod) -> None:
    before = len(runpod.requests())
    for bad in ("", "two\nlines", " padded"):
        refused = inv("volume.create", bad, "--data-center", "LOCAL-1")
        assert refused.returncode == 2 and "the volume name" in refused.stderr, refused.stderr
    assert requests_since(runpod, before) == []  # refused before any request
    nowhere = inv("volume.create", "placed", "--data-center", "LOCAL-9")
    assert nowhere.returncode == 2
    assert "--data-center 'LOCAL-9' is not a RunPod data centre" in nowhere.stderr
    assert [r for r in requests_since(runpod, before) if r["method"] == "POST"] == []
    made = inv("volume.create", "twice", "--data-center", "LOCAL-1", "--json")
    assert made.returncode == 0, made.stderr
    again = inv("volume.create", "twice", "--data-center", "LOCAL-1")
    assert again.returncode == 2
    assert "error: a network volume named 'twice' exists already" in again.stderr
    assert [v["name"] for v in runpod.client().list_volumes()].count("twice") == 1
    # A name that is another volume's id: --network-volume and volume.delete take the id
    # first, and `volume.delete ID --yes` meant for the new one deleted the other.
    made_id = json.loads(made.stdout)["id"]
    shadow = inv("volume.create", made_id, "--data-center", "LOCAL-1")
    assert shadow.returncode == 2, shadow.stderr
    assert f"error: '{made_id}' is the id of network volume 'twice'" in shadow.stderr
    assert made_id not in [v["name"] for v in runpod.client().list_volumes()]
    spaced = inv("volume.create", "a b", "--data-center", "LOCAL-1")
    assert spaced.returncode == 0 and "use it with --network-volume 'a b'" in spaced.stdout, \
        spaced.stdout + spaced.stderr
    for volume in runpod.client().list_volumes():
        if volume["name"] in ("twice", "a b"):
            inv("volume.delete", volume["id"], "--yes")


@pytest.mark.slow
def test_volume_creates_of_one_name_at_once_leave_one_volume(inv, runpod) -> None:
    """Three `inv volume.create vrace` at once each saw no volume of the name, and each made
    one: three billed volumes, and --network-volume vrace then refused as ambiguous."""
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(3) as pool:
        results = list(pool.map(lambda _: inv("volume.create", "vrace", "--data-center",
                                              "LOCAL-1"), range(3)))
    named = [v for v in runpod.client().list_volumes() if v.get("name") == "vrace"]
    assert len(named) == 1, named
    won = [r for r in results if r.returncode == 0]
    assert len(won) == 1 and named[0]["id"] in won[0].stdout, [r.stderr for r in results]
    for lost in (r for r in results if r.returncode != 0):
        assert lost.returncode == 2 and "Traceback" not in lost.stderr
        assert ("exists already" in lost.stderr
                or "at the same time" in lost.stderr), lost.stderr


@pytest.mark.slow
def test_a_sweep_files_unknown_gpu_is_refused_naming_the_file(inv, runpod,
                                                                tmp_path: Path) -> None:
    """A sweep file's gpu_type_id the catalog lacks said only `unknown GPU type '...'`:
    not which file or key it came from (a flag and the settings can name a GPU too)."""
    config = tmp_path / "sweep.toml"
    config.write_text('[sweep]\nname = "gpu-typo"\nobjective = "val_loss"\n'
                      'gpu_type_id = "NVIDIA H1OO"\n[params.lr]\ngrid = [0.001, 0.01]\n')
    refused = inv("sweep.run", "--config", str(config),
                  env={"POD_CYCLE_ARTIFACTS_DIR": str(tmp_path / "art"),
                       "POD_CYCLE_SWEEPS_DIR": str(tmp_path / "sweeps")})
    assert refused.returncode != 0 and "Traceback" not in refused.stderr, refused.stderr
    assert (f"error: {config}: [sweep] gpu_type_id: unknown GPU type 'NVIDIA H1OO'"
            in refused.stderr), refused.stderr
    assert not (tmp_path / "sweeps" / "gpu-typo").exists()


def test_a_volume_create_waits_for_another_of_its_name_on_this_machine(tmp_path: Path,
                                                                      monkeypatch) -> None:
    """Creates of one name that each looked before the other's volume was listed each kept
    their own (the later look after the create cannot see a create that comes after it):
    two billed volumes of one name. A create now holds a lock of the name on this machine
    from its first look to its last; one that cannot get it in time touches nothing."""
    from podcycle import volumes
    from podcycle.errors import PodCycleError

    monkeypatch.setenv("POD_CYCLE_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(volumes, "CREATE_LOCK_WAIT", 0.3)

    class Account:  # the RunPod API's volumes (a stand-in: the cloud cannot exist here)
        def __init__(self) -> None:
            self.calls: list[str] = []

        def list_volumes(self) -> list[dict]:
            self.calls.append("list")
            return []

        def create_volume(self, body: dict) -> dict:
            self.calls.append("create")
            return {"id": "vol1", **body}

    account = Account()
    with volumes.one_create_of("shared"):  # another create of the name, under way
        with pytest.raises(PodCycleError) as busy:
            volumes.create(account, {"name": "shared", "size": 10, "dataCenter": "X"})
    assert busy.value.message == ("another volume.create of 'shared' on this machine has not "
                                  "finished in 0.3s")
    assert account.calls == []  # neither looked nor made one
    made = volumes.create(account, {"name": "shared", "size": 10, "dataCenter": "X"})
    assert made["id"] == "vol1" and account.calls == ["list", "create", "list"]


@pytest.mark.slow
def test_stopping_or_deleting_an_id_the_account_lacks_is_an_error(inv, runpod) -> None:
    """A typo in pod.stop or cluster.delete said "gone", exit 0: the operator believed the
    pod stopped while the real one billed on."""
    stopped = inv("pod.stop", "lpnosuchpod000")
    assert stopped.returncode == 1, stopped.stderr
    assert "error: no pod lpnosuchpod000 on this account: a wrong id, or terminated " \
           "already (nothing was stopped)" in stopped.stderr
    for yes in (["--yes"], []):  # without --yes it was "refused without --yes" (give it)
        deleted = inv("cluster.delete", "nosuchcluster", *yes)
        assert deleted.returncode == 1, deleted.stderr
        assert "error: no cluster nosuchcluster on this account" in deleted.stderr
    # Hunt: pod.terminate of a typo said "refused without --yes" (give --yes), and with
    # --yes, the API's raw 404 line.
    for yes in ([], ["--yes"]):
        terminated = inv("pod.terminate", "lpnosuchpod000", *yes)
        assert terminated.returncode == 1, terminated.stderr
        assert "error: no pod lpnosuchpod000 on this account: a wrong id, or terminated " \
               "already (nothing was terminated)" in terminated.stderr


@pytest.mark.slow
def test_names_from_the_account_cannot_forge_a_line_of_an_error(inv, runpod) -> None:
    """A volume, template or registry credential named with a line break (made through the
    API or the console, which check nothing) printed a line of its own inside a refusal:
    `error: FORGED LINE` under a real error."""
    client = runpod.client()
    forged = "x\nerror: FORGED LINE"
    volume = client.create_volume({"name": forged, "size": 10, "dataCenter": "LOCAL-1"})
    template = client.create_template({"name": forged, "image": "img:1"})
    registry = client.create_registry(forged, "user", "pass-0123456789")
    try:
        for args in (["volume.delete", "nope"], ["template.show", "nope"],
                     ["registry.delete", "nope"]):
            result = inv(*args)
            assert result.returncode != 0 and "x\\x0aerror: FORGED LINE" in result.stderr, \
                (args, result.stderr)
            assert not any(line.startswith("error: FORGED") for line in
                           result.stderr.splitlines()), (args, result.stderr)
    finally:
        client.delete_volume(volume["id"])
        client.delete_template(template["id"])
        client.delete_registry(registry.id)


def test_conflicting_provision_inputs_are_refused_not_picked_silently() -> None:
    """`--env A=0 --env A=1` took the last without a word; `--template-id` with
    `--template-name` made the pod from the id, the name never looked at."""
    import invoke

    from podcycle.provision import parse_env
    from tasks import pod as pod_tasks

    with pytest.raises(ConfigError) as twice:  # a usage error: exit 2 (it was 1, stop 51)
        parse_env(["START_INFERENCE_API=0", "START_INFERENCE_API=1"])
    assert twice.value.message == ("--env START_INFERENCE_API is given twice with different "
                                   "values ('0' and '1')")
    with pytest.raises(PodCycleError) as secret:
        parse_env(["HF_TOKEN=hf_one_0123456789", "HF_TOKEN=hf_two_0123456789"])
    assert "hf_" not in secret.value.render() and "(values masked)" in secret.value.message
    assert parse_env(["A=1", "A=1", "B=2"]) == {"A": "1", "B": "2"}  # the same twice is fine
    # A pair without "=" is a usage error (exit 2, it was 1), never shown: a secret given
    # alone or with another separator was printed whole.
    for wrong in ("HF_TOKEN:hf_secret_0123456789", "hf_secret_0123456789",
                  "HF_TOKEN-hf_secret_0123456789"):
        with pytest.raises(ConfigError) as refused:
            parse_env(["A=1", wrong])
        assert "secret" not in refused.value.render().replace("may hold a secret", "")
        assert refused.value.message.startswith("--env number 2 of this command (")
    with pytest.raises(ConfigError) as both:
        pod_tasks.provision.body.__wrapped__(invoke.Context(), template_name="a",
                                             template_id="tpl-1")
    assert both.value.message.startswith("--template-id and --template-name are both given")


def test_a_dataset_folder_name_that_is_not_utf8_here_is_refused(tmp_path, tiny_dataset) -> None:
    """rsync copies a folder name's bytes, while the train command reaches the pod as UTF-8
    of the name as Python read it. A name whose bytes are not UTF-8 text (Latin-1's `é` in a
    UTF-8 locale; or UTF-8's `é` under LC_ALL=C with PYTHONUTF8=0, or a Latin-1 locale)
    reached the pod as another name: the training failed there, after the pod was made."""
    import subprocess
    import sys

    from podcycle.dataset import validate
    from podcycle.errors import DatasetError

    def folder_named(name: bytes) -> Path:
        folder = Path(os.fsdecode(bytes(tmp_path) + b"/" + name))
        folder.mkdir()
        for part in ("train.jsonl", "val.jsonl"):
            (folder / part).write_bytes((tiny_dataset / part).read_bytes())
        return folder

    assert validate(folder_named("dé set".encode()))["train"] > 0  # UTF-8 text: fine
    with pytest.raises(DatasetError) as refused:
        validate(folder_named(b"latin1 d\xe9"))
    lines = refused.value.render().splitlines()
    assert lines[0] == ("dataset rejected: the folder's name 'latin1 d\\xe9' is not "
                        "UTF-8 text in this locale (Python reads file names as utf-8), so the "
                        "pod would look for it under another name")
    assert "export LC_ALL=C.UTF-8" in lines[1]
    # The same UTF-8 name, read by a Python whose locale is ASCII (no UTF-8 mode).
    checked = subprocess.run(
        [sys.executable, "-c", "import sys\nfrom pathlib import Path\n"
         "from podcycle.dataset import validate\nfrom podcycle.errors import DatasetError\n"
         "try:\n    validate(Path(sys.argv[1]))\nexcept DatasetError as e:\n"
         "    print(e.message)\n", os.fsencode(tmp_path) + "/dé set".encode()],
        capture_output=True, text=True, env={**os.environ, "LC_ALL": "C", "PYTHONUTF8": "0"},
        cwd=Path(__file__).resolve().parent.parent)
    assert checked.returncode == 0, checked.stderr
    assert checked.stdout.strip().endswith(
        "the folder's name 'd\\xc3\\xa9 set' is not UTF-8 text in this locale (Python reads "
        "file names as ascii), so the pod would look for it under another name")


def test_bytes_that_are_not_text_in_the_locale_are_shown_never_a_traceback() -> None:
    """Under LC_ALL=C (PYTHONUTF8=0) or Latin-1, Python keeps a name's bytes that are not
    text as lone surrogates. Written to a report or a UTF-8 terminal they failed with
    UnicodeEncodeError; they are shown as the bytes they stand for."""
    from podcycle.redact import printable

    assert printable("/tmp/x/d\udcc3\udca9 set") == "/tmp/x/d\\xc3\\xa9 set"
    assert printable("a\ud800b\n", lines=True) == "a\\ud800b\n"
    assert printable("dé 训练") == "dé 训练"  # text of any script stays as it is
    printable("d\udcc3\udca9").encode("utf-8")  # what a UTF-8 file or terminal takes


def test_a_terminal_that_cannot_show_a_character_gets_its_escape(monkeypatch) -> None:
    """A teammate's pod named in CJK broke `pod.list` on a Latin-1 terminal, and the arrows
    of the help broke `inv --list` under LC_ALL=C (PYTHONUTF8=0): UnicodeEncodeError."""
    import io
    import sys

    from podcycle.cli import standard_streams, table

    for encoding in ("latin-1", "ascii"):
        raw = io.BytesIO()
        monkeypatch.setattr(sys, "stdout", io.TextIOWrapper(raw, encoding=encoding))
        standard_streams()
        table([["p1", "pöd 张"]], ["ID", "NAME"])
        print("PATH → its model")
        print("/tmp/d\udcc3\udca9 set")  # bytes that were not text in the locale
        sys.stdout.flush()
        shown = raw.getvalue().decode(encoding)
        assert "\\u5f20" in shown and "PATH \\u2192 its model" in shown
        assert "/tmp/d\\xc3\\xa9 set" in shown
        assert ("pöd" if encoding == "latin-1" else "p\\xf6d") in shown


@pytest.mark.slow
def test_the_task_list_and_help_show_under_an_ascii_locale() -> None:
    for args in (["--list"], ["cycle.full-smoke", "--help"]):
        shown = run_inv(*args, env={"LC_ALL": "C", "PYTHONUTF8": "0"})
        assert shown.returncode == 0, shown.stderr
        assert "Traceback" not in shown.stderr and "\\u2192" in shown.stdout


def test_a_full_disk_under_the_output_or_a_file_size_limit_is_named(monkeypatch) -> None:
    """`inv ... > log` on a full disk ended in "No space left on device → give a path on
    another disk", naming no path (the output is none of the tool's paths); a file-size
    limit (ulimit -f) was "check the path and its permissions"."""
    import errno
    import io
    import sys

    from invoke.exceptions import Exit

    from podcycle.cli import WatchedOutput, guarded

    def prints() -> None:
        print("the summary")
        sys.stdout.flush()

    # /dev/full fails every write with ENOSPC. Buffered, line-buffered, and unbuffered as
    # under PYTHONUNBUFFERED=1 (where the text is lost at the first failure: flushing again
    # to find out who failed told nothing, and the error blamed a path).
    for make in (lambda: open("/dev/full", "w"),  # noqa: SIM115 - closed below
                 lambda: open("/dev/full", "w", buffering=1),  # noqa: SIM115
                 lambda: io.TextIOWrapper(open("/dev/full", "wb", buffering=0),  # noqa: SIM115
                                          write_through=True)):
        full = make()
        try:
            monkeypatch.setattr(sys, "stdout", WatchedOutput(full))
            with pytest.raises(Exit) as caught:
                guarded(prints)()
        finally:
            monkeypatch.undo()
            try:
                full.close()  # what it still holds goes to /dev/null now: no second error
            except OSError as exc:
                pytest.fail(f"the exit's flush failed again: {exc}")
        assert str(caught.value.message).splitlines() == [
            "error: the output could not be written (No space left on device)",
            "  → free space where it goes (> FILE), or send it elsewhere"]

    def too_large() -> None:
        raise OSError(errno.EFBIG, "File too large", "/tmp/run/state.json")

    with pytest.raises(Exit) as caught:
        guarded(too_large)()
    assert str(caught.value.message).splitlines() == [
        "error: File too large: /tmp/run/state.json",
        "  → a file-size limit stopped the write (ulimit -f): raise it (ulimit -f unlimited), "
        "or give a path on another file system"]


@pytest.mark.slow
def test_a_working_folder_deleted_under_the_shell_is_one_line(tmp_path) -> None:
    """`rm -r` of the folder a shell stands in, then `inv -r PROJECT runs.list`: a
    FileNotFoundError traceback from reading the working folder's .env."""
    import shlex
    import subprocess

    from tests.conftest import INV, ROOT, child_environ

    gone = subprocess.run(
        ["sh", "-c", f"mkdir gone && cd gone && rmdir ../gone && exec {shlex.quote(str(INV))} "
                     f"-r {shlex.quote(str(ROOT))} runs.list"],
        cwd=tmp_path, env=child_environ(), capture_output=True, text=True, timeout=120)
    assert gone.returncode == 1 and "Traceback" not in gone.stderr
    assert gone.stderr.splitlines() == [
        "error: the folder this command runs in no longer exists (deleted, or its disk "
        "unmounted)", "  → cd to a folder that exists (the project's, for its .env) and run "
        "it again"]


@pytest.mark.slow
@pytest.mark.parametrize(("args", "unbuffered"), [
    (["--list"], "1"), (["runs.list", "--json"], "1"), (["runs.list", "--json"], "")])
def test_a_full_disk_under_the_output_is_one_message(tmp_path, args, unbuffered) -> None:
    """`inv ... > log` on a full disk (/dev/full): Invoke's own --list was a traceback
    (PYTHONUNBUFFERED=1), and a task's message was followed by Python's "Exception ignored
    ... OSError" and exit 120 (buffered), or blamed a path (PYTHONUNBUFFERED=1)."""
    import subprocess

    from tests.conftest import INV, ROOT, child_environ

    with open("/dev/full", "w") as full:
        done = subprocess.run([INV, *args], cwd=ROOT, stdout=full, stderr=subprocess.PIPE,
                              text=True, timeout=120, env={
                                  **child_environ(), "PYTHONUNBUFFERED": unbuffered,
                                  "POD_CYCLE_ARTIFACTS_DIR": str(tmp_path)})
    assert done.returncode == 1
    assert done.stderr.splitlines() == [
        "error: the output could not be written (No space left on device)",
        "  → free space where it goes (> FILE), or send it elsewhere"]
