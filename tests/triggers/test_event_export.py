"""EventExportTrigger: serialization, and its run() on a real asyncio loop against the simulator."""

from __future__ import annotations

import asyncio
import itertools
import json
import time
from typing import Any

import pytest

from cometly_provider.exceptions import CometlyExportFailedError, CometlyNotFoundError
from cometly_provider.exports import ExportRef, result_from_event
from cometly_provider.triggers.event_export import EventExportTrigger
from tests import event_exports as support

CLASSPATH = "cometly_provider.triggers.event_export.ExportTrigger"


@pytest.fixture
def sim(cometly_simulator: Any, monkeypatch: pytest.MonkeyPatch) -> Any:
    return support.configure(cometly_simulator, monkeypatch)


def _events(trigger: EventExportTrigger) -> list[Any]:
    async def collect() -> list[Any]:
        return [event async for event in trigger.run()]

    return asyncio.run(collect())


# --- serialization --------------------------------------------------------------------------------


def test_serialize_round_trips_through_airflow_serde() -> None:
    from airflow.sdk._shared.module_loading import import_string
    from airflow.sdk.serde import deserialize, serialize

    end_time = time.time() + 600
    trigger = EventExportTrigger(
        export_id=42,
        end_time=end_time,
        cometly_conn_id="cometly_other",
        poll_interval=12.5,
        hook_params={"max_attempts": 3, "rate_limits": {"export_status": 10}},
    )
    classpath, kwargs = trigger.serialize()
    assert classpath == CLASSPATH
    assert kwargs == {
        "export_id": 42,
        "kind": "events",
        "end_time": end_time,
        "cometly_conn_id": "cometly_other",
        "poll_interval": 12.5,
        "hook_params": {"max_attempts": 3, "rate_limits": {"export_status": 10}},
    }
    # What the triggerer stores and reloads: JSON through Airflow's serde, then the class by path.
    stored = json.loads(json.dumps(serialize(kwargs)))
    rebuilt = import_string(classpath)(**deserialize(stored))
    assert rebuilt.serialize() == (classpath, kwargs)


def test_end_time_is_wall_clock_epoch_seconds() -> None:
    trigger = EventExportTrigger(export_id=1, end_time=time.time() + 60)
    _, kwargs = trigger.serialize()
    # time.monotonic() counts from boot (small); an epoch deadline is comparable to time.time().
    assert abs(kwargs["end_time"] - (time.time() + 60)) < 5
    assert kwargs["end_time"] > 1_600_000_000


# --- run() against the simulator -------------------------------------------------------------------


def test_run_polls_until_completed_without_blocking_the_loop(
    sim: Any, capfd: pytest.CaptureFixture[str]
) -> None:
    sim.update_config(processing_seconds=1.5)  # outlasts the first (1 s delayed) poll
    export_id = support.create_export(sim)
    # Every status response is held back 1 s by the server: a blocking HTTP call on the loop would
    # freeze the ticker below for at least that long.
    sim.inject("export_status", "delay", seconds=1.0, times=None)
    trigger = EventExportTrigger(export_id=export_id, end_time=time.time() + 60, poll_interval=0.05)

    async def scenario() -> tuple[list[Any], list[float]]:
        ticks: list[float] = []
        stop = asyncio.Event()

        async def ticker() -> None:
            while not stop.is_set():
                ticks.append(time.monotonic())
                await asyncio.sleep(0.01)

        tick_task = asyncio.create_task(ticker())
        events = [event async for event in trigger.run()]
        stop.set()
        await tick_task
        return events, ticks

    events, ticks = asyncio.run(scenario())

    assert len(events) == 1
    payload = events[0].payload
    assert payload["status"] == "success"
    export = payload["export"]
    assert set(export) == {"export_id", "kind", "status", "download_url", "expires_at", "completed_at"}
    assert export["export_id"] == export_id
    assert export["status"] == "completed"
    # The event is persisted by the triggerer: it carries no signature, only what refreshes one.
    support.assert_stored_url(export, sim, export_id)
    polls = sim.requests_for("export_status")
    assert len(polls) >= 2  # it waited through queued/processing
    # At least a second of delayed responses went by, and the loop never stalled for one of them.
    assert ticks[-1] - ticks[0] >= 1.0
    assert max(b - a for a, b in itertools.pairwise(ticks)) < 0.9
    out, err = capfd.readouterr()
    assert f"Cometly event export {export_id} completed" in out
    support.assert_no_signature(sim, out + err)


def test_run_reports_a_failed_export_with_the_api_message(sim: Any) -> None:
    sim.next_exports_outcome("failed", message="Warehouse exploded while exporting.")
    export_id = support.create_export(sim)
    events = _events(EventExportTrigger(export_id=export_id, end_time=time.time() + 30, poll_interval=0.05))

    assert len(events) == 1
    payload = events[0].payload
    assert payload["status"] == "error"
    assert payload["error_type"] == "CometlyExportFailedError"
    assert "Warehouse exploded while exporting." in payload["message"]
    with pytest.raises(CometlyExportFailedError, match="Warehouse exploded") as info:
        result_from_event(payload, ExportRef.of("events", export_id), on_timeout=RuntimeError)
    assert info.value.api_message == "Warehouse exploded while exporting."


def test_run_times_out_on_a_stuck_export(sim: Any) -> None:
    sim.next_exports_outcome("stuck")
    export_id = support.create_export(sim)
    events = _events(EventExportTrigger(export_id=export_id, end_time=time.time() + 0.6, poll_interval=0.1))

    assert len(events) == 1
    payload = events[0].payload
    assert payload["status"] == "timeout"
    assert payload["last_status"] == "processing"
    assert f"Cometly event export {export_id} did not complete before its deadline" in payload["message"]
    assert len(sim.requests_for("export_status")) >= 2  # kept polling until the deadline


def test_run_with_a_past_deadline_still_polls_once(sim: Any) -> None:
    export_id = support.create_export(sim)
    support.wait_completed(sim, export_id)
    events = _events(EventExportTrigger(export_id=export_id, end_time=time.time() - 10, poll_interval=1))
    assert [e.payload["status"] for e in events] == ["success"]


def test_run_reports_an_unknown_export(sim: Any) -> None:
    events = _events(EventExportTrigger(export_id=987654, end_time=time.time() + 30, poll_interval=0.05))

    assert len(events) == 1
    payload = events[0].payload
    assert payload["status"] == "error"
    assert payload["error_type"] == "CometlyNotFoundError"
    assert "987654 does not exist" in payload["message"]
    with pytest.raises(CometlyNotFoundError, match="987654 does not exist"):
        result_from_event(payload, ExportRef.of("events", 987654), on_timeout=RuntimeError)
    assert len(sim.requests_for("export_status")) == 1  # a 404 is not polled again


def test_run_outlives_transient_errors_while_time_remains(sim: Any) -> None:
    export_id = support.create_export(sim)
    # Two 503s exhaust the hook's 2 attempts once: the trigger logs it and polls again.
    sim.inject("export_status", "status", code=503, times=2)
    trigger = EventExportTrigger(
        export_id=export_id, end_time=time.time() + 30, poll_interval=0.05, hook_params={"max_attempts": 2}
    )
    events = _events(trigger)

    assert [e.payload["status"] for e in events] == ["success"]
    assert sim.status_counts("export_status").get(503) == 2


def test_timeout_event_names_the_last_transient_error(sim: Any) -> None:
    export_id = support.create_export(sim)
    sim.inject("export_status", "status", code=503, times=None)
    trigger = EventExportTrigger(
        export_id=export_id, end_time=time.time() + 0.5, poll_interval=0.1, hook_params={"max_attempts": 1}
    )
    events = _events(trigger)

    assert len(events) == 1
    assert events[0].payload["status"] == "timeout"
    assert "last poll failed" in events[0].payload["message"]
    assert "HTTP 503" in events[0].payload["message"]


def test_run_reports_a_rejected_api_key(sim: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(
        "AIRFLOW_CONN_COMETLY_BAD", support.cometly_conn_uri(sim.base_url, "wrong-key", retry_min_wait=0.05)
    )
    events = _events(
        EventExportTrigger(export_id=1, end_time=time.time() + 30, cometly_conn_id="cometly_bad")
    )
    assert events[0].payload["status"] == "error"
    assert events[0].payload["error_type"] == "CometlyAuthError"
    assert events[0].payload["status_code"] == 401
    assert "wrong-key" not in json.dumps(events[0].payload)


def test_poll_interval_is_raised_to_the_floor(sim: Any) -> None:
    sim.next_exports_outcome("stuck")
    export_id = support.create_export(sim)
    # Asking for 1 ms between polls: the floor (1.5 s / 30 = 50 ms) bounds the request count.
    events = _events(EventExportTrigger(export_id=export_id, end_time=time.time() + 0.5, poll_interval=0.001))
    assert events[0].payload["status"] == "timeout"
    assert len(sim.requests_for("export_status")) <= 0.5 / 0.05 + 2


def test_a_bad_connection_extra_becomes_an_error_event(sim: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(
        "AIRFLOW_CONN_COMETLY_ODD",
        support.cometly_conn_uri(sim.base_url, sim.api_key, rate_limits={"export_statuz": 3}),
    )
    events = _events(
        EventExportTrigger(export_id=1, end_time=time.time() + 30, cometly_conn_id="cometly_odd")
    )
    assert [e.payload["status"] for e in events] == ["error"]
    assert "export_statuz" in events[0].payload["message"]
    assert sim.requests == []


# --- hard deadlines ---------------------------------------------------------------------------------


def test_100_triggers_sharing_a_space_all_fire_within_1_s_of_their_deadline(sim: Any) -> None:
    """100 waits on one Space's 30-per-window status limit: polls queue in the limiter, but each poll
    is bounded by the time its trigger has left, so every timeout event fires on time (a poll that
    waited its turn used to make triggers fire up to 3.3 windows late)."""
    from cometly_provider.exceptions import CometlyExportTimeoutError

    sim.next_exports_outcome("stuck")
    export_id = support.create_export(sim)
    start = time.time()
    # Deadlines spread over two windows, so some fall while the limiter queue is at its longest.
    triggers = [
        EventExportTrigger(export_id=export_id, end_time=start + 1.0 + (i % 20) * 0.1, poll_interval=0.05)
        for i in range(100)
    ]

    async def fire(trigger: EventExportTrigger) -> tuple[float, Any]:
        async for event in trigger.run():
            return time.time(), event
        raise AssertionError("no event")

    async def all_of_them() -> list[tuple[float, Any]]:
        return await asyncio.gather(*(fire(t) for t in triggers))

    fired = asyncio.run(all_of_them())
    lateness = [at - t.end_time for (at, _), t in zip(fired, triggers, strict=True)]
    print(f"100 triggers: fired {min(lateness):.3f} .. {max(lateness):.3f} s after their deadlines")
    assert [event.payload["status"] for _, event in fired] == ["timeout"] * 100
    assert min(lateness) >= 0  # never before the deadline
    assert max(lateness) < 1.0, f"latest fired {max(lateness):.2f} s after its deadline"
    # The typed timeout the task raises from each event.
    with pytest.raises(CometlyExportTimeoutError, match="did not complete before its deadline"):
        result_from_event(fired[0][1].payload, triggers[0].ref, on_timeout=CometlyExportTimeoutError)
    # They did share the Space's 30-per-window budget: far fewer polls than triggers x polls wanted.
    assert len(sim.requests_for("export_status")) < 100 * 3


def test_the_deadline_is_wall_clock() -> None:
    """Stored as epoch seconds: another triggerer process or host resumes it meaningfully."""
    end_time = time.time() + 600
    kwargs = EventExportTrigger(export_id=1, end_time=end_time, kind="contacts").serialize()[1]
    assert kwargs["end_time"] == end_time
    assert abs(kwargs["end_time"] - time.time() - 600) < 5  # not time.monotonic()
    assert kwargs["kind"] == "contacts"
