"""Reaching the broker and the ledger from outside a task (``fanout verify``, ``retry``, the
scheduled verify): connect and fail fast, with every password kept out of the message."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import redis

from . import connections, publishing, redis_publish
from .errors import QueueUnreachable
from .ledger import Ledger
from .settings import WorkerSettings

_CONNECT_TIMEOUT = publishing.CONNECT_TIMEOUT


def queue_settings(env: Mapping[str, str], broker_url: str | None = None) -> WorkerSettings:
    """Broker, ledger, retention and routing as the workers read them, ``broker_url`` winning."""
    if broker_url:
        env = {**env, "FANOUT_BROKER_URL": broker_url}
    return WorkerSettings.from_env(env)


def connect_ledger(settings: WorkerSettings) -> Ledger:
    """A ledger on ``settings.ledger_url``; fails fast (and without the password) if down."""
    client = connections.redis_client(settings.ledger_url, settings.sentinel,
                                      socket_connect_timeout=_CONNECT_TIMEOUT, socket_timeout=30.0)
    try:
        client.ping()
    except (redis.RedisError, OSError) as exc:
        client.close()
        why = publishing.scrub(exc, settings.ledger_url, settings)
        raise QueueUnreachable(f"ledger {connections.redact(settings.ledger_url)} is "
                               f"unreachable: {why}") from None
    return Ledger(client, retention=settings.retention)


def check_broker(url: str, settings: WorkerSettings | None = None) -> None:
    """Connect once to the broker; raise :class:`QueueUnreachable` naming it (password masked).

    ``settings`` give what the URL leaves out (a Sentinel master's name); by default the
    workers' app's, read from this process's environment."""
    if redis_publish.handles(url):
        client = publishing.broker_client(url)
        try:
            client.ping()
        except (redis.RedisError, OSError) as exc:
            raise QueueUnreachable(f"broker {connections.redact(url)} is unreachable: "
                                   f"{publishing.scrub(exc, url, settings)}") from None
        finally:
            client.close()
        return
    app = publishing.celery_app()
    try:
        with app.connection_for_write(url, connect_timeout=_CONNECT_TIMEOUT,
                                      **publishing.transport(url, settings)) as connection:
            connection.ensure_connection(max_retries=1, interval_start=0, interval_step=0,
                                         timeout=_CONNECT_TIMEOUT)
    except Exception as exc:  # noqa: BLE001 - kombu raises per-transport types; all mean "down"
        raise QueueUnreachable(f"broker {connections.redact(url)} is unreachable: "
                               f"{publishing.scrub(exc, url, settings)}") from None


def send(ledger: Ledger, settings: WorkerSettings, release_id: str,
         tasks: Sequence[dict[str, Any]]) -> None:
    """Publish the tasks of one release (:func:`workers.publishing.send`); raise
    :class:`QueueUnreachable` for those that could not be, failed in the ledger."""
    try:
        publishing.send(ledger, settings, release_id, tasks)
    except publishing.NotPublished as exc:
        raise QueueUnreachable(str(exc)) from None
