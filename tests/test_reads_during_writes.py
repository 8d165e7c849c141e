"""Point-in-time joins, entity lookups and online lookups on a real server while other threads
append one row at a time to the same table.

Every append replaces the table's Parquet file by rename, and DuckDB opens a file more than
once per query, so a read that overlaps a rename has to be repeated. Each writer owns one
entity and appends its rows in order: row k of entity w has v = k and an event time of
BASE + k seconds. So every returned row can be checked against the writes: its time must match
its value, and its value must be at least the last acknowledged write of that entity.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import duckdb
import httpx
import orjson
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import start_server, stop_server

from sqlstore.errors import TableBusy, TableUnavailable
from sqlstore.layout import ENTRY_METADATA_KEY
from sqlstore.stablefiles import MAX_READ_ATTEMPTS, ReadAgain, read_unchanged

TABLE = "race/events"
WRITERS = 3
WRITE_SECONDS = 6.0
BASE = datetime(2020, 1, 1, tzinfo=UTC)
FUTURE = "2030-01-01T00:00:00+00:00"
# A static entity whose large value makes the column int64 from the first write.
STATIC_ENTITY = 100
STATIC_VALUE = 2**40
REQUEST_TIMEOUT_SECONDS = 60


def event_time(k: int) -> str:
    return (BASE + timedelta(seconds=k)).isoformat()


def record(entity: int, k: int) -> dict[str, Any]:
    return {"entity_id": entity, "v": k, "event_timestamp": event_time(k)}


class Progress:
    """The last acknowledged and the last sent value of each writer's entity."""

    def __init__(self) -> None:
        self.acknowledged = [0] * WRITERS
        self.sent = [0] * WRITERS
        self.lock = threading.Lock()

    def snapshot(self) -> tuple[list[int], list[int]]:
        with self.lock:
            return list(self.acknowledged), list(self.sent)


def append_rows(
    base_url: str, entity: int, progress: Progress, deadline: float, problems: list[str]
) -> None:
    with httpx.Client(base_url=base_url, timeout=REQUEST_TIMEOUT_SECONDS) as client:
        k = 0
        while time.monotonic() < deadline:
            k += 1
            with progress.lock:
                progress.sent[entity] = k
            body = {"records": [record(entity, k)], "mode": "append"}
            response = client.post(f"/features/{TABLE}", json=body)
            if response.status_code != 200:
                problems.append(f"append {entity}/{k}: {response.status_code} {response.text}")
                return
            with progress.lock:
                progress.acknowledged[entity] = k


def training_set_values(client: httpx.Client) -> list[tuple[int, int, str | None]]:
    spine = [{"entity_id": entity, "event_timestamp": FUTURE} for entity in range(WRITERS)]
    response = client.post("/training-set", json={"entities": spine, "features": [TABLE]})
    response.raise_for_status()
    # The spine's timestamp replaces the matched row's, so only the values can be checked.
    return [(row["entity_id"], row["v"], None) for row in response.json()["data"]]


def batch_values(client: httpx.Client, timestamp: str | None) -> list[tuple[int, int, str | None]]:
    body: dict[str, Any] = {"feature_names": [TABLE], "entity_ids": list(range(WRITERS))}
    if timestamp is not None:
        body["timestamp"] = timestamp
    response = client.post("/features/batch", json=body)
    response.raise_for_status()
    rows = response.json()["features"][TABLE]
    return [(row["entity_id"], row["v"], row["event_timestamp"]) for row in rows]


def online_values(client: httpx.Client) -> list[tuple[int, int, str | None]]:
    body = {"entities": {"entity_id": list(range(WRITERS))}, "features": [f"{TABLE}:v"]}
    response = client.post("/get-online-features", json=body)
    response.raise_for_status()
    keys, values = response.json()["results"]
    return list(zip(keys["values"], values["values"], values["event_timestamps"], strict=True))


READS: dict[str, Callable[[httpx.Client], list[tuple[int, int, str | None]]]] = {
    "training-set": training_set_values,
    "batch as of a time": lambda client: batch_values(client, FUTURE),
    "batch as of now": lambda client: batch_values(client, None),
    "online": online_values,
}


def check_rows(
    kind: str,
    rows: list[tuple[int, int, str | None]],
    acknowledged: list[int],
    sent: list[int],
) -> list[str]:
    """Return what is wrong with one response's rows, given the writes acknowledged before the
    request and those sent before its response."""
    problems = []
    if sorted(entity for entity, _, _ in rows) != list(range(WRITERS)):
        problems.append(f"{kind}: entities {rows}")
    for entity, value, timestamp in rows:
        if not acknowledged[entity] <= value <= sent[entity]:
            problems.append(
                f"{kind}: entity {entity} has v={value}, outside "
                f"[{acknowledged[entity]}, {sent[entity]}]"
            )
        if timestamp is not None and datetime.fromisoformat(timestamp) != BASE + timedelta(
            seconds=value
        ):
            problems.append(f"{kind}: entity {entity} has v={value} with time {timestamp}")
    return problems


def read_repeatedly(
    base_url: str,
    kind: str,
    progress: Progress,
    done: threading.Event,
    counts: dict[str, int],
    problems: list[str],
) -> None:
    read = READS[kind]
    while not done.is_set():
        acknowledged, _ = progress.snapshot()
        # A new connection per request, as separate clients would make.
        with httpx.Client(base_url=base_url, timeout=REQUEST_TIMEOUT_SECONDS) as client:
            try:
                rows = read(client)
            except httpx.HTTPStatusError as error:
                response = error.response
                problems.append(f"{kind}: {response.status_code} {response.text[:300]}")
                continue
        _, sent = progress.snapshot()
        problems.extend(check_rows(kind, rows, acknowledged, sent))
        counts[kind] += 1


# With a one-byte budget, no online view fits, so online lookups read the file in DuckDB.
@pytest.mark.parametrize("online_budget", [None, "1"], ids=["online views", "online in duckdb"])
def test_reads_during_appends_succeed(tmp_path: Path, online_budget: str | None) -> None:
    env = {} if online_budget is None else {"SQLSTORE_ONLINE_MEMORY_BYTES": online_budget}
    server = start_server(tmp_path / "store", tmp_path / "server.log", env=env)
    initial = [record(entity, 0) for entity in range(WRITERS)]
    initial.append({"entity_id": STATIC_ENTITY, "v": STATIC_VALUE, "event_timestamp": FUTURE})
    body = {"records": initial, "entity_key": "entity_id", "timestamp_column": "event_timestamp"}
    response = httpx.post(f"{server.base_url}/features/{TABLE}", json=body, timeout=60)
    assert response.status_code == 200, response.text

    progress = Progress()
    done = threading.Event()
    counts = dict.fromkeys(READS, 0)
    problems: list[str] = []
    deadline = time.monotonic() + WRITE_SECONDS
    writers = [
        threading.Thread(
            target=append_rows, args=(server.base_url, entity, progress, deadline, problems)
        )
        for entity in range(WRITERS)
    ]
    readers = [
        threading.Thread(
            target=read_repeatedly,
            args=(server.base_url, kind, progress, done, counts, problems),
        )
        for kind in READS
    ]
    try:
        for thread in writers + readers:
            thread.start()
        for thread in writers:
            thread.join()
    finally:
        done.set()
        for thread in readers:
            thread.join(timeout=REQUEST_TIMEOUT_SECONDS)
        stop_server(server)

    assert problems[:10] == []
    # The writes and reads overlapped many times: several appends per writer, and reads of
    # every kind.
    assert min(progress.acknowledged) > 5
    for kind, count in counts.items():
        assert count > 5, f"only {count} {kind} reads"
    assert "Traceback" not in server.log()


# read_unchanged on its own, with real renames and real DuckDB queries


def replace_file(path: Path, values: list[int]) -> None:
    """Replace `path` with a file of table g/t, whose footer names the table as sqlstore's
    writes do."""
    staging = path.with_suffix(".tmp")
    footer = {ENTRY_METADATA_KEY: orjson.dumps({"group": "g", "name": "t"})}
    pq.write_table(pa.table({"v": values}).replace_schema_metadata(footer), staging)
    staging.replace(path)


def sum_of(path: Path) -> int:
    return duckdb.sql(f"SELECT sum(v) FROM read_parquet('{path}')").fetchall()[0][0]


def test_read_unchanged_repeats_overtaken_read(tmp_path: Path) -> None:
    path = tmp_path / "t.parquet"
    replace_file(path, [1, 2])
    runs = []

    def read() -> int:
        result = sum_of(path)
        runs.append(result)
        if len(runs) == 1:
            replace_file(path, [10, 20])
        return result

    assert read_unchanged([path], read, ["g/t"]) == 30
    assert runs == [3, 30]


def test_read_unchanged_repeats_failed_read(tmp_path: Path) -> None:
    path = tmp_path / "t.parquet"
    replace_file(path, [1, 2])
    runs = []

    def read() -> int:
        runs.append(len(runs))
        if len(runs) == 1:
            replace_file(path, [5])
            raise duckdb.IOException("TProtocolException: Invalid data")
        return sum_of(path)

    assert read_unchanged([path], read, ["g/t"]) == 5
    assert runs == [0, 1]


def test_read_unchanged_raises_error_of_unchanged_file(tmp_path: Path) -> None:
    path = tmp_path / "t.parquet"
    replace_file(path, [1])

    def read() -> int:
        return duckdb.sql(f"SELECT no_such_column FROM read_parquet('{path}')").fetchall()[0][0]

    with pytest.raises(duckdb.BinderException):
        read_unchanged([path], read, ["g/t"])


@pytest.mark.parametrize("damage", ["remove", "garbage", "other table", "no footer"])
def test_read_unchanged_unavailable_for_damaged_file(tmp_path: Path, damage: str) -> None:
    path = tmp_path / "t.parquet"
    replace_file(path, [1])
    if damage == "remove":
        path.unlink()
    elif damage == "garbage":
        path.write_bytes(b"PAR1 but not Parquet")
    elif damage == "other table":
        footer = {ENTRY_METADATA_KEY: orjson.dumps({"group": "g", "name": "other"})}
        pq.write_table(pa.table({"v": [1]}).replace_schema_metadata(footer), path)
    else:
        pq.write_table(pa.table({"v": [1]}), path)

    def read() -> int:
        return duckdb.sql(f"SELECT no_such_column FROM read_parquet('{path}')").fetchall()[0][0]

    with pytest.raises(TableUnavailable) as raised:
        read_unchanged([path], read, ["g/t"])

    assert raised.value.status == 503
    assert raised.value.message.startswith("table g/t cannot be read: its data file is missing")


def test_read_unchanged_unavailable_when_never_current(tmp_path: Path) -> None:
    path = tmp_path / "t.parquet"
    replace_file(path, [1])
    runs = []

    def read() -> int:
        runs.append(len(runs))
        raise ReadAgain("the file is older than the registry entry")

    with pytest.raises(TableUnavailable):
        read_unchanged([path], read, ["g/t"])

    assert len(runs) == MAX_READ_ATTEMPTS


def test_read_unchanged_busy_after_max_attempts(tmp_path: Path) -> None:
    path = tmp_path / "t.parquet"
    replace_file(path, [1])
    runs = []

    def read() -> int:
        runs.append(len(runs))
        replace_file(path, [len(runs)])
        return sum_of(path)

    with pytest.raises(TableBusy, match="g/t"):
        read_unchanged([path], read, ["g/t"])
    assert len(runs) == MAX_READ_ATTEMPTS


def test_read_unchanged_repeats_on_read_again(tmp_path: Path) -> None:
    path = tmp_path / "t.parquet"
    replace_file(path, [1])
    runs = []

    def read() -> int:
        runs.append(len(runs))
        if len(runs) < 3:
            raise ReadAgain("the registry entry is older than the file")
        return sum_of(path)

    assert read_unchanged([path], read, ["g/t"]) == 1
    assert runs == [0, 1, 2]
