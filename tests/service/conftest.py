"""The service in-process: its app over a fakeredis ledger, driven by Starlette's TestClient.
What needs registries, a broker and workers is in tests/integration/ with a real server."""

from __future__ import annotations

from collections.abc import Iterator

import fakeredis
import pytest
from fastapi.testclient import TestClient

from service.app import create_app
from service.config import ServeConfig, parse_serve_config
from tests.support.serve import sha256_hex
from workers.ledger import Ledger

CI_TOKEN = "ci-token-7f3a9c"
READER_TOKEN = "reader-token-11b2"
SOURCE = "registry.corp/acme/app@sha256:" + "a" * 64

DOCUMENT = {
    "default": "release",
    "destinations": {
        "release": ["quay.io/acme/app", "ghcr.io/acme/app:stable"],
        "mirrors": ["mirror.example/acme/app"],
    },
    "tokens": [
        {"name": "ci", "sha256": sha256_hex(CI_TOKEN), "sets": ["release"],
         "sources": ["registry.corp/acme/*"]},
        {"name": "reader", "sha256": sha256_hex(READER_TOKEN), "sets": [], "sources": []},
    ],
}


@pytest.fixture
def config() -> ServeConfig:
    return parse_serve_config(DOCUMENT)


@pytest.fixture
def ledger() -> Ledger:
    return Ledger(fakeredis.FakeRedis())


@pytest.fixture
def client(config: ServeConfig, ledger: Ledger) -> Iterator[TestClient]:
    app = create_app(config, {}, ledger=ledger)
    with TestClient(app, raise_server_exceptions=False) as test_client:
        yield test_client


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}
