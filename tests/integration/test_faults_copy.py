"""The copy engine against real registries behind the fault-injecting proxy.

Each fault is put on the source or on one destination of a ``copy_many`` to two destinations.
A fault that clears within the request-tier retries costs nothing but time; one that cannot clear
fails only its destination, with an error that says what is wrong, and leaves no tag behind.
After every scenario, every tag at every destination names a complete, byte-identical image.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import pytest

from registry.copy import Copier
from registry.credentials import Credential, StaticCredentials
from registry.errors import (
    ConnectionFailed,
    DigestMismatch,
    ProtocolError,
    ServerError,
    Unauthorized,
)
from registry.options import CopyOptions, TransportOptions
from registry.reference import parse_reference, parse_repository
from registry.results import CopyResult
from registry.retry import RetryPolicy
from registry.session import Registries
from tests.support import images
from tests.support.checks import assert_same_image
from tests.support.fault_proxy import (
    CutRequest,
    CutResponse,
    Delay,
    DropLocation,
    FaultProxy,
    FlipBytes,
    Redirect,
    Refuse,
    Rule,
    Stall,
    Status,
    WrongDigest,
)
from tests.support.registries import RegistryServer, RegistrySet
from tests.support.registry_client import RepoClient

# Quick request-tier retries: four attempts within half a second, unless a Retry-After asks more.
FAST = RetryPolicy(attempts=4, initial=0.05, maximum=0.2, jitter=0.1, max_elapsed=20)
LAYER = 128 * 1024
BLOB = r"/blobs/sha256:"
UPLOADS = r"/blobs/uploads/"
MANIFESTS = r"/manifests/"
TOO_MANY = b'{"errors":[{"code":"TOOMANYREQUESTS","message":"slow down"}]}'


# -- the invariants -----------------------------------------------------------------------------
def assert_untouched(server: RegistryServer, repo: str, digest: str) -> None:
    """No tag and no manifest for ``digest``: a failed copy left nothing a user could pull."""
    with RepoClient.at(server, repo) as dest:
        assert dest.tag_list() == []
        assert dest.manifest_head(digest).status_code == 404


# -- running copies -------------------------------------------------------------------------------
async def _copy_many(
    source: str, targets: Sequence[str], tags: Sequence[str], credentials: StaticCredentials | None,
    transport: TransportOptions, retry: RetryPolicy,
    during: Callable[[], object] | None,
) -> list[CopyResult]:
    async with Registries(credentials, transport) as registries:
        copier = Copier(registries, CopyOptions(retry=retry, referrers=False))
        copying = copier.copy_many(parse_reference(source),
                                   [(parse_repository(t), tags) for t in targets])
        if during is None:
            return await copying
        results, _ = await asyncio.gather(copying, asyncio.to_thread(during))
        return results


def copy_many(
    source: str, targets: Sequence[str], *, tags: Sequence[str] = ("v1",),
    credentials: StaticCredentials | None = None, read_timeout: float = 10.0,
    retry: RetryPolicy = FAST, during: Callable[[], object] | None = None,
) -> list[CopyResult]:
    """Copy in-process, as ``fanout copy`` does; ``during`` runs in a thread meanwhile."""
    transport = TransportOptions(read_timeout=read_timeout, connect_timeout=2.0)
    return asyncio.run(_copy_many(source, targets, tags, credentials, transport, retry, during))


@dataclass
class Rig:
    """The source and two destinations, each behind its own proxy."""

    registries: RegistrySet
    source: FaultProxy  # registries.source
    dest: FaultProxy  # registries.dest1: the destination the fault is put on
    other: FaultProxy  # registries.dest2: must come through untouched

    def targets(self, repo: str) -> list[str]:
        return [f"{self.dest.host}/{repo}", f"{self.other.host}/{repo}"]

    def assert_complete(self, server: RegistryServer, repo: str, *,
                        source: RegistryServer | None = None, skopeo: bool = False) -> list[str]:
        """Every tag at ``server/repo`` names a manifest whose children and blobs are all present
        and byte-identical to the source's; returns the tags (there may be none)."""
        with RepoClient.at(source or self.registries.source, repo) as src, \
                RepoClient.at(server, repo) as dst:
            return list(assert_same_image(src, dst, every_tag=True, skopeo=skopeo))

    def assert_other_untouched_by_faults(self, repo: str) -> None:
        """The other destination saw no failure, and holds the complete image under v1."""
        assert [s for s in self.other.seen if s.status is None or s.status >= 500] == []
        assert self.assert_complete(self.registries.dest2, repo) == ["v1"]


@pytest.fixture
def rig(registries: RegistrySet) -> Iterator[Rig]:
    with FaultProxy(registries.source.url) as source, FaultProxy(registries.dest1.url) as dest, \
            FaultProxy(registries.dest2.url) as other:
        yield Rig(registries, source, dest, other)


def _push(registries: RegistrySet, repo: str, layers: int = 2) -> images.PushedImage:
    return images.push_oci_image(registries.source, repo, "v1", layers=layers, layer_size=LAYER)


def _layer_hex(image: images.PushedImage) -> str:
    """The last layer's hex digest: big enough for a cut at LAYER // 2 to land inside it."""
    return image.blobs[-1].split(":", 1)[1]


# -- faults that clear within the request-tier retries ------------------------------------------
@dataclass(frozen=True)
class Fault:
    side: str  # "source" or "dest"
    make: Callable[[images.PushedImage], Rule]
    read_timeout: float = 10.0


TRANSIENT = {
    "dest-503-blob-put": Fault("dest", lambda i: Rule(Status(503), "PUT", UPLOADS, times=2)),
    "dest-502-upload-start": Fault("dest", lambda i: Rule(Status(502), "POST", UPLOADS, times=2)),
    "dest-500-manifest-put": Fault("dest", lambda i: Rule(Status(500), "PUT", MANIFESTS, times=2)),
    "dest-refused-blob-head": Fault("dest", lambda i: Rule(Refuse(), "HEAD", BLOB, times=2)),
    "dest-upload-cut": Fault("dest", lambda i: Rule(
        CutRequest(LAYER // 2), "PUT", UPLOADS, times=1, query=_layer_hex(i))),
    "dest-stall-manifest-head": Fault(
        "dest", lambda i: Rule(Stall(5), "HEAD", MANIFESTS, times=1), read_timeout=1.0),
    "source-503-blob-get": Fault("source", lambda i: Rule(Status(503), "GET", BLOB, times=2)),
    "source-500-manifest-get": Fault(
        "source", lambda i: Rule(Status(500), "GET", MANIFESTS, times=2)),
    "source-refused-blob-get": Fault("source", lambda i: Rule(Refuse(), "GET", BLOB, times=2)),
    "source-download-cut": Fault("source", lambda i: Rule(
        CutResponse(LAYER // 2), "GET", _layer_hex(i), times=1)),
    "source-stall-blob-get": Fault(
        "source", lambda i: Rule(Stall(5), "GET", BLOB, times=1), read_timeout=1.0),
}


@pytest.mark.parametrize("name", sorted(TRANSIENT))
def test_fault_that_clears_is_retried_and_copy_verifies(
    name: str, rig: Rig, unique_repo: str,
) -> None:
    fault = TRANSIENT[name]
    image = _push(rig.registries, unique_repo)
    proxy = rig.source if fault.side == "source" else rig.dest
    rule = proxy.add(fault.make(image))
    results = copy_many(f"{rig.source.host}/{unique_repo}@{image.digest}",
                        rig.targets(unique_repo), read_timeout=fault.read_timeout)
    assert [r.error for r in results] == [None, None]
    assert rule.hits == rule.times  # the fault really happened, as often as scripted
    faulted = proxy.requests(fault=type(rule.action).__name__)
    assert len(faulted) == rule.times
    if isinstance(rule.action, CutRequest | Refuse | Stall):
        assert all(s.status is None for s in faulted)  # no answer at all reached the client
    assert rig.assert_complete(rig.registries.dest1, unique_repo) == ["v1"]
    if fault.side == "dest":
        rig.assert_other_untouched_by_faults(unique_repo)
    else:
        assert rig.assert_complete(rig.registries.dest2, unique_repo) == ["v1"]


def test_upload_cut_part_way_leaves_nothing_corrupt(rig: Rig, unique_repo: str) -> None:
    # One layer big enough that the cut lands well inside it, in both directions at once.
    image = images.push_oci_image(rig.registries.source, unique_repo, "v1", layers=1,
                                  layer_size=1024 * 1024)
    layer = _layer_hex(image)
    rig.dest.add(Rule(CutRequest(300_000), "PUT", UPLOADS, times=1, query=layer))
    rig.source.add(Rule(CutResponse(700_000), "GET", layer, times=1))
    results = copy_many(f"{rig.source.host}/{unique_repo}@{image.digest}",
                        rig.targets(unique_repo))
    assert [r.error for r in results] == [None, None]
    assert rig.dest.count("PUT", UPLOADS, fault="CutRequest") == 1
    assert rig.source.count("GET", layer, fault="CutResponse") == 1
    for server in (rig.registries.dest1, rig.registries.dest2):
        assert rig.assert_complete(server, unique_repo, skopeo=True) == ["v1"]


def test_outage_is_retried_until_cleared(rig: Rig, unique_repo: str) -> None:
    image = _push(rig.registries, unique_repo)
    rig.dest.add(Rule(Status(503), "PUT", MANIFESTS))

    def clear_after_two_failures() -> None:
        rig.dest.wait_for(lambda: rig.dest.count("PUT", MANIFESTS, status=503) >= 2)
        rig.dest.clear()

    slower = RetryPolicy(attempts=8, initial=0.2, maximum=0.5, jitter=0.1, max_elapsed=20)
    results = copy_many(f"{rig.source.host}/{unique_repo}@{image.digest}",
                        rig.targets(unique_repo), retry=slower, during=clear_after_two_failures)
    assert [r.error for r in results] == [None, None]
    assert rig.dest.count("PUT", MANIFESTS, status=503) >= 2
    assert rig.assert_complete(rig.registries.dest1, unique_repo) == ["v1"]
    rig.assert_other_untouched_by_faults(unique_repo)


# -- 429 and Retry-After ------------------------------------------------------------------------
@pytest.mark.parametrize("side", ["dest", "source"])
def test_retry_after_is_waited_for(side: str, rig: Rig, unique_repo: str) -> None:
    image = _push(rig.registries, unique_repo)
    proxy = rig.dest if side == "dest" else rig.source
    # Manifests move one at a time, so nothing else is under way when the 429 comes.
    method = "PUT" if side == "dest" else "GET"
    proxy.add(Rule(Status(429, {"Retry-After": "1", "Content-Type": "application/json"},
                          TOO_MANY), method, MANIFESTS, times=1))
    results = copy_many(f"{rig.source.host}/{unique_repo}@{image.digest}",
                        rig.targets(unique_repo))
    assert [r.error for r in results] == [None, None]
    (limited,) = proxy.requests(status=429)
    later = [s for s in proxy.seen if s.time > limited.time]
    assert later, "the request was never retried"
    assert min(s.time for s in later) >= limited.time + 1.0
    assert rig.assert_complete(rig.registries.dest1, unique_repo) == ["v1"]
    assert rig.assert_complete(rig.registries.dest2, unique_repo) == ["v1"]


def test_retry_after_holds_every_request_to_that_registry(rig: Rig, unique_repo: str) -> None:
    # A slow registry (each upload takes 0.25 s) and more blobs than upload slots: without a
    # registry-wide hold, uploads would keep arriving all through the Retry-After second.
    image = _push(rig.registries, unique_repo, layers=8)
    rig.dest.add(Rule(Status(429, {"Retry-After": "1"}, TOO_MANY), "PUT", UPLOADS, times=1))
    rig.dest.add(Rule(Delay(0.25), "PUT", UPLOADS))
    results = copy_many(f"{rig.source.host}/{unique_repo}@{image.digest}",
                        rig.targets(unique_repo))
    assert [r.error for r in results] == [None, None]
    assert rig.assert_complete(rig.registries.dest1, unique_repo) == ["v1"]
    (limited,) = rig.dest.requests(status=429)
    # Requests sent before the client had read the 429 cannot be called back: allow 0.2 s for
    # that (a loaded machine), then nothing may arrive until the second has passed.
    early = [s for s in rig.dest.seen if limited.time + 0.2 < s.time < limited.time + 1.0]
    assert early == [], [(s.method, s.path) for s in early]
    assert any(s.time >= limited.time + 1.0 for s in rig.dest.seen)


# -- faults that cannot clear: a clear error, nothing tagged, the other destination untouched ---
def test_outage_longer_than_the_request_tier_fails_transient(rig: Rig, unique_repo: str) -> None:
    image = _push(rig.registries, unique_repo)
    rig.dest.add(Rule(Status(503), "PUT", MANIFESTS))
    failed, ok = copy_many(f"{rig.source.host}/{unique_repo}@{image.digest}",
                           rig.targets(unique_repo))
    assert isinstance(failed.error, ServerError) and failed.error.transient
    assert failed.error.status == 503 and "put manifest" in str(failed.error)
    assert rig.dest.count("PUT", MANIFESTS, status=503) == FAST.attempts
    assert ok.ok
    assert_untouched(rig.registries.dest1, unique_repo, image.digest)
    rig.assert_other_untouched_by_faults(unique_repo)


def test_source_outage_fails_every_destination_and_tags_nothing(
    rig: Rig, unique_repo: str,
) -> None:
    image = _push(rig.registries, unique_repo)
    rig.source.add(Rule(Status(503), "GET", BLOB))
    results = copy_many(f"{rig.source.host}/{unique_repo}@{image.digest}",
                        rig.targets(unique_repo))
    for result in results:
        assert isinstance(result.error, ServerError) and "get blob" in str(result.error)
    for server in (rig.registries.dest1, rig.registries.dest2):
        assert_untouched(server, unique_repo, image.digest)


def test_destination_not_listening_fails_alone(rig: Rig, unique_repo: str) -> None:
    image = _push(rig.registries, unique_repo)
    rig.dest.stop_listening()
    failed, ok = copy_many(f"{rig.source.host}/{unique_repo}@{image.digest}",
                           rig.targets(unique_repo))
    assert isinstance(failed.error, ConnectionFailed) and failed.error.transient
    assert ok.ok
    assert_untouched(rig.registries.dest1, unique_repo, image.digest)
    rig.assert_other_untouched_by_faults(unique_repo)


def test_flipped_source_bytes_fail_permanently_and_commit_nothing(
    rig: Rig, unique_repo: str,
) -> None:
    image = _push(rig.registries, unique_repo)
    layer = image.blobs[-1]
    # Once: the destination that read the bad copy fails; the other reads good bytes.
    rig.source.add(Rule(FlipBytes(at=LAYER // 2), "GET", layer.split(":")[1], times=1))
    results = copy_many(f"{rig.source.host}/{unique_repo}@{image.digest}",
                        rig.targets(unique_repo))
    failed = [r for r in results if not r.ok]
    assert len(failed) == 1, [r.error for r in results]
    error = failed[0].error
    assert isinstance(error, DigestMismatch) and not error.transient
    assert layer in str(error)
    bad = rig.registries.dest1 if failed[0] is results[0] else rig.registries.dest2
    good = rig.registries.dest2 if bad is rig.registries.dest1 else rig.registries.dest1
    assert_untouched(bad, unique_repo, image.digest)
    assert not images.blob_exists(bad, unique_repo, layer), "the corrupt upload was committed"
    assert rig.assert_complete(good, unique_repo) == ["v1"]


def test_wrong_digest_on_a_destination_manifest_put(rig: Rig, unique_repo: str) -> None:
    image = _push(rig.registries, unique_repo)
    rig.dest.add(Rule(WrongDigest(), "PUT", MANIFESTS))
    failed, ok = copy_many(f"{rig.source.host}/{unique_repo}@{image.digest}",
                           rig.targets(unique_repo))
    assert isinstance(failed.error, DigestMismatch) and not failed.error.transient
    assert "sha256:" + "0" * 64 in str(failed.error) and image.digest in str(failed.error)
    assert ok.ok
    # The registry may hold the manifest (it stored the right bytes); it must hold no tag.
    assert rig.assert_complete(rig.registries.dest1, unique_repo) == []
    rig.assert_other_untouched_by_faults(unique_repo)


def test_wrong_digest_on_the_source_when_resolving_a_tag(rig: Rig, unique_repo: str) -> None:
    image = _push(rig.registries, unique_repo)
    rig.source.add(Rule(WrongDigest(), "GET", MANIFESTS))
    results = copy_many(f"{rig.source.host}/{unique_repo}:v1", rig.targets(unique_repo))
    for result in results:
        assert isinstance(result.error, DigestMismatch), result.error
        assert "sha256:" + "0" * 64 in str(result.error)
    for server in (rig.registries.dest1, rig.registries.dest2):
        assert_untouched(server, unique_repo, image.digest)


def test_wrong_digest_header_is_not_trusted_over_verified_bytes(
    rig: Rig, unique_repo: str,
) -> None:
    # Pinned by digest, the bytes are checked against the digest asked for; a lying header
    # changes nothing.
    image = _push(rig.registries, unique_repo)
    rig.source.add(Rule(WrongDigest(), "GET", MANIFESTS))
    results = copy_many(f"{rig.source.host}/{unique_repo}@{image.digest}",
                        rig.targets(unique_repo))
    assert [r.error for r in results] == [None, None]
    assert rig.source.count("GET", MANIFESTS, fault="WrongDigest") >= 1
    assert rig.assert_complete(rig.registries.dest1, unique_repo) == ["v1"]
    assert rig.assert_complete(rig.registries.dest2, unique_repo) == ["v1"]


def test_missing_location_on_upload_is_a_protocol_error(rig: Rig, unique_repo: str) -> None:
    image = _push(rig.registries, unique_repo)
    rig.dest.add(Rule(DropLocation(), "POST", UPLOADS))
    failed, ok = copy_many(f"{rig.source.host}/{unique_repo}@{image.digest}",
                           rig.targets(unique_repo))
    assert isinstance(failed.error, ProtocolError) and not failed.error.transient
    assert "Location" in str(failed.error)
    assert rig.dest.count("POST", UPLOADS) == rig.dest.count("POST", UPLOADS, fault="DropLocation")
    assert ok.ok
    assert_untouched(rig.registries.dest1, unique_repo, image.digest)
    rig.assert_other_untouched_by_faults(unique_repo)


# -- redirects to another host: credentials stay home ---------------------------------------------
def test_source_blob_redirect_to_another_host_carries_no_credentials(
    rig: Rig, unique_repo: str,
) -> None:
    basic = rig.registries.basic
    assert basic.username and basic.password
    # The same image in an htpasswd registry and in an anonymous one (the "storage host").
    layers = [images.make_layer(LAYER) for _ in range(2)]
    image = images.push_oci_image(basic, unique_repo, "v1", layers=0, base_layers=layers)
    mirror = images.push_oci_image(rig.registries.source, unique_repo, layers=0,
                                   base_layers=layers)
    assert mirror.digest == image.digest
    with FaultProxy(basic.url) as front, FaultProxy(rig.registries.source.url) as storage:
        front.add(Rule(Redirect(storage.url), "GET", BLOB))
        credentials = StaticCredentials({front.host: Credential(basic.username, basic.password)})
        results = copy_many(f"{front.host}/{unique_repo}@{image.digest}",
                            rig.targets(unique_repo), credentials=credentials)
        assert [r.error for r in results] == [None, None]
        redirected = front.requests("GET", BLOB, status=307)
        assert redirected and all(s.authorization for s in redirected)
        arrived = storage.requests("GET", BLOB, status=200)
        assert len(arrived) == len(redirected)
        assert not any(s.authorization for s in storage.seen)
    for server in (rig.registries.dest1, rig.registries.dest2):
        assert rig.assert_complete(server, unique_repo, source=basic) == ["v1"]


def test_destination_redirect_to_another_host_carries_no_credentials(
    rig: Rig, unique_repo: str,
) -> None:
    basic = rig.registries.basic
    assert basic.username and basic.password
    image = _push(rig.registries, unique_repo)
    with FaultProxy(basic.url) as front, FaultProxy(basic.url) as elsewhere:
        front.add(Rule(Redirect(elsewhere.url), "PUT", MANIFESTS))
        credentials = StaticCredentials({front.host: Credential(basic.username, basic.password)})
        failed, ok = copy_many(f"{rig.source.host}/{unique_repo}@{image.digest}",
                               [f"{front.host}/{unique_repo}", f"{rig.other.host}/{unique_repo}"],
                               credentials=credentials)
        assert front.requests("PUT", UPLOADS) and all(
            s.authorization for s in front.requests("PUT"))
        assert elsewhere.requests("PUT", MANIFESTS)
        assert not any(s.authorization for s in elsewhere.seen)
    # The other host asked for credentials it was not given: a permanent 401, named as such.
    assert isinstance(failed.error, Unauthorized) and failed.error.status == 401
    assert basic.password not in str(failed.error)
    assert ok.ok
    assert_untouched(basic, unique_repo, image.digest)
    rig.assert_other_untouched_by_faults(unique_repo)


def test_destination_redirects_a_streamed_blob_upload(rig: Rig, unique_repo: str) -> None:
    # A streamed body cannot be sent twice: the redirect must end as this destination's error,
    # not escape the engine and take the other destination down with it.
    image = _push(rig.registries, unique_repo)
    with FaultProxy(rig.registries.dest1.url) as elsewhere:
        rig.dest.add(Rule(Redirect(elsewhere.url), "PUT", UPLOADS))
        failed, ok = copy_many(f"{rig.source.host}/{unique_repo}@{image.digest}",
                               rig.targets(unique_repo))
        assert elsewhere.count("PUT", UPLOADS, status=201) == 0
    assert isinstance(failed.error, ProtocolError), failed.error
    assert "redirected a streamed upload" in str(failed.error)
    assert ok.ok
    assert_untouched(rig.registries.dest1, unique_repo, image.digest)
    rig.assert_other_untouched_by_faults(unique_repo)
