"""Cheap repeated reads of small files that are only ever replaced by rename.

The registry entries and cache epochs are read on every request to key the result cache, and
they change only through `sqlstore.atomic`, which writes a new file and renames it over the old
one. A stat call is enough to tell that such a file is unchanged, with one caveat. File times
come from a coarse clock, and a freed inode number can be reused. So a file replaced twice in
quick succession could show the same inode, size and times as the one read earlier.

`ReplacedFileReader` therefore remembers a file's parsed content only once the file is older
than `SETTLED_NANOSECONDS`. A later replacement is written after the remembered read, so its
modification time is at least that much later and its stat differs.
"""

from __future__ import annotations

import errno
import os
import stat
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO, Generic, TypeVar

# NOTE: assumes the wall clock does not step back by more than this between two writes.
SETTLED_NANOSECONDS = 1_000_000_000

Parsed = TypeVar("Parsed")
Signature = tuple[int, int, int, int, int]


def _signature(status: os.stat_result) -> Signature:
    return (status.st_dev, status.st_ino, status.st_size, status.st_mtime_ns, status.st_ctime_ns)


class NotRegularFile(OSError):
    """A path that should be a regular file is a FIFO, a device, a socket or a folder."""


def open_regular(path: Path | str, follow_links: bool = True) -> BinaryIO:
    """Open a regular file for binary reading without blocking on a FIFO. Raise
    NotRegularFile for any other kind of file, or for a symbolic link unless `follow_links`,
    and the errors of `os.open`."""
    flags = os.O_RDONLY | os.O_NONBLOCK | (0 if follow_links else os.O_NOFOLLOW)
    try:
        descriptor = os.open(path, flags)
    except OSError as error:
        if error.errno == errno.ELOOP and not follow_links:
            raise NotRegularFile(f"{path} is a symbolic link") from None
        raise
    try:
        if not stat.S_ISREG(os.fstat(descriptor).st_mode):
            raise NotRegularFile(f"{path} is not a regular file")
        return os.fdopen(descriptor, "rb")
    except BaseException:
        os.close(descriptor)
        raise


class ReplacedFileReader(Generic[Parsed]):
    """Return `parse(file)` of a file opened for binary reading, parsing it again only when its
    stat changed or when it was written too recently for the stat to prove it unchanged. `parse`
    reads only what it needs, so a Parquet footer can be parsed without reading the file.
    Thread-safe.

    Raises FileNotFoundError when the file does not exist, and NotRegularFile when the path is
    a FIFO, a device or a folder: reading a FIFO would block the caller, the event loop
    included, and a device such as /dev/zero never ends.
    """

    def __init__(self, parse: Callable[[BinaryIO], Parsed], follow_links: bool = True) -> None:
        """Without `follow_links`, a path that is a symbolic link raises NotRegularFile."""
        self._parse = parse
        self._follow_links = follow_links
        self._stat = os.stat if follow_links else os.lstat
        self._known: dict[Path | str, tuple[Signature, Parsed]] = {}
        self._lock = threading.Lock()

    def read(self, path: Path | str) -> Parsed:
        known = self._known.get(path)
        if known is not None and known[0] == _signature(self._stat(path)):
            return known[1]

        # The signature comes from the open file, so it matches the content read.
        with open_regular(path, self._follow_links) as file:
            signature = _signature(os.fstat(file.fileno()))
            parsed = self._parse(file)

        settled_before = time.time_ns() - SETTLED_NANOSECONDS
        with self._lock:
            if max(signature[3], signature[4]) < settled_before:
                self._known[path] = (signature, parsed)
            else:
                self._known.pop(path, None)
        return parsed

    def forget(self, path: Path | str) -> None:
        """Drop what is kept for `path`, such as the file of a deleted table."""
        with self._lock:
            self._known.pop(path, None)


def file_signature(path: Path) -> Signature | None:
    """Return the stat signature of `path`, or None when it does not exist. A file replaced by
    rename gets a new signature, with the caveat of the module docstring."""
    try:
        return _signature(os.stat(path))
    except FileNotFoundError:
        return None
