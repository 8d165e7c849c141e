"""sqlstore: a feature store on Parquet files, DuckDB views and a REST API."""

from sqlstore.store import FeatureStore, TableDefinition, WriteResult

__version__ = "0.1.0"

__all__ = ["FeatureStore", "TableDefinition", "WriteResult", "__version__"]
