"""workers/sync_tasks.py: fanout.sync and fanout.verify as thin shells (skip, summary, retry
or fail), with the sync core stubbed and the verify core run against fakeredis and a stand-in
registry."""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Awaitable, Callable
from typing import Any

import fakeredis
import httpx
import pytest
import redis

from registry.credentials import default_store
from registry.envconfig import ConfigError, transport_options_from_env
from registry.session import Registries
from workers import publishing, sync_tasks
from workers.ledger import Ledger
from workers.locks import Lease
from workers.mirror_model import Mirror, MirrorBusy, MirrorPlan, MirrorRun
from workers.settings import WorkerSettings

NGINX = Mirror(name="nginx", source="docker.io/library/nginx",
               destinations=("harbor.example/mirror/nginx",), every=60.0)
DIGEST = "sha256:" + "1" * 64
DEST = "a.example/acme/app"
_MANIFEST = re.compile(r"/v2/(.+)/manifests/([^/]+)")


class RetryCalled(Exception):
    pass


@pytest.fixture
def server() -> fakeredis.FakeRedis:
    return fakeredis.FakeRedis(decode_responses=True)


@pytest.fixture
def ledger(server: fakeredis.FakeRedis) -> Ledger:
    return Ledger(server)


class Registry:
    """Manifests by (host/repository, reference); everything else is 404."""

    def __init__(self) -> None:
        self.refs: dict[tuple[str, str], str] = {}

    def __call__(self, request: httpx.Request) -> httpx.Response:
        if request.url.path == "/v2/":
            return httpx.Response(200)
        found = _MANIFEST.fullmatch(request.url.path)
        digest = self.refs.get((f"{request.url.host}/{found[1]}", found[2])) if found else None
        if digest is None:
            return httpx.Response(404, json={"errors": [{"code": "MANIFEST_UNKNOWN",
                                                         "message": "manifest unknown"}]})
        return httpx.Response(200, headers={
            "Docker-Content-Digest": digest, "Content-Length": "100",
            "Content-Type": "application/vnd.oci.image.manifest.v1+json"})


class Engine:
    """The worker engine's ``run``: registry work on a pool, here over a stand-in transport."""

    def __init__(self, registry: Registry) -> None:
        self.transport = httpx.MockTransport(registry)
        self.runs = 0

    def run(self, work: Callable[[Registries], Awaitable[Any]], abort: Any = None) -> Any:
        self.runs += 1

        async def pooled() -> Any:
            async with Registries(default_store({}), transport_options_from_env({}),
                                  transport=self.transport) as registries:
                return await work(registries)

        return asyncio.run(pooled())


@pytest.fixture
def registry() -> Registry:
    return Registry()


@pytest.fixture
def wired(monkeypatch: pytest.MonkeyPatch, server: fakeredis.FakeRedis, ledger: Ledger,
          registry: Registry) -> Engine:
    """The tasks on fakeredis (ledger and broker) and the stand-in registry."""
    engine = Engine(registry)
    monkeypatch.setattr(sync_tasks, "ledger_client", lambda: server)
    monkeypatch.setattr(sync_tasks, "_ledger", lambda: ledger)
    monkeypatch.setattr(sync_tasks, "engine", lambda: engine)
    monkeypatch.setattr(sync_tasks, "settings", WorkerSettings.from_env(
        {"FANOUT_BROKER_URL": "redis://broker.invalid:6379/0", "FANOUT_LOCK_TTL": "20",
         "FANOUT_HEARTBEAT_INTERVAL": "5"}))
    monkeypatch.setattr(publishing, "broker_client", lambda url: server)
    return engine


def retries(monkeypatch: pytest.MonkeyPatch, task: Any) -> dict[str, Any]:
    seen: dict[str, Any] = {}

    def retry(**options: Any) -> RetryCalled:
        seen.update(options)
        return RetryCalled()

    monkeypatch.setattr(task, "retry", retry)
    return seen


# -- fanout.sync ----------------------------------------------------------------------------------


def stub_sync(monkeypatch: pytest.MonkeyPatch, outcome: Any) -> list[dict[str, Any]]:
    calls: list[dict[str, Any]] = []

    def sync_mirror(mirror: Mirror, **kwargs: Any) -> tuple[MirrorPlan, MirrorRun]:
        calls.append({"mirror": mirror, **kwargs})
        if isinstance(outcome, BaseException):
            raise outcome
        return outcome

    monkeypatch.setattr(sync_tasks, "sync_mirror", sync_mirror)
    return calls


def test_sync_runs_the_mirror_it_was_sent_and_returns_a_summary(
    monkeypatch: pytest.MonkeyPatch, wired: Engine,
) -> None:
    run = MirrorRun("nginx", "schedule", 1.0, 2.0, ok=True, counts={"add": 2, "in_sync": 5},
                    releases=("rel-1",))
    calls = stub_sync(monkeypatch, (MirrorPlan("nginx", NGINX.source, {}, ()), run))
    summary = sync_tasks.sync.run("nginx", NGINX.to_json())
    assert summary == {"mirror": "nginx", "trigger": "schedule", "state": "ok",
                       "counts": {"add": 2, "in_sync": 5}, "releases": ["rel-1"]}
    [call] = calls
    assert call["mirror"] == NGINX and call["trigger"] == "schedule"
    assert call["run"] == wired.run  # the worker's own pool and credentials


def test_sync_reports_a_failed_run_without_raising(
    monkeypatch: pytest.MonkeyPatch, wired: Engine,
) -> None:
    run = MirrorRun("nginx", "api", 1.0, 2.0, ok=False, error="could not list the source")
    stub_sync(monkeypatch, (MirrorPlan("nginx", NGINX.source, {}, ()), run))
    summary = sync_tasks.sync.run("nginx", NGINX.to_json(), trigger="api")
    assert summary["state"] == "failed" and summary["error"] == "could not list the source"


def test_a_busy_mirror_is_a_skipped_run(
    monkeypatch: pytest.MonkeyPatch, wired: Engine, caplog: pytest.LogCaptureFixture,
) -> None:
    stub_sync(monkeypatch, MirrorBusy("nginx"))
    seen = retries(monkeypatch, sync_tasks.sync)
    with caplog.at_level(logging.INFO, "fanout.scheduler"):
        assert sync_tasks.sync.run("nginx", NGINX.to_json())["state"] == "skipped"
    assert seen == {}
    assert "skipped: another run holds the lease" in caplog.text


def test_a_redis_blip_is_retried_with_backoff(
    monkeypatch: pytest.MonkeyPatch, wired: Engine,
) -> None:
    stub_sync(monkeypatch, redis.ConnectionError("Connection refused"))
    seen = retries(monkeypatch, sync_tasks.sync)
    with pytest.raises(RetryCalled):
        sync_tasks.sync.run("nginx", NGINX.to_json())
    assert 0 <= seen["countdown"] <= sync_tasks.settings.retry_backoff
    assert isinstance(seen["exc"], redis.ConnectionError)


@pytest.mark.parametrize("outcome", [ConfigError("mirrors[0]: bad glob"), ValueError("a bug")])
def test_config_errors_and_bugs_fail_without_a_retry(
    monkeypatch: pytest.MonkeyPatch, wired: Engine, outcome: Exception,
) -> None:
    stub_sync(monkeypatch, outcome)
    seen = retries(monkeypatch, sync_tasks.sync)
    with pytest.raises(type(outcome)):
        sync_tasks.sync.run("nginx", NGINX.to_json())
    assert seen == {}


def test_a_malformed_mirror_fails_before_anything_runs(
    monkeypatch: pytest.MonkeyPatch, wired: Engine,
) -> None:
    calls = stub_sync(monkeypatch, AssertionError("not reached"))
    seen = retries(monkeypatch, sync_tasks.sync)
    with pytest.raises(ConfigError, match="malformed"):
        sync_tasks.sync.run("nginx", {"name": "nginx"})
    with pytest.raises(ConfigError, match="'nginx'"):
        sync_tasks.sync.run("redis", NGINX.to_json())
    assert calls == [] and seen == {}


# -- fanout.verify --------------------------------------------------------------------------------


def landed(ledger: Ledger) -> str:
    release_id = ledger.create_release(f"src.example/acme/app@{DIGEST}", [(DEST, ("v1",))])
    ledger.mark_running(release_id, DEST, worker="w1@host")
    ledger.mark_succeeded(release_id, DEST, stats={}, seconds=0.1)
    return release_id


def test_verify_finds_drift_and_repairs_it(
    wired: Engine, ledger: Ledger, server: fakeredis.FakeRedis, registry: Registry,
    caplog: pytest.LogCaptureFixture,
) -> None:
    release_id = landed(ledger)  # the ledger says it landed; the registry has nothing
    with caplog.at_level(logging.INFO, "fanout.scheduler"):
        summary = sync_tasks.verify.run(3600, True)
    assert summary["state"] == "ok"
    assert (summary["checked"], summary["drift"]) == (1, 1)
    assert summary["repaired"] == {release_id: [DEST]}
    assert summary["counts"] == {"missing": 1}
    assert "1 drifted, 1 sent again" in caplog.text
    # Sent again through workers.publishing, as a new attempt of the same release.
    assert server.llen("fanout") == 1
    assert ledger.get(release_id).destinations[DEST].state == "queued"  # type: ignore[union-attr]
    assert server.get(sync_tasks.VERIFY_LEASE) is None  # the lease is given back


def test_verify_without_repair_only_reports(wired: Engine, ledger: Ledger,
                                            registry: Registry,
                                            server: fakeredis.FakeRedis) -> None:
    landed(ledger)
    registry.refs[(DEST, "v1")] = registry.refs[(DEST, DIGEST)] = DIGEST
    summary = sync_tasks.verify.run(3600.0)
    assert (summary["checked"], summary["drift"], summary["repaired"]) == (1, 0, {})
    assert summary["counts"] == {"in place": 1}
    assert server.llen("fanout") == 0


def test_a_verify_still_running_makes_the_next_one_a_skipped_run(
    wired: Engine, ledger: Ledger, server: fakeredis.FakeRedis,
    caplog: pytest.LogCaptureFixture,
) -> None:
    landed(ledger)
    other = Lease(server, sync_tasks.VERIFY_LEASE, 20, owner="the-long-one")
    assert other.acquire()
    with caplog.at_level(logging.INFO, "fanout.scheduler"):
        assert sync_tasks.verify.run(3600.0, True) == {"state": "skipped"}
    assert "skipped: another run holds the lease" in caplog.text
    assert wired.runs == 0 and other.holder() == other.token  # left alone


def test_verify_retries_when_the_broker_is_down_for_a_repair(
    monkeypatch: pytest.MonkeyPatch, wired: Engine, ledger: Ledger,
) -> None:
    landed(ledger)

    class Down:
        def ping(self) -> None:
            raise redis.ConnectionError("Connection refused")

        def close(self) -> None:
            pass

    monkeypatch.setattr(publishing, "broker_client", lambda url: Down())
    seen = retries(monkeypatch, sync_tasks.verify)
    with pytest.raises(RetryCalled):
        sync_tasks.verify.run(3600.0, True)
    assert "unreachable" in str(seen["exc"])
