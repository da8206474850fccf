"""The copy task's decisions, run against fakeredis, a fake engine and a hand-driven clock."""

from __future__ import annotations

from typing import Any

import pytest

from registry.errors import ConnectionFailed, Denied, RateLimited, TagImmutable
from registry.immutable import ANSWERS
from tests.support.round_trips import CountingFakeRedis
from tests.workers.conftest import FakeClock
from workers.checked_write import CheckedWrite
from workers.engine import LeaseLost
from workers.job import CopyJob
from workers.ledger import Ledger
from workers.locks import DestinationLock
from workers.policy import TaskRetryPolicy
from workers.runner import CopyRunner, Failed, RetryLater, Succeeded, Superseded

DIGEST = "sha256:" + "d" * 64
SOURCE = f"src.example/app@{DIGEST}"
DEST = "dst.example/app"
STATS = {"bytes_transferred": 10, "blobs_uploaded": 1}


class SlowerSoftLimit(Exception):
    """Stands for Celery's SoftTimeLimitExceeded, which the task passes as transient."""


class FakeEngine:
    """Plays back results: a dict is returned, an exception raised; records each call."""

    def __init__(self, *results: Any) -> None:
        self.results = list(results)
        self.calls: list[tuple[CopyJob, float | None]] = []
        self.lock_seen: list[str | None] = []
        self.redis: Any = None

    def copy(self, job: CopyJob, *, timeout: float | None,
             abort: Any = None, tag_gate: Any = None) -> dict[str, int]:
        self.calls.append((job, timeout))
        if self.redis is not None:
            self.lock_seen.append(self.redis.get(f"fanout:lock:{job.destination}@{job.digest}"))
        result = self.results.pop(0)
        if isinstance(result, BaseException):
            raise result
        return dict(result)


class Harness:
    def __init__(self, redis_client: Any, clock: FakeClock, engine: FakeEngine,
                 **policy: Any) -> None:
        self.redis = redis_client
        self.clock = clock
        self.engine = engine
        engine.redis = redis_client
        self.ledger = Ledger(redis_client, clock=clock)
        self.release_id = self.ledger.create_release(SOURCE, [(DEST, ["v1"])])
        defaults = {"max_retries": 2, "max_age": 600, "backoff": 4, "backoff_max": 60,
                    "busy_countdown": 10}
        self.runner = CopyRunner(
            ledger=self.ledger, locks=redis_client, engine=engine,
            policy=TaskRetryPolicy(**{**defaults, **policy}), lock_ttl=120, timeout=50,
            transient=(SlowerSoftLimit,), clock=clock, monotonic=clock, rand=lambda: 0.5,
        )

    def kwargs(self, **change: Any) -> dict[str, Any]:
        return {"release_id": self.release_id, "source": SOURCE, "destination": DEST,
                "tags": ["v1"], **change}

    def run(self, **change: Any) -> Any:
        return self.runner.run((), self.kwargs(**change), worker="w1@host", owner="task-1")

    def record(self) -> Any:
        record = self.ledger.record(self.release_id, DEST)
        assert record is not None
        return record

    def lock_free(self) -> bool:
        return not self.redis.keys("fanout:lock:*")


@pytest.fixture
def make(redis_client: Any, clock: FakeClock) -> Any:
    def build(*results: Any, **policy: Any) -> Harness:
        return Harness(redis_client, clock, FakeEngine(*results), **policy)
    return build


def test_success_is_recorded_with_stats(make: Any) -> None:
    h = make(STATS)
    outcome = h.run()
    assert isinstance(outcome, Succeeded) and outcome.stats == STATS
    record = h.record()
    assert (record.state, record.attempts, record.bytes, record.worker) == (
        "succeeded", 1, 10, "w1@host")
    job, timeout = h.engine.calls[0]
    assert (job.source, job.destination, job.tags, timeout) == (SOURCE, DEST, ("v1",), 50)
    assert h.engine.lock_seen[0] is not None and h.engine.lock_seen[0].startswith("task-1/")
    assert h.lock_free()


def test_a_permanent_error_fails_at_once(make: Any) -> None:
    h = make(Denied("push denied", status=403))
    outcome = h.run()
    assert outcome == Failed("push denied [HTTP 403]", "Denied")
    record = h.record()
    assert (record.state, record.attempts, record.error_type) == ("failed", 1, "Denied")
    assert record.last_error == "push denied [HTTP 403]"
    assert h.lock_free()


def test_an_immutable_tag_fails_at_once_and_is_never_sent_again(make: Any) -> None:
    h = make(TagImmutable("tag v1 is immutable", tag="v1", answer=ANSWERS[0], status=400), STATS)
    outcome = h.run()
    assert outcome == Failed("tag v1 is immutable [HTTP 400]", "TagImmutable")
    assert (h.record().state, h.record().attempts) == ("failed", 1)
    assert len(h.engine.calls) == 1


def test_a_transient_error_retries_with_jittered_backoff(make: Any) -> None:
    h = make(ConnectionFailed("refused"), ConnectionFailed("refused"), STATS)
    first = h.run()
    assert first == RetryLater(2.0, "refused")  # ceiling 4 s * rand 0.5
    record = h.record()
    assert (record.state, record.attempts, record.error_type) == ("retrying", 1, "ConnectionFailed")
    assert record.next_retry_at == h.clock.now + 2.0
    assert h.lock_free()
    h.clock.advance(2)
    assert h.run() == RetryLater(4.0, "refused")  # ceiling 8 s
    h.clock.advance(4)
    assert isinstance(h.run(), Succeeded)
    assert (h.record().state, h.record().attempts) == ("succeeded", 3)


def test_retry_after_sets_the_countdown(make: Any) -> None:
    h = make(RateLimited("slow down", status=429, retry_after=30))
    assert h.run() == RetryLater(30.0, "slow down [HTTP 429]")


def test_gives_up_after_max_retries(make: Any) -> None:
    h = make(*[ConnectionFailed("refused")] * 3)
    assert isinstance(h.run(), RetryLater)
    assert isinstance(h.run(), RetryLater)
    outcome = h.run()
    assert isinstance(outcome, Failed)
    assert outcome.reason == "refused (gave up after 3 attempts)"
    assert (h.record().state, h.record().attempts) == ("failed", 3)


def test_gives_up_when_the_release_is_too_old(make: Any) -> None:
    h = make(ConnectionFailed("refused"), max_retries=100, max_age=600)
    h.clock.advance(599)
    outcome = h.run()
    assert isinstance(outcome, Failed) and "600 s old" in outcome.reason
    assert h.record().state == "failed"


def test_the_soft_time_limit_is_transient(make: Any) -> None:
    h = make(SlowerSoftLimit())
    assert isinstance(h.run(), RetryLater)
    assert h.record().error_type == "SlowerSoftLimit"


def test_an_unexpected_error_fails_without_leaking_credentials(make: Any) -> None:
    h = make(RuntimeError("boom at https://user:s3cret@dst.example/v2/"))
    outcome = h.run()
    assert isinstance(outcome, Failed) and outcome.error_type == "RuntimeError"
    assert "s3cret" not in h.record().last_error
    assert h.lock_free()


def test_an_invalid_message_fails_its_destination_without_copying(make: Any) -> None:
    h = make()
    outcome = h.run(source="src.example/app:v1")
    assert isinstance(outcome, Failed) and outcome.error_type == "InvalidTask"
    assert "not pinned by digest" in outcome.reason
    record = h.record()
    assert (record.state, record.attempts, record.error_type) == ("failed", 0, "InvalidTask")
    assert h.engine.calls == []


def test_a_message_too_broken_to_name_its_destination_is_only_logged(make: Any) -> None:
    h = make()
    outcome = h.runner.run((), {"release_id": h.release_id}, worker=None)
    assert isinstance(outcome, Failed)
    assert h.record().state == "queued"


def test_lock_held_means_retry_soon_without_copying(make: Any) -> None:
    h = make(STATS)
    other = DestinationLock(h.redis, DEST, DIGEST, 120, owner="other-release")
    assert other.acquire()
    outcome = h.run()
    assert isinstance(outcome, RetryLater) and outcome.countdown == 7.5  # 10 * (0.5 + 0.25)
    assert h.engine.calls == []
    record = h.record()
    assert (record.state, record.error_type, record.attempts) == ("retrying", "LockHeld", 0)
    assert other.holder() == other.token  # untouched
    other.release()
    assert isinstance(h.run(), Succeeded)


def test_lock_held_by_a_running_redelivery_leaves_its_record_alone(make: Any) -> None:
    h = make()
    h.ledger.mark_running(h.release_id, DEST, worker="first")
    assert DestinationLock(h.redis, DEST, DIGEST, 120).acquire()
    assert isinstance(h.run(), RetryLater)
    assert (h.record().state, h.record().worker) == ("running", "first")


def test_lock_held_past_the_retry_window_fails(make: Any) -> None:
    h = make(max_age=600)
    assert DestinationLock(h.redis, DEST, DIGEST, 120).acquire()
    h.clock.advance(600 + 120 + 1)
    outcome = h.run()
    assert isinstance(outcome, Failed) and outcome.error_type == "LockHeld"


def test_a_redelivery_after_success_does_not_regress(make: Any) -> None:
    h = make(STATS, Denied("gone"))
    assert isinstance(h.run(), Succeeded)
    again = h.run()
    assert isinstance(again, Succeeded) and again.stats == STATS
    assert (h.record().state, h.record().attempts) == ("succeeded", 1)
    assert len(h.engine.calls) == 1  # the redelivery copied nothing, not even a HEAD


def test_a_task_without_a_ledger_entry_makes_one(make: Any) -> None:
    h = make(STATS)
    outcome = h.run(release_id="rel-sent-by-hand")
    assert isinstance(outcome, Succeeded)
    release = h.ledger.get("rel-sent-by-hand")
    assert release is not None and release.ok and release.source == SOURCE


def test_a_copy_killed_at_the_hard_limit_frees_its_lock_and_retries(make: Any) -> None:
    h = make()
    h.ledger.mark_running(h.release_id, DEST, worker="w1@host")
    # The dead child's lock (taken as task-1) and someone else's on another digest.
    assert DestinationLock(h.redis, DEST, DIGEST, 120, owner="task-1").acquire()
    other = DestinationLock(h.redis, DEST, "sha256:" + "e" * 64, 120, owner="task-2")
    assert other.acquire()
    outcome = h.runner.killed((), h.kwargs(), owner="task-1", reason="killed at the hard limit")
    assert outcome == RetryLater(2.0, "killed at the hard limit")
    record = h.record()
    assert (record.state, record.error_type) == ("retrying", "Timeout")
    assert h.redis.keys("fanout:lock:*") == [other.key]  # only the dead copy's lock went


def test_a_killed_copy_out_of_retries_fails(make: Any) -> None:
    h = make(max_retries=0)
    h.ledger.mark_running(h.release_id, DEST, worker="w1@host")
    outcome = h.runner.killed((), h.kwargs(), owner="task-1", reason="killed")
    assert isinstance(outcome, Failed) and h.record().state == "failed"


def test_release_for_leaves_a_lock_another_task_took(redis_client: Any) -> None:
    mine = DestinationLock(redis_client, DEST, DIGEST, 120, owner="task-10")
    assert mine.acquire()
    assert not DestinationLock(redis_client, DEST, DIGEST, 120).release_for("task-1")
    assert not DestinationLock(redis_client, DEST, DIGEST, 120).release_for("")
    assert DestinationLock(redis_client, DEST, DIGEST, 120).release_for("task-10")
    assert mine.holder() is None


def test_a_message_of_an_older_generation_does_nothing(make: Any) -> None:
    h = make(STATS)
    h.ledger.reset_for_retry(h.release_id, [DEST])  # sent again since: generation 1
    outcome = h.run()  # the old message, generation 0, redelivered late
    assert isinstance(outcome, Superseded)
    assert h.engine.calls == [] and h.record().attempts == 0
    assert isinstance(h.run(generation=1), Succeeded)


def test_a_copy_whose_lease_was_lost_leaves_the_record_to_its_successor(make: Any) -> None:
    h = make(LeaseLost("lease lost"))
    outcome = h.run()
    assert isinstance(outcome, Superseded)
    record = h.record()
    assert record.state == "running"  # untouched: the reaper or the successor records it
    assert h.lock_free()


def test_the_message_is_kept_for_handing_over(make: Any) -> None:
    h = make(STATS)
    h.run(referrers={"enabled": False, "types": []})
    task = h.ledger.task_of(h.release_id, DEST)
    assert task == {**h.kwargs(), "referrers": {"enabled": False, "types": []},
                    "generation": 0}


# -- what a delivery costs, in round trips to Redis -------------------------------------------


def counted(*results: Any) -> Harness:
    client = CountingFakeRedis(decode_responses=True)
    h = Harness(client, FakeClock(), FakeEngine(*results))
    h.engine.redis = None  # the fake engine's look at the lock is no cost of the runner's
    client.tally.reset()
    return h


def test_a_delivery_reads_its_record_once_and_without_the_history() -> None:
    h = counted(STATS)
    CheckedWrite("warm", {}).apply(h.redis)  # a worker's first script loads it (SCRIPT LOAD)
    h.redis.tally.reset()
    assert isinstance(h.run(), Succeeded)
    # One read (an HMGET and the release's order, pipelined) decides whether the message is
    # stale; then the lock, and the attempt's running and succeeded transitions, each one
    # script (EVALSHA) that checks the fields the delivery read or the start wrote; the lock
    # is given back inside the succeeded one. No history list is started: the first attempt's
    # end goes in its record.
    assert h.redis.tally.commands == ["PIPELINE", "SET", "EVALSHA", "EVALSHA"]
    assert not h.redis.keys("fanout:lock:*")


def test_a_failed_attempt_reads_its_round_with_one_hmget() -> None:
    h = counted(ConnectionFailed("refused"))
    assert isinstance(h.run(), RetryLater)
    commands = h.redis.tally.commands
    assert commands.count("PIPELINE") == 2 and "LRANGE" not in commands
    assert len(commands) == 12


def test_a_busy_destination_reads_its_record_with_one_hmget() -> None:
    h = counted(STATS)
    assert DestinationLock(h.redis, DEST, DIGEST, 120, owner="other").acquire()
    h.redis.tally.reset()
    assert isinstance(h.run(), RetryLater)
    # A queued record's move to retrying creates no key: no PTTL.
    assert h.redis.tally.commands == ["PIPELINE", "SET", "PIPELINE",
                                      "WATCH", "HGETALL", "MULTI/EXEC"]


class RecordingGates:
    """A ``TagOrdering`` that hands the engine a gate reporting one superseded tag, and
    remembers the order each copy was given."""

    def __init__(self) -> None:
        self.orders: list[int] = []

    def gate(self, release_id: str, order: int, lease: Any) -> Any:
        self.orders.append(order)
        gate = type("Gate", (), {})()
        gate.superseded = {"latest": "rel-newer"}
        return gate


def test_the_gate_gets_the_ledgers_order_and_its_superseded_tags_are_recorded(
        make: Any) -> None:
    h = make(STATS)
    gates = RecordingGates()
    h.runner.tag_order = gates
    # The message says 3; the ledger's word wins.
    outcome = h.run(order=3)
    assert isinstance(outcome, Succeeded) and outcome.superseded == {"latest": "rel-newer"}
    assert gates.orders == [h.ledger.order_of(h.release_id)] and gates.orders != [3]
    assert h.record().superseded == {"latest": "rel-newer"}


def test_a_task_sent_without_the_producer_keeps_the_order_it_carries(make: Any) -> None:
    h = make(STATS)
    gates = RecordingGates()
    h.runner.tag_order = gates
    outcome = h.runner.run((), h.kwargs(release_id="rel-by-hand", order=41), worker="w1@host",
                           owner="task-2")
    assert isinstance(outcome, Succeeded)
    assert gates.orders == [41] and h.ledger.order_of("rel-by-hand") == 41
