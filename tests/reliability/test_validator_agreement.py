"""The client-side validator and the simulator agree on every payload (property-based, hypothesis).

``cometly_provider.validation`` (what the operators and the hook check before sending) and
``cometly_provider.testing._rules`` (what the simulator answers) are two independent readings of
the API reference. Hypothesis generates track payloads and export parameter sets, valid ones and
subtly invalid ones (wrong types, missing identification, fingerprint without ip,
custom_event_0 / custom_event_51, profile fields of the wrong kind, duplicates, lists too long or
empty, ad hierarchy fields without sources, ...), and each one is judged by both sides:

* the validator accepts  <=>  the request it would send (its normalized body) gets 202 from the
  simulator;
* the validator rejects  <=>  the raw payload gets 422 from the simulator, and the first field the
  validator names is among the fields the simulator's 422 names.

Requests go over HTTP with plain ``requests`` (not the hook, which would validate first), so the
simulator judges on its own. Unknown track fields are compared with ``allow_unknown_fields=True``:
the API (a Laravel app) ignores them, the validator rejects them by default only as a typo guard
(checked separately below).
"""

from __future__ import annotations

import datetime as dt
import json
import os
from collections.abc import Iterator
from typing import Any

import pytest
import requests
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from cometly_provider.exceptions import CometlyInputError
from cometly_provider.validation import (
    AD_HIERARCHY_FIELDS,
    ATTRIBUTION_MODELS,
    ATTRIBUTION_WINDOWS,
    AUTO_EXPORT_FIELDS,
    BOOLEAN_TRACK_FIELDS,
    EXPORT_FIELDS,
    SOURCES,
    STANDARD_EXPORT_EVENTS,
    STANDARD_TRACK_EVENTS,
    STRING_TRACK_FIELDS,
    track_event_problems,
    validate_export_params,
    validate_track_event,
)

#: Examples per property; raise it for a deeper sweep (``COMETLY_AGREEMENT_EXAMPLES=5000``).
MAX_EXAMPLES = int(os.environ.get("COMETLY_AGREEMENT_EXAMPLES", "250"))
SETTINGS = settings(
    max_examples=MAX_EXAMPLES,
    deadline=None,
    suppress_health_check=[
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
        HealthCheck.function_scoped_fixture,
    ],
)


@pytest.fixture(scope="module")
def judge() -> Iterator[Any]:
    """One simulator for the module: no rate limits, exports never generate a file (``stuck``)."""
    from cometly_provider.testing.simulator import run_simulator

    with run_simulator(rate_limiting_enabled=False, export_outcome="stuck") as sim, requests.Session() as s:
        s.headers.update(
            {
                "Authorization": f"Bearer {sim.api_key}",
                "Accept": "application/json",
                "Content-Type": "application/json",
            }
        )

        def post(path: str, body: dict[str, Any]) -> requests.Response:
            return s.post(sim.api_base + path, data=json.dumps(body), timeout=10)

        yield post


# --- strategies ------------------------------------------------------------------------------------
# Each payload starts valid and gets 0 to 3 mutations, each of which draws a "wild" value for one
# field (often invalid, sometimes valid again), so both verdicts come up often.

NOT_A_STRING = st.one_of(
    st.integers(-5, 10**6), st.booleans(), st.just([]), st.just(["x"]), st.just({"a": 1}), st.floats(0, 9)
)
ODD_TEXT = st.text(max_size=12)
MUTATIONS = st.sampled_from([0, 0, 1, 1, 1, 2, 3])

# Track: valid values.
VALID_EVENT_NAME = st.one_of(
    st.sampled_from(STANDARD_TRACK_EVENTS), st.integers(1, 50).map(lambda i: f"custom_event_{i}")
)
VALID_EVENT_TIME = st.one_of(
    st.datetimes(dt.datetime(1971, 1, 1), dt.datetime(2100, 1, 1), timezones=st.just(dt.UTC)).map(
        lambda d: d.isoformat().replace("+00:00", "Z")
    ),
    st.integers(0, 10**11 - 1),
    st.integers(0, 10**11 - 1).map(str),
)
VALID_AMOUNT = st.one_of(st.integers(-(10**9), 10**9), st.floats(-1e9, 1e9, allow_nan=False))
PROFILE_TEXT_VALUE = ODD_TEXT
PROFILE_NUMBER_VALUE = st.one_of(
    st.integers(-(10**6), 10**6), st.floats(-1e6, 1e6), st.sampled_from(["500", " 500 ", "-1.5", ".5", "1e3"])
)
PROFILE_DATE_VALUE = st.sampled_from(["2024-01-15", "2024-01-15T10:30:00Z", "2024-01-15 10:30:00+02:00"])
OTHER_STRING_FIELDS = sorted(
    STRING_TRACK_FIELDS - {"event_name", "email", "comet_token", "fingerprint", "ip"}
)

# Track: wild values.
EVENT_NAME = st.one_of(
    VALID_EVENT_NAME,
    st.sampled_from(
        [
            "custom_event_0",
            "custom_event_51",
            "custom_event_01",
            "upsell_purchase",  # an export filter value, not a trackable event
            "Purchase",
            " purchase",
            "",
            "  ",
        ]
    ),
    NOT_A_STRING,
    st.just(None),
)
EVENT_TIME_CORNERS = st.sampled_from(
    [
        "2024-01-15T10:30:00+02:00",
        "2024-01-15 10:30:00",
        "2024-01-15",
        "20240115T103000",
        " 2024-01-15T10:30:00Z ",
        "2024-01-15T25:00:00Z",
        "2024-13-01",
        "15/01/2024",
        "yesterday",
        "",
        "   ",
        "²",
        "١٧٠٥٣١٤٦٠٠",
        "1705314600.5",
        "-1705314600",
        "+1705314600",
        " 1705314600 ",
    ]
)
EVENT_TIME = st.one_of(
    EVENT_TIME_CORNERS,
    EVENT_TIME_CORNERS,
    st.sampled_from([0, -1, 10**11 - 1, 10**11, 10**11 + 1, 1705314600000, 1705314600.5]),
    st.sampled_from([10**11 - 1, 10**11, 1705314600000]).map(str),
    st.integers(-10, 2 * 10**11),
    st.floats(-1, 2e11, allow_nan=False),
    ODD_TEXT,
    st.booleans(),
    st.just(None),
    st.just(["2024-01-15"]),
)
AMOUNT = st.one_of(
    VALID_AMOUNT,
    st.sampled_from(["12,50", "12.50", "12", "", "1e3"]),
    st.booleans(),
    st.just(None),
    st.just([12.5]),
)
FILLED = st.sampled_from(["a@example.com", "tok_123", "fp-abc", "203.0.113.7", "x"])
IDENTIFIER = st.one_of(FILLED, FILLED, st.sampled_from(["", "   ", None]), NOT_A_STRING)
PROFILE_VALUE = st.one_of(
    ODD_TEXT,
    PROFILE_NUMBER_VALUE,
    PROFILE_DATE_VALUE,
    st.sampled_from(
        ["five", "1,000", "", "0x10", "5.", "+7", " 2024-01-15", "2024-01-15 ", "2024-02-30", " "]
    ),
    NOT_A_STRING,
)
OTHER_VALUE = st.one_of(ODD_TEXT, ODD_TEXT, NOT_A_STRING, st.just(None))
BOOLEAN_VALUE = st.one_of(st.booleans(), st.sampled_from(["true", "false", 1, 0, None]))


def _profile_value(number: int) -> st.SearchStrategy[Any]:
    if 1 <= number <= 15:
        return PROFILE_TEXT_VALUE
    if 16 <= number <= 25:
        return PROFILE_NUMBER_VALUE
    return PROFILE_DATE_VALUE


@st.composite
def track_payloads(draw: st.DrawFn) -> dict[str, Any]:
    payload: dict[str, Any] = {"event_name": draw(VALID_EVENT_NAME)}
    identify = draw(st.sampled_from(["email", "comet_token", "fingerprint+ip"]))
    for key in identify.split("+"):
        payload[key] = draw(FILLED)
    if draw(st.booleans()):
        payload["amount"] = draw(VALID_AMOUNT)
    if draw(st.booleans()):
        payload["event_time"] = draw(VALID_EVENT_TIME)
    for key in draw(st.lists(st.sampled_from(OTHER_STRING_FIELDS), max_size=3, unique=True)):
        payload[key] = draw(ODD_TEXT)
    for key in draw(st.lists(st.sampled_from(sorted(BOOLEAN_TRACK_FIELDS)), max_size=2, unique=True)):
        payload[key] = draw(st.booleans())
    for number in draw(st.lists(st.integers(1, 30), max_size=3, unique=True)):
        payload[f"profile_field_{number}"] = draw(_profile_value(number))

    for _ in range(draw(MUTATIONS)):
        kind = draw(
            st.sampled_from(
                ["event_name", "identity", "amount", "event_time", "string", "boolean", "profile", "unknown"]
            )
        )
        if kind == "event_name":
            payload["event_name"] = draw(EVENT_NAME)
        elif kind == "identity":
            for key in ("email", "comet_token", "fingerprint", "ip"):
                payload.pop(key, None)
            for key in draw(
                st.sets(st.sampled_from(["email", "comet_token", "fingerprint", "ip"]), max_size=4)
            ):
                payload[key] = draw(IDENTIFIER)
        elif kind == "amount":
            payload["amount"] = draw(AMOUNT)
        elif kind == "event_time":
            payload["event_time"] = draw(EVENT_TIME)
        elif kind == "string":
            payload[draw(st.sampled_from(OTHER_STRING_FIELDS))] = draw(OTHER_VALUE)
        elif kind == "boolean":
            payload[draw(st.sampled_from(sorted(BOOLEAN_TRACK_FIELDS)))] = draw(BOOLEAN_VALUE)
        elif kind == "profile":
            number = draw(st.one_of(st.sampled_from([0, 1, 15, 16, 25, 26, 30, 31]), st.integers(0, 31)))
            payload[f"profile_field_{number}"] = draw(st.one_of(_profile_value(number), PROFILE_VALUE))
        else:
            payload[draw(st.sampled_from(["emial", "evnt_name", "revenue", "custom"]))] = draw(ODD_TEXT)
    return payload


# Export: valid values.
VALID_DATE = st.dates(dt.date(2000, 1, 1), dt.date(2099, 12, 31)).map(dt.date.isoformat)
EXPORT_EVENT_NAMES = (*STANDARD_EXPORT_EVENTS, *(f"custom_event_{i}" for i in range(1, 51)))
NON_AD_FIELDS = tuple(f for f in EXPORT_FIELDS + AUTO_EXPORT_FIELDS if f not in AD_HIERARCHY_FIELDS)


def _unique(values: Any, limit: int) -> st.SearchStrategy[list[Any]]:
    return st.lists(st.sampled_from(values), min_size=1, max_size=limit, unique=True)


# Export: wild values.
EXPORT_EVENT_VALUES = st.one_of(
    st.sampled_from(EXPORT_EVENT_NAMES),
    st.sampled_from(["custom_event_0", "custom_event_51", "buy_stuff", "Purchase", ""]),
    st.integers(0, 3),
)
SOURCE_VALUES = st.one_of(
    st.sampled_from(sorted(SOURCES)),
    st.sampled_from(["myspace_ads", "Facebook_ads", "", "google"]),
    st.just(7),
)
FIELD_VALUES = st.one_of(
    st.sampled_from(EXPORT_FIELDS + AUTO_EXPORT_FIELDS),
    st.sampled_from(["touchpoint_id", "source", "revenue", "event_time", ""]),
    st.just(None),
)


def _wild_list(items: st.SearchStrategy[Any], limit: int) -> st.SearchStrategy[Any]:
    """Lists around the limits (0 .. limit + 2 items, duplicates possible), or not a list at all."""
    return st.one_of(
        st.lists(items, min_size=0, max_size=limit + 2),
        st.lists(items, min_size=limit - 1, max_size=limit + 1, unique_by=lambda v: json.dumps(v)),
        st.sampled_from(["purchase", {"a": 1}, 3, None]),
    )


DATES = st.one_of(
    VALID_DATE,
    st.sampled_from(
        [
            "2024/01/15",
            "2024-1-5",
            "2024-02-30",
            "2024-01-15/2024-01-16",
            "2024-01-15..2024-01-16",
            "2024-01-15T00:00:00",
            " 2024-01-15",
            "",
            "15-01-2024",
            "\uff12\uff10\uff12\uff14-01-15",  # full-width digits
        ]
    ),
    st.sampled_from([20240115, None, ["2024-01-15", "2024-01-16"], True]),
)


@st.composite
def export_params(draw: st.DrawFn) -> dict[str, Any]:
    params: dict[str, Any] = {"date": draw(VALID_DATE)}
    if draw(st.booleans()):
        params["query_mode"] = draw(st.sampled_from(["profile", "company"]))
    if draw(st.booleans()):
        params["event_names"] = draw(_unique(EXPORT_EVENT_NAMES, 10))
    with_sources = draw(st.booleans())
    if with_sources:
        params["sources"] = draw(_unique(sorted(SOURCES), 15))
    if with_sources or not draw(st.integers(0, 3)):
        params["attribution_model"] = draw(st.sampled_from(ATTRIBUTION_MODELS))
    if with_sources or not draw(st.integers(0, 3)):
        params["attribution_window"] = draw(st.sampled_from(ATTRIBUTION_WINDOWS))
    if draw(st.booleans()):
        params["fields"] = draw(
            _unique(EXPORT_FIELDS + AUTO_EXPORT_FIELDS if with_sources else NON_AD_FIELDS, 20)
        )

    for _ in range(draw(MUTATIONS)):
        kind = draw(
            st.sampled_from(
                [
                    "date",
                    "no date",
                    "query_mode",
                    "event_names",
                    "sources",
                    "no model",
                    "no window",
                    "model",
                    "window",
                    "fields",
                    "ad field without sources",
                    "unknown",
                ]
            )
        )
        if kind == "date":
            params["date"] = draw(DATES)
        elif kind == "no date":
            params.pop("date", None)
        elif kind == "query_mode":
            params["query_mode"] = draw(st.sampled_from(["profile", "company", "Profile", "", None, 1]))
        elif kind == "event_names":
            params["event_names"] = draw(_wild_list(EXPORT_EVENT_VALUES, 10))
        elif kind == "sources":
            params["sources"] = draw(_wild_list(SOURCE_VALUES, 15))
        elif kind == "no model":
            params.pop("attribution_model", None)
        elif kind == "no window":
            params.pop("attribution_window", None)
        elif kind == "model":
            params["attribution_model"] = draw(
                st.one_of(st.sampled_from(ATTRIBUTION_MODELS), st.sampled_from(["best_touch", "", None, 3]))
            )
        elif kind == "window":
            params["attribution_window"] = draw(
                st.one_of(
                    st.sampled_from(ATTRIBUTION_WINDOWS), st.sampled_from([3, -1, 365, "7", 7.0, True, None])
                )
            )
        elif kind == "fields":
            params["fields"] = draw(_wild_list(FIELD_VALUES, 20))
        elif kind == "ad field without sources":
            for key in ("sources", "attribution_model", "attribution_window"):
                params.pop(key, None)
            fields = params.get("fields") if isinstance(params.get("fields"), list) else []
            params["fields"] = [
                *[f for f in fields if f not in AD_HIERARCHY_FIELDS][:19],
                draw(st.sampled_from(AD_HIERARCHY_FIELDS)),
            ]
        else:
            params[draw(st.sampled_from(["end_date", "date_to", "start", "timezone"]))] = "2024-01-16"
    return params


# --- the properties --------------------------------------------------------------------------------


def _fields(response: requests.Response) -> set[str]:
    """The top-level fields a 422 names (``event_names.3`` -> ``event_names``)."""
    return {key.split(".")[0] for key in response.json().get("errors", {})}


def _describe(payload: Any, response: requests.Response, verdict: str) -> str:
    return f"validator: {verdict}; simulator: {response.status_code} {response.text}; payload: {payload!r}"


@SETTINGS
@given(payload=track_payloads())
# Corners worth checking on every run (the first four were disagreements or crashes once).
@example(payload={"event_name": [], "email": "a@example.com"})
@example(payload={"event_name": "purchase", "email": "a@example.com", "event_time": "100000000000"})
@example(payload={"event_name": "purchase", "email": "a@example.com", "event_time": "\u00b2"})
@example(payload={"event_name": "purchase", "email": "a@example.com", "profile_field_27": " 2024-01-15"})
@example(payload={"event_name": "purchase", "email": "a@example.com", "event_time": 10**11 - 1})
@example(payload={"event_name": "purchase", "email": "a@example.com", "amount": "12,50"})
@example(payload={"event_name": "purchase", "fingerprint": "fp-1"})
@example(payload={"event_name": "purchase", "ip": "203.0.113.7", "email": "a@example.com"})
@example(payload={"event_name": "purchase", "fingerprint": "fp-1", "ip": "203.0.113.7"})
@example(payload={"event_name": "purchase", "email": "   ", "comet_token": ""})
@example(payload={"event_name": "custom_event_0", "email": "a@example.com"})
@example(payload={"event_name": "custom_event_51", "email": "a@example.com"})
@example(payload={"event_name": "custom_event_50", "email": "a@example.com"})
@example(payload={"event_name": "upsell_purchase", "email": "a@example.com"})
@example(payload={"event_name": "purchase", "email": "a@example.com", "profile_field_16": "lots"})
@example(payload={"event_name": "purchase", "email": "a@example.com", "profile_field_31": "x"})
@example(payload={"event_name": "purchase", "email": "a@example.com", "is_upsell": "true"})
def test_track_validator_and_simulator_agree(judge: Any, payload: dict[str, Any]) -> None:
    problems = track_event_problems(payload, allow_unknown_fields=True)
    if not problems:
        body = validate_track_event(payload, allow_unknown_fields=True)
        response = judge("/events/track", body)
        assert response.status_code == 202, _describe(body, response, "accepted")
    else:
        response = judge("/events/track", payload)
        verdict = "; ".join(p.message for p in problems)
        assert response.status_code == 422, _describe(payload, response, verdict)
        # Both name the same culprit (the validator may name its partner too: fingerprint and ip).
        assert {p.field for p in problems} & _fields(response), _describe(payload, response, verdict)
    # With unknown fields refused (the default), exactly the unknown keys add a problem.
    strict = track_event_problems(payload)
    extra = [p for p in strict if p not in problems]
    assert all("is not a documented field" in p.message for p in extra)


@SETTINGS
@given(params=export_params())
@example(params={"date": "2024/01/15"})
@example(params={"date": "2024-01-15/2024-01-16"})
@example(params={"date": "2024-01-15", "end_date": "2024-01-16"})
@example(params={"date": "2024-01-15", "event_names": ["purchase", "buy_stuff"]})
@example(params={"date": "2024-01-15", "event_names": [f"custom_event_{i}" for i in range(1, 12)]})
@example(params={"date": "2024-01-15", "event_names": ["upsell_purchase"]})
@example(
    params={
        "date": "2024-01-15",
        "sources": ["email", "email"],
        "attribution_model": "linear",
        "attribution_window": 7,
    }
)
@example(
    params={
        "date": "2024-01-15",
        "sources": ["email"],
        "attribution_model": "linear",
        "attribution_window": 3,
    }
)
@example(params={"date": "2024-01-15", "sources": ["email"], "attribution_window": 7})
@example(params={"date": "2024-01-15", "fields": ["amount", "ad_id"]})
@example(params={"date": "2024-01-15", "fields": ["id", "event_time_utc"]})
@example(params={"date": "2024-01-15", "fields": ["touchpoint_id"]})
@example(params={"date": "2024-01-15", "attribution_model": "linear", "attribution_window": 0})
def test_export_validator_and_simulator_agree(judge: Any, params: dict[str, Any]) -> None:
    try:
        body: dict[str, Any] | None = validate_export_params(params)
        error: CometlyInputError | None = None
    except CometlyInputError as err:
        body, error = None, err
    if error is not None:
        response = judge("/events/exports", params)
        verdict = f"rejected ({error.field}): {error}"
        assert response.status_code == 422, _describe(params, response, verdict)
        assert error.field in _fields(response), _describe(params, response, verdict)
    else:
        assert body is not None
        response = judge("/events/exports", body)
        assert response.status_code == 202, _describe(body, response, "accepted")
        assert response.json()["status"] == "queued"


def test_the_generators_reach_both_verdicts_on_both_endpoints() -> None:
    """The strategies are not degenerate: each produces accepted and rejected payloads often."""
    track, export = [], []

    @settings(max_examples=150, deadline=None, database=None)
    @given(payload=track_payloads(), params=export_params())
    def sample(payload: dict[str, Any], params: dict[str, Any]) -> None:
        track.append(not track_event_problems(payload, allow_unknown_fields=True))
        try:
            validate_export_params(params)
            export.append(True)
        except CometlyInputError:
            export.append(False)

    sample()
    for verdicts in (track, export):
        assert 0.1 < sum(verdicts) / len(verdicts) < 0.9, sum(verdicts) / len(verdicts)
