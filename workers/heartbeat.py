"""A running copy's heartbeat: its lock is a short lease, renewed while the copy lives.

A worker can die without a word (``kill -9``, the OOM killer, a lost node, a pod killed after
its grace period). Its copy's lock then expires within one lease, and the heartbeat deadline it
left in ``fanout:running`` passes, so a live worker's reaper (``workers/reaper.py``) hands the
destination over within a lease and a sweep — about half a minute by default, not the broker's
visibility timeout.

The other half of the bargain: a copy that cannot renew its lease must stop before the lease
runs out, or a second copy could start beside it. So the heartbeat watches its own silence: when
the lock is gone, or no renewal has succeeded for ``STOP_FRACTION`` of the lease, it sets
``abort`` and the engine cancels the copy.

The scheduled verify's no-overlap lease (``workers/sync_tasks.py``) is kept the same way: a
:class:`~workers.locks.Lease` with no ledger record, whose ``abort`` stops the verify.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from types import TracebackType

import redis

from .ledger import Ledger
from .locks import Lease

log = logging.getLogger("fanout.worker")

# Stop the copy when this much of the lease has passed without a renewal: the rest of the
# lease is the margin for the cancellation to take effect before anyone else may start.
STOP_FRACTION = 0.6


class Heartbeat:
    """Renews ``lock`` and the ledger's heartbeat every ``interval`` from a daemon thread.

    ``ledger`` None: a lease that is no release's (the scheduled verify's); ``destination``
    then only names it in the log."""

    def __init__(
        self, lock: Lease, ledger: Ledger | None, release_id: str, destination: str, *,
        interval: float, monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.lock = lock
        self.ledger = ledger
        self.release_id = release_id
        self.destination = destination
        self.interval = interval
        self.abort = threading.Event()
        self.reason = ""
        self._stop = threading.Event()
        self._monotonic = monotonic
        self._last_renewed = monotonic()
        self._thread = threading.Thread(target=self._run, name="fanout-heartbeat", daemon=True)

    def __enter__(self) -> Heartbeat:
        self._last_renewed = self._monotonic()
        self._thread.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self._stop.set()
        self._thread.join(timeout=self.interval + 5)

    def valid(self) -> bool:
        """Whether the lease is still safe to act on: not given up, and renewed recently by
        this process's own clock (a process stopped for longer wakes up to False, before its
        heartbeat thread has even run)."""
        silent = self._monotonic() - self._last_renewed
        return not self.abort.is_set() and silent <= self.lock.ttl * STOP_FRACTION

    def beat(self) -> None:
        """One renewal; sets ``abort`` when the lease is lost or has gone silent too long."""
        try:
            if not self.lock.renew():
                self._give_up("its lock expired or was taken over")
                return
            if self.ledger is not None:
                self.ledger.heartbeat(self.release_id, self.destination, self.lock.ttl)
            self._last_renewed = self._monotonic()
        except redis.RedisError as exc:
            silent = self._monotonic() - self._last_renewed
            log.warning("heartbeat of %s: %s (silent for %.1fs)", self.destination, exc, silent)
            if silent > self.lock.ttl * STOP_FRACTION:
                self._give_up(f"no heartbeat for {silent:.0f} s ({exc})")

    def _give_up(self, reason: str) -> None:
        self.reason = reason
        what = f"the copy to {self.destination}" if self.ledger is not None else self.destination
        log.warning("stopping %s: %s", what, reason)
        self.abort.set()

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.beat()
            if self.abort.is_set():
                return
