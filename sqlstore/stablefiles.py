"""Reads of Parquet files that a concurrent write may replace during the read.

A write replaces a table's Parquet file by renaming a new file over it (`sqlstore.atomic`).
DuckDB (2.0.1, the version tested) opens a Parquet file more than once per query, so a rename
between two opens fails the query with errors such as `TProtocolException: Invalid data`, or
could combine parts of two versions. `read_unchanged` runs a read again until no file it reads
changed during it.

NOTE: two replacements within one read can leave the stat signature unchanged in rare cases
(see `sqlstore.filestamps`), and such a read is not repeated.
"""

from __future__ import annotations

import logging
import os
import stat
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TypeVar

import duckdb
import orjson
import pyarrow as pa
import pyarrow.parquet as pq

from sqlstore.errors import SqlstoreError, TableBusy, TableUnavailable
from sqlstore.filestamps import Signature, file_signature, open_regular
from sqlstore.layout import ENTRY_METADATA_KEY

logger = logging.getLogger(__name__)

# A read that a write overtook is run up to this many times in all. One write replaces the
# file once, so only a steady stream of writes overtakes every attempt.
MAX_READ_ATTEMPTS = 50
READ_RETRY_SECONDS = 0.01
# Errors of a read that may come from a file replaced during it. Any other error is raised at
# once, and so is one of these when no file changed.
REPLACED_FILE_ERRORS = (duckdb.Error, pa.ArrowException)
# The first and last bytes of every Parquet file.
PARQUET_MAGIC = b"PAR1"

Result = TypeVar("Result")


class ReadAgain(Exception):
    """Raised by a read to have `read_unchanged` run it again. A read raises it when, for
    example, the file is newer than the registry entry it used. The message gives the reason."""


def read_unchanged(
    paths: Sequence[Path], read: Callable[[], Result], tables: Sequence[str]
) -> Result:
    """Run `read` until no file in `paths` is replaced during a run, and return that result.

    The result comes from a run during which no file in `paths` changed its stat signature, so
    it describes one version of each file. `read` must therefore read only those files, and it
    must read the registry itself when it needs an entry. `tables` are the tables' references
    (`group/name`) for the log and the error.

    Raises TableBusy when writes overtook each of MAX_READ_ATTEMPTS runs, or each run raised
    ReadAgain. When a run fails and no file changed during it, raises TableUnavailable if a
    file is missing, damaged or not the table's (see `file_problem`), else re-raises the
    run's error. When every run raised ReadAgain and no file changed, raises TableUnavailable
    too. A path that leads outside the store's features folder through a symbolic link raises
    TableUnavailable before any run (see `link_problem`).
    """
    names = ", ".join(tables)
    reject_outside_links(paths, tables)
    first = _signatures(paths)
    changed = False
    for attempt in range(1, MAX_READ_ATTEMPTS + 1):
        before = _signatures(paths)
        changed = changed or before != first
        try:
            result = read()
        except ReadAgain as reason:
            logger.debug(
                "reading %s again (attempt %d of %d): %s", names, attempt, MAX_READ_ATTEMPTS, reason
            )
        except SqlstoreError:
            raise
        except Exception as error:
            if _signatures(paths) == before:
                # Any error is checked, because a file of another table can also fail a read
                # with a KeyError for a missing column.
                raise_if_damaged(paths, tables, error)
                raise
            if not isinstance(error, (*REPLACED_FILE_ERRORS, OSError)):
                raise
            logger.info(
                "read of %s failed while a write replaced its file (attempt %d of %d): %s",
                names,
                attempt,
                MAX_READ_ATTEMPTS,
                error,
            )
        else:
            if _signatures(paths) == before:
                return result
            logger.debug(
                "read of %s overlapped a write (attempt %d of %d), so it runs again",
                names,
                attempt,
                MAX_READ_ATTEMPTS,
            )
        time.sleep(READ_RETRY_SECONDS)

    if not changed and _signatures(paths) == first:
        # No write replaced a file, so each run saw a file that does not match its registry
        # entry, such as an older version copied back by hand.
        logger.error(
            "the data files of %s did not change during %d reads, and none matched its "
            "registry entry",
            names,
            MAX_READ_ATTEMPTS,
        )
        raise TableUnavailable.of_table(tables[0])
    raise TableBusy(
        f"writes replaced the file of {names} during each of {MAX_READ_ATTEMPTS} reads; "
        "retry after the writes finish"
    )


def raise_if_damaged(paths: Sequence[Path], tables: Sequence[str], error: Exception) -> None:
    """Raise TableUnavailable when a file that a failed read used is missing, is not Parquet,
    or has no sqlstore footer of its table, so that the client gets a 503 that names the
    table rather than a 500. The registry lists every such file, so it was changed outside
    sqlstore."""
    for path, table in zip(paths, tables, strict=False):
        problem = file_problem(path, table)
        if problem is not None:
            logger.error("the data file %s of %s %s: %s", path, table, problem, error)
            raise TableUnavailable.of_table(table) from error


def file_problem(path: Path, table: str, version: int | None = None) -> str | None:
    """Return why `path` cannot be the data file of `table` (`group/name`), or None when it
    stays inside the features folder (see `link_problem`), has the Parquet magic bytes and a
    sqlstore footer of that table, and of `version` when one is given."""
    outside = link_problem(path)
    if outside is not None:
        return outside
    if not _is_parquet_file(path):
        return "is missing or is not Parquet"
    try:
        metadata = pq.read_schema(path).metadata or {}
    except (OSError, pa.ArrowException):
        return "has a damaged Parquet footer"
    text = metadata.get(ENTRY_METADATA_KEY)
    if text is None:
        return "was not written by sqlstore"
    try:
        entry = orjson.loads(text)
    except orjson.JSONDecodeError:
        return "has an unreadable sqlstore footer"
    written_for = f"{entry.get('group')}/{entry.get('name')}" if isinstance(entry, dict) else "?"
    if written_for != table:
        return f"was written for table {written_for}"
    if version is not None and entry.get("version") != version:
        return f"is version {entry.get('version')}, and the registry lists version {version}"
    return None


def link_problem(path: Path) -> str | None:
    """Return why the data file `path` must not be read, because a symbolic link leads it
    outside the store's features folder, or None.

    `path` is `<root>/features/<group>/<name>.parquet`, with `<root>` resolved as
    `sqlstore.layout.resolve_root` does. The rule is the SQL sandbox's: the path with every
    symbolic link resolved must lie inside `<root>/features`. So a link to another file
    inside that folder is read like that file, and a `features` folder that is itself a link
    puts every table outside. The file, its group folder and the features folder cost one
    `lstat` each, and the path is resolved only when one of them is a link.
    """
    # String operations, because this runs on every read and Path objects cost more.
    file = os.fspath(path)
    folder = os.path.dirname(file)
    features = os.path.dirname(folder)
    for part in (file, folder, features):
        try:
            if stat.S_ISLNK(os.lstat(part).st_mode):
                break
        except OSError:
            # A missing file is reported by the read, or by `file_problem`.
            return None
    else:
        return None
    target = Path(os.path.realpath(file))
    if target.is_relative_to(features):
        return None
    return (
        f"resolves through a symbolic link to {target}, outside the store's features folder "
        f"{features}"
    )


def reject_outside_links(paths: Sequence[Path], tables: Sequence[str]) -> None:
    """Raise TableUnavailable for the first data file in `paths` that a symbolic link leads
    outside the features folder (see `link_problem`), and log its path and target at ERROR,
    once for each path and target."""
    for path, table in zip(paths, tables, strict=True):
        problem = link_problem(path)
        if problem is None:
            if _logged_links:
                _logged_links.pop(path, None)
            continue
        if _logged_links.get(path) != problem:
            _logged_links[path] = problem
            logger.error(
                "the data file %s of %s %s, so its reads fail with 503 until the link is "
                "removed or the table is written again",
                path,
                table,
                problem,
            )
        raise TableUnavailable.of_table(table)


# The link problem last logged for each data file, so that repeated reads log it once.
_logged_links: dict[Path, str] = {}


def _is_parquet_file(path: Path) -> bool:
    try:
        # A FIFO in the file's place would block a plain open, and a device never ends.
        with open_regular(path) as file:
            head = file.read(len(PARQUET_MAGIC))
            file.seek(-len(PARQUET_MAGIC), os.SEEK_END)
            tail = file.read()
    except OSError:
        return False
    return head == PARQUET_MAGIC and tail == PARQUET_MAGIC


def _signatures(paths: Sequence[Path]) -> list[Signature | None]:
    return [file_signature(path) for path in paths]
