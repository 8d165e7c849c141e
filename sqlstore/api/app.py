"""The FastAPI application: one FeatureStore per process, shared by all requests."""

from __future__ import annotations

import logging
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import asdict

from fastapi import FastAPI
from starlette.types import Receive, Scope, Send

import sqlstore
from sqlstore import metrics
from sqlstore.api import caching, features, health, online, training
from sqlstore.api import sql as sql_routes
from sqlstore.api.access import AccessControlMiddleware
from sqlstore.api.errors import install_error_handlers
from sqlstore.api.fastlane import FastLane
from sqlstore.api.middleware import (
    HEAD_REQUEST,
    BodySizeLimitMiddleware,
    MetricsMiddleware,
    RequestIdMiddleware,
)
from sqlstore.cache import CacheSettings, ResultCache
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


class SqlstoreAPI(FastAPI):
    """FastAPI with the fast lane (`sqlstore.api.fastlane`) in front of all its layers."""

    fast_lane: FastLane | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] == "HEAD":
            # FastAPI routes accept GET only. A HEAD request is served as GET on a copy of the
            # scope, and the server, which still sees HEAD, sends the headers without the body.
            scope = {**scope, "method": "GET", HEAD_REQUEST: True}
        if scope["type"] == "http" and self.fast_lane is not None:
            remaining = await self.fast_lane.serve(scope, receive, send)
            if remaining is None:
                return
            receive = remaining
        await super().__call__(scope, receive, send)


def create_app(settings: Settings | None = None) -> FastAPI:
    """Build the application for the store named by `settings` (default: from the environment)."""
    settings = settings or Settings.from_environment()
    tokens = tokens_path(settings.root)
    verifier = TokenVerifier(tokens)

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
            "serving store %s: %d tables; limits: page %d rows, body %d bytes, "
            "%d records per write, %d entity ids per lookup",
            settings.root,
            len(tables),
            settings.max_limit,
            settings.max_body_bytes,
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
    app.fast_lane = FastLane(app.state, verifier, settings.access_log)
    install_error_handlers(app)
    app.add_middleware(BodySizeLimitMiddleware, max_bytes=settings.max_body_bytes)
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
    return app
