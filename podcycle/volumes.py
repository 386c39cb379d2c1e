"""Network volumes (/v2/network-volumes): storage that outlives pods. A pod mounts one at
VOLUME_PATH; the cycle then keeps the dataset (and its encoded cache) and the run's
checkpoints there, so a new pod finds them. A volume lives in one data centre, and so does
every pod that mounts it."""

from __future__ import annotations

import shlex
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from podcycle.errors import ConfigError, PodCycleError
from podcycle.redact import printable

if TYPE_CHECKING:
    from podcycle.runpod.models import Pod
    from podcycle.runs import VolumeRef

VOLUME_PATH = "/runpod-volume"  # where pods mount the volume (NETWORK_VOLUME_DIR)
PINNED = ("a network volume pins its pods to its data centre ({dc}): GPU stock there may be "
          "thinner than across all of RunPod")


def resolve(client: Any, name_or_id: str) -> dict[str, Any]:
    """The volume with this id, or the only one with this name."""
    volumes = client.list_volumes()
    by_id = [v for v in volumes if v.get("id") == name_or_id]
    if by_id:
        return by_id[0]
    named = [v for v in volumes if v.get("name") == name_or_id]
    if len(named) == 1:
        return named[0]
    if named:
        raise PodCycleError(f"{len(named)} network volumes are named {name_or_id!r} "
                            f"({', '.join(printable(v['id']) for v in named)})",
                            "pass the volume's id instead (inv volume.list)")
    known = ", ".join(f"{printable(v.get('name'))} ({printable(v.get('id'))})"
                      for v in volumes[:8]) or "none"
    # A name that names nothing is refused input (exit 2), as a run's or a registry's is.
    raise ConfigError(f"no network volume named or with id {name_or_id!r}",
                      f"volumes on the account: {known}; make one with inv volume.create")


# How long a create waits for another create of the same name on this machine.
CREATE_LOCK_WAIT = 120.0


@contextmanager
def one_create_of(name: str, wait: float | None = None) -> Iterator[None]:
    """Creates of one volume name on this machine, one at a time: an OwnerLock in the cache
    folder (freed when its holder dies), so that the second looks only once the first's
    volume is listed, and is refused. Without a cache folder to lock in, nothing is held."""
    import hashlib
    import time

    from podcycle.config import cache_root
    from podcycle.owner_lock import OwnerLock

    wait = CREATE_LOCK_WAIT if wait is None else wait
    lock = OwnerLock(cache_root() / "locks" /
                     f"volume-{hashlib.sha256(name.encode()).hexdigest()[:16]}")
    give_up = time.monotonic() + wait
    while True:
        try:
            holder = lock.acquire(command="volume.create")
        except OSError:
            break  # no cache folder to lock in
        if holder is None:
            break
        if time.monotonic() >= give_up:
            raise PodCycleError(f"another volume.create of {name!r} on this machine has not "
                                f"finished in {wait:g}s", "let it finish (inv volume.list "
                                "shows what it made), then run this again")
        time.sleep(0.1)  # the lock's holder is a create call: seconds at most
    try:
        yield
    finally:
        lock.release()


def create(client: Any, body: dict[str, Any]) -> dict[str, Any]:
    """A new volume of a name no other volume has (--network-volume NAME finds one by its
    name: two would be ambiguous, each billed for its size). Creates of one name on this
    machine (two terminals, a script's loop) take turns (one_create_of): each saw none, and
    each made one. Across machines, the name is looked up again after the create: a create
    that sees another volume of the name with a lower id deletes its own, still empty, and
    says so (a race is caught only where that look sees both)."""
    from podcycle.errors import ConfigError

    name = body["name"]
    with one_create_of(name):
        volumes = client.list_volumes()
        same = [v for v in volumes if v.get("name") == name]
        if same:
            raise ConfigError(f"a network volume named {name!r} exists already "
                              f"({same[0]['id']}, {same[0].get('dataCenter')})",
                              f"use it (--network-volume {shlex.quote(name)}), or pick "
                              "another name")
        # --network-volume and volume.delete take an id before a name: a volume named as
        # another's id could never be named, and a delete by that "name" hit the other one.
        taken = [v for v in volumes if v.get("id") == name]
        if taken:
            raise ConfigError(f"{name!r} is the id of network volume {taken[0].get('name')!r}: "
                              "a volume of that name would be taken for it",
                              "pick another name")
        volume = client.create_volume(body)
        named = sorted(v["id"] for v in client.list_volumes() if v.get("name") == name)
    if named and named[0] != volume["id"]:
        client.delete_volume(volume["id"])
        raise ConfigError(f"another command created network volume {name!r} at the same time "
                          f"({named[0]}): the one this made ({volume['id']}) is deleted again",
                          f"use it (--network-volume {shlex.quote(name)}), or pick another "
                          "name")
    return volume


def pod_fields(volume: dict[str, Any]) -> dict[str, Any]:
    """What a pod create needs to mount the volume: the mount and the volume's data centre."""
    return {"mounts": {"network": [{"volumeId": volume["id"], "path": VOLUME_PATH}]},
            "dataCenterIds": [volume["dataCenter"]]}


def record(volume: dict[str, Any]) -> VolumeRef:
    from podcycle.runs import VolumeRef

    return VolumeRef(id=volume["id"], name=volume["name"], dataCenter=volume["dataCenter"])


def mounted_volume_ids(pod: Pod) -> list[str]:
    """The network volumes a pod mounts: the spec's `Pod.mounts.network[].volumeId` (a stopped
    pod keeps its mount, and mounts it again when it restarts)."""
    return list(pod.network_volume_ids)


def pods_mounting(client: Any, volume_id: str) -> list[Pod]:
    """Every pod on the account that mounts the volume, running or stopped, cluster members
    included (GET /v2/pods hides them unless asked: a cluster's nodes mount its volume)."""
    return [pod for pod in client.list_pods(include_cluster_pods=True)
            if not pod.status.gone and volume_id in mounted_volume_ids(pod)]


def check_deletable(client: Any, volume: dict[str, Any]) -> None:
    """Refuse to delete a volume a pod still mounts: a running pod would lose its files under
    it, a stopped one would restart onto nothing."""
    from podcycle.runpod.errors import Forbidden

    try:
        users = pods_mounting(client, volume["id"])
    except Forbidden:
        raise PodCycleError(
            f"not deleted: cannot check which pods mount network volume {volume['id']} "
            "(this API key lacks the pods scope), and deleting a mounted volume loses data",
            "use a key with pods access (RunPod console → Settings → API Keys; inv "
            "api.doctor shows the scopes)") from None
    if not users:
        return
    listed = ", ".join(
        f"{pod.id} ({printable(pod.name or 'no name')}, {pod.status}"
        f"{f', node of cluster {pod.cluster_id}' if pod.cluster_id else ''})" for pod in users[:5])
    more = f" and {len(users) - 5} more" if len(users) > 5 else ""
    alone = [pod for pod in users if not pod.cluster_id]
    clusters = sorted({pod.cluster_id for pod in users if pod.cluster_id})
    ways = ([f"inv pod.terminate {alone[0].id} --yes; stopping is not enough, a stopped pod "
             "keeps its mount"] if alone else [])
    ways += [f"inv cluster.delete {cluster_id} --yes: a cluster's nodes go only with it"
             for cluster_id in clusters[:2]]
    end = "; ".join(ways)
    raise PodCycleError(
        f"not deleted: network volume {volume['id']} ({printable(volume['name'])}) is mounted by "
        f"{len(users)} pod(s): {listed}{more}; their data lives on it",
        f"collect what you need, then terminate those pods first ({end}) and run inv "
        f"volume.delete {volume['id']} --yes again")
