"""Conversion of incoming data (JSON records, CSV, Parquet, JSON lines) into Arrow tables."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pa_csv
import pyarrow.json as pa_json
import pyarrow.parquet as pq

from sqlstore.errors import InvalidInput
from sqlstore.identifiers import validate_column
from sqlstore.types import FLOAT64_EXACT_INTEGER_LIMIT, describe_type, type_family

MICROSECONDS_PER_SECOND = 1_000_000
# Year 287,000 or so: beyond this, microseconds since the epoch overflow int64.
MAX_EPOCH_SECONDS = 9e12
INPUT_FORMATS = {".csv": "csv", ".parquet": "parquet", ".jsonl": "jsonl", ".ndjson": "jsonl"}


def records_to_table(records: Sequence[Mapping[str, Any]]) -> pa.Table:
    """Build an Arrow table from JSON records, one column per key seen in any record.

    A record that lacks a key gets null there. Raise InvalidInput naming the record (0-based)
    and the field when a value is a nested object or its type differs from the other records.
    """
    if not records:
        raise InvalidInput("records is empty: send at least one record")

    names: dict[str, None] = {}
    for index, record in enumerate(records):
        if not isinstance(record, Mapping):
            raise InvalidInput(f"record {index} is not a JSON object")
        for key in record:
            names.setdefault(key, None)

    columns = {}
    for name in names:
        validate_column(name)
        values = [record.get(name) for record in records]
        columns[name] = _column_from_values(name, values)
    return pa.table(columns)


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
    first_kind = None
    for index, value in enumerate(values):
        if value is None:
            continue
        if _has_mapping(value):
            return InvalidInput(
                f"record {index}, field {name!r}: nested objects are not supported; "
                "flatten them into separate columns"
            )
        kind = _json_kind(value)
        if first_kind is None:
            first_kind = kind
            first_index = index
        elif kind != first_kind:
            return InvalidInput(
                f"record {index}, field {name!r}: got {kind} {_preview(value)} but record "
                f"{first_index} has {first_kind}; send one type per field"
            )
        try:
            pa.array([value])
        except (pa.ArrowInvalid, pa.ArrowTypeError, OverflowError, UnicodeError, ValueError):
            return InvalidInput(
                f"record {index}, field {name!r}: value {_preview(value)} cannot be stored "
                f"({error}); integers must fit in signed 64 bits and strings must be valid "
                "Unicode"
            )

    inexact = _first_inexact_integer(values)
    if inexact is not None:
        return InvalidInput(
            f"record {inexact}, field {name!r}: the integer {_preview(values[inexact])} has no "
            "exact float64 value, and other records of this field are floats; send all values "
            "as integers, or as strings"
        )
    return InvalidInput(f"field {name!r}: values cannot be stored as one column ({error})")


def _first_inexact_integer(values: list[Any]) -> int | None:
    """Return the index of the first integer that float64 cannot hold exactly when the values
    also contain floats (Arrow then stores the column as float64), else None."""
    if not any(isinstance(value, float) for value in values):
        return None
    for index, value in enumerate(values):
        is_integer = isinstance(value, int) and not isinstance(value, bool)
        if is_integer and abs(value) > FLOAT64_EXACT_INTEGER_LIMIT:
            return index
    return None


def _json_kind(value: Any) -> str:
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "a list"
    return type(value).__name__


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
        valid |= np.isfinite(as_float) & (np.abs(as_float) <= MAX_EPOCH_SECONDS)
    if not valid.all():
        index = int(np.argmin(valid))
        raise InvalidInput(
            f"record {index}, field {name!r}: {seconds[index].as_py()!r} is not a Unix epoch "
            f"time in seconds (at most {MAX_EPOCH_SECONDS:.0e} in magnitude)"
        )

    if pa.types.is_floating(seconds.type):
        micros = pc.round(pc.multiply(seconds, float(MICROSECONDS_PER_SECOND))).cast(pa.int64())
    else:
        micros = pc.multiply(seconds.cast(pa.int64()), MICROSECONDS_PER_SECOND)
    return micros.cast(pa.timestamp("us", tz="UTC"))


def _parse_timestamp_strings(name: str, column: pa.ChunkedArray) -> pa.ChunkedArray:
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
            f"record {index}, field {name!r}: {value!r} is not an ISO 8601 timestamp in the "
            "supported range (for example 2024-05-01T12:00:00Z)"
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
