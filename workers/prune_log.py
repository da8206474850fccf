"""What mirrors pruned, kept in the ledger's Redis: the one record of a deletion fanout made.

``fanout:mirror:<name>:pruned`` is a list of JSON entries, newest first, capped at
:data:`KEEP`: ``{"at": unix time, "destination": "host/repo", "tags": [...]}``. A deletion is
not undone by anything fanout does later (a tag that returns to the source is simply added
again), so the log is for people: ``GET /v1/mirrors`` and an audit.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from typing import Any

import redis

from .records import text

KEY = "fanout:mirror:{name}:pruned"
KEEP = 1000


class PruneLog:
    def __init__(self, client: redis.Redis[Any], *,
                 clock: Callable[[], float] = time.time) -> None:
        self._redis = client
        self._clock = clock

    def record(self, mirror: str, destination: str, tags: Sequence[str]) -> None:
        key = KEY.format(name=mirror)
        entry = json.dumps({"at": self._clock(), "destination": destination,
                            "tags": list(tags)}, sort_keys=True)
        with self._redis.pipeline() as pipe:
            pipe.lpush(key, entry)
            pipe.ltrim(key, 0, KEEP - 1)
            pipe.execute()

    def recent(self, mirror: str, limit: int = 20) -> list[dict[str, Any]]:
        raw = self._redis.lrange(KEY.format(name=mirror), 0, max(0, limit - 1))
        return [json.loads(text(item)) for item in raw]
