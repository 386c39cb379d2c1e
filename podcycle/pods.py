"""Pod operations shared by the pod.* tasks and the cycle: one path to stop a pod (with one
meaning of a 409), summaries and SSH commands. Pods are `runpod.models.Pod` records."""

from __future__ import annotations

import shlex
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from podcycle.errors import PodCycleError
from podcycle.runpod.errors import Conflict, NotFound
from podcycle.runpod.models import Pod

if TYPE_CHECKING:
    from podcycle.runpod.client import RunPodClient

PROXY_LIMITS = ("RunPod's SSH proxy carries an interactive shell only: no rsync, scp, sftp or "
                "port forwarding. For the cycle, expose 22/tcp in the template (direct SSH) or "
                "set RUNPOD_SSH_USER/HOST/PORT to an endpoint that supports them.")

SUMMARY_HEADERS = ["ID", "NAME", "STATUS", "GPU", "CLOUD", "USD/H", "SSH"]


def summary_row(pod: Pod) -> tuple:
    where = pod.ssh_direct.label() if pod.ssh_direct else "-"
    return (pod.id, pod.name, pod.status.value, pod.gpu_label, pod.cloud,
            f"{pod.cost_per_hour:.2f}", where)


def ssh_command(pod: Pod, key: Path | None) -> tuple[str, str, str | None]:
    """(kind, command, note): direct SSH first, else the proxy with its limits explained."""
    identity = f" -i {shlex.quote(str(key))}" if key else ""
    if pod.ssh_direct:
        d = pod.ssh_direct
        return ("direct", f"ssh {d.username}@{d.host} -p {d.port}{identity}", None)
    if pod.ssh_proxy:
        p = pod.ssh_proxy
        return ("proxy", f"ssh {p.username}@{p.host}{identity}", PROXY_LIMITS)
    raise PodCycleError(
        f"pod {pod.id} has no SSH endpoint (status {pod.status})",
        "start it (inv pod.status shows when it is RUNNING); a template needs 22/tcp in its "
        "ports and the pod must be created with SSH keys registered")


class StopFailed(PodCycleError):
    exit_code = 4


def stop_pod(client: RunPodClient, pod_id: str, *, attempts: int = 4,
             sleep: Callable[[float], None] = time.sleep) -> str:
    """Stop a pod; the one path for pod.stop, cycle.stop and the cycle's `finally`.

    Returns "stopped", "already stopped" or "gone". A 409 means "not in a state that can be
    stopped": the pod is looked at, and only a pod that is not billing counts as success.
    Transient trouble is retried: a pod left running costs money. Raises StopFailed, which
    says loudly that the pod may still be billing."""
    last: Exception | None = None
    for attempt in range(attempts):
        try:
            client.pod_action(pod_id, "stop")
            return "stopped"
        except NotFound:
            return "gone"
        except Conflict as exc:
            try:
                pod = client.get_pod(pod_id)
            except NotFound:
                return "gone"
            if pod.status.gone:
                return "gone"
            if pod.status.stopped:
                return "already stopped"
            last = exc  # e.g. still PROVISIONING on a slow API: try again
        except PodCycleError as exc:
            last = exc
        if attempt < attempts - 1:
            sleep(1 + attempt)
    raise StopFailed(f"POD STILL RUNNING: could not stop pod {pod_id}: "
                     f"{getattr(last, 'message', last)}",
                     f"it is billing: stop it now with inv pod.stop {pod_id} (or in the RunPod "
                     "console)")
