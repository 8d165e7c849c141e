"""The worker pool in-process: replacement of dead workers, views that follow writes, shutdown."""

from __future__ import annotations

import asyncio
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pyarrow as pa
import pytest

from sqlstore.errors import (
    QueryOutOfMemory,
    QueryRejected,
    QuerySyntaxError,
    QueryWorkerStopped,
    TableUnavailable,
)
from sqlstore.sql import duckdb_check
from sqlstore.sql.limits import SqlLimits
from sqlstore.sql.service import SqlService
from sqlstore.sql.validate import validate_query
from sqlstore.store import FeatureStore, TableDefinition


@pytest.fixture
def service(tmp_path: Path) -> Iterator[SqlService]:
    store = FeatureStore(tmp_path / "store")
    users = pa.table({"user_id": [1, 2], "name": ["ada", "bob"]})
    store.write("shop", "users", users, definition=TableDefinition(["user_id"]))
    sql_service = SqlService(store, SqlLimits(workers=1, threads=1))
    yield sql_service
    sql_service.close()


def worker_pids(service: SqlService) -> list[int]:
    return [worker.process.pid for worker in service.sandbox._workers]


def test_killed_worker_is_replaced(service: SqlService) -> None:
    service.run("SELECT 1")
    [pid] = worker_pids(service)
    [worker] = service.sandbox._workers
    os.kill(pid, signal.SIGKILL)
    worker.process.wait(timeout=30)
    result = service.run("SELECT count(*) AS n FROM shop.users")

    assert result.table.to_pylist() == [{"n": 2}]
    assert worker_pids(service) != [pid]
    assert not Path(worker.folder).exists()


def test_killed_worker_is_replaced_on_the_event_loop(service: SqlService) -> None:
    service.run("SELECT 1")
    [worker] = service.sandbox._workers
    os.kill(worker.process.pid, signal.SIGKILL)
    worker.process.wait(timeout=30)
    prepared = service.prepare("SELECT count(*) AS n FROM shop.users")
    result = asyncio.run(service.execute_async(prepared))

    assert result.table.to_pylist() == [{"n": 2}]
    assert worker_pids(service) != [worker.process.pid]
    # One slot per configured worker, none lost or added by the replacement.
    assert service.sandbox._idle.qsize() == 1


def error_of_query_whose_worker_gets(service: SqlService, signals: list[int]) -> Exception:
    """Run a query while its worker is stopped, send `signals` to the worker once the query was
    sent to it, let it continue, and return the error of the query."""
    service.run("SELECT 1")
    [worker] = service.sandbox._workers
    os.kill(worker.process.pid, signal.SIGSTOP)
    outcome: dict[str, Exception] = {}

    def run() -> None:
        try:
            service.run("SELECT count(*) AS n FROM shop.users")
        except Exception as error:
            outcome["error"] = error

    thread = threading.Thread(target=run)
    thread.start()
    deadline = time.monotonic() + 30
    while service.sandbox._idle.qsize() and time.monotonic() < deadline:
        time.sleep(0.01)
    # The query is written to the pipe right after the worker is taken.
    time.sleep(0.3)
    for number in signals:
        os.kill(worker.process.pid, number)
    os.kill(worker.process.pid, signal.SIGCONT)
    thread.join(timeout=60)
    return outcome["error"]


def test_worker_replaced_after_out_of_memory(tmp_path: Path) -> None:
    store = FeatureStore(tmp_path / "store")
    store.write("shop", "users", pa.table({"user_id": [1, 2]}))
    limits = SqlLimits(workers=1, threads=1, memory_limit_bytes=64 * 2**20)
    service = SqlService(store, limits)
    try:
        service.run("SELECT 1")
        [before] = worker_pids(service)
        with pytest.raises(QueryOutOfMemory):
            service.run("SELECT count(DISTINCT i) FROM range(10000000) AS t(i)")
        after = service.run("SELECT count(*) AS n FROM shop.users")
        [replacement] = worker_pids(service)
    finally:
        service.close()

    assert after.table.to_pylist() == [{"n": 2}]
    assert replacement != before


def test_worker_stopped_from_outside_is_503(service: SqlService) -> None:
    error = error_of_query_whose_worker_gets(service, [signal.SIGTERM])
    after = service.run("SELECT count(*) AS n FROM shop.users")

    assert isinstance(error, QueryWorkerStopped)
    assert error.status == 503
    assert error.message.startswith(
        "the SQL worker process running the query was stopped by SIGTERM from outside"
    )
    assert after.table.to_pylist() == [{"n": 2}]


def test_worker_crash_blames_query(service: SqlService) -> None:
    error = error_of_query_whose_worker_gets(service, [signal.SIGUSR1])

    assert isinstance(error, QueryOutOfMemory)
    assert error.message.startswith("the query stopped the SQL worker process (signal SIGUSR1)")


def test_views_follow_schema_change(service: SqlService) -> None:
    before = service.run("SELECT * FROM shop.users ORDER BY user_id")
    users = pa.table({"user_id": [1], "name": ["ada"], "country": ["UK"]})
    service.store.write("shop", "users", users, definition=TableDefinition(["user_id"]))
    after = service.run("SELECT user_id, country FROM shop.users")

    assert before.table.column_names == ["user_id", "name"]
    assert after.table.to_pylist() == [{"user_id": 1, "country": "UK"}]


@pytest.mark.parametrize("damage", ["remove", "truncate"])
def test_damaged_table_file_is_503(service: SqlService, damage: str) -> None:
    store = service.store
    store.write("shop", "orders", pa.table({"order_id": [7], "user_id": [1]}))
    path = store.root / store.registry.get("shop", "orders").path
    saved = path.read_bytes()
    if damage == "remove":
        path.unlink()
    else:
        path.write_bytes(saved[:100])

    with pytest.raises(TableUnavailable) as raised:
        service.run("SELECT count(*) AS n FROM shop.orders")
    users = service.run("SELECT count(*) AS n FROM shop.users").table.to_pylist()
    path.write_bytes(saved)
    restored = service.run("SELECT order_id FROM shop.orders").table.to_pylist()

    assert raised.value.status == 503
    assert raised.value.message == (
        "table shop/orders cannot be read: its data file is missing, damaged or was replaced "
        "outside sqlstore (the log has the cause); an operator can restore the file or write the "
        "table again"
    )
    assert users == [{"n": 2}]
    assert restored == [{"order_id": 7}]


def test_close_stops_workers(service: SqlService) -> None:
    service.run("SELECT 1")
    [pid] = worker_pids(service)
    [worker] = service.sandbox._workers
    service.close()

    assert worker.process.poll() is not None
    assert worker_pids(service) == []
    assert not Path(worker.folder).exists()


# DuckDB's parse of a new text runs in an idle worker while sqlglot's checks run here.

BUILDER_SQL = "SELECT repeat('x', 100000000) AS s"


def started_service(service: SqlService) -> SqlService:
    """Return `service` with one idle, started worker, so that a new text is checked there."""
    service.run("SELECT 1")
    return service


def parse_nothing_here(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make this process fail any serialization of its own, so that a passing test shows
    that the syntax tree it checked came from the worker."""

    def fail(sql: str) -> None:
        raise AssertionError(f"serialized {sql!r} in the server process")

    monkeypatch.setattr(duckdb_check, "serialized_tree", fail)


def rejection(function: Callable[[], object]) -> QueryRejected | QuerySyntaxError:
    with pytest.raises((QueryRejected, QuerySyntaxError)) as caught:
        function()
    return caught.value


def test_worker_check_matches_local_check(
    service: SqlService, monkeypatch: pytest.MonkeyPatch
) -> None:
    started_service(service)
    sql = "SELECT name, count(*) AS n FROM shop.users GROUP BY name -- checked in a worker"
    with monkeypatch.context() as patch:
        parse_nothing_here(patch)
        prepared = service.prepare(sql)
    local = validate_query(sql + " ", [("shop", "users")])

    assert prepared.query.canonical == local.canonical
    assert prepared.query.tables == frozenset({("shop", "users")})


@pytest.mark.parametrize(
    "sql",
    [
        BUILDER_SQL,
        "SELECT * FROM range(100000000000)",
        "SELECT lpad('x', 2000000000) AS padded",
        'SELECT 1 AS ""',
    ],
)
def test_worker_rejection_matches_local_rejection(
    service: SqlService, monkeypatch: pytest.MonkeyPatch, sql: str
) -> None:
    started_service(service)
    with monkeypatch.context() as patch:
        parse_nothing_here(patch)
        remote = rejection(lambda: service.prepare(sql))
    local = rejection(lambda: validate_query(sql, [("shop", "users")]))
    after = service.run("SELECT count(*) AS n FROM shop.users")

    assert type(remote) is type(local)
    assert remote.message == local.message
    assert remote.details == local.details
    assert after.table.to_pylist() == [{"n": 2}]


def test_dead_worker_check_falls_back_to_local(service: SqlService) -> None:
    started_service(service)
    [worker] = service.sandbox._workers
    os.kill(worker.process.pid, signal.SIGKILL)
    worker.process.wait(timeout=30)
    error = rejection(lambda: service.prepare(BUILDER_SQL + " -- after the kill"))
    result = service.run("SELECT count(*) AS n FROM shop.users")

    assert "repeat" in error.message
    assert result.table.to_pylist() == [{"n": 2}]


# Values nested deeper than a result can hold.


def nested_ctes(depth: int, select: str = "x") -> str:
    """Return a query whose CTEs each wrap the previous CTE's value in one more list, so that
    only the types of columns, not the text, show the depth."""
    chain = [f"c{i} AS (SELECT [x] AS x FROM c{i - 1})" for i in range(1, depth + 1)]
    return f"WITH c0 AS (SELECT 1 AS x), {', '.join(chain)} SELECT {select} FROM c{depth}"


def nested_list(depth: int) -> object:
    value: object = 1
    for _ in range(depth):
        value = [value]
    return value


RESULT_TOO_DEEP = (
    "a result column is nested more than 62 levels deep (lists, arrays, structs, maps and "
    "unions inside each other), the maximum that a result can hold; return fewer levels, for "
    "example with unnest(), flatten() or to_json()"
)


@pytest.mark.parametrize(
    "sql",
    [
        nested_ctes(63),
        nested_ctes(70),
        "SELECT from_json('{}', '" + "[" * 63 + '"INTEGER"' + "]" * 63 + "') AS x",
    ],
)
def test_result_too_deep_keeps_worker(service: SqlService, sql: str) -> None:
    service.run("SELECT 1")
    [before] = worker_pids(service)
    with pytest.raises(QueryRejected) as raised:
        service.run(sql)
    after = service.run("SELECT count(*) AS n FROM shop.users")

    assert raised.value.status == 400
    assert raised.value.code == "query_rejected"
    assert raised.value.message == RESULT_TOO_DEEP
    assert worker_pids(service) == [before]
    assert after.table.to_pylist() == [{"n": 2}]


def test_result_nested_62_levels_runs(service: SqlService) -> None:
    result = service.run(nested_ctes(62))

    assert result.table.to_pylist() == [{"x": nested_list(62)}]


def test_deep_value_as_json_runs(service: SqlService) -> None:
    result = service.run(nested_ctes(70, select="to_json(x) AS j"))

    assert result.table.to_pylist() == [{"j": "[" * 70 + "1" + "]" * 70}]


# Parameters next to operators, which sqlglot once read as dollar-quoted strings.


def test_parameter_arithmetic_runs(service: SqlService) -> None:
    result = service.run("SELECT $a*$b AS p, $a+$b AS s, $a-$b AS d, $a,$b", {"a": 6, "b": 4})

    assert result.table.to_pylist() == [{"p": 24, "s": 10, "d": 2, "$a": 6, "$b": 4}]


def test_dollar_quoted_text_runs(service: SqlService) -> None:
    result = service.run("SELECT $q$ $n*$n $q$ AS s")

    assert result.table.to_pylist() == [{"s": " $n*$n "}]
