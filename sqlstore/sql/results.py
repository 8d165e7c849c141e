"""Query results as JSON rows, and as tables that CSV and Parquet writers accept.

A query can return any DuckDB type. In JSON rows, DECIMAL and HUGEINT values become numbers
written with every digit (integers when they have no fraction) and INTERVAL values ISO 8601
durations such as "P1DT2H". Datetimes, nanosecond timestamps included, become RFC 3339
strings, the time 24:00:00 included, BLOB and other binary values hexadecimal strings, and NaN
null. A date or timestamp outside the years 1 to 9999, DuckDB's infinity included, cannot be
written as JSON or CSV text, so those formats reject it and name Parquet and Arrow, which store
it. CSV cannot store nested values, so lists, structs, maps and unions become their JSON text.
Parquet cannot store intervals, unions, structs without fields or DuckDB's extension types, so
those become text as well, at any depth.
"""

from __future__ import annotations

import datetime as dt
import decimal
import functools
import json
from collections.abc import Callable, Iterator
from typing import Any

import orjson
import pyarrow as pa
import pyarrow.compute as pc

from sqlstore.errors import UnrepresentableValue
from sqlstore.identifiers import quote_identifier
from sqlstore.types import describe_type
from sqlstore.values import INT64_MIN, UINT64_MAX

UNITS_PER_SECOND = {"s": 1, "ms": 1_000, "us": 1_000_000, "ns": 1_000_000_000}
SECONDS_PER_DAY = 86_400
# Names of the output formats in error messages; "table" is the command line's table.
FORMAT_NAMES = {
    "json": "JSON",
    "csv": "CSV",
    "parquet": "Parquet",
    "arrow": "Arrow IPC",
    "table": "table",
}
# The formats that store the dates and timestamps that JSON and CSV text cannot show.
TEXT_CARRIERS = ("parquet", "arrow")
# DuckDB's infinity as its Arrow export stores it: the largest value of the storage integer,
# for dates in days and for timestamps in any unit. -infinity is the same value negated.
INFINITE_DAYS = 2**31 - 1
INFINITE_TIMESTAMP = 2**63 - 1
# Python's date range, 0001-01-01 to 9999-12-31, in days since 1970-01-01.
FIRST_PYTHON_DAY = (dt.date.min - dt.date(1970, 1, 1)).days
LAST_PYTHON_DAY = (dt.date.max - dt.date(1970, 1, 1)).days


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
    """Return `table` with the values that `file_format` cannot store converted.

    For CSV, nested columns become their JSON text (see `json_text_column`), and interval and
    extension-type columns become text. For Parquet, intervals, unions and extension types
    become text at any depth, as JSON rows write them. So do structs without fields, which
    Parquet cannot store: `{}` becomes "{}". A map with keys of the null type (`MAP {}`, which
    is always empty) gets text keys, and timestamps in seconds become milliseconds (see
    `_seconds_as_milliseconds`). Raises UnrepresentableValue when a value cannot be converted.
    """
    if file_format not in ("csv", "parquet"):
        return table

    columns = []
    for field, column in zip(table.schema, table.columns, strict=True):
        if file_format == "parquet" and _type_contains(field.type, _parquet_cannot_store):
            column = _converted(column, field.name, file_format, _parquet_replacement)
        elif file_format == "csv" and pa.types.is_nested(field.type):
            column = json_text_column(column, field.name)
        elif file_format == "csv" and _is_textual(field.type):
            column = _converted(column, field.name, file_format, _text_array)
        columns.append(column)
    return pa.Table.from_arrays(columns, names=table.column_names)


def _converted(
    column: pa.ChunkedArray,
    name: str,
    file_format: str,
    replacement: Callable[[pa.Array], pa.Array | None],
) -> pa.ChunkedArray:
    """Return `column` with `replacement` applied at every depth (see `replace_arrays`), or
    raise UnrepresentableValue naming the column when Python cannot convert a value."""
    try:
        return replace_in_column(column, replacement)
    except (OverflowError, ValueError) as error:
        problem = f"values that cannot be converted ({error})"
        raise unrepresentable(name, column.type, problem, file_format, ("arrow",)) from error


def _is_textual(arrow_type: pa.DataType) -> bool:
    return pa.types.is_interval(arrow_type) or isinstance(arrow_type, pa.BaseExtensionType)


def _parquet_cannot_store(arrow_type: pa.DataType) -> bool:
    if _is_textual(arrow_type) or pa.types.is_union(arrow_type):
        return True
    if pa.types.is_struct(arrow_type) and arrow_type.num_fields == 0:
        return True
    if pa.types.is_map(arrow_type) and pa.types.is_null(arrow_type.key_type):
        return True
    return pa.types.is_timestamp(arrow_type) and arrow_type.unit == "s"


def _parquet_replacement(array: pa.Array) -> pa.Array | None:
    """Return the array that Parquet stores in place of `array`, or None to keep it (and look
    inside it)."""
    arrow_type = array.type
    if _is_textual(arrow_type) or pa.types.is_union(arrow_type):
        return _text_array(array)
    if pa.types.is_struct(arrow_type) and arrow_type.num_fields == 0:
        return _text_array(array)
    if pa.types.is_timestamp(arrow_type) and arrow_type.unit == "s":
        return _seconds_as_milliseconds(array)
    if pa.types.is_map(arrow_type) and pa.types.is_null(arrow_type.key_type):
        # Map keys must not be null, so Parquet cannot write keys of the null type. Such a map
        # is always empty, so text keys change no value.
        keys, items = _child_arrays(array)
        items = replace_arrays(items, _parquet_replacement)
        return _with_children(array, [keys.cast(pa.string()), items])
    return None


def _text_array(array: pa.Array) -> pa.Array:
    return pa.array([_text_of(value) for value in array.to_pylist()], pa.string())


def _seconds_as_milliseconds(array: pa.Array) -> pa.Array:
    """Return a timestamp array in seconds as milliseconds, which Parquet stores.

    pyarrow's Parquet writer converts seconds itself, but fails with an overflow on DuckDB's
    infinity (the largest 64-bit value), so here infinity and -infinity stay the largest and
    the negated largest value, which DuckDB reads back as infinity.
    """
    counts = array.cast(pa.int64())
    infinite = pc.equal(pc.abs(counts), INFINITE_TIMESTAMP)
    milliseconds = pc.if_else(infinite, counts, pc.multiply(counts, 1_000))
    return milliseconds.cast(pa.timestamp("ms", array.type.tz))


def _text_of(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, pa.MonthDayNano):
        return json_value(value)
    if isinstance(value, bytes):
        return value.hex()
    if isinstance(value, str):
        return value
    return encode_json(value).decode()


def json_text_column(column: pa.ChunkedArray, name: str) -> pa.ChunkedArray:
    """Return a column of nested values (lists, structs, maps and unions) as their JSON text,
    which is how CSV writes them. The values are written as JSON rows write them, times of
    24:00:00 included; a union's value that is a string is written without quotes.

    Raises UnrepresentableValue for a value that Python cannot represent, such as a date or
    timestamp that JSON cannot show (see `unconvertible_error`).
    """
    column = nested_end_of_day_text(column) or column
    values = _python_values(column, name, "csv")
    return pa.chunked_array([pa.array([_text_of(value) for value in values], pa.string())])


def _python_values(column: pa.ChunkedArray, name: str, file_format: str) -> list[Any]:
    """Return the values of `column` as Python objects, or raise UnrepresentableValue naming
    the column when pyarrow cannot convert one."""
    try:
        return column.to_pylist()
    except (OverflowError, ValueError, pa.ArrowException) as error:
        raise unconvertible_error(column, name, file_format, error) from error


def unconvertible_error(
    column: pa.ChunkedArray, name: str, file_format: str, error: Exception
) -> UnrepresentableValue:
    """Return the error for a column whose values pyarrow failed to convert to Python objects
    with `error`: the date or timestamp that `check_representable_as_text` finds, else
    pyarrow's message.

    pyarrow raises for every date and timestamp outside Python's range, so the check runs only
    after a failure and costs nothing when the values convert.
    """
    try:
        check_representable_as_text(column, name, file_format)
    except UnrepresentableValue as found:
        return found
    problem = f"values that cannot be converted ({error})"
    return unrepresentable(name, column.type, problem, file_format, TEXT_CARRIERS)


def check_representable_as_text(column: pa.ChunkedArray, name: str, file_format: str) -> None:
    """Raise UnrepresentableValue when a date or timestamp in `column`, at any depth, is one
    that JSON and CSV text cannot show (see `temporal_problem`).

    The same values are rejected in both formats and at every depth. pyarrow 26's CSV writer
    formats a top-level date of year 10000 correctly, but it writes infinity as "<value out of
    range: N>" and a zoned timestamp past year 32767 with a wrong year, so CSV keeps JSON's
    range rather than depend on the writer's.
    """
    if not _type_contains(column.type, _is_date_or_timestamp):
        return
    for chunk in column.chunks:
        for array in _nested_arrays(chunk):
            problem = temporal_problem(array)
            if problem is not None:
                raise unrepresentable(name, column.type, problem, file_format, TEXT_CARRIERS)


def temporal_problem(array: pa.Array) -> str | None:
    """Return what in a date or timestamp array JSON and CSV text cannot show: "infinity",
    "-infinity", or a date outside the years 1 to 9999, Python's datetime range, through
    which the values are written. Return None when there is none or `array` has another type.

    NOTE: DuckDB's infinity of TIMESTAMP_NS is the largest 64-bit value, which is also
    pandas' latest Timestamp, 2262-04-11T23:47:16.854775807, so nanosecond timestamps are
    written as that date instead.
    """
    bounds = _python_bounds(array.type)
    if bounds is None:
        return None

    first, last, infinite = bounds
    # A scalar's `value` is its storage integer, which as_py() would convert and fail on.
    extremes = pc.min_max(array)
    low, high = extremes["min"].value, extremes["max"].value
    if low is None:
        return None
    if high == infinite:
        return "infinity"
    if low == -infinite:
        return "-infinity"
    if low < first or high > last:
        return "a date outside the years 1 to 9999"
    return None


def _python_bounds(arrow_type: pa.DataType) -> tuple[int, int, int | None] | None:
    """Return the first and last value of Python's datetime range in the storage integers of
    a date or timestamp type, and the value that DuckDB's infinity has in it."""
    if pa.types.is_date32(arrow_type):
        return FIRST_PYTHON_DAY, LAST_PYTHON_DAY, INFINITE_DAYS
    if pa.types.is_date64(arrow_type):
        units = UNITS_PER_SECOND["ms"]
    elif pa.types.is_timestamp(arrow_type) and arrow_type.unit != "ns":
        units = UNITS_PER_SECOND[arrow_type.unit]
    else:
        return None
    first = FIRST_PYTHON_DAY * SECONDS_PER_DAY * units
    last = (LAST_PYTHON_DAY + 1) * SECONDS_PER_DAY * units - 1
    return first, last, INFINITE_TIMESTAMP


def _is_date_or_timestamp(arrow_type: pa.DataType) -> bool:
    return pa.types.is_date(arrow_type) or pa.types.is_timestamp(arrow_type)


def unrepresentable(
    name: str,
    arrow_type: pa.DataType,
    problem: str,
    file_format: str,
    carriers: tuple[str, ...],
) -> UnrepresentableValue:
    """Return the error for a column `name` that contains `problem`, which `file_format`
    cannot represent but the formats in `carriers` can. Its advice is for HTTP clients."""
    subject = (
        f"column {name!r} ({describe_type(arrow_type)}) contains {problem}, which the "
        f"{FORMAT_NAMES[file_format]} output cannot represent"
    )
    formats = " or ".join(FORMAT_NAMES[carrier] for carrier in carriers)
    advice = (
        f"request {formats} with the Accept header, or cast the column to text in SQL, as "
        f"CAST({quote_identifier(name)} AS VARCHAR)"
    )
    return UnrepresentableValue(name, subject, advice, carriers)


def with_end_of_day_text(table: pa.Table, file_format: str) -> pa.Table:
    """Return `table` with each time column that contains a time of a day or more as text (see
    `end_of_day_text`), and the times inside lists, structs and maps of such a column as the
    text that JSON rows write (see `nested_end_of_day_text`)."""
    for index, field in enumerate(table.schema):
        if pa.types.is_time(field.type):
            text = end_of_day_text(table.column(index), file_format)
        elif _type_contains(field.type, pa.types.is_time):
            text = nested_end_of_day_text(table.column(index))
        else:
            continue
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
    """
    if not any(_reaches_end_of_day(chunk) for chunk in column.chunks):
        return None
    return pa.chunked_array([_time_texts(chunk, file_format) for chunk in column.chunks])


def nested_end_of_day_text(column: pa.ChunkedArray) -> pa.ChunkedArray | None:
    """Return a column of lists, structs or maps with the times inside as the text that JSON
    rows write when one of them is a day or more (see `end_of_day_text`), else None.

    Every time array inside the column then becomes text, so that the column keeps one type.
    NOTE: times inside a union are not checked, so 24:00:00 there still becomes 00:00:00.
    """
    if not _type_contains(column.type, pa.types.is_time):
        return None
    late = any(
        pa.types.is_time(array.type) and _reaches_end_of_day(array)
        for chunk in column.chunks
        for array in _nested_arrays(chunk)
    )
    if not late:
        return None
    return replace_in_column(column, _time_as_json_text)


def _time_as_json_text(array: pa.Array) -> pa.Array | None:
    return _time_texts(array, "json") if pa.types.is_time(array.type) else None


def _reaches_end_of_day(array: pa.Array) -> bool:
    """Return whether a time array contains a time of a day (24:00:00) or more."""
    latest = pc.max(_time_counts(array)).as_py()
    return latest is not None and latest >= SECONDS_PER_DAY * UNITS_PER_SECOND[array.type.unit]


def _time_counts(array: pa.Array) -> pa.Array:
    return array.cast(pa.int32() if array.type.bit_width == 32 else pa.int64())


def _time_texts(array: pa.Array, file_format: str) -> pa.Array:
    units = UNITS_PER_SECOND[array.type.unit]
    texts = [
        None if count is None else _time_text(count, units, file_format)
        for count in _time_counts(array).to_pylist()
    ]
    return pa.array(texts, pa.string())


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


def replace_in_column(
    column: pa.ChunkedArray, replacement: Callable[[pa.Array], pa.Array | None]
) -> pa.ChunkedArray:
    """Apply `replace_arrays` to each chunk of `column`. `replacement` must decide by type
    alone, so that every chunk gets the same type."""
    chunks = column.chunks or [pa.nulls(0, column.type)]
    return pa.chunked_array([replace_arrays(chunk, replacement) for chunk in chunks])


def replace_arrays(array: pa.Array, replacement: Callable[[pa.Array], pa.Array | None]) -> pa.Array:
    """Return `array` with each array of values inside it, `array` itself first, replaced by
    what `replacement` returns for it. None keeps an array and looks inside it: the lists,
    structs and maps around a replaced array are rebuilt around it. Union members are not
    looked into."""
    replaced = replacement(array)
    if replaced is not None:
        return replaced
    children = _child_arrays(array)
    new_children = [replace_arrays(child, replacement) for child in children]
    if all(new is old for new, old in zip(new_children, children, strict=True)):
        return array
    return _with_children(array, new_children)


def _nested_arrays(array: pa.Array) -> Iterator[pa.Array]:
    """Yield `array` and every array of values inside it (see `_child_arrays`)."""
    yield array
    for child in _child_arrays(array):
        yield from _nested_arrays(child)


def _child_arrays(array: pa.Array) -> list[pa.Array]:
    """Return the arrays of values of a list, map or struct array, cut to the values that the
    rows of `array` contain: the values of a list, the keys and values of a map, the fields of
    a struct. Other arrays, unions included, have none."""
    arrow_type = array.type
    if pa.types.is_struct(arrow_type):
        return _struct_fields(array)
    if pa.types.is_fixed_size_list(arrow_type):
        size = arrow_type.list_size
        return [array.values.slice(array.offset * size, len(array) * size)]
    if pa.types.is_map(arrow_type):
        return _struct_fields(_list_values(array))
    if pa.types.is_list(arrow_type) or pa.types.is_large_list(arrow_type):
        return [_list_values(array)]
    return []


def _struct_fields(array: pa.StructArray) -> list[pa.Array]:
    """Return the field arrays of a struct array, cut to its rows.

    Not `flatten()`: it also applies the struct's nulls to each field, and for a union field,
    which has no null bitmap, pyarrow 26 then fails a check that aborts the process.
    """
    return [array.field(index) for index in range(array.type.num_fields)]


def _list_values(array: pa.Array) -> pa.Array:
    """Return the values of a list or map array from its first row's to its last row's.
    `values` alone ignores a slice of the array."""
    offsets = array.offsets
    start = offsets[0].as_py()
    return array.values.slice(start, offsets[-1].as_py() - start)


def _with_children(array: pa.Array, children: list[pa.Array]) -> pa.Array:
    """Return a list, map or struct array like `array`, with nulls in the same rows, around
    `children` in place of the arrays that `_child_arrays` returns for it."""
    arrow_type = array.type
    mask = array.is_null() if array.null_count else None
    if pa.types.is_struct(arrow_type):
        fields = [
            field.with_type(child.type)
            for field, child in zip(arrow_type.fields, children, strict=True)
        ]
        return pa.StructArray.from_arrays(children, fields=fields, mask=mask)
    if pa.types.is_fixed_size_list(arrow_type):
        value_field = arrow_type.value_field.with_type(children[0].type)
        list_type = pa.list_(value_field, arrow_type.list_size)
        return pa.FixedSizeListArray.from_arrays(children[0], type=list_type, mask=mask)

    # Offsets from 0, because `_list_values` cut the values to the rows of `array`.
    offsets = pc.subtract(array.offsets, array.offsets[0])
    if pa.types.is_map(arrow_type):
        return pa.MapArray.from_arrays(offsets, children[0], children[1], mask=mask)
    value_field = arrow_type.value_field.with_type(children[0].type)
    if pa.types.is_large_list(arrow_type):
        return pa.LargeListArray.from_arrays(
            offsets, children[0], type=pa.large_list(value_field), mask=mask
        )
    return pa.ListArray.from_arrays(offsets, children[0], type=pa.list_(value_field), mask=mask)


@functools.lru_cache(maxsize=1024)
def _type_contains(arrow_type: pa.DataType, check: Callable[[pa.DataType], bool]) -> bool:
    """Return whether `check` holds for `arrow_type` or a type inside it, outside unions. The
    results are cached, because every response walks the types of its columns."""
    if check(arrow_type):
        return True
    if pa.types.is_struct(arrow_type):
        return any(_type_contains(field.type, check) for field in arrow_type)
    if pa.types.is_map(arrow_type):
        return _type_contains(arrow_type.key_type, check) or _type_contains(
            arrow_type.item_type, check
        )
    if pa.types.is_list(arrow_type) or pa.types.is_large_list(arrow_type):
        return _type_contains(arrow_type.value_type, check)
    if pa.types.is_fixed_size_list(arrow_type):
        return _type_contains(arrow_type.value_type, check)
    return False
