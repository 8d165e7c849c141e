"""Logging set-up for the CLI and the server's worker processes: level and text or JSON lines,
and the log line of an invalid definition file."""

from __future__ import annotations

import logging.config
import os
import re
import select
import threading
import time
import weakref
from enum import StrEnum
from pathlib import Path
from typing import Any, TextIO

LOG_LEVEL_VARIABLE = "SQLSTORE_LOG_LEVEL"
LOG_FORMAT_VARIABLE = "SQLSTORE_LOG_FORMAT"
LOG_FLUSH_VARIABLE = "SQLSTORE_LOG_FLUSH_SECONDS"
# How long the server's worker processes may buffer INFO lines before writing them.
SERVER_FLUSH_SECONDS = 1.0
# Buffered lines are written once they reach about this many bytes.
BUFFER_BYTES_LIMIT = 64 * 1024
# The shortest interval between writes of buffered lines, other than 0 (each line at once).
MIN_FLUSH_SECONDS = 0.01
# Writes to a pipe of at most this many bytes are never interleaved with other processes'
# writes to the same pipe, so worker processes that share stderr write lines whole.
ATOMIC_WRITE_BYTES = getattr(select, "PIPE_BUF", 512)
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s [%(process)d]: %(message)s"
# Characters that text logs write as escapes: C0 and C1 controls, DEL, bidirectional
# formatting characters and lone surrogates.
CONTROL_CHARACTERS = re.compile(
    "[\x00-\x1f\x7f-\x9f\u200e\u200f\u202a-\u202e\u2066-\u2069\ud800-\udfff]"
)
# python-json-logger writes these record attributes, then every `extra` field of the call.
JSON_FIELDS = "%(asctime)s %(levelname)s %(name)s %(process)d %(message)s"
# How many (file version, problem) pairs `log_invalid_file` remembers in each process.
LOGGED_FILE_PROBLEMS_LIMIT = 1024


class LogLevel(StrEnum):
    debug = "debug"
    info = "info"
    warning = "warning"
    error = "error"


class LogFormat(StrEnum):
    text = "text"
    json = "json"


def logging_config(
    level: LogLevel, log_format: LogFormat, flush_seconds: float = 0.0
) -> dict[str, Any]:
    """Return a `logging.config.dictConfig` configuration that writes to stderr, buffering INFO
    and DEBUG lines for up to `flush_seconds` (see `BufferedStreamHandler`).

    uvicorn applies it again in every worker process, so workers log like the parent.
    """
    if log_format is LogFormat.json:
        formatter: dict[str, Any] = {
            "()": "pythonjsonlogger.json.JsonFormatter",
            "fmt": JSON_FIELDS,
            "rename_fields": {"levelname": "level", "name": "logger", "asctime": "time"},
        }
    else:
        formatter = {"()": "sqlstore.logs.TextFormatter", "fmt": TEXT_FORMAT}
    name = level.value.upper()
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"default": formatter},
        "handlers": {
            "default": {
                "class": "sqlstore.logs.BufferedStreamHandler",
                "formatter": "default",
                "stream": "ext://sys.stderr",
                "flush_seconds": flush_seconds,
            }
        },
        "root": {"handlers": ["default"], "level": name},
        "loggers": {
            "uvicorn": {"level": name},
            "uvicorn.error": {"level": name},
            "uvicorn.access": {"level": name},
            # One line per HTTP request of the CLI's client would bury its output.
            "httpx": {"level": "WARNING"},
            "httpcore": {"level": "WARNING"},
            # sqlglot warns about every statement it cannot parse, such as each DROP that the
            # SQL endpoint rejects, and quotes the client's text.
            "sqlglot": {"level": "ERROR"},
        },
    }


def configure_logging(level: LogLevel, log_format: LogFormat, flush_seconds: float = 0.0) -> None:
    logging.config.dictConfig(logging_config(level, log_format, flush_seconds))


def flush_seconds_from_environment() -> float:
    """Return SQLSTORE_LOG_FLUSH_SECONDS, or the server's default. Raise ValueError naming the
    variable for a value other than 0 or a number from MIN_FLUSH_SECONDS to 60."""
    text = os.environ.get(LOG_FLUSH_VARIABLE)
    if text is None:
        return SERVER_FLUSH_SECONDS
    try:
        seconds = float(text)
    except ValueError:
        seconds = -1.0
    if seconds != 0 and not MIN_FLUSH_SECONDS <= seconds <= 60:
        raise ValueError(
            f"invalid {LOG_FLUSH_VARIABLE}={text!r}: use a number of seconds from "
            f"{MIN_FLUSH_SECONDS} to 60, or 0 to write every line at once"
        )
    return seconds


_logged_file_problems: dict[tuple[str, int, int, str], None] = {}
_logged_file_problems_lock = threading.Lock()


def log_invalid_file(logger: logging.Logger, kind: str, path: Path, problem: str) -> None:
    """Log at ERROR that the definition file at `path` is invalid, naming `kind` (such as
    "named query file"), the path and the problem.

    Each process logs a file version (modification time and size) and problem at ERROR once and
    repeats at DEBUG, so that a broken file requested or listed on every request does not add
    a line each time. Editing the file logs its next problem at ERROR again.
    """
    try:
        stat = path.stat()
        version = (stat.st_mtime_ns, stat.st_size)
    except OSError:
        version = (0, 0)
    key = (str(path), *version, problem)
    with _logged_file_problems_lock:
        first = key not in _logged_file_problems
        if first:
            if len(_logged_file_problems) >= LOGGED_FILE_PROBLEMS_LIMIT:
                del _logged_file_problems[next(iter(_logged_file_problems))]
            _logged_file_problems[key] = None
    level = logging.ERROR if first else logging.DEBUG
    logger.log(level, "%s %s is invalid: %s", kind, path, problem)


class TextFormatter(logging.Formatter):
    """`logging.Formatter` that formats the date and time of each second once, and escapes
    control characters in messages.

    A server writes a line per request, and `time.strftime` was half the cost of formatting
    one. Messages quote values that clients sent, and a newline, an escape sequence or a
    bidirectional override in one could forge or hide log lines. So each such character is
    written as an escape, such as \\x0a or \\u202e. Tracebacks keep their lines.
    """

    def __init__(self, fmt: str | None = None) -> None:
        super().__init__(fmt)
        self._second_text = (-1, "")

    def formatMessage(self, record: logging.LogRecord) -> str:  # noqa: N802
        if CONTROL_CHARACTERS.search(record.message):
            record.message = CONTROL_CHARACTERS.sub(_escaped, record.message)
        return super().formatMessage(record)

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:  # noqa: N802
        if datefmt is not None:
            return super().formatTime(record, datefmt)
        second = int(record.created)
        # One tuple, so that a thread never reads the text of another second.
        cached_second, text = self._second_text
        if cached_second != second:
            text = time.strftime(self.default_time_format, self.converter(record.created))
            self._second_text = (second, text)
        return self.default_msec_format % (text, record.msecs)


class BufferedStreamHandler(logging.StreamHandler[TextIO]):
    """A stream handler that buffers INFO and DEBUG lines and writes them together.

    A server writes one access line per request, and a write to the stream for each line cost
    more than the rest of the line: measured over loopback HTTP, about 15 µs of the server's CPU
    time per online lookup. Buffered lines are written, in order:

    - before any WARNING or higher line, which is written at once;
    - when the oldest has waited `flush_seconds`, by the next line or by a background thread;
    - when they reach about BUFFER_BYTES_LIMIT bytes;
    - on `flush`, which `logging.shutdown` calls when the process exits, and on
      `stop_buffering`.

    Each write is at most ATOMIC_WRITE_BYTES long and ends at the end of a line, unless one line
    is longer, so that processes writing to one pipe do not splice each other's lines. A
    process killed without warning loses up to `flush_seconds` of INFO lines. With
    `flush_seconds` 0 it writes each line at once, like `logging.StreamHandler`.
    """

    def __init__(self, stream: TextIO | None = None, flush_seconds: float = 0.0) -> None:
        super().__init__(stream)
        self.flush_seconds = flush_seconds
        self._buffer: list[tuple[str, int]] = []
        self._buffered_bytes = 0
        self._oldest = 0.0
        self._flusher_started = False
        self._stop_flusher = threading.Event()
        _handlers.add(self)

    def emit(self, record: logging.LogRecord) -> None:
        # `Handler.handle` acquires the handler's lock around this call.
        try:
            line = self.format(record) + self.terminator
        except Exception:
            self.handleError(record)
            return
        now = time.monotonic()
        if not self._buffer:
            self._oldest = now
        # An upper bound of the encoded size: a character takes at most 4 bytes in UTF-8 and 10
        # as a backslash escape such as \U0001f600.
        size = len(line) if line.isascii() else 10 * len(line)
        self._buffer.append((line, size))
        self._buffered_bytes += size
        if (
            record.levelno >= logging.WARNING
            or self._buffered_bytes >= BUFFER_BYTES_LIMIT
            or now - self._oldest >= self.flush_seconds
        ):
            self._write_buffer()
        elif not self._flusher_started:
            self._start_flusher()

    def flush(self) -> None:
        with self.lock:
            self._write_buffer()
            super().flush()

    def stop_buffering(self) -> None:
        """Write the buffered lines, then write each new line at once. A server calls this as
        it stops: uvicorn ends a worker with its signal's default action, so the flush at exit
        does not run for the lines it logs last."""
        with self.lock:
            self.flush_seconds = 0.0
            self._write_buffer()
        self._stop_flusher.set()

    def close(self) -> None:
        self._stop_flusher.set()
        super().close()

    def _write_buffer(self) -> None:
        if not self._buffer:
            return
        chunks = _atomic_chunks(self._buffer)
        self._buffer = []
        self._buffered_bytes = 0
        for chunk in chunks:
            try:
                self.stream.write(chunk)
                self.stream.flush()
            except Exception:
                # As `StreamHandler` does for a failed write: report it on stderr, keep serving.
                self.handleError(logging.makeLogRecord({"msg": chunk.rstrip()}))

    def _start_flusher(self) -> None:
        self._flusher_started = True
        thread = threading.Thread(target=self._flush_regularly, name="log-flusher", daemon=True)
        thread.start()

    def _flush_regularly(self) -> None:
        delay = self.flush_seconds
        while not self._stop_flusher.wait(max(delay, MIN_FLUSH_SECONDS)):
            with self.lock:
                waited = time.monotonic() - self._oldest if self._buffer else 0.0
                if waited >= self.flush_seconds:
                    self._write_buffer()
                    waited = 0.0
            delay = self.flush_seconds - waited


def _atomic_chunks(lines: list[tuple[str, int]]) -> list[str]:
    """Join (line, size) pairs into texts of at most ATOMIC_WRITE_BYTES that end with a line.
    A longer line is a text of its own."""
    chunks = []
    current: list[str] = []
    current_bytes = 0
    for line, size in lines:
        if current and current_bytes + size > ATOMIC_WRITE_BYTES:
            chunks.append("".join(current))
            current, current_bytes = [], 0
        current.append(line)
        current_bytes += size
    if current:
        chunks.append("".join(current))
    return chunks


# After a fork, the child starts its own flushing thread, because threads do not survive a
# fork, and drops the lines it inherited, which the parent writes.
_handlers: weakref.WeakSet[BufferedStreamHandler] = weakref.WeakSet()


def _after_fork_in_child() -> None:
    for handler in _handlers:
        handler._flusher_started = False
        handler._buffer = []
        handler._buffered_bytes = 0


os.register_at_fork(after_in_child=_after_fork_in_child)


def _escaped(match: re.Match[str]) -> str:
    character = match.group()
    if ord(character) <= 0xFF:
        return f"\\x{ord(character):02x}"
    return f"\\u{ord(character):04x}"
