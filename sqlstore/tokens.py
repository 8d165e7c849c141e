"""Bearer tokens for the REST API, kept in `<root>/config/tokens.json` as SHA-256 hashes.

A token is 32 random bytes from `secrets`, so an unsalted SHA-256 hash is enough to keep it from
being recovered from the file. Only the hash, the name, the scopes and the creation time are
stored; the token itself is shown once, when it is created.

Access control is on while the file exists, even when it lists no token, so that revoking the
last token locks the server instead of opening it. Deleting the file turns access control off.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import os
import re
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import filelock

from sqlstore.atomic import replace_atomically
from sqlstore.errors import Conflict, InvalidInput, NotFound, SqlstoreError, StorageError

logger = logging.getLogger(__name__)

TOKENS_FILE_NAME = "tokens.json"
TOKEN_PREFIX = "sqlst_"
TOKEN_BYTES = 32
SCOPES = ("read", "write", "sql", "admin")
# The admin scope grants every other scope.
ADMIN_SCOPE = "admin"
TOKEN_NAME_PATTERN = re.compile(r"[A-Za-z0-9._-]{1,64}")
FILE_VERSION = 1
SHA256_PATTERN = re.compile(r"[0-9a-f]{64}")
LOCK_TIMEOUT_SECONDS = 10


class TokenFileInvalid(SqlstoreError):
    """The token file exists but cannot be read or parsed, so no request can be authorized."""

    status = 503
    code = "token_file_invalid"


@dataclass(frozen=True)
class TokenRecord:
    """One stored token: its name, scopes, creation time and the SHA-256 hash of its value."""

    name: str
    scopes: tuple[str, ...]
    created_at: str
    sha256: str

    def allows(self, scope: str) -> bool:
        return scope in self.scopes or ADMIN_SCOPE in self.scopes

    def to_json(self) -> dict[str, object]:
        return {
            "name": self.name,
            "scopes": list(self.scopes),
            "created_at": self.created_at,
            "sha256": self.sha256,
        }


def tokens_path(root: Path) -> Path:
    """Return the token file of the store at `root`."""
    return root / "config" / TOKENS_FILE_NAME


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def validate_scopes(scopes: list[str]) -> tuple[str, ...]:
    """Return `scopes` without duplicates, in the order of SCOPES; raise InvalidInput on an
    unknown or missing scope."""
    unknown = sorted(set(scopes) - set(SCOPES))
    if unknown:
        raise InvalidInput(
            f"unknown scope {', '.join(map(repr, unknown))}; use one or more of {', '.join(SCOPES)}"
        )
    if not scopes:
        raise InvalidInput(f"give at least one scope: {', '.join(SCOPES)}")
    return tuple(scope for scope in SCOPES if scope in scopes)


def validate_token_name(name: str) -> str:
    if not TOKEN_NAME_PATTERN.fullmatch(name):
        raise InvalidInput(
            f"invalid token name {name!r}: use 1 to 64 letters, digits, '.', '_' or '-'"
        )
    return name


def read_tokens(path: Path) -> list[TokenRecord] | None:
    """Return the tokens in `path`, or None when the file does not exist.

    Raise TokenFileInvalid when the file cannot be read or does not have the expected shape.
    """
    try:
        content = json.loads(path.read_bytes())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as error:
        raise TokenFileInvalid(f"could not read the token file {path}: {error}") from error

    try:
        return [_record_from_json(item) for item in content["tokens"]]
    except (KeyError, TypeError, InvalidInput) as error:
        # A KeyError's text is only the key, so it is named as a missing field.
        problem = f"missing field {error}" if isinstance(error, KeyError) else str(error)
        raise TokenFileInvalid(
            f"invalid token file {path}: {problem}; fix it, or delete it and create the tokens "
            "again with `sqlstore token create`"
        ) from error


def _record_from_json(item: dict[str, object]) -> TokenRecord:
    name, scopes, created_at, sha256 = (
        item["name"],
        item["scopes"],
        item["created_at"],
        item["sha256"],
    )
    if not isinstance(name, str) or not isinstance(scopes, list):
        raise InvalidInput("each token entry needs a string name and a list of scopes")
    if not isinstance(sha256, str) or not SHA256_PATTERN.fullmatch(sha256):
        raise InvalidInput(f"token {name!r} has no valid sha256: expected 64 hex digits")
    return TokenRecord(
        name=validate_token_name(name),
        scopes=validate_scopes(scopes),
        created_at=str(created_at),
        sha256=sha256,
    )


def _write_tokens(path: Path, tokens: list[TokenRecord]) -> None:
    body = {"version": FILE_VERSION, "tokens": [token.to_json() for token in tokens]}
    data = json.dumps(body, indent=2).encode() + b"\n"

    def write(temporary: Path) -> None:
        # Created with owner-only permissions, so other users (except root) cannot read the hashes.
        descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(descriptor, "wb") as file:
            file.write(data)

    replace_atomically(path, write)


@contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    """Hold the lock that serializes changes to the token file across processes."""
    lock = filelock.FileLock(path.with_name(f".{path.name}.lock"), timeout=LOCK_TIMEOUT_SECONDS)
    try:
        with lock:
            yield
    except filelock.Timeout as error:
        raise StorageError(
            f"another process held the lock on {path} for {LOCK_TIMEOUT_SECONDS} s; try again"
        ) from error


def create_token(root: Path, name: str, scopes: list[str]) -> str:
    """Store a new token named `name` with `scopes` and return its value, which is not stored.

    Raise Conflict when a token of that name exists.
    """
    validate_token_name(name)
    record_scopes = validate_scopes(scopes)
    path = tokens_path(root)
    path.parent.mkdir(parents=True, exist_ok=True)
    token = TOKEN_PREFIX + secrets.token_urlsafe(TOKEN_BYTES)

    with _file_lock(path):
        tokens = read_tokens(path) or []
        if any(existing.name == name for existing in tokens):
            raise Conflict(f"a token named {name!r} exists; revoke it first or pick another name")
        record = TokenRecord(
            name=name,
            scopes=record_scopes,
            created_at=datetime.now(UTC).isoformat(timespec="seconds"),
            sha256=hash_token(token),
        )
        _write_tokens(path, [*tokens, record])
    logger.info("created token %r with scopes %s", name, ",".join(record_scopes))
    return token


def list_tokens(root: Path) -> list[TokenRecord] | None:
    """Return the stored tokens, or None when access control is off (no token file)."""
    return read_tokens(tokens_path(root))


def revoke_token(root: Path, name: str) -> None:
    """Remove the token named `name`; raise NotFound when there is none."""
    path = tokens_path(root)
    if not path.is_file():
        raise NotFound(f"no token named {name!r}: {path} does not exist")
    with _file_lock(path):
        tokens = read_tokens(path) or []
        remaining = [token for token in tokens if token.name != name]
        if len(remaining) == len(tokens):
            raise NotFound(f"no token named {name!r}; `sqlstore token list` shows the names")
        _write_tokens(path, remaining)
    logger.info("revoked token %r", name)


class TokenVerifier:
    """Checks presented tokens against the token file, re-reading it whenever it changes.

    Each check costs one stat() call. The file is parsed again only when its inode, size or
    modification time differ from the last read. A token created or revoked by the CLI
    therefore takes effect on the next request in every worker process.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._loaded = False
        self._signature: tuple[int, int, int] | None = None
        self._tokens: list[TokenRecord] | None = None
        self._error: TokenFileInvalid | None = None
        self._refresh()

    @property
    def enabled(self) -> bool:
        """Whether requests need a token: true while the token file exists."""
        self._refresh()
        return self._tokens is not None or self._error is not None

    def token_count(self) -> int:
        self._refresh()
        return len(self._tokens or [])

    def verify(self, token: str) -> TokenRecord | None:
        """Return the record of `token`, or None when no stored token matches it.

        Raise TokenFileInvalid when the file cannot be read.
        """
        self._refresh()
        if self._error is not None:
            raise self._error
        presented = hash_token(token)
        found = None
        # Compare with every record, each in constant time, so the response time does not reveal
        # how much of a stored hash matched.
        for record in self._tokens or []:
            if hmac.compare_digest(presented, record.sha256):
                found = record
        return found

    def _refresh(self) -> None:
        try:
            status = os.stat(self.path)
            signature: tuple[int, int, int] | None = (
                status.st_ino,
                status.st_size,
                status.st_mtime_ns,
            )
        except FileNotFoundError:
            signature = None
        except OSError as error:
            self._fail(TokenFileInvalid(f"could not read the token file {self.path}: {error}"))
            return
        if self._loaded and signature == self._signature:
            return

        self._loaded = True
        self._signature = signature
        try:
            self._tokens = None if signature is None else read_tokens(self.path)
        except TokenFileInvalid as error:
            self._fail(error)
            return
        self._error = None
        if self._tokens is None:
            logger.info("access control is off: %s does not exist", self.path)
        else:
            logger.info("loaded %d token(s) from %s", len(self._tokens), self.path)

    def _fail(self, error: TokenFileInvalid) -> None:
        """Reject every request until the file reads again; log each new cause once."""
        if self._error is None or self._error.message != error.message:
            logger.error("%s; every request except /health is rejected", error.message)
        self._tokens = None
        self._error = error
        # Read the file again on the next request, whatever its signature.
        self._loaded = False
