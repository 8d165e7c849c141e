"""The SQL worker process: one sandboxed DuckDB database that runs validated queries.

The server starts it with `python -m sqlstore.sql.worker` and talks to it over two pipes (see
`sqlstore.sql.protocol`). Before DuckDB is loaded the process caps its own address space, so a
query that builds huge values fails here, or gets this process killed, instead of the server.

The database is a DuckDB file holding only views over the feature Parquet files, opened
read-only. Before any query runs, the worker limits file access to the features folder, turns
off external access and Python replacement scans, sets the memory, thread and time limits, and
locks the configuration. Each query runs on a fresh cursor, so temporary tables, temporary
macros, variables and USE do not outlive it. The worker executes the Statement object that
DuckDB's parser returned after the DuckDB-parser checks, never the raw text.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import resource
import shutil
import signal
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

logger = logging.getLogger("sqlstore.sql.worker")

# Runs of one query in all when writers keep replacing the files it reads.
MAX_QUERY_ATTEMPTS = 3


@dataclass(frozen=True)
class ViewDefinition:
    """One registered feature table, as the worker needs it to build a view."""

    group: str
    name: str
    path: str
    version: int


def main(argv: list[str] | None = None) -> int:
    """Serve queries on the pipes named on the command line until the server closes them."""
    arguments = _parse_arguments(argv)
    # Ctrl-C in a terminal reaches the whole process group. The server stops this worker by
    # closing its pipe, so the worker ignores SIGINT rather than print a traceback into the
    # server's log.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    logging.basicConfig(
        level=os.environ.get("SQLSTORE_SQL_WORKER_LOG_LEVEL", "WARNING").upper(),
        format="%(asctime)s %(levelname)s %(name)s[%(process)d]: %(message)s",
        stream=sys.stderr,
    )
    if arguments.address_space_bytes:
        limit = arguments.address_space_bytes
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))

    # Imported after the address-space cap, so that the cap covers DuckDB's own allocations.
    from multiprocessing.connection import Connection

    from sqlstore.sql import protocol

    requests = Connection(arguments.requests_fd, readable=True, writable=False)
    responses = Connection(arguments.responses_fd, readable=False, writable=True)
    settings = json.loads(arguments.settings)
    database = SandboxDatabase(Path(arguments.root), settings)
    protocol.send_message(responses, {"ready": True, "pid": os.getpid()})

    try:
        _serve(database, requests, responses)
    finally:
        database.close()
    return 0


def _parse_arguments(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m sqlstore.sql.worker")
    parser.add_argument("--root", required=True, help="store root folder")
    parser.add_argument("--requests-fd", type=int, required=True)
    parser.add_argument("--responses-fd", type=int, required=True)
    parser.add_argument("--address-space-bytes", type=int, default=0)
    parser.add_argument("--settings", required=True, help="JSON object of DuckDB limits")
    return parser.parse_args(argv)


def _serve(database: SandboxDatabase, requests: Any, responses: Any) -> None:
    from sqlstore.sql import protocol

    while True:
        try:
            request = protocol.receive_message(requests)
        except EOFError:
            return

        kind = request.get("kind")
        if kind == "query":
            header, body = database.run_query(request)
        elif kind == "settings":
            header, body = {"ok": True, "settings": database.current_settings()}, None
        else:
            header, body = {"ok": False, "kind": "failed", "message": f"unknown {kind!r}"}, None
        protocol.send_message(responses, header, body)

        if header.get("restart"):
            logger.error("DuckDB reported a fatal error; the worker exits to be replaced")
            return


class SandboxDatabase:
    """The worker's DuckDB database: read-only views, no file access outside the features."""

    def __init__(self, root: Path, settings: dict[str, Any]) -> None:
        self.root = root.resolve()
        self.features_dir = self.root / "features"
        self.settings = settings
        self.folder = Path(tempfile.mkdtemp(prefix="sqlstore-sandbox-"))
        self.connection: Any = None
        self.fingerprint: tuple[ViewDefinition, ...] | None = None
        self.generation = 0
        self.watchdog = _Watchdog()

    def close(self) -> None:
        if self.connection is not None:
            self.connection.close()
        shutil.rmtree(self.folder, ignore_errors=True)

    def run_query(self, request: dict[str, Any]) -> tuple[dict[str, Any], bytes | None]:
        """Run one query request; return the response header and the Arrow IPC stream."""
        import duckdb

        from sqlstore.sql.protocol import decode_parameters

        started = time.perf_counter()
        views = [ViewDefinition(*view) for view in request["views"]]
        try:
            self._ensure_views(views)
            parameters = decode_parameters(request.get("parameters", []))
            table, truncated_by = self._execute_while_unchanged(request, views, parameters)
        except _Stopped as stopped:
            return stopped.header, None
        except duckdb.Error as error:
            return _error_header(error), None
        except MemoryError:
            return {"ok": False, "kind": "out_of_memory", "message": "out of memory"}, None
        except Exception as error:
            logger.exception("query %s failed unexpectedly", request.get("request_id", "-"))
            message = f"{type(error).__name__}: {error}"
            return {"ok": False, "kind": "failed", "message": message, "restart": True}, None

        header = {
            "ok": True,
            "rows": table.num_rows,
            "truncated_by": truncated_by,
            "elapsed_ms": (time.perf_counter() - started) * 1000,
        }
        return header, _ipc_bytes(table)

    def current_settings(self) -> dict[str, str]:
        """Return the DuckDB settings of the sandbox, for diagnostics and tests."""
        if self.connection is None:
            self._ensure_views([])
        cursor = self.connection.cursor()
        try:
            rows = cursor.execute("SELECT name, value FROM duckdb_settings()").fetchall()
        finally:
            cursor.close()
        return {name: str(value) for name, value in rows}

    def _execute_while_unchanged(
        self, request: dict[str, Any], views: list[ViewDefinition], parameters: dict[str, Any]
    ) -> tuple[Any, str | None]:
        """Run `_execute`, and run it again when it failed while a writer replaced a file.

        DuckDB opens a Parquet file more than once per query, so a rename between the opens
        fails the query with an error about invalid data.
        """
        import duckdb

        from sqlstore.filestamps import file_signature

        paths = [self.root / view.path for view in views]
        for _ in range(MAX_QUERY_ATTEMPTS - 1):
            before = [file_signature(path) for path in paths]
            try:
                return self._execute(request, views, parameters)
            except duckdb.Error as error:
                if before == [file_signature(path) for path in paths]:
                    raise
                logger.info(
                    "request %s: a table file was replaced during the query (%s); running it again",
                    request.get("request_id", "-"),
                    error,
                )
        return self._execute(request, views, parameters)

    def _execute(
        self, request: dict[str, Any], views: list[ViewDefinition], parameters: dict[str, Any]
    ) -> tuple[Any, str | None]:
        import duckdb

        from sqlstore.sql.duckdb_check import check_with_duckdb, select_statement
        from sqlstore.sql.limits import SqlLimits

        sql = request["sql"]
        limits = SqlLimits(**request["limits"])
        cursor = self.connection.cursor()
        try:
            statement = select_statement(cursor, sql)
            check_with_duckdb(sql, {(v.group, v.name) for v in views}, parameters, limits)
            with self.watchdog.watching(cursor, limits.time_limit_seconds):
                relation = cursor.sql(statement, params=parameters or None)
                table, truncated_by = _fetch(relation, request["max_rows"], limits.max_result_bytes)
                return _exact_unsigned_hugeints(table, relation.types), truncated_by
        except duckdb.InterruptException as error:
            if self.watchdog.fired:
                raise _Stopped({"ok": False, "kind": "timeout", "message": str(error)}) from error
            raise
        except Exception as error:
            _raise_rejection(error)
            raise
        finally:
            cursor.close()

    def _ensure_views(self, views: list[ViewDefinition]) -> None:
        fingerprint = tuple(sorted(views, key=lambda view: (view.group, view.name)))
        if self.connection is not None and fingerprint == self.fingerprint:
            return

        self.generation += 1
        path = self.folder / f"views-{self.generation}.duckdb"
        self._write_views(path, fingerprint)
        connection = self._open_locked(path)

        previous = self.connection
        self.connection = connection
        self.fingerprint = fingerprint
        if previous is not None:
            previous.close()
        for old in self.folder.glob("views-*.duckdb*"):
            if not old.name.startswith(path.name):
                old.unlink(missing_ok=True)

    def _write_views(self, path: Path, views: tuple[ViewDefinition, ...]) -> None:
        import duckdb

        from sqlstore.identifiers import quote_identifier, quote_string

        writer = duckdb.connect(str(path), config={"temp_directory": ""})
        try:
            for view in views:
                file = (self.root / view.path).resolve()
                if not file.is_relative_to(self.features_dir):
                    logger.warning(
                        "skipping view %s.%s: %s is outside", view.group, view.name, file
                    )
                    continue
                schema = quote_identifier(view.group)
                name = f"{schema}.{quote_identifier(view.name)}"
                source = f"read_parquet({quote_string(str(file))})"
                try:
                    writer.execute(f"CREATE SCHEMA IF NOT EXISTS {schema}")
                    writer.execute(f"CREATE VIEW {name} AS SELECT * FROM {source}")
                except duckdb.Error as error:
                    logger.warning("could not create view %s.%s: %s", view.group, view.name, error)
        finally:
            writer.close()

    def _open_locked(self, path: Path) -> Any:
        """Open the views read-only and lock the configuration.

        DuckDB accepts allowed_directories only while external access is still on, so the
        order below matters. A view over read_parquet then keeps working with external access
        off. The same allowance lets COPY ... TO write into the features folder, which is why
        this worker executes only statements that DuckDB's parser types as SELECT.
        """
        import duckdb

        settings = self.settings
        connection = duckdb.connect(
            str(path),
            read_only=True,
            config={
                "threads": int(settings["threads"]),
                "memory_limit": f"{int(settings['memory_limit_bytes'])}B",
                "temp_directory": "",
                "python_enable_replacements": False,
                "python_scan_all_frames": False,
                "autoinstall_known_extensions": False,
                "autoload_known_extensions": False,
                "allow_community_extensions": False,
                "allow_persistent_secrets": False,
            },
        )
        max_execution_ms = int(float(settings["time_limit_seconds"]) * 1000)
        features = quote_list([str(self.features_dir) + os.sep])
        for statement in (
            "SET GLOBAL TimeZone = 'UTC'",
            f"SET GLOBAL max_execution_time = {max_execution_ms}",
            f"SET GLOBAL allowed_directories = {features}",
            "SET GLOBAL enable_external_access = false",
            "SET GLOBAL lock_configuration = true",
        ):
            connection.execute(statement)
        return connection


class _Stopped(Exception):
    """A query ended in a way that has its own response header."""

    def __init__(self, header: dict[str, Any]) -> None:
        super().__init__(header.get("message"))
        self.header = header


class _Watchdog:
    """One thread that interrupts the running cursor once its deadline passes.

    DuckDB checks the interrupt flag between vectors, so functions that build one huge value
    notice it late. For those, the server kills the worker when the response does not arrive
    soon after the limit. One long-lived thread avoids starting a timer thread per query.
    """

    def __init__(self) -> None:
        self.fired = False
        self._condition = threading.Condition()
        self._cursor: Any = None
        self._deadline: float | None = None
        thread = threading.Thread(target=self._run, name="sql-watchdog", daemon=True)
        thread.start()

    @contextmanager
    def watching(self, cursor: Any, seconds: float) -> Iterator[None]:
        """Interrupt `cursor` if the block is still running after `seconds`."""
        with self._condition:
            self.fired = False
            self._cursor = cursor
            self._deadline = time.monotonic() + seconds
            self._condition.notify()
        try:
            yield
        finally:
            with self._condition:
                self._cursor = None
                self._deadline = None

    def _run(self) -> None:
        with self._condition:
            while True:
                if self._deadline is None:
                    self._condition.wait()
                    continue
                remaining = self._deadline - time.monotonic()
                if remaining > 0:
                    self._condition.wait(remaining)
                    continue
                self.fired = True
                self._cursor.interrupt()
                self._deadline = None


def quote_list(values: list[str]) -> str:
    """Return a DuckDB list literal of quoted strings."""
    from sqlstore.identifiers import quote_string

    return "[" + ", ".join(quote_string(value) for value in values) + "]"


def _fetch(relation: Any, max_rows: int, max_bytes: int) -> tuple[Any, str | None]:
    """Read at most `max_rows` rows and about `max_bytes` bytes; return the table and what cut
    it short ("row_limit", "byte_limit" or None)."""
    import pyarrow as pa

    reader = relation.to_arrow_reader(min(max_rows + 1, 100_000) or 1)
    batches = []
    rows = 0
    size = 0
    truncated_by = None
    for batch in reader:
        if rows + batch.num_rows > max_rows:
            batch = batch.slice(0, max_rows - rows)
            truncated_by = "row_limit"
        if size + batch.nbytes > max_bytes:
            row_bytes = max(batch.nbytes / max(batch.num_rows, 1), 1)
            batch = batch.slice(0, max(int((max_bytes - size) / row_bytes), 0))
            truncated_by = "byte_limit"
        batches.append(batch)
        rows += batch.num_rows
        size += batch.nbytes
        if truncated_by is not None:
            break
    return pa.Table.from_batches(batches, schema=reader.schema), truncated_by


def _exact_unsigned_hugeints(table: Any, types: list[Any]) -> Any:
    """Return `table` with its UHUGEINT columns as decimal text.

    DuckDB exports UHUGEINT as a 128-bit decimal, which wraps values from 2^127 up to negative
    numbers. An unsigned value is never negative, so adding 2^128 to a negative one restores it.
    NOTE: UHUGEINT values inside lists or structs are still exported wrapped.
    """
    import pyarrow as pa

    for index, duckdb_type in enumerate(types):
        if str(duckdb_type) != "UHUGEINT":
            continue
        values = [_unsigned_text(value) for value in table.column(index).to_pylist()]
        table = table.set_column(index, table.field(index).name, pa.array(values, pa.string()))
    return table


def _unsigned_text(value: Any) -> str | None:
    """Return a UHUGEINT value that DuckDB exported as a possibly wrapped decimal, as text."""
    if value is None:
        return None
    number = int(value)
    if number < 0:
        number += 2**128
    return str(number)


def _ipc_bytes(table: Any) -> bytes:
    import pyarrow as pa
    import pyarrow.ipc as ipc

    sink = pa.BufferOutputStream()
    with ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    return sink.getvalue().to_pybytes()


def _raise_rejection(error: Exception) -> None:
    """Turn a rejection by the DuckDB-parser checks into a response header."""
    from sqlstore.errors import QueryRejected, QuerySyntaxError

    if isinstance(error, QueryRejected | QuerySyntaxError):
        header = {"ok": False, "kind": "rejected", "code": error.code, "message": error.message}
        raise _Stopped(header) from error


def _error_header(error: Exception) -> dict[str, Any]:
    import duckdb

    message = str(error).strip()
    if isinstance(error, duckdb.OutOfMemoryException):
        return {"ok": False, "kind": "out_of_memory", "message": message}
    if isinstance(error, duckdb.InterruptException):
        return {"ok": False, "kind": "timeout", "message": message}
    if isinstance(error, duckdb.PermissionException):
        logger.warning("sandbox blocked a query: %s", message)
        return {"ok": False, "kind": "blocked", "message": message}
    if isinstance(error, duckdb.FatalException | duckdb.InternalException):
        return {"ok": False, "kind": "failed", "message": message, "restart": True}
    return {"ok": False, "kind": "failed", "message": message}


if __name__ == "__main__":
    sys.exit(main())
