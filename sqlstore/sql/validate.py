"""Validation of read-only SQL before DuckDB runs it.

Two parsers check every query, and a query runs only when both accept it:

1. sqlglot (DuckDB dialect), in this module. The text has no invisible or control characters
   and is exactly one statement, which is a query with no statement-like node inside it.
   Every table is a registered feature view (`group.name`) or a CTE of the query, and CTEs
   are not recursive. Parameters are named (`$name`), and functions that sqlglot does not
   know are on the allow-list of `sqlstore.sql.functions`.
2. DuckDB's own parser, in `sqlstore.sql.duckdb_check`: the same checks on DuckDB's syntax
   tree, where every function carries its exact DuckDB name, plus bounds on the literal
   arguments of functions that build large values.

sqlglot turns many functions into typed nodes whose names differ from DuckDB's (`range` becomes
GenerateSeries), so this layer rejects typed nodes only by a deny rule; the exact allow-list
check is DuckDB's layer.
"""

from __future__ import annotations

import bisect
import datetime as dt
import enum
import functools
import inspect
import logging
import math
import re
import unicodedata
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass
from typing import Any

import sqlglot
from sqlglot import exp
from sqlglot.errors import ParseError, TokenError

from sqlstore.errors import QueryRejected, QuerySyntaxError, quoted_value
from sqlstore.sql.duckdb_check import (
    HTTP_HINTS,
    CallerHints,
    TreeFacts,
    check_with_duckdb,
    duckdb_statement_types,
    location_of_offset,
    positional_parameter,
    positional_parameter_message,
    statement_types_rejection,
)
from sqlstore.sql.functions import (
    SQL_VALUE_FUNCTIONS,
    VOLATILE_FUNCTIONS,
    denial_reason,
    is_allowed_function,
    is_allowed_table_function,
    is_volatile_call,
)
from sqlstore.sql.limits import TOO_DEEP_MESSAGE, SqlLimits
from sqlstore.values import is_valid_unicode

logger = logging.getLogger(__name__)

# Characters allowed outside the visible ones. DuckDB 2.0 reads several invisible characters
# (zero-width space, byte order mark, word joiner, no-break space) as whitespace, while sqlglot
# reads them as part of a name, so the two parsers would see different queries.
ALLOWED_INVISIBLE_CHARACTERS = frozenset({" ", "\t", "\n", "\r"})
REJECTED_CHARACTER_CATEGORIES = frozenset({"Cc", "Cf", "Cs", "Co", "Cn", "Zs", "Zl", "Zp"})
# Unicode's Default_Ignorable_Code_Point ranges (DerivedCoreProperties.txt), inclusive:
# characters that a text renders as nothing. Python's unicodedata has no such property. Most
# are format characters (Cf) or unassigned, which the categories above reject already, but
# some are marks or letters: U+034F COMBINING GRAPHEME JOINER, U+3164 HANGUL FILLER, the
# variation selectors. An invisible letter between keywords makes sqlglot read one name where
# the author reads two words.
DEFAULT_IGNORABLE_RANGES = (
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
)
# Characters that are not default-ignorable but render as blank space in common fonts, so that
# a name can end in one unseen: BRAILLE PATTERN BLANK, OBJECT REPLACEMENT CHARACTER and
# MUSICAL SYMBOL NULL NOTEHEAD.
BLANK_LOOKING_CHARACTERS = frozenset({"\u2800", "\ufffc", "\U0001d159"})
DEFAULT_IGNORABLE_CHARACTERS = (
    frozenset(
        chr(code) for first, last in DEFAULT_IGNORABLE_RANGES for code in range(first, last + 1)
    )
    | BLANK_LOOKING_CHARACTERS
)

# Printable ASCII, tabs and line breaks: text of only these characters needs no check per
# character.
PLAIN_TEXT_PATTERN = re.compile(r"[\t\n\r\x20-\x7e]*")
NAME_PATTERN = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
# sqlglot's description of an incomplete clause, such as "Required keyword: 'this' missing for
# <class 'sqlglot.expressions.query.Where'>".
MISSING_PART_PATTERN = re.compile(r"missing for <class '[\w.]*\.(\w+)'>")
# sqlglot's repr of a token in its error descriptions, such as
# <Token token_type: TokenType.NUMBER, text: 5, line: 1, col: 15, start: 14, end: 14, comments: []>.
TOKEN_REPR_PATTERN = re.compile(
    r"<Token token_type: TokenType\.(\w+), text: (.*?), line: \d+, col: \d+, start: \d+, "
    r"end: \d+, comments: \[.*?\]>"
)
# A `$name` or `$1` parameter followed by a character that cannot continue it, with another `$`
# before the next whitespace, as in `$n*$n`. sqlglot 30 reads such a `$` as the start of a
# dollar-quoted string whose tag runs to the next `$` (here `n*`), where DuckDB 2.0 reads a
# parameter, because DuckDB's tags have only the characters of a name. DuckDB reads characters
# from U+0080 up as name characters too. A `$` after a name character or another `$` is part
# of a name (`a$b`) or of a dollar-quote tag (`$$x.csv$$`), not the start of a parameter. The
# pattern starts with `\$`, so the regex engine tries it only at each `$`, where a lookbehind
# first would be tried at every character.
PARAMETER_BEFORE_DOLLAR_PATTERN = re.compile(
    r"\$(?<![$0-9A-Za-z_\u0080-\U0010ffff]\$)[0-9A-Za-z_\u0080-\U0010ffff]+"
    r"(?=[^\s0-9A-Za-z_\u0080-\U0010ffff$][^\s$]*\$)"
)
# A word of a statement, after spaces, comments, semicolons and opening parentheses.
KEYWORD_PATTERN = re.compile(r"(?:[\s;(]|--[^\n]*|/\*.*?\*/)*([A-Za-z_]+)", re.DOTALL)
# Line breaks as sqlglot's tokenizer counts lines: \r\n, \r or \n.
LINE_BREAK_PATTERN = re.compile(r"\r\n|\r|\n")
MAX_PARAMETERS = 100
# The integers that DuckDB 2.0.1's Python client binds as a parameter: from HUGEINT's minimum to
# UHUGEINT's maximum. It raises "Python integer too large for 128-bit integer type" outside.
MIN_BOUND_INTEGER = -(2**127)
MAX_BOUND_INTEGER = 2**128 - 1
# Texts whose sqlglot analysis is kept.
VALIDATION_CACHE_SIZE = 512

# Statement forms a query may take, as sqlglot parses them.
QUERY_STATEMENTS = (
    exp.Select,
    exp.SetOperation,
    exp.Values,
    exp.Subquery,
    exp.Pivot,
    exp.Describe,
    exp.Summarize,
)

# Statement-like nodes that may not appear anywhere in a query, for example as a CTE body.
# Names missing from the installed sqlglot are skipped.
FORBIDDEN_NODE_NAMES = (
    "DML",
    "DDL",
    "Command",
    "Copy",
    "Set",
    "Pragma",
    "Use",
    "Attach",
    "Detach",
    "Install",
    "TruncateTable",
    "Alter",
    "Transaction",
    "Commit",
    "Rollback",
    "Into",
    "Create",
    "Drop",
    "Insert",
    "Update",
    "Delete",
    "Merge",
    "Show",
    "Export",
    "Analyze",
    "Kill",
    "Refresh",
    "Cache",
    "Uncache",
    "LoadData",
)
FORBIDDEN_NODES = tuple(
    getattr(exp, name) for name in FORBIDDEN_NODE_NAMES if inspect.isclass(getattr(exp, name, None))
)


def _denied_sqlglot_functions() -> dict[type[exp.Func], str]:
    """Map each sqlglot function class whose SQL name a deny rule covers to that name."""
    denied: dict[type[exp.Func], str] = {}
    for _, cls in inspect.getmembers(exp, inspect.isclass):
        if not issubclass(cls, exp.Func) or cls in (exp.Func, exp.Anonymous):
            continue
        try:
            names = [name.lower() for name in cls.sql_names()]
        except (AttributeError, TypeError, ValueError):
            continue
        for name in names:
            if denial_reason(name) is not None:
                denied[cls] = name
                break
    return denied


DENIED_SQLGLOT_FUNCTIONS = _denied_sqlglot_functions()
# SQL value keywords that DuckDB turns into a call of a clock function (see
# SQL_VALUE_FUNCTIONS), and the shortest of them that the text of any of them contains
# (current_time is in current_timestamp), for a quick search of the text.
CLOCK_KEYWORDS = frozenset(
    word for word, function in SQL_VALUE_FUNCTIONS.items() if is_volatile_call(function, 0)
)
CLOCK_KEYWORD_STEMS = tuple(
    sorted(
        word
        for word in CLOCK_KEYWORDS
        if not any(other != word and other in word for other in CLOCK_KEYWORDS)
    )
)


@dataclass(frozen=True)
class QueryShape:
    """Feature views and parameter names that the sqlglot layer found in one SQL text, and
    whether it samples rows or calls a function whose result can change between runs (see
    VOLATILE_FUNCTIONS), as far as sqlglot's names tell. `validate_query` also takes the
    verdict of DuckDB's layer, where every function has its exact name."""

    tables: frozenset[tuple[str, str]]
    parameters: frozenset[str]
    volatile: bool = False


@dataclass(frozen=True)
class ValidatedQuery:
    """A query both parsers accepted, with the views it reads and its bound parameter values.

    `canonical` is DuckDB's syntax tree of the query without source positions, the same for
    texts that differ only in spacing, comments or keyword case; result caches key on it.
    """

    sql: str
    tables: frozenset[tuple[str, str]]
    parameters: dict[str, Any]
    canonical: str = ""
    volatile: bool = False


def validate_query(
    sql: object,
    views: Collection[tuple[str, str]],
    parameters: Mapping[str, Any] | None = None,
    limits: SqlLimits | None = None,
    tree_facts: Callable[[], TreeFacts] | None = None,
    hints: CallerHints = HTTP_HINTS,
) -> ValidatedQuery:
    """Raise QuerySyntaxError or QueryRejected unless `sql` is one read-only query over `views`.

    `views` lists the registered (group, name) pairs. `parameters` maps each `$name` of the
    query to its value. The validator never runs the query. It does run DuckDB's parser on
    the text, on a connection without file access that contains no data, unless `tree_facts`
    returns what that parser found (see `check_with_duckdb`). `hints` words the fixes in the
    messages for the caller's interface (HTTP or the command line).
    """
    limits = limits or SqlLimits()
    parameters = dict(parameters or {})
    text = check_text(sql, limits)

    shape = analyse_query(text)
    check_tables(shape.tables, views, hints)
    check_parameters(shape.parameters, parameters, hints)

    found = check_with_duckdb(text, views, parameters, limits, tree_facts, hints)
    return ValidatedQuery(
        sql=text,
        tables=shape.tables,
        parameters=parameters,
        canonical=found.canonical,
        volatile=shape.volatile or found.volatile,
    )


def check_text(sql: object, limits: SqlLimits) -> str:
    """Return `sql` when it is a non-empty string of allowed characters within the length limit."""
    if not isinstance(sql, str):
        raise QueryRejected(f"invalid sql {sql!r}: expected the SQL text as a string")
    if not sql.strip():
        raise QuerySyntaxError("sql is empty: send one SELECT query")
    if len(sql) > limits.max_length:
        raise QueryRejected(
            f"sql is {len(sql)} characters long, more than the maximum {limits.max_length} "
            "(SQLSTORE_SQL_MAX_LENGTH); shorten the query"
        )

    if PLAIN_TEXT_PATTERN.fullmatch(sql):
        return sql
    for offset, character in enumerate(sql):
        if character in ALLOWED_INVISIBLE_CHARACTERS:
            continue
        if (
            unicodedata.category(character) in REJECTED_CHARACTER_CATEGORIES
            or character in DEFAULT_IGNORABLE_CHARACTERS
        ):
            line, column = location_of_offset(sql, offset)
            name = unicodedata.name(character, "unnamed character")
            raise QueryRejected(
                f"invalid character U+{ord(character):04X} ({name}) at line {line}, column "
                f"{column}: SQL may contain only visible characters, spaces, tabs and line "
                f"breaks; write it inside a string as chr({ord(character)})",
                details=[{"construct": f"U+{ord(character):04X}", "line": line, "column": column}],
            )
    return sql


@functools.lru_cache(maxsize=VALIDATION_CACHE_SIZE)
def analyse_query(sql: str) -> QueryShape:
    """Parse `sql` with sqlglot and apply the checks that do not depend on the store.

    Results are cached by text, so a repeated query costs one dictionary lookup; a rejected
    text raises again on every call.
    """
    spaced = _spaced_for_sqlglot(sql)
    statement = _parse_one_statement(sql, spaced)
    walker = _QueryWalker(sql, spaced)
    walker.check(statement)
    return QueryShape(
        tables=frozenset(walker.tables),
        parameters=frozenset(walker.parameters),
        volatile=walker.volatile,
    )


class _NodeKind(enum.Enum):
    """Action of the allow-list walk for the nodes of one sqlglot class."""

    FORBIDDEN = enum.auto()
    WITH = enum.auto()
    TABLE = enum.auto()
    FUNCTION = enum.auto()
    PLACEHOLDER = enum.auto()
    OTHER = enum.auto()


@dataclass(frozen=True)
class _NodeClass:
    """The facts about a sqlglot class that the walk needs, computed once per class."""

    kind: _NodeKind
    is_cte: bool
    # True for row sampling and for typed functions whose result changes between runs
    # (random numbers, UUIDs, the current time). Anonymous functions are judged by name.
    volatile: bool


@functools.cache
def _node_class(cls: type[exp.Expression]) -> _NodeClass:
    """Classify `cls` with the isinstance tests of the walk, so that each node costs one lookup."""
    if issubclass(cls, FORBIDDEN_NODES):
        kind = _NodeKind.FORBIDDEN
    elif issubclass(cls, exp.With):
        kind = _NodeKind.WITH
    elif issubclass(cls, exp.Table):
        kind = _NodeKind.TABLE
    elif issubclass(cls, exp.Func):
        kind = _NodeKind.FUNCTION
    elif issubclass(cls, exp.Placeholder):
        kind = _NodeKind.PLACEHOLDER
    else:
        kind = _NodeKind.OTHER

    volatile = issubclass(cls, exp.TableSample)
    if kind is _NodeKind.FUNCTION and cls is not exp.Anonymous:
        volatile = volatile or _is_volatile_class(cls)
    return _NodeClass(kind=kind, is_cte=issubclass(cls, exp.CTE), volatile=volatile)


def _is_volatile_class(cls: type[exp.Func]) -> bool:
    """Return whether any DuckDB name of a typed sqlglot function is a volatile function.

    sqlglot types the SQL value keywords too (`current_timestamp` is CurrentTimestamp), which
    DuckDB calls as other functions (see SQL_VALUE_FUNCTIONS).
    """
    try:
        names = [name.lower() for name in cls.sql_names()]
    except (AttributeError, TypeError, ValueError):
        return False
    return any(is_volatile_call(SQL_VALUE_FUNCTIONS.get(name, name)) for name in names)


def check_tables(
    tables: frozenset[tuple[str, str]],
    views: Collection[tuple[str, str]],
    hints: CallerHints = HTTP_HINTS,
) -> None:
    """Raise QueryRejected naming the first table that is not a registered feature view."""
    registered = set(views)
    for group, name in sorted(tables):
        if (group, name) not in registered:
            raise QueryRejected(
                f"table {group}.{name} is not a registered feature view; read views as "
                f"group.name ({hints.views_listing})",
                details=[{"construct": f"{group}.{name}"}],
            )


def check_parameters(
    names: frozenset[str], values: Mapping[str, Any], hints: CallerHints = HTTP_HINTS
) -> None:
    """Raise QueryRejected when a `$name` has no value, a value has no `$name`, or a value is
    not a string, number, boolean, null, date, datetime or a list of these, or is an integer
    that DuckDB cannot bind."""
    if len(values) > MAX_PARAMETERS:
        raise QueryRejected(f"{len(values)} parameters is more than the maximum {MAX_PARAMETERS}")

    missing = sorted(names - set(values))
    if missing:
        raise QueryRejected(
            hints.missing_parameters(missing),
            details=[{"construct": f"${name}"} for name in missing],
        )

    unknown = sorted(set(values) - names)
    if unknown:
        name = unknown[0]
        advice = f"remove it, or refer to it as ${name} in the SQL"
        if not name.isidentifier() or not name.isascii():
            advice = "remove it (parameter names are letters, digits and underscores)"
        raise QueryRejected(f"parameter {name!r} is not used by the query: {advice}")

    for name, value in values.items():
        _check_parameter_value(name, value)


def _check_parameter_value(name: str, value: Any) -> None:
    # Dates and datetimes come from named-query parameters of type DATE and TIMESTAMP.
    scalars = (str, int, float, bool, type(None), dt.date)
    items = value if isinstance(value, list) else [value]
    if not all(isinstance(item, scalars) for item in items):
        raise QueryRejected(
            f"invalid value for parameter ${name}: {type(value).__name__}; use a string, number, "
            "boolean, null or a list of these"
        )
    if any(isinstance(item, str) and not is_valid_unicode(item) for item in items):
        raise QueryRejected(
            f"invalid value for parameter ${name}: {quoted_value(value)} contains a lone UTF-16 "
            "surrogate, which is not valid Unicode; send valid text"
        )
    if any(isinstance(item, float) and not math.isfinite(item) for item in items):
        # JSON has no such numbers: Python's parser reads 1e309 as infinity, and JSON encoders
        # write infinity and NaN as null.
        raise QueryRejected(
            f"invalid value for parameter ${name}: {value!r} has a number that is not finite; "
            "JSON has no infinity or NaN, so send a finite number"
        )
    for item in items:
        if isinstance(item, int) and not MIN_BOUND_INTEGER <= item <= MAX_BOUND_INTEGER:
            raise QueryRejected(
                f"invalid value for parameter ${name}: {_integer_text(item)} is outside the "
                "integers DuckDB can bind, -2^127 to 2^128-1 (HUGEINT and UHUGEINT); send a "
                "smaller number, or send it as a string and cast it in the SQL, as "
                f"${name}::DOUBLE or ${name}::BIGNUM"
            )


def _integer_text(number: int) -> str:
    """Return an integer for a message, shortened when it has more than 40 digits."""
    text = str(number)
    digits = len(text.lstrip("-"))
    if digits <= 40:
        return text
    return f"{text[:12]}...{text[-4:]} ({digits} digits)"


@dataclass(frozen=True)
class _SpacedText:
    """The text that sqlglot parses: the query with a space after each parameter that sqlglot
    would otherwise read as the start of a dollar-quoted string (see
    PARAMETER_BEFORE_DOLLAR_PATTERN).

    DuckDB ends the parameter at that character anyway, so the space changes no token that
    DuckDB reads. It is never inserted before a `$`, so it cannot split a dollar-quote tag.
    NOTE: the pattern does not know where strings and comments are, so text such as `'$a*$'`
    inside a string literal, comment or quoted name gets the space too. That changes only
    sqlglot's copy, which no check of this layer uses, but a sqlglot syntax error that quotes
    such a string shows the space.
    """

    original: str
    text: str
    # Offsets in `text` of the inserted spaces, ascending.
    spaces: tuple[int, ...] = ()

    def original_offset(self, offset: int) -> int:
        """Return the offset in the query of the character at `offset` in `text`."""
        return offset - bisect.bisect_left(self.spaces, offset)


def _spaced_for_sqlglot(sql: str) -> _SpacedText:
    if "$" not in sql:
        return _SpacedText(sql, sql)
    parts = []
    spaces = []
    start = 0
    for match in PARAMETER_BEFORE_DOLLAR_PATTERN.finditer(sql):
        parts.append(sql[start : match.end()])
        spaces.append(match.end() + len(spaces))
        start = match.end()
    if not spaces:
        return _SpacedText(sql, sql)
    parts.append(sql[start:])
    return _SpacedText(sql, " ".join(parts), tuple(spaces))


def _parse_one_statement(sql: str, spaced: _SpacedText | None = None) -> exp.Expression:
    spaced = spaced or _spaced_for_sqlglot(sql)
    try:
        statements = sqlglot.parse(spaced.text, read="duckdb")
    except ParseError as error:
        raise _syntax_error(sql, error, spaced) from error
    except TokenError as error:
        raise QuerySyntaxError(f"syntax error: {error}; check quotes and comments") from error
    except RecursionError as error:
        raise QueryRejected(TOO_DEEP_MESSAGE) from error

    # A comment after the last semicolon parses as a Semicolon node that contains it.
    statements = [
        statement
        for statement in statements
        if statement is not None and not isinstance(statement, exp.Semicolon)
    ]
    if not statements:
        raise QuerySyntaxError("sql contains no statement: send one SELECT query")
    if len(statements) > 1:
        raise QueryRejected(
            f"found {len(statements)} statements: send exactly one query, without ';' between "
            "statements",
            details=[{"construct": "multiple statements"}],
        )
    return statements[0]


def _readable_description(description: str) -> str:
    """Return sqlglot's error description without the names of its Python classes and the
    repr of its tokens, which mean nothing to the author of the query."""
    match = MISSING_PART_PATTERN.search(description)
    if match is not None:
        return f"incomplete {match.group(1).upper()} clause: something is missing after it"
    return TOKEN_REPR_PATTERN.sub(_token_description, description)


def _token_description(match: re.Match[str]) -> str:
    if match.group(1) == "SENTINEL":
        return "the end of the query"
    kind = match.group(1).lower().replace("_", " ")
    return f"{kind} {match.group(2)!r}"


def _syntax_error(
    sql: str, error: ParseError, spaced: _SpacedText
) -> QuerySyntaxError | QueryRejected:
    first = error.errors[0] if error.errors else {}
    line = first.get("line")
    column = first.get("col")
    if line is not None and column is not None and spaced.spaces:
        line, column = _original_location(spaced, line, column)
    description = _readable_description(first.get("description") or str(error))
    details = [{"line": line, "column": column}] if line is not None else None
    where = f" at line {line}, column {column}" if line is not None else ""

    kinds = duckdb_statement_types(sql)
    if kinds is None:
        return QuerySyntaxError(f"syntax error{where}: {description}", details=details)
    rejection = _statement_types_rejection(sql, kinds)
    if rejection is not None:
        return rejection
    positional = positional_parameter(sql)
    if positional is not None:
        # sqlglot 30 cannot parse `?1`, which DuckDB reads as a numbered parameter.
        written, position = positional
        message = positional_parameter_message(written)
        if "line" in position:
            message = f"{message} (line {position['line']}, column {position['column']})"
        return QueryRejected(message, details=[position])
    # The two parsers disagree: running text that only one of them understood would let a
    # construct pass unchecked, so the query is rejected like any other parse failure.
    return QuerySyntaxError(
        f"the validator cannot parse this query{where} ({description}), although DuckDB can; "
        "it is not run. Rewrite that part, for example wrap a PIVOT statement in "
        "SELECT * FROM (...)",
        details=details,
    )


def _statement_types_rejection(sql: str, kinds: list[str]) -> QueryRejected | None:
    """Return the rejection of a text that sqlglot cannot parse and DuckDB reads as statements
    of the types `kinds`, naming the statement by its first keyword, or None for one SELECT."""
    rejection = statement_types_rejection(kinds)
    if rejection is None or len(kinds) != 1 or kinds == ["MULTI"]:
        return rejection
    keyword = _leading_keyword(sql)
    return QueryRejected(
        f"{keyword} is not allowed: DuckDB reads this text as a {kinds[0]} statement, and only "
        "SELECT queries may run",
        details=[{"construct": keyword}],
    )


def _leading_keyword(sql: str) -> str:
    """Return the keyword that starts the one statement of `sql`, in uppercase. FORCE only
    modifies the statement that follows, so FORCE CHECKPOINT is two words."""
    match = KEYWORD_PATTERN.match(sql)
    if match is None:
        return "COMMAND"
    keyword = match.group(1).upper()
    if keyword == "FORCE":
        following = KEYWORD_PATTERN.match(sql, match.end())
        if following is not None:
            keyword = f"{keyword} {following.group(1).upper()}"
    return keyword


def _original_location(spaced: _SpacedText, line: int, column: int) -> tuple[int, int]:
    """Return the 1-based line and column in the query of a position that sqlglot gives in
    the spaced text. Only spaces were inserted, so the line stays the same, and the column
    loses the spaces inserted before it on that line."""
    breaks = list(LINE_BREAK_PATTERN.finditer(spaced.text))
    if not 1 <= line <= len(breaks) + 1:
        return line, column
    line_start = breaks[line - 2].end() if line > 1 else 0
    position = line_start + column - 1
    inserted = bisect.bisect_left(spaced.spaces, position) - bisect.bisect_left(
        spaced.spaces, line_start
    )
    return line, column - inserted


class _QueryWalker:
    """One pass over a sqlglot tree, collecting views and parameters, noting volatile
    functions and raising on the first rejected construct."""

    def __init__(self, sql: str, spaced: _SpacedText | None = None) -> None:
        """`spaced` is the text that sqlglot parsed, when it differs from `sql`, so that
        positions in its tree are reported in `sql`."""
        self.sql = sql
        self.spaced = spaced or _SpacedText(sql, sql)
        self.tables: set[tuple[str, str]] = set()
        self.parameters: set[str] = set()
        self.cte_names: set[str] = set()
        # Whether the query samples rows or calls a function whose result changes between
        # runs, so that its result must not be cached.
        self.volatile = False

    def check(self, statement: exp.Expression) -> None:
        self._check_statement_kind(statement)
        try:
            nodes = [(node, _node_class(type(node))) for node in statement.walk()]
        except RecursionError as error:
            raise QueryRejected(TOO_DEEP_MESSAGE) from error

        for node, node_class in nodes:
            if node_class.is_cte:
                self._add_cte(node)
        for node, node_class in nodes:
            if node_class.kind is not _NodeKind.OTHER or node_class.volatile:
                self._check_node(node, node_class)
        # Most texts name no clock keyword, so a search of the text spares a look at each
        # column. On the 2-core development machine, substring searches of the lowercase text
        # cost about 2 µs for a 20-line query, and a case-insensitive regular expression 25 µs.
        if not self.volatile:
            lowered = self.sql.lower()
            if any(stem in lowered for stem in CLOCK_KEYWORD_STEMS):
                self._check_clock_columns(nodes)

    def _check_statement_kind(self, statement: exp.Expression) -> None:
        if isinstance(statement, QUERY_STATEMENTS):
            return
        if isinstance(statement, FORBIDDEN_NODES):
            keyword = _statement_keyword(statement)
        else:
            # sqlglot reads a statement it does not know, such as DEALLOCATE p, as an
            # expression (here a column with an alias), whose class names nothing the author
            # wrote. The text contains only this statement, so its first word names it.
            keyword = _leading_keyword(self.sql)
        raise QueryRejected(
            f"{keyword} statements are not allowed: send one read-only query (SELECT, WITH, "
            "VALUES, FROM ..., PIVOT, UNPIVOT, DESCRIBE or SUMMARIZE of a feature view)",
            details=[{"construct": keyword}],
        )

    def _add_cte(self, cte: exp.CTE) -> None:
        name = cte.alias_or_name
        if not NAME_PATTERN.fullmatch(name):
            raise self._rejected(
                f"invalid CTE name {name!r}: use letters, digits and underscores", cte, name
            )
        self.cte_names.add(name.lower())

    def _check_node(self, node: exp.Expression, node_class: _NodeClass) -> None:
        if node_class.volatile:
            self.volatile = True
        kind = node_class.kind
        if kind is _NodeKind.FORBIDDEN:
            keyword = _statement_keyword(node)
            raise self._rejected(
                f"{keyword} is not allowed inside a query: queries may only read", node, keyword
            )
        if kind is _NodeKind.WITH and node.args.get("recursive"):
            raise self._rejected(
                "recursive CTEs are not allowed, because nothing bounds how long they run; use "
                "range() or generate_series() for sequences",
                node,
                "WITH RECURSIVE",
            )
        if kind is _NodeKind.TABLE:
            self._check_table(node)
        elif kind is _NodeKind.FUNCTION:
            self._check_function(node)
        elif kind is _NodeKind.PLACEHOLDER:
            self._check_placeholder(node)

    def _check_clock_columns(self, nodes: list[tuple[exp.Expression, _NodeClass]]) -> None:
        """Note a column reference that DuckDB calls a clock function for when no column has
        its name, such as the quoted "current_date" or `alias.current_date` (see
        SQL_VALUE_FUNCTIONS). sqlglot types the unquoted keywords already, and DuckDB's layer
        rejects the names of denied functions."""
        for node, _ in nodes:
            if not isinstance(node, exp.Column) or node.name.lower() not in CLOCK_KEYWORDS:
                continue
            table = node.table
            if not node.args.get("db") and (not table or table.lower() == "alias"):
                self.volatile = True
                return

    def _check_table(self, table: exp.Table) -> None:
        if isinstance(table.this, exp.Func):
            return  # a table function, checked by _check_function

        name = table.name
        group = table.db
        if table.catalog:
            reference = ".".join(part for part in (table.catalog, group, name))
            raise self._rejected(
                f"table {reference} names a database: read feature views as group.name",
                table,
                reference,
            )
        if group:
            self.tables.add((group.lower(), name.lower()))
            return
        if name.lower() in self.cte_names:
            return
        if not NAME_PATTERN.fullmatch(name):
            raise self._rejected(
                f"{name!r} in FROM is not a feature view: file paths and other strings cannot "
                "be read; read feature views as group.name",
                table,
                name,
            )
        raise self._rejected(
            f"table {name} is not a CTE of this query: read feature views as group.name, "
            "for example content.movie_genres",
            table,
            name,
        )

    def _check_function(self, function: exp.Func) -> None:
        in_from = isinstance(function.parent, exp.Table)
        if isinstance(function, exp.Anonymous):
            name = function.name.lower()
            allowed = is_allowed_table_function(name) if in_from else is_allowed_function(name)
            if not allowed:
                raise self._rejected(_function_message(name, in_from), function, name)
            if name in VOLATILE_FUNCTIONS and is_volatile_call(name, len(function.expressions)):
                self.volatile = True
            return

        denied_name = DENIED_SQLGLOT_FUNCTIONS.get(type(function))
        if denied_name is not None:
            raise self._rejected(_function_message(denied_name, in_from), function, denied_name)

    def _check_placeholder(self, placeholder: exp.Placeholder) -> None:
        name = placeholder.name
        if not name or name == "?" or name.isdigit():
            written = f"${name}" if name.isdigit() else "?"
            raise self._rejected(positional_parameter_message(written), placeholder, written)
        self.parameters.add(name)

    def _rejected(self, message: str, node: exp.Expression, construct: str) -> QueryRejected:
        offset = _start_offset(node)
        details: dict[str, object] = {"construct": construct}
        if offset is not None:
            offset = self.spaced.original_offset(offset)
            line, column = location_of_offset(self.sql, offset)
            details.update(line=line, column=column)
            message = f"{message} (line {line}, column {column})"
        return QueryRejected(message, details=[details])


def _function_message(name: str, in_from: bool) -> str:
    if in_from:
        return (
            f"table function {name} is not allowed: queries read feature views (group.name) "
            "and CTEs; the table functions allowed are range, generate_series, unnest, "
            "json_each and json_tree"
        )
    reason = denial_reason(name)
    because = f" because it {reason}" if reason else ""
    return (
        f"function {name} is not allowed{because}; docs/sql.md describes the functions "
        "queries may call"
    )


def _statement_keyword(node: exp.Expression) -> str:
    """Return the SQL keyword a reader would use for `node`, such as COPY or CHECKPOINT."""
    if isinstance(node, exp.Command):
        words = f"{node.this or ''} {node.expression or ''}".split()
        if not words:
            return "COMMAND"
        # FORCE only modifies the statement that follows, as in FORCE CHECKPOINT.
        return " ".join(words[:2] if words[0].upper() == "FORCE" else words[:1]).upper()
    if isinstance(node, exp.Transaction):
        return "BEGIN"
    if isinstance(node, exp.TruncateTable):
        return "TRUNCATE"
    return node.key.upper()


def _start_offset(node: exp.Expression) -> int | None:
    """Return the character offset where `node` starts in the SQL text, when sqlglot kept it."""
    for candidate in node.walk():
        start = candidate.meta.get("start") if candidate.meta else None
        if start is not None:
            return start
    return None


def validate_store_query(store: Any, sql: object) -> ValidatedQuery:
    """Validate `sql` against the tables registered in `store` (a FeatureStore).

    For code that runs validated SQL itself: unlike /sql, such code does not get the sandbox's
    memory, time and file limits.
    """
    views = [(entry.group, entry.name) for entry in store.registry.list()]
    return validate_query(sql, views)
