"""The first contact with a registry host: which scheme it speaks and what it asks for.

One ``GET /v2/`` per host (per scheme, where plain HTTP is allowed), done once and shared: its
answer picks the scheme and hands the auth flow its challenge, so nothing pings twice::

    200                       → no auth
    401 + Bearer challenge    → token auth, realm and service from the challenge
    401 + Basic challenge     → Basic
    401 without one we know   → "other": requests go out as they are
    anything else             → the registry's error (5xx transient, 4xx permanent)

Where plain HTTP is allowed (loopback, ``--insecure-registry``) HTTPS and HTTP are asked at once
and the first registry answer wins, as Docker and crane prefer HTTPS: a plain-HTTP server may
never answer a TLS handshake, and waiting for it would cost the connect timeout.
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass, field

import httpx

from .bounded import read_bounded
from .challenge import Challenge, pick_challenge, response_challenges
from .errors import (
    ProtocolError,
    RegistryError,
    UntrustedCertificate,
    error_from_response,
    error_from_transport,
)

_ERROR_BODY_LIMIT = 64 * 1024


@dataclass(frozen=True, slots=True)
class Probe:
    """What a host's ``/v2/`` said: scheme, auth kind and, for Bearer, the realm's host."""

    scheme: str
    auth: str  # "none" | "basic" | "bearer" | "other"
    realm_host: str | None = None
    challenge: Challenge | None = field(default=None, repr=False, compare=False)


async def probe_host(
    http: httpx.AsyncClient, host: str, *, plain_http: bool, deadline: float,
    deadline_kind: type[httpx.TimeoutException] = httpx.ConnectTimeout,
) -> Probe:
    """Ping ``host``; raise the registry error when it does not answer like a registry."""
    if not plain_http:
        return await _ping(http, "https", host)
    attempts = {asyncio.ensure_future(_ping(http, s, host)): s for s in ("https", "http")}
    failures: dict[str, RegistryError] = {}
    try:
        for finished in asyncio.as_completed(attempts, timeout=deadline):
            try:
                return await finished
            except RegistryError as exc:
                failures[_scheme_of(exc)] = exc
    except TimeoutError:
        pass
    finally:
        for attempt in attempts:
            attempt.cancel()
        await asyncio.gather(*attempts, return_exceptions=True)
    # Neither answered like a registry. An untrusted certificate still means the host speaks
    # TLS: say so. Otherwise HTTP's failure is the one to report (a TLS port answers plain
    # HTTP with 400; an HTTP port fails the handshake, which says little).
    untrusted = failures.get("https")
    if isinstance(untrusted, UntrustedCertificate):
        raise untrusted
    raise failures.get("http") or failures.get("https") or error_from_transport(
        deadline_kind(f"no answer from {host} within {deadline:g} s"), f"ping {host}")


def _scheme_of(exc: RegistryError) -> str:
    return (exc.url or "").split("://", 1)[0]


async def _ping(http: httpx.AsyncClient, scheme: str, host: str) -> Probe:
    url = f"{scheme}://{host}/v2/"
    request = http.build_request("GET", url, headers={"Accept-Encoding": "identity"})
    try:
        response = await http.send(request, auth=None, stream=True)
    except httpx.TransportError as exc:
        raise error_from_transport(exc, f"ping {host}") from None
    try:
        body = await read_bounded(response, _ERROR_BODY_LIMIT)
    except httpx.TransportError as exc:
        raise error_from_transport(exc, f"ping {host}") from None
    finally:
        await response.aclose()
    if response.url.host != request.url.host or response.url.port != request.url.port:
        raise ProtocolError(f"ping of {host} was redirected to another host",
                            status=response.status_code, method="GET", url=url)
    if response.status_code == 200:
        return Probe(scheme, "none")
    if response.status_code != 401:
        answered = httpx.Response(response.status_code, headers=response.headers, content=body,
                                  request=request)
        raise error_from_response(answered, f"ping {host}")
    challenge = pick_challenge(response_challenges(response))
    if challenge is None:
        return Probe(scheme, "other")
    realm_host = None
    if challenge.scheme == "bearer":
        # A malformed realm: the auth flow refuses it, with the reason, when it asks for a token.
        with contextlib.suppress(httpx.InvalidURL):
            realm_host = httpx.URL(challenge.params.get("realm", "")).host or None
    return Probe(scheme, challenge.scheme, realm_host, challenge)
