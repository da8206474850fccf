"""Registry holds in Redis: fakeredis for the logic, the real Redis for atomicity and TTLs."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
import redis

from registry.holds import HoldStore
from tests.support import shared_redis
from tests.support.ports import free_port
from tests.workers.conftest import FakeClock
from tests.workers.engine_fakes import CapturingRegistries, NoCopier
from workers import engine as engine_module
from workers.engine import CopyEngine
from workers.holds import KEY_PREFIX, RedisHolds

HOST = "registry.example:5000"
REAL_REDIS = shared_redis.url()


@pytest.fixture
def holds(redis_client: Any, clock: FakeClock) -> RedisHolds:
    return RedisHolds(redis_client, clock=clock)


def test_it_is_a_hold_store(holds: RedisHolds) -> None:
    store: HoldStore = holds
    assert store.until(HOST) == 0.0


def test_a_hold_is_one_key_that_outlives_it_a_little(
    holds: RedisHolds, redis_client: Any, clock: FakeClock,
) -> None:
    holds.hold(HOST, clock.now + 4)
    assert holds.until(HOST) == clock.now + 4
    assert redis_client.keys("*") == [f"{KEY_PREFIX}{HOST}"]
    assert 4000 < redis_client.pttl(f"{KEY_PREFIX}{HOST}") <= 5000
    assert holds.until("other.example") == 0.0
    clock.advance(4)  # the key is still there, but the hold has passed
    assert holds.until(HOST) == 0.0


def test_a_shorter_hold_never_shortens_a_longer_one(
    holds: RedisHolds, redis_client: Any, clock: FakeClock,
) -> None:
    holds.hold(HOST, clock.now + 30)
    holds.hold(HOST, clock.now + 2)
    assert holds.until(HOST) == clock.now + 30
    assert redis_client.pttl(f"{KEY_PREFIX}{HOST}") > 30_000  # nor its expiry
    holds.hold(HOST, clock.now + 60)
    assert holds.until(HOST) == clock.now + 60
    assert redis_client.pttl(f"{KEY_PREFIX}{HOST}") > 60_000


@pytest.mark.parametrize("until", [float("inf"), float("nan"), float("-inf"), 0.0])
def test_a_past_or_nonsense_hold_writes_nothing(
    holds: RedisHolds, redis_client: Any, clock: FakeClock, until: float,
) -> None:
    holds.hold(HOST, until)
    holds.hold(HOST, clock.now)
    assert redis_client.keys("*") == []


@pytest.mark.parametrize("stored", ["garbage", "inf", "nan", "", "1e999"])
def test_an_unreadable_value_holds_nothing_and_is_overwritten(
    holds: RedisHolds, redis_client: Any, clock: FakeClock, stored: str,
) -> None:
    redis_client.set(f"{KEY_PREFIX}{HOST}", stored)
    assert holds.until(HOST) == 0.0
    holds.hold(HOST, clock.now + 3)
    assert holds.until(HOST) == clock.now + 3


def test_a_client_without_decoded_responses_works_too(clock: FakeClock) -> None:
    import fakeredis

    holds = RedisHolds(fakeredis.FakeRedis(), "p:", clock=clock)
    holds.hold(HOST, clock.now + 1.5)
    assert holds.until(HOST) == clock.now + 1.5


# -- Redis unreachable ------------------------------------------------------------------------


def test_redis_down_holds_nothing_and_raises_nothing(caplog: pytest.LogCaptureFixture) -> None:
    holds = RedisHolds.from_url(f"redis://127.0.0.1:{free_port()}/0")
    caplog.set_level(logging.DEBUG, logger="fanout.holds")
    started = time.monotonic()
    assert holds.until(HOST) == 0.0
    holds.hold(HOST, time.time() + 10)
    assert time.monotonic() - started < 2  # no retries, no long timeouts
    [read, write] = [(r.levelname, r.getMessage()) for r in caplog.records]
    assert read[0] == "DEBUG" and read[1].startswith(f"could not read the hold on {HOST}")
    assert write[0] == "WARNING" and write[1].startswith(f"could not hold {HOST}")


class Failing:
    """A client whose every call fails, counting the calls."""

    def __init__(self) -> None:
        self.calls = 0

    def get(self, key: str) -> Any:
        self.calls += 1
        raise redis.TimeoutError("Timeout reading from socket")

    def pipeline(self) -> Any:
        self.calls += 1
        raise redis.ConnectionError("Connection refused")


def test_after_an_error_reads_stay_quiet_for_a_while(clock: FakeClock) -> None:
    client, monotonic = Failing(), FakeClock(100.0)
    holds = RedisHolds(client, clock=clock, monotonic=monotonic)  # type: ignore[arg-type]
    # A Redis that times out would otherwise cost every request of a copy the timeout.
    assert [holds.until(HOST) for _ in range(20)] == [0.0] * 20
    assert client.calls == 1
    monotonic.advance(5)
    assert holds.until(HOST) == 0.0
    assert client.calls == 2
    holds.hold(HOST, clock.now + 5)  # a hold is still worth trying to tell the others
    assert client.calls == 3


# -- the engine builds one -------------------------------------------------------------------


def test_the_engine_hands_its_pool_the_ledger_redis_holds(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from workers.job import CopyJob

    monkeypatch.setattr(engine_module, "Registries", CapturingRegistries)
    monkeypatch.setattr(engine_module, "Copier", NoCopier)
    CapturingRegistries.seen = []
    engine = CopyEngine({"HOME": "/nonexistent",
                         "FANOUT_LEDGER_URL": "redis://ledger.example:6380/3"})
    digest = "sha256:" + "e" * 64
    job = CopyJob("rel", f"src.example/app@{digest}", "dst.example/app", digest, (),
                  referrers=False, referrer_types=())
    engine.copy(job, timeout=5)
    engine.copy(job, timeout=5)
    (first,) = (kwargs["holds"] for kwargs in CapturingRegistries.seen)  # one pool, kept
    assert isinstance(first, RedisHolds)
    pool = first._redis.connection_pool
    assert pool.connection_kwargs["host"] == "ledger.example"
    assert (pool.connection_kwargs["port"], pool.connection_kwargs["db"]) == (6380, 3)
    assert pool.connection_kwargs["socket_timeout"] <= 1

    mine = RedisHolds(redis.Redis())
    CopyEngine({"HOME": "/nonexistent"}, holds=mine).copy(job, timeout=5)
    assert CapturingRegistries.seen[-1]["holds"] is mine


# -- the real Redis ---------------------------------------------------------------------------


@pytest.fixture
def real() -> Iterator[tuple[redis.Redis[Any], str]]:
    client = shared_redis.client_or_skip(decode_responses=True)
    prefix = shared_redis.prefix("hold")
    yield client, prefix
    for key in client.scan_iter(f"{prefix}*"):
        client.delete(key)
    client.close()


def test_real_redis_keeps_the_longest_of_racing_holds(
    real: tuple[redis.Redis[Any], str],
) -> None:
    client, prefix = real
    base = time.time() + 5
    wanted = [base + i / 100 for i in range(40)]
    start = threading.Barrier(8)

    def worker(mine: list[float]) -> None:
        # Its own client and store, as another worker process would have.
        holds = RedisHolds.from_url(REAL_REDIS, prefix)
        start.wait()
        for until in mine:
            holds.hold(HOST, until)

    threads = [threading.Thread(target=worker, args=(wanted[i::8][::-1],)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    reader = RedisHolds(client, prefix)
    assert reader.until(HOST) == max(wanted)
    ttl = client.pttl(f"{prefix}{HOST}")
    assert (max(wanted) - time.time()) * 1000 < ttl <= (max(wanted) - time.time()) * 1000 + 1100
    assert client.keys(f"{prefix}*") == [f"{prefix}{HOST}"]


def test_real_redis_forgets_a_hold_after_it_ends(real: tuple[redis.Redis[Any], str]) -> None:
    client, prefix = real
    holds = RedisHolds(client, prefix)
    holds.hold(HOST, time.time() + 0.2)
    assert holds.until(HOST) > time.time()
    time.sleep(0.25)
    assert holds.until(HOST) == 0.0  # held no longer, though the key lingers a moment
    time.sleep(1.1)
    assert client.exists(f"{prefix}{HOST}") == 0


# -- no round trip per request -----------------------------------------------------------------


class Counting:
    """fakeredis, counting the GETs."""

    def __init__(self, client: Any) -> None:
        self.client = client
        self.gets = 0

    def get(self, key: str) -> Any:
        self.gets += 1
        return self.client.get(key)

    def pipeline(self) -> Any:
        return self.client.pipeline()


def test_a_read_is_trusted_for_the_refresh_then_asked_again(
    redis_client: Any, clock: FakeClock,
) -> None:
    counting, monotonic = Counting(redis_client), FakeClock(100.0)
    holds = RedisHolds(counting, clock=clock, monotonic=monotonic,  # type: ignore[arg-type]
                       refresh=0.25)
    other = RedisHolds(redis_client, clock=clock)  # another worker
    # Every request asks; Redis is asked once per refresh, not once per request.
    assert [holds.until(HOST) for _ in range(50)] == [0.0] * 50
    assert counting.gets == 1
    other.hold(HOST, clock.now + 10)
    assert holds.until(HOST) == 0.0  # not yet learnt: within the refresh
    monotonic.advance(0.25)
    assert holds.until(HOST) == clock.now + 10  # learnt within a quarter second
    assert counting.gets == 2
    assert holds.until("other.example") == 0.0  # per registry
    assert counting.gets == 3


def test_a_hold_this_process_sets_is_known_at_once_even_if_redis_fails(
    clock: FakeClock,
) -> None:
    client, monotonic = Failing(), FakeClock(100.0)
    holds = RedisHolds(client, clock=clock, monotonic=monotonic)  # type: ignore[arg-type]
    assert holds.until(HOST) == 0.0
    holds.hold(HOST, clock.now + 5)  # the 429 this process heard; Redis refuses the write
    assert holds.until(HOST) == clock.now + 5
    monotonic.advance(10)
    assert holds.until(HOST) == clock.now + 5
    clock.advance(5)
    assert holds.until(HOST) == 0.0
