"""POST /sql in the fast lane: a query validated lately is served before FastAPI's layers. Its
responses, errors, time limit and access control must match what the route does."""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import httpx
import orjson
import pyarrow as pa
import pytest
from conftest import RunningServer, start_server, stop_server

from sqlstore.api.sql import lane_response
from sqlstore.sql.limits import SqlLimits
from sqlstore.sql.service import PREPARED_KEY_BYTES, SqlService
from sqlstore.store import FeatureStore, TableDefinition
from sqlstore.tokens import create_token

ELAPSED_PATTERN = re.compile(rb'"elapsed_ms":[0-9.e-]+')
REQUEST_ID_PATTERN = re.compile(rb'"request_id":"[^"]*"')
# Headers that differ between any two responses (the length follows elapsed_ms).
VOLATILE_HEADERS = {"date", "x-request-id", "x-elapsed-ms", "content-length"}
TIME_LIMIT_SECONDS = 1
RATINGS_SQL = (
    "SELECT count(*) AS ratings, round(avg(rating), 6) AS mean_rating "
    "FROM interaction.user_movie_interactions"
)
# A self-join of the 100,004 ratings: 10 billion pairs, which take far longer than the limit.
RUNAWAY_SQL = (
    "SELECT count(*) FROM interaction.user_movie_interactions AS a, "
    "interaction.user_movie_interactions AS b WHERE (a.user_id * b.movie_id) % 7 = 3"
)


@pytest.fixture(scope="module")
def uncached_server(
    demo_root: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[RunningServer]:
    env = {
        "SQLSTORE_CACHE_MEMORY_ENTRIES": "0",
        "SQLSTORE_CACHE_DISK_BYTES": "0",
        "SQLSTORE_SQL_TIME_LIMIT_SECONDS": str(TIME_LIMIT_SECONDS),
        "SQLSTORE_SQL_WORKERS": "2",
    }
    log = tmp_path_factory.mktemp("sql_fast_lane") / "server.log"
    server = start_server(demo_root, log, env=env)
    yield server
    stop_server(server)


@pytest.fixture(scope="module")
def http(uncached_server: RunningServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=uncached_server.base_url, timeout=60) as client:
        yield client


def post_twice(client: httpx.Client, body: Any, **headers: str) -> list[httpx.Response]:
    content = json.dumps(body).encode()
    headers = {"Content-Type": "application/json", **headers}
    return [client.post("/sql", content=content, headers=headers) for _ in range(2)]


def stable_body(response: httpx.Response) -> bytes:
    """Return the body without the parts that differ between any two responses."""
    content = ELAPSED_PATTERN.sub(b'"elapsed_ms":0', response.content)
    return REQUEST_ID_PATTERN.sub(b'"request_id":""', content)


def stable_headers(response: httpx.Response) -> dict[str, str]:
    return {k: v for k, v in response.headers.items() if k not in VOLATILE_HEADERS}


def test_repeated_query_gets_the_same_response(http: httpx.Client) -> None:
    first, second = post_twice(http, {"sql": RATINGS_SQL})

    assert first.status_code == 200
    assert second.status_code == 200
    assert stable_body(second) == stable_body(first)
    assert stable_headers(second) == stable_headers(first)
    assert second.headers["x-cache"] == "bypass"
    # 100,004 ratings in the MovieLens sample, averaging 3.543608.
    assert second.json()["data"] == [{"ratings": 100004, "mean_rating": 3.543608}]


def test_repeated_failing_query_gets_the_same_error(http: httpx.Client) -> None:
    first, second = post_twice(http, {"sql": "SELECT CAST('x' AS INTEGER) AS n"})

    assert first.status_code == 400
    assert second.status_code == 400
    assert second.json()["error"]["message"] == first.json()["error"]["message"]
    assert "Could not convert string 'x'" in second.json()["error"]["message"]
    assert second.json()["error"]["request_id"] == second.headers["x-request-id"]


def test_client_request_id_is_echoed(http: httpx.Client) -> None:
    responses = post_twice(http, {"sql": "SELECT 1 AS one"}, **{"X-Request-ID": "lane-check-1"})

    assert [r.headers["x-request-id"] for r in responses] == ["lane-check-1", "lane-check-1"]


def test_repeated_runaway_query_stops_at_time_limit(http: httpx.Client) -> None:
    responses = post_twice(http, {"sql": RUNAWAY_SQL})
    after = http.post("/sql", json={"sql": "SELECT 2 AS two"})

    assert [r.status_code for r in responses] == [400, 400]
    assert "SQLSTORE_SQL_TIME_LIMIT_SECONDS" in responses[1].json()["error"]["message"]
    assert after.json()["data"] == [{"two": 2}]


@pytest.mark.parametrize(
    "body",
    [
        {"sql": "SELECT 3 AS three", "limit": "1"},
        {"sql": "SELECT 3 AS three", "limit": 1.0},
        {"sql": "SELECT 3 AS three", "limit": True},
        {"sql": "SELECT 3 AS three", "limit": -1},
        {"sql": "SELECT 3 AS three", "extra": 1},
        {"sql": "SELECT 3 AS three", "params": ["x"]},
        {"sql": "SELECT 3 AS three", "params": {"unused": 1}},
        {"sql": ["SELECT 3 AS three"]},
    ],
)
def test_unusual_bodies_get_the_route_response(http: httpx.Client, body: Any) -> None:
    http.post("/sql", json={"sql": "SELECT 3 AS three"})
    first, second = post_twice(http, body)

    assert second.status_code == first.status_code
    assert stable_body(second) == stable_body(first)


def test_integers_beyond_64_bits_stay_exact(http: httpx.Client) -> None:
    body = {"sql": "SELECT $big AS v", "params": {"big": 2**70 + 1}}
    responses = post_twice(http, body)

    assert [r.json()["data"] for r in responses] == [[{"v": 2**70 + 1}]] * 2


@pytest.mark.parametrize("literal", [b"1e309", b"-1e309", b"NaN", b"Infinity", b"[1.5, 1e309]"])
def test_numbers_that_are_not_finite_are_rejected(http: httpx.Client, literal: bytes) -> None:
    content = b'{"sql": "SELECT $n AS v", "params": {"n": ' + literal + b"}}"
    headers = {"Content-Type": "application/json"}
    responses = [http.post("/sql", content=content, headers=headers) for _ in range(2)]

    assert [r.status_code for r in responses] == [400, 400]
    assert "has a number that is not finite" in responses[1].json()["error"]["message"]


def test_other_formats_get_the_route_response(http: httpx.Client) -> None:
    first, second = post_twice(http, {"sql": "SELECT 4 AS four"}, Accept="text/csv")

    assert first.status_code == 200
    assert second.content == first.content == b'"four"\n4\n'


def test_cached_repeat_is_a_memory_hit(demo_server: RunningServer) -> None:
    sql = "SELECT count(*) AS genres_rows FROM content.movie_genres"
    with httpx.Client(base_url=demo_server.base_url, timeout=60) as client:
        first, second = post_twice(client, {"sql": sql})

    assert first.headers["x-cache"] == "miss"
    assert second.headers["x-cache"] == "hit-memory"
    assert first.json()["metadata"]["cached"] is False
    assert second.json()["metadata"]["cached"] is True
    assert second.json()["data"] == first.json()["data"]


def test_fast_lane_keeps_access_control(tmp_path: Path) -> None:
    root = tmp_path / "store"
    FeatureStore(root).write("g", "t", pa.table({"k": [1]}), definition=TableDefinition(["k"]))
    sql_token = create_token(root, "analyst", ["sql"])
    read_token = create_token(root, "reader", ["read"])
    server = start_server(root, tmp_path / "server.log")
    try:
        with httpx.Client(base_url=server.base_url, timeout=60) as client:
            body = {"sql": "SELECT count(*) AS n FROM g.t"}
            allowed = post_twice(client, body, Authorization=f"Bearer {sql_token}")
            other_scope = post_twice(client, body, Authorization=f"Bearer {read_token}")
            anonymous = post_twice(client, body)
    finally:
        stop_server(server)

    assert [r.status_code for r in allowed] == [200, 200]
    assert [r.status_code for r in other_scope] == [403, 403]
    assert [r.status_code for r in anonymous] == [401, 401]


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SqlService]:
    store = FeatureStore(tmp_path_factory.mktemp("lane") / "store")
    store.write("g", "t", pa.table({"k": [1, 2]}), definition=TableDefinition(["k"]))
    sql_service = SqlService(store, SqlLimits(workers=1, threads=1))
    yield sql_service
    sql_service.close()


def serve_in_lane(service: SqlService, body: bytes, accept: str | None = None) -> Any:
    state = SimpleNamespace(sql=service, store=service.store, cache=None)
    headers = [(b"accept", accept.encode())] if accept else []
    scope = {"headers": headers, "state": {"request_id": "r1"}}

    async def receive() -> dict[str, Any]:
        # The client stays connected: no message comes after the body.
        await asyncio.get_running_loop().create_future()
        return {}

    return asyncio.run(lane_response(state, scope, body, receive))


def test_lane_serves_only_texts_validated_lately(service: SqlService) -> None:
    body = b'{"sql": "SELECT k FROM g.t ORDER BY k"}'
    before = serve_in_lane(service, body)
    service.prepare("SELECT k FROM g.t ORDER BY k")
    after = serve_in_lane(service, body)

    assert before is None
    assert after.status_code == 200
    assert orjson.loads(after.body)["data"] == [{"k": 1}, {"k": 2}]


@pytest.mark.parametrize(
    ("body", "accept"),
    [
        (b'{"sql": "SELECT k FROM g.t", "limit": "1"}', None),
        (b'{"sql": "SELECT k FROM g.t", "limit": false}', None),
        (b'{"sql": "SELECT k FROM g.t", "other": 1}', None),
        (b'{"sql": "SELECT k FROM g.t", "params": {"x": 1}}', None),
        (b'{"sql": "SELECT k FROM g.t"', None),
        (b'\xef\xbb\xbf{"sql": "SELECT k FROM g.t"}', None),
        (b'["SELECT k FROM g.t"]', None),
        (b'{"sql": "SELECT k FROM g.t", "limit": 10000000000000000000}', None),
        (b'{"sql": "SELECT k FROM g.t"}', "application/vnd.apache.parquet"),
        (b'{"sql": "SELECT k FROM g.t"}', "text/html"),
    ],
)
def test_lane_leaves_other_requests_to_the_route(
    service: SqlService, body: bytes, accept: str | None
) -> None:
    service.prepare("SELECT k FROM g.t")

    assert serve_in_lane(service, body, accept) is None


@pytest.fixture()
def own_service(tmp_path: Path) -> Iterator[SqlService]:
    store = FeatureStore(tmp_path / "store")
    store.write("g", "t", pa.table({"k": [1, 2]}), definition=TableDefinition(["k"]))
    sql_service = SqlService(store, SqlLimits(workers=1, threads=1))
    yield sql_service
    sql_service.close()


def test_repeat_reads_rewritten_table(own_service: SqlService) -> None:
    body = b'{"sql": "SELECT k FROM g.t ORDER BY k"}'
    own_service.prepare("SELECT k FROM g.t ORDER BY k")
    first = serve_in_lane(own_service, body)
    repeated = serve_in_lane(own_service, body)
    own_service.store.write("g", "t", pa.table({"k": [7]}), definition=TableDefinition(["k"]))
    after_write = serve_in_lane(own_service, body)

    assert orjson.loads(first.body)["data"] == [{"k": 1}, {"k": 2}]
    assert orjson.loads(repeated.body)["data"] == [{"k": 1}, {"k": 2}]
    assert orjson.loads(after_write.body)["data"] == [{"k": 7}]


def test_repeat_after_delete_goes_to_route(own_service: SqlService) -> None:
    body = b'{"sql": "SELECT k FROM g.t ORDER BY k"}'
    own_service.prepare("SELECT k FROM g.t ORDER BY k")
    served = [serve_in_lane(own_service, body) for _ in range(2)]
    own_service.store.delete("g", "t")

    assert [response.status_code for response in served] == [200, 200]
    assert serve_in_lane(own_service, body) is None


def test_remembered_query_dropped_on_registry_change(own_service: SqlService) -> None:
    version = own_service.registry_version()
    prepared = own_service.prepare("SELECT k FROM g.t")
    own_service.remember_prepared((b"key",), version, prepared)
    remembered = own_service.prepared_for((b"key",))
    own_service.store.write("g", "u", pa.table({"k": [1]}), definition=TableDefinition(["k"]))

    assert remembered is not None
    assert remembered.query == prepared.query
    assert remembered.started > prepared.started
    assert own_service.prepared_for((b"key",)) is None


def test_long_request_not_remembered(own_service: SqlService) -> None:
    sql = "SELECT k FROM g.t -- " + "x" * PREPARED_KEY_BYTES
    version = own_service.registry_version()
    own_service.remember_prepared((sql.encode(),), version, own_service.prepare(sql))

    assert own_service.prepared_for((sql.encode(),)) is None
