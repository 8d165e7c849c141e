"""The validator in-process: what it accepts, what it rejects, and how its messages read."""

from __future__ import annotations

import json
import re
import unicodedata

import duckdb
import pytest

from sqlstore.errors import QueryRejected, QuerySyntaxError
from sqlstore.sql.duckdb_check import CLI_HINTS, check_with_duckdb
from sqlstore.sql.limits import SqlLimits
from sqlstore.sql.validate import analyse_query, check_text, validate_query

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
        # One-argument age measures from the current date; DuckDB 2.0.1 marks it CONSISTENT.
        ("SELECT age(TIMESTAMP '2000-01-01')", True),
        ("SELECT age(TIMESTAMP '2000-01-01', TIMESTAMP '1999-01-01')", False),
        # A built-in macro: current_timestamp - CAST(i AS INTERVAL).
        ("SELECT ago(INTERVAL 1 DAY)", True),
        # Column references that DuckDB calls a clock function for.
        ('SELECT "current_date"', True),
        ("SELECT alias.current_timestamp", True),
        ("SELECT localtime", True),
        ("SELECT u.current_date FROM shop.users AS u", False),
        ("SELECT * FROM shop.users TABLESAMPLE 10%", True),
        ("SELECT uuidv7(), today()", True),
        # Functions that depend only on the TimeZone setting, which the sandbox fixes.
        ("SELECT year(TIMESTAMPTZ '2020-01-01'), TIMESTAMPTZ '2020-01-01' + INTERVAL 1 DAY", False),
    ],
)
def test_volatile_queries_are_marked(sql: str, volatile: bool) -> None:
    assert validate_query(sql, VIEWS).volatile is volatile


@pytest.mark.parametrize(
    "sql",
    [
        "SELECT age(TIMESTAMP '2000-01-01')",
        "SELECT ago(INTERVAL 1 DAY)",
        'SELECT "current_date"',
        "SELECT random()",
    ],
)
def test_sqlglot_layer_marks_volatile(sql: str) -> None:
    # Training sets decide whether to cache from this layer alone.
    assert analyse_query(sql).volatile is True


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


# Parameters next to operators. sqlglot reads `$n*$` as the start of a dollar-quoted string
# with the tag `n*`, where DuckDB reads the parameter $n and an operator.

PARAMETER_ARITHMETIC = [
    "SELECT $n*$n AS v",
    "SELECT $n+$n AS v",
    "SELECT $n/$n AS v",
    "SELECT $n%$n AS v",
    "SELECT $n||$n AS v",
    "SELECT $n,$n",
    "SELECT ($n)*($n) AS v",
    "SELECT [$n,$n] AS v",
    "SELECT $n*$n*$n AS v",
]


@pytest.mark.parametrize("sql", PARAMETER_ARITHMETIC)
def test_parameter_next_to_operator(sql: str) -> None:
    query = validate_query(sql, VIEWS, {"n": 3})

    assert query.parameters == {"n": 3}
    assert analyse_query(sql).parameters == frozenset({"n"})


def test_non_ascii_parameter_next_to_operator() -> None:
    query = validate_query("SELECT $é*$é AS v", VIEWS, {"é": 3})

    assert query.parameters == {"é": 3}


def test_dollar_quote_hides_nothing_from_sqlglot() -> None:
    # DuckDB reads $a, $b, read_csv(...), $a, $b. sqlglot once read the text from the first
    # `$a,$` to the second as one string, so its layer never saw read_csv.
    sql = "SELECT $a,$b, read_csv('/etc/passwd'), $a,$b"

    with pytest.raises(QueryRejected) as raised:
        analyse_query(sql)
    assert raised.value.message == (
        "function read_csv is not allowed because it reads files; docs/sql.md describes the "
        "functions queries may call (line 1, column 15)"
    )


@pytest.mark.parametrize(
    ("sql", "line", "column"),
    [
        ("SELECT $n*$n, current_setting('threads')", 1, 15),
        ("SELECT $n*$n,\n  $n*$n + current_setting('threads')", 2, 11),
    ],
)
def test_rejection_position_after_parameters(sql: str, line: int, column: int) -> None:
    with pytest.raises(QueryRejected) as raised:
        validate_query(sql, VIEWS, {"n": 1})

    [detail] = raised.value.details
    assert (detail["line"], detail["column"]) == (line, column)
    assert sql.splitlines()[line - 1][column - 1 :].startswith("current_setting")


def test_syntax_error_position_after_parameters() -> None:
    sql = "SELECT $n*$n, $n*$n +"

    with pytest.raises(QuerySyntaxError) as raised:
        validate_query(sql, VIEWS, {"n": 1})

    [detail] = raised.value.details
    assert detail == {"line": 1, "column": 21}
    assert sql[detail["column"] - 1] == "+"


@pytest.mark.parametrize("sql", ["SELECT $q$a*$b$q$ AS s", "SELECT $q$ $n*$n $q$ AS s"])
def test_dollar_quoted_string_stays_a_string(sql: str) -> None:
    assert validate_query(sql, VIEWS).parameters == {}


# Nesting depth of built values: a result can hold at most 62 levels.


def nested(depth: int, opening: str, closing: str, inner: str = "1") -> str:
    return opening * depth + inner + closing * depth


@pytest.mark.parametrize(
    ("sql", "name", "depth"),
    [
        ("SELECT " + nested(63, "[", "]"), "list_value", 63),
        ("SELECT " + nested(70, "[", "]"), "list_value", 70),
        ("SELECT " + nested(63, "{'a': ", "}"), "struct_pack", 63),
        ("SELECT " + nested(32, "{'a': [", "]}"), "struct_pack", 64),
    ],
)
def test_value_nested_too_deeply(sql: str, name: str, depth: int) -> None:
    with pytest.raises(QueryRejected) as raised:
        validate_query(sql, VIEWS)

    assert raised.value.message == (
        f"{name} builds a value nested {depth} levels deep (lists, arrays, structs, maps and "
        "unions inside each other), more than the maximum 62 that a result can hold; nest "
        "fewer levels (line 1, column 8)"
    )
    assert raised.value.details == [{"construct": name, "line": 1, "column": 8}]


@pytest.mark.parametrize(
    ("sql", "name", "depth"),
    [
        ("SELECT NULL::INTEGER" + "[]" * 63, "CAST", 63),
        ("SELECT CAST(NULL AS " + nested(32, "MAP(INT, ", ")", "INT") + ")", "CAST", 64),
        ("SELECT " + nested(32, "MAP {1: ", "}"), "map", 64),
        ("SELECT to_json(" + nested(63, "[", "]") + ")", "list_value", 63),
        ("SELECT [x FOR x IN " + nested(63, "[", "]") + "]", "list_value", 63),
    ],
)
def test_nesting_counts_casts_and_maps(sql: str, name: str, depth: int) -> None:
    with pytest.raises(QueryRejected) as raised:
        validate_query(sql, VIEWS)

    assert raised.value.message.startswith(f"{name} builds a value nested {depth} levels deep")
    assert "more than the maximum 62 that a result can hold; nest fewer levels" in (
        raised.value.message
    )


@pytest.mark.parametrize(
    "sql",
    [
        "SELECT " + nested(62, "[", "]"),
        "SELECT " + nested(62, "{'a': ", "}"),
        "SELECT " + nested(31, "MAP {1: ", "}"),
        "SELECT NULL::INTEGER" + "[]" * 62,
        "SELECT [x FOR x IN " + nested(62, "[", "]") + "]",
    ],
)
def test_value_nested_62_levels_is_accepted(sql: str) -> None:
    validate_query(sql, VIEWS)


# replace and regexp_replace: the replacement's length multiplies the text's.


def test_replace_counts_replacement_length() -> None:
    validate_query("SELECT replace(repeat('a', 100000), 'a', 'bbbbbbbbbb')", VIEWS)

    with pytest.raises(QueryRejected) as raised:
        validate_query("SELECT replace(repeat('a', 100000), 'a', 'bbbbbbbbbbb')", VIEWS)
    assert raised.value.message == (
        "replace(...) would build a value of about 1,100,000 elements or characters, more than "
        "the maximum 1,000,000 (SQLSTORE_SQL_MAX_BUILDER_SIZE); the size grows with the text's "
        "size times the replacement's length, so shorten either (line 1, column 8)"
    )


def test_replacement_parameter_counts_its_value() -> None:
    sql = "SELECT replace(repeat('a', 1000), 'a', $b) AS s"
    validate_query(sql, VIEWS, {"b": "x" * 1000})

    with pytest.raises(QueryRejected, match="about 1,001,000 elements or characters"):
        validate_query(sql, VIEWS, {"b": "x" * 1001})


def test_repeat_counts_text_length() -> None:
    validate_query("SELECT repeat('ab', 500000)", VIEWS)

    with pytest.raises(QueryRejected) as raised:
        validate_query("SELECT repeat('ab', 500001)", VIEWS)
    assert raised.value.message == (
        "repeat(...) would build a value of about 1,000,002 elements or characters, more than "
        "the maximum 1,000,000 (SQLSTORE_SQL_MAX_BUILDER_SIZE); the size is the count times "
        "the repeated text's length, so lower either (line 1, column 8)"
    )


REPLACE_CASES = [
    f"replace(repeat('a', {n}), 'a', '{replacement}')"
    for n in (10, 99, 100, 101, 400)
    for replacement in ("", "b", "bb", "bbbbbbbbbb", "b" * 11)
] + [
    f"regexp_replace(repeat('a', {n}), '{pattern}', '{replacement}'{options})"
    for n in (10, 50, 99, 100, 300)
    for pattern, replacement, options in [
        ("", "bb", ", 'g'"),
        ("a", "bbb", ", 'g'"),
        ("(a)", "\\1\\1\\1\\1", ", 'g'"),
        (".*", "\\0\\0\\0\\0\\0\\0", ""),
        ("x*", "[\\0]", ", 'g'"),
    ]
]


@pytest.mark.parametrize("expression", REPLACE_CASES)
def test_replace_bound_covers_result(expression: str) -> None:
    # DuckDB computes the real length; whatever is longer than the limit must be rejected.
    limits = SqlLimits(max_builder_size=1000)
    [(length,)] = duckdb.connect().execute(f"SELECT length({expression})").fetchall()
    try:
        validate_query(f"SELECT {expression}", VIEWS, limits=limits)
        accepted = True
    except QueryRejected:
        accepted = False

    assert accepted is False or length <= limits.max_builder_size, (expression, length)


# Characters: the code points of Unicode's Default_Ignorable_Code_Point property
# (DerivedCoreProperties.txt) render as nothing and are rejected wherever they appear.

DEFAULT_IGNORABLE = [
    (0x00AD, 0x00AD),
    (0x034F, 0x034F),
    (0x061C, 0x061C),
    (0x115F, 0x1160),
    (0x17B4, 0x17B5),
    (0x180B, 0x180F),
    (0x200B, 0x200F),
    (0x202A, 0x202E),
    (0x2060, 0x206F),
    (0x3164, 0x3164),
    (0xFE00, 0xFE0F),
    (0xFEFF, 0xFEFF),
    (0xFFA0, 0xFFA0),
    (0xFFF0, 0xFFF8),
    (0x1BCA0, 0x1BCA3),
    (0x1D173, 0x1D17A),
    (0xE0000, 0xE0FFF),
]


def character_message(code: int, line: int, column: int) -> str:
    name = unicodedata.name(chr(code), "unnamed character")
    return (
        f"invalid character U+{code:04X} ({name}) at line {line}, column {column}: SQL may "
        "contain only visible characters, spaces, tabs and line breaks; write it inside a "
        f"string as chr({code})"
    )


def test_every_default_ignorable_is_rejected() -> None:
    failures = []
    for first, last in DEFAULT_IGNORABLE:
        for code in range(first, last + 1):
            for sql, column in ((f"SELECT{chr(code)}1", 7), (f"SELECT '{chr(code)}'", 9)):
                try:
                    check_text(sql, SqlLimits())
                    failures.append((hex(code), sql, "accepted"))
                except QueryRejected as error:
                    if error.message != character_message(code, 1, column):
                        failures.append((hex(code), error.message))

    assert failures == []


@pytest.mark.parametrize("code", [0x034F, 0x3164, 0x115F, 0x17B4, 0x180B, 0xFE0F, 0xFFA0, 0xE0100])
def test_invisible_mark_or_letter_is_rejected(code: int) -> None:
    # sqlglot reads these letters and marks as part of a name, so SELECT<U+3164>read_csv(...)
    # was once reported as an ANONYMOUS statement.
    sql = f"SELECT{chr(code)}read_csv('/etc/passwd')"

    with pytest.raises(QueryRejected) as raised:
        validate_query(sql, VIEWS)

    assert raised.value.message == character_message(code, 1, 7)
    assert raised.value.details == [{"construct": f"U+{code:04X}", "line": 1, "column": 7}]


@pytest.mark.parametrize("code", [0x2800, 0xFFFC, 0x1D159])
def test_blank_looking_character_is_rejected(code: int) -> None:
    # Not default-ignorable, but blank in common fonts, so `x<U+2800>` looks like `x`.
    with pytest.raises(QueryRejected) as raised:
        validate_query(f"SELECT 1 AS x{chr(code)}", VIEWS)

    assert raised.value.message == character_message(code, 1, 14)


# SQL value keywords: DuckDB's binder calls a function for these column names when no column
# has the name.

SESSION_KEYWORD_CASES = [
    ("SELECT user", "user", "reads session state", 8),
    ("SELECT current_role", "current_role", "reads session state", 8),
    ('SELECT "USER"', "user", "reads session state", 8),
    ("SELECT alias.current_role", "current_role", "reads session state", 8),
    ("SELECT current_schema", "current_schema", "reads catalog state", 8),
    ("SELECT 1 WHERE user = 'duckdb'", "user", "reads session state", 16),
    ("SELECT * FROM range(length(user))", "user", "reads session state", 28),
]


@pytest.mark.parametrize(("sql", "name", "reason", "column"), SESSION_KEYWORD_CASES)
def test_session_keyword_is_rejected(sql: str, name: str, reason: str, column: int) -> None:
    with pytest.raises(QueryRejected) as raised:
        validate_query(sql, VIEWS)

    assert raised.value.message == (
        f"function {name} is not allowed because it {reason}; docs/sql.md describes the "
        f"functions queries may call. To read a column named {name}, qualify it with its "
        f"table, as t.{name}: DuckDB calls the function when no column has that name (line 1, "
        f"column {column})"
    )
    assert raised.value.details == [{"construct": name, "line": 1, "column": column}]


@pytest.mark.parametrize("name", ["current_user", "session_user"])
def test_session_function_keyword_is_rejected(name: str) -> None:
    with pytest.raises(QueryRejected) as raised:
        validate_query(f"SELECT {name}", VIEWS)

    assert raised.value.message == (
        f"function {name} is not allowed because it reads session state; docs/sql.md "
        "describes the functions queries may call"
    )


def test_qualified_keyword_column_is_accepted() -> None:
    query = validate_query("SELECT u.user, u.current_role FROM shop.users AS u", VIEWS)

    assert query.tables == frozenset({("shop", "users")})


# Statements and parameters that only DuckDB's parser reads.


def test_unknown_statement_named_by_keyword() -> None:
    # sqlglot reads DEALLOCATE p as a column with an alias.
    with pytest.raises(QueryRejected) as raised:
        validate_query("-- free it\nDEALLOCATE p", VIEWS)

    assert raised.value.message == (
        "DEALLOCATE statements are not allowed: send one read-only query (SELECT, WITH, VALUES, "
        "FROM ..., PIVOT, UNPIVOT, DESCRIBE or SUMMARIZE of a feature view)"
    )
    assert raised.value.details == [{"construct": "DEALLOCATE"}]


def test_pivot_without_in_list_inside_subquery() -> None:
    sql = "SELECT * FROM shop.orders WHERE user_id IN (PIVOT shop.orders ON user_id USING count(*))"

    with pytest.raises(QueryRejected) as raised:
        validate_query(sql, VIEWS)

    assert raised.value.message == (
        "PIVOT without an IN list runs several statements: list the values to pivot on, for "
        "example PIVOT content.movie_genres ON year IN (1995, 1996) USING count(*)"
    )
    assert raised.value.details == [{"construct": "PIVOT"}]


@pytest.mark.parametrize(
    ("sql", "written", "column"),
    [("SELECT ?1", "?1", 8), ("SELECT 1 AS a,\n  ?2 + ?1", "?2", 3)],
)
def test_numbered_question_mark_is_rejected(sql: str, written: str, column: int) -> None:
    line = sql.count("\n") + 1

    with pytest.raises(QueryRejected) as raised:
        validate_query(sql, VIEWS)

    assert raised.value.message == (
        f"positional parameter {written} is not supported: write a named parameter such as "
        f"$genre instead (line {line}, column {column})"
    )
    assert raised.value.details == [{"construct": written, "line": line, "column": column}]


@pytest.mark.parametrize(("sql", "written"), [("SELECT $1", "$1"), ("SELECT ?", "?")])
def test_positional_parameter_rejected_by_duckdb_layer(sql: str, written: str) -> None:
    with pytest.raises(QueryRejected) as raised:
        check_with_duckdb(sql, VIEWS, {}, SqlLimits())

    assert raised.value.message == (
        f"positional parameter {written} is not supported: write a named parameter such as "
        "$genre instead (line 1, column 8)"
    )


# Messages of the size bounds.


def test_levenshtein_bound_is_about_work() -> None:
    sql = "SELECT levenshtein(repeat('a', 1000000), repeat('b', 1000000))"

    with pytest.raises(QueryRejected) as raised:
        validate_query(sql, VIEWS)

    assert raised.value.message == (
        "levenshtein(...) compares texts of about 1,000,000 and 1,000,000 characters, and its "
        "time grows with the product of their lengths, about 1,000,000,000,000, more than the "
        "maximum 1,000,000 (SQLSTORE_SQL_MAX_BUILDER_SIZE); compare shorter texts (line 1, "
        "column 8)"
    )


def test_levenshtein_result_is_a_number() -> None:
    # The distance is one number, so it multiplies no size around it.
    sql = "SELECT repeat('x', 1000) || levenshtein(repeat('a', 1000), repeat('b', 1000))"

    assert validate_query(sql, VIEWS).tables == frozenset()


def test_unevaluated_call_in_size_is_named() -> None:
    sql = "SELECT repeat('x', strlen(repeat('y', 1000000)) * 3000)"

    with pytest.raises(QueryRejected) as raised:
        validate_query(sql, VIEWS)

    assert raised.value.message == (
        "cannot bound the count argument of repeat before the query runs: it calls strlen, "
        "which the size check does not evaluate; write it as a literal number, a $parameter or "
        "an expression over columns (line 1, column 8)"
    )


@pytest.mark.parametrize(
    ("sql", "value", "cast", "where"),
    [
        (
            "SELECT range(TIMESTAMP '2020-01-01', $n, INTERVAL 1 HOUR)",
            "next monday",
            "$n::BIGINT or $n::DATE or $n::TIMESTAMP",
            " (line 1, column 8)",
        ),
        # A date alone is no bound of range; DuckDB rejects range(DATE) when it binds.
        ("SELECT range($n)", "2020-01-01", "$n::DATE", " (line 1, column 8)"),
        # DuckDB keeps no position for a table function.
        (
            "SELECT count(*) FROM generate_series($n)",
            "ten",
            "$n::BIGINT or $n::DATE or $n::TIMESTAMP",
            "",
        ),
    ],
)
def test_text_parameter_in_range_suggests_cast(sql: str, value: str, cast: str, where: str) -> None:
    name = "generate_series" if "generate_series" in sql else "range"

    with pytest.raises(QueryRejected) as raised:
        validate_query(sql, VIEWS, {"n": value})

    assert raised.value.message == (
        f'cannot bound {name}(...): parameter $n is text ("{value}"), and {name} takes numbers, '
        f"or DATE or TIMESTAMP values with an INTERVAL step; cast it, as {cast}{where}"
    )


@pytest.mark.parametrize("text", ["10", " 10 ", "0x0A", "1_0"])
def test_number_text_in_range_counts_as_number(text: str) -> None:
    # GET /sql sends parameters as text, and DuckDB casts text that spells a number.
    limits = SqlLimits(max_generated_rows=10)
    sql = "SELECT count(*) FROM range($n)"
    validate_query(sql, VIEWS, {"n": text}, limits=limits)

    with pytest.raises(QueryRejected, match="SQLSTORE_SQL_MAX_GENERATED_ROWS"):
        validate_query(sql, VIEWS, {"n": "11"}, limits=limits)


def test_date_text_in_range_counts_as_timestamp() -> None:
    limits = SqlLimits(max_builder_size=366)
    sql = "SELECT range($start, DATE '2021-01-01', INTERVAL 1 DAY) AS days"
    validate_query(sql, VIEWS, {"start": "2020-01-01"}, limits=limits)

    with pytest.raises(QueryRejected, match="about 367 elements"):
        validate_query(sql, VIEWS, {"start": "2019-12-31T00:00:00"}, limits=limits)


def test_cast_text_parameter_in_range_is_bounded() -> None:
    validate_query("SELECT count(*) FROM range($n::BIGINT)", VIEWS, {"n": "10"})

    with pytest.raises(QueryRejected, match="SQLSTORE_SQL_MAX_GENERATED_ROWS"):
        validate_query("SELECT count(*) FROM range($n::BIGINT)", VIEWS, {"n": "100000000"})


# Integer parameters beyond what DuckDB's Python client binds (-2^127 to 2^128-1).


@pytest.mark.parametrize("value", [2**128 - 1, -(2**127), [1, 2**127]])
def test_integer_parameter_at_duckdb_limits(value: object) -> None:
    assert validate_query("SELECT $n AS n", VIEWS, {"n": value}).parameters == {"n": value}


@pytest.mark.parametrize(
    ("value", "shown"),
    [
        (10**59, "100000000000...0000 (60 digits)"),
        (2**128, "340282366920938463463374607431768211456"),
        (-(2**127) - 1, "-170141183460469231731687303715884105729"),
        ([1, -(10**45)], "-10000000000...0000 (46 digits)"),
    ],
)
def test_integer_parameter_beyond_duckdb_is_rejected(value: object, shown: str) -> None:
    with pytest.raises(QueryRejected) as raised:
        validate_query("SELECT $n AS n", VIEWS, {"n": value})

    assert raised.value.message == (
        f"invalid value for parameter $n: {shown} is outside the integers DuckDB can bind, "
        "-2^127 to 2^128-1 (HUGEINT and UHUGEINT); send a smaller number, or send it as a "
        "string and cast it in the SQL, as $n::DOUBLE or $n::BIGNUM"
    )


# Messages worded for the command line.


def test_cli_hints_name_options() -> None:
    with pytest.raises(QueryRejected) as missing:
        validate_query("SELECT $genre", VIEWS, hints=CLI_HINTS)
    with pytest.raises(QueryRejected) as unknown:
        validate_query("SELECT * FROM shop.nothing", VIEWS, hints=CLI_HINTS)

    assert missing.value.message == (
        "missing value for parameter $genre: pass it as --param genre=VALUE"
    )
    assert unknown.value.message == (
        "table shop.nothing is not a registered feature view; read views as group.name "
        "(`sqlstore info` lists them)"
    )


def test_http_hints_name_params() -> None:
    with pytest.raises(QueryRejected) as raised:
        validate_query("SELECT $genre, $year", VIEWS)

    assert raised.value.message == ("missing value for parameter $genre, $year: add them to params")
