"""FeatureStore writes: registry entries, appends, validation, storage figures, recovery."""

from __future__ import annotations

import errno
import io
import json
import logging
import os
import subprocess
import sys
import textwrap
import threading
from collections.abc import Callable
from datetime import date, datetime
from pathlib import Path

import pyarrow as pa
import pyarrow.csv as pa_csv
import pyarrow.parquet as pq
import pytest

from sqlstore.errors import Conflict, InvalidIdentifier, InvalidInput, NotFound, StorageError
from sqlstore.reader import parse_filters, read_page
from sqlstore.store import FeatureStore, TableDefinition


@pytest.fixture
def store(tmp_path: Path) -> FeatureStore:
    return FeatureStore(tmp_path / "store")


def registry_json(store: FeatureStore, group: str, name: str) -> dict:
    return json.loads((store.root / "registry" / group / f"{name}.json").read_text())


def table_file(store: FeatureStore, group: str, name: str) -> Path:
    return store.root / "features" / group / f"{name}.parquet"


def leftover_temporary_files(store: FeatureStore) -> list[Path]:
    found = []
    for folder in ("features", "registry"):
        found += list((store.root / folder).glob("*/.*.tmp"))
    return found


def users(count: int, start: int = 0) -> pa.Table:
    ids = list(range(start, start + count))
    return pa.table({"entity_id": ids, "score": [i * 0.5 for i in ids]})


# Registry contents


def test_registry_defaults(store: FeatureStore) -> None:
    data = pa.table(
        {
            "entity_id": [1, 2, 3],
            "event_timestamp": ["2024-05-01T00:00:00Z"] * 3,
            "score": [0.5, 1.5, 2.5],
        }
    )
    store.write("user", "scores", data)
    entry = registry_json(store, "user", "scores")

    assert entry["entity_key"] == ["entity_id"]
    assert entry["timestamp_column"] == "event_timestamp"
    assert entry["created_timestamp_column"] is None
    assert entry["ttl_seconds"] is None
    assert entry["row_count"] == 3
    assert entry["version"] == 1
    assert entry["path"] == "features/user/scores.parquet"
    assert [column["name"] for column in entry["columns"]] == [
        "entity_id",
        "event_timestamp",
        "score",
    ]
    assert [column["type"] for column in entry["columns"]] == [
        "uint8",
        "timestamp[us, tz=UTC]",
        "float",
    ]
    assert entry["created_at"] == entry["updated_at"]


def test_registry_without_defaults(store: FeatureStore) -> None:
    store.write("user", "plain", pa.table({"user": [1], "when": ["2024-05-01"]}))
    entry = registry_json(store, "user", "plain")

    assert entry["entity_key"] == []
    assert entry["timestamp_column"] is None


def test_registry_declared_values(store: FeatureStore) -> None:
    data = pa.table(
        {
            "user_id": ["a", "b"],
            "item_id": [1, 2],
            "ts": ["2024-05-01T00:00:00Z", "2024-05-02T00:00:00Z"],
            "created": ["2024-05-03T00:00:00Z", "2024-05-03T00:00:00Z"],
            "clicks": [3, 4],
        }
    )
    definition = TableDefinition(
        entity_key=["user_id", "item_id"],
        timestamp_column="ts",
        created_timestamp_column="created",
        ttl_seconds=3600.0,
        description="Clicks per user and item",
        owner="ranking",
        tags=["daily", "pii-free"],
        column_descriptions={"clicks": "Clicks in the last day"},
    )
    store.write("user", "clicks", data, definition=definition)
    entry = registry_json(store, "user", "clicks")

    assert entry["entity_key"] == ["user_id", "item_id"]
    assert entry["timestamp_column"] == "ts"
    assert entry["created_timestamp_column"] == "created"
    assert entry["ttl_seconds"] == 3600.0
    assert entry["description"] == "Clicks per user and item"
    assert entry["owner"] == "ranking"
    assert entry["tags"] == ["daily", "pii-free"]
    descriptions = {column["name"]: column["description"] for column in entry["columns"]}
    assert descriptions["clicks"] == "Clicks in the last day"
    assert descriptions["user_id"] == ""
    assert entry["columns"][2]["type"] == "timestamp[us, tz=UTC]"
    assert entry["columns"][3]["type"] == "timestamp[us, tz=UTC]"


def test_overwrite_keeps_declared_values(store: FeatureStore) -> None:
    definition = TableDefinition(
        entity_key=["user"], description="Scores", owner="ranking", tags=["a"]
    )
    store.write("user", "kept", pa.table({"user": [1], "v": [1]}), definition=definition)
    store.write("user", "kept", pa.table({"user": [2], "v": [2]}))
    entry = registry_json(store, "user", "kept")

    assert entry["entity_key"] == ["user"]
    assert entry["description"] == "Scores"
    assert entry["owner"] == "ranking"
    assert entry["tags"] == ["a"]


def test_versions_and_times(store: FeatureStore) -> None:
    versions = []
    entries = []
    for mode in ("overwrite", "append", "overwrite"):
        result = store.write("user", "versions", users(2), mode=mode)
        versions.append(result.entry.version)
        entries.append(registry_json(store, "user", "versions"))

    assert versions == [1, 2, 3]
    assert [entry["version"] for entry in entries] == [1, 2, 3]
    created = [datetime.fromisoformat(entry["created_at"]) for entry in entries]
    updated = [datetime.fromisoformat(entry["updated_at"]) for entry in entries]
    assert created[0] == created[1] == created[2]
    assert updated[0] <= updated[1] <= updated[2]
    assert updated[2] > created[2]
    assert created[0].utcoffset().total_seconds() == 0


def test_registry_copy_in_footer(store: FeatureStore) -> None:
    store.write("user", "footer", users(4))
    metadata = pq.read_schema(table_file(store, "user", "footer")).metadata
    embedded = json.loads(metadata[b"sqlstore.entry"])
    registered = registry_json(store, "user", "footer")

    assert embedded["version"] == registered["version"]
    assert embedded["row_count"] == registered["row_count"]
    assert embedded["columns"] == registered["columns"]


# Appends


def test_append_adds_nullable_columns(store: FeatureStore) -> None:
    store.write("user", "grow", pa.table({"entity_id": [1, 2], "a": [10, 20]}))
    result = store.write("user", "grow", pa.table({"entity_id": [3], "b": ["x"]}), mode="append")
    stored = pq.read_table(table_file(store, "user", "grow"))

    assert stored.column_names == ["entity_id", "a", "b"]
    assert stored["entity_id"].to_pylist() == [1, 2, 3]
    assert stored["a"].to_pylist() == [10, 20, None]
    assert stored["b"].to_pylist() == [None, None, "x"]
    assert [column.name for column in result.entry.columns] == ["entity_id", "a", "b"]
    assert result.entry.row_count == 3
    assert result.rows_written == 1


def test_append_widens_integers(store: FeatureStore) -> None:
    store.write("user", "widen", pa.table({"entity_id": [1], "v": [200]}))
    result = store.write(
        "user", "widen", pa.table({"entity_id": [2], "v": [-70_000]}), mode="append"
    )
    stored = pq.read_table(table_file(store, "user", "widen"))

    assert stored["v"].to_pylist() == [200, -70_000]
    assert stored.schema.field("v").type == pa.int32()
    assert result.entry.columns[1].type == "int32"


def test_append_to_missing_table_creates_it(store: FeatureStore) -> None:
    result = store.write("user", "fresh", users(3), mode="append")

    assert result.entry.version == 1
    assert result.entry.row_count == 3


def test_append_conflicting_key_rejected(store: FeatureStore) -> None:
    store.write("user", "keyed", users(2))

    with pytest.raises(Conflict) as raised:
        store.write(
            "user",
            "keyed",
            pa.table({"entity_id": [5], "score": [1.0], "other": [1]}),
            mode="append",
            definition=TableDefinition(entity_key=["other"]),
        )

    assert "entity_key" in raised.value.message
    assert registry_json(store, "user", "keyed")["version"] == 1
    assert pq.read_table(table_file(store, "user", "keyed")).num_rows == 2


def test_append_conflicting_timestamp_rejected(store: FeatureStore) -> None:
    store.write("user", "timed", users(2))

    with pytest.raises(Conflict):
        store.write(
            "user",
            "timed",
            pa.table({"entity_id": [5], "ts": ["2024-05-01"]}),
            mode="append",
            definition=TableDefinition(timestamp_column="ts"),
        )


def test_append_keeps_static_table_static(store: FeatureStore) -> None:
    store.write("user", "static", users(2))
    appended = pa.table({"entity_id": [9], "event_timestamp": ["2024-05-01T00:00:00Z"]})
    result = store.write("user", "static", appended, mode="append")

    assert result.entry.timestamp_column is None
    stored = pq.read_table(table_file(store, "user", "static"))
    assert stored["event_timestamp"].to_pylist() == [None, None, "2024-05-01T00:00:00Z"]


def test_overwrite_replaces_rows(store: FeatureStore) -> None:
    store.write("user", "replaced", users(5))
    store.write("user", "replaced", users(2, start=100))
    stored = pq.read_table(table_file(store, "user", "replaced"))

    assert stored["entity_id"].to_pylist() == [100, 101]


# Validation


@pytest.mark.parametrize("name", ["file_row_number"])
def test_reserved_column_rejected(store: FeatureStore, name: str) -> None:
    with pytest.raises(InvalidInput) as raised:
        store.write("user", "reserved", pa.table({"entity_id": [1], name: [1]}))

    assert repr(name) in raised.value.message
    assert not table_file(store, "user", "reserved").exists()


def test_case_colliding_columns_rejected(store: FeatureStore) -> None:
    with pytest.raises(InvalidInput) as raised:
        store.write("user", "cased", pa.table({"entity_id": [1], "Score": [1], "score": [2]}))

    assert "'Score'" in raised.value.message
    assert "'score'" in raised.value.message


def test_append_case_collision_rejected(store: FeatureStore) -> None:
    store.write("user", "cased_append", pa.table({"entity_id": [1], "Score": [1.5]}))

    with pytest.raises(InvalidInput) as raised:
        store.write(
            "user", "cased_append", pa.table({"entity_id": [2], "score": [2.5]}), mode="append"
        )

    assert "'Score'" in raised.value.message
    assert "'score'" in raised.value.message
    stored = pq.read_table(table_file(store, "user", "cased_append"))
    assert stored.column_names == ["entity_id", "Score"]


@pytest.mark.parametrize(
    ("group", "name"),
    [("User", "t"), ("main", "t"), ("user", "bad-name"), ("user", "../escape"), ("9x", "t")],
)
def test_invalid_table_names_rejected(store: FeatureStore, group: str, name: str) -> None:
    with pytest.raises(InvalidIdentifier):
        store.write(group, name, users(1))


def test_invalid_column_name_rejected(store: FeatureStore) -> None:
    with pytest.raises(InvalidIdentifier) as raised:
        store.write("user", "columns", pa.table({"entity_id": [1], "bad name": [1]}))

    assert "'bad name'" in raised.value.message


def test_empty_table_rejected(store: FeatureStore) -> None:
    with pytest.raises(InvalidInput):
        store.write("user", "empty", users(0))


@pytest.mark.parametrize(("mode", "compression"), [("upsert", "snappy"), ("append", "gzip")])
def test_invalid_options_rejected(store: FeatureStore, mode: str, compression: str) -> None:
    with pytest.raises(InvalidInput):
        store.write("user", "options", users(1), mode=mode, compression=compression)


def test_null_key_rejected(store: FeatureStore) -> None:
    with pytest.raises(InvalidInput) as raised:
        store.write("user", "null_key", pa.table({"entity_id": [1, None, 3]}))

    assert "record 1" in raised.value.message
    assert "'entity_id'" in raised.value.message


def test_null_timestamp_rejected(store: FeatureStore) -> None:
    data = pa.table({"entity_id": [1, 2], "event_timestamp": ["2024-05-01", None]})

    with pytest.raises(InvalidInput) as raised:
        store.write("user", "null_time", data)

    assert "record 1" in raised.value.message
    assert "'event_timestamp'" in raised.value.message


def test_appended_null_key_counts_new_records(store: FeatureStore) -> None:
    store.write("user", "null_append", users(3))

    with pytest.raises(InvalidInput) as raised:
        store.write("user", "null_append", pa.table({"entity_id": [7, None]}), mode="append")

    assert "record 1" in raised.value.message


def test_missing_key_column_rejected(store: FeatureStore) -> None:
    with pytest.raises(InvalidInput) as raised:
        store.write(
            "user",
            "no_key",
            pa.table({"id": [1]}),
            definition=TableDefinition(entity_key=["user_id"]),
        )

    assert "'user_id'" in raised.value.message


@pytest.mark.parametrize(
    "values",
    [
        pa.array([1, 2], pa.int64()),
        pa.array([2**64 - 1, 0], pa.uint64()),
        pa.array(["a", "b"]),
        pa.array([date(2024, 5, 1), date(2024, 5, 2)]),
    ],
    ids=["int64", "uint64", "string", "date"],
)
def test_key_types_accepted(store: FeatureStore, values: pa.Array) -> None:
    result = store.write("user", "keys", pa.table({"k": values}), definition=keyed("k"))
    stored = pq.read_table(table_file(store, "user", "keys"))

    assert result.entry.entity_key == ["k"]
    assert stored["k"].to_pylist() == values.to_pylist()


@pytest.mark.parametrize(
    "values",
    [
        pa.array([1.5, 2.5]),
        pa.array([True, False]),
        pa.array([datetime(2024, 5, 1), datetime(2024, 5, 2)]),
        pa.array([[1], [2]]),
    ],
    ids=["float", "bool", "timestamp", "list"],
)
def test_key_types_rejected(store: FeatureStore, values: pa.Array) -> None:
    with pytest.raises(InvalidInput) as raised:
        store.write("user", "bad_keys", pa.table({"k": values}), definition=keyed("k"))

    assert "'k'" in raised.value.message


def keyed(column: str) -> TableDefinition:
    return TableDefinition(entity_key=[column])


def test_nested_struct_column_rejected(store: FeatureStore) -> None:
    data = pa.table({"entity_id": [1], "nested": pa.array([{"a": 1}])})

    with pytest.raises(InvalidInput) as raised:
        store.write("user", "nested", data)

    assert "'nested'" in raised.value.message


def test_negative_ttl_rejected(store: FeatureStore) -> None:
    with pytest.raises(InvalidInput):
        store.write("user", "ttl", users(1), definition=TableDefinition(ttl_seconds=-1))


# Compression and storage figures


@pytest.mark.parametrize(("compression", "codec"), [("snappy", "SNAPPY"), ("zstd", "ZSTD")])
def test_compression_in_parquet_metadata(store: FeatureStore, compression: str, codec: str) -> None:
    result = store.write("user", "compressed", users(100), compression=compression)
    metadata = pq.ParquetFile(table_file(store, "user", "compressed")).metadata

    codecs = {
        metadata.row_group(group).column(column).compression
        for group in range(metadata.num_row_groups)
        for column in range(metadata.num_columns)
    }
    assert codecs == {codec}
    assert result.entry.storage.compression == compression


def test_storage_figures_measured(store: FeatureStore) -> None:
    data = pa.table(
        {
            "entity_id": list(range(500)),
            "name": [f"user {i % 7}" for i in range(500)],
            "score": [i / 3 for i in range(500)],
            "seen": pa.array([i * 3_600 for i in range(500)], pa.timestamp("s", tz="UTC")),
            "raw": pa.array([b"bytes"] * 500, pa.binary()),
        }
    )
    result = store.write("user", "figures", data)
    path = table_file(store, "user", "figures")
    stored = pq.read_table(path)
    csv_text = io.BytesIO()
    pa_csv.write_csv(stored, csv_text)

    entry = registry_json(store, "user", "figures")
    assert entry["storage"]["bytes_on_disk"] == path.stat().st_size
    assert entry["storage"]["csv_bytes"] == len(csv_text.getvalue())
    assert entry["storage"]["arrow_bytes"] == stored.nbytes
    assert result.entry.storage.bytes_on_disk == path.stat().st_size


def test_list_columns_counted_as_csv(store: FeatureStore) -> None:
    data = pa.table({"entity_id": [1, 2, 3], "tags": [["a", "bc"], None, ["d"]]})
    nested = pa.table({"entity_id": [1, 2], "grid": [[[1, 2], [3]], None]})
    result = store.write("user", "lists", data)
    nested_result = store.write("user", "grids", nested)

    # As CSV: a header line, then the elements joined by "|", one row per line.
    expected = len('"entity_id","tags"\n1,"a|bc"\n2,\n3,"d"\n')
    expected_nested = len('"entity_id","grid"\n1,"1|2|3"\n2,\n')
    assert result.entry.storage.csv_bytes == expected
    assert nested_result.entry.storage.csv_bytes == expected_nested


# Delete


def test_delete_removes_file_and_entry(store: FeatureStore) -> None:
    store.write("user", "doomed", users(3))
    store.write("user", "survivor", users(3))
    store.delete("user", "doomed")

    assert not table_file(store, "user", "doomed").exists()
    assert not (store.root / "registry" / "user" / "doomed.json").exists()
    assert [entry.name for entry in store.list_tables()] == ["survivor"]
    with pytest.raises(NotFound):
        store.table("user", "doomed")


def test_delete_missing_table_not_found(store: FeatureStore) -> None:
    with pytest.raises(NotFound):
        store.delete("user", "never")


# Recovery


def test_recover_repairs_lagging_registry(store: FeatureStore) -> None:
    store.write("user", "lagging", users(3))
    registry_path = store.root / "registry" / "user" / "lagging.json"
    first_entry = registry_path.read_bytes()
    store.write("user", "lagging", users(5), mode="append")
    # A writer killed between renaming the file and updating the registry leaves this state.
    registry_path.write_bytes(first_entry)

    store.recover()
    entry = registry_json(store, "user", "lagging")
    path = table_file(store, "user", "lagging")

    assert entry["version"] == 2
    assert entry["row_count"] == pq.read_metadata(path).num_rows == 8
    assert entry["storage"]["bytes_on_disk"] == path.stat().st_size


def test_recover_restores_missing_entry(store: FeatureStore) -> None:
    store.write("user", "orphan", users(4))
    (store.root / "registry" / "user" / "orphan.json").unlink()

    store.recover()

    assert registry_json(store, "user", "orphan")["row_count"] == 4


def test_recover_removes_temporary_files(store: FeatureStore) -> None:
    store.write("user", "tidy", users(3))
    data_temporary = store.root / "features" / "user" / ".tidy.0123abcd.tmp"
    registry_temporary = store.root / "registry" / "user" / ".tidy.4567ef01.tmp"
    data_temporary.write_bytes(b"partial parquet")
    registry_temporary.write_bytes(b"{")

    store.recover()

    assert not data_temporary.exists()
    assert not registry_temporary.exists()
    assert pq.read_table(table_file(store, "user", "tidy")).num_rows == 3
    assert registry_json(store, "user", "tidy")["version"] == 1


def test_recover_drops_entry_without_file(store: FeatureStore) -> None:
    store.write("user", "vanished", users(3))
    store.write("user", "present", users(3))
    table_file(store, "user", "vanished").unlink()

    store.recover()

    assert not (store.root / "registry" / "user" / "vanished.json").exists()
    assert [entry.name for entry in store.list_tables()] == ["present"]


def test_recover_ignores_foreign_parquet(store: FeatureStore) -> None:
    folder = store.root / "features" / "user"
    folder.mkdir(parents=True)
    pq.write_table(users(2), folder / "foreign.parquet")

    store.recover()

    assert store.list_tables() == []


def test_recover_skips_foreign_names(store: FeatureStore) -> None:
    store.write("user", "kept", users(2))
    foreign_parquet = store.root / "features" / "user" / "My Export.parquet"
    pq.write_table(users(1), foreign_parquet)
    foreign_folder = store.root / "features" / "Scratch-Data"
    foreign_folder.mkdir()
    pq.write_table(users(1), foreign_folder / "x.parquet")
    foreign_temporary = store.root / "features" / "user" / ".DS_Store.tmp"
    foreign_temporary.write_text("")
    own_temporary = store.root / "features" / "user" / ".kept.0123abcd.tmp"
    own_temporary.write_text("")

    store.recover()

    assert foreign_parquet.exists()
    assert foreign_temporary.exists()
    assert not own_temporary.exists()
    assert [entry.name for entry in store.list_tables()] == ["kept"]


# File system errors


def test_disk_full_keeps_previous_version(
    store: FeatureStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    store.write("user", "full", users(3))

    def disk_full(source, target):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(target))

    monkeypatch.setattr(os, "replace", disk_full)
    with pytest.raises(StorageError) as raised:
        store.write("user", "full", users(50))
    monkeypatch.undo()

    assert "disk is full" in raised.value.message
    assert pq.read_table(table_file(store, "user", "full"))["entity_id"].to_pylist() == [0, 1, 2]
    assert registry_json(store, "user", "full")["version"] == 1
    assert leftover_temporary_files(store) == []


def test_registry_failure_repaired_by_recover(
    store: FeatureStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    store.write("user", "half", users(3))
    real_replace = os.replace

    def fail_for_registry(source, target):
        if str(target).endswith(".json"):
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(target))
        real_replace(source, target)

    monkeypatch.setattr(os, "replace", fail_for_registry)
    with pytest.raises(StorageError):
        store.write("user", "half", users(6))
    monkeypatch.undo()
    store.recover()

    entry = registry_json(store, "user", "half")
    assert entry["version"] == 2
    assert entry["row_count"] == pq.read_metadata(table_file(store, "user", "half")).num_rows
    assert leftover_temporary_files(store) == []


def test_file_size_limit_gives_storage_error(tmp_path: Path) -> None:
    # A real write failure: the kernel refuses to grow a file past RLIMIT_FSIZE (EFBIG).
    root = tmp_path / "store"
    FeatureStore(root).write("user", "limited", users(3))
    script = textwrap.dedent(
        """
        import resource, signal, sys
        import pyarrow as pa
        from sqlstore.errors import StorageError
        from sqlstore.store import FeatureStore

        store = FeatureStore(sys.argv[1])
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (16_384, 16_384))
        ids = list(range(200_000))
        try:
            store.write("user", "limited", pa.table({"entity_id": ids, "score": ids}))
        except StorageError as error:
            print("StorageError:", error.message)
        """
    )
    completed = subprocess.run(
        [sys.executable, "-c", script, str(root)], capture_output=True, text=True, timeout=60
    )

    assert completed.returncode == 0, completed.stderr
    assert completed.stdout.startswith("StorageError:")
    assert "previous version is intact" in completed.stdout
    stored = pq.read_table(root / "features" / "user" / "limited.parquet")
    assert stored["entity_id"].to_pylist() == [0, 1, 2]
    assert FeatureStore(root).registry.get("user", "limited").version == 1
    assert list((root / "features" / "user").glob(".*.tmp")) == []


def test_root_that_is_a_file_rejected(tmp_path: Path) -> None:
    not_a_folder = tmp_path / "root"
    not_a_folder.write_text("")

    with pytest.raises(StorageError) as raised:
        FeatureStore(not_a_folder)

    assert str(not_a_folder) in raised.value.message


def test_unwritable_group_folder_rejected(store: FeatureStore) -> None:
    # A file where the group folder belongs fails the write even for root, unlike chmod.
    (store.root / "features" / "blocked").write_text("")

    with pytest.raises(StorageError):
        store.write("blocked", "table", users(2))

    assert store.registry.find("blocked", "table") is None


# Page totals


@pytest.mark.parametrize(
    ("limit", "offset", "filters", "rows", "total"),
    [
        (10, 0, [], 7, 7),  # a short first page
        (3, 6, [], 1, 7),  # a short last page
        (3, 0, [], 3, 7),  # a full page: the total needs a count
        (7, 0, [], 7, 7),  # a full page that is also the last one
        (3, 20, [], 0, 7),  # past the end
        (0, 0, [], 0, 7),  # no rows requested
        (10, 0, [("entity_id__gt", "100")], 0, 0),  # nothing matches
        (2, 0, [("entity_id__gte", "4")], 2, 3),  # a full page of a filtered read
    ],
)
def test_page_total_rows(
    store: FeatureStore,
    limit: int,
    offset: int,
    filters: list[tuple[str, str]],
    rows: int,
    total: int,
) -> None:
    store.write("user", "scores", users(7))

    page = read_page(
        store, "user", "scores", filters=parse_filters(filters), limit=limit, offset=offset
    )

    assert page.table.num_rows == rows
    assert page.total_rows == total


def test_long_version_file_is_no_token(store: FeatureStore) -> None:
    store.write("user", "tokened", users(2))
    # Longer than any token: a file that another program wrote.
    (store.root / "registry" / ".version").write_bytes(b"a" * 6000)

    assert store.registry.version() is None
    assert [entry.name for entry in store.registry.list()] == ["tokened"]


def test_empty_version_file_lists_again(tmp_path: Path) -> None:
    reader = FeatureStore(tmp_path / "store")
    writer = FeatureStore(tmp_path / "store")
    writer.write("user", "first", users(2))
    version_file = tmp_path / "store" / "registry" / ".version"
    # A writer killed between truncating the token file and writing it leaves it empty.
    version_file.write_bytes(b"")
    listed_before = [entry.name for entry in reader.registry.list()]
    writer.write("user", "second", users(2))
    version_file.write_bytes(b"")

    assert listed_before == ["first"]
    assert [entry.name for entry in reader.registry.list()] == ["first", "second"]


def run_with_deadline(function: Callable[[], object], seconds: float = 10) -> object:
    """Return what `function` returns, failing the test if it blocks for `seconds`."""
    results: list[object] = []
    thread = threading.Thread(target=lambda: results.append(function()), daemon=True)
    thread.start()
    thread.join(seconds)
    assert not thread.is_alive(), "blocked on the registry version file"
    return results[0]


@pytest.mark.parametrize("kind", ["fifo", "directory", "symlink"])
def test_non_regular_version_path_ignored(store: FeatureStore, kind: str) -> None:
    store.write("user", "before", users(2))
    version_file = store.root / "registry" / ".version"
    version_file.unlink()
    if kind == "fifo":
        os.mkfifo(version_file)
    elif kind == "directory":
        version_file.mkdir()
    else:
        target = store.root / "elsewhere.txt"
        target.write_bytes(b"untouched")
        version_file.symlink_to(target)
    other = FeatureStore(store.root)

    version = run_with_deadline(other.registry.version)
    run_with_deadline(lambda: other.write("user", "after", users(2)))

    assert version is None
    assert [entry.name for entry in store.registry.list()] == ["after", "before"]
    if kind == "symlink":
        assert (store.root / "elsewhere.txt").read_bytes() == b"untouched"


def test_unusable_version_file_logged_once(
    store: FeatureStore, caplog: pytest.LogCaptureFixture
) -> None:
    store.write("user", "first", users(2))
    version_file = store.root / "registry" / ".version"
    version_file.unlink()
    version_file.mkdir()

    with caplog.at_level(logging.WARNING, logger="sqlstore.registry"):
        for name in ("second", "third", "fourth"):
            store.write("user", name, users(2))
            store.registry.list()
    messages = [record.getMessage() for record in caplog.records]

    assert len([message for message in messages if "could not be written" in message]) == 1
    assert len([message for message in messages if "not a regular file" in message]) == 1
    assert [entry.name for entry in store.registry.list()] == [
        "first",
        "fourth",
        "second",
        "third",
    ]
