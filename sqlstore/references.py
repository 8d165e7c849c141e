"""Feature references: `group/name`, `group/name:col1,col2`, or a table name that is unique."""

from __future__ import annotations

import difflib
from collections.abc import Sequence
from dataclasses import dataclass

from sqlstore.errors import InvalidInput, NotFound
from sqlstore.registry import RegistryEntry


@dataclass(frozen=True)
class FeatureReference:
    """A resolved feature name: a table and, optionally, some of its columns."""

    requested: str
    entry: RegistryEntry
    columns: list[str] | None = None


def resolve_reference(text: str, entries: Sequence[RegistryEntry]) -> FeatureReference:
    """Resolve `group/name`, `group/name:column` or a bare table name to a registered table.

    A bare name must match exactly one table; otherwise the error lists the candidates.
    """
    if not isinstance(text, str) or not text:
        raise InvalidInput(f"invalid feature name {text!r}: use 'group/name' or a table name")
    table_part, _, column_part = text.partition(":")
    by_reference = {entry.reference: entry for entry in entries}

    if "/" in table_part:
        entry = by_reference.get(table_part)
        if entry is None:
            raise NotFound(f"feature table {table_part!r} not found{_suggest(table_part, entries)}")
    else:
        matches = [entry for entry in entries if entry.name == table_part]
        if not matches:
            raise NotFound(f"feature table {table_part!r} not found{_suggest(table_part, entries)}")
        if len(matches) > 1:
            candidates = ", ".join(entry.reference for entry in matches)
            raise InvalidInput(f"feature name {table_part!r} is ambiguous: use one of {candidates}")
        entry = matches[0]

    columns = None
    if column_part:
        columns = [column.strip() for column in column_part.split(",")]
        for column in columns:
            if entry.column(column) is None:
                available = ", ".join(c.name for c in entry.columns)
                raise InvalidInput(
                    f"unknown column {column!r} in feature {text!r}; columns: {available}"
                )
    return FeatureReference(requested=text, entry=entry, columns=columns)


def _suggest(text: str, entries: Sequence[RegistryEntry]) -> str:
    names = [entry.reference for entry in entries]
    close = difflib.get_close_matches(text, names + [e.name for e in entries], n=3, cutoff=0.5)
    if close:
        return f"; did you mean {', '.join(close)}?"
    return "; GET /features lists the tables"
