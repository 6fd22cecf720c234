"""The rate limiter's shared bucket on Redis: one sliding window per Space and endpoint for a fleet.

Selected with ``"rate_limit_backend": "redis"`` in the Cometly connection's extra, ``redis_conn_id``
(default ``redis_default``) resolved through the Airflow Redis provider's ``RedisHook``. Every
process of the deployment (task processes on every worker, the triggerer) consumes from the same
pyrate-limiter ``RedisBucket`` (a sorted-set log updated by one Lua script, so the check and the
insert are atomic across processes), instead of each keeping its own. Install with the ``[redis]``
extra.

Tracking never stops because Redis is down: when Redis cannot be reached (or the provider is not
installed) the limiter logs one warning naming the connection and the error, uses the process's
local bucket, still coordinated through the API's rate-limit headers, and tries Redis again after
:data:`RETRY_REDIS_AFTER_S`.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from typing import TYPE_CHECKING, Any

from pyrate_limiter import Limiter, Rate, RedisBucket
from pyrate_limiter.buckets.redis_bucket import LuaScript

if TYPE_CHECKING:
    import redis

log = logging.getLogger(__name__)

#: Seconds between attempts to use Redis again after it failed.
RETRY_REDIS_AFTER_S = 30.0
#: Socket timeouts for the limiter's Redis calls unless the connection sets its own: a Redis that
#: stops answering must not hold tracking for longer than this before the local fallback.
REDIS_SOCKET_TIMEOUT_S = 2.0
#: pyrate-limiter sleeps this much past the moment a slot frees before trying again (its default
#: is 50 ms, 2.5 % of a 2 s test window; every waiting process adds its own, so keep it short).
_BUFFER_MS = 5


#: pyrate-limiter's check-and-insert script, counting every entry from the window's start on. Its
#: own counts entries up to the caller's clock only: a process that read the clock, was then
#: descheduled (tens of ms on a loaded worker) and ran the script after others had inserted later
#: entries did not count those, and admitted one request too many (a 429 at the server).
_PUT_ITEM = LuaScript.PUT_ITEM.replace(
    "redis.call('ZCOUNT', bucket, window_start, now)", "redis.call('ZCOUNT', bucket, window_start, '+inf')"
)


class RedisUnavailableError(Exception):
    """Redis (or the Airflow Redis provider) cannot serve the shared bucket right now."""


#: The client arguments taken over from the Redis provider's client (the same for redis-py's sync
#: and asyncio clients; the rest of its pool arguments are sync-only details).
_CLIENT_ARGS = (
    "host",
    "port",
    "db",
    "username",
    "password",
    "ssl_cert_reqs",
    "ssl_ca_certs",
    "ssl_keyfile",
    "ssl_certfile",
    "ssl_check_hostname",
)


def redis_connection_kwargs(redis_conn_id: str) -> dict[str, Any]:
    """redis-py client arguments for an Airflow Redis connection, as the Redis provider reads it."""
    try:
        from airflow.providers.redis.hooks.redis import RedisHook
    except ImportError as err:
        raise RedisUnavailableError(
            "the Airflow Redis provider is not installed (pip install 'airflow-provider-cometly[redis]')"
        ) from err
    client = RedisHook(redis_conn_id=redis_conn_id).get_conn()  # type: ignore[no-untyped-call]
    pool = getattr(client, "connection_pool", None)
    if pool is None:
        raise RedisUnavailableError(f"Redis connection {redis_conn_id!r}: cluster mode is not supported")
    given = pool.connection_kwargs
    kwargs = {name: given[name] for name in _CLIENT_ARGS if given.get(name) is not None}
    if "SSL" in pool.connection_class.__name__:
        kwargs["ssl"] = True
    kwargs["socket_timeout"] = given.get("socket_timeout") or REDIS_SOCKET_TIMEOUT_S
    kwargs["socket_connect_timeout"] = given.get("socket_connect_timeout") or REDIS_SOCKET_TIMEOUT_S
    client.close()
    return kwargs


class RedisSharedBucket:
    """One endpoint's sliding-window bucket on Redis, for the sync hook and for triggers.

    :meth:`try_acquire` / :meth:`try_acquire_async` return ``True`` (a slot was taken), ``False``
    (no slot before the timeout) or ``None`` (Redis is unavailable: use the local bucket).
    """

    def __init__(self, redis_conn_id: str, *, bucket_key: str, rate: Rate) -> None:
        self.redis_conn_id = redis_conn_id
        self.bucket_key = bucket_key
        self._limit = rate.limit
        self._interval_ms = int(rate.interval)
        self._flight_s: float | None = None
        # Until answers tell the flight time: 0.1 s (at most 5 % of the window).
        self._margin_ms = round(min(100, 0.05 * self._interval_ms))
        self._rates = [Rate(self._limit, self._interval_ms + self._margin_ms)]
        self._lock = threading.Lock()
        self._kwargs: dict[str, Any] | None = None
        self._sync: Limiter | None = None
        # Async clients belong to the event loop that made them (one per triggerer loop / test).
        self._async: tuple[asyncio.AbstractEventLoop, Limiter] | None = None
        self._turn = threading.Lock()
        self._async_turn: tuple[asyncio.AbstractEventLoop, asyncio.Lock] | None = None
        self._down_until = 0.0
        self._down_logged = False

    def usable(self) -> bool:
        return time.monotonic() >= self._down_until

    def set_limit(self, limit: int) -> None:
        self._limit = limit
        self._apply_rates()

    def note_flight(self, seconds: float) -> None:
        """Feed back the time from a slot being taken to the request's answer.

        The bucket logs the moment a slot is taken, the server counts the moment the request
        arrives. A slot freed exactly one window later can then send the next window's first
        request before the server's window (opened by the previous first arrival) has ended: a
        429 at every window edge for each process whose request flew faster than the first one
        did. Holding each slot for a little longer than a window, twice the usual flight time
        (at most 5 % of the window), keeps them out; with real latencies (0.2 s to the API, a
        60 s window) it costs under 1 % of the rate.
        """
        self._flight_s = seconds if self._flight_s is None else 0.8 * self._flight_s + 0.2 * seconds
        margin = round(min(2000 * self._flight_s, 0.05 * self._interval_ms))
        if abs(margin - self._margin_ms) >= max(2, self._margin_ms // 10):
            self._margin_ms = margin
            self._apply_rates()

    def _apply_rates(self) -> None:
        rates = [Rate(self._limit, self._interval_ms + self._margin_ms)]
        self._rates = rates
        limiters = [self._sync, self._async[1] if self._async else None]
        for limiter in limiters:
            if limiter is not None:
                for bucket in limiter.buckets():
                    bucket.rates = rates

    def _connection_kwargs(self) -> dict[str, Any]:
        if self._kwargs is None:
            self._kwargs = redis_connection_kwargs(self.redis_conn_id)
        return self._kwargs

    def try_acquire(self, timeout: float) -> bool | None:
        # One thread of the process at a time waits on Redis, the others queue here: each freed
        # slot would otherwise wake every waiting thread of every process into a Redis call (with
        # 16 processes x 4 threads that herd took the CPU the requests needed: 0.74 of the rate).
        deadline = None if timeout < 0 else time.monotonic() + timeout
        if not self._turn.acquire(timeout=-1 if deadline is None else timeout):
            return False
        try:
            return self._try_acquire(-1 if deadline is None else max(0.0, deadline - time.monotonic()))
        finally:
            self._turn.release()

    def _try_acquire(self, timeout: float) -> bool | None:
        try:
            with self._lock:
                if self._sync is None:
                    kwargs = self._connection_kwargs()  # first: says which extra is missing
                    import redis
                    from redis.backoff import NoBackoff
                    from redis.retry import Retry

                    # No retries inside redis-py (its default backs off for ~5 s on a refused
                    # connection): the local fallback is the retry.
                    client: redis.Redis = redis.Redis(**kwargs, retry=Retry(NoBackoff(), 0))
                    script = client.script_load(_PUT_ITEM)
                    bucket = RedisBucket(list(self._rates), client, self.bucket_key, script)
                    self._sync = Limiter(bucket, buffer_ms=_BUFFER_MS)
                limiter = self._sync
            acquired = limiter.try_acquire(self.bucket_key, blocking=True, timeout=timeout)
        except Exception as err:  # redis errors, provider missing, connection not defined...
            self._failed(err)
            return None
        self._recovered()
        return bool(acquired)

    async def try_acquire_async(self, timeout: float) -> bool | None:
        loop = asyncio.get_running_loop()
        if self._async_turn is None or self._async_turn[0] is not loop:
            self._async_turn = (loop, asyncio.Lock())
        turn = self._async_turn[1]
        deadline = None if timeout < 0 else time.monotonic() + timeout
        try:
            await asyncio.wait_for(turn.acquire(), None if deadline is None else timeout)
        except TimeoutError:
            return False
        try:
            left = -1 if deadline is None else max(0.0, deadline - time.monotonic())
            return await self._try_acquire_async(loop, left)
        finally:
            turn.release()

    async def _try_acquire_async(self, loop: asyncio.AbstractEventLoop, timeout: float) -> bool | None:
        try:
            if self._async is None or self._async[0] is not loop:
                kwargs = self._connection_kwargs()
                import redis.asyncio
                from redis.asyncio.retry import Retry as AsyncRetry
                from redis.backoff import NoBackoff

                client = redis.asyncio.Redis(**kwargs, retry=AsyncRetry(NoBackoff(), 0))
                script = await client.script_load(_PUT_ITEM)
                bucket = RedisBucket(list(self._rates), client, self.bucket_key, script)
                self._async = (loop, Limiter(bucket, buffer_ms=_BUFFER_MS))
            limiter = self._async[1]
            acquired = await limiter.try_acquire_async(self.bucket_key, blocking=True, timeout=timeout)
        except Exception as err:
            self._failed(err)
            return None
        self._recovered()
        return bool(acquired)

    def _failed(self, err: BaseException) -> None:
        # Start from a fresh client and script next time (a restarted Redis has no script cache).
        self._sync = None
        self._async = None
        self._down_until = time.monotonic() + RETRY_REDIS_AFTER_S
        if not self._down_logged:
            self._down_logged = True
            log.warning(
                "Cometly rate limiter: the shared Redis bucket (redis_conn_id=%r) is unavailable "
                "(%s: %s); falling back to this process's own limiter, coordinated through the API's "
                "rate-limit headers, and trying Redis again every %g s. Tracking goes on.",
                self.redis_conn_id,
                type(err).__name__,
                err,
                RETRY_REDIS_AFTER_S,
            )

    def _recovered(self) -> None:
        if self._down_logged:
            self._down_logged = False
            log.warning(
                "Cometly rate limiter: the shared Redis bucket (redis_conn_id=%r) is back", self.redis_conn_id
            )
