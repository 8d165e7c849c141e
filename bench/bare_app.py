"""A bare FastAPI app that returns fixed bytes from a dict: the baseline of bench_cache.py.

It serves one body, read at start-up from the file named by $BARE_APP_BODY_FILE, under the
table reference in $BARE_APP_TABLE (for example content/movie_ratings), on the same path as
sqlstore's page route. Query parameters are accepted and ignored, so the benchmark can send the
same request line to both servers.

- `GET /features/{group}/{name}` is an `async def` endpoint: FastAPI's floor.
- `GET /sync/features/{group}/{name}` is a plain `def` endpoint, which FastAPI runs in its
  thread pool like sqlstore's page route.
- `POST /post/features/{group}/{name}` reads the request body, then returns the same bytes:
  the floor for a POST request such as an online lookup.
- `GET /health` returns 200 once the app has started.

Start it as bench_cache.py does:

    BARE_APP_BODY_FILE=body.json BARE_APP_TABLE=content/movie_ratings \\
        .venv/bin/python -m uvicorn bare_app:create_app --factory --app-dir bench \\
        --host 127.0.0.1 --port 8002 --workers 2 --no-access-log
"""

from __future__ import annotations

import os
from pathlib import Path

from fastapi import FastAPI
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response

BODY_FILE_VARIABLE = "BARE_APP_BODY_FILE"
TABLE_VARIABLE = "BARE_APP_TABLE"
MEDIA_TYPE = "application/json"


def load_bodies() -> dict[str, bytes]:
    """Return {table reference: body} from the environment, or raise RuntimeError naming a
    missing variable."""
    for variable in (BODY_FILE_VARIABLE, TABLE_VARIABLE):
        if variable not in os.environ:
            raise RuntimeError(f"missing environment variable {variable}; see bench/bare_app.py")
    body = Path(os.environ[BODY_FILE_VARIABLE]).read_bytes()
    return {os.environ[TABLE_VARIABLE]: body}


def create_app() -> FastAPI:
    """Build the app with its bodies loaded once, before the first request."""
    bodies = load_bodies()
    app = FastAPI(title="bare baseline")

    def body_of(group: str, name: str) -> bytes:
        try:
            return bodies[f"{group}/{name}"]
        except KeyError:
            raise HTTPException(404, detail=f"no body for {group}/{name}") from None

    @app.get("/health")
    async def health() -> dict[str, str]:
        return {"status": "healthy"}

    @app.get("/features/{group}/{name}")
    async def read_async(group: str, name: str) -> Response:
        return Response(body_of(group, name), media_type=MEDIA_TYPE)

    @app.get("/sync/features/{group}/{name}")
    def read_sync(group: str, name: str) -> Response:
        return Response(body_of(group, name), media_type=MEDIA_TYPE)

    @app.post("/post/features/{group}/{name}")
    async def read_after_body(group: str, name: str, request: Request) -> Response:
        await request.body()
        return Response(body_of(group, name), media_type=MEDIA_TYPE)

    return app
