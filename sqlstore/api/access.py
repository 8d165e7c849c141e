"""Access control: bearer tokens with scopes, checked for every request before routing.

Each route needs one scope, listed in ROUTE_SCOPES, and the `admin` scope grants all of them. A
route missing from the table needs `admin` for methods other than GET, HEAD and OPTIONS, so a
new write route is closed until it is listed there. While the store has no token file, every
request passes.
"""

from __future__ import annotations

import logging

from starlette.requests import Request
from starlette.routing import compile_path
from starlette.types import ASGIApp, Receive, Scope, Send

from sqlstore.api.errors import error_response, loggable_path
from sqlstore.tokens import ADMIN_SCOPE, TokenFileInvalid, TokenRecord, TokenVerifier

logger = logging.getLogger(__name__)

REALM = 'Bearer realm="sqlstore"'

# The scope each (method, route template) needs; None means no token is needed. HEAD requests
# need what GET needs.
ROUTE_SCOPES: dict[tuple[str, str], str | None] = {
    ("GET", "/health"): None,
    ("GET", "/openapi.json"): "read",
    ("GET", "/docs"): "read",
    ("GET", "/docs/oauth2-redirect"): "read",
    ("GET", "/redoc"): "read",
    ("GET", "/features"): "read",
    ("GET", "/features/{group}/{name}"): "read",
    ("GET", "/features/{group}/{name}/info"): "read",
    ("POST", "/features/batch"): "read",
    ("POST", "/get-online-features"): "read",
    ("POST", "/features/{group}/{name}"): "write",
    ("DELETE", "/features/{group}/{name}"): "write",
    # entity_sql in a training set request runs in the same read-only sandbox as /sql, over
    # the same views that the read scope can page through.
    ("POST", "/training-set"): "read",
    ("GET", "/training-sets"): "read",
    ("GET", "/sql"): "sql",
    ("POST", "/sql"): "sql",
    ("GET", "/queries"): "sql",
    ("GET", "/queries/{name}"): "sql",
    ("POST", "/queries/{name}"): "sql",
    ("GET", "/cache/stats"): "admin",
    ("DELETE", "/cache"): "admin",
    ("DELETE", "/cache/{group}/{name}"): "admin",
    ("GET", "/metrics"): "admin",
    ("GET", "/performance"): "admin",
    ("GET", "/online"): "admin",
}
# Path regular expressions of the templates above, compiled the way Starlette compiles routes.
TEMPLATE_PATTERNS = {
    template: compile_path(template)[0] for template in dict.fromkeys(p for _, p in ROUTE_SCOPES)
}
SAFE_METHODS = ("GET", "HEAD", "OPTIONS")


def required_scope(method: str, path: str) -> tuple[str | None, str]:
    """Return the scope that `method` on `path` needs, and the route template it matched.

    The table is matched here, before routing, so that a request without a valid token is
    rejected before its body is read. A method and path missing from the table get 404 or 405
    from the router, unless a route was left out of the table. They need `read` for a safe
    method and `admin` otherwise, so a write route left out of the table stays closed.
    """
    method = "GET" if method == "HEAD" else method
    for template, pattern in TEMPLATE_PATTERNS.items():
        if pattern.match(path) and (method, template) in ROUTE_SCOPES:
            return ROUTE_SCOPES[(method, template)], template
    return ("read" if method in SAFE_METHODS else ADMIN_SCOPE), path


def bearer_token(scope: Scope) -> str | None:
    """Return the token of an `Authorization: Bearer` header, "" for another scheme or an
    empty token, or None when the header is missing."""
    for name, value in scope["headers"]:
        if name == b"authorization":
            scheme, _, token = value.decode("latin-1").strip().partition(" ")
            if scheme.lower() != "bearer":
                return ""
            return token.strip()
    return None


class AccessControlMiddleware:
    """Reject requests without a token that grants the route's scope, when tokens are on."""

    def __init__(self, app: ASGIApp, verifier: TokenVerifier) -> None:
        self.app = app
        self.verifier = verifier

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not self.verifier.enabled:
            await self.app(scope, receive, send)
            return

        needed, template = required_scope(scope["method"], scope["path"])
        if needed is None:
            await self.app(scope, receive, send)
            return

        request = Request(scope)
        token = bearer_token(scope)
        try:
            record = self.verifier.verify(token) if token else None
        except TokenFileInvalid as error:
            await self._reject(request, 503, error.code, error.message, None, receive, send)
            return

        if record is None:
            await self._reject_unauthenticated(request, needed, template, token, receive, send)
            return
        # Set before the scope check, so that the access log names the token of a 403 too.
        scope.setdefault("state", {})["token_name"] = record.name
        if not record.allows(needed):
            await self._reject_scope(request, needed, template, record, receive, send)
            return

        await self.app(scope, receive, send)

    async def _reject_unauthenticated(
        self,
        request: Request,
        needed: str,
        template: str,
        token: str | None,
        receive: Receive,
        send: Send,
    ) -> None:
        fix = (
            f"send 'Authorization: Bearer <token>' with a token that has the {needed!r} scope "
            f"(create one with `sqlstore token create NAME --scope {needed}`)"
        )
        if token is None:
            message = f"missing bearer token: {request.method} {template} needs one; "
            header = f'{REALM}, scope="{needed}"'
            code = "unauthorized"
        elif token == "":
            message = "invalid Authorization header: expected the Bearer scheme and a token; "
            header = f'{REALM}, error="invalid_request", scope="{needed}"'
            code = "invalid_request"
        else:
            message = "invalid bearer token: it is unknown or was revoked; "
            header = f'{REALM}, error="invalid_token", scope="{needed}"'
            code = "invalid_token"
        await self._reject(request, 401, code, message + fix, header, receive, send)

    async def _reject_scope(
        self,
        request: Request,
        needed: str,
        template: str,
        record: TokenRecord,
        receive: Receive,
        send: Send,
    ) -> None:
        message = (
            f"token {record.name!r} lacks the {needed!r} scope that {request.method} "
            f"{template} needs (it has {', '.join(record.scopes)}); use a token with the "
            f"{needed!r} scope" + ("" if needed == ADMIN_SCOPE else " or the 'admin' scope")
        )
        header = f'{REALM}, error="insufficient_scope", scope="{needed}"'
        await self._reject(request, 403, "insufficient_scope", message, header, receive, send)

    async def _reject(
        self,
        request: Request,
        status: int,
        code: str,
        message: str,
        authenticate: str | None,
        receive: Receive,
        send: Send,
    ) -> None:
        logger.warning(
            "%s %s rejected with %d %s (request %s)",
            request.method,
            loggable_path(request),
            status,
            code,
            request.scope.get("state", {}).get("request_id", "-"),
        )
        headers = {"WWW-Authenticate": authenticate} if authenticate else None
        response = error_response(request, status, code, message, headers=headers)
        await response(request.scope, receive, send)
