"""RunPod's JSON turned into typed records, in one place: nothing outside this module reads a
raw pod field. Ids are validated here too, before any request is built from them."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import UTC, datetime
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


def _usable_id(record_id: str, what: str) -> None:
    """An id from the API that this tool would refuse from a user (`../x`, a line break that
    would forge a line of output) is refused as the API's answer, before it is shown,
    recorded or put in a path."""
    from podcycle.redact import clipped
    from podcycle.runpod.errors import ApiError

    if not POD_ID.fullmatch(record_id):
        raise ApiError(f"RunPod answered with a {what} id this tool cannot use: "
                       f"'{clipped(record_id, 80)}' ({what} ids are {POD_ID_RULE})",
                       "check RUNPOD_API_BASE_URL points at the RunPod API (v2); such a "
                       f"{what} can only be stopped in the RunPod console")


def validate_cluster_id(cluster_id: str) -> str:
    """The id itself, or a ConfigError before anything is sent (same rule as pod ids)."""
    if not isinstance(cluster_id, str) or not POD_ID.fullmatch(cluster_id):
        raise ConfigError(f"invalid cluster id {cluster_id!r}: cluster ids are {POD_ID_RULE}",
                          "copy the id from inv cluster.list (the ID column)")
    return cluster_id


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


# What may reach ssh's command line as a host, a user name and a port: a host name or an IP
# address, a user name (RunPod's proxy users read "podid-64410f5e"), a port number. Nothing
# that starts with '-' (ssh would read "-oProxyCommand=..." as an option, and run it), and no
# space, quote or control character.
# An IPv6 address holds two colons at least ("::1"): "127.0.0.1:2222" (a port given with the
# host) is no address, and Fabric raised a traceback on it once the pod was made.
SSH_HOST = re.compile(r"[A-Za-z0-9][A-Za-z0-9.-]{0,252}|(?=[^:]*:[^:]*:)[0-9A-Fa-f:.]{2,45}")
HOST_AND_PORT = re.compile(r"([A-Za-z0-9][A-Za-z0-9.-]{0,252}):([0-9]{1,5})")
SSH_USER = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._-]{0,63}")


def ssh_target_problem(host: Any, user: Any, port: Any) -> str | None:
    """Why (host, user, port) cannot be given to ssh, or None when they can."""
    from podcycle.redact import clipped

    def shown(value: Any) -> str:
        return clipped(value if isinstance(value, str) else repr(value), 80)

    if isinstance(host, str) and HOST_AND_PORT.fullmatch(host):
        return (f"SSH host '{shown(host)}' holds a port: the host and the port are given "
                "apart")
    if not isinstance(host, str) or not SSH_HOST.fullmatch(host):
        return f"SSH host '{shown(host)}' is not a host name or an IP address"
    if not isinstance(user, str) or not SSH_USER.fullmatch(user):
        return (f"SSH user name '{shown(user)}' is not a user name (letters, digits, '.', '_' "
                "and '-', not starting with '-')")
    if api_int(port, -1) not in range(1, 65536):
        return f"SSH port '{shown(port)}' is not a port number (1 to 65535)"
    return None


@dataclass(frozen=True)
class SshEndpoint:
    host: str
    port: int
    username: str

    @classmethod
    def from_api(cls, data: Any) -> SshEndpoint | None:
        """As the API gave it (a listing shows it as text); check() before ssh gets it."""
        if not isinstance(data, dict) or not data.get("host"):
            return None
        return cls(str(data["host"]), api_int(data.get("port"), 22),
                   str(data.get("username") or "root"))

    def check(self) -> SshEndpoint:
        """Itself, when ssh can be given it; else the API's answer is refused, before any
        command line is built from it."""
        from podcycle.runpod.errors import ApiError

        problem = ssh_target_problem(self.host, self.username, self.port)
        if problem:
            raise ApiError(f"RunPod answered with an {problem}: this tool will not pass it "
                           "to ssh", "check RUNPOD_API_BASE_URL points at the RunPod API (v2)")
        return self

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
    # Asked to start JupyterLab (see _jupyter_started), and whether its env holds the
    # JUPYTER_PASSWORD RunPod injects for startJupyter (the value is never shown).
    jupyter_started: bool = False
    jupyter_password: bool = False
    # Cluster membership (`cluster {id, rank, role, ip}`), None for a standalone pod. The rank
    # is NODE_RANK (0 = the primary); RunPod leaves it null until it is assigned.
    cluster_id: str | None = None
    node_rank: int | None = None
    cluster_ip: str | None = None
    # The run (its token: id@start) a cycle made it for: POD_CYCLE_RUN in its env. Tells a
    # run's own pod from another folder's run of the same id, whose pod has its name.
    cycle_run: str | None = None
    raw: dict[str, Any] = field(default_factory=dict, repr=False, compare=False, hash=False)

    @classmethod
    def from_api(cls, data: dict[str, Any]) -> Pod:
        from podcycle.runpod.errors import ApiError

        if not isinstance(data, dict) or not isinstance(data.get("id"), str):
            raise ApiError("RunPod answered with a pod record that has no id",
                           "check RUNPOD_API_BASE_URL points at the RunPod API (v2)")
        _usable_id(data["id"], "pod")
        gpu = data.get("gpu") if isinstance(data.get("gpu"), dict) else {}
        ssh = data.get("ssh") if isinstance(data.get("ssh"), dict) else {}
        runtime = data.get("runtime") if isinstance(data.get("runtime"), dict) else {}
        mappings = tuple(
            PortMapping(api_int(p.get("private")), api_int(p.get("public"), None),
                        str(p.get("type") or ""), api_text(p.get("ip")))
            for p in api_list(runtime.get("ports")) if isinstance(p, dict))
        mounts = data.get("mounts") if isinstance(data.get("mounts"), dict) else {}
        network = mounts.get("network") if isinstance(mounts.get("network"), list) else []
        env = data.get("env") if isinstance(data.get("env"), dict) else {}
        ports = data.get("ports") if isinstance(data.get("ports"), list) else []
        cluster = data.get("cluster") if isinstance(data.get("cluster"), dict) else {}
        rank = cluster.get("rank")
        return cls(
            id=data["id"], name=str(data.get("name") or ""),
            status=PodStatus.parse(data.get("status")),
            gpu_id=str(gpu["id"]) if gpu.get("id") else None,
            gpu_count=api_int(gpu.get("count"), 1 if gpu else 0),
            cloud=str(data.get("cloud") or "").lower(),
            cost_per_hour=api_money(data.get("cost")),
            ssh_direct=SshEndpoint.from_api(ssh.get("direct")),
            ssh_proxy=SshEndpoint.from_api(ssh.get("proxy")),
            ports=tuple(str(p) for p in ports),
            runtime_ports=mappings,
            created_at=api_text(data.get("createdAt")),
            started_at=api_text(data.get("startedAt")),
            template_id=api_text(data.get("template")),
            uptime_seconds=runtime.get("uptime") if isinstance(runtime.get("uptime"), int)
            else None,
            network_volume_ids=tuple(str(m["volumeId"]) for m in network
                                     if isinstance(m, dict) and m.get("volumeId")),
            jupyter_started=_jupyter_started(data.get("startJupyter"), env),
            jupyter_password="JUPYTER_PASSWORD" in env,
            cluster_id=str(cluster["id"]) if cluster.get("id") else None,
            node_rank=rank if isinstance(rank, int) and not isinstance(rank, bool) else None,
            cluster_ip=str(cluster["ip"]) if cluster.get("ip") else None,
            cycle_run=env["POD_CYCLE_RUN"] if isinstance(env.get("POD_CYCLE_RUN"), str)
            else None,
            raw=data)

    @property
    def gpu_label(self) -> str:
        return f"{self.gpu_count}x {self.gpu_id or '-'}"

    def public_port(self, private: int) -> PortMapping | None:
        return next((m for m in self.runtime_ports if m.private == private), None)

    def to_json(self) -> dict[str, Any]:
        """The API's record as it came (for --json output and provision.json)."""
        return self.raw


def _jupyter_started(start_jupyter: Any, env: dict[str, Any]) -> bool:
    """Whether the pod's image was asked to start Jupyter. The spec's startJupyter is never
    returned by GET: RunPod injects JUPYTER_PASSWORD for it instead. This image's entrypoint
    reads START_JUPYTER (1 unless set to 0)."""
    if start_jupyter is True or env.get("START_JUPYTER") == "1":
        return True
    return "JUPYTER_PASSWORD" in env and env.get("START_JUPYTER") != "0"


def api_text(value: Any) -> str | None:
    """A text field from the API: the string, else None (a number, a list, a null)."""
    return value if isinstance(value, str) else None


def api_list(value: Any) -> list[Any]:
    """A list field from the API: the list, else empty (`runtime.ports: 5` was a TypeError)."""
    return value if isinstance(value, list) else []


def api_time(value: Any) -> datetime | None:
    """An API timestamp (RFC 3339) as an aware datetime; one without a zone is UTC (RunPod's
    are); None when there is none or it does not parse. A number, or a time without a zone
    compared with an aware one, was a traceback in pod.leftovers and pod.logs."""
    if not isinstance(value, str) or not value.strip():
        return None
    try:
        when = datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
    except (ValueError, OverflowError):
        return None
    return when if when.tzinfo else when.replace(tzinfo=UTC)


def api_int(value: Any, default: int = 0) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else default


def api_money(value: Any) -> float:
    """A price or cost from the API: a finite, non-negative number, else 0 (unknown)."""
    import math

    if isinstance(value, bool) or not isinstance(value, int | float):
        return 0.0
    return float(value) if math.isfinite(value) and value >= 0 else 0.0


@dataclass(frozen=True)
class Cluster:
    """A RunPod Instant Cluster (GET /v2/clusters/{id}): `pod_count` identical pods of
    `gpu_count_per_pod` GPUs each. RunPod gives no cluster status: readiness is every member
    RUNNING with SSH, read from the members (`pods`, filled by `with_pods`, or
    GET /v2/clusters/{id}/pods). `pods_total`/`pods_by_status` are the API's own summary."""

    id: str
    name: str
    type: str  # TRAINING | APPLICATION | SLURM | RAY
    gpu_type_id: str | None
    gpu_count_per_pod: int
    pod_count: int
    created_at: str | None
    template_id: str | None = None
    data_center_id: str | None = None
    pods_total: int = 0
    pods_by_status: dict[str, int] = field(default_factory=dict, hash=False)
    primary_pod_id: str | None = None
    primary_status: PodStatus | None = None
    primary_ssh: str | None = None  # "host:port", once the primary is RUNNING with SSH
    network_cidr: str | None = None
    # The member pods when known (an API answer that embeds them, or `with_pods`).
    pods: list[Pod] = field(default_factory=list, hash=False)
    raw: dict[str, Any] = field(default_factory=dict, repr=False, compare=False, hash=False)

    @classmethod
    def from_api(cls, data: Any) -> Cluster:
        from podcycle.runpod.errors import ApiError

        if not isinstance(data, dict) or not isinstance(data.get("id"), str):
            raise ApiError("RunPod answered with a cluster record that has no id",
                           "check RUNPOD_API_BASE_URL points at the RunPod API (v2)")
        _usable_id(data["id"], "cluster")
        compute = data.get("compute") if isinstance(data.get("compute"), dict) else {}
        summary = data.get("pods") if isinstance(data.get("pods"), dict) else {}
        members = [Pod.from_api(p) for p in data.get("pods") or []
                   if isinstance(p, dict)] if isinstance(data.get("pods"), list) else []
        primary = data.get("primary") if isinstance(data.get("primary"), dict) else {}
        network = data.get("network") if isinstance(data.get("network"), dict) else {}
        by_status = summary.get("byStatus") if isinstance(summary.get("byStatus"), dict) else {}
        return cls(
            id=data["id"], name=str(data.get("name") or ""),
            type=str(data.get("type") or "").upper(),
            gpu_type_id=compute.get("gpuTypeId") if isinstance(compute.get("gpuTypeId"), str)
            else None,
            gpu_count_per_pod=api_int(compute.get("gpuCountPerPod"), 0),
            pod_count=api_int(compute.get("podCount"), 0),
            created_at=api_text(data.get("createdAt")),
            template_id=api_text(data.get("template")) or None,
            data_center_id=api_text(data.get("dataCenterId")) or None,
            pods_total=api_int(summary.get("total"), len(members)),
            pods_by_status={str(k): api_int(v) for k, v in by_status.items()},
            primary_pod_id=primary.get("podId") or None,
            primary_status=PodStatus.parse(primary["status"]) if primary.get("status")
            else None,
            primary_ssh=primary.get("sshEndpoint") or None,
            network_cidr=network.get("cidr") or None,
            pods=members, raw=data)

    def with_pods(self, pods: list[Pod]) -> Cluster:
        """This cluster with its members (GET /v2/clusters/{id}/pods), ordered by node rank."""
        from dataclasses import replace

        ordered = sorted(pods, key=lambda p: (p.node_rank is None, p.node_rank or 0, p.id))
        return replace(self, pods=ordered)

    @property
    def total_gpus(self) -> int:
        """WORLD_SIZE when one trainer process runs per GPU."""
        return self.pod_count * self.gpu_count_per_pod

    @property
    def gpu_label(self) -> str:
        return f"{self.pod_count}x{self.gpu_count_per_pod} {self.gpu_type_id or '-'}"

    @property
    def cost_per_hour(self) -> float:
        """What the known members bill per hour (the cluster record carries no cost)."""
        return sum(p.cost_per_hour for p in self.pods)

    @property
    def primary(self) -> Pod | None:
        """The member with node rank 0 (or the API's primary), when members are known."""
        by_rank = next((p for p in self.pods if p.node_rank == 0), None)
        return by_rank or next((p for p in self.pods if p.id == self.primary_pod_id), None)

    @property
    def ready(self) -> bool:
        """Every member known, RUNNING and reachable over SSH (RunPod has no cluster status)."""
        return (self.pod_count > 0 and len(self.pods) == self.pod_count
                and all(p.status is PodStatus.RUNNING and (p.ssh_direct or p.ssh_proxy)
                        for p in self.pods))

    def to_json(self) -> dict[str, Any]:
        """The API's record as it came, plus the members when known (for --json output)."""
        if not self.pods or isinstance(self.raw.get("pods"), list):
            return self.raw
        return {**self.raw, "members": [p.to_json() for p in self.pods]}


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
