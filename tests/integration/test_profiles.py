"""Hosted registries, as the quirk proxy reproduces them, end to end through the real CLI.

Every profile takes the same release (a three-platform index over an 11 MiB layer, a cosign
``.sig`` tag and an SBOM referrer) copied in one run to two of its repositories, so a mount is
asked for; the result is checked on the registry behind the proxy. Then: sources behind
profiles (a rate-limited Docker Hub, an ECR whose SBOM exists only in its referrers API), the
two failures that must fail for good at once with the registry's reason, other destinations
unaffected, and each registry's immutable tags: moved, they fail at once; already there, they
cost nothing.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable
from pathlib import Path

import pytest

from registry.options import DEFAULT_BLOB_CONCURRENCY
from tests.support import images
from tests.support.oci import fallback_tag
from tests.support.quirks import profiles
from tests.support.quirks.harness import (
    STANDARD,
    UPLOADS,
    Release,
    StartProxy,
    assert_release_at,
    assert_same_graph,
    copy,
    push_multiarch,
)
from tests.support.quirks.manifests import DockerHubRateLimit
from tests.support.quirks.profiles import Profile
from tests.support.quirks.referrers import ReferrersAPI
from tests.support.registries import RegistryServer
from tests.support.signing import SBOM_TYPE, referrers_index
from tests.support.skopeo import skopeo_digest

pytestmark = pytest.mark.integration


@pytest.mark.parametrize("name", sorted(STANDARD))
def test_release_lands_in_two_repositories(
    name: str, release: Release, proxies: StartProxy, tmp_path: Path,
) -> None:
    profile = STANDARD[name]()
    behind, proxy = proxies(profile)
    destinations = [f"{proxy.host}/acme/app", f"{proxy.host}/acme/mirror"]

    run = copy(tmp_path, release.image.tagged_reference or "", destinations, proxies=[proxy])

    with run.expect(0):
        for destination in destinations:
            row = run.row(destination)
            assert (row["status"], row["digest"], row["tags"]) == (
                "succeeded", release.image.digest, ["v1"])
            assert row["referrers_copied"] >= 2  # the signature and the SBOM
        for repo in ("acme/app", "acme/mirror"):
            # Harbor's API answers application/json: using it or the tags is the engine's call.
            assert_release_at(behind, repo, release, proxy, api=profile.referrers_api,
                              strict_tags=name != "harbor")
        assert skopeo_digest(f"{behind.host}/acme/app:v1") == release.image.digest
        # Two repositories of one registry: the second gets the blobs by mount, or asks to.
        assert proxy.count("POST", UPLOADS, query=r"(^|&)mount=") >= 1, "no mount was asked"
        # GitLab's short tokens may or may not die within this short copy (it depends on the
        # machine's speed); test_quirks.py::test_token_that_dies_mid_blob_is_renewed makes one
        # die mid-blob on purpose.


@pytest.mark.parametrize("retry_after", [1.0, None], ids=["retry-after", "no-retry-after"])
def test_rate_limited_docker_hub_source(
    retry_after: float | None, plain: RegistryServer, proxies: StartProxy, tmp_path: Path,
) -> None:
    behind, proxy = proxies(profiles.docker_hub())
    image = push_multiarch(behind, "library/app")
    limit = proxy.behaviour(DockerHubRateLimit)
    limit.script(2, retry_after=retry_after)  # the first two manifest requests get 429
    target = f"mirror/hub-{secrets.token_hex(3)}"

    run = copy(tmp_path, f"{proxy.host}/library/app:v1", [f"{plain.host}/{target}"],
               proxies=[proxy])

    with run.expect(0):
        assert len(limit.limited) == 2
        seen = proxy.seen
        for hit in limit.limited:
            later = [s for s in seen if s.time > hit.time]
            assert later, "nothing was asked after a 429"
            gap = later[0].time - hit.time
            if retry_after is not None:
                # Retry-After covers the registry: nothing at all is sent before it is up.
                assert gap >= 0.9 * retry_after, f"next request {gap:.2f}s after a 429"
            else:
                assert gap >= 0.25, f"retried {gap:.2f}s after a 429 without Retry-After"
        assert_same_graph(plain, target, behind, "library/app", [image.digest])


def test_referrer_only_in_ecr_api_reaches_ghcr_as_fallback_index(
    proxies: StartProxy, tmp_path: Path,
) -> None:
    source_behind, ecr = proxies(profiles.ecr(existing={"acme/app"}))
    image = push_multiarch(source_behind, "acme/app")
    # Pushed through ECR: the SBOM is findable through its referrers API only.
    sbom = images.push_artifact(ecr.server(source_behind), "acme/app", image,
                                artifact_type=SBOM_TYPE, blob_media_type=SBOM_TYPE)
    assert ecr.behaviour(ReferrersAPI).referrers("acme/app", image.digest)
    assert fallback_tag(image.digest) not in images.list_tags(source_behind, "acme/app")
    behind, ghcr = proxies(profiles.ghcr())

    run = copy(tmp_path, f"{ecr.host}/acme/app:v1", [f"{ghcr.host}/acme/app"],
               proxies=[ecr, ghcr])

    with run.expect(0):
        assert run.row(f"{ghcr.host}/acme/app")["referrers_copied"] >= 1
        assert ecr.count("GET", r"/referrers/", status=200) >= 1
        assert images.get_manifest(behind, f"acme/app@{sbom.digest}")[0] == sbom.manifest
        entries = referrers_index(behind, "acme/app", image.digest)
        assert [(e["digest"], e.get("artifactType")) for e in entries] == [
            (sbom.digest, SBOM_TYPE)]
        assert_same_graph(behind, "acme/app", source_behind, "acme/app",
                          [image.digest, sbom.digest])


def test_ecr_missing_repository_fails_at_once_with_its_reason(
    release: Release, proxies: StartProxy, tmp_path: Path,
) -> None:
    behind, proxy = proxies(profiles.ecr(existing={"acme/app"}))
    present, missing = f"{proxy.host}/acme/app", f"{proxy.host}/acme/missing"

    run = copy(tmp_path, release.image.tagged_reference or "", [present, missing],
               proxies=[proxy])

    with run.expect(1):
        assert run.row(present)["status"] == "succeeded"
        assert_release_at(behind, "acme/app", release, proxy, api=True)
        row = run.row(missing)
        assert row["status"] == "failed"
        error = row["error"]
        assert ("The repository with name 'acme/missing' does not exist in the registry with id "
                "'123456789012'") in error["message"]
        assert "NAME_UNKNOWN" in error["codes"] and error["transient"] is False
        # For good, at once: no manifest PUT, no upload retried, none opened after the
        # refusal (only the transfers already in flight, one per blob slot, asked).
        assert proxy.count("PUT", r"^/v2/acme/missing/manifests/") == 0
        posts = proxy.count("POST", r"^/v2/acme/missing/blobs/uploads/")
        assert posts <= DEFAULT_BLOB_CONCURRENCY
        # Besides, only HEADs, none asked twice: every blob of a manifest is asked at once,
        # and the referrers' graphs beside the image's, so they are not all cancelled unasked.
        heads = [s.path for s in proxy.requests("HEAD", r"^/v2/acme/missing/")]
        assert len(heads) == len(set(heads)), "a HEAD was asked again"
        assert proxy.count(path=r"^/v2/acme/missing/") == len(heads) + posts


def test_quay_refuses_oci_index_of_docker_manifests_for_good(
    plain: RegistryServer, proxies: StartProxy, tmp_path: Path,
) -> None:
    image = push_multiarch(plain, "acme/docker-kids", docker=True)
    behind, proxy = proxies(profiles.quay())
    quay, other = f"{proxy.host}/acme/app", f"{plain.host}/acme/quay-sibling"

    run = copy(tmp_path, image.tagged_reference or "", [quay, other], proxies=[proxy])

    with run.expect(1):
        assert run.row(other)["status"] == "succeeded"
        assert_same_graph(plain, "acme/quay-sibling", plain, "acme/docker-kids", [image.digest])
        row = run.row(quay)
        assert row["status"] == "failed"
        assert "MANIFEST_INVALID" in row["error"]["codes"] and row["error"]["transient"] is False
        index_puts = proxy.requests("PUT", rf"^/v2/acme/app/manifests/({image.digest}|v1)$")
        assert 1 <= len(index_puts) <= 2, f"{len(index_puts)} PUTs of the refused index"
        assert "v1" not in images.list_tags(behind, "acme/app")


# Every tag immutable, and the words of each registry's refusal (tests/support/quirks/tags.py).
IMMUTABLE: dict[str, tuple[Callable[[], Profile], str]] = {
    "ecr": (lambda: profiles.ecr(existing={"acme/app"}, immutable_tags=("*",)),
            "cannot be overwritten because the tag is immutable"),
    "harbor": (lambda: profiles.harbor(immutable_tags=("*",)), "configured as immutable"),
    "acr": (lambda: profiles.acr(immutable_tags=("*",)),
            "The operation is disallowed on this registry, repository or image"),
    "artifact-registry": (lambda: profiles.artifact_registry(immutable_tags=("*",)),
                          "immutable tags enabled"),
}
TAG_PUTS = r"^/v2/acme/app/manifests/v1$"


@pytest.mark.parametrize("name", sorted(IMMUTABLE))
def test_an_immutable_tag_on_another_digest_fails_at_once_with_what_to_do(
    name: str, plain: RegistryServer, proxies: StartProxy, tmp_path: Path,
) -> None:
    image = push_multiarch(plain, f"acme/imm-{name}")
    factory, words = IMMUTABLE[name]
    behind, proxy = proxies(factory())
    old = images.push_oci_image(behind, "acme/app", "v1", layers=1, layer_size=256)
    destination = f"{proxy.host}/acme/app"

    run = copy(tmp_path, image.tagged_reference or "", [destination], proxies=[proxy])

    with run.expect(1):
        row = run.row(destination)
        assert row["status"] == "failed"
        error = row["error"]
        assert (error["type"], error["transient"]) == ("TagImmutable", False)
        assert words in error["message"]  # the registry's own words
        assert (f"tag v1 at {destination} is immutable and names another digest "
                f"({old.digest})") in error["message"]
        assert "release under a new tag" in error["message"]
        # At once: one tag PUT, asked neither again nor by the task tier.
        assert proxy.count("PUT", TAG_PUTS) == 1
        # Everything but the tag landed, and the registry kept the tag where it was.
        assert_same_graph(behind, "acme/app", plain, f"acme/imm-{name}", [image.digest])
        assert images.get_manifest(behind, "acme/app:v1")[0] == old.manifest


@pytest.mark.parametrize("name", sorted(IMMUTABLE))
def test_an_immutable_tag_already_on_the_digest_succeeds_with_no_put(
    name: str, plain: RegistryServer, proxies: StartProxy, tmp_path: Path,
) -> None:
    image = push_multiarch(plain, f"acme/same-{name}")
    behind, proxy = proxies(IMMUTABLE[name][0]())
    destination = f"{proxy.host}/acme/app"
    first = copy(tmp_path, image.tagged_reference or "", [destination], proxies=[proxy])
    with first.expect(0):
        assert proxy.count("PUT", TAG_PUTS, status=201) == 1  # creating a tag: never refused
    proxy.reset_seen()

    again = copy(tmp_path, image.tagged_reference or "", [destination], proxies=[proxy])

    with again.expect(0):
        assert again.row(destination)["status"] == "succeeded"
        # ECR, Harbor and ACR refuse even a PUT of the digest the tag names: none is sent.
        assert proxy.count("PUT") == 0
        assert images.get_manifest(behind, "acme/app:v1")[0] == image.manifest
