"""JSON request bodies: the Content-Type they need and the encoding they must have.

Python's JSON parser, which FastAPI uses, reads a body that starts with a byte order mark or
has a NUL byte among its first four bytes as UTF-16 or UTF-32 text. It then accepts such JSON,
or reports a decode error at a position of the misread text. `JsonBodyRoute` rejects these
bodies before they are parsed, with a message that says why.
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
    """Reject a request body sent without a Content-Type or with one other than JSON.

    FastAPI does not parse a body without a Content-Type as JSON, and its 422 would not say why.
    """
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


def is_json_media_type(content_type: str) -> bool:
    """Return True for a Content-Type of application/json or a +json type, any parameters."""
    media_type = content_type.split(";")[0].strip().lower()
    return media_type == "application/json" or media_type.endswith("+json")


def starts_as_other_encoding(body: bytes) -> bool:
    """Return True when `body` starts as UTF-16 or UTF-32 text or with a byte order mark."""
    start = body[:4]
    return start.startswith(BYTE_ORDER_MARKS) or NUL in start


class _Utf8JsonRequest(Request):
    """A request whose `json()` rejects a body that does not start as UTF-8 text."""

    async def json(self) -> Any:
        body = await self.body()
        if starts_as_other_encoding(body):
            start = "a byte order mark"
            if not body.startswith(BYTE_ORDER_MARKS):
                start = f"a NUL byte at position {body.find(NUL)}"
            raise InvalidInput(
                f"the request body is not UTF-8 JSON: it starts with {start}, as UTF-16 and "
                "UTF-32 text does; send JSON encoded as UTF-8 without a byte order mark"
            )
        return await super().json()


class JsonBodyRoute(APIRoute):
    """A route whose JSON body must be UTF-8 text without a byte order mark.

    FastAPI turns the InvalidInput raised while it parses the body into a 400 whose cause is
    that error; `sqlstore.api.errors` answers with the cause.
    """

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def checked_handler(request: Request) -> Response:
            return await handler(_Utf8JsonRequest(request.scope, request.receive))

        return checked_handler
