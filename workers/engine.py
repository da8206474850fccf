"""The synchronous door into the async copy engine, for a Celery task.

Each call runs its own event loop and its own connection pool: a prefork worker child may run
any number of tasks one after another, and nothing async outlives a task. Credentials are read
from the worker's environment and Docker config at every call, so a refreshed credential (ECR
tokens last twelve hours) is picked up without restarting the worker.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Protocol

from registry.client import tls_context
from registry.copy import Copier
from registry.credentials import default_store
from registry.envconfig import copy_options_from_env, transport_options_from_env
from registry.errors import Timeout
from registry.reference import parse_reference, parse_repository
from registry.session import Registries

from .job import CopyJob


class Engine(Protocol):
    """What the task needs from the engine: copy one job, return its counters, raise on failure."""

    def copy(self, job: CopyJob, *, timeout: float | None) -> dict[str, int]: ...


class CopyEngine:
    """Runs ``Copier.copy_image`` for one job; raises ``registry.errors.RegistryError``."""

    def __init__(self, env: Mapping[str, str]) -> None:
        self._env = dict(env)
        # Read once, at worker start: a bad setting fails the worker, not every task.
        self._transport = transport_options_from_env(self._env)
        copy_options_from_env(self._env)
        # Loading the trust store costs tens of milliseconds: once per worker process, not per
        # task (the runner is built after the prefork fork).
        self._tls = tls_context(self._transport)

    def copy(self, job: CopyJob, *, timeout: float | None) -> dict[str, int]:
        return asyncio.run(self._copy(job, timeout))

    async def _copy(self, job: CopyJob, timeout: float | None) -> dict[str, int]:
        options = copy_options_from_env(self._env, referrers=job.referrers,
                                        referrer_types=job.referrer_types)
        source = parse_reference(job.source)
        destination = parse_repository(job.destination)
        async with Registries(default_store(self._env), self._transport,
                              tls=self._tls) as registries:
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
