"""Diagnose RunPod API access: key source, per-scope permissions, SSH key registration."""

from podcycle.cli import emit_json, guarded, settings, task


@task(
    help={
        "api_key": "RunPod API key (default: RUNPOD_API_KEY, then keyring; a flag is visible "
                   "in `ps`, prefer those)",
        "backend": "auto|runpod|local (default: auto = runpod when a key is found, else local)",
        "register_ssh_key": "add your SSH public key to the account when it is missing "
                            "(default: off, only report)",
        "json": "print the report as JSON on stdout (default: table)",
    }
)
@guarded
def doctor(c, api_key=None, backend=None, register_ssh_key=False, json=False):
    """Check the API key's source and scopes, and that your SSH key is registered."""
    from podcycle.doctor import render, run_doctor

    report = run_doctor(settings(c, api_key=api_key, backend=backend),
                        register_ssh_key=register_ssh_key)
    if json:
        emit_json(report)
    else:
        render(report)
    if not report["ok"]:
        from invoke.exceptions import Exit

        raise Exit(code=1)
