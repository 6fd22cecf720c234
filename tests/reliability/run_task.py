"""Run one provider operator in this process like a worker: ``python -m tests.reliability.run_task SPEC``.

The kill tests start it as a subprocess, SIGKILL it mid-way (no clean-up of any kind, like an
OOM-killed worker), then start it again as the task's next try. SPEC is a JSON file::

    {"operator": "track" | "download", "kwargs": {...}, "dag_id": ..., "task_id": ..., "run_id": ...}

The last line on stdout is the task's outcome as JSON: ``{"state": "success", "result": ...}`` or
``{"state": "failed", "error": "<exception class>", "message": "..."}`` (exit status 1).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Any


def main(spec_path: str) -> int:
    spec = json.loads(Path(spec_path).read_text())
    kwargs: dict[str, Any] = dict(spec["kwargs"])
    context: dict[str, Any]
    if spec["operator"] == "track":
        from cometly_provider.operators.track_event import TrackEventOperator

        op: Any = TrackEventOperator(task_id=spec["task_id"], **kwargs)
        ti = SimpleNamespace(
            dag_id=spec["dag_id"], task_id=spec["task_id"], run_id=spec["run_id"], map_index=-1
        )
        context = {"ti": ti, "run_id": spec["run_id"]}
    elif spec["operator"] == "download":
        from cometly_provider.operators.download_export import DownloadEventExportOperator
        from tests.reliability.pipeline import download_context

        op = DownloadEventExportOperator(task_id=spec["task_id"], **kwargs)
        op.resume_wait_s = 0
        context = download_context()
    else:
        raise SystemExit(f"unknown operator {spec['operator']!r}")
    try:
        result = op.execute(context)
    except Exception as err:
        print(json.dumps({"state": "failed", "error": type(err).__name__, "message": str(err)}), flush=True)
        return 1
    print(json.dumps({"state": "success", "result": result}, default=str), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
