"""The server under a large write, a full or read-only file system, and SIGTERM.

Storage failures are real: a file size limit set with prlimit (EFBIG), and a small tmpfs
mounted in a private mount namespace (ENOSPC, then a read-only bind mount for EROFS). The tmpfs
cases need `unshare` and permission to mount, and are skipped without them.
"""

from __future__ import annotations

import shutil
import signal
import subprocess
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import orjson
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import RunningServer, lock_is_held, start_server, stop_server

from sqlstore.store import FeatureStore

GROUP = "resilience"
NAME = "table"
TIMEOUT_SECONDS = 120
LARGE_ROWS = 400_000
# A write this large holds the table's lock for a second or more on a 2-core machine.
HUGE_ROWS = 1_000_000
SMALL_ROWS = 10
READS_DURING_WRITE = 5
LOCK_POLL_SECONDS = 0.01
# Larger than the registry entries and the server's log, smaller than the large table's file.
FILE_SIZE_LIMIT_BYTES = 2 * 1024 * 1024
TMPFS_SIZE = "2m"


def records(rows: int, version: int) -> list[dict[str, object]]:
    """Rows stamped with `version`; random values, so that the Parquet file hardly compresses."""
    values = np.random.default_rng(version).random(rows)
    return [
        {"entity_id": i, "version": version, "value": float(value)}
        for i, value in enumerate(values)
    ]


def write_body(rows: int, version: int) -> bytes:
    return orjson.dumps({"records": records(rows, version)})


def post(server: RunningServer, body: bytes) -> httpx.Response:
    return httpx.post(
        f"{server.base_url}/features/{GROUP}/{NAME}",
        content=body,
        headers={"content-type": "application/json"},
        timeout=TIMEOUT_SECONDS,
    )


def read_versions(server: RunningServer) -> tuple[int, set[int], int]:
    """Return the version header, the versions in the rows and the total row count."""
    response = httpx.get(
        f"{server.base_url}/features/{GROUP}/{NAME}",
        params={"limit": 10_000},
        timeout=TIMEOUT_SECONDS,
    )
    assert response.status_code == 200, response.text
    content = response.json()
    versions = {row["version"] for row in content["data"]}
    return content["metadata"]["version"], versions, content["metadata"]["total_rows"]


def send_in_background(server: RunningServer, body: bytes) -> tuple[threading.Thread, dict]:
    outcome: dict[str, object] = {}

    def send() -> None:
        try:
            response = post(server, body)
            outcome["status"] = response.status_code
            outcome["body"] = response.json()
        except httpx.TransportError as error:
            outcome["error"] = repr(error)
        outcome["finished"] = time.monotonic()

    thread = threading.Thread(target=send)
    thread.start()
    return thread, outcome


def wait_for_lock(root: Path, thread: threading.Thread) -> None:
    """Wait until the write holds the table's lock, so it is past parsing the body."""
    lock = FeatureStore(root).layout.lock_path(GROUP, NAME)
    while not lock_is_held(lock):
        assert thread.is_alive(), "the write finished before it was seen holding the lock"
        time.sleep(LOCK_POLL_SECONDS)


# Reads during a large write


def test_reads_answered_during_large_write(tmp_path: Path) -> None:
    root = tmp_path / "store"
    FeatureStore(root).write(GROUP, NAME, pa.Table.from_pylist(records(SMALL_ROWS, 1)))
    FeatureStore(root).write(GROUP, "other", pa.table({"entity_id": [1, 2, 3]}))
    server = start_server(root, tmp_path / "server.log", workers=1)
    body = write_body(HUGE_ROWS, 2)

    try:
        writer, outcome = send_in_background(server, body)
        wait_for_lock(root, writer)
        read_finished = []
        with httpx.Client(base_url=server.base_url, timeout=TIMEOUT_SECONDS) as client:
            for offset in range(READS_DURING_WRITE):
                # Different offsets, so that each read misses the cache and queries DuckDB.
                response = client.get(f"/features/{GROUP}/other", params={"offset": offset % 3})
                assert response.status_code == 200, response.text
                assert response.json()["metadata"]["total_rows"] == 3
                read_finished.append(time.monotonic())
        writer.join(timeout=TIMEOUT_SECONDS)
        after = read_versions(server)
    finally:
        stop_server(server)

    assert outcome.get("status") == 200, outcome
    # The only worker returned every read while the write it had started was still running.
    assert max(read_finished) < outcome["finished"]
    assert after == (2, {2}, HUGE_ROWS)


# Storage failures


def check_failed_write(response: httpx.Response, cause: str) -> None:
    assert response.status_code == 507, response.text
    error = response.json()["error"]
    assert error["code"] == "storage_error"
    assert cause in error["message"]
    assert "previous version is intact" in error["message"]


def test_file_size_limit_rejects_write(tmp_path: Path) -> None:
    root = tmp_path / "store"
    FeatureStore(root).write(GROUP, NAME, pa.Table.from_pylist(records(SMALL_ROWS, 1)))
    if shutil.which("prlimit") is None:
        pytest.skip("prlimit (util-linux) is not installed")
    prefix = ("prlimit", f"--fsize={FILE_SIZE_LIMIT_BYTES}", "--")
    server = start_server(root, tmp_path / "server.log", prefix=prefix)

    try:
        response = post(server, write_body(LARGE_ROWS, 2))
        after = read_versions(server)
        small = post(server, write_body(SMALL_ROWS, 3))
    finally:
        stop_server(server)

    check_failed_write(response, "the file size limit is exceeded")
    assert after == (1, {1}, SMALL_ROWS)
    assert small.status_code == 200, small.text
    assert small.json()["version"] == 2
    features = root / "features" / GROUP
    assert sorted(path.name for path in features.iterdir()) == [f"{NAME}.parquet"]
    assert pq.read_table(features / f"{NAME}.parquet")["version"].to_pylist() == [3] * SMALL_ROWS


def start_on_tmpfs(root: Path, log_path: Path) -> RunningServer:
    """Start a server whose store root is a TMPFS_SIZE tmpfs in a mount namespace of its own."""
    if shutil.which("unshare") is None or shutil.which("nsenter") is None:
        pytest.skip("unshare and nsenter (util-linux) are not installed")
    probe = subprocess.run(
        ["unshare", "--mount", "mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(root)],
        capture_output=True,
        text=True,
    )
    if probe.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs in a private mount namespace: {probe.stderr.strip()}")

    # The mount is private to the server's namespace and disappears with the server.
    script = f'mount -t tmpfs -o size={TMPFS_SIZE} tmpfs "$0" && exec "$@"'
    prefix = ("unshare", "--mount", "sh", "-c", script, str(root))
    return start_server(root, log_path, prefix=prefix)


def in_namespace(server: RunningServer, path: Path) -> Path:
    """Return `path` as resolved in the server's mount namespace."""
    return Path(f"/proc/{server.process.pid}/root") / path.relative_to("/")


def test_full_then_read_only_store_root(tmp_path: Path) -> None:
    root = tmp_path / "store"
    root.mkdir()
    server = start_on_tmpfs(root, tmp_path / "server.log")

    try:
        first = post(server, write_body(SMALL_ROWS, 1))
        assert first.status_code == 200, first.text
        table_file = in_namespace(server, root / "features" / GROUP / f"{NAME}.parquet")
        assert table_file.exists()
        assert not (root / "features").exists()

        full = post(server, write_body(LARGE_ROWS, 2))
        after_full = read_versions(server)
        files_after_full = sorted(path.name for path in table_file.parent.iterdir())
        stored_after_full = pq.read_table(table_file)["version"].to_pylist()

        # A read-only bind mount over the root: a plain read-only remount fails while the
        # server has files open for writing (its metrics and cache files).
        script = 'mount --bind "$0" "$0" && mount -o remount,bind,ro "$0"'
        remount = ["nsenter", "-t", str(server.process.pid), "-m", "sh", "-c", script, str(root)]
        subprocess.run(remount, check=True, capture_output=True)
        read_only = post(server, write_body(SMALL_ROWS, 3))
        after_read_only = read_versions(server)
        stored_after_read_only = pq.read_table(table_file)["version"].to_pylist()
    finally:
        stop_server(server)

    check_failed_write(full, "the disk is full")
    assert after_full == (1, {1}, SMALL_ROWS)
    assert files_after_full == [f"{NAME}.parquet"]
    assert stored_after_full == [1] * SMALL_ROWS
    check_failed_write(read_only, "the file system is read-only")
    assert after_read_only == (1, {1}, SMALL_ROWS)
    assert stored_after_read_only == [1] * SMALL_ROWS


# Graceful shutdown


@pytest.mark.parametrize("workers", [1, 2])
def test_sigterm_finishes_write_in_progress(tmp_path: Path, workers: int) -> None:
    root = tmp_path / "store"
    FeatureStore(root).write(GROUP, NAME, pa.Table.from_pylist(records(SMALL_ROWS, 1)))
    server = start_server(root, tmp_path / "server.log", workers=workers)

    try:
        writer, outcome = send_in_background(server, write_body(LARGE_ROWS, 2))
        wait_for_lock(root, writer)
        server.process.send_signal(signal.SIGTERM)
        writer.join(timeout=TIMEOUT_SECONDS)
        exit_code = server.process.wait(timeout=TIMEOUT_SECONDS)
    finally:
        stop_server(server)

    assert outcome.get("status") == 200, outcome
    assert outcome["body"]["version"] == 2
    # uvicorn re-raises the signal after its graceful shutdown, so the exit status may be -15.
    assert exit_code in (0, -signal.SIGTERM), server.log()
    assert "Application shutdown complete" in server.log()
    stored = pq.read_table(root / "features" / GROUP / f"{NAME}.parquet")
    assert stored.num_rows == LARGE_ROWS
    assert set(stored["version"].to_pylist()) == {2}
    entry = FeatureStore(root).registry.get(GROUP, NAME)
    assert entry.version == 2
    assert entry.row_count == LARGE_ROWS
    leftovers = [path for path in root.rglob("*.tmp")]
    assert leftovers == []
