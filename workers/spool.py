"""The worker host's spool: every worker process of the host reads a source blob once between
them (registry/spool.py), in ``FANOUT_SPOOL_DIR`` within ``FANOUT_SPOOL_BYTES``."""

from __future__ import annotations

import logging

from registry.spool import Spool

from .settings import WorkerSettings

log = logging.getLogger("fanout.worker")


def open_spool(settings: WorkerSettings) -> Spool | None:
    """The spool, swept of what dead processes left; None when it is off or cannot be used (a
    copy then reads its source directly, as it would without one: a warning, not a failure)."""
    if settings.spool_bytes <= 0:
        return None
    try:
        return Spool(settings.spool_dir, settings.spool_bytes)
    except OSError as exc:
        log.warning("no spool: %s (FANOUT_SPOOL_DIR); each copy reads its source itself", exc)
        return None
