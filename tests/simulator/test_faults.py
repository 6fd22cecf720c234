"""Fault injection: status storms, resets, delays, cut downloads, forced expiry."""

from __future__ import annotations

import http.client
import time
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import pytest
import requests

if TYPE_CHECKING:
    from cometly_provider.testing import CometlySimulator
    from tests.simulator.conftest import Api

pytestmark = pytest.mark.cometly_simulator(queued_seconds=0, processing_seconds=0)

EVENT = {"event_name": "purchase", "email": "customer@example.com"}


def _statuses(api: Api, n: int) -> list[int]:
    return [api.track(EVENT).status_code for _ in range(n)]


def test_status_burst_then_recovery(api: Api) -> None:
    api.sim.inject("track", "status", code=503, times=2)
    first = api.track(EVENT)
    assert first.status_code == 503
    assert first.json()["message"]
    assert "X-RateLimit-Limit" in first.headers
    assert _statuses(api, 2) == [503, 202]
    assert len(api.sim.events) == 1  # faulted requests were not processed
    assert [r.fault for r in api.sim.requests_for("track")] == ["status", "status", None]


def test_injected_429_carries_retry_after(api: Api) -> None:
    api.sim.inject("track", "status", code=429, retry_after=7)
    response = api.track(EVENT)
    assert response.status_code == 429
    assert response.headers["Retry-After"] == "7"
    assert response.headers["X-RateLimit-Remaining"] == "0"
    assert response.json() == {"message": "Too Many Attempts."}


def test_injected_responses_do_not_spend_the_rate_limit(api: Api) -> None:
    api.sim.inject("track", "status", code=500, times=3)
    _statuses(api, 3)
    assert api.track(EVENT).headers["X-RateLimit-Remaining"] == "999"


@pytest.mark.parametrize("code", [500, 502, 503, 504])
def test_5xx_codes(api: Api, code: int) -> None:
    api.sim.inject("export_create", "status", code=code)
    response = api.create_export({"date": "2024-01-15"})
    assert response.status_code == code
    assert api.sim.exports == {}


def test_raw_html_body_like_a_load_balancer(api: Api) -> None:
    api.sim.inject("track", "status", code=502, body="<html><body>502 Bad Gateway</body></html>")
    response = api.track(EVENT)
    assert response.status_code == 502
    assert response.headers["Content-Type"].startswith("text/html")
    assert "Bad Gateway" in response.text


def test_times_none_lasts_until_cleared(api: Api) -> None:
    api.sim.inject("track", "status", code=503, times=None)
    assert _statuses(api, 4) == [503] * 4
    api.sim.clear_faults()
    assert _statuses(api, 1) == [202]


def test_after_skips_the_first_matching_requests(api: Api) -> None:
    api.sim.inject("track", "status", code=500, after=2, times=1)
    assert _statuses(api, 4) == [202, 202, 500, 202]


def test_every_makes_a_flapping_endpoint(api: Api) -> None:
    api.sim.inject("track", "status", code=503, every=2, times=None)
    assert _statuses(api, 6) == [202, 503, 202, 503, 202, 503]


def test_faults_match_their_endpoint_only(api: Api) -> None:
    api.sim.inject("export_status", "status", code=500, times=None)
    assert api.track(EVENT).status_code == 202
    assert api.status(1).status_code == 500


def test_star_matches_every_endpoint(api: Api) -> None:
    api.sim.inject("*", "status", code=503, times=None)
    assert api.track(EVENT).status_code == 503
    assert api.create_export({"date": "2024-01-15"}).status_code == 503
    assert api.status(1).status_code == 503


def test_faults_are_checked_before_auth(api: Api) -> None:
    api.sim.inject("track", "status", code=503)
    assert api.track(EVENT, key="wrong").status_code == 503


def test_reset_closes_the_connection_without_a_response(api: Api) -> None:
    api.sim.inject("track", "reset", times=2)
    for _ in range(2):
        with pytest.raises(requests.ConnectionError):
            api.track(EVENT)
    assert api.track(EVENT).status_code == 202
    assert len(api.sim.events) == 1
    assert api.sim.status_counts("track") == {None: 2, 202: 1}


def test_reset_is_a_tcp_rst(sim: CometlySimulator) -> None:
    sim.inject("track", "reset")
    conn = http.client.HTTPConnection("127.0.0.1", sim.port, timeout=5)
    conn.request(
        "POST", "/public-api/v1/events/track", body=b"{}", headers={"Content-Type": "application/json"}
    )
    with pytest.raises(ConnectionResetError):
        conn.getresponse()
    conn.close()


def test_delay_then_normal_handling(api: Api) -> None:
    api.sim.inject("track", "delay", seconds=0.4)
    started = time.monotonic()
    assert api.track(EVENT).status_code == 202
    assert time.monotonic() - started >= 0.4
    started = time.monotonic()
    assert api.track(EVENT).status_code == 202
    assert time.monotonic() - started < 0.3


def test_delay_causes_client_read_timeouts_but_is_still_processed(api: Api) -> None:
    api.sim.inject("track", "delay", seconds=0.6)
    with pytest.raises(requests.ReadTimeout):
        api.session.post(api.url("/events/track"), json=EVENT, headers=api.headers, timeout=0.2)
    time.sleep(0.6)
    assert len(api.sim.events) == 1  # the server finished the request after the client gave up


def test_delay_combines_with_another_fault(api: Api) -> None:
    api.sim.inject("track", "delay", seconds=0.3)
    api.sim.inject("track", "status", code=503)
    started = time.monotonic()
    assert api.track(EVENT).status_code == 503
    assert time.monotonic() - started >= 0.3


def _completed_url(api: Api) -> str:
    return str(
        api.wait(api.export_id({"date": "2024-01-15", "fields": ["event_name", "amount"]}))["download_url"]
    )


def _raw_get(url: str, headers: dict[str, str] | None = None) -> tuple[http.client.HTTPResponse, bytes, bool]:
    """(response, body bytes received, whether the body was complete)."""
    parts = urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname or "", parts.port, timeout=10)
    conn.request("GET", f"{parts.path}?{parts.query}", headers=headers or {})
    response = conn.getresponse()
    try:
        return response, response.read(), True
    except http.client.IncompleteRead as exc:
        return response, exc.partial, False
    finally:
        conn.close()


def test_cut_download_sends_full_length_then_stops(api: Api) -> None:
    url = _completed_url(api)
    whole = api.download(url).content
    api.sim.inject("download", "cut", at_byte=1000)
    response, body, complete = _raw_get(url)
    assert response.status == 200
    assert response.headers["Content-Length"] == str(len(whole))
    assert not complete
    assert body == whole[:1000]
    api.sim.inject("download", "cut", at_byte=10)
    with pytest.raises(requests.exceptions.ChunkedEncodingError):
        api.download(url)


def test_cut_offset_is_relative_to_the_requested_range(api: Api) -> None:
    url = _completed_url(api)
    whole = api.download(url).content
    api.sim.inject("download", "cut", at_byte=100)
    response, body, complete = _raw_get(url, {"Range": "bytes=500-"})
    assert response.status == 206
    assert response.headers["Content-Length"] == str(len(whole) - 500)
    assert not complete
    assert body == whole[500:600]
    resumed = api.download(url, Range=f"bytes={600}-").content
    assert whole[:600] + resumed == whole


def test_expire_fault_answers_403_whatever_the_url(api: Api) -> None:
    url = _completed_url(api)
    api.sim.inject("download", "expire")
    expired = api.download(url)
    assert expired.status_code == 403
    assert "<Code>AccessDenied</Code><Message>Request has expired</Message>" in expired.text
    assert api.download(url).status_code == 200
    assert [r.fault for r in api.sim.requests_for("download")][-2:] == ["expire", None]


def test_download_status_and_reset_faults(api: Api) -> None:
    url = _completed_url(api)
    api.sim.inject("download", "status", code=503, retry_after=2)
    response = api.download(url)
    assert response.status_code == 503
    assert response.headers["Retry-After"] == "2"
    api.sim.inject("download", "reset")
    with pytest.raises(requests.ConnectionError):
        api.download(url)
    assert api.download(url).status_code == 200


@pytest.mark.parametrize(
    ("endpoint", "kind", "params"),
    [
        ("tracks", "status", {}),
        ("track", "explode", {}),
        ("track", "cut", {"at_byte": 1}),
        ("export_status", "expire", {}),
        ("track", "delay", {}),
        ("track", "status", {"code": 99}),
        ("track", "status", {"colour": "red"}),
        ("download", "cut", {"at_byte": -1}),
    ],
)
def test_bad_fault_specs_are_refused(
    sim: CometlySimulator, endpoint: str, kind: str, params: dict[str, Any]
) -> None:
    with pytest.raises(ValueError):  # noqa: PT011 - the message varies by mistake
        sim.inject(endpoint, kind, **params)
    with pytest.raises(ValueError):  # noqa: PT011
        sim.inject("track", "status", times=0)


def test_fault_rules_are_inspectable(sim: CometlySimulator, api: Api) -> None:
    rule = sim.inject("track", "status", code=500, every=2, times=None)
    _statuses(api, 4)
    (state,) = sim.faults
    assert state.fault_id == rule.fault_id
    assert state.matched == 4
    assert state.applied == 2
    sim.reset()
    assert sim.faults == []
