"""Online views agree with the point-in-time join evaluated at the current time, for every key
of the MovieLens tables, and give hand-computed values for ties, TTL, nulls and future rows."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from sqlstore.api.online import RESOLVED_TEXTS_LIMIT, requested_columns, table_results
from sqlstore.lookup import lookup_entities
from sqlstore.online import (
    NOT_FOUND,
    OUTSIDE_MAX_AGE,
    PRESENT,
    SCALAR_LOOKUP_LIMIT,
    DuckDBPath,
    FewLookup,
    OnlineSettings,
    OnlineStore,
    OnlineView,
    json_array,
)
from sqlstore.pointintime import default_feature_columns
from sqlstore.references import resolve_reference
from sqlstore.store import FeatureStore, TableDefinition

UTC_MICROSECONDS = pa.timestamp("us", tz="UTC")
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
KEYED_DEMO_TABLES = [
    "content/movie_genres",
    "content/movie_popularity",
    "content/movie_ratings",
    "interaction/user_movie_interactions",
    "user/user_activity",
    "user/user_preferences",
]
# Keys that no demo table has, per key column.
ABSENT_KEYS = {"movie_id": [0, 10**9], "user_id": [0, 10**9]}


def now_us() -> int:
    return int(datetime.now(UTC).timestamp() * 1_000_000)


def all_keys(store: FeatureStore, reference: str) -> dict[str, list[Any]]:
    """Return every distinct key of a table, read with pyarrow, plus keys it lacks, one list
    per key column."""
    entry = store.table(*reference.split("/"))
    stored = pq.read_table(store.root / entry.path, columns=entry.entity_key)
    distinct = stored.group_by(entry.entity_key).aggregate([])
    columns = {column: distinct[column].to_pylist() for column in entry.entity_key}
    for column in entry.entity_key:
        # An absent value of one key column is paired with present values of the others.
        extra = ABSENT_KEYS[column]
        for other in entry.entity_key:
            columns[other] += extra if other == column else columns[other][: len(extra)]
    return columns


def point_in_time_rows(
    store: FeatureStore, reference: str, keys: dict[str, list[Any]], as_of: datetime
) -> list[dict[str, Any] | None]:
    """Return each key's row from get_historical_features at `as_of`, or None without a match.

    A timestamped table's match has a non-null event timestamp. A static table matches every
    key it stores, which pyarrow reads independently."""
    entry = store.table(*reference.split("/"))
    columns = [c.name for c in entry.columns if c.name not in entry.entity_key]
    count = len(next(iter(keys.values())))
    spine = pa.table(
        {
            **{column: pa.array(values) for column, values in keys.items()},
            "event_timestamp": pa.array([as_of] * count, UTC_MICROSECONDS),
        }
    )
    result = store.get_historical_features(
        spine, [f"{reference}:{','.join(columns)}"], full_feature_names=True
    )
    prefix = f"{entry.name}__"
    if entry.timestamp_column:
        matched = pc.is_valid(result[prefix + entry.timestamp_column]).to_pylist()
    else:
        stored = pq.read_table(store.root / entry.path, columns=entry.entity_key).to_pylist()
        present = {tuple(row.values()) for row in stored}
        matched = [key in present for key in zip(*keys.values(), strict=True)]

    rows = []
    for row, is_match in zip(result.to_pylist(), matched, strict=True):
        features = {name[len(prefix) :]: v for name, v in row.items() if name.startswith(prefix)}
        rows.append({**{c: row[c] for c in entry.entity_key}, **features} if is_match else None)
    return rows


def online_rows(
    online: OnlineStore, reference: str, keys: dict[str, list[Any]], now: int
) -> tuple[list[dict[str, Any] | None], list[int]]:
    """Return each key's row from the online view (None when not present) and its status."""
    group, name = reference.split("/")
    state = online.state(group, name, now)
    found = online.find(state, keys, now)
    entry = state.entry
    columns = [c.name for c in entry.columns if c.name not in entry.entity_key]
    taken = found.take([*entry.entity_key, *columns]).to_pylist()
    rows = [row if code == PRESENT else None for row, code in zip(taken, found.codes, strict=True)]
    return rows, found.codes.tolist()


@pytest.mark.parametrize("reference", KEYED_DEMO_TABLES)
def test_view_equals_point_in_time_every_key(demo_root: Path, reference: str) -> None:
    store = FeatureStore(demo_root)
    online = OnlineStore(store, OnlineSettings())
    keys = all_keys(store, reference)
    now = now_us()

    rows, codes = online_rows(online, reference, keys, now)
    expected = point_in_time_rows(store, reference, keys, EPOCH + timedelta(microseconds=now))

    assert len(rows) == len(expected)
    assert rows == expected
    absent = sum(len(ABSENT_KEYS[column]) for column in keys)
    assert codes.count(NOT_FOUND) == absent


@pytest.mark.parametrize("memory_bytes", [1, 1024**3])
@pytest.mark.parametrize(
    "reference", ["user/user_preferences", "interaction/user_movie_interactions"]
)
def test_batch_lookup_equals_duckdb(demo_root: Path, reference: str, memory_bytes: int) -> None:
    store = FeatureStore(demo_root)
    online = OnlineStore(store, OnlineSettings(memory_bytes=memory_bytes))
    keys = all_keys(store, reference)
    entry = store.table(*reference.split("/"))
    if len(entry.entity_key) == 1:
        ids = keys[entry.entity_key[0]][:2000] + [1, 1, "15"]
    else:
        ids = [dict(zip(keys, values, strict=True)) for values in zip(*keys.values(), strict=True)]
        ids = ids[:2000] + ids[-3:]
    resolved = resolve_reference(reference, store.list_tables())
    now = datetime.now(UTC)

    result = online.lookup_entities(resolved, ids, now)
    expected = lookup_entities(store, resolved, ids, now)

    assert result.table.column_names == expected.table.column_names
    assert result.table.to_pylist() == expected.table.to_pylist()
    assert result.missing == expected.missing
    state = online.state(entry.group, entry.name, now_us())
    assert isinstance(state, DuckDBPath if memory_bytes == 1 else OnlineView)


# Hand-computed cases on a small table whose times are relative to the current time.


@pytest.fixture
def scores_store(tmp_path: Path) -> tuple[FeatureStore, datetime]:
    """user/scores with a one-hour TTL: ties broken by created timestamp, a future row, an
    expired row and a null value."""
    base = datetime.now(UTC).replace(microsecond=0)
    times = [
        base - timedelta(seconds=1000),  # user 1, superseded
        base - timedelta(seconds=100),  # user 1, tie, created later: wins
        base - timedelta(seconds=100),  # user 1, tie, created earlier
        base - timedelta(seconds=10),  # user 2
        base + timedelta(days=1),  # user 3, only in the future
        base - timedelta(seconds=7200),  # user 4, older than the TTL
        base - timedelta(seconds=5),  # user 5, null score
        base + timedelta(days=1),  # user 2, future row that must not be seen yet
    ]
    created = [base - timedelta(seconds=1000), base, base - timedelta(seconds=50)] + [base] * 5
    table = pa.table(
        {
            "user_id": [1, 1, 1, 2, 3, 4, 5, 2],
            "event_timestamp": pa.array(times, UTC_MICROSECONDS),
            "created": pa.array(created, UTC_MICROSECONDS),
            "score": pa.array([10, 20, 30, 40, 50, 60, None, 70], pa.int64()),
        }
    )
    definition = TableDefinition(
        entity_key=["user_id"], created_timestamp_column="created", ttl_seconds=3600
    )
    store = FeatureStore(tmp_path / "store")
    store.write("user", "scores", table, definition=definition)
    return store, base


def test_view_hand_computed_values(scores_store: tuple[FeatureStore, datetime]) -> None:
    store, base = scores_store
    online = OnlineStore(store, OnlineSettings())
    now = now_us()

    rows, codes = online_rows(online, "user/scores", {"user_id": [1, 2, 3, 4, 5, 6]}, now)

    assert [row and row["score"] for row in rows] == [20, 40, None, None, None, None]
    assert codes == [PRESENT, PRESENT, NOT_FOUND, OUTSIDE_MAX_AGE, PRESENT, NOT_FOUND]
    assert rows[0]["event_timestamp"] == base - timedelta(seconds=100)
    assert rows[4]["score"] is None


def test_few_keys_match_numpy_path(scores_store: tuple[FeatureStore, datetime]) -> None:
    # Up to SCALAR_LOOKUP_LIMIT keys are read with Python ints. The same keys twice take the
    # numpy path, and the first half of its results must be the same.
    store, _ = scores_store
    online = OnlineStore(store, OnlineSettings())
    now = now_us()
    view = online.state("user", "scores", now)
    assert isinstance(view, OnlineView)
    keys = [1, 2, 3, 4, 5, 6]
    columns = ["score", "created"]

    few = view.find({"user_id": keys}, now)
    many = view.find({"user_id": keys * 2}, now)
    few_results = table_results(few, columns)
    many_results = table_results(many, columns)

    assert len(keys) <= SCALAR_LOOKUP_LIMIT < 2 * len(keys)
    assert isinstance(few, FewLookup)
    assert not isinstance(many, FewLookup)
    assert few_results[0]["values"] == [20, 40, None, None, None, None]
    assert few_results[0]["statuses"] == [
        "PRESENT",
        "PRESENT",
        "NOT_FOUND",
        "OUTSIDE_MAX_AGE",
        "NULL_VALUE",
        "NOT_FOUND",
    ]
    for few_result, many_result in zip(few_results, many_results, strict=True):
        assert few_result == {field: values[:6] for field, values in many_result.items()}
    assert few.codes.tolist() == many.codes.tolist()[:6]
    assert few.rows.tolist() == many.rows.tolist()[:6]


def test_resolved_references_bounded(scores_store: tuple[FeatureStore, datetime]) -> None:
    # Every distinct reference text names the same column. A client that sends new ones on
    # every request must not grow the view's memory without bound.
    store, _ = scores_store
    online = OnlineStore(store, OnlineSettings())
    view = online.state("user", "scores", now_us())
    assert isinstance(view, OnlineView)
    texts = [f"user/scores:{','.join(['score'] * count)}" for count in range(1, 1200)]

    selected = [requested_columns(view, [text], ["user_id"]) for text in texts]

    assert selected == [[(text, "score")] for text in texts]
    assert len(view.resolved) <= RESOLVED_TEXTS_LIMIT
    assert all(len(text) <= 1024 for text in view.resolved)


def test_view_expires_at_future_row(scores_store: tuple[FeatureStore, datetime]) -> None:
    store, base = scores_store
    online = OnlineStore(store, OnlineSettings())
    view = online.state("user", "scores", now_us())
    first_future_us = int((base + timedelta(days=1)).timestamp() * 1_000_000)

    assert isinstance(view, OnlineView)
    assert view.valid_until_units == first_future_us
    assert view.is_current(first_future_us - 1)
    assert not view.is_current(first_future_us)


def test_view_rebuilt_after_write(scores_store: tuple[FeatureStore, datetime]) -> None:
    store, base = scores_store
    online = OnlineStore(store, OnlineSettings())
    before = online.state("user", "scores", now_us())
    update = pa.table(
        {
            "user_id": [6],
            "event_timestamp": pa.array([base], UTC_MICROSECONDS),
            "created": pa.array([base], UTC_MICROSECONDS),
            "score": pa.array([99], pa.int64()),
        }
    )
    store.write("user", "scores", update, mode="append")

    rows, codes = online_rows(online, "user/scores", {"user_id": [6]}, now_us())
    after = online.state("user", "scores", now_us())

    assert rows[0]["score"] == 99
    assert codes == [PRESENT]
    assert after is not before
    assert after.stamp != before.stamp


def test_write_order_breaks_ties(tmp_path: Path) -> None:
    # Without a created timestamp, the row written last wins a tie; here on a composite key
    # of a string and an integer.
    store = FeatureStore(tmp_path / "store")
    moment = datetime(2020, 1, 1, tzinfo=UTC)

    def write(values: list[int], mode: str) -> None:
        table = pa.table(
            {
                "shop": ["a", "a", "b"][: len(values)],
                "sku": [1, 1, 1][: len(values)],
                "event_timestamp": pa.array([moment] * len(values), UTC_MICROSECONDS),
                "price": values,
            }
        )
        definition = TableDefinition(entity_key=["shop", "sku"])
        store.write("retail", "prices", table, mode=mode, definition=definition)

    write([1, 2, 3], "overwrite")
    write([4], "append")
    online = OnlineStore(store, OnlineSettings())
    keys = {"shop": ["a", "b", "c", "a"], "sku": [1, 1, 1, "1"]}

    rows, codes = online_rows(online, "retail/prices", keys, now_us())
    spine = pa.table(
        {
            "shop": keys["shop"],
            "sku": pa.array([1, 1, 1, 1], pa.int64()),
            "event_timestamp": pa.array([moment] * 4, UTC_MICROSECONDS),
        }
    )
    joined = store.get_historical_features(spine, ["retail/prices:price"]).to_pylist()

    assert [row and row["price"] for row in rows] == [4, 3, None, 4]
    assert codes == [PRESENT, PRESENT, NOT_FOUND, PRESENT]
    assert [row["price"] for row in joined] == [4, 3, None, 4]


def test_default_columns_match_lookup(scores_store: tuple[FeatureStore, datetime]) -> None:
    store, _ = scores_store
    entry = store.table("user", "scores")

    assert default_feature_columns(entry) == ["score"]


def test_ttl_boundary_is_inclusive(scores_store: tuple[FeatureStore, datetime]) -> None:
    # User 1's row is stamped base - 100 s and the TTL is 3,600 s, so it expires after
    # base + 3,500 s. User 2's row (base - 10 s) is still present then.
    store, base = scores_store
    online = OnlineStore(store, OnlineSettings())
    view = online.state("user", "scores", now_us())
    edge_us = int((base + timedelta(seconds=3500)).timestamp() * 1_000_000)
    keys = {"user_id": [1, 2]}

    at_edge = view.find(keys, edge_us).codes.tolist()
    past_edge = view.find(keys, edge_us + 1).codes.tolist()
    joined = [
        point_in_time_rows(store, "user/scores", keys, as_of)
        for as_of in (EPOCH + timedelta(microseconds=us) for us in (edge_us, edge_us + 1))
    ]

    assert at_edge == [PRESENT, PRESENT]
    assert past_edge == [OUTSIDE_MAX_AGE, PRESENT]
    assert [row is not None for row in joined[0]] == [True, True]
    assert [row is not None for row in joined[1]] == [False, True]


JSON_TIMES = [
    datetime(1, 1, 1, tzinfo=UTC),
    datetime(999, 12, 31, 23, 59, 59, 999_999, tzinfo=UTC),
    datetime(2024, 5, 1, 1, 2, 3, 4_000, tzinfo=UTC),
    None,
    datetime(9999, 12, 31, 23, 59, 59, tzinfo=UTC),
]


@pytest.mark.parametrize("unit", ["s", "ms", "us"])
@pytest.mark.parametrize("tz", ["UTC", None])
def test_timestamp_text_matches_encoder(unit: str, tz: str | None) -> None:
    # The view keeps timestamps as the text that orjson writes for the datetimes that Arrow
    # returns, so responses from the view and from the DuckDB path are byte for byte equal.
    divisor = {"s": 1_000_000, "ms": 1_000, "us": 1}[unit]
    values = [
        None
        if moment is None
        else moment.replace(
            microsecond=moment.microsecond // divisor * divisor,
            tzinfo=moment.tzinfo if tz else None,
        )
        for moment in JSON_TIMES
    ]
    column = pa.chunked_array([pa.array(values, pa.timestamp(unit, tz=tz))])

    text = json_array(column).to_pylist()
    encoded = [None if v is None else orjson.dumps(v).decode()[1:-1] for v in column.to_pylist()]

    assert text == encoded


def test_string_and_date_keys(tmp_path: Path) -> None:
    store = FeatureStore(tmp_path / "store")
    moment = datetime(2020, 1, 1, tzinfo=UTC)
    cities = pa.table(
        {
            "city": ["oslo", "oslo", "rome"],
            "event_timestamp": pa.array(
                [moment, moment + timedelta(days=1), moment], UTC_MICROSECONDS
            ),
            "temperature": [1.5, -2.0, 12.0],
        }
    )
    days = pa.table(
        {
            "day": pa.array([date(2020, 1, 1), date(2020, 1, 2)], pa.date32()),
            "holiday": [True, False],
        }
    )
    store.write("weather", "cities", cities, definition=TableDefinition(entity_key=["city"]))
    store.write("calendar", "days", days, definition=TableDefinition(entity_key=["day"]))
    online = OnlineStore(store, OnlineSettings())

    city_rows, city_codes = online_rows(
        online, "weather/cities", {"city": ["oslo", "paris", 7]}, now_us()
    )
    day_rows, day_codes = online_rows(
        online, "calendar/days", {"day": ["2020-01-02", "2020-01-03"]}, now_us()
    )

    assert [row and row["temperature"] for row in city_rows] == [-2.0, None, None]
    assert city_codes == [PRESENT, NOT_FOUND, NOT_FOUND]
    assert [row and row["holiday"] for row in day_rows] == [False, None]
    assert day_codes == [PRESENT, NOT_FOUND]


def test_invalid_load_setting(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="SQLSTORE_ONLINE_LOAD"):
        OnlineStore(FeatureStore(tmp_path / "store"), OnlineSettings(load="sometimes"))
