"""workers/prune_log.py: what a mirror pruned is recorded, newest first, capped."""

from __future__ import annotations

import fakeredis
import pytest

from workers import prune_log
from workers.prune_log import PruneLog


@pytest.mark.parametrize("decode", [False, True])
def test_deletions_are_recorded_newest_first_and_capped(
        monkeypatch: pytest.MonkeyPatch, decode: bool) -> None:
    monkeypatch.setattr(prune_log, "KEEP", 3)
    times = iter(range(10))
    log = PruneLog(fakeredis.FakeRedis(decode_responses=decode), clock=lambda: float(next(times)))
    for n in range(5):
        log.record("nginx", "dst.example/nginx", [f"1.{n}", f"1.{n}-alpine"])
    recent = log.recent("nginx", 10)
    assert [entry["tags"][0] for entry in recent] == ["1.4", "1.3", "1.2"]
    assert recent[0] == {"at": 4.0, "destination": "dst.example/nginx",
                         "tags": ["1.4", "1.4-alpine"]}
    assert log.recent("other") == []
