"""The refusals the producer and the workers share, for the input they are given and the queue
they talk to. The CLI prints any of them as is and exits 2; the API answers 4xx or 503.

::

    UsageError                 bad input from the user (or a schedule): nothing was done
    ├── ReleaseNotFound        no release with this id in the ledger
    └── EnqueueError           nothing (or, when it says so, only part) was enqueued
        └── QueueUnreachable   the broker or the ledger could not be reached: try again later

Standard library only, and no imports of ours: ``producer/common.py`` re-exports the first two
for every subcommand's parser, and ``fanout copy`` must not load the queue to name them.
"""

from __future__ import annotations


class UsageError(Exception):
    """Bad input from the user: printed as is, exit status 2."""


class ReleaseNotFound(UsageError):
    """No release with this id in the ledger: never created, or past its retention."""

    @classmethod
    def of(cls, release_id: str) -> ReleaseNotFound:
        return cls(f"no release {release_id!r} in the ledger (unknown id, or older than the "
                   "retention period)")


class EnqueueError(UsageError):
    """Nothing (or, when it says so, only part) was enqueued; the message says why."""


class QueueUnreachable(EnqueueError):
    """The broker or the ledger could not be reached: the input may be fine; try again later."""
