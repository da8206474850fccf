"""Bandwidth caps the whole cluster shares: ``registry.throttle``'s bucket, kept in Redis.

Each capped (direction, host) has a virtual clock in Redis, ``fanout:bw:clock:<direction>:
<host>``: microseconds of wall time (``time.time()``, as the holds use; hosts' clocks agree
closely enough for a cap) at which the bytes granted so far will have gone at the cap. A take
of ``n`` bytes is one round trip, a pipeline without ``MULTI``: ``INCRBY`` the clock by
``n / rate`` and the metrics counters beside it. The clock's old value, the reply less our
own share, is when our bytes may go; we sleep until then. ``INCRBY`` is atomic, so takers on
every host queue behind each other without Lua or ``WATCH``. Only a clock found lagging
``now`` by more than ``MAX_CREDIT_S`` (the first take, or one after an idle spell) is set to
``now`` under ``WATCH``: an idle host banks no burst bigger than that. Takers racing that
reset may each send one grant at once: a burst of a grant per taker, once per idle spell.

Counters for ``fanout metrics`` (``workers.metrics``), on the same round trip::

    fanout:metrics:bw:bytes       hash "<direction> <host>" -> bytes granted
    fanout:metrics:bw:wait        hash "<direction> <host>" -> microseconds waited on the cap
                                  (each wait is added with that process's next take)
    fanout:metrics:bw:cap         hash "<direction> <host>" -> the cap, bytes per second
    fanout:metrics:bw:s:<second>  hash "<direction> <host>" -> bytes granted in that second
                                  (epoch seconds; expires after a minute)

Advisory and fail-soft, as ``workers.holds``: short timeouts, no retries, and after an error a
few quiet seconds in which the process keeps to each cap alone (a
:class:`~registry.throttle.LocalThrottle`), never to no cap. The Redis calls run on a thread,
so a slow Redis delays the one stream that asked, not the worker's event loop.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import redis

from registry.bandwidth import BandwidthCaps, Direction
from registry.throttle import MAX_CREDIT_S, LocalThrottle

from .connections import SentinelOptions, advisory_client

if TYPE_CHECKING:
    from .settings import WorkerSettings

log = logging.getLogger("fanout.bandwidth")

CLOCK_PREFIX = "fanout:bw:clock:"
BYTES_KEY = "fanout:metrics:bw:bytes"
WAIT_KEY = "fanout:metrics:bw:wait"
CAP_KEY = "fanout:metrics:bw:cap"
SECOND_PREFIX = "fanout:metrics:bw:s:"
SECOND_TTL_S = 60
# A clock key outlives its last take by this much; a later take starts a fresh one.
_CLOCK_TTL_MS = 3600 * 1000
_QUIET_S = 5.0
_US = 1_000_000


def field_of(direction: Direction, host: str) -> str:
    """The metrics hashes' field for a (direction, host)."""
    return f"{direction} {host}"


class RedisThrottle:
    """A :class:`registry.throttle.Throttle` every worker of the cluster shares."""

    def __init__(
        self, client: redis.Redis[Any], caps: BandwidthCaps, *,
        clock: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        in_thread: bool = True,
    ) -> None:
        self._redis = client
        self.caps = caps
        self._clock = clock
        self._monotonic = monotonic
        self._sleep = sleep
        self._in_thread = in_thread
        self._quiet_until = 0.0
        # Used while Redis cannot be reached: each process at the cap alone.
        self.fallback = LocalThrottle(caps, clock=monotonic, sleep=sleep)
        self._pending_wait: dict[str, int] = {}  # microseconds not yet added to WAIT_KEY
        self._announced: set[str] = set()  # fields whose cap this process has written

    @classmethod
    def from_url(cls, url: str, caps: BandwidthCaps, *,
                 sentinel: SentinelOptions | None = None) -> RedisThrottle:
        """A throttle on its own client for ``url`` (the ledger's Redis): short timeouts, no
        retries."""
        client = advisory_client(url, sentinel)
        return cls(client, caps)

    @classmethod
    def from_settings(cls, settings: WorkerSettings, caps: BandwidthCaps) -> RedisThrottle:
        return cls.from_url(settings.ledger_url, caps, sentinel=settings.sentinel)

    def rate(self, host: str, direction: Direction) -> int | None:
        return self.caps.rate(host, direction)

    async def take(self, host: str, direction: Direction, nbytes: int) -> None:
        rate = self.caps.rate(host, direction)
        if rate is None or nbytes <= 0:
            return
        field = field_of(direction, host)
        wait: float | None = None
        if self._monotonic() >= self._quiet_until:
            pending = self._pending_wait.pop(field, 0)
            try:
                wait = await self._call(self.book, direction, host, nbytes, rate, pending)
            except redis.RedisError as exc:
                self._pending_wait[field] = self._pending_wait.get(field, 0) + pending
                self._quiet_until = self._monotonic() + _QUIET_S
                log.warning("bandwidth cap on %s kept by this process alone for %g s: Redis "
                            "did not answer (%s)", host, _QUIET_S, exc)
        if wait is None:
            wait = self.fallback.wait_for(host, direction, nbytes)
        if wait > 0:
            self._pending_wait[field] = self._pending_wait.get(field, 0) + round(wait * _US)
            await self._sleep(wait)

    async def _call(self, function: Callable[..., float], *args: Any) -> float:
        if self._in_thread:
            return await asyncio.to_thread(function, *args)
        return function(*args)

    def book(self, direction: Direction, host: str, nbytes: int, rate: int,
             pending_us: int = 0) -> float:
        """Book ``nbytes`` on the shared clock; the seconds to wait before sending them."""
        cost = max(1, math.ceil(nbytes * _US / rate))
        field = field_of(direction, host)
        clock_key = f"{CLOCK_PREFIX}{direction}:{host}"
        now = self._clock()
        second_key = f"{SECOND_PREFIX}{int(now)}"
        pipe = self._redis.pipeline(transaction=False)
        pipe.incrby(clock_key, cost)
        pipe.hincrby(BYTES_KEY, field, nbytes)
        pipe.hincrby(second_key, field, nbytes)
        pipe.expire(second_key, SECOND_TTL_S)
        if pending_us:
            pipe.hincrby(WAIT_KEY, field, pending_us)
        if field not in self._announced:
            pipe.hset(CAP_KEY, field, rate)
        replies = pipe.execute()
        self._announced.add(field)
        now_us = round(now * _US)
        start = int(replies[0]) - cost
        if start < now_us - MAX_CREDIT_S * _US:
            self._restart(clock_key, now_us, cost)
            return 0.0
        return max(0, start - now_us) / _US

    def _restart(self, key: str, now_us: int, cost: int) -> None:
        """Set a lagging clock to now (plus our grant), unless another taker just did."""
        with self._redis.pipeline() as pipe:
            while True:
                try:
                    pipe.watch(key)
                    raw: Any = pipe.get(key)
                    current = int(raw or 0)
                    if current - cost >= now_us - MAX_CREDIT_S * _US:
                        pipe.unwatch()
                        return  # reset by another taker meanwhile
                    pipe.multi()
                    pipe.set(key, now_us + cost, px=_CLOCK_TTL_MS)
                    pipe.execute()
                    return
                except redis.WatchError:
                    continue
