"""Query results as JSON rows, and as tables that CSV and Parquet writers accept.

A query can return any DuckDB type. In JSON rows, DECIMAL and HUGEINT values become numbers
(integers when they have no fraction) and INTERVAL values ISO 8601 durations such as "P1DT2H".
Datetimes, nanosecond timestamps included, become RFC 3339 strings, BLOB and other binary
values hexadecimal strings, and NaN null. CSV cannot store nested values, so lists, structs,
maps and unions become their JSON text. Parquet cannot store intervals, unions or DuckDB's
extension types, so those become text as well.
"""

from __future__ import annotations

import datetime as dt
import decimal
import json
import math
from typing import Any

import orjson
import pyarrow as pa

from sqlstore.types import describe_type

NESTED_TYPE_CHECKS = (
    pa.types.is_list,
    pa.types.is_large_list,
    pa.types.is_fixed_size_list,
    pa.types.is_struct,
    pa.types.is_map,
    pa.types.is_union,
)


def with_unique_names(table: pa.Table) -> pa.Table:
    """Rename repeated column names to name_1, name_2 and so on, so that JSON rows and CSV
    headers keep every column. DuckDB allows `SELECT 1 AS a, 2 AS a`.

    The first column of each name keeps it, and a new name skips every name of the result, so
    that `SELECT 1 AS a, 2 AS a, 3 AS a_1` gives a, a_2 and a_1: no column takes a name that
    the query gave another.
    """
    query_names = set(table.column_names)
    used: set[str] = set()
    names = []
    for name in table.column_names:
        unique = name
        suffix = 0
        while unique in used or (suffix > 0 and unique in query_names):
            suffix += 1
            unique = f"{name}_{suffix}"
        used.add(unique)
        names.append(unique)
    if names == table.column_names:
        return table
    return table.rename_columns(names)


def column_types(table: pa.Table) -> dict[str, str]:
    """Return each column's type name, as the feature endpoints show it."""
    return {field.name: describe_type(field.type) for field in table.schema}


def encode_json(content: Any) -> bytes:
    """Encode a response body that may hold any value a query returns."""
    try:
        return orjson.dumps(content, default=json_value, option=orjson.OPT_NON_STR_KEYS)
    except orjson.JSONEncodeError:
        # orjson rejects integers beyond 64 bits (HUGEINT); the standard library writes them.
        return json.dumps(
            standard_json_values(content),
            default=json_value,
            separators=(",", ":"),
            allow_nan=False,
        ).encode()


def standard_json_values(value: Any) -> Any:
    """Return `value` with what orjson writes differently from the standard library made
    explicit: non-finite floats become null, and intervals (tuples) ISO 8601 durations."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, pa.MonthDayNano):
        return json_value(value)
    if isinstance(value, dict):
        return {key: standard_json_values(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [standard_json_values(item) for item in value]
    return value


def json_value(value: Any) -> Any:
    """Return a JSON-encodable form of a value orjson cannot encode itself."""
    if isinstance(value, decimal.Decimal):
        return int(value) if value == value.to_integral_value() else float(value)
    if isinstance(value, pa.MonthDayNano):
        return iso_duration(value.months, value.days, value.nanoseconds)
    if isinstance(value, dt.datetime | dt.date | dt.time):
        return value.isoformat()
    if isinstance(value, dt.timedelta):
        return value.total_seconds()
    if isinstance(value, bytes):
        return value.hex()
    if hasattr(value, "isoformat"):
        return value.isoformat()
    return str(value)


def iso_duration(months: int, days: int, nanoseconds: int) -> str:
    """Return an ISO 8601 duration such as P1Y2M3DT4H5M6.5S; "PT0S" for zero."""
    years, months = divmod(months, 12)
    date_part = "".join(
        f"{amount}{unit}" for amount, unit in ((years, "Y"), (months, "M"), (days, "D")) if amount
    )
    seconds_total = decimal.Decimal(nanoseconds) / decimal.Decimal(1_000_000_000)
    hours, rest = divmod(seconds_total, 3600)
    minutes, seconds = divmod(rest, 60)
    time_part = "".join(
        f"{format(amount.normalize(), 'f')}{unit}"
        for amount, unit in ((hours, "H"), (minutes, "M"), (seconds, "S"))
        if amount
    )
    if not date_part and not time_part:
        return "PT0S"
    return "P" + date_part + (f"T{time_part}" if time_part else "")


def portable_table(table: pa.Table, file_format: str) -> pa.Table:
    """Return `table` with the columns that `file_format` cannot store turned into text."""
    if file_format not in ("csv", "parquet"):
        return table

    columns = []
    for field, column in zip(table.schema, table.columns, strict=True):
        if _needs_text(field.type, file_format):
            texts = [_text_of(value) for value in column.to_pylist()]
            column = pa.chunked_array([pa.array(texts, pa.string())])
        columns.append(column)
    return pa.Table.from_arrays(columns, names=table.column_names)


def _needs_text(arrow_type: pa.DataType, file_format: str) -> bool:
    if pa.types.is_interval(arrow_type) or pa.types.is_union(arrow_type):
        return True
    if isinstance(arrow_type, pa.BaseExtensionType):
        return True
    if file_format == "csv":
        return any(check(arrow_type) for check in NESTED_TYPE_CHECKS)
    return False


def _text_of(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, pa.MonthDayNano):
        return json_value(value)
    if isinstance(value, bytes):
        return value.hex()
    if isinstance(value, str):
        return value
    return orjson.dumps(value, default=json_value).decode()
