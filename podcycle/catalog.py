"""GPU discovery: rank the v2 catalog by price, filter by cloud, memory, price, count and stock."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from podcycle.runpod.models import api_int, api_money

AVAILABLE = ("LOW", "MEDIUM", "HIGH")


@dataclass
class GpuOffer:
    id: str
    name: str
    memory_gb: int
    cloud: str  # SECURE | COMMUNITY
    price_per_gpu: float
    gpu_count: int
    max_count: int
    availability: str

    @property
    def price_per_hour(self) -> float:
        return round(self.price_per_gpu * self.gpu_count, 4)

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "price_per_hour": self.price_per_hour}


def offers(
    gpus: list[dict[str, Any]],
    *,
    cloud: str = "all",
    gpu_count: int = 1,
    min_memory: int = 0,
    max_price: float | None = None,
    available_only: bool = False,
) -> list[GpuOffer]:
    """One offer per (GPU type, cloud) that fits, cheapest first (then most memory)."""
    clouds = ["SECURE", "COMMUNITY"] if cloud == "all" else [cloud.upper()]
    result = []
    for gpu in gpus:
        # RunPod's JSON as it comes: a record of the wrong shape (no id, a memory that is
        # not a number, a null price table) is no offer, never a traceback.
        memory = api_int(gpu.get("memory"))
        if not isinstance(gpu.get("id"), str) or memory < min_memory or memory <= 0:
            continue
        prices = gpu.get("price") if isinstance(gpu.get("price"), dict) else {}
        counts = gpu.get("maxCount") if isinstance(gpu.get("maxCount"), dict) else {}
        for tier in clouds:
            key = tier.lower()
            if not gpu.get(key):
                continue
            price, max_count = api_money(prices.get(key)), api_int(counts.get(key))
            if price <= 0 or gpu_count > max_count:
                continue
            offer = GpuOffer(gpu["id"], str(gpu.get("name") or gpu["id"]), memory, tier, price,
                             gpu_count, max_count, str(gpu.get("availability") or "UNKNOWN"))
            if max_price is not None and offer.price_per_hour > max_price:
                continue
            if available_only and offer.availability not in AVAILABLE:
                continue
            result.append(offer)
    result.sort(key=lambda o: (o.price_per_hour, -o.memory_gb, o.id, o.cloud))
    return result


def search(client: Any, *, cloud: str = "all", gpu_count: int = 1, min_memory: int = 0,
           max_price: float | None = None, available_only: bool = False) -> list[GpuOffer]:
    """Offers from the live catalog, cheapest first. Stock is per cloud in v2
    (include=AVAILABILITY scoped by `cloud`), so each cloud is asked on its own and every
    offer carries its own cloud's level. Raises the client's Forbidden on a denied catalog."""
    tiers = ["secure", "community"] if cloud == "all" else [cloud]
    found: list[GpuOffer] = []
    for tier in tiers:
        found += offers(client.list_gpu_types(cloud=tier, count=gpu_count), cloud=tier,
                        gpu_count=gpu_count, min_memory=min_memory, max_price=max_price,
                        available_only=available_only)
    found.sort(key=lambda o: (o.price_per_hour, -o.memory_gb, o.id, o.cloud))
    return found


def find_gpu(gpus: list[dict[str, Any]], wanted: str) -> dict[str, Any] | None:
    """Match a GPU by id or display name, case-insensitively."""
    lowered = wanted.strip().lower()
    for key in ("id", "name"):  # a record without a text id or name is never a match
        for gpu in gpus:
            if isinstance(gpu.get(key), str) and gpu[key].lower() == lowered:
                return gpu
    return None


def check_data_center(client: Any, data_center: str, origin: str = "--data-center") -> str:
    """`data_center` when the catalog knows it, else a ConfigError naming `origin` with the
    closest ids: a typo must not become a cluster or volume placed somewhere else (or a
    create RunPod refuses after the rest was checked)."""
    import difflib

    from podcycle.errors import ConfigError
    from podcycle.runpod.errors import Forbidden

    try:
        listed = client.list_data_centers()
    except Forbidden:  # a key without the catalog scope: go on as choose_gpu does
        from podcycle.provision import warn_json

        warn_json(event="data_center_validation_skipped", data_center=data_center,
                  reason="catalog denied for this API key (403 on GET "
                         "/v2/catalog/datacenters)",
                  detail="using the data centre as given, without validating it")
        return data_center
    known = sorted(str(dc.get("id")) for dc in listed if dc.get("id"))
    if data_center in known:
        return data_center
    close = difflib.get_close_matches(data_center.upper(), known, n=3, cutoff=0.5)
    raise ConfigError(f"{origin} {data_center!r} is not a RunPod data centre",
                      (f"did you mean {', '.join(close)}? " if close else "")
                      + f"the data centres: {', '.join(known[:20]) or 'none listed'}"
                      + (f" (and {len(known) - 20} more)" if len(known) > 20 else ""))

