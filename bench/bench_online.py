"""Benchmark of online serving: entity lookups from the in-memory online view.

One run generates (or reuses, with --root) a store with one table of 10,000,000 rows over
100,000 entities, written through FeatureStore, and measures side by side:

1. In-process lookups of 1 and 100 entities: the per-request work of POST /get-online-features
   without HTTP (write stamp check, key conversion, index search, column lists, orjson), and
   the DuckDB path (`sqlstore.lookup.lookup_entities`) as the baseline.
2. Over loopback HTTP with two workers at 16 connections, with wrk: 1-entity and 100-entity
   lookups, and two bare FastAPI endpoints of bench/bare_app.py returning the 1-entity
   response's bytes, in alternating rounds: a GET, and a POST that receives the same requests
   as the 1-entity lookups. A Lua script sends a random entity per request.
3. Memory of the online view in each worker against the size of the Parquet file.

    .venv/bin/python bench/bench_online.py [--root DIR] [--duration S] [--rounds N]
        [--output FILE] [--bare-access-log]
"""

from __future__ import annotations

import argparse
import logging
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import orjson
import pyarrow as pa
from bench_cache import (
    child_cpu_seconds,
    cpu_seconds_delta,
    machine_details,
    parse_wrk_output,
    running_bare_app,
    wait_until_workers_idle,
)
from bench_serving import ServerProcess, running_server

from sqlstore.api.encoding import dumps
from sqlstore.api.online import requested_columns, table_results
from sqlstore.lookup import lookup_entities
from sqlstore.online import OnlineSettings, OnlineStore
from sqlstore.references import resolve_reference
from sqlstore.store import FeatureStore, TableDefinition

logger = logging.getLogger("bench_online")

GROUP = "bench"
NAME = "events"
REFERENCE = f"{GROUP}/{NAME}"
ROWS = 10_000_000
ENTITIES = 100_000
SEED = 20_241_204
CONNECTIONS = 16
WRK_THREADS = 2
WORKERS = 2
IN_PROCESS_CALLS = 2_000
DUCKDB_CALLS = 20
ENDPOINT = "/get-online-features"
DEFAULT_OUTPUT = Path(__file__).resolve().parent / "results" / "online.json"
FEATURES = [f"{REFERENCE}:amount,score,clicks,category"]

# wrk sends a new random entity id (or 100 of them) per request; math.random is seeded per
# thread by wrk.
WRK_SCRIPT = """
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
local count = {count}
local features = '{features}'
request = function()
  local ids = {{}}
  for i = 1, count do ids[i] = math.random(0, {max_id}) end
  local body = '{{"entities": {{"entity_id": [' .. table.concat(ids, ",") .. ']}}, "features": '
    .. features .. '}}'
  return wrk.format(nil, nil, nil, body)
end
"""


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, help="store root to create or reuse")
    parser.add_argument("--duration", type=int, default=10, help="seconds per wrk run")
    parser.add_argument("--rounds", type=int, default=2, help="alternating rounds of wrk runs")
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT, help="JSON result file")
    parser.add_argument(
        "--bare-access-log",
        action="store_true",
        help="run the bare app with uvicorn's access log, to compare with sqlstore's own",
    )
    return parser.parse_args()


def generate_table(rows: int, entities: int) -> pa.Table:
    """Return `rows` rows over `entities` entity ids with unique (id, time) pairs."""
    generator = np.random.default_rng(SEED)
    entity_ids = np.arange(rows, dtype=np.int64) % entities
    generator.shuffle(entity_ids)
    start = int(datetime(2024, 1, 1, tzinfo=UTC).timestamp() * 1_000_000)
    # Row number in microseconds keeps each (entity, time) pair unique.
    times = start + np.arange(rows, dtype=np.int64) * 1_000
    categories = np.array(["a", "b", "c", "d", "e"], dtype=object)
    return pa.table(
        {
            "entity_id": entity_ids,
            "event_timestamp": pa.array(times, pa.timestamp("us", tz="UTC")),
            "amount": generator.normal(100, 15, rows),
            "score": generator.random(rows),
            "clicks": generator.integers(0, 1_000, rows),
            "category": pa.array(categories[generator.integers(0, 5, rows)], pa.string()),
        }
    )


def prepare_store(root: Path) -> FeatureStore:
    store = FeatureStore(root)
    existing = store.registry.find(GROUP, NAME)
    if existing is not None and existing.row_count == ROWS:
        logger.info("reusing %s in %s", REFERENCE, root)
        return store
    started = time.perf_counter()
    table = generate_table(ROWS, ENTITIES)
    store.write(GROUP, NAME, table, definition=TableDefinition(entity_key=["entity_id"]))
    logger.info("wrote %s in %.1f s", REFERENCE, time.perf_counter() - started)
    return store


def time_calls(call: Any, count: int) -> dict[str, float]:
    """Return the p50 and p99 in microseconds of `count` calls."""
    samples = []
    for index in range(count):
        started = time.perf_counter_ns()
        call(index)
        samples.append((time.perf_counter_ns() - started) / 1_000)
    samples.sort()
    return {
        "p50_us": round(statistics.median(samples), 1),
        "p99_us": round(samples[max(math.ceil(len(samples) * 0.99) - 1, 0)], 1),
        "calls": count,
    }


def measure_in_process(store: FeatureStore) -> dict[str, Any]:
    """Time the route's per-request work on a current view, and the DuckDB path."""
    online = OnlineStore(store, OnlineSettings())
    generator = np.random.default_rng(SEED)
    now_us = time.time_ns() // 1_000
    state = online.state(GROUP, NAME, now_us)
    entity_sets = {
        count: [generator.integers(0, ENTITIES, count).tolist() for _ in range(IN_PROCESS_CALLS)]
        for count in (1, 100)
    }

    def online_call(ids: list[int]) -> bytes:
        now = time.time_ns() // 1_000
        view = online.current(GROUP, NAME, now)
        found = online.find(view, {"entity_id": ids}, now)
        names = ["entity_id"]
        columns = requested_columns(view, FEATURES, names)
        results = table_results(found, columns)
        return dumps({"metadata": {"feature_names": names + columns}, "results": results})

    reference = resolve_reference(REFERENCE, store.list_tables())
    results: dict[str, Any] = {
        "view_rows": state.table.num_rows,
        "view_build_seconds": round(state.build_seconds, 3),
    }
    for count, sets in entity_sets.items():
        results[f"online_{count}"] = time_calls(lambda i, s=sets: online_call(s[i]), len(sets))
        results[f"duckdb_{count}"] = time_calls(
            lambda i, s=sets: lookup_entities(store, reference, s[i], datetime.now(UTC)),
            DUCKDB_CALLS,
        )
        online_p50 = results[f"online_{count}"]["p50_us"]
        results[f"duckdb_over_online_{count}"] = round(
            results[f"duckdb_{count}"]["p50_us"] / online_p50, 1
        )
    results["stamp_check"] = time_calls(lambda i: store.registry.write_stamp(GROUP, NAME), 2_000)
    return results


def run_wrk_script(
    server: ServerProcess, url: str, script: Path | None, duration: int
) -> dict[str, Any]:
    """Run wrk against `url` and add the CPU time that the server's worker processes used per
    request. Unlike the request rate, that leaves out time spent waiting for a CPU."""
    command = ["wrk", f"-t{WRK_THREADS}", f"-c{CONNECTIONS}", f"-d{duration}s", "--latency"]
    if script is not None:
        command += ["-s", str(script)]
    cpu_before = child_cpu_seconds(server.process.pid)
    completed = subprocess.run(
        [*command, url], capture_output=True, text=True, timeout=duration + 60, check=False
    )
    cpu = cpu_seconds_delta(cpu_before, child_cpu_seconds(server.process.pid))
    if completed.returncode != 0:
        raise RuntimeError(f"wrk failed: {completed.stderr}")
    result = parse_wrk_output(completed.stdout)
    requests = result["requests_per_second"] * duration
    result["server_cpu_us_per_request"] = round(sum(cpu.values()) / max(requests, 1) * 1e6, 1)
    return result


def write_script(work_dir: Path, count: int) -> Path:
    path = work_dir / f"lookup_{count}.lua"
    features = orjson.dumps(FEATURES).decode()
    path.write_text(WRK_SCRIPT.format(count=count, features=features, max_id=ENTITIES - 1))
    return path


def worker_memory(base_url: str) -> list[dict[str, Any]]:
    """Return GET /online of each worker, requested over new connections until every worker
    has replied."""
    seen: dict[int, dict[str, Any]] = {}
    for _ in range(200):
        state = httpx.get(base_url + "/online", timeout=30).json()
        seen[state["worker_pid"]] = state
        if len(seen) == WORKERS:
            break
    return [
        {
            "worker_pid": pid,
            "view_bytes": state["memory_used_bytes"],
            "views": [
                {key: view.get(key) for key in ("table", "state", "rows", "memory_bytes")}
                for view in state["views"]
            ],
        }
        for pid, state in seen.items()
    ]


def measure_http(root: Path, work_dir: Path, args: argparse.Namespace) -> dict[str, Any]:
    """Run alternating wrk rounds against the server and the bare app."""
    os.environ["SQLSTORE_ONLINE_LOAD"] = "eager"
    scripts = {count: write_script(work_dir, count) for count in (1, 100)}
    runs: dict[str, list[dict[str, Any]]] = {
        "bare": [],
        "bare_post": [],
        "online_1": [],
        "online_100": [],
    }
    with running_server(root, WORKERS, work_dir) as server:
        body = {"entities": {"entity_id": [7]}, "features": FEATURES}
        response = httpx.post(server.base_url + ENDPOINT, json=body, timeout=60)
        response.raise_for_status()
        body_file = work_dir / "body.json"
        body_file.write_bytes(response.content)
        memory = worker_memory(server.base_url)
        wait_until_workers_idle(server, WORKERS)
        with running_bare_app(body_file, WORKERS, work_dir, args.bare_access_log) as bare:
            wait_until_workers_idle(bare, WORKERS)
            bare_url = bare.base_url + "/features/content/movie_ratings"
            bare_post_url = bare.base_url + "/post/features/content/movie_ratings"
            for _ in range(args.rounds):
                runs["bare"].append(run_wrk_script(bare, bare_url, None, args.duration))
                # The same POST requests as the 1-entity lookups, served with fixed bytes.
                runs["bare_post"].append(
                    run_wrk_script(bare, bare_post_url, scripts[1], args.duration)
                )
                for count in (1, 100):
                    url = server.base_url + ENDPOINT
                    runs[f"online_{count}"].append(
                        run_wrk_script(server, url, scripts[count], args.duration)
                    )
                logger.info(
                    "round done: %s", {k: v[-1]["requests_per_second"] for k, v in runs.items()}
                )
    summary = {name: _median_run(results) for name, results in runs.items()}
    bare_rate = summary["bare"]["requests_per_second"]
    summary["online_1_share_of_bare"] = round(
        summary["online_1"]["requests_per_second"] / bare_rate, 3
    )
    summary["online_1_share_of_bare_post"] = round(
        summary["online_1"]["requests_per_second"] / summary["bare_post"]["requests_per_second"], 3
    )
    return {
        "runs": runs,
        "summary": summary,
        "memory": memory,
        "sqlstore_access_log": os.environ.get("SQLSTORE_ACCESS_LOG", "true"),
        "bare_access_log": args.bare_access_log,
    }


def _median_run(results: list[dict[str, Any]]) -> dict[str, Any]:
    keys = ("requests_per_second", "p50_ms", "p99_ms", "errors", "server_cpu_us_per_request")
    return {key: statistics.median(run.get(key, 0) for run in results) for key in keys}


def main() -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    args = parse_args()
    with tempfile.TemporaryDirectory(prefix="bench_online_") as temporary:
        work_dir = Path(temporary)
        root = args.root or work_dir / "store"
        load_before = os.getloadavg()
        store = prepare_store(root)
        entry = store.registry.get(GROUP, NAME)
        results: dict[str, Any] = {
            "machine": machine_details("wrk"),
            "command": " ".join(sys.argv),
            "table": {"rows": entry.row_count, "parquet_bytes": entry.storage.bytes_on_disk},
            "load_average_before": load_before,
        }
        results["in_process"] = measure_in_process(store)
        store.catalog.close()
        results["http"] = measure_http(root, work_dir, args)
        results["load_average_after"] = os.getloadavg()
    output = args.output
    output.write_bytes(orjson.dumps(results, option=orjson.OPT_INDENT_2))
    sys.stdout.write(orjson.dumps(results, option=orjson.OPT_INDENT_2).decode() + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
