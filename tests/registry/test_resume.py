"""Resuming cut transfers (registry/resume.py): the chunk planner, the resume decision, and
uploads and source reads cut part-way against the in-memory registry, for the answers a real
registry will not give on demand (tests/integration/test_resume.py has the real one)."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import httpx
import pytest

from registry.capabilities import Capabilities, CapabilityStore
from registry.copy import Copier
from registry.options import CopyOptions, TransportOptions
from registry.reference import parse_reference, parse_repository
from registry.results import CopyResult
from registry.resume import (
    CHUNK_CAP,
    CHUNK_FLOOR,
    RESUMABLE_FROM,
    _registry_at,
    kept_of_piece,
    plan_chunk,
)
from registry.retry import RetryPolicy
from registry.session import Registries
from registry.spool import Spool
from tests.support.fake_registry import FakeRegistry, error, plain_http, route

MiB = 1024 * 1024
FAST = RetryPolicy(attempts=4, initial=0.001, maximum=0.01, max_elapsed=5, max_hold=2)
# Chunks forced small, so a few MiB go in several PATCHes.
CHUNKED = TransportOptions(insecure_registries=frozenset({"src.test", "dst.test"}),
                           chunk_size=MiB)
Handler = Callable[[httpx.Request], httpx.Response]


# -- the planner ----------------------------------------------------------------------------
@pytest.mark.parametrize(("size", "chunk"), [
    (4 * MiB, None),  # small: one PUT, two round trips
    (RESUMABLE_FROM - 1, None),
    (RESUMABLE_FROM, CHUNK_FLOOR),  # an eighth: exactly the floor (8 MiB)
    (200 * MiB, CHUNK_CAP),  # an eighth would be 25 MiB: the cap, so a cut loses at most 8%
    (5 * 1024 * MiB, CHUNK_CAP),  # 320 chunks, none over what is held in memory
])
def test_big_blobs_go_in_about_eight_chunks_and_small_ones_whole(size: int,
                                                                  chunk: int | None) -> None:
    assert plan_chunk(size, Capabilities()) == chunk


def test_no_chunks_where_the_host_cannot_resume_or_take_them() -> None:
    assert plan_chunk(200 * MiB, Capabilities(resumes=False)) is None
    assert plan_chunk(200 * MiB, Capabilities(chunked=False)) is None
    # A host's chunk rules still hold: GHCR takes no chunk over 4 MiB.
    assert plan_chunk(200 * MiB, Capabilities(chunk_max=4 * MiB)) == 4 * MiB


# -- the decision ---------------------------------------------------------------------------
@pytest.mark.parametrize(("offset", "registry_at", "kept"), [
    (100, 100, 0),  # nothing of the piece arrived: send it all again
    (100, 150, 50),  # part of it kept
    (100, 200, 100),  # all of it kept, the answer lost on the way
    (100, 99, None),  # lost bytes it had taken: start over
    (100, 201, None),  # more than we sent: start over
    (100, None, None),  # no status
])
def test_what_of_a_cut_piece_the_registry_kept(offset: int, registry_at: int | None,
                                               kept: int | None) -> None:
    assert kept_of_piece(offset, 100, registry_at) == kept


def test_range_headers_read_as_offsets() -> None:
    assert _registry_at("0-99", 50) == 100
    assert _registry_at("bytes=0-99", 50) == 100
    assert _registry_at("0-0", 0) == 0  # distribution's "empty"
    assert _registry_at("0-0", 1) == 1
    assert _registry_at("", 10) is None
    assert _registry_at("0-x", 10) is None


# -- uploads cut part-way -------------------------------------------------------------------
def copy(handler: Handler, caps: CapabilityStore, dest: str = "dst.test/app", *,
         spool: Path | None = None) -> CopyResult:
    async def run() -> CopyResult:
        spooled = Spool(spool, 1 << 30) if spool else None
        async with Registries(None, CHUNKED, transport=plain_http(handler, CHUNKED),
                              capabilities=caps, retry=FAST, spool=spooled) as regs:
            copier = Copier(regs, CopyOptions(retry=FAST, referrers=False))
            result = await copier.copy(parse_reference("src.test/app:v1"),
                                       parse_repository(dest), ("v1",))
        if spooled is not None:
            await spooled.aclose()
        return result

    return asyncio.run(run())


def pair(*layers: bytes) -> tuple[FakeRegistry, FakeRegistry]:
    src, dst = FakeRegistry("src.test"), FakeRegistry("dst.test")
    src.push_image("app", list(layers), tag="v1")
    return src, dst


def patches(request: httpx.Request) -> bool:
    return request.method == "PATCH" and request.url.path.startswith("/v2/")


def statuses(dst: FakeRegistry) -> int:
    return sum(1 for r in dst.requests if r.method == "GET" and "/uploads/" in r.url.path)


def sent(requests: list[httpx.Request]) -> int:
    return sum(len(r.content) for r in requests
               if r.method in ("PATCH", "PUT") and "/blobs/uploads/" in r.url.path)


@pytest.mark.parametrize("cut", ["503", "reset-keeping-half"])
def test_a_chunk_cut_on_the_way_is_resumed_from_the_registry_offset(cut: str) -> None:
    layer = os.urandom(4 * MiB)
    src, dst = pair(layer)
    seen: list[httpx.Request] = []
    failed = False

    def flaky(request: httpx.Request) -> httpx.Response:
        nonlocal failed
        seen.append(request)
        if patches(request) and len(request.read()) == MiB and not failed \
                and dst.count("PATCH") == 2:
            failed = True
            if cut == "503":
                return error(503, "UNAVAILABLE")
            upload = request.url.path.rsplit("/", 1)[1]
            dst.uploads[upload][1].extend(request.content[: MiB // 2])
            raise httpx.ReadError("connection reset by peer", request=request)
        return dst.handle(request)

    caps = CapabilityStore()
    result = copy(route({"src.test": src.handle, "dst.test": flaky}), caps)
    assert result.ok, result.error
    assert failed
    assert statuses(dst) == 1
    assert dst.count("POST") == 2  # the config and the layer: not started over
    assert caps.get("dst.test").resumes is True
    config = sum(len(b) for b in src.blobs["app"].values() if b != layer)
    # Once the layer, and again only the part of the cut chunk the registry did not keep.
    assert sent(seen) == config + len(layer) + (MiB if cut == "503" else MiB // 2)


@pytest.mark.parametrize("answer", [
    pytest.param(error(404, "BLOB_UPLOAD_UNKNOWN"), id="expired"),
    pytest.param(error(404, "BLOB_UPLOAD_INVALID"), id="dropped-after-a-cut"),
    pytest.param(error(405, "UNSUPPORTED"), id="no-status"),
])
def test_a_host_that_cannot_resume_starts_over_and_is_remembered(answer: httpx.Response) -> None:
    src, dst = pair(os.urandom(3 * MiB))
    cuts: list[str] = []

    def no_resume(request: httpx.Request) -> httpx.Response:
        if request.method == "GET" and "/uploads/" in request.url.path:
            dst.requests.append(request)
            return answer
        upload = request.url.path.rsplit("/", 1)[1]
        # Each copy's first full chunk fails: its second PATCH of the layer.
        if patches(request) and len(request.read()) == MiB and len(dst.uploads[upload][1]) \
                and len(cuts) < copies:
            cuts.append(upload)
            return error(502, "UNAVAILABLE")
        return dst.handle(request)

    copies = 1

    caps = CapabilityStore()
    result = copy(route({"src.test": src.handle, "dst.test": no_resume}), caps)
    assert result.ok, result.error
    assert (len(cuts), statuses(dst)) == (1, 1)
    assert dst.count("POST") == 3  # the layer's upload started over
    assert caps.get("dst.test").resumes is False
    # The next blob to that host, cut the same way, does not ask where its upload stands.
    src.push_image("app", [os.urandom(3 * MiB)], tag="v1")
    dst.requests.clear()
    copies = 2
    again = copy(route({"src.test": src.handle, "dst.test": no_resume}), caps, "dst.test/b")
    assert again.ok, again.error
    assert len(cuts) == 2
    assert statuses(dst) == 0


# -- source reads cut part-way ---------------------------------------------------------------
class _CutStream(httpx.AsyncByteStream):
    def __init__(self, data: bytes, at: int) -> None:
        self._data, self._at = data, at

    async def __aiter__(self) -> AsyncIterator[bytes]:
        yield self._data[: self._at]
        raise httpx.ReadError("connection reset by peer")


@pytest.mark.parametrize(("ranges", "spooled"), [(True, False), (False, False), (True, True)])
def test_a_source_read_cut_part_way_goes_on_with_range(ranges: bool, spooled: bool,
                                                      tmp_path: Path) -> None:
    layer = os.urandom(4 * MiB)
    src, dst = pair(layer)
    digest = next(d for d, b in src.blobs["app"].items() if b == layer)
    asked: list[str | None] = []

    def cut_source(request: httpx.Request) -> httpx.Response:
        if request.method != "GET" or not request.url.path.endswith(digest):
            return src.handle(request)
        asked.append(request.headers.get("range"))
        if len(asked) == 1:
            return httpx.Response(200, headers={"Content-Length": str(len(layer))},
                                  stream=_CutStream(layer, 3 * MiB))
        start = int(request.headers["range"].removeprefix("bytes=").rstrip("-"))
        if not ranges:
            return httpx.Response(200, content=layer)
        return httpx.Response(206, content=layer[start:], headers={
            "Content-Range": f"bytes {start}-{len(layer) - 1}/{len(layer)}"})

    result = copy(route({"src.test": cut_source, "dst.test": dst.handle}), CapabilityStore(),
                  spool=tmp_path / "spool" if spooled else None)
    assert result.ok, result.error
    assert asked == [None, f"bytes={3 * MiB}-"]
    assert dst.blobs["app"][digest] == layer


def test_a_failed_commit_is_tried_again_not_the_whole_upload() -> None:
    src, dst = pair(os.urandom(3 * MiB))
    failed: list[str] = []

    def flaky_commit(request: httpx.Request) -> httpx.Response:
        commit = request.method == "PUT" and "/uploads/" in request.url.path \
            and not request.read()
        if commit and not failed and "/uploads/" in request.url.path:
            upload = request.url.path.rsplit("/", 1)[1]
            if len(dst.uploads[upload][1]) > MiB:  # the layer's, not the config's
                failed.append(upload)
                return error(503, "UNAVAILABLE")
        return dst.handle(request)

    result = copy(route({"src.test": src.handle, "dst.test": flaky_commit}), CapabilityStore())
    assert result.ok, result.error
    assert len(failed) == 1
    assert statuses(dst) == 1
    assert dst.count("POST") == 2
