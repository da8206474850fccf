"""One hosted-registry quirk at a time, through the real CLI: chunked uploads under each
registry's rules, tokens that die mid-copy, a token realm that refuses the OAuth2 POST,
challenges that are not repeated, 403 for 404, projects that do not exist, rate limits without
Retry-After."""

from __future__ import annotations

import itertools
import secrets
from collections.abc import Callable
from pathlib import Path

import pytest

from registry.options import DEFAULT_BLOB_CONCURRENCY
from tests.support import images
from tests.support.images import PushedImage
from tests.support.quirks import profiles
from tests.support.quirks.auth import BearerAuth
from tests.support.quirks.exchange import Seen
from tests.support.quirks.harness import (
    UPLOADS,
    MiB,
    Release,
    StartProxy,
    assert_same_graph,
    copy,
    push_multiarch,
)
from tests.support.quirks.manifests import RateLimit
from tests.support.quirks.profiles import Profile
from tests.support.quirks.proxy import QuirkProxy
from tests.support.quirks.uploads import ChunkMinimum, Throttle
from tests.support.registries import RegistryServer

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def small(plain: RegistryServer) -> PushedImage:
    """A two-platform index of small images: a quick copy."""
    return push_multiarch(plain, f"acme/small-{secrets.token_hex(3)}")


def _copied(behind: RegistryServer, release: Release, roots: list[str] | None = None) -> None:
    assert_same_graph(behind, "acme/app", release.server, release.repo,
                      roots or [release.image.digest])


def _patches(proxy: QuirkProxy) -> list[Seen]:
    return proxy.requests("PATCH", UPLOADS)


def _chunks_all_taken(proxy: QuirkProxy) -> None:
    """The 11 MiB layer went in chunks, none of them refused."""
    assert len(_patches(proxy)) >= 3, "the 11 MiB layer did not go in chunks"
    refused = [s for s in _patches(proxy) if s.status not in (201, 202)]
    assert not refused, "a chunk was refused"


def _ecr_answers_201(proxy: QuirkProxy) -> None:
    _chunks_all_taken(proxy)
    assert proxy.count("PATCH", UPLOADS, status=201) >= 3


def _ecr_teaches_its_minimum(proxy: QuirkProxy) -> None:
    """The chunk after a non-final part under 5 MiB is refused; the blob still lands, in parts
    of at least 5 MiB."""
    minimum = proxy.behaviour(ChunkMinimum).minimum
    uploads: dict[str, list[Seen]] = {}
    for patch in _patches(proxy):
        uploads.setdefault(patch.path, []).append(patch)
    refused_after_small = [
        s for parts in uploads.values() for before, s in itertools.pairwise(parts)
        if s.quirk == "chunk-minimum" and s.status == 400 and (before.length or 0) < minimum]
    assert refused_after_small, "no chunk was refused for following a part under 5 MiB"
    committed = {s.path for s in proxy.requests("PUT", UPLOADS, status=201)}
    for path in committed & uploads.keys():
        sizes = [s.length or 0 for s in uploads[path]]
        assert min(sizes[:-1], default=minimum) >= minimum, (
            f"a blob landed in parts {sizes}: under the minimum it was taught")


def _ghcr_teaches_its_maximum(proxy: QuirkProxy) -> None:
    """Chunks over 4 MiB are answered 416 a blob or two, then no chunk is over 4 MiB."""
    patches = _patches(proxy)
    refused = [i for i, s in enumerate(patches) if s.status == 416]
    assert 1 <= len(refused) <= 4, "GHCR's 4 MiB bound was hit more than a blob or two"
    later = [s.length or 0 for s in patches[refused[-1] + 1:]]
    assert later and max(later) <= 4 * MiB, f"chunks after the last 416: {later}"


def _artifact_registry_gets_whole_blobs(proxy: QuirkProxy) -> None:
    """PATCH refused a few times at most (by the uploads in flight when the first refusal
    came, one per blob slot), then the layer goes in one PUT."""
    assert proxy.count("PATCH", UPLOADS, status=405) <= DEFAULT_BLOB_CONCURRENCY
    whole = [s for s in proxy.requests("PUT", UPLOADS, status=201) if (s.length or 0) > 10 * MiB]
    assert whole, "the 11 MiB layer never went in one PUT"


CHUNKED: dict[str, tuple[Callable[[], Profile], str, Callable[[QuirkProxy], None]]] = {
    # ECR answers each PATCH 201; chunks of 5 MiB meet its minimum.
    "ecr-patch-201": (profiles.ecr, "5M", _ecr_answers_201),
    # 1 MiB chunks do not: ECR refuses the part after a small one.
    "ecr-chunk-minimum": (profiles.ecr, "1M", _ecr_teaches_its_minimum),
    # GHCR takes no PATCH over 4 MiB.
    "ghcr-chunk-maximum": (profiles.ghcr, "8M", _ghcr_teaches_its_maximum),
    # Artifact Registry takes no PATCH at all.
    "artifact-registry-no-chunks": (profiles.artifact_registry, "5M",
                                    _artifact_registry_gets_whole_blobs),
    # ACR takes Content-Range as start-end only.
    "acr-content-range": (profiles.acr, "4M", _chunks_all_taken),
    # Quay wants Content-Range start-end at the upload's offset.
    "quay-content-range": (profiles.quay, "4M", _chunks_all_taken),
    # distribution 3 checks the range against the offset and the length.
    "distribution3-content-range": (profiles.distribution3, "4M", _chunks_all_taken),
}


@pytest.mark.parametrize("case", sorted(CHUNKED))
def test_forced_chunks_follow_the_registry_rules(
    case: str, release: Release, proxies: StartProxy, tmp_path: Path,
) -> None:
    """``FANOUT_CHUNK_SIZE`` forces chunks; each registry's rule is met, or learnt from its
    refusals, and the release lands byte for byte."""
    make, chunk, rule_met = CHUNKED[case]
    behind, proxy = proxies(make())

    run = copy(tmp_path, release.image.reference, [f"{proxy.host}/acme/app:v1"],
               proxies=[proxy], env={"FANOUT_CHUNK_SIZE": chunk})

    with run.expect(0):
        rule_met(proxy)
        _copied(behind, release)


@pytest.mark.parametrize("name", ["gitlab", "artifact-registry"])
def test_token_that_dies_mid_blob_is_renewed(
    name: str, release: Release, proxies: StartProxy, tmp_path: Path,
) -> None:
    """Tokens said to live 60 s die after 2 s; the 11 MiB PUT takes about 3 s, so the token it
    started with is dead when it ends. Artifact Registry answers the next request 401 without a
    challenge (only /v2/ has one), so the client must reuse the /v2/ challenge."""
    if name == "gitlab":
        profile = profiles.gitlab(lifetime=2.0, upload_rate=4 * MiB)
    else:
        profile = profiles.artifact_registry(lifetime=2.0).with_behaviours(Throttle(4 * MiB))
    behind, proxy = proxies(profile)
    auth = proxy.behaviour(BearerAuth)

    run = copy(tmp_path, release.image.tagged_reference or "", [f"{proxy.host}/acme/app"],
               proxies=[proxy])

    with run.expect(0):
        big_puts = [s for s in proxy.requests("PUT", UPLOADS) if (s.length or 0) > 10 * MiB]
        assert big_puts and big_puts[-1].done is not None
        assert big_puts[-1].done - big_puts[-1].time > 2.0, "the big PUT outran the token"
        expired = [r for r in auth.rejected if r.reason == "expired"]
        assert expired, "no request ever came with a dead token"
        _copied(behind, release, release.roots)


def test_harbor_realm_refusing_the_refresh_grant_is_asked_with_get(
    small: PushedImage, plain: RegistryServer, proxies: StartProxy, tmp_path: Path,
) -> None:
    """The realm hands out a refresh token with the first token. The second repository needs a
    token of its own, asked for with an OAuth2 POST refresh grant, which Harbor's GET-only realm
    answers 405: then with GET, and the copy goes on."""
    behind, proxy = proxies(profiles.harbor(projects=("acme",), refresh_tokens=True))
    auth = proxy.behaviour(BearerAuth)
    realm = f"^{auth.realm_path}$"
    destinations = [f"{proxy.host}/acme/app", f"{proxy.host}/acme/mirror"]

    run = copy(tmp_path, small.tagged_reference or "", destinations, proxies=[proxy])

    with run.expect(0):
        posts = proxy.requests("POST", realm)
        assert posts, "no token was asked for with a POST refresh grant"
        assert all(p.status == 405 for p in posts), "Harbor's realm took a POST"
        gets = proxy.requests("GET", realm, status=200)
        assert any(g.time > posts[0].time for g in gets), "no GET after the POST's 405"
        assert all(g.method == "GET" for g in auth.grants)
        for repo in ("acme/app", "acme/mirror"):
            assert_same_graph(behind, repo, plain, small.repository, [small.digest])


def test_artifactory_403_for_a_missing_manifest_means_absent(
    small: PushedImage, plain: RegistryServer, proxies: StartProxy, tmp_path: Path,
) -> None:
    behind, proxy = proxies(profiles.artifactory())

    run = copy(tmp_path, small.tagged_reference or "", [f"{proxy.host}/acme/app"],
               proxies=[proxy])

    with run.expect(0):
        assert proxy.count("HEAD", r"/manifests/", status=403) >= 1
        assert_same_graph(behind, "acme/app", plain, small.repository, [small.digest])


def test_harbor_missing_project_fails_for_good_with_its_reason(
    small: PushedImage, proxies: StartProxy, tmp_path: Path,
) -> None:
    behind, proxy = proxies(profiles.harbor(projects=("acme",)))
    present, missing = f"{proxy.host}/acme/app", f"{proxy.host}/ghost/app"

    run = copy(tmp_path, small.tagged_reference or "", [present, missing], proxies=[proxy])

    with run.expect(1):
        assert run.row(present)["status"] == "succeeded"
        row = run.row(missing)
        assert row["status"] == "failed" and row["error"]["transient"] is False
        assert "project ghost not found" in row["error"]["message"]
        # Bounded, not retried on: each of the image's 4 blobs may have a mount and an upload
        # POST under way before the first refusal is known, each refused twice (once more with
        # a fresh token). Alone it is 4; on a busy machine more of them are already in flight.
        assert proxy.count(path=r"^/v2/ghost/", status=401) <= 16
        assert proxy.count("PUT", r"^/v2/ghost/app/manifests/") == 0
        assert images.list_tags(behind, "ghost/app") == []


def test_quay_429_without_retry_after_backs_off(
    small: PushedImage, plain: RegistryServer, proxies: StartProxy, tmp_path: Path,
) -> None:
    behind, proxy = proxies(profiles.quay())
    limit = proxy.behaviour(RateLimit)
    limit.script(3)  # the next three manifest reads at Quay: 429, an HTML page, no Retry-After

    run = copy(tmp_path, small.tagged_reference or "", [f"{proxy.host}/acme/app"],
               proxies=[proxy])

    with run.expect(0):
        assert len(limit.limited) == 3
        seen = proxy.seen
        for hit in limit.limited:
            later = [s for s in seen if s.time > hit.time and s.path == hit.path]
            assert later, "the limited request was never retried"
            assert later[0].time - hit.time >= 0.25, "retried at once after a 429"
        assert_same_graph(behind, "acme/app", plain, small.repository, [small.digest])
