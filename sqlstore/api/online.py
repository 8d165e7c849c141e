"""Online serving: `POST /get-online-features` and the state of each worker's online views.

The lookup route is an `async def` that parses and checks its JSON body itself and encodes
the response with orjson from column lists, because FastAPI's body model and response encoder
would cost more than the lookup. A lookup runs on the event loop when the table's view is
current; building a view and the DuckDB path run in the thread pool.
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import orjson
import pyarrow as pa
from fastapi import APIRouter, FastAPI, Request
from starlette.concurrency import run_in_threadpool
from starlette.requests import ClientDisconnect
from starlette.responses import Response

from sqlstore.api.encoding import (
    FORMAT_MEDIA_TYPES,
    JSON_MEDIA_TYPE,
    TABULAR_RESPONSES,
    JSONBytesResponse,
    dumps,
    encode_table,
    negotiate_format,
)
from sqlstore.api.jsonbody import (
    check_body_start,
    parse_json_body,
    repeats_no_key,
    require_json_body,
)
from sqlstore.api.models import ERROR_RESPONSES
from sqlstore.errors import InvalidInput, PayloadTooLarge, quoted_value
from sqlstore.identifiers import validate_group, validate_table_name
from sqlstore.online import (
    DuckDBPath,
    Lookup,
    OnlineSettings,
    OnlineStore,
    OnlineView,
    convert_key_columns,
)
from sqlstore.pointintime import default_feature_columns
from sqlstore.references import ParsedReference, parse_reference, resolve_reference
from sqlstore.settings import Settings
from sqlstore.types import describe_type

logger = logging.getLogger(__name__)

REQUEST_FIELDS = frozenset({"entities", "features"})
# The grouping by table is cached for up to GROUPING_CACHE_SIZE feature lists of at most
# GROUPING_CACHE_TEXT_LIMIT characters each, so the cache keeps at most 1 MiB of text.
GROUPING_CACHE_TEXT_LIMIT = 4096
GROUPING_CACHE_SIZE = 256
# Each view keeps the columns of up to this many reference texts of up to this many characters,
# at most 1 MiB of text per view.
RESOLVED_TEXTS_LIMIT = 1024
RESOLVED_TEXT_LENGTH = 1024
EXAMPLE_BODY = '{"entities": {"user_id": [1, 2]}, "features": ["user/user_activity:ratings_total"]}'


@asynccontextmanager
async def online_lifespan(app: FastAPI) -> AsyncIterator[None]:
    """Create this worker's online views; build them all now when loading is eager."""
    settings: Settings = app.state.settings
    online = OnlineStore(
        app.state.store,
        OnlineSettings(
            enabled=settings.online_enabled,
            memory_bytes=settings.online_memory_bytes,
            load=settings.online_load,
        ),
    )
    app.state.online = online
    if settings.online_enabled and settings.online_load == "eager":
        started = time.perf_counter()
        await run_in_threadpool(online.load_all)
        logger.info(
            "online views loaded in %.3f s: %d bytes of %d",
            time.perf_counter() - started,
            online.used_bytes,
            settings.online_memory_bytes,
        )
    yield


router = APIRouter(tags=["online serving"], responses=ERROR_RESPONSES, lifespan=online_lifespan)


@dataclass(frozen=True)
class TableRequest:
    """The features requested from one table, with their output names."""

    group: str
    name: str
    texts: tuple[str, ...]


@router.post("/get-online-features", responses=TABULAR_RESPONSES)
async def get_online_features(request: Request) -> Response:
    """Return the latest values of features for a list of entities, column by column.

    Body: `{"entities": {"user_id": [1, 2]}, "features": ["user/user_activity:ratings_total"]}`.
    A feature is `group/name:column`, `group/name:col1,col2` or `group/name` (every feature
    column). The response lists `metadata.feature_names` (the entity columns, then
    `group/name:column` for each feature) and, in the same order, one result per name with
    `values`, `statuses` (PRESENT, NULL_VALUE, NOT_FOUND or OUTSIDE_MAX_AGE) and
    `event_timestamps`, one item per entity. With an Accept header for CSV, Parquet or
    Arrow, the response is a table instead: one row per entity and one column per name in
    `metadata.feature_names`, without the statuses and event timestamps. Its entity columns
    have the key's type, so an id that the type cannot hold, such as -1 for a uint32 key, is a
    400 there."""
    file_format = negotiate_format(request.headers.get("accept"))
    require_json_body(request)
    try:
        body = await request.body()
    except ClientDisconnect:
        # As FastAPI does for the routes whose body it reads: a 400 that no client receives,
        # logged without a traceback.
        raise InvalidInput(
            "the client closed the connection before sending the whole body"
        ) from None
    if file_format != "json":
        table = await lookup_table(request.app.state, body)
        content = await run_in_threadpool(encode_table, table, file_format)
        return Response(content, media_type=FORMAT_MEDIA_TYPES[file_format])
    return Response(await lookup_body(request.app.state, body), media_type=JSON_MEDIA_TYPE)


@dataclass(frozen=True)
class TableLookup:
    """The lookup of one table: the columns it returns, each with the reference text that
    selected it and its output name `group/name:column`."""

    found: Lookup
    texts: list[str]
    columns: list[str]
    names: list[str]


async def lookup_body(state: Any, body: bytes) -> bytes:
    """Return the JSON response body of `POST /get-online-features` for the raw JSON `body`,
    with the online store and settings of the application `state`. Raises the request's
    error."""
    entities, lookups, positions = await _look_up(state, body)
    # Features are listed in the order of the references that requested them:
    # (position of the reference, name, result).
    listed: list[tuple[int, str, dict[str, list[Any]]]] = []
    for lookup in lookups:
        results = table_results(lookup.found, lookup.columns)
        for text, name, result in zip(lookup.texts, lookup.names, results, strict=True):
            listed.append((positions[text], name, result))
    # A stable sort keeps the columns of one reference in the order it selects them.
    listed.sort(key=lambda item: item[0])
    names = [*entities, *(name for _, name, _ in listed)]
    results = [_entity_result(values) for values in entities.values()]
    results += [result for _, _, result in listed]
    return dumps({"metadata": {"feature_names": names}, "results": results})


async def lookup_table(state: Any, body: bytes) -> pa.Table:
    """Return the lookup of the raw JSON `body` as a table: the entity columns in the type of
    the key, then one column per feature with the stored type, named as in
    `metadata.feature_names`. A key that is not found or has expired gets nulls, as does a null
    value."""
    entities, lookups, positions = await _look_up(state, body)
    listed: list[tuple[int, str, pa.ChunkedArray]] = []
    for lookup in lookups:
        rows = lookup.found.take(lookup.columns)
        for text, name, column in zip(lookup.texts, lookup.names, rows.columns, strict=True):
            listed.append((positions[text], name, column))
    listed.sort(key=lambda item: item[0])

    columns: dict[str, pa.Array | pa.ChunkedArray] = dict(_entity_columns(entities, lookups))
    for _, name, column in listed:
        columns[name] = column
    return pa.table(columns)


def _entity_columns(
    entities: dict[str, list[Any]], lookups: list[TableLookup]
) -> dict[str, pa.Array]:
    """Return the entity columns of a table response, in request order, with the values
    converted as the lookup converts them and typed as the key columns are stored.

    A key column that several tables store with different types gets the type that pyarrow's
    permissive promotion picks: uint16 and uint32 give uint32, but uint64 and int64 give int64,
    which cannot hold ids from 2^63 up."""
    types: dict[str, list[pa.DataType]] = {}
    converted: dict[str, list[Any]] = {}
    for lookup in lookups:
        view = lookup.found.view
        key = view.entry.entity_key
        for column in key:
            types.setdefault(column, []).append(view.table.schema.field(column).type)
        if any(column not in converted for column in key):
            values = convert_key_columns(
                view.entry, view.table.schema, {column: entities[column] for column in key}
            )
            for column in key:
                converted.setdefault(column, values[column])

    arrays = {}
    for column in entities:
        arrow_type = _common_key_type(column, types[column])
        arrays[column] = _key_array(column, converted[column], arrow_type)
    return arrays


def _common_key_type(column: str, arrow_types: list[pa.DataType]) -> pa.DataType:
    """Return the one type of a key column that every requested table can be echoed in."""
    distinct = list(dict.fromkeys(arrow_types))
    if len(distinct) == 1:
        return distinct[0]
    schemas = [pa.schema([(column, arrow_type)]) for arrow_type in distinct]
    try:
        return pa.unify_schemas(schemas, promote_options="permissive").field(column).type
    except (pa.ArrowInvalid, pa.ArrowTypeError):
        # NOTE: keys of different kinds, such as a string and an integer key of the same
        # name, are echoed in the type of the first requested table.
        return distinct[0]


def _key_array(column: str, values: list[Any], arrow_type: pa.DataType) -> pa.Array:
    """Return converted key values as an array of the key's type. Raise InvalidInput for an
    integer that the type cannot hold: such an id matches no row, and the JSON response
    reports it NOT_FOUND, but no value of the column can echo it."""
    try:
        return pa.array(values, arrow_type)
    except (OverflowError, pa.ArrowInvalid) as error:
        failure = error
    for position, value in enumerate(values):
        try:
            pa.scalar(value, arrow_type)
        except (OverflowError, pa.ArrowInvalid):
            raise InvalidInput(
                f"invalid value {quoted_value(value)} at entities.{column}[{position}]: the key "
                f"column {column} is {describe_type(arrow_type)}, which cannot hold it, so no "
                "row has this key and a table response cannot carry it; remove it, or request "
                "JSON, which reports it NOT_FOUND"
            ) from None
    raise failure


async def _look_up(
    state: Any, body: bytes
) -> tuple[dict[str, list[Any]], list[TableLookup], dict[str, int]]:
    """Parse the body and look up every requested table. Return the entities, one lookup per
    table in request order, and the position of each reference's first occurrence."""
    online: OnlineStore = state.online
    settings: Settings = state.settings
    check_body_start(body)
    entities, features = _parse_body(_parse_json(body), settings.max_entity_ids)
    now_us = time.time_ns() // 1_000

    tables = await _group_by_table(online, features)
    names = list(entities)
    lookups: list[TableLookup] = []
    used_columns: set[str] = set()
    for table in tables:
        view = online.current(table.group, table.name, now_us) if online.settings.enabled else None
        if view is None:
            view = await run_in_threadpool(online.state, table.group, table.name, now_us)
        key_values = _key_values(view, entities, table)
        used_columns.update(key_values)
        if isinstance(view, OnlineView):
            found = online.find(view, key_values, now_us)
        else:
            found = await run_in_threadpool(online.find, view, key_values, now_us)
        # The DuckDB path reads the entry again, so it may describe a newer version.
        selected = requested_columns(found.view, table.texts, names)
        columns = [column for _, column in selected]
        table_names = [f"{found.view.entry.reference}:{column}" for column in columns]
        names += table_names
        texts = [text for text, _ in selected]
        lookups.append(TableLookup(found, texts, columns, table_names))

    unused = [name for name in entities if name not in used_columns]
    if unused:
        raise InvalidInput(
            f"entities has columns {unused} that are not the key of any requested feature "
            "table; remove them"
        )
    return entities, lookups, _first_positions(features)


def _first_positions(features: list[str]) -> dict[str, int]:
    """Return the position of each reference's first occurrence in the request."""
    positions: dict[str, int] = {}
    for position, text in enumerate(features):
        positions.setdefault(text, position)
    return positions


@router.get("/online")
def online_state(request: Request) -> Response:
    """Report this worker's online views: state, rows, memory against the Parquet size, and
    the memory budget. Each worker process has its own views; `worker_pid` names it."""
    online: OnlineStore = request.app.state.online
    return JSONBytesResponse(online.describe())


def _parse_json(body: bytes) -> Any:
    """Parse a lookup body with orjson. When a cheap test cannot rule out a repeated key in
    the body or its entities, parse it again with the parser that rejects one."""
    try:
        payload = orjson.loads(body)
    except orjson.JSONDecodeError as error:
        raise InvalidInput(
            f"invalid JSON body ({error}); send for example {EXAMPLE_BODY}"
        ) from None
    objects = [payload] if isinstance(payload, dict) else []
    entities = payload.get("entities") if objects else None
    if isinstance(entities, dict):
        objects.append(entities)
    if not repeats_no_key(body, objects):
        parse_json_body(body)
    return payload


def _parse_body(payload: Any, max_entities: int) -> tuple[dict[str, list[Any]], list[str]]:
    """Check the body's shape and return its entities and features."""
    if not isinstance(payload, dict):
        raise InvalidInput(f"the body must be a JSON object such as {EXAMPLE_BODY}")
    unknown = sorted(set(payload) - REQUEST_FIELDS)
    if unknown:
        raise InvalidInput(f"unknown fields {unknown} in the body; send only entities and features")

    features = payload.get("features")
    if not isinstance(features, list) or not features:
        raise InvalidInput(
            "features must be a non-empty list of references such as 'group/name:column'"
        )
    for feature in features:
        if not isinstance(feature, str) or not feature:
            raise InvalidInput(
                f"invalid feature {quoted_value(feature)} in features: use 'group/name:column'"
            )

    entities = payload.get("entities")
    if not isinstance(entities, dict) or not entities:
        raise InvalidInput(
            "entities must be an object of key columns, each a list of values, such as "
            '{"user_id": [1, 2]}'
        )
    lengths = set()
    for column, values in entities.items():
        if not isinstance(values, list):
            raise InvalidInput(f"entities.{column} must be a list of key values")
        lengths.add(len(values))
    if len(lengths) > 1:
        sizes = {column: len(values) for column, values in entities.items()}
        raise InvalidInput(f"the lists in entities differ in length {sizes}; give one per entity")
    count = lengths.pop()
    if count > max_entities:
        raise PayloadTooLarge(
            f"{count} entities is more than the maximum {max_entities} per request; "
            "split the request, or raise SQLSTORE_MAX_ENTITY_IDS"
        )
    for column, values in entities.items():
        _check_key_values(column, values)
    return entities, features


def _check_key_values(column: str, values: list[Any]) -> None:
    """Reject values that no key type accepts: booleans, numbers with a fraction, objects."""
    for position, value in enumerate(values):
        if type(value) in (int, str):
            continue
        if value is None:
            raise InvalidInput(f"entities.{column}[{position}] is null; give a key value")
        raise InvalidInput(
            f"invalid value {quoted_value(value)} at entities.{column}[{position}]: "
            "give an integer of at most 64 bits or a string (JSON numbers beyond 64 bits are "
            "read as floating-point numbers)"
        )


async def _group_by_table(online: OnlineStore, features: list[str]) -> tuple[TableRequest, ...]:
    """Group feature references by table, keeping the request order of the tables."""
    if sum(map(len, features)) <= GROUPING_CACHE_TEXT_LIMIT and all(
        "/" in text.partition(":")[0] for text in features
    ):
        return _group_named_tables(tuple(features))

    tables: dict[tuple[str, str], list[str]] = {}
    for text in features:
        parsed = parse_reference(text)
        if parsed.group is not None:
            group, name = _checked_table_name(parsed)
        else:
            entries = await run_in_threadpool(online.store.list_tables)
            damaged = online.store.registry.damaged_tables()
            entry = resolve_reference(text, entries, damaged).entry
            group, name = entry.group, entry.name
        tables.setdefault((group, name), []).append(text)
    return _table_requests(tables)


@functools.lru_cache(maxsize=GROUPING_CACHE_SIZE)
def _group_named_tables(features: tuple[str, ...]) -> tuple[TableRequest, ...]:
    """Return what `_group_by_table` returns for references that all name their group. Kept
    for the next request with the same features, which most clients send every time."""
    tables: dict[tuple[str, str], list[str]] = {}
    for text in features:
        tables.setdefault(_checked_table_name(parse_reference(text)), []).append(text)
    return _table_requests(tables)


def _table_requests(tables: dict[tuple[str, str], list[str]]) -> tuple[TableRequest, ...]:
    return tuple(TableRequest(group, name, tuple(texts)) for (group, name), texts in tables.items())


def _checked_table_name(parsed: ParsedReference) -> tuple[str, str]:
    return validate_group(parsed.group or ""), validate_table_name(parsed.name)


def _key_values(
    state: OnlineView | DuckDBPath, entities: dict[str, list[Any]], table: TableRequest
) -> dict[str, list[Any]]:
    entry = state.entry
    if not entry.entity_key:
        raise InvalidInput(
            f"feature table {entry.reference} has no entity key, so it cannot be looked up by "
            "entity; declare entity_key when writing it"
        )
    missing = [column for column in entry.entity_key if column not in entities]
    if missing:
        raise InvalidInput(
            f"entities has no column {missing[0]!r}, the key of {entry.reference} (key: "
            f"{entry.entity_key}); add it to entities"
        )
    return {column: entities[column] for column in entry.entity_key}


def _entity_result(values: list[Any]) -> dict[str, list[Any]]:
    count = len(values)
    return {"values": values, "statuses": ["PRESENT"] * count, "event_timestamps": [None] * count}


def requested_columns(
    view: OnlineView, texts: Sequence[str], names: list[str]
) -> list[tuple[str, str]]:
    """Return the columns that feature references `texts` select from the table of `view`, each
    with the first reference that selects it, without repeats and without those whose output
    name is already in `names`."""
    entry = view.entry
    columns: dict[str, str] = {}
    for text in texts:
        selected = view.resolved.get(text)
        if selected is None:
            reference = resolve_reference(text, [entry])
            selected = reference.columns or default_feature_columns(entry)
            if len(view.resolved) < RESOLVED_TEXTS_LIMIT and len(text) <= RESOLVED_TEXT_LENGTH:
                view.resolved[text] = selected
        for column in selected:
            if column not in columns and f"{entry.reference}:{column}" not in names:
                columns[column] = text
    return [(text, column) for column, text in columns.items()]


def table_results(found: Lookup, columns: list[str]) -> list[dict[str, list[Any]]]:
    """Return one result (values, statuses, event timestamps) per column of a lookup."""
    timestamp = found.view.entry.timestamp_column
    if timestamp:
        event_timestamps = found.json_values(timestamp)[0]
    else:
        event_timestamps = [None] * len(found)
    results = []
    for column in columns:
        values, nulls = found.json_values(column)
        results.append(
            {
                "values": values,
                "statuses": found.statuses(nulls),
                "event_timestamps": event_timestamps,
            }
        )
    return results


ONLINE_PATH = "/get-online-features"
