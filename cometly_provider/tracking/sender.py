"""The concurrent sender: events through ``max_workers`` threads sharing one pooled hook.

The first event goes alone (a rejected API key costs one request and stops at once); the rest are
submitted with a bounded number in flight, paced by the hook's per-Space rate limiter. ``stop()``
(the task was killed, or the batch stopped) keeps queued events from being sent; requests already
running finish.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from cometly_provider.exceptions import CometlyAuthError, CometlyError, CometlyValidationError

if TYPE_CHECKING:
    from cometly_provider.hooks.cometly import CometlyHook
    from cometly_provider.tracking.failures import FailureSink, Item


@dataclass(frozen=True)
class SenderSettings:
    max_workers: int = 8
    #: Events queued for the threads, per worker: bounds memory whatever the batch size.
    queue_per_worker: int = 2
    #: Transport / server failures in a row (after the hook's retries) that stop a batch.
    max_consecutive_failures: int = 50
    #: Seconds between progress log lines.
    progress_interval_s: float = 10.0


@dataclass
class Stats:
    total: int = 0
    to_send: int = 0
    sent: int = 0
    duplicates: int = 0
    skipped_invalid: int = 0
    failed: int = 0
    validation_failures: int = 0  # of ``failed``: rejected by the API with 4xx
    consecutive_failures: int = 0
    started: float = field(default_factory=time.monotonic)

    @property
    def done(self) -> int:
        return self.sent + self.duplicates + self.failed

    def rate_per_min(self) -> float:
        elapsed = time.monotonic() - self.started
        return self.done / elapsed * 60 if elapsed > 0 else 0.0


@dataclass
class _Outcome:
    item: Item
    duplicate: bool = False
    error: CometlyError | None = None


class Cancelled(CometlyError):
    """The batch stopped (failure elsewhere, or the task was killed) before this event was sent."""

    def __init__(self) -> None:
        super().__init__("Cometly tracking stopped before this event was sent")


class BatchStopped(CometlyError):
    """Too many transport / server failures in a row: the rest of the batch was not attempted."""


class ConcurrentSender:
    def __init__(self, hook: CometlyHook, settings: SenderSettings, log: Any) -> None:
        self.hook = hook
        self.settings = settings
        self.log = log
        self._stop = threading.Event()

    def stop(self) -> None:
        self._stop.set()

    def run(self, items: Iterator[Item], stats: Stats, sink: FailureSink) -> None:
        progress = _Progress(self, stats)
        first = next(items, None)
        if first is None:
            return
        progress.start()
        self._record(self._send_one(first), stats, sink)
        limit = self.settings.max_workers * self.settings.queue_per_worker
        inflight: set[Future[_Outcome]] = set()
        executor = ThreadPoolExecutor(
            max_workers=self.settings.max_workers, thread_name_prefix="cometly-track"
        )
        try:
            for item in items:
                while len(inflight) >= limit:
                    inflight = self._collect(inflight, stats, sink, progress, block=True)
                inflight.add(executor.submit(self._send_one, item))
                if len(inflight) >= limit // 2:
                    inflight = self._collect(inflight, stats, sink, progress, block=False)
            while inflight:
                inflight = self._collect(inflight, stats, sink, progress, block=True)
        except BaseException as err:
            self._stop.set()  # queued events are not sent; running requests finish
            for future in inflight:
                future.cancel()
            if isinstance(err, CometlyAuthError):
                self.log.error(
                    "Cometly rejected the API key (HTTP %s) after %d events were sent; stopping the batch",
                    err.status_code,
                    stats.sent + stats.duplicates,
                )
            raise
        finally:
            executor.shutdown(wait=True, cancel_futures=True)
        progress.log(final=True)

    def _collect(
        self,
        inflight: set[Future[_Outcome]],
        stats: Stats,
        sink: FailureSink,
        progress: _Progress,
        *,
        block: bool,
    ) -> set[Future[_Outcome]]:
        if block:
            done, pending = wait(inflight, timeout=progress.seconds_to_next(), return_when=FIRST_COMPLETED)
        else:
            done = {f for f in inflight if f.done()}
            pending = inflight - done
        for future in done:
            self._record(future.result(), stats, sink)
        progress.maybe_log()
        return set(pending)

    def _send_one(self, item: Item) -> _Outcome:
        if self._stop.is_set():
            raise Cancelled()
        try:
            response = self.hook.track_event(item.payload, validate=False)
        except CometlyAuthError:
            self._stop.set()
            raise
        except CometlyError as err:
            return _Outcome(item, error=err)
        return _Outcome(item, duplicate=response.get("duplicate") is True)

    def _record(self, outcome: _Outcome, stats: Stats, sink: FailureSink) -> None:
        error = outcome.error
        if error is None:
            stats.consecutive_failures = 0
            if outcome.duplicate:
                stats.duplicates += 1
            else:
                stats.sent += 1
            return
        stats.failed += 1
        sink.add(outcome.item, error)
        if isinstance(error, CometlyValidationError):
            stats.validation_failures += 1
            return
        stats.consecutive_failures += 1
        if stats.consecutive_failures >= self.settings.max_consecutive_failures:
            not_tried = stats.to_send - stats.done
            raise BatchStopped(
                f"Stopped the batch after {stats.consecutive_failures} failures in a row (last: {error}); "
                f"{stats.sent} events sent, {stats.duplicates} duplicates, {stats.failed} failed, about "
                f"{not_tried} not attempted. Retrying the task is safe: events already stored keep their "
                "idempotency keys and are not counted twice.",
                status_code=error.status_code,
            )


class _Progress:
    """Progress lines at least every ``progress_interval_s`` during a batch."""

    def __init__(self, sender: ConcurrentSender, stats: Stats) -> None:
        self.sender = sender
        self.stats = stats
        self.interval = sender.settings.progress_interval_s
        self.next_at = time.monotonic() + self.interval

    def start(self) -> None:
        stats = self.stats
        remaining = stats.to_send - stats.done
        if remaining <= 0:
            return
        policy = self.sender.hook.rate_limit_policy
        bound = ""
        if policy.enabled:
            limit = policy.limit_for("track")
            bound = (
                f"; at {limit} per {policy.window_seconds:g} s this takes at least "
                f"{duration_text((math.ceil(remaining / limit) - 1) * policy.window_seconds)}"
            )
        self.sender.log.info(
            "Sending %d events with %d threads%s", remaining, self.sender.settings.max_workers, bound
        )
        self.next_at = time.monotonic() + self.interval

    def seconds_to_next(self) -> float:
        return max(0.05, self.next_at - time.monotonic())

    def maybe_log(self) -> None:
        if time.monotonic() >= self.next_at:
            self.log()

    def log(self, *, final: bool = False) -> None:
        stats = self.stats
        rate = stats.rate_per_min()
        remaining = stats.to_send - stats.done
        eta = duration_text(remaining / rate * 60) if rate > 0 else "unknown"
        self.sender.log.info(
            "%s %d/%d events (%.0f%%): %d sent, %d duplicates, %d failed; %.0f events/min%s",
            "Done:" if final else "Progress:",
            stats.done,
            stats.to_send,
            100.0 * stats.done / stats.to_send if stats.to_send else 100.0,
            stats.sent,
            stats.duplicates,
            stats.failed,
            rate,
            "" if final else f", ETA {eta}",
        )
        self.next_at = time.monotonic() + self.interval


def duration_text(value: float) -> str:
    seconds = round(value)
    if seconds < 60:
        return f"{seconds}s"
    minutes, seconds = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes}m{seconds:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m"
