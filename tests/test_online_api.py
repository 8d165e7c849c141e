"""POST /get-online-features and GET /online on real servers: values and statuses, request
errors, writes seen by every worker, the memory budget and eager loading."""

from __future__ import annotations

import io
import itertools
import json
import random
import socket
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import RunningServer
from prometheus_client.parser import text_string_to_metric_families
from test_online import all_keys, point_in_time_rows

from sqlstore.client import FeatureStoreClient
from sqlstore.online import SCALAR_LOOKUP_LIMIT
from sqlstore.store import FeatureStore, TableDefinition

ENDPOINT = "/get-online-features"
USER_FEATURES = ["user/user_activity:ratings_total,last_rating_at", "user/user_preferences"]
MAX_ENTITIES_PER_REQUEST = 10_000


def post(base_url: str, body: Any, **options: Any) -> httpx.Response:
    # A new connection per request, so that a server with two workers spreads them.
    return httpx.post(base_url + ENDPOINT, json=body, timeout=60, **options)


def expected_results(
    store: FeatureStore, reference: str, keys: dict[str, list[Any]], now: datetime
) -> dict[str, dict[str, list[Any]]]:
    """Return the values, statuses and event timestamps the endpoint should give for every
    feature column of `reference`, from the point-in-time join at `now`."""
    entry = store.table(*reference.split("/"))
    rows = point_in_time_rows(store, reference, keys, now)
    excluded = {*entry.entity_key, entry.timestamp_column, entry.created_timestamp_column}
    results = {}
    for column in (c.name for c in entry.columns if c.name not in excluded):
        values = [None if row is None else row[column] for row in rows]
        statuses = [status_of(row, column) for row in rows]
        times = [
            None if row is None or not entry.timestamp_column else row[entry.timestamp_column]
            for row in rows
        ]
        results[f"{reference}:{column}"] = {
            "values": values,
            "statuses": statuses,
            "event_timestamps": times,
        }
    return results


def status_of(row: dict[str, Any] | None, column: str) -> str:
    if row is None:
        return "NOT_FOUND"
    if row[column] is None:
        return "NULL_VALUE"
    return "PRESENT"


def decoded(result: dict[str, list[Any]], like: list[Any]) -> list[Any]:
    """Return `result["values"]` with ISO strings parsed where `like` has datetimes."""
    return [
        datetime.fromisoformat(value) if isinstance(expected, datetime) and value else value
        for value, expected in zip(result["values"], like, strict=True)
    ]


def assert_same_results(
    returned: dict[str, dict[str, list[Any]]], expected: dict[str, dict[str, list[Any]]]
) -> None:
    """Check values, statuses and event timestamps of every expected feature name."""
    for name, result in expected.items():
        assert decoded(returned[name], result["values"]) == result["values"], name
        assert returned[name]["statuses"] == result["statuses"], name
        times = [t and datetime.fromisoformat(t) for t in returned[name]["event_timestamps"]]
        assert times == result["event_timestamps"], name


SINGLE_KEY_TABLES = [
    "content/movie_genres",
    "content/movie_ratings",
    "user/user_activity",
    "user/user_preferences",
]


@pytest.mark.parametrize("reference", SINGLE_KEY_TABLES)
def test_endpoint_equals_point_in_time(
    demo_server: RunningServer, demo_root: Path, reference: str
) -> None:
    store = FeatureStore(demo_root)
    keys = all_keys(store, reference)

    response = post(demo_server.base_url, {"entities": keys, "features": [reference]})
    now = datetime.now(UTC)
    expected = expected_results(store, reference, keys, now)

    assert response.status_code == 200, response.text
    body = response.json()
    names = body["metadata"]["feature_names"]
    assert names == [*keys, *expected]
    results = dict(zip(names, body["results"], strict=True))
    assert results[next(iter(keys))]["values"] == next(iter(keys.values()))
    assert_same_results(results, expected)


@pytest.mark.parametrize("reference", [*SINGLE_KEY_TABLES, "interaction/user_movie_interactions"])
def test_few_entities_equal_point_in_time(
    demo_server: RunningServer, demo_root: Path, reference: str
) -> None:
    # Requests of up to SCALAR_LOOKUP_LIMIT keys take a separate path in the server. These
    # send a seeded sample of keys, plus every key the table lacks, 1 to 9 keys at a time.
    store = FeatureStore(demo_root)
    keys = all_keys(store, reference)
    count = len(next(iter(keys.values())))
    chosen = sorted(random.Random(7).sample(range(count - 4), 40)) + list(range(count - 4, count))
    sample = {column: [values[i] for i in chosen] for column, values in keys.items()}
    expected = expected_results(store, reference, sample, datetime.now(UTC))

    returned: dict[str, dict[str, list[Any]]] = {name: {} for name in expected}
    start = 0
    for size in itertools.cycle(range(1, SCALAR_LOOKUP_LIMIT + 2)):
        if start >= len(chosen):
            break
        chunk = {column: values[start : start + size] for column, values in sample.items()}
        response = post(demo_server.base_url, {"entities": chunk, "features": [reference]})
        assert response.status_code == 200, response.text
        body = response.json()
        results = dict(zip(body["metadata"]["feature_names"], body["results"], strict=True))
        for name in expected:
            for field in ("values", "statuses", "event_timestamps"):
                returned[name].setdefault(field, []).extend(results[name][field])
        start += size

    assert_same_results(returned, expected)
    statuses = [status for result in expected.values() for status in result["statuses"]]
    assert "NOT_FOUND" in statuses


def test_composite_key_every_pair(demo_server: RunningServer, demo_root: Path) -> None:
    store = FeatureStore(demo_root)
    reference = "interaction/user_movie_interactions"
    keys = all_keys(store, reference)
    count = len(keys["user_id"])
    returned: list[Any] = []
    statuses: list[str] = []
    for start in range(0, count, MAX_ENTITIES_PER_REQUEST):
        chunk = {
            column: values[start : start + MAX_ENTITIES_PER_REQUEST]
            for column, values in keys.items()
        }
        response = post(
            demo_server.base_url, {"entities": chunk, "features": [f"{reference}:rating"]}
        )
        assert response.status_code == 200, response.text
        returned += response.json()["results"][2]["values"]
        statuses += response.json()["results"][2]["statuses"]

    expected = expected_results(store, reference, keys, datetime.now(UTC))[f"{reference}:rating"]

    assert returned == expected["values"]
    assert statuses == expected["statuses"]
    assert statuses.count("NOT_FOUND") == 4


def test_hand_computed_response(demo_server: RunningServer, raw_ratings: Any) -> None:
    # User 1's last rating in the source is the latest row of user/user_activity, whose
    # ratings_total counts the ratings strictly before that second.
    ratings = raw_ratings[raw_ratings["userId"] == 1]
    last = ratings["timestamp"].max()
    before = int((ratings["timestamp"] < last).sum())
    body = {"entities": {"user_id": [1, 0, 1]}, "features": ["user/user_activity:ratings_total"]}

    response = post(demo_server.base_url, body)

    assert response.status_code == 200, response.text
    result = response.json()["results"][1]
    assert result["values"] == [before, None, before]
    assert result["statuses"] == ["PRESENT", "NOT_FOUND", "PRESENT"]
    last_time = datetime.fromtimestamp(int(last), UTC)
    assert [t and datetime.fromisoformat(t) for t in result["event_timestamps"]] == [
        last_time,
        None,
        last_time,
    ]


def test_client_get_online_features(demo_client: FeatureStoreClient) -> None:
    frame = demo_client.get_online_features(
        ["content/movie_genres:title,year"], {"movie_id": [1, 0]}, as_frame=True
    )

    assert list(frame.columns) == [
        "movie_id",
        "content/movie_genres:title",
        "content/movie_genres:year",
    ]
    assert frame["content/movie_genres:title"][0] == "Toy Story"
    assert frame["content/movie_genres:title"].isna().tolist() == [False, True]
    assert frame["movie_id"].tolist() == [1, 0]


def test_features_listed_in_request_order(demo_server: RunningServer) -> None:
    features = [
        "user/user_preferences:top_genre",
        "user/user_activity:ratings_total",
        "user/user_preferences:rating_mean,top_genre",
        "user/user_activity:ratings_total",
    ]
    body = {"entities": {"user_id": [1]}, "features": features}

    response = post(demo_server.base_url, body)

    assert response.status_code == 200, response.text
    assert response.json()["metadata"]["feature_names"] == [
        "user_id",
        "user/user_preferences:top_genre",
        "user/user_activity:ratings_total",
        "user/user_preferences:rating_mean",
    ]
    values = [result["values"] for result in response.json()["results"]]
    reversed_body = {"entities": {"user_id": [1]}, "features": features[::-1]}
    reversed_values = [
        r["values"] for r in post(demo_server.base_url, reversed_body).json()["results"]
    ]
    assert reversed_values == [values[0], values[2], values[3], values[1]]


def test_batch_without_timestamp_from_view(demo_server: RunningServer, demo_root: Path) -> None:
    store = FeatureStore(demo_root)
    ids = [1, 270, 213, 15, 99999, 1]
    body = {"feature_names": ["user/user_activity"], "entity_ids": ids}

    response = httpx.post(demo_server.base_url + "/features/batch", json=body, timeout=60)
    now = datetime.now(UTC)
    expected = point_in_time_rows(store, "user/user_activity", {"user_id": ids[:5]}, now)

    assert response.status_code == 200, response.text
    rows = response.json()["features"]["user/user_activity"]
    found = [row for row in expected if row is not None]
    assert len(rows) == len(found)
    for row, want in zip(rows, found, strict=True):
        for name, value in want.items():
            got = row[name]
            assert (datetime.fromisoformat(got) if isinstance(value, datetime) else got) == value
    assert response.json()["metadata"]["not_found"]["user/user_activity"] == [99999]


# Table responses

CSV = "text/csv"
PARQUET = "application/vnd.apache.parquet"
ARROW = "application/vnd.apache.arrow.stream"
ACTIVITY = "user/user_activity"


def read_table(response: httpx.Response, media_type: str) -> pa.Table:
    if media_type == PARQUET:
        return pq.read_table(io.BytesIO(response.content))
    return pa.ipc.open_stream(response.content).read_all()


def stored_type(root: Path, reference: str, column: str) -> pa.DataType:
    return pq.read_schema(root / "features" / f"{reference}.parquet").field(column).type


def ratings_totals(root: Path, user_ids: list[int]) -> list[int | None]:
    rows = point_in_time_rows(
        FeatureStore(root), ACTIVITY, {"user_id": user_ids}, datetime.now(UTC)
    )
    return [None if row is None else row["ratings_total"] for row in rows]


@pytest.mark.parametrize("media_type", [PARQUET, ARROW])
def test_table_entity_column_has_key_type(
    demo_server: RunningServer, demo_root: Path, media_type: str
) -> None:
    body = {
        "entities": {"user_id": ["7", 15, "0015", 9999]},
        "features": [f"{ACTIVITY}:ratings_total"],
    }

    response = post(demo_server.base_url, body, headers={"Accept": media_type})

    assert response.status_code == 200, response.text
    table = read_table(response, media_type)
    key_type = stored_type(demo_root, ACTIVITY, "user_id")
    assert key_type == pa.uint16()
    assert table.schema.field("user_id").type == key_type
    assert table.column("user_id").to_pylist() == [7, 15, 15, 9999]
    assert table.column(f"{ACTIVITY}:ratings_total").to_pylist() == ratings_totals(
        demo_root, [7, 15, 15, 9999]
    )


def test_table_csv_entity_column_canonical(demo_server: RunningServer, demo_root: Path) -> None:
    body = {
        "entities": {"user_id": ["7", "+15", "0015", 9999]},
        "features": [f"{ACTIVITY}:ratings_total"],
    }

    response = post(demo_server.base_url, body, headers={"Accept": CSV})

    assert response.status_code == 200, response.text
    seven, fifteen, _, _ = ratings_totals(demo_root, [7, 15, 15, 9999])
    assert response.text.splitlines() == [
        f'"user_id","{ACTIVITY}:ratings_total"',
        f"7,{seven}",
        f"15,{fifteen}",
        f"15,{fifteen}",
        "9999,",
    ]


def test_table_composite_key_types(
    demo_server: RunningServer, demo_root: Path, raw_ratings: Any
) -> None:
    reference = "interaction/user_movie_interactions"
    body = {"entities": {"user_id": ["1"], "movie_id": ["31"]}, "features": [f"{reference}:rating"]}

    response = post(demo_server.base_url, body, headers={"Accept": ARROW})

    assert response.status_code == 200, response.text
    table = read_table(response, ARROW)
    assert table.schema.field("user_id").type == stored_type(demo_root, reference, "user_id")
    assert table.schema.field("movie_id").type == stored_type(demo_root, reference, "movie_id")
    assert table.schema.field("movie_id").type == pa.uint32()
    assert table.column("user_id").to_pylist() == [1]
    assert table.column("movie_id").to_pylist() == [31]
    rated = raw_ratings[(raw_ratings["userId"] == 1) & (raw_ratings["movieId"] == 31)]
    assert table.column(f"{reference}:rating").to_pylist() == rated["rating"].tolist()


@pytest.mark.parametrize("media_type", [CSV, PARQUET, ARROW])
def test_table_id_outside_key_type_is_400(demo_server: RunningServer, media_type: str) -> None:
    body = {"entities": {"user_id": [1, -1]}, "features": [f"{ACTIVITY}:ratings_total"]}

    response = post(demo_server.base_url, body, headers={"Accept": media_type})

    assert response.status_code == 400, response.text
    assert response.json()["error"]["message"] == (
        "invalid value -1 at entities.user_id[1]: the key column user_id is uint16, which "
        "cannot hold it, so no row has this key and a table response cannot carry it; remove "
        "it, or request JSON, which reports it NOT_FOUND"
    )


def test_json_id_outside_key_type_not_found(demo_server: RunningServer) -> None:
    body = {"entities": {"user_id": [-1, "7"]}, "features": [f"{ACTIVITY}:ratings_total"]}

    response = post(demo_server.base_url, body)

    assert response.status_code == 200, response.text
    entity, feature = response.json()["results"]
    assert entity["values"] == [-1, "7"]
    assert feature["statuses"] == ["NOT_FOUND", "PRESENT"]


def test_table_key_types_of_two_tables(scratch_server: RunningServer) -> None:
    store = FeatureStore(scratch_server.root)
    definition = TableDefinition(entity_key=["k"])
    store.write(
        "keys", "narrow", pa.table({"k": [1, 2], "a": ["one", "two"]}), definition=definition
    )
    store.write(
        "keys", "wide", pa.table({"k": [1, 70_000], "b": [1.5, 7.0]}), definition=definition
    )
    body = {"entities": {"k": [70_000, "1", 2]}, "features": ["keys/narrow:a", "keys/wide:b"]}

    response = post(scratch_server.base_url, body, headers={"Accept": ARROW})

    assert response.status_code == 200, response.text
    table = read_table(response, ARROW)
    assert stored_type(scratch_server.root, "keys/narrow", "k") == pa.uint8()
    assert stored_type(scratch_server.root, "keys/wide", "k") == pa.uint32()
    assert table.schema.field("k").type == pa.uint32()
    assert table.column("k").to_pylist() == [70_000, 1, 2]
    assert table.column("keys/narrow:a").to_pylist() == [None, "one", "two"]
    assert table.column("keys/wide:b").to_pylist() == [7.0, 1.5, None]


# Request errors


def assert_error(response: httpx.Response, status: int, *fragments: str) -> None:
    assert response.status_code == status, response.text
    message = response.json()["error"]["message"]
    for fragment in fragments:
        assert fragment in message, message


ERROR_CASES = [
    ({"entities": {"user_id": [1]}}, 400, ["features"]),
    ({"entities": {"user_id": [1]}, "features": []}, 400, ["features"]),
    ({"entities": {"user_id": [1]}, "features": [3]}, 400, ["3"]),
    ({"features": USER_FEATURES}, 400, ["entities"]),
    ({"entities": [1], "features": USER_FEATURES}, 400, ["entities"]),
    ({"entities": {"user_id": 1}, "features": USER_FEATURES}, 400, ["entities.user_id"]),
    ({"entities": {"user_id": [True]}, "features": USER_FEATURES}, 400, ["entities.user_id[0]"]),
    ({"entities": {"user_id": [1.5]}, "features": USER_FEATURES}, 400, ["entities.user_id[0]"]),
    ({"entities": {"user_id": [None]}, "features": USER_FEATURES}, 400, ["null"]),
    ({"entities": {"user_id": ["abc"]}, "features": USER_FEATURES}, 400, ['"abc"', "user_id"]),
    ({"entities": {"user_id": [2**63]}, "features": USER_FEATURES}, 400, ["user_id"]),
    ({"entities": {"user_id": [10**23]}, "features": USER_FEATURES}, 400, ["64 bits"]),
    ({"entities": {"movie_id": [1]}, "features": USER_FEATURES}, 400, ["'user_id'"]),
    (
        {"entities": {"user_id": [1], "movie_id": [1, 2]}, "features": USER_FEATURES},
        400,
        ["differ in length"],
    ),
    (
        {"entities": {"user_id": [1], "movie_id": [1]}, "features": USER_FEATURES},
        400,
        ["movie_id"],
    ),
    ({"entities": {"user_id": [1]}, "features": USER_FEATURES, "as_of": 1}, 400, ["as_of"]),
    ({"entities": {"user_id": [1]}, "features": ["user/no_such_table"]}, 404, ["no_such_table"]),
    ({"entities": {"user_id": [1]}, "features": ["user/user_activity:budget"]}, 400, ["budget"]),
    ({"entities": {"user_id": [1]}, "features": ["User/x"]}, 400, ["User"]),
    ({"entities": {"user_id": [1]}, "features": ["../x/y"]}, 400, [".."]),
    ([1, 2], 400, ["JSON object"]),
]


@pytest.mark.parametrize(("body", "status", "fragments"), ERROR_CASES)
def test_request_errors(
    demo_server: RunningServer, body: Any, status: int, fragments: list[str]
) -> None:
    assert_error(post(demo_server.base_url, body), status, *fragments)


def test_invalid_json_body(demo_server: RunningServer) -> None:
    response = httpx.post(
        demo_server.base_url + ENDPOINT,
        content=b'{"entities": ',
        headers={"Content-Type": "application/json"},
    )

    assert_error(response, 400, "invalid JSON")


def test_wrong_content_type(demo_server: RunningServer) -> None:
    response = httpx.post(
        demo_server.base_url + ENDPOINT, content=b"{}", headers={"Content-Type": "text/plain"}
    )

    assert_error(response, 415, "text/plain")


def test_too_many_entities(demo_server: RunningServer) -> None:
    ids = list(range(MAX_ENTITIES_PER_REQUEST + 1))
    body = {"entities": {"user_id": ids}, "features": USER_FEATURES}

    assert_error(post(demo_server.base_url, body), 413, str(len(ids)))


def test_no_traceback_in_log(demo_server: RunningServer) -> None:
    post(demo_server.base_url, {"entities": {"user_id": [[1]]}, "features": USER_FEATURES})

    assert "Traceback" not in demo_server.log()


# Freshness across workers, memory budget, loading


def write_scores(base_url: str, score: int) -> None:
    records = [
        {"user_id": 1, "event_timestamp": "2024-01-01T00:00:00Z", "score": score},
        {"user_id": 2, "event_timestamp": "2024-01-01T00:00:00Z", "score": None},
    ]
    response = httpx.post(
        f"{base_url}/features/live/scores",
        json={"records": records, "entity_key": "user_id"},
        timeout=60,
    )
    assert response.status_code == 200, response.text


def read_scores(base_url: str) -> dict[str, Any]:
    body = {"entities": {"user_id": [1, 2, 3]}, "features": ["live/scores:score"]}
    response = post(base_url, body)
    assert response.status_code == 200, response.text
    return response.json()["results"][1]


def test_write_seen_by_other_worker(server_factory: Callable[..., RunningServer]) -> None:
    server = server_factory(workers=2)
    write_scores(server.base_url, 0)
    # Load the view in both workers, so that each contains version 1 before the writes.
    loaded_pids: set[int] = set()
    for _ in range(200):
        read_scores(server.base_url)
        state = httpx.get(server.base_url + "/online", timeout=60).json()
        if state["views"]:
            loaded_pids.add(state["worker_pid"])
        if len(loaded_pids) == 2:
            break
    assert len(loaded_pids) == 2

    for score in range(1, 21):
        write_scores(server.base_url, score)
        result = read_scores(server.base_url)
        assert result["values"] == [score, None, None], score
        assert result["statuses"] == ["PRESENT", "NULL_VALUE", "NOT_FOUND"], score


def test_over_budget_served_by_duckdb(server_factory: Callable[..., RunningServer]) -> None:
    server = server_factory(SQLSTORE_ONLINE_MEMORY_BYTES="1")
    write_scores(server.base_url, 7)

    result = read_scores(server.base_url)
    state = httpx.get(server.base_url + "/online", timeout=60).json()

    assert result["values"] == [7, None, None]
    assert result["statuses"] == ["PRESENT", "NULL_VALUE", "NOT_FOUND"]
    [view] = state["views"]
    assert view["state"] == "over_budget"
    assert view["served_by"] == "duckdb"
    assert view["budget_bytes"] == 1
    assert view["needed_bytes"] > 1
    assert state["memory_used_bytes"] == 0
    assert "online view of live/scores needs" in server.log()


def test_disabled_views_give_same_values(server_factory: Callable[..., RunningServer]) -> None:
    server = server_factory(SQLSTORE_ONLINE_ENABLED="false")
    write_scores(server.base_url, 5)

    result = read_scores(server.base_url)
    state = httpx.get(server.base_url + "/online", timeout=60).json()

    assert result["values"] == [5, None, None]
    assert result["statuses"] == ["PRESENT", "NULL_VALUE", "NOT_FOUND"]
    assert state["enabled"] is False
    assert state["views"] == []


def test_expired_value_status(tmp_path: Path, server_factory: Callable[..., RunningServer]) -> None:
    now = datetime.now(UTC).replace(microsecond=0)
    table = pa.table(
        {
            "user_id": [1, 2],
            "event_timestamp": pa.array(
                [now - timedelta(hours=2), now - timedelta(minutes=1)], pa.timestamp("us", tz="UTC")
            ),
            "score": [10, 20],
        }
    )
    FeatureStore(tmp_path / "ttl").write(
        "live",
        "scores",
        table,
        definition=TableDefinition(ttl_seconds=3600, entity_key=["user_id"]),
    )
    server = server_factory(tmp_path / "ttl")

    result = read_scores(server.base_url)
    batch = httpx.post(
        server.base_url + "/features/batch",
        json={"feature_names": ["live/scores"], "entity_ids": [1, 2]},
        timeout=60,
    ).json()

    assert result["values"] == [None, 20, None]
    assert result["statuses"] == ["OUTSIDE_MAX_AGE", "PRESENT", "NOT_FOUND"]
    assert [row["score"] for row in batch["features"]["live/scores"]] == [20]
    assert batch["metadata"]["not_found"]["live/scores"] == [1]


def test_eager_load_builds_views(
    demo_root: Path, server_factory: Callable[..., RunningServer]
) -> None:
    server = server_factory(demo_root, SQLSTORE_ONLINE_LOAD="eager")

    state = httpx.get(server.base_url + "/online", timeout=60).json()

    assert len(state["views"]) == 6
    assert {view["state"] for view in state["views"]} == {"loaded"}
    assert state["memory_used_bytes"] == sum(view["memory_bytes"] for view in state["views"])


def test_deleted_table_drops_view(scratch_server: RunningServer) -> None:
    write_scores(scratch_server.base_url, 3)
    read_scores(scratch_server.base_url)
    deleted = httpx.delete(f"{scratch_server.base_url}/features/live/scores", timeout=60)

    body = {"entities": {"user_id": [1]}, "features": ["live/scores:score"]}
    response = post(scratch_server.base_url, body)
    state = httpx.get(scratch_server.base_url + "/online", timeout=60).json()

    assert deleted.status_code == 200, deleted.text
    assert_error(response, 404, "live/scores")
    assert state["views"] == []
    assert state["memory_used_bytes"] == 0


def route_requests(metrics_text: str, route: str, status: str) -> float:
    """Return the request count of one route and status from a /metrics text."""
    total = 0.0
    for family in text_string_to_metric_families(metrics_text):
        for sample in family.samples:
            labels = sample.labels
            if (
                sample.name == "sqlstore_requests_total"
                and labels.get("route") == route
                and labels.get("status") == status
            ):
                total += sample.value
    return total


def test_lookups_counted_under_their_route(demo_server: RunningServer) -> None:
    body = {"entities": {"user_id": [1]}, "features": ["user/user_activity"]}
    with httpx.Client(base_url=demo_server.base_url, timeout=60) as client:
        before = client.get("/metrics").text
        ok = [client.post(ENDPOINT, json=body) for _ in range(3)]
        bad = client.post(ENDPOINT, json={"entities": {}, "features": []})
        after = client.get("/metrics").text

    assert [response.status_code for response in ok] == [200, 200, 200]
    assert bad.status_code == 400
    for status, count in (("200", 3), ("400", 1)):
        difference = route_requests(after, ENDPOINT, status) - route_requests(
            before, ENDPOINT, status
        )
        assert difference == count


def test_client_gone_mid_body_not_served(demo_server: RunningServer) -> None:
    # The client sends a whole lookup but announces 20 bytes more, then stops sending, so the
    # server must abandon the request instead of serving it as if the body had ended.
    body = json.dumps({"entities": {"user_id": [1]}, "features": USER_FEATURES}).encode()
    host, port = demo_server.base_url.removeprefix("http://").split(":")
    head = (
        f"POST {ENDPOINT} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body) + 20}\r\nX-Request-ID: gone-mid-body\r\n\r\n"
    )
    with socket.create_connection((host, int(port)), timeout=10) as connection:
        connection.sendall(head.encode() + body)
        connection.shutdown(socket.SHUT_WR)
        reply = connection.recv(65536)

    deadline = time.monotonic() + 10
    lines: list[str] = []
    while time.monotonic() < deadline and not lines:
        lines = [line for line in demo_server.log().splitlines() if "gone-mid-body" in line]
        time.sleep(0.1)
    assert reply == b""
    assert lines
    assert not any(" 200 " in line for line in lines)


def test_long_reference_is_cut_in_the_message(demo_server: RunningServer) -> None:
    # The message quotes the client's text; a 200,000-character column name must not come back
    # (or go to the log) in full.
    column = "y" * 200_000
    body = {"entities": {"user_id": [1]}, "features": [f"user/user_activity:{column}"]}

    response = post(demo_server.base_url, body)

    assert response.status_code == 400
    message = response.json()["error"]["message"]
    assert len(message) < 2_100
    assert message.endswith("more characters)")
    assert column not in demo_server.log_containing(message[:60])
