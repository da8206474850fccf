"""Reading the release ledger: releases, records with their history, what is running.

The base of :class:`workers.ledger.Ledger`, which adds the writes; the producer's ``status``,
the reaper and the metrics exporter only read.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, cast

import redis

from .records import (
    RELEASES_KEY,
    RUNNING_KEY,
    DestinationRecord,
    Release,
    decode_map,
    dest_key,
    dests_key,
    history_key,
    parse_record,
    release_key,
    text,
    to_float,
)

if TYPE_CHECKING:
    Pipeline = redis.client.Pipeline[Any]


class LedgerReader:
    """Reads releases; works with ``decode_responses`` on or off."""

    def __init__(self, redis_client: redis.Redis[Any], *,
                 clock: Callable[[], float] = time.time) -> None:
        self._redis = redis_client
        self._clock = clock

    @property
    def client(self) -> redis.Redis[Any]:
        """The Redis connection the ledger uses, for state kept beside it."""
        return self._redis

    # -- reading --------------------------------------------------------------------------

    def get(self, release_id: str) -> Release | None:
        """The release and every destination's record, or None if unknown or expired."""
        names = self._dest_names(self._redis, release_id)
        return self._read(self._redis, release_id, names, with_history=True)

    def record(self, release_id: str, destination: str) -> DestinationRecord | None:
        """One destination's record, or None if unknown or expired."""
        row = decode_map(self._redis.hgetall(dest_key(release_id, destination)))
        if not row:
            return None
        history = [text(h) for h in self._redis.lrange(history_key(release_id, destination),
                                                       0, -1)]
        return parse_record(destination, row, history)

    def order_of(self, release_id: str) -> int:
        """The release's place in the order of releases; 0 when it has none (from before
        releases had one: the oldest of all)."""
        return int(self._redis.hget(release_key(release_id), "order") or 0)

    def task_of(self, release_id: str, destination: str) -> dict[str, Any] | None:
        """The arguments the destination's copy task was last sent with, if recorded."""
        raw = self._redis.hget(dest_key(release_id, destination), "task")
        if not raw:
            return None
        doc = json.loads(text(raw))
        return doc if isinstance(doc, dict) else None

    def recent(self, limit: int = 20) -> list[str]:
        """Release ids, newest first."""
        if limit <= 0:
            return []
        return [text(i) for i in self._redis.zrevrange(RELEASES_KEY, 0, limit - 1)]

    def recent_releases(self, limit: int = 20) -> list[Release]:
        """The newest releases, newest first; one expired between the two reads is left out."""
        return [r for r in (self.get(i) for i in self.recent(limit)) if r is not None]

    def since(self, timestamp: float) -> list[str]:
        """Release ids created at or after ``timestamp`` (wall clock), oldest first."""
        return [text(i) for i in self._redis.zrangebyscore(RELEASES_KEY, timestamp, "+inf")]

    def overdue(self, now: float | None = None, limit: int = 100) -> list[str]:
        """``<release> <destination>`` of running attempts whose heartbeat deadline has passed."""
        deadline = self._clock() if now is None else now
        return [text(m) for m in self._redis.zrangebyscore(RUNNING_KEY, "-inf", deadline,
                                                           start=0, num=limit)]

    def _read(self, client: Any, release_id: str, names: Sequence[str], *,
              with_history: bool) -> Release | None:
        head = decode_map(client.hgetall(release_key(release_id)))
        if not head:
            return None
        rows = [decode_map(client.hgetall(dest_key(release_id, n))) for n in names]
        histories: list[list[str]] = [[] for _ in names]
        if with_history:
            histories = [[text(h) for h in client.lrange(history_key(release_id, n), 0, -1)]
                         for n in names]
        destinations = {name: parse_record(name, row, history)
                        for name, row, history in zip(names, rows, histories, strict=True)
                        if row}
        return Release(
            id=release_id, source=head.get("source", ""), digest=head.get("digest", ""),
            created_at=to_float(head.get("created_at")) or 0.0, destinations=destinations,
            epoch=int(head.get("epoch") or 0), order=int(head.get("order") or 0),
        )

    @staticmethod
    def _dest_names(client: redis.Redis[Any] | Pipeline, release_id: str) -> list[str]:
        names = cast(list[Any], client.zrange(dests_key(release_id), 0, -1))
        return [text(n) for n in names]
