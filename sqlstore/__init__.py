"""sqlstore: a feature store on Parquet files, DuckDB views and a REST API."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from sqlstore.store import FeatureStore, TableDefinition, WriteResult

__version__ = "0.1.0"

__all__ = ["FeatureStore", "TableDefinition", "WriteResult", "__version__"]

# The store and pandas load on first use, so that a process which only needs a small module,
# such as a SQL worker (`python -m sqlstore.sql.worker`), starts without them.
_LAZY_NAMES = frozenset({"FeatureStore", "TableDefinition", "WriteResult"})


def __getattr__(name: str) -> Any:
    if name in _LAZY_NAMES:
        from sqlstore import store

        return getattr(store, name)
    raise AttributeError(f"module 'sqlstore' has no attribute {name!r}")
