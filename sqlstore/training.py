"""Training sets: point-in-time joins run from a request or from a named definition file.

A named definition is a TOML file `queries/training_sets/<name>.toml`:

    title = "..."
    description = "..."
    entity_sql = "SELECT user_id, event_timestamp, ... FROM interaction.user_movie_interactions"
    features = ["user/user_preferences", "content/movie_ratings:rating_mean"]
    # optional: timestamp_column, full_feature_names, inclusive, created_before_event,
    # [ttl_seconds] with one `"group/name" = seconds` line per table

A file that is not valid TOML or breaks these rules is a configuration error on the server,
which only its operator can fix, so loading it raises TrainingSetInvalid, a 500.
"""

from __future__ import annotations

import logging
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa

from sqlstore.errors import InvalidInput, NotFound, SqlstoreError, quoted_value
from sqlstore.identifiers import TABLE_NAME_PATTERN
from sqlstore.logs import log_invalid_file
from sqlstore.pointintime import DEFAULT_TIMESTAMP_COLUMN, JoinOptions, get_historical_features
from sqlstore.store import FeatureStore

logger = logging.getLogger(__name__)

TRAINING_SETS_FOLDER = "training_sets"
# The kind of value each key of a definition file takes, checked so that `inclusive = "no"` is
# an error rather than a true value.
DEFINITION_TYPES: dict[str, str] = {
    "title": "a string",
    "description": "a string",
    "entity_sql": "a string",
    "features": "a list of strings",
    "timestamp_column": "a string",
    "full_feature_names": "true or false",
    "inclusive": "true or false",
    "created_before_event": "true or false",
    "ttl_seconds": "a table of numbers of seconds",
}
DEFINITION_KEYS = frozenset(DEFINITION_TYPES)


class TrainingSetInvalid(SqlstoreError):
    """A training set definition file on the server is invalid: a 500, because the request is
    valid and only the server's operator can fix the file."""

    status = 500
    code = "training_set_invalid"

    def __init__(self, name: str, problem: str) -> None:
        super().__init__(
            f"invalid training set {name} ({TRAINING_SETS_FOLDER}/{name}.toml in the queries "
            f"folder): {problem}"
        )
        self.problem = problem


@dataclass(frozen=True)
class TrainingSetDefinition:
    """A named, reproducible training set: an entity query, features and join options."""

    name: str
    entity_sql: str
    features: list[str]
    title: str = ""
    description: str = ""
    timestamp_column: str = DEFAULT_TIMESTAMP_COLUMN
    full_feature_names: bool = False
    inclusive: bool = True
    created_before_event: bool = False
    ttl_seconds: dict[str, float] = field(default_factory=dict)

    def join_options(self) -> JoinOptions:
        return JoinOptions(
            timestamp_column=self.timestamp_column,
            full_feature_names=self.full_feature_names,
            inclusive=self.inclusive,
            ttl_seconds=dict(self.ttl_seconds),
            created_before_event=self.created_before_event,
        )

    def summary(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "title": self.title,
            "description": self.description,
            "features": self.features,
            "timestamp_column": self.timestamp_column,
            "full_feature_names": self.full_feature_names,
        }


def list_training_sets(queries_dir: Path) -> list[TrainingSetDefinition]:
    """Return every valid definition under `queries_dir/training_sets`; invalid ones are logged
    (see `load_training_set`)."""
    folder = queries_dir / TRAINING_SETS_FOLDER
    definitions = []
    for path in sorted(folder.glob("*.toml")):
        try:
            definitions.append(load_training_set(queries_dir, path.stem))
        except InvalidInput as error:
            logger.warning("skipping training set file %s: %s", path, error.message)
        except TrainingSetInvalid:
            continue
    return definitions


def load_training_set(queries_dir: Path, name: str) -> TrainingSetDefinition:
    """Read the definition called `name`; the name is checked before it becomes a path.

    Raise InvalidInput for an invalid name, NotFound without a file, and TrainingSetInvalid for
    an invalid file, whose path and problem are logged at ERROR (once per version of the
    file)."""
    if not isinstance(name, str) or TABLE_NAME_PATTERN.fullmatch(name) is None:
        raise InvalidInput(
            f"invalid training set name {name!r}: use lowercase letters, digits and underscores"
        )
    path = queries_dir / TRAINING_SETS_FOLDER / f"{name}.toml"
    try:
        return _read_definition(path, name)
    except FileNotFoundError as error:
        known = ", ".join(d.name for d in list_training_sets(queries_dir)) or "none"
        raise NotFound(f"training set {name!r} not found; defined: {known}") from error
    except TrainingSetInvalid as error:
        log_invalid_file(logger, "training set file", path, error.problem)
        raise


def _read_definition(path: Path, name: str) -> TrainingSetDefinition:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        # `load_training_set` reports a missing file as NotFound, not as an unreadable one.
        raise
    except UnicodeDecodeError as error:
        raise TrainingSetInvalid(
            name, f"the file is not UTF-8 text (invalid byte at position {error.start})"
        ) from error
    except OSError as error:
        # The message names the error only: its text would show the server's path.
        reason = error.strerror or type(error).__name__
        raise TrainingSetInvalid(name, f"the file cannot be read ({reason})") from error

    try:
        content = tomllib.loads(text)
    except tomllib.TOMLDecodeError as error:
        raise TrainingSetInvalid(name, f"the file is not valid TOML: {error}") from error
    return _definition_from_mapping(name, content)


def _definition_from_mapping(name: str, content: dict[str, Any]) -> TrainingSetDefinition:
    unknown = sorted(set(content) - DEFINITION_KEYS)
    if unknown:
        known = ", ".join(DEFINITION_TYPES)
        raise TrainingSetInvalid(name, f"unknown keys {', '.join(unknown)}; the keys are {known}")
    for required in ("entity_sql", "features"):
        if required not in content:
            raise TrainingSetInvalid(name, f"the required key {required} is missing")
    for key, value in content.items():
        if not _has_definition_type(key, value):
            raise TrainingSetInvalid(
                name, f"{key} must be {DEFINITION_TYPES[key]}, not {quoted_value(value)}"
            )
    return TrainingSetDefinition(name=name, **content)


def _has_definition_type(key: str, value: Any) -> bool:
    expected = DEFINITION_TYPES[key]
    if expected == "a string":
        return isinstance(value, str)
    if expected == "true or false":
        return isinstance(value, bool)
    if key == "features":
        return isinstance(value, list) and all(isinstance(item, str) for item in value)
    return isinstance(value, dict) and all(
        isinstance(seconds, int | float) and not isinstance(seconds, bool)
        for seconds in value.values()
    )


def build_training_set(store: FeatureStore, definition: TrainingSetDefinition) -> pa.Table:
    """Run a named definition against `store`."""
    return get_historical_features(
        store,
        None,
        definition.features,
        definition.join_options(),
        entity_sql=definition.entity_sql,
    )
