"""Online views: the latest row per entity of each keyed table, kept in memory by each worker.

An online view serves entity lookups "as of now" with the rules of `sqlstore.pointintime`. The
match is the row with the latest event timestamp at or before now. Ties are ranked by created
timestamp (latest first, nulls last) and then by write order (last written first). A match
older than the table's TTL counts as expired. DuckDB computes the view in one
`QUALIFY row_number()` query, so Python never loops over the table's rows. A sorted numpy
array (one integer key) or a dict built from Arrow columns (string, date and composite keys)
maps a key to its row.

Freshness: every lookup first reads the table's write stamp (`Registry.write_stamp`), which
changes with every write, and rebuilds the view when the stamp differs from the one it was built
at. The registry entry is replaced after the Parquet file, so data read after the stamp is at
least as new as the stamp. Rows stamped in the future of the build time become visible when the
clock passes them, so a view also expires at the earliest such timestamp.

Memory: views count against one budget per worker. A view that does not fit is dropped, and
lookups of its table run a DuckDB query over the requested keys instead (same rules, same
results), which is slower.
"""

from __future__ import annotations

import functools
import itertools
import logging
import math
import os
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from fractions import Fraction
from functools import cached_property
from typing import Any

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from sqlstore.catalog import query_arrow
from sqlstore.errors import InvalidInput, NotFound
from sqlstore.identifiers import quote_identifier, quote_string
from sqlstore.lookup import MAX_ENTITY_IDS, LookupResult, convert_entity, entity_arrow_type
from sqlstore.pointintime import default_feature_columns
from sqlstore.references import FeatureReference
from sqlstore.registry import RegistryEntry
from sqlstore.sql.results import end_of_day_text
from sqlstore.stablefiles import raise_if_damaged, read_unchanged
from sqlstore.store import FeatureStore
from sqlstore.types import type_family
from sqlstore.values import INT64_MAX, INT64_MIN, convert_value

# A uint64 key minus this offset fits int64 (see IntegerKeyIndex).
UINT64_OFFSET = 2**63

logger = logging.getLogger(__name__)

LOAD_MODES = ("lazy", "eager")
EVENT_UNITS_COLUMN = "__event_units"
KEYS_VIEW = "__online_keys"
# Per-value status codes of a lookup, in the order of STATUS_NAMES.
PRESENT, NULL_VALUE, NOT_FOUND, OUTSIDE_MAX_AGE = 0, 1, 2, 3
STATUS_TEXTS = ("PRESENT", "NULL_VALUE", "NOT_FOUND", "OUTSIDE_MAX_AGE")
STATUS_NAMES = np.array(STATUS_TEXTS, dtype=object)
# Up to this many keys, values are read one by one, which is faster than Arrow's take.
SCALAR_LOOKUP_LIMIT = 8
# Arrow types whose numpy values convert to the same Python values as Arrow's to_pylist.
NUMPY_TYPES = (pa.types.is_integer, pa.types.is_float32, pa.types.is_float64, pa.types.is_boolean)
# Keys whose sizes estimate the memory of a hash index.
KEY_SIZE_SAMPLE = 1_000
# A build that fails after a write changed the table's registry entry, such as its columns, is
# retried with the new entry this many times in all.
BUILD_ATTEMPTS = 3


@dataclass(frozen=True)
class OnlineSettings:
    """Whether online views are used, the memory budget of all views of one worker in bytes,
    and whether views are built at start-up (eager) or on a table's first lookup (lazy)."""

    enabled: bool = True
    memory_bytes: int = 1024 * 1024 * 1024
    load: str = "lazy"


class Lookup:
    """Rows of a view for requested keys: `rows[i]` is the view row of key i and `codes[i]` its
    status, PRESENT, NOT_FOUND or OUTSIDE_MAX_AGE (NULL_VALUE is decided per column)."""

    def __init__(self, view: OnlineView, rows: np.ndarray, codes: np.ndarray) -> None:
        self.view = view
        self.rows = rows
        self.codes = codes

    def __len__(self) -> int:
        return len(self.codes)

    def take(self, columns: Sequence[str]) -> pa.Table:
        """Return `columns` of the looked-up rows, with nulls where a key has no present row."""
        return self.view.table.select(list(columns)).take(self.indices)

    @cached_property
    def indices(self) -> pa.Array:
        return pa.array(self.rows, pa.int64(), mask=self.codes != PRESENT)

    @cached_property
    def present(self) -> np.ndarray:
        return self.codes == PRESENT

    def json_values(self, column: str) -> tuple[list[Any], Sequence[bool]]:
        """Return the values of `column` for each key, as Python values that encode to the same
        JSON as the typed column (timestamps as ISO 8601 text), and a mask of the nulls."""
        numbers = self.view.numpy_arrays.get(column)
        if numbers is not None:
            # A numeric column without nulls: numpy indexing avoids Arrow's per-call overhead.
            values = numbers[np.where(self.present, self.rows, 0)]
            if self.present.all():
                return values.tolist(), ~self.present
            boxed = values.astype(object)
            boxed[~self.present] = None
            return boxed.tolist(), ~self.present

        selected = self.view.json_arrays[column].take(self.indices)
        return selected.to_pylist(), selected.is_null().to_numpy(zero_copy_only=False)

    def statuses(self, nulls: Sequence[bool]) -> list[str]:
        """Return the status name of each value: the lookup's code, or NULL_VALUE for a null
        value of a present row. `nulls` is the mask that `json_values` returned."""
        return STATUS_NAMES[
            np.where((self.codes == PRESENT) & nulls, NULL_VALUE, self.codes)
        ].tolist()


class FewLookup(Lookup):
    """A `Lookup` of at most SCALAR_LOOKUP_LIMIT keys, made of Python lists and read with
    Python ints. For so few keys, the fixed cost of each numpy or Arrow call would be most of
    the work, so the numpy arrays are built only when asked for."""

    def __init__(self, view: OnlineView, rows: list[int], codes: list[int]) -> None:
        self.view = view
        self.row_list = rows
        self.code_list = codes
        self.present_rows = [
            row if code == PRESENT else None for row, code in zip(rows, codes, strict=True)
        ]
        self.key_statuses = [STATUS_TEXTS[code] for code in codes]

    @cached_property
    def rows(self) -> np.ndarray:  # type: ignore[override]
        return np.array(self.row_list, dtype=np.int64)

    @cached_property
    def codes(self) -> np.ndarray:  # type: ignore[override]
        return np.array(self.code_list, dtype=np.int8)

    def __len__(self) -> int:
        return len(self.code_list)

    def json_values(self, column: str) -> tuple[list[Any], list[bool]]:
        numbers = self.view.numpy_arrays.get(column)
        if numbers is not None:
            values = [None if row is None else numbers.item(row) for row in self.present_rows]
        else:
            array = self.view.json_arrays[column]
            values = [None if row is None else array[row].as_py() for row in self.present_rows]
        return values, [value is None for value in values]

    def statuses(self, nulls: Sequence[bool]) -> list[str]:
        if not any(nulls):
            return self.key_statuses
        return [
            STATUS_TEXTS[NULL_VALUE] if null and code == PRESENT else STATUS_TEXTS[code]
            for code, null in zip(self.code_list, nulls, strict=True)
        ]


class IntegerKeyIndex:
    """Index of a single integer key: the keys sorted, searched with `np.searchsorted`.

    uint64 keys are stored minus 2^63 (their top bit flipped, read as int64), which keeps their
    order, so that keys above 2^63-1 fit the int64 search as well.
    """

    kind = "sorted integer keys"

    def __init__(self, keys: pa.ChunkedArray) -> None:
        values = keys.to_numpy()
        rows = np.arange(len(values), dtype=np.int64)
        self.unsigned = values.dtype == np.uint64
        if self.unsigned:
            values = (values ^ np.uint64(UINT64_OFFSET)).view(np.int64)
        values = values.astype(np.int64)
        order = np.argsort(values, kind="stable")
        self.sorted_keys = values[order]
        self.rows = rows[order]

    @property
    def nbytes(self) -> int:
        return self.sorted_keys.nbytes + self.rows.nbytes

    def find(self, columns: list[list[int]]) -> np.ndarray:
        """Return the row of each key, or -1 for a key that is not in the view."""
        keys, possible = self._stored_keys(columns[0])
        if len(self.sorted_keys) == 0:
            return np.full(len(keys), -1, dtype=np.int64)
        positions = np.searchsorted(self.sorted_keys, keys)
        positions[positions == len(self.sorted_keys)] = 0
        found = (self.sorted_keys[positions] == keys) & possible
        return np.where(found, self.rows[positions], -1)

    def find_few(self, columns: list[list[int]]) -> list[int]:
        """Return what `find` returns, as a list, searching for one key at a time."""
        sorted_keys = self.sorted_keys
        rows = []
        for key in columns[0]:
            if self.unsigned:
                if key < 0:
                    rows.append(-1)
                    continue
                key -= UINT64_OFFSET
            position = int(sorted_keys.searchsorted(key))
            found = position < len(sorted_keys) and sorted_keys.item(position) == key
            rows.append(self.rows.item(position) if found else -1)
        return rows

    def _stored_keys(self, keys: list[int]) -> tuple[np.ndarray, np.ndarray | bool]:
        """Return requested keys as the index stores them, and which of them a key of the
        index can equal: a negative id equals no uint64 key."""
        if not self.unsigned:
            return np.array(keys, dtype=np.int64), True
        possible = np.array([key >= 0 for key in keys], dtype=bool)
        unsigned = np.array([max(key, 0) for key in keys], dtype=np.uint64)
        return (unsigned ^ np.uint64(UINT64_OFFSET)).view(np.int64), possible


class HashKeyIndex:
    """Index of string, date or composite keys: a dict from the key (a tuple for composite
    keys) to its row, built by zipping Arrow's Python conversions of the key columns."""

    kind = "hash"

    def __init__(self, key_columns: list[pa.ChunkedArray]) -> None:
        values = [column.to_pylist() for column in key_columns]
        keys = values[0] if len(values) == 1 else zip(*values, strict=True)
        self.rows = dict(zip(keys, range(len(values[0])), strict=False))

        # An estimate: the dict's table plus the key objects, sized from a sample of keys.
        sample = list(itertools.islice(self.rows, KEY_SIZE_SAMPLE))
        per_key = sum(map(_object_size, sample)) / max(len(sample), 1)
        self.nbytes = sys.getsizeof(self.rows) + round(per_key * len(self.rows))

    def find(self, columns: list[list[Any]]) -> np.ndarray:
        """Return the row of each key, or -1 for a key that is not in the view."""
        keys = columns[0] if len(columns) == 1 else list(zip(*columns, strict=True))
        get = self.rows.get
        return np.fromiter((get(key, -1) for key in keys), dtype=np.int64, count=len(keys))

    def find_few(self, columns: list[list[Any]]) -> list[int]:
        """Return what `find` returns, as a list."""
        keys = columns[0] if len(columns) == 1 else zip(*columns, strict=True)
        get = self.rows.get
        return [get(key, -1) for key in keys]


def _object_size(key: Any) -> int:
    if isinstance(key, tuple):
        return sys.getsizeof(key) + sum(sys.getsizeof(part) for part in key)
    return sys.getsizeof(key)


@dataclass
class OnlineView:
    """The latest row per entity of one table version, as of `built_units`.

    Times are integers in the unit that the point-in-time join compares this table in:
    microseconds since the epoch, or nanoseconds when a timestamp column has them.
    """

    entry: RegistryEntry
    stamp: str
    table: pa.Table
    index: IntegerKeyIndex | HashKeyIndex
    event_units: np.ndarray | None
    units_per_second: int
    max_age_units: int | None
    built_units: int
    valid_until_units: int | None
    built_at: datetime
    build_seconds: float
    partial: bool = False
    json_arrays: dict[str, pa.Array] = field(default_factory=dict)
    numpy_arrays: dict[str, np.ndarray] = field(default_factory=dict)
    resolved: dict[str, list[str]] = field(default_factory=dict)

    @cached_property
    def integer_key(self) -> bool:
        """Whether every key column has an integer type."""
        schema = self.table.schema
        return all(
            type_family(schema.field(column).type) == "integer" for column in self.entry.entity_key
        )

    @property
    def nbytes(self) -> int:
        events = 0 if self.event_units is None else self.event_units.nbytes
        # Text copies of timestamp columns; the other JSON arrays share the table's buffers.
        texts = sum(
            array.get_total_buffer_size()
            for name, array in self.json_arrays.items()
            if array.type != self.table.schema.field(name).type
        )
        booleans = sum(a.nbytes for a in self.numpy_arrays.values() if a.dtype == np.bool_)
        return self.table.get_total_buffer_size() + self.index.nbytes + events + texts + booleans

    def is_current(self, now_us: int) -> bool:
        """Return False once the clock has passed the earliest future event timestamp."""
        if self.valid_until_units is None:
            return True
        return now_us * (self.units_per_second // 1_000_000) < self.valid_until_units

    def find(self, columns: dict[str, list[Any]], now_us: int) -> Lookup:
        """Look up converted keys, one list per key column (see `convert_key_columns`), as of
        `now_us`.

        NOTE: a clock reading before the build time (a request that read the clock just before
        another thread rebuilt the view) is served as of the build time, microseconds later.
        """
        key_columns = [columns[column] for column in self.entry.entity_key]
        if len(key_columns[0]) <= SCALAR_LOOKUP_LIMIT:
            return self._find_few(key_columns, now_us)

        rows = self.index.find(key_columns)
        codes = np.where(rows >= 0, PRESENT, NOT_FOUND).astype(np.int8)
        if self.max_age_units is not None and self.event_units is not None:
            ages = self._now_units(now_us) - self.event_units[np.maximum(rows, 0)]
            codes[(rows >= 0) & (ages > self.max_age_units)] = OUTSIDE_MAX_AGE
        return Lookup(view=self, rows=rows, codes=codes)

    def _find_few(self, key_columns: list[list[Any]], now_us: int) -> FewLookup:
        """Return what `find` returns, for at most SCALAR_LOOKUP_LIMIT keys (see `FewLookup`)."""
        rows = self.index.find_few(key_columns)
        codes = [PRESENT if row >= 0 else NOT_FOUND for row in rows]
        if self.max_age_units is not None and self.event_units is not None:
            now = self._now_units(now_us)
            for position, row in enumerate(rows):
                if row >= 0 and now - self.event_units.item(row) > self.max_age_units:
                    codes[position] = OUTSIDE_MAX_AGE
        return FewLookup(view=self, rows=rows, codes=codes)

    def _now_units(self, now_us: int) -> int:
        return max(now_us, self.built_units_us) * (self.units_per_second // 1_000_000)

    @property
    def built_units_us(self) -> int:
        return self.built_units // (self.units_per_second // 1_000_000)

    def describe(self) -> dict[str, Any]:
        """Return what GET /online reports about this view."""
        return {
            "table": self.entry.reference,
            "state": "loaded",
            "stamp": self.stamp,
            "rows": self.table.num_rows,
            "memory_bytes": self.nbytes,
            "parquet_bytes": self.entry.storage.bytes_on_disk,
            "index": self.index.kind,
            "built_at": self.built_at.isoformat(),
            "build_seconds": round(self.build_seconds, 6),
            "valid_until": _units_to_iso(self.valid_until_units, self.units_per_second),
        }


@dataclass
class DuckDBPath:
    """A table whose lookups run in DuckDB: its view did not fit in the memory budget at write
    stamp `stamp` (reason "over_budget"), or online views are turned off ("disabled")."""

    entry: RegistryEntry
    stamp: str
    reason: str
    needed_bytes: int = 0
    budget_bytes: int = 0

    def is_current(self, now_us: int) -> bool:
        return True

    def describe(self) -> dict[str, Any]:
        return {
            "table": self.entry.reference,
            "state": self.reason,
            "stamp": self.stamp,
            "memory_bytes": 0,
            "needed_bytes": self.needed_bytes,
            "budget_bytes": self.budget_bytes,
            "parquet_bytes": self.entry.storage.bytes_on_disk,
            "served_by": "duckdb",
        }


@dataclass
class OnlineStore:
    """The online views of one worker, with their memory budget."""

    store: FeatureStore
    settings: OnlineSettings
    views: dict[tuple[str, str], OnlineView | DuckDBPath] = field(default_factory=dict)
    _locks: dict[tuple[str, str], threading.Lock] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def __post_init__(self) -> None:
        if self.settings.load not in LOAD_MODES:
            raise ValueError(
                f"invalid SQLSTORE_ONLINE_LOAD={self.settings.load!r}: use lazy or eager"
            )

    @property
    def used_bytes(self) -> int:
        return sum(view.nbytes for view in self.views.values() if isinstance(view, OnlineView))

    def current(self, group: str, name: str, now_us: int) -> OnlineView | DuckDBPath | None:
        """Return the table's view when it matches the table's write stamp, else None.

        This is the per-request check: one read of the registry file. Raise NotFound for a
        table that does not exist, and drop its view."""
        try:
            stamp = self.store.registry.write_stamp(group, name)
        except NotFound:
            self.views.pop((group, name), None)
            raise
        view = self.views.get((group, name))
        if view is not None and view.stamp == stamp and view.is_current(now_us):
            return view
        return None

    def refresh(self, group: str, name: str, now_us: int) -> OnlineView | DuckDBPath:
        """Return the table's view, building it when it is missing or stale."""
        with self._table_lock(group, name):
            view = self.current(group, name, now_us)
            if view is not None:
                return view
            return self._build(group, name)

    def view(self, group: str, name: str, now_us: int) -> OnlineView | DuckDBPath:
        """Return the table's current view, building it in this thread when needed."""
        return self.current(group, name, now_us) or self.refresh(group, name, now_us)

    def state(self, group: str, name: str, now_us: int) -> OnlineView | DuckDBPath:
        """Return how lookups of a table are served now: its current view, building it in this
        thread when needed, or the DuckDB path."""
        if not self.settings.enabled:
            stamp = self.store.registry.write_stamp(group, name)
            return DuckDBPath(self.store.registry.get(group, name), stamp, reason="disabled")
        return self.current(group, name, now_us) or self.refresh(group, name, now_us)

    def find(
        self, state: OnlineView | DuckDBPath, raw_columns: dict[str, list[Any]], now_us: int
    ) -> Lookup:
        """Convert request values (one list per key column) and look them up in the view, or
        in DuckDB for a table without a view, which reads only the requested keys."""
        if isinstance(state, OnlineView):
            if state.integer_key and all(map(_all_int64, raw_columns.values())):
                return state.find(raw_columns, now_us)
            columns = convert_key_columns(state.entry, state.table.schema, raw_columns)
            return state.find(columns, now_us)
        return self._find_in_duckdb(state.entry, raw_columns, now_us, converted=False)

    def lookup_entities(
        self, reference: FeatureReference, entity_ids: Sequence[Any], now: datetime
    ) -> LookupResult:
        """Return what `sqlstore.lookup.lookup_entities` returns as of `now`, the current time,
        from the view."""
        now_us = datetime_to_us(now)
        entry = reference.entry
        if len(entity_ids) > MAX_ENTITY_IDS:
            raise InvalidInput(
                f"{len(entity_ids)} entity ids is more than the maximum {MAX_ENTITY_IDS} per "
                "request"
            )
        state = self.state(entry.group, entry.name, now_us)
        if isinstance(state, OnlineView):
            columns, reported = unique_entities(state.entry, state.table.schema, entity_ids)
            found = state.find(columns, now_us)
        else:
            schema = self.store.arrow_schema(state.entry)
            columns, reported = unique_entities(state.entry, schema, entity_ids)
            found = self._find_in_duckdb(state.entry, columns, now_us, converted=True)

        present = found.codes == PRESENT
        selected = lookup_columns(found.view.entry, reference)
        table = found.view.table.select(selected).take(pa.array(found.rows[present]))
        missing = [reported[i] for i in np.flatnonzero(~present)]
        return LookupResult(reference=reference, table=table, missing=missing)

    def _find_in_duckdb(
        self, entry: RegistryEntry, columns: dict[str, list[Any]], now_us: int, converted: bool
    ) -> Lookup:
        schema = self.store.arrow_schema(entry)
        if not converted:
            columns = convert_key_columns(entry, schema, columns)
        keys = keys_table(entry, schema, columns)
        partial = build_view(self.store, entry.group, entry.name, keys=keys)
        return partial.find(columns, now_us)

    def load_all(self) -> None:
        """Build the view of every table with an entity key (eager loading)."""
        for entry in self.store.list_tables():
            if entry.entity_key:
                self.refresh(entry.group, entry.name, _now_us())

    def describe(self) -> dict[str, Any]:
        """Return this worker's views, their memory and the budget, for GET /online."""
        return {
            "worker_pid": os.getpid(),
            "enabled": self.settings.enabled,
            "load": self.settings.load,
            "memory_budget_bytes": self.settings.memory_bytes,
            "memory_used_bytes": self.used_bytes,
            "views": [view.describe() for _, view in sorted(self.views.items())],
        }

    def _table_lock(self, group: str, name: str) -> threading.Lock:
        with self._lock:
            return self._locks.setdefault((group, name), threading.Lock())

    def _build(self, group: str, name: str) -> OnlineView | DuckDBPath:
        # NOTE: every write rebuilds the whole view, even an append of a few rows, and a view
        # over the budget is built in full before it is dropped.
        key = (group, name)
        self.views.pop(key, None)
        view = build_view(self.store, group, name)
        # Checking and admitting under one lock keeps two tables built at once within budget.
        with self._lock:
            available = self.settings.memory_bytes - self.used_bytes
            fits = view.nbytes <= available
            if fits:
                self.views[key] = view
        if fits:
            logger.info(
                "online view of %s/%s built: %d rows, %d bytes, %.3f s (stamp %s)",
                group,
                name,
                view.table.num_rows,
                view.nbytes,
                view.build_seconds,
                view.stamp,
            )
            return view

        over = DuckDBPath(
            entry=view.entry,
            stamp=view.stamp,
            reason="over_budget",
            needed_bytes=view.nbytes,
            budget_bytes=self.settings.memory_bytes,
        )
        self.views[key] = over
        logger.warning(
            "online view of %s/%s needs %d bytes but %d of the %d bytes of "
            "SQLSTORE_ONLINE_MEMORY_BYTES are left; its lookups run in DuckDB until it is "
            "written again",
            group,
            name,
            view.nbytes,
            max(available, 0),
            self.settings.memory_bytes,
        )
        return over


def lookup_columns(entry: RegistryEntry, reference: FeatureReference) -> list[str]:
    """Return the columns a batch lookup returns: the key, the event timestamp, then the
    referenced features (by default every column but the key and the timestamps)."""
    leading = [*entry.entity_key]
    if entry.timestamp_column:
        leading.append(entry.timestamp_column)
    requested = reference.columns or default_feature_columns(entry)
    known = {column.name for column in entry.columns}
    for column in requested:
        if column not in known:
            available = ", ".join(sorted(known))
            raise InvalidInput(
                f"unknown column {column!r} in feature {reference.requested!r}; "
                f"columns: {available}"
            )
    return leading + [column for column in requested if column not in leading]


def _check_registered_columns(store: FeatureStore, entry: RegistryEntry, table: pa.Table) -> None:
    """Raise TableUnavailable when the file lacks a registered column, as a file of another
    table copied over it does. Lookups would otherwise fail later on the missing column."""
    missing = [column.name for column in entry.columns if column.name not in table.column_names]
    if missing:
        error = KeyError(f"the file has no column {missing[0]!r}")
        raise_if_damaged([store.root / entry.path], [entry.reference], error)
        raise error


def build_view(
    store: FeatureStore, group: str, name: str, keys: pa.Table | None = None
) -> OnlineView:
    """Read the latest row per entity of a table as of now into an OnlineView.

    With `keys` (an Arrow table of key columns), only those entities are read: the DuckDB path
    for a table too large for the budget. The write stamp is read before the data, so the view
    is never older than its stamp."""
    for attempt in range(1, BUILD_ATTEMPTS + 1):
        stamp = store.registry.write_stamp(group, name)
        entry = store.registry.get(group, name)
        build = functools.partial(_build_view, store, entry, stamp, keys)
        try:
            return read_unchanged([store.root / entry.path], build, [entry.reference])
        except (duckdb.Error, KeyError) as error:
            # A write that replaced the file between reading the entry and the file can change
            # its columns; the next attempt reads the new entry.
            if store.registry.write_stamp(group, name) == stamp or attempt == BUILD_ATTEMPTS:
                raise
            logger.info("rebuilding online view of %s/%s after a write: %s", group, name, error)
    raise AssertionError("unreachable")


def _build_view(
    store: FeatureStore, entry: RegistryEntry, stamp: str, keys: pa.Table | None
) -> OnlineView:
    if not entry.entity_key:
        raise InvalidInput(
            f"feature table {entry.reference} has no entity key, so it cannot be looked up by "
            "entity; declare entity_key when writing it"
        )
    started = time.perf_counter()
    built_at = datetime.now(UTC)
    now_us = datetime_to_us(built_at)
    schema = store.arrow_schema(entry)
    units_per_second = _units_per_second(schema, entry)
    now_units = now_us * (units_per_second // 1_000_000)

    sql, valid_until_sql = _view_sql(store, entry, units_per_second, now_units, keys is not None)
    with store.catalog.cursor() as cursor:
        if keys is not None:
            cursor.register(KEYS_VIEW, keys)
        table = query_arrow(cursor, sql)
        valid_until = None
        if valid_until_sql and keys is None:
            valid_until = cursor.sql(valid_until_sql).fetchall()[0][0]
    _check_registered_columns(store, entry, table)

    event_units = None
    if entry.timestamp_column:
        event_units = table[EVENT_UNITS_COLUMN].to_numpy()
        table = table.drop([EVENT_UNITS_COLUMN])
    table = table.combine_chunks()
    return OnlineView(
        json_arrays={name: json_array(table[name]) for name in table.column_names},
        numpy_arrays=_numpy_arrays(table),
        entry=entry,
        stamp=stamp,
        table=table,
        index=_build_index(table, entry),
        event_units=event_units,
        units_per_second=units_per_second,
        max_age_units=max_age_units(entry.ttl_seconds, units_per_second),
        built_units=now_units,
        valid_until_units=valid_until,
        built_at=built_at,
        build_seconds=time.perf_counter() - started,
        partial=keys is not None,
    )


def _view_sql(
    store: FeatureStore,
    entry: RegistryEntry,
    units_per_second: int,
    now_units: int,
    filtered: bool,
) -> tuple[str, str | None]:
    """Return the query of the latest row per key at or before now, and the query of the
    earliest event time after now (None for a table without event timestamps)."""
    source = f"read_parquet({quote_string(str(store.root / entry.path))}, file_row_number = true)"
    keys = ", ".join(quote_identifier(column) for column in entry.entity_key)
    ranking = []
    where = ""
    select = "*"
    valid_until_sql = None
    if entry.timestamp_column:
        events = _event_units_sql(entry.timestamp_column, units_per_second)
        select = f"*, {events} AS {EVENT_UNITS_COLUMN}"
        where = f" WHERE {events} <= {now_units}"
        ranking.append(f"{EVENT_UNITS_COLUMN} DESC")
        valid_until_sql = f"SELECT min({events}) FROM {source} WHERE {events} > {now_units}"
    if entry.created_timestamp_column:
        ranking.append(f"{quote_identifier(entry.created_timestamp_column)} DESC NULLS LAST")
    ranking.append("file_row_number DESC")

    rows = f"SELECT {select} FROM {source} AS f{where}"
    if filtered:
        match = " AND ".join(
            f"f.{quote_identifier(c)} = k.{quote_identifier(c)}" for c in entry.entity_key
        )
        rows = f"SELECT {select} FROM {source} AS f SEMI JOIN {KEYS_VIEW} AS k ON {match}{where}"
    sql = (
        f"SELECT * EXCLUDE (file_row_number) FROM ({rows}) "
        f"QUALIFY row_number() OVER (PARTITION BY {keys} ORDER BY {', '.join(ranking)}) = 1"
    )
    return sql, valid_until_sql


def _event_units_sql(column: str, units_per_second: int) -> str:
    """Return the SQL of an event time as an integer, compared exactly as the point-in-time
    join compares it: as TIMESTAMPTZ microseconds or TIMESTAMP_NS nanoseconds."""
    quoted = quote_identifier(column)
    if units_per_second == 1_000_000_000:
        return f"epoch_ns(CAST({quoted} AS TIMESTAMP_NS))"
    return f"epoch_us(CAST({quoted} AS TIMESTAMPTZ))"


def _units_per_second(schema: pa.Schema, entry: RegistryEntry) -> int:
    """Return 10**9 when the event or created timestamp has nanoseconds, else 10**6, as the
    point-in-time join does for a spine of microsecond timestamps."""
    units = set()
    for column in (entry.timestamp_column, entry.created_timestamp_column):
        if column:
            units.add(schema.field(column).type.unit)
    return 1_000_000_000 if "ns" in units else 1_000_000


def max_age_units(ttl_seconds: float | None, units_per_second: int) -> int | None:
    """Return the TTL as a whole number of time units, or None when values never expire.

    Ages are whole units, so age <= TTL exactly when age <= floor(TTL); flooring the decimal
    form of the TTL keeps 0.000003 s at 3 microseconds."""
    if not ttl_seconds or ttl_seconds == math.inf:
        return None
    return math.floor(Fraction(repr(float(ttl_seconds))) * units_per_second)


def json_array(column: pa.ChunkedArray) -> pa.Array:
    """Return a column as one Arrow array whose Python values encode to the JSON of the typed
    values: UTC and naive timestamps of second to microsecond precision become the ISO 8601
    text that orjson writes for the datetimes, which is many times faster to convert per
    request than building datetime objects, and a time column that contains 24:00:00 becomes
    text, because Python's time would turn it into 00:00:00."""
    array = column.combine_chunks()
    arrow_type = array.type
    if pa.types.is_time(arrow_type):
        text = end_of_day_text(column, "json")
        return array if text is None else text.combine_chunks()
    if not pa.types.is_timestamp(arrow_type) or arrow_type.unit == "ns":
        return array
    if arrow_type.tz not in (None, "UTC", "Etc/UTC", "+00:00", "Z"):
        return array
    # Arrow's %S prints the fraction of the unit; orjson omits a zero fraction and prints six
    # digits otherwise, so the values are formatted as microseconds.
    text = pc.strftime(array.cast(pa.timestamp("us", tz=arrow_type.tz)), "%Y-%m-%dT%H:%M:%S")
    text = pc.replace_substring_regex(text, r"\.000000$", "")
    if arrow_type.tz is None:
        return text
    return pc.binary_join_element_wise(text, "+00:00", "")


def _numpy_arrays(table: pa.Table) -> dict[str, np.ndarray]:
    """Return numpy views of the numeric and boolean columns without nulls (booleans are
    copied from Arrow's bitmaps)."""
    arrays = {}
    for field_, column in zip(table.schema, table.columns, strict=True):
        if column.null_count == 0 and any(check(field_.type) for check in NUMPY_TYPES):
            arrays[field_.name] = column.to_numpy()
    return arrays


def _build_index(table: pa.Table, entry: RegistryEntry) -> IntegerKeyIndex | HashKeyIndex:
    columns = [table[column] for column in entry.entity_key]
    if len(columns) == 1 and type_family(columns[0].type) == "integer":
        return IntegerKeyIndex(columns[0])
    return HashKeyIndex(columns)


def _now_us() -> int:
    return time.time_ns() // 1_000


def datetime_to_us(moment: datetime) -> int:
    delta = moment - datetime(1970, 1, 1, tzinfo=UTC)
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds


def _units_to_iso(units: int | None, units_per_second: int) -> str | None:
    if units is None:
        return None
    seconds, rest = divmod(units, units_per_second)
    moment = datetime.fromtimestamp(seconds, tz=UTC)
    return moment.replace(microsecond=rest * 1_000_000 // units_per_second).isoformat()


# Converting requested keys


def convert_key_columns(
    entry: RegistryEntry, schema: pa.Schema, columns: dict[str, list[Any]]
) -> dict[str, list[Any]]:
    """Convert request values, one list per key column, to the Python values of the key's type.

    Raise InvalidInput naming the value and the key column, with the messages of the DuckDB
    lookup. Integers for an integer key pass through unchanged after a range check."""
    converted = {}
    for column in entry.entity_key:
        values = columns[column]
        arrow_type = schema.field(column).type
        if type_family(arrow_type) == "integer" and _all_int64(values):
            converted[column] = values
            continue
        what = f"entity id of key {column!r} in {entry.reference}"
        converted[column] = [
            _convert_key(value, arrow_type, what, column, entry) for value in values
        ]
    return converted


def _all_int64(values: Sequence[Any]) -> bool:
    """Return True when every value is an int in the int64 range, which needs no conversion
    for an integer key."""
    return all(type(value) is int and INT64_MIN <= value <= INT64_MAX for value in values)


def _convert_key(
    value: Any, arrow_type: pa.DataType, what: str, column: str, entry: RegistryEntry
) -> Any:
    if value is None:
        raise InvalidInput(f"entity id for key {column!r} of {entry.reference} is null")
    return convert_value(value, arrow_type, what)


def unique_entities(
    entry: RegistryEntry, schema: pa.Schema, entity_ids: Sequence[Any]
) -> tuple[dict[str, list[Any]], list[Any]]:
    """Convert the entity ids of a batch request (scalars, or objects for composite keys) and
    drop repeats, as the DuckDB lookup does. Return the key columns and the ids as the batch
    response reports them: converted scalars, or objects of converted values."""
    key_columns = entry.entity_key
    if len(key_columns) == 1 and type_family(schema.field(key_columns[0]).type) == "integer":
        if _all_int64(entity_ids):
            unique = list(dict.fromkeys(entity_ids))
            return {key_columns[0]: unique}, unique

    seen: dict[tuple[Any, ...], None] = {}
    for entity in entity_ids:
        seen.setdefault(convert_entity(entity, key_columns, schema, entry))
    columns = {column: [key[i] for key in seen] for i, column in enumerate(key_columns)}
    if len(key_columns) == 1:
        return columns, columns[key_columns[0]]
    reported = [dict(zip(key_columns, key, strict=True)) for key in seen]
    return columns, reported


def keys_table(entry: RegistryEntry, schema: pa.Schema, columns: dict[str, list[Any]]) -> pa.Table:
    """Return converted keys as an Arrow table, the key filter of the DuckDB path."""
    key_columns = entry.entity_key
    unsigned = [column for column in key_columns if pa.types.is_uint64(schema.field(column).type)]
    if unsigned:
        # A negative id equals no uint64 key and a uint64 array cannot hold it.
        count = len(columns[key_columns[0]])
        rows = [i for i in range(count) if all(columns[c][i] >= 0 for c in unsigned)]
        columns = {column: [columns[column][i] for i in rows] for column in key_columns}
    arrays = {}
    for column in key_columns:
        arrays[column] = pa.array(columns[column], entity_arrow_type(schema.field(column).type))
    return pa.table(arrays)
