"""Writers killed with SIGKILL leave a table that reads whole as exactly one written version.

Each version's rows carry the version number, so a file that mixes two writes, or a version
with missing rows, is detected by plain pyarrow. Kill points come from random delays (the
delays are in the failure messages) and from two writers paused at a known step.
"""

from __future__ import annotations

import fnmatch
import json
import random
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import orjson
import pyarrow as pa
import pyarrow.csv as pa_csv
import pyarrow.parquet as pq
import pytest
from conftest import RunningServer, start_server, stop_server

from sqlstore.store import FeatureStore

GROUP = "crash"
NAME = "table"
KILLS_PER_MODE = 8
MAX_DELAY_SECONDS = 0.6
PROCESS_TIMEOUT_SECONDS = 60

# Rows written in version v: ROW_COUNTS[mode][v % len(ROW_COUNTS[mode])]. Appends rewrite the
# whole table, so they use smaller versions to keep the table small.
ROW_COUNTS = {"overwrite": [10, 300_000, 1_000], "append": [5, 2_000, 40_000]}
MAX_APPEND_VERSIONS = 60

# A launcher that imports everything once and forks one writer per "start" line, so that each
# kill costs no interpreter start. A writer appends each acknowledged version to a file: the
# kernel keeps what os.write returned for, even when the writer is then killed.
LAUNCHER = textwrap.dedent(
    """
    import os, signal, sys, time, traceback
    import numpy as np
    import pyarrow as pa
    from sqlstore.store import FeatureStore

    root, mode, counts, max_version = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
    counts = [int(count) for count in counts.split(",")]
    acknowledged_path = sys.argv[5]

    def write_versions():
        acknowledged = os.open(acknowledged_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT)
        store = FeatureStore(root)
        while True:
            entry = store.registry.find("crash", "table")
            version = (entry.version if entry else 0) + 1
            if version > max_version:
                time.sleep(60)
            rows = counts[version % len(counts)]
            table = pa.table(
                {
                    "entity_id": np.arange(rows, dtype=np.int64),
                    "version": np.full(rows, version, dtype=np.int64),
                }
            )
            store.write("crash", "table", table, mode=mode)
            os.write(acknowledged, f"{version}\\n".encode())

    print("ready", flush=True)
    for line in sys.stdin:
        if line.strip() == "start":
            child = os.fork()
            if child == 0:
                try:
                    write_versions()
                except BaseException:
                    traceback.print_exc()
                finally:
                    os._exit(1)
            print("started", flush=True)
        elif line.strip() == "kill":
            os.kill(child, signal.SIGKILL)
            _, status = os.waitpid(child, 0)
            print("killed by signal", os.WTERMSIG(status) if os.WIFSIGNALED(status) else None)
            sys.stdout.flush()
    """
)

# Pauses the writer at one step so that the kill lands there: PAUSE=file pauses after a
# half-written temporary Parquet file, PAUSE=registry after the rename, before the registry.
PAUSED_WRITER = textwrap.dedent(
    """
    import os, sys, time
    import pyarrow as pa
    import pyarrow.parquet as pq
    from sqlstore.registry import Registry
    from sqlstore.store import FeatureStore

    root, pause = sys.argv[1], sys.argv[2]
    real_write_table = pq.write_table
    real_put = Registry.put

    def half_written(table, where, **options):
        real_write_table(table, where, **options)
        os.truncate(where, os.path.getsize(where) // 2)
        print("paused", where, flush=True)
        time.sleep(60)

    def registry_paused(self, entry):
        print("paused", entry.version, flush=True)
        time.sleep(60)

    if pause == "file":
        pq.write_table = half_written
    else:
        Registry.put = registry_paused
    table = pa.table({"entity_id": list(range(1000)), "version": [2] * 1000})
    FeatureStore(root).write("crash", "table", table)
    """
)


def row_count(mode: str, version: int) -> int:
    counts = ROW_COUNTS[mode]
    return counts[version % len(counts)]


def version_table(mode: str, version: int) -> pa.Table:
    rows = row_count(mode, version)
    return pa.table(
        {
            "entity_id": np.arange(rows, dtype=np.int64),
            "version": np.full(rows, version, dtype=np.int64),
        }
    )


def table_path(root: Path) -> Path:
    return root / "features" / GROUP / f"{NAME}.parquet"


def embedded_version(path: Path) -> int:
    metadata = pq.read_schema(path).metadata
    return json.loads(metadata[b"sqlstore.entry"])["version"]


def registry_entry(root: Path) -> dict:
    return json.loads((root / "registry" / GROUP / f"{NAME}.json").read_text())


def temporary_files(root: Path) -> list[Path]:
    return [path for folder in ("features", "registry") for path in (root / folder).rglob("*.tmp")]


def check_folder_names(root: Path) -> None:
    """Every file in the table's folders is the table's own file or a hidden temporary file."""
    for folder, own_name in (("features", f"{NAME}.parquet"), ("registry", f"{NAME}.json")):
        for path in (root / folder / GROUP).iterdir():
            if path.name == own_name:
                continue
            assert path.name.startswith(f".{NAME}."), path
            assert path.name.endswith(".tmp"), path
            assert not fnmatch.fnmatch(path.name, "*.parquet"), path
        parquet_files = sorted(path.name for path in (root / folder / GROUP).glob("*.parquet"))
        assert parquet_files == ([own_name] if folder == "features" else [])


def check_overwritten_file(path: Path, mode: str) -> int:
    stored = pq.read_table(path)
    version = embedded_version(path)

    versions = stored["version"].to_numpy()
    assert stored.num_rows == row_count(mode, version)
    assert (versions == version).all()
    assert (stored["entity_id"].to_numpy() == np.arange(stored.num_rows)).all()
    return version


def check_appended_file(path: Path, mode: str) -> int:
    stored = pq.read_table(path)
    version = embedded_version(path)

    expected_versions = np.concatenate(
        [np.full(row_count(mode, v), v) for v in range(1, version + 1)]
    )
    assert stored.num_rows == len(expected_versions)
    assert (stored["version"].to_numpy() == expected_versions).all()
    return version


def wait_for_line(process: subprocess.Popen[str], prefix: str) -> str:
    line = process.stdout.readline()
    # An empty line means the process exited, so its error output is complete.
    errors = process.stderr.read() if line == "" else ""
    assert line.startswith(prefix), f"expected {prefix!r}, got {line!r} {errors}"
    return line


def kill(process: subprocess.Popen[str]) -> list[str]:
    process.send_signal(signal.SIGKILL)
    output, _ = process.communicate(timeout=PROCESS_TIMEOUT_SECONDS)
    return output.split()


@pytest.mark.parametrize("mode", ["overwrite", "append"])
def test_killed_writer_leaves_one_version(tmp_path: Path, mode: str) -> None:
    root = tmp_path / "store"
    FeatureStore(root).write(GROUP, NAME, version_table(mode, 1))
    check_file = check_overwritten_file if mode == "overwrite" else check_appended_file
    counts = ",".join(str(count) for count in ROW_COUNTS[mode])
    max_version = MAX_APPEND_VERSIONS if mode == "append" else 10**9
    acknowledged_path = tmp_path / "acknowledged.txt"
    command = [sys.executable, "-c", LAUNCHER, str(root), mode, counts, str(max_version)]
    launcher = subprocess.Popen(
        [*command, str(acknowledged_path)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    wait_for_line(launcher, "ready")
    rng = random.Random()
    file_versions = []

    try:
        for _ in range(KILLS_PER_MODE):
            send(launcher, "start")
            delay = rng.uniform(0.0, MAX_DELAY_SECONDS)
            time.sleep(delay)
            killed = send(launcher, "kill")
            acknowledged = acknowledged_versions(acknowledged_path)
            context = f"killed after {delay:.3f} s, acknowledged {acknowledged[-3:]}"

            assert killed.split() == ["killed", "by", "signal", str(int(signal.SIGKILL))], context
            check_folder_names(root)
            version = check_file(table_path(root), mode)
            registered = registry_entry(root)["version"]
            if acknowledged:
                assert acknowledged[-1] <= version <= acknowledged[-1] + 1, context
            assert registered in (version - 1, version), context

            FeatureStore(root).recover()
            entry = registry_entry(root)
            assert entry["version"] == version, context
            assert entry["row_count"] == pq.read_metadata(table_path(root)).num_rows, context
            assert entry["storage"]["bytes_on_disk"] == table_path(root).stat().st_size, context
            assert temporary_files(root) == [], context
            file_versions.append(version)
    finally:
        launcher.kill()
        launcher.communicate(timeout=PROCESS_TIMEOUT_SECONDS)

    assert file_versions == sorted(file_versions)
    assert file_versions[-1] > 1


def send(launcher: subprocess.Popen[str], command: str) -> str:
    launcher.stdin.write(command + "\n")
    launcher.stdin.flush()
    expected = {"start": "started", "kill": "killed"}[command]
    return wait_for_line(launcher, expected)


def acknowledged_versions(path: Path) -> list[int]:
    if not path.exists():
        return []
    return [int(line) for line in path.read_text().split()]


def run_paused_writer(root: Path, pause: str) -> str:
    process = subprocess.Popen(
        [sys.executable, "-c", PAUSED_WRITER, str(root), pause],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    line = wait_for_line(process, "paused")
    kill(process)
    return line.split(maxsplit=1)[1].strip()


def test_kill_during_file_write(tmp_path: Path) -> None:
    root = tmp_path / "store"
    FeatureStore(root).write(GROUP, NAME, version_table("overwrite", 1))

    temporary = Path(run_paused_writer(root, "file"))

    assert temporary.exists()
    assert temporary.parent == table_path(root).parent
    assert not fnmatch.fnmatch(temporary.name, "*.parquet")
    check_folder_names(root)
    assert check_overwritten_file(table_path(root), "overwrite") == 1
    assert registry_entry(root)["version"] == 1
    FeatureStore(root).recover()
    assert not temporary.exists()
    assert temporary_files(root) == []
    assert registry_entry(root)["version"] == 1


def test_kill_before_registry_update(tmp_path: Path) -> None:
    root = tmp_path / "store"
    FeatureStore(root).write(GROUP, NAME, version_table("overwrite", 1))

    paused_version = run_paused_writer(root, "registry")
    stored = pq.read_table(table_path(root))

    assert paused_version == "2"
    assert stored["version"].to_pylist() == [2] * 1000
    assert registry_entry(root)["version"] == 1
    FeatureStore(root).recover()
    entry = registry_entry(root)
    assert entry["version"] == 2
    assert entry["row_count"] == 1000
    assert temporary_files(root) == []


@pytest.mark.parametrize("mode", ["overwrite", "append"])
def test_killed_cli_ingest_leaves_one_version(tmp_path: Path, mode: str) -> None:
    root = tmp_path / "store"
    small = pa.table({"entity_id": [0, 1, 2], "version": [1, 1, 1], "payload": ["a", "b", "c"]})
    big_rows = 300_000
    big = pa.table(
        {
            "entity_id": np.arange(big_rows),
            "version": np.full(big_rows, 2),
            "payload": [f"row {i}" for i in range(big_rows)],
        }
    )
    big_csv = tmp_path / "big.csv"
    pa_csv.write_csv(big, big_csv)
    FeatureStore(root).write(GROUP, NAME, small)
    rng = random.Random(f"ingest-kill-{mode}")
    command = [
        sys.executable,
        "-m",
        "sqlstore",
        "ingest",
        str(big_csv),
        "--group",
        GROUP,
        "--name",
        NAME,
        "--root",
        str(root),
        "--mode",
        mode,
    ]

    for _ in range(3):
        process = subprocess.Popen(
            command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )
        delay = rng.uniform(0.5, 2.0)
        time.sleep(delay)
        kill(process)
        context = f"killed after {delay:.3f} s"

        check_folder_names(root)
        stored = pq.read_table(table_path(root))
        versions = set(stored["version"].to_pylist())
        version = embedded_version(table_path(root))
        # Each append that landed added the whole CSV after the rows already stored.
        if version == 1:
            expected_versions, expected_rows = {1}, 3
        elif mode == "overwrite":
            expected_versions, expected_rows = {2}, big_rows
        else:
            expected_versions, expected_rows = {1, 2}, 3 + (version - 1) * big_rows
        assert versions == expected_versions, context
        assert stored.num_rows == expected_rows, context
        FeatureStore(root).recover()
        entry = registry_entry(root)
        assert entry["version"] == embedded_version(table_path(root)), context
        assert entry["row_count"] == expected_rows, context
        assert temporary_files(root) == [], context


# Server kills: (mode, rows per write by version, maximum kill delay in seconds). Large writes
# take one to three seconds on a 2-core machine, so the delays land in the upload, the JSON
# parse, the Parquet write, the rename and the registry update.
REST_KILLS = 5
REST_CASES = {
    "overwrite": ([20, 200_000], 3.0),
    "append": ([10, 60_000], 2.5),
}


def rest_records(mode: str, version: int, first_id: int) -> list[dict[str, int]]:
    counts = REST_CASES[mode][0]
    rows = counts[version % len(counts)]
    return [{"entity_id": first_id + i, "version": version} for i in range(rows)]


def post_write(base_url: str, body: bytes, outcome: dict[str, object]) -> None:
    try:
        response = httpx.post(
            f"{base_url}/features/{GROUP}/{NAME}",
            content=body,
            headers={"content-type": "application/json"},
            timeout=PROCESS_TIMEOUT_SECONDS,
        )
        outcome["status"] = response.status_code
        outcome["body"] = response.json()
    except httpx.TransportError as error:
        outcome["error"] = repr(error)


def check_rest_table(path: Path, mode: str, context: str) -> tuple[int, list[int]]:
    """Check that the file contains whole versions only; return its version and entity ids."""
    stored = pq.read_table(path)
    version = embedded_version(path)
    versions = stored["version"].to_pylist()
    ids = stored["entity_id"].to_pylist()

    if mode == "overwrite":
        assert set(versions) == {version}, context
        assert len(versions) == len(rest_records(mode, version, 0)), context
    else:
        expected = [v for v in range(1, version + 1) for _ in rest_records(mode, v, 0)]
        assert versions == expected, context
    assert len(ids) == len(set(ids)), context
    return version, ids


@pytest.mark.parametrize("mode", ["overwrite", "append"])
def test_killed_server_write_leaves_one_version(tmp_path: Path, mode: str) -> None:
    root = tmp_path / "store"
    FeatureStore(root).write(GROUP, NAME, pa.Table.from_pylist(rest_records(mode, 1, 0)))
    # A fixed seed makes the kill delays the same on every run; the context names each one.
    rng = random.Random(f"server-kill-{mode}")
    max_delay = REST_CASES[mode][1]
    acknowledged = 1
    next_id = len(rest_records(mode, 1, 0))

    for attempt in range(REST_KILLS):
        server = start_server(root, tmp_path / f"server{attempt}.log")
        context = f"attempt {attempt}"
        # The start above ran recover(), so the previous kill's leftovers must be gone.
        version = check_recovered(root, server, mode, context)
        assert version >= acknowledged, context

        records = rest_records(mode, version + 1, next_id if mode == "append" else 0)
        next_id += len(records)
        body = orjson.dumps({"mode": mode, "records": records})
        outcome: dict[str, object] = {}
        writer = threading.Thread(target=post_write, args=(server.base_url, body, outcome))
        delay = rng.uniform(0.0, max_delay)
        writer.start()
        time.sleep(delay)
        server.process.send_signal(signal.SIGKILL)
        server.process.wait(timeout=PROCESS_TIMEOUT_SECONDS)
        writer.join(timeout=PROCESS_TIMEOUT_SECONDS)
        context = f"{mode} of {len(records)} rows killed after {delay:.3f} s: {outcome}"

        check_folder_names(root)
        file_version, _ = check_rest_table(table_path(root), mode, context)
        assert file_version in (version, version + 1), context
        assert registry_entry(root)["version"] in (file_version - 1, file_version), context
        if outcome.get("status") == 200:
            acknowledged = version + 1
            assert outcome["body"]["version"] == acknowledged, context
            assert file_version == acknowledged, context
        else:
            assert "error" in outcome, context

    server = start_server(root, tmp_path / "server-last.log")
    check_recovered(root, server, mode, "after the last kill")


def check_recovered(root: Path, server: RunningServer, mode: str, context: str) -> int:
    """Check the state after a server start; stop the server and return the table's version."""
    try:
        version, ids = check_rest_table(table_path(root), mode, context)
        entry = registry_entry(root)
        assert entry["version"] == version, context
        assert entry["row_count"] == len(ids), context
        assert entry["storage"]["bytes_on_disk"] == table_path(root).stat().st_size, context
        assert temporary_files(root) == [], context

        response = httpx.get(
            f"{server.base_url}/features/{GROUP}/{NAME}",
            params={"columns": "entity_id", "limit": 1},
            timeout=PROCESS_TIMEOUT_SECONDS,
        )
        assert response.status_code == 200, response.text
        assert response.headers["x-table-version"] == str(version), context
        assert response.headers["x-total-rows"] == str(len(ids)), context
    finally:
        stop_server(server)
    return version


def test_recover_removes_token_temporaries(tmp_path: Path) -> None:
    store = FeatureStore(tmp_path / "store")
    store.write(GROUP, NAME, version_table("overwrite", 1))
    leftover = tmp_path / "store" / "registry" / "..version.0123abcd.tmp"
    leftover.write_bytes(b"half")

    FeatureStore(tmp_path / "store").recover()

    assert not leftover.exists()
    assert temporary_files(tmp_path / "store") == []
