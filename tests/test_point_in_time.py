"""Property tests of the point-in-time join against a brute-force oracle.

The oracle below does not call sqlstore's join. For each entity row it scans every feature row
in write order and applies the rules directly: same key, event timestamp at or before the entity
timestamp (strictly before with inclusive=False), created timestamp at or before it with
created_before_event, then the latest event timestamp, the latest created timestamp and the
last written row, and finally the TTL. Timestamps are integer nanoseconds since the epoch
throughout, so every comparison is exact.
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, replace
from fractions import Fraction
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sqlstore.store import FeatureStore, TableDefinition

BASE_NS = 1_704_067_200 * 10**9  # 2024-01-01T00:00:00Z
NANOSECONDS = {"s": 10**9, "ms": 10**6, "us": 10**3, "ns": 1}
TIME_ZONES = (None, "UTC", "Asia/Kolkata", "America/New_York")
MICROSECOND_NS = 1_000
# Offsets from a match's age that put the TTL exactly on it or just off it.
TTL_OFFSETS_NS = (0, -MICROSECOND_NS, MICROSECOND_NS, -1, 1, -MICROSECOND_NS // 2)

# Each example writes Parquet files and runs joins: about 0.1 s with one table and 0.15 s with
# three on 2 cores, so these counts keep the file near one minute.
SINGLE_TABLE_SETTINGS = settings(
    max_examples=200,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
SEVERAL_TABLES_SETTINGS = settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


@dataclass(frozen=True)
class FeatureSpec:
    """A feature table of the property tests: its key, timestamp columns and value columns."""

    group: str
    name: str
    entity_key: tuple[str, ...]
    timestamp_column: str | None
    created_timestamp_column: str | None
    value_columns: tuple[str, ...]

    @property
    def reference(self) -> str:
        return f"{self.group}/{self.name}"


@dataclass(frozen=True)
class FeatureRow:
    """One written feature row. `values` maps each value column to a number unique per row."""

    key: tuple[Any, ...]
    event_ns: int | None
    created_ns: int | None
    values: dict[str, int]


@pytest.fixture(scope="module")
def store() -> Iterator[FeatureStore]:
    with tempfile.TemporaryDirectory() as root:
        yield FeatureStore(Path(root))


# The oracle


def exact_ttl_ns(ttl: float | None) -> Fraction | None:
    """Return the TTL in nanoseconds as the exact decimal the caller wrote, None when unlimited."""
    if not ttl:
        return None
    return Fraction(repr(ttl)) * 10**9


def oracle_match(
    spec: FeatureSpec,
    rows: list[FeatureRow],
    key: tuple[Any, ...],
    spine_ns: int | None,
    *,
    ttl: float | None,
    inclusive: bool,
    created_before_event: bool,
) -> FeatureRow | None:
    """Return the feature row the join must attach to one entity row, or None for nulls."""
    if any(part is None for part in key):
        return None
    has_time = spec.timestamp_column is not None
    checks_created = created_before_event and spec.created_timestamp_column is not None
    if (has_time or checks_created) and spine_ns is None:
        return None

    best = None
    best_rank = None
    for position, row in enumerate(rows):
        if row.key != key:
            continue
        if has_time and inclusive and row.event_ns > spine_ns:
            continue
        if has_time and not inclusive and row.event_ns >= spine_ns:
            continue
        if checks_created and row.created_ns > spine_ns:
            continue
        rank = (
            row.event_ns if has_time else 0,
            row.created_ns if spec.created_timestamp_column else 0,
            position,
        )
        if best_rank is None or rank > best_rank:
            best, best_rank = row, rank

    limit = exact_ttl_ns(ttl)
    if best is not None and has_time and limit is not None and spine_ns - best.event_ns > limit:
        return None
    return best


def oracle_values(
    spec: FeatureSpec,
    rows: list[FeatureRow],
    keys: list[Any],
    spine_ns: list[int | None],
    **rules: Any,
) -> list[int | None]:
    """Return the value `v` the join must give each entity row of a single-key table."""
    values = []
    for key, moment in zip(keys, spine_ns, strict=True):
        match = oracle_match(spec, rows, (key,), moment, **rules)
        values.append(None if match is None else match.values["v"])
    return values


def oracle_output_names(
    spine_columns: list[str], selected: list[tuple[FeatureSpec, list[str]]], full_names: bool
) -> list[list[str]]:
    """Return the output name of each selected column: `<table>__<column>` on request or when
    the plain name appears more than once among entity and selected columns."""
    counts: dict[str, int] = {}
    for name in spine_columns:
        counts[name] = counts.get(name, 0) + 1
    for _, columns in selected:
        for column in columns:
            counts[column] = counts.get(column, 0) + 1
    names = []
    for spec, columns in selected:
        names.append(
            [
                f"{spec.name}__{column}" if full_names or counts[column] > 1 else column
                for column in columns
            ]
        )
    return names


# Building inputs


def timestamp_array(values_ns: list[int | None], unit: str, time_zone: str | None) -> pa.Array:
    """Return nanosecond instants as an Arrow timestamp array in `unit`, labelled `time_zone`
    (None: naive, which sqlstore reads as UTC)."""
    scale = NANOSECONDS[unit]
    counts = [None if v is None else v // scale for v in values_ns]
    return pa.array(counts, pa.int64()).cast(pa.timestamp(unit, tz=time_zone))


def iso_strings(values_ns: list[int | None], time_zone: str | None) -> pa.Array:
    """Return nanosecond instants as ISO 8601 strings, with the offset of `time_zone` or none."""
    texts = []
    for value in values_ns:
        if value is None:
            texts.append(None)
            continue
        moment = pd.Timestamp(value, unit="ns", tz="UTC")
        if time_zone is None:
            texts.append(moment.tz_localize(None).isoformat())
        else:
            texts.append(moment.tz_convert(time_zone).isoformat())
    return pa.array(texts, pa.string())


def integer_key_array(values: list[int | None], encoding: str) -> pa.Array:
    """Return integer keys in one of the encodings the join casts: int64, int32, whole floats,
    or numeric strings with surrounding spaces and signs."""
    if encoding == "int64":
        return pa.array(values, pa.int64())
    if encoding == "int32":
        return pa.array(values, pa.int32())
    if encoding == "float":
        return pa.array([None if v is None else float(v) for v in values], pa.float64())
    texts = []
    for index, value in enumerate(values):
        if value is None:
            texts.append(None)
        elif index % 3 == 0:
            texts.append(f" +{value} ")
        elif index % 3 == 1:
            texts.append(f"00{value}")
        else:
            texts.append(str(value))
    return pa.array(texts, pa.string())


def to_input(table: pa.Table, container: str) -> pa.Table | pd.DataFrame:
    """Hand the entity table over as Arrow or as pandas."""
    if container == "pandas":
        return table.to_pandas()
    return table


def write_feature_table(
    store: FeatureStore,
    spec: FeatureSpec,
    rows: list[FeatureRow],
    chunk_sizes: list[int],
    ttl: float,
    stored_unit: str,
    stored_time_zone: str | None,
) -> None:
    """Write `rows` in order: the first chunk replaces the table and each later one appends.

    The table is overwritten, not deleted first, because a deleted table restarts at version 1
    and FeatureStore caches file schemas by version."""
    definition = TableDefinition(
        entity_key=list(spec.entity_key),
        timestamp_column=spec.timestamp_column,
        created_timestamp_column=spec.created_timestamp_column,
        ttl_seconds=ttl,
    )
    start = 0
    for index, size in enumerate(chunk_sizes):
        chunk = rows[start : start + size]
        start += size
        if not chunk:
            continue
        columns: dict[str, pa.Array] = {}
        for position, column in enumerate(spec.entity_key):
            columns[column] = pa.array([row.key[position] for row in chunk])
        if spec.timestamp_column:
            columns[spec.timestamp_column] = timestamp_array(
                [row.event_ns for row in chunk], stored_unit, stored_time_zone
            )
        if spec.created_timestamp_column:
            columns[spec.created_timestamp_column] = timestamp_array(
                [row.created_ns for row in chunk], stored_unit, stored_time_zone
            )
        for column in spec.value_columns:
            columns[column] = pa.array([row.values[column] for row in chunk], pa.int64())
        mode = "overwrite" if index == 0 else "append"
        store.write(spec.group, spec.name, pa.table(columns), mode=mode, definition=definition)


def join_both_ways(
    store: FeatureStore, entities: Any, features: list[str], sorted_applies: bool, **options: Any
) -> pa.Table:
    """Run the join in DuckDB and through the numpy search of sorted tables, check that both
    return the same table, types included, and return it.

    Where `sorted_applies`, every table must take the numpy search (join_method "sorted");
    elsewhere "auto" mixes the two engines per table.
    """
    in_duckdb = store.get_historical_features(entities, features, join_method="duckdb", **options)
    method = "sorted" if sorted_applies else "auto"
    searched = store.get_historical_features(entities, features, join_method=method, **options)

    assert searched.schema == in_duckdb.schema
    assert searched.to_pydict() == in_duckdb.to_pydict()
    return in_duckdb


def output_instants_ns(column: pa.ChunkedArray) -> list[int | None]:
    """Return a timestamp column as integer nanoseconds since the epoch."""
    return column.cast(pa.timestamp("ns", tz="UTC")).cast(pa.int64()).to_pylist()


# Strategies


@st.composite
def time_grid(draw: st.DrawFn) -> tuple[int, str]:
    """Draw the spacing of all timestamps of an example and a spine unit that can hold them."""
    tick_unit = draw(st.sampled_from(["ns", "us", "ms", "s"]))
    spine_units = [unit for unit in NANOSECONDS if NANOSECONDS[unit] <= NANOSECONDS[tick_unit]]
    return NANOSECONDS[tick_unit], draw(st.sampled_from(spine_units))


def ttl_choices(tick_ns: int) -> st.SearchStrategy[float]:
    """Draw a TTL in seconds: unlimited (0), a whole number of ticks, or one microsecond or one
    nanosecond off such a value, so that the inclusive boundary gets hit exactly."""
    ticks = st.integers(min_value=0, max_value=6)
    offsets = st.sampled_from([0, MICROSECOND_NS, -MICROSECOND_NS, 1, -1])
    exact = st.builds(lambda n, offset: max(n * tick_ns + offset, 1) / 1e9, ticks, offsets)
    return st.one_of(st.just(0.0), exact)


def single_key_rows(
    spec: FeatureSpec, raw_rows: list[tuple[Any, int, int]], tick_ns: int
) -> list[FeatureRow]:
    """Return feature rows from (key, event tick, created tick) triples, valued by position."""
    return [
        FeatureRow(
            key=(k,),
            event_ns=BASE_NS + j * tick_ns,
            created_ns=BASE_NS + c * tick_ns if spec.created_timestamp_column else None,
            values={"v": index},
        )
        for index, (k, j, c) in enumerate(raw_rows)
    ]


SINGLE = FeatureSpec(
    group="prop",
    name="single",
    entity_key=("k",),
    timestamp_column="event_timestamp",
    created_timestamp_column=None,
    value_columns=("v",),
)
SINGLE_CREATED = FeatureSpec(
    group="prop",
    name="single_created",
    entity_key=("k",),
    timestamp_column="event_timestamp",
    created_timestamp_column="created",
    value_columns=("v",),
)


@given(data=st.data())
@SINGLE_TABLE_SETTINGS
def test_single_table_matches_oracle(store: FeatureStore, data: st.DataObject) -> None:
    spec = data.draw(st.sampled_from([SINGLE, SINGLE_CREATED]), label="table")
    tick_ns, spine_unit = data.draw(time_grid(), label="grid")
    stored_unit = "ns" if tick_ns == 1 else data.draw(st.sampled_from(["us", "ns"]))
    stored_time_zone = data.draw(st.sampled_from(TIME_ZONES), label="stored time zone")

    raw_rows = data.draw(
        st.lists(
            st.tuples(st.integers(0, 3), st.integers(0, 8), st.integers(0, 10)),
            min_size=1,
            max_size=14,
        ),
        label="feature rows",
    )
    rows = single_key_rows(spec, raw_rows, tick_ns)
    chunk_sizes = data.draw(
        st.lists(st.integers(1, 6), min_size=1, max_size=3), label="write chunks"
    )
    chunk_sizes[-1] += len(rows)
    registered_ttl = data.draw(ttl_choices(tick_ns), label="registered ttl")
    write_feature_table(
        store, spec, rows, chunk_sizes, registered_ttl, stored_unit, stored_time_zone
    )

    spine_rows = data.draw(
        st.lists(
            st.tuples(
                st.one_of(st.none(), st.integers(0, 4)),
                st.one_of(st.none(), st.integers(-1, 11)),
            ),
            max_size=16,
        ),
        label="entity rows",
    )
    duplicates = data.draw(st.lists(st.integers(0, 15), max_size=4), label="repeated rows")
    spine_rows += [spine_rows[i] for i in duplicates if i < len(spine_rows)]
    if not spine_rows:
        spine_rows = [(0, 4)]

    keys = [k for k, _ in spine_rows]
    spine_ns = [None if j is None else BASE_NS + j * tick_ns for _, j in spine_rows]
    key_encoding = data.draw(st.sampled_from(["int64", "int32", "float", "string"]))
    time_form = data.draw(st.sampled_from(["arrow", "iso"]), label="timestamp form")
    spine_time_zone = data.draw(st.sampled_from(TIME_ZONES), label="spine time zone")
    if time_form == "iso":
        timestamps = iso_strings(spine_ns, spine_time_zone)
    else:
        timestamps = timestamp_array(spine_ns, spine_unit, spine_time_zone)
    spine = pa.table(
        {
            "row_id": pa.array(range(len(spine_rows)), pa.int64()),
            "k": integer_key_array(keys, key_encoding),
            "event_timestamp": timestamps,
        }
    )
    container = data.draw(st.sampled_from(["arrow", "pandas"]), label="container")

    inclusive = data.draw(st.booleans(), label="inclusive")
    created_before_event = data.draw(st.booleans(), label="created_before_event")
    entity_input = to_input(spine, container)
    # The numpy search takes integer and whole float keys, and one time comparison.
    sorted_applies = key_encoding != "string" and not (
        created_before_event and spec.created_timestamp_column
    )

    def expected_values(ttl: float | None) -> list[int | None]:
        return oracle_values(
            spec,
            rows,
            keys,
            spine_ns,
            ttl=ttl,
            inclusive=inclusive,
            created_before_event=created_before_event,
        )

    result = join_both_ways(
        store,
        entity_input,
        [spec.reference],
        sorted_applies,
        inclusive=inclusive,
        created_before_event=created_before_event,
    )

    assert result.num_rows == len(spine_rows)
    assert result.column_names == ["row_id", "k", "event_timestamp", "v"]
    assert result["row_id"].to_pylist() == list(range(len(spine_rows)))
    assert output_instants_ns(result["event_timestamp"]) == spine_ns
    assert result["v"].to_pylist() == expected_values(registered_ttl)

    # A per-request TTL placed exactly at, or just below or above, the age of a match.
    ages = [
        moment - match.event_ns
        for key, moment in zip(keys, spine_ns, strict=True)
        if (
            match := oracle_match(
                spec,
                rows,
                (key,),
                moment,
                ttl=None,
                inclusive=inclusive,
                created_before_event=created_before_event,
            )
        )
        is not None
    ]
    if not ages:
        return
    age = data.draw(st.sampled_from(ages), label="age of a match")
    offset = data.draw(st.sampled_from(TTL_OFFSETS_NS), label="ttl offset")
    override = max(age + offset, 1) / 1e9
    overridden = join_both_ways(
        store,
        entity_input,
        [spec.reference],
        sorted_applies,
        inclusive=inclusive,
        ttl_seconds={spec.reference: override},
        created_before_event=created_before_event,
    )

    assert overridden["v"].to_pylist() == expected_values(override)


# The same definitions as SINGLE and SINGLE_CREATED, in tables of their own with string keys.
TEXT_KEYED = replace(SINGLE, name="text_keyed")
TEXT_KEYED_CREATED = replace(SINGLE_CREATED, name="text_keyed_created")
TEXT_KEYS = ("a", "b", "ab", "")


@given(data=st.data())
@SINGLE_TABLE_SETTINGS
def test_string_keys_match_oracle(store: FeatureStore, data: st.DataObject) -> None:
    """String keys, few distinct times so that ties are common, both engines."""
    spec = data.draw(st.sampled_from([TEXT_KEYED, TEXT_KEYED_CREATED]), label="table")
    tick_ns, spine_unit = data.draw(time_grid(), label="grid")
    stored_unit = "ns" if tick_ns == 1 else data.draw(st.sampled_from(["us", "ns"]))
    raw_rows = data.draw(
        st.lists(
            st.tuples(st.sampled_from(TEXT_KEYS), st.integers(0, 3), st.integers(0, 2)),
            min_size=1,
            max_size=16,
        ),
        label="feature rows",
    )
    rows = single_key_rows(spec, raw_rows, tick_ns)
    chunk_sizes = data.draw(st.lists(st.integers(1, 6), min_size=1, max_size=3), label="chunks")
    chunk_sizes[-1] += len(rows)
    ttl = data.draw(ttl_choices(tick_ns), label="ttl")
    write_feature_table(store, spec, rows, chunk_sizes, ttl, stored_unit, "UTC")

    spine_rows = data.draw(
        st.lists(
            st.tuples(
                st.one_of(st.none(), st.sampled_from([*TEXT_KEYS, "c"])),
                st.one_of(st.none(), st.integers(-1, 4)),
            ),
            min_size=1,
            max_size=16,
        ),
        label="entity rows",
    )
    keys = [k for k, _ in spine_rows]
    spine_ns = [None if j is None else BASE_NS + j * tick_ns for _, j in spine_rows]
    spine_time_zone = data.draw(st.sampled_from(TIME_ZONES), label="spine time zone")
    spine = pa.table(
        {
            "k": pa.array(keys, pa.string()),
            "event_timestamp": timestamp_array(spine_ns, spine_unit, spine_time_zone),
        }
    )
    container = data.draw(st.sampled_from(["arrow", "pandas"]), label="container")
    inclusive = data.draw(st.booleans(), label="inclusive")

    result = join_both_ways(
        store, to_input(spine, container), [spec.reference], True, inclusive=inclusive
    )

    expected = oracle_values(
        spec, rows, keys, spine_ns, ttl=ttl, inclusive=inclusive, created_before_event=False
    )
    assert result["k"].to_pylist() == keys
    assert result["v"].to_pylist() == expected


# Several tables with different keys

ALPHA = FeatureSpec(
    group="prop",
    name="alpha",
    entity_key=("k",),
    timestamp_column="event_timestamp",
    created_timestamp_column=None,
    value_columns=("v", "a"),
)
BETA = FeatureSpec(
    group="prop",
    name="beta",
    entity_key=("k", "c"),
    timestamp_column="valid_from",
    created_timestamp_column="created",
    value_columns=("v", "b"),
)
GAMMA = FeatureSpec(
    group="other",
    name="gamma",
    entity_key=("c",),
    timestamp_column=None,
    created_timestamp_column="created",
    value_columns=("w",),
)
LETTERS = ("x", "y", "z")


@st.composite
def feature_rows(draw: st.DrawFn, spec: FeatureSpec, tick_ns: int) -> list[FeatureRow]:
    raw = draw(
        st.lists(
            st.tuples(
                st.integers(0, 2),
                st.sampled_from(LETTERS[:2]),
                st.integers(0, 6),
                st.integers(0, 8),
            ),
            min_size=1,
            max_size=10,
        )
    )
    rows = []
    for index, (k, c, j, created) in enumerate(raw):
        key = tuple({"k": k, "c": c}[column] for column in spec.entity_key)
        rows.append(
            FeatureRow(
                key=key,
                event_ns=BASE_NS + j * tick_ns if spec.timestamp_column else None,
                created_ns=BASE_NS + created * tick_ns if spec.created_timestamp_column else None,
                values={
                    column: 1000 * offset + index
                    for offset, column in enumerate(spec.value_columns)
                },
            )
        )
    return rows


@given(data=st.data())
@SEVERAL_TABLES_SETTINGS
def test_several_tables_match_oracle(store: FeatureStore, data: st.DataObject) -> None:
    tick_ns, spine_unit = data.draw(time_grid(), label="grid")
    stored_unit = "ns" if tick_ns == 1 else "us"
    specs = [ALPHA, BETA, GAMMA]
    table_rows: dict[str, list[FeatureRow]] = {}
    ttls: dict[str, float] = {}
    for spec in specs:
        rows = data.draw(feature_rows(spec, tick_ns), label=spec.name)
        chunk_sizes = data.draw(st.lists(st.integers(1, 5), min_size=1, max_size=3))
        chunk_sizes[-1] += len(rows)
        ttl = (
            data.draw(ttl_choices(tick_ns), label=f"{spec.name} ttl")
            if spec.timestamp_column
            else 0.0
        )
        write_feature_table(store, spec, rows, chunk_sizes, ttl, stored_unit, "UTC")
        table_rows[spec.reference] = rows
        ttls[spec.reference] = ttl

    spine_rows = data.draw(
        st.lists(
            st.tuples(
                st.one_of(st.none(), st.integers(0, 3)),
                st.one_of(st.none(), st.sampled_from(LETTERS)),
                st.one_of(st.none(), st.integers(-1, 8)),
            ),
            min_size=1,
            max_size=14,
        ),
        label="entity rows",
    )
    timestamp_column = data.draw(st.sampled_from(["event_timestamp", "at"]))
    carries_w = data.draw(st.booleans(), label="entity table has a column w")
    spine_ns = [None if j is None else BASE_NS + j * tick_ns for _, _, j in spine_rows]
    columns = {
        "row_id": pa.array(range(len(spine_rows)), pa.int64()),
        "c": pa.array([c for _, c, _ in spine_rows], pa.string()),
        timestamp_column: timestamp_array(
            spine_ns, spine_unit, data.draw(st.sampled_from(TIME_ZONES))
        ),
        "k": pa.array([k for k, _, _ in spine_rows], pa.int32()),
    }
    if carries_w:
        columns["w"] = pa.array(["carried"] * len(spine_rows))
    spine = pa.table(columns)

    order = data.draw(st.permutations(specs), label="reference order")
    selections = []
    references = []
    for spec in order:
        picked = data.draw(
            st.one_of(
                st.none(),
                st.lists(st.sampled_from(spec.value_columns), min_size=1, max_size=2, unique=True),
            ),
            label=f"{spec.name} columns",
        )
        references.append(
            spec.reference if picked is None else f"{spec.reference}:{','.join(picked)}"
        )
        selections.append((spec, list(spec.value_columns) if picked is None else picked))
    full_names = data.draw(st.booleans(), label="full_feature_names")
    inclusive = data.draw(st.booleans(), label="inclusive")
    created_before_event = data.draw(st.booleans(), label="created_before_event")

    # ALPHA takes the numpy search; BETA (composite key) and GAMMA (static) join in DuckDB.
    result = join_both_ways(
        store,
        spine,
        references,
        False,
        timestamp_column=timestamp_column,
        full_feature_names=full_names,
        inclusive=inclusive,
        created_before_event=created_before_event,
    )

    names = oracle_output_names(spine.column_names, selections, full_names)
    flat_names = [name for group in names for name in group]
    assert result.column_names == spine.column_names + flat_names
    assert result["row_id"].to_pylist() == list(range(len(spine_rows)))
    for (spec, selected), output_names in zip(selections, names, strict=True):
        expected: dict[str, list[int | None]] = {name: [] for name in output_names}
        for (k, c, _), moment in zip(spine_rows, spine_ns, strict=True):
            key = tuple({"k": k, "c": c}[column] for column in spec.entity_key)
            match = oracle_match(
                spec,
                table_rows[spec.reference],
                key,
                moment,
                ttl=ttls[spec.reference],
                inclusive=inclusive,
                created_before_event=created_before_event,
            )
            for column, name in zip(selected, output_names, strict=True):
                expected[name].append(None if match is None else match.values[column])
        for name in output_names:
            assert result[name].to_pylist() == expected[name], name


def test_oracle_rejects_newer_rows() -> None:
    """The oracle itself: a row stamped after the entity time never matches."""
    row = FeatureRow(key=(1,), event_ns=BASE_NS + 10, created_ns=None, values={"v": 1})
    match = oracle_match(
        SINGLE, [row], (1,), BASE_NS, ttl=None, inclusive=True, created_before_event=False
    )

    assert match is None
