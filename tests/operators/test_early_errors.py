"""Mistakes a DAG author can see when the DAG file is parsed, not after an export ran.

A static ``s3://`` / ``gs://`` destination whose provider is not installed fails in the operator's
constructor, so the DAG shows an import error in the UI and no export is ever created.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
from airflow.providers.common.compat.sdk import AirflowOptionalProviderFeatureException

from cometly_provider.operators.download_export import DownloadEventExportOperator

PROVIDERS = {"s3": ("airflow.providers.amazon", "amazon"), "gs": ("airflow.providers.google", "google")}


@pytest.mark.parametrize("scheme", ["s3", "gs"])
def test_missing_storage_provider_fails_in_the_constructor(
    monkeypatch: pytest.MonkeyPatch, scheme: str
) -> None:
    package, extra = PROVIDERS[scheme]
    monkeypatch.setitem(sys.modules, package, None)  # what Python sees when it is not installed
    destination = f"{scheme}://lake/cometly/dt={{{{ ds }}}}/events.ndjson.gz"
    with pytest.raises(AirflowOptionalProviderFeatureException) as caught:
        DownloadEventExportOperator(task_id="download", export_id=1, destination=destination)
    message = str(caught.value)
    assert message.startswith(f"destination='{destination}'")
    assert f"pip install 'airflow-provider-cometly[{extra}]'" in message


@pytest.mark.parametrize(
    "destination",
    [
        "file:///tmp/cometly/events.ndjson.gz",  # needs no provider
        "{{ var.value.lake_uri }}",  # scheme only known at run time: checked then
        "s3://lake/key",  # the provider is installed here
    ],
)
def test_destinations_that_need_nothing_missing_build(destination: str) -> None:
    DownloadEventExportOperator(task_id="download", export_id=1, destination=destination)


def test_dag_with_s3_destination_and_no_amazon_provider_is_an_import_error(
    tmp_path: Path, cometly_conn: Any
) -> None:
    """The DAG processor's view: the file fails to import, with the install command, and nothing ran."""
    dag_file = tmp_path / "daily_export.py"
    dag_file.write_text(
        textwrap.dedent(
            """
            import pendulum
            from airflow.sdk import DAG
            from cometly_provider.operators.download_export import DownloadEventExportOperator
            from cometly_provider.operators.event_export import CreateEventExportOperator

            with DAG("daily_export", schedule="@daily", start_date=pendulum.datetime(2024, 1, 1)):
                export = CreateEventExportOperator(task_id="create_export")
                DownloadEventExportOperator(
                    task_id="download_export",
                    export_id=export.output,
                    destination="s3://lake/cometly/dt={{ ds }}/events.ndjson.gz",
                )
            """
        )
    )
    script = textwrap.dedent(
        f"""
        import importlib.metadata, sys
        import importlib_metadata  # Airflow discovers providers with the backport

        # As if the Amazon provider were not installed: no distribution, no package.
        def without_amazon(every):
            return lambda **kw: (
                d for d in every(**kw) if d.metadata["Name"] != "apache-airflow-providers-amazon"
            )
        for module in (importlib.metadata, importlib_metadata):
            module.distributions = without_amazon(module.distributions)
        sys.modules["airflow.providers.amazon"] = None
        from tests.event_exports import dagbag
        bag = dagbag({str(dag_file)!r})
        print("DAGS", sorted(bag.dags))
        for error in bag.import_errors.values():
            print("ERROR", error.strip().splitlines()[-1])
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        env=os.environ.copy(),
        cwd=Path(__file__).resolve().parents[2],
    )
    assert done.returncode == 0, done.stderr[-3000:]
    out = done.stdout
    assert "DAGS []" in out
    (error,) = [line for line in out.splitlines() if line.startswith("ERROR")]
    assert "s3:// locations need the Amazon provider" in error
    assert "pip install 'airflow-provider-cometly[amazon]'" in error
    assert cometly_conn.requests == []  # parsing sent nothing to Cometly
