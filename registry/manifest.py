"""Manifests and indexes as plain data: media types, digests, descriptors, parsing.

No HTTP here. ``parse_manifest`` turns the bytes a registry served (and the Content-Type it served
them with) into a ``Manifest`` that keeps those exact bytes: a manifest's digest is the hash of its
bytes, so re-serialising one would change its identity.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from typing import Any, TypeGuard

from registry.errors import DigestMismatch, InvalidManifest, InvalidReference

DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_MANIFEST_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
DOCKER_SCHEMA1 = "application/vnd.docker.distribution.manifest.v1+json"
DOCKER_SCHEMA1_SIGNED = "application/vnd.docker.distribution.manifest.v1+prettyjws"
OCI_EMPTY = "application/vnd.oci.empty.v1+json"

# The empty descriptor OCI artifacts use as their config: the two bytes ``{}``.
OCI_EMPTY_DIGEST = "sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a"

INDEX_MEDIA_TYPES = frozenset({OCI_INDEX, DOCKER_MANIFEST_LIST})
IMAGE_MEDIA_TYPES = frozenset({OCI_MANIFEST, DOCKER_MANIFEST})
SUPPORTED_MEDIA_TYPES = INDEX_MEDIA_TYPES | IMAGE_MEDIA_TYPES
SCHEMA1_MEDIA_TYPES = frozenset({DOCKER_SCHEMA1, DOCKER_SCHEMA1_SIGNED})

# Indexes first: asking for one by digest must get the index itself, not a registry's pick of a
# single platform from it.
ACCEPT_MANIFESTS = ", ".join((OCI_INDEX, DOCKER_MANIFEST_LIST, OCI_MANIFEST, DOCKER_MANIFEST))

# Layers a registry may not redistribute (Windows base layers): fetched from their ``urls``.
NONDISTRIBUTABLE_MEDIA_TYPES = frozenset({
    "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip",
    "application/vnd.oci.image.layer.nondistributable.v1.tar",
    "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip",
    "application/vnd.oci.image.layer.nondistributable.v1.tar+zstd",
})
MAX_MANIFEST_BYTES = 4 * 1024 * 1024  # the limit distribution and most registries enforce

# Content types that say nothing about which manifest this is; the JSON's mediaType decides.
_GENERIC_CONTENT_TYPES = frozenset({"application/json", "text/plain", "application/octet-stream"})

# The OCI image spec allows only lowercase hex for these two, of exactly the hash's length.
_DIGEST_PATTERNS = {
    "sha256": re.compile(r"sha256:[a-f0-9]{64}"),
    "sha512": re.compile(r"sha512:[a-f0-9]{128}"),
}


def _is_int(value: object) -> TypeGuard[int]:
    """True for a JSON integer: bool is an int in Python but not in JSON's eyes."""
    return isinstance(value, int) and not isinstance(value, bool)


def _show(value: object, limit: int = 80) -> str:
    """A bounded repr of untrusted input, for error messages."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


# --- digests -------------------------------------------------------------------------------------


def digest_algorithm(digest: str) -> str:
    """The algorithm of a well-formed ``sha256:``/``sha512:`` digest; InvalidReference otherwise."""
    if not isinstance(digest, str):
        raise InvalidReference(f"digest must be a string, not {type(digest).__name__}")
    algorithm, sep, _ = digest.partition(":")
    pattern = _DIGEST_PATTERNS.get(algorithm)
    if not sep:
        raise InvalidReference(f"digest {_show(digest)} has no algorithm prefix")
    if pattern is None:
        raise InvalidReference(
            f"digest algorithm {_show(algorithm)} is not supported (only sha256 and sha512)")
    if not pattern.fullmatch(digest):
        raise InvalidReference(f"digest {_show(digest)} is not a valid {algorithm} digest")
    return algorithm


def compute_digest(data: bytes, algorithm: str = "sha256") -> str:
    """The ``algorithm:hex`` digest of ``data``."""
    if algorithm not in _DIGEST_PATTERNS:
        raise InvalidReference(
            f"digest algorithm {_show(algorithm)} is not supported (only sha256 and sha512)")
    return f"{algorithm}:{hashlib.new(algorithm, data).hexdigest()}"


def new_hasher(digest: str) -> hashlib._Hash:
    """A fresh hashlib object for ``digest``'s algorithm, to hash a stream on the way past."""
    return hashlib.new(digest_algorithm(digest))


def verify_digest(data: bytes, digest: str, what: str) -> None:
    """Raise DigestMismatch unless ``data`` hashes to ``digest``; ``what`` names the bytes."""
    actual = compute_digest(data, digest_algorithm(digest))
    if actual != digest:
        raise DigestMismatch(f"{what}: expected {digest}, got {actual}")


# --- descriptors ---------------------------------------------------------------------------------


def _optional_str(obj: dict[str, Any], key: str, where: str) -> str | None:
    value = obj.get(key)
    if value is not None and not isinstance(value, str):
        raise InvalidManifest(f"{where}.{key} must be a string, not {type(value).__name__}")
    return value


def _optional_annotations(obj: dict[str, Any], where: str) -> dict[str, str] | None:
    value = obj.get("annotations")
    if value is None:
        return None
    if not isinstance(value, dict) or not all(isinstance(v, str) for v in value.values()):
        raise InvalidManifest(f"{where}.annotations must be an object of strings")
    return value


@dataclass(frozen=True, slots=True)
class Descriptor:
    """A typed pointer to content: what it is, its digest and its size."""

    media_type: str
    digest: str
    size: int
    platform: dict[str, Any] | None = None
    annotations: dict[str, str] | None = None
    artifact_type: str | None = None
    # Foreign layers (Windows base layers) live at these URLs, not necessarily in the registry.
    urls: tuple[str, ...] | None = None

    @classmethod
    def from_json(cls, obj: object, where: str = "descriptor") -> Descriptor:
        """Validate a decoded JSON descriptor; InvalidManifest names the field at ``where``."""
        if not isinstance(obj, dict):
            raise InvalidManifest(f"{where} must be an object, not {type(obj).__name__}")
        media_type = obj.get("mediaType")
        if not isinstance(media_type, str) or not media_type:
            raise InvalidManifest(f"{where}.mediaType must be a non-empty string")
        digest = obj.get("digest")
        if not isinstance(digest, str):
            raise InvalidManifest(f"{where}.digest must be a string")
        try:
            digest_algorithm(digest)
        except InvalidReference as exc:
            raise InvalidManifest(f"{where}.digest is invalid: {exc.message}") from None
        size = obj.get("size")
        if not _is_int(size) or size < 0:
            raise InvalidManifest(f"{where}.size must be a non-negative integer, not {_show(size)}")
        platform = obj.get("platform")
        if platform is not None and not isinstance(platform, dict):
            raise InvalidManifest(f"{where}.platform must be an object")
        urls = obj.get("urls")
        if urls is not None and (
                not isinstance(urls, list) or not all(isinstance(u, str) for u in urls)):
            raise InvalidManifest(f"{where}.urls must be a list of strings")
        return cls(
            media_type=media_type,
            digest=digest,
            size=size,
            platform=platform,
            annotations=_optional_annotations(obj, where),
            artifact_type=_optional_str(obj, "artifactType", where),
            urls=tuple(urls) if urls is not None else None,
        )


# --- manifests -----------------------------------------------------------------------------------


def is_index_media_type(media_type: str) -> bool:
    """True for an OCI index or a Docker manifest list."""
    return media_type in INDEX_MEDIA_TYPES


def is_manifest_media_type(media_type: str) -> bool:
    """True for an OCI image manifest or a Docker schema 2 manifest."""
    return media_type in IMAGE_MEDIA_TYPES


@dataclass(frozen=True)
class Manifest:
    """A manifest or index: the exact bytes served, their effective media type and digest, and
    the parsed parts the copy needs."""

    raw: bytes
    media_type: str
    digest: str
    children: tuple[Descriptor, ...] = ()
    config: Descriptor | None = None
    layers: tuple[Descriptor, ...] = ()
    subject: Descriptor | None = None
    # The manifest's own ``artifactType`` field only; the referrers API falls back to
    # config.mediaType when it is absent, a choice left to the caller.
    artifact_type: str | None = None
    annotations: dict[str, str] | None = None

    @property
    def is_index(self) -> bool:
        return is_index_media_type(self.media_type)

    @property
    def size(self) -> int:
        return len(self.raw)

    @property
    def blobs(self) -> tuple[Descriptor, ...]:
        """Config then layers, each digest once: the blobs to copy before this manifest."""
        seen: set[str] = set()
        out: list[Descriptor] = []
        for desc in (self.config, *self.layers):
            if desc is not None and desc.digest not in seen:
                seen.add(desc.digest)
                out.append(desc)
        return tuple(out)

    @property
    def distributable_blobs(self) -> tuple[Descriptor, ...]:
        """The blobs a copy moves: foreign (non-distributable) layers stay where their
        ``urls`` say, as crane and skopeo leave them."""
        return tuple(b for b in self.blobs if b.media_type not in NONDISTRIBUTABLE_MEDIA_TYPES)

    def descriptor(self) -> Descriptor:
        """A descriptor pointing at this manifest."""
        return Descriptor(media_type=self.media_type, digest=self.digest, size=self.size)


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _decode(raw: bytes) -> dict[str, Any]:
    try:
        doc = json.loads(raw, parse_constant=_reject_constant)
    except RecursionError:  # a few MiB of '[' is valid input to json.loads
        raise InvalidManifest("manifest is not valid JSON: nested too deeply") from None
    except ValueError as exc:  # JSONDecodeError and UnicodeDecodeError are both ValueErrors
        raise InvalidManifest(f"manifest is not valid JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise InvalidManifest(f"manifest must be a JSON object, not {type(doc).__name__}")
    return doc


def _header_media_type(content_type: str | None) -> str | None:
    """The bare, lowercased media type of a Content-Type, or None if it says nothing useful."""
    if content_type is None:
        return None
    bare = content_type.split(";", 1)[0].strip().lower()
    return None if not bare or bare in _GENERIC_CONTENT_TYPES else bare


def _refuse_schema1(header: str | None, doc: dict[str, Any]) -> None:
    field, version = doc.get("mediaType"), doc.get("schemaVersion")
    if (header in SCHEMA1_MEDIA_TYPES
            or (isinstance(field, str) and field in SCHEMA1_MEDIA_TYPES)
            or (_is_int(version) and version == 1)):
        raise InvalidManifest(
            "Docker schema 1 manifests are not supported: the format is deprecated and "
            "registries are dropping it; rebuild or convert the image with a newer build tool")


def _effective_media_type(header: str | None, doc: dict[str, Any]) -> str:
    """Decide what this document is, from the Content-Type header and the JSON ``mediaType``."""
    field = doc.get("mediaType")
    if field is not None and not isinstance(field, str):
        raise InvalidManifest(f"manifest mediaType must be a string, not {type(field).__name__}")
    if header in SUPPORTED_MEDIA_TYPES:
        if field is not None and field != header:
            raise InvalidManifest(
                f"manifest served as {header} but its mediaType says {_show(field)}")
        return header
    if field is not None:
        # A header that is neither generic nor ours is noise next to a field that is ours.
        if field not in SUPPORTED_MEDIA_TYPES:
            raise InvalidManifest(f"unsupported manifest media type {_show(field)}")
        return field
    if header is not None:
        raise InvalidManifest(f"unsupported manifest media type {_show(header)}")
    # Neither says: OCI made mediaType optional, and some registries serve such documents with a
    # generic Content-Type, so the structure has to tell. Both shapes at once is the ambiguity
    # behind CVE-2021-41190; refuse it rather than guess.
    has_index_shape = "manifests" in doc
    has_image_shape = "config" in doc or "layers" in doc
    if has_index_shape and not has_image_shape:
        return OCI_INDEX
    if has_image_shape and not has_index_shape:
        return OCI_MANIFEST
    if has_index_shape:
        raise InvalidManifest("manifest has no mediaType and both index and image fields")
    raise InvalidManifest("manifest has no mediaType and neither manifests nor config/layers")


def _descriptors(doc: dict[str, Any], key: str) -> tuple[Descriptor, ...]:
    items = doc.get(key)
    if not isinstance(items, list):
        raise InvalidManifest(f"manifest {key} must be a list")
    return tuple(Descriptor.from_json(item, f"{key}[{i}]") for i, item in enumerate(items))


def _optional_descriptor(doc: dict[str, Any], key: str) -> Descriptor | None:
    value = doc.get(key)
    return None if value is None else Descriptor.from_json(value, key)


def parse_manifest(
    raw: bytes, content_type: str | None, *, expected_digest: str | None = None,
) -> Manifest:
    """Validate and parse a manifest or index as served; never re-serialises ``raw``.

    With ``expected_digest`` the bytes must hash to it, checked before any JSON is parsed.
    """
    if len(raw) > MAX_MANIFEST_BYTES:
        raise InvalidManifest(f"manifest is {len(raw)} bytes, over the 4 MiB limit")
    if expected_digest is not None:
        verify_digest(raw, expected_digest, "manifest")
        digest = expected_digest
    else:
        digest = compute_digest(raw)
    doc = _decode(raw)
    header = _header_media_type(content_type)
    _refuse_schema1(header, doc)
    media_type = _effective_media_type(header, doc)
    version = doc.get("schemaVersion")
    if not _is_int(version) or version != 2:
        raise InvalidManifest(f"manifest schemaVersion must be 2, not {_show(version)}")

    children: tuple[Descriptor, ...] = ()
    config: Descriptor | None = None
    layers: tuple[Descriptor, ...] = ()
    if is_index_media_type(media_type):
        if "config" in doc or "layers" in doc:
            raise InvalidManifest(f"{media_type} must not have config or layers")
        children = _descriptors(doc, "manifests")
        # Cannot happen with an honest hash, but a walker that trusted it would never finish.
        if any(child.digest == digest for child in children):
            raise InvalidManifest(f"index refers to itself ({digest})")
    else:
        if "manifests" in doc:
            raise InvalidManifest(f"{media_type} must not have manifests")
        if doc.get("config") is None:
            raise InvalidManifest(f"{media_type} needs a config descriptor")
        config = Descriptor.from_json(doc["config"], "config")
        layers = _descriptors(doc, "layers")
    return Manifest(
        raw=raw, media_type=media_type, digest=digest,
        children=children, config=config, layers=layers,
        subject=_optional_descriptor(doc, "subject"),
        artifact_type=_optional_str(doc, "artifactType", "manifest"),
        annotations=_optional_annotations(doc, "manifest"),
    )
