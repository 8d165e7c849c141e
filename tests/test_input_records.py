"""Record values over HTTP against a real server: values of one JSON type per field are read back
exactly as written, and every other record gets a 400 that names the record and the field.

Cases that tests/test_api_errors.py covers already (scalar type mixes, nested objects, integers
beyond 64 bits, NaN and infinity, three wrong content types) are not repeated here.
"""

from __future__ import annotations

import io
import json
import math
from typing import Any

import httpx
import pyarrow.parquet as pq
import pytest
from conftest import RunningServer
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

PARQUET = "application/vnd.apache.parquet"
JSON_HEADERS = {"Content-Type": "application/json"}


@pytest.fixture(scope="module")
def server(module_server: RunningServer) -> RunningServer:
    return module_server


@pytest.fixture(scope="module")
def http(module_http: httpx.Client) -> httpx.Client:
    return module_http


def error_message(response: httpx.Response, status: int = 400) -> str:
    assert response.status_code == status, response.text
    return response.json()["error"]["message"]


def read_rows(http: httpx.Client, path: str) -> list[dict[str, Any]]:
    """Return every row of a table in write order, through the JSON page route."""
    response = http.get(path, params={"order_by": "row", "limit": 10_000})
    assert response.status_code == 200, response.text
    return response.json()["data"]


def assert_rows_match(rows: list[dict[str, Any]], records: list[dict[str, Any]]) -> None:
    """Check that each row has every written column, with the record's value or null."""
    columns = {key for record in records for key in record}
    assert len(rows) == len(records)
    for row, record in zip(rows, records, strict=True):
        assert set(row) == columns
        for column in columns:
            assert_same_values(row[column], record.get(column))


def assert_same_values(actual: Any, expected: Any) -> None:
    """Compare JSON values exactly: 1 and 1.0 are equal as numbers, but -0.0 and 0.0 are not."""
    if isinstance(expected, float):
        assert isinstance(actual, float | int), (actual, expected)
        assert actual == expected, (actual, expected)
        assert math.copysign(1, actual) == math.copysign(1, expected), (actual, expected)
    elif isinstance(expected, list):
        assert isinstance(actual, list), (actual, expected)
        assert len(actual) == len(expected), (actual, expected)
        for actual_item, expected_item in zip(actual, expected, strict=True):
            assert_same_values(actual_item, expected_item)
    else:
        assert type(actual) is type(expected), (actual, expected)
        assert actual == expected


# Values stored exactly as given

ROUND_TRIP_RECORDS = [
    {
        "row": 0,
        "count": -(2**63),
        "ratio": 0.1,
        "text": "",
        "flag": True,
        "numbers": [1, 2, 3],
        "words": [["a"], []],
    },
    {
        "row": 1,
        "count": 2**63 - 1,
        "ratio": 5e-324,
        "text": "naïve 東京 🚀 \u202eRTL\u202c",
        "flag": False,
        "numbers": [],
        "words": [["b", None], None],
    },
    {
        "row": 2,
        "count": 0,
        "ratio": 1.7976931348623157e308,
        "text": 'line\nbreak\ttab \\ quote " NUL \u0000 end',
        "numbers": [None, -(2**63)],
    },
    {"row": 3, "ratio": -0.0, "text": " leading and trailing spaces ", "flag": None},
    {"row": 4, "count": None, "ratio": 2.0, "nothing": None},
]


def test_round_trip_exact(http: httpx.Client) -> None:
    response = http.post("/features/records/round_trip", json={"records": ROUND_TRIP_RECORDS})
    assert response.status_code == 200, response.text

    rows = read_rows(http, "/features/records/round_trip")

    # Rows 2 to 4 lack some keys, which read back as null.
    assert_rows_match(rows, ROUND_TRIP_RECORDS)


def test_huge_string_round_trip(http: httpx.Client) -> None:
    text = "".join(chr(0x20 + index % 0x2000) for index in range(3_000_000))
    text = text.encode("utf-8", "ignore").decode()
    records = [{"row": 0, "text": text}, {"row": 1, "text": "short"}]

    response = http.post("/features/records/huge", json={"records": records})
    assert response.status_code == 200, response.text
    as_json = read_rows(http, "/features/records/huge")
    as_parquet = http.get(
        "/features/records/huge", params={"order_by": "row"}, headers={"Accept": PARQUET}
    )

    assert len(text) == 3_000_000
    assert as_json[0]["text"] == text
    assert as_json[1]["text"] == "short"
    assert pq.read_table(io.BytesIO(as_parquet.content))["text"].to_pylist() == [text, "short"]


# Rejections that name the record and the field

REJECTED_RECORDS = [
    pytest.param([[1], ["x"]], 1, "list of strings", id="list-element-types"),
    pytest.param([[1], [[1]]], 1, "list of lists", id="list-depths"),
    pytest.param([[1], 1], 1, "a number", id="list-and-scalar"),
    pytest.param(["a", ["a"]], 1, "a list", id="scalar-and-list"),
    pytest.param([None, [1, "x"]], 1, "mixes", id="mixed-list"),
    pytest.param([[True], [1, [1]]], 1, "mixes", id="list-and-scalar-elements"),
    pytest.param([[0.5], [2**53 + 1]], 1, "float64", id="inexact-integer-in-list"),
    pytest.param([[1], [2**64]], 1, "64 bits", id="big-integer-in-list"),
    pytest.param([1, None, 2, [{"a": 1}]], 3, "nested", id="object-in-list"),
]


@pytest.mark.parametrize(("values", "record", "reason"), REJECTED_RECORDS)
def test_inconsistent_values_rejected(
    http: httpx.Client, server: RunningServer, values: list[Any], record: int, reason: str
) -> None:
    records = [{"row": index, "x": value} for index, value in enumerate(values)]

    message = error_message(http.post("/features/records/rejected", json={"records": records}))

    assert message.startswith(f"record {record}, field 'x'")
    assert reason in message
    assert not (server.root / "features" / "records" / "rejected.parquet").exists()


def test_lone_surrogate_rejected(http: httpx.Client) -> None:
    body = b'{"records": [{"row": 0, "s": "fine"}, {"row": 1, "s": "bad \\ud800"}]}'

    response = http.post("/features/records/surrogate", content=body, headers=JSON_HEADERS)

    message = error_message(response)
    assert message.startswith("record 1, field 's'")
    assert "Unicode" in message


def test_invalid_key_names_record(http: httpx.Client) -> None:
    records = [{"row": 0}, {"row": 1}, {"row": 2, "bad key": 1}]

    message = error_message(http.post("/features/records/bad_key", json={"records": records}))

    assert message.startswith("record 2:")
    assert "'bad key'" in message


@pytest.mark.parametrize(
    "path",
    ["/features/records/not_utf8", "/features/batch", "/training-set", "/sql"],
)
def test_non_utf8_body_rejected(http: httpx.Client, server: RunningServer, path: str) -> None:
    body = b'{"records": [{"row": 0, "text": "caf\xe9"}]}'

    bad_byte = body.index(b"\xe9")

    message = error_message(http.post(path, content=body, headers=JSON_HEADERS))

    assert "not UTF-8" in message
    assert f"position {bad_byte}" in message
    assert not (server.root / "features" / "records" / "not_utf8.parquet").exists()


def nested_list(depth: int) -> str:
    return "[" * depth + "1" + "]" * depth


def test_lists_eight_deep_round_trip(http: httpx.Client) -> None:
    value = json.loads(nested_list(8))

    response = http.post("/features/records/deep", json={"records": [{"row": 0, "x": value}]})

    assert response.status_code == 200, response.text
    assert read_rows(http, "/features/records/deep") == [{"row": 0, "x": value}]


DEEP_LIST_BODIES = {
    "/features/records/too_deep": '{{"records": [{record}]}}',
    "/training-set": '{{"entities": [{record}], "features": ["records/round_trip"]}}',
}


@pytest.mark.parametrize("depth", [9, 500, 900])
@pytest.mark.parametrize("path", sorted(DEEP_LIST_BODIES))
def test_deep_lists_rejected(http: httpx.Client, path: str, depth: int) -> None:
    record = f'{{"entity_id": 1, "event_timestamp": "2024-05-01", "x": {nested_list(depth)}}}'
    body = DEEP_LIST_BODIES[path].format(record=record)

    message = error_message(http.post(path, content=body.encode(), headers=JSON_HEADERS))

    assert message == "record 0, field 'x': lists nest more than 8 levels deep; flatten the values"


@pytest.mark.parametrize("path", ["/features/records/too_deep", "/features/batch", "/sql"])
def test_body_nested_past_parser_rejected(http: httpx.Client, path: str) -> None:
    body = f'{{"records": [{{"x": {nested_list(5000)}}}]}}'.encode()

    message = error_message(http.post(path, content=body, headers=JSON_HEADERS))

    assert "nests arrays or objects too deeply" in message


@pytest.mark.parametrize("path", ["/features/records/huge_integer", "/features/batch", "/sql"])
def test_integer_of_5000_digits_rejected(http: httpx.Client, path: str) -> None:
    body = ('{"records": [{"x": 1' + "0" * 5000 + "}]}").encode()

    message = error_message(http.post(path, content=body, headers=JSON_HEADERS))

    assert "integer literal with more digits" in message
    assert "4300" in message
    assert "as a string" in message


@pytest.mark.parametrize(
    "content_type", ["multipart/form-data; boundary=x", "application/xml", "application/jsonx"]
)
def test_other_content_types_rejected(http: httpx.Client, content_type: str) -> None:
    body = json.dumps({"records": [{"row": 0}]}).encode()

    response = http.post(
        "/features/records/content_type", content=body, headers={"Content-Type": content_type}
    )

    assert error_message(response, 415).startswith(f"unsupported Content-Type {content_type!r}")


@pytest.mark.parametrize(
    "path", ["/sql", "/training-set", "/queries/any_name", "/get-online-features"]
)
def test_other_routes_reject_text_body(http: httpx.Client, path: str) -> None:
    body = json.dumps({"sql": "SELECT 1"}).encode()

    response = http.post(path, content=body, headers={"Content-Type": "text/plain"})

    assert error_message(response, 415).startswith("unsupported Content-Type 'text/plain'")


# Property: any records with one JSON type per field read back as written

SCALAR_TYPES = {
    "integer": st.integers(min_value=-(2**63), max_value=2**63 - 1),
    "float": st.floats(allow_nan=False, allow_infinity=False),
    "text": st.text(st.characters(exclude_categories=["Cs"]), max_size=30),
    "boolean": st.booleans(),
}


@st.composite
def typed_records(draw: st.DrawFn) -> list[dict[str, Any]]:
    """Draw up to 8 records whose fields each hold one JSON type (or a list of it), or null."""
    columns = draw(st.lists(st.from_regex(r"c[a-z0-9_]{0,6}", fullmatch=True), max_size=4))
    columns = list(dict.fromkeys(column.lower() for column in columns))
    value_strategies = {}
    for column in columns:
        scalar = SCALAR_TYPES[draw(st.sampled_from(sorted(SCALAR_TYPES)))]
        value = draw(st.sampled_from(["scalar", "list"]))
        values = scalar if value == "scalar" else st.lists(scalar | st.none(), max_size=3)
        value_strategies[column] = values | st.none()

    count = draw(st.integers(min_value=1, max_value=8))
    records = []
    for row in range(count):
        present = draw(st.lists(st.sampled_from(columns), unique=True)) if columns else []
        records.append({"row": row, **{c: draw(value_strategies[c]) for c in present}})
    return records


@given(records=typed_records())
@settings(
    max_examples=40,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
def test_typed_records_round_trip(http: httpx.Client, records: list[dict[str, Any]]) -> None:
    response = http.post("/features/records/property", json={"records": records})
    assert response.status_code == 200, response.text

    rows = read_rows(http, "/features/records/property")

    assert_rows_match(rows, records)


def test_records_logged_no_traceback(server: RunningServer) -> None:
    assert "Traceback" not in server.log()
