"""The shared TLS context: create_default_context's settings; its trust read when a server
answers a handshake (never for one that answers plain HTTP), then verifying as usual; a
--ca-bundle read at once."""

from __future__ import annotations

import socket
import ssl
from pathlib import Path

import certifi
import pytest

from registry.options import TransportOptions
from registry.tls import TrustOnFirstUse, tls_context
from tests.support.registries import write_tls_files

SETTINGS = ("protocol", "options", "verify_flags", "verify_mode", "check_hostname",
            "minimum_version", "maximum_version", "post_handshake_auth",
            "hostname_checks_common_name", "security_level")


@pytest.fixture(scope="module")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    """(ca, cert, key): a private CA and a certificate for 127.0.0.1 it signed."""
    return write_tls_files(tmp_path_factory.mktemp("tls"))


def _handshake(client: ssl.SSLContext, tls_files: tuple[Path, Path, Path]) -> None:
    """A whole handshake over memory buffers, as anyio and asyncio drive one."""
    _, cert, key = tls_files
    server_context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_context.load_cert_chain(cert, key)
    to_server, to_client = ssl.MemoryBIO(), ssl.MemoryBIO()
    ours = client.wrap_bio(to_client, to_server, server_hostname="127.0.0.1")
    theirs = server_context.wrap_bio(to_server, to_client, server_side=True)
    for _ in range(10):
        done = 0
        for side in (ours, theirs):
            try:
                side.do_handshake()
                done += 1
            except ssl.SSLWantReadError:
                pass
        if done == 2:
            return
    raise AssertionError("the handshake did not finish")


def test_the_settings_are_create_default_contexts() -> None:
    # Were a Python to harden create_default_context (3.13 adds verify flags), this fails
    # rather than the lazy context verifying less than httpx's would.
    lazy, eager = TrustOnFirstUse.create(), ssl.create_default_context(cafile=certifi.where())
    assert {name: getattr(lazy, name) for name in SETTINGS} == {
        name: getattr(eager, name) for name in SETTINGS}


def test_the_trust_is_read_when_a_server_answers_and_then_verifies(
    tls_files: tuple[Path, Path, Path],
) -> None:
    ca, _, _ = tls_files
    context = TrustOnFirstUse.create(cafile=str(ca))
    tls = context.wrap_bio(ssl.MemoryBIO(), ssl.MemoryBIO(), server_hostname="127.0.0.1")
    with pytest.raises(ssl.SSLWantReadError):
        tls.do_handshake()  # the ClientHello needs no trust
    assert context.cert_store_stats()["x509_ca"] == 0 and not context.trust_loaded

    _handshake(context, tls_files)
    assert context.trust_loaded and context.cert_store_stats()["x509_ca"] == 1
    _handshake(context, tls_files)
    assert context.cert_store_stats()["x509_ca"] == 1  # read once, not added again


def test_verification_is_not_skipped(tls_files: tuple[Path, Path, Path]) -> None:
    context = TrustOnFirstUse.create()  # certifi's: the private CA is not in it
    with pytest.raises(ssl.SSLCertVerificationError):
        _handshake(context, tls_files)
    assert context.trust_loaded


def test_a_plain_http_answer_reads_nothing() -> None:
    # The probe's HTTPS ping of a plain-HTTP registry: refused before any certificate.
    context = TrustOnFirstUse.create()
    incoming = ssl.MemoryBIO()
    tls = context.wrap_bio(incoming, ssl.MemoryBIO(), server_hostname="127.0.0.1")
    with pytest.raises(ssl.SSLWantReadError):
        tls.do_handshake()
    # As anyio feeds it: the bytes received, then the handshake goes on (an end of stream
    # would come with a later read).
    incoming.write(b"HTTP/1.1 400 Bad Request\r\n\r\nClient sent an HTTP request to an HTTPS "
                   b"server.")
    with pytest.raises(ssl.SSLError, match=r"WRONG_VERSION_NUMBER|wrong version number"):
        tls.do_handshake()
    assert not context.trust_loaded


def test_a_blocking_socket_reads_it_first() -> None:
    context = TrustOnFirstUse.create()
    with socket.socket() as sock:
        context.wrap_socket(sock, server_hostname="registry.example",
                            do_handshake_on_connect=False)
    assert context.trust_loaded


def test_httpx_default_trust_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SSL_CERT_DIR", raising=False)
    monkeypatch.setenv("SSL_CERT_FILE", certifi.where())
    context = tls_context(TransportOptions())
    assert isinstance(context, TrustOnFirstUse) and not context.trust_loaded
    context.load_trust()
    assert context.cert_store_stats() == ssl.create_default_context(
        cafile=certifi.where()).cert_store_stats()

    monkeypatch.delenv("SSL_CERT_FILE")
    assert isinstance(tls_context(TransportOptions()), TrustOnFirstUse)


def test_a_ca_bundle_is_read_at_once(tmp_path: Path) -> None:
    context = tls_context(TransportOptions(ca_bundle=certifi.where()))
    assert context.cert_store_stats()["x509_ca"] > 0
    with pytest.raises(FileNotFoundError):  # not later, as a connection error retried
        tls_context(TransportOptions(ca_bundle=str(tmp_path / "missing.pem")))
