"""Longest `GET /health` latency of a 1-worker server while it handles one large write.

The script starts `python -m sqlstore serve` (one worker) on an empty store, posts a JSON body
of `--records` records, and sends `GET /health` every 10 ms until the write returns. It prints
the longest /health latency of each run. `--code-dir` puts another source tree first on
PYTHONPATH, so that a baseline (for example `git archive HEAD sqlstore | tar -x -C DIR`) runs
side by side with the working tree.

    .venv/bin/python bench/write_stall.py [--records N] [--runs N] [--code-dir DIR]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
import orjson
from bench_serving import HOST, free_port

PROBE_INTERVAL_SECONDS = 0.01
START_TIMEOUT_SECONDS = 60
WRITE_TIMEOUT_SECONDS = 600


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=1_000_000, help="records per write")
    parser.add_argument("--runs", type=int, default=3, help="writes to measure")
    parser.add_argument("--code-dir", type=Path, help="source tree to put first on PYTHONPATH")
    return parser.parse_args(argv)


def start_server(root: Path, code_dir: Path | None) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    environment = dict(os.environ)
    if code_dir is not None:
        environment["PYTHONPATH"] = str(code_dir.resolve())
    command = [sys.executable, "-m", "sqlstore", "serve", "--root", str(root)]
    command += ["--host", HOST, "--port", str(port)]
    process = subprocess.Popen(
        command, env=environment, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=root
    )
    base_url = f"http://{HOST}:{port}"

    deadline = time.monotonic() + START_TIMEOUT_SECONDS
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{base_url}/health", timeout=1).status_code == 200:
                return process, base_url
        except httpx.TransportError:
            time.sleep(0.1)
    process.kill()
    raise RuntimeError(f"/health did not return 200 within {START_TIMEOUT_SECONDS} s of the start")


def measure_run(base_url: str, body: bytes, table: str) -> float:
    """Return the longest /health latency in seconds while one write runs."""
    statuses: list[int] = []

    def write() -> None:
        response = httpx.post(
            f"{base_url}/features/stall/{table}",
            content=body,
            headers={"content-type": "application/json"},
            timeout=WRITE_TIMEOUT_SECONDS,
        )
        statuses.append(response.status_code)

    writer = threading.Thread(target=write)
    writer.start()
    latencies = []
    with httpx.Client(base_url=base_url, timeout=WRITE_TIMEOUT_SECONDS) as client:
        while not statuses:
            started = time.perf_counter()
            client.get("/health")
            latencies.append(time.perf_counter() - started)
            time.sleep(PROBE_INTERVAL_SECONDS)
    writer.join()

    if statuses != [200]:
        raise RuntimeError(f"the write failed with status {statuses}")
    return max(latencies)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    records = [{"entity_id": i, "v": i * 0.5, "s": f"row {i}"} for i in range(args.records)]
    body = orjson.dumps({"records": records})

    with tempfile.TemporaryDirectory(prefix="sqlstore-stall-") as folder:
        process, base_url = start_server(Path(folder), args.code_dir)
        try:
            longest = [measure_run(base_url, body, f"run{run}") for run in range(args.runs)]
        finally:
            process.terminate()
            process.wait()

    per_run = ", ".join(f"{seconds:.2f}" for seconds in longest)
    print(f"{len(body) / 1e6:.0f} MB body, longest /health latency per run: {per_run} s")
    print(f"median {statistics.median(longest):.2f} s, load average {os.getloadavg()[0]:.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
