"""``/v1/mirrors``: the configured mirrors with their last run, and a sync on demand with its
grants and refusals. The sync itself is a stand-in (``FakeSync``): what it does is
tests/workers' and the end-to-end tests'."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import redis
from fastapi.testclient import TestClient
from redis.backoff import NoBackoff
from redis.retry import Retry

from service import mirrors as mirrors_api
from service.app import create_app
from service.config import ServeConfig
from tests.service.conftest import CI_TOKEN, READER_TOKEN, bearer
from tests.service.mirror_fakes import BUSY, MIRROR_TOKEN, NGINX, FakeSync, mirror_config
from tests.support.ports import free_port
from workers.ledger import Ledger
from workers.mirror_model import MirrorRun
from workers.mirror_runs import MirrorRuns


@pytest.fixture
def config() -> ServeConfig:
    return mirror_config()


@pytest.fixture
def fake_sync(monkeypatch: pytest.MonkeyPatch) -> FakeSync:
    fake = FakeSync()
    monkeypatch.setattr(mirrors_api, "sync_mirror", fake)
    return fake


@pytest.fixture
def client(config: ServeConfig, ledger: Ledger) -> Iterator[TestClient]:
    with TestClient(create_app(config, {}, ledger=ledger),
                    raise_server_exceptions=False) as test_client:
        yield test_client


def test_any_token_reads_every_mirror_with_its_last_run(client: TestClient,
                                                        ledger: Ledger) -> None:
    runs = MirrorRuns(ledger.client)
    runs.record(MirrorRun(mirror="nginx", trigger="schedule", started_at=10.0, finished_at=12.0,
                          ok=True, counts={"add": 1, "in_sync": 3}, releases=("rel-1",)))
    runs.record(MirrorRun(mirror="nginx", trigger="schedule", started_at=20.0, finished_at=21.0,
                          ok=False, error="listing docker.io/library/nginx: HTTP 503"))
    assert client.get("/v1/mirrors").status_code == 401
    answer = client.get("/v1/mirrors", headers=bearer(READER_TOKEN))
    assert answer.status_code == 200, answer.text
    found = {m["name"]: m for m in answer.json()["mirrors"]}
    assert list(found) == ["nginx", "app", "elsewhere"]
    nginx = found["nginx"]
    assert nginx["source"] == "docker.io/library/nginx" and nginx["to"] == "mirrors"
    assert nginx["destinations"] == ["mirror.example/acme/app"]
    assert nginx["tags"] == ["1.*"] and nginx["every"] == 3600.0 and nginx["prune"] is True
    assert nginx["last_success"] == 12.0 and nginx["failing_since"] == 20.0
    assert nginx["last_run"]["ok"] is False
    assert nginx["last_run"]["error"] == "listing docker.io/library/nginx: HTTP 503"
    assert found["app"]["last_run"] is None and found["app"]["last_success"] is None


def test_a_sync_runs_the_mirror_and_answers_its_plan_and_run(
        client: TestClient, fake_sync: FakeSync) -> None:
    answer = client.post("/v1/mirrors/nginx/sync", headers=bearer(MIRROR_TOKEN))
    assert answer.status_code == 200, answer.text
    [call] = fake_sync.calls
    assert call["mirror"] == NGINX and call["trigger"] == "api"
    assert call["dry_run"] is False and call["prune_over_limit"] is False
    assert callable(call["run"])
    body = answer.json()
    assert body["run"]["releases"] == ["rel-1"] and body["run"]["trigger"] == "api"
    plan = body["plan"]
    assert plan["counts"]["add"] == 1 and plan["counts"]["prune"] == 1
    assert plan["destinations"][0]["add"] == {"1.27": "sha256:" + "b" * 64}
    assert plan["releases"] == [{"digest": "sha256:" + "b" * 64, "targets": [
        {"destination": "mirror.example/acme/app", "tags": ["1.27"]}]}]


@pytest.mark.parametrize(("query", "body"), [
    ("?dry_run=true&prune_over_limit=true", None),
    ("", {"dry_run": True, "prune_over_limit": True}),
])
def test_dry_run_and_prune_over_limit_pass_through(
        client: TestClient, fake_sync: FakeSync, query: str, body: object) -> None:
    answer = client.post(f"/v1/mirrors/nginx/sync{query}", headers=bearer(MIRROR_TOKEN),
                         json=body)
    assert answer.status_code == 200, answer.text
    [call] = fake_sync.calls
    assert call["dry_run"] is True and call["prune_over_limit"] is True
    assert answer.json()["run"]["dry_run"] is True


@pytest.mark.parametrize(("token", "name", "status", "says"), [
    (None, "nginx", 401, "token is required"),
    ("not-a-token", "nginx", 401, "not valid"),
    (READER_TOKEN, "nginx", 403, "may not copy from docker.io/library/nginx"),
    # CI may use neither the source nor the set.
    (CI_TOKEN, "nginx", 403, "may not copy from docker.io/library/nginx"),
    (MIRROR_TOKEN, "app", 403, "may not copy from registry.corp/acme/app"),
    # Written-out destinations: each must be in one of the token's sets.
    (CI_TOKEN, "elsewhere", 403, "may not enqueue to evil.example/app"),
    (MIRROR_TOKEN, "nope", 404, "no mirror 'nope'"),
])
def test_refusals_run_nothing(client: TestClient, fake_sync: FakeSync, token: str | None,
                              name: str, status: int, says: str) -> None:
    headers = bearer(token) if token else {}
    answer = client.post(f"/v1/mirrors/{name}/sync", headers=headers)
    assert answer.status_code == status, answer.text
    assert says in answer.json()["detail"]
    assert fake_sync.calls == []


def test_a_token_granted_the_destinations_may_sync_a_mirror_without_a_set(
        client: TestClient, fake_sync: FakeSync) -> None:
    answer = client.post("/v1/mirrors/app/sync", headers=bearer(CI_TOKEN))
    assert answer.status_code == 200, answer.text
    assert fake_sync.calls[0]["mirror"].name == "app"


def test_a_set_granted_without_its_source_is_refused(config: ServeConfig,
                                                     ledger: Ledger,
                                                     fake_sync: FakeSync) -> None:
    # CI may use set "release" and copy from registry.corp/acme/*; a set it lacks is refused.
    from tests.service.mirror_fakes import with_mirrors
    from workers.mirror_model import Mirror
    other = Mirror(name="other", source="registry.corp/acme/app",
                   destinations=("mirror.example/acme/app",), to="mirrors")
    with TestClient(create_app(with_mirrors(config, (other,)), {}, ledger=ledger),
                    raise_server_exceptions=False) as client:
        answer = client.post("/v1/mirrors/other/sync", headers=bearer(CI_TOKEN))
    assert answer.status_code == 403 and "set 'mirrors'" in answer.json()["detail"]
    assert fake_sync.calls == []


def test_a_mirror_being_synced_is_409(client: TestClient, fake_sync: FakeSync) -> None:
    fake_sync.raises = BUSY
    answer = client.post("/v1/mirrors/nginx/sync", headers=bearer(MIRROR_TOKEN))
    assert answer.status_code == 409 and "being synced already" in answer.json()["detail"]


def test_redis_down_is_503(config: ServeConfig, fake_sync: FakeSync) -> None:
    fake_sync.raises = redis.ConnectionError("Error 111 connecting to redis://:pw@x")
    down = Ledger(redis.Redis(port=free_port(), socket_connect_timeout=0.5,
                              retry=Retry(NoBackoff(), 0)))
    with TestClient(create_app(config, {}, ledger=down),
                    raise_server_exceptions=False) as client:
        for answer in (client.get("/v1/mirrors", headers=bearer(READER_TOKEN)),
                       client.post("/v1/mirrors/nginx/sync", headers=bearer(MIRROR_TOKEN))):
            assert answer.status_code == 503, answer.text
            assert "unreachable" in answer.json()["detail"]
            assert "pw" not in answer.text


def test_a_bad_body_is_refused(client: TestClient, fake_sync: FakeSync) -> None:
    answer = client.post("/v1/mirrors/nginx/sync", headers=bearer(MIRROR_TOKEN),
                         json={"dry_run": True, "extra": 1})
    assert answer.status_code == 422 and "body.extra" in answer.json()["detail"]
    assert fake_sync.calls == []


def test_without_mirrors_the_list_is_empty(ledger: Ledger) -> None:
    from tests.service.mirror_fakes import with_mirrors
    with TestClient(create_app(with_mirrors(mirror_config(), ()), {}, ledger=ledger)) as client:
        answer = client.get("/v1/mirrors", headers=bearer(READER_TOKEN))
    assert answer.json() == {"mirrors": []}


def test_the_openapi_document_has_the_mirrors(client: TestClient) -> None:
    document = client.get("/openapi.json").json()
    assert {"/v1/mirrors", "/v1/mirrors/{name}/sync"} <= set(document["paths"])
    schema = document["components"]["schemas"]["SyncRequest"]
    assert set(schema["properties"]) == {"dry_run", "prune_over_limit"}


def test_reading_the_mirrors_is_one_round_trip(config: ServeConfig) -> None:
    from tests.support.round_trips import CountingFakeRedis
    counting = CountingFakeRedis()
    with TestClient(create_app(config, {}, ledger=Ledger(counting))) as client:
        counting.tally.reset()
        assert client.get("/v1/mirrors", headers=bearer(READER_TOKEN)).status_code == 200
    assert counting.tally.commands == ["PIPELINE"]


