"""The result cache on real servers: X-Cache, freshness after writes across worker processes,
invalidation, statistics summed over workers, metrics, corrupt disk entries and settings.

Most tests share one two-worker server. A client that keeps its connection alive talks to one
worker. The `fresh` client opens a new connection per request, so the kernel spreads those
requests over both workers. A repeated request served by the worker that computed it is
`hit-memory`, and by the other worker `hit-disk`.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from conftest import (
    RunningServer,
    start_server,
    stop_server,
)
from prometheus_client.parser import text_string_to_metric_families

TIMESTAMP = "2024-01-01T00:00:00Z"
PAGE_ROUTE = "/features/{group}/{name}"
# One SQL worker process per server instead of two: these tests run few queries, and each
# process adds to the server's start time.
ONE_SQL_WORKER = {"SQLSTORE_SQL_WORKERS": "1"}
NAMED_QUERY = """\
-- title: Values at or above a threshold
-- param: minimum INTEGER | Smallest value returned
SELECT entity_id, v FROM sqlg.named WHERE v >= $minimum ORDER BY entity_id
"""
TRAINING_DEFINITION = """\
title = "Values of the named spine"
entity_sql = "SELECT entity_id, event_timestamp FROM train.named_spine WHERE entity_id >= {low}"
features = ["train/named_values:v"]
"""
Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def records(values: list[Any], **columns: Any) -> list[dict[str, Any]]:
    """Return one row per value: entity ids 1, 2, ..., a fixed event time, `v` and `columns`."""
    return [
        {"entity_id": index + 1, "event_timestamp": TIMESTAMP, "v": value, **columns}
        for index, value in enumerate(values)
    ]


def write(client: httpx.Client, table: str, rows: list[dict[str, Any]], **fields: Any) -> None:
    response = client.post(f"/features/{table}", json={"records": rows, **fields})
    assert response.status_code == 200, response.text


def values_of(response: httpx.Response) -> list[Any]:
    return [row["v"] for row in response.json()["data"]]


# Tables the two-worker statistics test may read at most.
STATS_TABLES = 40


def fresh_client(server: RunningServer) -> httpx.Client:
    """Return a client that opens a new connection for every request."""
    limits = httpx.Limits(max_keepalive_connections=0)
    return httpx.Client(base_url=server.base_url, limits=limits, timeout=30)


def stats(client: httpx.Client) -> dict[str, Any]:
    response = client.get("/cache/stats")
    assert response.status_code == 200
    return response.json()


def metric_samples(client: httpx.Client) -> Samples:
    """Return every sample of /metrics by name and labels."""
    response = client.get("/metrics")
    assert response.status_code == 200
    samples: Samples = {}
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            samples[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return samples


def labels(**pairs: str) -> frozenset[tuple[str, str]]:
    return frozenset(pairs.items())


@pytest.fixture(scope="module")
def queries_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    queries = tmp_path_factory.mktemp("queries")
    (queries / "values_above.sql").write_text(NAMED_QUERY)
    (queries / "training_sets").mkdir()
    definition = TRAINING_DEFINITION.format(low=1)
    (queries / "training_sets" / "named_spine.toml").write_text(definition)
    return queries


@pytest.fixture(scope="module")
def shared_server(
    tmp_path_factory: pytest.TempPathFactory, queries_dir: Path
) -> Iterator[RunningServer]:
    """A two-worker server on an empty store, with a queries folder of its own."""
    folder = tmp_path_factory.mktemp("cache_api")
    queries = queries_dir
    environment = {"SQLSTORE_QUERIES_DIR": str(queries), **ONE_SQL_WORKER}
    server = start_server(folder / "store", folder / "server.log", workers=2, env=environment)
    yield server
    stop_server(server)


@pytest.fixture
def client(shared_server: RunningServer) -> Iterator[httpx.Client]:
    """A client on one kept-alive connection, so on one worker."""
    with httpx.Client(base_url=shared_server.base_url, timeout=30) as session:
        yield session


@pytest.fixture
def fresh(shared_server: RunningServer) -> Iterator[httpx.Client]:
    with fresh_client(shared_server) as session:
        yield session


# Freshness and X-Cache across two workers


def test_write_then_read_fresh(fresh: httpx.Client) -> None:
    write(fresh, "fresh/t", records([-1]))
    disk_items = stats(fresh)["tiers"]["disk"]["total_items"]
    repeats = []
    for iteration in range(200):
        write(fresh, "fresh/t", records([iteration, iteration * 2]))

        first = fresh.get("/features/fresh/t")
        assert first.status_code == 200
        assert first.headers["X-Cache"] == "miss", f"iteration {iteration}"
        assert values_of(first) == [iteration, iteration * 2], f"iteration {iteration}"

        second = fresh.get("/features/fresh/t")
        assert second.headers["X-Cache"] in ("hit-memory", "hit-disk"), f"iteration {iteration}"
        assert values_of(second) == [iteration, iteration * 2], f"iteration {iteration}"
        repeats.append(second.headers["X-Cache"])

    # Both workers served repeats: the computing one from memory, the other from disk.
    assert "hit-memory" in repeats
    assert "hit-disk" in repeats
    # Each write reclaimed the entry of the version before it.
    assert stats(fresh)["tiers"]["disk"]["total_items"] == disk_items + 1


def test_sequence_miss_then_memory(client: httpx.Client) -> None:
    write(client, "sequence/t", records([1, 2, 3]))
    outcomes = [client.get("/features/sequence/t").headers["X-Cache"] for _ in range(3)]
    assert outcomes == ["miss", "hit-memory", "hit-memory"]


def test_other_worker_hits_disk(client: httpx.Client, fresh: httpx.Client) -> None:
    write(client, "other/t", records([5]))
    assert client.get("/features/other/t").headers["X-Cache"] == "miss"

    outcomes = []
    for _ in range(40):
        response = fresh.get("/features/other/t")
        assert values_of(response) == [5]
        outcomes.append(response.headers["X-Cache"])
        if response.headers["X-Cache"] == "hit-disk":
            break
    assert outcomes[-1] == "hit-disk"
    assert set(outcomes) <= {"hit-memory", "hit-disk"}


def test_page_parameters_separate_entries(client: httpx.Client) -> None:
    write(client, "params/t", records([1, 2, 3]))
    assert client.get("/features/params/t?limit=2").headers["X-Cache"] == "miss"
    assert client.get("/features/params/t?limit=1").headers["X-Cache"] == "miss"
    assert client.get("/features/params/t?v__gte=2").headers["X-Cache"] == "miss"
    csv = client.get("/features/params/t?limit=2", headers={"Accept": "text/csv"})
    assert csv.headers["X-Cache"] == "miss"
    assert csv.headers["content-type"].startswith("text/csv")

    again = client.get("/features/params/t?limit=2")
    assert again.headers["X-Cache"] == "hit-memory"
    assert values_of(again) == [1, 2]
    csv_again = client.get("/features/params/t?limit=2", headers={"Accept": "text/csv"})
    assert csv_again.headers["X-Cache"] == "hit-memory"
    assert csv_again.content == csv.content


def test_delete_table_then_recreate(client: httpx.Client) -> None:
    write(client, "recreate/t", records([1]))
    assert client.get("/features/recreate/t").headers["X-Cache"] == "miss"
    disk_items = stats(client)["tiers"]["disk"]["total_items"]
    assert client.delete("/features/recreate/t").status_code == 200
    assert stats(client)["tiers"]["disk"]["total_items"] == disk_items - 1
    assert client.get("/features/recreate/t").status_code == 404

    write(client, "recreate/t", records([2]))
    response = client.get("/features/recreate/t")
    assert response.headers["X-Cache"] == "miss"
    assert values_of(response) == [2]


# Statistics and invalidation


def test_stats_sum_both_workers(fresh: httpx.Client) -> None:
    # Each request opens a new connection, and the kernel picks the worker that accepts it. A
    # busy machine can favour one worker for many connections in a row, so tables are read
    # until repeats have reached both the worker that cached a page and the other one.
    for index in range(STATS_TABLES):
        write(fresh, f"stats/t{index}", records([index]))
    before = stats(fresh)

    repeats: list[str] = []
    for index in range(STATS_TABLES):
        assert fresh.get(f"/features/stats/t{index}").headers["X-Cache"] == "miss"
        repeats.append(fresh.get(f"/features/stats/t{index}").headers["X-Cache"])
        if len(repeats) >= 12 and {"hit-memory", "hit-disk"} <= set(repeats):
            break
    after = stats(fresh)

    tables = len(repeats)
    memory_hits = repeats.count("hit-memory")
    disk_hits = repeats.count("hit-disk")
    assert memory_hits + disk_hits == tables
    assert memory_hits > 0
    assert disk_hits > 0

    def delta(section: dict[str, Any], old: dict[str, Any], name: str) -> int:
        return section[name] - old[name]

    memory, old_memory = after["tiers"]["memory"], before["tiers"]["memory"]
    disk, old_disk = after["tiers"]["disk"], before["tiers"]["disk"]
    assert delta(memory, old_memory, "cache_hits") == memory_hits
    assert delta(memory, old_memory, "cache_misses") == tables + disk_hits
    assert delta(memory, old_memory, "total_requests") == 2 * tables
    assert delta(disk, old_disk, "cache_hits") == disk_hits
    assert delta(disk, old_disk, "cache_misses") == tables
    assert delta(disk, old_disk, "total_items") == tables
    assert delta(after["total"], before["total"], "cache_hits") == tables
    assert delta(after["total"], before["total"], "cache_misses") == tables
    assert delta(after["total"], before["total"], "total_requests") == 2 * tables


def test_stats_fields_present(client: httpx.Client) -> None:
    body = stats(client)
    fields = {
        "total_items",
        "max_size",
        "expired_items",
        "cache_usage_ratio",
        "average_age_seconds",
        "cache_hits",
        "cache_misses",
        "hit_rate",
        "total_requests",
        "bytes_used",
        "evictions",
    }
    assert body["enabled"] is True
    assert fields - set(body["tiers"]["memory"]) == set()
    assert fields - set(body["tiers"]["disk"]) == set()
    assert fields - set(body["total"]) == set()


def test_stats_rates_consistent(client: httpx.Client) -> None:
    write(client, "rates/t", records([1]))
    for _ in range(3):
        client.get("/features/rates/t")
    body = stats(client)
    for section in (body["tiers"]["memory"], body["tiers"]["disk"], body["total"]):
        assert section["total_requests"] == section["cache_hits"] + section["cache_misses"]
        assert section["hit_rate"] == pytest.approx(
            section["cache_hits"] / section["total_requests"]
        )
    memory = body["tiers"]["memory"]
    assert memory["max_size"] == 2 * 1024
    assert 0 < memory["cache_usage_ratio"] <= 1
    assert memory["cache_usage_ratio"] == pytest.approx(memory["total_items"] / memory["max_size"])


def test_clear_cache_empties(client: httpx.Client, fresh: httpx.Client) -> None:
    write(client, "clear/t", records([1]))
    assert client.get("/features/clear/t").headers["X-Cache"] == "miss"
    # Read until the other worker has served it, so both workers hold it in memory.
    outcomes = [fresh.get("/features/clear/t").headers["X-Cache"] for _ in range(40)]
    assert "hit-disk" in outcomes
    assert stats(client)["tiers"]["disk"]["total_items"] > 0

    response = client.delete("/cache")
    assert response.status_code == 200
    assert stats(client)["tiers"]["disk"]["total_items"] == 0
    for _ in range(2):
        response = fresh.get("/features/clear/t")
        assert response.headers["X-Cache"] == "miss"
        assert values_of(response) == [1]
        assert client.delete("/cache").status_code == 200


def test_invalidate_one_table(client: httpx.Client) -> None:
    write(client, "inval/a", records([1]))
    write(client, "inval/b", records([2]))
    for table in ("a", "b"):
        assert client.get(f"/features/inval/{table}").headers["X-Cache"] == "miss"
    disk_items = stats(client)["tiers"]["disk"]["total_items"]

    response = client.delete("/cache/inval/a")
    assert response.status_code == 200
    assert stats(client)["tiers"]["disk"]["total_items"] == disk_items - 1
    assert client.get("/features/inval/a").headers["X-Cache"] == "miss"
    assert client.get("/features/inval/b").headers["X-Cache"] == "hit-memory"


def test_invalidate_unknown_table(client: httpx.Client) -> None:
    response = client.delete("/cache/inval/absent")
    assert response.status_code == 404
    assert response.json()["error"]["code"] == "not_found"


# SQL and named queries


def test_sql_second_identical_hit(client: httpx.Client) -> None:
    write(client, "sqlg/t", records([3, 1, 2]))
    query = "SELECT v FROM sqlg.t ORDER BY v"
    first = client.post("/sql", json={"sql": query})
    assert first.status_code == 200
    assert first.headers["X-Cache"] == "miss"
    assert first.json()["metadata"]["cached"] is False
    assert values_of(first) == [1, 2, 3]

    second = client.post("/sql", json={"sql": query})
    assert second.headers["X-Cache"] == "hit-memory"
    assert second.json()["metadata"]["cached"] is True
    assert second.json()["data"] == first.json()["data"]


@pytest.mark.parametrize(
    "variant",
    [
        "select v from sqlg.t order by v",
        "SELECT   v\n  FROM sqlg.t\n ORDER BY v  ",
        # The canonical form is DuckDB's syntax tree, which has no comments.
        "SELECT v -- the value\nFROM sqlg.t /* all rows */ ORDER BY v",
        "SeLeCt v FrOm sqlg.t OrDeR bY v;",
    ],
    ids=["lower case", "whitespace", "comments", "mixed case"],
)
def test_sql_equivalent_text_hit(client: httpx.Client, variant: str) -> None:
    write(client, "sqlg/variants", records([2, 1]))
    assert (
        client.post("/sql", json={"sql": "SELECT v FROM sqlg.variants ORDER BY v"}).status_code
        == 200
    )
    response = client.post("/sql", json={"sql": variant.replace("sqlg.t", "sqlg.variants")})
    assert response.headers["X-Cache"] == "hit-memory"
    assert response.json()["metadata"]["cached"] is True
    assert values_of(response) == [1, 2]


def test_sql_get_shares_post_entry(client: httpx.Client) -> None:
    write(client, "sqlg/get", records([7]))
    query = "SELECT v FROM sqlg.get"
    assert client.post("/sql", json={"sql": query}).headers["X-Cache"] == "miss"
    response = client.get("/sql", params={"sql": query})
    assert response.headers["X-Cache"] == "hit-memory"
    assert values_of(response) == [7]


def test_sql_different_query_misses(client: httpx.Client) -> None:
    write(client, "sqlg/differ", records([1, 2]))
    base = client.post("/sql", json={"sql": "SELECT v FROM sqlg.differ ORDER BY v"})
    assert base.headers["X-Cache"] == "miss"
    descending = client.post("/sql", json={"sql": "SELECT v FROM sqlg.differ ORDER BY v DESC"})
    assert descending.headers["X-Cache"] == "miss"
    assert values_of(descending) == [2, 1]
    limited = client.post("/sql", json={"sql": "SELECT v FROM sqlg.differ ORDER BY v", "limit": 1})
    assert limited.headers["X-Cache"] == "miss"
    assert values_of(limited) == [1]
    parameter = client.post(
        "/sql", json={"sql": "SELECT v FROM sqlg.differ WHERE v >= $low", "params": {"low": 2}}
    )
    assert parameter.headers["X-Cache"] == "miss"
    other = client.post(
        "/sql", json={"sql": "SELECT v FROM sqlg.differ WHERE v >= $low", "params": {"low": 1}}
    )
    assert other.headers["X-Cache"] == "miss"
    assert values_of(other) == [1, 2]


def test_sql_after_write_misses(client: httpx.Client, fresh: httpx.Client) -> None:
    write(client, "sqlg/written", records([1, 2]))
    query = {"sql": "SELECT sum(v) AS v FROM sqlg.written"}
    assert client.post("/sql", json=query).headers["X-Cache"] == "miss"
    assert client.post("/sql", json=query).headers["X-Cache"] == "hit-memory"

    write(fresh, "sqlg/written", records([10, 20, 30]))
    response = client.post("/sql", json=query)
    assert response.headers["X-Cache"] == "miss"
    assert response.json()["metadata"]["cached"] is False
    assert values_of(response) == [60]


def test_sql_join_invalidated_by_second(client: httpx.Client) -> None:
    write(client, "sqlg/left", records([1, 2]))
    write(client, "sqlg/right", records([10, 20]))
    query = {
        "sql": "SELECT l.v + r.v AS v FROM sqlg.left AS l JOIN sqlg.right AS r "
        "USING (entity_id) ORDER BY v"
    }
    assert client.post("/sql", json=query).headers["X-Cache"] == "miss"
    assert client.post("/sql", json=query).headers["X-Cache"] == "hit-memory"

    write(client, "sqlg/right", records([100, 200]))
    response = client.post("/sql", json=query)
    assert response.headers["X-Cache"] == "miss"
    assert values_of(response) == [101, 202]


def test_sql_volatile_not_cached(client: httpx.Client) -> None:
    query = {"sql": "SELECT random() AS v"}
    first = client.post("/sql", json=query)
    assert first.status_code == 200
    second = client.post("/sql", json=query)
    assert second.headers["X-Cache"] == "bypass"
    assert values_of(second) != values_of(first)


def test_sql_sample_not_cached(client: httpx.Client) -> None:
    write(client, "sqlg/sampled", records(list(range(50))))
    query = {"sql": "SELECT count(*) AS v FROM sqlg.sampled USING SAMPLE 50%"}

    responses = [client.post("/sql", json=query) for _ in range(2)]

    assert [response.status_code for response in responses] == [200, 200]
    assert [response.headers["X-Cache"] for response in responses] == ["bypass", "bypass"]


def test_training_set_with_volatile_spine_not_cached(client: httpx.Client) -> None:
    write(client, "sqlg/spine_values", records([7]))
    body = {
        "entity_sql": "SELECT 1 AS entity_id, now() AS event_timestamp",
        "features": ["sqlg/spine_values:v"],
    }

    first = client.post("/training-set", json=body)
    second = client.post("/training-set", json=body)

    assert first.status_code == 200, first.text
    assert [first.headers["X-Cache"], second.headers["X-Cache"]] == ["bypass", "bypass"]
    assert second.json()["data"][0]["event_timestamp"] > first.json()["data"][0]["event_timestamp"]


def test_named_query_cached(client: httpx.Client) -> None:
    write(client, "sqlg/named", records([1, 5, 9]))
    first = client.get("/queries/values_above", params={"minimum": 5})
    assert first.status_code == 200, first.text
    assert first.headers["X-Cache"] == "miss"
    assert values_of(first) == [5, 9]

    second = client.post("/queries/values_above", json={"params": {"minimum": 5}})
    assert second.headers["X-Cache"] == "hit-memory"
    assert second.json()["metadata"]["cached"] is True
    assert values_of(second) == [5, 9]

    write(client, "sqlg/named", records([6, 7]))
    third = client.get("/queries/values_above", params={"minimum": 5})
    assert third.headers["X-Cache"] == "miss"
    assert values_of(third) == [6, 7]


# Batch lookups and training sets


def test_batch_cached_with_timestamp(client: httpx.Client) -> None:
    write(client, "batch/t", records([1, 2]))
    body = {"feature_names": ["batch/t"], "entity_ids": [1, 2], "timestamp": "2024-06-01T00:00:00Z"}
    first = client.post("/features/batch", json=body)
    assert first.status_code == 200, first.text
    assert first.headers["X-Cache"] == "miss"
    second = client.post("/features/batch", json=body)
    assert second.headers["X-Cache"] == "hit-memory"
    assert [row["v"] for row in second.json()["features"]["batch/t"]] == [1, 2]

    write(client, "batch/t", records([3, 4]))
    third = client.post("/features/batch", json=body)
    assert third.headers["X-Cache"] == "miss"
    assert [row["v"] for row in third.json()["features"]["batch/t"]] == [3, 4]


def test_batch_without_ttl_cached(client: httpx.Client) -> None:
    write(client, "batch/now", records([1]))
    body = {"feature_names": ["batch/now"], "entity_ids": [1]}
    assert client.post("/features/batch", json=body).headers["X-Cache"] == "miss"
    assert client.post("/features/batch", json=body).headers["X-Cache"] == "hit-memory"


def test_batch_ttl_now_bypass(client: httpx.Client) -> None:
    write(client, "batch/ttl", records([1]), ttl_seconds=3600)
    write(client, "batch/plain", records([2]))
    body = {"feature_names": ["batch/plain", "batch/ttl"], "entity_ids": [1]}
    for _ in range(2):
        response = client.post("/features/batch", json=body)
        assert response.status_code == 200
        assert response.headers["X-Cache"] == "bypass"

    dated = {**body, "timestamp": "2024-01-01T00:30:00Z"}
    assert client.post("/features/batch", json=dated).headers["X-Cache"] == "miss"
    response = client.post("/features/batch", json=dated)
    assert response.headers["X-Cache"] == "hit-memory"
    assert [row["v"] for row in response.json()["features"]["batch/ttl"]] == [1]


def test_training_set_cached(client: httpx.Client) -> None:
    write(client, "train/t", records([1, 2]))
    body = {
        "entities": [
            {"entity_id": 1, "event_timestamp": "2024-06-01T00:00:00Z"},
            {"entity_id": 2, "event_timestamp": "2024-06-01T00:00:00Z"},
        ],
        "features": ["train/t:v"],
    }
    first = client.post("/training-set", json=body)
    assert first.status_code == 200, first.text
    assert first.headers["X-Cache"] == "miss"
    second = client.post("/training-set", json=body)
    assert second.headers["X-Cache"] == "hit-memory"
    assert values_of(second) == [1, 2]

    write(client, "train/t", records([3, 4]))
    third = client.post("/training-set", json=body)
    assert third.headers["X-Cache"] == "miss"
    assert values_of(third) == [3, 4]


def test_training_entity_sql_tables(client: httpx.Client) -> None:
    write(client, "train/features", records([1, 2]))
    write(client, "train/spine", [{"entity_id": 1, "event_timestamp": "2024-06-01T00:00:00Z"}])
    body = {
        "entity_sql": "SELECT entity_id, event_timestamp FROM train.spine",
        "features": ["train/features:v"],
    }
    assert client.post("/training-set", json=body).headers["X-Cache"] == "miss"
    assert client.post("/training-set", json=body).headers["X-Cache"] == "hit-memory"

    spine = [
        {"entity_id": 1, "event_timestamp": "2024-06-01T00:00:00Z"},
        {"entity_id": 2, "event_timestamp": "2024-06-01T00:00:00Z"},
    ]
    write(client, "train/spine", spine)
    response = client.post("/training-set", json=body)
    assert response.headers["X-Cache"] == "miss"
    assert values_of(response) == [1, 2]


def test_training_definition_edit_misses(client: httpx.Client, queries_dir: Path) -> None:
    spine = [{"entity_id": 1, "event_timestamp": "2024-06-01T00:00:00Z"}]
    spine.append({"entity_id": 2, "event_timestamp": "2024-06-01T00:00:00Z"})
    write(client, "train/named_spine", spine)
    write(client, "train/named_values", records([1, 2]))
    body = {"name": "named_spine"}
    first = client.post("/training-set", json=body)
    assert first.status_code == 200, first.text
    assert values_of(first) == [1, 2]

    definition = TRAINING_DEFINITION.format(low=2)
    (queries_dir / "training_sets" / "named_spine.toml").write_text(definition)
    second = client.post("/training-set", json=body)
    assert second.headers["X-Cache"] == "miss"
    assert values_of(second) == [2]


# Metrics and the performance summary


def test_metrics_count_requests(client: httpx.Client) -> None:
    write(client, "metrics/t", records([1]))
    before = metric_samples(client)
    for _ in range(3):
        client.get("/features/metrics/t")
    assert client.get("/features/metrics/absent").status_code == 404
    after = metric_samples(client)

    def delta(name: str, **pairs: str) -> float:
        key = (name, labels(**pairs))
        return after.get(key, 0.0) - before.get(key, 0.0)

    get_page = {"route": PAGE_ROUTE, "method": "GET"}
    assert delta("sqlstore_requests_total", **get_page, status="200") == 3
    assert delta("sqlstore_requests_total", **get_page, status="404") == 1
    assert delta("sqlstore_request_duration_seconds_count", **get_page) == 4
    assert delta("sqlstore_request_duration_seconds_bucket", **get_page, le="+Inf") == 4
    assert delta("sqlstore_request_duration_seconds_sum", **get_page) > 0
    assert delta("sqlstore_errors_total", route=PAGE_ROUTE, code="not_found") == 1
    assert delta("sqlstore_cache_lookups_total", tier="memory", result="miss") == 1
    assert delta("sqlstore_cache_lookups_total", tier="memory", result="hit") == 2
    assert delta("sqlstore_cache_lookups_total", tier="disk", result="miss") == 1


def test_metrics_names_present(client: httpx.Client) -> None:
    text = client.get("/metrics").text
    for name in (
        "sqlstore_requests_total",
        "sqlstore_request_duration_seconds_bucket",
        "sqlstore_errors_total",
        "sqlstore_cache_lookups_total",
        "sqlstore_cache_memory_entries",
        "sqlstore_cache_memory_bytes",
        "sqlstore_tables",
    ):
        assert f"\n{name}" in text, name


def test_metrics_table_count_current(client: httpx.Client, fresh: httpx.Client) -> None:
    write(client, "tablecount/t", records([1]))
    count = client.get("/features").json()["count"]
    for _ in range(4):
        assert metric_samples(fresh)[("sqlstore_tables", labels())] == count

    write(client, "tablecount/u", records([1]))
    assert metric_samples(client)[("sqlstore_tables", labels())] == count + 1
    assert client.delete("/features/tablecount/u").status_code == 200
    assert client.delete("/features/tablecount/t").status_code == 200
    for _ in range(4):
        assert metric_samples(fresh)[("sqlstore_tables", labels())] == count - 1


def test_performance_summary(client: httpx.Client) -> None:
    write(client, "perf/t", records([1, 2, 3]))
    first = client.get("/performance").json()
    client.get("/features/perf/t")
    client.get("/features/perf/absent")
    second = client.get("/performance").json()

    requests = second["performance_metrics"]["total_requests"]
    assert requests - first["performance_metrics"]["total_requests"] == 3
    errors = second["performance_metrics"]["error_count"]
    assert errors - first["performance_metrics"]["error_count"] == 1
    assert second["performance_metrics"]["avg_response_time_ms"] > 0
    assert second["cache_stats"]["enabled"] is True

    tables = client.get("/features").json()["tables"]
    storage = second["storage_info"]
    assert storage["total_features"] == len(tables)
    assert storage["total_feature_groups"] == len({table["group"] for table in tables})
    assert storage["total_rows"] == sum(table["row_count"] for table in tables)
    assert storage["total_size_bytes"] == sum(table["storage"]["bytes_on_disk"] for table in tables)


# A restart, and corrupt entries on a live server


def flip_value_in_database(results: Path, tag: str, marker: bytes) -> None:
    """Flip one byte of the SQLite-stored value tagged `tag` that contains `marker`."""
    with sqlite3.connect(results / "cache.db", timeout=30) as rows:
        found = rows.execute("SELECT rowid, value FROM Cache WHERE tag = ?", (tag,)).fetchall()
        matching = [(rowid, value) for rowid, value in found if value and marker in value]
        assert len(matching) == 1
        rowid, value = matching[0]
        corrupted = bytearray(value)
        corrupted[value.index(marker)] ^= 0x20
        rows.execute("UPDATE Cache SET value = ? WHERE rowid = ?", (bytes(corrupted), rowid))


def test_restart_disk_and_corruption(
    server_factory: Callable[..., RunningServer], tmp_path: Path
) -> None:
    root = tmp_path / "restarted"
    first = server_factory(root=root, **ONE_SQL_WORKER)
    with httpx.Client(base_url=first.base_url, timeout=30) as session:
        write(session, "corrupt/small", records([1, 2], note="small-marker"))
        write(session, "corrupt/big", records(list(range(1000)), note="x" * 40))
        write(session, "corrupt/kept", records([7]))
        assert session.get("/features/corrupt/small").headers["X-Cache"] == "miss"
        big = session.get("/features/corrupt/big?limit=1000")
        assert big.headers["X-Cache"] == "miss"
        assert len(big.content) > 40_000
        assert session.get("/features/corrupt/kept").headers["X-Cache"] == "miss"
    stop_server(first)

    second = server_factory(root=root, **ONE_SQL_WORKER)
    results = root / "cache" / "results"
    flip_value_in_database(results, "corrupt/small", b"small-marker")
    (value_file,) = results.rglob("*.val")
    content = bytearray(value_file.read_bytes())
    content[len(content) // 2] ^= 0x01
    value_file.write_bytes(bytes(content))

    with httpx.Client(base_url=second.base_url, timeout=30) as session:
        kept = session.get("/features/corrupt/kept")
        assert kept.headers["X-Cache"] == "hit-disk"
        assert values_of(kept) == [7]
        after_restart = stats(session)
        assert after_restart["tiers"]["memory"]["total_items"] == 1
        assert after_restart["total"]["cache_hits"] == 1
        assert after_restart["total"]["cache_misses"] == 0
        assert after_restart["total"]["total_requests"] == 1

        small = session.get("/features/corrupt/small")
        assert small.status_code == 200
        assert small.headers["X-Cache"] == "miss"
        assert values_of(small) == [1, 2]
        assert small.json()["data"][0]["note"] == "small-marker"
        big = session.get("/features/corrupt/big?limit=1000")
        assert big.status_code == 200
        assert big.headers["X-Cache"] == "miss"
        assert values_of(big) == list(range(1000))
        for path in ("/features/corrupt/small", "/features/corrupt/big?limit=1000"):
            assert session.get(path).headers["X-Cache"] == "hit-memory"

        totals = stats(session)
        assert totals["total"]["cache_hits"] == 3
        assert totals["total"]["cache_misses"] == 2
        assert totals["tiers"]["memory"]["total_items"] == 3
        assert totals["tiers"]["disk"]["total_items"] == 3

        assert session.delete("/cache").status_code == 200
        cleared = stats(session)
        assert cleared["tiers"]["memory"]["total_items"] == 0
        assert cleared["tiers"]["memory"]["bytes_used"] == 0
        assert cleared["tiers"]["disk"]["total_items"] == 0
        assert session.get("/features/corrupt/kept").headers["X-Cache"] == "miss"

    log = second.log()
    assert log.count("checksum mismatch") == 2
    assert "Traceback" not in log


# Settings


def test_env_memory_off(server_factory: Callable[..., RunningServer]) -> None:
    server = server_factory(SQLSTORE_CACHE_MEMORY_ENTRIES="0", **ONE_SQL_WORKER)
    with httpx.Client(base_url=server.base_url, timeout=30) as session:
        write(session, "env/t", records([1]))
        outcomes = [session.get("/features/env/t").headers["X-Cache"] for _ in range(3)]
        assert outcomes == ["miss", "hit-disk", "hit-disk"]
        body = stats(session)
    assert body["tiers"]["memory"]["enabled"] is False
    assert body["tiers"]["memory"]["total_requests"] == 0
    assert body["tiers"]["disk"]["cache_hits"] == 2
    assert body["tiers"]["disk"]["cache_misses"] == 1
    assert body["total"]["cache_hits"] == 2
    assert body["total"]["cache_misses"] == 1
    assert body["total"]["total_requests"] == 3


def test_locked_disk_hit_off_event_loop(
    server_factory: Callable[..., RunningServer], tmp_path: Path
) -> None:
    root = tmp_path / "locked"
    server = server_factory(root=root, SQLSTORE_CACHE_MEMORY_ENTRIES="0", **ONE_SQL_WORKER)
    with httpx.Client(base_url=server.base_url, timeout=30) as session:
        write(session, "env/t", records([1]))
        assert session.get("/features/env/t").headers["X-Cache"] == "miss"
    outcome: dict[str, httpx.Response] = {}

    def read() -> None:
        outcome["page"] = httpx.get(f"{server.base_url}/features/env/t", timeout=60)

    # Another process's write transaction holds the lock that a disk read needs to record
    # its access time.
    writer = sqlite3.connect(root / "cache" / "results" / "cache.db", isolation_level=None)
    writer.execute("BEGIN IMMEDIATE")
    reader = threading.Thread(target=read)
    try:
        reader.start()
        time.sleep(0.5)
        health = httpx.get(f"{server.base_url}/health", timeout=5)
        waiting = reader.is_alive()
    finally:
        writer.execute("ROLLBACK")
        writer.close()
    reader.join(timeout=60)

    assert health.status_code == 200
    assert waiting
    assert outcome["page"].headers["X-Cache"] == "hit-disk"
    assert values_of(outcome["page"]) == [1]


def test_config_file_and_env(server_factory: Callable[..., RunningServer], tmp_path: Path) -> None:
    root = tmp_path / "configured"
    (root / "config").mkdir(parents=True)
    (root / "config" / "sqlstore.toml").write_text(
        "cache_memory_entries = 100\n"
        "cache_memory_max_entry_bytes = 3000\n"
        "cache_disk_max_entry_bytes = 20000\n"
        "cache_ttl_seconds = 1.5\n"
    )
    server = server_factory(root=root, SQLSTORE_CACHE_MEMORY_ENTRIES="2", **ONE_SQL_WORKER)
    with httpx.Client(base_url=server.base_url, timeout=30) as session:
        write(session, "conf/t", records(list(range(1000))))
        small = "/features/conf/t?limit=2"
        large = "/features/conf/t?limit=100"
        huge = "/features/conf/t?limit=1000"
        assert [session.get(small).headers["X-Cache"] for _ in range(2)] == ["miss", "hit-memory"]

        large_outcomes = [session.get(large) for _ in range(3)]
        assert 3000 < len(large_outcomes[0].content) < 20000
        assert [r.headers["X-Cache"] for r in large_outcomes] == ["miss", "hit-disk", "hit-disk"]

        huge_outcomes = [session.get(huge) for _ in range(2)]
        assert len(huge_outcomes[0].content) > 20000
        assert [r.headers["X-Cache"] for r in huge_outcomes] == ["miss", "miss"]

        for limit in (3, 4):
            assert session.get(f"/features/conf/t?limit={limit}").headers["X-Cache"] == "miss"
        body = stats(session)
        memory = body["tiers"]["memory"]
        assert memory["max_size"] == 2
        assert memory["ttl_seconds"] == 1.5
        assert memory["total_items"] == 2
        assert memory["evictions"] == 1

        time.sleep(1.6)
        assert session.get(small).headers["X-Cache"] == "hit-disk"
        assert stats(session)["tiers"]["memory"]["expired_items"] == 2
        samples = metric_samples(session)
    evictions = samples[("sqlstore_cache_evictions_total", labels(tier="memory"))]
    assert evictions == 1
    expirations = samples[("sqlstore_cache_expirations_total", labels(tier="memory"))]
    assert expirations == 2


def test_serve_no_cache_bypass(tmp_path: Path) -> None:
    root = tmp_path / "uncached"
    log_path = tmp_path / "server.log"
    server = start_server(root, log_path, env=ONE_SQL_WORKER, options=("--no-cache",))
    try:
        with httpx.Client(base_url=server.base_url, timeout=30) as session:
            write(session, "nocache/t", records([1]))
            pages = [session.get("/features/nocache/t") for _ in range(2)]
            assert [page.headers["X-Cache"] for page in pages] == ["bypass", "bypass"]
            assert values_of(pages[1]) == [1]

            query = {"sql": "SELECT v FROM nocache.t"}
            results = [session.post("/sql", json=query) for _ in range(2)]
            assert [result.headers["X-Cache"] for result in results] == ["bypass", "bypass"]
            assert results[1].json()["metadata"]["cached"] is False

            body = stats(session)
            assert body["enabled"] is False
            assert body["total"]["total_requests"] == 0
    finally:
        stop_server(server)
    assert not (root / "cache" / "results").exists()


def page_count(server: RunningServer) -> float:
    """Return the count of page reads (GET on the page route) from the server's /metrics."""
    with httpx.Client(base_url=server.base_url) as client:
        samples = metric_samples(client)
    return sum(
        value
        for (name, pairs), value in samples.items()
        if name == "sqlstore_requests_total"
        and dict(pairs).get("route") == PAGE_ROUTE
        and dict(pairs).get("method") == "GET"
    )


def test_second_server_keeps_first_servers_metrics(tmp_path: Path) -> None:
    root = tmp_path / "store"
    stale = root / "cache" / "metrics" / "server-999999999"
    stale.mkdir(parents=True)
    (root / "cache" / "metrics" / "counter_1.db").write_bytes(b"left by an old layout")
    first = start_server(root, tmp_path / "first.log")
    try:
        with httpx.Client(base_url=first.base_url) as client:
            write(client, "metrics/shared", records([1]))
            for _ in range(3):
                client.get("/features/metrics/shared")
        second = start_server(root, tmp_path / "second.log")
        stop_server(second)

        assert page_count(first) == 3
    finally:
        stop_server(first)
    assert not stale.exists()
    assert not (root / "cache" / "metrics" / "counter_1.db").exists()
