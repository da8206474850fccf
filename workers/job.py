"""The copy task's arguments, decoded and checked before anything is done with them.

A message is JSON from whoever sent it; a malformed one fails its destination at once with the
reason (it would be malformed on every retry too).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from registry.errors import InvalidReference
from registry.reference import parse_reference, parse_repository, validate_tag

TASK_NAME = "fanout.copy"
_REQUIRED = ("release_id", "source", "destination", "tags")
_OPTIONAL = ("referrers", "generation", "order")
_REFERRER_KEYS = frozenset({"enabled", "types"})
_RELEASE_ID_MAX = 200


class JobError(ValueError):
    """Arguments no attempt could succeed with; carries what could be read, for the ledger."""

    def __init__(self, reason: str, *, release_id: str | None = None,
                 destination: str | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.release_id = release_id
        self.destination = destination


@dataclass(frozen=True, slots=True)
class CopyJob:
    """One destination of one release: copy ``source`` (pinned) there and write ``tags``."""

    release_id: str
    source: str
    destination: str
    digest: str
    tags: tuple[str, ...]
    referrers: bool = True
    referrer_types: tuple[str, ...] = ()
    # Which sending of this destination the message is: a lost worker's destination handed
    # over, or an operator's retry, sends it again under a higher generation, and a message
    # of an older one (a late redelivery) does nothing.
    generation: int = 0
    # The release's place in the order of releases, as the producer sent it; the ledger's
    # word wins where it has one (0: not sent).
    order: int = 0


def parse_job(args: tuple[Any, ...] | list[Any], kwargs: Mapping[str, Any]) -> CopyJob:
    """Check the message's arguments; raise ``JobError`` naming the first problem."""
    release_id = kwargs.get("release_id")
    destination = kwargs.get("destination")
    known = {
        "release_id": release_id if _is_id(release_id) else None,
        "destination": destination if isinstance(destination, str) and destination else None,
    }

    def fail(reason: str) -> JobError:
        return JobError(f"{TASK_NAME} rejected: {reason}", **known)

    if args:
        raise fail(f"takes keyword arguments only, got {len(args)} positional")
    missing = [name for name in _REQUIRED if name not in kwargs]
    if missing:
        raise fail(f"missing {', '.join(missing)}")
    extra = sorted(set(kwargs) - {*_REQUIRED, *_OPTIONAL})
    if extra:
        # Most likely a credential someone tried to pass: say which keys, never their values.
        raise fail(f"unexpected arguments {', '.join(map(repr, extra))}")
    if not _is_id(release_id):
        raise fail("release_id must be a non-empty string of printable characters")
    for name in ("source", "destination"):
        if not isinstance(kwargs[name], str) or not kwargs[name]:
            raise fail(f"{name} must be a non-empty string")
    tags = kwargs["tags"]
    if not isinstance(tags, list | tuple) or not all(isinstance(t, str) for t in tags):
        raise fail("tags must be a list of strings")
    referrers, referrer_types = _referrers(kwargs.get("referrers"), fail)
    generation = kwargs.get("generation", 0)
    if not _whole(generation, 2**31):
        raise fail("generation must be a whole number from 0")
    order = kwargs.get("order", 0)
    if not _whole(order, 2**63):
        raise fail("order must be a whole number from 0")
    try:
        source = parse_reference(kwargs["source"])
        parse_repository(kwargs["destination"])
        for tag in tags:
            validate_tag(tag)
    except InvalidReference as exc:
        raise fail(str(exc)) from None
    if source.digest is None:
        raise fail(f"source {source} is not pinned by digest (repo@sha256:...); the producer "
                   "resolves tags before enqueueing")
    # The destination stays as sent: it is the ledger's key for this record.
    return CopyJob(
        release_id=str(release_id), source=str(source.pinned()), destination=kwargs["destination"],
        digest=source.digest, tags=tuple(dict.fromkeys(tags)), referrers=referrers,
        referrer_types=referrer_types, generation=generation, order=order,
    )


def _whole(value: Any, limit: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value < limit


def _is_id(value: Any) -> bool:
    return (isinstance(value, str) and 0 < len(value) <= _RELEASE_ID_MAX
            and value.isprintable() and " " not in value)


def _referrers(value: Any, fail: Callable[[str], JobError]) -> tuple[bool, tuple[str, ...]]:
    if value is None:
        return True, ()
    if not isinstance(value, dict) or set(value) - _REFERRER_KEYS:
        raise fail('referrers must be {"enabled": bool, "types": [str, ...]} or null')
    enabled = value.get("enabled", True)
    types = value.get("types") or []
    if not isinstance(enabled, bool):
        raise fail("referrers.enabled must be true or false")
    if not isinstance(types, list) or not all(isinstance(t, str) for t in types):
        raise fail("referrers.types must be a list of strings")
    return enabled, tuple(types)
