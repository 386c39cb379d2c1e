"""Search GPU types and prices (GET /v2/catalog/gpus)."""

from invoke import task

from podcycle.cli import emit_json, guarded, settings, table


@task(help={
    "cloud": "secure|community|all (default: all)",
    "min_memory": "minimum GPU memory in GB (default: 0)",
    "max_price": "maximum price in USD per hour for the whole pod (default: no limit)",
    "gpu_count": "GPUs per pod; prices and ceilings are for that many (default: 1)",
    "available_only": "only GPU types with stock now (default: off)",
    "limit": "show at most this many rows (default: 20; 0 = all)",
    "backend": "auto|runpod|local (default: auto)",
    "api_key": "RunPod API key (default: RUNPOD_API_KEY, then keyring)",
    "json": "print JSON on stdout (default: table)",
})
@guarded
def search(c, cloud="all", min_memory=0, max_price=None, gpu_count=1, available_only=False,
           limit=20, backend=None, api_key=None, json=False):
    """Rank GPU types by price, filtered by cloud, memory, price, count and stock."""
    from podcycle import catalog
    from podcycle.backend import connect
    from podcycle.errors import ConfigError
    from podcycle.provision import catalog_denied
    from podcycle.runpod.errors import Forbidden

    cloud = cloud.lower()
    if cloud not in ("secure", "community", "all"):
        raise ConfigError(f"unknown cloud {cloud!r}", "use secure, community or all")
    client = connect(settings(c, backend=backend, api_key=api_key)).client
    try:
        found = catalog.search(client, cloud=cloud, gpu_count=int(gpu_count),
                               min_memory=int(min_memory),
                               max_price=float(max_price) if max_price else None,
                               available_only=available_only)
    except Forbidden as exc:
        raise catalog_denied(exc) from None
    limit = int(limit)
    if limit > 0:
        found = found[:limit]
    if json:
        emit_json([o.as_dict() for o in found])
        return
    rows = [(o.id, o.name, o.memory_gb, o.cloud.lower(), o.gpu_count,
             f"{o.price_per_hour:.2f}", o.availability) for o in found]
    table(rows, ["GPU TYPE ID", "NAME", "MEM GB", "CLOUD", "COUNT", "USD/H", "STOCK"])
