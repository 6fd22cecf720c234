"""Scenario 1: the example daily export DAG, scheduled by a backfill for a past day, lands that day.

Not triggered by hand: ``POST /api/v2/backfills`` makes the scheduler create the run (run_type
``backfill``) like ``airflow backfill create`` does. ``@daily`` is a ``CronTriggerTimetable`` in
Airflow 3, so the run at 2024-01-16T00:00 has an empty data interval ending at that instant: the
day it must export is the last complete day before it, 2024-01-15 (UTC, the Space's default zone).
"""

from __future__ import annotations

import gzip
import json
from typing import TYPE_CHECKING, Any

import boto3

from tests.reliability.invariants import s3_body

if TYPE_CHECKING:
    from tests.deployment.harness import Deployment

DAG_ID = "cometly_daily_export"
RUN_AT = "2024-01-16T00:00:00Z"
EXPECTED_DAY = "2024-01-15"


def _export_id(created: Any) -> int:
    """The export id from the create task's XCom: the id itself, or a result dict holding it."""
    if isinstance(created, dict):
        created = created.get("export_id", created.get("id"))
    return int(created)


def test_backfilled_daily_export_lands_the_last_complete_day_after_deferring(deployment: Deployment) -> None:
    sim = deployment.simulator
    # Status polls fail (503, transient) until the wait is deferred and settled: the sensor defers
    # however fast the export is, and the trigger cannot fire inside Airflow's deferral race.
    sim.inject("export_status", "status", code=503, times=None)
    deployment.wait_for_dags([DAG_ID])
    deployment.unpause(DAG_ID)
    backfill = deployment.backfill(DAG_ID, RUN_AT, RUN_AT)
    assert backfill["dag_id"] == DAG_ID

    runs = [r for r in deployment.runs(DAG_ID) if r["run_type"] == "backfill"]
    assert [r["logical_date"] for r in runs] == [RUN_AT]
    run_id = runs[0]["dag_run_id"]

    # The sensor's wait really happens in the triggerer.
    deferred = deployment.wait_for_deferral(DAG_ID, run_id, "wait_for_export")
    assert deferred["triggerer_job"]["job_type"] == "TriggererJob"
    sim.clear_faults("export_status")

    assert deployment.wait_for_run(DAG_ID, run_id, timeout=180) == "success"
    tries = {t["task_id"]: (t["state"], t["try_number"]) for t in deployment.task_instances(DAG_ID, run_id)}
    # Events and contacts: the two branches of the DAG, each on its first try.
    assert tries == {
        "create_export": ("success", 1),
        "wait_for_export": ("success", 1),
        "download_export": ("success", 1),
        "create_contacts": ("success", 1),
        "wait_for_contacts": ("success", 1),
        "download_contacts": ("success", 1),
    }
    log = deployment.task_log(DAG_ID, run_id, "wait_for_export")
    assert "Deferring until Cometly event export" in log
    assert "Trigger fired event" in log  # written by the triggerer into the task's log

    # The right day: asked of Cometly, in the object's key, and in every record of the object.
    export_id = _export_id(deployment.xcom(DAG_ID, run_id, "create_export"))
    assert sim.exports[export_id].params["date"] == EXPECTED_DAY
    landed = deployment.xcom(DAG_ID, run_id, "download_export")
    assert f"/dt={EXPECTED_DAY}/" in landed["destination"]
    bucket, _, key = landed["destination"].removeprefix("s3://").partition("/")
    client = boto3.client("s3", endpoint_url=deployment.s3_endpoint, region_name="us-east-1")
    body = s3_body(client, bucket, key)
    assert body is not None
    records = [json.loads(line) for line in gzip.decompress(body).splitlines()]
    assert len(records) == landed["records"] > 0
    days = {record["event_time_utc"][:10] for record in records}
    assert days == {EXPECTED_DAY}

    # The contacts branch covers the same day, in the Space's timezone (UTC here).
    contacts_id = _export_id(deployment.xcom(DAG_ID, run_id, "create_contacts"))
    contacts_params = sim.exports[contacts_id].params
    assert (contacts_params["start_date"], contacts_params["end_date"]) == (
        f"{EXPECTED_DAY} 00:00:00",
        f"{EXPECTED_DAY} 23:59:59",
    )
    contacts = deployment.xcom(DAG_ID, run_id, "download_contacts")
    assert f"/dt={EXPECTED_DAY}/" in contacts["destination"]
