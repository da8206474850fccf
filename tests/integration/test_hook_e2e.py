"""A push anywhere becomes a release, for real: a docker-registry whose ``notifications``
point at a real ``fanout serve``, a real Redis and Celery worker, two destination registries.

Push a multi-platform image to the source registry and nothing else: the registry tells fanout,
fanout enqueues one release (not one per platform), the worker copies it to both destinations,
byte for byte. A push whose tag no rule wants, sent first, makes no release.
"""

from __future__ import annotations

import json
import secrets
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.cli import write_docker_config
from tests.support.images import push_oci_index
from tests.support.queue import RedisServer, ledger_for, queue_env, start_worker, wait_until
from tests.support.registries import RegistryServer, RegistrySet, start_registry
from tests.support.serve import Served, serving, token_toml
from tests.support.skopeo import assert_skopeo_same
from workers.ledger import Release

pytestmark = [
    pytest.mark.integration,
    pytest.mark.timeout(120),
    pytest.mark.skipif(shutil.which("redis-server") is None,
                       reason="redis-server is not installed"),
]

TAG = "v1.0.0"


def point_notifications_at(registry: RegistryServer, served: Served, token: str) -> None:
    """Restart ``registry`` (same port, same storage) sending its events to fanout, as the
    configuration in docs/api.md says."""
    registry.stop()
    config = json.loads(registry.config_path.read_text())
    config["notifications"] = {"endpoints": [{
        "name": "fanout",
        "url": f"{served.url}/v1/hooks/distribution",
        "headers": {"Authorization": [f"Bearer {token}"]},
        "timeout": "1s",
        "threshold": 5,
        "backoff": "1s",
    }]}
    registry.config_path.write_text(json.dumps(config, indent=2))
    registry.start()


@pytest.fixture
def source(tmp_path: Path) -> Iterator[RegistryServer]:
    """A source registry of the test's own: its config is rewritten to notify fanout."""
    server = start_registry(tmp_path / "source")
    yield server
    server.close()


def test_a_push_to_the_registry_reaches_every_destination_as_one_release(
    source: RegistryServer, registries: RegistrySet, redis_server: RedisServer,
    unique_repo: str, tmp_path: Path,
) -> None:
    token = secrets.token_urlsafe(24)
    destinations = [f"{registries.dest1.host}/{unique_repo}",
                    f"{registries.dest2.host}/{unique_repo}"]
    config = (f"[destinations]\nrelease = {json.dumps(destinations)}\n\n"
              + token_toml("registry", token, ["release"], [f"{source.host}/*"])
              + f'\n[[rules]]\nsource = "{source.host}/test/*"\ntags = ["v*"]\n'
                'to = "release"\n')
    env = queue_env(f"{redis_server.url}/0", write_docker_config(tmp_path / "docker", []))
    worker = start_worker("hooks", env, tmp_path, loglevel="INFO")
    try:
        with serving(tmp_path / "serve", config, env=env) as served:
            point_notifications_at(source, served, token)
            ledger = ledger_for(env["FANOUT_BROKER_URL"])
            # Sent first, in the registry's one queue of events: no rule wants "latest".
            push_oci_index(source, unique_repo, "latest", layer_size=4096)
            image = push_oci_index(source, unique_repo, TAG, layer_size=4096)

            def done() -> Release | None:
                ids = ledger.recent()
                release = ledger.get(ids[0]) if ids else None
                return release if release is not None and release.done else None

            release = wait_until(done, 60, "a release done",
                                 lambda: f"{served.log()[-3000:]}\n{worker.log()[-3000:]}")
            log = served.log()
    finally:
        worker.stop()
    assert ledger.recent() == [release.id]  # one release: not one per platform, none for latest
    assert (release.source, release.digest) == (image.reference, image.digest)
    assert release.ok, {d: (r.state, r.last_error) for d, r in release.destinations.items()}
    assert sorted(release.destinations) == sorted(destinations)
    assert {r.tags for r in release.destinations.values()} == {(TAG,)}
    for destination in destinations:
        assert_skopeo_same(image.reference, f"{destination}:{TAG}")
    assert token not in log
    answers = [line.split(" -> ")[1][:3] for line in log.splitlines()
               if "POST /v1/hooks/distribution -> " in line]
    assert answers.count("202") == 1 and set(answers) == {"200", "202"}, answers
