"""RunPod's JSON turned into typed records, in one place: nothing outside this module reads a
raw pod field. Ids are validated here too, before any request is built from them."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from podcycle.errors import ConfigError

# RunPod pod ids are short lowercase alphanumerics ("xedezhzb9la3ye"); the spec's examples use
# "pod_abc123" and the local RunPod "lp0123456789ab". Letters, digits, '_' and '-', full match.
POD_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,63}")
POD_ID_RULE = "letters, digits, '_' and '-' only, starting with a letter or digit, at most 64"


def validate_pod_id(pod_id: str) -> str:
    """The id itself, or a ConfigError before anything is sent (no traversal, no query)."""
    if not isinstance(pod_id, str) or not POD_ID.fullmatch(pod_id):
        raise ConfigError(f"invalid pod id {pod_id!r}: pod ids are {POD_ID_RULE}",
                          "copy the id from inv pod.list (the ID column)")
    return pod_id


class PodStatus(StrEnum):
    PROVISIONING = "PROVISIONING"
    STARTING = "STARTING"
    RUNNING = "RUNNING"
    EXITED = "EXITED"
    ERROR = "ERROR"
    TERMINATED = "TERMINATED"
    UNKNOWN = "UNKNOWN"  # a status this tool does not know yet (a newer API)

    @classmethod
    def parse(cls, value: Any) -> PodStatus:
        try:
            return cls(str(value).upper())
        except ValueError:
            return cls.UNKNOWN

    @property
    def billing(self) -> bool:
        """GPU time is billed in these states."""
        return self in (PodStatus.PROVISIONING, PodStatus.STARTING, PodStatus.RUNNING)

    @property
    def stopped(self) -> bool:
        return self in (PodStatus.EXITED, PodStatus.ERROR)

    @property
    def gone(self) -> bool:
        return self is PodStatus.TERMINATED


@dataclass(frozen=True)
class SshEndpoint:
    host: str
    port: int
    username: str

    @classmethod
    def from_api(cls, data: Any) -> SshEndpoint | None:
        if not isinstance(data, dict) or not data.get("host"):
            return None
        return cls(str(data["host"]), int(data.get("port") or 22), str(data.get("username")
                                                                          or "root"))

    def label(self) -> str:
        return f"{self.host}:{self.port}"


@dataclass(frozen=True)
class PortMapping:
    private: int
    public: int | None
    kind: str  # tcp | http
    ip: str | None


@dataclass(frozen=True)
class Pod:
    id: str
    name: str
    status: PodStatus
    gpu_id: str | None
    gpu_count: int
    cloud: str  # secure | community
    cost_per_hour: float
    ssh_direct: SshEndpoint | None
    ssh_proxy: SshEndpoint | None
    ports: tuple[str, ...]  # as configured: "22/tcp", "8000/http"
    runtime_ports: tuple[PortMapping, ...]
    created_at: str | None
    started_at: str | None
    template_id: str | None
    uptime_seconds: int | None  # while RUNNING
    raw: dict[str, Any] = field(repr=False, compare=False, hash=False)

    @classmethod
    def from_api(cls, data: dict[str, Any]) -> Pod:
        from podcycle.runpod.errors import ApiError

        if not isinstance(data, dict) or not isinstance(data.get("id"), str):
            raise ApiError("RunPod answered with a pod record that has no id",
                           "check RUNPOD_API_BASE_URL points at the RunPod API (v2)")
        gpu = data.get("gpu") if isinstance(data.get("gpu"), dict) else {}
        ssh = data.get("ssh") if isinstance(data.get("ssh"), dict) else {}
        runtime = data.get("runtime") if isinstance(data.get("runtime"), dict) else {}
        mappings = tuple(
            PortMapping(int(p.get("private") or 0), p.get("public"), str(p.get("type") or ""),
                        p.get("ip"))
            for p in runtime.get("ports") or [] if isinstance(p, dict))
        return cls(
            id=data["id"], name=str(data.get("name") or ""),
            status=PodStatus.parse(data.get("status")),
            gpu_id=gpu.get("id"), gpu_count=int(gpu.get("count") or (1 if gpu else 0)),
            cloud=str(data.get("cloud") or "").lower(),
            cost_per_hour=float(data.get("cost") or 0.0),
            ssh_direct=SshEndpoint.from_api(ssh.get("direct")),
            ssh_proxy=SshEndpoint.from_api(ssh.get("proxy")),
            ports=tuple(str(p) for p in data.get("ports") or []),
            runtime_ports=mappings,
            created_at=data.get("createdAt"), started_at=data.get("startedAt"),
            template_id=data.get("template"),
            uptime_seconds=runtime.get("uptime") if isinstance(runtime.get("uptime"), int)
            else None, raw=data)

    @property
    def gpu_label(self) -> str:
        return f"{self.gpu_count}x {self.gpu_id or '-'}"

    def exposes(self, port: str) -> bool:
        return port in self.ports

    def public_port(self, private: int) -> PortMapping | None:
        return next((m for m in self.runtime_ports if m.private == private), None)

    def to_json(self) -> dict[str, Any]:
        """The API's record as it came (for --json output and provision.json)."""
        return self.raw


@dataclass(frozen=True)
class LogEvent:
    """One line of GET /v2/pods/{id}/logs (server-sent event `{ts, source, line}`)."""

    id: str | None
    ts: str
    source: str
    line: str

    @classmethod
    def from_sse(cls, event_id: str | None, data: str) -> LogEvent:
        import json

        try:
            payload = json.loads(data)
        except ValueError:
            payload = {"line": data}
        if not isinstance(payload, dict):
            payload = {"line": str(payload)}
        return cls(event_id, str(payload.get("ts") or ""), str(payload.get("source") or ""),
                   str(payload.get("line") or ""))

    def to_json(self) -> dict[str, Any]:
        return {"id": self.id, "ts": self.ts, "source": self.source, "line": self.line}
