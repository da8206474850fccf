"""The blob-location index in Redis, so a blob one worker landed is mounted, not sent, by all.

One sorted set per (registry, blob), ``fanout:blob:<host[:port]>/<digest>``: its members are
repositories seen to hold the blob, scored by when (wall clock, as in ``workers.holds``). A
record adds or refreshes its member: one ``ZADD``. Its upkeep — dropping members older than the
TTL (``FANOUT_BLOB_INDEX_TTL``, a day) and all but the newest ``PER_BLOB``, and pushing the key's
expiry out to the TTL, so an index nobody writes to empties itself — rides along with a
process's first record of a key, then with every ``PER_BLOB``-th, or the first after a tenth of
the TTL: a copy's records cost one command each (they were six, with ``MULTI``/``EXEC``), a set
holds at most about twice ``PER_BLOB`` members per writing process between upkeeps, and a
member outlives its record by at least 90% of the TTL. ``holders`` reads the members younger
than the TTL, newest first, with their scores: one command.

A fan-out to many repositories of one registry asks the same keys once per copy: a read and a
record per blob, six of a two-layer image's ~60 commands (issue 18). So a process trusts its
last non-empty read of a key for ``TRUST_S`` (an empty one not at all: an upload landing
elsewhere is looked for at once), keeps its own records and forgets in that view, and drops it
when another worker claims the blob's upload (the index is about to change). And a record that
would add nothing is not sent: the repository is in the view already, recorded less than a
tenth of the TTL ago, or the view holds enough members that fresh for a reader: one per hint
the mover tries, and one more for the repository it copies to (a reader never mounts from
there); more would only push out one another. A key whose records are skipped so still lives
at least 80% of the TTL: a member that fresh was recorded by a process that ran the upkeep (the
expiry) at most a tenth of the TTL before.

Entries are hints (``registry/locations.py``): a lost or stale one costs an upload, never a copy.
So the index advises and never fails a copy. Its client has short timeouts and no retries; an
error counts as "no hint" (or a record not kept), is logged at most once a minute, and for a few
seconds after it Redis is not asked at all, so a Redis that is gone costs a copy no waiting.

The engine calls it from its event loop and redis-py blocks: each call runs in a thread
(``asyncio.to_thread``), and one sync client, thread-safe, serves every loop of the process.
"""

from __future__ import annotations

import asyncio
import logging
import math
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

import redis

from registry.locations import HINT_TRIES, PER_BLOB, UPLOAD_CLAIM_SECONDS

from .connections import SentinelOptions, advisory_client, error_text, scrub

if TYPE_CHECKING:
    from .settings import WorkerSettings

log = logging.getLogger("fanout.locations")
T = TypeVar("T")

KEY_PREFIX = "fanout:blob:"
# An upload's claim (registry/upload_claims.py): the claimant, expiring unless renewed.
CLAIM_PREFIX = "fanout:uploading:"
DEFAULT_TTL = 86400.0
# After an error, how long the index is not asked (no hints, records dropped).
_QUIET_S = 5.0
# At most one warning per this many seconds: a Redis that is down must not flood the log.
_LOG_EVERY_S = 60.0
# Keys whose upkeep this process remembers; past that it forgets them all (each then gets its
# upkeep again at its next record).
_UPKEEP_KEYS = 4096
# How long a read of a key's holders is trusted, monotonic seconds: hints are hints, and a
# release's copies to one registry run within seconds of each other.
TRUST_S = 2.0


class RedisLocations:
    """A :class:`registry.locations.BlobLocations` in Redis, shared by every worker using it."""

    def __init__(
        self, client: redis.Redis[Any], prefix: str = KEY_PREFIX, *, ttl: float = DEFAULT_TTL,
        per_blob: int = PER_BLOB, url: str = "", claim_prefix: str = CLAIM_PREFIX,
        clock: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self._redis = client
        self._prefix = prefix
        self._claim_prefix = claim_prefix
        self._ttl = ttl
        self._per_blob = max(1, per_blob)
        self._url = url  # only to keep its password out of a logged error
        self._clock = clock
        self._monotonic = monotonic
        self._quiet_until = 0.0
        self._logged_at: float | None = None
        # key -> (wall-clock time of its last upkeep here, records since)
        self._upkeep: dict[str, tuple[float, int]] = {}
        # key -> (monotonic time of the read, member -> score): see TRUST_S. Each view is
        # replaced, never changed in place, under the lock (calls run in threads).
        self._views: dict[str, tuple[float, dict[str, float]]] = {}
        self._views_lock = threading.Lock()

    @classmethod
    def from_url(cls, url: str, prefix: str = KEY_PREFIX, *, ttl: float = DEFAULT_TTL,
                 sentinel: SentinelOptions | None = None) -> RedisLocations:
        """An index on its own client for ``url`` (the ledger's Redis): short timeouts, no
        retries. Nothing connects until the first call."""
        client = advisory_client(url, sentinel)
        return cls(client, prefix, ttl=ttl, url=url)

    @classmethod
    def from_settings(cls, settings: WorkerSettings) -> RedisLocations:
        """An index in the ledger's Redis, as ``settings`` name it (Sentinel included)."""
        return cls.from_url(settings.ledger_url, ttl=settings.blob_index_ttl,
                            sentinel=settings.sentinel)

    def key(self, registry: str, digest: str) -> str:
        return f"{self._prefix}{registry}/{digest}"

    async def record(self, registry: str, digest: str, repository: str) -> None:
        await self._ask(self._record, None, self.key(registry, digest), repository)

    async def holders(self, registry: str, digest: str) -> list[str]:
        return await self._ask(self._holders, [], self.key(registry, digest))

    async def forget(self, registry: str, digest: str, repository: str) -> None:
        await self._ask(self._forget, None, self.key(registry, digest), repository)

    def claim_key(self, registry: str, digest: str) -> str:
        return f"{self._claim_prefix}{registry}/{digest}"

    async def claim_upload(self, registry: str, digest: str, claimant: str) -> str | None:
        # A Redis that fails says "yours": every copy uploads, as without claims.
        holder = await self._ask(self._claim, None, self.claim_key(registry, digest), claimant)
        if holder is not None:  # its upload will be recorded: read the index afresh then
            self._drop_view(self.key(registry, digest))
        return holder

    async def upload_claimant(self, registry: str, digest: str) -> str | None:
        return await self._ask(self._claimant, None, self.claim_key(registry, digest))

    async def renew_upload(self, registry: str, digest: str, claimant: str) -> None:
        await self._ask(self._if_ours, None, self.claim_key(registry, digest), claimant, "renew")

    async def release_upload(self, registry: str, digest: str, claimant: str) -> None:
        await self._ask(self._if_ours, None, self.claim_key(registry, digest), claimant, "drop")

    # -- the Redis commands (in a thread) ------------------------------------------------------

    def _record(self, key: str, repository: str) -> None:
        now = self._clock()
        view = self._view(key)
        if view is not None and self._adds_nothing(view, repository, now):
            return
        last, since = self._upkeep.get(key, (-math.inf, 0))
        if since + 1 < self._per_blob and now - last < self._ttl / 10:
            self._redis.zadd(key, {repository: now})
            self._upkeep[key] = (last, since + 1)
            self._note(key, repository, now)
            return
        # Not a transaction: a reader that sees the member before the trim reads the newest
        # PER_BLOB anyway, and none of it is worth more than a hint.
        with self._redis.pipeline(transaction=False) as pipe:
            pipe.zadd(key, {repository: now})
            pipe.zremrangebyscore(key, "-inf", f"({now - self._ttl!r}")
            pipe.zremrangebyrank(key, 0, -(self._per_blob + 1))
            pipe.expire(key, math.ceil(self._ttl))
            pipe.execute()
        if len(self._upkeep) >= _UPKEEP_KEYS:
            self._upkeep.clear()
        self._upkeep[key] = (now, 0)
        self._note(key, repository, now)

    def _holders(self, key: str) -> list[str]:
        now = self._clock()
        view = self._view(key)
        if view is None:
            found = self._redis.zrevrangebyscore(key, "+inf", f"({now - self._ttl!r}",
                                                 start=0, num=self._per_blob, withscores=True)
            view = {str(member): float(score) for member, score in found}
            if view:
                with self._views_lock:
                    if len(self._views) >= _UPKEEP_KEYS:
                        self._views.clear()
                    self._views[key] = (self._monotonic(), view)
        # Newest first, ties as ZREVRANGEBYSCORE breaks them (the greater member first).
        live = sorted(((score, member) for member, score in view.items()
                       if score > now - self._ttl), reverse=True)
        return [member for _, member in live[:self._per_blob]]

    def _forget(self, key: str, repository: str) -> None:
        self._redis.zrem(key, repository)
        self._drop_view(key)

    # -- this process's view of a key (see TRUST_S) -----------------------------------------

    def _view(self, key: str) -> dict[str, float] | None:
        """The members and scores last read of ``key``, with this process's records since;
        None when not read within ``TRUST_S``."""
        with self._views_lock:
            found = self._views.get(key)
            if found is None:
                return None
            if self._monotonic() - found[0] > TRUST_S:
                del self._views[key]
                return None
            return found[1]

    def _note(self, key: str, repository: str, now: float) -> None:
        with self._views_lock:
            found = self._views.get(key)
            if found is not None:
                self._views[key] = (found[0], {**found[1], repository: now})

    def _drop_view(self, key: str) -> None:
        with self._views_lock:
            self._views.pop(key, None)

    def _adds_nothing(self, view: dict[str, float], repository: str, now: float) -> bool:
        """Whether recording ``repository`` now would tell later readers nothing new."""
        fresh = now - self._ttl / 10
        if view.get(repository, -math.inf) > fresh:
            return True
        enough = min(self._per_blob, HINT_TRIES + 1)
        return sum(1 for score in view.values() if score > fresh) >= enough

    def _claim(self, key: str, claimant: str) -> str | None:
        ms = round(UPLOAD_CLAIM_SECONDS * 1000)
        with self._redis.pipeline(transaction=True) as pipe:
            pipe.set(key, claimant, nx=True, px=ms)
            pipe.get(key)
            taken, holder = pipe.execute()
        if taken or holder is None:  # ours, or lapsed between the two: upload
            return None
        return str(holder)

    def _claimant(self, key: str) -> str | None:
        found = self._redis.get(key)
        return None if found is None else str(found)

    def _if_ours(self, key: str, claimant: str, action: str) -> None:
        """Renew or drop the claim only while it is ``claimant``'s: one that lapsed and was
        taken by another copy stays theirs."""
        def apply(pipe: Any) -> None:
            if pipe.get(key) != claimant:
                return
            pipe.multi()
            if action == "renew":
                pipe.pexpire(key, round(UPLOAD_CLAIM_SECONDS * 1000))
            else:
                pipe.delete(key)

        self._redis.transaction(apply, key)  # type: ignore[no-untyped-call]

    async def _ask(self, command: Callable[..., T], otherwise: T, *args: str) -> T:
        """``command(*args)`` off the loop; ``otherwise`` when Redis fails or was just failing."""
        if self._monotonic() < self._quiet_until:
            return otherwise
        try:
            return await asyncio.to_thread(command, *args)
        except redis.RedisError as exc:
            now = self._monotonic()
            self._quiet_until = now + _QUIET_S
            if self._logged_at is None or now - self._logged_at >= _LOG_EVERY_S:
                self._logged_at = now
                log.warning("the blob-location index is unavailable (copies upload rather "
                            "than mount until it is back): %s",
                            scrub(error_text(exc), self._url))
            return otherwise
