"""The copy engine against in-memory registries: ordering, dedupe, mounts, retries, faults."""

from __future__ import annotations

import asyncio
import json
import os

import httpx
import pytest

from registry.copy import Copier
from registry.errors import DigestMismatch, InvalidManifest, NotFound, RateLimited
from registry.options import CopyOptions, TransportOptions
from registry.reference import parse_reference, parse_repository
from registry.retry import RetryPolicy
from registry.session import Registries
from tests.support.fake_registry import FakeRegistry, error, plain_http, route, sha256

FAST = RetryPolicy(attempts=4, initial=0.001, maximum=0.01, max_elapsed=5)
INSECURE = TransportOptions(insecure_registries=frozenset({"src.test", "dst.test", "other.test"}))


def run(coro):  # type: ignore[no-untyped-def]
    return asyncio.run(coro)


async def copy(handler, source: str, dest: str, tags=("v1",), **options):  # type: ignore[no-untyped-def]
    async with Registries(None, INSECURE, transport=plain_http(handler, INSECURE)) as regs:
        copier = Copier(regs, CopyOptions(retry=FAST, referrers=False, **options))
        return await copier.copy(parse_reference(source), parse_repository(dest), tags)


def two_registries() -> tuple[FakeRegistry, FakeRegistry, dict]:  # type: ignore[type-arg]
    src, dst = FakeRegistry("src.test"), FakeRegistry("dst.test")
    return src, dst, {"src.test": src.handle, "dst.test": dst.handle}


def push_index(reg: FakeRegistry, repo: str) -> tuple[str, list[str]]:
    base = os.urandom(2048)
    children = []
    for arch in ("amd64", "arm64", "s390x"):
        digest = reg.push_image(repo, [base, os.urandom(1024)])
        raw, media_type = reg.manifests[repo][digest]
        children.append({"mediaType": media_type, "digest": digest, "size": len(raw),
                         "platform": {"os": "linux", "architecture": arch}})
    index = json.dumps({"schemaVersion": 2,
                        "mediaType": "application/vnd.oci.image.index.v1+json",
                        "manifests": children}).encode()
    return reg.put_manifest(repo, index, "application/vnd.oci.image.index.v1+json", "v1"), [
        c["digest"] for c in children]


def test_copies_index_children_first_and_shared_blob_once() -> None:
    src, dst, hosts = two_registries()
    digest, children = push_index(src, "app")
    result = run(copy(route(hosts), "src.test/app:v1", "dst.test/team/app"))
    assert result.ok, result.error
    assert result.digest == digest
    assert result.tags == ("v1",)
    # 1 config (identical for all three) + 3 own layers + 1 shared base layer, each sent once.
    assert result.stats.blobs_uploaded == 5
    assert result.stats.manifests_copied == 4
    assert dst.manifests["team/app"]["v1"] == src.manifests["app"][digest]
    puts = [r.url.path for r in dst.requests if r.method == "PUT" and "/manifests/" in r.url.path]
    # children by digest, then the index by digest, then the tag: never a tag before content.
    assert set(puts[:3]) == {f"/v2/team/app/manifests/{c}" for c in children}
    assert puts[3:] == [f"/v2/team/app/manifests/{digest}", "/v2/team/app/manifests/v1"]


def test_second_copy_transfers_nothing() -> None:
    src, dst, hosts = two_registries()
    push_index(src, "app")
    first = run(copy(route(hosts), "src.test/app:v1", "dst.test/app"))
    assert first.stats.bytes_transferred > 0
    before = len(dst.requests)
    second = run(copy(route(hosts), "src.test/app:v1", "dst.test/app"))
    assert second.ok
    assert second.stats.bytes_transferred == 0
    assert second.stats.blobs_uploaded == 0
    assert second.stats.manifests_skipped == 1
    # one HEAD for the digest, one for the tag (ping is per client)
    assert [r.method for r in dst.requests[before:] if r.url.path != "/v2/"] == ["HEAD", "HEAD"]


def test_mount_within_same_registry_and_refused_mount_falls_back() -> None:
    reg = FakeRegistry("src.test")
    reg.push_image("a", [os.urandom(4096)], tag="v1")
    result = run(copy(reg.handle, "src.test/a:v1", "src.test/b"))
    assert result.ok and result.stats.blobs_mounted == 2 and result.stats.blobs_uploaded == 0

    reg.mount_enabled = False  # registry answers 202 and opens an upload instead
    result = run(copy(reg.handle, "src.test/a:v1", "src.test/c"))
    assert result.ok and result.stats.blobs_mounted == 0 and result.stats.blobs_uploaded == 2


def test_mount_error_falls_back_to_upload() -> None:
    reg = FakeRegistry("src.test")
    reg.push_image("a", [os.urandom(4096)], tag="v1")

    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.params.get("mount"):
            return error(403, "DENIED", "no cross-repository mounts here")
        return reg.handle(request)

    result = run(copy(handler, "src.test/a:v1", "src.test/b"))
    assert result.ok, result.error
    assert result.stats.blobs_uploaded == 2


def test_second_destination_on_same_registry_mounts_from_first() -> None:
    src, _dst, hosts = two_registries()
    push_index(src, "app")

    async def both():  # type: ignore[no-untyped-def]
        async with Registries(None, INSECURE, transport=plain_http(route(hosts), INSECURE)) as r:
            copier = Copier(r, CopyOptions(retry=FAST, referrers=False))
            return await copier.copy_many(parse_reference("src.test/app:v1"), [
                (parse_repository("dst.test/one"), ("v1",)),
                (parse_repository("dst.test/two"), ("v1",))])

    one, two = run(both())
    assert one.ok and two.ok
    assert one.stats.blobs_uploaded + two.stats.blobs_uploaded == 5
    assert one.stats.blobs_mounted + two.stats.blobs_mounted == 5
    blob_gets = src.count("GET", r"/blobs/sha256")
    assert blob_gets == 5  # each blob left the source once for two destinations


def test_rate_limited_retry_after_honoured_then_succeeds() -> None:
    src, dst, hosts = two_registries()
    src.push_image("app", [os.urandom(1000)], tag="v1")
    calls = {"n": 0}

    def limited(request: httpx.Request) -> httpx.Response:
        if request.method == "PUT" and "/manifests/" in request.url.path and calls["n"] < 2:
            calls["n"] += 1
            return httpx.Response(429, headers={"Retry-After": "0"},
                                  json={"errors": [{"code": "TOOMANYREQUESTS"}]})
        return dst.handle(request)

    hosts["dst.test"] = limited
    result = run(copy(route(hosts), "src.test/app:v1", "dst.test/app"))
    assert result.ok, result.error
    assert calls["n"] == 2


def test_long_retry_after_goes_up_as_transient_with_delay() -> None:
    src, dst, hosts = two_registries()
    src.push_image("app", [os.urandom(1000)], tag="v1")
    hosts["dst.test"] = lambda request: (
        httpx.Response(429, headers={"Retry-After": "3600"}) if request.url.path != "/v2/"
        else dst.handle(request))
    result = run(copy(route(hosts), "src.test/app:v1", "dst.test/app"))
    assert isinstance(result.error, RateLimited)
    assert result.error.retry_after == 3600
    assert result.error.transient


def test_server_errors_then_success() -> None:
    src, dst, hosts = two_registries()
    src.push_image("app", [os.urandom(5000)], tag="v1")
    failures = {"n": 0}

    def flaky(request: httpx.Request) -> httpx.Response:
        if request.method == "PUT" and "/uploads/" in request.url.path and failures["n"] < 2:
            failures["n"] += 1
            request.read()
            return httpx.Response(503)
        return dst.handle(request)

    hosts["dst.test"] = flaky
    result = run(copy(route(hosts), "src.test/app:v1", "dst.test/app"))
    assert result.ok, result.error
    assert failures["n"] == 2
    assert len(dst.uploads) == 0  # every failed session was cancelled


def test_digest_mismatch_in_streamed_blob_is_permanent_and_nothing_tagged() -> None:
    src, dst, hosts = two_registries()
    layer = os.urandom(4096)
    src.push_image("app", [layer], tag="v1")
    digest = sha256(layer)
    src.blobs["app"][digest] = bytes(b ^ 0xFF for b in layer)  # corrupt, same size
    result = run(copy(route(hosts), "src.test/app:v1", "dst.test/app"))
    assert isinstance(result.error, DigestMismatch)
    assert not result.error.transient
    assert not dst.has_blob("app", digest)
    assert "v1" not in dst.manifests.get("app", {})
    # permanent: the corrupt blob was fetched once, not retried
    assert src.count("GET", digest) == 1


def test_blob_redirect_to_storage_host_carries_no_authorization() -> None:
    src, _dst, hosts = two_registries()
    layer = os.urandom(3000)
    src.push_image("app", [layer], tag="v1")
    seen: list[httpx.Request] = []

    def source(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/v2/" and "authorization" not in request.headers:
            return httpx.Response(401, headers={"WWW-Authenticate": 'Basic realm="src"'})
        if request.method == "GET" and "/blobs/" in request.url.path:
            return httpx.Response(307, headers={
                "Location": f"https://storage.test/bucket{request.url.path}?X-Sig=secret"})
        return src.handle(request)

    def store(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        digest = request.url.path.rsplit("/", 1)[-1]
        return httpx.Response(200, content=src.blobs["app"][digest])

    hosts.update({"src.test": source, "storage.test": store})
    from registry.credentials import Credential, StaticCredentials

    async def go():  # type: ignore[no-untyped-def]
        creds = StaticCredentials({"src.test": Credential("u", "topsecret")})
        async with Registries(creds, INSECURE, transport=plain_http(route(hosts), INSECURE)) as r:
            copier = Copier(r, CopyOptions(retry=FAST, referrers=False))
            return await copier.copy(parse_reference("src.test/app:v1"),
                                     parse_repository("dst.test/app"))

    result = run(go())
    assert result.ok, result.error
    assert seen and all("authorization" not in r.headers for r in seen)
    assert any("authorization" in r.headers for r in src.requests)


def test_registry_requiring_chunks_gets_chunks() -> None:
    src, dst, hosts = two_registries()
    layer = os.urandom(50_000)
    src.push_image("app", [layer], tag="v1")
    dst.chunk_min = 20_000
    dst.monolithic_put = False
    result = run(copy(route(hosts), "src.test/app:v1", "dst.test/app"))
    assert result.ok, result.error
    assert dst.has_blob("app", sha256(layer))
    # one PATCH per blob (the layer, the config): chunks are at least the registry's minimum
    assert dst.count("PATCH") == 2
    assert all(not r.content for r in dst.requests
               if r.method == "PUT" and "/uploads/" in str(r.url))


def test_monolithic_refused_switches_to_chunks() -> None:
    src, dst, hosts = two_registries()
    layer = os.urandom(10_000)
    src.push_image("app", [layer], tag="v1")
    dst.monolithic_put = False
    result = run(copy(route(hosts), "src.test/app:v1", "dst.test/app"))
    assert result.ok, result.error
    assert dst.has_blob("app", sha256(layer))


def test_configured_chunk_size_is_used() -> None:
    src, dst, hosts = two_registries()
    layer = os.urandom(10_000)
    src.push_image("app", [layer], tag="v1")
    opts = TransportOptions(insecure_registries=INSECURE.insecure_registries, chunk_size=4096)

    async def go():  # type: ignore[no-untyped-def]
        async with Registries(None, opts, transport=plain_http(route(hosts), opts)) as r:
            return await Copier(r, CopyOptions(retry=FAST, referrers=False)).copy(
                parse_reference("src.test/app:v1"), parse_repository("dst.test/app"))

    assert run(go()).ok
    assert dst.count("PATCH", "/uploads/") >= 3


def test_missing_source_is_permanent_not_found() -> None:
    _src, _dst, hosts = two_registries()
    result = run(copy(route(hosts), "src.test/nothing:v1", "dst.test/app"))
    assert isinstance(result.error, NotFound)
    assert not result.error.transient


def test_child_whose_size_lies_is_refused() -> None:
    src, dst, hosts = two_registries()
    child = src.push_image("app", [os.urandom(100)])
    raw, media_type = src.manifests["app"][child]
    index = json.dumps({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json",
                        "manifests": [{"mediaType": media_type, "digest": child,
                                       "size": len(raw) + 5}]}).encode()
    src.put_manifest("app", index, "application/vnd.oci.image.index.v1+json", "v1")
    result = run(copy(route(hosts), "src.test/app:v1", "dst.test/app"))
    assert result.error is not None and not result.error.transient
    assert "v1" not in dst.manifests.get("app", {})


def test_unpinned_source_refused_by_copy_image() -> None:
    async def go() -> None:
        async with Registries(None, INSECURE) as regs:
            await Copier(regs).copy_image(parse_reference("src.test/app:v1"),
                                          parse_repository("dst.test/app"))

    with pytest.raises(InvalidManifest, match="not pinned"):
        run(go())


def test_one_failing_destination_does_not_stop_the_other() -> None:
    src, dst, hosts = two_registries()
    push_index(src, "app")

    async def go():  # type: ignore[no-untyped-def]
        async with Registries(None, INSECURE, transport=plain_http(route(hosts), INSECURE)) as r:
            copier = Copier(r, CopyOptions(retry=FAST, referrers=False))
            return await copier.copy_many(parse_reference("src.test/app:v1"), [
                (parse_repository("down.test/app"), ("v1",)),
                (parse_repository("dst.test/app"), ("v1",))])

    down, up = run(go())
    assert not down.ok and down.error is not None and down.error.transient
    assert up.ok and "v1" in dst.manifests["app"]


def test_an_unexpected_error_is_one_destinations_failure_not_the_runs() -> None:
    src, dst, hosts = two_registries()
    push_index(src, "app")

    def broken(request: httpx.Request) -> httpx.Response:
        raise RuntimeError("a bug somewhere below the engine")

    hosts["other.test"] = broken

    async def go():  # type: ignore[no-untyped-def]
        async with Registries(None, INSECURE, transport=plain_http(route(hosts), INSECURE)) as r:
            copier = Copier(r, CopyOptions(retry=FAST, referrers=False))
            return await copier.copy_many(parse_reference("src.test/app:v1"), [
                (parse_repository("other.test/app"), ("v1",)),
                (parse_repository("dst.test/app"), ("v1",))])

    bad, good = run(go())
    assert bad.error is not None and type(bad.error).__name__ == "InternalError"
    assert not bad.error.transient and "RuntimeError" in str(bad.error)
    assert good.ok and "v1" in dst.manifests["app"]


def test_digest_invalid_on_verified_manifest_bytes_is_retried() -> None:
    # distribution says DIGEST_INVALID when it reads a blob link another writer is rewriting;
    # our bytes hash to the digest, so the registry is wrong, and a retry finds it right.
    src, dst, hosts = two_registries()
    src.push_image("app", [os.urandom(1000)], tag="v1")
    refused = {"n": 0}

    def racy(request: httpx.Request) -> httpx.Response:
        if (request.method == "PUT" and "/manifests/sha256:" in request.url.path
                and not refused["n"]):
            refused["n"] += 1
            return error(400, "DIGEST_INVALID", "provided digest did not match uploaded content")
        return dst.handle(request)

    hosts["dst.test"] = racy
    result = run(copy(route(hosts), "src.test/app:v1", "dst.test/app"))
    assert result.ok, result.error
    assert refused["n"] == 1 and "v1" in dst.manifests["app"]


def test_a_host_allowed_plain_http_still_gets_https_when_it_speaks_it() -> None:
    # Both fakes speak TLS only: plain HTTP gets the 400 Go's server gives a TLS port.
    src, dst, hosts = two_registries()
    src.push_image("app", [os.urandom(100)], tag="v1")
    serve = route(hosts)

    def tls_only(request: httpx.Request) -> httpx.Response:
        if request.url.scheme == "http":
            return httpx.Response(400, text="Client sent an HTTP request to an HTTPS server.")
        return serve(request)

    async def go():  # type: ignore[no-untyped-def]
        transport = httpx.MockTransport(tls_only)
        async with Registries(None, INSECURE, transport=transport) as regs:
            return await Copier(regs, CopyOptions(retry=FAST, referrers=False)).copy(
                parse_reference("src.test/app:v1"), parse_repository("dst.test/app"), ["v1"])

    assert run(go()).ok
    assert {r.url.scheme for r in src.requests + dst.requests} == {"https"}


def test_plain_http_hosts_fall_back_after_one_failed_handshake() -> None:
    src, dst, hosts = two_registries()
    src.push_image("app", [os.urandom(100)], tag="v1")
    assert run(copy(route(hosts), "src.test/app:v1", "dst.test/app")).ok
    assert {r.url.scheme for r in src.requests + dst.requests} == {"http"}


def test_an_untrusted_certificate_is_permanent_and_says_what_to_do() -> None:
    import ssl

    from registry.errors import UntrustedCertificate, error_from_transport, is_transient

    request = httpx.Request("GET", "https://private.example/v2/")
    try:
        try:
            raise ssl.SSLCertVerificationError("certificate verify failed")
        except ssl.SSLError as cause:
            raise httpx.ConnectError("certificate verify failed", request=request) from cause
    except httpx.ConnectError as exc:
        error = error_from_transport(exc, "ping")
        assert not is_transient(exc)
    assert isinstance(error, UntrustedCertificate) and not error.transient
    assert "private.example" in str(error) and "--ca-bundle" in str(error)


def test_foreign_layers_stay_where_their_urls_say() -> None:
    src, dst, hosts = two_registries()
    own = os.urandom(500)
    config = b'{"architecture":"amd64","os":"windows","rootfs":{"type":"layers","diff_ids":[]}}'
    foreign = {"mediaType": "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip",
               "digest": "sha256:" + "f" * 64, "size": 123456,
               "urls": ["https://mcr.microsoft.com/v2/windows/blobs/sha256:" + "f" * 64]}
    manifest = {"schemaVersion": 2,
                "mediaType": "application/vnd.docker.distribution.manifest.v2+json",
                "config": {"mediaType": "application/vnd.docker.container.image.v1+json",
                           "digest": src.put_blob("win", config), "size": len(config)},
                "layers": [foreign, {
                    "mediaType": "application/vnd.docker.image.rootfs.diff.tar.gzip",
                    "digest": src.put_blob("win", own), "size": len(own)}]}
    raw = json.dumps(manifest).encode()
    src.put_manifest("win", raw, manifest["mediaType"], "v1")  # type: ignore[arg-type]
    result = run(copy(route(hosts), "src.test/win:v1", "dst.test/win"))
    assert result.ok, result.error
    assert result.stats.blobs_uploaded == 2  # the config and the own layer, not the foreign one
    assert src.count("GET", "f" * 64) == 0 and dst.count("HEAD", "f" * 64) == 0
    assert dst.manifests["win"]["v1"][0] == raw
