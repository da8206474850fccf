"""The metrics counters through real ledger transitions, and the collector's exposition, parsed
as Prometheus parses it."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import fakeredis
import redis
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families
from redis.backoff import NoBackoff
from redis.retry import Retry

from tests.support.ports import free_port
from tests.workers.conftest import FakeClock
from workers import verify_metrics
from workers.ledger import Ledger
from workers.metrics import (
    ATTEMPTS_KEY,
    RELEASE_LIMIT,
    LedgerCollector,
    MetricsObserver,
    bucket_of,
    registry_of,
)
from workers.verify_metrics import VERIFY_KEY, RegistryFindings

DIGEST = "sha256:" + "d" * 64
SOURCE = f"src.example/app@{DIGEST}"
GHCR = "ghcr.io/acme/app"
ROOT = Path(__file__).resolve().parents[2]
LOCAL = "localhost:5000/acme/app"

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def ledger_of(client: Any, clock: FakeClock) -> Ledger:
    return Ledger(client, clock=clock, observer=MetricsObserver(), retention=3600)


def scrape(client: Any, clock: FakeClock, broker: Any = None) -> Samples:
    """Every sample of one scrape, keyed by name and sorted labels."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(LedgerCollector(client, broker, retention=3600, clock=clock))
    text = generate_latest(registry).decode()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def copies(samples: Samples, registry: str, outcome: str) -> float:
    return samples[("fanout_copies_total", (("outcome", outcome), ("registry", registry)))]


def test_a_succeeded_copy_counts_once_with_its_bytes_and_seconds(
    redis_client: Any, clock: FakeClock,
) -> None:
    ledger = ledger_of(redis_client, clock)
    release = ledger.create_release(SOURCE, [(GHCR, ["v1"]), (LOCAL, ["v1"])])
    ledger.mark_running(release, GHCR, worker="w1")
    ledger.mark_succeeded(release, GHCR, stats={"bytes_transferred": 12345}, seconds=3.2)
    ledger.mark_succeeded(release, GHCR, stats={"bytes_transferred": 12345}, seconds=3.2)

    samples = scrape(redis_client, clock)

    assert copies(samples, "ghcr.io", "succeeded") == 1  # the late duplicate ended nothing
    assert copies(samples, "ghcr.io", "failed") == copies(samples, "ghcr.io", "retried") == 0
    assert samples[("fanout_bytes_total", (("registry", "ghcr.io"),))] == 12345
    seconds = {dict(labels).get("le"): value for (name, labels), value in samples.items()
               if name == "fanout_copy_seconds_bucket"}
    assert seconds["2.5"] == 0 and seconds["5.0"] == 1 and seconds["+Inf"] == 1
    assert samples[("fanout_copy_seconds_count", (("registry", "ghcr.io"),))] == 1
    assert samples[("fanout_copy_seconds_sum", (("registry", "ghcr.io"),))] == 3.2
    assert ("fanout_copies_total", (("outcome", "succeeded"), ("registry", "localhost:5000"))) \
        not in samples  # queued only: no attempt ended there
    assert samples[("fanout_lost_workers_total", ())] == 0


def test_retries_failures_and_lost_workers_by_registry(
    redis_client: Any, clock: FakeClock,
) -> None:
    ledger = ledger_of(redis_client, clock)
    release = ledger.create_release(SOURCE, [(GHCR, ["v1"]), (LOCAL, ["v1"])])
    ledger.mark_running(release, LOCAL, worker="w1")
    clock.advance(0.7)
    ledger.mark_retrying(release, LOCAL, error="503", error_type="Unavailable",
                         next_retry_at=clock.now + 1)
    attempt = ledger.mark_running(release, LOCAL, worker="w2")
    assert ledger.mark_lost(release, LOCAL, attempt=attempt, reason="w2 lost") is not None
    ledger.mark_running(release, LOCAL, worker="w3")
    ledger.mark_running(release, LOCAL, worker="w4")  # a redelivery: w3's attempt never ended
    clock.advance(42)
    ledger.mark_failed(release, LOCAL, error="denied", error_type="Denied")
    ledger.mark_retrying(release, GHCR, error="busy", error_type="LockHeld",
                         next_retry_at=clock.now)  # not running: no attempt ended

    samples = scrape(redis_client, clock)

    assert copies(samples, "localhost:5000", "retried") == 3  # one retrying, two lost
    assert copies(samples, "localhost:5000", "failed") == 1
    assert copies(samples, "localhost:5000", "succeeded") == 0
    assert samples[("fanout_lost_workers_total", ())] == 2
    # Lost attempts are not timed: the retry (0.7 s) and the failure (42 s) are.
    assert samples[("fanout_copy_seconds_count", (("registry", "localhost:5000"),))] == 2
    assert samples[("fanout_copy_seconds_bucket",
                    (("le", "1.0"), ("registry", "localhost:5000")))] == 1
    assert samples[("fanout_copy_seconds_bucket",
                    (("le", "60.0"), ("registry", "localhost:5000")))] == 2
    assert ("fanout_copies_total", (("outcome", "retried"), ("registry", "ghcr.io"))) \
        not in samples


def test_the_counters_move_only_with_the_transition(redis_client: Any, clock: FakeClock) -> None:
    ledger = ledger_of(redis_client, clock)
    release = ledger.create_release(SOURCE, [(GHCR, ["v1"])])
    attempt = ledger.mark_running(release, GHCR, worker="w1")
    ledger.mark_running(release, GHCR, worker="w2")  # w1's attempt lost, w2's now
    before = redis_client.hgetall(ATTEMPTS_KEY)
    ledger.mark_succeeded(release, GHCR, stats={}, seconds=1, attempt=attempt)  # stale: refused
    assert redis_client.hgetall(ATTEMPTS_KEY) == before == {"ghcr.io lost -": "1"}


def test_a_ledger_without_decoding_counts_the_same(clock: FakeClock) -> None:
    client = fakeredis.FakeRedis()
    ledger = ledger_of(client, clock)
    release = ledger.create_release(SOURCE, [(GHCR, ["v1"])])
    ledger.mark_running(release, GHCR, worker="w1")
    ledger.mark_succeeded(release, GHCR, stats={"bytes_transferred": 7}, seconds=0.05)
    samples = scrape(client, clock)
    assert copies(samples, "ghcr.io", "succeeded") == 1
    assert samples[("fanout_copy_seconds_bucket", (("le", "0.1"), ("registry", "ghcr.io")))] == 1


def test_releases_by_state_within_retention(redis_client: Any, clock: FakeClock) -> None:
    ledger = ledger_of(redis_client, clock)
    old = ledger.create_release(SOURCE, [(GHCR, [])])
    ledger.mark_failed(old, GHCR, error="x", error_type="Denied")
    clock.advance(3601)  # past retention (its keys would have expired too)
    ok = ledger.create_release(SOURCE, [(GHCR, []), (LOCAL, [])], optional=[LOCAL])
    ledger.mark_succeeded(ok, GHCR, stats={}, seconds=1)  # LOCAL optional, still queued
    failed = ledger.create_release(SOURCE, [(GHCR, []), (LOCAL, [])])
    ledger.mark_succeeded(failed, GHCR, stats={}, seconds=1)
    ledger.mark_failed(failed, LOCAL, error="x", error_type="Denied")
    ledger.create_release(SOURCE, [(GHCR, []), (LOCAL, [])])

    samples = scrape(redis_client, clock)

    states = {dict(labels)["state"]: value for (name, labels), value in samples.items()
              if name == "fanout_releases"}
    assert states == {"running": 1, "done-ok": 1, "done-failed": 1}


def test_releases_are_read_up_to_the_limit(redis_client: Any, clock: FakeClock) -> None:
    ledger = ledger_of(redis_client, clock)
    for _ in range(RELEASE_LIMIT + 5):
        ledger.create_release(SOURCE, [(GHCR, [])])
    samples = scrape(redis_client, clock)
    assert samples[("fanout_releases", (("state", "running"),))] == RELEASE_LIMIT


def test_queue_depth_of_the_default_and_every_fanout_queue(
    redis_client: Any, clock: FakeClock,
) -> None:
    broker = fakeredis.FakeRedis()  # kombu's keys, as its Redis transport writes them
    sep = "\x06\x16"
    broker.sadd("_kombu.binding.fanout", f"fanout{sep}{sep}fanout")
    broker.sadd("_kombu.binding.fanout.ghcr.io", f"fanout.ghcr.io{sep}{sep}fanout.ghcr.io")
    broker.sadd("_kombu.binding.fanout.quay.io", f"fanout.quay.io{sep}{sep}fanout.quay.io")
    broker.sadd("_kombu.binding.celeryev", f"worker.#{sep}*{sep}celeryev.abc")
    broker.rpush("fanout.ghcr.io", "m1", "m2")
    broker.rpush(f"fanout.ghcr.io{sep}3", "m3")
    broker.rpush("celeryev.abc", "e")
    broker.hset("unacked", mapping={"tag1": "m", "tag2": "m"})

    samples = scrape(redis_client, clock, broker)

    depths = {dict(labels)["queue"]: value for (name, labels), value in samples.items()
              if name == "fanout_queue_depth"}
    assert depths == {"fanout": 0, "fanout.ghcr.io": 3, "fanout.quay.io": 0}
    assert samples[("fanout_unacked_messages", ())] == 2


def test_no_broker_no_queue_depth(redis_client: Any, clock: FakeClock) -> None:
    samples = scrape(redis_client, clock)
    assert not any(name.startswith("fanout_queue_depth") for name, _ in samples)
    assert samples[("fanout_ledger_up", ())] == 1


def test_a_redis_that_does_not_answer_reports_down_only(clock: FakeClock) -> None:
    down = redis.Redis(port=free_port(), socket_connect_timeout=1, retry=Retry(NoBackoff(), 0))
    samples = scrape(down, clock, down)
    assert samples == {("fanout_ledger_up", ()): 0}


def test_registry_labels_and_buckets() -> None:
    assert registry_of("ghcr.io/acme/app") == "ghcr.io"
    assert registry_of("localhost:5000/app") == "localhost:5000"
    assert registry_of("Not A/Repository!") == "Not A"  # not a reference: the text before "/"
    assert bucket_of(0.1) == "le=0.1"
    assert bucket_of(0.11) == "le=0.5"
    assert bucket_of(3600) == "le=3600"
    assert bucket_of(3601) == "le=+Inf"


def test_the_grafana_dashboard_uses_only_exported_metrics(
    redis_client: Any, clock: FakeClock,
) -> None:
    ledger = ledger_of(redis_client, clock)
    release = ledger.create_release(SOURCE, [(GHCR, [])])
    ledger.mark_running(release, GHCR, worker="w1")
    ledger.mark_succeeded(release, GHCR, stats={"bytes_transferred": 1}, seconds=1)
    verify_metrics.record(redis_client, {"ghcr.io": RegistryFindings(1, 0, 2)}, clock())
    exported = {name for name, _ in scrape(redis_client, clock, fakeredis.FakeRedis())}
    dashboard = json.loads((ROOT / "docs/grafana-dashboard.json").read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
    used = {m for e in exprs for m in re.findall(r"\bfanout_[a-z_]+", e)}
    assert used and used <= exported, used - exported
    assert {"fanout_copies_total", "fanout_copy_seconds_bucket", "fanout_bytes_total",
            "fanout_queue_depth", "fanout_releases", "fanout_lost_workers_total",
            "fanout_verify_drift"} <= used


def test_the_last_verification_per_registry(redis_client: Any, clock: FakeClock) -> None:
    verify_metrics.record(redis_client, {"ghcr.io": RegistryFindings(2, 0, 5),
                                         "localhost:5000": RegistryFindings(0, 1, 3)}, 100.0)
    # A later, narrower run overwrites only the registry it checked.
    verify_metrics.record(redis_client, {"ghcr.io": RegistryFindings(0, 0, 1)}, 200.0)
    redis_client.hset(VERIFY_KEY, "quay.io drift", "not a number")

    samples = scrape(redis_client, clock)

    def gauge(name: str, registry: str) -> float:
        return samples[(name, (("registry", registry),))]

    assert gauge("fanout_verify_drift", "ghcr.io") == 0
    assert gauge("fanout_verify_last_timestamp_seconds", "ghcr.io") == 200.0
    assert gauge("fanout_verify_drift", "localhost:5000") == 0
    assert gauge("fanout_verify_unreachable", "localhost:5000") == 1
    assert gauge("fanout_verify_last_timestamp_seconds", "localhost:5000") == 100.0
    assert ("fanout_verify_drift", (("registry", "quay.io"),)) not in samples


def test_counters_of_workers_before_the_attempts_hash_still_add_in(
    redis_client: Any, clock: FakeClock,
) -> None:
    # What a worker from before the attempts hash wrote for one success and one lost attempt.
    redis_client.hset("fanout:metrics:copies", mapping={"ghcr.io succeeded": 1, "ghcr.io lost": 1})
    redis_client.hset("fanout:metrics:seconds", mapping={
        "ghcr.io le=1": 1, "ghcr.io sum": 0.5, "ghcr.io count": 1})
    redis_client.hset("fanout:metrics:bytes", "ghcr.io", 100)
    ledger = ledger_of(redis_client, clock)
    release = ledger.create_release(SOURCE, [(GHCR, ["v1"]), (LOCAL, ["v1"])])
    ledger.mark_running(release, GHCR, worker="w1")
    ledger.mark_succeeded(release, GHCR, stats={"bytes_transferred": 0}, seconds=3.2)
    ledger.mark_running(release, LOCAL, worker="w1")
    ledger.mark_succeeded(release, LOCAL, stats={}, seconds=0.05)

    samples = scrape(redis_client, clock)

    assert copies(samples, "ghcr.io", "succeeded") == 2
    assert copies(samples, "ghcr.io", "retried") == 1
    assert samples[("fanout_lost_workers_total", ())] == 1
    assert samples[("fanout_bytes_total", (("registry", "ghcr.io"),))] == 100
    # Nothing sent is still a counter at zero, though no HINCRBY of zero was written.
    assert samples[("fanout_bytes_total", (("registry", "localhost:5000"),))] == 0
    ghcr = (("registry", "ghcr.io"),)
    assert samples[("fanout_copy_seconds_count", ghcr)] == 2
    assert samples[("fanout_copy_seconds_sum", ghcr)] == 3.7
    assert samples[("fanout_copy_seconds_bucket", (("le", "1.0"), *ghcr))] == 1
    assert samples[("fanout_copy_seconds_bucket", (("le", "5.0"), *ghcr))] == 2
    assert redis_client.hget("fanout:metrics:attempts", "localhost:5000 succeeded le=0.1") == "1"
