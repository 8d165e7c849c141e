"""Entity lookups: the latest row per entity of feature tables, as of a point in time.

For a table with an event timestamp, the row chosen for an entity is the one with the latest
timestamp at or before `as_of`; ties go to the latest created timestamp when the table has one,
then to the row written last. A match older than the table's TTL counts as not found. A table
without a timestamp returns the row written last for each key.
"""

from __future__ import annotations

import difflib
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import pyarrow as pa

from sqlstore.catalog import query_arrow
from sqlstore.errors import InvalidInput, NotFound
from sqlstore.identifiers import quote_identifier, quote_string
from sqlstore.registry import RegistryEntry
from sqlstore.store import FeatureStore
from sqlstore.types import type_family
from sqlstore.values import SQL_TYPES, convert_value

POSITION_COLUMN = "__position"
MAX_ENTITY_IDS = 10_000

# Arrow types of the entity table registered with DuckDB, by key family.
ENTITY_ARROW_TYPES = {"integer": pa.int64(), "string": pa.string(), "date": pa.date32()}


@dataclass(frozen=True)
class FeatureReference:
    """A resolved feature name: a table and, optionally, some of its columns."""

    requested: str
    entry: RegistryEntry
    columns: list[str] | None = None


@dataclass
class LookupResult:
    """Rows found for one table, in request order, and the entity ids without a row."""

    reference: FeatureReference
    table: pa.Table
    missing: list[Any] = field(default_factory=list)


def resolve_reference(text: str, entries: Sequence[RegistryEntry]) -> FeatureReference:
    """Resolve `group/name`, `group/name:column` or a bare table name to a registered table.

    A bare name must match exactly one table; otherwise the error lists the candidates.
    """
    if not isinstance(text, str) or not text:
        raise InvalidInput(f"invalid feature name {text!r}: use 'group/name' or a table name")
    table_part, _, column_part = text.partition(":")
    by_reference = {entry.reference: entry for entry in entries}

    if "/" in table_part:
        entry = by_reference.get(table_part)
        if entry is None:
            raise NotFound(f"feature table {table_part!r} not found{_suggest(table_part, entries)}")
    else:
        matches = [entry for entry in entries if entry.name == table_part]
        if not matches:
            raise NotFound(f"feature table {table_part!r} not found{_suggest(table_part, entries)}")
        if len(matches) > 1:
            candidates = ", ".join(entry.reference for entry in matches)
            raise InvalidInput(f"feature name {table_part!r} is ambiguous: use one of {candidates}")
        entry = matches[0]

    columns = None
    if column_part:
        columns = [column.strip() for column in column_part.split(",")]
        for column in columns:
            if entry.column(column) is None:
                available = ", ".join(c.name for c in entry.columns)
                raise InvalidInput(
                    f"unknown column {column!r} in feature {text!r}; columns: {available}"
                )
    return FeatureReference(requested=text, entry=entry, columns=columns)


def _suggest(text: str, entries: Sequence[RegistryEntry]) -> str:
    names = [entry.reference for entry in entries]
    close = difflib.get_close_matches(text, names + [e.name for e in entries], n=3, cutoff=0.5)
    if close:
        return f"; did you mean {', '.join(close)}?"
    return "; GET /features lists the tables"


def lookup_entities(
    store: FeatureStore,
    reference: FeatureReference,
    entity_ids: Sequence[Any],
    as_of: datetime | None = None,
) -> LookupResult:
    """Return the latest row of each entity in `entity_ids` as of `as_of` (default: now)."""
    entry = reference.entry
    if not entry.entity_key:
        raise InvalidInput(
            f"feature table {entry.reference} has no entity key, so it cannot be looked up by "
            "entity; declare entity_key when writing it"
        )
    if len(entity_ids) > MAX_ENTITY_IDS:
        raise InvalidInput(
            f"{len(entity_ids)} entity ids is more than the maximum {MAX_ENTITY_IDS} per request"
        )

    as_of = as_of or datetime.now(UTC)
    schema = store.arrow_schema(entry)
    entities, keys = _entity_table(entry, schema, entity_ids)
    sql, parameters = _lookup_sql(store, entry, reference.columns, as_of)

    with store.catalog.cursor() as cursor:
        cursor.register("entities", entities)
        found = query_arrow(cursor, sql, parameters)

    found_positions = set(found[POSITION_COLUMN].to_pylist())
    missing = [keys[i] for i in range(len(keys)) if i not in found_positions]
    return LookupResult(reference=reference, table=found.drop([POSITION_COLUMN]), missing=missing)


def _entity_table(
    entry: RegistryEntry, schema: pa.Schema, entity_ids: Sequence[Any]
) -> tuple[pa.Table, list[Any]]:
    """Convert entity ids to the key's types, drop repeats and number them in request order."""
    key_columns = entry.entity_key
    values: dict[str, list[Any]] = {column: [] for column in key_columns}
    keys: list[Any] = []
    seen: set[tuple[Any, ...]] = set()

    for entity in entity_ids:
        converted = _convert_entity(entity, key_columns, schema, entry)
        if converted in seen:
            continue
        seen.add(converted)
        keys.append(
            converted[0] if len(converted) == 1 else dict(zip(key_columns, converted, strict=True))
        )
        for column, value in zip(key_columns, converted, strict=True):
            values[column].append(value)

    arrays = {POSITION_COLUMN: pa.array(range(len(keys)), pa.int64())}
    for column in key_columns:
        family = type_family(schema.field(column).type)
        arrays[column] = pa.array(values[column], ENTITY_ARROW_TYPES[family])
    return pa.table(arrays), keys


def _convert_entity(
    entity: Any, key_columns: list[str], schema: pa.Schema, entry: RegistryEntry
) -> tuple[Any, ...]:
    if isinstance(entity, dict):
        unknown = set(entity) - set(key_columns)
        missing = [column for column in key_columns if column not in entity]
        if unknown or missing:
            raise InvalidInput(
                f"entity {entity!r} does not match the key {key_columns} of {entry.reference}; "
                "give exactly the key columns"
            )
        raw = [entity[column] for column in key_columns]
    elif len(key_columns) == 1:
        raw = [entity]
    else:
        raise InvalidInput(
            f"{entry.reference} has the composite key {key_columns}: give each entity id as an "
            f"object such as {dict.fromkeys(key_columns, '...')}"
        )

    converted = []
    for column, value in zip(key_columns, raw, strict=True):
        if value is None:
            raise InvalidInput(f"entity id for key {column!r} of {entry.reference} is null")
        what = f"entity id of key {column!r} in {entry.reference}"
        converted.append(convert_value(value, schema.field(column).type, what))
    return tuple(converted)


def _lookup_sql(
    store: FeatureStore, entry: RegistryEntry, columns: list[str] | None, as_of: datetime
) -> tuple[str, list[Any]]:
    path = quote_string(str(store.root / entry.path))
    selected = columns or [column.name for column in entry.columns]
    select_list = ", ".join(f"f.{quote_identifier(column)}" for column in selected)
    join = " AND ".join(
        f"f.{quote_identifier(column)} = e.{quote_identifier(column)}"
        for column in entry.entity_key
    )

    conditions = []
    parameters: list[Any] = []
    order = []
    if entry.timestamp_column:
        timestamp = f"f.{quote_identifier(entry.timestamp_column)}"
        conditions.append(f"{timestamp} <= CAST(? AS {SQL_TYPES['timestamp']})")
        parameters.append(as_of)
        if entry.ttl_seconds:
            conditions.append(f"{timestamp} >= CAST(? AS {SQL_TYPES['timestamp']})")
            parameters.append(as_of - timedelta(seconds=entry.ttl_seconds))
        order.append(f"{timestamp} DESC")
    if entry.created_timestamp_column:
        order.append(f"f.{quote_identifier(entry.created_timestamp_column)} DESC NULLS LAST")
    order.append("f.file_row_number DESC")

    where = f" WHERE {' AND '.join(conditions)}" if conditions else ""
    latest_first = ", ".join(order)
    sql = (
        f"SELECT e.{POSITION_COLUMN}, {select_list} "
        f"FROM entities AS e "
        f"JOIN read_parquet({path}, file_row_number = true) AS f ON {join}"
        f"{where} "
        f"QUALIFY row_number() OVER (PARTITION BY e.{POSITION_COLUMN} ORDER BY {latest_first}) = 1 "
        f"ORDER BY e.{POSITION_COLUMN}"
    )
    return sql, parameters
