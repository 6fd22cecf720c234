"""Faults of the export life cycle: an export that fails, one that never completes, a flapping status.

The failed and the never-completing export run as real Airflow DAG runs (``dag.test()``: create ->
wait -> download to moto S3), so the tasks' final states are checked along with the error type and
message; the flapping status endpoint is tested in the sensor's sync and deferrable (trigger) paths.
"""

from __future__ import annotations

import asyncio
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from airflow.providers.common.compat.sdk import AirflowFailException

from cometly_provider.exceptions import (
    CometlyExportFailedError,
    CometlyExportSensorFailedError,
    CometlyExportSensorTimeout,
    CometlyServerError,
)
from cometly_provider.sensors.event_export import EventExportSensor
from cometly_provider.triggers.event_export import EventExportTrigger
from tests import event_exports as support
from tests.reliability.invariants import (
    assert_failed_with,
    assert_local_identical_or_absent,
    assert_no_orphaned_uploads,
    direct_download,
)
from tests.reliability.pipeline import download_context, downloader, file_uri

FAILURE = "Export failed: the attribution warehouse is being rebuilt."


def _daily_dag(bucket: str, **sensor_kwargs: Any) -> tuple[str, Any]:
    from airflow.sdk import DAG

    from cometly_provider.operators.download_export import DownloadEventExportOperator
    from cometly_provider.operators.event_export import CreateEventExportOperator

    dag_id = support.dag_id("reliability_export")
    with DAG(dag_id, schedule=None, start_date=support.START, catchup=False) as dag:
        create = CreateEventExportOperator(task_id="create_export")
        wait = EventExportSensor(
            task_id="wait_for_export",
            export_id=create.output,
            poke_interval=0.05,
            retries=2,
            retry_delay=timedelta(0),
            **sensor_kwargs,
        )
        DownloadEventExportOperator(
            task_id="download_export",
            download_url=wait.output,
            destination=f"s3://{bucket}/cometly/{{{{ ds }}}}.ndjson.gz",
        )
    return dag_id, support.run_dag(dag)


def _tries(dag_id: str, run_id: str, task_id: str) -> int:
    from airflow.models.taskinstance import TaskInstance
    from airflow.utils.session import create_session

    with create_session() as session:
        ti = session.query(TaskInstance).filter_by(dag_id=dag_id, run_id=run_id, task_id=task_id).one()
        return int(ti.try_number)


def _states(dag_id: str, run_id: str) -> dict[str, str]:
    return {task: state for (task, _), state in support.task_states(dag_id, run_id).items()}


@pytest.mark.usefixtures("airflow_db")
def test_failed_export_fails_the_wait_and_lands_nothing(
    sim: Any, bucket: tuple[Any, str], capfd: pytest.CaptureFixture[str]
) -> None:
    client, name = bucket
    sim.next_exports_outcome("failed", count=5, message=FAILURE)
    dag_id, run = _daily_dag(name, timeout=60)

    assert run.state == "failed"
    assert _states(dag_id, run.run_id) == {
        "create_export": "success",
        "wait_for_export": "failed",
        "download_export": "upstream_failed",
    }
    out = capfd.readouterr().out
    assert "CometlyExportSensorFailedError" in out
    assert _tries(dag_id, run.run_id, "wait_for_export") == 1
    assert f"Cometly event export 1 failed: {FAILURE}" in out
    assert sim.requests_for("download") == []
    assert client.list_objects_v2(Bucket=name).get("KeyCount", 0) == 0
    assert_no_orphaned_uploads(client, name)

    # The error the task failed with: typed, with the API's message, and final for Airflow.
    with pytest.raises(CometlyExportFailedError) as info:
        EventExportSensor(task_id="wait_for_export", export_id=1, poke_interval=0.05).execute(
            support.context()
        )
    assert_failed_with(
        info.value, CometlyExportSensorFailedError, f"Cometly event export 1 failed: {FAILURE}"
    )
    assert isinstance(info.value, AirflowFailException)
    assert info.value.api_message == FAILURE


@pytest.mark.usefixtures("airflow_db")
def test_export_that_never_completes_times_out_once_without_burning_retries(
    sim: Any, bucket: tuple[Any, str], capfd: pytest.CaptureFixture[str]
) -> None:
    client, name = bucket
    sim.next_exports_outcome("stuck")
    dag_id, run = _daily_dag(name, timeout=1.0)

    assert run.state == "failed"
    assert _states(dag_id, run.run_id) == {
        "create_export": "success",
        "wait_for_export": "failed",
        "download_export": "upstream_failed",
    }
    # A sensor timeout is final: the two retries were not spent polling the same stuck export.
    assert _tries(dag_id, run.run_id, "wait_for_export") == 1
    out = capfd.readouterr().out
    assert "CometlyExportSensorTimeout" in out
    assert "Cometly event export 1 did not complete within 1 s; last status: processing" in out
    assert len(sim.exports) == 1
    assert sim.exports[1].status == "processing"
    assert client.list_objects_v2(Bucket=name).get("KeyCount", 0) == 0
    assert_no_orphaned_uploads(client, name)


def test_export_that_never_completes_while_the_status_endpoint_is_down(sim: Any) -> None:
    sim.update_config(queued_seconds=0)  # "processing" from the first poll
    sim.next_exports_outcome("stuck")
    export_id = support.create_export(sim)
    sim.inject("export_status", "status", code=503, after=2, times=None)
    sensor = EventExportSensor(
        task_id="wait_for_export",
        export_id=export_id,
        poke_interval=0.05,
        timeout=0.8,
        hook_params={"max_attempts": 1},
    )
    with pytest.raises(CometlyExportSensorTimeout) as info:
        sensor.execute(support.context())
    assert_failed_with(
        info.value,
        CometlyExportSensorTimeout,
        f"Cometly event export {export_id} did not complete within 0.8 s",
        "last status: processing",  # what the export was when last seen...
        "last poll failed: Cometly GET /events/exports/1 failed with HTTP 503",  # ...and why no news since
    )


def _flap(sim: Any) -> None:
    # 200, 503, 200, 503, ...: every second status request fails.
    sim.inject("export_status", "status", code=503, every=2, times=None)


def _check_flapped(sim: Any, capfd: pytest.CaptureFixture[str]) -> None:
    statuses = [r.status for r in sim.requests_for("export_status")]
    assert statuses.count(503) >= 2, statuses
    assert 200 in statuses
    out = capfd.readouterr().out
    assert "status poll failed" in out
    assert "will poll again" in out


def test_status_flapping_between_200_and_503_sensor_then_download(
    sim: Any, tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    export_id = support.create_export(sim)
    _flap(sim)
    # One attempt per poll: every 503 reaches the sensor, which must shrug it off.
    result = EventExportSensor(
        task_id="wait_for_export",
        export_id=export_id,
        poke_interval=0.05,
        timeout=60,
        hook_params={"max_attempts": 1},
    ).execute(support.context())
    assert result["status"] == "completed"
    _check_flapped(sim, capfd)

    # The download fetches its signed URL through the same flapping endpoint (with retries).
    path = tmp_path / "export.ndjson.gz"
    summary = downloader(download_url=result, destination=file_uri(path)).execute(download_context())  # type: ignore[arg-type]
    direct = direct_download(sim, export_id)
    assert_local_identical_or_absent(path, direct, landed=True)
    assert summary["sha256"] == direct.sha256


def test_status_flapping_between_200_and_503_deferrable(sim: Any, capfd: pytest.CaptureFixture[str]) -> None:
    export_id = support.create_export(sim)
    _flap(sim)
    trigger = EventExportTrigger(
        export_id=export_id, end_time=time.time() + 60, poll_interval=0.05, hook_params={"max_attempts": 1}
    )

    async def first_event() -> Any:
        async for event in trigger.run():
            return event
        return None

    event = asyncio.run(first_event())
    assert event.payload["status"] == "success", event.payload
    result = EventExportSensor(task_id="wait_for_export", export_id=export_id).execute_complete(
        support.context(), event=event.payload
    )
    assert result["export_id"] == export_id
    assert result["status"] == "completed"
    _check_flapped(sim, capfd)


def test_status_down_when_the_download_needs_a_url_fails_with_the_reason(sim: Any, tmp_path: Path) -> None:
    export_id = support.create_export(sim)
    support.wait_completed(sim, export_id)
    sim.inject("export_status", "status", code=503, times=None)
    path = tmp_path / "export.ndjson.gz"
    op = downloader(export_id=export_id, destination=file_uri(path), hook_params={"max_attempts": 2})
    with pytest.raises(CometlyServerError) as info:
        op.execute(download_context())  # type: ignore[arg-type]
    assert_failed_with(info.value, CometlyServerError, "GET /events/exports/1 failed with HTTP 503")
    assert sim.requests_for("download") == []
    assert not path.exists()
    assert list(tmp_path.iterdir()) == []
