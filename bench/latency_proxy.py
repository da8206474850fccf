"""A WAN-shaped reverse proxy for benchmarks: every request waits, every new connection waits more.

    proxy = LatencyProxy(registry.url, request_delay=0.05, connect_delay=0.15).start()
    ... a client talks to proxy.host ...
    proxy.hops        # what it saw: one Hop per request, with its connection and timing

The serving, lifecycle and log are ``tests.support.loopback_proxy.LoopbackProxy``'s; this one
keeps client connections alive (one thread serves every request of a connection, in turn), so a
client that reuses connections pays ``connect_delay`` once per connection and ``request_delay``
per request. Each request is passed on over a fresh loopback connection to the upstream (free
here), bodies streamed both ways. ``Location`` and ``Link`` naming the upstream, and the realm of
a ``WWW-Authenticate`` challenge naming a token server that has a proxy of its own (``realms``),
are rewritten so the client comes back through the proxies.

A TLS ClientHello (both tools try HTTPS first on a plain-HTTP registry) is refused at once, as
the registry itself refuses it, and not charged: on a real WAN that attempt would have been the
one TLS connection, whose cost the plain connection that follows pays. It is counted apart.
"""

from __future__ import annotations

import contextlib
import itertools
import secrets
import socket
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from io import BufferedReader
from pathlib import Path

from tests.support.http_wire import (
    HOP_BY_HOP,
    Headers,
    body_pieces,
    forwarded_request_head,
    frame,
    get_header,
    is_chunked,
    read_head,
    read_response_head,
)
from tests.support.loopback_proxy import LoopbackProxy, Seen
from tests.support.registries import RegistryServer, start_registry

_TLS_HANDSHAKE = 0x16
# What Go's net/http answers a TLS ClientHello sent to a plain-HTTP port.
_NOT_TLS = b"HTTP/1.0 400 Bad Request\r\n\r\nClient sent an HTTP request to an HTTPS server.\n"
_connection_ids = itertools.count(1)


@dataclass
class Hop(Seen):
    """One request (see ``Seen``): ``start`` is when it began to cost the client (the connection's
    accept for its first request), ``end`` when its answer was sent; ``first`` marks the request
    that paid for a new connection."""

    role: str = ""
    connection: int = 0
    first: bool = False
    start: float = 0.0
    end: float | None = None


class LatencyProxy(LoopbackProxy[Hop]):
    """``request_delay`` seconds per request, ``connect_delay`` more per new connection."""

    def __init__(self, upstream: str, *, role: str, request_delay: float, connect_delay: float,
                 realms: Mapping[str, str] | None = None) -> None:
        super().__init__(upstream)
        self.role = role
        self.request_delay = request_delay
        self.connect_delay = connect_delay
        self.realms = dict(realms or {})  # a token server's URL -> its proxy's URL
        self.tls_refused = 0

    @property
    def hops(self) -> list[Hop]:
        return self.seen

    def reset(self) -> None:
        """Forget what was seen: the counts start again (for the next client run)."""
        with self._lock:
            self._seen.clear()
            self.tls_refused = 0

    # -- serving ----------------------------------------------------------------------------------
    def _serve(self, client: socket.socket) -> None:
        accepted = time.monotonic()
        reader = client.makefile("rb")
        try:
            first_byte = client.recv(1, socket.MSG_PEEK)
            if not first_byte:
                return
            if first_byte[0] == _TLS_HANDSHAKE:
                with self._lock:
                    self.tls_refused += 1
                client.sendall(_NOT_TLS)
                return
            time.sleep(self.connect_delay)
            connection = next(_connection_ids)
            first = True
            while head := read_head(reader):
                request_line, headers = head
                if not self._exchange(client, reader, request_line, headers, connection,
                                      start=accepted if first else time.monotonic(), first=first):
                    return
                first = False
        except (OSError, ValueError):
            with contextlib.suppress(OSError):
                client.shutdown(socket.SHUT_RDWR)
        finally:
            with contextlib.suppress(OSError):
                reader.close()
            with contextlib.suppress(OSError):
                client.close()
            with self._lock:
                self._open.discard(client)

    def _exchange(self, client: socket.socket, reader: BufferedReader, request_line: str,
                  headers: Headers, connection: int, *, start: float, first: bool) -> bool:
        """Delay, relay one request and its answer; False when the connection is to close."""
        method, target, version = request_line.split(" ", 2)
        path, _, query = target.partition("?")
        hop = Hop(time.monotonic(), method.upper(), path, query,
                  authorization=get_header(headers, "authorization") is not None,
                  role=self.role, connection=connection, first=first, start=start)
        with self._lock:
            self._seen.append(hop)
        if (get_header(headers, "expect") or "").lower() == "100-continue":
            client.sendall(b"HTTP/1.1 100 Continue\r\n\r\n")
        time.sleep(self.request_delay)
        upstream = socket.create_connection(self._upstream_addr, timeout=60)
        with self._lock:
            self._open.add(upstream)
        upstream_in = upstream.makefile("rb")
        try:
            chunked = is_chunked(headers)
            upstream.sendall(forwarded_request_head(
                method, target, self.upstream_host, headers, drop={"expect"},
                extra=["Transfer-Encoding: chunked"] if chunked else []))
            for piece in body_pieces(reader, headers, is_response=False):
                upstream.sendall(frame(piece, chunked))
            if chunked:
                upstream.sendall(b"0\r\n\r\n")
            status, status_line, response_headers = read_response_head(upstream_in)
            hop.status = status
            has_body = method.upper() != "HEAD" and status not in (204, 304)
            rechunk = has_body and get_header(response_headers, "content-length") is None
            client.sendall(self._response_head(status_line, response_headers, rechunk))
            if has_body:
                for piece in body_pieces(upstream_in, response_headers, is_response=True):
                    client.sendall(frame(piece, rechunk))
                if rechunk:
                    client.sendall(b"0\r\n\r\n")
        finally:
            hop.end = hop.done = time.monotonic()
            with contextlib.suppress(OSError):
                upstream_in.close()
            with contextlib.suppress(OSError):
                upstream.close()
            with self._lock:
                self._open.discard(upstream)
        wants_close = (get_header(headers, "connection") or "").lower() == "close"
        return not wants_close and version.upper() == "HTTP/1.1"

    def _response_head(self, status_line: str, headers: Headers, chunked: bool) -> bytes:
        lines = [status_line]
        for name, value in headers:
            lower = name.lower()
            if lower in HOP_BY_HOP:
                continue
            if lower in ("location", "link"):
                value = value.replace(self.upstream_url, self.url)
            elif lower == "www-authenticate":
                for realm, proxied in self.realms.items():
                    value = value.replace(realm, proxied)
            lines.append(f"{name}: {value}")
        if chunked:
            lines.append("Transfer-Encoding: chunked")
        return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def start_proxies(upstreams: Mapping[str, str], *, request_delay: float,
                  connect_delay: float) -> dict[str, LatencyProxy]:
    """A proxy per {role: upstream URL}; a role ending in ``-token`` is the token server of the
    role without it, and that registry's challenges are pointed at its proxy."""
    proxies = {role: LatencyProxy(url, role=role, request_delay=request_delay,
                                  connect_delay=connect_delay).start()
               for role, url in upstreams.items()}
    for role, proxy in proxies.items():
        token = proxies.get(f"{role}-token")
        if token is not None:
            proxy.realms[token.upstream_url] = token.url
    return proxies


def stop_all(proxies: Mapping[str, LatencyProxy]) -> None:
    for proxy in proxies.values():
        proxy.stop()


def all_hops(proxies: Mapping[str, LatencyProxy]) -> list[Hop]:
    """Every request the proxies saw, in order of arrival."""
    return sorted((hop for proxy in proxies.values() for hop in proxy.hops),
                  key=lambda hop: hop.start)


def reset_all(proxies: Mapping[str, LatencyProxy]) -> None:
    for proxy in proxies.values():
        proxy.reset()


def tls_refused(proxies: Mapping[str, LatencyProxy]) -> int:
    return sum(proxy.tls_refused for proxy in proxies.values())



@dataclass
class TokenNetwork:
    """Token-auth registries by role, each and its token server behind a proxy; one password."""

    registries: dict[str, RegistryServer]
    proxies: dict[str, LatencyProxy]
    password: str


@contextlib.contextmanager
def token_network(root: Path, roles: Sequence[str], *, request_delay: float,
                  connect_delay: float) -> Iterator[TokenNetwork]:
    """A registry with token auth (and its own token server) per role, all behind proxies."""
    password = secrets.token_urlsafe(12)
    registries: dict[str, RegistryServer] = {}
    proxies: dict[str, LatencyProxy] = {}
    try:
        for role in roles:
            registries[role] = start_registry(root / role, auth="token", password=password,
                                              wait=False)
        for server in registries.values():
            server.wait_ready()
        upstreams: dict[str, str] = {}
        for role, server in registries.items():
            assert server.token_server is not None
            upstreams[role] = server.url
            upstreams[f"{role}-token"] = server.token_server.url
        proxies = start_proxies(upstreams, request_delay=request_delay,
                                connect_delay=connect_delay)
        yield TokenNetwork(registries, proxies, password)
    finally:
        stop_all(proxies)
        for server in registries.values():
            server.close()
