"""The Cometly connection form: one list of the connection's extras, rendered two ways.

Airflow 3.2+ reads ``conn-fields`` from the provider info (no hook import, no wtforms); Airflow 3.0
and 3.1 call the hook's ``get_connection_form_widgets``. Both are built from :data:`EXTRA_FIELDS`,
so a new extra is one more line here and appears in the form on every supported Airflow.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

DEFAULT_HOST = "https://app.cometly.com"

FieldType = Literal["string", "integer", "number", "boolean", "object"]


@dataclass(frozen=True)
class ExtraField:
    """One key of the connection's ``extra`` JSON, as the form shows it.

    The description is the field's help text in the form; say the default there. (Airflow 3's form
    shows no per-field placeholder for extras.)
    """

    name: str
    label: str
    type: FieldType
    description: str
    minimum: float | None = None
    enum: tuple[str, ...] = ()
    #: Only where the form would otherwise show something else than the hook does (a toggle shows
    #: "off" for null); numbers stay empty so the hook's defaults apply.
    default: Any = None


# One line per extra: add yours here and it appears in the form on every supported Airflow.
EXTRA_FIELDS: tuple[ExtraField, ...] = (
    ExtraField(
        "timeout", "Read timeout (s)", "number", "Seconds to wait for a reply (default 60).", minimum=1
    ),
    ExtraField(
        "connect_timeout",
        "Connect timeout (s)",
        "number",
        "Seconds to wait for a connection (default: the read timeout, at most 10).",
        minimum=0,
    ),
    ExtraField(
        "max_attempts",
        "Max attempts",
        "integer",
        "Attempts per request, first try included, for 429, 5xx and network errors (default 5).",
        minimum=1,
    ),
    ExtraField(
        "retry_min_wait", "Retry min wait (s)", "number", "First back-off wait (default 1).", minimum=0
    ),
    ExtraField(
        "retry_max_wait",
        "Retry max wait (s)",
        "number",
        "Cap on any back-off wait, Retry-After included when the limiter is off (default 60).",
        minimum=0,
    ),
    ExtraField(
        "rate_limits",
        "Rate limits (JSON)",
        "object",
        "Per-endpoint overrides of the limits per window: keys track, export_create, export_status, "
        "contacts_export_create, contacts_export_status, list; "
        'e.g. {"track": 500} to leave room for another client of the same Space.',
    ),
    ExtraField(
        "rate_limit_window_seconds",
        "Rate-limit window (s)",
        "number",
        "Length of Cometly's rate-limit window (60 in production).",
        minimum=0,
    ),
    ExtraField(
        "rate_limiting",
        "Client-side rate limiting",
        "boolean",
        "Pace requests at the Space's limits before the API answers 429 (default on).",
        default=True,
    ),
    ExtraField(
        "rate_limit_timeout",
        "Rate-limit wait budget (s)",
        "number",
        "How long one request may wait for the rate limit (client-side holds and 429s together) "
        "before it fails (default 1800). A 429 is a wait, not a failed attempt.",
        minimum=0,
    ),
    ExtraField(
        "rate_limit_backend",
        "Rate-limit backend",
        "string",
        "local (default): one limiter per task process, coordinated through the API's headers; "
        "redis: one bucket shared by every worker and triggerer of the deployment (needs the "
        "[redis] extra and a Redis connection).",
        enum=("local", "redis"),
    ),
    ExtraField(
        "redis_conn_id",
        "Redis connection id",
        "string",
        "Airflow Redis connection of the shared bucket, with rate_limit_backend redis "
        "(default redis_default).",
    ),
    ExtraField(
        "timezone",
        "Space timezone",
        "string",
        "IANA timezone of the Cometly Space, e.g. America/Los_Angeles; a Cometly day is a day in "
        "this timezone (default UTC).",
    ),
)

UI_FIELD_BEHAVIOUR: dict[str, Any] = {
    "hidden_fields": ["schema", "login"],
    # The port stays visible: Airflow 3.3's Test button sends port 0 for an empty port, which the
    # API rejects ("Bad Request") as a different endpoint than the stored null.
    "relabeling": {"password": "API key", "host": "API host (optional)", "port": "Port (e.g. 443)"},
    "placeholders": {
        "host": DEFAULT_HOST,
        "password": "Cometly API key (one key = one Space)",
        "port": "443",
    },
}


def provider_info_conn_fields() -> dict[str, dict[str, Any]]:
    """``conn-fields`` of the provider info (Airflow 3.2+), as in an official provider.yaml."""
    fields: dict[str, dict[str, Any]] = {}
    for field in EXTRA_FIELDS:
        # [type, "null"]: every extra is optional; an emptied field is stored as null.
        schema: dict[str, Any] = {"type": [field.type, "null"]}
        if field.minimum is not None:
            schema["minimum"] = field.minimum
        if field.enum:
            schema["enum"] = list(field.enum)
        if field.default is not None:
            schema["default"] = field.default
        fields[field.name] = {"label": field.label, "description": field.description, "schema": schema}
    return fields


def provider_info_field_behaviour() -> dict[str, Any]:
    """``ui-field-behaviour`` of the provider info: the hook's behaviour with hyphenated keys."""
    return {key.replace("_", "-"): value for key, value in UI_FIELD_BEHAVIOUR.items()}


def connection_form_widgets() -> dict[str, Any]:
    """wtforms fields for Airflow before 3.2, which calls ``get_connection_form_widgets``.

    The API server patches wtforms' field classes to turn them into the form's JSON schema, so only
    the four field classes it knows are used, and wtforms is imported here, never at module import.
    There is no number field among them: a number is a StringField and the hook casts it.
    """
    from wtforms import BooleanField, IntegerField, StringField
    from wtforms.validators import Optional

    classes = {"integer": IntegerField, "boolean": BooleanField}
    return {
        field.name: classes.get(field.type, StringField)(
            field.label, description=field.description, validators=[Optional()], default=field.default
        )
        for field in EXTRA_FIELDS
    }
