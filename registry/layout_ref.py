"""Where an image can be besides a registry: skopeo's ``oci:DIR[:REF]`` and
``oci-archive:FILE[:REF]``, parsed.

A leaf beside :mod:`registry.reference` rather than a module of :mod:`registry.layout`:
``fanout copy`` asks it of every argument, and a registry-to-registry copy then loads none of
the layout package (its store, tar index, archive writer, tarfile and uuid).

``REF`` is the ``org.opencontainers.image.ref.name`` annotation of an ``index.json`` entry. As
skopeo does, the text after the last ``:`` is the REF, unless that leaves a path ending in
``/`` or it holds a ``/`` (``oci:/data/x:y/z`` is the path ``/data/x:y/z``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from .errors import NotALayout

Kind = Literal["oci", "oci-archive"]
_PREFIXES: tuple[tuple[str, Kind], ...] = (("oci-archive:", "oci-archive"), ("oci:", "oci"))


@dataclass(frozen=True, slots=True)
class LayoutRef:
    """A parsed ``oci:`` / ``oci-archive:`` reference: the kind, the path, the REF if given."""

    kind: Kind
    path: Path
    ref: str | None = None

    @property
    def archive(self) -> bool:
        return self.kind == "oci-archive"

    def __str__(self) -> str:
        ref = f":{self.ref}" if self.ref is not None else ""
        return f"{self.kind}:{self.path}{ref}"


def parse_place(text: str) -> LayoutRef | None:
    """``oci:DIR[:REF]`` / ``oci-archive:FILE[:REF]`` as a LayoutRef; None for anything else
    (a registry reference). Raises NotALayout for an empty path or REF."""
    found = [(prefix, kind) for prefix, kind in _PREFIXES if text.startswith(prefix)]
    if not found:
        return None
    prefix, kind = found[0]
    rest = text[len(prefix):]
    path, ref = rest, None
    head, colon, tail = rest.rpartition(":")
    if colon and "/" not in tail and head and not head.endswith("/"):
        path, ref = head, tail
        if not ref:
            raise NotALayout(f"{text!r}: the REF after ':' is empty")
    if not path:
        raise NotALayout(f"{text!r}: no path after {prefix!r}")
    return LayoutRef(kind, Path(path), ref)
