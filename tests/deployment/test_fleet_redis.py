"""Eight mapped tracking instances, run in parallel by a real scheduler, share one Redis bucket.

Scenario 3 of the deployment (``deployment_track_mapped``: eight ``TrackEventOperator`` task
processes on one Space, connection ``cometly_contended``) with ``"rate_limit_backend": "redis"``:
every task process consumes from one bucket on a real Redis server, at a track limit far below
what 8 x 4 threads could send. Every event lands once, no task fails, the server's 429s stay at
the window edges, and the bucket in Redis shows that the task processes used it.
"""

from __future__ import annotations

from typing import Any

import pytest

from tests.deployment.dags.deployment_test_dags import TRACK_EVENTS
from tests.redis_server import spawn_redis

LIMIT = 40


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_mapped_tracking_instances_share_a_redis_bucket(deployment: Any, tmp_path: Any) -> None:
    import redis

    sim = deployment.simulator
    window = sim.config.window_seconds
    sim.update_config(rate_limits={**sim.config.rate_limits, "track": LIMIT})
    with spawn_redis(tmp_path) as server:
        deployment.api("DELETE", "/connections/redis_fleet", ok=(204, 404))
        deployment.api(
            "POST",
            "/connections",
            json={"connection_id": "redis_fleet", "conn_type": "redis", **server.connection},
            ok=(201,),
        )
        deployment.set_connection(
            "cometly_contended",
            "cometly",
            host=sim.base_url,
            password=sim.api_key,
            extra={
                "rate_limit_backend": "redis",
                "redis_conn_id": "redis_fleet",
                "rate_limit_window_seconds": window,
                "rate_limits": {"track": LIMIT},
                "retry_min_wait": 0.1,
            },
        )
        before = len(sim.requests_for("track"))
        run_id = deployment.trigger("deployment_track_mapped")
        assert deployment.wait_for_run("deployment_track_mapped", run_id, timeout=420) == "success"
        client = redis.Redis(host=server.host, port=server.port)
        keys = [key.decode() for key in client.scan_iter("cometly-provider:rate-limit:*:track:*")]
        client.close()

    tracks = [
        t
        for t in deployment.task_instances("deployment_track_mapped", run_id)
        if t["task_id"] == "track_chunk"
    ]
    assert len(tracks) == 8
    assert all(t["state"] == "success" and t["try_number"] == 1 for t in tracks), tracks
    assert keys, "the task processes did not use the Redis bucket"
    records = sim.requests_for("track")[before:]
    accepted = [r for r in records if r.status == 202]
    emails = {str((r.json or {}).get("email")) for r in accepted}
    assert len(accepted) == len(emails) == TRACK_EVENTS
    # One bucket paces the eight processes: a 429 only where a request's flight crosses a window
    # edge, at most about one per process and window (local limiters: up to 8 x 4 threads each).
    windows = -(-TRACK_EVENTS // LIMIT)
    assert sum(1 for r in records if r.status == 429) <= len(tracks) * windows
