"""Connection mistakes fail before the first request; ``failed_events_path`` shows the last try only.

Real sockets: the simulator's request log proves that nothing was sent.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

from cometly_provider.exceptions import CometlyError, CometlyInputError
from cometly_provider.operators.track_event import TrackEventOperator
from tests.operators.test_track_event import _purchases, _run
from tests.operators.test_track_event import sim as sim  # the fixture


def _conn(monkeypatch: pytest.MonkeyPatch, conn_id: str, **fields: Any) -> None:
    monkeypatch.setenv(f"AIRFLOW_CONN_{conn_id.upper()}", json.dumps({"conn_type": "cometly", **fields}))


@pytest.mark.parametrize(
    ("fields", "field", "fragment"),
    [
        ({"password": ""}, "password", "has no API key"),
        ({"password": "k", "host": "ftp://example.com"}, "host", "is not an http(s) URL"),
        ({"password": "k", "extra": "not json"}, "extra", "extra is not a JSON object"),
        ({"password": "k", "extra": "[1, 2]"}, "extra", "extra is not a JSON object"),
        ({"password": "k", "extra": {"timeout": "soon"}}, "timeout", "timeout / connect_timeout is invalid"),
        ({"password": "k", "extra": {"timeout": 0}}, "timeout", "must be > 0 seconds"),
        ({"password": "k", "extra": {"max_attempts": 0}}, "max_attempts", "max_attempts=0 must be >= 1"),
        ({"password": "k", "extra": {"rate_limits": {"track": 0}}}, "rate_limits", "track=0 must be"),
        ({"password": "k", "extra": {"rate_limits": ["track"]}}, "rate_limits", "rate_limits"),
    ],
)
def test_connection_mistakes_fail_before_any_request_even_with_allow_failures(
    sim: Any, monkeypatch: pytest.MonkeyPatch, fields: dict[str, Any], field: str, fragment: str
) -> None:
    if "host" not in fields:
        fields = {**fields, "host": sim.base_url}
    _conn(monkeypatch, "cometly_broken", **fields)
    op = TrackEventOperator(
        task_id="t", cometly_conn_id="cometly_broken", events=_purchases(5), allow_failures=True
    )
    with pytest.raises(CometlyInputError) as err:
        _run(op)
    assert "'cometly_broken'" in str(err.value)
    assert fragment in str(err.value)
    assert err.value.field == field
    assert sim.requests == []


def test_undefined_connection_is_named(sim: Any) -> None:
    op = TrackEventOperator(task_id="t", cometly_conn_id="cometly_missing", event=_purchases(1)[0])
    with pytest.raises(CometlyInputError, match="'cometly_missing' is not defined") as err:
        _run(op)
    assert err.value.field == "cometly_conn_id"
    assert sim.requests == []


def test_failed_events_file_after_a_stopped_batch_lists_that_try(sim: Any, tmp_path: Path) -> None:
    path = tmp_path / "failed.ndjson"
    path.write_text('{"from": "an earlier try"}\n')
    sim.inject("track", "status", code=503, after=10, times=None)
    op = TrackEventOperator(
        task_id="t", events=_purchases(100), failed_events_path=str(path), hook_params={"max_attempts": 1}
    )
    op.max_consecutive_failures = 5
    with pytest.raises(CometlyError, match="5 failures in a row") as err:
        _run(op)
    failed = int(re.search(r"(\d+) failed", str(err.value)).group(1))  # type: ignore[union-attr]
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    assert len(lines) == failed >= 5  # every failure of this try, none of the earlier one
    assert {line["status"] for line in lines} == {503}
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".part")]

    sim.clear_faults()  # the retry succeeds: the file goes, none is created
    result = _run(TrackEventOperator(task_id="t", events=_purchases(100), failed_events_path=str(path)))
    assert (result["failed"], result["failed_events_path"]) == (0, None)
    assert list(tmp_path.iterdir()) == []
    assert len(sim.events) == 100
