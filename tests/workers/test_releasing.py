"""workers/releasing.py: a release made on the workers is recorded and sent as the producer's."""

from __future__ import annotations

import base64
import json
from typing import Any

import fakeredis
import pytest

from workers import publishing
from workers.ledger import Ledger
from workers.releasing import create_and_send
from workers.settings import WorkerSettings

SOURCE = "src.example/app@sha256:" + "a" * 64


@pytest.fixture
def server(monkeypatch: pytest.MonkeyPatch) -> Any:
    server = fakeredis.FakeRedis()
    monkeypatch.setattr(publishing, "broker_client", lambda url: server)
    return server


def test_a_release_records_its_trigger_order_and_tasks_and_is_sent(server: Any) -> None:
    ledger = Ledger(server)
    settings = WorkerSettings.from_env({})
    first = create_and_send(ledger, settings, SOURCE, [("dst.example/app", ["1.0", "latest"]),
                                                       ("dst2.example/app", ["1.0"])],
                            trigger="sync:nginx")
    second = create_and_send(ledger, settings, SOURCE, [("dst.example/app", ["1.1"])])
    release = ledger.get(first)
    assert release is not None
    assert release.trigger == "sync:nginx"
    assert release.to_dict()["trigger"] == "sync:nginx"
    assert ledger.order_of(second) == release.order + 1
    task = ledger.task_of(first, "dst.example/app")
    assert task is not None and task["tags"] == ["1.0", "latest"]
    messages = [json.loads(raw) for raw in server.lrange("fanout", 0, -1)]
    assert len(messages) == 3
    kwargs = [json.loads(base64.b64decode(m["body"]))[1] for m in messages]
    assert {(k["release_id"], k["destination"]) for k in kwargs} == {
        (first, "dst.example/app"), (first, "dst2.example/app"), (second, "dst.example/app")}
    assert all(k["order"] in (release.order, release.order + 1) for k in kwargs)


def test_tasks_not_published_are_failed_in_the_ledger(monkeypatch: pytest.MonkeyPatch) -> None:
    server = fakeredis.FakeRedis()
    server.set("fanout", "not a list")  # LPUSH refused
    monkeypatch.setattr(publishing, "broker_client", lambda url: server)
    ledger = Ledger(server)
    with pytest.raises(publishing.NotPublished, match="0 of 1 destinations enqueued"):
        create_and_send(ledger, WorkerSettings.from_env({}), SOURCE, [("dst.example/app", [])])
    [release_id] = ledger.recent(1)
    release = ledger.get(release_id)
    assert release is not None
    assert release.destinations["dst.example/app"].state == "failed"
    assert "not enqueued" in (release.destinations["dst.example/app"].last_error or "")
