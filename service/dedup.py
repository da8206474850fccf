"""The deduplication window of webhook pushes, in Redis beside the ledger.

Registries deliver at least once (distribution retries until it hears a 2xx, GitHub and Quay
redeliver), and a CI job may push the same tag twice. Each (set, repository, digest, tag) is
claimed with ``SET key 1 NX PX window``: the first claim within the window wins and becomes a
release; the others are deduplicated. A claim is per tag, so the same digest newly tagged is a
new release (of that tag). The window lives in Redis, not in the server, so any number of
servers behind a load balancer share it; a claim whose release then fails to enqueue is given
back, so the registry's redelivery can try again.
"""

from __future__ import annotations

import json
from typing import Any

import redis

__all__ = ["PREFIX", "Window"]

PREFIX = "fanout:hooks:seen:"


class Window:
    """Claims of pushes for ``seconds``; 0 turns deduplication off (every claim wins)."""

    def __init__(self, client: redis.Redis[Any], seconds: float, *, prefix: str = PREFIX) -> None:
        self._redis = client
        self._ttl_ms = max(1, round(seconds * 1000)) if seconds > 0 else 0
        self._prefix = prefix

    @property
    def enabled(self) -> bool:
        return self._ttl_ms > 0

    def key(self, to: str, repository: str, digest: str, tag: str) -> str:
        # JSON: unambiguous whatever a set name holds, and readable in redis-cli.
        return self._prefix + json.dumps([to, repository, digest, tag], separators=(",", ":"))

    def claim(self, to: str, repository: str, digest: str, tag: str) -> bool:
        """True if this push is new within the window (and now claimed); raises RedisError."""
        if not self.enabled:
            return True
        return bool(self._redis.set(self.key(to, repository, digest, tag), 1, nx=True,
                                    px=self._ttl_ms))

    def give_back(self, to: str, repository: str, digest: str, tag: str) -> None:
        """Forget a claim whose release was not enqueued; raises RedisError."""
        if self.enabled:
            self._redis.delete(self.key(to, repository, digest, tag))
