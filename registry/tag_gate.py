"""The seam through which a copy's tag writes are ordered across copies: a :class:`TagGate`.

A copy writes its root's tags last. Left alone, the last copy to finish owns each tag, so a
retry that lands late moves a mutable tag (``latest``) back to an older release. A gate decides,
per tag, whether this copy may write it, and the copy hands it a :class:`TagWriter`: the few
registry operations a decision needs, so the gate can stay in a layer that knows about ledgers
and locks (``workers/tag_order.py``) while this layer knows only the protocol.

``fanout copy`` runs without a gate: within one run nothing is reordered.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

from .reference import Repository

# Raises when it is no longer safe to write (the writer's lease ran out); called right before
# each PUT a writer sends, retries included.
Fence = Callable[[], None]


class TagWriter(Protocol):
    """One tag at one destination, as the copy can act on it."""

    async def known(self) -> str | None:
        """The digest the tag named when the copy began (its early HEAD), None if absent."""
        ...

    async def head(self) -> str | None:
        """The digest the tag names now (a fresh HEAD), None if absent."""
        ...

    async def put(self, fence: Fence) -> None:
        """PUT this copy's manifest under the tag."""
        ...

    async def restore(self, digest: str, fence: Fence) -> None:
        """PUT manifest ``digest``, already at the destination, under the tag: to give a tag
        back to the newer release it belongs to."""
        ...


class TagGate(Protocol):
    """Orders the tag writes of every copy that shares it."""

    async def write(self, destination: Repository, tag: str, digest: str,
                    writer: TagWriter) -> str | None:
        """Make ``tag`` name ``digest`` unless a newer release holds it; None when it does
        now, else the id of the release that superseded this one there."""
        ...
