"""A table whose Parquet file was removed or cut short outside sqlstore: every read route
returns 503 `table_unavailable` naming the table, other tables keep working, and the table is
served again once the file is restored, without a restart."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pyarrow as pa
import pytest
from conftest import RunningServer, start_server, stop_server

from sqlstore.store import FeatureStore, TableDefinition

SCORES = pa.table({"user_id": [1, 2], "score": [0.5, 0.25]})
OTHER = pa.table({"user_id": [1], "city": ["Oslo"]})
MESSAGE = (
    "table shop/scores cannot be read: its data file is missing or is not valid Parquet "
    "(the server log has the cause); an operator can restore the file or write the table again"
)
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
    ("POST", "/sql", {"sql": "SELECT count(*) AS n FROM shop.scores"}),
    (
        "POST",
        "/training-set",
        {
            "entities": [{"user_id": 1, "event_timestamp": "2030-01-01T00:00:00Z"}],
            "features": ["shop/scores"],
        },
    ),
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


def send(client: httpx.Client, method: str, path: str, body: object) -> httpx.Response:
    return client.request(method, path, json=body)


@pytest.mark.parametrize("damage", ["remove", "truncate"])
def test_damaged_file_is_503(server: RunningServer, damage: str) -> None:
    path = data_file(server)
    saved = path.read_bytes()
    if damage == "remove":
        path.unlink()
    else:
        path.write_bytes(saved[:100])

    with httpx.Client(base_url=server.base_url, timeout=60) as client:
        responses = [send(client, method, url, body) for method, url, body in READS]
        other = client.get("/features/shop/other").json()["data"]
        path.write_bytes(saved)
        restored = [send(client, method, url, body) for method, url, body in READS]

    for (method, url, _), response in zip(READS, responses, strict=True):
        assert response.status_code == 503, (method, url, response.text)
        assert response.json()["error"]["code"] == "table_unavailable", (method, url)
        assert response.json()["error"]["message"] == MESSAGE, (method, url)
    assert other == [{"user_id": 1, "city": "Oslo"}]
    assert [response.status_code for response in restored] == [200] * len(READS)
    assert restored[0].json()["data"] == [
        {"user_id": 1, "score": 0.5},
        {"user_id": 2, "score": 0.25},
    ]
    assert restored[5].json()["data"] == [{"n": 2}]
    assert "is missing or damaged" in server.log() or "could not be created" in server.log()
