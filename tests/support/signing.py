"""Signatures, SBOMs and referrers indexes as the tools that make them push them.

- `push_cosign_signature`: cosign's classic layout — an image manifest whose one layer is a
  simple-signing payload (really signed, ECDSA P-256) with the `dev.cosignproject.cosign/signature`
  annotation, tagged `sha256-<hex>.sig` next to the image.
- `push_referrers_index`: the OCI referrers tag schema — an index tagged `sha256-<hex>` listing
  the manifests whose `subject` is that digest, as a client writes it where there is no API.
- `push_signed_release`: an image index with a cosign signature, an SBOM listed in the fallback
  index, and a signature on that SBOM listed in the SBOM's own fallback index.

To check a copy of them, `checks.assert_same_image` with `referrers=`.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec

from tests.support import images
from tests.support.images import PushedImage
from tests.support.layers import bytes_blob
from tests.support.oci import OCI_CONFIG, OCI_INDEX, OCI_MANIFEST, fallback_tag
from tests.support.registries import RegistryServer
from tests.support.registry_client import RepoClient

SIMPLESIGNING = "application/vnd.dev.cosign.simplesigning.v1+json"
COSIGN_SIGNATURE_ANNOTATION = "dev.cosignproject.cosign/signature"
SBOM_TYPE = "application/spdx+json"
NOTATION_TYPE = "application/vnd.cncf.notary.signature"
_SIGNING_KEY = ec.generate_private_key(ec.SECP256R1())


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
    layer = bytes_blob(payload, SIMPLESIGNING)
    config = bytes_blob(json.dumps({
        "architecture": "", "os": "", "created": "0001-01-01T00:00:00Z", "config": {},
        "rootfs": {"type": "layers", "diff_ids": [layer.digest]},
        "history": [{"created": "0001-01-01T00:00:00Z"}],
    }).encode(), OCI_CONFIG)
    annotations = {COSIGN_SIGNATURE_ANNOTATION: base64.b64encode(signature).decode()}
    manifest = {
        "schemaVersion": 2, "mediaType": OCI_MANIFEST, "config": config.descriptor(),
        "layers": [{**layer.descriptor(), "annotations": annotations}],
    }
    raw = json.dumps(manifest).encode()
    tag = f"{fallback_tag(signed.digest)}.sig"
    with RepoClient.at(registry, repo) as client:
        client.blob_push(layer)
        client.blob_push(config)
        digest = client.manifest_put(tag, raw, OCI_MANIFEST)
    return PushedImage(
        registry_host=registry.host, repository=repo, tag=tag, digest=digest,
        media_type=OCI_MANIFEST, manifest=raw, blobs=[config.digest, layer.digest],
        manifests=[], total_blob_bytes=config.size + layer.size, platforms=[],
    )


def push_referrers_index(
    registry: RegistryServer, repo: str, subject: str, referrers: Iterable[PushedImage],
    *, extra_entries: Iterable[dict[str, Any]] = (),
) -> bytes:
    """The index tagged `sha256-<hex>` of `subject`, listing `referrers`; returns its bytes."""
    entries = [*({**r.descriptor(), "artifactType": r.artifact_type} for r in referrers),
               *extra_entries]
    raw = json.dumps({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": entries}).encode()
    with RepoClient.at(registry, repo) as client:
        client.manifest_put(fallback_tag(subject), raw, OCI_INDEX)
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


def referrers_index(registry: RegistryServer, repo: str, subject: str) -> list[dict[str, Any]]:
    """The entries of the fallback index for `subject`; [] when there is none."""
    with RepoClient.at(registry, repo) as client:
        return client.referrers_index(subject)
