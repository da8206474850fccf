"""The host-local spool: one read of the source per blob, whoever reads it and however it ends.

Sources here are fakes that count their GETs in a file (so that several processes add to one
count); several processes share a spool directory as a worker's prefork children do.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import multiprocessing
import os
import signal
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager
from pathlib import Path
from typing import Any

import pytest

from registry.copy import Copier
from registry.errors import DigestMismatch, NotFound
from registry.options import CopyOptions, TransportOptions
from registry.reference import parse_reference, parse_repository
from registry.retry import RetryPolicy
from registry.session import Registries
from registry.spool import Spool
from registry.spool_io import SourceBody
from registry.spool_store import SpoolUnusable
from tests.support.fake_registry import FakeRegistry, plain_http, route

FORK = multiprocessing.get_context("fork")
PIECE = 64 * 1024
MIB = 1024 * 1024
BLOB = os.urandom(3 * 1024 * 1024 + 123)
DIGEST = "sha256:" + hashlib.sha256(BLOB).hexdigest()


class Body:
    """A source's answer: ``data`` in pieces, optionally hanging after ``hang_after`` bytes."""

    def __init__(self, data: bytes, *, hang_after: int | None = None,
                 declared: int | None = None) -> None:
        self.data = data
        self.hang_after = hang_after
        self.headers = {"content-length": str(len(data) if declared is None else declared)}

    async def aiter_bytes(self) -> AsyncIterator[bytes]:
        for start in range(0, len(self.data), PIECE):
            if self.hang_after is not None and start >= self.hang_after:
                await asyncio.sleep(3600)
            await asyncio.sleep(0.001)  # a source slower than a disk, so readers overlap
            yield self.data[start:start + PIECE]


def counting_fetch(counter: Path, data: bytes = BLOB, **body: Any,
                   ) -> Callable[[], AbstractAsyncContextManager[SourceBody]]:
    @contextlib.asynccontextmanager
    async def fetch() -> AsyncIterator[SourceBody]:
        with counter.open("ab") as out:  # O_APPEND: one byte per GET, from any process
            out.write(b"x")
        yield Body(data, **body)

    return fetch


def fetches(counter: Path) -> int:
    return counter.stat().st_size if counter.exists() else 0


async def read_all(spool: Spool, fetch: Callable[[], AbstractAsyncContextManager[SourceBody]],
                   digest: str = DIGEST, seen: list[int] | None = None) -> bytes:
    out = bytearray()
    async with spool.open(digest, fetch) as body:
        async for piece in body.aiter_bytes():
            out += piece
            if seen is not None:
                seen.append(len(out))
    return bytes(out)


def files(root: Path) -> list[str]:
    return sorted(p.name for p in (root / "sha256").iterdir()) if (root / "sha256").exists() \
        else []


def _child_read(root: str, counter: str, barrier: Any, results: Any) -> None:
    async def main() -> bytes:
        spool = Spool(root, 1 << 30)
        try:
            return await read_all(spool, counting_fetch(Path(counter)))
        finally:
            await spool.aclose()

    barrier.wait()
    data = asyncio.run(main())
    results.put(hashlib.sha256(data).hexdigest())


def test_processes_reading_one_blob_at_once_read_the_source_once(tmp_path: Path) -> None:
    counter, root = tmp_path / "gets", tmp_path / "spool"
    barrier, results = FORK.Barrier(4), FORK.Queue()
    children = [FORK.Process(target=_child_read, args=(str(root), str(counter), barrier, results))
                for _ in range(4)]
    for child in children:
        child.start()
    hashes = [results.get(timeout=60) for _ in children]
    for child in children:
        child.join(10)

    assert hashes == [DIGEST.removeprefix("sha256:")] * 4
    assert fetches(counter) == 1
    assert files(root) == [DIGEST.removeprefix("sha256:")]  # complete, nothing partial


def test_readers_in_one_process_share_one_download_and_later_ones_the_entry(
        tmp_path: Path) -> None:
    counter = tmp_path / "gets"

    async def main() -> list[bytes]:
        spool = Spool(tmp_path / "spool", 1 << 30)
        try:
            fetch = counting_fetch(counter)
            first = await asyncio.gather(*(read_all(spool, fetch) for _ in range(3)))
            return [*first, await read_all(spool, fetch)]
        finally:
            await spool.aclose()

    assert asyncio.run(main()) == [BLOB] * 4
    assert fetches(counter) == 1


def test_a_reader_that_stops_holds_back_no_other(tmp_path: Path) -> None:
    counter = tmp_path / "gets"

    async def main() -> bytes:
        spool = Spool(tmp_path / "spool", 1 << 30)
        fetch = counting_fetch(counter)
        try:
            async with spool.open(DIGEST, fetch) as stalled:
                chunks = stalled.aiter_bytes()
                await chunks.__anext__()  # reads a little, then its destination stalls
                fast = await read_all(spool, fetch)  # would never end if the two were coupled
                await chunks.aclose()  # type: ignore[attr-defined]
            return fast
        finally:
            await spool.aclose()

    assert asyncio.run(main()) == BLOB
    assert fetches(counter) == 1


def _child_hanging_writer(root: str, counter: str) -> None:
    async def main() -> None:
        spool = Spool(root, 1 << 30)
        await read_all(spool, counting_fetch(Path(counter), hang_after=2 * MIB))

    asyncio.run(main())


def test_a_writer_killed_midway_is_taken_over_and_the_reader_finishes(tmp_path: Path) -> None:
    counter, root = tmp_path / "gets", tmp_path / "spool"
    writer = FORK.Process(target=_child_hanging_writer, args=(str(root), str(counter)))
    writer.start()
    partial = root / "sha256" / (DIGEST.removeprefix("sha256:") + ".partial")

    async def main() -> bytes:
        while not (partial.exists() and partial.stat().st_size >= MIB):
            await asyncio.sleep(0.01)
        spool = Spool(root, 1 << 30)
        seen: list[int] = []
        reading = asyncio.ensure_future(read_all(spool, counting_fetch(counter), seen=seen))
        while not seen or seen[-1] < MIB:  # tailing the writer's file
            await asyncio.sleep(0.01)
        os.kill(writer.pid, signal.SIGKILL)
        try:
            return await reading
        finally:
            await spool.aclose()

    try:
        assert asyncio.run(main()) == BLOB
    finally:
        writer.kill()
        writer.join(10)
    assert fetches(counter) == 2  # the dead writer's and the one that took over
    assert files(root) == [DIGEST.removeprefix("sha256:")]


def test_a_digest_mismatch_fails_every_reader_and_leaves_nothing(tmp_path: Path) -> None:
    counter, root = tmp_path / "gets", tmp_path / "spool"
    wrong = bytearray(BLOB)
    wrong[len(wrong) // 2] ^= 0xFF

    async def main() -> list[BaseException | bytes]:
        spool = Spool(root, 1 << 30)
        try:
            fetch = counting_fetch(counter, bytes(wrong))
            return await asyncio.gather(*(read_all(spool, fetch) for _ in range(3)),
                                        return_exceptions=True)
        finally:
            await spool.aclose()

    outcomes = asyncio.run(main())
    assert all(isinstance(o, DigestMismatch) for o in outcomes), outcomes
    assert fetches(counter) == 1
    assert files(root) == []


def test_a_blob_over_the_budget_is_streamed_directly(tmp_path: Path) -> None:
    counter, root = tmp_path / "gets", tmp_path / "spool"

    async def main() -> list[bytes]:
        spool = Spool(root, len(BLOB) - 1)
        try:
            fetch = counting_fetch(counter)
            return await asyncio.gather(*(read_all(spool, fetch) for _ in range(2)))
        finally:
            await spool.aclose()

    assert asyncio.run(main()) == [BLOB, BLOB]
    assert fetches(counter) == 2
    assert files(root) == []


def test_trouble_with_the_spool_falls_back_to_the_source(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    counter = tmp_path / "gets"

    def full(*_: object) -> None:
        raise OSError(28, "No space left on device")

    async def main() -> bytes:
        spool = Spool(tmp_path / "spool", 1 << 30)
        monkeypatch.setattr(spool.store, "reserve", full)
        try:
            return await read_all(spool, counting_fetch(counter))
        finally:
            await spool.aclose()

    assert asyncio.run(main()) == BLOB


def test_the_source_refusing_is_raised_when_the_blob_is_opened(tmp_path: Path) -> None:
    @contextlib.asynccontextmanager
    async def refused() -> AsyncIterator[SourceBody]:
        raise NotFound("blob unknown")
        yield Body(b"")  # pragma: no cover

    async def main() -> None:
        spool = Spool(tmp_path / "spool", 1 << 30)
        try:
            async with spool.open(DIGEST, refused):
                pytest.fail("opened")
        finally:
            await spool.aclose()

    with pytest.raises(NotFound):
        asyncio.run(main())
    assert files(tmp_path / "spool") == []


def _blob(n: int) -> tuple[bytes, str]:
    data = bytes([n]) * 1000
    return data, "sha256:" + hashlib.sha256(data).hexdigest()


def test_the_oldest_entries_make_room_and_idle_ones_go(tmp_path: Path) -> None:
    counter, root = tmp_path / "gets", tmp_path / "spool"
    blobs = [_blob(n) for n in range(3)]

    async def read(spool: Spool, n: int) -> bytes:
        data, digest = blobs[n]
        return await read_all(spool, counting_fetch(counter, data), digest)

    async def main() -> None:
        spool = Spool(root, 2500)
        try:
            await read(spool, 0)
            await read(spool, 1)
            old = root / "sha256" / blobs[0][1].removeprefix("sha256:")
            os.utime(old, (1, 1))  # the least recently read
            await read(spool, 2)
        finally:
            await spool.aclose()

    asyncio.run(main())
    assert files(root) == sorted(d.removeprefix("sha256:") for _, d in blobs[1:])
    for name in files(root):
        os.utime(root / "sha256" / name, (1, 1))  # idle since 1970
    Spool(root, 2500)  # a new process sweeps at start
    assert files(root) == []


def test_a_dead_writers_partial_file_is_swept_at_start(tmp_path: Path) -> None:
    root = tmp_path / "spool"
    (root / "sha256").mkdir(parents=True)
    hexdigest = DIGEST.removeprefix("sha256:")
    (root / "sha256" / f"{hexdigest}.partial").write_bytes(BLOB[:1000])
    (root / "sha256" / f"{hexdigest}.lock").write_text(str(len(BLOB)))  # nobody holds it

    Spool(root, 1 << 30)

    assert files(root) == []


def test_a_directory_others_may_write_is_refused(tmp_path: Path) -> None:
    root = tmp_path / "spool"
    root.mkdir()
    root.chmod(0o777)
    with pytest.raises(SpoolUnusable):
        Spool(root, 1 << 30)


def test_what_is_not_a_digest_we_spool_goes_straight_to_the_source(tmp_path: Path) -> None:
    counter = tmp_path / "gets"

    async def main() -> bytes:
        spool = Spool(tmp_path / "spool", 1 << 30)
        try:
            return await read_all(spool, counting_fetch(counter), "sha256:../../etc/passwd")
        finally:
            await spool.aclose()

    assert asyncio.run(main()) == BLOB
    assert files(tmp_path / "spool") == []


def test_three_destination_registries_read_each_source_blob_once(tmp_path: Path) -> None:
    src = FakeRegistry("src.test")
    layers = [os.urandom(300_000), os.urandom(200_000)]
    src.push_image("app", layers, tag="v1")
    destinations = [FakeRegistry(f"dst{n}.test") for n in range(3)]
    hosts = {r.host: r.handle for r in (src, *destinations)}
    insecure = TransportOptions(insecure_registries=frozenset(hosts))

    async def main() -> None:
        spool = Spool(tmp_path / "spool", 1 << 30)
        async with Registries(None, insecure, transport=plain_http(route(hosts), insecure),
                              spool=spool) as regs:
            copier = Copier(regs, CopyOptions(retry=RetryPolicy(attempts=2), referrers=False))
            results = await copier.copy_many(
                parse_reference("src.test/app:v1"),
                [(parse_repository(f"{d.host}/app"), ("v1",)) for d in destinations])
            await spool.aclose()
        assert all(r.ok for r in results), [r.error for r in results]

    asyncio.run(main())
    blob_gets = src.count("GET", "/blobs/")
    assert blob_gets == 3  # the config and two layers, once each
    for dst in destinations:
        assert dst.manifests["app"]["v1"] == src.manifests["app"]["v1"]
        for data in layers:
            assert dst.has_blob("app", "sha256:" + hashlib.sha256(data).hexdigest())

