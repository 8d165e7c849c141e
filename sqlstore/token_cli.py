"""`sqlstore token create|list|revoke`: manage the bearer tokens of a store's REST API."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from sqlstore.cli_options import RootOption
from sqlstore.errors import NotFound, SqlstoreError
from sqlstore.layout import StoreLayout, resolve_root
from sqlstore.tokens import SCOPES, create_token, list_tokens, revoke_token, tokens_path

token_app = typer.Typer(
    help="Create, list and revoke the bearer tokens that the REST API accepts.",
    no_args_is_help=True,
)
console = Console()
error_console = Console(stderr=True)


def _fail(error: SqlstoreError) -> None:
    error_console.print(f"[red]error:[/red] {error.message}")
    raise typer.Exit(code=1)


@token_app.command("create")
def create(
    name: Annotated[str, typer.Argument(help="Name to list and revoke the token by")],
    scope: Annotated[
        list[str],
        typer.Option(
            "--scope",
            help=f"Scope to grant, one of {', '.join(SCOPES)}; repeat for several",
            show_default=False,
        ),
    ],
    root: RootOption = None,
) -> None:
    """Create a token and print it once; only its SHA-256 hash is stored."""
    resolved = resolve_root(root)
    try:
        _require_store_root(resolved)
        StoreLayout(resolved).create()
        token = create_token(resolved, name, scope)
    except SqlstoreError as error:
        _fail(error)
    # The token goes to stdout alone, so that `$(sqlstore token create …)` captures it.
    print(token)
    error_console.print(
        f"created token {name!r} in {tokens_path(resolved)}; store it now, it cannot be shown "
        "again. Access control is on for every endpoint except /health."
    )


def _require_store_root(root: Path) -> None:
    """Raise NotFound unless `root` is a store or an empty folder, so that a mistyped --root
    does not leave the real store open while the token protects a new, empty one."""
    if (root / "registry").is_dir():
        return
    if root.is_dir() and not any(root.iterdir()):
        return
    raise NotFound(
        f"no sqlstore store at {root}; check --root or SQLSTORE_ROOT, or create the store "
        "first with `sqlstore serve`, `sqlstore ingest` or `sqlstore demo`"
    )


@token_app.command("list")
def list_command(root: RootOption = None) -> None:
    """List the tokens: names, scopes and creation times, never the tokens themselves."""
    resolved = resolve_root(root)
    try:
        tokens = list_tokens(resolved)
    except SqlstoreError as error:
        _fail(error)
    if tokens is None:
        console.print(f"access control is off: {tokens_path(resolved)} does not exist")
        return

    table = Table(title=f"tokens in {tokens_path(resolved)}")
    for heading in ("name", "scopes", "created"):
        table.add_column(heading)
    for token in tokens:
        table.add_row(token.name, ",".join(token.scopes), token.created_at)
    console.print(table)
    if not tokens:
        console.print("no tokens: every endpoint except /health rejects requests")


@token_app.command("revoke")
def revoke(
    name: Annotated[str, typer.Argument(help="Name of the token to revoke")],
    root: RootOption = None,
) -> None:
    """Revoke a token; running servers reject it from their next request on."""
    resolved = resolve_root(root)
    try:
        revoke_token(resolved, name)
    except SqlstoreError as error:
        _fail(error)
    console.print(f"revoked token {name!r}")
