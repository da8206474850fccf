"""A layout served in-process as a small OCI distribution endpoint, so the copy engine
(``registry/copy.py``) reads and writes it as it does a registry: no sockets, bodies streamed.

The subset the engine uses::

    GET  /v2/                                  200, no auth
    HEAD|GET /v2/<name>/manifests/<ref>        by digest or tag (a tag is a ref.name)
    PUT  /v2/<name>/manifests/<ref>            exact bytes kept; by tag adds an index.json entry
    HEAD|GET /v2/<name>/blobs/<digest>         GET streams from disk or the archive, checked:
                                               damage raises CorruptBlob naming the digest
    POST /v2/<name>/blobs/uploads/             a session (a mount request too: answered 202)
    PATCH|PUT|GET|DELETE .../uploads/<id>      chunks, the final PUT ?digest=, status, cancel
    GET  /v2/<name>/tags/list                  the repository's tags, ``n``/``last`` honoured
    GET  /v2/<name>/referrers/<digest>         manifests of the layout whose subject it is

A blob or manifest the layout lacks on GET raises BlobNotInLayout (a NotFound) with its digest,
rather than answering 404, so a reader of an incomplete layout knows which one.

Bytes are read, written, hashed and synced on threads (``registry.threads.in_thread``), a MiB or
more at a time, so a big layer never stalls the event loop, and with it the run's other
destinations. Lookups (a ``stat``, an index of the archive held in memory) stay on the loop.
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx

from ..errors import DigestMismatch, LayoutDiskError, NotALayout, RegistryError
from ..manifest import MAX_MANIFEST_BYTES, OCI_INDEX
from ..threads import in_thread
from .state import LayoutState
from .store import CHUNK, Upload, is_digest

_MANIFEST = re.compile(r"/v2/(?P<name>.+)/manifests/(?P<ref>[^/]+)")
_UPLOAD = re.compile(r"/v2/(?P<name>.+)/blobs/uploads/(?P<id>[^/]*)")
_BLOB = re.compile(r"/v2/(?P<name>.+)/blobs/(?P<digest>[^/]+)")
_TAGS = re.compile(r"/v2/(?P<name>.+)/tags/list")
_REFERRERS = re.compile(r"/v2/(?P<name>.+)/referrers/(?P<digest>[^/]+)")


class _Body(httpx.AsyncByteStream):
    def __init__(self, pieces: AsyncIterator[bytes], label: str) -> None:
        self._pieces = pieces
        self._label = label

    async def __aiter__(self) -> AsyncIterator[bytes]:
        try:
            async for piece in self._pieces:
                yield piece
        except OSError as exc:
            raise LayoutDiskError.of(self._label, "read", exc) from None

    async def aclose(self) -> None:
        closer = getattr(self._pieces, "aclose", None)
        if closer is not None:
            await closer()


def _error(status: int, code: str, message: str) -> httpx.Response:
    body = json.dumps({"errors": [{"code": code, "message": message}]}).encode()
    return httpx.Response(status, headers={"Content-Type": "application/json"}, content=body)


def _json(doc: Any, media_type: str = "application/json") -> httpx.Response:
    return httpx.Response(200, headers={"Content-Type": media_type},
                          content=json.dumps(doc, separators=(",", ":")).encode())


class LayoutTransport(httpx.AsyncBaseTransport):
    """Answers the engine's requests from a :class:`LayoutState`."""

    def __init__(self, state: LayoutState) -> None:
        self.state = state
        self._uploads: dict[str, Upload] = {}
        # Writes on a thread right now, and whether the layout still takes any (settle()).
        self._busy = 0
        self._idle: asyncio.Future[None] | None = None
        self._settled = False

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        # The disk's refusals (no space, read-only, permissions) as the copy's own error,
        # naming the layout: the engine fails this destination and goes on with the others.
        try:
            return await self._handle(request)
        except OSError as exc:
            doing = "read" if request.method in ("GET", "HEAD") else "write"
            raise LayoutDiskError.of(self.state.label, doing, exc) from None

    async def _handle(self, request: httpx.Request) -> httpx.Response:
        method, path = request.method, request.url.path
        if path in ("/v2/", "/v2"):
            return _json({})
        if m := _UPLOAD.fullmatch(path):
            return await self._upload(request, m["name"], m["id"])
        if m := _MANIFEST.fullmatch(path):
            if method == "PUT":
                return await self._put_manifest(request, m["name"], m["ref"])
            return await self._manifest(method, m["name"], m["ref"])
        if m := _BLOB.fullmatch(path):
            return self._blob(method, m["digest"])
        if (m := _TAGS.fullmatch(path)) and method == "GET":
            return self._tags(request, m["name"])
        if (m := _REFERRERS.fullmatch(path)) and method == "GET":
            kind = request.url.params.get("artifactType")
            return _json({"schemaVersion": 2, "mediaType": OCI_INDEX,
                          "manifests": self.state.referrers(m["digest"], kind)}, OCI_INDEX)
        return _error(404, "NAME_UNKNOWN", f"{method} {path} is not served by a layout")

    # -- manifests -------------------------------------------------------------------------

    async def _manifest(self, method: str, name: str, ref: str) -> httpx.Response:
        digest = self.state.resolve(name, ref)
        if digest is None:
            if method == "GET" and is_digest(ref):
                await self.state.read_manifest(ref)  # raises BlobNotInLayout, naming it
            return _error(404, "MANIFEST_UNKNOWN", f"{ref} is not in {self.state.label}")
        if is_digest(ref):
            self.state.found_by_digest(digest)
        if digest in self.state.assume_present and self.state.store.size(digest) is None:
            return httpx.Response(200, headers={"Docker-Content-Digest": digest})
        manifest = await self.state.read_manifest(digest)
        headers = {"Docker-Content-Digest": digest, "Content-Type": manifest.media_type,
                   "Content-Length": str(len(manifest.raw))}
        if method == "HEAD":
            return httpx.Response(200, headers=headers)
        return httpx.Response(200, headers=headers, content=manifest.raw)

    async def _put_manifest(self, request: httpx.Request, name: str,
                            ref: str) -> httpx.Response:
        if not self.state.writable:
            return _error(405, "UNSUPPORTED", f"{self.state.label} is open for reading")
        raw = bytearray()
        async for piece in request.stream:  # type: ignore[union-attr]
            raw += piece
            if len(raw) > MAX_MANIFEST_BYTES:
                return _error(400, "MANIFEST_INVALID", "manifest over 4 MiB")
        try:
            manifest = await self._write(self.state.put_manifest, name, ref, bytes(raw),
                                         request.headers.get("content-type"))
        except DigestMismatch as exc:
            return _error(400, "DIGEST_INVALID", str(exc))
        except RegistryError as exc:
            return _error(400, "MANIFEST_INVALID", str(exc))
        return httpx.Response(201, headers={"Docker-Content-Digest": manifest.digest,
                                            "Location": f"/v2/{name}/manifests/{ref}"})

    # -- blobs -----------------------------------------------------------------------------

    def _blob(self, method: str, digest: str) -> httpx.Response:
        if not is_digest(digest):
            return _error(400, "DIGEST_INVALID", f"{digest[:80]!r} is not a digest")
        if method == "HEAD":
            size = self.state.blob_size(digest)
            if size is None:
                return _error(404, "BLOB_UNKNOWN", f"{digest} is not in {self.state.label}")
            return httpx.Response(200, headers={"Content-Length": str(size),
                                                "Docker-Content-Digest": digest})
        if method != "GET":
            return _error(405, "UNSUPPORTED", f"{method} of a blob")
        size = self.state.store.size(digest)
        if size is None:
            raise self.state.store.missing(digest)
        pieces = self.state.store.stream(digest)
        headers = {"Content-Type": "application/octet-stream", "Docker-Content-Digest": digest,
                   "Content-Length": str(size)}
        return httpx.Response(200, headers=headers, stream=_Body(pieces, self.state.label))

    async def _upload(self, request: httpx.Request, name: str, upload_id: str) -> httpx.Response:
        if not self.state.writable:
            return _error(405, "UNSUPPORTED", f"{self.state.label} is open for reading")
        method, location = request.method, f"/v2/{name}/blobs/uploads/"
        if method == "POST" and not upload_id:
            upload = self.state.store.begin()
            self._uploads[upload.id] = upload
            await self._take(request, upload)
            return httpx.Response(202, headers={"Location": location + upload.id,
                                                "Range": "0-0", "Docker-Upload-UUID": upload.id})
        found = self._uploads.get(upload_id)
        if found is None:
            return _error(404, "BLOB_UPLOAD_UNKNOWN", f"no upload {upload_id}")
        upload = found
        here = {"Location": location + upload.id, "Docker-Upload-UUID": upload.id,
                "Range": f"0-{max(upload.size - 1, 0)}"}
        if method == "DELETE":
            self._uploads.pop(upload.id).drop()
            return httpx.Response(204)
        if method == "GET":
            return httpx.Response(204, headers=here)
        if method == "PATCH":
            start = request.headers.get("content-range", "").partition("-")[0]
            if start.isdigit() and int(start) != upload.size:
                return httpx.Response(416, headers=here)
            await self._take(request, upload)
            here["Range"] = f"0-{max(upload.size - 1, 0)}"
            return httpx.Response(202, headers=here)
        if method == "PUT":
            digest = request.url.params.get("digest", "")
            await self._take(request, upload)
            self._uploads.pop(upload.id, None)
            if not is_digest(digest):
                upload.drop()
                return _error(400, "DIGEST_INVALID", f"{digest[:80]!r} is not a digest")
            try:
                await self._write(in_thread, self.state.store.finish, upload, digest)
            except DigestMismatch as exc:
                return _error(400, "DIGEST_INVALID", str(exc))
            return httpx.Response(201, headers={"Docker-Content-Digest": digest,
                                                "Location": f"/v2/{name}/blobs/{digest}"})
        return _error(405, "UNSUPPORTED", f"{method} of an upload")

    async def _take(self, request: httpx.Request, upload: Upload) -> None:
        """Write the request's body to the upload as it arrives, never held whole: gathered
        into pieces of at least CHUNK bytes, each written and hashed on a thread."""
        pending: list[bytes] = []
        gathered = 0
        try:
            async for piece in request.stream:  # type: ignore[union-attr]
                pending.append(piece)
                gathered += len(piece)
                if gathered >= CHUNK:
                    await self._write(in_thread, upload.write_all, pending)
                    pending, gathered = [], 0
            if gathered:
                await self._write(in_thread, upload.write_all, pending)
        except BaseException:
            self._uploads.pop(upload.id, None)
            upload.drop()
            raise

    async def _write(self, write: Callable[..., Any], *args: Any) -> Any:
        """Await ``write(*args)``, a write to the layout, counted so that :meth:`settle` can
        wait for it; refused once the layout is settled."""
        if self._settled:
            raise NotALayout(f"{self.state.label} was already committed or discarded")
        self._busy += 1
        try:
            return await write(*args)
        finally:
            self._busy -= 1
            if not self._busy and self._idle is not None and not self._idle.done():
                self._idle.set_result(None)

    async def settle(self) -> None:
        """Take no more writes, wait for those on a thread now, and remove every upload still
        under way. A blob upload can outlive the copy that started it (it is shared between
        destinations and not cancelled with one): the layout is committed or its scratch
        removed only once nothing writes there any more."""
        self._settled = True
        while self._busy:
            self._idle = asyncio.get_running_loop().create_future()
            await self._idle
        for upload in self._uploads.values():
            upload.drop()
        self._uploads.clear()

    # -- listings --------------------------------------------------------------------------

    def _tags(self, request: httpx.Request, name: str) -> httpx.Response:
        tags = self.state.tags(name)
        last = request.url.params.get("last")
        if last:
            tags = [t for t in tags if t > last]
        n = request.url.params.get("n", "")
        headers = {}
        if n.isdigit() and int(n) < len(tags):
            tags = tags[:int(n)]
            headers["Link"] = f'</v2/{name}/tags/list?n={n}&last={tags[-1]}>; rel="next"'
        response = _json({"name": name, "tags": tags})
        response.headers.update(headers)
        return response
