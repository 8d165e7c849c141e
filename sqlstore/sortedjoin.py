"""Point-in-time search of a feature file stored sorted by (key, event timestamp), in numpy.

`sqlstore.ordering` stores such files stably sorted, so each key's rows form one run ordered by
time, with rows of equal time in the order of the tie rule: created timestamp ascending, then
write order. The match of a spine row is then the last row of its key's run at or before its
time. A binary search finds it for all spine rows at once, with one numpy pass per halving of
the longest run. Only the key and timestamp columns are read whole. The feature columns are
read one row group at a time, and only from row groups that contain a match.
`sqlstore.pointintime` decides where this search applies, and the tests compare it with the
DuckDB join.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import orjson
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from sqlstore.layout import ENTRY_METADATA_KEY
from sqlstore.ordering import sort_columns
from sqlstore.types import type_family

UINT64_MAX = 2**64 - 1
# The largest magnitude in microseconds that int64 nanoseconds can represent.
MAX_NANOSECOND_MICROSECONDS = np.iinfo(np.int64).max // 1000


class SortedSearchUnavailable(Exception):
    """Raised where the sorted search does not apply to a join; the message gives the reason."""


@dataclass(frozen=True)
class SortedSearch:
    """One table's search: what to match and how.

    `unit` is the unit ("us" or "ns") both sides' timestamps are compared in, and `max_age` the
    TTL in that unit (None: unlimited).
    """

    path: str
    key_column: str
    timestamp_column: str
    sorted_by: list[str]
    columns: list[str]
    unit: str
    inclusive: bool
    max_age: int | None


def search_sorted_file(
    search: SortedSearch, spine_keys: pa.ChunkedArray, spine_times: pa.ChunkedArray
) -> pa.Table:
    """Return the matched row's `search.columns` for each spine row, in spine order, with
    nulls where no row matches. Raise SortedSearchUnavailable when the file is not stored as
    the search needs, or a key or time cannot be compared exactly."""
    parquet = pq.ParquetFile(search.path)
    recorded = _recorded_sort_order(parquet)
    if recorded != search.sorted_by:
        raise SortedSearchUnavailable(
            f"the file is sorted by {recorded or 'nothing'}, not by {search.sorted_by}"
        )

    index = parquet.read(columns=[search.key_column, search.timestamp_column])
    times = _timestamps_in_unit(index[search.timestamp_column], search.unit)
    starts, run_keys = _key_runs(index[search.key_column], times)
    del index
    run_keys, probe_keys = _comparable_keys(run_keys, spine_keys)

    run = pc.index_in(probe_keys, value_set=run_keys).to_numpy(zero_copy_only=False)
    spine_valid = spine_times.is_valid().to_numpy(zero_copy_only=False)
    spine_values = _timestamps_in_unit(spine_times, search.unit)
    found = ~np.isnan(run) & spine_valid
    run = np.where(found, np.nan_to_num(run), 0).astype(np.int64)

    rows, matched = _bisect_runs(times, starts, run, found, spine_values, search.inclusive)
    if search.max_age is not None and search.max_age < UINT64_MAX:
        # A match is never later than the spine time, so the age fits uint64 even where the
        # int64 difference of two nanosecond times would overflow.
        positions = np.flatnonzero(matched)
        ages = spine_values[positions].astype(np.uint64) - times[rows[positions]].astype(np.uint64)
        matched[positions[ages > np.uint64(search.max_age)]] = False
    return _take_by_row_group(parquet, search.columns, rows, matched)


def _recorded_sort_order(parquet: pq.ParquetFile) -> list[str]:
    """Return the sort order the file's own registry entry records, or [] when it has none.

    The copy in the footer describes exactly this file, even when a write replaced the file
    after the caller read the registry.
    """
    metadata = parquet.schema_arrow.metadata or {}
    text = metadata.get(ENTRY_METADATA_KEY)
    if text is None:
        return []
    entry = orjson.loads(text)
    expected = sort_columns(
        entry.get("entity_key") or [],
        entry.get("timestamp_column"),
        entry.get("created_timestamp_column"),
    )
    recorded = entry.get("sorted_by") or []
    return recorded if recorded == expected else []


def _timestamps_in_unit(column: pa.ChunkedArray, unit: str) -> np.ndarray:
    """Return timestamps as int64 counts of `unit` ("us" or "ns") since the epoch, with 0 in
    place of nulls."""
    values = column.cast(pa.int64())
    if values.null_count:
        values = values.fill_null(0)
    values = values.to_numpy()
    if column.type.unit == unit:
        return values
    if column.type.unit != "us" or unit != "ns":
        raise SortedSearchUnavailable(f"cannot compare {column.type.unit} times in {unit}")
    if len(values) and np.abs(values).max() > MAX_NANOSECOND_MICROSECONDS:
        raise SortedSearchUnavailable("a time is outside the range of nanosecond timestamps")
    return values * 1000


def _comparable_keys(
    table_keys: pa.Array, spine_keys: pa.ChunkedArray
) -> tuple[pa.Array, pa.Array]:
    """Return the table's keys (one per run) and the spine's keys as arrays of one type that
    compare exactly: int64 for integers, string for strings.

    A spine key column of nulls matches nothing. Floats, which pandas makes of integers with
    nulls, are cast to int64 for an integer key; the caller has checked that they are whole.
    """
    if pa.types.is_dictionary(spine_keys.type):
        spine_keys = spine_keys.cast(spine_keys.type.value_type)
    table_family = type_family(table_keys.type)
    spine_family = type_family(spine_keys.type)
    target = {"integer": pa.int64(), "string": pa.string()}.get(table_family)
    castable = {table_family, "null"}
    if table_family == "integer":
        castable.add("floating")
    if target is None or spine_family not in castable:
        raise SortedSearchUnavailable(
            f"keys of {spine_keys.type} against {table_keys.type} are not compared in numpy"
        )
    try:
        return table_keys.cast(target), spine_keys.cast(target).combine_chunks()
    except pa.ArrowInvalid as error:
        # uint64 or float keys beyond the int64 range, or strings beyond 2 GiB per array.
        raise SortedSearchUnavailable(f"keys do not fit {target}: {error}") from error


def _key_runs(keys: pa.ChunkedArray, times: np.ndarray) -> tuple[np.ndarray, pa.Array]:
    """Return the first row of each key's run, plus the end of the last, and each run's key.

    Raise SortedSearchUnavailable unless each key has one run and times ascend within it. The
    recorded sort order promises both, and checking costs a few passes over the two columns.
    """
    keys = keys.combine_chunks()
    if len(keys) == 0:
        return np.zeros(2, dtype=np.int64), keys
    if type_family(keys.type) == "integer":
        values = keys.to_numpy()
        changes = values[1:] != values[:-1]
    else:
        changes = pc.not_equal(keys[1:], keys[:-1]).to_numpy(zero_copy_only=False)
    if not np.all(changes | (times[1:] >= times[:-1])):
        raise SortedSearchUnavailable("times do not ascend within a key")

    starts = np.concatenate(([0], np.flatnonzero(changes) + 1, [len(keys)]))
    run_keys = keys.take(starts[:-1])
    if pc.count_distinct(run_keys).as_py() != len(run_keys):
        raise SortedSearchUnavailable("a key has rows in more than one place")
    return starts, run_keys


def _bisect_runs(
    times: np.ndarray,
    starts: np.ndarray,
    run: np.ndarray,
    found: np.ndarray,
    spine_times: np.ndarray,
    inclusive: bool,
) -> tuple[np.ndarray, np.ndarray]:
    """Return, per spine row, the last row of its run at or before its time (strictly before
    unless `inclusive`), and whether there is one.

    Each iteration halves every spine row's interval [low, high) at once, so the loop runs
    about log2(longest run) times.
    """
    low = starts[run]
    first = low.copy()
    high = np.where(found, starts[run + 1], low)

    active = np.flatnonzero(low < high)
    while len(active):
        middle = (low[active] + high[active]) // 2
        probe = times[middle]
        target = spine_times[active]
        before = probe <= target if inclusive else probe < target
        low[active] = np.where(before, middle + 1, low[active])
        high[active] = np.where(before, high[active], middle)
        active = active[low[active] < high[active]]

    rows = low - 1
    return rows, found & (rows >= first)


def _take_by_row_group(
    parquet: pq.ParquetFile, columns: list[str], rows: np.ndarray, matched: np.ndarray
) -> pa.Table:
    """Read `columns` of the row groups holding matched rows, one row group at a time, and
    return one row per spine row in spine order, null where `matched` is False."""
    if not columns:
        return pa.table({})
    schema = parquet.schema_arrow
    empty = pa.table({name: pa.array([], schema.field(name).type) for name in columns})

    group_ends = np.cumsum(
        [parquet.metadata.row_group(group).num_rows for group in range(parquet.num_row_groups)]
    )
    spine_positions = np.flatnonzero(matched)
    matched_rows = rows[spine_positions]
    groups = np.searchsorted(group_ends, matched_rows, side="right")
    by_group = np.argsort(groups, kind="stable")
    spine_positions = spine_positions[by_group]
    matched_rows = matched_rows[by_group]
    bounds = np.searchsorted(groups[by_group], np.arange(parquet.num_row_groups + 1))

    parts = [empty]
    for group in range(parquet.num_row_groups):
        begin, end = bounds[group], bounds[group + 1]
        if begin == end:
            continue
        group_start = group_ends[group - 1] if group else 0
        table = parquet.read_row_group(group, columns=columns)
        parts.append(table.select(columns).take(matched_rows[begin:end] - group_start))

    gathered = pa.concat_tables(parts)
    order = np.zeros(len(rows), dtype=np.int64)
    order[spine_positions] = np.arange(len(spine_positions), dtype=np.int64)
    return gathered.take(pa.array(order, mask=~matched))
