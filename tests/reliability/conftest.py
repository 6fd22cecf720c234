"""Fixtures of the reliability suite: a simulator with a scaled window, a fresh moto bucket.

The invariant checkers are plain functions in :mod:`tests.reliability.invariants`.
"""

from __future__ import annotations

import uuid
from typing import Any

import pytest

from tests import event_exports as support


@pytest.fixture
def sim(cometly_simulator: Any, monkeypatch: pytest.MonkeyPatch) -> Any:
    """``cometly_default`` -> a simulator with a 1.5 s window and short export timings, fast retries."""
    return support.configure(cometly_simulator, monkeypatch)


@pytest.fixture
def bucket(s3_conn: str) -> tuple[Any, str]:
    """A fresh bucket in the moto server (``aws_default`` points at it): (boto3 client, name)."""
    import boto3

    client = boto3.client("s3", endpoint_url=s3_conn)
    name = f"rel-{uuid.uuid4().hex[:12]}"
    client.create_bucket(Bucket=name)
    return client, name
