"""JSON request bodies: the Content-Type they need and the encoding they must have.

Python's JSON parser, which FastAPI uses, reads a body that starts with a byte order mark or
has a NUL byte among its first four bytes as UTF-16 or UTF-32 text. It then accepts such JSON,
or reports a decode error at a position of the misread text. `JsonBodyRoute` rejects these
bodies before they are parsed, with a message that names the cause.
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from typing import Any

from fastapi import Request
from fastapi.routing import APIRoute
from starlette.exceptions import HTTPException
from starlette.responses import Response

from sqlstore.errors import InvalidInput

# Byte order marks of UTF-8, UTF-16 and UTF-32 text, which JSON sent over a network must not
# start with (RFC 8259, section 8.1).
BYTE_ORDER_MARKS = (b"\xef\xbb\xbf", b"\xff\xfe", b"\xfe\xff")
NUL = b"\x00"


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


class _Utf8JsonRequest(Request):
    """A request whose `json()` rejects a compressed body and one that does not start as UTF-8
    text."""

    async def json(self) -> Any:
        # FastAPI parses the body before it runs the dependencies, `json_body` included.
        check_content_encoding(self)
        check_body_start(await self.body())
        return await super().json()


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
