"""End-to-end demo: the example DAGs on a real Airflow, against local Cometly and S3 servers.

The daily export lands the day's events and the day's new contacts side by side (two branches of
one DAG); the tracking DAGs send conversions.

Run it with ``bash scripts/demo.sh``. By default everything is local: the bundled Cometly simulator
and a moto S3 server on loopback, a throw-away Airflow home with a SQLite metadata DB, and
``airflow dags test`` for each DAG. No cloud account, API key or Docker needed.

Point it at the real services by setting ``COMETLY_API_KEY`` (and optionally ``COMETLY_HOST``)
and/or ``DEMO_S3_BUCKET`` (with the usual AWS credentials in the environment).
"""

from __future__ import annotations

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


if __name__ == "__main__":
    main()
