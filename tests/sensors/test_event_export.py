"""EventExportSensor over real sockets: poke, reschedule and deferrable modes, errors and timeouts."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import pytest
from airflow.providers.common.compat.sdk import AirflowSensorTimeout, TaskDeferred

from cometly_provider.exceptions import (
    CometlyExportFailedError,
    CometlyExportSensorTimeout,
    CometlyInputError,
    CometlyNotFoundError,
)
from cometly_provider.sensors.event_export import EventExportSensor
from cometly_provider.triggers.event_export import EventExportTrigger
from tests import event_exports as support

RESULT_KEYS = {"export_id", "kind", "status", "download_url", "expires_at", "completed_at"}


@pytest.fixture
def sim(cometly_simulator: Any, monkeypatch: pytest.MonkeyPatch) -> Any:
    return support.configure(cometly_simulator, monkeypatch)


def _sensor(export_id: Any, **kwargs: Any) -> EventExportSensor:
    kwargs.setdefault("poke_interval", 0.05)
    kwargs.setdefault("timeout", 30)
    return EventExportSensor(task_id="wait_for_export", export_id=export_id, **kwargs)


# --- poke mode --------------------------------------------------------------------------------------


def test_pokes_until_completed_and_returns_the_download_details(
    sim: Any, capfd: pytest.CaptureFixture[str]
) -> None:
    export_id = support.create_export(sim)
    result = _sensor(export_id).execute(support.context())

    assert set(result) == RESULT_KEYS
    assert result["export_id"] == export_id
    assert result["status"] == "completed"
    support.assert_stored_url(result, sim, export_id)
    assert result["completed_at"]
    assert result["expires_at"]
    statuses = [r.status for r in sim.requests_for("export_status")]
    assert len(statuses) >= 2
    assert set(statuses) == {200}
    # The download URL is logged only without its query string (the signature).
    out, err = capfd.readouterr()
    assert f"events export {export_id} completed at" in out
    assert ".ndjson.gz?<redacted>" in out
    support.assert_no_signature(sim, out + err)


@pytest.mark.parametrize("form", ["int", "str", "dict"])
def test_export_id_from_an_xcom_a_template_or_the_create_result(sim: Any, form: str) -> None:
    export_id = support.create_export(sim)
    value: Any = {"int": export_id, "str": f" {export_id} ", "dict": {"export_id": export_id}}[form]
    assert _sensor(value).execute(support.context())["export_id"] == export_id


@pytest.mark.parametrize("bad", ["abc", "", None, -3, 1.5, True, "٣", {"id": 3}])
def test_a_bad_export_id_fails_before_any_request(sim: Any, bad: Any) -> None:
    with pytest.raises(CometlyInputError, match=r"export_id=.* is invalid: expected the integer export_id"):
        _sensor(bad).execute(support.context())
    assert sim.requests == []


def test_a_failed_export_fails_with_the_api_message(sim: Any) -> None:
    sim.next_exports_outcome("failed", message="Export failed: the warehouse is on fire.")
    export_id = support.create_export(sim)
    with pytest.raises(CometlyExportFailedError, match="the warehouse is on fire") as info:
        _sensor(export_id).execute(support.context())
    assert f"Cometly event export {export_id} failed" in str(info.value)
    assert info.value.api_message == "Export failed: the warehouse is on fire."


def test_an_unknown_export_fails_clearly_after_one_request(sim: Any) -> None:
    with pytest.raises(CometlyNotFoundError, match="export 4242 does not exist in this Space") as info:
        _sensor(4242).execute(support.context())
    assert info.value.status_code == 404
    assert len(sim.requests_for("export_status")) == 1


def test_times_out_with_a_sensor_timeout_naming_the_last_status(sim: Any) -> None:
    sim.next_exports_outcome("stuck")
    export_id = support.create_export(sim)
    with pytest.raises(
        CometlyExportSensorTimeout, match=r"did not complete within 0\.5 s; last status: processing"
    ):
        _sensor(export_id, timeout=0.5).execute(support.context())
    # Airflow fails an AirflowSensorTimeout without retries, like any other sensor's timeout.
    assert issubclass(CometlyExportSensorTimeout, AirflowSensorTimeout)


def test_transient_errors_do_not_end_the_wait(sim: Any) -> None:
    export_id = support.create_export(sim)
    sim.inject("export_status", "status", code=502, times=3)
    sensor = _sensor(export_id, hook_params={"max_attempts": 1})
    assert sensor.execute(support.context())["status"] == "completed"
    assert sim.status_counts("export_status")[502] == 3


def test_transient_errors_until_the_timeout_are_named(sim: Any) -> None:
    export_id = support.create_export(sim)
    sim.inject("export_status", "status", code=500, times=None)
    with pytest.raises(CometlyExportSensorTimeout, match=r"last poll failed: .*HTTP 500"):
        _sensor(export_id, timeout=0.3, hook_params={"max_attempts": 1}).execute(support.context())


def test_a_too_small_poke_interval_is_raised_to_the_floor(
    sim: Any, capfd: pytest.CaptureFixture[str]
) -> None:
    sim.next_exports_outcome("stuck")
    export_id = support.create_export(sim)
    sensor = _sensor(export_id, poke_interval=0.001, timeout=0.5)
    with pytest.raises(CometlyExportSensorTimeout):
        sensor.execute(support.context())
    # Floor: window / status limit = 1.5 s / 30 (scaled from production's 60 s / 30 = 2 s).
    assert sensor.poke_interval == pytest.approx(0.05)
    assert "poke_interval=0.001 s would poll faster" in capfd.readouterr().out
    assert len(sim.requests_for("export_status")) <= 0.5 / 0.05 + 2


def test_default_poke_interval_and_floor_in_production_settings() -> None:
    from cometly_provider.exports import poll_interval_floor
    from cometly_provider.hooks.rate_limit import RateLimitPolicy

    assert _sensor(1, poke_interval=30).poke_interval == 30
    assert EventExportSensor(task_id="t", export_id=1).poke_interval == 30
    assert poll_interval_floor(RateLimitPolicy()) == 2.0


@pytest.mark.parametrize(
    ("kwargs", "fragment"),
    [({"poke_interval": -1}, "poke_interval=-1"), ({"timeout": "soon"}, "timeout='soon'")],
)
def test_bad_settings_fail_when_the_dag_is_parsed(kwargs: dict[str, Any], fragment: str) -> None:
    with pytest.raises(CometlyInputError, match=fragment):
        EventExportSensor(task_id="t", export_id=1, **kwargs)


# --- deferrable -------------------------------------------------------------------------------------


def test_deferrable_returns_at_once_when_already_completed(sim: Any) -> None:
    export_id = support.create_export(sim)
    support.wait_completed(sim, export_id)
    result = _sensor(export_id, deferrable=True).execute(support.context())  # no TaskDeferred
    assert result["status"] == "completed"
    assert len(sim.requests_for("export_status")) == 1


def test_deferrable_defers_to_the_trigger_and_resumes_with_its_event(sim: Any) -> None:
    sim.update_config(processing_seconds=1.0)
    export_id = support.create_export(sim)
    sensor = _sensor(export_id, deferrable=True, timeout=120, poke_interval=0.001)
    before = time.time()
    with pytest.raises(TaskDeferred) as info:
        sensor.execute(support.context())
    deferred = info.value
    trigger = deferred.trigger
    assert isinstance(trigger, EventExportTrigger)
    assert deferred.method_name == "execute_complete"
    assert trigger.export_id == export_id
    assert trigger.poll_interval == pytest.approx(0.05)  # floored before deferring
    assert before + 120 <= trigger.end_time <= time.time() + 120  # wall clock
    assert deferred.timeout is not None
    assert deferred.timeout.total_seconds() > 120
    assert len(sim.requests_for("export_status")) == 1  # checked once before deferring

    # What the triggerer does: rebuild from the serialized form, run on an event loop.
    _classpath, kwargs = trigger.serialize()
    rebuilt = EventExportTrigger(**json.loads(json.dumps(kwargs)))

    async def first_event() -> Any:
        async for event in rebuilt.run():
            return event
        return None

    event = asyncio.run(first_event())
    result = sensor.execute_complete(support.context(), event=event.payload)
    assert set(result) == RESULT_KEYS
    assert result["export_id"] == export_id


def test_execute_complete_turns_events_into_typed_errors() -> None:
    sensor = _sensor(7, deferrable=True)
    with pytest.raises(CometlyExportSensorTimeout, match="deadline"):
        sensor.execute_complete(
            support.context(),
            event={"status": "timeout", "export_id": 7, "message": "Cometly export 7 missed its deadline"},
        )
    with pytest.raises(CometlyExportFailedError, match="boom"):
        sensor.execute_complete(
            support.context(),
            event={
                "status": "error",
                "export_id": 7,
                "error_type": "CometlyExportFailedError",
                "message": "Cometly export 7 failed: boom",
                "api_message": "boom",
            },
        )


# --- real Airflow runs ------------------------------------------------------------------------------


def _run_pipeline(sensor_kwargs: dict[str, Any]) -> tuple[str, Any]:
    from airflow.sdk import DAG

    from cometly_provider.operators.event_export import CreateEventExportOperator

    dag_id = support.dag_id("cometly_sensor")
    with DAG(dag_id, schedule=None, start_date=support.START, catchup=False) as dag:
        create = CreateEventExportOperator(task_id="create_export")
        EventExportSensor(task_id="wait_for_export", export_id=create.output, **sensor_kwargs)
    return dag_id, support.run_dag(dag)


def _check_result(sim: Any, dag_id: str, run: Any) -> dict[str, Any]:
    assert run.state == "success", support.task_states(dag_id, run.run_id)
    result = support.xcom_value(dag_id, "wait_for_export", run.run_id)
    assert set(result) == RESULT_KEYS
    assert result["status"] == "completed"
    creates = sim.requests_for("export_create")
    assert len(creates) == 1
    # The default day: the last complete day before the run (a manual run at 2024-01-15 00:00 UTC).
    assert creates[0].json == {"date": "2024-01-14"}
    assert result["export_id"] == support.xcom_value(dag_id, "create_export", run.run_id)
    # What the metadata DB keeps (and the UI shows unmasked) has no signature.
    support.assert_stored_url(result, sim, result["export_id"])
    return result


@pytest.mark.usefixtures("airflow_db")
def test_dag_test_poke_mode(sim: Any) -> None:
    dag_id, run = _run_pipeline({"poke_interval": 0.05, "timeout": 60})
    result = _check_result(sim, dag_id, run)

    from airflow.models.renderedtifields import RenderedTaskInstanceFields
    from airflow.utils.session import create_session

    with create_session() as session:
        rendered = (
            session.query(RenderedTaskInstanceFields)
            .filter_by(dag_id=dag_id, task_id="wait_for_export", run_id=run.run_id)
            .one()
        )
    assert rendered.rendered_fields["export_id"] == result["export_id"]


@pytest.mark.usefixtures("airflow_db")
def test_dag_test_reschedule_mode(sim: Any) -> None:
    # Processing outlasts the first poke (even on a slow machine): the slot is given back at least once.
    sim.update_config(processing_seconds=3.0)
    dag_id, run = _run_pipeline({"poke_interval": 0.1, "timeout": 60, "mode": "reschedule"})
    _check_result(sim, dag_id, run)

    from airflow.models.taskreschedule import TaskReschedule
    from airflow.utils.session import create_session

    with create_session() as session:
        reschedules = (
            session.query(TaskReschedule)
            .join(TaskReschedule.task_instance)
            .filter_by(dag_id=dag_id, task_id="wait_for_export", run_id=run.run_id)
            .count()
        )
    assert reschedules >= 1


@pytest.mark.usefixtures("airflow_db")
def test_dag_test_deferrable_mode(
    sim: Any, monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture[str]
) -> None:
    # dag.test() runs the trigger inline (Airflow 3); count the runs to prove the task deferred.
    runs: list[int] = []
    original = EventExportTrigger.run

    def spy(self: EventExportTrigger) -> Any:
        runs.append(self.export_id)
        return original(self)

    monkeypatch.setattr(EventExportTrigger, "run", spy)
    sim.update_config(processing_seconds=3.0)  # still running when the sensor checks before deferring
    dag_id, run = _run_pipeline({"poke_interval": 0.05, "timeout": 60, "deferrable": True})
    result = _check_result(sim, dag_id, run)
    assert runs == [result["export_id"]]
    # The triggerer's URL reached the worker through the event; neither side logged its signature.
    out, err = capfd.readouterr()
    assert "Deferring until Cometly event export" in out
    support.assert_no_signature(sim, out + err)
