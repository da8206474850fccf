"""Writes: blob mounts and uploads, manifest PUTs. Each step reads as the protocol does:
``blob_mount`` → ``upload_start`` → ``upload_stream`` or ``upload_chunks`` → commit, then
``manifest_put``.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

import httpx

from .client import RegistryClient
from .errors import (
    DigestMismatch,
    ProtocolError,
    RegistryError,
    ServerError,
    SizeMismatch,
    UnexpectedStatus,
)
from .fetch import manifest_path
from .manifest import Descriptor, Manifest, new_hasher

log = logging.getLogger("fanout.push")


@dataclass(slots=True)
class UploadSession:
    """An open upload: where to send the next bytes, and what the registry asked of chunks."""

    location: str
    chunk_min: int = 0


def _session(client: RegistryClient, response: httpx.Response, what: str) -> UploadSession:
    location = response.headers.get("location")
    if not location:
        raise ProtocolError(f"{what}: the registry answered without a Location",
                            status=response.status_code, method=response.request.method,
                            url=response.request.url)
    chunk_min = response.headers.get("oci-chunk-min-length", "")
    return UploadSession(
        location=client.resolve(response, location),
        chunk_min=int(chunk_min) if chunk_min.isdigit() else 0,
    )


async def blob_mount(
    client: RegistryClient, repository: str, digest: str, source_repository: str,
) -> UploadSession | None:
    """Ask the registry to mount ``digest`` from another of its repositories.

    None means it is mounted; an UploadSession means the registry declined (202) and opened an
    upload instead, which the caller uses rather than opening a second one.
    """
    response = await client.request(
        "POST", f"/v2/{repository}/blobs/uploads/",
        params={"mount": digest, "from": source_repository},
        expected=(201, 202), what=f"mount blob {digest[:19]} from {source_repository}",
    )
    if response.status_code == 201:
        return None
    return _session(client, response, "mount")


async def upload_start(client: RegistryClient, repository: str) -> UploadSession:
    response = await client.request(
        "POST", f"/v2/{repository}/blobs/uploads/", expected=(202,),
        headers={"Content-Length": "0"}, what="start blob upload",
    )
    return _session(client, response, "start blob upload")


async def upload_cancel(client: RegistryClient, session: UploadSession) -> None:
    """Best effort: tell the registry to drop a half-written upload."""
    with contextlib.suppress(RegistryError):
        await client.request("DELETE", session.location, expected=(204, 404, 202, 200),
                             what="cancel blob upload")


class VerifyingStream:
    """Pass a blob through, hashing and counting it; raise before the last byte leaves if the
    bytes are not the descriptor's, so the registry never commits them."""

    def __init__(self, chunks: AsyncIterator[bytes], descriptor: Descriptor,
                 on_bytes: Callable[[int], None] | None = None) -> None:
        self._chunks = chunks
        self._descriptor = descriptor
        self._hasher = new_hasher(descriptor.digest)
        self._on_bytes = on_bytes
        self.count = 0

    async def __aiter__(self) -> AsyncIterator[bytes]:
        size = self._descriptor.size
        async for chunk in self._chunks:
            self.count += len(chunk)
            if self.count > size:
                raise SizeMismatch(
                    f"blob {self._descriptor.digest[:19]} is larger than its descriptor's "
                    f"{size} bytes")
            self._hasher.update(chunk)
            if self.count == size:
                self.check_digest()
            if self._on_bytes is not None:
                self._on_bytes(len(chunk))
            yield chunk
        if self.count != size:
            raise SizeMismatch(
                f"blob {self._descriptor.digest[:19]} ended after {self.count} of {size} bytes")

    def check_digest(self) -> None:
        actual = f"{self._descriptor.digest.split(':', 1)[0]}:{self._hasher.hexdigest()}"
        if actual != self._descriptor.digest:
            raise DigestMismatch(
                f"blob content hashes to {actual}, not to its digest {self._descriptor.digest}")


def _with_digest(location: str, digest: str) -> str:
    separator = "&" if "?" in location else "?"
    return f"{location}{separator}digest={digest}"


async def upload_stream(
    client: RegistryClient, session: UploadSession, descriptor: Descriptor,
    stream: VerifyingStream,
) -> None:
    """Monolithic upload: one PUT whose body flows from the source as it arrives."""
    await client.request(
        "PUT", _with_digest(session.location, descriptor.digest), expected=(201,),
        headers={"Content-Type": "application/octet-stream",
                 "Content-Length": str(descriptor.size)},
        content=stream.__aiter__(),
        what=f"upload blob {descriptor.digest[:19]}",
    )


async def upload_chunks(
    client: RegistryClient, session: UploadSession, descriptor: Descriptor,
    stream: VerifyingStream, chunk_size: int,
) -> None:
    """Chunked upload: PATCH pieces of at least the registry's minimum, following the Range
    and Location it returns, then commit with an empty PUT."""
    size = max(chunk_size, session.chunk_min)
    buffer = bytearray()
    offset = 0
    location = session.location

    async def send(piece: bytes) -> None:
        nonlocal offset, location
        while piece:
            end = offset + len(piece) - 1
            response = await client.request(
                "PATCH", location, expected=(202,),
                headers={"Content-Type": "application/octet-stream",
                         "Content-Range": f"{offset}-{end}",
                         "Content-Length": str(len(piece))},
                content=bytes(piece), what=f"upload chunk of blob {descriptor.digest[:19]}",
            )
            location = _session(client, response, "upload chunk").location
            accepted = _range_end(response) + 1 if response.headers.get("range") else end + 1
            if accepted <= offset:
                raise ProtocolError(
                    f"registry accepted no bytes of the chunk at offset {offset}",
                    method="PATCH", url=response.request.url)
            # A registry may take less than we sent: resend from where it says it is.
            piece = piece[accepted - offset:]
            offset = accepted

    async for chunk in stream:
        buffer += chunk
        while len(buffer) >= size:
            await send(bytes(buffer[:size]))
            del buffer[:size]
    if buffer:
        await send(bytes(buffer))
    await client.request(
        "PUT", _with_digest(location, descriptor.digest), expected=(201,),
        headers={"Content-Length": "0"}, what=f"commit blob {descriptor.digest[:19]}",
    )


def _range_end(response: httpx.Response) -> int:
    value = response.headers.get("range", "")
    _, _, end = value.removeprefix("bytes=").partition("-")
    if not end.isdigit():
        raise ProtocolError(f"malformed Range header {value!r} on an upload",
                            method=response.request.method, url=response.request.url)
    return int(end)


async def manifest_put(
    client: RegistryClient, repository: str, identifier: str, manifest: Manifest,
) -> httpx.Response:
    """PUT the manifest's exact bytes with its media type, by digest or by tag."""
    what = (f"put manifest {repository}:{identifier}" if ":" not in identifier
            else f"put manifest {repository}@{identifier[:19]}")
    try:
        response = await client.request(
            "PUT", manifest_path(repository, identifier), expected=(201, 200),
            headers={"Content-Type": manifest.media_type}, content=manifest.raw, what=what,
        )
    except UnexpectedStatus as exc:
        if "DIGEST_INVALID" not in exc.codes:
            raise
        # We verified these bytes hash to their digest, so the registry is wrong about them.
        # distribution answers so when it reads a blob link another writer is rewriting (its
        # filesystem driver truncates, then writes): a race on its side, gone on a retry.
        raise ServerError(
            f"{what}: the registry rejected the digest of verified bytes (DIGEST_INVALID); "
            "retrying", status=exc.status, codes=exc.codes, method="PUT", url=exc.url,
        ) from None
    echoed = response.headers.get("docker-content-digest")
    if echoed and echoed != manifest.digest:
        raise DigestMismatch(
            f"registry stored manifest as {echoed}, not {manifest.digest}",
            method="PUT", url=response.request.url,
        )
    return response


def is_unsupported_upload(exc: RegistryError) -> bool:
    """A monolithic PUT the registry will not take whole: try chunks instead."""
    return isinstance(exc, UnexpectedStatus) and (
        exc.status in (405, 413, 416) or "UNSUPPORTED" in exc.codes)
