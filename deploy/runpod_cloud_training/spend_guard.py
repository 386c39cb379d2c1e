#!/usr/bin/env python3
"""Spend guard: stops its own pod through the RunPod v2 API once the pod has run for
SPEND_GUARD_MINUTES since it booted (POD_BOOT_EPOCH, set by the entrypoint), whatever the
host does: a killed laptop cannot leave the pod billing past its budget. pod-cycle sets the
minutes from --max-minutes and --max-cost (at the pod's price) when it creates the pod.
Uses RUNPOD_POD_ID, RUNPOD_API_KEY (both set by RunPod inside the pod) and
RUNPOD_API_BASE_URL; the key is read from the environment only and never printed.

Its log lines (`[spend_guard] ...`) go to the container log, where pod-cycle finds them:
FIRED_LINE marks a guard that stopped the pod. A limit it cannot keep (not a number, nan,
inf, zero or less) stops the pod at once, saying why: fail safe, never a crash loop while the
pod bills.

On a RunPod Instant Cluster node (NUM_NODES > 1, or RUNPOD_CLUSTER_ID) the pod cannot stop
itself (a member's stop is a 409): the guard deletes the whole cluster instead (DELETE
/v2/clusters/{id}, the id from RUNPOD_CLUSTER_ID or the pod's own record). Every node runs
it, so the first to reach the deadline deletes the cluster and a lost node does not matter."""

from __future__ import annotations

import math
import os
import sys
import time

from idle_watchdog import in_cluster, stop_refusal
from idle_watchdog import log as _log

FIRED_LINE = "spend guard fired"
# While RunPod refuses the stop, the container log (what `inv pod.logs` shows) says so at
# once, then again this often: the pod bills on, and its own log alone would hide that.
REFUSED_EVERY_SECONDS = 300.0


def _api(base_url: str, method: str, path: str, key: str) -> tuple[int, dict]:
    """One v2 request: (HTTP status, JSON answer or {}); status 0 when it never got one."""
    import json
    import urllib.error
    import urllib.request

    request = urllib.request.Request(f"{base_url.rstrip('/')}{path}", method=method,
                                     headers={"Authorization": f"Bearer {key}",
                                              "Accept": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            body = response.read()
            return response.status, (json.loads(body) if body else {})
    except urllib.error.HTTPError as exc:
        return exc.code, {}
    except Exception as exc:  # noqa: BLE001 - an answer, never a crash (the type, not the key)
        _log(f"{method} {path} failed ({type(exc).__name__})", tag="spend_guard")
        return 0, {}


def cluster_id(base_url: str, pod_id: str, key: str) -> str | None:
    """This node's cluster: RUNPOD_CLUSTER_ID, else the pod's own record (GET
    /v2/pods/{id} → cluster.id; a member may read itself, only stop/delete is refused)."""
    explicit = os.environ.get("RUNPOD_CLUSTER_ID", "").strip()
    if explicit:
        return explicit
    status, pod = _api(base_url, "GET", f"/v2/pods/{pod_id}", key)
    cluster = pod.get("cluster") if isinstance(pod, dict) else None
    if status == 200 and isinstance(cluster, dict) and cluster.get("id"):
        return str(cluster["id"])
    return None


def delete_cluster(base_url: str, pod_id: str, key: str, check: float) -> int:
    """A cluster member cannot stop itself (409): the guard deletes its whole cluster, every
    node's guard alike, so a lost primary (or host) never leaves the others billing. A 404
    means another node's guard (or the cycle) deleted it first."""
    while True:
        found = cluster_id(base_url, pod_id, key)
        if found:
            status, _ = _api(base_url, "DELETE", f"/v2/clusters/{found}", key)
            if status in (200, 204, 404):
                log(f"cluster {found} delete requested (answer {status})")
                return 0
            log(f"cluster delete answered {status or 'nothing'}; will try again")
        else:
            log("cannot tell this node's cluster yet; will try again")
        time.sleep(min(check, 10))


def log(message: str) -> None:
    """To its own log (stdout) and to the container log, which pod.logs and the cycle read."""
    _log(message, tag="spend_guard")
    container = os.environ.get("CONTAINER_LOG")
    if container:
        try:
            with open(container, "a") as handle:
                handle.write(f"{time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())} "
                             f"[spend_guard] {message}\n")
        except OSError:
            pass


def guard_minutes(raw: str) -> tuple[float | None, str]:
    """(minutes, "") for a limit this guard can keep, else (None, why not): not a number,
    nan, inf, zero or negative. pod-cycle refuses those before a pod exists; a template or
    a hand-made pod can still carry one."""
    try:
        minutes = float(raw)
    except ValueError:
        return None, f"SPEND_GUARD_MINUTES={raw!r} is not a number"
    if not math.isfinite(minutes) or minutes <= 0:
        return None, f"SPEND_GUARD_MINUTES={raw!r} is not a positive, finite number of minutes"
    return minutes, ""


def clock(moment: float) -> str:
    try:
        return time.strftime("%H:%M:%SZ", time.gmtime(moment)) + " UTC"
    except (OverflowError, ValueError, OSError):
        return "a time past any calendar"


def stop(base_url: str, pod_id: str, key: str, check: float) -> int:
    """Ask RunPod to stop the pod until it takes the request. A refusal (a key that may not
    stop pods, an API that is down) is said in the container log at once and every
    REFUSED_EVERY_SECONDS after; "stop requested" only once RunPod took it."""
    if in_cluster():
        return delete_cluster(base_url, pod_id, key, check)
    wait = min(check, 10)
    attempts, said = 0, -math.inf
    while (why := stop_refusal(base_url, pod_id, key)) is not None:
        attempts += 1
        _log(f"stop request {why}; will try again", tag="spend_guard")
        if time.monotonic() - said >= REFUSED_EVERY_SECONDS:
            said = time.monotonic()
            log(f"the stop request {why} ({attempts} attempt(s)): pod {pod_id} bills on until "
                f"RunPod takes it; trying again every {wait:g}s (inv pod.stop {pod_id} stops "
                "it from outside)")
        time.sleep(wait)
    log("stop requested" + (f" (taken after {attempts} refusal(s))" if attempts else ""))
    return 0


def main() -> int:
    pod_id = os.environ.get("RUNPOD_POD_ID", "")
    key = os.environ.get("RUNPOD_API_KEY", "").strip()  # a pasted key's newline
    raw = os.environ.get("SPEND_GUARD_MINUTES", "").strip()
    minutes, problem = guard_minutes(raw)
    if not pod_id or not key:
        log("RUNPOD_POD_ID or RUNPOD_API_KEY is not set: the spend guard cannot stop this pod")
        while True:  # exiting would only be restarted by the supervisor: idle instead
            time.sleep(3600)
    base_url = os.environ.get("RUNPOD_API_BASE_URL", "https://api.runpod.io")
    try:
        check = min(60.0, max(0.2, float(os.environ.get("SPEND_GUARD_CHECK_SECONDS", "15"))))
    except ValueError:
        check = 15.0
    if minutes is None:
        # Fail safe: a pod that was given a budget this guard cannot keep must not bill on
        # without one (nor crash-loop under the supervisor while it does).
        log(f"cannot enforce the spend guard: {problem}; stopping pod {pod_id} now rather than "
            "let it bill unguarded (create the pod again with a valid --max-minutes or "
            "--max-cost)")
        return stop(base_url, pod_id, key, check)
    try:
        boot = float(os.environ.get("POD_BOOT_EPOCH") or time.time())
    except ValueError:
        boot = float("nan")
    if not math.isfinite(boot):
        log("POD_BOOT_EPOCH is not a time: counting from now")
        boot = time.time()
    why = os.environ.get("SPEND_GUARD_REASON", f"--max-minutes {minutes:g}")
    deadline = boot + minutes * 60
    what = "the cluster of pod" if in_cluster() else "pod"
    verb = "is deleted" if in_cluster() else "stops"
    log(f"{what} {pod_id} {verb} at {clock(deadline)}, {minutes:g} minute(s) after boot "
        f"({why})")
    while time.time() < deadline:
        time.sleep(max(0.2, min(check, deadline - time.time())))
    log(f"{FIRED_LINE}: {minutes:g} minute(s) since boot ({why}); "
        + (f"deleting the cluster of pod {pod_id} (a cluster cannot be stopped)"
           if in_cluster() else f"stopping pod {pod_id}"))
    return stop(base_url, pod_id, key, check)


if __name__ == "__main__":
    sys.exit(main())
