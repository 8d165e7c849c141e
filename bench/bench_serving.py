"""Benchmark of the MovieLens demo store: build time, serving latency, baselines and storage.

One run builds the demo store, starts `python -m sqlstore serve` on a free 127.0.0.1 port and
measures, on the same Parquet files:

- page reads and 100-entity batch lookups over loopback HTTP (httpx, keep-alive, sequential,
  plus a small concurrent page run),
- the same reads in process through `sqlstore.reader.read_page` and
  `sqlstore.lookup.lookup_entities`, without HTTP,
- the equivalent raw DuckDB queries and pandas operations,
- Parquet sizes against the raw ratings written as CSV.

It prints Markdown tables and writes the results with machine details as JSON.

    .venv/bin/python bench/bench_serving.py [--root DIR] [--repeats N] [--output FILE]
"""

from __future__ import annotations

import argparse
import io
import json
import logging
import os
import platform
import random
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

import duckdb
import httpx
import numpy as np
import pandas as pd
import pyarrow as pa

from sqlstore.demo import build_demo_tables, load_movielens_ratings, write_demo_store
from sqlstore.lookup import lookup_entities
from sqlstore.reader import Filter, read_page
from sqlstore.references import FeatureReference, resolve_reference
from sqlstore.registry import RegistryEntry
from sqlstore.store import FeatureStore

logger = logging.getLogger("bench_serving")

DEFAULT_OUTPUT = Path(__file__).resolve().parent / "results" / "serving.json"
HOST = "127.0.0.1"
PAGE_SIZE = 100
ENTITY_COUNT = 100
FILTER_MIN_RATING = 4.5
SEED = 20_240_101
WARMUP_CALLS = 5
CONCURRENT_THREADS = 4
SERVER_START_TIMEOUT_SECONDS = 60
SERVER_STOP_TIMEOUT_SECONDS = 15
HTTP_TIMEOUT_SECONDS = 30.0
VERSIONED_PACKAGES = ("duckdb", "pyarrow", "pandas", "numpy", "fastapi", "uvicorn", "httpx")
METHODS = ("http", "in_process", "duckdb", "pandas")
METHOD_LABELS = {
    "http": "sqlstore HTTP",
    "in_process": "sqlstore in process",
    "duckdb": "raw DuckDB",
    "pandas": "pandas",
}
# The demo tables that together contain every column of the raw ratings.
RAW_EQUIVALENT_TABLES = ("interaction/user_movie_interactions", "content/movie_genres")


@dataclass(frozen=True)
class TableSource:
    """One demo table as the baselines see it: its Parquet file and its frame in memory."""

    reference: str
    path: Path
    frame: pd.DataFrame


@dataclass(frozen=True)
class Scenario:
    """One read measured four ways over the same workload items (offsets or entity id lists)."""

    key: str
    label: str
    workload: list[Any]
    calls: dict[str, Callable[[Any], int]]


@dataclass
class ServerProcess:
    """A `sqlstore serve` process started by this script."""

    base_url: str
    process: subprocess.Popen[bytes]
    log_path: Path


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--root",
        type=Path,
        help="store root to build the demo store in and serve; default: a temporary folder",
    )
    parser.add_argument(
        "--repeats", type=int, default=3, help="demo builds to time (default 3); min 1"
    )
    parser.add_argument(
        "--requests",
        type=int,
        default=300,
        help="timed calls per scenario and method (default 300); min 10",
    )
    parser.add_argument(
        "--loop-seconds",
        type=float,
        default=45.0,
        help="time limit of each scenario's timed loop in seconds (default 45)",
    )
    parser.add_argument(
        "--workers", type=int, default=1, help="server worker processes (default 1)"
    )
    parser.add_argument(
        "--output",
        type=Path,
        default=DEFAULT_OUTPUT,
        help=f"JSON results file (default {DEFAULT_OUTPUT})",
    )
    args = parser.parse_args(argv)

    if args.repeats < 1:
        parser.error(f"invalid --repeats {args.repeats}: use 1 or more")
    if args.requests < 10:
        parser.error(f"invalid --requests {args.requests}: use 10 or more")
    if not args.loop_seconds > 0:
        parser.error(f"invalid --loop-seconds {args.loop_seconds}: use a positive number")
    if args.workers < 1:
        parser.error(f"invalid --workers {args.workers}: use 1 or more")
    return args


# Machine details


def machine_info() -> dict[str, Any]:
    """Return the date, CPU, memory, OS, package versions and git revision of this run."""
    versions = {name: metadata.version(name) for name in VERSIONED_PACKAGES}
    versions["sqlstore"] = metadata.version("sqlstore")
    return {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "cpu_model": _cpu_model(),
        "logical_cpus": os.cpu_count(),
        "usable_cpus": len(os.sched_getaffinity(0)),
        "memory_gib": _memory_gib(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "versions": versions,
        "git_revision": _git_revision(),
    }


def _git_revision() -> str | None:
    checkout = Path(__file__).resolve().parent.parent
    try:
        completed = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=checkout, capture_output=True, text=True, check=True
        )
    except (OSError, subprocess.CalledProcessError):
        return None
    return completed.stdout.strip()


def _cpu_model() -> str:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return platform.processor() or "unknown"
    for line in text.splitlines():
        if line.startswith("model name"):
            return line.partition(":")[2].strip()
    return platform.processor() or "unknown"


def _memory_gib() -> float | None:
    try:
        text = Path("/proc/meminfo").read_text()
    except OSError:
        return None
    for line in text.splitlines():
        if line.startswith("MemTotal:"):
            kibibytes = int(line.split()[1])
            return round(kibibytes / 1024 / 1024, 1)
    return None


# Timing helpers


def summarize(samples_ms: list[float]) -> dict[str, float | int]:
    """Return count, median, p99 (numpy's linear interpolation), min and max in milliseconds."""
    values = np.asarray(samples_ms)
    return {
        "n": len(samples_ms),
        "p50_ms": round(float(np.percentile(values, 50)), 3),
        "p99_ms": round(float(np.percentile(values, 99)), 3),
        "min_ms": round(float(values.min()), 3),
        "max_ms": round(float(values.max()), 3),
    }


def time_scenario(scenario: Scenario, requests: int, max_seconds: float) -> dict[str, list[float]]:
    """Time every method of `scenario` on each workload item; return the latencies in ms.

    The first WARMUP_CALLS items run untimed. The methods take turns on each item, so a change
    in background load falls on all of them alike. The loop stops early, with a warning, once
    `max_seconds` have passed.
    """
    for item in scenario.workload[:WARMUP_CALLS]:
        for call in scenario.calls.values():
            call(item)

    workload = scenario.workload[WARMUP_CALLS : WARMUP_CALLS + requests]
    samples: dict[str, list[float]] = {method: [] for method in scenario.calls}
    deadline = time.perf_counter() + max_seconds
    for index, item in enumerate(workload):
        if time.perf_counter() > deadline:
            logger.warning(
                "%s: stopped after %d of %d items at the %.0f s limit",
                scenario.key,
                index,
                len(workload),
                max_seconds,
            )
            break
        for method, call in scenario.calls.items():
            started = time.perf_counter()
            call(item)
            samples[method].append((time.perf_counter() - started) * 1000)
    return samples


# Demo build


def measure_demo_build(root: Path, repeats: int) -> dict[str, Any]:
    """Time `repeats` demo builds into `root`: load, compute and write, each and in total."""
    phases: dict[str, list[float]] = {"load_s": [], "compute_s": [], "write_s": [], "total_s": []}
    for repeat in range(repeats):
        store = FeatureStore(root)

        started = time.perf_counter()
        ratings = load_movielens_ratings()
        loaded = time.perf_counter()
        tables = build_demo_tables(ratings)
        computed = time.perf_counter()
        write_demo_store(store, tables)
        written = time.perf_counter()

        phases["load_s"].append(loaded - started)
        phases["compute_s"].append(computed - loaded)
        phases["write_s"].append(written - computed)
        phases["total_s"].append(written - started)
        store.catalog.close()
        logger.info("demo build %d of %d: %.2f s", repeat + 1, repeats, written - started)

    medians = {name: round(statistics.median(values), 3) for name, values in phases.items()}
    runs = {name: [round(value, 3) for value in values] for name, values in phases.items()}
    return {"repeats": repeats, "median": medians, "runs": runs, "rating_rows": len(ratings)}


# Server process


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        return sock.getsockname()[1]


@contextmanager
def running_server(
    root: Path, workers: int, log_dir: Path, options: tuple[str, ...] = (), log_name: str = "server"
) -> Iterator[ServerProcess]:
    """Start `python -m sqlstore serve [options]` on a free loopback port; stop it on exit."""
    port = free_port()
    command = [
        sys.executable,
        "-m",
        "sqlstore",
        "serve",
        "--root",
        str(root),
        "--host",
        HOST,
        "--port",
        str(port),
        "--workers",
        str(workers),
        *options,
    ]
    log_path = log_dir / f"{log_name}.log"
    with log_path.open("wb") as log_file:
        process = subprocess.Popen(command, stdout=log_file, stderr=subprocess.STDOUT)
    server = ServerProcess(base_url=f"http://{HOST}:{port}", process=process, log_path=log_path)
    logger.info("started server pid %d on %s", process.pid, server.base_url)

    try:
        _wait_until_healthy(server)
        yield server
    finally:
        _stop_server(server)


def _wait_until_healthy(server: ServerProcess) -> None:
    deadline = time.monotonic() + SERVER_START_TIMEOUT_SECONDS
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            raise RuntimeError(
                f"server exited with code {server.process.returncode}; log:\n{_log_tail(server)}"
            )
        try:
            if httpx.get(f"{server.base_url}/health", timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    raise RuntimeError(
        f"server start timed out: /health did not return 200 within "
        f"{SERVER_START_TIMEOUT_SECONDS} s; "
        f"log:\n{_log_tail(server)}"
    )


def _stop_server(server: ServerProcess) -> None:
    server.process.terminate()
    try:
        server.process.wait(timeout=SERVER_STOP_TIMEOUT_SECONDS)
    except subprocess.TimeoutExpired:
        logger.warning("server pid %d ignored SIGTERM; killing it", server.process.pid)
        server.process.kill()
        server.process.wait()
    logger.info("stopped server pid %d", server.process.pid)


def _log_tail(server: ServerProcess, lines: int = 40) -> str:
    text = server.log_path.read_text(errors="replace")
    return "\n".join(text.splitlines()[-lines:])


# Workloads


def build_workloads(sources: dict[str, TableSource], requests: int) -> dict[str, list[Any]]:
    """Draw seeded page offsets and entity id samples, shared by every method."""
    generator = random.Random(SEED)
    ratings = sources["content/movie_ratings"].frame
    interactions = sources["interaction/user_movie_interactions"].frame
    filtered_rows = int((interactions["rating"] >= FILTER_MIN_RATING).sum())
    movie_ids = sorted(ratings["movie_id"].unique().tolist())
    user_ids = sorted(sources["user/user_preferences"].frame["user_id"].unique().tolist())
    count = requests + WARMUP_CALLS

    return {
        "page": _offsets(generator, len(ratings), count),
        "filtered_page": _offsets(generator, filtered_rows, count),
        "lookup_movies": [generator.sample(movie_ids, ENTITY_COUNT) for _ in range(count)],
        "lookup_users": [generator.sample(user_ids, ENTITY_COUNT) for _ in range(count)],
    }


def _offsets(generator: random.Random, row_count: int, count: int) -> list[int]:
    # Offsets run from the first page to the last full one, so later pages are scanned too.
    last_offset = max(row_count - PAGE_SIZE, 0)
    return [generator.randint(0, last_offset) for _ in range(count)]


# The four ways to read


def http_calls(client: httpx.Client) -> dict[str, Callable[[Any], int]]:
    """Return one call per scenario that sends the request, decodes the JSON body and returns
    the row count."""

    def page(offset: int) -> int:
        params = {"limit": PAGE_SIZE, "offset": offset}
        body = _get_json(client, "/features/content/movie_ratings", params)
        return body["metadata"]["returned_rows"]

    def filtered_page(offset: int) -> int:
        params = {"limit": PAGE_SIZE, "offset": offset, "rating__gte": FILTER_MIN_RATING}
        body = _get_json(client, "/features/interaction/user_movie_interactions", params)
        return body["metadata"]["returned_rows"]

    def lookup(reference: str) -> Callable[[list[int]], int]:
        def call(entity_ids: list[int]) -> int:
            payload = {"feature_names": [reference], "entity_ids": entity_ids}
            response = client.post("/features/batch", json=payload)
            _raise_for_status(response)
            return len(response.json()["features"][reference])

        return call

    return {
        "page": page,
        "filtered_page": filtered_page,
        "lookup_movies": lookup("content/movie_ratings"),
        "lookup_users": lookup("user/user_preferences"),
    }


def _get_json(client: httpx.Client, path: str, params: dict[str, Any]) -> dict[str, Any]:
    response = client.get(path, params=params)
    _raise_for_status(response)
    return response.json()


def _raise_for_status(response: httpx.Response) -> None:
    if response.status_code != 200:
        raise RuntimeError(
            f"{response.request.method} {response.request.url} failed with "
            f"{response.status_code}: {response.text[:500]}"
        )


def in_process_calls(store: FeatureStore) -> dict[str, Callable[[Any], int]]:
    """Return one call per scenario through the reader and lookup functions, without HTTP."""
    entries = store.list_tables()
    movies = resolve_reference("content/movie_ratings", entries)
    users = resolve_reference("user/user_preferences", entries)
    rating_filter = [Filter(column="rating", operator="gte", value=str(FILTER_MIN_RATING))]

    def page(offset: int) -> int:
        result = read_page(store, "content", "movie_ratings", limit=PAGE_SIZE, offset=offset)
        return result.table.num_rows

    def filtered_page(offset: int) -> int:
        result = read_page(
            store,
            "interaction",
            "user_movie_interactions",
            filters=rating_filter,
            limit=PAGE_SIZE,
            offset=offset,
        )
        return result.table.num_rows

    def lookup(reference: FeatureReference) -> Callable[[list[int]], int]:
        def call(entity_ids: list[int]) -> int:
            return lookup_entities(store, reference, entity_ids).table.num_rows

        return call

    return {
        "page": page,
        "filtered_page": filtered_page,
        "lookup_movies": lookup(movies),
        "lookup_users": lookup(users),
    }


def duckdb_calls(
    connection: duckdb.DuckDBPyConnection, sources: dict[str, TableSource]
) -> dict[str, Callable[[Any], int]]:
    """Return one call per scenario as a single raw DuckDB query over the Parquet file."""
    ratings = _sql_path(sources["content/movie_ratings"].path)
    interactions = _sql_path(sources["interaction/user_movie_interactions"].path)
    page_sql = f"SELECT * FROM read_parquet({ratings}) LIMIT ? OFFSET ?"
    filtered_sql = f"SELECT * FROM read_parquet({interactions}) WHERE rating >= ? LIMIT ? OFFSET ?"

    def page(offset: int) -> int:
        return _arrow(connection, page_sql, [PAGE_SIZE, offset]).num_rows

    def filtered_page(offset: int) -> int:
        parameters = [FILTER_MIN_RATING, PAGE_SIZE, offset]
        return _arrow(connection, filtered_sql, parameters).num_rows

    def lookup(reference: str, key: str) -> Callable[[list[int]], int]:
        sql = (
            f"SELECT * FROM read_parquet({_sql_path(sources[reference].path)}) "
            f"WHERE {key} IN (SELECT unnest(?)) AND event_timestamp <= ? "
            f"QUALIFY row_number() OVER (PARTITION BY {key} ORDER BY event_timestamp DESC) = 1"
        )

        def call(entity_ids: list[int]) -> int:
            return _arrow(connection, sql, [entity_ids, datetime.now(UTC)]).num_rows

        return call

    return {
        "page": page,
        "filtered_page": filtered_page,
        "lookup_movies": lookup("content/movie_ratings", "movie_id"),
        "lookup_users": lookup("user/user_preferences", "user_id"),
    }


def _sql_path(path: Path) -> str:
    return "'" + str(path).replace("'", "''") + "'"


def _arrow(connection: duckdb.DuckDBPyConnection, sql: str, parameters: list[Any]) -> pa.Table:
    return connection.sql(sql, params=parameters).to_arrow_table()


def pandas_calls(sources: dict[str, TableSource]) -> dict[str, Callable[[Any], int]]:
    """Return one call per scenario on frames read once with pandas.read_parquet."""
    ratings = sources["content/movie_ratings"].frame
    interactions = sources["interaction/user_movie_interactions"].frame

    def page(offset: int) -> int:
        return len(ratings.iloc[offset : offset + PAGE_SIZE])

    def filtered_page(offset: int) -> int:
        matching = interactions[interactions["rating"] >= FILTER_MIN_RATING]
        return len(matching.iloc[offset : offset + PAGE_SIZE])

    def lookup(frame: pd.DataFrame, key: str) -> Callable[[list[int]], int]:
        def call(entity_ids: list[int]) -> int:
            now = pd.Timestamp.now(tz="UTC")
            rows = frame[frame[key].isin(entity_ids) & (frame["event_timestamp"] <= now)]
            ordered = rows.sort_values([key, "event_timestamp"], kind="stable")
            # groupby().last() would take the last non-null value of each column separately,
            # which mixes rows; tail(1) keeps the latest row whole.
            return len(ordered.groupby(key, sort=False).tail(1))

        return call

    return {
        "page": page,
        "filtered_page": filtered_page,
        "lookup_movies": lookup(ratings, "movie_id"),
        "lookup_users": lookup(sources["user/user_preferences"].frame, "user_id"),
    }


# Scenarios


def load_sources(store: FeatureStore) -> tuple[dict[str, TableSource], dict[str, float]]:
    """Read each demo table into pandas once; return the sources and each read time in ms."""
    sources = {}
    read_ms = {}
    for entry in store.list_tables():
        path = store.root / entry.path
        started = time.perf_counter()
        frame = pd.read_parquet(path)
        read_ms[entry.reference] = round((time.perf_counter() - started) * 1000, 3)
        sources[entry.reference] = TableSource(reference=entry.reference, path=path, frame=frame)
    return sources, read_ms


def build_scenarios(
    workloads: dict[str, list[Any]], calls_by_method: dict[str, dict[str, Callable[[Any], int]]]
) -> list[Scenario]:
    labels = {
        "page": f"page of {PAGE_SIZE}, content/movie_ratings, random offset",
        "filtered_page": (
            f"page of {PAGE_SIZE}, user_movie_interactions, rating >= {FILTER_MIN_RATING}"
        ),
        "lookup_movies": f"latest row of {ENTITY_COUNT} movies, content/movie_ratings",
        "lookup_users": f"latest row of {ENTITY_COUNT} users, user/user_preferences",
    }
    return [
        Scenario(
            key=key,
            label=label,
            workload=workloads[key],
            calls={method: calls_by_method[method][key] for method in METHODS},
        )
        for key, label in labels.items()
    ]


def check_row_counts(scenarios: list[Scenario]) -> dict[str, dict[str, int]]:
    """Return the row count of each method on the first workload item; warn when they differ."""
    counts = {}
    for scenario in scenarios:
        item = scenario.workload[0]
        counts[scenario.key] = {method: call(item) for method, call in scenario.calls.items()}
        if len(set(counts[scenario.key].values())) > 1:
            logger.warning(
                "%s: methods returned different row counts %s",
                scenario.key,
                counts[scenario.key],
            )
    return counts


def measure_scenarios(
    scenarios: list[Scenario], requests: int, max_seconds: float
) -> dict[str, dict[str, Any]]:
    """Time every scenario with every method and summarize the latencies."""
    results: dict[str, dict[str, Any]] = {}
    for scenario in scenarios:
        samples = time_scenario(scenario, requests, max_seconds)
        results[scenario.key] = {"label": scenario.label}
        for method, values in samples.items():
            results[scenario.key][method] = summarize(values)
        medians = {method: results[scenario.key][method]["p50_ms"] for method in samples}
        logger.info("%s: p50 in ms %s", scenario.key, medians)
    return results


def compute_ratios(latency: dict[str, dict[str, Any]]) -> dict[str, dict[str, float]]:
    """Return median ratios: HTTP and in-process sqlstore over raw DuckDB and over pandas."""
    ratios = {}
    for key, methods in latency.items():
        http = methods["http"]["p50_ms"]
        in_process = methods["in_process"]["p50_ms"]
        ratios[key] = {
            "http_over_duckdb": round(http / methods["duckdb"]["p50_ms"], 2),
            "http_over_pandas": round(http / methods["pandas"]["p50_ms"], 2),
            "in_process_over_duckdb": round(in_process / methods["duckdb"]["p50_ms"], 2),
            "http_over_in_process": round(http / in_process, 2),
        }
    return ratios


def measure_concurrent_pages(
    base_url: str, offsets: list[int], max_seconds: float
) -> dict[str, Any]:
    """Send page requests from a bounded thread pool over shared keep-alive connections.

    The first request of each thread also opens its connection, which is counted.
    """
    limits = httpx.Limits(max_connections=CONCURRENT_THREADS)
    deadline = time.perf_counter() + max_seconds
    with httpx.Client(base_url=base_url, timeout=HTTP_TIMEOUT_SECONDS, limits=limits) as client:
        page = http_calls(client)["page"]

        def timed_page(offset: int) -> float | None:
            if time.perf_counter() > deadline:
                return None
            started = time.perf_counter()
            page(offset)
            return (time.perf_counter() - started) * 1000

        started = time.perf_counter()
        with ThreadPoolExecutor(max_workers=CONCURRENT_THREADS) as pool:
            results = list(pool.map(timed_page, offsets))
        wall_seconds = time.perf_counter() - started

    samples = [sample for sample in results if sample is not None]
    if len(samples) < len(offsets):
        logger.warning(
            "concurrent pages: stopped after %d of %d requests at the %.0f s limit",
            len(samples),
            len(offsets),
            max_seconds,
        )
    summary = summarize(samples)
    summary["threads"] = CONCURRENT_THREADS
    summary["requests_per_second"] = round(len(samples) / wall_seconds, 1)
    return summary


# Storage


def measure_storage(store: FeatureStore) -> dict[str, Any]:
    """Return Parquet sizes against the raw ratings as CSV, and each table's registry figures."""
    ratings = load_movielens_ratings()
    csv_buffer = io.StringIO()
    ratings.to_csv(csv_buffer, index=False)
    raw_csv_bytes = len(csv_buffer.getvalue().encode())

    entries = {entry.reference: entry for entry in store.list_tables()}
    tables = {reference: _table_storage(entry) for reference, entry in entries.items()}
    equivalent_bytes = sum(
        tables[reference]["parquet_bytes"] for reference in RAW_EQUIVALENT_TABLES
    )
    all_bytes = sum(table["parquet_bytes"] for table in tables.values())

    return {
        "raw_csv_bytes": raw_csv_bytes,
        "raw_csv_columns": list(ratings.columns),
        "raw_equivalent_tables": list(RAW_EQUIVALENT_TABLES),
        "raw_equivalent_parquet_bytes": equivalent_bytes,
        "raw_equivalent_saving": round(1 - equivalent_bytes / raw_csv_bytes, 3),
        "raw_equivalent_meets_half_size_floor": equivalent_bytes <= raw_csv_bytes / 2,
        "all_tables_parquet_bytes": all_bytes,
        "tables": tables,
    }


def _table_storage(entry: RegistryEntry) -> dict[str, Any]:
    stats = entry.storage
    return {
        "rows": entry.row_count,
        "columns": len(entry.columns),
        "compression": stats.compression,
        "parquet_bytes": stats.bytes_on_disk,
        "csv_bytes": stats.csv_bytes,
        "arrow_bytes": stats.arrow_bytes,
        "csv_over_parquet": round(stats.csv_bytes / stats.bytes_on_disk, 2),
        "arrow_over_parquet": round(stats.arrow_bytes / stats.bytes_on_disk, 2),
    }


# Report


def render_markdown(results: dict[str, Any]) -> str:
    """Render the results as Markdown tables."""
    machine = results["machine"]
    load = (
        f"{machine['cpu_model']}, {machine['usable_cpus']} CPUs; 1-minute load average "
        f"{results['load_average_start'][0]:.2f} at start, {results['load_average_end'][0]:.2f} "
        "at end"
    )
    sections = [
        load,
        _render_build(results["build"]),
        _render_latency(results["latency"]),
        _render_ratios(results["latency"], results["ratios"]),
        _render_concurrent(results["concurrent_pages"]),
        _render_storage(results["storage"]),
    ]
    return "\n\n".join(sections) + "\n"


def _render_build(build: dict[str, Any]) -> str:
    median = build["median"]
    lines = [
        f"Demo build, median of {build['repeats']} ({build['rating_rows']:,} ratings)",
        "",
        "| load (s) | compute (s) | write (s) | total (s) |",
        "|---:|---:|---:|---:|",
        f"| {median['load_s']:.2f} | {median['compute_s']:.2f} | {median['write_s']:.2f} "
        f"| {median['total_s']:.2f} |",
    ]
    return "\n".join(lines)


def _render_latency(latency: dict[str, dict[str, Any]]) -> str:
    header = " | ".join(f"{METHOD_LABELS[method]} p50 / p99 (ms)" for method in METHODS)
    lines = [
        "Latency per call, sequential, methods taking turns on each item",
        "",
        f"| scenario | n | {header} |",
        "|---|---:|" + "---:|" * len(METHODS),
    ]
    for methods in latency.values():
        cells = [f"{methods[m]['p50_ms']:.2f} / {methods[m]['p99_ms']:.2f}" for m in METHODS]
        lines.append(f"| {methods['label']} | {methods['http']['n']} | {' | '.join(cells)} |")
    return "\n".join(lines)


def _render_ratios(latency: dict[str, Any], ratios: dict[str, dict[str, float]]) -> str:
    lines = [
        "Ratios of medians",
        "",
        "| scenario | HTTP / raw DuckDB | HTTP / pandas | in process / raw DuckDB "
        "| HTTP / in process |",
        "|---|---:|---:|---:|---:|",
    ]
    for key, ratio in ratios.items():
        lines.append(
            f"| {latency[key]['label']} | {ratio['http_over_duckdb']:.1f} "
            f"| {ratio['http_over_pandas']:.1f} | {ratio['in_process_over_duckdb']:.1f} "
            f"| {ratio['http_over_in_process']:.1f} |"
        )
    return "\n".join(lines)


def _render_concurrent(concurrent: dict[str, Any]) -> str:
    lines = [
        f"Concurrent page requests, {concurrent['threads']} client threads",
        "",
        "| n | p50 (ms) | p99 (ms) | requests/s |",
        "|---:|---:|---:|---:|",
        f"| {concurrent['n']} | {concurrent['p50_ms']:.2f} | {concurrent['p99_ms']:.2f} "
        f"| {concurrent['requests_per_second']:.1f} |",
    ]
    return "\n".join(lines)


def _render_storage(storage: dict[str, Any]) -> str:
    equivalent = " + ".join(storage["raw_equivalent_tables"])
    lines = [
        "Storage",
        "",
        f"Raw ratings as CSV: {storage['raw_csv_bytes']:,} bytes. "
        f"Parquet of {equivalent}: {storage['raw_equivalent_parquet_bytes']:,} bytes "
        f"({storage['raw_equivalent_saving']:.0%} smaller). "
        f"All six tables: {storage['all_tables_parquet_bytes']:,} bytes.",
        "",
        "| table | rows | columns | codec | Parquet bytes | CSV / Parquet | Arrow / Parquet |",
        "|---|---:|---:|---|---:|---:|---:|",
    ]
    for reference, table in storage["tables"].items():
        lines.append(
            f"| {reference} | {table['rows']:,} | {table['columns']} | {table['compression']} "
            f"| {table['parquet_bytes']:,} | {table['csv_over_parquet']:.2f} "
            f"| {table['arrow_over_parquet']:.2f} |"
        )
    return "\n".join(lines)


def write_results(results: dict[str, Any], output: Path) -> None:
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(results, indent=2) + "\n")
    logger.info("wrote %s", output)


# Main


def run_benchmark(args: argparse.Namespace, root: Path, work_dir: Path) -> dict[str, Any]:
    """Build the demo store in `root`, then measure serving, baselines and storage."""
    build = measure_demo_build(root, args.repeats)

    store = FeatureStore(root)
    sources, pandas_read_ms = load_sources(store)
    workloads = build_workloads(sources, args.requests)
    connection = duckdb.connect()
    connection.execute("SET TimeZone = 'UTC'")

    with (
        running_server(root, args.workers, work_dir) as server,
        httpx.Client(base_url=server.base_url, timeout=HTTP_TIMEOUT_SECONDS) as client,
    ):
        calls_by_method = {
            "http": http_calls(client),
            "in_process": in_process_calls(store),
            "duckdb": duckdb_calls(connection, sources),
            "pandas": pandas_calls(sources),
        }
        scenarios = build_scenarios(workloads, calls_by_method)
        row_counts = check_row_counts(scenarios)
        latency = measure_scenarios(scenarios, args.requests, args.loop_seconds)
        concurrent_offsets = workloads["page"][: min(args.requests, 200)]
        concurrent = measure_concurrent_pages(
            server.base_url, concurrent_offsets, args.loop_seconds
        )

    connection.close()
    return {
        "build": build,
        "latency": latency,
        "ratios": compute_ratios(latency),
        "concurrent_pages": concurrent,
        "pandas_read_parquet_ms": pandas_read_ms,
        "row_count_check": row_counts,
        "storage": measure_storage(store),
    }


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    logging.getLogger("sqlstore").setLevel(logging.WARNING)
    logging.getLogger("httpx").setLevel(logging.WARNING)
    args = parse_args(argv)

    started = time.perf_counter()
    load_average_start = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="sqlstore-bench-") as temporary:
        work_dir = Path(temporary)
        root = args.root.resolve() if args.root else work_dir / "store"
        measured = run_benchmark(args, root, work_dir)

    results = {
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "machine": machine_info(),
        "settings": {
            "repeats": args.repeats,
            "requests": args.requests,
            "warmup_calls": WARMUP_CALLS,
            "loop_seconds": args.loop_seconds,
            "server_workers": args.workers,
            "page_size": PAGE_SIZE,
            "entity_count": ENTITY_COUNT,
            "seed": SEED,
        },
        **measured,
        # Load averages over 1, 5 and 15 minutes: values near or above the CPU count mean
        # other processes competed for the CPUs during the run.
        "load_average_start": [round(value, 2) for value in load_average_start],
        "load_average_end": [round(value, 2) for value in os.getloadavg()],
        "elapsed_s": round(time.perf_counter() - started, 1),
    }
    print(render_markdown(results))
    write_results(results, args.output)
    return 0


if __name__ == "__main__":
    sys.exit(main())
