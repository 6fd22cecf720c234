"""Clearing a mapped tracking run on a real deployment stores nothing new.

The scheduler's LocalExecutor runs the mapped ``TrackEventOperator`` instances in parallel task
processes. After the run succeeds it is cleared through the REST API; the upstream tasks run again
(try 2) and return the same leads reordered and re-chunked (three chunks instead of two), and the
single events reordered and respelled, so every event lands on another map index than before.
The events carry no ``order_id``: only the idempotency key keeps the API from storing them twice.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from tests.deployment.harness import Deployment

DAG_ID = "i11_mapped_clear"
TAG = "i11-mapped-clear"
DAG = f'''
from __future__ import annotations

from typing import Any

import pendulum
from airflow.sdk import DAG, task

from cometly_provider.operators.track_event import TrackEventOperator

LEADS = [
    {{"event_name": "lead_generated", "email": f"{TAG}-{{i}}@example.com", "event_time": 1705309200 + i}}
    for i in range(5)
]

with DAG("{DAG_ID}", schedule=None, start_date=pendulum.datetime(2024, 1, 1, tz="UTC"), catchup=False):

    @task
    def chunks(ti: Any = None) -> list[list[dict[str, Any]]]:
        if ti.try_number == 1:
            return [LEADS[:2], LEADS[2:]]
        return [LEADS[4:], LEADS[2:4][::-1], LEADS[1::-1]]

    @task
    def singles(ti: Any = None) -> list[dict[str, Any]]:
        signups = [{{**lead, "event_name": "sign_up"}} for lead in LEADS[:3]]
        if ti.try_number == 1:
            return signups
        # Reordered and respelled: the same instants as ISO strings with an offset, padded emails.
        paris = [pendulum.from_timestamp(s["event_time"], "Europe/Paris").isoformat() for s in signups]
        return [
            {{**s, "email": " " + s["email"], "event_time": t}}
            for s, t in reversed(list(zip(signups, paris)))
        ]

    TrackEventOperator.partial(task_id="track_chunk", max_workers=2).expand(events=chunks())
    TrackEventOperator.partial(task_id="track_each").expand(event=singles())
'''


def _mine(deployment: Deployment) -> list[dict]:
    return [e for e in deployment.simulator.events if str(e.get("email", "")).strip().startswith(TAG)]


def test_cleared_mapped_run_with_a_rechunked_upstream_stores_nothing_new(deployment: Deployment) -> None:
    deployment.add_dag(DAG, f"{DAG_ID}.py")
    run_id = deployment.trigger(DAG_ID)
    assert deployment.wait_for_run(DAG_ID, run_id, timeout=180) == "success"
    assert len(_mine(deployment)) == 8
    assert [deployment.xcom(DAG_ID, run_id, "track_chunk", map_index=i)["sent"] for i in range(2)] == [2, 3]

    deployment.clear_run(DAG_ID, run_id)
    assert deployment.wait_for_run(DAG_ID, run_id, timeout=180) == "success"
    tis = {(t["task_id"], t["map_index"]): t for t in deployment.task_instances(DAG_ID, run_id)}
    assert tis[("chunks", -1)]["try_number"] == 2
    assert {i for (task, i) in tis if task == "track_chunk"} == {0, 1, 2}  # re-chunked: 3 instances
    chunked = [deployment.xcom(DAG_ID, run_id, "track_chunk", map_index=i) for i in range(3)]
    each = [deployment.xcom(DAG_ID, run_id, "track_each", map_index=i) for i in range(3)]
    assert [r["sent"] for r in chunked + each] == [0] * 6
    assert sum(r["duplicates"] for r in chunked) == 5
    assert [r["duplicates"] for r in each] == [1, 1, 1]
    stored = _mine(deployment)
    assert len(stored) == 8
    assert len({e["idempotency_key"] for e in stored}) == 8
