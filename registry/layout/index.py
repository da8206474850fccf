"""A layout's ``index.json``: its entries read, named, and written back deterministically.

Naming modes, for ``org.opencontainers.image.ref.name``:

- ``"tag"``: the ref.name is the tag alone (skopeo's, and ``fanout copy``'s); every repository
  path of the layout's synthetic host sees the same tags.
- ``"repository"``: the ref.name is ``<repository path>:<tag>`` (``ghcr.io/acme/app:1.4``), so one
  layout holds many repositories' tags (release bundles).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from ..errors import NotALayout
from ..manifest import OCI_INDEX

REF_NAME = "org.opencontainers.image.ref.name"
OCI_LAYOUT = b'{"imageLayoutVersion":"1.0.0"}'
Naming = Literal["tag", "repository"]


@dataclass(frozen=True, slots=True)
class LayoutEntry:
    """One ``index.json`` entry: its ref.name (None for a digest-only entry), the manifest it
    names, and all its annotations (ref.name included)."""

    ref_name: str | None
    digest: str
    media_type: str
    size: int
    annotations: Mapping[str, str] = field(default_factory=dict)
    # The descriptor as stored (platform, artifactType... kept as they were).
    descriptor: Mapping[str, Any] = field(default_factory=dict, repr=False, compare=False)


def parse_index(raw: bytes, label: str) -> list[LayoutEntry]:
    """The entries of an ``index.json``; NotALayout when it is not one."""
    try:
        doc = json.loads(raw)
    except ValueError as exc:
        raise NotALayout(f"{label}: index.json is not JSON ({exc})") from None
    items = doc.get("manifests") if isinstance(doc, dict) else None
    if not isinstance(items, list):
        raise NotALayout(f"{label}: index.json has no manifests list")
    entries = []
    for item in items:
        try:
            entries.append(entry_from(item))
        except (KeyError, TypeError, ValueError):
            raise NotALayout(f"{label}: index.json has a malformed entry: "
                             f"{json.dumps(item)[:200]}") from None
    return entries


def entry_from(descriptor: Mapping[str, Any]) -> LayoutEntry:
    annotations = dict(descriptor.get("annotations") or {})
    if not all(isinstance(v, str) for v in annotations.values()):
        raise ValueError("annotations must be strings")
    digest, media_type, size = descriptor["digest"], descriptor["mediaType"], descriptor["size"]
    if not isinstance(digest, str) or not isinstance(media_type, str) or type(size) is not int:
        raise ValueError("bad descriptor")
    return LayoutEntry(annotations.get(REF_NAME), digest, media_type, size, annotations,
                       dict(descriptor))


def make_entry(digest: str, media_type: str, size: int, ref_name: str | None,
               extra: Mapping[str, Any] | None = None) -> LayoutEntry:
    descriptor: dict[str, Any] = {"mediaType": media_type, "digest": digest, "size": size}
    if extra:
        descriptor.update(extra)
    annotations = dict(descriptor.get("annotations") or {})
    if ref_name is not None:
        annotations[REF_NAME] = ref_name
    if annotations:
        descriptor["annotations"] = annotations
    return LayoutEntry(ref_name, digest, media_type, size, annotations, descriptor)


def annotated(entry: LayoutEntry, more: Mapping[str, str]) -> LayoutEntry:
    annotations = {**entry.annotations, **more}
    return LayoutEntry(entry.ref_name, entry.digest, entry.media_type, entry.size, annotations,
                       {**entry.descriptor, "annotations": annotations})


def sort_key(entry: LayoutEntry) -> tuple[str, str, str]:
    return (entry.ref_name or "", entry.digest, entry.media_type)


def render_index(entries: Iterable[LayoutEntry]) -> bytes:
    """``index.json`` bytes: entries sorted, keys sorted, no whitespace, so the same content
    always gives the same bytes."""
    doc = {"schemaVersion": 2, "mediaType": OCI_INDEX,
           "manifests": [dict(e.descriptor) for e in sorted(entries, key=sort_key)]}
    return json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()


def ref_name_for(naming: Naming, repository: str, tag: str) -> str:
    return tag if naming == "tag" else f"{repository}:{tag}"


def tag_of(naming: Naming, repository: str, ref_name: str) -> str | None:
    """The tag ``ref_name`` gives ``repository``, or None when it is not one of its tags."""
    if naming == "tag":
        return ref_name
    name, colon, tag = ref_name.rpartition(":")
    if not colon or "/" in tag or name != repository:
        return None
    return tag


def repositories(naming: Naming, ref_names: Iterable[str]) -> list[str]:
    """The repository paths a repository-named layout holds tags of."""
    if naming == "tag":
        return []
    found = {name.rpartition(":")[0] for name in ref_names if ":" in name}
    return sorted(found - {""})
