"""Bearer tokens with scopes against a real server: every route's scope, 401 and 403 bodies and
headers, /health without a token, hashed storage, tokens kept out of logs, revocation and
creation without a restart, and the check on non-loopback addresses."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import stat
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pyarrow as pa
import pytest
import typer
from conftest import RunningServer, start_server, stop_server

from sqlstore.api.access import ROUTE_SCOPES, required_scope
from sqlstore.cli import _check_exposure, _is_loopback
from sqlstore.client import FeatureStoreClient, FeatureStoreError
from sqlstore.store import FeatureStore
from sqlstore.tokens import (
    SCOPES,
    TokenFileInvalid,
    create_token,
    read_tokens,
    revoke_token,
    tokens_path,
)

PROCESS_TIMEOUT_SECONDS = 60
EVENT_TIME = "2024-03-01T00:00:00+00:00"


@dataclass
class ProtectedServer:
    server: RunningServer
    tokens: dict[str, str]  # scope name (or "admin") -> token value


def write_table(root: Path) -> None:
    table = pa.table(
        {
            "entity_id": [1, 2],
            "value": [0.5, 1.5],
            "event_timestamp": pa.array([1_700_000_000_000_000] * 2, pa.timestamp("us", "UTC")),
        }
    )
    FeatureStore(root).write("g", "t", table)


@pytest.fixture(scope="module")
def protected(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ProtectedServer]:
    """A server on a small store with one token per scope."""
    root = tmp_path_factory.mktemp("protected_store")
    write_table(root)
    tokens = {scope: create_token(root, f"only-{scope}", [scope]) for scope in SCOPES}
    log = tmp_path_factory.mktemp("protected_logs") / "server.log"
    server = start_server(root, log)
    yield ProtectedServer(server, tokens)
    stop_server(server)


def call(
    server: RunningServer, method: str, path: str, token: str | None, body: Any = None
) -> httpx.Response:
    headers = {"Authorization": f"Bearer {token}"} if token is not None else {}
    return httpx.request(method, server.base_url + path, headers=headers, json=body, timeout=30)


# One concrete request per route: method, path, body, the scope it needs, and the status that a
# token with that scope gets.
ROUTE_CASES = [
    ("GET", "/features", None, "read", 200),
    ("GET", "/features/g/t", None, "read", 200),
    ("GET", "/features/g/t/info", None, "read", 200),
    ("POST", "/features/batch", {"feature_names": ["g/t"], "entity_ids": [1]}, "read", 200),
    (
        "POST",
        "/training-set",
        {"entities": [{"entity_id": 1, "event_timestamp": EVENT_TIME}], "features": ["g/t"]},
        "read",
        200,
    ),
    ("GET", "/training-sets", None, "read", 200),
    (
        "POST",
        "/get-online-features",
        {"entities": {"entity_id": [1]}, "features": ["g/t:value"]},
        "read",
        200,
    ),
    ("GET", "/openapi.json", None, "read", 200),
    ("GET", "/docs", None, "read", 200),
    ("GET", "/redoc", None, "read", 200),
    ("POST", "/features/g/w", {"records": [{"entity_id": 1, "value": 2.0}]}, "write", 200),
    ("DELETE", "/features/g/missing", None, "write", 404),
    ("GET", "/sql?sql=SELECT%201%20AS%20x", None, "sql", 200),
    ("POST", "/sql", {"sql": "SELECT 1 AS x"}, "sql", 200),
    ("GET", "/queries", None, "sql", 200),
    ("GET", "/queries/missing", None, "sql", 404),
    ("POST", "/queries/missing", {}, "sql", 404),
    ("GET", "/cache/stats", None, "admin", 200),
    ("DELETE", "/cache", None, "admin", 200),
    ("DELETE", "/cache/g/t", None, "admin", 200),
    ("GET", "/metrics", None, "admin", 200),
    ("GET", "/performance", None, "admin", 200),
    ("GET", "/online", None, "admin", 200),
]
CASE_IDS = [f"{method} {path.split('?')[0]}" for method, path, *_ in ROUTE_CASES]


# The documentation pages, which the OpenAPI schema does not list.
DOCS_ROUTES = {
    ("GET", "/openapi.json"),
    ("GET", "/docs"),
    ("GET", "/docs/oauth2-redirect"),
    ("GET", "/redoc"),
}


def test_route_table_matches_served_routes(protected: ProtectedServer) -> None:
    schema = call(protected.server, "GET", "/openapi.json", protected.tokens["admin"]).json()
    served = {
        (method.upper(), path)
        for path, operations in schema["paths"].items()
        for method in operations
    }

    assert served - set(ROUTE_SCOPES) == set()
    assert set(ROUTE_SCOPES) - DOCS_ROUTES == served


def test_every_listed_route_has_a_case() -> None:
    covered = {
        (method, required_scope(method, path.split("?")[0])[1]) for method, path, *_ in ROUTE_CASES
    }
    listed = {key for key, scope in ROUTE_SCOPES.items() if scope is not None}

    # The OAuth redirect page of the docs is only reached from the docs page itself.
    assert covered == listed - {("GET", "/docs/oauth2-redirect")}
    assert len(covered) == len(ROUTE_CASES)


@pytest.mark.parametrize(
    ("method", "path", "body", "needed", "expected"), ROUTE_CASES, ids=CASE_IDS
)
def test_route_accepts_its_scope(
    protected: ProtectedServer, method: str, path: str, body: Any, needed: str, expected: int
) -> None:
    response = call(protected.server, method, path, protected.tokens[needed], body)

    assert response.status_code == expected, response.text


@pytest.mark.parametrize(
    ("method", "path", "body", "needed", "expected"), ROUTE_CASES, ids=CASE_IDS
)
def test_admin_token_opens_every_route(
    protected: ProtectedServer, method: str, path: str, body: Any, needed: str, expected: int
) -> None:
    response = call(protected.server, method, path, protected.tokens["admin"], body)

    assert response.status_code == expected, response.text


@pytest.mark.parametrize(
    ("method", "path", "body", "needed", "expected"), ROUTE_CASES, ids=CASE_IDS
)
def test_route_rejects_other_scopes(
    protected: ProtectedServer, method: str, path: str, body: Any, needed: str, expected: int
) -> None:
    for scope in SCOPES:
        if scope in (needed, "admin"):
            continue
        response = call(protected.server, method, path, protected.tokens[scope], body)

        assert response.status_code == 403, (scope, response.text)
        error = response.json()["error"]
        assert error["code"] == "insufficient_scope"
        assert f"lacks the {needed!r} scope" in error["message"]
        assert f"only-{scope}" in error["message"]
        assert error["request_id"] == response.headers["x-request-id"]
        authenticate = response.headers["www-authenticate"]
        assert authenticate == (
            f'Bearer realm="sqlstore", error="insufficient_scope", scope="{needed}"'
        )


@pytest.mark.parametrize(
    ("method", "path", "body", "needed", "expected"), ROUTE_CASES, ids=CASE_IDS
)
def test_route_without_token_is_401(
    protected: ProtectedServer, method: str, path: str, body: Any, needed: str, expected: int
) -> None:
    response = call(protected.server, method, path, None, body)

    assert response.status_code == 401
    error = response.json()["error"]
    assert error["code"] == "unauthorized"
    assert f"token create NAME --scope {needed}" in error["message"]
    assert response.headers["www-authenticate"] == f'Bearer realm="sqlstore", scope="{needed}"'


@pytest.mark.parametrize(
    ("method", "path", "body", "needed", "expected"), ROUTE_CASES, ids=CASE_IDS
)
def test_route_with_unknown_token_is_401(
    protected: ProtectedServer, method: str, path: str, body: Any, needed: str, expected: int
) -> None:
    response = call(protected.server, method, path, "sqlst_not-a-real-token", body)

    assert response.status_code == 401
    assert response.json()["error"]["code"] == "invalid_token"
    assert response.headers["www-authenticate"] == (
        f'Bearer realm="sqlstore", error="invalid_token", scope="{needed}"'
    )


def test_rejected_write_changes_nothing(protected: ProtectedServer) -> None:
    body = {"records": [{"entity_id": 9, "value": 9.0}]}

    rejected = call(
        protected.server, "POST", "/features/g/rejected", protected.tokens["read"], body
    )
    lookup = call(protected.server, "GET", "/features/g/rejected", protected.tokens["read"])

    assert rejected.status_code == 403
    assert lookup.status_code == 404


def test_other_scheme_is_401(protected: ProtectedServer) -> None:
    response = httpx.get(
        protected.server.base_url + "/features",
        headers={"Authorization": f"Basic {protected.tokens['read']}"},
    )

    assert response.status_code == 401
    assert response.json()["error"]["code"] == "invalid_request"
    assert 'error="invalid_request"' in response.headers["www-authenticate"]


def test_health_needs_no_token(protected: ProtectedServer) -> None:
    anonymous = call(protected.server, "GET", "/health", None)
    unknown = call(protected.server, "GET", "/health", "sqlst_not-a-real-token")

    assert anonymous.status_code == 200
    assert anonymous.json()["status"] == "healthy"
    assert unknown.status_code == 200


def test_unknown_path_needs_a_token(protected: ProtectedServer) -> None:
    anonymous = call(protected.server, "GET", "/no/such/route", None)
    with_token = call(protected.server, "GET", "/no/such/route", protected.tokens["read"])
    unlisted_post = call(protected.server, "POST", "/no/such/route", protected.tokens["write"])

    assert anonymous.status_code == 401
    assert with_token.status_code == 404
    # A method and path outside the table need admin, so a forgotten write route stays closed.
    assert unlisted_post.status_code == 403


def test_tokens_never_logged(protected: ProtectedServer) -> None:
    call(protected.server, "GET", "/features", protected.tokens["read"])
    call(protected.server, "GET", "/metrics", protected.tokens["read"])
    call(protected.server, "GET", "/features", "sqlst_leaked-guess")
    log = protected.server.log_containing("token=only-read")

    for token in protected.tokens.values():
        assert token not in log
    assert "sqlst_leaked-guess" not in log
    assert "token=only-read" in log


def test_scope_rejection_logs_token_name(protected: ProtectedServer) -> None:
    headers = {
        "Authorization": f"Bearer {protected.tokens['write']}",
        "X-Request-ID": "scope-rejection-log",
    }
    response = httpx.post(
        protected.server.base_url + "/sql", json={"sql": "SELECT 1"}, headers=headers, timeout=30
    )
    log = protected.server.log_containing("request=scope-rejection-log ").splitlines()
    lines = [line for line in log if "request=scope-rejection-log " in line]

    assert response.status_code == 403
    assert len(lines) == 1
    assert "POST /sql 403 " in lines[0]
    assert "token=only-write " in lines[0]


def test_token_file_stores_hashes_only(protected: ProtectedServer) -> None:
    path = tokens_path(protected.server.root)
    content = path.read_text()
    stored = {item["name"]: item for item in json.loads(content)["tokens"]}

    for scope, token in protected.tokens.items():
        assert token not in content
        entry = stored[f"only-{scope}"]
        assert entry["sha256"] == hashlib.sha256(token.encode()).hexdigest()
        assert entry["scopes"] == [scope]
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


# Changes to the token file while a server runs


def run_cli(*arguments: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "sqlstore", *arguments],
        capture_output=True,
        text=True,
        timeout=PROCESS_TIMEOUT_SECONDS,
        env={**without_token_variable(), "COLUMNS": "200"},
    )


def without_token_variable() -> dict[str, str]:
    return {key: value for key, value in os.environ.items() if key != "SQLSTORE_TOKEN"}


def status_many(server: RunningServer, token: str, count: int = 20) -> set[int]:
    """Return the statuses of `count` requests, each on a new connection so that both workers
    of a two-worker server are likely to serve some of them."""
    return {call(server, "GET", "/features", token).status_code for _ in range(count)}


def test_revocation_and_creation_apply_without_restart(tmp_path: Path) -> None:
    root = tmp_path / "store"
    write_table(root)
    created = run_cli("token", "create", "first", "--scope", "read", "--root", str(root))
    first = created.stdout.strip()
    server = start_server(root, tmp_path / "server.log", workers=2)
    try:
        assert status_many(server, first) == {200}

        revoked = run_cli("token", "revoke", "first", "--root", str(root))
        assert revoked.returncode == 0, revoked.stderr
        assert status_many(server, first) == {401}

        second = run_cli("token", "create", "second", "--scope", "read", "--root", str(root))
        assert status_many(server, second.stdout.strip()) == {200}
        assert status_many(server, first) == {401}
    finally:
        stop_server(server)


@pytest.fixture
def admin_only(tmp_path: Path) -> Iterator[tuple[RunningServer, str]]:
    """A server on a store of its own whose token file lists one admin token."""
    root = tmp_path / "store"
    write_table(root)
    token = create_token(root, "only", ["admin"])
    server = start_server(root, tmp_path / "server.log")
    yield server, token
    stop_server(server)


def test_revoking_last_token_keeps_server_closed(admin_only: tuple[RunningServer, str]) -> None:
    server, token = admin_only
    revoke_token(server.root, "only")

    assert call(server, "GET", "/features", token).status_code == 401
    assert call(server, "GET", "/features", None).status_code == 401
    assert call(server, "GET", "/health", None).status_code == 200

    tokens_path(server.root).unlink()

    assert call(server, "GET", "/features", None).status_code == 200


def test_invalid_token_file_rejects_requests(admin_only: tuple[RunningServer, str]) -> None:
    server, token = admin_only
    tokens_path(server.root).write_text("{not json")
    response = call(server, "GET", "/features", token)
    health = call(server, "GET", "/health", None)

    assert response.status_code == 503
    assert response.json()["error"]["code"] == "token_file_invalid"
    assert str(tokens_path(server.root)) in response.json()["error"]["message"]
    assert health.status_code == 200


# Python client and CLI


def test_client_sends_token_option(protected: ProtectedServer) -> None:
    with FeatureStoreClient(protected.server.base_url, token=protected.tokens["read"]) as client:
        tables = client.list_features()

    assert "t" in [table["name"] for table in tables]


def test_client_reads_token_variable(
    protected: ProtectedServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SQLSTORE_TOKEN", protected.tokens["sql"])

    with FeatureStoreClient(protected.server.base_url) as client:
        result = client.sql("SELECT 2 AS x")
        with pytest.raises(FeatureStoreError) as raised:
            client.list_features()

    assert result["data"] == [{"x": 2}]
    assert raised.value.status_code == 403
    assert raised.value.code == "insufficient_scope"


def test_client_without_token_gets_401(
    protected: ProtectedServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("SQLSTORE_TOKEN", raising=False)

    with FeatureStoreClient(protected.server.base_url) as client:
        with pytest.raises(FeatureStoreError) as raised:
            client.list_features()

    assert raised.value.status_code == 401
    assert raised.value.code == "unauthorized"


def test_token_list_hides_tokens(tmp_path: Path) -> None:
    created = run_cli(
        "token", "create", "ci-reader", "--scope", "read", "--scope", "sql", "--root", str(tmp_path)
    )
    listed = run_cli("token", "list", "--root", str(tmp_path))

    assert created.returncode == 0, created.stderr
    assert created.stdout.strip().startswith("sqlst_")
    assert listed.returncode == 0, listed.stderr
    assert "ci-reader" in listed.stdout
    assert "read,sql" in listed.stdout
    assert created.stdout.strip() not in listed.stdout + listed.stderr


def test_token_create_rejects_missing_store(tmp_path: Path) -> None:
    (tmp_path / "unrelated.txt").write_text("not a store")
    mistyped = tmp_path / "typo"

    missing = run_cli("token", "create", "x", "--scope", "read", "--root", str(mistyped))
    not_store = run_cli("token", "create", "x", "--scope", "read", "--root", str(tmp_path))

    assert missing.returncode == 1
    assert f"no sqlstore store at {mistyped}" in missing.stderr
    assert not mistyped.exists()
    assert not_store.returncode == 1
    assert sorted(path.name for path in tmp_path.iterdir()) == ["unrelated.txt"]


def test_token_create_rejects_bad_input(tmp_path: Path) -> None:
    unknown_scope = run_cli("token", "create", "x", "--scope", "root", "--root", str(tmp_path))
    bad_name = run_cli("token", "create", "a/b", "--scope", "read", "--root", str(tmp_path))
    run_cli("token", "create", "twice", "--scope", "read", "--root", str(tmp_path))
    duplicate = run_cli("token", "create", "twice", "--scope", "read", "--root", str(tmp_path))
    missing = run_cli("token", "revoke", "nobody", "--root", str(tmp_path))

    assert unknown_scope.returncode == 1
    assert "unknown scope 'root'" in unknown_scope.stderr
    assert bad_name.returncode == 1
    assert "invalid token name 'a/b'" in bad_name.stderr
    assert duplicate.returncode == 1
    assert "a token named 'twice' exists" in duplicate.stderr
    assert missing.returncode == 1
    assert "no token named 'nobody'" in missing.stderr


# Binding addresses


@pytest.mark.parametrize("host", ["127.0.0.1", "127.0.0.2", "::1", "localhost"])
def test_loopback_hosts(host: str) -> None:
    assert _is_loopback(host)


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "192.168.1.10", "example.com"])
def test_non_loopback_hosts(host: str) -> None:
    assert not _is_loopback(host)


def test_serve_remote_without_tokens_exits(tmp_path: Path) -> None:
    completed = run_cli("serve", "--root", str(tmp_path), "--host", "0.0.0.0", "--port", "1")

    assert completed.returncode == 2
    message = " ".join(completed.stderr.split())
    assert "not serving on 0.0.0.0" in message
    assert "--allow-unauthenticated-remote" in message
    assert "sqlstore token create" in message


def test_remote_flag_logs_warning(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="sqlstore.cli"):
        _check_exposure(tmp_path, "0.0.0.0", allow_unauthenticated_remote=True)

    assert "without access tokens" in caplog.text


def test_remote_with_tokens_passes(tmp_path: Path) -> None:
    create_token(tmp_path, "remote", ["read"])

    _check_exposure(tmp_path, "0.0.0.0", allow_unauthenticated_remote=False)


def test_remote_without_flag_raises_exit(tmp_path: Path) -> None:
    with pytest.raises(typer.Exit) as raised:
        _check_exposure(tmp_path, "10.0.0.1", allow_unauthenticated_remote=False)

    assert raised.value.exit_code == 2


def test_default_bind_is_loopback() -> None:
    completed = run_cli("serve", "--help")
    makefile = (Path(__file__).parent.parent / "Makefile").read_text()

    assert "127.0.0.1" in " ".join(completed.stdout.split())
    assert "HOST ?= 127.0.0.1" in makefile


def test_open_store_needs_no_token(tmp_path: Path) -> None:
    write_table(tmp_path)
    server = start_server(tmp_path, tmp_path / "server.log")
    try:
        response = call(server, "GET", "/features", None)
    finally:
        stop_server(server)

    assert response.status_code == 200


def test_cli_sql_url_sends_token(protected: ProtectedServer) -> None:
    url = protected.server.base_url
    sql = "SELECT value FROM g.t ORDER BY value"
    with_option = run_cli(
        "sql", sql, "--url", url, "--token", protected.tokens["sql"], "--format", "json"
    )
    without = run_cli("sql", sql, "--url", url)

    assert with_option.returncode == 0, with_option.stderr
    assert json.loads(with_option.stdout)["data"] == [{"value": 0.5}, {"value": 1.5}]
    assert without.returncode == 1
    assert "401 unauthorized" in without.stderr


def test_cli_query_url_reads_variable(protected: ProtectedServer) -> None:
    environment = {
        **without_token_variable(),
        "COLUMNS": "200",
        "SQLSTORE_TOKEN": protected.tokens["sql"],
    }
    listed = subprocess.run(
        [sys.executable, "-m", "sqlstore", "query", "--url", protected.server.base_url],
        capture_output=True,
        text=True,
        timeout=PROCESS_TIMEOUT_SECONDS,
        env=environment,
    )

    assert listed.returncode == 0, listed.stderr
    assert "top_rated_in_genre" in listed.stdout


INVALID_TOKEN_FILES = [
    "[]",
    '{"tokens": {"name": "x"}}',
    '{"tokens": [{"name": "x", "scopes": ["read"], "created_at": "now"}]}',
    '{"tokens": [{"name": "x", "scopes": ["read"], "created_at": "now", "sha256": 7}]}',
    '{"tokens": [{"name": "x", "scopes": ["read"], "created_at": "now", "sha256": "ab"}]}',
    '{"tokens": [{"name": 5, "scopes": ["read"], "created_at": "now", "sha256": "'
    + "a" * 64
    + '"}]}',
    '{"tokens": [{"name": "x", "scopes": "read", "created_at": "now", "sha256": "'
    + "a" * 64
    + '"}]}',
    '{"tokens": [{"name": "x", "scopes": ["root"], "created_at": "now", "sha256": "'
    + "a" * 64
    + '"}]}',
]


@pytest.mark.parametrize("content", INVALID_TOKEN_FILES)
def test_malformed_token_file_raises(tmp_path: Path, content: str) -> None:
    path = tmp_path / "tokens.json"
    path.write_text(content)

    with pytest.raises(TokenFileInvalid) as raised:
        read_tokens(path)

    assert str(path) in raised.value.message


# Requests that the fast lane serves before the middleware: memory hits of page reads and
# online lookups.


def test_cached_page_still_needs_token(protected: ProtectedServer) -> None:
    path = "/features/g/t?limit=1&entity_id=2"
    warm = [call(protected.server, "GET", path, protected.tokens["read"]) for _ in range(4)]

    anonymous = call(protected.server, "GET", path, None)
    wrong_scope = call(protected.server, "GET", path, protected.tokens["write"])
    invalid = call(protected.server, "GET", path, "sqlst_not-a-token")
    allowed = call(protected.server, "GET", path, protected.tokens["read"])

    assert all(response.status_code == 200 for response in warm)
    assert anonymous.status_code == 401
    assert wrong_scope.status_code == 403
    assert invalid.status_code == 401
    assert allowed.status_code == 200
    assert allowed.headers["x-cache"] == "hit-memory"
    assert [(row["entity_id"], row["value"]) for row in allowed.json()["data"]] == [(2, 1.5)]


def test_online_lookup_still_needs_token(protected: ProtectedServer) -> None:
    body = {"entities": {"entity_id": [1]}, "features": ["g/t:value"]}

    anonymous = call(protected.server, "POST", "/get-online-features", None, body)
    wrong_scope = call(
        protected.server, "POST", "/get-online-features", protected.tokens["sql"], body
    )
    allowed = call(protected.server, "POST", "/get-online-features", protected.tokens["read"], body)

    assert anonymous.status_code == 401
    assert wrong_scope.status_code == 403
    assert allowed.status_code == 200
    assert allowed.json()["results"][1]["values"] == [0.5]


def test_fast_lane_logs_request_id_and_token(protected: ProtectedServer) -> None:
    path = "/features/g/t?limit=1&entity_id=1"
    headers = {"Authorization": f"Bearer {protected.tokens['read']}"}
    for _ in range(4):
        httpx.get(protected.server.base_url + path, headers=headers, timeout=30)

    hit = httpx.get(
        protected.server.base_url + path,
        headers={**headers, "X-Request-ID": "fast-lane-hit"},
        timeout=30,
    )
    log = protected.server.log_containing("fast-lane-hit")
    lines = [line for line in log.splitlines() if "fast-lane-hit" in line]

    assert hit.headers["x-cache"] == "hit-memory"
    assert hit.headers["x-request-id"] == "fast-lane-hit"
    assert len(lines) == 1
    assert "GET /features/g/t 200 " in lines[0]
    assert "cache=hit-memory" in lines[0]
    assert "token=only-read " in lines[0]
