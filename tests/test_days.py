"""The right day by default: the last complete day, in the Space's timezone, before data_interval_end.

Data intervals come from Airflow's own timetables (``CronTriggerTimetable``, Airflow 3's default for
cron schedules, and ``CronDataIntervalTimetable``), for a scheduled run and for a manual one; the
request bodies are what the operators would send (no request is made); one ``dag.test()`` per
timetable shows the whole path.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

import pendulum
import pytest
from airflow.timetables.base import TimeRestriction
from airflow.timetables.interval import CronDataIntervalTimetable
from airflow.timetables.trigger import CronTriggerTimetable

from cometly_provider.days import check_period_over, last_complete_day
from cometly_provider.exceptions import CometlyInputError
from cometly_provider.export_kinds import CONTACTS, EVENTS
from cometly_provider.hooks.cometly import CometlyHook
from cometly_provider.operators.contact_export import CreateContactExportOperator
from cometly_provider.operators.event_export import CreateEventExportOperator
from tests import event_exports as support
from tests.conftest import cometly_conn_uri

UTC = dt.UTC
LOS_ANGELES = "America/Los_Angeles"


def _scheduled_interval(timetable: Any, run_after: pendulum.DateTime) -> Any:
    """The data interval of the scheduled run that starts at ``run_after``."""
    earliest = (
        run_after - dt.timedelta(days=1) if isinstance(timetable, CronDataIntervalTimetable) else run_after
    )
    info = timetable.next_dagrun_info(
        last_automated_data_interval=None,
        restriction=TimeRestriction(earliest=earliest, latest=None, catchup=True),
    )
    assert info.run_after == run_after
    return info.data_interval


def _context(interval: Any) -> dict[str, Any]:
    return {"ti": support.FakeTI(), "data_interval_start": interval.start, "data_interval_end": interval.end}


def _hook(monkeypatch: pytest.MonkeyPatch, timezone: str | None) -> CometlyHook:
    extra = {"timezone": timezone} if timezone else {}
    monkeypatch.setenv("AIRFLOW_CONN_COMETLY_DEFAULT", cometly_conn_uri("http://127.0.0.1:9", "key", **extra))
    return CometlyHook()


TIMETABLES = {
    "CronTriggerTimetable": CronTriggerTimetable("0 0 * * *", timezone="UTC"),
    "CronDataIntervalTimetable": CronDataIntervalTimetable("0 0 * * *", timezone="UTC"),
}


@pytest.mark.parametrize("name", list(TIMETABLES))
@pytest.mark.parametrize(
    ("space_tz", "expected"),
    # The run starts at 2024-01-15 00:00 UTC: yesterday is over in UTC, but in Los Angeles it is
    # still 2024-01-14 16:00, so the last complete day there is the 13th.
    [(None, "2024-01-14"), (LOS_ANGELES, "2024-01-13")],
    ids=["UTC Space", "Los Angeles Space"],
)
def test_scheduled_daily_run_exports_the_last_complete_day(
    monkeypatch: pytest.MonkeyPatch, name: str, space_tz: str | None, expected: str
) -> None:
    interval = _scheduled_interval(TIMETABLES[name], pendulum.datetime(2024, 1, 15))
    hook = _hook(monkeypatch, space_tz)
    body = CreateEventExportOperator(task_id="t").request_body(_context(interval), hook)  # type: ignore[arg-type]
    assert body == {"date": expected}
    contacts = CreateContactExportOperator(task_id="c").request_body(_context(interval), hook)  # type: ignore[arg-type]
    assert contacts == {"start_date": f"{expected} 00:00:00", "end_date": f"{expected} 23:59:59"}


@pytest.mark.parametrize("name", list(TIMETABLES))
def test_manual_run_exports_the_day_before(monkeypatch: pytest.MonkeyPatch, name: str) -> None:
    interval = TIMETABLES[name].infer_manual_data_interval(run_after=pendulum.datetime(2024, 1, 15, 14, 30))
    body = CreateEventExportOperator(task_id="t").request_body(_context(interval), _hook(monkeypatch, None))  # type: ignore[arg-type]
    assert body == {"date": "2024-01-14"}


def test_a_dag_in_the_spaces_own_timezone_exports_its_yesterday(monkeypatch: pytest.MonkeyPatch) -> None:
    # Midnight in Los Angeles (08:00 UTC): the 14th has just ended there.
    timetable = CronTriggerTimetable("0 0 * * *", timezone=LOS_ANGELES)
    interval = _scheduled_interval(timetable, pendulum.datetime(2024, 1, 15, tz=LOS_ANGELES))
    body = CreateEventExportOperator(task_id="t").request_body(
        _context(interval),  # type: ignore[arg-type]
        _hook(monkeypatch, LOS_ANGELES),
    )
    assert body == {"date": "2024-01-14"}


def test_a_manual_run_without_a_logical_date_uses_run_after() -> None:
    class DagRun:
        run_after = pendulum.datetime(2024, 1, 15, 9)

    assert last_complete_day({"dag_run": DagRun()}, UTC) == dt.date(2024, 1, 14)


@pytest.mark.parametrize(
    ("kind", "body", "space_tz", "ok"),
    [
        (EVENTS, {"date": "2024-01-14"}, UTC, True),
        # 03:00 UTC on the 15th is 19:00 on the 14th in Los Angeles: not over yet.
        (EVENTS, {"date": "2024-01-14"}, LOS_ANGELES, False),
        (EVENTS, {"date": "2024-01-15"}, UTC, False),
        (EVENTS, {"date": "2030-01-01"}, UTC, False),
        (CONTACTS, {"start_date": "2024-01-10 00:00:00", "end_date": "2024-01-15 02:59:59"}, UTC, True),
        (CONTACTS, {"start_date": "2024-01-10 00:00:00", "end_date": "2024-01-15 03:00:00"}, UTC, False),
    ],
)
def test_future_or_incomplete_periods_are_refused(
    kind: Any, body: dict[str, str], space_tz: Any, ok: bool
) -> None:
    from zoneinfo import ZoneInfo

    tz = ZoneInfo(space_tz) if isinstance(space_tz, str) else space_tz
    now = dt.datetime(2024, 1, 15, 3, 0, tzinfo=UTC)
    if ok:
        check_period_over(kind, body, tz, now=now)
        return
    with pytest.raises(CometlyInputError, match="not over yet in the Space's timezone") as info:
        check_period_over(kind, body, tz, now=now)
    assert info.value.field in body


def test_an_incomplete_day_fails_before_any_request(
    cometly_simulator: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    support.configure(cometly_simulator, monkeypatch)
    today = dt.datetime.now(UTC).date().isoformat()
    with pytest.raises(CometlyInputError, match=f"date='{today}' is invalid: that period is not over yet"):
        CreateEventExportOperator(task_id="t", date=today).execute(support.context())
    assert cometly_simulator.requests == []


def test_an_unknown_space_timezone_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(CometlyInputError, match="timezone='Mars/Olympus' is invalid: expected an IANA"):
        _ = _hook(monkeypatch, "Mars/Olympus").space_timezone


@pytest.mark.usefixtures("airflow_db")
@pytest.mark.parametrize("name", ["CronTriggerTimetable", "CronDataIntervalTimetable"])
def test_dag_test_of_a_daily_dag_exports_yesterday(
    cometly_simulator: Any, monkeypatch: pytest.MonkeyPatch, name: str
) -> None:
    """A daily DAG's run at 2024-01-15 00:00 UTC, under each timetable."""
    from airflow.sdk import DAG
    from airflow.sdk import CronDataIntervalTimetable as SdkInterval
    from airflow.sdk import CronTriggerTimetable as SdkTrigger

    support.configure(cometly_simulator, monkeypatch)
    timetable = (
        SdkTrigger("0 0 * * *", timezone="UTC")
        if name == "CronTriggerTimetable"
        else SdkInterval("0 0 * * *", timezone="UTC")
    )
    # dag.test() makes a (manual) run at 2024-01-15 00:00 UTC; the timetable gives its data interval.
    logical = dt.datetime(2024, 1, 15, tzinfo=UTC)
    dag_id = support.dag_id("cometly_days")
    with DAG(dag_id, schedule=timetable, start_date=support.START, catchup=False) as dag:
        CreateEventExportOperator(task_id="create_export")
    run = support.run_dag(dag, logical_date=logical)
    assert run.state == "success", support.task_states(dag_id, run.run_id)
    assert [r.json for r in cometly_simulator.requests_for("export_create")] == [{"date": "2024-01-14"}]
