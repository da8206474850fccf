"""``fanout import --map SOURCE_PREFIX=DEST_PREFIX``: where each repository of a bundle goes.

A repository is mapped by the longest prefix that matches it in whole path components:
``ghcr.io/acme`` maps ``ghcr.io/acme/app`` and ``ghcr.io/acme`` itself, never
``ghcr.io/acmeco/app``. Every repository must be mapped before anything is pushed.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from registry.errors import InvalidReference
from registry.reference import Repository, parse_reference

from .common import UsageError


class UnmappedRepository(UsageError):
    """Repositories of the bundle that no ``--map`` prefix maps (nothing has been pushed)."""

    def __init__(self, repositories: Sequence[str]) -> None:
        self.repositories = tuple(repositories)
        super().__init__(
            f"no --map prefix maps {', '.join(self.repositories)}; nothing was pushed "
            f"(add --map SOURCE_PREFIX=DEST_PREFIX)")


@dataclass(frozen=True)
class PrefixMap:
    """One ``--map``: repositories under ``source`` go under ``destination``."""

    source: str
    destination: str

    def matches(self, repository: str) -> bool:
        return repository == self.source or repository.startswith(self.source + "/")

    def apply(self, repository: str) -> str:
        return self.destination + repository[len(self.source):]


def parse_maps(texts: Iterable[str]) -> list[PrefixMap]:
    """Each ``SOURCE_PREFIX=DEST_PREFIX``; UsageError naming a malformed or repeated one."""
    maps: dict[str, PrefixMap] = {}
    for text in texts:
        source, sep, destination = text.partition("=")
        source, destination = source.strip().rstrip("/"), destination.strip().rstrip("/")
        if not sep or not source or not destination:
            raise UsageError(f"--map {text!r}: expected SOURCE_PREFIX=DEST_PREFIX, "
                             f"e.g. ghcr.io/acme=registry.airgap/acme")
        for side in (source, destination):
            if any(c.isspace() for c in side) or "@" in side or "//" in side:
                raise UsageError(f"--map {text!r}: {side!r} is not a registry or repository "
                                 f"prefix")
        if source in maps:
            raise UsageError(f"--map {source}=... is given twice")
        maps[source] = PrefixMap(source, destination)
    return list(maps.values())


def map_repository(repository: str, maps: Sequence[PrefixMap]) -> str | None:
    """Where ``repository`` goes under the longest matching prefix; None if none matches."""
    matching = [m for m in maps if m.matches(repository)]
    if not matching:
        return None
    return max(matching, key=lambda m: len(m.source)).apply(repository)


def map_all(repositories: Iterable[str], maps: Sequence[PrefixMap]) -> dict[str, Repository]:
    """Every repository's destination; :class:`UnmappedRepository` naming all that have none,
    UsageError for a mapping that is not a valid repository name."""
    mapped: dict[str, Repository] = {}
    unmapped: list[str] = []
    for repository in dict.fromkeys(repositories):
        target = map_repository(repository, maps)
        if target is None:
            unmapped.append(repository)
            continue
        try:
            ref = parse_reference(target)
        except InvalidReference as exc:
            raise UsageError(f"--map sends {repository} to {target!r}, not a repository: "
                             f"{exc}") from None
        if ref.tag or ref.digest:
            raise UsageError(f"--map sends {repository} to {target!r}, not a repository "
                             f"(a tag or digest in a prefix)")
        mapped[repository] = ref.repository
    if unmapped:
        raise UnmappedRepository(unmapped)
    return mapped
