"""The worker pool in-process: replacement of dead workers, views that follow writes, shutdown."""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator
from pathlib import Path

import pyarrow as pa
import pytest

from sqlstore.sql.limits import SqlLimits
from sqlstore.sql.service import SqlService
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
    process = next(iter(service.sandbox._workers)).process
    os.kill(pid, signal.SIGKILL)
    process.wait(timeout=30)
    result = service.run("SELECT count(*) AS n FROM shop.users")

    assert result.table.to_pylist() == [{"n": 2}]
    assert worker_pids(service) != [pid]


def test_views_follow_schema_change(service: SqlService) -> None:
    before = service.run("SELECT * FROM shop.users ORDER BY user_id")
    users = pa.table({"user_id": [1], "name": ["ada"], "country": ["UK"]})
    service.store.write("shop", "users", users, definition=TableDefinition(["user_id"]))
    after = service.run("SELECT user_id, country FROM shop.users")

    assert before.table.column_names == ["user_id", "name"]
    assert after.table.to_pylist() == [{"user_id": 1, "country": "UK"}]


def test_close_stops_workers(service: SqlService) -> None:
    service.run("SELECT 1")
    [pid] = worker_pids(service)
    process = next(iter(service.sandbox._workers)).process
    service.close()

    assert process.poll() is not None
    assert worker_pids(service) == []
