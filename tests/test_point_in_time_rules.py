"""One hand-written case per rule of the point-in-time join, with exact expected values."""

from __future__ import annotations

import functools
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from sqlstore.errors import InvalidInput, NotFound
from sqlstore.store import FeatureStore, TableDefinition

T0 = datetime(2024, 1, 1, tzinfo=UTC)
UTC_MICROSECONDS = pa.timestamp("us", tz="UTC")


def at(seconds: float) -> datetime:
    """Return T0 plus `seconds` (microsecond precision)."""
    return T0 + timedelta(seconds=seconds)


def times(*seconds: float | None) -> pa.Array:
    return pa.array([None if s is None else at(s) for s in seconds], UTC_MICROSECONDS)


def write(
    store: FeatureStore,
    reference: str,
    columns: dict[str, Any],
    *,
    mode: str = "overwrite",
    **definition: Any,
) -> None:
    group, name = reference.split("/")
    definition.setdefault("entity_key", ["user_id"])
    store.write(group, name, pa.table(columns), mode=mode, definition=TableDefinition(**definition))


def spine(user_ids: list[Any], seconds: list[float | None], **extra: Any) -> pa.Table:
    return pa.table({"user_id": user_ids, "event_timestamp": times(*seconds), **extra})


@pytest.fixture(params=["auto", "duckdb"])
def store(tmp_path: Path, request: pytest.FixtureRequest) -> FeatureStore:
    """Return a store whose joins use one join method, so that every rule is checked both with
    the numpy search of sorted tables ("auto" picks it where it applies) and in DuckDB."""
    store = FeatureStore(tmp_path / "store")
    store.get_historical_features = functools.partial(
        store.get_historical_features, join_method=request.param
    )
    return store


@pytest.fixture
def scores(store: FeatureStore) -> FeatureStore:
    """Write user/scores: user 1 scored 10 at t=10 s and 20 at 20 s, user 2 scored 30 at 15 s."""
    write(
        store,
        "user/scores",
        {"user_id": [1, 1, 2], "event_timestamp": times(10, 20, 15), "score": [10, 20, 30]},
    )
    return store


def scores_at(store: FeatureStore, entities: pa.Table | pd.DataFrame, **options: Any) -> list:
    return store.get_historical_features(entities, ["user/scores"], **options)["score"].to_pylist()


# Rows and order


def test_output_keeps_order_and_duplicates(scores: FeatureStore) -> None:
    entities = spine([2, 1, 1, 2, 1], [16, 25, 25, 16, 11])

    result = scores.get_historical_features(entities, ["user/scores"])

    assert result.column_names == ["user_id", "event_timestamp", "score"]
    assert result["user_id"].to_pylist() == [2, 1, 1, 2, 1]
    assert result["event_timestamp"].to_pylist() == [at(16), at(25), at(25), at(16), at(11)]
    assert result["score"].to_pylist() == [30, 20, 20, 30, 10]


def test_unmatched_row_kept_with_nulls(scores: FeatureStore) -> None:
    entities = spine([1, 3, 2], [5, 30, 14])

    assert scores_at(scores, entities) == [None, None, None]


def test_extra_columns_carried_through(scores: FeatureStore) -> None:
    entities = spine([1], [12], label=["clicked"], weight=[0.5])

    result = scores.get_historical_features(entities, ["user/scores"])

    assert result.column_names == ["user_id", "event_timestamp", "label", "weight", "score"]
    assert result["label"].to_pylist() == ["clicked"]
    assert result["weight"].to_pylist() == [0.5]


def test_empty_entity_table_gives_no_rows(scores: FeatureStore) -> None:
    entities = spine([1], [12]).slice(0, 0)

    result = scores.get_historical_features(entities, ["user/scores"])

    assert result.num_rows == 0
    assert result.column_names == ["user_id", "event_timestamp", "score"]


# Which row matches


def test_latest_row_at_or_before_wins(scores: FeatureStore) -> None:
    entities = spine([1, 1, 1], [19.999999, 20, 1000])

    assert scores_at(scores, entities) == [10, 20, 20]


def test_strict_join_skips_equal_timestamp(scores: FeatureStore) -> None:
    entities = spine([1, 1, 1], [20, 20.000001, 10])

    assert scores_at(scores, entities, inclusive=False) == [10, 20, None]


def test_static_table_takes_last_written_row(store: FeatureStore) -> None:
    write(store, "user/profile", {"user_id": [1, 2, 1], "country": ["fr", "de", "nl"]})
    write(store, "user/profile", {"user_id": [2], "country": ["at"]}, mode="append")
    entities = pa.table({"user_id": [1, 2, 3]})

    result = store.get_historical_features(entities, ["user/profile"])

    assert result["country"].to_pylist() == ["nl", "at", None]


def test_static_table_ignores_entity_time(store: FeatureStore) -> None:
    write(store, "user/profile", {"user_id": [1], "country": ["fr"]})
    entities = spine([1, 1], [-10_000, None])

    result = store.get_historical_features(entities, ["user/profile"])

    assert result["country"].to_pylist() == ["fr", "fr"]


# Ties on one key and timestamp


def test_created_timestamp_breaks_ties(store: FeatureStore) -> None:
    write(
        store,
        "user/scores",
        {
            "user_id": [1, 1, 1],
            "event_timestamp": times(10, 10, 10),
            "created": times(30, 50, 40),
            "score": [1, 2, 3],
        },
        created_timestamp_column="created",
    )

    assert scores_at(store, spine([1], [10])) == [2]


def test_later_row_in_file_breaks_ties(store: FeatureStore) -> None:
    write(
        store,
        "user/scores",
        {"user_id": [1, 1, 1], "event_timestamp": times(10, 10, 10), "score": [1, 2, 3]},
    )

    assert scores_at(store, spine([1], [10])) == [3]


def test_later_append_breaks_ties(store: FeatureStore) -> None:
    columns = {"user_id": [1, 1], "event_timestamp": times(10, 10)}
    write(store, "user/scores", {**columns, "score": [1, 2]})
    write(store, "user/scores", {**columns, "score": [3, 4]}, mode="append")
    write(
        store,
        "user/scores",
        {"user_id": [1], "event_timestamp": times(5), "score": [5]},
        mode="append",
    )

    assert scores_at(store, spine([1, 1], [10, 7])) == [4, 5]


def test_created_before_event_skips_late_rows(store: FeatureStore) -> None:
    write(
        store,
        "user/scores",
        {
            "user_id": [1, 1, 1],
            "event_timestamp": times(10, 20, 20),
            "created": times(11, 40, 25),
            "score": [1, 2, 3],
        },
        created_timestamp_column="created",
    )
    entities = spine([1, 1, 1, 1], [24, 25, 40, 10.5])

    assert scores_at(store, entities) == [2, 2, 2, 1]
    assert scores_at(store, entities, created_before_event=True) == [1, 3, 2, None]


def test_created_before_event_on_static_table(store: FeatureStore) -> None:
    write(
        store,
        "user/profile",
        {"user_id": [1, 1], "created": times(10, 30), "country": ["fr", "nl"]},
        created_timestamp_column="created",
    )
    entities = spine([1, 1, 1, 1], [5, 10, 29, 30])

    result = store.get_historical_features(entities, ["user/profile"], created_before_event=True)

    assert result["country"].to_pylist() == [None, "fr", "fr", "nl"]


def test_created_before_event_needs_entity_time(store: FeatureStore) -> None:
    write(
        store,
        "user/profile",
        {"user_id": [1], "created": times(10), "country": ["fr"]},
        created_timestamp_column="created",
    )

    with pytest.raises(InvalidInput, match="no timestamp column 'event_timestamp'"):
        store.get_historical_features(
            pa.table({"user_id": [1]}), ["user/profile"], created_before_event=True
        )


# TTL


@pytest.fixture
def expiring(store: FeatureStore) -> FeatureStore:
    """user/scores with a registered TTL of 60 s: user 1 scored 7 at t=0."""
    write(
        store,
        "user/scores",
        {"user_id": [1], "event_timestamp": times(0), "score": [7]},
        ttl_seconds=60,
    )
    return store


def test_ttl_expired_match_gives_nulls(expiring: FeatureStore) -> None:
    entities = spine([1, 1], [30, 61])

    assert scores_at(expiring, entities) == [7, None]


def test_ttl_boundary_is_inclusive(expiring: FeatureStore) -> None:
    entities = spine([1, 1], [60, 60.000001])

    assert scores_at(expiring, entities) == [7, None]


def test_ttl_one_microsecond_short_drops(expiring: FeatureStore) -> None:
    entities = spine([1], [60])

    assert scores_at(expiring, entities, ttl_seconds={"user/scores": 59.999999}) == [None]


def test_ttl_override_replaces_registered(expiring: FeatureStore) -> None:
    entities = spine([1, 1], [30, 3600])

    assert scores_at(expiring, entities, ttl_seconds={"user/scores": 10}) == [None, None]
    assert scores_at(expiring, entities, ttl_seconds={"user/scores": 3600}) == [7, 7]


@pytest.mark.parametrize("unlimited", [0, None, float("inf")])
def test_unlimited_ttl_values(expiring: FeatureStore, unlimited: float | None) -> None:
    entities = spine([1], [10**8])

    assert scores_at(expiring, entities, ttl_seconds={"user/scores": unlimited}) == [7]


def test_registered_ttl_zero_is_unlimited(store: FeatureStore) -> None:
    write(
        store,
        "user/scores",
        {"user_id": [1], "event_timestamp": times(0), "score": [7]},
        ttl_seconds=0,
    )

    assert scores_at(store, spine([1], [10**8])) == [7]


def test_sub_second_ttl(expiring: FeatureStore) -> None:
    entities = spine([1, 1, 1], [0.25, 0.250001, 0])

    assert scores_at(expiring, entities, ttl_seconds={"user/scores": 0.25}) == [7, None, 7]


def test_sub_microsecond_ttl_rounds_down(expiring: FeatureStore) -> None:
    # 0.0000039 s is less than 4 microseconds, so a match 4 microseconds old has expired.
    entities = spine([1, 1], [0.000004, 0.000003])

    assert scores_at(expiring, entities, ttl_seconds={"user/scores": 0.0000039}) == [None, 7]


def test_nanosecond_ttl_on_nanosecond_times(store: FeatureStore) -> None:
    base = int(T0.timestamp()) * 10**9
    write(
        store,
        "user/scores",
        {
            "user_id": [1],
            "event_timestamp": pa.array([base + 1], pa.timestamp("ns", tz="UTC")),
            "score": [7],
        },
    )
    entities = pa.table(
        {
            "user_id": [1, 1],
            "event_timestamp": pa.array([base + 6, base + 7], pa.timestamp("ns", tz="UTC")),
        }
    )

    assert scores_at(store, entities, ttl_seconds={"user/scores": 5e-9}) == [7, None]


@pytest.mark.parametrize("invalid", [-1, float("nan"), "60"])
def test_invalid_ttl_rejected(expiring: FeatureStore, invalid: Any) -> None:
    with pytest.raises(InvalidInput, match="invalid ttl"):
        scores_at(expiring, spine([1], [1]), ttl_seconds={"user/scores": invalid})


def test_ttl_for_unjoined_table_rejected(expiring: FeatureStore) -> None:
    with pytest.raises(InvalidInput, match="'user/score'"):
        scores_at(expiring, spine([1], [1]), ttl_seconds={"user/score": 5})


# Keys


def test_composite_key_matches_each_column(store: FeatureStore) -> None:
    write(
        store,
        "interaction/rated",
        {
            "user_id": [1, 1, 2],
            "movie_id": [10, 20, 10],
            "event_timestamp": times(0, 0, 0),
            "rating": [1.5, 2.5, 3.5],
        },
        entity_key=["user_id", "movie_id"],
    )
    entities = pa.table(
        {
            "user_id": [1, 1, 2, 2],
            "movie_id": [10, 20, 10, 20],
            "event_timestamp": times(1, 1, 1, 1),
        }
    )

    result = store.get_historical_features(entities, ["interaction/rated"])

    assert result["rating"].to_pylist() == [1.5, 2.5, 3.5, None]


def test_tables_join_on_own_keys(scores: FeatureStore) -> None:
    write(
        scores,
        "content/movies",
        {"movie_id": [10, 20], "event_timestamp": times(0, 0), "year": [1999, 2004]},
        entity_key=["movie_id"],
    )
    entities = spine([1, 2, 9], [12, 16, 12], movie_id=[20, 10, 10])

    result = scores.get_historical_features(entities, ["user/scores", "content/movies"])

    assert result["score"].to_pylist() == [10, 30, None]
    assert result["year"].to_pylist() == [2004, 1999, 1999]


def test_missing_key_column_named(scores: FeatureStore) -> None:
    entities = pa.table({"customer_id": [1], "event_timestamp": times(12)})

    with pytest.raises(InvalidInput, match="no column 'user_id', the key of user/scores"):
        scores.get_historical_features(entities, ["user/scores"])


def test_table_without_key_rejected(store: FeatureStore) -> None:
    write(store, "market/index", {"event_timestamp": times(0), "level": [7]}, entity_key=[])

    with pytest.raises(InvalidInput, match="market/index has no entity key"):
        store.get_historical_features(spine([1], [1]), ["market/index"])


def test_missing_timestamp_column_named(scores: FeatureStore) -> None:
    entities = pa.table({"user_id": [1], "ts": times(12)})

    with pytest.raises(InvalidInput, match="no timestamp column 'event_timestamp'"):
        scores.get_historical_features(entities, ["user/scores"])


def test_custom_timestamp_column(scores: FeatureStore) -> None:
    entities = pa.table({"user_id": [1, 1], "ts": times(12, 22)})

    assert scores_at(scores, entities, timestamp_column="ts") == [10, 20]


def test_null_key_gives_null_features(scores: FeatureStore) -> None:
    entities = spine([None, 1], [12, 12])

    assert scores_at(scores, entities) == [None, 10]


def test_null_timestamp_gives_null_features(scores: FeatureStore) -> None:
    entities = spine([1, 1], [None, 12])

    assert scores_at(scores, entities) == [None, 10]


def test_all_null_key_column(scores: FeatureStore) -> None:
    entities = pa.table({"user_id": pa.nulls(2), "event_timestamp": times(12, 12)})

    assert scores_at(scores, entities) == [None, None]


def test_int32_key_matches(scores: FeatureStore) -> None:
    entities = spine(pa.array([1, 2], pa.int32()), [12, 16])

    assert scores_at(scores, entities) == [10, 30]


def test_numeric_string_keys_cast(scores: FeatureStore) -> None:
    entities = spine([" 1", "+2", "0001", None], [12, 16, 12, 12])

    assert scores_at(scores, entities) == [10, 30, 10, None]


def test_oversized_numeric_string_matches_nothing(scores: FeatureStore) -> None:
    entities = spine(["99999999999999999999", "1"], [12, 12])

    assert scores_at(scores, entities) == [None, 10]


def test_categorical_string_keys_cast(scores: FeatureStore) -> None:
    entities = spine(pa.array(["1", "2", "1"]).dictionary_encode(), [12, 16, 25])

    assert scores_at(scores, entities) == [10, 30, 20]


def test_non_numeric_string_key_rejected(scores: FeatureStore) -> None:
    entities = spine(["1", "u2"], [12, 12])

    with pytest.raises(InvalidInput, match="entity column 'user_id' has string values"):
        scores.get_historical_features(entities, ["user/scores"])


def test_whole_float_keys_cast(scores: FeatureStore) -> None:
    entities = spine([1.0, 2.0, None, 1e20], [12, 16, 12, 12])

    assert scores_at(scores, entities) == [10, 30, None, None]


def test_fractional_float_key_rejected(scores: FeatureStore) -> None:
    entities = spine([1.0, 1.5], [12, 12])

    with pytest.raises(InvalidInput, match="entity column 'user_id' has double values"):
        scores.get_historical_features(entities, ["user/scores"])


def test_boolean_key_rejected(scores: FeatureStore) -> None:
    entities = spine([True], [12])

    with pytest.raises(InvalidInput, match="entity column 'user_id' has bool values"):
        scores.get_historical_features(entities, ["user/scores"])


def test_integer_key_for_string_key_rejected(store: FeatureStore) -> None:
    write(store, "user/names", {"user_id": ["1"], "event_timestamp": times(0), "name": ["ann"]})

    with pytest.raises(InvalidInput, match="convert the column to string values"):
        store.get_historical_features(spine([1], [1]), ["user/names"])


# Timestamps


def test_naive_timestamps_are_utc(scores: FeatureStore) -> None:
    naive = pa.array([at(19.5).replace(tzinfo=None), at(20).replace(tzinfo=None)])
    entities = pa.table({"user_id": [1, 1], "event_timestamp": naive})

    assert scores_at(scores, entities) == [10, 20]


def test_aware_timestamps_convert_to_utc(scores: FeatureStore) -> None:
    # 20 s past midnight UTC is 05:30:20 in Kolkata and 19:00:20 the day before in New York.
    kolkata = pd.Timestamp("2024-01-01 05:30:19", tz="Asia/Kolkata")
    new_york = pd.Timestamp("2023-12-31 19:00:20", tz="America/New_York")
    entities = pd.DataFrame(
        {
            "user_id": [1, 1],
            "event_timestamp": pd.Series([kolkata, new_york.tz_convert("Asia/Kolkata")]),
        }
    )

    assert scores_at(scores, entities) == [10, 20]


def test_iso_strings_with_offsets(scores: FeatureStore) -> None:
    entities = spine([1, 1, 1], [0, 0, 0]).set_column(
        1,
        "event_timestamp",
        pa.array(["2024-01-01T05:30:19+05:30", "2023-12-31T19:00:20-05:00", "2024-01-01 00:00:20"]),
    )

    assert scores_at(scores, entities) == [10, 20, 20]


def test_epoch_second_numbers(scores: FeatureStore) -> None:
    epoch = int(T0.timestamp())
    entities = pa.table({"user_id": [1, 1], "event_timestamp": [epoch + 19, epoch + 20]})

    assert scores_at(scores, entities) == [10, 20]


@pytest.mark.parametrize("unit", ["s", "ms", "us", "ns"])
def test_timestamp_units_compare_exactly(scores: FeatureStore, unit: str) -> None:
    per_second = {"s": 1, "ms": 10**3, "us": 10**6, "ns": 10**9}[unit]
    start = int(T0.timestamp()) * per_second
    counts = [start + 20 * per_second - 1, start + 20 * per_second]
    entities = pa.table(
        {"user_id": [1, 1], "event_timestamp": pa.array(counts, pa.timestamp(unit, tz="UTC"))}
    )

    assert scores_at(scores, entities) == [10, 20]


def test_nanoseconds_on_both_sides(store: FeatureStore) -> None:
    base = int(T0.timestamp()) * 10**9
    write(
        store,
        "user/scores",
        {
            "user_id": [1, 1],
            "event_timestamp": pa.array([base + 500, base + 700], pa.timestamp("ns", tz="UTC")),
            "score": [5, 7],
        },
    )
    moments = pa.array([base + 499, base + 500, base + 699, base + 700], pa.timestamp("ns"))
    entities = pa.table({"user_id": [1, 1, 1, 1], "event_timestamp": moments})

    assert scores_at(store, entities) == [None, 5, 5, 7]


def test_time_beyond_nanosecond_range_rejected(store: FeatureStore) -> None:
    base = int(T0.timestamp()) * 10**9
    write(
        store,
        "user/scores",
        {
            "user_id": [1],
            "event_timestamp": pa.array([base + 1], pa.timestamp("ns", tz="UTC")),
            "score": [7],
        },
    )
    entities = pa.table({"user_id": [1], "event_timestamp": ["9999-12-31T00:00:00Z"]})

    with pytest.raises(InvalidInput, match="entity time 9999-12-31T00:00:00\\+00:00 is outside"):
        store.get_historical_features(entities, ["user/scores"])


def test_invalid_timestamp_string_rejected(scores: FeatureStore) -> None:
    entities = pa.table({"user_id": [1, 1], "event_timestamp": ["2024-01-01", "yesterday"]})

    with pytest.raises(InvalidInput, match="record 1, field 'event_timestamp': 'yesterday'"):
        scores.get_historical_features(entities, ["user/scores"])


# Output names


@pytest.fixture
def two_tables(scores: FeatureStore) -> FeatureStore:
    """user/scores and user/ranks, both with a column `score`."""
    write(
        scores,
        "user/ranks",
        {"user_id": [1], "event_timestamp": times(0), "score": [99], "rank": [3]},
    )
    return scores


def test_plain_names_without_collision(two_tables: FeatureStore) -> None:
    result = two_tables.get_historical_features(spine([1], [12]), ["user/ranks:rank"])

    assert result.column_names == ["user_id", "event_timestamp", "rank"]


def test_collision_between_tables_prefixes(two_tables: FeatureStore) -> None:
    result = two_tables.get_historical_features(spine([1], [12]), ["user/scores", "user/ranks"])

    assert result.column_names == [
        "user_id",
        "event_timestamp",
        "scores__score",
        "ranks__score",
        "rank",
    ]
    assert result["scores__score"].to_pylist() == [10]
    assert result["ranks__score"].to_pylist() == [99]


def test_collision_with_entity_column_prefixes(scores: FeatureStore) -> None:
    entities = spine([1], [12], score=["label"])

    result = scores.get_historical_features(entities, ["user/scores"])

    assert result.column_names == ["user_id", "event_timestamp", "score", "scores__score"]
    assert result["score"].to_pylist() == ["label"]
    assert result["scores__score"].to_pylist() == [10]


def test_full_feature_names_prefix_all(two_tables: FeatureStore) -> None:
    result = two_tables.get_historical_features(
        spine([1], [12]), ["user/ranks:rank"], full_feature_names=True
    )

    assert result.column_names == ["user_id", "event_timestamp", "ranks__rank"]


def test_same_table_name_in_two_groups(scores: FeatureStore) -> None:
    write(scores, "legacy/scores", {"user_id": [1], "event_timestamp": times(0), "score": [1]})

    result = scores.get_historical_features(spine([1], [12]), ["user/scores", "legacy/scores"])

    assert result.column_names == [
        "user_id",
        "event_timestamp",
        "user__scores__score",
        "legacy__scores__score",
    ]
    assert result["user__scores__score"].to_pylist() == [10]
    assert result["legacy__scores__score"].to_pylist() == [1]


def test_prefixed_name_taken_rejected(scores: FeatureStore) -> None:
    entities = spine([1], [12], score=["a"], scores__score=["b"])

    with pytest.raises(InvalidInput, match="'scores__score' of user/scores would appear twice"):
        scores.get_historical_features(entities, ["user/scores"])


def test_references_to_one_table_merge(two_tables: FeatureStore) -> None:
    result = two_tables.get_historical_features(
        spine([1], [12]), ["user/ranks:rank", "user/ranks:score,rank"]
    )

    assert result.column_names == ["user_id", "event_timestamp", "rank", "score"]


# Inputs and errors


def test_dataframe_entities(scores: FeatureStore) -> None:
    entities = spine([1, 2], [12, 16]).to_pandas()

    assert scores_at(scores, entities) == [10, 30]


def test_parquet_path_entities(scores: FeatureStore, tmp_path: Path) -> None:
    path = tmp_path / "entities.parquet"
    pq.write_table(spine([1, 2], [12, 16]), path)

    assert scores_at(scores, str(path)) == [10, 30]


def test_entity_sql_selects_entities(scores: FeatureStore) -> None:
    sql = (
        "SELECT user_id, event_timestamp + INTERVAL 1 SECOND AS event_timestamp "
        'FROM "user".scores ORDER BY event_timestamp DESC'
    )

    result = scores.get_historical_features(entity_sql=sql, features=["user/scores"])

    assert result["user_id"].to_pylist() == [1, 2, 1]
    assert result["event_timestamp"].to_pylist() == [at(21), at(16), at(11)]
    assert result["score"].to_pylist() == [20, 30, 10]


def test_failing_entity_sql_is_invalid_input(scores: FeatureStore) -> None:
    with pytest.raises(InvalidInput, match="entity_sql failed"):
        scores.get_historical_features(entity_sql="SELEC 1", features=["user/scores"])


def test_entities_and_entity_sql_rejected(scores: FeatureStore) -> None:
    with pytest.raises(InvalidInput, match="exactly one of entities and entity_sql"):
        scores.get_historical_features(
            spine([1], [12]), ["user/scores"], entity_sql="SELECT 1 AS user_id"
        )


def test_unknown_feature_not_found(scores: FeatureStore) -> None:
    with pytest.raises(NotFound, match="'user/scorez' not found"):
        scores.get_historical_features(spine([1], [12]), ["user/scorez"])


def test_unknown_feature_column_rejected(scores: FeatureStore) -> None:
    with pytest.raises(InvalidInput, match="unknown column 'rank'"):
        scores.get_historical_features(spine([1], [12]), ["user/scores:rank"])


def test_reserved_entity_column_rejected(scores: FeatureStore) -> None:
    with pytest.raises(InvalidInput, match="'__row' starts with '__'"):
        scores.get_historical_features(spine([1], [12], __row=[0]), ["user/scores"])


def test_single_reference_string_accepted(scores: FeatureStore) -> None:
    result = scores.get_historical_features(spine([1], [12]), "user/scores")

    assert result["score"].to_pylist() == [10]


def test_recreated_table_uses_new_schema(store: FeatureStore) -> None:
    write(store, "user/names", {"user_id": [1], "name": ["ann"]})
    store.get_historical_features(pa.table({"user_id": [1]}), ["user/names"])
    store.delete("user", "names")
    write(store, "user/names", {"user_id": ["u1"], "name": ["bob"]})

    result = store.get_historical_features(pa.table({"user_id": ["u1"]}), ["user/names"])

    assert result["name"].to_pylist() == ["bob"]
