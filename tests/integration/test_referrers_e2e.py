"""Referrers end to end on real registries (distribution 2.8: no referrers API, so the tag schema
and cosign tags), checked by walking the destination with the tests' own client and skopeo."""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from collections.abc import Sequence

import httpx
import pytest

from producer.cli import main as fanout
from registry.copy import Copier
from registry.options import CopyOptions
from registry.reference import Repository, parse_reference, parse_repository
from registry.results import CopyResult
from registry.retry import RetryPolicy
from registry.session import Registries
from tests.support import images
from tests.support.checks import assert_same_image
from tests.support.oci import fallback_tag
from tests.support.registries import RegistryServer, RegistrySet
from tests.support.registry_client import RepoClient
from tests.support.signing import (
    NOTATION_TYPE,
    SBOM_TYPE,
    SIMPLESIGNING,
    SignedRelease,
    push_referrers_index,
    push_signed_release,
    referrers_index,
)

FAST = RetryPolicy(attempts=3, initial=0.01, maximum=0.1, max_elapsed=10)


def copy_many(
    source: str, targets: Sequence[tuple[Repository, Sequence[str]]], *,
    transport: httpx.AsyncBaseTransport | None = None, **options: object,
) -> list[CopyResult]:
    async def go() -> list[CopyResult]:
        async with Registries(transport=transport) as registries:
            copier = Copier(registries, CopyOptions(retry=FAST, **options))  # type: ignore[arg-type]
            return await copier.copy_many(parse_reference(source), targets)

    return asyncio.run(go())


def assert_release_at(server: RegistryServer, repo: str, release: SignedRelease,
                      source: RegistryServer, *, skopeo: bool = False) -> None:
    """Everything of the release is at ``server/repo``, byte for byte, and findable."""
    sig_tag = release.signature.tag or ""
    with RepoClient.at(source, release.image.repository) as src, \
            RepoClient.at(server, repo) as dst:
        assert_same_image(
            src, dst, [r.digest for r in release.referrers],
            tags={"v1": release.image.digest, sig_tag: release.signature.digest},
            referrers={release.image.digest: [release.sbom],
                       release.sbom.digest: [release.sbom_signature]},
            skopeo=skopeo)


def test_a_signed_release_travels_to_two_destinations(
    registries: RegistrySet, unique_repo: str,
) -> None:
    release = push_signed_release(registries.source, unique_repo)
    dests = [registries.dest1, registries.dest2]

    results = copy_many(release.image.reference,
                        [(parse_repository(f"{d.host}/{unique_repo}"), ["v1"]) for d in dests])

    for server, result in zip(dests, results, strict=True):
        assert result.ok, result.error
        assert result.stats.referrers_copied == 3
        assert_release_at(server, unique_repo, release, registries.source,
                          skopeo=server is registries.dest1)


def test_a_signed_release_travels_through_the_cli(
    registries: RegistrySet, unique_repo: str, capsys: pytest.CaptureFixture[str],
) -> None:
    release = push_signed_release(registries.source, unique_repo)
    dest = registries.dest2
    target = f"{unique_repo}/cli"

    code = fanout(["copy", release.image.tagged_reference or "", f"{dest.host}/{target}",
                   "--json"])

    report = json.loads(capsys.readouterr().out)
    assert code == 0, report
    assert report["destinations"][0]["referrers_copied"] == 3
    assert_release_at(dest, target, release, registries.source)


def test_cli_no_referrers_and_type_filter(
    registries: RegistrySet, unique_repo: str, capsys: pytest.CaptureFixture[str],
) -> None:
    release = push_signed_release(registries.source, unique_repo)
    dest = registries.dest1
    source = release.image.reference

    def run(target: str, *flags: str) -> dict[str, object]:
        assert fanout(["copy", source, f"{dest.host}/{unique_repo}/{target}:v1", "--json",
                       *flags]) == 0
        row: dict[str, object] = json.loads(capsys.readouterr().out)["destinations"][0]
        return row

    def present(target: str, image: images.PushedImage) -> bool:
        return images.manifest_exists(dest, f"{unique_repo}/{target}@{image.digest}")

    assert run("none", "--no-referrers")["referrers_copied"] == 0
    assert not any(present("none", r) for r in release.referrers)
    assert images.list_tags(dest, f"{unique_repo}/none") == ["v1"]

    assert run("sbom", "--referrers-type", SBOM_TYPE)["referrers_copied"] == 1
    assert present("sbom", release.sbom)
    assert not present("sbom", release.signature) and not present("sbom", release.sbom_signature)
    assert sorted(images.list_tags(dest, f"{unique_repo}/sbom")) == sorted(
        ["v1", fallback_tag(release.image.digest)])

    assert run("both", "--referrers-type", SBOM_TYPE, "--referrers-type",
               NOTATION_TYPE)["referrers_copied"] == 2
    assert present("both", release.sbom) and present("both", release.sbom_signature)
    assert not present("both", release.signature)

    assert run("sig", "--referrers-type", SIMPLESIGNING)["referrers_copied"] == 1
    assert present("sig", release.signature) and not present("sig", release.sbom)


def test_an_unrelated_referrer_at_the_destination_is_kept(
    registries: RegistrySet, unique_repo: str,
) -> None:
    release = push_signed_release(registries.source, unique_repo)
    dest = registries.dest1
    # Someone attached their own referrer at the destination before the copy.
    theirs = images.push_artifact(dest, unique_repo, release.image,
                                  artifact_type="application/vnd.example.vex.v1+json")
    push_referrers_index(dest, unique_repo, release.image.digest, [theirs])

    [result] = copy_many(release.image.reference,
                         [(parse_repository(f"{dest.host}/{unique_repo}"), ["v1"])])

    assert result.ok, result.error
    entries = referrers_index(dest, unique_repo, release.image.digest)
    assert [e["digest"] for e in entries] == [theirs.digest, release.sbom.digest]
    assert entries[0] == {**theirs.descriptor(), "artifactType": theirs.artifact_type}


def test_concurrent_copies_of_different_referrers_all_land(
    registries: RegistrySet, unique_repo: str,
) -> None:
    source = registries.source
    image = images.push_oci_image(source, unique_repo, "v1", layers=1, layer_size=1024)
    kinds = [f"application/vnd.example.kind{i}.v1+json" for i in range(4)]
    artifacts = [images.push_artifact(source, unique_repo, image, artifact_type=kind)
                 for kind in kinds]
    push_referrers_index(source, unique_repo, image.digest, artifacts)
    target = parse_repository(f"{registries.dest2.host}/{unique_repo}")

    async def one(kind: str) -> CopyResult:
        # Separate engines, as separate workers would be: no state shared but the registry.
        async with Registries() as regs:
            copier = Copier(regs, CopyOptions(retry=FAST, referrer_types=(kind,)))
            return await copier.copy(parse_reference(image.reference), target, ["v1"])

    async def all_at_once() -> list[CopyResult]:
        return list(await asyncio.gather(*(one(kind) for kind in kinds)))

    results = asyncio.run(all_at_once())

    assert all(r.ok and r.stats.referrers_copied == 1 for r in results), results
    entries = referrers_index(registries.dest2, unique_repo, image.digest)
    assert sorted(e["digest"] for e in entries) == sorted(a.digest for a in artifacts)


class CountingTransport(httpx.AsyncBaseTransport):
    """Counts requests by kind on their way to the real network."""

    def __init__(self) -> None:
        self.inner = httpx.AsyncHTTPTransport()
        self.counts: Counter[str] = Counter()

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        path = request.url.path
        kind = next((k for k in ("referrers", "tags/list", "manifests", "blobs") if
                     f"/{k}" in path), "other")
        self.counts[f"{request.method} {kind}"] += 1
        self.counts["total"] += 1
        return await self.inner.handle_async_request(request)

    async def aclose(self) -> None:
        await self.inner.aclose()


def test_an_image_without_referrers_costs_at_most_one_request_per_manifest(
    registries: RegistrySet, unique_repo: str,
) -> None:
    image = images.push_oci_index(registries.source, unique_repo, "v1", layer_size=1024)
    manifests = 1 + len(image.manifests)
    counted = {}
    for on in (True, False):
        transport = CountingTransport()
        target = parse_repository(f"{registries.dest1.host}/{unique_repo}/{'on' if on else 'off'}")
        [result] = copy_many(image.reference, [(target, ["v1"])], transport=transport,
                             referrers=on)
        assert result.ok and result.stats.referrers_copied == 0
        counted[on] = transport.counts

    extra = counted[True]["total"] - counted[False]["total"]
    print(f"\nno-referrer index of {manifests} manifests: {counted[False]['total']} requests "
          f"without referrers, {counted[True]['total']} with (+{extra}): "
          f"{dict(counted[True] - counted[False])}")
    assert extra <= manifests + 1  # one per manifest at most, plus the one tag list
    # On a registry without the API: one 404 decides for the run, and one tag list.
    assert counted[True] - counted[False] == Counter(
        {"total": 2, "GET referrers": 1, "GET tags/list": 1})
