"""The record of mirror runs: last run, last success, failure streak, history, dry runs kept
apart, expiry, and reads in one round trip, against fakeredis."""

from __future__ import annotations

from typing import Any

import fakeredis
import pytest

from tests.support.round_trips import CountingFakeRedis
from workers.mirror_model import MirrorRun
from workers.mirror_runs import (
    HISTORY_LIMIT,
    INDEX_KEY,
    MirrorRuns,
    mirror_key,
    runs_key,
)

T0 = 1_700_000_000.0


def run(at: float, *, ok: bool = True, mirror: str = "nginx", dry_run: bool = False,
        **change: Any) -> MirrorRun:
    base: dict[str, Any] = {
        "mirror": mirror, "trigger": "schedule", "started_at": at, "finished_at": at + 5,
        "ok": ok, "counts": {"add": 1, "update": 0, "prune": 0, "in_sync": 4, "held_back": 0,
                             "errors": 0, "pruned": 0},
        "releases": ("rel-1",) if ok else (), "error": None if ok else "source unlisted: 503",
        "dry_run": dry_run}
    return MirrorRun(**{**base, **change})


@pytest.fixture(params=[True, False], ids=["decoded", "bytes"])
def runs(request: pytest.FixtureRequest) -> MirrorRuns:
    return MirrorRuns(fakeredis.FakeRedis(decode_responses=request.param), retention=3600)


def test_nothing_recorded_reads_as_nothing(runs: MirrorRuns) -> None:
    assert runs.last("nginx") is None
    assert runs.last_success("nginx") is None
    assert runs.failing_since("nginx") is None
    assert runs.runs(["nginx", "alpine"]) == {"nginx": None, "alpine": None}
    assert runs.history("nginx") == []
    assert runs.runs([]) == {}


def test_a_run_reads_back_whole(runs: MirrorRuns) -> None:
    first = run(T0, pruned={"a.example/nginx": ("1.0",)})
    runs.record(first)
    assert runs.last("nginx") == first
    assert runs.last_success("nginx") == first.finished_at
    assert runs.failing_since("nginx") is None


def test_a_failure_streak_starts_at_its_first_failure_and_ends_with_a_success(
        runs: MirrorRuns) -> None:
    runs.record(run(T0))
    runs.record(run(T0 + 60, ok=False))
    runs.record(run(T0 + 120, ok=False))
    assert runs.failing_since("nginx") == T0 + 60
    assert runs.last_success("nginx") == T0 + 5
    last = runs.last("nginx")
    assert last is not None and not last.ok and last.started_at == T0 + 120
    runs.record(run(T0 + 180))
    assert runs.failing_since("nginx") is None
    assert runs.last_success("nginx") == T0 + 185


def test_a_dry_run_changes_neither_success_nor_streak_nor_history(runs: MirrorRuns) -> None:
    runs.record(run(T0, ok=False))
    runs.record(run(T0 + 60, dry_run=True))
    assert runs.failing_since("nginx") == T0
    assert runs.last_success("nginx") is None
    last = runs.last("nginx")
    assert last is not None and not last.dry_run
    assert [r.started_at for r in runs.history("nginx")] == [T0]
    assert runs.state("nginx").last_dry_run == run(T0 + 60, dry_run=True)


def test_the_history_is_capped_newest_first(runs: MirrorRuns) -> None:
    for i in range(HISTORY_LIMIT + 5):
        runs.record(run(T0 + i))
    history = runs.history("nginx")
    assert len(history) == HISTORY_LIMIT
    assert history[0].started_at == T0 + HISTORY_LIMIT + 4
    assert runs.history("nginx", limit=3) == history[:3]


def test_every_key_expires_after_the_retention() -> None:
    client = fakeredis.FakeRedis(decode_responses=True)
    runs = MirrorRuns(client, retention=600)
    runs.record(run(T0, ok=False))
    for key in (mirror_key("nginx"), runs_key("nginx"), INDEX_KEY):
        assert 0 < client.ttl(key) <= 600


def test_mirrors_that_ran_within_the_retention_are_known() -> None:
    runs = MirrorRuns(fakeredis.FakeRedis(), retention=600)
    runs.record(run(T0, mirror="old"))
    runs.record(run(T0 + 1000, mirror="new"))
    runs.record(run(T0 + 1001, mirror="dry", dry_run=True))
    assert runs.recorded(now=T0 + 1010) == ["new"]


def test_a_damaged_record_hides_itself_not_the_mirror() -> None:
    client = fakeredis.FakeRedis(decode_responses=True)
    runs = MirrorRuns(client)
    runs.record(run(T0))
    client.hset(mirror_key("nginx"), "last", "{not json")
    state = runs.state("nginx")
    assert state.last is None and state.last_success == T0 + 5


@pytest.mark.parametrize("count", [1, 50])
def test_reading_any_number_of_mirrors_is_one_round_trip(count: int) -> None:
    client = CountingFakeRedis()
    runs = MirrorRuns(client)
    names = [f"m{i}" for i in range(count)]
    for name in names:
        runs.record(run(T0, mirror=name))
    client.tally.reset()
    found = runs.runs(names)
    assert client.tally.count == 1
    assert all(found[name] is not None for name in names)
    client.tally.reset()
    states = runs.states(names)
    assert client.tally.count == 1 and len(states) == count


def test_recording_a_run_is_one_round_trip() -> None:
    client = CountingFakeRedis()
    runs = MirrorRuns(client)
    runs.record(run(T0))
    assert client.tally.commands == ["MULTI/EXEC"]
