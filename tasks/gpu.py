"""Search GPU types and prices (GET /v2/catalog/gpus)."""

from podcycle.cli import emit_json, guarded, number, settings, table, task


@task(help={
    "cloud": "secure|community|all (default: all)",
    "min_memory": "minimum GPU memory in GB, 0 to 4096 (default: 0)",
    "max_price": "maximum price in USD per hour for the whole pod, 0 to 1000 (default: "
                 "RUNPOD_MAX_PRICE, else no limit)",
    "gpu_count": "GPUs per pod, 1 to 16; prices and ceilings are for that many (default: "
                 "RUNPOD_GPU_COUNT, else 1)",
    "available_only": "only GPU types with stock now (default: off)",
    "limit": "show at most this many rows, 0 to 10000 (default: 20 in the table, all with "
             "--json; 0 = all)",
    "backend": "auto|runpod|local (default: auto)",
    "api_key": "RunPod API key (default: RUNPOD_API_KEY, then keyring)",
    "json": "print JSON on stdout (default: table)",
})
@guarded
def search(c, cloud="all", min_memory=None, max_price=None, gpu_count=None,
           available_only=False, limit=None, backend=None, api_key=None, json=False):
    """Rank GPU types by price, filtered by cloud, memory, price, count and stock."""
    from podcycle import catalog
    from podcycle.backend import connect
    from podcycle.config import say
    from podcycle.errors import ConfigError, PodCycleError
    from podcycle.provision import catalog_denied
    from podcycle.runpod.errors import Forbidden

    cloud = cloud.lower()
    if cloud not in ("secure", "community", "all"):
        raise ConfigError(f"unknown cloud {cloud!r}", "use secure, community or all")
    min_memory = number("min-memory", min_memory, minimum=0, maximum=4096, example=24) or 0
    max_price = number("max-price", max_price, float, minimum=0, maximum=1000, example=2)
    gpu_count = number("gpu-count", gpu_count, minimum=1, maximum=16)
    limit = number("limit", limit, minimum=0, maximum=10_000, example=20)
    s = settings(c, backend=backend, api_key=api_key)  # RUNPOD_MAX_PRICE, RUNPOD_GPU_COUNT
    max_price = s.max_price if max_price is None else max_price
    gpu_count = gpu_count or s.gpu_count or 1
    backend_ = connect(s)
    try:
        found = catalog.search(backend_.client, cloud=cloud, gpu_count=gpu_count,
                               min_memory=min_memory, max_price=max_price,
                               available_only=available_only)
    except Forbidden as exc:
        raise catalog_denied(exc) from None
    if not found:
        filters = [f"cloud {cloud}", f"{gpu_count} GPU(s)"]
        filters += [f"at least {min_memory} GB"] if min_memory else []
        filters += [f"at most ${max_price:g}/h"] if max_price is not None else []
        filters += ["in stock now"] if available_only else []
        # Only the filters that narrowed it ("--cloud all" to a search of all clouds misled).
        wider = ([] if cloud == "all" else ["--cloud all"]) + \
            (["a higher --max-price"] if max_price is not None else []) + \
            (["a lower --min-memory"] if min_memory else []) + \
            (["a lower --gpu-count"] if gpu_count > 1 else []) + \
            (["leave out --available-only"] if available_only else [])
        raise PodCycleError(f"no GPU type matches: {', '.join(filters)}",
                            f"widen the search ({', '.join(wider)})" if wider else
                            "no GPU type of this backend is offered at all: check the "
                            "account with inv api.doctor")
    total = len(found)
    shown_limit = limit if limit is not None else (0 if json else 20)
    if shown_limit:
        found = found[:shown_limit]
    if len(found) < total:
        say(f"showing the {len(found)} cheapest of {total} offers (a GPU type in one cloud; "
            "--limit 0 shows all)")
    if backend_.sample_prices:
        say("note: the local RunPod's prices and stock are sample data (the 2026-02-26 "
            "catalog snapshot), not RunPod quotes")
    if json:
        emit_json([{**o.as_dict(), "sample_data": backend_.sample_prices} for o in found])
        return
    rows = [(o.id, o.name, o.memory_gb, o.cloud.lower(), o.gpu_count,
             f"{o.price_per_hour:.2f}", o.availability) for o in found]
    table(rows, ["GPU TYPE ID", "NAME", "MEM GB", "CLOUD", "COUNT", "USD/H", "STOCK"])
