"""ASGI middleware: request ids, the request body size limits and request metrics."""

from __future__ import annotations

import logging
import random
import re
import time
from dataclasses import dataclass, field

from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from sqlstore import metrics
from sqlstore.api.encoding import dumps

# Scope key that marks a HEAD request served as GET.
HEAD_REQUEST = "sqlstore.head_request"
# Key of the scope's state that contains the status with which the HTTP protocol rejected the
# request while the application was reading its body (`sqlstore.api.httpprotocol`). The
# protocol sends and records that response itself, so the application records nothing.
PROTOCOL_REJECTED_STATUS = "sqlstore.protocol_rejected_status"

logger = logging.getLogger(__name__)

REQUEST_ID_HEADER = b"x-request-id"
CACHE_HEADER = b"x-cache"
# An incoming request id is kept only when it is short and plain, so it is safe to log.
REQUEST_ID_PATTERN = re.compile(rb"[A-Za-z0-9._-]{1,64}")


class RequestIdMiddleware:
    """Give each request an id (the client's X-Request-ID, or a new one) and echo it back."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        request_id = assign_request_id(scope)

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                headers.append((REQUEST_ID_HEADER, request_id.encode()))
                message["headers"] = headers
            await send(message)

        await self.app(scope, receive, send_with_id)


def assign_request_id(scope: Scope) -> str:
    """Return the request's id, the client's X-Request-ID when it is plain or a new one, and
    store it in the scope's state."""
    request_id = None
    for name, value in scope["headers"]:
        if name == REQUEST_ID_HEADER and REQUEST_ID_PATTERN.fullmatch(value):
            request_id = value.decode()
    # 32 hex digits like uuid4().hex, from Python's own generator: an id need not be
    # unpredictable, and os.urandom costs a system call per request.
    request_id = request_id or f"{random.getrandbits(128):032x}"
    scope.setdefault("state", {})["request_id"] = request_id
    return request_id


def declared_length_over(scope: Scope, max_bytes: int) -> bool:
    """Return True when the request's Content-Length header is a number over `max_bytes`."""
    for name, value in scope["headers"]:
        if name == b"content-length" and value.isdigit() and int(value) > max_bytes:
            return True
    return False


@dataclass(frozen=True)
class BodyLimit:
    """The largest request body of some routes, with the setting that raises it and what a
    client can send instead."""

    max_bytes: int
    setting: str
    advice: str
    routes: str = ""

    def message(self) -> str:
        routes = f", the limit of {self.routes}" if self.routes else ""
        return (
            f"request body is larger than {self.max_bytes} bytes{routes}; {self.advice}, or "
            f"raise {self.setting}"
        )


@dataclass(frozen=True)
class BodyLimits:
    """The general body limit and the smaller limits of some routes, by exact path or by path
    prefix. A route's limit above the general one is replaced by the general one, so that the
    message names the setting that applies."""

    general: BodyLimit
    by_path: dict[str, BodyLimit] = field(default_factory=dict)
    by_prefix: tuple[tuple[str, BodyLimit], ...] = ()

    @classmethod
    def capped(
        cls,
        general: BodyLimit,
        by_path: dict[str, BodyLimit],
        by_prefix: tuple[tuple[str, BodyLimit], ...],
    ) -> BodyLimits:
        def cap(limit: BodyLimit) -> BodyLimit:
            return limit if limit.max_bytes < general.max_bytes else general

        return cls(
            general,
            {path: cap(limit) for path, limit in by_path.items()},
            tuple((prefix, cap(limit)) for prefix, limit in by_prefix),
        )

    def for_path(self, path: str) -> BodyLimit:
        limit = self.by_path.get(path)
        if limit is not None:
            return limit
        for prefix, limit in self.by_prefix:
            if path.startswith(prefix):
                return limit
        return self.general


class BodySizeLimitMiddleware:
    """Reject request bodies over the limit of their route with 413, by Content-Length or while
    streaming."""

    def __init__(self, app: ASGIApp, limits: BodyLimits) -> None:
        self.app = app
        self.limits = limits

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        limit = self.limits.for_path(scope["path"])
        if declared_length_over(scope, limit.max_bytes):
            await self._reject(scope, send, limit)
            return

        received = 0

        async def limited_receive() -> Message:
            # A body without Content-Length is counted as it arrives. The HTTPException raised
            # here reaches the route's exception handlers, which return 413.
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit.max_bytes:
                    raise HTTPException(413, detail=limit.message())
            return message

        await self.app(scope, limited_receive, send)

    async def _reject(self, scope: Scope, send: Send, limit: BodyLimit) -> None:
        request_id = scope.get("state", {}).get("request_id", "-")
        logger.info(
            "%s request rejected with 413 (request %s): body over %d bytes (%s)",
            scope["method"],
            request_id,
            limit.max_bytes,
            limit.setting,
        )
        error = {"code": "payload_too_large", "message": limit.message(), "request_id": request_id}
        body = dumps({"error": error})
        await send(
            {
                "type": "http.response.start",
                "status": 413,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode()),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})


class MetricsMiddleware:
    """Count each request and time it, by route template, method and status. Log one line per
    request with its path, status, duration, cache result and request id, unless `access_log`
    is false, because the line costs about as much as serving a cached page."""

    def __init__(self, app: ASGIApp, access_log: bool = True) -> None:
        self.app = app
        self.access_log = access_log

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        started = time.perf_counter()
        status = 500
        cache_result = "-"

        async def send_with_status(message: Message) -> None:
            nonlocal status, cache_result
            if message["type"] == "http.response.start":
                status = message["status"]
                for name, value in message.get("headers", []):
                    if name.lower() == CACHE_HEADER:
                        cache_result = value.decode("latin-1")
            await send(message)

        try:
            await self.app(scope, receive, send_with_status)
        finally:
            record_request(
                scope, status, time.perf_counter() - started, cache_result, self.access_log
            )


def received_method(scope: Scope) -> str:
    """Return the request's method as the client sent it: HEAD for a HEAD request that the
    application serves as GET (see `sqlstore.api.app`)."""
    return "HEAD" if scope.get(HEAD_REQUEST) else scope["method"]


def record_request(
    scope: Scope, status: int, elapsed: float, cache_result: str, access_log: bool
) -> None:
    """Count and time one finished request, and log it when `access_log` is true. A request
    that the HTTP protocol rejected is left out, because the protocol recorded it.

    NOTE: a response under 400 that the application finished after the protocol rejected the
    request (a route that responds without reading the body) is still recorded, next to the
    protocol's record, so that successful responses pay no lookup.
    """
    if status >= 400 and PROTOCOL_REJECTED_STATUS in scope.get("state", ()):
        return
    route = route_template(scope)
    method = received_method(scope)
    metrics.child(metrics.REQUESTS, route, method, str(status)).inc()
    metrics.child(metrics.REQUEST_SECONDS, route, method).observe(elapsed)
    if access_log:
        log_request(scope, status, elapsed, cache_result)


def log_request(scope: Scope, status: int, elapsed: float, cache_result: str) -> None:
    """Log one request at INFO, with its fields also as `extra` attributes for JSON logs.

    The path is escaped in the message, and kept as it was received in the `path` field,
    which JSON logs encode with escapes of their own. The query string is left out, because it
    can carry long SQL text or filter values. The
    record is made without the caller lookup and the %-formatting of `logger.info`, because
    this line is written for every request. Measured in process, that cut its cost from about
    35 to 25 µs.
    """
    if not logger.isEnabledFor(logging.INFO):
        return

    state = scope.get("state", {})
    client = scope.get("client")
    fields = {
        "method": received_method(scope),
        "path": scope["path"],
        "route": route_template(scope),
        "status": status,
        "duration_ms": round(elapsed * 1000, 3),
        "cache": cache_result,
        "request_id": state.get("request_id", "-"),
        "token": state.get("token_name", "-"),
        "client": f"{client[0]}:{client[1]}" if client else "-",
    }
    message = (
        f"{fields['method']} {escape_path(scope['path'])} {status} {fields['duration_ms']:.3f} ms "
        f"cache={cache_result} request={fields['request_id']} token={fields['token']} "
        f"client={fields['client']}"
    )
    record = logger.makeRecord(
        logger.name, logging.INFO, __file__, 0, message, None, None, "log_request", fields
    )
    logger.handle(record)


def escape_path(path: str) -> str:
    """Return `path` with escapes for everything but printable ASCII other than the backslash,
    so that a client cannot write terminal escapes or NUL bytes into the log."""
    if path.isascii() and path.isprintable() and "\\" not in path:
        return path
    return path.encode("unicode_escape").decode("ascii")


def route_template(scope: Scope) -> str:
    """Return the path template of the matched route, such as /features/{group}/{name}."""
    route = scope.get("route")
    return getattr(route, "path", None) or "unmatched"
