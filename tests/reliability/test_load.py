"""Load: four track tasks in four processes share one Space; together they stay under its limit.

Each task runs ``TrackEventOperator.execute`` in its own Python process (its own client-side
limiter, as on four Celery workers); all four are released at the same instant against one
simulator subprocess with the track limit at the documented 1000 per window, the window scaled
to a few seconds. No process knows about the others: only the server's ``X-RateLimit-Remaining``
and ``429 Retry-After`` answers make them back off. The harness is the load benchmark's
(``bench/track_load.py``), run here at a smaller size.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parents[2]
TASKS, EVENTS_PER_TASK, LIMIT, WINDOW, MAX_WORKERS = 4, 500, 1000, 4.0, 8


def _harness() -> ModuleType:
    bench = str(ROOT / "bench")
    if bench not in sys.path:
        sys.path.append(bench)  # for the harness's own `from _report import ...`
    spec = importlib.util.spec_from_file_location(
        "cometly_bench_track_load", ROOT / "bench" / "track_load.py"
    )
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses resolve their module by name
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_four_processes_share_one_space_without_losing_an_event(tmp_path: Path) -> None:
    harness = _harness()
    result = harness.run_load(
        tasks=TASKS,
        events_per_task=EVENTS_PER_TASK,
        limit=LIMIT,
        window=WINDOW,
        max_workers=MAX_WORKERS,
        workdir=tmp_path,
    )
    logs = "\n".join(f"{task}: {path}" for task, path in result.logs.items())

    # Every task finished and reports its whole batch sent, nothing failed.
    for task in result.task_results:
        assert "error" not in task, f"{task['task_id']}: {task.get('error')}\n{logs}"
        summary = task["summary"]
        assert summary["sent"] == EVENTS_PER_TASK, (task["task_id"], summary)
        assert summary["failed"] == 0, (task["task_id"], summary, task.get("failed_events"))
        assert summary["duplicates"] == 0, (task["task_id"], summary)

    # Every event stored exactly once: count, idempotency keys and emails all distinct.
    expected = TASKS * EVENTS_PER_TASK
    assert result.stored == expected
    assert result.unique_keys == expected
    assert result.unique_emails == expected
    assert result.statuses.get(202, 0) == expected  # no request stored twice or lost in between

    # Together under the limit: the server accepted at most LIMIT per window, so the 2,000 events
    # needed at least two windows (they did not all go through at once).
    assert all(count <= LIMIT for _, count in result.windows), result.windows
    assert len(result.windows) >= expected // LIMIT

    # They back off: a process learns that the budget is spent from its own answers, so when it
    # runs out each process may have up to max_workers requests already on their way, answered 429;
    # after that its gate holds it until the window resets. Hence at most tasks x max_workers 429s
    # per window (32 here), never a retry storm. Zero is not achievable when four independent
    # processes spend one budget at full speed, and 429s cost nothing but a round trip.
    bound = TASKS * MAX_WORKERS * len(result.windows)
    assert result.count_429 <= bound, (result.count_429, bound, result.windows)
    assert set(result.statuses) <= {202, 429}, result.statuses
