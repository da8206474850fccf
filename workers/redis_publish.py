"""Publishing copy tasks straight to a Redis broker, as kombu's Redis transport would.

``fanout enqueue`` runs in CI on every build. Through Celery, publishing costs the import of
Celery and kombu and a connection check of their own (together about 0.2 s of a 0.55 s
command); the ledger's Redis client is already loaded and connected. For a ``redis://`` or
``rediss://`` broker the message is written here, in Celery's task protocol 2 as kombu's Redis
transport stores it: one JSON document per message, ``LPUSH``ed onto the queue's list, which
the worker ``BRPOP``s. A release's messages go in one MULTI/EXEC: a connection lost on the way
publishes none of them.

Other brokers (RabbitMQ, Sentinel) go through Celery (:func:`workers.publishing.send`).
``tests/producer/test_redis_publish.py`` checks this message against the one Celery builds.
"""

from __future__ import annotations

import base64
import json
import os
import socket
import uuid
from collections.abc import Mapping, Sequence
from typing import Any

_SCHEMES = ("redis://", "rediss://")
# Celery's saferepr bound for the argsrepr/kwargsrepr headers Flower shows.
_REPR_MAX = 1024
_REPLY_TO = str(uuid.uuid4())
_SEP = "\x06\x16"  # kombu's separator in a binding: routing key, pattern, queue


def handles(url: str) -> bool:
    """Whether ``url`` is a broker this module publishes to (plain or TLS Redis)."""
    return url.startswith(_SCHEMES)


def task_message(name: str, task_id: str, kwargs: Mapping[str, Any], queue: str, *,
                 origin: str | None = None) -> dict[str, Any]:
    """The message kombu's Redis transport would store for ``name(**kwargs)`` on ``queue``."""
    embed = {"callbacks": None, "errbacks": None, "chain": None, "chord": None}
    body = json.dumps([[], dict(kwargs), embed]).encode("utf-8")
    kwargs_repr = repr(dict(kwargs))
    if len(kwargs_repr) > _REPR_MAX:
        kwargs_repr = kwargs_repr[:_REPR_MAX - 3] + "..."
    headers: dict[str, Any] = {
        "lang": "py", "task": name, "id": task_id, "shadow": None, "eta": None,
        "expires": None, "group": None, "group_index": None, "retries": 0,
        "timelimit": [None, None], "root_id": task_id, "parent_id": None,
        "argsrepr": "()", "kwargsrepr": kwargs_repr,
        "origin": origin or f"gen{os.getpid()}@{socket.gethostname()}",
        "ignore_result": None, "replaced_task_nesting": 0, "stamped_headers": None,
        "stamps": {},
    }
    return {
        "body": base64.b64encode(body).decode("ascii"),
        "content-encoding": "utf-8",
        "content-type": "application/json",
        "headers": headers,
        "properties": {
            "correlation_id": task_id,
            # Where results would go: none are kept (task_ignore_result), but Celery always
            # names its process's reply queue.
            "reply_to": _REPLY_TO,
            "delivery_mode": 2,
            "delivery_info": {"exchange": "", "routing_key": queue},
            "priority": 0,
            "body_encoding": "base64",
            "delivery_tag": str(uuid.uuid4()),
        },
    }


def publish(client: Any, messages: Sequence[tuple[str, Mapping[str, Any]]]) -> list[int]:
    """``LPUSH`` each (queue, message) in one MULTI/EXEC; the indexes of those Redis refused
    (a queue key of the wrong type). A connection lost before EXEC raises ``redis.RedisError``
    and nothing was published."""
    with client.pipeline(transaction=True) as pipe:
        for queue, message in messages:
            pipe.lpush(queue, json.dumps(message))
        for queue in dict.fromkeys(queue for queue, _ in messages):
            # The binding Celery declares with its queue (exchange and routing key named after
            # it): how `fanout metrics` finds a routed queue, empty or not.
            pipe.sadd(f"_kombu.binding.{queue}", f"{queue}{_SEP}{_SEP}{queue}")
        results = pipe.execute(raise_on_error=False)
    return [i for i, result in enumerate(results[:len(messages)])
            if isinstance(result, Exception)]
