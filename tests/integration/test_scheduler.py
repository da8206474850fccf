"""``celery -A workers.app beat`` for real: beat reads ``[verify]`` from the fanout.toml that
``FANOUT_CONFIG`` names, and a real worker runs the scheduled ``fanout.verify``, which finds a
destination the ledger says landed but is gone and sends it again. And a bad fanout.toml stops
beat at start with the key named.

And a mirror with ``every``: a tag newly pushed to its source reaches the destination with no one
running a command, and the run is recorded. Each test starts its own Redis (beat, the worker
and the ledger share it), its own worker and beat, on free ports and files under ``tmp_path``:
xdist-safe.
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
from workers.mirror_runs import MirrorRuns

# docker-compose.yml's beat runs this (tests/integration/test_compose.py checks it).
BEAT_COMMAND = ["celery", "-A", "workers.app", "beat", "--loglevel=INFO"]

pytestmark = pytest.mark.timeout(60)


def start_beat(env: dict[str, str], tmp: Path) -> Process:
    argv = [str(VENV_BIN / BEAT_COMMAND[0]), *BEAT_COMMAND[1:], "--schedule",
            str(tmp / "beat-schedule")]
    return Process("beat", argv, tmp / "beat.log", env).start()


def start_scheduled(redis_url: str, config: Path, tmp: Path) -> tuple[Process, Process]:
    """A worker and a beat on ``redis_url``, reading ``config``."""
    docker = tmp / "docker"
    docker.mkdir()
    (docker / "config.json").write_text('{"auths": {}}')
    env = queue_env(redis_url, docker, FANOUT_CONFIG=str(config))
    worker = start_worker("scheduled", env, tmp, loglevel="INFO")
    return worker, start_beat(env, tmp)


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
    worker, beat = start_scheduled(redis_url, config, tmp_path)
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


def test_beat_syncs_a_mirror_so_a_newly_pushed_tag_arrives_with_no_command_run(
    tmp_path: Path, redis_url: str, registries: RegistrySet, unique_repo: str,
) -> None:
    first = push_oci_image(registries.source, unique_repo, "1.0", layers=1)
    destination = f"{registries.dest1.host}/{unique_repo}"
    config = tmp_path / "fanout.toml"
    config.write_text(f"""
[destinations]
dr = ["{destination}"]

[[mirrors]]
name = "app"
source = "{registries.source.host}/{unique_repo}"
tags = ["1.*"]
to = "dr"
every = "2s"
""")
    worker, beat = start_scheduled(redis_url, config, tmp_path)
    try:
        wait_until(lambda: manifest_exists(registries.dest1, f"{unique_repo}:1.0"), 30,
                   f"the scheduled sync to copy 1.0\n{beat.log()[-2000:]}\n"
                   f"{worker.log()[-3000:]}")
        # Pushed while beat and the worker run; nobody runs a command.
        second = push_oci_image(registries.source, unique_repo, "1.1", layers=1)
        wait_until(lambda: manifest_exists(registries.dest1, f"{unique_repo}:1.1"), 30,
                   f"the scheduled sync to copy 1.1\n{worker.log()[-3000:]}")
        assert manifest_exists(registries.dest1, f"{unique_repo}@{second.digest}")
        assert manifest_exists(registries.dest1, f"{unique_repo}@{first.digest}")
        assert "Scheduler: Sending due task sync:app (fanout.sync)" in beat.log()
        runs = MirrorRuns(ledger_for(redis_url).client)
        wait_until(lambda: runs.last_success("app"), 10, "a recorded run")
        last = runs.last("app")
        assert last is not None and last.ok and last.trigger == "schedule"
        releases = ledger_for(redis_url).recent_releases(50)
        assert releases and {r.trigger for r in releases} == {"sync:app"}
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
