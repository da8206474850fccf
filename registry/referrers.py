"""Signatures, SBOMs and attestations travel with the image: referrers and cosign tags.

Found for every manifest of a copied image (the root and each manifest inside an index):
OCI 1.1 referrers through ``GET /v2/<name>/referrers/<digest>`` where the source registry has the
API (its first refusal marks the registry as lacking it for the run); else the referrers tag
schema, the OCI index tagged ``sha256-<hex>``; and cosign's ``sha256-<hex>.sig``, ``.att`` and
``.sbom`` tags, copied under the same names. Tags are known from one tag list per source
repository per run, so an image without referrers costs that list and at most one request per
manifest (none at all, after the first, on a registry without the API).

Each referrer is copied with ``Copier.copy_image``, which calls back here for the referrer's own
referrers: a signature on an SBOM travels too. Per-copier state cuts cycles (possible only
through tags) and repeats.

``CopyOptions.referrer_types`` (empty keeps all) keeps an OCI referrer when its artifactType, or
lacking one its config media type, is named. A cosign tag has no type of its own: it is kept
when the filter names one of its kind's ``COSIGN_TYPES`` (``.sig``: the cosign signature
artifact type or the simple-signing payload type; ``.att``: the attestation artifact type or the
DSSE envelope type; ``.sbom``: the SBOM artifact type). The filter applies at every depth.

At a destination with the referrers API (probed once per registry per run) a pushed manifest is
found through its ``subject``; nothing more is written. Elsewhere the fallback index
``sha256-<hex>`` is merged: read, add what is missing, never drop an entry, PUT by tag, read back
after a pause, and merge again if a concurrent writer's PUT lost our entries.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import weakref
from collections.abc import Awaitable, Callable, Hashable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar

from .errors import NotFound, PermanentError, RegistryError, TransientError
from .fetch import manifest_get, manifest_head, referrers_get, tags_list
from .manifest import OCI_INDEX, Descriptor, Manifest, is_index_media_type
from .referrers_index import fallback_tag, merge_fallback_index
from .results import CopyStats
from .retry import retry_async

if TYPE_CHECKING:
    from .copy import Copier
    from .reference import Reference, Repository

T = TypeVar("T")
log = logging.getLogger("fanout.referrers")

COSIGN_TYPES: dict[str, frozenset[str]] = {
    "sig": frozenset({"application/vnd.dev.cosign.artifact.sig.v1+json",
                      "application/vnd.dev.cosign.simplesigning.v1+json"}),
    "att": frozenset({"application/vnd.dev.cosign.artifact.att.v1+json",
                      "application/vnd.dsse.envelope.v1+json"}),
    "sbom": frozenset({"application/vnd.dev.cosign.artifact.sbom.v1+json"}),
}
# Set while a referrer is being copied: its own copy_referrers call then leaves the fallback
# index entry to the caller, which writes all of a subject's entries in one merge.
_AS_REFERRER: contextvars.ContextVar[bool] = contextvars.ContextVar(
    "fanout_as_referrer", default=False)
# The (destination, subject) pairs being worked on by this task and its callers: meeting one
# again is a cycle through tags, not work to wait for.
_PARENT_STATS: contextvars.ContextVar[CopyStats | None] = contextvars.ContextVar(
    "fanout_referrer_parent_stats", default=None)
_ANCESTRY: contextvars.ContextVar[frozenset[tuple[str, str]]] = contextvars.ContextVar(
    "fanout_referrer_ancestry", default=frozenset())


@dataclass
class _RunState:
    """What one Copier has learnt about referrers during its run."""

    tags: dict[str, asyncio.Future[frozenset[str]]] = field(default_factory=dict)
    source_api: dict[str, bool] = field(default_factory=dict)
    destination_api: dict[str, bool] = field(default_factory=dict)
    subjects: dict[tuple[str, str], asyncio.Future[None]] = field(default_factory=dict)
    copied: set[tuple[str, str, str]] = field(default_factory=set)
    locks: dict[Hashable, asyncio.Lock] = field(default_factory=dict)

    def lock(self, key: Hashable) -> asyncio.Lock:
        return self.locks.setdefault(key, asyncio.Lock())


_STATES: weakref.WeakKeyDictionary[Copier, _RunState] = weakref.WeakKeyDictionary()


@dataclass(frozen=True, slots=True)
class _Found:
    """A referrer to copy: by digest, and under ``tag`` when it is one of cosign's."""

    digest: str
    tag: str | None = None


def referrer_descriptor(manifest: Manifest) -> dict[str, Any]:
    """The index entry for a referrer: its type, digest and size, artifactType, annotations."""
    entry: dict[str, Any] = {"mediaType": manifest.media_type, "digest": manifest.digest,
                             "size": manifest.size}
    artifact_type = _artifact_type_of(manifest)
    if artifact_type:
        entry["artifactType"] = artifact_type
    if manifest.annotations:
        entry["annotations"] = manifest.annotations
    return entry


async def copy_referrers(
    copier: Copier, source: Reference, destination: Repository, root: Manifest,
    stats: CopyStats | None = None,
) -> int:
    """Copy the referrers of ``root`` and of every manifest inside it; return how many.

    Called by ``Copier.copy_image`` once ``root`` is at ``destination``, before its tags. What
    the referrers move (bytes, blobs) is added to ``stats``, the destination's counters.
    """
    token = _PARENT_STATS.set(stats)
    try:
        return await _copy_referrers(copier, source, destination, root)
    finally:
        _PARENT_STATS.reset(token)


async def _copy_referrers(
    copier: Copier, source: Reference, destination: Repository, root: Manifest,
) -> int:
    state = _STATES.setdefault(copier, _RunState())
    repository = source.repository
    copied = 0
    for subject in [root.digest, *await _manifests_within(copier, repository, root)]:
        copied += await _for_subject(copier, state, repository, destination, subject)
    if root.subject is not None and not _AS_REFERRER.get():
        # Copied on its own, not as someone's referrer: still make it findable from its subject.
        await _register(copier, state, destination, root.subject.digest,
                        [referrer_descriptor(root)])
    return copied


async def _manifests_within(copier: Copier, repository: Repository, root: Manifest) -> list[str]:
    """Digests of the manifests inside an index, nested indexes included."""
    found: list[str] = []
    pending = [root]
    while pending:
        for child in pending.pop().children:
            if child.digest in found:
                continue
            found.append(child.digest)
            if is_index_media_type(child.media_type):
                pending.append(await copier.source_manifest(repository, child.digest))
    return found


async def _for_subject(
    copier: Copier, state: _RunState, repository: Repository, destination: Repository,
    subject: str,
) -> int:
    key = (str(destination), subject)
    ongoing = state.subjects.get(key)  # failed attempts are removed: this one is done or under way
    if ongoing is not None:
        # Under way in this task's callers is a cycle through tags: theirs to finish. Under way
        # elsewhere is another copy to this destination: wait for it.
        if not ongoing.done() and key not in _ANCESTRY.get():
            await asyncio.shield(ongoing)
        return 0
    future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    state.subjects[key] = future
    token = _ANCESTRY.set(_ANCESTRY.get() | {key})
    try:
        found = await _discover(copier, state, repository, subject)
        copied = await _copy_found(copier, state, repository, destination, subject, found)
    except BaseException as exc:
        del state.subjects[key]  # a later attempt starts over
        future.set_exception(exc if isinstance(exc, RegistryError)
                             else TransientError("referrer copy abandoned"))
        future.exception()  # nobody may be waiting; keep asyncio quiet
        raise
    finally:
        _ANCESTRY.reset(token)
    future.set_result(None)
    return copied


# -- finding referrers at the source ----------------------------------------------------------


async def _discover(
    copier: Copier, state: _RunState, repository: Repository, subject: str,
) -> list[_Found]:
    """The referrers of ``subject`` the filter keeps: OCI referrers first, then cosign tags."""
    wanted = copier.options.referrer_types
    client = copier.registries.client(repository.registry)
    listed = await _from_api(copier, state, repository, subject)
    kinds = [kind for kind, types in COSIGN_TYPES.items() if not wanted or types & set(wanted)]
    tags = await _tags(copier, state, repository) if listed is None or kinds else frozenset()
    descriptors = list(listed or ())
    base = fallback_tag(subject)
    if base in tags:
        index = await _retry(copier, lambda: manifest_get(client, repository.path, base),
                             f"get {repository}:{base}")
        if index.media_type == OCI_INDEX:
            descriptors.extend(index.children)
        else:
            log.warning("%s:%s is a %s, not a referrers index; ignoring it",
                        repository, base, index.media_type)
    found: dict[tuple[str, str | None], _Found] = {}
    for descriptor in descriptors:
        if descriptor.digest != subject and await _kept(copier, repository, descriptor):
            found.setdefault((descriptor.digest, None), _Found(descriptor.digest))
    for kind in kinds:
        tag = f"{base}.{kind}"
        if tag in tags:
            digest = await _resolve_tag(copier, repository, tag)
            found.setdefault((digest, tag), _Found(digest, tag))
    return list(found.values())


async def _from_api(
    copier: Copier, state: _RunState, repository: Repository, subject: str,
) -> tuple[Descriptor, ...] | None:
    """The referrers API's answer, or None where the registry lacks the API."""
    registry = repository.registry
    if registry not in state.source_api:
        # The first question decides for the whole registry; the rest wait for the answer
        # rather than each paying a 404.
        async with state.lock(("source-api", registry)):
            if registry not in state.source_api:
                return await _ask_api(copier, state, repository, subject)
    if not state.source_api[registry]:
        return None
    return await _ask_api(copier, state, repository, subject)


async def _ask_api(
    copier: Copier, state: _RunState, repository: Repository, subject: str,
) -> tuple[Descriptor, ...] | None:
    wanted = copier.options.referrer_types
    client = copier.registries.client(repository.registry)
    try:
        listed = await _retry(copier, lambda: referrers_get(
            client, repository.path, subject,
            artifact_type=wanted[0] if len(wanted) == 1 else None,
        ), f"list referrers of {repository}@{subject[:19]}")
    except PermanentError as exc:
        log.info("%s has no referrers API (%s); using the tag schema", repository.registry, exc)
        state.source_api[repository.registry] = False
        return None
    state.source_api[repository.registry] = True
    return listed


async def _tags(copier: Copier, state: _RunState, repository: Repository) -> frozenset[str]:
    key = str(repository)
    task = state.tags.get(key)
    # A failed listing is not cached: the next subject (or retry) asks again.
    if task is None or (task.done() and task.exception() is not None):
        client = copier.registries.client(repository.registry)

        async def listing() -> frozenset[str]:
            return frozenset(await _retry(copier, lambda: tags_list(client, repository.path),
                                          f"list tags of {repository}"))

        task = asyncio.ensure_future(listing())
        state.tags[key] = task
    return await asyncio.shield(task)


async def _kept(copier: Copier, repository: Repository, descriptor: Descriptor) -> bool:
    wanted = copier.options.referrer_types
    if not wanted:
        return True
    artifact_type = descriptor.artifact_type
    if artifact_type is None:
        # An index entry written without artifactType: the manifest itself says (it is
        # fetched once per run, and copied from that cache if kept).
        manifest = await copier.source_manifest(repository, descriptor.digest)
        artifact_type = _artifact_type_of(manifest)
    return artifact_type in wanted


async def _resolve_tag(copier: Copier, repository: Repository, tag: str) -> str:
    client = copier.registries.client(repository.registry)
    info = await _retry(copier, lambda: manifest_head(client, repository.path, tag),
                        f"check {repository}:{tag}")
    if info is None:
        raise NotFound(f"{repository}:{tag} was listed but is gone")
    if info.digest:
        return info.digest
    # A registry that does not say the digest on HEAD: hash what it serves.
    manifest = await _retry(copier, lambda: manifest_get(client, repository.path, tag),
                            f"get {repository}:{tag}")
    return manifest.digest


def _artifact_type_of(manifest: Manifest) -> str | None:
    if manifest.artifact_type:
        return manifest.artifact_type
    return manifest.config.media_type if manifest.config is not None else None


# -- copying and writing at the destination ---------------------------------------------------


async def _copy_found(
    copier: Copier, state: _RunState, repository: Repository, destination: Repository,
    subject: str, found: Sequence[_Found],
) -> int:
    """Copy each referrer (and, through copy_image, its referrers); index the OCI ones."""
    copied = 0
    entries: list[dict[str, Any]] = []
    for item in found:
        key = (str(destination), item.digest, item.tag or "")
        if key not in state.copied:
            token = _AS_REFERRER.set(True)
            try:
                stats = await copier.copy_image(
                    repository.digested(item.digest), destination,
                    [item.tag] if item.tag else [])
            finally:
                _AS_REFERRER.reset(token)
            state.copied.add(key)
            copied += 1 + stats.referrers_copied
            parent = _PARENT_STATS.get()
            if parent is not None:
                parent.absorb(stats)
        if item.tag is None:
            manifest = await copier.source_manifest(repository, item.digest)
            entries.append(referrer_descriptor(manifest))
    if entries:
        await _register(copier, state, destination, subject, entries)
    return copied


async def _register(
    copier: Copier, state: _RunState, destination: Repository, subject: str,
    entries: list[dict[str, Any]],
) -> None:
    """Make ``entries`` findable from ``subject`` at the destination."""
    if await _destination_has_api(copier, state, destination, subject):
        return
    tag = fallback_tag(subject)
    # Serialises our own writers; other processes are handled by reading back.
    async with state.lock(("fallback", str(destination), tag)):
        await merge_fallback_index(copier, destination, tag, entries)


async def _destination_has_api(
    copier: Copier, state: _RunState, destination: Repository, subject: str,
) -> bool:
    registry = destination.registry
    async with state.lock(("destination-api", registry)):
        if registry not in state.destination_api:
            client = copier.registries.client(registry)
            try:
                await _retry(copier, lambda: referrers_get(client, destination.path, subject),
                             f"list referrers of {destination}@{subject[:19]}")
                state.destination_api[registry] = True
            except PermanentError as exc:
                log.info("%s has no referrers API (%s); maintaining the fallback tags",
                         registry, exc)
                state.destination_api[registry] = False
    return state.destination_api[registry]


async def _retry(copier: Copier, operation: Callable[[], Awaitable[T]], what: str) -> T:
    return await retry_async(copier.options.retry, operation, what=what)
