"""A graceful SIGTERM (pod eviction, a worker's warm shutdown) mid-task leaves the task its retries.

Real Airflow in its own process (``tests.reliability.run_dag``: ``dag.test()``, whose Task SDK task
runner installs the SIGTERM handler that calls ``on_kill`` and decides retry or failure); this
test process holds the simulator and the moto S3 server and sends the signals. ``on_kill`` raises
``CometlyTaskKilled`` (a retryable ``BaseException``): the killed try ends ``up_for_retry`` with
its upload aborted, the next try succeeds. With 0.1.0's ``AirflowTaskTerminated`` the try was
``failed`` for good, whatever ``retries`` said.

One DAG run covers both operators (a tracking batch, then a download), so Airflow starts once.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.event_exports import xcom_value
from tests.reliability.invariants import (
    assert_identical_or_absent,
    assert_no_orphaned_uploads,
    assert_stored_exactly_once,
)
from tests.reliability.pipeline import purchases
from tests.reliability.test_kill_and_retry import _big_completed_export, _resume_hanging

pytestmark = pytest.mark.usefixtures("airflow_db")
REPO = Path(__file__).resolve().parents[2]


def _wait_for(process: subprocess.Popen[str], ready: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + 180
    while not ready():
        assert process.poll() is None, f"the run ended before {what}: {process.stdout.read()}"  # type: ignore[union-attr]
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.01)


def test_sigterm_mid_batch_and_mid_download_are_retried(
    sim: Any, bucket: tuple[Any, str], tmp_path: Path
) -> None:
    client, name = bucket
    n = 300
    events = purchases(n, tag="sigterm")
    source = tmp_path / "conversions.ndjson"
    source.write_text("".join(json.dumps(e) + "\n" for e in events))
    failed = tmp_path / "failed.ndjson"
    export_id, direct = _big_completed_export(sim)  # cut at 6 MB, then the resume hangs: signal there
    sim.inject("track", "delay", seconds=0.02, times=None)  # about 200 events/s: time to signal
    dag_id = f"sigterm_{uuid.uuid4().hex[:8]}"
    spec = {
        "dag_id": dag_id,
        "retries": 1,
        "tasks": [
            {
                "task_id": "track",
                "operator": "track",
                "kwargs": {"events": str(source), "max_workers": 4, "failed_events_path": str(failed)},
            },
            {
                "task_id": "download",
                "operator": "download",
                "kwargs": {
                    "export_id": export_id,
                    "destination": f"s3://{name}/e.ndjson.gz",
                    "part_size": 5 * 1024 * 1024,
                },
            },
        ],
    }
    path = tmp_path / "spec.json"
    path.write_text(json.dumps(spec))
    process = subprocess.Popen(
        [sys.executable, "-m", "tests.reliability.run_dag", str(path)],
        cwd=REPO,
        env=os.environ.copy(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        _wait_for(process, lambda: len(sim.events) >= 80, "80 events were stored")
        sim.clear_faults("track")
        process.send_signal(signal.SIGTERM)  # mid-batch: requests in flight, events queued

        def uploading_and_resuming() -> bool:
            return _resume_hanging(sim) and bool(client.list_multipart_uploads(Bucket=name).get("Uploads"))

        _wait_for(process, uploading_and_resuming, "a part was uploaded and the download resumed")
        sim.clear_faults()
        process.send_signal(signal.SIGTERM)  # mid-download: a 5 MiB part up, the resume hanging
        out, _ = process.communicate(timeout=180)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(30)
    assert process.returncode == 0, out[-3000:]
    outcome = json.loads(out.strip().splitlines()[-1])

    # Each killed try was handed back for retry (not failed for good); each retry succeeded.
    states = [line.split("new_state=")[1].split()[0] for line in out.splitlines() if "new_state=" in line]
    assert states == ["up_for_retry", "success", "up_for_retry", "success"], out[-3000:]
    assert out.count("CometlyTaskKilled") >= 2
    assert {task: [t["try_number"] for t in tries] for task, tries in outcome["tries"].items()} == {
        "track": [1, 2],
        "download": [1, 2],
    }
    assert outcome["state"] == "success"

    tracked = xcom_value(dag_id, "track", outcome["run_id"])
    assert (tracked["total"], tracked["failed"], tracked["failed_events_path"]) == (n, 0, None)
    assert tracked["sent"] + tracked["duplicates"] == n
    assert tracked["duplicates"] >= 80  # what the killed try stored comes back as duplicates
    assert_stored_exactly_once(sim, events)
    assert not failed.exists()

    # The killed download aborted its own multipart upload: the retry found none to clean up.
    assert "left unfinished by an earlier try" not in out
    assert_identical_or_absent(client, name, "e.ndjson.gz", direct, landed=True)
    assert_no_orphaned_uploads(client, name)
    assert xcom_value(dag_id, "download", outcome["run_id"])["sha256"] == direct.sha256
