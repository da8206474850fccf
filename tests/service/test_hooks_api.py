"""``POST /v1/hooks/{kind}`` in-process: the app over a fakeredis ledger and kombu's in-memory
broker, with a real source registry (the session's docker-registry) to pin against, so a
release here is exactly what ``fanout enqueue`` would have recorded. Nothing copies: the
end-to-end run with workers is tests/integration/test_hook_e2e.py."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import fakeredis
import pytest
from fastapi.testclient import TestClient

from service.app import create_app
from service.config import ServeConfig, parse_serve_config
from service.dedup import PREFIX
from service.hook_auth import github_signature
from tests.service import hook_payloads as payloads
from tests.service.hook_payloads import DOCKER_MANIFEST, OCI_INDEX, OCI_MANIFEST
from tests.support.images import PushedImage, push_oci_image, push_oci_index
from tests.support.registries import RegistrySet
from tests.support.serve import sha256_hex
from workers.ledger import Ledger

HOOK_TOKEN = "hook-token-5d1e"
NARROW_TOKEN = "narrow-token-88c0"
SECRET = "github-hook-secret-0b7f"
BROKER = "memory://"
RELEASE = ("127.0.0.1:1/mirror/app", "127.0.0.1:2/mirror/app")


def document(host: str, **hooks: Any) -> dict[str, Any]:
    return {
        "destinations": {"release": list(RELEASE), "other": ["127.0.0.1:3/other/app"]},
        "tokens": [
            {"name": "registry", "sha256": sha256_hex(HOOK_TOKEN), "sets": ["release"],
             "sources": [f"{host}/test/*"]},
            {"name": "narrow", "sha256": sha256_hex(NARROW_TOKEN), "sets": ["other"],
             "sources": [f"{host}/test/*"]},
        ],
        "rules": [{"source": f"{host}/test/*", "tags": ["v*"], "to": "release"}],
        "hooks": {"github": {"secret_env": "HOOK_SECRET", "registry": host},
                  "dockerhub": {"registry": host}, "quay": {"registry": host}, **hooks},
    }


@pytest.fixture
def host(registries: RegistrySet) -> str:
    return registries.source.host


@pytest.fixture
def ledger() -> Ledger:
    return Ledger(fakeredis.FakeRedis())


def make_client(config: ServeConfig, ledger: Ledger, **env: str) -> TestClient:
    env = {"FANOUT_BROKER_URL": BROKER, "HOOK_SECRET": SECRET, **env}
    return TestClient(create_app(config, env, ledger=ledger), raise_server_exceptions=False)


@pytest.fixture
def client(host: str, ledger: Ledger) -> Iterator[TestClient]:
    with make_client(parse_serve_config(document(host)), ledger) as test_client:
        yield test_client


@pytest.fixture
def image(registries: RegistrySet, unique_repo: str) -> PushedImage:
    """A two-platform index at the source, tagged v1.2.0."""
    return push_oci_index(registries.source, unique_repo, "v1.2.0",
                          platforms=[("linux", "amd64"), ("linux", "arm64")], layer_size=1024)


def envelope(image: PushedImage, tag: str | None = None) -> dict[str, Any]:
    """What docker-registry sends for ``image``: each platform by digest, the index by digest
    and then by ``tag``."""
    def event(media_type: str, digest: str, t: str | None = None) -> dict[str, Any]:
        return payloads.distribution_event("push", media_type, digest, tag=t,
                                           repository=image.repository, host=image.registry_host)

    return {"events": [*(event(OCI_MANIFEST, child) for child in image.manifests),
                       event(OCI_INDEX, image.digest), event(OCI_INDEX, image.digest, tag)]}


def post(client: TestClient, kind: str, payload: object, token: str | None = HOOK_TOKEN,
         **headers: str) -> Any:
    if token:
        headers["Authorization"] = f"Bearer {token}"
    return client.post(f"/v1/hooks/{kind}", content=json.dumps(payload), headers=headers)


def dedup_keys(ledger: Ledger) -> list[bytes]:
    return list(ledger.client.scan_iter(f"{PREFIX}*"))


# -- distribution ---------------------------------------------------------------------------


def test_a_multiplatform_push_is_one_release(client: TestClient, ledger: Ledger,
                                             image: PushedImage) -> None:
    response = post(client, "distribution", envelope(image, "v1.2.0"))
    assert response.status_code == 202, response.text
    body = response.json()
    [release_id] = body["releases"]
    assert body["deduplicated"] == []
    # The platforms pushed by digest are named as ignored, not released.
    untagged = [i for i in body["ignored"] if "without a tag" in i["reason"]]
    assert len(untagged) == 3  # two platforms and the index by digest
    release = ledger.get(release_id)
    assert release is not None
    assert (release.source, release.digest) == (image.reference, image.digest)
    assert sorted(release.destinations) == sorted(RELEASE)
    assert {d.tags for d in release.destinations.values()} == {("v1.2.0",)}
    assert ledger.recent() == [release_id]


def test_a_redelivery_is_deduplicated(client: TestClient, ledger: Ledger,
                                      image: PushedImage) -> None:
    first = post(client, "distribution", envelope(image, "v1.2.0"))
    again = post(client, "distribution", envelope(image, "v1.2.0"))
    assert (first.status_code, again.status_code) == (202, 200)
    assert again.json()["releases"] == []
    assert again.json()["deduplicated"] == [
        {"source": image.reference, "to": "release", "tags": ["v1.2.0"]}]
    assert len(ledger.recent()) == 1


def test_the_same_digest_newly_tagged_is_a_new_release(client: TestClient, ledger: Ledger,
                                                       image: PushedImage) -> None:
    assert post(client, "distribution", envelope(image, "v1.2.0")).status_code == 202
    response = post(client, "distribution", envelope(image, "v1.2"))
    assert response.status_code == 202
    [release_id] = response.json()["releases"]
    release = ledger.get(release_id)
    assert release is not None
    assert {d.tags for d in release.destinations.values()} == {("v1.2",)}
    assert len(ledger.recent()) == 2


def test_dedup_seconds_zero_turns_the_window_off(host: str, ledger: Ledger,
                                                 image: PushedImage) -> None:
    config = parse_serve_config({**document(host), "hooks": {"dedup_seconds": 0}})
    with make_client(config, ledger) as client:
        codes = [post(client, "distribution", envelope(image, "v1.2.0")).status_code
                 for _ in range(2)]
    assert codes == [202, 202]
    assert len(ledger.recent()) == 2
    assert dedup_keys(ledger) == []


def test_a_push_matching_no_rule_enqueues_nothing(client: TestClient, ledger: Ledger,
                                                  image: PushedImage) -> None:
    response = post(client, "distribution", envelope(image, "latest"))  # rule wants v*
    assert response.status_code == 200
    body = response.json()
    assert body["releases"] == []
    assert any(i["event"] == f"{image.registry_host}/{image.repository}:latest@{image.digest}"
               and "no [[rules]]" in i["reason"] for i in body["ignored"])
    assert ledger.recent() == []


def test_a_push_outside_the_tokens_grants_is_403_and_nothing_is_enqueued(
    client: TestClient, ledger: Ledger, image: PushedImage,
) -> None:
    response = post(client, "distribution", envelope(image, "v1.2.0"), token=NARROW_TOKEN)
    assert response.status_code == 403
    assert "'release'" in response.json()["detail"]
    assert ledger.recent() == []
    assert dedup_keys(ledger) == []  # a later delivery with the right token is not held back


@pytest.mark.parametrize(("headers", "query"), [
    ({}, ""),
    ({"Authorization": "Bearer not-a-token"}, ""),
    ({}, "?token=not-a-token"),
])
def test_no_token_or_a_bad_one_is_401(client: TestClient, ledger: Ledger, image: PushedImage,
                                      headers: dict[str, str], query: str) -> None:
    response = client.post(f"/v1/hooks/distribution{query}",
                           content=json.dumps(envelope(image, "v1.2.0")), headers=headers)
    assert response.status_code == 401
    assert "not-a-token" not in response.text
    assert ledger.recent() == []


def test_a_token_in_the_query_is_accepted_on_hooks(client: TestClient,
                                                   image: PushedImage) -> None:
    response = client.post(f"/v1/hooks/distribution?token={HOOK_TOKEN}",
                           content=json.dumps(envelope(image, "v1.2.0")))
    assert response.status_code == 202


def test_a_release_that_fails_to_enqueue_gives_its_claim_back(
    host: str, ledger: Ledger, image: PushedImage,
) -> None:
    config = parse_serve_config(document(host))
    with make_client(config, ledger, FANOUT_BROKER_URL="redis://127.0.0.1:1/0") as down:
        response = post(down, "distribution", envelope(image, "v1.2.0"))
    assert response.status_code == 503, response.text
    assert dedup_keys(ledger) == []
    with make_client(config, ledger) as up:  # the registry's redelivery, once the broker is up
        assert post(up, "distribution", envelope(image, "v1.2.0")).status_code == 202


# -- the other kinds ------------------------------------------------------------------------


def _github(image: PushedImage, tag: str) -> dict[str, Any]:
    payload = payloads.github_package(tag, image.digest)
    owner, _, name = image.repository.partition("/")
    payload["package"]["owner"] = {**payload["package"]["owner"], "login": owner}
    payload["package"]["name"] = name
    return payload


def test_github_signed_delivery_is_a_release(client: TestClient, ledger: Ledger,
                                             image: PushedImage) -> None:
    body = json.dumps(_github(image, "v1.2.0")).encode()
    response = client.post("/v1/hooks/github", content=body, headers={
        "X-Hub-Signature-256": github_signature(SECRET, body), "X-GitHub-Event": "package"})
    assert response.status_code == 202, response.text
    [release_id] = response.json()["releases"]
    release = ledger.get(release_id)
    assert release is not None and release.source == image.reference


@pytest.mark.parametrize("signature", [None, "sha256=" + "0" * 64, "sha1=abc",
                                       "sha256=é".encode("latin-1")])
def test_github_unsigned_or_badly_signed_is_401(client: TestClient, ledger: Ledger,
                                                image: PushedImage,
                                                signature: str | bytes | None) -> None:
    body = json.dumps(_github(image, "v1.2.0")).encode()
    headers: dict[str, str | bytes] = {"X-GitHub-Event": "package"}
    if signature is not None:
        headers["X-Hub-Signature-256"] = signature
    response = client.post("/v1/hooks/github", content=body, headers=headers)
    assert response.status_code == 401
    assert ledger.recent() == []


def test_github_signed_with_another_secret_is_401(client: TestClient,
                                                  image: PushedImage) -> None:
    body = json.dumps(_github(image, "v1.2.0")).encode()
    response = client.post("/v1/hooks/github", content=body, headers={
        "X-Hub-Signature-256": github_signature("another secret", body)})
    assert response.status_code == 401
    assert SECRET not in response.text


def test_github_without_a_configured_secret_accepts_nothing(host: str, ledger: Ledger,
                                                            image: PushedImage) -> None:
    with make_client(parse_serve_config(document(host)), ledger, HOOK_SECRET="") as client:
        body = json.dumps(_github(image, "v1.2.0")).encode()
        response = client.post("/v1/hooks/github", content=body, headers={
            "X-Hub-Signature-256": github_signature("", body)})
    assert response.status_code == 503
    assert "secret_env" in response.json()["detail"]
    assert ledger.recent() == []


def test_github_ping_is_answered_and_ignored(client: TestClient) -> None:
    body = json.dumps(payloads.github_ping()).encode()
    response = client.post("/v1/hooks/github", content=body, headers={
        "X-Hub-Signature-256": github_signature(SECRET, body), "X-GitHub-Event": "ping"})
    assert response.status_code == 200
    assert response.json()["releases"] == []
    assert "ping" in response.json()["ignored"][0]["event"]


def test_quay_tags_are_pinned_so_a_new_push_of_a_tag_is_a_new_release(
    client: TestClient, ledger: Ledger, registries: RegistrySet, unique_repo: str,
) -> None:
    first = push_oci_image(registries.source, unique_repo, "v1", layers=1, layer_size=512)
    payload = payloads.quay_push(["v1"])
    payload["repository"] = unique_repo
    response = client.post(f"/v1/hooks/quay?token={HOOK_TOKEN}", content=json.dumps(payload))
    assert response.status_code == 202, response.text
    again = client.post(f"/v1/hooks/quay?token={HOOK_TOKEN}", content=json.dumps(payload))
    assert again.json()["deduplicated"] == [
        {"source": first.reference, "to": "release", "tags": ["v1"]}]
    second = push_oci_image(registries.source, unique_repo, "v1", layers=1, layer_size=512)
    response = client.post(f"/v1/hooks/quay?token={HOOK_TOKEN}", content=json.dumps(payload))
    assert response.status_code == 202
    digests = [r.digest for r in (ledger.get(i) for i in reversed(ledger.recent())) if r]
    assert digests == [first.digest, second.digest]


def test_dockerhub_push_by_tag(client: TestClient, ledger: Ledger, registries: RegistrySet,
                               unique_repo: str) -> None:
    pushed = push_oci_image(registries.source, unique_repo, "v2", layers=1, layer_size=512)
    response = client.post(f"/v1/hooks/dockerhub?token={HOOK_TOKEN}",
                           content=json.dumps(payloads.dockerhub_push("v2", unique_repo)))
    assert response.status_code == 202, response.text
    release = ledger.get(response.json()["releases"][0])
    assert release is not None and release.digest == pushed.digest


def test_a_tag_the_registry_does_not_have_is_422(client: TestClient, ledger: Ledger,
                                                 unique_repo: str) -> None:
    response = client.post(f"/v1/hooks/dockerhub?token={HOOK_TOKEN}",
                           content=json.dumps(payloads.dockerhub_push("v9", unique_repo)))
    assert response.status_code == 422
    assert "no such tag" in response.json()["detail"]
    assert ledger.recent() == []


def test_harbor_push(client: TestClient, ledger: Ledger, image: PushedImage) -> None:
    payload = payloads.harbor_push("v1.2.0", image.digest, host=image.registry_host)
    payload["event_data"]["repository"]["repo_full_name"] = image.repository
    response = post(client, "harbor", payload)
    assert response.status_code == 202, response.text


# -- refusals ---------------------------------------------------------------------------------


def test_an_unknown_kind_is_404_naming_the_kinds(client: TestClient) -> None:
    response = post(client, "gitlab", {})
    assert response.status_code == 404
    assert "distribution, harbor, github, dockerhub, quay" in response.json()["detail"]


@pytest.mark.parametrize("body", [b"{not json", b"", b"\xff\xfe", b"[" * 100_000])
def test_a_body_that_is_not_json_is_400(client: TestClient, body: bytes) -> None:
    response = client.post("/v1/hooks/distribution", content=body,
                           headers={"Authorization": f"Bearer {HOOK_TOKEN}"})
    assert response.status_code == 400
    assert response.json() == {"detail": "the body is not valid JSON"}


def test_json_that_is_not_the_kinds_payload_is_422_naming_the_field(client: TestClient,
                                                                     ledger: Ledger) -> None:
    response = post(client, "distribution", {"events": [{
        "action": "push", "request": {"host": "registry.corp"},
        "target": {"mediaType": DOCKER_MANIFEST, "repository": "test/x", "digest": "sha256:no"},
    }]})
    assert response.status_code == 422
    assert "events[0].target.digest" in response.json()["detail"]
    assert ledger.recent() == []


def test_the_ledger_down_is_503_and_nothing_is_enqueued(host: str, image: PushedImage) -> None:
    server = fakeredis.FakeServer()
    server.connected = False
    ledger = Ledger(fakeredis.FakeRedis(server=server))
    with make_client(parse_serve_config(document(host)), ledger) as client:
        response = post(client, "distribution", envelope(image, "v1.2.0"))
    assert response.status_code == 503
    assert f"{image.reference} was not enqueued" in response.json()["detail"]
