#!/usr/bin/env python3
"""Spend guard: stops its own pod through the RunPod v2 API once the pod has run for
SPEND_GUARD_MINUTES since it booted (POD_BOOT_EPOCH, set by the entrypoint), whatever the
host does: a killed laptop cannot leave the pod billing past its budget. pod-cycle sets the
minutes from --max-minutes and --max-cost (at the pod's price) when it creates the pod.
Uses RUNPOD_POD_ID, RUNPOD_API_KEY (both set by RunPod inside the pod) and
RUNPOD_API_BASE_URL; the key is read from the environment only and never printed.

Its log lines (`[spend_guard] ...`) go to the container log, where pod-cycle finds them:
FIRED_LINE marks a guard that stopped the pod."""

from __future__ import annotations

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


def main() -> int:
    pod_id = os.environ.get("RUNPOD_POD_ID", "")
    key = os.environ.get("RUNPOD_API_KEY", "")
    try:
        minutes = float(os.environ.get("SPEND_GUARD_MINUTES", ""))
        boot = float(os.environ.get("POD_BOOT_EPOCH") or time.time())
    except ValueError:
        log("SPEND_GUARD_MINUTES is not a number: no spend guard on this pod")
        return 2
    why = os.environ.get("SPEND_GUARD_REASON", f"--max-minutes {minutes:g}")
    if not pod_id or not key:
        log("RUNPOD_POD_ID or RUNPOD_API_KEY is not set: the spend guard cannot stop this pod")
        while True:
            time.sleep(3600)
    base_url = os.environ.get("RUNPOD_API_BASE_URL", "https://api.runpod.io")
    check = float(os.environ.get("SPEND_GUARD_CHECK_SECONDS", "15"))
    deadline = boot + minutes * 60
    log(f"pod {pod_id} stops at {time.strftime('%H:%M:%SZ', time.gmtime(deadline))} UTC, "
        f"{minutes:g} minute(s) after boot ({why})")
    while time.time() < deadline:
        time.sleep(max(0.2, min(check, deadline - time.time())))
    log(f"{FIRED_LINE}: {minutes:g} minute(s) since boot ({why}); stopping pod {pod_id}")
    while not stop_pod(base_url, pod_id, key):
        time.sleep(min(check, 10))
    log("stop requested")
    return 0


if __name__ == "__main__":
    sys.exit(main())
