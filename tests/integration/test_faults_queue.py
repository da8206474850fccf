"""Worker and broker faults, hostile task messages and load, with real processes throughout.

A private ``redis-server`` (append-only file, fsync on every write), ``celery worker`` processes
at ``-l debug``, real registries. One destination of every scenario is an htpasswd registry
whose password is a planted secret, held only in the workers' Docker config; after each scenario
``tests/support/invariants.py`` checks that every tag copied is complete and byte-identical to the
source, and that the secret is nowhere in Redis, the worker logs or ``fanout status --json``.
"""

from __future__ import annotations

import base64
import json
import secrets
import signal
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
import redis

from producer import api
from tests.support.cli import fanout_env, run_fanout, write_docker_config
from tests.support.fault_proxy import FaultProxy, Rule, Stall
from tests.support.images import PushedImage, list_tags, manifest_exists, push_oci_image
from tests.support.invariants import assert_no_secret, assert_tags_complete, contains
from tests.support.queue import (
    Process,
    RedisServer,
    celery_client,
    copies_by_destination,
    ledger_for,
    load_targets,
    messages_in_broker,
    messages_waiting,
    overlapping,
    peak_rss_kib,
    queue_env,
    send_raw,
    start_worker,
    upload_under_way,
    wait_until,
)
from tests.support.registries import RegistryServer, RegistrySet, start_registry
from workers.ledger import Ledger, Release

SECRET = f"planted-{secrets.token_hex(12)}"
MIB = 1024 * 1024

pytestmark = pytest.mark.timeout(120)


# -- fixtures ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path_factory.mktemp("redis")).start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def secret_registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RegistryServer]:
    """A destination that needs the planted secret: a copy there proves the workers used it."""
    server = start_registry(tmp_path_factory.mktemp("secret-registry"), auth="htpasswd",
                            password=SECRET)
    yield server
    server.close()


@pytest.fixture(scope="module")
def docker_config(tmp_path_factory: pytest.TempPathFactory,
                  secret_registry: RegistryServer) -> Path:
    return write_docker_config(tmp_path_factory.mktemp("docker"), [secret_registry])


class Scenario:
    """One test's database, environment and worker processes, stopped at the end."""

    def __init__(self, server: RedisServer, db: int, docker_config: Path, log_dir: Path,
                 **extra: str) -> None:
        self.server = server
        self.url = f"{server.url}/{db}"
        redis.Redis.from_url(self.url).flushdb()
        self.env = queue_env(self.url, docker_config, **extra)
        self.log_dir = log_dir
        self.workers: list[Process] = []
        self.ledger: Ledger = ledger_for(self.url)

    def worker(self, name: str, **kwargs: Any) -> Process:
        process = start_worker(name, self.env, self.log_dir, **kwargs)
        self.workers.append(process)
        return process

    def enqueue(self, source: str, destinations: Sequence[str], tags: Sequence[str] = ("v1",),
                ) -> str:
        [release_id] = api.enqueue(source, destinations, tags=tags, env=self.env,
                                   ledger=self.ledger)
        return release_id

    def wait_done(self, release_ids: Sequence[str], timeout: float = 60) -> list[Release]:
        def done() -> list[Release] | None:
            releases = [api.status(i, ledger=self.ledger) for i in release_ids]
            return releases if all(r.done for r in releases) else None

        return wait_until(done, timeout, "every release done", self.detail)

    def status_json(self, release_id: str) -> str:
        done = run_fanout(["status", release_id, "--json"],
                          fanout_env(FANOUT_BROKER_URL=self.url), timeout=60)
        return done.stdout + done.stderr

    def logs(self) -> list[str]:
        return [w.log() for w in self.workers]

    def detail(self) -> str:
        return "\n".join(f"--- {w.name}\n{w.log()[-2500:]}" for w in self.workers)

    def close(self) -> None:
        for process in reversed(self.workers):
            process.stop()


@pytest.fixture
def scenario(redis_server: RedisServer, docker_config: Path,
             tmp_path: Path) -> Iterator[Callable[..., Scenario]]:
    made: list[Scenario] = []
    used = iter(range(1, 16))

    def make(server: RedisServer | None = None, **extra: str) -> Scenario:
        made.append(Scenario(server or redis_server, next(used), docker_config, tmp_path,
                             **extra))
        return made[-1]

    yield make
    for each in made:
        each.close()


def _check(s: Scenario, registries: RegistrySet, secret_registry: RegistryServer,
           image: PushedImage, repos: dict[str, str], release_ids: Sequence[str]) -> None:
    """The invariants: each ``{host: repo}`` complete; the secret nowhere."""
    by_host = {r.host: r for r in [*registries.all(), secret_registry]}
    for host, repo in repos.items():
        server = by_host[host]
        auth = (server.username or "", SECRET) if server is secret_registry else None
        assert_tags_complete(server.url, repo, registries.source.url, image.repository,
                             tags=["v1"], auth=auth)
    statuses = [s.status_json(i) for i in release_ids]
    assert all('"state": "succeeded"' in text for text in statuses), statuses
    assert_no_secret(SECRET, s.server.url, *s.logs(), *statuses)


def _running(s: Scenario, release_id: str, registry_of: dict[str, RegistryServer],
             ) -> tuple[str, str] | None:
    """(destination, worker) of a copy whose upload has bytes on the registry's disk."""
    for name, record in api.status(release_id, ledger=s.ledger).destinations.items():
        if record.state == "running" and record.worker and upload_under_way(registry_of[name]):
            return name, record.worker.split("@")[0]
    return None


# -- the scanner itself -----------------------------------------------------------------------


def test_the_secret_scan_finds_a_secret_hidden_in_a_message_body(
    redis_server: RedisServer,
) -> None:
    client = redis.Redis.from_url(f"{redis_server.url}/15")
    client.flushdb()
    body = base64.b64encode(json.dumps([[], {"auth": base64.b64encode(
        f"fanout:{SECRET}".encode()).decode()}, {}]).encode()).decode()
    client.hset("unacked", "tag", json.dumps([{"body": body}, "", "fanout"]))
    try:
        with pytest.raises(AssertionError, match="db15") as caught:
            assert_no_secret(SECRET, redis_server.url)
        assert SECRET not in str(caught.value)
        with pytest.raises(AssertionError, match="text #1"):
            assert_no_secret(SECRET, None, "clean", f"log: {SECRET[3:]}x{SECRET}")
        assert not contains(b"nothing to see " + base64.b64encode(b"here"), SECRET.encode())
    finally:
        client.flushdb()


# -- worker stopped ---------------------------------------------------------------------------


@pytest.mark.timeout(100)
def test_sigterm_mid_copy_finishes_the_copy_then_stops(
    scenario: Callable[..., Scenario], registries: RegistrySet,
    secret_registry: RegistryServer, unique_repo: str,
) -> None:
    s = scenario()
    image = push_oci_image(registries.source, unique_repo, "v1", layers=1,
                           layer_size=120 * MIB, compress=False)
    workers = {name: s.worker(name) for name in ("t1", "t2")}
    targets = {f"{secret_registry.host}/{unique_repo}": secret_registry,
               f"{registries.dest1.host}/{unique_repo}": registries.dest1}
    release_id = s.enqueue(image.reference, list(targets))

    target, name = wait_until(lambda: _running(s, release_id, targets), 30,
                              "a copy under way", s.detail)
    # Waits in the queue while both workers copy: the stopping worker must not strand it.
    waiting = s.enqueue(image.reference, [f"{registries.dest2.host}/{unique_repo}"])
    victim = workers[name]
    victim.signal(signal.SIGTERM)

    # Warm shutdown: no new task is taken, the one under way runs to its end and is acked.
    assert victim.wait(60) == 0, victim.log()[-3000:]
    [release, queued] = s.wait_done([release_id, waiting])
    assert queued.ok, queued.to_dict()
    record = release.destinations[target]
    assert (record.state, record.attempts) == ("succeeded", 1), record
    assert (record.worker or "").split("@")[0] == victim.name
    assert "Warm shutdown" in victim.log()
    assert release.ok, release.to_dict()
    # Nothing left behind, nothing to run twice. A worker acknowledges a message a moment after
    # the ledger says its copy is done: nothing may wait in the queue, and what was delivered
    # must be acknowledged soon after.
    assert messages_waiting(s.url) == 0
    wait_until(lambda: messages_in_broker(s.url) == 0, 10, "every message acknowledged",
               s.detail)
    _check(s, registries, secret_registry, image,
           {secret_registry.host: unique_repo, registries.dest1.host: unique_repo,
            registries.dest2.host: unique_repo}, [release_id, waiting])


# -- broker restarted -------------------------------------------------------------------------


@pytest.mark.timeout(120)
def test_redis_killed_and_restarted_mid_release_loses_nothing(
    scenario: Callable[..., Scenario], registries: RegistrySet,
    secret_registry: RegistryServer, unique_repo: str, tmp_path: Path,
) -> None:
    server = RedisServer(tmp_path / "own-redis").start()
    try:
        # The copy under way must land while Redis is down, so the lease must outlast the rest
        # of its upload: with the fast 4 s lease it is stopped 2.4 s after the last renewal,
        # which a machine busy with other tests does not always leave it (as it should be).
        s = scenario(server, FANOUT_LOCK_TTL="20")
        _restart_mid_release(s, server, registries, secret_registry, unique_repo)
    finally:
        server.stop()


@pytest.mark.timeout(30)
def test_without_persistence_a_redis_restart_loses_the_queue(
    scenario: Callable[..., Scenario], registries: RegistrySet, unique_repo: str,
    tmp_path: Path,
) -> None:
    """Why Redis must run with its append-only file (docker-compose.yml does): without it,
    a restart drops every message not yet delivered, and the ledger with them."""
    server = RedisServer(tmp_path / "volatile", persistent=False).start()
    try:
        s = scenario(server)
        image = push_oci_image(registries.source, unique_repo, "v1", layers=1)
        release_id = s.enqueue(image.reference, [f"{registries.dest1.host}/{unique_repo}"])
        assert messages_in_broker(s.url) == 1  # no worker: it waits in the queue
        server.kill()
        server.start()
        assert messages_in_broker(s.url) == 0
        assert s.ledger.get(release_id) is None
    finally:
        server.stop()


def _restart_mid_release(s: Scenario, server: RedisServer, registries: RegistrySet,
                         secret_registry: RegistryServer, unique_repo: str) -> None:
    image = push_oci_image(registries.source, unique_repo, "v1", layers=1,
                           layer_size=80 * MIB, compress=False)
    dests = [secret_registry, registries.dest1, registries.dest2]
    s.worker("r1")
    s.worker("r2")
    targets = {f"{d.host}/{unique_repo}": d for d in dests}
    big = s.enqueue(image.reference, list(targets))
    # Queued behind the big copies: these messages live only in Redis while it is down.
    queued = [s.enqueue(image.reference, [f"{d.host}/{unique_repo}-q{i}" for d in dests])
              for i in range(3)]

    target, _ = wait_until(lambda: _running(s, big, targets), 30, "a copy under way", s.detail)
    server.kill()
    # The copy under way lands while Redis is down: its ledger write and its ack have nowhere
    # to go. Only then does Redis come back, from its append-only file.
    wait_until(lambda: manifest_exists(targets[target], f"{unique_repo}@{image.digest}"), 30,
               "the copy under way to land during the outage", s.detail)
    server.start()

    releases = s.wait_done([big, *queued], timeout=75)
    assert all(r.ok for r in releases), [r.to_dict() for r in releases if not r.ok]
    record = releases[0].destinations[target]
    # Its ledger write and lock release waited for Redis to come back: one attempt, and no
    # lock left behind to hold a redelivery back until it expires.
    assert record.attempts == 1, record
    assert not [log for log in s.logs() if "could not release lock" in log]
    after = s.enqueue(image.reference, [f"{registries.dest1.host}/{unique_repo}-after"])
    assert s.wait_done([after], timeout=30)[0].ok  # the workers consume again
    wait_until(lambda: messages_in_broker(s.url) == 0, 30, "the broker drained", s.detail)
    repos = {d.host: unique_repo for d in dests}
    _check(s, registries, secret_registry, image, repos, [big, *queued, after])
    for i in range(3):  # the messages that waited in Redis through the outage
        assert_tags_complete(registries.dest2.url, f"{unique_repo}-q{i}", registries.source.url,
                             image.repository, tags=["v1"], skopeo=False)


# -- a registry that never answers ------------------------------------------------------------


@pytest.mark.parametrize(("settings", "ended_by"), [
    pytest.param({"FANOUT_TASK_SOFT_TIME_LIMIT": "3", "FANOUT_READ_TIMEOUT": "60"},
                 "FANOUT_TASK_SOFT_TIME_LIMIT", id="time-limit"),
    pytest.param({"FANOUT_READ_TIMEOUT": "1", "FANOUT_REQUEST_ATTEMPTS": "2"},
                 "ReadTimeout", id="read-timeout"),
])
@pytest.mark.timeout(90)
def test_a_registry_that_never_answers_is_retried_not_waited_for(
    scenario: Callable[..., Scenario], registries: RegistrySet,
    secret_registry: RegistryServer, unique_repo: str, settings: dict[str, str], ended_by: str,
) -> None:
    s = scenario(**settings)
    image = push_oci_image(registries.source, unique_repo, "v1", layers=2)
    with FaultProxy(registries.dest2.url) as proxy:
        stall = proxy.add(Rule(Stall(300)))  # every request, any method: accepted, never answered
        s.worker("s1")
        s.worker("s2")
        slow = f"{proxy.host}/{unique_repo}"
        others = [f"{secret_registry.host}/{unique_repo}", f"{registries.dest1.host}/{unique_repo}"]
        release_id = s.enqueue(image.reference, [slow, *others])

        def stuck_but_retrying() -> Release | None:
            release = api.status(release_id, ledger=s.ledger)
            ok = all(release.destinations[o].state == "succeeded" for o in others)
            retried = release.destinations[slow].attempts >= 2 and stall.hits >= 2
            return release if ok and retried else None

        release = wait_until(stuck_but_retrying, 40, "the stalled destination retrying",
                             s.detail)
        record = release.destinations[slow]
        assert record.state in ("running", "retrying"), record
        assert all(release.destinations[o].attempts == 1 for o in others)
        proxy.clear()
        [final] = s.wait_done([release_id], timeout=40)
    record = final.destinations[slow]
    assert final.ok, final.to_dict()
    assert record.attempts > 1 and record.error_type == "Timeout", record
    assert ended_by in (record.last_error or ""), record
    _check(s, registries, secret_registry, image,
           {secret_registry.host: unique_repo, registries.dest1.host: unique_repo,
            registries.dest2.host: unique_repo}, [release_id])


# -- hostile task messages --------------------------------------------------------------------


@pytest.mark.timeout(60)
def test_malformed_task_messages_fail_at_once_and_are_recorded(
    scenario: Callable[..., Scenario], registries: RegistrySet,
    secret_registry: RegistryServer, unique_repo: str,
) -> None:
    s = scenario()
    image = push_oci_image(registries.source, unique_repo, "v1", layers=1)
    worker = s.worker("m1")
    dest = f"{secret_registry.host}/{unique_repo}"
    hostile = f"hostile-{secrets.token_hex(8)}"
    good = {"release_id": "", "source": image.reference, "destination": dest, "tags": ["v1"]}
    cases: dict[str, tuple[list[object], dict[str, object], str]] = {
        "missing": ([], {k: v for k, v in good.items() if k != "tags"}, "missing tags"),
        "extra": ([], {**good, "password": hostile}, "unexpected arguments 'password'"),
        "unpinned": ([], {**good, "source": image.tagged_reference},
                     "is not pinned by digest"),
        "positional": ([image.reference], {**good}, "keyword arguments only"),
        "not-a-list": ([], {**good, "tags": "v1"}, "tags must be a list of strings"),
    }
    client = celery_client(s.env)
    ids = {}
    try:
        for case, (args, kwargs, _) in cases.items():
            ids[case] = f"bad-{case}-{secrets.token_hex(4)}"
            send_raw(client, task_id=ids[case], args=args,
                     kwargs={**kwargs, "release_id": ids[case]})
        anonymous = f"bad-anonymous-{secrets.token_hex(4)}"
        send_raw(client, task_id=anonymous, kwargs={"source": image.reference})
    finally:
        client.close()

    for task_id in [*ids.values(), anonymous]:
        worker.wait_for_log(f"fanout.copy[{task_id}] succeeded")
    log = worker.log()
    for case, (_, _, reason) in cases.items():
        task_id = ids[case]
        record = s.ledger.record(task_id, dest)
        assert record is not None, case
        assert (record.state, record.error_type, record.attempts) == (
            "failed", "InvalidTask", 0), (case, record)
        assert reason in (record.last_error or ""), (case, record.last_error)
        assert log.count(f"fanout.copy[{task_id}] received") == 1, case
        assert f"fanout.copy[{task_id}] retry" not in log, case
        status = run_fanout(["status", task_id, "--json"], fanout_env(FANOUT_BROKER_URL=s.url))
        assert status.returncode == 1, (case, status.stdout, status.stderr)
        assert reason in json.loads(status.stdout)["destinations"][dest]["last_error"]
    # No release id: nothing to record it under; the worker says why, once, and moves on.
    assert "missing release_id, destination, tags" in log
    assert f"fanout.copy[{anonymous}] retry" not in log
    assert messages_in_broker(s.url) == 0
    assert list_tags(secret_registry, unique_repo) == []  # no destination was touched
    # Our code never repeats a rejected argument's value. Celery's own DEBUG lines echo the
    # message's arguments as the sender wrote them (kwargsrepr), before any task code runs:
    # one more reason no credential may ever travel in a message.
    above_debug = "\n".join(line for line in log.splitlines() if "DEBUG/" not in line)
    assert_no_secret(hostile, s.server.url, above_debug,
                     *(s.status_json(i) for i in ids.values()))
    assert_no_secret(SECRET, s.server.url, *s.logs(),
                     *(s.status_json(i) for i in ids.values()))


# -- load -------------------------------------------------------------------------------------


@pytest.mark.timeout(150)
def test_fifty_releases_to_three_destinations_never_copy_one_twice(
    scenario: Callable[..., Scenario], registries: RegistrySet,
    secret_registry: RegistryServer, unique_repo: str,
) -> None:
    s = scenario()
    image = push_oci_image(registries.source, unique_repo, "v1", layers=1, layer_size=256 * 1024)
    ids = [s.enqueue(image.reference, load_targets(
        i, unique_repo, registries.dest2.host, secret_registry.host, registries.dest1.host))
        for i in range(50)]
    assert messages_in_broker(s.url) == 150
    # All of it waiting at once, then two workers let loose on it together.
    workers = [s.worker(name, loglevel="INFO", wait=False) for name in ("l1", "l2")]
    started = time.monotonic()
    for worker in workers:
        worker.wait_for_log(" ready.")
    releases = s.wait_done(ids, timeout=120)
    seconds = time.monotonic() - started
    peaks = {w.name: peak_rss_kib(w.pid) for w in workers}

    assert all(r.ok for r in releases), [r.to_dict() for r in releases if not r.ok][:2]
    copies = copies_by_destination(releases)
    assert len(copies) == 50 * 2 + 5
    for destination, records in copies.items():
        moved = [r for r in records if r.stats.get("manifests_copied", 0) > 0]
        assert len(moved) == 1, (destination, [r.to_dict() for r in records])
        assert not overlapping(records), destination
    assert {rec.worker.split("@")[0] for r in releases for rec in r.destinations.values()
            if rec.worker} == {"l1", "l2"}
    waited = sum(1 for records in copies.values() for r in records if r.error_type == "LockHeld")
    print(f"50 releases x 3 destinations: {seconds:.1f}s; {waited} waited for the lock; "
          f"peak RSS (KiB) {peaks}")
    assert waited > 0, "no two tasks raced for a shared destination: the lock went untested"
    assert all(0 < kib < 600 * 1024 for kib in peaks.values()), peaks
    sample = {secret_registry.host: f"{unique_repo}-7",
              registries.dest2.host: f"{unique_repo}-shared-2"}
    _check(s, registries, secret_registry, image, sample, ids[:3])
