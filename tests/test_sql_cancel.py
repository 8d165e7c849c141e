"""Queries whose client closes the connection are stopped in the SQL worker. That is so while
the query runs, while it is prepared and while it waits for a worker, and a late cancel never
stops the next request's query."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import duckdb
import httpx
import pytest
from conftest import RunningServer, start_server, stop_server

from sqlstore.sql.worker import _Stopped, _Watchdog

STOPPED_LINE = "the client left, so its query was stopped"
# A self-join of the 100,004 ratings: 10 billion pairs, which take tens of seconds.
SLOW_SQL = (
    "SELECT count(*) FROM interaction.user_movie_interactions AS a, "
    "interaction.user_movie_interactions AS b WHERE (a.user_id * b.movie_id) % 7 = 3"
)


def server_env(time_limit_seconds: int) -> dict[str, str]:
    return {
        "SQLSTORE_CACHE_MEMORY_ENTRIES": "0",
        "SQLSTORE_CACHE_DISK_BYTES": "0",
        "SQLSTORE_SQL_TIME_LIMIT_SECONDS": str(time_limit_seconds),
        "SQLSTORE_SQL_WORKERS": "1",
    }


@pytest.fixture
def patient_server(demo_root: Path, tmp_path: Path) -> Iterator[RunningServer]:
    """A server with one SQL worker and a 120 s time limit: a slow query that is not stopped
    keeps the worker far longer than any test waits."""
    server = start_server(demo_root, tmp_path / "server.log", env=server_env(120))
    yield server
    stop_server(server)


def abandon(server: RunningServer, sql: str, after_seconds: float) -> None:
    """Send `sql` and close the connection after `after_seconds`."""
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(server.base_url + "/sql", json={"sql": sql}, timeout=after_seconds)


def quick_answer(server: RunningServer, value: int) -> object:
    response = httpx.post(
        server.base_url + "/sql", json={"sql": f"SELECT {value} AS n"}, timeout=60
    )
    return response.json()["data"]


def stopped_count(server: RunningServer, expected: int) -> int:
    """Return how many stopped queries the log reports, waiting up to 10 s for `expected`,
    because the server buffers INFO lines for up to a second."""
    deadline = time.monotonic() + 10
    while server.log().count(STOPPED_LINE) < expected and time.monotonic() < deadline:
        time.sleep(0.05)
    return server.log().count(STOPPED_LINE)


def test_running_query_stops_when_its_client_leaves(patient_server: RunningServer) -> None:
    quick_answer(patient_server, 0)
    answers = []
    # The first text goes through the route, the repeat through the fast lane.
    for attempt in range(1, 3):
        abandon(patient_server, SLOW_SQL, after_seconds=1.5)
        # With the only worker busy until the 120 s limit, this would time out.
        answers.append(quick_answer(patient_server, attempt))

    assert answers == [[{"n": 1}], [{"n": 2}]]
    assert stopped_count(patient_server, 2) == 2


def test_cancel_before_worker_starts(
    patient_server: RunningServer,
) -> None:
    # The first query of a server starts its worker, which takes about a second.
    abandon(patient_server, SLOW_SQL, after_seconds=0.2)

    assert quick_answer(patient_server, 7) == [{"n": 7}]
    assert stopped_count(patient_server, 1) == 1


def test_queued_query_of_a_client_gone_never_runs(demo_root: Path, tmp_path: Path) -> None:
    server = start_server(demo_root, tmp_path / "server.log", env=server_env(3))
    try:
        quick_answer(server, 0)
        outcome: dict[str, httpx.Response] = {}

        def hold_the_worker() -> None:
            outcome["held"] = httpx.post(
                server.base_url + "/sql", json={"sql": SLOW_SQL}, timeout=60
            )

        holder = threading.Thread(target=hold_the_worker)
        holder.start()
        time.sleep(0.5)
        # This request waits for the only worker, and its client leaves meanwhile.
        abandon(server, SLOW_SQL + " -- queued", after_seconds=0.5)
        holder.join()
        answer = quick_answer(server, 9)
        stopped = stopped_count(server, 1)
        log = server.log()
    finally:
        stop_server(server)

    assert outcome["held"].status_code == 400
    assert "SQLSTORE_SQL_TIME_LIMIT_SECONDS" in outcome["held"].json()["error"]["message"]
    assert answer == [{"n": 9}]
    assert stopped == 1
    # Only the connected client's query ran into the time limit.
    assert log.count("query ran longer than the time limit") == 1


def test_watchdog_stops_a_request_cancelled_before_it_starts() -> None:
    watchdog = _Watchdog()
    cursor = duckdb.connect().cursor()
    watchdog.cancel(5)

    with pytest.raises(_Stopped) as stopped, watchdog.watching(cursor, 10, sequence=5):
        pass

    assert stopped.value.header["kind"] == "cancelled"


def test_watchdog_ignores_a_cancel_of_an_ended_request() -> None:
    watchdog = _Watchdog()
    cursor = duckdb.connect().cursor()
    with watchdog.watching(cursor, 10, sequence=5):
        pass
    watchdog.cancel(5)
    watchdog.cancel(4)

    with watchdog.watching(cursor, 10, sequence=6):
        rows = cursor.execute("SELECT 42").fetchall()

    assert rows == [(42,)]
    assert watchdog.cancelled is False


def test_watchdog_interrupts_the_running_request() -> None:
    watchdog = _Watchdog()
    cursor = duckdb.connect().cursor()
    timer = threading.Timer(0.3, watchdog.cancel, args=(8,))

    with pytest.raises(duckdb.InterruptException), watchdog.watching(cursor, 60, sequence=8):
        timer.start()
        cursor.execute("SELECT count(*) FROM range(100000000000) AS a(x) WHERE x % 7 = 3")

    assert watchdog.cancelled is True
