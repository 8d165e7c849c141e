"""Validation of group, table and column names before they reach a path or a SQL string."""

from __future__ import annotations

import re

from sqlstore.errors import InvalidIdentifier

# Group and table names become folder names, file names and DuckDB schema and view names.
# Lowercase only, so that names differing in case never collide on a case-insensitive file
# system or in DuckDB, whose identifiers are case-insensitive.
TABLE_NAME_PATTERN = re.compile(r"[a-z][a-z0-9_]{0,62}")
COLUMN_NAME_PATTERN = re.compile(r"[A-Za-z][A-Za-z0-9_]{0,127}")

# DuckDB's built-in schemas and catalogs, which a feature group must not shadow.
RESERVED_GROUP_NAMES = frozenset(
    {"main", "temp", "system", "information_schema", "pg_catalog", "memory"}
)


def _describe(value: object) -> str:
    text = repr(value)
    if len(text) > 80:
        return text[:77] + "..."
    return text


def validate_group(value: object) -> str:
    """Return `value` when it is a valid feature group name, else raise InvalidIdentifier."""
    name = _validate(value, "group name", TABLE_NAME_PATTERN, max_length=63)
    if name in RESERVED_GROUP_NAMES:
        raise InvalidIdentifier(
            f"invalid group name {name!r}: it is reserved by DuckDB; choose another name"
        )
    return name


def validate_table_name(value: object) -> str:
    """Return `value` when it is a valid feature table name, else raise InvalidIdentifier."""
    return _validate(value, "table name", TABLE_NAME_PATTERN, max_length=63)


def validate_column(value: object) -> str:
    """Return `value` when it is a valid column name, else raise InvalidIdentifier."""
    return _validate(value, "column name", COLUMN_NAME_PATTERN, max_length=128)


def _validate(value: object, kind: str, pattern: re.Pattern[str], max_length: int) -> str:
    if not isinstance(value, str):
        raise InvalidIdentifier(f"invalid {kind} {_describe(value)}: expected a string")

    if len(value) > max_length:
        raise InvalidIdentifier(
            f"invalid {kind} {_describe(value)}: longer than {max_length} characters"
        )

    if pattern.fullmatch(value) is None:
        allowed = (
            "lowercase letters, digits and underscores"
            if pattern is TABLE_NAME_PATTERN
            else "letters, digits and underscores"
        )
        raise InvalidIdentifier(
            f"invalid {kind} {_describe(value)}: use {allowed}, starting with a letter"
        )
    return value


def quote_identifier(name: str) -> str:
    """Quote an already validated identifier for DuckDB SQL."""
    return '"' + name.replace('"', '""') + '"'


def quote_string(text: str) -> str:
    """Quote a string as a DuckDB SQL literal, for the few places where a parameter is invalid."""
    return "'" + text.replace("'", "''") + "'"
