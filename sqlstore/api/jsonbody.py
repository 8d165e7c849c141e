"""JSON request bodies: the Content-Type they need, the encoding they must have, and keys
given once.

Python's JSON parser, which FastAPI uses, reads a body that starts with a byte order mark or
has a NUL byte among its first four bytes as UTF-16 or UTF-32 text. It then accepts such JSON,
or reports a decode error at a position of the misread text. `JsonBodyRoute` rejects these
bodies before they are parsed, with a message that names the cause.

JSON parsers keep the last value of a key that an object repeats, so `{"mode": "append",
"mode": "overwrite"}` would overwrite a table. `parse_json_body` rejects such a body instead,
and `repeats_no_key` lets the routes that parse with orjson, which cannot report a repeated
key, skip that slower parser for the bodies that cannot repeat one.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Coroutine, Sequence
from typing import Any

import orjson
from fastapi import Request
from fastapi.routing import APIRoute
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.responses import Response

from sqlstore.api.errors import describe_unreadable_body
from sqlstore.errors import InvalidInput, quoted_value

# Byte order marks of UTF-8, UTF-16 and UTF-32 text, which JSON sent over a network must not
# start with (RFC 8259, section 8.1).
BYTE_ORDER_MARKS = (b"\xef\xbb\xbf", b"\xff\xfe", b"\xfe\xff")
NUL = b"\x00"
# Bodies up to this size are parsed on the event loop, in at most about a millisecond. Larger
# ones are parsed in the thread pool, where the parser lets the event loop run at each JSON
# object it completes (see `parse_json_body`).
INLINE_PARSE_BYTES = 64 * 1024


def require_json_body(request: Request) -> None:
    """Reject a request body sent without a Content-Type, with one other than JSON, or with a
    Content-Encoding such as gzip, which the server does not decode.

    FastAPI does not parse a body without a Content-Type as JSON, and its 422 would not say why.
    """
    check_content_encoding(request)
    content_type = request.headers.get("content-type")
    if content_type is None:
        raise HTTPException(415, detail="missing Content-Type: send the body as application/json")
    if not is_json_media_type(content_type):
        raise HTTPException(
            415,
            detail=f"unsupported Content-Type {content_type!r}: send the body as application/json",
        )


async def json_body(request: Request) -> None:
    """`require_json_body` as a dependency. As an `async` function it runs on the event loop,
    where a plain function would cost each request a trip through the thread pool."""
    require_json_body(request)


def check_content_encoding(request: Request) -> None:
    """Reject a body sent with a Content-Encoding such as gzip, which the server does not
    decode, with a 415 rather than a parse error."""
    encoding = request.headers.get("content-encoding", "identity").strip().lower()
    if encoding != "identity":
        raise HTTPException(
            415,
            detail=f"unsupported Content-Encoding {encoding!r}: send the body uncompressed",
        )


def is_json_media_type(content_type: str) -> bool:
    """Return True for a Content-Type of application/json or a +json type, any parameters."""
    media_type = content_type.split(";")[0].strip().lower()
    return media_type == "application/json" or media_type.endswith("+json")


def starts_as_other_encoding(body: bytes) -> bool:
    """Return True when `body` starts as UTF-16 or UTF-32 text or with a byte order mark."""
    start = body[:4]
    return start.startswith(BYTE_ORDER_MARKS) or NUL in start


def check_body_start(body: bytes) -> None:
    """Raise InvalidInput when `body` starts with a byte order mark or has a NUL byte among its
    first four bytes, which Python's JSON parser would read as UTF-16 or UTF-32 text."""
    if body.startswith(BYTE_ORDER_MARKS):
        raise InvalidInput(
            "the request body starts with a byte order mark; send JSON encoded as UTF-8 without one"
        )
    position = body[:4].find(NUL)
    if position >= 0:
        raise InvalidInput(
            f"the request body is not UTF-8 JSON: it has a NUL byte at position {position}, as "
            "UTF-16 and UTF-32 text does; send JSON encoded as UTF-8"
        )


class _RepeatedKey(Exception):
    """Raised by `_object_of_unique_keys` to stop the parser at the first repeated key."""


class _ObjectWithRepeatedKey(dict[str, Any]):
    """A parsed JSON object that gave `repeated_key` more than once."""

    repeated_key: str


def parse_json_body(body: bytes) -> Any:
    """Parse a request body as `json.loads` does, and raise InvalidInput naming the key and its
    location when a JSON object in it repeats a key. Raises json.JSONDecodeError for text that
    is not JSON.

    The parser calls back into Python for each JSON object, about 50% more time than
    `json.loads` alone for a body of small records. Those calls also let the event loop run
    while another thread parses. NOTE: the parser holds the GIL for the whole of an array or
    string without an object in it. So a body that is mostly one large array of numbers or
    strings stalls the event loop in any thread, for 6 s with 256 MiB of `1,` on a 2-core VM.
    """
    try:
        return _loads(body, _object_of_unique_keys)
    except _RepeatedKey:
        pass
    # Only a body with a repeated key is parsed again, to find where the key is.
    key, location = _repeated_key_location(_loads(body, _object_marking_repeated_key))
    where = f"{location} of the request body" if location else "the request body"
    raise InvalidInput(
        f"duplicate key {quoted_value(key)} in {where}; give each key once, because only its "
        "last value would be used"
    )


def _loads(body: bytes, object_pairs_hook: Callable[[list[tuple[str, Any]]], Any]) -> Any:
    try:
        return json.loads(body, object_pairs_hook=object_pairs_hook)
    except RecursionError as error:
        # The same message as FastAPI's parse error gets, for callers outside FastAPI.
        raise InvalidInput(str(describe_unreadable_body(error))) from None


def _object_of_unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    parsed = dict(pairs)
    if len(parsed) != len(pairs):
        raise _RepeatedKey
    return parsed


def _object_marking_repeated_key(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    parsed = dict(pairs)
    if len(parsed) == len(pairs):
        return parsed
    marked = _ObjectWithRepeatedKey(pairs)
    seen: set[str] = set()
    for key, _ in pairs:
        if key in seen:
            marked.repeated_key = key
            break
        seen.add(key)
    return marked


def _repeated_key_location(value: Any) -> tuple[str, str]:
    """Return the repeated key of the first marked object in `value`, in document order, and
    the object's location, such as `records[2]` ("" for `value` itself)."""
    pending: list[tuple[Any, str]] = [(value, "")]
    while pending:
        item, location = pending.pop()
        if isinstance(item, _ObjectWithRepeatedKey):
            return item.repeated_key, location
        if isinstance(item, dict):
            members = [(child, _member_location(location, key)) for key, child in item.items()]
            pending.extend(reversed(members))
        elif isinstance(item, list):
            items = [(child, f"{location}[{index}]") for index, child in enumerate(item)]
            pending.extend(reversed(items))
    raise AssertionError("no object with a repeated key")


def _member_location(location: str, key: str) -> str:
    if not key.isidentifier():
        return f"{location}[{quoted_value(key)}]"
    return f"{location}.{key}" if location else key


def repeats_no_key(body: bytes, objects: Sequence[dict[str, Any]]) -> bool:
    """Return True when `objects`, parsed from `body`, are all the JSON objects of `body` and
    each of their keys occurs once in `body`, so that no object of `body` repeats a key.

    False means that a key may be repeated, and `parse_json_body` then finds out. It is
    returned for a key that also occurs as a value, and for a body with the escape `\\u` or
    `\\/`, which could write one key in two ways. Without those escapes, the only way to write
    a key is the way orjson writes it. Each object has a `{` of its own, so counting them shows
    whether `objects` are all of them. On a 2-core VM the searches took about 2 µs for a lookup
    body of 80 bytes and 70 µs for one of 50 kB, which orjson parses in 170 µs.
    """
    if _count_up_to(body, b"{", len(objects) + 1) != len(objects):
        return False
    if b"\\" in body and (b"\\u" in body or b"\\/" in body):
        return False
    for parsed in objects:
        for key in parsed:
            written = orjson.dumps(key)
            first = body.find(written)
            if first < 0 or body.rfind(written) != first:
                return False
    return True


def _count_up_to(body: bytes, byte: bytes, limit: int) -> int:
    """Return how often `byte` occurs in `body`, counting at most `limit` occurrences. Each
    step is a `memchr`, which is faster than `bytes.count` over the whole body."""
    count = 0
    position = body.find(byte)
    while position >= 0 and count < limit:
        count += 1
        position = body.find(byte, position + 1)
    return count


class _Utf8JsonRequest(Request):
    """A request whose `json()` rejects a compressed body, one that does not start as UTF-8
    text and one with a repeated key, and parses a large body in the thread pool."""

    async def json(self) -> Any:
        # FastAPI parses the body before it runs the dependencies, `json_body` included.
        if not hasattr(self, "_json"):
            check_content_encoding(self)
            body = await self.body()
            check_body_start(body)
            if len(body) <= INLINE_PARSE_BYTES:
                self._json = parse_json_body(body)
            else:
                self._json = await run_in_threadpool(parse_json_body, body)
        return self._json


class JsonBodyRoute(APIRoute):
    """A route whose JSON body must be UTF-8 text without a byte order mark.

    FastAPI turns the InvalidInput raised while it parses the body into a 400 whose cause is
    that error, and `sqlstore.api.errors` returns the response for the cause.
    """

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def checked_handler(request: Request) -> Response:
            return await handler(_Utf8JsonRequest(request.scope, request.receive))

        return checked_handler
