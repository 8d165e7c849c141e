"""The SQL sandbox, seen from the server: a pool of worker processes that run queries.

Each worker (`sqlstore.sql.worker`) is a separate Python process with its own DuckDB database,
an address-space cap, and locked DuckDB limits. The server sends a validated query and waits for
the response until the time limit plus a grace period. It kills the worker when none arrives,
because DuckDB notices an interrupt only between vectors and some functions build a single
value for tens of seconds. A killed or crashed worker is replaced by a new one on next use.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
import os
import queue
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, NoReturn

import pyarrow as pa
import pyarrow.ipc as pa_ipc

from sqlstore.errors import (
    QueryCancelled,
    QueryFailed,
    QueryOutOfMemory,
    QueryRejected,
    QuerySyntaxError,
    QueryTimeout,
    QueryWorkersBusy,
    QueryWorkerStopped,
    ResultRowTooLarge,
    SqlstoreError,
    TableUnavailable,
)
from sqlstore.sql import protocol
from sqlstore.sql.duckdb_check import depth_rejection, without_setting_advice
from sqlstore.sql.limits import SqlLimits
from sqlstore.sql.validate import ValidatedQuery
from sqlstore.sql.worker import ViewDefinition

logger = logging.getLogger(__name__)

# Seconds a worker may take past the time limit to respond before it is killed.
KILL_GRACE_SECONDS = 2.0
# Seconds a new worker may take to import DuckDB and report that it is ready.
START_TIMEOUT_SECONDS = 60.0
# Seconds to wait for the exit of a worker whose pipe closed, to learn how it ended.
EXIT_WAIT_SECONDS = 0.2
# Signals that reach a worker only from another process, so a query cannot be their cause.
OUTSIDE_SIGNALS = frozenset({signal.SIGTERM, signal.SIGKILL, signal.SIGHUP, signal.SIGQUIT})


@dataclass(frozen=True)
class QueryResult:
    """Rows of one query, cut at the row or byte limit when `truncated_by` names one.

    The rows are an Arrow `table`, or, when the caller allowed it and every column has a type
    whose JSON is the same either way, `json_rows`: the JSON array of row objects, with the
    `columns` and their `dtypes`.
    """

    table: pa.Table | None
    truncated_by: str | None
    execution_ms: float
    row_count: int
    json_rows: bytes | None = None
    columns: tuple[str, ...] = ()
    dtypes: tuple[str, ...] = ()

    @property
    def truncated(self) -> bool:
        return self.truncated_by is not None


class _WorkerGone(Exception):
    """A worker process ended while idle, so the request never reached it."""


class _Worker:
    """One worker process and the pipes to it."""

    def __init__(self, root: Path, limits: SqlLimits) -> None:
        requests_read, requests_write = os.pipe()
        responses_read, responses_write = os.pipe()
        cancels_read, self.cancels_fd = os.pipe()
        os.set_blocking(self.cancels_fd, False)
        # Made here, so that the folder is removed even when the worker is killed.
        self.folder = tempfile.mkdtemp(prefix="sqlstore-sandbox-")
        settings = {
            "threads": limits.threads,
            "memory_limit_bytes": limits.memory_limit_bytes,
            "time_limit_seconds": limits.time_limit_seconds,
        }
        command = [
            sys.executable,
            "-m",
            "sqlstore.sql.worker",
            "--root",
            str(root),
            "--folder",
            self.folder,
            "--requests-fd",
            str(requests_read),
            "--responses-fd",
            str(responses_write),
            "--cancel-fd",
            str(cancels_read),
            "--address-space-bytes",
            str(limits.worker_memory_bytes),
            "--settings",
            json.dumps(settings),
        ]
        try:
            self.process = subprocess.Popen(
                command,
                pass_fds=(requests_read, responses_write, cancels_read),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
            )
        except BaseException:
            os.close(self.cancels_fd)
            shutil.rmtree(self.folder, ignore_errors=True)
            raise
        finally:
            os.close(requests_read)
            os.close(responses_write)
            os.close(cancels_read)
        self.channel = protocol.WorkerChannel(requests_write, responses_read)
        self._wait_until_ready()

    @property
    def alive(self) -> bool:
        return self.process.poll() is None

    def _wait_until_ready(self) -> None:
        try:
            self.channel.receive(START_TIMEOUT_SECONDS)
        except TimeoutError:
            self.kill()
            raise QueryWorkersBusy(
                f"the SQL worker did not start within {START_TIMEOUT_SECONDS:g} s; see the "
                "server log"
            ) from None
        except (EOFError, OSError) as error:
            self.kill()
            raise QueryWorkersBusy(
                f"the SQL worker exited while starting (exit code {self.process.poll()}); see "
                "the server log"
            ) from error
        logger.info("started SQL worker process %d", self.process.pid)

    def request(self, message: dict[str, Any], timeout: float) -> protocol.Message:
        """Send one request and return the response. Raise _WorkerGone when the process was
        already gone before it got the request, TimeoutError, or EOFError."""
        try:
            self.channel.send(message, timeout)
        except OSError as error:
            raise _WorkerGone(str(error)) from error
        return self.channel.receive(timeout)

    async def send_async(self, message: dict[str, Any]) -> None:
        """Send one request from the event loop. Raise _WorkerGone when the process was
        already gone."""
        try:
            await self.channel.send_async(message)
        except OSError as error:
            raise _WorkerGone(str(error)) from error

    def cancel(self, sequence: int) -> None:
        """Ask the worker to stop the query of the request numbered `sequence`."""
        try:
            os.write(self.cancels_fd, protocol.CANCEL_MESSAGE.pack(sequence))
        except OSError as error:
            logger.warning("could not cancel a query of SQL worker %d: %s", self.process.pid, error)

    def kill(self) -> None:
        """Kill the process and close the pipes; safe to call twice."""
        if self.alive:
            self.process.kill()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            logger.error("SQL worker process %d did not exit after SIGKILL", self.process.pid)
        channel = getattr(self, "channel", None)
        if channel is not None:
            channel.close()
        if self.cancels_fd >= 0:
            os.close(self.cancels_fd)
            self.cancels_fd = -1
        shutil.rmtree(self.folder, ignore_errors=True)

    def stop(self) -> None:
        """Ask the process to exit by closing its request pipe, then kill it if it lingers."""
        self.channel.close_requests()
        try:
            self.process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            pass
        self.kill()


class TreeCheck:
    """DuckDB's serialized syntax tree of one text, which a worker process is making."""

    def __init__(self, sandbox: Sandbox, worker: _Worker) -> None:
        self.sandbox = sandbox
        self.worker: _Worker | None = worker
        self.serialized: str | None = None

    def result(self) -> str | None:
        """Wait for the worker and return what `json_serialize_sql` returned for the text.
        Return None when DuckDB could not serialize it or the worker failed; the caller parses
        the text itself then."""
        worker = self.worker
        if worker is None:
            return self.serialized
        self.worker = None
        try:
            header, body = worker.channel.receive(self.sandbox.limits.time_limit_seconds)
        except (EOFError, OSError, TimeoutError) as error:
            logger.warning("SQL worker %d failed to parse a query: %r", worker.process.pid, error)
            self.sandbox._discard(worker)
            return None
        self.sandbox._release(worker)
        if header.get("ok") and body is not None:
            self.serialized = body.decode()
        return self.serialized

    def close(self) -> None:
        """Wait for the response unless `result` did, so that the worker can be lent again."""
        self.result()


class Sandbox:
    """A pool of SQL worker processes for one store root. Thread-safe; `run_async` must be
    called from one event loop."""

    def __init__(self, root: Path, limits: SqlLimits) -> None:
        limits.validate()
        self.root = Path(root).resolve()
        self.limits = limits
        self._limits_message = asdict(limits)
        self._idle: queue.LifoQueue[_Worker | None] = queue.LifoQueue()
        for _ in range(limits.workers):
            self._idle.put(None)
        self._lock = threading.Lock()
        self._workers: set[_Worker] = set()
        self._closed = False
        # Numbers of requests run on the event loop, by which a query is cancelled.
        self._sequences = itertools.count(1)

    def run(
        self,
        query: ValidatedQuery,
        views: list[ViewDefinition],
        max_rows: int,
        request_id: str = "-",
        json_rows: bool = False,
    ) -> QueryResult:
        """Run a validated query on a worker and return at most `max_rows` rows.

        With `json_rows`, the worker may send the rows as JSON instead of an Arrow table (see
        `QueryResult`). Raises QueryTimeout, QueryOutOfMemory, QueryFailed, QueryRejected (when
        the worker's own DuckDB-parser check or DuckDB's file-access rules stop the query) and
        QueryWorkersBusy.
        """
        message = self._query_message(query, views, max_rows, request_id, json_rows)
        header, body = self._request(message, request_id)
        return _query_result(header, body, self.limits)

    async def run_async(
        self,
        query: ValidatedQuery,
        views: list[ViewDefinition],
        max_rows: int,
        request_id: str = "-",
        json_rows: bool = False,
        disconnected: asyncio.Future[Any] | None = None,
    ) -> QueryResult:
        """Like `run`, waiting for the worker on the event loop. When no started worker is
        idle, it waits for one (or starts one) in a thread.

        When `disconnected` completes first (the client left), the worker stops the query and
        QueryCancelled is raised.
        """
        worker = self._take_idle() or await self._acquire_in_thread()
        if disconnected is not None and disconnected.done() and not disconnected.cancelled():
            # The client left while the request waited for a worker.
            self._release(worker)
            raise self._cancelled(request_id)
        sequence = next(self._sequences)
        message = self._query_message(query, views, max_rows, request_id, json_rows, sequence)
        timeout = self.limits.time_limit_seconds + KILL_GRACE_SECONDS
        started = time.perf_counter()
        try:
            await worker.send_async(message)
        except _WorkerGone as exited:
            self._replace_gone(worker, exited, request_id)
            # Acquired outside the handlers, which would discard the gone worker again.
            worker = await self._acquire_in_thread()
            try:
                await worker.send_async(message)
            except BaseException as error:
                self._raise_failure(worker, error, request_id, started)
        except BaseException as error:
            self._raise_failure(worker, error, request_id, started)
        try:
            header, body = await self._response(worker, sequence, timeout, disconnected)
        except BaseException as error:
            # A cancelled request leaves the worker busy with a response that is never read,
            # so it is discarded too.
            self._raise_failure(worker, error, request_id, started)
        self._settle(worker, header)
        if header.get("kind") == "cancelled":
            raise self._cancelled(request_id)
        return _query_result(header, body, self.limits)

    def _cancelled(self, request_id: str) -> QueryCancelled:
        logger.info("request %s: the client left, so its query was stopped", request_id)
        return QueryCancelled("the client closed the connection before the query finished")

    async def _acquire_in_thread(self) -> _Worker:
        """Wait for a worker, or start one, in a thread. A worker that arrives after the caller
        was cancelled goes back to the pool."""
        acquiring = asyncio.ensure_future(asyncio.to_thread(self._acquire))
        try:
            return await asyncio.shield(acquiring)
        except asyncio.CancelledError:
            acquiring.add_done_callback(self._release_acquired)
            raise

    def _release_acquired(self, acquiring: asyncio.Future[_Worker]) -> None:
        if not acquiring.cancelled() and acquiring.exception() is None:
            self._release(acquiring.result())

    async def _response(
        self,
        worker: _Worker,
        sequence: int,
        timeout: float,
        disconnected: asyncio.Future[Any] | None,
    ) -> protocol.Message:
        """Wait for the worker's response. If `disconnected` completes first, ask the worker to
        stop the query and wait for its response to that."""
        if disconnected is None:
            return await worker.channel.receive_async(timeout)

        def cancel(future: asyncio.Future[Any]) -> None:
            if not future.cancelled():
                worker.cancel(sequence)

        # A callback costs less per query than waiting on both futures with asyncio.wait.
        disconnected.add_done_callback(cancel)
        try:
            return await worker.channel.receive_async(timeout)
        finally:
            disconnected.remove_done_callback(cancel)

    def start_tree_check(self, sql: str) -> TreeCheck | None:
        """Send `sql` to an idle worker, whose DuckDB parser serializes its syntax tree while
        the caller applies sqlglot's checks. Return None when no started worker is idle."""
        try:
            worker = self._take_idle()
        except QueryWorkersBusy:
            return None
        if worker is None:
            return None
        message = {"kind": "serialize", "sql": sql, "limits": self._limits_message}
        try:
            worker.channel.send(message, self.limits.time_limit_seconds)
        except (OSError, TimeoutError) as error:
            logger.warning(
                "could not send a query to parse to SQL worker %d: %s", worker.process.pid, error
            )
            self._discard(worker)
            return None
        return TreeCheck(self, worker)

    def worker_settings(self) -> dict[str, str]:
        """Return the DuckDB settings of one worker's sandbox, for diagnostics and tests."""
        header, _ = self._request({"kind": "settings"}, "-")
        return header["settings"]

    def close(self) -> None:
        """Stop every worker. Queries still running are killed."""
        with self._lock:
            self._closed = True
            workers = list(self._workers)
            self._workers.clear()
        for worker in workers:
            worker.stop()

    def _query_message(
        self,
        query: ValidatedQuery,
        views: list[ViewDefinition],
        max_rows: int,
        request_id: str,
        json_rows: bool,
        sequence: int | None = None,
    ) -> dict[str, Any]:
        return {
            "sequence": sequence,
            "kind": "query",
            "request_id": request_id,
            "sql": query.sql,
            "parameters": protocol.encode_parameters(query.parameters),
            "views": [[v.group, v.name, v.path, v.version] for v in views],
            # The views the query reads, whose files the worker watches for replacement.
            "reads": sorted(query.tables),
            "max_rows": max_rows,
            "limits": self._limits_message,
            "json_rows": json_rows,
        }

    def _request(self, message: dict[str, Any], request_id: str) -> protocol.Message:
        worker = self._acquire()
        timeout = self.limits.time_limit_seconds + KILL_GRACE_SECONDS
        started = time.perf_counter()
        try:
            header, body = worker.request(message, timeout)
        except _WorkerGone as exited:
            self._replace_gone(worker, exited, request_id)
            # Acquired outside the handler below, which would discard the gone worker again.
            worker = self._acquire()
            try:
                header, body = worker.request(message, timeout)
            except BaseException as error:
                self._raise_failure(worker, error, request_id, started)
        except BaseException as error:
            self._raise_failure(worker, error, request_id, started)
        self._settle(worker, header)
        return header, body

    def _replace_gone(self, worker: _Worker, exited: _WorkerGone, request_id: str) -> None:
        logger.warning(
            "request %s: SQL worker %d had exited while idle (%s); starting another",
            request_id,
            worker.process.pid,
            exited,
        )
        self._discard(worker)

    def _raise_failure(
        self, worker: _Worker, error: BaseException, request_id: str, started: float
    ) -> NoReturn:
        """Discard `worker`, whose request failed with `error`, and raise what the caller
        should see."""
        failure = self._failure(worker, error, request_id, started)
        if failure is error:
            raise error
        raise failure from error

    def _failure(
        self, worker: _Worker, error: BaseException, request_id: str, started: float
    ) -> BaseException:
        """Discard `worker`, whose request failed with `error`, and return the error to raise."""
        lost = isinstance(error, EOFError | OSError | _WorkerGone)
        # Read before the discard, whose own SIGKILL would hide how the worker ended.
        exit_code = _exit_code(worker.process) if lost else None
        self._discard(worker)
        if isinstance(error, TimeoutError):
            logger.warning(
                "request %s: SQL worker %d sent no response within %.1f s; killing it",
                request_id,
                worker.process.pid,
                time.perf_counter() - started,
            )
            return QueryTimeout(_timeout_message(self.limits))
        if not lost:
            return error

        logger.warning(
            "request %s: SQL worker %d exited with %s while running a query: %s",
            request_id,
            worker.process.pid,
            exit_code,
            error,
        )
        if self._closed:
            return QueryWorkersBusy(
                "the SQL sandbox shut down while the query ran; retry on the new server"
            )
        return _lost_worker_error(exit_code, self.limits)

    def _settle(self, worker: _Worker, header: dict[str, Any]) -> None:
        """Return a worker that responded to the pool, or replace it when its response requests a
        restart."""
        if header.get("restart"):
            self._discard(worker)
        else:
            self._release(worker)

    def _take_idle(self) -> _Worker | None:
        """Return an idle, started worker without waiting, or None."""
        if self._closed:
            raise QueryWorkersBusy("the SQL sandbox is shutting down; retry on the new server")
        try:
            worker = self._idle.get_nowait()
        except queue.Empty:
            return None
        if worker is not None and worker.alive:
            return worker
        # A slot without a started worker: _acquire starts one, in a thread.
        self._idle.put(worker)
        return None

    def _acquire(self) -> _Worker:
        if self._closed:
            raise QueryWorkersBusy("the SQL sandbox is shutting down; retry on the new server")
        wait = self.limits.time_limit_seconds + KILL_GRACE_SECONDS
        try:
            worker = self._idle.get(timeout=wait)
        except queue.Empty:
            raise QueryWorkersBusy(
                f"all {self.limits.workers} SQL workers stayed busy for {wait:g} s; retry "
                "later, or raise SQLSTORE_SQL_WORKERS"
            ) from None

        if worker is not None and worker.alive:
            return worker
        if worker is not None:
            self._discard(worker, replace=False)
        try:
            worker = _Worker(self.root, self.limits)
        except Exception:
            self._idle.put(None)
            raise
        with self._lock:
            self._workers.add(worker)
        return worker

    def _release(self, worker: _Worker) -> None:
        self._idle.put(worker)

    def _discard(self, worker: _Worker, replace: bool = True) -> None:
        """Kill `worker` and, when `replace` is true, free its slot for a new process."""
        worker.kill()
        with self._lock:
            self._workers.discard(worker)
        if replace:
            self._idle.put(None)


def _exit_code(process: subprocess.Popen[bytes]) -> int | None:
    """Return the exit code of a worker whose pipe closed, waiting briefly for the exit that
    follows, or None while it still runs."""
    try:
        return process.wait(timeout=EXIT_WAIT_SECONDS)
    except subprocess.TimeoutExpired:
        return None


def _lost_worker_error(exit_code: int | None, limits: SqlLimits) -> SqlstoreError:
    """Return the error for a query whose worker process ended with `exit_code` while it ran.

    A signal that only another process sends (SIGTERM, SIGKILL, ...) stopped the worker from
    outside: an operator, a supervisor or the kernel's out-of-memory killer, which the
    worker's own address-space cap normally keeps away. Any other end is the query's doing,
    most likely an allocation that the cap denied where DuckDB could not report it.
    """
    if exit_code is not None and -exit_code in OUTSIDE_SIGNALS:
        name = signal.Signals(-exit_code).name
        senders = "an operator, a supervisor"
        if exit_code == -signal.SIGKILL:
            senders += " or the system's out-of-memory killer"
        return QueryWorkerStopped(
            f"the SQL worker process running the query was stopped by {name} from outside the "
            f"server ({senders}); the next query starts another worker, so retry the query"
        )
    ending = f"exit code {exit_code}"
    if exit_code is not None and exit_code < 0:
        try:
            ending = f"signal {signal.Signals(-exit_code).name}"
        except ValueError:
            ending = f"signal {-exit_code}"
    return QueryOutOfMemory(
        f"the query stopped the SQL worker process ({ending}), most likely by exceeding its "
        f"memory cap of {limits.worker_memory_bytes:,} bytes "
        "(SQLSTORE_SQL_WORKER_MEMORY_BYTES); reduce the data the query builds"
    )


def _query_result(header: dict[str, Any], body: bytes | None, limits: SqlLimits) -> QueryResult:
    if not header.get("ok"):
        raise _error_from_header(header, limits)
    truncated_by = header.get("truncated_by")
    execution_ms = float(header.get("elapsed_ms", 0.0))
    if "columns" in header:
        return QueryResult(
            table=None,
            truncated_by=truncated_by,
            execution_ms=execution_ms,
            row_count=int(header["rows"]),
            json_rows=body,
            columns=tuple(header["columns"]),
            dtypes=tuple(header["dtypes"]),
        )
    table = pa_ipc.open_stream(body).read_all() if body else pa.table({})
    return QueryResult(
        table=table, truncated_by=truncated_by, execution_ms=execution_ms, row_count=table.num_rows
    )


def _timeout_message(limits: SqlLimits) -> str:
    return (
        f"query ran longer than the time limit of {limits.time_limit_seconds:g} s "
        "(SQLSTORE_SQL_TIME_LIMIT_SECONDS) and was stopped; add filters or a LIMIT, or "
        "aggregate before joining"
    )


def _error_from_header(header: dict[str, Any], limits: SqlLimits) -> Exception:
    kind = header.get("kind")
    message = _without_stack_trace(str(header.get("message", "")))
    if kind == "timeout":
        return QueryTimeout(_timeout_message(limits))
    if kind == "out_of_memory":
        # DuckDB follows the first line with advice on settings and storage that a query
        # cannot act on.
        return QueryOutOfMemory(
            f"query needed more memory than the limit of {limits.memory_limit_bytes:,} bytes "
            f"(SQLSTORE_SQL_MEMORY_LIMIT_BYTES): {message.splitlines()[0] if message else ''}; "
            "make the query build less data at once"
        )
    if kind == "rejected":
        return rejection_from_header(header)
    if kind == "blocked":
        return QueryRejected(f"the sandbox blocked file access: {message}")
    if kind == "unavailable":
        return TableUnavailable.of_table(message)
    if kind == "row_too_large":
        return ResultRowTooLarge(_row_too_large_message(header, limits))
    too_deep = depth_rejection(message)
    if too_deep is not None:
        # DuckDB's binder checks the depth again, for example of many chained CTEs.
        return too_deep
    return QueryFailed(f"query failed: {message}")


def _row_too_large_message(header: dict[str, Any], limits: SqlLimits) -> str:
    return (
        f"the first row of the result takes {int(header.get('row_bytes', 0)):,} bytes, more "
        f"than the result limit of {limits.max_result_bytes:,} bytes "
        "(SQLSTORE_SQL_MAX_RESULT_BYTES), so no row can be returned; select fewer or smaller "
        "columns, for example left(column, 1000) in place of a long text"
    )


def rejection_from_header(header: dict[str, Any]) -> QueryRejected | QuerySyntaxError:
    """Rebuild the rejection of the DuckDB-parser checks that a worker reported."""
    error_class = QuerySyntaxError if header.get("syntax") else QueryRejected
    return error_class(str(header.get("message", "")), details=header.get("details"))


def _without_stack_trace(message: str) -> str:
    """Cut the C++ stack trace that DuckDB appends to internal errors: it names files of the
    server's installation and gives the client nothing it can act on. Advice to change a
    setting is replaced too (see `without_setting_advice`)."""
    position = message.find("Stack Trace")
    if position >= 0:
        message = message[:position]
    return without_setting_advice(message.strip().rstrip("-").strip())
