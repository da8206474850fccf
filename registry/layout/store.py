"""A layout's blobs: read from a directory (``blobs/<alg>/<hex>``) or an archive's members,
written into a directory through uploads hashed on the way in, and checked on the way out.

The methods here block on the disk (reads, writes, fsync); the transport calls them on a thread,
a piece of :data:`CHUNK` bytes or more at a time, so that a big layer never stalls the event
loop that serves every other destination of the same copy."""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import uuid
from collections.abc import AsyncIterator, Iterable, Iterator
from pathlib import Path
from typing import BinaryIO

from ..errors import BlobNotInLayout, CorruptBlob, DigestMismatch
from ..manifest import new_hasher
from ..threads import in_thread
from .tarindex import TarIndex

# Read and written in pieces this big: memory stays flat whatever a layer weighs, and a thread
# hop per piece costs nothing next to the piece's disk time and hashing.
CHUNK = 1024 * 1024
_DIGEST = re.compile(r"(sha256:[0-9a-f]{64}|sha512:[0-9a-f]{128})")


def blob_name(digest: str) -> str:
    """``blobs/<alg>/<hex>`` for a well-formed digest (anything else could name any path)."""
    if not _DIGEST.fullmatch(digest):
        raise DigestMismatch(f"{digest[:80]!r} is not a digest a layout can hold")
    algorithm, _, encoded = digest.partition(":")
    return f"blobs/{algorithm}/{encoded}"


def is_digest(text: str) -> bool:
    return _DIGEST.fullmatch(text) is not None


class Upload:
    """One blob on its way in: a scratch file, hashed and counted as it is written. The file is
    created by the first write (or the close), so that beginning an upload touches no disk."""

    def __init__(self, scratch: Path) -> None:
        self.id = uuid.uuid4().hex
        self.path = scratch / f"{self.id}.partial"
        self._file: BinaryIO | None = None
        self.size = 0
        self._sha256 = hashlib.sha256()

    def _handle(self) -> BinaryIO:
        if self._file is None:
            self._file = self.path.open("wb")
        return self._file

    def write(self, chunk: bytes) -> None:
        self._handle().write(chunk)
        self._sha256.update(chunk)
        self.size += len(chunk)

    def write_all(self, pieces: Iterable[bytes]) -> None:
        for piece in pieces:
            self.write(piece)

    def digest(self, algorithm: str) -> str:
        if algorithm == "sha256":
            return f"sha256:{self._sha256.hexdigest()}"
        # Rare (registries use sha256): read the file again rather than hash everything twice.
        hasher = hashlib.new(algorithm)
        with self.path.open("rb") as handle:
            while chunk := handle.read(CHUNK):
                hasher.update(chunk)
        return f"{algorithm}:{hasher.hexdigest()}"

    def close(self) -> None:
        handle = self._handle()
        if not handle.closed:
            handle.flush()
            os.fsync(handle.fileno())
            handle.close()

    def drop(self) -> None:
        if self._file is not None:
            with contextlib.suppress(OSError):
                self._file.close()
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()


class BlobReader:
    """One blob read piece by piece and hashed as it goes: the last piece is held back until
    the whole has been checked, so a reader never takes corrupt or short content as complete.
    Opened by the first :meth:`read`; each read blocks on the disk."""

    def __init__(self, store: BlobStore, digest: str) -> None:
        self._store = store
        self.digest = digest
        self._fd: int | None = None
        self._size = self._left = 0
        self._hasher = hashlib.new(digest.partition(":")[0])

    def read(self) -> bytes:
        """The next piece; empty at the end."""
        if self._fd is None:
            self._fd, self._size, _ = self._store.open_blob(self.digest)
            self._left = self._size
        if self._left <= 0:
            return b""
        digest, label = self.digest, self._store.label
        chunk = os.read(self._fd, min(CHUNK, self._left))
        if not chunk:
            raise CorruptBlob(f"{label}: blob {digest} is cut short "
                              f"({self._size - self._left} of {self._size} bytes)", digest=digest)
        self._left -= len(chunk)
        self._hasher.update(chunk)
        if self._left == 0 and (f"{digest.partition(':')[0]}:{self._hasher.hexdigest()}"
                                != digest):
            raise CorruptBlob(f"{label}: blob {digest} is corrupt (its bytes hash to another "
                              "digest)", digest=digest)
        return chunk

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


class BlobStore:
    """Blobs of one layout. ``directory``: where blobs are read and new ones land;
    ``archive``: an archive's members, read in place; ``scratch``: uploads under way."""

    def __init__(self, label: str, *, directory: Path | None = None,
                 archive: TarIndex | None = None, scratch: Path | None = None) -> None:
        self.label = label
        self.directory = directory
        self.archive = archive
        self.scratch = scratch
        self.written: set[str] = set()  # blobs this session added to ``directory``

    def size(self, digest: str) -> int | None:
        """The blob's size, or None when the layout lacks it."""
        name = blob_name(digest)
        if self.directory is not None:
            with contextlib.suppress(FileNotFoundError):
                return (self.directory / name).stat().st_size
        if self.archive is not None and name in self.archive.members:
            return self.archive.members[name].size
        return None

    def open_blob(self, digest: str) -> tuple[int, int, int]:
        """(descriptor at the first byte, declared size, bytes really there)."""
        name = blob_name(digest)
        if self.directory is not None:
            with contextlib.suppress(FileNotFoundError):
                fd = os.open(self.directory / name, os.O_RDONLY)
                size = os.fstat(fd).st_size
                return fd, size, size
        if self.archive is not None:
            found = self.archive.open_at(name)
            if found is not None:
                fd, member = found
                return fd, member.size, member.present
        raise self.missing(digest)

    def missing(self, digest: str) -> BlobNotInLayout | CorruptBlob:
        """The error for a blob the layout lacks: damage if the archive was cut short."""
        if self.archive is not None and self.archive.truncated:
            return CorruptBlob(f"{self.label} is cut short: blob {digest} is missing",
                               digest=digest)
        return BlobNotInLayout(f"{self.label} lacks blob {digest}", digest=digest)

    def read_small(self, digest: str, limit: int) -> bytes:
        """A manifest's bytes (at most ``limit``), checked against ``digest``."""
        fd, size, present = self.open_blob(digest)
        try:
            data = os.read(fd, min(size, limit))
        finally:
            os.close(fd)
        if len(data) < min(size, limit) or present < size:
            raise CorruptBlob(f"{self.label}: blob {digest} is cut short "
                              f"({len(data)} of {size} bytes)", digest=digest)
        if size <= limit:
            hasher = new_hasher(digest)
            hasher.update(data)
            if f"{digest.partition(':')[0]}:{hasher.hexdigest()}" != digest:
                raise CorruptBlob(f"{self.label}: blob {digest} is corrupt (its bytes hash "
                                  "to another digest)", digest=digest)
        return data

    def pieces(self, digest: str) -> Iterator[bytes]:
        """The blob in checked pieces (:class:`BlobReader`), read on the caller's thread."""
        reader = BlobReader(self, digest)
        try:
            while chunk := reader.read():
                yield chunk
        finally:
            reader.close()

    async def stream(self, digest: str) -> AsyncIterator[bytes]:
        """:meth:`pieces` for the event loop: each piece read and hashed on a thread, and the
        descriptor closed only once no read is under way on it."""
        reader = BlobReader(self, digest)
        try:
            while chunk := await in_thread(reader.read):
                yield chunk
        finally:
            reader.close()

    def begin(self) -> Upload:
        if self.scratch is None:
            raise DigestMismatch(f"{self.label} is open for reading only")
        return Upload(self.scratch)

    def finish(self, upload: Upload, digest: str) -> None:
        """Move a complete upload in as ``digest``; raise (and drop it) if it is not."""
        upload.close()
        algorithm = digest.partition(":")[0]
        name = blob_name(digest)
        actual = upload.digest(algorithm)
        if actual != digest:
            upload.drop()
            raise DigestMismatch(f"upload hashes to {actual}, not to {digest}",
                                 codes=("DIGEST_INVALID",))
        if self.directory is None or self.size(digest) is not None:
            upload.drop()  # already here: each blob is written once
            return
        target = self.directory / name
        target.parent.mkdir(parents=True, exist_ok=True)
        upload.path.replace(target)
        self.written.add(digest)

    def put_bytes(self, digest: str, data: bytes) -> None:
        upload = self.begin()
        upload.write(data)
        self.finish(upload, digest)

    def digests(self) -> Iterator[str]:
        """Every blob held (directory and archive), each once, sorted."""
        found: set[str] = set()
        if self.directory is not None:
            for alg_dir in sorted((self.directory / "blobs").glob("*")):
                for blob in alg_dir.iterdir():
                    found.add(f"{alg_dir.name}:{blob.name}")
        if self.archive is not None:
            for name in self.archive.members:
                parts = name.split("/")
                if len(parts) == 3 and parts[0] == "blobs":
                    found.add(f"{parts[1]}:{parts[2]}")
        return iter(sorted(d for d in found if is_digest(d)))
