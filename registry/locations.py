"""Where each blob has been seen, per registry: the repositories a later copy may mount it from.

A copy to ``registry/b`` of a blob that is already in ``registry/a`` costs one request, a
cross-repository mount, instead of the blob's bytes, but only if the copy knows ``a`` holds it.
A :class:`BlobLocations` remembers that beyond one run: :class:`MemoryLocations` for a process
(``fanout copy``, or a worker's pool across its tasks), ``workers.locations.RedisLocations`` for
every worker of a queue.

Every entry is a **hint**, never a fact: a repository may have been deleted, or the blob
garbage-collected, since it was recorded. A mount is what verifies it (201: mounted), and the
mover (``registry.blobs``) forgets a hint that a registry which does mount answered with a fresh
upload instead. An index is advisory: it never raises for its own failures, and a lost entry
costs one upload, never a copy.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from typing import Protocol

# A blob worth mounting is in a few repositories of a registry; past this many, the newest do.
PER_BLOB = 16
# Hints the mover (registry/blobs.py) tries per blob, newest first. Past the first only on a
# host known to mount (its 202 means a stale hint): one that declines every mount (ECR) would
# answer each with an upload, a round trip wasted per try.
HINT_TRIES = 3
# Blobs remembered by one process: with PER_BLOB repositories each, a few tens of MiB at most.
CAPACITY = 50_000
# An upload claim lapses this long after its last renewal: a worker killed mid-upload holds the
# others back no longer than this (registry/upload_claims.py renews it well within).
UPLOAD_CLAIM_SECONDS = 10.0


class BlobLocations(Protocol):
    """The repositories of a registry known (as a hint) to hold a blob."""

    async def record(self, registry: str, digest: str, repository: str) -> None:
        """``repository`` of ``registry`` was seen to hold ``digest`` (present, mounted, or
        just uploaded)."""
        ...

    async def holders(self, registry: str, digest: str) -> list[str]:
        """Repositories of ``registry`` recorded as holding ``digest``, the newest first;
        empty when none is known (or the index cannot be read)."""
        ...

    async def forget(self, registry: str, digest: str, repository: str) -> None:
        """``repository`` proved not to hold ``digest``: stop offering it."""
        ...

    async def claim_upload(self, registry: str, digest: str, claimant: str) -> str | None:
        """Claim, for ``claimant``, the upload of ``digest`` to ``registry``: None when it is
        ours (or the index cannot tell: then everyone uploads), else the claimant in force,
        whose upload to mount from once it has landed. A claim lapses
        ``UPLOAD_CLAIM_SECONDS`` after it was taken or last renewed."""
        ...

    async def upload_claimant(self, registry: str, digest: str) -> str | None:
        """Who holds the claim on uploading ``digest`` to ``registry`` now (None: nobody)."""
        ...

    async def renew_upload(self, registry: str, digest: str, claimant: str) -> None:
        """Keep ``claimant``'s claim for another ``UPLOAD_CLAIM_SECONDS`` (if still its)."""
        ...

    async def release_upload(self, registry: str, digest: str, claimant: str) -> None:
        """Give ``claimant``'s claim up (if still its): the upload has ended, either way."""
        ...


class MemoryLocations:
    """The in-process :class:`BlobLocations`: bounded, the least recently recorded dropped
    first. Thread-safe (a worker's pool may be reached from more than one thread)."""

    def __init__(self, per_blob: int = PER_BLOB, capacity: int = CAPACITY) -> None:
        self._per_blob = max(1, per_blob)
        self._capacity = max(1, capacity)
        # (registry, digest) -> repositories, oldest first; the map itself oldest first too.
        self._blobs: OrderedDict[tuple[str, str], dict[str, None]] = OrderedDict()
        self._lock = threading.Lock()

    def count(self) -> int:
        """Blobs remembered."""
        with self._lock:
            return len(self._blobs)

    async def record(self, registry: str, digest: str, repository: str) -> None:
        key = (registry, digest)
        with self._lock:
            found = self._blobs.pop(key, None)
            if found is None:
                found = {}
            found.pop(repository, None)  # recorded again: now the newest
            found[repository] = None
            while len(found) > self._per_blob:
                del found[next(iter(found))]
            self._blobs[key] = found
            while len(self._blobs) > self._capacity:
                self._blobs.popitem(last=False)

    async def holders(self, registry: str, digest: str) -> list[str]:
        with self._lock:
            return list(reversed(self._blobs.get((registry, digest), {})))

    # One process needs no claims: its BlobMover's own single-flight waits on its uploads.

    async def claim_upload(self, registry: str, digest: str, claimant: str) -> str | None:
        return None

    async def upload_claimant(self, registry: str, digest: str) -> str | None:
        return None

    async def renew_upload(self, registry: str, digest: str, claimant: str) -> None:
        return None

    async def release_upload(self, registry: str, digest: str, claimant: str) -> None:
        return None

    async def forget(self, registry: str, digest: str, repository: str) -> None:
        key = (registry, digest)
        with self._lock:
            found = self._blobs.get(key)
            if found is not None:
                found.pop(repository, None)
                if not found:
                    del self._blobs[key]
