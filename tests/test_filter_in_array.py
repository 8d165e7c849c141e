"""`__in` filters of page reads given as a JSON array, whose values may contain commas, next
to the comma-separated form."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pyarrow as pa
import pytest
from conftest import RunningServer, start_server, stop_server

from sqlstore.store import FeatureStore

TITLES = pa.table(
    {
        "entity_id": [1, 2, 3, 4],
        "title": ["Heat, The (1995)", "Up (2009)", "Heat", "[REC] (2007)"],
        "year": [1995, 2009, 1986, 2007],
    }
)


@pytest.fixture(scope="module")
def http(tmp_path_factory: pytest.TempPathFactory) -> Iterator[httpx.Client]:
    root = tmp_path_factory.mktemp("in_store")
    FeatureStore(root).write("g", "titles", TITLES)
    server: RunningServer = start_server(root, tmp_path_factory.mktemp("in_logs") / "server.log")
    with httpx.Client(base_url=server.base_url, timeout=30) as client:
        yield client
    stop_server(server)


def ids(response: httpx.Response) -> list[int]:
    assert response.status_code == 200, response.text
    return [row["entity_id"] for row in response.json()["data"]]


def test_json_array_keeps_commas(http: httpx.Client) -> None:
    params = {"title__in": '["Heat, The (1995)","Up (2009)"]'}

    assert ids(http.get("/features/g/titles", params=params)) == [1, 2]


def test_json_array_of_numbers(http: httpx.Client) -> None:
    assert ids(http.get("/features/g/titles", params={"year__in": "[1986, 2007]"})) == [3, 4]


def test_json_array_bracket_value(http: httpx.Client) -> None:
    params = {"title__in": '["[REC] (2007)"]'}

    assert ids(http.get("/features/g/titles", params=params)) == [4]


def test_comma_form_still_splits(http: httpx.Client) -> None:
    params = {"title__in": "Heat, The (1995),Up (2009)"}

    # The comma form reads three values: "Heat", " The (1995)" and "Up (2009)".
    assert ids(http.get("/features/g/titles", params=params)) == [2, 3]


@pytest.mark.parametrize(
    ("value", "fragment"),
    [
        ('["Up (2009)"', "invalid JSON array"),
        ("[1, null]", "item 1"),
        ('[["a"]]', "item 0"),
        ("[]", "needs 1 to"),
    ],
)
def test_malformed_json_array_is_400(http: httpx.Client, value: str, fragment: str) -> None:
    response = http.get("/features/g/titles", params={"title__in": value})

    assert response.status_code == 400
    message = response.json()["error"]["message"]
    assert "title__in" in message
    assert fragment in message
