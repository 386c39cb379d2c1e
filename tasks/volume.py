"""Network volumes: storage that outlives pods (GET/POST/DELETE /v2/network-volumes)."""

from podcycle.cli import echo, emit_json, guarded, number, runpod_client, settings, table, task

COMMON = {
    "backend": "auto|runpod|local (default: auto)",
    "api_key": "RunPod API key (default: RUNPOD_API_KEY, then keyring)",
    "json": "print JSON on stdout (default: table)",
}


@task(name="list", help=COMMON)
@guarded
def list_(c, backend=None, api_key=None, json=False):
    """List the account's network volumes: id, name, size, data centre, type."""

    volumes = runpod_client(c, backend, api_key).list_volumes()
    if json:
        emit_json(volumes)
        return
    table([(v["id"], v["name"], f"{v['size']} GB", v["dataCenter"], v.get("type", "-"))
           for v in volumes], ["ID", "NAME", "SIZE", "DATA CENTRE", "TYPE"])


@task(help={"name": "the volume's name",
            "size": "size in GB, 10 to 4096 (default: 50)",
            "data_center": "data centre id, e.g. EU-RO-1 (no default, required: pods that "
                           "mount the volume run there; the local RunPod has LOCAL-1)",
            "type": "STANDARD or HIGH_PERFORMANCE (default: the data centre's default)",
            **COMMON})
@guarded
def create(c, name, size=None, data_center=None, type=None, backend=None, api_key=None,
           json=False):
    """Create a network volume in one data centre."""
    import shlex

    from podcycle import volumes
    from podcycle.catalog import check_data_center
    from podcycle.config import check_name, say
    from podcycle.errors import ConfigError
    from podcycle.volumes import PINNED

    check_name("the volume name", name)
    size = number("size", size, minimum=10, maximum=4096, example=50) or 50
    if not data_center:
        raise ConfigError("--data-center is required: a volume lives in one data centre",
                          "pick one with GPU stock (inv gpu.search shows stock), e.g. "
                          "--data-center EU-RO-1 (local RunPod: LOCAL-1)")
    body = {"name": name, "size": size, "dataCenter": data_center}
    if type:
        if type.upper() not in ("STANDARD", "HIGH_PERFORMANCE"):
            raise ConfigError(f"--type {type!r} is no volume type",
                              "use --type STANDARD (the default) or --type HIGH_PERFORMANCE")
        body["type"] = type.upper()
    client = runpod_client(c, backend, api_key)
    check_data_center(client, data_center)
    volume = volumes.create(client, body)  # one volume of the name, even in a race
    say(f"note: {PINNED.format(dc=volume['dataCenter'])}")
    if json:
        emit_json(volume)
        return
    echo(f"created network volume {volume['id']} ({volume['name']}, {volume['size']} GB, "
         f"{volume['dataCenter']}); use it with --network-volume {shlex.quote(volume['name'])}")


@task(help={"volume": "the volume's name or id",
            "yes": "really delete it and all data on it; a volume that a pod mounts "
                   "(running or stopped) is refused either way (default: refuse)",
            **COMMON})
@guarded
def delete(c, volume, yes=False, backend=None, api_key=None, json=False):
    """Delete a network volume and everything on it (asks for --yes)."""
    from podcycle.backend import connect
    from podcycle.errors import PodCycleError
    from podcycle.leftovers import held_text, lost_with_volume_line, uncollected_model
    from podcycle.volumes import check_deletable, resolve

    s = settings(c, backend=backend, api_key=api_key)
    client = connect(s).client  # the settings resolved once: the runs' folder is theirs
    found = resolve(client, volume)
    check_deletable(client, found)  # a pod that mounts it, running or stopped, keeps it
    holder = uncollected_model(s, volume_id=found["id"])
    if not yes and holder:
        from podcycle.cycle import resume_hint

        raise PodCycleError(f"not deleted: volume {found['id']} ({found['name']}) holds "
                            f"{held_text(holder)}, which would go with every other file on "
                            "it", f"bring the model home first: {resume_hint(holder[0])} "
                            f"(or run again with --yes: inv volume.delete {found['id']} --yes)",
                            code=2)
    if not yes:
        raise PodCycleError(f"not deleted: volume {found['id']} ({found['name']}, "
                            f"{found['size']} GB) and every file on it would be gone",
                            f"run again with --yes: inv volume.delete {found['id']} --yes",
                            code=2)
    client.delete_volume(found["id"])
    if holder:
        from podcycle.config import say

        say(lost_with_volume_line(holder))
    if json:
        emit_json({"deleted": found["id"], "name": found["name"]})
        return
    echo(f"deleted network volume {found['id']} ({found['name']})")
