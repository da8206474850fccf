"""RabbitMQ as the broker: the same release flows through ``amqp://`` with the ledger in Redis."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.support import images
from tests.support.cli import run_fanout, write_docker_config
from tests.support.queue import RedisServer, queue_env, start_worker
from tests.support.registries import RegistrySet
from tests.support.skopeo import assert_skopeo_same


@pytest.mark.timeout(120)
def test_a_release_through_rabbitmq(
    vhost: str, registries: RegistrySet, unique_repo: str, tmp_path: Path,
) -> None:
    redis_server = RedisServer(tmp_path / "redis").start()
    try:
        config = write_docker_config(tmp_path / "docker", registries.all())
        env = queue_env(f"amqp://guest:guest@127.0.0.1:5672/{vhost}", config,
                        FANOUT_LEDGER_URL=redis_server.url)
        worker = start_worker("rabbit", env, tmp_path, loglevel="INFO")
        try:
            image = images.push_oci_index(registries.source, unique_repo, "v1")
            dests = [f"{s.host}/{unique_repo}" for s in (registries.dest1, registries.basic)]
            out = run_fanout(["enqueue", image.tagged_reference or "", *dests, "--wait",
                              "--timeout", "60", "--json"], env, timeout=90)
            assert out.returncode == 0, out.stdout + out.stderr + worker.log()[-3000:]
            document = json.loads(out.stdout)
            states = {d: r["state"] for d, r in document["destinations"].items()}
            assert states == dict.fromkeys(dests, "succeeded")
            assert "guest:guest" not in out.stdout + out.stderr
        finally:
            worker.stop()
        assert_skopeo_same(image.reference, f"{registries.dest1.host}/{unique_repo}:v1")
        assert_skopeo_same(image.reference, f"{registries.basic.host}/{unique_repo}:v1",
                           dst_creds=registries.basic.creds)
    finally:
        redis_server.stop()
