"""workers.redis_publish: a release's messages to a queue go in one LPUSH, in their order."""

from __future__ import annotations

import json
from typing import Any

import fakeredis

from workers import redis_publish


def test_one_lpush_per_queue_keeps_the_order_and_names_what_was_refused(
    monkeypatch: Any,
) -> None:
    client = fakeredis.FakeRedis(decode_responses=True)
    client.set("broken", "not a list")
    monkeypatch.setattr(redis_publish, "_PER_LPUSH", 2)
    messages = [("a", {"n": 0}), ("b", {"n": 1}), ("a", {"n": 2}), ("broken", {"n": 3}),
                ("a", {"n": 4})]
    sent: list[str] = []
    original = client.pipeline

    def pipeline(*args: Any, **kwargs: Any) -> Any:
        pipe = original(*args, **kwargs)
        real = pipe.lpush

        def lpush(name: str, *values: Any) -> Any:
            sent.append(name)
            return real(name, *values)

        pipe.lpush = lpush
        return pipe

    monkeypatch.setattr(client, "pipeline", pipeline)
    assert redis_publish.publish(client, messages) == [3]
    assert sent == ["a", "a", "b", "broken"]  # queue a's three messages: two per LPUSH here
    # The worker BRPOPs: the first message given comes out first.
    taken = [json.loads(client.rpop("a"))["n"] for _ in range(3)]
    assert taken == [0, 2, 4]
    assert json.loads(client.rpop("b"))["n"] == 1
