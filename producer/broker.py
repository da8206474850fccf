"""Talking to the broker and the ledger for the producer: connecting (failing fast, with
passwords kept out of every message) and publishing a release's copy tasks."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, NoReturn

import redis

from workers import connections
from workers.ledger import Ledger
from workers.routing import queue_for
from workers.settings import WorkerSettings

from . import redis_publish
from .common import UsageError

TASK_NAME = "fanout.copy"
_CONNECT_TIMEOUT = 5.0


class EnqueueError(UsageError):
    """Nothing (or, when it says so, only part) was enqueued; the message says why."""


class QueueUnreachable(EnqueueError):
    """The broker or the ledger could not be reached: the input may be fine; try again later."""


class SourceUnavailable(EnqueueError):
    """The source registry failed to answer (as opposed to answering "no such image")."""


def redact(url: str) -> str:
    """``url`` with its password masked, for messages (each sentinel of a list too)."""
    return connections.redact(url)


def connect_ledger(settings: WorkerSettings) -> Ledger:
    """A ledger on ``settings.ledger_url``; fails fast (and without the password) if down."""
    client = connections.redis_client(settings.ledger_url, settings.sentinel,
                                      socket_connect_timeout=_CONNECT_TIMEOUT, socket_timeout=30.0)
    try:
        client.ping()
    except (redis.RedisError, OSError) as exc:
        client.close()
        raise QueueUnreachable(f"ledger {redact(settings.ledger_url)} is unreachable: "
                           f"{_scrub(exc, settings.ledger_url, settings)}") from None
    return Ledger(client, retention=settings.retention)


def check_broker(url: str, settings: WorkerSettings | None = None) -> None:
    """Connect once to the broker; raise :class:`EnqueueError` naming it (password masked).

    ``settings`` give what the URL leaves out (a Sentinel master's name); by default the
    workers' app's, read from this process's environment."""
    if redis_publish.handles(url):
        client = _broker_client(url)
        try:
            client.ping()
        except (redis.RedisError, OSError) as exc:
            raise QueueUnreachable(f"broker {redact(url)} is unreachable: "
                                   f"{_scrub(exc, url, settings)}") from None
        finally:
            client.close()
        return
    app = _celery_app()
    try:
        with app.connection_for_write(url, connect_timeout=_CONNECT_TIMEOUT,
                                      **_transport(url, settings)) as connection:
            connection.ensure_connection(max_retries=1, interval_start=0, interval_step=0,
                                         timeout=_CONNECT_TIMEOUT)
    except Exception as exc:  # noqa: BLE001 - kombu raises per-transport types; all mean "down"
        raise QueueUnreachable(f"broker {redact(url)} is unreachable: "
                           f"{_scrub(exc, url, settings)}") from None


def _transport(url: str, settings: WorkerSettings | None) -> dict[str, Any]:
    """``transport_options`` for a broker connection: the Sentinel master of ``settings``
    (which may come from another environment than the app's)."""
    if settings is None:
        return {}
    options = connections.broker_transport_options(url, settings.sentinel)
    return {"transport_options": options} if options else {}


def _celery_app() -> Any:
    # Imported on first use: the app reads the workers' environment when imported, which
    # ``fanout copy`` and ``fanout status`` have no need to get right.
    from workers.app import app

    return app


def _scrub(exc: BaseException, url: str, settings: WorkerSettings | None = None) -> str:
    # Driver messages sometimes echo the URL they were given, password included.
    sentinel_password = settings.sentinel_password if settings is not None else None
    return connections.scrub(connections.error_text(exc), url, secrets=(sentinel_password,))


def queue_settings(env: Mapping[str, str], broker_url: str | None = None) -> WorkerSettings:
    """Broker, ledger, retention and routing as the workers read them, ``broker_url`` winning."""
    if broker_url:
        env = {**env, "FANOUT_BROKER_URL": broker_url}
    return WorkerSettings.from_env(env)



def _task_id(release_id: str, task: Mapping[str, Any]) -> str:
    # Readable in Flower; unique because release ids are (and generations).
    generation = task.get("generation", 0)
    return f"{release_id}:{task['destination']}" + (f":{generation}" if generation else "")


def _broker_client(url: str) -> redis.Redis[Any]:
    return connections.redis_client(url, socket_connect_timeout=_CONNECT_TIMEOUT,
                                    socket_timeout=30.0)


def send(ledger: Ledger, settings: WorkerSettings, release_id: str,
          tasks: Sequence[dict[str, Any]]) -> None:
    """Publish the tasks of one release; those that could not be are failed in the ledger."""
    pending = [str(task["destination"]) for task in tasks]
    if redis_publish.handles(settings.broker_url):
        messages = []
        for task in tasks:
            queue = queue_for(str(task["destination"]), by_registry=settings.route_by_registry)
            messages.append((queue, redis_publish.task_message(
                TASK_NAME, _task_id(release_id, task), task, queue)))
        client = _broker_client(settings.broker_url)
        try:
            refused = redis_publish.publish(client, messages)
        except (redis.RedisError, OSError) as exc:
            _not_sent(ledger, settings, release_id, pending, len(tasks), exc)
        finally:
            client.close()
        if refused:
            queues = sorted({messages[i][0] for i in refused})
            _not_sent(ledger, settings, release_id, [pending[i] for i in refused], len(tasks),
                      RuntimeError(f"Redis refused LPUSH onto {', '.join(queues)} (not a list)"))
        return
    app = _celery_app()
    try:
        with app.connection_for_write(settings.broker_url,
                                      **_transport(settings.broker_url, settings)) as connection:
            for task in tasks:
                destination = str(task["destination"])
                app.send_task(
                    TASK_NAME,
                    kwargs=task,
                    task_id=_task_id(release_id, task),
                    queue=queue_for(destination, by_registry=settings.route_by_registry),
                    connection=connection,
                )
                pending.remove(destination)
    except Exception as exc:  # noqa: BLE001 - any failure to publish leaves the same state
        _not_sent(ledger, settings, release_id, pending, len(tasks), exc)


def _not_sent(ledger: Ledger, settings: WorkerSettings, release_id: str, pending: list[str],
              total: int, exc: BaseException) -> NoReturn:
    """Fail in the ledger the destinations whose task was not published, and say so."""
    reason = f"not enqueued: broker {redact(settings.broker_url)}: " \
             f"{_scrub(exc, settings.broker_url, settings)}"
    for destination in pending:
        ledger.mark_failed(release_id, destination, error=reason, error_type="EnqueueError")
    raise QueueUnreachable(f"release {release_id}: {total - len(pending)} of {total} "
                           f"destinations enqueued; {reason}") from None
