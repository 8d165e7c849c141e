"""Load test of `sqlstore serve --workers 2` on the MovieLens demo store, over loopback.

A seeded mixed workload runs from asyncio tasks, one keep-alive httpx connection each:

- `page`: GET of one of PAGE_URLS fixed pages of the demo tables (cached after the first fetch),
- `batch`: POST /features/batch of 20 random movie or user ids over two tables,
- `sql`: POST /sql with an aggregate over one random movie's ratings,
- `write`: POST of 10 new rows appended to a scratch table.

It records each request's latency and status. It samples the summed resident memory (RSS) of
the server process and all its descendants (uvicorn workers and SQL worker processes). After
the run it checks that the scratch table contains each acknowledged row once, and rows of writes
that got no response at most once. It prints Markdown and writes JSON. The short run tests 64
connections; `--soak` runs longer at lower concurrency and reports RSS over time, to show
whether memory stays bounded.

    .venv/bin/python bench/load_test.py [--root DIR] [--connections 64] [--duration 60]
    .venv/bin/python bench/load_test.py --soak --connections 16 --duration 600

The load generator shares the machine with the server, so on a 2-core machine it takes about
one core: the throughput figures are lower bounds of what the server alone could do.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import random
import subprocess
import sys
import tempfile
import threading
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pyarrow.parquet as pq
from bench_cache import load_average, run_on_uvloop
from bench_serving import HOST, machine_info, running_server, summarize, write_results

logger = logging.getLogger("load_test")

BENCH_DIR = Path(__file__).resolve().parent
SEED = 20_240_601
REQUEST_TIMEOUT_SECONDS = 60.0
# Share of each request type in the workload; the rest of the weight is page reads.
MIX = {"page": 0.85, "batch": 0.10, "sql": 0.03, "write": 0.02}
PAGE_TABLES = (
    "content/movie_genres",
    "content/movie_ratings",
    "content/movie_popularity",
    "user/user_preferences",
    "user/user_activity",
    "interaction/user_movie_interactions",
)
PAGES_PER_TABLE = 10
PAGE_LIMIT = 20
BATCH_ENTITIES = 20
BATCH_FEATURES = {
    "movie": ["content/movie_genres", "content/movie_popularity"],
    "user": ["user/user_preferences", "user/user_activity"],
}
SQL = (
    "SELECT movie_id, count(*) AS ratings, avg(rating) AS mean_rating "
    "FROM interaction.user_movie_interactions WHERE movie_id = $movie GROUP BY movie_id"
)
SCRATCH_TABLE = "scratch/load_events"
ROWS_PER_WRITE = 10


@dataclass
class Recorder:
    """Latencies and failures per request type, and the acknowledged scratch ids."""

    latencies_ms: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))
    errors: dict[str, list[str]] = field(default_factory=lambda: defaultdict(list))
    written_ids: list[int] = field(default_factory=list)
    # Rows of writes that failed or got no response: they may or may not be stored.
    unconfirmed_ids: list[int] = field(default_factory=list)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, help="demo store root; built when missing")
    parser.add_argument("--workers", type=int, default=2, help="server worker processes")
    parser.add_argument("--connections", type=int, default=64, help="concurrent connections")
    parser.add_argument("--duration", type=float, default=60.0, help="seconds of load")
    parser.add_argument(
        "--sample-seconds", type=float, default=0.5, help="seconds between RSS samples"
    )
    parser.add_argument("--soak", action="store_true", help="label the run as a soak run")
    parser.add_argument("--output", type=Path, help="JSON output file")
    return parser.parse_args(argv)


def ensure_demo_store(root: Path) -> None:
    """Build the demo store with `sqlstore demo` unless `root` already contains it."""
    if (root / "registry" / "content" / "movie_genres.json").exists():
        return
    logger.info("building the demo store in %s", root)
    command = [sys.executable, "-m", "sqlstore", "demo", "--root", str(root)]
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL)


# Memory of the server's process tree


def process_tree(pid: int) -> list[int]:
    """Return `pid` and all its descendants, read from /proc (Linux).

    /proc lists children per thread, and the SQL worker processes are started from request
    threads, so every thread's list is read.
    """
    tree = [pid]
    index = 0
    while index < len(tree):
        for children in Path(f"/proc/{tree[index]}/task").glob("*/children"):
            try:
                tree.extend(int(child) for child in children.read_text().split())
            except OSError:
                continue
        index += 1
    return tree


def resident_bytes(pid: int) -> int:
    """Return the resident set size of one process, or 0 when it has exited."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return 0
    for line in status.splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def command_line(pid: int) -> str:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return "?"
    return raw.replace(b"\0", b" ").decode(errors="replace").strip()[:120]


class MemorySampler(threading.Thread):
    """Samples the summed RSS of a process tree every `interval` seconds until stopped."""

    def __init__(self, pid: int, interval: float) -> None:
        super().__init__(daemon=True)
        self.pid = pid
        self.interval = interval
        self.samples: list[tuple[float, int, int]] = []
        # Peak RSS of each process: pid -> (command line, bytes).
        self.peaks: dict[int, tuple[str, int]] = {}
        self._stop_event = threading.Event()
        self._started_at = time.monotonic()

    def run(self) -> None:
        while not self._stop_event.is_set():
            tree = process_tree(self.pid)
            sizes = {pid: resident_bytes(pid) for pid in tree}
            total = sum(sizes.values())
            self.samples.append((time.monotonic() - self._started_at, total, len(tree)))
            for pid, size in sizes.items():
                if size > self.peaks.get(pid, ("", 0))[1]:
                    self.peaks[pid] = (command_line(pid), size)
            self._stop_event.wait(self.interval)

    def stop(self) -> None:
        self._stop_event.set()
        self.join()


# The workload


def page_urls() -> list[str]:
    return [
        f"/features/{table}?limit={PAGE_LIMIT}&offset={PAGE_LIMIT * page}"
        for table in PAGE_TABLES
        for page in range(PAGES_PER_TABLE)
    ]


def entity_ids(root: Path) -> dict[str, list[int]]:
    """Return the movie and user ids of the demo store, read straight from its Parquet."""
    movies = pq.read_table(root / "features" / "content" / "movie_genres.parquet")
    users = pq.read_table(root / "features" / "user" / "user_activity.parquet")
    return {
        "movie": sorted(set(movies["movie_id"].to_pylist())),
        "user": sorted(set(users["user_id"].to_pylist())),
    }


async def send_one(
    client: httpx.AsyncClient,
    kind: str,
    rng: random.Random,
    context: dict[str, Any],
    recorder: Recorder,
) -> None:
    written: list[int] = []
    started = time.perf_counter()
    try:
        if kind == "page":
            response = await client.get(rng.choice(context["pages"]))
        elif kind == "batch":
            entity = rng.choice(("movie", "user"))
            body = {
                "feature_names": BATCH_FEATURES[entity],
                "entity_ids": rng.sample(context["ids"][entity], BATCH_ENTITIES),
            }
            response = await client.post("/features/batch", json=body)
        elif kind == "sql":
            movie = rng.choice(context["ids"]["movie"])
            response = await client.post("/sql", json={"sql": SQL, "params": {"movie": movie}})
        else:
            first = next(context["write_ids"]) * ROWS_PER_WRITE
            written = list(range(first, first + ROWS_PER_WRITE))
            records = [{"entity_id": i, "value": i * 0.5} for i in written]
            body = {"mode": "append", "records": records}
            response = await client.post(f"/features/{SCRATCH_TABLE}", json=body)
    except httpx.HTTPError as error:
        recorder.errors[kind].append(repr(error))
        recorder.unconfirmed_ids.extend(written)
        return

    elapsed_ms = (time.perf_counter() - started) * 1000
    if response.status_code != 200:
        recorder.errors[kind].append(f"{response.status_code} {response.text[:200]}")
        recorder.unconfirmed_ids.extend(written)
        return
    recorder.latencies_ms[kind].append(elapsed_ms)
    recorder.written_ids.extend(written)


async def connection_loop(
    base_url: str,
    seed: int,
    deadline: float,
    context: dict[str, Any],
    recorder: Recorder,
) -> None:
    rng = random.Random(seed)
    kinds, weights = zip(*MIX.items(), strict=True)
    limits = httpx.Limits(max_connections=1, max_keepalive_connections=1)
    timeout = httpx.Timeout(REQUEST_TIMEOUT_SECONDS)
    async with httpx.AsyncClient(base_url=base_url, limits=limits, timeout=timeout) as client:
        while time.monotonic() < deadline:
            kind = rng.choices(kinds, weights)[0]
            await send_one(client, kind, rng, context, recorder)


async def run_load(
    base_url: str, connections: int, duration: float, context: dict[str, Any]
) -> tuple[Recorder, float]:
    recorder = Recorder()
    started = time.monotonic()
    deadline = started + duration
    tasks = [
        connection_loop(base_url, SEED + number, deadline, context, recorder)
        for number in range(connections)
    ]
    await asyncio.gather(*tasks)
    return recorder, time.monotonic() - started


def check_scratch_table(root: Path, recorder: Recorder) -> dict[str, Any]:
    """Check the scratch table's file: every acknowledged row once, and no row that was never
    sent. Rows of unconfirmed writes may be present or absent."""
    group, name = SCRATCH_TABLE.split("/")
    stored = pq.read_table(root / "features" / group / f"{name}.parquet", columns=["entity_id"])
    ids = stored["entity_id"].to_pylist()
    acknowledged = set(recorder.written_ids)
    unconfirmed = set(recorder.unconfirmed_ids)
    return {
        "acknowledged_rows": len(acknowledged),
        "unconfirmed_rows": len(unconfirmed),
        "stored_rows": len(ids),
        "duplicate_rows": len(ids) - len(set(ids)),
        "missing_acknowledged_rows": len(acknowledged - set(ids)),
        "unexpected_rows": len(set(ids) - acknowledged - unconfirmed),
        "ok": len(ids) == len(set(ids)) and acknowledged <= set(ids) <= acknowledged | unconfirmed,
    }


def summarize_run(recorder: Recorder, wall_seconds: float) -> dict[str, Any]:
    by_type = {}
    for kind in MIX:
        latencies = recorder.latencies_ms.get(kind, [])
        summary = summarize(latencies) if latencies else {"n": 0}
        summary["errors"] = len(recorder.errors.get(kind, []))
        summary["requests_per_second"] = round(len(latencies) / wall_seconds, 1)
        by_type[kind] = summary
    everything = [value for values in recorder.latencies_ms.values() for value in values]
    total = summarize(everything)
    total["errors"] = sum(len(errors) for errors in recorder.errors.values())
    total["requests_per_second"] = round(len(everything) / wall_seconds, 1)
    by_type["all"] = total
    return by_type


def summarize_memory(
    samples: list[tuple[float, int, int]], peaks: dict[int, tuple[str, int]]
) -> dict[str, Any]:
    mib = 1024 * 1024
    peak = max(samples, key=lambda sample: sample[1])
    # One figure per tenth of the run, the maximum within it, to show the trend.
    span = samples[-1][0] or 1.0
    deciles: dict[int, int] = {}
    for seconds, total, _ in samples:
        decile = min(int(10 * seconds / span), 9)
        deciles[decile] = max(deciles.get(decile, 0), total)
    return {
        "peak_mib": round(peak[1] / mib, 1),
        "peak_at_seconds": round(peak[0], 1),
        "processes": peak[2],
        "first_sample_mib": round(samples[0][1] / mib, 1),
        "last_sample_mib": round(samples[-1][1] / mib, 1),
        "max_per_tenth_mib": [round(deciles[d] / mib, 1) for d in sorted(deciles)],
        "samples": len(samples),
        "peak_mib_by_process": {
            f"{pid} {command}": round(size / mib, 1) for pid, (command, size) in peaks.items()
        },
    }


def render_markdown(results: dict[str, Any]) -> str:
    lines = [
        "| request | n | errors | req/s | p50 ms | p99 ms | max ms |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for kind, summary in results["by_type"].items():
        lines.append(
            f"| {kind} | {summary['n']:,} | {summary['errors']} | "
            f"{summary['requests_per_second']:,} | {summary.get('p50_ms', '-')} | "
            f"{summary.get('p99_ms', '-')} | {summary.get('max_ms', '-')} |"
        )
    memory = results["memory"]
    lines.append("")
    lines.append(
        f"Server RSS (sum over {memory['processes']} processes): peak {memory['peak_mib']} MiB "
        f"at {memory['peak_at_seconds']} s; first sample {memory['first_sample_mib']} MiB, "
        f"last {memory['last_sample_mib']} MiB; maximum per tenth of the run: "
        f"{memory['max_per_tenth_mib']}"
    )
    lines.append(f"Scratch table check: {results['scratch_table']}")
    lines.append(f"Load average before {results['load_before']}, after {results['load_after']}")
    return "\n".join(lines)


def run(args: argparse.Namespace, root: Path, work_dir: Path) -> dict[str, Any]:
    ensure_demo_store(root)
    context = {
        "pages": page_urls(),
        "ids": entity_ids(root),
        "write_ids": iter(range(10**9)),
    }
    load_before = load_average()

    with running_server(root, args.workers, work_dir) as server:
        # A store reused from an earlier run keeps its scratch rows, which this run did not write.
        httpx.delete(f"{server.base_url}/features/{SCRATCH_TABLE}", timeout=REQUEST_TIMEOUT_SECONDS)
        sampler = MemorySampler(server.process.pid, args.sample_seconds)
        sampler.start()
        try:
            recorder, wall_seconds = run_on_uvloop(
                run_load(server.base_url, args.connections, args.duration, context)
            )
        finally:
            sampler.stop()
        scratch = check_scratch_table(root, recorder) if recorder.written_ids else {"ok": True}
        error_examples = {kind: errors[:5] for kind, errors in recorder.errors.items() if errors}
        if error_examples:
            log_lines = server.log_path.read_text(errors="replace").splitlines()
            markers = ("ERROR", "WARNING", "died", "Traceback")
            problems = [line for line in log_lines if any(m in line for m in markers)]
            error_examples["server_log"] = problems[-20:]

    return {
        "machine": machine_info(),
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "settings": {
            "workers": args.workers,
            "connections": args.connections,
            "duration_seconds": args.duration,
            "mix": MIX,
            "soak": args.soak,
            "host": HOST,
        },
        "wall_seconds": round(wall_seconds, 2),
        "by_type": summarize_run(recorder, wall_seconds),
        "error_examples": error_examples,
        "memory": summarize_memory(sampler.samples, sampler.peaks),
        "scratch_table": scratch,
        "load_before": load_before,
        "load_after": load_average(),
    }


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    # httpx logs every request at INFO, which would cost the load generator CPU time.
    logging.getLogger("httpx").setLevel(logging.WARNING)
    args = parse_args(argv)
    default_name = "soak.json" if args.soak else "load.json"
    output = args.output or BENCH_DIR / "results" / default_name

    with tempfile.TemporaryDirectory(prefix="sqlstore-load-") as work:
        work_dir = Path(work)
        root = args.root or work_dir / "store"
        results = run(args, root, work_dir)

    write_results(results, output)
    print(render_markdown(results))
    failed = results["by_type"]["all"]["errors"] > 0 or not results["scratch_table"]["ok"]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
