"""Request limits at their boundaries, against a real server with small limits: a value exactly
at each limit is accepted and one over it is rejected with a message naming the limit and the
setting that raises it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pyarrow.parquet as pq
import pytest
from conftest import RunningServer, start_scratch_server, stop_server

MAX_BODY_BYTES = 4096
MAX_RECORDS = 5
MAX_ENTITY_IDS = 4
MAX_COLUMNS = 6
MAX_LIMIT = 7
LIMITS = {
    "SQLSTORE_MAX_BODY_BYTES": str(MAX_BODY_BYTES),
    "SQLSTORE_MAX_RECORDS_PER_WRITE": str(MAX_RECORDS),
    "SQLSTORE_MAX_ENTITY_IDS": str(MAX_ENTITY_IDS),
    "SQLSTORE_MAX_COLUMNS": str(MAX_COLUMNS),
    "SQLSTORE_MAX_LIMIT": str(MAX_LIMIT),
    "SQLSTORE_DEFAULT_LIMIT": "3",
}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    running = start_scratch_server(tmp_path_factory, "limits", env=LIMITS)
    yield running
    stop_server(running)


@pytest.fixture(scope="module")
def http(server: RunningServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.base_url, timeout=30) as client:
        yield client


def error_message(response: httpx.Response, status: int) -> str:
    assert response.status_code == status, response.text
    return response.json()["error"]["message"]


def write(http: httpx.Client, path: str, records: list[dict], **options) -> httpx.Response:
    return http.post(path, json={"records": records, **options})


def padded_body(size: int) -> bytes:
    """Return a valid write body of exactly `size` bytes: one record, then spaces."""
    body = json.dumps({"records": [{"entity_id": 1, "text": "x"}]}).encode()
    assert len(body) <= size
    return body + b" " * (size - len(body))


def table_file(server: RunningServer, group: str, name: str) -> Path:
    return server.root / "features" / group / f"{name}.parquet"


# Request body size


def test_body_at_limit_accepted(http: httpx.Client, server: RunningServer) -> None:
    body = padded_body(MAX_BODY_BYTES)

    response = http.post(
        "/features/limits/body_at", content=body, headers={"Content-Type": "application/json"}
    )

    assert len(body) == MAX_BODY_BYTES
    assert response.status_code == 200, response.text
    assert table_file(server, "limits", "body_at").exists()


def test_body_over_limit_rejected(http: httpx.Client, server: RunningServer) -> None:
    body = padded_body(MAX_BODY_BYTES + 1)

    response = http.post(
        "/features/limits/body_over", content=body, headers={"Content-Type": "application/json"}
    )

    message = error_message(response, 413)
    assert str(MAX_BODY_BYTES) in message
    assert "SQLSTORE_MAX_BODY_BYTES" in message
    assert not table_file(server, "limits", "body_over").exists()


@pytest.mark.parametrize(("size", "status"), [(MAX_BODY_BYTES, 200), (MAX_BODY_BYTES + 1, 413)])
def test_streamed_body_boundary(http: httpx.Client, size: int, status: int) -> None:
    body = padded_body(size)
    chunks = (body[start : start + 1000] for start in range(0, len(body), 1000))

    response = http.post(
        f"/features/limits/streamed_{status}",
        content=chunks,
        headers={"Content-Type": "application/json"},
    )

    assert "content-length" not in {name.lower() for name in response.request.headers}
    assert response.status_code == status, response.text


def test_streamed_online_body_over_limit(http: httpx.Client) -> None:
    # The online lookup reads its body before routing, so the limit is hit outside the route.
    body = padded_body(MAX_BODY_BYTES + 1)
    chunks = (body[start : start + 1000] for start in range(0, len(body), 1000))

    response = http.post(
        "/get-online-features", content=chunks, headers={"Content-Type": "application/json"}
    )

    message = error_message(response, 413)
    assert "SQLSTORE_MAX_BODY_BYTES" in message


# Records per write


def test_records_at_limit_accepted(http: httpx.Client, server: RunningServer) -> None:
    records = [{"entity_id": index} for index in range(MAX_RECORDS)]

    response = write(http, "/features/limits/records_at", records)

    assert response.status_code == 200, response.text
    assert response.json()["rows_saved"] == MAX_RECORDS
    assert pq.read_table(table_file(server, "limits", "records_at")).num_rows == MAX_RECORDS


def test_records_over_limit_rejected(http: httpx.Client, server: RunningServer) -> None:
    records = [{"entity_id": index} for index in range(MAX_RECORDS + 1)]

    message = error_message(write(http, "/features/limits/records_over", records), 413)

    assert f"{MAX_RECORDS + 1} records" in message
    assert str(MAX_RECORDS) in message
    assert "SQLSTORE_MAX_RECORDS_PER_WRITE" in message
    assert not table_file(server, "limits", "records_over").exists()


# Entity ids per batch lookup


@pytest.fixture(scope="module")
def lookup_table(http: httpx.Client) -> str:
    records = [{"entity_id": index, "value": index * 10} for index in range(MAX_RECORDS)]
    response = write(http, "/features/limits/lookup", records)
    assert response.status_code == 200, response.text
    return "limits/lookup"


def test_entity_ids_at_limit_accepted(http: httpx.Client, lookup_table: str) -> None:
    entity_ids = list(range(MAX_ENTITY_IDS))

    response = http.post(
        "/features/batch", json={"feature_names": [lookup_table], "entity_ids": entity_ids}
    )

    assert response.status_code == 200, response.text
    rows = response.json()["features"][lookup_table]
    assert sorted(row["value"] for row in rows) == [index * 10 for index in entity_ids]


def test_entity_ids_over_limit_rejected(http: httpx.Client, lookup_table: str) -> None:
    entity_ids = list(range(MAX_ENTITY_IDS + 1))

    response = http.post(
        "/features/batch", json={"feature_names": [lookup_table], "entity_ids": entity_ids}
    )

    message = error_message(response, 413)
    assert f"{MAX_ENTITY_IDS + 1} entity ids" in message
    assert str(MAX_ENTITY_IDS) in message
    assert "SQLSTORE_MAX_ENTITY_IDS" in message


# Page size


def test_limit_at_maximum_accepted(http: httpx.Client, lookup_table: str) -> None:
    response = http.get(f"/features/{lookup_table}", params={"limit": MAX_LIMIT})

    assert response.status_code == 200, response.text
    assert response.json()["metadata"]["limit"] == MAX_LIMIT
    assert response.json()["metadata"]["returned_rows"] == MAX_RECORDS


def test_limit_over_maximum_rejected(http: httpx.Client, lookup_table: str) -> None:
    response = http.get(f"/features/{lookup_table}", params={"limit": MAX_LIMIT + 1})

    message = error_message(response, 400)
    assert f"limit {MAX_LIMIT + 1}" in message
    assert str(MAX_LIMIT) in message
    assert "SQLSTORE_MAX_LIMIT" in message


@pytest.mark.parametrize(
    ("variables", "expected"),
    [
        (
            {"SQLSTORE_MAX_LIMIT": "50", "SQLSTORE_DEFAULT_LIMIT": "100"},
            "default_limit 100 is more than max_limit 50; lower SQLSTORE_DEFAULT_LIMIT",
        ),
        ({"SQLSTORE_ONLINE_LOAD": "sometimes"}, "invalid SQLSTORE_ONLINE_LOAD='sometimes'"),
        ({"SQLSTORE_DUCKDB_THREADS": "-1"}, "invalid SQLSTORE_DUCKDB_THREADS=-1"),
        ({"SQLSTORE_ACCESS_LOG": "maybe"}, "invalid SQLSTORE_ACCESS_LOG='maybe'"),
        ({"SQLSTORE_SWITCH_INTERVAL_SECONDS": "0"}, "invalid SQLSTORE_SWITCH_INTERVAL_SECONDS=0.0"),
    ],
)
def test_invalid_setting_fails_start(
    tmp_path: Path, variables: dict[str, str], expected: str
) -> None:
    command = [sys.executable, "-m", "sqlstore", "serve", "--root", str(tmp_path)]
    env = {**os.environ, **variables}

    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=60)

    assert result.returncode == 1
    # rich wraps the message at the terminal width.
    assert expected in " ".join(result.stderr.split())
    assert "Traceback" not in result.stderr


# Columns per table


def wide_record(columns: int) -> dict[str, int]:
    return {"entity_id": 1, **{f"c{index}": index for index in range(1, columns)}}


def test_columns_at_limit_accepted(http: httpx.Client, server: RunningServer) -> None:
    response = write(http, "/features/limits/wide_at", [wide_record(MAX_COLUMNS)])

    assert response.status_code == 200, response.text
    stored = pq.read_table(table_file(server, "limits", "wide_at"))
    assert stored.num_columns == MAX_COLUMNS


def test_columns_over_limit_rejected(http: httpx.Client, server: RunningServer) -> None:
    message = error_message(write(http, "/features/limits/wide_over", [wide_record(7)]), 400)

    assert f"{MAX_COLUMNS + 1} columns" in message
    assert f"maximum {MAX_COLUMNS}" in message
    assert "SQLSTORE_MAX_COLUMNS" in message
    assert not table_file(server, "limits", "wide_over").exists()


def test_append_over_column_limit_rejected(http: httpx.Client, server: RunningServer) -> None:
    assert write(http, "/features/limits/wide_append", [wide_record(MAX_COLUMNS)]).is_success
    before = table_file(server, "limits", "wide_append").read_bytes()

    response = write(
        http, "/features/limits/wide_append", [{"entity_id": 2, "extra": 1}], mode="append"
    )

    message = error_message(response, 400)
    assert f"{MAX_COLUMNS + 1} columns" in message
    assert "SQLSTORE_MAX_COLUMNS" in message
    assert table_file(server, "limits", "wide_append").read_bytes() == before


# Identifier length: fixed limits, 63 characters for group and table names, 128 for columns


@pytest.mark.parametrize("part", ["group", "table"])
def test_name_at_63_characters_accepted(http: httpx.Client, part: str) -> None:
    name = "n" * 63
    path = f"/features/{name}/short" if part == "group" else f"/features/limits/{name}"

    response = write(http, path, [{"entity_id": 1}])

    assert response.status_code == 200, response.text
    assert http.get(path).json()["data"] == [{"entity_id": 1}]


@pytest.mark.parametrize("part", ["group", "table"])
def test_name_of_64_characters_rejected(
    http: httpx.Client, server: RunningServer, part: str
) -> None:
    name = "m" * 64
    path = f"/features/{name}/short" if part == "group" else f"/features/limits/{name}"

    message = error_message(write(http, path, [{"entity_id": 1}]), 400)

    assert "longer than 63 characters" in message
    assert not (server.root / "features" / name).exists()
    assert not table_file(server, "limits", name).exists()


def test_column_name_at_128_characters_accepted(http: httpx.Client) -> None:
    column = "c" * 128

    response = write(http, "/features/limits/long_column", [{"entity_id": 1, column: 5}])

    assert response.status_code == 200, response.text
    assert http.get("/features/limits/long_column").json()["data"] == [{"entity_id": 1, column: 5}]


def test_column_name_of_129_characters_rejected(http: httpx.Client) -> None:
    column = "c" * 129

    response = write(http, "/features/limits/longer_column", [{"entity_id": 1, column: 5}])

    message = error_message(response, 400)
    assert "longer than 128 characters" in message
    assert "record 0" in message


def test_limits_logged_no_traceback(server: RunningServer) -> None:
    assert "Traceback" not in server.log()
