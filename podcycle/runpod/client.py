"""A small RunPod REST v2 client: the subset pod-cycle uses, with timeouts, retries and
typed errors.

Retries: a 429 is retried on any call, after `Retry-After` seconds. 5xx answers and connection
errors are retried only for calls that are safe to repeat (GET, PUT of the SSH key set, DELETE,
and the start/stop actions, the cluster rename). `POST /v2/pods` and `POST /v2/clusters` are
never re-sent blindly: after a timeout or a lost connection the new record is looked up by its
(unique) name first.
"""

from __future__ import annotations

import json as json_module
import logging
import math
import random
import re
import time
from collections.abc import Callable, Iterator
from typing import Any
from urllib.parse import quote

from podcycle.errors import ConfigError
from podcycle.redact import printable, redact, register_secret
from podcycle.runpod.errors import (
    ApiError,
    RateLimited,
    StrayNotFound,
    Unreachable,
    error_for,
)
from podcycle.runpod.models import (
    Cluster,
    LogEvent,
    Pod,
    Registry,
    env_problems,
    ports_problems,
    validate_cluster_id,
    validate_pod_id,
)

log = logging.getLogger("podcycle.api")

IDEMPOTENT_ACTIONS = {"start", "stop"}
# A gateway's answers that say nothing of whether RunPod did the work: Bad Gateway, Gateway
# Timeout.
GATEWAY_GAVE_UP = {502, 504}
# A wait on a rate limit this long (seconds) or longer is said (RunPodClient's `notice`).
NOTICE_WAIT = 5.0
USER_AGENT = "pod-cycle/0.1"
TEMPLATE_REMEDY = "fix the template file's [env] and ports (config/template.toml), then sync"
# Every error answer in the v2 spec is application/problem+json.
ACCEPT = "application/json, application/problem+json"


# An echoed Authorization header (a proxy's error page): its credential, whatever it is.
BEARER = re.compile(r"(?i)(bearer\s+)\S+")


def _shown(text: str, limit: int) -> str:
    """An error text from the API as it may be shown: every secret masked before it is cut
    to `limit` characters (cut first, a key split at the cut no longer matches its mask and
    its start shows), and any `Bearer <credential>` masked too; its control characters are
    written as visible escapes (an answer's ESC sequence must not reach the terminal)."""
    return printable(BEARER.sub(r"\1***", redact(text))[:limit])  # cut, never an escape


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def listing(answer: Any, key: str, call: str, base_url: str, item: type = dict) -> list[Any]:
    """`answer[key]` when it is a list of `item` (JSON objects), else an ApiError saying so."""
    records = answer.get(key) if isinstance(answer, dict) else None
    if not isinstance(records, list) or not all(isinstance(r, item) for r in records):
        raise ApiError(f"RunPod answered {call} without a list of {key} (the answer is not "
                       "the API's listing)", f"check RUNPOD_API_BASE_URL ({base_url}) points "
                       "at the RunPod API; if it does, try again in a minute")
    return records


# What the tasks read of each kind of record kept as the API's JSON object (the typed ones are
# podcycle.runpod.models'): checked once here, on every answer that carries one.
TEMPLATE_FIELDS = {"id": str, "name": str}
VOLUME_FIELDS = {"id": str, "name": str, "dataCenter": str, "size": (int, float)}


def record(answer: Any, what: str, call: str, base_url: str, fields: dict[str, Any]) -> Any:
    """`answer` when it is a JSON object whose `fields` have their types, else an ApiError. A
    template without a name was a KeyError traceback in pod.provision after the pod was
    created (its id never shown); a volume without its data centre, in volume.create."""
    bad = [name for name, kind in fields.items()
           if not isinstance(answer, dict) or isinstance(answer.get(name), bool)
           or not isinstance(answer.get(name), kind)]
    if bad:
        raise ApiError(f"RunPod answered {call} with a {what} record without a usable "
                       f"{', '.join(bad)} (not the API's record)",
                       f"check RUNPOD_API_BASE_URL ({base_url}) points at the RunPod API "
                       "(v2); if it does, try again in a minute")
    return answer


def _without(find: Callable[[str], list[dict[str, Any]]], ids: set[Any]
             ) -> Callable[[str], list[dict[str, Any]]]:
    """`find` that leaves out the records of `ids`."""
    return lambda name: [r for r in find(name) if r.get("id") not in ids]


def segment(value: str) -> str:
    """One URL path segment: '/', '?', '#', '%' and '..' can never change the path."""
    return quote(str(value), safe="")


def pod_path(pod_id: str, suffix: str = "") -> str:
    return f"/v2/pods/{segment(validate_pod_id(pod_id))}{suffix}"


def cluster_path(cluster_id: str, suffix: str = "") -> str:
    return f"/v2/clusters/{segment(validate_cluster_id(cluster_id))}{suffix}"


def _proxy_of(url: str) -> str:
    """The proxy the environment gives requests for `url`: host and port only (a proxy URL
    may hold a user name and password)."""
    from urllib.parse import urlsplit

    import requests

    chosen = requests.utils.select_proxy(url, requests.utils.get_environ_proxies(url))
    if not chosen:
        return "of the environment"
    parts = urlsplit(chosen if "://" in chosen else f"http://{chosen}")
    try:
        port = f":{parts.port}" if parts.port else ""
    except ValueError:
        port = ""
    return f"{parts.hostname or '?'}{port}"


def _timed_out(exc: Exception) -> bool:
    """True when the API took the connection and then did not answer in time: a read
    timeout, which requests raises as ReadTimeout before the answer and as a
    ConnectionError while its body comes (a connect timeout is not one: nothing answered)."""
    import requests

    if isinstance(exc, requests.exceptions.ConnectTimeout):
        return False
    return isinstance(exc, requests.exceptions.ReadTimeout) or "ReadTimeoutError" in repr(exc)


def _read_timeout(response: Any, seconds: float) -> None:
    """Wait at most `seconds` for each further byte of a streamed answer whose head came.
    Where the socket cannot be reached, the longer wait of the request stays: slower to
    end a quiet history, never one that ends too soon."""
    sock = getattr(getattr(getattr(response, "raw", None), "connection", None), "sock", None)
    if sock is not None:
        try:
            sock.settimeout(seconds)
        except OSError:
            pass


def _seconds(header: str) -> float | None:
    """A Retry-After of delay-seconds (the spec's form), or None."""
    try:
        seconds = float(header)
    except ValueError:
        return None
    return seconds if math.isfinite(seconds) else None


def _never_sent(exc: Exception) -> bool:
    """True when the connection failed before any byte of the request left (refused, DNS)."""
    import requests

    if isinstance(exc, requests.exceptions.ConnectTimeout):
        return True
    text = repr(exc)
    return "NewConnectionError" in text or "NameResolutionError" in text


def check_container(body: Any, what: str, remedy: str) -> None:
    """Refuse, before the request is sent, a body whose env or ports no pod could start with
    (an invalid name, a value past Linux's exec limits, port 99999): RunPod would accept it,
    and every pod made from it would then fail to start while it bills."""
    if not isinstance(body, dict):
        return
    problems = env_problems(body.get("env")) + ports_problems(body.get("ports"))
    if problems:
        raise ConfigError(f"{what}: " + "; ".join(problems), remedy)


class RunPodClient:
    def __init__(
        self,
        base_url: str,
        api_key: str | None,
        *,
        timeout: float = 30.0,
        connect_timeout: float = 5.0,
        create_timeout: float = 60.0,
        create_settle: float = 30.0,
        max_retries: int = 4,
        max_retry_after: float = 60.0,
        sleep: Callable[[float], None] = time.sleep,
        notice: Callable[[str], None] | None = None,
    ) -> None:
        import requests

        self.base_url = base_url.rstrip("/")
        if self.base_url.endswith("/v2"):
            self.base_url = self.base_url[: -len("/v2")]
        self.timeout = timeout
        self.connect_timeout = connect_timeout
        self.create_timeout = create_timeout
        self.create_settle = create_settle
        self.max_retries = max_retries
        self.max_retry_after = max_retry_after
        self._sleep = sleep
        if notice is None:
            from podcycle.config import say as notice
        self._notice = notice
        self._session = requests.Session()
        # Plain http is only ever to this machine (config refuses any other): no proxy from
        # HTTP_PROXY may see its key in clear, and no ~/.netrc applies. https keeps them (a
        # proxy then carries TLS it cannot read).
        self._session.trust_env = not self.base_url.lower().startswith("http://")
        self._session.headers["User-Agent"] = USER_AGENT
        self._session.headers["Accept"] = ACCEPT
        if api_key:
            register_secret(api_key)
            self._session.headers["Authorization"] = f"Bearer {api_key}"
        self.last_headers: dict[str, str] = {}
        # Create requests (pods, clusters) this client may have sent: none means nothing
        # billable was made through it.
        self.create_requests = 0

    # -- transport -------------------------------------------------------------------------
    def _request(
        self,
        method: str,
        path: str,
        *,
        params: dict[str, Any] | None = None,
        json: Any = None,
        retry_transient: bool,
        timeout: float | None = None,
        raw_errors: bool = False,
    ) -> Any:
        import requests

        url = f"{self.base_url}{path}"
        timeout = timeout or self.timeout
        attempt = 0
        # A try that may have been done though its answer was lost (a gateway's 502 or 504, a
        # read timeout, a connection dropped mid-answer): a DELETE sent again then finds
        # nothing (404). A 500 or 503 is the API's own answer: it did not do it.
        maybe_done = False
        while True:
            attempt += 1
            started = time.monotonic()
            try:
                response = self._within(self.connect_timeout + 2 * timeout,
                                        method, url, params=params, json=json,
                                        timeout=(self.connect_timeout, timeout),
                                        allow_redirects=False)
            except requests.exceptions.RequestException as exc:
                log.debug("%s %s failed after %.2fs: %s", method, path,
                          time.monotonic() - started, type(exc).__name__)
                if raw_errors:
                    raise
                if retry_transient and attempt <= self.max_retries:
                    maybe_done = maybe_done or not _never_sent(exc)
                    if _timed_out(exc):  # each wait was the whole timeout: say it
                        self._notice(f"RunPod did not answer {method} {path} within "
                                     f"{timeout:.0f}s: trying again (try "
                                     f"{attempt + 1} of {self.max_retries + 1})")
                    self._sleep(self._backoff(attempt))
                    continue
                raise self._unreachable(method, path, exc, timeout) from None
            log.debug("%s %s → %s in %.2fs", method, path, response.status_code,
                      time.monotonic() - started)
            self.last_headers = dict(response.headers)
            status = response.status_code
            if status == 429 and attempt <= self.max_retries:
                asked = _seconds(response.headers.get("Retry-After", ""))
                if asked is not None and asked > self.max_retry_after:
                    raise self._rate_limited_for(asked, method, path, response)
                wait = max(0.0, min(self._backoff(attempt) if asked is None else asked,
                                    self.max_retry_after))
                if wait >= NOTICE_WAIT:  # minutes of silence read as a hang
                    self._notice(f"RunPod is rate limiting (429): waiting {wait:.0f}s before "
                                 f"{method} {path} again (try {attempt + 1} of "
                                 f"{self.max_retries + 1})")
                self._sleep(wait)
                continue
            # A 404 page that is not RunPod's (a proxy's, a gateway's) is passing trouble too,
            # tried again where a 5xx is: one said "try again in a moment" at once.
            stray = status == 404 and not _problem(response)
            if (status >= 500 or stray) and retry_transient and attempt <= self.max_retries:
                maybe_done = maybe_done or status in GATEWAY_GAVE_UP
                self._sleep(self._backoff(attempt))
                continue
            if status == 404 and method == "DELETE" and maybe_done:
                self._notice(f"DELETE {path}: RunPod answered 404 after a try whose answer "
                             "was lost: that try deleted it")
                return None  # what was asked
            if stray:
                raise _stray_not_found(method, path, self._detail(response))
            if status >= 400:
                raise error_for(status, method, path, self._detail(response), self.base_url)
            if 300 <= status < 400:
                raise self._redirected(method, path, response)
            if status == 204 or not response.content:
                return None
            try:
                # JSON has no NaN or Infinity: Python's parser takes them, and a price of
                # Infinity ended in an OverflowError.
                return json_module.loads(response.content, parse_constant=_no_constant)
            except ValueError:
                raise ApiError(
                    f"RunPod answered {method} {path} with something that is not JSON",
                    f"check RUNPOD_API_BASE_URL ({self.base_url}) points at the RunPod API",
                    status=status, method=method, path=path,
                ) from None

    def _within(self, bound: float, method: str, url: str, **kwargs: Any) -> Any:
        """The session's request, whole answer within `bound` seconds. requests' read timeout
        bounds each wait for bytes, not the answer: an API that sent a byte a second kept
        pod.list waiting 2.5 minutes on a 154-byte answer, and a stop in a `finally` could
        wait so for ever. Past the bound the request is left to its daemon thread, which ends
        with the answer or its own read timeout, and this is a ReadTimeout, as a silent API's
        is: retried where a retry is safe, and a create's own rules apply (never sent
        twice)."""
        import threading

        import requests

        box: dict[str, Any] = {}

        def call() -> None:
            try:
                box["response"] = self._session.request(method, url, **kwargs)
            except BaseException as exc:  # noqa: BLE001 - handed to the caller's thread
                box["error"] = exc

        worker = threading.Thread(target=call, daemon=True, name="runpod-request")
        worker.start()
        worker.join(bound)  # Ctrl-C and SIGTERM interrupt the wait itself
        if worker.is_alive():
            raise requests.exceptions.ReadTimeout(
                f"the whole answer did not arrive within {bound:.0f}s")
        if "error" in box:
            raise box["error"]
        return box["response"]

    def _redirected(self, method: str, path: str, response: Any) -> ApiError:
        """RunPod's API never redirects. Following one would send the request again (a
        create: a second pod) and the key with it, to wherever the answer points."""
        where = _shown(response.headers.get("Location", "") or "nowhere", 200)
        return ApiError(f"RunPod answered {method} {path} with a redirect ({response.status_code}"
                        f" to {where}), which is not followed",
                        f"check RUNPOD_API_BASE_URL ({self.base_url}) is the API's own address "
                        "(https://api.runpod.io)", status=response.status_code, method=method,
                        path=path)

    def _unreachable(self, method: str, path: str, exc: Exception,
                     timeout: float) -> Unreachable:
        kind = type(exc).__name__
        if _timed_out(exc):
            # requests calls a body that stops coming a ConnectionError: the API was
            # reached, it did not answer in time.
            return Unreachable(
                f"the RunPod API at {self.base_url} did not answer {method} {path} within "
                f"{timeout:.0f}s (a timeout)",
                "RunPod may be slow or down: try again in a minute; check the network and "
                "RUNPOD_API_BASE_URL", method=method, path=path, detail="timeout")
        import requests

        if isinstance(exc, requests.exceptions.ProxyError):
            proxy = _proxy_of(self.base_url)
            return Unreachable(
                f"cannot reach the RunPod API at {self.base_url} through the proxy "
                f"{proxy} ({method} {path}: {kind})",
                "check that proxy (HTTPS_PROXY or HTTP_PROXY in the environment), or leave it "
                "out for this host with NO_PROXY", method=method, path=path, detail=kind)
        if isinstance(exc, requests.exceptions.SSLError):
            return Unreachable(
                f"cannot reach the RunPod API at {self.base_url}: the TLS handshake failed "
                f"({method} {path}: {kind})",
                "check that the server speaks https (a plain one, such as the local RunPod, "
                "is http://: RUNPOD_API_BASE_URL), and that no proxy or firewall intercepts "
                "TLS", method=method, path=path, detail=kind)
        return Unreachable(
            f"cannot reach the RunPod API at {self.base_url} ({method} {path}: {kind})",
            "check the network and RUNPOD_API_BASE_URL; for the local RunPod run "
            "inv local.status",
            method=method, path=path, detail=kind)

    def _rate_limited_for(self, seconds: float, method: str, path: str,
                          response: Any) -> RateLimited:
        """RunPod's limits run per minute, hour and day: a Retry-After past max_retry_after
        is an hour's or a day's window, which no retry within this command would pass."""
        import datetime

        try:
            until = (datetime.datetime.now(datetime.UTC)
                     + datetime.timedelta(seconds=seconds)).strftime("%Y-%m-%d %H:%M UTC")
        except OverflowError:  # a Retry-After past any calendar
            until = "a time past any calendar (the API's Retry-After makes no sense)"
        minutes = f"{seconds / 3600:.1f} h" if seconds >= 3600 else f"{seconds / 60:.0f} min"
        return RateLimited(
            f"RunPod's rate limit (429) asks to wait {minutes} before {method} {path} again "
            f"({self._detail(response) or 'no detail'}): not retried",
            f"run the command again after {until} (the limits count per minute, hour and "
            "day for the whole account: other tools using this key count too)",
            status=429, method=method, path=path)

    @staticmethod
    def _backoff(attempt: int) -> float:
        return min(8.0, 0.25 * 2 ** (attempt - 1)) * (0.5 + random.random() / 2)

    @staticmethod
    def _detail(response: Any) -> str:
        try:
            body = response.json()
        except ValueError:  # a gateway's or proxy's page: its first line
            return _shown(response.text.strip().splitlines()[0] if response.text.strip()
                          else "", 200)
        if not isinstance(body, dict):  # a list, a string, a number: shown as it came
            return _shown(str(body), 300)
        detail = body.get("detail") or body.get("title") or ""
        errors = body.get("errors")
        if errors:
            listed = errors[:3] if isinstance(errors, list) else [errors]
            detail = f"{detail} ({'; '.join(map(str, listed))})"
        return _shown(str(detail), 300)

    def hasty(self, timeout: float = 10.0) -> RunPodClient:
        """This client for a read that is only good to have (the billed amount at a run's
        end, after its pod is stopped): one try of at most `timeout` seconds, no rate limit
        or slow answer waited out (five tries of 30 s held a stop for 2.5 minutes)."""
        return self.brief(timeout, retries=0)

    def brief(self, timeout: float, retries: int | None = None) -> RunPodClient:
        """This client with at most `timeout` seconds a try (and at most `retries` retries,
        when given): for a caller bounded in time (a stop: its 4 tries times the client's 5
        of 30 s each held a hanging API for over 10 minutes before it said to use the
        console)."""
        import copy

        quick = copy.copy(self)  # the same session, key and notices
        quick.timeout = min(self.timeout, timeout)
        if retries is not None:
            quick.max_retries = min(self.max_retries, retries)
        return quick

    def _get(self, path: str, params: dict[str, Any] | None = None, *, retry: bool = True
             ) -> Any:
        return self._request("GET", path, params=params, retry_transient=retry)

    def _listed(self, path: str, key: str, params: dict[str, Any] | None = None,
                item: type = dict, *, retry: bool = True) -> list[Any]:
        """GET a listing: `{key: [record, ...]}`, checked here once for every listing (an
        empty body, a bare list, a null or a list of nulls was a traceback in each task)."""
        return listing(self._get(path, params, retry=retry), key, f"GET {path}", self.base_url,
                       item)

    # -- templates -------------------------------------------------------------------------
    def _record(self, answer: Any, what: str, call: str, fields: dict[str, Any]) -> Any:
        return record(answer, what, call, self.base_url, fields)

    def list_templates(self) -> list[dict[str, Any]]:
        return [self._record(t, "template", "GET /v2/templates", TEMPLATE_FIELDS)
                for t in self._listed("/v2/templates", "templates")]

    def get_template(self, template_id: str) -> dict[str, Any]:
        return self._record(self._get(f"/v2/templates/{segment(template_id)}"), "template",
                            "GET /v2/templates/{id}", TEMPLATE_FIELDS)

    def create_template(self, body: dict[str, Any]) -> dict[str, Any]:
        check_container(body, "template", TEMPLATE_REMEDY)
        return self._record(
            self._request("POST", "/v2/templates", json=body, retry_transient=False),
            "template", "POST /v2/templates", TEMPLATE_FIELDS)

    def update_template(self, template_id: str, body: dict[str, Any]) -> dict[str, Any]:
        check_container(body, "template", TEMPLATE_REMEDY)
        # A PATCH sets fields to values: sending it twice does no harm, so it is retried.
        return self._record(
            self._request("PATCH", f"/v2/templates/{segment(template_id)}", json=body,
                          retry_transient=True),
            "template", "PATCH /v2/templates/{id}", TEMPLATE_FIELDS)

    def delete_template(self, template_id: str) -> None:
        self._request("DELETE", f"/v2/templates/{segment(template_id)}", retry_transient=True)

    # -- network volumes -------------------------------------------------------------------
    def list_volumes(self) -> list[dict[str, Any]]:
        return [self._record(v, "network volume", "GET /v2/network-volumes", VOLUME_FIELDS)
                for v in self._listed("/v2/network-volumes", "networkVolumes")]

    def get_volume(self, volume_id: str) -> dict[str, Any]:
        return self._record(self._get(f"/v2/network-volumes/{segment(volume_id)}"),
                            "network volume", "GET /v2/network-volumes/{id}", VOLUME_FIELDS)

    def create_volume(self, body: dict[str, Any]) -> dict[str, Any]:
        """Create a network volume, never twice, as create_pod: an answer lost (a gateway's
        502 after it was made) said "RunPod is having trouble; try again in a minute" of a
        volume that existed and billed its storage. It is looked up by its name (unique:
        volumes.create refuses a taken one) and adopted, or the error says where to look."""
        return self._made("/v2/network-volumes", body, "network volume", lambda answer: (
            self._record(answer, "network volume", "POST /v2/network-volumes",
                         VOLUME_FIELDS)), lambda name: [
            v for v in self.list_volumes() if v.get("name") == name], "inv volume.list")

    def update_volume(self, volume_id: str, body: dict[str, Any]) -> dict[str, Any]:
        return self._request("PATCH", f"/v2/network-volumes/{segment(volume_id)}", json=body,
                             retry_transient=True)

    def delete_volume(self, volume_id: str) -> None:
        self._request("DELETE", f"/v2/network-volumes/{segment(volume_id)}",
                      retry_transient=True)

    # -- billing ---------------------------------------------------------------------------
    def pod_billing(self, *, pod_id: str | None = None, start: str | None = None,
                    end: str | None = None, bucket: str = "day") -> dict[str, Any]:
        """GET /v2/billing/pods: {"records": [...], "metadata": {...totals}}."""
        params: dict[str, Any] = {"bucketSize": bucket}
        if pod_id:
            params["podId"] = pod_id
        if start:
            params["startTime"] = start
        if end:
            params["endTime"] = end
        return self._get("/v2/billing/pods", params)

    # -- catalog ---------------------------------------------------------------------------
    def list_gpu_types(
        self, *, availability: bool = True, cloud: str | None = None, count: int | None = None,
        product: str = "POD",
    ) -> list[dict[str, Any]]:
        """GET /v2/catalog/gpus. With availability: for `product` POD (a pod of `count` GPUs)
        or CLUSTER (nodes of `count` GPUs each)."""
        params: dict[str, Any] = {}
        if availability:
            params["include"] = "AVAILABILITY"
            params["product"] = product
            if cloud:
                params["cloud"] = cloud.upper()
            if count and count > 1:
                params["count"] = count
        return self._listed("/v2/catalog/gpus", "gpus", params or None)

    def list_data_centers(self) -> list[dict[str, Any]]:
        """GET /v2/catalog/datacenters: every data centre's id, name and region."""
        return self._listed("/v2/catalog/datacenters", "dataCenters")

    # -- pods ------------------------------------------------------------------------------
    def list_pods(self, *, include_cluster_pods: bool = False) -> list[Pod]:
        """GET /v2/pods. Cluster members are hidden unless `include_cluster_pods`."""
        params = {"includeClusterPods": "true"} if include_cluster_pods else None
        return [Pod.from_api(p) for p in self._listed("/v2/pods", "pods", params)]

    def get_pod(self, pod_id: str, *, retry: bool = True) -> Pod:
        """retry=False: one try (a question asked on the way out of an error)."""
        return Pod.from_api(self._get(pod_path(pod_id), retry=retry))

    def find_pods_by_name(self, name: str) -> list[Pod]:
        return [p for p in self.list_pods() if p.name == name]

    def create_pod(self, body: dict[str, Any]) -> Pod:
        """Create a pod, never twice. A create that was refused before it was sent (connection
        refused) is simply sent again. One that may have reached RunPod (read timeout, a
        connection dropped mid-answer, a gateway's 502 or 504: it gave up on an answer RunPod
        may still have been making) is looked up by its unique name for `create_settle` seconds
        and never re-sent: a slow API must not turn into two pods and two bills, nor into one
        pod that nobody recorded."""
        check_container(body, f"pod {body.get('name')!r}",
                        "fix the --env KEY=VALUE pairs (KEY: letters, digits and '_'; values "
                        "under 128 KiB each), then run again")
        return self._made("/v2/pods", body, "pod", Pod.from_api, lambda name: [
            p.raw for p in self.find_pods_by_name(name)], "inv pod.list")

    def _made(self, path: str, body: dict[str, Any], what: str, record: Callable[[Any], Any],
              find: Callable[[str], list[dict[str, Any]]], listing: str) -> Any:
        """The record _create_once made, read with `record`. A 5xx, or an answer without the
        record (an empty body, no id), does not prove nothing was made: RunPod may have made
        it before it failed to say so. Then the record is looked up once by its unique name
        and adopted; if it is not there, the error says where to look before trying again."""
        name = body["name"]
        # What already has the name (another folder's run of the same id): never adopted as
        # what this create made, should its answer be lost.
        try:
            before = {r.get("id") for r in find(name)}
        except ApiError:
            before = set()
        find = _without(find, before)
        try:
            return record(self._create_once(path, body, what, find, listing))
        except ApiError as exc:
            status = exc.status
            # Looked up already: a gateway that gave up, no answer at all (_create_once).
            # Refused: a 3xx or 4xx, RunPod's own no.
            answered = status is None or status < 300 or \
                (status >= 500 and status not in GATEWAY_GAVE_UP)
            if isinstance(exc, Unreachable) or not answered:
                raise
            failed = exc
        try:
            existing = find(name)
        except ApiError:
            existing = []
        if existing:
            return record(max(existing, key=lambda found: found.get("createdAt") or ""))
        raise _outstanding(type(failed)(
            failed.message, f"RunPod may have made {what} {name!r} all the same: check "
            f"{listing} before trying again (a new run of the step adopts it by name); "
            f"{failed.remedy}", status=failed.status, method=failed.method,
            path=failed.path, detail=failed.detail))

    def _create_once(self, path: str, body: dict[str, Any], what: str,
                     find: Callable[[str], list[dict[str, Any]]], listing: str) -> Any:
        """POST `body` to `path` at most once once it may have been received; then look the
        new record up by its unique name (`find`) instead of sending it again."""
        import requests

        name = body["name"]
        failed: ApiError | None = None  # a gateway's answer: the record may exist all the same
        for attempt in range(1, self.max_retries + 2):
            self.create_requests += 1
            try:
                return self._request("POST", path, json=body, retry_transient=False,
                                     timeout=self.create_timeout, raw_errors=True)
            except ApiError as exc:
                if exc.status not in GATEWAY_GAVE_UP:
                    raise  # RunPod's own answer: a 500 is looked up once by _made
                failed = exc
                break
            except requests.exceptions.ConnectionError as exc:
                if _never_sent(exc) and attempt <= self.max_retries:
                    self._sleep(self._backoff(attempt))
                    continue
                if _never_sent(exc):
                    raise self._unreachable("POST", path, exc, self.create_timeout) from None
                break
            except requests.exceptions.RequestException:
                break
        log.debug("create of %s may have reached RunPod; looking it up by name", name)
        self._notice(f"creating {what} {name!r}: "
                     + (f"RunPod answered {failed.status}" if failed is not None else
                        "no answer from RunPod")
                     + f"; it may have made it all the same: looking for it by name for up "
                     f"to {self.create_settle:g}s (never sent twice)")
        deadline = time.monotonic() + self.create_settle
        attempt = 0
        while True:
            attempt += 1
            try:
                existing = find(name)
            except ApiError as exc:  # the same trouble on the lookup: look again until the end
                if not isinstance(exc, Unreachable) and (exc.status or 0) < 500 \
                        and exc.status != 429:
                    raise _outstanding(exc) from None
                existing = []
            if existing:
                return max(existing, key=lambda record: record.get("createdAt") or "")
            if time.monotonic() >= deadline:
                break
            self._sleep(min(2.0, 0.25 * attempt))
        # Not seen is not "not made": RunPod may still be making it, and it bills once made.
        late = (f"RunPod may still make it, and it bills from then: look with {listing} in a "
                f"minute for {name!r} before trying again"
                + (" (a run's: inv cycle.stop -r RUN stops it once it is there)"
                   if what in ("pod", "cluster") else "")  # not a volume's
                + "; it was sent once, so there is at most one")
        if failed is not None:
            raise _outstanding(type(failed)(
                f"{failed.message}; no {what} of that name appeared within "
                f"{self.create_settle:.0f}s", late,
                status=failed.status, method="POST", path=path, detail=failed.detail))
        raise _outstanding(Unreachable(
            f"creating {what} {name!r} got no answer, and no {what} of that name appeared "
            f"within {self.create_settle:.0f}s", late, method="POST", path=path))

    def pod_action(self, pod_id: str, action: str) -> Pod | None:
        answer = self._request("POST", pod_path(pod_id, "/action"), json={"action": action},
                               retry_transient=action in IDEMPOTENT_ACTIONS)
        return None if answer is None else Pod.from_api(answer)

    def pod_logs(self, pod_id: str, *, source: str | None = None, tail: int | None = None,
                 since: str | None = None, last_event_id: str | None = None,
                 idle_timeout: float = 60.0) -> Iterator[LogEvent]:
        """GET /v2/pods/{id}/logs as LogEvents, as they arrive. The stream ends when the
        server ends it; requests' ReadTimeout (nothing for `idle_timeout` seconds) and
        connection errors reach the caller, who may resume with the last event's id."""
        params: dict[str, Any] = {}
        if source:
            params["source"] = source
        if tail is not None:
            params["tail"] = tail
        if since:
            params["since"] = since
        headers = {"Accept": "text/event-stream, application/problem+json"}
        if last_event_id:
            headers["Last-Event-ID"] = last_event_id
        path = pod_path(pod_id, "/logs")
        # The answer's head may take the API's usual time (self.timeout); only then does the
        # idle wait between lines apply. With one read timeout for both, a history read
        # (a 2 s idle wait) of an API slower than 2 s to answer showed no line at all.
        response = self._session.get(
            f"{self.base_url}{path}", params=params, headers=headers, stream=True,
            timeout=(self.connect_timeout, max(idle_timeout, self.timeout)),
            allow_redirects=False)
        with response:
            _read_timeout(response, idle_timeout)
            if response.status_code >= 400:
                raise error_for(response.status_code, "GET", path, self._detail(response),
                                self.base_url)
            if 300 <= response.status_code < 400:
                raise self._redirected("GET", path, response)
            # An event stream is UTF-8, and says no charset: requests would read a text/*
            # answer without one as Latin-1 ("ZÃ¼rich" for "Zürich").
            response.encoding = "utf-8"
            event_id, data = None, []
            for raw in response.iter_lines(decode_unicode=True):
                if raw is None:
                    continue
                if raw == "":
                    if data:
                        yield LogEvent.from_sse(event_id, "\n".join(data))
                    event_id, data = None, []
                elif raw.startswith("id:"):
                    event_id = raw[3:].strip()
                elif raw.startswith("data:"):
                    data.append(raw[5:].lstrip())

    def delete_pod(self, pod_id: str) -> None:
        self._request("DELETE", pod_path(pod_id), retry_transient=True)

    # -- clusters (RunPod Instant Clusters) ---------------------------------------------------
    # create_cluster(body) -> Cluster      POST /v2/clusters, sent at most once (see create_pod)
    # get_cluster(cluster_id) -> Cluster   GET /v2/clusters/{id} (a summary: Cluster.pods empty)
    # list_clusters() -> list[Cluster]     GET /v2/clusters
    # cluster_pods(cluster_id) -> list[Pod]  GET /v2/clusters/{id}/pods, ordered by node rank
    # get_cluster_with_pods(cluster_id) -> Cluster  get_cluster + cluster_pods (Cluster.pods)
    # update_cluster(cluster_id, body) -> Cluster   PATCH: the spec allows only {"name"}
    # delete_cluster(cluster_id) -> None   DELETE: terminates every member and its disk
    # cluster_billing(cluster_id=, start=, end=, bucket=, last_n=) -> dict  /v2/billing/clusters
    # list_pods(include_cluster_pods=True) shows members too (each Pod has cluster_id, node_rank).
    # A member pod cannot be stopped, patched or deleted through /v2/pods: that is a 409
    # (Conflict); delete its cluster. There is no cluster status: Cluster.ready is every
    # member RUNNING with SSH.
    def create_cluster(self, body: dict[str, Any]) -> Cluster:
        """Create a cluster, never twice (as create_pod: looked up by its unique name after
        an answer that may have been lost). `body` is CreateClusterRequest: name, type,
        compute {gpuTypeId, gpuCountPerPod, podCount}, container fields; no templateId,
        registry or cloud (RunPod answers 422)."""
        check_container(body, f"cluster {body.get('name')!r}",
                        "fix the env KEY=VALUE pairs and ports, then run again")
        return self._made("/v2/clusters", body, "cluster", Cluster.from_api, lambda name: [
            c.raw for c in self.list_clusters() if c.name == name], "inv cluster.list")

    def get_cluster(self, cluster_id: str, *, retry: bool = True) -> Cluster:
        """retry=False: one try (a question asked on the way out of an error)."""
        return Cluster.from_api(self._get(cluster_path(cluster_id), retry=retry))

    def list_clusters(self) -> list[Cluster]:
        return [Cluster.from_api(c) for c in self._listed("/v2/clusters", "clusters")]

    def cluster_pods(self, cluster_id: str, *, retry: bool = True) -> list[Pod]:
        pods = [Pod.from_api(p) for p in self._listed(cluster_path(cluster_id, "/pods"), "pods",
                                                      retry=retry)]
        return sorted(pods, key=lambda p: (p.node_rank is None, p.node_rank or 0, p.id))

    def get_cluster_with_pods(self, cluster_id: str) -> Cluster:
        # Members first, then the record: a record read after its members is at least as
        # new, so a cluster whose members are ready also names its primary's SSH endpoint.
        pods = self.cluster_pods(cluster_id)
        return self.get_cluster(cluster_id).with_pods(pods)

    def update_cluster(self, cluster_id: str, body: dict[str, Any]) -> Cluster:
        # A rename sets a value: sending it twice does no harm, so it is retried.
        return Cluster.from_api(self._request("PATCH", cluster_path(cluster_id), json=body,
                                              retry_transient=True))

    def delete_cluster(self, cluster_id: str) -> None:
        """Terminate every member and its disk (clusters cannot be stopped). A 404 raises
        NotFound, except after a try whose answer was lost (that try deleted it)."""
        self._request("DELETE", cluster_path(cluster_id), retry_transient=True)

    def cluster_billing(self, *, cluster_id: str | None = None, start: str | None = None,
                        end: str | None = None, bucket: str = "day",
                        last_n: int | None = None) -> dict[str, Any]:
        """GET /v2/billing/clusters: {"records": [{clusterId, totalAmount, gpuAmount, ...}],
        "metadata": {..., "totals": {...}}}. `last_n` excludes `start`/`end` (per the spec)."""
        params: dict[str, Any] = {"bucketSize": bucket}
        if cluster_id:
            params["clusterId"] = validate_cluster_id(cluster_id)
        if start:
            params["startTime"] = start
        if end:
            params["endTime"] = end
        if last_n is not None:
            params["lastN"] = last_n
        return self._get("/v2/billing/clusters", params)

    # -- registry credentials (private images) ---------------------------------------------
    def list_registries(self) -> list[Registry]:
        return [Registry.from_api(r) for r in self._listed("/v2/registries", "registries")]

    def get_registry(self, registry_id: str) -> Registry:
        return Registry.from_api(self._get(f"/v2/registries/{segment(registry_id)}"))

    def create_registry(self, name: str, username: str, password: str) -> Registry:
        """POST /v2/registries. The password is write-only on RunPod and never logged here;
        a create is not re-sent on a 5xx (it may have been stored)."""
        register_secret(password)
        return Registry.from_api(self._request(
            "POST", "/v2/registries", retry_transient=False,
            json={"name": name, "username": username, "password": password}))

    def delete_registry(self, registry_id: str) -> None:
        self._request("DELETE", f"/v2/registries/{segment(registry_id)}",
                      retry_transient=True)

    # -- account ---------------------------------------------------------------------------
    def get_ssh_keys(self) -> list[str]:
        return self._listed("/v2/account/ssh-keys", "keys", item=str)

    def put_ssh_keys(self, keys: list[str]) -> list[str]:
        return listing(self._request("PUT", "/v2/account/ssh-keys", json={"keys": keys},
                                     retry_transient=True), "keys",
                       "PUT /v2/account/ssh-keys", self.base_url, str)


def _outstanding(exc: ApiError) -> ApiError:
    """`exc`, marked as a create's error after which RunPod may still make the record
    (ApiError.may_have_made): the caller keeps the create outstanding, so that the next
    start or stop of the run waits for it, and a stop stops what it makes."""
    exc.may_have_made = True
    return exc


def _problem(response: Any) -> bool:
    """Whether an error's body is RunPod's problem+json (the spec's ErrorResponse: a JSON
    object with its title, status or detail). An API gateway's own JSON ({"message": "Not
    Found"}) is not: a 404 of it says nothing of what RunPod holds."""
    try:
        body = response.json()
    except ValueError:
        return False
    return isinstance(body, dict) and any(key in body for key in ("title", "status", "detail"))


def _stray_not_found(method: str, path: str, detail: str) -> StrayNotFound:
    return StrayNotFound(
        f"{method} {path} got 404 with a page that is not RunPod's ({detail or 'empty'}): a "
        "proxy or gateway answered, not RunPod, so it says nothing of what is there",
        "try again in a moment; if it lasts, check RUNPOD_API_BASE_URL and any proxy "
        "(inv api.doctor)", status=404, method=method, path=path, detail=detail)
