"""The cache key of page reads, computed from the raw request for the fast lane.

A cached page is the most common request a feature service gets, and FastAPI's routing and
parameter validation cost more than the cache lookup itself. `memory_hit` computes the same key
as the page route from the raw request, so that the fast lane (`sqlstore.api.fastlane`) can send
a memory hit at once. Anything it cannot settle (an unusual query, a missing table, a miss) goes
on to the route unchanged, so the route stays the only place that validates parameters or
builds a response: an entry exists only for a key that the route computed and answered with 200.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from typing import Any

from starlette.datastructures import Headers, QueryParams
from starlette.types import Scope

from sqlstore.api.caching import table_versions
from sqlstore.api.encoding import negotiate_format
from sqlstore.cache import CachedResponse, ResultCache, cache_key
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


def memory_hit(scope: Scope, match: re.Match[str], state: Any) -> CachedResponse | None:
    """Return the memory tier's entry for the page read in `scope` (whose path matched
    PAGE_PATH), or None when the memory tier does not contain it or the request is not plain
    enough to compute its key here."""
    cache: ResultCache | None = getattr(state, "cache", None)
    if cache is None or not cache.settings.memory_enabled:
        return None
    key = _key(scope, match, state)
    if key is None:
        return None
    return cache.peek_memory(key)


def _key(scope: Scope, match: re.Match[str], state: Any) -> str | None:
    """Return the page route's cache key for this request, or None when it is not plain enough
    to compute here."""
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
