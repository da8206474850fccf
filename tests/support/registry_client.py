"""The tests' one registry client: one repository of a real registry, over plain httpx.

Independent of fanout's `registry/` on purpose, so a test never checks fanout with fanout. On a
401 the challenge is answered once (Basic, or Bearer with a token from the challenge's realm) and
the request sent again; the answer is kept for later requests. Uploads are monolithic: POST, then
one streamed PUT `?digest=`. An operation that must succeed raises AssertionError naming the
request and the registry's answer. With a token registry, count token requests after your setup
pushes (or `reset_requests()` the token server).
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import re
import ssl
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, Protocol
from urllib.parse import urlsplit

import httpx

from tests.support.oci import MANIFEST_ACCEPT, fallback_tag, sha256

if TYPE_CHECKING:
    from tests.support.registries import RegistryServer

Auth = tuple[str, str] | None
Body = Callable[[], bytes | Iterator[bytes]]  # a factory, so a challenged request can be resent
_CHUNK = 1024 * 1024


class Pushable(Protocol):
    """What `blob_push` reads of a blob (a `layers.Layer` or `layers.Blob`)."""

    @property
    def digest(self) -> str: ...
    @property
    def size(self) -> int: ...
    def open(self) -> IO[bytes]: ...


class RepoClient:
    """`repo` at the registry at `url`; `auth` is (user, password) for whichever scheme it asks."""

    def __init__(self, url: str, repo: str, auth: Auth = None, *, ca_path: Path | None = None,
                 timeout: float = 120.0) -> None:
        self.url, self.repo, self._auth = url, repo, auth
        verify: Any = ssl.create_default_context(cafile=str(ca_path)) if ca_path else True
        self._client = httpx.Client(base_url=url, timeout=timeout, verify=verify)
        self._authorization: str | None = None

    @classmethod
    def at(cls, server: RegistryServer, repo: str) -> RepoClient:
        """`repo` at a test registry, with its credentials and CA."""
        auth = (server.username, server.password) if server.username and server.password else None
        return cls(server.url, repo, auth, ca_path=server.ca_path)

    def __enter__(self) -> RepoClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self._client.close()

    @property
    def host(self) -> str:
        return urlsplit(self.url).netloc

    @property
    def creds(self) -> str | None:
        """`user:password` for skopeo's `--creds`, or None."""
        return ":".join(self._auth) if self._auth else None

    def ref(self, reference: str) -> str:
        """`host/repo@digest` or `host/repo:tag`: how skopeo and fanout name it."""
        return f"{self.host}/{self.repo}{'@' if ':' in reference else ':'}{reference}"

    # -- manifests -------------------------------------------------------------------------------
    def manifest_get(self, reference: str) -> tuple[bytes, str]:
        """The raw manifest and its Content-Type."""
        response = self.request("GET", self._path("manifests", reference),
                                headers={"Accept": MANIFEST_ACCEPT})
        _expect(response, 200)
        return response.content, response.headers.get("Content-Type", "")

    def manifest_head(self, reference: str) -> httpx.Response:
        return self.request("HEAD", self._path("manifests", reference),
                            headers={"Accept": MANIFEST_ACCEPT})

    def manifest_exists(self, reference: str) -> bool:
        return self.manifest_head(reference).status_code == 200

    def manifest_put(self, reference: str, raw: bytes, media_type: str) -> str:
        """PUT by tag or digest; returns the digest, which the registry must agree with."""
        response = self.request("PUT", self._path("manifests", reference),
                                headers={"Content-Type": media_type}, body=lambda: raw)
        _expect(response, 201)
        digest = sha256(raw)
        answered = response.headers.get("Docker-Content-Digest")
        assert answered in (None, digest), f"registry says {answered}, we computed {digest}"
        return digest

    def manifest_delete(self, digest: str) -> None:
        _expect(self.request("DELETE", self._path("manifests", digest)), 202)

    def tag_list(self) -> list[str]:
        """The repository's tags; [] when it does not exist."""
        response = self.request("GET", self._path("tags", "list"))
        if response.status_code == 404:
            return []
        _expect(response, 200)
        return list(response.json().get("tags") or [])

    def referrers_index(self, subject: str) -> list[dict[str, Any]]:
        """The entries of the fallback index tagged `sha256-<hex>` for `subject`; [] if none."""
        response = self.request("GET", self._path("manifests", fallback_tag(subject)),
                                headers={"Accept": MANIFEST_ACCEPT})
        if response.status_code == 404:
            return []
        _expect(response, 200)
        entries: list[dict[str, Any]] = response.json()["manifests"]
        return entries

    # -- blobs -----------------------------------------------------------------------------------
    def blob_head(self, digest: str) -> httpx.Response:
        return self.request("HEAD", self._path("blobs", digest))

    def blob_exists(self, digest: str) -> bool:
        return self.blob_head(digest).status_code == 200

    def blob_hash(self, digest: str) -> tuple[str, int]:
        """(digest, size) of the bytes served for `digest`, streamed and hashed."""
        hasher, size = hashlib.sha256(), 0
        response = self.request("GET", self._path("blobs", digest), stream=True)
        with contextlib.closing(response):
            _expect(response, 200)
            for piece in response.iter_bytes(_CHUNK):
                hasher.update(piece)
                size += len(piece)
        return "sha256:" + hasher.hexdigest(), size

    def blob_push(self, blob: Pushable) -> None:
        """HEAD, then a monolithic upload if missing."""
        if self.blob_exists(blob.digest):
            return
        start = self.request("POST", self._path("blobs", "uploads/"))
        _expect(start, 202)
        location = start.headers["Location"]

        def stream() -> Iterator[bytes]:
            with blob.open() as fh:
                while chunk := fh.read(_CHUNK):
                    yield chunk

        put = self.request(
            "PUT", f"{location}{'&' if '?' in location else '?'}digest={blob.digest}",
            headers={"Content-Type": "application/octet-stream",
                     "Content-Length": str(blob.size)},
            body=stream)
        _expect(put, 201)

    def blob_delete(self, digest: str) -> None:
        _expect(self.request("DELETE", self._path("blobs", digest)), 202)

    # -- the wire --------------------------------------------------------------------------------
    def request(self, method: str, url: str, *, headers: Mapping[str, str] | None = None,
                body: Body | None = None, stream: bool = False) -> httpx.Response:
        """Send (a streamed GET follows redirects); on a 401 answer the challenge, send again."""
        response = self._send(method, url, headers, body, stream)
        if response.status_code == 401 and self._answer(response.headers):
            response.close()
            response = self._send(method, url, headers, body, stream)
        return response

    def _send(self, method: str, url: str, headers: Mapping[str, str] | None,
              body: Body | None, stream: bool) -> httpx.Response:
        all_headers = dict(headers or {})
        if self._authorization is not None:
            all_headers["Authorization"] = self._authorization
        request = self._client.build_request(method, url, headers=all_headers,
                                             content=body() if body is not None else None)
        # httpx drops Authorization on a redirect to another host (a storage backend).
        return self._client.send(request, stream=stream, follow_redirects=stream)

    def _answer(self, headers: httpx.Headers) -> bool:
        scheme, _, params_text = headers.get("WWW-Authenticate", "").partition(" ")
        if self._auth is None:
            return False
        if scheme.lower() == "basic":
            basic = base64.b64encode(":".join(self._auth).encode()).decode()
            self._authorization = f"Basic {basic}"
            return True
        if scheme.lower() != "bearer":
            return False
        params = dict(re.findall(r'(\w+)="([^"]*)"', params_text))
        query = {k: params[k] for k in ("service", "scope") if k in params}
        token = httpx.get(params["realm"], params=query, auth=self._auth, timeout=10.0)
        if token.status_code != 200:
            return False
        answer = token.json()
        self._authorization = "Bearer " + (answer.get("token") or answer["access_token"])
        return True

    def _path(self, kind: str, reference: str) -> str:
        return f"/v2/{self.repo}/{kind}/{reference}"


def _expect(response: httpx.Response, status: int) -> None:
    if response.status_code != status:
        response.read()
        raise AssertionError(
            f"{response.request.method} {response.request.url.path} -> {response.status_code}, "
            f"wanted {status}: {response.text[:500]}")
