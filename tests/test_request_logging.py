"""Server logs on a real server: one line per request with its fields, JSON lines on request, the
start-up configuration, caught errors with their request ids, and the configurable level.
Requests that the HTTP protocol rejects get the same access line and metrics, and an
unexpected error is logged once."""

from __future__ import annotations

import json
import logging
import os
import socket
import subprocess
import sys
import threading
import time
import urllib.parse
from pathlib import Path
from typing import Any

import httpx
import pyarrow as pa
import pytest
import uvicorn
from conftest import RunningServer, free_port, start_server, stop_server
from fastapi import FastAPI
from prometheus_client.parser import text_string_to_metric_families

from sqlstore.api.errors import install_error_handlers
from sqlstore.store import FeatureStore


def make_store(root: Path) -> Path:
    FeatureStore(root).write("g", "t", pa.table({"entity_id": [1, 2], "value": [1.0, 2.0]}))
    return root


def json_lines(server: RunningServer) -> list[dict[str, Any]]:
    """Parse every log line; fails on any line that is not a JSON object."""
    return [json.loads(line) for line in server.log().splitlines() if line.strip()]


def request_lines(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [record for record in records if record.get("logger") == "sqlstore.api.middleware"]


def send_raw(server: RunningServer, *parts: bytes) -> dict[str, str]:
    """Send `parts` in separate writes on a new connection, read until the server closes it,
    and return the status code and request id of the only response."""
    address = urllib.parse.urlsplit(server.base_url)
    with socket.create_connection((address.hostname, address.port), 10) as connection:
        connection.settimeout(10)
        for part in parts:
            connection.sendall(part)
        chunks = []
        while chunk := connection.recv(65536):
            chunks.append(chunk)
    head = b"".join(chunks).split(b"\r\n\r\n", 1)[0].decode()
    status_line, *header_lines = head.split("\r\n")
    headers = dict(line.lower().split(": ", 1) for line in header_lines)
    return {"status": status_line.split(" ")[1], "request_id": headers["x-request-id"]}


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
        malformed = send_raw(server, b"GE T / HTTP/1.1\r\n\r\n")
    finally:
        stop_server(server)
    records = json_lines(server)

    assert response.status_code == 200
    assert malformed["status"] == "400"
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


# Requests that the HTTP protocol rejects

LONG_PATH = "/features/" + "x" * 20_000
# The raw path as the access line keeps it: cut to 200 characters.
LOGGED_LONG_PATH = LONG_PATH[:200] + "..."
HOSTILE_BODY_PATH = "/features/a%0ab/t%1b%5B2J"


def partial_post(path: str, request_id: str) -> bytes:
    return (
        f"POST {path} HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\n"
        f"X-Request-ID: {request_id}\r\nContent-Length: 100\r\n\r\n{{"
    ).encode()


def metric_samples(text: str, name: str) -> list[tuple[dict[str, str], float]]:
    """Return the labels and value of each sample `name` in the Prometheus text `text`."""
    return [
        (sample.labels, sample.value)
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == name
    ]


def rejected_samples(text: str, name: str) -> dict[tuple[str, ...], float]:
    """Return the samples `name` with the label route="rejected", by their other label values
    in the order of the label names."""
    samples = {}
    for labels, value in metric_samples(text, name):
        if labels["route"] == "rejected":
            others = tuple(labels[key] for key in sorted(labels) if key != "route")
            samples[others] = value
    return samples


def test_rejected_requests_logged_and_counted(tmp_path: Path) -> None:
    env = {
        "SQLSTORE_HTTP_HEADER_TIMEOUT_SECONDS": "1",
        "SQLSTORE_HTTP_BODY_TIMEOUT_SECONDS": "1",
        "SQLSTORE_HTTP_MAX_HEAD_BYTES": "16384",
    }
    server = start_server(
        make_store(tmp_path / "store"),
        tmp_path / "server.log",
        env=env,
        options=("--log-format", "json"),
    )
    try:
        head_timeout = send_raw(
            server, b"GET /health HTTP/1.1\r\nX-Request-ID: slow-head\r\nHost: te"
        )
        malformed = send_raw(server, b"GE T / HTTP/1.1\r\n\r\n")
        long_url = send_raw(server, f"GET {LONG_PATH}?q=1 HTTP/1.1\r\nHost: t\r\n\r\n".encode())
        large_head = send_raw(
            server, b"GET /sql?sql=x HTTP/1.1\r\nHost: t\r\nX-Pad: " + b"a" * 20_000 + b"\r\n\r\n"
        )
        sql_body = send_raw(server, partial_post("/sql", "slow-sql"))
        write_body = send_raw(server, partial_post(HOSTILE_BODY_PATH, "slow-write"))
        exposition = httpx.get(server.base_url + "/metrics").text
    finally:
        stop_server(server)
    records = json_lines(server)
    lines = {record["request_id"]: record for record in request_lines(records)}

    expected = [
        (head_timeout, "408", "GET", "/health"),
        (malformed, "400", "-", "-"),
        (long_url, "414", "GET", LOGGED_LONG_PATH),
        (large_head, "431", "GET", "/sql"),
        (sql_body, "408", "POST", "/sql"),
        (write_body, "408", "POST", "/features/a\nb/t\x1b[2J"),
    ]
    for response, status, method, path in expected:
        assert response["status"] == status
        line = lines[response["request_id"]]
        assert line["status"] == int(status), line
        assert line["method"] == method, line
        assert line["path"] == path, line
        assert line["route"] == "rejected", line
        assert line["level"] == "INFO", line
        assert line["client"].startswith("127.0.0.1:"), line
    assert head_timeout["request_id"] == "slow-head"
    assert sql_body["request_id"] == "slow-sql"
    assert write_body["request_id"] == "slow-write"
    assert lines["slow-sql"]["duration_ms"] >= 900
    # The message escapes the control characters of the path.
    assert lines["slow-write"]["message"].startswith("POST /features/a\\nb/t\\x1b[2J 408 ")
    # The route's failure on the disconnect of a body that timed out is neither logged nor
    # counted: the 408 is the request's only record.
    assert [record["status"] for record in request_lines(records)].count(400) == 1
    assert not [record for record in records if "failed with" in record["message"]]

    assert rejected_samples(exposition, "sqlstore_requests_total") == {
        ("GET", "408"): 1,
        ("-", "400"): 1,
        ("GET", "414"): 1,
        ("GET", "431"): 1,
        ("POST", "408"): 2,
    }
    assert rejected_samples(exposition, "sqlstore_request_duration_seconds_count") == {
        ("GET",): 3,
        ("-",): 1,
        ("POST",): 2,
    }
    assert rejected_samples(exposition, "sqlstore_errors_total") == {
        ("request_timeout",): 3,
        ("bad_request",): 1,
        ("uri_too_long",): 1,
        ("request_header_fields_too_large",): 1,
    }
    requests = metric_samples(exposition, "sqlstore_requests_total")
    errors = metric_samples(exposition, "sqlstore_errors_total")
    assert [labels["route"] for labels, _ in requests if labels["status"] == "400"] == ["rejected"]
    assert [labels["route"] for labels, _ in errors if labels["code"] == "bad_request"] == [
        "rejected"
    ]


# Unexpected errors


def test_unexpected_error_logged_once(caplog: pytest.LogCaptureFixture) -> None:
    """A route that raises an error no handler expects gets a 500. The log has one ERROR
    record for it, with the traceback and the path, and none from uvicorn. The server is
    uvicorn on a loopback port, with sqlstore's error handlers and a route of this test that
    raises, because every failure of sqlstore's own routes has a handler. The app has no
    request id middleware, so the id is logged as "-"."""
    app = FastAPI()
    install_error_handlers(app)

    @app.get("/boom")
    def boom() -> None:
        raise RuntimeError("boom")

    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_config=None))
    thread = threading.Thread(target=server.run, daemon=True)
    caplog.set_level(logging.INFO)
    thread.start()
    try:
        while not server.started:
            time.sleep(0.01)
        response = httpx.get(f"http://127.0.0.1:{port}/boom")
    finally:
        server.should_exit = True
        thread.join(timeout=10)
    errors = [record for record in caplog.records if record.levelno >= logging.ERROR]

    assert response.status_code == 500
    assert response.json()["error"]["code"] == "internal_error"
    assert len(errors) == 1
    assert errors[0].name == "sqlstore.api.errors"
    assert errors[0].getMessage() == "unexpected error in GET /boom (request -)"
    assert errors[0].exc_info is not None
    assert "Exception in ASGI application" not in caplog.text
