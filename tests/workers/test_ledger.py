from __future__ import annotations

import json
from typing import Any

import fakeredis
import pytest

from tests.workers.conftest import FakeClock
from workers.ledger import Ledger
from workers.records import dest_key, history_key, release_key

SOURCE = "src.example/app@sha256:" + "a" * 64
TARGETS = [("r1.example/app", ["v1"]), ("r2.example/app", ["v1", "latest"])]


@pytest.fixture
def ledger(redis_client: Any, clock: FakeClock) -> Ledger:
    return Ledger(redis_client, retention=3600, clock=clock)


def test_a_new_release_is_all_queued(ledger: Ledger, clock: FakeClock) -> None:
    release_id = ledger.create_release(SOURCE, TARGETS)
    release = ledger.get(release_id)
    assert release is not None
    assert (release.id, release.source) == (release_id, SOURCE)
    assert release.digest == "sha256:" + "a" * 64
    assert release.created_at == clock.now
    assert list(release.destinations) == ["r1.example/app", "r2.example/app"]
    record = release.destinations["r2.example/app"]
    assert (record.state, record.attempts, record.tags) == ("queued", 0, ("v1", "latest"))
    assert record.last_error is None and record.started_at is None and record.stats == {}
    assert not release.done and not release.ok


def test_source_must_be_pinned(ledger: Ledger) -> None:
    with pytest.raises(ValueError, match="not pinned"):
        ledger.create_release("src.example/app:v1", TARGETS)


def test_ids_sort_by_time_and_recent_lists_newest_first(ledger: Ledger, clock: FakeClock) -> None:
    first = ledger.create_release(SOURCE, TARGETS)
    clock.advance(1)
    second = ledger.create_release(SOURCE, TARGETS, release_id="rel-chosen")
    clock.advance(1)
    third = ledger.create_release(SOURCE, TARGETS)
    assert first.startswith("rel-") and first < third
    assert ledger.recent() == [third, second, first]
    assert ledger.recent(2) == [third, second]
    assert ledger.recent(0) == []


def test_a_destination_through_retries_to_success(ledger: Ledger, clock: FakeClock) -> None:
    release_id = ledger.create_release(SOURCE, TARGETS)
    dest = "r1.example/app"
    ledger.mark_running(release_id, dest, worker="w1@host")
    clock.advance(2)
    ledger.mark_retrying(release_id, dest, error="connection refused",
                         error_type="ConnectionFailed", next_retry_at=clock.now + 5)
    record = ledger.record(release_id, dest)
    assert record is not None
    assert (record.state, record.attempts, record.next_retry_at) == ("retrying", 1, clock.now + 5)
    clock.advance(5)
    ledger.mark_running(release_id, dest, worker="w2@host")
    clock.advance(3)
    ledger.mark_succeeded(release_id, dest, stats={"bytes_transferred": 1234, "blobs_uploaded": 2},
                          seconds=3.0)
    record = ledger.record(release_id, dest)
    assert record is not None
    assert (record.state, record.attempts, record.worker) == ("succeeded", 2, "w2@host")
    assert (record.bytes, record.seconds) == (1234, 3.0)
    assert record.stats == {"bytes_transferred": 1234, "blobs_uploaded": 2}
    assert record.finished_at == record.updated_at == clock.now
    assert record.next_retry_at is None
    assert record.last_error == "connection refused"  # the history of an earlier attempt


def test_succeeded_is_final(ledger: Ledger) -> None:
    release_id = ledger.create_release(SOURCE, TARGETS)
    dest = "r1.example/app"
    ledger.mark_running(release_id, dest, worker=None)
    ledger.mark_succeeded(release_id, dest, stats={}, seconds=1.0)
    ledger.mark_running(release_id, dest, worker="late")
    ledger.mark_failed(release_id, dest, error="late redelivery", error_type="X")
    record = ledger.record(release_id, dest)
    assert record is not None
    assert (record.state, record.attempts, record.last_error) == ("succeeded", 1, None)


def test_done_and_ok(ledger: Ledger) -> None:
    release_id = ledger.create_release(SOURCE, TARGETS)
    ledger.mark_succeeded(release_id, "r1.example/app", stats={}, seconds=1.0)
    ledger.mark_running(release_id, "r2.example/app", worker=None)
    ledger.mark_failed(release_id, "r2.example/app", error="denied", error_type="Denied")
    release = ledger.get(release_id)
    assert release is not None
    assert release.done and not release.ok
    doc = release.to_dict()
    json.dumps(doc)
    assert doc["destinations"]["r2.example/app"]["state"] == "failed"
    assert doc["destinations"]["r2.example/app"]["tags"] == ["v1", "latest"]
    assert (doc["done"], doc["ok"]) == (True, False)


def test_failed_records_the_attempts_duration(ledger: Ledger, clock: FakeClock) -> None:
    release_id = ledger.create_release(SOURCE, TARGETS)
    ledger.mark_running(release_id, "r1.example/app", worker=None)
    clock.advance(4)
    ledger.mark_failed(release_id, "r1.example/app", error="denied", error_type="Denied")
    record = ledger.record(release_id, "r1.example/app")
    assert record is not None and record.seconds == 4.0


def test_every_key_expires_with_retention(ledger: Ledger, redis_client: Any) -> None:
    release_id = ledger.create_release(SOURCE, TARGETS)
    ledger.mark_running(release_id, "r1.example/app", worker=None)
    keys = [k for k in redis_client.keys("fanout:release:*")]
    assert len(keys) == 4  # head, dests, two destinations
    assert all(0 < redis_client.ttl(k) <= 3600 for k in keys)


def test_a_write_aligns_its_own_keys_with_the_release_and_leaves_the_rest(
    ledger: Ledger, redis_client: Any,
) -> None:
    # A write must not cost as many commands as the release has destinations.
    release_id = ledger.create_release(SOURCE, TARGETS)
    head, other = release_key(release_id), dest_key(release_id, "r2.example/app")
    mine = dest_key(release_id, "r1.example/app")
    for key in (head, other, mine):
        redis_client.expire(key, 3500)  # a release written a while ago
    ledger.mark_running(release_id, "r1.example/app", worker=None)
    # HSET keeps the expiry it had, the head's: an attempt's start sets none.
    assert 3490 < redis_client.ttl(mine) <= 3500  # expires with the head ...
    assert redis_client.ttl(head) <= 3500 and redis_client.ttl(other) <= 3500  # ... untouched
    ledger.mark_retrying(release_id, "r1.example/app", error="503", error_type="Unavailable",
                         next_retry_at=0.0)
    # The first attempt to end is kept in the record: no history list yet, so no PEXPIRE.
    assert not redis_client.exists(history_key(release_id, "r1.example/app"))
    ledger.mark_running(release_id, "r1.example/app", worker=None)
    ledger.mark_failed(release_id, "r1.example/app", error="denied", error_type="Denied")
    # The attempt before moved to the history list, a key of its own: it expires with the
    # release too.
    assert 3490 < redis_client.ttl(history_key(release_id, "r1.example/app")) <= 3500
    record = ledger.record(release_id, "r1.example/app")
    assert record is not None
    assert [(a.attempt, a.outcome) for a in record.history] == [(1, "retrying"), (2, "failed")]


def test_a_release_past_a_tenth_of_its_retention_is_renewed_whole(
    ledger: Ledger, redis_client: Any,
) -> None:
    release_id = ledger.create_release(SOURCE, TARGETS)
    for key in redis_client.keys("fanout:release:*"):
        redis_client.expire(key, 3000)  # 600 s of 3600 gone: due
    ledger.mark_running(release_id, "r1.example/app", worker=None)
    ledger.mark_retrying(release_id, "r1.example/app", error="503", error_type="Unavailable",
                         next_retry_at=0.0)
    ledger.mark_running(release_id, "r1.example/app", worker=None)
    # at the next write that creates a key (the second attempt's end starts the history list)
    ledger.mark_failed(release_id, "r1.example/app", error="denied", error_type="Denied")
    assert all(redis_client.ttl(k) > 3590 for k in redis_client.keys("fanout:release:*"))


def test_old_releases_leave_the_index(ledger: Ledger, clock: FakeClock) -> None:
    old = ledger.create_release(SOURCE, TARGETS)
    clock.advance(3601)
    new = ledger.create_release(SOURCE, TARGETS)
    assert ledger.recent() == [new]
    assert old != new


def test_unknown_release(ledger: Ledger) -> None:
    assert ledger.get("rel-nope") is None
    assert ledger.record("rel-nope", "r1.example/app") is None


def test_ensure_destination_creates_only_what_is_missing(ledger: Ledger) -> None:
    ledger.ensure_destination("rel-adhoc", SOURCE, "r1.example/app", ["v1"])
    release = ledger.get("rel-adhoc")
    assert release is not None and release.source == SOURCE
    assert release.destinations["r1.example/app"].state == "queued"
    assert ledger.recent() == ["rel-adhoc"]

    release_id = ledger.create_release(SOURCE, TARGETS)
    ledger.mark_running(release_id, "r1.example/app", worker=None)
    ledger.ensure_destination(release_id, SOURCE, "r1.example/app", ["other"])
    record = ledger.record(release_id, "r1.example/app")
    assert record is not None and (record.state, record.tags) == ("running", ("v1",))


def test_a_transition_on_a_vanished_record_rebuilds_it(ledger: Ledger, redis_client: Any) -> None:
    release_id = ledger.create_release(SOURCE, TARGETS)
    redis_client.delete(f"fanout:release:{release_id}:dest:r1.example/app")
    ledger.mark_running(release_id, "r1.example/app", worker=None)
    record = ledger.record(release_id, "r1.example/app")
    assert record is not None and (record.state, record.attempts) == ("running", 1)


def test_works_without_decode_responses(clock: FakeClock) -> None:
    ledger = Ledger(fakeredis.FakeRedis(), clock=clock)
    release_id = ledger.create_release(SOURCE, TARGETS)
    ledger.mark_running(release_id, "r1.example/app", worker="w")
    release = ledger.get(release_id)
    assert release is not None and release.destinations["r1.example/app"].worker == "w"
    assert ledger.recent() == [release_id]


def test_a_rejected_task_of_an_unknown_release_is_findable(ledger: Ledger) -> None:
    ledger.mark_failed("rel-by-hand", "r1.example/app", error="source not pinned",
                       error_type="InvalidTask")
    release = ledger.get("rel-by-hand")
    assert release is not None and not release.ok and release.done
    assert release.destinations["r1.example/app"].last_error == "source not pinned"
    assert "rel-by-hand" in ledger.recent()


def test_exactly_one_finisher_wins_each_final_transition_on_real_redis() -> None:
    # Two workers finish a release's last two destinations in the same instant, many times
    # over: each final transition is claimed once, by one of them.
    import threading

    from tests.support import shared_redis

    # The ledger's keys are the release's own; the test reads nothing else.
    client = shared_redis.client_or_skip()
    ledger = Ledger(client, retention=600)
    source = "src.example/app@sha256:" + "c" * 64
    for _ in range(40):
        release_id = ledger.create_release(source, [("r.example/a", []), ("r.example/b", []),
                                                    ("r.example/c", [])], optional=["r.example/c"])
        wins: list[str] = []
        barrier = threading.Barrier(2)

        def finish(dest: str, release_id: str = release_id, wins: list[str] = wins,
                   barrier: threading.Barrier = barrier) -> None:
            barrier.wait()
            ledger.mark_succeeded(release_id, dest, stats={}, seconds=1)
            if ledger.settle_final(release_id) is not None:
                wins.append(dest)

        threads = [threading.Thread(target=finish, args=(d,)) for d in ("r.example/a",
                                                                        "r.example/b")]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert len(wins) == 1  # the optional destination, still queued, did not hold it back
        assert ledger.settle_final(release_id) is None
        # A retry makes it non-final; final again, it is claimed once more.
        ledger.reset_for_retry(release_id, ["r.example/a"])
        assert ledger.settle_final(release_id) is None
        ledger.mark_succeeded(release_id, "r.example/a", stats={}, seconds=1)
        assert ledger.settle_final(release_id) is not None
        assert ledger.settle_final(release_id) is None


def test_succeeded_gives_back_the_copys_lock_only_while_it_is_that_tokens(
    ledger: Ledger, redis_client: Any,
) -> None:
    release_id = ledger.create_release(SOURCE, TARGETS)
    redis_client.set("fanout:lock:mine", "tok-a")
    ledger.mark_running(release_id, "r1.example/app", worker=None)
    assert ledger.mark_succeeded(release_id, "r1.example/app", stats={}, seconds=1.0,
                                 lock=("fanout:lock:mine", "tok-a"))
    assert not redis_client.exists("fanout:lock:mine")
    # A lock that expired and was taken by another copy stays theirs.
    redis_client.set("fanout:lock:theirs", "tok-b")
    ledger.mark_running(release_id, "r2.example/app", worker=None)
    assert not ledger.mark_succeeded(release_id, "r2.example/app", stats={}, seconds=1.0,
                                     lock=("fanout:lock:theirs", "tok-a"))
    assert redis_client.get("fanout:lock:theirs") in ("tok-b", b"tok-b")
    record = ledger.record(release_id, "r2.example/app")
    assert record is not None and record.state == "succeeded"
