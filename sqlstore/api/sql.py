"""Routes /sql and /queries: read-only SQL over the feature views, and named queries.

Results have the shape of a feature page (`data` and `metadata`), or CSV, Parquet or Arrow IPC
when the Accept header requests it. Results go through the result cache, keyed by sqlglot's
canonical form of the query, its parameters, the row limit, the format and the write stamp of
every view it reads. The metadata's `cached` is true when this response came from the cache.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Annotated, Any

from fastapi import APIRouter, Depends, FastAPI, Path, Query, Request
from pydantic import BaseModel, ConfigDict, Field
from starlette.responses import Response

from sqlstore.api.caching import serve_cached, serve_uncached, table_versions
from sqlstore.api.encoding import (
    FORMAT_MEDIA_TYPES,
    JSON_MEDIA_TYPE,
    encode_table,
    negotiate_format,
    table_records,
)
from sqlstore.api.errors import request_id_of
from sqlstore.api.features import json_body
from sqlstore.api.models import ErrorResponse
from sqlstore.cache import CachedResponse
from sqlstore.settings import Settings
from sqlstore.sql.limits import SqlLimits
from sqlstore.sql.results import column_types, encode_json, portable_table
from sqlstore.sql.service import PreparedQuery, SqlResult, SqlService

logger = logging.getLogger(__name__)

ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    status: {"model": ErrorResponse} for status in (400, 404, 413, 422, 500, 503)
}
# Query-string keys of GET /sql and GET /queries/{name} that are not query parameters.
SQL_TEXT_KEY = "sql"
ROW_LIMIT_KEY = "_limit"
TABULAR_CONTENT = {
    200: {
        "content": {media_type: {} for media_type in FORMAT_MEDIA_TYPES.values()},
        "description": "JSON by default; the Accept header selects CSV, Parquet or Arrow",
    }
}


@asynccontextmanager
async def sql_lifespan(app: FastAPI) -> AsyncIterator[None]:
    """Start the SQL service once the application has its store and settings; stop it last."""
    settings: Settings = app.state.settings
    limits = SqlLimits.from_settings(settings)
    service = SqlService(app.state.store, limits, settings.queries_dir)
    app.state.sql = service
    logger.info(
        "SQL endpoint: %d worker processes, %g s time limit, %d rows, %d bytes of DuckDB "
        "memory per worker, queries from %s",
        limits.workers,
        limits.time_limit_seconds,
        limits.max_rows,
        limits.memory_limit_bytes,
        settings.queries_dir,
    )
    try:
        yield
    finally:
        service.close()
        logger.info("SQL endpoint stopped")


router = APIRouter(tags=["sql"], responses=ERROR_RESPONSES, lifespan=sql_lifespan)


class SqlRequest(BaseModel):
    """One read-only query with its named parameters."""

    model_config = ConfigDict(extra="forbid")

    sql: str = Field(description="One query: SELECT, WITH, VALUES, FROM ..., PIVOT, DESCRIBE")
    params: dict[str, Any] = Field(
        default_factory=dict, description="Values of the query's $name parameters"
    )
    limit: int | None = Field(
        default=None,
        ge=0,
        description="Maximum number of rows; default and upper bound: SQLSTORE_SQL_MAX_ROWS",
    )


class NamedQueryRequest(BaseModel):
    """Parameters of a named query run."""

    model_config = ConfigDict(extra="forbid")

    params: dict[str, Any] = Field(default_factory=dict)
    limit: int | None = Field(default=None, ge=0)


def _service(request: Request) -> SqlService:
    return request.app.state.sql


@router.post("/sql", responses=TABULAR_CONTENT, dependencies=[Depends(json_body)])
def post_sql(request: Request, body: SqlRequest) -> Response:
    """Run one read-only query over the feature views (`group.name`)."""
    file_format = negotiate_format(request.headers.get("accept"))
    prepared = _service(request).prepare(body.sql, body.params, body.limit)
    return serve_query(request, prepared, file_format)


@router.get("/sql", responses=TABULAR_CONTENT)
def get_sql(
    request: Request,
    sql: Annotated[str, Query(description="The query text, URL-encoded")],
    limit: Annotated[int | None, Query(alias=ROW_LIMIT_KEY, ge=0)] = None,
) -> Response:
    """Run one read-only query given in the query string, for shareable links. Every other
    query-string key is a `$name` parameter, passed as a string."""
    file_format = negotiate_format(request.headers.get("accept"))
    parameters = _query_string_parameters(request, exclude={SQL_TEXT_KEY, ROW_LIMIT_KEY})
    prepared = _service(request).prepare(sql, parameters, limit)
    return serve_query(request, prepared, file_format)


@router.get("/queries")
def list_queries(request: Request) -> Response:
    """List the named queries with their parameters."""
    queries = [query.describe() for query in _service(request).named_queries()]
    body = {"count": len(queries), "queries": queries}
    return Response(encode_json(body), media_type=JSON_MEDIA_TYPE)


QueryName = Annotated[str, Path(description="Name of a query file, without .sql")]


@router.get("/queries/{name}", responses=TABULAR_CONTENT)
def get_named_query(
    request: Request,
    name: QueryName,
    limit: Annotated[int | None, Query(alias=ROW_LIMIT_KEY, ge=0)] = None,
) -> Response:
    """Run a named query; every query-string key except `_limit` is one of its parameters."""
    file_format = negotiate_format(request.headers.get("accept"))
    values = _query_string_parameters(request, exclude={ROW_LIMIT_KEY})
    return _run_named(request, name, values, limit, file_format)


@router.post("/queries/{name}", responses=TABULAR_CONTENT, dependencies=[Depends(json_body)])
def post_named_query(request: Request, name: QueryName, body: NamedQueryRequest) -> Response:
    """Run a named query with parameters from the body."""
    file_format = negotiate_format(request.headers.get("accept"))
    return _run_named(request, name, body.params, body.limit, file_format)


def _run_named(
    request: Request, name: str, values: dict[str, Any], limit: int | None, file_format: str
) -> Response:
    service = _service(request)
    query = service.named_query(name)
    parameters = query.bind(values)
    prepared = service.prepare(query.sql, parameters, limit)
    return serve_query(request, prepared, file_format, {"query": query.name, "params": parameters})


def _query_string_parameters(request: Request, exclude: set[str]) -> dict[str, str]:
    """Return query-string values by key; for a repeated key, the last value."""
    return {key: value for key, value in request.query_params.multi_items() if key not in exclude}


def serve_query(
    request: Request,
    prepared: PreparedQuery,
    file_format: str,
    extra: dict[str, Any] | None = None,
) -> Response:
    """Return the result of a prepared query, from the result cache when it contains it."""
    query = prepared.query
    canonical = {
        "sql": query.canonical,
        "params": query.parameters,
        "limit": prepared.row_limit,
        "format": file_format,
        "extra": extra,
    }
    versions = table_versions(request.app.state.store, sorted(query.tables))

    def compute() -> CachedResponse:
        result = _service(request).execute(prepared, request_id_of(request))
        return tabular_response(result, file_format, extra)

    if query.volatile:
        return serve_uncached(compute)
    return serve_cached(request, "sql", canonical, versions, compute, on_hit=_mark_cached)


def _mark_cached(response: CachedResponse) -> CachedResponse:
    """Set the JSON metadata's `cached` to true. It is the last key of `metadata`, which is the
    last key of the body, so its last occurrence in the bytes is the one to change."""
    if response.media_type != JSON_MEDIA_TYPE:
        return response
    marker = b'"cached":false'
    position = response.body.rfind(marker)
    if position < 0:
        return response
    body = response.body[:position] + b'"cached":true' + response.body[position + len(marker) :]
    return CachedResponse(body, response.media_type, response.headers)


def tabular_response(
    result: SqlResult, file_format: str, extra: dict[str, Any] | None = None
) -> CachedResponse:
    """Encode `result` as JSON (with metadata) or as the file format the client asked for."""
    headers = {
        "X-Row-Count": str(result.table.num_rows),
        "X-Truncated": "true" if result.truncated else "false",
        "X-Elapsed-Ms": f"{result.elapsed_ms:.1f}",
    }
    if file_format != "json":
        table = portable_table(result.table, file_format)
        content = encode_table(table, file_format)
        return CachedResponse(content, FORMAT_MEDIA_TYPES[file_format], headers)

    metadata = {
        "columns": result.table.column_names,
        "dtypes": column_types(result.table),
        "row_count": result.table.num_rows,
        "limit": result.limit,
        "truncated": result.truncated,
        "truncated_by": result.truncated_by,
        "elapsed_ms": round(result.elapsed_ms, 3),
        "cached": False,
    }
    body = {**(extra or {}), "data": table_records(result.table), "metadata": metadata}
    return CachedResponse(encode_json(body), JSON_MEDIA_TYPE, headers)
