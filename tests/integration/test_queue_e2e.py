"""The queue end to end: a real Redis, real `celery worker` processes, real registries.

Each test drives the product as an operator would: `fanout enqueue`, workers started with the
commands docker-compose.yml runs (test_compose.py checks that), `fanout status --json`.
Retries are made fast through the workers' environment, never by sleeping.
"""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis

from producer import api
from tests.support.images import blob_exists, manifest_exists, push_oci_image, push_oci_index
from tests.support.ports import free_port
from tests.support.queue import FAST_ENV, Process
from tests.support.registries import RegistryServer, RegistrySet
from workers.ledger import Ledger, Release

# The commands docker-compose.yml runs; the tests add only per-process options (name, pool,
# port) to them. test_compose.py fails if the compose file drifts from these.
REDIS_COMMAND = ["redis-server", "--appendonly", "yes"]
WORKER_COMMAND = ["celery", "-A", "workers.app", "worker", "--loglevel=INFO"]
FLOWER_COMMAND = ["celery", "-A", "workers.app", "flower"]
REGISTRY_COMMAND = ["serve"]  # `registry serve CONFIG`, as tests/support/registries.py runs it

ROOT = Path(__file__).resolve().parents[2]
VENV_BIN = Path(sys.executable).parent
READY_TIMEOUT = 30.0

pytestmark = pytest.mark.timeout(120)


# -- processes --------------------------------------------------------------------------------


@dataclass
class Queue:
    """One Redis database as broker and ledger, and the environment workers and CLI share."""

    url: str
    env: dict[str, str]
    tmp: Path
    processes: list[Process] = field(default_factory=list)

    @property
    def ledger(self) -> Ledger:
        return Ledger(redis.Redis.from_url(self.url))

    def worker(self, name: str) -> Process:
        """`celery worker` in one process (-P solo): a host of its own, as far as Celery knows."""
        argv = [*WORKER_COMMAND, "-P", "solo", "-n", f"{name}@%h", "--without-gossip",
                "--without-mingle"]
        process = Process(name, _venv(argv), self.tmp / f"{name}.log", self.env).start()
        self.processes.append(process)
        process.wait_for_log(" ready.")
        return process

    def fanout(self, *args: str, stdin: str | None = None,
               timeout: float = 60) -> subprocess.CompletedProcess[str]:
        return subprocess.run([str(VENV_BIN / "fanout"), *args], env=self.env, cwd=ROOT,
                              capture_output=True, text=True, input=stdin, timeout=timeout,
                              check=False)

    def enqueue(self, source: str, *destinations: str) -> str:
        done = self.fanout("enqueue", source, *destinations)
        assert done.returncode == 0, done.stderr
        return done.stdout.strip()

    def release(self, release_id: str) -> Release:
        return api.status(release_id, ledger=self.ledger)

    def wait_until(self, release_id: str, check: Callable[[Release], bool],
                   timeout: float = 60, what: str = "") -> Release:
        deadline = time.monotonic() + timeout
        while True:
            release = self.release(release_id)
            if check(release):
                return release
            if time.monotonic() > deadline:
                logs = "\n".join(f"--- {p.name}\n{p.log()[-2000:]}" for p in self.processes)
                raise AssertionError(f"{what or 'condition'} not reached in {timeout}s: "
                                     f"{release.to_dict()}\n{logs}")
            time.sleep(0.1)

    def close(self) -> None:
        for process in reversed(self.processes):
            process.stop()


def _venv(argv: list[str]) -> list[str]:
    return [str(VENV_BIN / argv[0]), *argv[1:]]


@pytest.fixture(scope="module")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A Redis of our own on a free port: nothing else's keys, nothing else's workers."""
    tmp = tmp_path_factory.mktemp("redis")
    port = free_port()
    process = Process("redis", [*REDIS_COMMAND, "--port", str(port), "--bind", "127.0.0.1",
                                "--dir", str(tmp), "--save", ""],
                      tmp / "redis.log", dict(os.environ)).start()
    client = redis.Redis(port=port)
    deadline = time.monotonic() + 10
    while True:
        try:
            client.ping()
            break
        except redis.ConnectionError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)
    yield f"redis://127.0.0.1:{port}"
    process.stop()


def _docker_config(path: Path, auths: dict[str, tuple[str, str]]) -> None:
    entries = {host: {"auth": base64.b64encode(f"{user}:{password}".encode()).decode()}
               for host, (user, password) in auths.items()}
    path.mkdir(parents=True, exist_ok=True)
    (path / "config.json").write_text(json.dumps({"auths": entries}))


def _queue(redis_url: str, db: int, tmp: Path, **extra: str) -> Queue:
    url = f"{redis_url}/{db}"
    redis.Redis.from_url(url).flushdb()
    env = {**os.environ, **FAST_ENV, "FANOUT_BROKER_URL": url, "DOCKER_CONFIG": str(tmp / "docker"),
           **extra}
    env.pop("FANOUT_LEDGER_URL", None)
    env.pop("FANOUT_DESTINATIONS", None)
    _docker_config(tmp / "docker", {})
    return Queue(url, env, tmp)


@pytest.fixture(scope="module")
def queue(redis_server: str, tmp_path_factory: pytest.TempPathFactory,
          registries: RegistrySet) -> Iterator[Queue]:
    """DB 0 with two workers; the Docker config holds a wrong password for `registries.basic`."""
    tmp = tmp_path_factory.mktemp("queue")
    q = _queue(redis_server, 0, tmp)
    assert registries.basic.username is not None
    _docker_config(tmp / "docker", {registries.basic.host: (registries.basic.username,
                                                           "not-the-password")})
    try:
        q.worker("w1")
        q.worker("w2")
        yield q
    finally:
        q.close()


def _states(release: Release) -> dict[str, str]:
    return {name: record.state for name, record in release.destinations.items()}


# -- the tests --------------------------------------------------------------------------------


def test_a_destination_that_is_down_retries_until_it_is_back(
    queue: Queue, registries: RegistrySet, fresh_registry: Callable[..., RegistryServer],
    unique_repo: str,
) -> None:
    image = push_oci_index(registries.source, unique_repo, "v1")
    down = fresh_registry()
    down.stop()  # port closed: connection refused
    targets = [f"{r.host}/{unique_repo}" for r in (registries.dest1, registries.dest2, down)]

    release_id = queue.enqueue(f"{registries.source.host}/{unique_repo}:v1", *targets)

    queue.wait_until(release_id, lambda r: (
        r.destinations[targets[0]].state == r.destinations[targets[1]].state == "succeeded"
        and r.destinations[targets[2]].state in ("retrying", "running")
        and r.destinations[targets[2]].attempts >= 2), what="two done, the third retrying")
    down.start()
    queue.wait_until(release_id, lambda r: r.done, what="all done")

    status = queue.fanout("status", release_id, "--json")
    assert status.returncode == 0, status.stdout + status.stderr
    document = json.loads(status.stdout)
    records = document["destinations"]
    assert {name: r["state"] for name, r in records.items()} == dict.fromkeys(targets,
                                                                              "succeeded")
    assert records[targets[2]]["attempts"] > 1
    assert "ConnectionFailed" in (records[targets[2]]["error_type"] or "")
    assert records[targets[0]]["attempts"] == records[targets[1]]["attempts"] == 1
    assert manifest_exists(down, f"{unique_repo}@{image.digest}")
    assert manifest_exists(down, f"{unique_repo}:v1")


def test_denied_credentials_fail_at_once_and_alone(
    queue: Queue, registries: RegistrySet, unique_repo: str,
) -> None:
    push_oci_image(registries.source, unique_repo, "v1", layers=1)
    targets = [f"{r.host}/{unique_repo}" for r in (registries.dest1, registries.basic,
                                                   registries.dest2)]

    done = queue.fanout("enqueue", f"{registries.source.host}/{unique_repo}:v1", *targets,
                        "--wait", "--timeout", "60", "--json")

    assert done.returncode == 1, done.stderr
    records = json.loads(done.stdout)["destinations"]
    assert {name: r["state"] for name, r in records.items()} == {
        targets[0]: "succeeded", targets[1]: "failed", targets[2]: "succeeded"}
    denied = records[targets[1]]
    assert denied["attempts"] == 1
    assert denied["error_type"] == "Unauthorized"
    assert "not-the-password" not in done.stdout + done.stderr
    table = queue.fanout("status", json.loads(done.stdout)["id"])
    assert table.returncode == 1
    assert "Unauthorized" in table.stdout and "not-the-password" not in table.stdout


def test_the_same_release_twice_is_a_no_op(
    queue: Queue, registries: RegistrySet, unique_repo: str,
) -> None:
    push_oci_index(registries.source, unique_repo, "v1")
    source = f"{registries.source.host}/{unique_repo}:v1"
    targets = [f"{r.host}/{unique_repo}" for r in (registries.dest1, registries.dest2)]
    first = queue.fanout("enqueue", source, *targets, "--wait", "--timeout", "60", "--json")
    assert first.returncode == 0, first.stderr

    second = queue.fanout("enqueue", source, *targets, "--wait", "--timeout", "60", "--json")

    assert second.returncode == 0, second.stderr
    before = json.loads(first.stdout)["destinations"]
    after = json.loads(second.stdout)["destinations"]
    for target in targets:
        assert before[target]["stats"]["blobs_uploaded"] == 7
        assert after[target]["attempts"] == 1
        assert after[target]["stats"]["blobs_uploaded"] == 0
        assert after[target]["stats"]["manifests_copied"] == 0
        assert after[target]["stats"]["manifests_skipped"] == 1
        assert after[target]["bytes"] == 0


@pytest.mark.timeout(150)
def test_a_hundred_releases_to_three_destinations(
    queue: Queue, registries: RegistrySet, fresh_registry: Callable[..., RegistryServer],
    unique_repo: str,
) -> None:
    image = push_oci_image(registries.source, unique_repo, "v1", layers=1, layer_size=4096)
    third = fresh_registry()
    hosts = [registries.dest1.host, registries.dest2.host, third.host]
    env = dict(queue.env)

    ledger = queue.ledger

    ids = [api.enqueue(image.reference, [f"{h}/{unique_repo}-{i}" for h in hosts], env=env,
                       ledger=ledger)[0] for i in range(100)]

    deadline = time.monotonic() + 120
    pending = list(ids)
    while pending and time.monotonic() < deadline:
        pending = [i for i in pending if not api.status(i, ledger=ledger).done]
        time.sleep(0.2)
    assert not pending, f"{len(pending)} releases not done"
    releases = [api.status(i, ledger=ledger) for i in ids]
    assert all(r.ok for r in releases), [r.to_dict() for r in releases if not r.ok][:2]
    workers = {rec.worker for r in releases for rec in r.destinations.values()}
    assert len(workers) == 2, workers  # both workers took a share
    assert blob_exists(third, f"{unique_repo}-99", image.blobs[0])


@pytest.mark.timeout(150)
def test_a_worker_killed_mid_copy_hands_the_release_over(
    redis_server: str, tmp_path: Path, registries: RegistrySet,
    fresh_registry: Callable[..., RegistryServer], unique_repo: str,
) -> None:
    # Its own database and workers: the module's workers must not take these tasks.
    q = _queue(redis_server, 1, tmp_path)
    try:
        _kill_mid_copy(q, registries, fresh_registry(), unique_repo)
    finally:
        q.close()


def _kill_mid_copy(q: Queue, registries: RegistrySet, dest: RegistryServer,
                   unique_repo: str) -> None:
    image = push_oci_image(registries.source, unique_repo, "v1", layers=1,
                           layer_size=150 * 1024 * 1024, compress=False)
    workers = {"k1": q.worker("k1"), "k2": q.worker("k2")}
    target = f"{dest.host}/{unique_repo}"
    ledger = q.ledger

    # The same digest to the same destination twice, at once: each worker takes one; the
    # lock lets one copy while the other waits, never copying alongside it.
    ids = [api.enqueue(image.reference, [target], tags=["v1"], env=q.env, ledger=ledger)[0]
           for _ in range(2)]

    def copying() -> tuple[Release, Release] | None:
        one, two = (q.release(i) for i in ids)
        for a, b in ((one, two), (two, one)):
            if (a.destinations[target].state == "running" and _upload_under_way(dest)
                    and b.destinations[target].error_type == "LockHeld"):
                return a, b
        return None

    deadline = time.monotonic() + 30
    while (pair := copying()) is None:
        assert time.monotonic() < deadline, [q.release(i).to_dict() for i in ids]
        time.sleep(0.05)
    first, second = pair[0].id, pair[1].id
    assert pair[1].destinations[target].attempts == 0
    copier = pair[0].destinations[target].worker or ""
    victim = workers[copier.split("@")[0]]
    other = next(w for w in workers.values() if w is not victim)

    victim.kill()  # kill -9: no goodbye, the message stays unacknowledged
    assert "succeeded" not in q.release(first).destinations[target].state
    # Redis hands an unacknowledged message back once the visibility timeout has passed;
    # a worker sweeps for such messages when it starts (and every ~100 s after), so bring a
    # replacement up once the message is due, as an orchestrator would.
    _wait_visibility_passed(q, first)
    q.worker("k3")

    final = q.wait_until(first, lambda r: r.done, timeout=60, what="redelivered copy done")
    record = final.destinations[target]
    assert record.state == "succeeded"
    assert record.attempts == 2
    assert record.worker is not None and record.worker.split("@")[0] != victim.name
    assert q.wait_until(second, lambda r: r.done, timeout=30).ok
    assert other.proc is not None and other.proc.poll() is None
    assert manifest_exists(dest, f"{unique_repo}@{image.digest}")
    assert manifest_exists(dest, f"{unique_repo}:v1")
    assert all(blob_exists(dest, unique_repo, blob) for blob in image.blobs)


def _upload_under_way(registry: RegistryServer) -> bool:
    """Bytes of an unfinished upload are on the registry's disk."""
    uploads = registry.root / "storage/docker/registry/v2/repositories"
    return any(data.stat().st_size > 0 for data in uploads.glob("**/_uploads/*/data"))


def _wait_visibility_passed(q: Queue, release_id: str) -> None:
    """Until the killed worker's message (the task of ``release_id``) is due for redelivery:
    unacknowledged for longer than the visibility timeout, or already handed back to the queue
    by the live worker's sweep (every 10 s), which can come first when the machine is busy."""
    client = redis.Redis.from_url(q.url)
    visibility = float(FAST_ENV["FANOUT_VISIBILITY_TIMEOUT"])
    tags = [tag for tag, message in client.hgetall("unacked").items()
            if release_id.encode() in _message_body(message)]
    assert len(tags) == 1, f"the killed worker's message is not unacknowledged: {tags}"
    deadline = time.monotonic() + visibility + 10
    while time.monotonic() < deadline:
        delivered = client.zscore("unacked_index", tags[0])
        if delivered is None or time.time() - delivered > visibility + 0.5:
            return
        time.sleep(0.2)
    raise AssertionError("the killed worker's message never became due for redelivery")


def _message_body(unacked: bytes) -> bytes:
    """The task body of one of kombu's ``unacked`` entries: ``[message, exchange, key]``."""
    message = json.loads(unacked)[0]
    return base64.b64decode(message["body"])


def test_flower_asks_for_credentials_and_sees_the_workers(
    queue: Queue, tmp_path: Path,
) -> None:
    port = free_port()
    env = {**queue.env, "FLOWER_BASIC_AUTH": "ops:flower-test-secret"}
    flower = Process("flower", _venv([*FLOWER_COMMAND, f"--port={port}",
                                      "--address=127.0.0.1"]), tmp_path / "flower.log", env)
    flower.start()
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + READY_TIMEOUT
        while True:
            try:
                anonymous = httpx.get(f"{url}/api/workers", timeout=2)
                break
            except httpx.TransportError:
                if time.monotonic() > deadline or flower.proc.poll() is not None:  # type: ignore[union-attr]
                    raise AssertionError(f"flower did not start:\n{flower.log()}") from None
                time.sleep(0.1)
        workers: dict[str, Any] = {}
        while time.monotonic() < deadline and len(workers) < 2:
            answer = httpx.get(f"{url}/api/workers", params={"refresh": "1"},
                               auth=("ops", "flower-test-secret"), timeout=10)
            assert answer.status_code == 200
            workers = answer.json()
        wrong = httpx.get(f"{url}/api/workers", auth=("ops", "nope"), timeout=5)
    finally:
        flower.stop()
    assert anonymous.status_code == 401
    assert wrong.status_code == 401
    assert sorted(name.split("@")[0] for name in workers) == ["w1", "w2"]
    assert "flower-test-secret" not in flower.log()
