"""Faults of the Cometly API itself, over real sockets: 429 storms, 5xx bursts, resets, timeouts, slowness.

Each test runs the whole daily pipeline (track a batch, create an export, wait for it, download it)
against the simulator while it misbehaves on every API endpoint, then checks the invariants of
:mod:`tests.reliability.invariants`: each event stored exactly once, the landed file identical to
the export. The simulator's window is scaled to 1.5 s (``tests.event_exports.configure``).
"""

from __future__ import annotations

import itertools
import time
from pathlib import Path
from typing import Any

import pytest

from cometly_provider.exceptions import CometlyError
from cometly_provider.operators.track_event import TrackEventOperator
from tests import event_exports as support
from tests.reliability.invariants import (
    assert_failed_with,
    assert_local_identical_or_absent,
    assert_stored_exactly_once,
    direct_download,
)
from tests.reliability.pipeline import file_uri, purchases, run_pipeline, track_context

API_ENDPOINTS = ("track", "export_create", "export_status")


def _check_pipeline(sim: Any, events: list[dict[str, Any]], path: Path, result: Any) -> None:
    assert (result.track["sent"] + result.track["duplicates"], result.track["failed"]) == (len(events), 0)
    assert_stored_exactly_once(sim, events)
    direct = direct_download(sim, result.export_id)
    assert_local_identical_or_absent(path, direct, landed=True)
    assert result.download["sha256"] == direct.sha256


def _gaps_after_429(sim: Any, endpoint: str) -> list[float]:
    """Seconds between each 429 of ``endpoint`` and the next request to it."""
    records = sim.requests_for(endpoint)
    return [b.timestamp - a.timestamp for a, b in itertools.pairwise(records) if a.status == 429]


def test_429_storm_with_retry_after_on_every_api_endpoint(
    sim: Any, tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    # Three 429s in a row on each endpoint, each asking for 1 s: a storm longer than the 1.5 s window.
    for endpoint in API_ENDPOINTS:
        sim.inject(endpoint, "status", code=429, retry_after=1, times=3)
    events = purchases(40)
    path = tmp_path / "export.ndjson.gz"

    result = run_pipeline(events, file_uri(path), hook_params={"max_attempts": 6})

    _check_pipeline(sim, events, path, result)
    for endpoint in API_ENDPOINTS:
        assert sim.status_counts(endpoint)[429] == 3, endpoint
    # Retry-After is honoured: no request of a serial endpoint came back sooner than asked.
    for endpoint in ("export_create", "export_status"):
        gaps = _gaps_after_429(sim, endpoint)
        assert gaps, endpoint
        assert min(gaps) >= 0.95, (endpoint, gaps)
    out = capfd.readouterr().out
    assert "failed with HTTP 429" in out
    assert "failed with HTTP 429: Too Many Attempts.); waiting" in out


def test_429_storm_longer_than_the_rate_limit_timeout_fails_with_the_reason(
    sim: Any, capfd: pytest.CaptureFixture[str]
) -> None:
    # 429s do not use up max_attempts (2 here): rate_limit_timeout bounds the waiting instead.
    sim.inject("track", "status", code=429, retry_after=1, times=None)
    op = TrackEventOperator(
        task_id="track", events=purchases(1), hook_params={"max_attempts": 2, "rate_limit_timeout": 2.5}
    )
    with pytest.raises(CometlyError) as info:
        op.execute(track_context())  # type: ignore[arg-type]
    assert_failed_with(info.value, CometlyError, "1 of 1 Cometly events failed", "Retrying is safe")
    assert "POST /events/track failed with HTTP 429: Too Many Attempts." in capfd.readouterr().out
    assert set(sim.status_counts("track")) == {429}
    assert sim.status_counts("track")[429] >= 3
    assert_stored_exactly_once(sim, [])


def test_5xx_bursts_on_every_endpoint(sim: Any, tmp_path: Path) -> None:
    # Mid-batch outage on track (one of them a load balancer's HTML page), bursts everywhere else.
    sim.inject("track", "status", code=503, after=10, times=5)
    sim.inject("track", "status", code=502, after=20, times=1, body="<html><h1>502 Bad Gateway</h1></html>")
    sim.inject("export_create", "status", code=502, times=2)
    sim.inject("export_status", "status", code=500, times=3)
    sim.inject("download", "status", code=503, times=2)
    events = purchases(40)
    path = tmp_path / "export.ndjson.gz"

    result = run_pipeline(events, file_uri(path), hook_params={"max_attempts": 6})

    _check_pipeline(sim, events, path, result)
    assert sim.status_counts("track")[503] == 5
    assert sim.status_counts("track")[502] == 1
    assert sim.status_counts("export_create") == {502: 2, 202: 1}
    assert sim.status_counts("export_status")[500] == 3
    assert sim.status_counts("download")[503] == 2
    assert len(sim.exports) == 1
    assert sim.duplicates == 0  # an injected 5xx is never processed: nothing to deduplicate


def test_connection_resets_on_every_endpoint(sim: Any, tmp_path: Path) -> None:
    sim.inject("track", "reset", after=5, times=3)
    sim.inject("export_create", "reset", times=1)
    sim.inject("export_status", "reset", times=2)
    sim.inject("download", "reset", times=2)
    events = purchases(30)
    path = tmp_path / "export.ndjson.gz"

    result = run_pipeline(events, file_uri(path), hook_params={"max_attempts": 6})

    _check_pipeline(sim, events, path, result)
    for endpoint, resets in (("track", 3), ("export_create", 1), ("export_status", 2), ("download", 2)):
        assert sim.status_counts(endpoint)[None] == resets, endpoint


def test_read_timeouts_on_every_endpoint(sim: Any, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    # The hook's read timeout (connection extra "timeout") is 0.4 s; these requests take 1.2 s. The
    # server still processes them after the client gave up: the retries must not double anything.
    support.configure(sim, monkeypatch, timeout=0.4)
    for endpoint, times in (("track", 3), ("export_create", 1), ("export_status", 2), ("download", 1)):
        sim.inject(endpoint, "delay", seconds=1.2, after=2 if endpoint == "track" else 0, times=times)
    events = purchases(30)
    path = tmp_path / "export.ndjson.gz"

    result = run_pipeline(events, file_uri(path), hook_params={"max_attempts": 6})

    time.sleep(1.3)  # let the abandoned requests finish on the server side
    _check_pipeline(sim, events, path, result)
    # Each timed-out track request was stored by the server after all: its retry was a duplicate.
    assert sim.duplicates >= 1
    # A timed-out creation may leave a second, identical export; the pipeline used one that completed.
    assert len(sim.exports) == 2
    assert sim.exports[result.export_id].status == "completed"


def test_read_timeouts_that_outlast_the_retries_fail_clearly_and_store_once(
    sim: Any, monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture[str]
) -> None:
    support.configure(sim, monkeypatch, timeout=0.3)
    sim.inject("track", "delay", seconds=0.8, times=None)
    events = purchases(1)
    op = TrackEventOperator(task_id="track", events=events, hook_params={"max_attempts": 2})
    with pytest.raises(CometlyError) as info:
        op.execute(track_context())  # type: ignore[arg-type]
    assert_failed_with(info.value, CometlyError, "1 of 1 Cometly events failed", "Retrying is safe")
    assert "POST /events/track: read timeout talking to the API" in capfd.readouterr().out

    time.sleep(1.0)  # both attempts reach the server eventually
    assert len(sim.requests_for("track")) == 2
    assert_stored_exactly_once(sim, events)  # the task failed, yet the event is stored, once
    assert sim.duplicates == 1

    # The retry of the task finds it stored: nothing is sent twice.
    sim.clear_faults()
    again = TrackEventOperator(task_id="track", events=events).execute(track_context())  # type: ignore[arg-type]
    assert (again["sent"], again["duplicates"]) == (0, 1)
    assert_stored_exactly_once(sim, events)


def test_slow_server_is_waited_for_without_retries(sim: Any, tmp_path: Path) -> None:
    # Every request (API and download) takes 0.15 s more: well within the read timeout.
    sim.inject("*", "delay", seconds=0.15, times=None)
    events = purchases(24)
    path = tmp_path / "export.ndjson.gz"

    result = run_pipeline(events, file_uri(path))

    _check_pipeline(sim, events, path, result)
    statuses = {r.status for r in sim.requests}
    assert statuses <= {200, 202}, statuses  # no error, no reset: nothing needed a retry
    assert sim.duplicates == 0
    assert len(sim.exports) == 1
