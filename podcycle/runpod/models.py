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


# What a container's environment can hold. Linux's execve takes each "NAME=value" string up to
# MAX_ARG_STRLEN (32 pages = 131072 bytes, NUL included) and all of argv + envp together up to
# ARG_MAX (a quarter of the stack limit: 2 MiB at the usual 8 MiB); past either the pod's
# entrypoint never runs ("Argument list too long", E2BIG). The total is bounded at a quarter
# of ARG_MAX per source (the template's env, a pod's own env) so that both together keep
# half of it for what RunPod adds (PUBLIC_KEY with every account key, RUNPOD_*,
# JUPYTER_PASSWORD) and for the commands the entrypoint runs.
MAX_ARG_STRLEN = 131072
ARG_MAX = 2 * 1024 * 1024
ENV_ENTRY_MAX = MAX_ARG_STRLEN - 1  # bytes of "NAME=value", the NUL not counted
ENV_TOTAL_MAX = ARG_MAX // 4
# POSIX (Base Definitions 8.1): portable names are letters, digits and '_', not starting with
# a digit. Shells drop any other name from the environment they pass on, and a container
# runtime splits "A=B=C" at the first '=', so such a variable never arrives as written.
ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
ENV_NAME_RULE = "letters, digits and '_', not starting with a digit"
PORT_SPEC = re.compile(r"([0-9]{1,5})/(http|tcp)")


def env_problems(env: Any) -> list[str]:
    """What is wrong with an env for a pod (empty when nothing): names, value types, sizes.
    Values are never quoted back, as they may be secrets."""
    if env is None:
        return []
    if not isinstance(env, dict):
        return ["env must be a table of NAME = \"value\""]
    problems = []
    total = 0
    for name, value in env.items():
        if not isinstance(name, str) or not ENV_NAME.fullmatch(name):
            problems.append(f"env name {name!r} is not a valid variable name ({ENV_NAME_RULE})")
            continue
        if not isinstance(value, str):
            problems.append(f"env {name} must be a string, not a {type(value).__name__}")
            continue
        if "\0" in value:
            problems.append(f"env {name} contains a NUL byte, which no environment can hold")
            continue
        size = len(name.encode()) + 1 + len(value.encode())
        total += size + 1
        if size > ENV_ENTRY_MAX:
            problems.append(f"env {name} is {size} bytes; Linux passes at most "
                            f"{ENV_ENTRY_MAX} bytes per variable (MAX_ARG_STRLEN), so the "
                            "pod could not start (Argument list too long)")
    if total > ENV_TOTAL_MAX and not any("MAX_ARG_STRLEN" in p for p in problems):
        problems.append(f"env totals {total} bytes; at most {ENV_TOTAL_MAX} (a quarter of "
                        "Linux's 2 MiB ARG_MAX, the rest is for RunPod's own variables)")
    return problems


def ports_problems(ports: Any) -> list[str]:
    """What is wrong with a port list ("8888/http", "22/tcp"): form, range 1-65535, repeats."""
    if ports is None:
        return []
    if not isinstance(ports, list):
        return ["ports must be a list like [\"22/tcp\", \"8888/http\"]"]
    problems, seen = [], {}
    for port in ports:
        match = PORT_SPEC.fullmatch(port) if isinstance(port, str) else None
        if not match:
            problems.append(f"port {port!r} is not NUMBER/http or NUMBER/tcp")
            continue
        number = int(match.group(1))
        if not 1 <= number <= 65535:
            problems.append(f"port {port!r}: the number must be 1 to 65535")
        elif number in seen:
            problems.append(f"port {number} is listed twice ({seen[number]!r} and {port!r})")
        else:
            seen[number] = port
    return problems


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
    # The network volumes it mounts (`mounts.network[].volumeId`); a stopped pod keeps them.
    network_volume_ids: tuple[str, ...] = ()
    # Asked to start JupyterLab: startJupyter, or START_JUPYTER=1 in its env.
    jupyter_started: bool = False
    raw: dict[str, Any] = field(default_factory=dict, repr=False, compare=False, hash=False)

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
        mounts = data.get("mounts") if isinstance(data.get("mounts"), dict) else {}
        network = mounts.get("network") if isinstance(mounts.get("network"), list) else []
        env = data.get("env") if isinstance(data.get("env"), dict) else {}
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
            else None,
            network_volume_ids=tuple(str(m["volumeId"]) for m in network
                                     if isinstance(m, dict) and m.get("volumeId")),
            jupyter_started=data.get("startJupyter") is True or env.get("START_JUPYTER") == "1",
            raw=data)

    @property
    def gpu_label(self) -> str:
        return f"{self.gpu_count}x {self.gpu_id or '-'}"

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


@dataclass(frozen=True)
class Registry:
    """A container registry credential (GET /v2/registries): only its id and name are ever
    readable; the username and password are write-only."""

    id: str
    name: str

    @classmethod
    def from_api(cls, data: Any) -> Registry:
        from podcycle.runpod.errors import ApiError

        if not isinstance(data, dict) or not isinstance(data.get("id"), str):
            raise ApiError("RunPod answered with a registry credential that has no id",
                           "check RUNPOD_API_BASE_URL points at the RunPod API (v2)")
        return cls(id=data["id"], name=str(data.get("name") or ""))

    def to_json(self) -> dict[str, Any]:
        return {"id": self.id, "name": self.name}
