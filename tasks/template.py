"""Pod templates: list them, show one, and keep one in sync with config/template.toml."""

from typing import Any

from podcycle.cli import echo, emit_json, guarded, runpod_client, settings, table, task


def _text(value: Any) -> str:
    """A field of RunPod's JSON as it comes, for a table: a null shows empty."""
    return "" if value is None else str(value)


def _ports(value: Any) -> str:
    return ",".join(map(str, value)) if isinstance(value, list) else _text(value)


@task(name="list", help={
    "name": "show only templates whose name contains this text, case-insensitive "
            "(default: all)",
    "backend": "auto|runpod|local (default: auto)",
    "api_key": "RunPod API key (default: RUNPOD_API_KEY, then keyring)",
    "json": "print JSON on stdout (default: table)",
})
@guarded
def list_(c, name=None, backend=None, api_key=None, json=False):
    """List pod templates (GET /v2/templates)."""

    client = runpod_client(c, backend, api_key)
    templates = [t for t in client.list_templates()
                 if not name or name.lower() in _text(t.get("name")).lower()]
    if json:
        emit_json(templates)
        return
    rows = [(_text(t.get("id")), _text(t.get("name")), _text(t.get("image")),
             _ports(t.get("ports")),
             "serverless" if t.get("serverless") is True else "pod") for t in templates]
    table(rows, ["ID", "NAME", "IMAGE", "PORTS", "TYPE"])



@task(help={
    "file": "the template file (default: config/template.toml)",
    "image": "image to put in the template instead of the file's (default: the file's)",
    "dry_run": "print the difference, change nothing (default: off)",
    "backend": "auto|runpod|local (default: auto)",
    "api_key": "RunPod API key (default: RUNPOD_API_KEY, then keyring)",
    "json": "print {action, changes, template} as JSON on stdout (default: text)",
})
@guarded
def sync(c, file=None, image=None, dry_run=False, backend=None, api_key=None, json=False):
    """Create or update the template to match the file, showing the difference first."""
    from pathlib import Path

    from podcycle import templates
    from podcycle.backend import connect
    from podcycle.config import say

    spec = templates.load(Path(file) if file else templates.DEFAULT_FILE, image)
    s = settings(c, backend=backend, api_key=api_key)
    templates.refuse_the_key(spec.get("env"), s.api_key,
                             str(file or templates.DEFAULT_FILE) + " [env]")
    client = connect(s).client
    plan, live = templates.sync(client, spec, dry_run)
    if json:
        emit_json({"action": plan.action, "dry_run": dry_run, "name": spec["name"],
                   "changes": [ch.as_json() for ch in plan.changes], "template": live})
        return
    if plan.action == "none":
        echo(f"template {spec['name']!r} ({live['id']}): no change")
        return
    verb = {"create": "would create" if dry_run else "created",
            "update": "would update" if dry_run else "updated"}[plan.action]
    echo(f"template {spec['name']!r}: {verb}" + (f" ({live['id']})" if live else ""))
    for change in plan.changes:
        echo(f"  {change.line()}")
    if dry_run:
        say("dry run: nothing was sent; run again without --dry-run to apply")


@task(help={
    "name": "template name or id (an id when several templates share the name)",
    "backend": "auto|runpod|local (default: auto)",
    "api_key": "RunPod API key (default: RUNPOD_API_KEY, then keyring)",
    "json": "print the template as JSON on stdout (default: text)",
})
@guarded
def show(c, name, backend=None, api_key=None, json=False):
    """Print one template: image, ports, disk, mounts, env (secret values masked)."""
    from podcycle import templates
    from podcycle.config import check_name
    from podcycle.redact import scrub

    check_name("the template name or id", name, "chess-bot-training")  # before a request
    client = runpod_client(c, backend, api_key)
    template = scrub(templates.find(client, name))
    if json:
        emit_json(template)
        return
    for key in ("id", "name", "image", "registry", "args", "disk", "ports", "mounts",
                "startSsh", "startJupyter", "category", "public", "serverless",
                "allowedCudaVersions"):
        if key in template:  # none given (a public image's registry): "-", not "None"
            echo(f"{key:20} {'-' if template[key] is None else template[key]}")
    print("env")
    env = template.get("env") if isinstance(template.get("env"), dict) else {}
    for key, value in sorted(env.items()):
        echo(f"  {key} = {value}")
