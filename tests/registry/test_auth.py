from __future__ import annotations

import asyncio
import base64
import logging
import re
from collections.abc import Callable, Iterator
from urllib.parse import parse_qsl

import httpx
import pytest

from registry import scopes
from registry.auth import RegistryAuth
from registry.bounded import MAX_AUTH_BODY
from registry.credentials import Credential
from registry.errors import (
    Denied,
    ProtocolError,
    RateLimited,
    ServerError,
    Unauthorized,
    UnexpectedStatus,
)
from registry.scopes import SCOPES

REGISTRY = "registry.test"
BEARER = 'Bearer realm="https://auth.test/token",service="registry.test"'
MANIFEST = "https://registry.test/v2/team/app/manifests/v1"
PASSWORD = "hunter2-secret"
IDENTITY = "identity-refresh-secret"
USER = Credential(username="alice", password=PASSWORD)
Handler = Callable[[httpx.Request], httpx.Response]


def basic(username: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{username}:{password}".encode()).decode()


class Fake:
    """A registry at registry.test, its token server at auth.test, and storage.test."""

    def __init__(self, challenge: str | None = BEARER) -> None:
        self.challenge = challenge
        self.log: list[httpx.Request] = []
        self.issued: list[str] = []
        self.accepted: set[str] = set()
        self.token_handler: Handler | None = None
        self.expires_in: int | None = 300
        self.retry_scope: str | None = None  # the scope a 401 challenge names

    def __call__(self, request: httpx.Request) -> httpx.Response:
        # A snapshot: the flow resends the same Request object with new headers.
        self.log.append(httpx.Request(request.method, request.url, headers=request.headers,
                                      content=request.read(), extensions=request.extensions))
        if request.url.host == "auth.test":
            return self.token(request)
        if request.url.host == REGISTRY and request.url.port is None:
            return self.registry(request)
        return httpx.Response(200, content=b"elsewhere")

    def token(self, request: httpx.Request) -> httpx.Response:
        if self.token_handler is not None:
            return self.token_handler(request)
        value = f"tok{len(self.issued) + 1}"
        self.issued.append(value)
        self.accepted.add(value)
        body: dict[str, object] = {"token": value}
        if self.expires_in is not None:
            body["expires_in"] = self.expires_in
        return httpx.Response(200, json=body)

    def registry(self, request: httpx.Request) -> httpx.Response:
        if self.challenge is None:
            return httpx.Response(200)
        sent = request.headers.get("authorization", "")
        if self.challenge.startswith("Basic"):
            ok = sent == basic("alice", PASSWORD)
        else:
            ok = sent.startswith("Bearer ") and sent.removeprefix("Bearer ") in self.accepted
        if ok:
            if request.url.path.endswith("/blobs/sha256:aa"):
                return httpx.Response(307, headers={
                    "Location": "https://storage.test/blob?X-Sig=abc"})
            return httpx.Response(200)
        challenge = self.challenge
        if self.retry_scope and request.url.path != "/v2/":
            challenge += f',scope="{self.retry_scope}",error="invalid_token"'
        return httpx.Response(401, headers={"WWW-Authenticate": challenge})

    def to(self, host: str) -> list[httpx.Request]:
        return [r for r in self.log if r.url.host == host]

    @property
    def token_requests(self) -> list[httpx.Request]:
        return self.to("auth.test")


def stated_scopes(method: str, url: httpx.URL) -> tuple[str, ...]:
    """What fanout's operations (registry/fetch.py, push.py) state for these requests: the
    tests here send plain httpx requests, so this stands in for that layer."""
    match = re.match(r"^/v2/(?P<name>[^:\s]+)/(?:manifests/[^/]+|blobs/uploads/[^/]*|"
                     r"blobs/[^/]+|tags/list|referrers/[^/]+)$", url.path)
    if match is None:
        return ()
    name = match["name"]
    if method in ("GET", "HEAD"):
        return scopes.pull(name)
    if method == "DELETE":
        return scopes.delete(name)
    source = url.params.get("from")
    if method == "POST" and source:
        return scopes.mount(name, source)
    return scopes.push(name)


class ScopedClient(httpx.Client):
    def build_request(self, method: str, url: object, **kwargs: object) -> httpx.Request:  # type: ignore[override]
        request = super().build_request(method, url, **kwargs)  # type: ignore[arg-type]
        request.extensions[SCOPES] = stated_scopes(request.method, request.url)
        return request


class ScopedAsyncClient(httpx.AsyncClient):
    def build_request(self, method: str, url: object, **kwargs: object) -> httpx.Request:  # type: ignore[override]
        request = super().build_request(method, url, **kwargs)  # type: ignore[arg-type]
        request.extensions[SCOPES] = stated_scopes(request.method, request.url)
        return request


def client(fake: Fake, credential: Credential | None = USER, *, allow_http_realm: bool = False,
           clock: Callable[[], float] | None = None, **kwargs: object) -> httpx.Client:
    auth = RegistryAuth(REGISTRY, credential, allow_http_realm=allow_http_realm,
                        **({"clock": clock} if clock else {}))
    return ScopedClient(transport=httpx.MockTransport(fake), auth=auth, **kwargs)  # type: ignore[arg-type]


def query(request: httpx.Request) -> list[tuple[str, str]]:
    return parse_qsl(request.url.query.decode(), keep_blank_values=True)


def form(request: httpx.Request) -> dict[str, str]:
    return dict(parse_qsl(request.content.decode()))


# -- ping -----------------------------------------------------------------------------------------

def test_ping_200_means_no_authorization_and_happens_once() -> None:
    fake = Fake(challenge=None)
    with client(fake) as http:
        assert http.get(MANIFEST).status_code == 200
        assert http.get(MANIFEST).status_code == 200
    assert [r.url.path for r in fake.log] == ["/v2/"] + ["/v2/team/app/manifests/v1"] * 2
    assert all("authorization" not in r.headers for r in fake.log)


def test_ping_carries_client_user_agent_and_timeout() -> None:
    fake = Fake()
    with client(fake, headers={"User-Agent": "fanout/test"}, timeout=7.0) as http:
        http.get(MANIFEST)
    ping, token = fake.log[0], fake.token_requests[0]
    for side in (ping, token):
        assert side.headers["user-agent"] == "fanout/test"
        assert side.extensions["timeout"] == fake.log[-1].extensions["timeout"]
        assert side.headers["accept-encoding"] == "identity"  # the size bound is on raw bytes


def test_ping_server_error_raises_server_error() -> None:
    auth = RegistryAuth(REGISTRY, USER, allow_http_realm=False)
    transport = httpx.MockTransport(lambda request: httpx.Response(503))
    with ScopedClient(transport=transport, auth=auth) as http, pytest.raises(ServerError):
        http.get(MANIFEST)


def test_ping_without_usable_challenge_sends_request_as_is() -> None:
    fake = Fake(challenge="Negotiate")
    with client(fake) as http:
        assert http.get(MANIFEST).status_code == 401
    assert not fake.token_requests
    assert "authorization" not in fake.log[-1].headers


# -- Basic ---------------------------------------------------------------------------------------

def test_basic_challenge_sends_basic() -> None:
    fake = Fake(challenge='Basic realm="registry"')
    with client(fake) as http:
        assert http.get(MANIFEST).status_code == 200
    assert fake.log[-1].headers["authorization"] == basic("alice", PASSWORD)
    assert not fake.token_requests


def test_basic_challenge_without_password_sends_nothing() -> None:
    fake = Fake(challenge='Basic realm="registry"')
    with client(fake, Credential()) as http:
        assert http.get(MANIFEST).status_code == 401
    assert len(fake.log) == 2
    assert "authorization" not in fake.log[-1].headers


# -- Bearer token requests -------------------------------------------------------------------------

def test_bearer_with_password_asks_realm_with_basic_and_scopes() -> None:
    fake = Fake()
    with client(fake) as http:
        assert http.get(MANIFEST).status_code == 200
    [token] = fake.token_requests
    assert token.method == "GET"
    assert query(token) == [("service", "registry.test"), ("scope", "repository:team/app:pull"),
                            ("offline_token", "true"), ("client_id", "fanout")]
    assert token.headers["authorization"] == basic("alice", PASSWORD)
    assert fake.log[-1].headers["authorization"] == "Bearer tok1"


def test_bearer_anonymous_asks_without_authorization() -> None:
    fake = Fake()
    with client(fake, None) as http:
        assert http.put("https://registry.test/v2/a/manifests/v1", content=b"{}").status_code == 200
    [token] = fake.token_requests
    assert query(token) == [("service", "registry.test"), ("scope", "repository:a:pull,push")]
    assert "authorization" not in token.headers


def test_access_token_field_and_realm_query_are_kept() -> None:
    fake = Fake(challenge='Bearer realm="https://auth.test/token?account=x",service="s"')
    fake.token_handler = lambda request: httpx.Response(200, json={"access_token": "at"})
    fake.accepted.add("at")
    with client(fake, None) as http:
        assert http.get(MANIFEST).status_code == 200
    assert query(fake.token_requests[0])[0] == ("account", "x")


def test_identity_token_uses_refresh_grant_post() -> None:
    fake = Fake()
    with client(fake, Credential(username="<token>", identity_token=IDENTITY)) as http:
        assert http.get(MANIFEST).status_code == 200
    [token] = fake.token_requests
    assert token.method == "POST"
    assert token.headers["content-type"] == "application/x-www-form-urlencoded"
    assert "authorization" not in token.headers
    assert form(token) == {"grant_type": "refresh_token", "refresh_token": IDENTITY,
                           "client_id": "fanout", "service": "registry.test",
                           "scope": "repository:team/app:pull"}


@pytest.mark.parametrize("unsupported", [
    httpx.Response(404), httpx.Response(405),
    httpx.Response(400, json={"error": "unsupported_grant_type"}),
])
@pytest.mark.parametrize("credential", [
    Credential(identity_token=IDENTITY),
    Credential(username="alice", password=PASSWORD, identity_token=IDENTITY),
])
def test_identity_token_falls_back_to_get(unsupported: httpx.Response,
                                          credential: Credential) -> None:
    fake = Fake()

    def token(request: httpx.Request) -> httpx.Response:
        if request.method == "POST":
            return httpx.Response(unsupported.status_code, content=unsupported.content)
        fake.accepted.add("from-get")
        return httpx.Response(200, json={"token": "from-get"})

    fake.token_handler = token
    with client(fake, credential) as http:
        assert http.get(MANIFEST).status_code == 200
    assert [r.method for r in fake.token_requests] == ["POST", "GET"]
    get = fake.token_requests[1]
    if credential.password:
        assert get.headers["authorization"] == basic("alice", PASSWORD)
    else:
        assert "authorization" not in get.headers
        assert ("offline_token", "true") not in query(get)


def test_identity_token_refused_does_not_fall_back() -> None:
    fake = Fake()
    fake.token_handler = lambda request: httpx.Response(400, json={"error": "invalid_grant"})
    with client(fake, Credential(identity_token=IDENTITY)) as http, \
            pytest.raises(UnexpectedStatus) as e:
        http.get(MANIFEST)
    assert len(fake.token_requests) == 1
    assert IDENTITY not in str(e.value)


def test_refresh_token_from_password_exchange_replaces_password() -> None:
    fake = Fake()

    def token(request: httpx.Request) -> httpx.Response:
        value = f"tok{len(fake.token_requests)}"
        fake.accepted.add(value)
        return httpx.Response(200, json={"token": value, "refresh_token": "learned-refresh"})

    fake.token_handler = token
    with client(fake) as http:
        http.get("https://registry.test/v2/a/manifests/v1")
        http.get("https://registry.test/v2/b/manifests/v1")
    first, second = fake.token_requests
    assert first.method == "GET"
    assert second.method == "POST"
    assert "authorization" not in second.headers
    assert form(second)["refresh_token"] == "learned-refresh"
    assert form(second)["scope"] == "repository:b:pull"


def test_a_realm_that_refused_the_post_is_asked_with_get_from_then_on() -> None:
    # Harbor's realm takes GET only, yet hands out refresh tokens: one 405 is enough.
    fake = Fake()

    def token(request: httpx.Request) -> httpx.Response:
        if request.method == "POST":
            return httpx.Response(405)
        value = f"tok{len(fake.token_requests)}"
        fake.accepted.add(value)
        return httpx.Response(200, json={"token": value, "refresh_token": "learned-refresh"})

    fake.token_handler = token
    with client(fake) as http:
        for repo in ("a", "b", "c"):
            http.get(f"https://registry.test/v2/{repo}/manifests/v1")
    assert [r.method for r in fake.token_requests] == ["GET", "POST", "GET", "GET"]


def test_learned_refresh_token_rejected_falls_back_to_password() -> None:
    fake = Fake()

    def token(request: httpx.Request) -> httpx.Response:
        if request.method == "POST":
            return httpx.Response(401)
        value = f"tok{len(fake.token_requests)}"
        fake.accepted.add(value)
        return httpx.Response(200, json={"token": value, "refresh_token": "learned"})

    fake.token_handler = token
    with client(fake) as http:
        http.get("https://registry.test/v2/a/manifests/v1")
        assert http.get("https://registry.test/v2/b/manifests/v1").status_code == 200
    assert [r.method for r in fake.token_requests] == ["GET", "POST", "GET"]


def test_registry_token_is_sent_as_is() -> None:
    fake = Fake()
    fake.accepted.add("static-secret")
    with client(fake, Credential(registry_token="static-secret")) as http:
        assert http.get(MANIFEST).status_code == 200
    assert not fake.token_requests
    assert fake.log[-1].headers["authorization"] == "Bearer static-secret"


# -- caching and expiry ---------------------------------------------------------------------------

def test_tokens_are_cached_per_scope() -> None:
    fake = Fake()
    with client(fake) as http:
        for _ in range(3):
            http.get("https://registry.test/v2/a/manifests/v1")
        http.head("https://registry.test/v2/a/blobs/sha256:bb")
        http.get("https://registry.test/v2/b/manifests/v1")
        http.put("https://registry.test/v2/a/manifests/v1", content=b"{}")
        http.get("https://registry.test/v2/b/tags/list")
    scopes = [dict(query(r))["scope"] for r in fake.token_requests]
    assert scopes == ["repository:a:pull", "repository:b:pull", "repository:a:pull,push"]


@pytest.mark.parametrize("expires_in", [60, None])
def test_token_expiry_triggers_refetch(expires_in: int | None) -> None:
    now = [1000.0]
    fake = Fake()
    fake.expires_in = expires_in  # absent: the spec's 60 s
    with client(fake, clock=lambda: now[0]) as http:
        http.get(MANIFEST)
        now[0] = 1049.0  # 11 s before expiry: still good
        http.get(MANIFEST)
        assert len(fake.token_requests) == 1
        now[0] = 1050.0  # within the 10 s margin
        http.get(MANIFEST)
    assert len(fake.token_requests) == 2
    assert fake.log[-1].headers["authorization"] == "Bearer tok2"


# -- 401 handling --------------------------------------------------------------------------------

def test_401_refreshes_once_and_retries_with_same_body() -> None:
    fake = Fake()
    url = "https://registry.test/v2/a/manifests/v1"
    with client(fake) as http:
        http.put(url, content=b"{}")
        fake.accepted.clear()  # tok1 revoked
        fake.retry_scope = "repository:a:pull,push"
        response = http.put(url, content=b'{"m": 1}')
    assert response.status_code == 200
    puts = [r for r in fake.to(REGISTRY) if r.method == "PUT"]
    assert [r.headers["authorization"] for r in puts] == ["Bearer tok1"] * 2 + ["Bearer tok2"]
    assert [r.content for r in puts[1:]] == [b'{"m": 1}', b'{"m": 1}']
    assert len(fake.token_requests) == 2
    assert dict(query(fake.token_requests[1]))["scope"] == "repository:a:pull,push"


def test_401_challenge_scope_is_merged_first() -> None:
    fake = Fake()
    with client(fake) as http:
        http.get(MANIFEST)
        fake.accepted.clear()
        fake.retry_scope = "repository:other:pull"
        fake.accepted.add("tok2")
        assert http.get(MANIFEST).status_code == 200
        # The refreshed token now serves the original scope too: no third token request.
        assert http.get(MANIFEST).status_code == 200
    scopes = [v for k, v in query(fake.token_requests[1]) if k == "scope"]
    assert scopes == ["repository:other:pull", "repository:team/app:pull"]
    assert len(fake.token_requests) == 2


def test_second_401_is_returned() -> None:
    fake = Fake()
    fake.token_handler = lambda request: httpx.Response(200, json={"token": "never-accepted"})
    with client(fake) as http:
        response = http.get(MANIFEST)
    assert response.status_code == 401
    assert len(fake.token_requests) == 2
    assert len([r for r in fake.to(REGISTRY) if r.url.path != "/v2/"]) == 2


def test_401_for_streamed_body_is_returned_without_retry() -> None:
    fake = Fake()
    url = "https://registry.test/v2/a/blobs/uploads/some-id?digest=sha256:aa"

    def body() -> Iterator[bytes]:
        yield b"layer bytes"

    with client(fake) as http:
        http.get("https://registry.test/v2/a/manifests/v1")  # warm: ping done
        http.put(url, content=b"")  # caches a pull,push token
        fake.accepted.clear()
        response = http.put(url, content=body())
        assert response.status_code == 401
        assert len([r for r in fake.to(REGISTRY) if r.url.path.endswith("some-id")]) == 2
        # The rejected token was dropped: the caller's retry gets a fresh one.
        fake.token_handler = lambda request: httpx.Response(200, json={"token": "fresh"})
        fake.accepted.add("fresh")
        assert http.put(url, content=b"x").status_code == 200
    assert fake.log[-1].headers["authorization"] == "Bearer fresh"
    assert len([r for r in fake.to(REGISTRY) if r.url.path.endswith("some-id")]) == 3


def test_401_when_ping_needed_no_auth_adopts_the_new_challenge() -> None:
    fake = Fake()
    calls = {"ping": 0}
    original = fake.registry

    def registry(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/v2/":
            calls["ping"] += 1
            return httpx.Response(200)
        return original(request)

    fake.registry = registry  # type: ignore[method-assign]
    with client(fake) as http:
        assert http.get(MANIFEST).status_code == 200
    assert calls["ping"] == 1
    assert fake.log[-1].headers["authorization"] == "Bearer tok1"


# -- scopes ----------------------------------------------------------------------------------------

def test_scopes_are_stated_per_operation() -> None:
    assert scopes.pull("a/b") == ("repository:a/b:pull",)
    assert scopes.push("a") == ("repository:a:pull,push",)
    assert scopes.delete("a") == ("repository:a:pull,push,delete",)
    # The push first: some token servers grant only the first scope asked for.
    assert scopes.mount("a", "lib/b") == ("repository:a:pull,push", "repository:lib/b:pull")
    assert scopes.mount("a", "a") == ("repository:a:pull,push",)
    assert scopes.scopes_of(httpx.Request("GET", "https://r.test/v2/a/manifests/v1")) == ()


def test_request_without_stated_scopes_asks_for_none() -> None:
    fake = Fake()
    auth = RegistryAuth(REGISTRY, USER, allow_http_realm=False)
    with httpx.Client(transport=httpx.MockTransport(fake), auth=auth) as http:
        http.get(MANIFEST)
    assert [k for k, _ in query(fake.token_requests[0])].count("scope") == 0


def test_mount_asks_for_pull_on_the_source_repository() -> None:
    fake = Fake()
    with client(fake) as http:
        http.post("https://registry.test/v2/a/blobs/uploads/",
                  params={"mount": "sha256:aa", "from": "lib/b"})
    scopes = [v for k, v in query(fake.token_requests[0]) if k == "scope"]
    assert scopes == ["repository:a:pull,push", "repository:lib/b:pull"]


# -- where Authorization goes ----------------------------------------------------------------------

def test_authorization_never_sent_to_another_host() -> None:
    fake = Fake()
    with client(fake) as http:
        http.get(MANIFEST)
        http.get("https://storage.test/blob")
        http.get("https://registry.test:8443/v2/team/app/manifests/v1")
        http.get("http://registry.test:443/v2/team/app/manifests/v1")
    assert len(fake.to("storage.test")) == 1
    others = [r for r in fake.log if r.url.host == "storage.test" or r.url.port is not None]
    assert len(others) == 3
    assert all("authorization" not in r.headers for r in others)


def test_redirect_to_storage_host_carries_no_authorization() -> None:
    fake = Fake()
    with client(fake, follow_redirects=True) as http:
        response = http.get("https://registry.test/v2/a/blobs/sha256:aa")
    assert response.content == b"elsewhere"
    blob, storage = fake.log[-2], fake.log[-1]
    assert blob.headers["authorization"] == "Bearer tok1"
    assert storage.url.host == "storage.test"
    assert "authorization" not in storage.headers


def test_challenge_from_redirect_target_is_not_answered() -> None:
    fake = Fake()
    original = fake.__call__

    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.host == "storage.test":
            fake.log.append(request)
            return httpx.Response(401, headers={
                "WWW-Authenticate": 'Bearer realm="https://evil.test/token"'})
        return original(request)

    auth = RegistryAuth(REGISTRY, USER, allow_http_realm=False)
    with ScopedClient(transport=httpx.MockTransport(handler), auth=auth,
                      follow_redirects=True) as http:
        assert http.get("https://registry.test/v2/a/blobs/sha256:aa").status_code == 401
    assert not fake.to("evil.test")
    assert len(fake.to("storage.test")) == 1


def test_ping_redirected_to_another_host_is_refused() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.host == REGISTRY:
            return httpx.Response(302, headers={"Location": "https://elsewhere.test/v2/"})
        return httpx.Response(401, headers={"WWW-Authenticate": 'Basic realm="x"'})

    auth = RegistryAuth(REGISTRY, USER, allow_http_realm=False)
    with ScopedClient(transport=httpx.MockTransport(handler), auth=auth,
                      follow_redirects=True) as http, \
            pytest.raises(ProtocolError, match="redirected"):
        http.get(MANIFEST)


def test_registry_host_with_explicit_default_port_matches() -> None:
    fake = Fake()
    auth = RegistryAuth("REGISTRY.test:443", USER, allow_http_realm=False)
    with ScopedClient(transport=httpx.MockTransport(fake), auth=auth) as http:
        assert http.get(MANIFEST).status_code == 200


# -- realm checks --------------------------------------------------------------------------------

@pytest.mark.parametrize("allow", [False, True])
def test_http_realm_only_when_allowed(allow: bool) -> None:
    fake = Fake(challenge='Bearer realm="http://auth.test/token",service="s"')
    with client(fake, allow_http_realm=allow) as http:
        if allow:
            assert http.get(MANIFEST).status_code == 200
        else:
            with pytest.raises(ProtocolError, match="'http'"):
                http.get(MANIFEST)
            assert not fake.token_requests


@pytest.mark.parametrize(("challenge", "match"), [
    ('Bearer realm="file:///etc/passwd"', "'file'"),
    ('Bearer realm="ftp://auth.test/x"', "'ftp'"),
    ('Bearer service="s"', "no realm"),
    ('Bearer realm="https://[::1/x"', "malformed realm"),
    ('Bearer realm="https://169.254.169.254/token"', "not allowed"),
    ('Bearer realm="x', "WWW-Authenticate"),
])
def test_bad_challenges_raise_protocol_error(challenge: str, match: str) -> None:
    fake = Fake(challenge=challenge)
    with client(fake, allow_http_realm=True) as http, pytest.raises(ProtocolError, match=match):
        http.get(MANIFEST)
    assert not fake.token_requests


# -- token endpoint failures -----------------------------------------------------------------------

@pytest.mark.parametrize(("status", "error"), [(401, Unauthorized), (403, Denied)])
@pytest.mark.parametrize("credential", [USER, Credential(identity_token=IDENTITY)])
def test_token_refused_names_host_and_scope_without_secrets(
        status: int, error: type[Exception], credential: Credential) -> None:
    fake = Fake()
    fake.token_handler = lambda request: httpx.Response(
        status, json={"details": f"bad {PASSWORD} {IDENTITY}"})
    with client(fake, credential) as http, pytest.raises(error) as caught:
        http.get(MANIFEST)
    text = str(caught.value)
    assert "token request to auth.test for repository:team/app:pull was refused" in text
    assert PASSWORD not in text and IDENTITY not in text


def test_a_refused_token_carries_the_token_servers_own_words() -> None:
    # Harbor refuses the token for a project that does not exist, and says so.
    fake = Fake()
    fake.token_handler = lambda request: httpx.Response(401, json={
        "errors": [{"code": "UNAUTHORIZED", "message": "project ghost not found"}]})
    with client(fake) as http, pytest.raises(Unauthorized) as caught:
        http.get(MANIFEST)
    assert str(caught.value).startswith(
        "token request to auth.test for repository:team/app:pull was refused: "
        "project ghost not found")
    # Words that echo a secret are not repeated.
    fake.token_handler = lambda request: httpx.Response(401, json={
        "errors": [{"code": "UNAUTHORIZED", "message": f"bad password {PASSWORD}"}]})
    with client(fake) as http, pytest.raises(Unauthorized) as echoed:
        http.get(MANIFEST)
    assert PASSWORD not in str(echoed.value) and "bad password" not in str(echoed.value)


def test_token_server_errors_are_classified() -> None:
    fake = Fake()
    fake.token_handler = lambda request: httpx.Response(429, headers={"Retry-After": "7"})
    with client(fake) as http, pytest.raises(RateLimited) as limited:
        http.get(MANIFEST)
    assert limited.value.retry_after == 7.0
    fake.token_handler = lambda request: httpx.Response(
        502, json={"errors": [{"code": "UNAVAILABLE", "message": f"echo {PASSWORD}"}]})
    with client(fake) as http, pytest.raises(ServerError) as failed:
        http.get(MANIFEST)
    assert PASSWORD not in str(failed.value)


@pytest.mark.parametrize("body", [
    b"not json", b"[]", b'{"expires_in": 60}', b'{"token": ""}', b'{"token": "a\\r\\nX: y"}',
    b'{"token": 5}',
])
def test_malformed_token_response_is_protocol_error(body: bytes) -> None:
    fake = Fake()
    fake.token_handler = lambda request: httpx.Response(200, content=body)
    with client(fake) as http, \
            pytest.raises(ProtocolError, match=r"token response from auth\.test"):
        http.get(MANIFEST)


@pytest.mark.parametrize("streamed", [False, True])
def test_oversized_token_response_is_refused(streamed: bool) -> None:
    fake = Fake()
    big = b'{"token": "' + b"a" * MAX_AUTH_BODY + b'"}'

    def chunks() -> Iterator[bytes]:
        for start in range(0, len(big), 65536):
            yield big[start:start + 65536]

    fake.token_handler = lambda request: (
        httpx.Response(200, content=chunks()) if streamed else httpx.Response(200, content=big))
    with client(fake) as http, pytest.raises(ProtocolError, match="exceeds"):
        http.get(MANIFEST)


# -- no secrets anywhere ---------------------------------------------------------------------------

def test_repr_and_logs_hold_no_secrets(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="fanout.auth")
    fake = Fake()
    auth = RegistryAuth(REGISTRY, Credential(username="alice", password=PASSWORD,
                                             identity_token=IDENTITY), allow_http_realm=False)
    with ScopedClient(transport=httpx.MockTransport(fake), auth=auth) as http:
        http.get(MANIFEST)
        fake.accepted.clear()
        http.get(MANIFEST)
    assert "auth.test" in caplog.text and "repository:team/app:pull" in caplog.text
    for secret in (PASSWORD, IDENTITY, "tok1", "tok2"):
        assert secret not in caplog.text
        assert secret not in repr(auth)


# -- async -----------------------------------------------------------------------------------------

def test_async_client_runs_the_same_flow() -> None:
    fake = Fake()

    async def main() -> list[int]:
        auth = RegistryAuth(REGISTRY, USER, allow_http_realm=False)
        async with ScopedAsyncClient(transport=httpx.MockTransport(fake), auth=auth) as http:
            first = await http.get(MANIFEST)
            fake.accepted.clear()  # tok1 revoked: 401, refresh, retry
            second = await http.get(MANIFEST)
            third = await http.put("https://registry.test/v2/a/manifests/v1", content=b"{}")
            return [first.status_code, second.status_code, third.status_code]

    assert asyncio.run(main()) == [200, 200, 200]
    assert [r.url.path for r in fake.to(REGISTRY)] == ["/v2/"] + [
        "/v2/team/app/manifests/v1"] * 3 + ["/v2/a/manifests/v1"]
    assert [dict(query(r))["scope"] for r in fake.token_requests] == [
        "repository:team/app:pull", "repository:team/app:pull", "repository:a:pull,push"]
    assert fake.log[-1].headers["authorization"] == "Bearer tok3"
