"""Type optimisation and append widening: stored values never change, types are the smallest.

Every expectation is computed with plain Python (struct, integer ranges) or read back from the
Parquet file with plain pyarrow, never with sqlstore's own helpers.
"""

from __future__ import annotations

import math
import struct
from datetime import UTC, date, datetime, time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sqlstore.errors import InvalidInput, SchemaMismatch
from sqlstore.lookup import lookup_entities
from sqlstore.reader import parse_filters, read_page
from sqlstore.references import resolve_reference
from sqlstore.store import FeatureStore, TableDefinition
from sqlstore.values import convert_value

PROPERTY_SETTINGS = settings(
    max_examples=50,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)

INT64_MIN = -(2**63)
INT64_MAX = 2**63 - 1

# (Arrow type, minimum, maximum) in the order sqlstore tries them, written out by hand.
UNSIGNED_RANGES = [
    (pa.uint8(), 0, 2**8 - 1),
    (pa.uint16(), 0, 2**16 - 1),
    (pa.uint32(), 0, 2**32 - 1),
    (pa.uint64(), 0, 2**64 - 1),
]
SIGNED_RANGES = [
    (pa.int8(), -(2**7), 2**7 - 1),
    (pa.int16(), -(2**15), 2**15 - 1),
    (pa.int32(), -(2**31), 2**31 - 1),
    (pa.int64(), INT64_MIN, INT64_MAX),
]

SURROGATE_FREE_TEXT = st.text(alphabet=st.characters(exclude_categories=("Cs",)), max_size=12)


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> FeatureStore:
    return FeatureStore(tmp_path_factory.mktemp("types_store"))


def write_and_read(store: FeatureStore, name: str, table: pa.Table, **options) -> pa.Table:
    """Write `table` through the store and read the Parquet file back with plain pyarrow."""
    result = store.write("types", name, table, **options)
    return pq.read_table(store.root / result.entry.path)


def expected_integer_type(values: list[int | None]) -> pa.DataType:
    present = [value for value in values if value is not None]
    if not present:
        return pa.int64()
    low, high = min(present), max(present)
    ranges = UNSIGNED_RANGES if low >= 0 else SIGNED_RANGES
    for arrow_type, minimum, maximum in ranges:
        if minimum <= low and high <= maximum:
            return arrow_type
    raise AssertionError(f"no 64-bit type holds {low}..{high}")


def is_float32_exact(value: float) -> bool:
    if math.isnan(value):
        return True
    try:
        narrowed = struct.unpack("<f", struct.pack("<f", value))[0]
    except OverflowError:
        return False
    return narrowed == value


def float_identity(value: float | None) -> str | None:
    """Return a key that distinguishes NaN, -0.0 and 0.0, for exact comparison of floats."""
    if value is None:
        return None
    if math.isnan(value):
        return "nan"
    return value.hex()


def column_encodings(path: Path, column: str) -> set[str]:
    metadata = pq.ParquetFile(path).metadata
    encodings: set[str] = set()
    for group_index in range(metadata.num_row_groups):
        row_group = metadata.row_group(group_index)
        for column_index in range(row_group.num_columns):
            chunk = row_group.column(column_index)
            if chunk.path_in_schema == column:
                encodings.update(chunk.encodings)
    return encodings


# Optimisation never changes a value


@PROPERTY_SETTINGS
@given(values=st.lists(st.none() | st.integers(INT64_MIN, INT64_MAX), min_size=1, max_size=40))
def test_int64_values_survive_exactly(store: FeatureStore, values: list[int | None]) -> None:
    stored = write_and_read(store, "ints", pa.table({"v": pa.array(values, pa.int64())}))

    assert stored["v"].to_pylist() == values
    assert stored.schema.field("v").type == expected_integer_type(values)


@PROPERTY_SETTINGS
@given(
    values=st.lists(
        st.none() | st.floats() | st.floats(width=32) | st.sampled_from([-0.0, 2.0**53 + 2]),
        min_size=1,
        max_size=40,
    )
)
def test_float64_values_survive_exactly(store: FeatureStore, values: list[float | None]) -> None:
    stored = write_and_read(store, "floats", pa.table({"v": pa.array(values, pa.float64())}))

    read_back = [float_identity(value) for value in stored["v"].to_pylist()]
    assert read_back == [float_identity(value) for value in values]
    all_exact = all(is_float32_exact(value) for value in values if value is not None)
    assert stored.schema.field("v").type == (pa.float32() if all_exact else pa.float64())


@PROPERTY_SETTINGS
@given(values=st.lists(st.none() | SURROGATE_FREE_TEXT, min_size=1, max_size=40))
def test_string_values_survive_exactly(store: FeatureStore, values: list[str | None]) -> None:
    stored = write_and_read(store, "strings", pa.table({"v": pa.array(values, pa.string())}))

    assert stored["v"].to_pylist() == values
    assert stored.schema.field("v").type == pa.string()


# Microseconds since 1970 of 0001-01-01T00:00:00 and of the last microsecond of 9999-12-31:
# the times sqlstore stores, because JSON responses go through Python's datetime.
FIRST_SUPPORTED_MICROSECOND = -62_135_596_800_000_000
LAST_SUPPORTED_MICROSECOND = 253_402_300_799_999_999


@PROPERTY_SETTINGS
@given(
    values=st.lists(
        st.none() | st.integers(FIRST_SUPPORTED_MICROSECOND, LAST_SUPPORTED_MICROSECOND),
        min_size=1,
        max_size=40,
    ),
    unit=st.sampled_from(["us", "ns"]),
    zone=st.sampled_from([None, "UTC", "America/New_York"]),
)
def test_timestamp_values_survive_exactly(
    store: FeatureStore, values: list[int | None], unit: str, zone: str | None
) -> None:
    table = pa.table({"v": pa.array(values, pa.int64()).cast(pa.timestamp(unit, tz=zone))})
    stored = write_and_read(store, "timestamps", table)

    assert stored.schema.field("v").type == pa.timestamp(unit, tz=zone)
    assert stored["v"].cast(pa.int64()).to_pylist() == values


@pytest.mark.parametrize(
    "microseconds", [FIRST_SUPPORTED_MICROSECOND - 1, LAST_SUPPORTED_MICROSECOND + 1]
)
def test_timestamp_outside_years_rejected(store: FeatureStore, microseconds: int) -> None:
    table = pa.table({"v": pa.array([microseconds], pa.int64()).cast(pa.timestamp("us"))})

    with pytest.raises(InvalidInput, match="outside the years 1 to 9999"):
        store.write("types", "far_times", table)


@PROPERTY_SETTINGS
@given(
    old=st.lists(st.integers(INT64_MIN, INT64_MAX), min_size=1, max_size=20),
    new=st.lists(st.none() | st.integers(INT64_MIN, INT64_MAX), min_size=1, max_size=20),
)
def test_integer_append_keeps_values(
    store: FeatureStore, old: list[int], new: list[int | None]
) -> None:
    write_and_read(store, "appended_ints", pa.table({"v": pa.array(old, pa.int64())}))
    appended = pa.table({"v": pa.array(new, pa.int64())})
    stored = write_and_read(store, "appended_ints", appended, mode="append")

    assert stored["v"].to_pylist() == old + new
    assert stored.schema.field("v").type == expected_integer_type(old + new)


def test_edge_floats_survive_exactly(store: FeatureStore) -> None:
    values = [math.nan, -0.0, 0.0, math.inf, -math.inf, 2.0**53 + 2, 5e-324, 1.7976931348623157e308]
    stored = write_and_read(store, "edge_floats", pa.table({"v": pa.array(values, pa.float64())}))

    read_back = stored["v"].to_pylist()
    assert math.isnan(read_back[0])
    assert math.copysign(1.0, read_back[1]) == -1.0
    assert math.copysign(1.0, read_back[2]) == 1.0
    assert read_back[3:] == values[3:]
    assert stored.schema.field("v").type == pa.float64()


def test_integer_above_float_precision_kept(store: FeatureStore) -> None:
    values = [2**53 + 1, INT64_MIN, INT64_MAX, None]
    stored = write_and_read(store, "big_ints", pa.table({"v": pa.array(values, pa.int64())}))

    assert stored["v"].to_pylist() == values
    assert stored.schema.field("v").type == pa.int64()


# The smallest type, computed by hand


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        ([0, 255], pa.uint8()),
        ([0, 256], pa.uint16()),
        ([0, 65535], pa.uint16()),
        ([0, 65536], pa.uint32()),
        ([0, 2**32 - 1], pa.uint32()),
        ([0, 2**32], pa.uint64()),
        ([-128, 127], pa.int8()),
        ([-1, 128], pa.int16()),
        ([-129, 0], pa.int16()),
        ([-(2**31), 2**31 - 1], pa.int32()),
        ([-(2**31) - 1, 0], pa.int64()),
        ([None, None], pa.int64()),
        ([7, None], pa.uint8()),
    ],
)
def test_smallest_integer_type(store: FeatureStore, values: list, expected: pa.DataType) -> None:
    stored = write_and_read(store, "small_ints", pa.table({"v": pa.array(values, pa.int64())}))

    assert stored.schema.field("v").type == expected
    assert stored["v"].to_pylist() == values


def test_uint64_maximum_kept(store: FeatureStore) -> None:
    values = [0, 2**64 - 1]
    stored = write_and_read(store, "uint64", pa.table({"v": pa.array(values, pa.uint64())}))

    assert stored.schema.field("v").type == pa.uint64()
    assert stored["v"].to_pylist() == values


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        ([0.5, 1.0, -2.25], pa.float32()),
        ([0.1], pa.float64()),
        ([float(2**24)], pa.float32()),
        ([float(2**24 + 1)], pa.float64()),
        ([1e39], pa.float64()),
        ([math.inf, -math.inf, math.nan, -0.0], pa.float32()),
        ([2.0**-149], pa.float32()),
        ([2.0**-150], pa.float64()),
        ([None, 3.0], pa.float32()),
    ],
)
def test_smallest_float_type(store: FeatureStore, values: list, expected: pa.DataType) -> None:
    stored = write_and_read(store, "small_floats", pa.table({"v": pa.array(values, pa.float64())}))

    assert stored.schema.field("v").type == expected
    read_back = [float_identity(value) for value in stored["v"].to_pylist()]
    assert read_back == [float_identity(value) for value in values]


def test_dictionary_integers_downcast(store: FeatureStore) -> None:
    column = pa.array([1, 2, 1, 300], pa.int64()).dictionary_encode()
    stored = write_and_read(store, "dictionary_ints", pa.table({"v": column}))

    assert stored.schema.field("v").type == pa.uint16()
    assert stored["v"].to_pylist() == [1, 2, 1, 300]


@pytest.mark.parametrize(
    ("column", "expected_type", "expected_values"),
    [
        (
            pa.array([0, 1_700_000_000, None], pa.timestamp("s")),
            pa.timestamp("ms"),
            [datetime(1970, 1, 1), datetime(2023, 11, 14, 22, 13, 20), None],
        ),
        (
            pa.array([5, None], pa.timestamp("s", tz="UTC")),
            pa.timestamp("ms", tz="UTC"),
            [datetime(1970, 1, 1, 0, 0, 5, tzinfo=UTC), None],
        ),
        (
            pa.array([0, 86_399, None], pa.time32("s")),
            pa.time32("ms"),
            [time(0, 0), time(23, 59, 59), None],
        ),
        (
            pa.array([0, 86_400_000], pa.date64()),
            pa.date32(),
            [date(1970, 1, 1), date(1970, 1, 2)],
        ),
    ],
    ids=["timestamp_s", "timestamp_s_utc", "time32_s", "date64"],
)
def test_registry_type_matches_file(
    store: FeatureStore, column: pa.Array, expected_type: pa.DataType, expected_values: list
) -> None:
    # Parquet has no seconds unit and no date64, so pyarrow stores these as the finer unit.
    result = store.write("types", "units", pa.table({"v": column}))
    stored = pq.read_table(store.root / result.entry.path)

    assert stored.schema.field("v").type == expected_type
    assert result.entry.columns[0].type == str(expected_type)
    assert stored["v"].to_pylist() == expected_values


def test_unstorable_seconds_rejected(store: FeatureStore) -> None:
    column = pa.array([2**62], pa.timestamp("s"))

    with pytest.raises(InvalidInput) as raised:
        store.write("types", "far_future", pa.table({"v": column}))

    assert "'v'" in raised.value.message


# Dictionary encoding in the Parquet file


def test_low_cardinality_dictionary_encoded(store: FeatureStore) -> None:
    rows = 100
    table = pa.table(
        {
            "low": [f"c{i % 2}" for i in range(rows)],
            "below_half": [f"c{i % 49}" for i in range(rows)],
            "half": [f"c{i % 50}" for i in range(rows)],
            "unique": [f"c{i}" for i in range(rows)],
        }
    )
    result = store.write("types", "encodings", table)
    path = store.root / result.entry.path

    dictionary = {"RLE_DICTIONARY", "PLAIN_DICTIONARY"}
    assert column_encodings(path, "low") & dictionary
    assert column_encodings(path, "below_half") & dictionary
    assert not column_encodings(path, "half") & dictionary
    assert not column_encodings(path, "unique") & dictionary
    stored = pq.read_table(path)
    assert stored.schema.field("low").type == pa.string()
    assert stored["low"].to_pylist() == table["low"].to_pylist()


# Widening on append


def test_append_negative_to_unsigned(store: FeatureStore) -> None:
    write_and_read(store, "widen_sign", pa.table({"v": pa.array([1, 200], pa.int64())}))
    stored = write_and_read(
        store, "widen_sign", pa.table({"v": pa.array([-5], pa.int64())}), mode="append"
    )

    assert stored.schema.field("v").type == pa.int16()
    assert stored["v"].to_pylist() == [1, 200, -5]


def test_append_small_ints_to_uint64(store: FeatureStore) -> None:
    write_and_read(store, "widen_uint64", pa.table({"v": pa.array([2**64 - 1], pa.uint64())}))
    appended = pa.table({"v": pa.array([5, None], pa.int64())})
    stored = write_and_read(store, "widen_uint64", appended, mode="append")

    assert stored.schema.field("v").type == pa.uint64()
    assert stored["v"].to_pylist() == [2**64 - 1, 5, None]


def test_append_negative_to_huge_uint64(store: FeatureStore) -> None:
    write_and_read(store, "huge_uint64", pa.table({"v": pa.array([2**63], pa.uint64())}))

    with pytest.raises(SchemaMismatch) as raised:
        store.write("types", "huge_uint64", pa.table({"v": [-1]}), mode="append")

    assert "'v'" in raised.value.message


def test_append_float_to_integers(store: FeatureStore) -> None:
    write_and_read(store, "widen_float", pa.table({"v": pa.array([1, 2], pa.int64())}))
    stored = write_and_read(
        store, "widen_float", pa.table({"v": pa.array([0.5], pa.float64())}), mode="append"
    )

    assert stored.schema.field("v").type == pa.float32()
    assert stored["v"].to_pylist() == [1.0, 2.0, 0.5]


def test_append_inexact_float_to_integers(store: FeatureStore) -> None:
    write_and_read(store, "widen_double", pa.table({"v": pa.array([2**53], pa.int64())}))
    stored = write_and_read(
        store, "widen_double", pa.table({"v": pa.array([0.1], pa.float64())}), mode="append"
    )

    assert stored.schema.field("v").type == pa.float64()
    assert stored["v"].to_pylist() == [float(2**53), 0.1]


def test_append_dictionary_to_strings(store: FeatureStore) -> None:
    write_and_read(store, "widen_text", pa.table({"v": pa.array(["a", "b", "c"])}))
    appended = pa.table({"v": pa.array(["a", "d", None]).dictionary_encode()})
    stored = write_and_read(store, "widen_text", appended, mode="append")

    assert stored.schema.field("v").type == pa.string()
    assert stored["v"].to_pylist() == ["a", "b", "c", "a", "d", None]


def test_append_finer_timestamp_unit(store: FeatureStore) -> None:
    first = pa.array([1_000_000], pa.int64()).cast(pa.timestamp("us", tz="UTC"))
    second = pa.array([1_000_000_001], pa.int64()).cast(pa.timestamp("ns", tz="UTC"))
    write_and_read(store, "widen_time", pa.table({"v": first}))
    stored = write_and_read(store, "widen_time", pa.table({"v": second}), mode="append")

    assert stored.schema.field("v").type == pa.timestamp("ns", tz="UTC")
    assert stored["v"].cast(pa.int64()).to_pylist() == [1_000_000_000, 1_000_000_001]


def test_append_naive_timestamps_stay_naive(store: FeatureStore) -> None:
    first = pa.array([1_000_000], pa.int64()).cast(pa.timestamp("us"))
    second = pa.array([5], pa.int64()).cast(pa.timestamp("ns"))
    write_and_read(store, "widen_naive", pa.table({"v": first}))
    stored = write_and_read(store, "widen_naive", pa.table({"v": second}), mode="append")

    assert stored.schema.field("v").type == pa.timestamp("ns")
    assert stored["v"].cast(pa.int64()).to_pylist() == [1_000_000_000, 5]


def test_append_other_zone_meets_in_utc(store: FeatureStore) -> None:
    first = pa.array([60], pa.int64()).cast(pa.timestamp("us", tz="America/New_York"))
    second = pa.array([120], pa.int64()).cast(pa.timestamp("us", tz="UTC"))
    write_and_read(store, "widen_zone", pa.table({"v": first}))
    stored = write_and_read(store, "widen_zone", pa.table({"v": second}), mode="append")

    assert stored.schema.field("v").type == pa.timestamp("us", tz="UTC")
    assert stored["v"].cast(pa.int64()).to_pylist() == [60, 120]


def test_append_coarser_timestamp_unit(store: FeatureStore) -> None:
    first = pa.array([7], pa.int64()).cast(pa.timestamp("ns", tz="UTC"))
    second = pa.array([datetime(2024, 5, 1, tzinfo=UTC)], pa.timestamp("ms", tz="UTC"))
    write_and_read(store, "widen_coarse", pa.table({"v": first}))
    stored = write_and_read(store, "widen_coarse", pa.table({"v": second}), mode="append")

    expected_second = int(datetime(2024, 5, 1, tzinfo=UTC).timestamp()) * 10**9
    assert stored.schema.field("v").type == pa.timestamp("ns", tz="UTC")
    assert stored["v"].cast(pa.int64()).to_pylist() == [7, expected_second]


# Rejected appends name the column and leave the table unchanged


@pytest.mark.parametrize(
    ("stored_values", "appended_values"),
    [
        (pa.array([1, 2], pa.int64()), pa.array(["3"])),
        (pa.array([1, 2], pa.int64()), pa.array([True])),
        (pa.array([0.5], pa.float64()), pa.array([2**53 + 1], pa.int64())),
        (pa.array([2**53 + 1], pa.int64()), pa.array([0.5], pa.float64())),
    ],
    ids=["string_into_int", "bool_into_int", "big_int_into_float", "float_into_big_int"],
)
def test_incompatible_append_rejected(
    store: FeatureStore, stored_values: pa.Array, appended_values: pa.Array
) -> None:
    first = store.write("types", "rejects", pa.table({"price": stored_values}))

    with pytest.raises(SchemaMismatch) as raised:
        store.write("types", "rejects", pa.table({"price": appended_values}), mode="append")

    assert "'price'" in raised.value.message
    assert store.registry.get("types", "rejects").version == first.entry.version
    stored = pq.read_table(store.root / first.entry.path)
    assert stored["price"].to_pylist() == stored_values.to_pylist()


def test_exact_float_boundary_accepted(store: FeatureStore) -> None:
    write_and_read(store, "boundary", pa.table({"v": pa.array([0.5], pa.float64())}))
    appended = pa.table({"v": pa.array([2**53, -(2**53)], pa.int64())})
    stored = write_and_read(store, "boundary", appended, mode="append")

    assert stored["v"].to_pylist() == [0.5, float(2**53), float(-(2**53))]


@pytest.mark.parametrize(
    ("value", "arrow_type", "expected"),
    [
        (
            "18446744073709551616",
            pa.uint64(),
            "out of range; integers must fit in 64 bits (-2^63 to 2^64-1), and the column is "
            "uint64",
        ),
        (
            "-9223372036854775809",
            pa.uint64(),
            "out of range; integers must fit in 64 bits (-2^63 to 2^64-1), and the column is "
            "uint64",
        ),
        (
            "9223372036854775808",
            pa.uint32(),
            "out of range; integers must fit in 64 bits (-2^63 to 2^63-1), and the column is "
            "uint32",
        ),
        (
            "18446744073709551615",
            pa.int64(),
            "out of range; integers must fit in 64 bits (-2^63 to 2^63-1), and the column is int64",
        ),
    ],
)
def test_integer_beyond_64_bits_message(value: str, arrow_type: pa.DataType, expected: str) -> None:
    with pytest.raises(InvalidInput) as raised:
        convert_value(value, arrow_type, "filter k__eq")

    assert raised.value.message == f'invalid value "{value}" for filter k__eq: {expected}'


def test_integer_of_5000_digits_message() -> None:
    with pytest.raises(InvalidInput) as raised:
        convert_value("1" * 5000, pa.uint64(), "filter k__eq")

    assert raised.value.message.startswith('invalid value "1111')
    assert "out of range; integers must fit in 64 bits (-2^63 to 2^64-1)" in raised.value.message


@pytest.mark.parametrize(
    ("value", "arrow_type", "expected"),
    [
        (None, pa.string(), "invalid value null for parameter p: expected a string (string)"),
        (True, pa.int64(), "invalid value true for parameter p: expected an integer (int64)"),
        (False, pa.float64(), "invalid value false for parameter p: expected a number (double)"),
        ([1], pa.string(), "invalid value [1] for parameter p: expected a string (string)"),
        (
            {"a": 1},
            pa.bool_(),
            'invalid value {"a":1} for parameter p: expected true, false, 1, 0, yes or no (bool)',
        ),
        (
            "x'y",
            pa.date32(),
            'invalid value "x\'y" for parameter p: expected an ISO 8601 date such as '
            "2024-05-01 (date32[day])",
        ),
    ],
)
def test_invalid_value_shown_as_json(value: object, arrow_type: pa.DataType, expected: str) -> None:
    with pytest.raises(InvalidInput) as raised:
        convert_value(value, arrow_type, "parameter p")

    assert raised.value.message == expected


UINT64_KEYS = [2**64 - 1, 2**63, 5]


@pytest.fixture(scope="module")
def uint64_keys(store: FeatureStore) -> str:
    """A table keyed by uint64 values above and below 2^63-1."""
    table = pa.table({"k": pa.array(UINT64_KEYS, pa.uint64()), "v": ["top", "half", "small"]})
    store.write("types", "uint64_keys", table, definition=TableDefinition(["k"]))
    return "types/uint64_keys"


@pytest.mark.parametrize(
    ("filters", "expected"),
    [
        ([("k", "18446744073709551615")], [2**64 - 1]),
        ([("k__eq", "9223372036854775808")], [2**63]),
        ([("k__ne", "18446744073709551615")], [5, 2**63]),
        ([("k__gt", "9223372036854775807")], [2**63, 2**64 - 1]),
        ([("k__gte", "9223372036854775808")], [2**63, 2**64 - 1]),
        ([("k__lt", "18446744073709551615")], [5, 2**63]),
        ([("k__lte", "9223372036854775808")], [5, 2**63]),
        ([("k__gt", "-1")], [5, 2**63, 2**64 - 1]),
        ([("k__in", "18446744073709551615,5,-1")], [5, 2**64 - 1]),
    ],
)
def test_uint64_filter_selects_large_keys(
    store: FeatureStore, uint64_keys: str, filters: list[tuple[str, str]], expected: list[int]
) -> None:
    page = read_page(store, "types", "uint64_keys", filters=parse_filters(filters), order_by="k")

    assert page.table["k"].to_pylist() == expected
    assert page.total_rows == len(expected)


def test_uint64_lookup_finds_large_keys(store: FeatureStore, uint64_keys: str) -> None:
    reference = resolve_reference(f"{uint64_keys}:v", store.list_tables())
    ids = [2**64 - 1, -3, 2**63, "18446744073709551615", 4]

    result = lookup_entities(store, reference, ids)

    assert result.table["k"].to_pylist() == [2**64 - 1, 2**63]
    assert result.table["v"].to_pylist() == ["top", "half"]
    assert result.missing == [-3, 4]


def test_uint64_lookup_rejects_2_to_64(store: FeatureStore, uint64_keys: str) -> None:
    reference = resolve_reference(f"{uint64_keys}:v", store.list_tables())

    with pytest.raises(InvalidInput) as raised:
        lookup_entities(store, reference, [2**64])

    assert raised.value.message == (
        "invalid value 18446744073709551616 for entity id of key 'k' in types/uint64_keys: out "
        "of range; integers must fit in 64 bits (-2^63 to 2^64-1), and the column is uint64"
    )
