"""The registry: one JSON file per feature table under `registry/<group>/<name>.json`."""

from __future__ import annotations

import fcntl
import logging
import os
import stat
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import BinaryIO

import pyarrow as pa
import pyarrow.parquet as pq
from pydantic import BaseModel, Field, ValidationError

from sqlstore.atomic import write_bytes_atomically
from sqlstore.errors import InvalidIdentifier, NotFound, RegistryEntryDamaged
from sqlstore.filestamps import ReplacedFileReader
from sqlstore.identifiers import validate_group, validate_table_name
from sqlstore.layout import ENTRY_METADATA_KEY, FEATURES_FOLDER, StoreLayout
from sqlstore.stablefiles import link_problem

logger = logging.getLogger(__name__)

# The largest version an entry may have, the maximum of DuckDB's BIGINT. Every write adds one,
# so no store reaches it.
MAX_VERSION = 2**63 - 1


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
        default=None,
        ge=0,
        allow_inf_nan=False,
        description="Values older than this at lookup time are treated as missing",
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
    version: int = Field(
        default=0, ge=0, le=MAX_VERSION, description="Increases by one on every write"
    )
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
# Fields that describe a table's data file. A write records the entry in the file's footer
# too, so an entry and the footer of the same write agree on each of them and on `columns`.
FILE_FIELDS = (
    "entity_key",
    "timestamp_column",
    "created_timestamp_column",
    "sorted_by",
    "unique_keys",
    "row_count",
)


@dataclass(frozen=True)
class LoadedEntry:
    """An entry parsed from the bytes `text` of its file, with its write stamp. `checked` is
    True when the entry was compared with the footer of the same write and agreed, so that
    the same bytes need no comparison again (see `Registry._footer_problem`)."""

    text: bytes
    entry: RegistryEntry
    stamp: str
    checked: bool


class Registry:
    """Reads and writes registry entries. Callers hold the table's lock around a write."""

    def __init__(self, layout: StoreLayout) -> None:
        self.layout = layout
        # The bytes of each entry file, read again only when the file's stat changes.
        # An entry file that is a symbolic link is damaged, wherever it points, because the
        # entry names the data file that reads use.
        self._texts = ReplacedFileReader(_read_entry_text, follow_links=False)
        # The entry parsed from each entry file's bytes, by path.
        self._loaded: dict[str, LoadedEntry] = {}
        # The entry in the footer of each data file, read again only when its stat changes.
        self._footers = ReplacedFileReader(_read_footer_entry)
        self._version_path = str(layout.registry_dir / VERSION_FILE)
        # The last listing and the registry version it was made at.
        self._listing: tuple[bytes | None, list[RegistryEntry]] = (None, [])
        # Why the version file was last found unusable, by "read" and "write", so that each
        # cause is logged once.
        self._version_problems: dict[str, str] = {}
        # Entry files that are damaged, or missing beside a data file, by path: the table's
        # reference and the problem, which is logged once.
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
        """Return the entry of one table, or None when it is not registered.

        Raise RegistryEntryDamaged when its entry file is missing beside a data file that no
        write is creating (see `_missing_entry_problem`), or when it is damaged. A damaged
        entry file is not a regular file, is larger than MAX_ENTRY_BYTES, or is not JSON of a
        valid entry. Or it is an entry of another table or data file (`check_location`), or one
        that disagrees with the footer of the same write (`_footer_problem`).
        """
        loaded = self._load_table(group, name)
        return None if loaded is None else loaded.entry

    def is_being_written(self, group: str, name: str) -> bool:
        """Return True while a writer holds the table's lock, between which its data file and
        its entry may disagree for a moment."""
        return _is_locked(self.layout.lock_path(group, name))

    def damaged_tables(self) -> list[str]:
        """Return the tables whose entry file the last listing or lookup found damaged, or
        missing beside a data file. `list()` leaves them out."""
        return sorted(reference for reference, _ in list(self._damaged.values()))

    def write_stamp(self, group: str, name: str) -> str:
        """Return a string that changes with every write of a table, or raise NotFound, or
        RegistryEntryDamaged as `find` does.

        It is the version and the time of the write, because a table deleted and written again
        restarts at version 1. It is read on every request to key the result cache, so an
        unchanged entry costs one stat call (see `sqlstore.filestamps` and `_load`).
        """
        loaded = self._load_table(group, name)
        if loaded is None:
            raise NotFound(
                f"feature table {group}/{name} not found; GET /features lists the tables"
            )
        return loaded.stamp

    def _load_table(self, group: str, name: str) -> LoadedEntry | None:
        """Return the loaded entry of one table, or None when it is not registered, and keep
        `damaged_tables` up to date."""
        path = str(self.layout.registry_path(group, name))
        reference = f"{group}/{name}"
        try:
            loaded = self._load(path, group, name)
        except FileNotFoundError:
            problem = self._missing_entry_problem(group, name)
            if problem is None:
                self._damaged.pop(path, None)
                return None
            self._report_damaged(path, reference, ValueError(problem))
            raise RegistryEntryDamaged.of_table(reference) from None
        except (OSError, ValueError) as error:
            self._report_damaged(path, reference, error)
            raise RegistryEntryDamaged.of_table(reference) from error
        if self._damaged:
            self._damaged.pop(path, None)
        return loaded

    def _load(self, path: str, group: str, name: str) -> LoadedEntry:
        """Read and parse the entry file at `path` of table `group/name`, and compare it with
        its data file. Raise FileNotFoundError without the file, and OSError or ValueError for
        a damaged one.

        `find` lists the kinds of damage.

        The bytes are read again only when the file's stat changes, and an entry checked
        against its footer is kept with its bytes. So a lookup of an unchanged entry costs one
        stat, and a footer is read only when the entry's bytes change, or at each lookup while
        the footer is missing, damaged, or of another write (see `_footer_problem`).
        """
        text = self._texts.read(path)
        known = self._loaded.get(path)
        if known is not None and known.text == text and known.checked:
            return known

        if known is not None and known.text == text:
            entry = known.entry
        else:
            entry = _entry_at(text, group, name)
        checked, problem = self._footer_problem(entry)
        if problem is not None:
            raise ValueError(problem)
        stamp = f"{entry.version}@{entry.updated_at.isoformat()}"
        loaded = LoadedEntry(text=text, entry=entry, stamp=stamp, checked=checked)
        self._loaded[path] = loaded
        return loaded

    def _footer_problem(self, entry: RegistryEntry) -> tuple[bool, str | None]:
        """Compare `entry` with the entry in its data file's footer. Return whether they were
        compared, and how they disagree, or None.

        They are compared when the footer is of the same table and of the same version, and
        then `disagreement` describes how they differ. A footer of another version but the same
        time of the write, `updated_at`, which every write sets anew, means that the entry's
        version was edited. A footer with another version and time is of another write: a later
        one that has renamed its data file but not yet replaced the entry, or an earlier one
        copied back by hand. Those are data file problems, which the reads and `GET /health`
        report (`sqlstore.stablefiles.file_problem`). So are a missing or damaged file, one
        without a sqlstore footer, and one reached through a symbolic link outside the features
        folder, which is not read here.

        NOTE: a file of an earlier table of the same name and version, copied back after the
        table was deleted and written again, makes an entry with other columns count as
        damaged. `recover()` then rebuilds the entry from that file.
        """
        path = self.layout.root / entry.path
        if link_problem(path) is not None:
            return False, None
        try:
            footer = self._footers.read(path)
        except (OSError, ValueError, pa.ArrowException):
            return False, None
        if footer is None or (footer.group, footer.name) != (entry.group, entry.name):
            return False, None
        if footer.version == entry.version:
            return True, disagreement(entry, footer)
        if footer.updated_at == entry.updated_at:
            return True, (
                f"it lists version {entry.version}, and the data file's footer, written at the "
                f"same time, records version {footer.version}"
            )
        return False, None

    def _missing_entry_problem(self, group: str, name: str) -> str | None:
        """Return why a table without an entry file is damaged: its data file has a footer of the
        table, from which `recover()` or a write rebuilds the entry, and no write holds the
        table's lock to create the entry.

        Return None for a table that does not exist, and for a data file that `recover()` would
        not register: one without a footer of the table, or behind a symbolic link outside the
        features folder. Return None too for a first write between renaming its data file and
        writing its entry, and while the whole registry folder is missing, which `GET /health`
        reports as a failure. A process that holds the table's lock itself, such as a write or
        `recover()`, gets None as well, so that it can rebuild the entry.
        """
        data_file = self.layout.table_path(group, name)
        if not os.path.lexists(data_file) or not os.path.isdir(self.layout.registry_dir):
            return None
        if link_problem(data_file) is not None:
            return None
        try:
            footer = self._footers.read(data_file)
            if footer is None:
                return None
            check_location(footer, group, name)
        except (OSError, ValueError, pa.ArrowException):
            return None
        if self.is_being_written(group, name):
            return None
        if os.path.lexists(self.layout.registry_path(group, name)):
            # A write created the entry after the first look.
            return None
        relative = self.layout.relative(data_file)
        return f"the entry file is missing, and the data file {relative} exists"

    def put(self, entry: RegistryEntry) -> None:
        """Write one entry atomically."""
        path = self.layout.registry_path(entry.group, entry.name)
        write_bytes_atomically(path, entry.model_dump_json(indent=2).encode())
        self._new_version()

    def remove(self, group: str, name: str) -> None:
        """Delete one entry; a missing entry is not an error."""
        path = self.layout.registry_path(group, name)
        path.unlink(missing_ok=True)
        self._new_version()
        self._texts.forget(str(path))
        self._loaded.pop(str(path), None)
        self._footers.forget(self.layout.table_path(group, name))

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
        finds entry files changed, damaged or removed outside sqlstore, which leave the token as
        it was. Damaged files are logged once and skipped (see `damaged_tables`)."""
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
        """Read every entry file, and find the data files without one. A file is parsed again
        only when its bytes changed (see `_load`), so listing costs a stat per table and a
        listing of each group's data files."""
        entries = []
        damaged: set[str] = set()
        paths = self._entry_files()
        for path in paths:
            group, file_name = path.split(os.sep)[-2:]
            name = file_name.removesuffix(".json")
            try:
                entries.append(self._load(path, group, name).entry)
            except (OSError, ValueError) as error:
                # pydantic's ValidationError is a ValueError.
                self._report_damaged(path, f"{group}/{name}", error)
                damaged.add(path)

        listed = set(paths)
        registry_dir = str(self.layout.registry_dir)
        for group, name in self._data_file_tables():
            path = os.path.join(registry_dir, group, f"{name}.json")
            if path in listed or not _is_valid_table(group, name):
                continue
            problem = self._missing_entry_problem(group, name)
            if problem is not None:
                self._report_damaged(path, f"{group}/{name}", ValueError(problem))
                damaged.add(path)

        for path in list(self._damaged):
            if path not in damaged:
                del self._damaged[path]
        for path in list(self._loaded):
            if path not in listed:
                del self._loaded[path]
        return entries

    def _report_damaged(self, path: str, reference: str, error: Exception) -> None:
        """Remember that the entry file at `path` cannot be read, and log the cause the first
        time it is found."""
        problem = _first_line(error)
        if self._damaged.get(path) == (reference, problem):
            return
        self._damaged[path] = (reference, problem)
        logger.error(
            "registry entry file %s of %s cannot be used (%s), so the table is left out of "
            "listings and its reads answer 503; a restart rebuilds the entry from the data "
            "file's footer when that is intact, or write the table again",
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

    def _data_file_tables(self) -> list[tuple[str, str]]:
        """Return (group, name) of each `features/<group>/<name>.parquet`. The names are not
        validated here."""
        try:
            with os.scandir(self.layout.features_dir) as entries:
                groups = [(entry.name, entry.path) for entry in entries if entry.is_dir()]
        except OSError:
            # The reads of each table report a features folder that cannot be listed.
            return []
        tables = []
        for group, folder in groups:
            try:
                with os.scandir(folder) as files:
                    names = [
                        file.name[: -len(".parquet")]
                        for file in files
                        if file.name.endswith(".parquet")
                    ]
            except OSError:
                continue
            tables += [(group, name) for name in names]
        return tables


def _is_locked(path: Path) -> bool:
    """Return True when a process holds the `filelock` lock file `path`, which locks with
    `flock` on Unix. Unlike `filelock.FileLock`, this creates neither the file nor its folder,
    and it does not block. A shared lock probes for the writer's exclusive one, and a writer
    that tries to lock during the probe waits for its next poll (filelock 4.3 polls every
    0.05 s).

    NOTE: a lock file that cannot be opened or locked counts as free, so on a file system
    without `flock` a first write between renaming its data file and writing its entry is
    reported as a missing entry.
    """
    try:
        descriptor = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError:
        # A writer creates the lock file before it locks it, so without the file there is no
        # writer.
        return False
    try:
        fcntl.flock(descriptor, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    except OSError:
        return False
    finally:
        # Closing the descriptor releases the shared lock.
        os.close(descriptor)
    return False


def _is_valid_table(group: str, name: str) -> bool:
    """Return True when `group` and `name` are valid identifiers. Files in the features folder
    with other names are not sqlstore's, and `recover()` logs them."""
    try:
        validate_group(group)
        validate_table_name(name)
    except InvalidIdentifier:
        return False
    return True


def _read_entry_text(file: BinaryIO) -> bytes:
    """Return the bytes of an entry file, or raise ValueError for a file larger than any
    entry. `ReplacedFileReader` opens the file and rejects a FIFO or a device, which would
    block or never end."""
    text = file.read(MAX_ENTRY_BYTES + 1)
    if len(text) > MAX_ENTRY_BYTES:
        raise ValueError(f"the file is larger than {MAX_ENTRY_BYTES:,} bytes")
    return text


def _read_footer_entry(file: BinaryIO) -> RegistryEntry | None:
    """Return the entry in the footer of a data file, or None for a Parquet file without
    one. Raise pyarrow's errors for a file that is not Parquet, and ValueError for a footer
    entry that is not valid."""
    text = (pq.read_schema(file).metadata or {}).get(ENTRY_METADATA_KEY)
    if text is None:
        return None
    return RegistryEntry.model_validate_json(text)


def disagreement(entry: RegistryEntry, footer: RegistryEntry) -> str | None:
    """Return how `entry` disagrees with `footer`, the entry in the footer of the data file
    that the same write wrote, or None when they agree on the columns, their types and
    FILE_FIELDS. Documentation fields, `ttl_seconds` and the storage figures may differ."""
    listed = {column.name: column.type for column in entry.columns}
    if len(listed) != len(entry.columns):
        return "it lists a column twice"
    stored = {column.name: column.type for column in footer.columns}
    for name, arrow_type in listed.items():
        if name not in stored:
            return f"it lists column {name!r}, which the data file lacks"
        if arrow_type != stored[name]:
            return (
                f"it lists column {name!r} as {arrow_type}, and the data file stores {stored[name]}"
            )
    for name in stored:
        if name not in listed:
            return f"it lacks column {name!r} of the data file"
    for field in FILE_FIELDS:
        listed_value, stored_value = getattr(entry, field), getattr(footer, field)
        if listed_value != stored_value:
            return (
                f"its {field} is {listed_value!r}, and the data file's footer records "
                f"{stored_value!r}"
            )
    return None


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
