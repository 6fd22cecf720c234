"""Client-side rate limiting per Cometly Space and endpoint.

Two layers, both shared by every hook in the process that talks to the same Space:

* a pyrate-limiter sliding-window log at the documented per-minute limit, so one process never
  sends more than the API allows in any window (a sliding window also satisfies the server's
  fixed window, which is what keeps a single process at zero 429s);
* a gate fed by the ``X-RateLimit-Remaining`` header: when other processes (other Celery workers,
  other DAGs) share the Space, the server's remaining budget runs out before ours does, and the
  gate then holds requests until the server's window is estimated to have reset.

Limiters are keyed by a digest of host + API key, never by the key itself.
"""

from __future__ import annotations

import asyncio
import hashlib
import random
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field

from pyrate_limiter import InMemoryBucket, Limiter, Rate

# Documented limits per Space, per minute.
DEFAULT_LIMITS: Mapping[str, int] = {
    "track": 1000,
    "export_create": 5,
    "export_status": 30,
    "list": 7,
    # Not stated consistently by the vendor: the event-export figures until learnt from the server.
    "contacts_export_create": 5,
    "contacts_export_status": 30,
}
DEFAULT_WINDOW_SECONDS = 60.0
#: How often a request held by the server-budget gate re-checks whether the gate has reopened.
_GATE_RECHECK_SECONDS = 0.1


@dataclass(frozen=True)
class RateLimitPolicy:
    """Limits per endpoint within ``window_seconds``; ``enabled=False`` turns client limiting off."""

    limits: Mapping[str, int] = field(default_factory=lambda: dict(DEFAULT_LIMITS))
    window_seconds: float = DEFAULT_WINDOW_SECONDS
    enabled: bool = True

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

    def limit_for(self, endpoint: str) -> int:
        return int(self.limits.get(endpoint, DEFAULT_LIMITS[endpoint]))


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

    def observe(self, remaining: int | None, retry_after: float | None = None) -> None:
        now = time.monotonic()
        with self._lock:
            if retry_after is not None:
                # Retry-After is whole seconds, rounded up: the window really resets within the
                # second before now + retry_after. Taking it as is made every process that got a
                # 429 wait ~0.5 s (up to 1 s) too long each window (measured: windows reopened
                # 0.3-0.9 s late with four processes sharing a 6 s window). Our own estimate,
                # anchored on an answer seen after the window opened, is never early; keep it
                # when it lies in that second, it is the tighter of the two.
                latest = now + retry_after
                anchored = self._reset_at
                if anchored is None or not latest - 1.0 <= anchored <= latest:
                    self._reset_at = latest
                self._remaining = 0
                self._last_seen = 0
                return
            if remaining is None:
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

    def _threshold(self) -> int:
        """Budget left at which to hold: our reserve, scaled by how many spend it (lock held)."""
        if self._top is None or self._remaining is None or self._answers < 16:
            return self.reserve
        share = (self._top - self._remaining) / self._answers
        return max(self.reserve, min(self.limit // 4, round(self.reserve * share)))

    def holding(self) -> bool:
        """Whether the last answer said the budget is (nearly) spent; no side effects."""
        with self._lock:
            return self._remaining is not None and self._remaining <= self._threshold()

    def delay(self) -> float:
        """Seconds to hold the next request (0 when the server still has budget for us)."""
        now = time.monotonic()
        with self._lock:
            if self._remaining is None or self._remaining > self._threshold() or self._reset_at is None:
                return 0.0
            wait = self._reset_at - now
            if wait <= 0:
                # Window over: let requests probe again; their responses refresh the estimate.
                self._remaining = None
                return 0.0
        # Jitter so processes sharing the Space do not all fire at the reset instant.
        return wait + random.uniform(0, self.window * 0.02)


class EndpointRateLimiter:
    """Rate limiter of one endpoint of one Space, safe to share across threads."""

    def __init__(self, endpoint: str, limit: int, window_seconds: float) -> None:
        self.endpoint = endpoint
        self.limit = limit
        self.window_seconds = window_seconds
        self._local = Limiter(InMemoryBucket([Rate(limit, max(1, round(window_seconds * 1000)))]))
        self._async_local: Limiter | None = None
        self._server = _ServerBudget(limit, window_seconds)

    def acquire(self) -> None:
        """Block the calling thread until a request may be sent."""
        while (delay := self._server.delay()) > 0:
            end = time.monotonic() + delay
            # In slices: an answer showing a fresh server window (another thread's) ends the wait.
            while self._server.holding() and (left := end - time.monotonic()) > 0:
                time.sleep(min(left, _GATE_RECHECK_SECONDS))
        self._local.try_acquire(self.endpoint, blocking=True)

    async def acquire_async(self) -> None:
        """Wait, without blocking the event loop, until a request may be sent."""
        while (delay := self._server.delay()) > 0:
            end = time.monotonic() + delay
            while self._server.holding() and (left := end - time.monotonic()) > 0:
                await asyncio.sleep(min(left, _GATE_RECHECK_SECONDS))
        if self._async_local is None:
            # pyrate-limiter's async path must not share a bucket with blocking callers.
            self._async_local = Limiter(
                InMemoryBucket([Rate(self.limit, max(1, round(self.window_seconds * 1000)))])
            )
        await self._async_local.try_acquire_async(self.endpoint, blocking=True)

    def observe(self, remaining: int | None, retry_after: float | None = None) -> None:
        """Feed back the server's ``X-RateLimit-Remaining`` (and ``Retry-After`` of a 429)."""
        self._server.observe(remaining, retry_after)


_registry: dict[tuple[str, str, int, float], EndpointRateLimiter] = {}
_registry_lock = threading.Lock()


def get_rate_limiter(space: str, endpoint: str, policy: RateLimitPolicy) -> EndpointRateLimiter | None:
    """The process-wide limiter for ``endpoint`` of ``space`` (``None`` when limiting is off)."""
    if not policy.enabled:
        return None
    limit = policy.limit_for(endpoint)
    key = (space, endpoint, limit, policy.window_seconds)
    with _registry_lock:
        limiter = _registry.get(key)
        if limiter is None:
            limiter = _registry[key] = EndpointRateLimiter(endpoint, limit, policy.window_seconds)
        return limiter


def reset_rate_limiters() -> None:
    """Forget all limiter state (for tests that restart a simulator between cases)."""
    with _registry_lock:
        _registry.clear()
