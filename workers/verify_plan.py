"""What ``fanout verify`` checks and what it may repair, decided from the ledger alone, before
any registry is contacted: bad input is refused here (exit 2) and costs nothing.

Releases are the ones named, or those created within ``--since`` (as ``fanout replay`` picks
them: from the ledger's index of releases by creation time). ``--source-repo`` keeps the
releases whose source is in that repository; ``--to SET`` keeps, of each release, the
destinations that belong to the set (a release with none is left out).
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from registry.errors import InvalidReference
from registry.reference import parse_reference, repository_of

from .errors import ReleaseNotFound, UsageError

if TYPE_CHECKING:
    from .ledger_reader import LedgerReader
    from .records import Release


class RepairRefused(UsageError):
    """A release named for repair is still under way: its copies would race the repair's."""


@dataclass(frozen=True)
class Target:
    """A release and the destinations of it to verify, in the release's order."""

    release: Release
    destinations: tuple[str, ...]


def select(
    ledger: LedgerReader, release_ids: Sequence[str], since: float | None, *,
    source_repo: str | None = None, only: Collection[str] | None = None,
) -> list[Target]:
    """The releases to verify: ``release_ids`` (each must exist), or every one created at or
    after ``since`` (wall clock), narrowed by ``source_repo`` and ``only`` (repositories)."""
    if release_ids and since is not None:
        raise UsageError("give RELEASE ids or --since, not both")
    if not release_ids and since is None:
        raise UsageError("nothing to verify: give RELEASE ids or --since DURATION")
    wanted = repository(source_repo, "--source-repo") if source_repo else None
    keep = {repository(text, "--to") for text in only} if only is not None else None
    targets = []
    for release in _releases(ledger, release_ids, since):
        if wanted is not None and repository_of(release.source) != wanted:
            continue
        names = tuple(name for name in release.destinations
                      if keep is None or name in keep or repository_of(name) in keep)
        if names:
            targets.append(Target(release, names))
    return targets


def under_way(release: Release) -> list[str]:
    """Its destinations not final yet (queued, running, retrying), optional ones included."""
    return [name for name, record in release.destinations.items() if not record.done]


def hold_back(targets: Sequence[Target], *, named: bool) -> dict[str, str]:
    """Releases whose drift must not be repaired now, with why. A release named on the
    command line and still under way is refused (:class:`RepairRefused`); one found by
    ``--since`` is only held back, so a busy ledger does not stop the repair of the rest."""
    held = {}
    for target in targets:
        busy = under_way(target.release)
        if not busy:
            continue
        state = target.release.destinations[busy[0]].state
        why = f"still under way ({busy[0]} is {state})"
        if named:
            raise RepairRefused(f"release {target.release.id} is {why}: wait for it "
                                "(fanout status --wait), then verify --repair")
        held[target.release.id] = why
    return held


def repository(text: str, flag: str) -> str:
    """A repository as the ledger names it; :class:`UsageError` naming ``flag`` if bad."""
    try:
        return str(parse_reference(text.strip()).repository)
    except InvalidReference as exc:
        raise UsageError(f"{flag} {text!r}: {exc}") from None


def _releases(ledger: LedgerReader, release_ids: Sequence[str],
              since: float | None) -> list[Release]:
    if since is not None:
        found = [ledger.get(release_id) for release_id in ledger.since(since)]
        return [release for release in found if release is not None]  # expired meanwhile
    releases = []
    for release_id in dict.fromkeys(release_ids):
        release = ledger.get(release_id)
        if release is None:
            raise ReleaseNotFound.of(release_id)
        releases.append(release)
    return releases

