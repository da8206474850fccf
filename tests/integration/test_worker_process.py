"""A real ``celery -A workers.app worker`` (prefork, two children) on a Redis of its own,
copying between real registries; skopeo judges the result."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import redis
from celery import Celery

from tests.support.images import PushedImage, push_oci_index
from tests.support.ports import free_port
from tests.support.registries import RegistrySet
from tests.support.skopeo import assert_skopeo_same
from workers.app import celery_config
from workers.ledger import DestinationRecord, Ledger
from workers.settings import WorkerSettings

ROOT = Path(__file__).resolve().parents[2]
FINAL = ("succeeded", "failed")
WAIT_S = 60.0

pytestmark = pytest.mark.skipif(shutil.which("redis-server") is None,
                                reason="redis-server is not installed")


@dataclass
class Worker:
    proc: subprocess.Popen[bytes]
    log_path: Path
    ledger: Ledger
    client: Celery

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def send(self, release_id: str, source: str, destination: str, tags: list[str]) -> str:
        task_id = f"{release_id}:{destination}"
        self.client.send_task("fanout.copy", kwargs={
            "release_id": release_id, "source": source, "destination": destination,
            "tags": tags, "referrers": {"enabled": True, "types": []},
        }, queue="fanout", task_id=task_id)
        return task_id

    def wait_log(self, text: str) -> list[str]:
        """The worker's log lines holding ``text``, once there is at least one."""
        deadline = time.monotonic() + 10
        while True:
            lines = [line for line in self.log().splitlines() if text in line]
            if lines:
                return lines
            assert time.monotonic() < deadline, f"no {text!r} in:\n{self.log()[-3000:]}"
            time.sleep(0.05)

    def wait_final(self, release_id: str, destination: str) -> DestinationRecord:
        deadline = time.monotonic() + WAIT_S
        while True:
            record = self.ledger.record(release_id, destination)
            if record is not None and record.state in FINAL:
                return record
            assert self.proc.poll() is None, f"worker exited:\n{self.log()[-3000:]}"
            assert time.monotonic() < deadline, (
                f"{destination} still {record.state if record else 'unknown'} after "
                f"{WAIT_S}s:\n{self.log()[-3000:]}")
            time.sleep(0.05)


def _start_redis(root: Path) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    proc = subprocess.Popen(
        ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
         "--appendonly", "no", "--dir", str(root)],
        stdout=(root / "redis.log").open("wb"), stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
    )
    url = f"redis://127.0.0.1:{port}/0"
    client: redis.Redis[Any] = redis.Redis.from_url(url)
    deadline = time.monotonic() + 10
    while True:
        try:
            client.ping()
            return proc, url
        except redis.ConnectionError:
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                raise RuntimeError((root / "redis.log").read_text()) from None
            time.sleep(0.02)


def _stop(proc: subprocess.Popen[bytes], *, group: bool = False) -> None:
    """Terminate, then kill: the worker (and its pool children, in its own group) must go."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    if group:
        # Pool children the main process did not take with it.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)


@pytest.fixture(scope="module")
def worker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Worker]:
    root = tmp_path_factory.mktemp("worker")
    redis_proc, url = _start_redis(root)
    home = root / "home"
    (home / ".docker").mkdir(parents=True)
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(home),
        "DOCKER_CONFIG": str(home / ".docker"),
        "PYTHONPATH": str(ROOT),
        "FANOUT_BROKER_URL": url,
        "FANOUT_TASK_TIME_LIMIT": "60",
        "FANOUT_RETRY_BACKOFF": "0.2",
        "FANOUT_RETRY_BACKOFF_MAX": "1",
        "FANOUT_LOCK_RETRY": "0.5",
        # Each attempt at a closed port spends ~8 s in the engine's own request retries.
        "FANOUT_TASK_MAX_RETRIES": "1",
    }
    log_path = root / "worker.log"
    proc = subprocess.Popen(
        [sys.executable, "-m", "celery", "-A", "workers.app", "worker", "--pool=prefork",
         "--concurrency=2", "-l", "info", "-n", f"test-{os.getpid()}@%h",
         "--without-gossip", "--without-mingle"],
        cwd=ROOT, env=env, stdout=log_path.open("wb"), stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL, start_new_session=True,
    )
    client = Celery("fanout-test")
    client.conf.update(celery_config(WorkerSettings.from_env(env)))
    ledger = Ledger(redis.Redis.from_url(url, decode_responses=True))
    try:
        yield Worker(proc, log_path, ledger, client)
    finally:
        client.close()
        _stop(proc, group=True)
        _stop(redis_proc)


@pytest.fixture(scope="module")
def image(registries: RegistrySet) -> PushedImage:
    return push_oci_index(registries.source, "test/worker-process-source", "v1")


def test_a_task_copies_then_a_second_is_a_no_op(
    worker: Worker, registries: RegistrySet, image: PushedImage, unique_repo: str,
) -> None:
    destination = f"{registries.dest1.host}/{unique_repo}"
    first = worker.ledger.create_release(image.reference, [(destination, ["v1"])])
    worker.send(first, image.reference, destination, ["v1"])

    record = worker.wait_final(first, destination)
    assert record.state == "succeeded", record
    assert (record.attempts, record.last_error) == (1, None)
    assert record.stats["blobs_uploaded"] + record.stats["blobs_mounted"] == len(image.blobs)
    assert record.bytes > 0 and record.worker
    assert_skopeo_same(image.reference, f"{destination}:v1")

    second = worker.ledger.create_release(image.reference, [(destination, ["v1"])])
    worker.send(second, image.reference, destination, ["v1"])
    again = worker.wait_final(second, destination)
    assert again.state == "succeeded", again
    assert again.stats["blobs_uploaded"] == again.stats["blobs_mounted"] == 0
    assert again.stats["manifests_copied"] == 0 and again.bytes == 0
    assert again.seconds < 5
    release = worker.ledger.get(second)
    assert release is not None and release.done and release.ok


def test_a_source_not_pinned_fails_without_retries(
    worker: Worker, registries: RegistrySet, image: PushedImage, unique_repo: str,
) -> None:
    destination = f"{registries.dest1.host}/{unique_repo}"
    tagged = image.tagged_reference or ""
    release_id = worker.ledger.create_release(image.reference, [(destination, ["v1"])])
    task_id = worker.send(release_id, tagged, destination, ["v1"])

    record = worker.wait_final(release_id, destination)
    assert (record.state, record.error_type, record.attempts) == ("failed", "InvalidTask", 0)
    assert "not pinned by digest" in (record.last_error or "")
    # The task returned (acknowledged once) rather than asking Celery for a retry.
    worker.wait_log(f"fanout.copy[{task_id}] succeeded")
    assert len(worker.wait_log(f"fanout.copy[{task_id}] received")) == 1
    assert not [line for line in worker.log().splitlines()
                if f"fanout.copy[{task_id}] retry" in line]


def test_a_transient_failure_retries_then_fails_for_good(
    worker: Worker, image: PushedImage, unique_repo: str,
) -> None:
    # Nothing listens here: every attempt is refused, a transient error, until retries run out.
    destination = f"127.0.0.1:{free_port()}/{unique_repo}"
    release_id = worker.ledger.create_release(image.reference, [(destination, ["v1"])])
    task_id = worker.send(release_id, image.reference, destination, ["v1"])

    record = worker.wait_final(release_id, destination)
    assert record.state == "failed", record
    assert record.attempts == 2  # FANOUT_TASK_MAX_RETRIES=1: one retry after the first attempt
    assert record.error_type == "ConnectionFailed"
    assert "gave up after 2 attempts" in (record.last_error or "")
    assert len(worker.wait_log(f"fanout.copy[{task_id}] retry")) == 1
