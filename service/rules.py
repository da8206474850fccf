"""Which pushes are releases, and to which destination sets: ``[[rules]]`` applied to pushes.

A rule's ``source`` is a lowercase glob of ``host/path`` matched (``fnmatchcase``) against the
pushed repository, canonical (``docker.io/library/x``); its ``tags`` are globs of the tag, none
meaning any. A push without a tag matches no rule: a multi-platform push sends each platform's
manifest by digest before the tagged index, and only the index is the release. Pushes of one
digest to one repository going to one set are one release, with every tag they carry.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from fnmatch import fnmatchcase

from .config import Rule
from .hook_events import Push, Skipped

__all__ = ["Planned", "group", "match", "matching_rules"]


@dataclass(frozen=True, slots=True)
class Planned:
    """One release to enqueue: ``repository@digest`` to set ``to``, with ``tags``."""

    to: str
    repository: str  # canonical host/path
    digest: str
    tags: tuple[str, ...]

    @property
    def source(self) -> str:
        return f"{self.repository}@{self.digest}"


def matching_rules(push: Push, rules: Sequence[Rule]) -> list[Rule]:
    """The rules ``push`` matches, in the config's order; none for a push without a tag."""
    if push.tag is None:
        return []
    tag = push.tag
    return [rule for rule in rules
            if fnmatchcase(push.name, rule.source)
            and (not rule.tags or any(fnmatchcase(tag, pattern) for pattern in rule.tags))]


def match(pushes: Iterable[Push], rules: Sequence[Rule],
          ) -> tuple[list[tuple[str, Push]], list[Skipped]]:
    """(set, push) for every rule a push matches, once per set; and the pushes matching none,
    with the reason."""
    matched: list[tuple[str, Push]] = []
    skipped: list[Skipped] = []
    seen: set[tuple[str, Push]] = set()
    for push in pushes:
        rules_found = matching_rules(push, rules)
        if push.tag is None:
            skipped.append(Skipped(str(push), "pushed by digest without a tag (a platform of an "
                                              "index, or untagged): not a release"))
        elif not rules_found:
            skipped.append(Skipped(str(push), "no [[rules]] entry matches this repository "
                                              "and tag"))
        for rule in rules_found:
            if (rule.to, push) not in seen:
                seen.add((rule.to, push))
                matched.append((rule.to, push))
    return matched, skipped


def group(matched: Iterable[tuple[str, Push]]) -> list[Planned]:
    """One release per (set, repository, digest), carrying the union of its tags in the order
    they came; every push must be pinned (have its digest) by now."""
    tags: dict[tuple[str, str, str], list[str]] = {}
    for to, push in matched:
        if push.digest is None or push.tag is None:
            raise ValueError(f"{push}: a push must be pinned and tagged to be released")
        found = tags.setdefault((to, push.name, push.digest), [])
        if push.tag not in found:
            found.append(push.tag)
    return [Planned(to, repository, digest, tuple(names))
            for (to, repository, digest), names in tags.items()]
