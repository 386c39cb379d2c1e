"""Pod helpers shared by pod.* and cycle.*: summaries and SSH commands."""

from __future__ import annotations

import shlex
from pathlib import Path
from typing import Any

from podcycle.errors import PodCycleError

PROXY_LIMITS = ("RunPod's SSH proxy carries an interactive shell only: no rsync, scp, sftp or "
                "port forwarding. For the cycle, expose 22/tcp in the template (direct SSH) or "
                "set RUNPOD_SSH_USER/HOST/PORT to an endpoint that supports them.")


def summary_row(pod: dict[str, Any]) -> tuple:
    gpu = pod.get("gpu") or {}
    direct = (pod.get("ssh") or {}).get("direct")
    where = f"{direct['host']}:{direct['port']}" if direct else "-"
    return (pod["id"], pod["name"], pod["status"], f"{gpu.get('count', 0)}x {gpu.get('id', '-')}",
            (pod.get("cloud") or "").lower(), f"{pod.get('cost', 0):.2f}", where)


SUMMARY_HEADERS = ["ID", "NAME", "STATUS", "GPU", "CLOUD", "USD/H", "SSH"]


def ssh_command(pod: dict[str, Any], key: Path | None) -> tuple[str, str, str | None]:
    """(kind, command, note): direct SSH first, else the proxy with its limits explained."""
    ssh = pod.get("ssh") or {}
    identity = f" -i {shlex.quote(str(key))}" if key else ""
    if ssh.get("direct"):
        d = ssh["direct"]
        return ("direct", f"ssh {d['username']}@{d['host']} -p {d['port']}{identity}", None)
    if ssh.get("proxy"):
        p = ssh["proxy"]
        return ("proxy", f"ssh {p['username']}@{p['host']}{identity}", PROXY_LIMITS)
    raise PodCycleError(
        f"pod {pod['id']} has no SSH endpoint (status {pod['status']})",
        "start it (inv pod.status shows when it is RUNNING); a template needs 22/tcp in its "
        "ports and the pod must be created with SSH keys registered")
