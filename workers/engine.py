"""The synchronous door into the async copy engine, for a Celery task.

Every task of a worker process runs on one long-lived event loop (:mod:`workers.loop`) and one
pool of per-host clients, so the second task to a registry finds its connections open, its
tokens valid and its probe done: a no-op release costs its HEADs and nothing more. Credentials
are still read from the worker's environment and Docker config at every task, and each host's
looked up again at its first request of the task, so a changed credential (a fixed password,
an ECR token refreshed every twelve hours) is used by the next task without restarting the
worker; tokens are dropped only when the credential did change.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Awaitable, Callable, Mapping
from typing import Protocol, TypeVar

from registry.capabilities import CapabilityStore
from registry.copy import Copier
from registry.credentials import default_store
from registry.envconfig import (
    bandwidth_from_env,
    copy_options_from_env,
    transport_options_from_env,
)
from registry.errors import Timeout
from registry.holds import HoldStore
from registry.locations import BlobLocations
from registry.reference import parse_reference, parse_repository
from registry.session import Registries
from registry.tag_gate import TagGate
from registry.throttle import Throttle
from registry.tls import tls_context

from .access import AccessPolicy
from .bandwidth import RedisThrottle
from .holds import RedisHolds
from .job import CopyJob
from .locations import RedisLocations
from .loop import EngineLoop, Stopped
from .settings import WorkerSettings
from .spool import open_spool

T = TypeVar("T")
# A host's credential is looked up again by every task that uses it (as when each task built
# its own clients): an operator who fixed a password retries at once, and one who revoked
# one sees it refused at once.
CREDENTIAL_MAX_AGE = 0.0


class LeaseLost(Exception):
    """The copy's lock lease was lost; it stopped so that no second copy runs beside it."""


class Engine(Protocol):
    """What the task needs from the engine: copy one job, return its counters, raise on failure."""

    def copy(self, job: CopyJob, *, timeout: float | None,
             abort: threading.Event | None = None,
             tag_gate: TagGate | None = None) -> dict[str, int]: ...


class CopyEngine:
    """Runs ``Copier.copy_image`` for one job; raises ``registry.errors.RegistryError``.

    ``holds``: where a registry's rate-limit hold is kept; by default in the ledger's Redis,
    so that a 429 one worker hears holds that registry for every worker. ``locations``: the
    blob-location index, likewise in the ledger's Redis by default. ``throttle``: the
    bandwidth caps (``FANOUT_BANDWIDTH``), by default kept in the ledger's Redis so that the
    whole cluster shares each cap; None when nothing is capped.
    """

    def __init__(self, env: Mapping[str, str], *, holds: HoldStore | None = None,
                 locations: BlobLocations | None = None,
                 throttle: Throttle | None = None) -> None:
        self._env = dict(env)
        # Read once, at worker start: a bad setting fails the worker, not every task.
        self._transport = transport_options_from_env(self._env)
        self._access = AccessPolicy.from_env(self._env)
        self._retry = copy_options_from_env(self._env).retry
        settings = WorkerSettings.from_env(self._env)
        # One context per worker process, not per task (the runner is built after the prefork
        # fork): the trust store it reads at its first handshake (tens of ms) is read once.
        self._tls = tls_context(self._transport)
        # One per worker process, like the TLS context; its client connects on first use.
        self._holds = holds if holds is not None else RedisHolds.from_settings(settings)
        # Where each blob was seen, per registry: every worker mounts from where any landed it.
        self._locations = (locations if locations is not None
                           else RedisLocations.from_settings(settings))
        caps = bandwidth_from_env(self._env)
        self._throttle = throttle if throttle is not None else (
            RedisThrottle.from_settings(settings, caps) if caps else None)
        # What each registry host accepts (chunk bounds, mounts, the referrers API), learnt by
        # one task and known to every later task of this process.
        self.capabilities = CapabilityStore()
        # Shared with the host's other worker processes: destinations read a source blob once.
        self._spool = open_spool(settings)
        self._loop = EngineLoop()
        self._registries: Registries | None = None

    def copy(self, job: CopyJob, *, timeout: float | None,
             abort: threading.Event | None = None,
             tag_gate: TagGate | None = None) -> dict[str, int]:
        """Copy ``job``; ``abort`` set from another thread (a lost lease) stops it at once
        with :class:`LeaseLost`; a job outside the worker's allowed sources and destinations
        fails with :class:`~workers.access.PolicyDenied` before any request is sent.
        ``tag_gate`` orders the tag writes against other releases' (``workers/tag_order``)."""
        self._access.check(job)
        try:
            return self._loop.run(self._copy(job, timeout, tag_gate), abort)
        except Stopped:
            raise LeaseLost(f"copy to {job.destination} stopped: its lease was lost") from None

    def run(self, work: Callable[[Registries], Awaitable[T]],
            abort: threading.Event | None = None) -> T:
        """``work(registries)`` on this process's loop and pool: a scheduled sync or verify
        asks registries with the copies' credentials, rate-limit holds and learnt
        capabilities. ``abort`` set from another thread (a lost lease) raises
        :class:`~workers.loop.Stopped`."""
        async def pooled() -> T:
            return await work(self._pool())

        return self._loop.run(pooled(), abort)

    def _pool(self) -> Registries:
        """The process's clients, with this task's credentials (read again at every task)."""
        credentials = default_store(self._env)
        if self._registries is None:
            self._registries = Registries(
                credentials, self._transport, tls=self._tls, holds=self._holds,
                capabilities=self.capabilities, locations=self._locations,
                retry=self._retry, spool=self._spool, throttle=self._throttle)
        else:
            self._registries.renew_credentials(credentials, older_than=CREDENTIAL_MAX_AGE)
        return self._registries

    async def _copy(self, job: CopyJob, timeout: float | None,
                    tag_gate: TagGate | None) -> dict[str, int]:
        options = copy_options_from_env(self._env, referrers=job.referrers,
                                        referrer_types=job.referrer_types)
        source = parse_reference(job.source)
        destination = parse_repository(job.destination)
        copier = Copier(self._pool(), options)
        deadline = asyncio.timeout(timeout)
        try:
            async with deadline:
                stats = await copier.copy_image(source, destination, job.tags,
                                                tag_gate=tag_gate)
        except TimeoutError:
            if not deadline.expired():
                raise
            # Our own limit, below Celery's: the copy is cancelled cleanly, its uploads
            # closed, and the task tier decides whether to try again.
            raise Timeout(f"copy did not finish within {timeout} s "
                          "(FANOUT_TASK_SOFT_TIME_LIMIT)") from None
        return stats.to_dict()
