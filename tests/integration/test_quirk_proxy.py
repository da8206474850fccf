"""The quirk proxy itself, in front of the module's plain registry, driven with plain httpx: each
profile's behaviours fire as documented, whatever fanout's engine does."""

from __future__ import annotations

import hashlib
import json
import time

import httpx
import pytest

from tests.support import images
from tests.support.quirks import QuirkProxy, ReferrersAPI, profiles
from tests.support.quirks.harness import MiB, push_multiarch
from tests.support.quirks.manifests import DockerHubRateLimit
from tests.support.quirks.profiles import Profile
from tests.support.quirks.tags import ImmutableTags
from tests.support.registries import RegistryServer

pytestmark = pytest.mark.integration

Auth = tuple[str, str]


@pytest.fixture(scope="module")
def index(plain: RegistryServer) -> images.PushedImage:
    return push_multiarch(plain, "acme/app")


def _proxy(plain: RegistryServer, profile: Profile) -> QuirkProxy:
    return QuirkProxy(plain.url, profile).start()


def _token(proxy: QuirkProxy, path: str, *scopes: str, auth: Auth | None = None) -> str:
    params = [("service", "x"), *(("scope", s) for s in scopes)]
    response = httpx.get(f"{proxy.url}{path}", params=params, auth=auth)
    assert response.status_code == 200, response.text
    token: str = response.json()["token"]
    return token


def _bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def _creds(profile: Profile) -> Auth:
    assert profile.username and profile.password
    return profile.username, profile.password


def _sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def test_ecr(plain: RegistryServer, index: images.PushedImage) -> None:
    profile = profiles.ecr(existing={"acme/app", "acme/copy"})
    with _proxy(plain, profile) as proxy, httpx.Client(base_url=proxy.url,
                                                         auth=_creds(profile)) as ecr:
        anonymous = httpx.get(f"{proxy.url}/v2/acme/app/tags/list")
        assert anonymous.status_code == 401
        assert anonymous.headers["www-authenticate"].startswith("Basic ")
        missing = ecr.post("/v2/acme/nope/blobs/uploads/")
        assert missing.status_code == 404
        assert missing.json()["errors"][0] == {"code": "NAME_UNKNOWN", "message": (
            "The repository with name 'acme/nope' does not exist in the registry with id "
            "'123456789012'")}
        assert ecr.get("/v2/acme/app/tags/list", params={"n": "1001"}).status_code == 400
        assert ecr.get("/v2/acme/app/tags/list", params={"n": "1000"}).status_code == 200
        # The mount is not honoured: a fresh upload, whose Location names the proxy.
        mount = ecr.post("/v2/acme/copy/blobs/uploads/",
                         params={"mount": index.blobs[0], "from": "acme/app"})
        assert mount.status_code == 202 and mount.headers["location"].startswith(proxy.url)
        location = mount.headers["location"]
        small = ecr.patch(location, content=b"x" * 1024, headers={"Content-Range": "0-1023"})
        assert small.status_code == 201  # not 202
        after_small = ecr.patch(small.headers["location"], content=b"y",
                                headers={"Content-Range": "1024-1024"})
        assert after_small.status_code == 400  # the 1 KiB chunk was not the last
        assert "5 MiB" in after_small.json()["errors"][0]["message"]
        # The referrers API: a manifest with a subject, put through the proxy, is listed.
        sbom = images.push_artifact(proxy.server(plain), "acme/app", index,
                                    artifact_type="application/spdx+json")
        listed = ecr.get(f"/v2/acme/app/referrers/{index.digest}")
        assert listed.headers["content-type"] == images.OCI_INDEX
        assert [m["digest"] for m in listed.json()["manifests"]] == [sbom.digest]
        assert listed.json()["manifests"][0]["artifactType"] == "application/spdx+json"
        filtered = ecr.get(f"/v2/acme/app/referrers/{index.digest}",
                           params={"artifactType": "application/other"})
        assert filtered.json()["manifests"] == []
        assert filtered.headers["oci-filters-applied"] == "artifactType"
        put = proxy.requests("PUT", rf"/manifests/{sbom.digest}")
        assert put and put[0].status == 201
        assert proxy.behaviour(ReferrersAPI).referrers("acme/app", index.digest)[0][
            "digest"] == sbom.digest


def test_ghcr(plain: RegistryServer, index: images.PushedImage) -> None:
    profile = profiles.ghcr()
    with _proxy(plain, profile) as proxy:
        ping = httpx.get(f"{proxy.url}/v2/")
        assert ping.status_code == 401 and 'realm="' in ping.headers["www-authenticate"]
        assert httpx.get(f"{proxy.url}/v2/acme/app/tags/list").status_code == 401
        anonymous = _token(proxy, "/token", "repository:acme/app:pull,push")
        tags = httpx.get(f"{proxy.url}/v2/acme/app/tags/list", headers=_bearer(anonymous))
        assert tags.status_code == 200  # an anonymous pull, with its no-op token
        push = httpx.post(f"{proxy.url}/v2/acme/app/blobs/uploads/", headers=_bearer(anonymous))
        assert push.status_code == 401
        assert 'error="insufficient_scope"' in push.headers["www-authenticate"]
        token = _token(proxy, "/token", "repository:acme/app:pull,push", auth=_creds(profile))
        start = httpx.post(f"{proxy.url}/v2/acme/app/blobs/uploads/", headers=_bearer(token))
        assert start.status_code == 202
        big = httpx.patch(start.headers["location"], content=b"z" * (4 * MiB + 1),
                          headers={**_bearer(token), "Content-Range": f"0-{4 * MiB}"})
        assert big.status_code == 416 and big.headers["range"] == "0-0"
        assert "4.00MiB" in big.json()["errors"][0]["message"]
        fits = httpx.patch(start.headers["location"], content=b"z" * MiB,
                           headers={**_bearer(token), "Content-Range": f"0-{MiB - 1}"})
        assert fits.status_code == 202
        referrers = httpx.get(f"{proxy.url}/v2/acme/app/referrers/{index.digest}",
                              headers=_bearer(token))
        assert referrers.status_code == 404


def test_docker_hub(plain: RegistryServer, index: images.PushedImage) -> None:
    profile = profiles.docker_hub()
    with _proxy(plain, profile) as proxy:
        both = _token(proxy, "/token", "repository:acme/app:pull",
                      "repository:acme/copy:pull,push", auth=_creds(profile))
        # Only the first scope was granted.
        post = httpx.post(f"{proxy.url}/v2/acme/copy/blobs/uploads/", headers=_bearer(both))
        assert post.status_code == 401
        url = f"{proxy.url}/v2/acme/app/manifests/{index.digest}"
        got = httpx.get(url, headers={**_bearer(both), "Accept": images.MANIFEST_ACCEPT})
        assert got.headers["ratelimit-limit"] == "100;w=21600"
        assert got.headers["ratelimit-remaining"] == "99;w=21600"
        proxy.behaviour(DockerHubRateLimit).script(2, retry_after=3)
        accept = {**_bearer(both), "Accept": images.MANIFEST_ACCEPT}
        limited = httpx.head(url, headers=accept)
        assert limited.status_code == 429 and limited.headers["retry-after"] == "3"
        limited = httpx.get(url, headers=accept)
        assert limited.json()["errors"][0]["code"] == "TOOMANYREQUESTS"
        assert httpx.head(url, headers=accept).status_code == 200


def test_artifact_registry(plain: RegistryServer, index: images.PushedImage) -> None:
    profile = profiles.artifact_registry()
    with _proxy(plain, profile) as proxy:
        ping = httpx.get(f"{proxy.url}/v2/")
        assert ping.headers["www-authenticate"] == f'Bearer realm="{proxy.url}/v2/token"'
        bare = httpx.get(f"{proxy.url}/v2/acme/app/tags/list")
        assert bare.status_code == 401 and "www-authenticate" not in bare.headers
        token = _token(proxy, "/v2/token", "repository:acme/app:pull,push", auth=_creds(profile))
        referrers = httpx.get(f"{proxy.url}/v2/acme/app/referrers/{index.digest}",
                              headers=_bearer(token), follow_redirects=True)
        assert referrers.status_code == 200
        assert referrers.headers["content-type"].startswith("text/html")
        start = httpx.post(f"{proxy.url}/v2/acme/app/blobs/uploads/", headers=_bearer(token))
        chunk = httpx.patch(start.headers["location"], content=b"a", headers=_bearer(token))
        assert chunk.status_code == 405 and chunk.json()["errors"][0]["code"] == "UNSUPPORTED"


def test_quay(plain: RegistryServer) -> None:
    profile = profiles.quay()
    with _proxy(plain, profile) as proxy:
        token = _token(proxy, "/v2/auth", "repository:acme/quay:pull,push", auth=_creds(profile))
        auth = _bearer(token)
        no_from = httpx.post(f"{proxy.url}/v2/acme/quay/blobs/uploads/",
                             params={"mount": "sha256:" + "a" * 64}, headers=auth)
        assert no_from.status_code == 400
        start = httpx.post(f"{proxy.url}/v2/acme/quay/blobs/uploads/", headers=auth)
        location = start.headers["location"]
        bytes_form = httpx.patch(location, content=b"abc",
                                 headers={**auth, "Content-Range": "bytes 0-2/*"})
        assert bytes_form.status_code == 400
        first = httpx.patch(location, content=b"abc", headers={**auth, "Content-Range": "0-2"})
        assert first.status_code == 202
        wrong = httpx.patch(first.headers["location"], content=b"d",
                            headers={**auth, "Content-Range": "5-5"})
        assert wrong.status_code == 416 and wrong.headers["range"] == "0-2"
        docker_kids = push_multiarch(plain, "acme/quay-src", docker=True)
        refused = httpx.put(f"{proxy.url}/v2/acme/quay/manifests/v1", content=docker_kids.manifest,
                            headers={**auth, "Content-Type": images.OCI_INDEX})
        assert refused.status_code == 400
        assert refused.json()["errors"][0]["code"] == "MANIFEST_INVALID"


def test_harbor(plain: RegistryServer, index: images.PushedImage) -> None:
    profile = profiles.harbor(projects=("acme",))
    with _proxy(plain, profile) as proxy:
        posted = httpx.post(f"{proxy.url}/service/token", data={
            "grant_type": "password", "username": profile.username, "password": profile.password,
            "service": "harbor-registry", "scope": "repository:acme/app:pull"})
        assert posted.status_code == 405
        token = _token(proxy, "/service/token", "repository:ghost/app:pull,push",
                       "repository:acme/app:pull", auth=_creds(profile))
        ghost = httpx.post(f"{proxy.url}/v2/ghost/app/blobs/uploads/", headers=_bearer(token))
        assert ghost.status_code == 401
        assert ghost.json()["errors"][0]["message"] == "project ghost not found"
        referrers = httpx.get(f"{proxy.url}/v2/acme/app/referrers/{index.digest}",
                              headers=_bearer(token))
        assert referrers.status_code == 200
        assert referrers.headers["content-type"] == "application/json"


def test_acr(plain: RegistryServer) -> None:
    profile = profiles.acr()
    with _proxy(plain, profile) as proxy:
        token = _token(proxy, "/oauth2/token", "repository:acme/acr:pull,push",
                       auth=_creds(profile))
        auth = _bearer(token)
        start = httpx.post(f"{proxy.url}/v2/acme/acr/blobs/uploads/", headers=auth)
        refused = httpx.patch(start.headers["location"], content=b"abc",
                              headers={**auth, "Content-Range": "bytes 0-2/*"})
        assert refused.status_code == 400
        assert refused.json()["errors"][0]["detail"]["Reason"] == (
            "the Content-Range header format is invalid")
        huge = json.dumps({"schemaVersion": 2, "pad": "x" * (4 * MiB)}).encode()
        too_big = httpx.put(f"{proxy.url}/v2/acme/acr/manifests/big", content=huge,
                            headers={**auth, "Content-Type": images.OCI_MANIFEST})
        assert too_big.status_code == 400


def test_gitlab_tokens_die_before_they_say(
        plain: RegistryServer, index: images.PushedImage) -> None:
    # ``index``: acme/app must exist there, whatever test of the module ran first.
    profile = profiles.gitlab(lifetime=0.5)
    with _proxy(plain, profile) as proxy:
        response = httpx.get(f"{proxy.url}/jwt/auth", auth=_creds(profile),
                             params={"scope": "repository:acme/app:pull"})
        assert response.json()["expires_in"] == 60
        url = f"{proxy.url}/v2/acme/app/tags/list"
        assert httpx.get(url, headers=_bearer(response.json()["token"])).status_code == 200
        time.sleep(0.6)
        stale = httpx.get(url, headers=_bearer(response.json()["token"]))
        assert stale.status_code == 401
        assert 'error="invalid_token"' in stale.headers["www-authenticate"]


def test_artifactory_distribution3_and_chunk_only(plain: RegistryServer) -> None:
    artifactory = profiles.artifactory()
    with _proxy(plain, artifactory) as proxy:
        token = _token(proxy, "/artifactory/api/docker/docker-local/v2/token",
                       "repository:acme/app:pull", auth=_creds(artifactory))
        head = httpx.head(f"{proxy.url}/v2/acme/app/manifests/nope", headers=_bearer(token))
        assert head.status_code == 403
    with _proxy(plain, profiles.distribution3()) as proxy:
        start = httpx.post(f"{proxy.url}/v2/acme/dist3/blobs/uploads/")
        mismatch = httpx.patch(start.headers["location"], content=b"abc",
                               headers={"Content-Range": "0-9"})
        assert mismatch.status_code == 400
        assert mismatch.json()["errors"][0]["code"] == "SIZE_INVALID"
        offset = httpx.patch(start.headers["location"], content=b"abc",
                             headers={"Content-Range": "3-5"})
        assert offset.status_code == 416
        assert offset.json()["errors"][0]["code"] == "RANGE_INVALID"
    with _proxy(plain, profiles.chunk_only()) as proxy:
        data = b"chunks only"
        start = httpx.post(f"{proxy.url}/v2/acme/chunky/blobs/uploads/")
        whole = httpx.put(f"{start.headers['location']}&digest={_sha(data)}", content=data)
        assert whole.status_code == 400
        assert httpx.post(f"{proxy.url}/v2/acme/chunky/blobs/uploads/",
                          params={"digest": _sha(data)}, content=data).status_code == 400
        chunk = httpx.patch(start.headers["location"], content=data,
                            headers={"Content-Range": f"0-{len(data) - 1}"})
        assert chunk.status_code == 202
        done = httpx.put(f"{chunk.headers['location']}&digest={_sha(data)}")
        assert done.status_code == 201


# Each registry with immutable tags: its answer to a tag moved, whether it refuses even the digest
# the tag names, and how a client gets push rights there (a token realm, or Basic for ECR).
IMMUTABLE = {
    "ecr": (profiles.ecr, 400, "TAG_INVALID", "cannot be overwritten because the tag is immutable",
            True, None),
    "harbor": (profiles.harbor, 412, "PRECONDITION", "configured as immutable", True,
               "/service/token"),
    "acr": (profiles.acr, 405, "REGISTRY_DISALLOWED_OPERATION",
            "The operation is disallowed on this registry, repository or image", True,
            "/oauth2/token"),
    "artifact-registry": (profiles.artifact_registry, 403, "DENIED", "immutable tags", False,
                          "/v2/token"),
}


@pytest.mark.parametrize("name", sorted(IMMUTABLE))
def test_immutable_tags(name: str, plain: RegistryServer) -> None:
    factory, status, code, words, same_refused, realm = IMMUTABLE[name]
    profile = factory(immutable_tags=("v*",))
    repo = f"acme/imm-{name}"
    old = images.push_oci_image(plain, repo, "v1", layers=1, layer_size=256)
    new = images.push_oci_image(plain, repo, None, layers=1, layer_size=256)
    with _proxy(plain, profile) as proxy:
        if realm is None:
            auth: dict[str, str] = {}
            client = httpx.Client(base_url=proxy.url, auth=_creds(profile))
        else:
            auth = _bearer(_token(proxy, realm, f"repository:{repo}:pull,push",
                                  auth=_creds(profile)))
            client = httpx.Client(base_url=proxy.url)

        def put(reference: str, image: images.PushedImage) -> httpx.Response:
            return client.put(f"/v2/{repo}/manifests/{reference}", content=image.manifest,
                              headers={**auth, "Content-Type": image.media_type})

        with client:
            moved = put("v1", new)
            assert moved.status_code == status, moved.text
            error = moved.json()["errors"][0]
            assert error["code"] == code and words in error["message"]
            assert put("v1", old).status_code == (status if same_refused else 201)
            assert put(new.digest, new).status_code == 201  # by digest: never refused
            assert put("v2", new).status_code == 201  # a new tag: created
            assert put("latest", new).status_code == 201  # not matched by the rule
            assert put("latest", old).status_code == 201  # and so it moves
        assert [(r.tag, r.current) for r in proxy.behaviour(ImmutableTags).refused] == [
            ("v1", old.digest)] * (2 if same_refused else 1)
    assert images.get_manifest(plain, f"{repo}:v1")[0] == old.manifest  # the tag stayed
