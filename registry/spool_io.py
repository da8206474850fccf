"""The spool's byte moving (:mod:`registry.spool`): a download into a partial file, hashed on
the way, and file I/O on threads that a cancellation never leaves running on a closed descriptor
(``in_thread``, from :mod:`registry.threads`).
"""

from __future__ import annotations

import asyncio
import hashlib
import os
from collections.abc import AsyncIterator, Coroutine, Mapping
from contextlib import AsyncExitStack
from typing import Any, Protocol

from .errors import DigestMismatch, SizeMismatch
from .manifest import new_hasher
from .spool_store import Entry, SpoolStore
from .threads import in_thread

# Bytes per read of a spool file: few thread hops, little memory per reader.
CHUNK = 1024 * 1024
# Bytes a writer gathers before writing them: readers at its heels see them this soon.
_WRITE_AT = 256 * 1024


class BlobBody(Protocol):
    """What a blob is read through: an ``httpx.Response`` or a spool reader."""

    def aiter_bytes(self) -> AsyncIterator[bytes]: ...


class SourceBody(BlobBody, Protocol):
    """A source registry's answer: its headers (for the size) and its body."""

    @property
    def headers(self) -> Mapping[str, str]: ...


async def download(store: SpoolStore, entry: Entry, digest: str, fds: tuple[int, int],
                   source: AsyncExitStack, response: SourceBody, size: int) -> int:
    """Write ``response`` into ``entry``'s partial file at the source's pace and publish it once
    it is ``size`` bytes that hash to ``digest``; else remove it. Either way the entry's lock
    (``fds``: the lock's descriptor, the partial file's) is let go."""
    lock_fd, out_fd = fds
    hasher = new_hasher(digest)
    written = 0
    try:
        try:
            async with source:  # the source's errors arrive here as registry errors
                pending: list[bytes] = []
                buffered = 0
                async for piece in response.aiter_bytes():
                    pending.append(piece)
                    buffered += len(piece)
                    if buffered >= _WRITE_AT:
                        written += await in_thread(_append, out_fd, hasher, pending)
                        pending, buffered = [], 0
                written += await in_thread(_append, out_fd, hasher, pending)
        finally:
            os.close(out_fd)
        if written != size:
            raise SizeMismatch(f"blob {digest[:19]} was {written} bytes, not the "
                               f"{size} its source declared")
        actual = f"{digest.split(':', 1)[0]}:{hasher.hexdigest()}"
        if actual != digest:
            raise DigestMismatch(f"blob content hashes to {actual}, not to its digest {digest}")
        # On the loop: a rename and an unlink, and no cancellation between them and the
        # lock's release.
        store.publish(entry, lock_fd)
    except BaseException:
        store.discard(entry, lock_fd)
        raise
    return size


def _append(fd: int, hasher: hashlib._Hash, pieces: list[bytes]) -> int:
    """Hash and write ``pieces`` (on a thread: hashlib and the write release the GIL)."""
    written = 0
    for piece in pieces:
        hasher.update(piece)
        view = memoryview(piece)
        while view:
            done = os.write(fd, view)
            view = view[done:]
        written += len(piece)
    return written


async def unless_cancelled(work: Coroutine[Any, Any, int | None]) -> int | None:
    """The descriptor ``work`` opens on its thread; closed, should we be cancelled meanwhile
    (the thread runs on regardless)."""
    task = asyncio.ensure_future(work)
    try:
        return await asyncio.shield(task)
    except asyncio.CancelledError:
        def close(done: asyncio.Future[int | None]) -> None:
            fd = None if done.cancelled() or done.exception() else done.result()
            if fd is not None:
                os.close(fd)

        task.add_done_callback(close)
        raise


async def skip(chunks: AsyncIterator[bytes], count: int) -> AsyncIterator[bytes]:
    """``chunks`` without their first ``count`` bytes (what a reader already had)."""
    async for piece in chunks:
        if count >= len(piece):
            count -= len(piece)
            continue
        yield piece[count:] if count else piece
        count = 0
