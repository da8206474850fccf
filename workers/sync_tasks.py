"""The scheduler's tasks (``workers/schedule.py`` sends them; ``fanout sync`` and the API may too):

- ``fanout.sync(name, mirror, trigger="schedule")``: one run of a mirror
  (:func:`workers.mirror_sync.sync_mirror`); ``mirror`` is ``Mirror.to_json()``, carried in the
  message so a worker runs what the sender decided, whatever its own ``fanout.toml`` says.
- ``fanout.verify(since, repair=False)``: verify every release of the last ``since`` seconds
  (:func:`workers.verification.verify`), repairing drift if asked.

Thin, as the copy task is: decode, call the core, map errors to skip, retry or failure. Both ask
registries through the worker process's engine pool (``workers.tasks.engine``): the worker's own
credentials (``DOCKER_CONFIG``, environment), its TLS settings and the shared rate-limit holds.

Neither overlaps itself. A sync's lease is the sync's own (``MirrorBusy``); the verify takes
``fanout:lease:verify`` (a :class:`~workers.locks.Lease` renewed by a
:class:`~workers.heartbeat.Heartbeat`, as a copy's lock is): a verify that outlasts its
interval makes the next one a skipped run, and one whose worker died frees the lease within
``FANOUT_LOCK_TTL``. A skipped run is logged "skipped: another run holds the lease" and is no
error.

Retries: a transient failure (Redis or the broker down, a registry's 5xx or 429 that outlived
the request tier) is retried with the copy task's backoff (``FANOUT_RETRY_BACKOFF``, at most
``FANOUT_TASK_MAX_RETRIES`` times), and never past the message's expiry (the next scheduled run
is then due anyway). Bad input (a malformed mirror, a ``UsageError``, a ``ConfigError``) fails
the task at once: retrying cannot fix it. Worst case per run: the request tier's retries inside
each HEAD, times ``VERIFY_RETRY``'s three attempts for the verify's checks.
"""

from __future__ import annotations

import logging
import os
from typing import Any

import redis
from celery import Task

from registry.envconfig import ConfigError
from registry.errors import is_transient
from registry.retry import RetryPolicy

from .app import app, settings
from .errors import QueueUnreachable, UsageError
from .heartbeat import Heartbeat
from .ledger import Ledger
from .locks import Lease
from .loop import Stopped
from .metrics import MetricsObserver
from .mirror_model import Mirror, MirrorBusy
from .mirror_sync import sync_mirror
from .policy import TaskRetryPolicy
from .publishing import NotPublished
from .schedule import SYNC_TASK, VERIFY_TASK
from .tasks import engine, ledger_client
from .verdicts import Verdict
from .verification import Checks, RunChecks
from .verification import verify as verify_releases

log = logging.getLogger("fanout.scheduler")

VERIFY_LEASE = "fanout:lease:verify"
SKIPPED = "skipped: another run holds the lease"


def _ledger() -> Ledger:
    return Ledger(ledger_client(), retention=settings.retention, observer=MetricsObserver())


def transient(exc: BaseException) -> bool:
    """Worth trying again later: the queue or a registry was down, not the input wrong."""
    return isinstance(exc, (redis.RedisError, OSError, QueueUnreachable, NotPublished)) \
        or is_transient(exc)


def _retry(task: Task, exc: Exception, what: str) -> Exception:
    """The retry to raise for ``exc``, or ``exc`` itself when it must not be retried."""
    policy = TaskRetryPolicy.from_settings(settings)
    attempts = task.request.retries + 1
    if not transient(exc) or attempts > policy.max_retries:
        log.error("%s failed: %s", what, exc)
        return exc
    countdown = policy.countdown(attempts)
    log.warning("%s: %s; trying again in %.0fs", what, exc, countdown)
    retry: Exception = task.retry(exc=exc, countdown=countdown, max_retries=None, throw=False)
    return retry


@app.task(  # type: ignore[untyped-decorator]  # celery is untyped
    bind=True, name=SYNC_TASK, max_retries=None, acks_late=True)
def sync(self: Task, name: str, mirror: dict[str, Any], trigger: str = "schedule",
         ) -> dict[str, Any]:
    """Run one mirror once; returns a small summary (its counts, the releases it made)."""
    what = f"sync of mirror {name}"
    try:
        model = Mirror.from_json(mirror)
    except (KeyError, TypeError, ValueError) as exc:
        raise ConfigError(f"{what}: malformed mirror definition ({exc!r})") from None
    if model.name != name:
        raise ConfigError(f"{what}: the definition sent is mirror {model.name!r}")
    try:
        _, run = sync_mirror(model, ledger=_ledger(), settings=settings, env=os.environ,
                             trigger=trigger, run=engine().run)
    except MirrorBusy:
        log.info("%s %s", what, SKIPPED)
        return {"mirror": name, "trigger": trigger, "state": "skipped"}
    except (UsageError, ConfigError):
        raise
    except Exception as exc:  # noqa: BLE001 - classified: retried if transient, else failed
        raise _retry(self, exc, what) from None
    summary = {"mirror": name, "trigger": trigger, "state": "ok" if run.ok else "failed",
               "counts": dict(run.counts), "releases": list(run.releases)}
    if run.error:
        summary["error"] = run.error
    log.info("%s (%s): %s, %s, %d release(s) made", what, trigger, summary["state"],
             ", ".join(f"{n} {k}" for k, n in run.counts.items()) or "nothing to do",
             len(run.releases))
    return summary


@app.task(  # type: ignore[untyped-decorator]  # celery is untyped
    bind=True, name=VERIFY_TASK, max_retries=None, acks_late=True)
def verify(self: Task, since: float, repair: bool = False) -> dict[str, Any]:
    """Verify the releases of the last ``since`` seconds (repairing drift if ``repair``);
    returns the counts per state, the drift found and what was sent again."""
    what = "scheduled verify"
    lease = Lease(ledger_client(), VERIFY_LEASE, settings.lock_ttl, owner=self.request.id or "")
    try:
        if not lease.acquire():
            log.info("%s %s (%s)", what, SKIPPED, lease.holder())
            return {"state": "skipped"}
        with Heartbeat(lease, None, "", what, interval=settings.heartbeat_interval) as beat:
            report = verify_releases(_ledger(), settings, _checks_on_engine(beat),
                                     since=float(since), repair=bool(repair))
    except Stopped:
        log.warning("%s stopped: its lease was lost (another may have started)", what)
        return {"state": "stopped"}
    except (UsageError, ConfigError) as exc:
        if not isinstance(exc, QueueUnreachable):
            raise
        raise _retry(self, exc, what) from None
    except Exception as exc:  # noqa: BLE001 - classified: retried if transient, else failed
        raise _retry(self, exc, what) from None
    finally:
        if lease.held:
            lease.release()
    drift = sum(v.drift for v in report.verdicts)
    repaired = sum(len(names) for names in report.repaired.values())
    log.info("%s of the last %gs: %d destination(s) checked, %d drifted, %d sent again, "
             "%d release(s) held back (%s)", what, since, len(report.verdicts), drift,
             repaired, len(report.held),
             ", ".join(f"{n} {state}" for state, n in report.counts().items()) or "nothing")
    return {"state": "ok", "checked": len(report.verdicts), "drift": drift,
            "repaired": report.repaired, "held": report.held, "counts": report.counts()}


def _checks_on_engine(beat: Heartbeat) -> RunChecks:
    """Run the checks on the worker's engine pool, stopped if the lease is lost."""
    def run(checks: Checks, retry: RetryPolicy) -> list[Verdict]:
        # The pool keeps the copies' request tier; the checks add VERIFY_RETRY on top.
        return engine().run(checks, beat.abort)

    return run
