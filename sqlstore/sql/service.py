"""SqlService: validates read-only queries and runs them in the sandbox, for the REST API and
the command line alike."""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pyarrow as pa
from cachetools import LRUCache

from sqlstore.errors import InvalidInput, RegistryEntryDamaged, SqlstoreError
from sqlstore.sql.duckdb_check import (
    HTTP_HINTS,
    CallerHints,
    TreeFacts,
    cached_tree_facts,
    tree_facts,
)
from sqlstore.sql.limits import SqlLimits
from sqlstore.sql.named import NamedQuery, find_named_query, list_named_queries
from sqlstore.sql.results import with_unique_names
from sqlstore.sql.sandbox import QueryResult, Sandbox, TreeCheck
from sqlstore.sql.validate import (
    VALIDATION_CACHE_SIZE,
    ValidatedQuery,
    check_text,
    validate_query,
)
from sqlstore.sql.worker import ViewDefinition
from sqlstore.store import FeatureStore

logger = logging.getLogger(__name__)

# Queries that take at least this long are logged at INFO.
SLOW_QUERY_MS = 1000.0
# Requests whose prepared queries `remember_prepared` remembers, and the longest key it takes.
PREPARED_REQUESTS = 512
PREPARED_KEY_BYTES = 8192


@dataclass(frozen=True)
class SqlResult:
    """Rows of one query and how they were produced: an Arrow `table`, or the JSON array of
    row objects in `json_rows` with the `columns`, their `dtypes` and the number of `rows`."""

    table: pa.Table | None
    limit: int
    truncated_by: str | None
    elapsed_ms: float
    json_rows: bytes | None = None
    columns: tuple[str, ...] = ()
    dtypes: tuple[str, ...] = ()
    rows: int = 0

    @property
    def truncated(self) -> bool:
        return self.truncated_by is not None

    @property
    def row_count(self) -> int:
        return self.table.num_rows if self.table is not None else self.rows


@dataclass(frozen=True)
class PreparedQuery:
    """A validated query with its row limit and the views of the registry it was validated
    against."""

    query: ValidatedQuery
    row_limit: int
    views: list[ViewDefinition]
    started: float


class SqlService:
    """Read-only SQL over the feature views of one store, and the named queries of a folder."""

    def __init__(
        self,
        store: FeatureStore,
        limits: SqlLimits,
        queries_dir: Path | None = None,
        hints: CallerHints = HTTP_HINTS,
    ) -> None:
        """`hints` words the fixes in error messages for the interface of the callers: HTTP
        (`HTTP_HINTS`) or the command line (`CLI_HINTS`)."""
        self.store = store
        self.limits = limits
        self.queries_dir = queries_dir
        self.hints = hints
        self.sandbox = Sandbox(store.root, limits)
        # Texts that passed validation lately, in the same number as the validator caches.
        self._validated: LRUCache[str, bool] = LRUCache(maxsize=VALIDATION_CACHE_SIZE)
        # Prepared queries by request, with the registry version they were prepared under. Only
        # the fast lane uses it, on the event loop, so it needs no lock.
        self._prepared_requests: LRUCache[tuple[bytes, ...], tuple[bytes, PreparedQuery]] = (
            LRUCache(maxsize=PREPARED_REQUESTS)
        )

    def close(self) -> None:
        self.sandbox.close()

    def run(
        self,
        sql: object,
        parameters: Mapping[str, Any] | None = None,
        limit: int | None = None,
        request_id: str = "-",
    ) -> SqlResult:
        """Validate `sql`, run it in the sandbox and return at most `limit` rows (default and
        maximum: the max_rows limit). Raises the errors of validate_query and Sandbox.run."""
        prepared = self.prepare(sql, parameters, limit)
        return self.execute(prepared, request_id)

    def prepare(
        self, sql: object, parameters: Mapping[str, Any] | None = None, limit: int | None = None
    ) -> PreparedQuery:
        """Validate `sql` and its parameters against the registered views, without running it.

        For a text not validated lately, an idle worker process parses it with DuckDB while
        this thread applies sqlglot's checks, and this thread then checks the syntax tree that
        the worker serialized. So a new text costs about the slower of the two parsers, not
        both.
        """
        started = time.perf_counter()
        # Started first, because DuckDB's parse takes longer than everything else here.
        check = self._start_tree_check(sql)
        try:
            row_limit = self._row_limit(limit)
            entries = self.store.registry.list()
            # The listing leaves out tables whose entry file is damaged. They validate, so that
            # a query of one gets the 503 that the REST routes give rather than "not registered".
            damaged = self.store.registry.damaged_tables()
            registered = [(entry.group, entry.name) for entry in entries]
            registered += [tuple(reference.split("/", 1)) for reference in damaged]
            facts = None if check is None else functools.partial(self._checked_facts, check, sql)
            query = validate_query(sql, registered, parameters, self.limits, facts, self.hints)
        finally:
            if check is not None:
                check.close()
        _raise_if_damaged(query, damaged)
        self._validated[query.sql] = True
        views = [ViewDefinition(e.group, e.name, e.path, e.version) for e in entries]
        return PreparedQuery(query=query, row_limit=row_limit, views=views, started=started)

    def registry_version(self) -> bytes | None:
        """Return the registry version to pass to `remember_prepared`; read it before `prepare`."""
        return self.store.registry.version()

    def remember_prepared(
        self, key: tuple[bytes, ...], version: bytes | None, prepared: PreparedQuery
    ) -> None:
        """Remember `prepared` for the next request with the same `key`, which must determine the
        text, parameters and limit it was prepared from (the fast lane uses the request body).
        `version` is `registry_version()` read before `prepare`. Keys longer than
        PREPARED_KEY_BYTES are not remembered."""
        if version is not None and sum(len(part) for part in key) <= PREPARED_KEY_BYTES:
            self._prepared_requests[key] = (version, prepared)

    def prepared_for(self, key: tuple[bytes, ...]) -> PreparedQuery | None:
        """Return the query remembered under `key`, timed from now, while the registry is at the
        version it was prepared under; else None.

        This skips `prepare` for a repeated request, which the registry alone can change:
        validation depends on the text, the parameters, the registered views and the limits.
        """
        remembered = self._prepared_requests.get(key)
        if remembered is None:
            return None
        version, prepared = remembered
        if self.store.registry.version() != version:
            del self._prepared_requests[key]
            return None
        return replace(prepared, started=time.perf_counter())

    def _start_tree_check(self, sql: object) -> TreeCheck | None:
        if not isinstance(sql, str) or self.validated_before(sql):
            return None
        if cached_tree_facts(sql, self.limits) is not None:
            return None
        try:
            check_text(sql, self.limits)
        except SqlstoreError:
            # validate_query raises the same error before it needs the worker's findings.
            return None
        return self.sandbox.start_tree_check(sql)

    def _checked_facts(self, check: TreeCheck, sql: str) -> TreeFacts:
        """Return the findings of the walk over the syntax tree that the worker serialized, or
        raise its rejection. Without a serialization this process parses the text itself."""
        return tree_facts(sql, self.limits, check.result())

    def execute(self, prepared: PreparedQuery, request_id: str = "-") -> SqlResult:
        """Run a prepared query in the sandbox; the result contains an Arrow table."""
        result = self.sandbox.run(prepared.query, prepared.views, prepared.row_limit, request_id)
        return self._finish(prepared, result, request_id)

    async def execute_async(
        self,
        prepared: PreparedQuery,
        request_id: str = "-",
        json_rows: bool = False,
        disconnected: asyncio.Future[Any] | None = None,
    ) -> SqlResult:
        """Run a prepared query in the sandbox, waiting on the event loop. With `json_rows`,
        the result may hold JSON rows instead of a table. When `disconnected` completes first,
        the query is stopped and QueryCancelled raised."""
        result = await self.sandbox.run_async(
            prepared.query, prepared.views, prepared.row_limit, request_id, json_rows, disconnected
        )
        return self._finish(prepared, result, request_id)

    def validated_before(self, sql: object) -> bool:
        """Return True when `sql` passed `prepare` recently, so that preparing it again costs
        a few cache lookups."""
        return isinstance(sql, str) and sql in self._validated

    def _finish(self, prepared: PreparedQuery, result: QueryResult, request_id: str) -> SqlResult:
        elapsed_ms = (time.perf_counter() - prepared.started) * 1000
        _log_result(result, elapsed_ms, request_id)
        if result.table is None:
            return SqlResult(
                table=None,
                limit=prepared.row_limit,
                truncated_by=result.truncated_by,
                elapsed_ms=elapsed_ms,
                json_rows=result.json_rows,
                columns=result.columns,
                dtypes=result.dtypes,
                rows=result.row_count,
            )
        return SqlResult(
            table=with_unique_names(result.table),
            limit=prepared.row_limit,
            truncated_by=result.truncated_by,
            elapsed_ms=elapsed_ms,
        )

    def named_queries(self) -> list[NamedQuery]:
        """Return the valid named queries, sorted by name."""
        if self.queries_dir is None:
            return []
        return list_named_queries(self.queries_dir)

    def named_query(self, name: object) -> NamedQuery:
        """Return one named query; raise InvalidInput, NotFound or NamedQueryInvalid."""
        if self.queries_dir is None:
            raise InvalidInput("no queries folder is configured; set SQLSTORE_QUERIES_DIR")
        return find_named_query(self.queries_dir, name, self.hints)

    def run_named(
        self,
        name: object,
        values: Mapping[str, Any],
        limit: int | None = None,
        request_id: str = "-",
    ) -> tuple[NamedQuery, dict[str, Any], SqlResult]:
        """Run a named query with `values` for its parameters (defaults fill the rest); return
        the query, the bound parameter values and the result."""
        query = self.named_query(name)
        parameters = query.bind(values)
        return query, parameters, self.run(query.sql, parameters, limit, request_id)

    def _row_limit(self, limit: int | None) -> int:
        if limit is None:
            return self.limits.max_rows
        if isinstance(limit, bool) or not isinstance(limit, int) or limit < 0:
            raise InvalidInput(f"invalid limit {limit!r}: use a whole number of rows, 0 or more")
        if limit > self.limits.max_rows:
            raise InvalidInput(
                f"limit {limit} is more than the maximum {self.limits.max_rows} rows "
                "(SQLSTORE_SQL_MAX_ROWS); aggregate in SQL or page with LIMIT and OFFSET"
            )
        return limit


def _raise_if_damaged(query: ValidatedQuery, damaged: list[str]) -> None:
    """Raise RegistryEntryDamaged for the first table of `query` in `damaged`."""
    for group, name in sorted(query.tables):
        if f"{group}/{name}" in damaged:
            raise RegistryEntryDamaged.of_table(f"{group}/{name}")


def _log_result(result: QueryResult, elapsed_ms: float, request_id: str) -> None:
    """Log a query's row count and time: at INFO when it was slow or cut by a limit, which an
    operator may want to act on, else at DEBUG. The access log already has a line for every
    request, and a second INFO line per query cost about 30 µs of the server's time per
    request on the development machine."""
    slow = elapsed_ms >= SLOW_QUERY_MS
    level = logging.INFO if slow or result.truncated else logging.DEBUG
    if not logger.isEnabledFor(level):
        return
    logger.log(
        level,
        "request %s: query returned %d rows%s in %.1f ms%s",
        request_id,
        result.row_count,
        f" (cut at the {result.truncated_by.replace('_', ' ')})" if result.truncated else "",
        elapsed_ms,
        " (slow)" if slow else "",
    )
