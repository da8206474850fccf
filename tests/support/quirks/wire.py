"""HTTP/1.1 on the wire for the quirk proxy: message heads, framed bodies, replies.

Small and blocking on purpose: one thread per connection, one request per connection.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from io import BufferedReader
from typing import IO

PIECE = 64 * 1024
HEAD_LIMIT = 64 * 1024
# Hop-by-hop headers (RFC 9110 7.6.1) describe one connection: the proxy sets its own.
HOP_BY_HOP = frozenset({
    "connection", "keep-alive", "proxy-connection", "transfer-encoding", "te", "trailer",
    "upgrade", "proxy-authorization", "proxy-authenticate",
})
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
REASONS = {200: "OK", 201: "Created", 202: "Accepted", 204: "No Content", 307: "Temporary Redirect",
           400: "Bad Request", 401: "Unauthorized", 403: "Forbidden", 404: "Not Found",
           405: "Method Not Allowed", 413: "Payload Too Large",
           416: "Requested Range Not Satisfiable", 429: "Too Many Requests"}

Headers = list[tuple[str, str]]


@dataclass
class Reply:
    """An answer the proxy gives itself, without asking the registry."""

    status: int
    headers: Mapping[str, str] = field(default_factory=dict)
    body: bytes = b""

    def encode(self, method: str) -> bytes:
        lines = [f"HTTP/1.1 {self.status} {REASONS.get(self.status, 'Quirk')}"]
        lines += [f"{k}: {v}" for k, v in self.headers.items()]
        lines += [f"Content-Length: {len(self.body)}", "Connection: close"]
        head = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
        return head if method == "HEAD" else head + self.body


def error_reply(status: int, code: str, message: str, *, detail: object = None,
                headers: Mapping[str, str] | None = None) -> Reply:
    """A distribution-style error body: ``{"errors": [{"code", "message", "detail"}]}``."""
    item: dict[str, object] = {"code": code, "message": message}
    if detail is not None:
        item["detail"] = detail
    return Reply(status, {"Content-Type": "application/json; charset=utf-8", **(headers or {})},
                 json.dumps({"errors": [item]}).encode())


def json_reply(status: int, doc: object, content_type: str = "application/json",
               headers: Mapping[str, str] | None = None) -> Reply:
    return Reply(status, {"Content-Type": content_type, **(headers or {})},
                 json.dumps(doc).encode())


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
    if not chunked or not piece:
        return piece
    return f"{len(piece):x}\r\n".encode() + piece + b"\r\n"
