"""OpenLineage on the export path, with apache-airflow-providers-openlineage installed.

The create and download operators report the Space's Cometly events as their input and the
destination object as the download's output. The end-to-end test runs a DAG with
``airflow dags test`` and OpenLineage's file transport, and reads the events it emitted.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

from cometly_provider.hooks.cometly import CometlyHook
from cometly_provider.operators.download_export import DownloadEventExportOperator
from cometly_provider.operators.event_export import CreateEventExportOperator


def _names(datasets: list[Any]) -> list[tuple[str, str]]:
    return [(d.namespace, d.name) for d in datasets]


@pytest.mark.parametrize(
    ("destination", "expected"),
    [
        (
            "s3://lake/cometly/dt=2024-01-15/events.ndjson.gz",
            ("s3://lake", "cometly/dt=2024-01-15/events.ndjson.gz"),
        ),
        ("gs://lake/cometly/events.ndjson.gz", ("gs://lake", "cometly/events.ndjson.gz")),
        ("file:///data/cometly/events.ndjson.gz", ("file", "/data/cometly/events.ndjson.gz")),
    ],
)
def test_download_reports_cometly_events_in_and_the_destination_out(
    cometly_conn: Any, destination: str, expected: tuple[str, str]
) -> None:
    from airflow.providers.openlineage.extractors import OperatorLineage

    operator = DownloadEventExportOperator(task_id="download", export_id=1, destination=destination)
    lineage = operator.get_openlineage_facets_on_complete(None)
    assert isinstance(lineage, OperatorLineage)
    space = CometlyHook().space[:16]
    host = cometly_conn.base_url.removeprefix("http://")
    assert _names(lineage.inputs) == [(f"cometly://{host}", f"space-{space}/events")]
    assert _names(lineage.outputs) == [expected]
    assert cometly_conn.requests == []  # lineage needs no request
    assert cometly_conn.api_key not in json.dumps(_names(lineage.inputs))


def test_create_reports_cometly_events_in(cometly_conn: Any) -> None:
    lineage = CreateEventExportOperator(task_id="create").get_openlineage_facets_on_complete(None)
    assert [d.name for d in lineage.inputs] == [f"space-{CometlyHook().space[:16]}/events"]
    assert lineage.outputs == []


@pytest.mark.usefixtures("airflow_db")
def test_dag_run_emits_lineage_events(tmp_path: Path, cometly_conn: Any) -> None:
    sim = cometly_conn
    sim.update_config(export_rows=50, queued_seconds=0.1, processing_seconds=0.2)
    dags, landed, events_file = (
        tmp_path / "dags",
        tmp_path / "lake" / "events.ndjson.gz",
        tmp_path / "ol.jsonl",
    )
    dags.mkdir()
    (dags / "lineage_dag.py").write_text(
        textwrap.dedent(
            f"""
            import pendulum
            from airflow.sdk import DAG
            from cometly_provider.operators.download_export import DownloadEventExportOperator
            from cometly_provider.operators.event_export import CreateEventExportOperator
            from cometly_provider.sensors.event_export import EventExportSensor

            with DAG("cometly_lineage", schedule=None, start_date=pendulum.datetime(2024, 1, 1)):
                create = CreateEventExportOperator(task_id="create_export", date="2024-01-15")
                wait = EventExportSensor(task_id="wait", export_id=create.output, poke_interval=0.5)
                DownloadEventExportOperator(
                    task_id="download_export", download_url=wait.output, destination="file://{landed}"
                )
            """
        )
    )
    env = os.environ.copy()
    env["AIRFLOW__CORE__DAGS_FOLDER"] = str(dags)
    env["AIRFLOW__OPENLINEAGE__TRANSPORT"] = json.dumps(
        {"type": "file", "log_file_path": str(events_file), "append": True}
    )
    done = subprocess.run(
        [sys.executable, "-m", "airflow", "dags", "test", "cometly_lineage", "2024-01-15"],
        env=env,
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert landed.exists()

    emitted = [json.loads(line) for line in events_file.read_text().splitlines()]
    complete = {e["job"]["name"]: e for e in emitted if e["eventType"] == "COMPLETE"}
    download = complete["cometly_lineage.download_export"]
    space = f"space-{CometlyHook().space[:16]}/events"
    assert [(d["namespace"], d["name"]) for d in download["inputs"]] == [
        (f"cometly://127.0.0.1:{sim.port}", space)
    ]
    assert [(d["namespace"], d["name"]) for d in download["outputs"]] == [("file", str(landed))]
    assert [d["name"] for d in complete["cometly_lineage.create_export"]["inputs"]] == [space]
    assert sim.api_key not in events_file.read_text()
