"""The synchronous door into the async copy engine, for a Celery task.

Each call runs its own event loop and its own connection pool: a prefork worker child may run
any number of tasks one after another, and nothing async outlives a task. Credentials are read
from the worker's environment and Docker config at every call, so a refreshed credential (ECR
tokens last twelve hours) is picked up without restarting the worker.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Mapping
from typing import Protocol

from registry.capabilities import CapabilityStore
from registry.client import tls_context
from registry.copy import Copier
from registry.credentials import default_store
from registry.envconfig import copy_options_from_env, transport_options_from_env
from registry.errors import Timeout
from registry.holds import HoldStore
from registry.reference import parse_reference, parse_repository
from registry.session import Registries

from .holds import RedisHolds
from .job import CopyJob
from .settings import WorkerSettings

# How often a copy looks at its abort flag: the lease keeps this much margin many times over.
_ABORT_POLL = 0.1


class LeaseLost(Exception):
    """The copy's lock lease was lost; it stopped so that no second copy runs beside it."""


class Engine(Protocol):
    """What the task needs from the engine: copy one job, return its counters, raise on failure."""

    def copy(self, job: CopyJob, *, timeout: float | None,
             abort: threading.Event | None = None) -> dict[str, int]: ...


class CopyEngine:
    """Runs ``Copier.copy_image`` for one job; raises ``registry.errors.RegistryError``.

    ``holds``: where a registry's rate-limit hold is kept; by default in the ledger's Redis,
    so that a 429 one worker hears holds that registry for every worker.
    """

    def __init__(self, env: Mapping[str, str], *, holds: HoldStore | None = None) -> None:
        self._env = dict(env)
        # Read once, at worker start: a bad setting fails the worker, not every task.
        self._transport = transport_options_from_env(self._env)
        copy_options_from_env(self._env)
        # Loading the trust store costs tens of milliseconds: once per worker process, not per
        # task (the runner is built after the prefork fork).
        self._tls = tls_context(self._transport)
        # One per worker process, like the TLS context; its client connects on first use.
        self._holds = holds if holds is not None else RedisHolds.from_settings(
            WorkerSettings.from_env(self._env))
        # What each registry host accepts (chunk bounds, mounts, the referrers API), learnt by
        # one task and known to every later task of this process.
        self.capabilities = CapabilityStore()

    def copy(self, job: CopyJob, *, timeout: float | None,
             abort: threading.Event | None = None) -> dict[str, int]:
        """Copy ``job``; ``abort`` set from another thread (a lost lease) stops it at once
        with :class:`LeaseLost`."""
        return asyncio.run(self._guarded(job, timeout, abort))

    async def _guarded(self, job: CopyJob, timeout: float | None,
                       abort: threading.Event | None) -> dict[str, int]:
        if abort is None:
            return await self._copy(job, timeout)
        copying = asyncio.ensure_future(self._copy(job, timeout))
        while not copying.done():
            if abort.is_set():
                copying.cancel()
                await asyncio.gather(copying, return_exceptions=True)
                raise LeaseLost(f"copy to {job.destination} stopped: its lease was lost")
            await asyncio.wait({copying}, timeout=_ABORT_POLL)
        return copying.result()

    async def _copy(self, job: CopyJob, timeout: float | None) -> dict[str, int]:
        options = copy_options_from_env(self._env, referrers=job.referrers,
                                        referrer_types=job.referrer_types)
        source = parse_reference(job.source)
        destination = parse_repository(job.destination)
        async with Registries(default_store(self._env), self._transport, tls=self._tls,
                              holds=self._holds, capabilities=self.capabilities,
                              retry=options.retry) as registries:
            copier = Copier(registries, options)
            deadline = asyncio.timeout(timeout)
            try:
                async with deadline:
                    stats = await copier.copy_image(source, destination, job.tags)
            except TimeoutError:
                if not deadline.expired():
                    raise
                # Our own limit, below Celery's: the copy is cancelled cleanly, its uploads
                # closed, and the task tier decides whether to try again.
                raise Timeout(f"copy did not finish within {timeout} s "
                              "(FANOUT_TASK_SOFT_TIME_LIMIT)") from None
        return stats.to_dict()
