"""What the test proxies (``fault_proxy.FaultProxy``, ``quirks.QuirkProxy``) share: a reverse
proxy on a free loopback port in front of a registry, a thread per client connection (one request
each), the connections under way cut by ``stop()``, and the log of requests seen.

Threaded, not asyncio: a test's own event loop (the copy engine's) stays the only one. A subclass
answers one request in ``_handle``; raising :class:`Cut`, ``OSError`` or ``ValueError`` there
resets the client's connection (and the registry's, if one was opened).
"""

from __future__ import annotations

import contextlib
import re
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from io import BufferedReader
from typing import Generic, Self, TypeVar
from urllib.parse import urlsplit

from .http_wire import Headers, read_head, reset

_UPSTREAM_TIMEOUT_S = 60.0
_TLS_HANDSHAKE = b"\x16"  # a TLS record's content type: handshake


@dataclass
class Seen:
    """One request a proxy received. ``time`` is ``time.monotonic()`` at arrival.

    ``status`` is the status the client was sent (set before it is sent, so a client that has
    its answer sees it here); None when no answer began. ``done`` is ``time.monotonic()`` when
    the proxy closed the connection; it may lag the client's own view.
    """

    time: float
    method: str
    path: str
    query: str
    authorization: bool
    status: int | None = None
    done: float | None = None


S = TypeVar("S", bound=Seen)


class Cut(Exception):
    """A scripted reset: the handler stops and the connections are reset."""


@dataclass
class Connection:
    """One client connection being served: its reader, the registry's socket once opened, and
    the request's record once made."""

    client: socket.socket
    reader: BufferedReader
    upstream: socket.socket | None = None
    record: Seen | None = None


class LoopbackProxy(Generic[S]):
    """A reverse proxy on a free loopback port in front of ``upstream`` (``http://host:port``).

    ``reset_tls``: reset a connection that opens with a TLS handshake at once. A client that
    tries HTTPS first and falls back to HTTP only after its handshake times out (skopeo: Go's
    10 s) needs it; fanout tries both at once and sees a stalled handshake as a fault proxies
    inject on purpose, so it is off unless asked for.
    """

    reset_tls = False

    def __init__(self, upstream: str) -> None:
        parts = urlsplit(upstream if "://" in upstream else f"http://{upstream}")
        if parts.scheme != "http" or parts.hostname is None or parts.port is None:
            raise ValueError(f"upstream must be http://host:port, not {upstream!r}")
        self.upstream_url = f"http://{parts.hostname}:{parts.port}"
        self._upstream_addr = (parts.hostname, parts.port)
        self._lock = threading.Lock()
        self._seen: list[S] = []
        self._open: set[socket.socket] = set()
        self._stopping = threading.Event()
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

    @property
    def upstream_host(self) -> str:
        return self.upstream_url.removeprefix("http://")

    def start(self) -> Self:
        """Listen on a free port (the same one again after ``stop_listening()``)."""
        if self._listener is not None:
            return self
        self._stopping.clear()
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
            target=self._accept_loop, args=(listener,),
            name=f"{type(self).__name__}-{self._port}", daemon=True)
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
        self.stop_listening()
        with self._lock:
            sockets = list(self._open)
        for sock in sockets:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- the log ----------------------------------------------------------------------------------
    @property
    def seen(self) -> list[S]:
        """A snapshot of every request received so far, in order of arrival."""
        with self._lock:
            return sorted(self._seen, key=lambda s: s.time)

    def requests(self, method: str | None = None, path: str = "", *, status: int | None = None,
                 query: str = "", **fields: object) -> list[S]:
        """The requests seen with this method (None: any), path and query regexes (searched),
        status, and other fields of the record (``fault=``, ``quirk=``; None: any)."""
        return [s for s in self.seen
                if (method is None or s.method == method.upper())
                and re.search(path, s.path) is not None and re.search(query, s.query) is not None
                and (status is None or s.status == status)
                and all(want is None or getattr(s, name) == want
                        for name, want in fields.items())]

    def count(self, method: str | None = None, path: str = "", *, status: int | None = None,
              query: str = "", **fields: object) -> int:
        """How many requests ``requests(...)`` would return."""
        return len(self.requests(method, path, status=status, query=query, **fields))

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

    def _serve(self, client: socket.socket) -> None:
        conn = Connection(client, client.makefile("rb"))
        try:
            # A TLS ClientHello (a client trying HTTPS first, as skopeo does) has no line end
            # to read up to: reset it at once, or the client waits out its handshake timeout
            # (Go: 10 s) before it falls back to HTTP, on every connection.
            if self.reset_tls and conn.reader.peek(1)[:1] == _TLS_HANDSHAKE:
                raise ValueError("a TLS handshake, not an HTTP request")
            head = read_head(conn.reader)
            if head is not None:
                self._handle(conn, *head)
        except (Cut, OSError, ValueError):
            reset(client)
            if conn.upstream is not None:
                reset(conn.upstream)
        finally:
            if conn.record is not None:
                conn.record.done = time.monotonic()
            with contextlib.suppress(OSError):
                conn.reader.close()
            for sock in (client, conn.upstream):
                if sock is not None:
                    with contextlib.suppress(OSError):
                        sock.close()
                    with self._lock:
                        self._open.discard(sock)

    def _handle(self, conn: Connection, start_line: str, headers: Headers) -> None:
        """Answer the request whose head is ``start_line`` and ``headers``."""
        raise NotImplementedError

    def _connect_upstream(self, conn: Connection) -> socket.socket:
        """A connection to the registry, cut by ``stop()`` like the client's."""
        upstream = socket.create_connection(self._upstream_addr, timeout=_UPSTREAM_TIMEOUT_S)
        conn.upstream = upstream
        with self._lock:
            self._open.add(upstream)
        return upstream
