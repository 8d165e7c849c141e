"""The cache key of page reads, and the middleware that serves memory hits before routing.

A cached page is the most common request a feature service gets, and FastAPI's routing and
parameter validation cost more than the cache lookup itself. `CachedPageMiddleware` computes the
same key as the page route from the raw request and, when the memory tier contains it, sends the
stored response at once. Anything it cannot settle (an unusual query, a missing table, a miss)
goes on to the route unchanged, so the route stays the only place that validates parameters or
builds a response: an entry exists only for a key that the route computed and answered with 200.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from typing import Any

from starlette.datastructures import Headers, QueryParams
from starlette.types import ASGIApp, Receive, Scope, Send

from sqlstore.api.caching import cached_response, table_versions
from sqlstore.api.encoding import negotiate_format
from sqlstore.cache import ResultCache, cache_key
from sqlstore.errors import SqlstoreError

logger = logging.getLogger(__name__)

PAGE_KIND = "page"
PAGE_ROUTE = "/features/{group}/{name}"
PAGE_PATH = re.compile(r"/features/([^/]+)/([^/]+)")
# Only plain limits are settled here; the route validates and rejects the rest.
PLAIN_LIMIT = re.compile(r"[0-9]{1,9}")


def page_request(
    group: str, name: str, query_items: list[tuple[str, str]], limit: int, file_format: str
) -> dict[str, Any]:
    """Return the canonical form of a page read: what its cache key is computed from."""
    return {
        "group": group,
        "name": name,
        "query": sorted(query_items),
        "limit": limit,
        "format": file_format,
    }


@dataclass(frozen=True)
class RouteStandIn:
    """Takes the place of the matched route in the ASGI scope of a request served before
    routing, for middleware that reads the route's path."""

    path: str


PAGE_ROUTE_STAND_IN = RouteStandIn(PAGE_ROUTE)


class CachedPageMiddleware:
    """Send page reads found in this worker's memory tier without routing them."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] == "GET":
            match = PAGE_PATH.fullmatch(scope["path"])
            if match is not None and await self._send_hit(scope, match, receive, send):
                return
        await self.app(scope, receive, send)

    async def _send_hit(
        self, scope: Scope, match: re.Match[str], receive: Receive, send: Send
    ) -> bool:
        state = scope["app"].state
        cache: ResultCache | None = getattr(state, "cache", None)
        if cache is None or not cache.settings.memory_enabled:
            return False

        key = self._key(scope, match, state)
        if key is None:
            return False
        cached = cache.peek_memory(key)
        if cached is None:
            return False

        # The request metrics label each request with the path of the route that served it.
        scope["route"] = PAGE_ROUTE_STAND_IN
        await cached_response(cached, "hit-memory")(scope, receive, send)
        return True

    def _key(self, scope: Scope, match: re.Match[str], state: Any) -> str | None:
        """Return the page route's cache key for this request, or None when it is not plain
        enough to compute here."""
        group, name = match.groups()
        query = QueryParams(scope["query_string"])
        raw_limit = query.get("limit")
        if raw_limit is None:
            limit = state.settings.default_limit
        elif PLAIN_LIMIT.fullmatch(raw_limit):
            limit = int(raw_limit)
        else:
            return None

        try:
            file_format = negotiate_format(Headers(scope=scope).get("accept"))
            versions = table_versions(state.store, [(group, name)])
        except (SqlstoreError, OSError):
            return None
        canonical = page_request(group, name, query.multi_items(), limit, file_format)
        return cache_key(PAGE_KIND, canonical, versions)
