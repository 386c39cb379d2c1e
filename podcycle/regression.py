"""`check.regression`: the seed's runpod_regression_checks.sh as one task."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from podcycle import PROJECT_ROOT
from podcycle.config import Settings, key_for_children, keyring_api_key, say
from podcycle.redact import redact

API_TESTS = ["tests/test_runpod_client.py", "tests/test_openapi_contract.py",
             "tests/test_tasks_api.py", "tests/test_config.py"]
LOCAL_SMOKE = "tests/test_cycle.py::test_full_smoke_runs_the_whole_cycle"


@dataclass
class Check:
    name: str
    status: str  # pass | fail | skip
    detail: str = ""
    seconds: float = 0.0


def _run(name: str, command: list[str], env: dict[str, str] | None = None) -> Check:
    say(f"--> {name}: {' '.join(command)}")
    started = time.monotonic()
    result = subprocess.run(command, cwd=PROJECT_ROOT, env={**os.environ, **(env or {})})
    seconds = time.monotonic() - started
    status = "pass" if result.returncode == 0 else "fail"
    return Check(name, status, f"exit {result.returncode}", seconds)


def run_checks(settings: Settings, *, local_smoke: bool, live: bool) -> list[Check]:
    inv = str(Path(sys.executable).parent / "inv")
    pytest = [sys.executable, "-m", "pytest", "-q"]
    checks = [_run("API helper tests", [*pytest, *API_TESTS])]
    checks.append(_run("local cycle smoke", [*pytest, LOCAL_SMOKE]) if local_smoke
                  else Check("local cycle smoke", "skip", "--no-local-smoke"))
    # api.doctor on the backend this command was given (-b local: the local RunPod).
    given = key_for_children(settings)  # a key given as --api-key: their environment
    checks.append(_run("api.doctor", [inv, "api.doctor"],
                       {"RUNPOD_BACKEND": settings.backend, **given}))
    # The live probes need RunPod and a key: one given (flag, environment, .env) runs them on
    # any backend; the keyring is read only when the backend is not local (README: with
    # --backend local the keyring is never read).
    local = settings.backend == "local"
    if live and (settings.api_key or (not local and keyring_api_key())):
        env = {"RUNPOD_BACKEND": "runpod", **given}
        checks.append(_run("live template.list", [inv, "template.list"], env))
        checks.append(_run("live gpu.search", [inv, "gpu.search", "--limit", "5"], env))
    else:
        checks.append(Check("live RunPod probes", "skip", "no RunPod API key configured"
                            + (" (with -b local the keyring is not read)" if local else "")))
    if os.environ.get("RUN_LOCAL_SMOKE") == "1":
        checks.append(docker_smoke(settings))
    else:
        checks.append(Check("Docker local smoke", "skip", "set RUN_LOCAL_SMOKE=1 to run it"))
    return checks


def docker_smoke(settings: Settings) -> Check:
    """Build the image and run it with the inference API only until it reports healthy."""
    from podcycle import image
    from podcycle.errors import PodCycleError

    try:
        image.check_docker()
    except PodCycleError as exc:
        return Check("Docker local smoke", "fail", exc.render())
    tag = f"pod-cycle-smoke:{image.git_short_sha()}"
    started = time.monotonic()
    built = subprocess.run(["docker", "build", "-t", tag, "-f", image.DOCKERFILE, "."],
                           cwd=PROJECT_ROOT)
    if built.returncode != 0:
        return Check("Docker local smoke", "fail", "docker build failed")
    run = subprocess.run(["docker", "run", "-d", "--rm", "-e", "START_JUPYTER=0",
                          "-e", "START_SSHD=0", "-e", "CLONE_REPO_ON_START=0",
                          "-e", "SYNC_REQUIREMENTS_ON_START=0", tag],
                         capture_output=True, text=True)
    if run.returncode != 0:
        return Check("Docker local smoke", "fail", run.stderr.strip()[-200:])
    container = run.stdout.strip()
    try:
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            health = subprocess.run(["docker", "inspect", "-f", "{{.State.Health.Status}}",
                                     container], capture_output=True, text=True).stdout.strip()
            if health == "healthy":
                return Check("Docker local smoke", "pass", "container healthy",
                             time.monotonic() - started)
            if health == "unhealthy":
                break
            time.sleep(3)
        return Check("Docker local smoke", "fail", f"container health: {health or 'unknown'}")
    finally:
        subprocess.run(["docker", "stop", container], capture_output=True)


def render(checks: list[Check]) -> str:
    lines = ["", "regression checks:"]
    for check in checks:
        lines.append(f"  {check.status.upper():<4}  {check.name:<22} {check.detail}"
                     + (f" ({check.seconds:.1f}s)" if check.seconds else ""))
    failed = [c for c in checks if c.status == "fail"]
    lines.append(f"{len(failed)} failed, {sum(c.status == 'pass' for c in checks)} passed, "
                 f"{sum(c.status == 'skip' for c in checks)} skipped")
    return redact("\n".join(lines))
