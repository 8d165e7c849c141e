"""The fast lane: cached page reads, online lookups and repeated SQL queries served before
FastAPI's own layers.

Page reads and lookups are the most frequent requests a feature service gets; dashboards
send the same SQL again and again. The layers around every
route are FastAPI's error and telemetry middleware, then sqlstore's metrics, request id, access
control and body limit middleware, and together they cost more than the work of a memory hit or
a one-entity lookup. So `FastLane` does for these requests, in one pass, what those layers do:

- the request id, from X-Request-ID or a new one, echoed in the response;
- access control, with the same scope table and tokens as `AccessControlMiddleware`;
- the body size limit of the route, by Content-Length and while the body streams in;
- request metrics and the access log line, as `MetricsMiddleware` records them.

Anything it cannot settle goes to the full application unchanged, with the body it read
replayed: a request without a valid token (to be rejected there), a page that is not in the
memory tier, a request that fails. So the full application stays the only place that rejects a
request. The one exception is a query that ran and failed in the SQL sandbox: its error is
written here, by the application's own error handler, because replaying the request would run
the query a second time.
"""

from __future__ import annotations

import logging
import re
import time
from typing import Any

from starlette.datastructures import Headers
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import Message, Receive, Scope, Send

from sqlstore.api.access import bearer_token, required_scope
from sqlstore.api.caching import CACHE_HEADER, cached_response
from sqlstore.api.encoding import JSON_MEDIA_TYPE
from sqlstore.api.errors import handle_sqlstore_error, handle_unexpected_error
from sqlstore.api.jsonbody import is_json_media_type
from sqlstore.api.middleware import (
    REQUEST_ID_HEADER,
    BodyLimits,
    assign_request_id,
    declared_length_over,
    record_request,
)
from sqlstore.api.online import ONLINE_PATH, lookup_body
from sqlstore.api.pagecache import PAGE_PATH, PAGE_ROUTE_STAND_IN, RouteStandIn, memory_hit
from sqlstore.api.sql import SQL_PATH
from sqlstore.api.sql import lane_response as sql_lane_response
from sqlstore.errors import SqlstoreError
from sqlstore.tokens import TokenFileInvalid, TokenVerifier

logger = logging.getLogger(__name__)

ONLINE_ROUTE_STAND_IN = RouteStandIn(ONLINE_PATH)
SQL_ROUTE_STAND_IN = RouteStandIn(SQL_PATH)
JSON_MEDIA_TYPE_BYTES = JSON_MEDIA_TYPE.encode()


class FastLane:
    """The fast lane of one application: memory hits of page reads and online lookups."""

    def __init__(
        self,
        state: Any,
        verifier: TokenVerifier,
        access_log: bool,
        body_limits: BodyLimits,
        sql_max_parameter_values: int,
    ) -> None:
        self.state = state
        self.verifier = verifier
        self.access_log = access_log
        self.sql_max_parameter_values = sql_max_parameter_values
        self.page_max_bytes = body_limits.general.max_bytes
        self.lookup_max_bytes = body_limits.for_path(ONLINE_PATH).max_bytes
        self.sql_max_bytes = body_limits.for_path(SQL_PATH).max_bytes

    async def serve(self, scope: Scope, receive: Receive, send: Send) -> Receive | None:
        """Serve the request and return None, or return the receive callable with which the
        full application must handle it: `receive` itself, or a replay of the body read."""
        method = scope["method"]
        if method == "GET":
            match = PAGE_PATH.fullmatch(scope["path"])
            if match is not None:
                return await self._serve_page(scope, match, receive, send)
        elif method == "POST":
            if scope["path"] == ONLINE_PATH:
                return await self._serve_lookup(scope, receive, send)
            if scope["path"] == SQL_PATH:
                return await self._serve_sql(scope, receive, send)
        return receive

    async def _serve_page(
        self, scope: Scope, match: re.Match[str], receive: Receive, send: Send
    ) -> Receive | None:
        started = time.perf_counter()
        try:
            settled_here = not declared_length_over(scope, self.page_max_bytes)
            settled_here = settled_here and self._authorized(scope)
            cached = memory_hit(scope, match, self.state) if settled_here else None
        except Exception:
            logger.exception("fast lane: page lookup failed; the route serves the request")
            return receive
        if cached is None:
            return receive

        scope["route"] = PAGE_ROUTE_STAND_IN
        await self._send(scope, cached_response(cached, "hit-memory"), "hit-memory", started, send)
        return None

    async def _serve_lookup(self, scope: Scope, receive: Receive, send: Send) -> Receive | None:
        started = time.perf_counter()
        body = await self._json_body(scope, receive, "a lookup", self.lookup_max_bytes)
        if not isinstance(body, bytes):
            return body

        try:
            content = await lookup_body(self.state, body)
        except Exception:
            # The route raises the same error again and turns it into a response.
            return _replaying([body], complete=True, receive=receive)
        scope["route"] = ONLINE_ROUTE_STAND_IN
        await self._send_json(scope, content, started, send)
        return None

    async def _serve_sql(self, scope: Scope, receive: Receive, send: Send) -> Receive | None:
        started = time.perf_counter()
        body = await self._json_body(scope, receive, "a query", self.sql_max_bytes)
        if not isinstance(body, bytes):
            return body

        assign_request_id(scope)
        scope["route"] = SQL_ROUTE_STAND_IN
        try:
            response = await sql_lane_response(
                self.state, scope, body, receive, self.sql_max_parameter_values
            )
        except SqlstoreError as error:
            # The query ran and failed: running it again in the route would only repeat it.
            response = await handle_sqlstore_error(Request(scope), error)
        except Exception as error:
            response = await handle_unexpected_error(Request(scope), error)
        if response is None:
            del scope["route"]
            return _replaying([body], complete=True, receive=receive)
        cache_result = response.headers.get(CACHE_HEADER, "-")
        await self._send(scope, response, cache_result, started, send)
        return None

    async def _json_body(
        self, scope: Scope, receive: Receive, request_kind: str, max_bytes: int
    ) -> bytes | Receive:
        """Return the body of an authorized JSON request within the route's size limit
        `max_bytes`, or the receive callable with which the full application must handle the
        request."""
        try:
            settled_here = self._authorized(scope) and _plain_json_request(scope, max_bytes)
        except Exception:
            logger.exception(
                "fast lane: checking %s failed; the route serves the request", request_kind
            )
            return receive
        if not settled_here:
            return receive

        body = await _read_body(receive, max_bytes)
        if isinstance(body, list):
            # Over the limit or cut short: the full application reads the same chunks and then
            # the limit's error or the disconnect, as it would without the fast lane.
            return _replaying(body, complete=False, receive=receive)
        return body

    def _authorized(self, scope: Scope) -> bool:
        """Return True when the request needs no token or carries a token with the scope of its
        route. The token's name is stored in the scope's state for the access log."""
        if not self.verifier.enabled:
            return True
        needed, _ = required_scope(scope["method"], scope["path"])
        if needed is None:
            return True
        token = bearer_token(scope)
        if not token:
            return False
        try:
            record = self.verifier.verify(token)
        except TokenFileInvalid:
            return False
        if record is None or not record.allows(needed):
            return False
        scope.setdefault("state", {})["token_name"] = record.name
        return True

    async def _send(
        self, scope: Scope, response: Response, cache_result: str, started: float, send: Send
    ) -> None:
        request_id = scope.get("state", {}).get("request_id") or assign_request_id(scope)
        response.raw_headers.append((REQUEST_ID_HEADER, request_id.encode()))
        status = 500
        try:
            await response(scope, _no_body, send)
            status = response.status_code
        finally:
            elapsed = time.perf_counter() - started
            record_request(scope, status, elapsed, cache_result, self.access_log)

    async def _send_json(self, scope: Scope, content: bytes, started: float, send: Send) -> None:
        """Send `content` as a 200 JSON response, with the headers that the route's `Response`
        would have, built here because that costs less than the `Response` object."""
        headers = [
            (b"content-length", str(len(content)).encode()),
            (b"content-type", JSON_MEDIA_TYPE_BYTES),
            (REQUEST_ID_HEADER, assign_request_id(scope).encode()),
        ]
        status = 500
        try:
            await send({"type": "http.response.start", "status": 200, "headers": headers})
            await send({"type": "http.response.body", "body": content})
            status = 200
        finally:
            elapsed = time.perf_counter() - started
            record_request(scope, status, elapsed, "-", self.access_log)


def _plain_json_request(scope: Scope, max_bytes: int) -> bool:
    """Return True for an uncompressed JSON body that its Content-Length, if any, does not put
    over `max_bytes`. The full application handles the others."""
    if declared_length_over(scope, max_bytes):
        return False
    headers = Headers(scope=scope)
    if "content-encoding" in headers:
        # Even "identity", so that the route's check handles every Content-Encoding alike.
        return False
    content_type = headers.get("content-type")
    return content_type is not None and is_json_media_type(content_type)


async def _read_body(receive: Receive, max_bytes: int) -> bytes | list[bytes]:
    """Return the whole body, or the chunks read so far once they pass `max_bytes` or the
    client disconnects before the end of the body."""
    chunks = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return chunks
        chunk = message.get("body", b"")
        chunks.append(chunk)
        size += len(chunk)
        if size > max_bytes:
            return chunks
        if not message.get("more_body", False):
            return b"".join(chunks)


def _replaying(chunks: list[bytes], complete: bool, receive: Receive) -> Receive:
    """Return a receive callable that delivers `chunks` again, then what `receive` delivers.
    `complete` is True when the chunks are the whole body."""
    pending = list(chunks)

    async def replay() -> Message:
        if not pending:
            return await receive()
        chunk = pending.pop(0)
        return {"type": "http.request", "body": chunk, "more_body": bool(pending) or not complete}

    return replay


async def _no_body() -> Message:
    return {"type": "http.disconnect"}
