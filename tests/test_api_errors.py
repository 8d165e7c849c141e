"""REST API error tests against real servers: one error shape, hostile names and bad input.

Every error must be JSON `{"error": {"code", "message", "request_id"}}` with the same id in the
X-Request-ID header, and no request may produce a 500. Requests with hostile group or table
names go to a server whose store root sits in a sandbox folder, and each test checks that no
file in the sandbox changed.
"""

from __future__ import annotations

import asyncio
import gzip
import http.client as http_client
import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import RunningServer, start_server, stop_server
from fastapi import FastAPI

from sqlstore.api.errors import install_error_handlers

MOVIE_GENRES = "/features/content/movie_genres"
INTERACTIONS = "/features/interaction/user_movie_interactions"
MAX_LIMIT = 10_000
SENTINEL = "sentinel-7f3a9c"
BATCH_BODY = '{"feature_names": ["content/movie_genres"], "entity_ids": [1]}'
HEX_DIGITS = set("0123456789abcdef")


def assert_error(response: httpx.Response, status: int, code: str | None = None) -> str:
    """Check the shared error shape and return the message."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/json"
    body = response.json()
    assert set(body) == {"error"}
    error = body["error"]
    assert {"code", "message", "request_id"} <= set(error)
    assert set(error) <= {"code", "message", "request_id", "details"}
    assert isinstance(error["code"], str)
    assert error["message"]
    assert error["request_id"] == response.headers["X-Request-ID"]
    if code is not None:
        assert error["code"] == code
    return error["message"]


def raw_request(
    base_url: str,
    method: str,
    path: str,
    body: bytes | None = None,
    headers: dict[str, str] | None = None,
) -> httpx.Response:
    """Send `path` byte for byte; httpx would remove `..` segments before sending."""
    address = urlsplit(base_url)
    connection = http_client.HTTPConnection(address.hostname, address.port, timeout=30)
    try:
        connection.putrequest(method, path, skip_accept_encoding=True)
        for name, value in (headers or {}).items():
            connection.putheader(name, value)
        if body is not None:
            connection.putheader("Content-Length", str(len(body)))
        connection.endheaders(body)
        reply = connection.getresponse()
        return httpx.Response(reply.status, headers=reply.getheaders(), content=reply.read())
    finally:
        connection.close()


def snapshot(folder: Path) -> dict[str, tuple[int, int]]:
    """Map every file and folder under `folder` to its size and modification time, except the
    store root's `cache/` folder, which the server writes on every request (metrics, results)."""
    return {
        str(path.relative_to(folder)): (path.stat().st_size, path.stat().st_mtime_ns)
        for path in sorted(folder.rglob("*"))
        if "cache" not in path.relative_to(folder).parts[1:2]
    }


@pytest.fixture(scope="module")
def http(demo_server: RunningServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=demo_server.base_url, timeout=30) as client:
        yield client


@pytest.fixture(scope="module")
def error_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    """A server on an empty store for failing writes. Each test uses its own table."""
    folder = tmp_path_factory.mktemp("api_errors")
    server = start_server(folder / "store", folder / "server.log")
    yield server
    stop_server(server)


@pytest.fixture(scope="module")
def writer(error_server: RunningServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=error_server.base_url, timeout=30) as client:
        yield client


@pytest.fixture(scope="module")
def sandbox(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, RunningServer]]:
    """A store root inside a sandbox folder that also holds files a request must never reach.

    The store contains one table, `safe/table`. Parquet files with the sentinel value lie next
    to the root and in a copy of the store layout beside it.
    """
    folder = tmp_path_factory.mktemp("sandbox")
    secret = pa.table({"entity_id": [1], "secret": [SENTINEL]})
    (folder / "outside" / "features" / "secret").mkdir(parents=True)
    pq.write_table(secret, folder / "outside" / "features" / "secret" / "data.parquet")
    pq.write_table(secret, folder / "secret.parquet")

    log_path = tmp_path_factory.mktemp("sandbox_log") / "server.log"
    server = start_server(folder / "store", log_path)
    response = httpx.post(
        f"{server.base_url}/features/safe/table", json={"records": [{"entity_id": 1, "x": 2}]}
    )
    assert response.status_code == 200, response.text
    yield folder, server
    stop_server(server)


# The error shape


SHAPE_CASES = [
    ("GET", "/no/such/route", {}, 404, "not_found"),
    ("GET", "/features/content/no_such_table", {}, 404, "not_found"),
    ("GET", "/features/content/no_such_table/info", {}, 404, "not_found"),
    ("PUT", MOVIE_GENRES, {}, 405, "method_not_allowed"),
    ("GET", "/features/Content/movie_genres", {}, 400, "invalid_identifier"),
    ("GET", MOVIE_GENRES, {"params": {"offset": -1}}, 422, "validation_error"),
    ("GET", MOVIE_GENRES, {"params": {"nope": 1}}, 400, "invalid_input"),
    ("POST", "/features/batch", {"json": {"feature_names": []}}, 422, "validation_error"),
    (
        "POST",
        "/features/batch",
        {"content": b"{", "headers": {"content-type": "application/json"}},
        400,
        "invalid_input",
    ),
]


@pytest.mark.parametrize(
    ("method", "path", "options", "status", "code"),
    SHAPE_CASES,
    ids=[f"{case[3]}-{case[1]}" for case in SHAPE_CASES],
)
def test_error_shape(http: httpx.Client, method, path, options, status, code) -> None:
    assert_error(http.request(method, path, **options), status, code)


@pytest.mark.parametrize(
    ("method", "path", "allowed"),
    [
        ("DELETE", "/sql", "GET, HEAD, POST"),
        ("PUT", MOVIE_GENRES, "DELETE, GET, HEAD, POST"),
        ("POST", f"{MOVIE_GENRES}/info", "GET, HEAD"),
        ("POST", "/health", "GET, HEAD"),
    ],
)
def test_405_names_allowed_methods(
    http: httpx.Client, method: str, path: str, allowed: str
) -> None:
    response = http.request(method, path)

    message = assert_error(response, 405, "method_not_allowed")
    assert response.headers["Allow"] == allowed
    assert message == f"method {method} is not allowed on {path}; use {allowed}"


@pytest.mark.parametrize("path", ["/health", f"{MOVIE_GENRES}?limit=2", "/queries"])
def test_head_like_get_without_body(http: httpx.Client, path: str) -> None:
    head = http.head(path)
    get = http.get(path)

    assert head.status_code == 200
    assert head.content == b""
    assert head.headers["content-type"] == get.headers["content-type"]
    assert head.headers["content-length"] == get.headers["content-length"]


def test_head_on_post_route_is_405(http: httpx.Client) -> None:
    response = http.head("/features/batch")

    assert response.status_code == 405
    assert response.headers["Allow"] == "POST"
    assert response.content == b""


@pytest.mark.parametrize(
    ("field", "value", "quoted"),
    [
        ("limit", True, "true"),
        ("limit", "2", '"2"'),
        ("limit", 1000.0, "1000.0"),
        ("limit", -1, "-1"),
        ("other", {"a": [1]}, '{"a":[1]}'),
    ],
)
def test_422_quotes_value(http: httpx.Client, field: str, value: Any, quoted: str) -> None:
    response = http.post("/sql", json={"sql": "SELECT 1", field: value})

    message = assert_error(response, 422, "validation_error")
    assert message.startswith(f"invalid request: body.{field}: ")
    assert message.endswith(f" (got {quoted})")


@pytest.mark.parametrize(
    ("path", "raw", "quoted"),
    [
        ("/sql", b'{"sql": 123456789012345678901234567890}', "123456789012345678901234567890"),
        ("/sql", b'{"sql": "SELECT 1", "limit": {"\\ud800": 1}}', '{"\\ud800":1}'),
        ("/sql", b'{"sql": "SELECT 1", "limit": NaN}', "NaN"),
        (
            "/sql",
            b'{"sql": "SELECT 1", "limit": ' + b"[" * 900 + b"]" * 900 + b"}",
            "[" * 100 + "…",
        ),
        (
            "/features/batch",
            b'{"feature_names": ["content/movie_genres"], "entity_ids": [1], "timestamp": [[]]}',
            "[[]]",
        ),
    ],
)
def test_422_quotes_any_json_value(http: httpx.Client, path: str, raw: bytes, quoted: str) -> None:
    response = http.post(path, content=raw, headers={"Content-Type": "application/json"})

    message = assert_error(response, 422, "validation_error")
    assert f" (got {quoted})" in message


def test_online_quotes_deep_key(http: httpx.Client) -> None:
    deep = b"[" * 990 + b"]" * 990
    raw = b'{"features": ["content/movie_genres:title"], "entities": {"movie_id": [' + deep + b"]}}"
    response = http.post(
        "/get-online-features", content=raw, headers={"Content-Type": "application/json"}
    )

    message = assert_error(response, 400, "invalid_input")
    assert message.startswith("invalid value [[[[[[[...]]]]]]] at entities.movie_id[0]: ")


def test_422_cuts_long_values(http: httpx.Client) -> None:
    response = http.post("/sql", json={"sql": "SELECT 1", "limit": "9" * 500})

    message = assert_error(response, 422, "validation_error")
    assert message.endswith(f' (got "{"9" * 99}…)')


def test_422_missing_field_unquoted(http: httpx.Client) -> None:
    message = assert_error(http.post("/sql", json={"params": {}}), 422, "validation_error")

    assert message == "invalid request: body.sql: Field required"


def test_422_stops_at_first_bad_record(writer: httpx.Client) -> None:
    response = writer.post("/features/errors/flood", json={"records": [1] * 100_000})

    message = assert_error(response, 422, "validation_error")
    assert message == (
        "invalid request: body.records.0: Input should be a valid dictionary (got 1)"
    )
    assert len(response.json()["error"]["details"]) == 1


def test_422_lists_at_most_20_errors(http: httpx.Client) -> None:
    # extra="forbid" reports each unknown field: 30 errors.
    body = {"sql": "SELECT 1", **{f"field_{index:02}": index for index in range(30)}}
    response = http.post("/sql", json=body)

    message = assert_error(response, 422, "validation_error")
    details = response.json()["error"]["details"]
    assert len(details) == 20
    assert details[0]["location"] == "body.field_00"
    assert details[-1]["location"] == "body.field_19"
    assert message.startswith("invalid request: body.field_00: ")
    assert message.endswith("; and 25 more")


@pytest.mark.parametrize("literal", [b"Infinity", b"NaN"])
def test_ttl_must_be_finite(writer: httpx.Client, literal: bytes) -> None:
    raw = b'{"records": [{"entity_id": 1}], "ttl_seconds": ' + literal + b"}"
    response = writer.post(
        "/features/finite/t", content=raw, headers={"Content-Type": "application/json"}
    )

    message = assert_error(response, 422, "validation_error")
    assert message.startswith("invalid request: body.ttl_seconds: Input should be a finite number")


@pytest.mark.parametrize(
    ("path", "body", "location"),
    [
        ("/features/batch", {**json.loads(BATCH_BODY), "timestamp": True}, "body.timestamp.str"),
        (
            "/features/bools/t",
            {"records": [{"entity_id": 1}], "ttl_seconds": True},
            "body.ttl_seconds",
        ),
        (
            "/training-set",
            {
                "entities": [{"movie_id": 1}],
                "features": ["content/movie_genres"],
                "ttl_seconds": {"content/movie_genres": True},
            },
            "body.ttl_seconds.content/movie_genres",
        ),
    ],
)
def test_boolean_is_not_a_number(
    writer: httpx.Client, path: str, body: dict[str, Any], location: str
) -> None:
    response = writer.post(path, json=body)

    assert_error(response, 422, "validation_error")
    locations = [detail["location"] for detail in response.json()["error"]["details"]]
    assert location in locations


@pytest.mark.parametrize(
    ("path", "raw", "start"),
    [
        (
            "/sql",
            b'{"sql": "SELECT 1", "params": {"\\ud800": 1}}',
            "parameter '\\ud800' is not used by the query",
        ),
        (
            "/sql",
            b'{"sql": "SELECT $x AS x", "params": {"x": "\\ud800"}}',
            'invalid value for parameter $x: "\\ud800" contains a lone UTF-16 surrogate',
        ),
        (
            "/features/surrogate/t",
            b'{"records": [{"entity_id": 1}], "tags": ["\\ud800"]}',
            "invalid request: body.tags: Value error, contains a lone UTF-16 surrogate",
        ),
        (
            "/get-online-features",
            b'{"entities": {"movie_id": [1]}, "features": [' + b"[" * 990 + b"]" * 990 + b"]}",
            "invalid feature [[[[[[[...]]]]]]] in features",
        ),
    ],
)
def test_unusual_strings_get_4xx(writer: httpx.Client, path: str, raw: bytes, start: str) -> None:
    response = writer.post(path, content=raw, headers={"Content-Type": "application/json"})

    assert 400 <= response.status_code < 500, response.text
    assert response.json()["error"]["message"].startswith(start)


def test_nul_inside_body_named(http: httpx.Client) -> None:
    raw = b'{"sql": "SEL\x00ECT 1"}'
    response = http.post("/sql", content=raw, headers={"Content-Type": "application/json"})

    message = assert_error(response, 400, "invalid_input")
    assert (
        message
        == "invalid JSON body: Invalid control character at character 12; send one JSON object"
    )


def test_request_id_echoed(http: httpx.Client) -> None:
    response = http.get("/features/content/no_such_table", headers={"X-Request-ID": "trace-42.a"})

    assert_error(response, 404)
    assert response.headers["X-Request-ID"] == "trace-42.a"
    assert response.json()["error"]["request_id"] == "trace-42.a"


@pytest.mark.parametrize("unsafe", ["x" * 65, "has space", "semi;colon", ""])
def test_unsafe_request_id_replaced(http: httpx.Client, unsafe: str) -> None:
    response = http.get("/features/content/no_such_table", headers={"X-Request-ID": unsafe})
    request_id = response.headers["X-Request-ID"]

    assert_error(response, 404)
    assert request_id != unsafe
    assert len(request_id) == 32
    assert set(request_id) <= HEX_DIGITS


def test_success_has_request_id(http: httpx.Client) -> None:
    response = http.get("/health")

    assert len(response.headers["X-Request-ID"]) == 32


# Hostile group and table names


HOSTILE_PATHS = [
    ("/features/../safe/table", 404),
    ("/features/../table", 400),
    ("/features/safe/..", 400),
    ("/features/%2e%2e/table", 400),
    ("/features/safe/%2e%2e", 400),
    ("/features/..%2F..%2Foutside/secret", 400),
    ("/features/%2e%2e%2foutside%2ffeatures%2fsecret/data", 400),
    ("/features/%2Fetc/passwd", 400),
    ("/features/safe/%2Fetc%2Fpasswd", 400),
    ("/features/safe/table%00", 400),
    ("/features/%00/table", 400),
    ("/features/safe/table%0a", 400),
    ("/features/safe/table%20", 400),
    ("/features/Safe/table", 400),
    ("/features/safe/TABLE", 400),
    ("/features/main/table", 400),
    ("/features/information_schema/tables", 400),
    ("/features/pg_catalog/pg_tables", 400),
    ("/features/temp/table", 400),
    ("/features/" + "a" * 64 + "/table", 400),
    ("/features/safe/" + "a" * 5000, 400),
    ("/features/s%D0%B0fe/table", 400),  # Cyrillic a
    ("/features/safe/t%EF%BD%81ble", 400),  # fullwidth a
    ("/features/safe/ta%E2%80%8Bble", 400),  # zero-width space
    ("/features/%C5%BFafe/table", 400),  # long s, which folds to s
    ("/features/1safe/table", 400),
]


@pytest.mark.parametrize(("path", "status"), HOSTILE_PATHS, ids=[p[0][:60] for p in HOSTILE_PATHS])
@pytest.mark.parametrize("method", ["GET", "POST", "DELETE"])
def test_hostile_name_touches_nothing(sandbox, method: str, path: str, status: int) -> None:
    folder, server = sandbox
    before = snapshot(folder)
    body = json.dumps({"records": [{"entity_id": 1, "secret": "overwritten"}]}).encode()
    headers = {"Content-Type": "application/json"}
    if method == "POST":
        response = raw_request(server.base_url, method, path, body, headers)
    else:
        response = raw_request(server.base_url, method, path)

    assert_error(response, status)
    assert SENTINEL not in response.text
    assert snapshot(folder) == before


@pytest.mark.parametrize(
    ("path", "status"),
    [
        ("/features/%2e%2e/table/info", 400),
        ("/features/main/table/info", 400),
        ("/features/safe/..%2F..%2F/info", 400),
    ],
)
def test_hostile_info_path(sandbox, path: str, status: int) -> None:
    _, server = sandbox
    response = raw_request(server.base_url, "GET", path)

    assert_error(response, status)
    assert SENTINEL not in response.text


@pytest.mark.parametrize(
    ("name", "status", "code"),
    [
        ("../outside/features/secret/data", 400, "invalid_input"),
        ("outside/features/secret/data", 400, "invalid_input"),
        ("secret/data", 404, "not_found"),
        ("/etc/passwd", 400, "invalid_input"),
        ("safe/table/../../secret", 400, "invalid_input"),
        ("safe/../secret", 400, "invalid_input"),
        ("information_schema/tables", 400, "invalid_identifier"),
        ("main.secret", 400, "invalid_identifier"),
    ],
)
def test_hostile_batch_name(sandbox, name: str, status: int, code: str) -> None:
    folder, server = sandbox
    before = snapshot(folder)
    response = httpx.post(
        f"{server.base_url}/features/batch", json={"feature_names": [name], "entity_ids": [1]}
    )

    assert_error(response, status, code)
    assert SENTINEL not in response.text
    assert snapshot(folder) == before


def test_hostile_column_name(sandbox) -> None:
    folder, server = sandbox
    before = snapshot(folder)
    response = httpx.post(
        f"{server.base_url}/features/hostile/columns",
        json={"records": [{'x"; DROP TABLE y; --': 1}]},
    )

    assert_error(response, 400, "invalid_identifier")
    assert snapshot(folder) == before


def test_sandbox_table_intact(sandbox) -> None:
    _, server = sandbox
    body = httpx.get(f"{server.base_url}/features/safe/table").json()

    assert body["data"] == [{"entity_id": 1, "x": 2}]
    assert body["metadata"]["version"] == 1


# Request bodies


def test_malformed_json(writer: httpx.Client) -> None:
    response = writer.post(
        "/features/bad/json", content=b'{"records": [', headers={"Content-Type": "application/json"}
    )

    assert_error(response, 400, "invalid_input")
    assert "invalid JSON body: " in response.json()["error"]["message"]
    assert "at character 13" in response.json()["error"]["message"]


BOM_MESSAGE = (
    "the request body starts with a byte order mark; send JSON encoded as UTF-8 without one"
)


def nul_message(position: int) -> str:
    return (
        f"the request body is not UTF-8 JSON: it has a NUL byte at position {position}, as "
        "UTF-16 and UTF-32 text does; send JSON encoded as UTF-8"
    )


ONLINE_BODY = '{"features": ["content/movie_genres:title"], "entities": {"movie_id": [1]}}'


@pytest.mark.parametrize(
    ("path", "body", "expected"),
    [
        ("/features/batch", BATCH_BODY.encode("utf-16"), BOM_MESSAGE),
        ("/features/batch", BATCH_BODY.encode("utf-16-le"), nul_message(1)),
        ("/features/batch", BATCH_BODY.encode("utf-32-le"), nul_message(1)),
        ("/features/batch", b"\xef\xbb\xbf" + BATCH_BODY.encode(), BOM_MESSAGE),
        ("/sql", b'\x00{"sql": "SELECT 1"}', nul_message(0)),
        ("/sql", b'\x00{"sql":"SELECT 1"}', nul_message(0)),
        ("/sql", b'{\x00"sql": "SELECT 1"}', nul_message(1)),
        ("/training-set", b"\xfe\xff\x00{", BOM_MESSAGE),
        ("/get-online-features", ONLINE_BODY.encode("utf-16"), BOM_MESSAGE),
        ("/get-online-features", ONLINE_BODY.encode("utf-16-be"), nul_message(0)),
        ("/get-online-features", b"\xef\xbb\xbf" + ONLINE_BODY.encode(), BOM_MESSAGE),
    ],
)
def test_body_not_plain_utf8(http: httpx.Client, path: str, body: bytes, expected: str) -> None:
    response = http.post(path, content=body, headers={"Content-Type": "application/json"})

    assert assert_error(response, 400, "invalid_input") == expected


@pytest.mark.parametrize("path", ["/sql", "/features/batch", "/get-online-features"])
def test_compressed_body_is_415(http: httpx.Client, path: str) -> None:
    headers = {"Content-Type": "application/json", "Content-Encoding": "gzip"}
    response = http.post(path, content=gzip.compress(b'{"sql": "SELECT 1"}'), headers=headers)

    message = assert_error(response, 415)
    assert message == "unsupported Content-Encoding 'gzip': send the body uncompressed"


@pytest.mark.parametrize(
    ("path", "body"),
    [("/sql", '{"sql": "SELECT 7 AS seven"}'), ("/get-online-features", ONLINE_BODY)],
)
def test_fast_lane_content_encoding_415(http: httpx.Client, path: str, body: str) -> None:
    plain = {"Content-Type": "application/json"}
    assert http.post(path, content=body, headers=plain).status_code == 200

    for encoding in ("gzip", "br"):
        headers = {**plain, "Content-Encoding": encoding}
        response = http.post(path, content=body, headers=headers)

        assert_error(response, 415)


@pytest.mark.parametrize(
    "content_type", ["text/plain", "application/x-www-form-urlencoded", "text/csv"]
)
def test_wrong_content_type(writer: httpx.Client, error_server: RunningServer, content_type: str):
    body = json.dumps({"records": [{"entity_id": 1}]}).encode()
    response = writer.post(
        "/features/bad/content_type", content=body, headers={"Content-Type": content_type}
    )
    message = assert_error(response, 415, "unsupported_media_type")

    assert content_type in message
    assert not (error_server.root / "features" / "bad" / "content_type.parquet").exists()


@pytest.mark.parametrize(
    "path", ["/features/bad/no_type", "/features/batch", "/sql", "/get-online-features"]
)
def test_missing_content_type(writer: httpx.Client, error_server: RunningServer, path: str):
    body = json.dumps({"records": [{"entity_id": 1}]}).encode()
    response = writer.post(path, content=body)

    assert "content-type" not in response.request.headers
    message = assert_error(response, 415, "unsupported_media_type")

    assert "missing Content-Type" in message
    assert not (error_server.root / "features" / "bad" / "no_type.parquet").exists()


def test_batch_wrong_content_type(http: httpx.Client) -> None:
    body = json.dumps({"feature_names": ["movie_genres"], "entity_ids": [1]}).encode()
    response = http.post("/features/batch", content=body, headers={"Content-Type": "text/plain"})

    assert_error(response, 415, "unsupported_media_type")


def test_unknown_write_field(writer: httpx.Client) -> None:
    response = writer.post("/features/bad/field", json={"records": [{"entity_id": 1}], "rows": []})
    details = response.json()["error"]["details"]

    assert_error(response, 422, "validation_error")
    assert [detail["location"] for detail in details] == ["body.rows"]


def test_unknown_batch_field(http: httpx.Client) -> None:
    body = {"feature_names": ["movie_genres"], "entity_ids": [1], "as_of": "2020-01-01"}
    response = http.post("/features/batch", json=body)

    assert_error(response, 422, "validation_error")
    assert "as_of" in response.json()["error"]["message"]


def test_records_not_objects(writer: httpx.Client) -> None:
    response = writer.post("/features/bad/shape", json={"records": [1, 2]})

    assert_error(response, 422, "validation_error")


def test_empty_records(writer: httpx.Client) -> None:
    response = writer.post("/features/bad/empty", json={"records": []})
    message = assert_error(response, 400, "invalid_input")

    assert "empty" in message


def test_inconsistent_types(writer: httpx.Client) -> None:
    records = [{"entity_id": 1, "x": 1}, {"entity_id": 2, "x": 2}, {"entity_id": 3, "x": "three"}]
    message = assert_error(writer.post("/features/bad/types", json={"records": records}), 400)

    assert "record 2" in message
    assert "'x'" in message


@pytest.mark.parametrize("value", [{"a": 1}, [{"a": 1}], [[{"a": 1}]]])
def test_nested_object(writer: httpx.Client, value: Any) -> None:
    records = [{"entity_id": 1, "x": None}, {"entity_id": 2, "x": value}]
    message = assert_error(writer.post("/features/bad/nested", json={"records": records}), 400)

    assert "record 1" in message
    assert "'x'" in message
    assert "nested" in message


@pytest.mark.parametrize("value", [2**64, 2**63, -(2**63) - 1, 10**30])
def test_integer_over_64_bits(writer: httpx.Client, value: int) -> None:
    records = [{"entity_id": 1, "big": 5}, {"entity_id": 2, "big": value}]
    message = assert_error(writer.post("/features/bad/big", json={"records": records}), 400)

    assert "record 1" in message
    assert "'big'" in message


@pytest.mark.parametrize("literal", ["NaN", "Infinity", "-Infinity", "1e400", "[1.5, NaN]"])
def test_non_finite_number(writer: httpx.Client, error_server: RunningServer, literal: str):
    body = f'{{"records": [{{"entity_id": 1, "x": 1.0}}, {{"entity_id": 2, "x": {literal}}}]}}'
    response = writer.post(
        "/features/bad/nan", content=body.encode(), headers={"Content-Type": "application/json"}
    )
    message = assert_error(response, 400, "invalid_input")

    assert "record 1" in message
    assert "'x'" in message
    assert not (error_server.root / "features" / "bad" / "nan.parquet").exists()


def test_duplicate_entity_key(writer: httpx.Client) -> None:
    body = {"records": [{"k": 1}], "entity_key": ["k", "k"]}
    message = assert_error(writer.post("/features/bad/duplicate_key", json=body), 400)

    assert "'k'" in message


def test_missing_entity_key_column(writer: httpx.Client) -> None:
    body = {"records": [{"k": 1}], "entity_key": "account"}
    message = assert_error(writer.post("/features/bad/missing_key", json=body), 400)

    assert "'account'" in message


def test_null_entity_key(writer: httpx.Client) -> None:
    body = {"records": [{"k": 1}, {"k": None}], "entity_key": "k"}
    message = assert_error(writer.post("/features/bad/null_key", json=body), 400)

    assert "'k'" in message


def test_invalid_timestamp_value(writer: httpx.Client) -> None:
    records = [
        {"entity_id": 1, "event_timestamp": "2024-01-01"},
        {"entity_id": 2, "event_timestamp": "soon"},
    ]
    message = assert_error(writer.post("/features/bad/stamp", json={"records": records}), 400)

    assert "record 1" in message
    assert "'event_timestamp'" in message


@pytest.mark.parametrize(
    ("field", "value"),
    [("mode", "upsert"), ("compression", "gzip"), ("ttl_seconds", -1), ("tags", "x")],
)
def test_invalid_write_option(writer: httpx.Client, field: str, value: Any) -> None:
    body = {"records": [{"entity_id": 1}], field: value}
    response = writer.post("/features/bad/option", json=body)

    assert_error(response, 422, "validation_error")
    assert response.json()["error"]["details"][0]["location"] == f"body.{field}"


def test_append_type_change(writer: httpx.Client) -> None:
    writer.post("/features/append/typed", json={"records": [{"entity_id": 1, "score": 1.5}]})
    body = {"records": [{"entity_id": 2, "score": "high"}], "mode": "append"}
    message = assert_error(writer.post("/features/append/typed", json=body), 400, "schema_mismatch")
    rows = writer.get("/features/append/typed").json()["data"]

    assert "'score'" in message
    assert rows == [{"entity_id": 1, "score": 1.5}]


def test_append_other_entity_key(writer: httpx.Client) -> None:
    writer.post("/features/append/keyed", json={"records": [{"entity_id": 1, "other": 2}]})
    body = {"records": [{"entity_id": 2, "other": 3}], "mode": "append", "entity_key": "other"}
    message = assert_error(writer.post("/features/append/keyed", json=body), 409, "conflict")

    assert "entity_key" in message
    assert writer.get("/features/append/keyed").json()["metadata"]["version"] == 1


# Page reads


def test_limit_over_maximum(http: httpx.Client) -> None:
    message = assert_error(http.get(MOVIE_GENRES, params={"limit": MAX_LIMIT + 1}), 400)

    assert str(MAX_LIMIT) in message


@pytest.mark.parametrize(
    ("name", "value"), [("offset", -1), ("limit", -1), ("limit", "ten"), ("offset", 2**63)]
)
def test_invalid_page_parameter(http: httpx.Client, name: str, value: Any) -> None:
    response = http.get(MOVIE_GENRES, params={name: value})

    assert_error(response, 422, "validation_error")
    assert response.json()["error"]["details"][0]["location"] == f"query.{name}"


def test_unknown_filter_column(http: httpx.Client) -> None:
    message = assert_error(http.get(MOVIE_GENRES, params={"budget__gte": 1}), 400)

    assert "'budget'" in message


def test_unknown_filter_operator(http: httpx.Client) -> None:
    message = assert_error(http.get(MOVIE_GENRES, params={"year__between": "1,2"}), 400)

    assert "'between'" in message


@pytest.mark.parametrize(
    ("params", "column"),
    [
        ({"movie_id": "abc"}, "movie_id"),
        ({"movie_id__in": "1,abc"}, "movie_id"),
        ({"movie_id": "1.5"}, "movie_id"),
        ({"movie_id": "9223372036854775808"}, "movie_id"),
        ({"movie_id": "-9223372036854775809"}, "movie_id"),
        ({"movie_id": "\uff11"}, "movie_id"),
        ({"year__isnull": "maybe"}, "year"),
        ({"movie_id__in": ""}, "movie_id"),
    ],
)
def test_bad_filter_value(http: httpx.Client, params: dict[str, str], column: str) -> None:
    message = assert_error(http.get(MOVIE_GENRES, params=params), 400, "invalid_input")

    assert column in message


@pytest.mark.parametrize(
    "value", ["9223372036854775808", "-9223372036854775809", "1" * 40, "+00099999999999999999999"]
)
def test_filter_beyond_int64_out_of_range(http: httpx.Client, value: str) -> None:
    message = assert_error(http.get(MOVIE_GENRES, params={"movie_id": value}), 400)

    assert message == (
        f'invalid value "{value}" for filter movie_id__eq: out of range; integers must fit in '
        "64 bits (-2^63 to 2^63-1), and the column is uint32"
    )


def test_filter_leading_zeros(http: httpx.Client) -> None:
    response = http.get(MOVIE_GENRES, params={"movie_id": "0" * 30 + "1", "columns": "movie_id"})

    assert response.status_code == 200, response.text
    assert response.json()["data"] == [{"movie_id": 1}]


def test_bad_timestamp_filter(http: httpx.Client) -> None:
    response = http.get(INTERACTIONS, params={"event_timestamp__gte": "yesterday"})
    message = assert_error(response, 400, "invalid_input")

    assert "'yesterday'" in message


def test_contains_on_scalar_column(http: httpx.Client) -> None:
    message = assert_error(http.get(MOVIE_GENRES, params={"title__contains": "Toy"}), 400)

    assert "list" in message


def test_comparison_on_list_column(http: httpx.Client) -> None:
    assert_error(http.get(MOVIE_GENRES, params={"genres": "Drama"}), 400, "invalid_input")


@pytest.mark.parametrize("columns", [",", " , ", "title,nope"])
def test_bad_column_selection(http: httpx.Client, columns: str) -> None:
    assert_error(http.get(MOVIE_GENRES, params={"columns": columns}), 400, "invalid_input")


@pytest.mark.parametrize("order_by", ["nope", "-", "title,", "-nope"])
def test_bad_order_by(http: httpx.Client, order_by: str) -> None:
    assert_error(http.get(MOVIE_GENRES, params={"order_by": order_by}), 400, "invalid_input")


def test_unsupported_accept(http: httpx.Client) -> None:
    response = http.get(MOVIE_GENRES, headers={"Accept": "application/xml"})
    message = assert_error(response, 406, "not_acceptable")

    assert "text/csv" in message


# Batch lookups


def test_entity_id_text_for_integer_key(http: httpx.Client) -> None:
    body = {"feature_names": ["content/movie_ratings"], "entity_ids": [356, "abc"]}
    message = assert_error(http.post("/features/batch", json=body), 400, "invalid_input")

    assert '"abc"' in message
    assert "'movie_id'" in message


@pytest.mark.parametrize("entity_id", [2**63, 2**70, -(2**63) - 1, "9223372036854775808"])
def test_entity_id_over_64_bits(http: httpx.Client, entity_id: int | str) -> None:
    body = {"feature_names": ["content/movie_ratings"], "entity_ids": [entity_id]}
    message = assert_error(http.post("/features/batch", json=body), 400, "invalid_input")

    assert "'movie_id'" in message


@pytest.mark.parametrize("entity_id", [True, 1.5, None, [356]])
def test_entity_id_wrong_json_type(http: httpx.Client, entity_id: Any) -> None:
    body = {"feature_names": ["content/movie_ratings"], "entity_ids": [entity_id]}

    assert_error(http.post("/features/batch", json=body), 422, "validation_error")


def test_entity_ids_missing(http: httpx.Client) -> None:
    body = {"feature_names": ["content/movie_ratings"]}
    message = assert_error(http.post("/features/batch", json=body), 400, "invalid_input")

    assert "entity_ids" in message


def test_composite_key_needs_object(http: httpx.Client) -> None:
    body = {"feature_names": ["interaction/user_movie_interactions"], "entity_ids": [1]}
    message = assert_error(http.post("/features/batch", json=body), 400, "invalid_input")

    assert "user_id" in message
    assert "movie_id" in message


@pytest.mark.parametrize("entity", [{"user_id": 1}, {"user_id": 1, "movie_id": 31, "extra": 2}])
def test_composite_key_wrong_columns(http: httpx.Client, entity: dict[str, int]) -> None:
    body = {"feature_names": ["interaction/user_movie_interactions"], "entity_ids": [entity]}

    assert_error(http.post("/features/batch", json=body), 400, "invalid_input")


def test_unknown_feature_column(http: httpx.Client) -> None:
    body = {"feature_names": ["content/movie_ratings:budget"], "entity_ids": [356]}
    message = assert_error(http.post("/features/batch", json=body), 400, "invalid_input")

    assert "'budget'" in message


def test_selection_of_key_only(scratch_server: RunningServer) -> None:
    # A select list with no feature column once returned 500; the found row is the key alone.
    records = [{"entity_id": 1, "event_timestamp": "2024-01-01T00:00:00Z", "x": 1}]
    write = httpx.post(f"{scratch_server.base_url}/features/keys/only", json={"records": records})
    body = {"feature_names": ["keys/only:entity_id"], "entity_ids": [1]}
    response = httpx.post(f"{scratch_server.base_url}/features/batch", json=body)

    assert write.status_code == 200, write.text
    assert response.status_code == 200, response.text
    assert response.json()["features"]["keys/only:entity_id"] == [
        {"entity_id": 1, "event_timestamp": "2024-01-01T00:00:00+00:00"}
    ]


@pytest.mark.parametrize("timestamp", ["yesterday", "2016-13-01", "99999999999999", "1e400"])
def test_invalid_as_of(http: httpx.Client, timestamp: str) -> None:
    body = {"feature_names": ["movie_genres"], "entity_ids": [1], "timestamp": timestamp}
    message = assert_error(http.post("/features/batch", json=body), 400, "invalid_input")

    assert repr(timestamp) in message


@pytest.mark.parametrize("literal", ["NaN", "Infinity"])
def test_non_finite_as_of(http: httpx.Client, literal: str) -> None:
    body = f'{{"feature_names": ["movie_genres"], "entity_ids": [1], "timestamp": {literal}}}'
    response = http.post(
        "/features/batch", content=body.encode(), headers={"Content-Type": "application/json"}
    )

    assert_error(response, 400, "invalid_input")


def test_lookup_without_key(writer: httpx.Client) -> None:
    writer.post("/features/lookup/keyless", json={"records": [{"x": 1}]})
    body = {"feature_names": ["lookup/keyless"], "entity_ids": [1]}
    message = assert_error(writer.post("/features/batch", json=body), 400, "invalid_input")

    assert "entity key" in message


# Body size limit


@pytest.fixture
def small_body_server(server_factory: Callable[..., RunningServer]) -> RunningServer:
    return server_factory(SQLSTORE_MAX_BODY_BYTES="1000")


def large_write_body() -> bytes:
    records = [{"entity_id": index, "label": "x" * 20} for index in range(100)]
    return json.dumps({"records": records}).encode()


def test_body_over_limit(small_body_server: RunningServer) -> None:
    response = httpx.post(
        f"{small_body_server.base_url}/features/big/body",
        content=large_write_body(),
        headers={"Content-Type": "application/json"},
    )
    message = assert_error(response, 413, "payload_too_large")

    assert "1000" in message
    assert "SQLSTORE_MAX_BODY_BYTES" in message
    assert not (small_body_server.root / "features" / "big").exists()
    assert "Traceback" not in small_body_server.log()


def test_streamed_body_over_limit(small_body_server: RunningServer) -> None:
    content = large_write_body()
    chunks = (content[start : start + 256] for start in range(0, len(content), 256))
    response = httpx.post(
        f"{small_body_server.base_url}/features/big/stream",
        content=chunks,
        headers={"Content-Type": "application/json"},
    )

    assert "content-length" not in {name.lower() for name in response.request.headers}
    assert_error(response, 413, "payload_too_large")
    assert not (small_body_server.root / "features" / "big").exists()
    assert httpx.get(f"{small_body_server.base_url}/health").status_code == 200


# Runs last in this module: the servers must not have logged a traceback for any request above.


def test_servers_logged_no_traceback(demo_server, error_server, sandbox) -> None:
    _, sandbox_server = sandbox

    assert "Traceback" not in demo_server.log()
    assert "Traceback" not in error_server.log()
    assert "Traceback" not in sandbox_server.log()


def test_unexpected_error_closes_connection() -> None:
    app = FastAPI()
    install_error_handlers(app)

    @app.get("/boom")
    def boom() -> None:
        raise RuntimeError("boom")

    async def get_boom() -> httpx.Response:
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            return await client.get("/boom")

    response = asyncio.run(get_boom())

    assert response.status_code == 500
    assert response.headers["connection"] == "close"
    assert response.json()["error"]["code"] == "internal_error"
