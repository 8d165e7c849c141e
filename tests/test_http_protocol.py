"""HTTP/1.1 over a raw socket to a real server. The server's protocol
(`sqlstore.api.httpprotocol`) sends each response in one write. Responses must stay whole and
in order for pipelined requests, HEAD, 100-continue and bodies past its flush size. Requests
that the protocol rejects (timeouts, a body below the minimum rate, oversized heads, malformed
requests) get the JSON error shape and a closed connection."""

from __future__ import annotations

import json
import re
import socket
import threading
import time
import urllib.parse
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from conftest import RunningServer, start_server, stop_server

from sqlstore.settings import Settings

TIMEOUT_SECONDS = 10
# Limits of `limited_server`: short timeouts so that the tests waiting for them are quick.
LIMITED_TIMEOUT_SECONDS = "1"
LIMITED_HEAD_BYTES = 16 * 1024
LIMITED_MIN_RATE_BYTES = 100
# How often `send_slowly` sends a part of a body.
SLOW_SEND_INTERVAL_SECONDS = 0.2


def connect(server: RunningServer) -> socket.socket:
    address = urllib.parse.urlsplit(server.base_url)
    connection = socket.create_connection((address.hostname, address.port), TIMEOUT_SECONDS)
    connection.settimeout(TIMEOUT_SECONDS)
    return connection


def read_until_closed(connection: socket.socket) -> bytes:
    chunks = []
    while chunk := connection.recv(65536):
        chunks.append(chunk)
    return b"".join(chunks)


def split_responses(data: bytes) -> list[tuple[bytes, dict[bytes, bytes], bytes]]:
    """Split bytes holding responses with Content-Length into (status line, headers, body).
    A HEAD response must come first in `data`: its Content-Length has no body after it."""
    responses = []
    first = True
    while data:
        head, data = data.split(b"\r\n\r\n", 1)
        status, *lines = head.split(b"\r\n")
        headers = dict(line.lower().split(b": ", 1) for line in lines)
        length = 0 if first and data.startswith(b"HTTP/1.1 ") else int(headers[b"content-length"])
        responses.append((status, headers, data[:length]))
        data = data[length:]
        first = False
    return responses


def exchange(
    connection: socket.socket, *requests: tuple[bytes, bytes]
) -> list[tuple[bytes, dict[bytes, bytes], bytes]]:
    """Send bodiless (method, path) requests in one write, pipelined, the last with
    Connection: close, and return the split responses."""
    lines = [method + b" " + path + b" HTTP/1.1\r\nHost: test\r\n" for method, path in requests]
    lines[-1] += b"Connection: close\r\n"
    with connection:
        connection.sendall(b"".join(line + b"\r\n" for line in lines))
        return split_responses(read_until_closed(connection))


@pytest.fixture()
def connection(demo_server: RunningServer) -> socket.socket:
    return connect(demo_server)


def test_pipelined_requests_answered_in_order(connection: socket.socket) -> None:
    (health_status, _, health_body), (queries_status, _, queries_body) = exchange(
        connection, (b"GET", b"/health"), (b"GET", b"/queries")
    )

    assert health_status == b"HTTP/1.1 200 OK"
    assert json.loads(health_body)["status"] == "healthy"
    assert queries_status == b"HTTP/1.1 200 OK"
    assert json.loads(queries_body)["count"] == 4


def test_head_then_get_on_one_connection(connection: socket.socket) -> None:
    (head_status, head_headers, head_body), (get_status, _, get_body) = exchange(
        connection, (b"HEAD", b"/health"), (b"GET", b"/health")
    )

    assert head_status == get_status == b"HTTP/1.1 200 OK"
    assert head_body == b""
    assert int(head_headers[b"content-length"]) > 0
    assert json.loads(get_body)["status"] == "healthy"


def test_continue_sent_before_the_body(connection: socket.socket) -> None:
    body = b'{"sql": "SELECT 42 AS answer"}'
    head = (
        b"POST /sql HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\n"
        b"Expect: 100-continue\r\nConnection: close\r\n"
        b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n"
    )
    with connection:
        connection.sendall(head)
        interim = connection.recv(65536)
        connection.sendall(body)
        data = read_until_closed(connection)
    [(status, _, content)] = split_responses(data)

    assert interim == b"HTTP/1.1 100 Continue\r\n\r\n"
    assert status == b"HTTP/1.1 200 OK"
    assert json.loads(content)["data"] == [{"answer": 42}]


def test_body_past_flush_size_arrives_whole(demo_server: RunningServer) -> None:
    sql = "SELECT range AS n, range * 2 AS twice FROM range(10000) ORDER BY n"
    expected = '"n","twice"\n' + "".join(f"{number},{number * 2}\n" for number in range(10000))

    response = httpx.get(
        demo_server.base_url + "/sql",
        params={"sql": sql},
        headers={"Accept": "text/csv"},
        timeout=60,
    )

    assert response.status_code == 200
    assert len(response.content) > 64 * 1024
    assert response.text == expected


@pytest.fixture(scope="module")
def limited_server(
    demo_root: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[RunningServer]:
    """A server on the demo store with 1 s timeouts, a minimum body rate of 100 bytes/s, a
    16 KiB head limit and DEBUG logs, so that every rejection is logged."""
    env = {
        "SQLSTORE_HTTP_HEADER_TIMEOUT_SECONDS": LIMITED_TIMEOUT_SECONDS,
        "SQLSTORE_HTTP_BODY_TIMEOUT_SECONDS": LIMITED_TIMEOUT_SECONDS,
        "SQLSTORE_HTTP_BODY_MIN_RATE_BYTES": str(LIMITED_MIN_RATE_BYTES),
        "SQLSTORE_HTTP_MAX_HEAD_BYTES": str(LIMITED_HEAD_BYTES),
        "SQLSTORE_LOG_LEVEL": "debug",
    }
    log_path = tmp_path_factory.mktemp("limited_logs") / "server.log"
    server = start_server(demo_root, log_path, env=env)
    yield server
    stop_server(server)


def send_and_read(server: RunningServer, *parts: bytes) -> bytes:
    """Send `parts` in separate writes on a new connection and return all bytes received
    until the server closes it. A server that keeps it open fails the test with a timeout."""
    with connect(server) as connection:
        for part in parts:
            connection.sendall(part)
        return read_until_closed(connection)


def single_error(data: bytes) -> tuple[bytes, dict[bytes, bytes], dict[str, str]]:
    """Return the status line, headers and `error` object of the only response in `data`."""
    [(status, headers, body)] = split_responses(data)
    return status, headers, json.loads(body)["error"]


def test_head_timeout_sends_408(limited_server: RunningServer) -> None:
    data = send_and_read(limited_server, b"GET /health HTTP/1.1\r\nHost: test\r\nX-Slow: 1")
    status, headers, error = single_error(data)

    assert status == b"HTTP/1.1 408 Request Timeout"
    assert headers[b"connection"] == b"close"
    assert error["code"] == "request_timeout"
    assert error["message"] == (
        "request head timed out: not complete within 1 s; send the request line and all "
        "headers without pausing"
    )
    assert error["request_id"] == headers[b"x-request-id"].decode()
    log = limited_server.log_containing("with 408 (request " + error["request_id"])
    assert "closed connection from 127.0.0.1:" in log


def test_head_timeout_keeps_client_request_id(limited_server: RunningServer) -> None:
    data = send_and_read(
        limited_server, b"GET /health HTTP/1.1\r\nX-Request-ID: slow-client-7\r\nHost: te"
    )
    _, headers, error = single_error(data)

    assert error["request_id"] == "slow-client-7"
    assert headers[b"x-request-id"] == b"slow-client-7"


def test_head_timeout_after_keep_alive_request(limited_server: RunningServer) -> None:
    data = send_and_read(
        limited_server,
        b"GET /health HTTP/1.1\r\nHost: test\r\n\r\n" + b"GET /health HTTP/1.1\r\nHost: t",
    )
    (first_status, _, first_body), (second_status, _, second_body) = split_responses(data)

    assert first_status == b"HTTP/1.1 200 OK"
    assert json.loads(first_body)["status"] == "healthy"
    assert second_status == b"HTTP/1.1 408 Request Timeout"
    assert json.loads(second_body)["error"]["code"] == "request_timeout"


def test_idle_connection_closed_without_response(limited_server: RunningServer) -> None:
    assert send_and_read(limited_server) == b""


def test_body_timeout_sends_408(limited_server: RunningServer) -> None:
    head = (
        b"POST /sql HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\n"
        b"Content-Length: 100\r\n\r\n"
    )
    data = send_and_read(limited_server, head, b'{"sql": "SELECT')
    status, headers, error = single_error(data)

    assert status == b"HTTP/1.1 408 Request Timeout"
    assert headers[b"connection"] == b"close"
    assert error["code"] == "request_timeout"
    assert error["message"] == (
        "request body timed out: no data arrived for 1 s before it was complete; send the "
        "rest of the body without pausing"
    )


def sql_head(body_bytes: int) -> bytes:
    return (
        b"POST /sql HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\n"
        b"Connection: close\r\nContent-Length: " + str(body_bytes).encode() + b"\r\n\r\n"
    )


def send_slowly(server: RunningServer, head: bytes, parts: list[bytes]) -> tuple[bytes, float]:
    """Send `head`, then one of `parts` every SLOW_SEND_INTERVAL_SECONDS from another thread,
    and return all bytes received until the server closes the connection, and the seconds
    that took. Sending stops when the server closes the connection."""
    with connect(server) as connection:
        started = time.monotonic()
        connection.sendall(head)

        def send_parts() -> None:
            for part in parts:
                time.sleep(SLOW_SEND_INTERVAL_SECONDS)
                try:
                    connection.sendall(part)
                except OSError:
                    return

        sender = threading.Thread(target=send_parts)
        sender.start()
        data = read_until_closed(connection)
        seconds = time.monotonic() - started
        sender.join()
    return data, seconds


def test_slow_body_sends_408(limited_server: RunningServer) -> None:
    """One byte every 0.2 s is 5 bytes/s, under the minimum of 100: the body gets the 1 s
    body timeout after its first check (at most 1 s after the head) and 1 s per 100 bytes."""
    data, seconds = send_slowly(limited_server, sql_head(1000), [b" "] * 50)
    status, headers, error = single_error(data)
    message = re.fullmatch(
        r"request body timed out: it arrived at ([0-9.]+) bytes/s over the last ([0-9.]+) s, "
        r"below the minimum of 100 bytes/s; send the body without pausing",
        error["message"],
    )

    assert status == b"HTTP/1.1 408 Request Timeout"
    assert headers[b"connection"] == b"close"
    assert error["code"] == "request_timeout"
    assert message is not None, error["message"]
    assert float(message.group(1)) < LIMITED_MIN_RATE_BYTES
    # About 1.05 s: the body timeout and 1 s per 100 bytes, with room for a busy machine.
    assert 1.0 <= float(message.group(2)) < 3.0
    # The idle timeout alone would never end a body that pauses for 0.2 s at a time, and the
    # 50 bytes sent take 10 s.
    assert seconds < 6
    log = limited_server.log_containing("request=" + error["request_id"])
    [access_line] = [line for line in log.splitlines() if "request=" + error["request_id"] in line]
    assert "sqlstore.api.middleware" in access_line
    assert ": POST /sql 408 " in access_line


def test_body_above_min_rate_accepted(limited_server: RunningServer) -> None:
    """40 bytes every 0.2 s is 200 bytes/s, over the minimum of 100, for 3 s: longer than the
    body timeout and its first check together."""
    body = b'{"sql": "SELECT 1 AS n"}'.ljust(600)
    parts = [body[start : start + 40] for start in range(0, len(body), 40)]
    data, seconds = send_slowly(limited_server, sql_head(len(body)), parts)
    [(status, _, content)] = split_responses(data)

    assert status == b"HTTP/1.1 200 OK"
    assert json.loads(content)["data"] == [{"n": 1}]
    assert seconds >= len(parts) * SLOW_SEND_INTERVAL_SECONDS


def test_min_rate_zero_allows_slow_body(demo_root: Path, tmp_path: Path) -> None:
    """2 bytes every 0.2 s is 10 bytes/s for 3 s. A minimum of 100 bytes/s would end the body
    after about 2.1 s, as in `test_slow_body_sends_408`."""
    env = {
        "SQLSTORE_HTTP_HEADER_TIMEOUT_SECONDS": LIMITED_TIMEOUT_SECONDS,
        "SQLSTORE_HTTP_BODY_TIMEOUT_SECONDS": LIMITED_TIMEOUT_SECONDS,
        "SQLSTORE_HTTP_BODY_MIN_RATE_BYTES": "0",
    }
    server = start_server(demo_root, tmp_path / "server.log", env=env)
    body = b'{"sql": "SELECT 2 AS n"}'.ljust(30)
    try:
        parts = [body[start : start + 2] for start in range(0, len(body), 2)]
        data, seconds = send_slowly(server, sql_head(len(body)), parts)
    finally:
        stop_server(server)
    [(status, _, content)] = split_responses(data)

    assert status == b"HTTP/1.1 200 OK"
    assert json.loads(content)["data"] == [{"n": 2}]
    assert seconds >= len(parts) * SLOW_SEND_INTERVAL_SECONDS


def test_expect_continue_rejected_closes(limited_server: RunningServer) -> None:
    head = (
        b"POST /sql HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\n"
        b"Expect: 100-continue\r\nContent-Length: 999999999999\r\n\r\n"
    )
    status, headers, error = single_error(send_and_read(limited_server, head))

    assert status == b"HTTP/1.1 413 Request Entity Too Large"
    assert headers[b"connection"] == b"close"
    assert error["code"] == "payload_too_large"


def test_expect_continue_accepted_keeps_alive(limited_server: RunningServer) -> None:
    body = b'{"sql": "SELECT 7 AS n"}'
    head = (
        b"POST /sql HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\n"
        b"Expect: 100-continue\r\nContent-Length: " + str(len(body)).encode() + b"\r\n\r\n"
    )
    with connect(limited_server) as connection:
        connection.sendall(head)
        interim = connection.recv(65536)
        connection.sendall(
            body + b"GET /health HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n"
        )
        data = read_until_closed(connection)
    (sql_status, sql_headers, sql_body), (health_status, _, _) = split_responses(data)

    assert interim == b"HTTP/1.1 100 Continue\r\n\r\n"
    assert sql_status == b"HTTP/1.1 200 OK"
    assert b"connection" not in sql_headers
    assert json.loads(sql_body)["data"] == [{"n": 7}]
    assert health_status == b"HTTP/1.1 200 OK"


def header_lines(total_bytes: int) -> bytes:
    """Header lines named X-Pad-N whose names and values add up to `total_bytes`."""
    lines = []
    remaining = total_bytes
    number = 0
    while remaining > 0:
        name = f"X-Pad-{number}".encode()
        value = b"a" * max(1, min(1000, remaining - len(name)))
        lines.append(name + b": " + value + b"\r\n")
        remaining -= len(name) + len(value)
        number += 1
    return b"".join(lines)


def test_head_over_limit_sends_431(limited_server: RunningServer) -> None:
    request = b"GET /health HTTP/1.1\r\nHost: test\r\n" + header_lines(20_000) + b"\r\n"
    status, headers, error = single_error(send_and_read(limited_server, request))

    assert status == b"HTTP/1.1 431 Request Header Fields Too Large"
    assert headers[b"connection"] == b"close"
    assert error["code"] == "request_header_fields_too_large"
    assert str(LIMITED_HEAD_BYTES) in error["message"]


def test_unfinished_head_over_limit_sends_431(limited_server: RunningServer) -> None:
    """A head that never ends is rejected once the bytes after its first chunk pass the
    limit, before the header timeout."""
    parts = [b"GET /health HTTP/1.1\r\nHost: test\r\n"]
    parts += [header_lines(4_000) for _ in range(40)]
    status, _, error = single_error(send_and_read(limited_server, *parts))

    assert status == b"HTTP/1.1 431 Request Header Fields Too Large"
    assert error["code"] == "request_header_fields_too_large"


def test_head_under_limit_accepted(limited_server: RunningServer) -> None:
    request = (
        b"GET /health HTTP/1.1\r\nHost: test\r\nConnection: close\r\n"
        + header_lines(12_000)
        + b"\r\n"
    )
    [(status, _, body)] = split_responses(send_and_read(limited_server, request))

    assert status == b"HTTP/1.1 200 OK"
    assert json.loads(body)["status"] == "healthy"


def test_long_sql_url_sends_414(demo_server: RunningServer) -> None:
    """Over 65535 bytes, the most that httptools can parse, with the default 64 KiB head
    limit."""
    query = urllib.parse.quote("SELECT 1 AS n" + " " * 70_000)
    request = b"GET /sql?sql=" + query.encode() + b" HTTP/1.1\r\nHost: test\r\n\r\n"
    status, headers, error = single_error(send_and_read(demo_server, request))

    assert status == b"HTTP/1.1 414 Request-URI Too Long"
    assert headers[b"connection"] == b"close"
    assert error["code"] == "uri_too_long"
    assert "65535 bytes" in error["message"]
    assert "POST /sql" in error["message"]


def test_url_over_head_limit_sends_414(limited_server: RunningServer) -> None:
    request = b"GET /features?x=" + b"a" * 20_000 + b" HTTP/1.1\r\nHost: test\r\n\r\n"
    status, _, error = single_error(send_and_read(limited_server, request))

    assert status == b"HTTP/1.1 414 Request-URI Too Long"
    assert error["code"] == "uri_too_long"
    assert f"{LIMITED_HEAD_BYTES} bytes" in error["message"]
    assert "POST /sql" not in error["message"]


@pytest.mark.parametrize(
    ("request_bytes", "reason"),
    [
        (b"GE T / HTTP/1.1\r\nHost: test\r\n\r\n", "Invalid method encountered"),
        (b"GET / HTTP/1.1\r\nBad Header: x\r\n\r\n", "Invalid header token"),
        (
            b"POST /sql HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\n"
            b"Transfer-Encoding: chunked\r\n\r\nzz\r\n",
            "Invalid character in chunk size",
        ),
    ],
)
def test_malformed_request_sends_400(
    limited_server: RunningServer, request_bytes: bytes, reason: str
) -> None:
    status, headers, error = single_error(send_and_read(limited_server, request_bytes))

    assert status == b"HTTP/1.1 400 Bad Request"
    assert headers[b"content-type"] == b"application/json"
    assert error["code"] == "bad_request"
    assert error["message"] == (
        f"invalid HTTP request: {reason}; send a well-formed HTTP/1.1 request"
    )


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("HTTP_HEADER_TIMEOUT_SECONDS", "0"),
        ("HTTP_BODY_TIMEOUT_SECONDS", "-1"),
        ("HTTP_BODY_MIN_RATE_BYTES", "-1"),
        ("HTTP_BODY_MIN_RATE_BYTES", "fast"),
        ("HTTP_MAX_HEAD_BYTES", "100"),
    ],
)
def test_http_limit_settings_checked(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, name: str, value: str
) -> None:
    monkeypatch.setenv("SQLSTORE_" + name, value)

    with pytest.raises(ValueError, match=f"invalid SQLSTORE_{name}="):
        Settings.from_environment(tmp_path)
