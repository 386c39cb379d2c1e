#!/usr/bin/env python3
"""Idle watchdog: stops its own pod through the RunPod v2 API after IDLE_MINUTES with no SSH
session, no training and no inference API traffic. Uses RUNPOD_POD_ID and RUNPOD_API_KEY
(both set by RunPod inside the pod) and RUNPOD_API_BASE_URL (default https://api.runpod.io).
The key is read from the environment only and never printed."""

from __future__ import annotations

import json
import os
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path


def log(message: str, tag: str = "idle_watchdog") -> None:
    print(f"{time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())} [{tag}] {message}",
          flush=True)


def cmdlines() -> list[str]:
    """The command lines of this pod's processes. In a container that is every process in
    /proc; a local RunPod pod shares the machine's /proc with other pods, so there only the
    processes carrying its own pod marker count (another pod's training is not ours)."""
    marker = os.environ.get("POD_CYCLE_LOCAL_POD")
    needle = f"POD_CYCLE_LOCAL_POD={marker}".encode() if marker else None
    lines = []
    for pid in os.listdir("/proc"):
        if pid.isdigit():
            try:
                raw = Path(f"/proc/{pid}/cmdline").read_bytes()
                if needle and needle not in Path(f"/proc/{pid}/environ").read_bytes().split(
                        b"\0"):
                    continue
            except OSError:
                continue
            lines.append(raw.replace(b"\0", b" ").decode(errors="replace"))
    return lines


def busy_reason(api_log: Path, window_s: float) -> str | None:
    for line in cmdlines():
        if line.startswith("sshd:") and "@" in line:
            return "ssh session"
        if "chessbot.train" in line:
            return "training"
    try:
        if time.time() - api_log.stat().st_mtime < window_s:
            return "inference API traffic"
    except OSError:
        pass
    return None


def stop_refusal(base_url: str, pod_id: str, key: str) -> str | None:
    """Ask RunPod to stop the pod (POST /v2/pods/{id}/action): None once it took the request,
    else why not, in words that never hold the key. Any failure is an answer, never an
    exception: a crash would only restart the service while the pod bills on (a key no
    header can carry raised ValueError, and its message held the key)."""
    try:
        request = urllib.request.Request(
            f"{base_url.rstrip('/')}/v2/pods/{pod_id}/action", method="POST",
            data=json.dumps({"action": "stop"}).encode(),
            headers={"Authorization": f"Bearer {key}", "Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=30):
            return None
    except urllib.error.HTTPError as exc:
        return f"answered {exc.code}"
    except Exception as exc:  # noqa: BLE001 - see above; the type alone, never the message
        return f"failed ({type(exc).__name__})"


def stop_pod(base_url: str, pod_id: str, key: str) -> bool:
    why = stop_refusal(base_url, pod_id, key)
    if why:
        log(f"stop request {why}; will try again")
    return why is None


def in_cluster() -> bool:
    """A RunPod Instant Cluster member (RunPod sets NUM_NODES on every node)."""
    try:
        return bool(os.environ.get("RUNPOD_CLUSTER_ID")) or int(
            os.environ.get("NUM_NODES") or "1") > 1
    except ValueError:
        return False


def positive(name: str, default: float) -> float:
    """A positive, finite number from the environment. A bad value must not crash the watchdog
    into a restart loop (then no idle stop would ever happen): the default is used, said once
    in the log. The watchdog never stops a pod that trains, so the default is safe."""
    import math

    raw = os.environ.get(name, "")
    if not raw.strip():
        return default
    try:
        value = float(raw)
    except ValueError:
        value = math.nan
    if not math.isfinite(value) or value <= 0:
        log(f"{name}={raw[:40]!r} is not a positive number: using the default {default:g}")
        return default
    return value


def main() -> int:
    pod_id = os.environ.get("RUNPOD_POD_ID", "")
    key = os.environ.get("RUNPOD_API_KEY", "").strip()  # a pasted key's newline
    if not pod_id or not key:
        log("RUNPOD_POD_ID or RUNPOD_API_KEY is not set: cannot stop this pod; watchdog idle")
        while True:
            time.sleep(3600)
    if in_cluster():
        # RunPod refuses a member's stop (409) and a cluster cannot be stopped, only deleted,
        # disks and all: an idle node is not reason enough for that. The spend guard, which
        # deletes the cluster at its deadline, is the bound on a cluster's bill.
        log("on an Instant Cluster node the watchdog cannot stop its pod (clusters are "
            "deleted, not stopped); watchdog idle: bound the cluster with --max-minutes")
        while True:
            time.sleep(3600)
    idle_minutes = positive("IDLE_MINUTES", 60.0)
    interval = positive("IDLE_CHECK_SECONDS", 30.0)
    base_url = os.environ.get("RUNPOD_API_BASE_URL", "https://api.runpod.io")
    api_log = Path(os.environ.get("POD_LOG_DIR", "/var/log/pod")) / "inference_api.log"
    log(f"stopping pod {pod_id} after {idle_minutes:g} idle minute(s)")
    idle_since = time.monotonic()
    while True:
        reason = busy_reason(api_log, window_s=interval * 2)
        if reason:
            idle_since = time.monotonic()
        elif time.monotonic() - idle_since >= idle_minutes * 60:
            log(f"idle for {idle_minutes:g} minute(s): stopping pod {pod_id}")
            if stop_pod(base_url, pod_id, key):
                log("stop requested")
                return 0
        time.sleep(interval)


if __name__ == "__main__":
    sys.exit(main())
