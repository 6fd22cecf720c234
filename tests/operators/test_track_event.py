"""TrackEventOperator over real sockets against the Cometly simulator.

The simulator runs in-process (``cometly_simulator``) with a 1 s rate-limit window, except the 5,000
event batch, which uses a subprocess simulator (``spawn_simulator``) so that the sender and the server
do not share one interpreter. Every test talks HTTP over loopback; nothing is mocked.
"""

from __future__ import annotations

import datetime as dt
import decimal
import gzip
import json
import os
import random
import signal
import subprocess
import sys
import textwrap
import time
import tracemalloc
import uuid
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pendulum
import pytest

from cometly_provider.exceptions import (
    CometlyAuthError,
    CometlyError,
    CometlyInputError,
    CometlyValidationError,
)
from cometly_provider.operators.track_event import TrackEventOperator, derive_idempotency_key
from cometly_provider.testing import spawn_simulator
from cometly_provider.tracking.batch import TrackingBatch
from cometly_provider.tracking.sender import Stats
from cometly_provider.tracking.sources import EventSource, event_source
from tests import event_exports as support
from tests.conftest import cometly_conn_uri

WINDOW = 1.0
DAG_ID, TASK_ID, RUN_ID = "track_dag", "track", "manual__2024-01-15T00:00:00+00:00"


@pytest.fixture
def sim(cometly_simulator: Any, monkeypatch: pytest.MonkeyPatch) -> Any:
    """``cometly_default`` -> an in-process simulator with a 1 s window and fast retries."""
    cometly_simulator.update_config(window_seconds=WINDOW)
    _point_at(monkeypatch, cometly_simulator.base_url, cometly_simulator.api_key)
    return cometly_simulator


def _point_at(monkeypatch: pytest.MonkeyPatch, base_url: str, api_key: str, **extra: Any) -> None:
    extra = {
        "retry_min_wait": 0.01,
        "retry_max_wait": 0.5,
        "rate_limit_window_seconds": WINDOW,
        **extra,
    }
    monkeypatch.setenv("AIRFLOW_CONN_COMETLY_DEFAULT", cometly_conn_uri(base_url, api_key, **extra))


def _context(run_id: str = RUN_ID, map_index: int = -1, task_id: str = TASK_ID) -> Any:
    ti = SimpleNamespace(dag_id=DAG_ID, task_id=task_id, run_id=run_id, map_index=map_index)
    return {"ti": ti, "run_id": run_id}


def _purchases(n: int, start: int = 0) -> list[dict[str, Any]]:
    return [
        {"event_name": "purchase", "email": f"user{i}@example.com", "amount": round(i * 1.25, 2)}
        for i in range(start, start + n)
    ]


def _run(op: TrackEventOperator, **context: Any) -> dict[str, Any]:
    return op.execute(_context(**context))


def _without_key(event: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in event.items() if k != "idempotency_key"}


def _keys(sim: Any) -> list[str]:
    return [e["idempotency_key"] for e in sim.events]


def _source(op: TrackEventOperator) -> tuple[EventSource, bool]:
    return event_source(
        event=op.event, events=op.events, event_fields=op.event_fields, storage_conn_id=op.storage_conn_id
    )


def _batch(op: TrackEventOperator, **context: Any) -> TrackingBatch:
    return TrackingBatch(op.tracking_settings(), op.key_scope(_context(**context)), op.log)


# --- construction (no network) ----------------------------------------------------------------------


def test_template_fields_cover_every_input() -> None:
    assert {"event", "events", "event_fields", "failed_events_path"} <= set(
        TrackEventOperator.template_fields
    )


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({}, "needs the event(s) to send"),
        ({"event": {"event_name": "purchase"}, "events": []}, "exactly one of"),
        ({"events": [], "event_name": "purchase"}, "exactly one of"),
        ({"event": {}, "on_invalid": "ignore"}, "on_invalid='ignore' is not allowed: use 'fail' or 'skip'"),
        ({"event": {}, "idempotency_scope": "task"}, "idempotency_scope='task' is not allowed"),
        ({"event": {}, "max_workers": 0}, "max_workers=0 is not allowed: use an integer from 1 to 64"),
        ({"event": {}, "max_workers": 65}, "max_workers=65"),
        ({"event": {}, "allow_failures": "yes"}, "allow_failures='yes' must be True or False"),
        ({"event": {}, "failed_events_path": 3}, "failed_events_path=3 must be a string"),
    ],
)
def test_bad_arguments_fail_at_parse_time(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(CometlyInputError, match=message.replace("(", r"\(").replace(")", r"\)")):
        TrackEventOperator(task_id="t", **kwargs)


def test_unknown_keyword_still_raises_type_error() -> None:
    with pytest.raises(TypeError, match="eventname"):
        TrackEventOperator(task_id="t", event={}, eventname="purchase")


def test_email_keyword_is_the_event_field_not_the_alert_address() -> None:
    from airflow.sdk import DAG

    with DAG("d", schedule=None, default_args={"email": "alerts@example.com"}):
        op = TrackEventOperator(task_id="t", event_name="purchase", email="buyer@example.com")
    assert op.event_fields == {"event_name": "purchase", "email": "buyer@example.com"}
    assert op.email == "alerts@example.com"  # default_args keep their meaning for Airflow


def test_keyword_fields_are_rendered_and_typed() -> None:
    from airflow.sdk import DAG

    with DAG("d", schedule=None):
        op = TrackEventOperator(
            task_id="t",
            event_name="purchase",
            email="{{ params.email }}",
            amount="{{ params.amount }}",
            do_not_capi="{{ params.capi_off }}",
            order_id="order-{{ ds }}",
        )
    op.render_template_fields(
        {"params": {"email": "a@example.com", "amount": 12.5, "capi_off": True}, "ds": "2024-01-15"}
    )
    source, single = _source(op)
    assert single
    assert list(source.rows()) == [
        (
            0,
            {
                "event_name": "purchase",
                "email": "a@example.com",
                "amount": 12.5,
                "do_not_capi": True,
                "order_id": "order-2024-01-15",
            },
        )
    ]


def test_rendered_json_and_python_literal_strings_are_parsed() -> None:
    events = _purchases(2)
    for text in (json.dumps(events), str(events)):
        op = TrackEventOperator(task_id="t", events=text)
        source, single = _source(op)
        assert not single
        assert [row for _, row in source.rows()] == events
    op = TrackEventOperator(task_id="t", event=json.dumps(events[0]))
    assert [row for _, row in _source(op)[0].rows()] == [events[0]]


@pytest.mark.parametrize(
    ("events", "message"),
    [
        ({"event_name": "purchase"}, "for one event use event="),
        ("purchase", "expected a list of event dicts, a JSON array, or an NDJSON location"),
        ("ftp://host/events.ndjson", "unsupported scheme ftp://"),
        ("s3://bucket-only", "expected s3://bucket/path/to/object"),
        ("[not json", "is not valid JSON"),
    ],
)
def test_bad_events_value_is_named(events: Any, message: str) -> None:
    op = TrackEventOperator(task_id="t", events=events)
    with pytest.raises(CometlyInputError, match=message):
        _source(op)


# --- idempotency keys (no network) ---------------------------------------------------------------------


def _derived_keys(events: list[dict[str, Any]], **context: Any) -> dict[str, list[str]]:
    """content -> keys, as the operator assigns them (validation pass, then the send pass)."""
    op = TrackEventOperator(task_id="t", events=events)
    source, _ = _source(op)
    batch = _batch(op, **context)
    plan = batch.validate(source, Stats())
    out: dict[str, list[str]] = {}
    for item in batch.items(source, plan):
        content = json.dumps(_without_key(item.payload), sort_keys=True)
        out.setdefault(content, []).append(item.payload["idempotency_key"])
    return out


def test_keys_follow_content_not_position() -> None:
    events = [*_purchases(50), _purchases(1)[0], _purchases(1)[0]]  # user0's purchase three times
    forward = _derived_keys(events)
    shuffled = list(events)
    random.Random(7).shuffle(shuffled)
    assert _derived_keys(shuffled) == forward
    repeated = forward[json.dumps(_purchases(1)[0], sort_keys=True)]
    assert len(repeated) == 3
    assert len(set(repeated)) == 1  # identical events: one logical event
    assert len({k for keys in forward.values() for k in keys}) == 50
    assert all(len(k) == 40 and int(k, 16) >= 0 for keys in forward.values() for k in keys)


def test_keys_depend_on_the_run_scope_only() -> None:
    event = _purchases(1)[0]
    first = derive_idempotency_key(event, dag_id=DAG_ID, task_id=TASK_ID, run_id="r1")
    assert first == _derived_keys([event], run_id="r1")[json.dumps(event, sort_keys=True)][0]
    # The map index is not part of the scope: any mapped instance gives the event the same key.
    assert first == _derived_keys([event], run_id="r1", map_index=3)[json.dumps(event, sort_keys=True)][0]
    assert derive_idempotency_key(event, dag_id=DAG_ID, task_id=TASK_ID, run_id="r2") != first
    assert derive_idempotency_key(event, dag_id=DAG_ID, task_id="other", run_id="r1") != first
    dag_scoped = derive_idempotency_key(event, dag_id=DAG_ID, task_id=TASK_ID, run_id=None)
    assert dag_scoped != first
    # idempotency_scope="dag" is the dag_id only: other tasks and runs of the DAG share the key.
    assert derive_idempotency_key(event, dag_id=DAG_ID, task_id="other", run_id=None) == dag_scoped
    assert derive_idempotency_key(event, dag_id="other_dag", task_id=TASK_ID, run_id=None) != dag_scoped
    # Normalized content: a datetime and its ISO form are the same event.
    with_time = {**event, "event_time": dt.datetime(2024, 1, 15, 10, 30, tzinfo=dt.UTC)}
    with_iso = {**event, "event_time": "2024-01-15T10:30:00Z"}
    assert derive_idempotency_key(with_time, dag_id="d", task_id="t", run_id="r") == derive_idempotency_key(
        with_iso, dag_id="d", task_id="t", run_id="r"
    )


# --- single events over HTTP ---------------------------------------------------------------------


def test_single_event_from_keyword_fields(sim: Any) -> None:
    op = TrackEventOperator(
        task_id=TASK_ID,
        event_name="purchase",
        email="buyer@example.com",
        amount="19.99",  # as a template renders it
        order_id="order-1",
        event_time=dt.datetime(2024, 1, 15, 10, 30, tzinfo=dt.UTC),
        do_not_capi=True,
        profile_field_1="Enterprise",
        profile_field_16=decimal.Decimal("500"),
        profile_field_26=dt.date(2024, 1, 1),
    )
    result = _run(op)
    assert result["total"] == result["sent"] == 1
    assert (result["duplicates"], result["failed"], result["skipped_invalid"]) == (0, 0, 0)
    assert sim.events == [
        {
            "event_name": "purchase",
            "email": "buyer@example.com",
            "amount": 19.99,
            "order_id": "order-1",
            "event_time": "2024-01-15T10:30:00Z",
            "do_not_capi": True,
            "profile_field_1": "Enterprise",
            "profile_field_16": 500.0,
            "profile_field_26": "2024-01-01",
            "idempotency_key": result["idempotency_key"],
        }
    ]
    json.dumps(result)  # XCom-ready


@pytest.mark.parametrize(
    ("event_time", "sent_as"),
    [
        (dt.datetime(2024, 1, 15, 10, 30), "2024-01-15T10:30:00Z"),  # naive = UTC
        ("2024-01-15T10:30:00+02:00", "2024-01-15T10:30:00+02:00"),
        (1705314600, 1705314600),
        ("1705314600", "1705314600"),
    ],
)
def test_event_time_forms(sim: Any, event_time: Any, sent_as: Any) -> None:
    _run(TrackEventOperator(task_id=TASK_ID, event={**_purchases(1)[0], "event_time": event_time}))
    assert sim.events[0]["event_time"] == sent_as


def test_own_idempotency_key_wins_and_a_repeat_is_a_duplicate(sim: Any) -> None:
    event = {**_purchases(1)[0], "idempotency_key": "crm-42"}
    first = _run(TrackEventOperator(task_id=TASK_ID, event=event))
    again = _run(TrackEventOperator(task_id=TASK_ID, event=event), run_id="another run")
    assert first["idempotency_key"] == again["idempotency_key"] == "crm-42"
    assert (first["sent"], again["sent"], again["duplicates"]) == (1, 0, 1)
    assert len(sim.events) == 1


def test_invalid_single_event_names_the_field(sim: Any) -> None:
    op = TrackEventOperator(task_id=TASK_ID, event_name="purchase", amount="12,50")
    with pytest.raises(CometlyInputError) as err:
        _run(op)
    assert "amount='12,50' must be a number" in str(err.value)
    assert "identification method is required" in str(err.value)
    assert err.value.field == "email"  # the first problem (no identification), not "events"
    assert sim.requests_for("track") == []
    with pytest.raises(CometlyInputError) as err:
        _run(
            TrackEventOperator(
                task_id=TASK_ID, event={"event_name": "purchase", "email": "a@b.co", "event_time": "x"}
            )
        )
    assert err.value.field == "event_time"


# --- batches: validation -----------------------------------------------------------------------------


def _batch_with_problems() -> list[Any]:
    events: list[Any] = _purchases(6)
    events[1] = {**events[1], "event_name": "purchas"}
    events[3] = {"event_name": "purchase", "amount": 3}  # no identification
    events[4] = "not an object"
    return events


def test_invalid_rows_fail_the_batch_before_anything_is_sent(sim: Any) -> None:
    op = TrackEventOperator(task_id=TASK_ID, events=_batch_with_problems())
    with pytest.raises(CometlyInputError) as err:
        _run(op)
    message = str(err.value)
    assert "3 of 6 events are invalid; nothing was sent" in message
    assert "index 1: event_name='purchas' is not allowed" in message
    assert "index 3: an identification method is required" in message
    assert "index 4: an event must be a JSON object (dict), got str" in message
    assert sim.requests_for("track") == []


def test_many_invalid_rows_are_summarized(sim: Any) -> None:
    events = [{"event_name": "nope", "email": "a@example.com"}] * 45
    with pytest.raises(CometlyInputError) as err:
        _run(TrackEventOperator(task_id=TASK_ID, events=events))
    assert "45 of 45 events are invalid" in str(err.value)
    assert "index 19:" in str(err.value)
    assert "index 20:" not in str(err.value)
    assert "... and 25 more" in str(err.value)
    assert sim.requests_for("track") == []


def test_on_invalid_skip_sends_the_valid_rows(sim: Any) -> None:
    result = _run(TrackEventOperator(task_id=TASK_ID, events=_batch_with_problems(), on_invalid="skip"))
    assert (result["total"], result["sent"], result["skipped_invalid"]) == (6, 3, 3)
    assert [p["index"] for p in result["invalid"]] == [1, 3, 4]
    assert "event_name='purchas' is not allowed" in result["invalid"][0]["reason"]
    assert sorted(e["email"] for e in sim.events) == [f"user{i}@example.com" for i in (0, 2, 5)]


def test_empty_batch_succeeds_without_requests(sim: Any) -> None:
    result = _run(TrackEventOperator(task_id=TASK_ID, events=[]))
    assert (result["total"], result["sent"]) == (0, 0)
    assert sim.requests == []


# --- batches: auth, failures, retries ----------------------------------------------------------------


@pytest.mark.parametrize("kind", ["wrong key", "inactive subscription"])
def test_auth_failure_stops_after_one_request(sim: Any, monkeypatch: pytest.MonkeyPatch, kind: str) -> None:
    if kind == "inactive subscription":
        sim.update_config(inactive_api_keys=["inactive-key"])
    _point_at(monkeypatch, sim.base_url, "wrong-key" if kind == "wrong key" else "inactive-key")
    op = TrackEventOperator(task_id=TASK_ID, events=_purchases(200), max_workers=8)
    started = time.monotonic()
    with pytest.raises(CometlyAuthError) as err:
        _run(op)
    assert err.value.status_code == (401 if kind == "wrong key" else 403)
    assert len(sim.requests_for("track")) == 1
    assert sim.events == []
    assert time.monotonic() - started < 10  # no back-off waits


def test_api_rejections_go_to_failed_events_path(sim: Any, tmp_path: Path) -> None:
    sim.inject(
        "track", "status", code=422, message="The email must be a valid email address.", times=3, after=4
    )
    path = tmp_path / "failed" / "events.ndjson"
    events = _purchases(20)
    op = TrackEventOperator(task_id=TASK_ID, events=events, failed_events_path=str(path))
    with pytest.raises(CometlyValidationError, match=r"3 of 20 Cometly events failed \(written to file://"):
        _run(op)
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    assert len(lines) == 3
    for line in lines:
        assert line["status"] == 422
        assert "The email must be a valid email address." in line["reason"]
        assert line["event"] == {**events[line["index"]], "idempotency_key": line["event"]["idempotency_key"]}
    assert len(sim.events) == 17
    stored = set(_keys(sim))
    assert stored.isdisjoint(line["event"]["idempotency_key"] for line in lines)

    # The retry with allow_failures: the 3 go through, the 16 others are duplicates, and the first
    # event (sent alone, stored by the first try) is now rejected: reported, and the task succeeds.
    sim.inject("track", "status", code=422, times=1)
    result = _run(
        TrackEventOperator(task_id=TASK_ID, events=events, failed_events_path=str(path), allow_failures=True)
    )
    assert (result["failed"], result["duplicates"], result["sent"]) == (1, 16, 3)
    assert result["failed_events_path"] == f"file://{path}"
    assert [json.loads(line)["index"] for line in path.read_text().splitlines()] == [0]  # rewritten
    assert len(sim.events) == 20


def test_failed_events_listed_inline_when_no_path(sim: Any) -> None:
    sim.inject("track", "status", code=422, times=2)
    result = _run(TrackEventOperator(task_id=TASK_ID, event=_purchases(1)[0], allow_failures=True))
    assert result["failed"] == 1
    assert result["failed_events"][0]["status"] == 422
    assert result["failed_events"][0]["index"] == 0
    assert result["failed_events_truncated"] is False
    json.dumps(result)


def test_no_failures_removes_a_stale_failed_events_file_and_creates_none(sim: Any, tmp_path: Path) -> None:
    path = tmp_path / "failed.ndjson"
    path.write_text('{"stale": true}\n')
    op = TrackEventOperator(task_id=TASK_ID, events=_purchases(3), failed_events_path=f"file://{path}")
    result = _run(op)
    assert (result["failed"], result["failed_events_path"]) == (0, None)
    assert not path.exists()  # the earlier try's list is gone, and no empty file took its place
    assert list(tmp_path.iterdir()) == []
    _run(op)
    assert list(tmp_path.iterdir()) == []


def test_retry_after_a_mid_batch_outage_stores_each_event_once(sim: Any) -> None:
    n = 600
    events = _purchases(n)
    sim.inject("track", "status", code=503, after=250, times=None)
    op = TrackEventOperator(task_id=TASK_ID, events=events, hook_params={"max_attempts": 1})
    op.max_consecutive_failures = 20
    with pytest.raises(CometlyError, match="failures in a row"):
        _run(op)
    first_try = len(sim.events)
    assert 250 <= first_try < n

    sim.clear_faults()
    random.Random(1).shuffle(events)  # the upstream may well return its rows in another order
    result = _run(TrackEventOperator(task_id=TASK_ID, events=events))
    assert (result["sent"], result["duplicates"], result["failed"]) == (n - first_try, first_try, 0)
    assert len(sim.events) == n
    assert len(set(_keys(sim))) == n
    assert {e["email"] for e in sim.events} == {e["email"] for e in events}


_CRASHING_SENDER = textwrap.dedent(
    """
    import sys, types
    from cometly_provider.operators.track_event import TrackEventOperator
    events = [
        {"event_name": "purchase", "email": f"user{i}@example.com", "amount": round(i * 1.25, 2)}
        for i in range(int(sys.argv[1]))
    ]
    ti = types.SimpleNamespace(dag_id=sys.argv[2], task_id=sys.argv[3], run_id=sys.argv[4], map_index=-1)
    TrackEventOperator(task_id=sys.argv[3], events=events, max_workers=4).execute({"ti": ti})
    """
)


def test_worker_killed_mid_batch_then_retried_stores_each_event_once(sim: Any) -> None:
    n = 400
    sim.inject("track", "delay", seconds=0.02, times=None)  # about 200 events/s with 4 threads
    process = subprocess.Popen(
        [sys.executable, "-c", _CRASHING_SENDER, str(n), DAG_ID, TASK_ID, RUN_ID],
        env=os.environ.copy(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 120
        while len(sim.events) < 100:
            assert process.poll() is None, "the sender finished before it could be killed"
            assert time.monotonic() < deadline
            time.sleep(0.01)
        process.send_signal(signal.SIGKILL)  # a worker lost mid-batch: no clean-up at all
    finally:
        process.wait(30)
    first_try = len(sim.events)
    assert first_try < n
    sim.clear_faults()

    result = _run(TrackEventOperator(task_id=TASK_ID, events=list(reversed(_purchases(n)))))
    assert result["duplicates"] >= first_try  # a request in flight at the kill may have landed too
    assert result["sent"] + result["duplicates"] == n
    assert len(sim.events) == n
    assert len(set(_keys(sim))) == n


def test_idempotency_scope_run_versus_dag(sim: Any) -> None:
    events = _purchases(20)
    _run(TrackEventOperator(task_id=TASK_ID, events=events), run_id="run-1")
    again = _run(TrackEventOperator(task_id=TASK_ID, events=events), run_id="run-1")
    assert (again["sent"], again["duplicates"]) == (0, 20)  # a retried or cleared task
    other_run = _run(TrackEventOperator(task_id=TASK_ID, events=events), run_id="run-2")
    assert other_run["sent"] == 20  # a new run sends again: the run is part of the key
    assert len(sim.events) == 40

    sim.reset()
    _run(TrackEventOperator(task_id=TASK_ID, events=events, idempotency_scope="dag"), run_id="run-1")
    overlap = _run(
        TrackEventOperator(task_id=TASK_ID, events=events, idempotency_scope="dag"), run_id="run-2"
    )
    assert (overlap["sent"], overlap["duplicates"]) == (0, 20)
    assert len(sim.events) == 20


def test_identical_events_in_one_run_are_one_logical_event(
    sim: Any, capfd: pytest.CaptureFixture[str]
) -> None:
    events = [_purchases(1)[0]] * 3 + _purchases(2, start=1)
    first = _run(TrackEventOperator(task_id=TASK_ID, events=events))
    assert (first["sent"], first["duplicates"]) == (3, 2)
    assert "2 events have the same content as an earlier event of this batch" in "".join(capfd.readouterr())
    again = _run(TrackEventOperator(task_id=TASK_ID, events=list(reversed(events))))
    assert (again["sent"], again["duplicates"]) == (0, 5)
    assert len(sim.events) == 3


def test_progress_lines_during_a_batch(sim: Any, capfd: pytest.CaptureFixture[str]) -> None:
    sim.inject("track", "delay", seconds=0.01, times=None)
    op = TrackEventOperator(task_id=TASK_ID, events=_purchases(150), max_workers=2)
    op.progress_interval_s = 0.1
    _run(op)
    out, err = capfd.readouterr()
    lines = [line for line in (out + err).splitlines() if "Progress:" in line]
    assert len(lines) >= 3, out + err
    assert "events/min" in lines[0]
    assert "ETA" in lines[0]
    assert "/150 events" in lines[0]
    assert "Sending 150 events with 2 threads" in out + err
    assert "Done: 150/150 events (100%)" in out + err


# --- the rate limit ----------------------------------------------------------------------------------


def test_batch_of_5000_at_a_scaled_limit_sees_no_429(monkeypatch: pytest.MonkeyPatch) -> None:
    # 1000 events per 3 s window (the API's 1000/min, 20x faster): at least 12 s of pacing.
    window, limit, n = 3.0, 1000, 5000
    with spawn_simulator(window_seconds=window, rate_limits={"track": limit}) as client:
        _point_at(monkeypatch, client.base_url, client.api_key, rate_limit_window_seconds=window)
        result = _run(TrackEventOperator(task_id=TASK_ID, events=_purchases(n), max_workers=8))
        assert (result["sent"], result["failed"]) == (n, 0)
        assert client.status_counts("track") == {202: n}
        events = client.events
    assert len(events) == n
    assert len({e["idempotency_key"] for e in events}) == n


# --- NDJSON files ----------------------------------------------------------------------------------


def _ndjson(events: list[Any], *, blank_lines: bool = True) -> bytes:
    lines = [json.dumps(e) if not isinstance(e, str) else e for e in events]
    if blank_lines:
        lines.insert(2, "   ")
    return ("\n".join(lines) + "\n").encode()


@pytest.mark.parametrize("compressed", [False, True])
@pytest.mark.parametrize("as_uri", [True, False])
def test_local_ndjson_plain_and_gzip(sim: Any, tmp_path: Path, compressed: bool, as_uri: bool) -> None:
    events = _purchases(30)
    data = _ndjson(events)
    # The name says the opposite of the content: the magic bytes decide.
    path = tmp_path / ("events.ndjson" if compressed else "events.ndjson.gz")
    path.write_bytes(gzip.compress(data) if compressed else data)
    location = f"file://{path}" if as_uri else str(path)
    result = _run(TrackEventOperator(task_id=TASK_ID, events=location))
    assert (result["total"], result["sent"]) == (30, 30)
    assert sorted((_without_key(e) for e in sim.events), key=lambda e: e["email"]) == sorted(
        events, key=lambda e: e["email"]
    )


def test_ndjson_problems_are_reported_by_line(sim: Any, tmp_path: Path) -> None:
    rows: list[Any] = _purchases(5)
    rows[1] = '{"event_name": "purchase", "email": '  # truncated JSON
    rows[3] = {"event_name": "purchase", "email": "x@example.com", "amount": "ten"}
    path = tmp_path / "events.ndjson.gz"
    path.write_bytes(gzip.compress(_ndjson(rows)))  # blank line inserted as line 3
    with pytest.raises(CometlyInputError) as err:
        _run(TrackEventOperator(task_id=TASK_ID, events=str(path)))
    assert "line 2: not valid JSON" in str(err.value)
    assert "line 5: amount='ten' must be a number" in str(err.value)
    assert sim.requests_for("track") == []
    result = _run(TrackEventOperator(task_id=TASK_ID, events=str(path), on_invalid="skip"))
    assert [p["line"] for p in result["invalid"]] == [2, 5]
    assert result["sent"] == 3


def test_truncated_gzip_and_missing_file_fail_clearly(sim: Any, tmp_path: Path) -> None:
    path = tmp_path / "events.ndjson.gz"
    path.write_bytes(gzip.compress(_ndjson(_purchases(200)))[:-30])
    with pytest.raises(CometlyInputError, match="is not a complete gzip stream"):
        _run(TrackEventOperator(task_id=TASK_ID, events=str(path)))
    with pytest.raises(CometlyInputError, match="does not exist"):
        _run(TrackEventOperator(task_id=TASK_ID, events=str(tmp_path / "missing.ndjson")))
    assert sim.requests_for("track") == []


def test_validation_streams_the_file(sim: Any, tmp_path: Path) -> None:
    # 12,000 rows of ~4 kB: 49 MB of NDJSON (a small gzip). The last row is invalid, so the task
    # reads everything and fails before sending; memory must stay far below the file's size.
    row = {"event_name": "purchase", "email": "a@example.com", "profile_field_1": "x" * 4000}
    path = tmp_path / "big.ndjson.gz"
    with gzip.open(path, "wt", compresslevel=1) as handle:
        for i in range(12_000):
            handle.write(json.dumps({**row, "order_id": str(i)}) + "\n")
        handle.write('{"event_name": "nope"}\n')
    op = TrackEventOperator(task_id=TASK_ID, events=f"file://{path}")
    tracemalloc.start()
    try:
        with pytest.raises(CometlyInputError, match="1 of 12001 events is invalid"):
            _run(op)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 10_000_000, peak
    assert sim.requests_for("track") == []


def test_file_replaced_between_validation_and_sending_is_not_sent(sim: Any, tmp_path: Path) -> None:
    path = tmp_path / "events.ndjson"
    path.write_bytes(_ndjson(_purchases(5)))
    op = TrackEventOperator(task_id=TASK_ID, events=str(path))
    source, _ = _source(op)
    batch = _batch(op)
    plan = batch.validate(source, Stats())
    path.write_bytes(_ndjson(_purchases(6)))
    with pytest.raises(CometlyInputError, match="changed after it was validated"):
        list(batch.items(source, plan))


# --- object storage ----------------------------------------------------------------------------------


def test_s3_gzip_events_and_failed_events_to_s3(sim: Any, s3_conn: str) -> None:
    import boto3

    client = boto3.client("s3", endpoint_url=s3_conn, region_name="us-east-1")
    bucket = f"track-{uuid.uuid4().hex[:8]}"
    client.create_bucket(Bucket=bucket)
    client.put_object(Bucket=bucket, Key="in/events", Body=gzip.compress(_ndjson(_purchases(25))))
    sim.inject("track", "status", code=422, times=2, after=10)
    result = _run(
        TrackEventOperator(
            task_id=TASK_ID,
            events=f"s3://{bucket}/in/events",
            failed_events_path=f"s3://{bucket}/failed/{RUN_ID}.ndjson",
            allow_failures=True,
        )
    )
    assert (result["total"], result["sent"], result["failed"]) == (25, 23, 2)
    body = client.get_object(Bucket=bucket, Key=f"failed/{RUN_ID}.ndjson")["Body"].read()
    assert [json.loads(line)["status"] for line in body.splitlines()] == [422, 422]
    assert len(sim.events) == 23


def test_gcs_plain_events(sim: Any, gcs_conn: str) -> None:
    from google.auth.credentials import AnonymousCredentials
    from google.cloud import storage

    client = storage.Client(project="test-project", credentials=AnonymousCredentials())
    bucket = client.create_bucket(f"track-{uuid.uuid4().hex[:8]}")
    bucket.blob("in/events.ndjson").upload_from_string(_ndjson(_purchases(12)))
    result = _run(TrackEventOperator(task_id=TASK_ID, events=f"gs://{bucket.name}/in/events.ndjson"))
    assert (result["total"], result["sent"]) == (12, 12)
    assert len(sim.events) == 12


# --- real Airflow runs -----------------------------------------------------------------------------


def _xcom(dag_id: str, task_id: str, run_id: str, map_index: int = -1) -> Any:
    from airflow.models.xcom import XComModel
    from airflow.utils.session import create_session

    with create_session() as session:
        row = (
            session.query(XComModel)
            .filter_by(dag_id=dag_id, task_id=task_id, run_id=run_id, key="return_value", map_index=map_index)
            .one()
        )
        return json.loads(row.value) if isinstance(row.value, str) else row.value


def _states(dag_id: str, run_id: str) -> dict[tuple[str, int], str]:
    from airflow.models.taskinstance import TaskInstance
    from airflow.utils.session import create_session

    with create_session() as session:
        rows = session.query(TaskInstance).filter_by(dag_id=dag_id, run_id=run_id).all()
        return {(ti.task_id, ti.map_index): str(ti.state) for ti in rows}


@pytest.mark.usefixtures("airflow_db")
def test_dag_test_taskflow_upstream_and_templated_single_event(sim: Any) -> None:
    from airflow.sdk import DAG, task

    dag_id = f"cometly_track_{uuid.uuid4().hex[:8]}"
    with DAG(
        dag_id,
        schedule=None,
        start_date=pendulum.datetime(2024, 1, 1, tz="UTC"),
        params={"email": "vip@example.com", "amount": 99.5},
    ) as dag:

        @task
        def load_orders() -> list[dict[str, Any]]:
            return _purchases(40)

        TrackEventOperator(task_id="track_orders", events=load_orders())
        TrackEventOperator(
            task_id="track_one",
            event_name="purchase",
            email="{{ params.email }}",
            amount="{{ params.amount }}",
            order_id="order-{{ ds }}",
        )

    run = support.run_dag(dag, logical_date=pendulum.datetime(2024, 1, 15, tz="UTC"))
    assert run.state == "success", _states(dag_id, run.run_id)
    batch = _xcom(dag_id, "track_orders", run.run_id)
    assert (batch["total"], batch["sent"], batch["failed"]) == (40, 40, 0)
    one = _xcom(dag_id, "track_one", run.run_id)
    assert one["sent"] == 1
    single = [e for e in sim.events if e.get("order_id") == "order-2024-01-15"]
    assert single == [
        {
            "event_name": "purchase",
            "email": "vip@example.com",
            "amount": 99.5,
            "order_id": "order-2024-01-15",
            "idempotency_key": one["idempotency_key"],
        }
    ]
    assert one["idempotency_key"] == derive_idempotency_key(
        single[0], dag_id=dag_id, task_id="track_one", run_id=run.run_id
    )
    assert len(sim.events) == 41


@pytest.mark.usefixtures("airflow_db")
def test_dag_test_dynamic_task_mapping(sim: Any) -> None:
    from airflow.sdk import DAG, task

    dag_id = f"cometly_track_mapped_{uuid.uuid4().hex[:8]}"
    # Airflow's alert address must not become an event field when mapped tasks are unmapped.
    default_args = {"email": "alerts@example.com", "email_on_failure": False}
    start = pendulum.datetime(2024, 1, 1, tz="UTC")
    with DAG(dag_id, schedule=None, start_date=start, default_args=default_args) as dag:

        @task
        def batches() -> list[list[dict[str, Any]]]:
            return [_purchases(10), _purchases(10, start=10), _purchases(5, start=20)]

        TrackEventOperator.partial(task_id="track_batches", max_workers=2).expand(events=batches())
        TrackEventOperator.partial(task_id="track_each").expand(
            event=[{"event_name": "sign_up", "email": f"new{i}@example.com"} for i in range(3)]
        )

    run = support.run_dag(dag, logical_date=pendulum.datetime(2024, 1, 15, tz="UTC"))
    assert run.state == "success", _states(dag_id, run.run_id)
    assert [_xcom(dag_id, "track_batches", run.run_id, i)["sent"] for i in range(3)] == [10, 10, 5]
    assert [_xcom(dag_id, "track_each", run.run_id, i)["sent"] for i in range(3)] == [1, 1, 1]
    assert len(sim.events) == 28
    assert len(set(_keys(sim))) == 28
    assert not any(e["email"] == "alerts@example.com" for e in sim.events)
