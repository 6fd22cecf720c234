"""DAGs the deployment tests run (copied into the deployment's DAGs folder beside the example DAGs).

One file, so the dag-processor parses them in one go. Every sensor and wait uses short intervals:
the deployment's simulator runs a 6 s rate-limit window.
"""

from __future__ import annotations

import itertools
import os
import random
from datetime import timedelta
from typing import Any

import pendulum
from airflow.sdk import DAG, Param, task

from cometly_provider.operators.download_export import DownloadEventExportOperator
from cometly_provider.operators.event_export import CreateEventExportOperator
from cometly_provider.operators.track_event import TrackEventOperator
from cometly_provider.sensors.event_export import EventExportSensor

START = pendulum.datetime(2024, 1, 1, tz="UTC")
#: Where the export test DAGs land their object (the bucket the deployment creates).
DESTINATION = "s3://cometly-lake/deployment/{{ params.key }}/events.ndjson.gz"

with DAG(dag_id="deployment_smoke", schedule=None, start_date=START, catchup=False, tags=["test"]):

    @task
    def hello() -> dict[str, Any]:
        return {"pid": os.getpid(), "parent": os.getppid()}

    hello()


# Create -> deferrable sensor -> download with retries: the path of the example export DAG, with
# the day and the object key from the run's conf.
with DAG(
    dag_id="deployment_export",
    schedule=None,
    start_date=START,
    catchup=False,
    params={"date": Param("2024-01-15", type="string"), "key": Param("default", type="string")},
    tags=["test"],
):
    create = CreateEventExportOperator(task_id="create_export", date="{{ params.date }}")
    wait = EventExportSensor(
        task_id="wait_for_export", export_id=create.output, deferrable=True, poke_interval=1, timeout=600
    )
    DownloadEventExportOperator(
        task_id="download_export",
        download_url=wait.output,
        destination=DESTINATION,
        retries=2,
        retry_delay=timedelta(seconds=1),
    )


# Deferral timeouts: the wait is shorter than the export takes. 15 s rather than less: a trigger
# that fires before the scheduler has processed the deferring try's exit can get the resumed try
# failed by Airflow 3.3 (apache/airflow#72716), and that exit report can lag seconds on busy cores.
WAIT_TIMEOUT_S = 15

with DAG(
    dag_id="deployment_export_timeout",
    schedule=None,
    start_date=START,
    catchup=False,
    params={"date": Param("2024-01-15", type="string")},
    tags=["test"],
):
    CreateEventExportOperator(
        task_id="create_and_wait",
        date="{{ params.date }}",
        wait_for_completion=True,
        deferrable=True,
        poll_interval=1,
        timeout=WAIT_TIMEOUT_S,
    )

with DAG(
    dag_id="deployment_sensor_soft_timeout",
    schedule=None,
    start_date=START,
    catchup=False,
    params={"date": Param("2024-01-15", type="string"), "key": Param("soft", type="string")},
    tags=["test"],
):
    create = CreateEventExportOperator(task_id="create_export", date="{{ params.date }}")
    wait = EventExportSensor(
        task_id="wait_for_export",
        export_id=create.output,
        deferrable=True,
        poke_interval=1,
        timeout=WAIT_TIMEOUT_S,
        soft_fail=True,
    )
    DownloadEventExportOperator(task_id="download_export", download_url=wait.output, destination=DESTINATION)


# Eight mapped TrackEventOperator instances on one Space. The events carry no order_id, so only
# the idempotency key can de-duplicate them; a later try of ``chunk_events`` (after a clear) returns
# the same events in another order and other chunk sizes, as an upstream query without ORDER BY may.
TRACK_EVENTS = 120
#: Marks these events among the others the session's simulator stores.
TRACK_TAG = "deployment-track-mapped"
TRACK_CHUNKS = 8


def tracked_events() -> list[dict[str, Any]]:
    return [
        {
            "event_name": "purchase",
            "email": f"{TRACK_TAG}-{i}@example.com",
            "amount": round(10 + i * 0.37, 2),
            "event_time": f"2024-01-15T{8 + i // 60:02d}:{i % 60:02d}:00Z",
        }
        for i in range(TRACK_EVENTS)
    ]


with DAG(
    dag_id="deployment_track_mapped",
    schedule=None,
    start_date=START,
    catchup=False,
    max_active_tasks=16,
    tags=["test"],
):

    @task
    def chunk_events(ti: Any = None) -> list[list[dict[str, Any]]]:
        events = tracked_events()
        if ti.try_number == 1:
            size = len(events) // TRACK_CHUNKS
            return [events[i * size : (i + 1) * size] for i in range(TRACK_CHUNKS)]
        random.Random(ti.try_number).shuffle(events)
        # Uneven chunks, still eight of them: every boundary moves.
        cuts = sorted(random.Random(ti.try_number + 1).sample(range(1, len(events)), TRACK_CHUNKS - 1))
        bounds = [0, *cuts, len(events)]
        return [events[a:b] for a, b in itertools.pairwise(bounds)]

    TrackEventOperator.partial(
        task_id="track_chunk", cometly_conn_id="cometly_contended", max_workers=4
    ).expand(events=chunk_events())
