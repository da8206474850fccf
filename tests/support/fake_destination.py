"""A destination registry for preflight tests (httpx.MockTransport handler): Basic or Bearer auth
(with a token server at auth.test), and each answer the preflight asks for set per test."""

from __future__ import annotations

import base64
import re
from dataclasses import dataclass, field

import httpx

OCI_INDEX = "application/vnd.oci.image.index.v1+json"
PASSWORD = "pw-Zq8-never-shown"
TOKEN = "tok-Ab3-never-shown"
ECR = "123456789012.dkr.ecr.eu-west-1.amazonaws.com"

_UPLOADS = re.compile(r"^/v2/(?P<name>.+)/blobs/uploads/$")
_UPLOAD = re.compile(r"^/v2/(?P<name>.+)/blobs/uploads/(?P<id>[0-9a-z-]+)$")
_TAGS = re.compile(r"^/v2/(?P<name>.+)/tags/list$")
_MANIFEST = re.compile(r"^/v2/(?P<name>.+)/manifests/(?P<ref>[^/]+)$")
_REFERRERS = re.compile(r"^/v2/(?P<name>.+)/referrers/(?P<digest>sha256:[0-9a-f]{64})$")


def error(status: int, code: str, message: str = "") -> httpx.Response:
    return httpx.Response(status, json={"errors": [{"code": code, "message": message or code}]})


@dataclass
class Destination:
    """One destination registry; each answer the preflight asks for can be set."""

    host: str = "reg.test"
    auth: str = "none"  # "none" | "basic" | "bearer"
    exists: bool = False
    push: str = "ok"  # "ok" | "denied" | "unauthorized" | "name_unknown"
    referrers: str = "index"  # "index" | "404" | "html"
    chunk_min: int | None = None
    deletes: str = "ok"  # "ok" | "disabled" (405 UNSUPPORTED) | "denied" (403 DENIED)
    ping_status: int | None = None  # answer /v2/ with this instead
    requests: list[httpx.Request] = field(default_factory=list)

    @property
    def challenge(self) -> str:
        if self.auth == "basic":
            return 'Basic realm="reg"'
        return f'Bearer realm="https://auth.test/token",service="{self.host}"'

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        if request.url.host == "auth.test":
            return self._token(request)
        path = request.url.path
        if path == "/v2/":
            if self.ping_status is not None:
                return httpx.Response(self.ping_status)
            if self.auth == "none":
                return httpx.Response(200, json={})
            return httpx.Response(401, headers={"WWW-Authenticate": self.challenge})
        if not self._authorized(request):
            return httpx.Response(401, headers={"WWW-Authenticate": self.challenge},
                                  json={"errors": [{"code": "UNAUTHORIZED",
                                                    "message": "authentication required"}]})
        if m := _MANIFEST.match(path):
            if request.method == "DELETE" and self.deletes == "disabled":
                return error(405, "UNSUPPORTED", "The operation is unsupported.")
            if request.method == "DELETE" and self.deletes == "denied":
                return error(403, "DENIED", "requested access to the resource is denied")
            return error(404, "MANIFEST_UNKNOWN", "manifest unknown")
        if m := _TAGS.match(path):
            if not self.exists:
                return error(404, "NAME_UNKNOWN", "repository name not known to registry")
            return httpx.Response(200, json={"name": m["name"], "tags": ["v1"]})
        if m := _UPLOADS.match(path):
            return self._upload(m["name"])
        if _UPLOAD.match(path) and request.method == "DELETE":
            return httpx.Response(204)
        if m := _REFERRERS.match(path):
            if self.referrers == "404":
                return httpx.Response(404, text="404 page not found\n")
            if self.referrers == "html":
                return httpx.Response(200, headers={"Content-Type": "text/html"},
                                      text="<html><body>Sign in</body></html>")
            return httpx.Response(200, headers={"Content-Type": OCI_INDEX}, json={
                "schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": []})
        return httpx.Response(404, text="404 page not found\n")

    def _authorized(self, request: httpx.Request) -> bool:
        header = request.headers.get("authorization", "")
        if self.auth == "basic":
            return header == "Basic " + base64.b64encode(f"ci:{PASSWORD}".encode()).decode()
        if self.auth == "bearer":
            return header == f"Bearer {TOKEN}"
        return True

    def _token(self, request: httpx.Request) -> httpx.Response:
        wanted = "Basic " + base64.b64encode(f"ci:{PASSWORD}".encode()).decode()
        if request.headers.get("authorization") != wanted:
            return httpx.Response(401, json={"details": "incorrect username or password"})
        return httpx.Response(200, json={"token": TOKEN, "expires_in": 300})

    def _upload(self, name: str) -> httpx.Response:
        if self.push == "denied":
            return error(403, "DENIED", "requested access to the resource is denied")
        if self.push == "unauthorized":
            return httpx.Response(401, headers={"WWW-Authenticate": self.challenge})
        if self.push == "name_unknown":
            return error(404, "NAME_UNKNOWN",
                          f"The repository with name '{name}' does not exist in the registry "
                          "with id '123456789012'")
        headers = {"Location": f"/v2/{name}/blobs/uploads/0f1e2d3c-upload",
                   "Docker-Upload-UUID": "0f1e2d3c-upload"}
        if self.chunk_min is not None:
            headers["OCI-Chunk-Min-Length"] = str(self.chunk_min)
        return httpx.Response(202, headers=headers)

    def methods(self) -> list[str]:
        return [f"{r.method} {r.url.path}" for r in self.requests if r.url.host == self.host]
