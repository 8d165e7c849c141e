"""Arrow type handling: value-preserving downcasts and widening for appends.

Every change made here keeps each stored value exactly as given: integers move only to a type
that holds their actual minimum and maximum, and float64 becomes float32 only when every value
survives the round trip unchanged.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from sqlstore.errors import InvalidInput, SchemaMismatch

# Share of distinct values below which a string column is dictionary-encoded in Parquet.
DICTIONARY_MAX_DISTINCT_SHARE = 0.5

SIGNED_TYPES = (pa.int8(), pa.int16(), pa.int32(), pa.int64())
UNSIGNED_TYPES = (pa.uint8(), pa.uint16(), pa.uint32(), pa.uint64())

# Types that Parquet has no unit for, and the type pyarrow's Parquet writer stores them as.
PARQUET_UNIT_TYPES = {
    pa.time32("s"): pa.time32("ms"),
    pa.date64(): pa.date32(),
}

# float64 represents every integer of magnitude up to 2**53 exactly.
FLOAT64_EXACT_INTEGER_LIMIT = 2**53


def type_family(arrow_type: pa.DataType) -> str:
    """Return the family name used to decide whether two column types may be combined."""
    if pa.types.is_dictionary(arrow_type):
        return type_family(arrow_type.value_type)
    checks = (
        ("null", pa.types.is_null),
        ("boolean", pa.types.is_boolean),
        ("integer", pa.types.is_integer),
        ("floating", pa.types.is_floating),
        ("decimal", pa.types.is_decimal),
        ("string", lambda t: pa.types.is_string(t) or pa.types.is_large_string(t)),
        ("binary", lambda t: pa.types.is_binary(t) or pa.types.is_large_binary(t)),
        ("timestamp", pa.types.is_timestamp),
        ("date", pa.types.is_date),
        ("time", pa.types.is_time),
        ("duration", pa.types.is_duration),
        ("list", lambda t: pa.types.is_list(t) or pa.types.is_large_list(t)),
    )
    for family, check in checks:
        if check(arrow_type):
            return family
    return str(arrow_type)


def describe_type(arrow_type: pa.DataType) -> str:
    """Return the type name shown to users: dictionary encoding is a storage detail."""
    if pa.types.is_dictionary(arrow_type):
        return describe_type(arrow_type.value_type)
    if pa.types.is_list(arrow_type) or pa.types.is_large_list(arrow_type):
        return f"list<{describe_type(arrow_type.value_type)}>"
    return str(arrow_type)


def smallest_integer_type(array: pa.ChunkedArray) -> pa.DataType:
    """Return the smallest integer type that holds every value of an integer column."""
    bounds = pc.min_max(array)
    low, high = bounds["min"].as_py(), bounds["max"].as_py()
    if low is None:
        return array.type

    candidates = UNSIGNED_TYPES if low >= 0 else SIGNED_TYPES
    for candidate in candidates:
        info = np.iinfo(candidate.to_pandas_dtype())
        if info.min <= low and high <= info.max:
            return candidate
    return array.type


def float64_fits_float32(array: pa.ChunkedArray) -> bool:
    """Return True when every non-null value survives float64 -> float32 -> float64 exactly."""
    values = array.drop_null().to_numpy()
    if values.size == 0:
        return True

    with np.errstate(over="ignore", invalid="ignore"):
        narrowed = values.astype(np.float32).astype(np.float64)
    same = (narrowed == values) | (np.isnan(narrowed) & np.isnan(values))
    return bool(same.all())


def optimize_table(table: pa.Table) -> tuple[pa.Table, list[str]]:
    """Downcast columns without changing a value; return the table and the columns to
    dictionary-encode in Parquet (string columns of low cardinality)."""
    columns = []
    dictionary_columns = []
    for field, column in zip(table.schema, table.columns, strict=True):
        column = _optimize_column(field.name, column)
        columns.append(column)
        if _is_low_cardinality_string(column):
            dictionary_columns.append(field.name)

    schema = pa.schema(
        [
            pa.field(f.name, c.type, nullable=True)
            for f, c in zip(table.schema, columns, strict=True)
        ]
    )
    return pa.Table.from_arrays(columns, schema=schema), dictionary_columns


def _optimize_column(name: str, column: pa.ChunkedArray) -> pa.ChunkedArray:
    arrow_type = column.type
    if pa.types.is_dictionary(arrow_type):
        return _optimize_column(name, column.cast(arrow_type.value_type))
    target = _parquet_storage_type(arrow_type)
    if target is not None:
        return _to_parquet_unit(name, column, target)
    if pa.types.is_integer(arrow_type):
        return column.cast(smallest_integer_type(column))
    if pa.types.is_float64(arrow_type) and float64_fits_float32(column):
        return column.cast(pa.float32(), safe=False)
    if pa.types.is_large_string(arrow_type):
        return column.cast(pa.string())
    return column


def _parquet_storage_type(arrow_type: pa.DataType) -> pa.DataType | None:
    """Return the type Parquet stores `arrow_type` as, or None when it stores it unchanged."""
    if pa.types.is_timestamp(arrow_type) and arrow_type.unit == "s":
        return pa.timestamp("ms", tz=arrow_type.tz)
    return PARQUET_UNIT_TYPES.get(arrow_type)


def _to_parquet_unit(name: str, column: pa.ChunkedArray, target: pa.DataType) -> pa.ChunkedArray:
    """Convert a column to the type Parquet stores it as, so that the registry describes the file.

    Raise InvalidInput when a value has no exact counterpart in that type.
    """
    arrow_type = column.type
    try:
        return column.cast(target, safe=True)
    except pa.ArrowInvalid as error:
        raise InvalidInput(
            f"column {name!r} has a {describe_type(arrow_type)} value that Parquet cannot store "
            f"as {describe_type(target)} ({error}); send values that convert exactly"
        ) from error


def _is_low_cardinality_string(column: pa.ChunkedArray) -> bool:
    if not pa.types.is_string(column.type) or len(column) == 0:
        return False
    distinct = pc.count_distinct(column).as_py()
    return distinct / len(column) < DICTIONARY_MAX_DISTINCT_SHARE


def widen_for_append(existing: pa.Table, incoming: pa.Table) -> pa.Table:
    """Concatenate `incoming` after `existing`, matching columns by name.

    A column only in `incoming` is added and null for the old rows; a column only in `existing`
    is null for the new rows. A column in both keeps its values exactly: integers widen to
    int64 (uint64 when no value is negative), floats to float64, and integers mix with floats
    only when each fits float64 exactly.
    Raise SchemaMismatch naming the column for any other type change.
    """
    existing_columns = {}
    incoming_columns = {}
    for name in existing.column_names:
        if name not in incoming.column_names:
            continue
        target = _common_type(name, existing[name], incoming[name])
        existing_columns[name] = _cast_exactly(name, existing[name], target)
        incoming_columns[name] = _cast_exactly(name, incoming[name], target)

    existing = _replace_columns(existing, existing_columns)
    incoming = _replace_columns(incoming, incoming_columns)
    return pa.concat_tables([existing, incoming], promote_options="default")


def _replace_columns(table: pa.Table, replacements: dict[str, pa.ChunkedArray]) -> pa.Table:
    for name, column in replacements.items():
        index = table.column_names.index(name)
        table = table.set_column(index, pa.field(name, column.type, nullable=True), column)
    return table


def _common_type(name: str, existing: pa.ChunkedArray, incoming: pa.ChunkedArray) -> pa.DataType:
    old_type = _plain_type(existing.type)
    new_type = _plain_type(incoming.type)
    old_family = type_family(old_type)
    new_family = type_family(new_type)

    if old_type == new_type:
        return old_type
    if new_family == "null":
        return old_type
    if old_family == "null":
        return new_type
    if old_family == new_family == "integer":
        # Decided by the values, not the types: an int64 column of non-negative values may
        # join a uint64 column that contains values above the int64 maximum.
        return pa.int64() if _has_negative(existing) or _has_negative(incoming) else pa.uint64()
    if {old_family, new_family} <= {"integer", "floating"}:
        return pa.float64()
    if old_family == new_family == "string":
        return pa.large_string()
    if old_family == new_family == "timestamp":
        return _common_timestamp_type(old_type, new_type)
    if old_family == new_family == "list":
        value_type = _common_type(name, _list_values(existing), _list_values(incoming))
        return pa.list_(value_type)

    raise SchemaMismatch(
        f"column {name!r} contains {old_family} values ({describe_type(old_type)}) but the "
        f"appended data has {new_family} values ({describe_type(new_type)}); send {old_family} "
        "values, or overwrite the table to change the column's type"
    )


def _has_negative(column: pa.ChunkedArray) -> bool:
    if pa.types.is_dictionary(column.type):
        column = column.cast(column.type.value_type)
    low = pc.min(column).as_py()
    return low is not None and low < 0


def _plain_type(arrow_type: pa.DataType) -> pa.DataType:
    if pa.types.is_dictionary(arrow_type):
        return arrow_type.value_type
    return arrow_type


def _list_values(column: pa.ChunkedArray) -> pa.ChunkedArray:
    chunks = [pc.list_flatten(chunk) for chunk in column.chunks]
    return pa.chunked_array(chunks, type=column.type.value_type)


def _common_timestamp_type(old_type: pa.TimestampType, new_type: pa.TimestampType) -> pa.DataType:
    units = ["s", "ms", "us", "ns"]
    unit = max(old_type.unit, new_type.unit, key=units.index)
    # Naive columns stay naive; different zones meet in UTC, which changes no instant.
    zone = old_type.tz if old_type.tz == new_type.tz else "UTC"
    return pa.timestamp(unit, tz=zone)


def _cast_exactly(name: str, column: pa.ChunkedArray, target: pa.DataType) -> pa.ChunkedArray:
    if column.type == target:
        return column
    if pa.types.is_integer(column.type) and pa.types.is_floating(target):
        _check_integers_fit_float64(name, column)
        return column.cast(target)
    try:
        return column.cast(target, safe=True)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as error:
        raise SchemaMismatch(
            f"column {name!r} cannot be widened from {describe_type(column.type)} to "
            f"{describe_type(target)} without changing values ({error}); overwrite the table "
            "to change its type"
        ) from error


def _check_integers_fit_float64(name: str, column: pa.ChunkedArray) -> None:
    bounds = pc.min_max(column)
    for bound in (bounds["min"].as_py(), bounds["max"].as_py()):
        if bound is not None and abs(bound) > FLOAT64_EXACT_INTEGER_LIMIT:
            raise SchemaMismatch(
                f"column {name!r} mixes integers and floats, but the integer {bound} has no exact "
                "float64 value; send the column with one type"
            )
