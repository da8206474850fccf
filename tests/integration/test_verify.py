"""``fanout verify`` against real registries: releases copied by a real ``celery worker``, then
tags moved and content deleted by hand, found, and repaired end to end by the same worker.

The CLI runs as a user runs it (``python -m producer.cli``). Request counts are read at a proxy
in front of a real registry. Every test has repositories of its own; the module's Redis and
worker are its own too (xdist-safe: free ports, nothing shared between processes).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from producer import api
from tests.support.cli import run_fanout, write_docker_config
from tests.support.fault_proxy import FaultProxy
from tests.support.images import (
    PushedImage,
    delete_manifest,
    get_manifest,
    manifest_exists,
    push_oci_image,
)
from tests.support.queue import (
    RedisServer,
    WorkerQueue,
    ledger_for,
    queue_env,
    start_worker_queue,
    stop_worker_queue,
)
from tests.support.registries import RegistryServer, RegistrySet
from tests.support.registry_client import RepoClient
from workers.ledger import Ledger
from workers.tag_order import TagOwner, TagOwners

pytestmark = pytest.mark.timeout(180)


class Queue(WorkerQueue):
    """The module's Redis and worker, with the verify CLI and a release helper."""

    def release(self, source: PushedImage, *destinations: str, tags: tuple[str, ...]) -> str:
        """Enqueue, wait until every destination succeeded; the release id."""
        ledger = self.ledger
        [release_id] = api.enqueue(source.reference, list(destinations), tags=tags,
                                   env=self.env, ledger=ledger)
        final = api.wait(release_id, timeout=60, ledger=ledger, poll=0.1)
        assert final.ok, (final.to_dict(), self.worker.log()[-3000:])
        return release_id

    def verify(self, *args: str) -> tuple[int, dict[str, Any], str]:
        """``fanout verify ... --json``: exit code, document, stderr."""
        return self.fanout_json("verify", *args)


@pytest.fixture(scope="module")
def queue(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Queue]:
    started = start_worker_queue(tmp_path_factory.mktemp("verify-queue"), "verifier")
    queue = Queue(started.redis, started.worker, started.env)
    try:
        yield queue
    finally:
        stop_worker_queue(queue)


def states(document: dict[str, Any]) -> dict[tuple[str, str], str]:
    return {(d["release"], d["destination"]): d["state"] for d in document["destinations"]}


def digest_at(registry: RegistryServer, repo: str, tag: str) -> str | None:
    with RepoClient.at(registry, repo) as client:
        response = client.manifest_head(tag)
    return response.headers["Docker-Content-Digest"] if response.status_code == 200 else None


# -- found and repaired ---------------------------------------------------------------------------


def test_a_moved_tag_and_deleted_content_are_found_and_repaired(
    queue: Queue, registries: RegistrySet, unique_repo: str,
) -> None:
    image = push_oci_image(registries.source, unique_repo, layers=1)
    one, two = (f"{r.host}/{unique_repo}" for r in (registries.dest1, registries.dest2))
    release_id = queue.release(image, one, two, tags=("v1",))

    code, document, _ = queue.verify(release_id)
    assert code == 0, document
    assert states(document) == {(release_id, one): "in place", (release_id, two): "in place"}

    # By hand: the tag moved to another image at one, the content deleted at two.
    other = push_oci_image(registries.dest1, unique_repo, "v1", layers=1)
    delete_manifest(registries.dest2, unique_repo, image.digest)

    code, document, _ = queue.verify(release_id)
    assert code == 1
    assert states(document) == {(release_id, one): "tag moved", (release_id, two): "missing"}
    moved = document["destinations"][0]
    assert moved["tags"]["v1"]["found"] == other.digest
    assert other.digest in moved["detail"]
    assert document["destinations"][1]["content"] == "absent"
    table = run_fanout(["verify", release_id], queue.env)
    assert table.returncode == 1
    assert f"tag v1 names {other.digest}" in table.stdout
    assert "2 destinations of 1 release: 1 tag moved, 1 missing" in table.stdout

    code, document, stderr = queue.verify(release_id, "--repair", "--wait", "--timeout", "60")

    assert code == 0, (document, stderr, queue.worker.log()[-3000:])
    assert document["repaired"] == {release_id: [one, two]}
    assert f"{release_id}: sent again 2 destination(s)" in stderr
    assert digest_at(registries.dest1, unique_repo, "v1") == image.digest
    assert manifest_exists(registries.dest2, f"{unique_repo}@{image.digest}")
    assert digest_at(registries.dest2, unique_repo, "v1") == image.digest
    # New attempts of the same release: its history kept, a new generation.
    record = queue.ledger.record(release_id, one)
    assert record is not None and record.state == "succeeded"
    assert record.generation == 1 and record.attempts == 2
    assert [a.outcome for a in record.history] == ["succeeded", "succeeded"]
    code, document, _ = queue.verify(release_id)
    assert code == 0 and set(states(document).values()) == {"in place"}


def test_a_tag_a_newer_release_holds_is_superseded_and_never_repaired_backwards(
    queue: Queue, registries: RegistrySet, unique_repo: str,
) -> None:
    first = push_oci_image(registries.source, unique_repo, layers=1)
    second = push_oci_image(registries.source, unique_repo, layers=1)
    target = f"{registries.dest1.host}/{unique_repo}"
    older = queue.release(first, target, tags=("v1", "latest"))
    newer = queue.release(second, target, tags=("latest",))

    code, document, _ = queue.verify(older, newer)
    assert code == 0, document
    assert states(document) == {(older, target): "superseded", (newer, target): "in place"}
    assert document["destinations"][0]["tags"]["latest"]["holder"] == newer

    # The older release's content deleted (its v1 tag goes with it): drift, repaired; its
    # `latest` stays where the newer release put it.
    delete_manifest(registries.dest1, unique_repo, first.digest)
    code, document, _ = queue.verify(older)
    assert code == 1 and states(document) == {(older, target): "missing"}

    code, document, stderr = queue.verify(older, "--repair", "--wait", "--timeout", "60")

    assert code == 0, (document, stderr, queue.worker.log()[-3000:])
    assert digest_at(registries.dest1, unique_repo, "v1") == first.digest
    assert digest_at(registries.dest1, unique_repo, "latest") == second.digest
    record = queue.ledger.record(older, target)
    assert record is not None and record.superseded == {"latest": newer}
    code, document, _ = queue.verify(older, newer)
    assert code == 0
    assert states(document) == {(older, target): "superseded", (newer, target): "in place"}


def test_a_registry_that_is_down_is_unreachable_exit_3(
    queue: Queue, registries: RegistrySet, fresh_registry: Any, unique_repo: str,
) -> None:
    image = push_oci_image(registries.source, unique_repo, layers=1)
    down = fresh_registry()
    up, gone = f"{registries.dest1.host}/{unique_repo}", f"{down.host}/{unique_repo}"
    release_id = queue.release(image, up, gone, tags=("v1",))
    down.stop()

    code, document, _ = queue.verify(release_id)

    assert code == 3
    assert states(document) == {(release_id, up): "in place", (release_id, gone): "unreachable"}
    detail = document["destinations"][1]["detail"]
    assert detail.startswith(f"{image.digest[:19]}, tag v1 not checked: ConnectionFailed: "
                             f"ping {down.host}")
    assert detail.count("not checked") == 1  # one error, said once
    # Drift elsewhere outranks it: exit 1.
    delete_manifest(registries.dest1, unique_repo, image.digest)
    assert queue.verify(release_id)[0] == 1


def test_a_registry_that_refuses_the_credentials_is_unreachable_and_never_shows_them(
    queue: Queue, registries: RegistrySet, unique_repo: str, tmp_path: Path,
) -> None:
    basic = registries.basic
    assert basic.username is not None and basic.password is not None
    image = push_oci_image(basic, unique_repo, "v1", layers=1)
    target = f"{basic.host}/{unique_repo}"
    release_id = _landed(queue.ledger, image, [(target, ("v1",))])
    wrong = write_docker_config(tmp_path / "wrong", [basic], wrong_password=[basic.host])
    right = write_docker_config(tmp_path / "right", [basic])

    refused = run_fanout(["verify", release_id], {**queue.env, "DOCKER_CONFIG": str(wrong)})
    allowed = run_fanout(["verify", release_id], {**queue.env, "DOCKER_CONFIG": str(right)})

    assert refused.returncode == 3, refused.stdout + refused.stderr
    assert "unreachable" in refused.stdout
    assert "not checked: Unauthorized (HTTP 401)" in refused.stdout
    assert allowed.returncode == 0, allowed.stdout + allowed.stderr
    assert "in place" in allowed.stdout
    for done in (refused, allowed):
        assert basic.password not in done.stdout + done.stderr
        assert "not-the-password" not in done.stdout + done.stderr


# -- bad input contacts nothing -------------------------------------------------------------------


@pytest.fixture
def proxy(registries: RegistrySet) -> Iterator[FaultProxy]:
    with FaultProxy(registries.dest1.url).start() as started:
        yield started


def test_bad_input_exits_2_and_contacts_no_registry(
    queue: Queue, registries: RegistrySet, proxy: FaultProxy, unique_repo: str,
) -> None:
    image = push_oci_image(registries.dest1, unique_repo, "v1", layers=1)
    target = f"{proxy.host}/{unique_repo}"
    ledger = queue.ledger
    landed = ledger.create_release(image.reference, [(target, ("v1",))])
    ledger.mark_running(landed, target, worker="w")
    ledger.mark_succeeded(landed, target, stats={}, seconds=0.1)
    # Under way: recorded, its task never sent, so it stays queued.
    running = ledger.create_release(image.reference, [(target, ("v1",))])

    for args, error in [
        ([landed, "rel-nope"], "no release 'rel-nope'"),
        (["--since", "7 days"], "bad duration"),
        (["--since", "0s"], "bad duration"),
        ([landed, running, "--repair"], f"release {running} is still under way"),
        ([landed, "--wait"], "--wait needs --repair"),
        ([], "nothing to verify"),
    ]:
        done = run_fanout(["verify", *args], queue.env)
        assert done.returncode == 2, (args, done.stdout, done.stderr)
        assert error in done.stderr, (args, done.stderr)
    assert proxy.seen == []
    assert ledger.get(running).destinations[target].state == "queued"  # type: ignore[union-attr]

    # The same release, asked properly, is checked through the proxy.
    done = run_fanout(["verify", landed], queue.env)
    assert done.returncode == 0, done.stdout + done.stderr
    assert proxy.count("HEAD", r"/manifests/") == 1


# -- cost -----------------------------------------------------------------------------------------


def test_many_releases_cost_one_head_per_distinct_reference(
    registries: RegistrySet, proxy: FaultProxy, unique_repo: str, tmp_path: Path,
) -> None:
    # A ledger of its own: --since must see only these releases.
    redis_server = RedisServer(tmp_path / "redis", persistent=False).start()
    try:
        _many_releases(registries, proxy, unique_repo, redis_server, tmp_path)
    finally:
        redis_server.stop()


def _many_releases(registries: RegistrySet, proxy: FaultProxy, repo: str,
                   redis_server: RedisServer, tmp_path: Path) -> None:
    tagged, plain = f"{proxy.host}/{repo}", f"{proxy.host}/{repo}-plain"
    images = [push_oci_image(registries.dest1, repo, "latest", layers=1) for _ in range(2)]
    untagged = [push_oci_image(registries.dest1, f"{repo}-plain", layers=1) for _ in range(2)]
    ledger = ledger_for(redis_server.url)
    releases = []
    manifests = [get_manifest(registries.dest1, f"{repo}@{image.digest}") for image in images]
    with RepoClient.at(registries.dest1, repo) as client:
        for i in range(100):
            client.manifest_put(f"r{i}", *manifests[i % 2])
            releases.append(_landed(ledger, images[i % 2], [(tagged, ("latest", f"r{i}"))]))
    # `latest` is the newest release's, as the workers' tag order would have left it.
    newest = TagOwner(ledger.order_of(releases[-1]), releases[-1], images[1].digest, 1.0)
    TagOwners(ledger.client, ttl=3600).claim(tagged, "latest", newest, None)
    for i in range(20):
        _landed(ledger, untagged[i % 2], [(plain, ())])
    env = queue_env(redis_server.url, tmp_path / "docker")

    done = run_fanout(["verify", "--since", "1h", "--json"], env, timeout=120)

    assert done.returncode == 0, done.stdout[-2000:] + done.stderr
    document = json.loads(done.stdout)
    assert document["counts"] == {"in place": 50 + 20, "superseded": 50}
    heads = [s.path for s in proxy.requests("HEAD", r"/manifests/")]
    assert len(heads) == len(set(heads))  # none asked twice
    # 101 tags (`latest` and r0..r99, which prove both digests present in their repository)
    # and the two digests of the untagged repository: 103 HEADs for 320 checks.
    assert len(heads) == 103, sorted(heads)


def _landed(ledger: Ledger, image: PushedImage, targets: list[tuple[str, tuple[str, ...]]],
            ) -> str:
    release_id = ledger.create_release(image.reference, targets)
    for name, _ in targets:
        ledger.mark_running(release_id, name, worker="w")
        ledger.mark_succeeded(release_id, name, stats={}, seconds=0.1)
    return release_id
