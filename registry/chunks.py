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
what the registry kept, and the rest of the piece goes again, from the bytes held since they
were read (:mod:`registry.resume`). A registry that says it has fewer bytes than we already
let go of cannot be resumed from our side (the source streams once): that is a transient
error, and the upload starts over.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator

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
# Held bytes go out again in writes this big: one write of tens of MiB makes asyncio's
# transport (Python 3.11) move what is left of it after every send.
_WRITE_PIECE = 1024 * 1024


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

    async def send(self, length: int, body: AsyncIterator[bytes], *, final: bool) -> int:
        """PATCH the ``length`` bytes of ``body`` at the current offset; return how many of them
        were taken (0 when a rule was learnt and the caller should re-cut the piece)."""
        end = self.offset + length - 1
        try:
            response = await self.client.request(
                "PATCH", self.location, expected=_ACCEPTED,
                headers={"Content-Type": "application/octet-stream",
                         "Content-Range": f"{self.offset}-{end}",
                         "Content-Length": str(length)},
                content=body, what=self.what, scopes=scopes.push(self.repository),
            )
        except UnexpectedStatus as exc:
            return await self._refused(exc, length, final=final)
        except RegistryError as exc:
            if not exc.transient:
                raise
            return await self.resume(exc, length)  # cut on the way: go on from the registry
        if response.headers.get("location"):
            self.location = next_location(self.client, response, self.what)
        registry_end = _range_end(response)
        taken = (registry_end + 1 if registry_end is not None else end + 1) - self.offset
        if taken <= 0:
            raise ProtocolError(f"registry accepted no bytes of the chunk at offset {self.offset}",
                                method="PATCH", url=response.request.url)
        taken = min(taken, length)
        self.offset += taken
        if not final:
            self.smallest = min(self.smallest, taken)
        return taken

    async def resume(self, exc: RegistryError, length: int) -> int:
        """After a piece of ``length`` bytes failed on the way: how many of its bytes the
        registry kept, from its status; re-raises ``exc`` when the upload cannot go on."""
        self.resumes += 1
        if not await wait_to_resume(self.client, exc, self.resumes):
            raise exc
        status = await upload_status(self.client, self.location, self.repository,
                                     offset=self.offset, what=self.what)
        kept = None if status is None else kept_of_piece(self.offset, length, status[0])
        if status is None or kept is None:
            cannot_resume(self.client, f"after {exc}")
            raise exc
        self.client.capabilities.resumes = True
        self.location = status[1]
        log.info("resuming blob %s at byte %d of %d after: %s", self.blob.digest[:19],
                 self.offset + kept, self.blob.size, exc)
        self.offset += kept
        return kept

    async def _refused(self, exc: UnexpectedStatus, length: int, *, final: bool) -> int:
        caps = self.client.capabilities
        self.relearnt += 1
        if self.relearnt > _MAX_RELEARN:
            raise exc  # no size we could learn satisfies it
        registry_at = await self._registry_offset(exc)
        if registry_at is not None and registry_at != self.offset:
            if not self.offset < registry_at <= self.offset + length:
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
        if too_big and length > MIN_CHUNK_FLOOR:
            caps.learn_chunk_max(length // 2)
            log.info("%s refused a %d-byte chunk; chunks of at most %s from now on",
                     self.client.registry, length, caps.chunk_max)
            return 0
        # Refused without a word on the offset, and more is to come: under the host's minimum
        # (ECR's 5 MiB). The final piece may be small anywhere, so its refusal is the answer.
        if not final and exc.status in (400, 416) and length * 2 <= _MAX_CHUNK:
            caps.learn_chunk_min(length * 2)
            log.info("%s refused a %d-byte chunk; chunks of at least %d from now on",
                     self.client.registry, length, caps.chunk_min)
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
    """Chunked upload: PATCH pieces sized by what the host accepts, then commit. Each piece's
    body streams from the source as it arrives (reading and sending overlap as in a whole-blob
    PUT), and its bytes are held until the registry has taken them, for a resume."""
    upload = _Upload(client, session, descriptor)
    caps = client.capabilities
    wanted = max(chunk_size, session.chunk_min)
    source = _Held(stream)
    while upload.offset < descriptor.size:
        length = min(caps.chunk_size(wanted), descriptor.size - upload.offset)
        taken = await upload.send(length, source.body(length),
                                  final=upload.offset + length == descriptor.size)
        source.drop(taken)
    source.check_ended()
    await upload.commit()


class _Held:
    """The blob from the registry's offset on: the bytes sent but not yet taken, held, then
    the rest of the source."""

    def __init__(self, stream: VerifyingStream) -> None:
        self._chunks = stream.__aiter__()
        self._held = bytearray()

    async def body(self, length: int) -> AsyncIterator[bytes]:
        """The next ``length`` bytes, in writes of at most _WRITE_PIECE; read from the source
        as they are needed, and held until :meth:`drop`."""
        held = bytes(self._held[:length])
        for start in range(0, len(held), _WRITE_PIECE):
            yield held[start:start + _WRITE_PIECE]
        sent = len(held)
        while sent < length:
            piece = await anext(self._chunks)  # the stream raises if the source ends short
            self._held += piece
            piece = piece[:length - sent]  # the rest waits, held, for the next body
            sent += len(piece)
            yield piece

    def drop(self, count: int) -> None:
        """The registry has taken ``count`` more bytes: they need not be held."""
        del self._held[:count]

    def check_ended(self) -> None:
        if self._held:
            raise ProtocolError(f"{len(self._held)} bytes past the blob's end were read")


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
