"""One JSON error shape for every failure: `{"error": {"code", "message", "request_id"}}`."""

from __future__ import annotations

import logging
import sys
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import Response
from starlette.routing import compile_path

from sqlstore import metrics
from sqlstore.api.encoding import JSONBytesResponse
from sqlstore.api.middleware import (
    PROTOCOL_REJECTED_STATUS,
    escape_path,
    received_method,
    route_template,
)
from sqlstore.errors import SqlstoreError, quoted_value

logger = logging.getLogger(__name__)

# Statuses of requests that the client got wrong or gave up. These are logged at INFO, other
# errors at WARNING.
CLIENT_INPUT_STATUSES = frozenset({400, 406, 413, 415, 422, 499})
# Error messages are cut to this many characters, in responses and in the log.
MAX_MESSAGE_CHARACTERS = 2000

# uvicorn's logger for exceptions that leave the application.
UVICORN_ERROR_LOGGER = "uvicorn.error"
# Attribute that `handle_unexpected_error` sets on each exception it logged.
LOGGED_MARK = "_sqlstore_logged"

# Errors of one request that a 422 lists in `details`, and in its message. A body can hold a
# million invalid values, and listing each made a 100 MB response.
MAX_VALIDATION_DETAILS = 20
SUMMARY_ERRORS = 5

# Attribute of the application's state that maps a route's path template to what the 422 of a
# request value names as the allowed values, by the value's location ("body.limit").
INPUT_ADVICE_STATE = "input_advice"

HTTP_CODES = {
    400: "bad_request",
    404: "not_found",
    405: "method_not_allowed",
    413: "payload_too_large",
    415: "unsupported_media_type",
}


def loggable_path(request: Request) -> str:
    """Return the request path as the access log writes it: control characters escaped, so a
    client cannot write terminal escapes or NUL bytes into the log. `request.url.path` would
    drop line breaks and tabs, which URL parsing removes."""
    return escape_path(request.scope["path"])


def request_id_of(request: Request) -> str:
    return getattr(request.state, "request_id", "-")


def protocol_rejected_status(request: Request) -> int | None:
    """Return the status with which the HTTP protocol rejected the request while the route
    read its body, or None. The route then fails on the disconnect that the protocol sent it."""
    return request.scope.get("state", {}).get(PROTOCOL_REJECTED_STATUS)


def unsent_response(status: int) -> Response:
    """Return an empty response for a request that the HTTP protocol already rejected with a
    response of its own. The server drops it, and neither the log nor the metrics record it,
    because the protocol recorded the request with the status that it sent."""
    return Response(status_code=status)


def error_response(
    request: Request,
    status: int,
    code: str,
    message: str,
    details: list[dict[str, Any]] | None = None,
    headers: dict[str, str] | None = None,
) -> Response:
    body: dict[str, Any] = {
        "error": {"code": code, "message": shortened(message), "request_id": request_id_of(request)}
    }
    if details:
        body["error"]["details"] = details
    metrics.ERRORS.labels(route=route_template(request.scope), code=code).inc()
    return JSONBytesResponse(body, status_code=status, headers=headers)


def describe_unreadable_body(error: BaseException) -> str | None:
    """Return a message for an exception that decoding a JSON request body raised, or None
    when it is not one of the known causes."""
    if isinstance(error, UnicodeDecodeError):
        return (
            f"the request body is not UTF-8 text (invalid byte at position {error.start}); "
            "send JSON encoded as UTF-8"
        )
    if isinstance(error, RecursionError):
        return (
            "the request body nests arrays or objects too deeply to parse; send flatter JSON "
            f"(Python's parser stops near {sys.getrecursionlimit()} levels)"
        )
    if isinstance(error, ValueError) and "integer string conversion" in str(error):
        # Python limits int() and json.loads to integers of 4300 digits by default.
        return (
            "the request body has an integer literal with more digits than Python's JSON parser "
            f"accepts ({sys.get_int_max_str_digits()}); send such a value as a string"
        )
    return None


def shortened(message: str) -> str:
    """Return `message` cut to MAX_MESSAGE_CHARACTERS. Messages quote the values a client sent,
    and a value can be as long as the body limit allows."""
    if len(message) <= MAX_MESSAGE_CHARACTERS:
        return message
    cut = len(message) - MAX_MESSAGE_CHARACTERS
    return f"{message[:MAX_MESSAGE_CHARACTERS]}… ({cut} more characters)"


async def handle_sqlstore_error(request: Request, error: SqlstoreError) -> Response:
    rejected_status = protocol_rejected_status(request)
    if rejected_status is not None:
        return unsent_response(rejected_status)
    # A request the client got wrong is logged like FastAPI's validation errors, at INFO.
    level = logging.INFO if error.status in CLIENT_INPUT_STATUSES else logging.WARNING
    logger.log(
        level,
        "%s %s failed with %d (request %s): %s",
        request.method,
        loggable_path(request),
        error.status,
        request_id_of(request),
        shortened(error.message),
    )
    retry = error.status == 503 and error.retry_after is not None
    headers = {"Retry-After": error.retry_after} if retry else None
    details = getattr(error, "details", None)
    return error_response(
        request, error.status, error.code, error.message, details=details, headers=headers
    )


async def handle_validation_error(request: Request, error: RequestValidationError) -> Response:
    for item in error.errors():
        if item.get("type") == "json_invalid":
            return _invalid_json(request, item)

    advice = _input_advice(request)
    errors = error.errors()
    details = []
    for item in errors[:MAX_VALIDATION_DETAILS]:
        location = ".".join(str(part) for part in item.get("loc", ()))
        message = item.get("msg", "")
        if item.get("type") != "missing":
            message = advice.get(location, message)
        details.append({"location": location, "message": message, "type": item.get("type", "")})
    summary = "; ".join(
        f"{detail['location']}: {detail['message']}{_quoted_input(item)}"
        for detail, item in zip(details[:SUMMARY_ERRORS], errors, strict=False)
    )
    if len(errors) > SUMMARY_ERRORS:
        summary += f"; and {len(errors) - SUMMARY_ERRORS} more"
    logger.info(
        "%s %s failed with 422 (request %s): invalid request: %s",
        request.method,
        loggable_path(request),
        request_id_of(request),
        summary,
    )
    return error_response(
        request, 422, "validation_error", f"invalid request: {summary}", details=details
    )


def register_input_advice(app: FastAPI, route: str, advice: dict[str, str]) -> None:
    """Use `advice[location]` in place of pydantic's message in the 422 of a value that the
    request model of `route` (a path template) rejects. The advice can name what a model
    declared at import time cannot, such as a range that depends on a setting."""
    registered = getattr(app.state, INPUT_ADVICE_STATE, None)
    if registered is None:
        registered = {}
        setattr(app.state, INPUT_ADVICE_STATE, registered)
    registered[route] = advice


def _input_advice(request: Request) -> dict[str, str]:
    registered = getattr(request.app.state, INPUT_ADVICE_STATE, None) or {}
    return registered.get(route_template(request.scope), {})


def _quoted_input(item: dict[str, Any]) -> str:
    """Return " (got VALUE)" for the value that failed validation, as JSON, or "" when the
    error is about a missing field, whose input is the enclosing object."""
    if item.get("type") == "missing" or "input" not in item:
        return ""
    return f" (got {quoted_value(item['input'])})"


def _allowed_methods(request: Request) -> list[str]:
    """Return the methods that the API description lists for the request's path, and HEAD
    with GET, sorted.

    The description is read because FastAPI keeps included routers as private objects
    rather than as routes with paths.
    """
    methods: set[str] = set()
    for template, operations in request.app.openapi().get("paths", {}).items():
        pattern, _, _ = compile_path(template)
        if pattern.match(request.url.path):
            methods.update(method.upper() for method in operations)
    if "GET" in methods:
        methods.add("HEAD")
    return sorted(methods)


def _invalid_json(request: Request, item: dict[str, Any]) -> Response:
    """Return 400 for a body that is not JSON. pydantic reports it as a validation error whose
    location is the character position, which would read like a field name."""
    location = item.get("loc", ())
    position = f" at character {location[1]}" if len(location) > 1 else ""
    reason = item.get("ctx", {}).get("error", "JSON decode error")
    # Some of the parser's reasons end in "at", such as "Invalid control character at".
    reason = reason.removesuffix(" at")
    message = f"invalid JSON body: {reason}{position}; send one JSON object"
    logger.info(
        "%s %s failed with 400 (request %s): %s",
        request.method,
        loggable_path(request),
        request_id_of(request),
        message,
    )
    return error_response(request, 400, "invalid_input", message)


async def handle_http_error(request: Request, error: StarletteHTTPException) -> Response:
    rejected_status = protocol_rejected_status(request)
    if rejected_status is not None:
        # FastAPI reports the disconnect as "There was an error parsing the body" (400).
        return unsent_response(rejected_status)
    if isinstance(error.__cause__, SqlstoreError):
        # FastAPI reports any error raised while it reads the body as a bare 400, with the
        # error as its cause (see `sqlstore.api.jsonbody`).
        return await handle_sqlstore_error(request, error.__cause__)
    message = str(error.detail)
    # FastAPI reports a body it cannot decode only as "There was an error parsing the body".
    if error.status_code == 400 and error.__cause__ is not None:
        message = describe_unreadable_body(error.__cause__) or message
    if error.status_code == 404 and message == "Not Found":
        message = f"no route matches {request.method} {request.url.path}; see /docs for the API"
    headers = error.headers
    if error.status_code == 405:
        # Starlette names only the methods of the first route with this path.
        allowed = _allowed_methods(request) or [(error.headers or {}).get("Allow", "")]
        headers = {**(error.headers or {}), "Allow": ", ".join(allowed)}
        message = (
            f"method {received_method(request.scope)} is not allowed on {request.url.path}; "
            f"use {', '.join(allowed)}"
        )
    code = HTTP_CODES.get(error.status_code, "http_error")
    logger.info(
        "%s %s failed with %d (request %s): %s",
        request.method,
        loggable_path(request),
        error.status_code,
        request_id_of(request),
        message.encode("unicode_escape").decode("ascii"),
    )
    return error_response(request, error.status_code, code, message, headers=headers)


async def handle_unexpected_error(request: Request, error: Exception) -> Response:
    logger.exception(
        "unexpected error in %s %s (request %s)",
        request.method,
        loggable_path(request),
        request_id_of(request),
    )
    setattr(error, LOGGED_MARK, True)
    # Starlette runs this handler outside RequestIdMiddleware, which therefore cannot add the
    # header to this response. Starlette raises the error again after this response, and
    # uvicorn then closes the connection, so the response sets `Connection: close`. A client
    # that reused the connection would otherwise have its next request reset.
    return error_response(
        request,
        500,
        "internal_error",
        f"internal error; report request id {request_id_of(request)} with the server log",
        headers={"X-Request-ID": request_id_of(request), "Connection": "close"},
    )


class LoggedErrorFilter(logging.Filter):
    """Drops the records of exceptions that `handle_unexpected_error` logged.

    Starlette (1.10) raises the exception again after the handler's response, and uvicorn
    (0.55) then logs it as "Exception in ASGI application", with a second traceback and
    without the request id. uvicorn's other records pass.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        error = record.exc_info[1] if record.exc_info else None
        return not getattr(error, LOGGED_MARK, False)


LOGGED_ERROR_FILTER = LoggedErrorFilter()


def install_error_handlers(app: FastAPI) -> None:
    """Install the error handlers, and the filter that keeps uvicorn from logging again what
    they logged. `Logger.addFilter` adds the one filter once however many apps are built."""
    app.add_exception_handler(SqlstoreError, handle_sqlstore_error)
    app.add_exception_handler(RequestValidationError, handle_validation_error)
    app.add_exception_handler(StarletteHTTPException, handle_http_error)
    app.add_exception_handler(Exception, handle_unexpected_error)
    logging.getLogger(UVICORN_ERROR_LOGGER).addFilter(LOGGED_ERROR_FILTER)
