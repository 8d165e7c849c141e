"""Sorted storage of feature tables and the numpy search of point-in-time joins over it.

Every join here runs with join_method "duckdb" and with "sorted" or "auto", and the tables must
be equal, types included. test_point_in_time.py checks both engines against a brute-force oracle.
"""

from __future__ import annotations

import decimal
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from sqlstore.errors import InvalidInput
from sqlstore.reader import read_page
from sqlstore.store import ENTRY_METADATA_KEY, FeatureStore, TableDefinition

T0 = datetime(2024, 1, 1, tzinfo=UTC)
UTC_MICROSECONDS = pa.timestamp("us", tz="UTC")


def times(*seconds: float | None) -> pa.Array:
    values = [None if s is None else T0 + timedelta(seconds=s) for s in seconds]
    return pa.array(values, UTC_MICROSECONDS)


@pytest.fixture
def store(tmp_path: Path) -> FeatureStore:
    return FeatureStore(tmp_path / "store")


def write(
    store: FeatureStore, columns: dict[str, Any], mode: str = "overwrite", **definition: Any
) -> None:
    definition.setdefault("entity_key", ["user_id"])
    store.write(
        "user", "scores", pa.table(columns), mode=mode, definition=TableDefinition(**definition)
    )


def stored(store: FeatureStore) -> pa.Table:
    return pq.read_table(store.root / "features" / "user" / "scores.parquet")


def join_both(store: FeatureStore, entities: pa.Table, method: str, **options: Any) -> pa.Table:
    """Return the join with `method` after checking that DuckDB returns the same table."""
    in_duckdb = store.get_historical_features(
        entities, ["user/scores"], join_method="duckdb", **options
    )
    result = store.get_historical_features(entities, ["user/scores"], join_method=method, **options)

    assert result.schema == in_duckdb.schema
    assert result.to_pydict() == in_duckdb.to_pydict()
    return result


# Stored order


def test_write_sorts_by_key_and_time(store: FeatureStore) -> None:
    write(
        store,
        {"user_id": [2, 1, 2, 1], "event_timestamp": times(5, 9, 1, 3), "score": [1, 2, 3, 4]},
    )

    assert stored(store)["score"].to_pylist() == [4, 2, 3, 1]
    assert store.registry.get("user", "scores").sorted_by == ["user_id", "event_timestamp"]


def test_sort_keeps_write_order_of_ties(store: FeatureStore) -> None:
    write(
        store,
        {"user_id": [1, 0, 1, 1], "event_timestamp": times(5, 5, 5, 2), "score": [1, 2, 3, 4]},
    )

    assert stored(store)["score"].to_pylist() == [2, 4, 1, 3]


def test_append_sorts_whole_table(store: FeatureStore) -> None:
    write(store, {"user_id": [1, 2], "event_timestamp": times(5, 5), "score": [1, 2]})
    write(
        store,
        {"user_id": [2, 1, 0], "event_timestamp": times(5, 1, 9), "score": [3, 4, 5]},
        mode="append",
    )

    # The appended tie (2, 5 s) follows the stored one: write order survives the sort.
    assert stored(store)["score"].to_pylist() == [5, 4, 1, 2, 3]
    assert store.registry.get("user", "scores").sorted_by == ["user_id", "event_timestamp"]


def test_string_keys_and_created_sorted(store: FeatureStore) -> None:
    write(
        store,
        {
            "user_id": ["b", "a", "b", "b"],
            "event_timestamp": times(5, 7, 5, 5),
            "created": times(9, 1, 3, 9),
            "score": [1, 2, 3, 4],
        },
        created_timestamp_column="created",
    )

    assert stored(store)["score"].to_pylist() == [2, 3, 1, 4]
    entry = store.registry.get("user", "scores")
    assert entry.sorted_by == ["user_id", "event_timestamp", "created"]


def test_composite_key_sorted_column_by_column(store: FeatureStore) -> None:
    write(
        store,
        {
            "user_id": [2, 1, 1],
            "item": ["a", "b", "a"],
            "event_timestamp": times(1, 2, 3),
            "score": [1, 2, 3],
        },
        entity_key=["user_id", "item"],
    )

    assert stored(store)["score"].to_pylist() == [3, 2, 1]


def test_static_table_keeps_write_order(store: FeatureStore) -> None:
    write(store, {"user_id": [3, 1, 2], "score": [1, 2, 3]})

    assert stored(store)["score"].to_pylist() == [1, 2, 3]
    assert store.registry.get("user", "scores").sorted_by == []


def test_footer_records_sort_order(store: FeatureStore) -> None:
    write(store, {"user_id": [2, 1], "event_timestamp": times(1, 2), "score": [1, 2]})

    metadata = pq.read_schema(store.root / "features" / "user" / "scores.parquet").metadata
    footer_entry = orjson.loads(metadata[ENTRY_METADATA_KEY])
    assert footer_entry["sorted_by"] == ["user_id", "event_timestamp"]


def test_page_without_order_in_storage_order(store: FeatureStore) -> None:
    write(store, {"user_id": [2, 1, 2], "event_timestamp": times(1, 2, 0), "score": [1, 2, 3]})

    page = read_page(store, "user", "scores")
    ordered = read_page(store, "user", "scores", order_by="-score")

    assert page.table["score"].to_pylist() == [2, 3, 1]
    assert ordered.table["score"].to_pylist() == [3, 2, 1]


def test_extreme_integer_keys_sorted(store: FeatureStore) -> None:
    keys = [2**62, -(2**62), 0, 2**62]
    write(store, {"user_id": keys, "event_timestamp": times(1, 2, 3, 0), "score": [1, 2, 3, 4]})

    assert stored(store)["score"].to_pylist() == [2, 3, 4, 1]


# The numpy search against DuckDB


@pytest.fixture
def scores(store: FeatureStore) -> FeatureStore:
    """user 1 scored 10 at 10 s, 20 at 20 s and 21 at 20 s (written later); user 2 30 at 15 s."""
    write(
        store,
        {
            "user_id": [1, 2, 1, 1],
            "event_timestamp": times(10, 15, 20, 20),
            "score": [10, 30, 20, 21],
        },
    )
    return store


def scores_spine() -> pa.Table:
    return pa.table(
        {
            "user_id": pa.array([1, 1, 2, None, 1, 3, 1, 2], pa.int64()),
            "event_timestamp": times(9, 10, 15, 15, 25, 15, None, 14.999999),
            "label": list("abcdefgh"),
        }
    )


def test_sorted_search_exact_values(scores: FeatureStore) -> None:
    result = join_both(scores, scores_spine(), "sorted")

    assert result["score"].to_pylist() == [None, 10, 30, None, 21, None, None, None]
    assert result["label"].to_pylist() == list("abcdefgh")


def test_sorted_search_strict_and_ttl(scores: FeatureStore) -> None:
    strict = join_both(scores, scores_spine(), "sorted", inclusive=False)
    expiring = join_both(scores, scores_spine(), "sorted", ttl_seconds={"user/scores": 5})

    assert strict["score"].to_pylist() == [None, None, None, None, 21, None, None, None]
    assert expiring["score"].to_pylist() == [None, 10, 30, None, 21, None, None, None]


def test_sorted_search_ttl_boundary(scores: FeatureStore) -> None:
    entities = pa.table({"user_id": [1, 1], "event_timestamp": times(25, 25.000001)})

    result = join_both(scores, entities, "sorted", ttl_seconds={"user/scores": 5})

    assert result["score"].to_pylist() == [21, None]


def test_sorted_search_string_keys(store: FeatureStore) -> None:
    write(
        store, {"user_id": ["b", "a", "b"], "event_timestamp": times(1, 2, 3), "score": [1, 2, 3]}
    )
    entities = pa.table(
        {
            "user_id": pa.array(["b", "a", None, "c", "b"]).dictionary_encode(),
            "event_timestamp": times(2, 2, 2, 2, 3),
        }
    )

    result = join_both(store, entities, "sorted")

    assert result["score"].to_pylist() == [1, 2, None, None, 3]


def test_sorted_search_whole_float_keys(scores: FeatureStore) -> None:
    entities = pa.table({"user_id": [1.0, None, 2.0], "event_timestamp": times(30, 30, 30)})

    result = join_both(scores, entities, "sorted")

    assert result["score"].to_pylist() == [21, None, 30]


def test_sorted_search_null_key_column(scores: FeatureStore) -> None:
    entities = pa.table({"user_id": pa.nulls(2), "event_timestamp": times(30, 30)})

    result = join_both(scores, entities, "sorted")

    assert result["score"].to_pylist() == [None, None]


def test_sorted_search_nanosecond_spine(scores: FeatureStore) -> None:
    instants = [T0 + timedelta(seconds=20), T0 + timedelta(seconds=20)]
    nanoseconds = pa.array(instants, UTC_MICROSECONDS).cast(pa.timestamp("ns", tz="UTC"))
    nanoseconds = pa.array([nanoseconds[0].value - 1, nanoseconds[1].value], pa.int64()).cast(
        pa.timestamp("ns", tz="UTC")
    )
    entities = pa.table({"user_id": [1, 1], "event_timestamp": nanoseconds})

    result = join_both(scores, entities, "sorted")

    assert result["score"].to_pylist() == [10, 21]


def test_sorted_search_reads_several_row_groups(scores: FeatureStore) -> None:
    path = scores.root / "features" / "user" / "scores.parquet"
    pq.write_table(pq.read_table(path), path, row_group_size=1)
    assert pq.ParquetFile(path).num_row_groups == 4

    result = join_both(scores, scores_spine(), "sorted")

    assert result["score"].to_pylist() == [None, 10, 30, None, 21, None, None, None]


def test_auto_mixes_engines_per_table(scores: FeatureStore) -> None:
    scores.write(
        "user",
        "ranks",
        pa.table(
            {"user_id": [1, 1], "item": ["x", "y"], "event_timestamp": times(1, 1), "rank": [5, 6]}
        ),
        definition=TableDefinition(entity_key=["user_id", "item"]),
    )
    entities = pa.table({"user_id": [1, 2], "item": ["y", "x"], "event_timestamp": times(20, 20)})
    features = ["user/ranks:rank", "user/scores"]

    auto = scores.get_historical_features(entities, features, join_method="auto")
    in_duckdb = scores.get_historical_features(entities, features, join_method="duckdb")

    assert auto.column_names == ["user_id", "item", "event_timestamp", "rank", "score"]
    assert auto.to_pydict() == in_duckdb.to_pydict()
    assert auto["rank"].to_pylist() == [6, None]
    assert auto["score"].to_pylist() == [21, 30]


def test_feature_types_match_duckdb(store: FeatureStore) -> None:
    columns = {
        "user_id": [2, 1, 1],
        "event_timestamp": times(3, 1, 2),
        "small": pa.array([1, 2, None], pa.int8()),
        "ratio": pa.array([0.5, None, 1.5], pa.float32()),
        "flag": [True, None, False],
        "name": ["x", "y", None],
        "day": [date(2024, 1, 1), None, date(2024, 1, 3)],
        "local_time": pa.array([1, 2, 3], pa.timestamp("ms", tz="Asia/Kolkata")),
        "nanos": pa.array([1, 2, 3], pa.timestamp("ns", tz="UTC")),
        "naive": pa.array([1, 2, 3], pa.timestamp("us")),
        "items": pa.array([[1, 2], None, []], pa.list_(pa.int64())),
        "blob": [b"a", None, b"c"],
        "amount": pa.array([decimal.Decimal("1.50"), None, None], pa.decimal128(10, 2)),
        "wait": pa.array([1, 2, None], pa.duration("us")),
    }
    write(store, columns)
    entities = pa.table({"user_id": [1, 2, 3, 1], "event_timestamp": times(1, 5, 5, 9)})

    result = join_both(store, entities, "sorted")

    assert result["small"].to_pylist() == [2, 1, None, None]


def test_invalid_input_raised_by_both(scores: FeatureStore) -> None:
    entities = pa.table({"user_id": ["one"], "event_timestamp": times(1)})

    for method in ("sorted", "duckdb"):
        with pytest.raises(InvalidInput, match="convert the column"):
            scores.get_historical_features(entities, ["user/scores"], join_method=method)


# Where the numpy search does not apply


def rewrite_file(store: FeatureStore, rows: pa.Table, footer_entry: dict[str, Any]) -> None:
    """Replace the stored file by `rows` with `footer_entry` as its footer's registry entry."""
    path = store.root / "features" / "user" / "scores.parquet"
    metadata = {ENTRY_METADATA_KEY: orjson.dumps(footer_entry)}
    pq.write_table(rows.replace_schema_metadata(metadata), path)


def test_older_unsorted_file_joins_in_duckdb(scores: FeatureStore) -> None:
    path = scores.root / "features" / "user" / "scores.parquet"
    footer_entry = orjson.loads(pq.read_schema(path).metadata[ENTRY_METADATA_KEY])
    del footer_entry["sorted_by"]
    # The rows in write order, as a file written before tables were sorted stores them, and
    # an entry file of that time, which had no sorted_by either.
    rows = stored(scores).take([0, 3, 1, 2])
    rewrite_file(scores, rows, footer_entry)
    entry_path = scores.root / "registry" / "user" / "scores.json"
    entry = orjson.loads(entry_path.read_bytes())
    del entry["sorted_by"]
    entry_path.write_bytes(orjson.dumps(entry))

    result = join_both(scores, scores_spine(), "auto")

    assert result["score"].to_pylist() == [None, 10, 30, None, 21, None, None, None]
    with pytest.raises(InvalidInput, match="sorted by nothing"):
        scores.get_historical_features(scores_spine(), ["user/scores"], join_method="sorted")


def test_file_out_of_recorded_order_joins_in_duckdb(scores: FeatureStore) -> None:
    path = scores.root / "features" / "user" / "scores.parquet"
    footer_entry = orjson.loads(pq.read_schema(path).metadata[ENTRY_METADATA_KEY])
    rewrite_file(scores, stored(scores).take([1, 0, 3, 2]), footer_entry)

    with pytest.raises(InvalidInput, match="do not ascend"):
        scores.get_historical_features(scores_spine(), ["user/scores"], join_method="sorted")
    in_duckdb = scores.get_historical_features(
        scores_spine(), ["user/scores"], join_method="duckdb"
    )
    auto = scores.get_historical_features(scores_spine(), ["user/scores"])
    assert auto.to_pydict() == in_duckdb.to_pydict()


def test_sorted_rejects_composite_key(store: FeatureStore) -> None:
    write(
        store,
        {"user_id": [1], "item": ["x"], "event_timestamp": times(1), "score": [1]},
        entity_key=["user_id", "item"],
    )
    entities = pa.table({"user_id": [1], "item": ["x"], "event_timestamp": times(2)})

    with pytest.raises(InvalidInput, match="composite key"):
        store.get_historical_features(entities, ["user/scores"], join_method="sorted")


def test_sorted_rejects_numeric_strings(scores: FeatureStore) -> None:
    entities = pa.table({"user_id": ["1"], "event_timestamp": times(30)})

    with pytest.raises(InvalidInput, match="not compared in numpy"):
        scores.get_historical_features(entities, ["user/scores"], join_method="sorted")
    assert join_both(scores, entities, "auto")["score"].to_pylist() == [21]


def test_uint64_keys_beyond_int64_join_in_duckdb(store: FeatureStore) -> None:
    keys = pa.array([2**64 - 1, 5], pa.uint64())
    write(store, {"user_id": keys, "event_timestamp": times(1, 1), "score": [1, 2]})
    entities = pa.table({"user_id": keys, "event_timestamp": times(2, 2)})

    result = join_both(store, entities, "auto")

    assert result["score"].to_pylist() == [1, 2]


def test_invalid_join_method_rejected(scores: FeatureStore) -> None:
    with pytest.raises(InvalidInput, match="invalid join_method 'numpy'"):
        scores.get_historical_features(scores_spine(), ["user/scores"], join_method="numpy")
