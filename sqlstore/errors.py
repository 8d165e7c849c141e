"""Exceptions raised by sqlstore, each carrying the HTTP status the REST API returns for it."""

from __future__ import annotations

import json
import reprlib
from typing import Any

# A value quoted in an error message is cut to this many characters.
MAX_QUOTED_CHARACTERS = 100


class SqlstoreError(Exception):
    """Base class. `status` is the HTTP status and `code` a stable machine-readable name."""

    status = 500
    code = "internal_error"
    # The Retry-After header of a 503: the seconds after which a retry may succeed, or None
    # when waiting does not help.
    retry_after: str | None = "1"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class InvalidInput(SqlstoreError):
    """A request value is malformed or out of range; the message names the value and the fix."""

    status = 400
    code = "invalid_input"


class NotAcceptable(InvalidInput):
    """The Accept header names no format that the endpoint can return."""

    status = 406
    code = "not_acceptable"


class InvalidIdentifier(InvalidInput):
    """A group, table or column name does not match the identifier pattern."""

    code = "invalid_identifier"


class SchemaMismatch(InvalidInput):
    """Appended data has a column whose type cannot be widened to the stored one."""

    code = "schema_mismatch"


class NotFound(SqlstoreError):
    """The named table, group or column does not exist."""

    status = 404
    code = "not_found"


class Conflict(SqlstoreError):
    """The request contradicts the table's registered definition."""

    status = 409
    code = "conflict"


class PayloadTooLarge(SqlstoreError):
    """The request exceeds a configured size limit."""

    status = 413
    code = "payload_too_large"


class StorageError(SqlstoreError):
    """Writing to the store root failed (disk full, read-only file system, permissions)."""

    status = 507
    code = "storage_error"


class TableBusy(SqlstoreError):
    """Another writer held the table's lock for longer than the lock timeout."""

    status = 503
    code = "table_busy"


class TableUnavailable(SqlstoreError):
    """A registered table's data file is missing or cannot be read, so queries of it cannot run
    until an operator restores the file or the table is written again."""

    status = 503
    code = "table_unavailable"
    # Damage outside sqlstore does not go away by itself.
    retry_after = None

    @classmethod
    def of_table(cls, reference: str) -> TableUnavailable:
        """Return the error for the table `reference` (`group/name`)."""
        return cls(
            f"table {reference} cannot be read: its data file is missing, damaged or was "
            "replaced outside sqlstore (the log has the cause); an operator can restore the "
            "file or write the table again"
        )


class RegistryEntryDamaged(TableUnavailable):
    """A table's registry entry file is damaged, or missing beside its data file, so the table
    cannot be read until the server rebuilds the entry from the data file at its next start, or
    the table is written again. `sqlstore.registry.Registry.find` lists the kinds of damage."""

    @classmethod
    def of_table(cls, reference: str) -> RegistryEntryDamaged:
        """Return the error for the table `reference` (`group/name`)."""
        return cls(
            f"table {reference} cannot be read: its registry entry is missing or damaged (the "
            "log has the cause); restarting the server rebuilds it from the table's data file, "
            "or an operator can write the table again"
        )


class QuerySyntaxError(InvalidInput):
    """SQL text could not be parsed. `details` contains the line and column when they are known."""

    code = "query_syntax_error"

    def __init__(self, message: str, details: list[dict[str, object]] | None = None) -> None:
        super().__init__(message)
        self.details = details


class QueryCancelled(SqlstoreError):
    """The client closed the connection while its query ran, so the query was stopped. The
    status is nginx's 499; it reaches only the log and the metrics, because the client left."""

    status = 499
    code = "client_closed_request"


class QueryRejected(InvalidInput):
    """SQL text parsed, but uses a statement, table or function that read-only queries may not.

    `details` names the rejected construct and, when known, its line and column.
    """

    code = "query_rejected"

    def __init__(self, message: str, details: list[dict[str, object]] | None = None) -> None:
        super().__init__(message)
        self.details = details


class QueryTimeout(InvalidInput):
    """A query ran past the SQL time limit and was stopped."""

    code = "query_timeout"


class QueryOutOfMemory(InvalidInput):
    """A query needed more memory than the SQL sandbox may use."""

    code = "query_out_of_memory"


class QueryFailed(InvalidInput):
    """DuckDB raised an error while running a validated query (a missing column, a bad cast)."""

    code = "query_failed"


class UnrepresentableValue(InvalidInput):
    """A result column contains a value that the requested output format cannot represent,
    such as DuckDB's infinity in JSON. `problem` names the column, its type and the value,
    `advice` what to do, and `formats` lists the formats that can represent the value
    ("json", "csv", "parquet", "arrow"), so that the command line can give its own advice."""

    code = "unrepresentable_value"

    def __init__(self, column: str, problem: str, advice: str, formats: tuple[str, ...]) -> None:
        super().__init__(f"{problem}; {advice}")
        self.column = column
        self.problem = problem
        self.formats = formats


class ResultRowTooLarge(InvalidInput):
    """The first row of a query result alone is larger than the result byte limit."""

    code = "result_row_too_large"


class QueryWorkersBusy(SqlstoreError):
    """Every SQL worker process stayed busy for longer than the wait limit."""

    status = 503
    code = "query_workers_busy"


class QueryWorkerStopped(SqlstoreError):
    """A signal from outside the server stopped the SQL worker process that ran the query."""

    status = 503
    code = "query_worker_stopped"


def quoted_value(value: Any, max_characters: int = MAX_QUOTED_CHARACTERS) -> str:
    """Return `value` as JSON text for an error message, cut to `max_characters`.

    Any value a JSON parser produced can be quoted: integers beyond 64 bits, NaN (written as
    NaN), lone surrogates (escaped), and values nested too deeply for `json.dumps`, which
    `reprlib` writes with the inner levels left out.
    """
    try:
        text = json.dumps(value, default=repr, separators=(",", ":"))
    except (RecursionError, TypeError, ValueError):
        text = reprlib.repr(value)
    if len(text) > max_characters:
        text = f"{text[:max_characters]}…"
    return text
