"""Sending destinations of a release again, as new attempts of the same release: what
``fanout retry`` and ``fanout verify --repair`` both do, so both keep the same guarantees.

Each destination goes back to ``queued`` under a new generation (a late redelivery of the old
message does nothing), its history kept; the task carries exactly the arguments it was sent
with and the release's place in the order, so the workers' tag order rule decides its tags: a
tag a newer release holds is left to it, never written back.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from . import retry_plan
from .queue_access import check_broker, send

if TYPE_CHECKING:
    from .ledger import Ledger, Release
    from .settings import WorkerSettings


def resend(ledger: Ledger, settings: WorkerSettings, release: Release,
           names: Sequence[str]) -> list[str]:
    """Send ``names`` (destinations of ``release``, each finished) again; return them."""
    if not names:
        return []
    check_broker(settings.broker_url, settings)
    generation = ledger.reset_for_retry(release.id, names)
    send(ledger, settings, release.id,
         [retry_plan.task_for(ledger, release, name, generation) for name in names])
    return list(names)
