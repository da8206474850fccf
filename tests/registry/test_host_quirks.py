"""The per-host layer against hosted registries' documented departures, one quirk per test.

Each test wraps the in-memory registry with exactly one quirk and would fail without fanout's
handling of it; the same quirks run end to end against a real registry behind the quirk proxy in
tests/integration/test_profiles.py.
"""

from __future__ import annotations

import asyncio
import os
import threading
from collections.abc import Callable

import httpx
import pytest

from registry.capabilities import CapabilityStore
from registry.copy import Copier
from registry.credentials import Credential, StaticCredentials
from registry.errors import NotFound, RateLimited, TokenExpired, UnexpectedStatus
from registry.holds import MemoryHolds
from registry.options import CopyOptions, TransportOptions
from registry.reference import parse_reference, parse_repository
from registry.results import CopyResult
from registry.retry import RetryPolicy
from registry.session import Registries
from tests.support.fake_registry import FakeRegistry, error, plain_http, route

FAST = RetryPolicy(attempts=4, initial=0.001, maximum=0.01, max_elapsed=5, max_hold=2)
INSECURE = TransportOptions(insecure_registries=frozenset({"src.test", "dst.test"}))
Handler = Callable[[httpx.Request], httpx.Response]
MiB = 1024 * 1024


async def _copy(handler: Handler, dest: str = "dst.test/app", *, options: TransportOptions =
                INSECURE, caps: CapabilityStore | None = None, holds: MemoryHolds | None = None,
                credentials: StaticCredentials | None = None) -> CopyResult:
    async with Registries(credentials, options, transport=plain_http(handler, options),
                          capabilities=caps, holds=holds, retry=FAST) as regs:
        copier = Copier(regs, CopyOptions(retry=FAST, referrers=False))
        return await copier.copy(parse_reference("src.test/app:v1"), parse_repository(dest),
                                 ("v1",))


def copy(handler: Handler, dest: str = "dst.test/app", **kwargs: object) -> CopyResult:
    return asyncio.run(_copy(handler, dest, **kwargs))  # type: ignore[arg-type]


def pair(*layers: bytes) -> tuple[FakeRegistry, FakeRegistry]:
    src, dst = FakeRegistry("src.test"), FakeRegistry("dst.test")
    src.push_image("app", list(layers) or [os.urandom(4096)], tag="v1")
    return src, dst


def serve(src: FakeRegistry, dst_handler: Handler) -> Handler:
    return route({"src.test": src.handle, "dst.test": dst_handler})


def test_a_403_to_a_head_of_a_missing_manifest_is_not_a_refusal() -> None:
    # Artifactory answers HEAD of a manifest it lacks with 403 (go-containerregistry's writer
    # allows for it); the PUT that follows is the real answer.
    src, dst = pair()

    def artifactory(request: httpx.Request) -> httpx.Response:
        response = dst.handle(request)
        if request.method == "HEAD" and "/manifests/" in request.url.path and \
                response.status_code == 404:
            return error(403, "DENIED", "forbidden")
        return response

    result = copy(serve(src, artifactory))
    assert result.ok, result.error
    assert result.stats.manifests_copied == 1


def test_a_patch_answered_201_is_accepted() -> None:
    # ECR answers an upload's PATCH with 201 rather than 202 (regclient's blob code).
    src, dst = pair(os.urandom(3 * MiB))
    dst.monolithic_put = False  # so the upload goes in chunks

    def ecr(request: httpx.Request) -> httpx.Response:
        response = dst.handle(request)
        if request.method == "PATCH" and response.status_code == 202:
            return httpx.Response(201, headers=response.headers)
        return response

    result = copy(serve(src, ecr))
    assert result.ok, result.error
    assert dst.count("PATCH") >= 1


def test_chunk_maximum_is_learnt_from_416_with_range_and_remembered() -> None:
    # GHCR refuses a chunk over 4 MiB with 416 and the Range it holds.
    layer = os.urandom(10 * MiB)
    src, dst = pair(layer)
    dst.monolithic_put = False
    sizes: list[int] = []

    def ghcr(request: httpx.Request) -> httpx.Response:
        if request.method == "PATCH":
            body = request.read()
            sizes.append(len(body))
            if len(body) > 4 * MiB:
                upload = request.url.path.rsplit("/", 1)[1]
                held = len(dst.uploads[upload][1])
                return httpx.Response(416, headers={"Range": f"0-{held - 1}" if held else "0-0",
                                                    "Location": request.url.path})
        return dst.handle(request)

    caps = CapabilityStore()
    result = copy(serve(src, ghcr), caps=caps)
    assert result.ok, result.error
    assert caps.get("dst.test").chunk_max == 4 * MiB
    # Learnt once: after the first refusal every piece fits.
    assert [s for s in sizes if s > 4 * MiB] == [8 * MiB]
    sizes.clear()
    again = copy(serve(src, ghcr), "dst.test/other", caps=caps)
    assert again.ok, again.error
    assert sizes and max(sizes) <= 4 * MiB


def test_chunk_minimum_is_learnt_from_a_refused_small_chunk() -> None:
    # ECR refuses non-final chunks under 5 MiB; the final one may be small.
    layer = os.urandom(11 * MiB)
    src, dst = pair(layer)
    dst.monolithic_put = False
    refused: list[int] = []

    def ecr(request: httpx.Request) -> httpx.Response:
        if request.method == "PATCH":
            body = request.read()
            upload = request.url.path.rsplit("/", 1)[1]
            # The config is small and always final; the layer's last piece is final too.
            final = len(body) < 64 * 1024 or len(dst.uploads[upload][1]) + len(body) == len(layer)
            if len(body) < 5 * MiB and not final:
                refused.append(len(body))
                return error(400, "INVALID_PART", "Layer part size must be at least 5 MiB")
        return dst.handle(request)

    caps = CapabilityStore()
    caps.get("dst.test").learn_chunk_max(2 * MiB)  # a bound learnt wrong, or set by hand
    caps.get("dst.test").chunk_max = 2 * MiB
    result = copy(serve(src, ecr), caps=caps)
    assert result.ok, result.error
    # It learnt as much as it needed: bigger than the refused 2 MiB, then 8 MiB pieces went.
    assert caps.get("dst.test").chunk_min > 2 * MiB
    assert refused and set(refused) == {2 * MiB}


def test_a_whole_blob_refusal_switches_every_racing_upload_to_chunks() -> None:
    # Three blobs upload at once; all three hear "no whole blobs", none fails for it.
    src, dst = pair(os.urandom(1000), os.urandom(2000), os.urandom(3000))
    dst.monolithic_put = False
    caps = CapabilityStore()
    result = copy(serve(src, dst.handle), caps=caps)
    assert result.ok, result.error
    assert caps.get("dst.test").whole_blob is False
    assert result.stats.blobs_uploaded == 4  # three layers and the config


def test_401_without_a_challenge_reuses_the_ping_challenge() -> None:
    # Artifact Registry sends WWW-Authenticate only on /v2/: a token that stops working must
    # be refreshed with the challenge the ping gave.
    src, dst = pair()
    issued: list[str] = []
    revoked: set[str] = set()

    def gar(request: httpx.Request) -> httpx.Response:
        if request.url.host == "auth.test":
            issued.append(f"t{len(issued)}")
            return httpx.Response(200, json={"token": issued[-1], "expires_in": 3600})
        sent = request.headers.get("authorization", "").removeprefix("Bearer ")
        if request.url.path == "/v2/" and not sent:
            return httpx.Response(401, headers={
                "WWW-Authenticate": 'Bearer realm="http://auth.test/token",service="gar"'})
        if not sent or sent in revoked:
            return httpx.Response(401)  # no challenge
        if request.method == "PUT" and "/manifests/" in request.url.path and len(issued) == 1:
            revoked.add(sent)  # the first token dies before the manifest
            return httpx.Response(401)
        return dst.handle(request)

    hosts = route({"src.test": src.handle, "dst.test": gar, "auth.test": gar})
    options = TransportOptions(insecure_registries=frozenset({"src.test", "dst.test",
                                                              "auth.test"}))
    result = copy(hosts, options=options)
    assert result.ok, result.error
    assert len(issued) >= 2


def test_one_probe_per_host_and_credentials_off_the_event_loop() -> None:
    src, dst = pair()
    pings: list[str] = []
    threads: list[str] = []

    class SlowStore:
        def get(self, registry: str) -> Credential | None:
            threads.append(threading.current_thread().name)
            return None

    def counting(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/v2/":
            pings.append(f"{request.url.scheme}://{request.url.host}")
        return route({"src.test": src.handle, "dst.test": dst.handle})(request)

    result = copy(counting, credentials=SlowStore())  # type: ignore[arg-type]
    assert result.ok, result.error
    # These hosts speak plain HTTP only (HTTPS fails at the handshake): one ping each.
    assert sorted(pings) == ["http://dst.test", "http://src.test"]
    assert threads and "MainThread" not in threads


def test_a_401_to_a_streamed_upload_is_a_transient_token_expiry() -> None:
    # GitLab tokens can run out while a blob streams; the attempt is retried with a new one.
    src, dst = pair(os.urandom(64 * 1024))
    issued: list[str] = []
    state = {"expired_once": False}

    def gitlab(request: httpx.Request) -> httpx.Response:
        if request.url.host == "auth.test":
            issued.append(f"t{len(issued)}")
            return httpx.Response(200, json={"token": issued[-1], "expires_in": 3600})
        if not request.headers.get("authorization"):
            return httpx.Response(401, headers={
                "WWW-Authenticate": 'Bearer realm="http://auth.test/token",service="gl"'})
        if (request.method == "PUT" and "digest=" in str(request.url)
                and not state["expired_once"]):
            state["expired_once"] = True
            request.read()
            return httpx.Response(401, headers={
                "WWW-Authenticate": 'Bearer realm="http://auth.test/token",service="gl"'})
        return dst.handle(request)

    hosts = route({"src.test": src.handle, "dst.test": gitlab, "auth.test": gitlab})
    options = TransportOptions(insecure_registries=frozenset({"src.test", "dst.test",
                                                              "auth.test"}))
    result = copy(hosts, options=options)
    assert result.ok, result.error
    assert state["expired_once"] and len(issued) >= 2
    assert TokenExpired.transient


class RecordingHolds(MemoryHolds):
    def __init__(self) -> None:
        super().__init__()
        self.held: list[tuple[str, float]] = []

    def hold(self, registry: str, until: float) -> None:
        self.held.append((registry, until))
        super().hold(registry, until)


def test_a_429_holds_the_host_for_every_client_sharing_the_store() -> None:
    src, dst = pair()
    holds = RecordingHolds()
    seen: list[str] = []

    def hub(request: httpx.Request) -> httpx.Response:
        seen.append(request.method)
        if len(seen) == 2:
            return error(429, "TOOMANYREQUESTS", "slow down")  # no Retry-After
        return dst.handle(request)

    result = copy(serve(src, hub), holds=holds)
    assert result.ok, result.error
    # The hold went to the shared store (the policy's backoff, as no Retry-After was given).
    assert [registry for registry, _ in holds.held] == ["dst.test"]


def test_an_exhausted_rate_limit_holds_before_the_429() -> None:
    src, dst = pair()
    holds = RecordingHolds()

    def hub(request: httpx.Request) -> httpx.Response:
        response = dst.handle(request)
        response.headers["ratelimit-remaining"] = "0;w=21600"
        return response

    result = copy(serve(src, hub), holds=holds)
    assert result.ok, result.error
    assert holds.held and {registry for registry, _ in holds.held} == {"dst.test"}


def test_a_hold_longer_than_the_request_tier_waits_fails_at_once_with_its_delay() -> None:
    src, dst = pair()
    holds = MemoryHolds()
    import time
    holds.hold("dst.test", time.time() + 600)
    calls: list[str] = []

    def counted(request: httpx.Request) -> httpx.Response:
        calls.append(request.url.path)
        return dst.handle(request)

    result = copy(serve(src, counted), holds=holds)
    assert isinstance(result.error, RateLimited)
    assert result.error.retry_after is not None and result.error.retry_after > 500
    assert calls == []  # nothing was sent to a held registry


def test_a_mount_refused_as_unauthorized_is_not_asked_again() -> None:
    # Docker Hub's token server grants only the first of several scopes: the mount's token
    # cannot read the source repository, and every mount is refused.
    dst = FakeRegistry("dst.test")
    layers = [os.urandom(1000), os.urandom(1000), os.urandom(1000)]
    dst.push_image("base", layers, tag="v1")
    mounts: list[str] = []

    def hub(request: httpx.Request) -> httpx.Response:
        if request.method == "POST" and "mount" in request.url.params:
            mounts.append(request.url.params["mount"])
            return error(401, "UNAUTHORIZED", "authentication required")
        return dst.handle(request)

    async def run() -> CopyResult:
        handler = route({"dst.test": hub})
        async with Registries(None, INSECURE, transport=plain_http(handler, INSECURE)) as regs:
            copier = Copier(regs, CopyOptions(retry=FAST, referrers=False, blob_concurrency=1))
            return await copier.copy(parse_reference("dst.test/base:v1"),
                                     parse_repository("dst.test/app"), ("v1",))

    result = asyncio.run(run())
    assert result.ok, result.error
    assert len(mounts) == 1


def test_a_missing_ecr_repository_fails_at_once_with_what_to_do() -> None:
    src, dst = pair()
    message = ("The repository with name 'app' does not exist in the registry with id "
               "'123456789012'")

    pushes: list[str] = []

    def ecr(request: httpx.Request) -> httpx.Response:
        if request.method in ("POST", "PUT"):
            pushes.append(request.method)
            return error(404, "NAME_UNKNOWN", message)
        return dst.handle(request)

    result = copy(serve(src, ecr))
    assert isinstance(result.error, NotFound)
    assert message in str(result.error)
    assert "create it, or set up a repository creation template" in str(result.error)
    # Permanent: each blob's upload asked once (the config's and the layer's), never again.
    assert pushes == ["POST", "POST"]


def test_a_manifest_the_registry_calls_invalid_fails_at_once_with_why() -> None:
    src, dst = pair()

    puts: list[str] = []

    def quay(request: httpx.Request) -> httpx.Response:
        if request.method == "PUT" and "/manifests/" in request.url.path:
            puts.append(request.url.path)
            return error(400, "MANIFEST_INVALID", "manifest invalid")
        return dst.handle(request)

    result = copy(serve(src, quay))
    assert isinstance(result.error, UnexpectedStatus)
    assert "cannot convert" in str(result.error)
    assert len(puts) == 1


@pytest.mark.parametrize(("header", "held"), [
    ("", False), ("12;w=60", False), ("x", False), ("-1", False), ("0" * 40, False),
    ("0;w=60", True), ("5, 0", True),
])
def test_ratelimit_headers_hold_only_when_exhausted(header: str, held: bool) -> None:
    src, dst = pair()
    holds = RecordingHolds()

    def hub(request: httpx.Request) -> httpx.Response:
        response = dst.handle(request)
        response.headers["ratelimit-remaining"] = header
        return response

    result = copy(serve(src, hub), holds=holds)
    assert result.ok, result.error
    assert bool(holds.held) is held
