"""Routes /sql and /queries: read-only SQL over the feature views, and named queries.

Results have the shape of a feature page (`data` and `metadata`), or CSV, Parquet or Arrow IPC
when the Accept header requests it. Results go through the result cache, keyed by sqlglot's
canonical form of the query, its parameters, the row limit, the format and the write stamp of
every view it reads. The metadata's `cached` is true when this response came from the cache.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import date
from typing import Annotated, Any
from urllib.parse import unquote_to_bytes

import orjson
from fastapi import APIRouter, Depends, FastAPI, Path, Query, Request
from pydantic import BaseModel, ConfigDict, Field, StrictInt, model_validator
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import Headers
from starlette.responses import Response
from starlette.types import Receive, Scope

from sqlstore.api.caching import cached_response, serve_computed, table_versions
from sqlstore.api.encoding import (
    FORMAT_MEDIA_TYPES,
    JSON_MEDIA_TYPE,
    TABULAR_RESPONSES,
    encode_table,
    negotiate_format,
    table_records,
)
from sqlstore.api.errors import register_input_advice, request_id_of
from sqlstore.api.features import reject_repeated_keys
from sqlstore.api.jsonbody import (
    JsonBodyRoute,
    json_body,
    repeats_no_key,
    starts_as_other_encoding,
)
from sqlstore.api.models import ErrorResponse
from sqlstore.cache import CachedResponse, cache_key
from sqlstore.errors import (
    InvalidInput,
    PayloadTooLarge,
    QueryFailed,
    SqlstoreError,
    quoted_value,
)
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
SQL_PATH = "/sql"
NAMED_QUERY_PATH = "/queries/{name}"
# 19 digits in a row: an integer literal that may not fit in 64 bits.
LONG_DIGIT_RUN = re.compile(rb"[0-9]{19}")
# Fields of the body of POST /sql.
SQL_FIELDS = frozenset({"sql", "params", "limit"})
# Messages other than a disconnect after which a request stops listening for one. After the
# body, the server sends nothing else; replayed bodies send their chunks first.
DISCONNECT_CHECKS = 8
# Results of more rows are encoded in the thread pool, off the event loop.
INLINE_ENCODING_ROWS = 200


@asynccontextmanager
async def sql_lifespan(app: FastAPI) -> AsyncIterator[None]:
    """Start the SQL service once the application has its store and settings; stop it last."""
    settings: Settings = app.state.settings
    limits = SqlLimits.from_settings(settings)
    service = SqlService(app.state.store, limits, settings.queries_dir)
    app.state.sql = service
    advice = _input_advice(limits)
    register_input_advice(app, SQL_PATH, advice)
    register_input_advice(app, NAMED_QUERY_PATH, advice)
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


def _input_advice(limits: SqlLimits) -> dict[str, str]:
    """Return the allowed values of the request fields of /sql and /queries/{name}, by their
    location, for the 422 of a value that the request models reject."""
    rows = f"a whole number of rows from 0 to {limits.max_rows} (SQLSTORE_SQL_MAX_ROWS)"
    return {
        "body.limit": f"expected {rows}, or null for {limits.max_rows}",
        f"query.{ROW_LIMIT_KEY}": f"expected {rows}; leave out {ROW_LIMIT_KEY} for "
        f"{limits.max_rows}",
        "body.params": 'expected an object of parameter values, as {"params": {"name": value}}',
        "body.sql": "expected the query text as a string",
    }


router = APIRouter(
    tags=["sql"], responses=ERROR_RESPONSES, lifespan=sql_lifespan, route_class=JsonBodyRoute
)


class SqlRequest(BaseModel):
    """One read-only query with its named parameters."""

    model_config = ConfigDict(extra="forbid")

    sql: str = Field(description="One query: SELECT, WITH, VALUES, FROM ..., PIVOT, DESCRIBE")
    params: dict[str, Any] = Field(
        default_factory=dict, description="Values of the query's $name parameters"
    )
    # Strict, because lax validation would read true as a limit of 1 and "2" or 2.5e1 as numbers.
    limit: StrictInt | None = Field(
        default=None,
        ge=0,
        description="Maximum number of rows; default and upper bound: SQLSTORE_SQL_MAX_ROWS",
    )


class NamedQueryRequest(BaseModel):
    """Parameters of a named query run."""

    model_config = ConfigDict(extra="forbid")

    params: dict[str, Any] = Field(default_factory=dict)
    limit: StrictInt | None = Field(default=None, ge=0)

    @model_validator(mode="before")
    @classmethod
    def _parameters_inside_params(cls, data: Any) -> Any:
        """Reject other top-level fields with a message that names `params`, the place of a
        named query's parameters, instead of pydantic's bare "Extra inputs are not permitted"."""
        if isinstance(data, dict):
            unknown = sorted(str(key) for key in data if key not in ("params", "limit"))
            if unknown:
                raise ValueError(
                    f"unknown fields {unknown}: send the query's parameters inside params, as "
                    '{"params": {"name": value}}'
                )
        return data


def _service(request: Request) -> SqlService:
    return request.app.state.sql


@router.post(SQL_PATH, responses=TABULAR_RESPONSES, dependencies=[Depends(json_body)])
async def post_sql(request: Request, body: SqlRequest) -> Response:
    """Run one read-only query over the feature views (`group.name`)."""
    file_format = negotiate_format(request.headers.get("accept"))
    prepared = await _prepare(request, body.sql, body.params, body.limit)
    return await serve_query(request, prepared, file_format)


@router.get(SQL_PATH, responses=TABULAR_RESPONSES)
async def get_sql(
    request: Request,
    sql: Annotated[str, Query(description="The query text, URL-encoded")],
    limit: Annotated[int | None, Query(alias=ROW_LIMIT_KEY, ge=0)] = None,
) -> Response:
    """Run one read-only query given in the query string, for shareable links. Every other
    query-string key is a `$name` parameter, passed as a string."""
    file_format = negotiate_format(request.headers.get("accept"))
    _check_query_string(request)
    reject_repeated_keys(request)
    parameters = _query_string_parameters(request, exclude={SQL_TEXT_KEY, ROW_LIMIT_KEY})
    prepared = await _prepare(request, sql, parameters, limit)
    return await serve_query(request, prepared, file_format)


@router.get("/queries")
def list_queries(request: Request) -> Response:
    """List the named queries with their parameters."""
    queries = [query.describe() for query in _service(request).named_queries()]
    body = {"count": len(queries), "queries": queries}
    return Response(encode_json(body), media_type=JSON_MEDIA_TYPE)


QueryName = Annotated[str, Path(description="Name of a query file, without .sql")]


@router.get(NAMED_QUERY_PATH, responses=TABULAR_RESPONSES)
async def get_named_query(
    request: Request,
    name: QueryName,
    limit: Annotated[int | None, Query(alias=ROW_LIMIT_KEY, ge=0)] = None,
) -> Response:
    """Run a named query; every query-string key except `_limit` is one of its parameters."""
    file_format = negotiate_format(request.headers.get("accept"))
    _check_query_string(request)
    reject_repeated_keys(request)
    values = _query_string_parameters(request, exclude={ROW_LIMIT_KEY})
    return await _run_named(request, name, values, limit, file_format)


@router.post(NAMED_QUERY_PATH, responses=TABULAR_RESPONSES, dependencies=[Depends(json_body)])
async def post_named_query(request: Request, name: QueryName, body: NamedQueryRequest) -> Response:
    """Run a named query with parameters from the body."""
    file_format = negotiate_format(request.headers.get("accept"))
    return await _run_named(request, name, body.params, body.limit, file_format)


async def _run_named(
    request: Request, name: str, values: dict[str, Any], limit: int | None, file_format: str
) -> Response:
    # Reading and parsing the query file touches the disk, so it runs in the thread pool.
    query = await run_in_threadpool(_service(request).named_query, name)
    parameters = query.bind(values)
    prepared = await _prepare(request, query.sql, parameters, limit)
    extra = {"query": query.name, "params": parameters}
    try:
        return await serve_query(request, prepared, file_format, extra)
    except QueryFailed as error:
        # DuckDB's message does not say which value caused it, such as a negative LIMIT.
        raise QueryFailed(
            f"named query {query.name} failed with parameters {_parameters_text(parameters)}: "
            f"{error.message}"
        ) from error


def _parameters_text(parameters: dict[str, Any]) -> str:
    """Return bound parameter values as `name=value` pairs, values as JSON text."""
    if not parameters:
        return "(none)"
    pairs = []
    for name, value in parameters.items():
        shown = value.isoformat() if isinstance(value, date) else value
        pairs.append(f"{name}={quoted_value(shown)}")
    return ", ".join(pairs)


async def _prepare(
    request: Request, sql: object, parameters: dict[str, Any], limit: int | None
) -> PreparedQuery:
    """Validate a query: on the event loop when the text was validated lately, which costs
    microseconds, else in the thread pool."""
    service = _service(request)
    _check_parameter_values(parameters, request.app.state.settings.sql_max_parameter_values)
    if service.validated_before(sql):
        return service.prepare(sql, parameters, limit)
    return await run_in_threadpool(service.prepare, sql, parameters, limit)


def _check_query_string(request: Request) -> None:
    """Reject a query string whose percent-decoded bytes are not UTF-8. Starlette replaces such
    bytes with U+FFFD, which would change the query text or a parameter value silently."""
    raw = request.scope.get("query_string", b"").replace(b"+", b" ")
    try:
        unquote_to_bytes(raw).decode("utf-8")
    except UnicodeDecodeError as error:
        raise InvalidInput(
            f"the query string is not UTF-8 once percent-decoded (invalid byte at position "
            f"{error.start} of the decoded string); percent-encode the text as UTF-8"
        ) from error


def _query_string_parameters(request: Request, exclude: set[str]) -> dict[str, str]:
    """Return query-string values by key. Call `reject_repeated_keys` first, because a repeated
    key would keep only its last value."""
    return {key: value for key, value in request.query_params.multi_items() if key not in exclude}


async def serve_query(
    request: Request,
    prepared: PreparedQuery,
    file_format: str,
    extra: dict[str, Any] | None = None,
) -> Response:
    """Return the result of a prepared query, from the result cache when it contains it."""
    state = request.app.state

    async def compute() -> CachedResponse:
        request_id = request_id_of(request)
        return await _computed_response(
            state, prepared, file_format, extra, request_id, request.receive
        )

    if prepared.query.volatile or state.cache is None:
        # No cache to consult, so the table versions that key it are not read.
        return await serve_computed(request, None, compute)
    versions = table_versions(state.store, sorted(prepared.query.tables))
    key = _result_key(prepared, file_format, extra, versions)
    return await serve_computed(request, key, compute, versions=versions, on_hit=_mark_cached)


async def lane_response(
    state: Any,
    scope: Scope,
    body: bytes,
    receive: Receive,
    max_values: int = Settings.sql_max_parameter_values,
) -> Response | None:
    """Serve `POST /sql` for the fast lane (`sqlstore.api.fastlane`), or return None.
    `max_values` is the setting SQLSTORE_SQL_MAX_PARAMETER_VALUES.

    It serves JSON results of queries validated lately, from the memory tier or, when the
    result is not to be cached, from a worker. For every other request it returns None before
    any query runs: a body the route's model would treat differently, another format, a text
    not validated lately, a validation error, a result cache miss. Errors of the query itself
    are raised, as the route raises them.
    """
    service: SqlService = state.sql
    key = (body, *_accept_values(scope))
    prepared = service.prepared_for(key)
    if prepared is None:
        prepared = _lane_prepared(service, scope, body, key, max_values)
    if prepared is None:
        return None

    cache = state.cache
    if cache is not None and not prepared.query.volatile:
        versions = table_versions(state.store, sorted(prepared.query.tables))
        cached = cache.get_memory(_result_key(prepared, "json", None, versions))
        if cached is None:
            return None
        return cached_response(_mark_cached(cached), "hit-memory")

    request_id = scope["state"]["request_id"]
    computed = await _computed_response(state, prepared, "json", None, request_id, receive)
    return cached_response(computed, "bypass")


def _lane_prepared(
    service: SqlService, scope: Scope, body: bytes, key: tuple[bytes, ...], max_values: int
) -> PreparedQuery | None:
    """Prepare the query of a plain request whose text was validated lately, or return None.

    The prepared query is remembered under `key` for the next identical request."""
    request = _plain_sql_request(scope, body)
    if request is None:
        return None
    sql, parameters, limit = request
    if not service.validated_before(sql):
        return None
    version = service.registry_version()
    try:
        _check_parameter_values(parameters, max_values)
        prepared = service.prepare(sql, parameters, limit)
    except SqlstoreError:
        return None
    service.remember_prepared(key, version, prepared)
    return prepared


def _accept_values(scope: Scope) -> list[bytes]:
    return [value for name, value in scope["headers"] if name == b"accept"]


def _plain_sql_request(scope: Scope, body: bytes) -> tuple[str, dict[str, Any], int | None] | None:
    """Return the query, parameters and limit of a JSON request whose every field has the exact
    type the route's model expects, or None."""
    if starts_as_other_encoding(body):
        return None
    if LONG_DIGIT_RUN.search(body):
        # orjson reads integers beyond 64 bits as floats; the route's parser keeps them exact.
        return None
    try:
        payload = orjson.loads(body)
        file_format = negotiate_format(Headers(scope=scope).get("accept"))
    except (orjson.JSONDecodeError, InvalidInput):
        return None
    if file_format != "json" or not isinstance(payload, dict) or not payload.keys() <= SQL_FIELDS:
        return None
    sql = payload.get("sql")
    parameters = payload.get("params", {})
    limit = payload.get("limit")
    plain_limit = limit is None or (type(limit) is int and limit >= 0)
    if not isinstance(sql, str) or not isinstance(parameters, dict) or not plain_limit:
        return None
    if not repeats_no_key(body, [payload, parameters] if "params" in payload else [payload]):
        # orjson keeps the last value of a repeated key, where the route's parser rejects it.
        return None
    return sql, parameters, limit


def _check_parameter_values(parameters: dict[str, Any], max_values: int) -> None:
    """Raise PayloadTooLarge when `parameters` have more than `max_values` values in all, each
    item of a list counting as one. The worker builds a DuckDB value of each: a list of 30
    million integers, a 60 MB body, needed more than the 1 GiB memory limit."""
    counts = {
        name: len(value) if isinstance(value, list) else 1 for name, value in parameters.items()
    }
    total = sum(counts.values())
    if total > max_values:
        largest = max(counts, key=counts.__getitem__)
        raise PayloadTooLarge(
            f"the query's parameters have {total} values, more than the maximum {max_values} "
            f"(${largest} has {counts[largest]}); write long lists of values to a feature "
            "table and join it in the query, or raise SQLSTORE_SQL_MAX_PARAMETER_VALUES"
        )


async def _computed_response(
    state: Any,
    prepared: PreparedQuery,
    file_format: str,
    extra: dict[str, Any] | None,
    request_id: str,
    receive: Receive,
) -> CachedResponse:
    """Run a prepared query and encode its result; a large table is encoded in the thread
    pool. The query is stopped if the client closes the connection meanwhile (`receive`
    reports that)."""
    service: SqlService = state.sql
    json_rows = file_format == "json"
    disconnected = asyncio.ensure_future(_until_disconnected(receive))
    try:
        result = await service.execute_async(prepared, request_id, json_rows, disconnected)
    finally:
        disconnected.cancel()
    if result.table is not None and result.table.num_rows > INLINE_ENCODING_ROWS:
        return await run_in_threadpool(tabular_response, result, file_format, extra)
    return tabular_response(result, file_format, extra)


async def _until_disconnected(receive: Receive) -> None:
    """Return once the client has closed the connection; never return if `receive` gives
    anything else a few times, rather than loop on it."""
    for _ in range(DISCONNECT_CHECKS):
        if (await receive())["type"] == "http.disconnect":
            return
    await asyncio.get_running_loop().create_future()


def _result_key(
    prepared: PreparedQuery,
    file_format: str,
    extra: dict[str, Any] | None,
    versions: dict[str, str],
) -> str:
    canonical = {
        "sql": prepared.query.canonical,
        "params": prepared.query.parameters,
        "limit": prepared.row_limit,
        "format": file_format,
        "extra": extra,
    }
    return cache_key("sql", canonical, versions)


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
        "X-Row-Count": str(result.row_count),
        "X-Truncated": "true" if result.truncated else "false",
        "X-Elapsed-Ms": f"{result.elapsed_ms:.1f}",
    }
    if file_format != "json":
        table = portable_table(result.table, file_format)
        content = encode_table(table, file_format)
        return CachedResponse(content, FORMAT_MEDIA_TYPES[file_format], headers)

    if result.table is None:
        columns = list(result.columns)
        dtypes = dict(zip(result.columns, result.dtypes, strict=True))
    else:
        columns = result.table.column_names
        dtypes = column_types(result.table)
    metadata = {
        "columns": columns,
        "dtypes": dtypes,
        "row_count": result.row_count,
        "limit": result.limit,
        "truncated": result.truncated,
        "truncated_by": result.truncated_by,
        "elapsed_ms": round(result.elapsed_ms, 3),
        "cached": False,
    }
    if result.json_rows is None:
        body = {**(extra or {}), "data": table_records(result.table), "metadata": metadata}
        return CachedResponse(encode_json(body), JSON_MEDIA_TYPE, headers)

    # The same bytes as encoding the whole body at once, with the rows already encoded.
    start = encode_json(extra)[:-1] + b"," if extra else b"{"
    content = b"".join(
        (start, b'"data":', result.json_rows, b',"metadata":', encode_json(metadata), b"}")
    )
    return CachedResponse(content, JSON_MEDIA_TYPE, headers)
