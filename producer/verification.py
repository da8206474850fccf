"""``fanout verify`` for the CLI, the service and Python callers: the verify core
(``workers/verification.py``, which the scheduled verify runs too), given a ledger, the queue's
settings and registry clients built from the caller's flags and environment."""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Callable, Collection, Mapping, Sequence
from typing import TYPE_CHECKING

from registry.envconfig import transport_options_from_env
from registry.retry import RetryPolicy
from registry.session import Registries
from workers import verification
from workers.verification import Checks, RunChecks
from workers.verification import check as check  # re-exported for callers of the old home
from workers.verify_heads import DEFAULT_CONCURRENCY, VERIFY_RETRY

from .broker import connect_ledger, queue_settings
from .inputs import credentials
from .pool import RegistryPool
from .replay_plan import parse_duration

if TYPE_CHECKING:
    import httpx

    from workers.ledger import Ledger
    from workers.verdicts import Report, Verdict


def verify(
    release_ids: Sequence[str] = (),
    *,
    since: float | str | None = None,
    only: Collection[str] | None = None,
    source_repo: str | None = None,
    repair: bool = False,
    env: Mapping[str, str] | None = None,
    broker_url: str | None = None,
    ledger: Ledger | None = None,
    insecure_registries: Sequence[str] = (),
    ca_bundle: str | None = None,
    transport: httpx.AsyncBaseTransport | None = None,
    concurrency: int = DEFAULT_CONCURRENCY,
    retry: RetryPolicy = VERIFY_RETRY,
    clock: Callable[[], float] = time.time,
    pool: RegistryPool | None = None,
) -> Report:
    """Verify the named releases (or those of the last ``since``: seconds, or ``"7d"``);
    ``only``: just these destination repositories; ``source_repo``: just releases from it.

    Bad input (an unknown release, a bad duration, ``repair`` of a named release still under
    way, a broker that is down when repairing) raises a ``UsageError`` before any registry
    is contacted. ``pool``: a long-lived process's registry clients (``fanout serve``'s),
    instead of a pool of the run's own."""
    seconds = parse_duration(since) if isinstance(since, str) else since
    env = os.environ if env is None else env
    settings = queue_settings(env, broker_url)
    if ledger is None:
        ledger = connect_ledger(settings)
    run = _on(pool) if pool is not None else _own_pool(env, insecure_registries, ca_bundle,
                                                       transport)
    return verification.verify(ledger, settings, run, release_ids, since=seconds, only=only,
                               source_repo=source_repo, repair=repair,
                               concurrency=concurrency, retry=retry, clock=clock)


def _on(pool: RegistryPool) -> RunChecks:
    def run(checks: Checks, retry: RetryPolicy) -> list[Verdict]:
        return pool.run(checks)

    return run


def _own_pool(env: Mapping[str, str], insecure: Sequence[str], ca_bundle: str | None,
              transport: httpx.AsyncBaseTransport | None) -> RunChecks:
    """A pool for this run only, closed when the checks are done."""
    options = transport_options_from_env(env, insecure=list(insecure), ca_bundle=ca_bundle)

    def run(checks: Checks, retry: RetryPolicy) -> list[Verdict]:
        async def pooled() -> list[Verdict]:
            async with Registries(credentials(env), options, transport=transport,
                                  retry=retry) as registries:
                return await checks(registries)

        return asyncio.run(pooled())

    return run
