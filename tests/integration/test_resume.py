"""Resuming cut transfers, against the real registry (distribution 2.8) behind the fault proxy.

A 200 MiB layer (random, streamed from a temporary file) is copied with its upload cut at about
80%, or its source read cut there; the bytes that cross the proxy are counted, not the time.
Distribution drops an upload whose PATCH was cut mid-body (BLOB_UPLOAD_INVALID): there the copy
starts over as it always did, and the host is remembered as one that does not resume.
"""

from __future__ import annotations

import asyncio
import json
import secrets
from pathlib import Path

import pytest

from producer import api
from registry.capabilities import CapabilityStore
from registry.copy import Copier
from registry.options import CopyOptions, TransportOptions
from registry.reference import parse_reference, parse_repository
from registry.resume import CHUNKS_PER_BLOB
from registry.retry import RetryPolicy
from registry.session import Registries
from tests.support import images
from tests.support.cli import write_docker_config
from tests.support.fault_proxy import (
    CutRequest,
    CutResponse,
    Delay,
    DropRequest,
    FaultProxy,
    Rule,
    Status,
)
from tests.support.queue import RedisServer, ledger_for, queue_env, start_worker
from tests.support.registries import RegistrySet
from tests.support.registry_client import RepoClient

# Heavy on disk and loopback: one process runs these, one after another.
pytestmark = [pytest.mark.integration, pytest.mark.xdist_group("resume")]

MiB = 1024 * 1024
BIG = 200 * MiB
FAST = RetryPolicy(attempts=4, initial=0.05, maximum=0.2, jitter=0.1, max_elapsed=30)
UPLOADS = r"/blobs/uploads/"
# The target of issue 18: a layer cut at 80% crosses the link at most 1.25 times.
MAX_RATIO = 1.25


@pytest.fixture(scope="module")
def big_image(registries: RegistrySet) -> images.PushedImage:
    return images.push_oci_image(registries.source, f"test/resume-{secrets.token_hex(4)}", "v1",
                                 layers=1, layer_size=BIG, compress=False)


def copy(source: str, target: str, caps: CapabilityStore, *, concurrency: int = 8) -> None:
    async def run() -> None:
        async with Registries(None, TransportOptions(connect_timeout=2.0), retry=FAST,
                              capabilities=caps) as registries:
            copier = Copier(registries, CopyOptions(retry=FAST, referrers=False,
                                                    blob_concurrency=concurrency))
            result = await copier.copy(parse_reference(source), parse_repository(target),
                                       ("v1",))
            assert result.error is None, result.error

    asyncio.run(run())


def layer_of(image: images.PushedImage) -> str:
    digest: str = json.loads(image.manifest)["layers"][-1]["digest"]
    return digest


def assert_landed(registries: RegistrySet, repo: str, image: images.PushedImage) -> None:
    """The manifest is there, and every blob hashes to its digest."""
    with RepoClient.at(registries.dest1, repo) as dst:
        assert dst.manifest_head(image.digest).status_code == 200
        for digest in image.blobs:
            assert dst.blob_hash(digest)[0] == digest


@pytest.mark.parametrize("fault", [
    pytest.param(DropRequest(BIG // CHUNKS_PER_BLOB // 2), id="reset-mid-patch"),
    pytest.param(Status(503), id="503-on-patch"),
])
def test_an_upload_cut_at_80_percent_resumes(
    registries: RegistrySet, big_image: images.PushedImage, unique_repo: str,
    fault: DropRequest | Status,
) -> None:
    caps = CapabilityStore()
    with FaultProxy(registries.dest1.url) as proxy:
        # Six chunks of eight go through; the seventh (75%-87.5% of the layer) is cut.
        proxy.add(Rule(Delay(0), "PATCH", UPLOADS, times=CHUNKS_PER_BLOB - 2))
        cut = proxy.add(Rule(fault, "PATCH", UPLOADS, times=1))
        copy(big_image.reference, f"{proxy.host}/{unique_repo}", caps)
        seen = proxy.seen
    assert cut.hits == 1
    sent = sum(s.received for s in seen)
    print(f"\n{fault}: {sent / BIG:.3f}x the layer sent, {len(seen)} requests")
    assert sent <= MAX_RATIO * BIG
    # Resumed, not started over: one upload opened for the layer, one status asked.
    assert [s.method for s in seen if s.method == "GET" and UPLOADS in s.path] == ["GET"]
    assert sum(1 for s in seen if s.method == "POST") == 2  # the config and the layer
    assert caps.get(proxy.host).resumes is True
    assert_landed(registries, unique_repo, big_image)


def test_a_source_read_cut_at_80_percent_resumes_with_range(
    registries: RegistrySet, big_image: images.PushedImage, unique_repo: str,
) -> None:
    layer = layer_of(big_image)
    with FaultProxy(registries.source.url) as proxy:
        proxy.add(Rule(CutResponse(BIG * 4 // 5), "GET", rf"/blobs/{layer}", times=1))
        source = big_image.reference.replace(registries.source.host, proxy.host)
        copy(source, f"{registries.dest1.host}/{unique_repo}", CapabilityStore())
        reads = [s for s in proxy.seen if s.method == "GET" and layer in s.path]
    read = sum(s.sent for s in reads)
    print(f"\nsource cut at 80%: {read / BIG:.3f}x the layer read in {len(reads)} GETs")
    assert len(reads) == 2
    assert read <= MAX_RATIO * BIG
    assert_landed(registries, unique_repo, big_image)


def test_a_host_that_drops_a_cut_upload_gets_whole_blobs_from_then_on(
    registries: RegistrySet, unique_repo: str,
) -> None:
    # Two layers just big enough to go in chunks, sent one after the other.
    image = images.push_oci_image(registries.source, unique_repo, "v1", layers=2,
                                  layer_size=66 * MiB, compress=False)
    caps = CapabilityStore()
    with FaultProxy(registries.dest1.url) as proxy:
        proxy.add(Rule(CutRequest(4 * MiB), "PATCH", UPLOADS, times=1))
        copy(image.reference, f"{proxy.host}/{unique_repo}", caps, concurrency=1)
        seen = proxy.seen
    statuses = [s for s in seen if s.method == "GET" and UPLOADS in s.path]
    assert [s.status for s in statuses] == [404]  # BLOB_UPLOAD_INVALID: the upload is gone
    assert caps.get(proxy.host).resumes is False
    # Started over whole, and the second layer went whole at once: no PATCH after the cut.
    assert [s.method for s in seen if s.method == "PATCH"] == ["PATCH"]
    assert sum(1 for s in seen if s.method == "PUT" and "digest=" in s.query) == 3
    assert_landed(registries, unique_repo, image)


def test_a_queued_upload_cut_at_80_percent_resumes_in_the_worker(
    registries: RegistrySet, big_image: images.PushedImage, unique_repo: str, tmp_path: Path,
    redis_server: RedisServer,
) -> None:
    """The same cut, through the queue: a Redis of the test's own and one real ``celery worker``."""
    # FAST_ENV's 12 s time limit is for small images; a 200 MiB layer gets room to cross.
    env = queue_env(f"{redis_server.url}/0",
                    write_docker_config(tmp_path / "docker", registries.all()),
                    FANOUT_TASK_TIME_LIMIT="300", FANOUT_VISIBILITY_TIMEOUT="400")
    ledger = ledger_for(env["FANOUT_BROKER_URL"])
    with FaultProxy(registries.dest1.url) as proxy:
        # Six chunks of eight go through; the seventh (75%-87.5% of the layer) is cut.
        proxy.add(Rule(Delay(0), "PATCH", UPLOADS, times=CHUNKS_PER_BLOB - 2))
        cut = proxy.add(Rule(DropRequest(BIG // CHUNKS_PER_BLOB // 2), "PATCH", UPLOADS,
                             times=1))
        worker = start_worker("resume", env, tmp_path, loglevel="INFO")
        try:
            target = f"{proxy.host}/{unique_repo}"
            [release_id] = api.enqueue(big_image.reference, [target], tags=["v1"],
                                       referrers=False, env=env, ledger=ledger)
            release = api.wait(release_id, timeout=240, poll=0.2, ledger=ledger)
        finally:
            worker.stop()
        seen = proxy.seen
    log = worker.log()
    assert release.done and release.ok, (release.to_dict(), log[-3000:])
    assert cut.hits == 1
    sent = sum(s.received for s in seen)
    print(f"\nqueued, reset mid-PATCH: {sent / BIG:.3f}x the layer sent, {len(seen)} requests")
    assert sent <= MAX_RATIO * BIG
    assert [s.method for s in seen if s.method == "GET" and UPLOADS in s.path] == ["GET"]
    assert f"resuming blob {layer_of(big_image)[:19]} at byte " in log, log[-3000:]
    assert_landed(registries, unique_repo, big_image)
