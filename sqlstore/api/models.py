"""Request and response bodies of the REST API."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictFloat,
    StrictInt,
    StrictStr,
    field_validator,
)

from sqlstore.registry import RegistryEntry
from sqlstore.values import is_valid_unicode


class WriteRequest(BaseModel):
    """Rows to write to a feature table, and what to declare about the table."""

    model_config = ConfigDict(extra="forbid")

    # fail_fast: validation stops at the first bad item, so that a body of a million bad
    # records costs one error rather than a million (3 s and a 100 MB response).
    records: list[dict[str, Any]] = Field(
        description="Rows as JSON objects, one key per column", fail_fast=True
    )
    mode: Literal["overwrite", "append"] = "overwrite"
    entity_key: str | list[str] | None = Field(
        default=None,
        description="Key column(s); defaults to the registered key, else to `entity_id`",
    )
    timestamp_column: str | None = Field(
        default=None,
        description="Event time column; defaults to the registered one, else `event_timestamp`",
    )
    created_timestamp_column: str | None = None
    # Strict number types, because lax validation would read true as 1 and "60" as 60.
    ttl_seconds: StrictFloat | None = Field(default=None, ge=0, allow_inf_nan=False)
    description: str | None = Field(default=None, max_length=10_000)
    owner: str | None = Field(default=None, max_length=200)
    tags: list[str] | None = Field(default=None, fail_fast=True)
    column_descriptions: dict[str, str] | None = None
    compression: Literal["snappy", "zstd"] = "snappy"

    @field_validator(
        "entity_key",
        "timestamp_column",
        "created_timestamp_column",
        "description",
        "owner",
        "tags",
        "column_descriptions",
    )
    @classmethod
    def _valid_unicode(cls, value: Any) -> Any:
        """Reject text with a lone UTF-16 surrogate, which the registry file could not store."""
        if not is_valid_unicode(value):
            raise ValueError("contains a lone UTF-16 surrogate, which is not valid Unicode")
        return value


class WriteResponse(BaseModel):
    message: str
    feature_group: str
    feature_name: str
    rows_saved: int
    row_count: int
    version: int
    path: str = Field(description="Parquet file, relative to the store root")


class TableMetadata(BaseModel):
    total_rows: int = Field(description="Rows matching the filters, before pagination")
    returned_rows: int
    limit: int
    offset: int
    columns: list[str]
    dtypes: dict[str, str]
    version: int


class FeatureTableResponse(BaseModel):
    feature_group: str
    feature_name: str
    data: list[dict[str, Any]]
    metadata: TableMetadata


class TableList(BaseModel):
    count: int
    tables: list[RegistryEntry]


class StorageInfo(BaseModel):
    feature_group: str
    feature_name: str
    path: str
    exists: bool
    version: int
    row_count: int
    column_count: int
    columns: list[str]
    file_size_bytes: int
    file_size_mb: float
    compression: str
    arrow_bytes: int
    csv_bytes: int
    compression_ratio_vs_arrow: float = Field(description="Uncompressed Arrow size / file size")
    compression_ratio_vs_csv: float = Field(description="CSV size / file size")
    updated_at: str


class StorageInfoResponse(BaseModel):
    storage_info: StorageInfo


class BatchRequest(BaseModel):
    """Latest values of several feature tables for a list of entities."""

    model_config = ConfigDict(extra="forbid")

    feature_names: list[str] = Field(
        min_length=1,
        fail_fast=True,
        description="`group/name`, `group/name:col1,col2`, or a table name that is unique",
    )
    # Strict types, because lax validation would turn true into the entity id 1.
    entity_ids: list[StrictInt | StrictStr | dict[str, StrictInt | StrictStr]] | None = Field(
        default=None,
        fail_fast=True,
        description="Key values; an object of key columns for tables with a composite key",
    )
    timestamp: StrictStr | StrictFloat | None = Field(
        default=None,
        description="Return values as of this time (ISO 8601 or Unix seconds); default: now",
    )


class BatchMetadata(BaseModel):
    request_timestamp: str
    as_of: str
    feature_count: int
    entity_count: int
    found: dict[str, int]
    not_found: dict[str, list[Any]]


class BatchResponse(BaseModel):
    features: dict[str, list[dict[str, Any]]]
    metadata: BatchMetadata
    timestamp: str


class ErrorDetail(BaseModel):
    code: str
    message: str
    request_id: str
    details: list[dict[str, Any]] | None = None


class ErrorResponse(BaseModel):
    error: ErrorDetail


# Error statuses of the feature, cache and online routes, for their OpenAPI schema.
ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    status: {"model": ErrorResponse}
    for status in (400, 404, 405, 406, 409, 413, 415, 422, 503, 507)
}
