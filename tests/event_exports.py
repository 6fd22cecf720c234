"""Shared set-up for the event export operator, sensor and trigger tests.

The simulator runs with a scaled rate-limit window (1.5 s instead of 60 s) and short export
timings; the Cometly connection tells the hook the same window, so limits, Retry-After waits and
the poll-interval floor (window / 30 = 0.05 s) all scale with it.
"""

from __future__ import annotations

import datetime as dt
import time
import uuid
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl, urlsplit

from tests.conftest import cometly_conn_uri

if TYPE_CHECKING:
    import pytest

WINDOW = 1.5
QUEUED = 0.2
PROCESSING = 0.3
START = dt.datetime(2024, 1, 1, tzinfo=dt.UTC)


def configure(sim: Any, monkeypatch: pytest.MonkeyPatch, **conn_extra: Any) -> Any:
    """Scale the simulator's window and export timings; point ``cometly_default`` at it."""
    sim.update_config(
        window_seconds=WINDOW, queued_seconds=QUEUED, processing_seconds=PROCESSING, export_rows=20
    )
    extra = {"retry_min_wait": 0.05, "retry_max_wait": 5, "rate_limit_window_seconds": WINDOW, **conn_extra}
    monkeypatch.setenv("AIRFLOW_CONN_COMETLY_DEFAULT", cometly_conn_uri(sim.base_url, sim.api_key, **extra))
    return sim


def create_export(sim: Any, date: str = "2024-01-15") -> int:
    """An export made through the simulator's API with the hook (no operator involved)."""
    from cometly_provider.hooks.cometly import CometlyHook

    return int(CometlyHook().create_event_export(date=date)["export_id"])


def wait_completed(sim: Any, export_id: int, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while sim.exports[export_id].status != "completed":
        assert time.monotonic() < deadline, "export did not complete"
        time.sleep(0.02)


def signature(url: str) -> str:
    """The secret part of a presigned URL."""
    return dict(parse_qsl(urlsplit(url).query))["X-Amz-Signature"]


def assert_no_signature(sim: Any, text: str) -> None:
    """No presigned-URL signature the simulator ever issued appears in ``text``."""
    issued = sim.issued_signatures
    assert issued, "the simulator issued no presigned URL: nothing was checked"
    assert not [s for s in issued if s in text]


def assert_stored_url(result: Any, sim: Any, export_id: int, kind: str = "events") -> None:
    """The result's download_url as XCom keeps it: no signature, the export id to refresh from."""
    url = result["download_url"]
    assert url.startswith(sim.base_url + "/_s3/exports/")
    assert url.endswith(f".ndjson.gz?<redacted>#cometly_export_id={export_id}&cometly_export_kind={kind}")
    assert_no_signature(sim, url)


def dag_id(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex[:8]}"


class FakeTI:
    """Enough of a task instance for calling ``execute`` directly."""

    def __init__(self, try_number: int = 1, max_tries: int = 0, map_index: int = -1) -> None:
        self.dag_id = "direct_dag"
        self.run_id = "manual__2024-01-15"
        self.task_id = "create_export"
        self.map_index = map_index
        self.try_number = try_number
        self.max_tries = max_tries
        self.xcom: dict[str, Any] = {}

    def xcom_push(self, key: str, value: Any) -> None:
        self.xcom[key] = value


def context(ti: FakeTI | None = None) -> Any:
    return {"ti": ti or FakeTI()}


def xcom_value(dag: str, task_id: str, run_id: str, key: str = "return_value", map_index: int = -1) -> Any:
    import json

    from airflow.models.xcom import XComModel
    from airflow.utils.session import create_session

    with create_session() as session:
        row = (
            session.query(XComModel)
            .filter_by(dag_id=dag, task_id=task_id, run_id=run_id, key=key, map_index=map_index)
            .one_or_none()
        )
        if row is None:
            return None
        return json.loads(row.value) if isinstance(row.value, str) else row.value


def task_states(dag: str, run_id: str) -> dict[tuple[str, int], str]:
    from airflow.models.taskinstance import TaskInstance
    from airflow.utils.session import create_session

    with create_session() as session:
        rows = session.query(TaskInstance).filter_by(dag_id=dag, run_id=run_id).all()
        return {(ti.task_id, ti.map_index): str(ti.state) for ti in rows}


def run_dag(
    dag: Any, logical_date: dt.datetime = dt.datetime(2024, 1, 15, tzinfo=dt.UTC), **test_kwargs: Any
) -> Any:
    """``dag.test()`` for a DAG built in a test.

    Airflow 3's ``dag.test()`` runs the serialized DAG and only finds DAGs of the configured bundle
    (the DAGs folder) by itself, so the DAG is written to the metadata DB first.
    """
    serialize_dag(dag)
    if not hasattr(dag, "test"):  # Airflow 3.0: the Task SDK's DAG has no test() yet
        from airflow.models.dag import DAG as SchedulerDAG

        dag = SchedulerDAG.from_sdk_dag(dag)
    return dag.test(logical_date=logical_date, **test_kwargs)


def dagbag(dag_folder: str) -> Any:
    """A DagBag of ``dag_folder`` on every supported Airflow line (the class moved in 3.1)."""
    try:
        from airflow.dag_processing.dagbag import DagBag
    except ImportError:  # Airflow 3.0
        from airflow.models.dagbag import DagBag  # type: ignore[no-redef,unused-ignore]
    return DagBag(dag_folder=dag_folder)


def serialize_dag(dag: Any) -> None:
    """Write a DAG built in a test to the metadata DB: Airflow 3's dag.test() runs the serialized DAG,
    and only finds DAGs of the configured bundle (the DAGs folder) by itself."""
    from airflow.dag_processing.bundles.manager import DagBundlesManager

    DagBundlesManager().sync_bundles_to_db()
    bag = dagbag("/dev/null")
    bag.bag_dag(dag)
    try:
        from airflow.dag_processing.dagbag import sync_bag_to_db
    except ImportError:  # Airflow 3.0
        bag.sync_to_db("dags-folder", None)
    else:
        sync_bag_to_db(bag, "dags-folder", None)
