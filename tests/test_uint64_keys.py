"""uint64 keys above 2^63-1 over HTTP: filters bind them as UBIGINT, and entity lookups, in
DuckDB and in the online views, find them."""

from __future__ import annotations

import httpx
import pyarrow as pa
import pytest
from conftest import RunningServer

from sqlstore.store import FeatureStore, TableDefinition

TOP = 2**64 - 1
HALF = 2**63
KEYS = [TOP, HALF, 5]
TABLE = "wide/keys"


@pytest.fixture(scope="module")
def http(module_server: RunningServer, module_http: httpx.Client) -> httpx.Client:
    table = pa.table({"k": pa.array(KEYS, pa.uint64()), "v": ["top", "half", "small"]})
    FeatureStore(module_server.root).write(
        "wide", "keys", table, definition=TableDefinition(entity_key=["k"])
    )
    return module_http


def page_keys(http: httpx.Client, params: dict[str, str]) -> list[int]:
    response = http.get(f"/features/{TABLE}", params={**params, "order_by": "k"})
    assert response.status_code == 200, response.text
    return [row["k"] for row in response.json()["data"]]


@pytest.mark.parametrize(
    ("params", "expected"),
    [
        ({"k": str(TOP)}, [TOP]),
        ({"k__eq": str(HALF)}, [HALF]),
        ({"k__gte": str(HALF)}, [HALF, TOP]),
        ({"k__lt": str(TOP)}, [5, HALF]),
        ({"k__in": f"{TOP},5,-1"}, [5, TOP]),
        ({"k__gt": "-1"}, [5, HALF, TOP]),
    ],
)
def test_filter_selects_uint64_keys(
    http: httpx.Client, params: dict[str, str], expected: list[int]
) -> None:
    assert page_keys(http, params) == expected


def test_filter_beyond_uint64_is_400(http: httpx.Client) -> None:
    response = http.get(f"/features/{TABLE}", params={"k": str(2**64)})

    assert response.status_code == 400
    assert response.json()["error"]["message"] == (
        'invalid value "18446744073709551616" for filter k__eq: out of range; integers must fit '
        "in 64 bits (-2^63 to 2^64-1), and the column is uint64"
    )


@pytest.mark.parametrize("timestamp", [None, "2100-01-01T00:00:00Z"])
def test_batch_lookup_finds_uint64_keys(http: httpx.Client, timestamp: str | None) -> None:
    # Without a timestamp the lookup reads the online view, with one it runs in DuckDB.
    body = {"feature_names": [f"{TABLE}:v"], "entity_ids": [TOP, -3, HALF, 4]}
    if timestamp is not None:
        body["timestamp"] = timestamp

    response = http.post("/features/batch", json=body)

    assert response.status_code == 200, response.text
    content = response.json()
    assert content["features"][f"{TABLE}:v"] == [{"k": TOP, "v": "top"}, {"k": HALF, "v": "half"}]
    assert content["metadata"]["not_found"][f"{TABLE}:v"] == [-3, 4]


@pytest.mark.parametrize("repeats", [1, 4])
def test_online_lookup_finds_uint64_keys(http: httpx.Client, repeats: int) -> None:
    # One pass of four keys takes the few-keys path; four passes (16 keys) the numpy path.
    keys = [TOP, -3, HALF, 5] * repeats
    body = {"entities": {"k": keys}, "features": [f"{TABLE}:v"]}

    response = http.post("/get-online-features", json=body)

    assert response.status_code == 200, response.text
    found = response.json()["results"][1]
    assert found["values"] == ["top", None, "half", "small"] * repeats
    assert found["statuses"] == ["PRESENT", "NOT_FOUND", "PRESENT", "PRESENT"] * repeats


def test_online_lookup_arrow_echoes_uint64_keys(http: httpx.Client) -> None:
    keys = [TOP, HALF, 5]
    body = {"entities": {"k": keys}, "features": [f"{TABLE}:v"]}

    response = http.post(
        "/get-online-features", json=body, headers={"Accept": "application/vnd.apache.arrow.stream"}
    )

    assert response.status_code == 200, response.text
    table = pa.ipc.open_stream(response.content).read_all()
    assert table.schema.field("k").type == pa.uint64()
    assert table.column("k").to_pylist() == keys
    assert table.column(f"{TABLE}:v").to_pylist() == ["top", "half", "small"]


def test_online_lookup_arrow_negative_uint64_key_is_400(http: httpx.Client) -> None:
    body = {"entities": {"k": [TOP, -3]}, "features": [f"{TABLE}:v"]}

    response = http.post(
        "/get-online-features", json=body, headers={"Accept": "application/vnd.apache.arrow.stream"}
    )

    assert response.status_code == 400, response.text
    assert response.json()["error"]["message"] == (
        "invalid value -3 at entities.k[1]: the key column k is uint64, which cannot hold it, so "
        "no row has this key and a table response cannot carry it; remove it, or request JSON, "
        "which reports it NOT_FOUND"
    )
