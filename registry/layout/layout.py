"""An open OCI image layout or archive: opened for reading or writing, served to the copy
engine as a registry host of its own, and committed atomically or discarded.

Never half-written:

- a directory's new blobs land under their final names (each written once, complete, by
  rename), and ``index.json`` is replaced atomically, last: until then the layout reads as
  before, and a copy that dies leaves it so;
- an archive is staged as blobs beside the target (same filesystem), packed into
  ``FILE.<random>.tmp`` and renamed over ``FILE`` only when complete; the blobs of the archive
  it replaces are read from it in place, never extracted.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import secrets
import shutil
from collections.abc import AsyncIterator, Iterable, Mapping
from contextlib import asynccontextmanager
from pathlib import Path

import httpx

from ..errors import NotALayout
from ..manifest import MAX_MANIFEST_BYTES
from ..reference import Reference, Repository
from .index import OCI_LAYOUT, LayoutEntry, Naming, parse_index, render_index, sort_key
from .pack import pack
from .state import LayoutState
from .store import BlobStore, is_digest
from .tarindex import TarIndex
from .transport import LayoutTransport

# Synthetic hosts: ``.invalid`` can never resolve (RFC 2606), so nothing leaves the process.
HOST_SUFFIX = ".oci.invalid"
_numbers = itertools.count(1)


def is_layout_host(registry: str) -> bool:
    return registry.endswith(HOST_SUFFIX)


class Layout:
    """An open layout (directory or archive), for reading or writing; see :func:`open_layout`."""

    def __init__(self, path: Path, *, archive: bool, write: bool, naming: Naming = "tag",
                 assume_present: Iterable[str] = ()) -> None:
        self.path = Path(path)
        self.archive = archive
        self.write = write
        self.host = f"layout-{next(_numbers)}{HOST_SUFFIX}"
        self._work: Path | None = None  # scratch (directory) or staging (archive), ours
        # A layout directory this session made: discarded, it goes too (a failed first copy
        # must not leave a directory that is neither empty nor a layout, which the next
        # copy into it would refuse).
        self._made: Path | None = None
        self._done = False
        label = f"{'oci-archive' if archive else 'oci'}:{self.path}"
        store, entries = self._open_store(label)
        self.state = LayoutState(label, store, entries, naming=naming, writable=write,
                                 assume_present=assume_present)
        self.transport: httpx.AsyncBaseTransport = LayoutTransport(self.state)

    def _open_store(self, label: str) -> tuple[BlobStore, list[LayoutEntry]]:
        path = self.path
        if not self.write:
            if self.archive:
                if not path.is_file():
                    raise NotALayout(f"{label}: no such file")
                tar = TarIndex(path)
                return BlobStore(label, archive=tar), _archive_entries(tar, label)
            if not (path / "index.json").is_file():
                raise NotALayout(f"{label}: not an OCI image layout (no index.json)")
            return BlobStore(label, directory=path), _dir_entries(path, label)
        work = path.parent / f".{path.name}.fanout-{secrets.token_hex(6)}"
        if self.archive:
            old = None
            entries: list[LayoutEntry] = []
            if path.exists():
                if not path.is_file():
                    raise NotALayout(f"{label}: exists and is not a file")
                old = TarIndex(path)
                entries = _archive_entries(old, label)
            work.mkdir(parents=False)
            (work / "uploads").mkdir()
            self._work = work
            return BlobStore(label, directory=work, archive=old, scratch=work / "uploads"), entries
        entries = []
        if path.exists():
            if not path.is_dir():
                raise NotALayout(f"{label}: exists and is not a directory")
            if (path / "index.json").is_file():
                entries = _dir_entries(path, label)
            elif any(path.iterdir()):
                raise NotALayout(f"{label}: a directory that is neither empty nor an OCI layout")
        if not path.exists():
            path.mkdir(parents=True)
            self._made = path
        work.mkdir()
        self._work = work
        return BlobStore(label, directory=path, scratch=work), entries

    def reference(self, repository: str = "layout", ref: str | None = None) -> Reference:
        """A reference on this layout's host: ``ref`` a tag (a ref.name) or a digest."""
        repo = Repository(self.host, repository)
        if ref is not None and is_digest(ref):
            return Reference(repo, digest=ref)
        return Reference(repo, tag=ref)

    def entries(self) -> list[LayoutEntry]:
        """Every ``index.json`` entry: as read, or (open for writing) as a commit would write."""
        if self.write:
            return self.state.final_entries()
        return sorted(self.state.before, key=sort_key)

    def annotate(self, digest_or_ref_name: str, annotations: Mapping[str, str]) -> None:
        """Add ``annotations`` to the entries of that ref.name or digest, written at commit."""
        self.state.annotate(digest_or_ref_name, annotations)

    async def commit(self) -> None:
        """Write ``index.json`` (a directory) or pack the archive, atomically; once."""
        if self._done:
            return
        self._done = True
        try:
            if self.write:
                await self._settle()
                await asyncio.to_thread(self._commit)
        finally:
            await self._tidy()

    async def discard(self) -> None:
        """Drop what this session wrote; the previous layout or archive stays as it was."""
        if self._done:
            return
        self._done = True
        await self._tidy()
        if self._made is not None:
            await asyncio.to_thread(shutil.rmtree, self._made, True)

    async def _settle(self) -> None:
        if isinstance(self.transport, LayoutTransport):
            await self.transport.settle()

    async def _tidy(self) -> None:
        await self._settle()
        if self._work is not None:
            await asyncio.to_thread(shutil.rmtree, self._work, True)
            self._work = None

    def _commit(self) -> None:
        index = render_index(self.state.final_entries())
        if not self.archive:
            if not (self.path / "oci-layout").is_file():
                _replace(self.path / "oci-layout", OCI_LAYOUT)
            _replace(self.path / "index.json", index)
            return
        temporary = self.path.parent / f"{self.path.name}.{secrets.token_hex(6)}.tmp"
        try:
            pack(temporary, self.state.store, index, list(self.state.store.digests()))
            temporary.replace(self.path)
        except BaseException:
            temporary.unlink(missing_ok=True)
            raise
        _sync_dir(self.path.parent)


def _replace(target: Path, data: bytes) -> None:
    temporary = target.parent / f".{target.name}.{secrets.token_hex(6)}.tmp"
    try:
        with temporary.open("xb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        temporary.replace(target)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    _sync_dir(target.parent)


def _sync_dir(directory: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _dir_entries(path: Path, label: str) -> list[LayoutEntry]:
    return parse_index((path / "index.json").read_bytes(), label)


def _archive_entries(tar: TarIndex, label: str) -> list[LayoutEntry]:
    raw = tar.read("index.json", MAX_MANIFEST_BYTES)
    if raw is None:
        why = " (it is cut short)" if tar.truncated else ""
        raise NotALayout(f"{label}: not an OCI archive: no index.json{why}")
    return parse_index(raw, label)


@asynccontextmanager
async def open_layout(
    path: str | os.PathLike[str], *, archive: bool, write: bool, naming: Naming = "tag",
    assume_present: Iterable[str] = (),
) -> AsyncIterator[Layout]:
    """Open a layout (``archive``: an OCI archive file, else a directory); on a clean exit a
    layout open for writing is committed, on an error discarded.

    ``naming``: how ref.names map to tags (``registry/layout/index.py``). ``assume_present``:
    digests a write treats as already there (answered present, never written), for an
    incremental bundle whose base carried them. Raises NotALayout for a path that cannot be
    used as asked."""
    # Opening reads index.json, an archive's member headers and the manifests it lists: on
    # a thread, as every other read of the layout is.
    layout = await asyncio.to_thread(Layout, Path(path), archive=archive, write=write,
                                     naming=naming, assume_present=assume_present)
    try:
        yield layout
    except BaseException:
        await layout.discard()
        raise
    await layout.commit()
