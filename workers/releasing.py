"""Creating a release and sending its copy tasks: the one way a release is made, whoever makes
it (``fanout enqueue`` and the API, a registry webhook, ``replay``, a mirror's sync on the
workers), so every release has its place in the order, its tasks kept for ``retry``, and its
trigger recorded."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import redis

from .ledger import Ledger
from .publishing import send
from .settings import WorkerSettings

# Referrers (signatures, SBOMs) travel with the image unless a caller says otherwise.
DEFAULT_REFERRERS: Mapping[str, Any] = {"enabled": True, "types": []}


def create_and_send(
    ledger: Ledger, settings: WorkerSettings, source: str,
    targets: Sequence[tuple[str, Sequence[str]]], *,
    referrers: Mapping[str, Any] = DEFAULT_REFERRERS, optional: Iterable[str] = (),
    trigger: str = "", client: redis.Redis[Any] | None = None,
) -> str:
    """Record a release of ``source`` (pinned by digest) to ``targets`` (destination
    repository, its tags) and publish one copy task per destination; return its id.

    Raises :class:`workers.publishing.NotPublished` when tasks could not be published (those
    destinations are failed in the ledger). ``client``: a Redis broker connection to reuse.
    """
    # Its place in the order of releases, fixed now: the tag order rule (workers/tag_order.py).
    order = ledger.next_order()
    tasks = {repo: {"source": source, "destination": repo, "tags": list(tags),
                    "referrers": dict(referrers), "order": order} for repo, tags in targets}
    # The ledger keeps each task's arguments, so that `fanout retry` sends exactly these again.
    release_id = ledger.create_release(source, [(repo, tuple(tags)) for repo, tags in targets],
                                       optional=optional, tasks=tasks, order=order,
                                       trigger=trigger)
    send(ledger, settings, release_id,
         [{"release_id": release_id, **task} for task in tasks.values()], client=client)
    return release_id
