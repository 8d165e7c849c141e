"""ASGI middleware: request ids, the request body size limit and request metrics."""

from __future__ import annotations

import logging
import re
import time
import uuid

from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from sqlstore import metrics
from sqlstore.api.encoding import dumps

logger = logging.getLogger(__name__)

REQUEST_ID_HEADER = b"x-request-id"
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

        request_id = None
        for name, value in scope["headers"]:
            if name == REQUEST_ID_HEADER and REQUEST_ID_PATTERN.fullmatch(value):
                request_id = value.decode()
        request_id = request_id or uuid.uuid4().hex
        scope.setdefault("state", {})["request_id"] = request_id

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                headers.append((REQUEST_ID_HEADER, request_id.encode()))
                message["headers"] = headers
            await send(message)

        await self.app(scope, receive, send_with_id)


class BodySizeLimitMiddleware:
    """Reject request bodies over `max_bytes` with 413, by Content-Length or while streaming."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        for name, value in scope["headers"]:
            if name == b"content-length" and value.isdigit() and int(value) > self.max_bytes:
                await self._reject(scope, send)
                return

        received = 0

        async def limited_receive() -> Message:
            # A body without Content-Length is counted as it arrives. The HTTPException raised
            # here reaches the route's exception handlers, which return 413.
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    raise HTTPException(413, detail=self._message())
            return message

        await self.app(scope, limited_receive, send)

    def _message(self) -> str:
        return (
            f"request body is larger than {self.max_bytes} bytes; send fewer records per "
            "request, or raise SQLSTORE_MAX_BODY_BYTES"
        )

    async def _reject(self, scope: Scope, send: Send) -> None:
        request_id = scope.get("state", {}).get("request_id", "-")
        error = {"code": "payload_too_large", "message": self._message(), "request_id": request_id}
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
    """Count each request and time it, by route template, method and status."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        started = time.perf_counter()
        status = 500

        async def send_with_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_with_status)
        finally:
            elapsed = time.perf_counter() - started
            route = route_template(scope)
            method = scope["method"]
            metrics.REQUESTS.labels(route=route, method=method, status=str(status)).inc()
            metrics.REQUEST_SECONDS.labels(route=route, method=method).observe(elapsed)
            logger.debug(
                "%s %s %d %.3f ms (request %s)",
                method,
                route,
                status,
                elapsed * 1000,
                scope.get("state", {}).get("request_id", "-"),
            )


def route_template(scope: Scope) -> str:
    """Return the path template of the matched route, such as /features/{group}/{name}."""
    route = scope.get("route")
    return getattr(route, "path", None) or "unmatched"
