"""Server settings, read from environment variables with documented defaults."""

from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass, field, fields
from pathlib import Path

from sqlstore.layout import resolve_root

ENVIRONMENT_PREFIX = "SQLSTORE_"
CONFIG_FILE_NAME = "sqlstore.toml"


def _read_config_file(path: Path) -> dict[str, str]:
    """Return the settings in a TOML file as strings, or {} when the file does not exist."""
    try:
        content = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {}
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as error:
        raise ValueError(f"invalid settings file {path}: {error}") from error

    known = {setting.name for setting in fields(Settings)} - {"root"}
    unknown = sorted(set(content) - known)
    if unknown:
        raise ValueError(f"unknown settings in {path}: {', '.join(unknown)}")
    return {name: str(value) for name, value in content.items()}


def default_queries_dir() -> Path:
    """Return the `queries/` folder of the source checkout, else `./queries`."""
    checkout = Path(__file__).resolve().parent.parent / "queries"
    if checkout.is_dir():
        return checkout
    return Path("queries").resolve()


def parse_flag(raw: str) -> bool:
    """Return the truth value of a setting written as true/false, yes/no, on/off or 1/0."""
    value = raw.strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off"):
        return False
    raise ValueError(raw)


# When online views are built: on a table's first lookup, or when a worker starts.
ONLINE_LOAD_MODES = ("lazy", "eager")

# Converters from a setting's text to its value, by the field's annotation; the default is int.
CONVERTERS = {"float": float, "Path": Path, "bool": parse_flag, "str": str}
EXPECTED = {"bool": "true or false", "str": "text", "Path": "a path"}


@dataclass(frozen=True)
class Settings:
    """Limits of the REST API. Each field can be set by `SQLSTORE_<FIELD NAME IN CAPITALS>`."""

    root: Path
    default_limit: int = 100
    max_limit: int = 10_000
    max_body_bytes: int = 256 * 1024 * 1024
    # Smaller body limits of the routes whose valid bodies are small, so that one large body
    # cannot hold the event loop while it is parsed. docs/operations.md describes each.
    lookup_max_body_bytes: int = 16 * 1024 * 1024
    sql_max_body_bytes: int = 1024 * 1024
    max_records_per_write: int = 1_000_000
    max_entity_ids: int = 10_000
    max_columns: int = 1000
    lock_timeout_seconds: float = 60.0
    # Reading requests; docs/operations.md describes each. The header timeout counts from the
    # connection (first request) or the request's first byte, the body timeout between chunks.
    http_header_timeout_seconds: float = 30.0
    http_body_timeout_seconds: float = 60.0
    # Bytes per second that an unfinished request body must average after a grace of one body
    # timeout; 0 turns the minimum off.
    http_body_min_rate_bytes: int = 500
    http_max_head_bytes: int = 64 * 1024
    # One INFO line per request; docs/operations.md describes it.
    access_log: bool = True
    # Threads of each worker's DuckDB catalog; 0 means one per CPU core. `serve` sets it to the
    # cores divided by the workers unless it is given.
    duckdb_threads: int = 0
    # Seconds a thread may hold the GIL while another thread waits for it (Python's default
    # is 0.005). A shorter interval lets the event loop serve cache hits while a thread of
    # the thread pool computes a miss.
    switch_interval_seconds: float = 0.0005
    queries_dir: Path = field(default_factory=lambda: default_queries_dir())
    # Read-only SQL (/sql and named queries); docs/sql.md describes each limit.
    sql_max_rows: int = 10_000
    sql_max_result_bytes: int = 64 * 1024 * 1024
    sql_time_limit_seconds: float = 10.0
    sql_memory_limit_bytes: int = 1024 * 1024 * 1024
    sql_worker_memory_bytes: int = 4 * 1024 * 1024 * 1024
    sql_threads: int = 2
    sql_workers: int = 2
    sql_max_length: int = 100_000
    sql_max_builder_size: int = 1_000_000
    sql_max_generated_rows: int = 10_000_000
    # Values in all parameters of one query, each item of a list counting as one.
    sql_max_parameter_values: int = 100_000
    # Result caches; docs/caching.md describes each. A size of 0 turns a tier off.
    cache_memory_entries: int = 1024
    cache_memory_bytes: int = 64 * 1024 * 1024
    cache_memory_max_entry_bytes: int = 1024 * 1024
    cache_ttl_seconds: float = 300.0
    cache_disk_bytes: int = 1024 * 1024 * 1024
    cache_disk_max_entry_bytes: int = 64 * 1024 * 1024
    # Online views for lookups as of now; docs/online.md describes each.
    online_enabled: bool = True
    online_memory_bytes: int = 1024 * 1024 * 1024
    online_load: str = "lazy"

    def __post_init__(self) -> None:
        if self.default_limit > self.max_limit:
            raise ValueError(
                f"invalid settings: default_limit {self.default_limit} is more than max_limit "
                f"{self.max_limit}; lower SQLSTORE_DEFAULT_LIMIT too"
            )
        if self.online_load not in ONLINE_LOAD_MODES:
            raise ValueError(
                f"invalid SQLSTORE_ONLINE_LOAD={self.online_load!r}: use lazy or eager"
            )
        if not 0 < self.switch_interval_seconds <= 1:
            raise ValueError(
                f"invalid SQLSTORE_SWITCH_INTERVAL_SECONDS={self.switch_interval_seconds}: use "
                "a number of seconds above 0 and at most 1, such as 0.0005"
            )
        for name in ("http_header_timeout_seconds", "http_body_timeout_seconds"):
            if not getattr(self, name) > 0:
                raise ValueError(
                    f"invalid SQLSTORE_{name.upper()}={getattr(self, name)}: use a number of "
                    "seconds above 0, such as 30"
                )
        if self.http_body_min_rate_bytes < 0:
            raise ValueError(
                f"invalid SQLSTORE_HTTP_BODY_MIN_RATE_BYTES={self.http_body_min_rate_bytes}: use "
                "a number of bytes per second, such as 500, or 0 for no minimum"
            )
        if self.http_max_head_bytes < 1024:
            raise ValueError(
                f"invalid SQLSTORE_HTTP_MAX_HEAD_BYTES={self.http_max_head_bytes}: use at least "
                "1024 bytes, such as 65536"
            )
        for name in ("lookup_max_body_bytes", "sql_max_body_bytes", "sql_max_parameter_values"):
            if getattr(self, name) < 1:
                raise ValueError(
                    f"invalid SQLSTORE_{name.upper()}={getattr(self, name)}: use a number above 0"
                )
        if self.duckdb_threads < 0:
            raise ValueError(
                f"invalid SQLSTORE_DUCKDB_THREADS={self.duckdb_threads}: use 0 for one thread "
                "per CPU core, or a positive number"
            )

    @classmethod
    def from_environment(cls, root: str | os.PathLike[str] | None = None) -> Settings:
        """Build settings from `root` (or $SQLSTORE_ROOT), the store's `config/sqlstore.toml`
        and the SQLSTORE_* variables, which take precedence over the file."""
        resolved_root = resolve_root(root)
        file_values = _read_config_file(resolved_root / "config" / CONFIG_FILE_NAME)
        values: dict[str, object] = {"root": resolved_root}
        for setting in fields(cls):
            if setting.name == "root":
                continue
            variable = ENVIRONMENT_PREFIX + setting.name.upper()
            raw = os.environ.get(variable, file_values.get(setting.name))
            if raw is None:
                continue
            convert = CONVERTERS.get(setting.type, int)
            try:
                values[setting.name] = convert(raw)
            except ValueError as error:
                expected = EXPECTED.get(setting.type, "a number")
                raise ValueError(f"invalid {variable}={raw!r}: expected {expected}") from error
        return cls(**values)
