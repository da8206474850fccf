"""Referrers against in-memory registries: the referrers API path, the tag schema and cosign tags,
the destination's fallback index (merge, lost updates), filtering, cycles, and request cost."""

from __future__ import annotations

import asyncio
import json
import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import httpx
import pytest

from registry import referrers_index
from registry.copy import Copier
from registry.errors import InvalidManifest, NotFound, TransientError
from registry.fetch import referrers_get
from registry.options import CopyOptions, TransportOptions
from registry.reference import parse_reference, parse_repository
from registry.results import CopyResult
from registry.retry import RetryPolicy
from registry.session import Registries
from tests.support.fake_registry import FakeRegistry, error, plain_http, route

FAST = RetryPolicy(attempts=3, initial=0.001, maximum=0.01, max_elapsed=5)
INSECURE = TransportOptions(insecure_registries=frozenset({"src.test", "dst.test"}))
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_EMPTY = "application/vnd.oci.empty.v1+json"
SBOM = "application/vnd.example.sbom.v1+json"
PROVENANCE = "application/vnd.example.provenance.v1+json"
NOTATION = "application/vnd.cncf.notary.signature"
SIMPLESIGNING = "application/vnd.dev.cosign.simplesigning.v1+json"

_TAGS = re.compile(r"^/v2/(?P<name>.+)/tags/list$")
_REFERRERS = re.compile(r"^/v2/(?P<name>.+)/referrers/(?P<digest>sha256:[0-9a-f]{64})$")
_MANIFEST_PUT = re.compile(r"^/v2/(?P<name>.+)/manifests/(?P<ref>[^/]+)$")


@dataclass
class ReferrersRegistry(FakeRegistry):
    """The fake registry plus a paginated tag list and, optionally, the referrers API."""

    referrers_api: bool = False
    honour_filter: bool = True
    tags_page: int = 1000  # the most tags one page holds, whatever ``n`` asks

    def handle(self, request: httpx.Request) -> httpx.Response:
        path = request.url.path
        if m := _TAGS.match(path):
            self.requests.append(request)
            return self._tags(request, m["name"])
        if m := _REFERRERS.match(path):
            self.requests.append(request)
            if not self.referrers_api:
                return httpx.Response(404, text="404 page not found\n")
            return self._referrers(request, m["name"], m["digest"])
        response = super().handle(request)
        if (self.referrers_api and request.method == "PUT" and response.status_code == 201
                and _MANIFEST_PUT.match(path)):
            subject = json.loads(request.content).get("subject")
            if subject:
                response.headers["OCI-Subject"] = subject["digest"]
        return response

    def tags(self, repo: str) -> list[str]:
        return sorted(k for k in self.manifests.get(repo, {}) if not k.startswith("sha256:"))

    def _tags(self, request: httpx.Request, name: str) -> httpx.Response:
        if name not in self.manifests:
            return error(404, "NAME_UNKNOWN")
        tags = self.tags(name)
        n = min(int(request.url.params.get("n", self.tags_page)), self.tags_page)
        last = request.url.params.get("last")
        if last:
            tags = [t for t in tags if t > last]
        page, rest = tags[:n], tags[n:]
        headers = {}
        if rest:
            headers["Link"] = f'</v2/{name}/tags/list?n={n}&last={page[-1]}>; rel="next"'
        return httpx.Response(200, headers=headers, json={"name": name, "tags": page})

    def _referrers(self, request: httpx.Request, name: str, digest: str) -> httpx.Response:
        wanted = request.url.params.get("artifactType") if self.honour_filter else None
        entries = []
        for key, (raw, media_type) in self.manifests.get(name, {}).items():
            doc = json.loads(raw)
            if not key.startswith("sha256:") or (doc.get("subject") or {}).get("digest") != digest:
                continue
            artifact_type = doc.get("artifactType") or doc.get("config", {}).get("mediaType")
            if wanted and artifact_type != wanted:
                continue
            entry = {"mediaType": media_type, "digest": key, "size": len(raw),
                     "artifactType": artifact_type}
            if doc.get("annotations"):
                entry["annotations"] = doc["annotations"]
            entries.append(entry)
        headers = {"Content-Type": OCI_INDEX}
        if wanted:
            headers["OCI-Filters-Applied"] = "artifactType"
        body = {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": entries}
        return httpx.Response(200, headers=headers, content=json.dumps(body).encode())


# -- building content -----------------------------------------------------------------------


def descriptor(reg: FakeRegistry, repo: str, digest: str) -> dict[str, Any]:
    raw, media_type = reg.manifests[repo][digest]
    return {"mediaType": media_type, "digest": digest, "size": len(raw)}


def push_artifact(
    reg: FakeRegistry, repo: str, subject: str | None, artifact_type: str, *,
    tag: str | None = None, layer_type: str = "application/json",
    annotations: dict[str, str] | None = None, config_type: str = OCI_EMPTY,
) -> str:
    """An OCI artifact (or, with ``subject=None`` and a real config type, a cosign-style one)."""
    payload = reg.put_blob(repo, os.urandom(64))
    config = reg.put_blob(repo, b"{}") if config_type == OCI_EMPTY else \
        reg.put_blob(repo, json.dumps({"architecture": "", "os": ""}).encode())
    doc: dict[str, Any] = {
        "schemaVersion": 2, "mediaType": OCI_MANIFEST,
        "config": {"mediaType": config_type, "digest": config,
                   "size": len(reg.blobs[repo][config])},
        "layers": [{"mediaType": layer_type, "digest": payload, "size": 64,
                    **({"annotations": annotations} if annotations else {})}],
    }
    if config_type == OCI_EMPTY:
        doc["artifactType"] = artifact_type
        doc["annotations"] = {"org.opencontainers.image.created": "2024-01-01T00:00:00Z"}
    if subject is not None:
        doc["subject"] = descriptor(reg, repo, subject)
    return reg.put_manifest(repo, json.dumps(doc).encode(), OCI_MANIFEST, tag)


def push_cosign_signature(reg: FakeRegistry, repo: str, signed: str) -> str:
    """Cosign's classic layout: a simple-signing layer, tagged ``sha256-<hex>.sig``."""
    return push_artifact(
        reg, repo, None, SIMPLESIGNING, tag=f"sha256-{signed[7:]}.sig",
        layer_type=SIMPLESIGNING, config_type="application/vnd.oci.image.config.v1+json",
        annotations={"dev.cosignproject.cosign/signature": "MEUCIQ-not-a-real-signature"})


def put_fallback(reg: FakeRegistry, repo: str, subject: str, digests: list[str]) -> None:
    """The referrers tag schema at the source, as a client without the API writes it."""
    entries = []
    for digest in digests:
        raw, media_type = reg.manifests[repo][digest]
        doc = json.loads(raw)
        entries.append({"mediaType": media_type, "digest": digest, "size": len(raw),
                        "artifactType": doc.get("artifactType")})
    raw = json.dumps({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": entries}).encode()
    reg.put_manifest(repo, raw, OCI_INDEX, f"sha256-{subject[7:]}")


def push_index(reg: FakeRegistry, repo: str) -> tuple[str, list[str]]:
    children = []
    for arch in ("amd64", "arm64"):
        digest = reg.push_image(repo, [os.urandom(512), arch.encode()])
        children.append({**descriptor(reg, repo, digest),
                         "platform": {"os": "linux", "architecture": arch}})
    raw = json.dumps({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": children})
    return reg.put_manifest(repo, raw.encode(), OCI_INDEX, "v1"), [c["digest"] for c in children]


def fallback_entries(reg: FakeRegistry, repo: str, subject: str) -> list[dict[str, Any]]:
    raw, media_type = reg.manifests[repo][f"sha256-{subject[7:]}"]
    assert media_type == OCI_INDEX
    entries: list[dict[str, Any]] = json.loads(raw)["manifests"]
    return entries


# -- running copies -------------------------------------------------------------------------


def pair(*, src_api: bool = False, dst_api: bool = False) -> tuple[
        ReferrersRegistry, ReferrersRegistry, Callable[[httpx.Request], httpx.Response]]:
    src = ReferrersRegistry("src.test", referrers_api=src_api)
    dst = ReferrersRegistry("dst.test", referrers_api=dst_api)
    return src, dst, route({"src.test": src.handle, "dst.test": dst.handle})


def copy(handler: Callable[[httpx.Request], httpx.Response], source: str = "src.test/app:v1",
         dest: str = "dst.test/app", **options: Any) -> CopyResult:
    async def go() -> CopyResult:
        async with Registries(None, INSECURE, transport=plain_http(handler, INSECURE)) as regs:
            copier = Copier(regs, CopyOptions(retry=FAST, **options))
            return await copier.copy(parse_reference(source), parse_repository(dest), ["v1"])

    return asyncio.run(go())


@pytest.fixture(autouse=True)
def no_settle(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(referrers_index, "SETTLE_SECONDS", 0.0)


# -- the referrers API ----------------------------------------------------------------------


def test_api_to_api_registry_writes_no_fallback_tag() -> None:
    src, dst, handler = pair(src_api=True, dst_api=True)
    image = src.push_image("app", [os.urandom(256)], tag="v1")
    sbom = push_artifact(src, "app", image, SBOM)

    result = copy(handler)

    assert result.ok, result.error
    assert result.stats.referrers_copied == 1
    assert dst.manifests["app"][sbom] == src.manifests["app"][sbom]
    assert src.count("GET", rf"/referrers/{image}$") == 1
    assert not [t for t in dst.tags("app") if t.startswith("sha256-")]
    # The SBOM's PUT was answered with OCI-Subject, and the probe said the API is there.
    assert dst.count("GET", rf"/referrers/{image}$") == 1
    assert dst.count("PUT", r"/manifests/sha256-") == 0


def test_api_source_to_tagless_destination_writes_the_fallback_index() -> None:
    src, dst, handler = pair(src_api=True, dst_api=False)
    image = src.push_image("app", [os.urandom(256)], tag="v1")
    sbom = push_artifact(src, "app", image, SBOM)

    result = copy(handler)

    assert result.ok, result.error
    raw = src.manifests["app"][sbom][0]
    assert fallback_entries(dst, "app", image) == [{
        "mediaType": OCI_MANIFEST, "digest": sbom, "size": len(raw), "artifactType": SBOM,
        "annotations": {"org.opencontainers.image.created": "2024-01-01T00:00:00Z"}}]
    # The referrers index is written before the image's tag.
    puts = [r.url.path.rsplit("/", 1)[1] for r in dst.requests
            if r.method == "PUT" and "/manifests/" in r.url.path]
    assert puts.index(f"sha256-{image[7:]}") < puts.index("v1")


def test_one_type_filter_is_asked_of_the_registry_and_applied_again() -> None:
    src, dst, handler = pair(src_api=True)
    src.honour_filter = False  # the registry ignores artifactType: we must filter ourselves
    image = src.push_image("app", [os.urandom(256)], tag="v1")
    sbom = push_artifact(src, "app", image, SBOM)
    provenance = push_artifact(src, "app", image, PROVENANCE)

    result = copy(handler, referrer_types=(SBOM,))

    assert result.ok, result.error
    # Asked for the image, and then for the SBOM's own referrers.
    asked = [r for r in src.requests if "/referrers/" in r.url.path]
    assert [r.url.path.rsplit("/", 1)[1] for r in asked] == [image, sbom]
    assert {r.url.params.get("artifactType") for r in asked} == {SBOM}
    assert sbom in dst.manifests["app"] and provenance not in dst.manifests["app"]
    assert result.stats.referrers_copied == 1


def test_several_types_are_filtered_client_side() -> None:
    src, dst, handler = pair(src_api=True)
    image = src.push_image("app", [os.urandom(256)], tag="v1")
    kept = [push_artifact(src, "app", image, t) for t in (SBOM, PROVENANCE)]
    dropped = push_artifact(src, "app", image, NOTATION)

    result = copy(handler, referrer_types=(SBOM, PROVENANCE))

    assert result.ok, result.error
    asked = [r for r in src.requests if "/referrers/" in r.url.path]
    assert all("artifactType" not in r.url.params for r in asked)
    assert all(d in dst.manifests["app"] for d in kept) and dropped not in dst.manifests["app"]
    assert result.stats.referrers_copied == 2


# -- the tag schema, cosign tags, recursion -------------------------------------------------


def test_tag_schema_cosign_tags_and_a_signature_on_the_sbom() -> None:
    src, dst, handler = pair()
    image, children = push_index(src, "app")
    signature = push_cosign_signature(src, "app", image)
    sbom = push_artifact(src, "app", image, SBOM)
    put_fallback(src, "app", image, [sbom])
    sbom_signature = push_artifact(src, "app", sbom, NOTATION)
    put_fallback(src, "app", sbom, [sbom_signature])
    child_sbom = push_artifact(src, "app", children[1], SBOM)
    put_fallback(src, "app", children[1], [child_sbom])

    result = copy(handler)

    assert result.ok, result.error
    assert result.stats.referrers_copied == 4
    for digest in (signature, sbom, sbom_signature, child_sbom):
        assert dst.manifests["app"][digest] == src.manifests["app"][digest]
    sig_tag = f"sha256-{image[7:]}.sig"
    assert dst.manifests["app"][sig_tag] == src.manifests["app"][signature]
    assert [e["digest"] for e in fallback_entries(dst, "app", image)] == [sbom]
    assert [e["digest"] for e in fallback_entries(dst, "app", sbom)] == [sbom_signature]
    assert [e["digest"] for e in fallback_entries(dst, "app", children[1])] == [child_sbom]
    # One probe told us the source has no API, and one tag list served every manifest.
    assert src.count("GET", r"/referrers/") == 1
    assert src.count("GET", r"/tags/list$") == 1


def test_cosign_filter_rule() -> None:
    src, dst, handler = pair()
    image = src.push_image("app", [os.urandom(256)], tag="v1")
    signature = push_cosign_signature(src, "app", image)
    sbom = push_artifact(src, "app", image, SBOM)
    put_fallback(src, "app", image, [sbom])

    only_signatures = copy(handler, dest="dst.test/sigs", referrer_types=(SIMPLESIGNING,))
    only_sboms = copy(handler, dest="dst.test/sboms", referrer_types=(SBOM,))
    none = copy(handler, dest="dst.test/none", referrers=False)

    assert only_signatures.stats.referrers_copied == 1
    assert signature in dst.manifests["sigs"] and sbom not in dst.manifests["sigs"]
    assert only_sboms.stats.referrers_copied == 1
    assert sbom in dst.manifests["sboms"] and signature not in dst.manifests["sboms"]
    assert none.ok and none.stats.referrers_copied == 0
    assert sorted(dst.manifests["none"]) == sorted([image, "v1"])


def test_artifact_copied_alone_is_indexed_under_its_subject() -> None:
    src, dst, handler = pair()
    image = src.push_image("app", [os.urandom(256)], tag="v1")
    sbom = push_artifact(src, "app", image, SBOM)

    result = copy(handler, source=f"src.test/app@{sbom}")

    assert result.ok, result.error
    assert [e["digest"] for e in fallback_entries(dst, "app", image)] == [sbom]


def test_a_cycle_through_cosign_tags_ends() -> None:
    src, dst, handler = pair()
    image = src.push_image("app", [os.urandom(256)], tag="v1")
    signature = push_cosign_signature(src, "app", image)
    # A tag that makes the image the "signature" of its own signature.
    src.manifests["app"][f"sha256-{signature[7:]}.sig"] = src.manifests["app"][image]

    result = copy(handler)

    assert result.ok, result.error
    assert result.stats.referrers_copied == 2
    assert dst.manifests["app"][f"sha256-{signature[7:]}.sig"] == src.manifests["app"][image]


def test_a_referrer_that_cannot_be_copied_fails_the_destination_before_its_tags() -> None:
    src, dst, handler = pair()
    image = src.push_image("app", [os.urandom(256)], tag="v1")
    signature = push_cosign_signature(src, "app", image)
    layer = json.loads(src.manifests["app"][signature][0])["layers"][0]["digest"]
    del src.blobs["app"][layer]

    result = copy(handler)

    assert not result.ok
    assert isinstance(result.error, NotFound) and not result.error.transient
    assert image in dst.manifests["app"] and "v1" not in dst.manifests["app"]


def test_transient_failures_are_retried() -> None:
    src, dst, handler = pair()
    image = src.push_image("app", [os.urandom(256)], tag="v1")
    signature = push_cosign_signature(src, "app", image)
    failures = {"tags": 1}

    def flaky(request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/tags/list") and failures["tags"]:
            failures["tags"] -= 1
            return error(503, "UNAVAILABLE")
        return handler(request)

    result = copy(flaky)

    assert result.ok, result.error
    assert signature in dst.manifests["app"]
    assert failures["tags"] == 0  # the 503 was served, then the retry succeeded
    assert src.count("GET", r"/tags/list$") == 1


# -- the destination's fallback index -------------------------------------------------------


def test_merge_keeps_what_is_there_and_skips_the_put_when_nothing_is_new() -> None:
    src, dst, handler = pair()
    image = src.push_image("app", [os.urandom(256)], tag="v1")
    sbom = push_artifact(src, "app", image, SBOM)
    put_fallback(src, "app", image, [sbom])
    # Someone else's referrer, already listed at the destination, with an annotation of its own.
    dst.push_image("app", [b"x"])
    unrelated = push_artifact(dst, "app", None, NOTATION)
    unrelated_entry = {**descriptor(dst, "app", unrelated), "artifactType": NOTATION,
                       "annotations": {"who": "someone else"}}
    dst.put_manifest("app", json.dumps({
        "schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": [unrelated_entry],
        "annotations": {"kept": "yes"}}).encode(), OCI_INDEX, f"sha256-{image[7:]}")

    first = copy(handler)
    puts = dst.count("PUT", rf"/manifests/sha256-{image[7:]}$")
    second = copy(handler)

    assert first.ok and second.ok, (first.error, second.error)
    entries = fallback_entries(dst, "app", image)
    assert entries[0] == unrelated_entry
    assert [e["digest"] for e in entries] == [unrelated, sbom]
    raw = dst.manifests["app"][f"sha256-{image[7:]}"][0]
    assert json.loads(raw)["annotations"] == {"kept": "yes"}
    assert puts == 1
    assert dst.count("PUT", rf"/manifests/sha256-{image[7:]}$") == 1  # second run: no PUT


def clobbering(dst: ReferrersRegistry, handler: Callable[[httpx.Request], httpx.Response],
               tag: str, times: int) -> Callable[[httpx.Request], httpx.Response]:
    """After our PUT of ``tag``, a concurrent writer's stale PUT lands: only its entry stays."""
    other = push_artifact(dst, "app", None, NOTATION)
    stale = json.dumps({"schemaVersion": 2, "mediaType": OCI_INDEX,
                        "manifests": [{**descriptor(dst, "app", other),
                                       "artifactType": NOTATION}]}).encode()
    left = {"n": times}

    def serve(request: httpx.Request) -> httpx.Response:
        response = handler(request)
        if (request.method == "PUT" and request.url.path.endswith(f"/manifests/{tag}")
                and left["n"]):
            left["n"] -= 1
            dst.put_manifest("app", stale, OCI_INDEX, tag)
        return response

    return serve


def test_a_lost_update_is_merged_again() -> None:
    src, dst, handler = pair()
    image = src.push_image("app", [os.urandom(256)], tag="v1")
    sbom = push_artifact(src, "app", image, SBOM)
    put_fallback(src, "app", image, [sbom])
    tag = f"sha256-{image[7:]}"

    result = copy(clobbering(dst, handler, tag, times=1))

    assert result.ok, result.error
    assert {e["digest"] for e in fallback_entries(dst, "app", image)} >= {sbom}
    assert len(fallback_entries(dst, "app", image)) == 2  # the other writer's entry too
    assert dst.count("PUT", rf"/manifests/{tag}$") == 2


def test_endless_contention_is_a_transient_failure() -> None:
    src, dst, handler = pair()
    image = src.push_image("app", [os.urandom(256)], tag="v1")
    sbom = push_artifact(src, "app", image, SBOM)
    put_fallback(src, "app", image, [sbom])
    tag = f"sha256-{image[7:]}"

    result = copy(clobbering(dst, handler, tag, times=1000))

    assert isinstance(result.error, TransientError)
    assert dst.count("PUT", rf"/manifests/{tag}$") == referrers_index.MERGE_ATTEMPTS
    assert "v1" not in dst.manifests["app"]


def test_a_fallback_tag_holding_an_image_is_not_overwritten() -> None:
    src, dst, handler = pair()
    image = src.push_image("app", [os.urandom(256)], tag="v1")
    sbom = push_artifact(src, "app", image, SBOM)
    put_fallback(src, "app", image, [sbom])
    dst.push_image("app", [b"squatter"], tag=f"sha256-{image[7:]}")

    result = copy(handler)

    assert isinstance(result.error, InvalidManifest)
    assert "refusing to overwrite" in str(result.error)


# -- listings -------------------------------------------------------------------------------


def listing(reg: ReferrersRegistry, call: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    async def go() -> Any:
        async with Registries(None, INSECURE, transport=plain_http(reg.handle, INSECURE)) as regs:
            return await call(regs.client(reg.host), *args, **kwargs)

    return asyncio.run(go())


def test_referrers_get_follows_pages_and_rejects_non_indexes() -> None:
    reg = ReferrersRegistry("src.test", referrers_api=True)
    image = reg.push_image("app", [b"a"])
    first, second = (push_artifact(reg, "app", image, t) for t in (SBOM, PROVENANCE))
    pages = {"n": 0}

    def paged(request: httpx.Request) -> httpx.Response:
        if "/referrers/" not in request.url.path:
            return reg.handle(request)
        pages["n"] += 1
        response = reg.handle(request)
        doc = json.loads(response.content)
        index = 0 if "page" not in request.url.params else 1
        doc["manifests"] = [doc["manifests"][index]]
        headers = {"Content-Type": OCI_INDEX}
        if index == 0:
            headers["Link"] = f'<{request.url.path}?page=2>; rel="next"'
        return httpx.Response(200, headers=headers, content=json.dumps(doc).encode())

    async def go(handler: Callable[[httpx.Request], httpx.Response]) -> Any:
        async with Registries(None, INSECURE, transport=plain_http(handler, INSECURE)) as regs:
            return await referrers_get(regs.client("src.test"), "app", image)

    found = asyncio.run(go(paged))
    assert {d.digest for d in found} == {first, second} and pages["n"] == 2

    def not_an_index(request: httpx.Request) -> httpx.Response:
        if "/referrers/" in request.url.path:
            return httpx.Response(200, headers={"Content-Type": OCI_MANIFEST},
                                  content=reg.manifests["app"][image][0])
        return reg.handle(request)

    with pytest.raises(InvalidManifest):
        asyncio.run(go(not_an_index))


# -- what referrers cost when there are none ------------------------------------------------


@pytest.mark.parametrize("api", [True, False])
def test_an_image_without_referrers_costs_one_request_per_manifest_at_most(api: bool) -> None:
    src, dst, handler = pair(src_api=api)
    push_index(src, "app")
    manifests = 3  # the index and its two children

    counts = {}
    for on in (True, False):
        before_src, before_dst = len(src.requests), len(dst.requests)
        result = copy(handler, dest=f"dst.test/app-{str(on).lower()}", referrers=on)
        assert result.ok, result.error
        counts[on] = (len(src.requests) - before_src) + (len(dst.requests) - before_dst)

    extra = counts[True] - counts[False]
    # The API answers per manifest; without it one 404 decides. Plus one tag list.
    assert extra == (manifests + 1 if api else 2)
    assert extra <= manifests + 1
    assert dst.count("GET", r"/referrers/") == 0  # nothing to index: the destination is not asked
