"""CreateEventExportOperator: start a Cometly event export for one day, optionally wait for it."""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from typing import Any

from cometly_provider.exceptions import CometlyInputError
from cometly_provider.operators.export import CreateExportOperator
from cometly_provider.pending import PENDING_EXPORT_VARIABLE_PREFIX
from cometly_provider.utils.rendered import parse_rendered_literal
from cometly_provider.validation import EXPORT_PARAMS

__all__ = ["PENDING_EXPORT_VARIABLE_PREFIX", "CreateEventExportOperator"]

_LIST_PARAMS = ("event_names", "sources", "fields")


class CreateEventExportOperator(CreateExportOperator):
    """
    Create a Cometly event export of one day (POST /events/exports); optionally wait for it.

    :class:`~cometly_provider.operators.export.CreateExportOperator` with the event-export
    parameters as named, templated arguments (see it for waiting, deferral, rate limits and
    re-attachment on retry). Every rule of the API reference is checked after templates render and
    before any request (:func:`~cometly_provider.validation.validate_export_params`), e.g.
    ``attribution_model is required when sources is given``.

    :param date: the day to export (``YYYY-MM-DD``, a date or a datetime); templated. Default: the
        last complete day in the Space's timezone (connection extra ``timezone``, default UTC) before
        the run's ``data_interval_end``. Today or a future day fails before any request.
    :param query_mode: ``profile`` (default on the API side) or ``company``; templated.
    :param event_names: up to 10 event names to keep; templated.
    :param sources: up to 15 traffic sources; needs ``attribution_model`` and
        ``attribution_window``; templated.
    :param attribution_model: e.g. ``last_touch``; templated.
    :param attribution_window: days: 0 (LTV), 1, 7, 14, 30, 60 or 90; templated.
    :param fields: up to 20 fields of the file (``id`` and ``event_time_utc`` are always included;
        ad hierarchy fields need ``sources``); templated.
    """

    template_fields: Sequence[str] = EXPORT_PARAMS  # every API parameter, nothing else

    def __init__(
        self,
        *,
        date: Any = None,
        query_mode: str | None = None,
        event_names: Sequence[str] | str | None = None,
        sources: Sequence[str] | str | None = None,
        attribution_model: str | None = None,
        attribution_window: int | str | None = None,
        fields: Sequence[str] | str | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(kind="events", **kwargs)
        self.date = date
        self.query_mode = query_mode
        self.event_names = event_names
        self.sources = sources
        self.attribution_model = attribution_model
        self.attribution_window = attribution_window
        self.fields = fields

    def rendered_params(self, tz: dt.tzinfo) -> dict[str, Any]:
        """The rendered parameters, with what text-rendered templates turn values into undone."""
        # An explicit date that renders empty ("{{ ds }}" in a run without a logical date) is kept,
        # so that validation names it instead of silently exporting the default day.
        params = {name: _untemplated(name, getattr(self, name)) for name in EXPORT_PARAMS}
        if isinstance(self.date, str) and not self.date.strip():
            raise CometlyInputError(
                f"date={self.date!r} is invalid: expected one day as YYYY-MM-DD; a template such as "
                "'{{ ds }}' renders empty for a DAG run without a logical date, so leave date unset "
                "(the last complete day before the run's data_interval_end) or pass a day",
                field="date",
            )
        return {name: value for name, value in params.items() if value is not None}


def _untemplated(name: str, value: Any) -> Any:
    """Undo what rendering a template to text does to an optional parameter.

    Without ``render_template_as_native_obj`` a template gives ``"None"`` for a missing value,
    ``"['a', 'b']"`` for a list and ``"30"`` for a number. Anything else is left for validation
    to judge (and to name in its error).
    """
    if not isinstance(value, str):
        return value
    text = value.strip()
    if text in ("None", "null") or (text == "" and name != "date"):
        return None
    if name in _LIST_PARAMS and text.startswith("[") and text.endswith("]"):
        try:
            parsed = parse_rendered_literal(text)
        except ValueError:
            return value
        return parsed if isinstance(parsed, list) else value
    if name == "attribution_window" and text.isascii() and text.isdigit():
        return int(text)
    return value
