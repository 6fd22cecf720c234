"""The deployment itself: a trivial DAG runs in a separate task process, a sensor defers to the triggerer."""

from __future__ import annotations

import hashlib
from typing import TYPE_CHECKING

import boto3

if TYPE_CHECKING:
    from tests.deployment.harness import Deployment


def test_trivial_dag_runs_in_a_task_process_of_the_scheduler(deployment: Deployment) -> None:
    run_id = deployment.trigger("deployment_smoke")
    assert deployment.wait_for_run("deployment_smoke", run_id, timeout=120) == "success"
    (ti,) = deployment.task_instances("deployment_smoke", run_id)
    assert (ti["task_id"], ti["state"], ti["try_number"]) == ("hello", "success", 1)
    result = deployment.xcom("deployment_smoke", run_id, "hello")
    # Not this process, not an inline runner: a task process under a LocalExecutor worker that the
    # scheduler forked (the worker outlives the task, so it is still in the scheduler's tree).
    assert result["pid"] not in deployment.component_pids().values()
    assert result["parent"] in deployment.process_tree("scheduler")


def test_deferrable_sensor_waits_in_the_triggerer_and_the_export_lands(deployment: Deployment) -> None:
    sim = deployment.simulator
    # Status polls fail (503, transient) until the wait is deferred and settled: the sensor defers
    # however fast the export is, and the trigger cannot fire inside Airflow's deferral race.
    sim.inject("export_status", "status", code=503, times=None)
    run_id = deployment.trigger("deployment_export", conf={"date": "2024-01-15", "key": "smoke"})

    deferred = deployment.wait_for_deferral("deployment_export", run_id, "wait_for_export")
    sim.clear_faults("export_status")
    assert deferred["trigger"]["classpath"] == "cometly_provider.triggers.event_export.ExportTrigger"
    assert deferred["triggerer_job"]["job_type"] == "TriggererJob"

    assert deployment.wait_for_run("deployment_export", run_id, timeout=120) == "success"
    states = {
        t["task_id"]: (t["state"], t["try_number"])
        for t in deployment.task_instances("deployment_export", run_id)
    }
    assert states == {
        "create_export": ("success", 1),
        "wait_for_export": ("success", 1),
        "download_export": ("success", 1),
    }
    landed = deployment.xcom("deployment_export", run_id, "download_export")
    assert landed["destination"] == "s3://cometly-lake/deployment/smoke/events.ndjson.gz"
    body = (
        boto3.client("s3", endpoint_url=deployment.s3_endpoint, region_name="us-east-1")
        .get_object(Bucket="cometly-lake", Key="deployment/smoke/events.ndjson.gz")["Body"]
        .read()
    )
    assert hashlib.sha256(body).hexdigest() == landed["sha256"]
    # The task log shows the deferral, then the trigger's own lines, written by the triggerer.
    log = deployment.task_log("deployment_export", run_id, "wait_for_export")
    assert "Deferring until Cometly event export" in log
    assert "cometly_provider.triggers.event_export.ExportTrigger" in log
    assert "Trigger fired event" in log
