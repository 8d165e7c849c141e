"""uvicorn's httptools protocol, with each response sent in one write and limits on reading
requests.

uvicorn writes a response's status line and headers, then each body chunk, as separate writes
to the socket. Each is a system call, and the first wakes the client before the body is there.
`CoalescingHttpToolsProtocol` gives the protocol a transport that delays writes and sends them
together when the response is complete, at the end of the event loop's current iteration, or
once 64 KiB are waiting, whichever comes first. So a response that the application sends
without waiting in between, as sqlstore's routes do, leaves in one gathering write.

Measured over loopback on two servers side by side, this took 30 to 35 µs off a `POST /sql`
of `SELECT 1` and 35 to 60 µs off the one-row aggregate of `bench/bench_sql.py`. Cached page
reads, which wait for no worker process, did not change (see docs/benchmarks.md).

uvicorn 0.55's httptools protocol has no timeout before a request head is complete or between
chunks of a request body, no limit on the size of the head, and sends a plain-text 400 for
what httptools cannot parse. The protocol here adds a header timeout, a body timeout, a minimum
body rate and a head size limit (`HttpLimits`), and rejects requests with the JSON error shape
that the application uses. It records each request that it rejects as the application records
its own: an access log line and the request metrics, under the route `rejected`.
docs/operations.md lists the limits.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from typing import Any

import httptools
from uvicorn._types import ASGISendEvent
from uvicorn.protocols.http.httptools_impl import (
    STATUS_LINE,
    HttpToolsProtocol,
    RequestResponseCycle,
)

from sqlstore.api.encoding import dumps
from sqlstore.settings import Settings

logger = logging.getLogger(__name__)

# Pending bytes that are written at once rather than at the end of the loop iteration, so that
# a long body streamed without a pause is not gathered in memory.
FLUSH_BYTES = 64 * 1024
# httptools 0.9's `parse_url` rejects longer URLs, because the URL parser of http_parser that
# it wraps stores offsets as 16-bit numbers.
MAX_URL_BYTES = 65535
# A timer may fire this much before its deadline without arming itself again for the rest.
TIMER_TOLERANCE_SECONDS = 0.001
REJECTION_LOG_INTERVAL_SECONDS = 10.0
# How long a connection whose request was rejected reads and drops what the client still sends,
# after the error response, before it closes.
LINGER_SECONDS = 2.0
# Route label of the metrics and the access log for the requests that the protocol rejects. Route
# templates start with "/", so no route has this label.
REJECTED_ROUTE = "rejected"
# Characters of a rejected request's path that its access log line keeps, because the URL of a
# 414 can be 64 KiB long.
MAX_LOGGED_PATH_CHARACTERS = 200


class CoalescingTransport:
    """A transport that delays written data until `flush`, which the loop runs at the end of
    the iteration in which the data was written. Everything else goes to `transport`."""

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop) -> None:
        self._transport = transport
        self._loop = loop
        self._pending: list[bytes] = []
        self._pending_bytes = 0

    def write(self, data: bytes) -> None:
        if not data:
            return
        if not isinstance(data, bytes):
            # A caller may change a bytearray after this call, before the flush.
            data = bytes(data)
        if not self._pending:
            self._loop.call_soon(self.flush)
        self._pending.append(data)
        self._pending_bytes += len(data)
        if self._pending_bytes >= FLUSH_BYTES:
            self.flush()

    def writelines(self, chunks: list[bytes]) -> None:
        for chunk in chunks:
            self.write(chunk)

    def flush(self) -> None:
        """Write the pending data in one call. Data for a transport that is closing is
        dropped: the client is gone, and uvloop's transport would raise on the write."""
        if not self._pending:
            return
        pending = self._pending
        self._pending = []
        self._pending_bytes = 0
        if self._transport.is_closing():
            return
        if len(pending) == 1:
            self._transport.write(pending[0])
        else:
            self._transport.writelines(pending)

    def close(self) -> None:
        self.flush()
        self._transport.close()

    def abort(self) -> None:
        self._pending = []
        self._pending_bytes = 0
        self._transport.abort()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)


class RequestRejected(Exception):
    """A request that the protocol rejects with an error response of its own and a closed
    connection, before the application receives it."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message


@dataclass(frozen=True)
class HttpLimits:
    """Time, rate and size limits on reading a request, and whether the requests that the
    protocol rejects get access log lines. `sqlstore serve` sets them from `Settings`."""

    header_timeout_seconds: float
    body_timeout_seconds: float
    # 0 turns the minimum off.
    body_min_rate_bytes: int
    max_head_bytes: int
    access_log: bool

    @classmethod
    def from_settings(cls, settings: Settings) -> HttpLimits:
        return cls(
            header_timeout_seconds=settings.http_header_timeout_seconds,
            body_timeout_seconds=settings.http_body_timeout_seconds,
            body_min_rate_bytes=settings.http_body_min_rate_bytes,
            max_head_bytes=settings.http_max_head_bytes,
            access_log=settings.access_log,
        )


# The class attributes of a dataclass are the defaults of its fields.
DEFAULT_LIMITS = HttpLimits.from_settings(Settings)  # type: ignore[arg-type]


class RejectionLog:
    """INFO lines about rejected requests, at most one per `interval_seconds` in a process.
    Lines left out go to DEBUG, and the next INFO line counts them."""

    def __init__(self, interval_seconds: float) -> None:
        self.interval_seconds = interval_seconds
        self._next_info = 0.0
        self._left_out = 0

    def log(self, message: str, *args: object) -> None:
        now = time.monotonic()
        if now < self._next_info:
            self._left_out += 1
            logger.debug(message, *args)
            return
        if self._left_out:
            message += " (%d more since the last such line, at DEBUG)"
            args = (*args, self._left_out)
        self._next_info = now + self.interval_seconds
        self._left_out = 0
        logger.info(message, *args)


rejection_log = RejectionLog(REJECTION_LOG_INTERVAL_SECONDS)


class CoalescingHttpToolsProtocol(HttpToolsProtocol):
    """`HttpToolsProtocol` on a `CoalescingTransport`, flushed as each response completes, with
    the limits of `HttpLimits` on reading requests and JSON errors for requests that it
    rejects.

    One timer per connection enforces the timeouts and the minimum body rate. It is armed when
    a request head begins and no timer is pending, and when it fires it checks the phase of the
    connection and arms itself again for the phase's deadline. So a request costs a few
    attribute updates, not a timer of its own. Only a body that is still incomplete when the
    timer fires has its bytes counted (see `_body_rate_deadline`).
    """

    def __init__(self, *args: Any, limits: HttpLimits = DEFAULT_LIMITS, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.limits = limits
        self.max_url_bytes = min(MAX_URL_BYTES, limits.max_head_bytes)
        self.deadline_timer: asyncio.TimerHandle | None = None
        # Loop time at which the current request head began, or the connection was made for
        # its first request; None while no head is being read.
        self.head_started: float | None = None
        # Bytes of the current head in the chunks after the one in which it began.
        self.head_bytes = 0
        # Loop time at which the last chunk of data arrived.
        self.read_time = 0.0
        # Loop time at which the request whose head completed last began, for its duration.
        self.request_started = 0.0
        # While `metering` is true, data_received counts the bytes that arrive, from loop time
        # `metered_since` on, for the incomplete body of `metered_cycle`.
        self.metering = False
        self.metered_bytes = 0
        self.metered_since = 0.0
        self.metered_cycle: RequestResponseCycle | None = None
        self.messages_begun = 0
        self.chunk_bytes = 0
        self.rejected = False
        # uvicorn sets these when a request begins; an error can come before that.
        self.url = b""
        self.headers = []

    def connection_made(self, transport: asyncio.Transport) -> None:
        super().connection_made(CoalescingTransport(transport, self.loop))
        self.head_started = self.loop.time()
        self._arm_deadline(self.head_started + self.limits.header_timeout_seconds)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.deadline_timer is not None:
            self.deadline_timer.cancel()
            self.deadline_timer = None
        self._stop_metering()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self.rejected:
            return
        self._unset_keepalive_if_required()
        messages_begun = self.messages_begun
        self.chunk_bytes = len(data)
        self.read_time = self.loop.time()
        if self.metering:
            self.metered_bytes += len(data)
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            if self._should_upgrade():
                self.handle_websocket_upgrade()
            else:
                self._unsupported_upgrade_warning()
            return
        except httptools.HttpParserError as error:
            self._reject(rejection_for_parser_error(error, self.url))
            return

        if self.head_started is not None and self.messages_begun == messages_begun:
            # The head began in an earlier chunk and is still not complete.
            # NOTE: the chunk in which the head began is not counted, so an unfinished head is
            # rejected only after up to one read more than the limit (256,000 bytes with uvloop
            # 0.23).
            # on_headers_complete counts a finished head exactly.
            self.head_bytes += len(data)
            if self.head_bytes > self.limits.max_head_bytes:
                self._reject(self._head_too_large())

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self.messages_begun += 1
        self.head_bytes = 0
        if self.head_started is None:
            self.head_started = self.read_time
        if self.deadline_timer is None:
            self._arm_deadline(self.head_started + self.limits.header_timeout_seconds)

    def on_headers_complete(self) -> None:
        if self.head_bytes or self.chunk_bytes > self.limits.max_head_bytes:
            self._check_head_size()
        self.request_started = self.head_started
        self.head_started = None
        super().on_headers_complete()
        if self.expect_100_continue and self.cycle.scope is self.scope:
            close_after_early_response(self.cycle)

    def on_response_complete(self) -> None:
        self.transport.flush()
        super().on_response_complete()

    def _arm_deadline(self, when: float) -> None:
        self.deadline_timer = self.loop.call_at(when, self._check_deadline)

    def _check_deadline(self) -> None:
        """End the connection when the current phase is past its deadline, else arm the timer
        for that deadline. Time during which the server itself stopped reading (a pipelined
        request waiting, or a body the application has not taken yet) does not count."""
        self.deadline_timer = None
        if self.rejected or self.transport.is_closing():
            return
        now = self.loop.time()
        cycle = self.cycle
        if self.head_started is not None:
            self._stop_metering()
            if self.flow.read_paused:
                self.head_started = now
            deadline = self.head_started + self.limits.header_timeout_seconds
            if now >= deadline - TIMER_TOLERANCE_SECONDS:
                self._time_out_head()
                return
        elif cycle is not None and cycle.more_body and not cycle.disconnected:
            body_deadline = self._body_deadline(cycle, now)
            if body_deadline is None:
                return
            deadline = body_deadline
        else:
            # Between requests, or the application is handling one: the next head arms it.
            self._stop_metering()
            return
        self._arm_deadline(deadline)

    def _body_deadline(self, cycle: RequestResponseCycle, now: float) -> float | None:
        """Return the next deadline of the incomplete body of `cycle`, or reject the request and
        return None when the body is past one."""
        # The body is incomplete, so the last data that arrived was part of it.
        if self.flow.read_paused:
            self.read_time = now
        deadline = self.read_time + self.limits.body_timeout_seconds
        if now >= deadline - TIMER_TOLERANCE_SECONDS:
            seconds = self.limits.body_timeout_seconds
            self._reject(
                RequestRejected(
                    408,
                    "request_timeout",
                    f"request body timed out: no data arrived for {seconds:g} s before it was "
                    "complete; send the rest of the body without pausing",
                )
            )
            return None
        if not self.limits.body_min_rate_bytes:
            return deadline

        rate_deadline = self._body_rate_deadline(cycle, now)
        if now >= rate_deadline - TIMER_TOLERANCE_SECONDS:
            self._reject(self._body_too_slow(now))
            return None
        return min(deadline, rate_deadline)

    def _body_rate_deadline(self, cycle: RequestResponseCycle, now: float) -> float:
        """Return the time at which the body of `cycle` falls below the minimum rate, unless
        more bytes arrive.

        As with `RequestReadTimeout body=T,MinRate=N` of Apache's mod_reqtimeout, the body gets
        the body timeout T plus one second for every N bytes that arrive. The bytes are counted
        from the first check of the body, which comes at most one header or body timeout after
        its head, and the time before that check counts as spent at the minimum rate. Counting
        starts again at a check while the server itself does not read: the application has not
        taken the body read so far, or has not yet asked for it with `100 Continue`.
        """
        if (
            self.metered_cycle is not cycle
            or self.flow.read_paused
            or cycle.waiting_for_100_continue
        ):
            self.metered_cycle = cycle
            self.metered_since = now
            self.metered_bytes = 0
            self.metering = True
        allowance = self.metered_bytes / self.limits.body_min_rate_bytes
        return self.metered_since + self.limits.body_timeout_seconds + allowance

    def _body_too_slow(self, now: float) -> RequestRejected:
        seconds = now - self.metered_since
        average = self.metered_bytes / seconds
        return RequestRejected(
            408,
            "request_timeout",
            f"request body timed out: it arrived at {average:.1f} bytes/s over the last "
            f"{seconds:.1f} s, below the minimum of {self.limits.body_min_rate_bytes} bytes/s; "
            "send the body without pausing",
        )

    def _stop_metering(self) -> None:
        self.metering = False
        self.metered_cycle = None

    def _check_head_size(self) -> None:
        """Raise `RequestRejected` when the URL or the whole head is over its limit. The head
        is counted as the URL plus each header's name and value."""
        if len(self.url) > self.max_url_bytes:
            raise self._head_too_large()
        size = len(self.url) + sum(len(name) + len(value) for name, value in self.headers)
        if size > self.limits.max_head_bytes:
            raise self._head_too_large()

    def _head_too_large(self) -> RequestRejected:
        if len(self.url) > self.max_url_bytes:
            return url_too_long(self.url, self.max_url_bytes)
        return RequestRejected(
            431,
            "request_header_fields_too_large",
            f"the request head (URL and headers) is larger than {self.limits.max_head_bytes} "
            "bytes; send fewer or shorter headers, and long values in the request body",
        )

    def _time_out_head(self) -> None:
        if self.messages_begun == 0 and not self.url:
            # The client connected and sent nothing, so there is no request to respond to.
            logger.debug(
                "closed connection from %s: no request within the header timeout", self._peer()
            )
            self.transport.close()
            return
        seconds = self.limits.header_timeout_seconds
        self._reject(
            RequestRejected(
                408,
                "request_timeout",
                f"request head timed out: not complete within {seconds:g} s; send the "
                "request line and all headers without pausing",
            )
        )

    def _reject(self, rejection: RequestRejected) -> None:
        """Send the error response for a request that the application will not complete,
        record the request, and stop reading."""
        if self.head_started is not None:
            started = self.head_started
        else:
            # The head is complete, so the request's body or its URL was rejected.
            started = self.request_started
        self.rejected = True
        self.head_started = None
        self._stop_metering()
        cycle = self.cycle
        if cycle is None or cycle.response_complete:
            self._send_rejection(rejection, None, started)
        elif cycle.more_body:
            self._end_cycle(cycle, rejection, started)
        else:
            # An earlier request's response is still due, and the error would be written into
            # the middle of it. The connection closes after that response instead.
            request_id = self._record_rejection(rejection, None, started)
            self._log_rejection(rejection.status, rejection.message, request_id)
            cycle.keep_alive = False
            self.flow.pause_reading()

    def _end_cycle(
        self, cycle: RequestResponseCycle, rejection: RequestRejected, started: float
    ) -> None:
        """End the request whose body cannot be completed: the application receives a disconnect
        and the client receives `rejection`. When the response has begun, the connection closes
        instead, and the application records the request with the status that it sent."""
        # Imported here for the reason given in `_record_rejection`.
        from sqlstore.api.middleware import PROTOCOL_REJECTED_STATUS

        cycle.disconnected = True
        cycle.message_event.set()
        if cycle.response_started:
            self._log_rejection(
                rejection.status, f"{rejection.message} (not sent: the response had begun)"
            )
            self.transport.close()
            return
        # The application fails on the disconnect. This keeps it from logging and recording
        # that failure, so the response sent here is the request's only record.
        cycle.scope["state"][PROTOCOL_REJECTED_STATUS] = rejection.status
        self._send_rejection(rejection, cycle.scope, started)

    def _send_rejection(
        self, rejection: RequestRejected, scope: dict[str, Any] | None, started: float
    ) -> None:
        """Record the request, then send `rejection` and close the connection. `scope` is the
        request's ASGI scope when its head was complete."""
        request_id = self._record_rejection(rejection, scope, started)
        self._log_rejection(rejection.status, rejection.message, request_id)
        error = {"code": rejection.code, "message": rejection.message, "request_id": request_id}
        body = dumps({"error": error})
        head = [STATUS_LINE[rejection.status]]
        for name, value in self.server_state.default_headers:
            head.extend([name, b": ", value, b"\r\n"])
        head.extend(
            [
                b"content-type: application/json\r\n",
                b"content-length: %d\r\n" % len(body),
                b"x-request-id: %s\r\n" % request_id.encode(),
                b"connection: close\r\n\r\n",
                body,
            ]
        )
        self.transport.write(b"".join(head))
        self._close_lingering()

    def _close_lingering(self) -> None:
        """Send the end of the stream, then discard what the client still sends until it
        closes or `LINGER_SECONDS` pass. Closing at once while unread request bytes are
        waiting makes the kernel reset the connection, and the client may lose the error."""
        self.transport.flush()
        if not self.transport.can_write_eof():
            self.transport.close()
            return
        self.transport.write_eof()
        if self.deadline_timer is not None:
            self.deadline_timer.cancel()
        self.deadline_timer = self.loop.call_later(LINGER_SECONDS, self.transport.close)

    def _record_rejection(
        self, rejection: RequestRejected, scope: dict[str, Any] | None, started: float
    ) -> str:
        """Count and time a rejected request, log its access line, and return its request id:
        the client's X-Request-ID when it is plain, the one the application assigned, or a new
        one. `scope` is the request's ASGI scope when its head was complete."""
        # Imported here because the middleware imports prometheus-client, which `sqlstore
        # serve` must not import before it prepares the metrics folder.
        from sqlstore import metrics
        from sqlstore.api.middleware import assign_request_id, record_request
        from sqlstore.api.pagecache import RouteStandIn

        if scope is None:
            method = self._parsed_method()
            path = self.url.split(b"?", 1)[0].decode("latin-1")
            headers = self.headers or []
            request_id = None
        else:
            method = scope["method"]
            path = scope["path"]
            headers = scope["headers"]
            request_id = scope["state"].get("request_id")
        request_id = request_id or assign_request_id({"headers": headers})
        record = {
            "method": method,
            "path": shortened_path(path),
            "client": self.client,
            "route": RouteStandIn(REJECTED_ROUTE),
            "state": {"request_id": request_id},
        }
        elapsed = self.loop.time() - started
        record_request(record, rejection.status, elapsed, "-", self.limits.access_log)
        metrics.child(metrics.ERRORS, REJECTED_ROUTE, rejection.code).inc()
        return request_id

    def _parsed_method(self) -> str:
        """Return the method of the request whose head is being read, or "-" when the parser
        has not read a whole method. httptools 0.9 returns the first method of its table
        (DELETE) before it has read one, and the URL follows the method."""
        if not self.url or self.parser is None:
            return "-"
        return self.parser.get_method().decode("ascii", "replace")

    def _log_rejection(self, status: int, message: str, request_id: str = "-") -> None:
        rejection_log.log(
            "closed connection from %s with %d (request %s): %s",
            self._peer(),
            status,
            request_id,
            message,
        )

    def _peer(self) -> str:
        if self.client is None:
            return "-"
        host, port = self.client
        return f"{host}:{port}"


def close_after_early_response(cycle: RequestResponseCycle) -> None:
    """Make `cycle` close its connection when it sends a final response before it asked for
    the body with `100 Continue`. The client has not sent the body yet, so the connection
    cannot carry another request until that body is read or the connection closes."""
    send = cycle.send

    async def send_then_close(message: ASGISendEvent) -> None:
        if cycle.waiting_for_100_continue and cycle.more_body:
            cycle.keep_alive = False
        await send(message)

    cycle.send = send_then_close  # type: ignore[method-assign]


def url_too_long(url: bytes, max_bytes: int) -> RequestRejected:
    message = f"the URL is longer than {max_bytes} bytes; send long values in the request body"
    if url.startswith(b"/sql"):
        message += ', as POST /sql with a JSON body such as {"sql": "SELECT ..."}'
    return RequestRejected(414, "uri_too_long", message)


def rejection_for_parser_error(error: httptools.HttpParserError, url: bytes) -> RequestRejected:
    """Return the response to a request that httptools could not parse. An exception raised
    in a parser callback arrives as the context of httptools' `HttpParserCallbackError`."""
    cause = error.__context__
    if isinstance(cause, RequestRejected):
        return cause
    if isinstance(cause, httptools.HttpParserInvalidURLError) and len(url) > MAX_URL_BYTES:
        return url_too_long(url, MAX_URL_BYTES)
    if cause is not None:
        reason = str(cause)
    else:
        reason = str(error)
    return RequestRejected(
        400,
        "bad_request",
        f"invalid HTTP request: {shortened(reason)}; send a well-formed HTTP/1.1 request",
    )


def shortened_path(path: str) -> str:
    """Return `path` cut to MAX_LOGGED_PATH_CHARACTERS, or "-" when it is empty. The access
    log escapes control characters itself."""
    if not path:
        return "-"
    if len(path) <= MAX_LOGGED_PATH_CHARACTERS:
        return path
    return path[:MAX_LOGGED_PATH_CHARACTERS] + "..."


def shortened(text: str, max_characters: int = 200) -> str:
    text = text.encode("ascii", "backslashreplace").decode("ascii")
    if len(text) <= max_characters:
        return text
    return text[:max_characters] + "..."
