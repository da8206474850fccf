"""``fanout serve`` keeps one pool of registry clients for its lifetime (``producer/pool.py``):
a request that pins a tag finds the connection, the token and the probe an earlier request
left, whether it came through the API or a webhook.

A token-auth source registry and its token server, each behind a counting proxy
(``bench/latency_proxy.py`` with no delay); the app in-process over a fakeredis ledger and
kombu's in-memory broker. Nothing copies.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import fakeredis
import pytest
from fastapi.testclient import TestClient

from bench.latency_proxy import Hop, TokenNetwork, all_hops, reset_all, tls_refused, token_network
from service.app import create_app
from service.config import parse_serve_config
from service.state import ServiceState
from tests.service import hook_payloads as payloads
from tests.support import images
from tests.support.cli import write_docker_auths
from tests.support.serve import sha256_hex
from workers.ledger import Ledger

TOKEN = "ci-token-3b9e"
REPO = "pool/app"


@pytest.fixture
def network(tmp_path: Path) -> Iterator[TokenNetwork]:
    with token_network(tmp_path / "net", ["source"], request_delay=0,
                       connect_delay=0) as network:
        yield network


def app_over(network: TokenNetwork, tmp_path: Path, ledger: Ledger) -> TestClient:
    host = network.proxies["source"].host
    document = {
        "default": "release",
        "destinations": {"release": ["127.0.0.1:1/mirror/app"]},
        "tokens": [{"name": "ci", "sha256": sha256_hex(TOKEN), "sets": ["release"],
                    "sources": [f"{host}/pool/*"]}],
        "rules": [{"source": f"{host}/pool/*", "tags": ["v*"], "to": "release"}],
        "hooks": {"dockerhub": {"registry": host}},
    }
    docker = write_docker_auths(tmp_path / "docker", {host: ("fanout", network.password)})
    env = {"DOCKER_CONFIG": str(docker), "FANOUT_BROKER_URL": "memory://"}
    return TestClient(create_app(parse_serve_config(document), env, ledger=ledger),
                      raise_server_exceptions=False)


def timeline(hops: list[Hop]) -> str:
    return "\n".join(f"{hop.role} {hop.method} {hop.path} first={hop.first}" for hop in hops)


def test_requests_that_pin_a_tag_share_connections_tokens_and_the_probe(
        network: TokenNetwork, tmp_path: Path) -> None:
    image = images.push_oci_image(network.registries["source"], REPO, "v1", layers=1,
                                  layer_size=512)
    second_image = images.push_oci_image(network.registries["source"], REPO, "v2", layers=1,
                                         layer_size=512)
    source = f"{network.proxies['source'].host}/{REPO}"
    ledger = Ledger(fakeredis.FakeRedis())
    auth = {"Authorization": f"Bearer {TOKEN}"}
    with app_over(network, tmp_path, ledger) as client:
        first = client.post("/v1/releases", json={"source": f"{source}:v1"}, headers=auth)
        assert first.status_code == 201, first.text
        assert first.json()["digest"] == image.digest
        hops = all_hops(network.proxies)
        # The first request pays for it all: a connection, the probe, a token.
        assert any(hop.path == "/v2/" for hop in hops), timeline(hops)
        assert any(hop.role == "source-token" for hop in hops), timeline(hops)

        reset_all(network.proxies)
        second = client.post("/v1/releases", json={"source": f"{source}:v1"}, headers=auth)
        assert second.status_code == 201, second.text
        assert second.json()["id"] != first.json()["id"]
        # A webhook naming a tag alone is pinned over the same pool.
        hook = client.post(f"/v1/hooks/dockerhub?token={TOKEN}",
                           content=json.dumps(payloads.dockerhub_push("v2", REPO)))
        assert hook.status_code == 202, hook.text
        hops = all_hops(network.proxies)
        state: ServiceState = client.app.state.fanout  # type: ignore[attr-defined]

    # Each only read manifests (the webhook's pinned source is checked by digest once more):
    # no probe, no token, no new connection.
    assert [(hop.role, hop.method, hop.path) for hop in hops] == [
        ("source", "GET", f"/v2/{REPO}/manifests/v1"),
        ("source", "GET", f"/v2/{REPO}/manifests/v2"),
        ("source", "HEAD", f"/v2/{REPO}/manifests/{second_image.digest}")], timeline(hops)
    assert not any(hop.first for hop in hops), timeline(hops)
    assert tls_refused(network.proxies) == 0
    # The app's shutdown closed the pool.
    with pytest.raises(RuntimeError, match="closed"):
        state.pool.run(lambda registries: registries.aclose())


def test_a_credential_changed_between_requests_is_used_at_once(
        network: TokenNetwork, tmp_path: Path) -> None:
    images.push_oci_image(network.registries["source"], REPO, "v1", layers=1, layer_size=512)
    host = network.proxies["source"].host
    auth = {"Authorization": f"Bearer {TOKEN}"}
    with app_over(network, tmp_path, Ledger(fakeredis.FakeRedis())) as client:
        body = {"source": f"{host}/{REPO}:v1"}
        assert client.post("/v1/releases", json=body, headers=auth).status_code == 201
        # The server's Docker config now holds a wrong password: read again at each request,
        # it is the one the next request tries, and the registry refuses it.
        write_docker_auths(tmp_path / "docker", {host: ("fanout", "not-the-password")})
        refused = client.post("/v1/releases", json=body, headers=auth)
        assert refused.status_code in (422, 502), refused.text
        write_docker_auths(tmp_path / "docker", {host: ("fanout", network.password)})
        assert client.post("/v1/releases", json=body, headers=auth).status_code == 201
