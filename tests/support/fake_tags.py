"""A repository's tags and manifests as an httpx MockTransport handler, for listing, resolving
and untagging: pages with ``Link`` (relative, absolute, none), and each way a registry answers
a DELETE by tag, set per test. Faults are injected by wrapping :meth:`TagRegistry.handle`."""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field

import httpx

from tests.support.fake_registry import error

_TAGS = re.compile(r"^/v2/(?P<name>.+)/tags/list$")
_MANIFEST = re.compile(r"^/v2/(?P<name>.+)/manifests/(?P<ref>[^/]+)$")
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"


def manifest_bytes(label: str) -> bytes:
    """A small manifest whose digest differs per ``label``."""
    empty = {"mediaType": "application/vnd.oci.empty.v1+json", "size": 2,
             "digest": "sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a"}
    return json.dumps({"schemaVersion": 2, "mediaType": OCI_MANIFEST, "config": empty,
                       "layers": [empty], "annotations": {"label": label}}).encode()


def digest_of(raw: bytes) -> str:
    return "sha256:" + hashlib.sha256(raw).hexdigest()


@dataclass
class TagRegistry:
    """One repository ``name`` at ``host``.

    ``page``: the most tags one page holds, whatever ``n`` asks; ``link``: ``"relative"``,
    ``"absolute"`` or ``"none"`` (the n/last convention alone). ``by_tag``: how a DELETE by tag
    is answered: ``"ok"`` (OCI 1.1), ``"400"`` (distribution 2.8: DIGEST_INVALID), ``"405"``
    (UNSUPPORTED) or ``"404"``. ``deletes``: False answers every DELETE 405 UNSUPPORTED.
    ``head_digest``: False leaves Docker-Content-Digest out of HEAD answers.
    """

    host: str = "reg.test"
    name: str = "app"
    tags: dict[str, str] = field(default_factory=dict)
    manifests: dict[str, bytes] = field(default_factory=dict)
    page: int = 1000
    link: str = "relative"
    by_tag: str = "ok"
    deletes: bool = True
    head_digest: bool = True
    exists: bool = True
    requests: list[httpx.Request] = field(default_factory=list)

    def tag(self, tag: str, label: str) -> str:
        """Make ``tag`` name the manifest labelled ``label``; its digest."""
        raw = manifest_bytes(label)
        digest = digest_of(raw)
        self.manifests[digest] = raw
        self.tags[tag] = digest
        return digest

    def count(self, method: str, pattern: str = "") -> int:
        return sum(1 for r in self.requests
                   if r.method == method and re.search(pattern, r.url.path))

    def handle(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        path = request.url.path
        if path == "/v2/":
            return httpx.Response(200, json={})
        if (m := _TAGS.match(path)) and request.method == "GET":
            if not self.exists or m["name"] != self.name:
                return error(404, "NAME_UNKNOWN", "repository name not known to registry")
            return self._list(request)
        if m := _MANIFEST.match(path):
            if not self.exists or m["name"] != self.name:
                return error(404, "NAME_UNKNOWN", "repository name not known to registry")
            if request.method == "DELETE":
                return self._delete(m["ref"])
            return self._manifest(request, m["ref"])
        return httpx.Response(404, text="404 page not found\n")

    def _list(self, request: httpx.Request) -> httpx.Response:
        names = sorted(self.tags)
        last = request.url.params.get("last")
        if last:
            names = [t for t in names if t > last]
        asked = request.url.params.get("n")
        size = min(int(asked), self.page) if asked else self.page
        shown, rest = names[:size], names[size:]
        headers = {}
        if rest and self.link != "none":
            target = f"/v2/{self.name}/tags/list?last={shown[-1]}&n={size}"
            if self.link == "absolute":
                target = f"{request.url.scheme}://{self.host}{target}"
            headers["Link"] = f'<{target}>; rel="next"'
        return httpx.Response(200, headers=headers, json={"name": self.name, "tags": shown})

    def _manifest(self, request: httpx.Request, ref: str) -> httpx.Response:
        digest = ref if ref.startswith("sha256:") else self.tags.get(ref)
        raw = self.manifests.get(digest or "")
        if raw is None:
            return error(404, "MANIFEST_UNKNOWN", "manifest unknown")
        headers = {"Content-Type": OCI_MANIFEST, "Content-Length": str(len(raw))}
        if self.head_digest:
            headers["Docker-Content-Digest"] = digest_of(raw)
        if request.method == "HEAD":
            return httpx.Response(200, headers=headers)
        return httpx.Response(200, headers=headers, content=raw)

    def _delete(self, ref: str) -> httpx.Response:
        if not self.deletes:
            return error(405, "UNSUPPORTED", "The operation is unsupported.")
        if ref.startswith("sha256:"):
            if ref not in self.manifests:
                return error(404, "MANIFEST_UNKNOWN", "manifest unknown")
            del self.manifests[ref]
            # As distribution does: the manifest's tags go with it.
            self.tags = {t: d for t, d in self.tags.items() if d != ref}
            return httpx.Response(202)
        if self.by_tag == "400":
            return error(400, "DIGEST_INVALID", "provided digest did not match uploaded content")
        if self.by_tag == "405":
            return error(405, "UNSUPPORTED", "The operation is unsupported.")
        if self.by_tag == "404" or ref not in self.tags:
            return error(404, "MANIFEST_UNKNOWN", "manifest unknown")
        del self.tags[ref]
        return httpx.Response(202)
