"""Scenario 5: real deferral timeouts, the wait shorter than the export's life.

The export takes 120 s; the waits give up after 15 s, in the triggerer (the trigger's wall-clock
deadline), then the task resumes on a worker and raises the typed timeout. A user checks the
task's state and error, and that nothing is left behind: no ``cometly*`` Variable (the create
operator remembers in-flight exports in one), no trigger still attached to the task, no task
state-store entry.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from tests.deployment.harness import Deployment


def _assert_nothing_left(deployment: Deployment, dag_id: str, run_id: str, task_id: str) -> None:
    assert [k for k in deployment.variables() if k.lower().startswith("cometly")] == []
    with contextlib.closing(deployment.db()) as db:
        rows = db.execute(
            "SELECT trigger_id, next_method, next_kwargs FROM task_instance"
            " WHERE dag_id = ? AND run_id = ? AND task_id = ?",
            (dag_id, run_id, task_id),
        ).fetchall()
    assert len(rows) == 1
    trigger_id, next_method, next_kwargs = rows[0]
    assert (trigger_id, next_method) == (None, None)
    assert next_kwargs in (None, "null")
    store = deployment.api("GET", f"/dags/{dag_id}/dagRuns/{run_id}/taskInstances/{task_id}/state-store")
    assert store["total_entries"] == 0, store


@pytest.fixture(scope="module")
def timed_out_runs(deployment: Deployment) -> Iterator[dict[str, str]]:
    """Both DAGs triggered at once (their waits overlap), each waiting on a 120 s export."""
    sim = deployment.simulator
    saved = sim.config.processing_seconds
    sim.update_config(processing_seconds=120.0)
    try:
        yield {
            "deployment_export_timeout": deployment.trigger(
                "deployment_export_timeout", conf={"date": "2024-04-01"}
            ),
            "deployment_sensor_soft_timeout": deployment.trigger(
                "deployment_sensor_soft_timeout", conf={"date": "2024-04-02", "key": "soft-timeout"}
            ),
        }
    finally:
        sim.update_config(processing_seconds=saved)


def test_create_and_wait_times_out_in_the_triggerer_with_the_typed_error(
    deployment: Deployment, timed_out_runs: dict[str, str]
) -> None:
    dag_id, task_id = "deployment_export_timeout", "create_and_wait"
    run_id = timed_out_runs[dag_id]
    assert deployment.wait_for_run(dag_id, run_id, timeout=180) == "failed"
    tries = deployment.tries(dag_id, run_id, task_id)
    assert [(t["try_number"], t["state"]) for t in tries] == [(1, "failed")]
    log = deployment.task_log(dag_id, run_id, task_id)
    assert "Deferring until Cometly event export" in log
    assert "Trigger fired event" in log
    assert "CometlyExportTimeoutError" in log
    assert "did not complete" in log
    _assert_nothing_left(deployment, dag_id, run_id, task_id)


def test_soft_fail_sensor_times_out_in_the_triggerer_and_skips(
    deployment: Deployment, timed_out_runs: dict[str, str]
) -> None:
    dag_id = "deployment_sensor_soft_timeout"
    run_id = timed_out_runs[dag_id]
    deployment.wait_for_run(dag_id, run_id, timeout=180)
    states = {t["task_id"]: (t["state"], t["try_number"]) for t in deployment.task_instances(dag_id, run_id)}
    assert states == {
        "create_export": ("success", 1),
        "wait_for_export": ("skipped", 1),
        "download_export": ("skipped", 0),
    }
    log = deployment.task_log(dag_id, run_id, "wait_for_export")
    assert "Trigger fired event" in log
    assert "did not complete" in log
    _assert_nothing_left(deployment, dag_id, run_id, "wait_for_export")
