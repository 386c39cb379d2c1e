"""Typed API errors. Each carries a one-line remedy; none ever holds the API key."""

from __future__ import annotations

from podcycle.errors import PodCycleError

# Which key permission each path needs, for the 403 message (and the local server's scopes).
SCOPES = {
    "/v2/templates": "templates",
    "/v2/catalog": "catalog",
    "/v2/pods": "pods",
    "/v2/account/ssh-keys": "ssh-keys",
    "/v2/billing": "billing",
    "/v2/network-volumes": "network-volumes",
    "/v2/registries": "registries",
    "/v2/clusters": "clusters",
}


def scope_for(path: str) -> str:
    for prefix, scope in SCOPES.items():
        if path.startswith(prefix):
            return scope
    return "unknown"


class ApiError(PodCycleError):
    status: int | None = None
    # A create's error after which RunPod may still make what was asked (no answer, a
    # gateway's, a 5xx, and no record of the name found yet): the create is outstanding.
    may_have_made = False

    def __init__(self, message: str, remedy: str = "", *, status: int | None = None,
                 method: str = "", path: str = "", detail: str = "") -> None:
        self.status = status if status is not None else self.status
        self.method = method
        self.path = path
        self.detail = detail
        super().__init__(message, remedy)


class Unauthorized(ApiError):
    status = 401


class Forbidden(ApiError):
    status = 403

    @property
    def scope(self) -> str:
        return scope_for(self.path)


class NotFound(ApiError):
    status = 404


class Conflict(ApiError):
    status = 409


class StrayNotFound(ApiError):
    """A 404 whose body is not RunPod's problem+json (the spec's NotFoundError): a proxy's,
    CDN's or gateway's page, which says nothing of the pod. Taken for NotFound, a stop said
    "gone" (exit 0) of a pod that billed on, and a start made another pod beside it."""

    status = 404


class BadRequest(ApiError):
    status = 400


class RateLimited(ApiError):
    status = 429


class ServerError(ApiError):
    status = 500


class Unreachable(ApiError):
    status = None


def beyond_retry(exc: ApiError, verb: str, things: str, console: str, again: str
                 ) -> tuple[str, str] | None:
    """(why, the way left) when no retry can `verb` one of `things` (stop pods, delete
    clusters) now, None when one may: a key RunPod no longer accepts (401) or that may not
    do it (403) stays refused, and a rate limit still there after the client's own waits
    (429) holds each further round as long, while what it would stop bills on. `console`:
    where the RunPod console does it; `again`: the command for once the limit lets it."""
    if isinstance(exc, Unauthorized):
        why = "RunPod no longer accepts this API key (revoked or expired?)"
    elif isinstance(exc, Forbidden):
        why = f"this API key may not {verb} {things}"
    elif isinstance(exc, RateLimited):
        why = f"RunPod's rate limit held the {verb} back"
    else:
        return None
    way = f"{verb} it now in the RunPod console ({console})"
    if isinstance(exc, RateLimited):
        return why, (f"{way}, or with {again} once RunPod's rate limit lets it (other tools "
                     "using this key count too)")
    return why, (f"{way}; no command with this key can. Then set a key that may (inv "
                 "api.doctor checks it)")


# status → (error class, what happened, what to do); {where} = "METHOD /path", {scope},
# {detail} (RunPod's problem detail) and {base_url} are filled in.
_ERRORS: dict[int, tuple[type[ApiError], str, str]] = {
    401: (Unauthorized, "RunPod rejected the API key on {where} (401: {detail})",
          "check the key (inv api.doctor shows where it came from); create one in the RunPod "
          "console → Settings → API Keys"),
    402: (BadRequest, "RunPod refused {where}: insufficient balance (402: {detail})",
          "add funds in the RunPod console; no GPU type will place until then"),
    403: (Forbidden, "the API key may not use the {scope} scope: {where} was denied "
                     "(403: {detail})",
          "use a key with {scope} access (RunPod console → Settings → API Keys), or see "
          "inv api.doctor"),
    404: (NotFound, "not found: {where} (404: {detail})",
          "check the id or name (inv pod.list / inv template.list)"),
    409: (Conflict, "not allowed in the current state: {where} (409: {detail})",
          "check the pod's status with inv pod.status"),
    429: (RateLimited, "RunPod rate limit still hit after retries on {where} ({detail})",
          "wait a minute and run the command again"),
    400: (BadRequest, "RunPod refused {where} (400: {detail})",
          "the request was refused as invalid; if the detail does not say why, please "
          "report it (pod-cycle builds requests per the v2 spec)"),
    422: (BadRequest, "RunPod refused {where} (422: {detail})",
          "the request was refused as invalid; if the detail does not say why, please "
          "report it (pod-cycle builds requests per the v2 spec)"),
}
# Creating a pod is refused for what the operator chose: say what to change.
_CREATE_REFUSED = ("the chosen template, GPU type or cloud cannot make this pod now: try "
                   "another GPU type or cloud (inv gpu.search), or check the template")
# The spec's table for a pod create: 422 breaks the contract (never retried: fix it), 403 is
# a pool the account may not use (not the key's scope), 404 a template RunPod does not know.
_CREATE_INVALID = ("the request breaks the API's contract (the detail names the field): check "
                   "the template file (config/template.toml) and --env; if they are right, "
                   "please report it (pod-cycle builds requests per the v2 spec)")
_CREATE_POOL = ("this account may not use that GPU type and cloud's pool: try another GPU type "
                "or cloud (inv gpu.search); if every one is refused, check the key's pods "
                "access (inv api.doctor)")
_CREATE_NO_TEMPLATE = ("RunPod does not know the template the pod was asked from: check it "
                       "(inv template.list), or create it with inv template.sync")
# Other 400s the spec names per operation.
_REGISTRY_IN_USE = ("a pod still uses this registry credential: terminate it first (inv "
                    "pod.list shows the pods), then delete the credential")
_VOLUME_SHRINK = "a network volume only grows: give a size above its current one"
_CLUSTER_CREATE_REFUSED = ("the cluster body or shape was refused: clusters take no templateId, "
                           "registry or cloud, need at least 2 pods and a public image; try "
                           "another GPU type or count (inv gpu.search)")
_CLUSTER_MEMBER = ("this pod belongs to a cluster: a member cannot be stopped or changed "
                   "alone; delete the whole cluster (inv cluster.delete CLUSTER_ID)")
# A 404 names the listing of what was looked for.
_NOT_FOUND = {
    "pods": "check the pod id (inv pod.list)",
    "clusters": "check the cluster id (inv cluster.list)",
    "network-volumes": "check the volume id or name (inv volume.list)",
    "templates": "check the template id or name (inv template.list)",
    "registries": "check the registry credential id (inv registry.list)",
}
_SERVER = (ServerError, "RunPod API failed on {where} ({status}: {detail})",
           "RunPod is having trouble; try again in a minute (API at {base_url})")
_OTHER = (ApiError, "unexpected answer {status} on {where}: {detail}",
          "run inv api.doctor to check the key and API address")


def error_for(status: int, method: str, path: str, detail: str, base_url: str) -> ApiError:
    cls, message, remedy = _ERRORS.get(status) or (_SERVER if status >= 500 else _OTHER)
    if method == "POST" and path == "/v2/pods":
        remedy = {400: _CREATE_REFUSED, 422: _CREATE_INVALID, 404: _CREATE_NO_TEMPLATE,
                  403: _CREATE_POOL}.get(status, remedy)
        if status == 403:
            message = ("RunPod refused {where}: this account may not use that GPU pool, or "
                       "this key may not create pods (403: {detail})")
    if status == 400 and method == "DELETE" and path.startswith("/v2/registries/"):
        remedy = _REGISTRY_IN_USE
    if status == 400 and method == "PATCH" and path.startswith("/v2/network-volumes/"):
        remedy = _VOLUME_SHRINK
    if status in (400, 422) and method == "POST" and path == "/v2/clusters":
        remedy = _CLUSTER_CREATE_REFUSED
    if status == 409 and path.startswith("/v2/pods/") and "cluster" in detail.lower():
        remedy = _CLUSTER_MEMBER
    if status == 404 and method == "POST" and path == "/v2/pods":
        pass  # the template (above)
    elif status == 404 and path.count("/") >= 3:  # /v2/KIND/ID...: that id is unknown
        remedy = _NOT_FOUND.get(path.split("/")[2], remedy)
    elif status == 404:  # a listing itself not found: the API address is wrong
        remedy = ("check RUNPOD_API_BASE_URL (it answered {where} with 404: is it RunPod's "
                  "API?); inv api.doctor checks it")
    fields = {"where": f"{method} {path}", "scope": scope_for(path), "detail": detail,
              "base_url": base_url, "status": status}
    return cls(message.format(**fields), remedy.format(**fields), status=status,
               method=method, path=path, detail=detail)
