"""Signatures, SBOMs and referrers indexes as the tools that make them push them, with plain httpx.

- `push_cosign_signature`: cosign's classic layout — an image manifest whose one layer is a
  simple-signing payload (really signed, ECDSA P-256) with the `dev.cosignproject.cosign/signature`
  annotation, tagged `sha256-<hex>.sig` next to the image.
- `push_referrers_index`: the OCI referrers tag schema — an index tagged `sha256-<hex>` listing
  the manifests whose `subject` is that digest, as a client writes it where there is no API.
- `push_signed_release`: an image index with a cosign signature, an SBOM listed in the fallback
  index, and a signature on that SBOM listed in the SBOM's own fallback index.
- `walk`: every manifest and blob reachable from some digests, fetched and hash-checked, to
  compare a destination with its source without using fanout's code.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec

from tests.support import images
from tests.support.images import PushedImage, RegistryHTTP
from tests.support.registries import RegistryServer

SIMPLESIGNING = "application/vnd.dev.cosign.simplesigning.v1+json"
COSIGN_SIGNATURE_ANNOTATION = "dev.cosignproject.cosign/signature"
SBOM_TYPE = "application/spdx+json"
NOTATION_TYPE = "application/vnd.cncf.notary.signature"
_SIGNING_KEY = ec.generate_private_key(ec.SECP256R1())


def fallback_tag(digest: str) -> str:
    return digest.replace(":", "-", 1)


def push_cosign_signature(registry: RegistryServer, repo: str, signed: PushedImage) -> PushedImage:
    """A cosign signature of `signed`, tagged `sha256-<hex>.sig`, as `cosign sign` pushes it."""
    payload = json.dumps({
        "critical": {
            "identity": {"docker-reference": f"{registry.host}/{repo}"},
            "image": {"docker-manifest-digest": signed.digest},
            "type": "cosign container image signature",
        },
        "optional": None,
    }).encode()
    signature = _SIGNING_KEY.sign(payload, ec.ECDSA(hashes.SHA256()))
    layer = {"mediaType": SIMPLESIGNING, "digest": _sha256(payload), "size": len(payload),
             "annotations": {COSIGN_SIGNATURE_ANNOTATION: base64.b64encode(signature).decode()}}
    config = json.dumps({
        "architecture": "", "os": "", "created": "0001-01-01T00:00:00Z", "config": {},
        "rootfs": {"type": "layers", "diff_ids": [_sha256(payload)]},
        "history": [{"created": "0001-01-01T00:00:00Z"}],
    }).encode()
    manifest = {
        "schemaVersion": 2, "mediaType": images.OCI_MANIFEST,
        "config": {"mediaType": images.OCI_CONFIG, "digest": _sha256(config),
                   "size": len(config)},
        "layers": [layer],
    }
    raw = json.dumps(manifest).encode()
    tag = f"{fallback_tag(signed.digest)}.sig"
    with RegistryHTTP(registry) as http:
        http.push_blob(repo, _Blob(payload))  # type: ignore[arg-type]
        http.push_blob(repo, _Blob(config))  # type: ignore[arg-type]
        digest = http.push_manifest(repo, tag, raw, images.OCI_MANIFEST)
    return PushedImage(
        registry_host=registry.host, repository=repo, tag=tag, digest=digest,
        media_type=images.OCI_MANIFEST, manifest=raw,
        blobs=[_sha256(config), _sha256(payload)], manifests=[],
        total_blob_bytes=len(config) + len(payload), platforms=[],
    )


def push_referrers_index(
    registry: RegistryServer, repo: str, subject: str, referrers: Iterable[PushedImage],
    *, extra_entries: Iterable[dict[str, Any]] = (),
) -> bytes:
    """The index tagged `sha256-<hex>` of `subject`, listing `referrers`; returns its bytes."""
    entries = [*({**r.descriptor(), "artifactType": r.artifact_type} for r in referrers),
               *extra_entries]
    raw = json.dumps({"schemaVersion": 2, "mediaType": images.OCI_INDEX,
                      "manifests": entries}).encode()
    with RegistryHTTP(registry) as http:
        http.push_manifest(repo, fallback_tag(subject), raw, images.OCI_INDEX)
    return raw


@dataclass
class SignedRelease:
    image: PushedImage
    signature: PushedImage  # cosign, by tag
    sbom: PushedImage  # OCI referrer of the image, in its fallback index
    sbom_signature: PushedImage  # OCI referrer of the SBOM, in the SBOM's fallback index

    @property
    def referrers(self) -> list[PushedImage]:
        return [self.signature, self.sbom, self.sbom_signature]


def push_signed_release(registry: RegistryServer, repo: str, tag: str = "v1") -> SignedRelease:
    image = images.push_oci_index(registry, repo, tag, platforms=[("linux", "amd64"),
                                                                  ("linux", "arm64")],
                                  layer_size=4096)
    signature = push_cosign_signature(registry, repo, image)
    sbom = images.push_artifact(registry, repo, image, artifact_type=SBOM_TYPE,
                                blob_media_type=SBOM_TYPE)
    push_referrers_index(registry, repo, image.digest, [sbom])
    sbom_signature = images.push_artifact(registry, repo, sbom, artifact_type=NOTATION_TYPE,
                                          blob_media_type="application/jose+json")
    push_referrers_index(registry, repo, sbom.digest, [sbom_signature])
    return SignedRelease(image, signature, sbom, sbom_signature)


def walk(registry: RegistryServer, repo: str, digests: Iterable[str]) -> dict[str, bytes]:
    """Every manifest (raw bytes) and blob (its digest, mapped to b"") reachable from `digests`.

    Each is fetched by digest and must hash to it; a missing one raises AssertionError.
    """
    seen: dict[str, bytes] = {}
    pending = list(digests)
    with RegistryHTTP(registry) as http:
        while pending:
            digest = pending.pop()
            if digest in seen:
                continue
            raw, _ = http.get_manifest(repo, digest)
            assert _sha256(raw) == digest, f"{repo}@{digest} serves other bytes"
            seen[digest] = raw
            doc = json.loads(raw)
            pending += [child["digest"] for child in doc.get("manifests", [])]
            for blob in [doc.get("config"), *doc.get("layers", [])]:
                if blob is None or blob["digest"] in seen:
                    continue
                response = http.request("GET", f"/v2/{repo}/blobs/{blob['digest']}")
                assert response.status_code == 200, f"{repo} lacks blob {blob['digest']}"
                assert _sha256(response.content) == blob["digest"]
                seen[blob["digest"]] = b""
    return seen


def referrers_index(registry: RegistryServer, repo: str, subject: str) -> list[dict[str, Any]]:
    """The entries of the fallback index for `subject`; [] when there is none."""
    with RegistryHTTP(registry) as http:
        response = http.request("GET", f"/v2/{repo}/manifests/{fallback_tag(subject)}",
                                headers={"Accept": images.OCI_INDEX})
    if response.status_code == 404:
        return []
    assert response.status_code == 200, response.text
    entries: list[dict[str, Any]] = response.json()["manifests"]
    return entries


class _Blob:
    """What `RegistryHTTP.push_blob` reads of a blob: digest, size, and a way to open it."""

    def __init__(self, data: bytes) -> None:
        self.digest, self.size, self._data = _sha256(data), len(data), data

    def open(self) -> io.BytesIO:
        return io.BytesIO(self._data)


def _sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()
