"""A worker process keeps its connections, tokens and probes from one task to the next
(``workers/loop.py``, ``workers/engine.py``).

Four token-auth registries (a source and three destinations), each with its own token server,
every one behind a counting proxy (``bench/latency_proxy.py`` with no delay). One prefork worker
with one child process copies a release to the three destinations, then the same release again:
the second, a no-op, must open no new connection and ask no token server anything; what it does
send is the few reads that prove each destination already holds the image.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from bench.latency_proxy import TokenNetwork, all_hops, reset_all, token_network
from producer import api
from tests.support import images
from tests.support.cli import write_docker_auths
from tests.support.queue import (
    Process,
    RedisServer,
    ledger_for,
    queue_env,
    start_worker,
    wait_until,
)
from tests.support.skopeo import assert_skopeo_same
from workers.ledger import Release

ROLES = ("source", "a", "b", "c")

pytestmark = [
    pytest.mark.integration,
    pytest.mark.timeout(120),
    pytest.mark.skipif(shutil.which("redis-server") is None,
                       reason="redis-server is not installed"),
]


@pytest.fixture
def network(tmp_path: Path) -> Iterator[TokenNetwork]:
    with token_network(tmp_path, ROLES, request_delay=0, connect_delay=0) as network:
        yield network


def test_the_second_release_reuses_connections_and_tokens(
    network: TokenNetwork, tmp_path: Path, redis_server: RedisServer,
) -> None:
    registries, proxies, password = network.registries, network.proxies, network.password
    image = images.push_oci_index(registries["source"], "reuse/app", "v1", layer_size=20_000)
    source = f"{proxies['source'].host}/reuse/app@{image.digest}"
    destinations = [f"{proxies[role].host}/reuse/app" for role in ("a", "b", "c")]
    docker = write_docker_auths(tmp_path / "docker",
                                {proxies[role].host: ("fanout", password) for role in ROLES})
    env = queue_env(f"{redis_server.url}/0", docker)
    worker: Process | None = None
    try:
        # One worker process copying: prefork with a single child, as a host would run it.
        worker = start_worker("reuse", env, tmp_path, loglevel="INFO", pool="prefork",
                              concurrency=1)
        ledger = ledger_for(env["FANOUT_BROKER_URL"])

        # The producer checks the source itself; it goes around the proxies, so that what
        # they count is the worker's alone.
        around = Around({proxies["source"].host: registries["source"].host})

        def release() -> Release:
            release_id = api.enqueue(source, destinations, tags=["v1"], referrers=True,
                                     env=env, ledger=ledger, transport=around)[0]

            def done() -> Release | None:
                found = api.status(release_id, ledger=ledger)
                return found if found.done else None

            assert worker is not None
            finished = wait_until(done, 60, "the release done", lambda: worker.log()[-3000:])
            assert finished.ok, finished.to_dict()
            return finished

        release()
        reset_all(proxies)
        second = release()
        hops = all_hops(proxies)
    finally:
        if worker is not None:
            worker.stop()

    registry_hops = [hop for hop in hops if not hop.role.endswith("-token")]
    timeline = "\n".join(f"{hop.role} {hop.method} {hop.path} first={hop.first}" for hop in hops)
    # It did go to every destination (a no-op is still checked there) ...
    assert {hop.role for hop in registry_hops} >= {"a", "b", "c"}, timeline
    assert all(record.state == "succeeded" for record in second.destinations.values())
    # ... over the connections and with the tokens the first release left.
    assert [hop for hop in hops if hop.first] == [], timeline
    assert [hop for hop in hops if hop.role.endswith("-token")] == [], timeline
    assert not any(hop.path == "/v2/" for hop in hops), timeline  # no second probe either
    creds = f"fanout:{password}"
    for role in ("a", "b", "c"):
        assert_skopeo_same(f"{registries['source'].host}/reuse/app@{image.digest}",
                           f"{registries[role].host}/reuse/app:v1", creds, creds)


class Around(httpx.AsyncHTTPTransport):
    """Sends requests for a proxy's host straight to the registry behind it."""

    def __init__(self, hosts: dict[str, str]) -> None:
        super().__init__()
        self._hosts = hosts

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        target = self._hosts.get(f"{request.url.host}:{request.url.port}")
        if target is not None:
            host, port = target.rsplit(":", 1)
            request.url = request.url.copy_with(host=host, port=int(port))
            request.headers["host"] = target
        return await super().handle_async_request(request)
