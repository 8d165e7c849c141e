"""Server settings, read from environment variables with documented defaults."""

from __future__ import annotations

import os
from dataclasses import dataclass, fields
from pathlib import Path

from sqlstore.layout import resolve_root

ENVIRONMENT_PREFIX = "SQLSTORE_"


@dataclass(frozen=True)
class Settings:
    """Limits of the REST API. Each field can be set by `SQLSTORE_<FIELD NAME IN CAPITALS>`."""

    root: Path
    default_limit: int = 100
    max_limit: int = 10_000
    max_body_bytes: int = 256 * 1024 * 1024
    max_records_per_write: int = 1_000_000
    max_entity_ids: int = 10_000
    lock_timeout_seconds: float = 60.0

    @classmethod
    def from_environment(cls, root: str | os.PathLike[str] | None = None) -> Settings:
        """Build settings from `root` (or $SQLSTORE_ROOT) and the SQLSTORE_* variables."""
        values: dict[str, object] = {"root": resolve_root(root)}
        for field in fields(cls):
            if field.name == "root":
                continue
            raw = os.environ.get(ENVIRONMENT_PREFIX + field.name.upper())
            if raw is None:
                continue
            convert = float if field.type == "float" else int
            try:
                values[field.name] = convert(raw)
            except ValueError as error:
                raise ValueError(
                    f"invalid {ENVIRONMENT_PREFIX}{field.name.upper()}={raw!r}: expected a number"
                ) from error
        return cls(**values)
