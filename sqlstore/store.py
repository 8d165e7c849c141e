"""FeatureStore: writes feature tables to Parquet, keeps the registry and the DuckDB views."""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import filelock
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pa_csv
import pyarrow.parquet as pq

from sqlstore.atomic import replace_atomically, storage_error
from sqlstore.catalog import Catalog
from sqlstore.errors import (
    Conflict,
    InvalidIdentifier,
    InvalidInput,
    NotFound,
    RegistryEntryDamaged,
    StorageError,
    TableBusy,
    TableUnavailable,
)
from sqlstore.identifiers import validate_column, validate_group, validate_table_name
from sqlstore.layout import ENTRY_METADATA_KEY, TEMPORARY_SUFFIX, StoreLayout, resolve_root
from sqlstore.ordering import sort_columns, sort_table
from sqlstore.records import MAX_LIST_DEPTH, normalize_timestamp_column
from sqlstore.registry import ColumnInfo, Registry, RegistryEntry, StorageStats, check_location
from sqlstore.stablefiles import file_problem, raise_if_damaged
from sqlstore.types import describe_type, optimize_table, type_family, widen_for_append

logger = logging.getLogger(__name__)

COMPRESSIONS = ("snappy", "zstd")
WRITE_MODES = ("overwrite", "append")
DEFAULT_ENTITY_KEY = "entity_id"
DEFAULT_TIMESTAMP_COLUMN = "event_timestamp"
KEY_FAMILIES = ("integer", "string", "date")
MAX_COLUMNS = 1000
# Up to this many rows the CSV size in the storage figures is exact; beyond, it is estimated.
CSV_EXACT_ROWS = 100_000
# Days from 1970-01-01 to 0001-01-01 and to 9999-12-31: the range of Python's datetime.
FIRST_SUPPORTED_DAY = -719162
LAST_SUPPORTED_DAY = 2932896
SECONDS_PER_DAY = 86_400
UNITS_PER_SECOND = {"s": 1, "ms": 1_000, "us": 1_000_000, "ns": 1_000_000_000}
# The lookup reads Parquet with DuckDB's file_row_number option, which adds this column.
RESERVED_COLUMNS = frozenset({"file_row_number"})


@dataclass(frozen=True)
class TableDefinition:
    """Table metadata a write may declare besides its data; None keeps the stored value."""

    entity_key: list[str] | None = None
    timestamp_column: str | None = None
    created_timestamp_column: str | None = None
    ttl_seconds: float | None = None
    description: str | None = None
    owner: str | None = None
    tags: list[str] | None = None
    column_descriptions: dict[str, str] | None = None


@dataclass(frozen=True)
class WriteResult:
    """Outcome of one write."""

    entry: RegistryEntry
    rows_written: int


class FeatureStore:
    """One store root: Parquet files, the registry and a DuckDB catalog over them."""

    def __init__(
        self,
        root: str | os.PathLike[str] | None = None,
        *,
        lock_timeout_seconds: float = 60.0,
        duckdb_threads: int | None = None,
        max_columns: int = MAX_COLUMNS,
    ) -> None:
        self.layout = StoreLayout(resolve_root(root))
        self.layout.create()
        self.registry = Registry(self.layout)
        self.catalog = Catalog(self.layout, threads=duckdb_threads)
        self.lock_timeout_seconds = lock_timeout_seconds
        self.max_columns = max_columns
        self._schemas: dict[tuple[str, str, int, datetime], pa.Schema] = {}

    @property
    def root(self) -> Path:
        return self.layout.root

    # Reading the registry

    def list_tables(self) -> list[RegistryEntry]:
        """Return every registered table, with the DuckDB views brought up to date."""
        entries = self.registry.list()
        self.catalog.sync(entries)
        return entries

    def table(self, group: str, name: str) -> RegistryEntry:
        """Return one table's entry and make sure its view reads the current version."""
        validate_group(group)
        validate_table_name(name)
        entry = self.registry.get(group, name)
        self.catalog.ensure_view(entry)
        return entry

    def arrow_schema(self, entry: RegistryEntry) -> pa.Schema:
        """Return the Arrow schema of the file behind `entry`, cached per table version.

        A schema that lacks a registered column is returned but not cached: it is of a file
        replaced outside sqlstore, and the table's own file may be restored under the same
        version.
        """
        # updated_at as well as version: a table deleted and written again restarts at version 1.
        key = (entry.group, entry.name, entry.version, entry.updated_at)
        schema = self._schemas.get(key)
        if schema is None:
            path = self.root / entry.path
            try:
                schema = pq.read_schema(path)
            except (OSError, pa.ArrowException) as error:
                raise_if_damaged([path], [entry.reference], error)
                raise
            if {column.name for column in entry.columns} <= set(schema.names):
                self._schemas = {k: v for k, v in self._schemas.items() if k[:2] != key[:2]}
                self._schemas[key] = schema
        return schema

    # Point-in-time reads

    def get_historical_features(
        self,
        entities: pd.DataFrame | pa.Table | str | os.PathLike[str] | None = None,
        features: Sequence[str] = (),
        *,
        entity_sql: str | None = None,
        timestamp_column: str = "event_timestamp",
        full_feature_names: bool = False,
        inclusive: bool = True,
        ttl_seconds: dict[str, float | None] | None = None,
        created_before_event: bool = False,
        join_method: str = "auto",
    ) -> pa.Table:
        """Join `features` to each row of `entities` as known at that row's timestamp.

        See `sqlstore.pointintime` for the rules and the join methods. Returns Arrow; call
        `.to_pandas()` for pandas.
        """
        from sqlstore.pointintime import JoinOptions, get_historical_features

        options = JoinOptions(
            timestamp_column=timestamp_column,
            full_feature_names=full_feature_names,
            inclusive=inclusive,
            ttl_seconds=dict(ttl_seconds or {}),
            created_before_event=created_before_event,
            join_method=join_method,
        )
        return get_historical_features(self, entities, features, options, entity_sql=entity_sql)

    def get_online_features(
        self, features: Sequence[str], entity_ids: Sequence[Any], as_of: datetime | None = None
    ) -> dict[str, pa.Table]:
        """Return the latest row per entity of each referenced table, as of `as_of` (now)."""
        from sqlstore.lookup import lookup_entities
        from sqlstore.references import resolve_reference

        entries = self.list_tables()
        results = {}
        for text in features:
            reference = resolve_reference(text, entries, self.registry.damaged_tables())
            results[text] = lookup_entities(self, reference, entity_ids, as_of).table
        return results

    # Writing

    def write(
        self,
        group: str,
        name: str,
        data: pa.Table,
        *,
        mode: str = "overwrite",
        definition: TableDefinition | None = None,
        compression: str = "snappy",
    ) -> WriteResult:
        """Write `data` as the new version of a table, replacing it or appending to it.

        The file is replaced atomically under the table's lock, and then the registry entry is
        updated. Concurrent writers to one table are serialised; other tables are not blocked.
        """
        validate_group(group)
        validate_table_name(name)
        _validate_options(mode, compression)
        definition = definition or TableDefinition()
        if data.num_rows == 0:
            raise InvalidInput("no rows to write: send at least one record")

        with self._table_lock(group, name):
            existing = self._existing_entry(group, name, mode)
            entry = self._write_locked(group, name, data, mode, definition, compression, existing)

        self.catalog.ensure_view(entry)
        logger.info(
            "wrote %s/%s version %d: %d rows (%s), %d rows in total",
            group,
            name,
            entry.version,
            data.num_rows,
            mode,
            entry.row_count,
        )
        return WriteResult(entry=entry, rows_written=data.num_rows)

    def delete(self, group: str, name: str) -> None:
        """Remove a table's file and registry entry. A table whose entry file is damaged, or
        missing beside a data file with a footer of the table, is deleted too. Raise NotFound
        for a table without an entry file or such a data file."""
        with self._table_lock(group, name):
            # A registered entry always names this path (see `check_location`).
            path = self.layout.table_path(group, name)
            try:
                registered = self.registry.find(group, name) is not None
            except RegistryEntryDamaged:
                registered = True
            if not registered and _embedded_entry_of_table(path, group, name) is None:
                raise NotFound(
                    f"feature table {group}/{name} not found; GET /features lists the tables"
                )
            try:
                path.unlink(missing_ok=True)
            except OSError as error:
                relative = path.relative_to(self.root)
                raise StorageError(f"could not delete {relative}: {error.strerror}") from error
            self.registry.remove(group, name)
        self.catalog.drop_view(group, name)
        logger.info("deleted %s/%s", group, name)

    def recover(self) -> None:
        """Repair the state a killed writer may have left: remove temporary files, and make
        each registry entry agree with the Parquet file it describes."""
        for group, name, path in self.layout.temporary_files():
            if not _is_table_reference(group, name, path):
                continue
            with self._table_lock(group, name):
                path.unlink(missing_ok=True)
                logger.info("removed temporary file %s left by an interrupted write", path)
        # Earlier releases wrote the registry's version token through a temporary file.
        for path in self.layout.registry_dir.glob(f"..version.*{TEMPORARY_SUFFIX}"):
            path.unlink(missing_ok=True)
            logger.info("removed temporary file %s left by an interrupted write", path)

        for group_dir in sorted(p for p in self.layout.features_dir.glob("*") if p.is_dir()):
            for path in sorted(group_dir.glob("*.parquet")):
                if not _is_table_reference(group_dir.name, path.stem, path):
                    continue
                with self._table_lock(group_dir.name, path.stem):
                    self._recover_table(group_dir.name, path.stem, path)

        for entry in self.registry.list():
            if not (self.root / entry.path).exists():
                logger.warning("%s has no Parquet file; removing it from the registry", entry.path)
                self.registry.remove(entry.group, entry.name)

    def _existing_entry(self, group: str, name: str, mode: str) -> RegistryEntry | None:
        """Return the registered entry that a write builds on, or None for a new table.

        For a damaged or missing entry file beside an existing data file, it returns the entry
        in the data file's footer, so that writing the table again repairs it and an append
        keeps the stored rows. Without a readable footer, an overwrite writes a new table, and
        an append raises TableUnavailable, because it would drop the rows it cannot read.
        """
        path = self.layout.table_path(group, name)
        try:
            registered = self.registry.find(group, name)
        except RegistryEntryDamaged:
            problem = "its registry entry is damaged"
            damaged: TableUnavailable = RegistryEntryDamaged.of_table(f"{group}/{name}")
        else:
            if registered is not None or not os.path.lexists(path):
                return registered
            problem = "it has a data file but no registry entry"
            damaged = TableUnavailable.of_table(f"{group}/{name}")

        embedded = _embedded_entry_of_table(path, group, name)
        if embedded is not None:
            logger.warning(
                "the write of %s/%s builds on version %d from the footer of %s, because %s",
                group,
                name,
                embedded.version,
                path,
                problem,
            )
            return embedded
        if mode == "append":
            raise damaged
        logger.warning(
            "the overwrite of %s/%s writes it as a new table, because %s and %s has no "
            "readable footer of the table",
            group,
            name,
            problem,
            path,
        )
        return None

    def _recover_table(self, group: str, name: str, path: Path) -> None:
        try:
            embedded = _read_embedded_entry(path)
        except (OSError, pa.ArrowException, ValueError) as error:
            # A damaged file must not stop the server from serving the other tables.
            logger.error(
                "cannot read the footer of %s, so its registry entry is left as it is; reads of "
                "%s/%s answer 503 until the file is restored or the table is written again: %s",
                path,
                group,
                name,
                error,
            )
            return
        if embedded is None:
            logger.warning("%s has no sqlstore metadata; it is not registered", path)
            return
        if (embedded.group, embedded.name) != (group, name):
            logger.error(
                "%s is a file of table %s, not of %s/%s, so the registry is left as it is; "
                "reads of %s/%s answer 503 until the file is restored or the table is written "
                "again",
                path,
                embedded.reference,
                group,
                name,
                group,
                name,
            )
            return
        try:
            check_location(embedded, group, name)
        except ValueError as error:
            logger.error(
                "the footer of %s does not describe table %s/%s (%s), so the registry is left "
                "as it is",
                path,
                group,
                name,
                error,
            )
            return
        try:
            registered = self.registry.find(group, name)
            state = "missing" if registered is None else f"at version {registered.version}"
        except RegistryEntryDamaged:
            # The file's footer is intact and of this table, so it rebuilds the entry.
            registered = None
            state = "damaged"
        if registered is not None and embedded.version <= registered.version:
            if embedded.version < registered.version:
                # A write never leaves the registry ahead of the file, so the file is an older
                # version copied back by hand, and serving it would drop acknowledged writes.
                logger.error(
                    "%s is version %d of %s/%s, older than the registered version %d, so the "
                    "registry is left as it is; reads answer 503 until the file is restored",
                    path,
                    embedded.version,
                    group,
                    name,
                    registered.version,
                )
            return
        embedded.storage.bytes_on_disk = path.stat().st_size
        self.registry.put(embedded)
        logger.warning(
            "registry entry of %s/%s was %s, and the file is at version %d; restored the entry "
            "from the file's footer",
            group,
            name,
            state,
            embedded.version,
        )

    @contextmanager
    def _table_lock(self, group: str, name: str) -> Iterator[None]:
        path = self.layout.lock_path(group, name)
        lock = filelock.FileLock(path)
        try:
            lock.acquire(timeout=self.lock_timeout_seconds)
        except filelock.Timeout as error:
            raise TableBusy(
                f"feature table {group}/{name} is being written by another process; "
                f"retry after it finishes (waited {self.lock_timeout_seconds:g} s)"
            ) from error
        except OSError as error:
            # A read-only or full file system rejects opening the lock file for writing.
            raise storage_error(path, error) from error

        try:
            yield
        finally:
            lock.release()

    def _write_locked(
        self,
        group: str,
        name: str,
        data: pa.Table,
        mode: str,
        definition: TableDefinition,
        compression: str,
        existing: RegistryEntry | None,
    ) -> RegistryEntry:
        _check_column_count(data.num_columns, self.max_columns, "the data")
        resolved = _resolve_definition(definition, data, mode, existing)
        data = _prepare_columns(data, resolved)
        path = self.layout.table_path(group, name)

        first_new_row = 0
        if mode == "append" and existing is not None:
            stored = _read_stored_table(self.root / existing.path, existing)
            data = widen_for_append(stored, data)
            # The appended columns may collide in case with the stored ones.
            _check_column_names(data.column_names)
            _check_column_count(data.num_columns, self.max_columns, "the appended table")
            first_new_row = stored.num_rows
        table, dictionary_columns = optimize_table(data)
        _validate_table(table, resolved, first_new_row)
        sorted_by = sort_columns(
            resolved.entity_key or [],
            resolved.timestamp_column,
            resolved.created_timestamp_column,
        )
        table = sort_table(table, sorted_by)

        now = datetime.now(UTC)
        entry = RegistryEntry(
            group=group,
            name=name,
            entity_key=resolved.entity_key or [],
            timestamp_column=resolved.timestamp_column,
            created_timestamp_column=resolved.created_timestamp_column,
            ttl_seconds=resolved.ttl_seconds,
            description=resolved.description or "",
            owner=resolved.owner or "",
            tags=resolved.tags or [],
            columns=_column_infos(table, resolved.column_descriptions or {}),
            row_count=table.num_rows,
            unique_keys=_has_unique_keys(table, resolved),
            sorted_by=sorted_by,
            version=(existing.version if existing else 0) + 1,
            created_at=existing.created_at if existing else now,
            updated_at=now,
            path=self.layout.relative(path),
            storage=StorageStats(
                bytes_on_disk=0,
                arrow_bytes=table.nbytes,
                csv_bytes=_csv_size(table),
                compression=compression,
            ),
        )

        metadata = dict(table.schema.metadata or {})
        metadata[ENTRY_METADATA_KEY] = entry.model_dump_json().encode()
        table = table.replace_schema_metadata(metadata)
        replace_atomically(
            path,
            lambda temporary: pq.write_table(
                table,
                temporary,
                compression=compression,
                use_dictionary=dictionary_columns,
            ),
        )
        entry.storage.bytes_on_disk = path.stat().st_size
        try:
            self.registry.put(entry)
        except StorageError as error:
            # The data file already contains the new version; recover() restores the registry
            # entry from the copy in its footer on the next start.
            raise StorageError(
                f"{group}/{name} version {entry.version} was written, but its registry entry "
                f"could not be updated ({error.message}); restart the server or run "
                "`sqlstore info` to repair it"
            ) from error
        return entry


def _validate_options(mode: str, compression: str) -> None:
    if mode not in WRITE_MODES:
        raise InvalidInput(f"invalid mode {mode!r}: use 'overwrite' or 'append'")
    if compression not in COMPRESSIONS:
        raise InvalidInput(f"invalid compression {compression!r}: use 'snappy' or 'zstd'")


def _resolve_definition(
    declared: TableDefinition, data: pa.Table, mode: str, existing: RegistryEntry | None
) -> TableDefinition:
    """Merge the declared definition with the registered one and the defaults."""
    if mode == "append" and existing is not None:
        _check_append_matches(declared, existing)

    columns = set(data.column_names)
    if existing is not None and mode == "append":
        columns |= {column.name for column in existing.columns}

    entity_key = declared.entity_key
    if entity_key is None and existing is not None:
        entity_key = existing.entity_key
    if entity_key is None:
        entity_key = [DEFAULT_ENTITY_KEY] if DEFAULT_ENTITY_KEY in columns else []

    timestamp_column = declared.timestamp_column
    if timestamp_column is None and existing is not None:
        timestamp_column = existing.timestamp_column
    # An append keeps the registered definition, so it never adopts the default column.
    appending = mode == "append" and existing is not None
    if timestamp_column is None and not appending and DEFAULT_TIMESTAMP_COLUMN in columns:
        timestamp_column = DEFAULT_TIMESTAMP_COLUMN

    def keep(declared_value, attribute):
        if declared_value is not None or existing is None:
            return declared_value
        return getattr(existing, attribute)

    _check_described_columns(declared.column_descriptions or {}, columns)
    descriptions = dict(
        {c.name: c.description for c in existing.columns if c.description} if existing else {}
    )
    descriptions.update(declared.column_descriptions or {})
    return TableDefinition(
        entity_key=list(entity_key),
        timestamp_column=timestamp_column,
        created_timestamp_column=keep(
            declared.created_timestamp_column, "created_timestamp_column"
        ),
        ttl_seconds=keep(declared.ttl_seconds, "ttl_seconds"),
        description=keep(declared.description, "description"),
        owner=keep(declared.owner, "owner"),
        tags=keep(declared.tags, "tags"),
        column_descriptions=descriptions,
    )


def _check_described_columns(descriptions: dict[str, str], columns: set[str]) -> None:
    """Reject a description of a column that the table will not have, which would be lost."""
    for column in descriptions:
        if column not in columns:
            available = ", ".join(sorted(columns))
            raise InvalidInput(
                f"column_descriptions names unknown column {column!r}; the table's columns "
                f"are: {available}"
            )


def _check_append_matches(declared: TableDefinition, existing: RegistryEntry) -> None:
    pairs = (
        ("entity_key", declared.entity_key, existing.entity_key),
        ("timestamp_column", declared.timestamp_column, existing.timestamp_column),
        (
            "created_timestamp_column",
            declared.created_timestamp_column,
            existing.created_timestamp_column,
        ),
    )
    for field, declared_value, registered in pairs:
        if declared_value is not None and declared_value != registered:
            raise Conflict(
                f"{field} {declared_value!r} differs from the registered {registered!r} of "
                f"{existing.reference}; append without it, or overwrite the table to redefine it"
            )


def _prepare_columns(data: pa.Table, definition: TableDefinition) -> pa.Table:
    """Validate column names and the declared columns, and convert timestamp columns to UTC."""
    _check_column_names(data.column_names)
    for field in data.schema:
        if _has_nested_object(field.type):
            raise InvalidInput(
                f"column {field.name!r} has {describe_type(field.type)} values: nested objects "
                "are not supported; flatten them into separate columns"
            )

    for field in data.schema:
        depth = _list_depth(field.type)
        if depth > MAX_LIST_DEPTH:
            raise InvalidInput(
                f"column {field.name!r} nests lists {depth} deep; at most {MAX_LIST_DEPTH} levels "
                "are supported, so flatten the values"
            )

    for column in definition.entity_key or []:
        validate_column(column)
    for column in (definition.timestamp_column, definition.created_timestamp_column):
        if column is not None and column in data.column_names:
            data = normalize_timestamp_column(data, validate_column(column))
    _check_time_range(data)
    return data


def _check_column_names(names: list[str]) -> None:
    seen: dict[str, str] = {}
    for column in names:
        validate_column(column)
        if column in RESERVED_COLUMNS:
            raise InvalidInput(f"column name {column!r} is reserved by sqlstore; rename it")
        folded = column.lower()
        if folded in seen:
            raise InvalidInput(
                f"columns {seen[folded]!r} and {column!r} differ only in case, which SQL does not "
                "distinguish; rename one of them"
            )
        seen[folded] = column


def _check_column_count(count: int, max_columns: int, table_label: str) -> None:
    if count > max_columns:
        raise InvalidInput(
            f"{table_label} has {count} columns, more than the maximum {max_columns} per "
            "table; split the features into several tables, or raise SQLSTORE_MAX_COLUMNS"
        )


def _list_depth(arrow_type: pa.DataType) -> int:
    if pa.types.is_dictionary(arrow_type):
        return _list_depth(arrow_type.value_type)
    if type_family(arrow_type) == "list":
        return 1 + _list_depth(arrow_type.value_type)
    return 0


def _check_time_range(data: pa.Table) -> None:
    """Reject timestamps and dates outside the years 1 to 9999 (UTC), which Python, and so
    every JSON response, cannot represent."""
    for field, column in zip(data.schema, data.columns, strict=True):
        family = type_family(field.type)
        if family not in ("timestamp", "date") or column.null_count == len(column):
            continue

        if family == "timestamp":
            # The stored integers count units since 1970 in UTC, whatever the time zone label.
            per_day = SECONDS_PER_DAY * UNITS_PER_SECOND[field.type.unit]
            values = column.cast(pa.int64())
            first, last = FIRST_SUPPORTED_DAY * per_day, (LAST_SUPPORTED_DAY + 1) * per_day - 1
        else:
            values = column.cast(pa.date32()).cast(pa.int32())
            first, last = FIRST_SUPPORTED_DAY, LAST_SUPPORTED_DAY

        bounds = pc.min_max(values)
        if bounds["min"].as_py() < first or bounds["max"].as_py() > last:
            raise InvalidInput(
                f"column {field.name!r} has a time outside the years 1 to 9999, which sqlstore "
                "cannot return in JSON; send times within that range"
            )


def _has_nested_object(arrow_type: pa.DataType) -> bool:
    """Return True for struct, map and union types, and lists of them."""
    if pa.types.is_struct(arrow_type) or pa.types.is_map(arrow_type):
        return True
    if pa.types.is_union(arrow_type):
        return True
    if pa.types.is_dictionary(arrow_type):
        return _has_nested_object(arrow_type.value_type)
    if type_family(arrow_type) == "list":
        return _has_nested_object(arrow_type.value_type)
    return False


def _validate_table(table: pa.Table, definition: TableDefinition, first_new_row: int = 0) -> None:
    """Check that the declared key and timestamp columns exist, have usable types and no nulls.

    `first_new_row` is the number of stored rows an append precedes the new ones with, so that
    errors count records from the start of the written data.
    """
    for column in definition.entity_key or []:
        _require_column(table, column, "entity key")
        family = type_family(table[column].type)
        if family not in KEY_FAMILIES:
            raise InvalidInput(
                f"entity key column {column!r} has {describe_type(table[column].type)} values; "
                "keys must be integers, strings or dates"
            )
        _reject_nulls(table, column, "entity key", first_new_row)

    for column, role in (
        (definition.timestamp_column, "timestamp"),
        (definition.created_timestamp_column, "created timestamp"),
    ):
        if column is None:
            continue
        _require_column(table, column, role)
        _reject_nulls(table, column, role, first_new_row)

    ttl = definition.ttl_seconds
    if ttl is not None and not ttl >= 0:
        raise InvalidInput(f"invalid ttl_seconds {ttl!r}: use a number of seconds, 0 or more")
    if ttl and definition.timestamp_column is None:
        raise InvalidInput("ttl_seconds needs a timestamp column; declare timestamp_column")


def _require_column(table: pa.Table, column: str, role: str) -> None:
    if column not in table.column_names:
        available = ", ".join(table.column_names)
        raise InvalidInput(
            f"{role} column {column!r} is not in the data (it was declared in this request or is "
            f"registered for the table); columns: {available}. Include the column, or delete "
            "the table to redefine it"
        )


def _reject_nulls(table: pa.Table, column: str, role: str, first_new_row: int) -> None:
    nulls = table[column].is_null()
    if pc.any(nulls).as_py():
        index = pc.index(nulls, True).as_py()
        row = f"stored row {index}" if index < first_new_row else f"record {index - first_new_row}"
        raise InvalidInput(f"{row}: {role} column {column!r} is null; every row needs one")


def _column_infos(table: pa.Table, descriptions: dict[str, str]) -> list[ColumnInfo]:
    return [
        ColumnInfo(
            name=field.name,
            type=describe_type(field.type),
            description=descriptions.get(field.name, ""),
        )
        for field in table.schema
    ]


def _has_unique_keys(table: pa.Table, definition: TableDefinition) -> bool | None:
    """Return whether no two rows share the key and event timestamp (the key alone for a static
    table), or None for a table without a key."""
    columns = list(definition.entity_key or [])
    if not columns:
        return None
    if definition.timestamp_column:
        columns.append(definition.timestamp_column)
    distinct = table.select(columns).group_by(columns).aggregate([]).num_rows
    return distinct == table.num_rows


def _csv_size(table: pa.Table) -> int:
    """Return the size in bytes of `table` written as CSV, without keeping the text.

    Exact up to CSV_EXACT_ROWS rows. Beyond that, writing the CSV would dominate the write's
    time, so the size is estimated from evenly spaced rows and scaled to the row count.
    """
    if table.num_rows <= CSV_EXACT_ROWS:
        return _written_csv_size(table)

    step = table.num_rows / CSV_EXACT_ROWS
    sample = table.take(pa.array([int(i * step) for i in range(CSV_EXACT_ROWS)], pa.int64()))
    header = _written_csv_size(sample.slice(0, 0))
    rows = _written_csv_size(sample) - header
    return header + round(rows * table.num_rows / CSV_EXACT_ROWS)


def _written_csv_size(table: pa.Table) -> int:
    sink = pa.MockOutputStream()
    csv_types = [_csv_compatible(column) for column in table.columns]
    pa_csv.write_csv(pa.Table.from_arrays(csv_types, names=table.column_names), sink)
    return sink.size()


def _csv_compatible(column: pa.ChunkedArray) -> pa.ChunkedArray:
    # Arrow's CSV writer cannot write lists, so a list counts as its elements joined by "|".
    if type_family(column.type) == "list":
        return pa.chunked_array([_list_as_text(chunk) for chunk in column.chunks], type=pa.string())
    if type_family(column.type) == "binary":
        return _as_text(column)
    return column


def _list_as_text(array: pa.Array) -> pa.Array:
    """Join each list's elements with "|", after joining the elements of nested lists."""
    if array.offset:
        # from_arrays cannot rebuild a sliced list array that has nulls, so copy it unsliced.
        array = pa.concat_arrays([array])
    values = array.values
    if type_family(values.type) == "list":
        values = _list_as_text(values)
    else:
        values = _as_text(values)
    list_class = pa.LargeListArray if pa.types.is_large_list(array.type) else pa.ListArray
    strings = list_class.from_arrays(array.offsets, values, mask=array.is_null())
    return pc.binary_join(strings, "|")


def _as_text(values: pa.Array | pa.ChunkedArray) -> pa.Array | pa.ChunkedArray:
    # Binary values are counted as their raw bytes, which need not be valid UTF-8.
    options = pc.CastOptions(pa.string(), allow_invalid_utf8=True)
    return pc.cast(values, options=options)


def _is_table_reference(group: str, name: str, path: Path) -> bool:
    """Return True when `group` and `name` are valid, so that `path` may be a sqlstore file.

    Files that other programs left in the store are logged and kept.
    """
    try:
        validate_group(group)
        validate_table_name(name)
    except InvalidIdentifier:
        logger.warning("%s is not a sqlstore file (invalid group or table name); skipping it", path)
        return False
    return True


def _read_stored_table(path: Path, existing: RegistryEntry) -> pa.Table:
    """Read the stored version of a table for an append. Raise TableUnavailable when the file
    is missing, damaged, of another table or of another version, because the append would
    lose the stored rows or mix in others. An overwrite can still replace the table."""
    problem = file_problem(path, existing.reference, existing.version)
    if problem is not None:
        logger.error("cannot append to %s: its data file %s %s", existing.reference, path, problem)
        raise TableUnavailable.of_table(existing.reference)
    return pq.read_table(path)


def _embedded_entry_of_table(path: Path, group: str, name: str) -> RegistryEntry | None:
    """Return the entry in the footer of `path` when it is one of table `group/name`, else
    None (no file, a damaged one, or another table's)."""
    try:
        embedded = _read_embedded_entry(path)
    except (OSError, pa.ArrowException, ValueError):
        return None
    if embedded is None:
        return None
    try:
        check_location(embedded, group, name)
    except ValueError:
        return None
    embedded.storage.bytes_on_disk = path.stat().st_size
    return embedded


def _read_embedded_entry(path: Path) -> RegistryEntry | None:
    metadata = pq.read_schema(path).metadata or {}
    text = metadata.get(ENTRY_METADATA_KEY)
    if text is None:
        return None
    return RegistryEntry.model_validate_json(text)
