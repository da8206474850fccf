"""A pool of per-host registry clients sharing credentials, transport settings, holds and
learnt capabilities."""

from __future__ import annotations

import ssl
from collections.abc import Mapping
from types import TracebackType

import httpx

from .capabilities import CapabilityStore
from .client import RegistryClient
from .credentials import CredentialStore
from .holds import HoldStore, MemoryHolds
from .hosts import canonical_host
from .locations import BlobLocations, MemoryLocations
from .options import TransportOptions
from .retry import REQUEST_RETRY, RetryPolicy
from .spool import Spool
from .throttle import Throttle
from .tls import tls_context


class Registries:
    """Hands out one :class:`RegistryClient` per registry host; use as an async context manager.

    ``capabilities``, ``holds`` and ``locations`` may outlive the pool: a worker keeps one of
    each per process (and shares holds and locations across processes), so what one task learns
    the next one knows.
    """

    def __init__(
        self,
        credentials: CredentialStore | None = None,
        options: TransportOptions | None = None,
        *,
        transport: httpx.AsyncBaseTransport | None = None,
        tls: ssl.SSLContext | None = None,
        holds: HoldStore | None = None,
        capabilities: CapabilityStore | None = None,
        locations: BlobLocations | None = None,
        retry: RetryPolicy = REQUEST_RETRY,
        spool: Spool | None = None,
        throttle: Throttle | None = None,
        local: Mapping[str, httpx.AsyncBaseTransport] | None = None,
    ) -> None:
        """``local``: hosts served in-process by a transport of their own (an OCI layout,
        ``registry.layout``): no auth, no spool, never the network.
        ``tls``: a context built once (``tls_context(options)``) for callers that open many
        pools, such as a worker's tasks; by default the first client builds one. ``spool``:
        where source blobs are read once for every destination of the host (registry.spool).
        ``throttle``: the bandwidth caps blob bytes keep to (registry.throttle)."""
        self.credentials = credentials
        self.options = options or TransportOptions()
        self.capabilities = capabilities if capabilities is not None else CapabilityStore()
        self.holds = holds if holds is not None else MemoryHolds()
        # Where blobs were seen per registry (mount sources): outlives a run with the pool.
        self.locations = locations if locations is not None else MemoryLocations()
        self.retry = retry
        self.spool = spool
        self.throttle = throttle
        self._transport = transport
        self._local = dict(local or {})
        self._clients: dict[str, RegistryClient] = {}
        self._tls = tls

    def client(self, registry: str) -> RegistryClient:
        """The client for ``registry`` (``host[:port]``; Docker Hub by any of its names)."""
        registry = canonical_host(registry)
        found = self._clients.get(registry)
        if found is None:
            if self._tls is None:
                self._tls = tls_context(self.options)
            local = self._local.get(registry)
            found = RegistryClient(
                registry, credentials=None if local else self.credentials,
                options=self.options, capabilities=self.capabilities.get(registry),
                holds=self.holds, retry=self.retry, transport=local or self._transport,
                tls=self._tls,
            )
            # A local read costs nothing to repeat: spooling it would only copy it to disk.
            found.spool = None if local else self.spool
            found.throttle = None if local else self.throttle
            self._clients[registry] = found
        return found

    def is_local(self, registry: str) -> bool:
        """Whether ``registry`` is served in-process (an OCI layout's synthetic host): where its
        blobs are means nothing outside this process, so it goes in no shared index."""
        return canonical_host(registry) in self._local

    def renew_credentials(self, credentials: CredentialStore | None, *,
                          older_than: float) -> None:
        """Use ``credentials`` from now on, in every client: a pool that outlives one copy (a
        worker's) hands in the store read for the next one; see
        :meth:`RegistryClient.renew_credentials`."""
        self.credentials = credentials
        for client in self._clients.values():
            client.renew_credentials(credentials, older_than=older_than)

    async def aclose(self) -> None:
        clients, self._clients = list(self._clients.values()), {}
        for client in clients:
            await client.aclose()

    async def __aenter__(self) -> Registries:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()
