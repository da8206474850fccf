"""What the ledger holds, as plain data: a release, its destinations, each one's attempts.

Keys in Redis (each expires ``retention`` seconds after its release's last update)::

    fanout:release:<id>                      hash: source, digest, created_at, order, epoch,
                                             notified_epoch, trigger
    fanout:release:<id>:dests                sorted set: destinations, in the order given
    fanout:release:<id>:dest:<dest>          hash: one DestinationRecord; ``last_attempt``
                                             holds the newest finished attempt (JSON)
    fanout:release:<id>:dest:<dest>:history  list: one JSON Attempt per finished attempt
                                             before that one, oldest first
    fanout:releases                          sorted set: release ids by creation time
    fanout:running                           sorted set: "<id> <dest>" by heartbeat deadline
    fanout:release-order                     counter: the last release's place in the order

A release's ``order`` is its place among all releases, from one counter, fixed when it is
created: a retry keeps it, so a tag at a destination ends on the newest release that reached it
(``workers/tag_order.py``), whatever order the attempts finish in. A destination's
``superseded`` names, per tag, the newer release that held it when this one came to write it.

A destination's ``generation`` goes up each time its copy is sent again from outside Celery's own
retries (a lost worker's destination handed over, an operator's retry); a task carrying an older
generation is a stale redelivery and does nothing. A release's ``epoch`` goes up each time it
stops being final (a retry), so "notify once per final transition" is "once per epoch".

The newest finished attempt rides in its record's own hash (``last_attempt``), written by the
``HSET`` its transition makes anyway: a destination done in one attempt (most are) has no
history list at all, where each attempt's end cost an ``RPUSH``, an ``LTRIM``, and a ``PTTL``
and ``PEXPIRE`` to give a new list the release's lifetime. The next attempt's end moves it
into the list.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

STATES = ("queued", "running", "retrying", "succeeded", "failed")
FINAL_STATES = frozenset({"succeeded", "failed"})
RELEASES_KEY = "fanout:releases"
RUNNING_KEY = "fanout:running"
ORDER_KEY = "fanout:release-order"
PREFIX = "fanout:release:"
# How much history one destination keeps: a destination retried for a day stays readable.
HISTORY_LIMIT = 100
# The record's field holding its newest finished attempt (the rest are in the history list).
LAST_ATTEMPT = "last_attempt"


@dataclass(frozen=True)
class Attempt:
    """One finished attempt: who ran it, when, and how it ended."""

    attempt: int
    worker: str | None
    started_at: float | None
    ended_at: float
    outcome: str  # succeeded | retrying | failed | lost
    error: str | None = None
    error_type: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, text: str) -> Attempt | None:
        try:
            doc = json.loads(text)
            return cls(**{k: doc.get(k) for k in cls.__dataclass_fields__})
        except (ValueError, TypeError):
            return None  # a damaged entry hides itself, not the rest of the history

    @classmethod
    def from_dict(cls, doc: object, where: str = "attempt") -> Attempt:
        """An attempt from its :meth:`to_dict` form; raises :class:`DocumentError`."""
        fields = _Fields(doc, where)
        return cls(attempt=fields.integer("attempt"), worker=fields.text_or_none("worker"),
                   started_at=fields.number_or_none("started_at"),
                   ended_at=fields.number("ended_at"), outcome=fields.text("outcome"),
                   error=fields.text_or_none("error", None),
                   error_type=fields.text_or_none("error_type", None))


class Rounds:
    """What a record's state and counters say about its rounds of attempts (an operator's
    retry starts a new round: the task tier's bounds count from there)."""

    state: str
    attempts: int
    round_base: int
    round_at: float | None
    created_at: float

    @property
    def done(self) -> bool:
        return self.state in FINAL_STATES

    @property
    def round_attempts(self) -> int:
        """Attempts in the current round."""
        return self.attempts - self.round_base

    @property
    def round_started(self) -> float:
        return self.round_at if self.round_at is not None else self.created_at


@dataclass(frozen=True)
class DestinationRecord(Rounds):
    """One destination of a release, as the ledger last recorded it."""

    destination: str
    tags: tuple[str, ...]
    state: str
    attempts: int
    last_error: str | None
    error_type: str | None
    bytes: int
    seconds: float
    created_at: float
    updated_at: float
    started_at: float | None
    finished_at: float | None
    stats: dict[str, int]
    worker: str | None
    next_retry_at: float | None
    optional: bool = False
    generation: int = 0
    # The current round of retries: an operator's retry starts a new one, so the task tier's
    # bounds (attempts, age) count from there, while ``attempts`` and the history go on.
    round_base: int = 0
    round_at: float | None = None
    heartbeat_at: float | None = None
    history: tuple[Attempt, ...] = ()
    # Tags this release did not write because a newer release held them there: tag -> its id.
    superseded: dict[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        doc = asdict(self)
        doc["tags"] = list(self.tags)
        doc["history"] = [a.to_dict() for a in self.history]
        return doc

    @classmethod
    def from_dict(cls, doc: object, where: str = "destination") -> DestinationRecord:
        """A record from its :meth:`to_dict` form; raises :class:`DocumentError`."""
        f = _Fields(doc, where)
        return cls(
            destination=f.text("destination"), tags=tuple(f.texts("tags")),
            state=f.text("state"), attempts=f.integer("attempts"),
            last_error=f.text_or_none("last_error"), error_type=f.text_or_none("error_type"),
            bytes=f.integer("bytes"), seconds=f.number("seconds"),
            created_at=f.number("created_at"), updated_at=f.number("updated_at"),
            started_at=f.number_or_none("started_at"),
            finished_at=f.number_or_none("finished_at"),
            stats={str(k): int(v) for k, v in f.mapping("stats", int).items()},
            worker=f.text_or_none("worker"), next_retry_at=f.number_or_none("next_retry_at"),
            optional=f.flag("optional", False), generation=f.integer("generation", 0),
            round_base=f.integer("round_base", 0), round_at=f.number_or_none("round_at", None),
            heartbeat_at=f.number_or_none("heartbeat_at", None),
            history=tuple(Attempt.from_dict(item, f"{where}.history[{i}]")
                          for i, item in enumerate(f.items("history", []))),
            superseded=f.mapping("superseded", str, {}),
        )


@dataclass(frozen=True)
class Release:
    """A source digest and its destinations' records."""

    id: str
    source: str
    digest: str
    created_at: float
    destinations: dict[str, DestinationRecord]
    epoch: int = 0
    # Its place in the order of releases (0: from before releases had one, the oldest).
    order: int = 0
    # What made it: "enqueue", "api", "hook:KIND", "replay", "sync:MIRROR" ("": not recorded).
    trigger: str = ""

    @property
    def required(self) -> list[DestinationRecord]:
        """The destinations the release's outcome depends on (all of them if all are optional)."""
        required = [d for d in self.destinations.values() if not d.optional]
        return required or list(self.destinations.values())

    @property
    def done(self) -> bool:
        """Every required destination has succeeded or failed for good."""
        return all(d.done for d in self.required)

    @property
    def ok(self) -> bool:
        """Every required destination has succeeded."""
        return all(d.state == "succeeded" for d in self.required)

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "source": self.source,
            "digest": self.digest,
            "created_at": self.created_at,
            "order": self.order,
            "trigger": self.trigger,
            "done": self.done,
            "ok": self.ok,
            "destinations": {name: d.to_dict() for name, d in self.destinations.items()},
        }

    @classmethod
    def from_document(cls, doc: object) -> Release:
        """A release from its document (:meth:`to_dict`, ``release_document``): what
        ``fanout serve`` answers. Keys it does not know (``done``, ``exit_code``: derived) are
        ignored; a missing or mistyped one raises :class:`DocumentError` naming it."""
        found = doc.get("id") if isinstance(doc, Mapping) else None
        where = f"release {found}" if isinstance(found, str) else "release"
        f = _Fields(doc, where)
        return cls(
            id=f.text("id"), source=f.text("source"), digest=f.text("digest"),
            created_at=f.number("created_at"),
            destinations={name: DestinationRecord.from_dict(record, f"{where}.destinations.{name}")
                          for name, record in f.mapping("destinations", Mapping).items()},
            epoch=f.integer("epoch", 0), order=f.integer("order", 0),
            trigger=f.text_or_none("trigger", None) or "")


def release_key(release_id: str) -> str:
    return f"{PREFIX}{release_id}"


def dests_key(release_id: str) -> str:
    return f"{PREFIX}{release_id}:dests"


def dest_key(release_id: str, destination: str) -> str:
    return f"{PREFIX}{release_id}:dest:{destination}"


def history_key(release_id: str, destination: str) -> str:
    return f"{PREFIX}{release_id}:dest:{destination}:history"


def running_member(release_id: str, destination: str) -> str:
    # Neither a release id nor a repository name holds a space.
    return f"{release_id} {destination}"


def split_running_member(member: str) -> tuple[str, str] | None:
    release_id, _, destination = member.partition(" ")
    return (release_id, destination) if release_id and destination else None


def new_record(destination: str, tags: Sequence[str], now: float, *,
               optional: bool = False) -> dict[str, str]:
    return {
        "destination": destination, "tags": json.dumps(list(tags)), "state": "queued",
        "attempts": "0", "last_error": "", "error_type": "", "bytes": "0", "seconds": "0",
        "created_at": repr(now), "updated_at": repr(now), "started_at": "",
        "finished_at": "", "stats": "{}", "worker": "", "next_retry_at": "",
        "optional": "1" if optional else "0", "generation": "0", "round_base": "0",
        "round_at": "", "heartbeat_at": "", "task": "",
    }


def parse_record(destination: str, row: Mapping[str, str],
                 history: Sequence[str] = ()) -> DestinationRecord:
    return DestinationRecord(
        destination=row.get("destination") or destination,
        tags=tuple(json.loads(row.get("tags") or "[]")),
        state=row.get("state") or "queued",
        attempts=int(row.get("attempts") or 0),
        last_error=row.get("last_error") or None,
        error_type=row.get("error_type") or None,
        bytes=int(row.get("bytes") or 0),
        seconds=to_float(row.get("seconds")) or 0.0,
        created_at=to_float(row.get("created_at")) or 0.0,
        updated_at=to_float(row.get("updated_at")) or 0.0,
        started_at=to_float(row.get("started_at")),
        finished_at=to_float(row.get("finished_at")),
        stats={str(k): int(v) for k, v in json.loads(row.get("stats") or "{}").items()},
        worker=row.get("worker") or None,
        next_retry_at=to_float(row.get("next_retry_at")),
        optional=row.get("optional") == "1",
        generation=int(row.get("generation") or 0),
        round_base=int(row.get("round_base") or 0),
        round_at=to_float(row.get("round_at")),
        heartbeat_at=to_float(row.get("heartbeat_at")),
        history=_history(history, row.get(LAST_ATTEMPT)),
        superseded=_superseded(row.get("superseded")),
    )


def _history(listed: Sequence[str], last: str | None) -> tuple[Attempt, ...]:
    """The history list and the record's newest attempt, oldest first. Sorted by attempt
    number (stably), so a list a worker from before ``last_attempt`` appended to still reads
    in order."""
    entries = [a for a in (Attempt.from_json(t) for t in [*listed, *([last] if last else [])])
               if a is not None]
    return tuple(sorted(entries, key=lambda a: a.attempt))


def _superseded(raw: str | None) -> dict[str, str]:
    try:
        doc = json.loads(raw or "{}")
    except ValueError:
        return {}
    if not isinstance(doc, dict):
        return {}
    return {str(k): str(v) for k, v in doc.items()}


def text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def decode_map(row: Mapping[Any, Any]) -> dict[str, str]:
    return {text(k): text(v) for k, v in row.items()}


def to_float(value: str | None) -> float | None:
    return float(value) if value else None


class DocumentError(ValueError):
    """A release document lacks a field, or has one of the wrong type."""


_REQUIRED: Any = object()
_JSON_NAMES: dict[type, str] = {str: "a string", int: "a number", float: "a number",
                                bool: "true or false", list: "a list", Mapping: "an object"}


class _Fields:
    """Typed reads of one JSON object; each error names the field and where it is. A key
    given a default may be absent; one without must be there (``None`` where the type allows)."""

    def __init__(self, doc: object, where: str) -> None:
        if not isinstance(doc, Mapping):
            raise DocumentError(f"{where}: expected an object, got {doc!r:.60}")
        self.doc: Mapping[str, Any] = doc
        self.where = where

    def _get(self, key: str, kinds: tuple[type, ...], default: Any, *, nullable: bool) -> Any:
        if key not in self.doc:
            if default is _REQUIRED:
                raise DocumentError(f"{self.where}: {key!r} is missing")
            return default
        return _checked(self.doc[key], kinds, f"{self.where}.{key}", nullable=nullable)

    def text(self, key: str) -> str:
        return str(self._get(key, (str,), _REQUIRED, nullable=False))

    def text_or_none(self, key: str, default: str | None = _REQUIRED) -> str | None:
        value = self._get(key, (str,), default, nullable=True)
        return None if value is None else str(value)

    def integer(self, key: str, default: int = _REQUIRED) -> int:
        return int(self._get(key, (int,), default, nullable=False))

    def number(self, key: str) -> float:
        return float(self._get(key, (int, float), _REQUIRED, nullable=False))

    def number_or_none(self, key: str, default: float | None = _REQUIRED) -> float | None:
        value = self._get(key, (int, float), default, nullable=True)
        return None if value is None else float(value)

    def flag(self, key: str, default: bool = _REQUIRED) -> bool:
        return bool(self._get(key, (bool,), default, nullable=False))

    def texts(self, key: str) -> list[str]:
        return [_checked(item, (str,), f"{self.where}.{key}[{i}]")
                for i, item in enumerate(self.items(key))]

    def items(self, key: str, default: list[Any] = _REQUIRED) -> list[Any]:
        return list(self._get(key, (list,), default, nullable=False))

    def mapping(self, key: str, values: type,
                default: Mapping[str, Any] = _REQUIRED) -> dict[str, Any]:
        found: Mapping[str, Any] = self._get(key, (Mapping,), default, nullable=False)
        return {str(name): _checked(value, (values,), f"{self.where}.{key}.{name}")
                for name, value in found.items()}


def _checked(value: Any, kinds: tuple[type, ...], where: str, *, nullable: bool = False) -> Any:
    if value is None and nullable:
        return None
    # bool is an int to Python, never to JSON: true is no attempt count.
    if not isinstance(value, kinds) or (isinstance(value, bool) and bool not in kinds):
        names = " or ".join(dict.fromkeys(_JSON_NAMES.get(kind, kind.__name__)
                                          for kind in kinds))
        raise DocumentError(f"{where}: expected {names}{' or null' if nullable else ''}, "
                            f"got {value!r:.60}")
    return value
