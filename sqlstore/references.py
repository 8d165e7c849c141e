"""Feature references: `group/name`, `group/name:col1,col2`, or a table name that is unique."""

from __future__ import annotations

import difflib
from collections.abc import Collection, Sequence
from dataclasses import dataclass

from sqlstore.errors import InvalidInput, NotFound, RegistryEntryDamaged, quoted_value
from sqlstore.identifiers import validate_group, validate_table_name
from sqlstore.registry import RegistryEntry


@dataclass(frozen=True)
class FeatureReference:
    """A resolved feature name: a table and, optionally, some of its columns."""

    requested: str
    entry: RegistryEntry
    columns: list[str] | None = None


REFERENCE_FORM = "'group/name:column', 'group/name:col1,col2', 'group/name' or a unique table name"


@dataclass(frozen=True)
class ParsedReference:
    """The parts of a feature reference's text, before the registry is consulted."""

    group: str | None
    name: str
    columns: list[str] | None


def parse_reference(text: object) -> ParsedReference:
    """Split `group/name:col1,col2` into its parts. Raise InvalidInput when a part is empty or
    the table part has more than one `/`, and InvalidIdentifier when the group or table name is
    not a valid identifier. Whether the table and columns exist is checked against the
    registry later."""
    if not isinstance(text, str) or not text:
        raise InvalidInput(f"invalid feature reference {quoted_value(text)}: use {REFERENCE_FORM}")
    table_part, colon, column_part = text.partition(":")
    group: str | None = None
    name = table_part
    if "/" in table_part:
        group, _, name = table_part.partition("/")
    if not name or group == "" or "/" in name:
        raise InvalidInput(
            f"invalid feature reference {text!r}: the table part {table_part!r} must be "
            f"'group/name' or a table name; use {REFERENCE_FORM}"
        )
    # The same identifier rules as the paths of /features, so that every route gives the same
    # 400 for a name no table can have.
    if group is not None:
        validate_group(group)
    validate_table_name(name)
    if not colon:
        return ParsedReference(group, name, None)
    columns = [column.strip() for column in column_part.split(",")]
    if not all(columns):
        raise InvalidInput(
            f"invalid feature reference {text!r}: a column name after ':' is empty; use "
            f"{REFERENCE_FORM}, or omit ':' for every feature column"
        )
    return ParsedReference(group, name, columns)


def resolve_reference(
    text: str, entries: Sequence[RegistryEntry], damaged: Collection[str] = ()
) -> FeatureReference:
    """Resolve `group/name`, `group/name:column` or a bare table name to a registered table.

    A bare name must match exactly one table; otherwise the error lists the candidates. A table
    of `damaged` (`Registry.damaged_tables()`), which listings leave out, raises
    RegistryEntryDamaged rather than NotFound.
    """
    parsed = parse_reference(text)
    if parsed.group is not None:
        table_part = f"{parsed.group}/{parsed.name}"
        entry = next((entry for entry in entries if entry.reference == table_part), None)
        if entry is None:
            _raise_if_damaged([table_part], damaged)
            raise NotFound(f"feature table {table_part!r} not found{_suggest(table_part, entries)}")
    else:
        table_part = parsed.name
        matches = [entry for entry in entries if entry.name == table_part]
        if not matches:
            _raise_if_damaged([d for d in damaged if d.endswith(f"/{table_part}")], damaged)
            raise NotFound(f"feature table {table_part!r} not found{_suggest(table_part, entries)}")
        if len(matches) > 1:
            candidates = ", ".join(entry.reference for entry in matches)
            raise InvalidInput(f"feature name {table_part!r} is ambiguous: use one of {candidates}")
        entry = matches[0]

    for column in parsed.columns or []:
        if entry.column(column) is None:
            available = ", ".join(c.name for c in entry.columns)
            raise InvalidInput(
                f"unknown column {column!r} in feature {text!r}; columns: {available}"
            )
    return FeatureReference(requested=text, entry=entry, columns=parsed.columns)


def _raise_if_damaged(references: Sequence[str], damaged: Collection[str]) -> None:
    for reference in references:
        if reference in damaged:
            raise RegistryEntryDamaged.of_table(reference)


def _suggest(text: str, entries: Sequence[RegistryEntry]) -> str:
    names = [entry.reference for entry in entries]
    close = difflib.get_close_matches(text, names + [e.name for e in entries], n=3, cutoff=0.5)
    if close:
        return f"; did you mean {', '.join(close)}?"
    return "; GET /features lists the tables"
