"""Values that JSON and CSV cannot hold as they are: binary bytes in CSV, NaN and intervals in a
result that also contains a HUGEINT. Each response must be valid in its format, never a 500."""

from __future__ import annotations

import csv
import io
import json

import httpx
import pyarrow as pa
import pytest
from conftest import RunningServer

from sqlstore.store import FeatureStore, TableDefinition

CSV = "text/csv"


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
