"""POST /training-set with inline entities, in every output format, and its errors."""

from __future__ import annotations

import io
import tomllib
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pyarrow as pa
import pyarrow.csv as pa_csv
import pyarrow.ipc as pa_ipc
import pyarrow.parquet as pq
import pytest
from conftest import RunningServer, start_server, stop_server

from sqlstore.records import records_to_table
from sqlstore.store import FeatureStore, TableDefinition

UTC_MICROSECONDS = pa.timestamp("us", tz="UTC")

# Entity rows, unsorted, with a repeated row, a null key, a user without features and a time
# before any feature row.
ENTITIES = [
    {"user_id": 1, "movie_id": 20, "event_timestamp": "2024-01-01T00:00:25Z", "label": True},
    {"user_id": 2, "movie_id": 10, "event_timestamp": "2024-01-01T00:00:16Z", "label": False},
    {"user_id": 1, "movie_id": 20, "event_timestamp": "2024-01-01T00:00:25Z", "label": True},
    {"user_id": None, "movie_id": 10, "event_timestamp": "2024-01-01T00:00:30Z", "label": True},
    {"user_id": 9, "movie_id": 30, "event_timestamp": "2024-01-01T00:00:30Z", "label": False},
    {"user_id": 1, "movie_id": 10, "event_timestamp": "2024-01-01T00:00:05Z", "label": False},
]
FEATURES = ["user/scores", "content/movies:year"]
EXPECTED_SCORES = [20, 30, 20, None, None, None]
EXPECTED_YEARS = [2004, 1999, 2004, 1999, None, 1999]
COLUMNS = ["user_id", "movie_id", "event_timestamp", "label", "score", "year"]


def at(seconds: int) -> datetime:
    return datetime(2024, 1, 1, 0, 0, seconds, tzinfo=UTC)


@pytest.fixture(scope="module")
def store_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """user/scores (key user_id) and content/movies (key movie_id, written at t=0)."""
    root = tmp_path_factory.mktemp("training_api_store")
    store = FeatureStore(root)
    scores = pa.table(
        {
            "user_id": [1, 1, 2],
            "event_timestamp": pa.array([at(10), at(20), at(15)], UTC_MICROSECONDS),
            "score": [10, 20, 30],
        }
    )
    movies = pa.table(
        {
            "movie_id": [10, 20],
            "event_timestamp": pa.array([at(0), at(0)], UTC_MICROSECONDS),
            "year": [1999, 2004],
        }
    )
    store.write("user", "scores", scores, definition=TableDefinition(entity_key=["user_id"]))
    store.write("content", "movies", movies, definition=TableDefinition(entity_key=["movie_id"]))
    return root


@pytest.fixture(scope="module")
def server(store_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    running = start_server(store_root, tmp_path_factory.mktemp("logs") / "training_api.log")
    yield running
    stop_server(running)


def post(server: RunningServer, body: dict[str, Any], accept: str | None = None) -> httpx.Response:
    headers = {"Accept": accept} if accept else {}
    return httpx.post(f"{server.base_url}/training-set", json=body, headers=headers, timeout=60)


def error_of(response: httpx.Response) -> dict[str, Any]:
    return response.json()["error"]


@pytest.fixture(scope="module")
def python_result(store_root: Path) -> pa.Table:
    """The same join through the Python API, for comparing the binary formats."""
    return FeatureStore(store_root).get_historical_features(records_to_table(ENTITIES), FEATURES)


# Formats


def test_json_rows_and_values(server: RunningServer) -> None:
    response = post(server, {"entities": ENTITIES, "features": FEATURES})

    assert response.status_code == 200
    body = response.json()
    rows = body["data"]
    assert [row["user_id"] for row in rows] == [1, 2, 1, None, 9, 1]
    assert [row["label"] for row in rows] == [True, False, True, True, False, False]
    assert [row["score"] for row in rows] == EXPECTED_SCORES
    assert [row["year"] for row in rows] == EXPECTED_YEARS
    assert [datetime.fromisoformat(row["event_timestamp"]) for row in rows] == [
        at(25),
        at(16),
        at(25),
        at(30),
        at(30),
        at(5),
    ]


def test_json_metadata(server: RunningServer) -> None:
    response = post(server, {"entities": ENTITIES, "features": FEATURES})

    metadata = response.json()["metadata"]
    assert metadata["row_count"] == len(ENTITIES)
    assert metadata["columns"] == COLUMNS
    assert metadata["features"] == FEATURES
    assert response.headers["x-row-count"] == str(len(ENTITIES))


def test_csv_output(server: RunningServer) -> None:
    response = post(server, {"entities": ENTITIES, "features": FEATURES}, accept="text/csv")

    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/csv")
    table = pa_csv.read_csv(io.BytesIO(response.content))
    assert table.column_names == COLUMNS
    assert table["score"].to_pylist() == EXPECTED_SCORES
    assert table["year"].to_pylist() == EXPECTED_YEARS
    assert table["user_id"].to_pylist() == [1, 2, 1, None, 9, 1]


def test_parquet_output(server: RunningServer, python_result: pa.Table) -> None:
    response = post(
        server,
        {"entities": ENTITIES, "features": FEATURES},
        accept="application/vnd.apache.parquet",
    )

    assert response.status_code == 200
    table = pq.read_table(io.BytesIO(response.content))
    assert table.equals(python_result)
    assert table["score"].to_pylist() == EXPECTED_SCORES


def test_arrow_output(server: RunningServer, python_result: pa.Table) -> None:
    response = post(
        server,
        {"entities": ENTITIES, "features": FEATURES},
        accept="application/vnd.apache.arrow.stream",
    )

    assert response.status_code == 200
    table = pa_ipc.open_stream(response.content).read_all()
    assert table.equals(python_result)
    assert table["year"].to_pylist() == EXPECTED_YEARS


# Options


def test_strict_join_option(server: RunningServer) -> None:
    entities = [{"user_id": 1, "event_timestamp": "2024-01-01T00:00:20Z"}]

    response = post(server, {"entities": entities, "features": ["user/scores"], "inclusive": False})

    assert response.json()["data"][0]["score"] == 10


def test_ttl_override_option(server: RunningServer) -> None:
    entities = [
        {"user_id": 1, "event_timestamp": "2024-01-01T00:00:25Z"},
        {"user_id": 1, "event_timestamp": "2024-01-01T00:00:26Z"},
    ]
    body = {"entities": entities, "features": ["user/scores"], "ttl_seconds": {"user/scores": 5}}

    response = post(server, body)

    assert [row["score"] for row in response.json()["data"]] == [20, None]


def test_custom_timestamp_and_full_names(server: RunningServer) -> None:
    entities = [{"user_id": 2, "at": 1704067216}]
    body = {
        "entities": entities,
        "features": ["user/scores"],
        "timestamp_column": "at",
        "full_feature_names": True,
    }

    response = post(server, body)

    assert response.json()["data"] == [
        {"user_id": 2, "at": "2024-01-01T00:00:16+00:00", "scores__score": 30}
    ]


# Errors


def test_missing_key_column_is_400(server: RunningServer) -> None:
    entities = [{"customer_id": 1, "event_timestamp": "2024-01-01T00:00:25Z"}]

    response = post(server, {"entities": entities, "features": ["user/scores"]})

    assert response.status_code == 400
    assert "'user_id'" in error_of(response)["message"]


def test_unknown_feature_is_404(server: RunningServer) -> None:
    response = post(server, {"entities": ENTITIES, "features": ["user/scorez"]})

    assert response.status_code == 404
    assert "'user/scorez' not found" in error_of(response)["message"]


def test_bad_timestamp_is_400(server: RunningServer) -> None:
    entities = [{"user_id": 1, "event_timestamp": "the 25th second"}]

    response = post(server, {"entities": entities, "features": ["user/scores"]})

    assert response.status_code == 400
    assert "'the 25th second'" in error_of(response)["message"]


def test_entities_with_entity_sql_is_400(server: RunningServer) -> None:
    body = {"entities": ENTITIES, "entity_sql": "SELECT 1 AS user_id", "features": FEATURES}

    response = post(server, body)

    assert response.status_code == 400
    assert "exactly one of entities and entity_sql" in error_of(response)["message"]


def test_neither_entities_nor_sql_is_400(server: RunningServer) -> None:
    response = post(server, {"features": FEATURES})

    assert response.status_code == 400
    assert "exactly one of entities and entity_sql" in error_of(response)["message"]


def test_empty_entities_is_400(server: RunningServer) -> None:
    response = post(server, {"entities": [], "features": FEATURES})

    assert response.status_code == 400
    assert "entities is empty" in error_of(response)["message"]


def test_missing_features_is_400(server: RunningServer) -> None:
    response = post(server, {"entities": ENTITIES})

    assert response.status_code == 400
    assert "features is required" in error_of(response)["message"]


@pytest.mark.parametrize(
    ("fields", "named"),
    [
        ({"features": FEATURES}, "features"),
        (
            {"timestamp_column": "nope", "full_feature_names": False},
            "full_feature_names, timestamp_column",
        ),
        ({"ttl_seconds": {"user/user_activity": 60}}, "ttl_seconds"),
        ({"inclusive": True}, "inclusive"),
    ],
)
def test_name_with_other_fields_is_400(
    server: RunningServer, fields: dict[str, Any], named: str
) -> None:
    response = post(server, {"name": "movielens_liked", **fields})

    assert response.status_code == 400
    assert f"so {named} cannot be given with it" in error_of(response)["message"]


def test_unknown_name_is_404(server: RunningServer) -> None:
    response = post(server, {"name": "no_such_set"})

    assert response.status_code == 404
    assert "'no_such_set' not found" in error_of(response)["message"]


@pytest.mark.parametrize("name", ["../x", "..", "Liked", "a/b", ""])
def test_hostile_name_is_400(server: RunningServer, name: str) -> None:
    response = post(server, {"name": name})

    assert response.status_code == 400
    assert "invalid training set name" in error_of(response)["message"]


def test_ttl_for_unjoined_table_is_400(server: RunningServer) -> None:
    body = {"entities": ENTITIES, "features": FEATURES, "ttl_seconds": {"user/score": 5}}

    response = post(server, body)

    assert response.status_code == 400
    assert "'user/score'" in error_of(response)["message"]


def test_unknown_request_field_is_422(server: RunningServer) -> None:
    response = post(server, {"entities": ENTITIES, "features": FEATURES, "as_of": "now"})

    assert response.status_code == 422


@pytest.mark.parametrize("value", ["no", 0, "true", None])
def test_loose_boolean_is_422(server: RunningServer, value: object) -> None:
    body = {"entities": ENTITIES, "features": FEATURES, "inclusive": value}

    response = post(server, body)

    assert response.status_code == 422
    assert error_of(response)["message"].startswith(
        "invalid request: body.inclusive: Input should be a valid boolean"
    )


def test_unsupported_accept_is_406(server: RunningServer) -> None:
    response = post(server, {"entities": ENTITIES, "features": FEATURES}, accept="image/png")

    assert response.status_code == 406


# Listing


def test_training_sets_lists_liked(server: RunningServer) -> None:
    response = httpx.get(f"{server.base_url}/training-sets", timeout=30)

    assert response.status_code == 200
    body = response.json()
    by_name = {summary["name"]: summary for summary in body["training_sets"]}
    assert body["count"] == len(body["training_sets"])
    assert by_name["movielens_liked"]["features"] == [
        "user/user_preferences",
        "content/movie_ratings",
    ]
    assert by_name["movielens_liked"]["full_feature_names"] is True
    assert by_name["movielens_liked"]["timestamp_column"] == "event_timestamp"


def test_entity_sql_runs_in_sandbox(server: RunningServer) -> None:
    entity_sql = (
        "SELECT user_id, event_timestamp + INTERVAL 1 SECOND AS event_timestamp "
        "FROM user.scores ORDER BY event_timestamp, user_id"
    )
    body = {"entity_sql": entity_sql, "features": ["user/scores"], "full_feature_names": True}
    response = post(server, body)

    assert response.status_code == 200, response.text
    rows = response.json()["data"]
    # The entities are the score rows one second later, so each sees its own score.
    assert [row["user_id"] for row in rows] == [1, 2, 1]
    assert [row["scores__score"] for row in rows] == [10, 30, 20]


@pytest.mark.parametrize(
    "entity_sql",
    [
        "SELECT * FROM read_parquet('/etc/passwd')",
        "SELECT getenv('HOME') AS user_id",
        "COPY (SELECT 1) TO '/tmp/sqlstore-canary.csv'",
        "SELECT 1 AS user_id; DROP VIEW user.scores",
    ],
)
def test_hostile_entity_sql_rejected(server: RunningServer, entity_sql: str) -> None:
    body = {"entity_sql": entity_sql, "features": ["user/scores"]}
    response = post(server, body)

    assert response.status_code == 400, response.text
    assert error_of(response)["code"] in ("query_rejected", "query_syntax_error")
    assert not Path("/tmp/sqlstore-canary.csv").exists()


# Invalid definition files on the server

UNCLOSED_TOML = 'title = "Unclosed\nentity_sql = "SELECT 1"\n'
VALID_TOML = (
    "entity_sql = \"SELECT 1 AS user_id, TIMESTAMPTZ '2024-01-01 00:00:30+00' AS "
    'event_timestamp"\nfeatures = ["user/scores"]\n'
)


@pytest.fixture(scope="module")
def broken_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A queries folder with a valid definition, two invalid ones and an invalid named query."""
    queries = tmp_path_factory.mktemp("broken_queries")
    folder = queries / "training_sets"
    folder.mkdir()
    (folder / "valid.toml").write_text(VALID_TOML)
    (folder / "unclosed.toml").write_text(UNCLOSED_TOML)
    (folder / "no_features.toml").write_text('entity_sql = "SELECT 1"\n')
    (queries / "untitled.sql").write_text("SELECT 1 AS one\n")
    return queries


@pytest.fixture(scope="module")
def broken_server(
    store_root: Path, broken_folder: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[RunningServer]:
    log = tmp_path_factory.mktemp("broken_logs") / "server.log"
    running = start_server(store_root, log, env={"SQLSTORE_QUERIES_DIR": str(broken_folder)})
    yield running
    stop_server(running)


def toml_error(text: str) -> str:
    try:
        tomllib.loads(text)
    except tomllib.TOMLDecodeError as error:
        return str(error)
    raise AssertionError("the text is valid TOML")


def test_invalid_toml_definition_is_500(broken_server: RunningServer, broken_folder: Path) -> None:
    responses = [post(broken_server, {"name": "unclosed"}) for _ in range(2)]

    problem = f"the file is not valid TOML: {toml_error(UNCLOSED_TOML)}"
    for response in responses:
        assert response.status_code == 500
        assert error_of(response)["code"] == "training_set_invalid"
        assert error_of(response)["message"] == (
            f"invalid training set unclosed (training_sets/unclosed.toml in the queries folder): "
            f"{problem}"
        )
        assert str(broken_folder) not in response.text
    path = broken_folder / "training_sets" / "unclosed.toml"
    message = f"training set file {path} is invalid: {problem}"
    log = broken_server.log_containing(message)
    logged = [line for line in log.splitlines() if "unclosed.toml is invalid" in line]
    assert len(logged) == 1, logged
    assert " ERROR sqlstore.training [" in logged[0]
    assert logged[0].endswith(f"]: {message}")


def test_definition_without_features_is_500(broken_server: RunningServer) -> None:
    response = post(broken_server, {"name": "no_features"})

    assert response.status_code == 500
    assert error_of(response)["code"] == "training_set_invalid"
    assert error_of(response)["message"] == (
        "invalid training set no_features (training_sets/no_features.toml in the queries "
        "folder): the required key features is missing"
    )


def test_invalid_named_query_is_500_like_definition(broken_server: RunningServer) -> None:
    response = httpx.get(f"{broken_server.base_url}/queries/untitled", timeout=60)

    assert response.status_code == 500
    assert error_of(response)["code"] == "named_query_invalid"
    assert error_of(response)["message"] == (
        "invalid named query untitled (untitled.sql in the queries folder): the header has no "
        "'-- title:' line"
    )


def test_listing_skips_invalid_definitions(broken_server: RunningServer) -> None:
    response = httpx.get(f"{broken_server.base_url}/training-sets", timeout=30)
    valid = post(broken_server, {"name": "valid"})

    assert response.status_code == 200
    assert [summary["name"] for summary in response.json()["training_sets"]] == ["valid"]
    assert valid.status_code == 200, valid.text
    assert valid.json()["data"][0]["score"] == 20
