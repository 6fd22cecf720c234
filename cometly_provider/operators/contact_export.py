"""CreateContactExportOperator: start a Cometly contacts export, optionally wait for it."""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from typing import Any

from cometly_provider.operators.export import CreateExportOperator
from cometly_provider.utils.rendered import parse_rendered_literal


class CreateContactExportOperator(CreateExportOperator):
    """
    Create a Cometly contacts export (POST /contacts/exports); optionally wait for it.

    :class:`~cometly_provider.operators.export.CreateExportOperator` with the contacts-export
    parameters as named, templated arguments (see it for waiting, deferral, rate limits and
    re-attachment on retry). The same sensor, trigger and download operator as for event exports
    take it from here (its result carries ``kind="contacts"``). The file is gzipped NDJSON, one
    contact per line: ``id``, ``email``, ``name``, ``phone``, ``location``, ``created_at``.

    The API's ``start_date`` / ``end_date`` are given as ``export_start_date`` / ``export_end_date``:
    ``start_date`` and ``end_date`` already mean the task's own scheduling dates in Airflow, and
    ``default_args={"start_date": ...}`` would silently fill an argument of that name.

    :param export_start_date: the API's ``start_date``: contacts created from this moment:
        ``YYYY-MM-DD HH:MM:SS`` in the Space's timezone, a naive datetime (Space time), an aware
        datetime (converted to the Space's timezone) or a date (its first second); templated.
    :param export_end_date: the API's ``end_date``: contacts created until this moment (inclusive),
        same forms, after the start; the range may span several days; templated. With neither date given the
        export covers the last complete day in the Space's timezone (connection extra ``timezone``,
        default UTC) before the run's ``data_interval_end``: ``00:00:00`` to ``23:59:59``. An
        ``end_date`` that is not over yet fails before any request.
    :param include_comet_tokens: add each contact's last 5 comet tokens (``comet_tokens``); templated.
    :param include_all_emails: add every email of the contact, merged profiles included; templated.
    """

    template_fields: Sequence[str] = (
        "export_start_date",
        "export_end_date",
        "include_comet_tokens",
        "include_all_emails",
    )

    def __init__(
        self,
        *,
        export_start_date: Any = None,
        export_end_date: Any = None,
        include_comet_tokens: bool | str | None = None,
        include_all_emails: bool | str | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(kind="contacts", **kwargs)
        self.export_start_date = export_start_date
        self.export_end_date = export_end_date
        self.include_comet_tokens = include_comet_tokens
        self.include_all_emails = include_all_emails

    def rendered_params(self, tz: dt.tzinfo) -> dict[str, Any]:
        params = {
            "start_date": _in_space_time(self.export_start_date, tz),
            "end_date": _in_space_time(self.export_end_date, tz),
            "include_comet_tokens": _untemplated(self.include_comet_tokens),
            "include_all_emails": _untemplated(self.include_all_emails),
        }
        return {name: value for name, value in params.items() if value is not None}


def _untemplated(value: Any) -> Any:
    if isinstance(value, str):
        text = value.strip()
        if text in ("", "None", "null"):
            return None
        if text in ("True", "False", "true", "false"):
            return text.lower() == "true"
        try:
            return parse_rendered_literal(text)
        except ValueError:
            return value
    return value


def _in_space_time(value: Any, tz: dt.tzinfo) -> Any:
    """An aware datetime as the Space's wall-clock time (what the API expects); the rest as given."""
    value = _untemplated(value) if isinstance(value, str) and value.strip() in ("", "None", "null") else value
    if isinstance(value, dt.datetime) and value.tzinfo is not None:
        return value.astimezone(tz).replace(tzinfo=None)
    return value
