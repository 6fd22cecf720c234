"""Fleet benchmark: many TrackEventOperator task processes on one Space, local vs. Redis limiter.

On Airflow 3 every task instance runs in its own process, so a fleet (Celery / Kubernetes
workers, mapped instances, parallel DAG runs) is N independent limiters on one Space unless
they share a bucket. Each configuration runs ``tasks`` processes x ``events`` events released
together against one simulator subprocess with a scaled window (the harness of
``bench/track_load.py``), and reports:

* failed events: events of the batches not stored by the simulator (every task's whole batch
  must land; a task that raised is counted by what it did not store);
* 429 responses, in all and in the worst server window;
* achieved / allowed rate: the events of every server window but the last over the time from
  the first request to the opening of the last window (see ``bench/track_load.py``).

Each run is saved under its ``--label`` in ``bench/track_fleet_results.json`` (so the figures of
an earlier commit, e.g. the limiter before a change, stay beside the new ones), and the "Fleet"
section of ``docs/benchmarks.md`` is rewritten from that file unless ``--no-write-docs``.

    python bench/track_fleet.py --label "local (0.1.0)" --backend local --tasks 8 16
    python bench/track_fleet.py --label "redis" --backend redis --tasks 8 16
"""

from __future__ import annotations

import argparse
import itertools
import json
import shlex
import statistics
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Any

from _report import measured_on, write_section  # bench/ is sys.path[0] when run as a script
from track_load import LoadResult, run_load

ROOT = Path(__file__).resolve().parents[1]
RESULTS = Path(__file__).resolve().parent / "track_fleet_results.json"

# Targets from the issue that asked for this benchmark.
LOCAL_RATE_TARGET = 0.9
REDIS_RATE_TARGET = 0.97
REDIS_429_PER_WINDOW = 1


@contextmanager
def _redis_connection() -> Iterator[dict[str, str]]:
    """A throwaway Redis server and the Airflow connection that points the workers at it."""
    sys.path.insert(0, str(ROOT))
    from tests.redis_server import spawn_redis

    with spawn_redis() as server:
        yield {"AIRFLOW_CONN_REDIS_DEFAULT": json.dumps({"conn_type": "redis", **server.connection})}


def failed_events(result: LoadResult) -> int:
    return result.expected - result.unique_keys


def max_429_per_window(result: LoadResult) -> int:
    """429s answered within the worst server window (a 429 belongs to the window it fell in)."""
    starts = [start for start, _ in result.windows]
    counts = [0] * max(1, len(starts))
    for ts, status, _ in result.arrivals:
        if status == 429:
            index = max(0, sum(1 for start in starts if start <= ts) - 1)
            counts[index] += 1
    return max(counts)


def run_config(backend: str, tasks: int, args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    extra = {"rate_limit_backend": "redis", "redis_conn_id": "redis_default"} if backend == "redis" else {}
    with _redis_connection() if backend == "redis" else nullcontext({}) as env:
        result = run_load(
            tasks=tasks,
            events_per_task=args.events_per_task,
            limit=args.limit,
            window=args.window,
            max_workers=args.max_workers,
            workdir=workdir,
            extra=extra,
            env=env,
        )
    # How late each server window opened after the previous one ended (what the fleet lost there).
    starts = [start for start, _ in result.windows]
    gaps = [b - (a + result.window) for a, b in itertools.pairwise(starts)]
    return {
        "tasks": tasks,
        "events_per_task": args.events_per_task,
        "limit": args.limit,
        "window": args.window,
        "max_workers": args.max_workers,
        "failed_events": failed_events(result),
        "tasks_failed": sum(1 for r in result.task_results if "error" in r),
        "errors": sorted({str(r["error"])[:160] for r in result.task_results if "error" in r}),
        "requests": result.requests,
        "count_429": result.count_429,
        "max_429_per_window": max_429_per_window(result),
        "windows": len(result.windows),
        "over_limit_windows": sum(1 for _, count in result.windows if count > result.limit),
        "stored_once": result.stored == result.unique_keys,
        "achieved_over_allowed": round(result.achieved_rate / result.allowed_rate, 3),
        "reopen_delay_ms_median": round(1000 * statistics.median(gaps), 1) if gaps else None,
        "short_windows": [count for _, count in result.windows[:-1] if count < result.limit],
        "wall_s": round(result.wall_s, 1),
    }


def _checks(label: str, backend: str, run: dict[str, Any]) -> dict[str, bool]:
    tag = f"{label}, {run['tasks']} tasks"
    checks = {f"{tag}: 0 failed events": run["failed_events"] == 0}
    if backend == "redis":
        checks[f"{tag}: achieved / allowed >= {REDIS_RATE_TARGET}"] = (
            run["achieved_over_allowed"] >= REDIS_RATE_TARGET
        )
        checks[f"{tag}: at most {REDIS_429_PER_WINDOW} x 429 per window"] = (
            run["max_429_per_window"] <= REDIS_429_PER_WINDOW
        )
    else:
        checks[f"{tag}: achieved / allowed >= {LOCAL_RATE_TARGET}"] = (
            run["achieved_over_allowed"] >= LOCAL_RATE_TARGET
        )
    return checks


def _row(label: str, run: dict[str, Any]) -> str:
    return (
        f"| {label} | {run['tasks']} x {run['events_per_task']} | {run['failed_events']} "
        f"({run['tasks_failed']} tasks failed) | {run['count_429']} of {run['requests']:,} "
        f"| {run['max_429_per_window']} | {run['achieved_over_allowed']:.3f} | {run['windows']} "
        f"| {run['wall_s']:.1f} s |"
    )


def _section(results: dict[str, Any]) -> str:
    rows, verdicts, commands = [], {}, []
    for label, entry in results.items():
        commands.append(f"{entry['command']}  # {entry['measured']}")
        for run in entry["runs"]:
            rows.append(_row(label, run))
            verdicts.update(_checks(label, entry["backend"], run))
    first = next(iter(results.values()))["runs"][0]
    verdict_lines = "\n".join(f"- {'pass' if ok else 'FAIL'}: {name}" for name, ok in verdicts.items())
    return (
        "## Fleet\n\n"
        "Many `TrackEventOperator` tasks on one Space, each in its own process as Airflow 3 runs\n"
        "them (the harness of the Load section), released at the same instant against one simulator\n"
        f"subprocess at {first['limit']} track requests per {first['window']:g} s window (the API's\n"
        f"1000/min scaled), {first['max_workers']} threads per task. *Local* is the limiter each task\n"
        "process has by default (coordinated only through the server's `X-RateLimit-Remaining` and\n"
        '429 answers); *Redis* is the shared bucket (`"rate_limit_backend": "redis"`) that every\n'
        "process of the deployment consumes from. *Failed events* are events of the batches the\n"
        "simulator did not store. *Achieved / allowed* is the steady-state rate as in the Load\n"
        "section. *429s in the worst window* counts the 429 answers of the server window that had\n"
        "most (a 429 counts in the window whose end it ran into).\n\n"
        "The first rows were measured on the code before this change (commit b1bc6a6, run from a\n"
        "checkout of it with this commit's `bench/` and simulator copied in, as its command notes):\n"
        "there a 429 used up one of `max_attempts` (5), so a request that lost the race at five window\n"
        "edges failed its event. Now a 429 is a wait bounded by `rate_limit_timeout`. The local\n"
        "limiter keeps a few 429s per process at each window edge, as every process learns of the\n"
        "others only from the answers. The Redis bucket holds each slot for the window plus twice the\n"
        "measured flight time of a request (at most 5 % of the window): without that margin the next\n"
        "window's first requests reached the server before its window had ended (44 x 429, 0.949 for\n"
        "8 tasks). Without one thread per process at a time waiting on Redis, each freed slot woke\n"
        "every waiting thread of every process into a Redis call: 16 tasks reached 0.735.\n\n"
        "Measured with nothing else running on the 2-CPU machine (the load average of 4-6 is the\n"
        "bench's own task processes); the Redis rows were run twice that hour with the same result\n"
        "(8 tasks 0.993, 16 tasks 0.993 and 0.992, no 429). The 2 s window is sensitive to CPU\n"
        "starvation: on the same machine saturated by other builds (load average 13-22) the Redis\n"
        "bucket reached 0.945 (8 tasks, 2 x 429 in the worst window) and 0.951 (16 tasks, 3 x 429),\n"
        "still with no failed event; a real 60 s window is 30 times less sensitive.\n\n"
        "Commands (from the repository root), each with the date and machine of its run:\n\n"
        "```\n" + "\n".join(commands) + "\n```\n\n"
        "| configuration | tasks x events | failed events | 429s | 429s in the worst window "
        "| achieved / allowed | windows | wall clock |\n"
        "|---|---:|---|---|---:|---:|---:|---:|\n" + "\n".join(rows) + "\n\n" + verdict_lines + "\n"
    )


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--label", required=True, help="name of this configuration in the results")
    parser.add_argument("--backend", choices=("local", "redis"), default="local")
    parser.add_argument("--tasks", type=int, nargs="+", default=[8, 16], help="task processes per run")
    parser.add_argument("--events-per-task", type=int, default=250)
    parser.add_argument("--limit", type=int, default=200, help="track requests per window")
    parser.add_argument("--window", type=float, default=2.0, help="rate-limit window in seconds")
    parser.add_argument("--max-workers", type=int, default=4, help="operator max_workers per task")
    parser.add_argument("--no-write-docs", action="store_true")
    args = parser.parse_args(argv)

    runs = []
    ok = True
    for tasks in args.tasks:
        with tempfile.TemporaryDirectory(prefix="cometly-fleet-") as workdir:
            run = run_config(args.backend, tasks, args, Path(workdir))
        runs.append(run)
        print(json.dumps(run, indent=2))
        for name, passed in _checks(args.label, args.backend, run).items():
            print(f"  [{'ok' if passed else 'FAIL'}] {name}")
            ok = ok and passed
    results = json.loads(RESULTS.read_text()) if RESULTS.exists() else {}
    results[args.label] = {
        "backend": args.backend,
        "command": "python bench/track_fleet.py " + shlex.join(a for a in argv if a != "--no-write-docs"),
        "measured": measured_on(),
        "runs": runs,
    }
    RESULTS.write_text(json.dumps(results, indent=2) + "\n")
    if not args.no_write_docs:
        write_section("Fleet", _section(results))
        print("\n  wrote the Fleet section of docs/benchmarks.md")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
