"""Handing a dead worker's destination over: the reaper against fakeredis and a driven clock."""

from __future__ import annotations

from typing import Any

from tests.workers.conftest import FakeClock
from workers.ledger import Ledger
from workers.locks import DestinationLock
from workers.reaper import Reaper

DIGEST = "sha256:" + "d" * 64
SOURCE = f"src.example/app@{DIGEST}"
DEST = "dst.example/app"
TASK = {"release_id": "", "source": SOURCE, "destination": DEST, "tags": ["v1"]}


def setup(redis_client: Any, clock: FakeClock) -> tuple[Ledger, str, list[dict[str, Any]],
                                                         Reaper]:
    ledger = Ledger(redis_client, clock=clock)
    release_id = ledger.create_release(SOURCE, [(DEST, ["v1"])])
    sent: list[dict[str, Any]] = []
    reaper = Reaper(ledger, redis_client, sent.append, lock_ttl=20, clock=clock)
    return ledger, release_id, sent, reaper


def test_a_running_attempt_whose_heartbeat_stopped_is_handed_over_once(
    redis_client: Any, clock: FakeClock,
) -> None:
    ledger, release_id, sent, reaper = setup(redis_client, clock)
    task = {**TASK, "release_id": release_id}
    ledger.mark_running(release_id, DEST, worker="w1@host", task=task, lease=20)
    lock = DestinationLock(redis_client, DEST, DIGEST, 20)
    assert lock.acquire()
    clock.advance(10)
    assert reaper.sweep() == []  # not overdue yet
    clock.advance(15)
    assert reaper.sweep() == []  # overdue, but its lock still held: maybe alive
    redis_client.delete(lock.key)  # the lease lapsed
    assert reaper.sweep() == [(release_id, DEST)]
    assert reaper.sweep() == []  # once
    record = ledger.record(release_id, DEST)
    assert record is not None
    assert (record.state, record.generation, record.error_type) == ("retrying", 1, "WorkerLost")
    [lost] = record.history
    assert lost.outcome == "lost" and lost.worker == "w1@host"
    assert lost.error is not None and "w1@host lost at" in lost.error
    assert "heartbeat stopped" in lost.error
    assert sent == [{**task, "generation": 1}]


def test_an_attempt_that_ended_is_not_handed_over(redis_client: Any, clock: FakeClock) -> None:
    ledger, release_id, sent, reaper = setup(redis_client, clock)
    ledger.mark_running(release_id, DEST, worker="w1@host",
                        task={**TASK, "release_id": release_id}, lease=20)
    ledger.mark_succeeded(release_id, DEST, stats={}, seconds=1)
    clock.advance(60)
    assert reaper.sweep() == [] and sent == []
    assert ledger.overdue() == []


def test_a_heartbeat_keeps_the_attempt(redis_client: Any, clock: FakeClock) -> None:
    ledger, release_id, sent, reaper = setup(redis_client, clock)
    ledger.mark_running(release_id, DEST, worker="w1@host",
                        task={**TASK, "release_id": release_id}, lease=20)
    for _ in range(5):
        clock.advance(10)
        ledger.heartbeat(release_id, DEST, 20)
        assert reaper.sweep() == []
    assert sent == []


def test_two_reapers_at_once_hand_over_once(redis_client: Any, clock: FakeClock) -> None:
    ledger, release_id, sent, reaper = setup(redis_client, clock)
    other = Reaper(ledger, redis_client, sent.append, lock_ttl=20, clock=clock)
    ledger.mark_running(release_id, DEST, worker="w1@host",
                        task={**TASK, "release_id": release_id}, lease=20)
    clock.advance(30)
    handed = reaper.sweep() + other.sweep()
    assert handed == [(release_id, DEST)] and len(sent) == 1


def test_a_new_attempt_after_a_silent_death_records_the_lost_one(
    redis_client: Any, clock: FakeClock,
) -> None:
    # RabbitMQ hands the message back at once when a worker dies: the next attempt starts
    # before any reaper looked, and says what became of the one before it.
    ledger, release_id, _, _ = setup(redis_client, clock)
    assert ledger.mark_running(release_id, DEST, worker="w1@host", lease=20) == 1
    clock.advance(5)
    assert ledger.mark_running(release_id, DEST, worker="w2@host", lease=20) == 2
    record = ledger.record(release_id, DEST)
    assert record is not None
    [lost] = record.history
    assert (lost.attempt, lost.worker, lost.outcome) == (1, "w1@host", "lost")


def test_a_copy_that_outlived_its_lease_cannot_overwrite_the_one_that_took_over(
    redis_client: Any, clock: FakeClock,
) -> None:
    ledger, release_id, _, _ = setup(redis_client, clock)
    old = ledger.mark_running(release_id, DEST, worker="w1@host", lease=20)
    new = ledger.mark_running(release_id, DEST, worker="w2@host", lease=20)
    ledger.mark_failed(release_id, DEST, error="late", error_type="Zombie", attempt=old)
    record = ledger.record(release_id, DEST)
    assert record is not None and record.state == "running" and record.worker == "w2@host"
    ledger.mark_succeeded(release_id, DEST, stats={}, seconds=1, attempt=new)
    record = ledger.record(release_id, DEST)
    assert record is not None and record.state == "succeeded"


def test_a_retry_that_never_starts_is_handed_over(redis_client: Any, clock: FakeClock) -> None:
    # The worker holding a retry's message (a countdown) dies while it waits.
    ledger, release_id, sent, reaper = setup(redis_client, clock)
    task = {**TASK, "release_id": release_id}
    attempt = ledger.mark_running(release_id, DEST, worker="w1@host", task=task, lease=20)
    ledger.mark_retrying(release_id, DEST, error="503", error_type="ServerError",
                         next_retry_at=clock.now + 30, attempt=attempt, due_by=clock.now + 50)
    clock.advance(40)
    assert reaper.sweep() == []  # due, but within its grace
    clock.advance(15)
    assert reaper.sweep() == [(release_id, DEST)]
    record = ledger.record(release_id, DEST)
    assert record is not None and record.generation == 1 and record.state == "retrying"
    assert record.last_error is not None and "never started" in record.last_error
    assert sent == [{**task, "generation": 1}]
    assert reaper.sweep() == []  # handed over once; the new task's own deadlines take over
