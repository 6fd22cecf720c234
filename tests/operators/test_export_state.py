"""Export re-attachment state: Airflow 3.3's task state store, and nothing left after the last try.

Each ending of a create-and-wait task is run through ``dag.test()`` (the Task SDK's own context, so
``task_state_store`` is the real one, backed by the metadata DB), then the leftover state is counted:
rows of the ``task_state_store`` table for the DAG and ``cometly_pending_export__*`` Variables. A
deferral timeout and a trigger failure are resumed the way the scheduler resumes them
(``next_method="__fail__"`` with the reason), which ``dag.test()`` cannot produce on its own.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest

from cometly_provider.operators.event_export import CreateEventExportOperator
from cometly_provider.pending import PENDING_EXPORT_STATE_KEY, PENDING_EXPORT_VARIABLE_PREFIX
from tests import event_exports as support

pytestmark = pytest.mark.usefixtures("airflow_db")


@pytest.fixture
def sim(cometly_simulator: Any, monkeypatch: pytest.MonkeyPatch) -> Any:
    return support.configure(cometly_simulator, monkeypatch)


def _leftovers(dag_id: str) -> tuple[int, int]:
    """(task state store rows of the DAG, pending-export Variables)."""
    from airflow.models.task_state_store import TaskStateStoreModel
    from airflow.models.variable import Variable
    from airflow.utils.session import create_session

    with create_session() as session:
        states = session.query(TaskStateStoreModel).filter_by(dag_id=dag_id).count()
        variables = (
            session.query(Variable).filter(Variable.key.like(f"{PENDING_EXPORT_VARIABLE_PREFIX}%")).count()
        )
    return states, variables


def _run(**op_kwargs: Any) -> tuple[str, Any]:
    from airflow.sdk import DAG

    dag_id = support.dag_id("cometly_state")
    op_kwargs = {"date": "2024-01-15", "wait_for_completion": True, "poll_interval": 0.05, **op_kwargs}
    with DAG(dag_id, schedule=None, start_date=support.START, catchup=False) as dag:
        CreateEventExportOperator(task_id="create_export", **op_kwargs)
    return dag_id, support.run_dag(dag)


def _state_of(dag_id: str, run: Any) -> str:
    return support.task_states(dag_id, run.run_id)[("create_export", -1)]


def test_a_failed_export_leaves_nothing(sim: Any) -> None:
    sim.next_exports_outcome("failed")
    dag_id, run = _run()
    assert _state_of(dag_id, run) == "failed"
    assert _leftovers(dag_id) == (0, 0)


def test_execution_timeout_on_the_last_try_leaves_nothing(sim: Any) -> None:
    sim.next_exports_outcome("stuck")
    dag_id, run = _run(execution_timeout=timedelta(seconds=1), timeout=60)
    assert _state_of(dag_id, run) == "failed"
    assert _leftovers(dag_id) == (0, 0)


def test_a_retry_re_attaches_through_the_task_state_store(sim: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """Try 1 is killed by execution_timeout while the export is still processing; try 2 waits for the
    same export instead of creating another, succeeds, and the state is gone (the success ending)."""
    from cometly_provider import pending

    seen: list[Any] = []
    original = pending.PendingExport.save

    def spy(self: pending.PendingExport, ref: Any) -> None:
        seen.append(self.store)
        original(self, ref)

    monkeypatch.setattr(pending.PendingExport, "save", spy)
    # Try 1 is cut at 3 s; the export completes at about 4 s, well within try 2's own 3 s.
    sim.update_config(processing_seconds=4.0)
    dag_id, run = _run(
        execution_timeout=timedelta(seconds=3), timeout=60, retries=1, retry_delay=timedelta(0)
    )
    assert _state_of(dag_id, run) == "success"
    assert len(sim.requests_for("export_create")) == 1  # re-attached, not created again
    assert seen
    assert seen[0] is not None, "the Task SDK's task_state_store was not used"
    assert _leftovers(dag_id) == (0, 0)


@pytest.mark.parametrize("reason", ["Trigger timeout", "Trigger failure"])
def test_deferral_timeout_and_trigger_failure_leave_nothing(
    sim: Any, monkeypatch: pytest.MonkeyPatch, reason: str
) -> None:
    """What the scheduler does when a deferral times out or its trigger fails: the task is resumed
    with ``next_method="__fail__"``; ``execute_complete`` never runs."""
    from airflow.sdk.definitions import dag as dag_module

    from cometly_provider.operators import export as export_module

    real_defer = export_module.defer_until_complete

    def defer_to_fail(task: Any, ref: Any, **kwargs: Any) -> None:
        original = task.defer

        def defer(**defer_kwargs: Any) -> None:
            defer_kwargs.update(method_name="__fail__", kwargs={"error": reason})
            original(**defer_kwargs)

        task.defer = defer
        real_defer(task, ref, **kwargs)

    monkeypatch.setattr(export_module, "defer_until_complete", defer_to_fail)
    monkeypatch.setattr(dag_module, "_run_inline_trigger", lambda trigger, ti: None)  # no event
    sim.next_exports_outcome("stuck")
    dag_id, run = _run(deferrable=True, timeout=60)
    assert _state_of(dag_id, run) == "failed"
    assert _leftovers(dag_id) == (0, 0)


def test_variable_fallback_before_airflow_3_3(sim: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """Without ``task_state_store`` in the context (Airflow < 3.3) a Variable holds the record, and is
    gone after the last try too."""
    from cometly_provider import pending

    original = pending.PendingExport.__init__
    used: list[str] = []

    def without_store(self: pending.PendingExport, context: Any, *args: Any) -> None:
        original(self, {k: v for k, v in context.items() if k != "task_state_store"}, *args)
        used.append(self.where)

    monkeypatch.setattr(pending.PendingExport, "__init__", without_store)
    sim.next_exports_outcome("stuck")
    dag_id, run = _run(execution_timeout=timedelta(seconds=1), timeout=60)
    assert _state_of(dag_id, run) == "failed"
    assert used
    assert used[0].startswith("Variable ")
    assert _leftovers(dag_id) == (0, 0)


def test_state_key_is_stable() -> None:
    # Renaming it would orphan the records of in-flight retries at upgrade time.
    assert PENDING_EXPORT_STATE_KEY == "cometly_pending_export"
