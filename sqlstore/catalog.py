"""The DuckDB catalog: one schema per feature group and one view per table over its Parquet file.

Each process keeps one in-memory DuckDB database. Requests never share a connection: each takes
its own cursor (a separate connection to the same database), which DuckDB allows across threads.
Views are refreshed whenever the registry version of a table differs from the one the view was
built for, so writes made by another process are picked up on the next request.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from typing import Any

import duckdb
import pyarrow as pa

from sqlstore.errors import TableUnavailable
from sqlstore.identifiers import quote_identifier, quote_string
from sqlstore.layout import StoreLayout
from sqlstore.registry import RegistryEntry
from sqlstore.stablefiles import raise_if_damaged

logger = logging.getLogger(__name__)


def query_arrow(
    cursor: duckdb.DuckDBPyConnection, sql: str, parameters: list[Any] | None = None
) -> pa.Table:
    """Run `sql` with bound `parameters` and return the result as an Arrow table.

    A relation (`cursor.sql`) hands Arrow its result without the extra copy that fetching
    from `cursor.execute` makes; `to_arrow_table` is DuckDB 1.4's name, `fetch_arrow_table`
    the older one.
    """
    relation = cursor.sql(sql, params=parameters or None)
    if hasattr(relation, "to_arrow_table"):
        return relation.to_arrow_table()
    return relation.fetch_arrow_table()


class Catalog:
    """DuckDB views over the feature tables of one store."""

    def __init__(self, layout: StoreLayout, threads: int | None = None) -> None:
        self.layout = layout
        self._connection = duckdb.connect(":memory:")
        self._connection.execute("SET GLOBAL TimeZone = 'UTC'")
        if threads:
            self._connection.execute(f"SET GLOBAL threads = {int(threads)}")
        self._lock = threading.Lock()
        self._versions: dict[tuple[str, str], tuple[int, datetime]] = {}

    @contextmanager
    def cursor(self) -> Iterator[duckdb.DuckDBPyConnection]:
        """Yield a cursor of its own to the catalog's database, closed afterwards."""
        cursor = self._connection.cursor()
        try:
            yield cursor
        finally:
            cursor.close()

    def ensure_view(self, entry: RegistryEntry) -> None:
        """Create or replace the view of `entry` unless it already matches the entry's version."""
        key = (entry.group, entry.name)
        # updated_at as well as version: a table deleted and written again restarts at version 1.
        stamp = (entry.version, entry.updated_at)
        if self._versions.get(key) == stamp:
            return

        with self._lock:
            if self._versions.get(key) == stamp:
                return
            path = self.layout.root / entry.path
            schema = quote_identifier(entry.group)
            view = f"{schema}.{quote_identifier(entry.name)}"
            self._connection.execute(f"CREATE SCHEMA IF NOT EXISTS {schema}")
            try:
                self._connection.execute(
                    f"CREATE OR REPLACE VIEW {view} AS "
                    f"SELECT * FROM read_parquet({quote_string(str(path))})"
                )
            except duckdb.Error as error:
                raise_if_damaged([path], [entry.reference], error)
                raise
            self._versions[key] = stamp
        logger.debug("view %s/%s now reads version %d", entry.group, entry.name, entry.version)

    def drop_view(self, group: str, name: str) -> None:
        """Drop the view of a removed table, if there is one."""
        with self._lock:
            view = f"{quote_identifier(group)}.{quote_identifier(name)}"
            self._connection.execute(f"DROP VIEW IF EXISTS {view}")
            self._versions.pop((group, name), None)

    def sync(self, entries: list[RegistryEntry]) -> None:
        """Bring every view in line with `entries`, dropping views of tables no longer listed."""
        current = {(entry.group, entry.name) for entry in entries}
        for group, name in list(self._versions):
            if (group, name) not in current:
                self.drop_view(group, name)
        for entry in entries:
            try:
                self.ensure_view(entry)
            except TableUnavailable:
                # Logged where it was raised. Reads of the table raise it again, and the other
                # tables are listed and served as before.
                self.drop_view(entry.group, entry.name)

    def close(self) -> None:
        self._connection.close()
