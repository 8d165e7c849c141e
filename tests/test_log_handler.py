"""BufferedStreamHandler: INFO lines are buffered and written in order, never lost on a clean exit,
and never written twice by a forked child."""

from __future__ import annotations

import io
import logging
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager

import pytest

from sqlstore.logs import (
    ATOMIC_WRITE_BYTES,
    BUFFER_BYTES_LIMIT,
    BufferedStreamHandler,
    TextFormatter,
    flush_seconds_from_environment,
)


@contextmanager
def buffered_logger(
    stream: io.StringIO, flush_seconds: float
) -> Iterator[tuple[logging.Logger, BufferedStreamHandler]]:
    """Yield a logger that writes `levelname message` lines to `stream` through a
    BufferedStreamHandler, and close and detach the handler afterwards."""
    handler = BufferedStreamHandler(stream, flush_seconds=flush_seconds)
    handler.setFormatter(logging.Formatter("%(levelname)s %(message)s"))
    logger = logging.getLogger(f"buffered.{id(stream)}")
    logger.propagate = False
    logger.setLevel(logging.DEBUG)
    logger.addHandler(handler)
    try:
        yield logger, handler
    finally:
        logger.removeHandler(handler)
        handler.close()


def test_warning_writes_buffered_lines_first() -> None:
    stream = io.StringIO()

    with buffered_logger(stream, flush_seconds=60) as (logger, _):
        logger.info("first")
        logger.debug("second")
        before_warning = stream.getvalue()
        logger.warning("third")

    assert before_warning == ""
    assert stream.getvalue() == "INFO first\nDEBUG second\nWARNING third\n"


def test_flush_writes_buffered_lines() -> None:
    stream = io.StringIO()

    with buffered_logger(stream, flush_seconds=60) as (logger, handler):
        logger.info("buffered")
        handler.flush()
        after_flush = stream.getvalue()

    assert after_flush == "INFO buffered\n"


def test_zero_seconds_writes_each_line() -> None:
    stream = io.StringIO()

    with buffered_logger(stream, flush_seconds=0) as (logger, _):
        logger.info("one")
        after_one = stream.getvalue()
        logger.info("two")
        after_two = stream.getvalue()

    assert after_one == "INFO one\n"
    assert after_two == "INFO one\nINFO two\n"


def test_size_limit_writes_lines() -> None:
    stream = io.StringIO()
    line = "x" * 1000
    count = BUFFER_BYTES_LIMIT // len("INFO \n" + line) + 1

    with buffered_logger(stream, flush_seconds=60) as (logger, _):
        for _ in range(count):
            logger.info(line)
        after_limit = stream.getvalue()

    assert after_limit == f"INFO {line}\n" * count


def test_background_thread_writes_lone_line() -> None:
    stream = io.StringIO()

    with buffered_logger(stream, flush_seconds=0.05) as (logger, _):
        logger.info("lone")
        deadline = time.monotonic() + 10
        while not stream.getvalue() and time.monotonic() < deadline:
            time.sleep(0.01)
        written = stream.getvalue()

    assert written == "INFO lone\n"


def test_process_exit_writes_buffer() -> None:
    code = (
        "import logging\n"
        "from sqlstore.logs import LogFormat, LogLevel, configure_logging\n"
        "configure_logging(LogLevel.info, LogFormat.text, 60)\n"
        "logging.getLogger('exit').info('written at exit')\n"
    )
    completed = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )

    assert completed.stderr.count("written at exit") == 1


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_forked_child_skips_parent_lines() -> None:
    code = (
        "import logging, os\n"
        "from sqlstore.logs import LogFormat, LogLevel, configure_logging\n"
        "configure_logging(LogLevel.info, LogFormat.text, 60)\n"
        "log = logging.getLogger('fork')\n"
        "log.info('from the parent')\n"
        "pid = os.fork()\n"
        "if pid == 0:\n"
        "    log.info('from the child')\n"
        "    logging.shutdown()\n"
        "    os._exit(0)\n"
        "os.waitpid(pid, 0)\n"
    )
    completed = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )

    assert completed.stderr.count("from the parent") == 1
    assert completed.stderr.count("from the child") == 1


@pytest.mark.parametrize("text", ["-1", "61", "soon", "nan", "0.001", "1e-9"])
def test_invalid_flush_seconds_rejected(monkeypatch: pytest.MonkeyPatch, text: str) -> None:
    monkeypatch.setenv("SQLSTORE_LOG_FLUSH_SECONDS", text)

    with pytest.raises(ValueError, match="SQLSTORE_LOG_FLUSH_SECONDS"):
        flush_seconds_from_environment()


def test_flush_seconds_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SQLSTORE_LOG_FLUSH_SECONDS", raising=False)
    default = flush_seconds_from_environment()
    monkeypatch.setenv("SQLSTORE_LOG_FLUSH_SECONDS", "0")

    assert default == 1.0
    assert flush_seconds_from_environment() == 0.0


class RecordingStream(io.StringIO):
    """A text stream that keeps each write, as a pipe would receive it."""

    def __init__(self) -> None:
        super().__init__()
        self.writes: list[str] = []

    def write(self, text: str) -> int:
        self.writes.append(text)
        return super().write(text)


def test_writes_fit_pipe_buffer() -> None:
    # Each write ends with a line and fits in one atomic pipe write, except a longer line.
    stream = RecordingStream()
    lines = [f"line {index} " + "x" * (index * 37 % 300) for index in range(200)]
    long_line = "y" * (ATOMIC_WRITE_BYTES + 100)
    logged = [*lines[:100], long_line, *lines[100:]]

    with buffered_logger(stream, flush_seconds=60) as (logger, handler):
        for line in logged:
            logger.info(line)
        handler.flush()

    assert "".join(stream.writes) == "".join(f"INFO {line}\n" for line in logged)
    assert len(stream.writes) > 2
    for text in stream.writes:
        assert text.endswith("\n")
        assert len(text.encode()) <= ATOMIC_WRITE_BYTES or text == f"INFO {long_line}\n"


def test_stop_buffering_writes_at_once() -> None:
    stream = io.StringIO()

    with buffered_logger(stream, flush_seconds=60) as (logger, handler):
        logger.info("before")
        handler.stop_buffering()
        after_stop = stream.getvalue()
        logger.info("after")
        after_next = stream.getvalue()

    assert after_stop == "INFO before\n"
    assert after_next == "INFO before\nINFO after\n"


def text_line(message: str, *arguments: object, exc_info: bool = False) -> str:
    """Return what TextFormatter writes for one INFO record."""
    record = logging.LogRecord("x", logging.INFO, __file__, 1, message, arguments, None)
    if exc_info:
        try:
            raise ValueError("first\nsecond")
        except ValueError:
            record.exc_info = sys.exc_info()
    return TextFormatter("%(levelname)s %(message)s").format(record)


@pytest.mark.parametrize(
    ("value", "written"),
    [
        ("a\nINFO forged line", "a\\x0aINFO forged line"),
        ("\x1b[31mred\x00", "\\x1b[31mred\\x00"),
        ("\u202eevil", "\\u202eevil"),
        ("\ud800", "\\ud800"),
        ("한국어 \u00e9", "한국어 \u00e9"),
    ],
)
def test_text_log_escapes_controls(value: str, written: str) -> None:
    assert text_line("value %s end", value) == f"INFO value {written} end"


def test_text_log_keeps_traceback() -> None:
    lines = text_line("failed: %s", "x\ny", exc_info=True).splitlines()

    assert lines[0] == "INFO failed: x\\x0ay"
    assert lines[1] == "Traceback (most recent call last):"
    assert lines[-2:] == ["ValueError: first", "second"]
