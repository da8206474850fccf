"""One upload of a blob per registry across workers: claim it, or wait for whoever has.

Two tasks copying one release to two repositories of a registry, on two worker processes (or
hosts), would each send the blob's bytes: the blob-location index (``registry/locations.py``)
only tells a copy where a blob has *landed*. So an upload is claimed first, in the same index.
A copy that finds the claim taken waits until it is given up (the upload landed, or failed),
then mounts from where it landed, or, if it did not, claims and uploads itself.

The claim is a lease: renewed while the bytes flow, it lapses ``UPLOAD_CLAIM_SECONDS`` after a
worker killed mid-upload stopped renewing it. A waiter holds nothing meanwhile (no claim, so no
cycle of waiters), and gives up waiting after ``MAX_WAIT`` to upload itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import time
from collections.abc import AsyncIterator

from .locations import UPLOAD_CLAIM_SECONDS, BlobLocations

# Renewed three times per lease: a late renewal or two never lets a live upload's claim lapse.
RENEW_EVERY = UPLOAD_CLAIM_SECONDS / 3
# How often a waiter looks at the claim: an upload's end is noticed within this.
POLL = 0.2
# Past this, a waiter uploads anyway: a claim renewed for ever (a stuck upload) must not hold
# every other copy of the blob with it.
MAX_WAIT = 900.0


def claimant_for(repository: str) -> str:
    """A claimant name: the repository (for the log) and a nonce (two copies to one repository,
    of two releases sharing a layer, are two claimants)."""
    return f"{repository}#{secrets.token_hex(4)}"


async def wait_for_release(locations: BlobLocations, registry: str, digest: str,
                           holder: str, *, poll: float = POLL,
                           max_wait: float = MAX_WAIT) -> None:
    """Return once ``holder`` no longer holds the claim (or ``max_wait`` has passed)."""
    deadline = time.monotonic() + max_wait
    while time.monotonic() < deadline:
        if await locations.upload_claimant(registry, digest) != holder:
            return
        await asyncio.sleep(poll)


@contextlib.asynccontextmanager
async def holding(locations: BlobLocations, registry: str, digest: str,
                  claimant: str) -> AsyncIterator[None]:
    """Keep ``claimant``'s claim renewed for the block, and give it up after, however it
    ends. The block records where the blob landed before it ends, so that a waiter who sees
    the claim gone finds the blob in the index."""

    async def renew() -> None:
        while True:
            await asyncio.sleep(RENEW_EVERY)
            await locations.renew_upload(registry, digest, claimant)

    renewing = asyncio.ensure_future(renew())
    try:
        yield
    finally:
        renewing.cancel()
        await asyncio.gather(renewing, return_exceptions=True)
        await asyncio.shield(locations.release_upload(registry, digest, claimant))
