"""One registry host: an httpx client with auth, scheme choice and error mapping.

Everything above this module speaks in registry errors (``registry.errors``), never in httpx
exceptions or raw status codes.
"""

from __future__ import annotations

import asyncio
import ipaddress
import ssl
import time
from collections.abc import AsyncIterator, Container, Mapping
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING

import httpcore
import httpx

from .auth import RegistryAuth
from .errors import (
    ProtocolError,
    RegistryError,
    error_from_response,
    error_from_transport,
    is_certificate_error,
)
from .options import TransportOptions
from .reference import is_loopback_host

if TYPE_CHECKING:
    from .credentials import Credential

# An error body is for a diagnostic code and a message; never worth more than this.
_ERROR_BODY_LIMIT = 64 * 1024
# httpcore receives 64 KiB per read; blobs stream with about 30% less CPU per byte in reads of
# 256 KiB (measured on loopback, bench/copy_bench.py). It is a class attribute, so this sets it
# for the process; should httpcore drop it, the assignment is simply unused.
httpcore.AsyncHTTP11Connection.READ_NUM_BYTES = 256 * 1024

# The longest Retry-After we hold every request to a registry for. A longer one fails the request
# (transient, carrying the delay) so the task tier waits without holding a worker slot.
MAX_HOLD_SECONDS = 60.0
_DOCKER_HUB = "docker.io"
_DOCKER_HUB_API = "registry-1.docker.io"


def api_host(registry: str) -> str:
    """The host[:port] that serves the API for ``registry`` (Docker Hub's differs from its name)."""
    return _DOCKER_HUB_API if registry == _DOCKER_HUB else registry


def uses_plain_http(registry: str, insecure: frozenset[str]) -> bool:
    """Plain HTTP for loopback (as Docker and crane do) and for hosts the user listed."""
    if registry in insecure or is_loopback_host(registry):
        return True
    host = registry.rsplit(":", 1)[0] if not registry.endswith("]") else registry
    if host in insecure:
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def tls_context(options: TransportOptions) -> ssl.SSLContext:
    """Verification always on; the system's trust plus a custom CA bundle when given.

    Building one costs tens of milliseconds (loading the trust store), so callers share it.
    """
    if options.ca_bundle:
        return ssl.create_default_context(cafile=options.ca_bundle)
    return httpx.create_ssl_context()


class RegistryClient:
    """Requests to one registry, with credentials that never leave its host."""

    def __init__(
        self,
        registry: str,
        *,
        credential: Credential | None,
        options: TransportOptions,
        transport: httpx.AsyncBaseTransport | None = None,
        tls: ssl.SSLContext | None = None,
    ) -> None:
        self.registry = registry
        self.options = options
        self.plain_http = uses_plain_http(registry, options.insecure_registries)
        host = api_host(registry)
        self.base_url = f"https://{host}"
        # Where plain HTTP is allowed, HTTPS is still used if the registry speaks it (as Docker
        # and go-containerregistry do): a loopback port-forward to a TLS registry must work.
        self._scheme_settled = not self.plain_http
        self._scheme_lock = asyncio.Lock()
        self.http = httpx.AsyncClient(
            auth=RegistryAuth(host, credential, allow_http_realm=self.plain_http),
            timeout=httpx.Timeout(
                options.read_timeout, connect=options.connect_timeout, pool=None,
            ),
            limits=httpx.Limits(
                max_connections=options.max_connections_per_host,
                max_keepalive_connections=options.max_connections_per_host,
            ),
            verify=tls if tls is not None else tls_context(options),
            follow_redirects=True,
            headers={"User-Agent": options.user_agent},
            transport=transport,
        )

        # monotonic time before which nothing is sent here: a registry's Retry-After covers
        # the registry, not just the one request that was told.
        self._hold_until = 0.0

    def __repr__(self) -> str:
        return f"RegistryClient({self.base_url!r})"

    def hold(self, seconds: float) -> None:
        """Send nothing to this registry for ``seconds`` (up to MAX_HOLD_SECONDS)."""
        if 0 < seconds <= MAX_HOLD_SECONDS:
            self._hold_until = max(self._hold_until, time.monotonic() + seconds)

    async def _settle_scheme(self) -> None:
        if self._scheme_settled:
            return
        async with self._scheme_lock:
            if self._scheme_settled:
                return
            self.base_url = await self._pick_scheme(self.base_url.removeprefix("https://"))
            self._scheme_settled = True

    async def _pick_scheme(self, host: str) -> str:
        """Ping ``/v2/`` over HTTPS and HTTP at once; the first registry answer (200 or 401)
        wins (a TLS port answers plain HTTP with 400, so it is HTTPS there). At once, because
        a plain-HTTP server may never answer a TLS handshake, and waiting for it would cost
        every client the connect timeout."""
        async def ping(scheme: str) -> str | None:
            try:
                # The client's own timeouts: a registry that stalls stalls the probe no longer
                # than it would stall any request.
                response = await self.http.get(f"{scheme}://{host}/v2/", auth=None)
            except httpx.TransportError as exc:
                # An untrusted certificate still means the registry speaks TLS: use HTTPS so
                # the real request fails with that reason, not a misleading one.
                return scheme if is_certificate_error(exc) else None
            return scheme if response.status_code in (200, 401) else None

        probes = {asyncio.ensure_future(ping(s)): s for s in ("https", "http")}
        chosen = None
        # A registry that stalls both probes gets no longer than a connect or a read would.
        deadline = min(self.options.connect_timeout, self.options.read_timeout)
        try:
            for finished in asyncio.as_completed(probes, timeout=deadline):
                chosen = await finished
                if chosen is not None:
                    break
        except TimeoutError:
            pass
        finally:
            for probe in probes:
                probe.cancel()
            await asyncio.gather(*probes, return_exceptions=True)
        # Neither answered like a registry: HTTP, where the real request reports the problem.
        return f"{chosen or 'http'}://{host}"

    async def _respect_hold(self) -> None:
        while (delay := self._hold_until - time.monotonic()) > 0:
            await asyncio.sleep(delay)

    async def aclose(self) -> None:
        await self.http.aclose()

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
        headers: Mapping[str, str] | None = None,
        content: httpx._types.RequestContent | None = None,
        params: Mapping[str, str] | None = None,
    ) -> httpx.Response:
        """Send a request and read its (small) body; raise a registry error unless ``expected``."""
        async with self.stream(
            method, url, expected=expected, what=what, headers=headers, content=content,
            params=params,
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
        headers: Mapping[str, str] | None = None,
        content: httpx._types.RequestContent | None = None,
        params: Mapping[str, str] | None = None,
    ) -> AsyncIterator[httpx.Response]:
        """Like :meth:`request`, but the caller reads the body as it arrives."""
        await self._settle_scheme()
        request = self.http.build_request(
            method, self.url(url), headers=headers, content=content, params=params,
        )
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
                raise await self._failure(response, what)
            yield response
        except httpx.TransportError as exc:
            raise error_from_transport(exc, what) from None
        finally:
            await response.aclose()

    async def _failure(self, response: httpx.Response, what: str) -> RegistryError:
        body = b""
        try:
            async for chunk in response.aiter_bytes():
                body += chunk
                if len(body) >= _ERROR_BODY_LIMIT:
                    break
        except httpx.TransportError:
            pass  # the status alone classifies the failure
        # Hand the classifier a response whose body is exactly what we read.
        clone = httpx.Response(
            response.status_code, headers=response.headers, content=body[:_ERROR_BODY_LIMIT],
            request=response.request,
        )
        error = error_from_response(clone, what)
        if error.retry_after is not None and error.transient:
            self.hold(error.retry_after)
        return error
