"""Limits of the SQL endpoint, taken from the server settings."""

from __future__ import annotations

from dataclasses import dataclass

MEBIBYTE = 1024 * 1024
GIBIBYTE = 1024 * MEBIBYTE
# The rejection of a text nested deeper than a parser or a validator walk can follow.
TOO_DEEP_MESSAGE = (
    "query is nested too deeply to validate; flatten nested expressions or subqueries"
)
# The deepest nesting of lists, arrays, structs and unions in one value, a map counting as two
# levels. Results travel as Arrow, and pyarrow 26 imports DuckDB 2.0.1's Arrow export only up
# to 64 levels, which count the result's own struct and the innermost value. Measured: a list
# nested 62 levels deep is exported, and one nested 63 levels fails with "Recursion level in
# ArrowSchema struct exceeded".
MAX_NESTING_DEPTH = 62


@dataclass(frozen=True)
class SqlLimits:
    """Resource limits of one query, set by the settings of the same name with a `sql_` prefix."""

    max_rows: int = 10_000
    max_result_bytes: int = 64 * MEBIBYTE
    time_limit_seconds: float = 10.0
    memory_limit_bytes: int = GIBIBYTE
    worker_memory_bytes: int = 4 * GIBIBYTE
    threads: int = 2
    workers: int = 2
    max_length: int = 100_000
    max_builder_size: int = 1_000_000
    max_generated_rows: int = 10_000_000

    @classmethod
    def from_settings(cls, settings: object) -> SqlLimits:
        """Read the `sql_*` fields of `settings`; a field it lacks keeps the default."""
        values = {}
        for name in cls.__dataclass_fields__:
            value = getattr(settings, f"sql_{name}", None)
            if value is not None:
                values[name] = value
        return cls(**values)

    def validate(self) -> None:
        """Raise ValueError naming the setting when a limit is out of range."""
        positive = (
            "max_rows",
            "max_result_bytes",
            "time_limit_seconds",
            "memory_limit_bytes",
            "worker_memory_bytes",
            "threads",
            "workers",
            "max_length",
            "max_builder_size",
            "max_generated_rows",
        )
        for name in positive:
            if not getattr(self, name) > 0:
                raise ValueError(
                    f"invalid SQLSTORE_SQL_{name.upper()}={getattr(self, name)!r}: "
                    "expected a number above 0"
                )
        if self.worker_memory_bytes < self.memory_limit_bytes + GIBIBYTE:
            raise ValueError(
                f"SQLSTORE_SQL_WORKER_MEMORY_BYTES={self.worker_memory_bytes} leaves less than "
                f"1 GiB above SQLSTORE_SQL_MEMORY_LIMIT_BYTES={self.memory_limit_bytes}; a worker "
                "needs that much address space for Python, DuckDB and its threads"
            )
