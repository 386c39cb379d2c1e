"""The pod template as code: a TOML file (config/template.toml) is the truth, and `sync` makes
RunPod's template of that name match it (POST /v2/templates to create, PATCH
/v2/templates/{id} with only the changed fields to update), showing the difference first."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from podcycle.errors import ConfigError, PodCycleError
from podcycle.redact import MASK, SECRET_NAME

DEFAULT_FILE = Path("config/template.toml")
# CreateTemplateRequest's fields (RunPod REST v2), with the type each must have.
FIELDS: dict[str, type | tuple[type, ...]] = {
    "name": str, "image": str, "args": str, "disk": int, "env": dict, "ports": list,
    "registry": (str, type(None)), "mounts": dict, "startSsh": bool, "startJupyter": bool,
    "category": str, "public": bool, "serverless": bool, "allowedCudaVersions": list,
}
PORT = re.compile(r"[1-9][0-9]{0,4}/(http|tcp)")
CATEGORIES = ("NVIDIA", "AMD", "CPU")


def load(path: Path, image: str | None = None) -> dict[str, Any]:
    """The template file as a create body, checked field by field (a bad file is refused
    before any request)."""
    import tomllib

    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"template file not found: {path}",
                          "pass --file, or restore config/template.toml from the repository")
    try:
        spec = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML ({exc})", "fix the file and run again"
                          ) from None
    if image:
        spec["image"] = image
    problems = []
    for key, value in spec.items():
        kind = FIELDS.get(key)
        if kind is None:
            problems.append(f"unknown field {key!r} (known: {', '.join(sorted(FIELDS))})")
        elif not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            problems.append(f"{key} must be a {getattr(kind, '__name__', 'value')}, not "
                            f"{value!r}")
    for key in ("name", "image"):
        if not spec.get(key):
            problems.append(f"{key} is required")
    for port in spec.get("ports", []) if isinstance(spec.get("ports"), list) else []:
        if not isinstance(port, str) or not PORT.fullmatch(port):
            problems.append(f"port {port!r} is not NUMBER/http or NUMBER/tcp")
    env = spec.get("env", {})
    if isinstance(env, dict):
        problems += [f"env {k} must be a string, not {v!r}" for k, v in env.items()
                     if not isinstance(v, str)]
    if isinstance(spec.get("disk"), int) and spec["disk"] <= 0:
        problems.append("disk must be a positive number of GB")
    persistent = (spec.get("mounts") or {}).get("persistent") if isinstance(
        spec.get("mounts"), dict) else None
    if persistent is not None and not (isinstance(persistent, dict)
                                       and isinstance(persistent.get("size"), int)
                                       and persistent["size"] >= 10
                                       and isinstance(persistent.get("path"), str)):
        problems.append("mounts.persistent needs size (GB, at least 10) and path")
    if spec.get("category", "NVIDIA") not in CATEGORIES:
        problems.append(f"category must be one of {', '.join(CATEGORIES)}")
    if problems:
        raise ConfigError(f"{path}: " + "; ".join(problems), "fix the file and run again")
    return spec


def shown(key: str, value: Any) -> str:
    if key.startswith("env.") and SECRET_NAME.search(key) and value:
        return MASK
    return "(absent)" if value is None else repr(value)


@dataclass
class Change:
    field: str
    before: Any
    after: Any

    def line(self) -> str:
        return f"{self.field}: {shown(self.field, self.before)} → {shown(self.field, self.after)}"


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
                            f"({', '.join(t['id'] for t in same)}): sync does not know which",
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
        elif have != wanted:
            changes.append(Change(key, have, wanted))
            body[key] = wanted
    return Plan("update" if changes else "none", live, changes, body)


def sync(client: Any, spec: dict[str, Any], dry_run: bool) -> tuple[Plan, dict[str, Any] | None]:
    """Apply the plan unless dry_run; returns it and the template as RunPod now has it."""
    current = plan(spec, client.list_templates())
    if dry_run or current.action == "none":
        return current, current.template
    if current.action == "create":
        return current, client.create_template(current.body)
    return current, client.update_template(current.template["id"], current.body)


def find(client: Any, name_or_id: str) -> dict[str, Any]:
    templates = client.list_templates()
    found = [t for t in templates if name_or_id in (t.get("id"), t.get("name"))]
    if not found:
        names = ", ".join(sorted(t["name"] for t in templates)[:10]) or "none"
        raise PodCycleError(f"no template named or with id {name_or_id!r}",
                            f"templates on the account: {names} (inv template.list)")
    return found[0]
