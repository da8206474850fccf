"""Hostile and malformed input, at the engine level (issue 4).

Every case drives :class:`registry.copy.Copier` against in-memory registries and checks three
things: the error names what is wrong (asserted on its message), it is permanent and was not
retried (asserted on request counts, and on the retry tier's log where a retry would send no
request; the policy here would try four times), and the destination is untouched (no manifest,
no tag, no upload left open). Credentials are checked to go only where they belong. The last
test fuzzes the source argument of ``fanout copy``: a one-line usage error or a copy attempt,
never a traceback.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import os
from collections import Counter
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from producer.cli import main
from registry.copy import Copier
from registry.credentials import Credential, StaticCredentials
from registry.errors import (
    DigestMismatch,
    InvalidManifest,
    PermanentError,
    ProtocolError,
    RegistryError,
    SizeMismatch,
    Unauthorized,
)
from registry.manifest import (
    DOCKER_SCHEMA1_SIGNED,
    MAX_MANIFEST_BYTES,
    OCI_INDEX,
    OCI_MANIFEST,
)
from registry.options import CopyOptions, TransportOptions
from registry.reference import parse_reference, parse_repository
from registry.results import CopyResult
from registry.retry import RetryPolicy
from registry.session import Registries
from tests.support.fake_registry import FakeRegistry, Handler, plain_http, sha256

FAST = RetryPolicy(attempts=4, initial=0.001, maximum=0.01, max_elapsed=5)
INSECURE = TransportOptions(
    insecure_registries=frozenset({"src.test", "dst.test", "auth.test", "evil.test"}))
SECRET = "s3cr3t-hostile-pw"
SECRET_FORMS = (SECRET, base64.b64encode(f"user:{SECRET}".encode()).decode())
CHUNK = 64 * 1024
GENERIC = "application/json"


# -- the world: a source, a destination, and every request anybody saw ---------------------------

@dataclass
class World:
    """A source and a destination registry behind one MockTransport; ``hosts`` may be
    rewired per test to make either hostile."""

    src: FakeRegistry = field(default_factory=lambda: FakeRegistry("src.test"))
    dst: FakeRegistry = field(default_factory=lambda: FakeRegistry("dst.test"))
    hosts: dict[str, Handler] = field(default_factory=dict)
    seen: list[httpx.Request] = field(default_factory=list)
    # What the request-tier retry logged: a permanent error must leave this empty, even where
    # a retry would send no request (a refused token realm fails before any is built).
    retried: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.hosts.update({"src.test": self.src.handle, "dst.test": self.dst.handle})

    async def handle(self, request: httpx.Request) -> httpx.Response:
        self.seen.append(request)
        serve = self.hosts.get(request.url.host)
        if serve is None:
            raise httpx.ConnectError(f"no fake registry at {request.url.host}", request=request)
        return serve(request)

    def copy(
        self, source: str, dest: str = "dst.test/app", tags: tuple[str, ...] = ("v1",),
        *, credentials: StaticCredentials | None = None,
        options: TransportOptions = INSECURE,
    ) -> CopyResult:
        async def go() -> CopyResult:
            async with Registries(credentials, options,
                                  transport=plain_http(self.handle, options)) as regs:
                copier = Copier(regs, CopyOptions(retry=FAST, referrers=False))
                return await copier.copy(parse_reference(source), parse_repository(dest), tags)

        retry_log = logging.getLogger("fanout.retry")
        listener = _Listener(self.retried)
        level = retry_log.level
        retry_log.setLevel(logging.INFO)
        retry_log.addHandler(listener)
        try:
            return asyncio.run(go())
        finally:
            retry_log.removeHandler(listener)
            retry_log.setLevel(level)

    def refused(
        self, result: CopyResult, kind: type[RegistryError], *fragments: str,
    ) -> RegistryError:
        """The result's error: of ``kind``, permanent, never retried, and its message says
        each fragment."""
        error = result.error
        assert error is not None, "the copy succeeded"
        assert isinstance(error, kind), f"{type(error).__name__}: {error}"
        assert isinstance(error, PermanentError) and not error.transient
        for fragment in fragments:
            assert fragment in str(error), f"{fragment!r} not in {str(error)!r}"
        assert self.retried == []
        return error


class _Listener(logging.Handler):
    def __init__(self, into: list[str]) -> None:
        super().__init__(logging.INFO)
        self.into = into

    def emit(self, record: logging.LogRecord) -> None:
        self.into.append(record.getMessage())


def untouched(world: World, repo: str = "app") -> None:
    """No manifest or tag landed at the destination, nor was one attempted; no upload open."""
    dst = world.dst
    assert dst.manifests.get(repo, {}) == {}
    assert dst.count("PUT", r"/manifests/") == 0
    assert dst.uploads == {}


def only_read(world: World) -> None:
    """A bad source wrote nothing at the destination: it saw only reads (its ping and the HEADs
    of the root and tags), no upload, manifest, tag or DELETE.

    Reads are allowed because the engine asks the destination what needs only the digest —
    the ping, the token, the root's and the tags' HEADs — beside the source's first reads
    rather than after them (a round trip saved per copy, registry/copy.py); nothing is written
    before the source's manifest has been read and verified.
    """
    for request in world.dst.requests:
        path = request.url.path
        assert request.method in ("GET", "HEAD"), f"{request.method} {path}"
        assert path == "/v2/" or "/manifests/" in path, f"{request.method} {path}"
    untouched(world)


def gets(reg: FakeRegistry, what: str = r"/manifests/") -> int:
    return reg.count("GET", what)


def config_blob(reg: FakeRegistry, repo: str = "app") -> dict[str, Any]:
    raw = json.dumps({"architecture": "amd64", "os": "linux",
                      "rootfs": {"type": "layers", "diff_ids": []}}).encode()
    return {"mediaType": "application/vnd.oci.image.config.v1+json",
            "digest": reg.put_blob(repo, raw), "size": len(raw)}


def image(reg: FakeRegistry, layers: list[dict[str, Any]], repo: str = "app") -> dict[str, Any]:
    return {"schemaVersion": 2, "mediaType": OCI_MANIFEST, "config": config_blob(reg, repo),
            "layers": layers}


def layer(digest: str, size: int) -> dict[str, Any]:
    return {"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
            "digest": digest, "size": size}


def serve(reg: FakeRegistry, document: dict[str, Any] | bytes, media_type: str = OCI_MANIFEST,
          *, repo: str = "app", under: str | None = None) -> str:
    """Store raw bytes at the source, under their own digest or ``under`` (a lie); the key."""
    raw = document if isinstance(document, bytes) else json.dumps(document).encode()
    key = under or sha256(raw)
    reg.manifests.setdefault(repo, {})[key] = (raw, media_type)
    return key


def oversized() -> bytes:
    return b'{"schemaVersion": 2, "padding": "' + b"a" * MAX_MANIFEST_BYTES + b'"}'


# -- manifests from a hostile source ----------------------------------------------------------

def test_manifest_over_4_mib_with_content_length() -> None:
    world = World()
    digest = serve(world.src, oversized())
    result = world.copy(f"src.test/app@{digest}")
    world.refused(result, InvalidManifest, f"is {len(oversized())} bytes, over the 4 MiB limit")
    assert gets(world.src) == 1
    only_read(world)


class Endless:
    """A response body that streams ``body`` in pieces, then (when ``forever``) never ends;
    counts what it handed out so a test can prove the reader stopped at the limit."""

    def __init__(self, body: bytes = b"", *, forever: bool = False) -> None:
        self.body, self.forever, self.sent = body, forever, 0

    async def __aiter__(self) -> AsyncIterator[bytes]:
        for start in range(0, len(self.body), CHUNK):
            self.sent += len(self.body[start:start + CHUNK])
            yield self.body[start:start + CHUNK]
        while self.forever:
            self.sent += CHUNK
            yield b" " * CHUNK


def streamed_source(world: World, stream: Endless, headers: dict[str, str]) -> None:
    def source(request: httpx.Request) -> httpx.Response:
        if "/manifests/" in request.url.path:
            world.src.requests.append(request)
            return httpx.Response(200, headers={"Content-Type": OCI_MANIFEST, **headers},
                                  content=stream)
        return world.src.handle(request)

    world.hosts["src.test"] = source


@pytest.mark.parametrize(
    ("stream", "headers"),
    [
        pytest.param(Endless(oversized()), {}, id="no-content-length"),
        pytest.param(Endless(b'{"schemaVersion": 2', forever=True), {}, id="forever"),
        pytest.param(Endless(b'{"schemaVersion": 2', forever=True), {"Content-Length": "100"},
                     id="forever-content-length-lies"),
    ],
)
def test_manifest_over_4_mib_streamed_is_cut_off_at_the_limit(
    stream: Endless, headers: dict[str, str],
) -> None:
    world = World()
    streamed_source(world, stream, headers)
    result = world.copy(f"src.test/app@{sha256(b'whatever')}")
    world.refused(result, InvalidManifest, "over the 4 MiB limit")
    # Reading stopped within one piece of the limit: the body was never buffered whole.
    assert MAX_MANIFEST_BYTES < stream.sent <= MAX_MANIFEST_BYTES + CHUNK
    assert gets(world.src) == 1
    only_read(world)


@pytest.mark.parametrize(
    ("raw", "media_type", "fragments"),
    [
        pytest.param(b'{"schemaVersion": 2, "config": ', OCI_MANIFEST,
                     ["not valid JSON"], id="truncated-json"),
        pytest.param(b"\xff\xfe not utf-8", OCI_MANIFEST, ["not valid JSON"], id="not-utf8"),
        pytest.param(b'{"schemaVersion": NaN}', OCI_MANIFEST, ["not valid JSON"], id="nan"),
        pytest.param(b"[" * 100_000, OCI_MANIFEST, ["not valid JSON", "nested too deeply"],
                     id="deep-nesting"),
        pytest.param(b'["schemaVersion", 2]', OCI_MANIFEST, ["must be a JSON object"],
                     id="json-array"),
    ],
)
def test_invalid_json(raw: bytes, media_type: str, fragments: list[str]) -> None:
    world = World()
    digest = serve(world.src, raw, media_type)
    world.refused(world.copy(f"src.test/app@{digest}"), InvalidManifest, *fragments)
    assert gets(world.src) == 1
    only_read(world)


def _typed(media_type: object, **shape: Any) -> dict[str, Any]:
    doc: dict[str, Any] = {"schemaVersion": 2, **shape}
    if media_type is not None:
        doc["mediaType"] = media_type
    return doc


_CONFIG = {"mediaType": "application/vnd.oci.image.config.v1+json",
           "digest": sha256(b"{}"), "size": 2}


@pytest.mark.parametrize(
    ("header", "doc", "fragments"),
    [
        pytest.param(OCI_MANIFEST, _typed(OCI_INDEX, manifests=[]),
                     [f"served as {OCI_MANIFEST} but its mediaType says '{OCI_INDEX}'"],
                     id="header-manifest-body-index"),
        pytest.param(OCI_INDEX, _typed(OCI_MANIFEST, config=_CONFIG, layers=[]),
                     [f"served as {OCI_INDEX} but its mediaType says '{OCI_MANIFEST}'"],
                     id="header-index-body-manifest"),
        pytest.param("application/vnd.example.thing+json", _typed(None, layers=[]),
                     ["unsupported manifest media type 'application/vnd.example.thing+json'"],
                     id="unknown-header"),
        pytest.param(GENERIC, _typed("application/vnd.example.thing+json", layers=[]),
                     ["unsupported manifest media type 'application/vnd.example.thing+json'"],
                     id="unknown-field"),
        pytest.param(GENERIC, _typed(None, manifests=[], config=_CONFIG, layers=[]),
                     ["no mediaType and both index and image fields"],
                     id="missing-and-ambiguous"),
        pytest.param(GENERIC, _typed(None, annotations={}),
                     ["no mediaType and neither manifests nor config/layers"],
                     id="missing-and-shapeless"),
        pytest.param(OCI_INDEX, _typed(None, manifests=[], layers=[]),
                     [f"{OCI_INDEX} must not have config or layers"], id="index-with-layers"),
        pytest.param(GENERIC, _typed(7, layers=[]), ["mediaType must be a string, not int"],
                     id="media-type-not-string"),
    ],
)
def test_wrong_or_missing_media_type(
    header: str, doc: dict[str, Any], fragments: list[str],
) -> None:
    world = World()
    digest = serve(world.src, doc, header)
    world.refused(world.copy(f"src.test/app@{digest}"), InvalidManifest, *fragments)
    assert gets(world.src) == 1
    only_read(world)


@pytest.mark.parametrize(
    ("header", "doc"),
    [
        pytest.param(DOCKER_SCHEMA1_SIGNED,
                     {"schemaVersion": 1, "name": "app", "tag": "v1", "fsLayers": [],
                      "signatures": []}, id="signed-header"),
        pytest.param(GENERIC, {"schemaVersion": 1, "name": "app", "tag": "v1", "fsLayers": []},
                     id="generic-header"),
    ],
)
def test_schema1_manifest(header: str, doc: dict[str, Any]) -> None:
    world = World()
    digest = serve(world.src, doc, header)
    world.refused(world.copy(f"src.test/app@{digest}"), InvalidManifest,
                  "Docker schema 1 manifests are not supported")
    assert gets(world.src) == 1
    only_read(world)


def test_index_loops_are_impossible_with_honest_hashing_and_caught_when_the_source_lies() -> None:
    """An index cannot name its own digest, nor can A → B → A exist: a digest is the hash of
    bytes that would have to contain it. So a loop needs a registry serving, under digest X,
    bytes that do not hash to X; the engine hashes every manifest it fetches against the digest
    it asked for, which refuses such a registry at the first lie, before any walk.

    Here: (1) an index served under X whose child is X, reached by digest and by a tag whose
    ``Docker-Content-Digest`` claims X; (2) A honestly served, naming B, and B served as an
    index naming A. Each ends in DigestMismatch, fetched once, destination untouched.
    """
    # (1) self-reference, pinned by digest
    world = World()
    liar = sha256(b"the digest the registry claims")
    self_ref = _typed(OCI_INDEX, manifests=[{"mediaType": OCI_INDEX, "digest": liar, "size": 2}])
    serve(world.src, self_ref, OCI_INDEX, under=liar)
    raw = json.dumps(self_ref).encode()
    world.refused(world.copy(f"src.test/app@{liar}"), DigestMismatch,
                  f"manifest: expected {liar}, got {sha256(raw)}")
    assert gets(world.src) == 1
    only_read(world)

    # (1') the same, by tag: the registry's Docker-Content-Digest header lies
    world = World()

    def lying_header(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/v2/app/manifests/v1":
            world.src.requests.append(request)
            return httpx.Response(200, content=raw, headers={
                "Content-Type": OCI_INDEX, "Docker-Content-Digest": liar})
        return world.src.handle(request)

    world.hosts["src.test"] = lying_header
    world.refused(world.copy("src.test/app:v1"), DigestMismatch, f"expected {liar}")
    assert gets(world.src) == 1
    only_read(world)

    # (2) A → B → A: A is honest, B is served under its digest with bytes that name A
    world = World()
    b_digest = sha256(b"B as A names it")  # B fails its hash before its size matters
    a_doc = _typed(OCI_INDEX, manifests=[{"mediaType": OCI_INDEX, "digest": b_digest,
                                          "size": 100}])
    a_digest = serve(world.src, a_doc, OCI_INDEX)
    b_doc = _typed(OCI_INDEX, manifests=[{"mediaType": OCI_INDEX, "digest": a_digest,
                                          "size": len(json.dumps(a_doc))}])
    serve(world.src, b_doc, OCI_INDEX, under=b_digest)
    world.refused(world.copy(f"src.test/app@{a_digest}"), DigestMismatch, f"expected {b_digest}")
    assert gets(world.src, a_digest) == 1
    assert gets(world.src, b_digest) == 1
    untouched(world)


def test_loop_guards_hold_even_if_digest_verification_were_bypassed(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Defence in depth behind the hash check above: with verification switched off (standing in
    for a broken hash), a self-referring index and an A → B → A loop still end, refused as
    InvalidManifest, rather than walking for ever."""
    monkeypatch.setattr("registry.manifest.verify_digest", lambda *_: None)

    world = World()
    x = sha256(b"x")
    serve(world.src, _typed(OCI_INDEX, manifests=[{"mediaType": OCI_INDEX, "digest": x,
                                                   "size": 1}]), OCI_INDEX, under=x)
    world.refused(world.copy(f"src.test/app@{x}"), InvalidManifest, f"index refers to itself ({x})")
    assert gets(world.src) == 1
    only_read(world)

    world = World()
    a, b = sha256(b"a"), sha256(b"b")
    a_raw = json.dumps(_typed(OCI_INDEX, manifests=[{"mediaType": OCI_INDEX, "digest": b,
                                                     "size": 0}])).encode()
    b_raw = json.dumps(_typed(OCI_INDEX, manifests=[{"mediaType": OCI_INDEX, "digest": a,
                                                     "size": len(a_raw)}])).encode()
    a_raw = a_raw.replace(b'"size": 0', f'"size": {len(b_raw)}'.encode())
    assert len(a_raw) == len(b_raw)  # so the size each names is right: only the loop is wrong
    serve(world.src, a_raw, OCI_INDEX, under=a)
    serve(world.src, b_raw, OCI_INDEX, under=b)
    world.refused(world.copy(f"src.test/app@{a}"), InvalidManifest, "refers back to", "a loop")
    assert gets(world.src, a) == 1
    assert gets(world.src, b) == 1
    untouched(world)


@pytest.mark.parametrize("delta", [5, -5], ids=["declared-larger", "declared-smaller"])
def test_child_manifest_size_lies(delta: int) -> None:
    world = World()
    child = world.src.push_image("app", [os.urandom(100)])
    raw, media_type = world.src.manifests["app"][child]
    index = _typed(OCI_INDEX, manifests=[{"mediaType": media_type, "digest": child,
                                          "size": len(raw) + delta}])
    digest = serve(world.src, index, OCI_INDEX)
    world.refused(world.copy(f"src.test/app@{digest}"), SizeMismatch,
                  f"is {len(raw)} bytes but its index says {len(raw) + delta}")
    assert gets(world.src, child) == 1
    untouched(world)


@pytest.mark.parametrize(
    ("delta", "fragment"),
    [
        pytest.param(-10, "is larger than its descriptor's {size} bytes", id="blob-larger"),
        pytest.param(10, "ended after {actual} of {size} bytes", id="blob-smaller"),
        pytest.param(2**63, "ended after {actual} of {size} bytes", id="blob-absurdly-smaller"),
    ],
)
def test_blob_size_lies(delta: int, fragment: str) -> None:
    world = World()
    data = os.urandom(20_000)
    blob = world.src.put_blob("app", data)
    declared = len(data) + delta
    digest = serve(world.src, image(world.src, [layer(blob, declared)]))
    result = world.copy(f"src.test/app@{digest}")
    world.refused(result, SizeMismatch, fragment.format(size=declared, actual=len(data)))
    assert gets(world.src, blob) == 1
    assert not world.dst.has_blob("app", blob)
    untouched(world)


@pytest.mark.parametrize("size", [-1, 1.0, True, "10", None], ids=repr)
def test_descriptor_size_that_is_not_a_size(size: object) -> None:
    world = World()
    blob = world.src.put_blob("app", b"x" * 10)
    digest = serve(world.src, image(world.src, [layer(blob, size)]))  # type: ignore[arg-type]
    world.refused(world.copy(f"src.test/app@{digest}"), InvalidManifest,
                  f"layers[0].size must be a non-negative integer, not {size!r}")
    assert gets(world.src) == 1
    only_read(world)


@pytest.mark.parametrize(
    ("digest", "problem"),
    [
        pytest.param("md5:" + "0" * 32, "digest algorithm 'md5' is not supported", id="md5"),
        pytest.param("sha384:" + "0" * 96, "digest algorithm 'sha384' is not supported",
                     id="sha384"),
        pytest.param("SHA256:" + "0" * 64, "digest algorithm 'SHA256' is not supported",
                     id="upper-case-algorithm"),
        pytest.param("sha256:" + "A" * 64, "is not a valid sha256 digest", id="upper-case-hex"),
        pytest.param("sha256:" + "0" * 63, "is not a valid sha256 digest", id="short"),
        pytest.param("0" * 64, "has no algorithm prefix", id="no-algorithm"),
    ],
)
@pytest.mark.parametrize("where", ["layers[0]", "manifests[0]", "config"])
def test_unsupported_digest_algorithm_in_descriptor(
    digest: str, problem: str, where: str,
) -> None:
    world = World()
    if where == "manifests[0]":
        doc = _typed(OCI_INDEX, manifests=[{"mediaType": OCI_MANIFEST, "digest": digest,
                                            "size": 10}])
        media_type = OCI_INDEX
    else:
        doc = image(world.src, [layer(digest, 10)])
        if where == "config":
            doc["config"]["digest"], doc["layers"] = digest, []
        media_type = OCI_MANIFEST
    source = serve(world.src, doc, media_type)
    world.refused(world.copy(f"src.test/app@{source}"), InvalidManifest,
                  f"{where}.digest is invalid: ", problem)
    assert gets(world.src) == 1
    only_read(world)


def test_manifest_bytes_do_not_hash_to_digest() -> None:
    world = World()
    honest = world.src.push_image("app", [os.urandom(100)])
    raw, media_type = world.src.manifests["app"][honest]
    tampered = raw.replace(b'"amd64"', b'"arm64"') if b"amd64" in raw else raw + b" "
    world.src.manifests["app"][honest] = (tampered, media_type)
    world.refused(world.copy(f"src.test/app@{honest}"), DigestMismatch,
                  f"manifest: expected {honest}, got {sha256(tampered)}")
    assert gets(world.src) == 1
    only_read(world)


def test_child_manifest_bytes_do_not_hash_to_digest() -> None:
    world = World()
    child = world.src.push_image("app", [os.urandom(100)])
    raw, media_type = world.src.manifests["app"][child]
    index = _typed(OCI_INDEX, manifests=[{"mediaType": media_type, "digest": child,
                                          "size": len(raw)}])
    digest = serve(world.src, index, OCI_INDEX)
    world.src.manifests["app"][child] = (raw + b"\n", media_type)
    world.refused(world.copy(f"src.test/app@{digest}"), DigestMismatch, f"expected {child}")
    assert gets(world.src, child) == 1
    untouched(world)


def test_blob_bytes_do_not_hash_to_digest() -> None:
    world = World()
    data = os.urandom(20_000)
    digest = world.src.push_image("app", [data])
    blob = sha256(data)
    world.src.blobs["app"][blob] = data[:-1] + bytes([data[-1] ^ 1])  # same size, one bit off
    world.refused(world.copy(f"src.test/app@{digest}"), DigestMismatch,
                  "blob content hashes to", f"not to its digest {blob}")
    assert gets(world.src, blob) == 1
    assert not world.dst.has_blob("app", blob)
    untouched(world)


# -- WWW-Authenticate from a hostile registry -----------------------------------------------------

MALFORMED = [
    pytest.param('Bearer realm="http://auth.test/token', "unterminated quoted string",
                 id="unterminated"),
    pytest.param('realm="http://auth.test/token"', "parameter before any auth-scheme",
                 id="no-scheme"),
    # Syntactically a token68 ("realm="), so a Bearer challenge without a realm.
    pytest.param("Bearer realm=", "Bearer challenge from {host} has no realm", id="empty-value"),
    pytest.param('Bearer realm="x",=y', "expected an auth-scheme or a parameter",
                 id="nameless-param"),
    pytest.param('Bearer realm="http://auth.test/token" service="x"',
                 "expected ',' or the end of the header", id="missing-comma"),
    pytest.param('"Bearer"', "expected an auth-scheme", id="quoted-scheme"),
    pytest.param('Bearer service="registry"', "Bearer challenge from {host} has no realm",
                 id="no-realm"),
    pytest.param('Bearer realm="http://[::1/token"', "malformed realm", id="unparseable-realm"),
]
REALMS = [
    pytest.param("ftp://auth.test/token", "token realm scheme 'ftp'", id="ftp"),
    pytest.param("file:///etc/passwd", "token realm scheme 'file'", id="file"),
    pytest.param("javascript:alert(1)", "token realm scheme 'javascript'", id="javascript"),
    pytest.param("http://169.254.169.254/latest/meta-data",
                 "token realm host 169.254.169.254", id="link-local"),
]


def challenging(world: World, host: str, header: str) -> None:
    """``host`` answers every unauthenticated request with 401 and ``header``."""
    honest = world.hosts.get(host, world.src.handle)

    def handler(request: httpx.Request) -> httpx.Response:
        if "authorization" not in request.headers:
            return httpx.Response(401, headers={"WWW-Authenticate": header},
                                  json={"errors": [{"code": "UNAUTHORIZED"}]})
        return honest(request)

    world.hosts[host] = handler
    world.hosts["auth.test"] = lambda request: httpx.Response(200, json={"token": "t"})


def no_credentials_left(world: World, error: RegistryError, host: str) -> None:
    # Pings of /v2/ only (the scheme probe, the auth ping); no token request; Authorization
    # sent nowhere. The destination's own reads, asked beside the source's, are only_read's.
    elsewhere = [r for r in world.seen if r.url.host != world.dst.host]
    assert {(r.method, str(r.url)) for r in elsewhere} == {("GET", f"{host}/v2/")}
    assert len(elsewhere) <= 2
    assert all("authorization" not in r.headers for r in world.seen)
    for secret in SECRET_FORMS:
        assert secret not in str(error)


CREDS = StaticCredentials({"src.test": Credential("user", SECRET),
                           "dst.test": Credential("user", SECRET),
                           "secure.test": Credential("user", SECRET)})


@pytest.mark.parametrize(("header", "fragment"), MALFORMED)
def test_malformed_www_authenticate_at_source(header: str, fragment: str) -> None:
    world = World()
    digest = world.src.push_image("app", [b"layer"])
    challenging(world, "src.test", header)
    result = world.copy(f"src.test/app@{digest}", credentials=CREDS)
    error = world.refused(result, ProtocolError, fragment.format(host="src.test"))
    no_credentials_left(world, error, "http://src.test")
    only_read(world)


@pytest.mark.parametrize(("realm", "fragment"), REALMS)
def test_token_realm_with_unexpected_target_at_source(realm: str, fragment: str) -> None:
    world = World()
    digest = world.src.push_image("app", [b"layer"])
    challenging(world, "src.test", f'Bearer realm="{realm}",service="src.test"')
    result = world.copy(f"src.test/app@{digest}", credentials=CREDS)
    error = world.refused(result, ProtocolError, fragment, "not allowed")
    no_credentials_left(world, error, "http://src.test")
    only_read(world)


def test_http_realm_for_an_https_registry() -> None:
    world = World()
    world.hosts["secure.test"] = world.src.handle
    digest = world.src.push_image("app", [b"layer"])
    challenging(world, "secure.test", 'Bearer realm="http://auth.test/token",service="s"')
    result = world.copy(f"secure.test/app@{digest}", credentials=CREDS)
    error = world.refused(result, ProtocolError, "token realm scheme 'http'",
                          "https only for a TLS registry")
    no_credentials_left(world, error, "https://secure.test")


@pytest.mark.parametrize(
    ("header", "fragment"),
    [
        pytest.param('Bearer realm="http://auth.test/token', "unterminated quoted string",
                     id="unterminated"),
        pytest.param('Bearer service="registry"', "Bearer challenge from dst.test has no realm",
                     id="no-realm"),
        pytest.param('Bearer realm="ftp://auth.test/token"', "token realm scheme 'ftp'", id="ftp"),
        pytest.param('Bearer realm="javascript:alert(1)"', "token realm scheme 'javascript'",
                     id="javascript"),
    ],
)
def test_hostile_www_authenticate_at_destination(header: str, fragment: str) -> None:
    world = World()
    digest = world.src.push_image("app", [b"layer"])
    challenging(world, "dst.test", header)
    result = world.copy(f"src.test/app@{digest}", credentials=CREDS)
    error = world.refused(result, ProtocolError, fragment)
    to_dst = [r for r in world.seen if r.url.host != "src.test"]
    # The scheme probe and the auth ping, nothing more.
    assert {(r.method, str(r.url)) for r in to_dst} == {("GET", "http://dst.test/v2/")}
    assert len(to_dst) <= 2
    assert all("authorization" not in r.headers for r in world.seen)
    for secret in SECRET_FORMS:
        assert secret not in str(error)
    untouched(world)


# -- Location on another host ---------------------------------------------------------------------

def basic_destination_redirecting_uploads(
    world: World, other: Callable[[httpx.Request], httpx.Response],
) -> list[httpx.Request]:
    """dst.test wants Basic auth and hands out upload Locations on evil.test, served by
    ``other``; returns the requests evil.test saw."""
    dst, evil = world.dst, []

    def destination(request: httpx.Request) -> httpx.Response:
        if "authorization" not in request.headers:
            return httpx.Response(401, headers={"WWW-Authenticate": 'Basic realm="dst"'})
        response = dst.handle(request)
        if request.method == "POST" and response.status_code == 202:
            location = response.headers["Location"]
            return httpx.Response(202, headers={"Location": f"http://evil.test{location}",
                                                "Range": "0-0"})
        return response

    def elsewhere(request: httpx.Request) -> httpx.Response:
        evil.append(request)
        return other(request)

    world.hosts.update({"dst.test": destination, "evil.test": elsewhere})
    return evil


def test_upload_location_on_another_host_gets_no_credentials_and_completes() -> None:
    """The distribution spec lets a registry hand out an upload Location on another host (a
    storage front end): fanout follows it, but the registry's credentials stay with the
    registry. Here the other host is a working upload endpoint, so the copy completes."""
    world = World()
    data = os.urandom(5000)
    digest = world.src.push_image("app", [data])
    evil = basic_destination_redirecting_uploads(world, world.dst.handle)
    result = world.copy(f"src.test/app@{digest}", credentials=CREDS)
    assert result.ok, result.error
    assert {r.method for r in evil} == {"PUT"}
    assert all("authorization" not in r.headers for r in evil)
    # ... while the registry itself did get them: the test could have seen a leak.
    to_dst = [r for r in world.seen if r.url.host == "dst.test" and r.url.path != "/v2/"]
    assert to_dst and all(r.headers["authorization"].startswith("Basic ") for r in to_dst)
    assert world.dst.has_blob("app", sha256(data))
    assert world.dst.manifests["app"]["v1"] == world.src.manifests["app"][digest]


def test_upload_location_on_another_host_that_wants_credentials_fails_clearly() -> None:
    """If that other host asks for credentials, it gets none: the upload fails, permanently,
    once per blob, naming the upload and the host, and nothing is written at the destination."""
    world = World()
    digest = world.src.push_image("app", [os.urandom(5000)])
    evil = basic_destination_redirecting_uploads(
        world, lambda request: httpx.Response(
            401, headers={"WWW-Authenticate": 'Basic realm="give me your password"'}))
    result = world.copy(f"src.test/app@{digest}", credentials=CREDS)
    error = world.refused(result, Unauthorized, "upload blob sha256:", "evil.test")
    assert error.status == 401
    assert evil and all("authorization" not in r.headers for r in evil)
    puts = Counter(r.url.params["digest"] for r in evil if r.method == "PUT")
    assert puts and set(puts.values()) == {1}
    assert world.dst.manifests.get("app", {}) == {}
    assert world.dst.count("PUT", r"/manifests/") == 0


# -- references on the command line ---------------------------------------------------------------

def _refuse_network(request: httpx.Request) -> httpx.Response:
    raise httpx.ConnectError("the fuzz test sends nothing", request=request)


@pytest.fixture
def offline_cli(monkeypatch: pytest.MonkeyPatch, tmp_path: Any) -> None:
    """``fanout copy`` with one quick attempt, no Docker config, and no network: a valid source
    reference fails to connect (exit 1) instead of reaching, say, Docker Hub."""
    monkeypatch.setenv("FANOUT_CONNECT_TIMEOUT", "0.1")
    monkeypatch.setenv("FANOUT_REQUEST_ATTEMPTS", "1")
    monkeypatch.setenv("FANOUT_REFERRERS", "0")
    monkeypatch.setenv("DOCKER_CONFIG", str(tmp_path))

    def offline(*args: Any, **kwargs: Any) -> Registries:
        return Registries(*args, **kwargs, transport=httpx.MockTransport(_refuse_network))

    # copy_cmd loads the engine when it runs (`fanout --help` does not), so patch it at home.
    monkeypatch.setattr("registry.session.Registries", offline)


_PINNED = "127.0.0.1:2/ok@sha256:" + "a" * 64
# Mostly valid references (a registry or a Hub namespace, a path, maybe a tag or digest), so the
# fuzz sees both sides of the parser, and near misses of them.
_PLAUSIBLE = st.from_regex(
    r"([a-z0-9]{1,6}(\.[a-z]{2,3})?(:[0-9]{1,5})?/)?[a-z0-9]{1,6}(/[a-z0-9._-]{1,6})?"
    r"(:[A-Za-z0-9_.-]{1,8})?(@sha256:[0-9a-f]{64})?", fullmatch=True)


@st.composite
def _near_miss(draw: st.DrawFn) -> str:
    text = draw(_PLAUSIBLE)
    at = draw(st.integers(0, len(text)))
    return text[:at] + draw(st.sampled_from(":/@.%[] \n\x00A")) + text[at:]


@pytest.mark.usefixtures("offline_cli")
@settings(max_examples=50, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.one_of(
    st.text(max_size=60),
    st.text("abAZ09:/.@_-[]% \n\t", max_size=40),
    _PLAUSIBLE,
    _near_miss(),
).filter(lambda text: not text.startswith("-")))  # argparse's to refuse, not ours
@example("")
@example("  ")
@example("UPPER/case")
@example("host:99999/x")
@example("ghcr.io/app@sha256:short")
@example("ghcr.io/app@md5:" + "0" * 32)
@example("ghcr.io/app@sha384:" + "0" * 96)
@example("https://user:hunter2@ghcr.io/x")
@example("ghcr.io/app:tag\nsecond line")
@example(_PINNED)
@example("127.0.0.1:2/ok:v1")
def test_cli_source_reference_fuzz(capsys: pytest.CaptureFixture[str], text: str) -> None:
    capsys.readouterr()  # hypothesis reuses the fixture: drop what earlier examples printed
    try:
        parse_reference(text.strip(), default_tag="latest")
    except ValueError:
        valid = False
    else:
        valid = True
    code = main(["copy", text, "127.0.0.1:1/x"])
    out, err = capsys.readouterr()
    assert "Traceback" not in out + err
    assert "hunter2" not in out + err
    if valid:
        assert code == 1, (out, err)
        assert "FAILED" in out
    else:
        assert code == 2, (out, err)
        lines = err.splitlines()
        assert len(lines) == 1 and err.endswith("\n"), err
        assert lines[0].startswith("fanout copy: invalid reference ")
