"""What ``fanout verify`` concludes about each destination of a release, from the registries'
answers and the tag owners; and the report those verdicts add up to.

A destination the ledger says ``succeeded`` gets one of these states, the worst of its checks
(its content, then each of its tags):

- ``in place``: the content is there and every tag names it;
- ``superseded``: a tag was taken by a newer release (named); not drift;
- ``unreachable``: the registry could not be asked (refused, timed out, 5xx, 401/403);
- ``tag moved``: a tag names content no newer release put there (the digest found is named);
- ``missing``: the content is gone.

Drift (``tag moved``, ``missing``) ranks above ``unreachable``: what was seen is reported even
when another check of the same destination could not be made. A destination that never landed
(queued, running, retrying, failed) is ``not landed``: left to ``fanout retry``, never drift.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from registry.errors import RegistryError

    from .records import DestinationRecord, Release
    from .tag_order import TagOwner
    from .verify_heads import Answer, Key

IN_PLACE = "in place"
SUPERSEDED = "superseded"
UNREACHABLE = "unreachable"
TAG_MOVED = "tag moved"
MISSING = "missing"
NOT_LANDED = "not landed"
STATES = (IN_PLACE, SUPERSEDED, UNREACHABLE, TAG_MOVED, MISSING, NOT_LANDED)
DRIFT = frozenset({TAG_MOVED, MISSING})
_RANK = {IN_PLACE: 0, SUPERSEDED: 1, UNREACHABLE: 2, TAG_MOVED: 3, MISSING: 4}

EXIT_OK = 0
EXIT_DRIFT = 1
EXIT_UNCHECKED = 3


@dataclass(frozen=True, slots=True)
class TagVerdict:
    """One tag of a destination: its state, the digest it names (None: absent, or not
    known), the newer release holding it, or why it could not be checked."""

    tag: str
    state: str
    found: str | None = None
    holder: str | None = None
    error: str | None = None

    def text(self) -> str:
        if self.state == SUPERSEDED:
            return f"tag {self.tag} held by newer {self.holder}"
        if self.state == TAG_MOVED:
            # The whole digest: it is what an operator looks for at the registry.
            where = f"names {self.found}" if self.found else "is gone"
            return f"tag {self.tag} {where}"
        if self.state == UNREACHABLE:
            return f"tag {self.tag} not checked: {self.error}"
        return f"tag {self.tag}"


@dataclass(frozen=True, slots=True)
class Verdict:
    """One destination of one release, as verify found it."""

    release: str
    destination: str
    digest: str
    state: str
    detail: str
    optional: bool = False
    content: str = "unknown"  # present | absent | unknown (not asked, or no answer)
    tags: tuple[TagVerdict, ...] = ()

    @property
    def drift(self) -> bool:
        return self.state in DRIFT

    def to_dict(self) -> dict[str, Any]:
        return {
            "release": self.release, "destination": self.destination, "digest": self.digest,
            "state": self.state, "detail": self.detail, "drift": self.drift,
            "optional": self.optional, "content": self.content,
            "tags": {t.tag: {"state": t.state, "found": t.found, "holder": t.holder,
                             "error": t.error} for t in self.tags},
        }


@dataclass
class Report:
    """Every verdict of a run, what was sent again, and what was held back from repair."""

    verdicts: list[Verdict]
    checked_at: float
    repaired: dict[str, list[str]] = field(default_factory=dict)
    # Releases whose drift was not repaired, with why (still under way, say).
    held: dict[str, str] = field(default_factory=dict)

    @property
    def exit_code(self) -> int:
        """1 any drift, else 3 any destination not checked, else 0."""
        if any(v.drift for v in self.verdicts):
            return EXIT_DRIFT
        if any(v.state == UNREACHABLE for v in self.verdicts):
            return EXIT_UNCHECKED
        return EXIT_OK

    def exit_code_after_repair(self, waited: int) -> int:
        """The code once the repairs were waited for (``waited``: their ``status`` code).
        Drift that was not repaired is still drift; a destination not checked still counts."""
        if any(v.drift and v.destination not in self.repaired.get(v.release, ())
               for v in self.verdicts):
            return EXIT_DRIFT
        if waited != EXIT_OK:
            return waited
        return EXIT_UNCHECKED if any(v.state == UNREACHABLE for v in self.verdicts) else EXIT_OK

    def counts(self) -> dict[str, int]:
        found = dict.fromkeys(STATES, 0)
        for verdict in self.verdicts:
            found[verdict.state] += 1
        return {state: n for state, n in found.items() if n}

    def to_dict(self) -> dict[str, Any]:
        return {"checked_at": self.checked_at, "exit_code": self.exit_code,
                "counts": self.counts(), "destinations": [v.to_dict() for v in self.verdicts],
                "repaired": self.repaired, "held": self.held}


def tags_of(record: DestinationRecord) -> list[str]:
    """The tags a destination was given, and those it left to a newer release."""
    return list(dict.fromkeys([*record.tags, *record.superseded]))


def not_landed(release: Release, record: DestinationRecord) -> Verdict:
    why = "failed for good" if record.state == "failed" else "still under way"
    return Verdict(release.id, record.destination, release.digest, NOT_LANDED,
                   f"{record.state}: {why}; not checked (see fanout status, fanout retry)",
                   optional=record.optional)


def classify(release: Release, record: DestinationRecord, repository: str,
             answers: Mapping[Key, Answer],
             owners: Mapping[Key, TagOwner | None]) -> Verdict:
    """The verdict on a landed destination (``repository``: its canonical name)."""
    content = answers[(repository, release.digest)]
    tags = tuple(_tag(release, record, tag, answers[(repository, tag)],
                      owners.get((repository, tag))) for tag in tags_of(record))
    if content.error is not None:
        state, present = UNREACHABLE, "unknown"
    elif content.digest is None:
        state, present = MISSING, "absent"
    else:
        state, present = IN_PLACE, "present"
    state = max([state, *(t.state for t in tags)], key=_RANK.__getitem__)
    return Verdict(release.id, record.destination, release.digest, state,
                   _detail(release.digest, state, present, content.error, tags),
                   optional=record.optional, content=present, tags=tags)


def _tag(release: Release, record: DestinationRecord, tag: str, answer: Answer,
         owner: TagOwner | None) -> TagVerdict:
    if answer.digest == release.digest:
        return TagVerdict(tag, IN_PLACE, answer.digest)
    holder = _newer_holder(release, record, tag, owner)
    if holder is not None:
        return TagVerdict(tag, SUPERSEDED, answer.digest, holder=holder)
    if answer.error is not None:
        return TagVerdict(tag, UNREACHABLE, error=unchecked(answer.error))
    return TagVerdict(tag, TAG_MOVED, answer.digest)


def unchecked(error: RegistryError) -> str:
    """Why a check could not be made, worded alike for every check one cause stopped (a
    registry down, a credential refused): the kind of error, and its status or message."""
    kind = type(error).__name__
    return f"{kind} (HTTP {error.status})" if error.status else f"{kind}: {error.message}"


def _newer_holder(release: Release, record: DestinationRecord, tag: str,
                  owner: TagOwner | None) -> str | None:
    """The newer release that holds ``tag`` there, by its owner record; without one (it
    expired), by the ledger's word that this release left the tag to a newer one."""
    if owner is None:
        return record.superseded.get(tag)
    if owner.release != release.id and owner.order > release.order:
        return owner.release
    return None


def _detail(digest: str, state: str, present: str, error: RegistryError | None,
            tags: Sequence[TagVerdict]) -> str:
    parts = []
    if present == "absent":
        parts.append(f"{short_digest(digest)} is gone")
    parts += [t.text() for t in tags if t.state not in (IN_PLACE, UNREACHABLE)]
    # What could not be checked, each error once: a registry that is down fails every check.
    stopped: dict[str, list[str]] = {}
    if present == "unknown" and error is not None:
        stopped.setdefault(unchecked(error), []).append(short_digest(digest))
    for tag in tags:
        if tag.state == UNREACHABLE:
            stopped.setdefault(str(tag.error), []).append(f"tag {tag.tag}")
    parts += [f"{', '.join(what)} not checked: {why}" for why, what in stopped.items()]
    if state == IN_PLACE or not parts:
        placed = [t.tag for t in tags if t.state == IN_PLACE]
        parts.insert(0, short_digest(digest) + (f" tagged {', '.join(placed)}" if placed else ""))
    return "; ".join(parts)


def short_digest(digest: str) -> str:
    """The digest cut as ``fanout status`` prints it (``producer/output.py``)."""
    return digest[:19] if digest else "-"
