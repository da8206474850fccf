"""Mirror metrics as Prometheus parses them: last success, tags by state, last run ok; which
mirrors are reported; nothing when Redis is down."""

from __future__ import annotations

from typing import Any

import fakeredis
import redis
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families
from redis.backoff import NoBackoff
from redis.retry import Retry

from tests.support.ports import free_port
from tests.workers.conftest import FakeClock
from workers.mirror_metrics import TAG_STATES, MirrorCollector
from workers.mirror_model import MirrorRun
from workers.mirror_runs import MirrorRuns

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]
T0 = 1_700_000_000.0
COUNTS = {"add": 2, "update": 1, "prune": 3, "in_sync": 40, "held_back": 5, "errors": 0,
          "pruned": 0}


def scrape(collector: MirrorCollector) -> Samples:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(collector)
    text = generate_latest(registry).decode()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def record(client: Any, name: str, at: float, *, ok: bool = True) -> None:
    MirrorRuns(client).record(MirrorRun(mirror=name, trigger="schedule", started_at=at,
                                        finished_at=at + 10, ok=ok,
                                        counts=COUNTS if ok else {}))


def test_the_last_run_of_each_configured_mirror(redis_client: Any) -> None:
    record(redis_client, "nginx", T0)
    record(redis_client, "alpine", T0)
    record(redis_client, "alpine", T0 + 100, ok=False)
    samples = scrape(MirrorCollector(redis_client, ["nginx", "alpine", "never-run"]))
    success = "fanout_mirror_last_success_timestamp_seconds"
    assert samples[(success, (("mirror", "nginx"),))] == T0 + 10
    assert samples[(success, (("mirror", "alpine"),))] == T0 + 10
    assert samples[("fanout_mirror_last_run_ok", (("mirror", "nginx"),))] == 1
    assert samples[("fanout_mirror_last_run_ok", (("mirror", "alpine"),))] == 0
    for state in TAG_STATES:
        assert samples[("fanout_mirror_tags", (("mirror", "nginx"), ("state", state)))] == \
            COUNTS[state]
        assert samples[("fanout_mirror_tags", (("mirror", "alpine"), ("state", state)))] == 0
    assert not [key for key in samples if ("mirror", "never-run") in key[1]]


def test_a_mirror_out_of_the_config_is_not_reported(redis_client: Any) -> None:
    record(redis_client, "removed", T0)
    record(redis_client, "kept", T0)
    samples = scrape(MirrorCollector(redis_client, ["kept"]))
    assert not [key for key in samples if ("mirror", "removed") in key[1]]
    assert scrape(MirrorCollector(redis_client, [])) == {}


def test_without_a_config_the_mirrors_redis_recorded_recently() -> None:
    client = fakeredis.FakeRedis()  # bytes: decoding is the reader's job
    record(client, "nginx", T0)
    samples = scrape(MirrorCollector(client, None, clock=FakeClock(T0 + 60)))
    assert samples[("fanout_mirror_last_run_ok", (("mirror", "nginx"),))] == 1
    # Past the retention (30 days) it is no longer reported.
    assert scrape(MirrorCollector(client, None, clock=FakeClock(T0 + 40 * 86400))) == {}


def test_a_redis_that_does_not_answer_reports_nothing() -> None:
    down = redis.Redis(port=free_port(), socket_connect_timeout=0.5,
                       retry=Retry(NoBackoff(), 0))
    assert scrape(MirrorCollector(down, ["nginx"])) == {}
