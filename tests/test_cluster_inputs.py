"""Bad input for a cluster run (--nodes) is refused before anything is created, in one line
that names the flag: --nodes 0/-1/abc/300, a private image, a GPU type or count the catalog
cannot place as a cluster, cluster-only flags with one node, and --nodes on a step that cannot
use it. Fast checks in process against a recording catalog stand-in (the RunPod cloud cannot be
reached from a test); the slow ones drive `inv` against the local RunPod and read its request
log for the create that must never come."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from podcycle import clusters
from podcycle.config import MAX_NODES, resolve
from podcycle.errors import ConfigError
from tests.conftest import ROOT

TEMPLATE = ROOT / "config" / "template.toml"


def settings(**flags: Any):
    return resolve(flags, {}, environ={}, use_keyring=False)


@pytest.mark.parametrize("value, problem", [
    (0, "must be at least 1"), (-1, "must be at least 1"), ("abc", "must be an integer"),
    (300, f"must be at most {MAX_NODES}"), ("2.5", "must be an integer"),
])
def test_nodes_out_of_range_is_refused_naming_the_flag(value: Any, problem: str) -> None:
    with pytest.raises(ConfigError) as refused:
        settings(nodes=value)
    assert refused.value.message.startswith(f"--nodes {problem}")
    assert "\n" not in refused.value.message and "--nodes" in refused.value.remedy


def test_nodes_from_the_environment_is_checked_the_same_way() -> None:
    with pytest.raises(ConfigError, match="RUNPOD_NODES must be at most 250"):
        resolve({}, {}, environ={"RUNPOD_NODES": "300"}, use_keyring=False)
    assert resolve({}, {}, environ={"RUNPOD_NODES": "4"}, use_keyring=False).nodes == 4


def test_cluster_only_flags_need_two_nodes_or_more() -> None:
    with pytest.raises(ConfigError, match=r"^--data-center places a cluster; it needs --nodes "
                                          r"2 or more"):  # not "--data-center (from --da...)"
        clusters.check_settings(settings(data_center="US-TX-3"))
    with pytest.raises(ConfigError, match=r"^--data-center \(from RUNPOD_DATA_CENTER\) places"):
        clusters.check_settings(resolve({}, {}, environ={"RUNPOD_DATA_CENTER": "US-TX-3"},
                                        use_keyring=False))
    clusters.check_settings(settings(data_center="US-TX-3", nodes=2))  # fine with a cluster
    clusters.check_settings(settings())  # and nothing to say for a plain pod


def test_a_cluster_cannot_run_in_the_community_cloud_or_behind_one_ssh_host() -> None:
    with pytest.raises(ConfigError, match="^--cloud community cannot hold a cluster"):
        clusters.check_settings(settings(nodes=2, cloud="community"))
    with pytest.raises(ConfigError, match="^RUNPOD_SSH_HOST names one SSH endpoint"):
        clusters.check_settings(settings(nodes=2, ssh_host="gw.example"))


def test_more_nodes_than_the_local_runpod_makes_is_refused_before_it_starts() -> None:
    """Before: the local RunPod was started and sent the create, whose 400 came back with
    the cluster hint (templateId, registry, cloud) that had nothing to do with it."""
    from podcycle.local import LOCAL_MAX_NODES

    with pytest.raises(ConfigError) as refused:
        clusters.check_settings(settings(nodes=LOCAL_MAX_NODES + 1, backend="local"))
    assert refused.value.message == (
        f"--nodes {LOCAL_MAX_NODES + 1}: the local RunPod makes at most {LOCAL_MAX_NODES} "
        "nodes per cluster (each node is a set of processes on this machine)")
    assert f"--nodes 2 to {LOCAL_MAX_NODES}" in refused.value.remedy
    with pytest.raises(ConfigError, match=r"^--nodes 250 \(from RUNPOD_NODES\): the local"):
        clusters.check_settings(resolve({}, {}, environ={"RUNPOD_NODES": "250"},
                                        use_keyring=False))  # auto, no key: local
    clusters.check_settings(settings(nodes=LOCAL_MAX_NODES, backend="local"))
    clusters.check_settings(settings(nodes=250, backend="runpod", api_key="rpa_" + "x" * 40))


def test_a_private_image_in_the_template_file_is_refused(tmp_path: Path) -> None:
    private = tmp_path / "template.toml"
    private.write_text(TEMPLATE.read_text().replace('# registry = "ghcr"', 'registry = "ghcr"'))
    spec = clusters.cluster_spec(private)
    with pytest.raises(ConfigError) as refused:
        clusters.check_image_public(None, spec)
    assert refused.value.message.startswith("--nodes: the image ")
    assert "cannot pull private images" in refused.value.message
    assert "public" in refused.value.remedy
    clusters.check_image_public(None, clusters.cluster_spec(TEMPLATE))  # the default: public


class CatalogStandIn:
    """The v2 catalog, from the sample snapshot in the v2 shape (a stand-in for RunPod's, which
    cannot be reached here); records every call, and must never be asked to create."""

    def __init__(self) -> None:
        import json

        raw = json.loads((ROOT / "config" / "runpod_gpu_types_catalog_2026-02-26.json")
                         .read_text())["gpuTypes"]
        self.gpus = [{"id": g["id"], "name": g["displayName"], "memory": g["memoryInGb"],
                      "secure": g["secureCloud"], "community": g["communityCloud"],
                      "price": {"secure": g["securePrice"], "community": g["communityPrice"]},
                      "maxCount": {"secure": g["maxGpuCountSecureCloud"],
                                   "community": g["maxGpuCountCommunityCloud"]},
                      "availability": g["sampleAvailability"]} for g in raw]
        self.calls: list[tuple[str, dict[str, Any]]] = []

    def list_gpu_types(self, **kwargs: Any) -> list[dict[str, Any]]:
        self.calls.append(("list_gpu_types", kwargs))
        return self.gpus

    def create_cluster(self, body: dict[str, Any]) -> Any:
        raise AssertionError("a refused input must never reach the create")


@pytest.mark.parametrize("flags, flag, problem", [
    ({"gpu_type_id": "NVIDIA Z9000"}, "--gpu-type-id", "the catalog has no such GPU type"),
    ({"gpu_type_id": "NVIDIA A30"}, "--gpu-type-id", "is not offered in RunPod's secure"),
    ({"gpu_type_id": "NVIDIA H200", "gpu_count": 9}, "--gpu-count 9",
     "a NVIDIA H200 node holds at most 8 GPUs"),
    ({"gpu_type_id": "NVIDIA B300 SXM6 AC"}, "--gpu-type-id", "has no stock for a cluster"),
    ({"gpu_count": 16}, "--gpu-count 16", "no GPU type in stock can place 2 nodes"),
])
def test_a_gpu_the_catalog_cannot_place_as_a_cluster_is_refused(flags: dict, flag: str,
                                                                problem: str) -> None:
    catalog = CatalogStandIn()
    with pytest.raises(ConfigError) as refused:
        clusters.choose_gpu(catalog, settings(nodes=2, **flags))
    assert refused.value.message.startswith(flag) and problem in refused.value.message
    [(_, asked)] = catalog.calls
    assert asked["cloud"] == "secure" and asked["count"] == flags.get("gpu_count", 1)
    assert asked["product"] == "CLUSTER"


def test_a_gpu_that_fits_is_chosen_with_its_price_per_node() -> None:
    gpu, offer = clusters.choose_gpu(CatalogStandIn(), settings(nodes=2, gpu_count=2,
                                                                gpu_type_id="NVIDIA H200"))
    assert gpu == "NVIDIA H200" and offer.gpu_count == 2 and offer.cloud == "SECURE"
    # A ceiling holds for a given type too: it made a $57/h cluster under RUNPOD_MAX_PRICE=1.
    with pytest.raises(ConfigError) as over:
        clusters.choose_gpu(CatalogStandIn(), settings(nodes=2, gpu_count=2, max_price=1,
                                                       gpu_type_id="NVIDIA H200"))
    assert over.value.message.startswith("a cluster of 2 x 2 NVIDIA H200 costs $")
    assert "over the price ceiling $1/h" in over.value.message


# -- through inv, against the local RunPod's request log ---------------------------------------
def creates(runpod) -> list[dict[str, Any]]:
    return [r for r in runpod.requests() if r["method"] == "POST"
            and r["path"] in ("/v2/clusters", "/v2/pods")]


@pytest.mark.slow
@pytest.mark.parametrize("args, flag", [
    (["--nodes", "0"], "--nodes"), (["--nodes", "-1"], "--nodes"),
    (["--nodes", "abc"], "--nodes"), (["--nodes", "300"], "--nodes"),
    (["--nodes", "2", "--cloud", "community"], "--cloud"),
    (["--data-center", "US-TX-3"], "--data-center"),
    (["--nodes", "2", "--gpu-type-id", "NVIDIA A30"], "--gpu-type-id"),
    (["--nodes", "2", "--gpu-type-id", "NVIDIA H200", "--gpu-count", "9"], "--gpu-count"),
    (["--nodes", "2", "--data-center", "LOCAL-9"], "--data-center"),
])
def test_cycle_refuses_bad_cluster_input_before_any_create(inv, runpod, tmp_path, args,
                                                           flag) -> None:
    runpod.admin("DELETE", "/_local/requests")
    result = inv("cycle.full-smoke", *args, env={
        "POD_CYCLE_ARTIFACTS_DIR": str(tmp_path / "art")})
    assert result.returncode != 0
    error = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(error) == 1 and flag in error[0], result.stderr
    assert "Traceback" not in result.stderr
    assert creates(runpod) == []
    # Nothing was made, so no `failed` run is left for runs.list or a later --resume.
    assert not list((tmp_path / "art").glob("*/state.json")), result.stderr


@pytest.mark.slow
def test_a_data_centre_other_than_the_volumes_is_refused_before_the_cluster(inv, runpod,
                                                                            tmp_path) -> None:
    """--nodes 2 --network-volume V --data-center X, V living in another data centre: the
    cluster was made in V's in silence (it must be, to mount V), and the run recorded X, so
    a later --data-center X was taken as matching. Refused now, naming both."""
    volume = runpod.client().create_volume({"name": "dc-vol", "size": 10,
                                            "dataCenter": "LOCAL-1"})
    runpod.admin("DELETE", "/_local/requests")
    try:
        result = inv("cycle.start", "-r", "dc-mismatch", "--nodes", "2", "--network-volume",
                     "dc-vol", "--data-center", "LOCAL-2",
                     env={"POD_CYCLE_ARTIFACTS_DIR": str(tmp_path / "art")})
    finally:
        runpod.client().delete_volume(volume["id"])
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
    assert ("error: --data-center LOCAL-2: network volume 'dc-vol' lives in LOCAL-1, and a "
            "cluster that mounts it runs there") in result.stderr, result.stderr
    assert "leave out --data-center (or give LOCAL-1)" in result.stderr
    assert creates(runpod) == []
    assert not (tmp_path / "art" / "dc-mismatch").exists()


@pytest.mark.slow
def test_a_refused_start_leaves_no_run_but_one_whose_create_was_sent_is_kept(
        inv, runpod, tmp_path) -> None:
    env = {"POD_CYCLE_ARTIFACTS_DIR": str(tmp_path / "art")}
    refused = inv("cycle.start", "-r", "typo", "--gpu-type-id", "NVIDIA Z9000", env=env)
    assert refused.returncode != 0 and "NVIDIA Z9000" in refused.stderr, refused.stderr
    assert "nothing was created: the new run's folder" in refused.stderr
    assert not (tmp_path / "art" / "typo").exists()
    listed = inv("runs.list", "--json", env=env)
    assert listed.returncode == 0 and json.loads(listed.stdout) == []

    runpod.fault(method="POST", path="/v2/pods", status=500, detail="boom")
    try:
        failed = inv("cycle.start", "-r", "sent", env=env)
    finally:
        runpod.clear_faults()
    assert failed.returncode != 0 and "boom" in failed.stderr, failed.stderr
    state = json.loads((tmp_path / "art" / "sent" / "state.json").read_text())
    assert state["steps"]["start"]["status"] == "failed"  # a create went out: kept, said


@pytest.mark.slow
@pytest.mark.parametrize("task", ["cycle.train", "cycle.push-dataset", "pod.provision"])
def test_nodes_on_a_step_that_cannot_use_it_is_refused(inv, runpod, task) -> None:
    runpod.admin("DELETE", "/_local/requests")
    result = inv(task, "--nodes", "2")
    assert result.returncode != 0
    assert f"inv {task} has no flag --nodes" in result.stderr
    assert "Traceback" not in result.stderr
    assert creates(runpod) == []


def test_a_data_centre_the_catalog_lacks_is_refused_with_the_closest() -> None:
    from podcycle.catalog import check_data_center

    class Catalog:
        def list_data_centers(self) -> list[dict[str, Any]]:
            return [{"id": dc} for dc in ("US-TX-3", "US-KS-2", "EU-RO-1", "EU-SE-1")]

    assert check_data_center(Catalog(), "EU-RO-1") == "EU-RO-1"
    with pytest.raises(ConfigError) as refused:
        check_data_center(Catalog(), "us-tx-3", "RUNPOD_DATA_CENTER")
    assert refused.value.message == "RUNPOD_DATA_CENTER 'us-tx-3' is not a RunPod data centre"
    assert refused.value.remedy.startswith("did you mean US-TX-3")
    with pytest.raises(ConfigError) as refused:
        check_data_center(Catalog(), "NOWHERE")
    assert refused.value.remedy == "the data centres: EU-RO-1, EU-SE-1, US-KS-2, US-TX-3"



@pytest.mark.slow
def test_the_local_runpod_places_nothing_in_a_data_centre_it_lacks(runpod) -> None:
    """As volume.create's: a create whose dataCenterIds name no local data centre is refused
    (it used to land in LOCAL-1 silently)."""
    from podcycle.runpod.errors import ApiError

    with pytest.raises(ApiError) as refused:
        runpod.client().create_pod({"name": "nowhere", "templateId": "tpl-local-chessbot",
                                    "gpu": {"id": "NVIDIA RTX A5000", "count": 1},
                                    "dataCenterIds": ["NOWHERE"]})
    assert refused.value.status == 400 and "unknown data center 'NOWHERE'" in refused.value.detail
    assert [p for p in runpod.client().list_pods() if p.name == "nowhere"] == []


def test_a_key_without_the_catalog_scope_places_as_given_with_a_warning(capsys) -> None:
    """As choose_gpu with such a key: the data centre is not checked, and the JSON warning
    on stderr says so (a key denied /v2/catalog must still make volumes and clusters)."""
    from podcycle.catalog import check_data_center
    from podcycle.runpod.errors import Forbidden

    class Denied:
        def list_data_centers(self) -> list[dict[str, Any]]:
            raise Forbidden("denied", status=403)

    assert check_data_center(Denied(), "EU-RO-1") == "EU-RO-1"
    warning = json.loads(capsys.readouterr().err)
    assert warning["event"] == "data_center_validation_skipped"
    assert warning["data_center"] == "EU-RO-1"


def test_cluster_only_settings_are_judged_against_the_runs_own_shape() -> None:
    """RUNPOD_DATA_CENTER (a standing .env line) refused every resume of a cluster run, and
    any step on it, as "this run is one pod": --nodes left out is the settings' 1, not the
    run's recorded shape. A step or a resume of a run now leaves them to the run's shape
    (Cycle.settle_shape); a one-pod run is told it keeps its shape, not to add --nodes."""
    from podcycle.config import undo
    from podcycle.driver import check_cluster_inputs

    placed = resolve({}, {}, environ={"RUNPOD_DATA_CENTER": "LOCAL-1"}, use_keyring=False)
    check_cluster_inputs(placed, run_may_exist=True)  # the run's shape decides, later
    with pytest.raises(ConfigError, match=r"\(this run is one pod\)"):
        check_cluster_inputs(placed)  # a new run: one pod
    asked = resolve({"nodes": 1}, {}, environ={"RUNPOD_DATA_CENTER": "LOCAL-1"},
                    use_keyring=False)
    with pytest.raises(ConfigError):  # --nodes 1 given: it is the run's shape
        check_cluster_inputs(asked, run_may_exist=True)
    clusters.check_settings(placed, 2, "cl1")  # a cluster run: fine
    with pytest.raises(ConfigError) as refused:
        clusters.check_settings(placed, 1, "p1")
    assert refused.value.message == ("--data-center (from RUNPOD_DATA_CENTER) places a "
                                     "cluster, and run p1 runs on one pod (a run keeps its "
                                     "shape)")
    assert refused.value.remedy.startswith("unset RUNPOD_DATA_CENTER to continue it")
    assert undo("--nodes", "--nodes") == "leave out --nodes"
    assert undo("RUNPOD_NODES", "--nodes") == "unset RUNPOD_NODES"
    assert undo("RUNPOD_NODES in .env", "--nodes") == "remove RUNPOD_NODES from .env"
    assert undo("podcycle.nodes in invoke.yaml", "--nodes") == \
        "remove podcycle.nodes from invoke.yaml"
