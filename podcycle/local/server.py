"""The local RunPod API server: RunPod REST v2 paths, shapes, status codes and problem+json
errors (see tests/data/runpod-rest-v2.openapi.json), served on 127.0.0.1 with its state on disk.

Instant Clusters are local too: `POST /v2/clusters` makes `podCount` local pods that share one
MASTER_PORT and get RunPod's node env (MASTER_ADDR=127.0.0.1, NODE_RANK, ...), so torchrun and
gloo run across them over loopback. Members are hidden from GET /v2/pods unless
includeClusterPods=true, and are changed only through their cluster (409 on /v2/pods).

Besides the v2 subset it has a small admin API under `/_local/` (token in server.json) that tests
use to add keys with scopes and to inject faults: a status code per path (with RunPod's JSON
problem, or `text`: a gateway's plain page; `headers` added to it, a redirect's Location; with
`after`, once the request was done), delays,
N failures then success, slow pod readiness, an sshd that dies (`/_local/pods/ID/kill-sshd`), a
node lost (`/_local/pods/ID/kill`: every process SIGKILLed, the pod ERROR); `/_local/pods` and
`/_local/clusters` list what runs, with pids, folders and ranks.

Run: python -m podcycle.local.server --state-dir DIR [--port 0]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import secrets
import shutil
import signal
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

from podcycle import PROJECT_ROOT
from podcycle.local import LOCAL_MAX_NODES, READY, logs, procs
from podcycle.local.pods import LocalPod, free_port
from podcycle.runpod.errors import scope_for

CATALOG = PROJECT_ROOT / "config" / "runpod_gpu_types_catalog_2026-02-26.json"
ALL_SCOPES = ["templates", "catalog", "pods", "ssh-keys", "billing", "network-volumes",
              "registries", "clusters"]
# Images the local RunPod treats as private (its stand-in for a registry that wants a login):
# any image under this prefix, and those marked with POST /_local/private-images. Every
# other image (the default template's included) is public, as before.
PRIVATE_IMAGE_PREFIX = "private.local/"
ACTIONS = {
    "PROVISIONING": ["stop", "terminate"],
    "STARTING": ["stop", "terminate"],
    "RUNNING": ["stop", "restart", "terminate"],
    "EXITED": ["start", "terminate"],
    "ERROR": ["start", "terminate"],
}
# The CUDA version every local host's driver reports (a pod's cudaVersion).
LOCAL_CUDA = "12.8"
CREATE_FIELDS = {"name", "cloud", "cpu", "dataCenterIds", "globalNetworking", "gpu", "mounts",
                 "startJupyter", "startSsh", "templateId", "args", "disk", "env", "image",
                 "ports", "registry"}
# CreateClusterRequest (BaseContainerConfig + the cluster's own fields; unevaluatedProperties
# false): no templateId, registry or cloud.
CLUSTER_FIELDS = {"name", "type", "compute", "dataCenterIds", "mounts", "startJupyter",
                  "startSsh", "args", "disk", "env", "image", "ports"}
CLUSTER_TYPES = ("APPLICATION", "TRAINING", "SLURM", "RAY")
# The members' addresses: loopback stands for the cluster's private network.
CLUSTER_ADDR = "127.0.0.1"
RATE_POLICY = '"minute";q=600;w=60, "hour";q=20000;w=3600, "day";q=200000;w=86400'
DEFAULT_TEMPLATE_ENV = {
    "START_SSHD": "1", "START_JUPYTER": "0", "START_INFERENCE_API": "1",
    "START_HF_WATCH": "0", "START_IDLE_WATCHDOG": "0", "CLONE_REPO_ON_START": "0",
    "GIT_AUTO_PULL": "0", "SYNC_REQUIREMENTS_ON_START": "0",
    "RUNPOD_PHASE_TIMING_ENABLED": "1",
}


def now_iso() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class ProblemError(Exception):
    def __init__(self, status: int, detail: str, errors: list[str] | None = None,
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(detail)
        self.status, self.detail, self.errors, self.headers = status, detail, errors, headers


def invalid(*errors: str) -> ProblemError:
    """The spec's answer to a body or query that fails validation: 422, problem+json,
    "Request validation failed.", with what is wrong in `errors`."""
    return ProblemError(422, "Request validation failed.", list(errors))


class LocalRunPod:
    """State and behaviour; the HTTP handler below only translates."""

    def __init__(self, state_dir: Path, project_root: Path = PROJECT_ROOT) -> None:
        self.dir = state_dir
        self.project_root = project_root
        self.lock = threading.RLock()
        self.state_path = state_dir / "state.json"
        self.url = ""
        self.state = self._load()
        self.catalog = json.loads(CATALOG.read_text())["gpuTypes"]
        self.minute_counts: dict[str, list[float]] = {}
        # Pods whose stop is ending their processes (under self.lock): a boot still starting
        # them sees the stop, and neither records them nor calls their end a failure.
        self.stopping: set[str] = set()

    # -- state -----------------------------------------------------------------------------
    @staticmethod
    def _collections() -> dict[str, Any]:
        """Every collection the server keeps, empty: a new state starts with these, and a
        state saved by an older server gains the ones it lacks (one place, no setdefault
        scattered through the handlers)."""
        return {"keys": {}, "ssh_keys": [], "templates": {}, "pods": {}, "volumes": {},
                "registries": {}, "private_images": [], "billing": {}, "faults": [],
                "requests": [], "clusters": {}, "cluster_billing": {},
                "settings": {"provision_delay": 0.2, "ready_timeout": 60.0}}

    def _load(self) -> dict[str, Any]:
        if self.state_path.exists():
            state = json.loads(self.state_path.read_text())
        else:
            key = "local-" + secrets.token_urlsafe(24)
            state = {"api_key": key, "admin_token": secrets.token_urlsafe(24)}
            state.update(self._collections())
            state["keys"][key] = {"scopes": ALL_SCOPES}
            template = self._default_template()
            state["templates"][template["id"]] = template
        for name, empty in self._collections().items():
            state.setdefault(name, empty)
        main = state["keys"].get(state["api_key"])
        if main is not None:  # a state from before a scope existed: the main key has all
            main["scopes"] = sorted(set(main["scopes"]) | set(ALL_SCOPES))
        return state

    def save(self) -> None:
        with self.lock:
            tmp = self.state_path.with_suffix(".tmp")
            tmp.write_text(json.dumps(self.state, indent=1))
            os.chmod(tmp, 0o600)
            tmp.replace(self.state_path)

    @staticmethod
    def _default_template() -> dict[str, Any]:
        return {
            "id": "tpl-local-chessbot",
            "name": "chess-bot-training",
            "image": "ghcr.io/example/chess-bot-runpod:latest",
            "args": "",
            "disk": 50,
            "mounts": {"persistent": {"size": 20, "path": "/workspace"}},
            "ports": ["8888/http", "8000/http", "22/tcp"],
            "env": dict(DEFAULT_TEMPLATE_ENV),
            "registry": None,
            "serverless": False,
            "public": False,
            "category": "NVIDIA",
            "startSsh": True,
            "startJupyter": False,
            "allowedCudaVersions": [],
        }

    # -- auth, rate limit, faults -----------------------------------------------------------
    def authorize(self, header: str | None, path: str) -> str:
        if not header or not header.startswith("Bearer "):
            raise ProblemError(401, "missing bearer token")
        key = header[len("Bearer "):].strip()
        entry = self.state["keys"].get(key)
        if entry is None:
            raise ProblemError(401, "invalid API key")
        scope = scope_for(path)
        if scope not in entry["scopes"]:
            raise ProblemError(403, f"access denied: this key lacks the {scope} scope")
        return key

    def rate_headers(self, key: str) -> dict[str, str]:
        now = time.monotonic()
        window = [t for t in self.minute_counts.get(key, []) if now - t < 60]
        window.append(now)
        self.minute_counts[key] = window
        remaining = max(0, 600 - len(window))
        return {"RateLimit": f'"minute";r={remaining};t=60', "RateLimit-Policy": RATE_POLICY}

    def take_fault(self, method: str, path: str) -> dict[str, Any] | None:
        with self.lock:
            for fault in self.state["faults"]:
                if fault.get("method", "*") not in ("*", method):
                    continue
                if not re.fullmatch(fault.get("path", ".*"), path):
                    continue
                times = fault.get("times")
                if times is not None:
                    if times <= 0:
                        continue
                    fault["times"] = times - 1
                self.save()
                return dict(fault)
        return None

    # -- templates ---------------------------------------------------------------------------
    def list_templates(self) -> dict[str, Any]:
        return {"templates": list(self.state["templates"].values())}

    def get_template(self, template_id: str) -> dict[str, Any]:
        template = self.state["templates"].get(template_id)
        if template is None:
            raise ProblemError(404, f"template {template_id} not found")
        return template

    TEMPLATE_FIELDS = {"name": str, "image": str, "args": str, "disk": int, "env": dict,
                       "ports": list, "registry": (str, type(None)), "mounts": dict,
                       "startSsh": bool, "startJupyter": bool, "category": str,
                       "public": bool, "serverless": bool, "allowedCudaVersions": list}

    def _check_template_body(self, body: Any, creating: bool) -> None:
        if not isinstance(body, dict):
            raise ProblemError(400, "request body must be a JSON object")
        errors = [f"{key}: unknown field" for key in body if key not in self.TEMPLATE_FIELDS]
        for key, kind in self.TEMPLATE_FIELDS.items():
            if key in body and (not isinstance(body[key], kind)
                                or (kind is int and isinstance(body[key], bool))):
                errors.append(f"{key}: wrong type")
        for key in ("name", "image"):
            if (creating or key in body) and not (isinstance(body.get(key), str)
                                                  and body.get(key)):
                errors.append(f"{key}: required, a non-empty string")
        if body.get("category", "NVIDIA") not in ("NVIDIA", "AMD", "CPU"):
            errors.append("category: must be NVIDIA, AMD or CPU")
        mounts = body.get("mounts")
        if isinstance(mounts, dict):
            persistent = mounts.get("persistent")
            if set(mounts) - {"persistent"}:
                errors.append("mounts: only a persistent mount is supported")
            elif persistent is not None and not (
                    isinstance(persistent, dict) and isinstance(persistent.get("size"), int)
                    and persistent["size"] >= 10 and isinstance(persistent.get("path"), str)):
                errors.append("mounts.persistent: {size: integer >= 10, path: string}")
        if errors:
            raise ProblemError(422, "invalid template", errors)

    def _name_taken(self, name: str, other_than: str | None = None) -> None:
        if any(t["name"] == name and t["id"] != other_than
               for t in self.state["templates"].values()):
            raise ProblemError(400, f"a template named {name!r} already exists")

    def create_template(self, body: Any) -> dict[str, Any]:
        self._check_template_body(body, creating=True)
        self._check_registry_ref(body)
        with self.lock:
            self._name_taken(body["name"])
            template = {"id": "tpl-" + secrets.token_hex(6), "args": "", "disk": 20,
                        "mounts": {}, "ports": [], "env": {}, "registry": None,
                        "serverless": False, "public": False, "category": "NVIDIA",
                        "startSsh": True, "startJupyter": True, "allowedCudaVersions": [],
                        **body}
            self.state["templates"][template["id"]] = template
            self.save()
            return template

    def update_template(self, template_id: str, body: Any) -> dict[str, Any]:
        self._check_template_body(body, creating=False)
        self._check_registry_ref(body)
        with self.lock:
            template = self.get_template(template_id)
            if "name" in body:
                self._name_taken(body["name"], other_than=template_id)
            # The spec's TemplateMounts: in a PATCH, `{}` leaves the mount as it is.
            template.update({k: v for k, v in body.items() if not (k == "mounts" and v == {})})
            self.save()
            return template

    def delete_template(self, template_id: str) -> None:
        with self.lock:
            self.get_template(template_id)
            del self.state["templates"][template_id]
            self.save()

    # -- network volumes --------------------------------------------------------------------
    DATA_CENTERS = ("LOCAL-1", "LOCAL-2")

    def volume_dir(self, volume_id: str) -> Path:
        return self.dir / "volumes" / volume_id

    def get_volume(self, volume_id: str) -> dict[str, Any]:
        volume = self.state["volumes"].get(volume_id)
        if volume is None:
            raise ProblemError(404, f"network volume {volume_id} not found")
        return volume

    def _check_volume_body(self, body: Any, creating: bool) -> None:
        if not isinstance(body, dict):
            raise ProblemError(400, "request body must be a JSON object")
        allowed = {"name", "size", "dataCenter", "type"} if creating else {"name", "size"}
        errors = [f"{key}: unknown field" for key in body if key not in allowed]
        if creating:
            errors += [f"{key}: required" for key in ("name", "size", "dataCenter")
                       if key not in body]
        elif not body:
            errors.append("at least one of name, size")
        if "name" in body and not (isinstance(body["name"], str) and body["name"]):
            errors.append("name: a non-empty string")
        size = body.get("size")
        if "size" in body and not (isinstance(size, int) and not isinstance(size, bool)
                                   and 10 <= size <= 4096):
            errors.append("size: an integer from 10 to 4096 (GB)")
        if "dataCenter" in body and not (isinstance(body["dataCenter"], str)
                                         and body["dataCenter"]):
            errors.append("dataCenter: a non-empty string")
        if body.get("type", "STANDARD") not in ("STANDARD", "HIGH_PERFORMANCE"):
            errors.append("type: STANDARD or HIGH_PERFORMANCE")
        if errors:
            raise ProblemError(422, "invalid network volume", errors)

    def create_volume(self, body: Any) -> dict[str, Any]:
        self._check_volume_body(body, creating=True)
        if body["dataCenter"] not in self.DATA_CENTERS:
            raise ProblemError(400, f"unknown data center {body['dataCenter']!r} (the local "
                                    f"RunPod has {', '.join(self.DATA_CENTERS)})")
        volume = {"id": "vol" + secrets.token_hex(5), "name": body["name"],
                  "size": body["size"], "dataCenter": body["dataCenter"],
                  "type": body.get("type", "STANDARD")}
        with self.lock:
            self.state["volumes"][volume["id"]] = volume
            self.volume_dir(volume["id"]).mkdir(parents=True, exist_ok=True)
            self.save()
        return volume

    def update_volume(self, volume_id: str, body: Any) -> dict[str, Any]:
        self._check_volume_body(body, creating=False)
        with self.lock:
            volume = self.get_volume(volume_id)
            if "size" in body and body["size"] < volume["size"]:
                raise ProblemError(400, f"size {body['size']} GB is below the volume's "
                                        f"{volume['size']} GB: a volume cannot shrink")
            volume.update(body)
            self.save()
            return volume

    def delete_volume(self, volume_id: str) -> None:
        with self.lock:
            self.get_volume(volume_id)
            del self.state["volumes"][volume_id]
            self.save()
        shutil.rmtree(self.volume_dir(volume_id), ignore_errors=True)

    def _network_mounts(self, body: dict[str, Any]) -> str:
        """Check a create's mounts; the data centre the pod lands in (its volume's)."""
        mounts = body.get("mounts") or {}
        if not isinstance(mounts, dict):
            raise invalid("$.mounts: an object")
        network = mounts.get("network") or []
        if mounts.get("persistent") and network:
            raise ProblemError(400, "mounts: persistent and network are mutually exclusive")
        if len(network) > 1:
            raise invalid("$.mounts.network: at most 1 item")
        wanted = body.get("dataCenterIds") or []
        unknown = [dc for dc in wanted if dc not in self.DATA_CENTERS]
        if unknown and not set(wanted) & set(self.DATA_CENTERS):  # no place it could go
            raise ProblemError(400, f"unknown data center {unknown[0]!r} (the local RunPod "
                                    f"has {', '.join(self.DATA_CENTERS)})")
        for mount in network:
            if not (isinstance(mount, dict) and set(mount) == {"volumeId", "path"}):
                raise invalid("$.mounts.network[0]: {volumeId, path}")
            volume = self.state["volumes"].get(mount["volumeId"])
            if volume is None:
                raise ProblemError(400, f"network volume {mount['volumeId']} not found")
            if wanted and volume["dataCenter"] not in wanted:
                raise ProblemError(400, f"network volume {volume['id']} is in "
                                        f"{volume['dataCenter']}, not in {', '.join(wanted)}")
            return volume["dataCenter"]
        return wanted[0] if wanted and wanted[0] in self.DATA_CENTERS else "LOCAL-1"

    # -- registry credentials (private images) -----------------------------------------------
    # state.json keeps only {id, name}; what a pull needs (the username and a salted hash of
    # the password, never the password itself) lives in its own 0600 file and is never served.
    def _credentials_path(self) -> Path:
        return self.dir / "registry-credentials.json"

    def _credentials(self) -> dict[str, Any]:
        try:
            return json.loads(self._credentials_path().read_text())
        except (OSError, ValueError, RecursionError):
            return {}

    def _save_credentials(self, credentials: dict[str, Any]) -> None:
        path = self._credentials_path()
        tmp = path.with_suffix(".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as out:
            json.dump(credentials, out)
        os.chmod(tmp, 0o600)
        tmp.replace(path)

    def get_registry(self, registry_id: str) -> dict[str, Any]:
        registry = self.state["registries"].get(registry_id)
        if registry is None:
            raise ProblemError(404, f"registry credential {registry_id} not found")
        return registry

    def create_registry(self, body: Any) -> dict[str, Any]:
        import hashlib

        if not isinstance(body, dict):
            raise invalid("$: body must be an object")
        errors = [f"$: additional property {key!r} not allowed" for key in body
                  if key not in ("name", "username", "password")]
        errors += [f"$.{key}: required, a non-empty string" for key in
                   ("name", "username", "password")
                   if not (isinstance(body.get(key), str) and body[key])]
        if errors:
            raise invalid(*errors)
        with self.lock:
            registries = self.state["registries"]
            if any(r["name"] == body["name"] for r in registries.values()):
                raise ProblemError(400, f"a registry credential named {body['name']!r} "
                                        "already exists")
            registry = {"id": "reg" + secrets.token_hex(5), "name": body["name"]}
            salt = secrets.token_hex(16)
            credentials = self._credentials()
            credentials[registry["id"]] = {
                "username": body["username"], "salt": salt,
                "password_sha256": hashlib.sha256((salt + body["password"]).encode()
                                                  ).hexdigest()}
            self._save_credentials(credentials)
            registries[registry["id"]] = registry
            self.save()
            return dict(registry)

    def delete_registry(self, registry_id: str) -> None:
        """Refused while a pod uses the credential; templates that reference it lose the
        reference (`registry` becomes null), as the spec says."""
        with self.lock:
            self.get_registry(registry_id)
            users = [p["id"] for p in self.state["pods"].values()
                     if p.get("registry") == registry_id]
            if users:
                raise ProblemError(400, f"registry credential {registry_id} is in use by "
                                        f"pod(s) {', '.join(users)}")
            for template in self.state["templates"].values():
                if template.get("registry") == registry_id:
                    template["registry"] = None
            del self.state["registries"][registry_id]
            credentials = self._credentials()
            credentials.pop(registry_id, None)
            self._save_credentials(credentials)
            self.save()

    def _check_registry_ref(self, body: Any) -> None:
        registry = body.get("registry") if isinstance(body, dict) else None
        if isinstance(registry, str) and registry not in self.state.get("registries", {}):
            raise ProblemError(400, f"registry credential {registry} not found")

    def _is_private(self, image: str) -> dict[str, Any] | None:
        """The private mark that covers this image (None: a public image)."""
        if image.startswith(PRIVATE_IMAGE_PREFIX):
            return {"prefix": PRIVATE_IMAGE_PREFIX}
        return next((m for m in self.state.get("private_images", [])
                     if image.startswith(m["prefix"])), None)

    def _pull_denied(self, pod: dict[str, Any]) -> str | None:
        """Why the pod's image cannot be pulled (the local stand-in for a registry that
        answers 401/403), or None."""
        image = str(pod.get("image") or "")
        mark = self._is_private(image)
        if mark is None:
            return None
        if pod.get("cluster"):
            return (f"image pull failed: {image} is private (unauthorized); clusters cannot use "
                    "a registry credential (RunPod does not support private registries for "
                    "clusters): make the image public, or push it to a public repository")
        registry = pod.get("registry")
        fix = ("store a login with inv registry.create NAME --username USER, put "
               "registry = \"NAME\" in config/template.toml and run inv template.sync")
        if not registry:
            return (f"image pull failed: {image} is private (unauthorized) and the pod has no "
                    f"registry credential; {fix}")
        credential = self._credentials().get(registry)
        if credential is None:
            return f"image pull failed: registry credential {registry} does not exist; {fix}"
        if mark.get("username") and credential["username"] != mark["username"]:
            return (f"image pull failed: {image}: registry credential {registry} has no "
                    f"access (denied); {fix}")
        return None

    # -- catalog ----------------------------------------------------------------------------
    def list_data_centers(self) -> dict[str, Any]:
        """The local data centres, as the spec's ListDataCentersResponse."""
        return {"dataCenters": [
            {"id": dc, "name": f"Local loopback {dc.rsplit('-', 1)[1]}", "region": "UNKNOWN",
             "globalNetwork": False, "networkVolumeTypes": ["STANDARD", "HIGH_PERFORMANCE"],
             "compliance": []} for dc in self.DATA_CENTERS]}

    def list_gpus(self, query: dict[str, list[str]]) -> dict[str, Any]:
        include = query.get("include", [""])[0]
        product = query.get("product", [""])[0]
        if include and include != "AVAILABILITY":
            raise ProblemError(422, "include: unsupported value",
                               [f"include: {include!r} is not one of ['AVAILABILITY']"])
        if bool(include) != bool(product):
            raise ProblemError(400, "include=AVAILABILITY and product must be given together")
        unknown = [p for p in product.split(",") if p and p not in ("POD", "CLUSTER",
                                                                     "SERVERLESS")]
        if unknown:
            raise invalid(f"product: {unknown[0]!r} is not one of POD, CLUSTER, SERVERLESS")
        for name in ("cloud", "count"):
            if name in query and not include:
                raise ProblemError(400, f"{name} is valid only with include=AVAILABILITY")
        cloud = query.get("cloud", ["SECURE"])[0]
        if cloud not in ("SECURE", "COMMUNITY"):
            raise ProblemError(422, "cloud: unsupported value", [f"cloud: {cloud!r}"])
        try:
            count = int(query.get("count", ["1"])[0])
        except ValueError:
            raise ProblemError(422, "count must be an integer") from None
        return {"gpus": [self._gpu(g, bool(include), cloud, count) for g in self.catalog]}

    @staticmethod
    def _gpu(g: dict[str, Any], availability: bool, cloud: str, count: int) -> dict[str, Any]:
        item: dict[str, Any] = {
            "id": g["id"], "name": g["displayName"], "pool": None,
            "manufacturer": g["manufacturer"], "memory": g["memoryInGb"],
            "secure": g["secureCloud"], "community": g["communityCloud"],
            "price": {"secure": g["securePrice"], "community": g["communityPrice"]},
            "maxCount": {"secure": g["maxGpuCountSecureCloud"],
                         "community": g["maxGpuCountCommunityCloud"]},
        }
        if availability:
            offered = g["secureCloud"] if cloud == "SECURE" else g["communityCloud"]
            ceiling = g["maxGpuCountSecureCloud"] if cloud == "SECURE" else g[
                "maxGpuCountCommunityCloud"]
            level = g["sampleAvailability"] if offered and count <= ceiling else "NONE"
            item["availability"] = level
            if level != "NONE":
                item["dataCenters"] = [{"id": "LOCAL-1", "name": "Local loopback 1",
                                        "availability": level}]
            if g["manufacturer"] == "NVIDIA" and g["memoryInGb"] > 0:
                item["cudaVersions"] = [{"version": "12.8", "available": level != "NONE"}]
        return item

    def gpu_entry(self, gpu_id: str) -> dict[str, Any] | None:
        return next((g for g in self.catalog if g["id"] == gpu_id), None)

    # -- ssh keys ----------------------------------------------------------------------------
    def put_ssh_keys(self, body: Any) -> dict[str, Any]:
        if not isinstance(body, dict) or set(body) != {"keys"} or not isinstance(
                body["keys"], list):
            raise invalid("$: body must be {\"keys\": [...]}")
        pattern = re.compile(r"^(ssh|ecdsa|sk)-[^\s]+ [^\s]+([ \t][^\n\r]*)?$")
        bad = [k for k in body["keys"] if not isinstance(k, str) or not pattern.match(k)]
        if bad:
            raise invalid(*(f"keys: {str(k)[:40]!r} is not an authorized_keys line"
                            for k in bad))
        with self.lock:
            self.state["ssh_keys"] = list(body["keys"])
            self.save()
        return {"keys": self.state["ssh_keys"]}

    # -- pods --------------------------------------------------------------------------------
    def render_pod(self, pod: dict[str, Any]) -> dict[str, Any]:
        public = {k: v for k, v in pod.items() if not k.startswith("_")}
        status = pod["status"]
        # A member is changed only through its cluster (_refuse_member): no action of its own.
        public["actions"] = [] if pod.get("cluster") else ACTIONS.get(status, [])
        ports = pod["_ports"]
        running = status == "RUNNING"
        direct = None
        if running and "22/tcp" in pod["ports"]:
            direct = {"host": "127.0.0.1", "port": ports["22"], "username": pod["_user"],
                      "command": f"ssh {pod['_user']}@127.0.0.1 -p {ports['22']}"}
        public["ssh"] = {"proxy": None, "direct": direct}
        entry = self.gpu_entry(pod["gpu"]["id"]) or {}
        price_key = "securePrice" if pod["cloud"] == "SECURE" else "communityPrice"
        billed = status in ("PROVISIONING", "STARTING", "RUNNING")
        public["cost"] = round(entry.get(price_key, 0.0) * pod["gpu"]["count"], 4) if billed \
            else 0.0
        if running:
            runtime_ports = []
            for spec in pod["ports"]:
                private, kind = spec.split("/")
                if private in ports:
                    runtime_ports.append({"private": int(private), "public": ports[private],
                                          "type": kind, "ip": "127.0.0.1"})
            started = pod.get("_started_at") or time.time()
            public["runtime"] = {"uptime": int(time.time() - started), "ports": runtime_ports}
        else:
            public["runtime"] = None
        return public

    def list_pods(self, query: dict[str, list[str]] | None = None) -> dict[str, Any]:
        """GET /v2/pods: cluster members only with includeClusterPods=true."""
        flag = ((query or {}).get("includeClusterPods") or ["false"])[0]
        if flag not in ("true", "false"):
            raise invalid(f"includeClusterPods: {flag!r} is not a boolean (true or false)")
        with self.lock:
            return {"pods": [self.render_pod(p) for p in self.state["pods"].values()
                             if flag == "true" or not p.get("cluster")]}

    def get_pod(self, pod_id: str) -> dict[str, Any]:
        pod = self.state["pods"].get(pod_id)
        if pod is None:
            raise ProblemError(404, f"pod {pod_id} not found")
        return pod

    def create_pod(self, body: Any) -> dict[str, Any]:
        if not isinstance(body, dict):
            raise invalid("$: body must be an object")
        extra = sorted(set(body) - CREATE_FIELDS)
        if extra:
            raise invalid(f"$: additional properties {', '.join(map(repr, extra))} "
                          "not allowed")
        name = body.get("name")
        if not isinstance(name, str) or not name:
            raise invalid("$.name: required")
        if "cpu" in body:
            raise ProblemError(400, "the local RunPod runs GPU pods only")
        gpu = body.get("gpu")
        if not isinstance(gpu, dict) or not isinstance(gpu.get("id"), str):
            raise ProblemError(400, "exactly one of gpu or cpu must be set")
        count = gpu.get("count", 1)
        if not isinstance(count, int) or count < 1:
            raise invalid("$.gpu.count: minimum 1")
        cloud = body.get("cloud", "SECURE")
        if cloud not in ("SECURE", "COMMUNITY"):
            raise invalid(f"$.cloud: {cloud!r}")
        template: dict[str, Any] = {}
        if "templateId" in body:
            template = self.state["templates"].get(body["templateId"]) or {}
            if not template:
                raise ProblemError(404, f"template {body['templateId']} not found")
        elif "image" not in body:
            raise invalid("$.image: required unless templateId is set")
        self._check_cuda(gpu, template)
        self._check_registry_ref(body)
        data_center = self._network_mounts(body)
        entry = self._placeable(gpu["id"], cloud, count)
        env = dict(template.get("env", {}))
        env.update(body.get("env") or {})
        start_ssh = body.get("startSsh", template.get("startSsh", False))
        if start_ssh and self.state["ssh_keys"] and "PUBLIC_KEY" not in (body.get("env") or {}):
            env["PUBLIC_KEY"] = "\n".join(self.state["ssh_keys"])
        # The spec's startJupyter: a generated JUPYTER_PASSWORD, unless the env sets one.
        if body.get("startJupyter", template.get("startJupyter", False)):
            env.setdefault("JUPYTER_PASSWORD", secrets.token_urlsafe(12))
        pod = self._pod_record(name, {
            "image": body.get("image", template.get("image", "")),
            "args": body.get("args", template.get("args", "")),
            "disk": body.get("disk", template.get("disk", 20)),
            "mounts": body.get("mounts", template.get("mounts", {})),
            "ports": body.get("ports", template.get("ports", [])), "env": env,
            "registry": body.get("registry", template.get("registry"))},
            gpu["id"], count, cloud, data_center)
        pod_id = pod["id"]
        with self.lock:
            self.state["pods"][pod_id] = pod
            price = entry["securePrice"] if cloud == "SECURE" else entry["communityPrice"]
            self.state["billing"][pod_id] = {
                "rate": round(price * count, 4), "intervals": []}
            self._bill(pod_id, True)
            self.save()
        self.system(pod_id, f"pod created: {count}x {gpu['id']}, {cloud.lower()} cloud; "
                            "PROVISIONING")
        self._boot(pod_id)
        return self.render_pod(pod)

    @staticmethod
    def _check_cuda(gpu: dict[str, Any], template: dict[str, Any]) -> None:
        """The create's CUDA constraints, as the spec has them: each a major.minor (else
        422); a floor beside a non-empty set in the body is a 400; sending either field
        replaces the template's constraint (an explicit [] is none), else the template's
        set applies; no local host offers more than LOCAL_CUDA (a capacity 400, as for a
        version no machine reports)."""
        sent = "minCudaVersion" in gpu or "allowedCudaVersions" in gpu
        floor = gpu.get("minCudaVersion")
        allowed = gpu.get("allowedCudaVersions") if sent else template.get("allowedCudaVersions")
        if allowed is None:
            allowed = []
        if not isinstance(allowed, list):
            raise invalid("$.gpu.allowedCudaVersions: must be an array")
        for value in ([floor] if floor is not None else []) + allowed:
            if not isinstance(value, str) or not re.fullmatch(r"[0-9]+\.[0-9]+", value):
                raise invalid(f"$.gpu: CUDA version {value!r} does not match ^\\d+\\.\\d+$")
        if floor is not None and gpu.get("allowedCudaVersions"):
            raise ProblemError(400, "gpu.minCudaVersion and a non-empty allowedCudaVersions "
                                    "are mutually exclusive")

        def numbers(version: str) -> tuple[int, ...]:
            return tuple(int(part) for part in version.split("."))

        if floor is not None and numbers(floor) > numbers(LOCAL_CUDA):
            raise ProblemError(400, f"no machine offers CUDA {floor} or later right now (the "
                                    f"local RunPod's hosts report {LOCAL_CUDA})")
        if allowed and LOCAL_CUDA not in allowed:
            raise ProblemError(400, f"no machine reports one of CUDA {', '.join(allowed)} "
                                    f"right now (the local RunPod's hosts report {LOCAL_CUDA})")

    def _placeable(self, gpu_id: str, cloud: str, count: int, per: str = "pod"
                   ) -> dict[str, Any]:
        """The catalog entry of a GPU type that can place `count` GPUs per pod in `cloud`
        now; a 400 naming what stops it otherwise."""
        entry = self.gpu_entry(gpu_id)
        if entry is None or entry["memoryInGb"] == 0:
            raise ProblemError(400, f"unknown GPU type {gpu_id!r}")
        offered = entry["secureCloud"] if cloud == "SECURE" else entry["communityCloud"]
        ceiling = entry["maxGpuCountSecureCloud"] if cloud == "SECURE" else entry[
            "maxGpuCountCommunityCloud"]
        if not offered or entry["sampleAvailability"] == "NONE":
            raise ProblemError(400, f"no {cloud.lower()} capacity for {gpu_id} right now")
        if count > ceiling:
            raise ProblemError(400, f"{gpu_id} allows at most {ceiling} GPUs per {per} "
                                    f"in {cloud.lower()} cloud")
        return entry

    @staticmethod
    def _pod_record(name: str, container: dict[str, Any], gpu_id: str, count: int, cloud: str,
                    data_center: str) -> dict[str, Any]:
        """A new pod's state (PROVISIONING): `container` holds image, args, disk, mounts,
        ports, env and registry; fields starting with '_' are the local RunPod's own."""
        pod_id = "lp" + secrets.token_hex(6)
        return {
            "id": pod_id, "name": name, **container,
            "status": "PROVISIONING",
            "gpu": {"id": gpu_id, "count": count},
            "cloud": cloud, "dataCenterId": data_center, "cudaVersion": LOCAL_CUDA,
            "template": None, "locked": False, "globalNetworking": {"enabled": False},
            "createdAt": now_iso(), "startedAt": None,
            "_ports": {"22": free_port(), "8000": free_port(), "8888": free_port()},
            "_user": LocalPod(Path("."), pod_id).user,
            "_pid": None,
        }

    def system(self, pod_id: str, text: str) -> None:
        """One line in the pod's system log (served by GET /v2/pods/{id}/logs)."""
        logs.system_event(self.dir / "pods" / pod_id, now_iso(), text)

    def _pod_obj(self, pod_id: str) -> LocalPod:
        return LocalPod(self.dir / "pods" / pod_id, pod_id, self.project_root)

    def _boot(self, pod_id: str) -> None:
        threading.Thread(target=self._boot_worker, args=(pod_id,), daemon=True).start()

    def _boot_worker(self, pod_id: str) -> None:
        """A pod's boot, in its own thread. Anything it did not expect (its state's save on
        a full disk) ended the thread without a word, and the pod stayed PROVISIONING,
        billing, until the cycle gave up on it minutes later: it turns ERROR, saying why."""
        try:
            self._boot_steps(pod_id)
        except Exception as exc:  # noqa: BLE001 - the pod must not be left booting forever
            import traceback

            traceback.print_exc()  # the server's log keeps the whole of it
            # Whatever of it already runs ends with it: ERROR forgets its pid, and an sshd's
            # title hides the pod's marker from local.down's scan.
            pod = self.state["pods"].get(pod_id) or {}
            procs.terminate(procs.pod_processes(pod_id, pod.get("_pid")))
            self._pod_obj(pod_id).clear_tmp()  # and its /tmp, as a stop's does
            self._set_error(pod_id, f"the local RunPod failed while booting it: "
                                    f"{type(exc).__name__}: {exc}")

    def _boot_steps(self, pod_id: str) -> None:
        settings = self.state["settings"]
        time.sleep(float(settings.get("provision_delay", 0.2)))
        with self.lock:
            pod = self.state["pods"].get(pod_id)
            if pod is None or pod["status"] != "PROVISIONING":
                return
            pod["status"] = "STARTING"
            self.save()
        self.system(pod_id, "machine assigned; container STARTING")
        denied = self._pull_denied(pod)
        if denied:  # RunPod would retry the pull forever; here the pod fails, and says why
            self._set_error(pod_id, denied)
            return
        local = self._pod_obj(pod_id)
        pod_key = self._pod_key()
        try:
            # A cluster member also gets RunPod's node env (MASTER_ADDR, NODE_RANK, ...).
            env = local.env({**pod["env"], **pod.get("_node_env", {})}, pod["_ports"],
                            {"url": self.url, "key": pod_key})
            for mount in (pod.get("mounts") or {}).get("network") or []:
                # The volume's folder appears at the mount path inside the pod's root.
                env["NETWORK_VOLUME_DIR"] = str(local.mount(
                    self.volume_dir(mount["volumeId"]), mount["path"]))
            pid = local.start(env)
        except OSError as exc:
            self._set_error(pod_id, f"could not start the pod entrypoint: {exc}")
            return
        with self.lock:
            deleted = self.state["pods"].get(pod_id) is not pod
            stopped = not deleted and self._stopped(pod)
            if not deleted and not stopped:
                pod["_pid"] = pid
                self.save()
        if deleted or stopped:  # terminated or stopped while its processes were starting
            local.stop(pid)  # end them too: the stop found no pid to end
            if deleted:
                local.remove()  # and the folder its start laid out after the delete removed it
            return
        time.sleep(float(settings.get("ready_delay", 0.0)))
        ok, why = local.wait_ready(pod["_ports"]["22"], pid, float(settings["ready_timeout"]))
        with self.lock:
            gone = self.state["pods"].get(pod_id) is not pod
            if not gone and self._stopped(pod):
                return
            if not gone and ok:
                pod["status"] = "RUNNING"
                pod["startedAt"] = now_iso()
                pod["_started_at"] = time.time()
                self.save()
                self.system(pod_id, "sshd answers: RUNNING")
                return
        local.stop(pid)
        if gone:  # terminated after its pid was recorded, before its delete's scan ended
            local.remove()
            return
        # A pod stopped meanwhile (its processes ended by the stop, hence not answering)
        # turns EXITED, not ERROR: _set_error changes only a pod still starting.
        self._set_error(pod_id, why + "\n" + local.tail_log())

    def _stopped(self, pod: dict[str, Any]) -> bool:
        """Whether a pod being booted was stopped meanwhile (under self.lock): no longer
        STARTING, or its stop is ending its processes right now."""
        return pod["status"] != "STARTING" or pod["id"] in self.stopping

    def _set_error(self, pod_id: str, why: str) -> None:
        """A boot failed: the pod turns ERROR, saying why, if it is still starting (checked
        under the lock the change is made under). A pod stopped or deleted meanwhile ends
        as its stop or delete leaves it."""
        with self.lock:
            pod = self.state["pods"].get(pod_id)
            if pod is None or self._stopped(pod):
                return
            pod["status"] = "ERROR"  # in memory first: the API says so even if the save fails
            self._bill(pod_id, False)
            pod["_error"] = why
            pod["_pid"] = None
            try:
                self.save()
            except OSError:  # a full disk: the next save that can be made keeps it
                pass
        try:
            self.system(pod_id, f"ERROR: {why.splitlines()[0] if why else 'unknown'}")
        except OSError:
            pass

    def _pod_key(self) -> str:
        """A key the pod itself uses (idle watchdog): pods scope only."""
        with self.lock:
            for key, entry in self.state["keys"].items():
                if entry.get("pod_key"):
                    if "clusters" not in entry["scopes"]:  # a state from before clusters
                        entry["scopes"] = [*entry["scopes"], "clusters"]
                        self.save()
                    return key
            key = "local-pod-" + secrets.token_urlsafe(18)
            # clusters: a member's spend guard deletes its cluster (a member cannot stop).
            self.state["keys"][key] = {"scopes": ["pods", "clusters"], "pod_key": True}
            self.save()
            return key

    def pod_action(self, pod_id: str, body: Any) -> dict[str, Any] | None:
        if not isinstance(body, dict) or set(body) != {"action"}:
            raise invalid("$: body must be {\"action\": ...}")
        action = body["action"]
        if action not in ("start", "stop", "restart", "terminate"):
            raise invalid(f"$.action: {action!r} is not one of start, stop, restart, "
                          "terminate")
        pod = self.get_pod(pod_id)
        self._not_a_member(pod, f"{action}")
        if action not in ACTIONS.get(pod["status"], []):
            raise ProblemError(409, f"cannot {action} a pod that is {pod['status']}")
        if action == "terminate":
            self.delete_pod(pod_id)
            return None
        self.system(pod_id, f"action {action} (was {pod['status']})")
        if action in ("stop", "restart"):
            with self.lock:
                self.stopping.add(pod_id)  # seen by a boot still starting the processes
            try:
                self._stop_processes(pod)
                with self.lock:
                    self._bill(pod_id, False)
                    pod["status"] = "EXITED"
                    pod["startedAt"] = pod["startedAt"] if action == "stop" else None
                    self.save()
            finally:
                with self.lock:
                    self.stopping.discard(pod_id)
        if action in ("start", "restart"):
            with self.lock:
                pod["status"] = "PROVISIONING"
                pod.pop("_error", None)
                self._bill(pod_id, True)
                self.save()
            self._boot(pod_id)
        return self.render_pod(pod)

    def _bill(self, pod_id: str, billing: bool) -> None:
        """Open or close the pod's current billing interval (under self.lock). A pod bills
        from its create (or start) until it is stopped, fails or is terminated."""
        _open_or_close(self.state["billing"].get(pod_id), billing)

    def list_pod_billing(self, query: dict[str, list[str]]) -> dict[str, Any]:
        """GET /v2/billing/pods: per pod per bucket amounts, from the billing intervals. Time
        billed in the last `billing_delay` seconds (admin setting) is not reported yet, as
        RunPod's billing lags."""
        window, pod_filter, billed = self._billed(query, "podId", "billing")
        records = [{"startTime": iso(begin), "endTime": iso(end), "podId": pod_id,
                    "totalAmount": amount, "gpuAmount": amount, "cpuAmount": 0.0,
                    "diskAmount": 0.0} for pod_id, begin, end, amount in billed]
        total = round(sum(r["totalAmount"] for r in records), 6)
        return {"records": records, "metadata": {
            "query": {**window, "podId": pod_filter},
            "recordCount": len(records), "uniquePodCount": len({r["podId"] for r in records}),
            "totals": {"totalAmount": total, "gpuAmount": total, "cpuAmount": 0.0,
                       "diskAmount": 0.0}}}

    def list_cluster_billing(self, query: dict[str, list[str]]) -> dict[str, Any]:
        """GET /v2/billing/clusters: per cluster per bucket, as for pods (GPU only)."""
        window, cluster_filter, billed = self._billed(query, "clusterId", "cluster_billing")
        records = [{"startTime": iso(begin), "endTime": iso(end), "clusterId": cluster_id,
                    "totalAmount": amount, "gpuAmount": amount, "diskAmount": 0.0,
                    "networkingAmount": 0.0} for cluster_id, begin, end, amount in billed]
        total = round(sum(r["totalAmount"] for r in records), 6)
        return {"records": records, "metadata": {
            "query": {**window, "clusterId": cluster_filter},
            "recordCount": len(records),
            "uniqueClusterCount": len({r["clusterId"] for r in records}),
            "totals": {"totalAmount": total, "gpuAmount": total, "diskAmount": 0.0,
                       "networkingAmount": 0.0}}}

    def _billed(self, query: dict[str, list[str]], id_param: str, collection: str
                ) -> tuple[dict[str, Any], str | None, list[tuple[str, float, float, float]]]:
        """The resolved window {startTime, endTime, bucketSize}, the id filter, and
        (id, bucket start, bucket end, USD) for each bucket that billed, from the
        `collection` of billing intervals."""
        def one(name: str) -> str | None:
            values = query.get(name)
            return values[0] if values else None

        bucket = one("bucketSize") or "day"
        sizes = {"hour": 3600, "day": 86400, "week": 7 * 86400, "month": 30 * 86400,
                 "year": 365 * 86400}
        if bucket not in sizes:
            raise ProblemError(400, f"bucketSize: {bucket!r} is not one of "
                                    f"{', '.join(sizes)}")
        step = sizes[bucket]
        now = time.time()

        def parse(name: str) -> float | None:
            text = one(name)
            if text is None:
                return None
            try:
                return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()
            except ValueError:
                raise ProblemError(400, f"{name}: {text!r} is not an RFC 3339 time") from None

        last_n = one("lastN")
        if last_n is not None:
            if not last_n.isdigit() or int(last_n) < 1:
                raise ProblemError(400, "lastN: must be an integer of at least 1")
            if one("startTime") or one("endTime"):
                raise ProblemError(400, "lastN excludes startTime and endTime")
            end = (now // step + 1) * step
            start = end - int(last_n) * step
        else:
            start = (parse("startTime") or now - 30 * 86400) // step * step
            end_raw = parse("endTime") or now
            end = -(-end_raw // step) * step
        wanted = one(id_param)
        billed = []
        with self.lock:
            billing = {k: v for k, v in self.state.get(collection, {}).items()
                       if wanted is None or k == wanted}
            horizon = now - float(self.state["settings"].get("billing_delay", 0))
            for record_id, record in sorted(billing.items()):
                bucket_start = start
                while bucket_start < end:
                    bucket_end = bucket_start + step
                    seconds = sum(
                        max(0.0, min(e if e is not None else horizon, horizon, bucket_end)
                            - max(s, bucket_start)) for s, e in record["intervals"])
                    if seconds > 0:
                        billed.append((record_id, bucket_start, bucket_end,
                                       round(record["rate"] * seconds / 3600, 6)))
                    bucket_start = bucket_end
        window = {"startTime": iso(start), "endTime": iso(end), "bucketSize": bucket}
        return window, wanted, billed

    # -- clusters ----------------------------------------------------------------------------
    # A cluster is `podCount` local pods made from the body's container fields, each with
    # RunPod's node env. Members live in state["pods"] with a public `cluster {id, rank, ip}`
    # block; the cluster record keeps their ids in rank order (`_members`) and the MASTER_PORT
    # they share (`_master_port`). A cluster bills from its create until its delete.
    def get_cluster(self, cluster_id: str) -> dict[str, Any]:
        cluster = self.state["clusters"].get(cluster_id)
        if cluster is None:
            raise ProblemError(404, f"cluster {cluster_id} not found")
        return cluster

    def _members(self, cluster: dict[str, Any]) -> list[dict[str, Any]]:
        return [self.state["pods"][pod_id] for pod_id in cluster["_members"]
                if pod_id in self.state["pods"]]

    def render_cluster(self, cluster: dict[str, Any]) -> dict[str, Any]:
        public = {k: v for k, v in cluster.items() if not k.startswith("_")}
        members = self._members(cluster)
        by_status: dict[str, int] = {}
        for pod in members:
            by_status[pod["status"]] = by_status.get(pod["status"], 0) + 1
        public["pods"] = {"total": len(members), "byStatus": by_status}
        primary = next((p for p in members if p["cluster"]["rank"] == 0), None)
        if primary is not None:
            public["primary"] = {"podId": primary["id"], "status": primary["status"]}
            if primary["status"] == "RUNNING" and "22/tcp" in primary["ports"]:
                public["primary"]["sshEndpoint"] = f"127.0.0.1:{primary['_ports']['22']}"
        return public

    def list_clusters(self) -> dict[str, Any]:
        with self.lock:
            return {"clusters": [self.render_cluster(c)
                                 for c in self.state["clusters"].values()]}

    def cluster_pods(self, cluster_id: str) -> dict[str, Any]:
        with self.lock:
            return {"pods": [self.render_pod(p)
                             for p in self._members(self.get_cluster(cluster_id))]}

    @staticmethod
    def _cluster_body_errors(body: dict[str, Any]) -> list[str]:
        """CreateClusterRequest's schema, as the spec's validator reports it."""
        errors = []
        extra = sorted(set(body) - CLUSTER_FIELDS)
        if extra:
            errors.append(f"$: additional properties {', '.join(map(repr, extra))} not allowed")
        if "registry" in extra or "containerRegistryAuthId" in extra:
            errors.append("$.registry: private registries are not supported for clusters "
                          "(make the image public)")
        if "templateId" in extra:
            errors.append("$.templateId: a cluster takes no template id (spread the "
                          "template's container fields into the body)")
        if not (isinstance(body.get("name"), str) and body["name"]):
            errors.append("$.name: required, a non-empty string")
        if body.get("type") not in CLUSTER_TYPES:
            errors.append(f"$.type: required, one of {', '.join(CLUSTER_TYPES)}")
        compute = body.get("compute")
        if not isinstance(compute, dict):
            errors.append("$.compute: required, {gpuTypeId, gpuCountPerPod, podCount}")
        else:
            extra = sorted(set(compute) - {"gpuTypeId", "gpuCountPerPod", "podCount"})
            if extra:
                errors.append(f"$.compute: additional properties "
                              f"{', '.join(map(repr, extra))} not allowed")
            if not (isinstance(compute.get("gpuTypeId"), str) and compute["gpuTypeId"]):
                errors.append("$.compute.gpuTypeId: required, a non-empty string")
            for key, low, high in (("gpuCountPerPod", 1, None), ("podCount", 2, 250)):
                value = compute.get(key)
                if not (isinstance(value, int) and not isinstance(value, bool)
                        and value >= low and (high is None or value <= high)):
                    errors.append(f"$.compute.{key}: required, an integer of at least {low}"
                                  + (f" and at most {high}" if high else ""))
        for key, kind, what in (("image", str, "a string"), ("args", str, "a string"),
                                ("startSsh", bool, "a boolean"),
                                ("startJupyter", bool, "a boolean")):
            if key in body and not isinstance(body[key], kind):
                errors.append(f"$.{key}: {what}")
        disk = body.get("disk")
        if "disk" in body and not (isinstance(disk, int) and not isinstance(disk, bool)
                                   and disk >= 1):
            errors.append("$.disk: an integer of at least 1 (GB)")
        env = body.get("env")
        if "env" in body and not (isinstance(env, dict)
                                  and all(isinstance(v, str) for v in env.values())):
            errors.append("$.env: an object of string values")
        for key in ("ports", "dataCenterIds"):
            value = body.get(key)
            if key in body and not (isinstance(value, list)
                                    and all(isinstance(v, str) for v in value)):
                errors.append(f"$.{key}: an array of strings")
        return errors

    def _cluster_port(self, taken: set[int]) -> int:
        """A free port for a new cluster's MASTER_PORT, distinct from every other cluster's,
        from every pod's own ports and from `taken`."""
        with self.lock:
            taken = taken | {c["_master_port"] for c in self.state["clusters"].values()}
            taken |= {port for p in self.state["pods"].values() for port in p["_ports"].values()}
        while True:
            port = free_port()
            if port not in taken:
                return port

    def create_cluster(self, body: Any) -> dict[str, Any]:
        if not isinstance(body, dict):
            raise invalid("$: body must be an object")
        errors = self._cluster_body_errors(body)
        if errors:
            raise invalid(*errors)
        compute = body["compute"]
        nodes, per_node = compute["podCount"], compute["gpuCountPerPod"]
        if body["type"] not in ("TRAINING", "APPLICATION"):
            raise ProblemError(400, f"the local RunPod makes TRAINING and APPLICATION clusters, "
                                    f"not {body['type']}")
        if nodes > LOCAL_MAX_NODES:
            raise ProblemError(400, f"the local RunPod makes at most {LOCAL_MAX_NODES} nodes "
                                    f"per cluster (each node is a set of local processes)")
        if not body.get("image"):
            raise ProblemError(400, "image: required (a cluster takes its container "
                                    "configuration from the body, not from a template)")
        data_center = self._network_mounts(body)
        entry = self._placeable(compute["gpuTypeId"], "SECURE", per_node, per="node")
        env = dict(body.get("env") or {})
        if body.get("startSsh") and self.state["ssh_keys"] and "PUBLIC_KEY" not in env:
            env["PUBLIC_KEY"] = "\n".join(self.state["ssh_keys"])
        cluster_id = "lc" + secrets.token_hex(6)
        members = [self._pod_record(f"{body['name']}-node-{rank}", {
            "image": body["image"], "args": body.get("args", ""),
            "disk": body.get("disk", 20), "mounts": body.get("mounts", {}),
            "ports": list(body.get("ports", [])), "env": dict(env), "registry": None},
            compute["gpuTypeId"], per_node, "SECURE", data_center) for rank in range(nodes)]
        port = self._cluster_port({p for pod in members for p in pod["_ports"].values()})
        node_env = {"PRIMARY_ADDR": CLUSTER_ADDR, "MASTER_ADDR": CLUSTER_ADDR,
                    "PRIMARY_PORT": str(port), "MASTER_PORT": str(port),
                    "NODE_ADDR": CLUSTER_ADDR, "NUM_NODES": str(nodes),
                    "NUM_TRAINERS": str(per_node), "WORLD_SIZE": str(nodes * per_node)}
        for rank, pod in enumerate(members):
            pod["cluster"] = {"id": cluster_id, "rank": rank, "ip": CLUSTER_ADDR}
            pod["_node_env"] = {**node_env, "NODE_RANK": str(rank)}
        cluster = {"id": cluster_id, "name": body["name"], "type": body["type"],
                   "compute": {"gpuTypeId": compute["gpuTypeId"], "gpuCountPerPod": per_node,
                               "podCount": nodes},
                   "dataCenterId": data_center, "network": {"cidr": "127.0.0.0/8"},
                   "createdAt": now_iso(), "_members": [p["id"] for p in members],
                   "_master_port": port}
        with self.lock:
            self.state["clusters"][cluster_id] = cluster
            for pod in members:
                self.state["pods"][pod["id"]] = pod
            self.state["cluster_billing"][cluster_id] = {
                "rate": round(entry["securePrice"] * per_node * nodes, 4),
                "intervals": [[time.time(), None]]}
            self.save()
        for pod in members:
            self.system(pod["id"], f"pod created as node {pod['cluster']['rank']} of cluster "
                                   f"{cluster_id}: {per_node}x {compute['gpuTypeId']}; "
                                   "PROVISIONING")
            self._boot(pod["id"])
        with self.lock:
            return self.render_cluster(cluster)

    def update_cluster(self, cluster_id: str, body: Any) -> dict[str, Any]:
        """PATCH: a rename, the only change the spec allows."""
        if not isinstance(body, dict) or not body:
            raise invalid("$: body must be an object with at least one property")
        errors = [f"$: additional property {key!r} not allowed (only name can change)"
                  for key in body if key != "name"]
        if "name" in body and not (isinstance(body["name"], str) and body["name"]):
            errors.append("$.name: a non-empty string")
        if errors:
            raise invalid(*errors)
        with self.lock:
            cluster = self.get_cluster(cluster_id)
            cluster["name"] = body["name"]
            self.save()
            return self.render_cluster(cluster)

    def delete_cluster(self, cluster_id: str) -> None:
        """Terminate every member (its processes, then its folder) and stop the billing.
        The caller may be a member's own spend guard, whose process ends with its node."""
        with self.lock:
            cluster = self.get_cluster(cluster_id)
            del self.state["clusters"][cluster_id]
            self._bill_cluster(cluster_id, False)
            members = [self.state["pods"].pop(pod_id) for pod_id in cluster["_members"]
                       if pod_id in self.state["pods"]]
            self.save()
        # Every node at once: one node's trainer must not outlive another's by a grace period.
        threads = [threading.Thread(target=self._terminate_member, args=(pod,), daemon=True)
                   for pod in members]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()

    def _terminate_member(self, pod: dict[str, Any]) -> None:
        self._stop_processes(pod)
        self._pod_obj(pod["id"]).remove()

    def _bill_cluster(self, cluster_id: str, billing: bool) -> None:
        """The same for a cluster: it bills as one, from its create until it is deleted."""
        _open_or_close(self.state["cluster_billing"].get(cluster_id), billing)

    @staticmethod
    def _not_a_member(pod: dict[str, Any], what: str) -> None:
        """A member pod is managed through its cluster: any change through /v2/pods is 409."""
        cluster = pod.get("cluster")
        if cluster:
            raise ProblemError(409, f"pod {pod['id']} belongs to cluster {cluster['id']}: a "
                                    f"cluster member cannot {what} on its own; manage it "
                                    f"through /v2/clusters/{cluster['id']} (DELETE it to "
                                    "terminate every member)")

    def update_pod(self, pod_id: str, body: Any) -> dict[str, Any]:
        """PATCH /v2/pods/{id}: only the member rule is emulated (409); the local RunPod
        does not change a pod's configuration."""
        with self.lock:
            pod = self.get_pod(pod_id)
        self._not_a_member(pod, "be updated")
        raise ProblemError(404, f"no route for PATCH /v2/pods/{pod_id} on the local RunPod "
                                "(it does not update pods)")

    def _stop_processes(self, pod: dict[str, Any]) -> None:
        self._pod_obj(pod["id"]).stop(pod.get("_pid"))
        pod["_pid"] = None

    def delete_pod(self, pod_id: str) -> None:
        pod = self.get_pod(pod_id)
        self._not_a_member(pod, "be deleted")
        # Out of the state first, then its processes: a boot still starting them either sees
        # the pod gone and ends them itself, or recorded their pid before, for this stop.
        with self.lock:
            self._bill(pod_id, False)
            self.state["pods"].pop(pod_id, None)
            self.save()
        self._stop_processes(pod)
        self._pod_obj(pod_id).remove()

    def shutdown_pods(self) -> None:
        for pod in list(self.state["pods"].values()):
            if pod.get("_pid") or pod["status"] in ("STARTING", "RUNNING"):
                self._stop_processes(pod)
                pod["status"] = "EXITED"
        # A cluster's nodes end with the server: its billing stops with them.
        for cluster_id in self.state["clusters"]:
            self._bill_cluster(cluster_id, False)
        self.save()

    # -- admin -------------------------------------------------------------------------------
    def admin(self, method: str, path: str, body: Any) -> Any:
        if path == "/_local/faults":
            with self.lock:
                if method == "DELETE":
                    self.state["faults"] = []
                elif method == "POST":
                    self.state["faults"].append(body)
                self.save()
                return {"faults": self.state["faults"]}
        if path == "/_local/keys" and method == "POST":
            with self.lock:
                self.state["keys"][body["key"]] = {"scopes": list(body["scopes"])}
                self.save()
            return {"ok": True}
        if path == "/_local/private-images":
            # {"prefix": "ghcr.io/acme/", "username": "acme" (optional: the only user with
            # access)}: images under the prefix need a registry credential to start.
            with self.lock:
                marks = self.state["private_images"]
                if method == "DELETE":
                    marks.clear()
                elif method == "POST":
                    if not (isinstance(body, dict) and isinstance(body.get("prefix"), str)
                            and body["prefix"]):
                        raise ProblemError(422, "body: {prefix, username?}")
                    marks.append({k: body[k] for k in ("prefix", "username") if k in body})
                self.save()
                return {"private_images": marks, "always_private": PRIVATE_IMAGE_PREFIX}
        if path == "/_local/settings" and method == "POST":
            with self.lock:
                self.state["settings"].update(body)
                self.save()
            return self.state["settings"]
        if path == "/_local/requests":
            with self.lock:
                if method == "DELETE":
                    self.state["requests"] = []
                    self.save()
                return {"requests": [dict(r) for r in self.state["requests"]]}
        if path == "/_local/pods" and method == "GET":
            with self.lock:
                return {"pods": [{"id": p["id"], "status": p["status"], "pid": p.get("_pid"),
                                  "dir": str(self.dir / "pods" / p["id"]),
                                  "error": p.get("_error"),
                                  "cluster": (p.get("cluster") or {}).get("id"),
                                  "rank": (p.get("cluster") or {}).get("rank")}
                                 for p in self.state["pods"].values()]}
        if path == "/_local/clusters" and method == "GET":
            # Each cluster with its MASTER_PORT and members in rank order (pid, folder).
            with self.lock:
                return {"clusters": [
                    {"id": c["id"], "name": c["name"], "master_port": c["_master_port"],
                     "members": [{"id": p["id"], "rank": p["cluster"]["rank"],
                                  "status": p["status"], "pid": p.get("_pid"),
                                  "dir": str(self.dir / "pods" / p["id"]),
                                  "error": p.get("_error")} for p in self._members(c)]}
                    for c in self.state["clusters"].values()]}
        match = re.fullmatch(r"/_local/pods/([^/]+)/kill", path)
        if match and method == "POST":
            return self._kill_node(match.group(1))
        match = re.fullmatch(r"/_local/pods/([^/]+)/kill-sshd", path)
        if match and method == "POST":
            pid_file = self.dir / "pods" / match.group(1) / "root" / "run" / "sshd.pid"
            try:
                os.kill(int(pid_file.read_text().strip()), signal.SIGKILL)
            except (OSError, ValueError) as exc:
                raise ProblemError(409, f"no sshd to kill: {exc}") from None
            return {"ok": True}
        raise ProblemError(404, f"no admin endpoint {method} {path}")

    def _kill_node(self, pod_id: str) -> dict[str, Any]:
        """A node lost (its host died): SIGKILL every process of the pod at once, no grace,
        and the pod turns ERROR. The pod and its cluster stay until deleted."""
        with self.lock:
            pod = self.get_pod(pod_id)
            root_pid = pod.get("_pid")
        killed: set[int] = set()
        # Scan again until a scan finds none alive (or 10 s pass): a process forked, or one
        # whose environment could not be read mid-exec, while the others were killed is in a
        # later scan only; one killed already may take a moment to be gone.
        deadline = time.monotonic() + 10.0
        while True:
            found = {p for p in procs.pod_processes(pod_id, root_pid) if procs.alive(p)}
            if not found or time.monotonic() > deadline:
                break
            for pid in found:
                try:
                    os.kill(pid, signal.SIGKILL)
                except OSError:
                    pass
            killed |= found
            time.sleep(0.02)
        if root_pid:  # reap the entrypoint (our child) once it is dead: no zombie left
            threading.Thread(target=_reap, args=(root_pid,), daemon=True).start()
        with self.lock:
            if self.state["pods"].get(pod_id) is pod:
                pod["status"], pod["_pid"] = "ERROR", None
                pod["_error"] = "node lost: every process was killed (/_local/pods/ID/kill)"
                self._bill(pod_id, False)
                self.save()
        self.system(pod_id, "ERROR: node lost (every process killed)")
        return {"killed": sorted(killed)}

    def record(self, method: str, path: str) -> dict[str, Any]:
        """A request, logged as it arrives (status None until it is answered): whatever it
        changes in the state is seen only after it is in the log, so a test that saw the
        change finds the request that made it. The last 500 are kept."""
        entry: dict[str, Any] = {"method": method, "path": path, "status": None}
        with self.lock:
            self.state["requests"].append(entry)
            del self.state["requests"][:-500]
        return entry

    def answered(self, entry: dict[str, Any], status: int) -> None:
        with self.lock:
            entry["status"] = status


@dataclass
class Call:
    """What a route's answer gets: the server's state and behaviour, the ids the path held,
    the request's JSON body (read on demand: a 422 names a bad one), its query, and the
    handler (for an answer that streams)."""
    app: LocalRunPod
    ids: tuple[str, ...]
    body: Callable[[], Any]
    query: dict[str, list[str]]
    handler: Handler
    headers: dict[str, str]

    @property
    def id(self) -> str:
        return self.ids[0]


def _open_or_close(record: dict[str, Any] | None, billing: bool) -> None:
    """Open (billing) or close the last interval of a pod's or cluster's billing record,
    unless it already is; no record, nothing to do."""
    if record is None:
        return
    intervals = record["intervals"]
    is_open = bool(intervals) and intervals[-1][1] is None
    if billing and not is_open:
        intervals.append([time.time(), None])
    elif not billing and is_open:
        intervals[-1][1] = time.time()


def _reap(pid: int) -> None:
    try:
        os.waitpid(pid, 0)
    except ChildProcessError:
        pass


def _no_content(_: Any) -> tuple[int, None]:
    return 204, None


def _pod(call: Call) -> tuple[int, Any]:
    with call.app.lock:
        return 200, call.app.render_pod(call.app.get_pod(call.id))


def _cluster(call: Call) -> tuple[int, Any]:
    with call.app.lock:
        return 200, call.app.render_cluster(call.app.get_cluster(call.id))


def _pod_action(call: Call) -> tuple[int, Any]:
    result = call.app.pod_action(call.id, call.body())
    return (204, None) if result is None else (200, result)


def _stream_logs(call: Call) -> None:
    call.handler._stream_logs(call.id, call.query, call.headers)


_ID = "([^/]+)"
# The local RunPod's API, one route a line, as moto declares its responses: method, path
# (its groups are the ids), and the answer, (status, body). Every path and shape is the
# spec's (tests/test_openapi_contract.py checks them); /_local/* is the admin API.
ROUTES: list[tuple[str, re.Pattern[str], Callable[[Call], tuple[int, Any] | None]]] = [
    (method, re.compile(path), answer) for method, path, answer in [
        ("GET", "/v2/templates", lambda c: (200, c.app.list_templates())),
        ("POST", "/v2/templates", lambda c: (201, c.app.create_template(c.body()))),
        ("GET", f"/v2/templates/{_ID}", lambda c: (200, c.app.get_template(c.id))),
        ("PATCH", f"/v2/templates/{_ID}",
         lambda c: (200, c.app.update_template(c.id, c.body()))),
        ("DELETE", f"/v2/templates/{_ID}", lambda c: _no_content(c.app.delete_template(c.id))),
        ("GET", "/v2/network-volumes",
         lambda c: (200, {"networkVolumes": list(c.app.state["volumes"].values())})),
        ("POST", "/v2/network-volumes", lambda c: (201, c.app.create_volume(c.body()))),
        ("GET", f"/v2/network-volumes/{_ID}", lambda c: (200, c.app.get_volume(c.id))),
        ("PATCH", f"/v2/network-volumes/{_ID}",
         lambda c: (200, c.app.update_volume(c.id, c.body()))),
        ("DELETE", f"/v2/network-volumes/{_ID}",
         lambda c: _no_content(c.app.delete_volume(c.id))),
        ("GET", "/v2/registries",
         lambda c: (200, {"registries": list(c.app.state["registries"].values())})),
        ("POST", "/v2/registries", lambda c: (201, c.app.create_registry(c.body()))),
        ("GET", f"/v2/registries/{_ID}", lambda c: (200, c.app.get_registry(c.id))),
        ("DELETE", f"/v2/registries/{_ID}", lambda c: _no_content(c.app.delete_registry(c.id))),
        ("GET", "/v2/billing/pods", lambda c: (200, c.app.list_pod_billing(c.query))),
        ("GET", "/v2/catalog/gpus", lambda c: (200, c.app.list_gpus(c.query))),
        ("GET", "/v2/catalog/datacenters", lambda c: (200, c.app.list_data_centers())),
        ("GET", "/v2/account/ssh-keys", lambda c: (200, {"keys": c.app.state["ssh_keys"]})),
        ("PUT", "/v2/account/ssh-keys", lambda c: (200, c.app.put_ssh_keys(c.body()))),
        ("GET", "/v2/billing/clusters", lambda c: (200, c.app.list_cluster_billing(c.query))),
        ("GET", "/v2/clusters", lambda c: (200, c.app.list_clusters())),
        ("POST", "/v2/clusters", lambda c: (201, c.app.create_cluster(c.body()))),
        ("GET", f"/v2/clusters/{_ID}", _cluster),
        ("PATCH", f"/v2/clusters/{_ID}", lambda c: (200, c.app.update_cluster(c.id, c.body()))),
        ("DELETE", f"/v2/clusters/{_ID}", lambda c: _no_content(c.app.delete_cluster(c.id))),
        ("GET", f"/v2/clusters/{_ID}/pods", lambda c: (200, c.app.cluster_pods(c.id))),
        ("GET", "/v2/pods", lambda c: (200, c.app.list_pods(c.query))),
        ("POST", "/v2/pods", lambda c: (201, c.app.create_pod(c.body()))),
        ("GET", f"/v2/pods/{_ID}", _pod),
        ("PATCH", f"/v2/pods/{_ID}", lambda c: (200, c.app.update_pod(c.id, c.body()))),
        ("DELETE", f"/v2/pods/{_ID}", lambda c: _no_content(c.app.delete_pod(c.id))),
        ("POST", f"/v2/pods/{_ID}/action", _pod_action),
        ("GET", f"/v2/pods/{_ID}/logs", _stream_logs),
    ]
]


class Handler(BaseHTTPRequestHandler):
    server_version = "local-runpod/0.1"
    protocol_version = "HTTP/1.1"
    app: LocalRunPod
    _entry: dict[str, Any] | None = None  # this request's line in the request log

    def log_message(self, fmt: str, *args: Any) -> None:  # quiet; requests are recorded
        return

    def _fault_answer(self, fault: dict[str, Any], headers: dict[str, str]) -> None:
        status = int(fault["status"])
        headers.update({str(k): str(v) for k, v in (fault.get("headers") or {}).items()})
        if status == 429:
            headers["Retry-After"] = str(fault.get("retry_after", 1))
            headers["RateLimit"] = '"minute";r=0;t=' + str(fault.get("retry_after", 1))
        if fault.get("text") is not None:  # a gateway's own page, not RunPod's JSON
            self._send_text(status, str(fault["text"]), headers)
        else:
            self._problem(status, fault.get("detail", "injected fault"), headers=headers)

    def _send(self, status: int, body: Any = None, headers: dict[str, str] | None = None,
              content_type: str = "application/json") -> None:
        if self._answer_instead is not None:  # the request was done; its answer is lost
            fault, extra = self._answer_instead
            self._answer_instead = None
            self._fault_answer(fault, extra)
            return
        self._write(status, None if body is None else json.dumps(body).encode(), content_type,
                    headers)

    def _send_text(self, status: int, text: str, headers: dict[str, str]) -> None:
        self._write(status, text.encode(), "text/plain; charset=utf-8", headers)

    def _write(self, status: int, payload: bytes | None, content_type: str,
               headers: dict[str, str] | None) -> None:
        self._record(status)  # before the answer leaves: a caller may read the log at once
        self.send_response(status)
        if payload is not None:
            self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(payload or b"")))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        if payload:
            self.wfile.write(payload)

    def _problem(self, status: int, detail: str, errors: list[str] | None = None,
                 headers: dict[str, str] | None = None) -> None:
        body: dict[str, Any] = {"title": HTTPStatus(status).phrase, "status": status,
                                "detail": detail}
        if errors:
            body["errors"] = errors
        self._send(status, body, headers, "application/problem+json")

    def _record(self, status: int) -> None:
        """The request's status in the log, once: its first answer's."""
        if self._entry is not None:
            self.app.answered(self._entry, status)
            self._entry = None

    def _read_body(self) -> None:
        # Always drain the body first: an early answer (fault, 401) must not leave unread
        # bytes on a keep-alive connection.
        try:
            length = int(self.headers.get("Content-Length") or 0)
        except ValueError:
            self._raw, self.close_connection = b"", True  # the body's end is unknown
            raise ProblemError(400, "Content-Length is not a number") from None
        self._raw = self.rfile.read(length) if length else b""

    def _body(self) -> Any:
        raw = self._raw
        if not raw:
            return None
        try:
            return json.loads(raw)
        except ValueError:
            raise ProblemError(400, "request body is not valid JSON") from None

    def _dispatch(self, method: str) -> None:
        app = self.app
        parts = urlsplit(self.path)
        path = parts.path.rstrip("/") or "/"
        self._entry = None if path.startswith("/_local/") else app.record(method, path)
        self._answer_instead: tuple[dict[str, Any], dict[str, str]] | None = None
        query = parse_qs(parts.query)
        status = 500
        try:
            self._read_body()
            if path.startswith("/_local/"):
                if self.headers.get("X-Local-Admin") != app.state["admin_token"]:
                    raise ProblemError(401, "admin token required")
                body = self._body() if method in ("POST", "PUT") else None
                self._send(200, app.admin(method, path, body))
                return
            key = app.authorize(self.headers.get("Authorization"), path)
            headers = app.rate_headers(key)
            fault = app.take_fault(method, path)
            if fault:
                time.sleep(float(fault.get("delay", 0)))
                if fault.get("status") and fault.get("after"):
                    # Done, then answered with the fault: a gateway that gave up on an answer
                    # RunPod was still making (a 502 or 504 for a pod created all the same).
                    self._answer_instead = (fault, dict(headers))
                elif fault.get("status"):
                    self._fault_answer(fault, dict(headers))
                    return
            self._route(method, path, query, headers)
        except ProblemError as exc:
            status = exc.status
            self._problem(exc.status, exc.detail, exc.errors, exc.headers)
        except (BrokenPipeError, ConnectionResetError):
            # The caller went away, e.g. a pod's idle watchdog that this very request stopped.
            self.close_connection = True
        except Exception as exc:  # noqa: BLE001 - a server bug is a 500, never a hang
            status = 500
            self._problem(500, f"local RunPod internal error: {type(exc).__name__}: {exc}")
        finally:
            self._record(status)

    def _stream_logs(self, pod_id: str, query: dict[str, list[str]],
                     headers: dict[str, str]) -> None:
        """GET /v2/pods/{id}/logs: backfill (tail, since or Last-Event-ID), then new lines as
        they come while the pod runs; the stream ends once the pod is stopped or gone."""
        app = self.app
        with app.lock:
            pod = app.get_pod(pod_id)
            first_ts = pod["createdAt"]
        source = query.get("source", [""])[0]
        if source and source not in logs.SOURCES:
            raise invalid(f"source: {source!r} is not one of {list(logs.SOURCES)}")
        try:
            tail = int(query.get("tail", ["100"])[0])
        except ValueError:
            raise invalid("tail: must be an integer") from None
        if not 0 <= tail <= 5000:
            raise invalid("tail: 0 to 5000")
        reader = logs.LogReader(app.dir / "pods" / pod_id, [source] if source else
                                list(logs.SOURCES), first_ts)
        first = events = reader.poll()
        last_id = self.headers.get("Last-Event-ID")
        resume = last_id or query.get("since", [""])[0]
        position = logs.parse_position(last_id) if last_id else None
        if position is not None:
            events = logs.resume(events, position)
        elif resume:
            # Times compare as times, not text: "90m" or "2026-11-29T10:00:00+00:00" must
            # never sort against "2026-11-29T10:00:00.5Z" by their characters.
            def moment(ts: str) -> float | None:
                try:
                    when = datetime.fromisoformat(ts.strip().replace("Z", "+00:00"))
                except ValueError:
                    return None
                return (when if when.tzinfo else when.replace(tzinfo=UTC)).timestamp()

            ts, after_source, after_n = logs.cursor(resume)
            after = moment(ts)
            if after is None:
                name = "Last-Event-ID" if last_id else "since"
                raise invalid(f"{name}: {resume!r} is not an RFC 3339 time")
            events = [e for e in events
                      if ((moment(e.ts) or float("-inf")), e.source, e.n)
                      > (after, after_source, after_n)]
        else:
            events = events[-tail:] if tail else []
        self._record(200)
        self.send_response(200)
        for name, value in {**headers, "Content-Type": "text/event-stream",
                            "Cache-Control": "no-cache", "Connection": "keep-alive",
                            "X-Accel-Buffering": "no", "Transfer-Encoding": "chunked"}.items():
            self.send_header(name, value)
        self.end_headers()

        # How far the reader has got in each source: the lines passed over (before the tail,
        # the time or the position resumed from) count as had.
        seen = dict.fromkeys(logs.SOURCES, 0) if position is None else dict(position)
        for event in set(first) - set(events):
            seen[event.source] = max(seen[event.source], event.n)

        def send(batch: list[logs.Event]) -> None:  # one HTTP/1.1 chunk per event
            for event in batch:
                seen[event.source] = max(seen[event.source], event.n)
                data = event.sse(logs.position_id(event.ts, seen))
                self.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
            self.wfile.flush()

        try:
            while True:
                send(events)
                with app.lock:
                    live = app.state["pods"].get(pod_id, {}).get("status") in (
                        "PROVISIONING", "STARTING", "RUNNING")
                if not live:
                    send(reader.poll())  # what the stop itself wrote
                    break
                time.sleep(0.2)
                events = reader.poll()
            self.wfile.write(b"0\r\n\r\n")
            self.wfile.flush()
        except (BrokenPipeError, ConnectionResetError):
            pass  # the reader went away (Ctrl-C on pod.logs --follow)
        self.close_connection = True

    def _route(self, method: str, path: str, query: dict[str, list[str]],
               headers: dict[str, str]) -> None:
        """Answer from the first route of ROUTES that matches; 404 when none does."""
        for route_method, pattern, answer in ROUTES:
            if route_method == method and (m := pattern.fullmatch(path)):
                result = answer(Call(self.app, m.groups(), self._body, query, self, headers))
                if result is not None:  # None: the route answered itself (a stream)
                    self._send(*result, headers)
                return
        raise ProblemError(404, f"no route for {method} {path} on the local RunPod")

    def do_GET(self) -> None:  # noqa: N802
        self._dispatch("GET")

    def do_POST(self) -> None:  # noqa: N802
        self._dispatch("POST")

    def do_PUT(self) -> None:  # noqa: N802
        self._dispatch("PUT")

    def do_DELETE(self) -> None:  # noqa: N802
        self._dispatch("DELETE")

    def do_PATCH(self) -> None:  # noqa: N802
        self._dispatch("PATCH")


def hold_folder(state_dir: Path) -> int:
    """One server per state folder: hold its server lock for the process's life (the kernel
    frees it when we die), with our pid in it for local.down."""
    import fcntl

    fd = os.open(state_dir / "server.lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = (os.pread(fd, 32, 0).decode(errors="replace").split() or ["?"])[0]
        sys.stderr.write(f"another local RunPod (pid {holder}) already serves {state_dir}\n")
        raise SystemExit(3) from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, str(os.getpid()).encode(), 0)
    return fd


def serve(state_dir: Path, port: int = 0, project_root: Path = PROJECT_ROOT) -> None:
    state_dir.mkdir(parents=True, exist_ok=True)
    lock = hold_folder(state_dir)
    app = LocalRunPod(state_dir, project_root)
    handler = type("BoundHandler", (Handler,), {"app": app})
    httpd = ThreadingHTTPServer(("127.0.0.1", port), handler)
    httpd.daemon_threads = True
    app.url = f"http://127.0.0.1:{httpd.server_address[1]}"
    # Pods left RUNNING by a server that died are gone with it: say so honestly.
    for pod in app.state["pods"].values():
        if pod["status"] in ("PROVISIONING", "STARTING", "RUNNING"):
            app._pod_obj(pod["id"]).stop(pod.get("_pid"))
            pod["status"], pod["_pid"] = "EXITED", None
            app._bill(pod["id"], False)
    for cluster_id in app.state["clusters"]:
        app._bill_cluster(cluster_id, False)
    app.save()
    info = {"url": app.url, "pid": os.getpid(), "api_key": app.state["api_key"],
            "admin_token": app.state["admin_token"], "state_dir": str(state_dir),
            # Its pods get this checkout's pod-side code (control.other_checkout).
            "project_root": str(Path(project_root).resolve())}
    info_path = state_dir / "server.json"
    tmp = info_path.with_suffix(".tmp")
    tmp.write_text(json.dumps(info))
    os.chmod(tmp, 0o600)
    tmp.replace(info_path)
    os.pwrite(lock, f"{os.getpid()} {READY}".encode(), 0)  # started: server.json is written

    def stop(signum: int, frame: Any) -> None:
        threading.Thread(target=httpd.shutdown, daemon=True).start()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    try:
        httpd.serve_forever(poll_interval=0.2)
    finally:
        app.shutdown_pods()
        httpd.server_close()
        try:
            if json.loads(info_path.read_text()).get("pid") == os.getpid():
                info_path.unlink()
        except (OSError, ValueError, RecursionError, AttributeError):
            pass


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="local RunPod REST v2 server (loopback only)")
    parser.add_argument("--state-dir", type=Path, required=True)
    parser.add_argument("--port", type=int, default=0)
    args = parser.parse_args(argv)
    serve(args.state_dir.resolve(), args.port)


if __name__ == "__main__":
    sys.exit(main())
