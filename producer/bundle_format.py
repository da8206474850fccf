"""What a release bundle adds to an OCI archive: the annotations ``export`` writes and
``import`` reads.

- On each image's ``index.json`` entry (one per tag, or one by digest for an image with none):
  ``io.fanout.release`` (the release the entry goes with) and ``io.fanout.repository`` (its
  source repository, which a by-digest entry has no ``ref.name`` to say).
- On the same entries, in an incremental bundle: the base's file name and sha256, and the
  blobs of that image left out because the base carried them (sorted, comma-separated). The
  far side must hold those already; ``import`` checks for them before it pushes the image.

Entries without ``io.fanout.release`` are referrers (cosign's tag-named manifests): they travel
with the image they refer to, not as images of their own.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Protocol

RELEASE = "io.fanout.release"
REPOSITORY = "io.fanout.repository"
BASE_NAME = "io.fanout.bundle.base.name"
BASE_SHA256 = "io.fanout.bundle.base.sha256"
LEFT_OUT = "io.fanout.bundle.left-out"
REF_NAME = "org.opencontainers.image.ref.name"


@dataclass(frozen=True)
class BaseInfo:
    """The bundle an incremental bundle was built on, and blobs left out because it had them."""

    name: str  # the base's file name, without its directory
    sha256: str  # of the base's bytes, hex
    left_out: tuple[str, ...]  # digests, sorted

    def annotations(self) -> dict[str, str]:
        return {BASE_NAME: self.name, BASE_SHA256: self.sha256,
                LEFT_OUT: ",".join(self.left_out)}

    @classmethod
    def from_annotations(cls, annotations: Mapping[str, str]) -> BaseInfo | None:
        """The base an entry's annotations name; None in a full bundle."""
        if BASE_SHA256 not in annotations:
            return None
        left_out = tuple(d for d in annotations.get(LEFT_OUT, "").split(",") if d)
        return cls(annotations.get(BASE_NAME, ""), annotations[BASE_SHA256], left_out)

    def describe(self) -> str:
        return f"{self.name} (sha256 {self.sha256[:12]})"


def split_ref_name(ref_name: str) -> tuple[str, str | None]:
    """``ghcr.io/acme/app:1.4`` -> (``ghcr.io/acme/app``, ``1.4``); no tag -> (name, None)."""
    slash = ref_name.rfind("/")
    colon = ref_name.rfind(":")
    if colon > slash:
        return ref_name[:colon], ref_name[colon + 1:]
    return ref_name, None


@dataclass(frozen=True)
class BundledImage:
    """One image as a bundle lists it: the entries with a release annotation, grouped by
    source repository and digest."""

    repository: str
    digest: str
    tags: tuple[str, ...]
    releases: tuple[str, ...]
    left_out: tuple[str, ...] = ()
    base: BaseInfo | None = None


class _Entry(Protocol):
    """An ``index.json`` entry, as ``registry.layout.LayoutEntry`` has it."""

    @property
    def ref_name(self) -> str | None: ...
    @property
    def digest(self) -> str: ...
    @property
    def annotations(self) -> Mapping[str, str]: ...


def bundled_images(entries: Iterable[_Entry]) -> list[BundledImage]:
    """The images of a bundle's ``index.json`` entries, in their order; referrers' entries
    (no release annotation) are left to travel with their subjects."""
    found: dict[tuple[str, str], list[_Entry]] = {}
    for entry in entries:
        if RELEASE not in entry.annotations:
            continue
        repository = entry.annotations.get(REPOSITORY)
        if repository is None and entry.ref_name:
            repository = split_ref_name(entry.ref_name)[0]
        if repository:
            found.setdefault((repository, entry.digest), []).append(entry)
    images = []
    for (repository, digest), group in found.items():
        tags = [split_ref_name(e.ref_name)[1] for e in group if e.ref_name]
        first = group[0].annotations
        left_out = tuple(d for d in first.get(LEFT_OUT, "").split(",") if d)
        images.append(BundledImage(
            repository, digest, tuple(dict.fromkeys(t for t in tags if t)),
            tuple(dict.fromkeys(e.annotations[RELEASE] for e in group)), left_out,
            BaseInfo.from_annotations(first)))
    return images


def entry_annotations(repository: str, release: str, base: BaseInfo | None) -> dict[str, str]:
    """What export writes on an image's entry; ``base`` holds that image's left-out blobs."""
    annotations = {RELEASE: release, REPOSITORY: repository}
    if base is not None:
        annotations.update(base.annotations())
    return annotations


def layout_path(repository: str) -> str:
    """The repository's name inside the archive (its ref.names): itself, but for a registry
    port, whose ``:`` a repository path may not hold (``localhost:5000/app`` is
    ``localhost_5000/app``); ``io.fanout.repository`` keeps the exact name."""
    return repository.replace(":", "_")
