"""What a copy did, per destination: the record ``fanout copy`` prints and the ledger keeps."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Protocol

from .errors import RegistryError


@dataclass(slots=True)
class CopyStats:
    """Counters for one destination; blobs are counted once however many manifests share them."""

    bytes_transferred: int = 0
    blobs_skipped: int = 0
    blobs_mounted: int = 0
    blobs_uploaded: int = 0
    manifests_copied: int = 0
    manifests_skipped: int = 0
    tags_written: int = 0
    referrers_copied: int = 0

    def to_dict(self) -> dict[str, int]:
        return asdict(self)

    def absorb(self, other: CopyStats) -> None:
        """Add what another copy (a referrer's) moved; its referrer count is the caller's."""
        self.bytes_transferred += other.bytes_transferred
        self.blobs_skipped += other.blobs_skipped
        self.blobs_mounted += other.blobs_mounted
        self.blobs_uploaded += other.blobs_uploaded
        self.manifests_copied += other.manifests_copied
        self.manifests_skipped += other.manifests_skipped


@dataclass(frozen=True, slots=True)
class CopyResult:
    """The outcome for one destination: succeeded with stats, or failed with its error."""

    source: str
    destination: str
    digest: str
    tags: tuple[str, ...]
    stats: CopyStats = field(default_factory=CopyStats)
    seconds: float = 0.0
    error: RegistryError | None = None

    @property
    def ok(self) -> bool:
        return self.error is None

    def to_dict(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "destination": self.destination,
            "digest": self.digest,
            "tags": list(self.tags),
            "status": "succeeded" if self.ok else "failed",
            "seconds": round(self.seconds, 3),
            **self.stats.to_dict(),
            "error": self.error.to_dict() if self.error else None,
        }


class ProgressSink(Protocol):
    """Receives byte counts as blobs stream, for a live display; must be cheap."""

    def expect(self, destination: str, nbytes: int) -> None: ...

    def advance(self, destination: str, nbytes: int) -> None: ...
