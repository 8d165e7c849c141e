"""Prometheus metrics, shared by all worker processes of one server.

When PROMETHEUS_MULTIPROC_DIR is set (`sqlstore serve` sets it to a fresh folder under the
store's `cache/` before it starts workers), prometheus-client writes each process's samples to
memory-mapped files there, and every reading (`/metrics`, `/cache/stats`, `/performance`)
aggregates all workers. Without it, or when prometheus-client was imported before it was set (a
single-worker server runs in the process that sets it), the samples are this process's.
"""

from __future__ import annotations

import functools
import os
from collections import defaultdict
from typing import TYPE_CHECKING, Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
    values,
)

if TYPE_CHECKING:
    from sqlstore.registry import RegistryEntry

MULTIPROCESS_ENVIRONMENT_VARIABLE = "PROMETHEUS_MULTIPROC_DIR"
# Distinct label combinations whose metric children `child` keeps.
CHILD_CACHE_SIZE = 4096
LATENCY_BUCKETS = (
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 10
)  # fmt: skip

REQUESTS = Counter(
    "sqlstore_requests", "HTTP requests by route, method and status", ["route", "method", "status"]
)
REQUEST_SECONDS = Histogram(
    "sqlstore_request_duration_seconds",
    "Time from receiving a request to sending its last byte, by route",
    ["route", "method"],
    buckets=LATENCY_BUCKETS,
)
ERRORS = Counter("sqlstore_errors", "Error responses by route and error code", ["route", "code"])
CACHE_LOOKUPS = Counter(
    "sqlstore_cache_lookups", "Cache lookups by tier and result (hit or miss)", ["tier", "result"]
)
CACHE_EVICTIONS = Counter(
    "sqlstore_cache_evictions", "Entries evicted to respect a bound", ["tier"]
)
CACHE_EXPIRATIONS = Counter(
    "sqlstore_cache_expirations", "Entries dropped because their TTL passed", ["tier"]
)
CACHE_MEMORY_ENTRIES = Gauge(
    "sqlstore_cache_memory_entries", "Entries in the memory tier", multiprocess_mode="livesum"
)
CACHE_MEMORY_BYTES = Gauge(
    "sqlstore_cache_memory_bytes", "Bytes held by the memory tier", multiprocess_mode="livesum"
)
CACHE_MEMORY_AGE_SUM = Gauge(
    "sqlstore_cache_memory_age_seconds_sum",
    "Sum of the ages of memory-tier entries when last measured",
    multiprocess_mode="livesum",
)
CACHE_MEMORY_MAX_ENTRIES = Gauge(
    "sqlstore_cache_memory_max_entries",
    "Entry bound of the memory tier",
    multiprocess_mode="livesum",
)
CACHE_MEMORY_MAX_BYTES = Gauge(
    "sqlstore_cache_memory_max_bytes", "Byte bound of the memory tier", multiprocess_mode="livesum"
)
# The table gauges can go down (a delete), so the value set last by any worker is the current one.
TABLES = Gauge("sqlstore_tables", "Registered feature tables", multiprocess_mode="mostrecent")
TABLE_VERSION = Gauge(
    "sqlstore_table_version",
    "Version of each feature table",
    ["table"],
    multiprocess_mode="mostrecent",
)


def mark_process_dead(pid: int) -> None:
    """Drop the live gauges of a worker that exited."""
    if os.environ.get(MULTIPROCESS_ENVIRONMENT_VARIABLE):
        multiprocess.mark_process_dead(pid)


def collecting_registry() -> CollectorRegistry:
    """Return a registry whose collection covers every worker when multiprocess mode is on."""
    if not os.environ.get(MULTIPROCESS_ENVIRONMENT_VARIABLE):
        return REGISTRY
    if values.ValueClass is values.MutexValue:
        # prometheus-client chose in-process values at import, before the variable was set,
        # so this process's samples are in REGISTRY and none are in the folder.
        return REGISTRY
    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry)
    return registry


def exposition() -> tuple[bytes, str]:
    """Return the Prometheus text exposition of all workers and its content type."""
    return generate_latest(collecting_registry()), CONTENT_TYPE_LATEST


def sample_totals(metric_name: str) -> dict[tuple[tuple[str, str], ...], float]:
    """Return the summed samples called `metric_name`, keyed by their sorted label pairs."""
    totals: dict[tuple[tuple[str, str], ...], float] = defaultdict(float)
    for metric in collecting_registry().collect():
        for sample in metric.samples:
            if sample.name == metric_name:
                labels = tuple(sorted(sample.labels.items()))
                totals[labels] += sample.value
    return dict(totals)


def publish_tables(entries: list[RegistryEntry]) -> None:
    """Set the table count and each table's version gauges."""
    TABLES.set(len(entries))
    for entry in entries:
        TABLE_VERSION.labels(table=entry.reference).set(entry.version)


@functools.lru_cache(maxsize=CHILD_CACHE_SIZE)
def child(metric: Any, *label_values: str) -> Any:
    """Return `metric.labels(*label_values)`, kept for the next request with the same labels.

    prometheus-client checks and converts the label values on every `labels` call, which costs
    as much as recording the sample itself on the cache hit path.
    """
    return metric.labels(*label_values)
