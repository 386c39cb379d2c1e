"""Leftovers: pods this tool made that still bill while no process drives their run (a host
killed mid-run, a --keep-pod forgotten). Found by the per-run pod name and the run's lock."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from podcycle.runs import RUN_ID, RunFolder

if TYPE_CHECKING:
    from podcycle.config import Settings
    from podcycle.runpod.models import Pod


@dataclass
class Leftover:
    pod: Pod
    run_id: str | None
    run_here: bool  # the run's folder is on this machine
    age_seconds: float | None
    cost_so_far: float | None

    def as_dict(self) -> dict[str, Any]:
        return {"pod_id": self.pod.id, "name": self.pod.name, "status": self.pod.status.value,
                "run_id": self.run_id, "run_folder_here": self.run_here,
                "age_seconds": None if self.age_seconds is None else round(self.age_seconds),
                "usd_per_hour": self.pod.cost_per_hour,
                "cost_so_far_usd": None if self.cost_so_far is None
                else round(self.cost_so_far, 4)}

    def line(self) -> str:
        age = duration(self.age_seconds)
        cost = f", ~${self.cost_so_far:.2f} so far" if self.cost_so_far is not None else ""
        run = f"run {self.run_id}" if self.run_id else "no run id"
        return f"{self.pod.id} ({run}, up {age}{cost})"


def prefix(settings: Settings) -> str:
    return f"{settings.pod_name or 'pod-cycle'}-"


def find(client: Any, settings: Settings) -> list[Leftover]:
    found = []
    now = datetime.now(UTC)
    for pod in client.list_pods():
        if not pod.status.billing or not pod.name.startswith(prefix(settings)):
            continue
        run_id = pod.name[len(prefix(settings)):]
        run_here = False
        if RUN_ID.fullmatch(run_id) and ".." not in run_id:
            run = RunFolder(settings.artifacts_dir, run_id)
            if run.is_driven():
                continue
            run_here = run.exists()
        else:
            run_id = None
        age = None
        if pod.created_at:
            try:
                created = datetime.fromisoformat(pod.created_at.replace("Z", "+00:00"))
                age = max(0.0, (now - created).total_seconds())
            except ValueError:
                pass
        billed = pod.uptime_seconds if pod.uptime_seconds is not None else age
        cost = pod.cost_per_hour * billed / 3600 if billed is not None else None
        found.append(Leftover(pod, run_id, run_here, age, cost))
    return found


def warning(leftovers: list[Leftover]) -> str:
    pods = "; ".join(item.line() for item in leftovers[:3])
    more = f" and {len(leftovers) - 3} more" if len(leftovers) > 3 else ""
    return (f"warning: {len(leftovers)} pod(s) of earlier runs still running and billing with "
            f"no process driving them: {pods}{more} (inv pod.leftovers --stop stops them)")


def duration(seconds: float | None) -> str:
    if seconds is None:
        return "?"
    minutes = int(seconds // 60)
    return f"{minutes // 60}h{minutes % 60:02d}m" if minutes >= 60 else f"{minutes}m"
