"""Immutable tags at a destination: each registry's answer is recognised (and nothing else is),
is permanent at both retry tiers, and fails the copy at once with the registry's words and what
to do, the content landed; a tag already on the digest costs no PUT."""

from __future__ import annotations

import asyncio
import json
import os

import httpx
import pytest

from registry.advice import explain_refusal
from registry.errors import (
    Denied,
    RateLimited,
    RegistryError,
    ServerError,
    TagImmutable,
    Unauthorized,
    UnexpectedStatus,
    error_from_response,
    is_transient,
)
from registry.retry import RetryPolicy, retry_async
from tests.registry.test_host_quirks import Handler, copy, pair, serve
from tests.support.fake_registry import FakeRegistry, sha256

DIGEST = "sha256:" + "a" * 64
ECR_WORDS = ("The image tag 'v1' already exists in the 'acme/app' repository and cannot be "
             "overwritten because the tag is immutable.")
ECR_OLD_WORDS = ("The image tag 'v1' already exists in the 'acme/app' repository and cannot be "
                 "overwritten because the repository is immutable.")
HARBOR_WORDS = "Failed to process request due to 'app:v1' configured as immutable."
ACR_WORDS = ("The operation is disallowed on this registry, repository or image. View "
             "troubleshooting steps at https://aka.ms/acr/faq/#why-does-my-pull-or-push-request-"
             "fail-with-disallowed-operation")
# Our guess at Artifact Registry's (see registry/immutable.py): a refusal that says so.
AR_WORDS = "Cannot update tag v1: the repository has immutable tags enabled"


def answer(status: int, code: str, message: str, *, method: str = "PUT",
           reference: str = "v1") -> RegistryError:
    request = httpx.Request(method, f"https://dst.test/v2/acme/app/manifests/{reference}")
    body = json.dumps({"errors": [{"code": code, "message": message}]}).encode()
    response = httpx.Response(status, content=body, request=request)
    return error_from_response(response, f"put manifest acme/app:{reference}")


@pytest.mark.parametrize(("status", "code", "words", "registry"), [
    (400, "TAG_INVALID", ECR_WORDS, "ECR"),
    (400, "TAG_INVALID", ECR_OLD_WORDS, "ECR"),
    (412, "PRECONDITION", HARBOR_WORDS, "Harbor"),
    (412, "DENIED", HARBOR_WORDS, "Harbor"),  # Harbor 1.10
    (405, "REGISTRY_DISALLOWED_OPERATION", ACR_WORDS, "ACR"),
    (403, "DENIED", AR_WORDS, "the registry"),
    (409, "TAG_IMMUTABLE", "tag v1 is immutable", "the registry"),
], ids=["ecr", "ecr-earlier", "harbor", "harbor-1.10", "acr", "artifact-registry", "other"])
def test_each_registrys_answer_to_a_tag_put_is_a_permanent_tag_immutable(
    status: int, code: str, words: str, registry: str,
) -> None:
    error = answer(status, code, words)
    assert isinstance(error, TagImmutable), repr(error)
    assert (error.tag, error.answer.registry, error.status) == ("v1", registry, status)
    assert not is_transient(error) and not error.transient
    assert not isinstance(error, Denied)  # says nothing about our credentials
    assert words[:60] in str(error)  # the registry's words
    assert error.to_dict()["type"] == "TagImmutable"


@pytest.mark.parametrize(("status", "code", "words", "kind"), [
    # A PUT by digest moves no tag: never refused for immutability.
    (400, "TAG_INVALID", ECR_WORDS, UnexpectedStatus),
    (412, "PRECONDITION", HARBOR_WORDS, UnexpectedStatus),
    (403, "DENIED", AR_WORDS, Denied),
], ids=["ecr", "harbor", "ar"])
def test_the_same_answer_to_a_put_by_digest_keeps_its_usual_class(
    status: int, code: str, words: str, kind: type[RegistryError],
) -> None:
    error = answer(status, code, words, reference=DIGEST)
    assert type(error) is kind


@pytest.mark.parametrize(("status", "code", "words", "kind"), [
    # distribution's own TAG_INVALID: the manifest's tag did not match the URL.
    (400, "TAG_INVALID", "manifest tag did not match URI", UnexpectedStatus),
    # A 401 or 403 after a fresh token is still who we are, whatever a tag PUT it answers.
    (401, "UNAUTHORIZED", "authentication required", Unauthorized),
    (401, "UNAUTHORIZED", "token for an immutable tag rejected", Unauthorized),
    (403, "DENIED", "requested access to the resource is denied", Denied),
    (405, "UNSUPPORTED", "The operation is unsupported.", UnexpectedStatus),
    (412, "PRECONDITION", "the policy 3 is disabled", UnexpectedStatus),
    # "Later" stays later.
    (429, "TOOMANYREQUESTS", "immutable tags are busy", RateLimited),
    (503, "UNAVAILABLE", "immutable store unavailable", ServerError),
], ids=["tag-invalid", "401", "401-words", "403", "405", "412", "429", "503"])
def test_other_refusals_of_a_tag_put_are_what_they_were(
    status: int, code: str, words: str, kind: type[RegistryError],
) -> None:
    assert type(answer(status, code, words)) is kind


def test_a_refused_read_is_never_an_immutable_tag() -> None:
    assert type(answer(403, "DENIED", AR_WORDS, method="GET")) is Denied


def test_the_advice_names_the_tag_the_digest_it_keeps_and_how_to_lift_the_rule() -> None:
    error = answer(400, "TAG_INVALID", ECR_WORDS)
    assert isinstance(error, TagImmutable)
    error.current = DIGEST
    explained = explain_refusal(error, "dst.test", "acme/app")
    assert isinstance(explained, TagImmutable) and explained.tag == "v1"
    assert (explained.status, explained.codes, explained.url) == (
        error.status, error.codes, error.url)
    message = str(explained)
    assert ECR_WORDS[:100] in message
    assert f"tag v1 at dst.test/acme/app is immutable and names another digest ({DIGEST})" \
        in message
    assert "release under a new tag" in message and "MUTABLE" in message


def test_acr_advice_names_the_lock_of_that_tag() -> None:
    error = answer(405, "REGISTRY_DISALLOWED_OPERATION", ACR_WORDS)
    assert isinstance(error, TagImmutable)
    message = str(explain_refusal(error, "x.azurecr.io", "acme/app"))
    assert "az acr repository update --image acme/app:v1 --write-enabled true" in message


def test_the_request_tier_does_not_retry_it() -> None:
    calls = 0

    async def put() -> None:
        nonlocal calls
        calls += 1
        raise answer(412, "PRECONDITION", HARBOR_WORDS)

    policy = RetryPolicy(attempts=5, initial=0.001, maximum=0.001)
    with pytest.raises(TagImmutable):
        asyncio.run(retry_async(policy, put, what="tag"))
    assert calls == 1


# -- through the copy engine, against the in-memory registry --------------------------------

def immutable(dst: FakeRegistry, status: int, code: str, words: str) -> Handler:
    """``dst`` whose existing tags cannot move: a tag PUT onto another digest is refused."""

    def handle(request: httpx.Request) -> httpx.Response:
        path = request.url.path
        if request.method == "PUT" and path.endswith("/manifests/v1"):
            current = dst.manifests.get("app", {}).get("v1")
            if current is not None and sha256(current[0]) != sha256(request.content):
                dst.requests.append(request)
                return httpx.Response(status, json={"errors": [{"code": code,
                                                                "message": words}]})
        return dst.handle(request)

    return handle


def test_a_tag_on_another_digest_fails_at_once_with_the_advice_and_the_content_landed() -> None:
    src, dst = pair(os.urandom(2048))
    old = dst.push_image("app", [os.urandom(1024)], tag="v1")
    new = sha256(src.manifests["app"]["v1"][0])

    result = copy(serve(src, immutable(dst, 400, "TAG_INVALID", ECR_WORDS)))

    assert isinstance(result.error, TagImmutable), result.error
    assert dst.count("PUT", r"/manifests/v1$") == 1  # no retry at the request tier
    assert f"names another digest ({old})" in str(result.error)
    assert "release under a new tag" in str(result.error)
    assert new in dst.manifests["app"]  # the manifest by digest, and its blobs, landed
    assert sha256(dst.manifests["app"]["v1"][0]) == old  # the registry kept the tag


def test_a_tag_already_on_the_digest_costs_no_put() -> None:
    src, dst = pair(os.urandom(2048))
    raw, media_type = src.manifests["app"]["v1"]
    dst.put_manifest("app", raw, media_type, tag="v1")

    result = copy(serve(src, immutable(dst, 400, "TAG_INVALID", ECR_WORDS)))

    assert result.ok, result.error
    assert dst.count("PUT", r"/manifests/") == 0
    assert result.stats.tags_written == 0


def test_a_refusal_of_a_tag_that_already_names_the_digest_is_success() -> None:
    # Another writer of the same release got the tag in first; Harbor refuses even a PUT of
    # the bytes the immutable tag already names. The tag is as asked: nothing to fail.
    src, dst = pair(os.urandom(2048))
    raw, media_type = src.manifests["app"]["v1"]

    def harbor(request: httpx.Request) -> httpx.Response:
        if request.method == "PUT" and request.url.path.endswith("/manifests/v1"):
            dst.requests.append(request)
            dst.put_manifest("app", raw, media_type, tag="v1")  # the other writer's
            return httpx.Response(412, json={"errors": [{"code": "PRECONDITION",
                                                         "message": HARBOR_WORDS}]})
        return dst.handle(request)

    result = copy(serve(src, harbor))

    assert result.ok, result.error
    assert dst.count("PUT", r"/manifests/v1$") == 1
