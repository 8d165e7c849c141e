"""Concurrent writer processes: appends to one table serialise, other tables do not wait."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import filelock
import pyarrow as pa
import pyarrow.parquet as pq

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
