"""End-to-end demo: the example DAGs on a real Airflow, against local Cometly and S3 servers.

The daily export lands the day's events and the day's new contacts side by side (two branches of
one DAG); the tracking DAGs send conversions.

Run it with ``bash scripts/demo.sh``. By default everything is local: the bundled Cometly simulator
and a moto S3 server on loopback, a throw-away Airflow home with a SQLite metadata DB, and
``airflow dags test`` for each DAG. No cloud account, API key or Docker needed.

Point it at the real services by setting ``COMETLY_API_KEY`` (and optionally ``COMETLY_HOST``)
and/or ``DEMO_S3_BUCKET`` (with the usual AWS credentials in the environment).

``bash scripts/demo.sh --deployment`` runs the same example DAGs through a real local deployment
instead (api-server, scheduler with LocalExecutor, dag-processor, triggerer: the test suite's
``tests/deployment`` harness), always against the local simulator and S3 server, and prints each
task's state and try count.
"""

from __future__ import annotations

import argparse
import contextlib
import gzip
import json
import os
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
DAY = os.environ.get("DEMO_DATE", "2024-01-15")
EXPORT_ROWS = int(os.environ.get("DEMO_EXPORT_ROWS", "20000"))


def say(message: str) -> None:
    print(f"==> {message}", flush=True)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextlib.contextmanager
def cometly_endpoint() -> Iterator[tuple[str, str, Any]]:
    """(host, api_key, simulator client or None)."""
    api_key = os.environ.get("COMETLY_API_KEY")
    if api_key:
        say("Using the real Cometly API (COMETLY_API_KEY is set)")
        yield os.environ.get("COMETLY_HOST", "https://app.cometly.com"), api_key, None
        return
    from cometly_provider.testing import spawn_simulator

    with spawn_simulator(
        api_key="demo-api-key",
        queued_seconds=1.0,
        processing_seconds=2.0,
        export_rows=EXPORT_ROWS,
    ) as client:
        say(f"Cometly simulator running at {client.base_url}")
        yield client.base_url, "demo-api-key", client


@contextlib.contextmanager
def s3_endpoint() -> Iterator[tuple[str, str | None]]:
    """(bucket, endpoint_url or None for real AWS)."""
    bucket = os.environ.get("DEMO_S3_BUCKET")
    if bucket:
        say(f"Using the real S3 bucket {bucket}")
        yield bucket, None
        return
    # moto accepts any credentials; set some so boto3 does not look for real ones.
    os.environ.update(AWS_ACCESS_KEY_ID="demo", AWS_SECRET_ACCESS_KEY="demo")  # noqa: S106
    port = free_port()
    server = subprocess.Popen(  # noqa: S603 - our own interpreter, fixed arguments
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    endpoint = f"http://127.0.0.1:{port}"
    try:
        _wait_for_port(port)
        import boto3

        boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1").create_bucket(
            Bucket="cometly-lake"
        )
        say(f"S3 API (moto server) running at {endpoint}, bucket cometly-lake")
        yield "cometly-lake", endpoint
    finally:
        server.terminate()
        server.wait(timeout=10)


def _wait_for_port(port: int, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError):
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return
        time.sleep(0.1)
    raise RuntimeError(f"server on port {port} did not start")


def airflow(args: list[str], env: dict[str, str], log: Path) -> None:
    with log.open("a") as out:
        out.write(f"\n$ airflow {' '.join(args)}\n")
        out.flush()
        result = subprocess.run(  # noqa: S603 - our own interpreter, fixed arguments
            [sys.executable, "-m", "airflow", *args],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            check=False,
        )
    if result.returncode != 0:
        print(log.read_text()[-6000:], file=sys.stderr)
        raise SystemExit(f"airflow {' '.join(args)} failed (exit {result.returncode}); full log: {log}")


def xcom(home: Path, dag_id: str, task_id: str) -> list[Any]:
    with sqlite3.connect(home / "airflow.db") as db:
        rows = db.execute(
            "SELECT value FROM xcom WHERE dag_id = ? AND task_id = ? AND key = 'return_value'"
            " ORDER BY map_index",
            (dag_id, task_id),
        ).fetchall()
    return [json.loads(value) if isinstance(value, str | bytes) else value for (value,) in rows]


def main() -> None:
    home = Path(tempfile.mkdtemp(prefix="cometly-demo-"))
    log = home / "demo.log"
    env = {
        **os.environ,
        "AIRFLOW_HOME": str(home),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__CORE__DAGS_FOLDER": str(ROOT / "example_dags"),
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{home / 'airflow.db'}",
        "COMETLY_EXAMPLE_POLL_SECONDS": "3",
    }
    say(f"Airflow home {home} (SQLite); migrating the metadata DB")
    airflow(["db", "migrate"], env, log)

    with cometly_endpoint() as (host, api_key, simulator), s3_endpoint() as (bucket, s3_url):
        env["AIRFLOW_CONN_COMETLY_DEFAULT"] = json.dumps(
            {"conn_type": "cometly", "host": host, "password": api_key}
        )
        if s3_url:
            env["AIRFLOW_CONN_AWS_DEFAULT"] = json.dumps(
                {
                    "conn_type": "aws",
                    "login": "demo",
                    "password": "demo",
                    "extra": {"endpoint_url": s3_url, "region_name": "us-east-1"},
                }
            )
        started = time.monotonic()
        say(f"airflow dags test cometly_daily_export {DAY}")
        airflow(
            ["dags", "test", "cometly_daily_export", DAY, "--conf", json.dumps({"bucket": bucket})],
            env,
            log,
        )
        for dag_id in ("cometly_track_conversions", "cometly_track_conversions_mapped"):
            say(f"airflow dags test {dag_id} {DAY}")
            airflow(["dags", "test", dag_id, DAY], env, log)

        (landed,) = xcom(home, "cometly_daily_export", "download_export")
        (contacts,) = xcom(home, "cometly_daily_export", "download_contacts")
        tracked = xcom(home, "cometly_track_conversions", "track_conversions") + xcom(
            home, "cometly_track_conversions_mapped", "track_chunk"
        )
        records = _count_records(landed["destination"], s3_url)
        sent = sum(summary["sent"] for summary in tracked)
        print()
        print("Demo finished in %.0f s" % (time.monotonic() - started))
        print(f"  the run of {DAY} exported the last complete day before it (events and contacts)")
        print(f"  events landed at   {landed['destination']}")
        size = landed["bytes_written"]
        print(f"  size               {size:,} bytes (gzipped NDJSON, sha256 {landed['sha256'][:16]}…)")
        print(f"  records            {records:,} (verified by reading the object back)")
        people = _count_records(contacts["destination"], s3_url)
        print(f"  contacts landed at {contacts['destination']}")
        print(f"  contacts           {people:,} (verified by reading the object back)")
        print(f"  events tracked     {sent} sent in {len(tracked)} task(s)")
        if simulator is not None:
            stored = simulator.events
            orders = len({event["order_id"] for event in stored})
            print(f"  simulator stored   {len(stored)} events for {orders} distinct orders")
        print(f"  Airflow log        {log}")


def _count_records(uri: str, s3_url: str | None) -> int:
    import boto3

    bucket, _, key = uri.removeprefix("s3://").partition("/")
    body = boto3.client("s3", endpoint_url=s3_url, region_name="us-east-1").get_object(
        Bucket=bucket, Key=key
    )["Body"]
    with gzip.GzipFile(fileobj=body) as lines:
        return sum(1 for _ in lines)


def main_deployment() -> None:
    """The example DAGs through the real scheduler and triggerer; each task's state and tries."""
    sys.path.insert(0, str(ROOT))  # the deployment harness lives with the tests
    from tests.deployment.harness import running_deployment

    run_at = _next_day(DAY)
    started = time.monotonic()
    say("Starting a local Airflow deployment (api-server, scheduler, dag-processor, triggerer)")
    with running_deployment(
        # Long enough that the sensor finds the export still processing and defers to the triggerer.
        queued_seconds=1.0,
        processing_seconds=15.0,
        export_rows=EXPORT_ROWS,
    ) as deployment:
        say(
            f"Airflow {deployment.api_url} (AIRFLOW_HOME {deployment.home}) up in "
            f"{time.monotonic() - started:.0f} s; simulator {deployment.simulator.base_url}, "
            f"S3 {deployment.s3_endpoint}"
        )
        dags = ["cometly_daily_export", "cometly_track_conversions", "cometly_track_conversions_mapped"]
        deployment.wait_for_dags(dags)
        # The daily export is scheduled, as in production: a backfill of the run that covers DAY.
        deployment.unpause("cometly_daily_export")
        say(f"Backfill cometly_daily_export for the run at {run_at} (exports the day before it)")
        deployment.backfill("cometly_daily_export", run_at, run_at)
        (backfill,) = [r for r in deployment.runs("cometly_daily_export") if r["run_type"] == "backfill"]
        runs = [("cometly_daily_export", backfill["dag_run_id"])]
        for dag_id in dags[1:]:
            say(f"Trigger {dag_id}")
            runs.append((dag_id, deployment.trigger(dag_id)))
        for dag_id, run_id in runs:
            state = deployment.wait_for_run(dag_id, run_id, timeout=600)
            say(f"{dag_id} {run_id}: {state}")
        print()
        print(f"{'dag_id':34} {'task':24} {'state':10} tries")
        for dag_id, run_id in runs:
            tis = deployment.task_instances(dag_id, run_id)
            for ti in sorted(tis, key=lambda t: (t["start_date"] or "9", t["map_index"])):
                task = ti["task_id"] + (f"[{ti['map_index']}]" if ti["map_index"] >= 0 else "")
                print(f"{dag_id:34} {task:24} {ti['state'] or '-':10} {ti['try_number']}")
        landed = deployment.xcom("cometly_daily_export", backfill["dag_run_id"], "download_export")
        wait = deployment.task_instance("cometly_daily_export", backfill["dag_run_id"], "wait_for_export")
        log = deployment.task_log("cometly_daily_export", backfill["dag_run_id"], "wait_for_export")
        print()
        print("Demo finished in %.0f s" % (time.monotonic() - started))
        print(f"  export landed at   {landed['destination']} ({landed['records']:,} records)")
        deferred = "yes" if "Trigger fired event" in log else "no (the export was ready at the first poll)"
        print(f"  sensor deferred    {deferred}; {wait['state']} after {wait['try_number']} try")
        print(f"  simulator stored   {len(deployment.simulator.events)} events")
        others = [r for r in deployment.runs("cometly_daily_export") if r["run_type"] == "scheduled"]
        if others:
            # catchup=False: unpausing the DAG schedules its latest interval as well.
            print(f"  also scheduled     {', '.join(r['dag_run_id'] for r in others)} (latest interval)")
        print(f"  component logs     {deployment.logs_dir}")


def _next_day(day: str) -> str:
    import datetime as dt

    return (dt.date.fromisoformat(day) + dt.timedelta(days=1)).isoformat() + "T00:00:00Z"


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--deployment",
        action="store_true",
        help="run the example DAGs through a real local scheduler and triggerer",
    )
    if parser.parse_args().deployment:
        main_deployment()
    else:
        main()
