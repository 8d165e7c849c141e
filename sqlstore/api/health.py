"""`GET /health`: whether the store root, the registry, DuckDB and the tables' data files are
usable by this worker."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from datetime import UTC, datetime

from fastapi import APIRouter, Request

from sqlstore.api.datafiles import unavailable_tables
from sqlstore.api.encoding import JSONBytesResponse
from sqlstore.store import FeatureStore

logger = logging.getLogger(__name__)

router = APIRouter(tags=["service"])

OK = "ok"
# The prefix of a check result for a part that works, but worse than it should.
DEGRADED = "degraded: "
# Tables that the `tables` check names in its text; `unavailable_tables` lists them all.
MAX_NAMED_TABLES = 10


def check_root(store: FeatureStore) -> str:
    root = store.root
    if not root.is_dir():
        return f"store root {root} is missing or not a folder"
    if not os.access(root, os.R_OK | os.X_OK):
        return f"store root {root} is not readable by the server process"
    return OK


def check_registry(store: FeatureStore) -> str:
    # Listing the folder proves it readable without parsing every entry.
    folder = store.layout.registry_dir
    try:
        with os.scandir(folder) as entries:
            next(entries, None)
    except OSError as error:
        return f"registry folder {folder} cannot be read: {error.strerror or error}"
    problem = store.registry.version_problem()
    if problem is not None:
        return DEGRADED + problem
    return OK


def check_duckdb(store: FeatureStore) -> str:
    try:
        with store.catalog.cursor() as cursor:
            row = cursor.execute("SELECT 42").fetchone()
    except Exception as error:  # noqa: BLE001 - any DuckDB failure means unhealthy
        return f"DuckDB did not answer: {error}"
    if row != (42,):
        return f"DuckDB returned {row!r} for SELECT 42"
    return OK


def check_tables(store: FeatureStore) -> tuple[str, list[str]]:
    """Return the `tables` check and the tables whose registry entry or data file is missing or
    damaged. Reads of such a table fail with 503, but other tables are served, so the check is
    degraded, not failed. The result names tables, not paths, and the log has the paths and the
    causes."""
    try:
        unavailable = unavailable_tables(store)
    except OSError as error:
        # The registry check reports why the registry cannot be listed.
        return DEGRADED + f"not checked: the registry cannot be listed ({error.strerror})", []
    if not unavailable:
        return OK, []

    named = ", ".join(unavailable[:MAX_NAMED_TABLES])
    if len(unavailable) > MAX_NAMED_TABLES:
        named += f" and {len(unavailable) - MAX_NAMED_TABLES} more"
    result = (
        f"{len(unavailable)} table(s) cannot be read, because the registry entry or the data "
        f"file is missing, damaged or replaced outside sqlstore: {named}; the server log names "
        "each file and cause"
    )
    return DEGRADED + result, unavailable


CHECKS: dict[str, Callable[[FeatureStore], str]] = {
    "root": check_root,
    "registry": check_registry,
    "duckdb": check_duckdb,
}


@router.get(
    "/health",
    responses={503: {"description": "A check failed; `checks` names it and the cause."}},
)
def health(request: Request) -> JSONBytesResponse:
    """Report whether the store root is readable, the registry folder can be listed and
    DuckDB runs a query, with status 503 when any of them fails, and list the tables whose
    registry entry or data file is missing or damaged. A check that starts with `degraded: `
    keeps status 200 and makes `status` `degraded`. No token is needed."""
    store: FeatureStore = request.app.state.store
    checks = {name: check(store) for name, check in CHECKS.items()}
    checks["tables"], unavailable = check_tables(store)
    problems = {name: result for name, result in checks.items() if result != OK}
    failed = {name: result for name, result in problems.items() if not result.startswith(DEGRADED)}
    body = {
        "status": _overall_status(failed, problems),
        "timestamp": datetime.now(UTC).isoformat(),
        "checks": checks,
        "unavailable_tables": unavailable,
    }

    # Log the transitions only, so that a probe every second does not flood the log.
    previous = getattr(request.app.state, "health_failures", {})
    if problems != previous:
        if failed:
            logger.error("health check failed: %s", "; ".join(failed.values()))
        elif problems:
            causes = (problem.removeprefix(DEGRADED) for problem in problems.values())
            logger.warning("health check degraded: %s", "; ".join(causes))
        else:
            logger.info("health checks pass again")
        request.app.state.health_failures = problems
    return JSONBytesResponse(body, status_code=503 if failed else 200)


def _overall_status(failed: dict[str, str], problems: dict[str, str]) -> str:
    if failed:
        return "unhealthy"
    if problems:
        return "degraded"
    return "healthy"
