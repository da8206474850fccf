"""One root tag at one destination, as a :class:`registry.tag_gate.TagWriter`: what a gate may
ask of the registry while it decides (the early HEAD, a fresh HEAD, a fenced PUT)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TypeVar

from .client import RegistryClient
from .fetch import ManifestInfo, manifest_get, manifest_head
from .manifest import Manifest
from .push import manifest_put
from .reference import Repository
from .results import CopyStats
from .retry import RetryPolicy, retry_async
from .tag_gate import Fence

T = TypeVar("T")


class DestinationTag:
    """``tag`` at ``destination``, to be made to name ``manifest``."""

    def __init__(
        self, client: RegistryClient, destination: Repository, tag: str, manifest: Manifest,
        *, early: Callable[[], Awaitable[ManifestInfo | None]], retry: RetryPolicy,
        stats: CopyStats,
    ) -> None:
        self._client = client
        self._destination = destination
        self._tag = tag
        self._manifest = manifest
        self._early = early
        self._retry = retry
        self._stats = stats

    async def known(self) -> str | None:
        found = await self._early()
        return found.digest if found is not None else None

    async def head(self) -> str | None:
        found = await self._with_retry(
            lambda: manifest_head(self._client, self._destination.path, self._tag,
                                  for_push=True),
            f"check tag {self._destination}:{self._tag}")
        return found.digest if found is not None else None

    async def put(self, fence: Fence) -> None:
        await self._put(self._manifest, fence)
        self._stats.tags_written += 1

    async def restore(self, digest: str, fence: Fence) -> None:
        manifest = await self._with_retry(
            lambda: manifest_get(self._client, self._destination.path, digest),
            f"get {self._destination}@{digest[:19]}")
        await self._put(manifest, fence)

    async def _put(self, manifest: Manifest, fence: Fence) -> None:
        async def attempt() -> None:
            fence()  # every attempt, retries included: a lapsed lease sends nothing more
            await manifest_put(self._client, self._destination.path, self._tag, manifest)

        await self._with_retry(attempt, f"tag {self._destination}:{self._tag}")

    async def _with_retry(self, operation: Callable[[], Awaitable[T]], what: str) -> T:
        return await retry_async(self._retry, operation, what=what)
