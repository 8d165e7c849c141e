"""The second validation layer: DuckDB's own parser.

`check_with_duckdb` requires that DuckDB's parser reads exactly one statement of type SELECT,
and walks the syntax tree that `json_serialize_sql` returns. In that tree every function call
carries the exact name DuckDB will resolve, so the function allow-list is applied here without
guessing, and the literal sizes of functions that build large values are bounded.

`json_serialize_sql` (DuckDB 2.0.1) lists every statement of the text and reports an error for
any statement that is not a SELECT, so one serialized statement means one SELECT and the text is
parsed once. Only when serialization fails does `extract_statements` parse it again, to name the
statement type in the error.

For a new text the server lets an idle SQL worker process run `json_serialize_sql` while it
applies sqlglot's checks, and then walks the tree the worker returned (`tree_facts` with
`serialized`). The worker walks the same tree for its own checks before it runs the query, and
it runs the Statement object that `extract_statements` returned, so text that DuckDB would
read as more than one statement, or as anything but a SELECT, is never run.
"""

from __future__ import annotations

import datetime as dt
import functools
import logging
import math
import operator
import re
import threading
import unicodedata
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass
from typing import Any

import duckdb
import orjson
from cachetools import LRUCache

from sqlstore.errors import QueryRejected, QuerySyntaxError, quoted_value
from sqlstore.sql.functions import (
    SQL_VALUE_FUNCTIONS,
    VOLATILE_FUNCTIONS,
    denial_reason,
    is_allowed_function,
    is_allowed_table_function,
    is_volatile_call,
)
from sqlstore.sql.limits import MAX_NESTING_DEPTH, TOO_DEEP_MESSAGE, SqlLimits

logger = logging.getLogger(__name__)

QUERY_NODE_TYPES = frozenset({"SELECT_NODE", "SET_OPERATION_NODE"})
TABLE_REF_TYPES = frozenset(
    {
        "BASE_TABLE",
        "TABLE_FUNCTION",
        "SUBQUERY",
        "JOIN",
        "EXPRESSION_LIST",
        "EMPTY",
        "PIVOT",
        "SHOW_REF",
    }
)
# Keys under which json_serialize_sql places table references (or, in a set operation, the
# query nodes of both sides).
TABLE_REF_KEYS = frozenset({"from_table", "left", "right", "source"})
EXPRESSION_CLASSES = frozenset(
    {
        "FUNCTION",
        "WINDOW",
        "CONSTANT",
        "COLUMN_REF",
        "CAST",
        "OPERATOR",
        "COMPARISON",
        "CONJUNCTION",
        "CASE",
        "BETWEEN",
        "SUBQUERY",
        "STAR",
        "LAMBDA",
        "LAMBDA_REF",
        "PARAMETER",
        "POSITIONAL_REFERENCE",
        "COLLATE",
        "TYPE",
    }
)
SHOW_TYPES = frozenset({"DESCRIBE", "SUMMARY"})
# JSON values that can contain other values.
CONTAINER_TYPES = (dict, list)

# Functions that build a value whose size is one of their arguments: that argument's index,
# and its role as error messages name it.
SIZE_ARGUMENTS: dict[str, tuple[int, str]] = {
    "repeat": (1, "count"),
    "lpad": (1, "length"),
    "rpad": (1, "length"),
    "list_resize": (1, "size"),
    "array_resize": (1, "size"),
    "to_base": (2, "minimum length"),
    "bitstring": (1, "length"),
    "equi_width_bins": (2, "bin count"),
    "approx_top_k": (1, "k"),
    "reservoir_quantile": (2, "sample size"),
    "lttb": (2, "point count"),
}
SEQUENCE_FUNCTIONS = frozenset({"range", "generate_series"})
FORMAT_FUNCTIONS = frozenset({"printf", "format"})
# Functions whose result is a text argument with each match replaced by another text argument:
# the index of the replacement. `replace` returns at most len(text) * len(replacement)
# characters. A `regexp_replace` pattern that matches the empty string inserts the replacement
# at each of the len(text) + 1 positions. Each backreference (two characters, such as \0)
# copies a match. So for a text that is not empty, `regexp_replace` returns at most
# len(text) * (1 + 2.5 * len(replacement)) characters.
REPLACE_FUNCTIONS: dict[str, int] = {"replace": 2, "regexp_replace": 2}
# The text argument of `repeat`, whose characters the count multiplies.
REPEATED_TEXT_FUNCTIONS: dict[str, int] = {"repeat": 0}
# Functions whose result nests its arguments' values one or more levels deeper: lists and
# structs by one, maps (a list of key-value structs in Arrow) by two. `map` takes lists of keys
# and values, which count one of its levels already.
NESTING_FUNCTIONS: dict[str, int] = {
    "list_value": 1,
    "list_pack": 1,
    "array_value": 1,
    "struct_pack": 1,
    "row": 1,
    "union_value": 1,
    "map": 1,
    "list": 1,
    "array_agg": 1,
    "histogram": 2,
}
# Levels of nesting that a type of a cast adds, by the type name in DuckDB's syntax tree.
NESTING_TYPES: dict[str, int] = {"list": 1, "array": 1, "struct": 1, "union": 1, "map": 2}
# Functions that compare two texts and return a number, with work that grows with the product
# of the texts' lengths.
PAIRWISE_TEXT_FUNCTIONS = frozenset(
    {
        "levenshtein",
        "editdist3",
        "damerau_levenshtein",
        "jaro_similarity",
        "jaro_winkler_similarity",
    }
)
# Functions whose result is about as large as the sum of their arguments, not the product.
ADDITIVE_FUNCTIONS = frozenset(
    {
        "||",
        "concat",
        "concat_ws",
        "list_concat",
        "list_cat",
        "array_concat",
        "array_cat",
        "list_value",
        "list_pack",
        "array_value",
        "struct_pack",
        "row",
        "map",
    }
)

# Functions evaluated when a size argument is a constant expression, such as INTERVAL 1 DAY,
# which DuckDB parses as to_days(CAST(trunc(CAST(1 AS DOUBLE)) AS INTEGER)).
INTERVAL_FUNCTIONS: dict[str, dt.timedelta] = {
    "to_microseconds": dt.timedelta(microseconds=1),
    "to_milliseconds": dt.timedelta(milliseconds=1),
    "to_seconds": dt.timedelta(seconds=1),
    "to_minutes": dt.timedelta(minutes=1),
    "to_hours": dt.timedelta(hours=1),
    "to_days": dt.timedelta(days=1),
    "to_weeks": dt.timedelta(weeks=1),
    # Months and years are estimated as 30 and 365 days: the result only bounds a size.
    "to_months": dt.timedelta(days=30),
    "to_quarters": dt.timedelta(days=91),
    "to_years": dt.timedelta(days=365),
    "to_decades": dt.timedelta(days=3650),
    "to_centuries": dt.timedelta(days=36500),
    "to_millennia": dt.timedelta(days=365000),
}
# Operators that `_evaluate` computes on two numbers.
ARITHMETIC_OPERATIONS: dict[str, Callable[[Any, Any], Any]] = {
    "+": operator.add,
    "-": operator.sub,
    "*": operator.mul,
    "/": operator.truediv,
    "//": operator.floordiv,
    "%": operator.mod,
}
# Functions that `_evaluate` computes when a size argument is a constant expression.
EVALUATED_FUNCTIONS = frozenset(INTERVAL_FUNCTIONS) | frozenset(ARITHMETIC_OPERATIONS) | {"trunc"}
INTERVAL_UNITS: dict[str, dt.timedelta] = {
    "microsecond": dt.timedelta(microseconds=1),
    "millisecond": dt.timedelta(milliseconds=1),
    "second": dt.timedelta(seconds=1),
    "minute": dt.timedelta(minutes=1),
    "hour": dt.timedelta(hours=1),
    "day": dt.timedelta(days=1),
    "week": dt.timedelta(weeks=1),
    "month": dt.timedelta(days=30),
    "year": dt.timedelta(days=365),
}
INTERVAL_TEXT_PATTERN = re.compile(r"\s*(-?\d+(?:\.\d+)?)\s*([a-z]+)\s*", re.IGNORECASE)
# Text that DuckDB casts to an integer with a base prefix.
HEX_OR_BINARY_PATTERN = re.compile(r"[+-]?0[xXbB][0-9a-fA-F_]+")
# The step count of a range whose span divided by its step overflows a float.
UNBOUNDED_STEPS = 2**63
INTEGER_TYPES = frozenset(
    {
        "TINYINT",
        "SMALLINT",
        "INTEGER",
        "INT",
        "INT1",
        "INT2",
        "INT4",
        "INT8",
        "BIGINT",
        "HUGEINT",
        "UTINYINT",
        "USMALLINT",
        "UINTEGER",
        "UBIGINT",
        "UHUGEINT",
        "LONG",
        "SHORT",
    }
)
FLOAT_TYPES = frozenset({"DOUBLE", "FLOAT", "REAL", "DECIMAL", "NUMERIC", "FLOAT4", "FLOAT8"})
TIMESTAMP_TYPES = frozenset(
    {
        "TIMESTAMP",
        "DATETIME",
        "TIMESTAMPTZ",
        "TIMESTAMP WITH TIME ZONE",
        "TIMESTAMP_S",
        "TIMESTAMP_MS",
        "TIMESTAMP_NS",
        "TIMESTAMP_US",
    }
)
# printf widths given by an argument ("%*d") and fmt widths given by a nested field ("{:{}}").
DYNAMIC_WIDTH_PATTERN = re.compile(r"%[-+ #0]*\*|\{[^{}]*\{")
DIGITS_PATTERN = re.compile(r"\d+")
# Source positions in json_serialize_sql's output, with the comma before them, so that what
# remains is valid JSON. Inside JSON strings every quote is escaped, so the pattern matches only
# these keys, never the text of a string literal.
SOURCE_POSITION_PATTERN = re.compile(r',"query_location(?:_length)?":\d+')
# DuckDB's parser errors end with the line of the error and a caret under it:
# "...\n\nLINE 2: ,  \"\"\n           ^". A long line is cut, with "..." at either end.
ERROR_LINE_PATTERN = re.compile(r"\n\n(LINE (\d+): )(.*)\n( *)\^")
TRUNCATION_MARK = "..."
# DuckDB 2.0's error, from its parser or binder, for a text nested beyond max_expression_depth.
EXPRESSION_DEPTH_PATTERN = re.compile(r"Max expression depth limit of (\d+) exceeded")
# DuckDB numbers the lines of its error messages after each \r\n, \r or \n.
DUCKDB_LINE_BREAK_PATTERN = re.compile(r"\r\n|\r|\n")
ZERO_WIDTH = frozenset("\u200b\u200c\u200d\u2060\ufeff")
# DuckDB's advice to change a setting, in its error messages: a sentence, a line or a remark in
# parentheses.
SETTING_ADVICE_PATTERNS = (
    re.compile(r'\s*Use "SET [^"]*"[^.\n]*\.?'),
    re.compile(r"\s*Use SET [^\n]*"),
    re.compile(r"\s*\(SET [^)]*\)"),
)
# Texts whose tree walk findings are kept, by text and limits.
TREE_FACTS_CACHE_SIZE = 512
_TREE_FACTS: LRUCache[tuple[str, SqlLimits], TreeFacts] = LRUCache(maxsize=TREE_FACTS_CACHE_SIZE)
_TREE_FACTS_LOCK = threading.Lock()


@dataclass
class ParseConnection:
    """A DuckDB connection used only to parse text: no data, no file access, settings locked."""

    connection: duckdb.DuckDBPyConnection
    lock: threading.RLock
    # `SELECT json_serialize_sql($1)`, parsed once: running the parsed statement skips
    # DuckDB's parser for it, about 0.03 ms per check.
    serialize: duckdb.Statement


@functools.cache
def parse_connection() -> ParseConnection:
    """Return the process's parse-only connection, created on first use."""
    connection = duckdb.connect(
        ":memory:",
        config={
            "python_enable_replacements": False,
            "autoinstall_known_extensions": False,
            "autoload_known_extensions": False,
            "temp_directory": "",
            "threads": 1,
        },
    )
    # The connection only parses, so the optimizer has nothing to gain on its one-row queries;
    # without it each check costs about 0.06 ms less.
    connection.execute("PRAGMA disable_optimizer")
    connection.execute("SET GLOBAL enable_external_access = false")
    connection.execute("SET GLOBAL lock_configuration = true")
    [serialize] = connection.extract_statements("SELECT json_serialize_sql($1)")
    return ParseConnection(connection=connection, lock=threading.RLock(), serialize=serialize)


def duckdb_statement_types(sql: str) -> list[str] | None:
    """Return the types of the statements DuckDB's parser reads in `sql` (SELECT, COPY, ...),
    or None when it reports a syntax error."""
    connection = parse_connection()
    with connection.lock:
        try:
            statements = connection.connection.extract_statements(sql)
        except duckdb.Error:
            return None
    return [statement.type.name for statement in statements]


def location_of_offset(sql: str, offset: int) -> tuple[int, int]:
    """Return the 1-based line and column of the character at `offset`."""
    line = sql.count("\n", 0, offset) + 1
    line_start = sql.rfind("\n", 0, offset) + 1
    return line, offset - line_start + 1


@dataclass(frozen=True)
class CallerHints:
    """The words that error messages use for a fix that depends on how the query was sent:
    over HTTP (`HTTP_HINTS`) or from the command line (`CLI_HINTS`)."""

    # How to give one parameter a value; {name} is the parameter's name.
    parameter_value: str
    # How to give several parameters values.
    parameter_values: str
    # The request or command that lists the registered feature views.
    views_listing: str
    # The request or command that lists the named queries.
    queries_listing: str

    def missing_parameters(self, names: list[str]) -> str:
        """Return the message for parameters of the query that have no value."""
        listed = ", ".join(f"${name}" for name in names)
        fix = (
            self.parameter_value.format(name=names[0]) if len(names) == 1 else self.parameter_values
        )
        return f"missing value for parameter {listed}: {fix}"


HTTP_HINTS = CallerHints(
    parameter_value="add it to params",
    parameter_values="add them to params",
    views_listing="GET /features lists them",
    queries_listing="GET /queries lists the named queries",
)
CLI_HINTS = CallerHints(
    parameter_value="pass it as --param {name}=VALUE",
    parameter_values="pass each as --param NAME=VALUE",
    views_listing="`sqlstore info` lists them",
    queries_listing="`sqlstore query` without a name lists them",
)


@dataclass(frozen=True)
class BaseTable:
    """A `group.name` reference found in the syntax tree, with where it appears."""

    group: str
    name: str
    details: dict[str, object]


@dataclass(frozen=True)
class TreeFacts:
    """Findings of the walk over one syntax tree that later checks need."""

    tables: tuple[BaseTable, ...]
    parameter_names: frozenset[str]
    depends_on_parameters: bool
    # DuckDB's JSON syntax tree without source positions, the same for texts that differ only
    # in spacing, comments or keyword case.
    canonical: str
    # Whether the query samples rows or calls a function whose result can change between runs
    # (see VOLATILE_FUNCTIONS), so that its result must not be cached.
    volatile: bool = False


def check_with_duckdb(
    sql: str,
    views: Collection[tuple[str, str]],
    parameters: Mapping[str, Any],
    limits: SqlLimits,
    facts: Callable[[], TreeFacts] | None = None,
    hints: CallerHints = HTTP_HINTS,
) -> TreeFacts:
    """Raise QuerySyntaxError or QueryRejected unless DuckDB parses `sql` as one SELECT that reads
    only `views` and CTEs and calls only allowed functions with bounded sizes.

    Return the findings of the walk over the syntax tree, with the query's canonical form. The
    walk is cached by text and limits; `facts`, when given, returns the walk's findings (made
    from a SQL worker process's serialization, see `SqlService.prepare`). Only a query whose
    size arguments are $parameters is walked again, with the values of `parameters`. `hints`
    words the fixes in the messages for the caller's interface.
    """
    found = facts() if facts is not None else tree_facts(sql, limits)

    missing = sorted(found.parameter_names - set(parameters))
    if missing:
        raise QueryRejected(hints.missing_parameters(missing))

    registered = set(views)
    for table in found.tables:
        if (table.group, table.name) not in registered:
            message = (
                f"table {table.group}.{table.name} is not a registered feature view; read views "
                f"as group.name ({hints.views_listing})"
            )
            raise QueryRejected(_with_location(message, table.details), details=[table.details])

    if found.depends_on_parameters:
        _TreeChecker(sql, limits, parameters).check(_syntax_tree(sql))
    return found


def tree_facts(sql: str, limits: SqlLimits, serialized: str | None = None) -> TreeFacts:
    """Return the findings of the walk over DuckDB's syntax tree of `sql`, unless they are
    cached. Raise QuerySyntaxError or QueryRejected for a rejected text.

    `serialized` is what `json_serialize_sql` returned for `sql` elsewhere (in a SQL worker
    process); without it this process parses the text itself.
    """
    key = (sql, limits)
    with _TREE_FACTS_LOCK:
        found = _TREE_FACTS.get(key)
    if found is None:
        found = _analyse_tree(sql, limits, serialized)
        with _TREE_FACTS_LOCK:
            _TREE_FACTS[key] = found
    return found


def cached_tree_facts(sql: str, limits: SqlLimits) -> TreeFacts | None:
    """Return the cached findings for `sql`, or None."""
    with _TREE_FACTS_LOCK:
        return _TREE_FACTS.get((sql, limits))


@functools.lru_cache(maxsize=512)
def serialized_tree(sql: str) -> str:
    """Return DuckDB's syntax tree of `sql` as `json_serialize_sql` writes it, cached by text.
    Raise duckdb.Error when DuckDB cannot serialize the text."""
    parser = parse_connection()
    with parser.lock:
        [text] = parser.connection.execute(parser.serialize, [sql]).fetchone()
    return text


def select_statement(connection: duckdb.DuckDBPyConnection, sql: str) -> duckdb.Statement:
    """Return the one SELECT statement that `connection`'s parser reads in `sql`, else raise."""
    return _single_select(connection, sql)


def clear_caches() -> None:
    """Empty the caches of parsed and checked texts, so that the next check parses again."""
    serialized_tree.cache_clear()
    with _TREE_FACTS_LOCK:
        _TREE_FACTS.clear()


def _check_statement_type(sql: str) -> None:
    parser = parse_connection()
    with parser.lock:
        _single_select(parser.connection, sql)


def _analyse_tree(sql: str, limits: SqlLimits, serialized: str | None) -> TreeFacts:
    if serialized is None:
        serialized = _serialize(sql)
    checker = _TreeChecker(sql, limits, parameters=None)
    checker.check(_syntax_tree(sql, serialized))
    return TreeFacts(
        tables=tuple(checker.tables),
        parameter_names=frozenset(checker.parameter_names),
        depends_on_parameters=checker.depends_on_parameters,
        canonical=SOURCE_POSITION_PATTERN.sub("", serialized),
        volatile=checker.volatile,
    )


def _single_select(connection: duckdb.DuckDBPyConnection, sql: str) -> duckdb.Statement:
    try:
        statements = connection.extract_statements(sql)
    except duckdb.ParserException as error:
        raise _parser_error(sql, error) from error
    except duckdb.Error as error:
        raise QueryRejected(f"DuckDB could not parse the query: {_first_line(error)}") from error

    rejection = statement_types_rejection([statement.type.name for statement in statements])
    if rejection is not None:
        raise rejection
    return statements[0]


def statement_types_rejection(kinds: list[str]) -> QueryRejected | None:
    """Return the rejection of a text that DuckDB's parser reads as statements of the types
    `kinds` (SELECT, COPY, ...), or None when it reads one SELECT."""
    if len(kinds) != 1:
        return QueryRejected(
            f"DuckDB reads {len(kinds)} statements in this text: send exactly one query",
            details=[{"construct": "multiple statements"}],
        )
    [kind] = kinds
    if kind == "SELECT":
        return None
    if kind == "MULTI":
        # DuckDB turns a PIVOT without an IN list into a statement that first reads the
        # distinct values, wherever the PIVOT is, also inside a subquery.
        return QueryRejected(
            "PIVOT without an IN list runs several statements: list the values to pivot "
            "on, for example PIVOT content.movie_genres ON year IN (1995, 1996) USING "
            "count(*)",
            details=[{"construct": "PIVOT"}],
        )
    return QueryRejected(
        f"DuckDB reads this text as a {kind} statement: only SELECT queries may run",
        details=[{"construct": kind}],
    )


def positional_parameter(sql: str) -> tuple[str, dict[str, object]] | None:
    """Return how the first positional parameter (`?`, `?1`, `$1`) that DuckDB's parser reads
    in `sql` is written, and where, or None when there is none or DuckDB cannot parse `sql`."""
    try:
        tree = orjson.loads(serialized_tree(sql))
    except (duckdb.Error, orjson.JSONDecodeError):
        return None
    try:
        node = _first_positional_parameter(tree)
    except RecursionError:
        return None
    if node is None:
        return None
    checker = _TreeChecker(sql, SqlLimits(), parameters=None)
    written = checker.written(node) or "?"
    return written, checker._details(node, written)


def _first_positional_parameter(node: Any) -> dict[str, Any] | None:
    if isinstance(node, list):
        items = node
    elif isinstance(node, dict):
        if node.get("class") == "PARAMETER" and str(node.get("identifier")).isdigit():
            return node
        items = list(node.values())
    else:
        return None
    for item in items:
        if item and isinstance(item, CONTAINER_TYPES):
            found = _first_positional_parameter(item)
            if found is not None:
                return found
    return None


def _syntax_tree(sql: str, text: str | None = None) -> dict[str, Any]:
    """Return DuckDB's syntax tree of `sql`, from its serialization `text` when given, when
    DuckDB reads it as exactly one SELECT, else raise QuerySyntaxError or QueryRejected."""
    if text is None:
        text = _serialize(sql)
    try:
        serialized = orjson.loads(text)
    except orjson.JSONDecodeError as error:
        # orjson rejects JSON nested more than 1024 levels deep with "depth limit exceeded".
        if "depth" in str(error):
            raise QueryRejected(TOO_DEEP_MESSAGE) from error
        raise QueryRejected(f"DuckDB could not describe the query: {error}") from error

    statements = serialized.get("statements") or []
    if serialized.get("error") or len(statements) != 1:
        # json_serialize_sql reports any statement but a SELECT as an error without naming its
        # type, so extract_statements runs to name the type or the number of statements.
        _check_statement_type(sql)
        message = serialized.get("error_message") or f"{len(statements)} statements"
        raise QueryRejected(f"DuckDB could not describe the query: {message}")
    return statements[0]


def _serialize(sql: str) -> str:
    """Return `serialized_tree(sql)`, or raise QuerySyntaxError or QueryRejected when DuckDB
    cannot serialize the text."""
    try:
        return serialized_tree(sql)
    except duckdb.Error as error:
        _check_statement_type(sql)
        raise QueryRejected(f"DuckDB could not describe the query: {_first_line(error)}") from error


def _parser_error(sql: str, error: duckdb.ParserException) -> QuerySyntaxError | QueryRejected:
    """Return a syntax error with the line and column that DuckDB's caret points at, or the
    rejection of a text nested deeper than DuckDB's parser allows."""
    too_deep = depth_rejection(str(error))
    if too_deep is not None:
        return too_deep
    position = duckdb_error_position(sql, str(error))
    if position is None:
        return QuerySyntaxError(f"syntax error: {_first_line(error)}")
    line, column = position
    return QuerySyntaxError(
        f"syntax error at line {line}, column {column}: {_first_line(error)}",
        details=[{"line": line, "column": column}],
    )


def depth_rejection(message: str) -> QueryRejected | None:
    """Return the rejection of a text nested deeper than DuckDB allows when `message` is
    DuckDB's error for it, from its parser or its binder, else None."""
    depth = EXPRESSION_DEPTH_PATTERN.search(message)
    if depth is None:
        return None
    return QueryRejected(
        f"query is nested more than {depth.group(1)} levels deep, the most that DuckDB "
        "allows; flatten nested expressions or subqueries",
        details=[{"construct": "expression depth"}],
    )


def duckdb_error_position(sql: str, message: str) -> tuple[int, int] | None:
    """Return the 1-based line and column of the caret in a DuckDB error message, or None when
    the message has no caret or its line does not match `sql`."""
    match = ERROR_LINE_PATTERN.search(message)
    if match is None:
        return None
    line = int(match[2])
    lines = DUCKDB_LINE_BREAK_PATTERN.split(sql)
    if not 1 <= line <= len(lines):
        return None

    shown = match[3]
    caret = len(match[4]) - len(match[1])
    start = 0
    if shown.startswith(TRUNCATION_MARK):
        shown = shown[len(TRUNCATION_MARK) :]
        caret -= len(TRUNCATION_MARK)
        start = -1
    if shown.endswith(TRUNCATION_MARK):
        shown = shown[: -len(TRUNCATION_MARK)]
    if start == -1:
        start = lines[line - 1].find(shown)
    if start < 0 or not lines[line - 1].startswith(shown, start):
        return None
    index = _index_of_caret(shown, caret)
    return None if index is None else (line, start + index + 1)


def _index_of_caret(shown: str, caret: int) -> int | None:
    """Return the index in `shown` of the character above the caret, which DuckDB places by
    display width (see `_display_width`)."""
    width = 0
    for index, character in enumerate(shown):
        character_width = _display_width(character)
        if width == caret and character_width:
            return index
        width += character_width
    return None


def _display_width(character: str) -> int:
    """Return the columns that DuckDB 2.0.1 counts for `character` when it places a caret:
    none for tabs, combining marks and zero-width characters, two for wide East Asian
    characters and emoji, else one (measured, not taken from DuckDB's documentation)."""
    if character == "\t" or unicodedata.combining(character) or character in ZERO_WIDTH:
        return 0
    if unicodedata.east_asian_width(character) in ("W", "F"):
        return 2
    return 1


def _first_line(error: Exception) -> str:
    return without_setting_advice(str(error).strip().splitlines()[0])


def without_setting_advice(message: str) -> str:
    """Return a DuckDB error message without its advice to change a setting, such as
    'Use "SET max_expression_depth TO x"', which a query may not do because the sandbox's settings
    are locked. A hint to change the query takes its place."""
    stripped = message
    for pattern in SETTING_ADVICE_PATTERNS:
        stripped = pattern.sub("", stripped)
    if stripped == message:
        return message
    return f"{stripped.rstrip()} (settings cannot be changed from a query; change the query)"


class _Dynamic(Exception):
    """A size argument depends on row values, so only the sandbox limits bound it."""


class _NotConstant(Exception):
    """A size argument is constant, but not in a form the bound check can evaluate."""


class _TreeChecker:
    """Walks one serialized statement, raising QueryRejected at the first rejected construct."""

    def __init__(self, sql: str, limits: SqlLimits, parameters: Mapping[str, Any] | None) -> None:
        """With `parameters` None, size arguments that are $parameters count as row-dependent
        and `depends_on_parameters` records that a second walk with values is needed."""
        self.sql = sql
        self.limits = limits
        self.parameters = parameters
        self.cte_names: set[str] = set()
        # Tables without a schema whose name no CTE found so far has. A CTE of any query node of
        # the statement may define them, so they are checked after the walk.
        self.unresolved_tables: list[tuple[str, dict[str, Any]]] = []
        self.generated_rows = 1
        self.tables: list[BaseTable] = []
        self.parameter_names: set[str] = set()
        self.depends_on_parameters = False
        # Nesting depth of the values that constructors and casts build, by id() of their node
        # (see `_check_nesting`). The walk keeps the whole tree alive, so no id is reused.
        self.nesting: dict[int, int] = {}
        # The deepest value found nested beyond MAX_NESTING_DEPTH: its depth, node and builder.
        self.too_deep: tuple[int, dict[str, Any], str] | None = None
        # Whether the query samples rows or calls a function whose result can change between
        # runs (see VOLATILE_FUNCTIONS).
        self.volatile = False

    def check(self, statement: dict[str, Any]) -> None:
        try:
            self._visit(statement, None)
        except RecursionError as error:
            raise QueryRejected(TOO_DEEP_MESSAGE) from error
        if self.too_deep is not None:
            depth, node, name = self.too_deep
            raise self._rejected(
                f"{name} builds a value nested {depth} levels deep (lists, arrays, structs, "
                f"maps and unions inside each other), more than the maximum {MAX_NESTING_DEPTH} "
                "that a result can hold; nest fewer levels",
                node,
                name,
            )
        for reference, node in self.unresolved_tables:
            if reference not in self.cte_names:
                raise self._rejected(
                    f"table {reference} is not a CTE of this query: read feature views as "
                    "group.name",
                    node,
                    reference,
                )

    def _add_ctes(self, cte_map: Any) -> None:
        entries = cte_map.get("map", []) if isinstance(cte_map, dict) else []
        for entry in entries:
            value = entry.get("value", {})
            if value.get("key_targets"):
                raise self._rejected("recursive CTEs with USING KEY are not allowed", value, "CTE")
            self.cte_names.add(str(entry.get("key", "")).lower())

    # Dispatch

    def _visit(self, node: Any, key: str | None) -> int:
        """Check `node` and return an estimate of its value's size in elements (1 if plain)."""
        if isinstance(node, list):
            size = 1
            for item in node:
                # Only dictionaries and lists can contain constructs to check.
                if item and isinstance(item, CONTAINER_TYPES):
                    item_size = self._visit(item, key)
                    if item_size > size:
                        size = item_size
            return size
        if not isinstance(node, dict):
            return 1

        # Query nodes carry the CTEs they define. Registering them before the children are
        # visited resolves most references at once, and the rest wait for the end of the walk.
        cte_map = node.get("cte_map")
        if cte_map:
            self._add_ctes(cte_map)
        if "class" in node:
            return self._visit_expression(node)
        node_type = node.get("type")
        if isinstance(node_type, str) and node_type.endswith("_NODE"):
            self._visit_query_node(node)
            return 1
        if key in TABLE_REF_KEYS and isinstance(node_type, str):
            self._visit_table_ref(node)
            return 1
        return self._visit_children(node)

    def _visit_children(self, node: dict[str, Any]) -> int:
        size = 1
        for key, value in node.items():
            if value and isinstance(value, CONTAINER_TYPES):
                value_size = self._visit(value, key)
                if value_size > size:
                    size = value_size
        return size

    def _visit_query_node(self, node: dict[str, Any]) -> None:
        node_type = node["type"]
        if node_type == "RECURSIVE_CTE_NODE":
            raise self._rejected(
                "recursive CTEs are not allowed, because nothing bounds how long they run",
                node,
                "WITH RECURSIVE",
            )
        if node_type not in QUERY_NODE_TYPES:
            raise self._rejected(f"query part {node_type} is not supported", node, node_type)
        if node.get("sample"):
            self.volatile = True
        self._visit_children(node)

    # Table references

    def _visit_table_ref(self, node: dict[str, Any]) -> None:
        ref_type = node["type"]
        if ref_type not in TABLE_REF_TYPES:
            raise self._rejected(f"table reference {ref_type} is not supported", node, ref_type)
        if node.get("sample"):
            self.volatile = True

        if ref_type == "BASE_TABLE":
            self._check_base_table(node)
        elif ref_type == "TABLE_FUNCTION":
            self._check_table_function(node)
        elif ref_type == "SHOW_REF":
            self._check_show(node)
        else:
            self._visit_children(node)

    def _check_base_table(self, node: dict[str, Any]) -> None:
        catalog = node.get("catalog_name") or ""
        schema = (node.get("schema_name") or "").lower()
        table = (node.get("table_name") or "").lower()
        reference = ".".join(part for part in (catalog, schema, table) if part)

        if catalog:
            raise self._rejected(
                f"table {reference} names a database: read feature views as group.name",
                node,
                reference,
            )
        if node.get("at_clause"):
            raise self._rejected(f"AT clauses are not supported on {reference}", node, "AT")
        if schema:
            details = self._details(node, reference)
            self.tables.append(BaseTable(group=schema, name=table, details=details))
            return
        if table not in self.cte_names:
            self.unresolved_tables.append((reference, node))

    def _check_table_function(self, node: dict[str, Any]) -> None:
        function = node.get("function") or {}
        name = str(function.get("function_name", "")).lower()
        if function.get("class") != "FUNCTION" or not is_allowed_table_function(name):
            raise self._rejected(
                f"table function {name or '?'} is not allowed: queries read feature views "
                "(group.name) and CTEs; the table functions allowed are range, "
                "generate_series, unnest, json_each and json_tree",
                node,
                name,
            )

        arguments = _arguments(function)
        sizes = [self._visit(argument, "argument") for argument in arguments]
        rows = self._table_function_rows(name, arguments, sizes, function)
        self.generated_rows *= max(rows, 1)
        if self.generated_rows > self.limits.max_generated_rows:
            raise self._rejected(
                f"{name}(...) brings the rows that the table functions of this query generate "
                f"together to about {_shown(self.generated_rows)}, more than the maximum "
                f"{self.limits.max_generated_rows:,} (SQLSTORE_SQL_MAX_GENERATED_ROWS); use "
                "smaller ranges",
                function,
                name,
            )
        self._visit_children({k: v for k, v in node.items() if k != "function"})

    def _table_function_rows(
        self, name: str, arguments: list[Any], sizes: list[int], function: dict[str, Any]
    ) -> int:
        if name in SEQUENCE_FUNCTIONS:
            return self._sequence_length(name, arguments, function) or 1
        if name == "unnest":
            return math.prod(sizes)
        return 1

    def _check_show(self, node: dict[str, Any]) -> None:
        show_type = node.get("show_type")
        query = node.get("query")
        if show_type not in SHOW_TYPES or not isinstance(query, dict) or node.get("table_name"):
            raise self._rejected(
                "only DESCRIBE and SUMMARIZE of a feature view or a query are allowed",
                node,
                str(show_type or "SHOW"),
            )
        self._visit_query_node(query)

    # Expressions

    def _visit_expression(self, node: dict[str, Any]) -> int:
        expression_class = node["class"]
        if expression_class not in EXPRESSION_CLASSES:
            raise self._rejected(
                f"expression {expression_class} is not supported", node, expression_class
            )
        if expression_class == "FUNCTION":
            return self._visit_function(node)
        if expression_class == "WINDOW":
            name = str(node.get("function_name", "")).lower()
            if not is_allowed_function(name):
                raise self._rejected(f"window function {name} is not allowed", node, name)
        if expression_class == "PARAMETER":
            self._check_parameter(node)
        elif expression_class == "COLUMN_REF":
            # Most column names are no SQL value keyword, and this test costs less than the call.
            names = node.get("column_names")
            if names and str(names[-1]).lower() in SQL_VALUE_FUNCTIONS:
                self._check_column_ref(node)
        elif expression_class == "CAST":
            self._check_nesting(node, "CAST", _type_depth(node.get("type_expr")))
        return self._visit_children(node)

    def _check_parameter(self, node: dict[str, Any]) -> None:
        identifier = str(node.get("identifier"))
        if identifier.isdigit():
            # DuckDB numbers `?` parameters, and reads `?1` and `$1` as numbered ones.
            written = self.written(node) or "?"
            raise self._rejected(positional_parameter_message(written), node, written)
        self.parameter_names.add(identifier)

    def _check_column_ref(self, node: dict[str, Any]) -> None:
        """Check a column reference that DuckDB's binder calls a function for when no column
        has its name (see SQL_VALUE_FUNCTIONS) as a call of that function."""
        names = node.get("column_names") or []
        if len(names) == 2 and str(names[0]).lower() == "alias":
            names = names[1:]
        if len(names) != 1:
            return
        word = str(names[0]).lower()
        function = SQL_VALUE_FUNCTIONS.get(word)
        if function is None:
            return
        if not is_allowed_function(function):
            raise self._rejected(
                f"{_function_message(function)}. To read a column named {word}, qualify it with "
                f"its table, as t.{word}: DuckDB calls the function when no column has that name",
                node,
                word,
            )
        if is_volatile_call(function, 0):
            self.volatile = True

    def _visit_function(self, node: dict[str, Any]) -> int:
        name = str(node.get("function_name", "")).lower()
        if not is_allowed_function(name):
            raise self._rejected(_function_message(name), node, name)

        arguments = _arguments(node)
        if name in VOLATILE_FUNCTIONS and is_volatile_call(name, len(arguments)):
            self.volatile = True
        sizes = [self._visit(argument, "argument") for argument in arguments]
        for key in ("filter", "order_bys"):
            if node.get(key):
                self._visit(node[key], key)
        if name in PAIRWISE_TEXT_FUNCTIONS:
            return self._check_comparison_work(name, sizes, node)

        levels = NESTING_FUNCTIONS.get(name)
        if levels is not None:
            inner = max((self.nesting.get(id(argument), 0) for argument in arguments), default=0)
            self._check_nesting(node, name, levels + inner)

        combined = sum(sizes) if name in ADDITIVE_FUNCTIONS else math.prod(sizes)
        size = self._builder_size(name, arguments, node) * max(combined, 1)
        if size > self.limits.max_builder_size:
            raise self._rejected(
                f"{name}(...) would build a value of about {_shown(size)} elements or characters, "
                f"more than the maximum {self.limits.max_builder_size:,} "
                f"(SQLSTORE_SQL_MAX_BUILDER_SIZE){_size_advice(name)}",
                node,
                name,
            )
        return size

    def _check_comparison_work(self, name: str, sizes: list[int], node: dict[str, Any]) -> int:
        """Reject a comparison of texts whose lengths multiply beyond the builder limit, and
        return the size of its result, a number. The product bounds the work, not a value,
        so that a comparison that would run far past the time limit is rejected before it
        runs. NOTE: the builder limit is strict for work: levenshtein of two texts of 1,000
        characters, 10^6 steps, cost about 1.3 ms on the 2-core development machine."""
        work = math.prod(sizes)
        if work > self.limits.max_builder_size:
            lengths = " and ".join(_shown(size) for size in sizes)
            raise self._rejected(
                f"{name}(...) compares texts of about {lengths} characters, and its time grows "
                f"with the product of their lengths, about {_shown(work)}, more than the "
                f"maximum {self.limits.max_builder_size:,} (SQLSTORE_SQL_MAX_BUILDER_SIZE); "
                "compare shorter texts",
                node,
                name,
            )
        return 1

    def _check_nesting(self, node: dict[str, Any], name: str, depth: int) -> None:
        """Record the nesting depth of the value that `node` builds, and the deepest one
        beyond MAX_NESTING_DEPTH, which `check` rejects after the walk. The walk reaches the
        outer constructors of a chain last, so the rejection names the whole depth.

        The depth counts only constructors and casts written inside each other, so it is at
        most the value's real depth: a column or another function in between counts as no
        nesting. Deeper values built at run time, such as through a chain of CTEs, fail when
        the worker exports the result (see `sqlstore.sql.worker`).
        """
        if depth > MAX_NESTING_DEPTH and (self.too_deep is None or depth > self.too_deep[0]):
            self.too_deep = (depth, node, name)
        if depth:
            self.nesting[id(node)] = depth

    # Size bounds

    def _builder_size(self, name: str, arguments: list[Any], node: dict[str, Any]) -> int:
        if name in REPLACE_FUNCTIONS:
            return self._replacement_factor(name, arguments)
        if name in SIZE_ARGUMENTS:
            index, role = SIZE_ARGUMENTS[name]
            if index >= len(arguments):
                return 1
            value = self._size_argument(name, role, arguments[index], node)
            count = 1 if value is None else max(int(value), 1)
            return count * self._text_factor(name, arguments)
        if name in SEQUENCE_FUNCTIONS:
            return self._sequence_length(name, arguments, node) or 1
        if name in FORMAT_FUNCTIONS and arguments:
            return self._format_width(name, arguments[0], node)
        return 1

    def _size_argument(self, name: str, role: str, argument: Any, node: dict[str, Any]) -> Any:
        """Return the constant value of a size argument, or None when it depends on rows."""
        try:
            value = self._constant(argument)
        except _Dynamic:
            return None
        except _NotConstant as error:
            raise self._rejected(
                f"cannot bound the {role} argument of {name} before the query runs: {error}; "
                "write it as a literal number, a $parameter or an expression over columns",
                node,
                name,
            ) from error

        if isinstance(value, str):
            # DuckDB casts a text argument to the size's integer type, so '100000000' counts.
            value = _number_from_text(value)
        if not isinstance(value, int | float) or isinstance(value, bool):
            return None
        if isinstance(value, float) and not math.isfinite(value):
            # DuckDB cannot cast NaN or an infinity to the size's integer type.
            raise self._rejected(
                f"the {role} argument of {name} is {value}, which is not a finite number; use a "
                f"whole number up to {self.limits.max_builder_size:,}",
                node,
                name,
            )
        if value > self.limits.max_builder_size:
            raise self._rejected(
                f"the {role} argument of {name} is {_shown(value)}, more than the maximum "
                f"{self.limits.max_builder_size:,} (SQLSTORE_SQL_MAX_BUILDER_SIZE)",
                node,
                name,
            )
        return value

    def _replacement_factor(self, name: str, arguments: list[Any]) -> int:
        """Return how many times longer than its text argument the result of a replace
        function can be, counting the replacement's literal characters (see
        REPLACE_FUNCTIONS). The replacement's own size estimate is part of the product of the
        argument sizes already."""
        index = REPLACE_FUNCTIONS[name]
        if index >= len(arguments):
            return 1
        length = self._literal_characters(arguments[index])
        if name == "regexp_replace":
            return 1 + math.ceil(2.5 * length)
        return max(length, 1)

    def _text_factor(self, name: str, arguments: list[Any]) -> int:
        """Return the literal characters of the text that `name` repeats, at least 1, or 1 for
        functions that repeat no text argument."""
        index = REPEATED_TEXT_FUNCTIONS.get(name)
        if index is None or index >= len(arguments):
            return 1
        return max(self._literal_characters(arguments[index]), 1)

    def _literal_characters(self, node: Any) -> int:
        """Return the characters of the literals and parameter values in `node`, the text
        an expression can build from them without a builder function. Builders inside it
        count through their size estimate, and column values are bounded only by the sandbox.
        """
        if isinstance(node, list):
            return sum(self._literal_characters(item) for item in node)
        if not isinstance(node, dict):
            return 0
        expression_class = node.get("class")
        if expression_class == "CONSTANT":
            text = node.get("literal", {}).get("text")
            return len(text) if isinstance(text, str) else 0
        if expression_class == "PARAMETER":
            if self.parameters is None:
                self.depends_on_parameters = True
                return 0
            value = self.parameters.get(str(node.get("identifier")))
            return 0 if value is None else len(str(value))
        return sum(
            self._literal_characters(value)
            for value in node.values()
            if value and isinstance(value, CONTAINER_TYPES)
        )

    def _sequence_length(self, name: str, arguments: list[Any], node: dict[str, Any]) -> int | None:
        """Return how many values range() or generate_series() produce, None if row-dependent."""
        try:
            values = [self._constant(argument) for argument in arguments]
        except _Dynamic:
            return None
        except _NotConstant as error:
            raise self._rejected(
                f"cannot bound {name}(...) before the query runs: {error}; write its arguments "
                "as literals, $parameters or expressions over columns",
                node,
                name,
            ) from error

        # DuckDB casts a text argument that spells a number to BIGINT, as it does for a size
        # argument: range('10') has 10 values, also when '10' is a $parameter's text.
        values = [_number_or_text(value) for value in values]
        if any(isinstance(value, float) and not math.isfinite(value) for value in values):
            raise self._rejected(
                f"the arguments of {name} must be finite numbers, not NaN or an infinity",
                node,
                name,
            )
        length = _sequence_length(values, inclusive=name == "generate_series")
        if length is None:
            raise self._rejected(
                f"cannot bound {name}(...): {_text_parameter_advice(name, arguments, values)}",
                node,
                name,
            )
        return length

    def _format_width(self, name: str, argument: Any, node: dict[str, Any]) -> int:
        try:
            pattern = self._constant(argument)
        except (_Dynamic, _NotConstant):
            return 1
        if not isinstance(pattern, str):
            return 1

        if DYNAMIC_WIDTH_PATTERN.search(pattern):
            raise self._rejected(
                f"{name} widths taken from arguments are not allowed: write the width in the "
                "format string",
                node,
                name,
            )
        # Every number of the pattern counts as a width, precisions too, so that several wide
        # fields add up. A run of more digits than any width has counts as over the maximum.
        runs = DIGITS_PATTERN.findall(pattern)
        total = sum(int(digits) if len(digits) <= 18 else 10**18 for digits in runs)
        if total > self.limits.max_builder_size:
            raise self._rejected(
                f"the format string of {name} asks for widths of {_shown(total)} characters in "
                f"all, more than the maximum {self.limits.max_builder_size:,} "
                "(SQLSTORE_SQL_MAX_BUILDER_SIZE)",
                node,
                name,
            )
        return max(total, 1)

    def _constant(self, node: Any) -> Any:
        """Evaluate a constant expression; raise _Dynamic when it reads row values."""
        if _contains_class(node, "SUBQUERY"):
            raise _NotConstant("it contains a subquery")
        if _contains_class(node, "COLUMN_REF", "LAMBDA_REF", "POSITIONAL_REFERENCE", "STAR"):
            raise _Dynamic()
        if self.parameters is None and _contains_class(node, "PARAMETER"):
            self.depends_on_parameters = True
            raise _Dynamic()
        return _evaluate(node, self.parameters or {})

    def written(self, node: dict[str, Any]) -> str | None:
        """Return the text of the query that `node` was parsed from, when DuckDB kept its
        position and length."""
        location = node.get("query_location")
        length = node.get("query_location_length")
        if not isinstance(location, int) or not isinstance(length, int) or length <= 0:
            return None
        encoded = self.sql.encode()
        if location + length > len(encoded):
            return None
        # DuckDB reports byte offsets into the UTF-8 text.
        return encoded[location : location + length].decode(errors="replace")

    def _details(self, node: dict[str, Any], construct: str) -> dict[str, object]:
        """Return the rejected construct and, when DuckDB kept it, its line and column."""
        details: dict[str, object] = {"construct": construct}
        location = node.get("query_location")
        if not isinstance(location, int):
            return details
        encoded = self.sql.encode()
        if 0 <= location < len(encoded):
            # DuckDB reports byte offsets into the UTF-8 text.
            prefix = encoded[:location].decode(errors="ignore")
            line, column = location_of_offset(prefix, len(prefix))
            details.update(line=line, column=column)
        return details

    def _rejected(self, message: str, node: dict[str, Any], construct: str) -> QueryRejected:
        details = self._details(node, construct)
        return QueryRejected(_with_location(message, details), details=[details])


def positional_parameter_message(written: str) -> str:
    """Return the rejection message for a positional parameter written as `written`."""
    return (
        f"positional parameter {written} is not supported: write a named parameter such as "
        "$genre instead"
    )


def _function_message(name: str) -> str:
    reason = denial_reason(name)
    because = f" because it {reason}" if reason else ""
    return (
        f"function {name} is not allowed{because}; docs/sql.md describes the functions queries "
        "may call"
    )


def _with_location(message: str, details: dict[str, object]) -> str:
    if "line" not in details:
        return message
    return f"{message} (line {details['line']}, column {details['column']})"


def _text_parameter_advice(name: str, arguments: list[Any], values: list[Any]) -> str:
    """Return how to write the arguments of range() or generate_series() that the size check
    cannot count, naming the first $parameter whose value is text that spells no number, if
    any. GET /sql sends every parameter as text."""
    expected = "numbers, or DATE or TIMESTAMP values with an INTERVAL step"
    for argument, value in zip(arguments, values, strict=True):
        if isinstance(value, str) and isinstance(argument, dict):
            if argument.get("class") == "PARAMETER":
                parameter = f"${argument.get('identifier')}"
                cast = " or ".join(f"{parameter}::{type_name}" for type_name in _cast_types(value))
                return (
                    f"parameter {parameter} is text ({quoted_value(value)}), and {name} takes "
                    f"{expected}; cast it, as {cast}"
                )
    return f"write its arguments as {expected}"


def _cast_types(text: str) -> list[str]:
    """Return the types that a text parameter of range() that spells no number can be cast
    to: DATE or TIMESTAMP when it spells one, else all three."""
    try:
        dt.date.fromisoformat(text.strip())
        return ["DATE"]
    except ValueError:
        pass
    try:
        dt.datetime.fromisoformat(text.strip())
        return ["TIMESTAMP"]
    except ValueError:
        return ["BIGINT", "DATE", "TIMESTAMP"]


def _size_advice(name: str) -> str:
    """Return how to shrink the value of a builder function whose size the text of an
    argument multiplies, or an empty text for other functions."""
    if name in REPLACE_FUNCTIONS:
        return (
            "; the size grows with the text's size times the replacement's length, so "
            "shorten either"
        )
    if name in REPEATED_TEXT_FUNCTIONS:
        return "; the size is the count times the repeated text's length, so lower either"
    return ""


def _type_depth(type_expression: Any) -> int:
    """Return how many levels of nesting a cast's type has (see NESTING_TYPES)."""
    if not isinstance(type_expression, dict):
        return 0
    levels = NESTING_TYPES.get(str(type_expression.get("type_name", "")).lower(), 0)
    if not levels:
        return 0
    children = [
        _type_depth(child)
        for child in type_expression.get("children", [])
        if isinstance(child, dict) and child.get("class") == "TYPE"
    ]
    return levels + max(children, default=0)


def _arguments(function: dict[str, Any]) -> list[Any]:
    """Return the argument expressions of a serialized function call (DuckDB 1.x or 2.x)."""
    if "arguments" in function:
        return [argument.get("expression") for argument in function["arguments"]]
    return list(function.get("children", []))


def _contains_class(node: Any, *classes: str) -> bool:
    if isinstance(node, list):
        return any(_contains_class(item, *classes) for item in node)
    if not isinstance(node, dict):
        return False
    if node.get("class") in classes:
        return True
    return any(_contains_class(value, *classes) for value in node.values())


def _evaluate(node: Any, parameters: Mapping[str, Any]) -> Any:
    """Evaluate the constant expressions DuckDB writes for literals, casts and intervals."""
    if not isinstance(node, dict):
        raise _NotConstant("unexpected expression")
    expression_class = node.get("class")

    if expression_class == "CONSTANT":
        return _bounded(_literal(node.get("literal", {})))
    if expression_class == "PARAMETER":
        return _bounded(parameters.get(str(node.get("identifier"))))
    if expression_class == "CAST":
        value = _cast(_evaluate(node.get("child"), parameters), node.get("type_expr") or {})
        return _bounded(value)
    if expression_class == "FUNCTION":
        name = str(node.get("function_name", "")).lower()
        if name not in EVALUATED_FUNCTIONS:
            # Named before its arguments are evaluated, so that the message names the call
            # the user wrote around them.
            raise _NotConstant(f"it calls {name}, which the size check does not evaluate")
        values = [_evaluate(argument, parameters) for argument in _arguments(node)]
        return _bounded(_apply(name, values))
    raise _NotConstant(f"{str(expression_class).lower()} expressions are not evaluated")


def _number_from_text(text: str) -> int | float | None:
    """Return the number a text spells, as DuckDB would cast it, or None when it spells none.
    DuckDB 2.0 also reads `0x` and `0b` prefixes and `_` between digits."""
    stripped = text.strip()
    try:
        if HEX_OR_BINARY_PATTERN.fullmatch(stripped):
            return _bounded(int(stripped, 0))
        return _bounded(int(stripped))
    except ValueError:
        # Also the text of an integer of more than 4,300 digits, which int() refuses.
        try:
            return float(stripped)
        except ValueError:
            return None


def _number_or_text(value: Any) -> Any:
    """Return the number that a text value spells, or the value unchanged."""
    if not isinstance(value, str):
        return value
    number = _number_from_text(value)
    return value if number is None else number


def _bounded(value: Any) -> Any:
    """Return an integer wider than DuckDB's HUGEINT as a float, as DuckDB reads such a
    literal, and any other value unchanged. Arithmetic on the result stays cheap."""
    if isinstance(value, int) and not isinstance(value, bool) and value.bit_length() > 127:
        try:
            return float(value)
        except OverflowError:
            return math.inf if value > 0 else -math.inf
    return value


def _literal(literal: dict[str, Any]) -> Any:
    kind = str(literal.get("kind", "")).upper()
    text = literal.get("text")
    if kind == "NULL" or text is None:
        return None
    if kind == "STRING":
        return str(text)
    if kind == "BOOLEAN":
        return str(text).lower() == "true"
    try:
        return int(text)
    except ValueError:
        try:
            return float(text)
        except ValueError as error:
            raise _NotConstant(f"unreadable literal {text!r}") from error


def _cast(value: Any, type_expression: dict[str, Any]) -> Any:
    type_name = str(type_expression.get("type_name", "")).upper()
    if value is None:
        return None
    try:
        if type_name in INTEGER_TYPES:
            return int(float(value))
        if type_name in FLOAT_TYPES:
            return float(value)
        if type_name == "DATE":
            return dt.date.fromisoformat(str(value))
        if type_name in TIMESTAMP_TYPES:
            return dt.datetime.fromisoformat(str(value))
        if type_name == "INTERVAL":
            return value if isinstance(value, dt.timedelta) else _interval(str(value))
        if type_name in ("VARCHAR", "TEXT", "STRING"):
            return str(value)
    except (ValueError, TypeError, OverflowError) as error:
        raise _NotConstant(f"cannot read {value!r} as {type_name}") from error
    raise _NotConstant(f"casts to {type_name or 'this type'} are not evaluated")


def _interval(text: str) -> dt.timedelta:
    total = dt.timedelta()
    position = 0
    while position < len(text):
        match = INTERVAL_TEXT_PATTERN.match(text, position)
        if match is None or match.end() == position:
            raise _NotConstant(f"unreadable interval {text!r}")
        unit = INTERVAL_UNITS.get(match.group(2).lower().removesuffix("s"))
        if unit is None:
            raise _NotConstant(f"unknown interval unit {match.group(2)!r}")
        total += unit * float(match.group(1))
        position = match.end()
    return total


def _apply(name: str, values: list[Any]) -> Any:
    if any(value is None for value in values):
        return None
    try:
        if name in INTERVAL_FUNCTIONS and len(values) == 1:
            return INTERVAL_FUNCTIONS[name] * values[0]
        if name == "trunc" and len(values) == 1:
            return math.trunc(values[0])
        if name == "-" and len(values) == 1:
            return -values[0]
        if len(values) == 2:
            return _arithmetic(name, values[0], values[1])
    except (TypeError, ValueError, OverflowError, ZeroDivisionError) as error:
        raise _NotConstant(f"cannot evaluate {name}") from error
    raise _NotConstant(
        f"it calls {name} with {len(values)} arguments, which the size check does not evaluate"
    )


def _arithmetic(name: str, left: Any, right: Any) -> Any:
    if name not in ARITHMETIC_OPERATIONS:
        raise _NotConstant(
            f"it calls {name} with two arguments, which the size check does not evaluate"
        )
    # DuckDB casts a text operand to a number ('2' * 3 is 6), where Python would repeat or
    # format the text, at any size, in the server's memory.
    left, right = (_numeric_operand(value) for value in (left, right))
    return ARITHMETIC_OPERATIONS[name](left, right)


def _shown(number: float) -> str:
    """Return a number for a message, with thousands separators, and in scientific notation
    beyond 10^21 so that a huge number stays short."""
    if abs(number) >= 1e21:
        return f"{float(number):.3g}"
    if isinstance(number, float) and not number.is_integer():
        return f"{number:,.2f}"
    return f"{int(number):,}"


def _numeric_operand(value: Any) -> Any:
    if not isinstance(value, str):
        return value
    number = _number_from_text(value)
    if number is None:
        raise _NotConstant(f"text {value[:40]!r} is not a number")
    return number


def _sequence_length(values: list[Any], inclusive: bool) -> int | None:
    """Return the number of values range/generate_series produce for constant arguments."""
    if any(value is None for value in values):
        return 0
    if all(isinstance(value, int | float) and not isinstance(value, bool) for value in values):
        if len(values) == 1:
            start, stop, step = 0, values[0], 1
        elif len(values) == 2:
            start, stop, step = values[0], values[1], 1
        elif len(values) == 3:
            start, stop, step = values
        else:
            return None
        return _count_steps(stop - start, step, inclusive)

    if len(values) == 3 and isinstance(values[2], dt.timedelta):
        start, stop = (_as_datetime(value) for value in values[:2])
        if start is None or stop is None:
            return None
        microsecond = dt.timedelta(microseconds=1)
        return _count_steps((stop - start) / microsecond, values[2] / microsecond, inclusive)
    return None


def _count_steps(span: float, step: float, inclusive: bool) -> int:
    if step == 0:
        return 0
    if span != 0 and (span > 0) != (step > 0):
        return 0
    try:
        ratio = span / step
    except OverflowError:
        ratio = math.inf
    if not math.isfinite(ratio):
        # A tiny step over a huge span overflows a float: more values than any limit allows.
        return UNBOUNDED_STEPS
    count = math.ceil(ratio)
    if inclusive and span % step == 0:
        count += 1
    return max(int(count), 0)


def _as_datetime(value: Any) -> dt.datetime | None:
    """Return a date, datetime or ISO 8601 text as a datetime without time zone, or None. DuckDB
    casts such a text argument of range() to TIMESTAMP; the offset of a text with one is
    dropped, which moves a bound by hours at most."""
    if isinstance(value, str):
        try:
            value = dt.datetime.fromisoformat(value.strip())
        except ValueError:
            return None
    if isinstance(value, dt.datetime):
        return value.replace(tzinfo=None)
    if isinstance(value, dt.date):
        return dt.datetime(value.year, value.month, value.day)
    return None
