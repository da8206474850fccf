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
# Messages per LPUSH: one release's to a queue in one command, a huge one's in a few.
_PER_LPUSH = 1000


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
    and nothing was published.

    One ``LPUSH`` per queue carries its messages (up to ``_PER_LPUSH``), in the order given:
    ``LPUSH q a b`` leaves the list as ``LPUSH q a`` then ``LPUSH q b`` would, so the worker's
    ``BRPOP`` takes ``a`` first either way, at one command for a release rather than one per
    destination."""
    by_queue: dict[str, list[int]] = {}
    for index, (queue, _) in enumerate(messages):
        by_queue.setdefault(queue, []).append(index)
    batches = [(queue, indexes[start:start + _PER_LPUSH]) for queue, indexes in by_queue.items()
               for start in range(0, len(indexes), _PER_LPUSH)]
    with client.pipeline(transaction=True) as pipe:
        for queue, indexes in batches:
            pipe.lpush(queue, *(json.dumps(messages[i][1]) for i in indexes))
        for queue in by_queue:
            # The binding Celery declares with its queue (exchange and routing key named after
            # it): how `fanout metrics` finds a routed queue, empty or not.
            pipe.sadd(f"_kombu.binding.{queue}", f"{queue}{_SEP}{_SEP}{queue}")
        results = pipe.execute(raise_on_error=False)
    return sorted(i for (_, indexes), result in zip(batches, results, strict=False)
                  if isinstance(result, Exception) for i in indexes)
