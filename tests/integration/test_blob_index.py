"""Each blob once per registry, cluster-wide: the blob-location index (``workers/locations.py``).

Release 1 copies an image to repository ``a`` of a registry; release 2, run by a worker process
started after the first one stopped (nothing of the first survives in memory), copies it to
``b`` of the same registry. Every blob of release 2 must be mounted from ``a``, as the hints in
the ledger's Redis say, with no blob byte uploaded: judged by what a proxy in front of the
registry saw. The result is checked byte for byte.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path
from urllib.parse import parse_qs

import pytest
import redis

from producer import api
from tests.support.checks import assert_same_image
from tests.support.cli import write_docker_config
from tests.support.fault_proxy import Delay, FaultProxy, Rule
from tests.support.images import push_oci_image
from tests.support.queue import (
    Process,
    RedisServer,
    ledger_for,
    queue_env,
    start_worker,
    wait_until,
)
from tests.support.registries import RegistryServer, RegistrySet
from tests.support.registry_client import RepoClient
from workers.ledger import Ledger, Release
from workers.locations import CLAIM_PREFIX, KEY_PREFIX

pytestmark = [
    pytest.mark.integration,
    pytest.mark.timeout(90),
    pytest.mark.skipif(shutil.which("redis-server") is None,
                       reason="redis-server is not installed"),
]


def _release(ledger: Ledger, image_ref: str, target: str, worker: Process) -> Release:
    [release_id] = api.enqueue(image_ref, [target], tags=["v1"], referrers=False,
                               ledger=ledger, env=worker.env)
    release = wait_until(lambda: (r := api.status(release_id, ledger=ledger)).done and r,
                         30, f"release to {target} done", lambda: worker.log()[-3000:])
    assert isinstance(release, Release) and release.ok, release
    return release


def test_a_blob_one_worker_landed_is_mounted_by_another_worker_process(
    redis_server: RedisServer, registries: RegistrySet,
    fresh_registry: Callable[..., RegistryServer], tmp_path: Path, unique_repo: str,
) -> None:
    image = push_oci_image(registries.source, unique_repo, "v1", layers=2)
    env = queue_env(f"{redis_server.url}/0", write_docker_config(tmp_path / "docker", []))
    ledger = ledger_for(env["FANOUT_BROKER_URL"])
    index = redis.Redis.from_url(env["FANOUT_BROKER_URL"], decode_responses=True)
    registry = fresh_registry()
    with FaultProxy(registry.url) as proxy:
        a, b = f"{unique_repo}/a", f"{unique_repo}/b"

        first = start_worker("index1", env, tmp_path, loglevel="INFO")
        try:
            one = _release(ledger, image.reference, f"{proxy.host}/{a}", first)
            stats = one.destinations[f"{proxy.host}/{a}"].stats
            assert stats["blobs_uploaded"] == len(image.blobs) == 3, stats
            # The hints are written beside the copy: each blob's, naming `a`, in Redis.
            keys = [f"{KEY_PREFIX}{proxy.host}/{digest}" for digest in image.blobs]
            wait_until(lambda: all(index.zrange(k, 0, -1) == [a] for k in keys), 10,
                       "every blob recorded at a", lambda: index.keys("*"))
        finally:
            first.stop()
        assert not first.running

        proxy.reset_seen()
        second = start_worker("index2", env, tmp_path, loglevel="INFO")
        try:
            assert second.pid != first.pid
            two = _release(ledger, image.reference, f"{proxy.host}/{b}", second)
            seen = proxy.seen
        finally:
            # Else it outlives the test, retrying a Redis that is gone.
            second.stop()

    record = two.destinations[f"{proxy.host}/{b}"]
    assert (record.worker or "").startswith("index2@"), record.worker
    assert record.stats["blobs_mounted"] == 3 and record.stats["blobs_uploaded"] == 0, record
    mounts = {(parse_qs(s.query)["mount"][0], parse_qs(s.query)["from"][0], s.status)
              for s in seen if s.method == "POST" and "mount=" in s.query}
    assert mounts == {(digest, a, 201) for digest in image.blobs}, mounts
    # Every upload request was one of those mounts: no upload opened, no blob byte sent.
    uploads = [(s.method, s.path, s.query) for s in seen if "/blobs/uploads/" in s.path]
    assert all(m == "POST" and "mount=" in q for m, _, q in uploads), uploads
    with RepoClient.at(registries.source, unique_repo) as src, \
            RepoClient.at(registry, b) as dst:
        assert_same_image(src, dst, [image.digest], tags={"v1": image.digest})
    assert sorted(index.zrange(keys[0], 0, -1)) == [a, b]
    index.close()


def test_two_workers_copying_to_one_registry_send_each_blob_once(
    redis_server: RedisServer, registries: RegistrySet,
    fresh_registry: Callable[..., RegistryServer], tmp_path: Path, unique_repo: str,
) -> None:
    # One release to two repositories of a registry, its two tasks on two worker processes at
    # once. Each upload is held a second at its final PUT, so the other task surely arrives
    # while it is under way: it must wait for the claim and mount, not send the bytes too.
    image = push_oci_image(registries.source, unique_repo, "v1", layers=3)
    env = queue_env(f"{redis_server.url}/0", write_docker_config(tmp_path / "docker", []))
    ledger = ledger_for(env["FANOUT_BROKER_URL"])
    registry = fresh_registry()
    with FaultProxy(registry.url) as proxy:
        proxy.add(Rule(Delay(1.0), method="PUT", path="/blobs/uploads/", query="digest="))
        targets = [f"{proxy.host}/{unique_repo}/a", f"{proxy.host}/{unique_repo}/b"]
        workers = [start_worker(f"claims{i}", env, tmp_path, loglevel="DEBUG") for i in (1, 2)]
        try:
            [release_id] = api.enqueue(image.reference, targets, tags=["v1"], referrers=False,
                                       ledger=ledger, env=env)
            release = wait_until(
                lambda: (r := api.status(release_id, ledger=ledger)).done and r, 60,
                "release done", lambda: "\n".join(w.log()[-2000:] for w in workers))
        finally:
            for worker in workers:
                worker.stop()
        seen = proxy.seen

    assert isinstance(release, Release) and release.ok, release
    records = [release.destinations[t] for t in targets]
    assert {(r.worker or "").split("@")[0] for r in records} == {"claims1", "claims2"}
    puts = [parse_qs(s.query)["digest"][0] for s in seen
            if s.method == "PUT" and "digest=" in s.query]
    assert sorted(puts) == sorted(image.blobs), "a blob's bytes went to the registry twice"
    assert sum(r.stats["blobs_uploaded"] for r in records) == len(image.blobs)
    assert sum(r.stats["blobs_mounted"] for r in records) == len(image.blobs)
    for target in targets:
        with RepoClient.at(registries.source, unique_repo) as src, \
                RepoClient.at(registry, target.split("/", 1)[1]) as dst:
            assert_same_image(src, dst, [image.digest], tags={"v1": image.digest})
    # Every claim was given up once its upload had landed.
    claims = redis.Redis.from_url(env["FANOUT_BROKER_URL"]).keys(f"{CLAIM_PREFIX}*")
    assert claims == []
