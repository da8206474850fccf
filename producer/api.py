"""The Python API behind ``fanout enqueue``, ``status``, ``retry``, ``replay``, ``verify`` and
``check``: for CI tooling in Python.

::

    from producer.api import enqueue, wait, exit_code
    [release] = enqueue("ghcr.io/acme/app:1.2.3", ["quay.io/acme/app", "harbor.local/acme/app"])
    final = wait(release, timeout=600)
    sys.exit(exit_code([final]))

Everything is checked before anything is enqueued: the references, the source (a tag is pinned to
its digest here, once; a digest must exist), the destinations, the broker and the ledger.
``retry(release_id)`` sends a release's failed destinations again; ``replay("7d", [mirror])``
copies every digest released in the last seven days to ``mirror``. ``verify(release_ids)``
(or ``verify(since="7d")``) checks that what landed is still there, ``repair=True`` sends what
drifted again (``producer/verification.py``). ``check(destinations)`` is the preflight of
destinations, as ``fanout check`` runs it.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import httpx
import redis

from registry.copy import Copier
from registry.envconfig import transport_options_from_env
from registry.errors import NotFound, RegistryError
from registry.fetch import manifest_head
from registry.options import CopyOptions
from registry.preflight import DestinationCheck
from registry.reference import Reference, Repository
from registry.retry import RetryPolicy, retry_async
from registry.session import Registries
from workers import release_document, releasing
from workers.ledger import Ledger, Release
from workers.notify_settings import NotifySettings
from workers.publishing import NotPublished
from workers.settings import WorkerSettings

from . import check_cmd, replay_plan, retry_plan, waiting
from .broker import (
    TASK_NAME,
    EnqueueError,
    QueueUnreachable,
    SourceUnavailable,
    check_broker,
    connect_ledger,
    queue_settings,
    redact,
)
from .common import ReleaseNotFound, UsageError
from .inputs import credentials, parse_source, parse_targets
from .pool import RegistryPool
from .resend import resend
from .verification import verify

__all__ = [
    "EXIT_FAILED", "EXIT_OK", "EXIT_TIMEOUT", "TASK_NAME", "EnqueueError", "QueueUnreachable",
    "ReleaseNotFound", "SourceUnavailable",
    "check", "check_broker", "connect_ledger", "enqueue", "exit_code", "queue_settings",
    "redact", "replay", "retry", "status", "verify", "wait",
]

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_TIMEOUT = 3

# Resolving the source happens while a CI job waits: a blip is retried, an outage is reported.
_RESOLVE_RETRY = RetryPolicy(attempts=3, initial=0.5, maximum=2.0, max_elapsed=10.0, max_hold=5.0)


def enqueue(
    source: str | Sequence[str],
    destinations: Sequence[str],
    *,
    tags: Sequence[str] = (),
    optional: Sequence[str] = (),
    referrers: bool = True,
    referrer_types: Sequence[str] = (),
    env: Mapping[str, str] | None = None,
    broker_url: str | None = None,
    insecure_registries: Sequence[str] = (),
    ledger: Ledger | None = None,
    transport: httpx.AsyncBaseTransport | None = None,
    pool: RegistryPool | None = None,
    trigger: str = "enqueue",
) -> list[str]:
    """Enqueue one copy task per destination for each source; return the release ids in order.

    ``optional`` destinations are copied too, but their failure does not fail the release (one
    already among ``destinations`` is only marked optional). ``ledger`` and ``transport`` are
    seams for tests and for callers holding their own clients. ``pool``: a long-lived process's
    registry clients (``fanout serve``'s) to check the sources with, instead of a pool of their
    own; its own settings (``insecure``, ``transport``) apply then. ``trigger``: what the
    releases record as having made them (``api``, ``hook:harbor``, ...).
    """
    sources = [source] if isinstance(source, str) else list(source)
    return _enqueue_each(
        [(text, tags) for text in sources], destinations, optional=optional,
        referrers={"enabled": referrers, "types": list(referrer_types)},
        env=os.environ if env is None else env, broker_url=broker_url,
        insecure_registries=insecure_registries, ledger=ledger, transport=transport, pool=pool,
        trigger=trigger)


def retry(
    release_id: str,
    destinations: Sequence[str] = (),
    *,
    env: Mapping[str, str] | None = None,
    broker_url: str | None = None,
    ledger: Ledger | None = None,
) -> list[str]:
    """Send again, as new attempts of the same release, its destinations that failed for good
    (or the named ones, each finished); return those sent (none: nothing had failed).

    Raises :class:`ReleaseNotFound`, or ``retry_plan.RetryRefused`` for a destination not in
    the release or still under way; the attempts so far stay in each destination's history.
    """
    settings = queue_settings(os.environ if env is None else env, broker_url)
    if ledger is None:
        ledger = connect_ledger(settings)
    release = status(release_id, ledger=ledger)
    return resend(ledger, settings, release, retry_plan.pick(release, destinations))


def replay(
    since: float | str,
    destinations: Sequence[str],
    *,
    optional: Sequence[str] = (),
    source_repo: str | None = None,
    env: Mapping[str, str] | None = None,
    broker_url: str | None = None,
    insecure_registries: Sequence[str] = (),
    ledger: Ledger | None = None,
    transport: httpx.AsyncBaseTransport | None = None,
    clock: Callable[[], float] = time.time,
) -> list[str]:
    """Copy to ``destinations`` every source digest of the releases of the last ``since``
    seconds (or a duration, ``"7d"``) that reached a destination: one release per digest, with
    every tag its releases carried that no newer one of them carried too. Returns the new
    release ids (none: nothing to replay).

    ``source_repo`` keeps only the sources of that repository.
    """
    seconds = replay_plan.parse_duration(since) if isinstance(since, str) else float(since)
    env = os.environ if env is None else env
    if not destinations and not optional:
        raise EnqueueError("no destinations to replay to: give DEST arguments or --to NAME")
    if ledger is None:
        ledger = connect_ledger(queue_settings(env, broker_url))
    plans = replay_plan.plan(ledger, clock() - seconds, source_repo=source_repo)
    if not plans:
        return []
    return _enqueue_each(
        [(plan.source, plan.tags) for plan in plans], destinations, optional=optional,
        referrers={"enabled": True, "types": []}, env=env, broker_url=broker_url,
        insecure_registries=insecure_registries, ledger=ledger, transport=transport,
        trigger="replay")


def status(release_id: str, *, env: Mapping[str, str] | None = None,
           ledger: Ledger | None = None) -> Release:
    """The release as the ledger has it now; raises :class:`ReleaseNotFound`."""
    if ledger is None:
        ledger = connect_ledger(queue_settings(os.environ if env is None else env))
    release = ledger.get(release_id)
    if release is None:
        raise ReleaseNotFound.of(release_id)
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
    reader = ledger

    def gave_up(exc: Exception, seconds: float) -> Exception:
        return EnqueueError(f"the ledger is unreachable (for {seconds:.0f} s) while waiting "
                            f"for release {release_id}: {exc}")

    return waiting.wait_for(
        lambda: status(release_id, ledger=reader), timeout=timeout, poll=poll,
        is_blip=lambda exc: isinstance(exc, redis.ConnectionError | redis.TimeoutError),
        gave_up=gave_up, on_poll=on_poll, sleep=sleep)


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
    """0 every required destination succeeded, 1 any failed for good, 3 some still running."""
    return release_document.exit_code(releases)


# -- resolving --------------------------------------------------------------------------------


async def _resolve_all(
    sources: Sequence[Reference], env: Mapping[str, str], insecure: Sequence[str],
    transport: httpx.AsyncBaseTransport | None,
) -> list[Reference]:
    # One request per source after the probe: connections opened ahead of need (for a copy's
    # burst of requests after its first token) would be spare, three per host by default.
    options = dataclasses.replace(transport_options_from_env(env, insecure=list(insecure)),
                                  preconnect=0)
    async with Registries(credentials(env), options, transport=transport) as registries:
        return await _resolve_with(registries, sources)


async def _resolve_with(registries: Registries, sources: Sequence[Reference]) -> list[Reference]:
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
        raise SourceUnavailable(f"source {source}: {exc}") from exc
    if found is None:
        raise EnqueueError(f"source {source}: no such image (digest unknown to the registry)")
    return source.pinned()


# -- sending ----------------------------------------------------------------------------------


def _enqueue_each(
    sources: Sequence[tuple[str, Sequence[str]]], destinations: Sequence[str], *,
    optional: Sequence[str], referrers: dict[str, Any], env: Mapping[str, str],
    broker_url: str | None, insecure_registries: Sequence[str], ledger: Ledger | None,
    transport: httpx.AsyncBaseTransport | None, pool: RegistryPool | None = None,
    trigger: str = "enqueue",
) -> list[str]:
    """One release per (source, tags), everything checked before anything is enqueued."""
    if not sources:
        raise EnqueueError("no source image given")
    if not destinations and not optional:
        raise EnqueueError("no destinations: give DEST arguments, --to NAME, "
                           "FANOUT_DESTINATIONS or a default set in fanout.toml")
    # The workers' FANOUT_NOTIFY_* (ConfigError, exit 2): a CI job hears of a bad one now.
    NotifySettings.from_env(env)
    plans = []
    for text, tags in sources:
        ref = parse_source(text)
        try:
            plans.append((ref, parse_targets(destinations, optional, ref, tags)))
        except UsageError as exc:
            raise EnqueueError(str(exc)) from None
    refs = [ref for ref, _ in plans]
    if pool is not None:
        pinned = pool.run(lambda registries: _resolve_with(registries, refs))
    else:
        pinned = asyncio.run(_resolve_all(refs, env, insecure_registries, transport))
    settings = queue_settings(env, broker_url)
    if ledger is None:
        ledger = connect_ledger(settings)
    check_broker(settings.broker_url, settings)
    ids = []
    for ref, (_, (targets, optional_repos)) in zip(pinned, plans, strict=True):
        ids.append(_enqueue_release(ledger, settings, ref, targets, referrers, optional_repos,
                                    trigger))
    return ids


def _enqueue_release(
    ledger: Ledger, settings: WorkerSettings, source: Reference,
    targets: Sequence[tuple[Repository, tuple[str, ...]]], referrers: dict[str, Any],
    optional: frozenset[str] = frozenset(), trigger: str = "enqueue",
) -> str:
    try:
        return releasing.create_and_send(
            ledger, settings, str(source), [(str(repo), tags) for repo, tags in targets],
            referrers=referrers, optional=optional, trigger=trigger)
    except NotPublished as exc:
        raise QueueUnreachable(str(exc)) from None
