"""The copy's lease: renewed while it lives; a copy that cannot renew stops before it lapses."""

from __future__ import annotations

from typing import Any

import redis

from tests.workers.conftest import FakeClock
from workers.heartbeat import STOP_FRACTION, Heartbeat
from workers.ledger import Ledger
from workers.locks import DestinationLock

DIGEST = "sha256:" + "d" * 64
DEST = "dst.example/app"


def beat(redis_client: Any, clock: FakeClock) -> tuple[Heartbeat, DestinationLock, Ledger, str]:
    ledger = Ledger(redis_client, clock=clock)
    release_id = ledger.create_release(f"src.example/app@{DIGEST}", [(DEST, ["v1"])])
    ledger.mark_running(release_id, DEST, worker="w1@host", lease=20)
    lock = DestinationLock(redis_client, DEST, DIGEST, 20)
    assert lock.acquire()
    return (Heartbeat(lock, ledger, release_id, DEST, interval=5, monotonic=clock), lock,
            ledger, release_id)


def test_a_beat_renews_the_lock_and_pushes_the_deadline_out(
    redis_client: Any, clock: FakeClock,
) -> None:
    heartbeat, lock, ledger, _ = beat(redis_client, clock)
    redis_client.pexpire(lock.key, 1000)
    clock.advance(15)
    heartbeat.beat()
    assert redis_client.pttl(lock.key) > 19_000
    assert ledger.overdue(clock.now + 19) == []
    assert not heartbeat.abort.is_set()


def test_a_lost_lock_stops_the_copy(redis_client: Any, clock: FakeClock) -> None:
    heartbeat, lock, _, _ = beat(redis_client, clock)
    redis_client.set(lock.key, "someone-else")
    heartbeat.beat()
    assert heartbeat.abort.is_set() and "taken over" in heartbeat.reason


class Unreachable:
    """A lock whose Redis does not answer."""

    ttl = 20.0

    def renew(self) -> bool:
        raise redis.ConnectionError("connection refused")


def test_silence_past_most_of_the_lease_stops_the_copy(
    redis_client: Any, clock: FakeClock,
) -> None:
    heartbeat, _, _, _ = beat(redis_client, clock)
    heartbeat.lock = Unreachable()  # type: ignore[assignment]
    clock.advance(20 * STOP_FRACTION - 1)
    heartbeat.beat()
    assert not heartbeat.abort.is_set()  # a blip: keep copying
    clock.advance(2)
    heartbeat.beat()
    assert heartbeat.abort.is_set()  # before the lease lapses, never after
