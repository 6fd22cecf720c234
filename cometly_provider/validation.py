"""The Cometly API's vocabulary, and client-side validation of every request body.

This is the one home of the rules in the API reference (``create-event.md``,
``create-event-export.md`` and README.md "Contacts exports"). Operators and the hook validate here
before any request is sent, so a bad payload fails with a message naming the field, the value and
what is allowed, and costs no rate-limit budget. The simulator deliberately keeps its own
implementation of the same rules so that the two can be checked against each other (see
``tests/reliability``).
"""

from __future__ import annotations

import datetime as dt
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from cometly_provider.exceptions import CometlyInputError

# --- Events -------------------------------------------------------------------------------------

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

# The export filter accepts one more standard name than /events/track does.
STANDARD_EXPORT_EVENTS: tuple[str, ...] = (
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
)
EXPORT_EVENT_NAMES: frozenset[str] = frozenset(STANDARD_EXPORT_EVENTS + CUSTOM_EVENTS)

_EVENT_NAMES_HELP = "one of the standard events ({}) or custom_event_1 .. custom_event_50"

# --- Track payload fields -------------------------------------------------------------------------

STRING_TRACK_FIELDS: frozenset[str] = frozenset(
    {
        "event_name",
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
    }
)
BOOLEAN_TRACK_FIELDS: frozenset[str] = frozenset({"is_upsell", "do_not_capi"})
PROFILE_TEXT_FIELDS: frozenset[str] = frozenset(f"profile_field_{i}" for i in range(1, 16))
PROFILE_NUMBER_FIELDS: frozenset[str] = frozenset(f"profile_field_{i}" for i in range(16, 26))
PROFILE_DATE_FIELDS: frozenset[str] = frozenset(f"profile_field_{i}" for i in range(26, 31))
TRACK_FIELDS: frozenset[str] = (
    STRING_TRACK_FIELDS
    | BOOLEAN_TRACK_FIELDS
    | PROFILE_TEXT_FIELDS
    | PROFILE_NUMBER_FIELDS
    | PROFILE_DATE_FIELDS
    | {"amount", "event_time"}
)

# Unix seconds at or beyond this are almost certainly milliseconds (year 5138), a classic mistake.
_MAX_UNIX_SECONDS = 1e11
_NUMERIC_STRING = re.compile(r"^[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+)?$")

# --- Export parameters ----------------------------------------------------------------------------

QUERY_MODES: tuple[str, ...] = ("profile", "company")
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
ORGANIC_SOURCES: tuple[str, ...] = (
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
)
AI_SOURCES: tuple[str, ...] = (
    "ai_chat_gpt",
    "ai_perplexity",
    "ai_copilot",
    "ai_claude",
    "ai_grok",
    "ai_gemini",
    "ai_deepseek",
)
OTHER_SOURCES: tuple[str, ...] = (
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
SOURCES: frozenset[str] = frozenset(PAID_SOURCES + ORGANIC_SOURCES + AI_SOURCES + OTHER_SOURCES)

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
# Models that can yield several rows (one per touchpoint) for one event.
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
EXPORT_FIELDS: tuple[str, ...] = (
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
# Always in the file; the reference's own examples list them in `fields`, so they are accepted there.
AUTO_EXPORT_FIELDS: tuple[str, ...] = ("id", "event_time_utc")

EXPORT_PARAMS: tuple[str, ...] = (
    "date",
    "query_mode",
    "event_names",
    "sources",
    "attribution_model",
    "attribution_window",
    "fields",
)

_LIST_LIMITS: dict[str, int] = {"event_names": 10, "sources": 15, "fields": 20}


@dataclass(frozen=True)
class Problem:
    """One reason a payload is invalid."""

    field: str
    message: str

    def __str__(self) -> str:
        return self.message


def _show(value: Any, limit: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _is_number(value: Any) -> bool:
    if isinstance(value, bool):
        return False
    if isinstance(value, int | Decimal):
        return True
    return isinstance(value, float) and math.isfinite(value)


def _is_blank(value: Any) -> bool:
    return value is None or (isinstance(value, str) and not value.strip())


def _parse_iso_datetime(value: str) -> dt.datetime | None:
    try:
        return dt.datetime.fromisoformat(value)
    except ValueError:
        return None


# --- Track ----------------------------------------------------------------------------------------


def normalize_track_event(payload: Mapping[str, Any]) -> dict[str, Any]:
    """Return a JSON-ready copy: datetimes become ISO 8601, dates ISO dates, Decimals floats.

    ``None`` values are dropped (an absent optional field), so templated kwargs that rendered to
    nothing do not reach the API as ``null``.
    """
    out: dict[str, Any] = {}
    for key, value in payload.items():
        if value is None:
            continue
        if isinstance(value, dt.datetime):
            if value.tzinfo is None:
                value = value.replace(tzinfo=dt.UTC)
            value = value.isoformat().replace("+00:00", "Z")
        elif isinstance(value, dt.date):
            value = value.isoformat()
        elif isinstance(value, Decimal):
            value = float(value)
        out[str(key)] = value
    return out


def track_event_problems(payload: Any, *, allow_unknown_fields: bool = False) -> list[Problem]:
    """Every reason ``payload`` would be rejected by POST /events/track (empty list if none)."""
    if not isinstance(payload, Mapping):
        return [Problem("event", f"an event must be a JSON object (dict), got {type(payload).__name__}")]
    problems: list[Problem] = []

    event_name = payload.get("event_name")
    if _is_blank(event_name):
        problems.append(
            Problem(
                "event_name",
                "event_name is required: use " + _EVENT_NAMES_HELP.format(", ".join(STANDARD_TRACK_EVENTS)),
            )
        )
    elif not isinstance(event_name, str) or event_name not in TRACK_EVENT_NAMES:
        problems.append(
            Problem(
                "event_name",
                f"event_name={_show(event_name)} is not allowed: use "
                + _EVENT_NAMES_HELP.format(", ".join(STANDARD_TRACK_EVENTS)),
            )
        )

    has_fingerprint = not _is_blank(payload.get("fingerprint"))
    has_ip = not _is_blank(payload.get("ip"))
    if has_fingerprint != has_ip:
        present, missing = ("fingerprint", "ip") if has_fingerprint else ("ip", "fingerprint")
        problems.append(
            Problem(missing, f"{missing} is required when {present} is given (send both or neither)")
        )
    if not (
        not _is_blank(payload.get("email"))
        or not _is_blank(payload.get("comet_token"))
        or (has_fingerprint and has_ip)
    ):
        problems.append(
            Problem(
                "email",
                "an identification method is required: email, comet_token, or fingerprint and ip together",
            )
        )

    for key, value in payload.items():
        if value is None:
            continue
        if key in STRING_TRACK_FIELDS:
            if not isinstance(value, str):
                problems.append(Problem(key, f"{key}={_show(value)} must be a string"))
        elif key in BOOLEAN_TRACK_FIELDS:
            if not isinstance(value, bool):
                problems.append(Problem(key, f"{key}={_show(value)} must be a boolean (true or false)"))
        elif key == "amount":
            if not _is_number(value):
                problems.append(Problem(key, f"amount={_show(value)} must be a number, e.g. 12.5"))
        elif key == "event_time":
            problem = _event_time_problem(value)
            if problem:
                problems.append(problem)
        elif key in PROFILE_TEXT_FIELDS:
            if not isinstance(value, str):
                problems.append(Problem(key, f"{key}={_show(value)} must be text (profile_field_1..15)"))
        elif key in PROFILE_NUMBER_FIELDS:
            if not (_is_number(value) or (isinstance(value, str) and _NUMERIC_STRING.match(value.strip()))):
                problems.append(Problem(key, f"{key}={_show(value)} must be a number (profile_field_16..25)"))
        elif key in PROFILE_DATE_FIELDS:
            if not (isinstance(value, str) and _parse_iso_datetime(value.strip())):
                problems.append(
                    Problem(key, f"{key}={_show(value)} must be an ISO 8601 date (profile_field_26..30)")
                )
        elif not allow_unknown_fields:
            problems.append(
                Problem(
                    str(key),
                    f"{key!s} is not a documented field of /events/track; allowed: "
                    "the reference's fields and profile_field_1..30",
                )
            )
    return problems


def _event_time_problem(value: Any) -> Problem | None:
    allowed = "an ISO 8601 string (2024-01-15T10:30:00Z) or unix seconds"
    if isinstance(value, str):
        text = value.strip()
        if text.isdecimal():
            seconds: float = int(text)
        elif _parse_iso_datetime(text):
            return None
        else:
            return Problem("event_time", f"event_time={_show(value)} is invalid: use {allowed}")
    elif _is_number(value):
        seconds = float(value)
    else:
        return Problem("event_time", f"event_time={_show(value)} is invalid: use {allowed}")
    if seconds < 0 or seconds >= _MAX_UNIX_SECONDS:
        return Problem(
            "event_time", f"event_time={_show(value)} is out of range: use {allowed} (not milliseconds)"
        )
    return None


def validate_track_event(payload: Any, *, allow_unknown_fields: bool = False) -> dict[str, Any]:
    """Normalize and validate one track payload; raise :class:`CometlyInputError` listing every problem."""
    if isinstance(payload, Mapping):
        payload = normalize_track_event(payload)
    problems = track_event_problems(payload, allow_unknown_fields=allow_unknown_fields)
    if problems:
        raise CometlyInputError(
            "Invalid Cometly event: " + "; ".join(p.message for p in problems), field=problems[0].field
        )
    return dict(payload)


# --- Exports --------------------------------------------------------------------------------------


def normalize_export_date(value: Any) -> str:
    """Accept ``YYYY-MM-DD`` strings, dates and datetimes; return ``YYYY-MM-DD``."""
    if isinstance(value, dt.datetime):
        return value.date().isoformat()
    if isinstance(value, dt.date):
        return value.isoformat()
    if isinstance(value, str) and re.fullmatch(r"\d{4}-\d{2}-\d{2}", value.strip()):
        try:
            return dt.date.fromisoformat(value.strip()).isoformat()
        except ValueError:
            pass
    raise CometlyInputError(
        f"date={_show(value)} is invalid: use one day as YYYY-MM-DD (e.g. 2024-01-15); "
        "an export covers exactly one day",
        field="date",
    )


def _string_list(
    name: str, value: Any, allowed: frozenset[str] | tuple[str, ...], help_text: str
) -> list[str]:
    if isinstance(value, str) or not isinstance(value, Sequence):
        raise CometlyInputError(f"{name}={_show(value)} must be a list of strings", field=name)
    items = list(value)
    limit = _LIST_LIMITS[name]
    if not 1 <= len(items) <= limit:
        raise CometlyInputError(
            f"{name} has {len(items)} values; between 1 and {limit} are allowed", field=name
        )
    seen: set[str] = set()
    for item in items:
        if not isinstance(item, str) or item not in allowed:
            raise CometlyInputError(
                f"{name} value {_show(item)} is not allowed; allowed: {help_text}", field=name
            )
        if item in seen:
            raise CometlyInputError(
                f"{name} value {item!r} is repeated; duplicates are not allowed", field=name
            )
        seen.add(item)
    return items


def validate_export_params(params: Mapping[str, Any]) -> dict[str, Any]:
    """Validate Create Event Export parameters; return the JSON body to send (``None`` values dropped)."""
    unknown = sorted(set(params) - set(EXPORT_PARAMS))
    if unknown:
        raise CometlyInputError(
            f"unknown export parameter(s) {', '.join(unknown)}; allowed: {', '.join(EXPORT_PARAMS)} "
            "(an export covers exactly one `date`)",
            field=unknown[0],
        )
    if params.get("date") is None:
        raise CometlyInputError("date is required (YYYY-MM-DD, one day per export)", field="date")
    body: dict[str, Any] = {"date": normalize_export_date(params["date"])}

    query_mode = params.get("query_mode")
    if query_mode is not None:
        if query_mode not in QUERY_MODES:
            raise CometlyInputError(
                f"query_mode={_show(query_mode)} is not allowed; allowed: {', '.join(QUERY_MODES)}",
                field="query_mode",
            )
        body["query_mode"] = query_mode

    if params.get("event_names") is not None:
        body["event_names"] = _string_list(
            "event_names",
            params["event_names"],
            EXPORT_EVENT_NAMES,
            _EVENT_NAMES_HELP.format(", ".join(STANDARD_EXPORT_EVENTS)),
        )

    sources = params.get("sources")
    model = params.get("attribution_model")
    window = params.get("attribution_window")
    if sources is not None:
        body["sources"] = _string_list(
            "sources", sources, SOURCES, "the documented source names, e.g. facebook_ads"
        )
        if model is None:
            raise CometlyInputError(
                "attribution_model is required when sources is given; allowed: "
                + ", ".join(ATTRIBUTION_MODELS),
                field="attribution_model",
            )
        if window is None:
            raise CometlyInputError(
                "attribution_window is required when sources is given; allowed: "
                f"{', '.join(map(str, ATTRIBUTION_WINDOWS))} (days; 0 = LTV)",
                field="attribution_window",
            )
    if model is not None:
        if model not in ATTRIBUTION_MODELS:
            raise CometlyInputError(
                f"attribution_model={_show(model)} is not allowed; allowed: {', '.join(ATTRIBUTION_MODELS)}",
                field="attribution_model",
            )
        body["attribution_model"] = model
    if window is not None:
        if isinstance(window, bool) or not isinstance(window, int) or window not in ATTRIBUTION_WINDOWS:
            raise CometlyInputError(
                f"attribution_window={_show(window)} is not allowed; allowed: "
                f"{', '.join(map(str, ATTRIBUTION_WINDOWS))} (days; 0 = LTV)",
                field="attribution_window",
            )
        body["attribution_window"] = window

    if params.get("fields") is not None:
        fields = _string_list(
            "fields", params["fields"], EXPORT_FIELDS + AUTO_EXPORT_FIELDS, ", ".join(EXPORT_FIELDS)
        )
        if sources is None:
            needs_sources = [f for f in fields if f in AD_HIERARCHY_FIELDS]
            if needs_sources:
                raise CometlyInputError(
                    f"{needs_sources[0]} requires sources "
                    f"(ad hierarchy fields: {', '.join(AD_HIERARCHY_FIELDS)})",
                    field="fields",
                )
        body["fields"] = fields
    return body


# --- Contacts exports -----------------------------------------------------------------------------

#: Parameters of ``POST /contacts/exports`` (README.md "Contacts exports").
CONTACT_EXPORT_PARAMS: tuple[str, ...] = (
    "start_date",
    "end_date",
    "include_comet_tokens",
    "include_all_emails",
)
CONTACT_EXPORT_TIME_FORMAT = "%Y-%m-%d %H:%M:%S"
_CONTACT_TIME_HELP = "'YYYY-MM-DD HH:MM:SS' in the Space's timezone (a date means that day's start)"


def contact_export_moment(name: str, value: Any) -> dt.datetime:
    """A contacts-export bound as a naive datetime in the Space's timezone.

    Accepts ``YYYY-MM-DD HH:MM:SS`` (or with ``T``), a ``YYYY-MM-DD`` date (its first second), a
    naive ``datetime`` or a ``date``. An aware datetime is refused: which Space timezone it should be
    converted to is known to the operator (``CreateContactExportOperator`` converts it), not here.
    """
    if isinstance(value, dt.datetime):
        if value.tzinfo is not None:
            raise CometlyInputError(
                f"{name}={_show(value)} is invalid: expected a naive datetime in the Space's timezone; "
                "convert it first (CreateContactExportOperator does that from the connection's timezone)",
                field=name,
            )
        return value.replace(microsecond=0)
    if isinstance(value, dt.date):
        return dt.datetime.combine(value, dt.time())
    if isinstance(value, str):
        text = value.strip()
        if re.fullmatch(r"\d{4}-\d{2}-\d{2}", text):
            text += " 00:00:00"
        if re.fullmatch(r"\d{4}-\d{2}-\d{2}[ T]\d{2}:\d{2}:\d{2}", text):
            try:
                return dt.datetime.fromisoformat(text.replace("T", " "))
            except ValueError:
                pass
    raise CometlyInputError(f"{name}={_show(value)} is invalid: expected {_CONTACT_TIME_HELP}", field=name)


def _flag(name: str, value: Any) -> int:
    """The API's 1/0 flags; True/False and "1"/"0" (a rendered template) are accepted."""
    if isinstance(value, bool):
        return int(value)
    if value in (0, 1) or (isinstance(value, str) and value.strip() in ("0", "1")):
        return int(value)
    raise CometlyInputError(f"{name}={_show(value)} is invalid: expected True/False (or 1/0)", field=name)


def validate_contact_export_params(params: Mapping[str, Any]) -> dict[str, Any]:
    """Validate Create Contacts Export parameters; return the JSON body (``None`` values dropped)."""
    unknown = sorted(set(params) - set(CONTACT_EXPORT_PARAMS))
    if unknown:
        raise CometlyInputError(
            f"unknown contacts export parameter(s) {', '.join(unknown)}; allowed: "
            f"{', '.join(CONTACT_EXPORT_PARAMS)}",
            field=unknown[0],
        )
    for name in ("start_date", "end_date"):
        if params.get(name) is None:
            raise CometlyInputError(f"{name} is required: {_CONTACT_TIME_HELP}", field=name)
    start = contact_export_moment("start_date", params["start_date"])
    end = contact_export_moment("end_date", params["end_date"])
    if end <= start:
        raise CometlyInputError(
            f"end_date={end:{CONTACT_EXPORT_TIME_FORMAT}} is invalid: expected a moment after "
            f"start_date={start:{CONTACT_EXPORT_TIME_FORMAT}}",
            field="end_date",
        )
    body: dict[str, Any] = {
        "start_date": start.strftime(CONTACT_EXPORT_TIME_FORMAT),
        "end_date": end.strftime(CONTACT_EXPORT_TIME_FORMAT),
    }
    for name in ("include_comet_tokens", "include_all_emails"):
        if params.get(name) is not None:
            body[name] = _flag(name, params[name])
    return body
