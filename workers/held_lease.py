"""A lease kept alive while a long job runs: a scheduled mirror sync or verify.

The lease (:class:`workers.locks.Lease`) is short, so a job whose process dies frees it within
one ``ttl``; a daemon thread renews it every third of it while the job lives. A job that loses
its lease (Redis down longer than the ttl, a renewal refused) finds out through :meth:`lost`;
both jobs that use it are safe to overlap rarely (a sync's releases are idempotent and
ordered), so the lease saves work and the job carries on rather than stop half done.
"""

from __future__ import annotations

import logging
import threading
from types import TracebackType
from typing import Any

import redis

from .locks import Lease

log = logging.getLogger("fanout.lease")


class HeldLease:
    """``with HeldLease(client, key, ttl) as held:``; ``held`` False when another holds it."""

    def __init__(self, client: redis.Redis[Any], key: str, ttl: float, *, owner: str = "") -> None:
        self._lease = Lease(client, key, ttl, owner=owner)
        self._stop = threading.Event()
        self._lost = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def lost(self) -> bool:
        return self._lost.is_set()

    def __enter__(self) -> bool:
        if not self._lease.acquire():
            return False
        self._thread = threading.Thread(target=self._renew, name=f"lease {self._lease.key}",
                                        daemon=True)
        self._thread.start()
        return True

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if self._thread is None:
            return
        self._stop.set()
        self._thread.join()
        try:
            self._lease.release()
        except (redis.RedisError, OSError) as error:
            # It expires on its own within one ttl.
            log.warning("could not release %s: %s", self._lease.key, type(error).__name__)

    def _renew(self) -> None:
        while not self._stop.wait(self._lease.ttl / 3):
            try:
                if not self._lease.renew():
                    self._lost.set()
                    log.warning("lease %s was lost", self._lease.key)
                    return
            except (redis.RedisError, OSError) as error:
                log.warning("could not renew %s: %s", self._lease.key, type(error).__name__)
