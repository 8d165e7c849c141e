"""Messages between the server and its SQL worker processes.

A message is a JSON header and, when the header says `"body": true`, one binary body: an Arrow
IPC stream, or the JSON rows of a result. Each part travels as a frame, an 8-byte big-endian
length followed by that many bytes, over a pipe. A header frame starts with one byte that
names its encoder (see `decode_header`). The worker reads and writes its pipes
blocking; the server sets its ends non-blocking, so that it can wait for a response on the
event loop (`WorkerChannel.receive_async`) as well as in a thread (`WorkerChannel.receive`).
Parameter values travel as `[name, kind, value]` triples so that dates and timestamps keep
their types.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import os
import select
import struct
import time
from typing import Any

import orjson

FRAME_LENGTH = struct.Struct("!Q")
# The first byte of a header frame: which JSON encoder wrote it.
ORJSON_MARK = b"o"
JSON_MARK = b"j"
# A request number sent on a worker's cancel pipe, to stop that request's query.
CANCEL_MESSAGE = struct.Struct("!Q")
# Bytes read from a pipe at a time.
READ_SIZE = 1 << 20

Message = tuple[dict[str, Any], bytes | None]


def encode_message(header: dict[str, Any], body: bytes | None = None) -> list[bytes]:
    """Return the frames of one message, ready to write in order."""
    content = {**header, "body": body is not None}
    try:
        head = ORJSON_MARK + orjson.dumps(content)
    except TypeError:
        # orjson rejects integers beyond 64 bits, which parameters may hold.
        head = JSON_MARK + json.dumps(content).encode()
    frames = [FRAME_LENGTH.pack(len(head)) + head]
    if body is not None:
        frames += [FRAME_LENGTH.pack(len(body)), body]
    return frames


def decode_header(head: bytes) -> dict[str, Any]:
    """Decode a header frame. orjson reads integers beyond 64 bits as floats, so a header
    written by the standard library is read by it too."""
    if head[:1] == JSON_MARK:
        return json.loads(head[1:])
    return orjson.loads(head[1:])


def write_message(fd: int, header: dict[str, Any], body: bytes | None = None) -> None:
    """Write one message to a blocking file descriptor.

    The frames go out in one gathering write while they fit the pipe, so that the reader
    wakes once per message rather than once per frame.
    """
    views = [memoryview(frame) for frame in encode_message(header, body)]
    while views:
        written = os.writev(fd, views)
        while views and written >= len(views[0]):
            written -= len(views[0])
            views.pop(0)
        if views:
            views[0] = views[0][written:]


def read_message(fd: int) -> Message:
    """Read one message from a blocking file descriptor; raise EOFError when it is closed.

    Bytes read past the end of the message are dropped. That is safe on the request pipe only
    because the server sends a worker its next request after the response to the last one.
    """
    reader = MessageReader()
    while True:
        message = reader.next_message()
        if message is not None:
            return message
        data = os.read(fd, READ_SIZE)
        if not data:
            raise EOFError("the pipe closed")
        reader.feed(data)


class MessageReader:
    """A buffer that collects the bytes read from a pipe into messages."""

    def __init__(self) -> None:
        self.buffer = bytearray()
        self.header: dict[str, Any] | None = None

    def feed(self, data: bytes) -> None:
        self.buffer += data

    def next_message(self) -> Message | None:
        """Return the next complete message, or None until more bytes arrive."""
        if self.header is None:
            head = self._next_frame()
            if head is None:
                return None
            self.header = decode_header(head)
        header = self.header
        if not header.get("body"):
            self.header = None
            return header, None
        body = self._next_frame()
        if body is None:
            return None
        self.header = None
        return header, body

    def _next_frame(self) -> bytes | None:
        if len(self.buffer) < FRAME_LENGTH.size:
            return None
        (length,) = FRAME_LENGTH.unpack_from(self.buffer)
        end = FRAME_LENGTH.size + length
        if len(self.buffer) < end:
            return None
        frame = bytes(self.buffer[FRAME_LENGTH.size : end])
        del self.buffer[:end]
        return frame


class WorkerChannel:
    """The server's ends of the two pipes to one worker process, both non-blocking.

    One request is in flight at a time: the sandbox lends a worker to one caller until its
    response has arrived.
    """

    def __init__(self, requests_fd: int, responses_fd: int) -> None:
        self.requests_fd = requests_fd
        self.responses_fd = responses_fd
        os.set_blocking(requests_fd, False)
        os.set_blocking(responses_fd, False)
        self.reader = MessageReader()
        self.requests_closed = False
        self.closed = False

    def send(self, header: dict[str, Any], timeout: float) -> None:
        """Write one request, waiting at most `timeout` seconds for room in the pipe."""
        deadline = time.monotonic() + timeout
        pending = [memoryview(frame) for frame in encode_message(header)]
        while not self._write_available(pending):
            _wait_for(self.requests_fd, select.POLLOUT, deadline)

    async def send_async(self, header: dict[str, Any]) -> None:
        """Write one request from the event loop, waiting there while the pipe is full."""
        loop = asyncio.get_running_loop()
        pending = [memoryview(frame) for frame in encode_message(header)]
        while not self._write_available(pending):
            await _writable(loop, self.requests_fd)

    def receive(self, timeout: float) -> Message:
        """Wait at most `timeout` seconds for one response. Raise TimeoutError, or EOFError
        when the worker closed its pipe."""
        deadline = time.monotonic() + timeout
        while True:
            message = self.reader.next_message()
            if message is not None:
                return message
            if not self._read_available():
                _wait_for(self.responses_fd, select.POLLIN, deadline)

    async def receive_async(self, timeout: float) -> Message:
        """Like `receive`, waiting on the event loop instead of blocking a thread.

        It waits for the pipe to be readable before it reads, because in practice the worker has
        not answered yet when the server gets here, and a first read would cost a system call for
        nothing.
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            message = self.reader.next_message()
            if message is not None:
                return message
            await _readable(loop, self.responses_fd, deadline)
            self._read_available()

    def close(self) -> None:
        """Close both pipes; safe to call twice."""
        self.close_requests()
        if not self.closed:
            self.closed = True
            os.close(self.responses_fd)

    def close_requests(self) -> None:
        """Close the request pipe only: the worker reads the end of it and exits."""
        if not self.requests_closed:
            self.requests_closed = True
            os.close(self.requests_fd)

    def _write_available(self, pending: list[memoryview]) -> bool:
        """Write as much of `pending` as the pipe takes, removing what was written from it;
        return True once all of it is written."""
        while pending:
            try:
                written = os.write(self.requests_fd, pending[0])
            except BlockingIOError:
                return False
            pending[0] = pending[0][written:]
            if not pending[0]:
                pending.pop(0)
        return True

    def _read_available(self) -> bool:
        """Read the bytes waiting in the pipe into the reader; return False when there were none."""
        try:
            data = os.read(self.responses_fd, READ_SIZE)
        except BlockingIOError:
            return False
        if not data:
            raise EOFError("the worker closed its pipe")
        self.reader.feed(data)
        return True


def _wait_for(fd: int, event: int, deadline: float) -> None:
    remaining = deadline - time.monotonic()
    if remaining <= 0:
        raise TimeoutError
    poller = select.poll()
    poller.register(fd, event)
    if not poller.poll(remaining * 1000):
        raise TimeoutError


async def _writable(loop: asyncio.AbstractEventLoop, fd: int) -> None:
    """Return once `fd` is writable, or its other end closed."""
    ready = loop.create_future()
    loop.add_writer(fd, _resolve, ready)
    try:
        await ready
    finally:
        loop.remove_writer(fd)


async def _readable(loop: asyncio.AbstractEventLoop, fd: int, deadline: float) -> None:
    """Return once `fd` is readable or its other end closed; raise TimeoutError at `deadline`
    (in the loop's time). A timer of the loop's own costs less than `asyncio.timeout`."""
    ready = loop.create_future()
    loop.add_reader(fd, _resolve, ready)
    timer = loop.call_at(deadline, _expire, ready)
    try:
        await ready
    finally:
        loop.remove_reader(fd)
        timer.cancel()


def _resolve(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


def _expire(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_exception(TimeoutError())


def encode_parameters(parameters: dict[str, Any]) -> list[list[Any]]:
    """Return parameter values as JSON-ready `[name, kind, value]` triples."""
    encoded = []
    for name, value in parameters.items():
        if isinstance(value, dt.datetime):
            encoded.append([name, "timestamp", value.isoformat()])
        elif isinstance(value, dt.date):
            encoded.append([name, "date", value.isoformat()])
        else:
            encoded.append([name, "json", value])
    return encoded


def decode_parameters(encoded: list[list[Any]]) -> dict[str, Any]:
    """Rebuild the parameter values that `encode_parameters` encoded."""
    parameters: dict[str, Any] = {}
    for name, kind, value in encoded:
        if kind == "timestamp":
            parameters[name] = dt.datetime.fromisoformat(value)
        elif kind == "date":
            parameters[name] = dt.date.fromisoformat(value)
        else:
            parameters[name] = value
    return parameters
