"""Hostile queries from tests/data/hostile_queries.txt, sent to a real server and to the service.

Every query must be rejected by validation, before DuckDB runs anything. The server responds
with 400 and a validation error code whose message names the construct. No file appears in the
store (several queries would write into the features folder, the one folder the sandbox may
read), and the sandbox's DuckDB settings are the same before and after.
"""

from __future__ import annotations

import codecs
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pyarrow as pa
import pytest
from conftest import RunningServer, start_server, stop_server

from sqlstore.errors import QueryRejected, QuerySyntaxError
from sqlstore.sql.limits import SqlLimits
from sqlstore.sql.service import SqlService
from sqlstore.store import FeatureStore, TableDefinition

HOSTILE_FILE = Path(__file__).parent / "data" / "hostile_queries.txt"
VALIDATION_CODES = {"query_rejected", "query_syntax_error"}
DEEP_NESTING = "(" * 3000 + "1" + ")" * 3000


@dataclass(frozen=True)
class HostileQuery:
    """One line of the hostile query file, with placeholders still in the SQL."""

    construct: str
    reason: str
    template: str

    def sql(self, canary: Path) -> str:
        return self.template.replace("{canary}", str(canary)).replace(
            "{deep_nesting}", DEEP_NESTING
        )


def load_hostile_queries() -> list[HostileQuery]:
    """Read the file; columns are tab-separated and use Python escapes."""
    queries = []
    for line in HOSTILE_FILE.read_text(encoding="ascii").splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        construct, reason, template = line.split("\t", 2)
        queries.append(
            HostileQuery(
                construct=codecs.decode(construct, "unicode_escape"),
                reason=reason,
                template=codecs.decode(template, "unicode_escape"),
            )
        )
    return queries


HOSTILE_QUERIES = load_hostile_queries()


def store_files(root: Path) -> set[Path]:
    """Return every file under the store root except lock files, which reads may touch, and
    the server's metric samples, which it creates after serving its first requests."""
    metrics = root / "cache" / "metrics"
    return {
        path
        for path in root.rglob("*")
        if path.is_file() and path.suffix != ".lock" and not path.is_relative_to(metrics)
    }


def write_store(root: Path) -> None:
    users = pa.table({"user_id": [1, 2], "name": ["ada", "bob"]})
    FeatureStore(root).write("shop", "users", users, definition=TableDefinition(["user_id"]))


@dataclass
class HostileTarget:
    """The server under attack and what its store held before the attack."""

    server: RunningServer
    canary: Path
    files_before: set[Path]


@pytest.fixture(scope="module")
def target(tmp_path_factory: pytest.TempPathFactory) -> Iterator[HostileTarget]:
    folder = tmp_path_factory.mktemp("sql_hostile")
    root = folder / "store"
    write_store(root)
    canary = root / "features" / "canary"
    server = start_server(root, folder / "server.log", env={"SQLSTORE_SQL_WORKERS": "1"})
    yield HostileTarget(server=server, canary=canary, files_before=store_files(root))
    stop_server(server)


@pytest.fixture(scope="module")
def http(target: HostileTarget) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=target.server.base_url, timeout=60) as client:
        yield client


def test_hostile_file_is_large_enough() -> None:
    assert len(HOSTILE_QUERIES) >= 60


@pytest.mark.parametrize("hostile", HOSTILE_QUERIES, ids=[q.reason for q in HOSTILE_QUERIES])
def test_post_rejects_hostile_query(
    http: httpx.Client, target: HostileTarget, hostile: HostileQuery
) -> None:
    response = http.post("/sql", json={"sql": hostile.sql(target.canary)})
    error = response.json()["error"]

    assert response.status_code == 400, response.text
    assert error["code"] in VALIDATION_CODES
    assert hostile.construct.lower() in error["message"].lower()


@pytest.mark.parametrize("hostile", HOSTILE_QUERIES, ids=[q.reason for q in HOSTILE_QUERIES])
def test_get_rejects_hostile_query(
    http: httpx.Client, target: HostileTarget, hostile: HostileQuery
) -> None:
    response = http.get("/sql", params={"sql": hostile.sql(target.canary)})

    assert response.status_code == 400, response.text
    assert response.json()["error"]["code"] in VALIDATION_CODES


def test_hostile_queries_leave_no_files(http: httpx.Client, target: HostileTarget) -> None:
    for hostile in HOSTILE_QUERIES:
        http.post("/sql", json={"sql": hostile.sql(target.canary)})
    root = target.server.root

    assert store_files(root) == target.files_before
    assert not list(target.canary.parent.glob("canary*"))


def test_views_still_answer_after_attack(http: httpx.Client) -> None:
    response = http.post("/sql", json={"sql": "SELECT name FROM shop.users ORDER BY user_id"})

    assert response.status_code == 200
    assert response.json()["data"] == [{"name": "ada"}, {"name": "bob"}]


def test_hostile_queries_leave_sandbox_settings_unchanged(tmp_path: Path) -> None:
    write_store(tmp_path / "store")
    service = SqlService(FeatureStore(tmp_path / "store"), SqlLimits(workers=1))
    canary = tmp_path / "store" / "features" / "canary"
    try:
        before = service.sandbox.worker_settings()
        outcomes = []
        for hostile in HOSTILE_QUERIES:
            try:
                service.run(hostile.sql(canary))
                outcomes.append((hostile.reason, "ran"))
            except (QueryRejected, QuerySyntaxError):
                outcomes.append((hostile.reason, "rejected"))
        after = service.sandbox.worker_settings()
    finally:
        service.close()

    assert [reason for reason, outcome in outcomes if outcome != "rejected"] == []
    assert after == before
    assert before["enable_external_access"] == "false"
    assert before["lock_configuration"] == "true"
    assert before["python_enable_replacements"] == "false"
