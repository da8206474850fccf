"""HTTP/1.1 on the wire, for the test proxies (``fault_proxy``, ``quirks``): message heads, framed
bodies streamed in pieces, the heads a reverse proxy passes on, and a connection reset.

Small and blocking on purpose: one thread per connection, one request per connection.
"""

from __future__ import annotations

import contextlib
import socket
import struct
from collections.abc import Collection, Iterable, Iterator
from io import BufferedReader
from typing import IO

PIECE = 64 * 1024
HEAD_LIMIT = 64 * 1024
# Hop-by-hop headers (RFC 9110 7.6.1): they describe one connection, so a proxy sets its own.
HOP_BY_HOP = frozenset({
    "connection", "keep-alive", "proxy-connection", "transfer-encoding", "te", "trailer",
    "upgrade", "proxy-authorization", "proxy-authenticate",
})

Headers = list[tuple[str, str]]


def read_head(stream: IO[bytes]) -> tuple[str, Headers] | None:
    """The start line and headers, or None when the peer closed before sending any."""
    first = stream.readline(HEAD_LIMIT)
    if not first:
        return None
    headers: Headers = []
    total = len(first)
    while True:
        line = stream.readline(HEAD_LIMIT)
        total += len(line)
        if not line:
            raise ValueError("connection closed inside a message head")
        if total > HEAD_LIMIT:
            raise ValueError("message head too large")
        if line in (b"\r\n", b"\n"):
            break
        name, _, value = line.decode("latin-1").partition(":")
        headers.append((name.strip(), value.strip()))
    return first.decode("latin-1").rstrip("\r\n"), headers


def read_response_head(stream: IO[bytes]) -> tuple[int, str, Headers]:
    """The final response's status, status line and headers; 1xx interim answers skipped."""
    while True:
        head = read_head(stream)
        if head is None:
            raise ValueError("the registry closed without answering")
        status_line, headers = head
        status = int(status_line.split(" ", 2)[1])
        if status >= 200 or status == 101:
            return status, status_line, headers


def get_header(headers: Headers, name: str) -> str | None:
    name = name.lower()
    for key, value in headers:
        if key.lower() == name:
            return value
    return None


def is_chunked(headers: Headers) -> bool:
    return "chunked" in (get_header(headers, "transfer-encoding") or "").lower()


def body_pieces(stream: BufferedReader, headers: Headers, *, is_response: bool) -> Iterator[bytes]:
    """The message body's bytes (de-chunked) as they arrive, in pieces of at most PIECE."""
    if is_chunked(headers):
        while True:
            size = int(stream.readline(HEAD_LIMIT).split(b";")[0].strip() or b"0", 16)
            if size == 0:
                while stream.readline(HEAD_LIMIT) not in (b"\r\n", b"\n", b""):
                    pass  # trailers: dropped
                return
            yield from _exactly(stream, size)
            stream.readline(HEAD_LIMIT)
    length = get_header(headers, "content-length")
    if length is not None:
        yield from _exactly(stream, int(length))
    elif is_response:  # no framing: the body runs until the registry closes
        while piece := stream.read1(PIECE):
            yield piece


def _exactly(stream: BufferedReader, size: int) -> Iterator[bytes]:
    left = size
    while left > 0:
        piece = stream.read1(min(left, PIECE))
        if not piece:
            raise ValueError(f"connection closed {left} bytes before the body's end")
        left -= len(piece)
        yield piece


def frame(piece: bytes, chunked: bool) -> bytes:
    """``piece`` as it goes out: as a chunk of a chunked body, or as it is."""
    if not chunked or not piece:
        return piece
    return f"{len(piece):x}\r\n".encode() + piece + b"\r\n"


def _head(lines: list[str]) -> bytes:
    return ("\r\n".join([*lines, "Connection: close"]) + "\r\n\r\n").encode("latin-1")


def forwarded_request_head(method: str, target: str, host: str, headers: Headers, *,
                           drop: Collection[str] = (), extra: Iterable[str] = ()) -> bytes:
    """A request head as a proxy passes it on to ``host``: hop-by-hop, ``Host`` and ``drop``
    (lower case) headers out, ``extra`` lines in, one request per connection."""
    dropped = HOP_BY_HOP | {"host", *drop}
    return _head([f"{method} {target} HTTP/1.1", f"Host: {host}",
                  *(f"{k}: {v}" for k, v in headers if k.lower() not in dropped), *extra])


def relayed_response_head(status_line: str, headers: Headers, *, upstream_url: str, url: str,
                          drop: Collection[str] = (), extra: Iterable[str] = ()) -> bytes:
    """A response head as a proxy passes it on: hop-by-hop and ``drop`` (lower case) headers
    out (a chunked body goes out close-delimited: the proxy closes anyway), ``Location`` and
    ``Link`` naming ``upstream_url`` rewritten to name ``url``, ``extra`` lines in."""
    lines = [status_line]
    for name, value in headers:
        lower = name.lower()
        if lower in HOP_BY_HOP or lower in drop:
            continue
        if lower in ("location", "link"):
            value = value.replace(upstream_url, url)
        lines.append(f"{name}: {value}")
    return _head([*lines, *extra])


def answer(status_line: str, headers: Iterable[tuple[str, str]], body: bytes, *,
           head_only: bool = False) -> bytes:
    """A whole answer a proxy gives itself; ``head_only`` (a HEAD request) leaves out the body
    but not its length."""
    head = _head([status_line, *(f"{k}: {v}" for k, v in headers),
                  f"Content-Length: {len(body)}"])
    return head if head_only else head + body


def reset(sock: socket.socket) -> None:
    """Close with RST rather than FIN: the peer sees 'connection reset', as on a real cut."""
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    with contextlib.suppress(OSError):
        sock.close()
