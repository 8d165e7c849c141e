"""Which DuckDB functions a query may call: a reviewed allow-list, and the review behind it.

The allow-list in `sqlstore.sql.function_allowlist` was generated from `duckdb_functions()` of
DuckDB 2.0.1: every scalar, aggregate, window and macro function, minus the names that
`DENIED_FUNCTIONS` and `DENIED_PREFIXES` give a reason for. A function that a later DuckDB adds
is therefore rejected until someone reviews it and regenerates the list with
`python -m sqlstore.sql.functions > sqlstore/sql/function_allowlist.py`;
`tests/test_sql_functions.py` lists such functions when it runs on a newer DuckDB.

Table functions are allowed by name only: they are the way DuckDB reads files, databases and
its own state, so only generators of values are on that list.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass

import duckdb

from sqlstore.sql.function_allowlist import ALLOWED_FUNCTIONS

# Table functions a query may use in FROM. Everything else that duckdb_functions() lists as a
# table function reads files (read_csv, glob, parquet_metadata), runs SQL text (query,
# query_table), reports or changes database state (duckdb_settings, checkpoint,
# enable_logging) or scans Python objects (arrow_scan, pandas_scan).
ALLOWED_TABLE_FUNCTIONS = frozenset(
    {"range", "generate_series", "unnest", "json_each", "json_tree"}
)

# Names that DuckDB's parser produces from syntax although duckdb_functions() does not list
# them as scalar functions: `SELECT unnest(list)`, GROUPING SETS helpers and `json -> path`.
SYNTAX_FUNCTIONS = frozenset({"unnest", "unlist", "grouping", "grouping_id", "->"})

# Reviewed scalar, aggregate and macro functions that stay off the allow-list, with the reason.
DENIED_FUNCTIONS: dict[str, str] = {
    "current_setting": "reads server settings such as allowed_directories",
    "getvariable": "reads session variables",
    # DuckDB's shell defines getenv; a build that adds it to the library would read the
    # server's environment variables.
    "getenv": "reads the server's environment variables",
    "current_query": "reads session state",
    "current_query_id": "reads session state",
    "current_connection_id": "reads session state",
    "current_transaction_id": "reads session state",
    "txid_current": "reads session state",
    "current_database": "reads catalog state",
    "current_catalog": "reads catalog state",
    "current_schema": "reads catalog state",
    "current_schemas": "reads catalog state",
    "current_role": "reads session state",
    "current_user": "reads session state",
    "session_user": "reads session state",
    "user": "reads session state",
    "in_search_path": "reads catalog state",
    "get_block_size": "reads storage state",
    "version": "reveals the server's DuckDB version",
    "nextval": "changes sequence state",
    "currval": "reads sequence state",
    "setval": "changes sequence state",
    "setseed": "changes the random generator shared by the database",
    "sleep_ms": "blocks a thread and ignores max_execution_time",
    "write_log": "writes to DuckDB's log",
    "parse_duckdb_log_message": "reads DuckDB's log format",
    "json_serialize_sql": "parses SQL text given as a value",
    "json_deserialize_sql": "builds SQL text from a value",
    "json_serialize_plan": "plans SQL text given as a value",
    "json_execute_serialized_sql": "runs SQL given as a value",
    "col_description": "reads catalog state",
    "obj_description": "reads catalog state",
    "shobj_description": "reads catalog state",
    "format_pg_type": "reads catalog state",
    "format_type": "reads catalog state",
    "map_to_pg_oid": "reads catalog state",
    "map_type_id_to_pg_oid": "reads catalog state",
}

# Name prefixes that stay off the allow-list, with the reason.
DENIED_PREFIXES: tuple[tuple[str, str], ...] = (
    ("__internal", "is internal to DuckDB's optimizer and storage"),
    ("pg_", "reads catalog or server state (PostgreSQL compatibility)"),
    ("has_", "reads privileges (PostgreSQL compatibility)"),
    ("inet_", "reads connection state (PostgreSQL compatibility)"),
    ("duckdb_", "reads database state"),
    ("read_", "reads files"),
    ("parquet_", "reads files"),
    ("pragma_", "reads database state"),
)

# Function types of duckdb_functions() that the allow-list is built from.
LISTED_FUNCTION_TYPES = ("scalar", "aggregate", "macro", "window")

# Names that DuckDB's binder reads as a call of a function without arguments when no column in
# scope has that name, and the function it calls (GetSQLValueFunctionName in DuckDB 2.0.1's
# bind_columnref_expression.cpp). The parser keeps them as column references, quoted or not,
# so `SELECT user` and `SELECT "user"` call user(). DuckDB 2.0.1 reads `alias.user` the same
# way, but no other qualified name.
SQL_VALUE_FUNCTIONS: dict[str, str] = {
    "current_catalog": "current_catalog",
    "current_date": "current_date",
    "current_schema": "current_schema",
    "current_role": "current_role",
    "current_time": "get_current_time",
    "current_timestamp": "get_current_timestamp",
    "current_user": "current_user",
    "localtime": "current_localtime",
    "localtimestamp": "current_localtimestamp",
    "session_user": "session_user",
    "user": "user",
}

# Allowed functions whose result can differ between two runs of the same query in the sandbox,
# so that a result of theirs must not be cached: the argument counts for which that holds, or
# None for every count. They draw random numbers, read the clock (one-argument `age` measures
# from the current date), or report how DuckDB ran the query. Functions that depend only on
# the TimeZone setting are not listed, because the sandbox fixes it at UTC.
# tests/test_sql_duckdb_facts.py compares this table with the stability column of
# duckdb_functions() and with the built-in macros, so that a DuckDB upgrade that adds such a
# function fails until it is reviewed here.
VOLATILE_FUNCTIONS: dict[str, frozenset[int] | None] = {
    "random": None,
    "gen_random_uuid": None,
    "uuid": None,
    "uuidv4": None,
    "uuidv7": None,
    "stats": None,
    "vector_type": None,
    "now": None,
    "today": None,
    "current_date": None,
    "current_localtime": None,
    "current_localtimestamp": None,
    "get_current_time": None,
    "get_current_timestamp": None,
    "transaction_timestamp": None,
    # DuckDB 2.0.1 marks age(TIMESTAMP) CONSISTENT, although it subtracts from the current date.
    "age": frozenset({1}),
    # A macro: current_timestamp - CAST(i AS INTERVAL).
    "ago": None,
}


def denial_reason(name: str) -> str | None:
    """Return why `name` (lowercase) is denied, or None when no deny rule covers it."""
    reason = DENIED_FUNCTIONS.get(name)
    if reason is not None:
        return reason
    for prefix, prefix_reason in DENIED_PREFIXES:
        if name.startswith(prefix):
            return prefix_reason
    return None


def is_allowed_function(name: str) -> bool:
    """Return whether a query may call the scalar, aggregate or window function `name`."""
    folded = name.lower()
    return folded in ALLOWED_FUNCTIONS or folded in SYNTAX_FUNCTIONS


def is_allowed_table_function(name: str) -> bool:
    """Return whether a query may use `name` as a table function in FROM."""
    return name.lower() in ALLOWED_TABLE_FUNCTIONS


def is_volatile_call(name: str, argument_count: int | None = None) -> bool:
    """Return whether a call of `name` (lowercase) with `argument_count` arguments can return
    another result when the same query runs again (see VOLATILE_FUNCTIONS). With the count
    unknown (None), every listed count counts."""
    if name not in VOLATILE_FUNCTIONS:
        return False
    counts = VOLATILE_FUNCTIONS[name]
    return counts is None or argument_count is None or argument_count in counts


@dataclass(frozen=True)
class FunctionReview:
    """Functions of one DuckDB build compared with the committed allow-list."""

    listed: frozenset[str]
    allowed: frozenset[str]
    denied: frozenset[str]

    @property
    def unreviewed(self) -> frozenset[str]:
        """Functions this DuckDB has that are neither allowed nor covered by a deny rule."""
        return self.listed - self.allowed - self.denied

    @property
    def gone(self) -> frozenset[str]:
        """Allowed names that this DuckDB no longer lists."""
        return ALLOWED_FUNCTIONS - self.listed


def review_functions(connection: duckdb.DuckDBPyConnection) -> FunctionReview:
    """Compare the functions of `connection`'s DuckDB with the allow-list and the deny rules."""
    types = ", ".join(f"'{function_type}'" for function_type in LISTED_FUNCTION_TYPES)
    rows = connection.execute(
        f"SELECT DISTINCT lower(function_name) FROM duckdb_functions() "
        f"WHERE function_type IN ({types})"
    ).fetchall()
    listed = frozenset(name for (name,) in rows)
    denied = frozenset(name for name in listed if denial_reason(name) is not None)
    return FunctionReview(listed=listed, allowed=listed & ALLOWED_FUNCTIONS, denied=denied)


def render_allowlist_module(connection: duckdb.DuckDBPyConnection) -> str:
    """Return the text of function_allowlist.py for the DuckDB of `connection`."""
    review = review_functions(connection)
    names = sorted(review.listed - review.denied)
    lines = [
        f'"""Generated by `python -m sqlstore.sql.functions` from DuckDB {duckdb.__version__}.',
        "",
        "Scalar, aggregate, window and macro functions that queries may call. Review new",
        "functions against the deny rules in sqlstore/sql/functions.py before regenerating.",
        '"""',
        "",
        "ALLOWED_FUNCTIONS = frozenset(",
        "    {",
    ]
    lines.extend(f"        {json.dumps(name)}," for name in names)
    lines.extend(["    }", ")", ""])
    return "\n".join(lines)


if __name__ == "__main__":
    sys.stdout.write(render_allowlist_module(duckdb.connect()))
