"""What one open layout holds and what a copy did to it, in layout terms (tags, manifests,
blobs, referrers), with no HTTP: the transport (``transport.py``) speaks the protocol over it.

Which manifests ``index.json`` lists after a write (:meth:`LayoutState.final_entries`):

- every entry it listed before, but a ref.name written again names the new digest;
- one entry per tag written (its ref.name);
- one per manifest written that has a ``subject`` (a referrer: the image-layout spec's way);
- each root written or found present by digest that has no tag, by digest only; a root is a
  manifest no other such manifest names as a child (an index's children are not listed).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Mapping
from typing import Any

from ..errors import InvalidManifest, NotFound, RegistryError
from ..manifest import MAX_MANIFEST_BYTES, Manifest, parse_manifest
from ..referrers import referrer_descriptor
from ..threads import in_thread
from .index import LayoutEntry, Naming, annotated, make_entry, ref_name_for, sort_key, tag_of
from .store import BlobStore, is_digest


class LayoutState:
    """One layout's entries, manifests and blobs, read and (when ``writable``) written."""

    def __init__(self, label: str, store: BlobStore, entries: Iterable[LayoutEntry], *,
                 naming: Naming = "tag", writable: bool = False,
                 assume_present: Iterable[str] = ()) -> None:
        self.label = label
        self.store = store
        self.naming = naming
        self.writable = writable
        self.assume_present = frozenset(assume_present)
        self.before = list(entries)
        self._names: dict[str, str] = {e.ref_name: e.digest for e in self.before if e.ref_name}
        self._media: dict[str, str] = {e.digest: e.media_type for e in self.before}
        self._parsed: dict[str, Manifest] = {}
        self.written_tags: dict[str, str] = {}  # ref.name → digest, this session
        self.candidates: set[str] = set()  # manifests written or found by digest (roots?)
        self._notes: dict[str, dict[str, str]] = {}
        # Referrers by subject: the entries before (their manifests read once, here).
        self._referrers: dict[str, dict[str, dict[str, Any]]] = {}
        for entry in self.before:
            if entry.size <= MAX_MANIFEST_BYTES:
                # A missing or damaged one fails when (and if) a copy reads it, naming it.
                with contextlib.suppress(RegistryError):
                    self._note_referrer(self.manifest(entry.digest))

    # -- reads ---------------------------------------------------------------------------

    def resolve(self, repository: str, reference: str) -> str | None:
        """The digest ``reference`` (a digest or a tag of ``repository``) names, if held."""
        if is_digest(reference):
            return reference if self.manifest_size(reference) is not None else None
        return self._names.get(ref_name_for(self.naming, repository, reference))

    def manifest_size(self, digest: str) -> int | None:
        if digest in self.assume_present:
            return self.store.size(digest) or 0
        return self.store.size(digest)

    def manifest(self, digest: str) -> Manifest:
        """A manifest held in the layout, its bytes checked; BlobNotInLayout if absent. Reads
        the disk the first time: on the event loop, use :meth:`read_manifest`."""
        found = self._parsed.get(digest)
        return found if found is not None else self._parse(digest, self._raw(digest))

    async def read_manifest(self, digest: str) -> Manifest:
        """:meth:`manifest`, its bytes read on a thread."""
        found = self._parsed.get(digest)
        return found if found is not None else self._parse(digest,
                                                           await in_thread(self._raw, digest))

    def _raw(self, digest: str) -> bytes:
        if self.store.size(digest) is None:
            raise self.store.missing(digest)
        return self.store.read_small(digest, MAX_MANIFEST_BYTES + 1)

    def _parse(self, digest: str, raw: bytes) -> Manifest:
        manifest = parse_manifest(raw, self._media.get(digest), expected_digest=digest)
        for child in manifest.children:
            self._media.setdefault(child.digest, child.media_type)
        self._parsed[digest] = manifest
        return manifest

    def blob_size(self, digest: str) -> int | None:
        if digest in self.assume_present:
            return self.store.size(digest) or 0
        return self.store.size(digest)

    def tags(self, repository: str) -> list[str]:
        found = (tag_of(self.naming, repository, name) for name in self._names)
        return sorted(t for t in found if t is not None)

    def referrers(self, subject: str, artifact_type: str | None = None) -> list[dict[str, Any]]:
        found = self._referrers.get(subject, {})
        return [d for _, d in sorted(found.items())
                if artifact_type is None or d.get("artifactType") == artifact_type]

    def ref_names(self) -> list[str]:
        return sorted(self._names)

    # -- writes --------------------------------------------------------------------------

    async def put_manifest(self, repository: str, reference: str, raw: bytes,
                           content_type: str | None) -> Manifest:
        """Store a manifest's exact bytes (written and synced on a thread), by digest or under
        a tag."""
        manifest = parse_manifest(raw, content_type,
                                  expected_digest=reference if is_digest(reference) else None)
        if manifest.digest not in self.assume_present:
            await in_thread(self.store.put_bytes, manifest.digest, raw)
        self._media[manifest.digest] = manifest.media_type
        self._parsed[manifest.digest] = manifest
        self._note_referrer(manifest)
        if is_digest(reference):
            self.candidates.add(manifest.digest)
        else:
            name = ref_name_for(self.naming, repository, reference)
            self._names[name] = self.written_tags[name] = manifest.digest
        return manifest

    def found_by_digest(self, digest: str) -> None:
        """A destination's HEAD found ``digest`` here: if it is a root, it gets an entry."""
        if self.writable:
            self.candidates.add(digest)

    def annotate(self, key: str, annotations: Mapping[str, str]) -> None:
        """Annotations for the entries named ``key`` (a ref.name or a digest), at commit."""
        self._notes.setdefault(key, {}).update(annotations)

    def _note_referrer(self, manifest: Manifest) -> None:
        if manifest.subject is not None:
            self._referrers.setdefault(manifest.subject.digest, {})[manifest.digest] = (
                referrer_descriptor(manifest))

    # -- the index to write ----------------------------------------------------------------

    def final_entries(self) -> list[LayoutEntry]:
        """``index.json``'s entries after this session (see the module docstring), sorted."""
        named: dict[str, LayoutEntry] = {}
        unnamed: dict[str, LayoutEntry] = {}
        for entry in self.before:
            if entry.ref_name is not None:
                named[entry.ref_name] = entry
            else:
                unnamed[entry.digest] = entry
        for name, digest in self.written_tags.items():
            named[name] = self._entry(digest, name)
        for digest in sorted(self.candidates):
            manifest = self._parsed_or_none(digest)
            if manifest is not None and manifest.subject is not None:
                unnamed.setdefault(digest, self._entry(digest, None))
        tagged = {e.digest for e in named.values()}
        children: set[str] = set()
        for digest in self.candidates:
            manifest = self._parsed_or_none(digest)
            if manifest is not None:
                children.update(child.digest for child in manifest.children)
        for digest in sorted(self.candidates - children - tagged):
            unnamed.setdefault(digest, self._entry(digest, None))
        entries = [*named.values(), *unnamed.values()]
        entries = [self._annotated(e) for e in entries]
        return sorted(entries, key=sort_key)

    def _entry(self, digest: str, ref_name: str | None) -> LayoutEntry:
        manifest = self._parsed_or_none(digest)
        if manifest is None:
            raise InvalidManifest(f"{self.label}: no manifest {digest} to list in index.json")
        return make_entry(digest, manifest.media_type, manifest.size, ref_name)

    def _parsed_or_none(self, digest: str) -> Manifest | None:
        try:
            return self.manifest(digest)
        except NotFound:
            return self._parsed.get(digest)

    def _annotated(self, entry: LayoutEntry) -> LayoutEntry:
        more = {**self._notes.get(entry.digest, {}),
                **(self._notes.get(entry.ref_name, {}) if entry.ref_name else {})}
        return annotated(entry, more) if more else entry
