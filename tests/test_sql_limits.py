"""Sandbox limits on a real server over the demo store: time, memory, rows and bytes.

The server runs with a 1 s time limit, 64 MiB of DuckDB memory per worker, 1000 rows and
20000 bytes per result, so each limit is reached by a query that finishes quickly otherwise.
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from conftest import RunningServer, start_server, stop_server

TIME_LIMIT_SECONDS = 1
MAX_ROWS = 1000
MAX_RESULT_BYTES = 20_000
# A self-join of the 100,004 ratings: 10 billion pairs, each hashed, which takes minutes.
RUNAWAY_SQL = (
    "SELECT count(*) FROM interaction.user_movie_interactions AS a, "
    "interaction.user_movie_interactions AS b WHERE (a.user_id * b.movie_id) % 7 = 3"
)
# repeat() with a size taken from a column passes validation. Building one string of
# movie_id * 100,000 characters takes far longer than the limit and ignores interrupts.
SLOW_BUILDER_SQL = (
    "SELECT max(length(repeat('x', CAST(movie_id AS BIGINT) * 100000))) FROM content.movie_genres"
)
QUICK_SQL = "SELECT count(*) AS n FROM content.movie_genres"


@pytest.fixture(scope="module")
def limited_server(
    demo_root: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[RunningServer]:
    env = {
        "SQLSTORE_SQL_TIME_LIMIT_SECONDS": str(TIME_LIMIT_SECONDS),
        "SQLSTORE_SQL_MEMORY_LIMIT_BYTES": str(64 * 1024 * 1024),
        "SQLSTORE_SQL_MAX_ROWS": str(MAX_ROWS),
        "SQLSTORE_SQL_MAX_RESULT_BYTES": str(MAX_RESULT_BYTES),
        "SQLSTORE_SQL_WORKERS": "2",
    }
    log = tmp_path_factory.mktemp("sql_limits") / "server.log"
    server = start_server(demo_root, log, env=env)
    yield server
    stop_server(server)


@pytest.fixture(scope="module")
def http(limited_server: RunningServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=limited_server.base_url, timeout=120) as client:
        warm_up_workers(client)
        yield client


def warm_up_workers(client: httpx.Client) -> None:
    """Start both worker processes, so that no timing below includes a process start."""
    threads = [
        threading.Thread(target=client.post, args=("/sql",), kwargs={"json": {"sql": QUICK_SQL}})
        for _ in range(2)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()


def post_in_background(client: httpx.Client, sql: str) -> tuple[threading.Thread, dict]:
    outcome: dict = {}

    def send() -> None:
        started = time.monotonic()
        outcome["response"] = client.post("/sql", json={"sql": sql})
        outcome["seconds"] = time.monotonic() - started

    thread = threading.Thread(target=send)
    thread.start()
    return thread, outcome


def test_runaway_query_stops_at_time_limit(http: httpx.Client) -> None:
    thread, outcome = post_in_background(http, RUNAWAY_SQL)
    time.sleep(0.3)

    started = time.monotonic()
    health = http.get("/health")
    features = http.get("/features/content/movie_genres", params={"limit": 1})
    quick = http.post("/sql", json={"sql": QUICK_SQL})
    responsive_seconds = time.monotonic() - started
    thread.join(timeout=60)
    response = outcome["response"]

    assert health.status_code == 200
    assert features.status_code == 200
    assert quick.status_code == 200, quick.text
    assert responsive_seconds < TIME_LIMIT_SECONDS + 2
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "query_timeout"
    assert "time limit of 1 s" in response.json()["error"]["message"]
    assert outcome["seconds"] < TIME_LIMIT_SECONDS + 5


def test_worker_is_killed_when_interrupt_comes_late(http: httpx.Client) -> None:
    started = time.monotonic()
    response = http.post("/sql", json={"sql": SLOW_BUILDER_SQL})
    seconds = time.monotonic() - started
    after = http.post("/sql", json={"sql": QUICK_SQL})

    assert response.status_code == 400
    assert response.json()["error"]["code"] in {"query_timeout", "query_out_of_memory"}
    assert seconds < TIME_LIMIT_SECONDS + 5
    assert after.status_code == 200
    assert after.json()["data"] == [{"n": 9066}]


def test_memory_limit_is_400(http: httpx.Client) -> None:
    sql = "SELECT count(DISTINCT i) FROM range(10000000) AS t(i)"
    response = http.post("/sql", json={"sql": sql})

    assert response.status_code == 400
    message = response.json()["error"]["message"]
    assert response.json()["error"]["code"] == "query_out_of_memory", message
    assert "SQLSTORE_SQL_MEMORY_LIMIT_BYTES" in message
    assert message.endswith("; make the query build less data at once")
    assert "SET " not in message


def test_default_row_cap_truncates(http: httpx.Client) -> None:
    sql = "SELECT movie_id FROM content.movie_genres ORDER BY movie_id"
    body = http.post("/sql", json={"sql": sql}).json()

    assert body["metadata"]["row_count"] == MAX_ROWS
    assert body["metadata"]["truncated"] is True
    assert body["metadata"]["truncated_by"] == "row_limit"
    assert body["metadata"]["limit"] == MAX_ROWS


def test_byte_cap_truncates(http: httpx.Client) -> None:
    sql = "SELECT movie_id, title, genres FROM content.movie_genres ORDER BY movie_id"
    response = http.post("/sql", json={"sql": sql}, headers={"Accept": "text/csv"})

    assert response.status_code == 200
    assert response.headers["x-truncated"] == "true"
    assert 0 < int(response.headers["x-row-count"]) < MAX_ROWS
    assert len(response.content) < MAX_RESULT_BYTES * 2


def row_too_large_bytes(response: httpx.Response) -> int:
    """Return the row size that the 400 of a row beyond the byte limit names."""
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["code"] == "result_row_too_large"
    matched = re.fullmatch(
        r"the first row of the result takes ([0-9,]+) bytes, more than the result limit of "
        r"20,000 bytes \(SQLSTORE_SQL_MAX_RESULT_BYTES\), so no row can be returned; select "
        r"fewer or smaller columns, for example left\(column, 1000\) in place of a long text",
        error["message"],
    )
    assert matched is not None, error["message"]
    return int(matched.group(1).replace(",", ""))


@pytest.mark.parametrize("accept", ["application/json", "text/csv"])
def test_row_beyond_byte_limit_is_400(http: httpx.Client, accept: str) -> None:
    sql = "SELECT repeat('x', 30000) AS c"

    # The second run of a text may send JSON rows, which have their own byte check.
    first = http.post("/sql", json={"sql": sql}, headers={"Accept": accept})
    second = http.post("/sql", json={"sql": sql}, headers={"Accept": accept})

    # The 30,000 characters and the row's share of the offsets and null bitmap.
    assert 30_000 <= row_too_large_bytes(first) <= 30_016
    assert row_too_large_bytes(second) == row_too_large_bytes(first)


def test_first_row_kept_when_it_fits(http: httpx.Client) -> None:
    # The mean row size of the batch, about 25,000 bytes, is above the limit, but the first
    # row fits.
    sql = (
        "SELECT repeat('x', CASE WHEN i = 0 THEN 10 ELSE 50000 END) AS c "
        "FROM range(2) AS t(i) ORDER BY i"
    )

    response = http.post("/sql", json={"sql": sql})

    assert response.status_code == 200, response.text
    assert response.json()["data"] == [{"c": "x" * 10}]
    assert response.json()["metadata"]["truncated_by"] == "byte_limit"
