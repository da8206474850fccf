"""The blob-location index: the in-memory store's bounds, and how the mover uses its hints.

A hint is verified by mounting from it. One that proves stale (answered 202 with an upload) is
dropped, and must never mark the host as declining mounts; only a 202 to a mount from a sure
source (the source repository, or a repository this run saw the blob land in) does that.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Awaitable
from typing import TypeVar

from registry.blobs import BlobMover
from registry.capabilities import Capabilities
from registry.copy import Copier
from registry.locations import BlobLocations, MemoryLocations
from registry.manifest import Descriptor
from registry.options import CopyOptions, TransportOptions
from registry.reference import parse_reference, parse_repository
from registry.results import CopyStats
from registry.retry import RetryPolicy
from registry.session import Registries
from tests.support.fake_registry import FakeRegistry, Handler, plain_http, route

T = TypeVar("T")
FAST = RetryPolicy(attempts=2, initial=0.001, maximum=0.01, max_elapsed=5)
INSECURE = TransportOptions(insecure_registries=frozenset({"src.test", "dst.test"}))
LAYER = "application/vnd.oci.image.layer.v1.tar+gzip"


def run(coro: Awaitable[T]) -> T:
    async def main() -> T:
        return await coro
    return asyncio.run(main())


# -- the in-memory index ------------------------------------------------------------------------


def test_memory_index_lists_the_newest_first_and_forgets() -> None:
    index: BlobLocations = MemoryLocations()

    async def scenario() -> list[list[str]]:
        await index.record("r.test", "sha256:a", "one")
        await index.record("r.test", "sha256:a", "two")
        await index.record("other.test", "sha256:a", "three")
        seen = [await index.holders("r.test", "sha256:a")]
        await index.record("r.test", "sha256:a", "one")  # seen again: the newest now
        seen.append(await index.holders("r.test", "sha256:a"))
        await index.forget("r.test", "sha256:a", "one")
        await index.forget("r.test", "sha256:a", "never-there")
        seen.append(await index.holders("r.test", "sha256:a"))
        seen.append(await index.holders("other.test", "sha256:a"))
        seen.append(await index.holders("r.test", "sha256:b"))
        return seen

    assert run(scenario()) == [["two", "one"], ["one", "two"], ["two"], ["three"], []]


def test_memory_index_is_bounded_per_blob_and_overall() -> None:
    index = MemoryLocations(per_blob=2, capacity=3)

    async def scenario() -> list[list[str]]:
        for repo in ("a", "b", "c"):
            await index.record("r.test", "sha256:0", repo)
        for n in range(1, 4):
            await index.record("r.test", f"sha256:{n}", "x")
        return [await index.holders("r.test", f"sha256:{n}") for n in range(4)]

    # Two repositories per blob (the oldest dropped), three blobs (the least recent dropped).
    assert run(scenario()) == [[], ["x"], ["x"], ["x"]]
    assert index.count() == 3


def test_forgetting_the_last_repository_drops_the_blob() -> None:
    index = MemoryLocations()

    async def scenario() -> None:
        await index.record("r.test", "sha256:0", "a")
        await index.forget("r.test", "sha256:0", "a")

    run(scenario())
    assert index.count() == 0


# -- the mover and its hints --------------------------------------------------------------------


class Setup:
    """A source registry with one blob, a destination registry, and a pool over both."""

    def __init__(self, locations: MemoryLocations | None = None) -> None:
        self.src, self.dst = FakeRegistry("src.test"), FakeRegistry("dst.test")
        self.data = os.urandom(2048)
        self.digest = self.src.put_blob("app", self.data)
        self.locations = locations if locations is not None else MemoryLocations()
        self.hosts: dict[str, Handler] = {"src.test": self.src.handle,
                                          "dst.test": self.dst.handle}

    def pool(self) -> Registries:
        return Registries(None, INSECURE, transport=plain_http(route(self.hosts), INSECURE),
                          locations=self.locations)

    def caps(self, regs: Registries) -> Capabilities:
        return regs.client("dst.test").capabilities

    def move(self, regs: Registries, target: str, source: str = "src.test/app") -> CopyStats:
        return run(self._move(regs, target, source))

    async def _move(self, regs: Registries, target: str, source: str) -> CopyStats:
        mover = BlobMover(regs, FAST)
        stats = CopyStats()
        blob = Descriptor(LAYER, self.digest, len(self.data))
        await mover.copy(parse_repository(source), parse_repository(target), blob, stats,
                         asyncio.Semaphore(1))
        await mover.settle()
        return stats

    def mounts(self) -> list[tuple[str, str]]:
        """(into, from) of every mount asked of the destination."""
        return [(r.url.path.split("/")[2], r.url.params["from"]) for r in self.dst.requests
                if r.method == "POST" and r.url.params.get("mount")]

    def holders(self) -> list[str]:
        return run(self.locations.holders("dst.test", self.digest))

    def plant(self, *repositories: str) -> None:
        """Hints, oldest first, as another process would have recorded them."""
        for repository in repositories:
            run(self.locations.record("dst.test", self.digest, repository))


def test_a_later_run_on_the_same_pool_mounts_from_where_an_earlier_one_uploaded() -> None:
    setup = Setup()

    async def two_runs() -> tuple[CopyStats, CopyStats]:
        async with setup.pool() as regs:
            return await setup._move(regs, "dst.test/a", "src.test/app"), await setup._move(
                regs, "dst.test/b", "src.test/app")

    first, second = run(two_runs())
    assert (first.blobs_uploaded, first.blobs_mounted) == (1, 0)
    assert (second.blobs_uploaded, second.blobs_mounted) == (0, 1)
    assert setup.mounts() == [("b", "a")]
    assert setup.dst.has_blob("b", setup.digest)
    assert setup.holders() == ["b", "a"]


def test_a_stale_hint_on_a_host_that_mounts_is_dropped_and_the_next_one_tried() -> None:
    setup = Setup()
    setup.dst.put_blob("a", setup.data)
    setup.plant("a", "gone")  # "gone" the newest: tried first
    regs = setup.pool()
    setup.caps(regs).mounts = True  # this process has seen the host mount

    stats = setup.move(regs, "dst.test/b")

    assert (stats.blobs_mounted, stats.blobs_uploaded) == (1, 0)
    assert setup.mounts() == [("b", "gone"), ("b", "a")]
    # The upload the stale mount opened was cancelled, not left behind.
    assert setup.dst.count("DELETE", r"/blobs/uploads/") == 1 and not setup.dst.uploads
    assert setup.caps(regs).mounts is True
    assert "gone" not in setup.holders() and setup.holders()[0] == "b"


def test_a_stale_hint_on_a_host_not_yet_known_uploads_on_its_session_and_marks_nothing() -> None:
    setup = Setup()
    setup.plant("gone")
    regs = setup.pool()

    stats = setup.move(regs, "dst.test/b")

    assert (stats.blobs_mounted, stats.blobs_uploaded) == (0, 1)
    assert setup.mounts() == [("b", "gone")]
    # One POST: the 202's session carried the upload; no second one was opened.
    assert setup.dst.count("POST", r"/blobs/uploads/") == 1
    assert setup.caps(regs).mounts is None and not setup.caps(regs).mounts_refused
    assert setup.holders() == ["b"]
    # The host was not written off: the next blob mounts from a repository that holds it.
    setup.dst.put_blob("a", setup.data)
    setup.plant("a")
    again = setup.move(regs, "dst.test/c")
    assert again.blobs_mounted == 1 and setup.caps(regs).mounts is True


def test_a_202_from_a_sure_source_marks_the_host_as_declining_and_keeps_its_hints() -> None:
    setup = Setup()
    setup.dst.mount_enabled = False  # ECR, Artifactory: every mount answered with an upload
    setup.dst.put_blob("app", setup.data)  # the source's twin, on the destination registry
    regs = setup.pool()

    first = setup.move(regs, "dst.test/b", source="dst.test/app")
    assert first.blobs_uploaded == 1 and setup.caps(regs).mounts is False

    # Declining is known now: a hint's 202 is no sign of staleness, and no second hint is tried.
    setup.plant("x", "b")
    setup.move(regs, "dst.test/c", source="src.test/app")
    assert setup.mounts()[-1] == ("c", "b")
    assert len(setup.mounts()) == 2
    assert setup.holders() == ["c", "b", "x"]


def test_a_declining_host_is_learnt_from_a_repository_this_run_filled() -> None:
    src, dst = FakeRegistry("src.test"), FakeRegistry("dst.test")
    dst.mount_enabled = False
    src.push_image("app", [os.urandom(1024)], tag="v1")

    async def both() -> Registries:
        regs = Registries(None, INSECURE, transport=plain_http(
            route({"src.test": src.handle, "dst.test": dst.handle}), INSECURE))
        copier = Copier(regs, CopyOptions(retry=FAST, referrers=False, blob_concurrency=1))
        for name in ("one", "two"):
            result = await copier.copy(parse_reference("src.test/app:v1"),
                                       parse_repository(f"dst.test/{name}"), ())
            assert result.ok, result.error
        return regs

    regs = run(both())
    assert regs.client("dst.test").capabilities.mounts is False


class Logged(MemoryLocations):
    """Remembers what the mover asked of it."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[tuple[str, str]] = []

    async def holders(self, registry: str, digest: str) -> list[str]:
        self.calls.append(("holders", registry))
        return await super().holders(registry, digest)

    async def forget(self, registry: str, digest: str, repository: str) -> None:
        self.calls.append(("forget", repository))
        await super().forget(registry, digest, repository)


def test_the_target_listed_but_absent_is_forgotten() -> None:
    setup = Setup(Logged())
    setup.plant("b")  # recorded once, since deleted: HEAD says absent
    setup.move(setup.pool(), "dst.test/b")
    assert setup.mounts() == []  # never from itself
    assert ("forget", "b") in setup.locations.calls  # type: ignore[attr-defined]
    assert setup.holders() == ["b"]  # recorded again by the upload
    assert setup.dst.count("POST", r"/blobs/uploads/") == 1


def test_hints_are_tried_a_few_at_most() -> None:
    setup = Setup()
    setup.plant(*(f"gone{i}" for i in range(10)))
    regs = setup.pool()
    setup.caps(regs).mounts = True

    stats = setup.move(regs, "dst.test/b")

    assert stats.blobs_uploaded == 1
    assert setup.mounts() == [("b", "gone9"), ("b", "gone8"), ("b", "gone7")]
    assert setup.holders() == ["b", *(f"gone{i}" for i in range(6, -1, -1))]


def test_a_refusing_host_is_not_asked_for_hints() -> None:
    index = Logged()
    setup = Setup(index)
    setup.plant("a")
    regs = setup.pool()
    setup.caps(regs).mounts_refused = True  # Docker Hub, say
    assert setup.move(regs, "dst.test/b").blobs_uploaded == 1
    assert index.calls == [] and setup.mounts() == []
