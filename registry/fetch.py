"""Reads: manifests and blobs from a repository (``GET``/``HEAD``), verified against digests."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass

import httpx

from . import scopes
from .bounded import read_bounded
from .client import RegistryClient
from .errors import Denied, InvalidManifest, NotFound, ProtocolError, error_from_transport
from .manifest import (
    ACCEPT_MANIFESTS,
    MAX_MANIFEST_BYTES,
    OCI_INDEX,
    Descriptor,
    Manifest,
    parse_manifest,
)
from .spool_io import BlobBody, SourceBody, skip
from .throttle import ThrottledBody


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
    client: RegistryClient, repository: str, identifier: str, *, for_push: bool = False,
) -> ManifestInfo | None:
    """The manifest's digest and type, or None when the repository lacks it.

    ``for_push``: a check before writing, asked with push scope (the token then serves the
    writes too). A 403 there means "not known present": Artifactory answers a HEAD of a
    missing manifest with 403 (go-containerregistry's writer allows for it), and if we truly
    may not write, the write that follows says so with the registry's own words.
    """
    try:
        response = await client.request(
            "HEAD", manifest_path(repository, identifier), expected=(200,),
            headers={"Accept": ACCEPT_MANIFESTS}, what=f"check manifest {identifier}",
            scopes=scopes.push(repository) if for_push else scopes.pull(repository),
        )
    except NotFound:
        return None
    except Denied as exc:
        if for_push and exc.status == 403:
            return None
        raise
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
        headers={"Accept": ACCEPT_MANIFESTS}, what=what, scopes=scopes.pull(repository),
    ) as response:
        declared = response.headers.get("content-length")
        if declared and declared.isdigit() and int(declared) > MAX_MANIFEST_BYTES:
            raise InvalidManifest(
                f"manifest {identifier} is {declared} bytes, over the 4 MiB limit",
                method="GET", url=response.request.url,
            )
        # Refuse a hostile registry that streams without end rather than buffering it.
        body = await read_bounded(response, MAX_MANIFEST_BYTES + 1)
        if len(body) > MAX_MANIFEST_BYTES:
            raise InvalidManifest(f"manifest {identifier} is over the 4 MiB limit",
                                  method="GET", url=response.request.url)
        content_type = response.headers.get("content-type")
        if expected_digest is None:
            expected_digest = response.headers.get("docker-content-digest") or None
    return parse_manifest(bytes(body), content_type, expected_digest=expected_digest)


async def blob_head(
    client: RegistryClient, repository: str, digest: str, *, for_push: bool = False,
) -> int | None:
    """The blob's size if the repository holds it, else None (a 403 before a push, too: see
    :func:`manifest_head`)."""
    try:
        response = await client.request(
            "HEAD", blob_path(repository, digest), expected=(200,),
            what=f"check blob {digest[:19]}",
            scopes=scopes.push(repository) if for_push else scopes.pull(repository),
        )
    except NotFound:
        return None
    except Denied as exc:
        if for_push and exc.status == 403:
            return None
        raise
    length = response.headers.get("content-length")
    return int(length) if length and length.isdigit() else -1


@asynccontextmanager
async def blob_stream(
    client: RegistryClient, repository: str, digest: str,
) -> AsyncIterator[BlobBody]:
    """Open a blob for streaming (read it with ``aiter_bytes()``); redirects to storage hosts
    are followed without credentials.

    A read cut part-way goes on from where it was, with ``Range``.
    With a spool (``client.spool``), the blob comes through it: destinations on this host that
    need it at once share one read of the source (:mod:`registry.spool`).
    """
    if client.spool is None:
        async with _blob_get(client, repository, digest) as response:
            yield response
        return
    async with client.spool.open(
            digest, lambda: _blob_get(client, repository, digest)) as body:
        yield body


@asynccontextmanager
async def _blob_get(
    client: RegistryClient, repository: str, digest: str,
) -> AsyncIterator[SourceBody]:
    async with AsyncExitStack() as stack:
        response = await stack.enter_async_context(_blob_request(client, repository, digest, 0))
        body = _ResumingBody(client, repository, digest, response, stack)
        if client.throttle is not None and client.throttle.rate(client.registry, "download"):
            yield ThrottledBody(body, client.throttle, client.registry)
        else:
            yield body


@asynccontextmanager
async def _blob_request(
    client: RegistryClient, repository: str, digest: str, offset: int,
) -> AsyncIterator[httpx.Response]:
    """GET the blob (from ``offset`` on, with ``Range``, when it is not 0)."""
    headers = {"Accept-Encoding": "identity"}
    if offset:
        headers["Range"] = f"bytes={offset}-"
    async with client.stream(
        "GET", blob_path(repository, digest), expected=(200, 206) if offset else (200,),
        headers=headers, what=f"get blob {digest[:19]}", scopes=scopes.pull(repository),
    ) as response:
        if response.headers.get("content-encoding", "identity") not in ("identity", ""):
            raise ProtocolError(
                f"blob {digest[:19]} was sent with a content encoding; refusing to re-encode it",
                method="GET", url=response.request.url,
            )
        yield response


# Resumes of one blob GET cut part-way before the cut is the answer (the copy's retry then
# reads it again from the start).
_MAX_RESUMES = 5


class _ResumingBody:
    """A blob GET's body that, cut part-way (reset, timeout), goes on with a ``Range`` GET
    from the byte it had reached, rather than reading the blob again from the start."""

    def __init__(self, client: RegistryClient, repository: str, digest: str,
                 response: httpx.Response, stack: AsyncExitStack) -> None:
        self._client, self._repository, self._digest = client, repository, digest
        self._response, self._stack = response, stack
        self.headers = response.headers
        declared = response.headers.get("content-length", "")
        self._size = int(declared) if declared.isdigit() else None

    async def aiter_bytes(self) -> AsyncIterator[bytes]:
        offset, resumes, pieces = 0, 0, self._response.aiter_bytes()
        while True:
            try:
                async for piece in pieces:
                    offset += len(piece)
                    yield piece
                return
            except httpx.TransportError as exc:
                resumes += 1
                if self._size is None or offset >= self._size or resumes > _MAX_RESUMES:
                    raise error_from_transport(exc, f"get blob {self._digest[:19]}") from None
                pieces = await self._from(offset)

    async def _from(self, offset: int) -> AsyncIterator[bytes]:
        """The blob's bytes from ``offset`` on: a ``Range`` GET, or all of it less what we had."""
        response = await self._stack.enter_async_context(
            _blob_request(self._client, self._repository, self._digest, offset))
        if response.status_code == 206:
            start = response.headers.get("content-range", "").removeprefix("bytes ")
            if start.partition("-")[0] != str(offset):
                raise ProtocolError(f"blob {self._digest[:19]}: asked for bytes from {offset}, "
                                    f"was sent {start[:40]!r}", method="GET",
                                    url=response.request.url)
            return response.aiter_bytes()
        return skip(response.aiter_bytes(), offset)  # no ranges there: read past what we had


# -- listings: referrers here, tags in registry.tags; each possibly paginated through ``Link`` --

# A listing that never ends is a broken or hostile registry, not a repository worth reading.
_MAX_PAGES = 1000


def _next_page(client: RegistryClient, response: httpx.Response) -> str | None:
    """The ``Link: <url>; rel="next"`` target, resolved against the request, if any."""
    link = response.links.get("next", {}).get("url")
    return client.resolve(response, link) if link else None


async def listing_page(
    client: RegistryClient, repository: str, url: str, *, what: str, accept: str | None = None,
    params: dict[str, str] | None = None,
) -> tuple[bytes, str, str | None]:
    """One page's body (bounded like a manifest), its Content-Type and the next page's URL."""
    async with client.stream(
        "GET", url, expected=(200,), what=what, params=params,
        headers={"Accept": accept} if accept else None, scopes=scopes.pull(repository),
    ) as response:
        body = await read_bounded(response, MAX_MANIFEST_BYTES + 1)
        if len(body) > MAX_MANIFEST_BYTES:
            raise ProtocolError(f"{what}: the answer is over 4 MiB",
                                method="GET", url=response.request.url)
        return (body, response.headers.get("content-type", ""),
                _next_page(client, response))


async def referrers_get(
    client: RegistryClient, repository: str, digest: str, *, artifact_type: str | None = None,
) -> tuple[Descriptor, ...]:
    """The referrers API's descriptors for ``digest``, all pages.

    NotFound (404) means the registry has no referrers API (one that has it answers 200 with an
    empty index for any digest); InvalidManifest means the answer was not an OCI index. The
    registry may ignore ``artifact_type``: callers filter again.
    """
    url: str | None = f"/v2/{repository}/referrers/{digest}"
    params = {"artifactType": artifact_type} if artifact_type else None
    found: list[Descriptor] = []
    seen_urls: set[str] = set()
    for _ in range(_MAX_PAGES):
        if url is None or url in seen_urls:
            return tuple(found)
        seen_urls.add(url)
        body, content_type, next_url = await listing_page(
            client, repository, url, params=params, accept=OCI_INDEX,
            what=f"list referrers of {repository}@{digest[:19]}")
        index = parse_manifest(body, content_type)
        if index.media_type != OCI_INDEX:
            raise InvalidManifest(f"referrers of {digest[:19]} came as {index.media_type}, "
                                  "not an OCI index")
        found.extend(index.children)
        url, params = next_url, None
    raise ProtocolError(f"list referrers of {repository}@{digest[:19]}: more than "
                        f"{_MAX_PAGES} pages")
