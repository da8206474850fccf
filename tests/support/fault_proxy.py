"""A fault-injecting HTTP reverse proxy for tests, put in front of a real registry.

The client talks to ``127.0.0.1:<proxy port>``; the proxy forwards to the registry and rewrites
``Location`` and ``Link`` headers that point at the registry so they point back at the proxy.
Bodies stream both ways in 64 KiB pieces (never held whole). Each client connection carries one
request and is answered with ``Connection: close``: a fault then never leaks into the next request.

Rules are matched in the order they were added, by method and a regex searched in the path
(without the query); the first rule with uses left decides what happens to the request::

    proxy = FaultProxy(registry.url).start()
    proxy.add(Rule(Status(503), method="PUT", path=r"/blobs/uploads/", times=2))
    ... the client retries ...
    proxy.clear()                      # the fault clears; a stall in progress ends too
    assert proxy.count("PUT", r"/blobs/uploads/", status=503) == 2

A rule with a ``window`` is time-based: from its first hit it matches for that many seconds, then
never again. ``TooManyRequests`` is a rate limit that names its window once::

    limit = proxy.add(Rule(TooManyRequests(retry_after="4"), path=r"/manifests/", window=4))
    ...
    held = [s for s in proxy.seen if limit.opened <= s.time < limit.opened + 4]

Everything the proxy saw is in ``proxy.seen`` (time, method, path, status, Authorization present);
``proxy.body_pieces`` has the time and size of every request body piece it relayed.
The serving itself (threads, lifecycle, the log) is ``loopback_proxy.LoopbackProxy``'s.
"""

from __future__ import annotations

import re
import socket
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from io import BufferedReader

from .http_wire import (
    Headers,
    answer,
    body_pieces,
    forwarded_request_head,
    frame,
    get_header,
    is_chunked,
    read_response_head,
    relayed_response_head,
)
from .loopback_proxy import Connection, Cut, LoopbackProxy
from .loopback_proxy import Seen as _Seen


# -- actions --------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Status:
    """Answer ``status`` (with ``headers`` and ``body``) instead of asking the registry."""

    status: int
    headers: Mapping[str, str] = field(default_factory=dict)
    body: bytes = b""


@dataclass(frozen=True)
class Refuse:
    """Reset the connection (RST) as soon as the request head has arrived."""


@dataclass(frozen=True)
class CutRequest:
    """Pass ``after`` bytes of the request body to the registry, then reset both connections."""

    after: int


@dataclass(frozen=True)
class DropRequest:
    """Take ``after`` bytes of the request body from the client, then reset its connection;
    nothing reaches the registry. A cut in front of a proxy that buffers request bodies
    (nginx does by default): the registry's upload stays as it was."""

    after: int


@dataclass(frozen=True)
class CutResponse:
    """Pass ``after`` bytes of the response body to the client, then reset its connection."""

    after: int


@dataclass(frozen=True)
class Stall:
    """Hold the connection open and send nothing for ``seconds`` (or until ``clear()``), then
    close it; the registry never sees the request."""

    seconds: float


@dataclass(frozen=True)
class Delay:
    """Wait ``seconds`` (or until ``clear()``), then forward as usual: a slow registry."""

    seconds: float


@dataclass(frozen=True)
class Hold:
    """Take the whole request (head and body: the client has sent it all), hold it until
    :meth:`release` (or ``seconds``), then forward it as usual: a write held in the network,
    reaching the registry late. ``arrived`` is set once it is held; released separately from
    ``clear()``, so a test can order two writers' requests. For small bodies (manifests)."""

    seconds: float = 60.0
    arrived: threading.Event = field(default_factory=threading.Event, compare=False)
    _go: threading.Event = field(default_factory=threading.Event, compare=False)

    def release(self) -> None:
        self._go.set()

    def wait_arrived(self, timeout: float = 30.0) -> None:
        if not self.arrived.wait(timeout):
            raise AssertionError(f"no request reached the hold within {timeout:g}s")


@dataclass(frozen=True)
class FlipBytes:
    """Invert ``count`` bytes of the response body from offset ``at``; the length stays."""

    at: int = 0
    count: int = 1


@dataclass(frozen=True)
class WrongDigest:
    """Replace (or add) the response's ``Docker-Content-Digest`` header."""

    digest: str = "sha256:" + "0" * 64


@dataclass(frozen=True)
class Redirect:
    """Answer ``status`` with ``Location: <to><original path and query>`` (or ``to`` alone)."""

    to: str
    status: int = 307
    keep_path: bool = True


@dataclass(frozen=True)
class DropLocation:
    """Forward, but remove the ``Location`` header from the registry's answer."""


@dataclass(frozen=True)
class TooManyRequests:
    """Answer 429. The rule's first answer carries ``Retry-After: <retry_after>`` (when given),
    later ones none: a registry that names its window once (pair it with ``Rule.window``)."""

    retry_after: str | None = None


Action = (Status | Refuse | CutRequest | DropRequest | CutResponse | Stall | Delay | Hold
          | FlipBytes | WrongDigest | Redirect | DropLocation | TooManyRequests)


@dataclass
class Rule:
    """``action`` for requests whose method is ``method`` (None: any), whose path matches
    ``path`` and query matches ``query`` (``re.search``), ``times`` times (None: until cleared),
    and for ``window`` seconds from its first hit (None: no time limit).

    ``query`` tells one upload from another: a monolithic upload's PUT carries ``digest=``.
    ``opened`` is the ``time.monotonic()`` of the first hit, comparable with ``Seen.time``.
    """

    action: Action
    method: str | None = None
    path: str = ""
    times: int | None = None
    query: str = ""
    hits: int = 0
    window: float | None = None
    opened: float | None = None

    def matches(self, method: str, path: str, query: str, now: float | None = None) -> bool:
        if self.times is not None and self.hits >= self.times:
            return False
        now = time.monotonic() if now is None else now
        if self.window is not None and self.opened is not None and now >= self.opened + self.window:
            return False
        if self.method is not None and self.method.upper() != method.upper():
            return False
        return re.search(self.path, path) is not None and re.search(self.query, query) is not None


@dataclass
class Seen(_Seen):
    """One request the proxy received (see ``loopback_proxy.Seen``); ``status`` is None also when
    the request was refused, stalled, or cut while still arriving. A response cut part-way keeps
    its status. ``fault`` is the action's class name, when a rule fired. ``sent`` counts the
    response body bytes relayed to the client (what a test asks "how much was read" of);
    ``received`` the request body bytes taken from the client ("how much was sent")."""

    fault: str | None = None
    sent: int = 0
    received: int = 0


# -- the proxy ------------------------------------------------------------------------------------
class FaultProxy(LoopbackProxy[Seen]):
    """A reverse proxy on a free loopback port in front of ``upstream`` (``http://host:port``)."""

    def __init__(self, upstream: str) -> None:
        super().__init__(upstream)
        self._rules: list[Rule] = []
        self._release = threading.Event()  # set by clear(): ends the stalls under way
        # (time.monotonic(), bytes) of each request body piece relayed upstream, in order: a
        # byte count with timestamps, for a test of upload rates.
        self.body_pieces: list[tuple[float, int]] = []

    def start(self) -> FaultProxy:
        """Listen on a free port (the same one again after ``stop_listening()``)."""
        if self._listener is None and self._release.is_set():
            self._release = threading.Event()
        return super().start()

    def stop(self) -> None:
        """Stop listening and cut every connection under way; stalls under way end."""
        self._release.set()
        super().stop()

    # -- script -----------------------------------------------------------------------------------
    def add(self, rule: Rule) -> Rule:
        """Append ``rule``; returns it so a test can read ``rule.hits``."""
        with self._lock:
            self._rules.append(rule)
        return rule

    def clear(self) -> None:
        """Drop every rule: the fault clears. Stalls under way end (their connection closes)."""
        with self._lock:
            self._rules.clear()
            release, self._release = self._release, threading.Event()
        release.set()

    # -- serving ----------------------------------------------------------------------------------
    def _match(self, method: str, path: str, query: str, now: float) -> tuple[Rule | None, int]:
        """The rule deciding this request, and which hit of it this is (1: its first)."""
        with self._lock:
            for rule in self._rules:
                if rule.matches(method, path, query, now):
                    rule.hits += 1
                    if rule.opened is None:
                        rule.opened = now
                    return rule, rule.hits
        return None, 0

    def _handle(self, conn: Connection, request_line: str, headers: Headers) -> None:
        method, target, _ = request_line.split(" ", 2)
        path, _, query = target.partition("?")
        record = Seen(time.monotonic(), method.upper(), path, query,
                      authorization=get_header(headers, "authorization") is not None)
        conn.record = record
        with self._lock:
            self._seen.append(record)
            release = self._release
        rule, hit = self._match(method, path, query, record.time)
        action = rule.action if rule is not None else None
        if action is not None:
            record.fault = type(action).__name__
        if isinstance(action, Refuse):
            raise Cut
        if isinstance(action, Stall):
            release.wait(action.seconds)
            return
        if isinstance(action, Delay):
            release.wait(action.seconds)
        body: list[bytes] | None = None
        if isinstance(action, Hold):
            body = list(body_pieces(conn.reader, headers, is_response=False))
            action.arrived.set()
            action._go.wait(action.seconds)
        if isinstance(action, TooManyRequests):
            told = hit == 1 and action.retry_after is not None
            action = Status(429, {"Retry-After": action.retry_after or ""} if told else {},
                            b'{"errors":[{"code":"TOOMANYREQUESTS","message":"slow down"}]}')
        if isinstance(action, DropRequest):  # a body shorter than ``after`` goes on whole
            body = []
            for piece in body_pieces(conn.reader, headers, is_response=False):
                record.received += len(piece)
                if record.received >= action.after:
                    raise Cut
                body.append(piece)
        if isinstance(action, Status | Redirect):
            for piece in body_pieces(conn.reader, headers, is_response=False):
                record.received += len(piece)  # read, so the client sees our answer
            _answer(conn.client, action, target, record)
            return
        upstream = self._connect_upstream(conn)
        self._forward(conn.client, conn.reader, upstream, method, target, headers, action, record,
                      body)

    def _forward(
        self, client: socket.socket, client_in: BufferedReader, upstream: socket.socket,
        method: str, target: str, headers: Headers, action: Action | None, record: Seen,
        body: list[bytes] | None = None,
    ) -> None:
        """Relay one exchange, applying ``action``; record the status before the client sees it.
        ``body``: the request's body, already taken from the client (a held request)."""
        chunked_request = is_chunked(headers)
        upstream.sendall(forwarded_request_head(
            method, target, self.upstream_host, headers,
            extra=["Transfer-Encoding: chunked"] if chunked_request else []))
        sent = 0
        pieces = body if body is not None else body_pieces(client_in, headers, is_response=False)
        for piece in pieces:
            if isinstance(action, CutRequest) and sent + len(piece) >= action.after:
                upstream.sendall(frame(piece[: action.after - sent], chunked_request))
                record.received = sent + len(piece)
                raise Cut
            upstream.sendall(frame(piece, chunked_request))
            sent += len(piece)
            record.received = sent
            self.body_pieces.append((time.monotonic(), len(piece)))
        if chunked_request:
            upstream.sendall(b"0\r\n\r\n")

        upstream_in = upstream.makefile("rb")
        try:
            status, status_line, response_headers = read_response_head(upstream_in)
            record.status = status
            client.sendall(self._response_head(status_line, response_headers, action))
            if method.upper() == "HEAD" or status in (204, 304):
                return
            offset = 0
            for piece in body_pieces(upstream_in, response_headers, is_response=True):
                if isinstance(action, FlipBytes):
                    piece = _flip(piece, offset, action)
                if isinstance(action, CutResponse) and offset + len(piece) >= action.after:
                    client.sendall(piece[: action.after - offset])
                    raise Cut
                client.sendall(piece)
                offset += len(piece)
                record.sent = offset
        finally:
            upstream_in.close()

    def _response_head(self, status_line: str, headers: Headers, action: Action | None) -> bytes:
        drop, extra = set(), []
        if isinstance(action, DropLocation):
            drop.add("location")
        if isinstance(action, WrongDigest):
            drop.add("docker-content-digest")
            extra.append(f"Docker-Content-Digest: {action.digest}")
        return relayed_response_head(status_line, headers, upstream_url=self.upstream_url,
                                     url=self.url, drop=drop, extra=extra)


def _flip(piece: bytes, offset: int, action: FlipBytes) -> bytes:
    start = max(action.at - offset, 0)
    end = min(action.at + action.count - offset, len(piece))
    if start >= end:
        return piece
    flipped = bytearray(piece)
    for i in range(start, end):
        flipped[i] ^= 0xFF
    return bytes(flipped)


def _answer(client: socket.socket, action: Status | Redirect, target: str, record: Seen) -> None:
    if isinstance(action, Redirect):
        status, body = action.status, b""
        headers = {"Location": action.to.rstrip("/") + target if action.keep_path else action.to}
    else:
        status, body, headers = action.status, action.body, dict(action.headers)
    # Recorded first: a client that has its answer may look at ``seen`` straight away.
    record.status = status
    client.sendall(answer(f"HTTP/1.1 {status} Fault", headers.items(), body))
