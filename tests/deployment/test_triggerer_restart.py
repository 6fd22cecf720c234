"""Scenario 2: ``kill -9`` the triggerer while exports wait, start it again.

Every trigger must come back from its serialized row (same trigger id and kwargs, now owned by the
new triggerer job), every run must complete, and the deadlines must still be the original
wall-clock ones (the trigger's ``end_time`` and the task's deferral timeout are not restarted).

From before the runs start until the new triggerer owns every trigger, status polls answer 503:
a transient error that the sensor (which then defers) and the trigger wait through. So every
export is still "waiting" at the kill however slow the machine is, and none completes unseen.
"""

from __future__ import annotations

import contextlib
import signal
import time
from typing import TYPE_CHECKING

from tests.deployment.harness import DeploymentError

if TYPE_CHECKING:
    from tests.deployment.harness import Deployment

DAG_ID = "deployment_export"
RUNS = 3


def _deferral_timeouts(deployment: Deployment, run_ids: list[str]) -> dict[str, str]:
    """The sensors' deferral deadlines (``task_instance.trigger_timeout``), which the API does not show."""
    with contextlib.closing(deployment.db()) as db:
        rows = db.execute(
            "SELECT run_id, trigger_timeout FROM task_instance WHERE dag_id = ? AND task_id = ?",
            (DAG_ID, "wait_for_export"),
        ).fetchall()
    return {run_id: timeout for run_id, timeout in rows if run_id in run_ids}


def test_triggers_survive_a_killed_triggerer_with_their_deadlines(deployment: Deployment) -> None:
    sim = deployment.simulator
    sim.inject("export_status", "status", code=503, times=None)
    run_ids = [
        deployment.trigger(DAG_ID, conf={"date": f"2024-02-0{i + 1}", "key": f"triggerer-restart-{i}"})
        for i in range(RUNS)
    ]
    deferred = [deployment.wait_for_deferral(DAG_ID, run_id, "wait_for_export") for run_id in run_ids]

    old_job = {ti["triggerer_job"]["id"] for ti in deferred}
    assert len(old_job) == 1
    trigger_ids = sorted(ti["trigger"]["id"] for ti in deferred)
    before = deployment.triggers()
    assert set(trigger_ids) <= set(before)
    end_times = {tid: before[tid]["kwargs"]["end_time"] for tid in trigger_ids}
    timeouts = _deferral_timeouts(deployment, run_ids)
    assert len(timeouts) == RUNS, timeouts
    assert all(timeouts.values()), timeouts

    killed_at = time.time()
    code = deployment.restart("triggerer", signal=signal.SIGKILL)
    assert code == -signal.SIGKILL

    # The new triggerer job takes over every trigger: same id, re-created from the stored row.
    deadline = time.monotonic() + 120
    while True:
        now = {
            ti["id"]: ti for ti in (deployment.task_instance(DAG_ID, r, "wait_for_export") for r in run_ids)
        }
        owners = {ti["trigger"]["triggerer_id"] if ti["trigger"] else None for ti in now.values()}
        if (
            all(ti["state"] == "deferred" for ti in now.values())
            and None not in owners
            and not owners & old_job
        ):
            break
        if time.monotonic() > deadline:
            raise DeploymentError(f"triggers not taken over by a new triggerer: {now}")
        time.sleep(0.5)
    assert sorted(ti["trigger"]["id"] for ti in now.values()) == trigger_ids
    after = deployment.triggers()
    for tid in trigger_ids:
        assert after[tid]["classpath"] == before[tid]["classpath"]
        assert after[tid]["kwargs"] == before[tid]["kwargs"]  # end_time included: the original deadline
    assert _deferral_timeouts(deployment, run_ids) == timeouts
    # The new triggerer job ran each of them: it writes the trigger's log into a file of its own.
    for run_id, ti in zip(run_ids, now.values(), strict=True):
        job, tid = ti["trigger"]["triggerer_id"], ti["trigger"]["id"]
        log = deployment.trigger_log_path(DAG_ID, run_id, "wait_for_export", job)
        deadline = time.monotonic() + 60
        while not (log.is_file() and f"(ID {tid}) starting" in log.read_text()):
            assert time.monotonic() < deadline, f"the new triggerer job {job} never started trigger {tid}"
            time.sleep(0.5)

    sim.clear_faults("export_status")
    for run_id in run_ids:
        assert deployment.wait_for_run(DAG_ID, run_id, timeout=120) == "success"
        tries = {t["task_id"]: t["try_number"] for t in deployment.task_instances(DAG_ID, run_id)}
        assert tries == {"create_export": 1, "wait_for_export": 1, "download_export": 1}
    # Deadlines were set before the kill, from the sensors' timeout (600 s), not from the restart.
    for tid, end_time in end_times.items():
        assert end_time < killed_at + 600, f"trigger {tid}'s deadline moved past the restart"
