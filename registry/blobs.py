"""Moving one blob to one repository: HEAD, then a cross-repository mount, then a streamed
(or chunked) upload, verified on the way.

A :class:`BlobMover` serves every destination of a run: it remembers where each blob is known to
be per registry (the mount sources for later copies), and a second destination on the same
registry waits for an upload under way and mounts it, so the bytes cross the network once per
registry.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from typing import TypeVar

from .errors import RegistryError
from .fetch import blob_head, blob_stream
from .manifest import Descriptor
from .push import (
    UploadSession,
    VerifyingStream,
    blob_mount,
    is_unsupported_upload,
    upload_cancel,
    upload_chunks,
    upload_start,
    upload_stream,
)
from .reference import Repository
from .results import CopyStats, ProgressSink
from .retry import RetryPolicy, retry_async
from .session import Registries

T = TypeVar("T")
log = logging.getLogger("fanout.copy")

# Chunk size used when a registry refuses a whole-blob PUT and no size was configured.
_FALLBACK_CHUNK = 8 * 1024 * 1024


class BlobMover:
    """Copies blobs for every destination of a run, sharing what one learns with the others."""

    def __init__(
        self, registries: Registries, retry: RetryPolicy, progress: ProgressSink | None = None,
    ) -> None:
        self.registries = registries
        self.retry = retry
        self.progress = progress
        # Where each blob is known to be, per registry: the mount sources for later copies.
        self._landed: dict[tuple[str, str], set[str]] = {}
        # Uploads under way per (registry, digest), for a second destination to wait on.
        self._inflight: dict[tuple[str, str], asyncio.Future[str]] = {}
        self._chunked_hosts: set[str] = set()

    async def copy(
        self, source: Repository, target: Repository, blob: Descriptor, stats: CopyStats,
        slots: asyncio.Semaphore,
    ) -> None:
        """Make ``blob`` present at ``target``: HEAD, then mount, then upload; ``stats`` counts
        which it took, ``slots`` bounds the destination's transfers in flight."""
        client = self.registries.client(target.registry)
        async with slots:
            size = await self._retry(lambda: blob_head(client, target.path, blob.digest),
                                     f"check blob {blob.digest[:19]} at {target}")
            if size is not None:
                stats.blobs_skipped += 1
                self._landed_at(target, blob.digest)
                return
            key = (target.registry, blob.digest)
            waiting = self._inflight.get(key)
            if waiting is not None:
                # Another destination is sending these bytes to this registry; mount after it.
                # Its failure is its own: then we send the bytes ourselves below.
                with contextlib.suppress(RegistryError):
                    await asyncio.shield(waiting)
            session = await self._try_mounts(source, target, blob, stats)
            if session is None and self._is_mounted(target, blob):
                return
            future: asyncio.Future[str] = asyncio.get_running_loop().create_future()
            self._inflight.setdefault(key, future)
            try:
                await self._upload(source, target, blob, session)
            except BaseException as exc:
                if not future.done():
                    future.set_exception(exc if isinstance(exc, RegistryError)
                                         else RegistryError("upload abandoned"))
                    future.exception()  # nobody may be waiting; keep asyncio quiet
                raise
            finally:
                if self._inflight.get(key) is future:
                    del self._inflight[key]
            if not future.done():
                future.set_result(target.path)
            stats.blobs_uploaded += 1
            stats.bytes_transferred += blob.size
            self._landed_at(target, blob.digest)

    def _landed_at(self, repository: Repository, digest: str) -> None:
        self._landed.setdefault((repository.registry, digest), set()).add(repository.path)

    def _is_mounted(self, target: Repository, blob: Descriptor) -> bool:
        return target.path in self._landed.get((target.registry, blob.digest), set())

    async def _try_mounts(
        self, source: Repository, target: Repository, blob: Descriptor, stats: CopyStats,
    ) -> UploadSession | None:
        """Mount from a repository of the same registry known to hold the blob.

        Returns an upload session the registry opened instead of mounting, or None (which,
        with the destination recorded as landed, means mounted; otherwise nothing to mount from).
        """
        candidates = sorted(self._landed.get((target.registry, blob.digest), set()) - {target.path})
        if source.registry == target.registry and source.path != target.path:
            candidates.insert(0, source.path)
        client = self.registries.client(target.registry)
        for origin in dict.fromkeys(candidates):
            try:
                session = await self._retry(
                    lambda origin=origin: blob_mount(client, target.path, blob.digest, origin),  # type: ignore[misc]
                    f"mount {blob.digest[:19]} into {target}",
                )
            except RegistryError as exc:
                if exc.transient:
                    raise
                log.info("mount of %s from %s refused (%s); uploading instead",
                         blob.digest[:19], origin, exc)
                continue
            if session is None:
                stats.blobs_mounted += 1
                self._landed_at(target, blob.digest)
                return None
            return session  # registry declined the mount but opened an upload for us
        return None

    async def _upload(
        self, source: Repository, target: Repository, blob: Descriptor,
        session: UploadSession | None,
    ) -> None:
        client = self.registries.client(target.registry)
        source_client = self.registries.client(source.registry)
        opened = [session]

        def advance(nbytes: int) -> None:
            if self.progress is not None:
                self.progress.advance(str(target), nbytes)

        async def attempt() -> None:
            current = opened[0] or await upload_start(client, target.path)
            opened[0] = None  # a session serves one attempt; a retry opens a fresh one
            try:
                async with blob_stream(source_client, source.path, blob.digest) as response:
                    stream = VerifyingStream(response.aiter_bytes(), blob, advance)
                    chunk = self.registries.options.chunk_size
                    if chunk is None and (current.chunk_min or target.registry in
                                          self._chunked_hosts):
                        chunk = max(current.chunk_min, _FALLBACK_CHUNK)
                    if chunk:
                        await upload_chunks(client, current, blob, stream, chunk)
                    else:
                        await upload_stream(client, current, blob, stream)
            except RegistryError as exc:
                await upload_cancel(client, current)
                if is_unsupported_upload(exc) and target.registry not in self._chunked_hosts:
                    log.info("%s refused a whole-blob upload; switching to chunks", target.registry)
                    self._chunked_hosts.add(target.registry)
                    return await attempt()
                raise
            except BaseException:
                await asyncio.shield(upload_cancel(client, current))
                raise
            return None

        if self.progress is not None:
            self.progress.expect(str(target), blob.size)
        await self._retry(attempt, f"upload blob {blob.digest[:19]} to {target}")

    async def _retry(self, operation: Callable[[], Awaitable[T]], what: str) -> T:
        return await retry_async(self.retry, operation, what=what)
