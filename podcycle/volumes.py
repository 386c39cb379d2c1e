"""Network volumes (/v2/network-volumes): storage that outlives pods. A pod mounts one at
VOLUME_PATH; the cycle then keeps the dataset (and its encoded cache) and the run's
checkpoints there, so a new pod finds them. A volume lives in one data centre, and so does
every pod that mounts it."""

from __future__ import annotations

from typing import Any

from podcycle.errors import PodCycleError

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
                            f"({', '.join(v['id'] for v in named)})",
                            "pass the volume's id instead (inv volume.list)")
    known = ", ".join(f"{v['name']} ({v['id']})" for v in volumes[:8]) or "none"
    raise PodCycleError(f"no network volume named or with id {name_or_id!r}",
                        f"volumes on the account: {known}; make one with inv volume.create")


def pod_fields(volume: dict[str, Any]) -> dict[str, Any]:
    """What a pod create needs to mount the volume: the mount and the volume's data centre."""
    return {"mounts": {"network": [{"volumeId": volume["id"], "path": VOLUME_PATH}]},
            "dataCenterIds": [volume["dataCenter"]]}


def record(volume: dict[str, Any]) -> dict[str, Any]:
    return {"id": volume["id"], "name": volume["name"], "dataCenter": volume["dataCenter"]}
