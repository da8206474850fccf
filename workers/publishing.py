"""Publishing a release's copy tasks to the broker: from the producer (``fanout enqueue``,
``retry``, ``replay``, ``verify --repair``) and from the workers themselves (a scheduled mirror
sync, a scheduled verify), so both send exactly the same messages.

A ``redis://`` or ``rediss://`` broker is written directly (``workers/redis_publish.py``): no
Celery or kombu import for a CI job's enqueue. Other brokers (RabbitMQ, Sentinel) go through
Celery. A task that could not be published is failed in the ledger, so a release never waits on
a message that was never sent.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import redis

from . import connections, redis_publish
from .ledger import Ledger
from .routing import queue_for
from .settings import WorkerSettings

TASK_NAME = "fanout.copy"
CONNECT_TIMEOUT = 5.0


class NotPublished(RuntimeError):
    """Some of a release's tasks were not published (and are failed in the ledger); the message
    says how many and why, with every password masked."""


def broker_client(url: str) -> redis.Redis[Any]:
    return connections.redis_client(url, socket_connect_timeout=CONNECT_TIMEOUT,
                                    socket_timeout=30.0)


def transport(url: str, settings: WorkerSettings | None) -> dict[str, Any]:
    """``transport_options`` for a broker connection: the Sentinel master of ``settings``
    (which may come from another environment than the app's)."""
    if settings is None:
        return {}
    options = connections.broker_transport_options(url, settings.sentinel)
    return {"transport_options": options} if options else {}


def celery_app() -> Any:
    # Imported on first use: the app reads the workers' environment when imported, which
    # ``fanout copy`` and ``fanout status`` have no need to get right.
    from .app import app

    return app


def scrub(exc: BaseException, url: str, settings: WorkerSettings | None = None) -> str:
    """``exc``'s text with ``url``'s passwords masked: driver messages sometimes echo the URL
    they were given, password included."""
    sentinel_password = settings.sentinel_password if settings is not None else None
    return connections.scrub(connections.error_text(exc), url, secrets=(sentinel_password,))


def task_id(release_id: str, task: Mapping[str, Any]) -> str:
    # Readable in Flower; unique because release ids are (and generations).
    generation = task.get("generation", 0)
    return f"{release_id}:{task['destination']}" + (f":{generation}" if generation else "")


def send(ledger: Ledger, settings: WorkerSettings, release_id: str,
         tasks: Sequence[dict[str, Any]], *, client: redis.Redis[Any] | None = None) -> None:
    """Publish the tasks of one release; those that could not be are failed in the ledger and
    :class:`NotPublished` is raised. ``client``: a Redis broker connection to publish on
    (otherwise one is opened and closed here)."""
    pending = [str(task["destination"]) for task in tasks]
    if redis_publish.handles(settings.broker_url):
        messages = []
        for task in tasks:
            queue = queue_for(str(task["destination"]), by_registry=settings.route_by_registry)
            messages.append((queue, redis_publish.task_message(
                TASK_NAME, task_id(release_id, task), task, queue)))
        own = client is None
        conn = broker_client(settings.broker_url) if client is None else client
        try:
            refused = redis_publish.publish(conn, messages)
        except (redis.RedisError, OSError) as exc:
            _not_sent(ledger, settings, release_id, pending, len(tasks), exc)
        finally:
            if own:
                conn.close()
        if refused:
            queues = sorted({messages[i][0] for i in refused})
            _not_sent(ledger, settings, release_id, [pending[i] for i in refused], len(tasks),
                      RuntimeError(f"Redis refused LPUSH onto {', '.join(queues)} (not a list)"))
        return
    app = celery_app()
    try:
        with app.connection_for_write(settings.broker_url,
                                      **transport(settings.broker_url, settings)) as connection:
            for task in tasks:
                destination = str(task["destination"])
                app.send_task(
                    TASK_NAME,
                    kwargs=task,
                    task_id=task_id(release_id, task),
                    queue=queue_for(destination, by_registry=settings.route_by_registry),
                    connection=connection,
                )
                pending.remove(destination)
    except Exception as exc:  # noqa: BLE001 - any failure to publish leaves the same state
        _not_sent(ledger, settings, release_id, pending, len(tasks), exc)


def _not_sent(ledger: Ledger, settings: WorkerSettings, release_id: str, pending: list[str],
              total: int, exc: BaseException) -> None:
    """Fail in the ledger the destinations whose task was not published, and say so."""
    reason = f"not enqueued: broker {connections.redact(settings.broker_url)}: " \
             f"{scrub(exc, settings.broker_url, settings)}"
    for destination in pending:
        ledger.mark_failed(release_id, destination, error=reason, error_type="EnqueueError")
    raise NotPublished(f"release {release_id}: {total - len(pending)} of {total} "
                       f"destinations enqueued; {reason}") from None
