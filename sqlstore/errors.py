"""Exceptions raised by sqlstore, each carrying the HTTP status the REST API returns for it."""

from __future__ import annotations


class SqlstoreError(Exception):
    """Base class. `status` is the HTTP status and `code` a stable machine-readable name."""

    status = 500
    code = "internal_error"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class InvalidInput(SqlstoreError):
    """A request value is malformed or out of range; the message names the value and the fix."""

    status = 400
    code = "invalid_input"


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
