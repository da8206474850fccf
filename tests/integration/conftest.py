"""Fixtures of the integration tests: a Redis of the test's own; a private RabbitMQ virtual host;
and, for the quirk-proxy
tests (``test_profiles``, ``test_quirks``, ``test_quirk_proxy``, ``test_check_profiles``), a plain
registry and a release on it per module, and proxies stopped after each test."""

from __future__ import annotations

import secrets
import socket
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.support.queue import RedisServer
from tests.support.quirks.harness import Release, StartProxy, push_release
from tests.support.quirks.profiles import Profile
from tests.support.quirks.proxy import QuirkProxy
from tests.support.registries import RegistryServer, start_registry


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    """A Redis of the test's own, on a free port, keeping nothing on disk (a module that
    restarts its Redis, or shares one, defines its own)."""
    server = RedisServer(tmp_path / "redis", persistent=False).start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def plain(request: pytest.FixtureRequest,
          tmp_path_factory: pytest.TempPathFactory) -> Iterator[RegistryServer]:
    """A plain anonymous registry for the module: a source, a destination, or the registry behind
    proxies."""
    name = request.module.__name__.rpartition(".")[2]
    server = start_registry(tmp_path_factory.mktemp(name) / "plain")
    yield server
    server.close()


@pytest.fixture(scope="module")
def release(plain: RegistryServer) -> Release:
    """A release at ``plain``/acme/app: a three-platform index over an 11 MiB layer (several
    chunks' worth), a cosign signature and an SBOM."""
    return push_release(plain, "acme/app")


@pytest.fixture
def proxies(fresh_registry: Callable[..., RegistryServer]) -> Iterator[StartProxy]:
    started: list[QuirkProxy] = []

    def start(profile: Profile, behind: RegistryServer | None = None,
              ) -> tuple[RegistryServer, QuirkProxy]:
        behind = behind or fresh_registry()
        proxy = QuirkProxy(behind.url, profile).start()
        started.append(proxy)
        return behind, proxy

    yield start
    for proxy in started:
        proxy.stop()


def _rabbitmq_up() -> bool:
    try:
        with socket.create_connection(("127.0.0.1", 5672), timeout=2):
            return True
    except OSError:
        return False


@pytest.fixture
def vhost() -> Iterator[str]:
    """A private virtual host, so no other run's messages reach this test's worker."""
    if not _rabbitmq_up():
        pytest.skip("no RabbitMQ on 127.0.0.1:5672 (the machine starts one; this one has not)")
    name = f"fanout-test-{secrets.token_hex(4)}"
    ctl = ["rabbitmqctl", "-q"]
    subprocess.run([*ctl, "add_vhost", name], check=True, capture_output=True, timeout=60)
    subprocess.run([*ctl, "set_permissions", "-p", name, "guest", ".*", ".*", ".*"],
                   check=True, capture_output=True, timeout=60)
    yield name
    subprocess.run([*ctl, "delete_vhost", name], check=False, capture_output=True, timeout=60)
