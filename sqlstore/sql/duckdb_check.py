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
import re
import threading
import unicodedata
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass
from typing import Any

import duckdb
import orjson
from cachetools import LRUCache

from sqlstore.errors import QueryRejected, QuerySyntaxError
from sqlstore.sql.functions import is_allowed_function, is_allowed_table_function
from sqlstore.sql.limits import TOO_DEEP_MESSAGE, SqlLimits

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
    canonical: str


def check_with_duckdb(
    sql: str,
    views: Collection[tuple[str, str]],
    parameters: Mapping[str, Any],
    limits: SqlLimits,
    facts: Callable[[], TreeFacts] | None = None,
) -> str:
    """Raise QuerySyntaxError or QueryRejected unless DuckDB parses `sql` as one SELECT that reads
    only `views` and CTEs and calls only allowed functions with bounded sizes.

    Return the query's canonical form: DuckDB's JSON syntax tree without source positions, the
    same for texts that differ only in spacing, comments or keyword case. The walk over the
    syntax tree is cached by text and limits; `facts`, when given, returns the walk's findings
    (made from a SQL worker process's serialization, see `SqlService.prepare`). Only a query
    whose size arguments are $parameters is walked again, with the values of `parameters`.
    """
    found = facts() if facts is not None else tree_facts(sql, limits)

    missing = sorted(found.parameter_names - set(parameters))
    if missing:
        raise QueryRejected(f"missing value for parameter ${missing[0]}: add it to params")

    registered = set(views)
    for table in found.tables:
        if (table.group, table.name) not in registered:
            message = (
                f"table {table.group}.{table.name} is not a registered feature view; read views "
                "as group.name (GET /features lists them)"
            )
            raise QueryRejected(_with_location(message, table.details), details=[table.details])

    if found.depends_on_parameters:
        _TreeChecker(sql, limits, parameters).check(_syntax_tree(sql))
    return found.canonical


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
    )


def _single_select(connection: duckdb.DuckDBPyConnection, sql: str) -> duckdb.Statement:
    try:
        statements = connection.extract_statements(sql)
    except duckdb.ParserException as error:
        raise _parser_error(sql, error) from error
    except duckdb.Error as error:
        raise QueryRejected(f"DuckDB could not parse the query: {_first_line(error)}") from error

    if len(statements) != 1:
        raise QueryRejected(
            f"DuckDB reads {len(statements)} statements in this text: send exactly one query",
            details=[{"construct": "multiple statements"}],
        )
    statement = statements[0]
    if statement.type != duckdb.StatementType.SELECT:
        kind = statement.type.name
        if kind == "MULTI":
            raise QueryRejected(
                "PIVOT without an IN list runs several statements: list the values to pivot "
                "on, for example PIVOT content.movie_genres ON year IN (1995, 1996) USING "
                "count(*)",
                details=[{"construct": "PIVOT"}],
            )
        raise QueryRejected(
            f"DuckDB reads this text as a {kind} statement: only SELECT queries may run",
            details=[{"construct": kind}],
        )
    return statement


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

    def check(self, statement: dict[str, Any]) -> None:
        try:
            self._visit(statement, None)
        except RecursionError as error:
            raise QueryRejected(TOO_DEEP_MESSAGE) from error
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
        self._visit_children(node)

    # Table references

    def _visit_table_ref(self, node: dict[str, Any]) -> None:
        ref_type = node["type"]
        if ref_type not in TABLE_REF_TYPES:
            raise self._rejected(f"table reference {ref_type} is not supported", node, ref_type)

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
            self.parameter_names.add(str(node.get("identifier")))
        return self._visit_children(node)

    def _visit_function(self, node: dict[str, Any]) -> int:
        name = str(node.get("function_name", "")).lower()
        if not is_allowed_function(name):
            raise self._rejected(
                f"function {name} is not allowed; docs/sql.md describes the functions queries "
                "may call",
                node,
                name,
            )

        arguments = _arguments(node)
        sizes = [self._visit(argument, "argument") for argument in arguments]
        for key in ("filter", "order_bys"):
            if node.get(key):
                self._visit(node[key], key)

        combined = sum(sizes) if name in ADDITIVE_FUNCTIONS else math.prod(sizes)
        size = self._builder_size(name, arguments, node) * max(combined, 1)
        if size > self.limits.max_builder_size:
            raise self._rejected(
                f"{name}(...) would build a value of about {_shown(size)} elements or characters, "
                f"more than the maximum {self.limits.max_builder_size:,} "
                "(SQLSTORE_SQL_MAX_BUILDER_SIZE)",
                node,
                name,
            )
        return size

    # Size bounds

    def _builder_size(self, name: str, arguments: list[Any], node: dict[str, Any]) -> int:
        if name in SIZE_ARGUMENTS:
            index, role = SIZE_ARGUMENTS[name]
            if index >= len(arguments):
                return 1
            value = self._size_argument(name, role, arguments[index], node)
            return 1 if value is None else max(int(value), 1)
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
                f"the {role} argument of {name} must be a literal number, a $parameter or an "
                f"expression over columns ({error})",
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

    def _sequence_length(self, name: str, arguments: list[Any], node: dict[str, Any]) -> int | None:
        """Return how many values range() or generate_series() produce, None if row-dependent."""
        try:
            values = [self._constant(argument) for argument in arguments]
        except _Dynamic:
            return None
        except _NotConstant as error:
            raise self._rejected(
                f"the arguments of {name} must be literals, $parameters or expressions over "
                f"columns ({error})",
                node,
                name,
            ) from error

        if any(isinstance(value, float) and not math.isfinite(value) for value in values):
            raise self._rejected(
                f"the arguments of {name} must be finite numbers, not NaN or an infinity",
                node,
                name,
            )
        length = _sequence_length(values, inclusive=name == "generate_series")
        if length is None:
            raise self._rejected(
                f"cannot bound {name}(...): write its arguments as numbers, or as DATE or "
                "TIMESTAMP literals with an INTERVAL step",
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


def _with_location(message: str, details: dict[str, object]) -> str:
    if "line" not in details:
        return message
    return f"{message} (line {details['line']}, column {details['column']})"


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
    raise _NotConstant(f"function {name} is not evaluated")


def _arithmetic(name: str, left: Any, right: Any) -> Any:
    # DuckDB casts a text operand to a number ('2' * 3 is 6), where Python would repeat or
    # format the text, at any size, in the server's memory.
    left, right = (_numeric_operand(value) for value in (left, right))
    operations = {
        "+": lambda: left + right,
        "-": lambda: left - right,
        "*": lambda: left * right,
        "/": lambda: left / right,
        "//": lambda: left // right,
        "%": lambda: left % right,
    }
    if name not in operations:
        raise _NotConstant(f"function {name} is not evaluated")
    return operations[name]()


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
    if isinstance(value, dt.datetime):
        return value.replace(tzinfo=None)
    if isinstance(value, dt.date):
        return dt.datetime(value.year, value.month, value.day)
    return None
