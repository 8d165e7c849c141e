"""Serving responses through the result cache, and the cache and metrics endpoints."""

from __future__ import annotations

import functools
import logging
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, BinaryIO

from fastapi import APIRouter, FastAPI, Request
from starlette.concurrency import run_in_threadpool
from starlette.responses import Response

from sqlstore import metrics
from sqlstore.api.encoding import JSONBytesResponse
from sqlstore.api.models import ERROR_RESPONSES
from sqlstore.cache import (
    DISK_TIER,
    MEMORY_TIER,
    CachedResponse,
    DiskTierBusy,
    ResultCache,
    cache_key,
    usage_ratio,
)
from sqlstore.filestamps import ReplacedFileReader
from sqlstore.identifiers import validate_group
from sqlstore.layout import StoreLayout, validate_table_name
from sqlstore.store import FeatureStore

logger = logging.getLogger(__name__)

CACHE_HEADER = "X-Cache"
EPOCHS_FOLDER = "epochs"


@asynccontextmanager
async def cache_lifespan(app: FastAPI) -> AsyncIterator[None]:
    """Publish this worker's memory tier gauges at startup, so that the statistics count the
    bounds of every worker, including workers that have not cached anything yet."""
    if app.state.cache is not None:
        _publish_memory_usage(app.state.cache)
    yield


router = APIRouter(tags=["cache and metrics"], responses=ERROR_RESPONSES, lifespan=cache_lifespan)


def record_cache_event(tier: str, event: str) -> None:
    """Count a cache event in the Prometheus metrics shared by all workers."""
    if event in ("hit", "miss"):
        metrics.child(metrics.CACHE_LOOKUPS, tier, event).inc()
    elif event == "eviction":
        metrics.child(metrics.CACHE_EVICTIONS, tier).inc()
    elif event == "expiry":
        metrics.child(metrics.CACHE_EXPIRATIONS, tier).inc()


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
        return cached_response(compute(), "bypass")

    key = cache_key(kind, canonical_request, versions)
    cached = cache.get_memory(key)
    if cached is not None:
        return cached_response(on_hit(cached) if on_hit else cached, "hit-memory")
    return _serve_past_memory(cache, key, versions, compute, on_hit)


async def serve_cached_async(
    request: Request,
    kind: str,
    canonical_request: dict[str, Any],
    versions: dict[str, str],
    compute: Callable[[], CachedResponse],
) -> Response:
    """Like `serve_cached`, for `async` routes: a memory hit is served on the event loop,
    and only the disk tier and `compute` run in the thread pool. This keeps the common case
    free of the thread hop that a plain `def` route pays on every request."""
    cache: ResultCache | None = request.app.state.cache
    if cache is None:
        return await run_in_threadpool(serve_uncached, compute)

    key = cache_key(kind, canonical_request, versions)
    cached = cache.get_memory(key)
    if cached is not None:
        return cached_response(cached, "hit-memory")

    # A small disk entry is read here: the read took tens of microseconds, where the hop to
    # the thread pool and back waited milliseconds for the GIL while misses were computed.
    # The read also records the access time for LRU eviction, a short SQLite write, so while
    # another process holds the write lock it gives up after a few milliseconds and the thread
    # pool reads the entry instead.
    if cache.disk_entry_is_inline(key):
        try:
            cached = cache.get_disk(key, brief=True)
        except DiskTierBusy:
            logger.debug("cache entry %s is locked; reading it in the thread pool", key[:12])
            return await run_in_threadpool(_serve_past_memory, cache, key, versions, compute, None)
        if cached is not None:
            _publish_memory_usage(cache)
            return cached_response(cached, "hit-disk")
        # The entry was unreadable, or gone since the first look: get_disk counted the miss.
        return await run_in_threadpool(_compute_and_store, cache, key, versions, compute)
    return await run_in_threadpool(_serve_past_memory, cache, key, versions, compute, None)


async def serve_computed(
    request: Request,
    key: str | None,
    compute: Callable[[], Awaitable[CachedResponse]],
    versions: dict[str, str] | None = None,
    on_hit: Callable[[CachedResponse], CachedResponse] | None = None,
) -> Response:
    """Like `serve_cached`, for a response that `compute` produces on the event loop. With
    `key` None the response is not cached. Only the disk tier's reads and writes run in the
    thread pool."""
    cache: ResultCache | None = request.app.state.cache
    if cache is None or key is None:
        return cached_response(await compute(), "bypass")

    cached = cache.get_memory(key)
    if cached is not None:
        return cached_response(on_hit(cached) if on_hit else cached, "hit-memory")
    if cache.has_disk_tier:
        cached = await run_in_threadpool(cache.get_disk, key)
        if cached is not None:
            # The entry was copied into the memory tier.
            _publish_memory_usage(cache)
            return cached_response(on_hit(cached) if on_hit else cached, "hit-disk")

    response = await compute()
    table = min(versions) if versions else None
    if cache.has_disk_tier:
        await run_in_threadpool(cache.put, key, response, table)
    else:
        cache.put(key, response, table)
    _publish_memory_usage(cache)
    return cached_response(response, "miss")


def _serve_past_memory(
    cache: ResultCache,
    key: str,
    versions: dict[str, str],
    compute: Callable[[], CachedResponse],
    on_hit: Callable[[CachedResponse], CachedResponse] | None,
) -> Response:
    cached = cache.get_disk(key)
    if cached is not None:
        # The entry was copied into the memory tier.
        _publish_memory_usage(cache)
        return cached_response(on_hit(cached) if on_hit else cached, "hit-disk")

    return _compute_and_store(cache, key, versions, compute)


def _compute_and_store(
    cache: ResultCache,
    key: str,
    versions: dict[str, str],
    compute: Callable[[], CachedResponse],
) -> Response:
    response = compute()
    cache.put(key, response, table=min(versions) if versions else None)
    _publish_memory_usage(cache)
    return cached_response(response, "miss")


def serve_uncached(compute: Callable[[], CachedResponse]) -> Response:
    """Return a computed response that must not be cached."""
    return cached_response(compute(), "bypass")


def reclaim_table(request: Request, group: str, name: str) -> None:
    """Delete this worker's disk cache entries of a table that was just written or deleted."""
    cache: ResultCache | None = request.app.state.cache
    if cache is not None:
        cache.reclaim_table(f"{group}/{name}")


def cached_response(cached: CachedResponse, where: str) -> Response:
    """Return `cached` as a response whose X-Cache header says `where`."""
    headers = {**cached.headers, CACHE_HEADER: where}
    return Response(cached.body, media_type=cached.media_type, headers=headers)


def _publish_memory_usage(cache: ResultCache) -> None:
    entries, size, ages = cache.memory_usage()
    metrics.CACHE_MEMORY_ENTRIES.set(entries)
    metrics.CACHE_MEMORY_BYTES.set(size)
    metrics.CACHE_MEMORY_AGE_SUM.set(ages)
    enabled = cache.settings.memory_enabled
    metrics.CACHE_MEMORY_MAX_ENTRIES.set(cache.settings.memory_entries if enabled else 0)
    metrics.CACHE_MEMORY_MAX_BYTES.set(cache.settings.memory_bytes if enabled else 0)


def _epoch_path(store: FeatureStore, group: str, name: str) -> Path:
    return _epoch_file(store.root, group, name)


@functools.lru_cache(maxsize=4096)
def _epoch_file(root: Path, group: str, name: str) -> Path:
    # Callers pass names that the registry lookup has validated.
    return StoreLayout(root).cache_dir / EPOCHS_FOLDER / f"{group}.{name}"


def _parse_epoch(file: BinaryIO) -> str:
    return file.read().decode(errors="replace").strip() or "0"


# Epoch files change only through bump_epoch, which replaces them by rename.
_epochs = ReplacedFileReader(_parse_epoch)


def _read_epoch(store: FeatureStore, group: str, name: str) -> str:
    try:
        return _epochs.read(_epoch_path(store, group, name))
    except FileNotFoundError:
        return "0"


def bump_epoch(store: FeatureStore, group: str, name: str) -> None:
    """Make every cached result that reads this table unreachable, in every worker."""
    from sqlstore.atomic import write_bytes_atomically

    path = _epoch_path(store, validate_group(group), validate_table_name(name))
    write_bytes_atomically(path, f"{time.time_ns()}-{os.getpid()}".encode())


def cache_statistics(request: Request) -> dict[str, Any]:
    """Return per-tier and total statistics. Counts, and the memory tier's entries, bytes and
    bounds, are summed over every worker process; the disk tier is shared by all of them."""
    cache: ResultCache | None = request.app.state.cache
    if cache is not None:
        _publish_memory_usage(cache)
    lookups = metrics.sample_totals("sqlstore_cache_lookups_total")
    evictions = metrics.sample_totals("sqlstore_cache_evictions_total")
    expirations = metrics.sample_totals("sqlstore_cache_expirations_total")
    if cache is not None:
        local = cache.stats()
    else:
        local = {MEMORY_TIER: {"enabled": False}, DISK_TIER: {"enabled": False}}

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
        memory["max_size"] = int(_total("sqlstore_cache_memory_max_entries") or 0)
        memory["max_bytes"] = int(_total("sqlstore_cache_memory_max_bytes") or 0)
        age_sum = _total("sqlstore_cache_memory_age_seconds_sum") or 0.0
        memory["average_age_seconds"] = age_sum / memory_entries if memory_entries else 0.0
        memory["cache_usage_ratio"] = usage_ratio(
            memory["total_items"], memory["max_size"], memory["bytes_used"], memory["max_bytes"]
        )
    return {"enabled": cache is not None, "tiers": tiers, "total": _total_statistics(tiers)}


def _total_statistics(tiers: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Combine the tiers. A lookup tries the memory tier first when it is on and reaches the
    disk tier only on a memory miss, so the lookups are the first tier's and the misses the
    last tier's. Sizes and counts add up; `max_size` is the memory tier's, because the disk
    tier has no entry bound, and `cache_usage_ratio` is the fuller tier's."""
    memory, disk = tiers[MEMORY_TIER], tiers[DISK_TIER]
    first = memory if memory.get("enabled") else disk
    last = disk if disk.get("enabled") else memory
    both = (memory, disk)
    hits = memory["cache_hits"] + disk["cache_hits"]
    requests = first["total_requests"]
    items = sum(tier.get("total_items", 0) for tier in both)
    age_sum = sum(
        tier.get("average_age_seconds", 0.0) * tier.get("total_items", 0) for tier in both
    )
    return {
        "total_items": items,
        "max_size": sum(tier.get("max_size") or 0 for tier in both),
        "bytes_used": sum(tier.get("bytes_used", 0) for tier in both),
        "max_bytes": sum(tier.get("max_bytes", 0) for tier in both),
        "expired_items": sum(tier["expired_items"] for tier in both),
        "evictions": sum(tier["evictions"] for tier in both),
        "average_age_seconds": age_sum / items if items else 0.0,
        "cache_usage_ratio": max(tier.get("cache_usage_ratio", 0.0) for tier in both),
        "cache_hits": hits,
        "cache_misses": last["cache_misses"],
        "total_requests": requests,
        "hit_rate": hits / requests if requests else 0.0,
    }


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
        _publish_memory_usage(cache)
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
def get_metrics(request: Request) -> Response:
    """Return Prometheus metrics of all worker processes in the text exposition format."""
    # Another worker may have created or deleted tables since this one last counted them.
    metrics.publish_tables(request.app.state.store.list_tables())
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
