"""A table whose Parquet file was removed, cut short or replaced outside sqlstore: every read
route returns 503 `table_unavailable` naming the table, other tables keep working, and the
table is served again once the file is restored, without a restart."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path

import filelock
import httpx
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import RunningServer, damage_data_file, start_server, stop_server

from sqlstore.store import FeatureStore, TableDefinition

SCORES = pa.table({"user_id": [1, 2], "score": [0.5, 0.25]})
OTHER = pa.table({"user_id": [1], "city": ["Oslo"]})
MESSAGE = (
    "table shop/scores cannot be read: its data file is missing, damaged or was replaced "
    "outside sqlstore (the log has the cause); an operator can restore the file or write the "
    "table again"
)
SCORE_SQL = {"sql": "SELECT count(*) AS n, sum(score) AS total FROM shop.scores"}
READS = [
    ("GET", "/features/shop/scores", None),
    ("GET", "/features/shop/scores?score__gte=0.3", None),
    ("POST", "/features/batch", {"feature_names": ["shop/scores"], "entity_ids": [1]}),
    (
        "POST",
        "/features/batch",
        {"feature_names": ["shop/scores"], "entity_ids": [1], "timestamp": 0},
    ),
    ("POST", "/get-online-features", {"entities": {"user_id": [1]}, "features": ["shop/scores"]}),
    ("POST", "/sql", SCORE_SQL),
    (
        "POST",
        "/training-set",
        {
            "entities": [{"user_id": 1, "event_timestamp": "2030-01-01T00:00:00Z"}],
            "features": ["shop/scores"],
        },
    ),
    ("GET", "/features/shop/scores/info", None),
]


@pytest.fixture
def server(tmp_path: Path) -> Iterator[RunningServer]:
    store = FeatureStore(tmp_path / "store")
    store.write("shop", "scores", SCORES, definition=TableDefinition(["user_id"]))
    store.write("shop", "other", OTHER, definition=TableDefinition(["user_id"]))
    running = start_server(
        store.root,
        tmp_path / "server.log",
        env={"SQLSTORE_CACHE_MEMORY_ENTRIES": "0", "SQLSTORE_CACHE_DISK_BYTES": "0"},
    )
    yield running
    stop_server(running)


def data_file(server: RunningServer) -> Path:
    return server.root / FeatureStore(server.root).registry.get("shop", "scores").path


def damage_file(path: Path, damage: str) -> None:
    """Damage the data file `path` of shop/scores in the way `damage` names."""
    damage_data_file(path, damage, other_table=path.with_name("other.parquet"))


def send(client: httpx.Client, method: str, path: str, body: object) -> httpx.Response:
    return client.request(method, path, json=body)


@pytest.mark.parametrize("damage", ["remove", "truncate", "garbage", "foreign", "other table"])
def test_damaged_file_is_503(server: RunningServer, damage: str) -> None:
    path = data_file(server)
    saved = path.read_bytes()

    with httpx.Client(base_url=server.base_url, timeout=60) as client:
        # The page view and the SQL worker's views exist before the file is damaged.
        before = [client.get("/features/shop/scores"), client.post("/sql", json=SCORE_SQL)]
        damage_file(path, damage)
        responses = [send(client, method, url, body) for method, url, body in READS]
        other = client.get("/features/shop/other").json()["data"]
        path.write_bytes(saved)
        restored = [send(client, method, url, body) for method, url, body in READS]

    assert [response.status_code for response in before] == [200, 200]
    for response in responses:
        assert response.status_code == 503, (response.request.url, response.text)
        assert "retry-after" not in response.headers
        assert response.json()["error"]["code"] == "table_unavailable"
        assert response.json()["error"]["message"] == MESSAGE
    assert other == [{"user_id": 1, "city": "Oslo"}]
    assert [response.status_code for response in restored] == [200] * len(READS)
    assert restored[0].json()["data"] == [
        {"user_id": 1, "score": 0.5},
        {"user_id": 2, "score": 0.25},
    ]
    assert restored[5].json()["data"] == [{"n": 2, "total": 0.75}]
    assert "/features/shop/scores.parquet" not in "".join(r.text for r in responses)


def test_append_to_damaged_table_is_503(server: RunningServer) -> None:
    damage_file(data_file(server), "truncate")
    records = {"records": [{"user_id": 3, "score": 1.0}], "mode": "append"}

    with httpx.Client(base_url=server.base_url, timeout=60) as client:
        appended = client.post("/features/shop/scores", json=records)
        replaced = client.post("/features/shop/scores", json={**records, "mode": "overwrite"})
        page = client.get("/features/shop/scores").json()["data"]

    assert appended.status_code == 503
    assert appended.json()["error"]["message"] == MESSAGE
    assert replaced.status_code == 200, replaced.text
    assert page == [{"user_id": 3, "score": 1.0}]


def test_append_onto_other_table_file_is_503(server: RunningServer) -> None:
    path = data_file(server)
    saved = path.read_bytes()
    damage_file(path, "other table")
    records = {"records": [{"user_id": 3, "score": 1.0}], "mode": "append"}

    with httpx.Client(base_url=server.base_url, timeout=60) as client:
        appended = client.post("/features/shop/scores", json=records)
        path.write_bytes(saved)
        page = client.get("/features/shop/scores").json()["data"]

    assert appended.status_code == 503
    assert appended.json()["error"]["message"] == MESSAGE
    assert page == [{"user_id": 1, "score": 0.5}, {"user_id": 2, "score": 0.25}]


def write_version_2(root: Path) -> bytes:
    """Write version 2 of shop/scores and return the bytes of version 1's file."""
    store = FeatureStore(root)
    path = store.root / store.registry.get("shop", "scores").path
    version_1 = path.read_bytes()
    version_2 = pa.table({"user_id": [1], "score": [9.0]})
    store.write("shop", "scores", version_2, definition=TableDefinition(["user_id"]))
    return version_1


def test_older_version_copied_back_is_503(server: RunningServer) -> None:
    path = data_file(server)
    path.write_bytes(write_version_2(server.root))
    records = {"records": [{"user_id": 3, "score": 1.0}], "mode": "append"}

    with httpx.Client(base_url=server.base_url, timeout=60) as client:
        response = client.get("/features/shop/scores")
        appended = client.post("/features/shop/scores", json=records)

    assert response.status_code == 503
    assert response.json()["error"]["message"] == MESSAGE
    assert appended.status_code == 503
    assert appended.json()["error"]["message"] == MESSAGE


@pytest.mark.parametrize("damage", ["other table", "older version"])
def test_restart_keeps_registry_entries(tmp_path: Path, damage: str) -> None:
    store = FeatureStore(tmp_path / "store")
    store.write("shop", "scores", SCORES, definition=TableDefinition(["user_id"]))
    store.write("shop", "other", OTHER, definition=TableDefinition(["user_id"]))
    path = store.root / store.registry.get("shop", "scores").path
    if damage == "other table":
        damage_file(path, damage)
    else:
        path.write_bytes(write_version_2(store.root))
    versions = {entry.reference: entry.version for entry in store.registry.list()}

    server = start_server(store.root, tmp_path / "server.log")
    try:
        with httpx.Client(base_url=server.base_url, timeout=60) as client:
            other = client.get("/features/shop/other").json()["data"]
            scores = client.get("/features/shop/scores")
    finally:
        stop_server(server)

    after = {entry.reference: entry.version for entry in FeatureStore(store.root).registry.list()}
    assert after == versions
    assert other == [{"user_id": 1, "city": "Oslo"}]
    assert scores.status_code == 503
    assert scores.json()["error"]["message"] == MESSAGE


def test_server_starts_with_damaged_file(tmp_path: Path) -> None:
    store = FeatureStore(tmp_path / "store")
    store.write("shop", "scores", SCORES, definition=TableDefinition(["user_id"]))
    store.write("shop", "other", OTHER, definition=TableDefinition(["user_id"]))
    damage_file(store.root / store.registry.get("shop", "scores").path, "truncate")

    server = start_server(store.root, tmp_path / "server.log")
    try:
        with httpx.Client(base_url=server.base_url, timeout=60) as client:
            listed = client.get("/features").json()["count"]
            other = client.get("/features/shop/other").json()["data"]
            scores = client.get("/features/shop/scores")
    finally:
        stop_server(server)

    assert listed == 2
    assert other == [{"user_id": 1, "city": "Oslo"}]
    assert scores.status_code == 503
    assert scores.json()["error"]["message"] == MESSAGE


ENTRY_MESSAGE = (
    "table shop/scores cannot be read: its registry entry is missing or damaged (the log has "
    "the cause); restarting the server rebuilds it from the table's data file, or an operator "
    "can write the table again"
)


def entry_file(root: Path) -> Path:
    return root / "registry" / "shop" / "scores.json"


@pytest.mark.parametrize("damage", [b"{not json", b"[]", b'{"group": "shop"}', b""])
def test_server_rebuilds_damaged_entry(tmp_path: Path, damage: bytes) -> None:
    store = FeatureStore(tmp_path / "store")
    store.write("shop", "scores", SCORES, definition=TableDefinition(["user_id"]))
    entry_file(store.root).write_bytes(damage)

    server = start_server(store.root, tmp_path / "server.log")
    try:
        with httpx.Client(base_url=server.base_url, timeout=60) as client:
            scores = client.get("/features/shop/scores").json()
            health = client.get("/health").json()
    finally:
        stop_server(server)

    assert scores["data"] == [{"user_id": 1, "score": 0.5}, {"user_id": 2, "score": 0.25}]
    assert scores["metadata"]["version"] == 1
    assert health["status"] == "healthy"
    assert FeatureStore(store.root).registry.get("shop", "scores").entity_key == ["user_id"]


def test_entry_damaged_while_serving_is_503(server: RunningServer) -> None:
    entry_file(server.root).write_bytes(b"{not json")
    # Without a result cache, /sql reads no entry: its views were built from the listing
    # before the damage, and they read the data file, which is intact.
    reads = [read for read in READS if read[1] != "/sql"]

    with httpx.Client(base_url=server.base_url, timeout=60) as client:
        responses = [client.request(method, path, json=body) for method, path, body in reads]
        health = client.get("/health").json()
        other = client.get("/features/shop/other")

    for response in responses:
        assert response.status_code == 503, response.request.url
        assert response.json()["error"] == {
            "code": "table_unavailable",
            "message": ENTRY_MESSAGE,
            "request_id": response.headers["x-request-id"],
        }
    assert health["status"] == "degraded"
    assert health["unavailable_tables"] == ["shop/scores"]
    assert other.status_code == 200


def test_write_repairs_damaged_entry(server: RunningServer) -> None:
    entry_file(server.root).write_bytes(b"{not json")
    record = {"records": [{"user_id": 3, "score": 0.125}], "mode": "append"}

    with httpx.Client(base_url=server.base_url, timeout=60) as client:
        appended = client.post("/features/shop/scores", json=record)
        scores = client.get("/features/shop/scores").json()
        health = client.get("/health").json()

    assert appended.status_code == 200, appended.text
    assert [row["user_id"] for row in scores["data"]] == [1, 2, 3]
    assert scores["metadata"]["version"] == 2
    assert health["status"] == "healthy"


def test_append_without_entry_or_footer_is_503(server: RunningServer) -> None:
    entry_file(server.root).write_bytes(b"{not json")
    damage_file(server.root / "features" / "shop" / "scores.parquet", "garbage")
    record = {"records": [{"user_id": 3, "score": 0.125}]}

    with httpx.Client(base_url=server.base_url, timeout=60) as client:
        appended = client.post("/features/shop/scores", json={**record, "mode": "append"})
        overwritten = client.post(
            "/features/shop/scores",
            json={**record, "mode": "overwrite", "entity_key": ["user_id"]},
        )
        scores = client.get("/features/shop/scores").json()

    assert appended.status_code == 503
    assert appended.json()["error"]["message"] == ENTRY_MESSAGE
    assert overwritten.status_code == 200, overwritten.text
    assert scores["data"] == [{"user_id": 3, "score": 0.125}]
    assert scores["metadata"]["version"] == 1


@pytest.mark.parametrize("damage", ["not JSON", "missing"])
def test_delete_with_damaged_entry(server: RunningServer, damage: str) -> None:
    if damage == "missing":
        entry_file(server.root).unlink()
    else:
        entry_file(server.root).write_bytes(b"{not json")

    with httpx.Client(base_url=server.base_url, timeout=60) as client:
        deleted = client.delete("/features/shop/scores")
        scores = client.get("/features/shop/scores")
        health = client.get("/health").json()

    assert deleted.status_code == 200, deleted.text
    assert scores.status_code == 404
    assert not (server.root / "features" / "shop" / "scores.parquet").exists()
    assert health["status"] == "healthy"


def test_cached_page_of_damaged_entry(tmp_path: Path) -> None:
    store = FeatureStore(tmp_path / "store")
    store.write("shop", "scores", SCORES, definition=TableDefinition(["user_id"]))
    server = start_server(store.root, tmp_path / "server.log")
    try:
        with httpx.Client(base_url=server.base_url, timeout=60) as client:
            cached = [client.get("/features/shop/scores").headers["x-cache"] for _ in range(2)]
            entry_file(store.root).write_bytes(b"{not json")
            damaged = client.get("/features/shop/scores")
    finally:
        stop_server(server)

    assert cached == ["miss", "hit-memory"]
    assert damaged.status_code == 503
    assert damaged.json()["error"]["message"] == ENTRY_MESSAGE
    assert "fast lane" not in server.log()
    assert "Traceback" not in server.log()


TIMED_SCORES = pa.table(
    {
        "user_id": [1, 2],
        "event_timestamp": pa.array(["2020-01-01T00:00:00", "2020-06-01T00:00:00"])
        .cast(pa.timestamp("us"))
        .cast(pa.timestamp("us", tz="UTC")),
        "score": [0.5, 0.25],
    }
)
AS_OF = "2021-01-01T00:00:00Z"
TIMED_READS = [
    ("POST", "/features/batch", {"feature_names": ["shop/scores"], "entity_ids": [1]}),
    (
        "POST",
        "/features/batch",
        {"feature_names": ["shop/scores"], "entity_ids": [1], "timestamp": AS_OF},
    ),
    (
        "POST",
        "/training-set",
        {"entities": [{"user_id": 1, "event_timestamp": AS_OF}], "features": ["shop/scores"]},
    ),
    ("POST", "/get-online-features", {"entities": {"user_id": [1]}, "features": ["shop/scores"]}),
]


@pytest.mark.parametrize("damage", ["foreign", "other table"])
def test_timed_table_replaced_before_first_read(tmp_path: Path, damage: str) -> None:
    store = FeatureStore(tmp_path / "store")
    definition = TableDefinition(["user_id"], timestamp_column="event_timestamp")
    store.write("shop", "scores", TIMED_SCORES, definition=definition)
    store.write("shop", "other", OTHER, definition=TableDefinition(["user_id"]))
    path = store.root / store.registry.get("shop", "scores").path
    saved = path.read_bytes()
    server = start_server(
        store.root,
        tmp_path / "server.log",
        env={"SQLSTORE_CACHE_MEMORY_ENTRIES": "0", "SQLSTORE_CACHE_DISK_BYTES": "0"},
    )
    try:
        # No read of shop/scores runs before the damage, so the server first reads the
        # schema of the replaced file.
        damage_file(path, damage)
        with httpx.Client(base_url=server.base_url, timeout=60) as client:
            responses = [send(client, method, url, body) for method, url, body in TIMED_READS]
            path.write_bytes(saved)
            restored = [send(client, method, url, body) for method, url, body in TIMED_READS]
    finally:
        stop_server(server)

    for response in responses:
        assert response.status_code == 503, (response.request.url, response.text)
        assert response.json()["error"]["code"] == "table_unavailable"
        assert response.json()["error"]["message"] == MESSAGE
    assert [response.status_code for response in restored] == [200] * len(TIMED_READS)
    assert restored[0].json()["features"]["shop/scores"] == [
        {"user_id": 1, "event_timestamp": "2020-01-01T00:00:00+00:00", "score": 0.5}
    ]
    assert restored[3].json()["results"][1]["values"] == [0.5]
    assert restored[1].status_code == 200, restored[1].text
    assert restored[1].json()["features"]["shop/scores"] == [
        {"user_id": 1, "event_timestamp": "2020-01-01T00:00:00+00:00", "score": 0.5}
    ]
    assert restored[2].status_code == 200, restored[2].text
    assert restored[2].json()["data"] == [
        {"user_id": 1, "event_timestamp": "2021-01-01T00:00:00+00:00", "score": 0.5}
    ]


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("path", "../secret.parquet"),
        ("path", "features/shop/other.parquet"),
        ("group", "Bad-Group"),
        ("name", "other"),
    ],
)
def test_misplaced_entry_is_damaged(tmp_path: Path, field: str, value: str) -> None:
    store = FeatureStore(tmp_path / "store")
    store.write("shop", "scores", SCORES, definition=TableDefinition(["user_id"]))
    store.write("shop", "other", OTHER, definition=TableDefinition(["user_id"]))
    pq.write_table(pa.table({"user_id": [1], "score": [99.0]}), tmp_path / "secret.parquet")
    lookup = {"feature_names": ["shop/scores"], "entity_ids": [1]}

    server = start_server(store.root, tmp_path / "server.log")
    try:
        entry = json.loads(entry_file(store.root).read_text())
        entry_file(store.root).write_text(json.dumps({**entry, field: value}))
        with httpx.Client(base_url=server.base_url, timeout=60) as client:
            misplaced = client.post("/features/batch", json=lookup)
            health = client.get("/health")
    finally:
        stop_server(server)
    restarted = start_server(store.root, tmp_path / "restarted.log")
    try:
        repaired = httpx.post(restarted.base_url + "/features/batch", json=lookup, timeout=60)
    finally:
        stop_server(restarted)

    assert misplaced.status_code == 503
    assert misplaced.json()["error"]["message"] == ENTRY_MESSAGE
    assert health.status_code == 200
    assert health.json()["unavailable_tables"] == ["shop/scores"]
    assert repaired.status_code == 200
    assert repaired.json()["features"]["shop/scores"] == [{"user_id": 1, "score": 0.5}]


def test_append_without_entry_keeps_rows(server: RunningServer) -> None:
    # A data file whose entry file is gone: the footer has the entry, as at a restart.
    entry_file(server.root).unlink()
    record = {"records": [{"user_id": 3, "score": 0.125}], "mode": "append"}

    with httpx.Client(base_url=server.base_url, timeout=60) as client:
        health_before = client.get("/health").json()
        appended = client.post("/features/shop/scores", json=record)
        scores = client.get("/features/shop/scores").json()
        health_after = client.get("/health").json()

    assert appended.status_code == 200, appended.text
    assert scores["data"] == [
        {"user_id": 1, "score": 0.5},
        {"user_id": 2, "score": 0.25},
        {"user_id": 3, "score": 0.125},
    ]
    assert scores["metadata"]["version"] == 2
    assert health_before["unavailable_tables"] == ["shop/scores"]
    assert health_after["status"] == "healthy"


def test_fifo_entry_does_not_block(tmp_path: Path) -> None:
    store = FeatureStore(tmp_path / "store")
    store.write("shop", "scores", SCORES, definition=TableDefinition(["user_id"]))
    store.write("shop", "other", OTHER, definition=TableDefinition(["user_id"]))
    server = start_server(store.root, tmp_path / "server.log")
    try:
        entry_file(store.root).unlink()
        os.mkfifo(entry_file(store.root))
        with httpx.Client(base_url=server.base_url, timeout=10) as client:
            health = client.get("/health").json()
            scores = client.get("/features/shop/scores")
            other = client.get("/features/shop/other")
    finally:
        stop_server(server)
    # A restart rebuilds the entry from the data file's footer, in place of the FIFO.
    restarted = start_server(store.root, tmp_path / "restarted.log")
    try:
        rebuilt = httpx.get(restarted.base_url + "/features/shop/scores", timeout=10)
    finally:
        stop_server(restarted)

    assert health["unavailable_tables"] == ["shop/scores"]
    assert scores.status_code == 503
    assert scores.json()["error"]["message"] == ENTRY_MESSAGE
    assert other.status_code == 200
    assert rebuilt.json()["data"] == [{"user_id": 1, "score": 0.5}, {"user_id": 2, "score": 0.25}]


def test_entry_symlink_is_damaged(server: RunningServer, tmp_path: Path) -> None:
    # A valid copy of the entry outside the store, which reads must not follow.
    outside = tmp_path / "outside.json"
    outside.write_bytes(entry_file(server.root).read_bytes())
    entry_file(server.root).unlink()
    entry_file(server.root).symlink_to(outside)

    with httpx.Client(base_url=server.base_url, timeout=10) as client:
        scores = client.get("/features/shop/scores")
        health = client.get("/health").json()

    assert scores.status_code == 503
    assert scores.json()["error"]["message"] == ENTRY_MESSAGE
    assert health["unavailable_tables"] == ["shop/scores"]
    assert "is a symbolic link" in server.log()


def test_damaged_entry_after_listing_is_503(server: RunningServer) -> None:
    entry_file(server.root).write_bytes(b"{not json")
    # A write of another table makes every process list the registry again, and the
    # listing leaves the damaged entry out.
    FeatureStore(server.root).write("shop", "other", OTHER, definition=TableDefinition(["user_id"]))
    reads = [read for read in READS if read[1] != "/features/shop/scores/info"]
    reads.append(("POST", "/features/batch", {"feature_names": ["scores"], "entity_ids": [1]}))

    with httpx.Client(base_url=server.base_url, timeout=60) as client:
        responses = [client.request(method, path, json=body) for method, path, body in reads]

    for response in responses:
        assert response.status_code == 503, (response.request.url, response.text)
        assert response.json()["error"]["message"] == ENTRY_MESSAGE


# Entries that parse but disagree with the footer of their data file, which the same write
# wrote. Each edit comes with the cause that the log names.
ENTRY_EDITS = {
    "extra column": (
        lambda entry: entry["columns"].append({"name": "ghost", "type": "double"}),
        "it lists column 'ghost', which the data file lacks",
    ),
    "missing column": (
        lambda entry: entry["columns"].pop(),
        "it lacks column 'score' of the data file",
    ),
    "column type": (
        lambda entry: entry["columns"][1].update(type="string"),
        # 0.5 and 0.25 are exact in float32, to which writes narrow float64.
        "it lists column 'score' as string, and the data file stores float",
    ),
    "entity key": (
        lambda entry: entry.update(entity_key=["customer_id"]),
        "its entity_key is ['customer_id'], and the data file's footer records ['user_id']",
    ),
    "timestamp column": (
        lambda entry: entry.update(timestamp_column="event_timestamp"),
        "its timestamp_column is 'event_timestamp', and the data file's footer records None",
    ),
    "created column": (
        lambda entry: entry.update(created_timestamp_column="created_at"),
        "its created_timestamp_column is 'created_at', and the data file's footer records None",
    ),
    "huge version": (
        lambda entry: entry.update(version=10**30),
        "version: Input should be less than or equal to 9223372036854775807",
    ),
    "negative version": (
        lambda entry: entry.update(version=-1),
        "version: Input should be greater than or equal to 0",
    ),
    "negative ttl": (
        lambda entry: entry.update(ttl_seconds=-5),
        "ttl_seconds: Input should be greater than or equal to 0",
    ),
    "other version": (
        lambda entry: entry.update(version=7),
        "it lists version 7, and the data file's footer, written at the same time, records "
        "version 1",
    ),
}
SCORES_DATA = [{"user_id": 1, "score": 0.5}, {"user_id": 2, "score": 0.25}]


def edit_entry(root: Path, edit: str) -> None:
    """Rewrite the entry file of shop/scores with the edit `edit` of ENTRY_EDITS."""
    entry = json.loads(entry_file(root).read_text())
    ENTRY_EDITS[edit][0](entry)
    entry_file(root).write_text(json.dumps(entry, indent=2))


def damaged_entry_log_line(root: Path, cause: str) -> str:
    return (
        f"registry entry file {entry_file(root)} of shop/scores cannot be used ({cause}), so the "
        "table is left out of listings and its reads answer 503"
    )


@pytest.mark.parametrize("edit", ENTRY_EDITS)
def test_entry_disagreeing_with_file_is_503(server: RunningServer, edit: str) -> None:
    # Without a result cache, /sql reads no entry, as for an entry that is not JSON.
    reads = [read for read in READS if read[1] != "/sql"]

    with httpx.Client(base_url=server.base_url, timeout=60) as client:
        # Every read runs once before the edit, so the online view and the DuckDB views of
        # the table exist.
        before = [send(client, method, url, body) for method, url, body in reads]
        edit_entry(server.root, edit)
        responses = [send(client, method, url, body) for method, url, body in reads]
        health = [client.get("/health").json() for _ in range(2)]
        other = client.get("/features/shop/other")

    assert [response.status_code for response in before] == [200] * len(reads)
    for response in responses:
        assert response.status_code == 503, (response.request.url, response.text)
        assert "retry-after" not in response.headers
        assert response.json()["error"]["code"] == "table_unavailable"
        assert response.json()["error"]["message"] == ENTRY_MESSAGE
    for body in health:
        assert body["status"] == "degraded"
        assert body["unavailable_tables"] == ["shop/scores"]
    assert other.status_code == 200
    log = server.log()
    assert log.count(damaged_entry_log_line(server.root, ENTRY_EDITS[edit][1])) == 1
    assert "Traceback" not in log


@pytest.mark.parametrize("edit", ENTRY_EDITS)
def test_restart_rebuilds_disagreeing_entry(tmp_path: Path, edit: str) -> None:
    store = FeatureStore(tmp_path / "store")
    store.write("shop", "scores", SCORES, definition=TableDefinition(["user_id"]))
    written = entry_file(store.root).read_text()
    edit_entry(store.root, edit)
    lookup = {"feature_names": ["shop/scores"], "entity_ids": [2]}

    server = start_server(store.root, tmp_path / "server.log")
    try:
        with httpx.Client(base_url=server.base_url, timeout=60) as client:
            page = client.get("/features/shop/scores").json()
            batch = client.post("/features/batch", json=lookup).json()
            health = client.get("/health").json()
    finally:
        stop_server(server)

    assert page["data"] == SCORES_DATA
    assert page["metadata"]["version"] == 1
    assert batch["features"]["shop/scores"] == [{"user_id": 2, "score": 0.25}]
    assert health["status"] == "healthy"
    assert json.loads(entry_file(store.root).read_text()) == json.loads(written)
    assert (
        "registry entry of shop/scores was damaged, and the file is at version 1; restored the "
        "entry from the file's footer"
    ) in server.log()


@pytest.mark.parametrize("edit", ["extra column", "entity key", "huge version"])
def test_write_repairs_disagreeing_entry(server: RunningServer, edit: str) -> None:
    edit_entry(server.root, edit)
    record = {"records": [{"user_id": 3, "score": 0.125}], "mode": "append"}

    with httpx.Client(base_url=server.base_url, timeout=60) as client:
        appended = client.post("/features/shop/scores", json=record)
        scores = client.get("/features/shop/scores").json()
        health = client.get("/health").json()

    assert appended.status_code == 200, appended.text
    assert scores["data"] == [*SCORES_DATA, {"user_id": 3, "score": 0.125}]
    assert scores["metadata"]["version"] == 2
    assert health["status"] == "healthy"
    entry = FeatureStore(server.root).registry.get("shop", "scores")
    assert entry.entity_key == ["user_id"]
    assert [column.name for column in entry.columns] == ["user_id", "score"]


def test_missing_entry_is_unavailable(server: RunningServer, tmp_path: Path) -> None:
    entry_file(server.root).unlink()
    reads = [read for read in READS if read[1] != "/sql"]

    with httpx.Client(base_url=server.base_url, timeout=60) as client:
        health = [client.get("/health").json() for _ in range(2)]
        responses = [send(client, method, url, body) for method, url, body in reads]
    stop_server(server)
    # A restart's recover() rebuilds the entry from the data file's footer.
    restarted = start_server(server.root, tmp_path / "restarted.log")
    try:
        with httpx.Client(base_url=restarted.base_url, timeout=60) as client:
            rebuilt = client.get("/features/shop/scores").json()
            health_after = client.get("/health").json()
    finally:
        stop_server(restarted)

    for body in health:
        assert body["status"] == "degraded"
        assert body["unavailable_tables"] == ["shop/scores"]
        assert body["checks"]["tables"].endswith(
            ": shop/scores; the server log names each file and cause"
        )
    for response in responses:
        assert response.status_code == 503, (response.request.url, response.text)
        assert response.json()["error"]["message"] == ENTRY_MESSAGE
    cause = "the entry file is missing, and the data file features/shop/scores.parquet exists"
    assert server.log().count(damaged_entry_log_line(server.root, cause)) == 1
    assert rebuilt["data"] == SCORES_DATA
    assert rebuilt["metadata"]["version"] == 1
    assert health_after["status"] == "healthy"
    assert entry_file(server.root).exists()


def test_data_file_not_of_table_stays_unregistered(server: RunningServer) -> None:
    # recover() registers no such file, so it is no table: no entry is missing.
    folder = server.root / "features" / "shop"
    pq.write_table(pa.table({"foo": [1]}), folder / "foreign.parquet")
    (folder / "copy.parquet").write_bytes((folder / "other.parquet").read_bytes())

    with httpx.Client(base_url=server.base_url, timeout=60) as client:
        health = client.get("/health").json()
        pages = [client.get(f"/features/shop/{name}") for name in ("foreign", "copy")]
        deleted = [client.delete(f"/features/shop/{name}") for name in ("foreign", "copy")]

    assert health["status"] == "healthy"
    assert health["unavailable_tables"] == []
    assert [page.status_code for page in pages] == [404, 404]
    assert [response.status_code for response in deleted] == [404, 404]
    assert (folder / "foreign.parquet").exists()
    assert (folder / "copy.parquet").exists()


def test_first_write_in_progress_is_not_missing(server: RunningServer) -> None:
    store = FeatureStore(server.root)
    store.write("shop", "new", OTHER, definition=TableDefinition(["user_id"]))
    (server.root / "registry" / "shop" / "new.json").unlink()
    # A write holds the table's lock from renaming the data file to writing the entry.
    lock = filelock.FileLock(store.layout.lock_path("shop", "new"))

    with httpx.Client(base_url=server.base_url, timeout=60) as client:
        with lock:
            during = [client.get("/health").json(), client.get("/features/shop/new")]
        after = [client.get("/health").json(), client.get("/features/shop/new")]

    assert during[0]["unavailable_tables"] == []
    assert during[1].status_code == 404
    assert after[0]["unavailable_tables"] == ["shop/new"]
    assert after[1].status_code == 503
    assert after[1].json()["error"]["message"] == ENTRY_MESSAGE.replace("scores", "new")


def test_write_in_progress_keeps_health(server: RunningServer) -> None:
    store = FeatureStore(server.root)
    # The data file of another version than the entry's, as between a write's rename of the
    # data file and its registry update, while the write holds the table's lock.
    data_file(server).write_bytes(write_version_2(server.root))
    lock = filelock.FileLock(store.layout.lock_path("shop", "scores"))

    with httpx.Client(base_url=server.base_url, timeout=60) as client:
        with lock:
            during = client.get("/health").json()
        after = client.get("/health").json()

    assert during["status"] == "healthy"
    assert during["unavailable_tables"] == []
    assert after["status"] == "degraded"
    assert after["unavailable_tables"] == ["shop/scores"]


@pytest.mark.parametrize("link", ["data file", "group folder"])
def test_link_outside_features_is_503(server: RunningServer, tmp_path: Path, link: str) -> None:
    path = data_file(server)
    outside = tmp_path / "outside"
    outside.mkdir()
    # The target is an intact copy of the table's own file, which reads would accept.
    if link == "data file":
        target = outside / "scores.parquet"
        path.rename(target)
        path.symlink_to(target)
    else:
        target = outside / "shop" / "scores.parquet"
        (server.root / "features" / "shop").rename(outside / "shop")
        (server.root / "features" / "shop").symlink_to(outside / "shop")
    saved = target.read_bytes()
    records = {"records": [{"user_id": 3, "score": 1.0}], "mode": "append"}

    with httpx.Client(base_url=server.base_url, timeout=60) as client:
        responses = [send(client, method, url, body) for method, url, body in READS]
        health = client.get("/health").json()
        appended = client.post("/features/shop/scores", json=records)

    for response in responses:
        assert response.status_code == 503, (response.request.url, response.text)
        assert response.json()["error"]["code"] == "table_unavailable"
        assert response.json()["error"]["message"] == MESSAGE
    assert health["unavailable_tables"] == ["shop/other", "shop/scores"][link == "data file" :]
    assert appended.status_code == 503
    assert target.read_bytes() == saved
    line = (
        f"ERROR sqlstore.stablefiles [{server.process.pid}]: the data file {path} of "
        f"shop/scores resolves through a symbolic link to {target}, outside the store's "
        f"features folder {server.root / 'features'}, so its reads fail with 503"
    )
    assert server.log().count(line) == 1


def test_overwrite_replaces_link_outside_features(server: RunningServer, tmp_path: Path) -> None:
    path = data_file(server)
    target = tmp_path / "scores.parquet"
    path.rename(target)
    path.symlink_to(target)
    saved = target.read_bytes()
    records = {"records": [{"user_id": 3, "score": 1.0}], "mode": "overwrite"}

    with httpx.Client(base_url=server.base_url, timeout=60) as client:
        written = client.post("/features/shop/scores", json=records)
        page = client.get("/features/shop/scores").json()

    assert written.status_code == 200, written.text
    assert page["data"] == [{"user_id": 3, "score": 1.0}]
    assert not path.is_symlink()
    assert target.read_bytes() == saved


def test_link_inside_features_is_read(server: RunningServer) -> None:
    # The SQL sandbox reads a link whose target is inside the features folder, and so do
    # the other routes. The target here is a copy of the table's own file.
    path = data_file(server)
    archive = server.root / "features" / "archive"
    archive.mkdir()
    path.rename(archive / "scores.parquet")
    path.symlink_to(archive / "scores.parquet")

    with httpx.Client(base_url=server.base_url, timeout=60) as client:
        responses = [send(client, method, url, body) for method, url, body in READS]
        health = client.get("/health").json()

    assert [response.status_code for response in responses] == [200] * len(READS)
    assert responses[0].json()["data"] == SCORES_DATA
    assert responses[4].json()["results"][1]["values"] == [0.5]
    assert responses[5].json()["data"] == [{"n": 2, "total": 0.75}]
    assert health["status"] == "healthy"
