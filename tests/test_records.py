"""JSON records to Arrow: columns, nulls, rejected values and timestamp parsing."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta, timezone

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from sqlstore.errors import InvalidInput
from sqlstore.records import normalize_timestamp_column, records_to_table
from sqlstore.store import FeatureStore


def epoch_microseconds(moment: datetime) -> int:
    """Microseconds since the Unix epoch, computed with integer arithmetic only."""
    delta = moment - datetime(1970, 1, 1, tzinfo=UTC)
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds


def parse_timestamps(values: list) -> pa.ChunkedArray:
    table = records_to_table([{"ts": value} for value in values])
    return normalize_timestamp_column(table, "ts")["ts"]


def rejection(records: list[dict]) -> str:
    with pytest.raises(InvalidInput) as raised:
        records_to_table(records)
    return raised.value.message


# Columns and nulls


def test_missing_keys_become_nulls() -> None:
    table = records_to_table([{"a": 1}, {"b": "x"}, {"a": 3, "b": None}])

    assert table.column_names == ["a", "b"]
    assert table["a"].to_pylist() == [1, None, 3]
    assert table["b"].to_pylist() == [None, "x", None]


def test_column_types_inferred() -> None:
    table = records_to_table(
        [{"i": 1, "f": 1.5, "s": "x", "b": True, "l": [1, 2]}, {"i": 2, "f": 2, "l": []}]
    )

    assert table.schema.field("i").type == pa.int64()
    assert table.schema.field("f").type == pa.float64()
    assert table.schema.field("s").type == pa.string()
    assert table.schema.field("b").type == pa.bool_()
    assert table.schema.field("l").type == pa.list_(pa.int64())
    assert table["f"].to_pylist() == [1.5, 2.0]


def test_all_null_field_kept() -> None:
    table = records_to_table([{"a": 1, "b": None}, {"a": 2}])

    assert table["b"].null_count == 2


def test_empty_records_rejected() -> None:
    with pytest.raises(InvalidInput):
        records_to_table([])


def test_non_object_record_rejected() -> None:
    message = rejection([{"a": 1}, [1, 2]])  # type: ignore[list-item]

    assert "record 1" in message


def test_invalid_field_name_rejected() -> None:
    message = rejection([{"a": 1, "bad name": 2}])

    assert "'bad name'" in message


# Rejected values name the record and the field


def test_nested_object_rejected() -> None:
    message = rejection([{"a": 1, "n": None}, {"a": 2, "n": {"x": 1}}])

    assert "record 1" in message
    assert "'n'" in message
    assert "nested" in message


def test_list_of_objects_rejected() -> None:
    message = rejection([{"n": [1]}, {"n": []}, {"n": [{"x": 1}]}])

    assert "record 2" in message
    assert "'n'" in message


def test_mixed_number_and_string_rejected() -> None:
    message = rejection([{"v": 1}, {"v": None}, {"v": "2"}])

    assert "record 2" in message
    assert "'v'" in message


def test_mixed_boolean_and_number_rejected() -> None:
    message = rejection([{"v": True}, {"v": 1}])

    assert "record 1" in message
    assert "'v'" in message


def test_integer_beyond_int64_rejected() -> None:
    message = rejection([{"v": 1}, {"v": 2**64}])

    assert "record 1" in message
    assert "'v'" in message


def test_integer_at_int64_limits_kept() -> None:
    table = records_to_table([{"v": -(2**63)}, {"v": 2**63 - 1}])

    assert table["v"].to_pylist() == [-(2**63), 2**63 - 1]


def test_inexact_integer_among_floats_rejected() -> None:
    message = rejection([{"v": 0.5}, {"v": 2}, {"v": 2**53 + 1}])

    assert "record 2" in message
    assert "'v'" in message


def test_exact_integer_among_floats_kept() -> None:
    table = records_to_table([{"v": 0.5}, {"v": 2**53}])

    assert table["v"].to_pylist() == [0.5, float(2**53)]


def test_lone_surrogate_rejected() -> None:
    message = rejection([{"s": "fine"}, {"s": "bad \ud800"}])

    assert "record 1" in message
    assert "'s'" in message


# Timestamp parsing


def test_iso_with_z_suffix() -> None:
    column = parse_timestamps(["2024-05-01T12:00:00Z"])

    assert column.type == pa.timestamp("us", tz="UTC")
    assert column.to_pylist() == [datetime(2024, 5, 1, 12, tzinfo=UTC)]


def test_iso_with_offsets() -> None:
    column = parse_timestamps(["2024-05-01T12:00:00+02:00", "2024-05-01T12:00:00-05:30"])

    expected = [
        datetime(2024, 5, 1, 12, tzinfo=timezone(timedelta(hours=2))),
        datetime(2024, 5, 1, 12, tzinfo=timezone(-timedelta(hours=5, minutes=30))),
    ]
    assert column.to_pylist() == expected
    assert column.to_pylist()[0].hour == 10


def test_naive_iso_taken_as_utc() -> None:
    column = parse_timestamps(["2024-05-01T12:00:00", "2024-05-01 13:30:00.25"])

    assert column.to_pylist() == [
        datetime(2024, 5, 1, 12, tzinfo=UTC),
        datetime(2024, 5, 1, 13, 30, 0, 250_000, tzinfo=UTC),
    ]


def test_date_only_is_midnight_utc() -> None:
    column = parse_timestamps(["2024-05-01", "2024-05-01T06:00:00Z"])

    assert column.to_pylist() == [
        datetime(2024, 5, 1, tzinfo=UTC),
        datetime(2024, 5, 1, 6, tzinfo=UTC),
    ]


def test_epoch_seconds_integers() -> None:
    column = parse_timestamps([1_714_564_800, 0, -1, None])

    assert column.type == pa.timestamp("us", tz="UTC")
    assert column.cast(pa.int64()).to_pylist() == [1_714_564_800_000_000, 0, -1_000_000, None]


def test_epoch_seconds_floats() -> None:
    column = parse_timestamps([1_714_564_800.5, 0.25])

    assert column.cast(pa.int64()).to_pylist() == [1_714_564_800_500_000, 250_000]


def test_nanosecond_strings_kept_exact() -> None:
    column = parse_timestamps(["2024-05-01T12:00:00.123456789Z", "2024-05-01T12:00:00Z"])

    seconds = epoch_microseconds(datetime(2024, 5, 1, 12, tzinfo=UTC)) // 1_000_000
    assert column.type == pa.timestamp("ns", tz="UTC")
    assert column.cast(pa.int64()).to_pylist() == [
        seconds * 10**9 + 123_456_789,
        seconds * 10**9,
    ]


def test_microsecond_strings_use_microseconds() -> None:
    column = parse_timestamps(["2024-05-01T12:00:00.123456Z"])

    expected = epoch_microseconds(datetime(2024, 5, 1, 12, 0, 0, 123_456, tzinfo=UTC))
    assert column.type == pa.timestamp("us", tz="UTC")
    assert column.cast(pa.int64()).to_pylist() == [expected]


def test_years_beyond_nanoseconds_kept() -> None:
    column = parse_timestamps(["9999-12-31T23:59:59Z", "1600-01-01T00:00:00Z"])

    assert column.to_pylist() == [
        datetime(9999, 12, 31, 23, 59, 59, tzinfo=UTC),
        datetime(1600, 1, 1, tzinfo=UTC),
    ]


@pytest.mark.parametrize(
    ("values", "record"),
    [
        (["2024-05-01T12:00:00Z", "yesterday"], 1),
        (["2024-05-01T12:00:00Z", None, "2024-13-01"], 2),
        (["1714564800"], 0),
        (["2024-05-01T25:00:00Z"], 0),
    ],
)
def test_bad_timestamp_string_rejected(values: list, record: int) -> None:
    with pytest.raises(InvalidInput) as raised:
        parse_timestamps(values)

    assert f"record {record}" in raised.value.message
    assert "'ts'" in raised.value.message
    assert repr(values[record]) in raised.value.message


def test_huge_epoch_number_rejected() -> None:
    with pytest.raises(InvalidInput) as raised:
        parse_timestamps([0, 1e20])

    assert "record 1" in raised.value.message


def test_boolean_timestamp_rejected() -> None:
    with pytest.raises(InvalidInput) as raised:
        parse_timestamps([True])

    assert "'ts'" in raised.value.message


def test_naive_arrow_timestamps_labelled_utc() -> None:
    table = pa.table({"ts": pa.array([datetime(2024, 5, 1, 12)], pa.timestamp("ns"))})
    column = normalize_timestamp_column(table, "ts")["ts"]

    assert column.type == pa.timestamp("us", tz="UTC")
    assert column.to_pylist() == [datetime(2024, 5, 1, 12, tzinfo=UTC)]


def test_arrow_dates_become_midnight() -> None:
    table = pa.table({"ts": pa.array([date(2024, 5, 1)], pa.date32())})
    column = normalize_timestamp_column(table, "ts")["ts"]

    assert column.to_pylist() == [datetime(2024, 5, 1, tzinfo=UTC)]


def test_written_timestamps_read_back_exact(tmp_path) -> None:
    store = FeatureStore(tmp_path)
    records = [
        {"entity_id": 1, "event_timestamp": "2024-05-01T12:00:00.123456789+01:00"},
        {"entity_id": 2, "event_timestamp": "2024-05-01"},
    ]
    result = store.write("events", "clicks", records_to_table(records))
    stored = pq.read_table(store.root / result.entry.path)

    day = epoch_microseconds(datetime(2024, 5, 1, tzinfo=UTC)) * 1_000
    assert result.entry.timestamp_column == "event_timestamp"
    assert stored.schema.field("event_timestamp").type == pa.timestamp("ns", tz="UTC")
    assert stored["event_timestamp"].cast(pa.int64()).to_pylist() == [
        day + 11 * 3_600 * 10**9 + 123_456_789,
        day,
    ]


def test_nanoseconds_beside_far_years_rejected() -> None:
    with pytest.raises(InvalidInput) as raised:
        parse_timestamps(["2024-05-01T12:00:00.123456789Z", "9999-01-01"])

    assert "'ts'" in raised.value.message
    assert "None" not in raised.value.message
