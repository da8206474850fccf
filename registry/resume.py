"""Resuming a cut upload instead of starting it over: which blobs go in chunks, and where an
upload stands after a cut.

::

    blob under RESUMABLE_FROM, or a host that cannot resume ──▶ one PUT, as before
        │ big
    PATCH chunks of about an eighth of the blob ── a chunk fails (reset, timeout, 5xx) ──▶
    GET the upload's URL ── Range: 0-N ──▶ send on from N+1, from the chunk still in hand
        │ gone (BLOB_UPLOAD_INVALID / UNKNOWN), refused, or behind what it had taken
    the host cannot resume (remembered) ──▶ the attempt fails as before and starts over

The bytes of the chunk being sent are held in memory until the registry has taken them, so a
resume re-reads nothing from the source and the digest's hash state never goes back: it has
only ever seen the bytes once, in order.
"""

from __future__ import annotations

import asyncio
import logging
import math

from . import scopes
from .capabilities import Capabilities
from .client import RegistryClient
from .errors import RegistryError, retry_after_of

log = logging.getLogger("fanout.push")

MiB = 1024 * 1024
# Blobs under this go whole in one PUT (POST + PUT: two round trips). A cut then costs at most
# this much again, which over any link is less than the round trips chunks would add to every
# blob; most layers (and every config) are under it.
RESUMABLE_FROM = 64 * MiB
# Bigger blobs go in PATCHes of an eighth of the blob, kept between CHUNK_FLOOR and CHUNK_CAP:
# a cut loses at most the chunk in flight (a cut at 80% of 200 MiB sends at most 1.08x; starting
# over sends 1.8x), for a round trip per chunk more than one PUT. Each body streams from the
# source as it arrives, so reading and sending overlap as in one PUT, and a round trip of idle
# link per chunk is the whole cost: nothing on loopback (200 MiB in the same time either way,
# measured on tmpfs; distribution's filesystem driver adds an fsync per PATCH on a disk), about
# 3% at 1 Gbit/s and 50 ms (a 16 MiB chunk takes 0.13 s there), under 1% at 100 Mbit/s. A
# chunk's bytes are held in memory until the registry has taken them (a resume sends them again
# from there), so the cap is what an upload in flight holds: 16 MiB keeps a worker copying many
# big layers at once flat in memory, whatever the layer size. The floor keeps chunks long next
# to a round trip for blobs just over RESUMABLE_FROM.
CHUNKS_PER_BLOB = 8
CHUNK_FLOOR = 8 * MiB
CHUNK_CAP = 16 * MiB
# Resumes of one upload before the failure is the answer (the attempt then starts over).
MAX_RESUMES = 5
# Answers to a status GET meaning "this upload cannot go on": the registry dropped it.
_GONE = frozenset({"BLOB_UPLOAD_INVALID", "BLOB_UPLOAD_UNKNOWN"})


def plan_chunk(size: int, caps: Capabilities) -> int | None:
    """The chunk size for a resumable upload of ``size`` bytes, or None to send it whole."""
    if size < RESUMABLE_FROM or caps.resumes is False or caps.chunked is False:
        return None
    return caps.chunk_size(min(max(math.ceil(size / CHUNKS_PER_BLOB), CHUNK_FLOOR), CHUNK_CAP))


def kept_of_piece(offset: int, length: int, registry_at: int | None) -> int | None:
    """How many bytes of the piece sent from ``offset`` the registry kept, given where it says
    it stands; None when it cannot go on from the piece in hand (it lost bytes it had taken,
    or claims more than we sent)."""
    if registry_at is None or not offset <= registry_at <= offset + length:
        return None
    return registry_at - offset


async def upload_status(
    client: RegistryClient, location: str, repository: str, *, offset: int, what: str,
) -> tuple[int, str] | None:
    """Where an upload stands: the offset to send from and the URL to send to; None when the
    registry cannot say (then its host is remembered as one that does not resume)."""
    try:
        response = await client.request(
            "GET", location, expected=(204, 200), what=f"status of {what}",
            scopes=scopes.push(repository))
    except RegistryError as exc:
        if exc.transient:
            raise
        if not set(exc.codes) & _GONE:
            log.info("%s answers no upload status (%s)", client.registry, exc)
        return None
    at = _registry_at(response.headers.get("range", ""), offset)
    if at is None:
        return None
    next_url = response.headers.get("location")
    return at, client.resolve(response, next_url) if next_url else location


def _registry_at(value: str, offset: int) -> int | None:
    _, dash, end = value.strip().removeprefix("bytes=").partition("-")
    if not dash or not end.isdigit() or len(end) > 18:
        return None
    # "0-0" is how distribution says "empty" as well as "one byte": at offset 0 the former
    # is the only reading that makes sense of a resume.
    return 0 if end == "0" and offset == 0 else int(end) + 1


async def wait_to_resume(client: RegistryClient, exc: RegistryError, attempt: int) -> bool:
    """Back off before resume number ``attempt``; False when the failure is not one to resume
    (permanent, the host cannot resume, too many tries, or a hold for the task tier)."""
    policy = client.retry_policy
    after = retry_after_of(exc)
    if (not exc.transient or client.capabilities.resumes is False or attempt > MAX_RESUMES
            or (after is not None and after > policy.max_hold)):
        return False
    await asyncio.sleep(policy.delay(attempt, after))
    return True


def cannot_resume(client: RegistryClient, why: str) -> None:
    """Remember that ``client``'s host cannot resume uploads: later blobs go whole."""
    if client.capabilities.resumes is not False:
        log.info("%s cannot resume a cut upload (%s); big blobs go whole from now on",
                 client.registry, why)
    client.capabilities.resumes = False

