"""
Daily Cometly export into your lake: the day's events and the day's new contacts, side by side.

Each run exports **the last complete day** in your Cometly Space's timezone (the connection extra
``timezone``, default UTC) before the run's data interval ends: yesterday, for this ``@daily`` DAG,
whatever the timetable, and for manual runs too. Two branches run in parallel:

* events: ``create_export`` starts an asynchronous Cometly event export of that day
  (CreateEventExportOperator), ``wait_for_export`` waits for it in the triggerer (ExportSensor,
  deferred: no worker slot held), ``download_export`` streams the gzipped NDJSON into
  ``s3://<bucket>/<prefix>/dt=<day>/events.ndjson.gz`` (DownloadExportOperator);
* contacts: ``create_contacts`` exports the contacts created that day
  (CreateContactExportOperator), ``wait_for_contacts`` and ``download_contacts`` do the same into
  ``s3://<bucket>/<contacts_prefix>/dt=<day>/contacts.ndjson.gz``.

The download operator takes the export itself (the sensor's result) and asks Cometly for a freshly
signed URL, so no signed URL ever goes through XCom; the file is streamed without being held in
memory, verified (gzip CRC, record count, sha256), and an Asset event is emitted for downstream DAGs.
``<day>`` is the day the create task exported (its XCom ``day``), so the object key always matches
the data in it.

Set-up: a ``cometly`` connection named ``cometly_default`` (API key in the password field, and
``{"timezone": "America/Los_Angeles"}`` in the extra if your Space is not on UTC) and an ``aws``
connection named ``aws_default``. Choose the bucket, prefixes, fields and attribution in the DAG
params (``airflow dags trigger cometly_daily_export -c '{"bucket": "my-lake"}'``).

Catch-up friendly: every object is keyed on its day and overwritten by a re-run of that day, so a
backfill (``airflow backfill create --dag-id cometly_daily_export --from-date 2024-01-01
--to-date 2024-01-31``) re-runs days safely; export creation is paced client-side at Cometly's
5/min limit per kind.
"""

from __future__ import annotations

import os

import pendulum
from airflow.sdk import DAG, Param

from cometly_provider.operators.contact_export import CreateContactExportOperator
from cometly_provider.operators.download_export import DownloadExportOperator
from cometly_provider.operators.event_export import CreateEventExportOperator
from cometly_provider.sensors.event_export import ExportSensor

POLL_SECONDS = int(os.environ.get("COMETLY_EXAMPLE_POLL_SECONDS", "30"))

with DAG(
    dag_id="cometly_daily_export",
    description="Export each day's Cometly events and new contacts to S3 as gzipped NDJSON",
    schedule="@daily",
    start_date=pendulum.datetime(2024, 1, 1, tz="UTC"),
    catchup=False,
    max_active_runs=3,
    render_template_as_native_obj=True,  # list params render as lists, None as None
    params={
        "bucket": Param("cometly-lake", type="string", description="Destination S3 bucket"),
        "prefix": Param("cometly/events", type="string", description="Key prefix for events"),
        "contacts_prefix": Param("cometly/contacts", type="string", description="Key prefix for contacts"),
        "fields": Param(
            ["event_name", "amount", "profile_id", "order_id"],
            type="array",
            description="Export fields (id and event_time_utc are always included)",
        ),
        "sources": Param(None, type=["null", "array"], description="Attribution sources, e.g. facebook_ads"),
        "attribution_model": Param(None, type=["null", "string"]),
        "attribution_window": Param(None, type=["null", "integer"]),
    },
    tags=["cometly", "example"],
    doc_md=__doc__,
) as dag:
    # Events: no date given, so the last complete day before the run's data_interval_end.
    # [START howto_create_export]
    create_export = CreateEventExportOperator(
        task_id="create_export",
        fields="{{ params.fields }}",
        sources="{{ params.sources }}",
        attribution_model="{{ params.attribution_model }}",
        attribution_window="{{ params.attribution_window }}",
    )
    # [END howto_create_export]

    # [START howto_wait_for_export]
    wait_for_export = ExportSensor(
        task_id="wait_for_export",
        export_id=create_export.output,
        deferrable=True,
        poke_interval=POLL_SECONDS,
        timeout=60 * 60,
    )
    # [END howto_wait_for_export]

    # [START howto_download_export]
    download_export = DownloadExportOperator(
        task_id="download_export",
        export=wait_for_export.output,
        destination="s3://{{ params.bucket }}/{{ params.prefix }}/"
        "dt={{ ti.xcom_pull(task_ids='create_export', key='day') }}/events.ndjson.gz",
    )
    # [END howto_download_export]

    create_export >> wait_for_export >> download_export

    # Contacts created that same day (00:00:00 to 23:59:59 in the Space's timezone).
    create_contacts = CreateContactExportOperator(task_id="create_contacts", include_comet_tokens=True)
    wait_for_contacts = ExportSensor(
        task_id="wait_for_contacts",
        export_id=create_contacts.output,
        kind="contacts",
        deferrable=True,
        poke_interval=POLL_SECONDS,
        timeout=60 * 60,
    )
    download_contacts = DownloadExportOperator(
        task_id="download_contacts",
        export=wait_for_contacts.output,
        destination="s3://{{ params.bucket }}/{{ params.contacts_prefix }}/"
        "dt={{ ti.xcom_pull(task_ids='create_contacts', key='day') }}/contacts.ndjson.gz",
    )
    create_contacts >> wait_for_contacts >> download_contacts
