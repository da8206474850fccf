"""The ledger's two transitions of every copy, an attempt's start and its success, as one
script each (``workers/checked_write.py``) when the record is known.

An attempt's start knows the record's state and attempts (its delivery read them a moment
before); the success of a first attempt this process started knows all its end depends on (the
attempt's number, start and worker, and that no attempt came before it to move into the history
list). Each writes exactly what :meth:`workers.ledger.Ledger._transition` would for a record so,
checked in the same script; when the record has moved, nothing is written and the ledger runs
the transition under ``WATCH``, the one judge of every other case (an attempt that never ended,
a final record, one handed over or retried meanwhile).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Mapping
from typing import Any, Protocol

import redis

from .checked_write import CheckedWrite, ScriptsRefused
from .records import LAST_ATTEMPT, RUNNING_KEY, Attempt, dest_key, running_member, to_float

log = logging.getLogger("fanout.ledger")
# Attempts this process started the short way and may end so; past that many, it forgets them
# (their ends go the long way).
_STARTED_KEPT = 1024


class TransitionObserver(Protocol):
    """Told of every attempt that ends, inside its transaction (the metrics counters)."""

    def attempt_ended(self, pipe: Any, destination: str, outcome: str, seconds: float | None,
                      nbytes: int) -> None: ...


class ScriptedTransitions:
    """The short ways, for one :class:`workers.ledger.Ledger`."""

    def __init__(self, client: redis.Redis[Any], *, observer: TransitionObserver | None,
                 clock: Callable[[], float] = time.time) -> None:
        self._redis = client
        self._observer = observer
        self._clock = clock
        # (release, destination) -> (attempt, started_at, worker) of a first attempt this
        # process started the short way: its end needs no read to know the record.
        self._started: dict[tuple[str, str], tuple[int, str, str]] = {}
        self.enabled = True  # False once Redis has refused a script

    def succeed(self, release_id: str, destination: str, fields: Mapping[str, str],
                attempt: int, lock: tuple[str, str] | None) -> bool | None:
        """The success of ``attempt``, if this process started it the short way and the
        record is still as it left it: whether the lock was given back; else None."""
        started = self._started.pop((release_id, destination), None)
        if started is None or started[0] != attempt or not self.enabled:
            return None
        return self._succeed(release_id, destination, fields, started, lock)

    def forget(self, release_id: str, destination: str) -> None:
        """The attempt ended the long way: nothing is left for its short end."""
        self._started.pop((release_id, destination), None)

    def start(self, release_id: str, destination: str, fields: Mapping[str, str],
              expect: tuple[str, int], deadline: float | None, now: float) -> int | None:
        """The start as the ledger's transition writes it for a record in ``expect``'s state
        (``fields``, the attempt's number, the running index's ``deadline``), if the record is
        still so: the attempt's number; None when it is not, or when the state needs the long
        way (an attempt that never ended, a final record)."""
        state, attempts = expect
        if not self.enabled or state in ("running", "succeeded"):
            return None
        key = dest_key(release_id, destination)
        number = attempts + 1
        write = CheckedWrite(key, {"state": state, "attempts": str(attempts)})
        write.hset(key, {**fields, "updated_at": repr(now), "attempts": str(number)})
        if deadline is not None:
            write.zadd(RUNNING_KEY, running_member(release_id, destination), deadline)
        if not self._apply(write)[0]:
            return None
        if attempts == 0:  # no attempt before it to move to the history: its end can be short
            if len(self._started) >= _STARTED_KEPT:
                self._started.clear()
            self._started[(release_id, destination)] = (number, fields["started_at"],
                                                        fields["worker"])
        return number

    def _succeed(self, release_id: str, destination: str, fields: Mapping[str, str],
                 started: tuple[int, str, str], lock: tuple[str, str] | None) -> bool | None:
        # As the ledger's transition writes it for a running record in this attempt, with no
        # attempt before it: the history entry in the record, the counters, the running index
        # and the lock's compare-and-delete.
        number, started_at, worker = started
        now = self._clock()
        key = dest_key(release_id, destination)
        write = CheckedWrite(key, {"state": "running", "attempts": str(number),
                                   "started_at": started_at, "worker": worker,
                                   LAST_ATTEMPT: ""})
        entry = Attempt(attempt=number, worker=worker or None, started_at=to_float(started_at),
                        ended_at=now, outcome="succeeded")
        if self._observer is not None:
            self._observer.attempt_ended(write, destination, "succeeded",
                                         to_float(fields.get("seconds")),
                                         int(fields.get("bytes") or 0))
        write.hset(key, {**fields, "updated_at": repr(now),
                         LAST_ATTEMPT: json.dumps(entry.to_dict(), sort_keys=True)})
        write.zrem(RUNNING_KEY, running_member(release_id, destination))
        if lock is not None:
            write.delete_if(*lock)
        applied, released = self._apply(write)
        return released if applied else None

    def _apply(self, write: CheckedWrite) -> tuple[bool, bool]:
        try:
            return write.apply(self._redis)
        except ScriptsRefused as exc:
            self.enabled = False
            log.warning("Redis runs no scripts (%s): every ledger transition goes under WATCH",
                        exc)
            return False, False
