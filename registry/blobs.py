"""Moving one blob to one repository: HEAD, then a cross-repository mount, then a streamed
(or chunked) upload, verified on the way::

    blob_head ──present──▶ done
       │ absent
    another destination on this registry uploading it? ──▶ wait, then mount from there
    another worker uploading it (its claim in the index)? ──▶ wait, then mount from there
    blob_mount (from the source, then repositories this run or the index saw it in) ──201──▶ done
       │ 202: an upload session to use  /  refused: upload
    upload: whole-blob PUT ──refused as unsupported──▶ chunks (and the host is remembered)
            (a big blob: chunks a cut resumes from, where the host can: registry/resume.py)

A :class:`BlobMover` serves every destination of a run: it remembers where each blob landed per
registry (sure mount sources for later copies), and records it in the pool's
:class:`~registry.locations.BlobLocations` index, whose hints later runs mount from, in this
process or, on workers, any other: the bytes cross the network once per registry. Hosts served
in-process (OCI layouts, ``Registries.is_local``) stay out of the index: their names are this
process's own.

A hint may be stale (the repository deleted, the blob collected): a registry then answers the
mount with an upload session, as ECR and Artifactory answer every mount. So only a 202 to a
mount from a sure source (the source repository, or one this run saw the blob land in) marks
the host as declining mounts; a 202 to a hint, on a host not known to decline, drops the hint,
and on a host known to mount, the next hint is tried.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, TypeVar

from .chunks import upload_chunks
from .client import RegistryClient
from .errors import Denied, RegistryError, Unauthorized, UnexpectedStatus
from .fetch import blob_head, blob_stream
from .locations import HINT_TRIES
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
from .resume import plan_chunk
from .retry import RetryPolicy, retry_async
from .session import Registries
from .singleflight import SingleFlight
from .throttle import throttled
from .upload_claims import claimant_for, holding, wait_for_release

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
        # Where each blob landed in this run, per registry: sure mount sources, unlike the
        # index's hints (registries.locations), which may be stale.
        self._landed: dict[tuple[str, str], set[str]] = {}
        # Index writes under way: they run beside the copy, which never waits on a hint.
        self._hinting: set[asyncio.Task[None]] = set()
        # Uploads under way per (registry, digest), for another destination to wait on.
        self._uploads: SingleFlight[tuple[str, str], str] = SingleFlight(keep=False)
        # Repositories that refused to open an upload for good (ECR's missing repository):
        # a transfer waiting for a slot there fails with that answer instead of asking again.
        self._refused: dict[tuple[str, str], RegistryError] = {}

    async def copy(
        self, source: Repository, target: Repository, blob: Descriptor, stats: CopyStats,
        slots: asyncio.Semaphore,
    ) -> None:
        """Make ``blob`` present at ``target``: HEAD, then mount, then upload; ``stats`` counts
        which it took, ``slots`` bounds the destination's transfers in flight."""
        client = self.registries.client(target.registry)
        # An OCI layout served in-process: no other worker can be uploading there, and where
        # its blobs land is no hint for anyone (registries.locations is shared, layouts not).
        local = self.registries.is_local(target.registry)
        # Outside the slots: a HEAD is cheap, and a manifest's blobs are all asked at once
        # rather than in waves behind transfers.
        size = await self._retry(
            lambda: blob_head(client, target.path, blob.digest, for_push=True),
            f"check blob {blob.digest[:19]} at {target}")
        if size is not None:
            stats.blobs_skipped += 1
            self._landed_at(target, blob.digest)
            return
        async with slots:
            self._raise_if_refused(target)
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
            claimant: str | None = None
            if session is None and _may_mount(client) and not local:
                # Another worker (process or host) sending these bytes to this registry.
                landed, claimant, session = await self._take_turn(
                    client, source, target, blob, stats)
                if landed:
                    return

            async def upload() -> str:
                if claimant is None:
                    return await self._upload(client, source, target, blob, session)
                locations = self.registries.locations
                async with holding(locations, target.registry, blob.digest, claimant):
                    path = await self._upload(client, source, target, blob, session)
                    # In the index before the claim is given up: a waiter then finds it.
                    await locations.record(target.registry, blob.digest, target.path)
                    return path

            if self._uploads.running(key):
                await upload()  # still racing after every round: send our own
            else:
                # Nothing of this key runs now, so the work started here is this upload.
                await self._uploads.do(key, upload)
            stats.blobs_uploaded += 1
            stats.bytes_transferred += blob.size

    async def _take_turn(
        self, client: RegistryClient, source: Repository, target: Repository,
        blob: Descriptor, stats: CopyStats,
    ) -> tuple[bool, str | None, UploadSession | None]:
        """Claim this blob's upload to the registry, or wait for the worker holding the claim
        and mount from where its upload landed (registry/upload_claims.py).

        Returns (landed here, our claim if we hold one, an upload session the registry opened
        instead of mounting)."""
        locations = self.registries.locations
        claimant = claimant_for(target.path)
        for _ in range(_MAX_ROUNDS):
            holder = await locations.claim_upload(target.registry, blob.digest, claimant)
            if holder is None:
                return False, claimant, None
            log.debug("%s is being uploaded to %s by %s: waiting to mount it",
                      blob.digest[:19], target.registry, holder)
            await wait_for_release(locations, target.registry, blob.digest, holder)
            size = await self._retry(
                lambda: blob_head(client, target.path, blob.digest, for_push=True),
                f"check blob {blob.digest[:19]} at {target}")
            if size is not None:  # another copy to this very repository landed it
                stats.blobs_skipped += 1
                self._landed_at(target, blob.digest)
                return True, None, None
            session = await self._try_mounts(client, source, target, blob, stats)
            if session is None and self._is_landed(target, blob):
                return True, None, None
            if session is not None:  # the registry opened an upload instead: use it
                return False, None, session
        return False, None, None

    def _raise_if_refused(self, target: Repository) -> None:
        """Fail with the answer ``target`` gave when it refused an upload for good: a POST
        is never opened there once any transfer of the run has heard it."""
        refused = self._refused.get((target.registry, target.path))
        if refused is not None:
            raise refused

    def _landed_at(self, repository: Repository, digest: str) -> None:
        self._landed.setdefault((repository.registry, digest), set()).add(repository.path)
        if not self.registries.is_local(repository.registry):
            self._beside(self.registries.locations.record(
                repository.registry, digest, repository.path))

    def _is_landed(self, target: Repository, blob: Descriptor) -> bool:
        return target.path in self._landed.get((target.registry, blob.digest), set())

    def _beside(self, work: Coroutine[Any, Any, None]) -> None:
        task = asyncio.ensure_future(work)
        self._hinting.add(task)  # a strong reference until it is done
        task.add_done_callback(self._hinting.discard)

    async def settle(self) -> None:
        """Wait for the index writes started so far (a run's own copies never do)."""
        while self._hinting:
            await asyncio.gather(*self._hinting, return_exceptions=True)

    async def _try_mounts(
        self, client: RegistryClient, source: Repository, target: Repository,
        blob: Descriptor, stats: CopyStats,
    ) -> UploadSession | None:
        """Mount from a repository of the same registry that holds the blob: sure sources
        first, then the index's hints.

        Returns an upload session the registry opened instead of mounting, or None (which,
        with the destination recorded as landed, means mounted; otherwise nothing to mount from).
        """
        caps = client.capabilities
        key = (target.registry, blob.digest)
        sure = sorted(self._landed.get(key, set()) - {target.path})
        if source.registry == target.registry and source.path != target.path:
            sure.insert(0, source.path)
        for origin in dict.fromkeys(sure):
            if caps.mounts_refused:
                return None
            outcome = await self._mount(client, target, blob, origin, stats)
            if outcome is False:
                continue
            if outcome is True:
                return None
            # Declined from a repository that holds the blob (ECR, Artifactory): this host
            # does not mount, and the upload it opened is used.
            caps.mounts = False
            return outcome
        if caps.mounts_refused or self.registries.is_local(target.registry):
            return None
        locations = self.registries.locations
        hints = await locations.holders(*key)
        if target.path in hints:
            # HEAD has just found it absent there: whoever recorded it, it is gone.
            self._beside(locations.forget(*key, target.path))
        hints = [h for h in hints if h != target.path and h not in sure][:HINT_TRIES]
        for i, origin in enumerate(hints):
            if caps.mounts_refused:
                return None
            outcome = await self._mount(client, target, blob, origin, stats)
            if outcome is True:
                return None
            if outcome is False:
                continue
            if caps.mounts is False:
                return outcome  # the host declines every mount: the hint may well be sound
            # Stale (deleted, collected), or no use on a host that declines: dropped either way.
            log.debug("mount of %s from %s answered with an upload: forgetting that hint",
                      blob.digest[:19], origin)
            self._beside(locations.forget(*key, origin))
            if caps.mounts is not True or i == len(hints) - 1:
                return outcome
            await upload_cancel(client, outcome)  # a host that mounts: the next may be sound
        return None

    async def _mount(
        self, client: RegistryClient, target: Repository, blob: Descriptor, origin: str,
        stats: CopyStats,
    ) -> UploadSession | bool:
        """One mount from ``origin``: True mounted, False refused, else the upload the registry
        opened instead."""
        self._raise_if_refused(target)  # a transfer beside this one may have learnt it since
        try:
            session = await self._retry(
                lambda: blob_mount(client, target.path, blob.digest, origin),
                f"mount {blob.digest[:19]} into {target}",
            )
        except RegistryError as exc:
            if exc.transient:
                raise
            if isinstance(exc, Unauthorized | Denied | UnexpectedStatus):
                # Refused as a kind of request, not for this blob: stop asking this host.
                client.capabilities.mounts_refused = True
            log.info("mount of %s from %s refused (%s); uploading instead",
                     blob.digest[:19], origin, exc)
            return False
        if session is not None:
            return session
        stats.blobs_mounted += 1
        self._landed_at(target, blob.digest)
        return True

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

        async def open_session() -> UploadSession:
            given, opened[0] = opened[0], None  # it serves one attempt; a retry opens another
            if given is not None:
                return given
            self._raise_if_refused(target)  # learnt beside this transfer since its slot came
            return await upload_start(client, target.path)

        async def attempt() -> None:
            # The upload's POST and the source's GET need nothing of each other: both at once.
            start = asyncio.ensure_future(open_session())
            current: UploadSession | None = None
            chunk: int | None = None
            try:
                async with blob_stream(source_client, source.path, blob.digest) as response:
                    current = await start
                    chunk = self.registries.options.chunk_size
                    if chunk is None and (current.chunk_min or caps.whole_blob is False):
                        chunk = max(current.chunk_min, _FALLBACK_CHUNK)
                    if chunk is None:  # a big blob goes in chunks that a cut resumes from
                        chunk = plan_chunk(blob.size, caps)
                    if caps.chunked is False and caps.whole_blob is not False:
                        chunk = None  # a chunk size is a preference; this host takes none
                    body = throttled(response.aiter_bytes(), client.throttle,
                                     target.registry, "upload", blob.size)
                    stream = VerifyingStream(body, blob, advance)
                    if chunk:
                        await upload_chunks(client, current, blob, stream, chunk)
                        caps.chunked = True
                    else:
                        await upload_stream(client, current, blob, stream)
                        caps.whole_blob = True
            except RegistryError as exc:
                if current is None:  # the GET or the POST failed: nothing was sent
                    if start.done() and not start.cancelled() and start.exception() is exc \
                            and not exc.transient:
                        self._refused[(target.registry, target.path)] = exc
                    await _abandon(client, start)
                    raise
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
                await asyncio.shield(_abandon(client, start) if current is None
                                     else upload_cancel(client, current))
                raise
            return None

        if self.progress is not None:
            self.progress.expect(str(target), blob.size)
        await self._retry(attempt, f"upload blob {blob.digest[:19]} to {target}")
        self._landed_at(target, blob.digest)
        return target.path

    async def _retry(self, operation: Callable[[], Awaitable[T]], what: str) -> T:
        return await retry_async(self.retry, operation, what=what)


def _may_mount(client: RegistryClient) -> bool:
    caps = client.capabilities
    return not caps.mounts_refused and caps.mounts is not False


async def _abandon(client: RegistryClient, start: asyncio.Future[UploadSession]) -> None:
    """Stop an upload's opening, and drop the session if the registry opened one."""
    if not start.done():
        start.cancel()
    await asyncio.wait([start])  # never raises the task's failure: the caller has its own
    if not start.cancelled() and start.exception() is None:
        await upload_cancel(client, start.result())
