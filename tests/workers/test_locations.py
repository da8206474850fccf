"""The blob-location index in Redis: fakeredis for the logic, the real Redis for its expiry,
and a Redis that is down, which must cost a copy nothing but its hints."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Iterator
from typing import Any, TypeVar

import pytest
import redis

from registry import upload_claims
from registry.envconfig import ConfigError
from registry.locations import UPLOAD_CLAIM_SECONDS, BlobLocations, MemoryLocations
from tests.support import shared_redis
from tests.support.ports import free_port
from tests.workers.conftest import FakeClock
from tests.workers.engine_fakes import CapturingRegistries, NoCopier
from workers import engine as engine_module
from workers.engine import CopyEngine
from workers.job import CopyJob
from workers.locations import CLAIM_PREFIX, DEFAULT_TTL, KEY_PREFIX, RedisLocations
from workers.settings import WorkerSettings

T = TypeVar("T")
HOST = "registry.example:5000"
DIGEST = "sha256:" + "ab" * 32
KEY = f"{KEY_PREFIX}{HOST}/{DIGEST}"
REAL_REDIS = shared_redis.url()


def run(coro: Awaitable[T]) -> T:
    async def main() -> T:
        return await coro
    return asyncio.run(main())


@pytest.fixture
def index(redis_client: Any, clock: FakeClock) -> RedisLocations:
    return RedisLocations(redis_client, ttl=3600, per_blob=3, clock=clock)


def test_it_is_a_blob_index_of_one_sorted_set_per_blob_that_expires(
    index: RedisLocations, redis_client: Any,
) -> None:
    store: BlobLocations = index
    run(store.record(HOST, DIGEST, "team/a"))
    run(store.record(HOST, DIGEST, "team/b"))
    run(store.record("other.example", DIGEST, "team/c"))
    assert run(store.holders(HOST, DIGEST)) == ["team/b", "team/a"]
    assert run(store.holders(HOST, "sha256:" + "0" * 64)) == []
    assert sorted(redis_client.keys("*")) == [f"{KEY_PREFIX}other.example/{DIGEST}", KEY]
    assert 3590 < redis_client.ttl(KEY) <= 3600


def test_recording_again_makes_it_the_newest(index: RedisLocations, clock: FakeClock) -> None:
    for repository in ("a", "b", "a"):
        run(index.record(HOST, DIGEST, repository))
        clock.advance(1)
    assert run(index.holders(HOST, DIGEST)) == ["a", "b"]


def test_members_are_bounded_the_oldest_dropped(
    index: RedisLocations, redis_client: Any, clock: FakeClock,
) -> None:
    for n in range(5):
        run(index.record(HOST, DIGEST, f"r{n}"))
        clock.advance(1)
    # Trimmed at every third record (per_blob) of this process: at most twice per_blob kept.
    assert redis_client.zcard(KEY) == 4
    run(index.record(HOST, DIGEST, "r5"))
    assert redis_client.zcard(KEY) == 5
    run(index.record(HOST, DIGEST, "r6"))
    assert redis_client.zrange(KEY, 0, -1) == ["r4", "r5", "r6"]
    assert run(index.holders(HOST, DIGEST)) == ["r6", "r5", "r4"]


def sent_commands(client: Any) -> list[str]:
    sent: list[str] = []
    original = client.execute_command

    def counting(*args: Any, **kwargs: Any) -> Any:
        sent.append(str(args[0]).upper())
        return original(*args, **kwargs)

    client.execute_command = counting
    return sent


def test_a_fan_out_reads_a_key_once_per_trust_window_and_records_what_adds_something(
    redis_client: Any, clock: FakeClock,
) -> None:
    monotonic = FakeClock()
    index = RedisLocations(redis_client, ttl=3600, per_blob=3, clock=clock,
                           monotonic=monotonic)
    run(index.record(HOST, DIGEST, "r0"))
    sent = sent_commands(redis_client)
    # What a copy to each next repository does: read the hints, mount, record.
    for n in range(1, 6):
        clock.advance(1)
        assert run(index.holders(HOST, DIGEST))[0] == f"r{min(n - 1, 2)}"
        run(index.record(HOST, DIGEST, f"r{n}"))
    # One read (then this process's own view), two records: three fresh members are enough.
    assert sent == ["ZREVRANGEBYSCORE", "ZADD", "ZADD"]
    assert redis_client.zrange(KEY, 0, -1) == ["r0", "r1", "r2"]
    sent.clear()
    # Nor does a repository recorded a moment ago need its record again.
    run(index.record(HOST, DIGEST, "r1"))
    assert sent == []
    monotonic.advance(2.5)  # past the trust: read again
    assert run(index.holders(HOST, DIGEST)) == ["r2", "r1", "r0"]
    clock.advance(361)  # the members are no longer fresh: a record adds something again
    run(index.record(HOST, DIGEST, "r9"))
    assert redis_client.zscore(KEY, "r9") == clock.now


def test_an_empty_read_a_forget_or_another_workers_claim_is_not_trusted(
    redis_client: Any, clock: FakeClock,
) -> None:
    index = RedisLocations(redis_client, ttl=3600, per_blob=3, clock=clock,
                           monotonic=FakeClock())
    assert run(index.holders(HOST, DIGEST)) == []
    redis_client.zadd(KEY, {"elsewhere": clock.now})  # another worker's upload landed
    assert run(index.holders(HOST, DIGEST)) == ["elsewhere"]
    redis_client.zadd(KEY, {"other": clock.now + 1})
    assert run(index.holders(HOST, DIGEST)) == ["elsewhere"]  # trusted view
    run(index.forget(HOST, DIGEST, "elsewhere"))
    assert run(index.holders(HOST, DIGEST)) == ["other"]
    redis_client.zadd(KEY, {"third": clock.now + 2})
    assert run(index.claim_upload(HOST, DIGEST, "someone")) is None  # ours: view kept
    assert run(index.holders(HOST, DIGEST)) == ["other"]
    redis_client.set(index.claim_key(HOST, DIGEST), "another")
    assert run(index.claim_upload(HOST, DIGEST, "me")) == "another"
    assert run(index.holders(HOST, DIGEST)) == ["third", "other"]


def test_a_record_is_one_command_between_upkeeps(
    index: RedisLocations, redis_client: Any, clock: FakeClock,
) -> None:
    sent: list[str] = []
    original = redis_client.execute_command

    def counting(*args: Any, **kwargs: Any) -> Any:
        sent.append(str(args[0]).upper())
        return original(*args, **kwargs)

    redis_client.execute_command = counting
    run(index.record(HOST, DIGEST, "a"))  # the first: with its upkeep, in one round trip
    sent.clear()
    run(index.record(HOST, DIGEST, "b"))
    assert sent == ["ZADD"]
    clock.advance(361)  # a tenth of the TTL: the expiry is pushed out again
    run(index.record(HOST, DIGEST, "c"))
    assert 3590 < redis_client.ttl(KEY) <= 3600


def test_entries_older_than_the_ttl_are_neither_listed_nor_kept(
    index: RedisLocations, redis_client: Any, clock: FakeClock,
) -> None:
    run(index.record(HOST, DIGEST, "old"))
    clock.advance(3000)
    run(index.record(HOST, DIGEST, "new"))
    clock.advance(601)  # "old" is 3601 s old now, "new" 601 s
    assert run(index.holders(HOST, DIGEST)) == ["new"]
    run(index.record(HOST, DIGEST, "newer"))
    assert redis_client.zrange(KEY, 0, -1) == ["new", "newer"]


def test_forget(index: RedisLocations) -> None:
    run(index.record(HOST, DIGEST, "a"))
    run(index.record(HOST, DIGEST, "b"))
    run(index.forget(HOST, DIGEST, "a"))
    run(index.forget(HOST, DIGEST, "never-there"))
    assert run(index.holders(HOST, DIGEST)) == ["b"]


# -- Redis unreachable --------------------------------------------------------------------------


class Failing:
    """A client whose every call fails, counting the calls."""

    def __init__(self) -> None:
        self.calls = 0

    def zrevrangebyscore(self, *args: Any, **kwargs: Any) -> Any:
        self.calls += 1
        raise redis.TimeoutError("Timeout reading from socket")

    def pipeline(self, *args: Any, **kwargs: Any) -> Any:
        self.calls += 1
        raise redis.ConnectionError("Connection refused")

    def zrem(self, *args: Any) -> Any:
        self.calls += 1
        raise redis.ConnectionError("Connection refused")


def test_redis_down_gives_no_hint_raises_nothing_and_logs_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    index = RedisLocations.from_url(f"redis://:hunter2-secret@127.0.0.1:{free_port()}/0")
    caplog.set_level(logging.DEBUG, logger="fanout.locations")
    started = time.monotonic()
    run(index.record(HOST, DIGEST, "a"))
    assert run(index.holders(HOST, DIGEST)) == []
    run(index.forget(HOST, DIGEST, "a"))
    assert time.monotonic() - started < 2  # no retries, no long timeouts
    [(level, message)] = [(r.levelname, r.getMessage()) for r in caplog.records]
    assert level == "WARNING" and message.startswith("the blob-location index is unavailable")
    assert "hunter2-secret" not in caplog.text


def test_after_an_error_it_stays_quiet_and_warns_at_most_once_a_minute(
    clock: FakeClock, caplog: pytest.LogCaptureFixture,
) -> None:
    client, monotonic = Failing(), FakeClock(100.0)
    index = RedisLocations(client, clock=clock, monotonic=monotonic)  # type: ignore[arg-type]
    caplog.set_level(logging.WARNING, logger="fanout.locations")
    # A Redis that times out would otherwise cost every blob of a copy the timeout.
    assert [run(index.holders(HOST, DIGEST)) for _ in range(10)] == [[]] * 10
    run(index.record(HOST, DIGEST, "a"))
    assert client.calls == 1
    monotonic.advance(5)
    run(index.record(HOST, DIGEST, "a"))
    assert client.calls == 2 and len(caplog.records) == 1  # asked again, not warned again
    monotonic.advance(60)
    run(index.forget(HOST, DIGEST, "a"))
    assert client.calls == 3 and len(caplog.records) == 2


# -- settings and the engine ----------------------------------------------------------------------


def test_the_ttl_setting() -> None:
    assert WorkerSettings.from_env({}).blob_index_ttl == DEFAULT_TTL == 86400
    assert WorkerSettings.from_env({"FANOUT_BLOB_INDEX_TTL": "600"}).blob_index_ttl == 600
    for bad in ("0", "-5", "a day"):
        with pytest.raises(ConfigError, match="FANOUT_BLOB_INDEX_TTL"):
            WorkerSettings.from_env({"FANOUT_BLOB_INDEX_TTL": bad})


def _two_tasks(engine: CopyEngine) -> None:
    job = CopyJob("rel", f"src.example/app@{DIGEST}", "dst.example/app", DIGEST, (),
                  referrers=False, referrer_types=())
    engine.copy(job, timeout=5)
    engine.copy(job, timeout=5)


def test_the_engine_hands_its_pool_an_index_in_the_ledger_redis(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(engine_module, "Registries", CapturingRegistries)
    monkeypatch.setattr(engine_module, "Copier", NoCopier)
    CapturingRegistries.seen = []
    _two_tasks(CopyEngine({"HOME": "/nonexistent", "FANOUT_BLOB_INDEX_TTL": "120",
                           "FANOUT_LEDGER_URL": "redis://ledger.example:6380/3"}))
    (index,) = (kwargs["locations"] for kwargs in CapturingRegistries.seen)  # one pool, kept
    assert isinstance(index, RedisLocations) and index._ttl == 120
    pool = index._redis.connection_pool
    assert (pool.connection_kwargs["host"], pool.connection_kwargs["port"],
            pool.connection_kwargs["db"]) == ("ledger.example", 6380, 3)
    assert pool.connection_kwargs["socket_timeout"] <= 1

    mine = MemoryLocations()
    CapturingRegistries.seen = []
    _two_tasks(CopyEngine({"HOME": "/nonexistent"}, locations=mine))
    assert [kwargs["locations"] for kwargs in CapturingRegistries.seen] == [mine]


# -- the real Redis -----------------------------------------------------------------------------


@pytest.fixture
def real() -> Iterator[tuple[redis.Redis[Any], str]]:
    client = shared_redis.client_or_skip(decode_responses=True)
    prefix = shared_redis.prefix("locations")
    yield client, prefix
    for key in client.scan_iter(f"{prefix}*"):
        client.delete(key)
    client.close()


def test_real_redis_keeps_hints_for_the_ttl(real: tuple[redis.Redis[Any], str]) -> None:
    client, prefix = real
    index = RedisLocations.from_url(REAL_REDIS, prefix, ttl=30)

    async def scenario() -> list[str]:
        # Concurrent calls from one loop: each in its own thread, on one thread-safe client.
        await asyncio.gather(*(index.record(HOST, DIGEST, f"r{n}") for n in range(20)))
        return await index.holders(HOST, DIGEST)

    found = run(scenario())
    assert len(found) == 16 and set(found) <= {f"r{n}" for n in range(20)}
    key = index.key(HOST, DIGEST)
    # Trimmed at the upkeep that rides with every 16th record: never more than twice that.
    assert key.startswith(prefix) and 16 <= client.zcard(key) <= 32
    assert 25 < client.ttl(key) <= 30


def test_an_upload_is_claimed_once_renewed_and_given_up_only_by_its_claimant(
    index: RedisLocations, redis_client: Any,
) -> None:
    claim = f"{CLAIM_PREFIX}{HOST}/{DIGEST}"
    assert run(index.claim_upload(HOST, DIGEST, "team/a#1")) is None  # ours
    assert run(index.claim_upload(HOST, DIGEST, "team/b#2")) == "team/a#1"  # theirs: wait
    assert run(index.upload_claimant(HOST, DIGEST)) == "team/a#1"
    assert 0 < redis_client.pttl(claim) <= UPLOAD_CLAIM_SECONDS * 1000
    redis_client.pexpire(claim, 500)
    run(index.renew_upload(HOST, DIGEST, "team/b#2"))  # not b's: left alone
    assert redis_client.pttl(claim) <= 500
    run(index.renew_upload(HOST, DIGEST, "team/a#1"))
    assert redis_client.pttl(claim) > 500
    run(index.release_upload(HOST, DIGEST, "team/b#2"))
    assert run(index.upload_claimant(HOST, DIGEST)) == "team/a#1"
    run(index.release_upload(HOST, DIGEST, "team/a#1"))
    assert run(index.upload_claimant(HOST, DIGEST)) is None
    assert run(index.claim_upload(HOST, DIGEST, "team/b#2")) is None  # free again: b's now


def test_a_redis_that_is_down_makes_every_upload_its_own() -> None:
    index = RedisLocations.from_url(f"redis://127.0.0.1:{free_port()}/0")
    assert run(index.claim_upload(HOST, DIGEST, "team/a#1")) is None
    assert run(index.upload_claimant(HOST, DIGEST)) is None
    run(index.release_upload(HOST, DIGEST, "team/a#1"))  # raises nothing


def test_a_waiter_returns_when_the_claim_is_given_up_and_a_holder_renews_it(
    index: RedisLocations, redis_client: Any, monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(upload_claims, "RENEW_EVERY", 0.02)
    renewals: list[str] = []
    renew = index.renew_upload

    async def counted(registry: str, digest: str, claimant: str) -> None:
        renewals.append(claimant)
        await renew(registry, digest, claimant)

    monkeypatch.setattr(index, "renew_upload", counted)

    async def main() -> list[str]:
        order: list[str] = []
        assert await index.claim_upload(HOST, DIGEST, "team/a#1") is None

        async def uploader() -> None:
            async with upload_claims.holding(index, HOST, DIGEST, "team/a#1"):
                await asyncio.sleep(0.15)
                order.append("landed")

        async def waiter() -> None:
            holder = await index.claim_upload(HOST, DIGEST, "team/b#2")
            assert holder == "team/a#1"
            await upload_claims.wait_for_release(index, HOST, DIGEST, holder, poll=0.01)
            order.append("waited")

        await asyncio.gather(uploader(), waiter())
        return order

    assert run(main()) == ["landed", "waited"]
    assert renewals and set(renewals) == {"team/a#1"}
    assert redis_client.keys(f"{CLAIM_PREFIX}*") == []


def test_a_claim_whose_worker_died_lapses_and_the_waiter_goes_on(
    index: RedisLocations, redis_client: Any,
) -> None:
    # The claimant never renews (killed mid-upload): the lease runs out and the waiter,
    # polling, sees nobody holding it; its next claim is its own.
    assert run(index.claim_upload(HOST, DIGEST, "team/a#dead")) is None
    redis_client.pexpire(f"{CLAIM_PREFIX}{HOST}/{DIGEST}", 150)

    async def main() -> str | None:
        holder = await index.claim_upload(HOST, DIGEST, "team/b#2")
        assert holder == "team/a#dead"
        await upload_claims.wait_for_release(index, HOST, DIGEST, holder, poll=0.02,
                                             max_wait=30)
        return await index.claim_upload(HOST, DIGEST, "team/b#2")

    assert run(main()) is None
    assert run(index.upload_claimant(HOST, DIGEST)) == "team/b#2"
