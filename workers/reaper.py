"""Handing over the destinations of workers that died mid-copy.

Every worker runs a reaper in its main process (a thread started when the worker is ready). Each
sweep reads ``fanout:running`` for attempts whose heartbeat deadline has passed and, for each
whose lock has lapsed too (the lock is the truth: a copy alive but late to heartbeat still holds
it), records the attempt lost in the ledger ("worker w1@host lost at 12:03:04, heartbeat
stopped"), and sends the destination's copy task again under a new generation. The ledger's
transition is the claim: of several reapers sweeping at once, one hands the attempt over, and a
late redelivery of the dead worker's own message, of the older generation, does nothing.

Worst case from a worker's death to its destination's task being sent again:
``FANOUT_LOCK_TTL`` (20 s) + ``FANOUT_REAPER_INTERVAL`` (5 s).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

import redis

from registry.errors import InvalidReference
from registry.reference import parse_reference

from .ledger import Ledger
from .locks import DestinationLock
from .records import split_running_member

log = logging.getLogger("fanout.reaper")

SendTask = Callable[[dict[str, Any]], None]


class Reaper:
    """Finds attempts whose worker died and sends their destinations again."""

    def __init__(
        self, ledger: Ledger, locks: redis.Redis[Any], send: SendTask, *, lock_ttl: float,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.ledger = ledger
        self.locks = locks
        self.send = send
        self.lock_ttl = lock_ttl
        self._clock = clock

    def sweep(self) -> list[tuple[str, str]]:
        """One pass; returns the (release, destination) pairs handed over."""
        handed: list[tuple[str, str]] = []
        for member in self.ledger.overdue():
            found = split_running_member(member)
            if found is None:
                continue
            release_id, destination = found
            if self._hand_over(release_id, destination):
                handed.append(found)
        return handed

    def _hand_over(self, release_id: str, destination: str) -> bool:
        record = self.ledger.record(release_id, destination)
        task = self.ledger.task_of(release_id, destination)
        digest = _pinned_digest(task)
        if (record is None or task is None or digest is None
                or record.state not in ("running", "retrying")):
            # Ended meanwhile, or nothing to send again: forget the deadline.
            self.ledger.forget_running(release_id, destination)
            return False
        lock = DestinationLock(self.locks, destination, digest, self.lock_ttl)
        if lock.holder() is not None:
            return False  # alive, or its lease not yet lapsed: the next sweep looks again
        if record.state == "running":
            silent_since = record.heartbeat_at or record.started_at or self._clock()
            reason = (f"worker {record.worker or '?'} lost at {_clock_time(silent_since)} UTC, "
                      "heartbeat stopped")
        else:
            # A retry's message waits (unacknowledged) in the worker that scheduled it; if that
            # worker dies, the broker would give it back only after the visibility timeout.
            due = record.next_retry_at or self._clock()
            reason = (f"{record.last_error or 'retry'}; the retry due at {_clock_time(due)} UTC "
                      "never started (its worker may be gone)")
        handed = self.ledger.mark_lost(release_id, destination, attempt=record.attempts,
                                       reason=reason)
        if handed is None:
            return False  # another reaper, or the attempt itself, got there first
        log.warning("%s: %s: %s; sending it again", release_id, destination, reason)
        self.send({**task, "generation": handed.generation})
        return True


def _pinned_digest(task: dict[str, Any] | None) -> str | None:
    """The digest the task copies (its source is pinned: the task was checked when it ran),
    which names the lock; None for a task that cannot be read."""
    try:
        return parse_reference(str((task or {}).get("source", ""))).digest
    except InvalidReference:
        return None


def _clock_time(timestamp: float) -> str:
    return time.strftime("%H:%M:%S", time.gmtime(timestamp))


class ReaperThread:
    """Runs :meth:`Reaper.sweep` every ``interval`` seconds until stopped; never dies of an
    error (a Redis restart, a broker hiccup): it logs and sweeps again."""

    def __init__(self, reaper: Reaper, interval: float) -> None:
        self.reaper = reaper
        self.interval = interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="fanout-reaper", daemon=True)

    def start(self) -> ReaperThread:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=self.interval + 5)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.reaper.sweep()
            except Exception as exc:  # noqa: BLE001 - a sweep that fails is tried again
                log.warning("reaper sweep failed: %s", exc)
