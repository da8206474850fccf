"""The Python API behind ``fanout enqueue``, ``fanout status`` and ``fanout check``: for CI
tooling in Python.

::

    from producer.api import enqueue, wait, exit_code
    [release] = enqueue("ghcr.io/acme/app:1.2.3", ["quay.io/acme/app", "harbor.local/acme/app"])
    final = wait(release, timeout=600)
    sys.exit(exit_code([final]))

Everything is checked before anything is enqueued: the references, the source (a tag is pinned to
its digest here, once; a digest must exist), the destinations, the broker and the ledger.
``check(destinations)`` is the preflight of destinations, as ``fanout check`` runs it.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import httpx
import redis
from kombu.utils.url import maybe_sanitize_url

from registry.copy import Copier
from registry.envconfig import transport_options_from_env
from registry.errors import NotFound, RegistryError
from registry.fetch import manifest_head
from registry.options import CopyOptions
from registry.preflight import DestinationCheck
from registry.reference import Reference, Repository
from registry.retry import RetryPolicy, retry_async
from registry.session import Registries
from workers.ledger import Ledger, Release
from workers.routing import queue_for
from workers.settings import WorkerSettings

from . import check_cmd
from .common import UsageError, credentials, parse_destinations, parse_source

TASK_NAME = "fanout.copy"
EXIT_OK = 0
EXIT_FAILED = 1
EXIT_TIMEOUT = 3

# Resolving the source happens while a CI job waits: a blip is retried, an outage is reported.
_RESOLVE_RETRY = RetryPolicy(attempts=3, initial=0.5, maximum=2.0, max_elapsed=10.0, max_hold=5.0)
_CONNECT_TIMEOUT = 5.0


class EnqueueError(UsageError):
    """Nothing (or, when it says so, only part) was enqueued; the message says why."""


class ReleaseNotFound(UsageError):
    """No release with this id in the ledger: never created, or past its retention."""


def enqueue(
    source: str | Sequence[str],
    destinations: Sequence[str],
    *,
    tags: Sequence[str] = (),
    referrers: bool = True,
    referrer_types: Sequence[str] = (),
    env: Mapping[str, str] | None = None,
    broker_url: str | None = None,
    insecure_registries: Sequence[str] = (),
    ledger: Ledger | None = None,
    transport: httpx.AsyncBaseTransport | None = None,
) -> list[str]:
    """Enqueue one copy task per destination for each source; return the release ids in order.

    ``ledger`` and ``transport`` are seams for tests and for callers holding their own clients.
    """
    env = os.environ if env is None else env
    sources = [source] if isinstance(source, str) else list(source)
    if not sources:
        raise EnqueueError("no source image given")
    if not destinations:
        raise EnqueueError("no destinations: give DEST arguments, --to NAME, "
                           "FANOUT_DESTINATIONS or a default set in fanout.toml")
    plans = []
    for text in sources:
        ref = parse_source(text)
        try:
            plans.append((ref, parse_destinations(destinations, ref, tags)))
        except UsageError as exc:
            raise EnqueueError(str(exc)) from None
    pinned = asyncio.run(_resolve_all([ref for ref, _ in plans], env, insecure_registries,
                                      transport))
    settings = queue_settings(env, broker_url)
    if ledger is None:
        ledger = connect_ledger(settings)
    check_broker(settings.broker_url)
    options = {"enabled": referrers, "types": list(referrer_types)}
    ids = []
    for ref, (_, targets) in zip(pinned, plans, strict=True):
        ids.append(_enqueue_release(ledger, settings, ref, targets, options))
    return ids


def status(release_id: str, *, env: Mapping[str, str] | None = None,
           ledger: Ledger | None = None) -> Release:
    """The release as the ledger has it now; raises :class:`ReleaseNotFound`."""
    if ledger is None:
        ledger = connect_ledger(queue_settings(os.environ if env is None else env))
    release = ledger.get(release_id)
    if release is None:
        raise ReleaseNotFound(f"no release {release_id!r} in the ledger (unknown id, or older "
                              "than the retention period)")
    return release


def wait(
    release_id: str,
    *,
    timeout: float | None,
    poll: float = 0.5,
    env: Mapping[str, str] | None = None,
    ledger: Ledger | None = None,
    on_poll: Callable[[Release], None] | None = None,
    sleep: Callable[[float], None] = time.sleep,
) -> Release:
    """Poll until every destination has succeeded or failed for good, or ``timeout`` seconds
    pass; return the release either way (``release.done`` tells which)."""
    if ledger is None:
        ledger = connect_ledger(queue_settings(os.environ if env is None else env))
    deadline = None if timeout is None else time.monotonic() + timeout
    while True:
        release = status(release_id, ledger=ledger)
        if on_poll is not None:
            on_poll(release)
        if release.done:
            return release
        if deadline is not None:
            left = deadline - time.monotonic()
            if left <= 0:
                return release
            sleep(min(poll, left))
        else:
            sleep(poll)


def check(
    destinations: Sequence[str],
    *,
    env: Mapping[str, str] | None = None,
    insecure_registries: Sequence[str] = (),
    ca_bundle: str | None = None,
    transport: httpx.AsyncBaseTransport | None = None,
) -> list[DestinationCheck]:
    """Check each destination as ``fanout check`` does (``.ready``, ``.problems``), in order.

    Bad input raises (``InvalidReference``, ``UsageError``) before any registry is contacted.
    """
    env = os.environ if env is None else env
    targets = check_cmd.parse_targets(destinations)
    options = transport_options_from_env(env, insecure=list(insecure_registries),
                                         ca_bundle=ca_bundle)
    return asyncio.run(check_cmd.check_all(targets, options=options, env=env,
                                           transport=transport))


def exit_code(releases: Sequence[Release]) -> int:
    """0 every destination succeeded, 1 any failed for good, 3 some still running."""
    states = [d.state for r in releases for d in r.destinations.values()]
    if "failed" in states:
        return EXIT_FAILED
    if any(state != "succeeded" for state in states):
        return EXIT_TIMEOUT
    return EXIT_OK


# -- connections ------------------------------------------------------------------------------


def redact(url: str) -> str:
    """``url`` with its password masked, for messages."""
    return str(maybe_sanitize_url(url))


def connect_ledger(settings: WorkerSettings) -> Ledger:
    """A ledger on ``settings.ledger_url``; fails fast (and without the password) if down."""
    client = redis.Redis.from_url(settings.ledger_url, socket_connect_timeout=_CONNECT_TIMEOUT,
                                  socket_timeout=30.0)
    try:
        client.ping()
    except (redis.RedisError, OSError) as exc:
        client.close()
        raise EnqueueError(f"ledger {redact(settings.ledger_url)} is unreachable: "
                           f"{_scrub(str(exc), settings.ledger_url)}") from None
    return Ledger(client, retention=settings.retention)


def check_broker(url: str) -> None:
    """Connect once to the broker; raise :class:`EnqueueError` naming it (password masked)."""
    app = _celery_app()
    try:
        with app.connection_for_write(url, connect_timeout=_CONNECT_TIMEOUT) as connection:
            connection.ensure_connection(max_retries=1, interval_start=0, interval_step=0,
                                         timeout=_CONNECT_TIMEOUT)
    except Exception as exc:  # noqa: BLE001 - kombu raises per-transport types; all mean "down"
        raise EnqueueError(f"broker {redact(url)} is unreachable: "
                           f"{_scrub(str(exc), url)}") from None


def _celery_app() -> Any:
    # Imported on first use: the app reads the workers' environment when imported, which
    # ``fanout copy`` and ``fanout status`` have no need to get right.
    from workers.app import app

    return app


def _scrub(message: str, url: str) -> str:
    # Driver messages sometimes echo the URL they were given, password included.
    return message.replace(url, redact(url)) if url else message


def queue_settings(env: Mapping[str, str], broker_url: str | None = None) -> WorkerSettings:
    """Broker, ledger, retention and routing as the workers read them, ``broker_url`` winning."""
    if broker_url:
        env = {**env, "FANOUT_BROKER_URL": broker_url}
    return WorkerSettings.from_env(env)


# -- resolving --------------------------------------------------------------------------------


async def _resolve_all(
    sources: Sequence[Reference], env: Mapping[str, str], insecure: Sequence[str],
    transport: httpx.AsyncBaseTransport | None,
) -> list[Reference]:
    options = transport_options_from_env(env, insecure=list(insecure))
    async with Registries(credentials(env), options, transport=transport) as registries:
        copier = Copier(registries, CopyOptions(retry=_RESOLVE_RETRY))
        return list(await asyncio.gather(*(_resolve(copier, ref) for ref in sources)))


async def _resolve(copier: Copier, source: Reference) -> Reference:
    """Pin a tag to its digest; check that a digest exists. One request either way."""
    try:
        if not source.digest:
            return (await copier.resolve(source)).pinned()
        client = copier.registries.client(source.registry)
        digest = source.digest
        found = await retry_async(_RESOLVE_RETRY,
                                  lambda: manifest_head(client, source.path, digest),
                                  what=f"check {source}")
    except NotFound:
        raise EnqueueError(f"source {source}: no such image") from None
    except RegistryError as exc:
        raise EnqueueError(f"source {source}: {exc}") from exc
    if found is None:
        raise EnqueueError(f"source {source}: no such image (digest unknown to the registry)")
    return source.pinned()


# -- sending ----------------------------------------------------------------------------------


def _enqueue_release(
    ledger: Ledger, settings: WorkerSettings, source: Reference,
    targets: Sequence[tuple[Repository, tuple[str, ...]]], referrers: dict[str, Any],
) -> str:
    app = _celery_app()
    release_id = ledger.create_release(str(source), [(str(repo), tags) for repo, tags in targets])
    pending = [str(repo) for repo, _ in targets]
    try:
        with app.connection_for_write(settings.broker_url) as connection:
            for repo, tags in targets:
                destination = str(repo)
                app.send_task(
                    TASK_NAME,
                    kwargs={"release_id": release_id, "source": str(source),
                            "destination": destination, "tags": list(tags),
                            "referrers": referrers},
                    # Readable in Flower; unique because release ids are.
                    task_id=f"{release_id}:{destination}",
                    queue=queue_for(destination, by_registry=settings.route_by_registry),
                    connection=connection,
                )
                pending.remove(destination)
    except Exception as exc:  # noqa: BLE001 - any failure to publish leaves the same state
        reason = f"not enqueued: broker {redact(settings.broker_url)}: " \
                 f"{_scrub(str(exc), settings.broker_url)}"
        for destination in pending:
            ledger.mark_failed(release_id, destination, error=reason, error_type="EnqueueError")
        done = len(targets) - len(pending)
        raise EnqueueError(f"release {release_id}: {done} of {len(targets)} destinations "
                           f"enqueued; {reason}") from None
    return release_id
