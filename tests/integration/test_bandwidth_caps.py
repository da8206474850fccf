"""Three worker processes copying to one capped registry keep to the cap together.

``FANOUT_BANDWIDTH`` caps a registry (behind a byte-counting proxy) at 4 MiB/s; three
``celery worker`` processes on a Redis of their own each copy an image with a 6 MiB layer to
it at once. Each alone could send many times the cap over loopback; sharing the bucket in
Redis, all three together stay within 10% of it. The rate is judged at the proxy: the request
body bytes it relayed, over the window from the first to the last of them (not the test's run
time, which includes starting workers and pushing images). Then ``fanout metrics`` is scraped
for the registry's rate, cap and the time the copies waited on it. ``fanout copy`` keeps a cap
in-process, on uploads and (``source:``) on the source's blob reads.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from producer import api
from tests.support.cli import fanout_env, run_fanout, write_docker_config
from tests.support.fault_proxy import FaultProxy
from tests.support.images import push_oci_image
from tests.support.ports import free_port
from tests.support.queue import (
    VENV_BIN,
    Process,
    RedisServer,
    ledger_for,
    queue_env,
    running_workers,
    wait_until,
)
from tests.support.registries import RegistrySet
from tests.support.xdist import exclusive
from workers.ledger import Release

MiB = 1024 * 1024
WORKERS = 3
CAP = 4 * MiB
LAYER = 6 * MiB
TOLERANCE = 0.10

pytestmark = [
    pytest.mark.integration,
    pytest.mark.timeout(150),
    # Timing-sensitive: a rate below the cap on a starved machine would be a false failure.
    pytest.mark.xdist_group("bandwidth_caps"),
    pytest.mark.skipif(shutil.which("redis-server") is None,
                       reason="redis-server is not installed"),
]


@pytest.fixture
def proxy(registries: RegistrySet) -> Iterator[FaultProxy]:
    with FaultProxy(registries.dest1.url) as started:
        yield started


@pytest.fixture
def workers(redis_server: RedisServer, proxy: FaultProxy,
            tmp_path: Path) -> Iterator[tuple[dict[str, str], list[Process]]]:
    env = queue_env(f"{redis_server.url}/0", write_docker_config(tmp_path / "docker", []),
                    FANOUT_BANDWIDTH=f"{proxy.host}={CAP}",
                    FANOUT_SPOOL_DIR=str(tmp_path / "spool"))
    with running_workers((f"bw{i}" for i in range(WORKERS)), env, tmp_path,
                         loglevel="INFO") as started:
        yield env, started


def test_three_workers_share_one_cap_and_metrics_show_it(
    workers: tuple[dict[str, str], list[Process]], proxy: FaultProxy, registries: RegistrySet,
    unique_repo: str, tmp_path: Path,
) -> None:
    env, processes = workers
    images = [push_oci_image(registries.source, f"{unique_repo}-src{i}", "v1", layers=1,
                             layer_size=LAYER, compress=False) for i in range(WORKERS)]
    ledger = ledger_for(env["FANOUT_BROKER_URL"])
    destinations = [f"{proxy.host}/{unique_repo}-{i}" for i in range(WORKERS)]

    def detail() -> str:
        return "\n".join(f"--- {w.name}\n{w.log()[-2500:]}" for w in processes)

    with exclusive("bandwidth-caps"):
        ids = [api.enqueue(image.reference, [d], tags=["v1"], referrers=False, env=env,
                           ledger=ledger)[0] for image, d in zip(images, destinations,
                                                                 strict=True)]

        def done() -> list[Release] | None:
            releases = [api.status(i, ledger=ledger) for i in ids]
            return releases if all(r.done for r in releases) else None

        releases = wait_until(done, 90, "every release done", detail)
    assert all(r.ok for r in releases), [r.to_dict() for r in releases]
    records = [r.destinations[d] for r, d in zip(releases, destinations, strict=True)]
    assert len({(r.worker or "").split("@")[0] for r in records}) == WORKERS, records

    pieces = list(proxy.body_pieces)
    total = sum(n for _, n in pieces)
    first, last = pieces[0][0], pieces[-1][0]
    rate = total / (last - first)
    report = (f"{total / MiB:.2f} MiB in {last - first:.2f} s: {rate / MiB:.3f} MiB/s "
              f"against a cap of {CAP / MiB:g} MiB/s ({rate / CAP:.3f}x)")
    print(report)
    assert total >= WORKERS * LAYER, report
    assert (1 - TOLERANCE) * CAP <= rate <= (1 + TOLERANCE) * CAP, report

    port = free_port()
    exporter = Process("metrics", [str(VENV_BIN / "fanout"), "metrics", "--port", str(port)],
                       tmp_path / "metrics.log", env).start()
    try:
        exporter.wait_for_log(f"serving http://127.0.0.1:{port}/metrics")
        response = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10)
    finally:
        exporter.stop()
    assert response.status_code == 200, response.text
    labels = {"host": proxy.host, "direction": "upload"}
    samples = {s.name: s.value for family in text_string_to_metric_families(response.text)
               for s in family.samples if s.labels == labels}
    assert samples["fanout_bandwidth_cap_bytes_per_second"] == CAP
    assert samples["fanout_bandwidth_bytes_total"] >= WORKERS * LAYER
    # Three streams under one cap: they waited, most of the copy's length between them.
    assert samples["fanout_bandwidth_wait_seconds_total"] > 1.0, samples
    assert "fanout_bandwidth_bytes_per_second" in samples, samples


@pytest.mark.parametrize("direction", ["upload", "source"])
def test_fanout_copy_keeps_to_the_cap_in_process(
    proxy: FaultProxy, registries: RegistrySet, unique_repo: str, tmp_path: Path,
    direction: str,
) -> None:
    # A cap on uploads to the destination, or (``source:``) on downloads from the source: the
    # upload streams as the blob is read, so the destination's proxy sees the pace either way.
    cap = 2 * MiB
    image = push_oci_image(registries.source, f"{unique_repo}-src", "v1", layers=1,
                           layer_size=4 * MiB, compress=False)
    capped = proxy.host if direction == "upload" else f"source:{registries.source.host}"
    env = fanout_env(write_docker_config(tmp_path / "docker", []),
                     FANOUT_BANDWIDTH=f"{capped}={cap}")
    out = run_fanout(["copy", image.reference, f"{proxy.host}/{unique_repo}"], env, timeout=60)
    assert out.returncode == 0, out.stdout + out.stderr
    pieces = list(proxy.body_pieces)
    total = sum(n for _, n in pieces)
    rate = total / (pieces[-1][0] - pieces[0][0])
    print(f"{total / MiB:.2f} MiB at {rate / MiB:.3f} MiB/s under a cap of {cap / MiB:g} MiB/s")
    assert total >= 4 * MiB
    assert (1 - TOLERANCE) * cap <= rate <= (1 + TOLERANCE) * cap, rate / MiB


def test_fanout_copy_names_a_bad_cap(registries: RegistrySet, tmp_path: Path) -> None:
    env = fanout_env(write_docker_config(tmp_path / "docker", []),
                     FANOUT_BANDWIDTH="dr.example=40MiB,*.partner.example=ten")
    out = run_fanout(["copy", f"{registries.source.host}/none@sha256:{'0' * 64}",
                      f"{registries.dest1.host}/none"], env, timeout=60)
    assert out.returncode == 2, out.stdout + out.stderr
    assert "FANOUT_BANDWIDTH" in out.stderr and "'*.partner.example=ten'" in out.stderr
