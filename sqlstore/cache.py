"""Result caches: an LRU in memory and a cache on disk shared by worker processes.

Entries are encoded responses (body bytes, media type, headers), keyed by a digest of the
normalised request and the write stamp of every table the request reads. A write changes the
table's stamp, so no later lookup can find an entry computed from the old data, in any process.

On disk, each value is an envelope of a magic prefix, a SHA-256 digest and the payload, stored
by diskcache as raw bytes. Nothing read from disk is ever unpickled: `SafeDisk` rejects any row
that diskcache would decode with pickle, and a value whose digest does not match is dropped,
logged and recomputed.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import sqlite3
import struct
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cachetools
import diskcache
import diskcache.core
import orjson

from sqlstore import __version__

logger = logging.getLogger(__name__)

ENVELOPE_MAGIC = b"SQLSTORE-CACHE-1\n"
DIGEST_BYTES = 32
HEADER_LENGTH = struct.Struct(">I")
MEMORY_TIER = "memory"
DISK_TIER = "disk"
# SQLite page cache of each diskcache connection, in pages (4 KiB by default): 1 MiB.
DISK_PAGE_CACHE_PAGES = 256
# Seconds a disk tier operation waits for another process's SQLite write lock (diskcache's
# default).
DISK_TIMEOUT_SECONDS = 60.0
# Seconds a disk read on an event loop waits for another process's SQLite write lock (a read
# records its access time for LRU eviction). Other reads wait for diskcache's default 60 s.
BRIEF_DISK_TIMEOUT_SECONDS = 0.02


class CorruptEntry(Exception):
    """A disk cache value failed its integrity check."""


class DiskTierBusy(Exception):
    """A brief disk read gave up because another process held the disk tier's write lock."""


class SafeDisk(diskcache.Disk):
    """A diskcache serialiser that stores only bytes and string keys, never unpickles, and
    never reads or deletes a file outside the cache folder."""

    def put(self, key: Any) -> tuple[Any, bool]:
        if not isinstance(key, str):
            raise TypeError("cache keys must be strings")
        return super().put(key)

    def get(self, key: Any, raw: bool) -> Any:
        if not raw:
            raise CorruptEntry("a cache key was stored pickled")
        return super().get(key, raw)

    def store(self, value: Any, read: bool, key: Any = diskcache.core.UNKNOWN) -> Any:
        if not isinstance(value, bytes):
            raise TypeError("cache values must be bytes")
        return super().store(value, read, key=key)

    def fetch(self, mode: int, filename: str | None, value: Any, read: bool) -> Any:
        if mode not in (diskcache.core.MODE_RAW, diskcache.core.MODE_BINARY):
            raise CorruptEntry(f"cache value has storage mode {mode}, not raw bytes")
        if filename is not None and not self._inside(filename):
            raise CorruptEntry(f"cache value file {filename!r} is outside the cache folder")
        data = super().fetch(mode, filename, value, read)
        if not isinstance(data, bytes):
            # diskcache stores small str, int and float values of other writers as raw rows.
            raise CorruptEntry(f"cache value is a {type(data).__name__}, not bytes")
        return data

    def remove(self, file_path: str) -> None:
        # A foreign or corrupt row may name any path, so deletion stays inside the folder.
        if not self._inside(file_path):
            logger.warning("skipped deleting %r: it is outside the cache folder", file_path)
            return
        super().remove(file_path)

    def _inside(self, filename: str) -> bool:
        folder = os.path.realpath(self._directory)
        path = os.path.realpath(os.path.join(folder, filename))
        return os.path.commonpath([folder, path]) == folder and path != folder


@dataclass(frozen=True)
class CachedResponse:
    """An encoded response: what a cache hit sends back unchanged."""

    body: bytes
    media_type: str
    headers: dict[str, str] = field(default_factory=dict)

    @property
    def size(self) -> int:
        return len(self.body) + 256


def encode_envelope(response: CachedResponse) -> bytes:
    """Return the disk form of `response`: magic, SHA-256 of the rest, header length, header
    JSON (media type and headers), body."""
    header = orjson.dumps({"media_type": response.media_type, "headers": response.headers})
    payload = HEADER_LENGTH.pack(len(header)) + header + response.body
    return ENVELOPE_MAGIC + hashlib.sha256(payload).digest() + payload


def decode_envelope(data: bytes) -> CachedResponse:
    """Return the response stored in `data`, or raise CorruptEntry."""
    if not data.startswith(ENVELOPE_MAGIC):
        raise CorruptEntry("missing sqlstore cache header")
    start = len(ENVELOPE_MAGIC)
    digest = data[start : start + DIGEST_BYTES]
    payload = data[start + DIGEST_BYTES :]
    if hashlib.sha256(payload).digest() != digest:
        raise CorruptEntry("checksum mismatch")
    if len(payload) < HEADER_LENGTH.size:
        raise CorruptEntry("truncated entry")

    (header_length,) = HEADER_LENGTH.unpack_from(payload)
    header_end = HEADER_LENGTH.size + header_length
    if header_end > len(payload):
        raise CorruptEntry("header length runs past the end of the entry")
    try:
        header = orjson.loads(payload[HEADER_LENGTH.size : header_end])
        return CachedResponse(
            body=payload[header_end:],
            media_type=str(header["media_type"]),
            headers={str(k): str(v) for k, v in header["headers"].items()},
        )
    except (orjson.JSONDecodeError, KeyError, TypeError, AttributeError) as error:
        raise CorruptEntry(f"unreadable entry header: {error}") from error


def cache_key(kind: str, request: dict[str, Any], versions: dict[str, int]) -> str:
    """Return the key of a request: a digest of its kind, canonical form and table versions,
    and of sqlstore's version, so that disk entries made by another release, which may encode
    results differently, are not served after an upgrade."""
    content = {"kind": kind, "request": request, "versions": versions, "sqlstore": __version__}
    try:
        canonical = orjson.dumps(
            content, option=orjson.OPT_SORT_KEYS | orjson.OPT_NON_STR_KEYS, default=str
        )
    except orjson.JSONEncodeError:
        # orjson rejects integers beyond 64 bits; the standard library writes them.
        canonical = json.dumps(content, sort_keys=True, default=str).encode()
    return hashlib.sha256(canonical).hexdigest()


@dataclass(frozen=True)
class CacheSettings:
    """Bounds of the two tiers. A size of 0 turns a tier off."""

    memory_entries: int = 1024
    memory_bytes: int = 64 * 1024 * 1024
    ttl_seconds: float = 300.0
    memory_max_entry_bytes: int = 1024 * 1024
    disk_bytes: int = 1024 * 1024 * 1024
    disk_max_entry_bytes: int = 64 * 1024 * 1024
    disk_dir: Path | None = None

    @property
    def memory_enabled(self) -> bool:
        return self.memory_entries > 0 and self.memory_bytes > 0

    @property
    def disk_enabled(self) -> bool:
        return self.disk_bytes > 0 and self.disk_dir is not None


def usage_ratio(items: int, max_items: int | None, used_bytes: int, max_bytes: int) -> float:
    """Return how full a tier is: the larger of its entry and byte fractions, 0 when unbounded."""
    fractions = [0.0]
    if max_items:
        fractions.append(items / max_items)
    if max_bytes:
        fractions.append(used_bytes / max_bytes)
    return max(fractions)


# Receives (tier, event) for every hit, miss, eviction and expiry, e.g. to count it in metrics.
EventHook = Callable[[str, str], None]


@dataclass
class TierCounters:
    """Counts kept by this process for one tier."""

    hits: int = 0
    misses: int = 0
    evictions: int = 0
    expirations: int = 0


class _MemoryTier(cachetools.TTLCache):
    """A TTL cache bounded by bytes (cachetools' maxsize) that reports its evictions and
    expirations."""

    def __init__(
        self,
        settings: CacheSettings,
        on_eviction: Callable[[], None],
        on_expiry: Callable[[], None],
    ) -> None:
        super().__init__(
            maxsize=settings.memory_bytes,
            ttl=settings.ttl_seconds,
            getsizeof=lambda entry: entry[0].size,
        )
        self._on_eviction = on_eviction
        self._on_expiry = on_expiry

    def popitem(self) -> Any:
        item = super().popitem()
        self._on_eviction()
        return item

    def expire(self, time: float | None = None) -> list[tuple[Any, Any]]:
        # cachetools expires entries inside len(), currsize, setting and popitem() too, so
        # expirations are counted here rather than by the callers.
        expired = super().expire(time)
        for _ in expired:
            self._on_expiry()
        return expired


class ResultCache:
    """Two-tier cache of encoded responses. Thread-safe; the disk tier is process-safe."""

    def __init__(self, settings: CacheSettings, on_event: EventHook | None = None) -> None:
        self.settings = settings
        self.counters = {MEMORY_TIER: TierCounters(), DISK_TIER: TierCounters()}
        self._on_event = on_event
        self._lock = threading.Lock()
        self._memory = _MemoryTier(
            settings,
            on_eviction=lambda: self._record(MEMORY_TIER, "eviction"),
            on_expiry=lambda: self._record(MEMORY_TIER, "expiry"),
        )
        self._disk: diskcache.Cache | None = None
        # The same disk tier, for reads on an event loop, which must not wait long for a lock.
        self._brief_disk: diskcache.Cache | None = None
        if settings.disk_enabled:
            self._disk = _open_disk_tier(settings, DISK_TIMEOUT_SECONDS)
            self._brief_disk = _open_disk_tier(settings, BRIEF_DISK_TIMEOUT_SECONDS)

    def get(self, key: str) -> tuple[CachedResponse | None, str]:
        """Return (response, where) with where "hit-memory", "hit-disk" or "miss"."""
        response = self.get_memory(key)
        if response is not None:
            return response, "hit-memory"
        response = self.get_disk(key)
        if response is not None:
            return response, "hit-disk"
        return None, "miss"

    def get_memory(self, key: str) -> CachedResponse | None:
        """Return the memory tier's entry for `key`, or None. Never touches the disk, so it
        is fast enough to call on an event loop."""
        response = self.peek_memory(key)
        if response is None and self.settings.memory_enabled:
            self._record(MEMORY_TIER, "miss")
        return response

    def peek_memory(self, key: str) -> CachedResponse | None:
        """Like `get_memory`, but a miss is not counted, for a caller that goes on to a
        lookup that counts it."""
        if not self.settings.memory_enabled:
            return None
        with self._lock:
            entry = self._memory.get(key)
        if entry is None:
            return None
        self._record(MEMORY_TIER, "hit")
        return entry[0]

    def get_disk(self, key: str, brief: bool = False) -> CachedResponse | None:
        """Return the disk tier's entry for `key` and copy it into the memory tier, or None.

        With `brief` true, for an event loop, raise DiskTierBusy rather than wait more than
        BRIEF_DISK_TIMEOUT_SECONDS for another process's write lock.
        """
        response = self._get_disk(key, brief)
        if response is not None:
            self._put_memory(key, response)
        return response

    @property
    def has_disk_tier(self) -> bool:
        """True when entries are also kept on disk, so that reads and writes do file I/O."""
        return self._disk is not None

    def disk_entry_is_inline(self, key: str) -> bool:
        """Return True when the disk tier has an entry for `key` whose value diskcache keeps
        inside its SQLite file (values under 32 KiB), rather than in a file of its own. Reads
        the index only, so it costs the same whatever the entry's size, and waits for a lock
        no longer than a brief read (see `get_disk`)."""
        if self._brief_disk is None:
            return False
        try:
            # NOTE: `_sql` is diskcache's private statement helper (diskcache 5.6); its public
            # API has no way to ask where a value is stored without reading it.
            rows = self._brief_disk._sql(
                "SELECT filename IS NULL FROM Cache WHERE key = ? AND raw = 1", (key,)
            ).fetchall()
        except (OSError, sqlite3.Error) as error:
            logger.warning("could not look up cache entry %s: %s", key[:12], error)
            return False
        return bool(rows and rows[0][0])

    def put(self, key: str, response: CachedResponse, table: str | None = None) -> None:
        """Store `response` in the tiers whose entry size limit it fits; a body larger than
        `disk_max_entry_bytes` is not cached at all. `table` tags the disk entry so that
        `reclaim_table` can delete it once that table changes."""
        if len(response.body) > self.settings.disk_max_entry_bytes:
            return
        self._put_memory(key, response)
        if self._disk is None:
            return
        try:
            self._disk.set(key, encode_envelope(response), tag=table)
            self._evict_disk()
        except (OSError, diskcache.Timeout) as error:
            logger.warning("could not store cache entry %s on disk: %s", key[:12], error)

    def _evict_disk(self) -> None:
        """Delete least recently used disk entries, one at a time, until the tier fits its
        byte bound."""
        while self._disk.volume() > self._disk.size_limit:
            # NOTE: `_sql` is diskcache's private statement helper (diskcache 5.6), because
            # the public cull() deletes ten entries per step. Rows of other writers whose keys
            # are not strings are skipped here, and DELETE /cache removes them.
            rows = self._disk._sql(
                "SELECT key FROM Cache WHERE raw = 1 AND typeof(key) = 'text'"
                " ORDER BY access_time LIMIT 1"
            ).fetchall()
            if not rows:
                return
            if self._disk.delete(rows[0][0]):
                self._record(DISK_TIER, "eviction")

    def reclaim_table(self, table: str) -> int:
        """Delete the disk entries tagged with `table`, which a write or delete has made
        unreachable; return how many. Entries that read several tables carry the tag of the
        first one only, so the others are left to the size bound's LRU eviction."""
        if self._disk is None:
            return 0
        try:
            removed = self._disk.evict(table)
        except (OSError, diskcache.Timeout) as error:
            logger.warning("could not reclaim cache entries of %s: %s", table, error)
            return 0
        if removed:
            logger.info("reclaimed %d disk cache entries of %s", removed, table)
        return removed

    def clear(self) -> None:
        """Empty both tiers."""
        with self._lock:
            self._memory.clear()
        if self._disk is not None:
            self._disk.clear()

    def stats(self) -> dict[str, Any]:
        """Return this process's view of both tiers (counts here are this process's only)."""
        now = time.monotonic()
        with self._lock:
            self._expire()
            ages = [now - entry[1] for entry in self._memory.values()]
            memory_bytes = self._memory.currsize
        memory = {
            "enabled": self.settings.memory_enabled,
            "total_items": len(ages),
            "max_size": self.settings.memory_entries,
            "bytes_used": memory_bytes,
            "max_bytes": self.settings.memory_bytes,
            "ttl_seconds": self.settings.ttl_seconds,
            "average_age_seconds": sum(ages) / len(ages) if ages else 0.0,
        }
        memory["cache_usage_ratio"] = usage_ratio(
            len(ages), self.settings.memory_entries, memory_bytes, self.settings.memory_bytes
        )
        return {MEMORY_TIER: memory, DISK_TIER: self._disk_stats()}

    def _disk_stats(self) -> dict[str, Any]:
        # The disk tier has no entry-count bound, so its max_size is None.
        disk: dict[str, Any] = {
            "enabled": self._disk is not None,
            "total_items": 0,
            "max_size": None,
            "bytes_used": 0,
            "max_bytes": self.settings.disk_bytes,
            "average_age_seconds": 0.0,
            "cache_usage_ratio": 0.0,
        }
        if self._disk is None:
            return disk
        # NOTE: reads diskcache's Cache table through its private `_sql` (diskcache 5.6).
        count, mean_store_time = self._disk._sql(
            "SELECT COUNT(*), AVG(store_time) FROM Cache"
        ).fetchone()
        disk["total_items"] = count
        disk["bytes_used"] = self._disk.volume()
        if count:
            disk["average_age_seconds"] = max(time.time() - mean_store_time, 0.0)
        disk["cache_usage_ratio"] = usage_ratio(
            count, None, disk["bytes_used"], self.settings.disk_bytes
        )
        return disk

    def close(self) -> None:
        for disk in (self._disk, self._brief_disk):
            if disk is not None:
                disk.close()

    def _put_memory(self, key: str, response: CachedResponse) -> None:
        if not self.settings.memory_enabled:
            return
        if len(response.body) > self.settings.memory_max_entry_bytes:
            return
        if response.size > self.settings.memory_bytes:
            # cachetools raises ValueError for a value larger than the whole cache.
            return
        with self._lock:
            self._expire()
            # Replacing an entry does not add one, so it must not evict another.
            self._memory.pop(key, None)
            while len(self._memory) >= self.settings.memory_entries:
                self._memory.popitem()
            self._memory[key] = (response, time.monotonic())

    def memory_usage(self) -> tuple[int, int, float]:
        """Return this process's memory tier as (entries, bytes, sum of entry ages in seconds)."""
        now = time.monotonic()
        with self._lock:
            ages = sum(now - entry[1] for entry in self._memory.values())
            return len(self._memory), self._memory.currsize, ages

    def _expire(self) -> None:
        # _MemoryTier.expire counts what it drops.
        self._memory.expire()

    def _record(self, tier: str, event: str) -> None:
        counters = self.counters[tier]
        if event == "hit":
            counters.hits += 1
        elif event == "miss":
            counters.misses += 1
        elif event == "eviction":
            counters.evictions += 1
        elif event == "expiry":
            counters.expirations += 1
        if self._on_event is not None:
            self._on_event(tier, event)

    def _get_disk(self, key: str, brief: bool) -> CachedResponse | None:
        disk = self._brief_disk if brief else self._disk
        if disk is None:
            return None
        try:
            data = disk.get(key)
        except diskcache.Timeout as error:
            if brief:
                raise DiskTierBusy(key) from error
            # The entry may be intact: another process held the lock for the whole timeout.
            logger.warning("could not read cache entry %s: %s", key[:12], error)
            self._record(DISK_TIER, "miss")
            return None
        except (CorruptEntry, OSError) as error:
            logger.warning("dropping unreadable cache entry %s: %s", key[:12], error)
            self._discard(key)
            self._record(DISK_TIER, "miss")
            return None
        if data is None:
            self._record(DISK_TIER, "miss")
            return None

        try:
            response = decode_envelope(data)
        except CorruptEntry as error:
            logger.warning("dropping corrupt cache entry %s: %s", key[:12], error)
            self._discard(key)
            self._record(DISK_TIER, "miss")
            return None
        self._record(DISK_TIER, "hit")
        return response

    def _discard(self, key: str) -> None:
        try:
            self._disk.delete(key)
        except (OSError, diskcache.Timeout, CorruptEntry) as error:
            logger.warning("could not delete cache entry %s: %s", key[:12], error)


def _open_disk_tier(settings: CacheSettings, timeout: float) -> diskcache.Cache:
    """Open the disk tier's diskcache, whose SQLite operations wait at most `timeout` seconds
    for a lock."""
    # cull_limit=0: diskcache's own culling deletes ten entries at a time, which can empty a
    # small cache and drop the entry just stored, so `_evict_disk` does it.
    return diskcache.Cache(
        str(settings.disk_dir),
        timeout=timeout,
        size_limit=settings.disk_bytes,
        eviction_policy="least-recently-used",
        cull_limit=0,
        disk=SafeDisk,
        statistics=False,
        # diskcache opens one SQLite connection per thread, each with its own memory map and
        # page cache (64 MiB and 32 MiB by default). With 30 request threads that took a server
        # worker's RSS past 1.5 GB, so each connection gets 1 MiB of cache.
        sqlite_mmap_size=0,
        sqlite_cache_size=DISK_PAGE_CACHE_PAGES,
    )
