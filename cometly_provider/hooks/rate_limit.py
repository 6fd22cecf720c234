"""Client-side rate limiting per Cometly Space and endpoint.

Each endpoint of each Space has one :class:`EndpointRateLimiter` per process, shared by every hook
in that process (on Airflow 3 a process is one task instance: limiters are *not* shared between
tasks, mapped instances or workers unless the Redis backend is on). It has three parts:

* a pyrate-limiter sliding-window log at the Space's per-window limit, so one process never sends
  more than the API allows in any window (a sliding window also satisfies the server's fixed
  window, which is what keeps a single process at zero 429s). By default the bucket is in memory;
  with ``"rate_limit_backend": "redis"`` it is pyrate-limiter's Redis bucket, shared by every
  process of the deployment (:mod:`cometly_provider.hooks.rate_limit_redis`), with the in-memory
  bucket as the fallback while Redis is unreachable;
* a gate fed by ``X-RateLimit-Remaining`` and 429 ``Retry-After``: when other processes share the
  Space, the server's remaining budget runs out before ours does, and the gate then holds requests
  until the server's window is estimated to have reset;
* the limit itself, learnt from ``X-RateLimit-Limit``: the documented table below is only the
  starting assumption (the vendor's pages disagree for some endpoints), and a limit set in the
  connection extra caps what is learnt (a user may keep part of the Space for others).

Limiters are keyed by a digest of host + API key, never by the key itself.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import random
import threading
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal

from pyrate_limiter import InMemoryBucket, Limiter, Rate

from cometly_provider.exceptions import CometlyRateLimitError
from cometly_provider.export_kinds import EXPORT_KINDS

if TYPE_CHECKING:
    from cometly_provider.hooks.rate_limit_redis import RedisSharedBucket

log = logging.getLogger(__name__)

#: Documented limits per Space, per minute, by endpoint key. The key is what the hook passes to
#: :func:`get_rate_limiter`; until the server answers this is the assumption, and
#: ``X-RateLimit-Limit`` then corrects it. Export endpoints come from their kind's entry, so a new
#: kind brings its limits with it.
DEFAULT_LIMITS: Mapping[str, int] = {
    "track": 1000,
    "list": 7,
    **{kind.create_endpoint: kind.create_limit for kind in EXPORT_KINDS.values()},
    **{kind.status_endpoint: kind.status_limit for kind in EXPORT_KINDS.values()},
}
DEFAULT_WINDOW_SECONDS = 60.0
#: How long one request may wait for the rate limit (client-side holds and 429s together) before
#: it fails with :class:`CometlyRateLimitError`: 30 windows of the real API, so a daily job
#: sharing its Space with a busy fleet still gets through, and a stuck one still ends.
DEFAULT_RATE_LIMIT_TIMEOUT = 1800.0
BACKENDS = ("local", "redis")
#: How often a request held by the server-budget gate re-checks whether the gate has reopened.
_GATE_RECHECK_SECONDS = 0.1


@dataclass(frozen=True)
class RateLimitPolicy:
    """How one connection limits its requests.

    ``limits`` are explicit per-endpoint overrides (connection extra / hook argument) on top of
    :data:`DEFAULT_LIMITS`; ``enabled=False`` turns client limiting off; ``backend`` is where the
    sliding-window bucket lives (``"local"``: this process; ``"redis"``: shared through
    ``redis_conn_id``).
    """

    limits: Mapping[str, int] = field(default_factory=dict)
    window_seconds: float = DEFAULT_WINDOW_SECONDS
    enabled: bool = True
    backend: Literal["local", "redis"] = "local"
    redis_conn_id: str = "redis_default"

    def __post_init__(self) -> None:
        if self.window_seconds <= 0:
            raise ValueError(f"rate-limit window_seconds={self.window_seconds!r} must be > 0")
        for endpoint, limit in self.limits.items():
            if endpoint not in DEFAULT_LIMITS:
                raise ValueError(
                    f"rate limit for unknown endpoint {endpoint!r}; allowed: {', '.join(DEFAULT_LIMITS)}"
                )
            if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
                raise ValueError(f"rate limit {endpoint}={limit!r} must be a positive integer")
        if self.backend not in BACKENDS:
            raise ValueError(
                f"rate_limit_backend={self.backend!r} is invalid; allowed: {', '.join(BACKENDS)}"
            )
        if self.backend == "redis" and not (isinstance(self.redis_conn_id, str) and self.redis_conn_id):
            raise ValueError(f"redis_conn_id={self.redis_conn_id!r} must name an Airflow Redis connection")

    def limit_for(self, endpoint: str) -> int:
        return int(self.limits.get(endpoint, DEFAULT_LIMITS[endpoint]))

    def is_explicit(self, endpoint: str) -> bool:
        return endpoint in self.limits


def space_key(host: str, api_key: str) -> str:
    """A stable, non-reversible identifier of a Space (one API key = one Space)."""
    return hashlib.sha256(f"{host}\0{api_key}".encode()).hexdigest()[:16]


class _ServerBudget:
    """What the server last said about the Space's budget, and when its window should reset."""

    def __init__(self, limit: int, window_seconds: float) -> None:
        self._lock = threading.Lock()
        self.limit = limit
        self.window = window_seconds
        # Keep a few requests in hand for those already in flight in this process.
        self.reserve = min(8, limit // 20)
        self._remaining: int | None = None
        self._last_seen: int | None = None
        self._reset_at: float | None = None
        # Other processes spending the same Space: the budget falls `share` times faster than our
        # own answers alone explain, and their requests in flight need room too. Measured from
        # the first answer of the window (`_top`) and our answers since.
        self._top: int | None = None
        self._answers = 0
        # When the request that got the last 429 was sent: answers to requests sent before it
        # describe the budget as it was before the 429 and must not reopen the gate.
        self._closed_by: float | None = None

    def set_limit(self, limit: int) -> None:
        with self._lock:
            self.limit = limit
            self.reserve = min(8, limit // 20)

    def _retry_at(self, now: float, retry_after: float) -> float:
        """When the server's window resets, from a 429's ``Retry-After`` (lock held).

        Retry-After is whole seconds, rounded up: the window really resets within the second
        before now + retry_after. Taking it as is made every process that got a 429 wait ~0.5 s
        (up to 1 s) too long each window (measured: windows reopened 0.3-0.9 s late with four
        processes sharing a 6 s window). Our own estimate, anchored on an answer seen after the
        window opened, is never early; keep it when it lies in that second, it is the tighter.
        """
        latest = now + retry_after
        anchored = self._reset_at
        return anchored if anchored is not None and latest - 1.0 <= anchored <= latest else latest

    def retry_wait(self, retry_after: float) -> float:
        """Seconds the request that just got a 429 with this ``Retry-After`` should wait."""
        now = time.monotonic()
        with self._lock:
            return max(0.0, self._retry_at(now, retry_after) - now)

    def observe(
        self, remaining: int | None, retry_after: float | None = None, *, sent_at: float | None = None
    ) -> None:
        now = time.monotonic()
        with self._lock:
            if retry_after is not None:
                self._reset_at = self._retry_at(now, retry_after)
                self._remaining = 0
                self._last_seen = 0
                self._closed_by = now if sent_at is None else sent_at
                return
            if remaining is None:
                return
            if sent_at is not None and self._closed_by is not None and sent_at < self._closed_by:
                # Sent before the request that got the 429: a high figure here is the budget as
                # it was then (another in-flight request's 202), not a fresh window.
                if self._remaining is not None:
                    self._remaining = min(self._remaining, remaining)
                return
            # A clear rise means the server's window rolled over just now; smaller rises are
            # responses arriving out of order. Compared with the last answer seen, which delay()
            # does not clear when it reopens the gate. With several processes spending the
            # budget, one process's answers can be out of order by all their requests in flight
            # (a rise of 60 was measured with four processes at 1000/window): a false roll-over
            # would reopen the gate and push the reset a whole window late, hence a quarter.
            rolled_over = self._last_seen is not None and remaining > self._last_seen + max(
                2, self.limit // 4
            )
            self._last_seen = remaining
            # The server opens a window with the first request after the previous one ended, so a
            # reset is anchored on an answer seen now (late, hence safe) rather than extrapolated
            # from the last window (early whenever there was a pause: 429s, then a stalled window).
            if rolled_over or self._reset_at is None:
                self._reset_at = now + self.window
                self._top, self._answers = remaining, 0
            elif now >= self._reset_at:
                if remaining <= self.reserve:
                    # Most likely a late answer from the window that just ended: holding a whole
                    # window on it stalls the sender. If the new window really is spent, the next
                    # request's 429 and Retry-After say so exactly.
                    self._remaining = None
                    return
                self._reset_at = now + self.window
                self._top, self._answers = remaining, 0
            elif self._remaining is not None:
                # Within one server window the budget only shrinks: a higher figure is an answer
                # that was overtaken (e.g. one sent before a 429 that came back after it), and
                # must not reopen a gate the newer answer closed.
                remaining = min(remaining, self._remaining)
                self._answers += 1
            self._remaining = remaining

    def _threshold(self, paced_elsewhere: bool) -> int:
        """Budget left at which to hold: our reserve, scaled by how many spend it (lock held).

        ``paced_elsewhere``: a shared bucket paces every process of the fleet, so only a spent
        budget (an answer saying 0 left, or a 429) holds; keeping a reserve in hand for unknown
        others would leave part of every window unused.
        """
        if paced_elsewhere:
            return 0
        if self._top is None or self._remaining is None or self._answers < 16:
            return self.reserve
        share = (self._top - self._remaining) / self._answers
        return max(self.reserve, min(self.limit // 4, round(self.reserve * share)))

    def holding(self, paced_elsewhere: bool = False) -> bool:
        """Whether the last answer said the budget is (nearly) spent; no side effects."""
        with self._lock:
            return self._remaining is not None and self._remaining <= self._threshold(paced_elsewhere)

    def delay(self, paced_elsewhere: bool = False) -> float:
        """Seconds to hold the next request (0 when the server still has budget for us)."""
        now = time.monotonic()
        with self._lock:
            if (
                self._remaining is None
                or self._remaining > self._threshold(paced_elsewhere)
                or self._reset_at is None
            ):
                return 0.0
            wait = self._reset_at - now
            if wait <= 0:
                # Window over: let requests probe again; their responses refresh the estimate.
                self._remaining = None
                return 0.0
        return wait + self.jitter()

    def jitter(self) -> float:
        """A random delay added to each wait that ends at a window reset, so that the processes
        and threads held until then do not all fire in the same millisecond."""
        return random.uniform(0, self.window * 0.02)


class EndpointRateLimiter:
    """Rate limiter of one endpoint of one Space, safe to share across threads.

    ``limit`` is the starting assumption (the documented figure, or the connection's explicit
    override when ``explicit``); ``shared`` is the Redis bucket when that backend is selected.
    """

    def __init__(
        self,
        endpoint: str,
        limit: int,
        window_seconds: float,
        *,
        explicit: bool = False,
        shared: RedisSharedBucket | None = None,
    ) -> None:
        self.endpoint = endpoint
        self.configured_limit = limit
        self.explicit = explicit
        self.limit = limit
        self.window_seconds = window_seconds
        self._local = Limiter(InMemoryBucket([self._rate(limit)]))
        self._async_local: Limiter | None = None
        self._server = _ServerBudget(limit, window_seconds)
        self._shared = shared

    def _rate(self, limit: int) -> Rate:
        return Rate(limit, max(1, round(self.window_seconds * 1000)))

    # --- waiting --------------------------------------------------------------------------------

    def acquire(self, *, deadline: float | None = None, max_hold: float | None = None) -> float:
        """Block until a request may be sent; returns the time (``time.monotonic()``) it may go.

        ``max_hold`` caps the time held by the server-budget gate (a 429's ``Retry-After``
        included): after it the request goes anyway, as a probe. ``deadline`` (monotonic) is when
        waiting ends with :class:`CometlyRateLimitError`.
        """
        for pause in self._gate_pauses(deadline, max_hold):
            time.sleep(pause)
        timeout = _timeout(deadline)
        if self._shared is not None and self._shared.usable():
            shared = self._shared.try_acquire(timeout)
            if shared is not None:  # None: Redis is unavailable, the local bucket stands in
                return self._granted(shared)
        return self._granted(bool(self._local.try_acquire(self.endpoint, blocking=True, timeout=timeout)))

    async def acquire_async(self, *, deadline: float | None = None, max_hold: float | None = None) -> float:
        """:meth:`acquire` without blocking the event loop."""
        for pause in self._gate_pauses(deadline, max_hold):
            await asyncio.sleep(pause)
        timeout = _timeout(deadline)
        if self._shared is not None and self._shared.usable():
            shared = await self._shared.try_acquire_async(timeout)
            if shared is not None:
                return self._granted(shared)
        if self._async_local is None:
            # pyrate-limiter's async path must not share a bucket with blocking callers.
            self._async_local = Limiter(InMemoryBucket([self._rate(self.limit)]))
        acquired = await self._async_local.try_acquire_async(self.endpoint, blocking=True, timeout=timeout)
        return self._granted(acquired)

    def _gate_pauses(self, deadline: float | None, max_hold: float | None) -> Iterator[float]:
        """The sleeps (each short) the server-budget gate asks for before a request may go."""
        started = time.monotonic()
        paced = self._shared is not None and self._shared.usable()
        while (delay := self._server.delay(paced)) > 0:
            end = time.monotonic() + delay
            if max_hold is not None:
                end = min(end, started + max_hold)
            # In slices: an answer showing a fresh server window (another thread's) ends the wait.
            while self._server.holding(paced) and (left := end - time.monotonic()) > 0:
                if deadline is not None and time.monotonic() >= deadline:
                    raise self._out_of_time()
                yield min(left, _GATE_RECHECK_SECONDS)
            if max_hold is not None and time.monotonic() - started >= max_hold:
                return  # waited as long as allowed: go, the answer says what the server thinks

    def _granted(self, acquired: bool) -> float:
        if not acquired:
            raise self._out_of_time()
        return time.monotonic()

    def _out_of_time(self) -> CometlyRateLimitError:
        return CometlyRateLimitError(
            f"Cometly rate limit ({self.endpoint}: {self.limit} per {self.window_seconds:g} s): gave up "
            "waiting for the limit at the request's deadline (connection extra rate_limit_timeout, or "
            "the caller's deadline)"
        )

    def retry_wait(self, retry_after: float) -> float:
        """How long the request that got a 429 with this ``Retry-After`` waits (jitter included)."""
        return self._server.retry_wait(retry_after) + self._server.jitter()

    # --- learning from the answers ----------------------------------------------------------------

    def observe(
        self,
        remaining: int | None,
        retry_after: float | None = None,
        *,
        limit: int | None = None,
        sent_at: float | None = None,
    ) -> None:
        """Feed back ``X-RateLimit-Remaining`` / ``-Limit`` (and ``Retry-After`` of a 429).

        ``sent_at`` is what :meth:`acquire` returned for the request this answers.
        """
        if limit is not None and limit > 0:
            self._learn_limit(limit)
        if self._shared is not None and sent_at is not None:
            self._shared.note_flight(time.monotonic() - sent_at)
        self._server.observe(remaining, retry_after, sent_at=sent_at)

    def _learn_limit(self, server_limit: int) -> None:
        limit = min(server_limit, self.configured_limit) if self.explicit else server_limit
        if limit == self.limit:
            return
        log.info(
            "Cometly %s: the API reports a limit of %d per window (assumed %d)%s",
            self.endpoint,
            server_limit,
            self.limit,
            f"; keeping the connection's lower limit {limit}" if limit != server_limit else "",
        )
        self.limit = limit
        rates = [self._rate(limit)]
        for limiter in (self._local, self._async_local):
            if limiter is not None:
                for bucket in limiter.buckets():
                    bucket.rates = rates
        if self._shared is not None:
            self._shared.set_limit(limit)
        self._server.set_limit(limit)


def _timeout(deadline: float | None) -> float:
    """pyrate-limiter's ``timeout`` argument for a monotonic deadline (-1: none)."""
    return -1 if deadline is None else max(0.0, deadline - time.monotonic())


_registry: dict[tuple[str, str, int, float, str, str], EndpointRateLimiter] = {}
_registry_lock = threading.Lock()


def get_rate_limiter(space: str, endpoint: str, policy: RateLimitPolicy) -> EndpointRateLimiter | None:
    """The process-wide limiter for ``endpoint`` of ``space`` (``None`` when limiting is off)."""
    if not policy.enabled:
        return None
    limit = policy.limit_for(endpoint)
    redis_conn_id = policy.redis_conn_id if policy.backend == "redis" else ""
    key = (space, endpoint, limit, policy.window_seconds, policy.backend, redis_conn_id)
    with _registry_lock:
        limiter = _registry.get(key)
        if limiter is None:
            shared = None
            if policy.backend == "redis":
                from cometly_provider.hooks.rate_limit_redis import RedisSharedBucket

                shared = RedisSharedBucket(
                    redis_conn_id,
                    bucket_key=f"cometly-provider:rate-limit:{space}:{endpoint}:{policy.window_seconds:g}",
                    rate=Rate(limit, max(1, round(policy.window_seconds * 1000))),
                )
            limiter = _registry[key] = EndpointRateLimiter(
                endpoint, limit, policy.window_seconds, explicit=policy.is_explicit(endpoint), shared=shared
            )
        return limiter


def reset_rate_limiters() -> None:
    """Forget all limiter state (for tests that restart a simulator between cases)."""
    with _registry_lock:
        _registry.clear()
