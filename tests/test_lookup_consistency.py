"""Entity lookups agree with the point-in-time join: POST /features/batch with a timestamp and
get_online_features return what get_historical_features gives for the same keys and time."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pyarrow as pa
import pytest
from conftest import RunningServer

from sqlstore.store import FeatureStore, TableDefinition

UTC_MICROSECONDS = pa.timestamp("us", tz="UTC")
USER_TABLES = ["user/user_preferences", "user/user_activity"]
# Users 270 and 213 rated in bursts, and user 99999 does not exist.
USER_IDS = [1, 270, 213, 15, 99999]
AS_OF_TIMES = ["2009-12-14T02:52:24Z", "2016-05-07T18:01:25Z", "2016-07-23T12:54:42Z"]
T0 = datetime(2024, 1, 1, tzinfo=UTC)


def historical_rows(
    store: FeatureStore, reference: str, keys: list[Any], as_of: datetime
) -> list[dict[str, Any] | None]:
    """Return each key's matched row from the point-in-time join, or None when it matched none.

    The row contains the columns a lookup returns: the key, the event timestamp and every other
    column but the created timestamp. Selecting the event timestamp also distinguishes a match
    whose features are all null from no match."""
    entry = next(e for e in store.list_tables() if e.reference == reference)
    key = entry.entity_key[0]
    excluded = {*entry.entity_key, entry.created_timestamp_column}
    columns = [c.name for c in entry.columns if c.name not in excluded]
    entities = pa.table(
        {key: keys, "event_timestamp": pa.array([as_of] * len(keys), UTC_MICROSECONDS)}
    )
    result = store.get_historical_features(
        entities, [f"{reference}:{','.join(columns)}"], full_feature_names=True
    )
    prefix = f"{entry.name}__"
    rows = []
    for row in result.to_pylist():
        features = {
            name[len(prefix) :]: value for name, value in row.items() if name.startswith(prefix)
        }
        matched = features[entry.timestamp_column] is not None
        rows.append({key: row[key], **features} if matched else None)
    return rows


def batch(server: RunningServer, features: list[str], ids: list[Any], timestamp: str) -> dict:
    response = httpx.post(
        f"{server.base_url}/features/batch",
        json={"feature_names": features, "entity_ids": ids, "timestamp": timestamp},
        timeout=60,
    )
    assert response.status_code == 200, response.text
    return response.json()


def decode_times(row: dict[str, Any], like: dict[str, Any]) -> dict[str, Any]:
    """Parse the JSON strings of `row` that are datetimes in `like`."""
    return {
        name: datetime.fromisoformat(value)
        if isinstance(like.get(name), datetime) and isinstance(value, str)
        else value
        for name, value in row.items()
    }


@pytest.mark.parametrize("timestamp", AS_OF_TIMES)
def test_batch_equals_historical_on_demo(
    demo_server: RunningServer, demo_root: Path, timestamp: str
) -> None:
    store = FeatureStore(demo_root)
    as_of = datetime.fromisoformat(timestamp)

    body = batch(demo_server, USER_TABLES, USER_IDS, timestamp)

    for reference in USER_TABLES:
        expected = historical_rows(store, reference, USER_IDS, as_of)
        found = [row for row in expected if row is not None]
        missing = [key for key, row in zip(USER_IDS, expected, strict=True) if row is None]
        returned = body["features"][reference]
        assert len(returned) == len(found), reference
        decoded = [decode_times(r, f) for r, f in zip(returned, found, strict=True)]
        assert decoded == found, reference
        assert body["metadata"]["not_found"][reference] == missing, reference


def test_online_equals_historical_now(demo_root: Path) -> None:
    store = FeatureStore(demo_root)

    online = store.get_online_features(USER_TABLES, USER_IDS)
    now = datetime.now(UTC)

    for reference in USER_TABLES:
        expected = [row for row in historical_rows(store, reference, USER_IDS, now) if row]
        assert online[reference].to_pylist() == expected, reference


@pytest.fixture
def expiring_root(tmp_path: Path) -> Path:
    """user/scores with a 60 s TTL, tied rows broken by created timestamp, and a row in the
    future of every as-of time below."""
    root = tmp_path / "store"
    table = pa.table(
        {
            "user_id": [1, 1, 1, 2, 3],
            "event_timestamp": pa.array(
                [
                    T0,
                    T0 + timedelta(seconds=100),
                    T0 + timedelta(seconds=100),
                    T0,
                    T0 + timedelta(days=10**5),
                ],
                UTC_MICROSECONDS,
            ),
            "created": pa.array(
                [T0, T0 + timedelta(seconds=300), T0 + timedelta(seconds=200), T0, T0],
                UTC_MICROSECONDS,
            ),
            "score": [1, 2, 3, 4, 5],
        }
    )
    definition = TableDefinition(
        entity_key=["user_id"], created_timestamp_column="created", ttl_seconds=60
    )
    FeatureStore(root).write("user", "scores", table, definition=definition)
    return root


# Seconds after T0: before every row, on the first rows, at the TTL edge, just past it, at
# the tied rows and at their TTL edge.
EDGE_SECONDS = [-1, 0, 60, 60.000001, 100, 160, 161]


def test_online_equals_historical_at_edges(expiring_root: Path) -> None:
    store = FeatureStore(expiring_root)

    for seconds in EDGE_SECONDS:
        as_of = T0 + timedelta(seconds=seconds)
        online = store.get_online_features(["user/scores"], [1, 2, 3], as_of)["user/scores"]
        expected = [row for row in historical_rows(store, "user/scores", [1, 2, 3], as_of) if row]
        assert online.to_pylist() == expected, seconds


def test_batch_equals_historical_at_edges(
    expiring_root: Path, server_factory: Callable[..., RunningServer]
) -> None:
    server = server_factory(expiring_root)
    store = FeatureStore(expiring_root)

    for seconds in EDGE_SECONDS:
        as_of = T0 + timedelta(seconds=seconds)
        body = batch(server, ["user/scores"], [1, 2, 3], as_of.isoformat())
        expected = [row for row in historical_rows(store, "user/scores", [1, 2, 3], as_of) if row]
        returned = body["features"]["user/scores"]
        assert len(returned) == len(expected), seconds
        decoded = [decode_times(r, e) for r, e in zip(returned, expected, strict=True)]
        assert decoded == expected, seconds


def test_lookup_edges_have_exact_values(expiring_root: Path) -> None:
    store = FeatureStore(expiring_root)

    def scores(seconds: float) -> dict[int, int]:
        as_of = T0 + timedelta(seconds=seconds)
        table = store.get_online_features(["user/scores"], [1, 2, 3], as_of)["user/scores"]
        users = table["user_id"].to_pylist()
        return dict(zip(users, table["score"].to_pylist(), strict=True))

    assert scores(-1) == {}
    assert scores(60) == {1: 1, 2: 4}
    assert scores(60.000001) == {}
    assert scores(160) == {1: 2}
    assert scores(161) == {}
