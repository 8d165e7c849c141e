"""Values that JSON and CSV cannot hold as they are: binary bytes in CSV, NaN and intervals in a
result that also contains a HUGEINT. Each response must be valid in its format, never a 500."""

from __future__ import annotations

import csv
import decimal
import io
import json

import httpx
import pyarrow as pa
import pyarrow.ipc as pa_ipc
import pyarrow.parquet as pq
import pytest
from conftest import RunningServer

from sqlstore.api.encoding import dumps
from sqlstore.sql.results import encode_json
from sqlstore.store import FeatureStore, TableDefinition

CSV = "text/csv"
PARQUET = "application/vnd.apache.parquet"
ARROW = "application/vnd.apache.arrow.stream"


@pytest.fixture(scope="module")
def http(module_server: RunningServer, module_http: httpx.Client) -> httpx.Client:
    table = pa.table(
        {
            "entity_id": [1, 2, 3],
            "payload": pa.array([b"\xff\xfe", b"ok", None], pa.binary()),
        }
    )
    FeatureStore(module_server.root).write("encoding", "bytes", table)
    return module_http


def csv_rows(response: httpx.Response) -> list[dict[str, str]]:
    assert response.status_code == 200, response.text
    return list(csv.DictReader(io.StringIO(response.text)))


def binary_table(content: bytes, media_type: str) -> pa.Table:
    if media_type == PARQUET:
        return pq.read_table(pa.BufferReader(content))
    return pa_ipc.open_stream(content).read_all()


def test_binary_page_as_csv_is_hex(http: httpx.Client) -> None:
    response = http.get("/features/encoding/bytes", headers={"accept": CSV})

    rows = csv_rows(response)
    assert [row["payload"] for row in rows] == ["fffe", "6f6b", ""]


def test_binary_sql_result_as_csv_is_hex(http: httpx.Client) -> None:
    sql = "SELECT from_hex('ff00') AS b, {'x': 1, 'tag': from_hex('00')} AS point"

    response = http.get("/sql", params={"sql": sql}, headers={"accept": CSV})

    assert csv_rows(response) == [{"b": "ff00", "point": '{"x":1,"tag":"00"}'}]


def test_hugeint_result_keeps_nan_and_interval_valid(http: httpx.Client) -> None:
    sql = (
        "SELECT 'NaN'::DOUBLE AS f, 170141183460469231731687303715884105727::HUGEINT AS h, "
        "INTERVAL 2 HOUR AS i"
    )

    response = http.post("/sql", json={"sql": sql})

    assert response.status_code == 200, response.text
    # The standard parser rejects the bare NaN token that json.dumps would write by default.
    content = json.loads(response.text, parse_constant=lambda token: pytest.fail(token))
    assert content["data"] == [{"f": None, "h": 2**127 - 1, "i": "PT2H"}]


@pytest.mark.parametrize(
    ("accept", "media_type"),
    [
        ("text/csv;q=0, application/json", "application/json"),
        ("text/csv;q=0.1, application/vnd.apache.parquet;q=0.9", "application/vnd.apache.parquet"),
        ("application/json;q=0.5, text/csv", "text/csv; charset=utf-8"),
        ("text/html, */*;q=0.8", "application/json"),
        ("text/*", "text/csv; charset=utf-8"),
    ],
)
def test_accept_quality_decides_format(http: httpx.Client, accept: str, media_type: str) -> None:
    response = http.get("/features/encoding/bytes", headers={"accept": accept})

    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == media_type


def test_accept_refusing_every_format_is_406(http: httpx.Client) -> None:
    response = http.get("/features/encoding/bytes", headers={"accept": "application/json;q=0"})

    assert response.status_code == 406
    assert "unsupported Accept header" in response.json()["error"]["message"]


def test_unsigned_hugeint_values_exact(http: httpx.Client) -> None:
    sql = (
        "SELECT 340282366920938463463374607431768211455::UHUGEINT AS top, "
        "170141183460469231731687303715884105728::UHUGEINT AS half, 7::UHUGEINT AS small"
    )

    response = http.post("/sql", json={"sql": sql})

    assert response.status_code == 200, response.text
    assert response.json()["data"] == [{"top": str(2**128 - 1), "half": str(2**127), "small": "7"}]


NANOSECOND_TEXTS = [
    "2024-01-01T00:00:00.123456789+00:00",
    "2024-01-02T00:00:00.000000001+00:00",
    "2024-01-03T00:00:00+00:00",
]


@pytest.fixture(scope="module")
def nanosecond_table(module_server: RunningServer) -> str:
    """A keyed table whose event timestamp and one feature have nanoseconds."""
    moments = pa.array(
        [1_704_067_200_123_456_789, 1_704_153_600_000_000_001, 1_704_240_000_000_000_000],
        pa.timestamp("ns", tz="UTC"),
    )
    table = pa.table({"entity_id": [1, 2, 3], "event_timestamp": moments, "seen": moments})
    FeatureStore(module_server.root).write(
        "encoding", "nanos", table, definition=TableDefinition(entity_key=["entity_id"])
    )
    return "encoding/nanos"


def test_nanosecond_page_read(http: httpx.Client, nanosecond_table: str) -> None:
    response = http.get(f"/features/{nanosecond_table}")

    assert response.status_code == 200, response.text
    assert [row["seen"] for row in response.json()["data"]] == NANOSECOND_TEXTS


@pytest.mark.parametrize("repeats", [1, 4])
def test_nanosecond_online_lookup(http: httpx.Client, nanosecond_table: str, repeats: int) -> None:
    # One pass of three keys takes the few-keys path; four passes (12 keys) the numpy path.
    keys = [1, 2, 3] * repeats
    body = {"entities": {"entity_id": keys}, "features": [f"{nanosecond_table}:seen"]}

    response = http.post("/get-online-features", json=body)

    assert response.status_code == 200, response.text
    seen = response.json()["results"][1]
    assert seen["values"] == NANOSECOND_TEXTS * repeats
    assert seen["event_timestamps"] == NANOSECOND_TEXTS * repeats
    assert seen["statuses"] == ["PRESENT"] * len(keys)


def test_nanosecond_batch_lookup(http: httpx.Client, nanosecond_table: str) -> None:
    body = {"feature_names": [f"{nanosecond_table}:seen"], "entity_ids": [3, 1]}

    response = http.post("/features/batch", json=body)

    assert response.status_code == 200, response.text
    assert NANOSECOND_TEXTS[0] in response.text
    assert NANOSECOND_TEXTS[2] in response.text


END_OF_DAY_SQL = "SELECT TIME '24:00:00' AS t, TIME '01:02:03.5' AS u"
# 38 digits, more than a float holds.
WIDE_DECIMAL_TEXT = "123456789012345678901234567890123456.70"


@pytest.fixture(scope="module")
def exact_table(module_server: RunningServer) -> str:
    """A keyed table with a time of 24:00:00 and a decimal of 38 digits."""
    table = pa.table(
        {
            "entity_id": [1, 2, 3],
            "clock": pa.array([86_400_000_000, 3_723_500_000, None], pa.time64("us")),
            "amount": pa.array(
                [decimal.Decimal(WIDE_DECIMAL_TEXT), decimal.Decimal("1.25"), None],
                pa.decimal128(38, 2),
            ),
        }
    )
    FeatureStore(module_server.root).write(
        "encoding", "exact", table, definition=TableDefinition(entity_key=["entity_id"])
    )
    return "encoding/exact"


def test_end_of_day_time_sql_json(http: httpx.Client) -> None:
    response = http.post("/sql", json={"sql": END_OF_DAY_SQL})

    assert response.status_code == 200, response.text
    assert response.json()["data"] == [{"t": "24:00:00", "u": "01:02:03.500000"}]


def test_end_of_day_time_sql_csv(http: httpx.Client) -> None:
    response = http.post("/sql", json={"sql": END_OF_DAY_SQL}, headers={"accept": CSV})

    assert csv_rows(response) == [{"t": "24:00:00.000000", "u": "01:02:03.500000"}]


@pytest.mark.parametrize("media_type", [PARQUET, ARROW])
def test_end_of_day_time_sql_binary(http: httpx.Client, media_type: str) -> None:
    response = http.post("/sql", json={"sql": END_OF_DAY_SQL}, headers={"accept": media_type})

    assert response.status_code == 200, response.text
    table = binary_table(response.content, media_type)
    # 24:00:00 is 86,400 seconds in microseconds, which Python's time cannot show.
    assert table["t"].cast(pa.int64()).to_pylist() == [86_400_000_000]
    assert table["u"].cast(pa.int64()).to_pylist() == [3_723_500_000]


def test_end_of_day_time_page(http: httpx.Client, exact_table: str) -> None:
    response = http.get(f"/features/{exact_table}", params={"columns": "entity_id,clock"})

    assert response.status_code == 200, response.text
    assert response.json()["data"] == [
        {"entity_id": 1, "clock": "24:00:00"},
        {"entity_id": 2, "clock": "01:02:03.500000"},
        {"entity_id": 3, "clock": None},
    ]


def test_end_of_day_time_page_csv(http: httpx.Client, exact_table: str) -> None:
    params = {"columns": "entity_id,clock"}
    response = http.get(f"/features/{exact_table}", params=params, headers={"accept": CSV})

    assert [row["clock"] for row in csv_rows(response)] == [
        "24:00:00.000000",
        "01:02:03.500000",
        "",
    ]


def test_wide_decimal_sql_exact(http: httpx.Client) -> None:
    sql = (
        "SELECT 123456789012345678901234567890123456.7::DECIMAL(38,1) AS d, "
        "1.25::DECIMAL(10,2) AS s, 7.00::DECIMAL(10,2) AS w"
    )

    response = http.post("/sql", json={"sql": sql})

    assert response.status_code == 200, response.text
    expected = b'"data":[{"d":123456789012345678901234567890123456.7,"s":1.25,"w":7}]'
    assert expected in response.content


def test_wide_decimal_page_exact(http: httpx.Client, exact_table: str) -> None:
    response = http.get(f"/features/{exact_table}", params={"columns": "entity_id,amount"})

    assert response.status_code == 200, response.text
    expected = (
        b'"data":[{"entity_id":1,"amount":123456789012345678901234567890123456.7},'
        b'{"entity_id":2,"amount":1.25},{"entity_id":3,"amount":null}]'
    )
    assert expected in response.content


def test_wide_decimal_batch_lookup_exact(http: httpx.Client, exact_table: str) -> None:
    # A lookup as of a given time runs in DuckDB and encodes the rows with `table_records`.
    body = {
        "feature_names": [f"{exact_table}:amount"],
        "entity_ids": [1, 2],
        "timestamp": "2100-01-01T00:00:00Z",
    }

    response = http.post("/features/batch", json=body)

    assert response.status_code == 200, response.text
    expected = (
        b'[{"entity_id":1,"amount":123456789012345678901234567890123456.7},'
        b'{"entity_id":2,"amount":1.25}]'
    )
    assert expected in response.content


def test_wide_decimal_page_csv_exact(http: httpx.Client, exact_table: str) -> None:
    params = {"columns": "entity_id,amount"}
    response = http.get(f"/features/{exact_table}", params=params, headers={"accept": CSV})

    assert [row["amount"] for row in csv_rows(response)] == [WIDE_DECIMAL_TEXT, "1.25", ""]


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (
            {"big": 2**70, "d": decimal.Decimal("123456789012345678901234567890.5")},
            b'{"big":1180591620717411303424,"d":123456789012345678901234567890.5}',
        ),
        (
            {"s": "a\ud800", "d": [decimal.Decimal("-0.10")]},
            b'{"s":"a\\ud800","d":[-0.1]}',
        ),
        (
            {"k\udc00": decimal.Decimal("2.50"), "n": float("nan")},
            b'{"k\\udc00":2.5,"n":null}',
        ),
    ],
)
def test_json_fallback_keeps_decimals(content: dict, expected: bytes) -> None:
    assert encode_json(content) == expected
    assert dumps(content) == expected


def test_end_of_day_time_online_lookup(http: httpx.Client, exact_table: str) -> None:
    body = {"entities": {"entity_id": [1, 2, 3]}, "features": [f"{exact_table}:clock"]}

    response = http.post("/get-online-features", json=body)

    assert response.status_code == 200, response.text
    assert response.json()["results"][1]["values"] == ["24:00:00", "01:02:03.500000", None]


def test_wide_decimal_online_lookup_exact(http: httpx.Client, exact_table: str) -> None:
    body = {"entities": {"entity_id": [1, 2]}, "features": [f"{exact_table}:amount"]}

    response = http.post("/get-online-features", json=body)

    assert response.status_code == 200, response.text
    expected = b'"values":[123456789012345678901234567890123456.7,1.25]'
    assert expected in response.content
