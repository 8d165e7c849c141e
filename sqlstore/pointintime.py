"""Point-in-time joins: feature values as they were known at each row of an entity table.

For each row of the entity table (the spine) and each feature table, the joined row is the one
with the same key whose event timestamp is the latest at or before the spine's timestamp
(strictly before with `inclusive=False`). Rows with the same key and timestamp are ranked by
created timestamp, latest first, when the table has one, then by write order, last written
first. A match older than the TTL gives nulls. Tables without an event timestamp join on the key
alone, taking the row written last. docs/point-in-time.md states the rules with examples.

Two engines compute the same join, and Python loops over rows in neither. A table stored sorted
by (key, event timestamp) with a single integer or string key is searched in numpy
(`sqlstore.sortedjoin`), which took less CPU time than DuckDB's ASOF JOIN over the same file in
docs/benchmarks.md. Every other table, and every table with `join_method="duckdb"`, joins in
DuckDB (ASOF JOIN).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path

import duckdb
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from sqlstore.catalog import query_arrow
from sqlstore.errors import InvalidInput
from sqlstore.identifiers import quote_identifier, quote_string
from sqlstore.ordering import sort_columns
from sqlstore.records import normalize_timestamp_column
from sqlstore.references import resolve_reference
from sqlstore.registry import RegistryEntry
from sqlstore.sortedjoin import SortedSearch, SortedSearchUnavailable, search_sorted_file
from sqlstore.stablefiles import raise_if_damaged, read_unchanged
from sqlstore.store import FeatureStore
from sqlstore.types import describe_type, type_family

logger = logging.getLogger(__name__)

ROW_COLUMN = "__row"
MATCHED_TIMESTAMP_COLUMN = "__matched_timestamp"
SPINE_VIEW = "__spine"
NUMERIC_STRING = r"^\s*[+-]?[0-9]+\s*$"
DEFAULT_TIMESTAMP_COLUMN = "event_timestamp"
# Microseconds since the epoch that int64 nanoseconds can hold: 1677-09-21 to 2262-04-11.
NANOSECOND_RANGE_US = (-9_223_372_036_854_775, 9_223_372_036_854_775)

JOIN_METHODS = ("auto", "duckdb", "sorted")

EntityInput = pd.DataFrame | pa.Table | str | Path


@dataclass(frozen=True)
class JoinOptions:
    """Options of a point-in-time join.

    `ttl_seconds` overrides the registered TTL per table (`group/name`); 0 or None there means
    unlimited. `created_before_event` restricts matches to rows whose created timestamp is at
    or before the spine's timestamp, for backfilled data. `join_method` picks the engine:
    "auto" searches each table in numpy where that applies and joins the rest in DuckDB,
    "duckdb" joins every table in DuckDB, and "sorted" requires the numpy search for every
    table, raising InvalidInput with the reason where it does not apply. All return the same
    table.
    """

    timestamp_column: str = DEFAULT_TIMESTAMP_COLUMN
    full_feature_names: bool = False
    inclusive: bool = True
    ttl_seconds: dict[str, float | None] = field(default_factory=dict)
    created_before_event: bool = False
    join_method: str = "auto"


@dataclass(frozen=True)
class TableJoin:
    """One feature table's part of a join: the table, its columns and their output names."""

    entry: RegistryEntry
    columns: list[str]
    output_names: list[str]


def get_historical_features(
    store: FeatureStore,
    entities: EntityInput | None,
    features: Sequence[str],
    options: JoinOptions | None = None,
    entity_sql: str | None = None,
) -> pa.Table:
    """Join feature values to each row of `entities` as of that row's timestamp.

    `entities` is a DataFrame, an Arrow table or a Parquet path; alternatively `entity_sql` is
    a query over the feature views that returns the entity table. The result has one row per
    entity row, in input order, with the entity columns first and then the features. It
    describes one version of each table, because a join that a write overtook runs again.
    TableBusy is raised when writes overtake every attempt.
    """
    options = options or JoinOptions()
    if options.join_method not in JOIN_METHODS:
        raise InvalidInput(
            f"invalid join_method {options.join_method!r}: use one of {', '.join(JOIN_METHODS)}"
        )
    spine = load_entities(store, entities, entity_sql)
    joins = plan_joins(store, spine, features, options)
    plans = iter([joins])

    def join_tables() -> pa.Table:
        # A repeated join follows a write, which may have changed the tables' entries.
        planned = next(plans, None) or plan_joins(store, spine, features, options)
        return run_joins(store, prepare_spine(spine, planned, options), planned, options)

    paths = [store.root / join.entry.path for join in joins]
    return read_unchanged(paths, join_tables, [join.entry.reference for join in joins])


def load_entities(
    store: FeatureStore, entities: EntityInput | None, entity_sql: str | None
) -> pa.Table:
    """Return the entity table as Arrow from whichever input form was given."""
    if (entities is None) == (entity_sql is None):
        raise InvalidInput("give exactly one of entities and entity_sql")
    if entity_sql is not None:
        tables = store.list_tables()
        paths = [store.root / entry.path for entry in tables]
        references = [entry.reference for entry in tables]
        try:
            return read_unchanged(paths, lambda: _query_entities(store, entity_sql), references)
        except duckdb.Error as error:
            raise InvalidInput(f"entity_sql failed: {error}") from error
    if isinstance(entities, pd.DataFrame):
        return pa.Table.from_pandas(entities, preserve_index=False)
    if isinstance(entities, pa.Table):
        return entities
    path = Path(entities)
    if not path.is_file():
        raise InvalidInput(f"entity file {str(path)!r} not found")
    return pq.read_table(path)


def _query_entities(store: FeatureStore, entity_sql: str) -> pa.Table:
    with store.catalog.cursor() as cursor:
        return query_arrow(cursor, entity_sql)


def plan_joins(
    store: FeatureStore, spine: pa.Table, features: Sequence[str], options: JoinOptions
) -> list[TableJoin]:
    """Resolve feature references, merge references to one table and name the output columns.

    A feature column keeps its name unless that name is also an entity column or a column of
    another joined table, or `full_feature_names` is set. Then it becomes `<table>__<column>`,
    or `<group>__<table>__<column>` when two joined tables of different groups share a name.
    """
    if isinstance(features, str):
        features = [features]
    if not features:
        raise InvalidInput("features is empty: give at least one 'group/name' reference")
    entries = store.list_tables()

    selected: dict[str, tuple[RegistryEntry, list[str]]] = {}
    for text in features:
        reference = resolve_reference(text, entries, store.registry.damaged_tables())
        entry = reference.entry
        if not entry.entity_key:
            raise InvalidInput(
                f"feature table {entry.reference} has no entity key, so it cannot be joined to "
                "entities; declare entity_key when writing it"
            )
        columns = reference.columns or default_feature_columns(entry)
        _, known = selected.setdefault(entry.reference, (entry, []))
        known.extend(column for column in columns if column not in known)

    counts: dict[str, int] = {}
    for name in spine.column_names:
        counts[name] = counts.get(name, 0) + 1
    for _, columns in selected.values():
        for column in columns:
            counts[column] = counts.get(column, 0) + 1

    table_names: dict[str, int] = {}
    for entry, _ in selected.values():
        table_names[entry.name] = table_names.get(entry.name, 0) + 1

    joins = []
    for entry, columns in selected.values():
        prefix = entry.name if table_names[entry.name] == 1 else f"{entry.group}__{entry.name}"
        names = [
            f"{prefix}__{column}" if options.full_feature_names or counts[column] > 1 else column
            for column in columns
        ]
        joins.append(TableJoin(entry=entry, columns=columns, output_names=names))

    _check_output_names(spine, joins)
    _check_ttl_references(selected, options)
    return joins


def _check_output_names(spine: pa.Table, joins: list[TableJoin]) -> None:
    """Raise InvalidInput when a prefixed feature name equals an entity column or another one."""
    seen = set(spine.column_names)
    for join in joins:
        for name in join.output_names:
            if name in seen:
                raise InvalidInput(
                    f"output column {name!r} of {join.entry.reference} would appear twice; "
                    "rename the entity column or select other feature columns"
                )
            seen.add(name)


def _check_ttl_references(
    selected: dict[str, tuple[RegistryEntry, list[str]]], options: JoinOptions
) -> None:
    """Reject TTL overrides for tables outside the join, which would otherwise be ignored."""
    unknown = [reference for reference in options.ttl_seconds if reference not in selected]
    if unknown:
        raise InvalidInput(
            f"ttl_seconds names {', '.join(map(repr, unknown))}, which the features do not "
            f"join; use 'group/name' of one of: {', '.join(selected)}"
        )


def default_feature_columns(entry: RegistryEntry) -> list[str]:
    """Return the columns a reference without `:columns` selects: all but key and timestamps."""
    excluded = {*entry.entity_key, entry.timestamp_column, entry.created_timestamp_column}
    return [column.name for column in entry.columns if column.name not in excluded]


def prepare_spine(spine: pa.Table, joins: list[TableJoin], options: JoinOptions) -> pa.Table:
    """Check the spine's key and timestamp columns, convert the timestamp to UTC and number
    the rows so that the output keeps the input order."""
    for name in spine.column_names:
        if name.startswith("__"):
            raise InvalidInput(f"entity column {name!r} starts with '__', which sqlstore reserves")

    for join in joins:
        for column in join.entry.entity_key:
            if column not in spine.column_names:
                raise InvalidInput(
                    f"entity table has no column {column!r}, the key of {join.entry.reference}; "
                    f"entity columns: {', '.join(spine.column_names)}"
                )

    needs_timestamp = any(join.entry.timestamp_column for join in joins) or (
        options.created_before_event and any(join.entry.created_timestamp_column for join in joins)
    )
    column = options.timestamp_column
    if column in spine.column_names:
        spine = normalize_timestamp_column(spine, column)
    elif needs_timestamp:
        raise InvalidInput(
            f"entity table has no timestamp column {column!r}; name it with timestamp_column "
            f"(entity columns: {', '.join(spine.column_names)})"
        )
    return spine.append_column(ROW_COLUMN, pa.array(np.arange(spine.num_rows, dtype=np.int64)))


def run_joins(
    store: FeatureStore, spine: pa.Table, joins: list[TableJoin], options: JoinOptions
) -> pa.Table:
    """Search each sorted table in numpy where that applies, join the other tables in one
    DuckDB statement and return the result in spine order.

    The spine's columns always pass through DuckDB, so that their output types do not depend
    on which engine joined the features.
    """
    searched: dict[int, list[pa.ChunkedArray]] = {}
    if options.join_method != "duckdb":
        for index, join in enumerate(joins):
            try:
                searched[index] = search_sorted_table(store, spine, join, options)
            except SortedSearchUnavailable as reason:
                if options.join_method == "sorted":
                    raise InvalidInput(
                        f"join_method 'sorted' cannot join {join.entry.reference}: {reason}; "
                        "use join_method 'auto'"
                    ) from None
                logger.debug("joining %s in DuckDB: %s", join.entry.reference, reason)

    in_duckdb = [join for index, join in enumerate(joins) if index not in searched]
    joined = _run_duckdb_joins(store, spine, in_duckdb, options)

    spine_width = spine.num_columns - 1
    names = joined.column_names[:spine_width]
    columns = joined.columns[:spine_width]
    next_column = spine_width
    for index, join in enumerate(joins):
        names.extend(join.output_names)
        if index in searched:
            columns.extend(searched[index])
        else:
            columns.extend(joined.columns[next_column : next_column + len(join.columns)])
            next_column += len(join.columns)
    return pa.Table.from_arrays(columns, names=names)


def _run_duckdb_joins(
    store: FeatureStore, spine: pa.Table, joins: list[TableJoin], options: JoinOptions
) -> pa.Table:
    """Run the joins of `joins` in one DuckDB statement and return the spine's columns and
    theirs, in spine order."""
    spine_columns = [name for name in spine.column_names if name != ROW_COLUMN]
    select = [f"s.{quote_identifier(name)}" for name in spine_columns]
    from_clause = f"{SPINE_VIEW} AS s"
    ctes = []
    for index, join in enumerate(joins):
        alias = f"t{index}"
        ctes.append(f"{alias} AS ({table_join_sql(store, spine, join, options)})")
        from_clause += f" LEFT JOIN {alias} ON {alias}.{ROW_COLUMN} = s.{ROW_COLUMN}"
        for column, name in zip(join.columns, join.output_names, strict=True):
            select.append(f"{alias}.{quote_identifier(column)} AS {quote_identifier(name)}")

    with_clause = f"WITH {', '.join(ctes)} " if ctes else ""
    sql = f"{with_clause}SELECT {', '.join(select)} FROM {from_clause} ORDER BY s.{ROW_COLUMN}"
    with store.catalog.cursor() as cursor:
        cursor.register(SPINE_VIEW, spine)
        return query_arrow(cursor, sql)


def search_sorted_table(
    store: FeatureStore, spine: pa.Table, join: TableJoin, options: JoinOptions
) -> list[pa.ChunkedArray]:
    """Return the feature columns of one table's join, searched in numpy, in spine order.

    Raise SortedSearchUnavailable where the search does not apply: a composite key, no event
    timestamp, `created_before_event` on a table with a created timestamp, a key that needs a
    cast, or a file not stored sorted. Invalid input raises the InvalidInput the DuckDB join
    would raise. The columns get the types DuckDB gives the same Parquet columns.
    """
    entry = join.entry
    if entry.timestamp_column is None:
        raise SortedSearchUnavailable("the table has no event timestamp")
    if len(entry.entity_key) != 1:
        raise SortedSearchUnavailable("the table has a composite key")
    if options.created_before_event and entry.created_timestamp_column:
        raise SortedSearchUnavailable("created_before_event needs a second time comparison")

    schema = file_schema(store, entry)
    key = entry.entity_key[0]
    _spine_key_expression(spine, schema, entry, key)
    timestamp_type = _comparison_timestamp_type(spine, schema, entry, options)
    if timestamp_type == "TIMESTAMP_NS":
        _check_nanosecond_range(spine[options.timestamp_column], entry)
    search = SortedSearch(
        path=str(store.root / entry.path),
        key_column=key,
        timestamp_column=entry.timestamp_column,
        sorted_by=sort_columns(
            entry.entity_key, entry.timestamp_column, entry.created_timestamp_column
        ),
        columns=join.columns,
        unit="ns" if timestamp_type == "TIMESTAMP_NS" else "us",
        inclusive=options.inclusive,
        max_age=_ttl_limit(entry, options, timestamp_type),
    )
    found = search_sorted_file(search, spine[key], spine[options.timestamp_column])
    return _as_duckdb_types(store, search, found)


def _as_duckdb_types(
    store: FeatureStore, search: SortedSearch, found: pa.Table
) -> list[pa.ChunkedArray]:
    """Cast columns read by pyarrow to the types DuckDB returns for the same Parquet columns.

    The two differ for a few types: DuckDB converts timestamps of other zones to UTC
    microseconds, reads durations as integers and names list items `l`.
    """
    if not search.columns:
        return []
    selected = ", ".join(quote_identifier(column) for column in search.columns)
    sql = f"SELECT {selected} FROM read_parquet({quote_string(search.path)}) LIMIT 0"
    with store.catalog.cursor() as cursor:
        types = query_arrow(cursor, sql).schema.types
    try:
        return [column.cast(target) for column, target in zip(found.columns, types, strict=True)]
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as error:
        raise SortedSearchUnavailable(f"a column has no exact DuckDB type: {error}") from error


def table_join_sql(
    store: FeatureStore,
    spine: pa.Table,
    join: TableJoin,
    options: JoinOptions,
    include_matched_timestamp: bool = False,
) -> str:
    """Return SQL giving `__row` and the table's feature columns for each matched spine row."""
    entry = join.entry
    schema = file_schema(store, entry)
    spine_keys = [
        f"{_spine_key_expression(spine, schema, entry, column)} AS {quote_identifier(column)}"
        for column in entry.entity_key
    ]
    selected = [f"f.{quote_identifier(column)}" for column in join.columns]
    if include_matched_timestamp and entry.timestamp_column:
        matched = f"f.{quote_identifier(entry.timestamp_column)}"
        selected.append(f"{matched} AS {MATCHED_TIMESTAMP_COLUMN}")
    elif include_matched_timestamp:
        selected.append(f"NULL::TIMESTAMPTZ AS {MATCHED_TIMESTAMP_COLUMN}")
    # A lookup may select no feature column at all, only whether the key has a row.
    features = ", ".join([f"sp.{ROW_COLUMN}", *selected])
    key_match = " AND ".join(
        f"sp.{quote_identifier(c)} = f.{quote_identifier(c)}" for c in entry.entity_key
    )
    path = quote_string(str(store.root / entry.path))
    source = f"read_parquet({path}, file_row_number = true)"

    if entry.timestamp_column is None:
        return _static_join_sql(entry, spine_keys, features, key_match, source, options)

    timestamp_type = _comparison_timestamp_type(spine, schema, entry, options)
    if timestamp_type == "TIMESTAMP_NS":
        _check_nanosecond_range(spine[options.timestamp_column], entry)
    spine_timestamp = f"CAST(s.{quote_identifier(options.timestamp_column)} AS {timestamp_type})"
    feature_timestamp = f"CAST({quote_identifier(entry.timestamp_column)} AS {timestamp_type})"
    spine_select = (
        f"SELECT s.{ROW_COLUMN}, {', '.join(spine_keys)}, {spine_timestamp} AS __spine_ts "
        f"FROM {SPINE_VIEW} AS s"
    )
    ttl_condition = _ttl_condition(entry, options, timestamp_type)

    if options.created_before_event and entry.created_timestamp_column:
        return _known_time_join_sql(
            entry,
            spine_select,
            features,
            key_match,
            source,
            feature_timestamp,
            options,
            ttl_condition,
            timestamp_type,
        )

    feature_rows = _candidate_rows_sql(entry, source, feature_timestamp)
    comparison = ">=" if options.inclusive else ">"
    asof = (
        f"WITH sp AS ({spine_select}) "
        f"SELECT {features}, f.__feature_ts "
        f"FROM sp ASOF JOIN ({feature_rows}) AS f "
        f"ON {key_match} AND sp.__spine_ts {comparison} f.__feature_ts"
    )
    if ttl_condition:
        asof += f" WHERE {ttl_condition}"
    return asof


def _candidate_rows_sql(entry: RegistryEntry, source: str, feature_timestamp: str) -> str:
    """Return SQL for the feature rows an ASOF JOIN may match: rows whose key occurs in the
    spine `sp`, with one row per key and event timestamp.

    The semi join keeps a lookup of a few keys from scanning and ranking the whole table. When
    the registry records that (key, timestamp) pairs are unique, there are no ties to rank.
    """
    keys = ", ".join(quote_identifier(c) for c in entry.entity_key)
    in_spine = " AND ".join(
        f"candidate.{quote_identifier(c)} = sp.{quote_identifier(c)}" for c in entry.entity_key
    )
    rows = (
        f"SELECT candidate.*, {feature_timestamp} AS __feature_ts FROM {source} AS candidate "
        f"SEMI JOIN sp ON {in_spine}"
    )
    if entry.unique_keys:
        return rows
    return (
        f"{rows} QUALIFY row_number() OVER (PARTITION BY {keys}, __feature_ts "
        f"ORDER BY {_tie_ranking(entry, prefix='candidate.')}) = 1"
    )


def _static_join_sql(
    entry: RegistryEntry,
    spine_keys: list[str],
    features: str,
    key_match: str,
    source: str,
    options: JoinOptions,
) -> str:
    conditions = ""
    if options.created_before_event and entry.created_timestamp_column:
        created = f"f.{quote_identifier(entry.created_timestamp_column)}"
        spine_timestamp = f"sp.{quote_identifier(options.timestamp_column)}"
        conditions = f" AND {created} <= {spine_timestamp}"
        spine_keys = [*spine_keys, f"s.{quote_identifier(options.timestamp_column)}"]
    ranking = _tie_ranking(entry, prefix="f.")
    sql = (
        f"SELECT {features} "
        f"FROM (SELECT s.{ROW_COLUMN}, {', '.join(spine_keys)} FROM {SPINE_VIEW} AS s) AS sp "
        f"JOIN {source} AS f ON {key_match}{conditions}"
    )
    # Always ranked, even when the registry records unique keys, because an append that lands
    # between reading the entry and reading the file could add a duplicate. A plain join would
    # then return two rows for one entity row.
    return f"{sql} QUALIFY row_number() OVER (PARTITION BY sp.{ROW_COLUMN} ORDER BY {ranking}) = 1"


def _known_time_join_sql(
    entry: RegistryEntry,
    spine_select: str,
    features: str,
    key_match: str,
    source: str,
    feature_timestamp: str,
    options: JoinOptions,
    ttl_condition: str,
    timestamp_type: str,
) -> str:
    """Join through a range join, because ASOF JOIN allows one inequality and this rule needs
    two: the event timestamp and the created timestamp must both be at or before the spine's."""
    comparison = ">=" if options.inclusive else ">"
    created = f"CAST(f.{quote_identifier(entry.created_timestamp_column)} AS {timestamp_type})"
    conditions = [
        f"sp.__spine_ts {comparison} f.__feature_ts",
        f"{created} <= sp.__spine_ts",
    ]
    if ttl_condition:
        conditions.append(ttl_condition)
    return (
        f"SELECT {features}, f.__feature_ts "
        f"FROM ({spine_select}) AS sp "
        f"JOIN (SELECT *, {feature_timestamp} AS __feature_ts FROM {source}) AS f "
        f"ON {key_match} AND {' AND '.join(conditions)} "
        f"QUALIFY row_number() OVER (PARTITION BY sp.{ROW_COLUMN} "
        f"ORDER BY f.__feature_ts DESC, {_tie_ranking(entry, prefix='f.')}) = 1"
    )


def _tie_ranking(entry: RegistryEntry, prefix: str = "") -> str:
    terms = []
    if entry.created_timestamp_column:
        terms.append(f"{prefix}{quote_identifier(entry.created_timestamp_column)} DESC NULLS LAST")
    terms.append(f"{prefix}file_row_number DESC")
    return ", ".join(terms)


def _ttl_condition(entry: RegistryEntry, options: JoinOptions, timestamp_type: str) -> str:
    limit = _ttl_limit(entry, options, timestamp_type)
    if limit is None:
        return ""
    if timestamp_type == "TIMESTAMP_NS":
        return f"epoch_ns(sp.__spine_ts) - epoch_ns(f.__feature_ts) <= {limit}"
    return f"epoch_us(sp.__spine_ts) - epoch_us(f.__feature_ts) <= {limit}"


def _ttl_limit(entry: RegistryEntry, options: JoinOptions, timestamp_type: str) -> int | None:
    """Return the maximum age of a match in the comparison's unit, or None for no limit."""
    ttl = options.ttl_seconds.get(entry.reference, entry.ttl_seconds)
    if isinstance(ttl, bool) or not isinstance(ttl, int | float | None):
        raise InvalidInput(f"invalid ttl {ttl!r} for {entry.reference}: use a number of seconds")
    if not ttl or ttl == math.inf:
        return None
    if not ttl > 0:
        raise InvalidInput(f"invalid ttl {ttl!r} for {entry.reference}: use 0 or more seconds")
    # Ages are whole units, so age <= TTL exactly when age <= floor(TTL). Flooring the decimal
    # the caller wrote, not the binary float, keeps 0.000003 s at 3 microseconds.
    exact_ttl = Fraction(repr(float(ttl)))
    if timestamp_type == "TIMESTAMP_NS":
        return math.floor(exact_ttl * 1_000_000_000)
    return math.floor(exact_ttl * 1_000_000)


def file_schema(store: FeatureStore, entry: RegistryEntry) -> pa.Schema:
    """Return the Arrow schema of the data file of `entry`, which contains every registered
    column, so that the caller can look up any of them.

    Raises TableUnavailable when the file lacks a registered column because it is not the
    table's file, such as a file of another table copied over it. Raises KeyError when the file
    is the table's but lacks the column, as a file newer than `entry` can.
    """
    # The store does not cache a schema that lacks a registered column, so a file that was
    # restored since is read again here.
    schema = store.arrow_schema(entry)
    missing = _missing_columns(schema, entry)
    if not missing:
        return schema

    path = store.root / entry.path
    error = KeyError(f"the data file of {entry.reference} has no column {missing[0]!r}")
    raise_if_damaged([path], [entry.reference], error)
    raise error


def _missing_columns(schema: pa.Schema, entry: RegistryEntry) -> list[str]:
    names = set(schema.names)
    return [column.name for column in entry.columns if column.name not in names]


def _comparison_timestamp_type(
    spine: pa.Table, schema: pa.Schema, entry: RegistryEntry, options: JoinOptions
) -> str:
    """Compare in nanoseconds when either side has them, else in microseconds."""
    units = {spine.schema.field(options.timestamp_column).type.unit}
    units.add(schema.field(entry.timestamp_column).type.unit)
    if entry.created_timestamp_column:
        units.add(schema.field(entry.created_timestamp_column).type.unit)
    return "TIMESTAMP_NS" if "ns" in units else "TIMESTAMPTZ"


def _spine_key_expression(
    spine: pa.Table, schema: pa.Schema, entry: RegistryEntry, column: str
) -> str:
    """Return the SQL for the spine's key column, cast to compare with the table's key.

    Integers of any width compare as BIGINT. Strings of digits compare with integer keys when
    every non-null value is an integer literal; floats when every value is a whole number.
    """
    spine_type = spine.schema.field(column).type
    table_type = schema.field(column).type
    spine_family = type_family(spine_type)
    table_family = type_family(table_type)
    source = f"s.{quote_identifier(column)}"

    if spine_family == "null":
        return f"CAST({source} AS {_sql_key_type(table_family)})"
    if spine_family == table_family:
        return source
    # HUGEINT can represent every int64 and uint64 key. A literal beyond its range cannot equal
    # any key, so TRY_CAST turns it into null, which matches nothing.
    if table_family == "integer":
        if spine_family == "string" and _all_match(spine[column], NUMERIC_STRING):
            return f"TRY_CAST(trim({source}) AS HUGEINT)"
        if spine_family == "floating" and _all_whole(spine[column]):
            return f"TRY_CAST({source} AS HUGEINT)"

    raise InvalidInput(
        f"entity column {column!r} has {describe_type(spine_type)} values but the key of "
        f"{entry.reference} is {describe_type(table_type)}; convert the column to "
        f"{table_family} values"
    )


def _sql_key_type(family: str) -> str:
    return {"integer": "BIGINT", "string": "VARCHAR", "date": "DATE"}[family]


def _all_match(column: pa.ChunkedArray, pattern: str) -> bool:
    values = _decoded(column).drop_null()
    return bool(pc.all(pc.match_substring_regex(values, pattern)).as_py() is not False)


def _all_whole(column: pa.ChunkedArray) -> bool:
    values = _decoded(column).drop_null().cast(pa.float64())
    if len(values) == 0:
        return True
    whole = pc.equal(pc.floor(values), values)
    finite = pc.is_finite(values)
    return bool(pc.all(pc.and_(whole, finite)).as_py())


def _decoded(column: pa.ChunkedArray) -> pa.ChunkedArray:
    """Return a dictionary-encoded column (pandas categoricals) as plain values."""
    if pa.types.is_dictionary(column.type):
        return column.cast(column.type.value_type)
    return column


def _check_nanosecond_range(column: pa.ChunkedArray, entry: RegistryEntry) -> None:
    """Raise InvalidInput for entity times outside the nanosecond range, which a comparison
    with the nanosecond timestamps of `entry` cannot represent."""
    if column.type.unit == "ns" or column.null_count == len(column):
        return
    scale = {"s": 1_000_000, "ms": 1_000, "us": 1}[column.type.unit]
    bounds = pc.min_max(column.cast(pa.int64()))
    low = bounds["min"].as_py() * scale
    high = bounds["max"].as_py() * scale
    if NANOSECOND_RANGE_US[0] <= low and high <= NANOSECOND_RANGE_US[1]:
        return
    outside = pc.min_max(column)["min" if low < NANOSECOND_RANGE_US[0] else "max"].as_py()
    raise InvalidInput(
        f"entity time {outside.isoformat()} is outside 1677-09-21 to 2262-04-11, the range of "
        f"the nanosecond timestamps of {entry.reference}; give times within that range"
    )
