"""Named queries: `.sql` files in the queries folder, run by name with typed parameters.

A file `<name>.sql` starts with a header of comment lines, then holds one query:

    -- title: Top-rated movies in a genre
    -- description: Movies of one genre, ranked by mean rating.
    -- param: genre VARCHAR = Drama | Genre name, as in content.movie_genres.genres
    -- param: min_ratings INTEGER = 50 min 1 | Ratings a movie needs to be listed
    SELECT ... WHERE genre = $genre ... HAVING count(*) >= $min_ratings

`param` lines read `NAME TYPE [= DEFAULT] [min LOW] [max HIGH] [| DESCRIPTION]`; a parameter
without a default is required. TYPE is one of PARAMETER_TYPES. A VARCHAR default is the text
after `=` up to a `min` or `max` word or the `|`, with surrounding single quotes removed when
present. `min` and `max` bound the values of a number, date or timestamp parameter, both
inclusive, in either order. Other comment lines in the header are ignored, and several
`description` lines are joined with spaces. DuckDB binds every value as `$NAME`; no value is
ever pasted into the SQL text.

A file with an invalid header is a configuration error on the server, which only its operator
can fix, so running it raises NamedQueryInvalid, a 500 that names the query and the problem.
"""

from __future__ import annotations

import errno
import logging
import math
import os
import re
import stat
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Any

import pyarrow as pa

from sqlstore.errors import InvalidInput, NotFound, SqlstoreError, quoted_value
from sqlstore.logs import log_invalid_file
from sqlstore.sql.validate import HTTP_HINTS, CallerHints, analyse_query
from sqlstore.values import INT64_MAX, INT64_MIN, convert_value, parse_integer

logger = logging.getLogger(__name__)

QUERY_NAME_PATTERN = re.compile(r"[a-z][a-z0-9_]{0,62}")
HEADER_LINE_PATTERN = re.compile(r"--\s*(?P<key>[a-z_]+)\s*:\s*(?P<value>.*)")
PARAMETER_LINE_FORM = "NAME TYPE [= DEFAULT] [min LOW] [max HIGH] [| DESCRIPTION]"
# The name and type that start a param line, and the rest of the line.
PARAMETER_START_PATTERN = re.compile(
    r"(?P<name>[A-Za-z_][A-Za-z0-9_]*)\s+(?P<type>[A-Za-z]+)(?P<rest>(?:[\s=|].*)?)"
)
BOUND_KEYWORDS = ("min", "max")
# An unquoted default ends before a bound keyword that is a word of its own, or before the `|`
# of the description.
UNQUOTED_DEFAULT_PATTERN = re.compile(r"(?P<default>[^|]*?)(?=\s+(?:min|max)(?:\s|$)|\||$)")
PARAMETER_TYPES: dict[str, pa.DataType] = {
    "VARCHAR": pa.string(),
    "INTEGER": pa.int64(),
    "BIGINT": pa.int64(),
    "DOUBLE": pa.float64(),
    "BOOLEAN": pa.bool_(),
    "DATE": pa.date32(),
    "TIMESTAMP": pa.timestamp("us", tz="UTC"),
}
# The values of DuckDB's INTEGER (32 bits) and BIGINT (64 bits). PARAMETER_TYPES stores both as
# int64, so values and header bounds are checked against these ranges.
INTEGER_RANGES = {"INTEGER": (-(2**31), 2**31 - 1), "BIGINT": (INT64_MIN, INT64_MAX)}
ORDERED_TYPES = frozenset({"INTEGER", "BIGINT", "DOUBLE", "DATE", "TIMESTAMP"})
# (query, parameter) pairs whose out-of-range values `_log_wider_type_advice` logged at INFO.
_ADVISED_PARAMETERS: set[tuple[str, str]] = set()
# The problem of a query file that is a symbolic link. Named queries are read only from files in
# the queries folder, and a link could point anywhere, so listing and running both reject
# links, whatever they point to.
SYMLINK_PROBLEM = (
    "the file is a symbolic link, and named queries are read only from regular files in the "
    "queries folder; replace the link with a copy of the file it points to"
)
# Opened without following a symbolic link, and without blocking on a FIFO.
QUERY_FILE_OPEN_FLAGS = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0)


class IntegerOutOfRange(InvalidInput):
    """A value of an INTEGER or BIGINT parameter, or of a default or bound of a header, lies
    outside the type's range."""


class NamedQueryInvalid(SqlstoreError):
    """A named query file on the server has an invalid header or query: a 500, because the
    request is valid and only the server's operator can fix the file."""

    status = 500
    code = "named_query_invalid"

    def __init__(self, query_name: str, problem: str) -> None:
        super().__init__(
            f"invalid named query {query_name} ({query_name}.sql in the queries folder): {problem}"
        )
        self.problem = problem


@dataclass(frozen=True)
class NamedParameter:
    """One declared parameter of a named query."""

    name: str
    type: str
    default: Any
    required: bool
    description: str
    min: Any = None
    max: Any = None

    def describe(self) -> dict[str, Any]:
        """Return the parameter as the query list shows it."""
        return {
            "name": self.name,
            "type": self.type,
            "required": self.required,
            "default": self.default,
            "min": self.min,
            "max": self.max,
            "description": self.description,
        }

    def convert(self, value: Any, query_name: str) -> Any:
        """Convert a request's value to the parameter's type, or raise InvalidInput when it has
        the wrong type, is not finite, or lies outside the type's or the declared range."""
        subject = f"parameter {self.name} of named query {query_name}"
        try:
            converted = convert_parameter_value(value, self.type, subject)
        except IntegerOutOfRange as error:
            _log_wider_type_advice(query_name, self, value)
            raise InvalidInput(
                f"invalid value {quoted_value(value)} for {subject}: out of range; use a value "
                f"{self.range_text()}"
            ) from error
        self.check_range(converted, query_name)
        return converted

    def in_range(self, value: Any) -> bool:
        """Return whether `value` lies within the declared `min` and `max`, inclusive."""
        below = self.min is not None and value < self.min
        above = self.max is not None and value > self.max
        return not (below or above)

    def check_range(self, value: Any, query_name: str) -> None:
        """Raise InvalidInput when `value` lies outside the declared `min` and `max`."""
        if self.in_range(value):
            return
        raise InvalidInput(
            f"invalid value {quoted_value(_shown(value))} for parameter {self.name} of named "
            f"query {query_name}: use a value {self.range_text()}"
        )

    def range_text(self) -> str:
        """Return the values the parameter takes in words, such as "from 1 to 100": the
        declared `min` and `max`, and for an integer type the type's range where no bound is
        declared."""
        low, high = INTEGER_RANGES.get(self.type, (None, None))
        if self.min is not None:
            low = self.min
        if self.max is not None:
            high = self.max
        if low is not None and high is not None:
            return f"from {_shown(low)} to {_shown(high)}"
        if low is not None:
            return f"of at least {_shown(low)}"
        if high is not None:
            return f"of at most {_shown(high)}"
        return "of any size"


@dataclass(frozen=True)
class NamedQuery:
    """One query file: its header and SQL."""

    name: str
    title: str
    description: str
    parameters: tuple[NamedParameter, ...]
    sql: str

    def describe(self) -> dict[str, Any]:
        """Return the query's header as the query list shows it."""
        return {
            "name": self.name,
            "title": self.title,
            "description": self.description,
            "parameters": [parameter.describe() for parameter in self.parameters],
        }

    def bind(self, values: Mapping[str, Any]) -> dict[str, Any]:
        """Return every parameter's value: from `values`, converted to its type, else its
        default. Raise InvalidInput for unknown names, missing required values and values of
        the wrong type."""
        declared = {parameter.name: parameter for parameter in self.parameters}
        unknown = sorted(set(values) - set(declared))
        if unknown:
            known = ", ".join(declared) or "none"
            raise InvalidInput(
                f"unknown parameter {unknown[0]!r} for named query {self.name}; its parameters "
                f"are: {known}"
            )

        bound: dict[str, Any] = {}
        for name, parameter in declared.items():
            if name in values:
                bound[name] = parameter.convert(values[name], self.name)
            elif parameter.required:
                raise InvalidInput(
                    f"missing parameter {name} ({parameter.type}) for named query {self.name}: "
                    f"{parameter.description or 'it has no default'}"
                )
            else:
                bound[name] = parameter.default
        return bound


def convert_parameter_value(value: Any, type_name: str, subject: str) -> Any:
    """Convert a request value, or a default or bound of a header, to the Python value of the
    parameter type `type_name`. Raise InvalidInput naming `subject` and the type, and for an
    integer outside the type, its range."""
    if type_name in INTEGER_RANGES:
        return _convert_integer(value, type_name, subject)
    converted = convert_value(value, PARAMETER_TYPES[type_name], subject, type_name)
    if not _is_finite(converted):
        raise InvalidInput(
            f"invalid value {quoted_value(value)} for {subject}: use a finite number"
        )
    return converted


def _convert_integer(value: Any, type_name: str, subject: str) -> int:
    low, high = INTEGER_RANGES[type_name]
    try:
        number = parse_integer(value)
    except OverflowError:
        number = None
    except (TypeError, ValueError) as error:
        raise InvalidInput(
            f"invalid value {quoted_value(value)} for {subject}: expected an integer ({type_name})"
        ) from error

    if number is None or not low <= number <= high:
        wider = "; a BIGINT parameter takes larger values" if type_name == "INTEGER" else ""
        raise IntegerOutOfRange(
            f"invalid value {quoted_value(value)} for {subject}: out of range; {type_name} "
            f"parameters take {low} to {high}{wider}"
        )
    return number


def _log_wider_type_advice(query_name: str, parameter: NamedParameter, value: Any) -> None:
    """Log that a request sent a value beyond an INTEGER parameter's type, which is advice for
    the query's author that the caller cannot act on: at INFO once per parameter in each
    process, then at DEBUG. The parameters that the query files declare bound the set of
    logged names."""
    if parameter.type != "INTEGER":
        return
    key = (query_name, parameter.name)
    level = logging.DEBUG if key in _ADVISED_PARAMETERS else logging.INFO
    _ADVISED_PARAMETERS.add(key)
    logger.log(
        level,
        "named query %s: a request sent %s for INTEGER parameter %s, outside INTEGER's range; "
        "declare the parameter BIGINT if such values are valid",
        query_name,
        quoted_value(value),
        parameter.name,
    )


def validate_query_name(name: object, hints: CallerHints = HTTP_HINTS) -> str:
    """Return `name` when it can name a query file, else raise InvalidInput."""
    if not isinstance(name, str) or not QUERY_NAME_PATTERN.fullmatch(name):
        raise InvalidInput(
            f"invalid query name {name!r}: use lowercase letters, digits and underscores, "
            f"starting with a letter ({hints.queries_listing})"
        )
    return name


def find_named_query(folder: Path, name: object, hints: CallerHints = HTTP_HINTS) -> NamedQuery:
    """Load the query `name` from `folder`; raise InvalidInput, NotFound or NamedQueryInvalid.
    `hints` words where the names are listed for the caller's interface."""
    validate_query_name(name, hints)
    path = folder / f"{name}.sql"
    # A link is loaded only to be rejected as invalid, because the listing leaves it out too.
    # is_file() would follow it.
    if not path.is_symlink() and not path.is_file():
        raise NotFound(f"named query {name} not found; {hints.queries_listing}")
    return load_named_query(path)


def list_named_queries(folder: Path) -> list[NamedQuery]:
    """Load every valid query file in `folder`, sorted by name; invalid files are logged (see
    `load_named_query`)."""
    queries = []
    if not folder.is_dir():
        return queries
    for path in sorted(folder.glob("*.sql")):
        if not QUERY_NAME_PATTERN.fullmatch(path.stem):
            logger.warning("skipping query file %s: its name is not a valid query name", path)
            continue
        try:
            queries.append(load_named_query(path))
        except NamedQueryInvalid:
            continue
    return queries


def load_named_query(path: Path) -> NamedQuery:
    """Parse one query file. Raise NamedQueryInvalid naming the query and the problem, and log
    the file's path and the problem at ERROR (once per version of the file)."""
    try:
        return _parse_named_query(path)
    except NamedQueryInvalid as error:
        log_invalid_file(logger, "named query file", path, error.problem)
        raise


def _parse_named_query(path: Path) -> NamedQuery:
    text = _read_query_file(path)
    header = _header_entries(text)
    titles = [value for key, value in header if key == "title"]
    if not titles:
        raise NamedQueryInvalid(path.stem, "the header has no '-- title:' line")
    description = " ".join(value for key, value in header if key == "description")
    parameters = tuple(
        _parse_parameter(path.stem, value) for key, value in header if key == "param"
    )
    _check_unique_names(path.stem, parameters)

    query = NamedQuery(
        name=path.stem,
        title=titles[0],
        description=description,
        parameters=parameters,
        sql=text,
    )
    _check_parameters_used(query)
    return query


def _read_query_file(path: Path) -> str:
    """Return the text of a query file. Raise NamedQueryInvalid when it is a symbolic link, is
    not a regular file, cannot be read or is not UTF-8.

    The read uses a descriptor opened with O_NOFOLLOW, so a file replaced by a link after the
    is_symlink() check is rejected too.
    """
    if path.is_symlink():
        raise NamedQueryInvalid(path.stem, SYMLINK_PROBLEM)
    try:
        descriptor = os.open(path, QUERY_FILE_OPEN_FLAGS)
    except OSError as error:
        if error.errno == errno.ELOOP:
            raise NamedQueryInvalid(path.stem, SYMLINK_PROBLEM) from error
        raise _unreadable(path, error) from error

    # Text mode turns \r\n and \r into \n, as Path.read_text does.
    with os.fdopen(descriptor, encoding="utf-8") as file:
        try:
            if not stat.S_ISREG(os.fstat(file.fileno()).st_mode):
                raise NamedQueryInvalid(path.stem, "the file is not a regular file")
            return file.read()
        except UnicodeDecodeError as error:
            raise NamedQueryInvalid(
                path.stem, f"the file is not UTF-8 text (invalid byte at position {error.start})"
            ) from error
        except OSError as error:
            raise _unreadable(path, error) from error


def _unreadable(path: Path, error: OSError) -> NamedQueryInvalid:
    # The message names the error only: its text would show the server's path.
    reason = error.strerror or type(error).__name__
    return NamedQueryInvalid(path.stem, f"the file cannot be read ({reason})")


def _header_entries(text: str) -> list[tuple[str, str]]:
    entries = []
    for line in text.splitlines():
        stripped = line.strip()
        if not stripped:
            continue
        if not stripped.startswith("--"):
            break
        match = HEADER_LINE_PATTERN.fullmatch(stripped)
        if match is not None:
            entries.append((match["key"], match["value"].strip()))
    return entries


def _parse_parameter(query_name: str, text: str) -> NamedParameter:
    match = PARAMETER_START_PATTERN.fullmatch(text)
    if match is None:
        raise NamedQueryInvalid(
            query_name,
            f"the param line {text!r} does not start with NAME TYPE; write {PARAMETER_LINE_FORM}",
        )
    name = match["name"]
    type_name = match["type"].upper()
    if type_name not in PARAMETER_TYPES:
        known = ", ".join(PARAMETER_TYPES)
        raise NamedQueryInvalid(
            query_name, f"parameter {name} has type {type_name}; use one of {known}"
        )

    default_text, rest = _split_default(query_name, name, match["rest"])
    bounds_text, has_description, description = rest.partition("|")
    bounds = _bound_texts(query_name, name, bounds_text)
    default = None
    if default_text is not None:
        default = _parse_default(query_name, name, type_name, default_text)
    parameter = NamedParameter(
        name=name,
        type=type_name,
        default=default,
        required=default_text is None,
        description=description.strip() if has_description else "",
        min=_parse_bound(query_name, name, type_name, "min", bounds.get("min")),
        max=_parse_bound(query_name, name, type_name, "max", bounds.get("max")),
    )
    _check_bounds(query_name, parameter)
    return parameter


def _split_default(query_name: str, name: str, text: str) -> tuple[str | None, str]:
    """Split the text after NAME TYPE into the default's text (None without `=`) and the
    rest of the line."""
    text = text.lstrip()
    if not text.startswith("="):
        return None, text
    text = text[1:].lstrip()
    if text.startswith("'"):
        end = text.find("'", 1)
        if end < 0:
            raise NamedQueryInvalid(
                query_name,
                f"the default of parameter {name} opens a quote that is not closed; write = 'TEXT'",
            )
        return text[: end + 1], text[end + 1 :]

    match = UNQUOTED_DEFAULT_PATTERN.match(text)
    assert match is not None  # The pattern matches the empty text at least.
    return match["default"].strip(), text[match.end() :]


def _bound_texts(query_name: str, name: str, text: str) -> dict[str, str]:
    """Return the `min` and `max` values written between the default and the description."""
    words = text.split()
    bounds: dict[str, str] = {}
    position = 0
    while position < len(words):
        keyword = words[position]
        if keyword not in BOUND_KEYWORDS:
            hint = "; write min and max in lowercase" if keyword.lower() in BOUND_KEYWORDS else ""
            raise NamedQueryInvalid(
                query_name,
                f"unexpected {keyword!r} in the param line of {name}; write "
                f"{PARAMETER_LINE_FORM}{hint}",
            )
        value = words[position + 1] if position + 1 < len(words) else None
        if value is None or value in BOUND_KEYWORDS:
            placeholder = "LOW" if keyword == "min" else "HIGH"
            raise NamedQueryInvalid(
                query_name,
                f"{keyword} of parameter {name} has no value; write {keyword} {placeholder}",
            )
        if keyword in bounds:
            raise NamedQueryInvalid(
                query_name,
                f"parameter {name} has {keyword} twice ({bounds[keyword]} and {value}); keep one",
            )
        bounds[keyword] = value
        position += 2
    return bounds


def _parse_default(query_name: str, name: str, type_name: str, text: str) -> Any:
    if type_name == "VARCHAR":
        if len(text) >= 2 and text.startswith("'") and text.endswith("'"):
            return text[1:-1]
        return text
    if not text:
        raise NamedQueryInvalid(
            query_name,
            f"parameter {name} has '=' without a default value; write = DEFAULT, or remove '=' "
            "to make the parameter required",
        )
    return _header_value(query_name, type_name, text, f"default of parameter {name}")


def _is_finite(value: Any) -> bool:
    """Return False for NaN and infinities, which no parameter may take."""
    return not isinstance(value, float) or math.isfinite(value)


def _parse_bound(query_name: str, name: str, type_name: str, keyword: str, text: str | None) -> Any:
    if text is None:
        return None
    if type_name not in ORDERED_TYPES:
        hint = f"; quote a default that contains ' {keyword} '" if type_name == "VARCHAR" else ""
        raise NamedQueryInvalid(
            query_name,
            f"parameter {name} is {type_name}, which takes no {keyword}; only "
            f"{', '.join(sorted(ORDERED_TYPES))} parameters do{hint}",
        )
    return _header_value(query_name, type_name, text, f"{keyword} of parameter {name}")


def _header_value(query_name: str, type_name: str, text: str, subject: str) -> Any:
    """Convert a default or bound of the header to its parameter's type; `subject` names it
    in the error."""
    try:
        return convert_parameter_value(text, type_name, subject)
    except InvalidInput as error:
        raise NamedQueryInvalid(query_name, error.message) from error


def _check_bounds(query_name: str, parameter: NamedParameter) -> None:
    """Raise NamedQueryInvalid when the bounds are reversed or exclude the default."""
    low, high = parameter.min, parameter.max
    if low is not None and high is not None and low > high:
        raise NamedQueryInvalid(
            query_name,
            f"parameter {parameter.name} has min {_shown(low)} above its max {_shown(high)}",
        )
    if parameter.default is not None and not parameter.in_range(parameter.default):
        raise NamedQueryInvalid(
            query_name,
            f"the default {_shown(parameter.default)} of parameter {parameter.name} is outside "
            f"its range; use a default {parameter.range_text()}",
        )


def _check_unique_names(query_name: str, parameters: tuple[NamedParameter, ...]) -> None:
    seen: set[str] = set()
    for parameter in parameters:
        if parameter.name in seen:
            raise NamedQueryInvalid(
                query_name,
                f"parameter {parameter.name} has two param lines; keep one",
            )
        seen.add(parameter.name)


def _shown(value: Any) -> Any:
    """Return a bound or value as an error message shows it: dates and times in ISO 8601."""
    if isinstance(value, date):
        return value.isoformat()
    return value


def _check_parameters_used(query: NamedQuery) -> None:
    """Raise NamedQueryInvalid unless the SQL uses exactly the declared parameters."""
    try:
        used = analyse_query(query.sql).parameters
    except InvalidInput as error:
        raise NamedQueryInvalid(query.name, error.message) from error

    declared = {parameter.name for parameter in query.parameters}
    undeclared = sorted(used - declared)
    if undeclared:
        raise NamedQueryInvalid(
            query.name, f"the query uses ${undeclared[0]} without a '-- param:' line"
        )
    unused = sorted(declared - used)
    if unused:
        raise NamedQueryInvalid(
            query.name, f"the header declares parameter {unused[0]}, which the query never uses"
        )
