"""Build test images and push them with plain httpx: independent of fanout's own client.

Layers are real gzip'd (or plain) tars holding one file of random bytes, so every image is new.
Big layers are streamed through temporary files; memory stays small even for a 1 GiB layer.
Uploads are monolithic (POST, then PUT ?digest=); manifests are PUT with their media type.
"""

from __future__ import annotations

import base64
import contextlib
import gzip
import hashlib
import io
import json
import os
import re
import ssl
import tarfile
import tempfile
import weakref
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import httpx

from tests.support.registries import RegistryServer

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"
OCI_LAYER_TAR = "application/vnd.oci.image.layer.v1.tar"
OCI_EMPTY = "application/vnd.oci.empty.v1+json"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"
DOCKER_LAYER_GZIP = "application/vnd.docker.image.rootfs.diff.tar.gzip"
EMPTY_JSON = b"{}"
EMPTY_JSON_DIGEST = "sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a"
MANIFEST_ACCEPT = ", ".join([OCI_MANIFEST, OCI_INDEX, DOCKER_MANIFEST, DOCKER_LIST])
DEFAULT_LAYER_SIZE = 64 * 1024
DEFAULT_PLATFORMS: tuple[tuple[str, ...], ...] = (
    ("linux", "amd64"),
    ("linux", "arm64"),
    ("linux", "arm", "v7"),
)
# Layers up to this size are kept in memory; bigger ones live in a temporary file.
_IN_MEMORY_MAX = 16 * 1024 * 1024
_CHUNK = 1024 * 1024

Platform = tuple[str, ...] | str  # ("linux", "arm", "v7") or "linux/arm/v7"


# -- results ------------------------------------------------------------------------------------
@dataclass
class PushedImage:
    """What a builder pushed: enough for a test to check a copy blob by blob."""

    registry_host: str
    repository: str
    tag: str | None
    digest: str
    media_type: str
    manifest: bytes = field(repr=False)
    blobs: list[str]  # every blob digest, children's included, no duplicates
    manifests: list[str]  # child manifest digests (empty for a single manifest)
    total_blob_bytes: int  # sum of distinct blob sizes
    platforms: list[str]  # "linux/amd64", "linux/arm/v7", ...
    children: list[PushedImage] = field(default_factory=list, repr=False)
    artifact_type: str | None = None

    @property
    def reference(self) -> str:
        """`host/repo@sha256:…`: the pinned reference."""
        return f"{self.registry_host}/{self.repository}@{self.digest}"

    @property
    def tagged_reference(self) -> str | None:
        return f"{self.registry_host}/{self.repository}:{self.tag}" if self.tag else None

    @property
    def size(self) -> int:
        return len(self.manifest)

    def descriptor(self) -> dict[str, Any]:
        """The OCI descriptor of this manifest (for a `subject` or an index entry)."""
        return {"mediaType": self.media_type, "digest": self.digest, "size": self.size}


@dataclass
class Layer:
    """A built layer blob; reusable across images and repositories while the object lives."""

    digest: str
    diff_id: str  # sha256 of the uncompressed tar
    size: int
    media_type: str
    _data: bytes | None = field(default=None, repr=False)
    _path: Path | None = field(default=None, repr=False)

    def open(self) -> IO[bytes]:
        if self._data is not None:
            return io.BytesIO(self._data)
        assert self._path is not None
        return self._path.open("rb")

    def descriptor(self) -> dict[str, Any]:
        return {"mediaType": self.media_type, "digest": self.digest, "size": self.size}


@dataclass(frozen=True)
class _Blob:
    digest: str
    size: int
    media_type: str
    open: Callable[[], IO[bytes]]

    def descriptor(self) -> dict[str, Any]:
        return {"mediaType": self.media_type, "digest": self.digest, "size": self.size}


def _bytes_blob(data: bytes, media_type: str) -> _Blob:
    return _Blob(_sha256(data), len(data), media_type, lambda: io.BytesIO(data))


# -- layers -------------------------------------------------------------------------------------
def make_layer(
    size: int = DEFAULT_LAYER_SIZE, *, compress: bool = True, docker: bool = False
) -> Layer:
    """A tar with one file of `size` random bytes; gzip level 1 unless `compress=False`."""
    if docker and not compress:
        raise ValueError("Docker schema 2 layers here are always gzip'd")
    media_type = (DOCKER_LAYER_GZIP if docker else OCI_LAYER_GZIP) if compress else OCI_LAYER_TAR
    big = size > _IN_MEMORY_MAX
    if big:
        fd, name = tempfile.mkstemp(
            prefix="fanout-layer-", suffix=".tar.gz" if compress else ".tar"
        )
        out: IO[bytes] = os.fdopen(fd, "wb")
    else:
        out = io.BytesIO()
    blob_hash = _HashingWriter(out)
    tar_hash: _HashingWriter
    gz: gzip.GzipFile | None = None
    if compress:
        gz = gzip.GzipFile(fileobj=blob_hash, mode="wb", compresslevel=1, mtime=0)
        tar_hash = _HashingWriter(gz)  # type: ignore[arg-type]
    else:
        tar_hash = blob_hash
    with tarfile.open(fileobj=tar_hash, mode="w|", format=tarfile.PAX_FORMAT) as tar:  # type: ignore[call-overload]
        info = tarfile.TarInfo(f"fanout/random-{os.urandom(8).hex()}.bin")
        info.size = size
        info.mode = 0o644
        info.mtime = 0
        tar.addfile(info, _RandomReader(size))
    if gz is not None:
        gz.close()
    layer = Layer(
        digest=blob_hash.digest(),
        diff_id=tar_hash.digest(),
        size=blob_hash.count,
        media_type=media_type,
    )
    if big:
        out.close()
        layer._path = Path(name)
        # The file goes when the Layer does, so a test cannot leak a 1 GiB temp file.
        weakref.finalize(layer, _unlink_quietly, name)
    else:
        assert isinstance(out, io.BytesIO)
        layer._data = out.getvalue()
    return layer


class _RandomReader:
    def __init__(self, size: int) -> None:
        self._left = size

    def read(self, n: int = -1) -> bytes:
        n = min(self._left, _CHUNK) if n < 0 else min(n, self._left)
        self._left -= n
        return os.urandom(n)


class _HashingWriter:
    def __init__(self, target: IO[bytes]) -> None:
        self._target = target
        self._hash = hashlib.sha256()
        self.count = 0

    def write(self, data: bytes) -> int:
        self._hash.update(data)
        self.count += len(data)
        self._target.write(data)
        return len(data)

    def flush(self) -> None:
        self._target.flush()

    def digest(self) -> str:
        return "sha256:" + self._hash.hexdigest()


def _unlink_quietly(name: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(name)


# -- the pusher ---------------------------------------------------------------------------------
class RegistryHTTP:
    """A minimal sync client for one test registry: Basic or Bearer after a 401, nothing more.

    Talks to the token server too when the registry uses token auth, so count token requests
    after your setup pushes (or `reset_requests()`).
    """

    def __init__(self, registry: RegistryServer, *, timeout: float = 60.0) -> None:
        self.registry = registry
        verify = (ssl.create_default_context(cafile=str(registry.ca_path)) if registry.ca_path
                  else True)
        self._client = httpx.Client(base_url=registry.url, timeout=timeout, verify=verify)
        self._authorization: str | None = None

    def __enter__(self) -> RegistryHTTP:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._client.close()

    def request(
        self,
        method: str,
        url: str,
        *,
        headers: Mapping[str, str] | None = None,
        body: Callable[[], bytes | Iterator[bytes]] | None = None,
    ) -> httpx.Response:
        """Send; on a 401 answer the challenge once and resend (`body` is a factory for that)."""
        response = self._send(method, url, headers, body)
        if response.status_code == 401 and self._answer_challenge(response):
            response = self._send(method, url, headers, body)
        return response

    def _send(
        self,
        method: str,
        url: str,
        headers: Mapping[str, str] | None,
        body: Callable[[], bytes | Iterator[bytes]] | None,
    ) -> httpx.Response:
        all_headers = dict(headers or {})
        if self._authorization is not None:
            all_headers["Authorization"] = self._authorization
        content = body() if body is not None else None
        return self._client.request(method, url, headers=all_headers, content=content)

    def _answer_challenge(self, response: httpx.Response) -> bool:
        challenge = response.headers.get("WWW-Authenticate", "")
        scheme, _, params_text = challenge.partition(" ")
        username, password = self.registry.username, self.registry.password
        if username is None or password is None:
            return False
        if scheme.lower() == "basic":
            basic = base64.b64encode(f"{username}:{password}".encode()).decode()
            self._authorization = f"Basic {basic}"
            return True
        if scheme.lower() != "bearer":
            return False
        params = dict(re.findall(r'(\w+)="([^"]*)"', params_text))
        query: dict[str, str] = {}
        if "service" in params:
            query["service"] = params["service"]
        if "scope" in params:
            query["scope"] = params["scope"]
        token_response = httpx.get(
            params["realm"], params=query, auth=(username, password), timeout=10.0
        )
        if token_response.status_code != 200:
            return False
        body = token_response.json()
        self._authorization = "Bearer " + (body.get("token") or body["access_token"])
        return True

    # -- operations ----------------------------------------------------------------------------
    def blob_exists(self, repo: str, digest: str) -> bool:
        response = self.request("HEAD", f"/v2/{repo}/blobs/{digest}")
        return response.status_code == 200

    def push_blob(self, repo: str, blob: _Blob | Layer) -> None:
        """HEAD, then a monolithic upload if missing."""
        if self.blob_exists(repo, blob.digest):
            return
        start = self.request("POST", f"/v2/{repo}/blobs/uploads/")
        _expect(start, 202)
        location = start.headers["Location"]
        separator = "&" if "?" in location else "?"

        def stream() -> Iterator[bytes]:
            with blob.open() as fh:
                while chunk := fh.read(_CHUNK):
                    yield chunk

        put = self.request(
            "PUT",
            f"{location}{separator}digest={blob.digest}",
            headers={
                "Content-Type": "application/octet-stream",
                "Content-Length": str(blob.size),
            },
            body=stream,
        )
        _expect(put, 201)

    def push_manifest(self, repo: str, reference: str, manifest: bytes, media_type: str) -> str:
        response = self.request(
            "PUT",
            f"/v2/{repo}/manifests/{reference}",
            headers={"Content-Type": media_type},
            body=lambda: manifest,
        )
        _expect(response, 201)
        digest = _sha256(manifest)
        answered = response.headers.get("Docker-Content-Digest")
        if answered is not None and answered != digest:
            raise AssertionError(f"registry says {answered}, we computed {digest}")
        return digest

    def get_manifest(self, repo: str, reference: str) -> tuple[bytes, str]:
        response = self.request(
            "GET", f"/v2/{repo}/manifests/{reference}", headers={"Accept": MANIFEST_ACCEPT}
        )
        _expect(response, 200)
        return response.content, response.headers.get("Content-Type", "")

    def manifest_exists(self, repo: str, reference: str) -> bool:
        response = self.request(
            "HEAD", f"/v2/{repo}/manifests/{reference}", headers={"Accept": MANIFEST_ACCEPT}
        )
        return response.status_code == 200

    def list_tags(self, repo: str) -> list[str]:
        response = self.request("GET", f"/v2/{repo}/tags/list")
        if response.status_code == 404:
            return []
        _expect(response, 200)
        return list(response.json().get("tags") or [])

    def delete_manifest(self, repo: str, digest: str) -> None:
        _expect(self.request("DELETE", f"/v2/{repo}/manifests/{digest}"), 202)

    def delete_blob(self, repo: str, digest: str) -> None:
        _expect(self.request("DELETE", f"/v2/{repo}/blobs/{digest}"), 202)


def _expect(response: httpx.Response, status: int) -> None:
    if response.status_code != status:
        raise AssertionError(
            f"{response.request.method} {response.request.url.path} -> {response.status_code}, "
            f"wanted {status}: {response.text[:500]}"
        )


# -- builders -----------------------------------------------------------------------------------
def push_oci_image(
    registry: RegistryServer,
    repo: str,
    tag: str | None = None,
    *,
    layers: int = 2,
    layer_size: int = DEFAULT_LAYER_SIZE,
    compress: bool = True,
    platform: Platform = ("linux", "amd64"),
    base_layers: Sequence[Layer] | None = None,
) -> PushedImage:
    """A single-platform OCI image: `base_layers` first, then `layers` new random layers."""
    with RegistryHTTP(registry) as http:
        return _push_image(
            http, repo, tag, layers, layer_size, compress, platform, base_layers, docker=False
        )


def push_docker_image(
    registry: RegistryServer,
    repo: str,
    tag: str | None = None,
    *,
    layers: int = 2,
    layer_size: int = DEFAULT_LAYER_SIZE,
    platform: Platform = ("linux", "amd64"),
    base_layers: Sequence[Layer] | None = None,
) -> PushedImage:
    """A single-platform Docker schema 2 image."""
    with RegistryHTTP(registry) as http:
        return _push_image(
            http, repo, tag, layers, layer_size, True, platform, base_layers, docker=True
        )


def push_oci_index(
    registry: RegistryServer,
    repo: str,
    tag: str | None = None,
    *,
    platforms: Sequence[Platform] = DEFAULT_PLATFORMS,
    layer_size: int = DEFAULT_LAYER_SIZE,
) -> PushedImage:
    """One image per platform, sharing one base layer plus one own layer each, then an OCI index."""
    return _push_list(registry, repo, tag, platforms, layer_size, docker=False)


def push_docker_manifest_list(
    registry: RegistryServer,
    repo: str,
    tag: str | None = None,
    *,
    platforms: Sequence[Platform] = DEFAULT_PLATFORMS,
    layer_size: int = DEFAULT_LAYER_SIZE,
) -> PushedImage:
    """As `push_oci_index`, with Docker schema 2 media types throughout."""
    return _push_list(registry, repo, tag, platforms, layer_size, docker=True)


def push_artifact(
    registry: RegistryServer,
    repo: str,
    subject: PushedImage | Mapping[str, Any],
    *,
    artifact_type: str = "application/vnd.example.sbom.v1+json",
    blob_media_type: str = "application/json",
    tag: str | None = None,
) -> PushedImage:
    """An OCI artifact manifest (empty config, one blob) whose `subject` is `subject`."""
    subject_descriptor = subject.descriptor() if isinstance(subject, PushedImage) else dict(subject)
    payload = json.dumps({"sbom": os.urandom(16).hex(), "subject": subject_descriptor["digest"]})
    blob = _bytes_blob(payload.encode(), blob_media_type)
    empty = _bytes_blob(EMPTY_JSON, OCI_EMPTY)
    assert empty.digest == EMPTY_JSON_DIGEST
    manifest = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "artifactType": artifact_type,
        "config": {**empty.descriptor(), "data": "e30="},
        "layers": [blob.descriptor()],
        "subject": {k: subject_descriptor[k] for k in ("mediaType", "digest", "size")},
        "annotations": {"org.opencontainers.image.created": "2024-01-01T00:00:00Z"},
    }
    raw = _canonical(manifest)
    with RegistryHTTP(registry) as http:
        http.push_blob(repo, empty)
        http.push_blob(repo, blob)
        digest = http.push_manifest(repo, _sha256(raw), raw, OCI_MANIFEST)
        if tag is not None:
            http.push_manifest(repo, tag, raw, OCI_MANIFEST)
    return PushedImage(
        registry_host=registry.host,
        repository=repo,
        tag=tag,
        digest=digest,
        media_type=OCI_MANIFEST,
        manifest=raw,
        blobs=[empty.digest, blob.digest],
        manifests=[],
        total_blob_bytes=empty.size + blob.size,
        platforms=[],
        artifact_type=artifact_type,
    )


def _push_image(
    http: RegistryHTTP,
    repo: str,
    tag: str | None,
    layers: int,
    layer_size: int,
    compress: bool,
    platform: Platform,
    base_layers: Sequence[Layer] | None,
    *,
    docker: bool,
) -> PushedImage:
    parts = _platform_parts(platform)
    all_layers = list(base_layers or []) + [
        make_layer(layer_size, compress=compress, docker=docker) for _ in range(layers)
    ]
    config = _bytes_blob(_image_config(parts, all_layers), DOCKER_CONFIG if docker else OCI_CONFIG)
    for layer in all_layers:
        http.push_blob(repo, layer)
    http.push_blob(repo, config)
    media_type = DOCKER_MANIFEST if docker else OCI_MANIFEST
    manifest = {
        "schemaVersion": 2,
        "mediaType": media_type,
        "config": config.descriptor(),
        "layers": [layer.descriptor() for layer in all_layers],
    }
    raw = _canonical(manifest)
    digest = http.push_manifest(repo, _sha256(raw), raw, media_type)
    if tag is not None:
        http.push_manifest(repo, tag, raw, media_type)
    blobs = _unique([config.digest] + [layer.digest for layer in all_layers])
    sizes = {config.digest: config.size} | {layer.digest: layer.size for layer in all_layers}
    return PushedImage(
        registry_host=http.registry.host,
        repository=repo,
        tag=tag,
        digest=digest,
        media_type=media_type,
        manifest=raw,
        blobs=blobs,
        manifests=[],
        total_blob_bytes=sum(sizes.values()),
        platforms=["/".join(parts)],
    )


def _push_list(
    registry: RegistryServer,
    repo: str,
    tag: str | None,
    platforms: Sequence[Platform],
    layer_size: int,
    *,
    docker: bool,
) -> PushedImage:
    base = make_layer(layer_size, docker=docker)
    with RegistryHTTP(registry) as http:
        children = [
            _push_image(http, repo, None, 1, layer_size, True, p, [base], docker=docker)
            for p in platforms
        ]
        media_type = DOCKER_LIST if docker else OCI_INDEX
        entries = []
        for child, platform in zip(children, platforms, strict=True):
            parts = _platform_parts(platform)
            entry_platform = {"architecture": parts[1], "os": parts[0]}
            if len(parts) > 2:
                entry_platform["variant"] = parts[2]
            entries.append({**child.descriptor(), "platform": entry_platform})
        raw = _canonical({"schemaVersion": 2, "mediaType": media_type, "manifests": entries})
        digest = http.push_manifest(repo, _sha256(raw), raw, media_type)
        if tag is not None:
            http.push_manifest(repo, tag, raw, media_type)
    blobs = _unique([b for child in children for b in child.blobs])
    # The base layer is shared: count each distinct blob once.
    sizes: dict[str, int] = {}
    for child in children:
        child_manifest = json.loads(child.manifest)
        for desc in [child_manifest["config"], *child_manifest["layers"]]:
            sizes[desc["digest"]] = desc["size"]
    return PushedImage(
        registry_host=registry.host,
        repository=repo,
        tag=tag,
        digest=digest,
        media_type=media_type,
        manifest=raw,
        blobs=blobs,
        manifests=[child.digest for child in children],
        total_blob_bytes=sum(sizes.values()),
        platforms=[p for child in children for p in child.platforms],
        children=children,
    )


def _image_config(parts: tuple[str, ...], layers: Sequence[Layer]) -> bytes:
    config: dict[str, Any] = {
        "architecture": parts[1],
        "os": parts[0],
        "created": "2024-01-01T00:00:00Z",
        "config": {"Env": ["PATH=/usr/local/bin:/usr/bin:/bin"], "Cmd": ["/bin/sh"]},
        "rootfs": {"type": "layers", "diff_ids": [layer.diff_id for layer in layers]},
        "history": [
            {"created": "2024-01-01T00:00:00Z", "created_by": f"fanout test layer {i}"}
            for i in range(len(layers))
        ],
    }
    if len(parts) > 2:
        config["variant"] = parts[2]
    return _canonical(config)


def _platform_parts(platform: Platform) -> tuple[str, ...]:
    parts = tuple(platform.split("/")) if isinstance(platform, str) else tuple(platform)
    if len(parts) not in (2, 3):
        raise ValueError(f"platform must be os/arch[/variant], got {platform!r}")
    return parts


# -- helpers for assertions ---------------------------------------------------------------------
def get_manifest(registry: RegistryServer, ref: str) -> tuple[bytes, str]:
    """The raw manifest and its Content-Type; `ref` is `repo@digest`, `repo:tag` or with host."""
    repo, reference = split_ref(registry, ref)
    with RegistryHTTP(registry) as http:
        return http.get_manifest(repo, reference)


def manifest_exists(registry: RegistryServer, ref: str) -> bool:
    repo, reference = split_ref(registry, ref)
    with RegistryHTTP(registry) as http:
        return http.manifest_exists(repo, reference)


def blob_exists(registry: RegistryServer, repo: str, digest: str) -> bool:
    with RegistryHTTP(registry) as http:
        return http.blob_exists(repo, digest)


def list_tags(registry: RegistryServer, repo: str) -> list[str]:
    """Tags of `repo`; [] when the repository does not exist."""
    with RegistryHTTP(registry) as http:
        return http.list_tags(repo)


def delete_manifest(registry: RegistryServer, repo: str, digest: str) -> None:
    with RegistryHTTP(registry) as http:
        http.delete_manifest(repo, digest)


def delete_blob(registry: RegistryServer, repo: str, digest: str) -> None:
    with RegistryHTTP(registry) as http:
        http.delete_blob(repo, digest)


def split_ref(registry: RegistryServer, ref: str) -> tuple[str, str]:
    """`[host/]repo@digest` or `[host/]repo:tag` -> (repo, digest-or-tag)."""
    prefix = registry.host + "/"
    if ref.startswith(prefix):
        ref = ref[len(prefix) :]
    if "@" in ref:
        repo, _, reference = ref.partition("@")
        return repo.rsplit(":", 1)[0] if ":" in repo else repo, reference
    repo, sep, tag = ref.rpartition(":")
    if not sep or "/" in tag:
        raise ValueError(f"reference needs a tag or digest: {ref!r}")
    return repo, tag


def _canonical(doc: Mapping[str, Any]) -> bytes:
    return json.dumps(doc, indent=2, sort_keys=False).encode()


def _sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def _unique(items: Sequence[str]) -> list[str]:
    return list(dict.fromkeys(items))
