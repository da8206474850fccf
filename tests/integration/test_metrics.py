"""``fanout metrics`` as a real process, scraped after real workers copied a release.

A private Redis, three real registries (the source, a destination that works, and one whose
credentials in the workers' Docker config are wrong: a permanent failure, not retried), a real
``celery worker`` and ``fanout enqueue --wait``; then the exporter is scraped with httpx and its
output parsed as Prometheus parses it.
"""

from __future__ import annotations

import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.support.cli import write_docker_config
from tests.support.images import push_oci_image
from tests.support.ports import free_port
from tests.support.queue import (
    ROOT,
    VENV_BIN,
    Process,
    RedisServer,
    queue_env,
    start_worker,
    wait_until,
)
from tests.support.registries import RegistryServer

pytestmark = [pytest.mark.integration, pytest.mark.timeout(90)]

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


@pytest.fixture
def redis_url(tmp_path: Path) -> Iterator[str]:
    server = RedisServer(tmp_path / "redis", persistent=False).start()
    try:
        yield server.url
    finally:
        server.stop()


def fanout(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(VENV_BIN / "fanout"), *args], env=env, cwd=ROOT, text=True,
                          capture_output=True, timeout=60, check=False)


def scrape(port: int) -> Samples:
    response = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10)
    assert response.status_code == 200, response.text
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(response.text)
            for s in family.samples}


def test_the_exporter_reports_what_the_workers_did(
    redis_url: str, fresh_registry: Callable[..., RegistryServer], tmp_path: Path,
) -> None:
    source, good, denied = fresh_registry(), fresh_registry(), fresh_registry(auth="htpasswd")
    docker = write_docker_config(tmp_path / "docker", [denied], wrong_password=[denied.host])
    env = queue_env(redis_url, docker)
    image = push_oci_image(source, "acme/app", "v1", layers=2)
    worker = start_worker("w1", env, tmp_path, loglevel="INFO")
    try:
        done = fanout(env, "enqueue", f"{source.host}/acme/app:v1", f"{good.host}/acme/app",
                      f"{denied.host}/acme/app", "--wait", "--timeout", "20")
    finally:
        worker.stop()
    assert done.returncode == 1, done.stdout + done.stderr  # one destination failed for good
    # A release nobody works on (the worker is gone), routed to its registry's queue.
    waiting = fanout({**env, "FANOUT_ROUTE_BY_REGISTRY": "1"}, "enqueue",
                     f"{source.host}/acme/app:v1", f"{good.host}/acme/waiting")
    assert waiting.returncode == 0, waiting.stderr

    port = free_port()
    exporter = Process("metrics", [str(VENV_BIN / "fanout"), "metrics", "--port", str(port)],
                       tmp_path / "metrics.log", env).start()
    try:
        exporter.wait_for_log(f"serving http://127.0.0.1:{port}/metrics")
        samples = scrape(port)

        # A second exporter on the same port: exit 2, naming the port.
        taken = fanout(env, "metrics", "--port", str(port))
        assert taken.returncode == 2
        assert f"port {port} is already in use" in taken.stderr
    finally:
        exporter.stop()

    def copies(registry: str, outcome: str) -> float:
        return samples[("fanout_copies_total", (("outcome", outcome), ("registry", registry)))]

    assert copies(good.host, "succeeded") == 1
    assert copies(good.host, "failed") == copies(good.host, "retried") == 0
    assert copies(denied.host, "failed") == 1
    assert copies(denied.host, "succeeded") == copies(denied.host, "retried") == 0
    assert samples[("fanout_bytes_total", (("registry", good.host),))] == image.total_blob_bytes
    assert ("fanout_bytes_total", (("registry", denied.host),)) not in samples
    for registry in (good.host, denied.host):
        assert samples[("fanout_copy_seconds_count", (("registry", registry),))] == 1
        assert samples[("fanout_copy_seconds_bucket",
                        (("le", "+Inf"), ("registry", registry)))] == 1
    assert samples[("fanout_lost_workers_total", ())] == 0
    assert samples[("fanout_releases", (("state", "done-failed"),))] == 1
    assert samples[("fanout_releases", (("state", "running"),))] == 1
    assert samples[("fanout_queue_depth", (("queue", "fanout"),))] == 0
    queue = f"fanout.{good.host.replace(':', '_')}"
    assert samples[("fanout_queue_depth", (("queue", queue),))] == 1
    assert samples[("fanout_ledger_up", ())] == 1


def test_a_bad_port_is_a_usage_error(tmp_path: Path) -> None:
    env = queue_env(f"redis://127.0.0.1:{free_port()}", tmp_path)
    for port in ("0", "70000", "http"):
        done = fanout(env, "metrics", "--port", port)
        assert done.returncode == 2, (port, done.stderr)
        assert "is not a port number" in done.stderr


def test_a_redis_that_is_down_is_reported_not_fatal(tmp_path: Path) -> None:
    env = queue_env(f"redis://127.0.0.1:{free_port()}", tmp_path)
    port = free_port()
    exporter = Process("metrics", [str(VENV_BIN / "fanout"), "metrics", "--port", str(port)],
                       tmp_path / "metrics.log", env).start()
    try:
        exporter.wait_for_log("serving")
        samples = wait_until(lambda: scrape(port), 10, "a scrape")
        assert samples == {("fanout_ledger_up", ()): 0}
    finally:
        exporter.stop()
