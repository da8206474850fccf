"""One run of a mirror: list the source, filter, HEAD, compare with each destination, enqueue
only the differences, prune (guarded), and record the run.

The steps, and what each costs:

1. **List** the source's tags, every page (``registry.tags.list_tags``). A listing that fails
   fails the run: nothing is planned, enqueued or pruned. It never counts as "no tags".
2. **Filter** them (``workers.mirror_filter.select``).
3. **Resolve** each kept tag's digest with a HEAD, a bounded number in flight. A HEAD does not
   count against Docker Hub's pull limit; a 429 holds the host for every worker (the shared
   hold) and is waited out.
4. **Compare** with each destination: one listing (which prune needs anyway, and which says
   which kept tags are absent without asking each), then a HEAD of each kept tag it has.
   A destination that cannot be compared is left alone this run, and says why.
5. **Enqueue** a release per source digest, carrying the tags that need it, to the
   destinations that need it (``MirrorPlan.releases``), through the same ledger, retries, tag
   order and notifications as any release; each records ``sync:NAME`` as its trigger. A run
   that finds everything in sync enqueues nothing: its cost is listings and HEADs, no GET of a
   manifest or a blob.
6. **Prune** what the plan says (``workers.mirror_plan``: only the mirror's own tags, capped),
   by ``registry.untag``; each deletion recorded with the mirror's name.
7. **Record** the run (``workers.mirror_runs``) and tell the overdue alert.

A run holds the mirror's lease (``fanout:mirror-lock:NAME``) from listing to recording, so
the same mirror never runs twice at once: a second run, from a second beat or a command
beside the scheduler, is refused with :class:`MirrorBusy` and costs nothing. A dry run
writes nothing anywhere (no lease, no record, no release) and sends only GETs of tag lists
and HEADs.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Coroutine, Mapping, Sequence
from typing import Any, TypeVar

import redis

from registry.credentials import default_store
from registry.envconfig import transport_options_from_env
from registry.errors import NotFound, RegistryError
from registry.reference import parse_repository
from registry.session import Registries
from registry.tags import list_tags, resolve_tags
from registry.untag import untag

from . import mirror_filter, mirror_pending, mirror_plan
from .heartbeat import Heartbeat
from .holds import RedisHolds
from .ledger import Ledger
from .locks import Lease
from .mirror_alerts import MirrorAlerts
from .mirror_model import DestinationPlan, Mirror, MirrorBusy, MirrorPlan, MirrorRun
from .mirror_runs import MirrorRuns
from .notify_settings import NotifySettings
from .prune_log import PruneLog
from .publishing import NotPublished
from .releasing import create_and_send
from .settings import WorkerSettings

log = logging.getLogger("fanout.mirror")

T = TypeVar("T")
# Runs a coroutine that needs registry clients: fanout serve's long-lived pool passes its own.
RunWithRegistries = Callable[[Callable[[Registries], Coroutine[Any, Any, Any]]], Any]

LOCK_PREFIX = "fanout:mirror-lock:"
# Short, and renewed while the run lives: a run whose process dies frees its mirror in a minute.
LOCK_TTL = 60.0


def sync_mirror(
    mirror: Mirror, *, ledger: Ledger, settings: WorkerSettings, env: Mapping[str, str],
    trigger: str, dry_run: bool = False, prune_over_limit: bool = False,
    run: RunWithRegistries | None = None, insecure: Sequence[str] = (),
) -> tuple[MirrorPlan, MirrorRun]:
    """Run ``mirror`` once; returns its plan and the run's record (also kept in Redis).

    Raises :class:`MirrorBusy` when another run of it holds its lease (nothing done, nothing
    recorded). A source that cannot be listed is a failed run (``MirrorRun.ok`` False,
    ``error`` set), recorded, not an exception. ``run``: how to run a coroutine with registry
    clients (by default a pool of this call's own, sharing the workers' rate-limit holds);
    ``insecure``: registries spoken to over plain HTTP (that pool's).
    """
    runner = run or _own_pool(env, settings, insecure)
    if dry_run:
        return _run(mirror, ledger, settings, env, runner, trigger, dry_run=True,
                    prune_over_limit=prune_over_limit)
    lease = Lease(ledger.client, LOCK_PREFIX + mirror.name, LOCK_TTL, owner=trigger)
    if not lease.acquire():
        raise MirrorBusy(f"mirror {mirror.name} is being synced by another run")
    try:
        # Renewed while the run lives. A run that loses it carries on rather than stop half
        # done: a second run beside it costs duplicate (idempotent, ordered) releases at worst.
        with Heartbeat(lease, None, "", f"mirror {mirror.name}", interval=LOCK_TTL / 3):
            return _run(mirror, ledger, settings, env, runner, trigger, dry_run=False,
                        prune_over_limit=prune_over_limit)
    finally:
        try:
            lease.release()
        except (redis.RedisError, OSError) as exc:
            log.warning("mirror %s: could not release its lease (it expires in %.0f s): %s",
                        mirror.name, LOCK_TTL, type(exc).__name__)


def _run(mirror: Mirror, ledger: Ledger, settings: WorkerSettings, env: Mapping[str, str],
         runner: RunWithRegistries, trigger: str, *, dry_run: bool,
         prune_over_limit: bool) -> tuple[MirrorPlan, MirrorRun]:
    started = time.time()
    pending = mirror_pending.in_flight(ledger, mirror.name) if not dry_run else {}
    try:
        plan: MirrorPlan = runner(lambda registries: plan_mirror(
            mirror, registries, prune_over_limit=prune_over_limit, pending=pending))
    except RegistryError as exc:
        error = f"source {mirror.source} could not be listed: {exc}"
        failed = MirrorRun(mirror.name, trigger, started, time.time(), ok=False, error=error,
                           dry_run=dry_run, listed=False)
        empty = MirrorPlan(mirror.name, mirror.source, {}, ())
        if not dry_run:
            _record(ledger, mirror, failed, env)
        return empty, failed
    if dry_run:
        return plan, MirrorRun(mirror.name, trigger, started, time.time(), ok=True,
                               counts=plan.counts(), dry_run=True)
    releases: list[str] = []
    errors: list[str] = []
    for planned in plan.releases():
        source = f"{mirror.source}@{planned.digest}"
        optional = [where for where, _ in planned.targets if where in mirror.optional]
        try:
            releases.append(create_and_send(
                ledger, settings, source, list(planned.targets), optional=optional,
                trigger=f"sync:{mirror.name}"))
        except NotPublished as exc:
            errors.append(str(exc))  # the release is in the ledger, its tasks failed there
    mirror_pending.add(ledger, mirror.name, releases)
    pruned = _prune(mirror, plan, ledger, runner, errors)
    compared = [d.error for d in plan.destinations if d.error]
    counts = {**plan.counts(), "pruned": sum(len(tags) for tags in pruned.values()),
              "releases": len(releases)}
    record = MirrorRun(mirror.name, trigger, started, time.time(), ok=not errors and not compared,
                       counts=counts, releases=releases, pruned=pruned,
                       error="; ".join([*compared, *errors]) or None)
    _record(ledger, mirror, record, env)
    return plan, record


# -- planning (registry requests: GETs of tag lists and HEADs only) --------------------------


async def plan_mirror(mirror: Mirror, registries: Registries, *,
                      prune_over_limit: bool = False,
                      pending: mirror_pending.Pending | None = None) -> MirrorPlan:
    """List, filter, resolve and compare; raises ``RegistryError`` when the source cannot be
    listed or its kept tags resolved. ``pending``: what unfinished releases of earlier runs are
    sending (``workers.mirror_pending``), not sent again."""
    pending = pending or {}
    source = parse_repository(mirror.source)
    client = registries.client(source.registry)
    try:
        tags = await list_tags(client, source.path)
    except NotFound as exc:
        raise NotFound(f"{mirror.source} does not exist: {exc}") from None
    wanted = mirror_filter.select(mirror, tags)
    found = await resolve_tags(client, source.path, wanted)
    # A tag deleted between the listing and its HEAD is simply not there any more.
    kept = {tag: digest for tag, digest in found.items() if digest is not None}
    states = await asyncio.gather(*(_compare(registries, where, kept, pending.get(where, {}))
                                    for where in mirror.destinations))
    return mirror_plan.plan(mirror, kept, dict(zip(mirror.destinations, states, strict=True)),
                            prune_over_limit=prune_over_limit)


async def _compare(registries: Registries, destination: str, kept: Mapping[str, str],
                   pending: Mapping[str, str]) -> mirror_plan.DestinationState:
    repository = parse_repository(destination)
    client = registries.client(repository.registry)
    try:
        try:
            present = await list_tags(client, repository.path)
        except NotFound:
            present = []  # a repository not created yet: every tag is to add
        there = set(present)
        digests: dict[str, str | None] = {tag: None for tag in kept if tag not in there}
        digests.update(await resolve_tags(client, repository.path,
                                          [tag for tag in kept if tag in there]))
    except RegistryError as exc:
        return mirror_plan.DestinationState(digests={}, tags=None, error=str(exc))
    return mirror_plan.DestinationState(digests=digests, tags=present, pending=pending)


# -- pruning -----------------------------------------------------------------------------------


def _prune(mirror: Mirror, plan: MirrorPlan, ledger: Ledger, runner: RunWithRegistries,
           errors: list[str]) -> dict[str, list[str]]:
    """Delete what the plan prunes; what was deleted, per destination (errors appended)."""
    todo = [d for d in plan.destinations if d.prune]
    if not todo:
        return {}

    async def every(registries: Registries) -> list[tuple[str, list[str], list[str]]]:
        return list(await asyncio.gather(*(_prune_one(registries, d) for d in todo)))

    done: dict[str, list[str]] = {}
    prune_log = PruneLog(ledger.client)
    for destination, deleted, failures in runner(every):
        if deleted:
            done[destination] = deleted
            prune_log.record(mirror.name, destination, deleted)
        errors.extend(failures)
    return done


async def _prune_one(registries: Registries,
                     plan: DestinationPlan) -> tuple[str, list[str], list[str]]:
    repository = parse_repository(plan.destination)
    client = registries.client(repository.registry)
    deleted: list[str] = []
    failures: list[str] = []
    for tag in plan.prune:
        try:
            # No ``known`` map: a registry that must delete by digest is listed afresh by
            # untag first, so no other tag naming that digest goes with it.
            await untag(client, repository.path, tag)
        except RegistryError as exc:
            failures.append(f"prune {plan.destination}:{tag}: {exc}")
            continue
        deleted.append(tag)
    return plan.destination, deleted, failures


# -- the rest ----------------------------------------------------------------------------------


def _record(ledger: Ledger, mirror: Mirror, run: MirrorRun, env: Mapping[str, str]) -> None:
    runs = MirrorRuns(ledger.client)
    runs.record(run)
    alerts = NotifySettings.from_env(env)
    if alerts.enabled:
        # The notify task's module loads the Celery app: only where alerts are on.
        from .notify import send

        MirrorAlerts(runs, alerts, send).after_run(mirror, run)
    log.info("mirror %s: %s %s", mirror.name, "ok" if run.ok else "failed",
             run.error or dict(run.counts))


def _own_pool(env: Mapping[str, str], settings: WorkerSettings,
              insecure: Sequence[str]) -> RunWithRegistries:
    """A pool for one run, on its own event loop, sharing the workers' rate-limit holds."""

    def run(work: Callable[[Registries], Coroutine[Any, Any, T]]) -> T:
        async def inner() -> T:
            registries = Registries(default_store(env),
                                    transport_options_from_env(env, insecure=list(insecure)),
                                    holds=RedisHolds.from_settings(settings))
            async with registries:
                return await work(registries)

        return asyncio.run(inner())

    return run
