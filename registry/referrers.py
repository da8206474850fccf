"""Placeholder until the referrers work lands: copies nothing."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .copy import Copier
    from .manifest import Manifest
    from .reference import Reference, Repository


async def copy_referrers(
    copier: Copier, source: Reference, destination: Repository, root: Manifest,
) -> int:
    return 0
