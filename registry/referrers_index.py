"""The referrers tag schema at a destination: the OCI index tagged ``sha256-<hex>`` listing a
subject's referrers, merged in place — read, add what is missing, never drop an entry, PUT by tag,
read back after a pause, and merge again if a concurrent writer's PUT lost our entries.
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import random
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from .errors import InvalidManifest, NotFound, TransientError
from .fetch import manifest_get
from .manifest import OCI_INDEX, Manifest, parse_manifest
from .push import manifest_put
from .retry import RetryPolicy, retry_async

if TYPE_CHECKING:
    from .client import RegistryClient
    from .reference import Repository

log = logging.getLogger("fanout.referrers")

# Rounds of write-and-read-back on a fallback index before contention counts as a failure.
MERGE_ATTEMPTS = 5
# Least pause before reading our PUT back; the pause is also at least our own read-to-PUT time,
# the best guess at how long a concurrent writer's stale PUT can still take to land.
SETTLE_SECONDS = 0.03


def fallback_tag(digest: str) -> str:
    """The referrers tag schema's tag for ``digest``: ``<alg>-<hex>``, truncated as OCI says."""
    algorithm, _, encoded = digest.partition(":")
    return f"{algorithm[:32]}-{encoded[:64]}"


async def merge_fallback_index(
    client: RegistryClient, destination: Repository, tag: str,
    entries: Sequence[dict[str, Any]], retry: RetryPolicy,
) -> None:
    """Add ``entries`` to the OCI index tagged ``tag``, keeping every entry already there.

    No registry offers compare-and-swap on a tag, so a writer that read before our PUT can land
    after it and drop our entries: read back after a pause, and merge again when that happened.
    """

    async def read() -> dict[str, Any] | None:
        try:
            current = await retry_async(retry,
                                        lambda: manifest_get(client, destination.path, tag),
                                        what=f"get {destination}:{tag}")
        except NotFound:
            return None
        if current.media_type != OCI_INDEX:
            raise InvalidManifest(
                f"{destination}:{tag} holds a {current.media_type}, not the OCI index of the "
                "referrers tag schema; refusing to overwrite it")
        doc: dict[str, Any] = json.loads(current.raw)
        return doc

    started = time.monotonic()
    doc = await read()
    for attempt in range(1, MERGE_ATTEMPTS + 1):
        missing = _missing(doc, entries)
        if not missing:
            return
        if attempt > 1:
            log.info("%s:%s lost %d entries to a concurrent writer; merging again",
                     destination, tag, len(missing))
        merged = _merged(doc, missing)
        await retry_async(retry,
                          functools.partial(manifest_put, client, destination.path, tag, merged),
                          what=f"put {destination}:{tag}")
        # A rival's read-to-PUT takes about as long as ours did: wait that long (at least
        # SETTLE_SECONDS), growing and jittered per round, so its stale PUT lands before we look.
        window = max(SETTLE_SECONDS, time.monotonic() - started)
        await asyncio.sleep(window * attempt * (1 + random.random()))  # noqa: S311
        started = time.monotonic()
        doc = await read()
    if _missing(doc, entries):
        raise TransientError(f"{destination}:{tag} kept losing our entries to concurrent "
                             f"writers after {MERGE_ATTEMPTS} merges")


def _missing(doc: dict[str, Any] | None, entries: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    present = {item.get("digest") for item in (doc or {}).get("manifests", [])
               if isinstance(item, dict)}
    missing: dict[str, dict[str, Any]] = {}
    for entry in entries:
        if entry["digest"] not in present:
            missing.setdefault(entry["digest"], entry)
    return list(missing.values())


def _merged(doc: dict[str, Any] | None, missing: Sequence[dict[str, Any]]) -> Manifest:
    """The index with ``missing`` appended; everything else in it (entries, annotations) kept."""
    merged: dict[str, Any] = dict(doc) if doc is not None else {
        "schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": []}
    merged["manifests"] = [*merged.get("manifests", []), *missing]
    raw = json.dumps(merged, separators=(",", ":")).encode()
    return parse_manifest(raw, OCI_INDEX)
