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
pod bills."""

from __future__ import annotations

import math
import os
import sys
import time

from idle_watchdog import log as _log
from idle_watchdog import stop_pod

FIRED_LINE = "spend guard fired"


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
    while not stop_pod(base_url, pod_id, key):
        time.sleep(min(check, 10))
    log("stop requested")
    return 0


def main() -> int:
    pod_id = os.environ.get("RUNPOD_POD_ID", "")
    key = os.environ.get("RUNPOD_API_KEY", "")
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
    log(f"pod {pod_id} stops at {clock(deadline)}, {minutes:g} minute(s) after boot ({why})")
    while time.time() < deadline:
        time.sleep(max(0.2, min(check, deadline - time.time())))
    log(f"{FIRED_LINE}: {minutes:g} minute(s) since boot ({why}); stopping pod {pod_id}")
    return stop(base_url, pod_id, key, check)


if __name__ == "__main__":
    sys.exit(main())
