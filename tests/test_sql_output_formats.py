"""Query results in every output format when a value cannot be written as it is. Parquet
cannot store intervals, unions and empty structs, at any depth. JSON and CSV text cannot show
infinity or dates past year 9999, inside lists, structs and maps too. Times of 24:00:00 inside
lists and structs must stay 24:00:00. Each response is either the converted values or a 400
that names the column, never a 500.

The expected values are written out by hand: ISO 8601 durations for intervals, and DuckDB's
infinity as the largest 64-bit (timestamps) or 32-bit (dates) integer.
"""

from __future__ import annotations

import csv
import datetime as dt
import io

import httpx
import pyarrow as pa
import pyarrow.ipc as pa_ipc
import pyarrow.parquet as pq
import pytest

from sqlstore.api.encoding import encode_table, table_records
from sqlstore.errors import UnrepresentableValue
from sqlstore.sql.results import portable_table

CSV = "text/csv"
PARQUET = "application/vnd.apache.parquet"
ARROW = "application/vnd.apache.arrow.stream"
INFINITE_TIMESTAMP = 2**63 - 1
INFINITE_DAYS = 2**31 - 1
DAYS_TO_YEAR_10000 = (dt.date(9999, 12, 31) - dt.date(1970, 1, 1)).days + 1

# Values that Parquet cannot store, the values its file contains instead, and their CSV text.
PARQUET_CONVERSIONS = [
    ("SELECT [INTERVAL 1 DAY] AS v", ["P1D"], '["P1D"]'),
    ("SELECT {} AS v", "{}", "{}"),
    ("SELECT [{}] AS v", ["{}"], "[{}]"),
    ("SELECT {'a': {}} AS v", {"a": "{}"}, '{"a":{}}'),
    ("SELECT MAP {} AS v", [], "[]"),
    ("SELECT {'i': INTERVAL 1 DAY} AS v", {"i": "P1D"}, '{"i":"P1D"}'),
    ("SELECT MAP {'a': INTERVAL 1 DAY} AS v", [("a", "P1D")], '[["a","P1D"]]'),
    ("SELECT [union_value(k := 1)] AS v", ["1"], "[1]"),
]
# Dates and timestamps that JSON and CSV cannot show, with the column's type, the message's
# description of the value, and the storage integers that Parquet and Arrow return.
OUT_OF_RANGE = [
    (
        "SELECT [TIMESTAMP 'infinity'] AS v",
        "list<timestamp[us]>",
        "infinity",
        [INFINITE_TIMESTAMP],
    ),
    (
        "SELECT {'d': DATE '10000-01-01'} AS v",
        "struct<d: date32[day]>",
        "a date outside the years 1 to 9999",
        {"d": DAYS_TO_YEAR_10000},
    ),
    (
        "SELECT MAP {'a': 'infinity'::DATE} AS v",
        "map<string, date32[day]>",
        "infinity",
        [("a", INFINITE_DAYS)],
    ),
    ("SELECT 'infinity'::TIMESTAMP AS v", "timestamp[us]", "infinity", INFINITE_TIMESTAMP),
    ("SELECT '-infinity'::DATE AS v", "date32[day]", "-infinity", -INFINITE_DAYS),
    (
        "SELECT TIMESTAMP '10000-01-01' AS v",
        "timestamp[us]",
        "a date outside the years 1 to 9999",
        DAYS_TO_YEAR_10000 * 86_400 * 1_000_000,
    ),
]


def post_sql(http: httpx.Client, sql: str, accept: str | None = None) -> httpx.Response:
    headers = {"accept": accept} if accept else {}
    return http.post("/sql", json={"sql": sql}, headers=headers)


def read_table(response: httpx.Response, media_type: str) -> pa.Table:
    assert response.status_code == 200, response.text
    if media_type == PARQUET:
        return pq.read_table(pa.BufferReader(response.content))
    return pa_ipc.open_stream(response.content).read_all()


def csv_values(response: httpx.Response) -> list[str]:
    assert response.status_code == 200, response.text
    return [row["v"] for row in csv.DictReader(io.StringIO(response.text))]


def error_of(response: httpx.Response) -> dict[str, str]:
    assert response.status_code == 400, response.text
    return response.json()["error"]


@pytest.mark.parametrize(("sql", "stored", "text"), PARQUET_CONVERSIONS)
def test_parquet_converts_nested_values(
    module_http: httpx.Client, sql: str, stored: object, text: str
) -> None:
    table = read_table(post_sql(module_http, sql, PARQUET), PARQUET)

    assert table.column("v").to_pylist() == [stored]


@pytest.mark.parametrize(("sql", "stored", "text"), PARQUET_CONVERSIONS)
def test_csv_writes_nested_values(
    module_http: httpx.Client, sql: str, stored: object, text: str
) -> None:
    assert csv_values(post_sql(module_http, sql, CSV)) == [text]


@pytest.mark.parametrize(("sql", "stored", "text"), PARQUET_CONVERSIONS)
def test_arrow_keeps_nested_types(
    module_http: httpx.Client, sql: str, stored: object, text: str
) -> None:
    table = read_table(post_sql(module_http, sql, ARROW), ARROW)

    # Arrow stores every type, so nothing becomes text.
    assert not pa.types.is_string(table.schema.field("v").type)
    assert table.num_rows == 1


def test_parquet_keeps_nulls_around_conversions(module_http: httpx.Client) -> None:
    sql = (
        "SELECT CASE WHEN i % 2 = 0 THEN {'i': to_days((i + 1)::INTEGER)} END AS s, "
        "CASE WHEN i = 1 THEN NULL WHEN i = 2 THEN [] ELSE [to_days(i::INTEGER), NULL] END AS l "
        "FROM range(4) AS t(i) ORDER BY i"
    )

    table = read_table(post_sql(module_http, sql, PARQUET), PARQUET)

    assert table.column("s").to_pylist() == [{"i": "P1D"}, None, {"i": "P3D"}, None]
    assert table.column("l").to_pylist() == [["PT0S", None], None, [], ["P3D", None]]


def test_parquet_keeps_infinity_in_seconds(module_http: httpx.Client) -> None:
    sql = (
        "SELECT 'infinity'::TIMESTAMP_S AS v, "
        "['-infinity'::TIMESTAMP_S, TIMESTAMP_S '2020-01-01', NULL] AS l"
    )

    table = read_table(post_sql(module_http, sql, PARQUET), PARQUET)

    # Parquet has no unit of seconds, so the values are in milliseconds.
    assert table.schema.field("v").type == pa.timestamp("ms")
    assert table.column("v").cast(pa.int64()).to_pylist() == [INFINITE_TIMESTAMP]
    values = table.column("l").combine_chunks().flatten().cast(pa.int64()).to_pylist()
    assert values == [-INFINITE_TIMESTAMP, 1_577_836_800_000, None]


@pytest.mark.parametrize(("sql", "type_name", "problem", "stored"), OUT_OF_RANGE)
@pytest.mark.parametrize(("accept", "format_name"), [(None, "JSON"), (CSV, "CSV")])
def test_text_formats_reject_dates_beyond_python(
    module_http: httpx.Client,
    sql: str,
    type_name: str,
    problem: str,
    stored: object,
    accept: str | None,
    format_name: str,
) -> None:
    error = error_of(post_sql(module_http, sql, accept))

    assert error["code"] == "unrepresentable_value"
    assert error["message"] == (
        f"column 'v' ({type_name}) contains {problem}, which the {format_name} output cannot "
        "represent; request Parquet or Arrow IPC with the Accept header, or cast the column "
        'to text in SQL, as CAST("v" AS VARCHAR)'
    )


@pytest.mark.parametrize(("sql", "type_name", "problem", "stored"), OUT_OF_RANGE)
@pytest.mark.parametrize("media_type", [PARQUET, ARROW])
def test_binary_formats_keep_dates_beyond_python(
    module_http: httpx.Client,
    sql: str,
    type_name: str,
    problem: str,
    stored: object,
    media_type: str,
) -> None:
    table = read_table(post_sql(module_http, sql, media_type), media_type)
    column = table.column("v")

    # The storage integers, because Python's datetime cannot hold these values.
    if pa.types.is_list(column.type):
        values = column.combine_chunks().flatten().cast(pa.int64()).to_pylist()
    elif pa.types.is_struct(column.type):
        values = {"d": column.combine_chunks().field("d").cast(pa.int32()).to_pylist()[0]}
    elif pa.types.is_map(column.type):
        chunk = column.combine_chunks()
        values = list(
            zip(chunk.keys.to_pylist(), chunk.items.cast(pa.int32()).to_pylist(), strict=True)
        )
    else:
        integer_type = pa.int32() if pa.types.is_date32(column.type) else pa.int64()
        values = column.cast(integer_type).to_pylist()[0]
    assert values == stored


def test_json_keeps_dates_within_python(module_http: httpx.Client) -> None:
    sql = "SELECT [DATE '9999-12-31', DATE '0001-01-01'] AS v, {'t': TIMESTAMP '9999-12-31'} AS s"

    response = post_sql(module_http, sql)

    assert response.status_code == 200, response.text
    assert response.json()["data"] == [
        {"v": ["9999-12-31", "0001-01-01"], "s": {"t": "9999-12-31T00:00:00"}}
    ]


END_OF_DAY_SQL = (
    "SELECT [TIME '24:00:00', TIME '01:02:03.5', NULL] AS v, "
    "{'t': TIME '24:00:00', 'n': 1} AS s, MAP {'m': TIME '24:00:00'} AS m"
)


def test_end_of_day_in_lists_json(module_http: httpx.Client) -> None:
    response = post_sql(module_http, END_OF_DAY_SQL)

    assert response.status_code == 200, response.text
    assert response.json()["data"] == [
        {
            "v": ["24:00:00", "01:02:03.500000", None],
            "s": {"t": "24:00:00", "n": 1},
            "m": [["m", "24:00:00"]],
        }
    ]


def test_end_of_day_in_lists_csv(module_http: httpx.Client) -> None:
    response = post_sql(module_http, END_OF_DAY_SQL, CSV)

    assert response.status_code == 200, response.text
    rows = list(csv.DictReader(io.StringIO(response.text)))
    assert rows == [
        {
            "v": '["24:00:00","01:02:03.500000",null]',
            "s": '{"t":"24:00:00","n":1}',
            "m": '[["m","24:00:00"]]',
        }
    ]


def test_end_of_day_in_lists_parquet(module_http: httpx.Client) -> None:
    table = read_table(post_sql(module_http, END_OF_DAY_SQL, PARQUET), PARQUET)

    # Parquet stores the time itself: 24:00:00 is 86,400 seconds in microseconds.
    values = table.column("v").combine_chunks().flatten().cast(pa.int64()).to_pylist()
    assert values == [86_400_000_000, 3_723_500_000, None]


def chunked_table() -> pa.Table:
    """A table of two chunks, the first one sliced, with nulls at every level."""
    day = pa.MonthDayNano([0, 1, 0])
    intervals = pa.array(
        [[day], None, [day, None], [], [pa.MonthDayNano([2, 0, 3_600_000_000_000])]],
        pa.list_(pa.month_day_nano_interval()),
    )
    times = pa.array(
        [{"t": 0}, {"t": 86_400_000_000}, None, {"t": 3_723_500_000}, {"t": None}],
        pa.struct([("t", pa.time64("us"))]),
    )
    first = pa.table({"i": intervals, "t": times}).slice(1, 3)
    second = pa.table({"i": intervals, "t": times}).slice(4, 1)
    return pa.concat_tables([first, second])


def test_chunked_slices_to_parquet() -> None:
    table = chunked_table()

    content = encode_table(portable_table(table, "parquet"), "parquet")

    stored = pq.read_table(pa.BufferReader(content))
    assert stored.column("i").to_pylist() == [None, ["P1D", None], [], ["P2MT1H"]]


def test_chunked_slices_to_json_rows() -> None:
    records = table_records(chunked_table())

    assert [record["t"] for record in records] == [
        {"t": "24:00:00"},
        None,
        {"t": "01:02:03.500000"},
        {"t": None},
    ]


def test_empty_result_to_parquet() -> None:
    table = pa.table({"i": pa.array([], pa.list_(pa.month_day_nano_interval()))})
    empty = pa.Table.from_batches([], schema=table.schema)

    content = encode_table(portable_table(empty, "parquet"), "parquet")

    stored = pq.read_table(pa.BufferReader(content))
    assert stored.schema.field("i").type == pa.list_(pa.field("item", pa.string()))
    assert stored.num_rows == 0


def test_writer_rejection_names_column() -> None:
    # An interval that portable_table did not convert reaches pyarrow's Parquet writer.
    table = pa.table({"n": [1], "i": pa.array([pa.MonthDayNano([0, 1, 0])])})

    with pytest.raises(UnrepresentableValue) as raised:
        encode_table(table, "parquet")

    message = raised.value.message
    assert raised.value.code == "unrepresentable_value"
    assert raised.value.column == "i"
    assert message.startswith("column 'i' (month_day_nano_interval) contains values that the ")
    assert "which the Parquet output cannot represent; request JSON or Arrow IPC" in message
