"""HTTP/1.1 over a raw socket to a real server. The server's protocol
(`sqlstore.api.httpprotocol`) sends each response in one write. Responses must stay whole and
in order for pipelined requests, HEAD, 100-continue and bodies past its flush size."""

from __future__ import annotations

import json
import socket
import urllib.parse

import httpx
import pytest
from conftest import RunningServer

TIMEOUT_SECONDS = 10


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
