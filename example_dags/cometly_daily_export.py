"""
Daily Cometly event export into your lake.

For each day (the DAG run's ``ds``) this DAG:

1. ``create_export`` starts an asynchronous Cometly export of that day's events
   (CreateEventExportOperator; returns the ``export_id``);
2. ``wait_for_export`` waits for it to finish, deferred to the triggerer so no worker slot is held
   (EventExportSensor; returns the download details);
3. ``download_export`` streams the gzipped NDJSON from its presigned URL straight into
   ``s3://<bucket>/<prefix>/dt=<ds>/events.ndjson.gz`` (DownloadEventExportOperator), without
   holding the file in memory, verified (gzip CRC, record count, sha256), and emits an Asset event
   downstream DAGs can be scheduled on.

Set-up: a ``cometly`` connection named ``cometly_default`` (API key in the password field) and an
``aws`` connection named ``aws_default``. Choose the bucket, prefix, fields and attribution in the
DAG params (``airflow dags trigger cometly_daily_export -c '{"bucket": "my-lake"}'``).

Catch-up friendly: every task is keyed on ``ds`` and overwrites its own day's object, so a backfill
(``airflow backfill create --dag-id cometly_daily_export --from-date 2024-01-01 --to-date
2024-01-31``) re-runs days safely; export creation is paced client-side at Cometly's 5/min limit.
"""

from __future__ import annotations

import os

import pendulum
from airflow.sdk import DAG, Param

from cometly_provider.operators.download_export import DownloadEventExportOperator
from cometly_provider.operators.event_export import CreateEventExportOperator
from cometly_provider.sensors.event_export import EventExportSensor

with DAG(
    dag_id="cometly_daily_export",
    description="Export each day's Cometly events to S3 as gzipped NDJSON",
    schedule="@daily",
    start_date=pendulum.datetime(2024, 1, 1, tz="UTC"),
    catchup=False,
    max_active_runs=3,
    render_template_as_native_obj=True,  # list params render as lists, None as None
    params={
        "bucket": Param("cometly-lake", type="string", description="Destination S3 bucket"),
        "prefix": Param("cometly/events", type="string", description="Key prefix inside the bucket"),
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
    # [START howto_create_export]
    create_export = CreateEventExportOperator(
        task_id="create_export",
        date="{{ ds }}",
        fields="{{ params.fields }}",
        sources="{{ params.sources }}",
        attribution_model="{{ params.attribution_model }}",
        attribution_window="{{ params.attribution_window }}",
    )
    # [END howto_create_export]

    # [START howto_wait_for_export]
    wait_for_export = EventExportSensor(
        task_id="wait_for_export",
        export_id=create_export.output,
        deferrable=True,
        poke_interval=int(os.environ.get("COMETLY_EXAMPLE_POLL_SECONDS", "30")),
        timeout=60 * 60,
    )
    # [END howto_wait_for_export]

    # [START howto_download_export]
    download_export = DownloadEventExportOperator(
        task_id="download_export",
        download_url=wait_for_export.output,
        destination="s3://{{ params.bucket }}/{{ params.prefix }}/dt={{ ds }}/events.ndjson.gz",
    )
    # [END howto_download_export]

    create_export >> wait_for_export >> download_export
