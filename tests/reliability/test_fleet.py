"""Fleet: task processes sharing one Space under contention lose no event, with and without Redis.

On Airflow 3 every task instance is its own process with its own hook, so a fleet is N limiters on
one Space unless they share a bucket. Each case runs ``TrackEventOperator.execute`` in TASKS
separate processes released at the same instant against one simulator subprocess, at a limit far
below what their threads could send (the harness of ``bench/track_load.py``; 0.1.0 failed events
here because 429s used up the attempts). With ``"rate_limit_backend": "redis"`` they consume one
bucket on a real Redis server, which is killed mid-run here (the Redis bucket shared by task
processes a real scheduler runs in parallel is ``tests/deployment/test_fleet_redis.py``).
"""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from tests.redis_server import spawn_redis
from tests.reliability.test_load import _harness

TASKS, EVENTS_PER_TASK, LIMIT, WINDOW, MAX_WORKERS = 6, 30, 20, 1.0, 4
REDIS_EXTRA = {"rate_limit_backend": "redis", "redis_conn_id": "redis_default"}
FALLBACK_WARNING = "the shared Redis bucket (redis_conn_id='redis_default') is unavailable"


def _run(tmp_path: Path, *, extra: dict[str, Any] | None = None, env: dict[str, str] | None = None) -> Any:
    return _harness().run_load(
        tasks=TASKS,
        events_per_task=EVENTS_PER_TASK,
        limit=LIMIT,
        window=WINDOW,
        max_workers=MAX_WORKERS,
        workdir=tmp_path,
        extra=extra,
        env=env,
    )


def _assert_no_event_lost(result: Any) -> None:
    logs = "\n".join(f"{task}: {path}" for task, path in result.logs.items())
    for task in result.task_results:
        assert "error" not in task, f"{task['task_id']}: {task.get('error')}\n{logs}"
        assert task["summary"]["sent"] == EVENTS_PER_TASK, (task["task_id"], task["summary"])
        assert task["summary"]["failed"] == 0, (task["task_id"], task.get("failed_events"))
    expected = TASKS * EVENTS_PER_TASK
    assert result.stored == result.unique_keys == result.unique_emails == expected
    assert result.statuses.get(202, 0) == expected
    assert all(count <= LIMIT for _, count in result.windows), result.windows


def _redis_env(server: Any) -> dict[str, str]:
    return {"AIRFLOW_CONN_REDIS_DEFAULT": json.dumps({"conn_type": "redis", **server.connection})}


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_task_processes_with_local_limiters_lose_no_event(tmp_path: Path) -> None:
    result = _run(tmp_path)
    _assert_no_event_lost(result)
    assert result.count_429 > 0, "no contention: the case proves nothing"


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_redis_going_down_mid_run_stops_nothing(tmp_path: Path) -> None:
    with spawn_redis(tmp_path) as server:
        killer = threading.Thread(target=lambda: _kill_once_tracking_started(server, tmp_path))
        killer.start()
        result = _run(tmp_path, extra=REDIS_EXTRA, env=_redis_env(server))
        killer.join()
    _assert_no_event_lost(result)
    # A task that finished its batch before Redis died never needed the fallback (on a quiet
    # machine some do): each warns at most once, and the ones still sending did fall back.
    warned = {task: Path(path).read_text().count(FALLBACK_WARNING) for task, path in result.logs.items()}
    assert all(count <= 1 for count in warned.values()), warned
    assert sum(warned.values()) >= 1, warned


def _kill_once_tracking_started(server: Any, workdir: Path) -> None:
    """Kill Redis one window after every task was released (each wrote its ready file)."""
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and len(list(workdir.glob("*.ready"))) < TASKS:
        time.sleep(0.05)
    time.sleep(WINDOW)
    server.stop()
