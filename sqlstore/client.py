"""Python client for the sqlstore REST API."""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping, Sequence
from typing import Any
from urllib.parse import quote

import httpx
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.ipc as pa_ipc

logger = logging.getLogger(__name__)

DEFAULT_BASE_URL = "http://127.0.0.1:8001"
DEFAULT_TIMEOUT_SECONDS = 30.0
TOKEN_ENVIRONMENT_VARIABLE = "SQLSTORE_TOKEN"
ARROW_STREAM_MEDIA_TYPE = "application/vnd.apache.arrow.stream"
# DuckDB stores infinity and -infinity of a timestamp as the largest 64-bit value and its
# negation.
INFINITE_TIMESTAMP = 2**63 - 1


class FeatureStoreError(Exception):
    """The server returned an error, could not be reached, or a name was invalid.

    `status_code` is None when no response arrived. `code` and `request_id` come from the
    server's error body when it sent one.
    """

    def __init__(
        self,
        message: str,
        status_code: int | None = None,
        code: str | None = None,
        request_id: str | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.status_code = status_code
        self.code = code
        self.request_id = request_id

    def __str__(self) -> str:
        if self.status_code is None:
            return self.message
        return f"{self.status_code} {self.code or 'error'}: {self.message}"


class FeatureStoreClient:
    """Client of one sqlstore server. Use it as a context manager, or call `close()`.

    `token` is sent as `Authorization: Bearer <token>`; it defaults to $SQLSTORE_TOKEN, and an
    empty value sends no token.
    """

    def __init__(
        self,
        base_url: str = DEFAULT_BASE_URL,
        timeout: float = DEFAULT_TIMEOUT_SECONDS,
        headers: Mapping[str, str] | None = None,
        transport: httpx.BaseTransport | None = None,
        token: str | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        all_headers = dict(headers or {})
        token = os.environ.get(TOKEN_ENVIRONMENT_VARIABLE) if token is None else token
        if token:
            all_headers["Authorization"] = f"Bearer {token}"
        self._http = httpx.Client(
            base_url=self.base_url, timeout=timeout, headers=all_headers, transport=transport
        )

    def __enter__(self) -> FeatureStoreClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    def health(self) -> dict[str, Any]:
        """Return the server's health report."""
        return self._request("GET", "/health")

    def list_features(self) -> list[dict[str, Any]]:
        """Return the registry entry of every feature table."""
        return self._request("GET", "/features")["tables"]

    def get_feature(
        self,
        feature_group: str,
        feature_name: str,
        columns: Sequence[str] | None = None,
        limit: int | None = None,
        offset: int = 0,
        filters: Mapping[str, Any] | None = None,
        order_by: str | None = None,
        as_frame: bool = False,
    ) -> dict[str, Any] | pd.DataFrame:
        """Return one page of a table: the response body, or its rows as a DataFrame with the
        table's column types (fetched as Arrow).

        `filters` maps `column` or `column__op` (eq, ne, lt, lte, gt, gte, in, isnull,
        contains) to a value; a list value for `__in` is sent comma-separated.
        """
        params: dict[str, Any] = {"offset": offset}
        if columns:
            params["columns"] = ",".join(columns)
        if limit is not None:
            params["limit"] = limit
        if order_by:
            params["order_by"] = order_by
        for key, value in (filters or {}).items():
            params[key] = ",".join(map(str, value)) if isinstance(value, list | tuple) else value

        path = _table_path(feature_group, feature_name)
        if as_frame:
            return self._arrow_frame("GET", path, params=params)
        return self._request("GET", path, params=params)

    def save_feature(
        self,
        feature_group: str,
        feature_name: str,
        data: Sequence[Mapping[str, Any]] | pd.DataFrame,
        mode: str = "overwrite",
        entity_key: str | Sequence[str] | None = None,
        timestamp_column: str | None = None,
        description: str | None = None,
        **options: Any,
    ) -> dict[str, Any]:
        """Write records (or a DataFrame) to a table; `mode` is overwrite or append.

        Other keyword arguments (created_timestamp_column, ttl_seconds, owner, tags,
        column_descriptions, compression) are sent as given.
        """
        records = _records(data)
        payload: dict[str, Any] = {"records": records, "mode": mode, **options}
        if entity_key is not None:
            payload["entity_key"] = entity_key if isinstance(entity_key, str) else list(entity_key)
        if timestamp_column is not None:
            payload["timestamp_column"] = timestamp_column
        if description is not None:
            payload["description"] = description
        return self._request("POST", _table_path(feature_group, feature_name), json=payload)

    def get_batch_features(
        self,
        feature_names: Sequence[str],
        entity_ids: Sequence[Any] | None = None,
        timestamp: str | float | None = None,
        as_frame: bool = False,
    ) -> dict[str, Any] | dict[str, pd.DataFrame]:
        """Return the latest row per entity of each feature table, as of `timestamp`.

        With `as_frame`, return one DataFrame per requested feature name instead of the body.
        """
        payload = {
            "feature_names": list(feature_names),
            "entity_ids": None if entity_ids is None else list(entity_ids),
            "timestamp": timestamp,
        }
        body = self._request("POST", "/features/batch", json=payload)
        if as_frame:
            return {name: _frame(rows) for name, rows in body["features"].items()}
        return body

    def get_online_features(
        self,
        features: Sequence[str],
        entities: Mapping[str, Sequence[Any]],
        as_frame: bool = False,
    ) -> dict[str, Any] | pd.DataFrame:
        """Return the latest value of each feature for each entity, from the online views.

        `entities` maps each key column to its values, one per entity, and `features` are
        `group/name:column` references. Return the body (`metadata.feature_names` and one
        result per name with `values`, `statuses` and `event_timestamps`), or with `as_frame`
        a DataFrame of the values with one column per feature name.
        """
        payload = {
            "entities": {column: list(values) for column, values in entities.items()},
            "features": list(features),
        }
        body = self._request("POST", "/get-online-features", json=payload)
        if not as_frame:
            return body
        names = body["metadata"]["feature_names"]
        return pd.DataFrame(
            {name: result["values"] for name, result in zip(names, body["results"], strict=True)}
        )

    def get_feature_info(self, feature_group: str, feature_name: str) -> dict[str, Any]:
        """Return the storage information of one table."""
        return self._request("GET", _table_path(feature_group, feature_name) + "/info")

    def delete_feature(self, feature_group: str, feature_name: str) -> dict[str, Any]:
        """Delete a table."""
        return self._request("DELETE", _table_path(feature_group, feature_name))

    def sql(
        self,
        sql: str,
        params: Mapping[str, Any] | None = None,
        limit: int | None = None,
        as_frame: bool = False,
    ) -> dict[str, Any] | pd.DataFrame:
        """Run one read-only query over the feature views (`group.name`).

        `params` contains the values of its `$name` parameters. Return the response body, or its
        rows as a DataFrame with the result's column types (fetched as Arrow).
        `metadata.truncated` in the body is true when rows were cut."""
        payload: dict[str, Any] = {"sql": sql, "params": dict(params or {})}
        if limit is not None:
            payload["limit"] = limit
        if as_frame:
            return self._arrow_frame("POST", "/sql", json=payload)
        return self._request("POST", "/sql", json=payload)

    def list_queries(self) -> list[dict[str, Any]]:
        """Return the named queries with their titles and parameters."""
        return self._request("GET", "/queries")["queries"]

    def run_query(
        self,
        name: str,
        params: Mapping[str, Any] | None = None,
        limit: int | None = None,
        as_frame: bool = False,
    ) -> dict[str, Any] | pd.DataFrame:
        """Run the named query `name`; parameters left out take their defaults. Return the
        response body, or its rows as a DataFrame."""
        payload: dict[str, Any] = {"params": dict(params or {})}
        if limit is not None:
            payload["limit"] = limit
        path = f"/queries/{_segment(name)}"
        if as_frame:
            return self._arrow_frame("POST", path, json=payload)
        return self._request("POST", path, json=payload)

    def fetch_arrow(
        self, method: str, path: str, json: Mapping[str, Any] | None = None
    ) -> tuple[pa.Table, bool]:
        """Request a tabular endpoint (`/sql`, `/queries/{name}`) as an Arrow IPC stream, which
        keeps the column types. Return the table and whether the server cut rows off."""
        headers = {"Accept": ARROW_STREAM_MEDIA_TYPE}
        response = self._send(method, path, json=json, headers=headers)
        table = pa_ipc.open_stream(response.content).read_all()
        return table, response.headers.get("X-Truncated") == "true"

    def _arrow_frame(self, method: str, path: str, **kwargs: Any) -> pd.DataFrame:
        """Request a tabular endpoint as an Arrow IPC stream and return it as a DataFrame, so
        that unsigned and 32-bit numbers, dates and times keep their types, which JSON loses."""
        response = self._send(method, path, headers={"Accept": ARROW_STREAM_MEDIA_TYPE}, **kwargs)
        table = pa_ipc.open_stream(response.content).read_all()
        try:
            _check_finite_timestamps(table)
            return table.to_pandas()
        except (ValueError, OverflowError, pa.ArrowException) as error:
            # Values that pandas cannot hold, such as TIME 24:00, DuckDB's infinite dates or a
            # union column, which JSON rejects on the server with a 400.
            raise FeatureStoreError(
                f"{method} {path}: the result cannot become a DataFrame: {error}; cast the "
                "column to text in SQL (CAST(column AS VARCHAR)), or call with as_frame=False"
            ) from error

    def _request(self, method: str, path: str, **kwargs: Any) -> Any:
        return self._send(method, path, **kwargs).json()

    def _send(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        try:
            response = self._http.request(method, path, **kwargs)
        except httpx.TimeoutException as error:
            raise FeatureStoreError(f"{method} {path} timed out: {error}") from error
        except httpx.TransportError as error:
            raise FeatureStoreError(
                f"could not reach {self.base_url} for {method} {path}: {error}"
            ) from error

        if response.is_success:
            return response
        raise _error_from_response(response)


def _table_path(group: str, name: str) -> str:
    return f"/features/{_segment(group)}/{_segment(name)}"


def _segment(value: str) -> str:
    """Return `value` percent-encoded as one URL path segment, so that a dot segment or another
    reserved character reaches the server as part of the name, not as another route.

    Raises FeatureStoreError for a slash, which the server decodes before routing.
    """
    if "/" in str(value):
        raise FeatureStoreError(
            f"invalid name {value!r}: group, table and query names cannot contain '/'"
        )
    encoded = quote(str(value), safe="")
    if encoded and set(encoded) <= {"."}:
        return encoded.replace(".", "%2E")
    return encoded


def _error_from_response(response: httpx.Response) -> FeatureStoreError:
    try:
        error = response.json()["error"]
        return FeatureStoreError(
            error["message"],
            status_code=response.status_code,
            code=error.get("code"),
            request_id=error.get("request_id"),
        )
    except (ValueError, KeyError, TypeError):
        return FeatureStoreError(response.text[:500], status_code=response.status_code)


def _check_finite_timestamps(table: pa.Table) -> None:
    """Raise ValueError for a timestamp column that contains DuckDB's infinity, which is the
    largest (or smallest) 64-bit value and would become a real date in pandas.

    NOTE: only top-level columns are checked; infinity inside a list or struct is not."""
    for name, column in zip(table.column_names, table.columns, strict=True):
        if not pa.types.is_timestamp(column.type) or column.null_count == len(column):
            continue
        values = column.cast(pa.int64())
        if (
            pc.max(values).as_py() == INFINITE_TIMESTAMP
            or pc.min(values).as_py() == -INFINITE_TIMESTAMP
        ):
            raise ValueError(f"column {name!r} contains an infinite timestamp")


def _records(data: Sequence[Mapping[str, Any]] | pd.DataFrame) -> list[dict[str, Any]]:
    if isinstance(data, pd.DataFrame):
        # to_json turns NaN into null, which the server reads back. Timestamps become ISO 8601
        # text first, because to_json cuts them to microseconds even with date_unit="ns".
        frame = data.copy(deep=False)
        for column in frame.columns:
            if pd.api.types.is_datetime64_any_dtype(frame[column]):
                frame[column] = frame[column].map(_iso_text).astype(object)
        return json.loads(frame.to_json(orient="records", date_format="iso", date_unit="us"))
    return [dict(record) for record in data]


def _iso_text(moment: pd.Timestamp) -> str | None:
    return None if pd.isna(moment) else moment.isoformat()


def _frame(
    rows: list[dict[str, Any]],
    columns: list[str] | None = None,
    dtypes: Mapping[str, str] | None = None,
) -> pd.DataFrame:
    """Build a DataFrame, parsing timestamp columns: those `dtypes` names as timestamps, or
    without `dtypes`, string columns whose first value is an ISO 8601 timestamp."""
    frame = pd.DataFrame.from_records(rows, columns=columns)
    for column in frame.columns:
        if dtypes is not None:
            is_timestamp = dtypes.get(column, "").startswith("timestamp")
        else:
            first = frame[column].dropna()
            is_timestamp = pd.api.types.is_string_dtype(frame[column]) and (
                not first.empty and _looks_like_timestamp(first.iloc[0])
            )
        if is_timestamp:
            frame[column] = pd.to_datetime(frame[column], utc=True, format="ISO8601")
    return frame


def _looks_like_timestamp(value: Any) -> bool:
    return (
        isinstance(value, str)
        and len(value) >= 19
        and value[4] == "-"
        and value[10] == "T"
        and value[13] == ":"
    )
