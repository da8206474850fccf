"""``celery -A workers.app beat`` for real: beat reads ``[verify]`` from the fanout.toml that
``FANOUT_CONFIG`` names, and a real worker runs the scheduled ``fanout.verify``, which finds a
destination the ledger says landed but is gone and sends it again. And a bad fanout.toml stops
beat at start with the key named.

The scheduled sync runs through the same beat and tasks; its end-to-end test comes with the
sync itself. Each test starts its own Redis (beat, the worker and the ledger share it), its own
worker and beat, on free ports and files under ``tmp_path``: xdist-safe.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.images import manifest_exists, push_oci_image
from tests.support.queue import (
    VENV_BIN,
    Process,
    RedisServer,
    ledger_for,
    queue_env,
    start_worker,
    wait_until,
)
from tests.support.registries import RegistrySet

# docker-compose.yml's beat runs this (tests/integration/test_compose.py checks it).
BEAT_COMMAND = ["celery", "-A", "workers.app", "beat", "--loglevel=INFO"]

pytestmark = pytest.mark.timeout(60)


def start_beat(env: dict[str, str], tmp: Path) -> Process:
    argv = [str(VENV_BIN / BEAT_COMMAND[0]), *BEAT_COMMAND[1:], "--schedule",
            str(tmp / "beat-schedule")]
    return Process("beat", argv, tmp / "beat.log", env).start()


@pytest.fixture
def redis_url(tmp_path: Path) -> Iterator[str]:
    server = RedisServer(tmp_path / "redis", persistent=False).start()
    try:
        yield server.url
    finally:
        server.stop()


def test_beat_runs_the_scheduled_verify_which_repairs_drift(
    tmp_path: Path, redis_url: str, registries: RegistrySet, unique_repo: str,
) -> None:
    image = push_oci_image(registries.source, unique_repo, layers=1)
    destination = f"{registries.dest1.host}/{unique_repo}"
    # The ledger says the image landed; the destination never had it (deleted by hand, say).
    ledger = ledger_for(redis_url)
    release_id = ledger.create_release(image.reference, [(destination, ("v1",))])
    ledger.mark_running(release_id, destination, worker="gone@host")
    ledger.mark_succeeded(release_id, destination, stats={}, seconds=0.1)

    config = tmp_path / "fanout.toml"
    config.write_text('[verify]\nevery = "2s"\nsince = "1h"\nrepair = true\n')
    docker = tmp_path / "docker"
    docker.mkdir()
    (docker / "config.json").write_text('{"auths": {}}')
    env = queue_env(redis_url, docker, FANOUT_CONFIG=str(config))
    worker = start_worker("scheduled", env, tmp_path, loglevel="INFO")
    beat = start_beat(env, tmp_path)
    try:
        wait_until(lambda: manifest_exists(registries.dest1, f"{unique_repo}:v1"), 30,
                   f"the scheduled verify to repair {destination}\n{beat.log()[-2000:]}\n"
                   f"{worker.log()[-3000:]}")
        assert manifest_exists(registries.dest1, f"{unique_repo}@{image.digest}")
        assert "Scheduler: Sending due task verify (fanout.verify)" in beat.log()
        wait_until(lambda: "1 drifted, 1 sent again" in worker.log(), 10,
                   f"the verify's summary in the worker's log\n{worker.log()[-3000:]}")
        record = ledger.get(release_id)
        assert record is not None and record.destinations[destination].attempts >= 2
    finally:
        beat.stop()
        worker.stop()


def test_a_bad_config_stops_beat_at_start_naming_the_key(tmp_path: Path, redis_url: str) -> None:
    config = tmp_path / "fanout.toml"
    config.write_text('[verify]\nevery = "2s"\n')  # no since
    env = queue_env(redis_url, tmp_path, FANOUT_CONFIG=str(config))
    beat = start_beat(env, tmp_path)
    try:
        assert beat.wait(30) != 0
    finally:
        beat.stop()
    assert "since" in beat.log() and str(config) in beat.log()
