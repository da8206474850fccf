"""One read of the source per worker host: a release to five registries, copied by one worker
host (prefork, three processes), reads each source blob about once, and every destination gets
the image byte for byte.

Five different registries, so that no destination can mount from another; the source sits
behind a proxy that counts the blob bytes it serves.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import pytest

from producer import api
from tests.support.checks import assert_same_image
from tests.support.fault_proxy import FaultProxy
from tests.support.images import push_oci_image
from tests.support.queue import RedisServer, ledger_for, queue_env, start_worker
from tests.support.registries import RegistryServer
from tests.support.registry_client import RepoClient

pytestmark = pytest.mark.timeout(120)


def test_a_release_to_five_registries_reads_the_source_about_once(
    tmp_path: Path, fresh_registry: Callable[..., RegistryServer],
) -> None:
    source = fresh_registry()
    destinations = [fresh_registry() for _ in range(5)]
    image = push_oci_image(source, "acme/app", "v1", layers=3, layer_size=1024 * 1024,
                           compress=False)
    proxy = FaultProxy(source.url).start()
    redis = RedisServer(tmp_path / "redis", persistent=False).start()
    spool = tmp_path / "spool"
    env = queue_env(redis.url, tmp_path / "docker", FANOUT_SPOOL_DIR=str(spool))
    worker = start_worker("spool", env, tmp_path, pool="prefork", concurrency=3, loglevel="INFO")
    try:
        ledger = ledger_for(redis.url)
        [release_id] = api.enqueue(f"{proxy.host}/acme/app@{image.digest}",
                                   [f"{d.host}/acme/app" for d in destinations], tags=["v1"],
                                   env=env, ledger=ledger)
        deadline = time.monotonic() + 90
        while not (release := api.status(release_id, ledger=ledger)).done:
            assert time.monotonic() < deadline, f"{release.to_dict()}\n{worker.log()[-3000:]}"
            time.sleep(0.1)
        assert release.ok, release.to_dict()
    finally:
        worker.stop()
        redis.stop()
        proxy.stop()

    served = sum(s.sent for s in proxy.requests("GET", r"/blobs/sha256:", status=200))
    assert served <= 1.2 * image.total_blob_bytes, (served, image.total_blob_bytes)
    for dest in destinations:
        with RepoClient.at(source, "acme/app") as src, RepoClient.at(dest, "acme/app") as dst:
            assert_same_image(src, dst, [image.digest], tags={"v1": image.digest})
    # What stays in the spool is the verified blobs, for the next release's while they are fresh.
    assert sorted(p.name for p in (spool / "sha256").iterdir()) == sorted(
        digest.removeprefix("sha256:") for digest in image.blobs)
