"""Damaged data files: which registered tables cannot be read, cheaply enough for every health
probe."""

from __future__ import annotations

import logging
import time
from pathlib import Path

from sqlstore.errors import RegistryEntryDamaged
from sqlstore.filestamps import SETTLED_NANOSECONDS, Signature, file_signature
from sqlstore.registry import RegistryEntry
from sqlstore.stablefiles import file_problem, link_problem
from sqlstore.store import FeatureStore

logger = logging.getLogger(__name__)


class DataFileCheck:
    """Finds the tables whose reads fail on their data file. Such a file is missing, is not
    Parquet, or has no sqlstore footer of the table and of the version that the registry lists.
    `sqlstore.stablefiles.file_problem` checks that from the magic bytes and the footer only.

    Each result is kept with the file's stat signature and the entry's version, so a probe of
    unchanged files costs one stat per table, plus the `lstat` calls of `link_problem`: a
    symbolic link outside the features folder, such as a group folder moved elsewhere and
    linked back, leaves the file's signature as it was. A file changed within the last
    SETTLED_NANOSECONDS is checked again at each probe, because a replacement within that time
    may leave its signature unchanged (see `sqlstore.filestamps`).
    """

    def __init__(self) -> None:
        self._known: dict[Path, tuple[Signature | None, int, str | None]] = {}
        # The problem last logged for each table, so that a worker logs each cause once.
        self._logged: dict[str, str] = {}

    def problem(self, store: FeatureStore, entry: RegistryEntry) -> str | None:
        """Return why reads of `entry`'s data file fail, or None when its file looks sound."""
        path = store.root / entry.path
        outside = link_problem(path)
        if outside is not None:
            self._log(path, entry.reference, outside)
            return outside
        # Taken before the check, so that a file replaced during it gets checked again.
        signature = file_signature(path)
        known = self._known.get(path)
        if known is not None and known[0] == signature and known[1] == entry.version:
            return known[2]

        problem = file_problem(path, entry.reference, entry.version)
        if problem is not None:
            current = self._current_entry(store, entry)
            if current is not entry:
                # A write or delete changed the entry after the listing: check against it,
                # and keep no result for the listed entry.
                if current is None:
                    return None
                return file_problem(path, entry.reference, current.version)
            if store.registry.is_being_written(entry.group, entry.name):
                # Between a write's rename of the data file and its registry update.
                return None
            self._log(path, entry.reference, problem)
        else:
            self._logged.pop(entry.reference, None)
        if signature is None or _settled(signature):
            self._known[path] = (signature, entry.version, problem)
        else:
            self._known.pop(path, None)
        return problem

    def _current_entry(self, store: FeatureStore, entry: RegistryEntry) -> RegistryEntry | None:
        """Return `entry` when its entry file still lists its version, else the entry file's
        current entry, or None when the table is no longer registered."""
        try:
            current = store.registry.find(entry.group, entry.name)
        except RegistryEntryDamaged:
            # An unreadable entry file: the listing's entry is the best one known.
            return entry
        if current is not None and current.version == entry.version:
            return entry
        return current

    def _log(self, path: Path, reference: str, problem: str) -> None:
        if self._logged.get(reference) != problem:
            self._logged[reference] = problem
            logger.warning(
                "the data file %s of %s %s, so its reads fail with 503 until the file is "
                "restored or the table is written again",
                path,
                reference,
                problem,
            )


def _settled(signature: Signature) -> bool:
    modified_ns = max(signature[3], signature[4])
    return modified_ns < time.time_ns() - SETTLED_NANOSECONDS


data_files = DataFileCheck()


def unavailable_tables(store: FeatureStore) -> list[str]:
    """Return the tables whose registry entry or data file is missing or damaged, sorted. The
    registry folder is read afresh, so that entries damaged outside sqlstore are found too."""
    entries = store.registry.list_files()
    damaged_files = [e.reference for e in entries if data_files.problem(store, e) is not None]
    return sorted({*damaged_files, *store.registry.damaged_tables()})
