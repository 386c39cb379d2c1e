"""Registry credentials for private images (GET/POST/DELETE /v2/registries)."""

from podcycle.cli import echo, emit_json, guarded, runpod_client, settings, table, task

COMMON = {
    "backend": "auto|runpod|local (default: auto)",
    "api_key": "RunPod API key (default: RUNPOD_API_KEY, then keyring)",
    "json": "print JSON on stdout (default: text)",
}


@task(name="list", help=COMMON)
@guarded
def list_(c, backend=None, api_key=None, json=False):
    """List the account's registry credentials: id and name (secrets are write-only)."""

    found = runpod_client(c, backend, api_key).list_registries()
    if json:
        emit_json([r.to_json() for r in found])
        return
    table([(r.id, r.name) for r in found], ["ID", "NAME"])


@task(help={
    "name": "the credential's name, used as registry = \"NAME\" in config/template.toml",
    "username": "the registry user, e.g. your GitHub user for ghcr.io (no default, required)",
    **COMMON,
})
@guarded
def create(c, name, username=None, backend=None, api_key=None, json=False):
    """Store a registry login for private images; the token is read from stdin or a prompt."""
    from podcycle import registries
    from podcycle.errors import ConfigError

    registries.validate_name(name)
    if not username:
        raise ConfigError("--username is required (the registry user, e.g. your GitHub user "
                          "for ghcr.io)", f"inv registry.create {name} --username USER")
    registries.validate_username(username)  # before the token is read: refused first
    from podcycle.backend import connect

    s = settings(c, backend=backend, api_key=api_key)
    password = registries.read_password(runpod_key=s.api_key)
    client = connect(s).client
    made = registries.create(client, name, username, password)
    if json:
        emit_json(made.to_json())
        return
    echo(f"created registry credential {made.name} ({made.id}); use it with "
         f"registry = \"{made.name}\" in config/template.toml, then inv template.sync")


@task(help={
    "name": "the credential's name or id",
    "yes": "really delete it (default: refuse)",
    **COMMON,
})
@guarded
def delete(c, name, yes=False, backend=None, api_key=None, json=False):
    """Delete a registry credential (refused while a template uses it; asks for --yes)."""
    from podcycle import registries

    client = runpod_client(c, backend, api_key)
    gone = registries.delete(client, name, yes=yes)
    if json:
        emit_json({"deleted": gone.id, "name": gone.name})
        return
    echo(f"deleted registry credential {gone.name} ({gone.id})")
