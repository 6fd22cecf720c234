"""Idempotency keys: one key per logical event and run scope, whatever the spelling (no network).

What "the same event" means follows what the API stores: strings trimmed (blank = absent, as
Laravel's TrimStrings / ConvertEmptyStringsToNull do), numbers by value, ``event_time`` as one UTC
instant at whole seconds. The agreement of the send path is checked over HTTP in
``test_mapped_reruns.py``.
"""

from __future__ import annotations

import datetime as dt
import itertools
import re
from decimal import Decimal
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from cometly_provider.exceptions import CometlyInputError
from cometly_provider.operators.track_event import TrackEventOperator
from cometly_provider.operators.track_event import derive_idempotency_key as old_home
from cometly_provider.tracking import derive_idempotency_key
from cometly_provider.tracking.keys import canonical_event

BASE = {"event_name": "purchase", "email": "buyer@example.com", "amount": 100, "order_name": "Pro plan"}
INSTANT = dt.datetime(2024, 1, 15, 10, 30, 0, tzinfo=dt.UTC)


def _key(event: dict[str, Any], run_id: str | None = "run-1", **kw: Any) -> str:
    return derive_idempotency_key(event, dag_id="d", task_id="t", run_id=run_id, **kw)


SAME_INSTANT = [
    INSTANT,
    INSTANT.replace(tzinfo=None),  # naive = UTC, as the operator sends it
    INSTANT.astimezone(ZoneInfo("Europe/Paris")),
    INSTANT.astimezone(ZoneInfo("America/Los_Angeles")),
    INSTANT.replace(microsecond=400_000),  # the API stores whole seconds
    "2024-01-15T10:30:00Z",
    "2024-01-15T10:30:00+00:00",
    " 2024-01-15T10:30:00.999Z ",
    "2024-01-15T11:30:00+01:00",
    "2024-01-15T10:30:00",
    "2024-01-15 10:30:00",
    1705314600,
    1705314600.0,
    1705314600.7,
    "1705314600",
    Decimal("1705314600"),
]


@pytest.mark.parametrize("spelling", SAME_INSTANT, ids=repr)
def test_every_spelling_of_one_instant_gives_one_key(spelling: Any) -> None:
    assert _key({**BASE, "event_time": spelling}) == _key({**BASE, "event_time": INSTANT})


@pytest.mark.parametrize(
    ("field", "spellings"),
    [
        ("amount", [100, 100.0, Decimal("100.00"), 1e2]),
        ("profile_field_16", [500, 500.0, "500", " 500.0 ", Decimal("5E+2")]),
        ("email", ["buyer@example.com", " buyer@example.com", "buyer@example.com\n"]),
        ("order_name", ["Pro plan", "  Pro plan  "]),
    ],
)
def test_values_count_by_what_the_api_stores(field: str, spellings: list[Any]) -> None:
    keys = {_key({**BASE, field: value}) for value in spellings}
    assert len(keys) == 1


def test_blank_strings_and_none_are_an_absent_field_and_key_order_does_not_matter() -> None:
    plain = _key(BASE)
    assert _key({**BASE, "url": ""}) == _key({**BASE, "url": "   "}) == _key({**BASE, "url": None}) == plain
    assert _key(dict(reversed(list(BASE.items())))) == plain
    assert _key({**BASE, "idempotency_key": ""}) == plain  # a blank own key means "derive one"


DIFFERENT = [
    ("event_time", INSTANT, INSTANT + dt.timedelta(seconds=1)),
    ("event_time", "2024-01-15T10:30:00Z", "2024-01-15T10:30:00+01:00"),
    ("event_time", 1705314600, 1705314601),
    ("amount", 100, 100.01),
    ("amount", 100, 1000),
    ("email", "buyer@example.com", "Buyer@example.com"),  # not claimed equal: the API may keep case
    ("order_name", "Pro plan", "Pro  plan"),
    ("is_upsell", True, False),
    ("profile_field_1", "500", "500.0"),  # a text field: no numeric reading
    ("url", None, "https://example.com/"),
]


@pytest.mark.parametrize(("field", "one", "other"), DIFFERENT, ids=lambda v: repr(v)[:30])
def test_events_differing_in_a_stored_field_never_share_a_key(field: str, one: Any, other: Any) -> None:
    assert _key({**BASE, field: one}) != _key({**BASE, field: other})


def test_distinct_events_have_distinct_keys() -> None:
    # One event per second of two hours, for two emails and two amounts: 28,800 canonical events.
    start = INSTANT.replace(hour=0, minute=0)
    keys = set()
    for second, email, amount in itertools.product(range(7_200), ("a@x.co", "b@x.co"), (10, 10.5)):
        event = {"event_name": "purchase", "email": email, "amount": amount}
        event["event_time"] = start + dt.timedelta(seconds=second)
        keys.add(_key(event))
    assert len(keys) == 7_200 * 4


def test_scope_is_the_run_or_the_dag_never_the_map_index_or_position() -> None:
    assert _key(BASE, "run-1") != _key(BASE, "run-2")
    assert derive_idempotency_key(BASE, dag_id="d", task_id="t1", run_id="r") != derive_idempotency_key(
        BASE, dag_id="d", task_id="t2", run_id="r"
    )
    # idempotency_scope="dag": the dag_id only.
    assert derive_idempotency_key(BASE, dag_id="d", task_id="t1", run_id=None) == derive_idempotency_key(
        BASE, dag_id="d", task_id="t2", run_id=None
    )
    assert old_home is derive_idempotency_key  # still importable from the operator module


def test_idempotency_fields_key_on_the_natural_key_only() -> None:
    fields = ["order_name", "email"]
    corrected = {**BASE, "amount": 120, "url": "https://example.com/?utm=x"}
    assert _key(BASE, idempotency_fields=fields) == _key(corrected, idempotency_fields=fields)
    assert _key(BASE, idempotency_fields=fields) != _key(
        {**BASE, "order_name": "Team plan"}, idempotency_fields=fields
    )
    assert _key(BASE, idempotency_fields=fields) != _key(BASE)


def test_canonical_form() -> None:
    assert canonical_event(
        {**BASE, "amount": 100.0, "event_time": "2024-01-15T11:30:00.5+01:00", "email": " b@x.co ", "x": ""}
    ) == {**BASE, "amount": 100, "event_time": "2024-01-15T10:30:00Z", "email": "b@x.co"}


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("order_id", "idempotency_fields='order_id' is not allowed"),
        ([], "idempotency_fields=[] is not allowed"),
        (["email", "email"], "names a field twice"),
        (["idempotency_key"], "not idempotency_key"),
        ([""], "idempotency_fields has ''"),
    ],
)
def test_bad_idempotency_fields_fail_at_parse_time(value: Any, message: str) -> None:
    with pytest.raises(CometlyInputError, match=re.escape(message)) as err:
        TrackEventOperator(task_id="t", events=[], idempotency_fields=value)
    assert err.value.field == "idempotency_fields"


def test_an_event_without_its_natural_key_is_invalid_unless_it_has_its_own_key() -> None:
    from types import SimpleNamespace

    from cometly_provider.tracking.batch import TrackingBatch
    from cometly_provider.tracking.sender import Stats
    from cometly_provider.tracking.sources import ListSource

    events = [{**BASE, "order_id": "o-1"}, BASE, {**BASE, "idempotency_key": "mine"}]
    op = TrackEventOperator(task_id="t", events=events, idempotency_fields=["order_id"])
    ti = SimpleNamespace(dag_id="d", task_id="t", run_id="r", map_index=-1)
    batch = TrackingBatch(op.tracking_settings(), op.key_scope({"ti": ti}), op.log)  # type: ignore[arg-type]
    with pytest.raises(CometlyInputError, match=r"index 1: order_id is missing, but idempotency_fields"):
        batch.validate(ListSource(events, "3 events"), Stats())
