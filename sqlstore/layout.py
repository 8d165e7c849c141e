"""Paths inside a store root. Every path is built from validated identifiers only."""

from __future__ import annotations

import functools
import logging
import os
from dataclasses import dataclass
from pathlib import Path

from sqlstore.errors import StorageError
from sqlstore.identifiers import validate_group, validate_table_name

logger = logging.getLogger(__name__)

ROOT_ENVIRONMENT_VARIABLE = "SQLSTORE_ROOT"
DEFAULT_ROOT = "feature_store"

# Temporary files start with a dot and end in ".tmp", so no "*.parquet" pattern matches them.
TEMPORARY_SUFFIX = ".tmp"
# Key of the Parquet footer metadata that stores a copy of the table's registry entry, so that a
# crash between renaming the file and updating the registry can be repaired on the next start,
# and so that a file of another table, or one not written by sqlstore, can be recognised.
ENTRY_METADATA_KEY = b"sqlstore.entry"

# The folder of the tables' data files, relative to the store root.
FEATURES_FOLDER = "features"
SUBDIRECTORIES = (FEATURES_FOLDER, "registry", "metadata", "cache", "config")


def resolve_root(root: str | os.PathLike[str] | None = None) -> Path:
    """Return the store root: `root` when given, else $SQLSTORE_ROOT, else ./feature_store."""
    if root is None:
        root = os.environ.get(ROOT_ENVIRONMENT_VARIABLE) or DEFAULT_ROOT
    return Path(root).expanduser().resolve()


@dataclass(frozen=True)
class StoreLayout:
    """The folders of one store root."""

    root: Path

    @property
    def features_dir(self) -> Path:
        return self.root / FEATURES_FOLDER

    @property
    def registry_dir(self) -> Path:
        return self.root / "registry"

    @property
    def locks_dir(self) -> Path:
        return self.root / "registry" / ".locks"

    @property
    def cache_dir(self) -> Path:
        return self.root / "cache"

    @property
    def config_dir(self) -> Path:
        return self.root / "config"

    def create(self) -> None:
        """Create the root and its folders if they are missing.

        Raise StorageError when the file system rejects that (a read-only file system, or a
        file where a folder should be).
        """
        try:
            for name in SUBDIRECTORIES:
                (self.root / name).mkdir(parents=True, exist_ok=True)
            self.locks_dir.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise StorageError(
                f"could not create the store folders in {str(self.root)!r}: "
                f"{error.strerror or error}; use a writable folder as the store root"
            ) from error

    def table_path(self, group: str, name: str) -> Path:
        """Return the Parquet file of a table."""
        return self.features_dir / validate_group(group) / f"{validate_table_name(name)}.parquet"

    def registry_path(self, group: str, name: str) -> Path:
        """Return the registry entry file of a table."""
        return _registry_path(self.root, group, name)

    def lock_path(self, group: str, name: str) -> Path:
        """Return the lock file that serialises writes to one table."""
        return self.locks_dir / f"{validate_group(group)}.{validate_table_name(name)}.lock"

    def relative(self, path: Path) -> str:
        """Return `path` relative to the root, with forward slashes."""
        return path.relative_to(self.root).as_posix()

    def temporary_files(self) -> list[tuple[str, str, Path]]:
        """List (group, table, path) for each temporary file left in the store."""
        found = []
        for folder in (self.features_dir, self.registry_dir):
            if not folder.is_dir():
                continue
            for path in folder.glob(f"*/.*{TEMPORARY_SUFFIX}"):
                table = path.name[1:].split(".", 1)[0]
                found.append((path.parent.name, table, path))
        return found


# Every cached request looks up its tables' registry files, and building a validated path costs
# more than the rest of a memory hit. Invalid names raise, so only valid ones are remembered.
@functools.lru_cache(maxsize=4096)
def _registry_path(root: Path, group: str, name: str) -> Path:
    return root / "registry" / validate_group(group) / f"{validate_table_name(name)}.json"
