"""Routes for point-in-time training sets: POST /training-set and GET /training-sets."""

from __future__ import annotations

import time
from typing import Any

from fastapi import APIRouter, Request
from pydantic import BaseModel, ConfigDict, Field
from starlette.responses import Response

from sqlstore.api.encoding import (
    FORMAT_MEDIA_TYPES,
    JSONBytesResponse,
    encode_table,
    negotiate_format,
    table_records,
)
from sqlstore.api.features import ERROR_RESPONSES
from sqlstore.errors import InvalidInput
from sqlstore.pointintime import DEFAULT_TIMESTAMP_COLUMN, JoinOptions, get_historical_features
from sqlstore.records import records_to_table
from sqlstore.training import list_training_sets, load_training_set
from sqlstore.types import describe_type

router = APIRouter(tags=["training sets"], responses=ERROR_RESPONSES)


class TrainingSetRequest(BaseModel):
    """A point-in-time join: a named definition, or entities and features given inline."""

    model_config = ConfigDict(extra="forbid")

    name: str | None = Field(default=None, description="A definition under queries/training_sets")
    entities: list[dict[str, Any]] | None = Field(
        default=None, description="Entity rows: key columns, a timestamp and any other columns"
    )
    entity_sql: str | None = Field(
        default=None, description="A read-only query over the feature views giving the entities"
    )
    features: list[str] | None = Field(
        default=None, description="`group/name` or `group/name:col1,col2` references"
    )
    timestamp_column: str = DEFAULT_TIMESTAMP_COLUMN
    full_feature_names: bool = False
    inclusive: bool = Field(
        default=True, description="Match rows at the entity's timestamp; false: strictly before"
    )
    ttl_seconds: dict[str, float | None] = Field(
        default_factory=dict, description="TTL per table (`group/name`), overriding the registry"
    )
    created_before_event: bool = Field(
        default=False, description="Only match rows created at or before the entity's timestamp"
    )


@router.post(
    "/training-set",
    responses={200: {"content": {t: {} for t in FORMAT_MEDIA_TYPES.values()}}},
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
        entities, entity_sql = None, definition.entity_sql
        features, options = definition.features, definition.join_options()
    else:
        if body.features is None:
            raise InvalidInput("features is required unless name is given")
        if (body.entities is None) == (body.entity_sql is None):
            raise InvalidInput("give exactly one of entities and entity_sql")
        if body.entities == []:
            raise InvalidInput("entities is empty: send at least one entity row")
        entities = None if body.entities is None else records_to_table(body.entities)
        entity_sql = body.entity_sql
        if entity_sql is not None:
            request.app.state.validate_sql(store, entity_sql)
        features = body.features
        options = JoinOptions(
            timestamp_column=body.timestamp_column,
            full_feature_names=body.full_feature_names,
            inclusive=body.inclusive,
            ttl_seconds=body.ttl_seconds,
            created_before_event=body.created_before_event,
        )

    table = get_historical_features(store, entities, features, options, entity_sql=entity_sql)
    elapsed_ms = round((time.perf_counter() - started) * 1000, 3)
    headers = {"X-Row-Count": str(table.num_rows), "X-Elapsed-Ms": str(elapsed_ms)}
    if file_format != "json":
        content = encode_table(table, file_format)
        return Response(content, media_type=FORMAT_MEDIA_TYPES[file_format], headers=headers)

    metadata = {
        "row_count": table.num_rows,
        "columns": table.column_names,
        "dtypes": {f.name: describe_type(f.type) for f in table.schema},
        "features": features,
        "elapsed_ms": elapsed_ms,
    }
    return JSONBytesResponse({"data": table_records(table), "metadata": metadata}, headers=headers)


def _reject_inline_fields(body: TrainingSetRequest) -> None:
    inline = [
        name for name in ("entities", "entity_sql", "features") if getattr(body, name) is not None
    ]
    if inline:
        raise InvalidInput(
            f"name runs a stored definition, so {', '.join(inline)} cannot be given with it"
        )


@router.get("/training-sets")
def training_sets(request: Request) -> Response:
    """List the named training set definitions."""
    definitions = list_training_sets(request.app.state.settings.queries_dir)
    summaries = [definition.summary() for definition in definitions]
    return JSONBytesResponse({"count": len(summaries), "training_sets": summaries})
