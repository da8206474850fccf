"""The TLS context registry hosts share: verification always on, trust read when first needed.

Reading a CA bundle (certifi's, or the system's named by ``SSL_CERT_FILE``) costs 15-50 ms of
CPU, a tenth of a ``fanout copy`` that finds nothing to do; a copy between plain-HTTP registries
(loopback, a lab) never verifies a certificate. So the default context is made at once, which is
cheap, and reads its bundle just before it is needed: when a server answers a TLS handshake.

An HTTPS ping of a plain-HTTP registry (the probe asks loopback hosts both ways at once,
:mod:`registry.probe`) is answered ``HTTP/1.1 400``, not with a TLS record: the handshake fails
before any certificate is seen, and nothing is read. A process keeps one context (a worker
builds it at start-up), so the bundle is read once.
"""

from __future__ import annotations

import os
import ssl
import sys
import threading

from .options import TransportOptions

# The first byte of a TLS handshake record (RFC 8446 §5.1): a ServerHello starts with it.
_HANDSHAKE_RECORD = b"\x16"


def tls_context(options: TransportOptions) -> ssl.SSLContext:
    """Verification always on: ``options.ca_bundle`` when given, else what httpx trusts by
    default (``SSL_CERT_FILE`` or ``SSL_CERT_DIR`` when set, else certifi's bundle)."""
    if options.ca_bundle:
        # The user's own file is read now: a missing or malformed one fails at once and
        # plainly, not as a connection error (retried) at the first handshake.
        return ssl.create_default_context(cafile=options.ca_bundle)
    # httpx.create_ssl_context()'s choice, made without reading anything yet.
    if os.environ.get("SSL_CERT_FILE"):
        return TrustOnFirstUse.create(cafile=os.environ["SSL_CERT_FILE"])
    if os.environ.get("SSL_CERT_DIR"):
        return TrustOnFirstUse.create(capath=os.environ["SSL_CERT_DIR"])
    return TrustOnFirstUse.create()


class _ReadsTrustWhenAnswered(ssl.SSLObject):
    """A client TLS connection over memory buffers (how asyncio and anyio speak TLS) that has
    its context read the trust store just before the server's first bytes are handshaken, if
    they are a TLS handshake record: certificates are verified only while those are processed.
    """

    _lazy_context: TrustOnFirstUse
    _unseen: ssl.MemoryBIO | None  # until the server's first bytes have been looked at

    def do_handshake(self) -> None:
        incoming = self._unseen
        if incoming is not None and (incoming.pending or incoming.eof):
            self._unseen = None
            if _answered_with_tls(incoming):
                self._lazy_context.load_trust()
        super().do_handshake()


def _answered_with_tls(incoming: ssl.MemoryBIO) -> bool:
    """Whether the bytes the server sent first begin a TLS handshake record; True when they
    cannot be looked at without losing them (more was read than verified is all it costs)."""
    if not incoming.pending:
        return False  # closed without a word: the handshake fails, nothing to verify
    try:
        incoming.write(b"")  # raises once write_eof() was called: then no putting back
    except ssl.SSLError:
        return True
    # A memory BIO cannot be peeked: read all of it and put it back, in the same order.
    data = incoming.read()
    incoming.write(data)
    return data[:1] == _HANDSHAKE_RECORD


class TrustOnFirstUse(ssl.SSLContext):
    """``ssl.create_default_context(cafile=..., capath=...)`` that reads its CA certificates
    when a server first answers a handshake rather than when made; neither given: certifi's.

    tests/registry/test_tls.py holds its settings to ``create_default_context``'s, so a Python
    that changes those (3.13 adds verify flags) fails there rather than verifying less here.
    """

    sslobject_class = _ReadsTrustWhenAnswered
    _cafile: str | None
    _capath: str | None
    _loaded: bool
    _loading: threading.Lock

    @classmethod
    def create(cls, *, cafile: str | None = None, capath: str | None = None) -> TrustOnFirstUse:
        context = cls(ssl.PROTOCOL_TLS_CLIENT)
        context.verify_mode = ssl.CERT_REQUIRED
        context.check_hostname = True
        # As create_default_context does: a key log for Wireshark when asked for.
        keylog = os.environ.get("SSLKEYLOGFILE")
        if keylog and not sys.flags.ignore_environment:
            context.keylog_filename = keylog
        context._cafile, context._capath = cafile, capath
        context._loaded = False
        context._loading = threading.Lock()
        return context

    @property
    def trust_loaded(self) -> bool:
        return self._loaded

    def load_trust(self) -> None:
        """Read the CA certificates now, if not yet (thread-safe: a worker's threads share one)."""
        if self._loaded:
            return
        with self._loading:
            if self._loaded:
                return
            cafile, capath = self._cafile, self._capath
            if cafile is None and capath is None:
                import certifi  # httpx's own dependency, and its default trust

                cafile = certifi.where()
            self.load_verify_locations(cafile=cafile, capath=capath)
            self._loaded = True

    def wrap_bio(
        self, incoming: ssl.MemoryBIO, outgoing: ssl.MemoryBIO, server_side: bool = False,
        server_hostname: str | bytes | None = None, session: ssl.SSLSession | None = None,
    ) -> ssl.SSLObject:
        if server_side:
            self.load_trust()  # not how fanout uses it: no cleverness there
        tls = super().wrap_bio(incoming, outgoing, server_side=server_side,
                               server_hostname=server_hostname, session=session)
        if isinstance(tls, _ReadsTrustWhenAnswered):
            tls._lazy_context, tls._unseen = self, None if server_side else incoming
        return tls

    def wrap_socket(self, *args: object, **kwargs: object) -> ssl.SSLSocket:
        # A blocking socket's handshake cannot be watched: read the trust first.
        self.load_trust()
        return super().wrap_socket(*args, **kwargs)  # type: ignore[arg-type]
