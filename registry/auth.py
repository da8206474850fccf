"""Registry authentication as an ``httpx.Auth``: ping, Basic, and Docker-token Bearer.

The whole dance is one generator, :meth:`RegistryAuth.auth_flow`, which does no I/O of its own,
so the same object serves ``httpx.Client`` and ``httpx.AsyncClient``::

    first request to the registry ──▶ GET /v2/ (ping): 200 = no auth, 401 = the challenge
    Basic challenge   ──▶ Authorization: Basic (only with a username and password)
    Bearer challenge  ──▶ token for the request's scopes (cached per scope set) ──▶ Bearer
    401 after a token ──▶ one fresh token (with the challenge's scope) and one retry, if the
                          body can be sent again; otherwise the 401 goes back to the caller

Pinging first matters: blob uploads stream their bodies, which cannot be replayed after a 401.
``Authorization`` only ever goes to the registry's own host:port and to the token realm.
"""

from __future__ import annotations

import base64
import json
import logging
import re
import time
from collections.abc import AsyncGenerator, Callable, Generator
from dataclasses import dataclass
from enum import Enum
from typing import Protocol

import httpx

from .bounded import bound_body
from .challenge import Challenge, pick_challenge, realm_url, response_challenges
from .errors import (
    Denied,
    InvalidReference,
    ProtocolError,
    RegistryError,
    Unauthorized,
    error_from_response,
)
from .hosts import bare_hostname, split_host_port
from .scopes import scope_key, scopes_of

_LOG = logging.getLogger("fanout.auth")

CLIENT_ID = "fanout"
_DEFAULT_EXPIRES_IN = 60.0  # the token spec's default when expires_in is absent
_EXPIRY_MARGIN = 10.0  # stop using a token this long before it expires: requests take time
_DEFAULT_PORTS = {"http": 80, "https": 443}
# RFC 6750 b64token, loosened to any visible ASCII: tokens are opaque, but must be a header value.
_HEADER_SAFE = re.compile(r"^[\x21-\x7e]+$")
_OAUTH_UNSUPPORTED = frozenset({404, 405})


class CredentialLike(Protocol):
    """What the flow reads from ``registry.credentials.Credential``."""

    @property
    def username(self) -> str: ...
    @property
    def password(self) -> str: ...
    @property
    def identity_token(self) -> str: ...
    @property
    def registry_token(self) -> str: ...


class _Sent(Enum):
    NOTHING = "nothing"
    BASIC = "basic"
    STATIC = "static bearer"  # the credential's registry_token: nothing to refresh
    FROM_REALM = "realm bearer"  # from the realm: can be refreshed


@dataclass(slots=True, repr=False)
class _Token:
    value: str
    expires_at: float


class RegistryAuth(httpx.Auth):
    """Authenticates requests to one registry host; never sends credentials anywhere else."""

    def __init__(
        self,
        registry_host: str,
        credential: CredentialLike | None,
        *,
        allow_http_realm: bool,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._registry = registry_host
        self._hostname, self._port = _split_host(registry_host)
        self._credential = credential
        self._allow_http_realm = allow_http_realm
        self._clock = clock
        self._pinged = False
        self._challenge: Challenge | None = None  # None: the registry asked for nothing
        self._tokens: dict[tuple[str, ...], _Token] = {}
        # A refresh token the token server gave for our password (offline_token=true), so the
        # password need not be sent again.
        self._learned_refresh_token = ""
        self._oauth_post = True  # False once the realm refused the OAuth2 POST

    def __repr__(self) -> str:
        return f"RegistryAuth({self._registry!r})"

    def prime(self, challenge: Challenge | None, credential: CredentialLike | None) -> None:
        """Take the host probe's answer and the credential, so the flow need not ping itself."""
        self._challenge = challenge
        self._credential = credential
        self._pinged = True

    def use_credential(self, credential: CredentialLike | None) -> None:
        """Authenticate as ``credential`` from now on (a worker saw its credential change):
        tokens and a refresh token got with the old one are dropped, the challenge is kept."""
        self._credential = credential
        self._tokens.clear()
        self._learned_refresh_token = ""

    # -- the flow ------------------------------------------------------------------------------

    def auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        """Ping once, authorize, send; on a 401 after a token, refresh once and resend."""
        if not self._is_registry(request.url):
            yield request
            return
        if not self._pinged:
            ping = self._side_request("GET", _ping_url(request.url), request)
            _LOG.debug("ping %s", self._registry)
            self._challenge = self._read_ping((yield ping))
            self._pinged = True

        scopes = scopes_of(request)
        sent = yield from self._authorize(request, scopes, fresh=False)
        # Judged before sending: a transport may turn a consumed stream into something else.
        replayable = isinstance(request.stream, httpx.ByteStream)
        response = yield request
        if response.status_code != 401 or sent in (_Sent.BASIC, _Sent.STATIC):
            return
        if not self._is_registry(response.request.url):
            return  # a redirect target's challenge is not the registry's to answer

        # Artifact Registry answers 401 without a challenge on every path but /v2/: the
        # ping's challenge is the one to answer then.
        challenge = pick_challenge(response_challenges(response)) or self._challenge
        if challenge is None or not self._can_answer(challenge):
            return
        # Whatever happens next, that token is no good for these scopes any more.
        self._tokens.pop(scope_key(scopes), None)
        if not replayable:
            _LOG.debug("not retrying a streamed request to %s after 401", self._registry)
            return
        self._challenge = challenge
        wanted = challenge.params.get("scope", "").split()
        # New scopes first: some token servers only look at the first scope.
        merged = tuple(dict.fromkeys([s for s in wanted if s not in scopes] + list(scopes)))
        yield from self._authorize(request, merged, fresh=True, also_for=scopes)
        yield request

    def sync_auth_flow(
        self, request: httpx.Request
    ) -> Generator[httpx.Request, httpx.Response, None]:
        """As httpx's, but only the ping and token bodies are read, and those bounded.

        ``requires_response_body = True`` would read every response, blob downloads included.
        """
        flow = self.auth_flow(request)
        try:
            outgoing = next(flow)
            while True:
                response = yield outgoing
                if outgoing is not request:
                    bound_body(response)
                    response.read()
                try:
                    outgoing = flow.send(response)
                except StopIteration:
                    return
        finally:
            flow.close()

    async def async_auth_flow(
        self, request: httpx.Request
    ) -> AsyncGenerator[httpx.Request, httpx.Response]:
        """The asynchronous twin of :meth:`sync_auth_flow`."""
        flow = self.auth_flow(request)
        try:
            outgoing = next(flow)
            while True:
                response = yield outgoing
                if outgoing is not request:
                    bound_body(response)
                    await response.aread()
                try:
                    outgoing = flow.send(response)
                except StopIteration:
                    return
        finally:
            flow.close()

    # -- steps ---------------------------------------------------------------------------------

    def _read_ping(self, response: httpx.Response) -> Challenge | None:
        if response.status_code == 200:
            return None
        if response.status_code != 401:
            raise error_from_response(response, f"ping of {self._registry} failed")
        if not self._is_registry(response.request.url):
            raise ProtocolError(f"ping of {self._registry} was redirected to another host",
                                status=401, method="GET", url=response.request.url)
        challenge = pick_challenge(response_challenges(response))
        if challenge is None:
            # Nothing we can answer (no header, or only schemes like Negotiate): requests go out
            # as they are, and their own 401 reaches the caller as Unauthorized.
            _LOG.debug("ping of %s: 401 without a Basic or Bearer challenge", self._registry)
        return challenge

    def _can_answer(self, challenge: Challenge) -> bool:
        if challenge.scheme == "bearer":
            return True
        cred = self._credential
        return cred is not None and bool(cred.registry_token or (cred.username and cred.password))

    def _authorize(
        self,
        request: httpx.Request,
        scopes: tuple[str, ...],
        *,
        fresh: bool,
        also_for: tuple[str, ...] | None = None,
    ) -> Generator[httpx.Request, httpx.Response, _Sent]:
        """Set ``Authorization`` on ``request`` as the challenge asks; say what was sent."""
        challenge, cred = self._challenge, self._credential
        if challenge is None:
            return _Sent.NOTHING
        if cred is not None and cred.registry_token:
            request.headers["Authorization"] = f"Bearer {cred.registry_token}"
            return _Sent.STATIC
        if challenge.scheme == "basic":
            if cred is None or not (cred.username and cred.password):
                return _Sent.NOTHING
            request.headers["Authorization"] = _basic(cred.username, cred.password)
            return _Sent.BASIC
        if challenge.scheme != "bearer":
            return _Sent.NOTHING
        token = self._tokens.get(scope_key(scopes))
        now = self._clock()
        if fresh or token is None or now >= token.expires_at:
            value, expires_in = yield from self._fetch_token(challenge, scopes, request)
            # Counted from before the request (the safe side). The margin is a quarter of a
            # short lifetime: GitLab's tokens can live minutes, a test's seconds.
            margin = min(_EXPIRY_MARGIN, expires_in / 4)
            token = _Token(value, now + expires_in - margin)
            # A worker's client lives for the process and meets many repositories: spent
            # tokens go, so the map holds only what can still be used.
            self._tokens = {key: kept for key, kept in self._tokens.items()
                            if kept.expires_at > now}
            self._tokens[scope_key(scopes)] = token
            if also_for is not None:
                self._tokens[scope_key(also_for)] = token
        request.headers["Authorization"] = f"Bearer {token.value}"
        return _Sent.FROM_REALM

    def _fetch_token(
        self, challenge: Challenge, scopes: tuple[str, ...], original: httpx.Request
    ) -> Generator[httpx.Request, httpx.Response, tuple[str, float]]:
        """Ask the realm for a token: OAuth2 refresh grant when we hold a refresh token."""
        realm = realm_url(challenge, self._registry, allow_http=self._allow_http_realm)
        service = challenge.params.get("service")
        scope_text = " ".join(scopes) or "no scope"
        cred = self._credential
        learned = self._learned_refresh_token
        refresh_token = (cred.identity_token if cred is not None else "") or learned
        _LOG.debug("token request to %s for %s", realm.host, scope_text)

        if refresh_token and self._oauth_post:
            form = {"grant_type": "refresh_token", "refresh_token": refresh_token,
                    "client_id": CLIENT_ID}
            if service is not None:
                form["service"] = service
            if scopes:
                form["scope"] = " ".join(scopes)
            response = yield self._side_request("POST", realm, original, data=form)
            if response.status_code == 200:
                return self._token_from(response, realm)
            # A token we learned may simply have expired; the password can get another.
            if not (_oauth_unsupported(response)
                    or (learned and response.status_code in (400, 401))):
                raise self._token_error(response, realm, scope_text)
            if _oauth_unsupported(response):
                # Harbor's realm takes GET only: asking again on every token costs a request.
                self._oauth_post = False
            self._learned_refresh_token = ""
            _LOG.debug("token refresh grant not usable at %s; using GET", realm.host)

        params: list[tuple[str, str]] = [("service", service)] if service is not None else []
        params += [("scope", scope) for scope in scopes]
        headers: dict[str, str] = {}
        if cred is not None and cred.username and cred.password:
            params += [("offline_token", "true"), ("client_id", CLIENT_ID)]
            headers["Authorization"] = _basic(cred.username, cred.password)
        response = yield self._side_request(
            "GET", realm.copy_merge_params(tuple(params)), original, headers=headers)
        if response.status_code != 200:
            raise self._token_error(response, realm, scope_text)
        return self._token_from(response, realm)

    def _token_from(self, response: httpx.Response, realm: httpx.URL) -> tuple[str, float]:
        """The token and its lifetime from a token response; keeps any refresh token."""
        def malformed(what: str) -> ProtocolError:
            # Never the body: it may hold a token.
            return ProtocolError(f"token response from {realm.host} {what}",
                                 status=response.status_code, method=response.request.method,
                                 url=response.request.url)

        try:
            doc = json.loads(response.content)
        except (ValueError, UnicodeDecodeError):
            raise malformed("is not JSON") from None
        if not isinstance(doc, dict):
            raise malformed("is not a JSON object")
        value = doc.get("token") or doc.get("access_token")
        if not isinstance(value, str) or not _HEADER_SAFE.match(value):
            raise malformed("has no usable token")
        expires_in = doc.get("expires_in")
        lifetime = _DEFAULT_EXPIRES_IN
        if isinstance(expires_in, int | float) and not isinstance(expires_in, bool):
            lifetime = float(expires_in) if expires_in > 0 else lifetime
        # issued_at is the server's wall clock; the lifetime is counted on ours (monotonic), so
        # clock skew between us and the token server cannot make a stale token look fresh.
        refresh = doc.get("refresh_token")
        if isinstance(refresh, str) and refresh and _HEADER_SAFE.match(refresh):
            self._learned_refresh_token = refresh
        return value, lifetime

    def _token_error(
        self, response: httpx.Response, realm: httpx.URL, scope_text: str
    ) -> RegistryError:
        status, request = response.status_code, response.request
        if status in (401, 403):
            kind = Unauthorized if status == 401 else Denied
            # The token server's own words (Harbor: "project ghost not found"), unless they
            # echo something we sent.
            said = error_from_response(response).message.partition(": ")[2]
            said = "" if not said or self._mentions_secret(said) else f": {said}"
            return kind(f"token request to {realm.host} for {scope_text} was refused{said}",
                        status=status, method=request.method, url=request.url)
        error = error_from_response(response, f"token request to {realm.host} for {scope_text}")
        if self._mentions_secret(str(error)):  # a token server echoing what we sent
            return type(error)(f"token request to {realm.host} for {scope_text} failed",
                               status=status, codes=error.codes, method=request.method,
                               url=request.url, retry_after=error.retry_after)
        return error

    def _mentions_secret(self, text: str) -> bool:
        cred = self._credential
        secrets = [self._learned_refresh_token]
        if cred is not None:
            secrets += [cred.password, cred.identity_token, cred.registry_token]
        return any(secret and secret in text for secret in secrets)

    def _is_registry(self, url: httpx.URL) -> bool:
        if url.host.lower() != self._hostname:
            return False
        default = _DEFAULT_PORTS.get(url.scheme)
        return (url.port or default) == (self._port or default)

    @staticmethod
    def _side_request(
        method: str,
        url: httpx.URL,
        original: httpx.Request,
        *,
        headers: dict[str, str] | None = None,
        data: dict[str, str] | None = None,
    ) -> httpx.Request:
        """A ping or token request: the client's User-Agent and timeout, no compressed body."""
        all_headers = {"Accept": "application/json", "Accept-Encoding": "identity"}
        if "user-agent" in original.headers:
            all_headers["User-Agent"] = original.headers["user-agent"]
        all_headers.update(headers or {})
        # Requests yielded by an auth flow bypass the client's defaults, timeout included.
        extensions = {k: v for k, v in original.extensions.items() if k == "timeout"}
        return httpx.Request(method, url, headers=all_headers, data=data, extensions=extensions)


def _oauth_unsupported(response: httpx.Response) -> bool:
    """A token server without the OAuth2 POST endpoint (token spec: fall back to GET)."""
    if response.status_code in _OAUTH_UNSUPPORTED:
        return True
    if response.status_code != 400:
        return False
    try:
        doc = json.loads(response.content)
    except (ValueError, UnicodeDecodeError):
        return False
    return isinstance(doc, dict) and doc.get("error") == "unsupported_grant_type"


def _basic(username: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{username}:{password}".encode()).decode("ascii")


def _ping_url(url: httpx.URL) -> httpx.URL:
    return httpx.URL(scheme=url.scheme, host=url.host, port=url.port, path="/v2/")


def _split_host(registry_host: str) -> tuple[str, int | None]:
    """``host[:port]`` → (lower-case host without brackets, port or None)."""
    try:
        host, port = split_host_port(registry_host)
    except ValueError:
        host, port = "", None
    hostname = bare_hostname(registry_host)
    if (not host or not hostname or "@" in registry_host or "/" in registry_host
            or (port is not None and not (port.isdigit() and 0 < int(port[:6]) <= 65535))):
        raise InvalidReference(f"registry host {registry_host!r} is not host[:port]")
    return hostname, int(port) if port is not None else None
