"""The notification task, ``fanout.notify``: one release-finished POST to one URL.

Sent by the copy task whose destination made its release final (``Finals`` in
``workers/notifications.py``) as ``app.send_task("fanout.notify", kwargs={"release_id": ...,
"epoch": 2, "target": "<the URL's id>", "document": {...}})``. The message names the URL by its
id: the URLs and the signing secret stay in the workers' environment. The task is thin: the
decisions are :class:`workers.notifications.Notifier`'s.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from typing import Any

import redis
from celery import Task
from redis.backoff import ExponentialBackoff
from redis.retry import Retry

from .app import app, notify_settings, settings
from .connections import redis_client
from .ledger import Ledger
from .mirror_alerts import MirrorAlerts
from .mirror_runs import MirrorRuns
from .notifications import (
    NOTIFY_TASK_NAME,
    DeliveryLog,
    Finals,
    GaveUp,
    Notifier,
    NotifyJob,
    RetryLater,
    result_of,
)

log = logging.getLogger("fanout.notify")


@functools.cache
def notifier() -> Notifier:
    """This worker process's notifier, built on first use (after the prefork fork)."""
    client = redis_client(settings.ledger_url, settings.sentinel, decode_responses=True,
                          socket_connect_timeout=10, socket_timeout=30,
                          retry=Retry(ExponentialBackoff(cap=4.0, base=0.25), retries=9))
    return Notifier(notify_settings, DeliveryLog(client, retention=settings.retention))


def send(job: NotifyJob, queue: str) -> None:
    """Send one notification's task (its id says which release, epoch and URL: Flower)."""
    app.send_task(NOTIFY_TASK_NAME, kwargs=job.to_kwargs(), task_id=job.task_id, queue=queue)


def finals_hook(ledger_client: redis.Redis[Any]) -> Callable[[str, str], None] | None:
    """The runner's hook after a destination ends for good; None without FANOUT_NOTIFY_URL."""
    if not notify_settings.enabled:
        return None
    finals = Finals(Ledger(ledger_client, retention=settings.retention), notify_settings, send,
                    by_registry=settings.route_by_registry)
    return finals.settle


def mirror_alerts(client: redis.Redis[Any]) -> MirrorAlerts | None:
    """A mirror sync's alerts on this worker (``workers/mirror_alerts.py``); None without
    FANOUT_NOTIFY_URL."""
    if not notify_settings.enabled:
        return None
    return MirrorAlerts(MirrorRuns(client), notify_settings, send)


# typing=False: a malformed message is reported, not retried by Celery's signature check.
@app.task(  # type: ignore[untyped-decorator]  # celery is untyped
    bind=True, name=NOTIFY_TASK_NAME, max_retries=None, acks_late=True, typing=False)
def notify(self: Task, *args: Any, **kwargs: Any) -> dict[str, Any]:
    """POST a release's document to one URL; retried with backoff while the receiver fails."""
    try:
        job = NotifyJob.parse(args, kwargs)
    except ValueError as exc:
        log.error("%s", exc)
        return result_of(GaveUp(str(exc)))
    outcome = notifier().deliver(job, retries=self.request.retries)
    if isinstance(outcome, RetryLater):
        # max_retries=None: the notifier bounds the retries (FANOUT_NOTIFY_MAX_RETRIES).
        raise self.retry(countdown=outcome.countdown, max_retries=None)
    return result_of(outcome)
