"""Server logs on a real server: one line per request with its fields, JSON lines on request, the
start-up configuration, caught errors with their request ids, and the configurable level."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import pyarrow as pa
import pytest
from conftest import RunningServer, start_server, stop_server

from sqlstore.store import FeatureStore


def make_store(root: Path) -> Path:
    FeatureStore(root).write("g", "t", pa.table({"entity_id": [1, 2], "value": [1.0, 2.0]}))
    return root


def json_lines(server: RunningServer) -> list[dict[str, Any]]:
    """Parse every log line; fails on any line that is not a JSON object."""
    return [json.loads(line) for line in server.log().splitlines() if line.strip()]


def request_lines(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [record for record in records if record.get("logger") == "sqlstore.api.middleware"]


def test_json_request_lines(tmp_path: Path) -> None:
    server = start_server(
        make_store(tmp_path / "store"), tmp_path / "server.log", options=("--log-format", "json")
    )
    try:
        first = httpx.get(server.base_url + "/features/g/t?limit=1")
        second = httpx.get(server.base_url + "/features/g/t?limit=1")
        missing = httpx.get(server.base_url + "/features/g/missing")
    finally:
        stop_server(server)
    records = json_lines(server)
    by_id = {record["request_id"]: record for record in request_lines(records)}

    for response, cache in ((first, "miss"), (second, "hit-memory")):
        line = by_id[response.headers["x-request-id"]]
        assert line["method"] == "GET"
        assert line["path"] == "/features/g/t"
        assert line["route"] == "/features/{group}/{name}"
        assert line["status"] == 200
        assert line["cache"] == cache == response.headers["x-cache"]
        assert isinstance(line["duration_ms"], float)
        assert line["duration_ms"] > 0
        assert line["level"] == "INFO"
        assert line["client"].startswith("127.0.0.1:")
    assert by_id[missing.headers["x-request-id"]]["status"] == 404
    assert by_id[missing.headers["x-request-id"]]["cache"] == "-"


def test_caught_error_logged_with_request_id(tmp_path: Path) -> None:
    server = start_server(make_store(tmp_path / "store"), tmp_path / "server.log")
    try:
        not_found = httpx.get(server.base_url + "/features/g/missing")
        no_route = httpx.get(server.base_url + "/no/such/route")
        bad_json = httpx.post(
            server.base_url + "/features/g/t",
            content=b"{not json",
            headers={"content-type": "application/json"},
        )
    finally:
        stop_server(server)
    log = server.log()

    for response in (not_found, no_route, bad_json):
        request_id = response.headers["x-request-id"]
        error_lines = [
            line
            for line in log.splitlines()
            if request_id in line and "sqlstore.api.middleware" not in line
        ]
        assert response.status_code >= 400
        assert error_lines, f"no error line for {response.status_code} {request_id}"
        assert str(response.status_code) in error_lines[0]


def test_startup_configuration_logged(tmp_path: Path) -> None:
    server = start_server(
        make_store(tmp_path / "store"),
        tmp_path / "server.log",
        env={"SQLSTORE_MAX_LIMIT": "1234", "SQLSTORE_DUCKDB_THREADS": "3"},
        options=("--log-format", "json"),
    )
    stop_server(server)
    messages = [record["message"] for record in json_lines(server)]

    settings = [message for message in messages if message.startswith("settings: ")]
    assert len(settings) == 1
    assert "max_limit=1234" in settings[0]
    assert " duckdb_threads=3 " in settings[0] + " "
    assert f"root={server.root}" in settings[0]
    assert any(message.startswith("access control off") for message in messages)
    assert any(message.startswith("starting server for") for message in messages)


def test_log_level_variable_hides_info(tmp_path: Path) -> None:
    server = start_server(
        make_store(tmp_path / "store"),
        tmp_path / "server.log",
        env={"SQLSTORE_LOG_LEVEL": "warning"},
    )
    try:
        httpx.get(server.base_url + "/features/g/t")
    finally:
        stop_server(server)
    log = server.log()

    assert " INFO " not in log
    assert "GET /features/g/t 200" not in log


def test_serve_option_overrides_variable(tmp_path: Path) -> None:
    server = start_server(
        make_store(tmp_path / "store"),
        tmp_path / "server.log",
        env={"SQLSTORE_LOG_LEVEL": "error"},
        options=("--log-level", "info"),
    )
    try:
        response = httpx.get(server.base_url + "/features/g/t")
    finally:
        stop_server(server)

    assert f"request={response.headers['x-request-id']}" in server.log()


def test_two_workers_log_json(tmp_path: Path) -> None:
    server = start_server(
        make_store(tmp_path / "store"),
        tmp_path / "server.log",
        workers=2,
        options=("--log-format", "json"),
    )
    try:
        ids = [
            httpx.get(server.base_url + "/features/g/t").headers["x-request-id"] for _ in range(10)
        ]
    finally:
        stop_server(server)
    records = json_lines(server)

    logged = {record["request_id"] for record in request_lines(records)}
    assert set(ids) <= logged
    settings = [record for record in records if record["message"].startswith("settings: ")]
    assert len({record["process"] for record in settings}) == 2
    # The CPU cores are split between the workers' DuckDB catalogs.
    threads = max(1, (os.cpu_count() or 1) // 2)
    assert all(f" duckdb_threads={threads} " in record["message"] + " " for record in settings)


def test_invalid_log_format_rejected(tmp_path: Path) -> None:
    completed = subprocess.run(
        [sys.executable, "-m", "sqlstore", "serve", "--root", str(tmp_path), "--log-format", "xml"],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "COLUMNS": "200"},
    )

    assert completed.returncode == 2
    assert "'xml' is not one of 'text', 'json'" in completed.stderr


@pytest.mark.parametrize("level", ["DEBUG", "warning"])
def test_log_level_case_insensitive(tmp_path: Path, level: str) -> None:
    completed = subprocess.run(
        [sys.executable, "-m", "sqlstore", "--log-level", level, "token", "list"],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "SQLSTORE_ROOT": str(tmp_path)},
    )

    assert completed.returncode == 0, completed.stderr


@pytest.mark.parametrize(
    ("options", "env"),
    [(("--no-access-log",), {}), ((), {"SQLSTORE_ACCESS_LOG": "false"})],
)
def test_access_log_can_be_turned_off(
    tmp_path: Path, options: tuple[str, ...], env: dict[str, str]
) -> None:
    server = start_server(
        make_store(tmp_path / "store"),
        tmp_path / "server.log",
        env=env,
        options=("--log-format", "json", *options),
    )
    try:
        response = httpx.get(server.base_url + "/features/g/t?limit=1")
        missing = httpx.get(server.base_url + "/features/g/missing")
    finally:
        stop_server(server)
    records = json_lines(server)

    assert response.status_code == 200
    assert request_lines(records) == []
    # Caught errors are still logged with their request id.
    assert any(missing.headers["x-request-id"] in json.dumps(record) for record in records)


HOSTILE_PATH = "/features/us%0aer/x%1b%5C"
# The path as the server receives it (percent-decoded), and as a text log line must show it.
RECEIVED_PATH = "/features/us\ner/x\x1b\\"
ESCAPED_PATH = "/features/us\\ner/x\\x1b\\\\"


def test_text_log_escapes_path(tmp_path: Path) -> None:
    server = start_server(make_store(tmp_path / "store"), tmp_path / "server.log")
    try:
        response = httpx.get(server.base_url + HOSTILE_PATH)
    finally:
        stop_server(server)
    log = server.log()
    request_id = response.headers["x-request-id"]
    lines = [line for line in log.splitlines() if request_id in line]

    assert response.status_code == 400
    assert "\x1b" not in log
    # The access line and the error line each show the same escaped path.
    assert len(lines) == 2
    assert all(f"GET {ESCAPED_PATH} " in line for line in lines)


def test_json_log_keeps_received_path(tmp_path: Path) -> None:
    server = start_server(
        make_store(tmp_path / "store"), tmp_path / "server.log", options=("--log-format", "json")
    )
    try:
        response = httpx.get(server.base_url + HOSTILE_PATH)
    finally:
        stop_server(server)
    records = json_lines(server)
    by_id = {record["request_id"]: record for record in request_lines(records)}

    line = by_id[response.headers["x-request-id"]]
    assert line["path"] == RECEIVED_PATH
    assert line["message"].startswith(f"GET {ESCAPED_PATH} 400 ")


@pytest.mark.parametrize("level", ["info", "debug"])
def test_query_lines_at_info_only_when_cut(tmp_path: Path, level: str) -> None:
    options = ("--log-format", "json", "--log-level", level)
    server = start_server(make_store(tmp_path / "store"), tmp_path / "server.log", options=options)
    sql = "SELECT entity_id FROM g.t ORDER BY entity_id"
    try:
        whole = httpx.post(server.base_url + "/sql", json={"sql": sql})
        cut = httpx.post(server.base_url + "/sql", json={"sql": sql, "limit": 1})
    finally:
        stop_server(server)
    records = json_lines(server)
    query_lines = {
        record["message"].split(":")[0]: record
        for record in records
        if record.get("logger") == "sqlstore.sql.service"
    }

    whole_line = query_lines.get(f"request {whole.headers['x-request-id']}")
    cut_line = query_lines[f"request {cut.headers['x-request-id']}"]
    assert cut_line["level"] == "INFO"
    assert "query returned 1 rows (cut at the row limit)" in cut_line["message"]
    if level == "info":
        assert whole_line is None
    else:
        assert whole_line["level"] == "DEBUG"
        assert "query returned 2 rows in" in whole_line["message"]
