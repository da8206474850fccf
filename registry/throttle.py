"""Keeping to bandwidth caps (:mod:`registry.bandwidth`) where blob bytes flow.

A :class:`Throttle` is asked before bytes go (``take``) and answers by sleeping as long as the
host's cap needs. Bytes are taken in grants of 256 KiB to 1 MiB, never per network read, so a
shared store (``workers.bandwidth.RedisThrottle``: every worker of the cluster under one cap)
hears a few requests per MiB. :class:`LocalThrottle` keeps the caps within one process: the
default for ``fanout copy``, and the workers' fallback when Redis cannot be reached (each
process then keeps to the cap alone, never to no cap).

The bucket is a virtual clock (GCRA): each host has the time its granted bytes will have gone
at the cap; a grant of ``n`` bytes moves it ``n / rate`` seconds on and waits until its old
value. A clock lagging ``now`` by more than :data:`MAX_CREDIT_S` is set to ``now``, so an idle
host never banks a burst bigger than that.

Two hooks: :func:`throttled` paces an iterator of upload bytes; :class:`ThrottledBody` wraps a
source's response so its ``aiter_bytes`` is paced.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from typing import Protocol

from .bandwidth import BandwidthCaps, Direction

# The least and most bytes one take asks for; in between, an eighth of a second at the cap.
MIN_GRANT = 256 * 1024
MAX_GRANT = 1024 * 1024
# The most a host's clock may lag behind now before it is set to now: the largest burst, in
# seconds at the cap, that idleness can buy.
MAX_CREDIT_S = 0.25


class Throttle(Protocol):
    """Where the caps are kept: one process's, or a whole cluster's."""

    def rate(self, host: str, direction: Direction) -> int | None:
        """The cap on ``host`` in bytes per second, or None: not throttled."""
        ...

    def take(self, host: str, direction: Direction, nbytes: int) -> Awaitable[None]:
        """Wait until ``nbytes`` more may go to (or come from) ``host`` under its cap."""
        ...


def grant_size(rate: int) -> int:
    """Bytes one take asks for at ``rate``."""
    return min(MAX_GRANT, max(MIN_GRANT, rate // 8))


class VirtualClock:
    """One host's bucket in one process: when the bytes granted so far will have gone."""

    def __init__(self) -> None:
        self.at = 0.0

    def grant(self, now: float, seconds: float) -> float:
        """Book ``seconds`` of the link; how long to wait before using them."""
        if self.at < now - MAX_CREDIT_S:
            self.at = now
        start, self.at = self.at, self.at + seconds
        return max(0.0, start - now)


class LocalThrottle:
    """The caps kept in this process (``fanout copy``, or a worker whose Redis is down).

    ``clock`` and ``sleep`` are the test seam; ``waited`` adds up the seconds slept per
    (direction, host), for a caller that reports them.
    """

    def __init__(self, caps: BandwidthCaps, *, clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], Awaitable[None]] = asyncio.sleep) -> None:
        self.caps = caps
        self._clock = clock
        self._sleep = sleep
        self._buckets: dict[tuple[Direction, str], VirtualClock] = {}
        self.waited: dict[tuple[Direction, str], float] = {}

    def rate(self, host: str, direction: Direction) -> int | None:
        return self.caps.rate(host, direction)

    def wait_for(self, host: str, direction: Direction, nbytes: int) -> float:
        """Book ``nbytes`` and return the seconds to wait for them (0.0 when uncapped)."""
        rate = self.caps.rate(host, direction)
        if rate is None:
            return 0.0
        bucket = self._buckets.setdefault((direction, host), VirtualClock())
        return bucket.grant(self._clock(), nbytes / rate)

    async def take(self, host: str, direction: Direction, nbytes: int) -> None:
        wait = self.wait_for(host, direction, nbytes)
        if wait > 0:
            key = (direction, host)
            self.waited[key] = self.waited.get(key, 0.0) + wait
            await self._sleep(wait)


def throttled(chunks: AsyncIterator[bytes], throttle: Throttle | None, host: str,
              direction: Direction, size: int | None = None) -> AsyncIterator[bytes]:
    """``chunks`` paced by ``throttle``'s cap on ``host``; ``size`` (when known) keeps the last
    grant to the bytes left, so a blob is booked to the byte. Uncapped: ``chunks`` itself, so
    the per-byte path costs nothing more."""
    rate = throttle.rate(host, direction) if throttle is not None else None
    if throttle is None or rate is None:
        return chunks
    return _paced(chunks, throttle, host, direction, rate, size)


async def _paced(chunks: AsyncIterator[bytes], throttle: Throttle, host: str,
                 direction: Direction, rate: int, size: int | None) -> AsyncIterator[bytes]:
    grant = grant_size(rate)
    allowed = sent = 0
    async for chunk in chunks:
        need = len(chunk)
        if need > allowed:
            left = grant if size is None else max(size - sent - allowed, 0)
            asked = max(need - allowed, min(grant, left))
            await throttle.take(host, direction, asked)
            allowed += asked
        allowed -= need
        sent += need
        yield chunk


class _Body(Protocol):
    def aiter_bytes(self) -> AsyncIterator[bytes]: ...

    @property
    def headers(self) -> Mapping[str, str]: ...


class ThrottledBody:
    """A source's response whose body is read under the host's download cap."""

    def __init__(self, response: _Body, throttle: Throttle, host: str) -> None:
        self._response = response
        self._throttle = throttle
        self._host = host

    @property
    def headers(self) -> Mapping[str, str]:
        return self._response.headers

    def aiter_bytes(self) -> AsyncIterator[bytes]:
        length = self._response.headers.get("content-length", "")
        size = int(length) if length.isdigit() else None
        return throttled(self._response.aiter_bytes(), self._throttle, self._host, "download",
                         size)
