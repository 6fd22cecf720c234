"""Idempotency keys: a function of the logical event and the run scope, never of its position.

The key an event gets when it has none of its own is a sha256 of

* the scope: ``("run", dag_id, task_id, run_id)`` by default, or ``("dag", dag_id)`` with
  ``idempotency_scope="dag"``. Never the map index, the chunk an event landed in, or its position:
  a cleared mapped run whose upstream returns the same events reordered or re-chunked gives every
  event the key it had before, and the API stores nothing new;
* the event's **canonical** content: what the API would store, not how it was spelled. Strings are
  trimmed and blank ones dropped (Laravel's ``TrimStrings`` / ``ConvertEmptyStringsToNull``: the API
  stores ``" a@b.co "`` as ``"a@b.co"`` and ``""`` as null); numbers count by value (``100 == 100.0``,
  ``"500" == 500`` in the numeric profile fields); ``event_time`` becomes one UTC form at whole
  seconds (the API stores ISO 8601 UTC seconds), whether it came as an aware or naive datetime, an
  ISO string with ``Z``, ``+00:00`` or any other offset, or unix seconds. Two events that differ in
  any field the API stores (``event_time`` by one second included) never share a key;
* or, with ``idempotency_fields=[...]``, only those fields (canonical as above): the rows' natural
  key, so that a corrected amount on a re-run does not count the conversion twice.

Consequence, by design: identical events inside one run scope are **one** logical event (the
second is answered ``duplicate``). Rows that really are separate conversions must differ in some
stored field (``order_id``, ``event_time``, ...) or carry their own ``idempotency_key``.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from typing import Any

from cometly_provider.validation import PROFILE_NUMBER_FIELDS, normalize_track_event

IDEMPOTENCY_SCOPES = ("run", "dag")
# v1 (0.1.0) hashed the map index and an occurrence counter; keys changed meaning with v2.
KEY_VERSION = "cometly-track/v2"
KEY_LENGTH = 40


@dataclass(frozen=True)
class KeyScope:
    """Where an event's key is unique: one DAG run of one task, or every run of one DAG."""

    dag_id: str
    task_id: str
    run_id: str | None  # None: idempotency_scope="dag"

    def identity(self) -> bytes:
        if self.run_id is None:
            parts: tuple[str, ...] = (KEY_VERSION, "dag", self.dag_id)
        else:
            parts = (KEY_VERSION, "run", self.dag_id, self.task_id, self.run_id)
        return "\0".join(parts).encode() + b"\0"


def canonical_event(event: Mapping[str, Any]) -> dict[str, Any]:
    """The event as the API stores it, spelled one way; ``idempotency_key`` left out.

    Raises ``ValueError`` / ``TypeError`` for content that is not JSON (validation reports those).
    """
    out: dict[str, Any] = {}
    for name, value in normalize_track_event(event).items():
        if name == "idempotency_key":
            continue
        value = _canonical_value(name, value)
        if value is not None:
            out[name] = value
    return out


def canonical_json(canonical: Mapping[str, Any]) -> str:
    return json.dumps(canonical, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)


def content_digest(event: Mapping[str, Any], fields: Sequence[str] | None = None) -> bytes:
    """sha256 of the canonical event, or of its ``fields`` only (absent ones as null)."""
    canonical = canonical_event(event)
    if fields:
        canonical = {name: canonical.get(name) for name in fields}
    return hashlib.sha256(canonical_json(canonical).encode()).digest()


def key_for(identity: bytes, digest: bytes) -> str:
    return hashlib.sha256(identity + digest).hexdigest()[:KEY_LENGTH]


def derive_idempotency_key(
    event: Mapping[str, Any],
    *,
    dag_id: str,
    task_id: str,
    run_id: str | None,
    idempotency_fields: Sequence[str] | None = None,
) -> str:
    """The ``idempotency_key`` :class:`~cometly_provider.operators.track_event.TrackEventOperator`
    gives an event that has none. ``run_id=None`` gives the key of ``idempotency_scope="dag"``
    (which depends on ``dag_id`` only)."""
    scope = KeyScope(dag_id, task_id, run_id)
    return key_for(scope.identity(), content_digest(event, idempotency_fields))


def _canonical_value(name: str, value: Any) -> Any:
    if isinstance(value, str):
        text = value.strip()
        if not text:
            return None  # the API stores a blank string as null: the field is absent
        if name == "event_time":
            return _canonical_time(text)
        if name in PROFILE_NUMBER_FIELDS:
            return _canonical_number_text(text)
        return text
    if name == "event_time" and _is_number(value):
        return _canonical_unix(float(value))
    if _is_number(value):
        return _canonical_number(value)
    if isinstance(value, Mapping):
        return {str(k): _canonical_value("", v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_canonical_value("", v) for v in value]
    return value


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float | Decimal) and not isinstance(value, bool)


def _canonical_number(value: int | float | Decimal) -> int | float:
    """By value: an integral float is the int it equals (100.0 -> 100)."""
    if isinstance(value, int):
        return value
    number = float(value)
    if not math.isfinite(number):
        raise ValueError(f"{value!r} is not a finite number")
    return int(number) if number.is_integer() else number


def _canonical_number_text(text: str) -> Any:
    try:
        return _canonical_number(Decimal(text))
    except (InvalidOperation, ValueError):
        return text  # not a number: validation rejects it before any key is needed


def _canonical_time(text: str) -> Any:
    if text.isdecimal():
        return _canonical_unix(float(text))
    try:
        moment = dt.datetime.fromisoformat(text)
    except ValueError:
        return text  # invalid: validation reports it
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=dt.UTC)  # as the operator sends naive datetimes
    return _iso_seconds(moment)


_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)


def _canonical_unix(seconds: float) -> str:
    return _iso_seconds(_EPOCH + dt.timedelta(seconds=math.floor(seconds)))


def _iso_seconds(moment: dt.datetime) -> str:
    utc = moment.astimezone(dt.UTC).replace(microsecond=0)  # whole seconds, truncated
    return utc.strftime("%Y-%m-%dT%H:%M:%SZ")
