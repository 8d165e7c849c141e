"""The FastAPI application: one FeatureStore per process, shared by all requests."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime

from fastapi import FastAPI

import sqlstore
from sqlstore.api import features
from sqlstore.api.errors import install_error_handlers
from sqlstore.api.middleware import BodySizeLimitMiddleware, RequestIdMiddleware
from sqlstore.settings import Settings
from sqlstore.store import FeatureStore

logger = logging.getLogger(__name__)


def create_app(settings: Settings | None = None) -> FastAPI:
    """Build the application for the store named by `settings` (default: from the environment)."""
    settings = settings or Settings.from_environment()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        store = FeatureStore(settings.root, lock_timeout_seconds=settings.lock_timeout_seconds)
        store.recover()
        tables = store.list_tables()
        app.state.store = store
        app.state.settings = settings
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
        yield
        store.catalog.close()

    app = FastAPI(
        title="sqlstore",
        version=sqlstore.__version__,
        description="Feature tables stored as Parquet and served through DuckDB.",
        lifespan=lifespan,
    )
    install_error_handlers(app)
    app.add_middleware(BodySizeLimitMiddleware, max_bytes=settings.max_body_bytes)
    app.add_middleware(RequestIdMiddleware)

    @app.get("/health", tags=["service"])
    def health() -> dict[str, str]:
        """Report that the server is up, with the current UTC time."""
        return {"status": "healthy", "timestamp": datetime.now(UTC).isoformat()}

    app.include_router(features.router)
    return app
