"""Conversion of request values (query strings, JSON scalars) to a column's type."""

from __future__ import annotations

import re
from datetime import UTC, date, datetime
from typing import Any

import pyarrow as pa

from sqlstore.errors import InvalidInput
from sqlstore.types import describe_type, type_family

INTEGER_PATTERN = re.compile(r"[+-]?[0-9]{1,19}")
# Filters bind integers as BIGINT and lookups build int64 key arrays, so an integer outside
# this range can match no stored value and must be rejected before it reaches DuckDB.
INT64_MIN = -(2**63)
INT64_MAX = 2**63 - 1
TRUE_WORDS = frozenset({"true", "1", "yes"})
FALSE_WORDS = frozenset({"false", "0", "no"})

# SQL type that a converted value is bound as, so that DuckDB compares it with the column's
# own type instead of casting the value down to a narrow stored type such as UTINYINT.
SQL_TYPES = {
    "integer": "BIGINT",
    "floating": "DOUBLE",
    "boolean": "BOOLEAN",
    "string": "VARCHAR",
    "timestamp": "TIMESTAMPTZ",
    "date": "DATE",
}


def sql_type_for(arrow_type: pa.DataType) -> str | None:
    """Return the SQL type values of this column are bound as, or None if unsupported."""
    return SQL_TYPES.get(type_family(arrow_type))


def convert_value(value: Any, arrow_type: pa.DataType, what: str) -> Any:
    """Convert a JSON or query-string value to the Python value of the column's type.

    `what` names the value in the error message, for example "filter rating__gte".
    """
    family = type_family(arrow_type)
    try:
        if family == "integer":
            return _to_integer(value)
        if family == "floating":
            return _to_float(value)
        if family == "boolean":
            return _to_boolean(value)
        if family == "string":
            return _to_string(value)
        if family == "timestamp":
            return parse_timestamp(value)
        if family == "date":
            return date.fromisoformat(str(value))
    except (ValueError, TypeError, OverflowError) as error:
        raise InvalidInput(
            f"invalid value {value!r} for {what}: expected {_expected(family)} "
            f"({describe_type(arrow_type)})"
        ) from error
    raise InvalidInput(f"{what} is not supported on {describe_type(arrow_type)} columns")


def _to_integer(value: Any) -> int:
    if isinstance(value, bool):
        raise TypeError("a boolean is not an integer")
    if isinstance(value, int):
        number = value
    elif isinstance(value, float) and value.is_integer():
        number = int(value)
    elif isinstance(value, str) and INTEGER_PATTERN.fullmatch(value.strip()):
        number = int(value)
    else:
        raise ValueError("not an integer")
    if not INT64_MIN <= number <= INT64_MAX:
        raise OverflowError("integer outside the signed 64-bit range")
    return number


def _to_float(value: Any) -> float:
    if isinstance(value, bool):
        raise TypeError("a boolean is not a number")
    return float(value)


def _to_boolean(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    word = str(value).strip().lower()
    if word in TRUE_WORDS:
        return True
    if word in FALSE_WORDS:
        return False
    raise ValueError("not a boolean")


def _to_string(value: Any) -> str:
    if isinstance(value, bool) or not isinstance(value, str | int):
        raise TypeError("not a string")
    return str(value)


def _expected(family: str) -> str:
    return {
        "integer": "a signed 64-bit integer",
        "floating": "a number",
        "boolean": "true or false",
        "string": "a string",
        "timestamp": "an ISO 8601 timestamp or Unix epoch seconds",
        "date": "an ISO 8601 date such as 2024-05-01",
    }.get(family, family)


def parse_timestamp(value: Any) -> datetime:
    """Parse an ISO 8601 string or Unix epoch seconds into an aware UTC datetime.

    A string without an offset is taken as UTC. Raise ValueError for anything else.
    """
    if isinstance(value, datetime):
        parsed = value
    elif isinstance(value, bool):
        raise TypeError("a boolean is not a timestamp")
    elif isinstance(value, int | float):
        return datetime.fromtimestamp(value, tz=UTC)
    elif isinstance(value, str):
        text = value.strip()
        if re.fullmatch(r"[+-]?\d+(\.\d+)?", text):
            return datetime.fromtimestamp(float(text), tz=UTC)
        parsed = datetime.fromisoformat(text)
    else:
        raise TypeError("not a timestamp")

    if parsed.tzinfo is None:
        return parsed.replace(tzinfo=UTC)
    return parsed.astimezone(UTC)
