"""Behaviours of DuckDB 2.0 and sqlglot 30 that the SQL sandbox is designed around.

Each test first shows the behaviour on a plain DuckDB connection or sqlglot call, then checks
the part of sqlstore that handles it. When an upgrade changes a behaviour, the first half fails
and points at the design decision to revisit.
"""

from __future__ import annotations

import json
import threading
import time
import unicodedata
from pathlib import Path

import duckdb
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import sqlglot
from sqlglot import exp

from sqlstore.errors import QueryRejected, QuerySyntaxError
from sqlstore.identifiers import quote_string
from sqlstore.sql.duckdb_check import check_with_duckdb, select_statement
from sqlstore.sql.functions import (
    SQL_VALUE_FUNCTIONS,
    VOLATILE_FUNCTIONS,
    is_allowed_function,
    is_volatile_call,
)
from sqlstore.sql.limits import SqlLimits
from sqlstore.sql.sandbox import Sandbox
from sqlstore.sql.validate import REJECTED_CHARACTER_CATEGORIES, check_text, validate_query

VIEWS = {("shop", "users")}
INVISIBLE_SPACES = {
    "zero width space": "\u200b",
    "byte order mark": "\ufeff",
    "word joiner": "\u2060",
}


def serialized_table_functions(sql: str) -> list[str]:
    """Return the table functions DuckDB's parser finds in `sql`."""
    connection = duckdb.connect()
    tree = json.loads(connection.execute("SELECT json_serialize_sql($1)", [sql]).fetchone()[0])
    found = []

    def walk(node: object) -> None:
        if isinstance(node, dict):
            if node.get("type") == "TABLE_FUNCTION":
                found.append(node["function"]["function_name"])
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for item in node:
                walk(item)

    walk(tree)
    return found


@pytest.mark.parametrize("name", INVISIBLE_SPACES)
def test_invisible_characters_hide_table_function_from_sqlglot(name: str) -> None:
    space = INVISIBLE_SPACES[name]
    sql = f"SELECT a{space}FROM{space}glob('/*')"
    parsed = sqlglot.parse_one(sql, read="duckdb")
    anonymous = [node.name for node in parsed.find_all(exp.Anonymous)]

    assert serialized_table_functions(sql) == ["glob"]
    assert anonymous == [f"a{space}FROM{space}glob"]
    assert list(parsed.find_all(exp.Table)) == []
    with pytest.raises(QueryRejected, match=f"invalid character U\\+{ord(space):04X}"):
        validate_query(sql, VIEWS)


def test_sqlglot_types_file_readers() -> None:
    csv = sqlglot.parse_one("SELECT * FROM read_csv('/etc/passwd')", read="duckdb")
    parquet = sqlglot.parse_one("SELECT * FROM read_parquet('x.parquet')", read="duckdb")

    assert csv.find(exp.ReadCSV) is not None
    assert csv.find(exp.Anonymous) is None
    assert parquet.find(exp.ReadParquet) is not None
    with pytest.raises(QueryRejected, match="read_csv"):
        validate_query("SELECT * FROM read_csv('/etc/passwd')", VIEWS)
    with pytest.raises(QueryRejected, match="read_parquet"):
        validate_query("SELECT * FROM read_parquet('x.parquet')", VIEWS)


def test_sqlglot_recursion_error_on_deep_nesting() -> None:
    sql = "SELECT " + "(" * 3000 + "1" + ")" * 3000

    with pytest.raises(RecursionError):
        sqlglot.parse_one(sql, read="duckdb")
    with pytest.raises(QueryRejected, match="nested too deeply"):
        validate_query(sql, VIEWS)


def test_duckdb_depth_limit_is_rejection() -> None:
    sql = "SELECT " + "+".join(["1"] * 3000)

    with pytest.raises(duckdb.ParserException, match="Max expression depth limit of 1000"):
        duckdb.connect().extract_statements(sql)
    with pytest.raises(QueryRejected) as raised:
        validate_query(sql, VIEWS)
    assert raised.value.message == (
        "query is nested more than 1000 levels deep, the most that DuckDB allows; "
        "flatten nested expressions or subqueries"
    )
    assert raised.value.details == [{"construct": "expression depth"}]


def test_sqlglot_reads_parameter_as_dollar_quote() -> None:
    # The tag of a dollar-quoted string has only name characters in DuckDB, while sqlglot takes
    # everything up to the next `$`, here "a,".
    sql = "SELECT $a,$b, 5, $a,$b"
    tokens = [(token.token_type.name, token.text) for token in sqlglot.tokenize(sql, "duckdb")]
    values = duckdb.connect().execute(sql, {"a": 1, "b": 2}).fetchall()

    assert tokens == [("SELECT", "SELECT"), ("HEREDOC_STRING", "b, 5, "), ("VAR", "b")]
    assert values == [(1, 2, 5, 1, 2)]
    assert validate_query(sql, VIEWS, {"a": 1, "b": 2}).parameters == {"a": 1, "b": 2}


@pytest.mark.parametrize(("depth", "exported"), [(62, True), (63, False)])
def test_arrow_import_stops_at_nesting_depth(depth: int, exported: bool) -> None:
    relation = duckdb.connect().sql("SELECT NULL::INTEGER" + "[]" * depth + " AS x")
    try:
        relation.to_arrow_table()
        succeeded = True
    except pa.ArrowInvalid as error:
        assert "Recursion level in ArrowSchema struct exceeded" in str(error)
        succeeded = False

    assert succeeded is exported
    if exported:
        validate_query("SELECT NULL::INTEGER" + "[]" * depth, VIEWS)
    else:
        with pytest.raises(QueryRejected, match=f"nested {depth} levels deep"):
            validate_query("SELECT NULL::INTEGER" + "[]" * depth, VIEWS)


def test_sqlglot_parses_bare_keyword_as_column() -> None:
    assert isinstance(sqlglot.parse_one("CHECKPOINT", read="duckdb"), exp.Column)
    with pytest.raises(QueryRejected, match="CHECKPOINT statements are not allowed"):
        validate_query("CHECKPOINT", VIEWS)


def test_execute_runs_every_stacked_statement() -> None:
    connection = duckdb.connect()
    connection.execute("SELECT 1; CREATE TABLE stacked AS SELECT 42 AS x")

    assert connection.execute("SELECT x FROM stacked").fetchall() == [(42,)]
    with pytest.raises(QueryRejected, match="2 statements"):
        select_statement(connection, "SELECT 1; CREATE TABLE other AS SELECT 1")
    with pytest.raises(QueryRejected, match="2 statements"):
        validate_query("SELECT 1; CREATE TABLE other AS SELECT 1", VIEWS)


def test_json_serialize_sql_describes_only_select() -> None:
    connection = duckdb.connect()

    def serialized(sql: str) -> dict:
        return json.loads(connection.execute("SELECT json_serialize_sql($1)", [sql]).fetchone()[0])

    assert len(serialized("SELECT 1; SELECT 2")["statements"]) == 2
    for sql in ("COPY (SELECT 1) TO 'x.csv'", "SET threads = 1", "PIVOT t ON y USING sum(z)"):
        assert serialized(sql)["error"] is True, sql
        assert "Only SELECT statements" in serialized(sql)["error_message"], sql

    # The DuckDB layer parses once with json_serialize_sql and names the type from
    # extract_statements only when that fails.
    cases = {
        "SELECT 1; SELECT 2": "DuckDB reads 2 statements",
        "COPY (SELECT 1) TO 'x.csv'": "as a COPY statement",
        "PIVOT shop.users ON name USING count(*)": "PIVOT without an IN list",
        "SELECT 1 FROM": "syntax error",
    }
    for sql, message in cases.items():
        with pytest.raises((QueryRejected, QuerySyntaxError), match=message):
            check_with_duckdb(sql, VIEWS, {}, SqlLimits())


def connection_tree(sql: str) -> dict:
    """Return json_serialize_sql's output for `sql`, bound as a parameter."""
    text = duckdb.connect().execute("SELECT json_serialize_sql($1)", [sql]).fetchone()[0]
    return json.loads(text)


@pytest.mark.parametrize(
    "sql",
    [
        "SELECT 'it''s', '\\', E'a\\nb', '\"quoted\"' AS \"col \"\"x\"\"\"",
        "SELECT '\",\"query_location\":5' AS trap, 'caf\u00e9 \u6771\u4eac' AS s",
        "SELECT 1 -- it's a comment with a quote\n",
    ],
)
def test_canonical_is_duckdb_tree_without_positions(sql: str) -> None:
    bound = connection_tree(sql)

    def strip_positions(node: object) -> object:
        if isinstance(node, dict):
            return {
                key: strip_positions(value)
                for key, value in node.items()
                if key not in ("query_location", "query_location_length")
            }
        if isinstance(node, list):
            return [strip_positions(item) for item in node]
        return node

    canonical = check_with_duckdb(sql, VIEWS, {}, SqlLimits()).canonical
    assert json.loads(canonical) == strip_positions(bound)


def parquet_view_connection(folder: Path) -> duckdb.DuckDBPyConnection:
    path = folder / "users.parquet"
    pq.write_table(pa.table({"user_id": [1, 2]}), path)
    connection = duckdb.connect(config={"temp_directory": ""})
    connection.execute(
        f"CREATE VIEW users AS SELECT * FROM read_parquet({quote_string(str(path))})"
    )
    return connection


def test_external_access_off_breaks_parquet_views(tmp_path: Path) -> None:
    connection = parquet_view_connection(tmp_path)
    connection.execute("SET enable_external_access = false")

    with pytest.raises(duckdb.PermissionException):
        connection.execute("SELECT count(*) FROM users").fetchall()
    with pytest.raises(duckdb.InvalidInputException, match="allowed_directories"):
        connection.execute(f"SET allowed_directories = ['{tmp_path}/']")


def test_allowed_directories_first_keeps_views(tmp_path: Path) -> None:
    connection = parquet_view_connection(tmp_path)
    connection.execute(f"SET allowed_directories = ['{tmp_path}/']")
    connection.execute("SET enable_external_access = false")
    connection.execute("SET lock_configuration = true")
    target = tmp_path / "written.csv"
    connection.execute(f"COPY (SELECT 1 AS x) TO '{target}'")

    assert connection.execute("SELECT count(*) FROM users").fetchall() == [(2,)]
    assert target.exists()
    with pytest.raises(QueryRejected, match="COPY"):
        select_statement(connection, f"COPY (SELECT 1) TO '{tmp_path}/again.csv'")


def test_read_only_database_still_allows_session_state(tmp_path: Path) -> None:
    path = tmp_path / "views.duckdb"
    duckdb.connect(str(path)).execute("CREATE SCHEMA shop").close()
    connection = duckdb.connect(str(path), read_only=True)
    cursor = connection.cursor()
    cursor.execute("CREATE TEMP TABLE scratch AS SELECT 1 AS x")
    cursor.execute("CREATE TEMP MACRO upper(x) AS 'shadowed'")
    cursor.execute("SET VARIABLE secret = 42")
    cursor.execute("USE shop")

    assert cursor.execute("SELECT upper('a'), getvariable('secret')").fetchall() == [
        ("shadowed", 42)
    ]
    assert cursor.execute("SELECT count(*) FROM information_schema.tables").fetchone()[0] >= 1
    assert cursor.execute("SELECT count(*) FROM duckdb_views()").fetchone()[0] > 0
    assert cursor.execute("SELECT current_setting('threads')").fetchone()[0] > 0
    # The sandbox runs each query on a fresh cursor, where none of that state exists.
    fresh = connection.cursor()
    assert fresh.execute("SELECT upper('a'), getvariable('secret')").fetchall() == [("A", None)]
    for sql in ("CREATE TEMP MACRO upper(x) AS 1", "SET VARIABLE s = 1", "USE shop"):
        with pytest.raises(QueryRejected):
            validate_query(sql, VIEWS)


def test_plain_set_not_inherited_by_cursors() -> None:
    connection = duckdb.connect()
    connection.execute("SET max_execution_time = 200")
    plain = connection.cursor().execute("SELECT current_setting('max_execution_time')")
    connection.execute("SET GLOBAL max_execution_time = 200")
    global_ = connection.cursor().execute("SELECT current_setting('max_execution_time')")

    assert plain.fetchone()[0] == 0
    assert global_.fetchone()[0] == 200


def test_sleep_ms_ignores_max_execution_time() -> None:
    connection = duckdb.connect()
    connection.execute("SET GLOBAL max_execution_time = 100")
    started = time.monotonic()
    connection.cursor().execute("SELECT sleep_ms(600)").fetchall()

    assert time.monotonic() - started >= 0.6
    with pytest.raises(QueryRejected, match="sleep_ms"):
        validate_query("SELECT sleep_ms(600)", VIEWS)


def test_builder_passes_memory_limit_and_answers_interrupt_late() -> None:
    connection = duckdb.connect(config={"memory_limit": "10MB", "threads": 1})
    cursor = connection.cursor()
    timer = threading.Timer(0.05, cursor.interrupt)
    timer.start()
    started = time.monotonic()
    try:
        outcome = cursor.execute("SELECT length(lpad('x', 60000000, 'y'))").fetchone()[0]
    except duckdb.InterruptException:
        outcome = "interrupted"
    seconds = time.monotonic() - started

    # 60 MB of text under a 10 MB limit, and the interrupt takes effect only much later.
    assert outcome in (60_000_000, "interrupted")
    assert seconds > 0.25
    with pytest.raises(QueryRejected, match="lpad"):
        validate_query("SELECT lpad('x', 60000000, 'y')", VIEWS)


def test_replacement_scans_read_local_data_frames() -> None:
    def query_local_frame(connection: duckdb.DuckDBPyConnection) -> object:
        secret_frame = pd.DataFrame({"token": ["s3cr3t"]})  # noqa: F841 - read by DuckDB
        try:
            return connection.cursor().execute("SELECT token FROM secret_frame").fetchall()
        except duckdb.CatalogException:
            return "not found"

    assert query_local_frame(duckdb.connect()) == [("s3cr3t",)]
    blocked = duckdb.connect(config={"python_enable_replacements": False})
    assert query_local_frame(blocked) == "not found"
    with pytest.raises(QueryRejected, match="secret_frame"):
        validate_query("SELECT token FROM secret_frame", VIEWS)


def test_sandbox_worker_configuration(tmp_path: Path) -> None:
    (tmp_path / "features").mkdir()
    limits = SqlLimits(workers=1, threads=1, time_limit_seconds=3, memory_limit_bytes=256 * 2**20)
    sandbox = Sandbox(tmp_path, limits)
    try:
        settings = sandbox.worker_settings()
    finally:
        sandbox.close()

    assert settings["enable_external_access"] == "false"
    assert settings["lock_configuration"] == "true"
    assert settings["python_enable_replacements"] == "false"
    assert settings["autoload_known_extensions"] == "false"
    assert settings["allowed_directories"] == f"[{tmp_path.resolve() / 'features'}/]"
    assert settings["temp_directory"] == ""
    assert settings["threads"] == "1"
    assert settings["max_execution_time"] == "3000"
    assert settings["access_mode"] == "read_only"


def test_valid_duckdb_that_sqlglot_cannot_parse_is_rejected() -> None:
    sql = "PIVOT (SELECT 1 AS k, 2 AS v) ON k IN (1) USING sum(v) ORDER BY 1"
    duckdb.connect().execute(sql).fetchall()

    with pytest.raises(QuerySyntaxError, match="cannot parse this query .* although DuckDB can"):
        validate_query(sql, VIEWS)


# Volatile functions: VOLATILE_FUNCTIONS against duckdb_functions() of this DuckDB.

# Functions that DuckDB marks CONSISTENT_WITHIN_QUERY only because a TIMESTAMP WITH TIME ZONE
# argument or result depends on the TimeZone setting, which the sandbox fixes at UTC, so their
# results repeat. Reviewed for DuckDB 2.0.1: a new name here needs the same review.
TIME_ZONE_FUNCTIONS = frozenset(
    {
        "+",
        "-",
        "age",
        "century",
        "date_diff",
        "date_part",
        "date_sub",
        "date_trunc",
        "datediff",
        "datepart",
        "datesub",
        "datetrunc",
        "day",
        "dayname",
        "dayofmonth",
        "dayofweek",
        "dayofyear",
        "decade",
        "era",
        "generate_series",
        "hour",
        "isodow",
        "isoyear",
        "julian",
        "last_day",
        "make_timestamptz",
        "microsecond",
        "millennium",
        "millisecond",
        "minute",
        "month",
        "monthname",
        "quarter",
        "range",
        "second",
        "strftime",
        "time_bucket",
        "timezone",
        "timezone_hour",
        "timezone_minute",
        "week",
        "weekday",
        "weekofyear",
        "year",
        "yearweek",
    }
)
# DuckDB marks error() VOLATILE so that it is never folded into a constant. It raises and
# returns nothing, so no result of it is ever cached.
NEVER_RETURNS = frozenset({"error"})


def catalog_overloads() -> list[tuple[str, str, int, str | None, str | None]]:
    """Return (name, type, argument count, stability, macro body) for every function of an
    empty DuckDB connection that a query may call."""
    rows = (
        duckdb.connect()
        .execute(
            "SELECT lower(function_name), function_type, len(parameters), stability, "
            "macro_definition FROM duckdb_functions() "
            "WHERE function_type IN ('scalar', 'aggregate', 'window', 'macro')"
        )
        .fetchall()
    )
    return [row for row in rows if is_allowed_function(row[0])]


def called_functions(body: str) -> list[tuple[str, int]]:
    """Return the functions, with their argument counts, that a macro body calls, counting the
    SQL value keywords that DuckDB's binder turns into calls."""
    connection = duckdb.connect()
    [(text,)] = connection.execute("SELECT json_serialize_sql($1)", [f"SELECT {body}"]).fetchall()
    calls = []

    def walk(node: object) -> None:
        if isinstance(node, dict):
            if node.get("class") == "FUNCTION":
                calls.append((node["function_name"].lower(), len(node.get("arguments", []))))
            names = node.get("column_names") if node.get("class") == "COLUMN_REF" else None
            if names and len(names) == 1 and names[0].lower() in SQL_VALUE_FUNCTIONS:
                calls.append((SQL_VALUE_FUNCTIONS[names[0].lower()], 0))
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for item in node:
                walk(item)

    walk(json.loads(text))
    return calls


def test_catalog_volatile_functions_are_listed() -> None:
    missing = []
    for name, _, count, stability, _ in catalog_overloads():
        if stability == "VOLATILE" and name not in NEVER_RETURNS:
            listed = is_volatile_call(name, count)
        elif stability == "CONSISTENT_WITHIN_QUERY":
            listed = is_volatile_call(name, count) or name in TIME_ZONE_FUNCTIONS
        else:
            continue
        if not listed:
            missing.append((name, count, stability))

    assert missing == []


def test_macros_calling_volatile_functions_are_listed() -> None:
    calls = {
        (name, count): called_functions(body)
        for name, kind, count, _, body in catalog_overloads()
        if kind == "macro"
    }
    # A macro may call another macro, so the search repeats until it finds no more.
    volatile: set[tuple[str, int]] = set()
    while True:
        found = {
            macro
            for macro, called in calls.items()
            if any(is_volatile_call(*call) or call in volatile for call in called)
        }
        if found <= volatile:
            break
        volatile |= found

    assert sorted(volatile) == [("ago", 1)]
    assert all(is_volatile_call(name, count) for name, count in volatile)


def test_volatile_table_entries_are_justified() -> None:
    overloads = catalog_overloads()
    marked = {
        (name, count)
        for name, _, count, stability, _ in overloads
        if stability not in (None, "CONSISTENT")
    }
    known = {name for name, *_ in overloads}
    unjustified = []
    for name, counts in VOLATILE_FUNCTIONS.items():
        if name not in known:
            unjustified.append((name, "not a function of this DuckDB"))
        elif counts is not None and not all((name, count) in marked for count in counts):
            # One-argument age is CONSISTENT in the catalog (see test_age_of_one_timestamp).
            if (name, counts) != ("age", frozenset({1})):
                unjustified.append((name, counts))

    assert unjustified == []


def test_age_of_one_timestamp_reads_the_clock() -> None:
    connection = duckdb.connect()
    [(stability,)] = connection.execute(
        "SELECT stability FROM duckdb_functions() WHERE function_name = 'age' "
        "AND parameter_types = ['TIMESTAMP']"
    ).fetchall()
    [(same,)] = connection.execute(
        "SELECT age(TIMESTAMP '2000-01-01') = age(current_date::TIMESTAMP, TIMESTAMP '2000-01-01')"
    ).fetchall()

    # DuckDB 2.0.1 marks it CONSISTENT, although it measures from the current date.
    assert stability == "CONSISTENT"
    assert same is True
    assert validate_query("SELECT age(TIMESTAMP '2000-01-01')", VIEWS).volatile is True


# SQL value keywords: column names that DuckDB's binder turns into function calls.


def test_binder_calls_functions_only_for_sql_value_keywords() -> None:
    connection = duckdb.connect()
    keywords = {
        name
        for (name,) in connection.execute("SELECT keyword_name FROM duckdb_keywords()").fetchall()
    }
    functions = {
        name
        for (name,) in connection.execute(
            "SELECT function_name FROM duckdb_functions() WHERE len(parameters) = 0"
        ).fetchall()
    }
    bound = set()
    for name in sorted(keywords | functions | set(SQL_VALUE_FUNCTIONS)):
        quoted = name.replace('"', '""')
        try:
            connection.execute(f'SELECT "{quoted}"').fetchall()
        except duckdb.Error:
            continue
        bound.add(name)

    assert bound == set(SQL_VALUE_FUNCTIONS)


@pytest.mark.parametrize("name", sorted(SQL_VALUE_FUNCTIONS))
def test_sql_value_keyword_forms(name: str) -> None:
    def binds(sql: str) -> bool:
        try:
            duckdb.connect().execute(sql).fetchall()
        except duckdb.BinderException:
            return False
        return True

    assert binds(f"SELECT {name}")
    assert binds(f'SELECT "{name.upper()}"')
    assert binds(f"SELECT ALIAS.{name}")
    assert not binds(f"SELECT t.{name} FROM (SELECT 1 AS x) AS t")
    assert not binds(f"SELECT a.b.{name}")
    # A column of the name wins.
    [(value,)] = duckdb.connect().execute(f'SELECT {name} FROM (SELECT 7 AS "{name}")').fetchall()
    assert value == 7


# Whitespace: the characters DuckDB's parser reads as spaces.


def test_no_accepted_character_is_duckdb_whitespace() -> None:
    # DuckDB 2.0.1 reads 18 characters from U+0080 up as whitespace, all of them space
    # separators or format characters: `SELECT a<c>b` is then column a with alias b.
    accepted = [
        code
        for code in range(0x80, 0x110000)
        if unicodedata.category(chr(code)) not in REJECTED_CHARACTER_CATEGORIES
    ]
    connection = duckdb.connect()
    rows = connection.execute(
        "SELECT code FROM (SELECT unnest($1) AS code) WHERE json_extract_string("
        "json_serialize_sql('SELECT a' || chr(code) || 'b'), "
        "'$.statements[0].node.select_list[0].alias') = 'b'",
        [accepted],
    ).fetchall()
    spaces = [0x00A0, 0x2000, 0x200B, 0x202F, 0x205F, 0x2060, 0x3000, 0xFEFF]
    [(space_aliases,)] = connection.execute(
        "SELECT list(json_extract_string(json_serialize_sql('SELECT a' || chr(code) || 'b'), "
        "'$.statements[0].node.select_list[0].alias')) FROM (SELECT unnest($1) AS code)",
        [spaces],
    ).fetchall()

    assert rows == []
    assert space_aliases == ["b"] * len(spaces)
    for code in spaces:
        with pytest.raises(QueryRejected, match=f"invalid character U\\+{code:04X}"):
            check_text(f"SELECT a{chr(code)}b", SqlLimits())
