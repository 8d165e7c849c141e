"""The registry: one JSON file per feature table under `registry/<group>/<name>.json`."""

from __future__ import annotations

import logging
import os
import stat
from datetime import datetime
from pathlib import Path
from typing import BinaryIO

import orjson
from pydantic import BaseModel, Field, ValidationError

from sqlstore.atomic import write_bytes_atomically
from sqlstore.errors import InvalidIdentifier, NotFound, RegistryEntryDamaged
from sqlstore.filestamps import ReplacedFileReader, open_regular
from sqlstore.identifiers import validate_group, validate_table_name
from sqlstore.layout import FEATURES_FOLDER, StoreLayout

logger = logging.getLogger(__name__)


class ColumnInfo(BaseModel):
    """One column of a feature table."""

    name: str
    type: str = Field(description="Arrow type of the stored column, e.g. int32, double, string")
    description: str = ""


class StorageStats(BaseModel):
    """Size figures of a table's Parquet file, measured when it was written."""

    bytes_on_disk: int
    arrow_bytes: int = Field(description="Size of the table in memory as uncompressed Arrow")
    csv_bytes: int = Field(
        description="Size of the table written as CSV with a header; estimated from 100,000 "
        "evenly spaced rows for larger tables"
    )
    compression: str


class RegistryEntry(BaseModel):
    """Definition and state of one feature table."""

    group: str
    name: str
    entity_key: list[str] = Field(default_factory=list)
    timestamp_column: str | None = None
    created_timestamp_column: str | None = None
    ttl_seconds: float | None = Field(
        default=None, description="Values older than this at lookup time are treated as missing"
    )
    description: str = ""
    owner: str = ""
    tags: list[str] = Field(default_factory=list)
    columns: list[ColumnInfo] = Field(default_factory=list)
    row_count: int = 0
    unique_keys: bool | None = Field(
        default=None,
        description="True when no two rows share the key and event timestamp (the key alone for "
        "static tables), so joins can skip ranking ties; None when unknown",
    )
    sorted_by: list[str] = Field(
        default_factory=list,
        description="Columns the file's rows are stably sorted by, ascending, so rows with equal "
        "values keep their write order; empty when the rows are in write order",
    )
    version: int = Field(default=0, description="Increases by one on every write")
    created_at: datetime
    updated_at: datetime
    path: str = Field(description="Parquet file, relative to the store root")
    storage: StorageStats

    @property
    def reference(self) -> str:
        return f"{self.group}/{self.name}"

    def column(self, name: str) -> ColumnInfo | None:
        """Return the column called `name`, or None."""
        for column in self.columns:
            if column.name == name:
                return column
        return None


def _parse_write_stamp(file: BinaryIO) -> str:
    fields = orjson.loads(file.read())
    return f"{fields['version']}@{fields['updated_at']}"


# Entry files are a few KiB; a larger file is not one that sqlstore wrote.
MAX_ENTRY_BYTES = 16 * 1024 * 1024
# A random token in the registry folder that every change of an entry replaces.
VERSION_FILE = ".version"
# Maximum bytes read from the version file, whose token is 32 bytes. A longer file is not a
# token that this release wrote.
VERSION_READ_BYTES = 4096
# Flags of every open of the version file. Without O_NONBLOCK, a FIFO in its place would block
# the opening thread, the server's event loop included. O_NOFOLLOW keeps a write from going
# through a symbolic link to another file.
VERSION_OPEN_FLAGS = os.O_NONBLOCK | os.O_NOFOLLOW
# The reader's fallback without a usable version file, for the log.
READ_FALLBACK = "the registry folder is listed on every read until the file contains a token again"


class Registry:
    """Reads and writes registry entries. Callers hold the table's lock around a write."""

    def __init__(self, layout: StoreLayout) -> None:
        self.layout = layout
        self._parsed: dict[str, tuple[tuple[int, int, int], RegistryEntry]] = {}
        self._stamps = ReplacedFileReader(_parse_write_stamp)
        self._version_path = str(layout.registry_dir / VERSION_FILE)
        # The last listing and the registry version it was made at.
        self._listing: tuple[bytes | None, list[RegistryEntry]] = (None, [])
        # Why the version file was last found unusable, by "read" and "write", so that each
        # cause is logged once.
        self._version_problems: dict[str, str] = {}
        # Entry files that could not be read as entries, by path: the table's reference and the
        # problem, which is logged once.
        self._damaged: dict[str, tuple[str, str]] = {}

    def get(self, group: str, name: str) -> RegistryEntry:
        """Return the entry of one table, or raise NotFound."""
        entry = self.find(group, name)
        if entry is None:
            raise NotFound(
                f"feature table {group}/{name} not found; GET /features lists the tables"
            )
        return entry

    def find(self, group: str, name: str) -> RegistryEntry | None:
        """Return the entry of one table, or None when it is not registered. Raise
        RegistryEntryDamaged when its entry file cannot be read as an entry."""
        path = self.layout.registry_path(group, name)
        reference = f"{group}/{name}"
        try:
            entry = _entry_at(_read_entry_file(path), group, name)
        except FileNotFoundError:
            self._damaged.pop(str(path), None)
            return None
        except (OSError, ValueError) as error:
            self._report_damaged(str(path), reference, error)
            raise RegistryEntryDamaged.of_table(reference) from error
        self._damaged.pop(str(path), None)
        return entry

    def damaged_tables(self) -> list[str]:
        """Return the tables whose entry file the last listing or lookup could not read as an
        entry. `list()` leaves them out."""
        return sorted(reference for reference, _ in self._damaged.values())

    def write_stamp(self, group: str, name: str) -> str:
        """Return a string that changes with every write of a table, or raise NotFound.

        It is the version and the time of the write, because a table deleted and written again
        restarts at version 1. It is read on every request to key the result cache, so an
        unchanged entry costs one stat call (see `sqlstore.filestamps`).
        """
        path = self.layout.registry_path(group, name)
        try:
            return self._stamps.read(path)
        except FileNotFoundError as error:
            raise NotFound(
                f"feature table {group}/{name} not found; GET /features lists the tables"
            ) from error
        except (OSError, ValueError, KeyError, TypeError) as error:
            # orjson's JSONDecodeError is a ValueError.
            self._report_damaged(str(path), f"{group}/{name}", error)
            raise RegistryEntryDamaged.of_table(f"{group}/{name}") from error

    def put(self, entry: RegistryEntry) -> None:
        """Write one entry atomically."""
        path = self.layout.registry_path(entry.group, entry.name)
        write_bytes_atomically(path, entry.model_dump_json(indent=2).encode())
        self._new_version()

    def remove(self, group: str, name: str) -> None:
        """Delete one entry; a missing entry is not an error."""
        self.layout.registry_path(group, name).unlink(missing_ok=True)
        self._new_version()

    def _new_version(self) -> None:
        """Give the registry a new version, after an entry changed.

        The token is written in place, not through a temporary file and a rename, so a killed
        writer leaves no file behind. A reader that meets the file empty or half written reads
        a value unlike any token and lists the folder, which is correct at any moment after
        the entry changed.
        NOTE: a process that crashes between changing an entry and this write leaves other
        processes listing the registry as it was, until the next write or their restart.
        """
        flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | VERSION_OPEN_FLAGS
        try:
            descriptor = os.open(self._version_path, flags, 0o644)
        except OSError as error:
            self._remove_unwritable_version(error)
            return
        try:
            os.write(descriptor, os.urandom(16).hex().encode())
        except OSError as error:
            self._remove_unwritable_version(error)
            return
        finally:
            os.close(descriptor)
        self._version_problems.pop("write", None)

    def _remove_unwritable_version(self, error: OSError) -> None:
        """Remove a version file that could not be written, so that no reader keeps a listing
        from before this change. Readers already ignore a path that is not a regular file, so
        such a path is left alone. Raise `error` when a regular file cannot be removed."""
        try:
            status = os.lstat(self._version_path)
        except FileNotFoundError:
            status = None
        if status is None or not stat.S_ISREG(status.st_mode):
            self._report_unusable_version(
                "write",
                f"could not be written: {error}; every listing reads the registry folder until "
                "it is a regular file again",
                logging.ERROR,
            )
            return
        logger.error(
            "could not write the registry version file %s: %s; removing it, so that every "
            "listing reads the registry folder",
            self._version_path,
            error,
        )
        try:
            os.unlink(self._version_path)
        except FileNotFoundError:
            return
        except OSError:
            raise error from None

    def list_files(self) -> list[RegistryEntry]:
        """Return every entry, sorted by group and name, read from the folder whatever the
        version token contains: a stat per table, and a parse of each file that changed. It also
        finds entry files changed or damaged outside sqlstore, which leave the token as it was.
        Unreadable files are logged once and skipped (see `damaged_tables`)."""
        return list(self._list_files())

    def list(self) -> list[RegistryEntry]:
        """Return every entry, sorted by group and name. Unreadable files are logged and skipped.

        Every write gives the registry a new version, in the file `.version`, and an unchanged
        version returns the previous listing: one small read. A store without that file, not
        yet written by this release, is listed in full each time. Callers must not modify the
        entries.
        """
        version = self._read_version()
        listed_version, entries = self._listing
        if version is not None and version == listed_version:
            return list(entries)
        entries = self._list_files()
        self._listing = (version, entries)
        return list(entries)

    def version(self) -> bytes | None:
        """Return the registry's current version token, which every write replaces, or None when
        there is no usable token. Read it before the listing it is to describe, so that a write
        in between leaves a token that no later read matches."""
        return self._read_version()

    def version_problem(self) -> str | None:
        """Return why the version file is unusable, or None when it contains a token or does
        not exist (a store not yet written by this release). Listing still works while it is
        unusable, but reads the whole folder every time."""
        token = self._read_version()
        problem = self._version_problems.get("read")
        if problem is not None:
            return f"registry version file {self._version_path} is unusable: {problem}"
        if token is None and os.path.lexists(self._version_path):
            # NOTE: a write truncates the file before writing its token, so a check at that
            # instant also finds it empty.
            return f"registry version file {self._version_path} is empty; {READ_FALLBACK}"
        return None

    def _read_version(self) -> bytes | None:
        """Return the version token, or None when there is none to trust and the caller must
        list the folder.

        It returns None without a file, for an empty one (a writer between truncating and
        writing it, or killed there), for a file longer than any token, and for a path that is
        not a regular file.

        It reads with `os.read`, which costs half as much as a buffered `open`, because the SQL
        endpoint lists the registry on every request.
        """
        try:
            descriptor = os.open(self._version_path, os.O_RDONLY | VERSION_OPEN_FLAGS)
        except FileNotFoundError:
            self._version_problems.pop("read", None)
            return None
        except OSError as error:
            self._report_unusable_version("read", f"{error}; {READ_FALLBACK}")
            return None
        try:
            if not stat.S_ISREG(os.fstat(descriptor).st_mode):
                self._report_unusable_version("read", f"not a regular file; {READ_FALLBACK}")
                return None
            token = os.read(descriptor, VERSION_READ_BYTES)
        except OSError as error:
            self._report_unusable_version("read", f"{error}; {READ_FALLBACK}")
            return None
        finally:
            os.close(descriptor)
        if len(token) >= VERSION_READ_BYTES:
            self._report_unusable_version(
                "read", f"longer than {VERSION_READ_BYTES} bytes; {READ_FALLBACK}"
            )
            return None
        self._version_problems.pop("read", None)
        return token or None

    def _report_unusable_version(
        self, operation: str, problem: str, level: int = logging.WARNING
    ) -> None:
        """Log why the version file cannot be used for `operation` ("read" or "write"), once
        for each new cause."""
        if self._version_problems.get(operation) != problem:
            self._version_problems[operation] = problem
            logger.log(
                level, "registry version file %s is unusable: %s", self._version_path, problem
            )

    def _list_files(self) -> list[RegistryEntry]:
        """Read every entry file. A file is parsed again only when its inode, size or
        modification time changed since the last call, so listing costs a stat per table."""
        entries = []
        parsed: dict[str, tuple[tuple[int, int, int], RegistryEntry]] = {}
        damaged: set[str] = set()
        for path in self._entry_files():
            group, file_name = path.split(os.sep)[-2:]
            name = file_name.removesuffix(".json")
            try:
                status = os.stat(path)
                stamp = (status.st_ino, status.st_size, status.st_mtime_ns)
                known = self._parsed.get(path)
                if known is not None and known[0] == stamp:
                    entry = known[1]
                else:
                    entry = _entry_at(_read_entry_file(path), group, name)
            except (OSError, ValueError) as error:
                # pydantic's ValidationError is a ValueError.
                self._report_damaged(path, f"{group}/{name}", error)
                damaged.add(path)
                continue
            parsed[path] = (stamp, entry)
            entries.append(entry)
        self._parsed = parsed
        for path in list(self._damaged):
            if path not in damaged:
                del self._damaged[path]
        return entries

    def _report_damaged(self, path: str, reference: str, error: Exception) -> None:
        """Remember that the entry file at `path` cannot be read, and log the cause the first
        time it is found."""
        problem = _first_line(error)
        if self._damaged.get(path) == (reference, problem):
            return
        self._damaged[path] = (reference, problem)
        logger.error(
            "registry entry file %s of %s cannot be read as an entry, so the table is left out "
            "of listings and its reads answer 503; a restart rebuilds the entry from the data "
            "file's footer when that is intact, or write the table again: %s",
            path,
            reference,
            problem,
        )

    def _entry_files(self) -> list[str]:
        """Return the paths of the registry's `group/name.json` files, sorted by group and name.

        The SQL endpoint lists the registry on every request, so this works on strings: with
        `Path.glob` and `Path` objects, listing six tables took 0.1 ms.
        """
        try:
            groups = sorted(
                (entry.name, entry.path)
                for entry in os.scandir(self.layout.registry_dir)
                if entry.is_dir()
            )
        except FileNotFoundError:
            return []
        files = []
        for _, folder in groups:
            with os.scandir(folder) as names:
                files += sorted(name.path for name in names if name.name.endswith(".json"))
        return files


def _read_entry_file(path: Path | str) -> bytes:
    """Return the bytes of an entry file. Raise NotRegularFile for a FIFO or a device, which
    would block or never end, and ValueError for a file larger than any entry."""
    with open_regular(path) as file:
        text = file.read(MAX_ENTRY_BYTES + 1)
    if len(text) > MAX_ENTRY_BYTES:
        raise ValueError(f"the file is larger than {MAX_ENTRY_BYTES:,} bytes")
    return text


def _entry_at(text: bytes, group: str, name: str) -> RegistryEntry:
    """Parse the entry file of table `group/name`; raise ValueError as `check_location`
    does."""
    entry = RegistryEntry.model_validate_json(text)
    check_location(entry, group, name)
    return entry


def check_location(entry: RegistryEntry, group: str, name: str) -> None:
    """Raise ValueError when `entry` is not an entry of table `group/name`, or names another
    data file than the table's. An entry edited or copied by hand must not make the server read
    a file outside the features folder."""
    if (entry.group, entry.name) != (group, name):
        raise ValueError(f"the entry is of table {entry.group!r}/{entry.name!r}")
    expected = f"{FEATURES_FOLDER}/{group}/{name}.parquet"
    if entry.path != expected:
        raise ValueError(f"its path is {entry.path!r}, not {expected!r}")
    try:
        validate_group(group)
        validate_table_name(name)
    except InvalidIdentifier as error:
        raise ValueError(error.message) from error


def _first_line(error: Exception) -> str:
    """Return a one-line description of why an entry file could not be read."""
    if isinstance(error, OSError) and error.strerror:
        return error.strerror
    if isinstance(error, ValidationError) and error.errors():
        first = error.errors()[0]
        location = ".".join(str(part) for part in first["loc"])
        return f"{location}: {first['msg']}" if location else first["msg"]
    return str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
