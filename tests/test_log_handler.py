"""BufferedStreamHandler: INFO lines are buffered and written in order, never lost on a clean exit,
and never written twice by a forked child."""

from __future__ import annotations

import io
import logging
import os
import subprocess
import sys
import time

import pytest

from sqlstore.logs import (
    ATOMIC_WRITE_BYTES,
    BUFFER_BYTES_LIMIT,
    BufferedStreamHandler,
    flush_seconds_from_environment,
)


def make_logger(
    stream: io.StringIO, flush_seconds: float
) -> tuple[logging.Logger, BufferedStreamHandler]:
    handler = BufferedStreamHandler(stream, flush_seconds=flush_seconds)
    handler.setFormatter(logging.Formatter("%(levelname)s %(message)s"))
    logger = logging.getLogger(f"buffered.{id(stream)}")
    logger.propagate = False
    logger.setLevel(logging.DEBUG)
    logger.addHandler(handler)
    return logger, handler


def test_info_lines_wait_for_a_warning_and_keep_their_order() -> None:
    stream = io.StringIO()
    logger, handler = make_logger(stream, flush_seconds=60)

    logger.info("first")
    logger.debug("second")
    before_warning = stream.getvalue()
    logger.warning("third")

    assert before_warning == ""
    assert stream.getvalue() == "INFO first\nDEBUG second\nWARNING third\n"
    handler.close()


def test_flush_writes_buffered_lines() -> None:
    stream = io.StringIO()
    logger, handler = make_logger(stream, flush_seconds=60)

    logger.info("buffered")
    handler.flush()

    assert stream.getvalue() == "INFO buffered\n"
    handler.close()


def test_zero_seconds_writes_each_line() -> None:
    stream = io.StringIO()
    logger, handler = make_logger(stream, flush_seconds=0)

    logger.info("one")
    after_one = stream.getvalue()
    logger.info("two")

    assert after_one == "INFO one\n"
    assert stream.getvalue() == "INFO one\nINFO two\n"
    handler.close()


def test_lines_are_written_at_the_size_limit() -> None:
    stream = io.StringIO()
    logger, handler = make_logger(stream, flush_seconds=60)
    line = "x" * 1000
    count = BUFFER_BYTES_LIMIT // len("INFO \n" + line) + 1

    for _ in range(count):
        logger.info(line)

    assert stream.getvalue() == f"INFO {line}\n" * count
    handler.close()


def test_background_thread_writes_a_lone_line() -> None:
    stream = io.StringIO()
    logger, handler = make_logger(stream, flush_seconds=0.05)

    logger.info("lone")
    deadline = time.monotonic() + 10
    while not stream.getvalue() and time.monotonic() < deadline:
        time.sleep(0.01)

    assert stream.getvalue() == "INFO lone\n"
    handler.close()


def test_process_exit_writes_buffered_lines() -> None:
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
def test_forked_child_does_not_write_the_parent_lines() -> None:
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
def test_invalid_flush_seconds_named(monkeypatch: pytest.MonkeyPatch, text: str) -> None:
    monkeypatch.setenv("SQLSTORE_LOG_FLUSH_SECONDS", text)

    with pytest.raises(ValueError, match="SQLSTORE_LOG_FLUSH_SECONDS"):
        flush_seconds_from_environment()


def test_flush_seconds_default_and_value(monkeypatch: pytest.MonkeyPatch) -> None:
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


def test_writes_fit_in_one_pipe_write_and_end_with_a_line() -> None:
    stream = RecordingStream()
    logger, handler = make_logger(stream, flush_seconds=60)
    lines = [f"line {index} " + "x" * (index * 37 % 300) for index in range(200)]
    long_line = "y" * (ATOMIC_WRITE_BYTES + 100)

    for line in [*lines[:100], long_line, *lines[100:]]:
        logger.info(line)
    handler.flush()

    expected = "".join(f"INFO {line}\n" for line in [*lines[:100], long_line, *lines[100:]])
    assert "".join(stream.writes) == expected
    assert len(stream.writes) > 2
    for text in stream.writes:
        assert text.endswith("\n")
        assert len(text.encode()) <= ATOMIC_WRITE_BYTES or text == f"INFO {long_line}\n"
    handler.close()


def test_stop_buffering_writes_at_once_from_then_on() -> None:
    stream = io.StringIO()
    logger, handler = make_logger(stream, flush_seconds=60)

    logger.info("before")
    handler.stop_buffering()
    after_stop = stream.getvalue()
    logger.info("after")

    assert after_stop == "INFO before\n"
    assert stream.getvalue() == "INFO before\nINFO after\n"
    handler.close()
