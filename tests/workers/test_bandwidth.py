"""Bandwidth caps in Redis (workers/bandwidth.py) and their metrics, on fakeredis."""

from __future__ import annotations

import asyncio
from typing import Any

import fakeredis
import pytest
import redis

from registry.bandwidth import parse_caps
from registry.throttle import MAX_CREDIT_S, Throttle, throttled
from tests.workers.conftest import FakeClock
from tests.workers.engine_fakes import CapturingRegistries, NoCopier
from workers import engine as engine_module
from workers.bandwidth import BYTES_KEY, CAP_KEY, CLOCK_PREFIX, WAIT_KEY, RedisThrottle
from workers.bandwidth_metrics import RATE_WINDOW_S, BandwidthCollector
from workers.engine import CopyEngine

MiB = 1024 * 1024
HOST = "dr.example:5000"
CAPS = parse_caps(f"{HOST}=4MiB")
GRANT = 512 * 1024


class World:
    """One wall clock for every client; sleeping moves it."""

    def __init__(self) -> None:
        self.clock = FakeClock()
        self.slept = 0.0

    async def sleep(self, seconds: float) -> None:
        self.slept += seconds
        self.clock.advance(seconds)


def _throttle(client: Any, world: World, caps: Any = CAPS) -> RedisThrottle:
    return RedisThrottle(client, caps, clock=world.clock, monotonic=world.clock,
                         sleep=world.sleep, in_thread=False)


@pytest.fixture
def world() -> World:
    return World()


def test_it_is_a_throttle(redis_client: Any, world: World) -> None:
    throttle: Throttle = _throttle(redis_client, world)
    assert throttle.rate(HOST, "upload") == 4 * MiB
    assert throttle.rate("other.example", "upload") is None


def test_many_takes_keep_to_the_rate_and_count_bytes(redis_client: Any, world: World) -> None:
    throttle = _throttle(redis_client, world)
    start = world.clock.now

    async def main() -> None:
        for _ in range(80):  # 40 MiB
            await throttle.take(HOST, "upload", GRANT)

    asyncio.run(main())
    assert world.clock.now - start == pytest.approx(10 - GRANT / (4 * MiB), abs=1e-3)
    field = f"upload {HOST}"
    assert int(redis_client.hget(BYTES_KEY, field)) == 40 * MiB
    assert int(redis_client.hget(CAP_KEY, field)) == 4 * MiB
    # Each wait is added with the next take: all but the last are in.
    assert int(redis_client.hget(WAIT_KEY, field)) / 1e6 == pytest.approx(
        world.slept - GRANT / (4 * MiB), abs=1e-3)


def test_several_clients_share_one_cap(world: World) -> None:
    server = fakeredis.FakeServer()
    throttles = [_throttle(fakeredis.FakeRedis(server=server, decode_responses=True), world)
                 for _ in range(3)]
    start = world.clock.now
    # Three processes take in turn, as their streams interleave: waits add up across them.
    waits = [t.book("upload", HOST, GRANT, 4 * MiB) for _ in range(8) for t in throttles]
    assert waits[0] == 0.0
    assert waits[-1] == pytest.approx((24 - 1) * GRANT / (4 * MiB), abs=1e-3)
    assert waits == sorted(waits)
    assert world.clock.now == start  # book only says how long; take sleeps


def test_a_burst_after_idleness_is_bounded(redis_client: Any, world: World) -> None:
    throttle = _throttle(redis_client, world)
    throttle.book("upload", HOST, 4 * MiB, 4 * MiB)
    world.clock.advance(3600)
    at_once = 0
    while throttle.book("upload", HOST, 64 * 1024, 4 * MiB) == 0.0:
        at_once += 64 * 1024
    assert at_once <= MAX_CREDIT_S * 4 * MiB + 64 * 1024
    assert redis_client.pttl(f"{CLOCK_PREFIX}upload:{HOST}") > 0  # an idle host's key goes


class Down:
    """A Redis that never answers."""

    def pipeline(self, *args: Any, **kwargs: Any) -> Any:
        raise redis.ConnectionError("connection refused")


def test_redis_down_keeps_the_cap_in_this_process(world: World,
                                                 caplog: pytest.LogCaptureFixture) -> None:
    throttle = _throttle(Down(), world)
    start = world.clock.now

    async def main() -> None:
        for _ in range(40):  # 20 MiB
            await throttle.take(HOST, "upload", GRANT)

    asyncio.run(main())
    # Never unlimited: the local bucket kept 4 MiB/s.
    assert world.clock.now - start == pytest.approx(5 - GRANT / (4 * MiB), abs=1e-3)
    # One warning per quiet spell, not one per take.
    warnings = [r for r in caplog.records if "alone" in r.getMessage()]
    assert 1 <= len(warnings) <= 2


def test_redis_back_after_the_quiet_spell_is_used_again(redis_client: Any,
                                                       world: World) -> None:
    throttle = _throttle(Down(), world)
    asyncio.run(throttle.take(HOST, "upload", GRANT))
    throttle._redis = redis_client  # Redis is back
    world.clock.advance(10)
    asyncio.run(throttle.take(HOST, "upload", GRANT))
    assert int(redis_client.hget(BYTES_KEY, f"upload {HOST}")) == GRANT


def test_the_hook_paces_a_blob_through_redis(redis_client: Any, world: World) -> None:
    throttle = _throttle(redis_client, world)

    async def pieces() -> Any:
        for _ in range(128):
            yield b"x" * 65536

    async def main() -> int:
        return sum([len(c) async for c in throttled(pieces(), throttle, HOST, "upload",
                                                    8 * MiB)])

    start = world.clock.now
    assert asyncio.run(main()) == 8 * MiB
    assert world.clock.now - start == pytest.approx(2 - GRANT / (4 * MiB), abs=1e-3)
    assert int(redis_client.hget(BYTES_KEY, f"upload {HOST}")) == 8 * MiB


def test_metrics_show_rate_cap_bytes_and_wait(redis_client: Any, world: World) -> None:
    throttle = _throttle(redis_client, world)

    async def main() -> None:
        for _ in range(40):  # 20 MiB over 5 s
            await throttle.take(HOST, "upload", GRANT)

    asyncio.run(main())
    world.clock.advance(1)
    families = {f.name: f for f in BandwidthCollector(redis_client, clock=world.clock).collect()}
    labels = {"host": HOST, "direction": "upload"}

    def value(name: str) -> float:
        [sample] = [s for s in families[name].samples if s.labels == labels
                    and not s.name.endswith("_created")]
        return float(sample.value)

    assert value("fanout_bandwidth_cap_bytes_per_second") == 4 * MiB
    assert value("fanout_bandwidth_bytes") == 20 * MiB
    # Every wait but the last (added with the next take).
    assert value("fanout_bandwidth_wait_seconds") == pytest.approx(world.slept - 0.125, abs=0.01)
    # Bytes granted in the last whole seconds, per second: about the cap.
    assert value("fanout_bandwidth_bytes_per_second") == pytest.approx(4 * MiB, rel=0.15)
    assert RATE_WINDOW_S == 5


def test_metrics_of_a_redis_that_is_down_are_none() -> None:
    class Broken:
        def pipeline(self, **kwargs: Any) -> Any:
            raise redis.ConnectionError("down")

    assert list(BandwidthCollector(Broken()).collect()) == []  # type: ignore[arg-type]


def test_the_engine_hands_its_pool_caps_in_redis_only_when_some_are_set(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from workers.job import CopyJob

    monkeypatch.setattr(engine_module, "Registries", CapturingRegistries)
    monkeypatch.setattr(engine_module, "Copier", NoCopier)
    digest = "sha256:" + "e" * 64
    job = CopyJob("rel", f"src.example/app@{digest}", "dst.example/app", digest, (),
                  referrers=False, referrer_types=())
    base = {"HOME": "/nonexistent", "FANOUT_LEDGER_URL": "redis://ledger.example:6380/3"}
    CapturingRegistries.seen = []
    CopyEngine(base).copy(job, timeout=5)
    CopyEngine({**base, "FANOUT_BANDWIDTH": f"{HOST}=4MiB"}).copy(job, timeout=5)
    plain, capped = (kwargs["throttle"] for kwargs in CapturingRegistries.seen)
    assert plain is None
    assert isinstance(capped, RedisThrottle)
    assert capped.rate(HOST, "upload") == 4 * MiB
    pool = capped._redis.connection_pool
    assert pool.connection_kwargs["host"] == "ledger.example"
    assert pool.connection_kwargs["socket_timeout"] <= 1


def test_a_bad_cap_stops_the_worker_at_start_naming_the_entry() -> None:
    import os
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    env = {**os.environ, "PYTHONPATH": str(root),
           "FANOUT_BANDWIDTH": "ok.example=1MiB,dr.example=lots"}
    out = subprocess.run([sys.executable, "-c", "import workers.app"], cwd=root, env=env,
                         capture_output=True, text=True, timeout=60, check=False)
    assert out.returncode != 0
    assert "ConfigError" in out.stderr and "'dr.example=lots'" in out.stderr, out.stderr
