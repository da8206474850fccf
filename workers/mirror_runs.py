"""The record of mirror runs in Redis: each mirror's last run, its last success, when its
current failure streak began, and a short history. ``sync_mirror`` records every run here;
``GET /v1/mirrors``, the release page, ``fanout metrics`` and the overdue alert
(``workers/mirror_alerts.py``) read it.

Keys (each expires ``retention`` seconds after the mirror's last run, so a mirror taken out of
``fanout.toml`` leaves nothing behind for long)::

    fanout:mirror:<name>           hash: last           JSON MirrorRun: the last run (not dry)
                                         last_success   finished_at of the last ok run
                                         failing_since  started_at of the first failed run of
                                                        the current streak; absent: not failing
                                         last_dry_run   JSON MirrorRun: the last dry run
    fanout:mirror:<name>:runs      list: JSON MirrorRuns, newest first, at most HISTORY_LIMIT
                                         (dry runs are not kept here)
    fanout:mirror:<name>:alerted   string: the outage notified (``workers/mirror_alerts.py``)
    fanout:mirrors                 sorted set: mirror names by their last run's finished_at;
                                   members older than ``retention`` are dropped at each record

A dry run writes nothing anywhere but its own ``last_dry_run`` field: it changes neither the
last run, the last success nor the failure streak, and is not in the history, so dry runs asked
for through the API can neither hide a failing mirror nor push real runs out of the history.

Every write of a run is one ``MULTI``/``EXEC``; every read is one round trip, whatever the
number of mirrors. Works with ``decode_responses`` on or off.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import redis

from .mirror_model import MirrorRun
from .records import text, to_float

PREFIX = "fanout:mirror:"
INDEX_KEY = "fanout:mirrors"
HISTORY_LIMIT = 20
# Long enough for a mirror run weekly (or paused for a while) to keep its record between runs.
DEFAULT_RETENTION = 30 * 86400.0
_FIELDS = ("last", "last_success", "failing_since", "last_dry_run")


def mirror_key(name: str) -> str:
    return f"{PREFIX}{name}"


def runs_key(name: str) -> str:
    return f"{PREFIX}{name}:runs"


def alerted_key(name: str) -> str:
    return f"{PREFIX}{name}:alerted"


@dataclass(frozen=True, slots=True)
class MirrorState:
    """What Redis holds about one mirror: its last run (and dry run), last success and the
    start of its current failure streak (None: not failing, or never run)."""

    name: str
    last: MirrorRun | None = None
    last_success: float | None = None
    failing_since: float | None = None
    last_dry_run: MirrorRun | None = None


class MirrorRuns:
    """Records and reads mirror runs (see the module's docstring for the keys)."""

    def __init__(self, redis_client: redis.Redis[Any], *,
                 retention: float = DEFAULT_RETENTION) -> None:
        self._redis = redis_client
        self.retention = retention

    @property
    def client(self) -> redis.Redis[Any]:
        """The Redis connection the records use, for state kept beside them (the alerts')."""
        return self._redis

    def record(self, run: MirrorRun) -> None:
        """Keep ``run``: the last run, success or streak, history; a dry run only as such."""
        name = run.mirror
        ttl = max(1, int(self.retention))
        document = json.dumps(run.to_json(), sort_keys=True, separators=(",", ":"))
        with self._redis.pipeline(transaction=True) as pipe:
            if run.dry_run:
                pipe.hset(mirror_key(name), "last_dry_run", document)
                pipe.expire(mirror_key(name), ttl)
                pipe.execute()
                return
            pipe.hset(mirror_key(name), "last", document)
            if run.ok:
                pipe.hset(mirror_key(name), "last_success", repr(run.finished_at))
                pipe.hdel(mirror_key(name), "failing_since")
            else:
                # Only the first failure of a streak sets it: the outage began then.
                pipe.hsetnx(mirror_key(name), "failing_since", repr(run.started_at))
            pipe.lpush(runs_key(name), document)
            pipe.ltrim(runs_key(name), 0, HISTORY_LIMIT - 1)
            pipe.zadd(INDEX_KEY, {name: run.finished_at})
            pipe.zremrangebyscore(INDEX_KEY, "-inf", run.finished_at - self.retention)
            for key in (mirror_key(name), runs_key(name), INDEX_KEY):
                pipe.expire(key, ttl)
            pipe.execute()

    def states(self, names: Iterable[str]) -> dict[str, MirrorState]:
        """Each named mirror's state (an empty one if never run or expired); one round trip."""
        wanted = list(dict.fromkeys(names))
        if not wanted:
            return {}
        with self._redis.pipeline(transaction=False) as pipe:
            for name in wanted:
                pipe.hmget(mirror_key(name), _FIELDS)
            rows = pipe.execute()
        return {name: _state(name, row) for name, row in zip(wanted, rows, strict=True)}

    def state(self, name: str) -> MirrorState:
        return self.states([name])[name]

    def runs(self, names: Iterable[str]) -> dict[str, MirrorRun | None]:
        """Each named mirror's last run (not dry), None if none is kept; one round trip."""
        return {name: state.last for name, state in self.states(names).items()}

    def last(self, name: str) -> MirrorRun | None:
        return self.state(name).last

    def last_success(self, name: str) -> float | None:
        """When the mirror's last ok run finished (Unix time)."""
        return self.state(name).last_success

    def failing_since(self, name: str) -> float | None:
        """When the first failed run of its current streak started; None while it is not
        failing."""
        return self.state(name).failing_since

    def history(self, name: str, limit: int = HISTORY_LIMIT) -> list[MirrorRun]:
        """The mirror's kept runs, newest first (dry runs are not kept)."""
        if limit <= 0:
            return []
        found = self._redis.lrange(runs_key(name), 0, limit - 1)
        return [run for run in (_run(item) for item in found) if run is not None]

    def recorded(self, now: float) -> list[str]:
        """Mirrors that ran within retention of ``now``, by name (those Redis knows of)."""
        oldest = now - self.retention
        return sorted(text(n) for n in self._redis.zrangebyscore(INDEX_KEY, oldest, "+inf"))


def _state(name: str, row: Sequence[Any]) -> MirrorState:
    last, last_success, failing_since, last_dry_run = (
        None if value is None else text(value) for value in row)
    return MirrorState(name=name, last=_run(last), last_success=_number(last_success),
                       failing_since=_number(failing_since), last_dry_run=_run(last_dry_run))


def _run(raw: Any) -> MirrorRun | None:
    if raw is None:
        return None
    try:
        return MirrorRun.from_json(json.loads(text(raw)))
    except (ValueError, TypeError, KeyError, AttributeError):
        return None  # a damaged record hides itself, not the mirror


def _number(value: str | None) -> float | None:
    try:
        return to_float(value)
    except ValueError:
        return None
