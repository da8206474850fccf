"""Build test images and push them with the tests' own client (`registry_client`), never fanout's.

Layers come from `layers` (new random bytes every time); manifests are PUT with their media type,
by digest and then by tag. `get_manifest`, `list_tags` and friends read a registry by reference.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from tests.support.layers import DEFAULT_LAYER_SIZE, Layer, bytes_blob, make_layer
from tests.support.oci import (
    DOCKER_CONFIG,
    DOCKER_LAYER_GZIP,
    DOCKER_LIST,
    DOCKER_MANIFEST,
    EMPTY_JSON,
    EMPTY_JSON_DIGEST,
    MANIFEST_ACCEPT,
    OCI_CONFIG,
    OCI_EMPTY,
    OCI_INDEX,
    OCI_LAYER_GZIP,
    OCI_LAYER_TAR,
    OCI_MANIFEST,
    sha256,
)
from tests.support.registries import RegistryServer
from tests.support.registry_client import RepoClient

__all__ = [  # the media types and layers too, as tests have always found them here
    "DEFAULT_LAYER_SIZE", "DEFAULT_PLATFORMS", "DOCKER_CONFIG", "DOCKER_LAYER_GZIP", "DOCKER_LIST",
    "DOCKER_MANIFEST", "EMPTY_JSON", "EMPTY_JSON_DIGEST", "MANIFEST_ACCEPT", "OCI_CONFIG",
    "OCI_EMPTY", "OCI_INDEX", "OCI_LAYER_GZIP", "OCI_LAYER_TAR", "OCI_MANIFEST", "Layer",
    "Platform", "PushedImage", "blob_exists", "delete_blob", "delete_manifest", "get_manifest",
    "list_tags", "make_layer", "manifest_exists", "push_artifact", "push_docker_image",
    "push_docker_manifest_list", "push_index", "push_oci_image", "push_oci_index", "split_ref",
]

DEFAULT_PLATFORMS: tuple[tuple[str, ...], ...] = (
    ("linux", "amd64"),
    ("linux", "arm64"),
    ("linux", "arm", "v7"),
)

Platform = tuple[str, ...] | str  # ("linux", "arm", "v7") or "linux/arm/v7"


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
    with RepoClient.at(registry, repo) as client:
        return _push_image(
            client, tag, layers, layer_size, compress, platform, base_layers, docker=False
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
    with RepoClient.at(registry, repo) as client:
        return _push_image(client, tag, layers, layer_size, True, platform, base_layers,
                           docker=True)


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


def push_index(
    registry: RegistryServer,
    repo: str,
    tag: str | None,
    children: Sequence[PushedImage],
    media_type: str = OCI_INDEX,
) -> PushedImage:
    """An index over `children` (pushed already, one platform each), by digest and `tag`."""
    entries = []
    for child in children:
        parts = _platform_parts(child.platforms[0])
        platform = {"architecture": parts[1], "os": parts[0]}
        if len(parts) > 2:
            platform["variant"] = parts[2]
        entries.append({**child.descriptor(), "platform": platform})
    raw = _canonical({"schemaVersion": 2, "mediaType": media_type, "manifests": entries})
    with RepoClient.at(registry, repo) as client:
        digest = _push_manifest(client, tag, raw, media_type)
    # Children may share blobs (a base layer): list and count each distinct blob once.
    sizes: dict[str, int] = {}
    for child in children:
        child_manifest = json.loads(child.manifest)
        for desc in [child_manifest["config"], *child_manifest["layers"]]:
            sizes[desc["digest"]] = desc["size"]
    return PushedImage(registry.host, repo, tag, digest, media_type, raw, blobs=list(sizes),
                       manifests=[child.digest for child in children],
                       total_blob_bytes=sum(sizes.values()),
                       platforms=[p for child in children for p in child.platforms],
                       children=list(children))


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
    blob = bytes_blob(payload.encode(), blob_media_type)
    empty = bytes_blob(EMPTY_JSON, OCI_EMPTY)
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
    with RepoClient.at(registry, repo) as client:
        client.blob_push(empty)
        client.blob_push(blob)
        digest = _push_manifest(client, tag, raw, OCI_MANIFEST)
    return PushedImage(registry.host, repo, tag, digest, OCI_MANIFEST, raw,
                       blobs=[empty.digest, blob.digest], manifests=[],
                       total_blob_bytes=empty.size + blob.size, platforms=[],
                       artifact_type=artifact_type)


def _push_image(
    client: RepoClient,
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
    config = bytes_blob(_image_config(parts, all_layers), DOCKER_CONFIG if docker else OCI_CONFIG)
    for layer in all_layers:
        client.blob_push(layer)
    client.blob_push(config)
    media_type = DOCKER_MANIFEST if docker else OCI_MANIFEST
    manifest = {
        "schemaVersion": 2,
        "mediaType": media_type,
        "config": config.descriptor(),
        "layers": [layer.descriptor() for layer in all_layers],
    }
    raw = _canonical(manifest)
    digest = _push_manifest(client, tag, raw, media_type)
    sizes = {config.digest: config.size} | {layer.digest: layer.size for layer in all_layers}
    return PushedImage(client.host, client.repo, tag, digest, media_type, raw,
                       blobs=list(sizes), manifests=[], total_blob_bytes=sum(sizes.values()),
                       platforms=["/".join(parts)])


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
    with RepoClient.at(registry, repo) as client:
        children = [_push_image(client, None, 1, layer_size, True, p, [base], docker=docker)
                    for p in platforms]
    return push_index(registry, repo, tag, children, DOCKER_LIST if docker else OCI_INDEX)


def _push_manifest(client: RepoClient, tag: str | None, raw: bytes, media_type: str) -> str:
    """By digest, then by `tag` when there is one; returns the digest."""
    digest = client.manifest_put(sha256(raw), raw, media_type)
    if tag is not None:
        client.manifest_put(tag, raw, media_type)
    return digest


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


# -- reading and deleting by reference ----------------------------------------------------------
def get_manifest(registry: RegistryServer, ref: str) -> tuple[bytes, str]:
    """The raw manifest and its Content-Type; `ref` is `repo@digest`, `repo:tag` or with host."""
    repo, reference = split_ref(registry, ref)
    with RepoClient.at(registry, repo) as client:
        return client.manifest_get(reference)


def manifest_exists(registry: RegistryServer, ref: str) -> bool:
    repo, reference = split_ref(registry, ref)
    with RepoClient.at(registry, repo) as client:
        return client.manifest_exists(reference)


def blob_exists(registry: RegistryServer, repo: str, digest: str) -> bool:
    with RepoClient.at(registry, repo) as client:
        return client.blob_exists(digest)


def list_tags(registry: RegistryServer, repo: str) -> list[str]:
    """Tags of `repo`; [] when the repository does not exist."""
    with RepoClient.at(registry, repo) as client:
        return client.tag_list()


def tag_image(registry: RegistryServer, repo: str, tags: Sequence[str], *,
              layer_size: int = 256) -> str:
    """One small random image under every tag of ``tags`` (its manifest PUT once per tag, no
    blob pushed twice); its digest. How mirror tests and benches fill a repository cheaply."""
    image = push_oci_image(registry, repo, tags[0], layers=1, layer_size=layer_size)
    with RepoClient.at(registry, repo) as client:
        raw, media_type = client.manifest_get(image.digest)
        for tag in tags[1:]:
            client.manifest_put(tag, raw, media_type)
    return image.digest


def tag_digests(registry: RegistryServer, repo: str) -> dict[str, str]:
    """Every tag of ``repo`` and the digest it names (a listing, then a HEAD per tag)."""
    with RepoClient.at(registry, repo) as client:
        return {tag: client.manifest_head(tag).headers["Docker-Content-Digest"]
                for tag in client.tag_list()}


def delete_manifest(registry: RegistryServer, repo: str, digest: str) -> None:
    with RepoClient.at(registry, repo) as client:
        client.manifest_delete(digest)


def delete_blob(registry: RegistryServer, repo: str, digest: str) -> None:
    with RepoClient.at(registry, repo) as client:
        client.blob_delete(digest)


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
