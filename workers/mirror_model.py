"""What a mirror is, what a sync plans and what a run did: the types every part of mirroring
shares (config, filter, planner, sync, scheduler, API), kept apart so none imports another to
name them.

A mirror keeps a source repository's tags (filtered) at destination repositories. ``fanout sync``
and the scheduled ``fanout.sync`` task list the source, filter its tags, compare with each
destination, and enqueue only the differences as releases (``docs/mirrors.md``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True, slots=True)
class Mirror:
    """One ``[[mirrors]]`` entry of ``fanout.toml``, checked and resolved.

    ``source`` and ``destinations`` are repositories written ``host/path`` (no tag, no digest),
    normalised as :class:`registry.reference.Repository` prints them (``docker.io/library/nginx``).
    """

    name: str
    source: str
    destinations: tuple[str, ...]
    # The set's name when the destinations came from ``to = "SET"``; None for ``destinations``.
    to: str | None = None
    # Destinations of that set marked ``optional = true``.
    optional: frozenset[str] = frozenset()
    tags: tuple[str, ...] = ()  # globs of tags to keep; empty: every tag
    exclude: tuple[str, ...] = ()  # globs dropped after ``tags``
    versions: str | None = None  # a version range as written (``>=1.25, <2``)
    newest: int | None = None  # keep only the newest N (by version) of what passed
    every: float | None = None  # seconds between scheduled runs; None: on demand only
    prune: bool = False
    prune_limit: int | None = None  # None: 10% of the mirror's tags at a destination, >= 1

    def to_json(self) -> dict[str, Any]:
        """A JSON-safe form, for a task message; :meth:`from_json` reads it back."""
        return {"name": self.name, "source": self.source,
                "destinations": list(self.destinations), "to": self.to,
                "optional": sorted(self.optional), "tags": list(self.tags),
                "exclude": list(self.exclude), "versions": self.versions,
                "newest": self.newest, "every": self.every, "prune": self.prune,
                "prune_limit": self.prune_limit}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Mirror:
        return cls(name=str(data["name"]), source=str(data["source"]),
                   destinations=tuple(data["destinations"]), to=data.get("to"),
                   optional=frozenset(data.get("optional", ())),
                   tags=tuple(data.get("tags", ())), exclude=tuple(data.get("exclude", ())),
                   versions=data.get("versions"), newest=data.get("newest"),
                   every=data.get("every"), prune=bool(data.get("prune", False)),
                   prune_limit=data.get("prune_limit"))


@dataclass(frozen=True, slots=True)
class VerifySchedule:
    """``[verify]`` of ``fanout.toml``: the scheduler runs ``fanout verify --since SINCE
    [--repair]`` every ``every`` seconds."""

    every: float
    since: float
    repair: bool = False


@dataclass(frozen=True, slots=True)
class DestinationPlan:
    """What one destination needs for the mirror to hold there."""

    destination: str
    add: Mapping[str, str] = field(default_factory=dict)  # tag -> digest: absent there
    update: Mapping[str, str] = field(default_factory=dict)  # tag -> digest: names another
    in_sync: tuple[str, ...] = ()  # tags already on the source's digest
    prune: tuple[str, ...] = ()  # tags to delete there (empty when held back)
    # Why tags that would be pruned are not (over the cap, a listing failed, ...); None: no hold.
    prune_held: str | None = None
    held_back: tuple[str, ...] = ()  # the tags that would have been pruned but for the hold
    error: str | None = None  # this destination could not be compared (it is left alone)
    # Tags an unfinished release of an earlier run is already sending there, on the source's
    # digest: not sent again while it runs.
    pending: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class PlannedRelease:
    """One release a sync enqueues: a source digest, and the tags it must carry where."""

    digest: str
    targets: tuple[tuple[str, tuple[str, ...]], ...]  # (destination, its tags)


@dataclass(frozen=True, slots=True)
class MirrorPlan:
    """A sync's plan: the filtered source (tag -> digest) against every destination."""

    mirror: str
    source: str
    kept: Mapping[str, str]  # filtered source tags -> digest
    destinations: tuple[DestinationPlan, ...]

    def releases(self) -> list[PlannedRelease]:
        """A release per source digest, carrying the tags that need it, to the destinations
        that need it; ordered by digest, tags sorted, so that a plan is sent the same way
        every time."""
        by_digest: dict[str, dict[str, list[str]]] = {}
        for dest in self.destinations:
            for tag, digest in (*dest.add.items(), *dest.update.items()):
                by_digest.setdefault(digest, {}).setdefault(dest.destination, []).append(tag)
        return [PlannedRelease(digest, tuple((where, tuple(sorted(tags)))
                                             for where, tags in sorted(targets.items())))
                for digest, targets in sorted(by_digest.items())]

    def counts(self) -> dict[str, int]:
        """Totals over the destinations: add, update, prune, in_sync, held_back, pending,
        errors."""
        return {"add": sum(len(d.add) for d in self.destinations),
                "update": sum(len(d.update) for d in self.destinations),
                "prune": sum(len(d.prune) for d in self.destinations),
                "in_sync": sum(len(d.in_sync) for d in self.destinations),
                "held_back": sum(len(d.held_back) for d in self.destinations),
                "pending": sum(len(d.pending) for d in self.destinations),
                "errors": sum(d.error is not None for d in self.destinations)}


@dataclass(frozen=True, slots=True)
class MirrorRun:
    """What one run of a mirror did: kept per mirror in Redis (``workers/mirror_runs.py``) for
    ``GET /v1/mirrors``, the release page, metrics and the overdue alert."""

    mirror: str
    trigger: str  # "cli", "schedule", "api"
    started_at: float
    finished_at: float
    ok: bool  # listed, compared and enqueued without error (releases may still be running)
    counts: Mapping[str, int] = field(default_factory=dict)  # MirrorPlan.counts(), + "pruned"
    releases: Sequence[str] = ()  # ids of the releases it enqueued
    pruned: Mapping[str, Sequence[str]] = field(default_factory=dict)  # destination -> tags
    error: str | None = None  # why it failed (the source could not be listed, ...)
    dry_run: bool = False
    listed: bool = True  # False: the source could not be listed, so nothing was planned

    def to_json(self) -> dict[str, Any]:
        return {"mirror": self.mirror, "trigger": self.trigger, "started_at": self.started_at,
                "finished_at": self.finished_at, "ok": self.ok, "counts": dict(self.counts),
                "releases": list(self.releases),
                "pruned": {k: list(v) for k, v in self.pruned.items()}, "error": self.error,
                "dry_run": self.dry_run, "listed": self.listed}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> MirrorRun:
        return cls(mirror=str(data["mirror"]), trigger=str(data.get("trigger", "")),
                   started_at=float(data["started_at"]), finished_at=float(data["finished_at"]),
                   ok=bool(data["ok"]), counts=dict(data.get("counts", {})),
                   releases=tuple(data.get("releases", ())),
                   pruned={k: tuple(v) for k, v in data.get("pruned", {}).items()},
                   error=data.get("error"), dry_run=bool(data.get("dry_run", False)),
                   listed=bool(data.get("listed", True)))


class MirrorBusy(RuntimeError):
    """Another run of the same mirror holds its lease: this one is skipped (no overlap)."""


class SourceUnlisted(RuntimeError):
    """The mirror's source could not be listed: nothing is planned, nothing pruned (a failed
    listing never counts as "no tags")."""
