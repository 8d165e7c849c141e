"""Timestamp input over HTTP against a real server: each documented form is stored as the UTC
instant computed here by hand, and every other form is rejected naming the record and field.

Stored values are read back through the Parquet response, so the comparison is on the exact
integer count of microseconds or nanoseconds, not on a formatted string.
"""

from __future__ import annotations

import io
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import RunningServer

PARQUET = "application/vnd.apache.parquet"
NOON = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


@pytest.fixture(scope="module")
def server(module_server: RunningServer) -> RunningServer:
    return module_server


@pytest.fixture(scope="module")
def http(module_http: httpx.Client) -> httpx.Client:
    return module_http


def write_times(http: httpx.Client, name: str, values: list[Any]) -> httpx.Response:
    records = [{"row": row, "event_timestamp": value} for row, value in enumerate(values)]
    return http.post(f"/features/times/{name}", json={"records": records})


def stored_times(http: httpx.Client, name: str) -> pa.ChunkedArray:
    response = http.get(
        f"/features/times/{name}", params={"order_by": "row"}, headers={"Accept": PARQUET}
    )
    assert response.status_code == 200, response.text
    return pq.read_table(io.BytesIO(response.content))["event_timestamp"]


def micros_since_epoch(moment: datetime) -> int:
    return (moment - EPOCH) // timedelta(microseconds=1)


def error_message(response: httpx.Response) -> str:
    assert response.status_code == 400, response.text
    return response.json()["error"]["message"]


# ISO 8601 strings in records

MICROSECOND_FORMS = [
    ("2024-05-01T12:00:00Z", NOON),
    ("2024-05-01T12:00:00+02:00", NOON - timedelta(hours=2)),
    ("2024-05-01T12:00:00+0200", NOON - timedelta(hours=2)),
    ("2024-05-01T12:00:00+02", NOON - timedelta(hours=2)),
    ("2024-05-01T12:00:00-05:30", NOON + timedelta(hours=5, minutes=30)),
    ("2024-05-01T12:00:00-00:00", NOON),
    ("2024-05-01T12:00:00+14:00", NOON - timedelta(hours=14)),
    ("2024-05-01 12:00:00Z", NOON),
    ("2024-05-01 12:00:00", NOON),
    ("2024-05-01T12:00:00", NOON),
    ("2024-05-01T12:00Z", NOON),
    ("2024-05-01T12:00:00.5Z", NOON + timedelta(milliseconds=500)),
    ("2024-05-01T12:00:00.12Z", NOON + timedelta(milliseconds=120)),
    ("2024-05-01T12:00:00.123Z", NOON + timedelta(milliseconds=123)),
    ("2024-05-01T12:00:00.1234Z", NOON + timedelta(microseconds=123_400)),
    ("2024-05-01T12:00:00.12345Z", NOON + timedelta(microseconds=123_450)),
    ("2024-05-01T12:00:00.123456Z", NOON + timedelta(microseconds=123_456)),
    ("2024-05-01T12:00:00.123456000Z", NOON + timedelta(microseconds=123_456)),
    ("2024-05-01 23:30:00.25-01:00", datetime(2024, 5, 2, 0, 30, 0, 250_000, tzinfo=UTC)),
    ("2024-05-01", datetime(2024, 5, 1, tzinfo=UTC)),
    ("0001-01-01T00:00:00Z", datetime(1, 1, 1, tzinfo=UTC)),
    ("9999-12-31T23:59:59.999999Z", datetime(9999, 12, 31, 23, 59, 59, 999_999, tzinfo=UTC)),
]


def test_iso_forms_stored_as_utc(http: httpx.Client) -> None:
    values = [text for text, _ in MICROSECOND_FORMS]

    response = write_times(http, "iso_forms", values)
    assert response.status_code == 200, response.text
    stored = stored_times(http, "iso_forms")

    assert stored.type == pa.timestamp("us", tz="UTC")
    expected = [micros_since_epoch(moment) for _, moment in MICROSECOND_FORMS]
    assert stored.cast(pa.int64()).to_pylist() == expected


NANOSECOND_FORMS = [
    ("2024-05-01T12:00:00.1234567Z", 123_456_700),
    ("2024-05-01T12:00:00.12345678Z", 123_456_780),
    ("2024-05-01T12:00:00.123456789Z", 123_456_789),
    ("2024-05-01T12:00:00.000000001+01:00", 1 - 3_600_000_000_000),
    ("2024-05-01T12:00:00Z", 0),
]


def test_nanosecond_digits_kept(http: httpx.Client) -> None:
    values = [text for text, _ in NANOSECOND_FORMS]

    response = write_times(http, "nanoseconds", values)
    assert response.status_code == 200, response.text
    stored = stored_times(http, "nanoseconds")

    noon_nanoseconds = micros_since_epoch(NOON) * 1000
    assert stored.type == pa.timestamp("ns", tz="UTC")
    expected = [noon_nanoseconds + offset for _, offset in NANOSECOND_FORMS]
    assert stored.cast(pa.int64()).to_pylist() == expected


def test_json_output_is_utc(http: httpx.Client) -> None:
    assert write_times(http, "as_json", ["2024-05-01T12:00:00.5-03:00"]).status_code == 200

    rows = http.get("/features/times/as_json").json()["data"]

    assert rows == [{"row": 0, "event_timestamp": "2024-05-01T15:00:00.500000+00:00"}]


REJECTED_FORMS = [
    "2024",
    "2024-05",
    "20240501",
    "20240501T120000Z",
    "2024-W18-3",
    "2024-122",
    "2024-05-01T12",
    "2024-05-01T12:00:00,5Z",
    "2024-05-01T12:00:00.Z",
    "2024-05-01T12:00:00.1234567890Z",
    "2024-05-01T12:00:00 UTC",
    "2024-05-01T12:00:00[Europe/Paris]",
    "2024-05-01t12:00:00Z",
    "2024-05-01T12:00:00z",
    " 2024-05-01T12:00:00Z",
    "2024-05-01T12:00:00Z ",
    "2024-05-01T24:00:00Z",
    "2024-05-01T12:00:60Z",
    "2024-02-30",
    "2024-05-01T12:00:00+24:00",
    "1714564800",
    "",
    "10000-01-01",
    "9999-12-31T23:59:59.999999999Z",
]


@pytest.mark.parametrize("text", REJECTED_FORMS)
def test_other_forms_rejected(http: httpx.Client, server: RunningServer, text: str) -> None:
    response = write_times(http, "rejected", ["2024-05-01T12:00:00Z", text])

    message = error_message(response)
    assert message.startswith("record 1, field 'event_timestamp'")
    assert repr(text) in message
    assert not (server.root / "features" / "times" / "rejected.parquet").exists()


# Unix epoch numbers in records


def test_epoch_seconds_stored(http: httpx.Client) -> None:
    values = [1714564800, 1714564800.25, 0, -1, -62135596800, 253402300799, 1.0000005]
    expected_moments = [
        NOON,
        NOON + timedelta(milliseconds=250),
        EPOCH,
        EPOCH - timedelta(seconds=1),
        datetime(1, 1, 1, tzinfo=UTC),
        datetime(9999, 12, 31, 23, 59, 59, tzinfo=UTC),
        EPOCH + timedelta(seconds=1, microseconds=1),
    ]

    response = write_times(http, "epoch", values)
    assert response.status_code == 200, response.text
    stored = stored_times(http, "epoch")

    expected = [micros_since_epoch(moment) for moment in expected_moments]
    assert stored.cast(pa.int64()).to_pylist() == expected


@pytest.mark.parametrize("value", [1714564800000, 253402300800, -62135596801, 1e300])
def test_epoch_out_of_range_rejected(http: httpx.Client, value: float) -> None:
    message = error_message(write_times(http, "epoch_rejected", [0, value]))

    assert message.startswith("record 1, field 'event_timestamp'")
    assert "seconds" in message
    assert "milliseconds by 1000" in message


def test_boolean_timestamps_rejected(http: httpx.Client) -> None:
    message = error_message(write_times(http, "booleans", [True, False]))

    assert "'event_timestamp'" in message
    assert "bool" in message


# Request values: the batch timestamp and filters

HOURLY = [NOON + timedelta(hours=hour) for hour in range(4)]


@pytest.fixture(scope="module")
def hourly_table(http: httpx.Client) -> str:
    records = [
        {"entity_id": 1, "event_timestamp": moment.isoformat(), "hour": hour}
        for hour, moment in enumerate(HOURLY)
    ]
    response = http.post("/features/times/hourly", json={"records": records})
    assert response.status_code == 200, response.text
    return "times/hourly"


AS_OF_FORMS = [
    ("2024-05-01T13:00:00Z", 1),
    ("2024-05-01T12:59:59.999999Z", 0),
    ("2024-05-01T12:59:59.999999000Z", 0),
    ("2024-05-01 15:00:00+02:00", 1),
    ("2024-05-01T09:00:00-05:00", 2),
    ("2024-05-01T14:00", 2),
    ("2024-05-02", 3),
    (int(HOURLY[3].timestamp()), 3),
    (HOURLY[3].timestamp() - 0.000001, 2),
    (str(int(HOURLY[1].timestamp())), 1),
]


@pytest.mark.parametrize(("timestamp", "hour"), AS_OF_FORMS)
def test_batch_timestamp_forms(
    http: httpx.Client, hourly_table: str, timestamp: Any, hour: int
) -> None:
    body = {"feature_names": [hourly_table], "entity_ids": [1], "timestamp": timestamp}

    response = http.post("/features/batch", json=body)

    assert response.status_code == 200, response.text
    assert [row["hour"] for row in response.json()["features"][hourly_table]] == [hour]


@pytest.mark.parametrize(
    ("timestamp", "reason"),
    [
        ("2024-05-01T13:00:00.000000001Z", "nanosecond digits"),
        ("2024", "could be a date or Unix epoch seconds"),
        ("2024-05", "not an ISO 8601 timestamp"),
        ("20240501", "could be a date or Unix epoch seconds"),
        (1714564800000, "divide milliseconds by 1000"),
        ("1714564800000", "divide milliseconds by 1000"),
        ("2024-05-01T13:00:00+25:00", "UTC offset of 24 hours or more"),
    ],
)
def test_batch_timestamp_rejected(
    http: httpx.Client, hourly_table: str, timestamp: Any, reason: str
) -> None:
    body = {"feature_names": [hourly_table], "entity_ids": [1], "timestamp": timestamp}

    message = error_message(http.post("/features/batch", json=body))

    assert f"invalid timestamp {timestamp!r}" in message
    assert reason in message


@pytest.mark.parametrize(
    ("value", "hours"),
    [
        ("2024-05-01T13:00:00Z", [1, 2, 3]),
        ("2024-05-01 15:00:00+02:00", [1, 2, 3]),
        ("2024-05-01T13:00:00.000001Z", [2, 3]),
        ("2024-05-01", [0, 1, 2, 3]),
        (str(int(HOURLY[2].timestamp())), [2, 3]),
    ],
)
def test_filter_timestamp_forms(
    http: httpx.Client, hourly_table: str, value: str, hours: list[int]
) -> None:
    response = http.get(
        f"/features/{hourly_table}", params={"event_timestamp__gte": value, "order_by": "hour"}
    )

    assert response.status_code == 200, response.text
    assert [row["hour"] for row in response.json()["data"]] == hours


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        ("2024-05-01T13:00:00.123456789Z", "nanosecond digits"),
        ("2024", "could be a date"),
        ("May 1 2024", "not an ISO 8601 timestamp"),
    ],
)
def test_filter_timestamp_rejected(
    http: httpx.Client, hourly_table: str, value: str, reason: str
) -> None:
    response = http.get(f"/features/{hourly_table}", params={"event_timestamp__gte": value})

    message = error_message(response)
    assert repr(value) in message
    assert reason in message


def test_unencoded_plus_gets_hint(http: httpx.Client, hourly_table: str) -> None:
    # The '+' is sent as is, so the server reads a space in its place.
    url = f"/features/{hourly_table}?event_timestamp__gte=2024-05-01T13:00:00+00:00"

    message = error_message(http.get(url))

    assert "'2024-05-01T13:00:00 00:00' is not an ISO 8601 timestamp" in message
    assert message.endswith(
        "; in a URL query string a '+' reads as a space, so send it as %2B there"
    )


def test_timestamps_logged_no_traceback(server: RunningServer) -> None:
    assert "Traceback" not in server.log()
