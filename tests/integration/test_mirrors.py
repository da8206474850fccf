"""Mirrors end to end: ``fanout sync`` (as a user runs it) against a real source registry behind
a paging proxy (Docker Hub's pages of 100 and ``Link``), real destination registries behind
counting proxies, a real Redis and a real ``celery worker`` copying what the sync enqueued.

What a test asserts about a repository it reads from the registry BEHIND the proxy, with the
tests' own client; what fanout sent, it reads at the proxy. Every test has repositories of its
own; the module's Redis and worker are its own too (xdist-safe).
"""

from __future__ import annotations

import secrets
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import redis

from tests.support import images
from tests.support.images import tag_digests as tags_at
from tests.support.queue import WorkerQueue, start_worker_queue, stop_worker_queue
from tests.support.quirks import profiles
from tests.support.quirks.manifests import RateLimit
from tests.support.quirks.proxy import QuirkProxy
from tests.support.registries import RegistryServer, RegistrySet
from workers.mirror_runs import MirrorRuns
from workers.prune_log import PruneLog

pytestmark = pytest.mark.timeout(240)

WRITES = ("PUT", "POST", "PATCH", "DELETE")


class Queue(WorkerQueue):
    def sync(self, config: Path, *args: str) -> tuple[int, dict[str, Any], str]:
        """``fanout sync --config CONFIG ARGS --json``: exit code, document, stderr."""
        return self.fanout_json("sync", "--config", str(config), *args)


@pytest.fixture(scope="module")
def queue(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Queue]:
    started = start_worker_queue(tmp_path_factory.mktemp("mirror-queue"), "mirror")
    queue = Queue(started.redis, started.worker, started.env)
    try:
        yield queue
    finally:
        stop_worker_queue(queue)


@pytest.fixture
def source(registries: RegistrySet) -> Iterator[QuirkProxy]:
    """The source registry as Docker Hub pages it: 100 tags a page, a relative ``Link``."""
    proxy = QuirkProxy(registries.source.url, profiles.paging(100)).start()
    yield proxy
    proxy.stop()


@pytest.fixture
def dest(registries: RegistrySet) -> Iterator[QuirkProxy]:
    """A destination that deletes by tag as OCI 1.1 has it (the tag alone goes)."""
    proxy = QuirkProxy(registries.dest1.url,
                       profiles.paging(100, delete_by_tag=registries.dest1.root)).start()
    yield proxy
    proxy.stop()


def tag_image(server: RegistryServer, repo: str, tags: list[str], *, seed: str = "") -> str:
    """One small image (distinct per ``seed``) under every tag of ``tags``; its digest."""
    return images.tag_image(server, repo, tags, layer_size=64 + len(seed))


def write_config(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def mirror_of(document: dict[str, Any], name: str) -> dict[str, Any]:
    [found] = [m for m in document["mirrors"] if m["name"] == name]
    return found


# -- filters, pages, dry run, a second run, a moved tag ---------------------------------------


def test_a_mirror_filters_pages_and_syncs_only_what_differs(
    queue: Queue, registries: RegistrySet, source: QuirkProxy, dest: QuirkProxy,
    tmp_path: Path,
) -> None:
    repo = f"mirror/app-{secrets.token_hex(4)}"
    # 1.0.0 .. 1.119.0 (two pages and more), each also as -alpine; 2.0.0 and latest outside.
    old = tag_image(registries.source, repo, [f"1.{n}.0" for n in range(119)], seed="old")
    new = tag_image(registries.source, repo, ["1.119.0", "2.0.0", "latest",
                                              *(f"1.{n}.0-alpine" for n in range(117, 120))],
                    seed="newer")
    config = write_config(tmp_path / "fanout.toml", f"""
[[mirrors]]
name = "app"
source = "{source.host}/{repo}"
tags = ["1.*"]
exclude = ["*-alpine"]
versions = ">=1.5, <2"
newest = 3
destinations = ["{dest.host}/{repo}"]
""")

    # A dry run: the plan, and nothing written anywhere.
    code, document, err = queue.sync(config, "--dry-run")
    assert code == 0, err
    plan = mirror_of(document, "app")
    # Numbers, not text: 1.119 > 1.118 > 1.117 > ... > 1.99 (which text order would put first).
    assert list(plan["kept"]) == ["1.119.0", "1.118.0", "1.117.0"]
    [at] = plan["destinations"]
    assert at["add"] == {"1.119.0": new, "1.118.0": old, "1.117.0": old}
    assert source.tally()[("GET", "tags")] >= 2  # 120+ tags: more than one page of 100
    assert not [k for k in (*source.tally(), *dest.tally()) if k[0] in WRITES]
    assert images.list_tags(registries.dest1, repo) == []
    assert not [r for r in queue.ledger.recent_releases(500)
                if r.source.startswith(f"{source.host}/{repo}@")]
    assert MirrorRuns(queue.ledger.client).last("app") is None

    # The sync: two releases (one per digest), copied by the worker.
    code, document, err = queue.sync(config, "--wait", "--timeout", "90")
    assert code == 0, (err, queue.worker.log()[-3000:])
    run = mirror_of(document, "app")["run"]
    assert run["ok"] and len(run["releases"]) == 2
    assert tags_at(registries.dest1, repo) == {"1.119.0": new, "1.118.0": old, "1.117.0": old}
    for release_id in run["releases"]:
        release = queue.ledger.get(release_id)
        assert release is not None and release.trigger == "sync:app"

    # A second run finds everything in sync: listings and HEADs only, nothing enqueued.
    source.reset_seen()
    dest.reset_seen()
    code, document, err = queue.sync(config)
    assert code == 0, err
    again = mirror_of(document, "app")
    assert again["run"]["releases"] == []
    assert again["destinations"][0]["in_sync"] == ["1.119.0", "1.118.0", "1.117.0"]
    for proxy in (source, dest):
        tally = proxy.tally()
        assert tally[("GET", "manifests")] == 0 and tally[("GET", "blobs")] == 0, proxy.log()
        assert not [k for k in tally if k[0] in WRITES], proxy.log()

    # The source moves one tag: that tag alone is sent.
    moved = tag_image(registries.source, repo, ["1.118.0"], seed="moved!")
    code, document, err = queue.sync(config, "--wait", "--timeout", "90")
    assert code == 0, (err, queue.worker.log()[-3000:])
    third = mirror_of(document, "app")
    assert third["destinations"][0]["update"] == {"1.118.0": moved}
    assert third["destinations"][0]["add"] == {}
    [release_id] = third["run"]["releases"]
    release = queue.ledger.get(release_id)
    assert release is not None
    assert release.destinations[f"{dest.host}/{repo}"].tags == ("1.118.0",)
    assert tags_at(registries.dest1, repo) == {"1.119.0": new, "1.118.0": moved,
                                               "1.117.0": old}


# -- prune, with every guard -------------------------------------------------------------------


def test_prune_touches_only_the_mirrors_own_tags_and_holds_over_its_limit(
    queue: Queue, registries: RegistrySet, source: QuirkProxy, dest: QuirkProxy,
    tmp_path: Path,
) -> None:
    repo = f"mirror/prune-{secrets.token_hex(4)}"
    digest = tag_image(registries.source, repo, ["v1", "v2", "v3"])
    # At the destination: what the mirror copied, two that left the source, one not its own.
    tag_image(registries.dest1, repo, ["v1", "v2", "v3", "v8", "v9", "nightly"],
              seed="stale")
    config = write_config(tmp_path / "fanout.toml", f"""
[[mirrors]]
name = "pruned"
source = "{source.host}/{repo}"
tags = ["v*"]
destinations = ["{dest.host}/{repo}"]
prune = true
""")
    # The default cap: 10% of the mirror's 5 tags there, at least 1. Two would go: held.
    code, document, err = queue.sync(config, "--wait", "--timeout", "90")
    assert code == 0, err
    [at] = mirror_of(document, "pruned")["destinations"]
    assert at["prune"] == [] and sorted(at["held_back"]) == ["v8", "v9"]
    assert "limit" in at["prune_held"]
    assert set(images.list_tags(registries.dest1, repo)) == {"v1", "v2", "v3", "v8", "v9",
                                                             "nightly"}
    assert not dest.requests("DELETE", "/manifests/")

    # Over the limit on purpose: the two go, the tag outside the filters stays.
    code, document, err = queue.sync(config, "--prune-over-limit")
    assert code == 0, (document, err)
    run = mirror_of(document, "pruned")["run"]
    assert run["pruned"] == {f"{dest.host}/{repo}": ["v9", "v8"]}  # newest first
    assert tags_at(registries.dest1, repo) == {"v1": digest, "v2": digest, "v3": digest,
                                               "nightly": tags_at(registries.dest1, repo)[
                                                   "nightly"]}
    [entry] = PruneLog(queue.ledger.client).recent("pruned")
    assert entry["destination"] == f"{dest.host}/{repo}" and entry["tags"] == ["v9", "v8"]


def test_a_source_that_cannot_be_listed_prunes_nothing_and_exits_4(
    queue: Queue, registries: RegistrySet, source: QuirkProxy, dest: QuirkProxy,
    tmp_path: Path,
) -> None:
    repo = f"mirror/gone-{secrets.token_hex(4)}"
    tag_image(registries.dest1, repo, ["v1", "v2"])
    config = write_config(tmp_path / "fanout.toml", f"""
[[mirrors]]
name = "gone"
source = "{source.host}/{repo}"
destinations = ["{dest.host}/{repo}"]
prune = true
prune_limit = 100
""")
    code, document, err = queue.sync(config, "--prune-over-limit")
    assert code == 4, (code, document, err)
    run = mirror_of(document, "gone")["run"]
    assert not run["ok"] and "could not be listed" in run["error"]
    assert set(images.list_tags(registries.dest1, repo)) == {"v1", "v2"}
    assert not [k for k in dest.tally() if k[0] in WRITES]
    recorded = MirrorRuns(queue.ledger.client).last("gone")
    assert recorded is not None and not recorded.ok


def test_a_registry_that_cannot_untag_says_so_and_keeps_the_tag(
    queue: Queue, tmp_path: Path, registries: RegistrySet, source: QuirkProxy,
) -> None:
    from tests.support.registries import start_registry

    locked = start_registry(tmp_path / "no-deletes", delete=False)
    try:
        repo = f"mirror/locked-{secrets.token_hex(4)}"
        tag_image(registries.source, repo, ["v1"])
        tag_image(locked, repo, ["v1", "v2"], seed="x")
        config = write_config(tmp_path / "fanout.toml", f"""
[[mirrors]]
name = "locked"
source = "{source.host}/{repo}"
tags = ["v*"]
destinations = ["{locked.host}/{repo}"]
prune = true
prune_limit = 5
""")
        code, document, err = queue.sync(config)
        assert code == 1, (document, err)
        run = mirror_of(document, "locked")["run"]
        assert "deletes are disabled" in run["error"] or "cannot untag" in run["error"], run
        assert set(images.list_tags(locked, repo)) == {"v1", "v2"}
    finally:
        locked.close()


# -- a rate-limited listing --------------------------------------------------------------------


def test_a_429_on_the_listing_is_ridden_out_with_the_shared_hold(
    queue: Queue, registries: RegistrySet, source: QuirkProxy, dest: QuirkProxy,
    tmp_path: Path,
) -> None:
    repo = f"mirror/limited-{secrets.token_hex(4)}"
    tags = [f"1.{n}" for n in range(150)]
    tag_image(registries.source, repo, tags)
    limit = source.behaviour(RateLimit)
    limit.script(1, retry_after=1, skip=1)  # the second page, once
    config = write_config(tmp_path / "fanout.toml", f"""
[[mirrors]]
name = "limited"
source = "{source.host}/{repo}"
newest = 2
destinations = ["{dest.host}/{repo}"]
""")
    with watch_commands(queue.redis.url) as commands:
        code, document, err = queue.sync(config, "--dry-run")
    assert code == 0, err
    assert list(mirror_of(document, "limited")["kept"]) == ["1.149", "1.148"]
    listings = source.requests("GET", "/tags/list")
    assert [s.status for s in listings] == [200, 429, 200], source.log(path="tags")
    assert len(limit.limited) == 1
    # The hold was shared: written to Redis, where every worker's requests to that registry
    # read it, not only kept in this process.
    writes = [c for c in commands if c.startswith("SET fanout:hold:" + source.host)]
    assert writes, commands


@contextmanager
def watch_commands(url: str) -> Iterator[list[str]]:
    """The commands a Redis runs meanwhile (MONITOR), as text."""
    seen: list[str] = []
    client = redis.Redis.from_url(url)
    monitor = client.monitor()
    monitor.connection.send_command("MONITOR")
    monitor.connection.read_response()
    stop = threading.Event()

    def read() -> None:
        while not stop.is_set():
            try:
                seen.append(str(monitor.next_command()["command"]))
            except (redis.RedisError, OSError):
                return

    thread = threading.Thread(target=read, daemon=True)
    thread.start()
    try:
        yield seen
    finally:
        stop.set()
        client.ping()  # one more command wakes the reader
        monitor.connection.disconnect()
        thread.join(timeout=5)
        client.close()
