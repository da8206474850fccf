"""Shared fixtures: real registries (session-wide and per-test) and unique repository names."""

from __future__ import annotations

import re
import secrets
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.registries import RegistryServer, RegistrySet, start_registry, start_registry_set

_INTEGRATION_DIR = Path(__file__).parent / "integration"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if item.path.is_relative_to(_INTEGRATION_DIR):
            item.add_marker(pytest.mark.integration)


@pytest.fixture(scope="session")
def registries(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RegistrySet]:
    """`.source`, `.dest1`, `.dest2` (anonymous), `.basic` (htpasswd), `.token` (token auth)."""
    servers = start_registry_set(tmp_path_factory.mktemp("registries"))
    yield servers
    servers.close()


@pytest.fixture
def fresh_registry(tmp_path: Path) -> Iterator[Callable[..., RegistryServer]]:
    """A factory: `fresh_registry(auth=None, **kwargs)` starts a registry stopped after the test."""
    started: list[RegistryServer] = []

    def start(auth: str | None = None, **kwargs: Any) -> RegistryServer:
        server = start_registry(tmp_path / f"registry-{len(started)}", auth=auth, **kwargs)
        started.append(server)
        return server

    yield start
    for server in started:
        server.close()


@pytest.fixture
def unique_repo(request: pytest.FixtureRequest) -> str:
    """`test/<test-name>-<random>`: tests sharing the session registries never collide."""
    name = re.sub(r"[^a-z0-9]+", "-", request.node.name.lower()).strip("-")[:50].strip("-")
    return f"test/{name or 'repo'}-{secrets.token_hex(4)}"
