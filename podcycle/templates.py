"""The pod template as code: a TOML file (config/template.toml) is the truth, and `sync` makes
RunPod's template of that name match it (POST /v2/templates to create, PATCH
/v2/templates/{id} with only the changed fields to update), showing the difference first."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from podcycle.config import check_name, toml_loads
from podcycle.errors import ConfigError, PodCycleError
from podcycle.redact import holds_key, is_secret_name, mask_field, printable, register_secret
from podcycle.runpod.models import env_problems, ports_problems

DEFAULT_FILE = Path("config/template.toml")
# CreateTemplateRequest's fields (RunPod REST v2), with the type each must have.
FIELDS: dict[str, type | tuple[type, ...]] = {
    "name": str, "image": str, "args": str, "disk": int, "env": dict, "ports": list,
    "registry": (str, type(None)), "mounts": dict, "startSsh": bool, "startJupyter": bool,
    "category": str, "public": bool, "serverless": bool, "allowedCudaVersions": list,
}
CATEGORIES = ("NVIDIA", "AMD", "CPU")
CUDA_VERSION = re.compile(r"\d+\.\d+")
NETWORK_MOUNT = (
    "a template cannot mount a network volume (RunPod's TemplateMounts takes only "
    "[mounts.persistent]; a create or update with mounts.network is refused with 422)")
NETWORK_MOUNT_REMEDY = (
    "remove [mounts.network] from the file and pass --network-volume NAME to the run "
    "(inv pod.provision / cycle.start --network-volume NAME; volumes: inv volume.list)")
# What a field's kind is called in a refusal (`disk must be an integer`, not `a int`).
_KIND_WORDS = {int: "an integer", str: "a string", bool: "true or false", list: "a list",
               dict: "a table ([name] and its lines)"}


def read_text(path: Path) -> str:
    """The file's text, or a one-line refusal (missing, unreadable, not UTF-8)."""
    if path.is_dir():
        raise ConfigError(f"the template file {path} is a folder",
                          f"pass the file in it, e.g. --file {path / 'template.toml'}")
    from podcycle.files import MAX_CONFIG_BYTES, read_regular, toml_text

    if not path.exists() and not path.is_symlink():
        raise ConfigError(f"template file not found: {path}",
                          "pass --file, or restore config/template.toml from the repository")
    if not path.exists():  # "check the file's permissions" sent the user the wrong way
        raise ConfigError(f"the template file {path} is a link that leads to no file (it "
                          f"points at {os.readlink(path)}: missing, or a loop of links)",
                          "point the link at the file, or pass the file itself with --file")
    try:
        raw = read_regular(path, limit=MAX_CONFIG_BYTES)  # a FIFO, /dev/zero: refused
    except OSError as exc:
        raise ConfigError(f"cannot read template file {path}: {exc.strerror}",
                          "check the file's permissions, or pass another --file") from None
    return toml_text(raw, str(path))


def _mount_problems(mounts: Any) -> list[str]:
    if not isinstance(mounts, dict):
        return []
    problems = [f"mounts.{key}: unknown mount (only [mounts.persistent])"
                for key in mounts if key not in ("persistent", "network")]
    persistent = mounts.get("persistent")
    if persistent is not None and not (isinstance(persistent, dict)
                                       and set(persistent) == {"size", "path"}
                                       and isinstance(persistent.get("size"), int)
                                       and not isinstance(persistent["size"], bool)
                                       and persistent["size"] >= 10
                                       and isinstance(persistent.get("path"), str)
                                       and persistent["path"].startswith("/")):
        problems.append("mounts.persistent needs exactly size (GB, at least 10) and path "
                        "(absolute)")
    elif persistent is not None and (persistent["path"].rstrip("/") == "" or any(
            part in (".", "..") for part in persistent["path"].split("/"))):
        # Synced as given: "/" put the volume over the whole container, and
        # "/workspace/../etc" over its /etc (a hunt): no pod of it starts as the image means.
        problems.append(f"mounts.persistent.path {printable(persistent['path'])!r} must be a "
                        "folder under / with no '.' or '..' in it (e.g. /workspace)")
    return problems


# The container disk's bound: the largest network volume volume.create makes, too. The spec
# gives none; a 10^20 GB disk was created, and every pod made from it then failed.
MAX_DISK_GB = 4096


def load(path: Path, image: str | None = None) -> dict[str, Any]:
    """The template file as a create body, checked field by field against what RunPod accepts
    and what a pod can start with (a bad file is refused before any request)."""
    path = Path(path)
    if image is not None:  # the flag's own: its refusal named the file ("fix the file")
        from podcycle.image import reference_problem

        problem = reference_problem(image) if image.strip() else "image is empty"
        if problem:
            raise ConfigError(f"--image: {problem}", "fix --image, or leave it out to use the "
                              "file's image")
    text = read_text(path)
    spec = toml_loads(text, str(path), "fix the file and run again")
    env = spec.get("env")
    if isinstance(env, dict):  # secret-looking values are masked wherever they could show
        for key, value in env.items():
            if isinstance(value, str) and is_secret_name(key):
                register_secret(value)
    if image:
        spec["image"] = image
    mounts = spec.get("mounts")
    if isinstance(mounts, dict) and "network" in mounts:
        raise ConfigError(f"{path}: [mounts.network]: {NETWORK_MOUNT}", NETWORK_MOUNT_REMEDY)
    problems = []
    for key, value in spec.items():
        kind = FIELDS.get(key)
        if kind is None:
            problems.append(f"unknown field {key!r} (known: {', '.join(sorted(FIELDS))})")
        elif not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            shown_value = f"a {type(value).__name__}" if key == "env" else repr(value)
            problems.append(f"{key} must be {_KIND_WORDS.get(kind, 'a string')}, not "
                            f"{shown_value}")
    for key in ("name", "image"):
        if not (isinstance(spec.get(key), str) and spec[key].strip()):
            problems.append(f"{key} is required (a non-empty string)")
    if isinstance(spec.get("name"), str) and spec["name"].strip():
        try:
            check_name("name", spec["name"])
        except ConfigError as exc:
            problems.append(exc.message)
    if isinstance(spec.get("ports"), list):
        problems += ports_problems(spec["ports"])
    if isinstance(env, dict):
        problems += env_problems(env)
    if isinstance(spec.get("disk"), int) and not 1 <= spec["disk"] <= MAX_DISK_GB:
        problems.append(f"disk must be from 1 to {MAX_DISK_GB} GB, not {spec['disk']}")
    if isinstance(spec.get("image"), str) and spec["image"].strip():
        from podcycle.image import reference_problem

        # A pod made from it failed its pull and sat billed (or the text took a flag's form).
        problem = reference_problem(spec["image"])
        if problem:
            problems.append(problem)
    problems += _mount_problems(mounts)
    if spec.get("category", "NVIDIA") not in CATEGORIES:
        problems.append(f"category must be one of {', '.join(CATEGORIES)}")
    cuda = spec.get("allowedCudaVersions")
    if isinstance(cuda, list):
        problems += [f"allowedCudaVersions: {v!r} is not MAJOR.MINOR (e.g. \"12.8\")"
                     for v in cuda if not (isinstance(v, str) and CUDA_VERSION.fullmatch(v))]
    if isinstance(spec.get("registry"), str) and spec["registry"] != spec["registry"].strip():
        problems.append("registry: a credential name without surrounding spaces")
    if problems:
        raise ConfigError(f"{path}: " + "; ".join(problems), "fix the file and run again")
    return spec


def refuse_the_key(env: dict[str, Any] | None, key: str | None, where: str) -> None:
    """A pod's env value that is, or holds, the RunPod API key the task uses is refused
    (hunt): a template synced with it handed the key to every pod made from it, and to
    anyone who may read the template (`public = true`), while the diff showed only `****`.
    No pod-side code needs the key; the spend guard stops a pod without it."""
    for name, value in (env or {}).items():
        if isinstance(value, str) and holds_key(value, key):
            raise ConfigError(f"{where}: {name} is, or holds, the RunPod API key: every pod "
                              "given it (and whoever may read a template that holds it) "
                              "could spend with this account, so it is not sent",
                              f"remove {name}'s value (pasted in the wrong place?); nothing "
                              "on the pod needs the key")


def shown(key: str, value: Any) -> str:
    """One side of a change as text: the same masking as the --json output."""
    return "(absent)" if value is None else repr(mask_field(key, value))


@dataclass
class Change:
    field: str
    before: Any
    after: Any

    def line(self) -> str:
        return f"{self.field}: {shown(self.field, self.before)} → {shown(self.field, self.after)}"

    def as_json(self) -> dict[str, Any]:
        return {"field": self.field, "before": mask_field(self.field, self.before),
                "after": mask_field(self.field, self.after)}


@dataclass
class Plan:
    action: str                      # create | update | none
    template: dict[str, Any] | None  # the live template (update / none)
    changes: list[Change] = field(default_factory=list)
    body: dict[str, Any] = field(default_factory=dict)  # what would be sent


def plan(spec: dict[str, Any], templates: list[dict[str, Any]]) -> Plan:
    """Compare the file with the account's templates of that name."""
    same = [t for t in templates if t.get("name") == spec["name"]]
    if len(same) > 1:
        raise PodCycleError(f"{len(same)} templates are named {spec['name']!r} "
                            f"({', '.join(printable(t['id']) for t in same)}): sync does "
                            "not know which",
                            "rename or delete the extra ones in RunPod, then sync again")
    if not same:
        changes = [Change(k, None, v) for k, v in spec.items() if k != "name"]
        return Plan("create", None, changes, dict(spec))
    live = same[0]
    changes, body = [], {}
    for key, wanted in spec.items():
        have = live.get(key)
        if key == "env":
            have = have or {}
            keyed = [Change(f"env.{k}", have.get(k), wanted.get(k))
                     for k in sorted(set(have) | set(wanted)) if have.get(k) != wanted.get(k)]
            if keyed:
                changes += keyed
                body["env"] = wanted  # PATCH replaces the env as a whole: the file's
        elif key == "mounts" and wanted == {}:
            continue  # the spec: `mounts: {}` in a PATCH leaves the mount (no change to make)
        elif have != wanted:
            changes.append(Change(key, have, wanted))
            body[key] = wanted
    return Plan("update" if changes else "none", live, changes, body)


def resolve_registry(client: Any, spec: dict[str, Any]) -> dict[str, Any]:
    """The spec with `registry = "NAME"` replaced by that credential's id (what RunPod's
    template field holds); `registry = ""` means none. Unknown names are refused here,
    before any change."""
    if "registry" not in spec:
        return spec
    from podcycle import registries

    name = spec["registry"]
    resolved = registries.resolve(client, name).id if name else None
    return {**spec, "registry": resolved}


def sync(client: Any, spec: dict[str, Any], dry_run: bool) -> tuple[Plan, dict[str, Any] | None]:
    """Apply the plan unless dry_run; returns it and the template as RunPod now has it."""
    spec = resolve_registry(client, spec)
    current = plan(spec, client.list_templates())
    if dry_run or current.action == "none":
        return current, current.template
    if current.action == "create":
        return current, client.create_template(current.body)
    return current, client.update_template(current.template["id"], current.body)


def find(client: Any, name_or_id: str) -> dict[str, Any]:
    """The template with this id, or the only one with this name (several of one name are
    refused with their ids: picking one would show the wrong template half the time)."""
    templates = client.list_templates()
    by_id = [t for t in templates if t.get("id") == name_or_id]
    if by_id:
        return by_id[0]
    named = [t for t in templates if t.get("name") == name_or_id]
    if len(named) > 1:
        raise PodCycleError(f"{len(named)} templates are named {name_or_id!r} "
                            f"({', '.join(printable(t['id']) for t in named)})",
                            "pass one of those ids instead (inv template.show ID)")
    if not named:
        names = ", ".join(sorted(printable(t["name"]) for t in templates)[:10]) or "none"
        # A name that names nothing is refused input (exit 2), as a run's is.
        raise ConfigError(f"no template named or with id {name_or_id!r}",
                          f"templates on the account: {names} (inv template.list)")
    return named[0]
