"""Discover pod templates on the account."""

from podcycle.cli import emit_json, guarded, settings, table, task


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
    from podcycle.backend import connect

    client = connect(settings(c, backend=backend, api_key=api_key)).client
    templates = [t for t in client.list_templates()
                 if not name or name.lower() in t["name"].lower()]
    if json:
        emit_json(templates)
        return
    rows = [(t["id"], t["name"], t["image"], ",".join(t.get("ports", [])),
             "serverless" if t.get("serverless") else "pod") for t in templates]
    table(rows, ["ID", "NAME", "IMAGE", "PORTS", "TYPE"])

