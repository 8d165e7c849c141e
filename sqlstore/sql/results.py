"""Query results as JSON rows, and as tables that CSV and Parquet writers accept.

A query can return any DuckDB type. In JSON rows, DECIMAL and HUGEINT values become numbers
written with every digit (integers when they have no fraction) and INTERVAL values ISO 8601
durations such as "P1DT2H". Datetimes, nanosecond timestamps included, become RFC 3339
strings, the time 24:00:00 included, BLOB and other binary values hexadecimal strings, and NaN
null. CSV cannot store nested values, so lists, structs, maps and unions become their JSON
text. Parquet cannot store intervals, unions or DuckDB's extension types, so those become text
as well.
"""

from __future__ import annotations

import datetime as dt
import decimal
import json
from collections.abc import Callable
from typing import Any

import orjson
import pyarrow as pa
import pyarrow.compute as pc

from sqlstore.types import describe_type
from sqlstore.values import INT64_MIN, UINT64_MAX

UNITS_PER_SECOND = {"s": 1, "ms": 1_000, "us": 1_000_000, "ns": 1_000_000_000}
SECONDS_PER_DAY = 86_400
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
        return orjson.dumps(content, default=json_default, option=orjson.OPT_NON_STR_KEYS)
    except orjson.JSONEncodeError:
        return dumps_with_fragments(content, json_default)


def dumps_with_fragments(content: Any, default: Callable[[Any], Any]) -> bytes:
    """Encode `content` with orjson after replacing what orjson rejects by JSON text: integers
    beyond 64 bits, and strings and object keys with lone surrogates, written as `\\u`
    escapes as Python's json module writes them."""
    return orjson.dumps(
        json_fragments(content, default), default=default, option=orjson.OPT_NON_STR_KEYS
    )


def json_fragments(value: Any, default: Callable[[Any], Any]) -> Any:
    """Return `value` with the integers and strings that orjson rejects turned into
    `orjson.Fragment`s of their JSON text (see `dumps_with_fragments`)."""
    value_type = type(value)
    if value_type is int and not INT64_MIN <= value <= UINT64_MAX:
        return orjson.Fragment(str(value))
    if value_type is str and not _is_utf8(value):
        return orjson.Fragment(json.dumps(value))
    if value_type is list or value_type is tuple:
        return [json_fragments(item, default) for item in value]
    if value_type is not dict:
        return value
    items = {key: json_fragments(item, default) for key, item in value.items()}
    if all(type(key) is not str or _is_utf8(key) for key in items):
        return items
    # orjson cannot write such a key, so the object is written here, its values by orjson.
    members = (
        f"{json.dumps(str(key))}:{dumps_with_fragments(item, default).decode()}"
        for key, item in items.items()
    )
    return orjson.Fragment("{" + ",".join(members) + "}")


def _is_utf8(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def json_default(value: Any) -> Any:
    """Return the JSON form of a value that orjson cannot encode itself: a decimal as the
    number with all its digits (see `decimal_number`), any other value as `json_value`."""
    if isinstance(value, decimal.Decimal):
        return decimal_number(value)
    return json_value(value)


def decimal_number(value: decimal.Decimal) -> orjson.Fragment | None:
    """Return a decimal as a JSON number with every digit, without trailing fractional zeros,
    or None (null) for NaN and infinity.

    A float would keep only about 17 significant digits of a DECIMAL(38,s), and JSON numbers
    have no limit on digits, so the text is written as it is. Clients that parse numbers as
    doubles still round it.
    """
    if not value.is_finite():
        return None
    text = format(value, "f")
    if "." in text:
        text = text.rstrip("0").removesuffix(".")
    if text == "-0":
        text = "0"
    return orjson.Fragment(text)


def json_value(value: Any) -> Any:
    """Return a JSON-encodable form of a value orjson cannot encode itself. A decimal becomes
    its exact text, which `json_default` writes as a number instead."""
    if isinstance(value, decimal.Decimal):
        return str(value)
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
    return orjson.dumps(value, default=json_default).decode()


def with_end_of_day_text(table: pa.Table, file_format: str) -> pa.Table:
    """Return `table` with each time column that contains a time of a day or more as text (see
    `end_of_day_text`)."""
    for index, field in enumerate(table.schema):
        if not pa.types.is_time(field.type):
            continue
        text = end_of_day_text(table.column(index), file_format)
        if text is not None:
            table = table.set_column(index, field.name, text)
    return table


def end_of_day_text(column: pa.ChunkedArray, file_format: str) -> pa.ChunkedArray | None:
    """Return a time column as text in the form of `file_format` ("json" or "csv") when it
    contains a time of a day or more, else None.

    DuckDB's TIME can be 24:00:00, which Arrow stores as one day of units, but Python's
    datetime.time stops at 23:59:59.999999: pyarrow converts 24:00:00 to 00:00:00, and its CSV
    writer writes "<value out of range: 86400000000>". The text writes the column's other
    values as before: as Python's isoformat for JSON ("24:00:00", "01:02:03.000500") and with
    the unit's fractional digits for CSV ("24:00:00.000000").
    NOTE: times inside lists or structs are not checked, so 24:00:00 there still becomes
    00:00:00.
    """
    units = UNITS_PER_SECOND[column.type.unit]
    integer_type = pa.int32() if column.type.bit_width == 32 else pa.int64()
    counts = column.cast(integer_type)
    latest = pc.max(counts).as_py()
    if latest is None or latest < SECONDS_PER_DAY * units:
        return None
    texts = [
        None if count is None else _time_text(count, units, file_format)
        for count in counts.to_pylist()
    ]
    return pa.chunked_array([pa.array(texts, pa.string())])


def _time_text(count: int, units: int, file_format: str) -> str:
    """Return a time of `count` units (`units` per second) as HH:MM:SS with a fraction."""
    seconds, fraction = divmod(count, units)
    minutes, second = divmod(seconds, 60)
    hours, minute = divmod(minutes, 60)
    text = f"{hours:02d}:{minute:02d}:{second:02d}"
    if file_format == "csv":
        digits = len(str(units)) - 1
        return f"{text}.{fraction:0{digits}d}" if digits else text
    # Python's time keeps microseconds, and its isoformat writes them only when not zero.
    microseconds = fraction * 1_000_000 // units
    return f"{text}.{microseconds:06d}" if microseconds else text
