"""Serving responses through the result cache, and the cache and metrics endpoints."""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Iterable
from typing import Any

from fastapi import APIRouter, Request
from starlette.responses import Response

from sqlstore import metrics
from sqlstore.api.encoding import JSONBytesResponse
from sqlstore.cache import DISK_TIER, MEMORY_TIER, CachedResponse, ResultCache, cache_key
from sqlstore.identifiers import validate_group, validate_table_name
from sqlstore.store import FeatureStore

logger = logging.getLogger(__name__)

CACHE_HEADER = "X-Cache"
EPOCHS_FOLDER = "epochs"

router = APIRouter(tags=["cache and metrics"])


def record_cache_event(tier: str, event: str) -> None:
    """Count a cache event in the Prometheus metrics shared by all workers."""
    if event in ("hit", "miss"):
        metrics.CACHE_LOOKUPS.labels(tier=tier, result=event).inc()
    elif event == "eviction":
        metrics.CACHE_EVICTIONS.labels(tier=tier).inc()
    elif event == "expiry":
        metrics.CACHE_EXPIRATIONS.labels(tier=tier).inc()


def table_versions(store: FeatureStore, tables: Iterable[tuple[str, str]]) -> dict[str, str]:
    """Return the state of each table that a cached result depends on: its write stamp, which
    every write changes, and its cache epoch, which an explicit invalidation changes."""
    versions = {}
    for group, name in tables:
        stamp = store.registry.write_stamp(group, name)
        versions[f"{group}/{name}"] = f"{stamp}/{_read_epoch(store, group, name)}"
    return versions


def serve_cached(
    request: Request,
    kind: str,
    canonical_request: dict[str, Any],
    versions: dict[str, str],
    compute: Callable[[], CachedResponse],
    on_hit: Callable[[CachedResponse], CachedResponse] | None = None,
) -> Response:
    """Return the cached response for this request and these table versions, or compute,
    cache and return it. The X-Cache header says hit-memory, hit-disk, miss or bypass;
    `on_hit` may adjust a response served from the cache."""
    cache: ResultCache | None = request.app.state.cache
    if cache is None:
        return _response(compute(), "bypass")

    key = cache_key(kind, canonical_request, versions)
    cached, where = cache.get(key)
    if cached is not None:
        return _response(on_hit(cached) if on_hit else cached, where)

    response = compute()
    cache.put(key, response, table=min(versions) if versions else None)
    _publish_memory_usage(cache)
    return _response(response, "miss")


def serve_uncached(compute: Callable[[], CachedResponse]) -> Response:
    """Return a computed response that must not be cached."""
    return _response(compute(), "bypass")


def reclaim_table(request: Request, group: str, name: str) -> None:
    """Delete this worker's disk cache entries of a table that was just written or deleted."""
    cache: ResultCache | None = request.app.state.cache
    if cache is not None:
        cache.reclaim_table(f"{group}/{name}")


def _response(cached: CachedResponse, where: str) -> Response:
    headers = {**cached.headers, CACHE_HEADER: where}
    return Response(cached.body, media_type=cached.media_type, headers=headers)


def _publish_memory_usage(cache: ResultCache) -> None:
    entries, size, ages = cache.memory_usage()
    metrics.CACHE_MEMORY_ENTRIES.set(entries)
    metrics.CACHE_MEMORY_BYTES.set(size)
    metrics.CACHE_MEMORY_AGE_SUM.set(ages)


def _epoch_path(store: FeatureStore, group: str, name: str) -> Any:
    return store.layout.cache_dir / EPOCHS_FOLDER / f"{group}.{name}"


def _read_epoch(store: FeatureStore, group: str, name: str) -> str:
    try:
        return _epoch_path(store, group, name).read_text().strip() or "0"
    except FileNotFoundError:
        return "0"


def bump_epoch(store: FeatureStore, group: str, name: str) -> None:
    """Make every cached result that reads this table unreachable, in every worker."""
    from sqlstore.atomic import write_bytes_atomically

    path = _epoch_path(store, validate_group(group), validate_table_name(name))
    write_bytes_atomically(path, f"{time.time_ns()}-{os.getpid()}".encode())


def cache_statistics(request: Request) -> dict[str, Any]:
    """Return per-tier and total statistics, with counts summed over every worker."""
    cache: ResultCache | None = request.app.state.cache
    lookups = metrics.sample_totals("sqlstore_cache_lookups_total")
    evictions = metrics.sample_totals("sqlstore_cache_evictions_total")
    expirations = metrics.sample_totals("sqlstore_cache_expirations_total")
    local = cache.stats() if cache is not None else {MEMORY_TIER: {}, DISK_TIER: {}}

    tiers = {}
    for tier in (MEMORY_TIER, DISK_TIER):
        hits = lookups.get((("result", "hit"), ("tier", tier)), 0.0)
        misses = lookups.get((("result", "miss"), ("tier", tier)), 0.0)
        tiers[tier] = {
            **local[tier],
            "cache_hits": int(hits),
            "cache_misses": int(misses),
            "total_requests": int(hits + misses),
            "hit_rate": hits / (hits + misses) if hits + misses else 0.0,
            "evictions": int(evictions.get((("tier", tier),), 0.0)),
            "expired_items": int(expirations.get((("tier", tier),), 0.0)),
        }

    memory_entries = _total("sqlstore_cache_memory_entries")
    if memory_entries is not None:
        memory = tiers[MEMORY_TIER]
        memory["total_items"] = int(memory_entries)
        memory["bytes_used"] = int(_total("sqlstore_cache_memory_bytes") or 0)
        age_sum = _total("sqlstore_cache_memory_age_seconds_sum") or 0.0
        memory["average_age_seconds"] = age_sum / memory_entries if memory_entries else 0.0
        memory["cache_usage_ratio"] = memory_entries / max(memory.get("max_size") or 1, 1)

    hits = sum(tier["cache_hits"] for tier in tiers.values())
    memory_requests = tiers[MEMORY_TIER]["total_requests"]
    disk_misses = tiers[DISK_TIER]["cache_misses"]
    total = {
        "cache_hits": hits,
        "cache_misses": disk_misses if disk_misses else tiers[MEMORY_TIER]["cache_misses"],
        "total_requests": memory_requests or tiers[DISK_TIER]["total_requests"],
    }
    total["hit_rate"] = hits / total["total_requests"] if total["total_requests"] else 0.0
    return {"enabled": cache is not None, "tiers": tiers, "total": total}


def _total(metric_name: str) -> float | None:
    samples = metrics.sample_totals(metric_name)
    if not samples:
        return None
    return sum(samples.values())


@router.get("/cache/stats")
def get_cache_stats(request: Request) -> Response:
    """Return cache statistics per tier and in total, summed over all worker processes."""
    return JSONBytesResponse(cache_statistics(request))


@router.delete("/cache")
def clear_cache(request: Request) -> Response:
    """Empty both tiers. Other workers' memory tiers are invalidated through the epochs."""
    store: FeatureStore = request.app.state.store
    cache: ResultCache | None = request.app.state.cache
    if cache is not None:
        cache.clear()
    for entry in store.registry.list():
        bump_epoch(store, entry.group, entry.name)
    logger.info("cache cleared (request %s)", getattr(request.state, "request_id", "-"))
    return JSONBytesResponse({"message": "cache cleared"})


@router.delete("/cache/{group}/{name}")
def invalidate_table(request: Request, group: str, name: str) -> Response:
    """Make every cached result that reads one table unreachable, in every worker."""
    store: FeatureStore = request.app.state.store
    store.registry.write_stamp(validate_group(group), validate_table_name(name))
    bump_epoch(store, group, name)
    reclaim_table(request, group, name)
    return JSONBytesResponse({"message": f"cache entries of {group}/{name} invalidated"})


@router.get("/metrics", response_class=Response)
def get_metrics() -> Response:
    """Return Prometheus metrics of all worker processes in the text exposition format."""
    body, content_type = metrics.exposition()
    return Response(body, media_type=content_type)


@router.get("/performance")
def performance(request: Request) -> Response:
    """Return request counts, mean response time, errors, cache statistics and a storage
    summary, over every worker since the server started."""
    store: FeatureStore = request.app.state.store
    counts = metrics.sample_totals("sqlstore_requests_total")
    durations = metrics.sample_totals("sqlstore_request_duration_seconds_sum")
    total_requests = int(sum(counts.values()))
    errors = int(
        sum(value for labels, value in counts.items() if int(dict(labels)["status"]) >= 400)
    )
    total_seconds = sum(durations.values())

    entries = store.registry.list()
    report = {
        "performance_metrics": {
            "total_requests": total_requests,
            "avg_response_time_ms": total_seconds / total_requests * 1000 if total_requests else 0,
            "error_count": errors,
        },
        "cache_stats": cache_statistics(request),
        "storage_info": {
            "total_feature_groups": len({entry.group for entry in entries}),
            "total_features": len(entries),
            "total_rows": sum(entry.row_count for entry in entries),
            "total_size_bytes": sum(entry.storage.bytes_on_disk for entry in entries),
        },
    }
    return JSONBytesResponse(report)
