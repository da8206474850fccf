"""What ``fanout export`` writes: the ledger's releases of a window, as images of a bundle.

The releases are ``fanout replay``'s (:func:`producer.replay_plan.landed_releases`): created in
the window, landed somewhere. Each (source repository, digest) is one image of the bundle, with
every tag whose newest release carried it to that digest (the tag order rule,
:func:`producer.replay_plan.tag_holders`), each tag with the release it goes with. An image
left with no tag is still carried, by digest, on behalf of its newest release.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from registry.reference import repository_of

from .replay_plan import landed_releases, release_tags, tag_holders
from .verify_plan import repository as named_repository

if TYPE_CHECKING:
    from workers.ledger_reader import LedgerReader
    from workers.records import Release


@dataclass(frozen=True)
class BundleImage:
    """One image to write into the bundle."""

    repository: str  # the source repository, as ref.name carries it: ghcr.io/acme/app
    digest: str
    tags: tuple[tuple[str, str], ...]  # (tag, the id of the release it goes with)
    releases: tuple[str, ...]  # every release of the window that carried it, oldest first

    @property
    def source(self) -> str:
        return f"{self.repository}@{self.digest}"

    @property
    def newest_release(self) -> str:
        return self.releases[-1]


def plan_bundle(
    ledger: LedgerReader, since: float, *, source_repo: str | None = None,
    destinations: Collection[str] | None = None,
) -> list[BundleImage]:
    """The images of the releases created at or after ``since`` (wall clock) that reached a
    destination: with ``destinations`` (repositories), one of those; with ``source_repo``,
    only that repository's. In the order the images were first released."""
    keep = None if destinations is None else _reached({named_repository(d, "--to")
                                                       for d in destinations})
    landed = landed_releases(ledger, since, source_repo=source_repo, keep=keep)
    holders = tag_holders(landed)
    found: dict[tuple[str, str], list[Release]] = {}
    for release, repository in landed:
        found.setdefault((repository, release.digest), []).append(release)
    return [_image(repository, digest, releases, holders)
            for (repository, digest), releases in found.items()]


def _image(repository: str, digest: str, releases: Sequence[Release],
           holders: dict[tuple[str, str], Release]) -> BundleImage:
    tags: dict[str, str] = {}
    for release in releases:
        for tag in release_tags(release):
            holder = holders[(repository, tag)]
            if holder.digest == digest:
                tags.setdefault(tag, holder.id)
    return BundleImage(repository, digest, tuple(tags.items()),
                       tuple(r.id for r in releases))


def _reached(wanted: set[str]) -> Callable[[Release], bool]:
    """Whether a release succeeded at one of the ``wanted`` repositories."""
    def reached(release: Release) -> bool:
        return any(record.state == "succeeded" and repository_of(name) in wanted
                   for name, record in release.destinations.items())
    return reached

