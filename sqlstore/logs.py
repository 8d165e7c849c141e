"""Logging set-up for the CLI and the server's worker processes: level and text or JSON lines."""

from __future__ import annotations

import logging.config
from enum import StrEnum
from typing import Any

LOG_LEVEL_VARIABLE = "SQLSTORE_LOG_LEVEL"
LOG_FORMAT_VARIABLE = "SQLSTORE_LOG_FORMAT"
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s [%(process)d]: %(message)s"
# python-json-logger writes these record attributes, then every `extra` field of the call.
JSON_FIELDS = "%(asctime)s %(levelname)s %(name)s %(process)d %(message)s"


class LogLevel(StrEnum):
    debug = "debug"
    info = "info"
    warning = "warning"
    error = "error"


class LogFormat(StrEnum):
    text = "text"
    json = "json"


def logging_config(level: LogLevel, log_format: LogFormat) -> dict[str, Any]:
    """Return a `logging.config.dictConfig` configuration that writes to stderr.

    uvicorn applies it again in every worker process, so workers log like the parent.
    """
    if log_format is LogFormat.json:
        formatter: dict[str, Any] = {
            "()": "pythonjsonlogger.json.JsonFormatter",
            "fmt": JSON_FIELDS,
            "rename_fields": {"levelname": "level", "name": "logger", "asctime": "time"},
        }
    else:
        formatter = {"format": TEXT_FORMAT}
    name = level.value.upper()
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"default": formatter},
        "handlers": {
            "default": {
                "class": "logging.StreamHandler",
                "formatter": "default",
                "stream": "ext://sys.stderr",
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
        },
    }


def configure_logging(level: LogLevel, log_format: LogFormat) -> None:
    logging.config.dictConfig(logging_config(level, log_format))
