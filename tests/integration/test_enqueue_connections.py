"""``fanout enqueue`` of a digest-pinned source makes one request to the source registry after
its probe, and opens one connection for them: none spare. Counted at a proxy in front of a
token-auth registry (where a copy opens spare connections while its first token is fetched)."""

from __future__ import annotations

import secrets
import shutil
from pathlib import Path

import pytest

from bench.latency_proxy import start_proxies, stop_all
from producer import api
from tests.support.cli import fanout_env, write_docker_auths
from tests.support.images import push_oci_image
from tests.support.queue import RedisServer, ledger_for
from tests.support.registries import start_registry

pytestmark = [
    pytest.mark.integration,
    pytest.mark.timeout(120),
    pytest.mark.skipif(shutil.which("redis-server") is None,
                       reason="redis-server is not installed"),
]


def test_enqueue_of_a_pinned_source_opens_one_connection(
    redis_server: RedisServer, tmp_path: Path,
) -> None:
    password = secrets.token_urlsafe(12)
    source = start_registry(tmp_path / "source", auth="token", password=password)
    try:
        image = push_oci_image(source, "conn/app", "v1", layers=1)
        assert source.token_server is not None
        proxies = start_proxies({"source": source.url,
                                 "source-token": source.token_server.url},
                                request_delay=0, connect_delay=0)
        try:
            host = proxies["source"].host
            config = write_docker_auths(tmp_path / "docker", {host: ("fanout", password)})
            env = fanout_env(config, FANOUT_PRECONNECT="3")
            url = f"{redis_server.url}/0"
            api.enqueue(f"{host}/conn/app@{image.digest}", ["dest.example/conn/app"],
                        referrers=False, env=env, broker_url=url, ledger=ledger_for(url))
            hops = proxies["source"].hops
        finally:
            stop_all(proxies)
    finally:
        source.close()
    # The probe's ping, then the manifest HEAD, with its token: one connection for both.
    assert [(h.method, h.first) for h in hops] == [("GET", True), ("HEAD", False)], hops
