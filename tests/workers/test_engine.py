"""The sync door into the engine: arguments through, stats back, our own deadline enforced."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import pytest

from registry.errors import Timeout
from registry.results import CopyStats
from workers import engine as engine_module
from workers.engine import CopyEngine, LeaseLost
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

    async def copy_image(self, source: Any, destination: Any, tags: Any,
                         tag_gate: Any = None) -> CopyStats:
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


def test_every_task_of_a_process_shares_one_pool_and_one_loop() -> None:
    loops: list[asyncio.AbstractEventLoop] = []

    class LoopCopier(FakeCopier):
        async def copy_image(self, source: Any, destination: Any, tags: Any,
                             tag_gate: Any = None) -> CopyStats:
            loops.append(asyncio.get_running_loop())
            return await super().copy_image(source, destination, tags)

    engine_module.Copier = LoopCopier  # type: ignore[misc]  # restored by the fixture
    engine = CopyEngine({"HOME": "/nonexistent"})
    engine.copy(JOB, timeout=5)
    first = FakeCopier.registries[-1].client("dst.example")
    first.capabilities.whole_blob = False  # as if the first task's upload had been refused
    engine.copy(JOB, timeout=5)
    second = FakeCopier.registries[-1]
    # The same clients (connections, tokens, probe) and what they learnt, on the same loop.
    assert second is FakeCopier.registries[0]
    assert second.client("dst.example") is first
    assert second.client("dst.example").capabilities.whole_blob is False
    assert loops[0] is loops[1] and not loops[0].is_closed()


def test_a_lost_lease_stops_the_copy_and_lets_it_unwind() -> None:
    unwound = threading.Event()

    class SlowCopier(FakeCopier):
        async def copy_image(self, source: Any, destination: Any, tags: Any,
                             tag_gate: Any = None) -> CopyStats:
            try:
                await asyncio.sleep(30)
            finally:
                unwound.set()
            raise AssertionError("not reached")

    engine_module.Copier = SlowCopier  # type: ignore[misc]  # restored by the fixture
    abort = threading.Event()
    threading.Timer(0.2, abort.set).start()
    with pytest.raises(LeaseLost, match=r"dst\.example/app"):
        CopyEngine({"HOME": "/nonexistent"}).copy(JOB, timeout=60, abort=abort)
    # Returned only after the copy's own clean-up ran: nothing of it runs on.
    assert unwound.is_set()
