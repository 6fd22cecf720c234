"""The right day by default: the last complete day of the Space before the run's data interval ends.

A Cometly day is a day in the Space's timezone (the connection extra ``timezone``, default UTC).
Airflow's ``{{ ds }}`` is the wrong default for a daily export: under ``CronTriggerTimetable``
(Airflow 3's default for cron schedules) ``ds`` is the day that has just begun, and at 00:00 UTC
"yesterday" is not over yet for a Space in America/Los_Angeles. ``data_interval_end`` is the one
moment every timetable and manual runs agree on ("the run covers time up to here"), so the default
is the last Space-day that is complete at that moment.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from cometly_provider.exceptions import CometlyInputError

if TYPE_CHECKING:
    from cometly_provider.export_kinds import ExportKind


def run_end(context: Mapping[str, Any]) -> dt.datetime:
    """Where the run's data ends: ``data_interval_end``, else the run's ``run_after`` (a manual run
    without a logical date has no data interval), else now."""
    end = context.get("data_interval_end")
    if end is None:
        end = getattr(context.get("dag_run"), "run_after", None)
    if end is None:
        end = context.get("logical_date")
    if not isinstance(end, dt.datetime):
        return dt.datetime.now(dt.UTC)
    return end if end.tzinfo is not None else end.replace(tzinfo=dt.UTC)


def last_complete_day(context: Mapping[str, Any], tz: dt.tzinfo) -> dt.date:
    """The last day, in ``tz``, that is over at the end of the run's data interval."""
    return run_end(context).astimezone(tz).date() - dt.timedelta(days=1)


def check_period_over(
    kind: ExportKind, body: Mapping[str, Any], tz: dt.tzinfo, *, now: dt.datetime | None = None
) -> None:
    """Fail before any request when the export would cover time that has not happened yet.

    Cometly answers such an export with a partial file (or an empty one for a future day), which a
    daily pipeline would then store as if it were the whole day.
    """
    field, end_naive = kind.period_end(body)
    end = end_naive.replace(tzinfo=tz)
    now = now or dt.datetime.now(dt.UTC)
    if end > now:
        raise CometlyInputError(
            f"{field}={body[field]!r} is invalid: that period is not over yet in the Space's timezone "
            f"({tz}): it ends at {end.isoformat()}, it is now "
            f"{now.astimezone(tz).isoformat(timespec='seconds')}. "
            "Expected a complete past day; leave the dates unset to export the last complete day before "
            "the run's data_interval_end",
            field=field,
        )
