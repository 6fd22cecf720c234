"""The shared Redis bucket: a real Redis server (started here), the simulator over real HTTP.

The fleet-level runs (separate task processes, Redis killed mid-run) are in
``tests/reliability/test_fleet.py``; these check the backend itself: sync and async (triggers)
consume one bucket, an unreachable Redis falls back to the local limiter with one warning.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Iterator
from typing import Any

import pytest

from cometly_provider.hooks.cometly import CometlyHook
from cometly_provider.hooks.rate_limit import reset_rate_limiters
from tests.conftest import cometly_conn_uri, free_port
from tests.redis_server import RedisServer, spawn_redis

WINDOW, LIMIT = 2.0, 4


@pytest.fixture
def redis_server(monkeypatch: pytest.MonkeyPatch) -> Iterator[RedisServer]:
    with spawn_redis() as server:
        monkeypatch.setenv(
            "AIRFLOW_CONN_REDIS_DEFAULT", json.dumps({"conn_type": "redis", **server.connection})
        )
        yield server


def _connect(monkeypatch: pytest.MonkeyPatch, sim: Any, **extra: Any) -> None:
    extra = {
        "rate_limit_backend": "redis",
        "rate_limit_window_seconds": WINDOW,
        "rate_limits": {"export_status": LIMIT},
        "retry_min_wait": 0.05,
        **extra,
    }
    monkeypatch.setenv("AIRFLOW_CONN_COMETLY_DEFAULT", cometly_conn_uri(sim.base_url, sim.api_key, **extra))


def _bucket_sizes(server: RedisServer) -> dict[str, int]:
    import redis

    client = redis.Redis(host=server.host, port=server.port)
    try:
        return {key.decode(): int(client.zcard(key)) for key in client.scan_iter("cometly-provider:*")}
    finally:
        client.close()


@pytest.mark.cometly_simulator(window_seconds=WINDOW, rate_limits={"export_status": LIMIT})
def test_sync_hook_and_trigger_path_share_one_bucket(
    cometly_simulator: Any, redis_server: RedisServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    _connect(monkeypatch, cometly_simulator)
    sync_hook = CometlyHook()
    export_id = sync_hook.create_event_export(date="2024-01-15")["export_id"]
    for _ in range(LIMIT):
        sync_hook.get_event_export(export_id)
    sizes = _bucket_sizes(redis_server)
    (key,) = (key for key in sizes if key.endswith(":export_status:2"))
    assert sizes[key] == LIMIT

    async def poll_twice() -> float:
        hook = CometlyHook()  # a trigger's own hook: async path, same Redis bucket
        started = time.monotonic()
        await asyncio.gather(hook.aget_event_export(export_id), hook.aget_event_export(export_id))
        return time.monotonic() - started

    # Forget this process's limiters (their local bucket and header gate): only Redis remembers
    # that the sync hook spent the window's slots, so the async polls wait for the window to slide.
    reset_rate_limiters()
    assert asyncio.run(poll_twice()) > WINDOW * 0.7
    assert cometly_simulator.status_counts("export_status").get(429, 0) == 0
    sync_hook.close()


@pytest.mark.cometly_simulator(window_seconds=WINDOW, rate_limits={"export_status": LIMIT})
def test_unreachable_redis_falls_back_to_the_local_limiter_and_says_so_once(
    cometly_simulator: Any, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv(
        "AIRFLOW_CONN_REDIS_DEFAULT",
        json.dumps({"conn_type": "redis", "host": "127.0.0.1", "port": free_port()}),
    )
    _connect(monkeypatch, cometly_simulator)
    hook = CometlyHook()
    caplog.set_level(logging.WARNING, logger="cometly_provider")
    export_id = hook.create_event_export(date="2024-01-15")["export_id"]
    started = time.monotonic()
    for _ in range(LIMIT + 2):
        hook.get_event_export(export_id)
    # Still limited (the local bucket): the two past the limit waited for the window.
    assert time.monotonic() - started > WINDOW * 0.7
    assert cometly_simulator.status_counts("export_status") == {200: LIMIT + 2}
    warnings = [r.getMessage() for r in caplog.records if "shared Redis bucket" in r.getMessage()]
    assert len(warnings) == 2, warnings  # one per endpoint used (export_create, export_status)
    assert all("redis_conn_id='redis_default'" in w and "Tracking goes on" in w for w in warnings)
    assert cometly_simulator.api_key not in caplog.text
    hook.close()


@pytest.mark.cometly_simulator(window_seconds=WINDOW, rate_limits={"export_status": LIMIT})
def test_async_path_falls_back_too(cometly_simulator: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(
        "AIRFLOW_CONN_REDIS_DEFAULT",
        json.dumps({"conn_type": "redis", "host": "127.0.0.1", "port": free_port()}),
    )
    _connect(monkeypatch, cometly_simulator)
    export_id = CometlyHook().create_event_export(date="2024-01-15")["export_id"]
    result = asyncio.run(CometlyHook().aget_event_export(export_id))
    assert result["export_id"] == export_id
