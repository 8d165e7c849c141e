"""Results sent as JSON rows: after the first run of a text, a worker sends the rows of a
result whose column types allow it as JSON instead of Arrow. The response must not change."""

from __future__ import annotations

import asyncio
import datetime as dt
import decimal
import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest

from sqlstore.api.sql import tabular_response
from sqlstore.errors import InvalidInput
from sqlstore.sql.limits import SqlLimits
from sqlstore.sql.service import SqlResult, SqlService
from sqlstore.store import FeatureStore, TableDefinition

ELAPSED_PATTERN = re.compile(rb'"elapsed_ms":[0-9.e-]+')

TYPED_COLUMNS = {
    "id": pa.array([1, 2, 3], pa.int64()),
    "rank": pa.array([30, 20, 10], pa.int64()),
    "tiny": pa.array([-128, 0, 127], pa.int8()),
    "unsigned": pa.array([0, 2**63, 2**64 - 1], pa.uint64()),
    "single": pa.array([0.1, float("nan"), None], pa.float32()),
    "double": pa.array([1 / 3, float("inf"), -0.0], pa.float64()),
    "text": pa.array(["plain", 'ünï\u00e7ødé "quoted"', None], pa.string()),
    "raw": pa.array([b"\x00\xff", b"", None], pa.binary()),
    "day": pa.array([dt.date(1970, 1, 1), dt.date(2024, 2, 29), None], pa.date32()),
    "moment": pa.array(
        [dt.datetime(2020, 1, 1, 12, 30, 45, 123456), dt.datetime(1969, 12, 31), None],
        pa.timestamp("us"),
    ),
    "zoned": pa.array(
        [dt.datetime(2020, 1, 1, tzinfo=dt.UTC), None, dt.datetime(2000, 6, 1, tzinfo=dt.UTC)],
        pa.timestamp("us", tz="UTC"),
    ),
    "clock": pa.array([dt.time(0, 0), dt.time(23, 59, 59, 999999), None], pa.time64("us")),
    "amount": pa.array(
        [decimal.Decimal("12.50"), decimal.Decimal("-0.01"), decimal.Decimal("3.00")],
        pa.decimal128(10, 2),
    ),
    "numbers": pa.array([[1, 2], [], None], pa.list_(pa.int32())),
    "words": pa.array([["a", None], ["b"], []], pa.list_(pa.string())),
}

# Queries whose columns all have plain types, so that their second run sends JSON rows.
PLAIN_QUERIES = [
    "SELECT * FROM shop.typed ORDER BY id",
    "SELECT id, id AS id, text AS id FROM shop.typed ORDER BY id",
    "SELECT count(*) AS n, avg(double) AS mean, sum(amount) AS total FROM shop.typed",
    "SELECT 1::HUGEINT::BIGINT AS n, 'x' || text AS t FROM shop.typed ORDER BY id",
    "SELECT * FROM shop.typed WHERE id > 100",
    "SELECT list_transform(numbers, lambda x: x * 2) AS doubled FROM shop.typed ORDER BY id",
    "SELECT CAST(moment AS DATE) AS day, date_trunc('hour', zoned) AS hour FROM shop.typed",
    "SELECT 1.5::DECIMAL(38,10) AS wide, 123456789012345678::DECIMAL(18,0) AS whole",
    # Column names that would be code, or break a string literal, if they were parsed as code.
    "SELECT id AS \"}); __import__('os')._exit(3) #\", "
    'text AS "back\\slash \'q\' ""dq""", id AS "ünï 名" FROM shop.typed ORDER BY id',
]
# Queries with a column type whose Python value differs from its Arrow value, so that every
# run goes through Arrow.
ARROW_QUERIES = [
    "SELECT INTERVAL 14 MONTH AS span",
    "SELECT {'a': 1, 'b': 'x'} AS pair",
    "SELECT MAP {'k': 1} AS mapping",
    "SELECT 170141183460469231731687303715884105727::HUGEINT AS huge",
    "SELECT '5b1c8a0e-6a5a-4c5e-9a43-3b2c7d1e0f11'::UUID AS id",
    "SELECT TIMESTAMP_NS '2020-01-01 00:00:00.123456789' AS precise",
    "SELECT id, [{'a': 1}] AS nested FROM shop.typed ORDER BY id",
]


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SqlService]:
    store = FeatureStore(tmp_path_factory.mktemp("json-rows") / "store")
    store.write("shop", "typed", pa.table(TYPED_COLUMNS), definition=TableDefinition(["id"]))
    sql_service = SqlService(store, SqlLimits(workers=1, threads=1))
    yield sql_service
    sql_service.close()


def run(
    service: SqlService,
    sql: str,
    parameters: dict[str, Any] | None = None,
    limit: int | None = None,
) -> SqlResult:
    prepared = service.prepare(sql, parameters, limit)
    return asyncio.run(service.execute_async(prepared, json_rows=True))


def response_body(result: SqlResult, extra: dict[str, Any] | None = None) -> bytes:
    body = tabular_response(result, "json", extra).body
    return ELAPSED_PATTERN.sub(b'"elapsed_ms":0', body)


@pytest.mark.parametrize("sql", PLAIN_QUERIES)
def test_json_rows_give_the_arrow_response(service: SqlService, sql: str) -> None:
    first = run(service, sql)
    second = run(service, sql)

    assert first.table is not None
    assert second.table is None
    assert second.json_rows is not None
    assert response_body(second) == response_body(first)


@pytest.mark.parametrize("sql", ARROW_QUERIES)
def test_other_types_always_use_arrow(service: SqlService, sql: str) -> None:
    first = run(service, sql)
    second = run(service, sql)

    assert second.table is not None
    assert response_body(second) == response_body(first)


def test_named_query_extra_keys_are_kept(service: SqlService) -> None:
    sql = "SELECT id FROM shop.typed WHERE day >= $since ORDER BY id"
    parameters = {"since": dt.date(2000, 1, 1)}
    extra = {"query": "recent", "params": parameters}
    first = run(service, sql, parameters)
    second = run(service, sql, parameters)

    assert second.json_rows is not None
    assert response_body(second, extra) == response_body(first, extra)
    assert json.loads(response_body(second, extra))["params"] == {"since": "2000-01-01"}


@pytest.mark.parametrize("limit", [0, 1, 2, 3, 4])
def test_row_limit_matches_arrow(service: SqlService, limit: int) -> None:
    sql = "SELECT id, text FROM shop.typed ORDER BY id"
    run(service, sql, limit=limit)
    arrow = SqlService.execute(service, service.prepare(sql, None, limit))
    rows = run(service, sql, limit=limit)

    assert rows.json_rows is not None
    assert rows.rows == arrow.row_count == min(limit, 3)
    assert rows.truncated_by == arrow.truncated_by == ("row_limit" if limit < 3 else None)
    assert json.loads(rows.json_rows) == arrow.table.to_pylist()


def test_large_result_keeps_the_arrow_byte_limit(tmp_path: Path) -> None:
    store = FeatureStore(tmp_path / "store")
    words = pa.table({"id": list(range(5000)), "word": [f"word-{i:06d}" for i in range(5000)]})
    store.write("shop", "words", words, definition=TableDefinition(["id"]))
    service = SqlService(store, SqlLimits(workers=1, threads=1, max_result_bytes=20_000))
    try:
        sql = "SELECT id, word FROM shop.words ORDER BY id"
        runs = [run(service, sql) for _ in range(3)]
    finally:
        service.close()

    # The JSON of the rows passes 1/16 of the limit, so every run counts Arrow's bytes.
    assert [result.table is not None for result in runs] == [True, True, True]
    assert [result.truncated_by for result in runs] == ["byte_limit"] * 3
    assert len({result.row_count for result in runs}) == 1
    expected = [{"id": i, "word": f"word-{i:06d}"} for i in range(runs[0].row_count)]
    assert runs[1].table.to_pylist() == expected


def test_small_result_under_small_byte_limit(tmp_path: Path) -> None:
    store = FeatureStore(tmp_path / "store")
    store.write("shop", "few", pa.table({"id": [1, 2]}), definition=TableDefinition(["id"]))
    service = SqlService(store, SqlLimits(workers=1, threads=1, max_result_bytes=16 * 100))
    try:
        sql = "SELECT id FROM shop.few ORDER BY id"
        run(service, sql)
        second = run(service, sql)
    finally:
        service.close()

    assert second.json_rows == b'[{"id":1},{"id":2}]'


@pytest.mark.parametrize(
    "sql",
    [
        "SELECT 'infinity'::TIMESTAMP AS value",
        "SELECT '-infinity'::TIMESTAMP AS value",
        "SELECT 'infinity'::DATE AS value",
        "SELECT 'infinity'::TIMESTAMPTZ AS value",
        "SELECT '12000-01-01'::DATE AS value",
        "SELECT '-0044-03-15'::DATE AS value",
        "SELECT '294000-01-01'::TIMESTAMP AS value",
        "SELECT '24:00:00'::TIME AS value",
        "SELECT ['infinity'::DATE] AS value",
        "SELECT DATE '9999-12-31' AS value",
        "SELECT DATE '0001-01-01' AS value",
    ],
)
def test_dates_beyond_python_get_the_arrow_response(service: SqlService, sql: str) -> None:
    outcomes = []
    for _ in range(3):
        try:
            outcomes.append(response_body(run(service, sql)))
        except InvalidInput as error:
            outcomes.append(error.message.encode())

    assert outcomes[1] == outcomes[0]
    assert outcomes[2] == outcomes[0]


def test_timestamps_in_range_are_json_rows(service: SqlService) -> None:
    sql = "SELECT TIMESTAMP '2020-02-29 12:00:00.5' AS value, DATE '1970-01-01' AS day"
    run(service, sql)
    second = run(service, sql)

    assert second.json_rows == b'[{"value":"2020-02-29T12:00:00.500000","day":"1970-01-01"}]'


def test_renamed_columns_of_the_same_types_are_seen(service: SqlService) -> None:
    sql = "SELECT COLUMNS($name) FROM shop.typed ORDER BY id LIMIT 1"
    run(service, sql, {"name": "rank"})
    rank = run(service, sql, {"name": "rank"})
    identifier = run(service, sql, {"name": "id"})

    assert json.loads(rank.json_rows or b"") == [{"rank": 30}]
    assert json.loads(response_body(identifier))["data"] == [{"id": 1}]


def test_parameter_of_another_type_runs_through_arrow(service: SqlService) -> None:
    sql = "SELECT $value AS v"
    run(service, sql, {"value": [1, 2]})
    numbers = run(service, sql, {"value": [1, 2]})
    words = run(service, sql, {"value": ["a"]})

    assert numbers.json_rows is not None
    assert json.loads(numbers.json_rows) == [{"v": [1, 2]}]
    assert words.table is not None
    assert words.table.to_pylist() == [{"v": ["a"]}]
    assert json.loads(response_body(words))["metadata"]["dtypes"] == {"v": "list<string>"}


def test_table_written_again_with_columns_swapped(service: SqlService) -> None:
    store = service.store
    first = pa.table({"k": [1], "a": [10], "c": [30]})
    store.write("shop", "swapped", first, definition=TableDefinition(["k"]))
    sql = "SELECT * FROM shop.swapped"
    run(service, sql)
    before = run(service, sql)
    store.delete("shop", "swapped")
    second = pa.table({"k": [1], "c": [40], "a": [20]})
    store.write("shop", "swapped", second, definition=TableDefinition(["k"]))
    after = run(service, sql)

    assert json.loads(before.json_rows or b"") == [{"k": 1, "a": 10, "c": 30}]
    assert json.loads(response_body(after))["data"] == [{"k": 1, "c": 40, "a": 20}]


def test_new_table_version_is_run_through_arrow_again(service: SqlService) -> None:
    store = service.store
    store.write("shop", "changing", pa.table({"n": [1]}), definition=TableDefinition(["n"]))
    sql = "SELECT * FROM shop.changing"
    run(service, sql)
    before = run(service, sql)
    store.write("shop", "changing", pa.table({"n": ["one"]}), definition=TableDefinition(["n"]))
    after = run(service, sql)

    assert json.loads(before.json_rows or b"") == [{"n": 1}]
    assert after.table is not None
    assert after.table.to_pylist() == [{"n": "one"}]


def test_end_of_day_time_on_both_routes(service: SqlService) -> None:
    sql = "SELECT TIME '24:00:00' AS t, TIME '01:02:03.5' AS u"
    bodies = [json.loads(response_body(run(service, sql))) for _ in range(3)]

    for body in bodies:
        assert body["data"] == [{"t": "24:00:00", "u": "01:02:03.500000"}]


def test_end_of_day_time_column_keeps_others(service: SqlService) -> None:
    sql = "SELECT * FROM (VALUES (1, TIME '24:00:00'), (2, TIME '00:00:00')) AS v(n, t) ORDER BY n"
    bodies = [json.loads(response_body(run(service, sql))) for _ in range(2)]

    for body in bodies:
        assert body["data"] == [{"n": 1, "t": "24:00:00"}, {"n": 2, "t": "00:00:00"}]


WIDE_DECIMAL_SQL = (
    "SELECT 123456789012345678901234567890123456.7::DECIMAL(38,1) AS d, "
    "1.25::DECIMAL(10,2) AS s, 3.00::DECIMAL(10,2) AS w, -0.50::DECIMAL(4,2) AS n, "
    "0.0000001::DECIMAL(18,10) AS tiny, 99999999999999999999999999999999999999::HUGEINT AS h"
)
WIDE_DECIMAL_JSON = (
    b'"data":[{"d":123456789012345678901234567890123456.7,"s":1.25,"w":3,"n":-0.5,'
    b'"tiny":0.0000001,"h":99999999999999999999999999999999999999}]'
)


def test_wide_decimal_digits_kept_by_arrow(service: SqlService) -> None:
    first = run(service, WIDE_DECIMAL_SQL)

    assert first.table is not None
    assert WIDE_DECIMAL_JSON in response_body(first)


def test_decimal_digits_kept_by_json_rows(service: SqlService) -> None:
    sql = (
        "SELECT 123456789012345678901234567890123456.7::DECIMAL(38,1) AS d, "
        "1.25::DECIMAL(10,2) AS s"
    )
    run(service, sql)
    second = run(service, sql)

    assert second.json_rows == b'[{"d":123456789012345678901234567890123456.7,"s":1.25}]'


def test_decimal_list_digits_kept(service: SqlService) -> None:
    sql = "SELECT [12345678901234567890.12::DECIMAL(22,2), NULL] AS amounts"
    bodies = [response_body(run(service, sql)) for _ in range(2)]

    for body in bodies:
        assert b'"data":[{"amounts":[12345678901234567890.12,null]}]' in body
