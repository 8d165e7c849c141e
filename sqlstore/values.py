"""Conversion of request values (query strings, JSON scalars) to a column's type."""

from __future__ import annotations

import math
import re
from datetime import UTC, date, datetime, timedelta
from typing import Any

import pyarrow as pa

from sqlstore.errors import InvalidInput, quoted_value
from sqlstore.types import describe_type, type_family

INTEGER_PATTERN = re.compile(r"[+-]?[0-9]+")
# More digits than any 64-bit integer has (2^64-1 has 20); such text is out of range without
# being converted.
MAX_INTEGER_DIGITS = 20
EPOCH_TEXT_PATTERN = re.compile(r"[+-]?\d+(\.\d+)?")
# Text of at most 8 digits may be an ISO 8601 year or a basic-format date (20240501), so it is
# not taken as epoch seconds. Seconds since 1973-03-03 have 9 digits or more.
DATE_LIKE_TEXT_PATTERN = re.compile(r"[+-]?\d{1,8}")
# The ISO 8601 forms every timestamp input accepts. A date may be followed by "T" or one space
# and a time of hours and minutes, then optional seconds with 1 to 9 fractional digits, then an
# optional offset (Z, +hh, +hhmm or +hh:mm). The pattern is unanchored and compiles both in
# Python's re and in RE2, which Arrow's regex functions use.
ISO_TIMESTAMP_PATTERN = (
    r"\d{4}-\d{2}-\d{2}"
    r"(?:[T ]\d{2}:\d{2}(?::\d{2}(?:\.(?P<fraction>\d{1,9}))?)?(?:Z|[+-]\d{2}(?::?\d{2})?)?)?"
)
ISO_TIMESTAMP_REGEX = re.compile(ISO_TIMESTAMP_PATTERN)
ISO_TIMESTAMP_EXAMPLES = (
    "use a form such as 2024-05-01T12:00:00Z, 2024-05-01 12:00:00.250+02:00 or 2024-05-01"
)
# Unix epoch seconds of 0001-01-01T00:00:00Z and 9999-12-31T23:59:59Z, the range of Python's
# datetime and so of every JSON response.
MIN_EPOCH_SECONDS = -62_135_596_800
MAX_EPOCH_SECONDS = 253_402_300_799
EPOCH_RANGE_MESSAGE = (
    "{value!r} is outside the Unix epoch seconds of the years 1 to 9999; numbers are seconds, "
    "so divide milliseconds by 1000, or send an ISO 8601 string"
)
UNIX_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
# Filters bind integers as BIGINT, or UBIGINT above 2^63-1, and lookups build int64 or uint64
# key arrays. So an integer outside -2^63 to 2^63-1 (up to 2^64-1 on a uint64 column) can
# match no stored value, and it is rejected before it reaches DuckDB.
INT64_MIN = -(2**63)
INT64_MAX = 2**63 - 1
UINT64_MAX = 2**64 - 1
TRUE_WORDS = frozenset({"true", "1", "yes"})
FALSE_WORDS = frozenset({"false", "0", "no"})

# SQL type that a converted value is bound as, so that DuckDB compares it with the column's
# own type instead of casting the value down to a narrow stored type such as UTINYINT.
SQL_TYPES = {
    "integer": "BIGINT",
    "floating": "DOUBLE",
    "boolean": "BOOLEAN",
    "string": "VARCHAR",
    "timestamp": "TIMESTAMPTZ",
    "date": "DATE",
}


def sql_type_for(arrow_type: pa.DataType, value: Any = None) -> str | None:
    """Return the SQL type that `value`, converted for this column, is bound as, or None if
    the column's type is unsupported.

    Integers above 2^63-1, which `convert_value` returns only for uint64 columns, are bound as
    UBIGINT, because BIGINT cannot hold them.
    """
    if type(value) is int and value > INT64_MAX:
        return "UBIGINT"
    return SQL_TYPES.get(type_family(arrow_type))


def convert_value(
    value: Any, arrow_type: pa.DataType, what: str, type_name: str | None = None
) -> Any:
    """Convert a JSON or query-string value to the Python value of the column's type.

    `what` names the value in the error message, for example "filter rating__gte", and
    `type_name` the type that the message shows, by default the Arrow type.
    """
    family = type_family(arrow_type)
    try:
        if family == "integer":
            return _to_integer(value, _integer_maximum(arrow_type))
        if family == "floating":
            return _to_float(value)
        if family == "boolean":
            return _to_boolean(value)
        if family == "string":
            return _to_string(value)
        if family == "timestamp":
            return parse_timestamp(value)
        if family == "date":
            return date.fromisoformat(str(value))
    except (ValueError, TypeError, OverflowError) as error:
        if family == "integer" and isinstance(error, OverflowError):
            raise InvalidInput(_out_of_range_message(value, arrow_type, what)) from error
        reason = f"; {error}" if family == "timestamp" else ""
        raise InvalidInput(
            f"invalid value {quoted_value(value)} for {what}: expected {_expected(family)} "
            f"({type_name or describe_type(arrow_type)}){reason}"
        ) from error
    raise InvalidInput(f"{what} is not supported on {describe_type(arrow_type)} columns")


def _out_of_range_message(value: Any, arrow_type: pa.DataType, subject: str) -> str:
    """Return the message for an integer outside the range that the column can be compared
    with."""
    maximum = "2^64-1" if _integer_maximum(arrow_type) == UINT64_MAX else "2^63-1"
    return (
        f"invalid value {quoted_value(value)} for {subject}: out of range; integers must fit in "
        f"64 bits (-2^63 to {maximum}), and the column is {describe_type(arrow_type)}"
    )


def _integer_maximum(arrow_type: pa.DataType) -> int:
    """Return the largest integer that a value for a column of `arrow_type` may be."""
    if pa.types.is_dictionary(arrow_type):
        arrow_type = arrow_type.value_type
    return UINT64_MAX if pa.types.is_uint64(arrow_type) else INT64_MAX


def _to_integer(value: Any, maximum: int) -> int:
    number = parse_integer(value)
    if not INT64_MIN <= number <= maximum:
        raise OverflowError("integer outside the 64-bit range")
    return number


def parse_integer(value: Any) -> int:
    """Parse a JSON or query-string integer: an int, a float without a fraction, or decimal
    digits with an optional sign.

    Raise TypeError for a boolean, ValueError for anything else that is not an integer, and
    OverflowError, without converting it, for text of more digits than a 64-bit integer has.
    """
    if isinstance(value, bool):
        raise TypeError("a boolean is not an integer")
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str) and INTEGER_PATTERN.fullmatch(value.strip()):
        if len(value.strip().lstrip("+-").lstrip("0")) > MAX_INTEGER_DIGITS:
            raise OverflowError("integer outside the 64-bit range")
        return int(value)
    raise ValueError("not an integer")


def _to_float(value: Any) -> float:
    if isinstance(value, bool):
        raise TypeError("a boolean is not a number")
    return float(value)


def _to_boolean(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    word = str(value).strip().lower()
    if word in TRUE_WORDS:
        return True
    if word in FALSE_WORDS:
        return False
    raise ValueError("not a boolean")


def _to_string(value: Any) -> str:
    if isinstance(value, bool) or not isinstance(value, str | int):
        raise TypeError("not a string")
    return str(value)


def _expected(family: str) -> str:
    return {
        "integer": "an integer",
        "floating": "a number",
        "boolean": "true, false, 1, 0, yes or no",
        "string": "a string",
        "timestamp": "an ISO 8601 timestamp or Unix epoch seconds",
        "date": "an ISO 8601 date such as 2024-05-01",
    }.get(family, family)


# A timestamp whose UTC offset lost its '+' in a query string: "2016-10-14T20:51:14 00:00".
SPACE_FOR_PLUS_PATTERN = re.compile(r"\d \d{2}(?::?\d{2})?$")


def parse_timestamp(value: Any) -> datetime:
    """Parse an ISO 8601 string or Unix epoch seconds into an aware UTC datetime.

    A string without an offset is taken as UTC, and a string of 9 or more digits as epoch seconds,
    because query strings carry numbers as text. Raise ValueError, saying why, for anything else.
    """
    if isinstance(value, datetime):
        parsed = value
    elif isinstance(value, bool):
        raise TypeError("a boolean is not a timestamp")
    elif isinstance(value, int | float):
        return _from_epoch_seconds(value)
    elif isinstance(value, str):
        text = value.strip()
        if DATE_LIKE_TEXT_PATTERN.fullmatch(text):
            raise ValueError(
                f"{text!r} could be a date or Unix epoch seconds; send an ISO 8601 date or "
                "timestamp such as 2024-05-01 or 1970-01-01T00:00:00Z, or, in a JSON body, a "
                "number of seconds"
            )
        if EPOCH_TEXT_PATTERN.fullmatch(text):
            return _from_epoch_seconds(float(text) if "." in text else int(text))
        parsed = _parse_iso_timestamp(text)
    else:
        raise TypeError("not a timestamp")

    if parsed.tzinfo is None:
        return parsed.replace(tzinfo=UTC)
    return parsed.astimezone(UTC)


def _from_epoch_seconds(seconds: int | float) -> datetime:
    """Return the UTC datetime `seconds` after 1970-01-01, rounded to the microsecond."""
    if isinstance(seconds, float) and not math.isfinite(seconds):
        raise ValueError(f"{seconds!r} is not a finite number of seconds")
    if not MIN_EPOCH_SECONDS <= seconds <= MAX_EPOCH_SECONDS:
        raise ValueError(EPOCH_RANGE_MESSAGE.format(value=seconds))
    return UNIX_EPOCH + timedelta(seconds=seconds)


def _parse_iso_timestamp(text: str) -> datetime:
    match = ISO_TIMESTAMP_REGEX.fullmatch(text)
    if match is None:
        hint = ""
        if SPACE_FOR_PLUS_PATTERN.search(text):
            hint = "; in a URL query string a '+' reads as a space, so send it as %2B there"
        raise ValueError(f"{text!r} is not an ISO 8601 timestamp; {ISO_TIMESTAMP_EXAMPLES}{hint}")

    fraction = match.group("fraction") or ""
    if len(fraction) > 6:
        if fraction[6:].strip("0"):
            raise ValueError(
                f"{text!r} has nanosecond digits, but times in requests have microsecond "
                "precision; send at most 6 fractional digits"
            )
        text = text.replace("." + fraction, "." + fraction[:6], 1)
    try:
        return datetime.fromisoformat(text)
    except ValueError as error:
        if str(error).startswith("offset must be"):
            # Python's message shows the offset as a timedelta repr.
            raise ValueError(
                f"{text!r} has a UTC offset of 24 hours or more; offsets range from -23:59 to "
                "+23:59"
            ) from error
        raise


def is_valid_unicode(value: Any) -> bool:
    """Return False when `value`, or a string inside its lists and dictionaries, has a lone
    UTF-16 surrogate, which Python's JSON parser accepts and UTF-8 cannot encode."""
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            return False
        return True
    if isinstance(value, list):
        return all(is_valid_unicode(item) for item in value)
    if isinstance(value, dict):
        return all(is_valid_unicode(key) and is_valid_unicode(item) for key, item in value.items())
    return True
