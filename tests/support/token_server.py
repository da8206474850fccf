"""A Docker token-auth server for tests (distribution docs/spec/auth/token.md, jwt.md, oauth.md).

`GET /token` with Basic auth (or none) and `POST /token` form-encoded (grant_type=password or
refresh_token). Tokens are ES256 JWTs whose `x5c` header carries a self-signed certificate; the
registry is given that certificate as its `rootcertbundle`, and distribution 2.8 checks the chain,
`iss` == issuer and `aud` == service. Every request is recorded so tests can count token fetches.
"""

from __future__ import annotations

import base64
import hashlib
import json
import secrets
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

import jwt
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from tests.support.ports import free_port

ALL_ACTIONS: tuple[str, ...] = ("pull", "push", "delete", "*")


@dataclass(frozen=True)
class TokenRequest:
    """One request the token server answered. Never holds a password or a token."""

    method: str
    grant_type: str | None  # None for GET; "password" / "refresh_token" for POST
    service: str | None
    scopes: tuple[str, ...]
    had_authorization: bool
    username: str | None
    offline: bool
    status: int


@dataclass
class _User:
    password: str = field(repr=False)
    actions: frozenset[str]


class TokenServer:
    """A threaded HTTP token server on a free loopback port; `start()` it, `stop()` it."""

    def __init__(
        self,
        *,
        service: str = "fanout-test-registry",
        issuer: str = "fanout-test-issuer",
        expires_in: int = 300,
        users: dict[str, tuple[str, Iterable[str]]] | None = None,
        anonymous_actions: Iterable[str] = (),
    ) -> None:
        self.service = service
        self.issuer = issuer
        # Mutable on purpose: a test lowers it to make tokens expire and exercise refresh.
        self.expires_in = expires_in
        self.anonymous_actions = frozenset(anonymous_actions)
        self._lock = threading.Lock()
        self._users: dict[str, _User] = {}
        for name, (password, actions) in (users or {}).items():
            self.add_user(name, password, actions)
        self._refresh_tokens: dict[str, str] = {}  # refresh token -> username
        self._requests: list[TokenRequest] = []
        self._key = ec.generate_private_key(ec.SECP256R1())
        self._cert = _self_signed_cert(self._key, issuer)
        self._port = free_port()
        self._httpd: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    def __repr__(self) -> str:
        return (
            f"TokenServer(url={self.url!r}, service={self.service!r}, users={sorted(self._users)})"
        )

    # -- configuration -------------------------------------------------------------------------
    def add_user(self, username: str, password: str, actions: Iterable[str] = ALL_ACTIONS) -> None:
        """Let `username` in with `password`; grant at most `actions` ("*" grants any action)."""
        with self._lock:
            self._users[username] = _User(password, frozenset(actions))

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._port}"

    @property
    def realm(self) -> str:
        return f"{self.url}/token"

    @property
    def cert_pem(self) -> bytes:
        """The signing certificate, PEM: the registry's `rootcertbundle`."""
        return self._cert.public_bytes(serialization.Encoding.PEM)

    # -- what happened -------------------------------------------------------------------------
    @property
    def requests(self) -> list[TokenRequest]:
        """A copy of every request answered so far, oldest first."""
        with self._lock:
            return list(self._requests)

    def reset_requests(self) -> None:
        with self._lock:
            self._requests.clear()

    # -- lifecycle -----------------------------------------------------------------------------
    def start(self) -> TokenServer:
        if self._httpd is not None:
            return self
        handler = type("_BoundHandler", (_Handler,), {"server_impl": self})
        self._httpd = ThreadingHTTPServer(("127.0.0.1", self._port), handler)
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, name=f"token-server-{self._port}", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._httpd is None:
            return
        self._httpd.shutdown()
        self._httpd.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self._httpd = None
        self._thread = None

    @property
    def running(self) -> bool:
        return self._httpd is not None

    # -- token issuing -------------------------------------------------------------------------
    def issue(self, subject: str, scopes: Iterable[str]) -> tuple[str, int, str]:
        """Sign a token granting `subject` what it may have of `scopes`.

        Returns (token, expires_in, issued_at).
        """
        now = int(time.time())
        expires_in = self.expires_in
        claims: dict[str, Any] = {
            "iss": self.issuer,
            "sub": subject,
            "aud": self.service,
            "exp": now + expires_in,
            "nbf": now - 1,
            "iat": now,
            "jti": secrets.token_hex(16),
            "access": self._grant(subject, scopes),
        }
        der = self._cert.public_bytes(serialization.Encoding.DER)
        headers = {"x5c": [base64.b64encode(der).decode()], "kid": _libtrust_key_id(self._key)}
        token = jwt.encode(claims, self._key, algorithm="ES256", headers=headers)
        issued_at = datetime.fromtimestamp(now, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        return token, expires_in, issued_at

    def _grant(self, subject: str, scopes: Iterable[str]) -> list[dict[str, Any]]:
        with self._lock:
            user = self._users.get(subject)
        allowed = user.actions if user is not None else self.anonymous_actions
        access: list[dict[str, Any]] = []
        for scope in scopes:
            parsed = _parse_scope(scope)
            if parsed is None:
                continue
            kind, name, wanted = parsed
            granted = [a for a in wanted if "*" in allowed or a in allowed]
            access.append({"type": kind, "name": name, "actions": granted})
        return access

    def _check_password(self, username: str, password: str) -> bool:
        with self._lock:
            user = self._users.get(username)
        return user is not None and secrets.compare_digest(user.password, password)

    def _new_refresh_token(self, username: str) -> str:
        token = secrets.token_urlsafe(32)
        with self._lock:
            self._refresh_tokens[token] = username
        return token

    def _user_for_refresh_token(self, token: str) -> str | None:
        with self._lock:
            return self._refresh_tokens.get(token)

    def _record(self, request: TokenRequest) -> None:
        with self._lock:
            self._requests.append(request)


def _parse_scope(scope: str) -> tuple[str, str, list[str]] | None:
    """`repository:ns/name:pull,push` -> ("repository", "ns/name", ["pull", "push"])."""
    kind, sep, rest = scope.partition(":")
    name, sep2, actions = rest.rpartition(":")
    if not sep or not sep2 or not kind or not name:
        return None
    return kind, name, [a for a in actions.split(",") if a]


def _self_signed_cert(key: ec.EllipticCurvePrivateKey, issuer: str) -> x509.Certificate:
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, issuer)])
    now = datetime.now(UTC)
    return (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(hours=1))
        .not_valid_after(now + timedelta(days=2))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .sign(key, hashes.SHA256())
    )


def _libtrust_key_id(key: ec.EllipticCurvePrivateKey) -> str:
    # libtrust's key id (base32 of the SPKI sha256, 4-char groups): lets the token verify through
    # the registry's `kid` path too, should a registry ignore x5c.
    spki = key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    b32 = base64.b32encode(hashlib.sha256(spki).digest()[:30]).decode()
    return ":".join(b32[i : i + 4] for i in range(0, len(b32), 4))


class _Handler(BaseHTTPRequestHandler):
    server_impl: TokenServer
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:
        # Quiet: the request list is the record, and query strings are not for stderr.
        return

    def do_GET(self) -> None:
        ts = self.server_impl
        url = urlsplit(self.path)
        if url.path != "/token":
            self._send(404, {"error": "not_found"})
            return
        query = parse_qs(url.query)
        scopes = tuple(query.get("scope", []))
        service = _first(query, "service")
        offline = _first(query, "offline_token") == "true"
        username, password, had_auth = self._basic_credentials()

        def record(status: int) -> None:
            ts._record(
                TokenRequest("GET", None, service, scopes, had_auth, username, offline, status)
            )

        if had_auth and (username is None or not ts._check_password(username, password or "")):
            record(401)
            self._send(401, {"errors": [{"code": "UNAUTHORIZED", "message": "bad credentials"}]})
            return
        subject = username or ""
        token, expires_in, issued_at = ts.issue(subject, scopes)
        body: dict[str, Any] = {
            "token": token,
            "access_token": token,
            "expires_in": expires_in,
            "issued_at": issued_at,
        }
        if offline and username is not None:
            body["refresh_token"] = ts._new_refresh_token(username)
        record(200)
        self._send(200, body)

    def do_POST(self) -> None:
        ts = self.server_impl
        if urlsplit(self.path).path != "/token":
            self._send(404, {"error": "not_found"})
            return
        length = int(self.headers.get("Content-Length") or 0)
        form = parse_qs(self.rfile.read(length).decode(), keep_blank_values=True)
        grant_type = _first(form, "grant_type")
        service = _first(form, "service")
        scopes = tuple(s for scope in form.get("scope", []) for s in scope.split(" ") if s)
        offline = _first(form, "access_type") == "offline"
        had_auth = "Authorization" in self.headers
        username: str | None = None

        def record(status: int) -> None:
            ts._record(
                TokenRequest(
                    "POST", grant_type, service, scopes, had_auth, username, offline, status
                )
            )

        if grant_type == "password":
            username = _first(form, "username")
            password = _first(form, "password") or ""
            if username is None or not ts._check_password(username, password):
                record(401)
                self._send(401, {"error": "invalid_grant"})
                return
        elif grant_type == "refresh_token":
            username = ts._user_for_refresh_token(_first(form, "refresh_token") or "")
            if username is None:
                record(401)
                self._send(401, {"error": "invalid_grant"})
                return
            offline = True  # the client already holds a refresh token; hand it back
        else:
            record(400)
            self._send(400, {"error": "unsupported_grant_type"})
            return
        token, expires_in, issued_at = ts.issue(username, scopes)
        body: dict[str, Any] = {
            "access_token": token,
            "expires_in": expires_in,
            "issued_at": issued_at,
        }
        if offline:
            if grant_type == "refresh_token":
                body["refresh_token"] = _first(form, "refresh_token")
            else:
                body["refresh_token"] = ts._new_refresh_token(username)
        record(200)
        self._send(200, body)

    def _basic_credentials(self) -> tuple[str | None, str | None, bool]:
        header = self.headers.get("Authorization")
        if header is None:
            return None, None, False
        scheme, _, value = header.partition(" ")
        if scheme.lower() != "basic":
            return None, None, True
        try:
            decoded = base64.b64decode(value.strip()).decode()
        except ValueError:
            return None, None, True
        username, _, password = decoded.partition(":")
        return username, password, True

    def _send(self, status: int, body: dict[str, Any]) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


def _first(form: dict[str, list[str]], key: str) -> str | None:
    values = form.get(key)
    return values[0] if values else None
