"""Benchmark of the result cache: Zipf-skewed reads, memory hit time and cached throughput.

One run builds the demo store in a temporary folder, starts `python -m sqlstore serve` with two
workers on a free 127.0.0.1 port and measures:

1. Zipf-skewed page reads from an empty cache: 20,000 seeded requests over 1,000 distinct pages
   `GET /features/content/movie_ratings?movie_id=<id>&limit=20`, sent by an asyncio client over
   4 connections (`--zipf-connections`). It reports the hit rate from `GET /cache/stats`,
   client latencies by X-Cache header value, and throughput.
2. Memory hits only: sequential requests over one connection for the hottest pages, which are
   already in that worker's memory tier. The server time comes from the
   `sqlstore_request_duration_seconds` histogram of `/metrics`: the mean from its sum and count,
   and quantiles interpolated within its buckets.
3. Throughput of one cached page of about 1 KB against the same bytes returned from a dict by
   `bench/bare_app.py` (uvicorn, same worker count, no access log), with wrk when it is
   installed and with the asyncio client otherwise. sqlstore is measured twice: as configured by
   default, and with `--no-access-log` like the bare app. A second bare app runs with uvicorn's
   own access log on, to compare with sqlstore's default. Rounds alternate between the
   endpoints.
4. The steps of the cache hit path, timed in process: table versions, cache key, memory lookup.

It prints Markdown tables and writes the results with machine details as JSON.

    .venv/bin/python bench/bench_cache.py [--requests N] [--duration S] [--output FILE]
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import logging
import math
import os
import random
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import timeit
from collections import Counter
from collections.abc import Callable, Coroutine, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit

import bare_app
import httpx
import numpy as np
import pyarrow.parquet as pq
import uvloop
from bench_serving import (
    HOST,
    HTTP_TIMEOUT_SECONDS,
    SEED,
    SERVER_START_TIMEOUT_SECONDS,
    ServerProcess,
    _stop_server,
    _wait_until_healthy,
    free_port,
    machine_info,
    measure_demo_build,
    running_server,
    summarize,
    write_results,
)
from prometheus_client.parser import text_string_to_metric_families

from sqlstore.api.caching import CACHE_HEADER, record_cache_event, table_versions
from sqlstore.api.pagecache import PAGE_KIND, page_request
from sqlstore.cache import CachedResponse, CacheSettings, ResultCache, cache_key
from sqlstore.store import FeatureStore

logger = logging.getLogger("bench_cache")

T = TypeVar("T")

BENCH_DIR = Path(__file__).resolve().parent
DEFAULT_OUTPUT = BENCH_DIR / "results" / "cache.json"
GROUP = "content"
NAME = "movie_ratings"
PAGE_ROUTE = "/features/{group}/{name}"
DURATION_METRIC = "sqlstore_request_duration_seconds"
ZIPF_PAGE_LIMIT = 20
# Movie 1 has more than 5 rating rows, so its first 5 rows encode to about 1.2 KB of JSON.
THROUGHPUT_MOVIE_ID = 1
THROUGHPUT_PAGE_LIMIT = 5
HOT_PAGES = 10
HIT_WARMUP_PASSES = 3
MEMORY_HIT = "hit-memory"
HITS = ("hit-memory", "hit-disk")
WRK_THREADS = 2
WRK_TIMEOUT_MARGIN_SECONDS = 30
# Upper bound on the requests of one time-limited run of the Python load generator.
MAX_GENERATED_REQUESTS = 10_000_000
# A worker process counts as started once it used at most IDLE_CPU_SECONDS of CPU in
# IDLE_CHECK_SECONDS.
IDLE_CHECK_SECONDS = 1.0
IDLE_CPU_SECONDS = 0.05
CONNECT_INTERVAL_SECONDS = 0.05
# Connections opened per connection kept, at most, while spreading them over the workers.
BALANCE_ATTEMPTS = 20
STEP_CALLS = 2_000
STEP_REPEATS = 5
HALF_MILLISECOND = 0.0005
ONE_MILLISECOND = 0.001
EXTRA_PACKAGES = (
    "starlette",
    "pydantic",
    "orjson",
    "cachetools",
    "diskcache",
    "prometheus-client",
    "uvloop",
    "httptools",
)
TARGETS = {
    "hit_rate": "hit rate from /cache/stats >= 0.90",
    "hit_p99_ms": "client p99 of cache hits <= 5 ms (Zipf run)",
    "memory_hit_server_p50_ms": "server p50 of a memory hit < 0.5 ms",
    "throughput_ratio": (
        "cached page throughput, access log off like the bare app's, >= 70 % of the bare async "
        "endpoint"
    ),
    "throughput_ratio_access_log": ("the same with sqlstore's access log on (the default) >= 70 %"),
    "throughput_ratio_both_logging": (
        "the same with sqlstore's access log and uvicorn's access log on the bare app >= 70 %"
    ),
}


@dataclass(frozen=True)
class Sample:
    """One response as the client saw it."""

    latency_ms: float
    x_cache: str
    status: int


@dataclass(frozen=True)
class Target:
    """One endpoint of the throughput comparison: its server and request path."""

    server: ServerProcess
    path: str


# Runs a load against (base URL, path, connections, seconds) and returns its summary.
LoadRunner = Callable[[str, str, int, int], dict[str, Any]]


@dataclass(frozen=True)
class Histogram:
    """A request-duration histogram: cumulative counts per upper bound in seconds."""

    buckets: tuple[tuple[float, float], ...]
    sum_seconds: float
    count: float

    def minus(self, earlier: Histogram) -> Histogram:
        """Return the observations made after `earlier` was read."""
        earlier_counts = dict(earlier.buckets)
        buckets = tuple(
            (bound, count - earlier_counts.get(bound, 0.0)) for bound, count in self.buckets
        )
        return Histogram(
            buckets, self.sum_seconds - earlier.sum_seconds, self.count - earlier.count
        )


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--root",
        type=Path,
        help="store root to build the demo store in and serve; default: a temporary folder",
    )
    parser.add_argument("--workers", type=int, default=2, help="worker processes (default 2)")

    parser.add_argument(
        "--requests", type=int, default=20_000, help="Zipf run requests (default 20000); min 100"
    )
    parser.add_argument(
        "--pages",
        type=int,
        default=1_000,
        help=f"distinct pages of the Zipf run (default 1000); min {HOT_PAGES}",
    )
    parser.add_argument(
        "--zipf-exponent", type=float, default=1.1, help="Zipf exponent (default 1.1); positive"
    )
    parser.add_argument(
        "--connections",
        type=int,
        default=16,
        help="client connections of the throughput runs (default 16)",
    )
    parser.add_argument(
        "--zipf-connections",
        type=int,
        default=4,
        help=(
            "client connections of the Zipf run (default 4, which already reaches the peak "
            "request rate of two workers on 2 CPUs; more connections only wait in line)"
        ),
    )
    parser.add_argument(
        "--hit-requests",
        type=int,
        default=2_000,
        help="sequential memory-hit requests (default 2000); min 100",
    )

    parser.add_argument(
        "--duration", type=int, default=10, help="seconds of each throughput run (default 10)"
    )
    parser.add_argument(
        "--rounds",
        type=int,
        default=3,
        help="throughput rounds, each running every endpoint once (default 3)",
    )
    parser.add_argument(
        "--load-generator",
        choices=("auto", "wrk", "python"),
        default="auto",
        help="throughput load generator: wrk, the asyncio client, or auto (wrk when installed)",
    )

    parser.add_argument(
        "--loop-seconds",
        type=float,
        default=300.0,
        help="time limit of each client loop in seconds (default 300)",
    )
    parser.add_argument(
        "--output",
        type=Path,
        default=DEFAULT_OUTPUT,
        help=f"JSON results file (default {DEFAULT_OUTPUT})",
    )

    args = parser.parse_args(argv)
    _check_args(parser, args)
    return args


def _check_args(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    minimums = {
        "requests": 100,
        "pages": HOT_PAGES,
        "connections": 1,
        "zipf_connections": 1,
        "hit_requests": 100,
        "duration": 1,
        "rounds": 1,
        "workers": 1,
    }
    for name, minimum in minimums.items():
        value = getattr(args, name)
        if value < minimum:
            option = "--" + name.replace("_", "-")
            parser.error(f"invalid {option} {value}: use {minimum} or more")
    if not args.zipf_exponent > 0:
        parser.error(f"invalid --zipf-exponent {args.zipf_exponent}: use a positive number")
    if not args.loop_seconds > 0:
        parser.error(f"invalid --loop-seconds {args.loop_seconds}: use a positive number")
    if args.load_generator == "wrk" and shutil.which("wrk") is None:
        parser.error("--load-generator wrk: wrk is not installed; install it or use python")


def choose_load_generator(requested: str) -> str:
    if requested != "auto":
        return requested
    return "wrk" if shutil.which("wrk") else "python"


# Machine details


def machine_details(load_generator: str) -> dict[str, Any]:
    """Return bench_serving's machine details plus the cache's packages and the wrk version."""
    machine = machine_info()
    for name in EXTRA_PACKAGES:
        machine["versions"][name] = metadata.version(name)
    if load_generator == "wrk":
        machine["versions"]["wrk"] = _wrk_version()
    return machine


def _wrk_version() -> str:
    # wrk has no version option: `wrk --version` prints the version line and the usage, and
    # exits with status 1.
    completed = subprocess.run(["wrk", "--version"], capture_output=True, text=True, check=False)
    lines = (completed.stdout + completed.stderr).splitlines()
    return lines[0].strip() if lines else "unknown"


def load_average() -> list[float]:
    """Return the 1-, 5- and 15-minute load averages."""
    return [round(value, 2) for value in os.getloadavg()]


# Server worker processes


def child_cpu_seconds(pid: int) -> dict[int, float]:
    """Return the user plus system CPU seconds of each child process of `pid`, read from
    /proc (Linux). Returns {} where /proc does not list the children."""
    try:
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    except OSError:
        return {}
    ticks_per_second = os.sysconf("SC_CLK_TCK")
    seconds = {}
    for child in children:
        try:
            stat = Path(f"/proc/{child}/stat").read_text()
        except OSError:
            continue
        # After the ")" that ends the command name, fields 14 and 15 of proc(5), utime and
        # stime, are at indexes 11 and 12.
        fields = stat.rsplit(")", 1)[1].split()
        seconds[int(child)] = (int(fields[11]) + int(fields[12])) / ticks_per_second
    return seconds


def cpu_seconds_delta(before: dict[int, float], after: dict[int, float]) -> dict[str, float]:
    """Return the CPU seconds each child used between two readings, leaving out idle ones
    such as multiprocessing's resource tracker."""
    delta = {str(pid): round(after[pid] - before.get(pid, 0.0), 2) for pid in after}
    return {pid: seconds for pid, seconds in delta.items() if seconds > 0}


def wait_until_workers_idle(server: ServerProcess, workers: int) -> None:
    """Wait until `workers` child processes exist and none of them used CPU for a second.

    /health returns 200 as soon as one worker serves, while the others may still be importing,
    and a connection that such a worker would have accepted goes to the ready one instead.
    """
    deadline = time.monotonic() + SERVER_START_TIMEOUT_SECONDS
    previous = child_cpu_seconds(server.process.pid)
    while time.monotonic() < deadline:
        time.sleep(IDLE_CHECK_SECONDS)
        current = child_cpu_seconds(server.process.pid)
        busy = [pid for pid in current if current[pid] - previous.get(pid, 0.0) > IDLE_CPU_SECONDS]
        if len(current) >= workers and not busy:
            return
        previous = current
    logger.warning(
        "workers of server pid %d were still busy after %d s; measuring anyway",
        server.process.pid,
        SERVER_START_TIMEOUT_SECONDS,
    )


# Workload


def page_path(movie_id: int, limit: int) -> str:
    return f"/features/{GROUP}/{NAME}?movie_id={movie_id}&limit={limit}"


def choose_movie_ids(root: Path, count: int) -> list[int]:
    """Return `count` distinct movie ids of the demo store in a seeded random order: rank 0
    first."""
    store = FeatureStore(root)
    try:
        entry = store.table(GROUP, NAME)
        column = pq.read_table(store.root / entry.path, columns=["movie_id"]).column("movie_id")
    finally:
        store.catalog.close()

    movie_ids = sorted(set(column.to_pylist()))
    if len(movie_ids) < count:
        raise ValueError(f"invalid --pages {count}: the demo store has {len(movie_ids)} movies")
    return random.Random(SEED).sample(movie_ids, count)


def zipf_ranks(page_count: int, requests: int, exponent: float) -> list[int]:
    """Return `requests` seeded draws of ranks 0 to page_count - 1, where rank k has the
    probability (k + 1) ** -exponent divided by the sum over all ranks."""
    weights = np.arange(1, page_count + 1, dtype=float) ** -exponent
    generator = np.random.default_rng(SEED)
    return generator.choice(page_count, size=requests, p=weights / weights.sum()).tolist()


# Load client
#
# NOTE: httpx's AsyncClient spends more CPU per request than the server under test and gets
# slower as connections are added (docs/benchmarks.md has the figures), so the load comes
# from this minimal HTTP/1.1 client. It reads only responses with a Content-Length, which every
# response of sqlstore and of the bare app has.


class HttpConnection:
    """One keep-alive HTTP/1.1 connection that sends GET requests and reads whole responses."""

    def __init__(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, host: str
    ) -> None:
        self._reader = reader
        self._writer = writer
        self._host = host

    @classmethod
    async def open(cls, base_url: str) -> HttpConnection:
        url = urlsplit(base_url)
        reader, writer = await asyncio.open_connection(url.hostname, url.port)
        return cls(reader, writer, url.netloc)

    async def get(self, path: str) -> Sample:
        """Send one GET request and read its response; return latency, X-Cache and status."""
        started = time.perf_counter()
        self._writer.write(f"GET {path} HTTP/1.1\r\nHost: {self._host}\r\n\r\n".encode())
        head = await asyncio.wait_for(self._reader.readuntil(b"\r\n\r\n"), HTTP_TIMEOUT_SECONDS)
        status, headers = parse_response_head(head)
        if "content-length" not in headers:
            raise RuntimeError(f"response to {path} has no Content-Length; cannot read its body")
        await asyncio.wait_for(
            self._reader.readexactly(int(headers["content-length"])), HTTP_TIMEOUT_SECONDS
        )
        latency_ms = (time.perf_counter() - started) * 1000
        return Sample(latency_ms, headers.get(CACHE_HEADER.lower(), "none"), status)

    async def get_json(self, path: str) -> Any:
        """Send one GET request and return its JSON body."""
        self._writer.write(f"GET {path} HTTP/1.1\r\nHost: {self._host}\r\n\r\n".encode())
        head = await asyncio.wait_for(self._reader.readuntil(b"\r\n\r\n"), HTTP_TIMEOUT_SECONDS)
        _, headers = parse_response_head(head)
        body = await asyncio.wait_for(
            self._reader.readexactly(int(headers["content-length"])), HTTP_TIMEOUT_SECONDS
        )
        return json.loads(body)

    async def close(self) -> None:
        self._writer.close()
        await self._writer.wait_closed()


def parse_response_head(head: bytes) -> tuple[int, dict[str, str]]:
    """Return the status code and the headers, with lowercase names, of a response head."""
    status_line, *header_lines = head.decode("latin-1").split("\r\n")
    status = int(status_line.split(" ", 2)[1])
    headers = {}
    for line in header_lines:
        name, separator, value = line.partition(":")
        if separator:
            headers[name.strip().lower()] = value.strip()
    return status, headers


async def send_on(
    connection: HttpConnection, paths: Iterable[str], deadline: float, samples: list[Sample]
) -> None:
    """Send `paths` one after another over `connection` until `deadline` (perf_counter)."""
    for path in paths:
        if time.perf_counter() > deadline:
            return
        samples.append(await connection.get(path))


async def open_connections(base_url: str, count: int) -> list[HttpConnection]:
    """Open `count` connections one at a time, CONNECT_INTERVAL_SECONDS apart.

    uvicorn's workers accept from one shared socket, and a worker that wakes up accepts every
    connection waiting at that moment, so a burst of connections can all go to one worker.
    """
    connections = []
    try:
        for _ in range(count):
            connections.append(await HttpConnection.open(base_url))
            await asyncio.sleep(CONNECT_INTERVAL_SECONDS)
    except BaseException:
        await close_connections(connections)
        raise
    return connections


async def open_balanced_connections(
    base_url: str, count: int, workers: int
) -> list[HttpConnection]:
    """Open `count` connections, the same number to each of `workers` server processes.

    Which worker accepts a connection is up to the kernel, and a split of three connections
    to one worker and one to the other made the latency of the Zipf run depend on chance. Each
    new connection requests `GET /online`, whose body names the worker process that serves it.
    The connection is closed and opened again while that worker already has its share.
    """
    share = math.ceil(count / workers)
    by_worker: dict[int, int] = {}
    connections: list[HttpConnection] = []
    try:
        for _ in range(count * BALANCE_ATTEMPTS):
            if len(connections) == count:
                return connections
            connection = await HttpConnection.open(base_url)
            worker = (await connection.get_json("/online"))["worker_pid"]
            if by_worker.get(worker, 0) < share:
                by_worker[worker] = by_worker.get(worker, 0) + 1
                connections.append(connection)
            else:
                await connection.close()
            await asyncio.sleep(CONNECT_INTERVAL_SECONDS)
    except BaseException:
        await close_connections(connections)
        raise
    logger.warning("could not spread %d connections evenly: %s", count, by_worker)
    return connections


async def close_connections(connections: list[HttpConnection]) -> None:
    for connection in connections:
        await connection.close()


async def _send_all(
    base_url: str,
    paths: Iterator[str],
    connections: int,
    max_seconds: float,
    workers: int | None = None,
) -> tuple[list[Sample], float]:
    if workers:
        opened = await open_balanced_connections(base_url, connections, workers)
    else:
        opened = await open_connections(base_url, connections)
    deadline = time.perf_counter() + max_seconds
    started = time.perf_counter()
    samples: list[Sample] = []
    try:
        # The tasks share one iterator, so each path is sent once, by whichever task is free.
        await asyncio.gather(*(send_on(each, paths, deadline, samples) for each in opened))
        wall_seconds = time.perf_counter() - started
    finally:
        await close_connections(opened)
    return samples, wall_seconds


def run_on_uvloop(coroutine: Coroutine[Any, Any, T]) -> T:
    """Run `coroutine` on a new uvloop event loop (uvicorn[standard] installs uvloop). With it,
    the client sent a quarter to a third more requests/s than with asyncio's loop at 16
    connections on the benchmark machine."""
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(coroutine)


def send_concurrently(
    base_url: str,
    paths: Iterable[str],
    connections: int,
    max_seconds: float,
    workers: int | None = None,
) -> tuple[list[Sample], float]:
    """Send `paths` from `connections` asyncio tasks, each with its own keep-alive connection,
    spread evenly over `workers` sqlstore worker processes when given.

    Returns the samples and the wall time in seconds, which leaves out opening the
    connections. Sending stops at `max_seconds`.
    """
    return run_on_uvloop(_send_all(base_url, iter(paths), connections, max_seconds, workers))


def warn_if_stopped_early(label: str, sent: int, planned: int, max_seconds: float) -> None:
    """Raise when no request completed in time, and warn when only some did."""
    if sent == 0:
        raise RuntimeError(
            f"{label}: no response within {max_seconds:.0f} s; raise --loop-seconds or --duration"
        )
    if sent < planned:
        logger.warning(
            "%s: stopped after %d of %d requests at the %.0f s limit",
            label,
            sent,
            planned,
            max_seconds,
        )


def warn_if_uneven(label: str, worker_cpu: dict[str, float], workers: int) -> None:
    """Warn when a worker used under half its even share of the CPU time, because then the
    connections were not spread over the workers."""
    total = sum(worker_cpu.values())
    if len(worker_cpu) < workers or min(worker_cpu.values()) < total / workers / 2:
        logger.warning("%s: uneven CPU seconds per worker %s", label, worker_cpu)


def count_errors(label: str, samples: list[Sample]) -> int:
    """Return how many responses were not 200, and log their status codes."""
    errors = Counter(sample.status for sample in samples if sample.status != 200)
    if errors:
        logger.error("%s: responses other than 200, by status: %s", label, dict(errors))
    return sum(errors.values())


# Server readings


def read_cache_totals(client: httpx.Client) -> dict[str, int]:
    """Return the hit and lookup counts of `GET /cache/stats`, summed over all workers."""
    response = client.get("/cache/stats")
    response.raise_for_status()
    stats = response.json()
    return {
        "hits": stats["total"]["cache_hits"],
        "requests": stats["total"]["total_requests"],
        "memory_hits": stats["tiers"]["memory"]["cache_hits"],
        "disk_hits": stats["tiers"]["disk"]["cache_hits"],
        "disk_misses": stats["tiers"]["disk"]["cache_misses"],
    }


def cache_totals_delta(before: dict[str, int], after: dict[str, int]) -> dict[str, Any]:
    delta: dict[str, Any] = {name: after[name] - before[name] for name in after}
    delta["hit_rate"] = round(delta["hits"] / delta["requests"], 4) if delta["requests"] else None
    return delta


def read_duration_histogram(client: httpx.Client) -> Histogram:
    """Return the request-duration histogram of GET on the page route, from `/metrics`."""
    response = client.get("/metrics")
    response.raise_for_status()
    buckets: dict[float, float] = {}
    sum_seconds = count = 0.0
    for family in text_string_to_metric_families(response.text):
        if family.name != DURATION_METRIC:
            continue
        for sample in family.samples:
            if sample.labels.get("route") != PAGE_ROUTE or sample.labels.get("method") != "GET":
                continue
            if sample.name.endswith("_bucket"):
                buckets[float(sample.labels["le"])] = sample.value
            elif sample.name.endswith("_sum"):
                sum_seconds = sample.value
            elif sample.name.endswith("_count"):
                count = sample.value
    return Histogram(tuple(sorted(buckets.items())), sum_seconds, count)


def histogram_quantile(quantile: float, histogram: Histogram) -> float | None:
    """Return the quantile in seconds, interpolated linearly within its bucket as Prometheus's
    histogram_quantile does, or None for an empty histogram."""
    if not histogram.buckets or histogram.buckets[-1][1] <= 0:
        return None
    rank = quantile * histogram.buckets[-1][1]
    lower_bound = lower_count = 0.0
    for bound, count in histogram.buckets:
        if count >= rank:
            if math.isinf(bound):
                return lower_bound
            return lower_bound + (bound - lower_bound) * (rank - lower_count) / (
                count - lower_count
            )
        lower_bound, lower_count = bound, count
    return lower_bound


def summarize_histogram(histogram: Histogram) -> dict[str, Any]:
    """Return count, mean, interpolated p50 and p99 in ms, the shares at or under 0.5 and 1 ms,
    and the cumulative bucket counts as [upper bound in ms, count] pairs."""
    counts = dict(histogram.buckets)
    total = histogram.count

    def milliseconds(value: float | None) -> float | None:
        return None if value is None else round(value * 1000, 3)

    return {
        "n": int(total),
        "mean_ms": milliseconds(histogram.sum_seconds / total) if total else None,
        "p50_ms": milliseconds(histogram_quantile(0.5, histogram)),
        "p99_ms": milliseconds(histogram_quantile(0.99, histogram)),
        "share_at_or_under_0_5_ms": (
            round(counts.get(HALF_MILLISECOND, 0.0) / total, 4) if total else None
        ),
        "share_at_or_under_1_ms": (
            round(counts.get(ONE_MILLISECOND, 0.0) / total, 4) if total else None
        ),
        "cumulative_buckets": [
            [round(bound * 1000, 3) if math.isfinite(bound) else "+Inf", int(count)]
            for bound, count in histogram.buckets
        ],
    }


# 1. Zipf-skewed reads


def measure_zipf_reads(
    server: ServerProcess, movie_ids: list[int], args: argparse.Namespace
) -> dict[str, Any]:
    """Send the seeded Zipf sequence of pages from an empty cache; return hit rate and latency."""
    ranks = zipf_ranks(len(movie_ids), args.requests, args.zipf_exponent)
    paths = [page_path(movie_ids[rank], ZIPF_PAGE_LIMIT) for rank in ranks]
    load_before = load_average()
    cpu_before = child_cpu_seconds(server.process.pid)
    with httpx.Client(base_url=server.base_url, timeout=HTTP_TIMEOUT_SECONDS) as client:
        before = read_cache_totals(client)
        samples, wall_seconds = send_concurrently(
            server.base_url, paths, args.zipf_connections, args.loop_seconds, args.workers
        )
        cache = cache_totals_delta(before, read_cache_totals(client))
    warn_if_stopped_early("Zipf reads", len(samples), len(paths), args.loop_seconds)

    worker_cpu = cpu_seconds_delta(cpu_before, child_cpu_seconds(server.process.pid))
    warn_if_uneven("Zipf reads", worker_cpu, args.workers)
    distinct = len(set(ranks[: len(samples)]))
    result = {
        "requests": len(samples),
        "connections": args.zipf_connections,
        "pages": len(movie_ids),
        "distinct_pages_requested": distinct,
        # A cache that kept every page and was shared by all workers would miss once per page.
        "ideal_hit_rate": round(1 - distinct / len(samples), 4),
        "server": cache,
        "client_hit_share": round(
            sum(sample.x_cache in HITS for sample in samples) / len(samples), 4
        ),
        "errors": count_errors("Zipf reads", samples),
        "requests_per_second": round(len(samples) / wall_seconds, 1),
        "wall_s": round(wall_seconds, 2),
        "latency": latency_by_x_cache(samples),
        "worker_cpu_s": worker_cpu,
        "load_average_start": load_before,
        "load_average_end": load_average(),
    }
    logger.info(
        "Zipf reads: hit rate %s, %s requests/s", cache["hit_rate"], result["requests_per_second"]
    )
    return result


def latency_by_x_cache(samples: list[Sample]) -> dict[str, dict[str, Any]]:
    """Summarize latencies by X-Cache value, plus all hits (memory and disk) and all requests."""
    groups: dict[str, list[float]] = {}
    for sample in samples:
        groups.setdefault(sample.x_cache, []).append(sample.latency_ms)
    groups["hits"] = [sample.latency_ms for sample in samples if sample.x_cache in HITS]
    groups["all"] = [sample.latency_ms for sample in samples]
    return {name: summarize(values) for name, values in sorted(groups.items()) if values}


# 2. Memory hits only


def measure_memory_hits(
    server: ServerProcess, movie_ids: list[int], args: argparse.Namespace
) -> dict[str, Any]:
    """Time sequential requests for the hottest pages over one connection, at the client and
    at the server. Warm-up passes first put the pages in that worker's memory tier."""
    paths = [page_path(movie_id, ZIPF_PAGE_LIMIT) for movie_id in movie_ids[:HOT_PAGES]]
    load_before = load_average()
    with httpx.Client(base_url=server.base_url, timeout=HTTP_TIMEOUT_SECONDS) as client:
        samples, histogram = run_on_uvloop(
            _time_memory_hits(server.base_url, paths, args, lambda: read_duration_histogram(client))
        )
    warn_if_stopped_early("memory hits", len(samples), args.hit_requests, args.loop_seconds)

    other = Counter(sample.x_cache for sample in samples if sample.x_cache != MEMORY_HIT)
    if other:
        logger.warning("memory hits: some responses were not memory hits: %s", dict(other))
    return {
        "pages": len(paths),
        "connections": 1,
        "errors": count_errors("memory hits", samples),
        "responses_not_memory_hits": sum(other.values()),
        "client": summarize([sample.latency_ms for sample in samples]),
        "server": summarize_histogram(histogram),
        "load_average_start": load_before,
        "load_average_end": load_average(),
    }


async def _time_memory_hits(
    base_url: str,
    paths: list[str],
    args: argparse.Namespace,
    read_histogram: Callable[[], Histogram],
) -> tuple[list[Sample], Histogram]:
    # One connection is served by one worker, so the warm-up passes fill the memory tier that
    # the timed requests read. read_histogram blocks the event loop, which runs nothing else.
    deadline = time.perf_counter() + args.loop_seconds
    connection = await HttpConnection.open(base_url)
    try:
        await send_on(connection, paths * HIT_WARMUP_PASSES, deadline, [])
        before = read_histogram()
        samples: list[Sample] = []
        planned = itertools.islice(itertools.cycle(paths), args.hit_requests)
        await send_on(connection, planned, deadline, samples)
        return samples, read_histogram().minus(before)
    finally:
        await connection.close()


# 3. Throughput against a bare endpoint


@contextmanager
def running_bare_app(
    body_file: Path, workers: int, log_dir: Path, access_log: bool = False
) -> Iterator[ServerProcess]:
    """Start bench/bare_app.py under uvicorn on a free loopback port; stop it on exit. With
    `access_log`, uvicorn writes its own access line per request to the log file, as sqlstore
    does by default."""
    port = free_port()
    logging_options = (
        ["--log-level", "info"] if access_log else ["--no-access-log", "--log-level", "warning"]
    )
    command = [
        sys.executable,
        "-m",
        "uvicorn",
        "bare_app:create_app",
        "--factory",
        "--app-dir",
        str(BENCH_DIR),
        "--host",
        HOST,
        "--port",
        str(port),
        "--workers",
        str(workers),
        *logging_options,
    ]
    environment = {
        **os.environ,
        bare_app.BODY_FILE_VARIABLE: str(body_file),
        bare_app.TABLE_VARIABLE: f"{GROUP}/{NAME}",
    }
    log_path = log_dir / ("bare_app_access_log.log" if access_log else "bare_app.log")
    with log_path.open("wb") as log_file:
        process = subprocess.Popen(
            command, stdout=log_file, stderr=subprocess.STDOUT, env=environment
        )
    server = ServerProcess(base_url=f"http://{HOST}:{port}", process=process, log_path=log_path)
    logger.info("started bare app pid %d on %s", process.pid, server.base_url)

    try:
        _wait_until_healthy(server)
        yield server
    finally:
        _stop_server(server)


def warm_page(base_url: str, path: str, connections: int) -> bytes:
    """Request `path` a few times over every connection, so that it is in each worker's
    memory tier, and return its body."""
    samples, _ = send_concurrently(base_url, [path] * (connections * 4), connections, 60)
    count_errors("warm-up", samples)
    with httpx.Client(base_url=base_url, timeout=HTTP_TIMEOUT_SECONDS) as client:
        response = client.get(path)
    response.raise_for_status()
    return response.content


def check_same_body(base_url: str, path: str, expected: bytes) -> None:
    response = httpx.get(base_url + path, timeout=HTTP_TIMEOUT_SECONDS)
    response.raise_for_status()
    if response.content != expected:
        raise RuntimeError(f"{base_url}{path} returned a body other than the cached page's")


def run_wrk(base_url: str, path: str, connections: int, duration: int) -> dict[str, Any]:
    """Run wrk against one URL and return its request rate, latency percentiles and errors."""
    command = [
        "wrk",
        f"-t{min(WRK_THREADS, connections)}",
        f"-c{connections}",
        f"-d{duration}s",
        "--latency",
        base_url + path,
    ]
    completed = subprocess.run(
        command,
        capture_output=True,
        text=True,
        timeout=duration + WRK_TIMEOUT_MARGIN_SECONDS,
        check=False,
    )
    if completed.returncode != 0:
        raise RuntimeError(f"wrk failed with status {completed.returncode}: {completed.stderr}")
    return parse_wrk_output(completed.stdout)


def parse_wrk_output(text: str) -> dict[str, Any]:
    """Return requests, requests/s, latency percentiles in ms and errors from wrk's report."""
    result: dict[str, Any] = {"errors": 0}
    for line in text.splitlines():
        percentile = re.fullmatch(r"\s*(50|75|90|99)%\s+([\d.]+)(us|ms|s|m)\s*", line)
        if percentile:
            result[f"p{percentile[1]}_ms"] = _milliseconds(float(percentile[2]), percentile[3])
        elif match := re.search(r"(\d+) requests in", line):
            result["requests"] = int(match[1])
        elif match := re.search(r"Requests/sec:\s+([\d.]+)", line):
            result["requests_per_second"] = float(match[1])
        elif match := re.search(r"Non-2xx or 3xx responses:\s+(\d+)", line):
            result["errors"] += int(match[1])
        elif "Socket errors" in line:
            result["errors"] += sum(int(number) for number in re.findall(r"\d+", line))
    if "requests_per_second" not in result:
        raise RuntimeError(f"could not read wrk's output:\n{text}")
    return result


def _milliseconds(value: float, unit: str) -> float:
    factors = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60_000.0}
    return round(value * factors[unit], 3)


def run_python_load(base_url: str, path: str, connections: int, duration: int) -> dict[str, Any]:
    """Send `path` from the asyncio client for `duration` seconds; return what run_wrk does."""
    paths = itertools.repeat(path, MAX_GENERATED_REQUESTS)
    samples, wall_seconds = send_concurrently(base_url, paths, connections, duration)
    warn_if_stopped_early("throughput", len(samples), len(samples), duration)
    latencies = summarize([sample.latency_ms for sample in samples])
    return {
        "requests": len(samples),
        "requests_per_second": round(len(samples) / wall_seconds, 1),
        "p50_ms": latencies["p50_ms"],
        "p99_ms": latencies["p99_ms"],
        "errors": sum(sample.status != 200 for sample in samples),
    }


def measure_throughput(
    server: ServerProcess,
    root: Path,
    args: argparse.Namespace,
    load_generator: str,
    work_dir: Path,
) -> dict[str, Any]:
    """Compare the request rate of one cached page with the same bytes from the bare app, and
    from a second server on a copy of the store with the access log off.

    The copy keeps the second server from replacing the first one's metrics folder."""
    base_url = server.base_url
    quiet_root = work_dir / "store_without_access_log"
    shutil.copytree(root, quiet_root, ignore=shutil.ignore_patterns("cache"))
    path = page_path(THROUGHPUT_MOVIE_ID, THROUGHPUT_PAGE_LIMIT)
    body = warm_page(base_url, path, args.connections)
    body_file = work_dir / "bare_body.json"
    body_file.write_bytes(body)

    with (
        running_bare_app(body_file, args.workers, work_dir) as bare,
        running_bare_app(body_file, args.workers, work_dir, access_log=True) as bare_logging,
        running_server(
            quiet_root, args.workers, work_dir, ("--no-access-log",), "server_no_access_log"
        ) as quiet,
        httpx.Client(base_url=base_url, timeout=HTTP_TIMEOUT_SECONDS) as client,
    ):
        wait_until_workers_idle(bare, args.workers)
        wait_until_workers_idle(bare_logging, args.workers)
        wait_until_workers_idle(quiet, args.workers)
        warm_page(quiet.base_url, path, args.connections)
        targets = {
            "sqlstore": Target(server, path),
            "sqlstore_no_access_log": Target(quiet, path),
            "bare_async": Target(bare, path),
            "bare_async_access_log": Target(bare_logging, path),
            "bare_sync": Target(bare, "/sync" + path),
        }
        for target in targets.values():
            check_same_body(target.server.base_url, target.path, body)

        cache_before = read_cache_totals(client)
        histogram_before = read_duration_histogram(client)
        runs = run_rounds(targets, args, load_generator)
        server = read_duration_histogram(client).minus(histogram_before)
        cache = cache_totals_delta(cache_before, read_cache_totals(client))

    return summarize_throughput(runs, body, path, args, load_generator, server, cache)


def run_rounds(
    targets: dict[str, Target], args: argparse.Namespace, load_generator: str
) -> dict[str, list[dict[str, Any]]]:
    """Load every target once per round, in turns, so that a change in background load falls
    on all of them alike."""
    run_load = run_wrk if load_generator == "wrk" else run_python_load
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name in targets}
    for round_number in range(args.rounds):
        for name, target in targets.items():
            runs[name].append(run_once(target, args, run_load))
            logger.info(
                "throughput round %d, %s: %.0f requests/s",
                round_number + 1,
                name,
                runs[name][-1]["requests_per_second"],
            )
    return runs


def _median_or_none(values: Iterable[float | None]) -> float | None:
    present = [value for value in values if value is not None]
    return statistics.median(present) if present else None


def run_once(target: Target, args: argparse.Namespace, run_load: LoadRunner) -> dict[str, Any]:
    """Load one target; add the load averages and the CPU time its server's workers used."""
    load_before = load_average()
    cpu_before = child_cpu_seconds(target.server.process.pid)
    result = run_load(target.server.base_url, target.path, args.connections, args.duration)
    worker_cpu = cpu_seconds_delta(cpu_before, child_cpu_seconds(target.server.process.pid))

    result["worker_cpu_s"] = worker_cpu
    if worker_cpu and result["requests"]:
        cpu_per_request = sum(worker_cpu.values()) / result["requests"]
        result["server_cpu_us_per_request"] = round(cpu_per_request * 1e6, 1)
    result["load_average_start"] = load_before
    result["load_average_end"] = load_average()
    return result


def summarize_throughput(
    runs: dict[str, list[dict[str, Any]]],
    body: bytes,
    path: str,
    args: argparse.Namespace,
    load_generator: str,
    server: Histogram,
    cache: dict[str, Any],
) -> dict[str, Any]:
    endpoints = {}
    for name, results in runs.items():
        endpoints[name] = {
            "median_requests_per_second": round(
                statistics.median(result["requests_per_second"] for result in results), 1
            ),
            "median_p50_ms": statistics.median(result["p50_ms"] for result in results),
            "median_p99_ms": statistics.median(result["p99_ms"] for result in results),
            "median_server_cpu_us_per_request": _median_or_none(
                result.get("server_cpu_us_per_request") for result in results
            ),
            "errors": sum(result["errors"] for result in results),
            "runs": results,
        }
    sqlstore_rate = endpoints["sqlstore"]["median_requests_per_second"]
    return {
        "load_generator": load_generator,
        "connections": args.connections,
        "duration_s": args.duration,
        "rounds": args.rounds,
        "path": path,
        "body_bytes": len(body),
        "endpoints": endpoints,
        "ratio_to_bare_async": round(
            sqlstore_rate / endpoints["bare_async"]["median_requests_per_second"], 3
        ),
        "ratio_to_bare_async_without_access_log": round(
            endpoints["sqlstore_no_access_log"]["median_requests_per_second"]
            / endpoints["bare_async"]["median_requests_per_second"],
            3,
        ),
        "ratio_to_bare_async_both_logging": round(
            sqlstore_rate / endpoints["bare_async_access_log"]["median_requests_per_second"], 3
        ),
        "ratio_to_bare_sync": round(
            sqlstore_rate / endpoints["bare_sync"]["median_requests_per_second"], 3
        ),
        "sqlstore_server": summarize_histogram(server),
        "sqlstore_cache": cache,
    }


# 4. Hit path steps in process


def measure_hit_steps(root: Path, work_dir: Path) -> dict[str, dict[str, float]]:
    """Time the steps that the fast lane runs on every page request before a memory
    hit is sent, on the demo store and a cache of the server's default bounds."""
    store = FeatureStore(root)
    cache = ResultCache(
        CacheSettings(disk_dir=work_dir / "steps_cache"), on_event=record_cache_event
    )
    try:
        tables = [(GROUP, NAME)]
        versions = table_versions(store, tables)
        query = sorted(
            {"movie_id": str(THROUGHPUT_MOVIE_ID), "limit": str(ZIPF_PAGE_LIMIT)}.items()
        )
        canonical = page_request(GROUP, NAME, query, ZIPF_PAGE_LIMIT, "json")
        key = cache_key(PAGE_KIND, canonical, versions)
        cache.put(key, CachedResponse(b"{}", "application/json"), table=f"{GROUP}/{NAME}")
        steps: dict[str, Callable[[], object]] = {
            "registry.write_stamp (a stat call; the JSON only when it changed)": (
                lambda: store.registry.write_stamp(GROUP, NAME)
            ),
            "table_versions (write stamp and epoch file)": lambda: table_versions(store, tables),
            "cache_key": lambda: cache_key(PAGE_KIND, canonical, versions),
            "ResultCache.peek_memory, memory hit": lambda: cache.peek_memory(key),
        }
        return {name: time_call(call) for name, call in steps.items()}
    finally:
        cache.close()
        store.catalog.close()


def time_call(call: Callable[[], object]) -> dict[str, float]:
    """Return the median and minimum over STEP_REPEATS runs of the time per call, in µs."""
    totals = timeit.repeat(call, number=STEP_CALLS, repeat=STEP_REPEATS)
    per_call = [total / STEP_CALLS * 1e6 for total in totals]
    return {"median_us": round(statistics.median(per_call), 2), "min_us": round(min(per_call), 2)}


# Targets and report


def evaluate_targets(results: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Return each target with its measured value and whether it was met."""
    values = {
        "hit_rate": results["zipf"]["server"]["hit_rate"],
        "hit_p99_ms": results["zipf"]["latency"].get("hits", {}).get("p99_ms"),
        "memory_hit_server_p50_ms": results["memory_hits"]["server"]["p50_ms"],
        "throughput_ratio": results["throughput"]["ratio_to_bare_async_without_access_log"],
        "throughput_ratio_access_log": results["throughput"]["ratio_to_bare_async"],
        "throughput_ratio_both_logging": results["throughput"]["ratio_to_bare_async_both_logging"],
    }
    checks = {
        "hit_rate": lambda value: value >= 0.90,
        "hit_p99_ms": lambda value: value <= 5.0,
        "memory_hit_server_p50_ms": lambda value: value < 0.5,
        "throughput_ratio": lambda value: value >= 0.70,
        "throughput_ratio_access_log": lambda value: value >= 0.70,
        "throughput_ratio_both_logging": lambda value: value >= 0.70,
    }
    return {
        name: {
            "target": TARGETS[name],
            "value": values[name],
            "met": values[name] is not None and checks[name](values[name]),
        }
        for name in TARGETS
    }


def render_markdown(results: dict[str, Any]) -> str:
    """Render the results as Markdown tables."""
    machine = results["machine"]
    header = (
        f"{machine['cpu_model']}, {machine['usable_cpus']} CPUs, {machine['memory_gib']} GiB; "
        f"{results['settings']['workers']} server workers; 1-minute load average "
        f"{results['load_average_start'][0]:.2f} at start, "
        f"{results['load_average_end'][0]:.2f} at end"
    )
    sections = [
        header,
        _render_zipf(results["zipf"]),
        _render_memory_hits(results["memory_hits"], results["throughput"]),
        _render_throughput(results["throughput"]),
        _render_steps(results["hit_steps"]),
        _render_targets(results["targets"]),
    ]
    return "\n\n".join(sections) + "\n"


def _render_zipf(zipf: dict[str, Any]) -> str:
    server = zipf["server"]
    lines = [
        f"Zipf reads: {zipf['requests']:,} requests over {zipf['pages']:,} pages "
        f"({zipf['distinct_pages_requested']:,} requested), {zipf['connections']} connections, "
        f"{zipf['requests_per_second']:,.0f} requests/s",
        "",
        f"Hit rate from /cache/stats: {server['hit_rate']} ({server['hits']:,} hits: "
        f"{server['memory_hits']:,} memory, {server['disk_hits']:,} disk); ideal for this "
        f"sequence {zipf['ideal_hit_rate']}. Errors: {zipf['errors']}. "
        f"CPU seconds per worker: {_worker_cpu(zipf['worker_cpu_s'])}.",
        "",
        "| X-Cache | n | p50 (ms) | p99 (ms) | max (ms) |",
        "|---|---:|---:|---:|---:|",
    ]
    for name, latency in zipf["latency"].items():
        lines.append(
            f"| {name} | {latency['n']:,} | {latency['p50_ms']:.2f} | {latency['p99_ms']:.2f} "
            f"| {latency['max_ms']:.2f} |"
        )
    return "\n".join(lines)


def _render_memory_hits(memory_hits: dict[str, Any], throughput: dict[str, Any]) -> str:
    client = memory_hits["client"]
    rows = [
        ("sequential, 1 connection", memory_hits["server"], client),
        (
            f"throughput runs, {throughput['connections']} connections",
            throughput["sqlstore_server"],
            None,
        ),
    ]
    lines = [
        "Memory hits: server time from the request-duration histogram (p50 and p99 "
        "interpolated within buckets)",
        "",
        "| run | n | server mean (ms) | server p50 (ms) | server p99 (ms) | share <= 0.5 ms "
        "| share <= 1 ms | client p50 (ms) | client p99 (ms) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for label, server, client_latency in rows:
        client_cells = (
            f"{client_latency['p50_ms']:.2f} | {client_latency['p99_ms']:.2f}"
            if client_latency
            else "- | -"
        )
        lines.append(
            f"| {label} | {server['n']:,} | {_number(server['mean_ms'])} "
            f"| {_number(server['p50_ms'])} | {_number(server['p99_ms'])} "
            f"| {_number(server['share_at_or_under_0_5_ms'])} "
            f"| {_number(server['share_at_or_under_1_ms'])} | {client_cells} |"
        )
    lines.append("")
    lines.append(
        f"Responses of the sequential run that were not memory hits: "
        f"{memory_hits['responses_not_memory_hits']}."
    )
    return "\n".join(lines)


def _number(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def _worker_cpu(worker_cpu: dict[str, float]) -> str:
    return " / ".join(f"{seconds:.1f}" for seconds in worker_cpu.values()) or "not measured"


def _render_throughput(throughput: dict[str, Any]) -> str:
    lines = [
        f"Throughput of one cached page ({throughput['body_bytes']:,} bytes), "
        f"{throughput['load_generator']}, {throughput['connections']} connections, "
        f"{throughput['duration_s']} s per run, median of {throughput['rounds']} rounds",
        "",
        "| endpoint | requests/s | p50 (ms) | p99 (ms) | server CPU (µs/request) | errors "
        "| sqlstore / endpoint |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    sqlstore_rate = throughput["endpoints"]["sqlstore"]["median_requests_per_second"]
    labels = {
        "sqlstore": "sqlstore, cached page",
        "sqlstore_no_access_log": "sqlstore, cached page, --no-access-log",
        "bare_async": "bare FastAPI, async def",
        "bare_async_access_log": "bare FastAPI, async def, uvicorn access log",
        "bare_sync": "bare FastAPI, def (thread pool)",
    }
    for name, endpoint in throughput["endpoints"].items():
        rate = endpoint["median_requests_per_second"]
        lines.append(
            f"| {labels[name]} | {rate:,.0f} | {endpoint['median_p50_ms']:.2f} "
            f"| {endpoint['median_p99_ms']:.2f} "
            f"| {_number(endpoint['median_server_cpu_us_per_request'])} | {endpoint['errors']} "
            f"| {sqlstore_rate / rate:.2f} |"
        )
    cache = throughput["sqlstore_cache"]
    lines.append("")
    lines.append(
        f"Cache lookups during the sqlstore runs: {cache['requests']:,}, of which "
        f"{cache['memory_hits']:,} memory hits."
    )
    return "\n".join(lines)


def _render_steps(steps: dict[str, dict[str, float]]) -> str:
    lines = [
        "Hit path steps in process (median of the time per call)",
        "",
        "| step | µs per call |",
        "|---|---:|",
    ]
    for name, timing in steps.items():
        lines.append(f"| {name} | {timing['median_us']:.1f} |")
    return "\n".join(lines)


def _render_targets(targets: dict[str, dict[str, Any]]) -> str:
    lines = ["Targets", "", "| target | value | met |", "|---|---:|---|"]
    for target in targets.values():
        lines.append(
            f"| {target['target']} | {target['value']} | {'yes' if target['met'] else 'no'} |"
        )
    return "\n".join(lines)


# Main


def run_benchmark(
    args: argparse.Namespace, root: Path, work_dir: Path, load_generator: str
) -> dict[str, Any]:
    """Build the demo store in `root`, serve it, and run the four measurements."""
    build = measure_demo_build(root, 1)
    movie_ids = choose_movie_ids(root, args.pages)

    with running_server(root, args.workers, work_dir) as server:
        wait_until_workers_idle(server, args.workers)
        zipf = measure_zipf_reads(server, movie_ids, args)
        memory_hits = measure_memory_hits(server, movie_ids, args)
        throughput = measure_throughput(server, root, args, load_generator, work_dir)

    return {
        "demo_build_s": build["median"]["total_s"],
        "zipf": zipf,
        "memory_hits": memory_hits,
        "throughput": throughput,
        "hit_steps": measure_hit_steps(root, work_dir),
    }


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    logging.getLogger("sqlstore").setLevel(logging.WARNING)
    logging.getLogger("httpx").setLevel(logging.WARNING)
    args = parse_args(argv)
    load_generator = choose_load_generator(args.load_generator)

    started = time.perf_counter()
    load_average_start = load_average()
    with tempfile.TemporaryDirectory(prefix="sqlstore-bench-cache-") as temporary:
        work_dir = Path(temporary)
        root = args.root.resolve() if args.root else work_dir / "store"
        measured = run_benchmark(args, root, work_dir, load_generator)

    results = {
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "machine": machine_details(load_generator),
        "settings": {
            "requests": args.requests,
            "pages": args.pages,
            "zipf_exponent": args.zipf_exponent,
            "zipf_page_limit": ZIPF_PAGE_LIMIT,
            "connections": args.connections,
            "zipf_connections": args.zipf_connections,
            "hit_requests": args.hit_requests,
            "hot_pages": HOT_PAGES,
            "duration_s": args.duration,
            "rounds": args.rounds,
            "workers": args.workers,
            "loop_seconds": args.loop_seconds,
            "load_generator": load_generator,
            "seed": SEED,
        },
        **measured,
        # Load averages over 1, 5 and 15 minutes: values near or above the CPU count mean
        # other processes competed for the CPUs during the run.
        "load_average_start": load_average_start,
        "load_average_end": load_average(),
        "elapsed_s": round(time.perf_counter() - started, 1),
    }
    results["targets"] = evaluate_targets(results)
    print(render_markdown(results))
    write_results(results, args.output)
    return 0


if __name__ == "__main__":
    sys.exit(main())
