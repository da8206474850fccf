"""Talking to the broker and the ledger for the producer: connecting (failing fast, with
passwords kept out of every message) and publishing a release's copy tasks."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import redis

from workers import connections, publishing, redis_publish
from workers.ledger import Ledger
from workers.publishing import TASK_NAME as TASK_NAME  # re-exported: the producer's API names it
from workers.publishing import NotPublished
from workers.settings import WorkerSettings

from .common import UsageError

_CONNECT_TIMEOUT = publishing.CONNECT_TIMEOUT


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
        client = publishing.broker_client(url)
        try:
            client.ping()
        except (redis.RedisError, OSError) as exc:
            raise QueueUnreachable(f"broker {redact(url)} is unreachable: "
                                   f"{_scrub(exc, url, settings)}") from None
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
        raise QueueUnreachable(f"broker {redact(url)} is unreachable: "
                           f"{_scrub(exc, url, settings)}") from None


_scrub = publishing.scrub


def queue_settings(env: Mapping[str, str], broker_url: str | None = None) -> WorkerSettings:
    """Broker, ledger, retention and routing as the workers read them, ``broker_url`` winning."""
    if broker_url:
        env = {**env, "FANOUT_BROKER_URL": broker_url}
    return WorkerSettings.from_env(env)


def send(ledger: Ledger, settings: WorkerSettings, release_id: str,
         tasks: Sequence[dict[str, Any]]) -> None:
    """Publish the tasks of one release (:func:`workers.publishing.send`); raise
    :class:`QueueUnreachable` for those that could not be, failed in the ledger."""
    try:
        publishing.send(ledger, settings, release_id, tasks)
    except NotPublished as exc:
        raise QueueUnreachable(str(exc)) from None
