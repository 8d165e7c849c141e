"""The pipe protocol between the server and a SQL worker, with messages larger than a pipe's
buffer, so that the server's non-blocking writes wait for the reader."""

from __future__ import annotations

import asyncio
import os
import threading
from collections.abc import Iterator

import pytest

from sqlstore.sql.protocol import WorkerChannel, read_message

# Larger than Linux's default pipe buffer of 64 KiB, so a write cannot finish at once.
LARGE_TEXT = "x" * 1_000_000


@pytest.fixture
def channel_and_worker_end() -> Iterator[tuple[WorkerChannel, int]]:
    """Yield a server channel and the worker's blocking read end of its request pipe."""
    requests_read, requests_write = os.pipe()
    responses_read, responses_write = os.pipe()
    channel = WorkerChannel(requests_write, responses_read)
    yield channel, requests_read
    channel.close()
    os.close(requests_read)
    os.close(responses_write)


def read_in_thread(fd: int) -> tuple[threading.Thread, list[object]]:
    """Start reading one message in a thread; the list receives it."""
    received: list[object] = []
    thread = threading.Thread(target=lambda: received.append(read_message(fd)))
    thread.start()
    return thread, received


def test_send_waits_for_room_in_pipe(channel_and_worker_end: tuple[WorkerChannel, int]) -> None:
    channel, worker_end = channel_and_worker_end
    results = []
    # One message at a time, as the server sends requests: read_message drops extra bytes.
    for header in ({"kind": "query", "sql": LARGE_TEXT}, {"kind": "settings"}):
        thread, received = read_in_thread(worker_end)
        channel.send(header, timeout=30)
        thread.join(timeout=30)
        results.extend(received)

    assert results[0] == ({"kind": "query", "sql": LARGE_TEXT, "body": False}, None)
    assert results[1] == ({"kind": "settings", "body": False}, None)


def test_send_async_waits_for_room_in_pipe(
    channel_and_worker_end: tuple[WorkerChannel, int],
) -> None:
    channel, worker_end = channel_and_worker_end
    results = []
    for header in ({"kind": "query", "sql": LARGE_TEXT}, {"kind": "settings"}):
        thread, received = read_in_thread(worker_end)
        asyncio.run(channel.send_async(header))
        thread.join(timeout=30)
        results.extend(received)

    assert results[0] == ({"kind": "query", "sql": LARGE_TEXT, "body": False}, None)
    assert results[1] == ({"kind": "settings", "body": False}, None)
