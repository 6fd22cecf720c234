"""Run a DAG of provider tasks with real Airflow here: ``python -m tests.reliability.run_dag SPEC``.

The SIGTERM tests start it as a subprocess and send it SIGTERM mid-task. ``dag.test()`` runs each
try through the Task SDK's task runner, which installs the SIGTERM handler that calls ``on_kill``
and maps the task's exception to ``up_for_retry`` or ``failed``, then runs the next try itself
(``retry_delay=0``). SPEC is a JSON file; the tasks run one after the other, in the order given::

    {"dag_id": ..., "tasks": [{"task_id": ..., "operator": "track" | "download", "kwargs": {...}}],
     "retries": 1}

The last line on stdout is JSON: the run's state and every try of each task,
``{"run_id": ..., "state": ..., "tries": {"<task_id>": [{"try_number": 1, "state": "failed"}, ...]}}``
(Airflow's history keeps a try that went ``up_for_retry`` as ``failed``; the log's
``new_state=`` lines tell them apart).
"""

from __future__ import annotations

import datetime as dt
import json
import sys
from pathlib import Path
from typing import Any


def _tries(dag_id: str, run_id: str) -> dict[str, list[dict[str, Any]]]:
    from airflow.models.taskinstance import TaskInstance
    from airflow.models.taskinstancehistory import TaskInstanceHistory
    from airflow.utils.session import create_session

    with create_session() as session:
        rows: list[Any] = [
            *session.query(TaskInstanceHistory).filter_by(dag_id=dag_id, run_id=run_id),
            *session.query(TaskInstance).filter_by(dag_id=dag_id, run_id=run_id),
        ]
        tries: dict[str, list[dict[str, Any]]] = {}
        for row in sorted(rows, key=lambda r: r.try_number):
            tries.setdefault(row.task_id, []).append({"try_number": row.try_number, "state": str(row.state)})
        return tries


def main(spec_path: str) -> int:
    from airflow.sdk import DAG

    from cometly_provider.operators.download_export import DownloadEventExportOperator
    from cometly_provider.operators.track_event import TrackEventOperator
    from tests.event_exports import run_dag

    spec = json.loads(Path(spec_path).read_text())
    operators: dict[str, Any] = {"track": TrackEventOperator, "download": DownloadEventExportOperator}
    start = dt.datetime(2024, 1, 1, tzinfo=dt.UTC)
    with DAG(spec["dag_id"], schedule=None, start_date=start) as dag:
        previous = None
        for item in spec["tasks"]:
            task = operators[item["operator"]](
                task_id=item["task_id"],
                retries=spec.get("retries", 1),
                retry_delay=dt.timedelta(0),
                **item["kwargs"],
            )
            if item["operator"] == "download":
                task.resume_wait_s = 0
            if previous is not None:
                previous >> task
            previous = task
    run = run_dag(dag)
    print(
        json.dumps({"run_id": run.run_id, "state": str(run.state), "tries": _tries(dag.dag_id, run.run_id)}),
        flush=True,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
