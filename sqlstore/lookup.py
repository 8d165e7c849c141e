"""Entity lookups: the latest row per entity of feature tables, as of a point in time.

A lookup is a point-in-time join whose entity table has one row per requested entity, all at the
same time `as_of`, so it follows the rules of `sqlstore.pointintime`. The match is the latest row
at or before `as_of`, with ties broken by created timestamp and then write order. A match older
than the table's TTL counts as not found.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import pyarrow as pa

from sqlstore.catalog import query_arrow
from sqlstore.errors import InvalidInput
from sqlstore.identifiers import quote_identifier
from sqlstore.pointintime import (
    MATCHED_TIMESTAMP_COLUMN,
    ROW_COLUMN,
    SPINE_VIEW,
    JoinOptions,
    TableJoin,
    default_feature_columns,
    file_schema,
    table_join_sql,
)
from sqlstore.references import FeatureReference
from sqlstore.registry import RegistryEntry
from sqlstore.stablefiles import read_unchanged
from sqlstore.store import FeatureStore
from sqlstore.types import type_family
from sqlstore.values import convert_value

# The lookup's spine stores the as-of time in this column, which no user column can be named.
AS_OF_COLUMN = "__as_of"
MAX_ENTITY_IDS = 10_000

# Arrow types of the entity table registered with DuckDB, by key family.
ENTITY_ARROW_TYPES = {"integer": pa.int64(), "string": pa.string(), "date": pa.date32()}


@dataclass
class LookupResult:
    """Rows found for one table, in request order, and the entity ids without a row."""

    reference: FeatureReference
    table: pa.Table
    missing: list[Any] = field(default_factory=list)


def lookup_entities(
    store: FeatureStore,
    reference: FeatureReference,
    entity_ids: Sequence[Any],
    as_of: datetime | None = None,
) -> LookupResult:
    """Return the latest row of each entity in `entity_ids` as of `as_of` (default: now).

    A lookup that a write overtook runs again, and TableBusy is raised when writes overtake
    every attempt.
    """
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

    def query() -> tuple[pa.Table, list[Any]]:
        # The schema is read inside read_unchanged, which turns an error caused by a file of
        # another table copied over the data file, such as a missing column, into
        # TableUnavailable.
        schema = file_schema(store, entry)
        entities, keys = _entity_table(entry, schema, entity_ids)
        spine = entities.append_column(
            AS_OF_COLUMN, pa.array([as_of] * entities.num_rows, pa.timestamp("us", tz="UTC"))
        )
        sql = _lookup_sql(store, spine, reference)
        with store.catalog.cursor() as cursor:
            cursor.register(SPINE_VIEW, spine)
            return query_arrow(cursor, sql), keys

    found, keys = read_unchanged([store.root / entry.path], query, [entry.reference])

    found_rows = set(found[ROW_COLUMN].to_pylist())
    missing = [keys[i] for i in range(len(keys)) if i not in found_rows]
    return LookupResult(reference=reference, table=found.drop([ROW_COLUMN]), missing=missing)


def _entity_table(
    entry: RegistryEntry, schema: pa.Schema, entity_ids: Sequence[Any]
) -> tuple[pa.Table, list[Any]]:
    """Convert entity ids to the key's types, drop repeats and number them in request order."""
    key_columns = entry.entity_key
    values: dict[str, list[Any]] = {column: [] for column in key_columns}
    keys: list[Any] = []
    seen: set[tuple[Any, ...]] = set()

    for entity in entity_ids:
        converted = convert_entity(entity, key_columns, schema, entry)
        if converted in seen:
            continue
        seen.add(converted)
        keys.append(
            converted[0] if len(converted) == 1 else dict(zip(key_columns, converted, strict=True))
        )
        for column, value in zip(key_columns, converted, strict=True):
            values[column].append(value)

    rows: Sequence[int] = range(len(keys))
    unsigned = [column for column in key_columns if pa.types.is_uint64(schema.field(column).type)]
    if unsigned:
        # A negative id equals no uint64 key and a uint64 array cannot hold it, so its entity
        # stays out of the query and is reported missing.
        rows = [i for i in rows if all(values[column][i] >= 0 for column in unsigned)]
        values = {column: [values[column][i] for i in rows] for column in key_columns}

    arrays = {ROW_COLUMN: pa.array(rows, pa.int64())}
    for column in key_columns:
        arrays[column] = pa.array(values[column], entity_arrow_type(schema.field(column).type))
    return pa.table(arrays), keys


def entity_arrow_type(key_type: pa.DataType) -> pa.DataType:
    """Return the Arrow type of entity ids for a key column of `key_type`: uint64 for a uint64
    key, whose ids may exceed int64, and otherwise the type of the key's family."""
    if pa.types.is_uint64(key_type):
        return pa.uint64()
    return ENTITY_ARROW_TYPES[type_family(key_type)]


def convert_entity(
    entity: Any, key_columns: list[str], schema: pa.Schema, entry: RegistryEntry
) -> tuple[Any, ...]:
    """Convert one entity id (a scalar, or an object of key columns) to a tuple of key values,
    or raise InvalidInput naming the value and the key."""
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


def _lookup_sql(store: FeatureStore, spine: pa.Table, reference: FeatureReference) -> str:
    """Return SQL for the key, the matched event timestamp and the features of each entity
    that has a row, through the same join as point-in-time training sets."""
    entry = reference.entry
    excluded = {*entry.entity_key, entry.timestamp_column}
    columns = [c for c in reference.columns or default_feature_columns(entry) if c not in excluded]
    join = TableJoin(entry=entry, columns=columns, output_names=columns)
    options = JoinOptions(timestamp_column=AS_OF_COLUMN)
    matches = table_join_sql(store, spine, join, options, include_matched_timestamp=True)

    select = [f"s.{ROW_COLUMN}"]
    select += [f"s.{quote_identifier(column)}" for column in entry.entity_key]
    if entry.timestamp_column:
        select.append(f"t.{MATCHED_TIMESTAMP_COLUMN} AS {quote_identifier(entry.timestamp_column)}")
    select += [f"t.{quote_identifier(column)}" for column in columns]
    return (
        f"SELECT {', '.join(select)} FROM {SPINE_VIEW} AS s "
        f"JOIN ({matches}) AS t ON t.{ROW_COLUMN} = s.{ROW_COLUMN} ORDER BY s.{ROW_COLUMN}"
    )
