"""Release-finished notifications end to end: real ``celery worker`` processes, real Redis and
registries, and a real HTTP receiver on a loopback port that checks every signature."""

from __future__ import annotations

import hashlib
import hmac
import json
import shutil
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import redis

from producer import api
from tests.support.cli import fanout_env, run_fanout, write_docker_config
from tests.support.fault_proxy import Delay, FaultProxy, Rule
from tests.support.images import PushedImage, push_oci_image
from tests.support.queue import (
    Process,
    RedisServer,
    ledger_for,
    queue_env,
    start_workers,
    wait_until,
)
from tests.support.registries import RegistrySet
from workers.ledger import Ledger

SECRET = "notify-secret-d0c5e7"
HOOK_PATH = "/hooks/T0/planted-path-5f3a"
# Fast notification retries; FAST_ENV's visibility timeout (14 s) bounds backoff max + timeout.
NOTIFY_ENV = {"FANOUT_NOTIFY_SECRET": SECRET, "FANOUT_NOTIFY_BACKOFF": "0.2",
              "FANOUT_NOTIFY_BACKOFF_MAX": "1", "FANOUT_NOTIFY_TIMEOUT": "5"}
QUIET = 1.5  # how long "no more deliveries" is watched for, after the one expected

pytestmark = [
    pytest.mark.timeout(90),
    pytest.mark.skipif(shutil.which("redis-server") is None, reason="redis-server is missing"),
]


@dataclass
class Delivery:
    headers: dict[str, str]
    body: bytes
    signed: bool
    answered: int


class Receiver:
    """A webhook receiver: answers ``script`` first (e.g. 503, 503), then 200; verifies the
    signature of every request and keeps them all."""

    def __init__(self) -> None:
        self.deliveries: list[Delivery] = []
        self.script: list[int] = []
        self._lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                expected = "sha256=" + hmac.new(SECRET.encode(), body,
                                                hashlib.sha256).hexdigest()
                signed = hmac.compare_digest(
                    self.headers.get("X-Fanout-Signature-256", ""), expected)
                with receiver._lock:
                    status = receiver.script.pop(0) if receiver.script else 200
                    if not signed or self.path != HOOK_PATH:
                        status = 401
                    receiver.deliveries.append(Delivery(
                        {k.lower(): v for k, v in self.headers.items()}, body, signed, status))
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}{HOOK_PATH}"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self._thread.start()

    def reset(self, *script: int) -> None:
        with self._lock:
            self.deliveries.clear()
            self.script = list(script)

    def accepted(self) -> list[Delivery]:
        with self._lock:
            return [d for d in self.deliveries if d.answered == 200]

    def all(self) -> list[Delivery]:
        with self._lock:
            return list(self.deliveries)

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@dataclass
class Pool:
    env: dict[str, str]
    ledger: Ledger
    workers: list[Process]

    def enqueue(self, image: PushedImage, destinations: list[str]) -> str:
        [release_id] = api.enqueue(image.reference, destinations, tags=["v1"], env=self.env,
                                   ledger=self.ledger)
        return release_id

    def logs(self) -> str:
        return "\n".join(w.log() for w in self.workers)


def start_pool(server: RedisServer, db: int, docker: Path, log_dir: Path, names: list[str],
               **extra: str) -> Pool:
    url = f"{server.url}/{db}"
    redis.Redis.from_url(url).flushdb()
    env = queue_env(url, docker, **NOTIFY_ENV, **extra)
    return Pool(env, ledger_for(url), start_workers(names, env, log_dir))


@pytest.fixture(scope="module")
def receiver() -> Iterator[Receiver]:
    started = Receiver()
    yield started
    started.close()


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    started = RedisServer(tmp_path_factory.mktemp("redis")).start()
    yield started
    started.stop()


@pytest.fixture(scope="module")
def docker(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_docker_config(tmp_path_factory.mktemp("docker"), [])


@pytest.fixture(scope="module")
def pool(server: RedisServer, docker: Path, receiver: Receiver,
         tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pool]:
    """Two workers (one process each) that notify ``receiver`` of every release."""
    started = start_pool(server, 1, docker, tmp_path_factory.mktemp("logs"), ["n1", "n2"],
                         FANOUT_NOTIFY_URL=receiver.url)
    yield started
    for worker in started.workers:
        worker.stop()


@pytest.fixture(scope="module")
def image(registries: RegistrySet) -> PushedImage:
    return push_oci_image(registries.source, "test/notify-source", "v1", layers=1,
                          layer_size=4096)


def _settle(receiver: Receiver, count: int, detail: Any) -> list[Delivery]:
    """Wait for ``count`` accepted deliveries, then watch a while longer for any more."""
    wait_until(lambda: len(receiver.accepted()) >= count, 30, f"{count} notification(s)",
               detail)
    time.sleep(QUIET)
    return receiver.accepted()


def test_two_destinations_finishing_together_on_two_workers_notify_once(
    pool: Pool, receiver: Receiver, registries: RegistrySet, image: PushedImage,
    unique_repo: str,
) -> None:
    receiver.reset()
    with FaultProxy(registries.dest1.url) as proxy:
        # Both proxied copies wait at their last request, the tag's PUT, until the rule is
        # cleared: then both end within a millisecond or so, one on each worker, and both ask
        # whether the release is final. (A check-then-send without the ledger's claim sends
        # two notifications here more often than not.)
        held = proxy.add(Rule(Delay(30), method="PUT", path=r"/manifests/v1$"))
        destinations = [f"{registries.dest2.host}/{unique_repo}",
                        f"{proxy.host}/{unique_repo}-a", f"{proxy.host}/{unique_repo}-b"]
        release_id = pool.enqueue(image, destinations)
        wait_until(lambda: held.hits >= 2, 30, "both copies at their tag PUT", pool.logs)
        assert receiver.all() == []
        proxy.clear()
        [delivery] = _settle(receiver, 1, pool.logs)

    release = pool.ledger.get(release_id)
    assert release is not None and release.done and release.ok
    a, b = (release.destinations[d] for d in destinations[1:])
    assert a.worker and b.worker and a.worker != b.worker  # one on each worker
    assert abs((a.finished_at or 0) - (b.finished_at or 0)) < 1.0
    assert receiver.all() == [delivery] and delivery.signed
    assert delivery.headers["x-fanout-event"] == "release.finished"
    assert delivery.headers["content-type"] == "application/json"
    assert delivery.headers["x-fanout-release"] == release_id
    # The body is the release document, as `fanout status --json` prints it.
    shown = run_fanout(["status", release_id, "--json"],
                       fanout_env(FANOUT_BROKER_URL=pool.env["FANOUT_BROKER_URL"]), timeout=60)
    assert shown.returncode == 0, shown.stderr
    assert json.loads(delivery.body) == json.loads(shown.stdout)
    assert pool.logs().count(f"{release_id} finished (ok, epoch 0): notifying") == 1
    # Neither the secret nor the URL's path went through the broker or into a log.
    assert SECRET not in pool.logs() and HOOK_PATH not in pool.logs()


def test_a_receiver_that_fails_twice_gets_it_once_after_retries(
    pool: Pool, receiver: Receiver, registries: RegistrySet, image: PushedImage,
    unique_repo: str,
) -> None:
    receiver.reset(503, 503)
    release_id = pool.enqueue(image, [f"{registries.dest2.host}/{unique_repo}"])
    [delivered] = _settle(receiver, 1, pool.logs)
    tries = receiver.all()
    assert [t.answered for t in tries] == [503, 503, 200]
    assert all(t.signed for t in tries)
    # One notification, retried: the same delivery id and the same bytes each time.
    assert {t.headers["x-fanout-delivery"] for t in tries} == {
        delivered.headers["x-fanout-delivery"]}
    assert {t.body for t in tries} == {delivered.body}
    assert json.loads(delivered.body)["id"] == release_id


def test_failure_only_sends_nothing_for_a_release_that_is_ok(
    server: RedisServer, docker: Path, receiver: Receiver, registries: RegistrySet,
    image: PushedImage, unique_repo: str, tmp_path: Path,
) -> None:
    receiver.reset()
    pool = start_pool(server, 2, docker, tmp_path, ["f1"], FANOUT_NOTIFY_URL=receiver.url,
                      FANOUT_NOTIFY_ON="failure")
    try:
        release_id = pool.enqueue(image, [f"{registries.dest2.host}/{unique_repo}"])
        wait_until(lambda: "FANOUT_NOTIFY_ON=failure: no notification" in pool.logs(), 30,
                   "the release settled without a notification", pool.logs)
        time.sleep(QUIET)
        release = pool.ledger.get(release_id)
        assert release is not None and release.ok
        assert receiver.all() == []
    finally:
        for worker in pool.workers:
            worker.stop()
