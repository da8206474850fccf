"""Chunked blob uploads (``PATCH`` pieces, then an empty ``PUT``), learning each host's rules.

Registries agree on the protocol and disagree on the pieces. What each one does, and what this
module does about it (remembered in the host's :class:`~registry.capabilities.Capabilities`):

- ``OCI-Chunk-Min-Length`` on the upload's ``POST`` (the spec's way): chunks at least that big.
- A piece refused with ``416`` and a ``Range`` showing nothing of it was taken (GHCR refuses
  chunks over 4 MiB so): the host takes smaller pieces; halve, and send the same bytes again.
- A non-final piece refused outright (ECR refuses chunks under 5 MiB, final one excepted): the
  host wants bigger pieces; double, keep buffering, send again from the same offset.
- ``Range`` showing part of a piece taken: resend from where the registry says it is.
- ``416`` without ``Range`` (distribution 3's ``RANGE_INVALID``): ask the upload's status and
  carry on from its offset.
- ``PATCH`` answered ``201`` (ECR) or ``204`` as well as ``202``; a missing ``Location`` keeps
  the last one.
- ``Content-Range`` is always ``start-end``, inclusive, without ``bytes`` (Quay and ACR refuse
  anything else).

Learning only narrows, so uploads racing on the same host converge, and none fails because a
sibling learnt a rule first: each piece is sized from the capabilities when it is cut.
A piece that fails on the way (a reset, a timeout, a 5xx) is resumed: the upload's status says
what the registry kept, and the rest of the piece, still in hand, goes again
(:mod:`registry.resume`). A registry that says it has fewer bytes than we already let go of
cannot be resumed from our side (the source streams once): that is a transient error, and the
upload starts over.
"""

from __future__ import annotations

import asyncio
import logging

import httpx

from . import scopes
from .capabilities import MIN_CHUNK_FLOOR
from .client import RegistryClient
from .errors import ProtocolError, RegistryError, ServerError, UnexpectedStatus
from .manifest import Descriptor
from .push import UploadSession, VerifyingStream, next_location, with_digest
from .resume import cannot_resume, kept_of_piece, upload_status, wait_to_resume

log = logging.getLogger("fanout.push")

# Past this a refused piece is not a size rule we can satisfy by growing it.
_MAX_CHUNK = 256 * 1024 * 1024
_ACCEPTED = (201, 202, 204)
# Refusals one upload may learn from before the refusal is the answer.
_MAX_RELEARN = 8


class _Upload:
    """One chunked upload's position: the registry's offset and where to send next."""

    def __init__(self, client: RegistryClient, session: UploadSession, blob: Descriptor) -> None:
        self.client = client
        self.location = session.location
        self.repository = session.repository
        self.blob = blob
        self.offset = 0
        self.relearnt = 0
        self.resumes = 0
        # The smallest non-final part the registry has taken so far.
        self.smallest = _MAX_CHUNK
        self.what = f"upload chunk of blob {blob.digest[:19]}"

    async def send(self, piece: bytes, *, final: bool) -> int:
        """PATCH ``piece`` at the current offset; return how many of its bytes were taken
        (0 when a rule was learnt and the caller should re-cut the piece)."""
        end = self.offset + len(piece) - 1
        try:
            response = await self.client.request(
                "PATCH", self.location, expected=_ACCEPTED,
                headers={"Content-Type": "application/octet-stream",
                         "Content-Range": f"{self.offset}-{end}",
                         "Content-Length": str(len(piece))},
                content=piece, what=self.what, scopes=scopes.push(self.repository),
            )
        except UnexpectedStatus as exc:
            return await self._refused(exc, piece, final=final)
        except RegistryError as exc:
            if not exc.transient:
                raise
            return await self.resume(exc, piece)  # cut on the way: go on from the registry
        if response.headers.get("location"):
            self.location = next_location(self.client, response, self.what)
        registry_end = _range_end(response)
        taken = (registry_end + 1 if registry_end is not None else end + 1) - self.offset
        if taken <= 0:
            raise ProtocolError(f"registry accepted no bytes of the chunk at offset {self.offset}",
                                method="PATCH", url=response.request.url)
        taken = min(taken, len(piece))
        self.offset += taken
        if not final:
            self.smallest = min(self.smallest, taken)
        return taken

    async def resume(self, exc: RegistryError, piece: bytes) -> int:
        """After ``piece`` failed on the way: how many of its bytes the registry kept, from its
        status; re-raises ``exc`` when the upload cannot go on (then it starts over)."""
        self.resumes += 1
        if not await wait_to_resume(self.client, exc, self.resumes):
            raise exc
        status = await upload_status(self.client, self.location, self.repository,
                                     offset=self.offset, what=self.what)
        kept = None if status is None else kept_of_piece(self.offset, len(piece), status[0])
        if status is None or kept is None:
            cannot_resume(self.client, f"after {exc}")
            raise exc
        self.client.capabilities.resumes = True
        self.location = status[1]
        log.info("resuming blob %s at byte %d of %d after: %s", self.blob.digest[:19],
                 self.offset + kept, self.blob.size, exc)
        self.offset += kept
        return kept

    async def _refused(self, exc: UnexpectedStatus, piece: bytes, *, final: bool) -> int:
        caps = self.client.capabilities
        self.relearnt += 1
        if self.relearnt > _MAX_RELEARN:
            raise exc  # no size we could learn satisfies it
        registry_at = await self._registry_offset(exc)
        if registry_at is not None and registry_at != self.offset:
            if not self.offset < registry_at <= self.offset + len(piece):
                raise ServerError(
                    f"{self.what}: the registry is at byte {registry_at}, we sent up to "
                    f"{self.offset}; starting the upload over", status=exc.status,
                    codes=exc.codes, method="PATCH", url=exc.url) from None
            taken = registry_at - self.offset  # it kept part of the piece after all
            self.offset = registry_at
            return taken
        # Refused whole while saying where it stands (GHCR's 416 + Range), or "too large":
        # the piece is over the host's maximum.
        too_big = exc.status == 413 or (exc.status == 416 and exc.range is not None)
        if too_big and len(piece) > MIN_CHUNK_FLOOR:
            caps.learn_chunk_max(len(piece) // 2)
            log.info("%s refused a %d-byte chunk; chunks of at most %s from now on",
                     self.client.registry, len(piece), caps.chunk_max)
            return 0
        # Refused without a word on the offset, and more is to come: under the host's minimum
        # (ECR's 5 MiB). The final piece may be small anywhere, so its refusal is the answer.
        if not final and exc.status in (400, 416) and len(piece) * 2 <= _MAX_CHUNK:
            caps.learn_chunk_min(len(piece) * 2)
            log.info("%s refused a %d-byte chunk; chunks of at least %d from now on",
                     self.client.registry, len(piece), caps.chunk_min)
            if self.smallest < caps.chunk_min:
                # An ECR may refuse the part after a small one, for the small one: the parts
                # it already took are the problem, and only a new upload undoes them.
                raise ServerError(
                    f"{self.what}: parts already sent are under the registry's minimum; "
                    f"starting the upload over with chunks of at least {caps.chunk_min}",
                    status=exc.status, codes=exc.codes, method="PATCH", url=exc.url) from None
            return 0
        raise exc

    async def _registry_offset(self, exc: UnexpectedStatus) -> int | None:
        """Where the registry says the upload is: the refusal's ``Range``, or for a 416
        without one, the upload's status."""
        if exc.range is not None:
            end = _parse_range_end(exc.range)
            if end is None:
                return None
            # "0-0" is how distribution says "empty" as well as "one byte": at offset 0 the
            # former is the only reading that makes sense of a refusal.
            return 0 if end == 0 and self.offset == 0 else end + 1
        if exc.status != 416:
            return None
        try:
            response = await self.client.request(
                "GET", self.location, expected=(204, 200), what=f"status of {self.what}",
                scopes=scopes.push(self.repository))
        except RegistryError:
            return None
        end = _range_end(response)
        return end + 1 if end is not None else 0

    async def commit(self) -> None:
        what = f"commit blob {self.blob.digest[:19]}"
        while True:
            try:
                await self.client.request(
                    "PUT", with_digest(self.location, self.blob.digest), expected=(201,),
                    headers={"Content-Length": "0"}, what=what,
                    scopes=scopes.push(self.repository),
                )
                return
            except RegistryError as exc:
                # Every byte is there: a failed commit is tried again, not the whole upload.
                # No status (a commit that did land leaves none) says nothing of the host.
                self.resumes += 1
                if not await wait_to_resume(self.client, exc, self.resumes):
                    raise
                status = await upload_status(self.client, self.location, self.repository,
                                             offset=self.offset, what=what)
                if status is None or status[0] != self.blob.size:
                    raise
                self.location = status[1]


async def upload_chunks(
    client: RegistryClient, session: UploadSession, descriptor: Descriptor,
    stream: VerifyingStream, chunk_size: int,
) -> None:
    """Chunked upload: PATCH pieces sized by what the host accepts, then commit. The next
    piece is read from the source while one is sent, so reading and sending overlap as they
    do in a whole-blob PUT (at most two pieces are held)."""
    upload = _Upload(client, session, descriptor)
    caps = client.capabilities
    wanted = max(chunk_size, session.chunk_min)
    source = _ReadAhead(stream)
    while True:
        size = caps.chunk_size(wanted)
        await source.fill(size + 1)  # a byte past the piece tells whether it is the last
        if not source.buffer:
            break
        piece = source.take(size)
        sending = asyncio.ensure_future(upload.send(piece, final=source.done))
        try:
            while not sending.done() and await source.read_one(size):
                pass
            taken = await sending
        except BaseException:
            sending.cancel()
            await asyncio.wait([sending])
            raise
        source.put_back(piece[taken:])
    await upload.commit()


class _ReadAhead:
    """The source's bytes not yet sent, read ahead of the piece being sent."""

    def __init__(self, stream: VerifyingStream) -> None:
        self._chunks = stream.__aiter__()
        self.buffer = bytearray()
        self._ended = False

    @property
    def done(self) -> bool:
        """Every byte has been read and taken."""
        return self._ended and not self.buffer

    async def read_one(self, limit: int) -> bool:
        """Read one more piece if fewer than ``limit`` bytes wait; False when none was read."""
        if self._ended or len(self.buffer) >= limit:
            return False
        try:
            self.buffer += await anext(self._chunks)
        except StopAsyncIteration:
            self._ended = True
            return False
        return True

    async def fill(self, limit: int) -> None:
        while await self.read_one(limit):
            pass

    def take(self, size: int) -> bytes:
        piece = bytes(self.buffer[:size])
        del self.buffer[:size]
        return piece

    def put_back(self, rest: bytes) -> None:
        """What the registry did not take of a piece goes first again."""
        self.buffer[:0] = rest


def _range_end(response: httpx.Response) -> int | None:
    """The last byte a ``Range: [bytes=]0-N`` header says the registry holds."""
    value = response.headers.get("range")
    if not value:
        return None
    end = _parse_range_end(value)
    if end is None:
        raise ProtocolError(f"malformed Range header {value[:40]!r} on an upload",
                            method=response.request.method, url=response.request.url)
    return end


def _parse_range_end(value: str) -> int | None:
    _, _, end = value.strip().removeprefix("bytes=").partition("-")
    return int(end) if end.isdigit() and len(end) < 19 else None
