"""Shared test set-up: an isolated Airflow home, and real servers on loopback.

Everything here talks over real sockets: the Cometly simulator (fixture ``cometly_simulator`` from
the provider's own pytest plugin), a moto S3 server and a gcp-storage-emulator GCS server.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

# Airflow reads its configuration at import time: isolate it before anything imports airflow.
_AIRFLOW_HOME = Path(tempfile.mkdtemp(prefix="cometly-tests-airflow-"))
os.environ["AIRFLOW_HOME"] = str(_AIRFLOW_HOME)
os.environ["AIRFLOW__CORE__LOAD_EXAMPLES"] = "False"
os.environ["AIRFLOW__CORE__UNIT_TEST_MODE"] = "True"
os.environ["AIRFLOW__CORE__DAGS_FOLDER"] = str(Path(__file__).resolve().parents[1] / "example_dags")
os.environ["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"] = f"sqlite:///{_AIRFLOW_HOME / 'airflow.db'}"
os.environ.setdefault("AWS_ACCESS_KEY_ID", "testing")
os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "testing")
os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")
os.environ.pop("AWS_PROFILE", None)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="session")
def airflow_db() -> Path:
    """A migrated SQLite metadata DB, for tests that run DAGs with ``dag.test()``."""
    subprocess.run(
        [sys.executable, "-m", "airflow", "db", "migrate"],
        check=True,
        env=os.environ.copy(),
        stdout=subprocess.DEVNULL,
    )
    return _AIRFLOW_HOME


@pytest.fixture(autouse=True)
def _fresh_rate_limiters() -> Iterator[None]:
    # Limiters are process-wide by design; tests restart simulators, so forget old windows.
    from cometly_provider.hooks.rate_limit import reset_rate_limiters

    reset_rate_limiters()
    yield
    reset_rate_limiters()


def cometly_conn_uri(base_url: str, api_key: str, **extra: Any) -> str:
    """An ``AIRFLOW_CONN_*`` value (JSON form) for a Cometly connection."""
    return json.dumps({"conn_type": "cometly", "host": base_url, "password": api_key, "extra": extra})


@pytest.fixture
def cometly_conn(cometly_simulator: Any, monkeypatch: pytest.MonkeyPatch) -> Any:
    """``cometly_default`` pointing at a fresh simulator with fast retries; yields the simulator."""
    monkeypatch.setenv(
        "AIRFLOW_CONN_COMETLY_DEFAULT",
        cometly_conn_uri(cometly_simulator.base_url, cometly_simulator.api_key, retry_min_wait=0.05),
    )
    return cometly_simulator


@pytest.fixture(scope="session")
def moto_server() -> Iterator[str]:
    """A real S3 API (moto in server mode) on loopback; yields its endpoint URL."""
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=free_port(), verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    try:
        yield f"http://{host}:{port}"
    finally:
        server.stop()


@pytest.fixture
def s3_conn(moto_server: str, monkeypatch: pytest.MonkeyPatch) -> str:
    """``aws_default`` pointing at the moto server; returns the endpoint URL."""
    monkeypatch.setenv(
        "AIRFLOW_CONN_AWS_DEFAULT",
        json.dumps(
            {
                "conn_type": "aws",
                "login": "testing",
                "password": "testing",
                "extra": {"endpoint_url": moto_server, "region_name": "us-east-1"},
            }
        ),
    )
    return moto_server


@pytest.fixture
def bucket(s3_conn: str) -> tuple[Any, str]:
    """A fresh bucket in the moto server (``aws_default`` points at it): (boto3 client, name)."""
    import boto3

    client = boto3.client("s3", endpoint_url=s3_conn)
    name = f"lake-{uuid.uuid4().hex[:12]}"
    client.create_bucket(Bucket=name)
    return client, name


@pytest.fixture(scope="session")
def gcs_emulator() -> Iterator[str]:
    """A real GCS JSON API (gcp-storage-emulator) on loopback; yields its base URL."""
    from gcp_storage_emulator.server import create_server

    port = free_port()
    server = create_server("127.0.0.1", port, in_memory=True)
    server.start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.stop()


@pytest.fixture
def gcs_conn(gcs_emulator: str, monkeypatch: pytest.MonkeyPatch) -> str:
    """``google_cloud_default`` with anonymous credentials, the GCS client aimed at the emulator."""
    # google-cloud-storage sends every request to STORAGE_EMULATOR_HOST when it is set.
    monkeypatch.setenv("STORAGE_EMULATOR_HOST", gcs_emulator)
    monkeypatch.setenv(
        "AIRFLOW_CONN_GOOGLE_CLOUD_DEFAULT",
        json.dumps(
            {
                "conn_type": "google_cloud_platform",
                "extra": {"is_anonymous": True, "project": "test-project"},
            }
        ),
    )
    return gcs_emulator
