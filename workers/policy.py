"""The task tier's retry policy: when a destination tries again, and when it gives up.

The request tier (``registry/retry.py``) absorbs blips within one attempt; this tier retries a
whole destination later, for outages. Countdowns are exponential with full jitter —
``uniform(0, min(backoff_max, backoff * 2**(n-1)))`` before retry ``n`` — so workers that failed
together do not come back together; a server's ``Retry-After`` is a floor. No countdown exceeds
``backoff_max``: a longer one could outlast the broker's visibility timeout and be delivered twice
(see ``workers/settings.py``).

A destination gives up when its attempts exceed ``max_retries`` + 1, or when the next attempt would
start more than ``max_age`` seconds after its release was created. Worst case with the defaults:
9 attempts within an hour, each at most the task time limit.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass

from .settings import WorkerSettings


@dataclass(frozen=True, slots=True)
class TaskRetryPolicy:
    """Bounded exponential backoff with full jitter, honouring ``Retry-After``."""

    max_retries: int = 8
    max_age: float = 3600.0
    backoff: float = 10.0
    backoff_max: float = 600.0
    busy_countdown: float = 10.0

    @classmethod
    def from_settings(cls, settings: WorkerSettings) -> TaskRetryPolicy:
        return cls(max_retries=settings.max_retries, max_age=settings.max_age,
                   backoff=settings.retry_backoff, backoff_max=settings.retry_backoff_max,
                   busy_countdown=settings.lock_retry)

    def countdown(
        self, attempts: int, retry_after: float | None = None,
        *, rand: Callable[[], float] = random.random,
    ) -> float:
        """Seconds to wait after ``attempts`` failed attempts (1-based)."""
        ceiling = min(self.backoff_max, self.backoff * 2.0 ** max(0, attempts - 1))
        delay = ceiling * rand()
        if retry_after is not None:
            delay = max(delay, retry_after)
        return min(delay, self.backoff_max)

    def busy(self, *, rand: Callable[[], float] = random.random) -> float:
        """Countdown while another copy of the same digest holds the destination's lock."""
        # Half fixed, half jitter: come back soon, but not all in the same instant.
        return self.busy_countdown * (0.5 + 0.5 * rand())

    def gives_up(self, attempts: int, age_at_next_attempt: float) -> str | None:
        """Why the destination stops retrying now, or None if it may try again."""
        if attempts > self.max_retries:
            return f"gave up after {attempts} attempts"
        if age_at_next_attempt > self.max_age:
            return f"gave up: the release would be over {self.max_age:g} s old at the next attempt"
        return None
