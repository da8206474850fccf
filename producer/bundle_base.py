"""``fanout export --base PREVIOUS.tar``: what the previous bundle carried, read from its tar
members and its ``index.json`` (never extracted).

A base that was itself incremental counts the blobs it left out too: where it was imported, the
far side held them, so a chain of weekly bundles each carries only its own week's blobs."""

from __future__ import annotations

import hashlib
import json
import tarfile
from dataclasses import dataclass
from pathlib import Path

from .bundle_format import BaseInfo
from .common import UsageError

_BLOB_DIR = "blobs/sha256/"


@dataclass(frozen=True)
class BaseBundle:
    """A previous bundle: its identity, and every blob the far side holds once it was imported
    (those it carried, and those it had itself left out for its own base)."""

    name: str
    sha256: str
    blobs: frozenset[str]


def read_base(path: str) -> BaseBundle:
    """The base bundle at ``path``; UsageError when it is missing or not an OCI archive."""
    try:
        digest = _sha256_of(path)
        blobs: set[str] = set()
        index: bytes | None = None
        with tarfile.open(path, mode="r:") as tar:
            for member in tar:
                name = member.name.removeprefix("./")
                if name.startswith(_BLOB_DIR) and member.isfile():
                    blobs.add("sha256:" + name[len(_BLOB_DIR):])
                elif name == "index.json" and member.isfile():
                    handle = tar.extractfile(member)
                    index = handle.read() if handle is not None else None
    except (OSError, tarfile.TarError) as exc:
        raise UsageError(f"--base {path}: cannot read it as an OCI archive: {exc}") from None
    if index is None:
        raise UsageError(f"--base {path}: not an OCI archive (no index.json)")
    try:
        entries = json.loads(index)["manifests"]
        for entry in entries:
            earlier = BaseInfo.from_annotations(entry.get("annotations") or {})
            if earlier is not None:
                blobs.update(earlier.left_out)
    except (ValueError, KeyError, TypeError, AttributeError):
        raise UsageError(f"--base {path}: its index.json is not an OCI index") from None
    return BaseBundle(Path(path).name, digest, frozenset(blobs))


def _sha256_of(path: str) -> str:
    hasher = hashlib.sha256()
    with Path(path).open("rb") as file:
        for chunk in iter(lambda: file.read(1 << 20), b""):
            hasher.update(chunk)
    return hasher.hexdigest()
