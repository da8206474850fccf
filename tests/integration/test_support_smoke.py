"""The test infrastructure itself: registries start, images push, skopeo agrees, auth bites."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import httpx
import jwt
import pytest

from tests.support.checks import assert_same_image
from tests.support.images import (
    OCI_EMPTY,
    PushedImage,
    blob_exists,
    delete_blob,
    get_manifest,
    list_tags,
    push_artifact,
    push_docker_manifest_list,
    push_oci_image,
    push_oci_index,
)
from tests.support.registries import RegistryServer, RegistrySet
from tests.support.registry_client import RepoClient
from tests.support.skopeo import (
    assert_skopeo_same,
    skopeo_digest,
    skopeo_inspect_raw,
    skopeo_pull_all,
)

BUILDERS: dict[str, Callable[..., PushedImage]] = {
    "oci-image": push_oci_image,
    "oci-index": push_oci_index,
    "docker-list": push_docker_manifest_list,
}


def _registry(registries: RegistrySet, kind: str) -> RegistryServer:
    return {"anonymous": registries.source, "basic": registries.basic, "token": registries.token}[
        kind
    ]


@pytest.mark.parametrize("auth", ["anonymous", "basic", "token"])
@pytest.mark.parametrize("kind", sorted(BUILDERS))
def test_pushed_image_is_what_skopeo_sees(
    registries: RegistrySet, unique_repo: str, kind: str, auth: str
) -> None:
    registry = _registry(registries, auth)
    image = BUILDERS[kind](registry, unique_repo, "v1")

    assert skopeo_digest(image.reference, registry.creds) == image.digest
    assert skopeo_inspect_raw(image.tagged_reference or "", registry.creds) == image.manifest
    assert_skopeo_same(image.reference, image.reference, registry.creds, registry.creds)
    for child in image.manifests:
        assert skopeo_digest(f"{registry.host}/{unique_repo}@{child}", registry.creds) == child
    assert all(blob_exists(registry, unique_repo, blob) for blob in image.blobs)
    assert list_tags(registry, unique_repo) == ["v1"]


def test_index_shares_its_base_layer(registries: RegistrySet, unique_repo: str) -> None:
    image = push_oci_index(registries.source, unique_repo)

    children = [json.loads(child.manifest) for child in image.children]
    assert image.platforms == ["linux/amd64", "linux/arm64", "linux/arm/v7"]
    assert len({c["layers"][0]["digest"] for c in children}) == 1
    assert len({c["layers"][1]["digest"] for c in children}) == 3
    # 1 shared base + 3 own layers + 3 configs
    assert len(image.blobs) == 7


@pytest.mark.parametrize("auth", ["anonymous", "basic", "token"])
def test_artifact_points_at_its_subject(
    registries: RegistrySet, unique_repo: str, auth: str
) -> None:
    registry = _registry(registries, auth)
    subject = push_oci_image(registry, unique_repo, "v1", layers=1)
    artifact = push_artifact(registry, unique_repo, subject, tag="sbom")

    raw, content_type = get_manifest(registry, artifact.reference)
    doc = json.loads(raw)
    assert raw == artifact.manifest
    assert content_type == "application/vnd.oci.image.manifest.v1+json"
    assert doc["subject"]["digest"] == subject.digest
    assert doc["artifactType"] == "application/vnd.example.sbom.v1+json"
    assert doc["config"]["mediaType"] == OCI_EMPTY
    assert skopeo_digest(artifact.reference, registry.creds) == artifact.digest
    assert_skopeo_same(artifact.reference, artifact.reference, registry.creds, registry.creds)


def test_same_image_check_fails_on_different_images(
    registries: RegistrySet, unique_repo: str
) -> None:
    one = push_oci_image(registries.source, unique_repo)
    other = push_oci_image(registries.dest1, unique_repo)

    with pytest.raises(AssertionError, match="manifest differs"):
        assert_skopeo_same(one.reference, other.reference)


def test_same_image_check_fails_on_a_missing_blob_or_a_foreign_tag(
    registries: RegistrySet, unique_repo: str,
) -> None:
    registry = registries.basic
    image = push_oci_image(registry, unique_repo, "v1")
    copy = f"{unique_repo}/copy"
    with RepoClient.at(registry, unique_repo) as src, RepoClient.at(registry, copy) as dst:
        for blob in image.blobs:  # a copy by cross-repository mount
            mount = f"/v2/{copy}/blobs/uploads/?mount={blob}&from={unique_repo}"
            assert dst.request("POST", mount).status_code == 201
        dst.manifest_put("v1", image.manifest, image.media_type)
        assert assert_same_image(src, dst, every_tag=True) == {"v1": image.digest}

        push_oci_image(registry, copy, "v2", layers=1)
        with pytest.raises(AssertionError, match="404, wanted 200"):  # not at the source
            assert_same_image(src, dst, every_tag=True)
        delete_blob(registry, copy, image.blobs[-1])
        with pytest.raises(AssertionError, match="at the destination"):
            assert_same_image(src, dst, [image.digest])


def test_pull_fails_when_a_blob_is_missing(
    fresh_registry: Callable[..., RegistryServer], unique_repo: str, tmp_path: Path
) -> None:
    registry = fresh_registry()
    image = push_oci_image(registry, unique_repo, layers=1)
    layer = json.loads(image.manifest)["layers"][0]["digest"]
    # Take the layer away behind the registry's back, as a half-finished copy would leave it.
    blob_dir = registry.root / "storage/docker/registry/v2/blobs/sha256" / layer[7:9] / layer[7:]
    (blob_dir / "data").unlink()

    with pytest.raises(AssertionError, match="failed"):
        skopeo_pull_all(image.reference, tmp_path / "pull")


def test_token_server_records_the_token_dance(registries: RegistrySet, unique_repo: str) -> None:
    token_server = registries.token.token_server
    assert token_server is not None
    token_server.reset_requests()

    push_oci_image(registries.token, unique_repo)

    granted = [r for r in token_server.requests if r.status == 200]
    assert granted, "the pusher never asked for a token"
    assert all(r.had_authorization and r.username == registries.token.username for r in granted)
    # distribution orders the actions in its challenge at random (a Go map): compare sets.
    asked = {
        (scope.rpartition(":")[0], frozenset(scope.rpartition(":")[2].split(",")))
        for r in granted
        for scope in r.scopes
    }
    assert (f"repository:{unique_repo}", frozenset({"pull", "push"})) in asked


def test_wrong_password_is_refused_by_basic_registry(registries: RegistrySet) -> None:
    registry = registries.basic
    assert registry.username is not None and registry.password is not None

    ok = httpx.get(f"{registry.url}/v2/", auth=(registry.username, registry.password))
    wrong = httpx.get(f"{registry.url}/v2/", auth=(registry.username, "not-the-password"))
    anonymous = httpx.get(f"{registry.url}/v2/")

    assert ok.status_code == 200
    assert wrong.status_code == 401
    assert anonymous.status_code == 401
    assert anonymous.headers["WWW-Authenticate"].startswith("Basic ")


def test_wrong_password_is_refused_by_token_server(registries: RegistrySet) -> None:
    registry = registries.token
    token_server = registry.token_server
    assert token_server is not None and registry.username is not None
    challenge = httpx.get(f"{registry.url}/v2/")
    assert challenge.status_code == 401
    assert challenge.headers["WWW-Authenticate"].startswith(f'Bearer realm="{token_server.realm}"')
    token_server.reset_requests()

    get = httpx.get(
        token_server.realm,
        params={"service": token_server.service, "scope": "repository:x/y:pull"},
        auth=(registry.username, "not-the-password"),
    )
    post = httpx.post(
        token_server.realm,
        data={
            "grant_type": "password",
            "username": registry.username,
            "password": "not-the-password",
            "service": token_server.service,
            "scope": "repository:x/y:pull",
            "client_id": "fanout-tests",
        },
    )

    assert get.status_code == 401
    assert post.status_code == 401
    assert [r.status for r in token_server.requests] == [401, 401]
    with pytest.raises(AssertionError):
        skopeo_inspect_raw(f"{registry.host}/x/y:latest", f"{registry.username}:nope")


def test_token_grants_only_the_users_actions(registries: RegistrySet, unique_repo: str) -> None:
    registry = registries.token
    token_server = registry.token_server
    assert token_server is not None
    push_oci_image(registry, unique_repo, "v1")
    token_server.add_user("reader", "reader-secret", ("pull",))

    response = httpx.get(
        token_server.realm,
        params={"service": token_server.service, "scope": f"repository:{unique_repo}:pull,push"},
        auth=("reader", "reader-secret"),
    )
    token = response.json()["token"]
    claims = jwt.decode(token, options={"verify_signature": False})
    headers = {"Authorization": f"Bearer {token}"}

    assert claims["access"] == [{"type": "repository", "name": unique_repo, "actions": ["pull"]}]
    assert claims["aud"] == token_server.service and claims["iss"] == token_server.issuer
    assert httpx.get(f"{registry.url}/v2/{unique_repo}/tags/list", headers=headers).json() == {
        "name": unique_repo,
        "tags": ["v1"],
    }
    upload = httpx.post(f"{registry.url}/v2/{unique_repo}/blobs/uploads/", headers=headers)
    assert upload.status_code == 401


def test_oauth_password_and_refresh_grants(
    fresh_registry: Callable[..., RegistryServer], unique_repo: str
) -> None:
    registry = fresh_registry(auth="token")
    token_server = registry.token_server
    assert token_server is not None
    token_server.expires_in = 7
    push_oci_image(registry, unique_repo, "v1")
    form = {"service": token_server.service, "scope": f"repository:{unique_repo}:pull"}

    first = httpx.post(
        token_server.realm,
        data={
            **form,
            "grant_type": "password",
            "username": registry.username,
            "password": registry.password,
            "access_type": "offline",
            "client_id": "fanout-tests",
        },
    ).json()
    refreshed = httpx.post(
        token_server.realm,
        data={
            **form,
            "grant_type": "refresh_token",
            "refresh_token": first["refresh_token"],
            "client_id": "fanout-tests",
        },
    ).json()
    bogus = httpx.post(
        token_server.realm,
        data={**form, "grant_type": "refresh_token", "refresh_token": "made-up"},
    )

    claims = jwt.decode(refreshed["access_token"], options={"verify_signature": False})
    assert refreshed["expires_in"] == 7 and claims["exp"] - claims["iat"] == 7
    tags = httpx.get(
        f"{registry.url}/v2/{unique_repo}/tags/list",
        headers={"Authorization": f"Bearer {refreshed['access_token']}"},
    )
    assert tags.status_code == 200
    assert bogus.status_code == 401
    grants = [r.grant_type for r in token_server.requests if r.method == "POST"]
    assert grants == ["password", "refresh_token", "refresh_token"]


def test_offline_token_on_get(registries: RegistrySet) -> None:
    registry = registries.token
    token_server = registry.token_server
    assert token_server is not None and registry.username and registry.password
    params = {"service": token_server.service, "scope": "repository:x/y:pull"}

    plain = httpx.get(
        token_server.realm, params=params, auth=(registry.username, registry.password)
    )
    offline = httpx.get(
        token_server.realm,
        params={**params, "offline_token": "true"},
        auth=(registry.username, registry.password),
    )

    assert set(plain.json()) == {"token", "access_token", "expires_in", "issued_at"}
    assert "refresh_token" in offline.json()


def test_restart_keeps_content_and_port(
    fresh_registry: Callable[..., RegistryServer], unique_repo: str
) -> None:
    registry = fresh_registry(auth="htpasswd")
    image = push_oci_index(registry, unique_repo, "v1")
    host = registry.host

    registry.stop()
    assert not registry.running
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"{registry.url}/v2/")
    registry.start()

    assert registry.running and registry.host == host
    assert get_manifest(registry, f"{unique_repo}:v1")[0] == image.manifest
    assert_skopeo_same(image.reference, image.reference, registry.creds, registry.creds)
    assert "listening on" in registry.log()


def test_kill_is_an_outage(fresh_registry: Callable[..., RegistryServer]) -> None:
    registry = fresh_registry()
    registry.kill()

    assert not registry.running
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"{registry.url}/v2/")


def test_credentials_stay_out_of_reprs(registries: RegistrySet) -> None:
    for registry in (registries.basic, registries.token):
        assert registry.password is not None
        assert registry.password not in repr(registry)
        assert registry.password not in repr(registries)


def test_unique_repo_is_a_valid_repository_name(unique_repo: str) -> None:
    assert unique_repo.startswith("test/test-unique-repo-is-a-valid-repository-name-")
    assert all(part.isalnum() for part in unique_repo.replace("-", "/").split("/"))
