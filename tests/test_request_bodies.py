"""Request bodies against real servers: the smaller body limits of lookups and SQL queries, the
limit on SQL parameter values, and JSON objects that repeat a key, on every route that takes a
JSON body. Expected messages are written out in full, and expected rows are the ones the test
wrote."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from conftest import RunningServer, start_server, stop_server

from sqlstore.settings import Settings

SQL_MAX_BODY_BYTES = 2048
LOOKUP_MAX_BODY_BYTES = 4096
SQL_MAX_PARAMETER_VALUES = 50
LIMITS = {
    "SQLSTORE_SQL_MAX_BODY_BYTES": str(SQL_MAX_BODY_BYTES),
    "SQLSTORE_LOOKUP_MAX_BODY_BYTES": str(LOOKUP_MAX_BODY_BYTES),
    "SQLSTORE_SQL_MAX_PARAMETER_VALUES": str(SQL_MAX_PARAMETER_VALUES),
}
SQL_LIMIT_MESSAGE = (
    "request body is larger than {} bytes, the limit of POST /sql and POST /queries/{{name}}; "
    "write long lists of values to a feature table and join it in the query, or raise "
    "SQLSTORE_SQL_MAX_BODY_BYTES"
)
LOOKUP_LIMIT_MESSAGE = (
    "request body is larger than {} bytes, the limit of POST /get-online-features and POST "
    "/features/batch; split the entities into several requests, or raise "
    "SQLSTORE_LOOKUP_MAX_BODY_BYTES"
)
DUPLICATE_ADVICE = "give each key once, because only its last value would be used"
JSON_HEADERS = {"Content-Type": "application/json"}
# A table written by the module's first use of `keys_table`: score is ten times the key.
KEYS_TABLE = "/features/bodies/keys"
KEYS_FEATURE = "bodies/keys:score"


@pytest.fixture(scope="module")
def server(demo_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    """A server with small body limits on a copy of the demo store, which the tests write to."""
    root = tmp_path_factory.mktemp("bodies") / "store"
    shutil.copytree(demo_root, root)
    log_path = tmp_path_factory.mktemp("bodies_logs") / "server.log"
    running = start_server(root, log_path, env=LIMITS)
    yield running
    stop_server(running)


@pytest.fixture(scope="module")
def http(server: RunningServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.base_url, timeout=60) as client:
        yield client


@pytest.fixture(scope="module")
def keys_table(http: httpx.Client) -> str:
    records = [{"user_id": key, "score": key * 10} for key in range(1, 6)]
    response = http.post(KEYS_TABLE, json={"records": records, "entity_key": "user_id"})
    assert response.status_code == 200, response.text
    return KEYS_FEATURE


def assert_error(response: httpx.Response, status: int, code: str) -> str:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["code"] == code
    assert error["request_id"] == response.headers["X-Request-ID"]
    return error["message"]


def padded(payload: Any, size: int) -> bytes:
    """Return `payload` as JSON followed by spaces, `size` bytes in all."""
    body = json.dumps(payload).encode()
    assert len(body) <= size
    return body + b" " * (size - len(body))


def post_raw(http: httpx.Client, path: str, body: bytes) -> httpx.Response:
    return http.post(path, content=body, headers=JSON_HEADERS)


def post_streamed(http: httpx.Client, path: str, body: bytes) -> httpx.Response:
    """POST `body` in chunks of 1000 bytes without a Content-Length."""
    chunks = (body[start : start + 1000] for start in range(0, len(body), 1000))
    response = http.post(path, content=chunks, headers=JSON_HEADERS)
    assert "content-length" not in {name.lower() for name in response.request.headers}
    return response


def rows(http: httpx.Client, path: str) -> list[dict[str, Any]]:
    response = http.get(path, params={"order_by": "id"})
    assert response.status_code == 200, response.text
    return response.json()["data"]


# Body limits of SQL routes


def test_sql_body_at_limit_runs(http: httpx.Client) -> None:
    body = padded({"sql": "SELECT 41 + 1 AS answer"}, SQL_MAX_BODY_BYTES)

    response = post_raw(http, "/sql", body)

    assert response.status_code == 200, response.text
    assert response.json()["data"] == [{"answer": 42}]


@pytest.mark.parametrize("send", [post_raw, post_streamed], ids=["content-length", "streamed"])
@pytest.mark.parametrize("path", ["/sql", "/queries/top_rated_in_genre"])
def test_sql_body_over_limit_rejected(
    http: httpx.Client, path: str, send: Callable[[httpx.Client, str, bytes], httpx.Response]
) -> None:
    payload = {"sql": "SELECT 1 AS x"} if path == "/sql" else {"params": {"genre": "Comedy"}}
    body = padded(payload, SQL_MAX_BODY_BYTES + 1)

    message = assert_error(send(http, path, body), 413, "payload_too_large")

    assert message == SQL_LIMIT_MESSAGE.format(SQL_MAX_BODY_BYTES)


def test_sql_limit_leaves_writes_alone(http: httpx.Client) -> None:
    records = [{"id": index, "label": "x" * 40} for index in range(100)]
    body = json.dumps({"records": records}).encode()

    response = post_raw(http, "/features/bodies/wide", body)

    assert len(body) > LOOKUP_MAX_BODY_BYTES
    assert response.status_code == 200, response.text
    assert response.json()["rows_saved"] == 100


# Body limits of lookups


def test_lookup_body_at_limit_served(http: httpx.Client, keys_table: str) -> None:
    body = padded({"entities": {"user_id": [2]}, "features": [keys_table]}, LOOKUP_MAX_BODY_BYTES)

    response = post_raw(http, "/get-online-features", body)

    assert response.status_code == 200, response.text
    assert response.json()["results"][1]["values"] == [20]


@pytest.mark.parametrize("send", [post_raw, post_streamed], ids=["content-length", "streamed"])
@pytest.mark.parametrize("path", ["/get-online-features", "/features/batch"])
def test_lookup_body_over_limit_rejected(
    http: httpx.Client,
    keys_table: str,
    path: str,
    send: Callable[[httpx.Client, str, bytes], httpx.Response],
) -> None:
    payload: dict[str, Any] = {"entities": {"user_id": [1]}, "features": [keys_table]}
    if path == "/features/batch":
        payload = {"entity_ids": [1], "feature_names": [keys_table]}
    body = padded(payload, LOOKUP_MAX_BODY_BYTES + 1)

    message = assert_error(send(http, path, body), 413, "payload_too_large")

    assert message == LOOKUP_LIMIT_MESSAGE.format(LOOKUP_MAX_BODY_BYTES)


def test_default_body_limits(demo_server: RunningServer) -> None:
    defaults = Settings(root=demo_server.root)
    sql_limit = defaults.sql_max_body_bytes
    lookup_limit = defaults.lookup_max_body_bytes
    lookup = {"entities": {"user_id": [1]}, "features": ["user/user_activity:ratings_total"]}

    with httpx.Client(base_url=demo_server.base_url, timeout=60) as http:
        sql_at = post_raw(http, "/sql", padded({"sql": "SELECT 7 AS x"}, sql_limit))
        sql_over = post_raw(http, "/sql", padded({"sql": "SELECT 7 AS x"}, sql_limit + 1))
        lookup_at = post_raw(http, "/get-online-features", padded(lookup, lookup_limit))
        lookup_over = post_raw(http, "/get-online-features", padded(lookup, lookup_limit + 1))

    assert sql_limit == 1024 * 1024
    assert lookup_limit == 16 * 1024 * 1024
    assert sql_at.status_code == 200, sql_at.text
    assert sql_at.json()["data"] == [{"x": 7}]
    assert assert_error(sql_over, 413, "payload_too_large") == SQL_LIMIT_MESSAGE.format(sql_limit)
    assert lookup_at.status_code == 200, lookup_at.text
    lookup_message = assert_error(lookup_over, 413, "payload_too_large")
    assert lookup_message == LOOKUP_LIMIT_MESSAGE.format(lookup_limit)


def test_general_limit_below_route_limits(
    server_factory: Callable[..., RunningServer],
) -> None:
    small = server_factory(SQLSTORE_MAX_BODY_BYTES="1000")
    expected = (
        "request body is larger than 1000 bytes; send fewer records per request, or raise "
        "SQLSTORE_MAX_BODY_BYTES"
    )
    lookup = {"entities": {"user_id": [1]}, "features": ["user/user_activity:ratings_total"]}

    with httpx.Client(base_url=small.base_url, timeout=30) as http:
        sql = post_raw(http, "/sql", padded({"sql": "SELECT 1"}, 1001))
        online = post_raw(http, "/get-online-features", padded(lookup, 1001))

    assert assert_error(sql, 413, "payload_too_large") == expected
    assert assert_error(online, 413, "payload_too_large") == expected


@pytest.mark.parametrize("name", ["SQLSTORE_SQL_MAX_BODY_BYTES", "SQLSTORE_LOOKUP_MAX_BODY_BYTES"])
def test_zero_body_limit_setting_rejected(
    name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(name, "0")

    with pytest.raises(ValueError) as raised:
        Settings.from_environment(tmp_path)

    assert str(raised.value) == f"invalid {name}=0: use a number above 0"


# Parameter values of SQL queries


def parameter_limit_message(total: int, largest: str, count: int) -> str:
    return (
        f"the query's parameters have {total} values, more than the maximum "
        f"{SQL_MAX_PARAMETER_VALUES} (${largest} has {count}); write long lists of values to a "
        "feature table and join it in the query, or raise SQLSTORE_SQL_MAX_PARAMETER_VALUES"
    )


def test_parameter_values_at_limit_run(http: httpx.Client) -> None:
    values = list(range(SQL_MAX_PARAMETER_VALUES))
    body = {"sql": "SELECT len($a) AS n, list_sum($a) AS total", "params": {"a": values}}

    response = http.post("/sql", json=body)

    assert response.status_code == 200, response.text
    assert response.json()["data"] == [{"n": 50, "total": 49 * 50 // 2}]


def test_parameter_values_over_limit_rejected(http: httpx.Client) -> None:
    sql = "SELECT len($a) + 0 AS n"
    over = {"sql": sql, "params": {"a": list(range(SQL_MAX_PARAMETER_VALUES + 1))}}

    first = http.post("/sql", json=over)
    # Now the text was validated, so the next request reaches the fast lane's preparation.
    accepted = http.post("/sql", json={"sql": sql, "params": {"a": [1, 2]}})
    again = http.post("/sql", json=over)

    expected = parameter_limit_message(51, "a", 51)
    assert assert_error(first, 413, "payload_too_large") == expected
    assert accepted.json()["data"] == [{"n": 2}]
    assert assert_error(again, 413, "payload_too_large") == expected


def test_parameter_values_counted_together(http: httpx.Client) -> None:
    params = {"a": list(range(30)), "b": list(range(20)), "c": "one more"}
    body = {"sql": "SELECT len($a) + len($b) + length($c) AS n", "params": params}

    response = http.post("/sql", json=body)

    assert assert_error(response, 413, "payload_too_large") == parameter_limit_message(51, "a", 30)


# Repeated keys


def duplicate_message(key: str, where: str = "") -> str:
    place = f"{where} of the request body" if where else "the request body"
    return f'duplicate key "{key}" in {place}; {DUPLICATE_ADVICE}'


def test_sql_repeated_text_rejected(http: httpx.Client) -> None:
    repeated = b'{"sql": "SELECT 1 AS x", "sql": "SELECT 2 AS x"}'

    before = post_raw(http, "/sql", repeated)
    # The fast lane serves texts validated lately, so validate the last one and send it again.
    single = http.post("/sql", json={"sql": "SELECT 2 AS x"})
    after = post_raw(http, "/sql", repeated)

    assert assert_error(before, 400, "invalid_input") == duplicate_message("sql")
    assert single.json()["data"] == [{"x": 2}]
    assert assert_error(after, 400, "invalid_input") == duplicate_message("sql")


def test_sql_repeated_parameter_rejected(http: httpx.Client) -> None:
    http.post("/sql", json={"sql": "SELECT $a AS x", "params": {"a": 1}})
    repeated = b'{"sql": "SELECT $a AS x", "params": {"a": 1, "a": 2}}'

    response = post_raw(http, "/sql", repeated)

    assert assert_error(response, 400, "invalid_input") == duplicate_message("a", "params")


def test_sql_escaped_repeated_key_rejected(http: httpx.Client) -> None:
    # "\u0073ql" is "sql": a test on the bytes alone would see two different keys.
    http.post("/sql", json={"sql": "SELECT 3 AS x"})
    repeated = b'{"sql": "SELECT 9 AS x", "\\u0073ql": "SELECT 3 AS x"}'

    response = post_raw(http, "/sql", repeated)

    assert assert_error(response, 400, "invalid_input") == duplicate_message("sql")


def test_sql_escapes_without_repeats_run(http: httpx.Client) -> None:
    body = b'{"\\u0073ql": "SELECT\\n  \\"a\\/b\\" AS x\\nFROM (SELECT 5 AS \\"a/b\\")"}'

    first = post_raw(http, "/sql", body)
    second = post_raw(http, "/sql", body)

    assert first.json()["data"] == [{"x": 5}]
    assert second.json()["data"] == [{"x": 5}]


def test_named_query_repeated_parameter_rejected(http: httpx.Client) -> None:
    repeated = b'{"params": {"genre": "Comedy", "genre": "Drama"}, "limit": 1}'

    response = post_raw(http, "/queries/top_rated_in_genre", repeated)

    assert assert_error(response, 400, "invalid_input") == duplicate_message("genre", "params")


def test_write_repeated_mode_keeps_table(http: httpx.Client) -> None:
    path = "/features/bodies/append_only"
    first = http.post(path, json={"records": [{"id": 1, "v": "a"}]})
    repeated = b'{"records": [{"id": 2, "v": "b"}], "mode": "append", "mode": "overwrite"}'

    response = post_raw(http, path, repeated)

    assert first.status_code == 200, first.text
    assert assert_error(response, 400, "invalid_input") == duplicate_message("mode")
    assert rows(http, path) == [{"id": 1, "v": "a"}]


def test_write_repeated_column_rejected(http: httpx.Client) -> None:
    path = "/features/bodies/repeated_column"
    repeated = b'{"records": [{"id": 1, "v": "a"}, {"id": 2, "v": "b", "v": "c"}]}'

    response = post_raw(http, path, repeated)

    assert assert_error(response, 400, "invalid_input") == duplicate_message("v", "records[1]")
    assert http.get(path).status_code == 404


def test_large_write_repeated_key_located(http: httpx.Client) -> None:
    # Over 64 KiB, so the body is parsed in the thread pool.
    records = [f'{{"id": {index}, "v": "{"x" * 40}"}}' for index in range(2000)]
    records[1999] = '{"id": 1999, "id": 2000}'
    body = ('{"records": [' + ", ".join(records) + "]}").encode()

    response = post_raw(http, "/features/bodies/large", body)

    assert len(body) > 64 * 1024
    assert assert_error(response, 400, "invalid_input") == duplicate_message("id", "records[1999]")


def test_large_write_without_repeats_saved(http: httpx.Client) -> None:
    path = "/features/bodies/large_ok"
    records = [{"id": index, "v": "x" * 40} for index in range(2000)]
    body = json.dumps({"records": records}).encode()

    response = post_raw(http, path, body)

    assert len(body) > 64 * 1024
    assert response.status_code == 200, response.text
    assert response.json()["rows_saved"] == 2000


def test_repeated_key_name_quoted(http: httpx.Client) -> None:
    repeated = b'{"records": [{"a b": 1, "a b": 2}]}'

    response = post_raw(http, "/features/bodies/odd_names", repeated)

    message = assert_error(response, 400, "invalid_input")
    assert message == f'duplicate key "a b" in records[0] of the request body; {DUPLICATE_ADVICE}'


@pytest.mark.parametrize(
    ("body", "key", "where"),
    [
        (
            b'{"entities": {"user_id": [1], "user_id": [2]}, "features": ["FEATURE"]}',
            "user_id",
            "entities",
        ),
        (
            b'{"entities": {"user_id": [1], "user_\\u0069d": [2]}, "features": ["FEATURE"]}',
            "user_id",
            "entities",
        ),
        (
            b'{"entities": {"user_id": [1]}, "features": ["FEATURE"], "features": ["FEATURE"]}',
            "features",
            "",
        ),
    ],
    ids=["entities", "escaped", "features"],
)
def test_lookup_repeated_key_rejected(
    http: httpx.Client, keys_table: str, body: bytes, key: str, where: str
) -> None:
    response = post_raw(http, "/get-online-features", body.replace(b"FEATURE", keys_table.encode()))

    assert assert_error(response, 400, "invalid_input") == duplicate_message(key, where)


def test_lookup_key_as_value_served(http: httpx.Client) -> None:
    # The key "user_id" also occurs as a value, so the fast test cannot rule out a repeat.
    records = [{"user_id": "user_id", "score": 7}, {"user_id": "other", "score": 8}]
    written = http.post(
        "/features/bodies/named_keys", json={"records": records, "entity_key": "user_id"}
    )
    body = {"entities": {"user_id": ["user_id", "other"]}, "features": ["bodies/named_keys:score"]}

    response = http.post("/get-online-features", json=body)

    assert written.status_code == 200, written.text
    assert response.status_code == 200, response.text
    assert response.json()["results"][1]["values"] == [7, 8]


def test_lookup_escaped_body_served(http: httpx.Client, keys_table: str) -> None:
    escaped = keys_table.replace("/", "\\/").encode()
    body = b'{"entities": {"user_\\u0069d": [3, 5]}, "features": ["' + escaped + b'"]}'

    response = post_raw(http, "/get-online-features", body)

    assert response.status_code == 200, response.text
    assert response.json()["results"][1]["values"] == [30, 50]


def test_batch_repeated_ids_rejected(http: httpx.Client, keys_table: str) -> None:
    body = f'{{"feature_names": ["{keys_table}"], "entity_ids": [1], "entity_ids": [2]}}'

    response = post_raw(http, "/features/batch", body.encode())

    assert assert_error(response, 400, "invalid_input") == duplicate_message("entity_ids")


def test_training_set_repeated_key_rejected(http: httpx.Client, keys_table: str) -> None:
    entity = '{"user_id": 1, "event_timestamp": "2016-01-01T00:00:00Z", "user_id": 2}'
    body = f'{{"entities": [{entity}], "features": ["{keys_table}"]}}'

    response = post_raw(http, "/training-set", body.encode())

    assert assert_error(response, 400, "invalid_input") == duplicate_message(
        "user_id", "entities[0]"
    )
