"""`GET /health` on a real server. Each check passes on a sound store, and the response is 503
naming the failed check when the registry folder or the store root disappears. Tables whose
data file is missing or damaged make the status degraded and are listed."""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pyarrow as pa
import pytest
from conftest import RunningServer, damage_data_file, start_server, stop_server

from sqlstore.api.datafiles import DataFileCheck
from sqlstore.filestamps import SETTLED_NANOSECONDS
from sqlstore.store import FeatureStore


@pytest.fixture
def server(tmp_path: Path) -> Iterator[RunningServer]:
    root = tmp_path / "store"
    FeatureStore(root).write("g", "t", pa.table({"entity_id": [1], "value": [1.0]}))
    running = start_server(root, tmp_path / "server.log")
    yield running
    stop_server(running)


def health(server: RunningServer) -> httpx.Response:
    return httpx.get(server.base_url + "/health", timeout=10)


def test_health_reports_each_check(server: RunningServer) -> None:
    response = health(server)

    assert response.status_code == 200
    body = response.json()
    assert body["status"] == "healthy"
    assert body["checks"] == {"root": "ok", "registry": "ok", "duckdb": "ok", "tables": "ok"}
    assert body["unavailable_tables"] == []
    assert body["timestamp"].endswith("+00:00")


def test_missing_registry_is_503(server: RunningServer) -> None:
    registry = server.root / "registry"
    shutil.move(registry, server.root / "registry-moved")
    failed = health(server)
    shutil.move(server.root / "registry-moved", registry)
    recovered = health(server)

    assert failed.status_code == 503
    body = failed.json()
    assert body["status"] == "unhealthy"
    assert body["checks"]["root"] == "ok"
    assert body["checks"]["duckdb"] == "ok"
    assert str(registry) in body["checks"]["registry"]
    assert "cannot be read" in body["checks"]["registry"]
    assert recovered.status_code == 200
    log = server.log_containing("health checks pass again")
    assert "health check failed: registry folder" in log
    assert "health checks pass again" in log


def test_missing_root_is_503(server: RunningServer) -> None:
    moved = server.root.with_name("store-moved")
    server.root.rename(moved)
    try:
        failed = health(server)
    finally:
        moved.rename(server.root)

    assert failed.status_code == 503
    checks = failed.json()["checks"]
    assert checks["root"] == f"store root {server.root} is missing or not a folder"
    assert "cannot be read" in checks["registry"]
    assert checks["duckdb"] == "ok"


def test_repeated_failure_logged_once(server: RunningServer) -> None:
    registry = server.root / "registry"
    shutil.move(registry, server.root / "registry-moved")
    statuses = [health(server).status_code for _ in range(5)]
    shutil.move(server.root / "registry-moved", registry)

    assert statuses == [503] * 5
    assert server.log().count("health check failed") == 1


def make_directory(path: Path) -> None:
    path.mkdir()


def make_fifo(path: Path) -> None:
    os.mkfifo(path)


def make_empty(path: Path) -> None:
    path.write_bytes(b"")


def make_oversized(path: Path) -> None:
    path.write_bytes(b"0" * 5000)


# Each unusable version file, with the cause that the check names.
UNUSABLE_VERSION_FILES = [
    (make_directory, "is unusable: not a regular file"),
    (make_fifo, "is unusable: not a regular file"),
    (make_empty, "is empty"),
    (make_oversized, "is unusable: longer than 4096 bytes"),
]


@pytest.mark.parametrize(
    ("make", "cause"), UNUSABLE_VERSION_FILES, ids=["directory", "fifo", "empty", "oversized"]
)
def test_unusable_version_file_degraded(server: RunningServer, make, cause: str) -> None:
    version = server.root / "registry" / ".version"
    version.unlink()
    make(version)
    degraded = health(server)
    if version.is_dir():
        version.rmdir()
    else:
        version.unlink()
    recovered = health(server)

    assert degraded.status_code == 200
    body = degraded.json()
    assert body["status"] == "degraded"
    assert body["checks"]["root"] == "ok"
    assert body["checks"]["duckdb"] == "ok"
    assert body["checks"]["registry"].startswith(f"degraded: registry version file {version} ")
    assert cause in body["checks"]["registry"]
    assert recovered.status_code == 200
    assert recovered.json()["status"] == "healthy"
    log = server.log_containing("health check degraded")
    assert "health check degraded: registry version file" in log


def test_failure_outranks_degraded(server: RunningServer) -> None:
    version = server.root / "registry" / ".version"
    version.unlink()
    version.mkdir()
    moved = server.root.with_name("store-moved")
    server.root.rename(moved)
    try:
        failed = health(server)
    finally:
        moved.rename(server.root)
        version.rmdir()

    assert failed.status_code == 503
    assert failed.json()["status"] == "unhealthy"


# Damaged data files


@pytest.fixture
def two_table_server(tmp_path: Path) -> Iterator[RunningServer]:
    """A server on g/t, written twice (version 2), and g/u. The first version of g/t's file
    is kept as `t-version-1.parquet` next to the store."""
    store = FeatureStore(tmp_path / "store")
    store.write("g", "t", pa.table({"entity_id": [1], "value": [1.0]}))
    (tmp_path / "t-version-1.parquet").write_bytes(
        (store.root / "features/g/t.parquet").read_bytes()
    )
    store.write("g", "t", pa.table({"entity_id": [1, 2], "value": [1.0, 2.0]}))
    store.write("g", "u", pa.table({"entity_id": [3], "city": ["Oslo"]}))
    running = start_server(store.root, tmp_path / "server.log")
    yield running
    stop_server(running)


# Each damage of g/t's data file, and the cause that the log gives for it.
DAMAGES = {
    "remove": "is missing or is not Parquet",
    "truncate": "is missing or is not Parquet",
    "garbage": "is missing or is not Parquet",
    "foreign": "was not written by sqlstore",
    "other table": "was written for table g/u",
    "older version": "is version 1, and the registry lists version 2",
}
TABLES_DEGRADED = (
    "degraded: 1 table(s) cannot be read, because the registry entry or the data file is "
    "missing, damaged or replaced outside sqlstore: g/t; the server log names each file and cause"
)


def damage_file(path: Path, damage: str) -> None:
    """Damage the data file `path` of g/t in the way `damage` names."""
    older = path.parents[3] / "t-version-1.parquet"
    damage_data_file(path, damage, other_table=path.with_name("u.parquet"), older_copy=older)


def test_damaged_data_file_degraded(two_table_server: RunningServer) -> None:
    path = two_table_server.root / "features" / "g" / "t.parquet"
    saved = path.read_bytes()

    for damage, cause in DAMAGES.items():
        log_start = len(two_table_server.log())
        damage_file(path, damage)
        degraded = [health(two_table_server) for _ in range(3)]
        page = httpx.get(two_table_server.base_url + "/features/g/t", timeout=10)
        path.write_bytes(saved)
        recovered = health(two_table_server)

        for response in degraded:
            assert response.status_code == 200, damage
            body = response.json()
            assert body["status"] == "degraded", damage
            assert body["checks"]["tables"] == TABLES_DEGRADED, damage
            assert body["checks"]["registry"] == "ok", damage
            assert body["unavailable_tables"] == ["g/t"], damage
            assert str(two_table_server.root) not in response.text, damage
        assert page.status_code == 503, damage
        assert page.json()["error"]["code"] == "table_unavailable", damage
        assert recovered.status_code == 200, damage
        assert recovered.json()["status"] == "healthy", damage
        assert recovered.json()["unavailable_tables"] == [], damage
        # WARNING lines are written at once, so the log has them when the response comes.
        line = f"the data file {path} of g/t {cause}, so its reads fail with 503"
        assert two_table_server.log()[log_start:].count(line) == 1, damage


def test_damaged_table_outranked_by_failure(two_table_server: RunningServer) -> None:
    path = two_table_server.root / "features" / "g" / "t.parquet"
    path.write_bytes(b"not parquet")
    registry = two_table_server.root / "registry"
    shutil.move(registry, two_table_server.root / "registry-moved")
    failed = health(two_table_server)
    shutil.move(two_table_server.root / "registry-moved", registry)
    degraded = health(two_table_server)

    assert failed.status_code == 503
    assert failed.json()["status"] == "unhealthy"
    assert failed.json()["checks"]["tables"] == "ok"
    assert degraded.status_code == 200
    assert degraded.json()["unavailable_tables"] == ["g/t"]


def read_calls_of_process() -> int:
    """Return how many read system calls this process has made (Linux)."""
    for line in Path("/proc/self/io").read_text().splitlines():
        if line.startswith("syscr:"):
            return int(line.split()[1])
    raise AssertionError("no syscr line in /proc/self/io")


@pytest.mark.skipif(not Path("/proc/self/io").exists(), reason="needs Linux's /proc/self/io")
def test_repeated_check_reads_no_file(tmp_path: Path) -> None:
    """A probe of unchanged files stats them and reads none: the footer checks of the first
    probe are kept by each file's stat signature."""
    store = FeatureStore(tmp_path / "store")
    for name in ("a", "b", "c"):
        store.write("g", name, pa.table({"entity_id": [1], "value": [1.0]}))
    (store.root / "features" / "g" / "c.parquet").write_bytes(b"not parquet")
    entries = store.registry.list()
    # Results are kept only for files that have not changed for SETTLED_NANOSECONDS.
    time.sleep(SETTLED_NANOSECONDS / 1e9 + 0.1)
    check = DataFileCheck()

    # Reading /proc/self/io is itself one or more read calls.
    baseline_start = read_calls_of_process()
    baseline = read_calls_of_process() - baseline_start
    first_start = read_calls_of_process()
    first = [check.problem(store, entry) for entry in entries]
    first_reads = read_calls_of_process() - first_start
    again_start = read_calls_of_process()
    again = [check.problem(store, entry) for _ in range(10) for entry in entries]
    again_reads = read_calls_of_process() - again_start
    (store.root / "features" / "g" / "a.parquet").unlink()
    after_removal = [check.problem(store, entry) for entry in entries]

    assert first == [None, None, "is missing or is not Parquet"]
    assert first_reads > baseline
    assert again == first * 10
    assert again_reads == baseline
    assert after_removal == ["is missing or is not Parquet", None, "is missing or is not Parquet"]
