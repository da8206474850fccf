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

from . import scopes
from .advice import explain_refusal
from .client import RegistryClient
from .errors import (
    DigestMismatch,
    ProtocolError,
    RegistryError,
    ServerError,
    SizeMismatch,
    TagImmutable,
    UnexpectedStatus,
)
from .fetch import manifest_path
from .manifest import ACCEPT_MANIFESTS, Descriptor, Manifest, new_hasher

log = logging.getLogger("fanout.push")


@dataclass(slots=True)
class UploadSession:
    """An open upload: its repository, where to send the next bytes, what the registry asked of
    chunks (``OCI-Chunk-Min-Length``)."""

    repository: str
    location: str
    chunk_min: int = 0


def next_location(client: RegistryClient, response: httpx.Response, what: str) -> str:
    """The upload's ``Location`` after this response, resolved against it."""
    location = response.headers.get("location")
    if not location:
        raise ProtocolError(f"{what}: the registry answered without a Location",
                            status=response.status_code, method=response.request.method,
                            url=response.request.url)
    return client.resolve(response, location)


def _session(
    client: RegistryClient, repository: str, response: httpx.Response, what: str,
) -> UploadSession:
    chunk_min = response.headers.get("oci-chunk-min-length", "")
    # A hostile minimum is bounded by what any registry could mean: above 1 GiB it is noise.
    minimum = int(chunk_min) if chunk_min.isdigit() and len(chunk_min) < 11 else 0
    if 0 < minimum <= 1 << 30:
        client.capabilities.learn_chunk_min(minimum)
    return UploadSession(repository, next_location(client, response, what),
                         minimum if minimum <= 1 << 30 else 0)


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
        scopes=scopes.mount(repository, source_repository),
    )
    if response.status_code == 201:
        client.capabilities.mounts = True
        return None
    return _session(client, repository, response, "mount")


async def upload_start(client: RegistryClient, repository: str) -> UploadSession:
    try:
        response = await client.request(
            "POST", f"/v2/{repository}/blobs/uploads/", expected=(202,),
            headers={"Content-Length": "0"}, what="start blob upload",
            scopes=scopes.push(repository),
        )
    except RegistryError as exc:
        raise explain_refusal(exc, client.registry, repository) from None
    return _session(client, repository, response, "start blob upload")


async def upload_cancel(client: RegistryClient, session: UploadSession) -> None:
    """Best effort: tell the registry to drop a half-written upload."""
    # RuntimeError: the client closed under a copy being cancelled; nothing left to tidy.
    with contextlib.suppress(RegistryError, RuntimeError):
        await client.request("DELETE", session.location, expected=(204, 404, 202, 200),
                             what="cancel blob upload", scopes=scopes.push(session.repository))


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


def with_digest(location: str, digest: str) -> str:
    separator = "&" if "?" in location else "?"
    return f"{location}{separator}digest={digest}"


async def upload_stream(
    client: RegistryClient, session: UploadSession, descriptor: Descriptor,
    stream: VerifyingStream,
) -> None:
    """Monolithic upload: one PUT whose body flows from the source as it arrives."""
    await client.request(
        "PUT", with_digest(session.location, descriptor.digest), expected=(201,),
        headers={"Content-Type": "application/octet-stream",
                 "Content-Length": str(descriptor.size)},
        content=stream.__aiter__(),
        what=f"upload blob {descriptor.digest[:19]}", scopes=scopes.push(session.repository),
    )


async def manifest_put(
    client: RegistryClient, repository: str, identifier: str, manifest: Manifest,
) -> httpx.Response:
    """PUT the manifest's exact bytes with its media type, by digest or by tag.

    Under an immutable tag that already names these bytes (another writer got there first),
    the tag is as asked: the answer is then the ``HEAD`` that shows it.
    """
    what = (f"put manifest {repository}:{identifier}" if ":" not in identifier
            else f"put manifest {repository}@{identifier[:19]}")
    try:
        response = await client.request(
            "PUT", manifest_path(repository, identifier), expected=(201, 200),
            headers={"Content-Type": manifest.media_type}, content=manifest.raw, what=what,
            scopes=scopes.push(repository),
        )
    except TagImmutable as exc:
        found = await _tag_head(client, repository, identifier)
        if found is not None and found.headers.get("docker-content-digest") == manifest.digest:
            return found
        if found is not None:
            exc.current = found.headers.get("docker-content-digest") or None
        raise explain_refusal(exc, client.registry, repository) from None
    except UnexpectedStatus as exc:
        if "DIGEST_INVALID" not in exc.codes:
            raise explain_refusal(exc, client.registry, repository) from None
        # We verified these bytes hash to their digest, so the registry is wrong about them.
        # distribution answers so when it reads a blob link another writer is rewriting (its
        # filesystem driver truncates, then writes): a race on its side, gone on a retry.
        raise ServerError(
            f"{what}: the registry rejected the digest of verified bytes (DIGEST_INVALID); "
            "retrying", status=exc.status, codes=exc.codes, method="PUT", url=exc.url,
        ) from None
    except RegistryError as exc:
        raise explain_refusal(exc, client.registry, repository) from None
    echoed = response.headers.get("docker-content-digest")
    if echoed and echoed != manifest.digest:
        raise DigestMismatch(
            f"registry stored manifest as {echoed}, not {manifest.digest}",
            method="PUT", url=response.request.url,
        )
    return response


async def _tag_head(client: RegistryClient, repository: str, tag: str) -> httpx.Response | None:
    """What an immutable tag names now, for the refusal's message; None if it cannot be told."""
    with contextlib.suppress(RegistryError):
        return await client.request(
            "HEAD", manifest_path(repository, tag), expected=(200,),
            headers={"Accept": ACCEPT_MANIFESTS}, what=f"check immutable tag {tag}",
            scopes=scopes.push(repository))
    return None


# Answers to a whole-blob PUT that mean "not like that": a chunk-only registry's refusal.
_NOT_LIKE_THAT = frozenset({405, 411, 413, 501})
# Answers that may mean it, unless the codes say the bytes were wrong, not the way.
_MAYBE_NOT_LIKE_THAT = frozenset({400, 416})
_ABOUT_THE_BYTES = frozenset({"DIGEST_INVALID", "SIZE_INVALID"})


def is_unsupported_chunk(exc: RegistryError) -> bool:
    """A PATCH the registry will not take at all (not a size rule): upload whole instead."""
    return "UNSUPPORTED" in exc.codes or exc.status in (405, 501)


def is_unsupported_upload(exc: RegistryError) -> bool:
    """A monolithic PUT the registry will not take whole: try chunks instead."""
    if "UNSUPPORTED" in exc.codes or exc.status in _NOT_LIKE_THAT:
        return True
    return exc.status in _MAYBE_NOT_LIKE_THAT and not set(exc.codes) & _ABOUT_THE_BYTES
