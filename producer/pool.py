"""One pool of registry clients for a process that serves many requests (``fanout serve``).

Pinning a source under its own ``asyncio.run`` built a new pool each time, so every request
paid a TLS context, a probe and a token again. Here, as in a worker (``workers/engine.py``),
one :class:`~registry.session.Registries` lives on one long-lived event loop
(:class:`~workers.loop.EngineLoop`) until :meth:`RegistryPool.close`: the second request to a
registry finds its connections open, its token valid and its probe done. Credentials are
still read at every request, and each host's looked up again at its first request of it, so a
changed credential is used at once; tokens are dropped only when the credential did change.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Coroutine, Mapping, Sequence
from typing import Any, TypeVar

import httpx

from registry.credentials import CredentialStore, default_store
from registry.envconfig import transport_options_from_env
from registry.options import TransportOptions
from registry.session import Registries
from workers.loop import EngineLoop

T = TypeVar("T")
# As for a worker's tasks: each request sees a host's credential as it is now (a fixed
# password, a refreshed ECR token), at one lookup per host per request.
CREDENTIAL_MAX_AGE = 0.0


class RegistryPool:
    """Runs coroutines on one long-lived pool of registry clients; safe from many threads."""

    def __init__(self, env: Mapping[str, str], *, insecure: Sequence[str] = (),
                 transport: httpx.AsyncBaseTransport | None = None) -> None:
        """``env``: where credentials and transport settings are read (the server's own);
        ``transport``: a test's seam."""
        self._env = dict(env)
        self._insecure = list(insecure)
        self._transport = transport
        self._loop = EngineLoop()
        self._registries: Registries | None = None
        self._closed = threading.Event()

    def run(self, work: Callable[[Registries], Coroutine[Any, Any, T]]) -> T:
        """``work(registries)`` run on the pool's loop; blocks the calling thread (never the
        loop's) until it is done. Raises ``ConfigError`` for bad transport settings."""
        if self._closed.is_set():
            raise RuntimeError("the registry pool is closed")
        # Read here, on the caller's thread: loading a Docker config is blocking file IO. The
        # options come out the same each time (the environment is fixed); read per request so
        # that a bad setting is each request's error, as when each built its own pool.
        credentials = default_store(self._env)
        options = transport_options_from_env(self._env, insecure=self._insecure)

        async def on_the_loop() -> T:
            return await work(self._pool(credentials, options))

        return self._loop.run(on_the_loop())

    def _pool(self, credentials: CredentialStore, options: TransportOptions) -> Registries:
        # Only ever called on the loop's thread, so two requests never build two pools.
        if self._registries is None:
            self._registries = Registries(credentials, options, transport=self._transport)
        else:
            self._registries.renew_credentials(credentials, older_than=CREDENTIAL_MAX_AGE)
        return self._registries

    def close(self) -> None:
        """Close every connection and stop the loop; a later :meth:`run` raises. Idempotent."""
        self._closed.set()
        registries, self._registries = self._registries, None
        if registries is not None:
            self._loop.run(registries.aclose())
        self._loop.close()
