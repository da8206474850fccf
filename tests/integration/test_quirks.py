"""One hosted-registry quirk at a time, through the real CLI: chunked uploads under each
registry's rules, tokens that die mid-copy, challenges that are not repeated, 403 for 404,
projects that do not exist, rate limits without Retry-After."""

from __future__ import annotations

import secrets
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.support import images
from tests.support.quirks import profiles
from tests.support.quirks.auth import BearerAuth
from tests.support.quirks.harness import (
    MiB,
    Release,
    copy,
    explain,
    explained,
    push_multiarch,
    push_release,
)
from tests.support.quirks.manifests import RateLimit
from tests.support.quirks.profiles import Profile
from tests.support.quirks.proxy import QuirkProxy
from tests.support.quirks.uploads import Throttle
from tests.support.registries import RegistryServer, start_registry
from tests.support.signing import walk

pytestmark = pytest.mark.integration

UPLOADS = r"/blobs/uploads/"
StartProxy = Callable[[RegistryServer, Profile], QuirkProxy]


@pytest.fixture(scope="module")
def plain(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RegistryServer]:
    server = start_registry(tmp_path_factory.mktemp("quirks") / "plain")
    yield server
    server.close()


@pytest.fixture(scope="module")
def release(plain: RegistryServer) -> Release:
    """Two platforms over an 11 MiB layer: enough bytes for several chunks."""
    return push_release(plain, "acme/app", platforms=(("linux", "amd64"), ("linux", "arm64")))


@pytest.fixture
def proxies() -> Iterator[StartProxy]:
    started: list[QuirkProxy] = []

    def start(behind: RegistryServer, profile: Profile) -> QuirkProxy:
        proxy = QuirkProxy(behind.url, profile).start()
        started.append(proxy)
        return proxy

    yield start
    for proxy in started:
        proxy.stop()


def _patches(proxy: QuirkProxy) -> list[int]:
    return [s.length or 0 for s in proxy.requests("PATCH", UPLOADS)]


CHUNKED: dict[str, tuple[Callable[[], Profile], str]] = {
    # ECR answers each PATCH 201; chunks of 5 MiB meet its minimum.
    "ecr-patch-201": (profiles.ecr, "5M"),
    # ACR takes Content-Range as start-end only.
    "acr-content-range": (profiles.acr, "4M"),
    # Quay wants Content-Range start-end at the upload's offset.
    "quay-content-range": (profiles.quay, "4M"),
    # distribution 3 checks the range against the offset and the length.
    "distribution3-content-range": (profiles.distribution3, "4M"),
}


@pytest.mark.parametrize("case", sorted(CHUNKED))
def test_forced_chunks_follow_the_registry_rules(
    case: str, release: Release, fresh_registry: Callable[..., RegistryServer],
    proxies: StartProxy, tmp_path: Path,
) -> None:
    make, chunk = CHUNKED[case]
    behind = fresh_registry()
    proxy = proxies(behind, make())

    run = copy(tmp_path, release.image.reference, [f"{proxy.host}/acme/app:v1"],
               proxies=[proxy], env={"FANOUT_CHUNK_SIZE": chunk})

    why = explain(run, proxy)
    print(why)
    assert run.result.returncode == 0, why
    with explained(why):
        assert len(_patches(proxy)) >= 3, "the 11 MiB layer did not go in chunks"
        refused = [s for s in proxy.requests("PATCH", UPLOADS) if s.status not in (201, 202)]
        assert not refused, "a chunk was refused"
        if case == "ecr-patch-201":
            assert proxy.count("PATCH", UPLOADS, status=201) >= 3
        assert walk(behind, "acme/app", [release.image.digest]) == walk(
            release.server, release.repo, [release.image.digest])


def test_ghcr_416_teaches_the_chunk_bound(
    release: Release, fresh_registry: Callable[..., RegistryServer], proxies: StartProxy,
    tmp_path: Path,
) -> None:
    behind = fresh_registry()
    proxy = proxies(behind, profiles.ghcr())

    run = copy(tmp_path, release.image.reference, [f"{proxy.host}/acme/app:v1"],
               proxies=[proxy], env={"FANOUT_CHUNK_SIZE": "8M"})

    why = explain(run, proxy)
    print(why)
    assert run.result.returncode == 0, why
    with explained(why):
        patches = proxy.requests("PATCH", UPLOADS)
        refused = [i for i, s in enumerate(patches) if s.status == 416]
        assert 1 <= len(refused) <= 4, "GHCR's 4 MiB bound was hit more than a blob or two"
        later = [s.length or 0 for s in patches[refused[-1] + 1:]]
        assert later and max(later) <= 4 * MiB, f"chunks after the last 416: {later}"
        assert walk(behind, "acme/app", [release.image.digest]) == walk(
            release.server, release.repo, [release.image.digest])


def test_artifact_registry_refusing_chunks_gets_whole_blobs(
    release: Release, fresh_registry: Callable[..., RegistryServer], proxies: StartProxy,
    tmp_path: Path,
) -> None:
    behind = fresh_registry()
    proxy = proxies(behind, profiles.artifact_registry())

    run = copy(tmp_path, release.image.reference, [f"{proxy.host}/acme/app:v1"],
               proxies=[proxy], env={"FANOUT_CHUNK_SIZE": "5M"})

    why = explain(run, proxy)
    print(why)
    assert run.result.returncode == 0, why
    with explained(why):
        assert proxy.count("PATCH", UPLOADS, status=405) <= 4
        whole = [s for s in proxy.requests("PUT", UPLOADS, status=201)
                 if (s.length or 0) > 10 * MiB]
        assert whole, "the 11 MiB layer never went in one PUT"
        assert walk(behind, "acme/app", [release.image.digest]) == walk(
            release.server, release.repo, [release.image.digest])


@pytest.mark.parametrize("name", ["gitlab", "artifact-registry"])
def test_token_that_dies_mid_blob_is_renewed(
    name: str, release: Release, fresh_registry: Callable[..., RegistryServer],
    proxies: StartProxy, tmp_path: Path,
) -> None:
    """Tokens said to live 60 s die after 2 s; the 11 MiB PUT takes about 3 s, so the token it
    started with is dead when it ends. Artifact Registry answers the next request 401 without a
    challenge (only /v2/ has one), so the client must reuse the /v2/ challenge."""
    if name == "gitlab":
        profile = profiles.gitlab(lifetime=2.0, upload_rate=4 * MiB)
    else:
        profile = profiles.artifact_registry(lifetime=2.0).with_behaviours(Throttle(4 * MiB))
    behind = fresh_registry()
    proxy = proxies(behind, profile)
    auth = proxy.behaviour(BearerAuth)

    run = copy(tmp_path, release.image.tagged_reference or "", [f"{proxy.host}/acme/app"],
               proxies=[proxy])

    why = explain(run, proxy)
    print(why)
    assert not run.leaked(), f"a password appears in fanout's output{why}"
    assert run.result.returncode == 0, why
    with explained(why):
        big_puts = [s for s in proxy.requests("PUT", UPLOADS) if (s.length or 0) > 10 * MiB]
        assert big_puts and big_puts[-1].done is not None
        assert big_puts[-1].done - big_puts[-1].time > 2.0, "the big PUT outran the token"
        expired = [r for r in auth.rejected if r.reason == "expired"]
        assert expired, "no request ever came with a dead token"
        assert walk(behind, "acme/app", release.roots) == walk(
            release.server, release.repo, release.roots)


def test_artifactory_403_for_a_missing_manifest_means_absent(
    plain: RegistryServer, fresh_registry: Callable[..., RegistryServer], proxies: StartProxy,
    tmp_path: Path,
) -> None:
    image = push_multiarch(plain, f"acme/small-{secrets.token_hex(3)}")
    behind = fresh_registry()
    proxy = proxies(behind, profiles.artifactory())

    run = copy(tmp_path, image.tagged_reference or "", [f"{proxy.host}/acme/app"],
               proxies=[proxy])

    why = explain(run, proxy)
    print(why)
    assert run.result.returncode == 0, why
    with explained(why):
        assert proxy.count("HEAD", r"/manifests/", status=403) >= 1
        assert walk(behind, "acme/app", [image.digest]) == walk(plain, image.repository,
                                                                 [image.digest])


def test_harbor_missing_project_fails_for_good_with_its_reason(
    plain: RegistryServer, fresh_registry: Callable[..., RegistryServer], proxies: StartProxy,
    tmp_path: Path,
) -> None:
    image = push_multiarch(plain, f"acme/small-{secrets.token_hex(3)}")
    behind = fresh_registry()
    proxy = proxies(behind, profiles.harbor(projects=("acme",)))
    present, missing = f"{proxy.host}/acme/app", f"{proxy.host}/ghost/app"

    run = copy(tmp_path, image.tagged_reference or "", [present, missing], proxies=[proxy])

    why = explain(run, proxy)
    print(why)
    assert run.result.returncode == 1, why
    with explained(why):
        assert run.row(present)["status"] == "succeeded"
        row = run.row(missing)
        assert row["status"] == "failed" and row["error"]["transient"] is False
        assert "project ghost not found" in row["error"]["message"]
        assert proxy.count(path=r"^/v2/ghost/", status=401) <= 8
        assert proxy.count("PUT", r"^/v2/ghost/app/manifests/") == 0
        assert images.list_tags(behind, "ghost/app") == []


def test_quay_429_without_retry_after_backs_off(
    plain: RegistryServer, fresh_registry: Callable[..., RegistryServer], proxies: StartProxy,
    tmp_path: Path,
) -> None:
    image = push_multiarch(plain, f"acme/small-{secrets.token_hex(3)}")
    behind = fresh_registry()
    proxy = proxies(behind, profiles.quay())
    limit = proxy.behaviour(RateLimit)
    limit.script(3)  # the next three manifest reads at Quay: 429, an HTML page, no Retry-After

    run = copy(tmp_path, image.tagged_reference or "", [f"{proxy.host}/acme/app"],
               proxies=[proxy])

    why = explain(run, proxy)
    print(why)
    assert run.result.returncode == 0, why
    with explained(why):
        assert len(limit.limited) == 3
        seen = proxy.seen
        for hit in limit.limited:
            later = [s for s in seen if s.time > hit.time and s.path == hit.path]
            assert later, "the limited request was never retried"
            assert later[0].time - hit.time >= 0.25, "retried at once after a 429"
        assert walk(behind, "acme/app", [image.digest]) == walk(plain, image.repository,
                                                                 [image.digest])
