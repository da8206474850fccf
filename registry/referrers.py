"""Finding what refers to a manifest at the source: signatures, SBOMs and attestations.

For a subject digest, in this order:

1. OCI 1.1 referrers through ``GET /v2/<name>/referrers/<digest>``, where the host has the API.
   Whether it has is learnt once per host (:class:`~registry.capabilities.Capabilities`): a 404,
   or a 200 that is not an OCI index (Artifact Registry's sign-in page), means no, and every
   later subject on that host skips the question.
2. The referrers tag schema: the OCI index tagged ``sha256-<hex>``.
3. cosign's ``sha256-<hex>.sig``, ``.att`` and ``.sbom`` tags, copied under the same names.

Tags are known from one tag list per source repository per run, so an image without referrers
costs that list and at most one request per manifest.

``CopyOptions.referrer_types`` (empty keeps all) keeps an OCI referrer when its artifactType, or
lacking one its config media type, is named. A cosign tag has no type of its own: it is kept
when the filter names one of its kind's ``COSIGN_TYPES``.

This module only finds. The copy walker (``registry/copy.py``) copies what it finds as more
nodes of the same walk, and the destination's side is ``registry/referrers_index.py``.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from .client import RegistryClient
from .errors import NotFound, PermanentError
from .fetch import manifest_get, referrers_get
from .gather import all_of
from .manifest import OCI_INDEX, Descriptor, Manifest, is_index_media_type
from .options import CopyOptions
from .reference import Repository
from .referrers_index import fallback_tag
from .retry import retry_async
from .session import Registries
from .singleflight import SingleFlight
from .tags import list_tags, resolve_tag

T = TypeVar("T")
log = logging.getLogger("fanout.referrers")

COSIGN_TYPES: dict[str, frozenset[str]] = {
    "sig": frozenset({"application/vnd.dev.cosign.artifact.sig.v1+json",
                      "application/vnd.dev.cosign.simplesigning.v1+json"}),
    "att": frozenset({"application/vnd.dev.cosign.artifact.att.v1+json",
                      "application/vnd.dsse.envelope.v1+json"}),
    "sbom": frozenset({"application/vnd.dev.cosign.artifact.sbom.v1+json"}),
}

# Fetches a source manifest by digest, once per run: the walker's cache.
ManifestSource = Callable[[Repository, str], Awaitable[Manifest]]


@dataclass(frozen=True, slots=True)
class Found:
    """A referrer to copy: by digest, and under ``tag`` when it is one of cosign's."""

    digest: str
    tag: str | None = None


def referrer_descriptor(manifest: Manifest) -> dict[str, Any]:
    """The index entry for a referrer: its type, digest and size, artifactType, annotations."""
    entry: dict[str, Any] = {"mediaType": manifest.media_type, "digest": manifest.digest,
                             "size": manifest.size}
    artifact_type = artifact_type_of(manifest)
    if artifact_type:
        entry["artifactType"] = artifact_type
    if manifest.annotations:
        entry["annotations"] = manifest.annotations
    return entry


def artifact_type_of(manifest: Manifest) -> str | None:
    if manifest.artifact_type:
        return manifest.artifact_type
    return manifest.config.media_type if manifest.config is not None else None


async def has_referrers_api(
    client: RegistryClient, repository: Repository, digest: str, options: CopyOptions,
    asked: SingleFlight[str, bool],
) -> bool:
    """Whether ``client``'s host answers the referrers API with real OCI indexes; asked once
    per host (``asked`` shares the question among those who wait for it), then remembered."""
    known = client.capabilities.referrers_api
    if known is not None:
        return known

    async def ask() -> bool:
        try:
            await retry_async(options.retry,
                              lambda: referrers_get(client, repository.path, digest),
                              what=f"list referrers of {repository}@{digest[:19]}")
        except PermanentError as exc:
            log.info("%s has no referrers API (%s)", client.registry, exc)
            client.capabilities.referrers_api = False
            return False
        client.capabilities.referrers_api = True
        return True

    return await asked.do(client.registry, ask)


class ReferrerFinder:
    """Finds the referrers of source manifests for one run, each question asked once."""

    def __init__(
        self, registries: Registries, options: CopyOptions, manifests: ManifestSource,
    ) -> None:
        self.registries = registries
        self.options = options
        self._manifests = manifests
        self._tags: SingleFlight[str, frozenset[str]] = SingleFlight()
        self._found: SingleFlight[tuple[str, str], tuple[Found, ...]] = SingleFlight()
        self._api_asked: SingleFlight[str, tuple[str, tuple[Descriptor, ...] | None]] = (
            SingleFlight())

    async def manifests_within(self, repository: Repository, root: Manifest) -> list[str]:
        """Digests of the manifests inside an index, nested indexes included."""
        found: list[str] = []
        pending = [root]
        while pending:
            for child in pending.pop().children:
                if child.digest in found:
                    continue
                found.append(child.digest)
                if is_index_media_type(child.media_type):
                    pending.append(await self._manifests(repository, child.digest))
        return found

    async def find(self, repository: Repository, subject: str) -> tuple[Found, ...]:
        """The referrers of ``subject`` the filter keeps: OCI referrers first, then cosign's."""
        return await self._found.do((str(repository), subject),
                                    lambda: self._discover(repository, subject))

    def start(self, repository: Repository, subjects: Sequence[str]) -> None:
        """Ask about ``subjects`` now, for :meth:`find` to have the answers when it asks."""
        for subject in subjects:
            self._found.start((str(repository), subject),
                              functools.partial(self._discover, repository, subject))

    async def _discover(self, repository: Repository, subject: str) -> tuple[Found, ...]:
        wanted = self.options.referrer_types
        client = self.registries.client(repository.registry)
        kinds = [kind for kind, types in COSIGN_TYPES.items() if not wanted or types & set(wanted)]
        if kinds:
            # Needed whatever the API answers: asked beside it, not after.
            self._tags.start(str(repository), functools.partial(self._listing, client, repository))
        listed = await self._from_api(client, repository, subject)
        tags = await self._tag_list(client, repository) if listed is None or kinds else frozenset()
        base = fallback_tag(subject)
        cosign = [f"{base}.{kind}" for kind in kinds if f"{base}.{kind}" in tags]
        # The tag schema's index and cosign's tags are separate reads: all at once.
        index, digests = await asyncio.gather(
            self._fallback_index(client, repository, base, tags),
            all_of(self._resolve_tag(client, repository, tag) for tag in cosign))
        descriptors = [*(listed or ()), *index]
        kept = await all_of(self._kept(repository, d) for d in descriptors)
        found: dict[tuple[str, str | None], Found] = {}
        for descriptor, keep in zip(descriptors, kept, strict=True):
            if descriptor.digest != subject and keep:
                found.setdefault((descriptor.digest, None), Found(descriptor.digest))
        for tag, digest in zip(cosign, digests, strict=True):
            found.setdefault((digest, tag), Found(digest, tag))
        return tuple(found.values())

    async def _fallback_index(
        self, client: RegistryClient, repository: Repository, base: str, tags: frozenset[str],
    ) -> tuple[Descriptor, ...]:
        """The entries of the referrers tag schema's index, when the repository has one."""
        if base not in tags:
            return ()
        index = await self._retry(lambda: manifest_get(client, repository.path, base),
                                  f"get {repository}:{base}")
        if index.media_type != OCI_INDEX:
            log.warning("%s:%s is a %s, not a referrers index; ignoring it",
                        repository, base, index.media_type)
            return ()
        return index.children

    async def _from_api(
        self, client: RegistryClient, repository: Repository, subject: str,
    ) -> tuple[Descriptor, ...] | None:
        """The referrers API's answer, or None where the host lacks the API."""
        wanted = self.options.referrer_types

        async def ask() -> tuple[Descriptor, ...]:
            return await self._retry(lambda: referrers_get(
                client, repository.path, subject,
                artifact_type=wanted[0] if len(wanted) == 1 else None,
            ), f"list referrers of {repository}@{subject[:19]}")

        async def first() -> tuple[str, tuple[Descriptor, ...] | None]:
            try:
                listed: tuple[Descriptor, ...] | None = await ask()
            except PermanentError as exc:
                log.info("%s has no referrers API (%s); using the tag schema",
                         client.registry, exc)
                client.capabilities.referrers_api = False
                listed = None
            else:
                client.capabilities.referrers_api = True
            return subject, listed

        if client.capabilities.referrers_api is None:
            # The first question decides for the whole host; the rest wait for the answer
            # rather than each paying a 404.
            asked, listed = await self._api_asked.do(client.registry, first)
            if asked == subject:
                return listed
        if not client.capabilities.referrers_api:
            return None
        return await ask()

    async def _tag_list(self, client: RegistryClient, repository: Repository) -> frozenset[str]:
        return await self._tags.do(str(repository),
                                   functools.partial(self._listing, client, repository))

    async def _listing(self, client: RegistryClient, repository: Repository) -> frozenset[str]:
        try:
            return frozenset(await list_tags(client, repository.path, retry=self.options.retry))
        except NotFound:
            return frozenset()  # a repository not there yet has no fallback tags

    async def _kept(self, repository: Repository, descriptor: Descriptor) -> bool:
        wanted = self.options.referrer_types
        if not wanted:
            return True
        artifact_type = descriptor.artifact_type
        if artifact_type is None:
            # An index entry written without artifactType: the manifest itself says (it is
            # fetched once per run, and copied from that cache if kept).
            artifact_type = artifact_type_of(await self._manifests(repository, descriptor.digest))
        return artifact_type in wanted

    async def _resolve_tag(self, client: RegistryClient, repository: Repository, tag: str) -> str:
        digest = await resolve_tag(client, repository.path, tag, retry=self.options.retry)
        if digest is None:
            raise NotFound(f"{repository}:{tag} was listed but is gone")
        return digest

    async def _retry(self, operation: Callable[[], Awaitable[T]], what: str) -> T:
        return await retry_async(self.options.retry, operation, what=what)
