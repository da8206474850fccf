"""registry.preflight against a fake destination (httpx.MockTransport): every answer a registry
gives to the checks, what the check makes of it, and that nothing is written."""

from __future__ import annotations

import asyncio
import json
import ssl
from collections.abc import Awaitable, Callable

import httpx
import pytest

from registry.capabilities import CapabilityStore
from registry.credentials import Credential, StaticCredentials
from registry.errors import CredentialError
from registry.preflight import EMPTY_DIGEST, DestinationCheck, check_destination, check_destinations
from registry.reference import parse_reference, parse_repository
from registry.session import Registries
from tests.support.fake_destination import ECR, PASSWORD, TOKEN, Destination

MiB = 1024 * 1024


def _credentials(host: str = "reg.test", password: str = PASSWORD) -> StaticCredentials:
    return StaticCredentials({host: Credential(username="ci", password=password)})


def run_check(
    handler: Callable[[httpx.Request], httpx.Response | Awaitable[httpx.Response]],
    destination: str = "reg.test/app",
    *,
    credentials: StaticCredentials | None = None,
    capabilities: CapabilityStore | None = None,
) -> DestinationCheck:
    async def go() -> DestinationCheck:
        async with Registries(credentials, transport=httpx.MockTransport(handler),
                              capabilities=capabilities) as registries:
            return await check_destination(registries, parse_reference(destination))

    return asyncio.run(go())


def test_an_open_registry_is_ready_and_nothing_is_written() -> None:
    registry = Destination(chunk_min=5 * MiB)

    check = run_check(registry)

    assert check.ready and check.problems == ()
    assert (check.reachable, check.scheme, check.auth, check.credentials) == (
        True, "https", "none", "anonymous")
    assert (check.pull, check.push, check.repository_exists) == (True, True, False)
    assert check.referrers_api is True and check.chunk_min == 5 * MiB
    assert check.mounts is None  # not learnt: a check does not mount anything
    methods = registry.methods()
    assert "POST /v2/app/blobs/uploads/" in methods
    assert "DELETE /v2/app/blobs/uploads/0f1e2d3c-upload" in methods
    assert f"GET /v2/app/referrers/{EMPTY_DIGEST}" in methods
    assert not [m for m in methods if m.startswith(("PUT", "PATCH"))]
    document = json.loads(json.dumps(check.to_dict()))
    assert document["ready"] is True and document["problems"] == []
    assert document["destination"] == "reg.test/app" and document["repository"] == "app"


@pytest.mark.parametrize("auth", ["basic", "bearer"])
def test_good_credentials_are_accepted(auth: str) -> None:
    check = run_check(Destination(auth=auth, exists=True), "reg.test/team/app:v1",
                      credentials=_credentials())

    assert check.ready, check.problems
    assert check.auth == auth and check.credentials == "accepted"
    assert check.repository_exists is True and check.destination == "reg.test/team/app:v1"
    assert check.token_realm == ("auth.test" if auth == "bearer" else None)


@pytest.mark.parametrize("auth", ["basic", "bearer"])
def test_wrong_credentials_are_rejected_and_never_shown(auth: str) -> None:
    check = run_check(Destination(auth=auth),
                      credentials=_credentials(password="wrong-" + PASSWORD))

    assert not check.ready
    assert check.credentials == "rejected" and check.pull is False and check.push is False
    [problem] = check.problems
    assert "docker login reg.test" in problem
    if auth == "bearer":
        assert "token server auth.test" in problem
    text = json.dumps(check.to_dict()) + repr(check)
    assert PASSWORD not in text and TOKEN not in text


def test_anonymous_where_credentials_are_needed() -> None:
    check = run_check(Destination(auth="basic"))

    assert not check.ready and check.credentials == "anonymous" and check.pull is False
    [problem] = check.problems
    assert "none are configured" in problem and "docker login reg.test" in problem


def test_credentials_that_may_read_but_not_push() -> None:
    check = run_check(Destination(auth="basic", push="denied"), credentials=_credentials())

    assert not check.ready
    assert (check.credentials, check.pull, check.push) == ("accepted", True, False)
    [problem] = check.problems
    assert "not push" in problem and "push (write) access" in problem


def test_anonymous_pull_but_push_needs_a_login() -> None:
    check = run_check(Destination(push="unauthorized"))

    assert not check.ready and check.push is False
    assert "pushing needs credentials" in check.problems[0]


def test_a_registry_that_does_not_create_repositories_on_push() -> None:
    registry = Destination(host=ECR, auth="basic", push="name_unknown")

    check = run_check(registry, f"{ECR}/team/app", credentials=_credentials(ECR))

    assert not check.ready
    assert (check.push, check.repository_exists, check.credentials) == (False, False, "accepted")
    [problem] = check.problems
    assert "The repository with name 'team/app' does not exist" in problem
    assert "aws ecr create-repository --repository-name team/app" in problem


@pytest.mark.parametrize(("answer", "expected"), [("index", True), ("404", False),
                                                   ("html", False)])
def test_referrers_api(answer: str, expected: bool) -> None:
    check = run_check(Destination(referrers=answer))

    assert check.referrers_api is expected
    assert check.ready  # without the API, referrers travel as tags: not a problem


def test_learnt_capabilities_are_reported() -> None:
    store = CapabilityStore()
    learnt = store.get("reg.test")
    learnt.mounts, learnt.whole_blob = False, False
    learnt.learn_chunk_max(4 * MiB)
    learnt.learn_chunk_min(1 * MiB)

    check = run_check(Destination(chunk_min=5 * MiB, referrers="404"), capabilities=store)

    assert (check.mounts, check.whole_blob) == (False, False)
    assert (check.chunk_min, check.chunk_max) == (5 * MiB, 4 * MiB)
    assert check.to_dict()["chunk_max"] == 4 * MiB


def test_an_unreachable_registry() -> None:
    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("[Errno 111] Connection refused", request=request)

    check = run_check(refuse)

    assert not check.ready and check.reachable is False
    assert check.push is None and check.pull is None
    [problem] = check.problems
    assert problem.startswith("cannot reach reg.test") and "network" in problem
    assert check.credentials == "anonymous"
    assert run_check(refuse, credentials=_credentials()).credentials == "unknown"


def test_an_untrusted_certificate_says_ca_bundle() -> None:
    def untrusted(request: httpx.Request) -> httpx.Response:
        cause = ssl.SSLCertVerificationError("certificate verify failed: self-signed certificate")
        raise httpx.ConnectError("certificate verify failed", request=request) from cause

    check = run_check(untrusted)

    assert check.reachable is False and "--ca-bundle" in check.problems[0]


def test_a_registry_that_answers_503() -> None:
    check = run_check(Destination(ping_status=503))

    assert not check.ready and check.reachable is True
    assert "try again later" in check.problems[0]


def test_a_credential_helper_that_fails() -> None:
    class Broken:
        def get(self, registry: str) -> Credential | None:
            raise CredentialError(f"credential helper docker-credential-x failed for {registry}")

    async def go() -> DestinationCheck:
        async with Registries(Broken(), transport=httpx.MockTransport(Destination())) as regs:
            return await check_destination(regs, parse_repository("reg.test/app"))

    check = asyncio.run(go())

    assert not check.ready and "cannot be read" in check.problems[0]


def test_destinations_are_checked_at_once_and_answered_in_order() -> None:
    both_pinged = asyncio.Event()
    pinged: set[str] = set()
    registries = {"a.test": Destination(host="a.test"),
                  "b.test": Destination(host="b.test", push="denied")}

    async def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/v2/":
            pinged.add(request.url.host)
            if len(pinged) == 2:
                both_pinged.set()
            # Each ping waits for the other: only checks that run at once get past this.
            await asyncio.wait_for(both_pinged.wait(), timeout=5)
        return registries[request.url.host](request)

    async def go() -> list[DestinationCheck]:
        async with Registries(transport=httpx.MockTransport(handler)) as regs:
            return await check_destinations(
                regs, [parse_repository("b.test/app"), parse_repository("a.test/app")])

    checks = asyncio.run(go())

    assert [c.destination for c in checks] == ["b.test/app", "a.test/app"]
    assert [c.ready for c in checks] == [False, True]


@pytest.mark.parametrize(("deletes", "delete", "refusal", "text"), [
    ("ok", True, None, "yes"),
    ("disabled", False, "disabled", "disabled"),
    ("denied", False, "denied", "denied"),
])
def test_deletes_are_asked_with_a_digest_no_manifest_has(
    deletes: str, delete: bool, refusal: str | None, text: str,
) -> None:
    from producer.check_cmd import delete_text

    registry = Destination(deletes=deletes)
    capabilities = CapabilityStore()

    check = run_check(registry, capabilities=capabilities)

    assert (check.delete, check.delete_refusal, delete_text(check)) == (delete, refusal, text)
    assert check.ready  # deletes matter to a mirror's prune, not to a copy
    [asked] = [r for r in registry.requests if r.method == "DELETE" and "/manifests/" in r.url.path]
    digest = asked.url.path.rsplit("/", 1)[1]
    assert digest.startswith("sha256:") and digest != EMPTY_DIGEST
    assert capabilities.get("reg.test").deletes is {"ok": True, "disabled": False}.get(deletes)
    document = json.loads(json.dumps(check.to_dict()))
    assert (document["delete"], document["delete_refusal"]) == (delete, refusal)
