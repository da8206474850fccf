"""Waiting for releases to finish, whatever they are read from: the ledger (``fanout enqueue
--wait``) or the service (``--server``). One loop, so both ride out an outage the same way.

Stdlib only: ``--server`` must not load the queue to wait, nor the ledger path httpx.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from workers.records import Release

# A failover (Sentinel, a managed Redis, a server restarting behind its load balancer) takes
# the source away for seconds: while waiting, a read that fails is skipped, for this long.
OUTAGE = 60.0


def wait_for(
    read: Callable[[], Release], *, timeout: float | None, poll: float,
    is_blip: Callable[[Exception], bool], gave_up: Callable[[Exception, float], Exception],
    on_poll: Callable[[Release], None] | None = None,
    sleep: Callable[[float], None] = time.sleep, outage: float | None = None,
) -> Release:
    """``read()`` every ``poll`` seconds until the release is done or ``timeout`` seconds
    pass; return it either way. A failure ``is_blip`` says is passing is skipped, for up to
    ``outage`` seconds in a row (default :data:`OUTAGE`); then ``gave_up(error,
    seconds_down)`` is raised."""
    outage = OUTAGE if outage is None else outage
    deadline = None if timeout is None else time.monotonic() + timeout
    down_since: float | None = None
    while True:
        try:
            release = read()
        except Exception as exc:
            if not is_blip(exc):
                raise
            now = time.monotonic()
            down_since = now if down_since is None else down_since
            if now - down_since > outage or (deadline is not None and now >= deadline):
                raise gave_up(exc, now - down_since) from None
            sleep(poll if deadline is None else max(0.0, min(poll, deadline - now)))
            continue
        down_since = None
        if on_poll is not None:
            on_poll(release)
        if release.done:
            return release
        left = None if deadline is None else deadline - time.monotonic()
        if left is not None and left <= 0:
            return release
        sleep(poll if left is None else min(poll, left))


def wait_each(ids: Sequence[str], wait_one: Callable[[str, float | None], Release], *,
              timeout: float | None) -> list[Release]:
    """``wait_one(id, seconds_left)`` for each release in turn, under one shared deadline."""
    deadline = None if timeout is None else time.monotonic() + timeout
    releases = []
    for release_id in ids:
        left = None if deadline is None else max(0.0, deadline - time.monotonic())
        releases.append(wait_one(release_id, left))
    return releases
