"""Conversion of incoming data (JSON records, CSV, Parquet, JSON lines) into Arrow tables."""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pa_csv
import pyarrow.json as pa_json
import pyarrow.parquet as pq

from sqlstore.errors import InvalidIdentifier, InvalidInput
from sqlstore.identifiers import validate_column
from sqlstore.types import FLOAT64_EXACT_INTEGER_LIMIT, describe_type, type_family
from sqlstore.values import (
    EPOCH_RANGE_MESSAGE,
    ISO_TIMESTAMP_EXAMPLES,
    ISO_TIMESTAMP_PATTERN,
    MAX_EPOCH_SECONDS,
    MIN_EPOCH_SECONDS,
    is_valid_unicode,
)

MICROSECONDS_PER_SECOND = 1_000_000
# pyarrow's C data interface fails on lists nested about 50 deep; stay far below that.
MAX_LIST_DEPTH = 8
INPUT_FORMATS = {".csv": "csv", ".parquet": "parquet", ".jsonl": "jsonl", ".ndjson": "jsonl"}


def records_to_table(records: Sequence[Mapping[str, Any]]) -> pa.Table:
    """Build an Arrow table from JSON records, one column per key seen in any record.

    A record that lacks a key gets null there. Raise InvalidInput naming the record (0-based)
    and the field when a value is a nested object or its type differs from the other records.
    """
    if not records:
        raise InvalidInput("records is empty: send at least one record")
    check_record_values(records)

    first_records: dict[str, int] = {}
    for index, record in enumerate(records):
        if not isinstance(record, Mapping):
            raise InvalidInput(f"record {index} is not a JSON object")
        for key in record:
            first_records.setdefault(key, index)

    columns = {}
    for name, index in first_records.items():
        try:
            validate_column(name)
        except InvalidIdentifier as error:
            raise InvalidIdentifier(f"record {index}: {error.message}") from error
        values = [record.get(name) for record in records]
        columns[name] = _column_from_values(name, values)
    return pa.table(columns)


def check_record_values(records: Sequence[Mapping[str, Any]]) -> None:
    """Raise InvalidInput naming the first record and field whose value contains an object, NaN
    or an infinity, or nests lists more than MAX_LIST_DEPTH deep.

    Python's JSON parser accepts the non-standard NaN and Infinity literals, and a stored NaN
    would be read back as null. The walk is iterative, so that a value nested hundreds deep
    cannot exhaust Python's stack.
    """
    for index, record in enumerate(records):
        if not isinstance(record, Mapping):
            continue
        for field, value in record.items():
            problem = _nested_value_problem(value)
            if problem is not None:
                raise InvalidInput(f"record {index}, field {field!r}: {problem}")


def _nested_value_problem(value: Any) -> str | None:
    pending = [(value, 0)]
    while pending:
        item, depth = pending.pop()
        if isinstance(item, float) and not math.isfinite(item):
            return "NaN and infinite numbers are not supported; send null for a missing value"
        if isinstance(item, Mapping):
            return "nested objects are not supported; flatten them into separate columns"
        if isinstance(item, list):
            if depth == MAX_LIST_DEPTH:
                return f"lists nest more than {MAX_LIST_DEPTH} levels deep; flatten the values"
            pending.extend((child, depth + 1) for child in item)
    return None


def _column_from_values(name: str, values: list[Any]) -> pa.Array:
    try:
        array = pa.array(values)
    except (pa.ArrowInvalid, pa.ArrowTypeError, OverflowError, UnicodeError, ValueError) as error:
        raise _describe_bad_value(name, values, error) from error

    if pa.types.is_struct(array.type) or _contains_struct(array.type):
        index = next(i for i, value in enumerate(values) if _has_mapping(value))
        raise InvalidInput(
            f"record {index}, field {name!r}: nested objects are not supported; "
            "flatten them into separate columns"
        )
    return array


def _contains_struct(arrow_type: pa.DataType) -> bool:
    if pa.types.is_list(arrow_type) or pa.types.is_large_list(arrow_type):
        return pa.types.is_struct(arrow_type.value_type) or _contains_struct(arrow_type.value_type)
    return False


def _has_mapping(value: Any) -> bool:
    if isinstance(value, Mapping):
        return True
    if isinstance(value, list):
        return any(_has_mapping(item) for item in value)
    return False


def _describe_bad_value(name: str, values: list[Any], error: Exception) -> InvalidInput:
    """Find the first record whose value does not fit the column, for the error message."""
    first_kind: tuple[str, ...] | None = None
    first_index = 0
    for index, value in enumerate(values):
        if value is None:
            continue
        if _has_mapping(value):
            return InvalidInput(
                f"record {index}, field {name!r}: nested objects are not supported; "
                "flatten them into separate columns"
            )
        problem = _value_problem(value)
        if problem is not None:
            return InvalidInput(f"record {index}, field {name!r}: {problem}")

        kind = _json_kind(value)
        if first_kind is None:
            first_kind, first_index = kind, index
        elif not _kinds_compatible(kind, first_kind):
            return InvalidInput(
                f"record {index}, field {name!r}: got {_describe_kind(kind)} {_preview(value)} "
                f"but record {first_index} has {_describe_kind(first_kind)}; send one type per "
                "field"
            )

    inexact = _first_inexact_integer(values)
    if inexact is not None:
        return InvalidInput(
            f"record {inexact}, field {name!r}: value {_preview(values[inexact])} has an integer "
            "with no exact float64 value, and other records of this field have floats; send all "
            "values as integers, or as strings"
        )
    return InvalidInput(f"field {name!r}: values cannot be stored as one column ({error})")


def _value_problem(value: Any) -> str | None:
    """Return why one value cannot be stored on its own, or None when it can."""
    try:
        pa.array([value])
        return None
    except (pa.ArrowInvalid, pa.ArrowTypeError, OverflowError, UnicodeError, ValueError) as error:
        failure = error

    numbers = list(_leaf_values(value))
    too_large = next((n for n in numbers if _is_integer(n) and not _fits_int64(n)), None)
    if too_large is not None:
        return (
            f"the integer {_preview(too_large)} does not fit in signed 64 bits; send it as a string"
        )
    if any(isinstance(item, str) and not is_valid_unicode(item) for item in numbers):
        return f"value {_preview(value)} is not valid Unicode text (it has a lone surrogate)"
    if isinstance(value, list):
        kinds = [_json_kind(item) for item in value if item is not None]
        for kind in kinds[1:]:
            if not _kinds_compatible(kind, kinds[0]):
                return (
                    f"the list {_preview(value)} mixes {_describe_kind(kinds[0])} and "
                    f"{_describe_kind(kind)}; send one element type per list"
                )
        if _first_inexact_integer(numbers) is not None:
            return (
                f"the list {_preview(value)} mixes floats with an integer that has no exact "
                "float64 value; send all elements as integers, or as strings"
            )
    return f"value {_preview(value)} cannot be stored ({failure})"


def _leaf_values(value: Any) -> Iterator[Any]:
    if isinstance(value, list):
        for item in value:
            yield from _leaf_values(item)
    else:
        yield value


def _is_integer(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _fits_int64(value: int) -> bool:
    return -(2**63) <= value < 2**63


def _first_inexact_integer(values: list[Any]) -> int | None:
    """Return the index of the first integer that float64 cannot hold exactly when the values
    also contain floats (Arrow then stores the column as float64), else None. Elements of
    lists count as their list's value."""
    leaves = [list(_leaf_values(value)) for value in values]
    if not any(isinstance(leaf, float) for group in leaves for leaf in group):
        return None
    for index, group in enumerate(leaves):
        if any(_is_integer(leaf) and abs(leaf) > FLOAT64_EXACT_INTEGER_LIMIT for leaf in group):
            return index
    return None


def _json_kind(value: Any) -> tuple[str, ...]:
    """Return the JSON type of `value`: ("number",), or ("list", "string") for a list of
    strings. A list that is empty or contains only nulls is ("list",), which fits any list."""
    if isinstance(value, bool):
        return ("boolean",)
    if isinstance(value, int | float):
        return ("number",)
    if isinstance(value, str):
        return ("string",)
    if isinstance(value, list):
        items = [_json_kind(item) for item in value if item is not None]
        longest = max(items, key=len, default=())
        return ("list", *longest)
    return (type(value).__name__,)


def _kinds_compatible(kind: tuple[str, ...], other: tuple[str, ...]) -> bool:
    shorter = min(len(kind), len(other))
    if kind[:shorter] != other[:shorter]:
        return False
    # A bare ("list",) fits any list; a scalar fits only the same scalar.
    return len(kind) == len(other) or kind[shorter - 1] == "list"


def _describe_kind(kind: tuple[str, ...]) -> str:
    plural = {"number": "numbers", "string": "strings", "boolean": "booleans", "list": "lists"}
    words = ["a list" if kind[0] == "list" else f"a {kind[0]}"]
    words += [f"of {plural.get(part, part)}" for part in kind[1:]]
    return " ".join(words)


def _preview(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def read_input_file(path: Path) -> pa.Table:
    """Read a CSV, Parquet or JSON-lines file into an Arrow table, by file extension."""
    file_format = INPUT_FORMATS.get(path.suffix.lower())
    if file_format is None:
        known = ", ".join(sorted(INPUT_FORMATS))
        raise InvalidInput(f"unsupported input file {path.name!r}: use one of {known}")
    if not path.is_file():
        raise InvalidInput(f"input file {str(path)!r} not found")

    try:
        if file_format == "csv":
            table = pa_csv.read_csv(path)
        elif file_format == "parquet":
            table = pq.read_table(path)
        else:
            table = pa_json.read_json(path)
    except (pa.ArrowInvalid, OSError) as error:
        raise InvalidInput(f"could not read {path.name!r} as {file_format}: {error}") from error

    for name in table.column_names:
        validate_column(name)
    return table


def normalize_timestamp_column(table: pa.Table, name: str) -> pa.Table:
    """Convert column `name` to a UTC timestamp (microseconds, or nanoseconds when needed).

    Naive timestamps and strings without an offset are taken as UTC; strings are ISO 8601;
    numbers are Unix epoch seconds. Raise InvalidInput naming the record for a bad value.
    """
    column = table[name]
    family = type_family(column.type)
    if family == "timestamp":
        converted = _timestamp_to_utc(column)
    elif family == "date":
        converted = column.cast(pa.timestamp("s")).cast(pa.timestamp("us", tz="UTC"))
    elif family in ("integer", "floating"):
        converted = _epoch_seconds_to_timestamp(name, column)
    elif family == "string":
        converted = _parse_timestamp_strings(name, column)
    elif family == "null":
        converted = column.cast(pa.timestamp("us", tz="UTC"))
    else:
        raise InvalidInput(
            f"timestamp column {name!r} has {describe_type(column.type)} values; send ISO 8601 "
            "strings or Unix epoch seconds"
        )
    index = table.column_names.index(name)
    return table.set_column(index, pa.field(name, converted.type), converted)


def _timestamp_to_utc(column: pa.ChunkedArray) -> pa.ChunkedArray:
    # Arrow stores time-zone-aware values as UTC instants, so only the label changes; naive
    # values are taken as UTC.
    column = column.cast(pa.timestamp(column.type.unit, tz="UTC"))
    return _to_microseconds_when_exact(column)


def _to_microseconds_when_exact(column: pa.ChunkedArray) -> pa.ChunkedArray:
    """Use microseconds, the unit DuckDB and pandas share, unless that would drop nanoseconds."""
    try:
        return column.cast(pa.timestamp("us", tz="UTC"), safe=True)
    except pa.ArrowInvalid:
        return column


def _epoch_seconds_to_timestamp(name: str, column: pa.ChunkedArray) -> pa.ChunkedArray:
    seconds = column.cast(pa.float64()) if pa.types.is_floating(column.type) else column
    as_float = seconds.cast(pa.float64()).to_numpy(zero_copy_only=False)
    with np.errstate(invalid="ignore"):
        valid = np.isnan(as_float) & seconds.is_null().to_numpy(zero_copy_only=False)
        in_range = (as_float >= MIN_EPOCH_SECONDS) & (as_float <= MAX_EPOCH_SECONDS)
        valid |= np.isfinite(as_float) & in_range
    if not valid.all():
        index = int(np.argmin(valid))
        message = EPOCH_RANGE_MESSAGE.format(value=seconds[index].as_py())
        raise InvalidInput(f"record {index}, field {name!r}: {message}")

    if pa.types.is_floating(seconds.type):
        micros = pc.round(pc.multiply(seconds, float(MICROSECONDS_PER_SECOND))).cast(pa.int64())
    else:
        micros = pc.multiply(seconds.cast(pa.int64()), MICROSECONDS_PER_SECOND)
    return micros.cast(pa.timestamp("us", tz="UTC"))


def _parse_timestamp_strings(name: str, column: pa.ChunkedArray) -> pa.ChunkedArray:
    # pandas alone would also accept forms such as "2024" or "20240501", which read as numbers.
    matches = pc.match_substring_regex(column, f"^(?:{ISO_TIMESTAMP_PATTERN})$")
    mismatched = pc.fill_null(pc.invert(matches), False)
    if pc.any(mismatched).as_py():
        index = pc.index(mismatched, True).as_py()
        raise InvalidInput(
            f"record {index}, field {name!r}: {column[index].as_py()!r} is not an ISO 8601 "
            f"timestamp; {ISO_TIMESTAMP_EXAMPLES}"
        )

    # Zeros after the sixth fractional digit would make pandas parse every value in nanoseconds,
    # which cannot hold the years before 1677 or after 2262.
    column = pc.replace_substring_regex(column, r"(\.\d{6})0{1,3}(Z|[+-]|$)", r"\1\2")
    values = column.to_pandas()
    try:
        parsed = pd.to_datetime(values, utc=True, format="ISO8601")
    except (ValueError, OverflowError, pd.errors.OutOfBoundsDatetime) as error:
        bad = _first_bad_timestamp(values)
        if bad is None:
            # Each string parses alone. With pandas 3, that happens when some strings have
            # nanosecond digits, which every value then needs, and others lie outside its range.
            raise InvalidInput(
                f"field {name!r}: the timestamps parse one by one but not together; when some "
                "have nanosecond digits, every value must lie in the years 1677 to 2262"
            ) from error
        index, value = bad
        raise InvalidInput(
            f"record {index}, field {name!r}: {value!r} is not a valid time in the supported "
            "range: the years 1 to 9999, or 1677 to 2262 with more than 6 fractional digits"
        ) from error
    # pandas 3 parses to microseconds unless a string has nanosecond digits, so keep its unit:
    # forcing nanoseconds would overflow for years outside 1677-2262. pandas 2 parses to
    # nanoseconds and rejects those years above.
    parsed_column = pa.chunked_array([pa.array(parsed)])
    return _to_microseconds_when_exact(parsed_column)


def _first_bad_timestamp(values: pd.Series) -> tuple[int, Any] | None:
    for index, value in enumerate(values):
        if value is None:
            continue
        try:
            pd.to_datetime([value], utc=True, format="ISO8601")
        except (ValueError, OverflowError, pd.errors.OutOfBoundsDatetime):
            return index, value
    return None
