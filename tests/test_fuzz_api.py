"""Property-based fuzzing of every REST operation from the server's own OpenAPI schema.

Schemathesis generates valid and invalid requests from /openapi.json and sends them to a real
server on a temporary store that contains the MovieLens demo tables and two small tables. About
half of the path parameters name a stored table or named query, so that requests get past the
404, and writes and batch lookups also get bodies with plausible column and table names. Each
response must not be a server error, and must have a documented status code and content type
and match the schema declared for that status.

The examples are derandomized, so every run sends the same requests; run with
SQLSTORE_FUZZ_EXAMPLES=500 and a `--hypothesis-seed` to search further.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import schemathesis
from conftest import RunningServer, start_server, stop_server
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from sqlstore.api.app import create_app
from sqlstore.demo import build_demo_store
from sqlstore.settings import Settings
from sqlstore.store import FeatureStore

# Requests per operation. The default keeps the module near 20 s on a 2-core machine; set
# SQLSTORE_FUZZ_EXAMPLES to search longer.
EXAMPLES_PER_OPERATION = int(os.environ.get("SQLSTORE_FUZZ_EXAMPLES", "50"))
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
]
SMALL_TABLES = {
    ("fuzz", "scores"): [
        {
            "entity_id": index,
            "event_timestamp": f"2024-05-0{index + 1}T12:00:00Z",
            "score": index / 4,
            "label": f"label {index}",
            "tags": ["a", "b"][: index % 3],
        }
        for index in range(5)
    ],
    ("fuzz", "pairs"): [
        {"user_id": user, "item_id": f"item{item}", "clicks": user * 10 + item}
        for user in range(3)
        for item in range(2)
    ],
}


def write_small_tables(base_url: str) -> None:
    for (group, name), records in SMALL_TABLES.items():
        body: dict[str, Any] = {"records": records}
        if name == "pairs":
            body["entity_key"] = ["user_id", "item_id"]
        response = httpx.post(f"{base_url}/features/{group}/{name}", json=body, timeout=30)
        response.raise_for_status()


@pytest.fixture(scope="module")
def fuzz_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    root = tmp_path_factory.mktemp("fuzz_store")
    build_demo_store(FeatureStore(root))
    log_path = tmp_path_factory.mktemp("fuzz_logs") / "server.log"
    server = start_server(root, log_path, env={"SQLSTORE_SQL_TIME_LIMIT_SECONDS": "2"})
    write_small_tables(server.base_url)
    yield server
    stop_server(server)


def operation_labels() -> list[tuple[str, str]]:
    """Return (method, path) of every operation in the OpenAPI schema, built without a store."""
    app = create_app(Settings(root=Path("unused")))
    return [
        (method.upper(), path)
        for path, operations in app.openapi()["paths"].items()
        for method in operations
    ]


@pytest.fixture(scope="module")
def api_schema(fuzz_server: RunningServer) -> schemathesis.BaseSchema:
    return schemathesis.openapi.from_url(f"{fuzz_server.base_url}/openapi.json")


@pytest.fixture(scope="module")
def stored_path_values(fuzz_server: RunningServer) -> list[dict[str, str]]:
    """Return path parameters naming each stored table and each named query."""
    base_url = fuzz_server.base_url
    tables = httpx.get(f"{base_url}/features", timeout=30).json()["tables"]
    queries = httpx.get(f"{base_url}/queries", timeout=30).json()["queries"]
    values = [{"group": table["group"], "name": table["name"]} for table in tables]
    values += [{"name": query["name"]} for query in queries]
    return values


COLUMN_NAMES = st.sampled_from(["entity_id", "event_timestamp", "score", "label", "Label", "x"])
SCALARS = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**64), max_value=2**64)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20)
    | st.sampled_from(["2024-05-01T12:00:00Z", "2024-05-01", "2024-05-01 12:00:00.123456789+02:00"])
)
JSON_VALUES = st.recursive(
    SCALARS,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(), inner),
    max_leaves=8,
)


def write_bodies() -> st.SearchStrategy[dict[str, Any]]:
    """Return write bodies with plausible column names, so that writes often succeed."""
    records = st.lists(
        st.dictionaries(COLUMN_NAMES, JSON_VALUES, min_size=1, max_size=5), min_size=1, max_size=4
    )
    options = st.fixed_dictionaries(
        {},
        optional={
            "mode": st.sampled_from(["overwrite", "append"]),
            "entity_key": st.sampled_from(["entity_id", "label", ["entity_id", "label"]]),
            "timestamp_column": st.sampled_from(["event_timestamp", "score"]),
            "ttl_seconds": st.sampled_from([0, 1.5, 86400]),
        },
    )
    return st.tuples(records, options).map(lambda pair: {"records": pair[0], **pair[1]})


def batch_bodies(stored: list[dict[str, str]]) -> st.SearchStrategy[dict[str, Any]]:
    """Return lookups of stored tables for small integer, text and composite entity ids."""
    tables = [f"{v['group']}/{v['name']}" for v in stored if "group" in v]
    entity_id = st.integers(-3, 10) | st.text(max_size=5)
    composite = st.fixed_dictionaries(
        {"user_id": st.integers(0, 3), "item_id": st.text(max_size=6)}
    )
    return st.fixed_dictionaries(
        {
            "feature_names": st.lists(st.sampled_from(tables), min_size=1, max_size=2),
            "entity_ids": st.lists(entity_id | composite, max_size=4),
        },
        optional={"timestamp": st.sampled_from(["2024-05-03T00:00:00Z", 1714694400, "1999"])},
    )


def case_strategy(operation: Any, stored: list[dict[str, str]]) -> st.SearchStrategy:
    """Return valid and invalid requests. When the operation has path parameters, half of them
    name stored tables or queries; writes and lookups also get bodies of plausible fields."""
    modes = (GenerationMode.POSITIVE, GenerationMode.NEGATIVE)
    generated = st.one_of([operation.as_strategy(mode) for mode in modes])

    names = {parameter.name for parameter in operation.path_parameters}
    matching = [values for values in stored if set(values) == names]
    if matching:
        named = st.sampled_from(matching).flatmap(
            lambda values: st.one_of(
                [operation.as_strategy(mode, path_parameters=values) for mode in modes]
            )
        )
        generated = generated | named

    label = (operation.method.upper(), operation.path)
    if label == ("POST", "/features/{group}/{name}"):
        targets = st.sampled_from([{"group": "fuzz", "name": n} for n in ("scores", "fresh")])
        bodies = st.tuples(targets, write_bodies())
        planned = bodies.flatmap(
            lambda pair: operation.as_strategy(path_parameters=pair[0], body=pair[1])
        )
        generated = generated | planned
    elif label == ("POST", "/features/batch"):
        generated = generated | batch_bodies(stored).flatmap(
            lambda body: operation.as_strategy(body=body)
        )
    return generated


@pytest.mark.parametrize(("method", "path"), operation_labels())
def test_operation_conforms(
    method: str,
    path: str,
    api_schema: schemathesis.BaseSchema,
    stored_path_values: list[dict[str, str]],
    fuzz_server: RunningServer,
) -> None:
    operation = api_schema[path][method]

    @given(case=case_strategy(operation, stored_path_values))
    @settings(
        max_examples=EXAMPLES_PER_OPERATION,
        deadline=None,
        suppress_health_check=list(HealthCheck),
        derandomize=True,
        database=None,
    )
    def check(case: schemathesis.Case) -> None:
        case.call_and_validate(base_url=fuzz_server.base_url, checks=CHECKS, timeout=30)

    check()


def test_fuzzed_server_logged_no_traceback(fuzz_server: RunningServer) -> None:
    assert "Traceback" not in fuzz_server.log()
