"""The X-RateLimit-Remaining gate must not stall a sender for a whole window on stale information."""

from __future__ import annotations

import threading
import time

from cometly_provider.hooks.rate_limit import EndpointRateLimiter, _ServerBudget


def test_late_low_answer_after_the_estimated_reset_does_not_hold_a_window() -> None:
    budget = _ServerBudget(limit=100, window_seconds=0.3)
    budget.observe(50)
    budget.observe(2)
    assert budget.delay() > 0  # spent: hold until the estimated reset
    time.sleep(0.35)
    # An answer from the window that just ended arrives after the estimated reset.
    budget.observe(1)
    assert budget.delay() == 0
    assert not budget.holding()


def test_held_request_resumes_when_another_answer_shows_a_fresh_window() -> None:
    limiter = EndpointRateLimiter("track", limit=100, window_seconds=30.0)
    limiter.observe(50)
    limiter.observe(1)  # the gate now holds requests for about 30 s
    done = threading.Event()

    def acquire() -> None:
        limiter.acquire()
        done.set()

    thread = threading.Thread(target=acquire, daemon=True)
    thread.start()
    time.sleep(0.2)
    assert not done.is_set()
    limiter.observe(99)  # another thread's answer: the server's window rolled over
    assert done.wait(10), "the held request kept sleeping although the server reported a fresh window"
    thread.join(5)


def test_a_fresh_window_after_a_pause_is_anchored_on_its_first_answer() -> None:
    # The server opens a window with the first request after the previous one ended: after a
    # pause the new window's end is one window after its first answer, not on the old grid
    # (extrapolating the grid ended the estimate early: the gate reopened into a spent window).
    budget = _ServerBudget(limit=100, window_seconds=1.0)
    budget.observe(50)
    budget.observe(1)
    assert budget.delay() > 0
    time.sleep(1.4)  # a pause past the estimated reset
    assert budget.delay() == 0  # reopened: requests probe the server again
    budget.observe(99)  # the first answer of the window that probe opened
    budget.observe(1)
    assert budget.delay() >= 0.9


def test_retry_after_keeps_the_tighter_anchored_estimate() -> None:
    # Retry-After is whole seconds rounded up: the window resets within the second before
    # now + Retry-After. The anchored estimate (first answer of the window + window) lies in that
    # second and is never early, so the gate keeps it.
    budget = _ServerBudget(limit=1000, window_seconds=10.0)
    budget.observe(999)
    time.sleep(0.3)
    budget.observe(0, retry_after=10.0)  # the true reset is 9.7 s away; Retry-After says 10
    delay = budget.delay()
    assert 9.0 < delay < 9.95  # 9.7 s plus at most 0.2 s of jitter, not 10 s and more


def test_retry_after_wins_over_an_anchor_outside_its_second() -> None:
    budget = _ServerBudget(limit=1000, window_seconds=10.0)
    budget.observe(999)  # anchored ~10 s ahead
    budget.observe(0, retry_after=3.0)  # e.g. an injected or proxy 429: trust the server
    assert 2.8 < budget.delay() < 3.3


def test_an_overtaken_answer_does_not_reopen_the_gate() -> None:
    budget = _ServerBudget(limit=1000, window_seconds=10.0)
    budget.observe(999)
    budget.observe(0, retry_after=9.0)
    # A request sent before the 429 answers after it, with the budget it saw then.
    budget.observe(60)
    assert budget.holding()
    assert budget.delay() > 8.0


def test_answers_out_of_order_across_processes_are_not_a_roll_over() -> None:
    # With four processes spending the budget, one process's answers came back out of order by 60
    # (measured): that is not the server's window rolling over.
    budget = _ServerBudget(limit=1000, window_seconds=10.0)
    budget.observe(999)
    time.sleep(0.5)
    budget.observe(5)
    budget.observe(65)
    assert budget.holding()
    delay = budget.delay()
    assert 9.0 < delay < 9.75  # the first answer's window (9.5 s + jitter), not 10 s from now


def _spend(budget: _ServerBudget, *, top: int, down_to: int, per_answer: int) -> None:
    """Answers of one process while the Space's budget falls by ``per_answer`` per answer."""
    remaining = top
    while remaining > down_to:
        budget.observe(remaining)
        remaining -= per_answer
    budget.observe(down_to)


def test_alone_the_gate_keeps_only_the_reserve_in_hand() -> None:
    budget = _ServerBudget(limit=1000, window_seconds=10.0)
    _spend(budget, top=999, down_to=31, per_answer=1)
    assert not budget.holding()
    budget.observe(8)
    assert budget.holding()


def test_sharing_the_space_with_three_others_the_gate_closes_earlier() -> None:
    # Four processes at the same pace: the budget falls four times faster than our own answers, and
    # their requests in flight need room too (without this, each window ended in ~20 429s).
    budget = _ServerBudget(limit=1000, window_seconds=10.0)
    _spend(budget, top=999, down_to=40, per_answer=4)
    assert not budget.holding()
    budget.observe(31)
    assert budget.holding()
    assert budget.delay() > 9.0
