"""A worker SIGKILLed in the middle of a task, then the task's retry: a real process kill, no clean-up.

Each try runs in its own process (``tests.reliability.run_task``), like an Airflow worker; the first
is killed with SIGKILL while requests are in flight, the second runs to the end. Then the
invariants: each event stored exactly once; the export landed byte-identical; no multipart upload
left behind by the killed try.

``tests/operators/test_track_event.py::test_worker_killed_mid_batch_then_retried_stores_each_event_once``
kills a sender fed from a list and retries in-process; here both tries are processes, the batch
comes from an NDJSON file (streamed twice per try), and the retry's own outcome is checked.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from cometly_provider.hooks.cometly import CometlyHook
from tests.reliability.invariants import (
    assert_identical_or_absent,
    assert_local_identical_or_absent,
    assert_no_orphaned_uploads,
    assert_stored_exactly_once,
    direct_download,
)
from tests.reliability.pipeline import BIG_PADDING, BIG_ROWS, DAG_ID, RUN_ID, MiB, file_uri, purchases

REPO = Path(__file__).resolve().parents[2]


def _start(tmp_path: Path, name: str, spec: dict[str, Any]) -> subprocess.Popen[str]:
    path = tmp_path / f"{name}.json"
    path.write_text(json.dumps({"dag_id": DAG_ID, "run_id": RUN_ID, **spec}))
    return subprocess.Popen(
        [sys.executable, "-m", "tests.reliability.run_task", str(path)],
        cwd=REPO,
        env=os.environ.copy(),
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )


def _kill_when(process: subprocess.Popen[str], ready: Callable[[], bool], what: str) -> None:
    try:
        deadline = time.monotonic() + 180
        while not ready():
            assert process.poll() is None, f"the task ended before {what}: {process.stdout.read()}"  # type: ignore[union-attr]
            assert time.monotonic() < deadline, f"timed out waiting for {what}"
            time.sleep(0.01)
        process.send_signal(signal.SIGKILL)
    finally:
        process.wait(60)
    assert process.returncode == -signal.SIGKILL


def _outcome(process: subprocess.Popen[str]) -> tuple[dict[str, Any], str]:
    """The task's outcome (the last line it printed) and everything it printed (its log)."""
    out, _ = process.communicate(timeout=180)
    outcome = json.loads(out.strip().splitlines()[-1])
    assert isinstance(outcome, dict)
    return outcome, out


def test_worker_killed_mid_tracking_batch_then_retried(sim: Any, tmp_path: Path) -> None:
    n = 300
    events = purchases(n, tag="kill")
    source = tmp_path / "conversions.ndjson"
    source.write_text("".join(json.dumps(e) + "\n" for e in events))
    spec = {"operator": "track", "task_id": "track", "kwargs": {"events": str(source), "max_workers": 4}}
    sim.inject("track", "delay", seconds=0.02, times=None)  # about 200 events/s: time to kill it

    first = _start(tmp_path, "try1", spec)
    _kill_when(first, lambda: len(sim.events) >= 80, "80 events were stored")
    stored_by_first = len(sim.events)
    assert stored_by_first < n

    sim.clear_faults()
    outcome, _ = _outcome(_start(tmp_path, "try2", spec))
    assert outcome["state"] == "success", outcome
    result = outcome["result"]
    assert (result["total"], result["failed"]) == (n, 0)
    assert result["sent"] + result["duplicates"] == n
    # Everything the killed try stored comes back as a duplicate (requests in flight at the kill
    # may have been stored too, after it was counted).
    assert result["duplicates"] >= stored_by_first
    assert_stored_exactly_once(sim, events)


def _big_completed_export(sim: Any) -> tuple[int, Any]:
    sim.update_config(
        queued_seconds=0, processing_seconds=0, export_rows=BIG_ROWS, row_padding_bytes=BIG_PADDING
    )
    hook = CometlyHook()
    export_id = int(
        hook.create_event_export(date="2024-01-15", fields=["event_name", "event_url"])["export_id"]
    )
    deadline = time.monotonic() + 90
    while hook.get_event_export(export_id)["status"] != "completed":
        assert time.monotonic() < deadline
        time.sleep(0.05)
    direct = direct_download(sim, export_id)
    assert direct.size > 12 * MiB
    # The connection is cut at 6 MB (after a first 5 MiB part), then the resume hangs in the
    # server: the worker is killed there, mid-download.
    sim.inject("download", "cut", at_byte=6_000_000)
    sim.inject("download", "delay", seconds=30, after=1, times=1)
    return export_id, direct


def _resume_hanging(sim: Any) -> bool:
    # The hanging resume is recorded only once answered: its fault rule shows it arrived.
    return any(f.kind == "delay" and f.applied for f in sim.faults)


def _download_spec(export_id: int, destination: str) -> dict[str, Any]:
    return {
        "operator": "download",
        "task_id": "download_export",
        "kwargs": {"export_id": export_id, "destination": destination, "part_size": 5 * MiB},
    }


def test_worker_killed_mid_download_to_s3_then_retried(
    sim: Any, bucket: tuple[Any, str], tmp_path: Path
) -> None:
    client, name = bucket
    export_id, direct = _big_completed_export(sim)
    spec = _download_spec(export_id, f"s3://{name}/e.ndjson.gz")

    def uploading_and_resuming() -> bool:
        uploads = client.list_multipart_uploads(Bucket=name).get("Uploads", [])
        if not _resume_hanging(sim) or not uploads:
            return False
        parts = client.list_parts(Bucket=name, Key="e.ndjson.gz", UploadId=uploads[0]["UploadId"])
        return len(parts.get("Parts", [])) >= 1

    first = _start(tmp_path, "try1", spec)
    _kill_when(first, uploading_and_resuming, "a part was uploaded and the download resumed")
    left = client.list_multipart_uploads(Bucket=name).get("Uploads", [])
    assert len(left) == 1  # what SIGKILL leaves: no on_kill, no abort
    assert_identical_or_absent(client, name, "e.ndjson.gz", direct, landed=False)

    sim.clear_faults()
    outcome, log = _outcome(_start(tmp_path, "try2", spec))
    assert outcome["state"] == "success", outcome
    assert outcome["result"]["sha256"] == direct.sha256
    assert f"Aborted multipart upload {left[0]['UploadId']}" in log
    assert "left unfinished by an earlier try" in log
    assert_identical_or_absent(client, name, "e.ndjson.gz", direct, landed=True)
    # The retry cleaned up what the killed try left behind.
    assert_no_orphaned_uploads(client, name)


def test_worker_killed_mid_download_to_a_local_file_then_retried(sim: Any, tmp_path: Path) -> None:
    export_id, direct = _big_completed_export(sim)
    lake = tmp_path / "lake"
    path = lake / "e.ndjson.gz"
    spec = _download_spec(export_id, file_uri(path))

    first = _start(tmp_path, "try1", spec)
    _kill_when(first, lambda: _resume_hanging(sim), "the download resumed")
    left = [p.name for p in lake.iterdir()]
    assert len(left) == 1  # the killed try's temp file; the destination itself never appeared
    assert left[0].startswith(".e.ndjson.gz.")
    assert left[0].endswith(".part")

    sim.clear_faults()
    outcome, log = _outcome(_start(tmp_path, "try2", spec))
    assert outcome["state"] == "success", outcome
    assert outcome["result"]["sha256"] == direct.sha256
    assert "left unfinished by an earlier try" in log
    # Landed identical, and the retry removed the killed try's temp file.
    assert_local_identical_or_absent(path, direct, landed=True)
