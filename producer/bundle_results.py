"""What ``fanout export`` and ``fanout import`` did, image by image: plain data for the output."""

from __future__ import annotations

from dataclasses import dataclass, field

from .bundle_format import BaseInfo


@dataclass(frozen=True)
class ImageOutcome:
    """One image of a bundle: written into it (export) or pushed from it (import)."""

    repository: str  # the source repository
    digest: str
    tags: tuple[str, ...]
    destination: str  # export: the bundle; import: the mapped repository
    releases: tuple[str, ...] = ()
    bytes_transferred: int = 0
    referrers: int = 0
    error: str | None = None
    # import, incremental bundle: blobs the bundle left out that the destination lacked.
    missing: tuple[str, ...] = ()

    @property
    def ok(self) -> bool:
        return self.error is None


@dataclass(frozen=True)
class BundleResult:
    """A whole export or import."""

    command: str  # "export" or "import"
    bundle: str
    images: tuple[ImageOutcome, ...]
    seconds: float
    base: BaseInfo | None = None
    sha256: str | None = None  # export: of the archive written
    size: int | None = None
    dry_run: bool = False
    blobs_left_out: tuple[str, ...] = field(default=())

    @property
    def ok(self) -> bool:
        return all(image.ok for image in self.images)
