"""producer.pool: one pool of registry clients on one loop, for a process serving many requests
(``fanout serve``), used from any thread; closed once."""

from __future__ import annotations

import asyncio
import threading

import fakeredis
import httpx
import pytest

from producer import api
from producer.pool import RegistryPool
from registry.session import Registries
from tests.producer.test_api import BROKER, DIGEST, SRC, FakeRegistry
from workers.ledger import Ledger


def test_enqueues_share_the_probe_of_one_pool() -> None:
    registry = FakeRegistry()
    pool = RegistryPool({}, transport=httpx.MockTransport(registry))
    ledger = Ledger(fakeredis.FakeRedis())
    try:
        for _ in range(2):
            [release_id] = api.enqueue(f"{SRC}:v1", ["a.example/app"], env={},
                                       broker_url=BROKER, ledger=ledger, pool=pool)
            release = ledger.get(release_id)
            assert release is not None and release.digest == DIGEST
    finally:
        pool.close()
    assert registry.requests.count("GET /v2/") == 1, registry.requests
    assert registry.requests.count("GET /v2/acme/app/manifests/v1") == 2


def test_threads_share_one_registries_on_one_loop() -> None:
    pool = RegistryPool({})
    seen: list[tuple[Registries, asyncio.AbstractEventLoop]] = []
    barrier = threading.Barrier(4)

    async def where(registries: Registries) -> tuple[Registries, asyncio.AbstractEventLoop]:
        return registries, asyncio.get_running_loop()

    def request() -> None:
        barrier.wait()
        seen.append(pool.run(where))

    threads = [threading.Thread(target=request) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    pool.close()
    assert len(seen) == 4 and len({id(r) for r, _ in seen}) == 1
    assert len({id(loop) for _, loop in seen}) == 1 and seen[0][1].is_closed()
    pool.close()  # twice is harmless
    with pytest.raises(RuntimeError, match="closed"):
        pool.run(where)
