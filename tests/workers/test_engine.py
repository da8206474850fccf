"""The sync door into the engine: arguments through, stats back, our own deadline enforced."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from registry.errors import Timeout
from registry.results import CopyStats
from workers import engine as engine_module
from workers.engine import CopyEngine
from workers.job import CopyJob

DIGEST = "sha256:" + "e" * 64
JOB = CopyJob("rel-1", f"src.example/app@{DIGEST}", "dst.example/app", DIGEST, ("v1",),
              referrers=False, referrer_types=("t",))


class FakeCopier:
    delay = 0.0
    seen: list[Any] = []
    registries: list[Any] = []

    def __init__(self, registries: Any, options: Any) -> None:
        FakeCopier.seen.append(options)
        FakeCopier.registries.append(registries)

    async def copy_image(self, source: Any, destination: Any, tags: Any) -> CopyStats:
        FakeCopier.seen.append((str(source), str(destination), tuple(tags)))
        await asyncio.sleep(self.delay)
        return CopyStats(bytes_transferred=5, blobs_uploaded=1)


@pytest.fixture(autouse=True)
def fake_copier(monkeypatch: pytest.MonkeyPatch) -> None:
    FakeCopier.seen = []
    FakeCopier.registries = []
    FakeCopier.delay = 0.0
    monkeypatch.setattr(engine_module, "Copier", FakeCopier)


def test_copies_and_returns_stats() -> None:
    stats = CopyEngine({"HOME": "/nonexistent"}).copy(JOB, timeout=5)
    assert stats["bytes_transferred"] == 5 and stats["blobs_uploaded"] == 1
    options, call = FakeCopier.seen
    assert (options.referrers, options.referrer_types) == (False, ("t",))
    assert call == (JOB.source, JOB.destination, ("v1",))


def test_its_deadline_is_a_transient_timeout() -> None:
    FakeCopier.delay = 5
    with pytest.raises(Timeout, match=r"within 0\.05 s") as caught:
        CopyEngine({"HOME": "/nonexistent"}).copy(JOB, timeout=0.05)
    assert caught.value.transient


def test_a_bad_setting_fails_at_start() -> None:
    with pytest.raises(ValueError, match="FANOUT_BLOB_CONCURRENCY"):
        CopyEngine({"FANOUT_BLOB_CONCURRENCY": "none"})


def test_what_one_task_learns_of_a_host_the_next_task_knows() -> None:
    engine = CopyEngine({"HOME": "/nonexistent"})
    engine.copy(JOB, timeout=5)
    first = FakeCopier.registries[-1].client("dst.example").capabilities
    first.whole_blob = False  # as if the first task's upload had been refused whole
    engine.copy(JOB, timeout=5)
    second = FakeCopier.registries[-1]
    assert second is not FakeCopier.registries[0]  # a new pool per task ...
    assert second.client("dst.example").capabilities.whole_blob is False  # ... same knowledge
    assert second.holds is FakeCopier.registries[0].holds
