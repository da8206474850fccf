"""The releases a mirror made that have not finished, so a later run does not send them again.

A big image can take longer to copy than the mirror's interval: without this, every run in the
meantime would find the tag still absent and enqueue the same copy again. Each run adds its
releases to ``fanout:mirror:<name>:releases`` (a set); the next run reads them back from the
ledger, forgets those that are final (or expired), and treats the tags the rest are still
sending, on the digest they are sending, as pending (``DestinationState.pending``). A
destination that failed for good is not pending: the next run plans it again, and that is how
a mirror retries what failed.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import redis

from .ledger import Ledger
from .records import text

KEY = "fanout:mirror:{name}:releases"

# destination -> tag -> digest an unfinished release is sending there
Pending = dict[str, dict[str, str]]


def in_flight(ledger: Ledger, mirror: str) -> Pending:
    """What the mirror's unfinished releases are sending; final ones are forgotten here."""
    client: redis.Redis[Any] = ledger.client
    key = KEY.format(name=mirror)
    ids = sorted(text(item) for item in client.smembers(key))
    pending: Pending = {}
    finished = []
    for release_id in ids:
        release = ledger.get(release_id)
        if release is None or release.done:
            finished.append(release_id)
            continue
        for name, record in release.destinations.items():
            if not record.done:
                for tag in record.tags:
                    pending.setdefault(name, {})[tag] = release.digest
    if finished:
        client.srem(key, *finished)
    return pending


def add(ledger: Ledger, mirror: str, release_ids: Sequence[str]) -> None:
    """Remember the releases a run made (kept as long as the ledger keeps releases)."""
    if not release_ids:
        return
    key = KEY.format(name=mirror)
    with ledger.client.pipeline() as pipe:
        pipe.sadd(key, *release_ids)
        pipe.expire(key, max(1, int(ledger.retention)))
        pipe.execute()
