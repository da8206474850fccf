"""Named retry policies for the request tier, built on tenacity.

Two tiers, as go-containerregistry has them: this module's quick retries absorb blips (a reset
connection, one 503, a short 429) inside one copy; the task tier (``workers/``) retries a whole
destination later, for outages. Both ask :func:`registry.errors.is_transient` what is worth
retrying.

Worst case of :data:`REQUEST_RETRY`: 5 attempts, waits of at most 0.5+1+2+4 s of backoff (plus up
to 25% jitter), or a server's ``Retry-After`` when it is longer, up to ``max_hold`` (30 s); never
more than ``max_elapsed`` (60 s) spent waiting in all. A ``Retry-After`` longer than ``max_hold`` is
not slept through here: the error goes up so the task tier can wait without holding a connection.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception,
    stop_after_attempt,
    stop_after_delay,
)

from .errors import is_transient, retry_after_of

T = TypeVar("T")
log = logging.getLogger("fanout.retry")


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """Bounded exponential backoff with jitter that honours ``Retry-After``."""

    attempts: int = 5
    initial: float = 0.5
    maximum: float = 10.0
    multiplier: float = 2.0
    jitter: float = 0.25
    max_elapsed: float = 60.0
    # The one Retry-After rule: a hold (Retry-After, or an exhausted rate limit) up to this
    # long is waited out in place; a longer one fails the attempt at once, carrying the delay,
    # and the task tier waits it out without holding a connection or a worker slot.
    max_hold: float = 30.0

    def backoff(self, attempt: int) -> float:
        """Delay before retry number ``attempt`` (1-based), before jitter."""
        return float(min(self.maximum, self.initial * self.multiplier ** (attempt - 1)))

    def delay(self, attempt: int, retry_after: float | None) -> float:
        base = self.backoff(attempt)
        # Jitter spreads workers that failed together so they do not return together.
        base += base * self.jitter * random.random()  # noqa: S311 - not cryptographic
        if retry_after is not None:
            base = max(base, retry_after)
        return base


REQUEST_RETRY = RetryPolicy()
NO_RETRY = RetryPolicy(attempts=1)


def _wait(policy: RetryPolicy) -> Callable[[RetryCallState], float]:
    def wait(state: RetryCallState) -> float:
        exc = state.outcome.exception() if state.outcome else None
        return policy.delay(state.attempt_number, retry_after_of(exc) if exc else None)

    return wait


def _fits_budget(policy: RetryPolicy) -> Callable[[BaseException], bool]:
    def retryable(exc: BaseException) -> bool:
        if not is_transient(exc):
            return False
        after = retry_after_of(exc)
        # A long Retry-After is the task tier's to honour; sleeping here would pin a slot.
        return after is None or after <= policy.max_hold

    return retryable


def _log_retry(what: str) -> Callable[[RetryCallState], None]:
    def before_sleep(state: RetryCallState) -> None:
        exc = state.outcome.exception() if state.outcome else None
        sleep = state.next_action.sleep if state.next_action else 0.0
        log.info("retrying %s in %.1fs after attempt %d: %s",
                 what, sleep, state.attempt_number, exc)

    return before_sleep


async def retry_async(
    policy: RetryPolicy,
    operation: Callable[[], Awaitable[T]],
    *,
    what: str,
    sleep: Callable[[float], Awaitable[None]] | None = None,
) -> T:
    """Run ``operation`` under ``policy``; the last error is re-raised as itself."""
    kwargs = {"sleep": sleep} if sleep is not None else {}
    retrying = AsyncRetrying(
        stop=stop_after_attempt(policy.attempts) | stop_after_delay(policy.max_elapsed),
        wait=_wait(policy),
        retry=retry_if_exception(_fits_budget(policy)),
        before_sleep=_log_retry(what),
        reraise=True,
        **kwargs,  # type: ignore[arg-type]
    )
    async for attempt in retrying:
        with attempt:
            return await operation()
    raise AssertionError("unreachable: tenacity re-raises the last error")  # pragma: no cover
