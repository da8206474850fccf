"""An in-memory OCI registry as an httpx MockTransport handler, for what a real registry will
not do on demand: faults are injected by wrapping :meth:`FakeRegistry.handle`."""

from __future__ import annotations

import hashlib
import json
import re
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field

import httpx

from registry.options import TransportOptions

_MANIFEST = re.compile(r"^/v2/(?P<name>.+)/manifests/(?P<ref>[^/]+)$")
_BLOB = re.compile(r"^/v2/(?P<name>.+)/blobs/(?P<digest>sha256:[0-9a-f]{64})$")
_UPLOADS = re.compile(r"^/v2/(?P<name>.+)/blobs/uploads/$")
_UPLOAD = re.compile(r"^/v2/(?P<name>.+)/blobs/uploads/(?P<id>[0-9a-f-]+)$")


def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def error(status: int, code: str, message: str = "") -> httpx.Response:
    body = {"errors": [{"code": code, "message": message or code.lower()}]}
    return httpx.Response(status, json=body)


@dataclass
class FakeRegistry:
    """Repositories of manifests and blobs; counts every request it serves."""

    host: str = "fake.example"
    blobs: dict[str, dict[str, bytes]] = field(default_factory=dict)
    manifests: dict[str, dict[str, tuple[bytes, str]]] = field(default_factory=dict)
    uploads: dict[str, tuple[str, bytearray]] = field(default_factory=dict)
    requests: list[httpx.Request] = field(default_factory=list)
    mount_enabled: bool = True
    chunk_min: int = 0
    monolithic_put: bool = True  # False: a PUT with a body is refused (413), as some do

    # -- seeding ------------------------------------------------------------------------
    def put_blob(self, repo: str, data: bytes) -> str:
        digest = sha256(data)
        self.blobs.setdefault(repo, {})[digest] = data
        return digest

    def put_manifest(self, repo: str, raw: bytes, media_type: str, tag: str | None = None) -> str:
        digest = sha256(raw)
        store = self.manifests.setdefault(repo, {})
        store[digest] = (raw, media_type)
        if tag:
            store[tag] = (raw, media_type)
        return digest

    def push_image(self, repo: str, layers: list[bytes], tag: str | None = None) -> str:
        config = json.dumps({"architecture": "amd64", "os": "linux",
                             "rootfs": {"type": "layers", "diff_ids": []}}).encode()
        config_digest = self.put_blob(repo, config)
        manifest = {
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                       "digest": config_digest, "size": len(config)},
            "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
                        "digest": self.put_blob(repo, layer), "size": len(layer)}
                       for layer in layers],
        }
        raw = json.dumps(manifest).encode()
        return self.put_manifest(repo, raw, manifest["mediaType"], tag)  # type: ignore[arg-type]

    def has_blob(self, repo: str, digest: str) -> bool:
        return digest in self.blobs.get(repo, {})

    def count(self, method: str, pattern: str = "") -> int:
        return sum(1 for r in self.requests
                   if r.method == method and re.search(pattern, r.url.path))

    # -- serving ------------------------------------------------------------------------
    def handle(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        path = request.url.path
        if path == "/v2/":
            return httpx.Response(200, json={})
        if m := _MANIFEST.match(path):
            return self._manifest(request, m["name"], m["ref"])
        if m := _BLOB.match(path):
            return self._blob(request, m["name"], m["digest"])
        if m := _UPLOADS.match(path):
            return self._start(request, m["name"])
        if m := _UPLOAD.match(path):
            return self._upload(request, m["name"], m["id"])
        return error(404, "NOT_FOUND", path)

    def _manifest(self, request: httpx.Request, name: str, ref: str) -> httpx.Response:
        store = self.manifests.setdefault(name, {})
        if request.method in ("GET", "HEAD"):
            if ref not in store:
                return error(404, "MANIFEST_UNKNOWN")
            raw, media_type = store[ref]
            headers = {"Content-Type": media_type, "Docker-Content-Digest": sha256(raw),
                       "Content-Length": str(len(raw))}
            return httpx.Response(200, headers=headers,
                                  content=raw if request.method == "GET" else b"")
        if request.method == "PUT":
            raw = request.read()
            document = json.loads(raw)
            for blob in [document.get("config"), *document.get("layers", [])]:
                # As distribution: foreign layers live at their urls, not here.
                if blob and "foreign" in blob.get("mediaType", ""):
                    continue
                if blob and blob["digest"] not in self.blobs.get(name, {}):
                    return error(400, "MANIFEST_BLOB_UNKNOWN", blob["digest"])
            for child in document.get("manifests", []):
                if child["digest"] not in store:
                    return error(400, "MANIFEST_UNKNOWN", child["digest"])
            digest = self.put_manifest(name, raw, request.headers["content-type"])
            if not ref.startswith("sha256:"):
                store[ref] = store[digest]
            return httpx.Response(201, headers={"Docker-Content-Digest": digest,
                                                "Location": f"/v2/{name}/manifests/{digest}"})
        return error(405, "UNSUPPORTED")

    def _blob(self, request: httpx.Request, name: str, digest: str) -> httpx.Response:
        data = self.blobs.get(name, {}).get(digest)
        if data is None:
            return error(404, "BLOB_UNKNOWN")
        headers = {"Content-Length": str(len(data)), "Docker-Content-Digest": digest,
                   "Content-Type": "application/octet-stream"}
        return httpx.Response(200, headers=headers,
                              content=data if request.method == "GET" else b"")

    def _start(self, request: httpx.Request, name: str) -> httpx.Response:
        mount, origin = request.url.params.get("mount"), request.url.params.get("from")
        if mount and origin and self.mount_enabled and mount in self.blobs.get(origin, {}):
            self.blobs.setdefault(name, {})[mount] = self.blobs[origin][mount]
            return httpx.Response(201, headers={"Location": f"/v2/{name}/blobs/{mount}",
                                                "Docker-Content-Digest": mount})
        upload = str(uuid.uuid4())
        self.uploads[upload] = (name, bytearray())
        headers = {"Location": f"/v2/{name}/blobs/uploads/{upload}", "Range": "0-0"}
        if self.chunk_min:
            headers["OCI-Chunk-Min-Length"] = str(self.chunk_min)
        return httpx.Response(202, headers=headers)

    def _upload(self, request: httpx.Request, name: str, upload: str) -> httpx.Response:
        if upload not in self.uploads:
            return error(404, "BLOB_UPLOAD_UNKNOWN")
        _, buffer = self.uploads[upload]
        if request.method == "DELETE":
            del self.uploads[upload]
            return httpx.Response(204)
        body = request.read()
        if request.method == "GET":  # the upload's status
            return httpx.Response(204, headers={
                "Location": f"/v2/{name}/blobs/uploads/{upload}",
                "Range": f"0-{max(len(buffer) - 1, 0)}"})
        if request.method == "PATCH":
            if self.chunk_min and 0 < len(body) < self.chunk_min and buffer:
                return error(416, "SIZE_INVALID", "chunk below the minimum")
            buffer += body
            return httpx.Response(202, headers={
                "Location": f"/v2/{name}/blobs/uploads/{upload}",
                "Range": f"0-{len(buffer) - 1}"})
        if request.method == "PUT":
            if body and not self.monolithic_put:
                return error(413, "SIZE_INVALID", "monolithic upload refused")
            buffer += body
            digest = request.url.params.get("digest", "")
            if sha256(bytes(buffer)) != digest:
                del self.uploads[upload]
                return error(400, "DIGEST_INVALID")
            self.blobs.setdefault(name, {})[digest] = bytes(buffer)
            del self.uploads[upload]
            return httpx.Response(201, headers={"Location": f"/v2/{name}/blobs/{digest}",
                                                "Docker-Content-Digest": digest})
        return error(405, "UNSUPPORTED")


Handler = Callable[[httpx.Request], httpx.Response]


def route(registries: dict[str, Handler]) -> Handler:
    """One MockTransport handler serving several hosts (by host:port)."""

    def handler(request: httpx.Request) -> httpx.Response:
        host = request.url.host + (f":{request.url.port}" if request.url.port else "")
        serve = registries.get(host) or registries.get(request.url.host)
        if serve is None:
            raise httpx.ConnectError(f"no fake registry at {host}", request=request)
        return serve(request)

    return handler


class PlainHTTP(httpx.AsyncBaseTransport):
    """Hosts that speak plain HTTP only: a TLS attempt fails as a real handshake would, before
    the handler sees it (the engine tries HTTPS first even where plain HTTP is allowed)."""

    def __init__(self, inner: httpx.AsyncBaseTransport, plain: frozenset[str]) -> None:
        self._inner = inner
        self._plain = plain

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        host = request.url.host + (f":{request.url.port}" if request.url.port else "")
        if request.url.scheme == "https" and (host in self._plain
                                              or request.url.host in self._plain):
            raise httpx.ConnectError("[SSL: WRONG_VERSION_NUMBER] wrong version number",
                                     request=request)
        return await self._inner.handle_async_request(request)

    async def aclose(self) -> None:
        await self._inner.aclose()


def plain_http(handler: Handler, options: TransportOptions) -> PlainHTTP:
    """A MockTransport for ``handler`` whose insecure hosts speak plain HTTP only."""
    return PlainHTTP(httpx.MockTransport(handler), options.insecure_registries)
