"""Concurrent writers and readers: appends to one table serialise and keep every row, other
tables do not wait, and each read returns one whole version."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import filelock
import httpx
import pyarrow as pa
import pyarrow.csv as pa_csv
import pyarrow.parquet as pq
from conftest import lock_is_held, start_server, stop_server

from sqlstore.store import FeatureStore

WRITERS = 4
APPENDS_PER_WRITER = 10
ROWS_PER_APPEND = 3
INITIAL_ROWS = 5
PROCESS_TIMEOUT_SECONDS = 120

# Waits for "go" on stdin so that every writer has imported sqlstore before any appends.
APPENDER = textwrap.dedent(
    """
    import sys
    import pyarrow as pa
    from sqlstore.store import FeatureStore

    root, writer, appends, rows = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
    store = FeatureStore(root, lock_timeout_seconds=100)
    print("ready", flush=True)
    sys.stdin.readline()
    for sequence in range(appends):
        first = 1_000 * (writer + 1) + rows * sequence
        table = pa.table(
            {
                "entity_id": list(range(first, first + rows)),
                "writer": [writer] * rows,
                "sequence": [sequence] * rows,
            }
        )
        store.write("shared", "events", table, mode="append")
    print("done", flush=True)
    """
)

OTHER_TABLE_WRITER = textwrap.dedent(
    """
    import sys
    import pyarrow as pa
    from sqlstore.errors import TableBusy
    from sqlstore.store import FeatureStore

    store = FeatureStore(sys.argv[1], lock_timeout_seconds=0.5)
    result = store.write("shared", "free", pa.table({"entity_id": [1, 2, 3]}))
    print("free version", result.entry.version, flush=True)
    try:
        store.write("shared", "held", pa.table({"entity_id": [9]}))
    except TableBusy as error:
        print("held busy", error.message, flush=True)
    """
)


def expected_entity_ids() -> list[int]:
    ids = list(range(INITIAL_ROWS))
    for writer in range(WRITERS):
        for sequence in range(APPENDS_PER_WRITER):
            first = 1_000 * (writer + 1) + ROWS_PER_APPEND * sequence
            ids += range(first, first + ROWS_PER_APPEND)
    return sorted(ids)


def test_parallel_appends_keep_every_row(tmp_path: Path) -> None:
    root = tmp_path / "store"
    initial = pa.table(
        {
            "entity_id": list(range(INITIAL_ROWS)),
            "writer": [-1] * INITIAL_ROWS,
            "sequence": [0] * INITIAL_ROWS,
        }
    )
    FeatureStore(root).write("shared", "events", initial)
    processes = [
        subprocess.Popen(
            [
                sys.executable,
                "-c",
                APPENDER,
                str(root),
                str(writer),
                str(APPENDS_PER_WRITER),
                str(ROWS_PER_APPEND),
            ],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for writer in range(WRITERS)
    ]
    for process in processes:
        assert process.stdout.readline() == "ready\n"
    for process in processes:
        process.stdin.write("go\n")
        process.stdin.flush()
    results = [process.communicate(timeout=PROCESS_TIMEOUT_SECONDS) for process in processes]

    for process, (output, errors) in zip(processes, results, strict=True):
        assert process.returncode == 0, errors
        assert output == "done\n"
    path = root / "features" / "shared" / "events.parquet"
    stored = pq.read_table(path)
    entry = json.loads((root / "registry" / "shared" / "events.json").read_text())
    ids = stored["entity_id"].to_pylist()
    assert sorted(ids) == expected_entity_ids()
    assert len(ids) == len(set(ids))
    assert entry["version"] == 1 + WRITERS * APPENDS_PER_WRITER
    assert entry["row_count"] == stored.num_rows
    assert entry["row_count"] == INITIAL_ROWS + WRITERS * APPENDS_PER_WRITER * ROWS_PER_APPEND
    rows = stored.to_pylist()
    for writer in range(WRITERS):
        sequences = [row["sequence"] for row in rows if row["writer"] == writer]
        expected = [i for i in range(APPENDS_PER_WRITER) for _ in range(ROWS_PER_APPEND)]
        assert sequences == expected


def test_held_lock_blocks_only_its_table(tmp_path: Path) -> None:
    root = tmp_path / "store"
    store = FeatureStore(root)
    store.write("shared", "held", pa.table({"entity_id": [1]}))
    lock = filelock.FileLock(store.layout.lock_path("shared", "held"))

    with lock.acquire(timeout=5):
        completed = subprocess.run(
            [sys.executable, "-c", OTHER_TABLE_WRITER, str(root)],
            capture_output=True,
            text=True,
            timeout=PROCESS_TIMEOUT_SECONDS,
        )

    assert completed.returncode == 0, completed.stderr
    lines = completed.stdout.splitlines()
    assert lines[0] == "free version 1"
    assert lines[1].startswith("held busy")
    assert "shared/held" in lines[1]
    assert store.registry.get("shared", "free").row_count == 3
    assert store.registry.get("shared", "held").version == 1
    held = pq.read_table(root / "features" / "shared" / "held.parquet")
    assert held["entity_id"].to_pylist() == [1]
    assert store.write("shared", "held", pa.table({"entity_id": [9]})).entry.version == 2


# Appends from CLI processes and from REST clients of a two-worker server, all at once.
CLI_WRITERS = 3
CLI_ROWS = 200
REST_THREADS = 4
REST_ROWS = 5
MIN_REST_APPENDS = 3


def write_csv(path: Path, first_id: int, rows: int, writer: str) -> list[int]:
    ids = list(range(first_id, first_id + rows))
    pa_csv.write_csv(pa.table({"entity_id": ids, "writer": [writer] * rows}), path)
    return ids


def ingest_command(root: Path, path: Path, group: str, name: str, mode: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "sqlstore",
        "ingest",
        str(path),
        "--group",
        group,
        "--name",
        name,
        "--mode",
        mode,
        "--root",
        str(root),
    ]


def append_over_rest(
    base_url: str,
    thread: int,
    cli_done: threading.Event,
    acknowledged: list[int],
    failures: list[str],
) -> None:
    """Append REST_ROWS rows at a time until the CLI writers finished; record what was saved."""
    sequence = 0
    with httpx.Client(base_url=base_url, timeout=PROCESS_TIMEOUT_SECONDS) as client:
        while sequence < MIN_REST_APPENDS or not cli_done.is_set():
            first = 100_000 * (thread + 1) + REST_ROWS * sequence
            ids = list(range(first, first + REST_ROWS))
            records = [{"entity_id": i, "writer": f"rest{thread}"} for i in ids]
            response = client.post(
                "/features/shared/mixed", json={"mode": "append", "records": records}
            )
            if response.status_code != 200:
                failures.append(f"{response.status_code} {response.text}")
                return
            acknowledged.extend(ids)
            sequence += 1


def test_cli_and_rest_appends_keep_every_row(tmp_path: Path) -> None:
    root = tmp_path / "store"
    initial_ids = list(range(INITIAL_ROWS))
    initial = pa.table({"entity_id": initial_ids, "writer": ["initial"] * INITIAL_ROWS})
    FeatureStore(root).write("shared", "mixed", initial)
    cli_ids: list[int] = []
    commands = []
    for writer in range(CLI_WRITERS):
        path = tmp_path / f"cli{writer}.csv"
        cli_ids += write_csv(path, 10_000 * (writer + 1), CLI_ROWS, f"cli{writer}")
        commands.append(ingest_command(root, path, "shared", "mixed", "append"))
    server = start_server(root, tmp_path / "server.log", workers=2)
    cli_done = threading.Event()
    acknowledged: list[int] = []
    failures: list[str] = []
    threads = [
        threading.Thread(
            target=append_over_rest,
            args=(server.base_url, thread, cli_done, acknowledged, failures),
        )
        for thread in range(REST_THREADS)
    ]

    try:
        for thread in threads:
            thread.start()
        processes = [
            subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
            for command in commands
        ]
        outputs = [process.communicate(timeout=PROCESS_TIMEOUT_SECONDS)[0] for process in processes]
        cli_done.set()
        for thread in threads:
            thread.join(timeout=PROCESS_TIMEOUT_SECONDS)
    finally:
        cli_done.set()
        stop_server(server)

    for process, output in zip(processes, outputs, strict=True):
        assert process.returncode == 0, output
    assert failures == []
    assert len(acknowledged) >= REST_THREADS * MIN_REST_APPENDS * REST_ROWS
    stored = pq.read_table(root / "features" / "shared" / "mixed.parquet")
    ids = stored["entity_id"].to_pylist()
    assert len(ids) == len(set(ids))
    assert sorted(ids) == sorted(initial_ids + cli_ids + acknowledged)
    entry = json.loads((root / "registry" / "shared" / "mixed.json").read_text())
    rest_appends = len(acknowledged) // REST_ROWS
    assert entry["version"] == 1 + CLI_WRITERS + rest_appends
    assert entry["row_count"] == len(ids)
    writers = dict(zip(ids, stored["writer"].to_pylist(), strict=True))
    assert {writers[i] for i in cli_ids} == {f"cli{w}" for w in range(CLI_WRITERS)}


# Rows of the file a CLI ingest writes to one table while another table is written over REST;
# large enough that the ingest holds its table's lock for a second or more.
LONG_WRITE_ROWS = 2_000_000
LOCK_POLL_SECONDS = 0.01


def test_long_write_does_not_block_other_table(tmp_path: Path) -> None:
    root = tmp_path / "store"
    store = FeatureStore(root)
    big = tmp_path / "big.parquet"
    rows = LONG_WRITE_ROWS
    pq.write_table(
        pa.table({"entity_id": range(rows), "payload": [f"value {i}" for i in range(rows)]}), big
    )
    server = start_server(root, tmp_path / "server.log")
    long_write = subprocess.Popen(
        ingest_command(root, big, "shared", "long", "overwrite"),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    long_lock = store.layout.lock_path("shared", "long")

    try:
        while not lock_is_held(long_lock):
            assert long_write.poll() is None, long_write.communicate()[0]
            time.sleep(LOCK_POLL_SECONDS)
        response = httpx.post(
            f"{server.base_url}/features/shared/short",
            json={"records": [{"entity_id": 1}, {"entity_id": 2}]},
            timeout=PROCESS_TIMEOUT_SECONDS,
        )
        # The evidence of no waiting: the long write still holds its lock after the short one.
        still_held = lock_is_held(long_lock)
        still_running = long_write.poll() is None
        output = long_write.communicate(timeout=PROCESS_TIMEOUT_SECONDS)[0]
    finally:
        stop_server(server)

    assert response.status_code == 200, response.text
    assert response.json()["version"] == 1
    assert still_held
    assert still_running
    assert long_write.returncode == 0, output
    assert store.registry.get("shared", "long").row_count == rows
    assert store.registry.get("shared", "short").row_count == 2


# Overwrites of one table, each version with its own row count and every row stamped with the
# version, while other threads read it through pages and SQL.
VERSION_ROWS = [50, 3_000, 400, 8_000]
OVERWRITES = 30
READER_THREADS = 3


def version_rows(version: int) -> int:
    return VERSION_ROWS[version % len(VERSION_ROWS)]


def version_records(version: int) -> list[dict[str, int]]:
    return [{"entity_id": i, "version": version} for i in range(version_rows(version))]


def overwrite_versions(base_url: str, failures: list[str]) -> None:
    with httpx.Client(base_url=base_url, timeout=PROCESS_TIMEOUT_SECONDS) as client:
        for version in range(2, OVERWRITES + 2):
            response = client.post(
                "/features/shared/versioned", json={"records": version_records(version)}
            )
            if response.status_code != 200 or response.json()["version"] != version:
                failures.append(f"write {version}: {response.status_code} {response.text[:300]}")
                return


def read_versions(
    base_url: str, done: threading.Event, seen: list[tuple[str, int]], problems: list[str]
) -> None:
    """Read the table until `done`; record each read's version and every inconsistent read."""
    sql = (
        "SELECT version, count(*) AS rows, max(entity_id) AS last_id "
        "FROM shared.versioned GROUP BY version"
    )
    with httpx.Client(base_url=base_url, timeout=PROCESS_TIMEOUT_SECONDS) as client:
        while not done.is_set():
            response = client.get("/features/shared/versioned", params={"limit": 10_000})
            if response.status_code != 200:
                problems.append(f"page: {response.status_code} {response.text[:300]}")
                continue
            content = response.json()
            versions = {row["version"] for row in content["data"]}
            ids = [row["entity_id"] for row in content["data"]]
            metadata = content["metadata"]
            if len(versions) != 1:
                problems.append(f"page mixes versions {sorted(versions)}")
                continue
            (version,) = versions
            expected = {
                "ids": list(range(version_rows(version))),
                "metadata.version": version,
                "metadata.total_rows": version_rows(version),
                "X-Table-Version": str(version),
            }
            found = {
                "ids": sorted(ids),
                "metadata.version": metadata["version"],
                "metadata.total_rows": metadata["total_rows"],
                "X-Table-Version": response.headers["x-table-version"],
            }
            for key, value in expected.items():
                if found[key] != value:
                    shown = found[key] if key != "ids" else f"{len(found[key])} ids"
                    problems.append(f"page of version {version}: {key} is {shown}")
            seen.append(("page", version))

            response = client.post("/sql", json={"sql": sql})
            if response.status_code != 200:
                problems.append(f"sql: {response.status_code} {response.text[:300]}")
                continue
            groups = response.json()["data"]
            if len(groups) != 1:
                problems.append(f"sql mixes versions {groups}")
                continue
            version = groups[0]["version"]
            if groups[0]["rows"] != version_rows(version):
                problems.append(f"sql of version {version}: {groups[0]['rows']} rows")
            if groups[0]["last_id"] != version_rows(version) - 1:
                problems.append(f"sql of version {version}: last id {groups[0]['last_id']}")
            seen.append(("sql", version))


def test_readers_see_one_version_during_writes(tmp_path: Path) -> None:
    root = tmp_path / "store"
    FeatureStore(root).write("shared", "versioned", pa.Table.from_pylist(version_records(1)))
    server = start_server(root, tmp_path / "server.log", workers=2)
    done = threading.Event()
    failures: list[str] = []
    seen: list[tuple[str, int]] = []
    problems: list[str] = []
    readers = [
        threading.Thread(target=read_versions, args=(server.base_url, done, seen, problems))
        for _ in range(READER_THREADS)
    ]

    try:
        for reader in readers:
            reader.start()
        overwrite_versions(server.base_url, failures)
    finally:
        done.set()
        for reader in readers:
            reader.join(timeout=PROCESS_TIMEOUT_SECONDS)
        stop_server(server)

    assert failures == []
    assert problems == []
    # The reads overlapped the writes: they saw several versions, not only the first or last.
    assert len({version for _, version in seen}) > 2
    assert {kind for kind, _ in seen} == {"page", "sql"}
