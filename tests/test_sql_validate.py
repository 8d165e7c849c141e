"""The validator in-process: what it accepts, what it rejects, and how its messages read."""

from __future__ import annotations

import json
import re

import pytest

from sqlstore.errors import QueryRejected, QuerySyntaxError
from sqlstore.sql.duckdb_check import check_with_duckdb
from sqlstore.sql.limits import SqlLimits
from sqlstore.sql.validate import validate_query

VIEWS = {("shop", "users"), ("shop", "orders")}

ACCEPTED = [
    "SELECT * FROM shop.users",
    "FROM shop.users",
    "FROM shop.users SELECT name",
    'SELECT * FROM "SHOP"."Users"',
    "WITH users AS (SELECT 1 AS x) SELECT * FROM users",
    "SELECT user_id, count(*) FROM shop.orders GROUP BY ALL ORDER BY ALL",
    "SELECT * FROM shop.orders QUALIFY row_number() OVER (PARTITION BY user_id) = 1",
    "SELECT * FROM shop.orders AS o ASOF JOIN shop.users AS u ON o.user_id >= u.user_id",
    "SELECT * FROM (PIVOT shop.orders ON user_id IN (1, 2) USING sum(amount))",
    "SELECT 1 AS a UNION ALL SELECT 2 INTERSECT SELECT 2 EXCEPT SELECT 3",
    "VALUES (1, 'a'), (2, 'b')",
    "DESCRIBE shop.users",
    "SUMMARIZE shop.users",
    "SELECT list_transform([1, 2], lambda x: x + 1), [x * 2 FOR x IN [1, 2]]",
    "SELECT list_transform([1, 2], x -> x + 1)",
    "SELECT {'a': 1}.a, [1, 2][1], 'x'::VARCHAR, TRY_CAST('1' AS INTEGER)",
    "SELECT * FROM shop.users USING SAMPLE 10%",
    "SELECT * EXCLUDE (name) FROM shop.users",
    "SELECT COLUMNS('user.*') FROM shop.users",
    "SELECT * FROM shop.users; -- trailing comment",
    "SELECT 'café ☕ 東京' AS s",
    "SELECT repeat('x', 1000000)",
    "SELECT repeat('x', user_id) FROM shop.users",
    "SELECT lpad(name, 10, ' ') || lpad(name, 10, ' ') FROM shop.users",
    "SELECT printf('%05d', user_id), format('{:>8}', name) FROM shop.users",
    "SELECT count(*) FROM range(1000) AS a, range(10000) AS b",
    "SELECT * FROM generate_series(DATE '2020-01-01', DATE '2020-12-31', INTERVAL 1 DAY)",
    "SELECT range(TIMESTAMP '2020-01-01', TIMESTAMP '2020-01-02', INTERVAL '1 hour')",
    "SELECT * FROM shop.users, unnest([1, 2, 3]) AS t(i)",
    "SELECT json_extract('{\"a\": 1}', '$.a'), '{\"a\": 1}'::JSON ->> 'a'",
    "SELECT grouping(name), count(*) FROM shop.users GROUP BY ROLLUP (name)",
    "SELECT name.upper() FROM shop.users",
]


@pytest.mark.parametrize("sql", ACCEPTED)
def test_accepts_analyst_syntax(sql: str) -> None:
    validate_query(sql, VIEWS)


def test_returns_views_and_parameter_values() -> None:
    query = validate_query(
        "SELECT * FROM shop.users AS u JOIN SHOP.ORDERS AS o USING (user_id) WHERE u.name = $n",
        VIEWS,
        {"n": "ada"},
    )

    assert query.tables == frozenset({("shop", "users"), ("shop", "orders")})
    assert query.parameters == {"n": "ada"}


def test_syntax_error_names_line_and_column() -> None:
    with pytest.raises(QuerySyntaxError) as raised:
        validate_query("SELECT *\nFROM (SELECT 1", VIEWS)

    assert raised.value.message.startswith("syntax error at line 2, column 14")
    assert raised.value.details == [{"line": 2, "column": 14}]


@pytest.mark.parametrize(
    ("sql", "line", "column"),
    [
        ('SELECT 1 AS ""', 1, 13),
        ('SELECT 1,\n  2 AS ""', 2, 8),
        ('SELECT 1,\t\t2 AS ""', 1, 17),
        ("SELECT 'café' AS \"\"", 1, 18),
        ("SELECT '😀😀😀' AS y, \"\" AS x", 1, 20),
        ('SELECT 中文 AS x, "" AS z', 1, 17),
        ("SELECT 'e\u0301e\u0301' AS y, \"\" AS x", 1, 21),
        ('SELECT 1\r, ""', 2, 3),
        ('SELECT 1\r\n, ""', 2, 3),
        ("SELECT " + ", ".join(f"c{i}" for i in range(40)) + ' AS "" FROM shop.users', 1, 200),
    ],
)
def test_duckdb_syntax_error_names_position(sql: str, line: int, column: int) -> None:
    with pytest.raises(QuerySyntaxError) as raised:
        check_with_duckdb(sql, VIEWS, {}, SqlLimits())

    assert raised.value.message == (
        f"syntax error at line {line}, column {column}: Parser Error: zero-length delimited "
        "identifier"
    )
    assert raised.value.details == [{"line": line, "column": column}]
    assert re.split(r"\r\n|\r|\n", sql)[line - 1][column - 1 : column + 1] == '""'


def test_incomplete_clause_error_is_readable() -> None:
    with pytest.raises(QuerySyntaxError) as raised:
        validate_query("SELECT * FROM shop.users WHERE", VIEWS)

    assert raised.value.message.startswith("syntax error at line 1, column ")
    assert "incomplete WHERE clause" in raised.value.message
    assert "sqlglot" not in raised.value.message
    assert "<class" not in raised.value.message


@pytest.mark.parametrize(
    ("sql", "expected"),
    [
        ("SELECT * FROM $$x.csv$$", "heredoc string 'x.csv'"),
        ("SELECT * FROM E'x.csv'", "byte string 'x.csv'"),
        ("SELECT * FROM 5", "number '5'"),
        ("SELECT 1 FROM shop.users JOIN", "the end of the query"),
    ],
)
def test_unexpected_token_error_is_readable(sql: str, expected: str) -> None:
    with pytest.raises(QuerySyntaxError) as raised:
        validate_query(sql, VIEWS)

    assert raised.value.message.endswith(f"Expected table name but got {expected}")
    assert "<Token" not in raised.value.message


def test_rejection_names_construct_and_position() -> None:
    with pytest.raises(QueryRejected) as raised:
        validate_query("SELECT 1,\n  current_setting('threads')", VIEWS)

    assert "function current_setting is not allowed" in raised.value.message
    assert raised.value.details == [{"construct": "current_setting", "line": 2, "column": 3}]


def test_invisible_character_position() -> None:
    with pytest.raises(QueryRejected) as raised:
        validate_query("SELECT 1\nFROM\u200bshop.users", VIEWS)

    assert raised.value.details == [{"construct": "U+200B", "line": 2, "column": 5}]


def test_missing_parameter_is_rejected() -> None:
    with pytest.raises(QueryRejected, match=r"missing value for parameter \$name"):
        validate_query("SELECT * FROM shop.users WHERE name = $name", VIEWS)


def test_unused_parameter_is_rejected() -> None:
    with pytest.raises(QueryRejected, match="parameter 'extra' is not used"):
        validate_query("SELECT 1", VIEWS, {"extra": 1})


def test_parameter_must_be_scalar_or_list() -> None:
    with pytest.raises(QueryRejected, match=r"invalid value for parameter \$p: dict"):
        validate_query("SELECT $p", VIEWS, {"p": {"nested": 1}})


def test_parameter_sized_builder_is_bounded_by_its_value() -> None:
    validate_query("SELECT repeat('x', $n)", VIEWS, {"n": 10})

    with pytest.raises(QueryRejected, match="count argument of repeat is 1,000,000,000"):
        validate_query("SELECT repeat('x', $n)", VIEWS, {"n": 1_000_000_000})


@pytest.mark.parametrize(
    ("sql", "parameters"),
    [
        ("SELECT length(repeat($s, $n)) AS v", {"s": "x", "n": "100000000"}),
        ("SELECT list_resize([2], $n) AS v", {"n": " 50000000 "}),
        ("SELECT length(lpad('x', $n, 'y')) AS v", {"n": "2e7"}),
    ],
)
def test_text_sized_builder_is_bounded(sql: str, parameters: dict[str, str]) -> None:
    # Sizes sent as text were once let through, and DuckDB cast them to numbers.
    with pytest.raises(QueryRejected, match="SQLSTORE_SQL_MAX_BUILDER_SIZE"):
        validate_query(sql, [], parameters)


def test_builder_bound_follows_limits() -> None:
    limits = SqlLimits(max_builder_size=10)
    validate_query("SELECT repeat('x', 10)", VIEWS, limits=limits)

    with pytest.raises(QueryRejected, match="SQLSTORE_SQL_MAX_BUILDER_SIZE"):
        validate_query("SELECT repeat('x', 11)", VIEWS, limits=limits)


def test_generated_rows_bound_follows_limits() -> None:
    limits = SqlLimits(max_generated_rows=100)
    validate_query("SELECT * FROM range(10) AS a, range(10) AS b", VIEWS, limits=limits)

    with pytest.raises(QueryRejected, match="SQLSTORE_SQL_MAX_GENERATED_ROWS"):
        validate_query("SELECT * FROM range(10) AS a, range(11) AS b", VIEWS, limits=limits)


def test_text_longer_than_limit_is_rejected() -> None:
    with pytest.raises(QueryRejected, match="SQLSTORE_SQL_MAX_LENGTH"):
        validate_query("SELECT 1 " + " " * 100, VIEWS, limits=SqlLimits(max_length=100))


@pytest.mark.parametrize("sql", [None, 42, ["SELECT 1"]])
def test_non_string_sql_is_rejected(sql: object) -> None:
    with pytest.raises(QueryRejected, match="expected the SQL text as a string"):
        validate_query(sql, VIEWS)


def test_unregistered_view_is_rejected_after_removal() -> None:
    sql = "SELECT * FROM shop.orders"
    validate_query(sql, VIEWS)

    with pytest.raises(QueryRejected, match="shop.orders is not a registered feature view"):
        validate_query(sql, {("shop", "users")})


def test_describe_of_unregistered_table_is_rejected() -> None:
    with pytest.raises(QueryRejected, match="shop.secrets"):
        validate_query("DESCRIBE shop.secrets", VIEWS)


def test_canonical_ignores_spacing_comments_and_keyword_case() -> None:
    reference = validate_query("SELECT name, count(*) AS n FROM shop.users GROUP BY name", VIEWS)
    variants = [
        "select name, COUNT(*) as n from shop.users group by name",
        "SELECT name,\n       count(*) AS n -- per name\nFROM shop.users /* all */ GROUP BY name;",
    ]

    for sql in variants:
        assert validate_query(sql, VIEWS).canonical == reference.canonical, sql


def test_canonical_keeps_identifier_case_and_literal_types() -> None:
    reference = validate_query("SELECT name FROM shop.users WHERE user_id = 1", VIEWS)
    # The first names its output column NAME; the second compares with a string.
    different = [
        "SELECT NAME FROM shop.users WHERE user_id = 1",
        "SELECT name FROM shop.users WHERE user_id = '1'",
    ]

    for sql in different:
        assert validate_query(sql, VIEWS).canonical != reference.canonical, sql


def test_canonical_has_no_source_positions() -> None:
    canonical = validate_query("SELECT  name FROM shop.users", VIEWS).canonical

    assert "query_location" not in canonical
    assert json.loads(canonical)["statements"][0]["node"]["type"] == "SELECT_NODE"


@pytest.mark.parametrize(
    ("sql", "volatile"),
    [
        ("SELECT name FROM shop.users", False),
        ("SELECT random() FROM shop.users", True),
        ("SELECT now()", True),
        ("SELECT CURRENT_DATE", True),
        ("SELECT gen_random_uuid()", True),
        ("SELECT * FROM shop.users USING SAMPLE 10%", True),
        ("WITH r AS (SELECT uuid() AS u) SELECT * FROM r", True),
    ],
)
def test_volatile_queries_are_marked(sql: str, volatile: bool) -> None:
    assert validate_query(sql, VIEWS).volatile is volatile


def test_cte_names_count_for_whole_statement() -> None:
    # Both layers accept a CTE name from any query of the statement, also where the walk meets
    # the reference before the definition, as with `c` in the outer FROM here. Running the
    # query then fails in DuckDB with "Table with name c does not exist".
    sql = "SELECT * FROM c, (WITH c AS (SELECT 1 AS x) SELECT x FROM c) AS s"

    assert validate_query(sql, VIEWS).tables == frozenset()
    check_with_duckdb(sql, VIEWS, {}, SqlLimits())


def test_duckdb_layer_rejects_unknown_bare_table() -> None:
    # No CTE defines `d`, and check_with_duckdb must reject it without the sqlglot layer.
    sql = "WITH c AS (SELECT 1 AS x) SELECT x FROM c ORDER BY (SELECT max(x) FROM d)"

    with pytest.raises(QueryRejected, match="not a CTE of this query"):
        check_with_duckdb(sql, VIEWS, {}, SqlLimits())


@pytest.mark.parametrize(("text", "shown"), [("nan", "nan"), ("-1e309", "-inf"), ("inf", "inf")])
def test_non_finite_size_parameter(text: str, shown: str) -> None:
    sql = "SELECT length(repeat($s, CAST($n AS DOUBLE))) AS n"

    with pytest.raises(QueryRejected) as raised:
        validate_query(sql, VIEWS, {"s": "x", "n": text})
    assert raised.value.message == (
        f"the count argument of repeat is {shown}, which is not a finite number; use a whole "
        "number up to 1,000,000 (line 1, column 15)"
    )
