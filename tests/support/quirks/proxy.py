"""A reverse proxy that makes a real anonymous registry behave like a hosted one.

The proxy sits in front of a Debian ``docker-registry`` (distribution 2.8) and applies a profile:
an ordered list of :class:`Behaviour` objects, each reproducing one thing a hosted registry does
differently (its auth, its upload rules, its error bodies, its referrers API). The registry
behind stays anonymous and plain; everything hosted-specific happens here::

    proxy = QuirkProxy(registry.url, profiles.ecr(existing={"acme/app"})).start()
    ... fanout copies to proxy.host/acme/app ...
    assert proxy.count("PATCH", r"/blobs/uploads/", status=201) > 0
    print(proxy.log())              # the request sequence, for a failure message

A request goes through the behaviours in order: the first whose ``on_request`` returns a
:class:`Reply` answers it (the request body is read and dropped, so the client sees the answer
rather than a failed write). Otherwise it is forwarded, its body streamed in 64 KiB pieces (never
held whole; a manifest PUT is buffered when a behaviour asks, manifests being small), and every
behaviour's ``on_response`` may rewrite the registry's answer or replace it. ``Location`` and
``Link`` headers that name the registry are rewritten to name the proxy. One request per client
connection, answered with ``Connection: close``. The serving itself (threads, lifecycle, the log
and its queries) is ``loopback_proxy.LoopbackProxy``'s, as for ``fault_proxy.FaultProxy``.

The proxy tracks every upload's offset itself (it sees each PATCH and what the registry
accepted), for the rules that need it. Everything it answered is in ``seen``.
"""

from __future__ import annotations

import dataclasses
import re
import socket
import time
from collections import Counter
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from tests.support import http_wire as wire
from tests.support.loopback_proxy import Connection, LoopbackProxy

from .exchange import API_PATH, BUFFER_LIMIT, Behaviour, Exchange, Seen, Upstream
from .replies import METHODS, status_line

if TYPE_CHECKING:
    from tests.support.registries import RegistryServer


class QuirkProxy(LoopbackProxy[Seen]):
    """A profile's registry on a free loopback port, in front of ``upstream`` (http://host:port).

    ``profile`` is a :class:`~tests.support.quirks.profiles.Profile` or a plain list of
    behaviours (a custom registry).
    """

    def __init__(self, upstream: str, profile: Any) -> None:
        super().__init__(upstream)
        self.profile = profile
        self.behaviours: list[Behaviour] = list(getattr(profile, "behaviours", profile))
        self._offsets: dict[str, int] = {}
        self.started_at = time.monotonic()

    # -- what tests use -------------------------------------------------------------------------
    def behaviour(self, kind: type[Any]) -> Any:
        """The profile's behaviour of this class (the first); LookupError if it has none."""
        for item in self.behaviours:
            if isinstance(item, kind):
                return item
        raise LookupError(f"the profile has no {kind.__name__}")

    def server(self, behind: RegistryServer) -> RegistryServer:
        """``behind`` as a client that only knows the proxy sees it, with the profile's
        credentials: for ``tests.support.images`` helpers pushing through the proxy."""
        username = getattr(self.profile, "username", None)
        password = getattr(self.profile, "password", None)
        return dataclasses.replace(
            behind, host=self.host, url=self.url, auth="proxy" if username else None,
            username=username, password=password, token_server=None, _proc=None,
            _log_file=None, _owns_token_server=False)

    def log(self, last: int = 60, path: str = "") -> str:
        """The last requests, a line each: what a failure message should show."""
        seen = [s for s in self.seen if re.search(path, s.path)]
        name = getattr(self.profile, "name", "custom")
        lines = [s.line(self.started_at) for s in seen[-last:]]
        skipped = f" (last {last} of {len(seen)})" if len(seen) > last else ""
        return f"{name} proxy {self.host}{skipped}:\n  " + "\n  ".join(lines)

    def tally(self) -> Counter[tuple[str, str]]:
        """Requests by (method, kind of path): kind is ``manifests``, ``blobs``, ``uploads``,
        ``tags``, ``referrers``, ``base`` (``/v2/``) or ``other``; e.g. a listing asserts
        ``tally()[("GET", "blobs")] == 0``."""
        found: Counter[tuple[str, str]] = Counter()
        for seen in self.seen:
            match = API_PATH.match(seen.path)
            kind = match["kind"] if match else "base" if seen.path in ("/v2", "/v2/") else "other"
            found[(seen.method, "uploads" if kind == "blobs/uploads" else kind)] += 1
        return found

    def upload_offset(self, upload_id: str) -> int:
        """Bytes the registry has accepted so far for this upload (as the proxy saw them)."""
        with self._lock:
            return self._offsets.get(upload_id, 0)

    # -- serving --------------------------------------------------------------------------------
    def _handle(self, conn: Connection, start_line: str, headers: wire.Headers) -> None:
        parts = start_line.split(" ")
        # A TLS hello (the engine tries HTTPS first) or other noise: not a request.
        if len(parts) != 3 or parts[0].upper() not in METHODS or not parts[1].startswith("/"):
            raise ValueError("not an HTTP request")
        method, target = parts[0].upper(), parts[1]
        path, _, query = target.partition("?")
        length_text = wire.get_header(headers, "content-length")
        record = Seen(time.monotonic(), method, path, query,
                      authorization=wire.get_header(headers, "authorization") is not None,
                      length=int(length_text) if length_text and length_text.isdigit() else None)
        conn.record = record
        with self._lock:
            self._seen.append(record)
        ex = Exchange(self, method, path, query, headers, record, conn.reader)
        if (ex.length is not None and ex.length <= BUFFER_LIMIT
                and any(b.wants_body(ex) for b in self.behaviours)):
            ex.read_body()
        for behaviour in self.behaviours:
            reply = behaviour.on_request(ex)
            if reply is not None:
                record.quirk = behaviour.name
                ex.drain()
                record.status = reply.status
                conn.client.sendall(reply.encode(method))
                return
        self._forward(conn.client, ex, self._connect_upstream(conn))

    def _forward(self, client: socket.socket, ex: Exchange, upstream: socket.socket) -> None:
        chunked = wire.is_chunked(ex.headers) and ex.body is None
        target = f"{ex.path}?{ex.query}" if ex.query else ex.path
        if chunked:
            framing = "Transfer-Encoding: chunked"
        elif ex.body is not None:
            framing = f"Content-Length: {len(ex.body)}"
        elif ex.length is not None:
            framing = f"Content-Length: {ex.length}"
        else:
            framing = ""
        # The proxy did the auth: the anonymous registry behind never sees credentials.
        upstream.sendall(wire.forwarded_request_head(
            ex.method, target, self.upstream_host, ex.headers,
            drop={"authorization", "content-length"}, extra=[framing] if framing else []))
        started = time.monotonic()
        for piece in ex.pieces():
            upstream.sendall(wire.frame(piece, chunked))
            ex.forwarded += len(piece)
            if ex.throttle:
                ahead = ex.forwarded / ex.throttle - (time.monotonic() - started)
                if ahead > 0:
                    time.sleep(ahead)
        if chunked:
            upstream.sendall(b"0\r\n\r\n")

        upstream_in = upstream.makefile("rb")
        try:
            status, _, response_headers = wire.read_response_head(upstream_in)
            up = Upstream(status, response_headers)
            self._track_upload(ex, up)
            for behaviour in self.behaviours:
                reply = behaviour.on_response(ex, up)
                if reply is not None:
                    ex.record.quirk = behaviour.name
                    ex.record.status = reply.status
                    client.sendall(reply.encode(ex.method))
                    return
            if up.changed_by:
                ex.record.quirk = up.changed_by
            ex.record.status = up.status
            client.sendall(wire.relayed_response_head(status_line(up.status), up.headers,
                                                 upstream_url=self.upstream_url, url=self.url))
            if ex.method == "HEAD" or up.status in (204, 304):
                return
            for piece in wire.body_pieces(upstream_in, response_headers, is_response=True):
                client.sendall(piece)
        finally:
            upstream_in.close()

    def _track_upload(self, ex: Exchange, up: Upstream) -> None:
        if ex.kind != "uploads":
            return
        with self._lock:
            if ex.method == "POST" and up.status == 202:
                opened = _upload_id_of(up.header("location") or "")
                if opened:
                    self._offsets[opened] = 0
            elif ex.method == "PATCH" and up.status == 202 and ex.upload_id:
                self._offsets[ex.upload_id] = self._offsets.get(ex.upload_id, 0) + ex.forwarded
            elif ex.method in ("PUT", "DELETE") and ex.upload_id:
                self._offsets.pop(ex.upload_id, None)


def _upload_id_of(location: str) -> str | None:
    match = API_PATH.match(urlsplit(location).path)
    return match["ref"] if match and match["kind"] == "blobs/uploads" and match["ref"] else None
