"""A pool of registry clients, one per host, sharing credentials and transport settings."""

from __future__ import annotations

import ssl
from types import TracebackType

import httpx

from .client import RegistryClient, tls_context
from .credentials import CredentialStore
from .options import TransportOptions


class Registries:
    """Hands out one :class:`RegistryClient` per registry host; use as an async context manager."""

    def __init__(
        self,
        credentials: CredentialStore | None = None,
        options: TransportOptions | None = None,
        *,
        transport: httpx.AsyncBaseTransport | None = None,
        tls: ssl.SSLContext | None = None,
    ) -> None:
        """``tls``: a context built once (``tls_context(options)``) for callers that open many
        pools, such as a worker's tasks; by default the first client builds one."""
        self.credentials = credentials
        self.options = options or TransportOptions()
        self._transport = transport
        self._clients: dict[str, RegistryClient] = {}
        self._tls = tls

    def client(self, registry: str) -> RegistryClient:
        found = self._clients.get(registry)
        if found is None:
            credential = self.credentials.get(registry) if self.credentials else None
            if self._tls is None:
                self._tls = tls_context(self.options)
            found = RegistryClient(
                registry, credential=credential, options=self.options, transport=self._transport,
                tls=self._tls,
            )
            self._clients[registry] = found
        return found

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
