"""Messages between the server and its SQL worker processes.

Each message is a JSON header sent with `Connection.send_bytes`, followed by one binary body
(an Arrow IPC stream) when the header says `"body": true`. Parameter values travel as
`[name, kind, value]` triples so that dates and timestamps keep their types.
"""

from __future__ import annotations

import datetime as dt
import json
from multiprocessing.connection import Connection
from typing import Any


def send_message(connection: Connection, header: dict[str, Any], body: bytes | None = None) -> None:
    """Send `header` and, when given, `body`."""
    connection.send_bytes(json.dumps({**header, "body": body is not None}).encode())
    if body is not None:
        connection.send_bytes(body)


def receive_message(connection: Connection) -> dict[str, Any]:
    """Receive one header; its body, if any, is read with `receive_body`."""
    return json.loads(connection.recv_bytes())


def receive_body(connection: Connection, header: dict[str, Any]) -> bytes | None:
    """Receive the body that `header` announced, or return None."""
    if not header.get("body"):
        return None
    return connection.recv_bytes()


def encode_parameters(parameters: dict[str, Any]) -> list[list[Any]]:
    """Return parameter values as JSON-ready `[name, kind, value]` triples."""
    encoded = []
    for name, value in parameters.items():
        if isinstance(value, dt.datetime):
            encoded.append([name, "timestamp", value.isoformat()])
        elif isinstance(value, dt.date):
            encoded.append([name, "date", value.isoformat()])
        else:
            encoded.append([name, "json", value])
    return encoded


def decode_parameters(encoded: list[list[Any]]) -> dict[str, Any]:
    """Rebuild the parameter values that `encode_parameters` encoded."""
    parameters: dict[str, Any] = {}
    for name, kind, value in encoded:
        if kind == "timestamp":
            parameters[name] = dt.datetime.fromisoformat(value)
        elif kind == "date":
            parameters[name] = dt.date.fromisoformat(value)
        else:
            parameters[name] = value
    return parameters
