"""The function allow-list against the DuckDB that is installed."""

from __future__ import annotations

import duckdb
import pytest

from sqlstore.sql.function_allowlist import ALLOWED_FUNCTIONS
from sqlstore.sql.functions import (
    ALLOWED_TABLE_FUNCTIONS,
    denial_reason,
    is_allowed_function,
    is_allowed_table_function,
    review_functions,
)

DANGEROUS_FUNCTIONS = [
    "current_setting",
    "getvariable",
    "sleep_ms",
    "pg_sleep",
    "json_serialize_sql",
    "json_execute_serialized_sql",
    "version",
    "setseed",
    "nextval",
    "write_log",
    "current_query",
    "getenv",
    "read_csv",
    "glob",
    "query",
]
DANGEROUS_TABLE_FUNCTIONS = [
    "read_csv",
    "read_parquet",
    "read_text",
    "read_blob",
    "glob",
    "query",
    "query_table",
    "duckdb_settings",
    "parquet_metadata",
    "sniff_csv",
    "checkpoint",
    "histogram",
    "repeat_row",
    "arrow_scan",
]


def test_every_duckdb_function_is_reviewed() -> None:
    review = review_functions(duckdb.connect())

    assert sorted(review.unreviewed) == [], (
        "functions of this DuckDB are neither allowed nor denied: review them and regenerate "
        "sqlstore/sql/function_allowlist.py"
    )


def test_allow_list_contains_no_denied_name() -> None:
    denied = sorted(name for name in ALLOWED_FUNCTIONS if denial_reason(name) is not None)

    assert denied == []


def test_allowed_table_functions_exist() -> None:
    rows = duckdb.connect().execute(
        "SELECT DISTINCT function_name FROM duckdb_functions() WHERE function_type = 'table'"
    )
    table_functions = {name for (name,) in rows.fetchall()}

    assert ALLOWED_TABLE_FUNCTIONS <= table_functions


@pytest.mark.parametrize("name", DANGEROUS_FUNCTIONS)
def test_dangerous_function_is_not_allowed(name: str) -> None:
    assert not is_allowed_function(name)
    assert not is_allowed_function(name.upper())


@pytest.mark.parametrize("name", DANGEROUS_TABLE_FUNCTIONS)
def test_dangerous_table_function_is_not_allowed(name: str) -> None:
    assert not is_allowed_table_function(name)


@pytest.mark.parametrize("name", ["sum", "row_number", "list_transform", "strftime", "unnest"])
def test_common_function_is_allowed(name: str) -> None:
    assert is_allowed_function(name)
