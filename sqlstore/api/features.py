"""Routes under /features: the registry, page reads, writes, storage info and batch lookups."""

from __future__ import annotations

import logging
from collections.abc import Collection
from datetime import UTC, datetime
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request
from starlette.responses import Response

from sqlstore import metrics
from sqlstore.api.caching import (
    reclaim_table,
    serve_cached,
    serve_cached_async,
    serve_uncached,
    table_versions,
)
from sqlstore.api.datafiles import data_files
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
from sqlstore.api.jsonbody import JsonBodyRoute, json_body
from sqlstore.api.models import (
    ERROR_RESPONSES,
    BatchRequest,
    BatchResponse,
    FeatureTableResponse,
    StorageInfoResponse,
    TableList,
    WriteRequest,
    WriteResponse,
)
from sqlstore.api.pagecache import PAGE_KIND, page_request
from sqlstore.cache import CachedResponse
from sqlstore.errors import InvalidInput, PayloadTooLarge, TableUnavailable, quoted_value
from sqlstore.lookup import LookupResult, lookup_entities
from sqlstore.online import OnlineStore
from sqlstore.reader import Page, parse_filters, read_page
from sqlstore.records import records_to_table
from sqlstore.references import FeatureReference, resolve_reference
from sqlstore.registry import RegistryEntry
from sqlstore.settings import Settings
from sqlstore.store import FeatureStore, TableDefinition
from sqlstore.types import describe_type
from sqlstore.values import parse_timestamp

logger = logging.getLogger(__name__)

PAGE_PARAMETERS = frozenset({"columns", "limit", "offset", "order_by"})
# DuckDB binds OFFSET as BIGINT.
MAX_OFFSET = 2**63 - 1

router = APIRouter(
    prefix="/features", tags=["features"], responses=ERROR_RESPONSES, route_class=JsonBodyRoute
)


def _store(request: Request) -> FeatureStore:
    return request.app.state.store


def _settings(request: Request) -> Settings:
    return request.app.state.settings


@router.get("", response_model=TableList)
def list_tables(request: Request) -> Response:
    """List every feature table with its registry entry."""
    entries = _store(request).list_tables()
    metrics.publish_tables(entries)
    tables = [entry.model_dump(mode="json") for entry in entries]
    return JSONBytesResponse({"count": len(tables), "tables": tables})


@router.post(
    "/batch",
    response_model=BatchResponse,
    responses=TABULAR_RESPONSES,
    dependencies=[Depends(json_body)],
)
def batch_features(request: Request, body: BatchRequest) -> Response:
    """Return the latest row per entity of several tables, as of `timestamp` (default: now).
    With an Accept header for CSV, Parquet or Arrow, the response is the rows of the one
    requested feature name, without the metadata."""
    file_format = negotiate_format(request.headers.get("accept"))
    store = _store(request)
    settings = _settings(request)
    if body.entity_ids is None:
        raise InvalidInput("entity_ids is required: give the key values to look up")
    if len(body.entity_ids) > settings.max_entity_ids:
        raise PayloadTooLarge(
            f"{len(body.entity_ids)} entity ids is more than the maximum "
            f"{settings.max_entity_ids} per request; split the request, or raise "
            "SQLSTORE_MAX_ENTITY_IDS"
        )

    if file_format != "json" and len(body.feature_names) != 1:
        raise InvalidInput(
            f"a response in {file_format} format contains one table, but feature_names has "
            f"{len(body.feature_names)} names; request one name per call, or accept "
            "application/json"
        )

    as_of = _parse_as_of(body.timestamp)
    entries = store.list_tables()
    damaged = store.registry.damaged_tables()
    references = [resolve_reference(name, entries, damaged) for name in body.feature_names]

    # A lookup as of now reads the online views; one as of a given time runs in DuckDB.
    online = _online(request) if body.timestamp is None else None

    def compute() -> CachedResponse:
        return _encode_batch(store, references, body.entity_ids, as_of, online, file_format)

    # A lookup as of now changes as time passes when a table has a TTL, so it is not cached.
    as_of_now = body.timestamp is None
    if as_of_now and any(reference.entry.ttl_seconds for reference in references):
        return serve_uncached(compute)

    tables = {(r.entry.group, r.entry.name) for r in references}
    versions = table_versions(store, sorted(tables))
    canonical = {**body.model_dump(mode="json"), "format": file_format}
    return serve_cached(request, "batch", canonical, versions, compute)


def _encode_batch(
    store: FeatureStore,
    references: list[FeatureReference],
    entity_ids: list[Any],
    as_of: datetime,
    online: OnlineStore | None = None,
    file_format: str = "json",
) -> CachedResponse:
    if file_format != "json":
        result = _look_up_batch(store, references[0], entity_ids, as_of, online)
        headers = {"X-Row-Count": str(result.table.num_rows)}
        content = encode_table(result.table, file_format)
        return CachedResponse(content, FORMAT_MEDIA_TYPES[file_format], headers)

    features: dict[str, list[dict[str, Any]]] = {}
    found: dict[str, int] = {}
    not_found: dict[str, list[Any]] = {}
    for reference in references:
        result = _look_up_batch(store, reference, entity_ids, as_of, online)
        features[reference.requested] = table_records(result.table)
        found[reference.requested] = result.table.num_rows
        not_found[reference.requested] = result.missing

    now = datetime.now(UTC).isoformat()
    metadata = {
        "request_timestamp": now,
        "as_of": as_of.isoformat(),
        "feature_count": len(references),
        "entity_count": len(entity_ids),
        "found": found,
        "not_found": not_found,
    }
    body = {"features": features, "metadata": metadata, "timestamp": now}
    return CachedResponse(dumps(body), JSON_MEDIA_TYPE)


def _look_up_batch(
    store: FeatureStore,
    reference: FeatureReference,
    entity_ids: list[Any],
    as_of: datetime,
    online: OnlineStore | None,
) -> LookupResult:
    if online is not None:
        return online.lookup_entities(reference, entity_ids, as_of)
    return lookup_entities(store, reference, entity_ids, as_of)


def _online(request: Request) -> OnlineStore | None:
    online: OnlineStore | None = getattr(request.app.state, "online", None)
    return online if online is not None and online.settings.enabled else None


def _parse_as_of(value: str | float | None) -> datetime:
    if value is None:
        return datetime.now(UTC)
    try:
        return parse_timestamp(value)
    except (ValueError, TypeError, OverflowError, OSError) as error:
        raise InvalidInput(
            f"invalid timestamp {value!r} ({error}): use ISO 8601 (2016-01-01T00:00:00Z) or Unix "
            "seconds"
        ) from error


@router.get("/{group}/{name}", response_model=FeatureTableResponse, responses=TABULAR_RESPONSES)
async def read_table(
    request: Request,
    group: str,
    name: str,
    columns: Annotated[str | None, Query(description="Comma-separated columns")] = None,
    limit: Annotated[int | None, Query(ge=0, description="Rows per page")] = None,
    offset: Annotated[int, Query(ge=0, le=MAX_OFFSET, description="Rows to skip")] = 0,
    order_by: Annotated[
        str | None, Query(description="Comma-separated columns; prefix - for descending")
    ] = None,
) -> Response:
    """Return rows of one table. Other query parameters filter rows: `column=value`, or
    `column__op=value` with op one of eq, ne, lt, lte, gt, gte, in (comma-separated values),
    isnull (true/false) and contains (an element of a list column). Filters given more than
    once must all hold; columns, limit, offset and order_by may be given once."""
    settings = _settings(request)
    file_format = negotiate_format(request.headers.get("accept"))
    reject_repeated_keys(request, PAGE_PARAMETERS)
    limit = settings.default_limit if limit is None else limit
    if limit > settings.max_limit:
        raise InvalidInput(
            f"limit {limit} is more than the maximum {settings.max_limit}; page with offset, "
            "or raise SQLSTORE_MAX_LIMIT"
        )

    store = _store(request)
    canonical = page_request(group, name, request.query_params.multi_items(), limit, file_format)
    versions = table_versions(store, [(group, name)])

    def compute() -> CachedResponse:
        filter_params = [
            (key, value)
            for key, value in request.query_params.multi_items()
            if key not in PAGE_PARAMETERS
        ]
        page = read_page(
            store,
            group,
            name,
            columns=columns,
            filters=parse_filters(filter_params),
            order_by=order_by,
            limit=limit,
            offset=offset,
        )
        return _encode_page(page, group, name, limit, offset, file_format)

    return await serve_cached_async(request, PAGE_KIND, canonical, versions, compute)


def reject_repeated_keys(request: Request, keys: Collection[str] | None = None) -> None:
    """Raise InvalidInput when one of `keys` (default: any key) appears twice in the query
    string, because only one of the values would be used."""
    seen: set[str] = set()
    for key, _ in request.query_params.multi_items():
        if keys is not None and key not in keys:
            continue
        if key in seen:
            values = request.query_params.getlist(key)
            raise InvalidInput(
                f"query parameter {key!r} is given {len(values)} times ({quoted_value(values)}); "
                "give it once"
            )
        seen.add(key)


def _encode_page(
    page: Page, group: str, name: str, limit: int, offset: int, file_format: str
) -> CachedResponse:
    headers = {"X-Total-Rows": str(page.total_rows), "X-Table-Version": str(page.entry.version)}
    if file_format != "json":
        content = encode_table(page.table, file_format)
        return CachedResponse(content, FORMAT_MEDIA_TYPES[file_format], headers)

    metadata = {
        "total_rows": page.total_rows,
        "returned_rows": page.table.num_rows,
        "limit": limit,
        "offset": offset,
        "columns": page.table.column_names,
        "dtypes": {f.name: describe_type(f.type) for f in page.table.schema},
        "version": page.entry.version,
    }
    body = {
        "feature_group": group,
        "feature_name": name,
        "data": table_records(page.table),
        "metadata": metadata,
    }
    return CachedResponse(dumps(body), JSON_MEDIA_TYPE, headers)


@router.post("/{group}/{name}", response_model=WriteResponse, dependencies=[Depends(json_body)])
def write_table(request: Request, group: str, name: str, body: WriteRequest) -> Response:
    """Write records to a table: replace it (mode=overwrite, the default) or append to it.

    Every option is a field of the JSON body; a query string is rejected so that `?mode=append`
    cannot silently overwrite the table."""
    if request.query_params:
        keys = ", ".join(sorted(set(request.query_params.keys())))
        raise InvalidInput(
            f"unexpected query parameters {keys}: send mode and the other write options as "
            'fields of the JSON body, for example {"mode": "append", "records": [...]}'
        )
    settings = _settings(request)
    if len(body.records) > settings.max_records_per_write:
        raise PayloadTooLarge(
            f"{len(body.records)} records is more than the maximum "
            f"{settings.max_records_per_write} per write; split the write and use mode=append, "
            "or raise SQLSTORE_MAX_RECORDS_PER_WRITE"
        )

    entity_key = [body.entity_key] if isinstance(body.entity_key, str) else body.entity_key
    if entity_key is not None and len(set(entity_key)) != len(entity_key):
        raise InvalidInput(
            f"invalid entity_key {entity_key}: it names a column twice; give each key column once"
        )
    definition = TableDefinition(
        entity_key=entity_key,
        timestamp_column=body.timestamp_column,
        created_timestamp_column=body.created_timestamp_column,
        ttl_seconds=body.ttl_seconds,
        description=body.description,
        owner=body.owner,
        tags=body.tags,
        column_descriptions=body.column_descriptions,
    )
    result = _store(request).write(
        group,
        name,
        records_to_table(body.records),
        mode=body.mode,
        definition=definition,
        compression=body.compression,
    )
    entry = result.entry
    reclaim_table(request, group, name)
    metrics.TABLE_VERSION.labels(table=entry.reference).set(entry.version)
    response = {
        "message": f"saved {result.rows_written} rows to {entry.reference} ({body.mode})",
        "feature_group": group,
        "feature_name": name,
        "rows_saved": result.rows_written,
        "row_count": entry.row_count,
        "version": entry.version,
        "path": entry.path,
    }
    return JSONBytesResponse(response)


@router.delete("/{group}/{name}")
def delete_table(request: Request, group: str, name: str) -> Response:
    """Delete a table's Parquet file and registry entry."""
    _store(request).delete(group, name)
    reclaim_table(request, group, name)
    return JSONBytesResponse({"message": f"deleted {group}/{name}"})


@router.get("/{group}/{name}/info", response_model=StorageInfoResponse)
def table_info(request: Request, group: str, name: str) -> Response:
    """Return storage figures of one table: size, rows, columns, compression and version.
    A table whose data file is missing or damaged gets a 503, as its reads do, because the
    registry's figures no longer describe a readable file."""
    store = _store(request)
    entry = store.table(group, name)
    if data_files.problem(store, entry) is not None:
        raise TableUnavailable.of_table(entry.reference)
    return JSONBytesResponse({"storage_info": storage_info(entry)})


def storage_info(entry: RegistryEntry) -> dict[str, Any]:
    """Return the storage figures of a table from its registry entry."""
    stats = entry.storage
    size = max(stats.bytes_on_disk, 1)
    return {
        "feature_group": entry.group,
        "feature_name": entry.name,
        "path": entry.path,
        "exists": True,
        "version": entry.version,
        "row_count": entry.row_count,
        "column_count": len(entry.columns),
        "columns": [column.name for column in entry.columns],
        "file_size_bytes": stats.bytes_on_disk,
        "file_size_mb": round(stats.bytes_on_disk / 1024 / 1024, 3),
        "compression": stats.compression,
        "arrow_bytes": stats.arrow_bytes,
        "csv_bytes": stats.csv_bytes,
        "compression_ratio_vs_arrow": round(stats.arrow_bytes / size, 3),
        "compression_ratio_vs_csv": round(stats.csv_bytes / size, 3),
        "updated_at": entry.updated_at.isoformat(),
    }
