"""What ``fanout retry`` sends again: which destinations of a release, with which arguments.

By default every destination that failed for good; or the ones named, each of which must be in
the release and finished (a succeeded one may be copied again, say after someone deleted it
there). One still queued, running or retrying is refused: its copy is under way already.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from registry.errors import InvalidReference
from registry.reference import parse_reference

from .errors import UsageError

if TYPE_CHECKING:
    from .ledger import Ledger, Release

# The arguments a task was sent with that a retry sends again; the rest are the retry's own.
_KEPT = ("source", "tags", "referrers")


class RetryRefused(UsageError):
    """A named destination is not in the release, or has not finished."""


def pick(release: Release, named: Sequence[str] = ()) -> list[str]:
    """The destinations to send again: the ``named`` ones, else every one that failed for good."""
    if not named:
        return [name for name, record in release.destinations.items()
                if record.state == "failed"]
    picked: list[str] = []
    for text in named:
        name = _find(release, text)
        if name is None:
            known = ", ".join(release.destinations) or "none"
            raise RetryRefused(f"destination {text!r} is not in release {release.id} "
                               f"(its destinations: {known})")
        record = release.destinations[name]
        if not record.done:
            raise RetryRefused(f"destination {name} of release {release.id} is {record.state}: "
                               "only a destination that has finished can be retried")
        if name not in picked:
            picked.append(name)
    return picked


def task_for(ledger: Ledger, release: Release, destination: str,
             generation: int) -> dict[str, Any]:
    """The copy task's arguments for ``generation``: as the destination was last sent, else
    (a release written before the ledger kept them) rebuilt from its record."""
    sent = ledger.task_of(release.id, destination) or {}
    task: dict[str, Any] = {
        "source": release.source,
        "tags": list(release.destinations[destination].tags),
        "referrers": {"enabled": True, "types": []},
    }
    task.update({key: sent[key] for key in _KEPT if key in sent})
    if release.order:
        # A retry keeps the release's place in the order: it never undoes a newer one.
        task["order"] = release.order
    return {"release_id": release.id, "destination": destination, **task,
            "generation": generation}


def _find(release: Release, text: str) -> str | None:
    """The release's name for a destination given as ``host/repo``, or with a tag."""
    if text in release.destinations:
        return text
    try:
        key = str(parse_reference(text.strip()).repository)
    except InvalidReference:
        return None
    return key if key in release.destinations else None
