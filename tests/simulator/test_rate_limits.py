"""Rate limits (README.md "Rate limits"): per key, per endpoint, headers on every response, 429."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    import requests

    from tests.simulator.conftest import Api

EVENT = {"event_name": "purchase", "email": "customer@example.com"}


def _limit(response: requests.Response) -> tuple[int, int]:
    return int(response.headers["X-RateLimit-Limit"]), int(response.headers["X-RateLimit-Remaining"])


def test_reference_limits_are_announced(api: Api) -> None:
    # README.md: track 1000 / min, exports 5 / min, export status 30 / min.
    assert _limit(api.track(EVENT)) == (1000, 999)
    assert _limit(api.create_export({"date": "2024-01-15"})) == (5, 4)
    assert _limit(api.status(1)) == (30, 29)


def test_every_api_response_carries_the_headers(api: Api) -> None:
    responses = {
        202: api.track(EVENT),
        401: api.track(EVENT, key="wrong"),
        422: api.track({}),
        404: api.status(999),
    }
    for status, response in responses.items():
        assert response.status_code == status
        assert "X-RateLimit-Limit" in response.headers
        assert "X-RateLimit-Remaining" in response.headers


def test_remaining_counts_down_and_includes_rejected_requests(api: Api) -> None:
    remaining = [_limit(api.track(EVENT))[1], _limit(api.track({}))[1], _limit(api.track(EVENT))[1]]
    assert remaining == [999, 998, 997]


@pytest.mark.cometly_simulator(window_seconds=1.0, rate_limits={"track": 3})
def test_over_the_limit_is_429_with_retry_after_then_recovers(api: Api) -> None:
    statuses = [api.track(EVENT).status_code for _ in range(3)]
    assert statuses == [202, 202, 202]
    refused = api.track(EVENT)
    assert refused.status_code == 429
    assert refused.json() == {"message": "Too Many Attempts."}
    assert refused.headers["Retry-After"] == "1"  # whole seconds, at least 1
    assert _limit(refused) == (3, 0)
    assert len(api.sim.events) == 3  # the refused event was not processed
    time.sleep(1.05)
    assert api.track(EVENT).status_code == 202


@pytest.mark.cometly_simulator(window_seconds=3.0, rate_limits={"track": 1})
def test_retry_after_is_the_rest_of_the_window_rounded_up(api: Api) -> None:
    api.track(EVENT)
    time.sleep(0.5)
    assert api.track(EVENT).headers["Retry-After"] == "3"  # 2.5 s left -> 3


@pytest.mark.cometly_simulator(window_seconds=1.0)
def test_export_create_allows_five_per_window(api: Api) -> None:
    statuses = [api.create_export({"date": "2024-01-15"}).status_code for _ in range(6)]
    assert statuses == [202] * 5 + [429]
    assert len(api.sim.exports) == 5


@pytest.mark.cometly_simulator(window_seconds=1.0, rate_limits={"track": 2})
def test_refused_requests_do_not_extend_the_window(api: Api) -> None:
    api.track(EVENT)
    api.track(EVENT)
    for _ in range(5):
        assert api.track(EVENT).status_code == 429
    time.sleep(1.05)
    assert [api.track(EVENT).status_code for _ in range(3)] == [202, 202, 429]


@pytest.mark.cometly_simulator(window_seconds=5.0, rate_limits={"track": 1, "export_status": 2})
def test_limits_are_per_endpoint(api: Api) -> None:
    assert api.track(EVENT).status_code == 202
    assert api.track(EVENT).status_code == 429
    assert [api.status(1).status_code for _ in range(3)] == [404, 404, 429]


@pytest.mark.cometly_simulator(window_seconds=5.0, rate_limits={"track": 1}, inactive_api_keys=["other-key"])
def test_limits_are_per_key(api: Api) -> None:
    assert api.track(EVENT).status_code == 202
    assert api.track(EVENT).status_code == 429
    assert api.track(EVENT, key="other-key").status_code == 403  # another Space's own budget


@pytest.mark.cometly_simulator(rate_limiting_enabled=False, rate_limits={"track": 2})
def test_rate_limiting_can_be_disabled(api: Api) -> None:
    assert [api.track(EVENT).status_code for _ in range(5)] == [202] * 5


def test_config_changes_apply_to_later_requests(api: Api) -> None:
    api.sim.config.window_seconds = 1.0
    api.sim.config.rate_limits["track"] = 1
    assert api.track(EVENT).status_code == 202
    assert api.track(EVENT).status_code == 429


@pytest.mark.cometly_simulator(rate_limits={"export_status": 1})
def test_downloads_are_not_rate_limited(api: Api) -> None:
    export_id = api.export_id({"date": "2024-01-15"})
    deadline = time.monotonic() + 10
    while api.sim.exports[export_id].status != "completed":  # the Python handle is not rate limited
        assert time.monotonic() < deadline
        time.sleep(0.02)
    body = api.status(export_id).json()
    assert body["status"] == "completed"
    for _ in range(5):
        assert api.download(body["download_url"]).status_code == 200
    assert api.status(export_id).status_code == 429
