"""The copy engine: one image, pinned by digest, to one or many repositories.

Order, per destination: children of an index (recursively) before the index, a manifest's blobs
before the manifest, tags last — so no tag ever names content that is not fully present.
Within one run, source manifests are fetched once for all destinations, and a blob shared by
several platforms moves once per destination (``registry/blobs.py`` moves the blobs).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import TypeVar

from .blobs import BlobMover
from .errors import InternalError, InvalidManifest, RegistryError, SizeMismatch
from .fetch import manifest_get, manifest_head
from .gather import cancel_all, run_all
from .manifest import Descriptor, Manifest
from .options import CopyOptions
from .push import manifest_put
from .reference import Reference, Repository
from .referrers import copy_referrers
from .results import CopyResult, CopyStats, ProgressSink
from .retry import retry_async
from .session import Registries

T = TypeVar("T")
log = logging.getLogger("fanout.copy")

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
        self._blobs = BlobMover(registries, self.options.retry, progress)

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
        error: RegistryError | None = None
        try:
            pinned = await self.resolve(source)
            digest = pinned.digest or ""
            await self.copy_image(pinned, destination, tags, stats=stats)
        except RegistryError as exc:
            log.warning("copy of %s to %s failed: %s", source, destination, exc)
            error = exc
        except Exception as exc:
            # A bug of ours must not take the other destinations' results down with it.
            log.exception("unexpected error copying %s to %s", source, destination)
            error = InternalError(f"unexpected {type(exc).__name__} (a fanout bug; see the log)")
        return CopyResult(str(source), str(destination), digest, tuple(tags), stats,
                          time.monotonic() - started, error)

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
            await cancel_all([*dest.blobs.values(), *dest.manifests.values()])
            raise
        return stats

    async def _copy_image(self, source: Reference, dest: _Destination, tags: Sequence[str]) -> None:
        assert source.digest is not None
        destination, stats = dest.repository, dest.stats
        client = self.registries.client(destination.registry)
        root = await self.source_manifest(source.repository, source.digest)
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

    async def source_manifest(self, repository: Repository, digest: str) -> Manifest:
        """A source manifest by digest, fetched once per run however many ask for it."""
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
            manifest = await self.source_manifest(source, child.digest)
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
            task = asyncio.ensure_future(self._blobs.copy(
                source, dest.repository, blob, dest.stats, dest.blob_slots))
            dest.blobs[blob.digest] = task
        await asyncio.shield(task)

    # -- plumbing -------------------------------------------------------------------------

    async def _retry(self, operation: Callable[[], Awaitable[T]], what: str) -> T:
        return await retry_async(self.options.retry, operation, what=what)
