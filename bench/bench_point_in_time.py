"""Benchmark of point-in-time joins: sqlstore against raw DuckDB, pandas and polars.

One run generates, for each size, a feature table (int64 key, UTC microsecond event timestamps
in random order, 5 float64 features) written through `FeatureStore.write`, which stores it
sorted by (key, timestamp), and a spine of (row_id, key, timestamp, label) written as Parquet.
A copy of the feature table in generation (write) order, with the stored column types, stands
for a file written before sqlstore sorted tables. Every method reads Parquet and writes the
joined spine as Parquet:

- sqlstore: `FeatureStore(root).get_historical_features(spine_path, ["g/t"])`, then pyarrow;
  once with the default join method (the numpy search of the sorted file) and once with
  `join_method="duckdb"`,
- raw DuckDB: `COPY (... ASOF LEFT JOIN ...) TO` over the stored file (the reference), and over
  the write-order copy,
- pandas `merge_asof`, once including its sort and once on files already sorted by time,
- polars `join_asof`, including its sort,
- experimental variants (`exp_` names) that tested ways to make sqlstore faster, with SQL and
  Python written in this script.

Each run of a method is its own child process, which reports its wall seconds, CPU seconds
(all threads) and peak resident set size (`VmHWM`, imports included). Every method's output is
compared with the raw DuckDB output, row by row on `row_id`. The results, with machine details,
go to a JSON file. docs/benchmarks.md discusses one run.

    .venv/bin/python bench/bench_point_in_time.py [--size small|large|both] [--repeats N]
        [--output bench/results/point_in_time.json]
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
import json
import logging
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

import duckdb
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from sqlstore.ordering import sort_table
from sqlstore.store import FeatureStore, TableDefinition

logger = logging.getLogger("bench_point_in_time")

CHECKOUT = Path(__file__).resolve().parent.parent
DEFAULT_OUTPUT = CHECKOUT / "bench" / "results" / "point_in_time.json"
SEED = 20_240_101
GROUP = "g"
TABLE = "t"
KEY = "entity_id"
TIMESTAMP = "event_timestamp"
ROW_ID = "row_id"
LABEL = "label"
FEATURES = [f"feature_{index}" for index in range(1, 6)]
START = np.datetime64("2024-01-01T00:00:00", "us").astype(np.int64)
SPAN_MICROSECONDS = 365 * 86_400 * 1_000_000
MICROSECOND_UTC = pa.timestamp("us", tz="UTC")
VERSIONED_PACKAGES = ("duckdb", "pyarrow", "pandas", "numpy", "polars")
HASHED_SOURCES = (
    "sqlstore/pointintime.py",
    "sqlstore/sortedjoin.py",
    "sqlstore/ordering.py",
    "sqlstore/store.py",
    "sqlstore/registry.py",
)
REFERENCE_METHOD = "duckdb"
IMPORTS_ONLY = "imports_only"
# Free memory each size needs before it starts: an estimate from the peaks of one run of every
# method, with room to spare, so that the benchmark does not push other processes into swap.
REQUIRED_FREE_GIB = {"small": 2.0, "large": 8.0}


@dataclass(frozen=True)
class Size:
    """Row and key counts of one generated data set."""

    name: str
    feature_rows: int
    spine_rows: int
    keys: int


SIZES = {
    "small": Size("small", feature_rows=1_000_000, spine_rows=100_000, keys=10_000),
    "large": Size("large", feature_rows=10_000_000, spine_rows=1_000_000, keys=100_000),
}


@dataclass(frozen=True)
class DataFiles:
    """The files of one prepared data set."""

    folder: Path

    @property
    def store_root(self) -> Path:
        return self.folder / "store"

    @property
    def features(self) -> Path:
        """The feature table's Parquet file as `FeatureStore.write` stored it: sorted by
        (key, timestamp)."""
        return self.store_root / "features" / GROUP / f"{TABLE}.parquet"

    @property
    def features_write_order(self) -> Path:
        """Path of a copy of the stored file in generation order: same types, no footer entry."""
        return self.folder / "features_write_order.parquet"

    @property
    def features_by_time(self) -> Path:
        """The stored file's rows sorted by timestamp, as pandas `merge_asof` needs them."""
        return self.folder / "features_by_time.parquet"

    @property
    def spine(self) -> Path:
        return self.folder / "spine.parquet"

    @property
    def spine_by_time(self) -> Path:
        return self.folder / "spine_by_time.parquet"

    @property
    def manifest(self) -> Path:
        return self.folder / "prepared.json"

    def output(self, method: str) -> Path:
        return self.folder / "outputs" / f"{method}.parquet"


# Data generation


def generate_features(size: Size, rng: np.random.Generator) -> pa.Table:
    """Return `size.feature_rows` rows in random order with unique (key, timestamp) pairs.

    Every timestamp is unique across the table: row i of the time order falls in its own
    stride of the year, so no key has two rows at one instant and no join has a tie.
    """
    stride = SPAN_MICROSECONDS // size.feature_rows
    offsets = np.arange(size.feature_rows, dtype=np.int64) * stride
    timestamps = START + offsets + rng.integers(0, stride, size.feature_rows)
    timestamps = timestamps[rng.permutation(size.feature_rows)]

    columns: dict[str, Any] = {
        KEY: rng.integers(0, size.keys, size.feature_rows, dtype=np.int64),
        TIMESTAMP: pa.array(timestamps, MICROSECOND_UTC),
    }
    for name in FEATURES:
        columns[name] = rng.standard_normal(size.feature_rows)
    return pa.table(columns)


def generate_spine(size: Size, rng: np.random.Generator) -> pa.Table:
    """Return the spine: uniform keys and timestamps over the feature table's year."""
    timestamps = START + rng.integers(0, SPAN_MICROSECONDS, size.spine_rows)
    return pa.table(
        {
            ROW_ID: np.arange(size.spine_rows, dtype=np.int64),
            KEY: rng.integers(0, size.keys, size.spine_rows, dtype=np.int64),
            TIMESTAMP: pa.array(timestamps, MICROSECOND_UTC),
            LABEL: rng.integers(0, 2, size.spine_rows, dtype=np.int64),
        }
    )


def prepare_data(size: Size, files: DataFiles) -> dict[str, Any]:
    """Write the data set of `size` into `files.folder`, or reuse it when already there.

    Returns the preparation timings, including what sorting the stored table costs.
    """
    if files.manifest.is_file():
        manifest = json.loads(files.manifest.read_text())
        if manifest.get("size") == asdict(size) and manifest.get("seed") == SEED:
            logger.info("%s: reusing the data in %s", size.name, files.folder)
            return manifest["preparation"]
        raise RuntimeError(
            f"{files.folder} contains data of another size or seed; pass a new or empty --work-dir"
        )

    files.folder.mkdir(parents=True, exist_ok=True)
    (files.folder / "outputs").mkdir(exist_ok=True)
    rng = np.random.default_rng(SEED)
    timings = {}

    started = time.perf_counter()
    features = generate_features(size, rng)
    spine = generate_spine(size, rng)
    timings["generate_s"] = time.perf_counter() - started

    started = time.perf_counter()
    definition = TableDefinition(entity_key=[KEY], timestamp_column=TIMESTAMP)
    store = FeatureStore(files.store_root)
    store.write(GROUP, TABLE, features, definition=definition)
    store.catalog.close()
    timings["feature_store_write_s"] = time.perf_counter() - started

    pq.write_table(spine, files.spine)
    pq.write_table(spine.sort_by(TIMESTAMP), files.spine_by_time)
    timings.update(write_copies(files, features))

    rounded = {name: round(seconds, 3) for name, seconds in timings.items()}
    manifest = {"size": asdict(size), "seed": SEED, "preparation": rounded}
    files.manifest.write_text(json.dumps(manifest, indent=2))
    return rounded


def write_copies(files: DataFiles, generated: pa.Table) -> dict[str, float]:
    """Write the generated rows with the stored column types in write order and sorted by time,
    and time the sorts that sorting on write needs.

    The copies keep snappy compression and no dictionary encoding, which is how
    `FeatureStore.write` writes a table without string columns.
    """
    stored_schema = pq.read_schema(files.features).remove_metadata()
    write_order = generated.cast(stored_schema)
    pq.write_table(write_order, files.features_write_order, use_dictionary=False)
    timings = {}

    started = time.perf_counter()
    by_key_time = write_order.sort_by([(KEY, "ascending"), (TIMESTAMP, "ascending")])
    timings["pyarrow_sort_by_key_time_s"] = time.perf_counter() - started

    started = time.perf_counter()
    sorted_by_sqlstore = sort_table(write_order, [KEY, TIMESTAMP])
    timings["sqlstore_sort_table_s"] = time.perf_counter() - started
    if not sorted_by_sqlstore.equals(by_key_time):
        raise RuntimeError("sqlstore and pyarrow sorted the feature table differently")
    del sorted_by_sqlstore

    started = time.perf_counter()
    sorted_by_numpy = write_order.take(packed_argsort(write_order[KEY], write_order[TIMESTAMP]))
    timings["numpy_packed_argsort_s"] = time.perf_counter() - started
    if not sorted_by_numpy.equals(by_key_time):
        raise RuntimeError("numpy and pyarrow sorted the feature table differently")
    del sorted_by_numpy
    timings["sqlstore_sort_after_append_s"] = time_sorted_append(by_key_time)
    del by_key_time

    started = time.perf_counter()
    by_time = write_order.sort_by(TIMESTAMP)
    timings["pyarrow_sort_by_time_s"] = time.perf_counter() - started
    pq.write_table(by_time, files.features_by_time, use_dictionary=False)
    return timings


def packed_argsort(keys: pa.ChunkedArray, times: pa.ChunkedArray) -> np.ndarray:
    """Return the stable order by (integer key, timestamp) from one int64 argsort, the
    alternative to Arrow's sort that sqlstore does not use.

    Key and time offset are packed into one int64, which needs their ranges to fit.
    """
    key_values = keys.to_numpy().astype(np.int64)
    time_values = times.cast(pa.int64()).to_numpy()
    key_offsets = key_values - key_values.min()
    time_offsets = time_values - time_values.min()
    width = int(time_offsets.max()) + 1
    if (int(key_offsets.max()) + 1) * width >= 2**63:
        raise RuntimeError("key and time ranges do not fit one int64")
    return np.argsort(key_offsets * width + time_offsets, kind="stable")


def time_sorted_append(sorted_table: pa.Table) -> float:
    """Time `sort_table` after an append: the first 90% of rows stay sorted, the last 10% are
    shuffled, as when a new unsorted batch is appended to a sorted table."""
    rows = sorted_table.num_rows
    existing = np.arange(rows * 9 // 10)
    incoming = np.random.default_rng(SEED).permutation(np.arange(rows * 9 // 10, rows))
    appended = sorted_table.take(np.concatenate([existing, incoming]))

    started = time.perf_counter()
    sort_table(appended, [KEY, TIMESTAMP])
    return time.perf_counter() - started


# Methods. Each takes the data files, writes files.output(name) and returns the row count.


def run_sqlstore(files: DataFiles, output: Path) -> int:
    store = FeatureStore(files.store_root)
    joined = store.get_historical_features(str(files.spine), [f"{GROUP}/{TABLE}"])
    pq.write_table(joined, output)
    return joined.num_rows


def run_sqlstore_duckdb(files: DataFiles, output: Path) -> int:
    store = FeatureStore(files.store_root)
    joined = store.get_historical_features(
        str(files.spine), [f"{GROUP}/{TABLE}"], join_method="duckdb"
    )
    pq.write_table(joined, output)
    return joined.num_rows


def raw_asof_sql(spine: Path, features: Path) -> str:
    feature_list = ", ".join(f"f.{name}" for name in FEATURES)
    return (
        f"SELECT s.*, {feature_list} FROM read_parquet('{spine}') AS s "
        f"ASOF LEFT JOIN read_parquet('{features}') AS f "
        f"ON s.{KEY} = f.{KEY} AND s.{TIMESTAMP} >= f.{TIMESTAMP}"
    )


def copy_with_duckdb(sql: str, output: Path, threads: int | None = None) -> int:
    connection = duckdb.connect()
    if threads is not None:
        connection.execute(f"SET threads = {threads}")
    connection.execute(f"COPY ({sql}) TO '{output}' (FORMAT parquet)")
    connection.close()
    return pq.ParquetFile(output).metadata.num_rows


def run_duckdb(files: DataFiles, output: Path) -> int:
    return copy_with_duckdb(raw_asof_sql(files.spine, files.features), output)


def run_duckdb_write_order(files: DataFiles, output: Path) -> int:
    return copy_with_duckdb(raw_asof_sql(files.spine, files.features_write_order), output)


def merge_asof_frames(spine: pd.DataFrame, features: pd.DataFrame) -> pd.DataFrame:
    """Join with pandas `merge_asof`. Both frames must be sorted by the timestamp column."""
    features[KEY] = features[KEY].astype("int64")
    return pd.merge_asof(
        spine, features, on=TIMESTAMP, by=KEY, direction="backward", allow_exact_matches=True
    )


def run_pandas_sort(files: DataFiles, output: Path) -> int:
    # merge_asof needs both inputs sorted by the `on` column only, because `by` groups by key.
    spine = pq.read_table(files.spine).to_pandas()
    features = pq.read_table(files.features_write_order).to_pandas()
    spine = spine.sort_values(TIMESTAMP, kind="stable", ignore_index=True)
    features = features.sort_values(TIMESTAMP, kind="stable", ignore_index=True)

    joined = merge_asof_frames(spine, features)
    joined.to_parquet(output, index=False)
    return len(joined)


def run_pandas_presorted(files: DataFiles, output: Path) -> int:
    spine = pq.read_table(files.spine_by_time).to_pandas()
    features = pq.read_table(files.features_by_time).to_pandas()

    joined = merge_asof_frames(spine, features)
    joined.to_parquet(output, index=False)
    return len(joined)


def run_polars(files: DataFiles, output: Path) -> int:
    import polars as pl

    spine = pl.read_parquet(files.spine).sort(TIMESTAMP)
    features = pl.read_parquet(files.features_write_order)
    features = features.with_columns(pl.col(KEY).cast(pl.Int64)).sort(TIMESTAMP)

    # Both frames are sorted above. polars cannot check sortedness within `by` groups and
    # warns when asked to.
    joined = spine.join_asof(
        features, on=TIMESTAMP, by=KEY, strategy="backward", check_sortedness=False
    )
    joined.write_parquet(output)
    return joined.height


# Experimental method: the prototype of the numpy search, outside the package. The script at
# commit 8629ecf has the other experiments that docs/benchmarks.md cites.


def match_sorted_rows(
    keys: np.ndarray, times: np.ndarray, spine_keys: np.ndarray, spine_times: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Find, for each spine row, the last feature row with its key at or before its time.

    `keys` and `times` must be sorted by (key, time). Returns (row index, matched mask). The
    search first finds each key's run of rows, then bisects all runs at once, one numpy pass
    per halving, so it needs about log2(longest run) passes over the spine.
    """
    run_starts = np.flatnonzero(keys[1:] != keys[:-1]) + 1
    boundaries = np.concatenate(([0], run_starts, [len(keys)]))
    run_keys = keys[boundaries[:-1]].astype(np.int64)

    run = np.searchsorted(run_keys, spine_keys)
    run = np.minimum(run, len(run_keys) - 1)
    found = run_keys[run] == spine_keys
    low = boundaries[run]
    first = low.copy()
    high = np.where(found, boundaries[run + 1], low)

    active = low < high
    while active.any():
        middle = (low + high) // 2
        at_or_before = times[np.minimum(middle, len(times) - 1)] <= spine_times
        low = np.where(active & at_or_before, middle + 1, low)
        high = np.where(active & ~at_or_before, middle, high)
        active = low < high

    # With ties on time, the last row of the tie is the one returned.
    last_row = low - 1
    return last_row, last_row >= first


def take_by_row_group(
    parquet: pq.ParquetFile, columns: list[str], rows: np.ndarray, matched: np.ndarray
) -> pa.Table:
    """Read `columns` one row group at a time and take the matched rows of each, so that only
    one row group's columns are in memory at once. Returns one row per spine row, in spine
    order, with nulls where `matched` is False."""
    parts = []
    positions = []
    start = 0
    for group in range(parquet.num_row_groups):
        end = start + parquet.metadata.row_group(group).num_rows
        selected = np.flatnonzero(matched & (rows >= start) & (rows < end))
        if len(selected):
            table = parquet.read_row_group(group, columns=columns)
            parts.append(table.take(rows[selected] - start))
            positions.append(selected)
        start = end

    gathered = pa.concat_tables(parts) if parts else parquet.schema_arrow.empty_table()
    order = np.zeros(len(rows), dtype=np.int64)
    if positions:
        spine_positions = np.concatenate(positions)
        order[spine_positions] = np.arange(len(spine_positions), dtype=np.int64)
    return gathered.select(columns).take(pa.array(order, mask=~matched))


def run_exp_bisect_row_groups(files: DataFiles, output: Path) -> int:
    """Match on the key and time columns of the (key, time)-sorted file, then read the
    feature columns one row group at a time."""
    parquet = pq.ParquetFile(files.features)
    index = parquet.read([KEY, TIMESTAMP])
    spine = pq.read_table(files.spine)

    keys = index[KEY].to_numpy()
    times = index[TIMESTAMP].cast(pa.int64()).to_numpy()
    spine_keys = spine[KEY].to_numpy()
    spine_times = spine[TIMESTAMP].cast(pa.int64()).to_numpy()
    rows, matched = match_sorted_rows(keys, times, spine_keys, spine_times)
    del index, keys, times

    matched_features = take_by_row_group(parquet, FEATURES, rows, matched)
    joined = pa.Table.from_arrays(
        [*spine.columns, *matched_features.columns], names=[*spine.column_names, *FEATURES]
    )
    pq.write_table(joined, output)
    return joined.num_rows


@dataclass(frozen=True)
class Method:
    """One way of computing the join, as the results table names it."""

    name: str
    label: str
    run: Callable[[DataFiles, Path], int]
    experimental: bool = False


METHODS = [
    Method("sqlstore", "sqlstore get_historical_features", run_sqlstore),
    Method("sqlstore_duckdb", "sqlstore, join_method duckdb", run_sqlstore_duckdb),
    Method("duckdb", "raw DuckDB ASOF LEFT JOIN (COPY)", run_duckdb),
    Method(
        "duckdb_write_order", "raw DuckDB ASOF LEFT JOIN, write-order file", run_duckdb_write_order
    ),
    Method("pandas_sort", "pandas merge_asof incl. sort", run_pandas_sort),
    Method("pandas_presorted", "pandas merge_asof, presorted files", run_pandas_presorted),
    Method("polars", "polars join_asof incl. sort", run_polars),
    Method(
        "exp_bisect_row_groups",
        "numpy bisection, (key, time)-sorted file, features read per row group",
        run_exp_bisect_row_groups,
        experimental=True,
    ),
]
METHODS_BY_NAME = {method.name: method for method in METHODS}


# Child processes


def peak_rss_mib() -> float:
    """Return this process's peak resident set size (VmHWM) in MiB.

    The parent cannot use the child's `ru_maxrss` (from `os.wait4`): on Linux, an exec'd
    child's value starts at the parent's resident size at fork, which here includes the
    generated data.
    """
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("VmHWM not found in /proc/self/status")


def process_cpu_seconds() -> float:
    """Return the user plus system CPU seconds of all threads of this process so far."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def run_child(method_name: str, data_dir: Path, result_path: Path) -> None:
    """Run one method once in this process and write its timing and peak memory to
    `result_path`. The name IMPORTS_ONLY runs nothing, to measure the imports alone."""
    seconds = 0.0
    cpu_seconds = 0.0
    rows = 0
    if method_name != IMPORTS_ONLY:
        method = METHODS_BY_NAME[method_name]
        files = DataFiles(data_dir)
        cpu_started = process_cpu_seconds()
        started = time.perf_counter()
        rows = method.run(files, files.output(method_name))
        seconds = time.perf_counter() - started
        cpu_seconds = process_cpu_seconds() - cpu_started

    result = {
        "seconds": seconds,
        "cpu_s": cpu_seconds,
        "rows": rows,
        "peak_rss_mib": peak_rss_mib(),
    }
    result_path.write_text(json.dumps(result))


def measure_once(method_name: str, files: DataFiles) -> dict[str, Any]:
    """Run a method once in a child process and return its seconds, CPU seconds and peak
    memory.

    CPU seconds (user + system, all threads) are reported next to wall seconds because other
    processes on a shared machine stretch wall time more than CPU time.
    """
    result_path = files.folder / f"{method_name}.result.json"
    result_path.unlink(missing_ok=True)
    command = [
        sys.executable,
        str(Path(__file__).resolve()),
        "--run-method",
        method_name,
        "--data-dir",
        str(files.folder),
        "--result",
        str(result_path),
    ]
    load = os.getloadavg()[0]
    completed = subprocess.run(command, check=False)
    if completed.returncode != 0:
        raise RuntimeError(f"{method_name} failed with exit code {completed.returncode}")

    result = json.loads(result_path.read_text())
    result["load_average_1min_before"] = load
    return result


# Checks against the reference output


def compare_outputs(reference: Path, candidate: Path) -> dict[str, int]:
    """Count rows missing on either side and rows whose spine or feature values differ."""
    compared = [KEY, TIMESTAMP, LABEL, *FEATURES]
    differs = " OR ".join(f"r.{name} IS DISTINCT FROM c.{name}" for name in compared)
    sql = (
        f"SELECT count(*) FILTER (WHERE r.{ROW_ID} IS NULL OR c.{ROW_ID} IS NULL), "
        f"count(*) FILTER (WHERE r.{ROW_ID} IS NOT NULL AND c.{ROW_ID} IS NOT NULL "
        f"AND ({differs})), count(*) "
        f"FROM read_parquet('{reference}') AS r "
        f"FULL JOIN read_parquet('{candidate}') AS c ON r.{ROW_ID} = c.{ROW_ID}"
    )
    connection = duckdb.connect()
    missing, mismatched, total = connection.execute(sql).fetchone()
    connection.close()
    return {"rows_missing": missing, "rows_mismatched": mismatched, "rows_compared": total}


def count_unmatched(reference: Path) -> int:
    """Return the spine rows the reference join left without a feature row."""
    sql = f"SELECT count(*) FROM read_parquet('{reference}') WHERE {FEATURES[0]} IS NULL"
    connection = duckdb.connect()
    (count,) = connection.execute(sql).fetchone()
    connection.close()
    return count


# One size


def free_memory_gib() -> float:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) / 1024 / 1024
    raise RuntimeError("MemAvailable not found in /proc/meminfo")


def check_free_memory(size: Size) -> None:
    available = free_memory_gib()
    required = REQUIRED_FREE_GIB[size.name]
    if available < required:
        raise RuntimeError(
            f"only {available:.1f} GiB of memory is available; the {size.name} size needs "
            f"about {required:.0f} GiB free; retry when other processes have finished"
        )


def benchmark_size(
    size: Size, files: DataFiles, methods: list[Method], repeats: int
) -> dict[str, Any]:
    """Prepare one data set, run every method `repeats` times and check the outputs."""
    check_free_memory(size)
    preparation = prepare_data(size, files)
    runs: dict[str, list[dict[str, Any]]] = {method.name: [] for method in methods}

    # Repeats go round the methods in turn, so a burst of load from other processes spreads
    # over all methods instead of landing on one.
    for repeat in range(repeats):
        for method in methods:
            result = measure_once(method.name, files)
            runs[method.name].append(result)
            logger.info(
                "%s %s run %d/%d: %.2f s, peak %.0f MiB",
                size.name,
                method.name,
                repeat + 1,
                repeats,
                result["seconds"],
                result["peak_rss_mib"],
            )

    summary = summarize_runs(size, methods, runs)
    check_methods(files, methods, summary)
    return {
        "size": asdict(size),
        "repeats": repeats,
        "preparation": preparation,
        "import_baseline_rss_mib": round(measure_once(IMPORTS_ONLY, files)["peak_rss_mib"], 1),
        "unmatched_spine_rows": count_unmatched(files.output(REFERENCE_METHOD)),
        "registry_entry": read_registry_entry(files),
        "methods": summary,
    }


def summarize_runs(
    size: Size, methods: list[Method], runs: dict[str, list[dict[str, Any]]]
) -> dict[str, dict[str, Any]]:
    """Return per method the median seconds and CPU seconds, rows/s, peak memory and four
    ratios to raw DuckDB.

    `ratio_to_duckdb` divides the medians and `min_ratio_to_duckdb` the fastest runs.
    `paired_ratio_to_duckdb` is the median over repeats of (this method's run i) / (raw
    DuckDB's run i). Run i of every method falls in the same pass over the methods, so it runs
    under similar load from other processes. `cpu_ratio_to_duckdb` divides the median CPU
    seconds.
    """
    reference_seconds = [run["seconds"] for run in runs[REFERENCE_METHOD]]
    reference_cpu = statistics.median(run["cpu_s"] for run in runs[REFERENCE_METHOD])
    summary = {}
    for method in methods:
        seconds = [run["seconds"] for run in runs[method.name]]
        cpu_seconds = [run["cpu_s"] for run in runs[method.name]]
        median = statistics.median(seconds)
        paired = [value / base for value, base in zip(seconds, reference_seconds, strict=True)]
        summary[method.name] = {
            "label": method.label,
            "experimental": method.experimental,
            "median_s": round(median, 3),
            "median_cpu_s": round(statistics.median(cpu_seconds), 3),
            "runs_s": [round(value, 3) for value in seconds],
            "runs_cpu_s": [round(value, 3) for value in cpu_seconds],
            "rows_per_s": round(size.spine_rows / median),
            "min_s": round(min(seconds), 3),
            "ratio_to_duckdb": round(median / statistics.median(reference_seconds), 3),
            "min_ratio_to_duckdb": round(min(seconds) / min(reference_seconds), 3),
            "paired_ratio_to_duckdb": round(statistics.median(paired), 3),
            "cpu_ratio_to_duckdb": round(statistics.median(cpu_seconds) / reference_cpu, 3),
            "peak_rss_mib": round(max(run["peak_rss_mib"] for run in runs[method.name]), 1),
            "load_average_1min": [
                round(run["load_average_1min_before"], 2) for run in runs[method.name]
            ],
            "rows": runs[method.name][-1]["rows"],
        }
    return summary


def check_methods(
    files: DataFiles, methods: list[Method], summary: dict[str, dict[str, Any]]
) -> None:
    """Compare each method's last output with the raw DuckDB output and log any mismatch."""
    reference = files.output(REFERENCE_METHOD)
    for method in methods:
        check = compare_outputs(reference, files.output(method.name))
        check["identical"] = check["rows_missing"] == 0 and check["rows_mismatched"] == 0
        summary[method.name]["check"] = check
        if not check["identical"]:
            logger.error("%s differs from raw DuckDB: %s", method.name, check)


def read_registry_entry(files: DataFiles) -> dict[str, Any]:
    path = files.store_root / "registry" / GROUP / f"{TABLE}.json"
    entry = json.loads(path.read_text())
    entry.pop("storage", None)
    return entry


# Machine details and report


def machine_info() -> dict[str, Any]:
    """Return the CPU, memory, OS and package versions of this machine."""
    versions = {}
    for name in VERSIONED_PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "cpu_model": cpu_model(),
        "usable_cpus": len(os.sched_getaffinity(0)),
        "memory_gib": memory_total_gib(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "versions": versions,
        "source_sha256": {path: file_digest(CHECKOUT / path) for path in HASHED_SOURCES},
    }


def cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.partition(":")[2].strip()
    return platform.processor() or "unknown"


def memory_total_gib() -> float:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            return round(int(line.split()[1]) / 1024 / 1024, 1)
    raise RuntimeError("MemTotal not found in /proc/meminfo")


def file_digest(path: Path) -> str:
    """Return the first 16 hex digits of the file's SHA-256, to tie results to the code."""
    return hashlib.sha256(path.read_bytes()).hexdigest()[:16]


def format_size_table(result: dict[str, Any]) -> str:
    size = result["size"]
    lines = [
        f"### {size['name']}: {size['spine_rows']:,} spine rows, "
        f"{size['feature_rows']:,} feature rows, {size['keys']:,} keys "
        f"({result['repeats']} runs each)",
        "",
        "| method | median s | min s | median CPU s | spine rows/s | vs DuckDB, medians | "
        "paired | min | CPU | peak RSS MiB | identical |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for name, row in result["methods"].items():
        identical = "yes" if row["check"]["identical"] else "NO"
        lines.append(
            f"| {row['label']} (`{name}`) | {row['median_s']:.2f} | {row['min_s']:.2f} | "
            f"{row['median_cpu_s']:.2f} | {row['rows_per_s']:,} | "
            f"{row['ratio_to_duckdb']:.2f}x | {row['paired_ratio_to_duckdb']:.2f}x | "
            f"{row['min_ratio_to_duckdb']:.2f}x | {row['cpu_ratio_to_duckdb']:.2f}x | "
            f"{row['peak_rss_mib']:,.0f} | {identical} |"
        )
    preparation = ", ".join(f"{name} {value:.2f}" for name, value in result["preparation"].items())
    lines += ["", f"Preparation (seconds): {preparation}."]
    return "\n".join(lines)


# Command line


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--size",
        choices=("small", "large", "both"),
        default="both",
        help="data sizes to run (default both)",
    )
    parser.add_argument(
        "--repeats", type=int, default=3, help="runs per method and size (default 3); min 1"
    )
    parser.add_argument(
        "--output",
        type=Path,
        default=DEFAULT_OUTPUT,
        help="JSON results file to write (default bench/results/point_in_time.json)",
    )
    parser.add_argument(
        "--methods",
        help="comma-separated method names to run (default: all); raw DuckDB always runs, "
        f"because every check compares with it. Names: {', '.join(METHODS_BY_NAME)}",
    )
    parser.add_argument(
        "--work-dir",
        type=Path,
        help="folder for the generated data, kept afterwards and reused by later runs; "
        "default: a temporary folder under $TMPDIR, deleted at the end",
    )

    # Internal: the parent starts each measured run as a child with these options.
    parser.add_argument("--run-method", help=argparse.SUPPRESS)
    parser.add_argument("--data-dir", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--result", type=Path, help=argparse.SUPPRESS)

    args = parser.parse_args(argv)
    if args.repeats < 1:
        parser.error("--repeats must be at least 1")
    return args


def selected_methods(names: str | None) -> list[Method]:
    """Return the methods named in `names` (all when None) plus the reference. polars is left
    out, with a warning, when it is not installed."""
    requested = set(METHODS_BY_NAME)
    if names:
        requested = {name.strip() for name in names.split(",") if name.strip()}
    unknown = requested - METHODS_BY_NAME.keys()
    if unknown:
        raise SystemExit(f"unknown method {', '.join(sorted(unknown))}; see --help for names")
    requested.add(REFERENCE_METHOD)

    if "polars" in requested and importlib.util.find_spec("polars") is None:
        logger.warning("polars is not installed, so the polars method is skipped")
        requested.discard("polars")
    return [method for method in METHODS if method.name in requested]


def run_benchmark(args: argparse.Namespace, work_dir: Path) -> dict[str, Any]:
    methods = selected_methods(args.methods)
    size_names = ["small", "large"] if args.size == "both" else [args.size]
    results = {}
    for name in size_names:
        files = DataFiles(work_dir / name)
        results[name] = benchmark_size(SIZES[name], files, methods, args.repeats)
        print(format_size_table(results[name]), "\n", flush=True)
    return results


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    logging.getLogger("sqlstore").setLevel(logging.WARNING)
    args = parse_args(argv)
    if args.run_method:
        run_child(args.run_method, args.data_dir, args.result)
        return 0

    started = time.perf_counter()
    if args.work_dir:
        sizes = run_benchmark(args, args.work_dir.resolve())
    else:
        work_dir = Path(tempfile.mkdtemp(prefix="sqlstore-bench-pit-"))
        try:
            sizes = run_benchmark(args, work_dir)
        finally:
            shutil.rmtree(work_dir, ignore_errors=True)

    results = {
        "command": " ".join([".venv/bin/python", *sys.argv]),
        "machine": machine_info(),
        "total_seconds": round(time.perf_counter() - started, 1),
        "sizes": sizes,
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(results, indent=2) + "\n")
    logger.info("wrote %s", args.output)
    return 0


if __name__ == "__main__":
    sys.exit(main())
