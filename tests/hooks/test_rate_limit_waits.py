"""A 429 is a wait, not a failure; every wait is capped; the limit is learnt from the server.

Over real HTTP against the simulator (its fault injection answers 429 with any ``Retry-After``),
for the sync hook and for the async path triggers use.
"""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Any

import pytest

from cometly_provider.exceptions import CometlyNotFoundError, CometlyRateLimitError
from cometly_provider.hooks.cometly import CometlyHook
from cometly_provider.hooks.rate_limit import EndpointRateLimiter, _ServerBudget
from tests.conftest import cometly_conn_uri


def _event(i: int) -> dict[str, Any]:
    return {
        "event_name": "purchase",
        "email": f"w{i}@example.com",
        "amount": 1.0,
        "idempotency_key": f"w-{i}",
    }


def _connect(monkeypatch: pytest.MonkeyPatch, sim: Any, **extra: Any) -> None:
    monkeypatch.setenv("AIRFLOW_CONN_COMETLY_DEFAULT", cometly_conn_uri(sim.base_url, sim.api_key, **extra))


def test_429s_do_not_consume_attempts(cometly_simulator: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    # Six 429s in a row with max_attempts=2: on 0.1.0 the second 429 failed the event.
    _connect(monkeypatch, cometly_simulator, max_attempts=2, retry_min_wait=0.01, retry_max_wait=0.05)
    cometly_simulator.inject("track", "status", code=429, retry_after=1, times=6)
    hook = CometlyHook()
    assert hook.track_event(_event(0))["status"] == 202
    assert [r.status for r in cometly_simulator.requests_for("track")] == [429] * 6 + [202]
    hook.close()


def test_other_failures_still_count_attempts(cometly_simulator: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    _connect(monkeypatch, cometly_simulator, max_attempts=3, retry_min_wait=0.01, retry_max_wait=0.05)
    cometly_simulator.inject("track", "status", code=429, retry_after=1, times=4)
    cometly_simulator.inject("track", "status", code=503, times=None, after=4)
    hook = CometlyHook()
    with pytest.raises(Exception, match="503"):
        hook.track_event(_event(0))
    # 4 x 429 (free), then 3 attempts that failed with 503.
    assert [r.status for r in cometly_simulator.requests_for("track")] == [429] * 4 + [503] * 3
    hook.close()


def test_rate_limit_timeout_bounds_the_waiting(
    cometly_simulator: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    _connect(monkeypatch, cometly_simulator, rate_limit_timeout=1.5, retry_min_wait=0.05, retry_max_wait=0.2)
    cometly_simulator.inject("track", "status", code=429, retry_after=1, times=None)
    hook = CometlyHook()
    started = time.monotonic()
    with pytest.raises(CometlyRateLimitError):
        hook.track_event(_event(0))
    assert 1.2 < time.monotonic() - started < 3.0
    hook.close()


def test_retry_max_wait_caps_retry_after_for_every_request(
    cometly_simulator: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    # 0.1.0: a Retry-After of 120 held every request to the Space for 120 s despite retry_max_wait=2.
    _connect(monkeypatch, cometly_simulator, retry_min_wait=0.05, retry_max_wait=0.5)
    cometly_simulator.inject("track", "status", code=429, retry_after=120, times=1)
    hook = CometlyHook()
    started = time.monotonic()
    assert hook.track_event(_event(0))["status"] == 202  # the 429'd request itself
    other: dict[str, Any] = {}
    thread = threading.Thread(target=lambda: other.update(hook.track_event(_event(1))))
    thread.start()  # a request the gate holds since the 429
    thread.join(10)
    assert other.get("status") == 202
    assert time.monotonic() - started < 3.0
    hook.close()


def test_async_retry_after_is_capped_too(cometly_simulator: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    _connect(monkeypatch, cometly_simulator, retry_min_wait=0.05, retry_max_wait=0.5)
    export_id = CometlyHook().create_event_export(date="2024-01-15")["export_id"]
    cometly_simulator.inject("export_status", "status", code=429, retry_after=120, times=2)
    started = time.monotonic()
    result = asyncio.run(CometlyHook().aget_event_export(export_id))
    assert result["export_id"] == export_id
    # Per 429: its own wait and the gate's hold, each capped at 0.5 s; nowhere near 2 x 120 s.
    assert time.monotonic() - started < 6.0


def test_async_path_never_runs_past_the_callers_deadline(
    cometly_simulator: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A trigger passes its end_time: waits for a Retry-After of 30 (retry_max_wait 60) must stop there.
    _connect(monkeypatch, cometly_simulator)
    export_id = CometlyHook().create_event_export(date="2024-01-15")["export_id"]
    cometly_simulator.inject("export_status", "status", code=429, retry_after=30, times=None)
    started = time.monotonic()
    with pytest.raises(CometlyRateLimitError):
        asyncio.run(CometlyHook().aget_event_export(export_id, deadline=time.time() + 1.0))
    assert time.monotonic() - started < 1.5


def test_a_stale_answer_does_not_reopen_the_gate_during_retry_after() -> None:
    # A 202 sent before the 429'd request, answered after the 429 with plenty remaining, is the
    # budget as it was; 0.1.0 read it as a fresh window and released the held requests at once.
    budget = _ServerBudget(limit=1000, window_seconds=60.0)
    sent_before = time.monotonic()
    budget.observe(400, sent_at=sent_before)
    sent_429 = time.monotonic()
    budget.observe(0, retry_after=30.0, sent_at=sent_429)
    budget.observe(900, sent_at=sent_before)
    assert budget.holding()
    assert budget.delay() > 29.0
    # An answer to a request sent after the 429'd one showing a fresh budget does reopen it.
    budget.observe(990, sent_at=time.monotonic())
    assert not budget.holding()


def test_held_requests_leave_at_spread_times_after_a_reset() -> None:
    budget = _ServerBudget(limit=1000, window_seconds=10.0)
    budget.observe(0, retry_after=5.0)
    delays = [budget.delay() for _ in range(50)]
    assert max(delays) - min(delays) > 0.05  # up to 2% of the window (0.2 s) of jitter
    assert len({round(d, 3) for d in delays}) > 40  # not the same millisecond


def test_the_limit_is_learnt_from_x_ratelimit_limit(
    cometly_simulator: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    cometly_simulator.update_config(rate_limits={"export_status": 3})
    _connect(monkeypatch, cometly_simulator)
    hook = CometlyHook()
    limiter = hook.rate_limiter("export_status")
    assert limiter is not None
    assert limiter.limit == 30  # the documented figure, until the server says otherwise
    with pytest.raises(CometlyNotFoundError):  # export 0: an answer with the limit headers
        hook.get_event_export(0)
    assert limiter.limit == 3
    hook.close()


@pytest.mark.parametrize(("override", "expected"), [(10, 3), (2, 2)])
def test_an_explicit_limit_caps_what_is_learnt(
    cometly_simulator: Any, monkeypatch: pytest.MonkeyPatch, override: int, expected: int
) -> None:
    cometly_simulator.update_config(rate_limits={"export_status": 3})
    _connect(monkeypatch, cometly_simulator, rate_limits={"export_status": override})
    hook = CometlyHook()
    with pytest.raises(CometlyNotFoundError):  # export 0: an answer with the limit headers
        hook.get_event_export(0)
    limiter = hook.rate_limiter("export_status")
    assert limiter is not None
    assert limiter.limit == expected
    hook.close()


def test_a_learnt_lower_limit_paces_the_requests() -> None:
    limiter = EndpointRateLimiter("export_status", limit=30, window_seconds=1.0)
    limiter.observe(29, limit=3)
    started = time.monotonic()
    for _ in range(4):
        limiter.acquire()
    assert time.monotonic() - started >= 0.9  # the 4th of a 3-per-second limit waits a window


def test_unknown_backend_is_rejected_naming_the_field(
    cometly_simulator: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    _connect(monkeypatch, cometly_simulator, rate_limit_backend="memcached")
    with pytest.raises(ValueError, match=r"rate_limit_backend='memcached'.*allowed: local, redis"):
        CometlyHook().track_event(_event(0))
    assert cometly_simulator.requests == []
