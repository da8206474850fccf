"""Talking to the broker and the ledger for the producer: connecting (failing fast, with
passwords kept out of every message) and publishing a release's copy tasks.

The work is the workers' (``workers/queue_access.py``, ``workers/publishing.py``), shared with
the scheduled verify; the names stay here for the producer's callers."""

from __future__ import annotations

from workers import connections
from workers.errors import EnqueueError as EnqueueError
from workers.errors import QueueUnreachable as QueueUnreachable
from workers.publishing import TASK_NAME as TASK_NAME  # re-exported: the producer's API names it
from workers.queue_access import check_broker as check_broker
from workers.queue_access import connect_ledger as connect_ledger
from workers.queue_access import queue_settings as queue_settings
from workers.queue_access import send as send


class SourceUnavailable(EnqueueError):
    """The source registry failed to answer (as opposed to answering "no such image")."""


def redact(url: str) -> str:
    """``url`` with its password masked, for messages (each sentinel of a list too)."""
    return connections.redact(url)
