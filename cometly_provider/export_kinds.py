"""The kinds of Cometly export: what differs between event exports and contacts exports.

Every export follows one life cycle (create → ``queued`` → ``processing`` → ``completed`` |
``failed``; a completed export's status carries a presigned ``download_url`` valid 15 minutes).
Everything else that depends on the kind lives in one :class:`ExportKind` here: its API path, its
rate-limit keys, its parameter vocabulary and validator, the period its parameters cover (for the
"right day" default and the incomplete-day check), its file and the names used in messages. The
hook, the sensor, the trigger and the download operator take a kind and nothing else changes.

Adding a kind (say companies) means one ``ExportKind`` entry here (with its validator in
:mod:`cometly_provider.validation`); the rate limiter takes its limits from the entry. See
``docs/export-kinds.md``.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from cometly_provider.exceptions import CometlyInputError
from cometly_provider.validation import (
    CONTACT_EXPORT_PARAMS,
    CONTACT_EXPORT_TIME_FORMAT,
    EXPORT_PARAMS,
    validate_contact_export_params,
    validate_export_params,
)


@dataclass(frozen=True)
class ExportKind:
    """One kind of export. Instances are compared and serialized by ``name``."""

    #: Short name used in task arguments, XCom and trigger payloads (``"events"``, ``"contacts"``).
    name: str
    #: What messages call one export, e.g. ``"event export"``.
    noun: str
    #: API path of creation; status is ``{path}/{id}``.
    path: str
    #: Rate-limit keys (see :mod:`cometly_provider.hooks.rate_limit`).
    create_endpoint: str
    status_endpoint: str
    #: Every parameter the API accepts, and the client-side validator returning the request body.
    params: tuple[str, ...]
    validate: Callable[[Mapping[str, Any]], dict[str, Any]]
    #: The parameters covering one whole day of the Space (the default period).
    day_params: Callable[[dt.date], dict[str, Any]]
    #: (parameter name, last moment covered, naive in the Space's timezone) of a validated body.
    period_end: Callable[[Mapping[str, Any]], tuple[str, dt.datetime]]
    #: What the file holds, for docs and logs.
    file_description: str
    #: The operator that creates this kind, named in messages ("the export_id returned by ...").
    create_operator: str
    #: Requests per minute per Space until the server's ``X-RateLimit-Limit`` says otherwise; the
    #: API reference says to assume the event-export figures where the vendor states none.
    create_limit: int = 5
    status_limit: int = 30

    def status_path(self, export_id: int) -> str:
        return f"{self.path}/{export_id}"

    def __str__(self) -> str:
        return self.name


def _event_period_end(body: Mapping[str, Any]) -> tuple[str, dt.datetime]:
    day = dt.date.fromisoformat(str(body["date"]))
    return "date", dt.datetime.combine(day + dt.timedelta(days=1), dt.time())


def _contact_period_end(body: Mapping[str, Any]) -> tuple[str, dt.datetime]:
    return "end_date", dt.datetime.strptime(str(body["end_date"]), CONTACT_EXPORT_TIME_FORMAT)


EVENTS = ExportKind(
    name="events",
    noun="event export",
    path="/events/exports",
    create_endpoint="export_create",
    status_endpoint="export_status",
    params=EXPORT_PARAMS,
    validate=validate_export_params,
    day_params=lambda day: {"date": day.isoformat()},
    period_end=_event_period_end,
    file_description="gzipped NDJSON, one event (or attributed touchpoint) per line",
    create_operator="CreateEventExportOperator",
)

CONTACTS = ExportKind(
    name="contacts",
    noun="contacts export",
    path="/contacts/exports",
    create_endpoint="contacts_export_create",
    status_endpoint="contacts_export_status",
    params=CONTACT_EXPORT_PARAMS,
    validate=validate_contact_export_params,
    day_params=lambda day: {"start_date": f"{day} 00:00:00", "end_date": f"{day} 23:59:59"},
    # end_date is the last second covered; the period is over one second later.
    period_end=lambda body: ("end_date", _contact_period_end(body)[1] + dt.timedelta(seconds=1)),
    file_description="gzipped NDJSON, one contact per line (id, email, name, phone, location, created_at)",
    create_operator="CreateContactExportOperator",
)

#: Every kind, by name.
EXPORT_KINDS: Mapping[str, ExportKind] = {kind.name: kind for kind in (EVENTS, CONTACTS)}


def export_kind(value: str | ExportKind, *, field: str = "kind") -> ExportKind:
    """The kind named ``value`` (an :class:`ExportKind` is returned as is)."""
    if isinstance(value, ExportKind):
        return value
    kind = EXPORT_KINDS.get(value.strip().lower()) if isinstance(value, str) else None
    if kind is None:
        raise CometlyInputError(
            f"{field}={value!r} is invalid: expected one of {', '.join(map(repr, EXPORT_KINDS))}",
            field=field,
        )
    return kind
