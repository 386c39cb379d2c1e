"""Provisioning, the one path for pod.provision and cycle.start: resolve the template and the
GPU, check what the pod needs for SSH, create the pod, wait until SSH answers."""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from podcycle import catalog, sshkeys, volumes
from podcycle.errors import ConfigError, PodCycleError
from podcycle.redact import clipped
from podcycle.runpod.errors import BadRequest, Forbidden, NotFound
from podcycle.runpod.models import Pod, PodStatus
from podcycle.runs import SpendGuard
from podcycle.signals import held_signals

if TYPE_CHECKING:
    from podcycle.backend import Backend
    from podcycle.config import Settings
    from podcycle.runpod.client import RunPodClient

# Helper-provided service defaults, layered *under* explicit --env and only on request: the
# 2026-02-26 incident showed that injecting them by default overrode template settings.
TRAINING_PRESET_ENV = {
    "START_SSHD": "1",
    "START_JUPYTER": "1",
    "START_INFERENCE_API": "1",
    "START_HF_WATCH": "0",
    "START_IDLE_WATCHDOG": "1",
    "IDLE_MINUTES": "60",
    "RUNPOD_PHASE_TIMING_ENABLED": "1",
}

# At most this many (GPU type, cloud) candidates are tried for one pod create (see
# gpu_candidates): a rule the body breaks fails the same on every one of them.
MAX_CANDIDATES = 4

# What deploy/runpod_cloud_training/spend_guard.py writes when it stops its pod.
SPEND_GUARD_FIRED = "spend guard fired"

CATALOG_DENIED_REMEDY = (
    "three ways out: (1) use an API key with catalog access (RunPod console → Settings → "
    "API Keys); (2) skip discovery by naming the GPU: --gpu-type-id \"<GPU type id>\" (e.g. "
    "\"NVIDIA H200\") on inv cycle.start, cycle.full-smoke or pod.provision; (3) launch the "
    "pod from the RunPod UI with your template (outside any run of this tool)"
)


class CatalogDenied(PodCycleError):
    pass


class UnknownGpu(ConfigError):
    """A GPU type id in no cloud's listing of the catalog: refused input (exit 2), as an
    unknown --cloud is."""


def catalog_denied(exc: Forbidden) -> CatalogDenied:
    return CatalogDenied(
        f"GPU discovery is denied for this API key (403 on GET /v2/catalog/gpus: {exc.detail})",
        CATALOG_DENIED_REMEDY)


def resolve_template(client: RunPodClient, name: str | None, template_id: str | None
                     ) -> dict[str, Any]:
    if template_id:
        try:
            return client.get_template(template_id)
        except NotFound:
            raise ConfigError(f"no template with id {template_id!r} on this account",
                              "list them with inv template.list") from None
    if not name:
        raise PodCycleError("no template given",
                            "pass --template-name or --template-id, or set RUNPOD_TEMPLATE_NAME")
    templates = client.list_templates()
    matches = [t for t in templates if t["name"] == name] or [
        t for t in templates if t["name"].lower() == name.lower()]
    if len(matches) == 1:
        return matches[0]
    if not matches:  # the account's names quoted one line each, never a line of their own
        names = ", ".join(sorted(clipped(t["name"], 80) for t in templates)) or "(none)"
        raise ConfigError(f"no template named {name!r}; this account has: {names}",
                          "pass an existing --template-name or --template-id")
    ids = ", ".join(t["id"] for t in matches)
    raise PodCycleError(f"{len(matches)} templates are named {name!r} ({ids})",
                        "pick one with --template-id")


def warn_json(**fields: Any) -> None:
    """One machine-readable warning line on stderr."""
    print(json.dumps({"level": "warning", **fields}, sort_keys=True), file=sys.stderr,
          flush=True)


def choose_gpu(client: RunPodClient, *, gpu_type_id: str | None, cloud: str, gpu_count: int,
               max_price: float | None = None) -> tuple[str, catalog.GpuOffer | None]:
    """The GPU type to create the pod with, and its offer when the catalog could be read:
    the first of gpu_candidates."""
    return gpu_candidates(client, gpu_type_id=gpu_type_id, cloud=cloud, gpu_count=gpu_count,
                          max_price=max_price)[0]


def gpu_candidates(client: RunPodClient, *, gpu_type_id: str | None, cloud: str,
                   gpu_count: int, max_price: float | None = None
                   ) -> list[tuple[str, catalog.GpuOffer | None]]:
    """The (GPU type, offer) pairs a pod create tries in turn (the spec's read-then-create:
    a 400 for no capacity, a 403 for a pool the account may not use, "try your next
    candidate"): the catalog's available offers, cheapest first, at most MAX_CANDIDATES; or
    the given type in each cloud asked. Stock is per cloud (include=AVAILABILITY is scoped by
    `cloud`), so each cloud is read on its own: with one read for both, the secure cloud's
    stock was shown for a community offer. The offer is None where the catalog was denied."""
    if not gpu_type_id:
        try:
            found = catalog.search(client, cloud=cloud, gpu_count=gpu_count,
                                   max_price=max_price, available_only=True)
        except Forbidden as exc:
            raise catalog_denied(exc) from None
        if not found:
            raise PodCycleError(
                f"no GPU type is available for {gpu_count} GPU(s) in {cloud} cloud"
                + (f" under ${max_price}/h" if max_price else ""),
                "widen the search (inv gpu.search --cloud all"
                + (", a higher RUNPOD_MAX_PRICE" if max_price else ") or pass --gpu-type-id"
                   ) + (")" if max_price else ""))
        return [(offer.id, offer) for offer in found[:MAX_CANDIDATES]]
    fits: list[catalog.GpuOffer] = []
    found: dict[str, Any] | None = None
    gpus: list[dict[str, Any]] = []
    for tier in (["secure", "community"] if cloud == "all" else [cloud]):
        try:
            gpus = client.list_gpu_types(availability=True, cloud=tier, count=gpu_count)
        except Forbidden:
            warn_json(event="gpu_validation_skipped", gpu_type_id=gpu_type_id,
                      reason="catalog denied for this API key (403 on GET /v2/catalog/gpus)",
                      detail="provisioning with the explicit GPU type id without validating it")
            return [(gpu_type_id, None)]
        gpu = catalog.find_gpu(gpus, gpu_type_id)
        if gpu is not None:
            found = found or gpu
            fits += catalog.offers([gpu], cloud=tier, gpu_count=gpu_count)
    if found is None:  # in no cloud's listing
        import difflib

        ids = [g["id"] for g in gpus if isinstance(g.get("id"), str)]
        close = [i for i in ids if gpu_type_id.lower() in i.lower()][:5] or \
            difflib.get_close_matches(gpu_type_id, ids, n=4, cutoff=0.6)
        hint = f"did you mean: {', '.join(close)}" if close else "see inv gpu.search"
        raise UnknownGpu(f"unknown GPU type {gpu_type_id!r}", hint)
    asked = ["secure", "community"] if cloud == "all" else [cloud]
    if not fits and all(found.get(tier) is False for tier in asked):
        elsewhere = [f"{tier} (${catalog.api_money((found.get('price') or {}).get(tier)):.2f}"
                     "/h per GPU)" for tier in ("secure", "community")
                     if tier not in asked and found.get(tier)]
        raise ConfigError(
            f"{found['id']} is not offered in the {cloud} cloud"
            + (f"; the catalog lists it in {elsewhere[0]}" if elsewhere else ""),
            f"pass --cloud {elsewhere[0].split()[0]}" if elsewhere else
            "pick another type (inv gpu.search)")
    if max_price is not None and fits:
        under = [o for o in fits if o.price_per_hour <= max_price]
        if not under:
            cheapest = min(fits, key=lambda o: o.price_per_hour)
            raise ConfigError(
                f"{cheapest.id} costs ${cheapest.price_per_hour:.2f}/h for {gpu_count} GPU(s) "
                f"in the {cheapest.cloud.lower()} cloud, over the price ceiling "
                f"${max_price:g}/h (RUNPOD_MAX_PRICE)",
                "raise the ceiling, or leave out --gpu-type-id for the cheapest type under "
                f"it (inv gpu.search --max-price {max_price:g} lists them)")
        fits = under
    # In stock first (a create without stock fails for capacity), then the cheapest.
    fits.sort(key=lambda o: (o.availability not in catalog.AVAILABLE, o.price_per_hour,
                             o.cloud))
    return [(offer.id, offer) for offer in fits] or [(found["id"], None)]


def parse_env(pairs: list[str] | None) -> dict[str, str]:
    env = {}
    for number, pair in enumerate(pairs or [], 1):
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            # A usage error (exit 2), never shown: without its "=" nothing tells a name from
            # a value, and it may be a secret given alone or with another separator
            # (--env hf_..., --env HF_TOKEN:hf_...).
            raise ConfigError(f"--env number {number} of this command ({len(pair)} "
                              "characters, not shown: it may hold a secret) is not KEY=VALUE",
                              "e.g. --env START_JUPYTER=0")
        if key.strip() in env and env[key.strip()] != value:  # the last won, without a word
            from podcycle.redact import is_secret_name

            shown = "(values masked)" if is_secret_name(key) else \
                f"({env[key.strip()]!r} and {value!r})"
            raise ConfigError(f"--env {key.strip()} is given twice with different values "
                              f"{shown}", f"give {key.strip()} once")  # usage: exit 2
        env[key.strip()] = value
    return env


def create_body(*, name: str, template: dict[str, Any], gpu_id: str, gpu_count: int,
                cloud: str, env: dict[str, str], use_preset_env: bool,
                min_cuda_version: str = "any") -> dict[str, Any]:
    merged = dict(TRAINING_PRESET_ENV) if use_preset_env else {}
    merged.update(env)
    gpu: dict[str, Any] = {"id": gpu_id, "count": gpu_count}
    # A floor on the host's CUDA (RUNPOD_MIN_CUDA_VERSION), unless the template names its own
    # set: a CUDA field in the body replaces the template's constraint, and a template that
    # names one (its image's own CUDA, say) is left to decide.
    if min_cuda_version != "any" and not template.get("allowedCudaVersions"):
        gpu["minCudaVersion"] = min_cuda_version
    body: dict[str, Any] = {
        "name": name,
        "templateId": template["id"],
        "gpu": gpu,
        "cloud": "COMMUNITY" if cloud == "community" else "SECURE",
        "startSsh": True,
    }
    if merged:
        body["env"] = merged
    return body


class ReadinessTimeout(PodCycleError):
    pass


def wait_for_ssh(client: RunPodClient, pod_id: str, *, timeout: float,
                 progress: Callable[[str], None], poll: float = 1.0,
                 proxy_ok: bool = False) -> Pod:
    """Poll until the pod is RUNNING with a direct SSH endpoint (`proxy_ok`, a pod made
    with --allow-proxy-ssh: RUNNING, reached through RunPod's SSH proxy); fail fast if it
    vanishes or errors, and give up after `timeout` seconds. The pod is left to the caller,
    whose message says whether it is still billing."""
    started = time.monotonic()
    last = None
    said = 0.0
    while True:
        try:
            pod = client.get_pod(pod_id)
        except NotFound:
            raise PodCycleError(f"pod {pod_id} disappeared while starting (RunPod answers "
                                "404 for it)",
                                "check the RunPod console: it may have been terminated; if it "
                                "is listed there it bills, and inv pod.stop stops it") from None
        elapsed = time.monotonic() - started
        if pod.status != last:
            progress(f"pod {pod_id}: {pod.status} after {elapsed:.1f}s")
            last, said = pod.status, elapsed
        elif elapsed - said >= 15:  # a heartbeat while RunPod pulls the image or boots
            # RUNNING, still waited for: what is missing is said, not only the status again.
            waits = (": no SSH address published yet (RunPod publishes it a little after "
                     "RUNNING; a template without 22/tcp never gets one)"
                     if pod.status is PodStatus.RUNNING else "")
            progress(f"pod {pod_id}: still {pod.status} after {elapsed:.0f}s{waits} (gives up "
                     f"at {timeout:.0f}s)")
            said = elapsed
        if pod.status is PodStatus.RUNNING and pod.ssh_direct:
            return pod
        if pod.status is PodStatus.RUNNING and proxy_ok:
            if pod.ssh_proxy:
                progress(f"pod {pod_id}: RUNNING without direct SSH (no 22/tcp): reach it "
                         f"through RunPod's SSH proxy (inv pod.ssh {pod_id})")
            else:  # the local RunPod has no proxy: "reach it through" led to a dead end
                progress(f"pod {pod_id}: RUNNING without any SSH: no 22/tcp, and no SSH proxy "
                         "for it (the local RunPod has none); nothing reaches its shell, "
                         f"and it bills until inv pod.stop {pod_id}")
            return pod
        if pod.status.stopped or pod.status.gone:
            guard = _guard_fired(client, pod_id)
            if guard:
                raise PodCycleError(
                    f"pod {pod_id} was stopped by its own spend guard before SSH answered "
                    f"({guard})",
                    "the limit is shorter than the pod takes to boot: raise --max-minutes "
                    "(or --max-cost), or leave it out")
            raise PodCycleError(f"pod {pod_id} is {pod.status} instead of starting",
                                f"see why with inv pod.logs {pod_id}: a stop someone sent (inv "
                                "pod.stop, the console) shows among RunPod's events, a crash "
                                "in the container's own lines (then fix the template); then "
                                "run the step again")
        if elapsed > timeout:
            raise ReadinessTimeout(
                f"pod {pod_id} did not offer SSH within {timeout:.0f}s (status {pod.status})",
                "check the template exposes 22/tcp and starts sshd, or raise "
                "RUNPOD_READY_TIMEOUT")
        time.sleep(poll if elapsed > 2 else min(poll, 0.2))


def wait_ready(client: RunPodClient, pod_id: str, *, timeout: float,
               progress: Callable[[str], None], left_billing: bool = False,
               proxy_ok: bool = False) -> Pod:
    """The one readiness path of `pod.provision --wait` and `cycle.start`: wait_for_ssh and,
    when the pod does not come up, show its last log lines (what it said) before the error.
    `left_billing`: nothing will stop the pod after this failure (pod.provision), so a
    timeout says it still bills and how to stop it."""
    try:
        return wait_for_ssh(client, pod_id, timeout=timeout, progress=progress,
                            proxy_ok=proxy_ok)
    except PodCycleError as exc:
        from podcycle.pods import show_last_log_lines

        show_last_log_lines(client, pod_id, progress)
        if not (left_billing and isinstance(exc, ReadinessTimeout)):
            raise
        raise ReadinessTimeout(
            f"{exc.message}; it is still billing",
            f"wait with inv pod.status {pod_id}, or stop it with inv pod.stop {pod_id}; "
            f"{exc.remedy}") from None


def _guard_fired(client: RunPodClient, pod_id: str) -> str | None:
    """The spend guard's "fired" line in a stopped pod's log, or None: a pod its guard
    stopped is not a broken template."""
    from podcycle.pods import last_log_lines

    found = [line for line in last_log_lines(client, pod_id, 200)
             if SPEND_GUARD_FIRED in line]
    if not found:
        return None
    return found[-1].split(SPEND_GUARD_FIRED, 1)[1].lstrip(": ").strip() or SPEND_GUARD_FIRED


@dataclass
class Provisioned:
    pod: Pod
    body: dict[str, Any]
    template: dict[str, Any]
    gpu_id: str
    offer: catalog.GpuOffer | None
    cloud: str
    guard: SpendGuard | None = None
    volume: dict[str, Any] | None = None  # the API's record of the mounted network volume

    def record(self, backend: Backend) -> dict[str, Any]:
        """What provision.json keeps (secret env values are masked by the writer)."""
        return {"request": self.body, "pod": self.pod.to_json(),
                "template": {"id": self.template["id"], "name": self.template["name"]},
                "offer": self.offer.as_dict() if self.offer else None,
                "backend": backend.name, "api_base_url": backend.base_url}


def direct_ssh(template: dict[str, Any]) -> bool:
    """Whether pods of the template get direct SSH (the spec: it publishes 22/tcp)."""
    return "22/tcp" in [str(p) for p in template.get("ports") or []]


def check_template_ssh(template: dict[str, Any], *, allow_proxy_ssh: bool) -> None:
    """The spec: `ssh.direct` needs the template to publish 22/tcp (CreatePodRequest has no
    ports of its own). Without it only the proxy works, which carries no rsync."""
    ports = [str(p) for p in template.get("ports") or []]
    if direct_ssh(template) or allow_proxy_ssh:
        return
    raise PodCycleError(
        f"template {template.get('name')!r} does not expose 22/tcp (ports: "
        f"{', '.join(ports) or 'none'}), so the pod would have no direct SSH",
        "add 22/tcp to the template's ports; or pass --allow-proxy-ssh for a pod reachable "
        "only through RunPod's SSH proxy (a shell, no rsync: not enough for the cycle)")


def ensure_ssh_key(backend: Backend, key_line: str | None, key_path: Path | None) -> None:
    """A pod created with startSsh accepts only the account's registered keys: refuse before
    creating one that nobody could log into. The local RunPod registers the key itself."""
    client = backend.client
    keys = client.get_ssh_keys()
    if key_line is not None and sshkeys.is_registered(key_line, keys):
        return
    if key_line is not None and backend.registers_ssh_keys:
        sshkeys.register(client, key_line, keys)
        return
    if key_line is None and keys:
        return
    raise sshkeys.not_registered(key_path)


def provision_pod(backend: Backend, settings: Settings, *, name: str, env: dict[str, str],
                  use_preset_env: bool = False, key_path: Path | None = None,
                  allow_proxy_ssh: bool = False,
                  record: Callable[[Provisioned], None] | None = None,
                  sending: Callable[[], None] | None = None,
                  refused: Callable[[], None] | None = None) -> Provisioned:
    """Everything is checked (template, GPU, SSH key) before the first create request.
    `record` saves what was made: it runs with the create, SIGINT/SIGTERM held until both
    are done, so an interruption never falls between a pod RunPod made and its record.
    `sending` is called just before each create goes out, `refused` after RunPod refused
    one (it made nothing). A
    create RunPod refuses for its GPU type and cloud (400: no capacity; 403: a pool this
    account may not use) makes no pod: the next candidate is tried, each refusal said."""
    from podcycle.config import say
    from podcycle.templates import refuse_the_key

    refuse_the_key(env, settings.api_key, "--env")
    client = backend.client
    template = resolve_template(client, settings.template_name, settings.template_id)
    check_template_ssh(template, allow_proxy_ssh=allow_proxy_ssh)
    candidates = gpu_candidates(client, gpu_type_id=settings.gpu_type_id,
                                cloud=settings.cloud, gpu_count=settings.gpu_count,
                                max_price=settings.max_price)
    plans = []
    for gpu_id, offer in candidates:
        try:
            guard = spend_guard(settings.max_minutes, settings.max_cost,
                                offer.price_per_hour if offer else None)
        except ConfigError:
            if not plans:  # the cheapest one's refusal, said before anything is made
                raise
            continue  # a dearer one that --max-cost cannot buy: skipped
        plans.append((gpu_id, offer, guard))
    volume = None
    if settings.network_volume:
        volume = volumes.resolve(client, settings.network_volume)
        env = {**env, "NETWORK_VOLUME_DIR": volumes.VOLUME_PATH}
    key_line = sshkeys.public_line(key_path) if key_path else None
    ensure_ssh_key(backend, key_line, key_path)
    def cloud_of(offer: catalog.GpuOffer | None) -> str:
        return offer.cloud.lower() if offer else (
            "secure" if settings.cloud == "all" else settings.cloud)

    refusals: list[str] = []
    for index, (gpu_id, offer, guard) in enumerate(plans):
        cloud = cloud_of(offer)
        pod_env = dict(env)
        if guard:
            pod_env.update(SPEND_GUARD_MINUTES=f"{guard.minutes:g}",
                           SPEND_GUARD_REASON=guard.reason)
        body = create_body(name=name, template=template, gpu_id=gpu_id,
                           gpu_count=settings.gpu_count, cloud=cloud, env=pod_env,
                           use_preset_env=use_preset_env,
                           min_cuda_version=settings.min_cuda_version)
        if volume:
            body.update(volumes.pod_fields(volume))
        try:
            with held_signals(say):
                if sending is not None:
                    sending()
                made = Provisioned(client.create_pod(body), body, template, gpu_id, offer,
                                   cloud, guard, volume)
                if record is not None:
                    record(made)
            return made
        except (BadRequest, Forbidden) as exc:
            # Only the create's own refusal made no pod: a 4xx of the by-name lookup after a
            # create whose answer was lost says nothing of what that create made.
            if exc.status not in (400, 403) or (exc.method, exc.path) != ("POST", "/v2/pods"):
                raise
            if refused is not None:
                refused()
            refusals.append(f"{gpu_id} in {cloud} cloud "
                            f"({exc.status}: {exc.detail or 'no detail'})")
            if index == len(plans) - 1:
                remedy, floor = exc.remedy, body["gpu"].get("minCudaVersion")
                if floor and exc.status == 400:  # no host of that CUDA may be why
                    remedy = "; ".join(filter(None, [remedy, (
                        f"the pod asks for a host of CUDA {floor} or later "
                        "(RUNPOD_MIN_CUDA_VERSION, the image's), which may be what no GPU "
                        "had: set it to any only for an image built for an older CUDA")]))
                if len(refusals) > 1 or remedy != exc.remedy:
                    message = (f"RunPod refused every candidate ({len(refusals)}): "
                               + "; ".join(refusals)) if len(refusals) > 1 else exc.message
                    raise type(exc)(message, remedy, status=exc.status, method=exc.method,
                                    path=exc.path, detail=exc.detail) from None
                raise
            following, next_offer, _ = plans[index + 1]
            say(f"RunPod refused {refusals[-1]}; no pod was made: trying {following} in "
                f"{cloud_of(next_offer)} cloud")
    raise AssertionError("unreachable: plans is never empty")


def spend_guard(max_minutes: float | None, max_cost: float | None,
                price_per_hour: float | None) -> SpendGuard | None:
    """The minutes a pod may run per boot under --max-minutes and --max-cost (at its price),
    the tighter of the two, for the pod's own spend guard (deploy/.../spend_guard.py).

    A guard the pod could not keep is refused here, before any pod exists: nan or inf, a
    limit under GUARD_MIN_MINUTES (a pod stopped before it boots; 1e-9 would round to 0) or
    over GUARD_MAX_MINUTES, and a --max-cost that buys less than that at the pod's price. A
    --max-cost that buys more than GUARD_MAX_MINUTES is capped there."""
    import math

    from podcycle import config

    if max_minutes is None and max_cost is None:
        return None
    bounds = {"--max-minutes": (config.GUARD_MIN_MINUTES, config.GUARD_MAX_MINUTES, 60),
              "--max-cost": (config.GUARD_MIN_COST, config.GUARD_MAX_COST, 5)}
    checked = {}
    for flag, value in (("--max-minutes", max_minutes), ("--max-cost", max_cost)):
        low, high, example = bounds[flag]
        if isinstance(value, int | float) and value <= 0:
            raise ConfigError(f"{flag} must be above 0, got {value:g}",
                              f"pass e.g. {flag} {example} (from {low:g} to {high:g}), or "
                              "leave it out for no limit")
        checked[flag] = config.parse_number(flag, value, float, minimum=low,
                                            maximum=high, example=example)
    max_minutes, max_cost = checked["--max-minutes"], checked["--max-cost"]
    limits = []
    if max_minutes is not None:
        limits.append((max_minutes, f"--max-minutes {max_minutes:g}"))
    if max_cost is not None:
        if not price_per_hour or not math.isfinite(price_per_hour) or price_per_hour <= 0:
            raise ConfigError(
                "--max-cost needs the GPU's price, and the catalog gave none",
                "pass --max-minutes instead (minutes = budget / price per hour x 60)")
        by_cost = max_cost / price_per_hour * 60
        reason = f"--max-cost ${max_cost:g} at ${price_per_hour:.2f}/h"
        shortest = config.GUARD_MIN_MINUTES
        if by_cost < shortest:
            enough = max(math.ceil(price_per_hour * shortest / 60 * 100) / 100,
                         config.GUARD_MIN_COST)
            raise ConfigError(
                f"{reason} buys {by_cost:.2g} minute(s), under the {shortest:g} a pod needs "
                "to boot: the guard would stop it at once",
                f"pass --max-cost {enough:g} or more, or leave it out"
                if enough <= config.GUARD_MAX_COST else
                f"pass --max-minutes instead (at least {shortest:g})")
        if by_cost > config.GUARD_MAX_MINUTES:
            by_cost, reason = config.GUARD_MAX_MINUTES, f"{reason}, capped at 30 days"
        limits.append((by_cost, reason))
    minutes, reason = min(limits)
    return SpendGuard(minutes=round(minutes, 3), reason=reason, max_minutes=max_minutes,
                      max_cost=max_cost)
