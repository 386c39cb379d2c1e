"""RunPod Instant Clusters (`--nodes N`, N >= 2): N identical pods on one private network,
trained on by torchrun with static rendezvous from RunPod's node env (MASTER_ADDR,
MASTER_PORT, NODE_RANK, NUM_NODES, NUM_TRAINERS). One function per verb: check what a
cluster needs before anything is created (`check_settings`, `check_image_public`,
`choose_gpu`), build the create body from config/template.toml (`create_body`: clusters take
no template id, registry or cloud), create (`provision_cluster`), wait until every member
runs with SSH (`wait_ready`), delete (`delete_cluster`: a cluster cannot be stopped), bill
(`billed`), and drive one trainer per node as a gang (`Gang`): one node that fails or
vanishes stops every other node at once. The cycle (podcycle.cycle) and the cluster.* tasks
share these."""

from __future__ import annotations

import collections
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from podcycle import catalog
from podcycle.errors import ConfigError, PodCycleError
from podcycle.redact import printable
from podcycle.runpod.errors import Forbidden, NotFound, RateLimited, Unauthorized, beyond_retry
from podcycle.runpod.models import Cluster, Pod, PodStatus
from podcycle.runs import ClusterMember, SpendGuard

if TYPE_CHECKING:
    from podcycle.backend import Backend
    from podcycle.config import Settings
    from podcycle.runpod.client import RunPodClient

# Settings that only mean something for a cluster: given with --nodes 1 they are refused.
CLUSTER_ONLY = {"data_center": "--data-center"}
# Clusters run in RunPod's secure cloud only (there is no `cloud` in CreateClusterRequest).
CLUSTER_CLOUD = "secure"
PUBLIC_IMAGE_REMEDY = (
    "make the image public (GHCR: the package's settings → Change visibility → Public; Docker "
    "Hub: Make public) and set registry = \"\" in config/template.toml (inv template.sync: "
    "a line left out keeps the template's credential), or train on one pod (leave out "
    "--nodes)")
# How often the gang asks RunPod whether every member still exists (a node whose host
# vanished may keep its SSH session half-open for a long time).
MEMBER_CHECK_SECONDS = 5.0
# How long a node whose SSH session dropped during train is tried again (each reconnect).
RECONNECT_OPEN_SECONDS = 30.0
# A node's failure with an exit code, no other node known lost: each other node is asked
# whether it is still there (a new SSH session, this long to open), since a dead node's own
# session may end a moment after its peers' collectives failed.
PROBE_OPEN_SECONDS = 10.0
# The last log lines of a failed node shown in the failure message.
LAST_LINES = 15


class DeleteFailed(PodCycleError):
    exit_code = 4


class ClusterNotReady(PodCycleError):
    pass


# -- refusals before anything is created ----------------------------------------------------
def check_settings(settings: Settings, nodes: int | None = None, run_id: str | None = None
                   ) -> None:
    """What needs no request: cluster-only settings with one node, a cloud or SSH override a
    cluster cannot have. --nodes itself (0, -1, abc, 300) is refused by the settings parser
    (podcycle.config: 1 to MAX_NODES). `nodes`: the run's node count when its shape is known
    (Cycle.nodes: a run keeps its recorded shape), else the settings'; `run_id`: the run
    whose shape that is (its one pod cannot become a cluster)."""
    from podcycle.config import undo

    if (settings.nodes if nodes is None else nodes) < 2:
        for name, flag in CLUSTER_ONLY.items():
            if getattr(settings, name) is not None:
                origin = settings.source(name)
                given = flag if origin == flag else f"{flag} (from {origin})"
                drop = undo(origin, flag)
                if run_id is not None and settings.source("nodes") == "default":
                    raise ConfigError(
                        f"{given} places a cluster, and run {run_id} runs on one pod (a run "
                        "keeps its shape)", f"{drop} to continue it, or start a new run with "
                        "--nodes 2 or more")
                raise ConfigError(
                    f"{given} places a cluster; it needs "
                    f"--nodes 2 or more (this run is one pod)",
                    f"add --nodes N (2 or more), or {drop}")
        return
    if settings.cloud == "community":
        raise ConfigError(
            "--cloud community cannot hold a cluster: RunPod's Instant Clusters run in its "
            "secure cloud (--nodes asks for a cluster)",
            "leave out --cloud (or pass --cloud secure) with --nodes")
    if settings.ssh_host:
        raise ConfigError(
            "RUNPOD_SSH_HOST names one SSH endpoint, and each node of a cluster has its own "
            "(--nodes asks for a cluster)",
            "unset RUNPOD_SSH_HOST/PORT/USER for a cluster run")
    from podcycle.config import effective_backend
    from podcycle.local import LOCAL_MAX_NODES

    if settings.nodes > LOCAL_MAX_NODES and effective_backend(settings) == "local":
        origin = settings.source("nodes")
        given = f"--nodes {settings.nodes}" + ("" if origin == "--nodes" else f" (from {origin})")
        raise ConfigError(
            f"{given}: the local RunPod makes at most {LOCAL_MAX_NODES} nodes per cluster "
            "(each node is a set of processes on this machine)",
            f"use --nodes 2 to {LOCAL_MAX_NODES} here; a RunPod key (RUNPOD_API_KEY) makes "
            "clusters of up to 250 nodes on RunPod")


def pod_not_cluster(client: Any, cluster_id: str) -> PodCycleError | None:
    """For a cluster id RunPod does not know: the refusal when it is a pod's id (a node's, as
    cluster.status's rows show them, or a lone pod's), which the 404 of the cluster listing
    left unsaid. None when no pod has it either."""
    from podcycle.runpod.errors import NotFound

    try:
        pod = client.get_pod(cluster_id)
    except (NotFound, PodCycleError):
        return None
    if pod.cluster_id:
        return PodCycleError(f"{cluster_id} is a pod, a node of cluster {pod.cluster_id}, not "
                             "a cluster", f"inv cluster.status {pod.cluster_id} shows its "
                             "cluster, and inv cluster.delete ID deletes one")
    return PodCycleError(f"{cluster_id} is a pod, not a cluster",
                         f"inv pod.status {cluster_id} shows it (inv pod.terminate "
                         f"{cluster_id} --yes terminates it); inv cluster.list lists the "
                         "clusters")


def unknown_cluster(client: Any, cluster_id: str) -> PodCycleError:
    """cluster.delete's refusal of an id RunPod has no cluster of: pod_not_cluster's when it
    is a pod's, else that nothing was deleted (a typo must not read as "deleted")."""
    return pod_not_cluster(client, cluster_id) or PodCycleError(
        f"no cluster {cluster_id} on this account: a wrong id, or deleted already (nothing "
        "was deleted)", "inv cluster.list shows the account's clusters and their ids")


def cluster_spec(path: Path | None = None) -> dict[str, Any]:
    """config/template.toml, checked (podcycle.templates): what every node runs."""
    from podcycle import templates

    return templates.load(path or templates.DEFAULT_FILE)


def check_image_public(client: RunPodClient | None, spec: dict[str, Any]) -> None:
    """Clusters cannot pull private images (CreateClusterRequest has no `registry`): refuse a
    template file that names a registry credential, and a template of that name on the
    account that carries one (read only when the account's templates can be listed)."""
    if spec.get("registry"):
        raise ConfigError(
            f"--nodes: the image {spec.get('image')!r} is private (config/template.toml sets "
            f"registry = {spec['registry']!r}), and RunPod clusters cannot pull private images",
            PUBLIC_IMAGE_REMEDY)
    if client is None:
        return
    try:
        templates = client.list_templates()
    except PodCycleError:
        return  # not readable with this key: the file is what counts
    for template in templates:
        if template.get("name") == spec.get("name") and template.get("registry"):
            raise ConfigError(
                f"--nodes: the template {spec['name']!r} on the account pulls its image "
                f"{template.get('image')!r} with a registry credential (a private image), and "
                "RunPod clusters cannot pull private images", PUBLIC_IMAGE_REMEDY)


def _cluster_catalog(client: RunPodClient, count: int) -> list[dict[str, Any]]:
    """The GPU catalog with stock for clusters (product=CLUSTER), secure cloud, `count` GPUs
    per node."""
    return client.list_gpu_types(availability=True, cloud=CLUSTER_CLOUD, count=count,
                                 product="CLUSTER")


def choose_gpu(client: RunPodClient, settings: Settings
               ) -> tuple[str, catalog.GpuOffer | None]:
    """The GPU type every node gets, and its offer (price per node) when the catalog could be
    read. Refused, naming the flag: a type the catalog does not know, one not offered in the
    secure cloud, more GPUs per node than a machine of that type holds, no stock."""
    from podcycle.provision import catalog_denied, warn_json

    count, nodes = settings.gpu_count, settings.nodes
    try:
        gpus = _cluster_catalog(client, count)
    except Forbidden as exc:
        if not settings.gpu_type_id:
            raise catalog_denied(exc) from None
        warn_json(event="gpu_validation_skipped", gpu_type_id=settings.gpu_type_id,
                  reason="catalog denied for this API key (403 on GET /v2/catalog/gpus)",
                  detail="creating the cluster with the explicit GPU type id unchecked")
        return settings.gpu_type_id, None
    if settings.gpu_type_id:
        gpu = catalog.find_gpu(gpus, settings.gpu_type_id)
        if gpu is None:
            raise ConfigError(f"--gpu-type-id {settings.gpu_type_id!r}: the catalog has no such "
                              "GPU type", "see inv gpu.search for the ids")
        most = int((gpu.get("maxCount") or {}).get(CLUSTER_CLOUD) or 0)
        if not gpu.get(CLUSTER_CLOUD) or most < 1:
            raise ConfigError(f"--gpu-type-id {gpu['id']!r} is not offered in RunPod's secure "
                              "cloud, where clusters run",
                              "pick another type (inv gpu.search --cloud secure)")
        if count > most:
            raise ConfigError(f"--gpu-count {count}: a {gpu['id']} node holds at most {most} "
                              "GPUs (the catalog's maxCount for the secure cloud)",
                              f"pass --gpu-count {most} or less (GPUs per node), or more --nodes")
        if gpu.get("availability") == "NONE":
            raise ConfigError(f"--gpu-type-id {gpu['id']!r}: the catalog has no stock for a "
                              f"cluster of {nodes} x {count} now",
                              "try another type (inv gpu.search), or later")
        fits = catalog.offers([gpu], cloud=CLUSTER_CLOUD, gpu_count=count)
        if fits and settings.max_price is not None \
                and fits[0].price_per_hour * nodes > settings.max_price:
            raise ConfigError(
                f"a cluster of {nodes} x {count} {gpu['id']} costs "
                f"${fits[0].price_per_hour * nodes:.2f}/h, over the price ceiling "
                f"${settings.max_price:g}/h (RUNPOD_MAX_PRICE)",
                "raise the ceiling, or ask for fewer nodes or GPUs per node")
        return gpu["id"], (fits[0] if fits else None)
    offers = catalog.offers(gpus, cloud=CLUSTER_CLOUD, gpu_count=count, available_only=True)
    if settings.max_price is not None:
        offers = [o for o in offers if o.price_per_hour * nodes <= settings.max_price]
    if not offers:
        raise ConfigError(
            f"--gpu-count {count}: no GPU type in stock can place {nodes} nodes of {count} "
            "GPU(s) in the secure cloud"
            + (f" under ${settings.max_price}/h for the cluster" if settings.max_price else ""),
            "ask for fewer GPUs per node, or pass --gpu-type-id (inv gpu.search)")
    return offers[0].id, offers[0]


# -- the create body --------------------------------------------------------------------------
def create_body(*, name: str, spec: dict[str, Any], gpu_id: str, gpu_count: int, nodes: int,
                env: dict[str, str], volume: dict[str, Any] | None = None,
                data_center: str | None = None) -> dict[str, Any]:
    """CreateClusterRequest from the template file: compute, the container fields, SSH. No
    templateId, registry or cloud: the spec has none (RunPod answers 422)."""
    ports = [str(p) for p in spec.get("ports") or []]
    if "22/tcp" not in ports:
        raise ConfigError(
            f"config/template.toml's ports ({', '.join(ports) or 'none'}) lack 22/tcp, so no "
            "node would have direct SSH (the cycle drives every node over SSH)",
            "add \"22/tcp\" to ports in config/template.toml")
    body: dict[str, Any] = {
        "name": name, "type": "TRAINING",
        "compute": {"gpuTypeId": gpu_id, "gpuCountPerPod": gpu_count, "podCount": nodes},
        "image": spec["image"], "ports": ports, "startSsh": True,
    }
    merged = {**(spec.get("env") or {}), **env}
    if merged:
        body["env"] = merged
    if isinstance(spec.get("disk"), int):
        body["disk"] = spec["disk"]
    if spec.get("args"):
        body["args"] = spec["args"]
    if spec.get("startJupyter"):
        body["startJupyter"] = True
    if volume:
        from podcycle import volumes

        body["mounts"] = {"network": [{"volumeId": volume["id"], "path": volumes.VOLUME_PATH}]}
        body["dataCenterIds"] = [volume["dataCenter"]]
    else:
        persistent = (spec.get("mounts") or {}).get("persistent")
        if persistent:
            body["mounts"] = {"persistent": dict(persistent)}
        if data_center:
            body["dataCenterIds"] = [data_center]
    return body


@dataclass
class ProvisionedCluster:
    cluster: Cluster
    body: dict[str, Any]
    gpu_id: str
    offer: catalog.GpuOffer | None  # per node
    guard: SpendGuard | None = None
    volume: dict[str, Any] | None = None

    @property
    def price_per_hour(self) -> float | None:
        return round(self.offer.price_per_hour * self.cluster.pod_count, 4) if self.offer \
            else None

    def record(self, backend: Backend) -> dict[str, Any]:
        """What provision.json keeps (secret env values are masked by the writer)."""
        return {"request": self.body, "cluster": self.cluster.to_json(),
                "offer": self.offer.as_dict() if self.offer else None,
                "backend": backend.name, "api_base_url": backend.base_url}


def provision_cluster(backend: Backend, settings: Settings, *, name: str,
                      key_path: Path | None = None, env: dict[str, str] | None = None,
                      record: Callable[[ProvisionedCluster], None] | None = None,
                      sending: Callable[[], None] | None = None) -> ProvisionedCluster:
    """Everything is checked (settings, image, GPU, spend guard, SSH key) before the one
    create request. `record` saves what was made, with SIGINT/SIGTERM held from the create
    until it is done (as provision.provision_pod); `sending` is called just before the
    create goes out."""
    from podcycle import provision, sshkeys, volumes
    from podcycle.config import say
    from podcycle.signals import held_signals
    from podcycle.templates import DEFAULT_FILE, refuse_the_key

    check_settings(settings)
    spec = cluster_spec()
    # Every node gets the file's env (create_body): the key there went to each of them, as
    # template.sync and pod.provision --env refuse it.
    refuse_the_key(spec.get("env"), settings.api_key, f"{DEFAULT_FILE} [env]")
    refuse_the_key(env, settings.api_key, "--env")
    client = backend.client
    check_image_public(client, spec)
    if settings.data_center:
        from podcycle.catalog import check_data_center

        origin = settings.source("data_center")
        check_data_center(client, settings.data_center,
                          "the run's data centre" if origin == "default" else origin)
    gpu_id, offer = choose_gpu(client, settings)
    price = offer.price_per_hour * settings.nodes if offer else None
    guard = provision.spend_guard(settings.max_minutes, settings.max_cost, price)
    env = dict(env or {})
    volume = None
    if settings.network_volume:
        volume = volumes.resolve(client, settings.network_volume)
        env["NETWORK_VOLUME_DIR"] = volumes.VOLUME_PATH
        where = volume.get("dataCenter")
        if settings.data_center and where and settings.data_center != where:
            # The volume's data centre was used in silence, and the run recorded the one
            # asked for: a billed cluster where nobody asked, and a record that was untrue.
            from podcycle.config import undo

            origin = settings.source("data_center")
            given = ("the run's data centre" if origin == "default" else "--data-center"
                     if origin == "--data-center" else f"--data-center (from {origin})")
            # The run's own (its record, no setting to take back): only giving one helps.
            drop = f"give --data-center {where}" if origin == "default" else \
                f"{undo(origin, '--data-center')} (or give {where})"
            raise ConfigError(
                f"{given} {settings.data_center}: network volume {volume.get('name')!r} lives "
                f"in {where}, and a cluster that mounts it runs there",
                f"{drop}, or use a volume in {settings.data_center} (inv volume.list shows "
                "where each lives)")
    if guard:
        env.update({"SPEND_GUARD_MINUTES": f"{guard.minutes:g}",
                    "SPEND_GUARD_REASON": guard.reason})
    key_line = sshkeys.public_line(key_path) if key_path else None
    provision.ensure_ssh_key(backend, key_line, key_path)
    body = create_body(name=name, spec=spec, gpu_id=gpu_id, gpu_count=settings.gpu_count,
                       nodes=settings.nodes, env=env, volume=volume,
                       data_center=settings.data_center)
    with held_signals(say):
        if sending is not None:
            sending()
        made = ProvisionedCluster(client.create_cluster(body), body, gpu_id, offer, guard,
                                  volume)
        if record is not None:
            record(made)
    return made


# -- readiness --------------------------------------------------------------------------------
def _member_line(pod: Pod) -> str:
    return f"rank {pod.node_rank if pod.node_rank is not None else '?'} ({pod.id}) {pod.status}"


def wait_ready(client: RunPodClient, cluster_id: str, *, timeout: float,
               progress: Callable[[str], None], poll: float = 1.0,
               sleep: Callable[[float], None] = time.sleep) -> Cluster:
    """The cluster once every member is RUNNING with direct SSH and a node rank (RunPod has
    no cluster status). One failure path, as provision.wait_ready: a member that stops or
    vanishes, or a timeout, fails with the last log lines of the members not ready."""
    from podcycle.pods import show_last_log_lines

    started = time.monotonic()
    said, last = 0.0, ""
    while True:
        try:
            cluster = client.get_cluster_with_pods(cluster_id)
        except NotFound:
            raise ClusterNotReady(f"cluster {cluster_id} disappeared while starting",
                                  "check inv cluster.list; it may have been deleted") from None
        elapsed = time.monotonic() - started
        members = cluster.pods
        summary = ", ".join(_member_line(p) for p in members) or "no members yet"
        if summary != last or elapsed - said >= 15:
            progress(f"cluster {cluster_id}: {len(members)}/{cluster.pod_count} node(s): "
                     f"{summary} after {elapsed:.0f}s")
            last, said = summary, elapsed
        ready = (len(members) == cluster.pod_count and cluster.pod_count >= 2
                 and all(p.status is PodStatus.RUNNING and p.ssh_direct
                         and p.node_rank is not None for p in members))
        if ready:
            return cluster
        broken = [p for p in members if p.status.stopped or p.status.gone]
        if broken or elapsed > timeout:
            for pod in broken or [p for p in members if p.status is not PodStatus.RUNNING
                                  or not p.ssh_direct]:
                show_last_log_lines(client, pod.id, progress)
            if broken:
                raise ClusterNotReady(
                    f"cluster {cluster_id}: node {', '.join(_member_line(p) for p in broken)} "
                    "instead of starting",
                    "look at its log lines above, fix config/template.toml, then run again")
            raise ClusterNotReady(
                f"cluster {cluster_id} was not ready within {timeout:.0f}s ({summary})",
                "every node must be RUNNING with 22/tcp; raise RUNPOD_READY_TIMEOUT, or look "
                "at the log lines above")
        sleep(poll if elapsed > 2 else min(poll, 0.2))


def members(cluster: Cluster) -> list[ClusterMember]:
    """The run state's record of each node (rank, pod, SSH endpoint)."""
    found = []
    for pod in cluster.pods:
        direct = pod.ssh_direct.check() if pod.ssh_direct else None
        found.append(ClusterMember(
            pod_id=pod.id, rank=pod.node_rank if pod.node_rank is not None else -1,
            ssh_host=direct.host if direct else None, ssh_port=direct.port if direct else None,
            ssh_user=direct.username if direct else None))
    return sorted(found, key=lambda m: m.rank)


# -- delete -----------------------------------------------------------------------------------
def delete_cluster(client: RunPodClient, cluster_id: str, *, attempts: int = 4,
                   sleep: Callable[[float], None] = time.sleep) -> str:
    """Delete a cluster (every member and its disk); "deleted", or "gone" when it was gone
    already. The one path for cluster.delete, the cycle's end and pod.leftovers --stop.
    Transient trouble is retried, within pods.stop_pod's bounds (a try, and the time before
    no new try begins); raises DeleteFailed, which says loudly that it bills."""
    from podcycle.pods import bounded, tried_for, tries_over

    client, give_up = bounded(client)
    last: Exception | None = None
    for attempt in range(attempts):
        try:
            client.delete_cluster(cluster_id)
        except NotFound as exc:
            # Read back: a 404 alone was taken for "gone", exit 0, every node billing on.
            try:
                client.get_cluster(cluster_id)
            except NotFound:
                return "gone"
            except PodCycleError:
                last = exc
            else:
                last = PodCycleError(f"RunPod answered the delete with 404 ({exc.message}), "
                                     "yet still shows the cluster")
        except (RateLimited, Unauthorized, Forbidden) as exc:
            # Every node bills: said at once, as pods.stop_pod does.
            why, way = beyond_retry(exc, "delete", "clusters",
                                    f"Instant Clusters → {cluster_id}",
                                    f"inv cluster.delete {cluster_id} --yes")
            raise DeleteFailed(f"CLUSTER STILL RUNNING: could not delete cluster {cluster_id}: "
                               f"{why}: {exc.message}", f"every node bills: {way}") from None
        except PodCycleError as exc:
            last = exc
        else:
            return _confirm_deleted(client, cluster_id, DELETE_CONFIRM_SECONDS, sleep)
        if tries_over(attempt, attempts, give_up):
            last = last if attempt == attempts - 1 else tried_for(last)
            break
        sleep(1 + attempt)
    raise DeleteFailed(f"CLUSTER STILL RUNNING: could not delete cluster {cluster_id}: "
                       f"{getattr(last, 'message', last)}",
                       f"every node bills: delete it now with inv cluster.delete {cluster_id} "
                       "--yes (or in the RunPod console)")


# How long a delete RunPod accepted may take to show: the members are read back until then.
DELETE_CONFIRM_SECONDS = 30.0


def _confirm_deleted(client: RunPodClient, cluster_id: str, within: float,
                     sleep: Callable[[float], None]) -> str:
    """After an accepted delete: "deleted" once RunPod no longer knows the cluster or shows
    every member terminated, within `within` seconds (counted in the sleeps between reads),
    else DeleteFailed. An answer of 2xx alone is no proof (a gateway's 202, a delete queued
    and dropped): the pods path reads its stop back the same way, and a cluster bills N
    times as much."""
    waited = 0.0
    deadline = time.monotonic() + within  # the reads' own time counts too (a silent API)
    while True:
        try:  # one try a read: the loop is the retry, bounded
            live = [p for p in client.cluster_pods(cluster_id, retry=False)
                    if not p.status.gone]
        except NotFound:
            return "deleted"
        except PodCycleError:  # the read itself failed: tried again until the bound
            live = None
        if live == []:
            return "deleted"
        if waited >= within or time.monotonic() >= deadline:
            shown = (f"still lists {len(live)} of its nodes "
                     f"({', '.join(sorted({p.status.value for p in live}))})"
                     if live else "cannot say whether it is gone")
            raise DeleteFailed(f"CLUSTER STILL RUNNING: RunPod accepted the delete of cluster "
                               f"{cluster_id}, and {within:.0f}s later {shown}",
                               f"every node may bill: look with inv cluster.status "
                               f"{cluster_id}, delete it with inv cluster.delete {cluster_id} "
                               "--yes (or in the RunPod console)")
        step = min(2.0, within - waited)
        sleep(step)
        waited += step


# -- billing ----------------------------------------------------------------------------------
def billed(client: RunPodClient, cluster_id: str | None = None, since: float | None = None
           ) -> dict[str, Any]:
    """What RunPod billed for clusters (/v2/billing/clusters): {"clusters": {id: USD},
    "total": USD, "window": [start, end], "records": n}."""
    from podcycle.pods import billed_by

    return billed_by(lambda **query: client.cluster_billing(cluster_id=cluster_id, **query),
                     "clusterId", "clusters", since)


# -- listing (cluster.* tasks) ----------------------------------------------------------------
SUMMARY_HEADERS = ["ID", "NAME", "NODES", "GPU", "STATUS", "USD/H", "PRIMARY SSH"]


def status_text(cluster: Cluster) -> str:
    counts = cluster.pods_by_status or collections.Counter(str(p.status) for p in cluster.pods)
    return ", ".join(f"{n} {s}" for s, n in sorted(counts.items())) or "no members"


def summary_row(cluster: Cluster) -> tuple:
    primary = cluster.primary
    ssh = (primary.ssh_direct.label() if primary and primary.ssh_direct
           else cluster.primary_ssh or "-")
    return (cluster.id, cluster.name, cluster.pod_count, cluster.gpu_label,
            status_text(cluster), f"{cluster.cost_per_hour:.2f}" if cluster.pods else "-", ssh)


def member_rows(cluster: Cluster) -> list[tuple]:
    return [(p.node_rank if p.node_rank is not None else "?", p.id, p.status.value,
             p.gpu_label, f"{p.cost_per_hour:.2f}",
             p.ssh_direct.label() if p.ssh_direct else "-") for p in cluster.pods]


MEMBER_HEADERS = ["RANK", "POD", "STATUS", "GPU", "USD/H", "SSH"]


def cluster_json(cluster: Cluster) -> dict[str, Any]:
    return {**cluster.raw, "members": [p.to_json() for p in cluster.pods]}


# -- the gang: one trainer per node, failing together -----------------------------------------
@dataclass
class NodeFailure:
    rank: int
    pod_id: str
    why: str
    lines: list[str] = field(default_factory=list)
    # The node answered (cycle_train.sh's exit code came back): it can still be reached.
    answered: bool = False

    def as_dict(self) -> dict[str, Any]:
        return {"rank": self.rank, "pod_id": self.pod_id, "why": self.why,
                "last_lines": self.lines}

    def text(self) -> str:
        return f"node rank {self.rank} (pod {self.pod_id}) {self.why}"


class LineTap:
    """A text stream for Fabric's out_stream/err_stream: keeps the last lines of one node and
    passes each line on to `echo` (rank 0's log is streamed live)."""

    def __init__(self, echo: Callable[[str], None] | None, keep: int = LAST_LINES) -> None:
        self.echo = echo
        self.lines: collections.deque[str] = collections.deque(maxlen=keep)
        self._partial = ""
        self._lock = threading.Lock()

    def write(self, text: str) -> int:
        with self._lock:
            self._partial += text
            *done, self._partial = self._partial.split("\n")
            for line in done:
                # A node's line is the pod's text: kept and echoed with its control
                # characters escaped (a terminal never obeys them, no line is forged).
                line = printable(line)
                self.lines.append(line)
                if self.echo:
                    self.echo(line)
        return len(text)

    def flush(self) -> None:
        pass

    def last(self) -> list[str]:
        with self._lock:
            return list(self.lines) + ([printable(self._partial)] if self._partial else [])


# launch(member, tap) -> exit code of the node's cycle_train.sh; raises on a lost session.
Launch = Callable[[ClusterMember, LineTap], int]


class GangFailed(PodCycleError):
    """A node of the gang failed or vanished: the others were stopped."""

    def __init__(self, failure: NodeFailure, stopped: list[str]) -> None:
        self.failure = failure
        self.stopped = stopped
        tail = "; ".join(line.strip() for line in failure.lines[-5:] if line.strip())
        super().__init__(
            f"{failure.text()}; "
            + (f"the other node(s)' trainers: {', '.join(stopped)}" if stopped
               else "no other node's trainer was left to stop")
            + (f"; its last lines: {tail}" if tail else ""),
            "the cluster is deleted unless --keep-pod; continue from the last checkpoint "
            "with --resume (a new cluster)")


class Gang:
    """cycle_train.sh on every node at once, each in its own thread and SSH session; the
    first node that exits non-zero, whose `launch` raises (a session lost for good: `launch`
    reconnects after a drop), or that vanishes from the API (`vanished`,
    asked every MEMBER_CHECK_SECONDS) fails the whole gang: `stop` is called for every other
    node at once (a pod-side kill of its trainer's process group), never waiting out the
    collective timeouts. `run` returns the exit codes by rank when every node succeeded."""

    def __init__(self, nodes: list[ClusterMember], launch: Launch,
                 stop: Callable[[ClusterMember], None],
                 vanished: Callable[[], list[tuple[ClusterMember, str]]] | None = None, *,
                 echo: Callable[[str], None] | None = None,
                 say: Callable[[str], None] = print,
                 check_every: float = MEMBER_CHECK_SECONDS,
                 reconnect_grace: float = RECONNECT_OPEN_SECONDS + 30,
                 probe: Callable[[ClusterMember], str | None] | None = None) -> None:
        self.nodes = nodes
        self.launch = launch
        self.stop = stop
        self.vanished = vanished
        self.echo = echo
        self.say = say
        self.check_every = check_every
        self.taps = {m.pod_id: LineTap(echo if m.rank == 0 else None) for m in nodes}
        self.reconnect_grace = reconnect_grace
        # Asked of another node when one fails with an exit code and none is known lost:
        # None while it is there, else why it is not (unreachable, its trainer gone).
        self.probe = probe
        # Nodes whose session dropped and that `launch` is reaching again, by rank: why; and
        # those of them it gave up on (`launch` raised).
        self._lost: dict[int, str] = {}
        self._gave_up: set[int] = set()
        self._lost_lock = threading.Lock()

    def connection_lost(self, member: ClusterMember, why: str) -> None:
        """`launch` lost `member`'s session and reconnects (`reconnected` once it is reached
        again). A failure of another node meanwhile waits for the outcome: a node that died
        takes its session with it at once, and its peers' collectives fail a moment later, so
        the failure is the lost node's if it cannot be reached again."""
        with self._lost_lock:
            self._lost[member.rank] = why

    def reconnected(self, member: ClusterMember) -> None:
        with self._lost_lock:
            self._lost.pop(member.rank, None)

    def _blame(self, member: ClusterMember, why: str, others: list[ClusterMember]
               ) -> tuple[ClusterMember, str, bool]:
        """The node a failure of `member` is named after: itself, unless another node is
        being reached again; then, once each such node is reached or given up on (at most
        `reconnect_grace` seconds), the first that was not. With none being reached again,
        the other nodes still running are asked (`probe`): the first not there is named (a
        dead node's session may end only after its peers' collectives failed). And whether
        to stop the node named too: one still being reached when the wait ended may train
        on (a blip)."""
        deadline = time.monotonic() + self.reconnect_grace
        while True:
            with self._lost_lock:
                lost = {rank: text for rank, text in self._lost.items() if rank != member.rank}
                dead = sorted(rank for rank in lost if rank in self._gave_up)
            if dead or not lost or time.monotonic() >= deadline:
                break
            time.sleep(0.1)
        if not lost:
            for node, gone in self._not_there(others):
                return node, f"{gone}; node rank {member.rank} then {why}", False
            return member, why, False
        rank = (dead or sorted(lost))[0]
        node = next(m for m in self.nodes if m.rank == rank)
        return node, (f"lost its SSH session ({lost[rank]}) and was not reached again; node "
                      f"rank {member.rank} then {why}"), not dead

    def _not_there(self, others: list[ClusterMember]) -> list[tuple[ClusterMember, str]]:
        """`probe` of each other node at once, by rank: those not there, and why."""
        if self.probe is None or not others:
            return []
        answers: dict[int, str | None] = {}

        def ask(node: ClusterMember) -> None:
            try:
                answers[node.rank] = self.probe(node)
            except Exception:  # noqa: BLE001 - a probe that breaks tells nothing
                answers[node.rank] = None

        threads = [threading.Thread(target=ask, args=(node,), daemon=True) for node in others]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(PROBE_OPEN_SECONDS + 20)
        return [(node, answers[node.rank]) for node in sorted(others, key=lambda m: m.rank)
                if answers.get(node.rank)]

    def _node(self, member: ClusterMember, events: queue.Queue) -> None:
        code: int | None
        error: str | None = None
        try:
            code = self.launch(member, self.taps[member.pod_id])
        except BaseException as exc:  # noqa: BLE001 - handed to the gang's thread
            code, error = None, getattr(exc, "message", None) or str(exc)
        with self._lost_lock:
            # A node being reached again that `launch` gave up on, or whose trainer had
            # ended when it was reached.
            if code != 0 and member.rank in self._lost:
                self._gave_up.add(member.rank)
        events.put((member, code, error))

    def run(self) -> dict[int, int]:
        events: queue.Queue = queue.Queue()
        for member in self.nodes:
            threading.Thread(target=self._node, args=(member, events), daemon=True,
                             name=f"node-{member.rank}").start()
        codes: dict[int, int] = {}
        next_check = time.monotonic() + self.check_every
        while len(codes) < len(self.nodes):
            try:
                member, code, error = events.get(timeout=max(0.05, min(
                    1.0, next_check - time.monotonic())))
            except queue.Empty:
                if self.vanished and time.monotonic() >= next_check:
                    next_check = time.monotonic() + self.check_every
                    try:
                        gone = self.vanished()
                    except PodCycleError:
                        gone = []  # the API is unreachable: the SSH sessions still tell
                    if gone:
                        member, why = gone[0]
                        self._fail(member, why, running=self._running(codes))
                continue
            if code == 0:
                codes[member.rank] = 0
                continue
            why = (f"lost its SSH session: {error}" if error is not None
                   else f"failed: cycle_train.sh exited {code}")
            others = self._running(codes, exclude=member)
            blamed, why, stop_it = self._blame(member, why, others)
            self._fail(blamed, why, running=others,
                       stop_it=stop_it, answered=blamed is member and error is None)
        return codes

    def _running(self, codes: dict[int, int], exclude: ClusterMember | None = None
                 ) -> list[ClusterMember]:
        return [m for m in self.nodes if m.rank not in codes and m is not exclude]

    def _fail(self, member: ClusterMember, why: str, running: list[ClusterMember], *,
              stop_it: bool = False, answered: bool = False) -> None:
        failure = NodeFailure(member.rank, member.pod_id, why,
                              self.taps[member.pod_id].last(), answered)
        others = [m for m in running if stop_it or m is not member]
        if others:
            self.say(f"{failure.text()}: stopping the trainers on "
                     f"{', '.join(f'rank {m.rank}' for m in others)} now")
        stopped: list[str] = []
        threads = []

        def stop_one(node: ClusterMember) -> None:
            try:
                self.stop(node)
                stopped.append(f"rank {node.rank} stopped")
            except BaseException as exc:  # noqa: BLE001 - the cluster is deleted next anyway
                stopped.append(f"rank {node.rank}: stop failed "
                               f"({getattr(exc, 'message', exc)})")

        for node in others:
            thread = threading.Thread(target=stop_one, args=(node,), daemon=True)
            thread.start()
            threads.append(thread)
        for thread in threads:
            thread.join(60)
        raise GangFailed(failure, sorted(stopped))
