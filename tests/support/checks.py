"""The one check that a copy is complete and byte-identical to its source.

`assert_same_image` walks from digests and tags at the destination, reading both ends with the
tests' own client (`registry_client`), never fanout's: every manifest, fetched by digest at both
ends, must hash to its digest, have the size its index gave, and be the same bytes with the same
Content-Type; an index's children are walked likewise; every blob (config, layers, an artifact's
blobs) must answer HEAD with its size and stream, at both ends, to its digest. On request it also
checks what the destination lists as referrers (the fallback tag index, or a referrers API), and
asks skopeo, an independent client, to judge every tag it walked.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from tests.support.images import PushedImage
from tests.support.oci import sha256
from tests.support.registry_client import RepoClient
from tests.support.skopeo import assert_skopeo_same, skopeo_digest

ReferrersAPI = Callable[[str], list[dict[str, Any]]]  # subject digest -> the API's descriptors


def assert_same_image(
    src: RepoClient, dst: RepoClient, roots: Iterable[str] = (), *,
    tags: Mapping[str, str] | None = None, every_tag: bool = False,
    referrers: Mapping[str, Sequence[PushedImage]] | None = None,
    referrers_api: ReferrersAPI | None = None, skopeo: bool = False,
) -> dict[str, str]:
    """Everything reachable from ``roots`` (digests) and the tags is at ``dst`` as at ``src``.

    ``tags``: {tag: digest} that ``dst`` must serve. ``every_tag``: also every tag ``dst`` has,
    whatever it names. ``referrers``: {subject digest: the referrers ``dst`` lists for it, in
    order} — in its fallback index, or ``referrers_api(subject)`` when given. ``skopeo``: skopeo
    also pulls every tag walked. Returns {tag: digest} of the tags walked, sorted by tag.
    """
    found = {tag: _tagged(dst, tag) for tag in sorted(dst.tag_list())} if every_tag else {}
    for tag, digest in (tags or {}).items():
        served = _tagged(dst, tag)
        assert served == digest, f"{dst.repo}:{tag} is {served}, not {digest}"
        found[tag] = digest
    walk = _Walk(src, dst)
    for digest in [*roots, *found.values()]:
        walk.manifest(digest)
    for subject, expected in (referrers or {}).items():
        listed = referrers_api(subject) if referrers_api else dst.referrers_index(subject)
        where = "the referrers API" if referrers_api else "the fallback index"
        assert [(e["digest"], e.get("artifactType"), e.get("size")) for e in listed] == [
            (r.digest, r.artifact_type, r.size) for r in expected
        ], f"{where} of {dst.repo}@{subject} lists {listed}"
    if skopeo:
        _skopeo(src, dst, found)
    return dict(sorted(found.items()))


class _Walk:
    """Manifests and blobs compared once each, however many indexes share them."""

    def __init__(self, src: RepoClient, dst: RepoClient) -> None:
        self.src, self.dst = src, dst
        self.seen: set[str] = set()

    def manifest(self, digest: str, size: int | None = None) -> None:
        if digest in self.seen:
            return
        self.seen.add(digest)
        where = f"{self.dst.repo}@{digest}"
        raw, media_type = self.dst.manifest_get(digest)
        assert sha256(raw) == digest, f"{where} serves other bytes"
        assert size is None or len(raw) == size, f"{where} is {len(raw)} bytes, not {size}"
        source_raw, source_type = self.src.manifest_get(digest)
        assert raw == source_raw, f"{where} differs from the source's bytes"
        assert media_type == source_type, f"{where}: {media_type} != {source_type} at the source"
        doc: dict[str, Any] = json.loads(raw)
        for child in doc.get("manifests") or []:
            self.manifest(child["digest"], int(child["size"]))
        blobs = [doc["config"]] if "config" in doc else []
        for blob in [*blobs, *(doc.get("layers") or []), *(doc.get("blobs") or [])]:
            self.blob(blob["digest"], int(blob["size"]))

    def blob(self, digest: str, size: int) -> None:
        if digest in self.seen:
            return
        self.seen.add(digest)
        for end, name in ((self.dst, "destination"), (self.src, "source")):
            where = f"blob {digest} at the {name} {end.repo}"
            head = end.blob_head(digest)
            assert head.status_code == 200, f"{where}: HEAD -> {head.status_code}"
            assert int(head.headers.get("Content-Length", size)) == size, f"{where}: HEAD size"
            assert end.blob_hash(digest) == (digest, size), f"{where} has other bytes"


def _tagged(client: RepoClient, tag: str) -> str:
    return sha256(client.manifest_get(tag)[0])


def _skopeo(src: RepoClient, dst: RepoClient, found: Mapping[str, str]) -> None:
    pulled: set[str] = set()
    for tag, digest in found.items():
        if digest in pulled:  # one full pull per digest; the other tags by their digest
            assert skopeo_digest(dst.ref(tag), dst.creds) == digest, f"skopeo: {tag} != {digest}"
            continue
        assert_skopeo_same(src.ref(digest), dst.ref(tag), src.creds, dst.creds)
        pulled.add(digest)
