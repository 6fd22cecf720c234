"""Request validation of the Cometly simulator, written from the API reference.

This module deliberately does not import :mod:`cometly_provider.validation`: the provider's
client-side checks and the simulator's server-side checks are two independent readings of the same
reference, so tests can catch one drifting from the other.

Messages imitate Laravel's validator (the real service is a Laravel app): a top-level ``message``
that is the first error (plus ``" (and N more errors)"``) and an ``errors`` map of field -> list of
messages. Unlike stock Laravel, messages keep the raw field name (``event_name``, not
``event name``) so that a message always names the exact JSON key.
"""

from __future__ import annotations

import datetime as dt
import math
import re
from typing import Any

# --- Vocabulary, copied from create-event.md / create-event-export.md -----------------------------

STANDARD_TRACK_EVENTS: tuple[str, ...] = (
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
)
CUSTOM_EVENTS: tuple[str, ...] = tuple(f"custom_event_{i}" for i in range(1, 51))
TRACK_EVENT_NAMES: frozenset[str] = frozenset(STANDARD_TRACK_EVENTS + CUSTOM_EVENTS)

# The export filter lists one more standard event than /events/track accepts.
STANDARD_EXPORT_EVENTS: tuple[str, ...] = (*STANDARD_TRACK_EVENTS, "upsell_purchase")
EXPORT_EVENT_NAMES: frozenset[str] = frozenset(STANDARD_EXPORT_EVENTS + CUSTOM_EVENTS)

PAID_SOURCES: tuple[str, ...] = (
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
)
OTHER_SOURCES: tuple[str, ...] = (
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
    "ai_chat_gpt",
    "ai_perplexity",
    "ai_copilot",
    "ai_claude",
    "ai_grok",
    "ai_gemini",
    "ai_deepseek",
    "email",
    "sms",
    "referral",
    "direct",
    "shop_app",
    "substack",
    "capterra",
    "trustpilot",
    "g2",
    "yelp",
)
SOURCES: frozenset[str] = frozenset(PAID_SOURCES + OTHER_SOURCES)

QUERY_MODES: tuple[str, ...] = ("profile", "company")
ATTRIBUTION_MODELS: tuple[str, ...] = (
    "first_touch",
    "last_touch",
    "linear",
    "first_platform_touch",
    "last_platform_touch",
    "linear_paid",
    "u_shaped",
    "last_non_direct_touch",
)
MULTI_TOUCH_MODELS: frozenset[str] = frozenset({"linear", "u_shaped", "linear_paid"})
ATTRIBUTION_WINDOWS: tuple[int, ...] = (0, 1, 7, 14, 30, 60, 90)

AD_HIERARCHY_FIELDS: tuple[str, ...] = (
    "ad_id",
    "ad_name",
    "adset_id",
    "adset_name",
    "campaign_id",
    "campaign_name",
    "account_id",
    "account_name",
)
REQUESTABLE_FIELDS: tuple[str, ...] = (
    "profile_id",
    "company_id",
    "space_id",
    "event_name",
    "configured_name",
    "amount",
    "is_upsell",
    *AD_HIERARCHY_FIELDS,
    "order_id",
    "order_name",
    "event_url",
)
# Always in the file. The reference's own example requests them in `fields`, so they are accepted
# there silently; `touchpoint_id` and `source` are "not user-requestable" and are rejected.
ALWAYS_INCLUDED_FIELDS: tuple[str, ...] = ("id", "event_time_utc")
FIELDS_ACCEPTED: frozenset[str] = frozenset(REQUESTABLE_FIELDS + ALWAYS_INCLUDED_FIELDS)

EXPORT_PARAMS: tuple[str, ...] = (
    "date",
    "query_mode",
    "event_names",
    "sources",
    "attribution_model",
    "attribution_window",
    "fields",
)

_TRACK_STRING_FIELDS: tuple[str, ...] = (
    "email",
    "comet_token",
    "fingerprint",
    "ip",
    "tracking_id",
    "full_name",
    "first_name",
    "last_name",
    "phone",
    "user_agent",
    "url",
    "order_id",
    "order_name",
    "checkout_token",
    "upsell_common_id",
    "comet_source",
    "comet_network",
    "comet_campaign",
    "comet_ad_group",
    "comet_ad_id",
    "comet_keyword",
    "comet_type",
    "idempotency_key",
)
_TRACK_BOOLEAN_FIELDS: tuple[str, ...] = ("is_upsell", "do_not_capi")

_DATE_RE = re.compile(r"\d{4}-\d{2}-\d{2}")
_NUMERIC_STRING_RE = re.compile(r"[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+)?")
# Unix seconds at or beyond this (year 5138) are milliseconds sent by mistake.
_MAX_UNIX_SECONDS = 100_000_000_000


class ValidationErrors:
    """Collects Laravel-style validation errors (field -> messages), in the order found."""

    def __init__(self) -> None:
        self.errors: dict[str, list[str]] = {}

    def add(self, field: str, message: str) -> None:
        self.errors.setdefault(field, []).append(message)

    def __bool__(self) -> bool:
        return bool(self.errors)

    def body(self) -> dict[str, Any]:
        """The 422 JSON body: ``message`` (first error, Laravel's "(and N more errors)") and ``errors``."""
        messages = [m for ms in self.errors.values() for m in ms]
        message = messages[0]
        if len(messages) > 1:
            more = len(messages) - 1
            message += f" (and {more} more error{'s' if more > 1 else ''})"
        return {"message": message, "errors": self.errors}


def _present(payload: dict[str, Any], key: str) -> bool:
    """Laravel's notion of a filled value: null and blank strings count as absent."""
    value = payload.get(key)
    if value is None:
        return False
    if isinstance(value, str):
        return bool(value.strip())
    if isinstance(value, list | dict):
        return bool(value)
    return True


def is_number(value: Any) -> bool:
    """A JSON number (not a bool, not a numeric string, finite)."""
    if isinstance(value, bool):
        return False
    if isinstance(value, int):
        return True
    return isinstance(value, float) and math.isfinite(value)


def _is_iso8601(text: str) -> bool:
    try:
        dt.datetime.fromisoformat(text.strip())
    except ValueError:
        return False
    return True


def _event_time_ok(value: Any) -> bool:
    if isinstance(value, str):
        text = value.strip()
        if text.isdecimal():
            return int(text) < _MAX_UNIX_SECONDS
        return bool(text) and _is_iso8601(text)
    if is_number(value):
        return 0 <= float(value) < _MAX_UNIX_SECONDS
    return False


# --- POST /events/track ---------------------------------------------------------------------------


def validate_track(payload: dict[str, Any]) -> ValidationErrors:
    """Check one /events/track body against create-event.md; unknown keys are ignored (Laravel)."""
    errors = ValidationErrors()

    if not _present(payload, "event_name"):
        errors.add("event_name", "The event_name field is required.")
    elif not isinstance(payload["event_name"], str):
        errors.add("event_name", "The event_name field must be a string.")
    elif payload["event_name"] not in TRACK_EVENT_NAMES:
        errors.add(
            "event_name",
            "The selected event_name is invalid. Use a standard event or custom_event_1 .. custom_event_50.",
        )

    has_fingerprint = _present(payload, "fingerprint")
    has_ip = _present(payload, "ip")
    if has_fingerprint and not has_ip:
        errors.add("ip", "The ip field is required when fingerprint is present (send fingerprint and ip).")
    elif has_ip and not has_fingerprint:
        errors.add(
            "fingerprint", "The fingerprint field is required when ip is present (send fingerprint and ip)."
        )
    elif not (_present(payload, "email") or _present(payload, "comet_token") or has_fingerprint):
        errors.add(
            "email",
            "The email field is required when none of comet_token / fingerprint / ip are present "
            "(identify the user by email, comet_token, or fingerprint and ip together).",
        )

    for key in _TRACK_STRING_FIELDS:
        value = payload.get(key)
        if value is not None and not isinstance(value, str):
            errors.add(key, f"The {key} field must be a string.")

    for key in _TRACK_BOOLEAN_FIELDS:
        value = payload.get(key)
        if value is not None and not isinstance(value, bool):
            errors.add(key, f"The {key} field must be true or false.")

    amount = payload.get("amount")
    if amount is not None and not is_number(amount):
        errors.add("amount", "The amount field must be a number.")

    event_time = payload.get("event_time")
    if event_time is not None and not _event_time_ok(event_time):
        errors.add(
            "event_time",
            "The event_time field must be an ISO 8601 date-time or a Unix timestamp in seconds.",
        )

    for i in range(1, 31):
        key = f"profile_field_{i}"
        value = payload.get(key)
        if value is None:
            continue
        if i <= 15:
            if not isinstance(value, str):
                errors.add(key, f"The {key} field must be a string.")
        elif i <= 25:
            numeric_text = isinstance(value, str) and _NUMERIC_STRING_RE.fullmatch(value.strip())
            if not (is_number(value) or numeric_text):
                errors.add(key, f"The {key} field must be a number.")
        elif not (isinstance(value, str) and value.strip() and _is_iso8601(value)):
            errors.add(key, f"The {key} field must be a valid date.")
    return errors


# --- POST /events/exports -------------------------------------------------------------------------


def _check_list(
    errors: ValidationErrors, payload: dict[str, Any], key: str, allowed: frozenset[str], maximum: int
) -> list[str] | None:
    """Laravel ``array|min:1|max:N|distinct`` plus ``key.*`` ``in:...``; returns the list if valid."""
    if key not in payload or payload[key] is None:
        return None
    value = payload[key]
    if not isinstance(value, list):
        errors.add(key, f"The {key} field must be an array.")
        return None
    ok = True
    if len(value) < 1:
        errors.add(key, f"The {key} field must have at least 1 items.")
        ok = False
    elif len(value) > maximum:
        errors.add(key, f"The {key} field must not have more than {maximum} items.")
        ok = False
    seen: set[str] = set()
    for index, item in enumerate(value):
        item_key = f"{key}.{index}"
        if not isinstance(item, str):
            errors.add(item_key, f"The {item_key} field must be a string.")
            ok = False
        elif item not in allowed:
            errors.add(item_key, f"The selected {item_key} is invalid ({item!r}).")
            ok = False
        elif item in seen:
            errors.add(item_key, f"The {item_key} field has a duplicate value ({item!r}).")
            ok = False
        else:
            seen.add(item)
    return list(value) if ok else None


def validate_export(payload: dict[str, Any]) -> ValidationErrors:
    """Check one /events/exports body against create-event-export.md.

    Unlike /events/track, unknown keys are rejected (``prohibited``): an export covers exactly one
    day, so a stray ``end_date`` / ``date_from`` must not be silently ignored.
    """
    errors = ValidationErrors()

    date = payload.get("date")
    if not _present(payload, "date"):
        errors.add("date", "The date field is required.")
    elif not isinstance(date, str) or not _DATE_RE.fullmatch(date):
        errors.add("date", "The date field must match the format Y-m-d (one day, e.g. 2024-01-15).")
    else:
        try:
            dt.date.fromisoformat(date)
        except ValueError:
            errors.add("date", "The date field must be a valid date.")

    for key in payload:
        if key not in EXPORT_PARAMS:
            hint = (
                " An export covers exactly one day: send only date."
                if "date" in key
                or key
                in (
                    "from",
                    "to",
                    "start",
                    "end",
                    "range",
                )
                else ""
            )
            errors.add(key, f"The {key} field is prohibited.{hint}")

    query_mode = payload.get("query_mode")
    if query_mode is not None and query_mode not in QUERY_MODES:
        errors.add("query_mode", "The selected query_mode is invalid (profile or company).")

    _check_list(errors, payload, "event_names", EXPORT_EVENT_NAMES, 10)
    sources_given = payload.get("sources") is not None
    _check_list(errors, payload, "sources", SOURCES, 15)

    model = payload.get("attribution_model")
    if model is None:
        if sources_given:
            errors.add(
                "attribution_model", "The attribution_model field is required when sources is present."
            )
    elif model not in ATTRIBUTION_MODELS:
        errors.add("attribution_model", "The selected attribution_model is invalid.")

    window = payload.get("attribution_window")
    if window is None:
        if sources_given:
            errors.add(
                "attribution_window", "The attribution_window field is required when sources is present."
            )
    elif isinstance(window, bool) or not isinstance(window, int):
        errors.add("attribution_window", "The attribution_window field must be an integer.")
    elif window not in ATTRIBUTION_WINDOWS:
        errors.add(
            "attribution_window", "The selected attribution_window is invalid (0, 1, 7, 14, 30, 60, 90)."
        )

    fields = _check_list(errors, payload, "fields", FIELDS_ACCEPTED, 20)
    if fields and not sources_given:
        for name in fields:
            if name in AD_HIERARCHY_FIELDS:
                errors.add("fields", f"The {name} field requires sources to be provided.")
    return errors


# --- Contacts exports (README.md "Contacts exports") -----------------------------------------------

CONTACT_EXPORT_PARAMS: tuple[str, ...] = (
    "start_date",
    "end_date",
    "include_comet_tokens",
    "include_all_emails",
)
_MOMENT_RE = re.compile(r"\d{4}-\d{2}-\d{2} \d{2}:\d{2}:\d{2}")


def validate_contact_export(payload: dict[str, Any]) -> ValidationErrors:
    """Check one /contacts/exports body: two moments ``Y-m-d H:i:s``, end after start, 1/0 flags."""
    errors = ValidationErrors()
    moments: dict[str, dt.datetime] = {}
    for key in ("start_date", "end_date"):
        value = payload.get(key)
        if not _present(payload, key):
            errors.add(key, f"The {key} field is required.")
        elif not isinstance(value, str) or not _MOMENT_RE.fullmatch(value):
            errors.add(key, f"The {key} field must match the format Y-m-d H:i:s.")
        else:
            try:
                moments[key] = dt.datetime.strptime(value, "%Y-%m-%d %H:%M:%S")
            except ValueError:
                errors.add(key, f"The {key} field must be a valid date.")
    if len(moments) == 2 and moments["end_date"] <= moments["start_date"]:
        errors.add("end_date", "The end_date field must be a date after start_date.")
    for key in ("include_comet_tokens", "include_all_emails"):
        value = payload.get(key)
        if value is not None and (isinstance(value, bool) or value not in (0, 1)):
            errors.add(key, f"The {key} field must be 1 or 0.")
    for key in payload:
        if key not in CONTACT_EXPORT_PARAMS:
            errors.add(key, f"The {key} field is prohibited.")
    return errors
