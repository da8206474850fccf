"""What one delivery of the copy task decides, without Celery: the task only carries it out.

::

    arguments bad ────────────────────────────────────────────▶ Failed   (ledger: failed)
    lock held by another copy ──────────────────────────────────▶ RetryLater (soon; ledger as is,
                                                                   or retrying if not running)
    lock taken → running → engine ─┬─ ok ───────────────────────▶ Succeeded (ledger: succeeded)
                                   ├─ transient, within bounds ─▶ RetryLater (ledger: retrying)
                                   └─ permanent, or out of bounds ▶ Failed (ledger: failed)

The lock is released on every path out of the copy. Every ledger write is one atomic
transition, so a worker killed anywhere leaves a consistent record.
"""

from __future__ import annotations

import logging
import random
import re
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import redis

from registry.errors import RegistryError, Timeout, is_transient, retry_after_of

from .engine import Engine, LeaseLost
from .heartbeat import Heartbeat
from .job import CopyJob, JobError, parse_job
from .ledger import Ledger
from .ledger_reader import Standing
from .locks import DestinationLock
from .policy import TaskRetryPolicy
from .tag_order import TagOrdering

log = logging.getLogger("fanout.worker")
_ERROR_MAX = 1000
# user:password@ in any URL an unexpected error message may quote.
_USERINFO = re.compile(r"://[^/@\s]+@")


@dataclass(frozen=True, slots=True)
class Succeeded:
    stats: dict[str, int]
    seconds: float
    # Tags left to a newer release that held them at the destination: tag -> its id.
    superseded: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Failed:
    reason: str
    error_type: str


@dataclass(frozen=True, slots=True)
class RetryLater:
    countdown: float
    reason: str


@dataclass(frozen=True, slots=True)
class Superseded:
    """Nothing to do: a stale or late message, or a copy that lost its lease to a newer one."""

    reason: str


Outcome = Succeeded | Failed | RetryLater | Superseded


class CopyRunner:
    """Runs one delivery of a copy task against injected parts (ledger, lock store, engine)."""

    def __init__(
        self,
        *,
        ledger: Ledger,
        locks: redis.Redis[Any],
        engine: Engine,
        policy: TaskRetryPolicy,
        lock_ttl: float,
        heartbeat_interval: float | None = None,
        heartbeat_locks: redis.Redis[Any] | None = None,
        timeout: float | None = None,
        transient: tuple[type[BaseException], ...] = (),
        finished: Callable[[str, str], None] | None = None,
        tag_order: TagOrdering | None = None,
        clock: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
        rand: Callable[[], float] = random.random,
    ) -> None:
        self.ledger = ledger
        self.locks = locks
        self.engine = engine
        self.policy = policy
        self.lock_ttl = lock_ttl
        # The lock is a lease renewed this often while the copy runs (default: a quarter).
        self.heartbeat_interval = heartbeat_interval or lock_ttl / 4
        # Renewals go through a client that fails fast: a renewal stuck in a retry loop while
        # the lease runs out would defeat the point of watching the lease.
        self.heartbeat_locks = heartbeat_locks if heartbeat_locks is not None else locks
        self.timeout = timeout
        # Exceptions from outside the engine that mean "try again" (Celery's soft time limit).
        self.transient = transient
        # Told (release, destination) after a destination ends for good: the release may be
        # final now (the notifications, workers/notifications.py). Never raises.
        self.finished = finished
        # Orders the tag writes of every release (workers/tag_order.py); None: unordered.
        self.tag_order = tag_order
        self._clock = clock
        self._monotonic = monotonic
        self._rand = rand

    def run(
        self, args: tuple[Any, ...] | list[Any], kwargs: Mapping[str, Any], *,
        worker: str | None = None, owner: str = "",
    ) -> Outcome:
        """Decode, lock, copy, record; say what the task must do next."""
        try:
            job = parse_job(args, kwargs)
        except JobError as exc:
            log.error("%s", exc.reason)
            if exc.release_id and exc.destination:
                self.ledger.mark_failed(exc.release_id, exc.destination, error=exc.reason,
                                        error_type="InvalidTask")
                self._settle(exc.release_id, exc.destination)
            return Failed(exc.reason, "InvalidTask")
        # One read tells both whether the record exists and whether this message is stale.
        standing = self.ledger.standing(job.release_id, job.destination)
        if standing is None:
            self.ledger.ensure_destination(job.release_id, job.source, job.destination,
                                           job.tags, order=job.order)
        else:
            stale = self._stale(job, standing)
            if stale is not None:
                return stale
        lock = DestinationLock(self.locks, job.destination, job.digest, self.lock_ttl,
                               owner=owner)
        if not lock.acquire():
            return self._busy(job)
        try:
            # The release's place in the order, for its tag writes: as the ledger has it, else
            # as the message carried it (ensure_destination recorded that).
            order = standing.order if standing is not None and standing.order else None
            expect = (standing.state, standing.attempts) if standing is not None else None
            return self._copy(job, worker, lock, kwargs, order, expect)
        finally:
            try:
                if not lock.held:
                    pass  # given back with the ledger's last transition
                elif not lock.release():
                    log.warning("lock %s had expired before the copy ended", lock.key)
            except redis.RedisError as exc:  # it expires by itself; say so and move on
                log.warning("could not release lock %s: %s", lock.key, exc)

    def killed(
        self, args: tuple[Any, ...] | list[Any], kwargs: Mapping[str, Any], *, owner: str,
        reason: str,
    ) -> Outcome:
        """A copy killed from outside (Celery's hard time limit): free the lock its dead
        process held, then retry within bounds or fail, like any transient failure."""
        try:
            job = parse_job(args, kwargs)
        except JobError as exc:
            return Failed(exc.reason, "InvalidTask")
        DestinationLock(self.locks, job.destination, job.digest, self.lock_ttl).release_for(owner)
        return self._failed_attempt(job, Timeout(reason))

    def _settle(self, release_id: str, destination: str) -> None:
        if self.finished is not None:
            self.finished(release_id, destination)

    def _busy(self, job: CopyJob) -> Outcome:
        record = self.ledger.standing(job.release_id, job.destination)
        now = self._clock()
        created = record.round_started if record else now
        # A lock is held at most lock_ttl: waiting longer than that past max_age means
        # something else is wrong, and the destination fails rather than waits for ever.
        if now - created > self.policy.max_age + self.lock_ttl:
            reason = (f"another copy of {job.digest[:19]} to {job.destination} held the lock "
                      f"past the retry window")
            self.ledger.mark_failed(job.release_id, job.destination, error=reason,
                                    error_type="LockHeld")
            self._settle(job.release_id, job.destination)
            return Failed(reason, "LockHeld")
        countdown = self.policy.busy(rand=self._rand)
        reason = f"another copy of {job.digest[:19]} to {job.destination} is under way"
        # A record already running is that other copy's (a redelivery of this very task):
        # leave it alone; otherwise say why this one waits.
        if record is not None and record.state not in ("running", "succeeded"):
            self.ledger.mark_retrying(job.release_id, job.destination, error=reason,
                                      error_type="LockHeld", next_retry_at=now + countdown,
                                      due_by=now + countdown + self.lock_ttl)
        log.info("%s: %s; again in %.1fs", job.release_id, reason, countdown)
        return RetryLater(countdown, reason)

    def _stale(self, job: CopyJob, record: Standing) -> Outcome | None:
        """A message that must do nothing: of an older generation than the destination's (it
        was handed over, or retried by an operator), or a redelivery after it ended."""
        if job.generation < record.generation:
            reason = (f"{job.release_id}: {job.destination} was sent again since "
                      f"(generation {record.generation}); this message is stale")
            log.info("%s", reason)
            return Superseded(reason)
        if record.done and job.generation == record.generation:
            log.info("%s: %s already %s; nothing to do", job.release_id, job.destination,
                     record.state)
            # In case the delivery that ended it died before settling the release.
            self._settle(job.release_id, job.destination)
            if record.state == "succeeded":
                return Succeeded(record.stats, 0.0)
            return Superseded(f"{job.destination} already failed for good")
        return None

    def _copy(self, job: CopyJob, worker: str | None, lock: DestinationLock,
              kwargs: Mapping[str, Any], order: int | None = None,
              expect: tuple[str, int] | None = None) -> Outcome:
        attempt = self.ledger.mark_running(
            job.release_id, job.destination, worker=worker, lease=self.lock_ttl,
            task={**kwargs, "generation": job.generation}, expect=expect)
        started = self._monotonic()
        lease = DestinationLock(self.heartbeat_locks, job.destination, job.digest,
                                self.lock_ttl, token=lock.token)
        with Heartbeat(lease, self.ledger, job.release_id, job.destination,
                       interval=self.heartbeat_interval) as heartbeat:
            gate = None
            if self.tag_order is not None:
                if order is None:
                    order = self.ledger.order_of(job.release_id) or job.order
                gate = self.tag_order.gate(job.release_id, order, heartbeat.valid)
            try:
                stats = self.engine.copy(job, timeout=self.timeout, abort=heartbeat.abort,
                                         tag_gate=gate)
            except LeaseLost:
                # Whoever took over owns the record now; the reaper records this attempt.
                return Superseded(f"{job.destination}: {heartbeat.reason}")
            except Exception as exc:  # noqa: BLE001 - every failure is recorded, then classified
                return self._failed_attempt(job, exc, attempt)
        seconds = self._monotonic() - started
        superseded = dict(gate.superseded) if gate is not None else {}
        if self.ledger.mark_succeeded(job.release_id, job.destination, stats=stats,
                                      seconds=seconds, attempt=attempt, superseded=superseded,
                                      lock=(lock.key, lock.token)):
            lock.held = False
        self._settle(job.release_id, job.destination)
        log.info("%s: %s copied to %s in %.2fs: %s", job.release_id, job.source,
                 job.destination, seconds, stats)
        for tag, newer in superseded.items():
            log.info("%s: tag %s at %s left to the newer release %s", job.release_id, tag,
                     job.destination, newer)
        return Succeeded(stats, seconds, superseded)

    def _failed_attempt(self, job: CopyJob, exc: Exception, attempt: int | None = None,
                        ) -> Outcome:
        error, error_type = describe(exc)
        transient = is_transient(exc) or isinstance(exc, self.transient)
        if not isinstance(exc, (RegistryError, *self.transient)):
            log.error("%s: unexpected error copying to %s", job.release_id, job.destination,
                      exc_info=exc)
        if not transient:
            self.ledger.mark_failed(job.release_id, job.destination, error=error,
                                    error_type=error_type, attempt=attempt)
            self._settle(job.release_id, job.destination)
            log.warning("%s: %s failed for good: %s", job.release_id, job.destination, error)
            return Failed(error, error_type)
        record = self.ledger.standing(job.release_id, job.destination)
        now = self._clock()
        # The bounds count from the current round (an operator's retry starts a new one).
        attempts = record.round_attempts if record else 1
        created = record.round_started if record else now
        countdown = self.policy.countdown(attempts, retry_after_of(exc), rand=self._rand)
        give_up = self.policy.gives_up(attempts, now + countdown - created)
        if give_up:
            reason = f"{error} ({give_up})"
            self.ledger.mark_failed(job.release_id, job.destination, error=reason,
                                    error_type=error_type, attempt=attempt)
            self._settle(job.release_id, job.destination)
            log.warning("%s: %s failed: %s", job.release_id, job.destination, reason)
            return Failed(reason, error_type)
        # Due by the countdown plus a lease: past that, its message is presumed lost with its
        # worker, and the reaper sends the destination again.
        self.ledger.mark_retrying(job.release_id, job.destination, error=error,
                                  error_type=error_type, next_retry_at=now + countdown,
                                  attempt=attempt, due_by=now + countdown + self.lock_ttl)
        log.info("%s: %s attempt %d failed (%s); again in %.1fs", job.release_id,
                 job.destination, attempts, error, countdown)
        return RetryLater(countdown, error)


def describe(exc: BaseException) -> tuple[str, str]:
    """A message fit for the ledger and the error's type name.

    ``str(RegistryError)`` is redacted by construction; anything else is cut short, since we
    cannot vouch for what it says.
    """
    text = str(exc) or type(exc).__name__
    if not isinstance(exc, RegistryError):
        text = _USERINFO.sub("://", text)
    return text[:_ERROR_MAX], type(exc).__name__
