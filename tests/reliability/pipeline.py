"""The daily pipeline the fault tests run: track a batch, create an export, wait for it, download it.

Each step is the provider's operator, executed directly (``execute``) against the simulator over
real sockets, with the context each one needs.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from cometly_provider.hooks.cometly import CometlyHook
from cometly_provider.operators.download_export import DownloadEventExportOperator
from cometly_provider.operators.event_export import CreateEventExportOperator
from cometly_provider.operators.track_event import TrackEventOperator
from cometly_provider.sensors.event_export import EventExportSensor
from tests import event_exports as support

DAG_ID, RUN_ID = "reliability_dag", "manual__2024-01-15T00:00:00+00:00"
MiB = 1024 * 1024
#: A multipart-sized export: ~12.8 MB of gzip (three 5 MiB parts), from 22,000 padded rows.
BIG_ROWS, BIG_PADDING = 22_000, 600


def purchases(n: int, tag: str = "p") -> list[dict[str, Any]]:
    return [
        {"event_name": "purchase", "email": f"{tag}{i}@example.com", "amount": round(i * 1.25 + 1, 2)}
        for i in range(n)
    ]


def track_context(task_id: str = "track", run_id: str = RUN_ID) -> dict[str, Any]:
    ti = SimpleNamespace(dag_id=DAG_ID, task_id=task_id, run_id=run_id, map_index=-1)
    return {"ti": ti, "run_id": run_id}


class _AssetEvent:
    def __init__(self) -> None:
        self.extra: dict[str, Any] = {}


class OutletEvents(dict[Any, _AssetEvent]):
    """Stand-in for ``context["outlet_events"]`` outside a DAG run."""

    def __missing__(self, key: Any) -> _AssetEvent:
        self[key] = event = _AssetEvent()
        return event


def download_context() -> dict[str, Any]:
    return {"outlet_events": OutletEvents()}


def downloader(**kwargs: Any) -> DownloadEventExportOperator:
    kwargs.setdefault("task_id", "download_export")
    op = DownloadEventExportOperator(**kwargs)
    op.resume_wait_s = 0  # no back-off between resume attempts in tests
    return op


@dataclass
class PipelineResult:
    track: dict[str, Any]
    export_id: int
    sensor: dict[str, Any]
    download: dict[str, Any]


def run_pipeline(
    events: list[dict[str, Any]], destination: str, *, hook_params: dict[str, Any] | None = None
) -> PipelineResult:
    """The four tasks of a daily run, one after the other, sharing ``hook_params``."""
    params = dict(hook_params or {})
    track = TrackEventOperator(task_id="track", events=events, max_workers=4, hook_params=params).execute(
        track_context()  # type: ignore[arg-type]
    )
    export_id = CreateEventExportOperator(
        task_id="create_export", date="2024-01-15", hook_params=params
    ).execute(support.context())
    sensor = EventExportSensor(
        task_id="wait_for_export", export_id=export_id, poke_interval=0.05, timeout=120, hook_params=params
    ).execute(support.context())
    download = downloader(download_url=sensor, destination=destination, hook_params=params).execute(
        download_context()  # type: ignore[arg-type]
    )
    return PipelineResult(track, int(export_id), sensor, download)


def completed_export(sim: Any, *, rows: int = 300, padding: int = 0, timeout: float = 90) -> dict[str, Any]:
    """A completed export made through the real API (its status, with a signed ``download_url``)."""
    sim.update_config(queued_seconds=0, processing_seconds=0, export_rows=rows, row_padding_bytes=padding)
    hook = CometlyHook()
    fields = ["event_name", "amount", "event_url"]
    export_id = hook.create_event_export(date="2024-01-15", fields=fields)["export_id"]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status = hook.get_event_export(export_id)
        if status["status"] == "completed":
            return status
        time.sleep(0.05)
    raise AssertionError(f"export {export_id} did not complete within {timeout} s")


def file_uri(path: Path) -> str:
    return f"file://{path}"
