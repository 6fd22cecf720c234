"""POST /events/track: every rule of create-event.md, and de-duplication.

Values are copied from the reference rather than from the simulator's own constants, so the
simulator is checked against the reference on its own.
"""

from __future__ import annotations

from typing import Any

import pytest

from tests.simulator.conftest import Api, errors_of

# create-event.md, "Standard Events".
STANDARD_EVENTS = [
    "lead_generated",
    "view_content",
    "schedule",
    "purchase",
    "subscribe",
    "add_to_cart",
    "contact",
    "initiate_checkout",
    "add_payment_info",
    "complete_registration",
    "start_trial",
    "sign_up",
    "submit_application",
    "webinar_registration",
]
# create-event.md, "Example Requests".
EXAMPLE = {
    "event_name": "purchase",
    "email": "customer@example.com",
    "amount": 99.99,
    "order_id": "ORD-12345",
    "url": "https://example.com/checkout/success",
    "event_time": "2024-01-15T10:30:00Z",
}
EMAIL = {"email": "customer@example.com"}


def _event(**fields: Any) -> dict[str, Any]:
    return {"event_name": "purchase", **EMAIL, **fields}


def test_reference_example_is_accepted_and_stored(api: Api) -> None:
    response = api.track(EXAMPLE)
    assert response.status_code == 202
    body = response.json()
    assert body["status"] == 202
    assert isinstance(body["message"], str)
    assert api.sim.events == [EXAMPLE]


@pytest.mark.parametrize("name", [*STANDARD_EVENTS, "custom_event_1", "custom_event_25", "custom_event_50"])
def test_standard_and_custom_event_names_are_accepted(api: Api, name: str) -> None:
    assert api.track({"event_name": name, **EMAIL}).status_code == 202


@pytest.mark.parametrize(
    "name",
    ["", "Purchase", "custom_event_0", "custom_event_51", "custom_event", "upsell_purchase", "page_view", 7],
)
def test_other_event_names_are_rejected(api: Api, name: Any) -> None:
    assert "event_name" in errors_of(api.track({"event_name": name, **EMAIL}))


def test_event_name_is_required(api: Api) -> None:
    errors = errors_of(api.track(EMAIL))
    assert errors["event_name"] == ["The event_name field is required."]
    assert "event_name" in errors_of(api.track({"event_name": None, **EMAIL}))


@pytest.mark.parametrize(
    "identification",
    [
        {"email": "customer@example.com"},
        {"comet_token": "ct_123"},
        {"fingerprint": "fp_abc", "ip": "203.0.113.7"},
        {"email": "customer@example.com", "comet_token": "ct_123", "fingerprint": "fp", "ip": "203.0.113.7"},
    ],
    ids=["email", "comet_token", "fingerprint+ip", "all"],
)
def test_each_identification_method_is_enough(api: Api, identification: dict[str, str]) -> None:
    assert api.track({"event_name": "lead_generated", **identification}).status_code == 202


@pytest.mark.parametrize(
    "identification",
    [{}, {"email": ""}, {"email": None, "comet_token": "  "}, {"tracking_id": "t-1"}, {"phone": "+15550100"}],
    ids=["nothing", "blank-email", "null-and-blank", "tracking_id-only", "phone-only"],
)
def test_missing_identification_is_rejected(api: Api, identification: dict[str, Any]) -> None:
    response = api.track({"event_name": "lead_generated", **identification})
    message = response.json()["message"]
    assert errors_of(response)
    for name in ("email", "comet_token", "fingerprint", "ip"):
        assert name in message


@pytest.mark.parametrize(
    ("given", "missing"),
    [({"fingerprint": "fp_abc"}, "ip"), ({"ip": "203.0.113.7"}, "fingerprint")],
)
def test_fingerprint_and_ip_must_come_together(api: Api, given: dict[str, str], missing: str) -> None:
    response = api.track({"event_name": "lead_generated", **given})
    errors = errors_of(response)
    assert missing in errors
    assert "fingerprint" in errors[missing][0]
    assert "ip" in errors[missing][0]
    # ... even when another identification method is present (reference: "and vice versa").
    assert missing in errors_of(api.track({"event_name": "lead_generated", **EMAIL, **given}))


@pytest.mark.parametrize("amount", [99.99, 0, 100, 149.5, 1e6, None])
def test_numeric_amounts_are_accepted(api: Api, amount: Any) -> None:
    assert api.track(_event(amount=amount)).status_code == 202


@pytest.mark.parametrize("amount", ["12,50", "99.99", "abc", True, False, [1], {"value": 1}])
def test_non_numeric_amounts_are_rejected(api: Api, amount: Any) -> None:
    response = api.track(_event(amount=amount))
    assert errors_of(response) == {"amount": ["The amount field must be a number."]}
    assert response.json()["message"] == "The amount field must be a number."


@pytest.mark.parametrize(
    "event_time",
    [
        "2024-01-15T10:30:00Z",
        "2024-01-15T10:30:00+02:00",
        "2024-01-15T10:30:00.123456Z",
        "2024-01-15",
        1705314600,
        1705314600.5,
        "1705314600",
    ],
)
def test_event_time_iso8601_or_unix_seconds_is_accepted(api: Api, event_time: Any) -> None:
    assert api.track(_event(event_time=event_time)).status_code == 202


@pytest.mark.parametrize(
    "event_time",
    ["yesterday", "2024-13-45T00:00:00Z", "15/01/2024 10:30", "", True, [2024], 1705314600000, -5],
    ids=["word", "bad-date", "non-iso", "blank", "bool", "list", "milliseconds", "negative"],
)
def test_bad_event_time_is_rejected(api: Api, event_time: Any) -> None:
    assert "event_time" in errors_of(api.track(_event(event_time=event_time)))


def test_profile_fields_reference_example_is_accepted(api: Api) -> None:
    # create-event.md: Example: "profile_field_1": "Enterprise", "profile_field_16": "500"
    assert api.track(_event(profile_field_1="Enterprise", profile_field_16="500")).status_code == 202


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("profile_field_1", "Enterprise"),
        ("profile_field_15", "Gold"),
        ("profile_field_16", 500),
        ("profile_field_20", 12.5),
        ("profile_field_25", "-3.25"),
        ("profile_field_26", "2024-01-15"),
        ("profile_field_30", "2024-01-15T10:30:00Z"),
    ],
)
def test_profile_field_types_are_accepted(api: Api, field: str, value: Any) -> None:
    assert api.track(_event(**{field: value})).status_code == 202


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("profile_field_1", 123),
        ("profile_field_15", True),
        ("profile_field_16", "five hundred"),
        ("profile_field_25", True),
        ("profile_field_26", "not a date"),
        ("profile_field_30", 20240115),
    ],
)
def test_profile_field_types_are_enforced(api: Api, field: str, value: Any) -> None:
    assert field in errors_of(api.track(_event(**{field: value})))


@pytest.mark.parametrize("field", ["is_upsell", "do_not_capi"])
def test_boolean_fields(api: Api, field: str) -> None:
    assert api.track(_event(**{field: True})).status_code == 202
    assert api.track(_event(**{field: False})).status_code == 202
    for value in ("true", 1, "yes"):
        errors = errors_of(api.track(_event(**{field: value})))
        assert field in errors
        assert "true or false" in errors[field][0]


def test_every_documented_field_together_is_accepted(api: Api) -> None:
    event = {
        "event_name": "purchase",
        "email": "customer@example.com",
        "comet_token": "ct_1",
        "fingerprint": "fp_1",
        "ip": "203.0.113.7",
        "tracking_id": "track-1",
        "full_name": "Jane Doe",
        "first_name": "Jane",
        "last_name": "Doe",
        "phone": "+15550100",
        "user_agent": "Mozilla/5.0",
        "event_time": "2024-01-15T10:30:00Z",
        "url": "https://example.com/checkout/success",
        "amount": 99.99,
        "order_id": "ORD-1",
        "order_name": "Order 1",
        "checkout_token": "chk_1",
        "is_upsell": False,
        "upsell_common_id": "up_1",
        "comet_source": "google",
        "comet_network": "search",
        "comet_campaign": "spring",
        "comet_ad_group": "group-1",
        "comet_ad_id": "ad-1",
        "comet_keyword": "attribution",
        "comet_type": "cpc",
        "profile_field_1": "Enterprise",
        "profile_field_16": "500",
        "profile_field_26": "2024-01-15",
        "idempotency_key": "evt-1",
        "do_not_capi": True,
    }
    assert api.track(event).status_code == 202
    assert api.sim.events == [event]


def test_string_fields_must_be_strings(api: Api) -> None:
    errors = errors_of(api.track({"event_name": "purchase", "email": 123, "order_id": 42}))
    assert set(errors) >= {"email", "order_id"}


def test_several_errors_are_reported_laravel_style(api: Api) -> None:
    response = api.track({"amount": "12,50"})
    body = response.json()
    assert response.status_code == 422
    assert set(body["errors"]) == {"event_name", "email", "amount"}
    assert body["message"] == "The event_name field is required. (and 2 more errors)"


@pytest.mark.parametrize(
    ("data", "content_type"),
    [("{not json", "application/json"), ("[1, 2]", "application/json"), ('{"a": 1}', "text/plain")],
    ids=["malformed", "not-an-object", "not-json-content-type"],
)
def test_bad_bodies_are_rejected_with_a_message(api: Api, data: str, content_type: str) -> None:
    headers = {**api.headers, "Content-Type": content_type}
    response = api.session.post(api.url("/events/track"), data=data, headers=headers, timeout=5)
    assert response.status_code in (400, 422)
    assert response.json()["message"]
    assert api.sim.events == []


# --- de-duplication --------------------------------------------------------------------------------


def test_repeated_idempotency_key_is_accepted_but_stored_once(api: Api) -> None:
    event = _event(idempotency_key="evt-42", amount=10)
    first, second = api.track(event), api.track(event)
    assert first.status_code == second.status_code == 202
    assert first.json() == {"status": 202, "message": "Event queued for processing."}
    assert second.json() == {"status": 202, "message": "Duplicate event ignored.", "duplicate": True}
    assert api.sim.events == [event]
    assert api.sim.duplicates == 1


def test_repeated_order_id_is_a_duplicate(api: Api) -> None:
    assert api.track(_event(order_id="ORD-12345", idempotency_key="a")).status_code == 202
    response = api.track(_event(order_id="ORD-12345", idempotency_key="b", amount=5))
    assert response.status_code == 202
    assert response.json()["duplicate"] is True
    assert [e["idempotency_key"] for e in api.sim.events] == ["a"]
    assert api.sim.duplicates == 1


def test_distinct_keys_and_orders_are_all_stored_in_order(api: Api) -> None:
    for i in range(5):
        assert api.track(_event(order_id=f"ORD-{i}", idempotency_key=f"k-{i}")).status_code == 202
    assert api.track(_event()).status_code == 202  # neither key nor order: never a duplicate
    assert api.track(_event()).status_code == 202
    assert [e.get("order_id") for e in api.sim.events] == [
        "ORD-0",
        "ORD-1",
        "ORD-2",
        "ORD-3",
        "ORD-4",
        None,
        None,
    ]
    assert api.sim.duplicates == 0


def test_validation_happens_before_deduplication(api: Api) -> None:
    assert api.track(_event(idempotency_key="k")).status_code == 202
    assert "amount" in errors_of(api.track(_event(idempotency_key="k", amount="12,50")))
    assert api.sim.duplicates == 0


def test_rejected_event_does_not_reserve_its_keys(api: Api) -> None:
    errors_of(api.track(_event(idempotency_key="k", order_id="O-1", amount="x")))
    response = api.track(_event(idempotency_key="k", order_id="O-1"))
    assert response.json() == {"status": 202, "message": "Event queued for processing."}
    assert len(api.sim.events) == 1
