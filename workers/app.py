"""The Celery app: ``celery -A workers.app worker -l info`` and ``celery -A workers.app flower``.

At-least-once delivery, because a copy is idempotent (a destination holding the digest costs
one HEAD): a message is acknowledged only after its task has finished (``acks_late``), goes back
to the queue if the worker running it dies (``reject_on_worker_lost``), and each worker process
reserves one message at a time (``prefetch_multiplier=1``) so a slow copy holds nothing else
back. JSON only: no pickle is ever accepted from the broker. Events are on, for Flower.
The release ledger, not a result backend, is the record of what happened.
``celery -A workers.app beat`` runs the mirrors and the verify on their schedule
(``workers/schedule.py``; run exactly one).

Time limits: the engine abandons a copy at ``soft_time_limit`` (cleanly, inside its event loop)
and the task retries it; Celery's own soft limit sits halfway to the hard limit as a backstop for
code that blocks the loop, and the hard limit kills the worker child. Celery enforces its limits
in the prefork pool only (``-P solo`` relies on the engine's). See ``workers/settings.py`` for
every setting and the visibility timeout's worst case.
"""

from __future__ import annotations

import logging
import os
from typing import Any

from celery import Celery

from registry.envconfig import bandwidth_from_env

from .connections import broker_transport_options
from .notify_settings import NotifySettings
from .routing import DEFAULT_QUEUE
from .settings import WorkerSettings


def celery_config(settings: WorkerSettings) -> dict[str, Any]:
    """Celery settings for ``settings``; a function so a test can read them without a worker."""
    return {
        "broker_url": settings.broker_url,
        "result_backend": None,
        "task_ignore_result": True,
        "task_serializer": "json",
        "result_serializer": "json",
        "accept_content": ["json"],
        "event_serializer": "json",
        "task_acks_late": True,
        "task_reject_on_worker_lost": True,
        "worker_prefetch_multiplier": 1,
        "broker_transport_options": {
            "visibility_timeout": settings.visibility_timeout,
            # Sweep for a dead worker's overdue messages every 10 s rather than every 100 s
            # (kombu's default throttle), so redelivery follows the visibility timeout closely.
            "unacked_restore_throttle": 1,
            # sentinel://: the master's name, and the sentinels' password when they want one.
            **broker_transport_options(settings.broker_url, settings.sentinel),
        },
        "task_time_limit": settings.time_limit,
        "task_soft_time_limit": (settings.soft_time_limit + settings.time_limit) / 2,
        "broker_connection_retry_on_startup": True,
        "broker_connection_max_retries": None,
        # A running copy carries on when the broker connection drops; if its ack is lost the
        # redelivery finds the digest present and is a no-op. Cancelling it instead would leave
        # its lock held until the lock expires.
        "worker_cancel_long_running_tasks_on_connection_loss": False,
        "worker_send_task_events": True,
        "task_send_sent_event": True,
        "task_track_started": True,
        "task_default_queue": DEFAULT_QUEUE,
        "task_create_missing_queues": True,
        "broker_channel_error_retry": True,
    }


# httpx logs every request URL at INFO; a storage backend's redirect or an upload location can
# carry a signature or token in its query string, so those URLs stay out of the worker's log.
# The engine's own log lines use redacted URLs.
for _name in ("httpx", "httpcore"):
    logging.getLogger(_name).setLevel(logging.WARNING)

settings = WorkerSettings.from_env(os.environ)
# Release-finished notifications (workers/notify_settings.py): a bad one stops the worker here.
notify_settings = NotifySettings.from_env(os.environ,
                                         visibility_timeout=settings.visibility_timeout)
# Bandwidth caps (FANOUT_BANDWIDTH): a bad entry stops the worker here, not its first copy.
bandwidth_from_env(os.environ)
app = Celery("fanout", include=["workers.tasks", "workers.notify", "workers.sync_tasks"])
app.conf.update(celery_config(settings))
# `celery -A workers.app beat`: the mirrors' and the verify's entries, read from fanout.toml by
# beat alone when it starts (workers/schedule.py: why exactly one beat, and what two would do).
app.conf.beat_scheduler = "workers.schedule:ConfiguredScheduler"
