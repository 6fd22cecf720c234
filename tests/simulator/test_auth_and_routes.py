"""Authentication (README.md "Authentication"), routing, and the order of checks."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest
import requests

if TYPE_CHECKING:
    from cometly_provider.testing import CometlySimulator
    from tests.simulator.conftest import Api

PURCHASE = {"event_name": "purchase", "email": "customer@example.com", "amount": 99.99}


def test_valid_key_is_accepted(api: Api) -> None:
    response = api.track(PURCHASE)
    assert response.status_code == 202
    assert response.json() == {"status": 202, "message": "Event queued for processing."}


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"Authorization": "Bearer wrong-key"},
        {"Authorization": "Bearer "},
        {"Authorization": "test-api-key"},
        {"Authorization": "Basic test-api-key"},
    ],
    ids=["missing", "wrong", "empty", "no-scheme", "basic"],
)
def test_missing_or_invalid_key_is_401(sim: CometlySimulator, headers: dict[str, str]) -> None:
    for method, path, body in [
        ("POST", "/events/track", PURCHASE),
        ("POST", "/events/exports", {"date": "2024-01-15"}),
        ("GET", "/events/exports/1", None),
    ]:
        response = requests.request(method, sim.api_base + path, json=body, headers=headers, timeout=5)
        assert response.status_code == 401
        assert response.json() == {"message": "Unauthenticated."}
        assert "X-RateLimit-Limit" in response.headers
    assert sim.events == []


def test_inactive_key_is_403(api: Api) -> None:
    api.sim.config.inactive_api_keys = ["lapsed-key"]
    response = api.track(PURCHASE, key="lapsed-key")
    assert response.status_code == 403
    assert isinstance(response.json()["message"], str)
    assert response.json()["message"]
    assert api.create_export({"date": "2024-01-15"}, key="lapsed-key").status_code == 403
    assert api.status(1, key="lapsed-key").status_code == 403
    assert api.sim.events == []
    assert api.sim.exports == {}


def test_auth_is_checked_before_validation_and_lookup(api: Api) -> None:
    assert api.track({"event_name": "nope"}, key="wrong").status_code == 401
    assert api.create_export({"date": "yesterday"}, key="wrong").status_code == 401
    assert api.status(12345, key="wrong").status_code == 401
    assert api.status("abc", key="wrong").status_code == 401


def test_unknown_export_id_is_404(api: Api) -> None:
    for export_id in (1, 999, "abc", "1.5", "-1"):
        response = api.status(export_id)
        assert response.status_code == 404, export_id
        assert response.json() == {"message": "Export not found."}


def test_unknown_route_and_wrong_method(sim: CometlySimulator) -> None:
    response = requests.get(sim.api_base + "/nope", timeout=5)
    assert response.status_code == 404
    assert response.json()["message"]
    response = requests.get(sim.api_base + "/events/track", timeout=5)
    assert response.status_code == 405
    assert "POST" in response.json()["message"]
    response = requests.get(sim.base_url + "/", timeout=5)
    assert response.status_code == 404


def test_json_error_bodies_always_have_message(api: Api) -> None:
    responses = [
        api.track(PURCHASE, key="wrong"),
        api.track({}),
        api.status(42),
        api.session.post(api.url("/events/track"), data="{not json", headers=api.headers, timeout=5),
    ]
    for response in responses:
        assert response.headers["Content-Type"].startswith("application/json")
        assert isinstance(response.json()["message"], str)


def test_request_log_keeps_headers_and_body(api: Api) -> None:
    api.track(PURCHASE)
    (record,) = api.sim.requests
    assert record.method == "POST"
    assert record.path == "/public-api/v1/events/track"
    assert record.endpoint == "track"
    assert record.status == 202
    assert record.header("authorization") == f"Bearer {api.sim.api_key}"
    assert record.json == PURCHASE
    assert api.sim.status_counts("track") == {202: 1}


def test_keep_alive_serves_many_requests_on_one_connection(api: Api) -> None:
    for _ in range(20):
        assert api.track(PURCHASE).status_code == 202
    assert len(api.sim.events) == 20
