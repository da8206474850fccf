"""Round trips: what the engine asks at once rather than one answer after another (issue 10).

Over a WAN every request that waits for another's answer costs a round trip. These tests check
the order and overlap of requests, never their timing: a :class:`Hold` keeps some answers back
until other requests have arrived, which only a client that sent them all at once can satisfy.
A client that waited would never release the hold; after ``_GIVE_UP`` seconds it lets go and
records that it was broken, so such a client fails the test instead of hanging it.
"""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import httpx

from registry.copy import Copier
from registry.credentials import Credential, StaticCredentials
from registry.options import CopyOptions, TransportOptions
from registry.reference import parse_reference, parse_repository
from registry.results import CopyResult
from registry.retry import RetryPolicy
from registry.session import Registries
from tests.support.fake_registry import FakeRegistry, plain_http

FAST = RetryPolicy(attempts=4, initial=0.001, maximum=0.01, max_elapsed=5)
INSECURE = TransportOptions(insecure_registries=frozenset({"src.test", "dst.test", "auth.test"}))
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
_GIVE_UP = 5.0  # a deadlock guard, not a measure: no assertion is about time

Match = Callable[[httpx.Request], bool]


def kind(request: httpx.Request) -> str:
    """``src GET manifest``, ``dst HEAD blob``, ``dst upload POST``, ``src referrers``…"""
    side = request.url.host.split(".")[0]
    path = request.url.path
    if path == "/v2/":
        what = "ping"
    elif "/blobs/uploads/" in path:
        what = f"upload {request.method}"
    elif "/blobs/" in path:
        what = f"{request.method} blob"
    elif "/manifests/" in path:
        what = f"{request.method} manifest"
    elif path.endswith("/tags/list"):
        what = "tag list"
    elif "/referrers/" in path:
        what = "referrers"
    else:
        what = f"{request.method} {path}"
    return f"{side} {what}"


def is_(wanted: str, path_has: str = "") -> Match:
    return lambda r: kind(r) == wanted and path_has in r.url.path


@dataclass
class Hold:
    """Answers to requests matching ``which`` wait until ``until`` holds of the requests that
    have arrived so far."""

    which: Match
    until: Callable[[Sequence[httpx.Request]], bool]
    released: asyncio.Event = field(default_factory=asyncio.Event)
    broken: bool = False


def arrived(*matches: Match) -> Callable[[Sequence[httpx.Request]], bool]:
    """True once, for each match, some request that arrived matches it."""
    return lambda seen: all(any(m(r) for r in seen) for m in matches)


@dataclass
class Wire:
    """A source and a destination registry behind one async MockTransport that logs every
    request as it arrives and as it is answered, and applies holds."""

    src: FakeRegistry = field(default_factory=lambda: FakeRegistry("src.test"))
    dst: FakeRegistry = field(default_factory=lambda: FakeRegistry("dst.test"))
    holds: list[Hold] = field(default_factory=list)
    seen: list[httpx.Request] = field(default_factory=list)
    log: list[str] = field(default_factory=list)  # "> kind" on arrival, "< kind" answered
    in_flight: int = 0
    most_in_flight: int = 0
    serve: dict[str, Callable[[httpx.Request], httpx.Response]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.serve.update({"src.test": self.src.handle, "dst.test": self.dst.handle})

    def hold(self, which: Match, until: Callable[[Sequence[httpx.Request]], bool]) -> Hold:
        found = Hold(which, until)
        self.holds.append(found)
        return found

    async def handle(self, request: httpx.Request) -> httpx.Response:
        self.seen.append(request)
        self.log.append(f"> {kind(request)}")
        self.in_flight += 1
        self.most_in_flight = max(self.most_in_flight, self.in_flight)
        try:
            for hold in self.holds:
                if hold.until(self.seen):
                    hold.released.set()
            for hold in self.holds:
                if hold.which(request) and not hold.released.is_set():
                    try:
                        await asyncio.wait_for(hold.released.wait(), _GIVE_UP)
                    except TimeoutError:
                        hold.broken = True
                        hold.released.set()
            await asyncio.sleep(0)  # answers go back in a later turn, as over a network
            return self.serve[request.url.host](request)
        finally:
            self.in_flight -= 1
            self.log.append(f"< {kind(request)}")

    def copy(self, source: str, dest: str = "dst.test/app", tags: tuple[str, ...] = ("v1",),
             *, credentials: StaticCredentials | None = None,
             transport_options: TransportOptions = INSECURE, **options: object) -> CopyResult:
        async def go() -> CopyResult:
            transport = plain_http(self.handle, transport_options)  # type: ignore[arg-type]
            async with Registries(credentials, transport_options, transport=transport) as regs:
                copier = Copier(regs, CopyOptions(retry=FAST, **options))  # type: ignore[arg-type]
                return await copier.copy(parse_reference(source), parse_repository(dest), tags)

        return asyncio.run(go())

    def kinds(self, host: str | None = None) -> list[str]:
        return [kind(r) for r in self.seen if host is None or r.url.host == host]


def push_index(reg: FakeRegistry, repo: str = "app", platforms: int = 3) -> tuple[str, list[str]]:
    """An index of ``platforms`` images sharing a base layer, tagged v1; its digest and the
    children's."""
    base = os.urandom(512)
    digests = [reg.push_image(repo, [base, os.urandom(256)]) for _ in range(platforms)]
    children = [{"mediaType": reg.manifests[repo][d][1], "digest": d,
                 "size": len(reg.manifests[repo][d][0])} for d in digests]
    index = json.dumps({"schemaVersion": 2, "mediaType": OCI_INDEX,
                        "manifests": children}).encode()
    return reg.put_manifest(repo, index, OCI_INDEX, "v1"), digests


# -- the first requests: everything that needs only the digest -------------------------------

def test_the_destination_head_of_the_root_leaves_before_the_source_answers_its_get() -> None:
    wire = Wire()
    digest, _ = push_index(wire.src)
    root_get = wire.hold(is_("src GET manifest", digest),
                         until=arrived(is_("dst HEAD manifest", digest),
                                       is_("dst HEAD manifest", "/v1")))

    result = wire.copy(f"src.test/app@{digest}", referrers=False)

    assert result.ok, result.error
    assert not root_get.broken, "the destination's HEADs waited for the source's manifest"


def test_a_child_is_fetched_and_checked_at_once() -> None:
    wire = Wire()
    digest, children = push_index(wire.src)
    holds = [wire.hold(is_("src GET manifest", child),
                       until=arrived(is_("dst HEAD manifest", child))) for child in children]

    result = wire.copy(f"src.test/app@{digest}", referrers=False)

    assert result.ok, result.error
    assert not any(hold.broken for hold in holds)


def test_referrers_are_asked_before_the_graph_is_copied() -> None:
    wire = Wire()
    digest, _ = push_index(wire.src)
    # The first write at the destination waits for the source's referrers question and its
    # tag list (cosign's tags): both must have left while the graph was being copied.
    first_put = wire.hold(lambda r: r.url.host == "dst.test" and r.method == "PUT",
                          until=arrived(is_("src referrers", digest), is_("src tag list")))

    result = wire.copy(f"src.test/app@{digest}")

    assert result.ok, result.error
    assert not first_put.broken, "referrers were asked only after the graph was copied"


def test_the_tags_head_leaves_with_the_roots_and_the_tag_is_still_written_last() -> None:
    wire = Wire()
    digest, _ = push_index(wire.src)
    blob_heads = wire.hold(is_("dst HEAD blob"), until=arrived(is_("dst HEAD manifest", "/v1")))

    result = wire.copy(f"src.test/app@{digest}", tags=("v1", "stable"), referrers=False)

    assert result.ok, result.error
    assert not blob_heads.broken
    puts = [r.url.path.rsplit("/", 1)[1] for r in wire.dst.requests
            if r.method == "PUT" and "/manifests/" in r.url.path]
    assert puts[-3] == digest and sorted(puts[-2:]) == ["stable", "v1"]
    assert result.stats.tags_written == 2


# -- blobs -------------------------------------------------------------------------------------

def test_every_blob_of_an_image_is_checked_at_once_beyond_the_transfer_slots() -> None:
    wire = Wire()
    layers = [os.urandom(128) for _ in range(10)]
    digest = wire.src.push_image("app", layers, tag="v1")
    blobs = 11  # the config and ten layers, more than the two transfers allowed at once
    heads = wire.hold(is_("dst HEAD blob"),
                      until=lambda seen: sum(kind(r) == "dst HEAD blob" for r in seen) >= blobs)

    result = wire.copy(f"src.test/app@{digest}", referrers=False, blob_concurrency=2)

    assert result.ok, result.error
    assert not heads.broken, "blob HEADs went in waves"
    assert result.stats.blobs_uploaded == blobs


def test_an_uploads_post_and_the_sources_get_leave_together() -> None:
    wire = Wire()
    digest = wire.src.push_image("app", [os.urandom(4096)], tag="v1")
    # One transfer at a time. The first upload's POST is not answered before a GET of the
    # source's blob has arrived, nor that GET before a POST: whichever leaves first, the other
    # must leave without waiting for its answer.
    posts = wire.hold(is_("dst upload POST"), until=arrived(is_("src GET blob")))
    gets = wire.hold(is_("src GET blob"), until=arrived(is_("dst upload POST")))

    result = wire.copy(f"src.test/app@{digest}", referrers=False, blob_concurrency=1)

    assert result.ok, result.error
    assert result.stats.blobs_uploaded == 2
    assert not posts.broken and not gets.broken, "the GET waited for the POST, or the reverse"
    assert wire.dst.uploads == {}


# -- the no-op: a handful of requests, all at once ---------------------------------------------

def test_a_no_op_copy_asks_its_few_questions_at_once_and_reads_nothing_else() -> None:
    wire = Wire()
    digest, _ = push_index(wire.src)
    first = wire.copy(f"src.test/app@{digest}")
    assert first.ok, first.error
    wire.seen.clear()
    wire.log.clear()
    wire.src.requests.clear()
    wire.dst.requests.clear()
    questions = [is_("src GET manifest", digest), is_("src referrers", digest),
                 is_("src tag list"), is_("dst HEAD manifest", digest),
                 is_("dst HEAD manifest", "/v1")]
    # No answer (but the pings') until every question has been asked: a copy that waited for
    # one answer before asking another would break this.
    together = wire.hold(lambda r: r.url.path != "/v2/", until=arrived(*questions))

    again = wire.copy(f"src.test/app@{digest}")

    assert again.ok, again.error
    assert not together.broken, f"the no-op's questions were not asked at once: {wire.log}"
    assert again.stats.manifests_skipped == 1 and again.stats.tags_written == 0
    assert sorted(wire.kinds("src.test")) == sorted(
        ["src ping", "src GET manifest", "src referrers", "src tag list"])
    assert sorted(wire.kinds("dst.test")) == sorted(
        ["dst ping", "dst HEAD manifest", "dst HEAD manifest"])
    assert len(wire.seen) == 7


def test_a_no_op_copy_to_three_tags_adds_a_head_per_tag_and_nothing_else() -> None:
    wire = Wire()
    digest, _ = push_index(wire.src)
    tags = ("v1", "1", "latest")
    assert wire.copy(f"src.test/app@{digest}", tags=tags, referrers=False).ok
    wire.seen.clear()

    again = wire.copy(f"src.test/app@{digest}", tags=tags, referrers=False)

    assert again.ok, again.error
    assert sorted(wire.kinds()) == sorted(
        ["src ping", "src GET manifest", "dst ping", *["dst HEAD manifest"] * 4])


# -- tokens: one per scope, however many requests need it at once ------------------------------

@dataclass
class TokenRealm:
    """Bearer auth in front of a fake registry: a token per request to auth.test."""

    issued: list[str] = field(default_factory=list)

    def guard(self, registry: FakeRegistry) -> Callable[[httpx.Request], httpx.Response]:
        def handle(request: httpx.Request) -> httpx.Response:
            if "authorization" not in request.headers:
                challenge = (f'Bearer realm="http://auth.test/token",'
                             f'service="{registry.host}"')
                return httpx.Response(401, headers={"WWW-Authenticate": challenge},
                                      json={"errors": [{"code": "UNAUTHORIZED"}]})
            return registry.handle(request)

        return handle

    def token(self, request: httpx.Request) -> httpx.Response:
        scope = " ".join(v for k, v in request.url.params.multi_items() if k == "scope")
        self.issued.append(f"{request.url.params.get('service')} {scope}")
        return httpx.Response(200, json={"token": f"t{len(self.issued)}", "expires_in": 300})


CREDS = StaticCredentials({"src.test": Credential("u", "p"), "dst.test": Credential("u", "p")})


def behind_a_realm(wire: Wire) -> TokenRealm:
    realm = TokenRealm()
    wire.serve.update({"src.test": realm.guard(wire.src), "dst.test": realm.guard(wire.dst),
                       "auth.test": realm.token})
    return realm


def test_requests_sent_at_once_share_one_token_per_scope() -> None:
    wire = Wire()
    realm = behind_a_realm(wire)
    digest, _ = push_index(wire.src)

    result = wire.copy(f"src.test/app@{digest}", credentials=CREDS)

    assert result.ok, result.error
    # The source's reads (manifests, referrers, tags, blobs) share one pull token; the
    # destination's HEADs and writes one push token.
    assert sorted(realm.issued) == ["dst.test repository:app:pull,push",
                                    "src.test repository:app:pull"]


def test_connections_are_opened_while_the_first_token_is_fetched() -> None:
    wire = Wire()
    realm = behind_a_realm(wire)
    digest, _ = push_index(wire.src)
    pings = 1 + 3  # the probe's, and three to open connections ahead of need

    def pinged(host: str) -> Match:
        return lambda r: r.url.host == host and r.url.path == "/v2/"

    tokens = wire.hold(lambda r: r.url.host == "auth.test", until=lambda seen: all(
        sum(pinged(host)(r) for r in seen) >= pings for host in ("src.test", "dst.test")))
    options = TransportOptions(insecure_registries=INSECURE.insecure_registries, preconnect=3)

    result = wire.copy(f"src.test/app@{digest}", credentials=CREDS, transport_options=options)

    assert result.ok, result.error
    assert not tokens.broken, "the connections were opened after the token, not during it"
    spare = [r for r in wire.seen if r.url.path == "/v2/"]
    assert len(spare) == 2 * pings
    assert all("authorization" not in r.headers for r in spare)
    assert len(realm.issued) == 2


def test_no_connection_is_opened_ahead_of_need_unasked_or_with_no_token_to_wait_for() -> None:
    for wire, options in (
            (Wire(), TransportOptions(insecure_registries=INSECURE.insecure_registries,
                                      preconnect=3)),  # no auth: nothing to wait for
            (Wire(), INSECURE)):  # token auth, but the option is off (the core's default)
        if options is INSECURE:
            behind_a_realm(wire)
        digest, _ = push_index(wire.src)
        result = wire.copy(f"src.test/app@{digest}", credentials=CREDS,
                           transport_options=options)
        assert result.ok, result.error
        assert [kind(r) for r in wire.seen if r.url.path == "/v2/"].count("src ping") == 1


def test_a_tags_destination_is_probed_and_its_token_got_while_the_tag_is_read() -> None:
    wire = Wire()
    realm = behind_a_realm(wire)
    push_index(wire.src)

    def token_for(service: str) -> Match:
        return lambda r: r.url.host == "auth.test" and r.url.params.get("service") == service

    # A source named by tag is read first, to pin it; the destination need not wait for that.
    resolve = wire.hold(is_("src GET manifest", "/v1"), until=arrived(token_for("dst.test")))

    result = wire.copy("src.test/app:v1", credentials=CREDS)

    assert result.ok, result.error
    assert not resolve.broken, "the destination was contacted only once the tag was read"
    assert sorted(realm.issued) == ["dst.test repository:app:pull,push",
                                    "src.test repository:app:pull"]
