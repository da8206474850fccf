"""What ``fanout replay`` sends: a backfill of recent releases to new destinations.

Every release created within the window that reached at least one destination counts; its
source digest is copied once, however many releases carried it, with every tag they carried
that no newer release of the window carried too: a tag goes with the release it had last, as
the tag order rule says, whatever order the replayed copies finish in.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from registry import envconfig
from registry.reference import repository_of

from .common import UsageError
from .verify_plan import repository as named_repository

if TYPE_CHECKING:
    from workers.ledger import Ledger, Release
    from workers.ledger_reader import LedgerReader


@dataclass(frozen=True)
class Replay:
    """One source digest to copy again: from where, with which tags, on behalf of which releases."""

    source: str  # repo@sha256:…, as the newest of its releases had it
    digest: str
    tags: tuple[str, ...]
    releases: tuple[str, ...] = field(default=())


def parse_duration(text: str) -> float:
    """``30s``, ``90m``, ``2h``, ``7d``, ``1w``, ``1h30m`` → seconds; UsageError naming it."""
    try:
        return envconfig.parse_duration(text)
    except envconfig.ConfigError as exc:
        raise UsageError(str(exc)) from None


def plan(ledger: Ledger, since: float, *, source_repo: str | None = None) -> list[Replay]:
    """One :class:`Replay` per source digest of the releases created at or after ``since``
    (wall clock) that succeeded somewhere; ``source_repo`` keeps only that repository's.
    In the order the digests were first released."""
    landed = landed_releases(ledger, since, source_repo=source_repo)
    last = {key: release.digest for key, release in tag_holders(landed).items()}
    found: dict[str, list[tuple[Release, str]]] = {}
    for release, repository in landed:
        found.setdefault(release.digest, []).append((release, repository))
    return [_replay(digest, releases, last) for digest, releases in found.items()]


def landed_releases(
    ledger: LedgerReader, since: float, *, source_repo: str | None = None,
    keep: Callable[[Release], bool] | None = None,
) -> list[tuple[Release, str]]:
    """The releases created at or after ``since`` that succeeded somewhere, each with its
    source repository, oldest first; ``source_repo`` and ``keep`` narrow them down."""
    wanted = named_repository(source_repo, "--source-repo") if source_repo else None
    landed: list[tuple[Release, str]] = []
    for release_id in ledger.since(since):
        release = ledger.get(release_id)
        if release is None or not _landed(release) or (keep is not None and not keep(release)):
            continue
        source = repository_of(release.source)
        if source is None or (wanted is not None and source != wanted):
            continue
        landed.append((release, source))
    return landed


def tag_holders(landed: Sequence[tuple[Release, str]]) -> dict[tuple[str, str], Release]:
    """(source repository, tag) -> the release that carried the tag last: the tag order rule."""
    last: dict[tuple[str, str], Release] = {}
    # In release order, not the clocks' (releases from before it had one keep their place).
    for release, repository in sorted(landed, key=lambda p: (p[0].order, p[0].created_at)):
        for tag in release_tags(release):
            last[(repository, tag)] = release
    return last


def release_tags(release: Release) -> list[str]:
    """Every tag the release carried, to any destination, each once."""
    return list(dict.fromkeys(tag for record in release.destinations.values()
                              for tag in record.tags))


def _replay(digest: str, releases: Sequence[tuple[Release, str]],
            last: dict[tuple[str, str], str]) -> Replay:
    tags = [tag for release, repository in releases for tag in release_tags(release)
            if last[(repository, tag)] == digest]
    return Replay(source=releases[-1][0].source, digest=digest,
                  tags=tuple(dict.fromkeys(tags)), releases=tuple(r.id for r, _ in releases))


def _landed(release: Release) -> bool:
    return any(record.state == "succeeded" for record in release.destinations.values())

