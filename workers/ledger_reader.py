"""Reading the release ledger: releases, records with their history, what is running.

The base of :class:`workers.ledger.Ledger`, which adds the writes; the producer's ``status``,
the reaper and the metrics exporter only read.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, cast

import redis

from .records import (
    RELEASES_KEY,
    RUNNING_KEY,
    DestinationRecord,
    Release,
    Rounds,
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

# The fields of a destination's hash that :class:`Standing` holds.
_STANDING = ("state", "generation", "attempts", "round_base", "round_at", "created_at", "stats")
# How long a release's order, once read, is taken as read (monotonic seconds): it is fixed when
# the release is created, and a worker runs many copies of one release in a row, each of which
# asked for it (an HGET of every copy's ~45 commands, issue 18). Short, so that a release that
# expired and was made again under its id (a hand-sent task, days later) is read afresh.
ORDER_TRUST_S = 60.0
_ORDERS_KEPT = 1024


@dataclass(frozen=True)
class Standing(Rounds):
    """Where a destination stands, as each delivery of its copy task needs to know: a few
    fields of its record, without the history (up to a hundred attempts) a full read brings."""

    state: str
    generation: int
    attempts: int
    round_base: int
    round_at: float | None
    created_at: float
    stats: dict[str, int]
    # The release's place in the order of releases (0: none recorded).
    order: int = 0

    @classmethod
    def from_row(cls, row: Mapping[str, str], order: int = 0) -> Standing:
        # Read as parse_record reads the whole hash, so the two never disagree.
        record = parse_record("", row)
        return cls(state=record.state, generation=record.generation, attempts=record.attempts,
                   round_base=record.round_base, round_at=record.round_at,
                   created_at=record.created_at, stats=record.stats, order=order)


class LedgerReader:
    """Reads releases; works with ``decode_responses`` on or off."""

    def __init__(self, redis_client: redis.Redis[Any], *,
                 clock: Callable[[], float] = time.time,
                 monotonic: Callable[[], float] = time.monotonic) -> None:
        self._redis = redis_client
        self._clock = clock
        self._monotonic = monotonic
        # release id -> (monotonic time read, its order): see ORDER_TRUST_S.
        self._orders: dict[str, tuple[float, int]] = {}

    @property
    def client(self) -> redis.Redis[Any]:
        """The Redis connection the ledger uses, for state kept beside it."""
        return self._redis

    # -- reading --------------------------------------------------------------------------

    def get(self, release_id: str) -> Release | None:
        """The release and every destination's record, or None if unknown or expired; two
        round trips, whatever the number of destinations."""
        [release] = self._read_all(self._names_of([release_id]), with_history=True)
        return release

    def record(self, release_id: str, destination: str) -> DestinationRecord | None:
        """One destination's record, or None if unknown or expired; one round trip."""
        with self._redis.pipeline(transaction=False) as pipe:
            pipe.hgetall(dest_key(release_id, destination))
            pipe.lrange(history_key(release_id, destination), 0, -1)
            found, history = pipe.execute()
        row = decode_map(found)
        if not row:
            return None
        return parse_record(destination, row, [text(h) for h in history])

    def standing(self, release_id: str, destination: str) -> Standing | None:
        """What a delivery of the destination's copy task decides on, or None if unknown or
        expired: one round trip (an HMGET, and the release's place in the order unless read
        within ``ORDER_TRUST_S``), without the history or the task's arguments."""
        known = self._orders.get(release_id)
        if known is not None and self._monotonic() - known[0] > ORDER_TRUST_S:
            known = None
        with self._redis.pipeline(transaction=False) as pipe:
            pipe.hmget(dest_key(release_id, destination), _STANDING)
            if known is None:
                pipe.hget(release_key(release_id), "order")
            values, *read = pipe.execute()
        order = known[1] if known is not None else int(read[0] or 0)
        if known is None and order:  # none recorded yet: ask again next time
            if len(self._orders) >= _ORDERS_KEPT:
                self._orders.clear()
            self._orders[release_id] = (self._monotonic(), order)
        row = {name: text(v) for name, v in zip(_STANDING, values, strict=True) if v is not None}
        return Standing.from_row(row, order) if row else None

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
        """The newest releases, newest first; one expired between the reads is left out.
        Three round trips, whatever the number of releases and destinations."""
        found = self._read_all(self._names_of(self.recent(limit)), with_history=True)
        return [r for r in found if r is not None]

    def since(self, timestamp: float) -> list[str]:
        """Release ids created at or after ``timestamp`` (wall clock), oldest first."""
        return [text(i) for i in self._redis.zrangebyscore(RELEASES_KEY, timestamp, "+inf")]

    def overdue(self, now: float | None = None, limit: int = 100) -> list[str]:
        """``<release> <destination>`` of running attempts whose heartbeat deadline has passed."""
        deadline = self._clock() if now is None else now
        return [text(m) for m in self._redis.zrangebyscore(RUNNING_KEY, "-inf", deadline,
                                                           start=0, num=limit)]

    def _names_of(self, release_ids: Sequence[str]) -> list[tuple[str, list[str]]]:
        """Each release with its destinations' names, in one round trip (none for none)."""
        with self._redis.pipeline(transaction=False) as pipe:
            for release_id in release_ids:
                pipe.zrange(dests_key(release_id), 0, -1)
            found = pipe.execute()
        return [(release_id, [text(n) for n in names])
                for release_id, names in zip(release_ids, found, strict=True)]

    def _read_all(self, releases: Sequence[tuple[str, Sequence[str]]], *,
                  with_history: bool) -> list[Release | None]:
        """Each (release, its destinations' names) read in one round trip; None for one gone.
        Not a transaction: each key is as it was when read, as with one command per key."""
        with self._redis.pipeline(transaction=False) as pipe:
            for release_id, names in releases:
                self._ask(pipe, release_id, names, with_history=with_history)
            replies = iter(pipe.execute())
        return [self._read(replies, release_id, names, with_history=with_history)
                for release_id, names in releases]

    def _read(self, replies: Iterator[Any], release_id: str, names: Sequence[str], *,
              with_history: bool) -> Release | None:
        """The release from the replies to what :meth:`_ask` queued for it, taken in order."""
        head = decode_map(next(replies))
        rows = [decode_map(next(replies)) for _ in names]
        histories: list[list[str]] = [[] for _ in names]
        if with_history:
            histories = [[text(h) for h in next(replies)] for _ in names]
        if not head:
            return None
        destinations = {name: parse_record(name, row, history)
                        for name, row, history in zip(names, rows, histories, strict=True)
                        if row}
        return Release(
            id=release_id, source=head.get("source", ""), digest=head.get("digest", ""),
            created_at=to_float(head.get("created_at")) or 0.0, destinations=destinations,
            epoch=int(head.get("epoch") or 0), order=int(head.get("order") or 0),
            trigger=head.get("trigger", ""),
        )

    @staticmethod
    def _ask(pipe: Pipeline, release_id: str, names: Sequence[str], *,
             with_history: bool) -> None:
        """Queue the reads of one release: its head, each destination's hash, then (with
        ``with_history``) each one's history; :meth:`_read` takes their replies."""
        pipe.hgetall(release_key(release_id))
        for name in names:
            pipe.hgetall(dest_key(release_id, name))
        if with_history:
            for name in names:
                pipe.lrange(history_key(release_id, name), 0, -1)

    @staticmethod
    def _dest_names(client: redis.Redis[Any] | Pipeline, release_id: str) -> list[str]:
        names = cast(list[Any], client.zrange(dests_key(release_id), 0, -1))
        return [text(n) for n in names]

