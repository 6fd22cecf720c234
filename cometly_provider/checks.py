"""The one home of settings checks: seconds, ids, booleans, bounded integers, part sizes.

Every check raises :class:`~cometly_provider.exceptions.CometlyInputError` in one style,
``<field>=<value> is invalid: expected <what is allowed>``, naming the field so a DAG author sees
which argument to fix. API parameters (dates, event names, ...) are checked by
:mod:`cometly_provider.validation`, which owns the API's vocabulary.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from typing import Any

from cometly_provider.exceptions import CometlyInputError

MiB = 1024 * 1024
#: S3 refuses parts smaller than 5 MiB (except the last) and more than 10,000 parts.
S3_MIN_PART_SIZE = 5 * MiB
#: GCS resumable chunks must be multiples of 256 KiB (except the last).
GCS_CHUNK_MULTIPLE = 256 * 1024
MIN_PART_SIZE = GCS_CHUNK_MULTIPLE


def invalid(field: str, value: Any, expected: str) -> CometlyInputError:
    """The error every check raises: ``field=value is invalid: expected ...``."""
    shown = repr(value)
    if len(shown) > 80:
        shown = shown[:77] + "..."
    return CometlyInputError(f"{field}={shown} is invalid: expected {expected}", field=field)


def check_seconds(value: Any, field: str, *, allow_zero: bool = False) -> float:
    """A positive number of seconds (a ``timedelta`` is accepted too)."""
    if isinstance(value, dt.timedelta):
        value = value.total_seconds()
    if isinstance(value, bool) or not isinstance(value, int | float) or value != value:
        raise invalid(field, value, "a number of seconds")
    if value < 0 or (value == 0 and not allow_zero):
        raise invalid(field, value, f"seconds {'>= 0' if allow_zero else '> 0'}")
    return float(value)


def check_bool(value: Any, field: str) -> bool:
    if not isinstance(value, bool):
        raise invalid(field, value, "True or False")
    return value


def check_int(value: Any, field: str, *, minimum: int, maximum: int | None = None) -> int:
    """An integer in ``[minimum, maximum]`` (no bool, no float, no text)."""
    in_range = isinstance(value, int) and value >= minimum and (maximum is None or value <= maximum)
    if isinstance(value, bool) or not in_range:
        bound = f"from {minimum} to {maximum}" if maximum is not None else f">= {minimum}"
        raise invalid(field, value, f"an integer {bound}")
    return int(value)


def check_export_id(
    value: Any, *, field: str = "export_id", source: str = "the create-export operator"
) -> int:
    """The integer export id from a rendered template, an XComArg value or a result dict.

    ``source`` names where a valid id comes from, for the message (e.g. ``CreateEventExportOperator``).
    """
    if isinstance(value, Mapping) and "export_id" in value:
        value = value["export_id"]
    text = str(value).strip() if isinstance(value, int | str) and not isinstance(value, bool) else ""
    if not (text.isascii() and text.isdigit()):
        raise invalid(field, value, f"the integer export_id returned by {source} (usually its XComArg)")
    return int(text)


def check_part_size(part_size: object, scheme: str | None = None, *, field: str = "part_size") -> int:
    """``part_size`` as an int, checked against the limits of the destination's scheme."""
    if isinstance(part_size, bool) or not isinstance(part_size, int):
        raise invalid(field, part_size, "an integer number of bytes")
    if part_size < MIN_PART_SIZE or part_size % GCS_CHUNK_MULTIPLE:
        raise invalid(
            field, part_size, f"a multiple of 256 KiB ({GCS_CHUNK_MULTIPLE} bytes), at least 256 KiB"
        )
    if scheme == "s3" and part_size < S3_MIN_PART_SIZE:
        raise invalid(
            field,
            part_size,
            f"at least 5 MiB ({S3_MIN_PART_SIZE} bytes) for an s3:// destination (S3 multipart parts)",
        )
    return part_size
