"""Scenario 3: eight mapped TrackEventOperator instances in parallel on one Space, then a clear.

``deployment_track_mapped`` (tests/deployment/dags) sends 120 purchase events without
``order_id`` in 8 mapped chunks through a connection whose Space allows 40 track requests per 6 s
window: the 8 task processes must share that budget, and every event must be stored once. Then
the whole run is cleared through the REST API; on its second try the upstream task returns the
same events in another order and in other chunks. Only the idempotency keys can de-duplicate
them, so they must not depend on the chunk (map_index) an event landed in: 0 new events.
"""

from __future__ import annotations

from collections import Counter
from datetime import datetime
from typing import TYPE_CHECKING, Any

from cometly_provider.testing import DEFAULT_RATE_LIMITS
from tests.deployment.dags.deployment_test_dags import TRACK_CHUNKS, TRACK_EVENTS, TRACK_TAG, tracked_events
from tests.deployment.harness import WINDOW_SECONDS
from tests.reliability.invariants import content

if TYPE_CHECKING:
    from tests.deployment.harness import Deployment

DAG_ID = "deployment_track_mapped"
TRACK_LIMIT = 40  # per WINDOW_SECONDS: the 120 events need three windows


def _stored(deployment: Deployment, since: int) -> list[dict[str, Any]]:
    """This test's events among everything the session's simulator stored after the first ``since``
    (other tests of the session run the same DAG, e.g. on a Redis bucket)."""
    return [e for e in deployment.simulator.events[since:] if str(e.get("email", "")).startswith(TRACK_TAG)]


def _most_at_once(tis: list[dict[str, Any]]) -> int:
    """The largest number of task instances running at the same moment."""
    at = datetime.fromisoformat
    edges = sorted([(at(t["start_date"]), 1) for t in tis] + [(at(t["end_date"]), -1) for t in tis])
    running = most = 0
    for _, step in edges:  # at equal times an end (-1) sorts first: touching is not overlapping
        running += step
        most = max(most, running)
    return most


def _summaries(deployment: Deployment, run_id: str) -> list[dict[str, int]]:
    return [deployment.xcom(DAG_ID, run_id, "track_chunk", map_index=i) for i in range(TRACK_CHUNKS)]


def test_mapped_tracking_in_parallel_stores_each_event_once_even_after_a_reordered_clear(
    deployment: Deployment,
) -> None:
    sim = deployment.simulator
    sim.update_config(rate_limits={**DEFAULT_RATE_LIMITS, "track": TRACK_LIMIT})
    deployment.set_connection(
        "cometly_contended",
        "cometly",
        host=sim.base_url,
        password=sim.api_key,
        extra={
            "rate_limit_window_seconds": WINDOW_SECONDS,
            "rate_limits": {"track": TRACK_LIMIT},
            "retry_min_wait": 0.1,
            "retry_max_wait": WINDOW_SECONDS,
        },
    )
    sent = tracked_events()
    assert all("order_id" not in event for event in sent)  # only the idempotency key de-duplicates

    since = len(sim.events)
    run_id = deployment.trigger(DAG_ID)
    assert deployment.wait_for_run(DAG_ID, run_id, timeout=180) == "success"
    tis = [t for t in deployment.task_instances(DAG_ID, run_id) if t["task_id"] == "track_chunk"]
    assert [(t["map_index"], t["state"], t["try_number"]) for t in tis] == [
        (i, "success", 1) for i in range(TRACK_CHUNKS)
    ]
    # They really ran at the same time: separate processes, most of them overlapping in time (the
    # first may finish before the last has started: the budget lets the first chunks through at once).
    assert len({t["pid"] for t in tis}) == TRACK_CHUNKS
    assert _most_at_once(tis) >= TRACK_CHUNKS // 2
    first = _summaries(deployment, run_id)
    assert sum(s["sent"] for s in first) == TRACK_EVENTS
    assert sum(s["failed"] for s in first) == 0
    stored = _stored(deployment, since)
    assert len(stored) == TRACK_EVENTS
    assert Counter(content(e) for e in stored) == Counter(content(e) for e in sent)
    assert len({e["idempotency_key"] for e in stored}) == TRACK_EVENTS

    deployment.clear_run(DAG_ID, run_id)
    assert deployment.wait_for_run(DAG_ID, run_id, timeout=180) == "success"
    tis = [t for t in deployment.task_instances(DAG_ID, run_id) if t["task_id"] == "track_chunk"]
    assert [(t["state"], t["try_number"]) for t in tis] == [("success", 2)] * TRACK_CHUNKS
    second = _summaries(deployment, run_id)
    # The upstream really re-chunked: the chunks' sizes differ from the first run's.
    assert [s["total"] for s in second] != [s["total"] for s in first]
    assert sum(s["total"] for s in second) == TRACK_EVENTS
    assert sum(s["failed"] for s in second) == 0
    assert sum(s["duplicates"] for s in second) == TRACK_EVENTS
    assert len(_stored(deployment, since)) == TRACK_EVENTS  # 0 new events
