"""Contacts exports end to end over real sockets: the same coverage as event exports.

Validation before any request, the life cycle through ``dag.test()`` (deferrable and not), a failed
export, an expired URL refreshed during the download, and no signed URL anywhere in the metadata DB.
"""

from __future__ import annotations

import datetime as dt
import gzip
import json
from pathlib import Path
from typing import Any

import pytest

from cometly_provider.exceptions import CometlyExportSensorFailedError, CometlyInputError
from cometly_provider.hooks.cometly import CometlyHook
from cometly_provider.operators.contact_export import CreateContactExportOperator
from cometly_provider.operators.download_export import DownloadExportOperator
from cometly_provider.sensors.event_export import ExportSensor
from tests import event_exports as support

CONTACT_KEYS = {"id", "email", "name", "phone", "location", "created_at"}


@pytest.fixture
def sim(cometly_simulator: Any, monkeypatch: pytest.MonkeyPatch) -> Any:
    support.configure(cometly_simulator, monkeypatch)
    cometly_simulator.update_config(contact_export_rows=40)
    return cometly_simulator


def _contacts(**kwargs: Any) -> CreateContactExportOperator:
    kwargs.setdefault("poll_interval", 0.05)
    kwargs.setdefault("timeout", 30)
    return CreateContactExportOperator(task_id="create_contacts", **kwargs)


def _rows(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in gzip.decompress(path.read_bytes()).splitlines()]


# --- validation before any request -----------------------------------------------------------------

INVALID: list[tuple[dict[str, Any], str, str]] = [
    ({"export_start_date": "2024-01-14", "export_end_date": "2024-01-13"}, "end_date", "after start_date"),
    (
        {"export_start_date": "14/01/2024", "export_end_date": "2024-01-15"},
        "start_date",
        "YYYY-MM-DD HH:MM:SS",
    ),
    ({"export_start_date": "2024-01-14 25:00:00", "export_end_date": "2024-01-15"}, "start_date", "'2024"),
    ({"export_start_date": "2024-01-14"}, "end_date", "end_date is required"),
    ({"include_comet_tokens": "yes"}, "include_comet_tokens", "True/False (or 1/0)"),
    ({"include_all_emails": 2}, "include_all_emails", "include_all_emails=2"),
    (
        {"export_start_date": "2024-01-14", "export_end_date": "2999-01-01 00:00:00"},
        "end_date",
        "not over yet",
    ),
]


@pytest.mark.parametrize(("kwargs", "field", "fragment"), INVALID, ids=[c[1] + "-" + c[2] for c in INVALID])
def test_bad_parameters_fail_before_any_request(
    sim: Any, kwargs: dict[str, Any], field: str, fragment: str
) -> None:
    with pytest.raises(CometlyInputError, match=None) as info:
        _contacts(wait_for_completion=True, **kwargs).execute(support.context())
    assert info.value.field == field
    assert fragment in str(info.value)
    assert sim.requests == []


def test_aware_datetimes_are_sent_as_space_time(sim: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    support.configure(sim, monkeypatch, timezone="America/Los_Angeles")
    start = dt.datetime(2024, 1, 14, 8, 0, tzinfo=dt.UTC)  # 00:00 in Los Angeles (PST)
    op = _contacts(
        export_start_date=start,
        export_end_date=start + dt.timedelta(days=1, seconds=-1),
        include_comet_tokens="True",
        include_all_emails=False,
    )
    op.execute(support.context())
    assert [r.json for r in sim.requests_for("contacts_export_create")] == [
        {
            "start_date": "2024-01-14 00:00:00",
            "end_date": "2024-01-14 23:59:59",
            "include_comet_tokens": 1,
            "include_all_emails": 0,
        }
    ]


def test_hook_kinds_share_one_life_cycle_but_not_ids(sim: Any) -> None:
    hook = CometlyHook()
    created = hook.create_export("contacts", start_date="2024-01-14 00:00:00", end_date="2024-01-14 23:59:59")
    support.wait_completed(sim, created["export_id"])
    assert hook.get_export("contacts", created["export_id"])["status"] == "completed"
    # An id of the other kind does not exist there.
    with pytest.raises(Exception, match="404"):
        hook.get_export("events", created["export_id"])
    assert sim.exports[created["export_id"]].kind == "contacts"
    # The limiter knows the contacts endpoints (event-export figures until the server says otherwise).
    assert hook.rate_limit_policy.limit_for("contacts_export_status") == 30


# --- life cycle through dag.test() -----------------------------------------------------------------


def _pipeline(tmp_path: Path, deferrable: bool) -> tuple[str, Any]:
    from airflow.sdk import DAG

    dag_id = support.dag_id("cometly_contacts")
    with DAG(dag_id, schedule=None, start_date=support.START, catchup=False) as dag:
        create = CreateContactExportOperator(task_id="create_contacts", include_comet_tokens=True)
        wait = ExportSensor(
            task_id="wait_for_contacts",
            export_id=create.output,
            kind="contacts",
            poke_interval=0.05,
            timeout=60,
            deferrable=deferrable,
        )
        download = DownloadExportOperator(
            task_id="download_contacts",
            export=wait.output,
            destination=f"file://{tmp_path}/contacts.ndjson.gz",
        )
        create >> wait >> download
    return dag_id, support.run_dag(dag)


@pytest.mark.usefixtures("airflow_db")
@pytest.mark.parametrize("deferrable", [False, True], ids=["poke", "deferrable"])
def test_dag_test_creates_waits_and_downloads_contacts(sim: Any, tmp_path: Path, deferrable: bool) -> None:
    from tests.reliability.test_secrets import _whole_db

    dag_id, run = _pipeline(tmp_path, deferrable)
    assert run.state == "success", support.task_states(dag_id, run.run_id)
    # The last complete day before the run (a manual run at 2024-01-15 00:00 UTC, a UTC Space).
    assert [r.json for r in sim.requests_for("contacts_export_create")] == [
        {"start_date": "2024-01-14 00:00:00", "end_date": "2024-01-14 23:59:59", "include_comet_tokens": 1}
    ]
    waited = support.xcom_value(dag_id, "wait_for_contacts", run.run_id)
    assert waited["kind"] == "contacts"
    support.assert_stored_url(waited, sim, waited["export_id"], kind="contacts")
    summary = support.xcom_value(dag_id, "download_contacts", run.run_id)
    assert (summary["kind"], summary["records"]) == ("contacts", 40)
    rows = _rows(tmp_path / "contacts.ndjson.gz")
    assert len(rows) == 40
    assert all(CONTACT_KEYS | {"comet_tokens"} == set(row) for row in rows)
    assert all(row["created_at"].startswith("2024-01-14T") for row in rows)
    # The download asked for its own fresh URL: no signed URL anywhere in the metadata DB.
    support.assert_no_signature(sim, _whole_db())


# --- failure, expiry -------------------------------------------------------------------------------


def test_a_failed_contacts_export_fails_the_sensor_for_good(sim: Any) -> None:
    sim.next_exports_outcome("failed", message="Contacts export failed: too many merges.")
    export_id = _contacts().execute(support.context())
    with pytest.raises(CometlyExportSensorFailedError) as info:
        ExportSensor(
            task_id="wait", export_id=export_id, kind="contacts", poke_interval=0.05, timeout=30
        ).execute(support.context())
    assert f"Cometly contacts export {export_id} failed: Contacts export failed" in str(info.value)


def test_expired_url_during_a_contacts_download_is_refreshed(sim: Any, tmp_path: Path) -> None:
    export_id = _contacts().execute(support.context())
    support.wait_completed(sim, export_id)
    sim.inject("download", "cut", at_byte=500, times=1)
    sim.inject("download", "expire", times=1)
    op = DownloadExportOperator(
        task_id="download", export_id=export_id, kind="contacts", destination=f"file://{tmp_path}/c.gz"
    )
    op.resume_wait_s = 0
    result = op.execute({"ti": support.FakeTI(), "outlet_events": _OutletEvents()})
    assert result["resumes"] == 2
    assert len(_rows(tmp_path / "c.gz")) == 40
    # First URL, one after the cut, one after the expiry: each from the contacts status endpoint.
    assert len(sim.requests_for("contacts_export_status")) == 3
    assert sim.requests_for("export_status") == []


class _OutletEvents(dict[Any, Any]):
    def __missing__(self, key: Any) -> Any:
        class _Event:
            extra: dict[str, Any] = {}

        return _Event()


def test_a_result_dict_names_its_kind_and_a_contradicting_kind_is_refused() -> None:
    from cometly_provider.export_kinds import CONTACTS
    from cometly_provider.exports import ExportRef

    result = {"export_id": 3, "kind": "contacts", "status": "completed"}
    assert ExportRef.parse(result) == ExportRef(CONTACTS, 3)
    assert ExportRef.parse(result, kind="contacts") == ExportRef(CONTACTS, 3)
    with pytest.raises(
        CometlyInputError, match="kind='events' is invalid for export: it is a contacts export"
    ):
        ExportRef.parse(result, kind="events")
    # The stored download URL names its export too.
    url = "https://s3.example/e.ndjson.gz?<redacted>#cometly_export_id=3&cometly_export_kind=contacts"
    assert ExportRef.parse(url) == ExportRef(CONTACTS, 3)
