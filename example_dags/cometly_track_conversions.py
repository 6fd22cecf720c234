"""
Send conversions produced by an upstream pipeline to Cometly.

``cometly_track_conversions``: ``load_orders`` reads the day's orders (here a bundled CSV; in your
pipeline a warehouse query or a file your loader wrote) and shapes each row into a Cometly
``purchase`` event; ``track_conversions`` (TrackEventOperator) validates every event, then sends
the batch concurrently at Cometly's rate limit (1,000 events/min per Space).

Each event gets an ``idempotency_key`` derived from the run (dag, task, run id) and the event's
canonical content, never from its position or map index, and carries its ``order_id``: if the task
is retried or cleared, even with its orders re-chunked, Cometly stores each conversion once. The
task returns a summary (sent, duplicates, skipped, failed) in XCom and fails if any event could not
be delivered, after writing those to ``failed_events_path`` for a replay.

``cometly_track_conversions_mapped``: the same, fanned out with dynamic task mapping, one mapped
``TrackEventOperator`` per chunk of orders, useful to see per-chunk progress and retry a chunk
alone. Both share the Space's rate limit through the client-side limiter and the
``X-RateLimit-Remaining`` header.

Set-up: a ``cometly`` connection named ``cometly_default`` (API key in the password field).
Trigger on demand, or schedule on the Asset your orders loader produces, e.g.
``schedule=[Asset("s3://warehouse/orders/")]``.
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

import pendulum
from airflow.sdk import DAG, task

from cometly_provider.operators.track_event import TrackEventOperator

ORDERS_CSV = Path(__file__).parent / "data" / "orders.csv"


def order_to_event(row: dict[str, str]) -> dict[str, Any]:
    """One order row → one Cometly purchase event (documented field names)."""
    return {
        "event_name": "purchase",
        "email": row["customer_email"],
        "amount": float(row["total"]),
        "order_id": row["order_id"],
        "event_time": row["created_at"],
        "url": row["landing_url"],
        "profile_field_1": row["plan"],
    }


def read_orders(first: int = 0, last: int | None = None) -> list[dict[str, Any]]:
    with ORDERS_CSV.open(newline="") as handle:
        rows = list(csv.DictReader(handle))[first:last]
    return [order_to_event(row) for row in rows]


with DAG(
    dag_id="cometly_track_conversions",
    description="Send the day's orders to Cometly as purchase conversions",
    schedule=None,
    start_date=pendulum.datetime(2024, 1, 1, tz="UTC"),
    catchup=False,
    tags=["cometly", "example"],
    doc_md=__doc__,
):
    # [START howto_track_batch]
    @task
    def load_orders() -> list[dict[str, Any]]:
        # First half of the sample orders; the mapped DAG below sends the second half.
        return read_orders(0, 100)

    TrackEventOperator(
        task_id="track_conversions",
        events=load_orders(),
        failed_events_path="file:///tmp/cometly_failed_events/{{ dag.dag_id }}/{{ run_id }}.ndjson",
    )
    # [END howto_track_batch]


with DAG(
    dag_id="cometly_track_conversions_mapped",
    description="Send orders to Cometly in parallel chunks (dynamic task mapping)",
    schedule=None,
    start_date=pendulum.datetime(2024, 1, 1, tz="UTC"),
    catchup=False,
    tags=["cometly", "example"],
    doc_md=__doc__,
):
    # [START howto_track_mapped]
    @task
    def chunk_orders(chunk_size: int = 25) -> list[list[dict[str, Any]]]:
        events = read_orders(100, None)
        return [events[i : i + chunk_size] for i in range(0, len(events), chunk_size)]

    TrackEventOperator.partial(task_id="track_chunk", max_workers=4).expand(events=chunk_orders())
    # [END howto_track_mapped]
