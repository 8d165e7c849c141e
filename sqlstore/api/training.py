"""Routes for point-in-time training sets: POST /training-set and GET /training-sets."""

from __future__ import annotations

import dataclasses
import time
from typing import Annotated, Any

import pyarrow as pa
from fastapi import APIRouter, Depends, Request
from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictFloat
from starlette.responses import Response

from sqlstore.api.caching import serve_cached, serve_uncached, table_versions
from sqlstore.api.encoding import (
    FORMAT_MEDIA_TYPES,
    JSON_MEDIA_TYPE,
    TABULAR_RESPONSES,
    JSONBytesResponse,
    dumps,
    encode_table,
    negotiate_format,
    table_records,
)
from sqlstore.api.errors import request_id_of
from sqlstore.api.features import ERROR_RESPONSES
from sqlstore.api.jsonbody import JsonBodyRoute, json_body
from sqlstore.cache import CachedResponse
from sqlstore.errors import InvalidInput, SqlstoreError
from sqlstore.pointintime import DEFAULT_TIMESTAMP_COLUMN, JoinOptions, get_historical_features
from sqlstore.records import check_record_values, records_to_table
from sqlstore.references import resolve_reference
from sqlstore.sql.validate import analyse_query
from sqlstore.store import FeatureStore
from sqlstore.training import list_training_sets, load_training_set
from sqlstore.types import describe_type

router = APIRouter(tags=["training sets"], responses=ERROR_RESPONSES, route_class=JsonBodyRoute)


class TrainingSetRequest(BaseModel):
    """A point-in-time join: a named definition, or entities and features given inline."""

    model_config = ConfigDict(extra="forbid")

    name: str | None = Field(default=None, description="A definition under queries/training_sets")
    entities: list[dict[str, Any]] | None = Field(
        default=None,
        fail_fast=True,
        description="Entity rows: key columns, a timestamp and any other columns",
    )
    entity_sql: str | None = Field(
        default=None, description="A read-only query over the feature views giving the entities"
    )
    features: list[str] | None = Field(
        default=None,
        fail_fast=True,
        description="`group/name` or `group/name:col1,col2` references",
    )
    timestamp_column: str = DEFAULT_TIMESTAMP_COLUMN
    full_feature_names: StrictBool = False
    inclusive: StrictBool = Field(
        default=True, description="Match rows at the entity's timestamp; false: strictly before"
    )
    ttl_seconds: dict[str, Annotated[StrictFloat, Field(allow_inf_nan=False)] | None] = Field(
        default_factory=dict, description="TTL per table (`group/name`), overriding the registry"
    )
    created_before_event: StrictBool = Field(
        default=False, description="Only match rows created at or before the entity's timestamp"
    )


@router.post(
    "/training-set",
    responses=TABULAR_RESPONSES,
    dependencies=[Depends(json_body)],
)
def training_set(request: Request, body: TrainingSetRequest) -> Response:
    """Join features to entities as of each entity's timestamp; one output row per entity row.

    JSON by default; the Accept header selects CSV, Parquet or an Arrow IPC stream."""
    store = request.app.state.store
    file_format = negotiate_format(request.headers.get("accept"))
    started = time.perf_counter()

    if body.name is not None:
        _reject_inline_fields(body)
        definition = load_training_set(request.app.state.settings.queries_dir, body.name)
        entity_sql = definition.entity_sql
        features, options = definition.features, definition.join_options()
    else:
        _check_inline_fields(body)
        entity_sql = body.entity_sql
        features = body.features
        options = JoinOptions(
            timestamp_column=body.timestamp_column,
            full_feature_names=body.full_feature_names,
            inclusive=body.inclusive,
            ttl_seconds=body.ttl_seconds,
            created_before_event=body.created_before_event,
        )

    def load_entities() -> tuple[pa.Table | None, str | None]:
        """Return (entities, trusted entity SQL): a named definition's SQL runs as written,
        a client's SQL runs in the sandbox."""
        if body.name is not None:
            return None, entity_sql
        if body.entities is not None:
            return records_to_table(body.entities), None
        return _run_entity_sql(request, entity_sql), None

    def compute() -> CachedResponse:
        entities, trusted_sql = load_entities()
        table = get_historical_features(store, entities, features, options, entity_sql=trusted_sql)
        elapsed_ms = round((time.perf_counter() - started) * 1000, 3)
        return _encode_training_set(table, features, elapsed_ms, file_format)

    tables = _tables_read(store, features, entity_sql)
    if tables is None:
        return serve_uncached(compute)
    canonical = {**body.model_dump(mode="json"), "format": file_format}
    if body.name is not None:
        # The definition file can change while its name stays the same.
        canonical["definition"] = dataclasses.asdict(definition)
    return serve_cached(request, "training-set", canonical, table_versions(store, tables), compute)


def _check_inline_fields(body: TrainingSetRequest) -> None:
    if body.features is None:
        raise InvalidInput("features is required unless name is given")
    if (body.entities is None) == (body.entity_sql is None):
        raise InvalidInput("give exactly one of entities and entity_sql")
    if body.entities == []:
        raise InvalidInput("entities is empty: send at least one entity row")
    if body.entities is not None:
        # Before the cache key is built: pydantic cannot serialize values nested very deep.
        check_record_values(body.entities)


def _tables_read(
    store: FeatureStore, features: list[str], entity_sql: str | None
) -> list[tuple[str, str]] | None:
    """Return every table the training set reads, or None when the result must not be
    cached: the validator's parser rejects the entity query (which then fails when it runs),
    or the query calls a function whose result changes between runs, such as now()."""
    entries = store.list_tables()
    tables = set()
    for text in features:
        entry = resolve_reference(text, entries, store.registry.damaged_tables()).entry
        tables.add((entry.group, entry.name))
    if entity_sql is not None:
        try:
            shape = analyse_query(entity_sql)
        except SqlstoreError:
            return None
        if shape.volatile:
            return None
        tables |= shape.tables
    return sorted(tables)


def _encode_training_set(
    table: pa.Table, features: list[str], elapsed_ms: float, file_format: str
) -> CachedResponse:
    headers = {"X-Row-Count": str(table.num_rows), "X-Elapsed-Ms": str(elapsed_ms)}
    if file_format != "json":
        content = encode_table(table, file_format)
        return CachedResponse(content, FORMAT_MEDIA_TYPES[file_format], headers)

    metadata = {
        "row_count": table.num_rows,
        "columns": table.column_names,
        "dtypes": {f.name: describe_type(f.type) for f in table.schema},
        "features": features,
        "elapsed_ms": elapsed_ms,
    }
    body = {"data": table_records(table), "metadata": metadata}
    return CachedResponse(dumps(body), JSON_MEDIA_TYPE, headers)


def _run_entity_sql(request: Request, sql: str) -> pa.Table:
    """Run a client's entity query like any /sql query: validated, in the sandbox, with its
    limits. A result cut at the row or byte limit would silently drop entities, so it is an
    error instead."""
    result = request.app.state.sql.run(sql, {}, None, request_id_of(request))
    if result.truncated:
        raise InvalidInput(
            f"entity_sql returned more than {result.limit} rows (the SQL row or byte limit); "
            "send the entities as records, or raise SQLSTORE_SQL_MAX_ROWS"
        )
    return result.table


def _reject_inline_fields(body: TrainingSetRequest) -> None:
    # Every field but the name describes an inline request; the definition sets them itself.
    inline = [name for name in body.model_fields_set if name != "name"]
    if inline:
        raise InvalidInput(
            f"name runs a stored definition, so {', '.join(sorted(inline))} cannot be given "
            "with it; change the definition's file to change its options"
        )


@router.get("/training-sets")
def training_sets(request: Request) -> Response:
    """List the named training set definitions."""
    definitions = list_training_sets(request.app.state.settings.queries_dir)
    summaries = [definition.summary() for definition in definitions]
    return JSONBytesResponse({"count": len(summaries), "training_sets": summaries})
