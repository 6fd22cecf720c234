"""After a 429, the hook retries when the server's window resets, not a rounded-up second later."""

from __future__ import annotations

import time
from typing import Any

import pytest
import requests

from cometly_provider.hooks.cometly import CometlyHook
from tests.conftest import cometly_conn_uri

WINDOW, LIMIT = 3.0, 10


def _event(i: int) -> dict[str, Any]:
    return {
        "event_name": "purchase",
        "email": f"r{i}@example.com",
        "amount": 1.0,
        "idempotency_key": f"r-{i}",
    }


@pytest.mark.cometly_simulator(window_seconds=WINDOW, rate_limits={"track": LIMIT})
def test_retry_after_a_429_goes_when_the_window_resets(
    cometly_simulator: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(
        "AIRFLOW_CONN_COMETLY_DEFAULT",
        cometly_conn_uri(
            cometly_simulator.base_url,
            cometly_simulator.api_key,
            rate_limit_window_seconds=WINDOW,
            rate_limits={"track": LIMIT},
        ),
    )
    hook = CometlyHook()
    hook.track_event(_event(0))  # opens the server's window; the limiter anchors its reset on it
    time.sleep(0.8)
    # "Another process" spends the rest of the window's budget.
    url = cometly_simulator.api_base + "/events/track"
    auth = {"Authorization": f"Bearer {cometly_simulator.api_key}"}
    for i in range(1, LIMIT):
        assert requests.post(url, json=_event(100 + i), headers=auth, timeout=5).status_code == 202

    # 429 with Retry-After: 3 (2.2 s rounded up to whole seconds), then the retry.
    assert hook.track_event(_event(1))["status"] == 202

    track = [r for r in cometly_simulator.requests if r.endpoint == "track"]
    assert [r.status for r in track] == [202] * LIMIT + [429, 202]
    window_start, retry_at = track[0].timestamp, track[-1].timestamp
    # The window reset 3.0 s after its first request. Sleeping Retry-After from the 429 would
    # retry ~3.85 s after it; the limiter's anchored estimate retries right after the reset
    # (plus up to 2% of the window of jitter).
    assert WINDOW <= retry_at - window_start < WINDOW + 0.5, retry_at - window_start
    hook.close()
