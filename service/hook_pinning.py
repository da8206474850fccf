"""Pinning the pushes a webhook names by tag alone (Docker Hub, Quay) to their digest.

Done before deduplication, so the window keys on what was pushed, not on a tag: ``latest``
pushed twice with new content is two releases, a redelivery of one push is one. One request
per tag, with the server's own source credentials, as ``fanout enqueue`` pins a source, over
the server's one pool of registry clients (:mod:`producer.pool`).
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Sequence

from producer.pool import RegistryPool
from registry.copy import Copier
from registry.errors import NotFound, RegistryError
from registry.options import CopyOptions
from registry.reference import Reference, parse_reference
from registry.retry import RetryPolicy
from registry.session import Registries

from .errors import ApiError
from .hook_events import Push

__all__ = ["pin"]

# A webhook waits on this: a blip is retried, an outage answered 502 (the registry redelivers).
_RETRY = RetryPolicy(attempts=3, initial=0.5, maximum=2.0, max_elapsed=10.0, max_hold=5.0)


def pin(pushes: Sequence[Push], pool: RegistryPool) -> list[Push]:
    """``pushes`` with each tag-only one given the digest its tag points at now; blocking."""
    wanted = sorted({str(p) for p in pushes if p.digest is None and p.tag is not None})
    if not wanted:
        return list(pushes)
    refs = [parse_reference(text) for text in wanted]
    digests = pool.run(lambda registries: _resolve(registries, refs))
    return [dataclasses.replace(p, digest=digests[str(p)]) if str(p) in digests else p
            for p in pushes]


async def _resolve(registries: Registries, refs: Sequence[Reference]) -> dict[str, str]:
    copier = Copier(registries, CopyOptions(retry=_RETRY))
    pinned = await asyncio.gather(*(_one(copier, ref) for ref in refs))
    return {str(ref): digest for ref, digest in zip(refs, pinned, strict=True)}


async def _one(copier: Copier, ref: Reference) -> str:
    try:
        found = await copier.resolve(ref)
    except NotFound:
        raise ApiError(422, f"{ref}: the registry has no such tag (deleted since?)") from None
    except RegistryError as exc:
        raise ApiError(502, f"{ref}: could not read its digest: {exc}") from None
    assert found.digest is not None  # resolve() always pins
    return found.digest
