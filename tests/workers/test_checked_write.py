"""The ledger's short way (one script per transition) writes exactly what its transitions under
WATCH write, and steps aside whenever the record is not as it expects."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import fakeredis
import pytest
import redis

from tests.workers.conftest import FakeClock
from workers.checked_write import CheckedWrite
from workers.ledger import Ledger
from workers.locks import DestinationLock, Lease
from workers.metrics import MetricsObserver
from workers.records import dest_key
from workers.tag_order import TagOwner, TagOwners, lock_key, owner_key

SOURCE = "src.example/app@sha256:" + "a" * 64
DEST = "r1.example/app"
DIGEST = "sha256:" + "a" * 64


def dump(client: Any) -> dict[str, Any]:
    """Every key, its value and its expiry: what two runs are compared on."""
    found: dict[str, Any] = {}
    for key in sorted(client.keys("*")):
        kind = client.type(key)
        value: Any = {
            "hash": lambda k: client.hgetall(k),
            "zset": lambda k: client.zrange(k, 0, -1, withscores=True),
            "list": lambda k: client.lrange(k, 0, -1),
            "string": lambda k: client.get(k),
        }[kind](key)
        found[key] = (value, _seconds_left(client.pttl(key)))
    return found


def _seconds_left(pttl: int) -> int:
    """The expiry in whole seconds, rounded up: the expiry a key was given, however many
    milliseconds a loaded machine took between setting it and this read (TTL rounds to the
    nearest second, so 30 s read 600 ms later was 29). -1 (none) and -2 (gone) as they are."""
    return pttl if pttl < 0 else math.ceil(pttl / 1000)


Scenario = Callable[[Ledger, Any, FakeClock], None]


def one_attempt(ledger: Ledger, client: Any, clock: FakeClock) -> None:
    release = ledger.create_release(SOURCE, [(DEST, ["v1"])], release_id="rel-1")
    lock = DestinationLock(client, DEST, DIGEST, 60, owner="t1")
    assert lock.acquire()
    standing = ledger.standing(release, DEST)
    assert standing is not None
    attempt = ledger.mark_running(release, DEST, worker="w1", lease=20, task={"n": 1},
                                  expect=(standing.state, standing.attempts))
    clock.advance(3)
    assert ledger.mark_succeeded(release, DEST, stats={"bytes_transferred": 10}, seconds=3,
                                 attempt=attempt, lock=(lock.key, lock.token))


def moved_before_the_start(ledger: Ledger, client: Any, clock: FakeClock) -> None:
    release = ledger.create_release(SOURCE, [(DEST, ["v1"])], release_id="rel-1")
    standing = ledger.standing(release, DEST)
    assert standing is not None
    ledger.mark_retrying(release, DEST, error="busy", error_type="LockHeld",
                         next_retry_at=clock.now)  # after the delivery's read
    attempt = ledger.mark_running(release, DEST, worker="w1", lease=20,
                                  expect=(standing.state, standing.attempts))
    ledger.mark_succeeded(release, DEST, stats={}, seconds=1, attempt=attempt)


def handed_over_mid_copy(ledger: Ledger, client: Any, clock: FakeClock) -> None:
    release = ledger.create_release(SOURCE, [(DEST, ["v1"])], release_id="rel-1")
    attempt = ledger.mark_running(release, DEST, worker="w1", lease=20, expect=("queued", 0))
    clock.advance(30)
    assert ledger.mark_lost(release, DEST, attempt=attempt, reason="w1 lost") is not None
    ledger.mark_succeeded(release, DEST, stats={}, seconds=30, attempt=attempt)


def redelivered_after_a_lost_worker(ledger: Ledger, client: Any, clock: FakeClock) -> None:
    release = ledger.create_release(SOURCE, [(DEST, ["v1"])], release_id="rel-1")
    ledger.mark_running(release, DEST, worker="w1", lease=20, expect=("queued", 0))
    clock.advance(5)
    # The broker redelivers; the record still says running: the long way records w1 lost.
    attempt = ledger.mark_running(release, DEST, worker="w2", lease=20,
                                  expect=("running", 1))
    ledger.mark_succeeded(release, DEST, stats={}, seconds=2, attempt=attempt)


def a_retry_then_success(ledger: Ledger, client: Any, clock: FakeClock) -> None:
    release = ledger.create_release(SOURCE, [(DEST, ["v1"])], release_id="rel-1")
    first = ledger.mark_running(release, DEST, worker="w1", lease=20, expect=("queued", 0))
    ledger.mark_retrying(release, DEST, error="503", error_type="Unavailable",
                         next_retry_at=clock.now + 1, attempt=first)
    clock.advance(2)
    second = ledger.mark_running(release, DEST, worker="w1", lease=20,
                                 expect=("retrying", 1))
    ledger.mark_succeeded(release, DEST, stats={}, seconds=1, attempt=second)


def a_lock_taken_by_another(ledger: Ledger, client: Any, clock: FakeClock) -> None:
    release = ledger.create_release(SOURCE, [(DEST, ["v1"])], release_id="rel-1")
    attempt = ledger.mark_running(release, DEST, worker="w1", lease=20, expect=("queued", 0))
    key = DestinationLock(client, DEST, DIGEST, 60).key
    client.set(key, "someone-else")
    assert not ledger.mark_succeeded(release, DEST, stats={}, seconds=1, attempt=attempt,
                                     lock=(key, "mine"))
    assert client.get(key) == "someone-else"


SCENARIOS = [one_attempt, moved_before_the_start, handed_over_mid_copy,
             redelivered_after_a_lost_worker, a_retry_then_success, a_lock_taken_by_another]


@pytest.mark.parametrize("scenario", SCENARIOS, ids=lambda s: s.__name__)
def test_the_short_way_writes_what_the_long_way_does(scenario: Scenario) -> None:
    def run(scripts: bool) -> dict[str, Any]:
        client = fakeredis.FakeRedis(decode_responses=True)
        clock = FakeClock()
        ledger = Ledger(client, clock=clock, retention=3600, observer=MetricsObserver())
        ledger._scripted.enabled = scripts
        scenario(ledger, client, clock)
        return dump(client)

    assert run(scripts=True) == run(scripts=False)


def test_a_first_attempt_costs_one_script_to_start_and_one_to_end() -> None:
    client = fakeredis.FakeRedis(decode_responses=True)
    clock = FakeClock()
    ledger = Ledger(client, clock=clock, retention=3600, observer=MetricsObserver())
    release = ledger.create_release(SOURCE, [(DEST, ["v1"])], release_id="rel-1")
    sent: list[str] = []
    original = client.execute_command

    def counting(*args: Any, **kwargs: Any) -> Any:
        sent.append(str(args[0]).upper())
        return original(*args, **kwargs)

    CheckedWrite("warm", {}).apply(client)  # the first script of a worker loads it
    client.execute_command = counting  # type: ignore[method-assign]
    attempt = ledger.mark_running(release, DEST, worker="w1", lease=20, expect=("queued", 0))
    ledger.mark_succeeded(release, DEST, stats={}, seconds=1, attempt=attempt)
    assert sent == ["EVALSHA", "EVALSHA"]
    record = ledger.record(release, DEST)
    assert record is not None and record.state == "succeeded" and record.attempts == 1
    assert [(a.attempt, a.outcome, a.worker) for a in record.history] == [
        (1, "succeeded", "w1")]


def test_a_redis_that_refuses_scripts_gets_transitions_under_watch(monkeypatch: Any) -> None:
    client = fakeredis.FakeRedis(decode_responses=True)
    ledger = Ledger(client, clock=FakeClock(), retention=3600)
    release = ledger.create_release(SOURCE, [(DEST, ["v1"])], release_id="rel-1")
    calls: list[int] = []
    real = CheckedWrite.apply

    def refused(self: CheckedWrite, client: Any) -> Any:
        calls.append(1)
        return real(self, _Refusing(client))

    monkeypatch.setattr(CheckedWrite, "apply", refused)
    first = ledger.mark_running(release, DEST, worker="w1", lease=20, expect=("queued", 0))
    ledger.mark_succeeded(release, DEST, stats={}, seconds=1, attempt=first)
    assert calls == [1]  # refused once: the ledger asks no more
    record = ledger.record(release, DEST)
    assert record is not None and record.state == "succeeded"
    assert client.hget(dest_key(release, DEST), "attempts") == "1"


class _Refusing:
    """A client whose Redis refuses scripts, as an ACL without EVALSHA does."""

    def __init__(self, client: Any) -> None:
        self._client = client

    def register_script(self, script: str) -> Any:
        def call(**_: Any) -> Any:
            raise redis.ResponseError("NOPERM this user has no permissions to run the "
                                      "'evalsha' command")
        return call


# -- the tag's claim (workers/tag_order.py) ---------------------------------------------------

OLD = TagOwner(3, "rel-3", "sha256:" + "3" * 64, 1_700_000_000.25)
NEW = TagOwner(5, "rel-5", "sha256:" + "5" * 64, 1_700_000_100.5)
RECORDS: dict[str, dict[str, str] | None] = {
    "none": None, "old": OLD.to_fields(), "new": NEW.to_fields(),
    "damaged": {"order": "x", "release": "rel-9", "digest": "", "at": "0"},
    "emptied": {"order": "1", "release": "", "digest": "", "at": "0"},
    "spelt apart": {**OLD.to_fields(), "order": "03"},  # the same owner to from_fields
}


@pytest.mark.parametrize("record", RECORDS, ids=str)
@pytest.mark.parametrize("expected", [None, OLD], ids=["expects-none", "expects-old"])
@pytest.mark.parametrize("lease_holder", ["ours", "another", "nobody", "no-lease"])
def test_a_tag_claim_the_short_way_does_what_the_transaction_does(
    record: str, expected: TagOwner | None, lease_holder: str,
) -> None:
    def run(scripts: bool) -> tuple[tuple[bool, bool], bool | None, dict[str, Any]]:
        client = fakeredis.FakeRedis(decode_responses=True)
        key = owner_key("r1.example/app", "v1")
        if RECORDS[record] is not None:
            client.hset(key, mapping=RECORDS[record])
        lease = None
        if lease_holder != "no-lease":
            lease = Lease(client, lock_key("r1.example/app", "v1"), 30, token="rel-5/f00d")
            if lease_holder == "ours":
                assert lease.acquire()
            elif lease_holder == "another":
                client.set(lease.key, "rel-4/abc")
        owners = TagOwners(client, ttl=3600)
        owners._scripts = scripts
        result = owners.claim_and_release("r1.example/app", "v1", NEW, expected, lease)
        return result, (lease.held if lease is not None else None), dump(client)

    assert run(scripts=True) == run(scripts=False)
