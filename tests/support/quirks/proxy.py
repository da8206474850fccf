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
connection, answered with ``Connection: close``. Threaded, like ``fault_proxy.FaultProxy``, so a
test's own event loop stays the only one.

The proxy tracks every upload's offset itself (it sees each PATCH and what the registry
accepted), for the rules that need it. Everything it answered is in ``seen``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import re
import socket
import struct
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from .exchange import API_PATH, BUFFER_LIMIT, Behaviour, Exchange, Seen, Upstream
from .wire import (
    HOP_BY_HOP,
    METHODS,
    REASONS,
    body_pieces,
    frame,
    get_header,
    is_chunked,
    read_head,
)

if TYPE_CHECKING:
    from tests.support.registries import RegistryServer

_UPSTREAM_TIMEOUT_S = 60.0


class QuirkProxy:
    """A profile's registry on a free loopback port, in front of ``upstream`` (http://host:port).

    ``profile`` is a :class:`~tests.support.quirks.profiles.Profile` or a plain list of
    behaviours (a custom registry).
    """

    def __init__(self, upstream: str, profile: Any) -> None:
        parts = urlsplit(upstream if "://" in upstream else f"http://{upstream}")
        if parts.scheme != "http" or parts.hostname is None or parts.port is None:
            raise ValueError(f"upstream must be http://host:port, not {upstream!r}")
        self.upstream_url = f"http://{parts.hostname}:{parts.port}"
        self._upstream_addr = (parts.hostname, parts.port)
        self.profile = profile
        self.behaviours: list[Behaviour] = list(getattr(profile, "behaviours", profile))
        self._lock = threading.Lock()
        self._seen: list[Seen] = []
        self._offsets: dict[str, int] = {}
        self._open: set[socket.socket] = set()
        self._stopping = threading.Event()
        self._listener: socket.socket | None = None
        self._accepting: threading.Thread | None = None
        self._port: int | None = None
        self.started_at = time.monotonic()

    # -- lifecycle ------------------------------------------------------------------------------
    @property
    def host(self) -> str:
        if self._port is None:
            raise RuntimeError("the proxy is not started")
        return f"127.0.0.1:{self._port}"

    @property
    def url(self) -> str:
        return f"http://{self.host}"

    def start(self) -> QuirkProxy:
        if self._listener is not None:
            return self
        self._stopping.clear()
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self._port or 0))
        listener.listen(128)
        listener.settimeout(0.05)  # accept() wakes to notice stop()
        self._port = listener.getsockname()[1]
        self._listener = listener
        self._accepting = threading.Thread(target=self._accept_loop, args=(listener,),
                                           name=f"quirk-proxy-{self._port}", daemon=True)
        self._accepting.start()
        return self

    def stop(self) -> None:
        """Stop listening and cut every connection under way."""
        self._stopping.set()
        listener, self._listener = self._listener, None
        thread, self._accepting = self._accepting, None
        if listener is not None:
            listener.close()
        if thread is not None:
            thread.join()
        with self._lock:
            sockets = list(self._open)
        for sock in sockets:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)

    def __enter__(self) -> QuirkProxy:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

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

    @property
    def seen(self) -> list[Seen]:
        with self._lock:
            return sorted(self._seen, key=lambda s: s.time)

    def requests(self, method: str | None = None, path: str = "", *, status: int | None = None,
                 quirk: str | None = None, query: str = "") -> list[Seen]:
        """Requests seen with this method (None: any), path and query regexes, final status and
        quirk name (None: any)."""
        return [s for s in self.seen
                if (method is None or s.method == method.upper())
                and re.search(path, s.path) is not None and re.search(query, s.query) is not None
                and (status is None or s.status == status)
                and (quirk is None or s.quirk == quirk)]

    def count(self, method: str | None = None, path: str = "", *, status: int | None = None,
              quirk: str | None = None, query: str = "") -> int:
        return len(self.requests(method, path, status=status, quirk=quirk, query=query))

    def reset_seen(self) -> None:
        with self._lock:
            self._seen.clear()

    def wait_for(self, condition: Callable[[], bool], timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        while not condition():
            if time.monotonic() > deadline:
                raise TimeoutError(f"condition not met within {timeout}s")
            time.sleep(0.01)

    def log(self, last: int = 60, path: str = "") -> str:
        """The last requests, a line each: what a failure message should show."""
        seen = [s for s in self.seen if re.search(path, s.path)]
        name = getattr(self.profile, "name", "custom")
        lines = [s.line(self.started_at) for s in seen[-last:]]
        skipped = f" (last {last} of {len(seen)})" if len(seen) > last else ""
        return f"{name} proxy {self.host}{skipped}:\n  " + "\n  ".join(lines)

    def upload_offset(self, upload_id: str) -> int:
        """Bytes the registry has accepted so far for this upload (as the proxy saw them)."""
        with self._lock:
            return self._offsets.get(upload_id, 0)

    # -- serving --------------------------------------------------------------------------------
    def _accept_loop(self, listener: socket.socket) -> None:
        while not self._stopping.is_set():
            try:
                client, _ = listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            client.settimeout(None)
            with self._lock:
                self._open.add(client)
            threading.Thread(target=self._serve, args=(client,), daemon=True).start()

    def _serve(self, client: socket.socket) -> None:
        upstream: socket.socket | None = None
        client_in = client.makefile("rb")
        record: Seen | None = None
        try:
            head = read_head(client_in)
            if head is None:
                return
            start_line, headers = head
            parts = start_line.split(" ")
            # A TLS hello (the engine tries HTTPS first) or other noise: not a request.
            if len(parts) != 3 or parts[0].upper() not in METHODS or not parts[1].startswith("/"):
                raise ValueError("not an HTTP request")
            method, target = parts[0].upper(), parts[1]
            path, _, query = target.partition("?")
            length_text = get_header(headers, "content-length")
            record = Seen(time.monotonic(), method, path, query,
                          authorization=get_header(headers, "authorization") is not None,
                          length=int(length_text) if length_text and length_text.isdigit()
                          else None)
            with self._lock:
                self._seen.append(record)
            ex = Exchange(self, method, path, query, headers, record, client_in)
            if (ex.length is not None and ex.length <= BUFFER_LIMIT
                    and any(b.wants_body(ex) for b in self.behaviours)):
                ex.read_body()
            for behaviour in self.behaviours:
                reply = behaviour.on_request(ex)
                if reply is not None:
                    record.quirk = behaviour.name
                    ex.drain()
                    record.status = reply.status
                    client.sendall(reply.encode(method))
                    return
            upstream = socket.create_connection(self._upstream_addr, timeout=_UPSTREAM_TIMEOUT_S)
            with self._lock:
                self._open.add(upstream)
            self._forward(client, ex, upstream)
        except (OSError, ValueError):
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

    def _forward(self, client: socket.socket, ex: Exchange, upstream: socket.socket) -> None:
        chunked = is_chunked(ex.headers) and ex.body is None
        target = f"{ex.path}?{ex.query}" if ex.query else ex.path
        out = [f"{ex.method} {target} HTTP/1.1",
               f"Host: {self.upstream_url.removeprefix('http://')}"]
        # The proxy did the auth: the anonymous registry behind never sees credentials.
        dropped = HOP_BY_HOP | {"host", "authorization", "content-length"}
        out += [f"{k}: {v}" for k, v in ex.headers if k.lower() not in dropped]
        if chunked:
            out.append("Transfer-Encoding: chunked")
        elif ex.body is not None:
            out.append(f"Content-Length: {len(ex.body)}")
        elif ex.length is not None:
            out.append(f"Content-Length: {ex.length}")
        out.append("Connection: close")
        upstream.sendall(("\r\n".join(out) + "\r\n\r\n").encode("latin-1"))
        started = time.monotonic()
        for piece in ex.pieces():
            upstream.sendall(frame(piece, chunked))
            ex.forwarded += len(piece)
            if ex.throttle:
                ahead = ex.forwarded / ex.throttle - (time.monotonic() - started)
                if ahead > 0:
                    time.sleep(ahead)
        if chunked:
            upstream.sendall(b"0\r\n\r\n")

        upstream_in = upstream.makefile("rb")
        try:
            while True:
                head = read_head(upstream_in)
                if head is None:
                    raise ValueError("the registry closed without answering")
                status_line, response_headers = head
                status = int(status_line.split(" ", 2)[1])
                if status >= 200 or status == 101:
                    break
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
            client.sendall(self._response_head(up))
            if ex.method == "HEAD" or up.status in (204, 304):
                return
            for piece in body_pieces(upstream_in, response_headers, is_response=True):
                client.sendall(piece)
        finally:
            upstream_in.close()

    def _response_head(self, up: Upstream) -> bytes:
        out = [f"HTTP/1.1 {up.status} {REASONS.get(up.status, 'Quirk')}"]
        for name, value in up.headers:
            lower = name.lower()
            if lower in HOP_BY_HOP:
                continue  # a chunked body goes out close-delimited: the proxy closes anyway
            if lower in ("location", "link"):
                value = value.replace(self.upstream_url, self.url)
            out.append(f"{name}: {value}")
        out.append("Connection: close")
        return ("\r\n".join(out) + "\r\n\r\n").encode("latin-1")

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


def _reset(sock: socket.socket) -> None:
    """Close with RST rather than FIN: the peer sees 'connection reset'."""
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    with contextlib.suppress(OSError):
        sock.close()
