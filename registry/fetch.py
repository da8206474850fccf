"""Reads: manifests and blobs from a repository (``GET``/``HEAD``), verified against digests."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

import httpx

from .client import RegistryClient
from .errors import InvalidManifest, NotFound, ProtocolError
from .manifest import ACCEPT_MANIFESTS, MAX_MANIFEST_BYTES, Manifest, parse_manifest


@dataclass(frozen=True, slots=True)
class ManifestInfo:
    """What a ``HEAD`` tells about a manifest without its body."""

    digest: str
    media_type: str
    size: int


def manifest_path(repository: str, identifier: str) -> str:
    return f"/v2/{repository}/manifests/{identifier}"


def blob_path(repository: str, digest: str) -> str:
    return f"/v2/{repository}/blobs/{digest}"


async def manifest_head(
    client: RegistryClient, repository: str, identifier: str,
) -> ManifestInfo | None:
    """The manifest's digest and type, or None when the repository lacks it."""
    try:
        response = await client.request(
            "HEAD", manifest_path(repository, identifier), expected=(200,),
            headers={"Accept": ACCEPT_MANIFESTS}, what=f"check manifest {identifier}",
        )
    except NotFound:
        return None
    digest = response.headers.get("docker-content-digest", "")
    media_type = response.headers.get("content-type", "").split(";")[0].strip()
    size = int(response.headers.get("content-length") or 0)
    return ManifestInfo(digest=digest, media_type=media_type, size=size)


async def manifest_get(
    client: RegistryClient, repository: str, identifier: str, *, expected_digest: str | None = None,
) -> Manifest:
    """GET a manifest's exact bytes; they must hash to ``expected_digest`` (or to an
    identifier that is a digest), and may be no larger than the 4 MiB limit."""
    if expected_digest is None and ":" in identifier:
        expected_digest = identifier
    what = f"get manifest {repository}:{identifier}" if ":" not in identifier else \
        f"get manifest {repository}@{identifier}"
    async with client.stream(
        "GET", manifest_path(repository, identifier), expected=(200,),
        headers={"Accept": ACCEPT_MANIFESTS}, what=what,
    ) as response:
        declared = response.headers.get("content-length")
        if declared and declared.isdigit() and int(declared) > MAX_MANIFEST_BYTES:
            raise InvalidManifest(
                f"manifest {identifier} is {declared} bytes, over the 4 MiB limit",
                method="GET", url=response.request.url,
            )
        body = bytearray()
        async for chunk in response.aiter_bytes():
            body += chunk
            # Refuse a hostile registry that streams without end rather than buffering it.
            if len(body) > MAX_MANIFEST_BYTES:
                raise InvalidManifest(
                    f"manifest {identifier} is over the 4 MiB limit",
                    method="GET", url=response.request.url,
                )
        content_type = response.headers.get("content-type")
        if expected_digest is None:
            expected_digest = response.headers.get("docker-content-digest") or None
    return parse_manifest(bytes(body), content_type, expected_digest=expected_digest)


async def blob_head(client: RegistryClient, repository: str, digest: str) -> int | None:
    """The blob's size if the repository holds it, else None."""
    try:
        response = await client.request(
            "HEAD", blob_path(repository, digest), expected=(200,),
            what=f"check blob {digest[:19]}",
        )
    except NotFound:
        return None
    length = response.headers.get("content-length")
    return int(length) if length and length.isdigit() else -1


@asynccontextmanager
async def blob_stream(
    client: RegistryClient, repository: str, digest: str,
) -> AsyncIterator[httpx.Response]:
    """Open a blob for streaming; redirects to storage hosts are followed without credentials."""
    async with client.stream(
        "GET", blob_path(repository, digest), expected=(200,),
        headers={"Accept-Encoding": "identity"}, what=f"get blob {digest[:19]}",
    ) as response:
        if response.headers.get("content-encoding", "identity") not in ("identity", ""):
            raise ProtocolError(
                f"blob {digest[:19]} was sent with a content encoding; refusing to re-encode it",
                method="GET", url=response.request.url,
            )
        yield response
