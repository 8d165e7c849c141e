"""The `sqlstore` command line: ingest of CSV, Parquet and JSON lines, info, help, errors.

A few tests start `python -m sqlstore` as a real process: help, a CSV ingest, info and a bad
file. The rest use typer's CliRunner in this process, where an uncaught exception is stored in
`result.exception` instead of printed as a traceback.
"""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import threading
from datetime import UTC, datetime
from pathlib import Path

import pyarrow as pa
import pyarrow.csv as pa_csv
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from sqlstore.cli import app
from sqlstore.store import FeatureStore, TableDefinition

PROCESS_TIMEOUT_SECONDS = 60


def run_cli(*arguments: str) -> subprocess.CompletedProcess[str]:
    # A wide terminal keeps rich from wrapping messages in the middle of a value. The logging
    # level is left to the command's default.
    environment = {**os.environ, "COLUMNS": "200"}
    environment.pop("SQLSTORE_LOG_LEVEL", None)
    return subprocess.run(
        [sys.executable, "-m", "sqlstore", *arguments],
        capture_output=True,
        text=True,
        timeout=PROCESS_TIMEOUT_SECONDS,
        env=environment,
    )


def one_line(text: str) -> str:
    return " ".join(text.split())


def registry_json(root: Path, group: str, name: str) -> dict:
    return json.loads((root / "registry" / group / f"{name}.json").read_text())


def table_file(root: Path, group: str, name: str) -> Path:
    return root / "features" / group / f"{name}.parquet"


# Help


def test_help_lists_commands() -> None:
    completed = run_cli("--help")

    assert completed.returncode == 0
    for command in ("demo", "serve", "ingest", "info"):
        assert command in completed.stdout


def test_ingest_help_lists_options() -> None:
    result = CliRunner().invoke(app, ["ingest", "--help"])

    assert result.exit_code == 0
    for option in ("--entity-key", "--timestamp-column", "--mode", "--compression", "--root"):
        assert option in result.output


# Ingest


def test_ingest_csv_defaults(tmp_path: Path) -> None:
    source = tmp_path / "scores.csv"
    source.write_text(
        "entity_id,event_timestamp,score\n"
        "1,2024-05-01T12:00:00Z,0.5\n"
        "2,2024-05-02T12:00:00Z,1.5\n"
        "3,2024-05-03T12:00:00Z,\n"
    )
    root = tmp_path / "store"

    completed = run_cli(
        "ingest", str(source), "--group", "user", "--name", "scores", "--root", str(root)
    )

    assert completed.returncode == 0, completed.stderr
    assert "wrote 3 rows to user/scores" in completed.stdout
    # The store logs each write at INFO, which the CLI leaves out by default.
    assert completed.stderr == ""
    entry = registry_json(root, "user", "scores")
    assert entry["entity_key"] == ["entity_id"]
    assert entry["timestamp_column"] == "event_timestamp"
    assert entry["storage"]["compression"] == "snappy"
    stored = pq.read_table(table_file(root, "user", "scores"))
    assert stored["entity_id"].to_pylist() == [1, 2, 3]
    assert stored["score"].to_pylist() == [0.5, 1.5, None]
    assert stored["event_timestamp"].to_pylist()[0] == datetime(2024, 5, 1, 12, tzinfo=UTC)


def test_ingest_parquet_declared(tmp_path: Path) -> None:
    source = tmp_path / "clicks.parquet"
    data = pa.table(
        {
            "user_id": ["a", "b", "a"],
            "item_id": [10, 10, 11],
            "ts": pa.array([1_714_564_800, 1_714_568_400, 1_714_572_000], pa.int64()),
            "clicks": [1, 2, 3],
        }
    )
    pq.write_table(data, source)
    root = tmp_path / "store"

    result = CliRunner().invoke(
        app,
        [
            "ingest",
            str(source),
            "--group",
            "interaction",
            "--name",
            "clicks",
            "--entity-key",
            "user_id,item_id",
            "--timestamp-column",
            "ts",
            "--compression",
            "zstd",
            "--description",
            "Clicks per user and item",
            "--root",
            str(root),
        ],
    )

    assert result.exit_code == 0, result.output
    entry = registry_json(root, "interaction", "clicks")
    assert entry["entity_key"] == ["user_id", "item_id"]
    assert entry["timestamp_column"] == "ts"
    assert entry["description"] == "Clicks per user and item"
    assert entry["storage"]["compression"] == "zstd"
    path = table_file(root, "interaction", "clicks")
    assert pq.ParquetFile(path).metadata.row_group(0).column(0).compression == "ZSTD"
    stored = pq.read_table(path)
    # Rows are stored sorted by (user_id, item_id, ts): ("a", 10), ("a", 11), ("b", 10).
    assert stored["ts"].to_pylist()[2] == datetime(2024, 5, 1, 13, tzinfo=UTC)
    assert stored["clicks"].to_pylist() == [1, 3, 2]


def test_ingest_jsonl_append(tmp_path: Path) -> None:
    first = tmp_path / "first.jsonl"
    second = tmp_path / "second.ndjson"
    first.write_text('{"entity_id": 1, "tier": "gold"}\n{"entity_id": 2, "tier": "silver"}\n')
    second.write_text('{"entity_id": 3, "tier": "gold", "age": 41}\n')
    root = tmp_path / "store"
    common = ["--group", "user", "--name", "tiers", "--root", str(root)]

    created = CliRunner().invoke(app, ["ingest", str(first), *common])
    appended = CliRunner().invoke(app, ["ingest", str(second), *common, "--mode", "append"])

    assert created.exit_code == 0, created.output
    assert appended.exit_code == 0, appended.output
    assert "version 2" in appended.output
    entry = registry_json(root, "user", "tiers")
    assert entry["version"] == 2
    assert entry["row_count"] == 3
    stored = pq.read_table(table_file(root, "user", "tiers"))
    assert stored["entity_id"].to_pylist() == [1, 2, 3]
    assert stored["tier"].to_pylist() == ["gold", "silver", "gold"]
    assert stored["age"].to_pylist() == [None, None, 41]


# Info


def test_info_lists_tables(tmp_path: Path) -> None:
    root = tmp_path / "store"
    store = FeatureStore(root)
    store.write("user", "scores", pa.table({"entity_id": [1, 2, 3], "score": [1, 2, 3]}))
    store.write("content", "movies", pa.table({"movie_id": [7]}))

    completed = run_cli("info", "--root", str(root))

    assert completed.returncode == 0, completed.stderr
    assert "user/scores" in completed.stdout
    assert "content/movies" in completed.stdout
    assert "entity_id" in completed.stdout
    assert "2 tables in 2 groups" in completed.stdout


def test_info_empty_store(tmp_path: Path) -> None:
    FeatureStore(tmp_path / "empty")
    result = CliRunner().invoke(app, ["info", "--root", str(tmp_path / "empty")])

    assert result.exit_code == 0
    assert "0 tables in 0 groups" in result.output


def test_info_missing_root(tmp_path: Path) -> None:
    # A mistyped root once reported an empty store and created its folders.
    result = CliRunner().invoke(app, ["info", "--root", str(tmp_path / "typo")])

    assert result.exit_code == 1
    assert "no sqlstore store at" in result.output
    assert not (tmp_path / "typo").exists()


# Errors: exit code 1, a message naming the problem, no traceback


def write_bad_files(folder: Path) -> None:
    (folder / "nested.jsonl").write_text('{"entity_id": 1, "address": {"city": "Oslo"}}\n')
    (folder / "mixed.jsonl").write_text('{"entity_id": 1}\n{"entity_id": "two"}\n')
    (folder / "garbage.parquet").write_bytes(b"not a parquet file at all")
    (folder / "empty.csv").write_text("")
    (folder / "header_only.csv").write_text("entity_id,score\n")
    (folder / "ragged.csv").write_text("entity_id,score\n1,2\n3\n")
    (folder / "bad_time.csv").write_text("entity_id,event_timestamp\n1,2024-05-01\n2,soon\n")
    (folder / "bad_name.csv").write_text("entity id,score\n1,2\n")
    (folder / "notes.txt").write_text("entity_id\n1\n")
    (folder / "good.csv").write_text("entity_id,score\n1,2\n")


@pytest.mark.parametrize(
    ("file_name", "extra", "expected"),
    [
        ("nested.jsonl", [], "'address'"),
        ("mixed.jsonl", [], "mixed.jsonl"),
        ("garbage.parquet", [], "garbage.parquet"),
        ("empty.csv", [], "empty.csv"),
        ("header_only.csv", [], "no rows"),
        ("ragged.csv", [], "ragged.csv"),
        ("bad_time.csv", [], "record 1, field 'event_timestamp': 'soon'"),
        ("bad_name.csv", [], "'entity id'"),
        ("notes.txt", [], "'notes.txt'"),
        ("missing.csv", [], "not found"),
        ("good.csv", ["--mode", "upsert"], "'upsert'"),
        ("good.csv", ["--compression", "gzip"], "'gzip'"),
        ("good.csv", ["--entity-key", "user_id"], "'user_id'"),
        ("good.csv", ["--timestamp-column", "when"], "'when'"),
    ],
)
def test_bad_ingest_exits_cleanly(
    tmp_path: Path, file_name: str, extra: list[str], expected: str
) -> None:
    write_bad_files(tmp_path)
    arguments = ["ingest", str(tmp_path / file_name), "--group", "user", "--name", "bad"]

    result = CliRunner().invoke(app, [*arguments, *extra, "--root", str(tmp_path / "store")])

    assert isinstance(result.exception, SystemExit), result.exception
    assert result.exit_code == 1
    assert one_line(result.output).startswith("error: ")
    assert expected in one_line(result.output)
    assert not table_file(tmp_path / "store", "user", "bad").exists()


def test_non_utf8_csv_stored_as_bytes(tmp_path: Path) -> None:
    source = tmp_path / "latin1.csv"
    source.write_bytes("entity_id,city\n1,Zürich\n".encode("latin-1"))
    root = tmp_path / "store"

    result = CliRunner().invoke(
        app, ["ingest", str(source), "--group", "user", "--name", "cities", "--root", str(root)]
    )

    assert result.exception is None, result.output
    stored = pq.read_table(table_file(root, "user", "cities"))
    assert stored["city"].to_pylist() == ["Zürich".encode("latin-1")]


def test_append_type_mismatch_exits_cleanly(tmp_path: Path) -> None:
    root = tmp_path / "store"
    FeatureStore(root).write("user", "typed", pa.table({"entity_id": [1], "score": [1.5]}))
    source = tmp_path / "text.csv"
    source.write_text("entity_id,score\n2,high\n")

    result = CliRunner().invoke(
        app,
        ["ingest", str(source), "--group", "user", "--name", "typed"]
        + ["--mode", "append", "--root", str(root)],
    )

    assert isinstance(result.exception, SystemExit), result.exception
    assert result.exit_code == 1
    assert "'score'" in one_line(result.output)
    assert registry_json(root, "user", "typed")["version"] == 1


@pytest.mark.parametrize("command", ["ingest", "info"])
def test_root_that_is_a_file(tmp_path: Path, command: str) -> None:
    root = tmp_path / "root_file"
    root.write_text("")
    source = tmp_path / "good.csv"
    source.write_text("entity_id\n1\n")
    arguments = ["info"]
    if command == "ingest":
        arguments = ["ingest", str(source), "--group", "user", "--name", "t"]

    result = CliRunner().invoke(app, [*arguments, "--root", str(root)])

    assert isinstance(result.exception, SystemExit), result.exception
    assert result.exit_code == 1
    assert str(root) in one_line(result.output)


def test_bad_file_process_has_no_traceback(tmp_path: Path) -> None:
    source = tmp_path / "nested.jsonl"
    source.write_text('{"entity_id": 1, "address": {"city": "Oslo"}}\n')

    completed = run_cli(
        "ingest", str(source), "--group", "user", "--name", "t", "--root", str(tmp_path / "s")
    )

    assert completed.returncode == 1
    assert "Traceback" not in completed.stderr
    assert completed.stderr.startswith("error: ")
    assert "'address'" in completed.stderr
    assert completed.stdout == ""


def test_csv_file_round_trip(tmp_path: Path) -> None:
    data = pa.table({"entity_id": [5, 6], "label": ["x", "y"], "weight": [0.25, 0.75]})
    source = tmp_path / "round.csv"
    pa_csv.write_csv(data, source)
    root = tmp_path / "store"

    result = CliRunner().invoke(
        app, ["ingest", str(source), "--group", "user", "--name", "round", "--root", str(root)]
    )

    assert result.exit_code == 0, result.output
    stored = pq.read_table(table_file(root, "user", "round"))
    assert stored.to_pylist() == data.to_pylist()


# Training set

SPINE_SQL = "SELECT 1 AS entity_id, TIMESTAMPTZ '2020-06-01 00:00:00+00' AS event_timestamp"


def training_set_arguments(output: Path, root: Path) -> list[str]:
    return [
        "training-set",
        "--features",
        "user/scores",
        "--entity-sql",
        SPINE_SQL,
        "--output",
        str(output),
        "--root",
        str(root),
    ]


def test_training_set_replaces_output(tmp_path: Path) -> None:
    root = tmp_path / "store"
    times = [datetime(2020, 1, 1, tzinfo=UTC), datetime(2021, 1, 1, tzinfo=UTC)]
    scores = pa.table({"entity_id": [1, 1], "event_timestamp": times, "score": [0.5, 0.75]})
    definition = TableDefinition(["entity_id"], timestamp_column="event_timestamp")
    FeatureStore(root).write("user", "scores", scores, definition=definition)
    output = tmp_path / "set.csv"
    output.write_text("old\n")

    result = CliRunner().invoke(app, training_set_arguments(output, root), env={"COLUMNS": "200"})

    assert result.exit_code == 0, result.output
    assert result.stdout == f"wrote 1 row, 3 columns to {output}\n"
    assert pa_csv.read_csv(output).to_pylist() == [
        {"entity_id": 1, "event_timestamp": datetime(2020, 6, 1, tzinfo=UTC), "score": 0.5}
    ]
    assert sorted(path.name for path in tmp_path.iterdir()) == ["set.csv", "store"]


@pytest.mark.parametrize("target", ["folder", "missing folder"])
def test_training_set_bad_output_path(tmp_path: Path, target: str) -> None:
    if target == "folder":
        output = tmp_path / "set.csv"
        output.mkdir()
        cause = "it is a folder; give a file path"
    else:
        output = tmp_path / "missing" / "set.csv"
        cause = f"the folder {tmp_path / 'missing'} does not exist; create it first"

    arguments = training_set_arguments(output, tmp_path / "store")
    result = CliRunner().invoke(app, arguments, env={"COLUMNS": "200"})

    assert result.exit_code == 1
    assert result.stdout == ""
    assert result.stderr == f"error: cannot write --output {output}: {cause}\n"
    assert [path.name for path in tmp_path.iterdir()] == (["set.csv"] if target == "folder" else [])


def test_training_set_to_fifo(tmp_path: Path) -> None:
    root = tmp_path / "store"
    times = [datetime(2020, 1, 1, tzinfo=UTC)]
    scores = pa.table({"entity_id": [1], "event_timestamp": times, "score": [0.5]})
    definition = TableDefinition(["entity_id"], timestamp_column="event_timestamp")
    FeatureStore(root).write("user", "scores", scores, definition=definition)
    fifo = tmp_path / "set.csv"
    os.mkfifo(fifo)
    chunks: list[bytes] = []

    def read() -> None:
        with fifo.open("rb") as stream:
            chunks.append(stream.read())

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        result = CliRunner().invoke(app, training_set_arguments(fifo, root), env={"COLUMNS": "200"})
    finally:
        reader.join(timeout=60)
        if reader.is_alive():
            # No writer opened the FIFO, so the reader still waits in open().
            os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))

    assert result.exit_code == 0, result.output
    assert result.stdout == ""
    assert result.stderr == f"wrote 1 row, 3 columns to {fifo}\n"
    assert len(chunks) == 1
    assert pa_csv.read_csv(pa.py_buffer(chunks[0])).to_pylist() == [
        {"entity_id": 1, "event_timestamp": datetime(2020, 6, 1, tzinfo=UTC), "score": 0.5}
    ]
    assert stat.S_ISFIFO(fifo.lstat().st_mode)
    assert sorted(path.name for path in tmp_path.iterdir()) == ["set.csv", "store"]


@pytest.mark.parametrize("target", ["symlink loop", "empty"])
def test_training_set_invalid_output(tmp_path: Path, target: str) -> None:
    if target == "symlink loop":
        output = tmp_path / "set.csv"
        output.symlink_to(output.name)
        output_text = str(output)
        expected = (
            f"error: cannot write --output {output}: the symbolic link loops back on itself; "
            "point it at a file\n"
        )
        exit_code = 1
    else:
        output_text = ""
        expected = "Invalid value for '--output': the path is empty; give a file path"
        exit_code = 2

    arguments = ["training-set", "--output", output_text, "--name", "any", "--root", str(tmp_path)]
    result = CliRunner().invoke(app, arguments, env={"COLUMNS": "200"})

    assert result.exit_code == exit_code
    assert result.stdout == ""
    assert expected in result.stderr
