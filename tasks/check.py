"""Project checks: the seed's RunPod regression checks as one task."""

from podcycle.cli import guarded, settings, task


@task(help={
    "local_smoke": "run the local end-to-end cycle smoke (default: on; --no-local-smoke skips "
                   "it)",
    "skip_live": "skip the live RunPod probes that run when an API key is configured "
                 "(default: off)",
    "backend": "auto|runpod|local for api.doctor (default: auto)",
    "api_key": "RunPod API key for api.doctor and the live probes, handed to them in their "
               "environment (default: RUNPOD_API_KEY, then keyring)",
})
@guarded
def regression(c, local_smoke=True, skip_live=False, backend=None, api_key=None):
    """Run the RunPod regression checks (tests, local smoke, doctor, live/Docker probes).

    API helper tests, the local cycle smoke, api.doctor, live probes when a key is configured,
    and the Docker local smoke with RUN_LOCAL_SMOKE=1 and a Docker engine."""
    from invoke.exceptions import Exit

    from podcycle.regression import render, run_checks

    checks = run_checks(settings(c, backend=backend, api_key=api_key), local_smoke=local_smoke,
                        live=not skip_live)
    print(render(checks))
    if any(check.status == "fail" for check in checks):
        raise Exit(code=1)
