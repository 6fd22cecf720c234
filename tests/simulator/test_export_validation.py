"""POST /events/exports: every rule of create-event-export.md.

Values are copied from the reference, not from the simulator's constants. Rate limiting is off
here: these tests create many exports (the real limit is 5 a minute).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pytest

from tests.simulator.conftest import errors_of

if TYPE_CHECKING:
    from tests.simulator.conftest import Api

pytestmark = pytest.mark.cometly_simulator(rate_limiting_enabled=False, export_rows=5)

# create-event-export.md, event_names "Values".
EXPORT_EVENTS = [
    "add_payment_info",
    "add_to_cart",
    "complete_registration",
    "contact",
    "initiate_checkout",
    "lead_generated",
    "purchase",
    "schedule",
    "sign_up",
    "start_trial",
    "submit_application",
    "subscribe",
    "upsell_purchase",
    "view_content",
    "webinar_registration",
]
# create-event-export.md, "Available sources".
PAID = [
    "facebook_ads",
    "google_ads",
    "linkedin_ads",
    "tiktok_ads",
    "youtube_ads",
    "instagram_ads",
    "bing_ads",
    "yahoo_ads",
    "pinterest_ads",
    "reddit_ads",
    "snapchat_ads",
    "telegram_ads",
    "twitch_ads",
    "x_ads",
    "quora_ads",
    "duckduckgo_ads",
]
ORGANIC = [
    "facebook_organic",
    "google_organic",
    "linkedin_organic",
    "tiktok_organic",
    "youtube_organic",
    "instagram_organic",
    "bing_organic",
    "yahoo_organic",
    "pinterest_organic",
    "reddit_organic",
    "snapchat_organic",
    "telegram_organic",
    "twitch_organic",
    "x_organic",
    "quora_organic",
    "duckduckgo_organic",
    "messenger_organic",
    "brave_organic",
    "threads_organic",
]
AI = ["ai_chat_gpt", "ai_perplexity", "ai_copilot", "ai_claude", "ai_grok", "ai_gemini", "ai_deepseek"]
OTHER = ["email", "sms", "referral", "direct", "shop_app", "substack", "capterra", "trustpilot", "g2", "yelp"]
ALL_SOURCES = PAID + ORGANIC + AI + OTHER
MODELS = [
    "first_touch",
    "last_touch",
    "linear",
    "first_platform_touch",
    "last_platform_touch",
    "linear_paid",
    "u_shaped",
    "last_non_direct_touch",
]
WINDOWS = [0, 1, 7, 14, 30, 60, 90]
AD_FIELDS = [
    "ad_id",
    "ad_name",
    "adset_id",
    "adset_name",
    "campaign_id",
    "campaign_name",
    "account_id",
    "account_name",
]
FIELDS = [
    "profile_id",
    "company_id",
    "space_id",
    "event_name",
    "configured_name",
    "amount",
    "is_upsell",
    *AD_FIELDS,
    "order_id",
    "order_name",
    "event_url",
]
ATTRIBUTION = {
    "sources": ["facebook_ads", "google_ads"],
    "attribution_model": "last_touch",
    "attribution_window": 30,
}


def _accepted(api: Api, body: dict[str, Any]) -> None:
    response = api.create_export(body)
    assert response.status_code == 202, response.text
    payload = response.json()
    assert set(payload) == {"export_id", "status"}
    assert isinstance(payload["export_id"], int)
    assert payload["status"] == "queued"


# --- the reference's own examples ----------------------------------------------------------------


@pytest.mark.parametrize(
    "body",
    [
        {"date": "2024-01-15"},
        {
            "date": "2024-01-15",
            "query_mode": "profile",
            "event_names": ["purchase", "sign_up"],
            "fields": ["id", "event_name", "amount", "profile_id", "event_time_utc"],
        },
        {
            "date": "2024-01-15",
            "sources": ["facebook_ads", "google_ads"],
            "attribution_model": "last_touch",
            "attribution_window": 30,
            "fields": ["id", "event_name", "amount", "ad_id", "event_time_utc"],
        },
    ],
    ids=["minimal", "filtered", "attributed"],
)
def test_reference_examples_are_accepted(api: Api, body: dict[str, Any]) -> None:
    _accepted(api, body)


def test_export_ids_increase_from_one(api: Api) -> None:
    ids = [api.export_id({"date": "2024-01-15"}) for _ in range(3)]
    assert ids == [1, 2, 3]


@pytest.mark.cometly_simulator(export_id_start=500, rate_limiting_enabled=False)
def test_export_id_start_is_configurable(api: Api) -> None:
    assert api.export_id({"date": "2024-01-15"}) == 500


# --- date --------------------------------------------------------------------------------------


@pytest.mark.parametrize("date", ["2024-01-15", "2024-02-29", "1999-12-31", "2030-06-01"])
def test_valid_days_are_accepted(api: Api, date: str) -> None:
    _accepted(api, {"date": date})


@pytest.mark.parametrize(
    "body",
    [{}, {"date": ""}, {"date": None}, {"query_mode": "profile"}],
    ids=["empty", "blank", "null", "other-keys-only"],
)
def test_date_is_required(api: Api, body: dict[str, Any]) -> None:
    assert errors_of(api.create_export(body))["date"] == ["The date field is required."]


@pytest.mark.parametrize(
    "date",
    [
        "2024/01/15",
        "15-01-2024",
        "2024-1-5",
        "20240115",
        20240115,
        "2024-01-15T00:00:00Z",
        "2024-01-15 00:00:00",
        "2024-01-15/2024-01-16",
        "2024-01-15..2024-01-16",
        ["2024-01-15", "2024-01-16"],
        "2023-02-29",
        "2024-02-30",
        "2024-13-01",
        "2024-00-10",
    ],
)
def test_date_must_be_one_real_day_as_yyyy_mm_dd(api: Api, date: Any) -> None:
    assert "date" in errors_of(api.create_export({"date": date}))


@pytest.mark.parametrize("extra", ["end_date", "date_from", "date_to", "start_date", "to"])
def test_date_range_keys_are_rejected(api: Api, extra: str) -> None:
    errors = errors_of(api.create_export({"date": "2024-01-15", extra: "2024-01-16"}))
    assert extra in errors


# --- query_mode ----------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["profile", "company"])
def test_query_modes_are_accepted(api: Api, mode: str) -> None:
    _accepted(api, {"date": "2024-01-15", "query_mode": mode})


@pytest.mark.parametrize("mode", ["contact", "Profile", "", 1])
def test_other_query_modes_are_rejected(api: Api, mode: Any) -> None:
    assert "query_mode" in errors_of(api.create_export({"date": "2024-01-15", "query_mode": mode}))


# --- event_names -------------------------------------------------------------------------------


def test_every_listed_export_event_name_is_accepted(api: Api) -> None:
    for start in range(0, len(EXPORT_EVENTS), 10):
        _accepted(api, {"date": "2024-01-15", "event_names": EXPORT_EVENTS[start : start + 10]})
    _accepted(
        api, {"date": "2024-01-15", "event_names": ["custom_event_1", "custom_event_50", "upsell_purchase"]}
    )


def test_event_names_limits(api: Api) -> None:
    _accepted(api, {"date": "2024-01-15", "event_names": EXPORT_EVENTS[:10]})
    _accepted(api, {"date": "2024-01-15", "event_names": ["purchase"]})
    assert "event_names" in errors_of(api.create_export({"date": "2024-01-15", "event_names": []}))
    assert "event_names" in errors_of(
        api.create_export({"date": "2024-01-15", "event_names": EXPORT_EVENTS[:11]})
    )


def test_duplicate_event_names_are_rejected(api: Api) -> None:
    errors = errors_of(
        api.create_export({"date": "2024-01-15", "event_names": ["purchase", "sign_up", "purchase"]})
    )
    assert any(key.startswith("event_names") for key in errors)


@pytest.mark.parametrize(
    "names",
    [["Purchase"], ["custom_event_0"], ["custom_event_51"], ["page_view"], "purchase", [1], [None]],
)
def test_invalid_event_names_are_rejected(api: Api, names: Any) -> None:
    errors = errors_of(api.create_export({"date": "2024-01-15", "event_names": names}))
    assert any(key.startswith("event_names") for key in errors)


# --- sources and attribution ---------------------------------------------------------------------


def test_every_listed_source_is_accepted(api: Api) -> None:
    assert len(ALL_SOURCES) == 52
    for start in range(0, len(ALL_SOURCES), 15):
        _accepted(api, {"date": "2024-01-15", **ATTRIBUTION, "sources": ALL_SOURCES[start : start + 15]})


def test_sources_limits(api: Api) -> None:
    _accepted(api, {"date": "2024-01-15", **ATTRIBUTION, "sources": ALL_SOURCES[:15]})
    for sources in ([], ALL_SOURCES[:16]):
        errors = errors_of(api.create_export({"date": "2024-01-15", **ATTRIBUTION, "sources": sources}))
        assert "sources" in errors


@pytest.mark.parametrize(
    "sources",
    [["facebook_ads", "facebook_ads"], ["facebook"], ["Facebook_Ads"], ["organic"], "google_ads", [3]],
)
def test_invalid_or_duplicate_sources_are_rejected(api: Api, sources: Any) -> None:
    errors = errors_of(api.create_export({"date": "2024-01-15", **ATTRIBUTION, "sources": sources}))
    assert any(key.startswith("sources") for key in errors)


@pytest.mark.parametrize("model", MODELS)
def test_every_attribution_model_is_accepted(api: Api, model: str) -> None:
    _accepted(api, {"date": "2024-01-15", **ATTRIBUTION, "attribution_model": model})


@pytest.mark.parametrize("window", WINDOWS)
def test_every_attribution_window_is_accepted(api: Api, window: int) -> None:
    _accepted(api, {"date": "2024-01-15", **ATTRIBUTION, "attribution_window": window})


@pytest.mark.parametrize("missing", ["attribution_model", "attribution_window"])
def test_model_and_window_are_required_with_sources(api: Api, missing: str) -> None:
    body = {"date": "2024-01-15", **ATTRIBUTION}
    del body[missing]
    errors = errors_of(api.create_export(body))
    assert missing in errors
    assert "sources" in errors[missing][0]


def test_model_and_window_missing_together_are_both_reported(api: Api) -> None:
    errors = errors_of(api.create_export({"date": "2024-01-15", "sources": ["google_ads"]}))
    assert {"attribution_model", "attribution_window"} <= set(errors)


@pytest.mark.parametrize("model", ["data_driven", "Last_Touch", "", 1])
def test_invalid_attribution_model_is_rejected(api: Api, model: Any) -> None:
    body = {"date": "2024-01-15", **ATTRIBUTION, "attribution_model": model}
    assert "attribution_model" in errors_of(api.create_export(body))


@pytest.mark.parametrize("window", [3, 365, -1, "30", 30.0, 30.5, True, None])
def test_invalid_attribution_window_is_rejected(api: Api, window: Any) -> None:
    body = {"date": "2024-01-15", **ATTRIBUTION, "attribution_window": window}
    assert "attribution_window" in errors_of(api.create_export(body))


# --- fields ----------------------------------------------------------------------------------------


def test_every_requestable_field_is_accepted(api: Api) -> None:
    assert len(FIELDS) == 18
    _accepted(api, {"date": "2024-01-15", **ATTRIBUTION, "fields": FIELDS})
    # the always-included id / event_time_utc may be listed too (the reference's examples do)
    _accepted(api, {"date": "2024-01-15", **ATTRIBUTION, "fields": ["id", *FIELDS, "event_time_utc"]})


def test_fields_limits(api: Api) -> None:
    _accepted(api, {"date": "2024-01-15", "fields": ["amount"]})
    assert "fields" in errors_of(api.create_export({"date": "2024-01-15", "fields": []}))
    too_many = ["id", *FIELDS, "event_time_utc", "amount"]  # 21 items
    errors = errors_of(api.create_export({"date": "2024-01-15", **ATTRIBUTION, "fields": too_many}))
    assert any("more than 20" in message for message in errors["fields"])


def test_duplicate_fields_are_rejected(api: Api) -> None:
    errors = errors_of(
        api.create_export({"date": "2024-01-15", "fields": ["amount", "event_name", "amount"]})
    )
    assert any(key.startswith("fields") for key in errors)


@pytest.mark.parametrize("field", ["email", "touchpoint_id", "source", "Amount", "event_time", "", 5])
def test_unknown_or_not_requestable_fields_are_rejected(api: Api, field: Any) -> None:
    errors = errors_of(api.create_export({"date": "2024-01-15", **ATTRIBUTION, "fields": ["amount", field]}))
    assert any(key.startswith("fields") for key in errors)


@pytest.mark.parametrize("field", AD_FIELDS)
def test_ad_hierarchy_fields_require_sources(api: Api, field: str) -> None:
    errors = errors_of(api.create_export({"date": "2024-01-15", "fields": ["amount", field]}))
    assert any(field in message and "sources" in message for message in errors["fields"])
    _accepted(api, {"date": "2024-01-15", **ATTRIBUTION, "fields": ["amount", field]})


def test_rejected_exports_are_not_created(api: Api) -> None:
    errors_of(api.create_export({"date": "2024-02-30"}))
    assert api.sim.exports == {}
    assert api.export_id({"date": "2024-01-15"}) == 1
