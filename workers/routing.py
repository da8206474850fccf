"""Which queue a destination's task goes to.

By default every task goes to the ``fanout`` queue and any worker takes it. With
``FANOUT_ROUTE_BY_REGISTRY=1`` each destination registry gets its own queue,
``fanout.<host>`` (``:`` becomes ``_``), so a registry that hangs can only occupy the workers
that serve its queue. Run workers per queue, e.g.::

    celery -A workers.app worker -Q fanout.ghcr.io -c 4
    celery -A workers.app worker -Q fanout.quay.io,fanout.registry.example.com_5000 -c 2
    celery -A workers.app worker -Q fanout            # tasks sent without routing

A queue nobody consumes holds its tasks until a worker for it starts; nothing is lost.
The producer picks the queue when it sends (``queue_for``); a retry stays on its queue.
"""

from __future__ import annotations

from registry.reference import parse_repository

DEFAULT_QUEUE = "fanout"


def queue_for(destination: str, *, by_registry: bool) -> str:
    """``fanout``, or ``fanout.<registry host>`` when routing per registry."""
    if not by_registry:
        return DEFAULT_QUEUE
    registry = parse_repository(destination).registry
    return f"{DEFAULT_QUEUE}.{registry.replace(':', '_')}"
