"""The API's answers that need no registry and no broker: who may do what, what a bad request
gets back, and reading releases from the ledger."""

from __future__ import annotations

import base64
import json

import pytest
import redis
from fastapi.testclient import TestClient

from tests.service.conftest import CI_TOKEN, READER_TOKEN, SOURCE, bearer
from workers.ledger import Ledger


def _release(ledger: Ledger, *destinations: str, source: str = SOURCE) -> str:
    return ledger.create_release(source, [(d, ("v1",)) for d in destinations])


def test_healthz_needs_no_token_and_says_nothing_else(client: TestClient) -> None:
    answer = client.get("/healthz")
    assert answer.status_code == 200 and answer.json() == {"status": "ok"}


@pytest.mark.parametrize("headers", [
    {},
    bearer("not-a-token"),
    bearer(CI_TOKEN + "x"),
    {"Authorization": "Basic " + base64.b64encode(b"ci:wrong").decode()},
    {"Authorization": "Basic !!!not-base64"},
    {"Authorization": f"Token {CI_TOKEN}"},
])
def test_no_token_or_a_bad_one_is_401_and_nothing_is_enqueued(
        client: TestClient, ledger: Ledger, headers: dict[str, str]) -> None:
    answer = client.post("/v1/releases", headers=headers,
                         json={"source": "registry.corp/acme/app:v1", "to": "release"})
    assert answer.status_code == 401
    assert "Bearer" in answer.headers["www-authenticate"]
    assert ledger.recent(10) == []
    assert client.get("/v1/releases", headers=headers).status_code == 401


def test_the_query_token_is_for_webhooks_only(client: TestClient) -> None:
    assert client.get(f"/v1/releases?token={CI_TOKEN}").status_code == 401


def test_a_browser_gives_the_token_as_the_basic_password(client: TestClient,
                                                         ledger: Ledger) -> None:
    release_id = _release(ledger, "quay.io/acme/app")
    basic = base64.b64encode(f"anyone:{READER_TOKEN}".encode()).decode()
    answer = client.get(f"/v1/releases/{release_id}", headers={"Authorization": f"Basic {basic}"})
    assert answer.status_code == 200 and answer.json()["id"] == release_id


@pytest.mark.parametrize(("body", "names"), [
    ({"source": "registry.corp/acme/app:v1", "to": "mirrors"}, "may not enqueue to set 'mirrors'"),
    ({"source": "ghcr.io/other/app:v1", "to": "release"}, "may not copy from ghcr.io/other/app"),
    ({"source": "registry.corp/acme/app:v1", "destinations": ["evil.example/app"]},
     "may not enqueue to evil.example/app"),
    ({"source": "registry.corp/acme/app:v1", "to": "release",
      "optional": ["mirror.example/acme/app"]}, "may not enqueue to mirror.example/acme/app"),
    ({"source": "registry.corp/acme/app:v1"}, "token 'reader' may not"),
])
def test_outside_the_grants_is_403_and_nothing_is_enqueued(
        client: TestClient, ledger: Ledger, body: dict[str, object], names: str) -> None:
    token = READER_TOKEN if "to" not in body and "destinations" not in body else CI_TOKEN
    answer = client.post("/v1/releases", headers=bearer(token), json=body)
    assert answer.status_code == 403, answer.text
    assert names in answer.json()["detail"]
    assert ledger.recent(10) == []


@pytest.mark.parametrize(("body", "status", "names"), [
    (b"{not json", 400, "not valid JSON"),
    (b"", 422, "body"),
    (b"[1, 2]", 422, "body"),
    (json.dumps({"to": "release"}).encode(), 422, "body.source: Field required"),
    (json.dumps({"source": "x", "to": "release", "extra": 1}).encode(), 422, "body.extra"),
    (json.dumps({"source": "registry.corp/acme/app:v1", "to": "nope"}).encode(), 422,
     "no destination set 'nope'"),
    (json.dumps({"source": "registry.corp/acme/app:v1", "to": "release",
                 "destinations": ["quay.io/acme/app"]}).encode(), 422, "not both"),
    (json.dumps({"source": "Registry.Corp/UPPER CASE:v1", "to": "release"}).encode(), 422,
     "source"),
    (json.dumps({"source": "-", "to": "release"}).encode(), 422, "source"),
    (json.dumps({"source": "registry.corp/acme/app:v1", "to": "release",
                 "tags": ["bad tag!"]}).encode(), 422, "bad tag!"),
])
def test_a_bad_request_is_refused_naming_what_is_wrong(
        client: TestClient, ledger: Ledger, body: bytes, status: int, names: str) -> None:
    answer = client.post("/v1/releases", headers={**bearer(CI_TOKEN),
                                                  "Content-Type": "application/json"},
                         content=body)
    assert answer.status_code == status, answer.text
    assert names in answer.json()["detail"]
    assert ledger.recent(10) == []


def test_an_oversized_body_is_413(client: TestClient) -> None:
    answer = client.post("/v1/releases", headers=bearer(CI_TOKEN),
                         content=b"{" + b" " * (1 << 20) + b"}")
    assert answer.status_code == 413
    assert "1048576" in answer.json()["detail"]


def test_releases_are_read_newest_first(client: TestClient, ledger: Ledger) -> None:
    first = _release(ledger, "quay.io/acme/app")
    second = _release(ledger, "quay.io/acme/app", "ghcr.io/acme/app")
    listed = client.get("/v1/releases?limit=5", headers=bearer(READER_TOKEN)).json()
    assert [r["id"] for r in listed["releases"]] == [second, first]
    one = client.get(f"/v1/releases/{second}", headers=bearer(READER_TOKEN)).json()
    assert set(one["destinations"]) == {"quay.io/acme/app", "ghcr.io/acme/app"}
    assert one["exit_code"] == 3 and one["done"] is False
    assert client.get("/v1/releases?limit=0", headers=bearer(READER_TOKEN)).status_code == 422
    missing = client.get("/v1/releases/rel-nope", headers=bearer(READER_TOKEN))
    assert missing.status_code == 404 and "rel-nope" in missing.json()["detail"]


def test_retry_needs_the_grants_of_an_enqueue(client: TestClient, ledger: Ledger) -> None:
    release_id = _release(ledger, "quay.io/acme/app")
    ledger.mark_failed(release_id, "quay.io/acme/app", error="boom", error_type="X")
    refused = client.post(f"/v1/releases/{release_id}/retry", headers=bearer(READER_TOKEN))
    assert refused.status_code == 403
    outside = _release(ledger, "evil.example/app")
    ledger.mark_failed(outside, "evil.example/app", error="boom", error_type="X")
    refused = client.post(f"/v1/releases/{outside}/retry", headers=bearer(CI_TOKEN))
    assert refused.status_code == 403 and "evil.example/app" in refused.json()["detail"]
    assert ledger.get(release_id).destinations["quay.io/acme/app"].state == "failed"  # type: ignore[union-attr]


def test_retry_of_a_destination_under_way_is_409(client: TestClient, ledger: Ledger) -> None:
    release_id = _release(ledger, "quay.io/acme/app")
    answer = client.post(f"/v1/releases/{release_id}/retry", headers=bearer(CI_TOKEN),
                         json={"destinations": ["quay.io/acme/app"]})
    assert answer.status_code == 409 and "queued" in answer.json()["detail"]
    nothing = client.post(f"/v1/releases/{release_id}/retry", headers=bearer(CI_TOKEN))
    assert nothing.status_code == 200 and nothing.json()["sent"] == []


def test_events_stream_the_release_until_it_is_final(client: TestClient, ledger: Ledger) -> None:
    release_id = _release(ledger, "quay.io/acme/app")
    ledger.mark_succeeded(release_id, "quay.io/acme/app", stats={"bytes": 10},
                          seconds=0.1)
    with client.stream("GET", f"/v1/releases/{release_id}/events",
                       headers=bearer(READER_TOKEN)) as stream:
        assert stream.headers["content-type"].startswith("text/event-stream")
        text = "".join(stream.iter_text())
    events = [block.split("\n", 1) for block in text.strip().split("\n\n")]
    assert [kind for kind, _ in events] == ["event: release", "event: end"]
    document = json.loads(events[0][1].removeprefix("data: "))
    assert document["destinations"]["quay.io/acme/app"]["state"] == "succeeded"
    assert client.get("/v1/releases/rel-x/events", headers=bearer(READER_TOKEN)).status_code == 404


def test_the_openapi_document_describes_the_request(client: TestClient) -> None:
    document = client.get("/openapi.json").json()
    schema = document["components"]["schemas"]["ReleaseRequest"]
    assert schema["required"] == ["source"]
    assert {"source", "to", "destinations", "tags", "optional", "referrers"} <= set(
        schema["properties"])


def test_a_ledger_that_is_down_is_503_not_a_server_error(config: object) -> None:
    from service.app import create_app
    from service.config import ServeConfig
    from tests.support.ports import free_port
    assert isinstance(config, ServeConfig)
    from redis.backoff import NoBackoff
    from redis.retry import Retry
    down = Ledger(redis.Redis(port=free_port(), socket_connect_timeout=0.5,
                              retry=Retry(NoBackoff(), 0)))
    with TestClient(create_app(config, {}, ledger=down),
                    raise_server_exceptions=False) as client:
        for answer in (client.get("/v1/releases", headers=bearer(READER_TOKEN)),
                       client.get("/v1/releases/rel-x", headers=bearer(READER_TOKEN)),
                       client.get("/healthz")):
            assert answer.status_code == 503, answer.text
            assert "unreachable" in answer.json()["detail"]


def test_any_token_may_verify_and_a_repair_needs_the_grants(client: TestClient,
                                                           ledger: Ledger) -> None:
    # Nothing landed: verified without contacting a registry.
    release_id = _release(ledger, "quay.io/acme/app")
    ledger.mark_failed(release_id, "quay.io/acme/app", error="boom", error_type="X")
    answer = client.post(f"/v1/releases/{release_id}/verify", headers=bearer(READER_TOKEN))
    assert answer.status_code == 200, answer.text
    document = answer.json()
    assert document["id"] == release_id and document["exit_code"] == 0
    assert [d["state"] for d in document["destinations"]] == ["not landed"]
    assert document["release"]["id"] == release_id
    assert client.post(f"/v1/releases/{release_id}/verify").status_code == 401
    assert client.post("/v1/releases/rel-nope/verify",
                       headers=bearer(READER_TOKEN)).status_code == 404

    refused = client.post(f"/v1/releases/{release_id}/verify", headers=bearer(READER_TOKEN),
                          json={"repair": True})
    assert refused.status_code == 403 and "reader" in refused.json()["detail"]
    assert client.post(f"/v1/releases/{release_id}/verify", headers=bearer(CI_TOKEN),
                       json={"repair": "yes please"}).status_code == 422


def test_a_repair_of_a_release_under_way_is_409(client: TestClient, ledger: Ledger) -> None:
    release_id = _release(ledger, "quay.io/acme/app", "ghcr.io/acme/app")
    ledger.mark_running(release_id, "quay.io/acme/app", worker="w1")
    answer = client.post(f"/v1/releases/{release_id}/verify", headers=bearer(CI_TOKEN),
                         json={"repair": True})
    assert answer.status_code == 409
    assert "still under way" in answer.json()["detail"]
