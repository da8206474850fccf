"""The release ledger in Redis: what each release's destinations are doing, and did.

The keys and the records are in ``workers/records.py``. Every transition is one ``MULTI``/``EXEC``
under ``WATCH`` of the destination's hash: it is applied whole or not at all, so a worker killed
between two transitions leaves the last one complete. The two every copy makes, an attempt's
start and its success, go the short way when the caller knows what the record holds (its
delivery read it; this process started the attempt): one script that checks those fields and
writes what the transition would have (``workers/ledger_scripts.py``), else the long way.
``succeeded`` is final: a late redelivery of a task that already succeeded cannot move its
destination back. An attempt that ends (succeeded, retrying, failed, or lost with its worker)
is appended to the destination's history in the same transaction (as its record's
``last_attempt``, the one before moving into the history list: ``workers/records.py``).
"""

from __future__ import annotations

import json
import math
import secrets
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, cast

import redis

from registry.reference import parse_reference

from .ledger_reader import LedgerReader
from .ledger_scripts import ScriptedTransitions, TransitionObserver
from .records import (
    FINAL_STATES,
    HISTORY_LIMIT,
    LAST_ATTEMPT,
    ORDER_KEY,
    RELEASES_KEY,
    RUNNING_KEY,
    STATES,
    Attempt,
    DestinationRecord,
    Release,
    decode_map,
    dest_key,
    dests_key,
    history_key,
    new_record,
    release_key,
    running_member,
    text,
    to_float,
)

DEFAULT_RETENTION = 7 * 86400.0
_Fields = Mapping[str | bytes, bytes | float | int | str]
__all__ = ["FINAL_STATES", "STATES", "Attempt", "DestinationRecord", "Ledger", "Release",
           "TransitionObserver"]
if TYPE_CHECKING:
    Pipeline = redis.client.Pipeline[Any]


class Ledger(LedgerReader):
    """Reads and writes releases; works with ``decode_responses`` on or off."""

    def __init__(
        self, redis_client: redis.Redis[Any], *, retention: float = DEFAULT_RETENTION,
        clock: Callable[[], float] = time.time, observer: TransitionObserver | None = None,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__(redis_client, clock=clock, monotonic=monotonic)
        self.retention = retention
        self._observer = observer
        self._scripted = ScriptedTransitions(redis_client, observer=observer, clock=clock)

    # -- a release and its destinations ---------------------------------------------------

    def create_release(
        self, source: str, targets: Sequence[tuple[str, Sequence[str]]], *,
        release_id: str | None = None, optional: Iterable[str] = (),
        tasks: Mapping[str, Mapping[str, Any]] | None = None, order: int | None = None,
        trigger: str = "",
    ) -> str:
        """Record a release with every destination ``queued``; return its id.

        ``source`` must be pinned by digest (``InvalidReference``, a ``ValueError``, if not).
        ``optional`` names destinations whose failure does not fail the release. ``tasks``: per
        destination, the arguments its copy task is sent with (``release_id`` and ``order``
        are filled in here), kept for :meth:`task_of` so that a retry sends exactly what was
        sent. ``order``: its place in the order of releases, from :meth:`next_order` (taken
        here when not given). ``trigger``: what made it (``Release.trigger``).
        """
        digest = parse_reference(source).digest
        if digest is None:
            raise ValueError(f"source {source} is not pinned by digest")
        optional = set(optional)
        if order is None:
            order = self.next_order()
        now = self._clock()
        release_id = release_id or self._new_id(now)
        with self._redis.pipeline() as pipe:  # MULTI/EXEC: the release appears whole
            pipe.hset(release_key(release_id), mapping={
                "source": source, "digest": digest, "created_at": repr(now), "epoch": "0",
                "order": str(order), **({"trigger": trigger} if trigger else {})})
            places: dict[str | bytes, bytes | float | int | str] = {}
            for index, (destination, tags) in enumerate(targets):
                places.setdefault(destination, index)  # NX: a name given twice keeps its first
                row = new_record(destination, tags, now, optional=destination in optional)
                task = (tasks or {}).get(destination)
                if task is not None:
                    row["task"] = json.dumps({**task, "release_id": release_id, "order": order},
                                             sort_keys=True)
                pipe.hset(dest_key(release_id, destination), mapping=_fields(row))
            if places:  # one ZADD for every destination, not one each
                pipe.zadd(dests_key(release_id), places, nx=True)
            pipe.zadd(RELEASES_KEY, {release_id: now})
            pipe.zremrangebyscore(RELEASES_KEY, "-inf", now - self.retention)
            # No history exists yet: an EXPIRE of each would be a command per destination
            # for nothing (the first attempt to end gives its history the release's lifetime).
            self._expire(pipe, release_id, [d for d, _ in targets], histories=False)
            pipe.execute()
        return release_id

    def next_order(self) -> int:
        """The next release's place in the order of releases: one counter for every producer,
        so it is the order releases were created in, whatever the clocks say."""
        return int(self._redis.incr(ORDER_KEY))

    def ensure_destination(
        self, release_id: str, source: str, destination: str, tags: Sequence[str], *,
        order: int = 0,
    ) -> None:
        """Create the release and destination if missing (a task sent without the producer,
        or a ledger entry expired or flushed); never changes an existing record. ``order``:
        the release's place as its task message gave it (0: none, so a new one is taken)."""
        if self._redis.exists(dest_key(release_id, destination)):
            return
        now = self._clock()
        digest = parse_reference(source).digest or ""
        if not order and not self._redis.hexists(release_key(release_id), "order"):
            order = self.next_order()
        with self._redis.pipeline() as pipe:
            pipe.hsetnx(release_key(release_id), "source", source)
            pipe.hsetnx(release_key(release_id), "digest", digest)
            pipe.hsetnx(release_key(release_id), "created_at", repr(now))
            if order:
                pipe.hsetnx(release_key(release_id), "order", str(order))
            pipe.zadd(dests_key(release_id), {destination: math.inf}, nx=True)
            for name, value in new_record(destination, tags, now).items():
                pipe.hsetnx(dest_key(release_id, destination), name, value)
            pipe.zadd(RELEASES_KEY, {release_id: now}, nx=True)
            self._expire(pipe, release_id, [destination, *self._dest_names(self._redis,
                                                                            release_id)])
            pipe.execute()

    # -- an attempt -----------------------------------------------------------------------

    def mark_running(
        self, release_id: str, destination: str, *, worker: str | None,
        task: Mapping[str, Any] | None = None, lease: float | None = None,
        expect: tuple[str, int] | None = None,
    ) -> int:
        """An attempt starts: ``attempts`` goes up by one, and its number is returned.

        ``task`` (the message's arguments, which hold no secret) is kept so a lost attempt can
        be sent again; ``lease`` is how long its heartbeat may be silent before the attempt
        counts as lost. ``expect``: the record's state and attempts as the delivery read them;
        while they hold, the start is one script rather than a transaction."""
        now = self._clock()
        fields = {"state": "running", "started_at": repr(now), "worker": worker or "",
                  "next_retry_at": "", "heartbeat_at": repr(now)}
        if task is not None:
            fields["task"] = json.dumps(dict(task), sort_keys=True)
        deadline = (now + lease) if lease is not None else None
        if expect is not None:
            number = self._scripted.start(release_id, destination, fields, expect, deadline, now)
            if number is not None:
                return number
        return self._transition(release_id, destination, fields, attempt=True, lease=deadline)

    def heartbeat(self, release_id: str, destination: str, lease: float) -> None:
        """The attempt is alive: push its deadline ``lease`` seconds out."""
        now = self._clock()
        with self._redis.pipeline() as pipe:
            pipe.hset(dest_key(release_id, destination), "heartbeat_at", repr(now))
            pipe.zadd(RUNNING_KEY, {running_member(release_id, destination): now + lease},
                      xx=True)
            pipe.execute()

    def mark_retrying(
        self, release_id: str, destination: str, *, error: str, error_type: str,
        next_retry_at: float, attempt: int | None = None, due_by: float | None = None,
    ) -> None:
        """``attempt``: write only if that attempt is still the destination's latest (a copy
        that outlived its lease must not overwrite the attempt that took over). ``due_by``:
        when the retry must have started, or the reaper hands the destination over (the
        worker holding the retry's message may die while it waits)."""
        self._transition(release_id, destination, {
            "state": "retrying", "last_error": error, "error_type": error_type,
            "next_retry_at": repr(next_retry_at),
        }, outcome="retrying", expect_attempt=attempt, lease=due_by)

    def mark_succeeded(
        self, release_id: str, destination: str, *, stats: Mapping[str, int], seconds: float,
        attempt: int | None = None, superseded: Mapping[str, str] | None = None,
        lock: tuple[str, str] | None = None,
    ) -> bool:
        """Done; ``last_error`` keeps the error of an earlier attempt, if there was one.
        ``superseded``: the tags left to a newer release, each with that release's id.
        ``lock``: the copy's lock (key, token), deleted in the same transaction if it is
        still that token's; returns whether it was (its own compare-and-delete would cost a
        WATCH, MULTI and EXEC more)."""
        released: list[bool] = []
        fields = {
            "state": "succeeded", "stats": json.dumps(dict(stats), sort_keys=True),
            "superseded": json.dumps(dict(superseded or {}), sort_keys=True),
            "bytes": str(int(stats.get("bytes_transferred", 0))), "seconds": repr(seconds),
            "finished_at": repr(self._clock()), "next_retry_at": "",
        }
        if attempt is not None:
            done = self._scripted.succeed(release_id, destination, fields, attempt, lock)
            if done is not None:
                return done
        self._transition(release_id, destination, fields, outcome="succeeded",
                         expect_attempt=attempt, lock=lock, released=released)
        return bool(released)

    def mark_failed(
        self, release_id: str, destination: str, *, error: str, error_type: str,
        attempt: int | None = None,
    ) -> None:
        """Failed for good; nothing will try this destination again for this release."""
        now = self._clock()
        self._transition(release_id, destination, {
            "state": "failed", "last_error": error, "error_type": error_type,
            "finished_at": repr(now), "next_retry_at": "",
        }, seconds_since_start=now, outcome="failed", expect_attempt=attempt)

    def mark_lost(
        self, release_id: str, destination: str, *, attempt: int, reason: str,
    ) -> DestinationRecord | None:
        """Attempt ``attempt`` died with its worker (or, for a ``retrying`` destination, its
        retry never started): record it lost, move the destination to ``retrying`` under a new
        generation, and return the record to send again; None when the destination has moved
        on meanwhile (the attempt ended, a newer one started, or it was handed over already)."""
        key = dest_key(release_id, destination)
        now = self._clock()
        handed: list[bool] = []

        def apply(pipe: Pipeline) -> None:
            handed.clear()
            current = decode_map(cast(Mapping[Any, Any], pipe.hgetall(key)))
            others = self._dest_names(pipe, release_id)
            state = current.get("state")
            pipe.multi()
            pipe.zrem(RUNNING_KEY, running_member(release_id, destination))
            if (state not in ("running", "retrying")
                    or int(current.get("attempts") or 0) != attempt):
                return
            ended = {}
            if state == "running":
                ended[LAST_ATTEMPT] = self._end_attempt(
                    pipe, release_id, destination, current, "lost", reason, "WorkerLost", now)
            pipe.hset(key, mapping=_fields({
                "state": "retrying", "last_error": reason, "error_type": "WorkerLost",
                "next_retry_at": repr(now), "updated_at": repr(now),
                "generation": str(int(current.get("generation") or 0) + 1), **ended,
            }))
            self._expire(pipe, release_id, [destination, *others])
            handed.append(True)

        self._redis.transaction(apply, key)  # type: ignore[no-untyped-call]
        return self.record(release_id, destination) if handed else None

    def forget_running(self, release_id: str, destination: str) -> None:
        """Drop a heartbeat deadline nobody needs (its attempt ended, or its release expired)."""
        self._redis.zrem(RUNNING_KEY, running_member(release_id, destination))

    def reset_for_retry(self, release_id: str, destinations: Sequence[str]) -> int:
        """An operator's retry: the named destinations go back to ``queued`` as a new round
        under a new generation (history kept); the release is no longer final, so it will
        notify again when it is. Returns the destinations' new generation."""
        now = self._clock()
        keys = [dest_key(release_id, d) for d in destinations]
        generation = [0]

        def apply(pipe: Pipeline) -> None:
            rows = [decode_map(cast(Mapping[Any, Any], pipe.hgetall(k))) for k in keys]
            others = self._dest_names(pipe, release_id)
            pipe.multi()
            for key, row in zip(keys, rows, strict=True):
                generation[0] = max(generation[0], int(row.get("generation") or 0) + 1)
                pipe.hset(key, mapping=_fields({
                    "state": "queued", "next_retry_at": "", "finished_at": "",
                    "round_base": row.get("attempts") or "0", "round_at": repr(now),
                    "updated_at": repr(now), "generation": str(generation[0]),
                }))
            pipe.hincrby(release_key(release_id), "epoch", 1)
            self._expire(pipe, release_id, [*destinations, *others])

        self._redis.transaction(apply, release_key(release_id), *keys)  # type: ignore[no-untyped-call]
        return generation[0]

    def settle_final(self, release_id: str) -> Release | None:
        """If the release is final now and nobody has claimed this final transition, claim it
        and return the release (to notify about); else None. Exactly one caller wins per
        transition, however many workers finish destinations at the same instant."""
        head_key = release_key(release_id)
        won: list[Release] = []

        def apply(pipe: Pipeline) -> None:
            won.clear()
            names = self._dest_names(pipe, release_id)
            if names:  # watched too: a destination changing under us means look again
                pipe.watch(*(dest_key(release_id, name) for name in names))
            # Read after the WATCH, so that a change after the read fails the EXEC; in one
            # round trip on a connection of its own (this one now sends each command alone).
            with self._redis.pipeline(transaction=False) as reader:
                self._ask(reader, release_id, names, with_history=False)
                reader.hget(head_key, "notified_epoch")
                replies = iter(reader.execute())
            release = self._read(replies, release_id, names, with_history=False)
            notified = next(replies)
            pipe.multi()
            if release is None or not release.destinations or not release.done:
                return
            epoch = str(release.epoch)
            if notified is not None and text(notified) == epoch:
                return
            pipe.hset(head_key, "notified_epoch", epoch)
            won.append(release)

        self._redis.transaction(apply, head_key)  # type: ignore[no-untyped-call]
        return won[0] if won else None

    # -- plumbing -------------------------------------------------------------------------

    def _new_id(self, now: float) -> str:
        # Milliseconds first, so ids sort by creation; random bits so two producers never clash.
        return f"rel-{int(now * 1000):012x}{secrets.token_hex(4)}"

    def _transition(
        self, release_id: str, destination: str, fields: dict[str, str], *,
        attempt: bool = False, seconds_since_start: float | None = None,
        outcome: str | None = None, lease: float | None = None,
        expect_attempt: int | None = None, lock: tuple[str, str] | None = None,
        released: list[bool] | None = None,
    ) -> int:
        key = dest_key(release_id, destination)
        now = self._clock()
        number = [0]
        if outcome is not None:  # the attempt ends the long way
            self._scripted.forget(release_id, destination)

        def apply(pipe: Pipeline) -> None:
            if released is not None:
                released.clear()
            # After WATCH the pipeline runs commands at once; the stubs do not know that.
            current = decode_map(cast(Mapping[Any, Any], pipe.hgetall(key)))
            number[0] = int(current.get("attempts") or 0) + (1 if attempt else 0)
            if current.get("state") == "succeeded":
                pipe.multi()
                if lease is None:
                    pipe.zrem(RUNNING_KEY, running_member(release_id, destination))
                return  # final: a late redelivery must not regress it
            if expect_attempt is not None and int(current.get("attempts") or 0) != expect_attempt:
                pipe.multi()
                return  # a newer attempt owns the record now
            # HSET and HINCRBY keep a key's expiry: only a key this write creates (the record
            # itself, or the history list an ending attempt may start by moving the attempt
            # before it there) needs one, so a transition that creates none (an attempt's
            # start, the end of a destination's first attempt) costs no PTTL and no PEXPIREs.
            ends = current.get("state") == "running" and (attempt or outcome is not None)
            creates = not current or (ends and bool(current.get(LAST_ATTEMPT)))
            left = self._lifetime_left(pipe, release_id) if creates else None
            others = [] if left is not None or not creates else self._dest_names(pipe,
                                                                                  release_id)
            holder = pipe.get(lock[0]) if lock is not None else None
            update = dict(fields, updated_at=repr(now))
            if not current:  # unknown (expired, flushed): start a full record
                update = {**new_record(destination, (), now), **update}
            if seconds_since_start is not None and current.get("started_at"):
                started = to_float(current["started_at"]) or seconds_since_start
                update["seconds"] = repr(max(0.0, seconds_since_start - started))
            pipe.multi()
            if attempt and current.get("state") == "running":
                # The previous attempt never ended: its worker died (the broker redelivered
                # before any reaper noticed). Say so in the history.
                who = current.get("worker") or "a worker"
                update[LAST_ATTEMPT] = self._end_attempt(
                    pipe, release_id, destination, current, "lost",
                    f"{who} lost: its attempt never ended", "WorkerLost", now)
            if outcome is not None and current.get("state") == "running":
                update[LAST_ATTEMPT] = self._end_attempt(
                    pipe, release_id, destination, current, outcome, fields.get("last_error"),
                    fields.get("error_type"), now, seconds=to_float(fields.get("seconds")),
                    nbytes=int(fields.get("bytes") or 0))
            if attempt:
                # Read under WATCH, so the count is exact: one HSET, not an HSET and HINCRBY.
                update["attempts"] = str(number[0])
            pipe.hset(key, mapping=_fields(update))
            if lease is not None:
                pipe.zadd(RUNNING_KEY, {running_member(release_id, destination): lease})
            elif outcome is not None:
                pipe.zrem(RUNNING_KEY, running_member(release_id, destination))
            if not current:
                pipe.zadd(dests_key(release_id), {destination: math.inf}, nx=True)
                # A release nobody created (a hand-sent task rejected before
                # ensure_destination): without a head, `fanout status` could not find it.
                pipe.hsetnx(release_key(release_id), "created_at", repr(now))
                pipe.zadd(RELEASES_KEY, {release_id: now}, nx=True)
            if creates:
                self._expire(pipe, release_id, [destination, *others], left_ms=left,
                             records=not current)
            if lock is not None and holder is not None and text(holder) == lock[1]:
                pipe.delete(lock[0])
                if released is not None:
                    released.append(True)

        watched = [key] if lock is None else [key, lock[0]]
        self._redis.transaction(apply, *watched)  # type: ignore[no-untyped-call]
        return number[0]

    def _end_attempt(
        self, pipe: Pipeline, release_id: str, destination: str, current: Mapping[str, str],
        outcome: str, error: str | None, error_type: str | None, now: float, *,
        seconds: float | None = None, nbytes: int = 0,
    ) -> str:
        """Count the attempt that ends and return its entry, for the record's
        ``LAST_ATTEMPT`` (written by the caller's HSET); the entry there before goes to the
        history list."""
        started = to_float(current.get("started_at"))
        ended = now
        if outcome == "lost":
            # A lost attempt ended when its worker was last heard from, not when that was
            # noticed (the reaper, or the attempt that took over, says when in ``error``).
            ended = min(now, to_float(current.get("heartbeat_at")) or started or now)
        entry = Attempt(
            attempt=int(current.get("attempts") or 0), worker=current.get("worker") or None,
            started_at=started, ended_at=ended, outcome=outcome, error=error or None,
            error_type=error_type or None)
        previous = current.get(LAST_ATTEMPT)
        if previous:
            hkey = history_key(release_id, destination)
            pipe.rpush(hkey, previous)
            pipe.ltrim(hkey, -(HISTORY_LIMIT - 1), -1)  # the newest is in the record
        if self._observer is not None:
            took = seconds if seconds is not None else (now - started if started else None)
            self._observer.attempt_ended(pipe, destination, outcome, took, nbytes)
        return json.dumps(entry.to_dict(), sort_keys=True)

    def _lifetime_left(self, reader: Pipeline, release_id: str) -> int | None:
        """Milliseconds the release has left, when that is recent enough to align a write's
        keys to it; None when every key of the release is due a fresh lifetime.

        Renewing every key of the release at every write made each write cost as many
        commands as the release has destinations (a 200-destination release: 800 per write,
        160,000 in all). Now a write aligns only the keys it touched with the head's expiry,
        and the whole release is renewed at most once per tenth of the retention (an hour at
        most): it still expires whole, between 90% and 100% of the retention after its last
        write."""
        ttl_ms = max(1, math.ceil(self.retention)) * 1000
        # After WATCH the pipeline runs commands at once; the stubs do not know that.
        left = int(cast(Any, reader.pttl(release_key(release_id))))
        if left <= 0 or left < ttl_ms - min(ttl_ms // 10, 3_600_000):
            return None
        return left

    def _expire(self, pipe: Pipeline, release_id: str, destinations: Sequence[str], *,
                left_ms: int | None = None, histories: bool = True,
                records: bool = True) -> None:
        """``records``/``histories`` False: leave those keys' expiry as it is (a key that
        exists already has the release's, and HSET keeps it; one not made yet has none)."""
        if left_ms is not None:
            for name in dict.fromkeys(destinations):
                if records:
                    pipe.pexpire(dest_key(release_id, name), left_ms)
                pipe.pexpire(history_key(release_id, name), left_ms)
            return
        # Every key of the release, not just the one written: a release expires whole.
        ttl = max(1, math.ceil(self.retention))
        pipe.expire(release_key(release_id), ttl)
        pipe.expire(dests_key(release_id), ttl)
        for name in dict.fromkeys(destinations):
            pipe.expire(dest_key(release_id, name), ttl)
            if histories:
                pipe.expire(history_key(release_id, name), ttl)


def _fields(row: Mapping[str, str]) -> _Fields:
    return cast(_Fields, row)
