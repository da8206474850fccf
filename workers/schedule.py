"""The beat schedule: ``celery -A workers.app beat`` runs each mirror with an ``every``
(``fanout.sync``) and, if ``fanout.toml`` has a ``[verify]``, the scheduled verify
(``fanout.verify``), read from ``$FANOUT_CONFIG``, else ``./fanout.toml``.

Only beat reads the file: the app names :class:`ConfiguredScheduler` as beat's scheduler, which
builds ``app.conf.beat_schedule`` as it starts. A bad file stops beat at start with the key named
(never a beat that silently schedules nothing); no file is an empty schedule. Workers never read
it: each entry carries the mirror's whole definition in its message, so a worker whose copy of
the file is stale (or absent) runs what beat decided.

Each message expires after the entry's interval: after an outage (beat running, workers or
broker down) the backlog of one mirror's messages does not run it ten times in a row; the
next tick sends a fresh one. A retried task keeps its message's expiry, so a retry is never
still waiting when the next run is due.

**Run exactly one beat.** Beat keeps no lock: two beats send every entry twice. That costs little,
by design, not by luck: each mirror's run and the verify hold a no-overlap lease in Redis
(``MirrorBusy``, the verify's lease in ``workers/sync_tasks.py``), so the second message of a
pair finds the first running and is logged as skipped ("another run holds the lease"), or, if the
first already finished, is a second sync that finds everything in sync and enqueues nothing
(listing plus HEADs). Nothing is copied twice and no release is duplicated, but the registries
see twice the listing traffic, so do not make a habit of it.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from datetime import timedelta
from typing import Any, Protocol

from celery.beat import PersistentScheduler

from .config_file import load_config
from .mirror_model import Mirror, VerifySchedule
from .routing import DEFAULT_QUEUE

SYNC_TASK = "fanout.sync"
VERIFY_TASK = "fanout.verify"
VERIFY_ENTRY = "verify"


class ScheduleConfig(Protocol):
    """What the schedule needs of ``fanout.toml`` (``workers.config_file.FanoutConfig``)."""

    @property
    def mirrors(self) -> tuple[Mirror, ...]: ...

    @property
    def verify(self) -> VerifySchedule | None: ...


# (path, env) -> config; raises registry.envconfig.ConfigError naming the key that is wrong.
ConfigLoader = Callable[[str | None, Mapping[str, str]], ScheduleConfig]


def sync_entry_name(mirror: str) -> str:
    return f"sync:{mirror}"


def build(config: ScheduleConfig) -> dict[str, dict[str, Any]]:
    """Beat entries: one per mirror with an ``every``, and the verify if configured."""
    entries: dict[str, dict[str, Any]] = {}
    for mirror in config.mirrors:
        if mirror.every is None:
            continue  # on demand only (fanout sync, the API)
        entries[sync_entry_name(mirror.name)] = {
            "task": SYNC_TASK,
            "schedule": timedelta(seconds=mirror.every),
            "kwargs": {"name": mirror.name, "mirror": mirror.to_json(), "trigger": "schedule"},
            "options": {"expires": mirror.every, "queue": DEFAULT_QUEUE},
        }
    if config.verify is not None:
        verify = config.verify
        entries[VERIFY_ENTRY] = {
            "task": VERIFY_TASK,
            "schedule": timedelta(seconds=verify.every),
            "kwargs": {"since": verify.since, "repair": verify.repair},
            "options": {"expires": verify.every, "queue": DEFAULT_QUEUE},
        }
    return entries


def load(env: Mapping[str, str], loader: ConfigLoader | None = None) -> dict[str, dict[str, Any]]:
    """The entries of the file ``env`` names (``FANOUT_CONFIG``, else ``./fanout.toml``)."""
    return build((loader or load_config)(None, env))


class ConfiguredScheduler(PersistentScheduler):  # type: ignore[misc]  # celery is untyped
    """Beat's scheduler: the file's entries, set as ``beat_schedule`` before Celery's
    persistent scheduler merges them with the last run times it keeps (``-s FILE``); an entry
    gone from the file is dropped from the schedule."""

    def setup_schedule(self) -> None:
        self.app.conf.beat_schedule = load(os.environ)
        super().setup_schedule()

    def install_default_entries(self, data: Any) -> None:
        # Celery's only default entry cleans a result backend up; the app keeps no results.
        return
