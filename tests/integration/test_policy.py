"""Policy at the workers, with real processes: a task to a destination outside
FANOUT_ALLOWED_DESTINATIONS fails for good with PolicyDenied, and that registry hears nothing at
all, while an allowed destination of the same release is copied."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from producer import api
from tests.support.cli import write_docker_config
from tests.support.fault_proxy import FaultProxy
from tests.support.images import push_oci_image
from tests.support.queue import RedisServer, ledger_for, queue_env, start_worker, wait_until
from tests.support.registries import RegistrySet
from tests.support.skopeo import assert_skopeo_same
from workers.ledger import Release

pytestmark = [
    pytest.mark.integration,
    pytest.mark.timeout(120),
    pytest.mark.skipif(shutil.which("redis-server") is None,
                       reason="redis-server is not installed"),
]


def test_a_destination_outside_the_policy_is_refused_without_a_request(
    registries: RegistrySet, unique_repo: str, tmp_path: Path, redis_server: RedisServer,
) -> None:
    image = push_oci_image(registries.source, unique_repo, "v1", layers=1)
    with FaultProxy(registries.dest2.url) as forbidden:
        allowed = f"{registries.dest1.host}/{unique_repo}"
        denied = f"{forbidden.host}/{unique_repo}"
        env = queue_env(f"{redis_server.url}/0", write_docker_config(tmp_path / "d", []),
                        FANOUT_ALLOWED_DESTINATIONS=f"{registries.dest1.host}/test/*")
        worker = start_worker("policy", env, tmp_path, loglevel="INFO")
        try:
            ledger = ledger_for(env["FANOUT_BROKER_URL"])
            [release_id] = api.enqueue(image.reference, [allowed, denied], tags=["v1"],
                                       env=env, ledger=ledger)

            def done() -> Release | None:
                release = api.status(release_id, ledger=ledger)
                return release if release.done else None

            release = wait_until(done, 60, "the release done", lambda: worker.log()[-3000:])
        finally:
            worker.stop()
        seen = forbidden.requests()
    assert release.destinations[allowed].state == "succeeded"
    refused = release.destinations[denied]
    assert (refused.state, refused.error_type) == ("failed", "PolicyDenied")
    assert "FANOUT_ALLOWED_DESTINATIONS" in (refused.last_error or "")
    assert refused.attempts == 1  # for good: not retried
    assert seen == []  # not even a ping
    assert_skopeo_same(image.reference, f"{allowed}:v1")
