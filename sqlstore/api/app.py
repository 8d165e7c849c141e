"""The FastAPI application: one FeatureStore per process, shared by all requests."""

from __future__ import annotations

import logging
import re
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import asdict
from urllib.parse import unquote_to_bytes

from fastapi import FastAPI
from starlette.datastructures import Headers
from starlette.types import ASGIApp, Receive, Scope, Send

import sqlstore
from sqlstore import metrics
from sqlstore.api import caching, features, health, online, training
from sqlstore.api import sql as sql_routes
from sqlstore.api.access import AccessControlMiddleware
from sqlstore.api.encoding import negotiate_format
from sqlstore.api.errors import install_error_handlers
from sqlstore.api.fastlane import FastLane
from sqlstore.api.middleware import (
    HEAD_REQUEST,
    BodyLimit,
    BodyLimits,
    BodySizeLimitMiddleware,
    MetricsMiddleware,
    RequestIdMiddleware,
)
from sqlstore.cache import CacheSettings, ResultCache
from sqlstore.errors import InvalidInput, NotAcceptable
from sqlstore.logs import BufferedStreamHandler
from sqlstore.settings import Settings
from sqlstore.store import FeatureStore
from sqlstore.tokens import TokenVerifier, tokens_path

logger = logging.getLogger(__name__)


def build_cache(settings: Settings) -> ResultCache | None:
    """Return the result cache that `settings` describe, or None when both tiers are off."""
    cache_settings = CacheSettings(
        memory_entries=settings.cache_memory_entries,
        memory_bytes=settings.cache_memory_bytes,
        memory_max_entry_bytes=settings.cache_memory_max_entry_bytes,
        ttl_seconds=settings.cache_ttl_seconds,
        disk_bytes=settings.cache_disk_bytes,
        disk_max_entry_bytes=settings.cache_disk_max_entry_bytes,
        disk_dir=settings.root / "cache" / "results",
    )
    if not cache_settings.memory_enabled and not cache_settings.disk_enabled:
        return None
    logger.info(
        "result cache: memory %d entries / %d bytes, TTL %g s; disk %d bytes",
        settings.cache_memory_entries,
        settings.cache_memory_bytes,
        settings.cache_ttl_seconds,
        settings.cache_disk_bytes,
    )
    return ResultCache(cache_settings, on_event=caching.record_cache_event)


BATCH_PATH = "/features/batch"
NAMED_QUERY_PREFIX = "/queries/"


def body_limits(settings: Settings) -> BodyLimits:
    """Return the body limits of the routes. Lookups and SQL queries get smaller limits than
    writes because their valid bodies are small. Parsing a large body holds Python's GIL for
    up to seconds, in whichever thread it runs."""
    general = BodyLimit(
        settings.max_body_bytes, "SQLSTORE_MAX_BODY_BYTES", "send fewer records per request"
    )
    lookup = BodyLimit(
        settings.lookup_max_body_bytes,
        "SQLSTORE_LOOKUP_MAX_BODY_BYTES",
        "split the entities into several requests",
        f"POST {online.ONLINE_PATH} and POST {BATCH_PATH}",
    )
    sql = BodyLimit(
        settings.sql_max_body_bytes,
        "SQLSTORE_SQL_MAX_BODY_BYTES",
        "write long lists of values to a feature table and join it in the query",
        f"POST {sql_routes.SQL_PATH} and POST {NAMED_QUERY_PREFIX}{{name}}",
    )
    return BodyLimits.capped(
        general,
        {online.ONLINE_PATH: lookup, BATCH_PATH: lookup, sql_routes.SQL_PATH: sql},
        ((NAMED_QUERY_PREFIX, sql),),
    )


class SqlstoreAPI(FastAPI):
    """FastAPI with the fast lane (`sqlstore.api.fastlane`) in front of all its layers."""

    fast_lane: FastLane | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] == "HEAD":
            # FastAPI routes accept GET only. A HEAD request is served as GET on a copy of the
            # scope, and the server, which still sees HEAD, sends the headers without the body.
            scope = {**scope, "method": "GET", HEAD_REQUEST: True}
        if scope["type"] == "http" and encoded_slash_segment(scope) is not None:
            # Starlette routes on the decoded path, in which such a segment becomes two, so the
            # request skips the fast lane and the router rejects it.
            scope = {**scope, ENCODED_SLASH: True}
        elif scope["type"] == "http" and self.fast_lane is not None and _fast_lane_applies(scope):
            remaining = await self.fast_lane.serve(scope, receive, send)
            if remaining is None:
                return
            receive = remaining
        await super().__call__(scope, receive, send)


ENCODED_SLASH = "sqlstore.encoded_slash"
ENCODED_SLASH_PATTERN = re.compile(rb"%2f", re.IGNORECASE)


def encoded_slash_segment(scope: Scope) -> str | None:
    """Return the decoded path segment of the request that contains an encoded slash (%2F),
    or None. Starlette routes on the decoded path, so without this check `/features/a%2Fb`
    would read table b of group a."""
    raw_path = scope.get("raw_path")
    if not raw_path or ENCODED_SLASH_PATTERN.search(raw_path) is None:
        return None
    for segment in raw_path.split(b"?", 1)[0].split(b"/"):
        if ENCODED_SLASH_PATTERN.search(segment):
            return unquote_to_bytes(segment).decode("utf-8", "replace")
    return None


def _fast_lane_applies(scope: Scope) -> bool:
    """Return False for an online lookup whose Accept header does not select JSON, the only
    format of the fast lane's lookups. The route serves those, and returns the 406 for an
    unsupported format."""
    if scope["path"] != online.ONLINE_PATH:
        return True
    accept = Headers(scope=scope).get("accept")
    if not accept:
        return True
    try:
        return negotiate_format(accept) == "json"
    except NotAcceptable:
        return False


def reject_encoded_slash(router_app: ASGIApp) -> ASGIApp:
    """Wrap the router so that a request flagged by `SqlstoreAPI` gets a 400. The error is
    raised inside the exception handlers, so it has the usual JSON shape and request id."""

    async def route(scope: Scope, receive: Receive, send: Send) -> None:
        if scope.get(ENCODED_SLASH):
            value = encoded_slash_segment(scope)
            raise InvalidInput(
                f"invalid path segment {value!r}: group, table and query names cannot contain "
                "'/', so an encoded slash (%2F) in the path is rejected; remove the '/' from "
                "the name"
            )
        await router_app(scope, receive, send)

    return route


def create_app(settings: Settings | None = None) -> FastAPI:
    """Build the application for the store named by `settings` (default: from the environment)."""
    settings = settings or Settings.from_environment()
    tokens = tokens_path(settings.root)
    verifier = TokenVerifier(tokens)
    limits = body_limits(settings)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        store = FeatureStore(
            settings.root,
            lock_timeout_seconds=settings.lock_timeout_seconds,
            duckdb_threads=settings.duckdb_threads or None,
            max_columns=settings.max_columns,
        )
        store.recover()
        sys.setswitchinterval(settings.switch_interval_seconds)
        tables = store.list_tables()
        app.state.store = store
        app.state.settings = settings
        app.state.cache = build_cache(settings)
        metrics.publish_tables(tables)
        logger.info(
            "serving store %s: %d tables; limits: page %d rows, body %d bytes (lookups %d, "
            "SQL %d), %d records per write, %d entity ids per lookup",
            settings.root,
            len(tables),
            settings.max_limit,
            settings.max_body_bytes,
            limits.for_path(online.ONLINE_PATH).max_bytes,
            limits.for_path(sql_routes.SQL_PATH).max_bytes,
            settings.max_records_per_write,
            settings.max_entity_ids,
        )
        logger.info(
            "settings: %s", " ".join(f"{key}={value}" for key, value in asdict(settings).items())
        )
        if verifier.enabled:
            logger.info("access control on: %d token(s) in %s", verifier.token_count(), tokens)
        else:
            logger.info("access control off: create a token to turn it on (%s)", tokens)
        yield
        store.catalog.close()
        for handler in logging.getLogger().handlers:
            if isinstance(handler, BufferedStreamHandler):
                handler.stop_buffering()
        if app.state.cache is not None:
            app.state.cache.close()

    app = SqlstoreAPI(
        title="sqlstore",
        version=sqlstore.__version__,
        description="Feature tables stored as Parquet and served through DuckDB.",
        lifespan=lifespan,
        # sqlstore exports Prometheus metrics instead. With FastAPI's OpenTelemetry hooks on,
        # every request checks for configured providers: about 5 µs of a 48 µs cache hit,
        # measured in process.
        telemetry={"tracing": False, "metrics": False, "logs": False, "operation_spans": False},
    )
    app.fast_lane = FastLane(
        app.state, verifier, settings.access_log, limits, settings.sql_max_parameter_values
    )
    install_error_handlers(app)
    app.add_middleware(BodySizeLimitMiddleware, limits=limits)
    # Outside the body size limit, so that a request without a valid token is rejected before
    # its body is read, and inside the request id, so that the rejection carries one.
    app.add_middleware(AccessControlMiddleware, verifier=verifier)
    app.add_middleware(RequestIdMiddleware)
    app.add_middleware(MetricsMiddleware, access_log=settings.access_log)

    app.include_router(health.router)
    # Early in the route list, because each request tries the routes in order.
    app.include_router(online.router)
    app.include_router(features.router)
    app.include_router(training.router)
    app.include_router(sql_routes.router)
    app.include_router(caching.router)
    app.router.middleware_stack = reject_encoded_slash(app.router.middleware_stack)
    return app
