"""Tags follow release order, with real workers, a real Redis and a real registry.

Two ``celery worker`` processes (two hosts), a registry behind a fault proxy that fails or holds
chosen requests, so each interleaving of section 1 of the rule happens on purpose: an outage then
a late retry, a retry after a newer release, a replay, a newer release that failed, two writers
racing, a lapsed lease (a worker stopped with its PUT in the network, and one stopped before
its tag write), a deliberate rollback. Each ends with the destination's tag on the newest
release that reached it.
"""

from __future__ import annotations

import hashlib
import re
import signal
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from producer import api
from tests.support import images
from tests.support.cli import write_docker_config
from tests.support.fault_proxy import FaultProxy, Hold, Rule, Status
from tests.support.queue import (
    Process,
    RedisServer,
    ledger_for,
    queue_env,
    start_worker,
    wait_until,
)
from tests.support.registries import RegistrySet
from workers.ledger import Ledger, Release
from workers.tag_order import TagOwners

pytestmark = [pytest.mark.integration, pytest.mark.xdist_group("tag_order_e2e")]
TAG = "latest"
DONE_WITHIN = 60.0
# Celery's line for a task's end, whatever its outcome.
TASK_ENDED = re.compile(r"Task fanout\.copy\[[^\]]+\] (succeeded|raised|retry|failed)")
MANIFEST_INVALID = Status(400, {"Content-Type": "application/json"},
                          b'{"errors":[{"code":"MANIFEST_INVALID","message":"refused"}]}')
UNAVAILABLE = Status(503, {"Content-Type": "application/json"},
                     b'{"errors":[{"code":"UNAVAILABLE","message":"down for maintenance"}]}')


@dataclass
class Cluster:
    """Two workers (two hosts) on one Redis, shared by the module's cases: each case has
    repositories and a proxy of its own."""

    env: dict[str, str]
    ledger: Ledger
    workers: dict[str, Process]


@dataclass
class Site:
    """A case's two source images (``a`` older, ``b`` newer) and its destination repository
    behind ``proxy``, copied by the cluster's workers."""

    cluster: Cluster
    registries: RegistrySet
    proxy: FaultProxy
    repo: str
    a: images.PushedImage
    b: images.PushedImage

    @property
    def env(self) -> dict[str, str]:
        return self.cluster.env

    @property
    def ledger(self) -> Ledger:
        return self.cluster.ledger

    @property
    def workers(self) -> dict[str, Process]:
        return self.cluster.workers

    @property
    def target(self) -> str:
        return f"{self.proxy.host}/{self.repo}"

    def release(self, image: images.PushedImage, *, tags: tuple[str, ...] = (TAG,),
                to: str | None = None) -> str:
        [release_id] = api.enqueue(image.reference, [to or self.target], tags=list(tags),
                                   env=self.env, ledger=self.ledger)
        return release_id

    def wait(self, release_id: str, what: str = "final") -> Release:
        def final() -> Release | None:
            release = self.ledger.get(release_id)
            return release if release is not None and release.done else None
        return wait_until(final, DONE_WITHIN, f"release {release_id} {what}",
                          lambda: self.ledger.get(release_id))

    def record_state(self, release_id: str, state: str) -> None:
        def reached() -> bool:
            record = self.ledger.record(release_id, self.target)
            return record is not None and record.state == state
        wait_until(reached, DONE_WITHIN, f"{release_id} {state}",
                   lambda: self.ledger.record(release_id, self.target))

    def tag_digest(self, repo: str | None = None) -> str | None:
        ref = f"{repo or self.repo}:{TAG}"
        if not images.manifest_exists(self.registries.dest1, ref):
            return None
        raw, _ = images.get_manifest(self.registries.dest1, ref)
        return "sha256:" + hashlib.sha256(raw).hexdigest()

    def tag_puts(self) -> int:
        return self.proxy.count("PUT", rf"/{self.repo}/manifests/{TAG}$")

    def owner(self) -> str | None:
        found = TagOwners(self.ledger.client, ttl=60).get(self.target, TAG)
        return found.release if found is not None else None

    def worker_of(self, release_id: str) -> Process:
        def running() -> str | None:
            record = self.ledger.record(release_id, self.target)
            return record.worker if record is not None and record.worker else None
        name = wait_until(running, DONE_WITHIN, f"a worker on {release_id}").split("@")[0]
        return self.workers[name]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory,
            registries: RegistrySet) -> Iterator[Cluster]:
    tmp = tmp_path_factory.mktemp("tag-order")
    server = RedisServer(tmp / "redis", persistent=False).start()
    # Few quick request-tier retries: an outage goes to the task tier at once, and a case that
    # fails leaves nothing retrying long enough to slow the next one.
    env = queue_env(f"{server.url}/0", write_docker_config(tmp / "docker", registries.all()),
                    FANOUT_REQUEST_ATTEMPTS="2", FANOUT_REQUEST_MAX_ELAPSED="2")
    workers = {name: start_worker(name, env, tmp, loglevel="INFO", wait=False)
               for name in ("w1", "w2")}
    try:
        for worker in workers.values():
            worker.wait_for_log(" ready.")
        yield Cluster(env, ledger_for(env["FANOUT_BROKER_URL"]), workers)
    finally:
        for worker in workers.values():
            worker.kill()  # nothing of theirs is needed after the module
        server.stop()


@pytest.fixture
def site(cluster: Cluster, registries: RegistrySet, unique_repo: str) -> Iterator[Site]:
    a = images.push_oci_image(registries.source, unique_repo, "a", layers=1, layer_size=4096)
    b = images.push_oci_image(registries.source, unique_repo, "b", layers=1, layer_size=4096)
    with FaultProxy(registries.dest1.url) as proxy:
        try:
            yield Site(cluster, registries, proxy, unique_repo, a, b)
        finally:
            for worker in cluster.workers.values():
                if worker.running:
                    worker.signal(signal.SIGCONT)  # a case that failed with one stopped


def _manifest_put(image: images.PushedImage) -> str:
    return rf"/manifests/{image.digest}$"


def test_an_outage_then_a_late_retry_leaves_the_tag_on_the_newer_release(site: Site) -> None:
    # Release A meets an outage at the registry; B lands; the outage ends and A's automatic
    # retry lands: its content, but not its tag.
    site.proxy.add(Rule(UNAVAILABLE, method="PUT", path=_manifest_put(site.a)))
    a = site.release(site.a)
    site.record_state(a, "retrying")
    b = site.release(site.b)
    assert site.wait(b).ok
    assert site.tag_digest() == site.b.digest
    site.proxy.clear()

    final = site.wait(a)

    record = final.destinations[site.target]
    assert record.state == "succeeded", record
    assert record.superseded == {TAG: b}
    assert site.tag_digest() == site.b.digest and site.owner() == b
    assert images.manifest_exists(site.registries.dest1, f"{site.repo}@{site.a.digest}")
    assert site.tag_puts() == 1  # B's; A never sent one


def test_a_retry_after_a_newer_release_never_undoes_it(site: Site) -> None:
    site.proxy.add(Rule(MANIFEST_INVALID, method="PUT", path=_manifest_put(site.a)))
    a = site.release(site.a)
    assert site.wait(a).destinations[site.target].state == "failed"
    b = site.release(site.b)
    assert site.wait(b).ok
    site.proxy.clear()

    assert api.retry(a, env=site.env, ledger=site.ledger) == [site.target]
    final = site.wait(a, "retried")

    record = final.destinations[site.target]
    assert record.state == "succeeded" and record.superseded == {TAG: b}
    assert final.order < site.ledger.order_of(b)  # the retry kept its place
    assert site.tag_digest() == site.b.digest and site.owner() == b


def test_a_newer_release_that_failed_does_not_block_an_older_one(site: Site) -> None:
    site.proxy.add(Rule(UNAVAILABLE, method="PUT", path=_manifest_put(site.a)))
    site.proxy.add(Rule(MANIFEST_INVALID, method="PUT", path=_manifest_put(site.b)))
    a = site.release(site.a)
    site.record_state(a, "retrying")
    b = site.release(site.b)
    assert site.wait(b).destinations[site.target].state == "failed"
    site.proxy.clear()

    final = site.wait(a)

    assert final.destinations[site.target].superseded == {}
    assert site.tag_digest() == site.a.digest and site.owner() == a


def test_a_replay_gives_the_tag_to_the_release_it_had_last(site: Site) -> None:
    first = f"{site.registries.dest2.host}/{site.repo}"
    a = site.release(site.a, to=first)
    assert site.wait(a).ok
    b = site.release(site.b, to=first)
    assert site.wait(b).ok
    # B's replayed copy is held, so A's finishes first.
    hold = site.proxy.add(Rule(Hold(), method="PUT", path=_manifest_put(site.b), times=1))

    ids = api.replay(300, [site.target], source_repo=f"{site.registries.source.host}/{site.repo}",
                     env=site.env, ledger=site.ledger)
    hold.action.wait_arrived()  # type: ignore[union-attr]
    replays = {site.ledger.get(i).digest: i for i in ids}  # type: ignore[union-attr]
    site.wait(replays[site.a.digest])
    hold.action.release()  # type: ignore[union-attr]
    for release_id in ids:
        assert site.wait(release_id).ok

    assert site.tag_digest() == site.b.digest


@pytest.mark.parametrize("first", ["older", "newer"])
def test_two_writers_racing_for_one_tag(site: Site, first: str) -> None:
    # The first writer's tag PUT is held at the proxy; the second, on the other worker, waits
    # for the tag's lease instead of writing beside it. Whoever goes first, the newer wins.
    hold = Hold()
    site.proxy.add(Rule(hold, method="PUT", path=rf"/manifests/{TAG}$", times=1))
    if first == "older":
        a = site.release(site.a)
        hold.wait_arrived()
        b = site.release(site.b)
        second = b
    else:
        # B must be newer in the order, so it is created first but held before its tag write.
        b_pre = site.proxy.add(Rule(Hold(), method="PUT", path=_manifest_put(site.b), times=1))
        a_pre = site.proxy.add(Rule(Hold(), method="PUT", path=_manifest_put(site.a), times=1))
        a = site.release(site.a)
        b = site.release(site.b)
        b_pre.action.wait_arrived()  # type: ignore[union-attr]
        a_pre.action.wait_arrived()  # type: ignore[union-attr]
        b_pre.action.release()  # type: ignore[union-attr]
        hold.wait_arrived()  # B's tag PUT
        a_pre.action.release()  # type: ignore[union-attr]
        second = a
    # The second writer's content lands; its tag write then waits on the lease.
    wait_until(lambda: site.proxy.count("PUT", _manifest_put(site.b if first == "older"
                                                             else site.a), status=201),
               DONE_WITHIN, "the second writer's manifest")
    record = site.ledger.record(second, site.target)
    assert record is not None and record.state == "running"
    assert site.tag_puts() == 1
    hold.release()

    for release_id in (a, b):
        assert site.wait(release_id).ok
    assert site.tag_digest() == site.b.digest and site.owner() == b
    assert site.ledger.record(a, site.target).superseded == (  # type: ignore[union-attr]
        {TAG: b} if first == "newer" else {})


def test_a_put_held_past_its_lease_is_undone_by_its_writer(site: Site) -> None:
    # A's tag PUT is held in the network while A's worker is stopped: A's leases lapse, A is
    # handed over, B lands. Then the held PUT reaches the registry (the tag moves back to A),
    # and A's worker wakes: it finds its write landed over a newer one and gives the tag back.
    hold = Hold(seconds=120)
    site.proxy.add(Rule(hold, method="PUT", path=rf"/manifests/{TAG}$", times=1))
    a = site.release(site.a)
    hold.wait_arrived()
    stopped = site.worker_of(a)
    stopped.signal(signal.SIGSTOP)
    b = site.release(site.b)
    assert site.wait(b).ok and site.tag_digest() == site.b.digest
    handed = site.wait(a, "handed over and finished")
    assert any(h.outcome == "lost" for h in handed.destinations[site.target].history)

    hold.release()
    wait_until(lambda: site.tag_digest() == site.a.digest, DONE_WITHIN,
               "the held PUT landed, moving the tag back")
    stopped.signal(signal.SIGCONT)

    wait_until(lambda: site.tag_digest() == site.b.digest, DONE_WITHIN,
               "the tag given back to the newer release", lambda: stopped.log()[-3000:])
    assert site.owner() == b
    assert "giving tag" in stopped.log()


def test_a_worker_stopped_before_its_tag_write_writes_nothing_when_it_wakes(site: Site) -> None:
    # A's worker stops mid-copy (its manifest PUT held); its lease lapses and A is handed over
    # and finished by the other worker; B lands. When the stopped worker wakes, its copy of A
    # must send no tag write.
    hold = Hold(seconds=120)
    site.proxy.add(Rule(hold, method="PUT", path=_manifest_put(site.a), times=1))
    a = site.release(site.a)
    hold.wait_arrived()
    stopped = site.worker_of(a)
    stopped.signal(signal.SIGSTOP)
    hold.release()
    assert site.wait(a, "handed over and finished").ok
    b = site.release(site.b)
    assert site.wait(b).ok
    puts = site.tag_puts()

    seen = len(stopped.log())
    stopped.signal(signal.SIGCONT)
    # Once its task has ended, nothing more of its copy can reach the registry. Its heartbeat
    # may stop it, or the copy may end first (it reads that B owns the tag and skips it)
    # before the heartbeat beats again: either way, what counts is that it wrote no tag.
    wait_until(lambda: TASK_ENDED.search(stopped.log()[seen:]), DONE_WITHIN,
               "the woken worker's task ended", lambda: stopped.log()[seen:])
    assert site.tag_puts() == puts
    assert site.tag_digest() == site.b.digest and site.owner() == b


def test_a_deliberate_rollback_is_a_new_release_and_wins(site: Site) -> None:
    a = site.release(site.a)
    assert site.wait(a).ok
    b = site.release(site.b)
    assert site.wait(b).ok

    rollback = site.release(site.a)  # app@sha256:old --tag latest, again

    assert site.wait(rollback).ok
    assert site.tag_digest() == site.a.digest and site.owner() == rollback
    assert site.ledger.order_of(rollback) > site.ledger.order_of(b) > site.ledger.order_of(a)
