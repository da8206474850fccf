"""A mirror that has failed for longer than two of its intervals notifies, once per outage.

``sync_mirror`` calls :meth:`MirrorAlerts.after_run` after recording each run
(:class:`workers.mirror_runs.MirrorRuns`)::

    run ok ── the outage's key is cleared; if an alert went out for it ──▶ mirror.recovered
    run failed, mirror with ``every`` ── failing for more than 2 x every ──▶ mirror.failing
                                         (once: the first run to set the outage's key sends)
    dry run, or on-demand mirror (no ``every``) ─────────────────────────▶ nothing

"Failing for" counts from the start of the first failed run of the current streak, not from the
last success: a mirror paused for a week, then failing once, is not yet an outage. With the
scheduler running it every interval, the third failed run in a row alerts.

The notifications go out as release-finished ones do (``workers/notifications.py``): one
``fanout.notify`` task per ``FANOUT_NOTIFY_URL``, signed, retried and delivered once, with
``X-Fanout-Event: mirror.failing`` or ``mirror.recovered``. ``FANOUT_NOTIFY_ON=failure`` still
sends a recovery: it only ever follows a failure that was sent, and closes it. The document
names the mirror, its source and destinations (repositories), the times and the run's error:
never a credential, URL or token.

The outage's key is ``fanout:mirror:<name>:alerted`` (``workers/mirror_runs.py``): it holds the
outage's start, and expires with the mirror's other records.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

from .mirror_model import Mirror, MirrorRun
from .mirror_runs import MirrorRuns, alerted_key
from .notifications import MIRROR_FAILING, MIRROR_RECOVERED, MIRROR_SUBJECT, NotifyJob, SendNotify
from .notify_settings import NotifySettings
from .records import text
from .routing import DEFAULT_QUEUE

log = logging.getLogger("fanout.mirror")

# Failing for more than this many of its intervals is an outage.
INTERVALS = 2
_ERROR_MAX = 300


def overdue(mirror: Mirror, failing_since: float | None, now: float) -> bool:
    """Whether ``mirror`` has been failing for more than two of its intervals at ``now``."""
    if mirror.every is None or failing_since is None:
        return False
    return now - failing_since > INTERVALS * mirror.every


class MirrorAlerts:
    """Decides after each run whether a mirror's outage, or its end, is notified; sends it."""

    def __init__(self, runs: MirrorRuns, settings: NotifySettings, send: SendNotify, *,
                 queue: str = DEFAULT_QUEUE, clock: Callable[[], float] = time.time) -> None:
        self.runs = runs
        self.settings = settings
        self.send = send
        self.queue = queue
        self._clock = clock

    def after_run(self, mirror: Mirror, run: MirrorRun) -> str | None:
        """The event sent (``mirror.failing``, ``mirror.recovered``) or None. Never raises:
        the run is recorded already, whatever happens here."""
        try:
            return self._after_run(mirror, run)
        except Exception as exc:  # noqa: BLE001 - a lost alert must not fail the run
            log.error("mirror %s: could not check whether to alert: %s: %s", mirror.name,
                      type(exc).__name__, str(exc)[:_ERROR_MAX])
            return None

    def _after_run(self, mirror: Mirror, run: MirrorRun) -> str | None:
        if run.dry_run or not self.settings.enabled:
            return None
        key = alerted_key(mirror.name)
        client = self.runs.client
        if run.ok:
            with client.pipeline(transaction=True) as pipe:
                pipe.get(key)
                pipe.delete(key)
                alerted, _ = pipe.execute()
            if alerted is None:
                return None
            began = _float(text(alerted))
            self._send(mirror, run, MIRROR_RECOVERED, began,
                       last_success=run.finished_at)
            return MIRROR_RECOVERED
        state = self.runs.state(mirror.name)
        # Not recorded (the caller skipped record): this run is where the streak begins.
        began = state.failing_since if state.failing_since is not None else run.started_at
        if not overdue(mirror, began, self._clock()):
            return None
        if not client.set(key, repr(began), nx=True, ex=max(1, int(self.runs.retention))):
            return None  # this outage was notified already
        self._send(mirror, run, MIRROR_FAILING, began, last_success=state.last_success)
        return MIRROR_FAILING

    def _send(self, mirror: Mirror, run: MirrorRun, event: str, began: float,
              *, last_success: float | None) -> None:
        document = alert_document(mirror, run, event, began, last_success=last_success,
                                  now=self._clock())
        for target in self.settings.targets:
            self.send(NotifyJob(f"{MIRROR_SUBJECT}{mirror.name}", int(began), target.id,
                                document, event), self.queue)
        log.warning("mirror %s: %s since %.0f: notifying %d URL(s)", mirror.name, event, began,
                    len(self.settings.targets))


def alert_document(mirror: Mirror, run: MirrorRun, event: str, began: float, *,
                   last_success: float | None, now: float) -> dict[str, Any]:
    """The body of a mirror's alert: what a receiver needs to act, and no secret."""
    error = run.error[:_ERROR_MAX] if run.error else None
    return {"event": event, "mirror": mirror.name, "source": mirror.source,
            "destinations": list(mirror.destinations), "to": mirror.to, "every": mirror.every,
            "failing_since": began, "failing_for": _duration(now - began),
            "last_success": last_success, "error": error if event == MIRROR_FAILING else None,
            "run": {"trigger": run.trigger, "started_at": run.started_at,
                    "finished_at": run.finished_at, "ok": run.ok}}


def _duration(seconds: float) -> str:
    s = max(0, int(seconds))
    if s < 3600:
        return f"{s // 60}m"
    if s < 86400:
        return f"{s // 3600}h{(s % 3600) // 60:02d}m"
    return f"{s // 86400}d{(s % 86400) // 3600}h"


def _float(value: str) -> float:
    try:
        return float(value)
    except ValueError:
        return 0.0
