"""Benchmark of the read-only SQL endpoint: validation overhead and end-to-end /sql latency.

One run builds the MovieLens demo store (or uses --root), then measures:

- validation of a 20-line analyst query (both parsers) in this process: cold, with the
  validator's caches cleared before every run, and warm, when the same text was validated
  before. Also new texts as the server validates them, with DuckDB's checks in a worker;
- end-to-end POST /sql over loopback HTTP (keep-alive, sequential; with httpx, with the
  standard library's http.client, and with a client that sends each request in one write)
  against a `python -m sqlstore serve` process, for aggregates over
  interaction.user_movie_interactions, next to the same query in DuckDB in this process over a
  view of the same Parquet file, run with `execute().fetchall()` and with the relation API and
  Arrow;
- the fixed costs: POST /sql of `SELECT 1`, and a POST to bench/bare_app.py, the HTTP floor.

It prints Markdown tables and writes the results with machine details as JSON.

    .venv/bin/python bench/bench_sql.py [--root DIR] [--repeats N] [--output FILE]
"""

from __future__ import annotations

import argparse
import functools
import http.client
import json
import logging
import os
import platform
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

import duckdb
import httpx
import orjson
from bench_cache import GROUP as BARE_GROUP
from bench_cache import NAME as BARE_NAME
from bench_cache import running_bare_app

from sqlstore.demo import build_demo_store
from sqlstore.identifiers import quote_string
from sqlstore.sql import duckdb_check, validate
from sqlstore.sql.limits import SqlLimits
from sqlstore.sql.service import SqlService
from sqlstore.sql.validate import analyse_query, validate_query
from sqlstore.store import FeatureStore

logger = logging.getLogger("bench_sql")

DEFAULT_OUTPUT = Path(__file__).resolve().parent / "results" / "sql.json"
HOST = "127.0.0.1"
SERVER_START_TIMEOUT_SECONDS = 60
BARE_TABLE = f"{BARE_GROUP}/{BARE_NAME}"

ANALYST_QUERY = """
WITH recent AS (
    SELECT user_id, movie_id, rating, event_timestamp,
           row_number() OVER (PARTITION BY user_id ORDER BY event_timestamp DESC) AS position
    FROM interaction.user_movie_interactions
    WHERE event_timestamp >= TIMESTAMP '2010-01-01'
),
genre_counts AS (
    SELECT r.user_id, g.genre, count(*) AS ratings, avg(r.rating) AS mean
    FROM recent AS r
    JOIN (SELECT movie_id, unnest(genres) AS genre FROM content.movie_genres) AS g USING (movie_id)
    WHERE r.position <= 50
    GROUP BY ALL
)
SELECT user_id, genre, ratings,
       round(mean, 2) AS mean_rating
FROM genre_counts
WHERE ratings >= $min_ratings
QUALIFY rank() OVER (PARTITION BY user_id ORDER BY ratings DESC) = 1
ORDER BY user_id, genre
LIMIT 100
""".strip()

END_TO_END_QUERIES = {
    "one-row aggregate": (
        "SELECT count(*) AS ratings, avg(rating) AS mean_rating "
        "FROM interaction.user_movie_interactions"
    ),
    "per-user aggregate (671 rows)": (
        "SELECT user_id, count(*) AS ratings, avg(rating) AS mean_rating "
        "FROM interaction.user_movie_interactions GROUP BY user_id ORDER BY user_id"
    ),
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, help="existing demo store; default: build one")
    parser.add_argument("--repeats", type=int, default=200, help="timed runs per measurement")
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT, help="JSON result file")
    return parser.parse_args(argv)


def median_ms(run: Callable[[], object], repeats: int, before: Callable[[], None] | None) -> float:
    """Return the median wall time of `run` in milliseconds; `before` runs untimed each time."""
    samples = []
    for _ in range(repeats):
        if before is not None:
            before()
        started = time.perf_counter()
        run()
        samples.append((time.perf_counter() - started) * 1000)
    return statistics.median(samples)


def clear_validation_caches() -> None:
    analyse_query.cache_clear()
    duckdb_check.clear_caches()


def measure_validation(store: FeatureStore, repeats: int) -> dict[str, Any]:
    entries = store.registry.list()
    views = [(entry.group, entry.name) for entry in entries]
    parameters = {"min_ratings": 3}

    def validate() -> None:
        validate_query(ANALYST_QUERY, views, parameters)

    validate()
    cold = median_ms(validate, repeats, before=clear_validation_caches)
    warm = median_ms(validate, repeats, before=None)
    return {
        "query_lines": len(ANALYST_QUERY.splitlines()),
        "cold_median_ms": cold,
        "warm_median_ms": warm,
        "service_cold_median_ms": measure_service_validation(store, repeats, parameters),
        "target_ms": 1.0,
        "cold_stage_median_ms": measure_validation_stages(repeats),
    }


def measure_service_validation(
    store: FeatureStore, repeats: int, parameters: dict[str, Any]
) -> float:
    """Return the median time of `SqlService.prepare` for texts it has not seen, as the server
    validates them: sqlglot's checks in this process while an idle worker process applies
    DuckDB's. Each text is the analyst query with a comment line of its own, so that it is in
    no cache of either process."""
    service = SqlService(store, SqlLimits())
    try:
        service.run("SELECT 1")
        texts = iter(f"{ANALYST_QUERY}\n-- run {index}" for index in range(repeats + 1))
        return median_ms(lambda: service.prepare(next(texts), parameters), repeats, before=None)
    finally:
        service.close()


def measure_validation_stages(repeats: int) -> dict[str, float]:
    """Return the median time of each step of a cold validation, in milliseconds.

    The steps call the validator's private functions in the order validate_query runs them,
    without the caches and without the checks against the registered views and parameters.
    """
    limits = SqlLimits()
    samples: dict[str, list[float]] = {}

    def timed(name: str, function: Callable[..., Any], *arguments: Any) -> Any:
        started = time.perf_counter()
        result = function(*arguments)
        samples.setdefault(name, []).append((time.perf_counter() - started) * 1000)
        return result

    for _ in range(repeats):
        clear_validation_caches()
        timed("character check", validate.check_text, ANALYST_QUERY, limits)
        statement = timed("sqlglot parse", validate._parse_one_statement, ANALYST_QUERY)
        timed("sqlglot walk", validate._QueryWalker(ANALYST_QUERY).check, statement)
        text = timed("DuckDB json_serialize_sql", duckdb_check.serialized_tree, ANALYST_QUERY)
        document = timed("orjson.loads", orjson.loads, text)
        checker = duckdb_check._TreeChecker(ANALYST_QUERY, limits, None)
        timed("DuckDB tree walk", checker.check, document["statements"][0])
        timed("canonical form", duckdb_check.SOURCE_POSITION_PATTERN.sub, "", text)
    return {name: statistics.median(values) for name, values in samples.items()}


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        return sock.getsockname()[1]


@contextmanager
def running_server(root: Path, log_path: Path) -> Iterator[str]:
    port = free_port()
    # Without --no-cache every request after the first would be a result-cache hit.
    command = [
        *(sys.executable, "-m", "sqlstore", "serve", "--root", str(root)),
        *("--port", str(port), "--no-cache"),
    ]
    environment = {**os.environ, "SQLSTORE_SQL_WORKERS": "1"}
    with log_path.open("wb") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=environment)
    base_url = f"http://{HOST}:{port}"
    try:
        wait_for_health(base_url, process)
        yield base_url
    finally:
        process.terminate()
        process.wait(timeout=30)


def wait_for_health(base_url: str, process: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + SERVER_START_TIMEOUT_SECONDS
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"server exited with {process.returncode}")
        try:
            if httpx.get(f"{base_url}/health", timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"server did not answer within {SERVER_START_TIMEOUT_SECONDS} s")


def in_process_connection(store: FeatureStore) -> duckdb.DuckDBPyConnection:
    """A DuckDB connection with the same view the server's sandbox builds."""
    entry = store.registry.get("interaction", "user_movie_interactions")
    path = quote_string(str(store.root / entry.path))
    connection = duckdb.connect(config={"threads": 2})
    connection.execute("SET TimeZone = 'UTC'")
    connection.execute("CREATE SCHEMA interaction")
    connection.execute(
        f"CREATE VIEW interaction.user_movie_interactions AS SELECT * FROM read_parquet({path})"
    )
    return connection


def measure_end_to_end(store: FeatureStore, repeats: int, log_path: Path) -> list[dict[str, Any]]:
    """Time each query through /sql with httpx, http.client and `OneWriteConnection`, and in
    DuckDB in this process two ways, side by side: each round runs every client once,
    so that a change in the machine's load affects all of them alike."""
    connection = in_process_connection(store)
    results = []
    with (
        running_server(store.root, log_path) as base_url,
        httpx.Client(base_url=base_url) as httpx_client,
        stdlib_connection(base_url) as stdlib,
        one_write_connection(base_url) as one_write,
    ):
        for label, sql in END_TO_END_QUERIES.items():
            clients = {
                "http": functools.partial(post_sql, httpx_client, sql),
                "stdlib_http": functools.partial(post_sql_stdlib, stdlib, sql),
                "one_write_http": functools.partial(post_sql_one_write, one_write, sql),
                "duckdb_execute": functools.partial(execute_in_process, connection, sql),
                "duckdb_relation": functools.partial(run_in_process, connection, sql),
            }
            samples = interleaved_samples(clients, repeats)
            row: dict[str, Any] = {"query": label, "sql": sql}
            for name, values in samples.items():
                row[f"{name}_median_ms"] = statistics.median(values)
            duckdb_ms = row["duckdb_execute_median_ms"]
            row["ratio"] = row["http_median_ms"] / duckdb_ms
            row["stdlib_ratio"] = row["stdlib_http_median_ms"] / duckdb_ms
            row["one_write_ratio"] = row["one_write_http_median_ms"] / duckdb_ms
            row["relation_stdlib_ratio"] = (
                row["stdlib_http_median_ms"] / row["duckdb_relation_median_ms"]
            )
            row["target_ratio"] = 1.5
            results.append(row)
    return results


def interleaved_samples(
    clients: dict[str, Callable[[], object]], repeats: int
) -> dict[str, list[float]]:
    """Return `repeats` wall times in milliseconds per client, after 5 untimed rounds."""
    for _ in range(5):
        for run in clients.values():
            run()
    samples: dict[str, list[float]] = {name: [] for name in clients}
    for _ in range(repeats):
        for name, run in clients.items():
            started = time.perf_counter()
            run()
            samples[name].append((time.perf_counter() - started) * 1000)
    return samples


def measure_fixed_costs(store: FeatureStore, repeats: int, log_dir: Path) -> dict[str, float]:
    """Return what any /sql request costs besides its query, and the floor of the HTTP part.

    - `sql_select_1_ms`: POST /sql of `SELECT 1` with http.client: HTTP, routing, a validation
      cache hit, the pipe to the worker process and back, and DuckDB's cost for any statement;
    - `duckdb_select_1_ms`: `SELECT 1` in DuckDB in this process, which the ratio already has;
    - `bare_post_ms`: a POST to the bare FastAPI app of bench_cache.py that returns fixed bytes,
      with http.client: the HTTP round trip alone.

    The `_one_write` variants send the same requests with `OneWriteConnection`.
    """
    connection = in_process_connection(store)
    with (
        running_server(store.root, log_dir / "fixed_costs.log") as base_url,
        stdlib_connection(base_url) as stdlib,
        one_write_connection(base_url) as one_write,
    ):
        select_1 = functools.partial(post_sql_stdlib, stdlib, "SELECT 1 AS one")
        response = select_1()
        sql_ms = warm_median_ms(select_1, repeats)
        one_write_ms = warm_median_ms(
            functools.partial(post_sql_one_write, one_write, "SELECT 1 AS one"), repeats
        )
    duckdb_ms = warm_median_ms(
        functools.partial(execute_in_process, connection, "SELECT 1"), repeats
    )

    body_file = log_dir / "select_1.json"
    body_file.write_bytes(response)
    path = f"/post/features/{BARE_TABLE}"
    with (
        running_bare_app(body_file, 1, log_dir) as bare,
        stdlib_connection(bare.base_url) as raw,
        one_write_connection(bare.base_url) as raw_one_write,
    ):
        bare_ms = warm_median_ms(functools.partial(post_stdlib, raw, path, b"{}"), repeats)
        bare_one_write_ms = warm_median_ms(
            functools.partial(raw_one_write.post, path, b"{}"), repeats
        )
    return {
        "sql_select_1_ms": sql_ms,
        "sql_select_1_one_write_ms": one_write_ms,
        "duckdb_select_1_ms": duckdb_ms,
        "bare_post_ms": bare_ms,
        "bare_post_one_write_ms": bare_one_write_ms,
    }


def warm_median_ms(run: Callable[[], object], repeats: int) -> float:
    for _ in range(5):
        run()
    return median_ms(run, repeats, before=None)


def post_sql(client: httpx.Client, sql: str) -> None:
    """Send the query and decode the JSON rows, as a client would."""
    response = client.post("/sql", json={"sql": sql})
    response.raise_for_status()
    response.json()


@contextmanager
def stdlib_connection(base_url: str) -> Iterator[http.client.HTTPConnection]:
    """Yield a keep-alive connection of the standard library's client, which costs less per
    request than httpx.

    The socket gets TCP_NODELAY, as httpx and urllib3 (requests) set it on theirs. http.client
    sends a request's headers and body in two writes, so without it Nagle's algorithm may
    delay the body until the server acknowledges the headers. No median here moved by more
    than the noise with it.
    """
    host, port = base_url.removeprefix("http://").split(":")
    connection = http.client.HTTPConnection(host, int(port), timeout=60)
    connection.connect()
    connection.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    try:
        yield connection
    finally:
        connection.close()


def post_stdlib(connection: http.client.HTTPConnection, path: str, body: bytes) -> bytes:
    connection.request("POST", path, body, {"Content-Type": "application/json"})
    response = connection.getresponse()
    content = response.read()
    if response.status != 200:
        raise RuntimeError(f"POST {path} returned {response.status}: {content[:200]!r}")
    return content


def post_sql_stdlib(connection: http.client.HTTPConnection, sql: str) -> bytes:
    """Send the query with http.client and decode the JSON rows."""
    content = post_stdlib(connection, "/sql", orjson.dumps({"sql": sql}))
    orjson.loads(content)
    return content


class OneWriteConnection:
    """A keep-alive HTTP/1.1 connection that sends each request in one write and reads
    responses that have a Content-Length, as load generators such as wrk do.

    It shows the server's share of a request. http.client costs more per request in the
    client process, building and parsing messages in Python, and it writes the headers and the
    body separately, so the server wakes twice per request (docs/benchmarks.md has the
    difference).
    """

    def __init__(self, base_url: str) -> None:
        host, port = base_url.removeprefix("http://").split(":")
        self.host = host
        self.sock = socket.create_connection((host, int(port)), timeout=60)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.reader = self.sock.makefile("rb")

    def close(self) -> None:
        self.reader.close()
        self.sock.close()

    def post(self, path: str, body: bytes) -> bytes:
        """Send a JSON POST and return the body of its 200 response."""
        head = (
            f"POST {path} HTTP/1.1\r\nHost: {self.host}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
        )
        self.sock.sendall(head.encode() + body)

        status_line = self.reader.readline()
        length = None
        while (line := self.reader.readline()) not in (b"\r\n", b""):
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value)
        if length is None:
            raise RuntimeError(f"POST {path}: the response has no Content-Length")
        content = self.reader.read(length)
        if status_line.split()[1:2] != [b"200"]:
            raise RuntimeError(f"POST {path} returned {status_line!r}: {content[:200]!r}")
        return content


@contextmanager
def one_write_connection(base_url: str) -> Iterator[OneWriteConnection]:
    connection = OneWriteConnection(base_url)
    try:
        yield connection
    finally:
        connection.close()


def post_sql_one_write(connection: OneWriteConnection, sql: str) -> bytes:
    """Send the query in one write and decode the JSON rows."""
    content = connection.post("/sql", orjson.dumps({"sql": sql}))
    orjson.loads(content)
    return content


def execute_in_process(connection: duckdb.DuckDBPyConnection, sql: str) -> None:
    """Run the query on a fresh cursor and fetch its rows as Python tuples: DuckDB's DB-API,
    the quickest way to Python values for small results."""
    cursor = connection.cursor()
    cursor.execute(sql).fetchall()
    cursor.close()


def run_in_process(connection: duckdb.DuckDBPyConnection, sql: str) -> None:
    """Run the query on a fresh cursor through the relation API and Arrow, and turn the rows
    into Python values."""
    cursor = connection.cursor()
    cursor.sql(sql).to_arrow_table().to_pylist()
    cursor.close()


def machine() -> dict[str, Any]:
    return {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "load_average": os.getloadavg(),
        "duckdb": duckdb.__version__,
        "sqlglot": metadata.version("sqlglot"),
    }


def print_tables(
    validation: dict[str, Any], end_to_end: list[dict[str, Any]], fixed_costs: dict[str, float]
) -> None:
    lines = [
        f"Validation of a {validation['query_lines']}-line analyst query (median)",
        "",
        "| case | median ms | target ms |",
        "| --- | ---: | ---: |",
        f"| cold (caches cleared) | {validation['cold_median_ms']:.3f} | 1.0 |",
        f"| warm (same text again) | {validation['warm_median_ms']:.3f} | 1.0 |",
        f"| new text, as the server validates it | {validation['service_cold_median_ms']:.3f} "
        "| 1.0 |",
        "",
        "Steps of a cold validation (median)",
        "",
        "| step | median ms |",
        "| --- | ---: |",
        *(
            f"| {name} | {milliseconds:.3f} |"
            for name, milliseconds in validation["cold_stage_median_ms"].items()
        ),
        "",
        "End-to-end POST /sql against DuckDB in process (median)",
        "",
        "| query | /sql httpx ms | /sql http.client ms | /sql one write ms | DuckDB execute ms "
        "| DuckDB relation ms | ratios to execute | ratio to relation | target |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for row in end_to_end:
        lines.append(
            f"| {row['query']} | {row['http_median_ms']:.2f} | "
            f"{row['stdlib_http_median_ms']:.2f} | {row['one_write_http_median_ms']:.2f} | "
            f"{row['duckdb_execute_median_ms']:.2f} | {row['duckdb_relation_median_ms']:.2f} | "
            f"{row['ratio']:.2f}x, {row['stdlib_ratio']:.2f}x, {row['one_write_ratio']:.2f}x | "
            f"{row['relation_stdlib_ratio']:.2f}x | 1.5x |"
        )
    lines += [
        "",
        "Fixed costs (median)",
        "",
        "| request | ms |",
        "| --- | ---: |",
        *(f"| {name} | {milliseconds:.3f} |" for name, milliseconds in fixed_costs.items()),
    ]
    sys.stdout.write("\n".join(lines) + "\n")


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.WARNING)
    args = parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="sqlstore-bench-sql-") as work:
        work_dir = Path(work)
        root = args.root or work_dir / "store"
        store = FeatureStore(root)
        if not store.registry.list():
            build_demo_store(store)

        validation = measure_validation(store, args.repeats)
        end_to_end = measure_end_to_end(store, args.repeats, work_dir / "server.log")
        fixed_costs = measure_fixed_costs(store, args.repeats, work_dir)

    print_tables(validation, end_to_end, fixed_costs)
    result = {
        "recorded_at": datetime.now(UTC).isoformat(),
        "machine": machine(),
        "repeats": args.repeats,
        "validation": validation,
        "end_to_end": end_to_end,
        "fixed_costs": fixed_costs,
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
