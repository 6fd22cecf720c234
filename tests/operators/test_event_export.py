"""CreateEventExportOperator over real sockets: validation, creation, waiting, retries and pacing."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import threading
import time
from datetime import timedelta
from typing import Any

import pytest
from airflow.providers.common.compat.sdk import TaskDeferred

from cometly_provider import pending as module
from cometly_provider.exceptions import (
    CometlyExportFailedError,
    CometlyExportSensorTimeout,
    CometlyExportTimeoutError,
    CometlyInputError,
    CometlyNotFoundError,
)
from cometly_provider.hooks.cometly import CometlyHook
from cometly_provider.operators.event_export import (
    PENDING_EXPORT_VARIABLE_PREFIX,
    CreateEventExportOperator,
)
from cometly_provider.triggers.event_export import EventExportTrigger
from cometly_provider.validation import SOURCES as ALL_SOURCES
from tests import event_exports as support

RESULT_KEYS = {"export_id", "kind", "status", "download_url", "expires_at", "completed_at"}
SOURCES = ["facebook_ads", "google_ads"]


@pytest.fixture
def sim(cometly_simulator: Any, monkeypatch: pytest.MonkeyPatch) -> Any:
    return support.configure(cometly_simulator, monkeypatch)


def _op(**kwargs: Any) -> CreateEventExportOperator:
    kwargs.setdefault("date", "2024-01-15")
    kwargs.setdefault("poll_interval", 0.05)
    kwargs.setdefault("timeout", 30)
    return CreateEventExportOperator(task_id="create_export", **kwargs)


class MemoryVariables:
    """Stand-in for ``airflow.sdk.Variable`` when ``execute`` is called outside a task."""

    def __init__(self) -> None:
        self.store: dict[str, str] = {}

    def get(self, key: str, default: Any = None) -> Any:
        return self.store.get(key, default)

    def set(self, key: str, value: str, description: str | None = None) -> None:
        self.store[key] = value

    def delete(self, key: str) -> None:
        self.store.pop(key, None)


@pytest.fixture
def variables(monkeypatch: pytest.MonkeyPatch) -> MemoryVariables:
    memory = MemoryVariables()
    monkeypatch.setattr(module, "Variable", memory)
    return memory


# --- create ----------------------------------------------------------------------------------------


def test_creates_the_export_and_returns_its_id(sim: Any) -> None:
    ti = support.FakeTI()
    export_id = _op().execute(support.context(ti))

    assert isinstance(export_id, int)
    assert export_id in sim.exports
    assert ti.xcom == {"export_id": export_id, "day": "2024-01-15"}
    creates = sim.requests_for("export_create")
    assert [r.json for r in creates] == [{"date": "2024-01-15"}]
    assert sim.requests_for("export_status") == []  # nothing to wait for


def test_every_parameter_reaches_the_api(sim: Any) -> None:
    _op(
        date=dt.datetime(2024, 1, 15, 23, 30, tzinfo=dt.UTC),
        query_mode="company",
        event_names=["purchase", "custom_event_7"],
        sources=SOURCES,
        attribution_model="linear",
        attribution_window=0,
        fields=["event_name", "amount", "ad_name", "campaign_id"],
    ).execute(support.context())
    assert sim.requests_for("export_create")[0].json == {
        "date": "2024-01-15",
        "query_mode": "company",
        "event_names": ["purchase", "custom_event_7"],
        "sources": SOURCES,
        "attribution_model": "linear",
        "attribution_window": 0,
        "fields": ["event_name", "amount", "ad_name", "campaign_id"],
    }


def test_values_rendered_as_text_are_read_back(sim: Any) -> None:
    # What "{{ params.x }}" gives without render_template_as_native_obj.
    _op(
        date=dt.date(2024, 1, 15),
        event_names="['purchase', 'sign_up']",
        sources='["facebook_ads"]',
        attribution_model="last_touch",
        attribution_window="30",
        fields="None",
        query_mode="",
    ).execute(support.context())
    assert sim.requests_for("export_create")[0].json == {
        "date": "2024-01-15",
        "event_names": ["purchase", "sign_up"],
        "sources": ["facebook_ads"],
        "attribution_model": "last_touch",
        "attribution_window": 30,
    }


INVALID: list[tuple[dict[str, Any], str, str]] = [
    ({"date": "15/01/2024"}, "date", "date='15/01/2024' is invalid: use one day as YYYY-MM-DD"),
    ({"date": "2024-1-5"}, "date", "date='2024-1-5' is invalid"),
    ({"date": "2024-02-30"}, "date", "date='2024-02-30' is invalid"),
    ({"date": "2024-01-15/2024-01-16"}, "date", "an export covers exactly one day"),
    ({"date": ["2024-01-15", "2024-01-16"]}, "date", "an export covers exactly one day"),
    ({"date": ""}, "date", "renders empty for a DAG run without a logical date"),
    ({"query_mode": "person"}, "query_mode", "query_mode='person' is not allowed; allowed: profile, company"),
    ({"event_names": [f"custom_event_{i}" for i in range(1, 12)]}, "event_names", "has 11 values"),
    ({"event_names": []}, "event_names", "event_names has 0 values; between 1 and 10"),
    ({"event_names": ["purchase", "purchase"]}, "event_names", "'purchase' is repeated"),
    ({"event_names": ["buy_stuff"]}, "event_names", "'buy_stuff' is not allowed"),
    ({"event_names": "purchase"}, "event_names", "must be a list of strings"),
    (
        {"sources": ["email", "email"], "attribution_model": "linear", "attribution_window": 7},
        "sources",
        "'email' is repeated",
    ),
    (
        {"sources": ["myspace_ads"], "attribution_model": "linear", "attribution_window": 7},
        "sources",
        "'myspace_ads' is not allowed",
    ),
    (
        {"sources": SOURCES, "attribution_window": 7},
        "attribution_model",
        "attribution_model is required when sources is given",
    ),
    (
        {"sources": SOURCES, "attribution_model": "linear"},
        "attribution_window",
        "attribution_window is required when sources is given",
    ),
    (
        {"sources": SOURCES, "attribution_model": "linear", "attribution_window": 3},
        "attribution_window",
        "attribution_window=3 is not allowed; allowed: 0, 1, 7, 14, 30, 60, 90",
    ),
    (
        {"sources": SOURCES, "attribution_model": "linear", "attribution_window": "7 days"},
        "attribution_window",
        "attribution_window='7 days' is not allowed",
    ),
    (
        {"sources": SOURCES, "attribution_model": "best_touch", "attribution_window": 7},
        "attribution_model",
        "attribution_model='best_touch' is not allowed",
    ),
    ({"fields": ["event_name"] * 21}, "fields", "fields has 21 values; between 1 and 20"),
    ({"fields": ["amount", "amount"]}, "fields", "'amount' is repeated"),
    ({"fields": ["revenue"]}, "fields", "'revenue' is not allowed"),
    ({"fields": ["amount", "ad_name"]}, "fields", "ad_name requires sources"),
    ({"fields": ["account_id"]}, "fields", "account_id requires sources"),
]


@pytest.mark.parametrize(
    ("kwargs", "field", "fragment"), INVALID, ids=[f"{i}-{case[1]}" for i, case in enumerate(INVALID)]
)
def test_invalid_parameters_fail_before_any_request(
    sim: Any, kwargs: dict[str, Any], field: str, fragment: str
) -> None:
    op = _op(**kwargs)
    with pytest.raises(CometlyInputError) as info:
        op.execute(support.context())
    assert fragment in str(info.value)
    assert info.value.field == field
    assert sim.requests == []


def test_a_sixteenth_source_is_rejected(sim: Any) -> None:
    sources = sorted(ALL_SOURCES)[:16]
    with pytest.raises(CometlyInputError, match="sources has 16 values; between 1 and 15 are allowed"):
        _op(sources=sources, attribution_model="linear", attribution_window=7).execute(support.context())
    assert sim.requests == []


@pytest.mark.parametrize(
    ("kwargs", "fragment"),
    [
        ({"poll_interval": -1}, "poll_interval=-1 is invalid"),
        ({"poll_interval": 0}, "poll_interval=0 is invalid"),
        ({"timeout": "1h"}, "timeout='1h' is invalid"),
        ({"wait_for_completion": "yes"}, "wait_for_completion='yes' is invalid: expected True or False"),
        ({"deferrable": 1}, "deferrable=1 is invalid"),
    ],
)
def test_bad_settings_fail_when_the_dag_is_parsed(kwargs: dict[str, Any], fragment: str) -> None:
    with pytest.raises(CometlyInputError, match=fragment):
        _op(**kwargs)


def test_no_connection_lookup_or_request_at_parse_time() -> None:
    # An unknown connection only matters when the task runs.
    op = _op(cometly_conn_id="does_not_exist", poll_interval=timedelta(seconds=5))
    assert op.poll_interval == 5
    assert op.date == "2024-01-15"
    assert CreateEventExportOperator(task_id="t").date is None  # the last complete day, at run time


def test_creation_retries_outlast_a_rate_limit_window(sim: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    support.configure(sim, monkeypatch, max_attempts=2, retry_max_wait=0.5)
    op = _op()
    hook = CometlyHook()
    assert hook.retry_policy.max_attempts == 2
    assert hook.patient_create_attempts > 4
    # A 429 storm longer than the connection's own 2 attempts is waited out.
    sim.inject("export_create", "status", code=429, retry_after=0.2, times=4)
    assert isinstance(op.execute(support.context()), int)
    assert sim.status_counts("export_create") == {429: 4, 202: 1}


# --- wait_for_completion ------------------------------------------------------------------------------


def test_wait_for_completion_returns_the_completed_export(sim: Any, variables: MemoryVariables) -> None:
    ti = support.FakeTI()
    result = _op(wait_for_completion=True).execute(support.context(ti))

    assert set(result) == RESULT_KEYS
    assert result["status"] == "completed"
    assert ti.xcom == {"export_id": result["export_id"], "day": "2024-01-15"}
    assert len(sim.requests_for("export_status")) >= 2
    assert variables.store == {}  # recorded while waiting, forgotten on success


def test_export_id_is_pushed_before_waiting(sim: Any, variables: MemoryVariables) -> None:
    sim.next_exports_outcome("failed", message="Export failed while generating the file.")
    ti = support.FakeTI()
    with pytest.raises(CometlyExportFailedError, match="Export failed while generating the file"):
        _op(wait_for_completion=True).execute(support.context(ti))
    assert ti.xcom["export_id"] in sim.exports
    assert variables.store == {}  # a failed export is never reused


def test_wait_times_out_with_a_retryable_error(sim: Any, variables: MemoryVariables) -> None:
    sim.next_exports_outcome("stuck")
    ti = support.FakeTI(try_number=1, max_tries=2)
    with pytest.raises(CometlyExportTimeoutError, match=r"within 0\.4 s; last status: processing") as info:
        _op(wait_for_completion=True, timeout=0.4).execute(support.context(ti))
    assert not isinstance(info.value, CometlyExportSensorTimeout)  # Airflow may retry it
    # Kept for the retry, which will wait for the same export.
    (record,) = (json.loads(v) for v in variables.store.values())
    assert record["export_id"] == ti.xcom["export_id"]


def test_wait_deferrable_defers_and_resumes(sim: Any, variables: MemoryVariables) -> None:
    ti = support.FakeTI()
    op = _op(wait_for_completion=True, deferrable=True, timeout=300)
    before = time.time()
    with pytest.raises(TaskDeferred) as info:
        op.execute(support.context(ti))
    trigger = info.value.trigger
    assert isinstance(trigger, EventExportTrigger)
    assert trigger.export_id == ti.xcom["export_id"]
    assert before + 300 <= trigger.end_time <= time.time() + 300
    assert len(variables.store) == 1  # survives the deferral

    async def first_event() -> Any:
        async for event in EventExportTrigger(**trigger.serialize()[1]).run():
            return event
        return None

    event = asyncio.run(first_event())
    # As the Task SDK resumes a deferred task: through resume_execution.
    result = op.resume_execution("execute_complete", {"event": event.payload}, support.context(ti))
    assert result["export_id"] == ti.xcom["export_id"]
    assert variables.store == {}


def test_execute_complete_timeout_is_a_retryable_timeout(variables: MemoryVariables) -> None:
    op = _op(wait_for_completion=True, deferrable=True)
    ti = support.FakeTI(try_number=1, max_tries=3)
    variables.store["x"] = "kept"
    with pytest.raises(CometlyExportTimeoutError, match="missed"):
        op.execute_complete(
            support.context(ti), event={"status": "timeout", "export_id": 3, "message": "export 3 missed"}
        )
    assert "x" in variables.store


# --- retries: no duplicate export ---------------------------------------------------------------------


def test_a_retry_reuses_the_export_of_the_failed_try(sim: Any, variables: MemoryVariables) -> None:
    # The first status poll answers 404 (say, a lagging replica): try 1 fails after creating.
    sim.inject("export_status", "status", code=404, times=1)
    first = support.FakeTI(try_number=1, max_tries=1)
    with pytest.raises(CometlyNotFoundError):
        _op(wait_for_completion=True).execute(support.context(first))
    (key,) = variables.store
    assert key.startswith(PENDING_EXPORT_VARIABLE_PREFIX)
    assert len(key) <= 250  # Airflow's limit on Variable keys
    assert json.loads(variables.store[key])["export_id"] == first.xcom["export_id"]

    retry = support.FakeTI(try_number=2, max_tries=1)
    result = _op(wait_for_completion=True).execute(support.context(retry))
    assert result["export_id"] == first.xcom["export_id"] == retry.xcom["export_id"]
    assert len(sim.requests_for("export_create")) == 1
    assert variables.store == {}


def test_other_task_instances_do_not_share_the_record(sim: Any, variables: MemoryVariables) -> None:
    sim.next_exports_outcome("stuck")
    with pytest.raises(CometlyExportTimeoutError):
        _op(wait_for_completion=True, timeout=0).execute(support.context(support.FakeTI(1, 1, map_index=0)))
    other = support.FakeTI(try_number=2, max_tries=1, map_index=1)
    assert _op(wait_for_completion=True).execute(support.context(other))["export_id"] == 2


def test_a_retry_with_other_parameters_creates_a_new_export(sim: Any, variables: MemoryVariables) -> None:
    sim.next_exports_outcome("stuck")
    with pytest.raises(CometlyExportTimeoutError):
        _op(wait_for_completion=True, timeout=0).execute(support.context(support.FakeTI(1, 1)))
    retry = support.FakeTI(try_number=2, max_tries=1)
    result = _op(wait_for_completion=True, fields=["amount"]).execute(support.context(retry))
    assert len(sim.requests_for("export_create")) == 2
    assert result["export_id"] == retry.xcom["export_id"] == 2


def test_a_retry_after_a_failed_export_creates_a_new_one(sim: Any, variables: MemoryVariables) -> None:
    sim.next_exports_outcome("stuck")
    first = support.FakeTI(try_number=1, max_tries=1)
    with pytest.raises(CometlyExportTimeoutError):
        _op(wait_for_completion=True, timeout=0).execute(support.context(first))
    # The export fails after the try gave up; the retry must not wait for it.
    record = json.loads(next(iter(variables.store.values())))
    variables.store[next(iter(variables.store))] = json.dumps({**record, "export_id": 999})  # gone (404)
    retry = support.FakeTI(try_number=2, max_tries=1)
    assert _op(wait_for_completion=True).execute(support.context(retry))["export_id"] == 2


def test_the_last_try_forgets_the_export(sim: Any, variables: MemoryVariables) -> None:
    sim.next_exports_outcome("stuck")
    with pytest.raises(CometlyExportTimeoutError):
        _op(wait_for_completion=True, timeout=0).execute(support.context(support.FakeTI(2, 1)))
    assert variables.store == {}


def test_reuse_can_be_turned_off(sim: Any, variables: MemoryVariables) -> None:
    sim.next_exports_outcome("stuck")
    with pytest.raises(CometlyExportTimeoutError):
        _op(wait_for_completion=True, timeout=0, reuse_export_on_retry=False).execute(
            support.context(support.FakeTI(1, 1))
        )
    assert variables.store == {}


# --- pacing: many exports at 5 per window -----------------------------------------------------------


def _create_on_threads(dates: list[str]) -> dict[str, Any]:
    """One operator execution per date, all at once on threads (like concurrent mapped tasks)."""
    results: dict[str, Any] = {}

    def run(date: str) -> None:
        try:
            results[date] = _op(date=date).execute(support.context(support.FakeTI()))
        except BaseException as err:  # reported by the callers' assertions
            results[date] = err

    threads = [threading.Thread(target=run, args=(d,)) for d in dates]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    return results


DATES = [f"2024-01-{day:02d}" for day in range(1, 13)]


def test_twelve_concurrent_creations_share_the_limiter_and_never_hit_429(sim: Any) -> None:
    sim.update_config(rate_limits={"export_create": 5})
    results = _create_on_threads(DATES)

    assert all(isinstance(v, int) for v in results.values()), results
    assert sorted(results) == DATES
    assert sim.status_counts("export_create") == {202: 12}
    assert sorted(e.params["date"] for e in sim.exports.values()) == DATES


def test_twelve_concurrent_creations_without_a_shared_limiter_wait_out_429s(
    sim: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    # No client-side limiter: like twelve worker processes that do not share one. The server's 429s
    # (with Retry-After) are the only pacing; the creation retry policy must outlast them.
    support.configure(sim, monkeypatch, rate_limiting=False)
    sim.update_config(rate_limits={"export_create": 5})
    results = _create_on_threads(DATES)

    assert all(isinstance(v, int) for v in results.values()), results
    counts = sim.status_counts("export_create")
    assert counts[202] == 12
    assert counts[429] >= 1  # the server pushed back, and nobody failed on it
    assert sorted(e.params["date"] for e in sim.exports.values()) == DATES


@pytest.mark.usefixtures("airflow_db")
def test_backfill_of_12_mapped_exports_all_complete(sim: Any) -> None:
    """``.expand(date=[...12 days...])`` through dag.test(), 5 creations per window, and 429s.

    dag.test() runs mapped instances one after the other, slower than 5 per window, so the server
    also answers some creations 429 (Retry-After: 1) on purpose: no task may fail on them.
    """
    from airflow.sdk import DAG

    sim.update_config(rate_limits={"export_create": 5}, queued_seconds=0, processing_seconds=0.05)
    sim.inject("export_create", "status", code=429, retry_after=1, every=3, times=4)
    dates = [f"2024-02-{day:02d}" for day in range(1, 13)]
    dag_id = support.dag_id("cometly_backfill")
    with DAG(dag_id, schedule=None, start_date=support.START, catchup=False) as dag:
        CreateEventExportOperator.partial(
            task_id="create_export", wait_for_completion=True, poll_interval=0.05, timeout=60
        ).expand(date=dates)
    run = support.run_dag(dag)

    states = support.task_states(dag_id, run.run_id)
    assert run.state == "success", states
    assert sorted(states) == [("create_export", i) for i in range(12)]
    assert set(states.values()) == {"success"}
    assert sim.status_counts("export_create") == {202: 12, 429: 4}
    assert sorted(e.params["date"] for e in sim.exports.values()) == dates
    results = [support.xcom_value(dag_id, "create_export", run.run_id, map_index=i) for i in range(12)]
    assert sorted(r["export_id"] for r in results) == sorted(sim.exports)
    assert {r["status"] for r in results} == {"completed"}
    assert {r["export_id"]: sim.exports[r["export_id"]].params["date"] for r in results} == {
        r["export_id"]: dates[i] for i, r in enumerate(results)
    }


# --- real Airflow runs: retries and deferral --------------------------------------------------------


def _pending_variables() -> list[str]:
    from airflow.models.variable import Variable as VariableModel
    from airflow.utils.session import create_session

    with create_session() as session:
        return [
            v.key
            for v in session.query(VariableModel).all()
            if v.key.startswith(PENDING_EXPORT_VARIABLE_PREFIX)
        ]


def _single_task_dag(**kwargs: Any) -> tuple[str, Any]:
    from airflow.sdk import DAG

    dag_id = support.dag_id("cometly_create")
    with DAG(dag_id, schedule=None, start_date=support.START, catchup=False) as dag:
        CreateEventExportOperator(task_id="create_export", poll_interval=0.05, **kwargs)
    return dag_id, support.run_dag(dag)


def _tries(dag_id: str, run_id: str) -> int:
    from airflow.models.taskinstance import TaskInstance
    from airflow.utils.session import create_session

    with create_session() as session:
        ti = session.query(TaskInstance).filter_by(dag_id=dag_id, run_id=run_id).one()
        return int(ti.try_number)


@pytest.mark.usefixtures("airflow_db")
def test_dag_test_retry_reuses_the_export(sim: Any) -> None:
    # The first status poll answers 404 (say, a replica lagging behind): try 1 fails after creating
    # the export; try 2 must wait for that export, not create another.
    sim.inject("export_status", "status", code=404, times=1)
    dag_id, run = _single_task_dag(wait_for_completion=True, timeout=60, retries=1, retry_delay=timedelta(0))
    assert run.state == "success", support.task_states(dag_id, run.run_id)
    assert _tries(dag_id, run.run_id) == 2
    assert len(sim.requests_for("export_create")) == 1
    result = support.xcom_value(dag_id, "create_export", run.run_id)
    assert result["export_id"] == 1
    assert support.xcom_value(dag_id, "create_export", run.run_id, key="export_id") == 1
    assert _pending_variables() == []


@pytest.mark.usefixtures("airflow_db")
def test_dag_test_retry_after_a_failed_export_creates_a_new_one(sim: Any) -> None:
    sim.next_exports_outcome("failed", message="Export failed while generating the file.")
    dag_id, run = _single_task_dag(wait_for_completion=True, timeout=60, retries=1, retry_delay=timedelta(0))
    assert run.state == "success", support.task_states(dag_id, run.run_id)
    assert len(sim.requests_for("export_create")) == 2
    assert support.xcom_value(dag_id, "create_export", run.run_id)["export_id"] == 2
    assert _pending_variables() == []


@pytest.mark.usefixtures("airflow_db")
def test_dag_test_wait_deferrable(sim: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    runs: list[int] = []
    original = EventExportTrigger.run

    def spy(self: EventExportTrigger) -> Any:
        runs.append(self.export_id)
        return original(self)

    monkeypatch.setattr(EventExportTrigger, "run", spy)
    sim.update_config(processing_seconds=1.0)
    dag_id, run = _single_task_dag(wait_for_completion=True, deferrable=True, timeout=60)
    assert run.state == "success", support.task_states(dag_id, run.run_id)
    result = support.xcom_value(dag_id, "create_export", run.run_id)
    assert set(result) == RESULT_KEYS
    assert runs == [result["export_id"]]
    # The export_id pushed before deferring survives the resume.
    assert support.xcom_value(dag_id, "create_export", run.run_id, key="export_id") == result["export_id"]
    assert _pending_variables() == []
