"""Scenario 4: SIGTERM to the task process in the middle of a download, as a worker's warm shutdown.

The first download response is cut after 3,000 bytes; the operator resumes with a ``Range``
request, which the simulator holds for 60 s: the task is mid-transfer, part of the export already
consumed. The test sends SIGTERM to the process running the task's code (titled ``airflow worker
-- <task instance id>``, not its supervisor). A user expects an interrupted try, not a failed day:
the task goes ``up_for_retry``, the retry lands the export byte for byte, and no multipart upload
is left behind.
"""

from __future__ import annotations

import os
import signal
import time
from typing import TYPE_CHECKING

import boto3

from tests.deployment.harness import DeploymentError
from tests.reliability.invariants import assert_no_orphaned_uploads, direct_download, s3_body

if TYPE_CHECKING:
    from tests.deployment.harness import Deployment

DAG_ID = "deployment_export"
KEY = "deployment/sigterm/events.ndjson.gz"


def test_sigterm_mid_download_is_retried_and_the_retry_lands_an_identical_object(
    deployment: Deployment,
) -> None:
    sim = deployment.simulator
    sim.inject("download", "cut", at_byte=3000, times=1)
    held = sim.inject("download", "delay", seconds=60, after=1, times=1)
    run_id = deployment.trigger(DAG_ID, conf={"date": "2024-03-01", "key": "sigterm"})

    ti = deployment.wait_for_task(DAG_ID, run_id, "download_export", ["running"], timeout=180)
    deadline = time.monotonic() + 120
    while not any(f.fault_id == held.fault_id and f.applied for f in sim.faults):
        if time.monotonic() > deadline:
            raise DeploymentError("the download never resumed into the held request")
        time.sleep(0.1)
    pid = deployment.task_process(ti["id"])
    assert pid is not None, "no process titled with the task instance id"
    os.kill(pid, signal.SIGTERM)

    retried = deployment.wait_for_task(
        DAG_ID, run_id, "download_export", ["up_for_retry", "failed", "success"], timeout=60
    )
    assert retried["state"] in ("up_for_retry", "success"), (
        f"SIGTERM left download_export {retried['state']}: an interrupted try must be retried"
    )
    assert deployment.wait_for_run(DAG_ID, run_id, timeout=180) == "success"
    # The history records an ended try that went up for retry as "failed" (what the UI shows).
    tries = deployment.tries(DAG_ID, run_id, "download_export")
    assert [(t["try_number"], t["state"]) for t in tries] == [(1, "failed"), (2, "success")]

    export_id = deployment.xcom(DAG_ID, run_id, "create_export")
    direct = direct_download(sim, export_id)
    client = boto3.client("s3", endpoint_url=deployment.s3_endpoint, region_name="us-east-1")
    body = s3_body(client, "cometly-lake", KEY)
    assert body == direct.body
    landed = deployment.xcom(DAG_ID, run_id, "download_export")
    assert landed["sha256"] == direct.sha256
    assert_no_orphaned_uploads(client, "cometly-lake")
