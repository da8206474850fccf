"""The copy engine: one image, pinned by digest, to one or many repositories.

Order, per destination: children of an index (recursively) before the index, a manifest's blobs
before the manifest, tags last — so no tag ever names content that is not fully present.
Within one run, source manifests are fetched once for all destinations, a blob shared by several
platforms moves once per destination, and a blob already landed in another repository of the same
registry is mounted rather than sent again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Coroutine, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

from .errors import InternalError, InvalidManifest, RegistryError, SizeMismatch
from .fetch import blob_head, blob_stream, manifest_get, manifest_head
from .manifest import Descriptor, Manifest
from .options import CopyOptions
from .push import (
    UploadSession,
    VerifyingStream,
    blob_mount,
    is_unsupported_upload,
    manifest_put,
    upload_cancel,
    upload_chunks,
    upload_start,
    upload_stream,
)
from .reference import Reference, Repository
from .referrers import copy_referrers
from .results import CopyResult, CopyStats, ProgressSink
from .retry import retry_async
from .session import Registries

T = TypeVar("T")
log = logging.getLogger("fanout.copy")

# Chunk size used when a registry refuses a whole-blob PUT and no size was configured.
_FALLBACK_CHUNK = 8 * 1024 * 1024
# Child manifests of an index fetched and written at once, per destination.
_MANIFEST_CONCURRENCY = 8


@dataclass
class _Destination:
    """The state of one destination's copy: its counters and what it has done already."""

    repository: Repository
    stats: CopyStats
    blob_slots: asyncio.Semaphore
    manifest_slots: asyncio.Semaphore
    blobs: dict[str, asyncio.Task[None]] = field(default_factory=dict)
    manifests: dict[str, asyncio.Task[None]] = field(default_factory=dict)


class Copier:
    """Copies images between registries; one instance may serve many destinations at once."""

    def __init__(
        self,
        registries: Registries,
        options: CopyOptions | None = None,
        *,
        progress: ProgressSink | None = None,
    ) -> None:
        self.registries = registries
        self.options = options or CopyOptions()
        self.progress = progress
        self._manifests: dict[tuple[str, str], asyncio.Future[Manifest]] = {}
        # Where each blob is known to be, per registry: the mount sources for later copies.
        self._landed: dict[tuple[str, str], set[str]] = {}
        # Uploads under way per (registry, digest): a second destination on the same registry
        # waits for the first and mounts, so the bytes cross the network once per registry.
        self._inflight: dict[tuple[str, str], asyncio.Future[str]] = {}
        self._chunked_hosts: set[str] = set()

    # -- the public operations ------------------------------------------------------------

    async def resolve(self, source: Reference) -> Reference:
        """Pin ``source`` to a digest (one request when it is a tag), keeping its tag."""
        if source.digest:
            return source
        client = self.registries.client(source.registry)
        assert source.tag is not None
        manifest = await self._retry(
            lambda: manifest_get(client, source.path, source.tag or ""),
            f"resolve {source}",
        )
        self._remember_manifest(source.repository, manifest)
        return source.with_digest(manifest.digest)

    async def copy(
        self, source: Reference, destination: Repository, tags: Sequence[str] = (),
    ) -> CopyResult:
        """Copy and report; never raises for a registry failure (it is in the result)."""
        started = time.monotonic()
        stats = CopyStats()
        digest = source.digest or ""
        try:
            pinned = await self.resolve(source)
            digest = pinned.digest or ""
            await self.copy_image(pinned, destination, tags, stats=stats)
        except RegistryError as exc:
            log.warning("copy of %s to %s failed: %s", source, destination, exc)
            return CopyResult(str(source), str(destination), digest, tuple(tags), stats,
                              time.monotonic() - started, exc)
        except Exception as exc:
            # A bug of ours must not take the other destinations' results down with it.
            log.exception("unexpected error copying %s to %s", source, destination)
            error = InternalError(f"unexpected {type(exc).__name__} (a fanout bug; see the log)")
            return CopyResult(str(source), str(destination), digest, tuple(tags), stats,
                              time.monotonic() - started, error)
        return CopyResult(str(source), str(destination), digest, tuple(tags), stats,
                          time.monotonic() - started)

    async def copy_many(
        self, source: Reference, targets: Sequence[tuple[Repository, Sequence[str]]],
    ) -> list[CopyResult]:
        """Copy to every target at once, each isolated from the others' failures."""
        try:
            pinned = await self.resolve(source)
        except RegistryError as exc:
            return [CopyResult(str(source), str(repo), "", tuple(tags), error=exc)
                    for repo, tags in targets]
        return list(await asyncio.gather(*(
            self.copy(pinned, repo, tags) for repo, tags in targets
        )))

    async def copy_image(
        self, source: Reference, destination: Repository, tags: Sequence[str] = (),
        *, stats: CopyStats | None = None,
    ) -> CopyStats:
        """Copy ``source`` (pinned by digest) to ``destination`` and tag it; raise on failure."""
        if not source.digest:
            raise InvalidManifest(f"source {source} is not pinned by digest")
        stats = stats if stats is not None else CopyStats()
        dest = _Destination(
            destination, stats, asyncio.Semaphore(self.options.blob_concurrency),
            asyncio.Semaphore(_MANIFEST_CONCURRENCY),
        )
        try:
            await self._copy_image(source, dest, tags)
        except BaseException:
            # Shared blob and child tasks outlive the awaits that were cancelled; stop them too,
            # so a failed destination leaves nothing running against its registry.
            await _cancel_all([*dest.blobs.values(), *dest.manifests.values()])
            raise
        return stats

    async def _copy_image(self, source: Reference, dest: _Destination, tags: Sequence[str]) -> None:
        assert source.digest is not None
        destination, stats = dest.repository, dest.stats
        client = self.registries.client(destination.registry)
        root = await self._source_manifest(source.repository, source.digest)
        present = await self._retry(
            lambda: manifest_head(client, destination.path, root.digest),
            f"check {destination}@{root.digest[:19]}",
        )
        if present is not None and present.digest in ("", root.digest):
            stats.manifests_skipped += 1
        else:
            await self._copy_manifest(source.repository, dest, root, ())
        if self.options.referrers:
            # Signatures and SBOMs land before the tags: a tag means "complete", and an image
            # without its signatures fails admission where it is deployed.
            stats.referrers_copied += await copy_referrers(self, source, destination, root, stats)
        await self._write_tags(dest, root, tags)

    # -- manifests ------------------------------------------------------------------------

    def _remember_manifest(self, repository: Repository, manifest: Manifest) -> None:
        key = (str(repository), manifest.digest)
        if key not in self._manifests:
            future: asyncio.Future[Manifest] = asyncio.get_running_loop().create_future()
            future.set_result(manifest)
            self._manifests[key] = future

    async def _source_manifest(self, repository: Repository, digest: str) -> Manifest:
        key = (str(repository), digest)
        task = self._manifests.get(key)
        # A failed fetch is not cached: the next destination (or retry) tries again.
        if task is None or (task.done() and task.exception() is not None):
            client = self.registries.client(repository.registry)
            task = asyncio.ensure_future(self._retry(
                lambda: manifest_get(client, repository.path, digest),
                f"get {repository}@{digest[:19]}",
            ))
            self._manifests[key] = task
        return await asyncio.shield(task)

    async def _copy_manifest(
        self, source: Repository, dest: _Destination, manifest: Manifest, path: tuple[str, ...],
    ) -> None:
        if manifest.is_index:
            await run_all(self._child(source, dest, child, (*path, manifest.digest))
                          for child in manifest.children)
        else:
            await run_all(self._blob(source, dest, blob) for blob in manifest.distributable_blobs)
        client = self.registries.client(dest.repository.registry)
        await self._retry(
            lambda: manifest_put(client, dest.repository.path, manifest.digest, manifest),
            f"put {dest.repository}@{manifest.digest[:19]}",
        )
        dest.stats.manifests_copied += 1

    async def _child(
        self, source: Repository, dest: _Destination, child: Descriptor, path: tuple[str, ...],
    ) -> None:
        if child.digest in path:
            raise InvalidManifest(f"index {path[-1][:19]} refers back to {child.digest[:19]}: "
                                  "a loop")
        task = dest.manifests.get(child.digest)
        if task is None:
            task = asyncio.ensure_future(self._copy_child(source, dest, child, path))
            dest.manifests[child.digest] = task
        await asyncio.shield(task)

    async def _copy_child(
        self, source: Repository, dest: _Destination, child: Descriptor, path: tuple[str, ...],
    ) -> None:
        async with dest.manifest_slots:
            manifest = await self._source_manifest(source, child.digest)
            if len(manifest.raw) != child.size:
                raise SizeMismatch(
                    f"manifest {child.digest[:19]} is {len(manifest.raw)} bytes but its index "
                    f"says {child.size}")
            client = self.registries.client(dest.repository.registry)
            present = await self._retry(
                lambda: manifest_head(client, dest.repository.path, child.digest),
                f"check {dest.repository}@{child.digest[:19]}",
            )
        if present is not None:
            dest.stats.manifests_skipped += 1
            return
        await self._copy_manifest(source, dest, manifest, path)

    async def _write_tags(
        self, dest: _Destination, manifest: Manifest, tags: Sequence[str],
    ) -> None:
        client = self.registries.client(dest.repository.registry)
        for tag in tags:
            current = await self._retry(
                lambda tag=tag: manifest_head(client, dest.repository.path, tag),  # type: ignore[misc]
                f"check tag {dest.repository}:{tag}",
            )
            if current is not None and current.digest == manifest.digest:
                continue
            await self._retry(
                lambda tag=tag: manifest_put(client, dest.repository.path, tag, manifest),  # type: ignore[misc]
                f"tag {dest.repository}:{tag}",
            )
            dest.stats.tags_written += 1

    # -- blobs ----------------------------------------------------------------------------

    async def _blob(self, source: Repository, dest: _Destination, blob: Descriptor) -> None:
        task = dest.blobs.get(blob.digest)
        if task is None:
            task = asyncio.ensure_future(self._copy_blob(source, dest, blob))
            dest.blobs[blob.digest] = task
        await asyncio.shield(task)

    async def _copy_blob(self, source: Repository, dest: _Destination, blob: Descriptor) -> None:
        target = dest.repository
        client = self.registries.client(target.registry)
        async with dest.blob_slots:
            size = await self._retry(lambda: blob_head(client, target.path, blob.digest),
                                     f"check blob {blob.digest[:19]} at {target}")
            if size is not None:
                dest.stats.blobs_skipped += 1
                self._landed_at(target, blob.digest)
                return
            key = (target.registry, blob.digest)
            waiting = self._inflight.get(key)
            if waiting is not None:
                # Another destination is sending these bytes to this registry; mount after it.
                # Its failure is its own: then we send the bytes ourselves below.
                with contextlib.suppress(RegistryError):
                    await asyncio.shield(waiting)
            session = await self._try_mounts(source, dest, blob)
            if session is None and self._is_mounted(dest, blob):
                return
            future: asyncio.Future[str] = asyncio.get_running_loop().create_future()
            self._inflight.setdefault(key, future)
            try:
                await self._upload(source, dest, blob, session)
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
            dest.stats.blobs_uploaded += 1
            dest.stats.bytes_transferred += blob.size
            self._landed_at(target, blob.digest)

    def _landed_at(self, repository: Repository, digest: str) -> None:
        self._landed.setdefault((repository.registry, digest), set()).add(repository.path)

    def _is_mounted(self, dest: _Destination, blob: Descriptor) -> bool:
        return dest.repository.path in self._landed.get(
            (dest.repository.registry, blob.digest), set())

    async def _try_mounts(
        self, source: Repository, dest: _Destination, blob: Descriptor,
    ) -> UploadSession | None:
        """Mount from a repository of the same registry known to hold the blob.

        Returns an upload session the registry opened instead of mounting, or None (which,
        with the destination recorded as landed, means mounted; otherwise nothing to mount from).
        """
        target = dest.repository
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
                dest.stats.blobs_mounted += 1
                self._landed_at(target, blob.digest)
                return None
            return session  # registry declined the mount but opened an upload for us
        return None

    async def _upload(
        self, source: Repository, dest: _Destination, blob: Descriptor,
        session: UploadSession | None,
    ) -> None:
        target = dest.repository
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

    # -- plumbing -------------------------------------------------------------------------

    async def _retry(self, operation: Callable[[], Awaitable[T]], what: str) -> T:
        return await retry_async(self.options.retry, operation, what=what)


async def run_all(work: Iterable[Coroutine[Any, Any, None]]) -> None:
    """Run together; on the first failure cancel the rest and raise one error, a permanent one
    when there is one (retrying cannot fix the whole), else the first."""
    try:
        async with asyncio.TaskGroup() as group:
            for coroutine in work:
                group.create_task(coroutine)
    except ExceptionGroup as failures:
        errors = _leaves(failures)
        permanent = [e for e in errors if isinstance(e, RegistryError) and not e.transient]
        raise (permanent or errors)[0] from None


def _leaves(group: BaseExceptionGroup[Exception]) -> list[Exception]:
    found: list[Exception] = []
    for exc in group.exceptions:
        found.extend(_leaves(exc) if isinstance(exc, BaseExceptionGroup) else [exc])
    return found


async def _cancel_all(tasks: Sequence[asyncio.Future[None]]) -> None:
    pending = [task for task in tasks if not task.done()]
    for task in pending:
        task.cancel()
    await asyncio.gather(*pending, return_exceptions=True)
