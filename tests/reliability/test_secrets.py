"""The API key and presigned-URL signatures never leave the places that need them.

A whole daily run goes through ``dag.test()`` (track a batch, create an export, wait for it with the
deferrable sensor, download it into moto S3), with log capture on (``capfd`` for Airflow 3's
structlog on stdout, ``caplog`` for stdlib logging). Afterwards every secret of the run (the API
key, and every ``X-Amz-Signature`` the simulator issued) is searched for in:

* everything printed to stdout / stderr and every log record;
* every file under ``$AIRFLOW_HOME/logs`` (if Airflow wrote any);
* every XCom value and every rendered-template-fields row of the run, and, to be thorough, every
  row of every table of the metadata DB (next_kwargs of deferred tasks, trigger rows, audit log ...);
* the full text (message, causes and context) of the exceptions of failing variants: a 401, and a
  presigned URL that has expired, with and without an export id to renew it from.

The key is unique to this module, so no other test's output can contain it by accident.
"""

from __future__ import annotations

import logging
import os
import secrets
import traceback
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from cometly_provider.exceptions import CometlyAuthError, CometlyDownloadError, CometlyError
from cometly_provider.operators.download_export import DownloadEventExportOperator
from cometly_provider.operators.event_export import CreateEventExportOperator
from cometly_provider.operators.track_event import TrackEventOperator
from cometly_provider.sensors.event_export import EventExportSensor
from tests import event_exports as support
from tests.conftest import cometly_conn_uri
from tests.reliability.pipeline import (
    completed_export,
    download_context,
    downloader,
    purchases,
    track_context,
)

API_KEY = f"cmt-live-{secrets.token_hex(16)}"
WRONG_KEY = f"cmt-revoked-{secrets.token_hex(16)}"
pytestmark = pytest.mark.cometly_simulator(api_key=API_KEY)


@pytest.fixture
def capture(caplog: pytest.LogCaptureFixture) -> Iterator[pytest.LogCaptureFixture]:
    """Every log record at DEBUG and above (urllib3 and botocore debug lines print URLs)."""
    with caplog.at_level(logging.DEBUG):
        yield caplog


def _secrets(sim: Any, *extra: str) -> list[str]:
    issued = sim.issued_signatures
    assert issued, "the simulator issued no presigned URL: nothing would be checked"
    assert all(len(s) >= 32 for s in issued)
    return [API_KEY, *extra, *issued]


def _leaks(text: str, secret_values: list[str]) -> list[str]:
    return [s[:12] + "..." for s in secret_values if s in text]


def _assert_records_clean(caplog: pytest.LogCaptureFixture, secret_values: list[str]) -> None:
    """No log record at INFO or above carries a secret, and none below once Airflow redacts it.

    The records are captured raw, before Airflow's log pipeline. Its level (INFO) drops DEBUG lines;
    at DEBUG, urllib3 prints each request line, presigned query string included, and only Airflow's
    secret masker (the ``redact`` every task log event goes through) keeps the signature out. So
    those lines must be fully redacted by it: the provider registered every signed URL in time.
    """
    from airflow.sdk.log import redact

    loud, unmasked = [], []
    for record in caplog.records:
        text = record.getMessage()
        if not _leaks(text, secret_values):
            continue
        if record.levelno >= logging.INFO:
            loud.append((record.name, record.levelname, text[:300]))
        elif _leaks(str(redact(text)), secret_values):
            unmasked.append((record.name, record.levelname, text[:300]))
    assert not loud, f"a secret was logged: {loud}"
    assert not unmasked, f"a secret in a debug line escapes Airflow's secret masker: {unmasked}"


def _log_files() -> str:
    logs = Path(os.environ["AIRFLOW_HOME"]) / "logs"
    if not logs.exists():
        return ""
    return "\n".join(p.read_text(errors="replace") for p in logs.rglob("*") if p.is_file())


def _run_rows(dag_id: str, run_id: str) -> tuple[list[Any], list[Any]]:
    """The run's XCom values and rendered template fields, as stored in the metadata DB."""
    from airflow.models.renderedtifields import RenderedTaskInstanceFields
    from airflow.models.xcom import XComModel
    from airflow.utils.session import create_session

    with create_session() as session:
        xcoms = session.query(XComModel).filter_by(dag_id=dag_id, run_id=run_id).all()
        rendered = session.query(RenderedTaskInstanceFields).filter_by(dag_id=dag_id, run_id=run_id).all()
        return (
            [(x.task_id, x.key, x.value) for x in xcoms],
            [(r.task_id, r.rendered_fields) for r in rendered],
        )


def _whole_db() -> str:
    """Every row of every table of the metadata DB, as text."""
    import sqlalchemy as sa
    from airflow import settings

    assert settings.engine is not None
    chunks = []
    with settings.engine.connect() as connection:
        for table in sa.inspect(connection).get_table_names():
            for row in connection.execute(sa.text(f'SELECT * FROM "{table}"')):
                for value in row:
                    chunks.append(
                        value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)
                    )
    return "\n".join(chunks)


def _full_text(err: BaseException) -> str:
    """What a traceback of ``err`` shows: messages of the error, its causes and its context."""
    return "".join(traceback.format_exception(err)) + repr(err) + repr(err.args)


def _daily_dag(dag_id: str, bucket: str, conn_id: str = "cometly_default") -> Any:
    import pendulum
    from airflow.sdk import DAG

    with DAG(dag_id, schedule=None, start_date=pendulum.datetime(2024, 1, 1, tz="UTC"), catchup=False) as dag:
        track = TrackEventOperator(
            task_id="track", events=purchases(25), max_workers=2, cometly_conn_id=conn_id
        )
        create = CreateEventExportOperator(
            task_id="create_export",
            date="{{ ds }}",
            fields=["event_name", "amount", "order_id"],
            cometly_conn_id=conn_id,
        )
        wait = EventExportSensor(
            task_id="wait_for_export",
            export_id=create.output,
            deferrable=True,
            poke_interval=0.1,
            timeout=120,
            cometly_conn_id=conn_id,
        )
        download = downloader(
            download_url=wait.output,
            destination=f"s3://{bucket}/cometly/dt={{{{ ds }}}}/events.ndjson.gz",
            cometly_conn_id=conn_id,
            max_resume_attempts=2,
        )
        track >> create >> wait >> download
    return dag


def _printed(capfd: pytest.CaptureFixture[str]) -> str:
    out, err = capfd.readouterr()
    return out + err


def _assert_nowhere(
    secret_values: list[str], printed: str, caplog: pytest.LogCaptureFixture, dag_id: str, run_id: str
) -> tuple[list[Any], list[Any]]:
    assert "Cometly" in printed + caplog.text, "no task log was captured: nothing would be checked"
    assert not _leaks(printed, secret_values), "a secret was printed"
    _assert_records_clean(caplog, secret_values)
    assert not _leaks(_log_files(), secret_values), "a secret is in a task log file"
    xcoms, rendered = _run_rows(dag_id, run_id)
    for task_id, key, value in xcoms:
        assert not _leaks(str(value), secret_values), f"a secret is in XCom {task_id}/{key}: {value!r}"
    for task_id, fields in rendered:
        assert not _leaks(str(fields), secret_values), f"a secret is in the rendered fields of {task_id}"
    assert not _leaks(_whole_db(), secret_values), "a secret is stored in the metadata DB"
    return xcoms, rendered


@pytest.mark.usefixtures("airflow_db")
def test_full_daily_run_leaks_no_key_and_no_signature(
    sim: Any, bucket: tuple[Any, str], capfd: pytest.CaptureFixture[str], capture: pytest.LogCaptureFixture
) -> None:
    client, name = bucket
    dag_id = support.dag_id("secrets_daily")
    sim.update_config(export_rows=200, processing_seconds=1.0)  # the sensor defers at least once

    run = support.run_dag(_daily_dag(dag_id, name))

    assert run.state == "success", support.task_states(dag_id, run.run_id)
    (export,) = sim.exports.values()
    key = "cometly/dt=2024-01-15/events.ndjson.gz"
    assert client.head_object(Bucket=name, Key=key)["ContentLength"] > 0
    xcoms, rendered = _assert_nowhere(_secrets(sim), _printed(capfd), capture, dag_id, run.run_id)
    # Two URLs were signed: the one the sensor saw, and the fresh one the download fetched.
    assert len(sim.issued_signatures) >= 2
    # Not vacuous: the rows exist, and the sensor's result carries the URL only in its stored form.
    assert {(t, k) for t, k, _ in xcoms} >= {
        ("track", "return_value"),
        ("create_export", "return_value"),
        ("wait_for_export", "return_value"),
        ("download_export", "return_value"),
    }
    assert {t for t, _ in rendered} >= {"create_export", "wait_for_export", "download_export"}
    waited = support.xcom_value(dag_id, "wait_for_export", run.run_id)
    support.assert_stored_url(waited, sim, export.export_id)


@pytest.mark.usefixtures("airflow_db")
def test_failing_runs_leak_no_key_and_no_signature(
    sim: Any,
    bucket: tuple[Any, str],
    monkeypatch: pytest.MonkeyPatch,
    capfd: pytest.CaptureFixture[str],
    capture: pytest.LogCaptureFixture,
) -> None:
    """Two failing runs: every download URL answers 403 (expired), and a revoked key (401)."""
    _, name = bucket
    sim.update_config(export_rows=50)
    sim.inject("download", "expire", times=None)
    expired_dag = support.dag_id("secrets_expired")
    expired = support.run_dag(_daily_dag(expired_dag, name))
    assert expired.state == "failed"
    assert support.task_states(expired_dag, expired.run_id)[("download_export", -1)] == "failed"
    printed = _printed(capfd)
    assert "expired" in printed.lower()

    revoked = "cometly_revoked"
    monkeypatch.setenv(
        f"AIRFLOW_CONN_{revoked.upper()}", cometly_conn_uri(sim.base_url, WRONG_KEY, retry_min_wait=0.05)
    )
    revoked_dag = support.dag_id("secrets_401")
    unauthorized = support.run_dag(_daily_dag(revoked_dag, name, conn_id=revoked))
    assert unauthorized.state == "failed"
    states = support.task_states(revoked_dag, unauthorized.run_id)
    assert states[("track", -1)] == "failed"
    assert sim.status_counts("track").get(401) == 1  # one request, then the task stopped
    printed += _printed(capfd)
    assert "401" in printed

    secret_values = _secrets(sim, WRONG_KEY)
    _assert_nowhere(secret_values, printed, capture, expired_dag, expired.run_id)
    xcoms, _ = _run_rows(revoked_dag, unauthorized.run_id)
    assert not _leaks(str(xcoms), secret_values)


# --- the text of the exceptions themselves ---------------------------------------------------------


def test_exceptions_of_an_expired_url_and_a_401_carry_no_secret(
    sim: Any,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capfd: pytest.CaptureFixture[str],
    capture: pytest.LogCaptureFixture,
) -> None:
    status = completed_export(sim, rows=50)
    signed = status["download_url"]
    errors: list[BaseException] = []

    # An expired URL with no export id to renew it from.
    sim.inject("download", "expire", times=None)
    op = downloader(download_url=signed, destination=f"file://{tmp_path}/a.gz", max_resume_attempts=1)
    with pytest.raises(CometlyDownloadError, match="expired") as expired:
        op.execute(download_context())  # type: ignore[arg-type]
    errors.append(expired.value)
    # The same with the sensor's whole result: the operator renews the URL, which expires again.
    op = downloader(download_url=status, destination=f"file://{tmp_path}/b.gz", max_resume_attempts=1)
    with pytest.raises(CometlyDownloadError, match="expired") as renewed:
        op.execute(download_context())  # type: ignore[arg-type]
    errors.append(renewed.value)
    sim.clear_faults()

    # A revoked key, on every operator.
    monkeypatch.setenv(
        "AIRFLOW_CONN_COMETLY_DEFAULT", cometly_conn_uri(sim.base_url, WRONG_KEY, retry_min_wait=0.05)
    )
    export_id = status["export_id"]
    attempts: list[Any] = [
        lambda: TrackEventOperator(task_id="track", events=purchases(3)).execute(track_context()),
        lambda: CreateEventExportOperator(task_id="create_export", date="2024-01-15").execute(
            support.context()
        ),
        lambda: EventExportSensor(task_id="wait", export_id=export_id, poke_interval=0.1, timeout=5).execute(
            support.context()
        ),
        lambda: downloader(export_id=export_id, destination=f"file://{tmp_path}/c.gz").execute(
            download_context()  # type: ignore[arg-type]
        ),
        lambda: DownloadEventExportOperator(
            task_id="download_signed",
            download_url=signed,
            export_id=export_id,
            destination=f"file://{tmp_path}/d",
        ).execute(download_context()),  # type: ignore[arg-type]
    ]
    for attempt in attempts[:4]:
        with pytest.raises(CometlyAuthError) as unauthorized:
            attempt()
        assert unauthorized.value.status_code == 401
        errors.append(unauthorized.value)
    # A signed URL that has expired, with a revoked key to renew it: the renewal's 401 ends it.
    sim.inject("download", "expire", times=None)
    with pytest.raises(CometlyError) as both:
        attempts[4]()
    errors.append(both.value)

    secret_values = _secrets(sim, WRONG_KEY)
    for error in errors:
        assert not _leaks(_full_text(error), secret_values), _full_text(error)
        assert not _leaks(str(getattr(error, "api_message", "")), secret_values)
    out, err = capfd.readouterr()
    assert not _leaks(out + err, secret_values)
    _assert_records_clean(capture, secret_values)
