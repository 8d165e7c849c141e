"""Encoding of Arrow tables and plain data into HTTP responses."""

from __future__ import annotations

import datetime as dt
import decimal
from collections.abc import Callable
from typing import Any

import orjson
import pyarrow as pa
import pyarrow.csv as pa_csv
import pyarrow.ipc as pa_ipc
import pyarrow.parquet as pq
from starlette.responses import Response

from sqlstore.errors import NotAcceptable
from sqlstore.sql.results import (
    check_representable_as_text,
    decimal_number,
    dumps_with_fragments,
    json_text_column,
    unconvertible_error,
    unrepresentable,
    with_end_of_day_text,
)

JSON_MEDIA_TYPE = "application/json"
TABULAR_MEDIA_TYPES = {
    "application/json": "json",
    "text/csv": "csv",
    "application/vnd.apache.parquet": "parquet",
    "application/x-parquet": "parquet",
    "application/vnd.apache.arrow.stream": "arrow",
}
FORMAT_MEDIA_TYPES = {
    "json": "application/json",
    "csv": "text/csv; charset=utf-8",
    "parquet": "application/vnd.apache.parquet",
    "arrow": "application/vnd.apache.arrow.stream",
}
# The OpenAPI `responses` of a route that returns a table in any of FORMAT_MEDIA_TYPES.
TABULAR_RESPONSES = {
    200: {
        "content": {media_type: {} for media_type in FORMAT_MEDIA_TYPES.values()},
        "description": "JSON by default; the Accept header selects CSV, Parquet or Arrow",
    }
}


def _default(value: Any) -> Any:
    if isinstance(value, dt.datetime):
        # A subclass that orjson does not encode: pyarrow returns pandas Timestamps for
        # nanosecond columns, and their isoformat keeps the nanoseconds.
        return value.isoformat()
    if isinstance(value, decimal.Decimal):
        return decimal_number(value)
    if isinstance(value, dt.timedelta):
        return value.total_seconds()
    if isinstance(value, bytes):
        return value.hex()
    raise TypeError(f"cannot encode {type(value).__name__} as JSON")


def dumps(content: Any) -> bytes:
    """Encode `content` as JSON; NaN and infinity become null, datetimes RFC 3339 strings and
    decimals numbers with every digit."""
    try:
        return orjson.dumps(content, default=_default, option=orjson.OPT_NON_STR_KEYS)
    except orjson.JSONEncodeError:
        # orjson rejects integers beyond 64 bits and strings with lone surrogates, and a
        # request can carry both into a response.
        return dumps_with_fragments(content, _default)


class JSONBytesResponse(Response):
    """A JSON response encoded with orjson, without FastAPI's per-value encoder."""

    media_type = JSON_MEDIA_TYPE

    def render(self, content: Any) -> bytes:
        return dumps(content)


def table_records(table: pa.Table, file_format: str = "json") -> list[dict[str, Any]]:
    """Return the rows of `table` as dictionaries, with times of 24:00:00 as text (see
    `with_end_of_day_text`). Raises UnrepresentableValue, naming the column, for a value that
    Python cannot represent, such as a date past year 9999 (see `unconvertible_error`). Its
    message names `file_format`, the output that the rows are for."""
    table = with_end_of_day_text(table, "json")
    try:
        return table.to_pylist()
    except (OverflowError, ValueError, pa.ArrowException) as error:
        name, column = _first_unconvertible_column(table)
        raise unconvertible_error(column, name, file_format, error) from error


def _first_unconvertible_column(table: pa.Table) -> tuple[str, pa.ChunkedArray]:
    for name, column in zip(table.column_names, table.columns, strict=True):
        try:
            column.to_pylist()
        except (OverflowError, ValueError, pa.ArrowException):
            return name, column
    return "?", table.column(0)


def negotiate_format(accept: str | None) -> str:
    """Pick the tabular format from an Accept header: json (default), csv, parquet or arrow.

    Media types are tried by falling quality (`q`), in header order among equal ones, and a
    type with q=0 is never chosen.
    """
    if not accept:
        return "json"
    for media_type in _by_quality(accept):
        if media_type in TABULAR_MEDIA_TYPES:
            return TABULAR_MEDIA_TYPES[media_type]
        if media_type in ("*/*", "application/*"):
            return "json"
        if media_type == "text/*":
            return "csv"
    supported = ", ".join(TABULAR_MEDIA_TYPES)
    raise NotAcceptable(f"unsupported Accept header {accept!r}: use one of {supported}")


def _by_quality(accept: str) -> list[str]:
    """Return the media types of an Accept header with q > 0, highest quality first."""
    weighted = []
    for position, part in enumerate(accept.split(",")):
        media_type, *parameters = (piece.strip() for piece in part.split(";"))
        quality = 1.0
        for parameter in parameters:
            name, _, value = parameter.partition("=")
            if name.strip().lower() == "q":
                try:
                    quality = float(value)
                except ValueError:
                    quality = 0.0
        if quality > 0:
            weighted.append((-quality, position, media_type.lower()))
    return [media_type for _, _, media_type in sorted(weighted)]


def encode_table(table: pa.Table, file_format: str) -> bytes:
    """Encode `table` as CSV, Parquet or an Arrow IPC stream. Raises UnrepresentableValue,
    naming the column, when the CSV or Parquet writer rejects a column's type."""
    sink = pa.BufferOutputStream()
    if file_format == "csv":
        table = csv_ready_table(table)
        _write_checked(table, file_format, lambda part, out: pa_csv.write_csv(part, out), sink)
    elif file_format == "parquet":
        _write_checked(table, file_format, lambda part, out: pq.write_table(part, out), sink)
    elif file_format == "arrow":
        with pa_ipc.new_stream(sink, table.schema) as writer:
            writer.write_table(table)
    else:
        raise ValueError(f"unknown format {file_format!r}")
    return sink.getvalue().to_pybytes()


def _write_checked(
    table: pa.Table,
    file_format: str,
    write: Callable[[pa.Table, pa.BufferOutputStream], None],
    sink: pa.BufferOutputStream,
) -> None:
    """Call `write(table, sink)`. When pyarrow rejects a type, find the column by writing each
    one alone, and raise UnrepresentableValue for it. An error that no column alone causes is
    raised as it is."""
    try:
        write(table, sink)
    except (pa.ArrowNotImplementedError, pa.ArrowInvalid) as error:
        for name, column in zip(table.column_names, table.columns, strict=True):
            try:
                write(pa.table({name: column}), pa.BufferOutputStream())
            except (pa.ArrowNotImplementedError, pa.ArrowInvalid):
                problem = f"values that the writer rejects ({error})"
                carriers = ("json", "arrow")
                raise unrepresentable(name, column.type, problem, file_format, carriers) from error
        raise


def csv_ready_table(table: pa.Table) -> pa.Table:
    """Replace the columns that CSV cannot hold: nested values (lists, structs, maps) by their
    JSON text (see `json_text_column`), binary values, which need not be UTF-8, by their hex
    digits as in JSON, and times of 24:00:00 by text (see `with_end_of_day_text`). Raises
    UnrepresentableValue for a date or timestamp that CSV cannot show (see
    `check_representable_as_text`)."""
    table = with_end_of_day_text(table, "csv")
    columns = []
    for name, column in zip(table.column_names, table.columns, strict=True):
        if pa.types.is_nested(column.type):
            column = json_text_column(column, name)
        elif _is_binary(column.type):
            texts = [None if v is None else v.hex() for v in column.to_pylist()]
            column = pa.chunked_array([pa.array(texts, pa.string())])
        else:
            check_representable_as_text(column, name, "csv")
        columns.append(column)
    return pa.Table.from_arrays(columns, names=table.column_names)


def _is_binary(arrow_type: pa.DataType) -> bool:
    return (
        pa.types.is_binary(arrow_type)
        or pa.types.is_large_binary(arrow_type)
        or pa.types.is_fixed_size_binary(arrow_type)
        or pa.types.is_binary_view(arrow_type)
    )
