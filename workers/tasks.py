"""The one task, ``fanout.copy``: one destination of one release.

Sent as ``app.send_task("fanout.copy", kwargs={"release_id": ..., "source": "repo@sha256:...",
"destination": "host/repo", "tags": [...], "referrers": {"enabled": true, "types": []}})``.
No credentials travel in the message; the worker finds its own. The task is thin: the
decisions are :class:`workers.runner.CopyRunner`'s, the copy is the engine's.
"""

from __future__ import annotations

import functools
import logging
import os
from typing import Any

import redis
from celery import Task
from celery.exceptions import SoftTimeLimitExceeded, TimeLimitExceeded
from celery.signals import worker_ready
from redis.backoff import ExponentialBackoff
from redis.retry import Retry

from .app import app, settings
from .connections import redis_client
from .engine import CopyEngine
from .job import TASK_NAME, JobError, parse_job
from .ledger import Ledger
from .metrics import MetricsObserver
from .notify import finals_hook
from .policy import TaskRetryPolicy
from .reaper import Reaper, ReaperThread
from .routing import queue_for
from .runner import CopyRunner, Failed, RetryLater, Succeeded, Superseded
from .tag_order import TagOrdering

log = logging.getLogger("fanout.worker")
# Ride out a Redis restart (~30 s of backoff) rather than fail the ledger write or the lock
# release after a copy has landed: a lock left behind would hold every redelivery of this
# destination back until its lease lapses (FANOUT_LOCK_TTL).
_LEDGER_RETRY = Retry(ExponentialBackoff(cap=4.0, base=0.25), retries=9)


@functools.cache
def ledger_client() -> redis.Redis[Any]:
    """This process's ledger connection, riding out a Redis restart."""
    return redis_client(settings.ledger_url, settings.sentinel, decode_responses=True,
                        socket_connect_timeout=10, socket_timeout=30,
                        health_check_interval=30, retry=_LEDGER_RETRY)


@functools.cache
def engine() -> CopyEngine:
    """This worker process's engine: its loop and pool of registry clients, shared by the
    copies and the scheduled tasks (``workers/sync_tasks.py``)."""
    return CopyEngine(os.environ)


@functools.cache
def runner() -> CopyRunner:
    """This worker process's runner, built on first use (after the prefork fork)."""
    client = ledger_client()
    # Lease renewals fail fast instead: a renewal stuck retrying while the lease runs out
    # would let a second copy start beside this one.
    fast = redis_client(settings.ledger_url, settings.sentinel, decode_responses=True,
                        socket_connect_timeout=2, socket_timeout=2)
    return CopyRunner(
        ledger=Ledger(client, retention=settings.retention, observer=MetricsObserver()),
        locks=client,
        heartbeat_locks=fast,
        engine=engine(),
        policy=TaskRetryPolicy.from_settings(settings),
        lock_ttl=settings.lock_ttl,
        heartbeat_interval=settings.heartbeat_interval,
        timeout=settings.soft_time_limit,
        transient=(SoftTimeLimitExceeded,),
        finished=finals_hook(client),
        # An owner record outlives every release that could still write its tag (a retry
        # needs the release in the ledger), with a day to spare.
        tag_order=TagOrdering(client, lock_ttl=settings.lock_ttl,
                              owner_ttl=settings.retention + 86400),
    )


def send_again(task: dict[str, Any]) -> None:
    """Send a destination's copy task again (a dead worker's, handed over by the reaper)."""
    app.send_task(TASK_NAME, kwargs=task,
                  queue=queue_for(str(task.get("destination", "")),
                                  by_registry=settings.route_by_registry))


@worker_ready.connect  # type: ignore[untyped-decorator]  # celery is untyped
def start_reaper(**_: Any) -> None:
    """Every worker's main process looks for copies whose worker died, and hands them over."""
    reaper = Reaper(Ledger(ledger_client(), retention=settings.retention,
                           observer=MetricsObserver()), ledger_client(),
                    send_again, lock_ttl=settings.lock_ttl)
    ReaperThread(reaper, settings.reaper_interval).start()
    log.info("reaper sweeping every %gs for copies whose heartbeat stopped",
             settings.reaper_interval)


class CopyTask(Task):  # type: ignore[misc]  # celery is untyped
    def on_failure(self, exc: BaseException, task_id: str, args: Any, kwargs: Any,
                   einfo: Any) -> None:
        # After a hard time limit Celery calls this in the worker's main process: the child
        # that would have recorded the outcome (and released the lock) is dead, so this does
        # both, and sends the task again when it is still within its retry bounds.
        if not isinstance(exc, TimeLimitExceeded):
            return
        reason = (f"killed at the hard time limit ({settings.time_limit:g} s, "
                  "FANOUT_TASK_TIME_LIMIT)")
        try:
            outcome = runner().killed(args or (), kwargs or {}, owner=task_id, reason=reason)
            if isinstance(outcome, RetryLater):
                job = parse_job(args or (), kwargs or {})
                self.apply_async(args=args, kwargs=kwargs, task_id=task_id,
                                 countdown=outcome.countdown,
                                 queue=queue_for(job.destination,
                                                 by_registry=settings.route_by_registry))
        except (JobError, redis.RedisError) as err:
            log.error("could not record the time limit of task %s: %s", task_id, err)


# typing=False: the runner checks the arguments itself, so a malformed message is recorded as
# failed in the ledger instead of dying in Celery's signature check.
@app.task(  # type: ignore[untyped-decorator]  # celery is untyped
    bind=True, base=CopyTask, name=TASK_NAME, max_retries=None, acks_late=True, typing=False)
def copy(self: CopyTask, *args: Any, **kwargs: Any) -> dict[str, Any]:
    """Copy one release's image to one destination; retries and failures are per destination."""
    outcome = runner().run(args, kwargs, worker=self.request.hostname,
                           owner=self.request.id or "")
    if isinstance(outcome, RetryLater):
        # max_retries=None: the runner bounds retries (attempts and age, from the ledger).
        raise self.retry(countdown=outcome.countdown, max_retries=None)
    if isinstance(outcome, Succeeded):
        done: dict[str, Any] = {"state": "succeeded", "seconds": round(outcome.seconds, 3),
                                **outcome.stats}
        if outcome.superseded:
            done["superseded"] = outcome.superseded
        return done
    if isinstance(outcome, Superseded):
        return {"state": "superseded", "reason": outcome.reason}
    assert isinstance(outcome, Failed)
    return {"state": "failed", "error_type": outcome.error_type, "error": outcome.reason}
