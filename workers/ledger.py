"""The release ledger in Redis: what each release's destinations are doing, and did.

Keys (each expires ``retention`` seconds after its release's last update)::

    fanout:release:<id>                   hash: source, digest, created_at
    fanout:release:<id>:dests             sorted set: destinations, in the order given
    fanout:release:<id>:dest:<dest>       hash: one DestinationRecord
    fanout:releases                       sorted set: release ids by creation time

Every transition is one ``MULTI``/``EXEC`` under ``WATCH`` of the destination's hash: it is
applied whole or not at all, so a worker killed between two transitions leaves the last one
complete. No Lua, so fakeredis needs nothing extra. ``succeeded`` is final: a late redelivery
of a task that already succeeded cannot move its destination back.
"""

from __future__ import annotations

import json
import math
import secrets
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any, cast

import redis

from registry.reference import parse_reference

STATES = ("queued", "running", "retrying", "succeeded", "failed")
FINAL_STATES = frozenset({"succeeded", "failed"})
DEFAULT_RETENTION = 7 * 86400.0
RELEASES_KEY = "fanout:releases"
_PREFIX = "fanout:release:"
_Fields = Mapping[str | bytes, bytes | float | int | str]


@dataclass(frozen=True)
class DestinationRecord:
    """One destination of a release, as the ledger last recorded it."""

    destination: str
    tags: tuple[str, ...]
    state: str
    attempts: int
    last_error: str | None
    error_type: str | None
    bytes: int
    seconds: float
    created_at: float
    updated_at: float
    started_at: float | None
    finished_at: float | None
    stats: dict[str, int]
    worker: str | None
    next_retry_at: float | None

    @property
    def done(self) -> bool:
        return self.state in FINAL_STATES

    def to_dict(self) -> dict[str, Any]:
        doc = asdict(self)
        doc["tags"] = list(self.tags)
        return doc


@dataclass(frozen=True)
class Release:
    """A source digest and its destinations' records."""

    id: str
    source: str
    digest: str
    created_at: float
    destinations: dict[str, DestinationRecord]

    @property
    def done(self) -> bool:
        """Every destination has succeeded or failed for good."""
        return all(d.done for d in self.destinations.values())

    @property
    def ok(self) -> bool:
        """Every destination has succeeded."""
        return all(d.state == "succeeded" for d in self.destinations.values())

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "source": self.source,
            "digest": self.digest,
            "created_at": self.created_at,
            "done": self.done,
            "ok": self.ok,
            "destinations": {name: d.to_dict() for name, d in self.destinations.items()},
        }


class Ledger:
    """Reads and writes releases; works with ``decode_responses`` on or off."""

    def __init__(
        self, redis_client: redis.Redis[Any], *, retention: float = DEFAULT_RETENTION,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._redis = redis_client
        self.retention = retention
        self._clock = clock

    # -- writing --------------------------------------------------------------------------

    def create_release(
        self, source: str, targets: Sequence[tuple[str, Sequence[str]]], *,
        release_id: str | None = None,
    ) -> str:
        """Record a release with every destination ``queued``; return its id.

        ``source`` must be pinned by digest (``InvalidReference``, a ``ValueError``, if not).
        """
        digest = parse_reference(source).digest
        if digest is None:
            raise ValueError(f"source {source} is not pinned by digest")
        now = self._clock()
        release_id = release_id or self._new_id(now)
        with self._redis.pipeline() as pipe:  # MULTI/EXEC: the release appears whole
            pipe.hset(_release_key(release_id), mapping={
                "source": source, "digest": digest, "created_at": repr(now)})
            for index, (destination, tags) in enumerate(targets):
                pipe.zadd(_dests_key(release_id), {destination: index}, nx=True)
                pipe.hset(_dest_key(release_id, destination),
                          mapping=_fields(_new_record(destination, tags, now)))
            pipe.zadd(RELEASES_KEY, {release_id: now})
            pipe.zremrangebyscore(RELEASES_KEY, "-inf", now - self.retention)
            self._expire(pipe, release_id, [d for d, _ in targets])
            pipe.execute()
        return release_id

    def ensure_destination(
        self, release_id: str, source: str, destination: str, tags: Sequence[str],
    ) -> None:
        """Create the release and destination if missing (a task sent without the producer,
        or a ledger entry expired or flushed); never changes an existing record."""
        if self._redis.exists(_dest_key(release_id, destination)):
            return
        now = self._clock()
        digest = parse_reference(source).digest or ""
        with self._redis.pipeline() as pipe:
            pipe.hsetnx(_release_key(release_id), "source", source)
            pipe.hsetnx(_release_key(release_id), "digest", digest)
            pipe.hsetnx(_release_key(release_id), "created_at", repr(now))
            pipe.zadd(_dests_key(release_id), {destination: math.inf}, nx=True)
            for name, value in _new_record(destination, tags, now).items():
                pipe.hsetnx(_dest_key(release_id, destination), name, value)
            pipe.zadd(RELEASES_KEY, {release_id: now}, nx=True)
            self._expire(pipe, release_id, [destination, *self._dest_names(self._redis,
                                                                            release_id)])
            pipe.execute()

    def mark_running(self, release_id: str, destination: str, *, worker: str | None) -> None:
        """An attempt starts: ``attempts`` goes up by one."""
        now = self._clock()
        self._transition(release_id, destination, {
            "state": "running", "started_at": repr(now), "worker": worker or "",
            "next_retry_at": "",
        }, attempt=True)

    def mark_retrying(
        self, release_id: str, destination: str, *, error: str, error_type: str,
        next_retry_at: float,
    ) -> None:
        self._transition(release_id, destination, {
            "state": "retrying", "last_error": error, "error_type": error_type,
            "next_retry_at": repr(next_retry_at),
        })

    def mark_succeeded(
        self, release_id: str, destination: str, *, stats: Mapping[str, int], seconds: float,
    ) -> None:
        """Done; ``last_error`` keeps the error of an earlier attempt, if there was one."""
        self._transition(release_id, destination, {
            "state": "succeeded", "stats": json.dumps(dict(stats), sort_keys=True),
            "bytes": str(int(stats.get("bytes_transferred", 0))), "seconds": repr(seconds),
            "finished_at": repr(self._clock()), "next_retry_at": "",
        })

    def mark_failed(
        self, release_id: str, destination: str, *, error: str, error_type: str,
    ) -> None:
        """Failed for good; nothing will try this destination again for this release."""
        now = self._clock()
        self._transition(release_id, destination, {
            "state": "failed", "last_error": error, "error_type": error_type,
            "finished_at": repr(now), "next_retry_at": "",
        }, seconds_since_start=now)

    # -- reading --------------------------------------------------------------------------

    def get(self, release_id: str) -> Release | None:
        """The release and every destination's record, or None if unknown or expired."""
        head = _decode_map(self._redis.hgetall(_release_key(release_id)))
        if not head:
            return None
        names = [_text(n) for n in self._redis.zrange(_dests_key(release_id), 0, -1)]
        with self._redis.pipeline(transaction=False) as pipe:
            for name in names:
                pipe.hgetall(_dest_key(release_id, name))
            rows = pipe.execute()
        destinations = {name: _record(name, _decode_map(row))
                        for name, row in zip(names, rows, strict=True) if row}
        return Release(
            id=release_id, source=head.get("source", ""), digest=head.get("digest", ""),
            created_at=_float(head.get("created_at")) or 0.0, destinations=destinations,
        )

    def record(self, release_id: str, destination: str) -> DestinationRecord | None:
        """One destination's record, or None if unknown or expired."""
        row = _decode_map(self._redis.hgetall(_dest_key(release_id, destination)))
        return _record(destination, row) if row else None

    def recent(self, limit: int = 20) -> list[str]:
        """Release ids, newest first."""
        if limit <= 0:
            return []
        return [_text(i) for i in self._redis.zrevrange(RELEASES_KEY, 0, limit - 1)]

    # -- plumbing -------------------------------------------------------------------------

    def _new_id(self, now: float) -> str:
        # Milliseconds first, so ids sort by creation; random bits so two producers never clash.
        return f"rel-{int(now * 1000):012x}{secrets.token_hex(4)}"

    def _transition(
        self, release_id: str, destination: str, fields: dict[str, str], *,
        attempt: bool = False, seconds_since_start: float | None = None,
    ) -> None:
        key = _dest_key(release_id, destination)
        now = self._clock()

        def apply(pipe: redis.client.Pipeline[Any]) -> None:
            # After WATCH the pipeline runs commands at once; the stubs do not know that.
            current = _decode_map(cast(Mapping[Any, Any], pipe.hgetall(key)))
            if current.get("state") == "succeeded":
                return  # final: a late redelivery must not regress it
            others = self._dest_names(pipe, release_id)
            update = dict(fields, updated_at=repr(now))
            if not current:  # unknown (expired, flushed): start a full record
                update = {**_new_record(destination, (), now), **update}
            if seconds_since_start is not None and current.get("started_at"):
                started = _float(current["started_at"]) or seconds_since_start
                update["seconds"] = repr(max(0.0, seconds_since_start - started))
            pipe.multi()
            pipe.hset(key, mapping=_fields(update))
            if attempt:
                pipe.hincrby(key, "attempts", 1)
            if not current:
                pipe.zadd(_dests_key(release_id), {destination: math.inf}, nx=True)
                # A release nobody created (a hand-sent task rejected before
                # ensure_destination): without a head, `fanout status` could not find it.
                pipe.hsetnx(_release_key(release_id), "created_at", repr(now))
                pipe.zadd(RELEASES_KEY, {release_id: now}, nx=True)
            self._expire(pipe, release_id, [destination, *others])

        self._redis.transaction(apply, key)  # type: ignore[no-untyped-call]

    def _expire(self, pipe: redis.client.Pipeline[Any], release_id: str,
                destinations: Sequence[str]) -> None:
        # Every key of the release, not just the one written: a release expires whole.
        ttl = max(1, math.ceil(self.retention))
        pipe.expire(_release_key(release_id), ttl)
        pipe.expire(_dests_key(release_id), ttl)
        for name in dict.fromkeys(destinations):
            pipe.expire(_dest_key(release_id, name), ttl)

    @staticmethod
    def _dest_names(client: redis.Redis[Any] | redis.client.Pipeline[Any],
                    release_id: str) -> list[str]:
        names = cast(list[Any], client.zrange(_dests_key(release_id), 0, -1))
        return [_text(n) for n in names]


def _release_key(release_id: str) -> str:
    return f"{_PREFIX}{release_id}"


def _dests_key(release_id: str) -> str:
    return f"{_PREFIX}{release_id}:dests"


def _dest_key(release_id: str, destination: str) -> str:
    return f"{_PREFIX}{release_id}:dest:{destination}"


def _fields(row: dict[str, str]) -> _Fields:
    return cast(_Fields, row)


def _new_record(destination: str, tags: Sequence[str], now: float) -> dict[str, str]:
    return {
        "destination": destination, "tags": json.dumps(list(tags)), "state": "queued",
        "attempts": "0", "last_error": "", "error_type": "", "bytes": "0", "seconds": "0",
        "created_at": repr(now), "updated_at": repr(now), "started_at": "",
        "finished_at": "", "stats": "{}", "worker": "", "next_retry_at": "",
    }


def _record(destination: str, row: Mapping[str, str]) -> DestinationRecord:
    return DestinationRecord(
        destination=row.get("destination") or destination,
        tags=tuple(json.loads(row.get("tags") or "[]")),
        state=row.get("state") or "queued",
        attempts=int(row.get("attempts") or 0),
        last_error=row.get("last_error") or None,
        error_type=row.get("error_type") or None,
        bytes=int(row.get("bytes") or 0),
        seconds=_float(row.get("seconds")) or 0.0,
        created_at=_float(row.get("created_at")) or 0.0,
        updated_at=_float(row.get("updated_at")) or 0.0,
        started_at=_float(row.get("started_at")),
        finished_at=_float(row.get("finished_at")),
        stats={str(k): int(v) for k, v in json.loads(row.get("stats") or "{}").items()},
        worker=row.get("worker") or None,
        next_retry_at=_float(row.get("next_retry_at")),
    )


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _decode_map(row: Mapping[Any, Any]) -> dict[str, str]:
    return {_text(k): _text(v) for k, v in row.items()}


def _float(value: str | None) -> float | None:
    return float(value) if value else None
