"""Unit tests of the result cache (sqlstore.cache), with no server: both tiers, their bounds,
the disk envelope, corrupt and foreign disk rows, and several processes sharing the disk tier."""

from __future__ import annotations

import hashlib
import logging
import multiprocessing
import pickle
import sqlite3
import time
from pathlib import Path

import diskcache
import diskcache.core
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sqlstore import __version__
from sqlstore.cache import (
    DISK_TIER,
    ENVELOPE_MAGIC,
    HEADER_LENGTH,
    MEMORY_TIER,
    CachedResponse,
    CacheSettings,
    CorruptEntry,
    DiskTierBusy,
    ResultCache,
    cache_key,
    decode_envelope,
    encode_envelope,
)

JSON = "application/json"
# Bytes that CachedResponse.size adds to the body length for the entry's bookkeeping.
ENTRY_OVERHEAD = 256
# diskcache keeps values of at least this many bytes in files rather than in SQLite.
FILE_VALUE_BYTES = diskcache.DEFAULT_SETTINGS["disk_min_file_size"]


def response(text: str, size: int = 0) -> CachedResponse:
    """Return a JSON response whose body starts with `text`, padded to `size` bytes."""
    body = text.encode().ljust(size, b".")
    return CachedResponse(body, JSON, {"X-Total-Rows": "1"})


def memory_only(**bounds: float) -> ResultCache:
    return ResultCache(CacheSettings(disk_bytes=0, **bounds))


def disk_only(directory: Path, **bounds: float) -> ResultCache:
    return ResultCache(CacheSettings(memory_entries=0, disk_dir=directory, **bounds))


def open_rows(directory: Path) -> sqlite3.Connection:
    """Open the SQLite file that diskcache keeps under `directory`."""
    return sqlite3.connect(directory / diskcache.core.DBNAME)


class CreateFileOnUnpickle:
    """An object whose unpickling creates `path`: proof that a payload was executed."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self) -> tuple[object, tuple[str, str]]:
        return open, (str(self.path), "w")


# Memory tier


def test_memory_hit_after_put() -> None:
    cache = memory_only()
    cache.put("a", response("alpha"))
    found, where = cache.get("a")
    assert where == "hit-memory"
    assert found == response("alpha")


def test_memory_miss_unknown_key() -> None:
    cache = memory_only()
    found, where = cache.get("absent")
    assert where == "miss"
    assert found is None
    assert cache.counters[MEMORY_TIER].misses == 1


def test_memory_evicts_least_recent() -> None:
    cache = memory_only(memory_entries=3)
    for key in ("a", "b", "c"):
        cache.put(key, response(key))
    cache.get("a")
    cache.put("d", response("d"))

    assert cache.get("b")[1] == "miss"
    assert cache.get("a")[1] == "hit-memory"
    assert cache.get("c")[1] == "hit-memory"
    assert cache.get("d")[1] == "hit-memory"
    assert cache.counters[MEMORY_TIER].evictions == 1


def test_memory_entry_count_bound() -> None:
    cache = memory_only(memory_entries=5)
    for index in range(12):
        cache.put(f"k{index}", response(str(index)))
    assert cache.stats()[MEMORY_TIER]["total_items"] == 5
    assert cache.counters[MEMORY_TIER].evictions == 7
    assert [cache.get(f"k{index}")[1] for index in range(7, 12)] == ["hit-memory"] * 5


def test_memory_rewrite_keeps_others() -> None:
    cache = memory_only(memory_entries=2)
    cache.put("a", response("a"))
    cache.put("b", response("b"))
    cache.get("a")
    cache.put("a", response("a2"))

    assert cache.get("b")[1] == "hit-memory"
    assert cache.get("a")[0] == response("a2")
    assert cache.counters[MEMORY_TIER].evictions == 0


def test_memory_byte_bound() -> None:
    entry_bytes = 1000 + ENTRY_OVERHEAD
    cache = memory_only(memory_bytes=3 * entry_bytes)
    for key in ("a", "b", "c", "d"):
        cache.put(key, response(key, size=1000))

    stats = cache.stats()[MEMORY_TIER]
    assert stats["total_items"] == 3
    assert stats["bytes_used"] == 3 * entry_bytes
    assert cache.get("a")[1] == "miss"
    assert cache.counters[MEMORY_TIER].evictions == 1


def test_memory_entry_over_byte_bound() -> None:
    cache = memory_only(memory_bytes=1000)
    cache.put("big", response("big", size=900))
    assert cache.get("big")[1] == "miss"
    assert cache.stats()[MEMORY_TIER]["bytes_used"] == 0


def test_memory_ttl_expiry() -> None:
    cache = memory_only(ttl_seconds=0.2)
    cache.put("a", response("a"))
    cache.put("b", response("b"))
    assert cache.get("a")[1] == "hit-memory"
    time.sleep(0.3)

    assert cache.get("a")[1] == "miss"
    stats = cache.stats()[MEMORY_TIER]
    assert stats["total_items"] == 0
    assert cache.counters[MEMORY_TIER].expirations == 2


def test_memory_expiry_counted_by_usage() -> None:
    cache = memory_only(ttl_seconds=0.2)
    for key in ("a", "b", "c"):
        cache.put(key, response(key))
    time.sleep(0.3)

    assert cache.memory_usage() == (0, 0, 0.0)
    assert cache.counters[MEMORY_TIER].expirations == 3


def test_memory_average_age() -> None:
    cache = memory_only()
    cache.put("a", response("a"))
    time.sleep(0.2)
    stats = cache.stats()[MEMORY_TIER]
    assert stats["average_age_seconds"] >= 0.2
    assert stats["average_age_seconds"] < 5


def test_memory_clear_not_eviction() -> None:
    cache = memory_only()
    cache.put("a", response("a"))
    cache.put("b", response("b"))
    cache.clear()
    assert cache.get("a")[1] == "miss"
    assert cache.counters[MEMORY_TIER].evictions == 0


def test_event_hook_receives_events() -> None:
    events: list[tuple[str, str]] = []
    cache = ResultCache(
        CacheSettings(disk_bytes=0, memory_entries=1), on_event=lambda *e: events.append(e)
    )
    cache.put("a", response("a"))
    cache.get("a")
    cache.get("b")
    cache.put("b", response("b"))
    assert events == [(MEMORY_TIER, "hit"), (MEMORY_TIER, "miss"), (MEMORY_TIER, "eviction")]


# Disk tier


def test_disk_hit_promotes_to_memory(tmp_path: Path) -> None:
    writer = ResultCache(CacheSettings(disk_dir=tmp_path))
    writer.put("a", response("alpha"), table="g/t")
    reader = ResultCache(CacheSettings(disk_dir=tmp_path))

    first, first_where = reader.get("a")
    second, second_where = reader.get("a")
    assert first_where == "hit-disk"
    assert first == response("alpha")
    assert second_where == "hit-memory"
    assert second == response("alpha")
    assert reader.counters[DISK_TIER].hits == 1
    assert reader.counters[MEMORY_TIER].misses == 1


def test_disk_survives_restart(tmp_path: Path) -> None:
    first = ResultCache(CacheSettings(disk_dir=tmp_path))
    first.put("a", response("small"))
    first.put("b", response("large", size=FILE_VALUE_BYTES + 10))
    first.close()

    restarted = ResultCache(CacheSettings(disk_dir=tmp_path))
    assert restarted.get("a") == (response("small"), "hit-disk")
    assert restarted.get("b") == (response("large", size=FILE_VALUE_BYTES + 10), "hit-disk")
    assert restarted.stats()[DISK_TIER]["total_items"] == 2


def test_brief_read_gives_up_when_locked(tmp_path: Path) -> None:
    cache = disk_only(tmp_path)
    cache.put("a", response("alpha"))
    writer = sqlite3.connect(tmp_path / diskcache.core.DBNAME, isolation_level=None)
    writer.execute("BEGIN IMMEDIATE")
    try:
        inline = cache.disk_entry_is_inline("a")
        with pytest.raises(DiskTierBusy):
            cache.get_disk("a", brief=True)
    finally:
        writer.execute("ROLLBACK")
        writer.close()

    assert inline is True
    assert cache.get_disk("a", brief=True) == response("alpha")
    assert cache.counters[DISK_TIER].hits == 1
    assert cache.counters[DISK_TIER].misses == 0


def test_large_entry_disk_only(tmp_path: Path) -> None:
    cache = ResultCache(CacheSettings(disk_dir=tmp_path, memory_max_entry_bytes=1000))
    cache.put("big", response("big", size=2000))
    cache.put("small", response("small", size=1000))

    assert cache.get("big")[1] == "hit-disk"
    assert cache.get("big")[1] == "hit-disk"
    assert cache.get("small")[1] == "hit-memory"
    assert cache.stats()[MEMORY_TIER]["total_items"] == 1


def test_huge_entry_not_cached(tmp_path: Path) -> None:
    cache = ResultCache(CacheSettings(disk_dir=tmp_path, disk_max_entry_bytes=1000))
    cache.put("huge", response("huge", size=2000))

    assert cache.get("huge") == (None, "miss")
    assert cache.stats()[DISK_TIER]["total_items"] == 0
    assert cache.stats()[MEMORY_TIER]["total_items"] == 0


def test_disk_size_bound_evicts(tmp_path: Path) -> None:
    body_bytes = FILE_VALUE_BYTES + 1000
    entry_bytes = len(encode_envelope(response("k0", size=body_bytes)))
    bound = 8 * body_bytes
    cache = disk_only(tmp_path, disk_bytes=bound)
    empty_bytes = cache.stats()[DISK_TIER]["bytes_used"]
    fit = (bound - empty_bytes) // entry_bytes
    assert fit == 7

    cache.put("k0", response("k0", size=body_bytes))
    for index in range(1, 30):
        cache.get("k0")
        cache.put(f"k{index}", response(f"k{index}", size=body_bytes))

    stats = cache.stats()[DISK_TIER]
    assert stats["bytes_used"] == empty_bytes + fit * entry_bytes
    assert stats["total_items"] == fit
    assert cache.counters[DISK_TIER].evictions == 30 - fit
    assert cache.get("k0")[1] == "hit-disk"
    assert cache.get("k1")[1] == "miss"
    assert cache.get("k23")[1] == "miss"
    assert [cache.get(f"k{index}")[1] for index in range(24, 30)] == ["hit-disk"] * 6


def test_reclaim_table_deletes_tagged(tmp_path: Path) -> None:
    cache = disk_only(tmp_path)
    cache.put("a1", response("a1"), table="g/a")
    cache.put("a2", response("a2", size=FILE_VALUE_BYTES + 1), table="g/a")
    cache.put("b1", response("b1"), table="g/b")
    cache.put("untagged", response("untagged"))

    assert cache.reclaim_table("g/a") == 2
    assert cache.get("a1")[1] == "miss"
    assert cache.get("a2")[1] == "miss"
    assert cache.get("b1")[1] == "hit-disk"
    assert cache.get("untagged")[1] == "hit-disk"
    assert list(tmp_path.rglob("*.val")) == []


def test_clear_empties_both_tiers(tmp_path: Path) -> None:
    cache = ResultCache(CacheSettings(disk_dir=tmp_path))
    cache.put("a", response("a"))
    cache.clear()
    assert cache.get("a") == (None, "miss")
    assert cache.stats()[DISK_TIER]["total_items"] == 0


def test_stats_report_every_field(tmp_path: Path) -> None:
    cache = ResultCache(CacheSettings(disk_dir=tmp_path, memory_entries=4))
    cache.put("a", response("a", size=100))
    stats = cache.stats()
    for tier in (MEMORY_TIER, DISK_TIER):
        for name in ("total_items", "max_size", "bytes_used", "max_bytes", "average_age_seconds"):
            assert name in stats[tier], f"{tier} lacks {name}"
    assert stats[MEMORY_TIER]["total_items"] == 1
    assert stats[MEMORY_TIER]["max_size"] == 4
    assert stats[MEMORY_TIER]["bytes_used"] == 100 + ENTRY_OVERHEAD
    assert stats[DISK_TIER]["total_items"] == 1


# Corrupt and foreign disk entries


def test_flipped_sqlite_value_dropped(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    writer = disk_only(tmp_path)
    writer.put("a", response("payload-marker", size=200))
    writer.close()
    database = tmp_path / diskcache.core.DBNAME
    content = bytearray(database.read_bytes())
    position = content.find(b"payload-marker")
    assert position > 0
    content[position] ^= 0xFF
    database.write_bytes(bytes(content))

    reader = disk_only(tmp_path)
    with caplog.at_level(logging.WARNING, logger="sqlstore.cache"):
        assert reader.get("a") == (None, "miss")
    assert "checksum mismatch" in caplog.text
    assert reader.stats()[DISK_TIER]["total_items"] == 0


def test_flipped_value_file_dropped(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    cache = disk_only(tmp_path)
    cache.put("a", response("file-marker", size=FILE_VALUE_BYTES + 100))
    (value_file,) = tmp_path.rglob("*.val")
    content = bytearray(value_file.read_bytes())
    content[-1] ^= 0x01
    value_file.write_bytes(bytes(content))

    with caplog.at_level(logging.WARNING, logger="sqlstore.cache"):
        assert cache.get("a") == (None, "miss")
    assert "checksum mismatch" in caplog.text
    assert not value_file.exists()

    cache.put("a", response("recomputed"))
    assert cache.get("a") == (response("recomputed"), "hit-disk")


def test_truncated_value_file_dropped(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    cache = disk_only(tmp_path)
    cache.put("a", response("file-marker", size=FILE_VALUE_BYTES + 100))
    (value_file,) = tmp_path.rglob("*.val")
    value_file.write_bytes(value_file.read_bytes()[:20])

    with caplog.at_level(logging.WARNING, logger="sqlstore.cache"):
        assert cache.get("a") == (None, "miss")
    assert "dropping corrupt cache entry" in caplog.text
    assert cache.counters[DISK_TIER].misses == 1


def test_missing_value_file_miss(tmp_path: Path) -> None:
    cache = disk_only(tmp_path)
    cache.put("a", response("file-marker", size=FILE_VALUE_BYTES + 100))
    (value_file,) = tmp_path.rglob("*.val")
    value_file.unlink()
    assert cache.get("a") == (None, "miss")


def test_pickle_payload_really_executes(tmp_path: Path) -> None:
    marker = tmp_path / "created-by-unpickling"
    pickle.loads(pickle.dumps(CreateFileOnUnpickle(marker)))
    assert marker.exists()


def test_pickle_row_never_unpickled(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    cache_dir = tmp_path / "cache"
    cache = disk_only(cache_dir)
    marker = tmp_path / "created-by-unpickling"
    payload = pickle.dumps(CreateFileOnUnpickle(marker))
    with open_rows(cache_dir) as rows:
        rows.execute(
            "INSERT INTO Cache (key, raw, store_time, access_time, size, mode, value)"
            " VALUES (?, 1, ?, ?, 0, ?, ?)",
            ("a", time.time(), time.time(), diskcache.core.MODE_PICKLE, payload),
        )

    with caplog.at_level(logging.WARNING, logger="sqlstore.cache"):
        assert cache.get("a") == (None, "miss")
    assert not marker.exists()
    assert "storage mode 4" in caplog.text
    assert cache.stats()[DISK_TIER]["total_items"] == 0


def test_pickle_file_row_never_unpickled(tmp_path: Path) -> None:
    cache_dir = tmp_path / "cache"
    cache = disk_only(cache_dir)
    marker = tmp_path / "created-by-unpickling"
    (cache_dir / "ab").mkdir()
    (cache_dir / "ab" / "payload.val").write_bytes(pickle.dumps(CreateFileOnUnpickle(marker)))
    with open_rows(cache_dir) as rows:
        rows.execute(
            "INSERT INTO Cache (key, raw, store_time, access_time, size, mode, filename)"
            " VALUES (?, 1, ?, ?, 0, ?, ?)",
            ("a", time.time(), time.time(), diskcache.core.MODE_PICKLE, "ab/payload.val"),
        )

    assert cache.get("a") == (None, "miss")
    assert not marker.exists()


@pytest.mark.parametrize("value", ["plain text", 42, 1.5, {"a": 1}], ids=repr)
def test_foreign_value_rejected(tmp_path: Path, value: object) -> None:
    cache = disk_only(tmp_path)
    foreign = diskcache.Cache(str(tmp_path))
    foreign["a"] = value
    foreign.close()

    assert cache.get("a") == (None, "miss")
    assert cache.counters[DISK_TIER].misses == 1
    cache.put("a", response("ours"))
    assert cache.get("a") == (response("ours"), "hit-disk")


def test_foreign_envelope_rejected(tmp_path: Path) -> None:
    cache = disk_only(tmp_path)
    foreign = diskcache.Cache(str(tmp_path))
    foreign["a"] = b"not an envelope"
    foreign.close()
    assert cache.get("a") == (None, "miss")


@pytest.mark.parametrize("relative", [False, True], ids=["absolute", "relative"])
def test_outside_file_never_touched(tmp_path: Path, relative: bool) -> None:
    cache_dir = tmp_path / "cache"
    cache = disk_only(cache_dir)
    outside = tmp_path / "outside.val"
    outside.write_bytes(b"a file that is not the cache's")
    filename = "../outside.val" if relative else str(outside)
    with open_rows(cache_dir) as rows:
        rows.execute(
            "INSERT INTO Cache (key, raw, store_time, access_time, size, mode, filename)"
            " VALUES (?, 1, ?, ?, 30, ?, ?)",
            ("a", time.time(), time.time(), diskcache.core.MODE_BINARY, filename),
        )

    assert cache.get("a") == (None, "miss")
    assert outside.read_bytes() == b"a file that is not the cache's"
    cache.clear()
    assert outside.exists()


def test_disk_rejects_non_bytes(tmp_path: Path) -> None:
    cache = disk_only(tmp_path)
    with pytest.raises(TypeError):
        cache._disk.set("a", "text")
    with pytest.raises(TypeError):
        cache._disk.set(1, b"bytes")


# Several processes on one disk tier


def _write_and_read(directory: str, worker: int, count: int) -> list[str]:
    """Store `count` entries, then read every other worker's entries; return failures."""
    cache = ResultCache(CacheSettings(memory_entries=0, disk_dir=Path(directory)))
    for index in range(count):
        size = FILE_VALUE_BYTES + 10 if index % 3 == 0 else 500
        cache.put(f"w{worker}-{index}", response(f"w{worker}-{index}", size=size), table="g/t")
    failures = []
    for other in range(4):
        for index in range(count):
            found, where = cache.get(f"w{other}-{index}")
            if found is not None and not found.body.startswith(f"w{other}-{index}.".encode()):
                failures.append(f"w{other}-{index}: wrong body")
    cache.close()
    return failures


def test_concurrent_disk_writers(tmp_path: Path) -> None:
    count = 25
    context = multiprocessing.get_context("fork")
    with context.Pool(4) as pool:
        results = pool.starmap(_write_and_read, [(str(tmp_path), w, count) for w in range(4)])
    assert results == [[], [], [], []]

    cache = disk_only(tmp_path)
    assert cache.stats()[DISK_TIER]["total_items"] == 4 * count
    for worker in range(4):
        for index in range(count):
            size = FILE_VALUE_BYTES + 10 if index % 3 == 0 else 500
            expected = response(f"w{worker}-{index}", size=size)
            assert cache.get(f"w{worker}-{index}") == (expected, "hit-disk")


# Envelope


def test_envelope_round_trip() -> None:
    original = CachedResponse(b"\x00body\xff", "text/csv", {"X-Total-Rows": "3"})
    assert decode_envelope(encode_envelope(original)) == original


@settings(max_examples=50, deadline=None)
@given(
    body=st.binary(max_size=2000),
    media_type=st.text(max_size=40),
    headers=st.dictionaries(st.text(max_size=20), st.text(max_size=40), max_size=5),
)
def test_envelope_round_trip_any(body: bytes, media_type: str, headers: dict[str, str]) -> None:
    original = CachedResponse(body, media_type, headers)
    assert decode_envelope(encode_envelope(original)) == original


def test_envelope_layout() -> None:
    data = encode_envelope(CachedResponse(b"body", JSON, {}))
    header = b'{"media_type":"application/json","headers":{}}'
    payload = HEADER_LENGTH.pack(len(header)) + header + b"body"
    assert data == ENVELOPE_MAGIC + hashlib.sha256(payload).digest() + payload


@pytest.mark.parametrize("position", [0, len(ENVELOPE_MAGIC), len(ENVELOPE_MAGIC) + 40, -1])
def test_envelope_flipped_byte(position: int) -> None:
    data = bytearray(encode_envelope(CachedResponse(b"body", JSON, {})))
    data[position] ^= 0x01
    with pytest.raises(CorruptEntry):
        decode_envelope(bytes(data))


@pytest.mark.parametrize("length", [0, 5, len(ENVELOPE_MAGIC), len(ENVELOPE_MAGIC) + 32, 60])
def test_envelope_truncated(length: int) -> None:
    data = encode_envelope(CachedResponse(b"body", JSON, {}))
    with pytest.raises(CorruptEntry):
        decode_envelope(data[:length])


@pytest.mark.parametrize(
    "header",
    [b"not json", b"[1, 2]", b'{"media_type": "x"}', b'{"media_type": "x", "headers": [1]}'],
)
def test_envelope_bad_header(header: bytes) -> None:
    payload = HEADER_LENGTH.pack(len(header)) + header + b"body"
    data = ENVELOPE_MAGIC + hashlib.sha256(payload).digest() + payload
    with pytest.raises(CorruptEntry):
        decode_envelope(data)


def test_envelope_header_length_overrun() -> None:
    header = b'{"media_type":"x","headers":{}}'
    payload = HEADER_LENGTH.pack(len(header) + 1000) + header
    data = ENVELOPE_MAGIC + hashlib.sha256(payload).digest() + payload
    with pytest.raises(CorruptEntry):
        decode_envelope(data)


# Keys


def test_cache_key_exact_digest() -> None:
    key = cache_key("page", {"name": "t", "group": "g"}, {"g/t": "1@x/0"})
    canonical = (
        b'{"kind":"page","request":{"group":"g","name":"t"},"sqlstore":"%s",'
        b'"versions":{"g/t":"1@x/0"}}' % __version__.encode()
    )
    assert key == hashlib.sha256(canonical).hexdigest()


def test_cache_key_ignores_order() -> None:
    first = cache_key("sql", {"sql": "q", "params": {"a": 1, "b": 2}}, {"g/a": "1", "g/b": "2"})
    second = cache_key("sql", {"params": {"b": 2, "a": 1}, "sql": "q"}, {"g/b": "2", "g/a": "1"})
    assert first == second


@pytest.mark.parametrize(
    ("kind", "request_form", "versions"),
    [
        ("batch", {"sql": "q", "params": {"a": 1}}, {"g/t": "1"}),
        ("sql", {"sql": "q2", "params": {"a": 1}}, {"g/t": "1"}),
        ("sql", {"sql": "q", "params": {"a": 1.0}}, {"g/t": "1"}),
        ("sql", {"sql": "q", "params": {"a": "1"}}, {"g/t": "1"}),
        ("sql", {"sql": "q", "params": {"a": True}}, {"g/t": "1"}),
        ("sql", {"sql": "q", "params": {"a": 1}}, {"g/t": "2"}),
        ("sql", {"sql": "q", "params": {"a": 1}}, {"g/u": "1"}),
        ("sql", {"sql": "q", "params": {"a": 1}}, {"g/t": "1", "g/u": "1"}),
        ("sql", {"sql": "q", "params": {"a": 1}}, {}),
    ],
)
def test_cache_key_sensitive(kind: str, request_form: dict, versions: dict) -> None:
    base = cache_key("sql", {"sql": "q", "params": {"a": 1}}, {"g/t": "1"})
    assert cache_key(kind, request_form, versions) != base


def test_cache_key_big_integer() -> None:
    big = cache_key("sql", {"params": {"a": 2**80}}, {})
    assert big == cache_key("sql", {"params": {"a": 2**80}}, {})
    assert big != cache_key("sql", {"params": {"a": 2**80 + 1}}, {})
    assert len(big) == 64


def test_disk_entry_inline_by_size(tmp_path: Path) -> None:
    cache = disk_only(tmp_path)
    cache.put("small", response("s", size=1_000))
    cache.put("large", response("l", size=100_000))

    assert cache.disk_entry_is_inline("small")
    assert not cache.disk_entry_is_inline("large")
    assert not cache.disk_entry_is_inline("missing")
    # Both are still read whole from the disk tier.
    assert len(cache.get_disk("large").body) == 100_000


def test_disk_entry_inline_without_disk_tier() -> None:
    cache = memory_only()
    cache.put("small", response("s", size=1_000))

    assert not cache.disk_entry_is_inline("small")
