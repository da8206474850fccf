"""Running ``fanout export`` and ``fanout import``: the copy engine between registries and one
OCI archive (``registry.layout``), which the registry clients serve in-process.

Export copies the planned images one at a time into an archive opened with ``naming=
"repository"``; the archive is committed (written to a temporary name, renamed) only when every
image is in, so a failed or killed export leaves no archive at the target name. Import maps every
repository before it pushes anything, then copies each image out of the archive with the same
engine (retries, mounts, quirks; tags last).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from registry.copy import Copier
from registry.errors import BlobNotInLayout, RegistryError
from registry.fetch import blob_head
from registry.layout import open_layout
from registry.options import CopyOptions, TransportOptions
from registry.reference import Repository, parse_reference
from registry.results import CopyResult, ProgressSink
from registry.session import Registries

from .bundle_base import BaseBundle
from .bundle_format import (
    BaseInfo,
    BundledImage,
    bundled_images,
    entry_annotations,
    layout_path,
)
from .bundle_map import PrefixMap, map_all
from .bundle_plan import BundleImage
from .bundle_results import BundleResult, ImageOutcome

if TYPE_CHECKING:
    from registry.credentials import CredentialStore


class _ExportFailed(Exception):
    """An image could not be read: the archive is discarded, nothing is written."""


def export_bundle(
    images: Sequence[BundleImage], path: str, *, base: BaseBundle | None,
    credentials: CredentialStore | None, transport: TransportOptions,
    options: CopyOptions | None = None, live: bool = False,
) -> BundleResult:
    """Write ``images`` into the archive ``path``; never half-written."""
    return asyncio.run(_export(images, Path(path), base, credentials, transport,
                               options or CopyOptions(), live))


async def _export(
    images: Sequence[BundleImage], path: Path, base: BaseBundle | None,
    credentials: CredentialStore | None, transport: TransportOptions, options: CopyOptions,
    live: bool,
) -> BundleResult:
    started = time.monotonic()
    left_out: dict[BundleImage, tuple[str, ...]] = {}
    if base is not None:
        async with Registries(credentials, transport) as registries:
            reader = Copier(registries, options)
            for image in images:
                blobs = await _graph_blobs(reader, parse_reference(image.repository).repository,
                                           image.digest)
                left_out[image] = tuple(sorted(blobs & base.blobs))
    every_left_out = tuple(sorted({d for blobs in left_out.values() for d in blobs}))
    outcomes: list[ImageOutcome] = []
    info = {image: None if base is None else BaseInfo(base.name, base.sha256, left_out[image])
            for image in images}
    try:
        async with open_layout(path, archive=True, write=True, naming="repository",
                               assume_present=every_left_out) as layout:
            await _write_all(layout, images, info, credentials, transport, options, live,
                             outcomes)
    except _ExportFailed:
        return BundleResult("export", str(path), tuple(outcomes), time.monotonic() - started,
                            base=_base_info(base, every_left_out))
    sha256, size = _file_digest(path)
    return BundleResult("export", str(path), tuple(outcomes), time.monotonic() - started,
                        base=_base_info(base, every_left_out), sha256=sha256, size=size,
                        blobs_left_out=every_left_out)


async def _write_all(
    layout: Any, images: Sequence[BundleImage], info: Mapping[BundleImage, BaseInfo | None],
    credentials: CredentialStore | None, transport: TransportOptions, options: CopyOptions,
    live: bool, outcomes: list[ImageOutcome],
) -> None:
    """Copy each image into ``layout`` and annotate its entries; _ExportFailed at the first
    image that fails (its outcome appended first)."""
    names = [str(layout.reference(layout_path(i.repository)).repository) for i in images]
    async with Registries(credentials, transport,
                          local={layout.host: layout.transport}) as registries:
        with _progress(live, names) as progress:
            copier = Copier(registries, options, progress=progress)
            for image in images:
                destination = layout.reference(layout_path(image.repository)).repository
                result = await copier.copy(parse_reference(image.source), destination,
                                           [tag for tag, _ in image.tags])
                outcomes.append(_outcome(image.repository, image.digest, "the bundle", result,
                                         releases=image.releases))
                if not result.ok:
                    raise _ExportFailed
                for tag, release in image.tags:
                    layout.annotate(f"{layout_path(image.repository)}:{tag}",
                                    entry_annotations(image.repository, release, info[image]))
                if not image.tags:
                    layout.annotate(image.digest, entry_annotations(
                        image.repository, image.newest_release, info[image]))


def import_bundle(
    path: str, maps: Sequence[PrefixMap], *, dry_run: bool,
    credentials: CredentialStore | None, transport: TransportOptions,
    options: CopyOptions | None = None, live: bool = False,
) -> BundleResult:
    """Push every image of the archive ``path`` where ``maps`` send its repository.
    UsageError (nothing pushed) when a repository has no mapping."""
    return asyncio.run(_import(Path(path), maps, dry_run, credentials, transport,
                               options or CopyOptions(), live))


async def _import(
    path: Path, maps: Sequence[PrefixMap], dry_run: bool, credentials: CredentialStore | None,
    transport: TransportOptions, options: CopyOptions, live: bool,
) -> BundleResult:
    started = time.monotonic()
    # Repository naming: each image's tags (cosign's `sha256-<hex>.sig` among them) are listed
    # under its own repository, as the engine asks for them.
    async with open_layout(path, archive=True, write=False, naming="repository") as layout:
        images = bundled_images(layout.entries())
        mapping = map_all([i.repository for i in images], maps)  # before any push
        base = next((i.base for i in images if i.base is not None), None)
        if dry_run:
            outcomes = tuple(ImageOutcome(i.repository, i.digest, i.tags,
                                          str(mapping[i.repository]), i.releases)
                             for i in images)
            return BundleResult("import", str(path), outcomes, time.monotonic() - started,
                                base=base, dry_run=True)
        async with Registries(credentials, transport,
                              local={layout.host: layout.transport}) as registries:
            with _progress(live, sorted({str(d) for d in mapping.values()})) as progress:
                copier = Copier(registries, options, progress=progress)
                done = []
                for image in images:
                    done.append(await _push(copier, registries, layout, image,
                                            mapping[image.repository]))
    return BundleResult("import", str(path), tuple(done), time.monotonic() - started,
                        base=base)


async def _push(copier: Copier, registries: Registries, layout: Any, image: BundledImage,
                destination: Repository) -> ImageOutcome:
    """One image out of the bundle; an incremental one's left-out blobs are checked first, so
    that a destination without them is told all of them, not the first the copy meets."""
    missing = await _missing(registries, destination, image.left_out)
    if missing:
        base = image.base.describe() if image.base is not None else "its base"
        return ImageOutcome(
            image.repository, image.digest, image.tags, str(destination), image.releases,
            error=f"the bundle was built on {base} and left out {len(missing)} blob(s) it "
                  f"expected {destination} to hold; not found there (import {base} first)",
            missing=missing)
    source = layout.reference(layout_path(image.repository), image.digest)
    result = await copier.copy(source, destination, image.tags)
    outcome = _outcome(image.repository, image.digest, str(destination), result,
                       releases=image.releases)
    if isinstance(result.error, BlobNotInLayout) and image.base is not None:
        return ImageOutcome(
            outcome.repository, outcome.digest, outcome.tags, outcome.destination,
            outcome.releases, error=f"blob {result.error.digest} is not in the bundle (built "
                                    f"on {image.base.describe()}) nor at {destination}",
            missing=(result.error.digest,))
    return outcome


async def _missing(registries: Registries, destination: Repository,
                   digests: Sequence[str]) -> tuple[str, ...]:
    if not digests:
        return ()
    client = registries.client(destination.registry)
    sizes = await asyncio.gather(*(blob_head(client, destination.path, d, for_push=True)
                                   for d in digests))
    return tuple(d for d, size in zip(digests, sizes, strict=True) if size is None)


async def _graph_blobs(copier: Copier, repository: Repository, digest: str) -> set[str]:
    """The config and layer blobs of an image or index (nested), read from its source."""
    manifest = await copier.source_manifest(repository, digest)
    if not manifest.is_index:
        return {blob.digest for blob in manifest.distributable_blobs}
    found: set[str] = set()
    for child in manifest.children:
        found |= await _graph_blobs(copier, repository, child.digest)
    return found


def _outcome(repository: str, digest: str, destination: str, result: CopyResult, *,
             releases: tuple[str, ...]) -> ImageOutcome:
    error = None if result.error is None else _describe(result.error)
    return ImageOutcome(repository, digest, result.tags, destination, releases,
                        result.stats.bytes_transferred, result.stats.referrers_copied, error)


def _describe(error: RegistryError) -> str:
    digest = getattr(error, "digest", None)
    text = str(error)
    return text if not digest or digest in text else f"{text} ({digest})"


def _base_info(base: BaseBundle | None, left_out: tuple[str, ...]) -> BaseInfo | None:
    return None if base is None else BaseInfo(base.name, base.sha256, left_out)


def _file_digest(path: Path) -> tuple[str, int]:
    hasher = hashlib.sha256()
    with path.open("rb") as file:
        for chunk in iter(lambda: file.read(1 << 20), b""):
            hasher.update(chunk)
    return hasher.hexdigest(), path.stat().st_size


@contextlib.contextmanager
def _progress(live: bool, destinations: list[str]) -> Iterator[ProgressSink | None]:
    """Bars on a terminal (rich loads only then); nothing otherwise."""
    if not live:
        yield None
        return
    from .progress import LiveProgress

    with LiveProgress(destinations) as progress:
        yield progress
