"""Holds on a registry: "send nothing there before this time", shared by everyone who copies.

A 429, or Docker Hub's ``ratelimit-remaining: 0;w=21600``, is a registry speaking about its
whole API for one account, not about the one request that heard it. Other copies that keep
sending in the meantime are each refused, and on registries that count refused requests they
push the window further out. So a hold is kept in a :class:`HoldStore` that every client
consults before it sends: :class:`MemoryHolds` shares it within one process (``fanout copy``);
``workers.holds.RedisHolds`` shares it across every worker of a queue. ``until`` is asked before
every request, so a store must answer it without a round trip each time: the Redis store
knows its own holds at once and another worker's within a quarter of a second.

Times are wall clock (``time.time()``), not monotonic: a monotonic clock means nothing in
another process or on another host. Keys are the ``host[:port]`` a client is for.
"""

from __future__ import annotations

import math
import re
import threading
import time
from collections.abc import Callable, Mapping
from typing import Protocol

# Docker Hub: "<remaining>;w=<window seconds>"; the IETF draft's older form is the bare count.
_REMAINING = re.compile(r"\s*([0-9]{1,19})\s*(?:;.*)?", re.ASCII | re.DOTALL)


class HoldStore(Protocol):
    """Where a registry's hold is kept, so that every client that sends there sees it."""

    def until(self, registry: str) -> float:
        """Wall-clock time (time.time()) before which nothing should be sent to ``registry``;
        0.0 when not held."""
        ...

    def hold(self, registry: str, until: float) -> None:
        """Hold ``registry`` until at least ``until`` (wall clock); a shorter hold never
        shortens a longer one."""
        ...


class MemoryHolds:
    """The in-process :class:`HoldStore`, the default for ``fanout copy``.

    Thread-safe enough for one event loop (and the odd thread beside it): each call is one
    short critical section.
    """

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
        self._until: dict[str, float] = {}
        self._lock = threading.Lock()

    def until(self, registry: str) -> float:
        with self._lock:
            until = self._until.get(registry, 0.0)
            if until <= self._clock():
                self._until.pop(registry, None)  # spent: forget it
                return 0.0
            return until

    def hold(self, registry: str, until: float) -> None:
        if not math.isfinite(until):
            return  # nothing a registry said can mean "for ever"; never wedge a host
        with self._lock:
            if until > max(self._until.get(registry, 0.0), self._clock()):
                self._until[registry] = until


def ratelimit_exhausted(headers: Mapping[str, str]) -> bool:
    """True when ``ratelimit-remaining`` says no request is left (``0;w=21600``); False when it
    is absent, positive or malformed (a header we cannot read holds nothing)."""
    value = headers.get("ratelimit-remaining")
    if value is None:  # a plain dict is not case-insensitive as httpx.Headers is
        value = next((v for k, v in headers.items() if k.lower() == "ratelimit-remaining"), None)
    if not isinstance(value, str):
        return False
    # Repeated headers arrive joined with commas: any one of them at zero is exhausted.
    for item in value.split(","):
        found = _REMAINING.fullmatch(item)
        if found is not None and int(found.group(1)) == 0:
            return True
    return False
