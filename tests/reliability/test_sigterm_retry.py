"""A graceful SIGTERM (pod eviction, a worker's warm shutdown) mid-task leaves the task its retries.

Real Airflow in its own process (``tests.reliability.run_dag``: ``dag.test()``, whose Task SDK task
runner installs the SIGTERM handler that calls ``on_kill`` and decides retry or failure); this
test process holds the simulator and the moto S3 server and sends the signal. ``on_kill`` raises
``CometlyTaskKilled`` (a retryable ``BaseException``): try 1 ends ``up_for_retry`` with its upload
aborted, try 2 runs and succeeds. With 0.1.0's ``AirflowTaskTerminated`` try 1 was ``failed`` for
good, whatever ``retries`` said.
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


def _run_with_sigterm(
    tmp_path: Path, spec: dict[str, Any], ready: Callable[[], bool], before_signal: Callable[[], None]
) -> tuple[dict[str, Any], str]:
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
        deadline = time.monotonic() + 180
        while not ready():
            assert process.poll() is None, f"the run ended before the signal: {process.stdout.read()}"  # type: ignore[union-attr]
            assert time.monotonic() < deadline, "timed out waiting to send SIGTERM"
            time.sleep(0.01)
        before_signal()
        process.send_signal(signal.SIGTERM)
        out, _ = process.communicate(timeout=180)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(30)
    assert process.returncode == 0, out[-3000:]
    return json.loads(out.strip().splitlines()[-1]), out


def _assert_retried(outcome: dict[str, Any], log: str) -> None:
    """Try 1 was handed back for retry (not failed for good) and try 2 succeeded."""
    states = [line.split("new_state=")[1].split()[0] for line in log.splitlines() if "new_state=" in line]
    assert states == ["up_for_retry", "success"], log[-3000:]
    # The history keeps the killed try as "failed"; what matters is that there was a second one.
    assert [t["try_number"] for t in outcome["tries"]] == [1, 2]
    assert outcome["tries"][-1]["state"] == "success"
    assert outcome["state"] == "success"


def test_sigterm_mid_download_to_s3_is_retried_and_lands_identical(
    sim: Any, bucket: tuple[Any, str], tmp_path: Path
) -> None:
    client, name = bucket
    export_id, direct = _big_completed_export(sim)  # cut at 6 MB, then the resume hangs: kill there
    spec = {
        "operator": "download",
        "dag_id": f"sigterm_download_{uuid.uuid4().hex[:8]}",
        "kwargs": {
            "export_id": export_id,
            "destination": f"s3://{name}/e.ndjson.gz",
            "part_size": 5 * 1024 * 1024,
        },
    }

    def uploading_and_resuming() -> bool:
        return _resume_hanging(sim) and bool(client.list_multipart_uploads(Bucket=name).get("Uploads"))

    outcome, log = _run_with_sigterm(tmp_path, spec, uploading_and_resuming, sim.clear_faults)
    _assert_retried(outcome, log)
    assert outcome["state"] == "success"
    assert "CometlyTaskKilled" in log
    # Try 1 aborted its own multipart upload: try 2 found none to clean up.
    assert "left unfinished by an earlier try" not in log
    assert_identical_or_absent(client, name, "e.ndjson.gz", direct, landed=True)
    assert_no_orphaned_uploads(client, name)
    result = xcom_value(spec["dag_id"], "subject", outcome["run_id"])
    assert result["sha256"] == direct.sha256


def test_sigterm_mid_tracking_batch_is_retried_and_stores_each_event_once(sim: Any, tmp_path: Path) -> None:
    n = 300
    events = purchases(n, tag="sigterm")
    source = tmp_path / "conversions.ndjson"
    source.write_text("".join(json.dumps(e) + "\n" for e in events))
    failed = tmp_path / "failed.ndjson"
    spec = {
        "operator": "track",
        "dag_id": f"sigterm_track_{uuid.uuid4().hex[:8]}",
        "kwargs": {"events": str(source), "max_workers": 4, "failed_events_path": str(failed)},
    }
    sim.inject("track", "delay", seconds=0.02, times=None)  # about 200 events/s: time to signal

    outcome, log = _run_with_sigterm(tmp_path, spec, lambda: len(sim.events) >= 80, sim.clear_faults)
    _assert_retried(outcome, log)
    assert "CometlyTaskKilled" in log
    result = xcom_value(spec["dag_id"], "subject", outcome["run_id"])
    assert (result["total"], result["failed"], result["failed_events_path"]) == (n, 0, None)
    assert result["sent"] + result["duplicates"] == n
    assert result["duplicates"] >= 80  # what try 1 stored comes back as duplicates
    assert_stored_exactly_once(sim, events)
    assert not failed.exists()
