"""Tags follow release order: at each destination, each tag ends on the newest release that
reached it, whatever order attempts, retries, workers or hosts finish in.

Per (destination repository, tag), two keys beside the ledger::

    fanout:tag:<repo>:<tag>        hash: order, release, digest, at — the newest release that
                                   wrote the tag there (a landed write: recorded after its PUT)
    fanout:tag-lock:<repo>:<tag>   a lease: one writer of that tag at a time, across hosts

A copy's write of a tag (:meth:`TagOrder.write`): a read of the owner first, which settles a tag
a newer release holds (skip it) or one this release already wrote and finds in place (nothing to
do), at one Redis command and no registry request. Otherwise, under the tag's lease:

1. read the owner; one newer than this release → skip the write, report it superseded;
2. else make the registry's tag name this digest (a PUT unless it does already), fenced;
3. record this release as the owner (only if the owner is what step 1 read);
4. give the lease back. If it had lapsed meanwhile (a stalled process, a PUT held in the
   network), another writer may have written beside this one: look again under a fresh lease,
   and give the tag back to its owner if this write landed over a newer one. A copy stopped
   or failing once its PUT may have been sent (a lost lease, a time limit, an answer lost
   and its retry refused) does the same before it goes.

Step 4 runs as one task of its own on the loop, which the copy waits for however often it is
cancelled meanwhile: on waking, a stalled worker's heartbeat stops its copy at about the moment
the PUT's answer arrives, and a cancellation landing anywhere in step 4 (while the lease is
given back, before the settle starts) must not leave a tag on an older release. Its outcome is
logged, a failure included: the tag is then left for ``fanout verify`` to report.

The fence runs before every PUT: it refuses once the tag's lease, or the copy's own, is too
near its end (local monotonic time, so a stopped or partitioned worker, whose clock ran on,
sends nothing when it wakes). A registry cannot check a fencing token, so a PUT already on the
wire when its lease lapses is answered by step 4, and by ``fanout verify`` if its writer died.
Writers outside fanout cannot be fenced at all; ``fanout verify`` reports them.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar, cast

import redis

from registry.errors import TransientError
from registry.reference import Repository
from registry.tag_gate import TagWriter

from .checked_write import CheckedWrite, ScriptsRefused
from .locks import Lease, canonical_repository
from .records import decode_map, text

log = logging.getLogger("fanout.tags")
T = TypeVar("T")

OWNER_PREFIX = "fanout:tag:"
LOCK_PREFIX = "fanout:tag-lock:"
DEFAULT_LOCK_TTL = 15.0
# Passes of steps 1-4 before the copy gives up and is retried by the task tier: a lease that
# lapses again and again means a Redis or a process in trouble.
_PASSES = 3
# Each copy's step 4 while it runs (see TagOrder._finish).
_FINISHING: set[asyncio.Task[Any]] = set()
_LAPSED = "its lease lapsed mid-write; another writer may have written it beside this one"


class TagOrderUnavailable(TransientError):
    """The tag's lease could not be had or kept (Redis unreachable, or held too long)."""


@dataclass(frozen=True, slots=True)
class TagOwner:
    """The newest release that wrote a tag at a destination."""

    order: int
    release: str
    digest: str
    at: float

    def to_fields(self) -> dict[str, str]:
        return {"order": str(self.order), "release": self.release, "digest": self.digest,
                "at": repr(self.at)}

    @classmethod
    def from_fields(cls, row: Mapping[Any, Any]) -> TagOwner | None:
        fields = decode_map(row)
        if not fields.get("release"):
            return None
        try:
            return cls(int(fields.get("order") or 0), fields["release"],
                       fields.get("digest", ""), float(fields.get("at") or 0.0))
        except ValueError:
            return None  # a damaged record owns nothing


def owner_key(repository: str, tag: str) -> str:
    # A tag holds no ':', so the last one separates it from a repository with a port.
    return f"{OWNER_PREFIX}{canonical_repository(repository)}:{tag}"


def lock_key(repository: str, tag: str) -> str:
    return f"{LOCK_PREFIX}{canonical_repository(repository)}:{tag}"


class TagOwners:
    """Reads and records who owns each tag; ``ttl``: how long a record outlives its last
    write (longer than any release that could still write the tag is kept)."""

    def __init__(self, client: redis.Redis[Any], *, ttl: float) -> None:
        self._redis = client
        self._ttl_ms = max(1, int(ttl * 1000))
        self._scripts = True  # False once Redis has refused a script

    def get(self, repository: str, tag: str) -> TagOwner | None:
        return TagOwner.from_fields(self._redis.hgetall(owner_key(repository, tag)))

    def get_many(self, pairs: list[tuple[str, str]]) -> list[TagOwner | None]:
        """Each (repository, tag)'s owner, in one round trip."""
        with self._redis.pipeline(transaction=False) as pipe:
            for repository, tag in pairs:
                pipe.hgetall(owner_key(repository, tag))
            rows = pipe.execute()
        return [TagOwner.from_fields(row) for row in rows]

    def claim(self, repository: str, tag: str, owner: TagOwner,
              expected: TagOwner | None) -> bool:
        """Record ``owner`` if the record is still ``expected``; False when it changed (a
        writer whose lease had lapsed is not the only one any more)."""
        return self.claim_and_release(repository, tag, owner, expected, None)[0]

    def claim_and_release(self, repository: str, tag: str, owner: TagOwner,
                          expected: TagOwner | None, lease: Lease | None,
                          ) -> tuple[bool, bool]:
        """:meth:`claim`, and when it succeeds give ``lease`` back in the same transaction if
        it is still ours: (claimed, lease given back). One transaction rather than two: the
        lease's compare-and-delete was five commands of its own."""
        key = owner_key(repository, tag)
        short = self._claim_checked(key, owner, expected, lease)
        if short is not None:
            return short
        watched = [key] if lease is None else [key, lease.key]
        with self._redis.pipeline() as pipe:
            while True:
                try:
                    pipe.watch(*watched)
                    # After WATCH the pipeline runs commands at once; the stubs do not know that.
                    current = cast(Mapping[Any, Any], pipe.hgetall(key))
                    if TagOwner.from_fields(current) != expected:
                        pipe.unwatch()
                        return False, False
                    holder = pipe.get(lease.key) if lease is not None else None
                    ours = lease is not None and holder is not None and (
                        text(holder) == lease.token)
                    pipe.multi()
                    # Every field is written, so nothing of an older record survives the HSET.
                    pipe.hset(key, mapping=cast(Mapping[str | bytes, str], owner.to_fields()))
                    pipe.pexpire(key, self._ttl_ms)
                    if ours and lease is not None:
                        pipe.delete(lease.key)
                    pipe.execute()
                    if ours and lease is not None:
                        lease.held = False
                    return True, ours
                except redis.WatchError:
                    continue

    def _claim_checked(self, key: str, owner: TagOwner, expected: TagOwner | None,
                       lease: Lease | None) -> tuple[bool, bool] | None:
        """The claim as one script (``workers/checked_write.py``), applied only if the record
        holds ``expected``'s very fields (none: no release), so only where the transaction
        below would write the same; None otherwise, and that transaction decides."""
        if not self._scripts:
            return None
        want = expected.to_fields() if expected is not None else {"release": ""}
        write = CheckedWrite(key, want)
        # Every field is written, so nothing of an older record survives the HSET.
        write.hset(key, owner.to_fields())
        write.pexpire(key, self._ttl_ms)
        if lease is not None:
            write.delete_if(lease.key, lease.token)
        try:
            applied, released = write.apply(self._redis)
        except ScriptsRefused as exc:
            self._scripts = False
            log.warning("Redis runs no scripts (%s): tag claims go under WATCH", exc)
            return None
        if not applied:
            return None
        if released and lease is not None:
            lease.held = False
        return True, released


@dataclass
class _Held:
    lease: Lease
    # Monotonic time before which the lease is surely ours: taken before the request that
    # set or renewed it was sent, so it errs early.
    deadline: float
    renewer: asyncio.Task[None] | None = None
    kept: bool | None = None  # once given back: whether it was ours throughout


class TagOrder:
    """A :class:`registry.tag_gate.TagGate` for one copy of one release.

    ``lease``: whether the copy's own lease is still safe to act on (its heartbeat's word).
    After the copy, ``superseded`` maps each tag left to a newer release to that release.
    """

    def __init__(
        self, client: redis.Redis[Any], *, release_id: str, order: int,
        owner_ttl: float, lock_ttl: float = DEFAULT_LOCK_TTL,
        lease: Callable[[], bool] = lambda: True, wait: float | None = None,
        monotonic: Callable[[], float] = time.monotonic, clock: Callable[[], float] = time.time,
    ) -> None:
        self._redis = client
        self._owners = TagOwners(client, ttl=owner_ttl)
        self.release_id = release_id
        self.order = order
        self._lock_ttl = lock_ttl
        # A PUT is not started with less of the lease left than this.
        self._margin = lock_ttl / 3
        self._lease = lease
        # How long to wait for another writer of the same tag before the task tier retries.
        self._wait = wait if wait is not None else 2 * lock_ttl
        self._monotonic = monotonic
        self._clock = clock
        self.superseded: dict[str, str] = {}

    async def write(self, destination: Repository, tag: str, digest: str,
                    writer: TagWriter) -> str | None:
        repository = str(destination)
        # Read first, without the lease: a tag a newer release holds, or one this release has
        # written already and still in place (a redelivery, a no-op copy), needs no write, so
        # costs one read and no request to the registry.
        owner = await self._call(self._owners.get, repository, tag)
        if owner is not None and owner.order > self.order:
            self.superseded[tag] = owner.release
            return owner.release
        if self._is_mine(owner, digest) and await writer.known() == digest:
            return None
        sent = _Sent()
        held = await self._acquire(repository, tag)
        try:
            outcome = await self._write(held, repository, tag, digest, writer,
                                        trust_early=True, sent=sent)
        except _Raced:
            return await self._finish(held, repository, tag, digest, writer,
                                      why=_LAPSED)
        except BaseException as exc:
            if not sent.put:
                await self._release(held)
                raise
            # Stopped (a lost lease, a time limit) or failed with our PUT perhaps landed over a
            # newer release's write: settle the tag before going. The settle's own failure is
            # logged; the copy ends as it was going to.
            with contextlib.suppress(Exception):
                await self._finish(held, repository, tag, digest, writer,
                                   why=f"stopped with its PUT perhaps landed ({_named(exc)})")
            raise
        return await self._finish(held, repository, tag, digest, writer, outcome=outcome)

    async def _finish(self, held: _Held, repository: str, tag: str, digest: str,
                      writer: TagWriter, *, outcome: str | None = None,
                      why: str | None = None) -> str | None:
        """Step 4 (give the lease back, settle the tag if it lapsed or ``why`` says so) as one
        task of its own, waited for through any cancellation of this copy; ``outcome`` when
        there was nothing to settle."""
        task = asyncio.get_running_loop().create_task(
            self._release_then_settle(held, repository, tag, digest, writer, outcome, why))
        _FINISHING.add(task)  # the loop keeps only a weak reference to a task
        task.add_done_callback(_FINISHING.discard)
        return await _outlast(task)

    async def _release_then_settle(self, held: _Held, repository: str, tag: str, digest: str,
                                   writer: TagWriter, outcome: str | None,
                                   why: str | None) -> str | None:
        if await self._release(held) and why is None:
            return outcome
        log.warning("%s: settling tag %s:%s: %s", self.release_id, repository, tag,
                    why or _LAPSED)
        try:
            newer = await self._settle(repository, tag, digest, writer)
        except BaseException as exc:
            # Never silent: a tag left on an older release is what ``fanout verify`` reports.
            log.error("%s: could not settle tag %s:%s: %s", self.release_id, repository, tag,
                      _named(exc))
            raise
        log.info("%s: tag %s:%s settled: %s", self.release_id, repository, tag,
                 f"left to {newer}" if newer else f"names {digest[:19]}")
        return newer

    async def _settle(self, repository: str, tag: str, digest: str,
                      writer: TagWriter) -> str | None:
        """Steps 1-3 again under a fresh lease, trusting no earlier look at the registry."""
        for _ in range(_PASSES):
            held = await self._acquire(repository, tag)
            try:
                return await self._write(held, repository, tag, digest, writer,
                                         trust_early=False, sent=_Sent())
            except _Raced:
                continue
            finally:
                await self._release(held)
        raise TagOrderUnavailable(f"tag {repository}:{tag}: its owner kept changing while "
                                  f"this release wrote it ({_PASSES} tries)")

    async def _write(self, held: _Held, repository: str, tag: str, digest: str,
                     writer: TagWriter, *, trust_early: bool, sent: _Sent) -> str | None:
        owner = await self._call(self._owners.get, repository, tag)
        if owner is not None and owner.order > self.order:
            if not trust_early and await writer.head() != owner.digest:
                # This release's own write may have landed over the newer one: give the tag
                # back. Never a move backwards, so only the tag's lease fences it, not the
                # copy's (a copy whose lease was lost still undoes its own late write).
                log.warning("%s: giving tag %s:%s back to %s", self.release_id, repository,
                            tag, owner.release)
                await writer.restore(owner.digest,
                                     lambda: self._fence(held, repository, tag, copy=False))
            self.superseded[tag] = owner.release
            return owner.release
        ours = self._is_mine(owner, digest)
        current = await writer.known() if trust_early else await writer.head()
        if current == digest and trust_early and not ours:
            # The early HEAD may predate another writer's PUT; ask again before relying on it.
            current = await writer.head()
        if current != digest:
            def fence() -> None:
                self._fence(held, repository, tag)
                sent.put = True

            await writer.put(fence)
        if not ours:
            mine = TagOwner(self.order, self.release_id, digest, self._clock())
            claimed, released = await self._call(self._owners.claim_and_release, repository,
                                                 tag, mine, owner, held.lease)
            if not claimed:
                raise _Raced
            if released:
                # Given back with the claim: the lease was ours throughout.
                await self._stop_renewing(held)
                held.kept = True
        self.superseded.pop(tag, None)
        return None

    def _is_mine(self, owner: TagOwner | None, digest: str) -> bool:
        return owner is not None and (owner.order, owner.release, owner.digest) == (
            self.order, self.release_id, digest)

    def _fence(self, held: _Held, repository: str, tag: str, *, copy: bool = True) -> None:
        if copy and not self._lease():
            raise TagOrderUnavailable(f"the copy's lease ran out before writing tag "
                                      f"{repository}:{tag}; not written")
        if self._monotonic() > held.deadline - self._margin:
            raise TagOrderUnavailable(f"the lease on tag {repository}:{tag} is too near its "
                                      "end to write it; not written")

    # -- the tag's lease ------------------------------------------------------------------

    async def _acquire(self, repository: str, tag: str) -> _Held:
        lease = Lease(self._redis, lock_key(repository, tag), self._lock_ttl,
                      owner=self.release_id)
        give_up = self._monotonic() + self._wait
        pause = 0.02
        while True:
            sent = self._monotonic()
            if await self._call(lease.acquire):
                held = _Held(lease, sent + self._lock_ttl)
                held.renewer = asyncio.create_task(self._renew(held))
                return held
            if self._monotonic() > give_up:
                raise TagOrderUnavailable(
                    f"tag {repository}:{tag} was held by another writer for over "
                    f"{self._wait:g} s (holder {await self._call(lease.holder)})")
            await asyncio.sleep(pause * (0.5 + random.random()))  # noqa: S311 - jitter
            pause = min(pause * 2, 0.5)

    async def _renew(self, held: _Held) -> None:
        while True:
            await asyncio.sleep(self._lock_ttl / 4)
            sent = self._monotonic()
            try:
                if not await asyncio.to_thread(held.lease.renew):
                    return  # lapsed and taken: the fence refuses from here on
                held.deadline = sent + self._lock_ttl
            except redis.RedisError as exc:
                log.warning("could not renew lease %s: %s", held.lease.key, exc)

    async def _release(self, held: _Held) -> bool:
        """Give the lease back (once; later calls repeat the answer); True when it was ours
        throughout."""
        if held.kept is not None:
            return held.kept
        held.kept = await self._give_back(held)
        return held.kept

    async def _stop_renewing(self, held: _Held) -> None:
        if held.renewer is not None:
            held.renewer.cancel()
            await asyncio.gather(held.renewer, return_exceptions=True)

    async def _give_back(self, held: _Held) -> bool:
        await self._stop_renewing(held)
        surely_ours = self._monotonic() < held.deadline
        try:
            released = await asyncio.to_thread(held.lease.release)
        except redis.RedisError as exc:
            log.warning("could not release lease %s: %s", held.lease.key, exc)
            return surely_ours  # it expires on its own
        return released or surely_ours

    async def _call(self, function: Callable[..., T], *args: Any) -> T:
        """A blocking Redis call off the event loop; its failure is a transient one."""
        try:
            return await asyncio.to_thread(function, *args)
        except redis.RedisError as exc:
            raise TagOrderUnavailable(f"tag order: Redis failed: {exc}") from exc


class TagOrdering:
    """Makes each copy's :class:`TagOrder`: one per worker process, its settings fixed."""

    def __init__(self, client: redis.Redis[Any], *, lock_ttl: float, owner_ttl: float) -> None:
        self._redis = client
        self._lock_ttl = lock_ttl
        self._owner_ttl = owner_ttl

    def gate(self, release_id: str, order: int, lease: Callable[[], bool]) -> TagOrder:
        return TagOrder(self._redis, release_id=release_id, order=order,
                        owner_ttl=self._owner_ttl, lock_ttl=self._lock_ttl, lease=lease)


@dataclass
class _Sent:
    put: bool = False


def _named(exc: BaseException) -> str:
    # str() of a registry error is redacted; its repr() is not.
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


async def _outlast(task: asyncio.Task[T]) -> T:
    """``task``'s result, waited for however often the caller is cancelled meanwhile; the
    cancellation is raised once ``task`` is done. A cancellation must not end a copy before
    it has undone a write that would move a tag backwards."""
    cancelled: asyncio.CancelledError | None = None
    while not task.done():
        try:
            await asyncio.wait([task])
        except asyncio.CancelledError as exc:
            cancelled = exc
    if cancelled is not None:
        raise cancelled
    return task.result()


class _Raced(Exception):
    """Another writer changed the tag's owner while this one held (it thought) the lease."""

