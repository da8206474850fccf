"""The copy engine: a walk of one image's graph, pinned by digest, to one or many repositories.

One destination's copy, top to bottom (:meth:`Copier.copy_image`)::

    node(root): the source's GET (by digest, verified) ∥ the destination's HEAD
    │    ── present ──▶ skip the subtree
    │    ├─ an index: node(child) for every child, together
    │    ├─ an image: every blob (HEAD → mount → upload, ``registry/blobs.py``), together
    │    └─ PUT the exact source bytes by digest, once everything it names is there
    ∥ referrers of the root and of every manifest inside it (``registry/referrers.py`` finds them)
    │    └─ referrer(r): node(r), then r's own referrers, then r's cosign tag; OCI referrers are
    │       registered under their subject where the destination lacks the referrers API
    tags, once both are done: PUT the root's bytes by tag, last, so no tag names content that is
    not fully there (nor any of its referrers missing)

Every round trip is a wait, so whatever needs only the digest leaves at the start, together: the
source's GET of the root and its referrers question, the destination's HEADs of the root and of
each tag (the first of which probes the destination and gets its token, while the source's do
the same). A no-op copy is then those requests and nothing after them. Later answers are
found in the walk's single-flight maps, asked early with ``SingleFlight.start``.

The per-destination state is one explicit :class:`_Walk` (single-flight maps of manifests and
blobs under way, the counters, the slots); the state shared by every destination of a run is
the :class:`Copier`'s (source manifests, what the source's referrers are, where blobs landed).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

from . import scopes
from .blobs import BlobMover
from .client import RegistryClient
from .errors import InternalError, InvalidManifest, RegistryError, SizeMismatch
from .fetch import ManifestInfo, manifest_get, manifest_head
from .gather import all_of, run_all
from .manifest import Descriptor, Manifest
from .options import CopyOptions
from .push import manifest_put
from .reference import Reference, Repository
from .referrers import Found, ReferrerFinder, has_referrers_api, referrer_descriptor
from .referrers_index import fallback_tag, merge_fallback_index
from .results import CopyResult, CopyStats, ProgressSink
from .retry import retry_async
from .session import Registries
from .singleflight import SingleFlight
from .tag_gate import TagGate
from .tag_writer import DestinationTag

T = TypeVar("T")
log = logging.getLogger("fanout.copy")

# Child manifests of an index fetched and checked at once, per destination.
_MANIFEST_CONCURRENCY = 8


@dataclass
class _Walk:
    """One destination's copy: where it goes, what it counts, what is under way there."""

    destination: Repository
    client: RegistryClient
    stats: CopyStats
    blob_slots: asyncio.Semaphore
    manifest_slots: asyncio.Semaphore
    manifests: SingleFlight[str, None] = field(default_factory=SingleFlight)
    blobs: SingleFlight[str, None] = field(default_factory=SingleFlight)
    subjects: SingleFlight[str, None] = field(default_factory=SingleFlight)
    referrers: SingleFlight[tuple[str, str], None] = field(default_factory=SingleFlight)
    # The destination's HEADs, by digest or tag: most are asked before they are needed.
    checks: SingleFlight[str, ManifestInfo | None] = field(default_factory=SingleFlight)

    async def cancel(self) -> None:
        """Stop everything still running for this destination."""
        for flight in (self.referrers, self.subjects, self.manifests, self.blobs, self.checks):
            await flight.cancel()


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
        self._manifests: SingleFlight[tuple[str, str], Manifest] = SingleFlight()
        self._blobs = BlobMover(registries, self.options.retry, progress)
        self._referrers = ReferrerFinder(registries, self.options, self.source_manifest)
        self._api_asked: SingleFlight[str, bool] = SingleFlight()
        # Our own writers of one fallback index take turns; other processes are handled by
        # reading back (referrers_index.py).
        self._index_locks: dict[tuple[str, str], asyncio.Lock] = {}

    # -- the public operations ------------------------------------------------------------

    async def resolve(self, source: Reference) -> Reference:
        """Pin ``source`` to a digest (one request when it is a tag), keeping its tag."""
        if source.digest:
            return source
        client = self.registries.client(source.registry)
        tag = source.tag or ""
        manifest = await self._retry(lambda: manifest_get(client, source.path, tag),
                                     f"resolve {source}")
        self._manifests.seed((str(source.repository), manifest.digest), manifest)
        return source.with_digest(manifest.digest)

    async def copy(
        self, source: Reference, destination: Repository, tags: Sequence[str] = (),
    ) -> CopyResult:
        """Copy and report; never raises for a registry failure (it is in the result)."""
        started = time.monotonic()
        stats = CopyStats()
        digest = source.digest or ""
        error: RegistryError | None = None
        warming = self._warm(source, [destination])
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
        if error is not None:
            _stop(warming)
        return CopyResult(str(source), str(destination), digest, tuple(tags), stats,
                          time.monotonic() - started, error)

    async def copy_many(
        self, source: Reference, targets: Sequence[tuple[Repository, Sequence[str]]],
    ) -> list[CopyResult]:
        """Copy to every target at once, each isolated from the others' failures."""
        warming = self._warm(source, [repo for repo, _ in targets])
        try:
            pinned = await self.resolve(source)
        except RegistryError as exc:
            _stop(warming)
            return [CopyResult(str(source), str(repo), "", tuple(tags), error=exc)
                    for repo, tags in targets]
        return list(await asyncio.gather(*(
            self.copy(pinned, repo, tags) for repo, tags in targets
        )))

    def _warm(self, source: Reference, destinations: Sequence[Repository]) -> asyncio.Future[Any]:
        """While a source's tag is read, probe each destination and get its push token, which
        its copy's first requests would otherwise wait for after the read (a source pinned by
        digest needs no read: those requests leave with the source's own)."""
        if source.digest:
            destinations = ()
        return asyncio.gather(*(self.registries.client(d.registry).warm(scopes.push(d.path))
                                for d in destinations), return_exceptions=True)

    async def copy_image(
        self, source: Reference, destination: Repository, tags: Sequence[str] = (),
        *, stats: CopyStats | None = None, tag_gate: TagGate | None = None,
    ) -> CopyStats:
        """Copy ``source`` (pinned by digest) to ``destination`` and tag it; raise on failure.

        ``tag_gate``: where the root's tags are ordered against other copies' (the workers'
        release order); without one, each tag is written whenever it names another digest."""
        if not source.digest:
            raise InvalidManifest(f"source {source} is not pinned by digest")
        walk = _Walk(
            destination, self.registries.client(destination.registry),
            stats if stats is not None else CopyStats(),
            asyncio.Semaphore(self.options.blob_concurrency),
            asyncio.Semaphore(_MANIFEST_CONCURRENCY),
        )
        repository, digest = source.repository, source.digest
        try:
            # The root's HEAD first (it probes the host), the tags' beside it (the module
            # docstring); the tags' answers are read at the end.
            for reference in (digest, *tags):
                walk.checks.start(reference, self._check(walk, reference))
            graph = self._node(repository, walk, digest, ())
            if self.options.referrers:
                # Signatures and SBOMs land before the tags: a tag means "complete", and an
                # image without its signatures fails admission where it is deployed.
                await _beside(graph, self._referrers_of(repository, walk, digest, frozenset()))
            else:
                await graph
            root = await self.source_manifest(repository, digest)
            if self.options.referrers and root.subject is not None:
                # Copied on its own, not as someone's referrer: still make it findable.
                await self._register(walk, root.subject.digest, [referrer_descriptor(root)])
            if tag_gate is None:
                await self._write_tags(walk, root, tags)
            else:
                await self._gated_tags(walk, root, tags, tag_gate)
        except BaseException:
            # Shared work outlives the awaits that were cancelled; stop it too, so a failed
            # destination leaves nothing running against its registry.
            await walk.cancel()
            raise
        return walk.stats

    async def source_manifest(self, repository: Repository, digest: str) -> Manifest:
        """A source manifest by digest, fetched once per run however many ask for it."""
        client = self.registries.client(repository.registry)
        return await self._manifests.do(
            (str(repository), digest),
            lambda: self._retry(lambda: manifest_get(client, repository.path, digest),
                                f"get {repository}@{digest[:19]}"))

    # -- manifests: the graph -------------------------------------------------------------

    async def _node(
        self, source: Repository, walk: _Walk, digest: str, path: tuple[str, ...],
        size: int | None = None,
    ) -> None:
        """Make manifest ``digest`` and everything it names present at the destination."""
        if digest in path:
            raise InvalidManifest(f"index {path[-1][:19]} refers back to {digest[:19]}: a loop")
        await walk.manifests.do(digest, lambda: self._copy_node(source, walk, digest, path, size))

    async def _copy_node(
        self, source: Repository, walk: _Walk, digest: str, path: tuple[str, ...],
        size: int | None,
    ) -> None:
        destination, client = walk.destination, walk.client
        async with walk.manifest_slots:
            # Both need only the digest: asked together, not one after the other.
            manifest, present = await asyncio.gather(
                self.source_manifest(source, digest),
                walk.checks.do(digest, self._check(walk, digest)))
            if size is not None and len(manifest.raw) != size:
                raise SizeMismatch(f"manifest {digest[:19]} is {len(manifest.raw)} bytes but its "
                                   f"index says {size}")
        if present is not None and present.digest in ("", digest):
            walk.stats.manifests_skipped += 1
            return
        inner = (*path, digest)
        if manifest.is_index:
            await run_all(self._node(source, walk, child.digest, inner, child.size)
                          for child in manifest.children)
        else:
            await run_all(self._blob(source, walk, blob) for blob in manifest.distributable_blobs)
        await self._retry(lambda: manifest_put(client, destination.path, digest, manifest),
                          f"put {destination}@{digest[:19]}")
        walk.stats.manifests_copied += 1

    async def _blob(self, source: Repository, walk: _Walk, blob: Descriptor) -> None:
        await walk.blobs.do(blob.digest, lambda: self._blobs.copy(
            source, walk.destination, blob, walk.stats, walk.blob_slots))

    def _check(self, walk: _Walk, reference: str) -> Callable[[], Awaitable[ManifestInfo | None]]:
        """The destination's HEAD of ``reference`` (a digest or a tag), asked with push scope:
        its token then serves the writes too."""
        destination, client = walk.destination, walk.client
        what = (f"check {destination}@{reference[:19]}" if ":" in reference
                else f"check tag {destination}:{reference}")
        return lambda: self._retry(
            lambda: manifest_head(client, destination.path, reference, for_push=True), what)

    # -- referrers: more nodes of the same walk -------------------------------------------

    async def _referrers_of(
        self, source: Repository, walk: _Walk, digest: str, ancestry: frozenset[str],
    ) -> None:
        """Copy the referrers of manifest ``digest`` and of every manifest inside it.

        Every subject's question goes to the source at once (``digest``'s own before its
        manifest has arrived); the copies go one at a time, as a cycle through tags is only
        seen along one chain of them (two chains at once could each wait for the other).
        """
        self._referrers.start(source, [digest])
        manifest = await self.source_manifest(source, digest)
        within = await self._referrers.manifests_within(source, manifest)
        self._referrers.start(source, within)
        for subject in [digest, *within]:
            if subject in ancestry:
                continue  # a cycle through tags: the caller up the chain is doing it
            await walk.subjects.do(subject, lambda subject=subject: self._subject(  # type: ignore[misc]
                source, walk, subject, ancestry | {subject}))

    async def _subject(
        self, source: Repository, walk: _Walk, subject: str, ancestry: frozenset[str],
    ) -> None:
        entries: list[dict[str, Any]] = []
        for found in await self._referrers.find(source, subject):
            key = f"{found.digest}|{found.tag or ''}"
            if key not in ancestry:  # else a cycle through tags, done up the chain
                chain = ancestry | {key}
                await walk.referrers.do((found.digest, found.tag or ""),
                                        lambda found=found, chain=chain: (  # type: ignore[misc]
                                            self._referrer(source, walk, found, chain)))
            if found.tag is None:
                entries.append(referrer_descriptor(await self.source_manifest(source,
                                                                              found.digest)))
        if entries:
            await self._register(walk, subject, entries)

    async def _referrer(
        self, source: Repository, walk: _Walk, found: Found, ancestry: frozenset[str],
    ) -> None:
        """One referrer: its graph, its own referrers (a signature on an SBOM), its cosign tag."""
        manifest = await self.source_manifest(source, found.digest)
        await self._node(source, walk, found.digest, ())
        await self._referrers_of(source, walk, found.digest, ancestry)
        if found.tag is not None:
            await self._write_tags(walk, manifest, [found.tag])
        walk.stats.referrers_copied += 1

    async def _register(self, walk: _Walk, subject: str, entries: list[dict[str, Any]]) -> None:
        """Make ``entries`` findable from ``subject`` at the destination: the referrers API
        finds them through their ``subject`` already; elsewhere, the fallback index."""
        destination, client = walk.destination, walk.client
        if await has_referrers_api(client, destination, subject, self.options, self._api_asked):
            return
        tag = fallback_tag(subject)
        lock = self._index_locks.setdefault((str(destination), tag), asyncio.Lock())
        async with lock:
            await merge_fallback_index(client, destination, tag, entries, self.options.retry)

    # -- tags, last -----------------------------------------------------------------------

    async def _write_tags(self, walk: _Walk, manifest: Manifest, tags: Sequence[str]) -> None:
        """PUT ``manifest`` under each tag that does not name it already, all at once; the
        root's tags were asked about at the start of the copy."""
        destination, client = walk.destination, walk.client

        async def write(tag: str) -> None:
            current = await walk.checks.do(tag, self._check(walk, tag))
            if current is not None and current.digest == manifest.digest:
                return
            await self._retry(lambda: manifest_put(client, destination.path, tag, manifest),
                              f"tag {destination}:{tag}")
            walk.stats.tags_written += 1

        await run_all(write(tag) for tag in dict.fromkeys(tags))

    async def _gated_tags(self, walk: _Walk, manifest: Manifest, tags: Sequence[str],
                          gate: TagGate) -> None:
        """The root's tags through ``gate``, all at once: each is written, or left to the
        newer release that holds it (the gate keeps which)."""
        destination, client = walk.destination, walk.client

        def writer(tag: str) -> DestinationTag:
            return DestinationTag(client, destination, tag, manifest,
                                  early=lambda: walk.checks.do(tag, self._check(walk, tag)),
                                  retry=self.options.retry, stats=walk.stats)

        await all_of(gate.write(destination, tag, manifest.digest, writer(tag))
                     for tag in dict.fromkeys(tags))

    async def _retry(self, operation: Callable[[], Awaitable[T]], what: str) -> T:
        return await retry_async(self.options.retry, operation, what=what)


async def _beside(main: Awaitable[None], side: Coroutine[Any, Any, None]) -> None:
    """Run ``side`` while ``main`` runs. A failure of ``main`` stops ``side``; one of ``side``
    waits for ``main`` to finish (what it writes is sound, and a retry need not redo it), then
    is raised."""
    task = asyncio.ensure_future(side)
    try:
        await main
    except BaseException:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        raise
    await task


def _stop(warming: asyncio.Future[Any]) -> None:
    """Cancel a warm-up that is no longer wanted, and take its outcome when it comes: a
    cancelled ``gather`` ends holding a CancelledError that asyncio would otherwise log, with
    a traceback, as "exception was never retrieved" under a copy's ordinary failure."""
    warming.cancel()
    warming.add_done_callback(lambda done: None if done.cancelled() else done.exception())
