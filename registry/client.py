"""One registry host: the per-host layer every read and write goes through.

It owns what is true of a host rather than of one request:

- the probe (scheme and auth challenge, :mod:`registry.probe`), done once and shared;
- the credential, looked up off the event loop (a credential helper is a subprocess, and ECR's
  takes seconds) at the same time as the probe;
- tokens (:class:`registry.auth.RegistryAuth`), asked for the scopes each request states;
- holds: a ``Retry-After`` or an exhausted rate limit holds every request to the host, in this
  process and, through the :class:`~registry.holds.HoldStore`, in every worker;
- what the host has been seen to accept (:class:`~registry.capabilities.Capabilities`).

Everything above this module speaks in registry errors (``registry.errors``), never in httpx
exceptions or raw status codes.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import time
from collections.abc import AsyncIterator, Container, Mapping
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING

import httpcore
import httpx

from .auth import RegistryAuth
from .bounded import bound_body, read_bounded
from .errors import (
    Denied,
    ProtocolError,
    RateLimited,
    RegistryError,
    TokenExpired,
    Unauthorized,
    error_from_response,
    error_from_transport,
)
from .holds import HoldStore, MemoryHolds, ratelimit_exhausted
from .hosts import api_host, uses_plain_http
from .options import TransportOptions
from .probe import Probe, probe_host
from .retry import REQUEST_RETRY, RetryPolicy
from .scopes import SCOPES, Scopes, scope_key
from .singleflight import SingleFlight
from .tls import tls_context

if TYPE_CHECKING:
    from .capabilities import Capabilities
    from .credentials import Credential, CredentialStore
    from .spool import Spool
    from .throttle import Throttle

# An error body is for a diagnostic code and a message; never worth more than this.
_ERROR_BODY_LIMIT = 64 * 1024
MAX_HOLD_SECONDS = 3600.0
# httpcore receives 64 KiB per read; blobs stream with about 30% less CPU per byte in reads of
# 256 KiB (measured on loopback, bench/copy_bench.py). It is a class attribute, so this sets it
# for the process; should httpcore drop it, the assignment is simply unused.
httpcore.AsyncHTTP11Connection.READ_NUM_BYTES = 256 * 1024


class RegistryClient:
    """Requests to one registry host, with credentials that never leave it."""

    def __init__(
        self,
        registry: str,
        *,
        credentials: CredentialStore | None,
        options: TransportOptions,
        capabilities: Capabilities,
        holds: HoldStore | None = None,
        retry: RetryPolicy = REQUEST_RETRY,
        transport: httpx.AsyncBaseTransport | None = None,
        tls: ssl.SSLContext | None = None,
    ) -> None:
        self.registry = registry
        self.options = options
        self.capabilities = capabilities
        self.retry_policy = retry
        # Where source blobs read by this client are shared with the host's other readers;
        # set by the pool (registry.session), None reads straight from the registry.
        self.spool: Spool | None = None
        self.throttle: Throttle | None = None  # its bandwidth caps, set by the pool likewise
        self.plain_http = uses_plain_http(registry, options.insecure_registries)
        self._host = api_host(registry)
        self.base_url = f"https://{self._host}"
        self._credentials = credentials
        # The credential in use, and when it was looked up (a worker's client outlives tasks:
        # see renew_credentials).
        self._credential: Credential | None = None
        self._credential_at = 0.0
        self._stale = False
        self._renewing: SingleFlight[str, None] = SingleFlight(keep=False)
        self._holds = holds if holds is not None else MemoryHolds()
        self._ready: SingleFlight[str, Probe] = SingleFlight()
        # Token requests under way, per scope set: requests sent at once share one.
        self._tokens: SingleFlight[Scopes, None] = SingleFlight(keep=False)
        # Connections being opened ahead of need (see _warm_up).
        self._warming: set[asyncio.Task[None]] = set()
        # Consecutive 429s without a Retry-After: the hold grows with them, as backoff does.
        self._throttled = 0
        self._auth = RegistryAuth(self._host, None, allow_http_realm=self.plain_http)
        self.http = httpx.AsyncClient(
            auth=self._auth,
            timeout=httpx.Timeout(
                options.read_timeout, connect=options.connect_timeout, pool=None,
            ),
            limits=httpx.Limits(
                max_connections=options.max_connections_per_host,
                max_keepalive_connections=options.max_connections_per_host,
                # A worker reuses connections from one task to the next: keep them a while
                # (an idle one the registry closed is noticed and replaced before use).
                keepalive_expiry=options.keepalive_expiry,
            ),
            verify=tls if tls is not None else tls_context(options),
            follow_redirects=True,
            headers={"User-Agent": options.user_agent},
            transport=transport,
        )

    def __repr__(self) -> str:
        return f"RegistryClient({self.base_url!r})"

    # -- the host, once ----------------------------------------------------------------------

    async def probe(self) -> Probe:
        """The host's scheme and auth kind, asked once (with the credential lookup beside it)."""
        return await self._ready.do("probe", self._first_contact)

    async def warm(self, scopes: Scopes) -> None:
        """Probe the host and get the token for ``scopes`` before the requests that need them
        (a copy does, while its source's tag is read). A failure is left to those requests,
        which meet it again and report it."""
        with contextlib.suppress(RegistryError):
            await self.probe()
            await self._tokens.do(scope_key(scopes), lambda: self._get_token(
                scopes, f"token for {' '.join(scopes)}"))

    async def _first_contact(self) -> Probe:
        lookup = None
        if self._credentials is not None:
            # A credential helper is a subprocess: never on the event loop.
            lookup = asyncio.ensure_future(asyncio.to_thread(self._credentials.get, self.registry))
        try:
            # A registry that stalls the probe gets no longer than a connect or a read would.
            connect, read = self.options.connect_timeout, self.options.read_timeout
            await self._respect_hold()
            found = await probe_host(
                self.http, self._host, plain_http=self.plain_http, deadline=min(connect, read),
                deadline_kind=httpx.ReadTimeout if read <= connect else httpx.ConnectTimeout)
            credential = await lookup if lookup is not None else None
            self._credential, self._credential_at = credential, time.monotonic()
        except BaseException:
            if lookup is not None:
                lookup.cancel()
                await asyncio.gather(lookup, return_exceptions=True)
            raise
        self.base_url = f"{found.scheme}://{self._host}"
        self._auth.prime(found.challenge, credential)
        if found.auth == "bearer":
            self._warm_up(self.options.preconnect)
        return found

    def _warm_up(self, count: int) -> None:
        """Open up to ``count`` more connections while the first token is fetched.

        The requests that token authorizes leave together, and each would otherwise open its
        own connection after it: over a WAN a connection (TCP and TLS handshakes) costs more
        than a request. A ping (answered 401) is the cheapest request that opens one; its
        answer is not needed, and a failure only means the connection opens later.
        """
        for _ in range(count):
            task = asyncio.ensure_future(self._spare_ping())
            self._warming.add(task)
            task.add_done_callback(self._warming.discard)

    async def _spare_ping(self) -> None:
        if self._holds.until(self.registry) > time.time():
            return  # a held registry gets nothing, not even a ping
        request = self.http.build_request("GET", self.url("/v2/"),
                                          headers={"Accept-Encoding": "identity"})
        with contextlib.suppress(httpx.HTTPError, RegistryError):
            response = await self.http.send(request, auth=None, stream=True)
            try:
                await read_bounded(response, _ERROR_BODY_LIMIT)
            finally:
                await response.aclose()

    def renew_credentials(self, store: CredentialStore | None, *, older_than: float) -> None:
        """Take credentials from ``store`` from now on; the one in use is looked up again, at
        the next request, if it is older than ``older_than`` seconds.

        A worker's client serves task after task; the worker passes 0, so every task sees the
        credential as it is now (a fixed password, a refreshed ECR token), at the cost of one
        lookup per host per task (a credential helper, seconds for ECR's, runs each time). A
        caller for whom that costs too much may pass an age. Tokens stay while the credential
        is unchanged; a refused request marks it for a fresh lookup whatever its age.
        """
        self._credentials = store
        if self._ready.known("probe") is not None and (
                time.monotonic() - self._credential_at >= older_than):
            self._stale = True

    async def _renew_credential(self) -> None:
        store = self._credentials
        credential = await asyncio.to_thread(store.get, self.registry) if store else None
        self._stale = False
        self._credential_at = time.monotonic()
        if credential != self._credential:
            self._credential = credential
            self._auth.use_credential(credential)

    # -- holds -------------------------------------------------------------------------------

    def hold(self, seconds: float) -> None:
        """Send nothing to this host for ``seconds``, here and wherever the hold store reaches."""
        if seconds > 0:
            # A spare ping still opening its connection would reach a registry that has just
            # asked for quiet: cancelled, it never sends its request.
            for task in self._warming:
                task.cancel()
            # A registry's word is trusted up to an hour: a hostile or broken Retry-After must
            # not park a host for every worker for days.
            self._holds.hold(self.registry, time.time() + min(seconds, MAX_HOLD_SECONDS))

    async def _respect_hold(self) -> None:
        """Wait out a short hold; fail at once on one longer than the request tier waits, so the
        task tier waits without holding a connection or a worker slot."""
        while (remaining := self._holds.until(self.registry) - time.time()) > 0:
            if remaining > self.retry_policy.max_hold:
                raise RateLimited(
                    f"{self.registry} is rate limited for another {remaining:.0f} s",
                    retry_after=remaining)
            await asyncio.sleep(remaining)

    def _note_limits(self, response: httpx.Response, error: RegistryError | None) -> None:
        if isinstance(error, RateLimited):
            self._throttled += 1
            after = error.retry_after
            if after is None:
                after = self.retry_policy.backoff(self._throttled)
            self.hold(after)
            return
        if error is None:
            self._throttled = 0
        if ratelimit_exhausted(response.headers):
            # Docker Hub says the window is spent before it starts refusing: stop now, for
            # every worker, rather than collect 429s.
            after = error.retry_after if error is not None else None
            self.hold(after if after is not None else self.retry_policy.backoff(1))

    # -- requests ----------------------------------------------------------------------------

    def url(self, path: str) -> str:
        """Absolute URL for an API path (``/v2/...``) or a ``Location`` a registry returned."""
        if path.startswith(("http://", "https://")):
            return path
        return f"{self.base_url}{path}"

    def resolve(self, response: httpx.Response, location: str) -> str:
        """Resolve a ``Location`` header against the response it came with."""
        return str(response.request.url.join(location))

    async def request(
        self,
        method: str,
        url: str,
        *,
        expected: Container[int],
        what: str,
        scopes: Scopes,
        headers: Mapping[str, str] | None = None,
        content: httpx._types.RequestContent | None = None,
        params: Mapping[str, str] | None = None,
    ) -> httpx.Response:
        """Send a request and read its (small) body; raise a registry error unless ``expected``."""
        async with self.stream(
            method, url, expected=expected, what=what, scopes=scopes, headers=headers,
            content=content, params=params,
        ) as response:
            await response.aread()
            return response

    @asynccontextmanager
    async def stream(
        self,
        method: str,
        url: str,
        *,
        expected: Container[int],
        what: str,
        scopes: Scopes,
        headers: Mapping[str, str] | None = None,
        content: httpx._types.RequestContent | None = None,
        params: Mapping[str, str] | None = None,
    ) -> AsyncIterator[httpx.Response]:
        """Like :meth:`request`, but the caller reads the body as it arrives."""
        await self.probe()
        if self._stale:
            await self._renewing.do("credential", self._renew_credential)
        try:
            await self._tokens.do(scope_key(scopes), lambda: self._get_token(scopes, what))
        except (Unauthorized, Denied):
            self._stale = True  # the realm refused who we are: look again, as below
            raise
        request = self.http.build_request(
            method, self.url(url), headers=headers, content=content, params=params,
            extensions={SCOPES: tuple(scopes)},
        )
        replayable = isinstance(request.stream, httpx.ByteStream)
        await self._respect_hold()
        try:
            response = await self.http.send(request, stream=True)
        except httpx.TransportError as exc:
            raise error_from_transport(exc, what) from None
        except httpx.StreamConsumed:
            # A redirect (or auth retry) on a streamed upload: the body is gone and cannot be
            # sent twice. A registry that redirects uploads cannot take ours.
            raise ProtocolError(
                f"{what}: the registry redirected a streamed upload, which cannot be replayed",
                method=method, url=request.url) from None
        try:
            if response.status_code not in expected:
                error = await self._failure(response, what)
                if (response.status_code == 401 and not replayable
                        and "authorization" in response.request.headers):
                    # A token that expired while a streamed body was on its way (GitLab's
                    # last minutes): the flow has dropped it, and the next attempt gets a
                    # fresh one. Real bad credentials fail the attempt's first request.
                    error = TokenExpired(f"{what}: the registry refused the token mid-upload",
                                         status=401, method=method, url=request.url)
                self._note_limits(response, error)
                if isinstance(error, Unauthorized | Denied):
                    # Refused as who we are: look the credential up again at the next
                    # request, so that a fixed password is used by the next attempt (a
                    # worker's client outlives the task that failed) without waiting out
                    # the credential's age.
                    self._stale = True
                raise error
            self._note_limits(response, None)
            yield response
        except httpx.TransportError as exc:
            raise error_from_transport(exc, what) from None
        finally:
            await response.aclose()

    async def _get_token(self, scopes: Scopes, what: str) -> None:
        """Make sure of a token for ``scopes``, asking the realm if need be, once for all the
        requests of those scopes sent at once (each one's flow would ask on its own): the auth
        flow of such a request, driven up to where it would send the request itself."""
        request = self.http.build_request("GET", self.url("/v2/"),
                                          extensions={SCOPES: tuple(scopes)})
        flow = self._auth.auth_flow(request)
        try:
            outgoing = next(flow)
            while outgoing is not request:
                try:
                    # The realm's requests carry what they need; the flow is not theirs.
                    response = await self.http.send(outgoing, auth=None, stream=True)
                    try:
                        bound_body(response)
                        await response.aread()
                    finally:
                        await response.aclose()
                except httpx.TransportError as exc:
                    raise error_from_transport(exc, what) from None
                outgoing = flow.send(response)
        finally:
            flow.close()

    async def _failure(self, response: httpx.Response, what: str) -> RegistryError:
        try:
            body = await read_bounded(response, _ERROR_BODY_LIMIT)
        except httpx.TransportError:
            body = b""  # the status alone classifies the failure
        # Hand the classifier a response whose body is exactly what we read.
        clone = httpx.Response(
            response.status_code, headers=response.headers, content=body,
            request=response.request,
        )
        return error_from_response(clone, what)

    async def aclose(self) -> None:
        for task in self._warming:
            task.cancel()
        await asyncio.gather(*self._warming, return_exceptions=True)
        await self.http.aclose()
