"""Stand-ins for the engine's pool and copier, for tests of what ``CopyEngine`` hands its pool
(the holds, the blob-location index): the pool records its keyword arguments, the copier does
nothing."""

from __future__ import annotations

from typing import Any

from registry.results import CopyStats


class CapturingRegistries:
    seen: list[dict[str, Any]] = []

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        CapturingRegistries.seen.append(kwargs)

    def renew_credentials(self, *args: Any, **kwargs: Any) -> None:
        return None


class NoCopier:
    def __init__(self, registries: Any, options: Any) -> None:
        pass

    async def copy_image(self, source: Any, destination: Any, tags: Any,
                         tag_gate: Any = None) -> Any:
        return CopyStats()
