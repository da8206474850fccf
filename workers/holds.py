"""Registry holds in Redis, so a 429 one worker hears holds that registry for every worker.

One string key per registry, ``fanout:hold:<host[:port]>``, holding the wall-clock time the hold
ends and expiring a little after it. ``hold`` raises the value, never lowers it: a read, then a
write under ``WATCH`` (atomic without Lua, so fakeredis runs it as is, as ``workers.locks``
does; Redis has no ``SET ... GT``).

``until`` is asked before every registry request, so it must not cost a round trip each time
(Redis across a network would add its latency to every request). Each store keeps what it last
read per registry for ``refresh`` seconds (a quarter of a second by default): one ``GET`` per
registry per refresh at most, however many requests go there. A hold this process sets (the
429 it heard) is known at once; one set by another worker is learnt within ``refresh``, which
is soon enough for an advisory hold (requests already on their way when a registry started
refusing could not have known of it either).

The store advises; it never fails a copy. Its client has short timeouts and no retries, an
error is logged and treated as "not held", and after one the store stays quiet for a few
seconds rather than make every request of a copy wait out a timeout on a Redis that is gone.
The calls block (the engine asks before each request, from its event loop): at most one ``GET``
per refresh on the ledger's Redis, bounded by the socket timeout.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import redis

from registry.holds import MemoryHolds

from .connections import SentinelOptions, advisory_client

if TYPE_CHECKING:
    from .settings import WorkerSettings

log = logging.getLogger("fanout.holds")

KEY_PREFIX = "fanout:hold:"
# A key outlives its hold by this much, so a reader never sees it vanish early.
_TTL_MARGIN_MS = 1000
# After an error, how long ``until`` answers 0.0 without asking.
_QUIET_S = 5.0
# How long a read of a registry's hold is trusted before Redis is asked again.
REFRESH_S = 0.25


class RedisHolds:
    """A :class:`registry.holds.HoldStore` in Redis, shared by every worker using it."""

    def __init__(
        self, client: redis.Redis[Any], prefix: str = KEY_PREFIX, *,
        clock: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic, refresh: float = REFRESH_S,
    ) -> None:
        self._redis = client
        self._prefix = prefix
        self._clock = clock
        self._monotonic = monotonic
        self._quiet_until = 0.0
        self._refresh = refresh
        # registry -> (the hold's end as last read, monotonic time of the read)
        self._known: dict[str, tuple[float, float]] = {}
        self._mine = MemoryHolds(clock)  # the holds this process set

    @classmethod
    def from_url(cls, url: str, prefix: str = KEY_PREFIX, *,
                 sentinel: SentinelOptions | None = None) -> RedisHolds:
        """A store on its own client for ``url`` (the ledger's Redis): short timeouts, no
        retries, unlike the ledger's client, which rides out a Redis restart."""
        client = advisory_client(url, sentinel)
        return cls(client, prefix)

    @classmethod
    def from_settings(cls, settings: WorkerSettings) -> RedisHolds:
        """A store in the ledger's Redis, as ``settings`` name it (Sentinel included)."""
        return cls.from_url(settings.ledger_url, sentinel=settings.sentinel)

    def key(self, registry: str) -> str:
        return f"{self._prefix}{registry}"

    def until(self, registry: str) -> float:
        return max(self._mine.until(registry), self._read(registry))

    def _read(self, registry: str) -> float:
        now = self._monotonic()
        known = self._known.get(registry)
        if known is not None and now - known[1] < self._refresh:
            until = known[0]
        elif now < self._quiet_until:
            return 0.0
        else:
            try:
                raw = self._redis.get(self.key(registry))
            except redis.RedisError as exc:
                self._quiet_until = self._monotonic() + _QUIET_S
                log.debug("could not read the hold on %s (treated as none): %s", registry, exc)
                return 0.0
            until = _number(raw)
            self._known[registry] = (until, now)
        return until if until > self._clock() else 0.0

    def hold(self, registry: str, until: float) -> None:
        ttl_ms = math.ceil((until - self._clock()) * 1000) if math.isfinite(until) else 0
        if ttl_ms <= 0:
            return  # already over, or nonsense: nothing to hold
        # Known here at once, and kept whatever Redis says: this process heard the registry.
        self._mine.hold(registry, until)
        try:
            self._raise_to(self.key(registry), until, ttl_ms + _TTL_MARGIN_MS)
        except redis.RedisError as exc:
            log.warning("could not hold %s for other workers (this copy still waits): %s",
                        registry, exc)

    def _raise_to(self, key: str, until: float, ttl_ms: int) -> None:
        with self._redis.pipeline() as pipe:
            while True:
                try:
                    pipe.watch(key)
                    if _number(pipe.get(key)) >= until:
                        pipe.unwatch()
                        return  # a hold at least as long is in place, with a TTL to match
                    pipe.multi()
                    pipe.set(key, repr(until), px=ttl_ms)
                    pipe.execute()
                    return
                except redis.WatchError:
                    continue  # another worker held it between GET and EXEC: compare again


def _number(raw: Any) -> float:
    """A stored time, or 0.0 for a missing or unreadable one."""
    if raw is None:
        return 0.0
    try:
        value = float(raw)
    except (TypeError, ValueError):
        return 0.0
    return value if math.isfinite(value) else 0.0
