"""The example DAGs, end to end on a real Airflow: simulator (Cometly) and moto server (S3).

Both DAG files are parsed by a real DagBag (with outbound connections forbidden, as parse time must
not touch the network) and run with ``dag.test()`` against the SQLite metadata DB.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import socket
from pathlib import Path
from typing import Any

import pytest
import requests

from tests import event_exports as support
from tests.conftest import cometly_conn_uri

EXAMPLE_DAGS = Path(__file__).resolve().parents[2] / "example_dags"
EXPECTED_DAGS = {"cometly_daily_export", "cometly_track_conversions", "cometly_track_conversions_mapped"}
WINDOW = 1.5  # a scaled rate-limit "minute", told to both the simulator and the hook


@pytest.fixture(scope="module")
def example_dags() -> dict[str, Any]:
    """The example DAGs as a DagBag parses them, with any network connection failing loudly."""
    attempts: list[Any] = []
    original = socket.socket.connect

    def no_network(self: socket.socket, address: Any) -> None:
        attempts.append(address)
        raise OSError(f"network access at DAG parse time: {address!r}")

    socket.socket.connect = no_network  # type: ignore[method-assign]
    try:
        bag = support.dagbag(str(EXAMPLE_DAGS))
    finally:
        socket.socket.connect = original  # type: ignore[method-assign]
    assert bag.import_errors == {}
    assert attempts == []
    return bag.dags


def test_example_dags_import_cleanly_without_network(example_dags: dict[str, Any]) -> None:
    assert set(example_dags) == EXPECTED_DAGS
    for dag in example_dags.values():
        assert len(dag.doc_md or "") > 200, f"{dag.dag_id} has no docstring a user can follow"
        assert "cometly" in dag.tags


@pytest.mark.usefixtures("airflow_db")
@pytest.mark.cometly_simulator(window_seconds=WINDOW, queued_seconds=0.3, processing_seconds=1.0)
def test_daily_export_lands_the_days_events_in_s3(
    example_dags: dict[str, Any],
    cometly_simulator: Any,
    bucket: tuple[Any, str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    sim = cometly_simulator
    sim.update_config(export_rows=3000)
    monkeypatch.setenv(
        "AIRFLOW_CONN_COMETLY_DEFAULT",
        cometly_conn_uri(sim.base_url, sim.api_key, rate_limit_window_seconds=WINDOW, retry_min_wait=0.05),
    )
    client, name = bucket

    run = support.run_dag(example_dags["cometly_daily_export"], run_conf={"bucket": name})

    assert run.state == "success", support.task_states("cometly_daily_export", run.run_id)
    exports = {e.kind: e for e in sim.exports.values()}
    assert sorted(exports) == ["contacts", "events"]  # both branches, one export each
    export, contacts = exports["events"], exports["contacts"]
    # The last complete day before the run's data_interval_end (run at 2024-01-15 00:00 UTC).
    assert export.params["date"] == "2024-01-14"
    assert export.params["fields"] == ["event_name", "amount", "profile_id", "order_id"]  # DAG params
    assert (contacts.params["start_date"], contacts.params["end_date"]) == (
        "2024-01-14 00:00:00",
        "2024-01-14 23:59:59",
    )
    key = "cometly/events/dt=2024-01-14/events.ndjson.gz"
    landed = client.get_object(Bucket=name, Key=key)["Body"].read()
    served = requests.get(sim.presign(export.export_id)[0], timeout=30).content
    assert landed == served  # byte-identical gzip, as Cometly serves it
    rows = [json.loads(line) for line in gzip.decompress(landed).splitlines()]
    assert len(rows) == export.lines == 3000
    assert set(rows[0]) >= {"id", "event_time_utc", "event_name", "amount", "order_id"}
    assert client.list_multipart_uploads(Bucket=name).get("Uploads", []) == []
    summary = support.xcom_value("cometly_daily_export", "download_export", run.run_id)
    assert summary["destination"] == f"s3://{name}/{key}"
    assert summary["records"] == 3000
    assert summary["sha256"] == hashlib.sha256(served).hexdigest()
    waited = support.xcom_value("cometly_daily_export", "wait_for_export", run.run_id)
    support.assert_stored_url(waited, sim, export.export_id)  # no signature in the metadata DB

    # Contacts beside the events, keyed on the same day.
    contacts_key = "cometly/contacts/dt=2024-01-14/contacts.ndjson.gz"
    people = gzip.decompress(client.get_object(Bucket=name, Key=contacts_key)["Body"].read()).splitlines()
    assert len(people) == sim.config.contact_export_rows
    assert {"id", "email", "name", "created_at", "comet_tokens"} <= set(json.loads(people[0]))
    waited = support.xcom_value("cometly_daily_export", "wait_for_contacts", run.run_id)
    support.assert_stored_url(waited, sim, contacts.export_id, kind="contacts")


@pytest.mark.usefixtures("airflow_db")
@pytest.mark.parametrize(
    ("dag_id", "task_id", "map_indexes", "orders"),
    [
        ("cometly_track_conversions", "track_conversions", [-1], range(10001, 10101)),
        ("cometly_track_conversions_mapped", "track_chunk", [0, 1, 2, 3], range(10101, 10201)),
    ],
)
def test_track_conversions_stores_each_order_once(
    example_dags: dict[str, Any],
    cometly_conn: Any,
    dag_id: str,
    task_id: str,
    map_indexes: list[int],
    orders: range,
) -> None:
    sim = cometly_conn
    dag = example_dags[dag_id]

    run = support.run_dag(dag)
    assert run.state == "success", support.task_states(dag_id, run.run_id)
    summaries = [support.xcom_value(dag_id, task_id, run.run_id, map_index=i) for i in map_indexes]
    assert sum(s["sent"] for s in summaries) == len(orders)
    assert all(s["failed"] == 0 and s["skipped_invalid"] == 0 for s in summaries)
    stored = sim.events
    assert sorted(int(e["order_id"].removeprefix("ORD-")) for e in stored) == list(orders)
    assert len({e["idempotency_key"] for e in stored}) == len(orders)

    # A second run of the same logical date (a cleared / re-triggered DAG) adds nothing.
    rerun = support.run_dag(dag)
    assert rerun.state == "success"
    assert len(sim.events) == len(orders)
    assert sim.duplicates == len(orders)
