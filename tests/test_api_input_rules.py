"""Input rules of the feature routes on a real server: keyless tables, column descriptions,
feature reference syntax, encoded slashes in paths, repeated query-string keys, and the Accept
header of the lookup routes.

The store contains one small table written by the test module, so every expected value below is
read off `SCORES` by hand.
"""

from __future__ import annotations

import http.client as http_client
import io
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit

import httpx
import pyarrow as pa
import pyarrow.csv as pa_csv
import pyarrow.parquet as pq
import pytest
from conftest import RunningServer, start_server, stop_server

from sqlstore.client import FeatureStoreClient, FeatureStoreError
from sqlstore.store import FeatureStore

# The latest row of entity 1 is its second row (2020-01-02); entity 2 has one row.
SCORES = pa.table(
    {
        "entity_id": [1, 1, 2],
        "event_timestamp": pa.array(
            [
                datetime(2020, 1, 1, tzinfo=UTC),
                datetime(2020, 1, 2, tzinfo=UTC),
                datetime(2020, 1, 1, tzinfo=UTC),
            ],
            pa.timestamp("us", tz="UTC"),
        ),
        "score": [1.5, 2.5, 4.0],
        "label": ["a", "b", "c"],
    }
)
SCORE_NAME = "g/scores:score"
LABEL_NAME = "g/scores:label"
EMPTY_PART_REFERENCES = ["g/scores:", ":score", "/scores:score", "g/:score", "g/scores:score,"]
EXPECTED_FORM = "'group/name:column'"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    root = tmp_path_factory.mktemp("rules_store")
    FeatureStore(root).write("g", "scores", SCORES)
    running = start_server(root, tmp_path_factory.mktemp("rules_logs") / "server.log")
    yield running
    stop_server(running)


@pytest.fixture(scope="module")
def http(server: RunningServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.base_url, timeout=30) as client:
        yield client


def error_message(response: httpx.Response, status: int) -> str:
    assert response.status_code == status, response.text
    return response.json()["error"]["message"]


def raw_get(base_url: str, path: str) -> httpx.Response:
    """Send `path` byte for byte, so that no client decodes or re-encodes it."""
    address = urlsplit(base_url)
    connection = http_client.HTTPConnection(address.hostname, address.port, timeout=30)
    try:
        connection.request("GET", path)
        response = connection.getresponse()
        return httpx.Response(
            response.status, headers=response.getheaders(), content=response.read()
        )
    finally:
        connection.close()


def online(http: httpx.Client, features: list[str], accept: str | None = None) -> httpx.Response:
    headers = {"Accept": accept} if accept else {}
    body = {"entities": {"entity_id": [2, 9, 1]}, "features": features}
    return http.post("/get-online-features", json=body, headers=headers)


def batch(http: httpx.Client, names: list[str], accept: str | None = None) -> httpx.Response:
    headers = {"Accept": accept} if accept else {}
    body = {"feature_names": names, "entity_ids": [2, 9, 1]}
    return http.post("/features/batch", json=body, headers=headers)


# Keyless tables


def test_empty_entity_key_is_keyless(http: httpx.Client) -> None:
    records = [{"entity_id": 1, "x": 2}, {"entity_id": 1, "x": 3}]
    written = http.post("/features/g/keyless", json={"records": records, "entity_key": []})
    listed = {t["name"]: t for t in http.get("/features").json()["tables"]}
    page = http.get("/features/g/keyless")

    assert written.status_code == 200
    assert listed["keyless"]["entity_key"] == []
    assert listed["keyless"]["sorted_by"] == []
    assert [row["x"] for row in page.json()["data"]] == [2, 3]


def test_keyless_table_rejected_by_lookups(http: httpx.Client) -> None:
    records = [{"entity_id": 1, "x": 2}]
    http.post("/features/g/keyless_lookup", json={"records": records, "entity_key": []})
    online_response = http.post(
        "/get-online-features",
        json={"entities": {"entity_id": [1]}, "features": ["g/keyless_lookup:x"]},
    )
    batch_response = http.post(
        "/features/batch", json={"feature_names": ["g/keyless_lookup"], "entity_ids": [1]}
    )
    training = http.post(
        "/training-set",
        json={
            "entities": [{"entity_id": 1, "event_timestamp": "2021-01-01T00:00:00Z"}],
            "features": ["g/keyless_lookup"],
        },
    )

    for response in (online_response, batch_response, training):
        message = error_message(response, 400)
        assert "g/keyless_lookup has no entity key" in message
        assert "declare entity_key" in message


def test_keyless_append_keeps_no_key(http: httpx.Client) -> None:
    http.post("/features/g/keyless_append", json={"records": [{"x": 1}], "entity_key": []})
    keyed = http.post(
        "/features/g/keyless_append",
        json={"records": [{"x": 2}], "mode": "append", "entity_key": ["x"]},
    )
    appended = http.post(
        "/features/g/keyless_append", json={"records": [{"x": 3}], "mode": "append"}
    )

    assert "differs from the registered []" in error_message(keyed, 409)
    assert appended.status_code == 200
    assert appended.json()["row_count"] == 2


# Column descriptions


def test_unknown_described_column_rejected(http: httpx.Client) -> None:
    body = {"records": [{"entity_id": 1, "x": 2}], "column_descriptions": {"nope": "text"}}
    response = http.post("/features/g/described", json=body)
    after = http.get("/features/g/described")

    message = error_message(response, 400)
    assert "'nope'" in message
    assert "entity_id, x" in message
    assert after.status_code == 404


def test_described_stored_column_on_append(http: httpx.Client) -> None:
    http.post("/features/g/described_append", json={"records": [{"entity_id": 1, "x": 2}]})
    body = {
        "records": [{"entity_id": 2}],
        "mode": "append",
        "column_descriptions": {"x": "stored before"},
    }
    response = http.post("/features/g/described_append", json=body)
    listed = {t["name"]: t for t in http.get("/features").json()["tables"]}

    assert response.status_code == 200
    columns = {c["name"]: c["description"] for c in listed["described_append"]["columns"]}
    assert columns["x"] == "stored before"


# Feature references


@pytest.mark.parametrize("reference", EMPTY_PART_REFERENCES)
def test_empty_reference_part_online(http: httpx.Client, reference: str) -> None:
    message = error_message(online(http, [reference]), 400)

    assert f"invalid feature reference {reference!r}" in message
    assert EXPECTED_FORM in message


@pytest.mark.parametrize("reference", EMPTY_PART_REFERENCES)
def test_empty_reference_part_batch(http: httpx.Client, reference: str) -> None:
    message = error_message(batch(http, [reference]), 400)

    assert f"invalid feature reference {reference!r}" in message
    assert EXPECTED_FORM in message


@pytest.mark.parametrize("reference", EMPTY_PART_REFERENCES)
def test_empty_reference_part_training(http: httpx.Client, reference: str) -> None:
    body = {
        "entities": [{"entity_id": 1, "event_timestamp": "2021-01-01T00:00:00Z"}],
        "features": [reference],
    }
    message = error_message(http.post("/training-set", json=body), 400)

    assert f"invalid feature reference {reference!r}" in message
    assert EXPECTED_FORM in message


@pytest.mark.parametrize("reference", EMPTY_PART_REFERENCES)
def test_empty_reference_part_client(server: RunningServer, reference: str) -> None:
    with FeatureStoreClient(server.base_url) as client:
        with pytest.raises(FeatureStoreError) as raised:
            client.get_online_features([reference], {"entity_id": [1]})

    assert raised.value.status_code == 400
    assert f"invalid feature reference {reference!r}" in raised.value.message


# Encoded slashes in paths


@pytest.mark.parametrize(
    ("path", "value"),
    [
        ("/features/g%2Fx/scores", "g/x"),
        ("/features/g%2fscores", "g/scores"),
        ("/features/g/scores%2Finfo", "scores/info"),
        ("/features/g/x%2Fy/info", "x/y"),
    ],
)
def test_encoded_slash_is_400(server: RunningServer, path: str, value: str) -> None:
    message = error_message(raw_get(server.base_url, path), 400)

    assert repr(value) in message
    assert "cannot contain '/'" in message


# Repeated query-string keys


@pytest.mark.parametrize(
    ("query", "key"),
    [
        ("limit=1&limit=2", "limit"),
        ("offset=0&offset=1", "offset"),
        ("columns=score&columns=label", "columns"),
        ("order_by=score&order_by=-score", "order_by"),
    ],
)
def test_repeated_page_key_is_400(http: httpx.Client, query: str, key: str) -> None:
    message = error_message(http.get(f"/features/g/scores?{query}"), 400)

    assert f"query parameter {key!r} is given 2 times" in message


def test_repeated_filters_are_anded(http: httpx.Client) -> None:
    response = http.get("/features/g/scores?score__gte=2&score__lte=3&columns=label")

    assert response.status_code == 200
    assert response.json()["data"] == [{"label": "b"}]


def test_repeated_sql_key_is_400(http: httpx.Client) -> None:
    response = http.get("/sql", params=[("sql", "SELECT 1"), ("sql", "SELECT 2")])

    assert "query parameter 'sql' is given 2 times" in error_message(response, 400)


def test_repeated_sql_limit_is_400(http: httpx.Client) -> None:
    response = http.get("/sql", params=[("sql", "SELECT 1"), ("_limit", "1"), ("_limit", "2")])

    assert "query parameter '_limit' is given 2 times" in error_message(response, 400)


# Accept header of the lookup routes


def expected_online_table() -> dict[str, list[Any]]:
    """Entities 2, 9 and 1: entity 9 has no row, entity 1's latest row is its second."""
    return {"entity_id": [2, 9, 1], SCORE_NAME: [4.0, None, 2.5], LABEL_NAME: ["c", None, "b"]}


def test_online_csv(http: httpx.Client) -> None:
    response = online(http, [SCORE_NAME, LABEL_NAME], accept="text/csv")
    # The CSV writer leaves a null empty, as it does an empty string.
    options = pa_csv.ConvertOptions(strings_can_be_null=True)
    table = pa_csv.read_csv(io.BytesIO(response.content), convert_options=options)

    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/csv")
    assert table.to_pydict() == expected_online_table()


def test_online_parquet(server: RunningServer, http: httpx.Client) -> None:
    response = online(http, [SCORE_NAME, LABEL_NAME], accept="application/vnd.apache.parquet")
    table = pq.read_table(io.BytesIO(response.content))
    stored = pq.read_schema(server.root / "features" / "g" / "scores.parquet")

    assert response.status_code == 200
    assert table.to_pydict() == expected_online_table()
    assert table.schema.field(SCORE_NAME).type == stored.field("score").type
    assert table.schema.field(LABEL_NAME).type == pa.string()


def test_online_csv_mixed_key_types(http: httpx.Client) -> None:
    body = {"entities": {"entity_id": [2, "1"]}, "features": [SCORE_NAME]}
    response = http.post("/get-online-features", json=body, headers={"Accept": "text/csv"})

    # The key is stored as an integer, so "1" comes back as the number 1, not as quoted text.
    assert response.status_code == 200
    assert response.text.splitlines() == ['"entity_id","g/scores:score"', "2,4", "1,2.5"]


def test_online_unsupported_accept(http: httpx.Client) -> None:
    response = online(http, [SCORE_NAME], accept="image/png")

    assert "unsupported Accept header 'image/png'" in error_message(response, 406)


def test_online_json_by_default(http: httpx.Client) -> None:
    response = online(http, [SCORE_NAME], accept="application/json")

    assert response.status_code == 200
    assert response.json()["results"][1]["values"] == [4.0, None, 2.5]


def test_batch_csv(http: httpx.Client) -> None:
    response = batch(http, ["g/scores:score,label"], accept="text/csv")
    table = pa_csv.read_csv(io.BytesIO(response.content))

    assert response.status_code == 200
    assert table.column("entity_id").to_pylist() == [2, 1]
    assert table.column("score").to_pylist() == [4.0, 2.5]
    assert table.column("label").to_pylist() == ["c", "b"]


def test_batch_parquet(http: httpx.Client) -> None:
    response = batch(http, ["g/scores:score,label"], accept="application/vnd.apache.parquet")
    table = pq.read_table(io.BytesIO(response.content))

    assert response.status_code == 200
    assert table.column("entity_id").to_pylist() == [2, 1]
    assert table.column("score").to_pylist() == [4.0, 2.5]
    assert table.column("label").to_pylist() == ["c", "b"]
    assert table.column("event_timestamp").to_pylist() == [
        datetime(2020, 1, 1, tzinfo=UTC),
        datetime(2020, 1, 2, tzinfo=UTC),
    ]


def test_batch_tabular_needs_one_name(http: httpx.Client) -> None:
    response = batch(http, ["g/scores:score", "g/scores:label"], accept="text/csv")

    assert "feature_names has 2 names" in error_message(response, 400)


def test_batch_unsupported_accept(http: httpx.Client) -> None:
    response = batch(http, ["g/scores"], accept="image/png")

    assert "unsupported Accept header 'image/png'" in error_message(response, 406)


def test_batch_formats_cached_apart(http: httpx.Client) -> None:
    as_json = batch(http, ["g/scores:score"])
    as_csv = batch(http, ["g/scores:score"], accept="text/csv")
    as_json_again = batch(http, ["g/scores:score"])

    assert as_json.headers["content-type"] == "application/json"
    assert as_csv.headers["content-type"].startswith("text/csv")
    assert as_json_again.headers["content-type"] == "application/json"
