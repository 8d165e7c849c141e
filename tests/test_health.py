"""`GET /health` on a real server: each check passes on a sound store, and it returns 503
naming the failed check when the registry folder or the store root disappears."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import httpx
import pyarrow as pa
import pytest
from conftest import RunningServer, start_server, stop_server

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
    assert body["checks"] == {"root": "ok", "registry": "ok", "duckdb": "ok"}
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
