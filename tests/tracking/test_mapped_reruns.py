"""Clearing and re-running a mapped tracking run stores nothing new (real Airflow, simulator over HTTP).

``dag.test()`` with the same logical date and run_after replaces the run under the same run_id, as
clearing it does; the upstream then returns the same events reordered and re-chunked (and, in one case, with a
late arrival), so events land on other map indexes. In 0.1.0 the map index was part of the key:
3 leads -> 6 stored, 5 leads with a late arrival -> 7 stored.
"""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Any

import pytest

from cometly_provider.operators.track_event import TrackEventOperator
from tests.conftest import cometly_conn_uri
from tests.event_exports import run_dag, task_states, xcom_value

pytestmark = pytest.mark.usefixtures("airflow_db")

#: What the upstream returns; each test sets it before each run (dag.test runs tasks in-process).
UPSTREAM: dict[str, Any] = {}


def _leads(*names: str) -> list[dict[str, Any]]:
    # No order_id: only the idempotency key keeps these apart from their copies.
    return [
        {
            "event_name": "lead_generated",
            "email": f"{name}@example.com",
            "event_time": "2024-01-15T09:00:00Z",
        }
        for name in names
    ]


@pytest.fixture
def sim(cometly_simulator: Any, monkeypatch: pytest.MonkeyPatch) -> Any:
    monkeypatch.setenv(
        "AIRFLOW_CONN_COMETLY_DEFAULT",
        cometly_conn_uri(cometly_simulator.base_url, cometly_simulator.api_key, retry_min_wait=0.01),
    )
    return cometly_simulator


def _dag(mapped_over: str) -> Any:
    from airflow.sdk import DAG, task

    start = dt.datetime(2024, 1, 1, tzinfo=dt.UTC)
    with DAG(f"cometly_rerun_{mapped_over}_{uuid.uuid4().hex[:8]}", schedule=None, start_date=start) as dag:

        @task
        def upstream() -> list[Any]:
            return list(UPSTREAM["value"])

        partial = TrackEventOperator.partial(task_id="track", max_workers=2)
        if mapped_over == "events":
            partial.expand(events=upstream())
        else:
            partial.expand(event=upstream())
    return dag


def _run(dag: Any, value: list[Any]) -> tuple[str, list[dict[str, Any]]]:
    UPSTREAM["value"] = value
    run = run_dag(dag, run_after=dt.datetime(2024, 1, 16, tzinfo=dt.UTC))  # fixed: the run_id too
    assert run.state == "success", task_states(dag.dag_id, run.run_id)
    results = [xcom_value(dag.dag_id, "track", run.run_id, map_index=i) for i in range(len(value))]
    return run.run_id, results


def test_cleared_mapped_chunks_reordered_and_rechunked_store_nothing_new(sim: Any) -> None:
    dag = _dag("events")
    a, b, c = _leads("a", "b", "c")
    run_id, first = _run(dag, [[a, b], [c]])
    assert [r["sent"] for r in first] == [2, 1]
    assert len(sim.events) == 3

    again_id, again = _run(dag, [[c], [b], [a]])  # cleared: same run, other chunks and order
    assert again_id == run_id
    assert sum(r["sent"] for r in again) == 0
    assert sum(r["duplicates"] for r in again) == 3
    assert len(sim.events) == 3

    # Five leads, one arriving late and re-chunking the list: only the late one is new.
    d, e = _leads("d", "e")
    _run(dag, [[a, b], [c, d]])
    assert len(sim.events) == 4
    _, late = _run(dag, [[e, a], [b, c], [d]])
    assert [r["sent"] for r in late] == [1, 0, 0]
    assert len(sim.events) == 5
    assert len({ev["idempotency_key"] for ev in sim.events}) == 5


def test_cleared_one_event_per_instance_reordered_stores_nothing_new(sim: Any) -> None:
    dag = _dag("event")
    leads = _leads("a", "b", "c")
    _run(dag, leads)
    assert len(sim.events) == 3
    # Same leads in another order, spelled differently: other datetimes forms, padded strings.
    respelled = [
        {**leads[2], "event_time": "2024-01-15T10:00:00+01:00"},
        {**leads[0], "email": " a@example.com "},
        {**leads[1], "event_time": 1705309200},
    ]
    _, again = _run(dag, respelled)
    assert [r["duplicates"] for r in again] == [1, 1, 1]
    assert len(sim.events) == 3


def test_idempotency_fields_keep_a_corrected_row_one_conversion(sim: Any) -> None:
    from airflow.sdk import DAG, task

    start = dt.datetime(2024, 1, 1, tzinfo=dt.UTC)
    with DAG(f"cometly_natural_key_{uuid.uuid4().hex[:8]}", schedule=None, start_date=start) as dag:

        @task
        def upstream() -> list[Any]:
            return list(UPSTREAM["value"])

        TrackEventOperator.partial(task_id="track", idempotency_fields=["email", "event_time"]).expand(
            events=upstream()
        )

    purchase = {"event_name": "purchase", "email": "a@example.com", "event_time": 1705309200, "amount": 10}
    _run(dag, [[purchase]])
    _, again = _run(dag, [[{**purchase, "amount": 12.5}]])  # the amount was corrected upstream
    assert again[0]["duplicates"] == 1
    assert [ev["amount"] for ev in sim.events] == [10]
