"""`api.doctor`: which key, which scopes work, what to do about the ones that do not."""

from __future__ import annotations

from typing import Any

from podcycle import sshkeys
from podcycle.backend import Backend, connect
from podcycle.config import Settings, effective_backend
from podcycle.errors import PodCycleError
from podcycle.provision import CATALOG_DENIED_REMEDY
from podcycle.redact import redact
from podcycle.runpod.errors import ApiError, Forbidden, RateLimited, Unauthorized, Unreachable

PROBES = (
    ("templates", "GET /v2/templates", lambda c: c.list_templates()),
    ("catalog", "GET /v2/catalog/gpus", lambda c: c.list_gpu_types(availability=False)),
    ("pods", "GET /v2/pods", lambda c: c.list_pods()),
    ("ssh-keys", "GET /v2/account/ssh-keys", lambda c: c.get_ssh_keys()),
    ("billing", "GET /v2/billing/pods", lambda c: c.pod_billing(bucket="day")),
    ("network-volumes", "GET /v2/network-volumes", lambda c: c.list_volumes()),
    ("clusters", "GET /v2/clusters", lambda c: c.list_clusters()),
)
# What each scope is for, said when a key lacks it. The cycle needs the first four; without
# an optional one only the commands named lose their use.
NEEDED_BY = {
    "templates": "template.list|show|sync and every pod create need it",
    "catalog": "gpu.search and choosing the cheapest GPU need it",
    "pods": "pod.*, cycle.* and the spend guard need it",
    "ssh-keys": "checking (and registering) your SSH key before a pod is created needs it",
    "billing": "pod.cost and the billed amount in a run's report need it (without it they "
               "show the estimate only)",
    "network-volumes": "volume.list|create|delete and --network-volume need it",
    "clusters": "--nodes (multi-node runs) and cluster.list|status|delete need it",
}
OPTIONAL = frozenset({"billing", "network-volumes", "clusters"})


def scope_remedy(scope: str, status: str) -> str:
    """The one line for a scope that did not answer: what needs it, what to do."""
    if status == "denied":
        fix = (CATALOG_DENIED_REMEDY if scope == "catalog" else
               f"use a key with {scope} access (RunPod console → Settings → API Keys → edit "
               "the key's permissions)")
        return f"{scope}: denied to this key; {NEEDED_BY[scope]}: {fix}"
    return f"{scope}: the call failed; {NEEDED_BY[scope]} (see its line above)"


def run_doctor(settings: Settings, *, register_ssh_key: bool = False) -> dict[str, Any]:
    backend_name = effective_backend(settings)
    report: dict[str, Any] = {
        "backend": backend_name,
        "key_source": settings.api_key_source,
        "scopes": {},
        "remedies": [],
        "ssh_key": {},
        "host_tools": _host_tools_check(),
    }
    if report["host_tools"].get("remedy"):
        report["remedies"].append(report["host_tools"]["remedy"])
    try:
        backend = connect(settings)
    except PodCycleError as exc:
        report.update(ok=False, api_base_url=settings.api_base_url)
        report["remedies"].append(exc.render())
        return report
    report["api_base_url"] = backend.base_url
    report["key_source"] = backend.key_source
    client = backend.client
    unreachable: Unreachable | None = None
    limited: RateLimited | None = None  # RunPod's rate limit: it says nothing of the key
    for scope, call, probe in PROBES:
        if unreachable is not None or limited is not None:  # no more waiting
            why = "the API is unreachable" if unreachable else "RunPod is rate limiting"
            report["scopes"][scope] = {"status": "skipped", "call": call, "detail": why}
            continue
        try:
            probe(client)
            report["scopes"][scope] = {"status": "ok", "call": call}
        except Unreachable as exc:
            unreachable = exc
            report["scopes"][scope] = {"status": "error", "call": call,
                                       "detail": redact(exc.message)}
        except RateLimited as exc:  # still limited after the client's own waits
            limited = exc
            report["scopes"][scope] = {"status": "error", "call": call,
                                       "detail": redact(exc.message)}
        except Forbidden as exc:
            report["scopes"][scope] = {"status": "denied", "call": call, "detail": exc.detail}
        except Unauthorized as exc:
            report["scopes"][scope] = {"status": "error", "call": call,
                                       "detail": f"401 {exc.detail}"}
        except ApiError as exc:
            report["scopes"][scope] = {"status": "error", "call": call,
                                       "detail": redact(exc.message)}
    statuses = {s: v["status"] for s, v in report["scopes"].items()}
    failed = [s for s, st in statuses.items() if st != "ok"]
    passed = [s for s, st in statuses.items() if st == "ok"]
    if limited is not None:
        report["remedies"].append(
            f"RunPod is rate limiting this account (429), so the key was not judged: "
            f"{limited.remedy or 'run the doctor again in a few minutes'}")
    elif failed and passed:
        report["remedies"].append(
            f"the key works for {', '.join(passed)} but not for {', '.join(failed)}: RunPod "
            "keys are scoped; create a key with those permissions (RunPod console → Settings → "
            "API Keys)")
        for scope in failed:
            if scope == "ssh-keys":
                continue  # the SSH key check below says it, once
            remedy = scope_remedy(scope, statuses[scope])
            report["scopes"][scope]["remedy"] = remedy
            report["remedies"].append(remedy)
    elif unreachable is not None:
        report["remedies"].append(
            f"the RunPod API at {backend.base_url} is unreachable (a network problem, not "
            "the key): check the connection, a proxy or firewall, and RUNPOD_API_BASE_URL")
    elif failed and all(v.get("detail", "").startswith("401") for v in
                        report["scopes"].values()):
        report["remedies"].append(
            "RunPod rejects this key (401 on every call): it is wrong, revoked or expired; "
            "create a new one in the RunPod console → Settings → API Keys")
    elif failed:
        report["remedies"].append(
            "no call works with this key: check it is current (RunPod console → Settings → "
            "API Keys) and that RUNPOD_API_BASE_URL points at the API")
    report["ssh_key"] = _ssh_key_check(settings, backend, client,
                                       statuses.get("ssh-keys", "error"), register_ssh_key)
    if report["ssh_key"].get("remedy"):
        report["remedies"].append(report["ssh_key"]["remedy"])
    for scope, result in report["scopes"].items():
        result["required"] = scope not in OPTIONAL
    report["optional_failed"] = [s for s in failed if s in OPTIONAL]
    report["ok"] = (not [s for s in failed if s not in OPTIONAL]
                    and report["ssh_key"].get("status") == "ok"
                    and report["host_tools"]["status"] == "ok")
    return report


def _host_tools_check() -> dict[str, Any]:
    """This machine's ssh and rsync, as a cycle's start checks them (hosttools)."""
    from podcycle import hosttools

    try:
        return {"status": "ok", "detail": hosttools.check()}
    except PodCycleError as exc:
        return {"status": "error", "detail": exc.message, "remedy": exc.remedy}


def _ssh_key_check(settings: Settings, backend: Backend, client: Any, keys_status: str,
                   register: bool) -> dict[str, Any]:
    try:
        private = sshkeys.private_key(settings, backend.own_ssh_key)
        line = sshkeys.public_line(private)
    except PodCycleError as exc:
        return {"status": "missing" if isinstance(exc, sshkeys.KeyMissing) else "unusable",
                "remedy": exc.render()}
    result: dict[str, Any] = {"path": str(private), "fingerprint_blob_tail": line.split()[1][-12:]}
    if keys_status == "denied":
        return {**result, "status": "unknown",
                "remedy": "cannot read the account's SSH keys: this key lacks the ssh-keys "
                          "scope (a key with it, or check in the RunPod console → Settings → "
                          "SSH Public Keys)"}
    if keys_status != "ok":
        return {**result, "status": "unknown",
                "remedy": "could not check the account's SSH keys: the call failed (see "
                          "the ssh-keys line above)"}
    keys = client.get_ssh_keys()
    if sshkeys.is_registered(line, keys):
        return {**result, "status": "ok"}
    if backend.registers_ssh_keys and not register:
        # The local RunPod: provisioning adds the key itself (provision.ensure_ssh_key), so a
        # fresh one without it is ready, not a problem to fix by hand.
        return {**result, "status": "ok", "registered_at_create": True}
    if register:
        try:
            sshkeys.register(client, line, keys)
        except PodCycleError as exc:
            return {**result, "status": "not registered", "remedy": exc.render()}
        return {**result, "status": "ok", "registered_now": True}
    return {**result, "status": "not registered",
            "remedy": sshkeys.not_registered(private).render()}


def render(report: dict[str, Any]) -> None:
    print(f"backend:      {report['backend']} ({report.get('api_base_url', '?')})")
    print(f"API key from: {report['key_source']}")
    for scope, result in report["scopes"].items():
        detail = f"  ({result['detail']})" if result.get("detail") else ""
        print(f"  {scope:<15} {result['status']:<7} {result['call']}{detail}")
    ssh = report.get("ssh_key", {})
    if ssh:
        where = f" {ssh['path']}" if ssh.get("path") else ""
        extra = (" (registered now)" if ssh.get("registered_now") else
                 f" (the {report['backend']} RunPod registers it when it creates a pod)"
                 if ssh.get("registered_at_create") else "")
        print(f"SSH key:      {ssh.get('status')}{where}{extra}")
    tools = report.get("host_tools") or {}
    if tools:
        print(f"ssh, rsync:   {tools['status']} ({tools['detail']})")
    for remedy in report["remedies"]:
        print(f"  → {redact(remedy)}")
    optional = report.get("optional_failed") or []
    if report.get("ok") and optional:
        print(f"doctor: the cycle's checks passed; not usable with this key: "
              f"{', '.join(optional)} (see above)")
    else:
        print("doctor: all checks passed" if report.get("ok") else "doctor: problems found")
