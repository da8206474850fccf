"""registry.layout without a registry: one layout copied to another through the engine, and
what the files then hold (determinism, atomicity, damage named by digest, naming modes)."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import threading
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from registry.copy import Copier
from registry.errors import BlobNotInLayout, CorruptBlob, NotALayout
from registry.layout import Layout, open_layout, parse_place
from registry.layout.store import CHUNK, BlobReader, BlobStore, Upload
from registry.layout.tarindex import TarIndex
from registry.locations import MemoryLocations
from registry.options import CopyOptions
from registry.results import CopyResult
from registry.retry import RetryPolicy
from registry.session import Registries

FAST = RetryPolicy(attempts=2, initial=0.01, maximum=0.05, max_elapsed=5)
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"


def _blob(root: Path, data: bytes) -> str:
    hexa = hashlib.sha256(data).hexdigest()
    folder = root / "blobs" / "sha256"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / hexa).write_bytes(data)
    return f"sha256:{hexa}"


def make_layout(root: Path, tags: dict[str, bytes]) -> dict[str, str]:
    """A directory layout with one single-layer image per tag (``layer`` its content)."""
    entries, digests = [], {}
    for tag, layer in tags.items():
        config = json.dumps({"architecture": "amd64", "os": "linux", "tag": tag}).encode()
        manifest = json.dumps({
            "schemaVersion": 2, "mediaType": OCI_MANIFEST,
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                       "digest": _blob(root, config), "size": len(config)},
            "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar",
                        "digest": _blob(root, layer), "size": len(layer)}]}).encode()
        digests[tag] = _blob(root, manifest)
        entries.append({"mediaType": OCI_MANIFEST, "digest": digests[tag], "size": len(manifest),
                        "annotations": {"org.opencontainers.image.ref.name": tag}})
    (root / "oci-layout").write_text('{"imageLayoutVersion":"1.0.0"}')
    (root / "index.json").write_text(json.dumps({"schemaVersion": 2, "manifests": entries}))
    return digests


async def _copy(source: Layout, dest: Layout, ref: str, tags: list[str],
                repository: str = "layout") -> CopyResult:
    async with Registries(local={source.host: source.transport,
                                 dest.host: dest.transport}) as pool:
        copier = Copier(pool, CopyOptions(retry=FAST))
        return await copier.copy(source.reference(ref=ref),
                                 dest.reference(repository).repository, tags)


def copy(src: Path, dst: Path, ref: str, *, archive: bool = True,
         tags: list[str] | None = None) -> CopyResult:
    async def go() -> CopyResult:
        async with open_layout(src, archive=src.is_file(), write=False) as source, \
                open_layout(dst, archive=archive, write=True) as dest:
            result = await _copy(source, dest, ref, [ref] if tags is None else tags)
            if result.error is not None:
                raise result.error
            return result
    return asyncio.run(go())


def test_parse_place() -> None:
    assert parse_place("ghcr.io/acme/app:1.4") is None
    place = parse_place("oci-archive:/media/usb/app.tar:1.4")
    assert place is not None and place.archive and place.ref == "1.4"
    assert str(place.path) == "/media/usb/app.tar"
    place = parse_place("oci:relative/dir")
    assert place is not None and not place.archive and place.ref is None
    with pytest.raises(NotALayout):
        parse_place("oci:")


def test_archives_of_the_same_content_are_byte_identical(tmp_path: Path) -> None:
    make_layout(tmp_path / "src", {"v1": os.urandom(50_000), "v2": os.urandom(1000)})
    for name in ("one.tar", "two.tar"):
        copy(tmp_path / "src", tmp_path / name, "v1")
        copy(tmp_path / "src", tmp_path / name, "v2")
    assert (tmp_path / "one.tar").read_bytes() == (tmp_path / "two.tar").read_bytes()
    index = TarIndex(tmp_path / "one.tar")
    names = list(index.members)
    assert names[:2] == ["oci-layout", "index.json"]
    assert names[2:] == sorted(names[2:])


def test_adding_to_an_archive_keeps_what_was_there(tmp_path: Path) -> None:
    digests = make_layout(tmp_path / "src", {"v1": b"one" * 1000, "v2": b"two" * 1000})
    archive = tmp_path / "out.tar"
    copy(tmp_path / "src", archive, "v1")
    copy(tmp_path / "src", archive, "v2")
    raw = TarIndex(archive).read("index.json", 1 << 20) or b""
    names = {e["annotations"]["org.opencontainers.image.ref.name"]: e["digest"]
             for e in json.loads(raw)["manifests"]}
    assert names == digests
    # And it reads back: each image copies out whole.
    copy(archive, tmp_path / "back", "v1", archive=False)
    assert json.loads((tmp_path / "back" / "index.json").read_text())["manifests"][0][
        "digest"] == digests["v1"]


def test_a_failed_copy_leaves_the_previous_archive_byte_identical(tmp_path: Path) -> None:
    make_layout(tmp_path / "src", {"v1": b"good" * 1000, "v2": os.urandom(30_000)})
    archive = tmp_path / "out.tar"
    copy(tmp_path / "src", archive, "v1")
    before = archive.read_bytes()
    layer = max((tmp_path / "src" / "blobs" / "sha256").iterdir(),
                key=lambda p: p.stat().st_size)
    data = bytearray(layer.read_bytes())
    data[10] ^= 0xFF
    layer.write_bytes(bytes(data))

    with pytest.raises(CorruptBlob) as caught:
        copy(tmp_path / "src", archive, "v2")

    assert f"sha256:{layer.name}" in str(caught.value)
    assert archive.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.tar", "src"]


def test_blob_bytes_move_on_threads_never_on_the_event_loop(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A big layer read or written on the loop would stall every other destination of the
    run: each read, write and fsync of blob or manifest bytes happens on a thread."""
    make_layout(tmp_path / "src", {"v1": os.urandom(3 * CHUNK + 5)})
    calls: list[tuple[str, bool]] = []

    def watched(name: str, method: Callable[..., Any]) -> Callable[..., Any]:
        def record(*args: Any) -> Any:
            calls.append((name, threading.current_thread() is threading.main_thread()))
            return method(*args)
        return record

    for owner, name in ((BlobReader, "read"), (Upload, "write"), (Upload, "close"),
                        (BlobStore, "read_small")):
        monkeypatch.setattr(owner, name, watched(name, getattr(owner, name)))
    copy(tmp_path / "src", tmp_path / "out", "v1", archive=False)

    assert {name for name, _ in calls} == {"read", "write", "close", "read_small"}
    assert [name for name, on_loop in calls if on_loop] == []
    out = BlobStore("out", directory=tmp_path / "out")
    assert list(out.digests()) == list(BlobStore("src", directory=tmp_path / "src").digests())


def test_a_write_outliving_its_copy_is_waited_for_then_refused(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A blob upload is shared between destinations, so it can outlive the copy that failed:
    discarding the layout waits for a write on a thread, then refuses the next one, and the
    scratch it removed is not made again."""
    entered, release = threading.Event(), threading.Event()
    write = Upload.write

    def held(upload: Upload, chunk: bytes) -> None:
        entered.set()
        release.wait(30)
        write(upload, chunk)

    monkeypatch.setattr(Upload, "write", held)

    async def go() -> None:
        layout = Layout(tmp_path / "out", archive=False, write=True)
        more = asyncio.Event()

        async def body() -> AsyncIterator[bytes]:
            yield b"x" * CHUNK
            await more.wait()
            yield b"y"

        async with httpx.AsyncClient(transport=layout.transport,
                                     base_url="http://layout") as client:
            started = await client.post("/v2/app/blobs/uploads/")
            put = asyncio.ensure_future(client.put(
                f"{started.headers['Location']}?digest=sha256:{'0' * 64}", content=body()))
            await asyncio.to_thread(entered.wait, 30)
            discard = asyncio.ensure_future(layout.discard())
            for _ in range(50):
                await asyncio.sleep(0)
            assert not discard.done()  # the write on its thread holds it
            release.set()
            await discard
            more.set()
            with pytest.raises(NotALayout, match="already committed or discarded"):
                await put

    asyncio.run(go())
    # The layout directory this session made went with the discard, and nothing made it again.
    assert list(tmp_path.iterdir()) == []


def test_layout_hosts_stay_out_of_the_blob_location_index(tmp_path: Path) -> None:
    # layout-<n>.oci.invalid names a different file in every process: a hint recorded under
    # it in a shared index (Redis, on workers) would point another process at the wrong one.
    make_layout(tmp_path / "src", {"v1": os.urandom(20_000)})
    locations = MemoryLocations()

    async def go() -> None:
        source = Layout(tmp_path / "src", archive=False, write=False)
        async with open_layout(tmp_path / "out.tar", archive=True, write=True) as dest, \
                Registries(locations=locations, local={
                    source.host: source.transport, dest.host: dest.transport}) as pool:
            result = await Copier(pool, CopyOptions(retry=FAST)).copy(
                source.reference(ref="v1"), dest.reference().repository, ["v1"])
            assert result.error is None, result.error
            assert result.stats.blobs_uploaded == 2
            assert pool.is_local(dest.host) and not pool.is_local("ghcr.io")

    asyncio.run(go())
    assert locations.count() == 0


def test_a_truncated_archive_names_the_blob_cut_short(tmp_path: Path) -> None:
    make_layout(tmp_path / "src", {"v1": os.urandom(100_000)})
    archive = tmp_path / "out.tar"
    copy(tmp_path / "src", archive, "v1")
    index = TarIndex(archive)
    largest = max(index.members.items(), key=lambda item: item[1].size)
    with archive.open("r+b") as handle:
        handle.truncate(largest[1].offset + 500)

    with pytest.raises(CorruptBlob) as caught:
        copy(archive, tmp_path / "back", "v1", archive=False)

    assert "cut short" in str(caught.value)
    assert caught.value.digest in str(caught.value)
    # The layer itself (cut mid-way) or a member after it (cut off): named either way.
    assert caught.value.digest.split(":")[1] in {n.rsplit("/", 1)[-1] for n in index.members}
    assert not (tmp_path / "back" / "index.json").exists()


def test_a_missing_blob_is_blob_not_in_layout(tmp_path: Path) -> None:
    make_layout(tmp_path / "src", {"v1": os.urandom(10_000)})
    layer = max((tmp_path / "src" / "blobs" / "sha256").iterdir(),
                key=lambda p: p.stat().st_size)
    layer.unlink()
    with pytest.raises(BlobNotInLayout) as caught:
        copy(tmp_path / "src", tmp_path / "out.tar", "v1")
    assert caught.value.digest == f"sha256:{layer.name}"


def test_repository_naming_annotations_and_assumed_blobs(tmp_path: Path) -> None:
    make_layout(tmp_path / "src", {"v1": os.urandom(20_000)})
    src_store = BlobStore("src", directory=tmp_path / "src")
    layer = max(src_store.digests(), key=lambda d: src_store.size(d) or 0)

    async def go() -> None:
        async with open_layout(tmp_path / "src", archive=False, write=False) as source, \
                open_layout(tmp_path / "bundle.tar", archive=True, write=True,
                            naming="repository", assume_present=[layer]) as dest:
            result = await _copy(source, dest, "v1", ["1.4"], repository="ghcr.io/acme/app")
            assert result.error is None, result.error
            dest.annotate("ghcr.io/acme/app:1.4", {"io.fanout.release": "r-1"})
            [entry] = dest.entries()
            assert entry.ref_name == "ghcr.io/acme/app:1.4"
            assert entry.annotations["io.fanout.release"] == "r-1"
        async with open_layout(tmp_path / "bundle.tar", archive=True, write=False,
                               naming="repository") as bundle:
            assert bundle.state.tags("ghcr.io/acme/app") == ["1.4"]
            assert bundle.state.tags("ghcr.io/acme/other") == []
            assert bundle.state.store.size(layer) is None  # assumed, never written

    asyncio.run(go())


def test_a_directory_that_is_not_a_layout_is_refused(tmp_path: Path) -> None:
    (tmp_path / "stuff").mkdir()
    (tmp_path / "stuff" / "file").write_text("x")
    with pytest.raises(NotALayout):
        Layout(tmp_path / "stuff", archive=False, write=True)
    with pytest.raises(NotALayout):
        Layout(tmp_path / "nothing", archive=False, write=False)
