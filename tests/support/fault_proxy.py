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

Everything the proxy saw is in ``proxy.seen`` (time, method, path, status, Authorization present).
A threaded server, not asyncio: a test's own event loop (the copy engine's) stays the only one.
"""

from __future__ import annotations

import contextlib
import re
import socket
import struct
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from io import BufferedReader
from typing import IO
from urllib.parse import urlsplit

_PIECE = 64 * 1024
_HEAD_LIMIT = 64 * 1024
# Hop-by-hop headers (RFC 9110 7.6.1): they describe one connection, so the proxy sets its own.
_HOP_BY_HOP = frozenset({
    "connection", "keep-alive", "proxy-connection", "transfer-encoding", "te", "trailer",
    "upgrade", "proxy-authorization", "proxy-authenticate",
})
_UPSTREAM_TIMEOUT_S = 60.0


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


Action = (Status | Refuse | CutRequest | CutResponse | Stall | Delay | FlipBytes | WrongDigest
          | Redirect | DropLocation | TooManyRequests)


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
class Seen:
    """One request the proxy received. ``time`` is ``time.monotonic()`` at arrival.

    ``status`` is the status line the client was sent (set before it is sent, so a client that
    has its answer sees it here); None when no answer began: refused, stalled, or cut while the
    request was still arriving. A response cut part-way keeps its status.
    """

    time: float
    method: str
    path: str
    query: str
    authorization: bool
    status: int | None = None
    fault: str | None = None  # the action's class name, when a rule fired
    # time.monotonic() when the proxy closed the connection; may lag the client's own view.
    done: float | None = None


class _Cut(Exception):
    """A scripted reset: the handler stops and closes everything."""


# -- the proxy ------------------------------------------------------------------------------------
class FaultProxy:
    """A reverse proxy on a free loopback port in front of ``upstream`` (``http://host:port``)."""

    def __init__(self, upstream: str) -> None:
        parts = urlsplit(upstream if "://" in upstream else f"http://{upstream}")
        if parts.scheme != "http" or parts.hostname is None or parts.port is None:
            raise ValueError(f"upstream must be http://host:port, not {upstream!r}")
        self.upstream_url = f"http://{parts.hostname}:{parts.port}"
        self._upstream_addr = (parts.hostname, parts.port)
        self._lock = threading.Lock()
        self._rules: list[Rule] = []
        self._seen: list[Seen] = []
        self._open: set[socket.socket] = set()
        self._stopping = threading.Event()
        self._release = threading.Event()  # set by clear(): ends the stalls under way
        self._listener: socket.socket | None = None
        self._accepting: threading.Thread | None = None
        self._port: int | None = None

    # -- lifecycle --------------------------------------------------------------------------------
    @property
    def host(self) -> str:
        """``127.0.0.1:PORT``: what a reference names as its registry."""
        if self._port is None:
            raise RuntimeError("the proxy is not started")
        return f"127.0.0.1:{self._port}"

    @property
    def url(self) -> str:
        return f"http://{self.host}"

    def start(self) -> FaultProxy:
        """Listen on a free port (the same one again after ``stop_listening()``)."""
        if self._listener is not None:
            return self
        self._stopping.clear()
        if self._release.is_set():
            self._release = threading.Event()
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self._port or 0))
        listener.listen(128)
        # accept() wakes up this often to notice stop(): closing a socket from another thread
        # does not reliably interrupt a blocking accept().
        listener.settimeout(0.05)
        self._port = listener.getsockname()[1]
        self._listener = listener
        self._accepting = threading.Thread(
            target=self._accept_loop, args=(listener,), name=f"fault-proxy-{self._port}",
            daemon=True)
        self._accepting.start()
        return self

    def stop_listening(self) -> None:
        """Close the listening socket: new connections are refused (ECONNREFUSED) until
        ``start()`` listens again on the same port. Connections under way continue."""
        listener, self._listener = self._listener, None
        thread, self._accepting = self._accepting, None
        if listener is not None:
            listener.close()
        if thread is not None:
            thread.join()

    def stop(self) -> None:
        """Stop listening and cut every connection under way."""
        self._stopping.set()
        self._release.set()
        self.stop_listening()
        with self._lock:
            sockets = list(self._open)
        for sock in sockets:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)

    def __enter__(self) -> FaultProxy:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- script and record ------------------------------------------------------------------------
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

    @property
    def seen(self) -> list[Seen]:
        """A snapshot of every request received so far, in order of arrival."""
        with self._lock:
            return sorted(self._seen, key=lambda s: s.time)

    def requests(
        self, method: str | None = None, path: str = "", *, status: int | None = None,
        fault: str | None = None,
    ) -> list[Seen]:
        """The requests seen with this method (None: any), path regex, status and fault name
        (None: any)."""
        return [s for s in self.seen
                if (method is None or s.method == method.upper())
                and re.search(path, s.path) is not None
                and (status is None or s.status == status)
                and (fault is None or s.fault == fault)]

    def count(
        self, method: str | None = None, path: str = "", *, status: int | None = None,
        fault: str | None = None,
    ) -> int:
        """How many requests ``requests(...)`` would return."""
        return len(self.requests(method, path, status=status, fault=fault))

    def wait_for(self, condition: Callable[[], bool], timeout: float = 10.0) -> None:
        """Poll ``condition`` (say, on ``count()``) until true; TimeoutError after ``timeout``."""
        deadline = time.monotonic() + timeout
        while not condition():
            if time.monotonic() > deadline:
                raise TimeoutError(f"condition not met within {timeout}s")
            time.sleep(0.01)

    def reset_seen(self) -> None:
        with self._lock:
            self._seen.clear()

    # -- serving ----------------------------------------------------------------------------------
    def _accept_loop(self, listener: socket.socket) -> None:
        while not self._stopping.is_set():
            try:
                client, _ = listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return  # closed by stop_listening()
            client.settimeout(None)
            with self._lock:
                self._open.add(client)
            threading.Thread(target=self._serve, args=(client,), daemon=True).start()

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

    def _serve(self, client: socket.socket) -> None:
        upstream: socket.socket | None = None
        client_in = client.makefile("rb")
        record: Seen | None = None
        try:
            head = _read_head(client_in)
            if head is None:
                return
            request_line, headers = head
            method, target, _ = request_line.split(" ", 2)
            path, _, query = target.partition("?")
            record = Seen(time.monotonic(), method.upper(), path, query,
                          authorization=_get(headers, "authorization") is not None)
            with self._lock:
                self._seen.append(record)
                release = self._release
            rule, hit = self._match(method, path, query, record.time)
            action = rule.action if rule is not None else None
            if action is not None:
                record.fault = type(action).__name__
            if isinstance(action, Refuse):
                raise _Cut
            if isinstance(action, Stall):
                release.wait(action.seconds)
                return
            if isinstance(action, Delay):
                release.wait(action.seconds)
            if isinstance(action, TooManyRequests):
                told = hit == 1 and action.retry_after is not None
                action = Status(429, {"Retry-After": action.retry_after or ""} if told else {},
                                b'{"errors":[{"code":"TOOMANYREQUESTS","message":"slow down"}]}')
            if isinstance(action, Status | Redirect):
                for _ in _body(client_in, headers, is_response=False):
                    pass  # read, so the client sees our answer rather than a failed write
                _answer(client, action, target, record)
                return
            upstream = socket.create_connection(self._upstream_addr, timeout=_UPSTREAM_TIMEOUT_S)
            with self._lock:
                self._open.add(upstream)
            self._forward(client, client_in, upstream, method, target, headers, action, record)
        except (_Cut, OSError, ValueError):
            _reset(client)
            if upstream is not None:
                _reset(upstream)
        finally:
            if record is not None:
                record.done = time.monotonic()
            with contextlib.suppress(OSError):
                client_in.close()
            for sock in (client, upstream):
                if sock is not None:
                    with contextlib.suppress(OSError):
                        sock.close()
                    with self._lock:
                        self._open.discard(sock)

    def _forward(
        self, client: socket.socket, client_in: BufferedReader, upstream: socket.socket,
        method: str, target: str, headers: list[tuple[str, str]], action: Action | None,
        record: Seen,
    ) -> None:
        """Relay one exchange, applying ``action``; record the status before the client sees it."""
        chunked_request = "chunked" in (_get(headers, "transfer-encoding") or "").lower()
        out = [f"{method} {target} HTTP/1.1", f"Host: {self.upstream_url.removeprefix('http://')}"]
        out += [f"{k}: {v}" for k, v in headers if k.lower() not in _HOP_BY_HOP | {"host"}]
        if chunked_request:
            out.append("Transfer-Encoding: chunked")
        out.append("Connection: close")
        upstream.sendall(("\r\n".join(out) + "\r\n\r\n").encode("latin-1"))
        sent = 0
        for piece in _body(client_in, headers, is_response=False):
            if isinstance(action, CutRequest) and sent + len(piece) >= action.after:
                upstream.sendall(_frame(piece[: action.after - sent], chunked_request))
                raise _Cut
            upstream.sendall(_frame(piece, chunked_request))
            sent += len(piece)
        if chunked_request:
            upstream.sendall(b"0\r\n\r\n")

        upstream_in = upstream.makefile("rb")
        try:
            while True:
                head = _read_head(upstream_in)
                if head is None:
                    raise ValueError("the registry closed without answering")
                status_line, response_headers = head
                status = int(status_line.split(" ", 2)[1])
                if status >= 200 or status == 101:
                    break  # 1xx interim answers are the proxy's to swallow
            record.status = status
            client.sendall(self._response_head(status_line, response_headers, action))
            if method.upper() == "HEAD" or status in (204, 304):
                return
            offset = 0
            for piece in _body(upstream_in, response_headers, is_response=True):
                if isinstance(action, FlipBytes):
                    piece = _flip(piece, offset, action)
                if isinstance(action, CutResponse) and offset + len(piece) >= action.after:
                    client.sendall(piece[: action.after - offset])
                    raise _Cut
                client.sendall(piece)
                offset += len(piece)
        finally:
            upstream_in.close()

    def _response_head(
        self, status_line: str, headers: list[tuple[str, str]], action: Action | None,
    ) -> bytes:
        out = [status_line]
        for name, value in headers:
            lower = name.lower()
            if lower in _HOP_BY_HOP:
                continue  # a chunked body goes out close-delimited: the proxy closes anyway
            if lower == "location" and isinstance(action, DropLocation):
                continue
            if lower == "docker-content-digest" and isinstance(action, WrongDigest):
                continue
            if lower in ("location", "link"):
                value = value.replace(self.upstream_url, self.url)
            out.append(f"{name}: {value}")
        if isinstance(action, WrongDigest):
            out.append(f"Docker-Content-Digest: {action.digest}")
        out.append("Connection: close")
        return ("\r\n".join(out) + "\r\n\r\n").encode("latin-1")


# -- HTTP/1.1 pieces ------------------------------------------------------------------------------
def _read_head(stream: IO[bytes]) -> tuple[str, list[tuple[str, str]]] | None:
    """The start line and headers, or None when the peer closed before sending any."""
    first = stream.readline(_HEAD_LIMIT)
    if not first:
        return None
    headers: list[tuple[str, str]] = []
    total = len(first)
    while True:
        line = stream.readline(_HEAD_LIMIT)
        total += len(line)
        if not line:
            raise ValueError("connection closed inside a message head")
        if total > _HEAD_LIMIT:
            raise ValueError("message head too large")
        if line in (b"\r\n", b"\n"):
            break
        name, _, value = line.decode("latin-1").partition(":")
        headers.append((name.strip(), value.strip()))
    return first.decode("latin-1").rstrip("\r\n"), headers


def _get(headers: list[tuple[str, str]], name: str) -> str | None:
    for key, value in headers:
        if key.lower() == name:
            return value
    return None


def _body(
    stream: BufferedReader, headers: list[tuple[str, str]], *, is_response: bool,
) -> Iterator[bytes]:
    """The message body's bytes (de-chunked) as they arrive."""
    if "chunked" in (_get(headers, "transfer-encoding") or "").lower():
        while True:
            size = int(stream.readline(_HEAD_LIMIT).split(b";")[0].strip() or b"0", 16)
            if size == 0:
                while stream.readline(_HEAD_LIMIT) not in (b"\r\n", b"\n", b""):
                    pass  # trailers: dropped
                return
            yield from _exactly(stream, size)
            stream.readline(_HEAD_LIMIT)
    length = _get(headers, "content-length")
    if length is not None:
        yield from _exactly(stream, int(length))
    elif is_response:  # no framing: the body runs until the registry closes
        while piece := stream.read1(_PIECE):
            yield piece


def _exactly(stream: BufferedReader, size: int) -> Iterator[bytes]:
    left = size
    while left > 0:
        piece = stream.read1(min(left, _PIECE))
        if not piece:
            raise ValueError(f"connection closed {left} bytes before the body's end")
        left -= len(piece)
        yield piece


def _frame(piece: bytes, chunked: bool) -> bytes:
    if not chunked or not piece:
        return piece
    return f"{len(piece):x}\r\n".encode() + piece + b"\r\n"


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
    lines = [f"HTTP/1.1 {status} Fault"]
    lines += [f"{k}: {v}" for k, v in headers.items()]
    lines += [f"Content-Length: {len(body)}", "Connection: close"]
    # Recorded first: a client that has its answer may look at ``seen`` straight away.
    record.status = status
    client.sendall(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body)


def _reset(sock: socket.socket) -> None:
    """Close with RST rather than FIN: the peer sees 'connection reset', as on a real cut."""
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    with contextlib.suppress(OSError):
        sock.close()
