"""What reading the ledger costs, in round trips to Redis, counted by the client itself: a
release, a listing and the final-transition check each cost a fixed number, however many
destinations and releases there are. Against fakeredis (decoding or not) and a real Redis."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.queue import RedisServer
from tests.support.round_trips import CountingFakeRedis, CountingRedis
from tests.workers.conftest import FakeClock
from workers.ledger import Ledger
from workers.records import release_key

SOURCE = "src.example/app@sha256:" + "a" * 64


@pytest.fixture(scope="module")
def real_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    if shutil.which("redis-server") is None:
        pytest.skip("redis-server is not installed")
    server = RedisServer(Path(tmp_path_factory.mktemp("redis")), persistent=False).start()
    yield server
    server.stop()


@pytest.fixture(params=["fake-decoded", "fake-bytes", "real"])
def client(request: pytest.FixtureRequest) -> Iterator[Any]:
    if request.param == "real":
        server: RedisServer = request.getfixturevalue("real_redis")
        real = CountingRedis(port=server.port)
        real.flushdb()
        yield real
        real.close()
    else:
        yield CountingFakeRedis(decode_responses=request.param == "fake-decoded")


@pytest.fixture
def ledger(client: Any) -> Ledger:
    return Ledger(client, retention=3600, clock=FakeClock())


def release_of(ledger: Ledger, size: int, retried: int = 1) -> str:
    """A release of ``size`` destinations, the first ``retried`` with an attempt in their
    history."""
    release_id = ledger.create_release(
        SOURCE, [(f"r{i}.example/app", ["v1"]) for i in range(size)])
    for i in range(retried):
        ledger.mark_running(release_id, f"r{i}.example/app", worker="w")
        ledger.mark_retrying(release_id, f"r{i}.example/app", error="blip",
                             error_type="ConnectionFailed", next_retry_at=0)
    return release_id


@pytest.mark.parametrize("size", [3, 200])
def test_a_release_costs_two_round_trips_however_many_destinations(
        ledger: Ledger, client: Any, size: int) -> None:
    release_id = release_of(ledger, size, retried=2)
    client.tally.reset()
    release = ledger.get(release_id)
    assert client.tally.commands == ["PIPELINE", "PIPELINE"]  # names; then everything
    assert release is not None and len(release.destinations) == size
    assert list(release.destinations)[:2] == ["r0.example/app", "r1.example/app"]
    retried = release.destinations["r0.example/app"]
    assert (retried.state, [a.outcome for a in retried.history]) == ("retrying", ["retrying"])
    assert release.destinations[f"r{size - 1}.example/app"].history == ()


def test_an_unknown_release_costs_the_same(ledger: Ledger, client: Any) -> None:
    client.tally.reset()
    assert ledger.get("rel-none") is None
    assert client.tally.count == 2


def test_a_listing_of_500_releases_costs_three_round_trips(ledger: Ledger, client: Any) -> None:
    ids = [release_of(ledger, 3, retried=0) for _ in range(499)]
    ids.append(release_of(ledger, 3))
    client.tally.reset()
    releases = ledger.recent_releases(500)
    # The ids; every release's destinations' names; every head, record and history.
    assert client.tally.commands == ["ZREVRANGE", "PIPELINE", "PIPELINE"]
    assert sorted(r.id for r in releases) == sorted(ids)
    assert [r.id for r in releases] == ledger.recent(500)
    assert all(len(r.destinations) == 3 for r in releases)
    [retried] = [r for r in releases if r.destinations["r0.example/app"].history]
    assert retried.id == ids[-1]


def test_a_listing_leaves_out_a_release_gone_between_the_reads(
        ledger: Ledger, client: Any) -> None:
    kept, gone = release_of(ledger, 2), release_of(ledger, 2)
    client.delete(release_key(gone))  # its id still in the index, as when it just expired
    assert [r.id for r in ledger.recent_releases(10)] == [kept]
    assert ledger.recent_releases(0) == []


def test_one_record_costs_one_round_trip(ledger: Ledger, client: Any) -> None:
    release_id = release_of(ledger, 3)
    client.tally.reset()
    record = ledger.record(release_id, "r0.example/app")
    assert client.tally.count == 1
    assert record is not None and len(record.history) == 1
    assert ledger.record(release_id, "nowhere.example/app") is None


def test_where_a_destination_stands_is_one_round_trip(ledger: Ledger, client: Any) -> None:
    release_id = release_of(ledger, 3)
    ledger.reset_for_retry(release_id, ["r0.example/app"])
    client.tally.reset()
    standing = ledger.standing(release_id, "r0.example/app")
    assert client.tally.commands == ["PIPELINE"]  # HMGET, and the release's order
    assert standing is not None and standing.order == ledger.order_of(release_id) > 0
    record = ledger.record(release_id, "r0.example/app")
    assert standing is not None and record is not None
    assert (standing.state, standing.generation, standing.attempts, standing.stats) == (
        record.state, record.generation, record.attempts, record.stats)
    assert (standing.round_attempts, standing.round_started, standing.done) == (
        record.round_attempts, record.round_started, record.done)
    assert ledger.standing(release_id, "nowhere.example/app") is None


@pytest.mark.parametrize("size", [3, 200])
def test_settling_a_release_costs_five_round_trips_however_many_destinations(
        ledger: Ledger, client: Any, size: int) -> None:
    release_id = ledger.create_release(SOURCE, [(f"r{i}.example/app", []) for i in range(size)])
    expected = ["WATCH", "ZRANGE", "WATCH", "PIPELINE", "MULTI/EXEC"]
    client.tally.reset()
    assert ledger.settle_final(release_id) is None  # not final yet
    assert client.tally.commands == expected
    for i in range(size):
        ledger.mark_succeeded(release_id, f"r{i}.example/app", stats={}, seconds=1)
    client.tally.reset()
    settled = ledger.settle_final(release_id)
    assert client.tally.commands == expected
    assert settled is not None and settled.ok and len(settled.destinations) == size
    assert ledger.settle_final(release_id) is None  # claimed once


def test_a_releases_order_once_read_is_not_asked_again_for_a_while() -> None:
    client = CountingFakeRedis(decode_responses=True)
    monotonic = FakeClock(0.0)
    ledger = Ledger(client, clock=FakeClock(), retention=3600, monotonic=monotonic)
    release_id = ledger.create_release(SOURCE, [("r1.example/app", ["v1"]),
                                                ("r2.example/app", ["v1"])], order=7)
    first = ledger.standing(release_id, "r1.example/app")
    client.hset(release_key(release_id), "order", "8")  # never done: shows what is not read
    second = ledger.standing(release_id, "r2.example/app")
    assert first is not None and second is not None and first.order == second.order == 7
    monotonic.advance(61)
    third = ledger.standing(release_id, "r2.example/app")
    assert third is not None and third.order == 8
