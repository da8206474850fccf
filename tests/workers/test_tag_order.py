"""The tag order rule, decided per tag write (workers/tag_order.py), against a fake registry tag
and a fakeredis: every interleaving of writers ends on the newest release that wrote.

The real-process cases (workers, Redis, a registry behind a proxy that holds PUTs) are in
tests/integration/test_tag_order_e2e.py.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Awaitable, Callable
from typing import Any

import fakeredis
import pytest
import redis

from registry.errors import ConnectionFailed
from registry.reference import parse_repository
from registry.tag_gate import Fence
from tests.support.round_trips import CountingFakeRedis
from workers.checked_write import CheckedWrite
from workers.tag_order import (
    TagOrder,
    TagOrderUnavailable,
    TagOwner,
    TagOwners,
    lock_key,
    owner_key,
)

DEST = parse_repository("registry.example/acme/app")
TAG = "latest"


def digest(n: int) -> str:
    return f"sha256:{n:064x}"


class Tag:
    """One tag at the registry, and everything sent to it."""

    def __init__(self, value: str | None = None) -> None:
        self.value = value
        self.puts: list[str] = []
        self.heads = 0


class Writer:
    """A copy's view of the tag: ``early`` is what its HEAD said when the copy began;
    ``during_put`` runs just before a PUT lands (to interleave another writer there)."""

    def __init__(self, tag: Tag, mine: str, *, early: str | None = None,
                 during_put: Callable[[], Awaitable[None]] | None = None) -> None:
        self.tag = tag
        self.mine = mine
        self.early = early
        self.during_put = during_put
        self.restored: list[str] = []

    async def known(self) -> str | None:
        return self.early

    async def head(self) -> str | None:
        self.tag.heads += 1
        return self.tag.value

    async def put(self, fence: Fence) -> None:
        fence()
        if self.during_put is not None:
            await self.during_put()
        self.tag.value = self.mine
        self.tag.puts.append(self.mine)

    async def restore(self, found: str, fence: Fence) -> None:
        fence()
        self.tag.value = found
        self.tag.puts.append(found)
        self.restored.append(found)


@pytest.fixture
def server() -> fakeredis.FakeServer:
    return fakeredis.FakeServer()


@pytest.fixture
def client(server: fakeredis.FakeServer) -> redis.Redis[Any]:
    return fakeredis.FakeRedis(server=server, decode_responses=True)


def gate(client: redis.Redis[Any], n: int, **kwargs: Any) -> TagOrder:
    """Release ``rel-n``, n-th in the order."""
    kwargs.setdefault("lock_ttl", 3.0)
    return TagOrder(client, release_id=f"rel-{n}", order=n, owner_ttl=3600, **kwargs)


def owner(client: redis.Redis[Any]) -> TagOwner | None:
    return TagOwners(client, ttl=60).get(str(DEST), TAG)


async def write(order: TagOrder, tag: Tag, n: int, **kwargs: Any) -> str | None:
    return await order.write(DEST, TAG, digest(n), Writer(tag, digest(n), **kwargs))


def test_a_first_write_puts_and_records_the_owner(client: redis.Redis[Any]) -> None:
    tag = Tag()
    assert asyncio.run(write(gate(client, 1), tag, 1)) is None
    assert tag.value == digest(1) and tag.puts == [digest(1)]
    found = owner(client)
    assert found is not None and (found.order, found.release, found.digest) == (
        1, "rel-1", digest(1))
    assert 0 < client.pttl(owner_key(str(DEST), TAG)) <= 3600 * 1000
    assert not client.exists(lock_key(str(DEST), TAG))  # the lease was given back


def test_an_older_release_leaves_a_newer_ones_tag_and_says_so(client: redis.Redis[Any]) -> None:
    tag = Tag()
    asyncio.run(write(gate(client, 5), tag, 5))
    older = gate(client, 3)
    assert asyncio.run(write(older, tag, 3, early=digest(5))) == "rel-5"
    assert tag.value == digest(5) and tag.puts == [digest(5)]  # no PUT of the older one
    assert older.superseded == {TAG: "rel-5"}
    found = owner(client)
    assert found is not None and found.release == "rel-5"


def test_a_newer_release_moves_the_tag_forward(client: redis.Redis[Any]) -> None:
    tag = Tag()
    asyncio.run(write(gate(client, 1), tag, 1))
    newer = gate(client, 2)
    assert asyncio.run(write(newer, tag, 2, early=digest(1))) is None
    assert tag.value == digest(2) and newer.superseded == {}
    found = owner(client)
    assert found is not None and found.release == "rel-2"


def test_a_deliberate_rollback_is_a_new_release_and_wins(client: redis.Redis[Any]) -> None:
    tag = Tag()
    asyncio.run(write(gate(client, 1), tag, 1))
    asyncio.run(write(gate(client, 2), tag, 2, early=digest(1)))
    rollback = TagOrder(client, release_id="rel-3", order=3, owner_ttl=3600, lock_ttl=3.0)
    assert asyncio.run(rollback.write(DEST, TAG, digest(1),
                                      Writer(tag, digest(1), early=digest(2)))) is None
    assert tag.value == digest(1)
    found = owner(client)
    assert found is not None and (found.release, found.digest) == ("rel-3", digest(1))


def test_the_no_op_path_adds_no_registry_request_and_one_redis_read(
    client: redis.Redis[Any], server: fakeredis.FakeServer,
) -> None:
    tag = Tag()
    asyncio.run(write(gate(client, 4), tag, 4))
    tag.heads = 0
    counting = CountingFakeRedis(server=server, decode_responses=True)
    again = gate(counting, 4)  # a redelivery or a retry of the same release
    assert asyncio.run(write(again, tag, 4, early=digest(4))) is None
    assert tag.puts == [digest(4)] and tag.heads == 0
    assert counting.tally.count == 1 and not client.exists(lock_key(str(DEST), TAG))


def test_a_first_write_gives_its_lease_back_with_the_claim(
    client: redis.Redis[Any], server: fakeredis.FakeServer,
) -> None:
    tag = Tag()
    counting = CountingFakeRedis(server=server, decode_responses=True)
    CheckedWrite("warm", {}).apply(counting)  # a worker's first script loads it
    counting.tally.reset()
    assert asyncio.run(write(gate(counting, 6), tag, 6)) is None
    assert tag.puts == [digest(6)] and not client.exists(lock_key(str(DEST), TAG))
    found = owner(client)
    assert found is not None and found.release == "rel-6"
    # The early read, the lease, the read under it, then one script that records the owner
    # if it is still the one read and gives the lease back if still ours.
    assert counting.tally.commands == ["HGETALL", "SET", "HGETALL", "EVALSHA"], \
        counting.tally.commands


def test_a_superseded_tag_costs_one_redis_read(
    client: redis.Redis[Any], server: fakeredis.FakeServer,
) -> None:
    tag = Tag()
    asyncio.run(write(gate(client, 5), tag, 5))
    counting = CountingFakeRedis(server=server, decode_responses=True)
    assert asyncio.run(write(gate(counting, 3), tag, 3, early=digest(5))) == "rel-5"
    assert counting.tally.count == 1 and tag.puts == [digest(5)]


def test_a_tag_already_in_place_is_checked_again_before_it_is_claimed(
    client: redis.Redis[Any],
) -> None:
    # The copy's early HEAD said "in place", but an older release wrote the tag since.
    tag = Tag(digest(1))
    asyncio.run(write(gate(client, 1), tag, 1, early=None))
    assert asyncio.run(write(gate(client, 2), tag, 2, early=digest(2))) is None
    assert tag.heads == 1 and tag.value == digest(2)


def test_a_newer_release_that_failed_before_writing_blocks_nothing(
    client: redis.Redis[Any],
) -> None:
    # Release 2 never reached its tag write (its copy failed): only landed writes count.
    tag = Tag()
    assert asyncio.run(write(gate(client, 1), tag, 1)) is None
    assert tag.value == digest(1)


@pytest.mark.parametrize("arrival", list(itertools.permutations([1, 2, 3])))
def test_every_order_of_arrival_ends_on_the_newest(
    client: redis.Redis[Any], arrival: tuple[int, ...],
) -> None:
    tag = Tag()

    async def main() -> None:
        async def one(position: int, n: int) -> None:
            await asyncio.sleep(0.01 * position)
            # Each copy's early HEAD was taken before any of them wrote.
            await write(gate(client, n), tag, n, early=None)
        await asyncio.gather(*(one(i, n) for i, n in enumerate(arrival)))

    asyncio.run(main())
    assert tag.value == digest(3)
    found = owner(client)
    assert found is not None and found.release == "rel-3"
    # Once the newest has written, nobody older writes after it.
    assert tag.puts[tag.puts.index(digest(3)):] == [digest(3)]


def test_writers_of_one_tag_take_turns(client: redis.Redis[Any]) -> None:
    tag = Tag()
    inside: list[int] = []
    overlaps: list[int] = []

    def track(n: int) -> Callable[[], Awaitable[None]]:
        async def during() -> None:
            if inside:
                overlaps.append(n)
            inside.append(n)
            await asyncio.sleep(0.05)
            inside.remove(n)
        return during

    async def main() -> None:
        await asyncio.gather(*(write(gate(client, n), tag, n, during_put=track(n))
                               for n in (2, 1, 3)))

    asyncio.run(main())
    assert overlaps == [] and tag.value == digest(3)


def test_a_writer_waits_for_a_held_lease_then_gives_up(client: redis.Redis[Any]) -> None:
    client.set(lock_key(str(DEST), TAG), "someone-else", px=60_000)
    tag = Tag()
    with pytest.raises(TagOrderUnavailable, match="held by another writer") as caught:
        asyncio.run(write(gate(client, 1, wait=0.2), tag, 1))
    assert caught.value.transient and tag.puts == []


def test_a_lease_given_back_lets_the_waiter_in(client: redis.Redis[Any]) -> None:
    key = lock_key(str(DEST), TAG)
    client.set(key, "someone-else", px=60_000)
    tag = Tag()

    async def main() -> str | None:
        waiter = asyncio.create_task(write(gate(client, 1), tag, 1))
        await asyncio.sleep(0.1)
        assert tag.puts == []
        client.delete(key)
        return await waiter

    assert asyncio.run(main()) is None and tag.value == digest(1)


def test_a_copy_whose_own_lease_ran_out_writes_nothing(client: redis.Redis[Any]) -> None:
    tag = Tag()
    with pytest.raises(TagOrderUnavailable, match="copy's lease ran out"):
        asyncio.run(write(gate(client, 1, lease=lambda: False), tag, 1))
    assert tag.puts == [] and owner(client) is None


def test_a_stalled_writer_wakes_past_its_tag_lease_and_writes_nothing(
    client: redis.Redis[Any],
) -> None:
    # The process stopped between taking the lease and its PUT: its monotonic clock ran on.
    now = [100.0]
    order = gate(client, 1, monotonic=lambda: now[0])
    tag = Tag()

    class Stalls(Writer):
        async def known(self) -> str | None:
            now[0] += 10.0  # longer than the 3 s lease
            return None

    with pytest.raises(TagOrderUnavailable, match="too near its end"):
        asyncio.run(order.write(DEST, TAG, digest(1), Stalls(tag, digest(1))))
    assert tag.puts == []


def test_a_put_that_lands_after_its_lease_lapsed_is_undone(client: redis.Redis[Any]) -> None:
    # Release 1's PUT is held in the network past its lease; release 2 takes the lease, writes
    # and records; then release 1's PUT lands over it. Release 1 finds its lease gone, looks
    # again, and gives the tag back to release 2.
    tag = Tag()
    key = lock_key(str(DEST), TAG)
    newer = gate(client, 2)

    async def held_in_the_network() -> None:
        client.delete(key)  # the lease lapsed while the PUT was on its way
        assert await write(newer, tag, 2, early=None) is None
        assert tag.value == digest(2)

    older = gate(client, 1)
    writer = Writer(tag, digest(1), during_put=held_in_the_network)
    assert asyncio.run(older.write(DEST, TAG, digest(1), writer)) == "rel-2"
    assert tag.puts == [digest(2), digest(1), digest(2)]  # the late PUT, then the fix
    assert writer.restored == [digest(2)] and tag.value == digest(2)
    assert older.superseded == {TAG: "rel-2"}
    found = owner(client)
    assert found is not None and found.release == "rel-2"


def test_a_copy_stopped_while_its_put_was_on_the_wire_still_settles_the_tag(
    client: redis.Redis[Any],
) -> None:
    # As above, but the copy is cancelled (its lease lost) before the PUT's answer arrives:
    # the tag is settled before the cancellation goes on.
    tag = Tag()
    key = lock_key(str(DEST), TAG)

    async def lands_late_then_stopped() -> None:
        client.delete(key)
        assert await write(gate(client, 2), tag, 2, early=None) is None
        tag.value = digest(1)  # the held PUT lands over release 2's
        current = asyncio.current_task()
        assert current is not None
        current.cancel()
        await asyncio.sleep(5)

    # The copy's lease holds when its PUT leaves and is gone after: the restore is fenced
    # by the tag's lease alone.
    leases = iter([True])
    older = gate(client, 1, lease=lambda: next(leases, False))
    writer = Writer(tag, digest(1), during_put=lands_late_then_stopped)

    async def main() -> None:
        await older.write(DEST, TAG, digest(1), writer)

    with pytest.raises(asyncio.CancelledError):
        asyncio.run(main())
    assert writer.restored == [digest(2)] and tag.value == digest(2)
    assert older.superseded == {TAG: "rel-2"}


class CancelsCopy:
    """A monotonic clock that, once armed, cancels the copy's task at its next reading: the
    heartbeat's abort arriving at that moment. The writer reads the clock as it gives its
    lease back, between the awaits there, so that is where an armed clock stops it."""

    def __init__(self) -> None:
        self.copy: asyncio.Task[Any] | None = None
        self.armed = False

    def __call__(self) -> float:
        if self.armed and self.copy is not None:
            self.armed = False
            self.copy.cancel()
        return 100.0

    def run(self, work: Awaitable[str | None]) -> None:
        async def main() -> None:
            self.copy = asyncio.ensure_future(work)
            await self.copy
        asyncio.run(main())


def test_a_copy_stopped_as_it_gives_its_lease_back_still_settles_the_tag(
    client: redis.Redis[Any],
) -> None:
    # The late PUT lands over release 2's and its answer arrives; the older writer finds the
    # owner changed and gives its lease back, and right then its copy is stopped (on waking,
    # the heartbeat's abort races the PUT's answer). The tag must still go back to release 2.
    tag = Tag()
    clock = CancelsCopy()

    async def held_in_the_network() -> None:
        client.delete(lock_key(str(DEST), TAG))
        assert await write(gate(client, 2), tag, 2, early=None) is None
        clock.armed = True

    older = gate(client, 1, monotonic=clock)
    writer = Writer(tag, digest(1), during_put=held_in_the_network)
    with pytest.raises(asyncio.CancelledError):
        clock.run(older.write(DEST, TAG, digest(1), writer))
    # asyncio.run cancels what is left when the copy ends: the settle was waited for.
    assert writer.restored == [digest(2)] and tag.value == digest(2)
    assert older.superseded == {TAG: "rel-2"}
    found = owner(client)
    assert found is not None and found.release == "rel-2"


def test_a_copy_stopped_twice_with_its_put_on_the_wire_still_settles_the_tag(
    client: redis.Redis[Any],
) -> None:
    # Stopped while the PUT is on the wire, then again as it gives its lease back.
    tag = Tag()
    clock = CancelsCopy()

    async def lands_late_then_stopped() -> None:
        client.delete(lock_key(str(DEST), TAG))
        assert await write(gate(client, 2), tag, 2, early=None) is None
        tag.value = digest(1)  # the held PUT lands over release 2's
        assert clock.copy is not None
        clock.copy.cancel()
        clock.armed = True
        await asyncio.sleep(5)

    leases = iter([True])
    older = gate(client, 1, monotonic=clock, lease=lambda: next(leases, False))
    writer = Writer(tag, digest(1), during_put=lands_late_then_stopped)
    with pytest.raises(asyncio.CancelledError):
        clock.run(older.write(DEST, TAG, digest(1), writer))
    assert not clock.armed  # the second cancellation did arrive
    assert writer.restored == [digest(2)] and tag.value == digest(2)
    found = owner(client)
    assert found is not None and found.release == "rel-2"


def test_a_put_whose_answer_is_lost_is_settled_before_the_failure_is_raised(
    client: redis.Redis[Any],
) -> None:
    # The PUT lands over release 2's, its answer is lost, and the retry is refused by the
    # fence (the copy's lease is gone by now): the copy fails, but not before settling.
    tag = Tag()

    async def held_in_the_network() -> None:
        client.delete(lock_key(str(DEST), TAG))
        assert await write(gate(client, 2), tag, 2, early=None) is None

    class AnswerLost(Writer):
        async def put(self, fence: Fence) -> None:
            await super().put(fence)
            fence()  # the retry

    leases = iter([True])
    older = gate(client, 1, lease=lambda: next(leases, False))
    writer = AnswerLost(tag, digest(1), during_put=held_in_the_network)
    with pytest.raises(TagOrderUnavailable, match="copy's lease ran out"):
        asyncio.run(older.write(DEST, TAG, digest(1), writer))
    assert writer.restored == [digest(2)] and tag.value == digest(2)
    found = owner(client)
    assert found is not None and found.release == "rel-2"


def test_a_settle_that_fails_says_so(
    client: redis.Redis[Any], caplog: pytest.LogCaptureFixture,
) -> None:
    tag = Tag()

    async def lands_late_then_stopped() -> None:
        client.delete(lock_key(str(DEST), TAG))
        assert await write(gate(client, 2), tag, 2, early=None) is None
        tag.value = digest(1)
        current = asyncio.current_task()
        assert current is not None
        current.cancel()
        await asyncio.sleep(5)

    class RestoreFails(Writer):
        async def restore(self, found: str, fence: Fence) -> None:
            raise ConnectionFailed("registry unreachable")

    writer = RestoreFails(tag, digest(1), during_put=lands_late_then_stopped)
    with pytest.raises(asyncio.CancelledError):  # the copy's own ending, not the settle's
        asyncio.run(gate(client, 1).write(DEST, TAG, digest(1), writer))
    failures = [r for r in caplog.records
                if r.levelname == "ERROR" and "could not settle" in r.getMessage()]
    assert len(failures) == 1 and "registry unreachable" in failures[0].getMessage()
    assert tag.value == digest(1)  # left for fanout verify to report


def test_redis_down_is_a_transient_failure_before_any_put() -> None:
    broken = redis.Redis(host="127.0.0.1", port=1, socket_connect_timeout=0.2)
    tag = Tag()
    with pytest.raises(TagOrderUnavailable, match="Redis failed") as caught:
        asyncio.run(write(gate(broken, 1), tag, 1))
    assert caught.value.transient and tag.puts == []


def test_owner_records_read_in_one_round_trip(client: redis.Redis[Any]) -> None:
    tag = Tag()
    asyncio.run(write(gate(client, 1), tag, 1))
    owners = TagOwners(client, ttl=60)
    found = owners.get_many([(str(DEST), TAG), (str(DEST), "other")])
    assert found[0] is not None and found[0].release == "rel-1" and found[1] is None
