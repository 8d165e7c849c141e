"""Page reads served from the memory tier before routing, and the stat-based file reader that
keys them: a hit sends exactly what the route sent, and a write or an invalidation is never
hidden by either."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

import httpx
import pytest
from conftest import RunningServer, start_server, stop_server
from prometheus_client.parser import text_string_to_metric_families

from sqlstore.atomic import write_bytes_atomically
from sqlstore.filestamps import SETTLED_NANOSECONDS, ReplacedFileReader

TIMESTAMP = "2024-01-01T00:00:00Z"
# Headers that differ between any two responses.
VOLATILE_HEADERS = {"date", "x-request-id", "x-cache"}
PAGE_QUERIES = [
    "",
    "?limit=2",
    "?limit=002",
    "?v__gte=20&limit=5",
    "?order_by=-v&columns=entity_id,v",
    "?entity_id=1&entity_id=2",
    "?limit=0",
    "?offset=1&limit=1",
]


def write_values(client: httpx.Client, values: list[int]) -> None:
    records = [
        {"entity_id": index + 1, "event_timestamp": TIMESTAMP, "v": value}
        for index, value in enumerate(values)
    ]
    response = client.post(
        "/features/fast/page",
        json={"records": records},
    )
    assert response.status_code == 200, response.text


def stable_headers(response: httpx.Response) -> dict[str, str]:
    return {k: v for k, v in response.headers.items() if k not in VOLATILE_HEADERS}


def page_requests(metrics_text: str) -> float:
    """Return the request count of the page route from a /metrics text."""
    total = 0.0
    for family in text_string_to_metric_families(metrics_text):
        for sample in family.samples:
            if (
                sample.name == "sqlstore_requests_total"
                and sample.labels.get("route") == "/features/{group}/{name}"
            ):
                total += sample.value
    return total


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    folder = tmp_path_factory.mktemp("fast_path")
    running = start_server(folder / "store", folder / "server.log")
    yield running
    stop_server(running)


@pytest.fixture
def client(server: RunningServer) -> Iterator[httpx.Client]:
    """A client of the module's server. Its table contains 10, 20, 30 at the start of a test."""
    with httpx.Client(base_url=server.base_url, timeout=30) as http:
        write_values(http, [10, 20, 30])
        yield http


@pytest.mark.parametrize("query", PAGE_QUERIES)
@pytest.mark.parametrize("accept", [None, "text/csv", "application/vnd.apache.arrow.stream"])
def test_memory_hit_sends_what_the_route_sent(
    client: httpx.Client, query: str, accept: str | None
) -> None:
    headers = {"accept": accept} if accept else {}
    first = client.get(f"/features/fast/page{query}", headers=headers)
    second = client.get(f"/features/fast/page{query}", headers=headers)

    assert first.status_code == 200, first.text
    assert first.headers["x-cache"] == "miss"
    assert second.headers["x-cache"] == "hit-memory"
    assert second.content == first.content
    assert stable_headers(second) == stable_headers(first)
    assert second.headers["x-request-id"] != first.headers["x-request-id"]


def test_memory_hits_are_counted_under_the_page_route(client: httpx.Client) -> None:
    client.get("/features/fast/page?limit=3")
    before = page_requests(client.get("/metrics").text)

    for _ in range(5):
        assert client.get("/features/fast/page?limit=3").headers["x-cache"] == "hit-memory"

    assert page_requests(client.get("/metrics").text) == before + 5


def test_write_is_seen_by_the_next_read(client: httpx.Client) -> None:
    for round_number in range(20):
        values = [round_number, round_number + 100]
        write_values(client, values)
        response = client.get("/features/fast/page?order_by=entity_id")
        assert [row["v"] for row in response.json()["data"]] == values


def test_invalidation_is_seen_by_the_next_read(client: httpx.Client) -> None:
    client.get("/features/fast/page")
    assert client.get("/features/fast/page").headers["x-cache"] == "hit-memory"

    assert client.delete("/cache/fast/page").status_code == 200

    assert client.get("/features/fast/page").headers["x-cache"] == "miss"


@pytest.mark.parametrize(
    ("path", "status"),
    [
        ("/features/fast/missing", 404),
        ("/features/fast/page?limit=-1", 422),
        ("/features/fast/page?limit=99999999", 400),
        ("/features/fast/page?limit=abc", 422),
        ("/features/Fast-x/page", 400),
    ],
)
def test_requests_the_route_rejects_are_still_rejected(
    client: httpx.Client, path: str, status: int
) -> None:
    client.get("/features/fast/page")

    response = client.get(path)

    assert response.status_code == status, response.text
    assert "x-cache" not in response.headers


def test_unsupported_accept_rejected_when_cached(client: httpx.Client) -> None:
    client.get("/features/fast/page")

    response = client.get("/features/fast/page", headers={"accept": "image/png"})

    assert response.status_code == 406
    assert "image/png" in response.json()["error"]["message"]


def counting_reader() -> tuple[ReplacedFileReader[bytes], list[bytes]]:
    parsed: list[bytes] = []

    def parse(file: BinaryIO) -> bytes:
        content = file.read()
        parsed.append(content)
        return content

    return ReplacedFileReader(parse), parsed


def settled_file(folder: Path, content: bytes) -> Path:
    """Write a file whose modification and change times are both older than the settle time."""
    path = folder / "entry"
    write_bytes_atomically(path, content)
    past = time.time_ns() - 10 * SETTLED_NANOSECONDS
    os.utime(path, ns=(past, past))
    # The change time cannot be set, so wait until it is settled too.
    time.sleep(SETTLED_NANOSECONDS / 1e9 + 0.05)
    return path


def test_reader_parses_a_settled_file_once(tmp_path: Path) -> None:
    path = settled_file(tmp_path, b"version 1")
    reader, parsed = counting_reader()

    assert reader.read(path) == b"version 1"
    assert reader.read(path) == b"version 1"
    assert parsed == [b"version 1"]


def test_reader_parses_a_recent_file_every_time(tmp_path: Path) -> None:
    path = tmp_path / "entry"
    write_bytes_atomically(path, b"version 1")
    reader, parsed = counting_reader()

    reader.read(path)
    reader.read(path)

    assert parsed == [b"version 1", b"version 1"]


def test_reader_sees_same_size_replacement(tmp_path: Path) -> None:
    path = settled_file(tmp_path, b"version 1")
    reader, _ = counting_reader()
    assert reader.read(path) == b"version 1"
    modified = path.stat().st_mtime_ns

    write_bytes_atomically(path, b"version 2")
    os.utime(path, ns=(modified, modified))

    assert reader.read(path) == b"version 2"


def test_reader_raises_for_a_deleted_file(tmp_path: Path) -> None:
    path = tmp_path / "entry"
    write_bytes_atomically(path, b"version 1")
    reader, _ = counting_reader()
    reader.read(path)

    path.unlink()

    with pytest.raises(FileNotFoundError):
        reader.read(path)
