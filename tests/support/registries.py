"""Real registries for tests: Debian's `docker-registry` (distribution 2.8.2) on loopback ports.

Each registry gets its own directory holding its storage, config and log, so it can be stopped and
started again on the same port with the same content (tests take a destination down and bring it
back). Anonymous, htpasswd (bcrypt) and token auth are supported.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import ssl
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import httpx

from tests.support.ports import free_port
from tests.support.token_server import TokenServer

READY_TIMEOUT_S = 10.0
_install_lock = threading.Lock()
_install_tried = False


@dataclass
class RegistryServer:
    """One running (or stopped) registry process. Credentials stay out of its repr."""

    host: str  # "127.0.0.1:PORT"
    url: str  # "http://127.0.0.1:PORT"
    auth: str | None  # None | "htpasswd" | "token"
    username: str | None
    password: str | None = field(repr=False)
    root: Path
    token_server: TokenServer | None = None
    ca_path: Path | None = None  # the CA that signed its TLS certificate, when it serves TLS
    _owns_token_server: bool = field(default=False, repr=False)
    _proc: subprocess.Popen[bytes] | None = field(default=None, repr=False)
    _log_file: IO[bytes] | None = field(default=None, repr=False)

    @property
    def config_path(self) -> Path:
        return self.root / "config.yml"

    @property
    def log_path(self) -> Path:
        return self.root / "registry.log"

    @property
    def creds(self) -> str | None:
        """`user:password` for skopeo's `--creds`, or None for an anonymous registry."""
        if self.auth is None or self.username is None or self.password is None:
            return None
        return f"{self.username}:{self.password}"

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def start(self) -> None:
        """(Re)start on the same port and storage; return once `/v2/` answers."""
        if self.running:
            return
        self.launch()
        self.wait_ready()

    def launch(self) -> None:
        """Start the process without waiting; pair with `wait_ready()` to start several at once."""
        if self.running:
            return
        binary = _registry_binary()
        self._log_file = self.log_path.open("ab")
        env = {k: v for k, v in os.environ.items() if not k.startswith("REGISTRY_")}
        self._proc = subprocess.Popen(
            [binary, "serve", str(self.config_path)],
            stdin=subprocess.DEVNULL,
            stdout=self._log_file,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=self.root,
        )

    def wait_ready(self, timeout: float = READY_TIMEOUT_S) -> None:
        """Poll `/v2/` until the registry answers (200 or 401); raise with the log tail if not."""
        deadline = time.monotonic() + timeout
        verify: Any = (ssl.create_default_context(cafile=str(self.ca_path)) if self.ca_path
                       else True)
        with httpx.Client(timeout=1.0, verify=verify) as client:
            while True:
                if self._proc is None or self._proc.poll() is not None:
                    self._close_log()
                    raise RuntimeError(
                        f"registry {self.host} exited during start:\n{self._log_tail()}"
                    )
                try:
                    response = client.get(f"{self.url}/v2/")
                    if response.status_code in (200, 401):
                        return
                except httpx.TransportError:
                    pass
                if time.monotonic() > deadline:
                    self.kill()
                    raise RuntimeError(
                        f"registry {self.host} not ready after {timeout}s:\n{self._log_tail()}"
                    )
                time.sleep(0.02)

    def stop(self) -> None:
        """Terminate and wait; storage stays for a later `start()`."""
        if self._proc is not None:
            if self._proc.poll() is None:
                self._proc.terminate()
                try:
                    self._proc.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    self._proc.kill()
                    self._proc.wait()
            self._proc = None
        self._close_log()

    def kill(self) -> None:
        """SIGKILL: an abrupt outage, as opposed to `stop()`."""
        if self._proc is not None:
            if self._proc.poll() is None:
                self._proc.kill()
            self._proc.wait()
            self._proc = None
        self._close_log()

    def close(self) -> None:
        """Stop for good, with the token server if this registry started it."""
        self.stop()
        if self._owns_token_server and self.token_server is not None:
            self.token_server.stop()

    def log(self) -> str:
        """The registry's log so far."""
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def _log_tail(self, lines: int = 40) -> str:
        return "\n".join(self.log().splitlines()[-lines:])

    def _close_log(self) -> None:
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None


def start_registry(
    root: Path,
    *,
    auth: str | None = None,
    username: str = "fanout",
    password: str | None = None,
    token_server: TokenServer | None = None,
    port: int | None = None,
    wait: bool = True,
    tls: bool = False,
    delete: bool = True,
) -> RegistryServer:
    """Start a registry with its storage, config and log under `root`.

    `delete=False` disables deletes (`storage.delete.enabled: false`): every DELETE of a
    manifest or blob is answered 405 UNSUPPORTED.

    `auth="token"` without a `token_server` starts one that lets `username` do anything; a given
    token server gets `username` added with full rights. With `wait=False` call `wait_ready()`.
    """
    if auth not in (None, "htpasswd", "token"):
        raise ValueError(f"unknown auth {auth!r}")
    root.mkdir(parents=True, exist_ok=True)
    port = port or free_port()
    host = f"127.0.0.1:{port}"
    if auth is None:
        user: str | None = None
        password = None
    else:
        user = username
        password = password if password is not None else secrets.token_urlsafe(16)
    owns_token_server = False
    config: dict[str, Any] = {
        "version": 0.1,
        "log": {"level": "info", "formatter": "text", "fields": {"service": "registry"}},
        "storage": {
            "filesystem": {"rootdirectory": str(root / "storage")},
            "delete": {"enabled": delete},
            "maintenance": {"uploadpurging": {"enabled": False}},
        },
        "http": {"addr": host, "secret": secrets.token_hex(16)},
    }
    ca_path = None
    if tls:
        ca_path, cert_path, key_path = write_tls_files(root)
        config["http"]["tls"] = {"certificate": str(cert_path), "key": str(key_path)}
    if auth == "htpasswd":
        assert user is not None and password is not None
        htpasswd_path = root / "htpasswd"
        htpasswd_path.write_text(_htpasswd_line(user, password))
        config["auth"] = {"htpasswd": {"realm": "fanout-test", "path": str(htpasswd_path)}}
    elif auth == "token":
        assert user is not None and password is not None
        if token_server is None:
            token_server = TokenServer()
            owns_token_server = True
        token_server.add_user(user, password)
        token_server.start()
        bundle = root / "token-root.pem"
        bundle.write_bytes(token_server.cert_pem)
        config["auth"] = {
            "token": {
                "realm": token_server.realm,
                "service": token_server.service,
                "issuer": token_server.issuer,
                "rootcertbundle": str(bundle),
            }
        }
    # JSON is YAML, and distribution's yaml.v2 reads it.
    (root / "config.yml").write_text(json.dumps(config, indent=2))
    server = RegistryServer(
        host=host,
        url=f"{'https' if tls else 'http'}://{host}",
        auth=auth,
        username=user,
        password=password,
        root=root,
        token_server=token_server if auth == "token" else None,
        ca_path=ca_path,
        _owns_token_server=owns_token_server,
    )
    server.launch()
    if wait:
        server.wait_ready()
    return server


def _registry_binary() -> str:
    global _install_tried
    binary = shutil.which("docker-registry")
    if binary is not None:
        return binary
    with _install_lock:
        if not _install_tried:
            _install_tried = True
            subprocess.run(
                ["apt-get", "install", "-y", "docker-registry"],
                check=False,
                stdin=subprocess.DEVNULL,
                capture_output=True,
            )
    binary = shutil.which("docker-registry")
    if binary is None:
        raise RuntimeError("docker-registry is not installed and `apt-get install` did not help")
    return binary


def _htpasswd_line(username: str, password: str) -> str:
    # The password goes through stdin (-i), not argv, so it never shows in a process list.
    if shutil.which("htpasswd") is not None:
        out = subprocess.run(
            ["htpasswd", "-niB", username],
            input=password.encode(),
            capture_output=True,
            check=True,
        )
        return out.stdout.decode().strip() + "\n"
    import bcrypt  # type: ignore[import-not-found]  # only when apache2-utils is missing

    hashed = bcrypt.hashpw(password.encode(), bcrypt.gensalt()).decode()
    return f"{username}:{hashed}\n"


@dataclass
class RegistrySet:
    """The session's registries: three anonymous, one htpasswd, one token-auth."""

    source: RegistryServer
    dest1: RegistryServer
    dest2: RegistryServer
    basic: RegistryServer
    token: RegistryServer

    def all(self) -> list[RegistryServer]:
        return [self.source, self.dest1, self.dest2, self.basic, self.token]

    def close(self) -> None:
        for server in self.all():
            server.close()


def start_registry_set(root: Path) -> RegistrySet:
    """Start the five registries side by side, then wait for all of them."""
    servers = RegistrySet(
        source=start_registry(root / "source", wait=False),
        dest1=start_registry(root / "dest1", wait=False),
        dest2=start_registry(root / "dest2", wait=False),
        basic=start_registry(root / "basic", auth="htpasswd", wait=False),
        token=start_registry(root / "token", auth="token", wait=False),
    )
    try:
        for server in servers.all():
            server.wait_ready()
    except BaseException:
        servers.close()
        raise
    return servers


def write_tls_files(root: Path) -> tuple[Path, Path, Path]:
    """A private CA and a server certificate for 127.0.0.1 signed by it: (ca, cert, key)."""
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "fanout test CA")])
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name)
          .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
          .not_valid_before(now - datetime.timedelta(minutes=5))
          .not_valid_after(now + datetime.timedelta(days=1))
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
          .sign(ca_key, hashes.SHA256()))
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")]))
            .issuer_name(ca_name).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName(
                [x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("localhost")]),
                critical=False)
            .sign(ca_key, hashes.SHA256()))
    ca_path, cert_path, key_path = root / "ca.pem", root / "server.pem", root / "server.key"
    ca_path.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.TraditionalOpenSSL,
                                           serialization.NoEncryption()))
    return ca_path, cert_path, key_path
