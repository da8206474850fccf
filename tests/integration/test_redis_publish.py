"""The producer's own Redis publishing writes what Celery itself writes: the same message, on
the same list, for a worker to take.

Celery sends a task to a real Redis; ``workers.redis_publish`` sends the same task; the two
stored messages must be the same but for what is random or per process (delivery tag, origin).
"""

from __future__ import annotations

import base64
import json
from typing import Any

import pytest
import redis

from producer.broker import TASK_NAME, QueueUnreachable, send
from tests.support.queue import RedisServer, celery_client
from workers import redis_publish
from workers.ledger import Ledger
from workers.settings import WorkerSettings

pytestmark = pytest.mark.integration

TASK = {"release_id": "rel-1", "source": "src.example/app@sha256:" + "a" * 64,
        "destination": "dst.example/app", "tags": ["v1", "latest"],
        "referrers": {"enabled": True, "types": []}, "generation": 2}


def _normal(raw: bytes) -> dict[str, Any]:
    message: dict[str, Any] = json.loads(raw)
    message["properties"].pop("delivery_tag")
    message["properties"].pop("reply_to")  # the sending process's reply queue
    message["headers"].pop("origin")
    message["body"] = json.loads(base64.b64decode(message["body"]))
    return message


@pytest.mark.parametrize("queue", ["fanout", "fanout.dst.example"])
def test_the_message_is_the_one_celery_sends(redis_server: RedisServer, queue: str) -> None:
    url = f"{redis_server.url}/0"
    client = redis.Redis.from_url(url)
    app = celery_client({"FANOUT_BROKER_URL": url})
    app.send_task(TASK_NAME, kwargs=TASK, task_id="rel-1:dst.example/app:2", queue=queue)
    [celery_sent] = client.lrange(queue, 0, -1)
    bindings = {key: client.smembers(key) for key in client.keys("_kombu.binding.*")}
    client.flushdb()

    redis_publish.publish(client, [(queue, redis_publish.task_message(
        TASK_NAME, "rel-1:dst.example/app:2", TASK, queue))])

    [ours] = client.lrange(queue, 0, -1)
    assert _normal(ours) == _normal(celery_sent)
    # The queue's binding too: `fanout metrics` finds routed queues by it.
    assert {key: client.smembers(key) for key in client.keys("_kombu.binding.*")} == bindings


def test_a_queue_redis_refuses_is_reported_and_failed_in_the_ledger(
        redis_server: RedisServer) -> None:
    url = f"{redis_server.url}/0"
    client = redis.Redis.from_url(url)
    client.set("fanout.blocked.example", "a string: LPUSH onto it fails")
    settings = WorkerSettings.from_env({"FANOUT_BROKER_URL": url,
                                        "FANOUT_ROUTE_BY_REGISTRY": "1"})
    ledger = Ledger(client)
    source = "src.example/app@sha256:" + "a" * 64
    targets = ["ok.example/app", "blocked.example/app"]
    release_id = ledger.create_release(source, [(t, ()) for t in targets])

    with pytest.raises(QueueUnreachable, match="1 of 2 destinations enqueued"):
        send(ledger, settings, release_id, [{"release_id": release_id, "source": source,
                                             "destination": t, "tags": []} for t in targets])

    assert client.llen("fanout.ok.example") == 1
    release = ledger.get(release_id)
    assert release is not None
    assert release.destinations["blocked.example/app"].state == "failed"
    assert release.destinations["ok.example/app"].state == "queued"
