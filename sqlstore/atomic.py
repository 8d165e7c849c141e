"""Atomic file replacement: a reader or a crash sees the old file or the new one, never a mix."""

from __future__ import annotations

import errno
import logging
import os
import uuid
from collections.abc import Callable
from pathlib import Path

from sqlstore.errors import StorageError
from sqlstore.layout import TEMPORARY_SUFFIX

logger = logging.getLogger(__name__)

STORAGE_ERRNOS = {
    errno.ENOSPC: "the disk is full",
    errno.EDQUOT: "the disk quota is exceeded",
    errno.EFBIG: "the file size limit is exceeded",
    errno.EROFS: "the file system is read-only",
    errno.EACCES: "permission denied",
    errno.EPERM: "operation not permitted",
}


def temporary_path(path: Path) -> Path:
    """Return a unique temporary name beside `path`: `.<stem>.<random>.tmp`."""
    return path.with_name(f".{path.stem}.{uuid.uuid4().hex}{TEMPORARY_SUFFIX}")


def replace_atomically(path: Path, write: Callable[[Path], None]) -> None:
    """Call `write(temporary)` and then rename the fsynced temporary file over `path`.

    The temporary file lives in the same folder, so the rename never crosses file systems.
    Raise StorageError when the file system refuses the write; the old file stays intact.
    """
    temporary = temporary_path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        write(temporary)
        _fsync(temporary)
        os.replace(temporary, path)
        _fsync(path.parent)
    except OSError as error:
        _remove_temporary(temporary)
        raise storage_error(path, error) from error
    except BaseException:
        _remove_temporary(temporary)
        raise


def write_bytes_atomically(path: Path, data: bytes) -> None:
    """Replace `path` with `data` atomically."""
    replace_atomically(path, lambda temporary: temporary.write_bytes(data))


def storage_error(path: Path, error: OSError) -> StorageError:
    """Translate an OSError from a write into a StorageError that names the cause."""
    cause = STORAGE_ERRNOS.get(error.errno or 0, error.strerror or str(error))
    logger.error("write to %s failed: %s", path, error)
    return StorageError(f"could not write {path.name}: {cause}; the previous version is intact")


def _remove_temporary(temporary: Path) -> None:
    # The cleanup can fail for the same reason as the write (the folder is gone or is a file),
    # and must not hide the error that caused it.
    try:
        temporary.unlink(missing_ok=True)
    except OSError as error:
        logger.warning("could not remove temporary file %s: %s", temporary, error)


def _fsync(path: Path) -> None:
    """Flush a file or a folder (so that a rename inside it is durable) to disk."""
    descriptor = os.open(path, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)
