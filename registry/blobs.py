"""Moving one blob to one repository: HEAD, then a cross-repository mount, then a streamed
(or chunked) upload, verified on the way::

    blob_head ──present──▶ done
       │ absent
    another destination on this registry uploading it? ──▶ wait, then mount from there
    blob_mount (from a repository of this registry known to hold it) ──201──▶ done
       │ 202: an upload session to use  /  refused: upload
    upload: whole-blob PUT ──refused as unsupported──▶ chunks (and the host is remembered)

A :class:`BlobMover` serves every destination of a run: it remembers where each blob is known to
be per registry (the mount sources for later copies), so the bytes cross the network once per
registry.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import TypeVar

from .chunks import upload_chunks
from .client import RegistryClient
from .errors import Denied, RegistryError, Unauthorized, UnexpectedStatus
from .fetch import blob_head, blob_stream
from .manifest import Descriptor
from .push import (
    UploadSession,
    VerifyingStream,
    blob_mount,
    is_unsupported_chunk,
    is_unsupported_upload,
    upload_cancel,
    upload_start,
    upload_stream,
)
from .reference import Repository
from .results import CopyStats, ProgressSink
from .retry import RetryPolicy, retry_async
from .session import Registries
from .singleflight import SingleFlight

T = TypeVar("T")
log = logging.getLogger("fanout.copy")

# Chunk size used when a registry refuses a whole-blob PUT and no size was configured.
_FALLBACK_CHUNK = 8 * 1024 * 1024
# Rounds of "another destination is uploading it, wait and mount" before uploading anyway.
_MAX_ROUNDS = 4


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
        # Uploads under way per (registry, digest), for another destination to wait on.
        self._uploads: SingleFlight[tuple[str, str], str] = SingleFlight(keep=False)

    async def copy(
        self, source: Repository, target: Repository, blob: Descriptor, stats: CopyStats,
        slots: asyncio.Semaphore,
    ) -> None:
        """Make ``blob`` present at ``target``: HEAD, then mount, then upload; ``stats`` counts
        which it took, ``slots`` bounds the destination's transfers in flight."""
        client = self.registries.client(target.registry)
        async with slots:
            size = await self._retry(
                lambda: blob_head(client, target.path, blob.digest, for_push=True),
                f"check blob {blob.digest[:19]} at {target}")
            if size is not None:
                stats.blobs_skipped += 1
                self._landed_at(target, blob.digest)
                return
            key = (target.registry, blob.digest)
            for _ in range(_MAX_ROUNDS):
                # Another destination sending these bytes to this registry: mount after it.
                # Its failure is its own; then we send the bytes ourselves.
                await self._uploads.join(key)
                session = await self._try_mounts(client, source, target, blob, stats)
                if session is None and self._is_landed(target, blob):
                    return
                if not self._uploads.running(key):
                    break
                # Raced another destination to the upload: let its bytes go once.
                if session is not None:
                    await upload_cancel(client, session)
                    session = None
            def upload() -> Awaitable[str]:
                return self._upload(client, source, target, blob, session)

            if self._uploads.running(key):
                await upload()  # still racing after every round: send our own
            else:
                # Nothing of this key runs now, so the work started here is this upload.
                await self._uploads.do(key, upload)
            stats.blobs_uploaded += 1
            stats.bytes_transferred += blob.size

    def _landed_at(self, repository: Repository, digest: str) -> None:
        self._landed.setdefault((repository.registry, digest), set()).add(repository.path)

    def _is_landed(self, target: Repository, blob: Descriptor) -> bool:
        return target.path in self._landed.get((target.registry, blob.digest), set())

    async def _try_mounts(
        self, client: RegistryClient, source: Repository, target: Repository,
        blob: Descriptor, stats: CopyStats,
    ) -> UploadSession | None:
        """Mount from a repository of the same registry known to hold the blob.

        Returns an upload session the registry opened instead of mounting, or None (which,
        with the destination recorded as landed, means mounted; otherwise nothing to mount from).
        """
        caps = client.capabilities
        candidates = sorted(self._landed.get((target.registry, blob.digest), set()) - {target.path})
        if source.registry == target.registry and source.path != target.path:
            candidates.insert(0, source.path)
        for origin in dict.fromkeys(candidates):
            if caps.mounts_refused:
                return None
            try:
                session = await self._retry(
                    lambda origin=origin: blob_mount(client, target.path, blob.digest, origin),  # type: ignore[misc]
                    f"mount {blob.digest[:19]} into {target}",
                )
            except RegistryError as exc:
                if exc.transient:
                    raise
                if isinstance(exc, Unauthorized | Denied | UnexpectedStatus):
                    # Refused as a kind of request, not for this blob: stop asking this host.
                    caps.mounts_refused = True
                log.info("mount of %s from %s refused (%s); uploading instead",
                         blob.digest[:19], origin, exc)
                continue
            if session is None:
                stats.blobs_mounted += 1
                self._landed_at(target, blob.digest)
                return None
            # Declined (ECR, Artifactory): the registry opened an upload for us instead.
            caps.mounts = False
            return session
        return None

    async def _upload(
        self, client: RegistryClient, source: Repository, target: Repository,
        blob: Descriptor, session: UploadSession | None,
    ) -> str:
        source_client = self.registries.client(source.registry)
        caps = client.capabilities
        opened = [session]

        def advance(nbytes: int) -> None:
            if self.progress is not None:
                self.progress.advance(str(target), nbytes)

        async def attempt() -> None:
            current = opened[0] or await upload_start(client, target.path)
            opened[0] = None  # a session serves one attempt; a retry opens a fresh one
            chunk = self.registries.options.chunk_size
            if chunk is None and (current.chunk_min or caps.whole_blob is False):
                chunk = max(current.chunk_min, _FALLBACK_CHUNK)
            if caps.chunked is False and caps.whole_blob is not False:
                chunk = None  # a chunk size is a preference; this host takes none
            try:
                async with blob_stream(source_client, source.path, blob.digest) as response:
                    stream = VerifyingStream(response.aiter_bytes(), blob, advance)
                    if chunk:
                        await upload_chunks(client, current, blob, stream, chunk)
                        caps.chunked = True
                    else:
                        await upload_stream(client, current, blob, stream)
                        caps.whole_blob = True
            except RegistryError as exc:
                await upload_cancel(client, current)
                if not chunk and is_unsupported_upload(exc) and caps.chunked is not False:
                    # Whoever learnt it first, this upload goes again in chunks; a sibling
                    # that raced us to the same refusal does the same.
                    if caps.whole_blob is not False:
                        log.info("%s refused a whole-blob upload; using chunks",
                                 target.registry)
                    caps.whole_blob = False
                    return await attempt()
                if chunk and is_unsupported_chunk(exc) and caps.whole_blob is not False:
                    if caps.chunked is not False:
                        log.info("%s refused a chunked upload; sending whole blobs",
                                 target.registry)
                    caps.chunked = False
                    return await attempt()
                raise
            except BaseException:
                await asyncio.shield(upload_cancel(client, current))
                raise
            return None

        if self.progress is not None:
            self.progress.expect(str(target), blob.size)
        await self._retry(attempt, f"upload blob {blob.digest[:19]} to {target}")
        self._landed_at(target, blob.digest)
        return target.path

    async def _retry(self, operation: Callable[[], Awaitable[T]], what: str) -> T:
        return await retry_async(self.retry, operation, what=what)
