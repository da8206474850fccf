"""Prometheus metrics: counters every worker keeps in Redis, read at scrape time.

Counters live in Redis, not in a process, so every worker on every host adds to the same ones and
any number of exporters (``fanout metrics``) report one truth. :class:`MetricsObserver` writes them
inside the ledger's transition that ends an attempt (``Ledger(observer=...)``): a counter moves
exactly when the ledger records the attempt, never without it. Keys (they never expire; a counter
that went back to zero, after a ``FLUSHDB``, is a reset Prometheus understands)::

    fanout:metrics:attempts  hash: "<registry> <outcome> le=<bound>" -> attempts ended so
                             (ledger outcomes: succeeded, retrying, failed, lost) that took at
                             most <bound> (and more than the bound before it); "<registry>
                             <outcome> -" for those not timed (lost)
    fanout:metrics:bytes     hash: "<registry>" -> bytes sent by succeeded copies (written
                             only when there were some)
    fanout:metrics:seconds   hash: "<registry> sum" -> the seconds the timed attempts took
    fanout:metrics:copies    hash: "<registry> <outcome>" -> attempts ended so, and in
                             fanout:metrics:seconds "<registry> le=<bound>" and "<registry>
                             count": what workers before the attempts hash wrote, still added in

An ended attempt costs two commands (an ``HINCRBY`` of its one field in the attempts hash, an
``HINCRBYFLOAT`` of the sum), three if it sent bytes: the copies counter, the histogram's bucket
and its count are one field read three ways at scrape time, where they were three ``HINCRBY``s
(and a fourth for zero bytes) in every attempt's transaction.
    fanout:metrics:verify    hash: the last verification's findings (workers/verify_metrics.py)

:class:`LedgerCollector` turns those, the broker's queues and the ledger's recent releases into
metric families when Prometheus scrapes.
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import redis
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)

from registry.errors import InvalidReference
from registry.reference import parse_repository

from . import verify_metrics
from .records import RELEASES_KEY, Release, decode_map, dest_key, dests_key, parse_record, text
from .routing import DEFAULT_QUEUE

log = logging.getLogger("fanout.metrics")

ATTEMPTS_KEY = "fanout:metrics:attempts"
COPIES_KEY = "fanout:metrics:copies"
BYTES_KEY = "fanout:metrics:bytes"
SECONDS_KEY = "fanout:metrics:seconds"
# Upper bounds of fanout_copy_seconds, seconds: a small image's copy to a fast registry, up to an
# attempt at the default hard time limit (FANOUT_TASK_TIME_LIMIT=3600).
BUCKETS = (0.1, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0)
# The ledger's outcome of an attempt → the copies counter's: a lost worker's attempt is retried.
OUTCOMES = {"succeeded": "succeeded", "failed": "failed", "retrying": "retried",
            "lost": "retried"}
RELEASE_STATES = ("running", "done-ok", "done-failed")
# fanout_releases reads at most this many of the newest releases, so a scrape stays cheap.
RELEASE_LIMIT = 1000
# kombu's Redis transport: a queue's messages of priority p > 0 wait in "<queue>\x06\x16<p>",
# and every queue an exchange routes to is a member of "_kombu.binding.<exchange>".
_KOMBU_SEP = "\x06\x16"
_KOMBU_PRIORITIES = (3, 6, 9)
_KOMBU_BINDINGS = "_kombu.binding.*"
_KOMBU_UNACKED = "unacked"
# The bucket of an attempt not timed, in the attempts hash.
_UNTIMED = "-"


@functools.lru_cache(maxsize=1024)
def registry_of(destination: str) -> str:
    """The registry host of a destination repository (``host[:port]``)."""
    try:
        return parse_repository(destination).registry
    except InvalidReference:
        return destination.split("/", 1)[0] or "unknown"


def bucket_of(seconds: float) -> str:
    """The field suffix of the histogram bucket ``seconds`` falls in."""
    for bound in BUCKETS:
        if seconds <= bound:
            return f"le={bound:g}"
    return "le=+Inf"


class MetricsObserver:
    """Counts each attempt that ends, in the ledger's own transaction (a TransitionObserver)."""

    def attempt_ended(self, pipe: Any, destination: str, outcome: str, seconds: float | None,
                      nbytes: int) -> None:
        registry = registry_of(destination)
        # A lost attempt's duration is how long its death took to notice: not a copy's time.
        timed = outcome != "lost" and seconds is not None
        bucket = bucket_of(max(0.0, seconds)) if timed and seconds is not None else _UNTIMED
        pipe.hincrby(ATTEMPTS_KEY, f"{registry} {outcome} {bucket}", 1)
        if outcome == "succeeded" and nbytes > 0:
            pipe.hincrby(BYTES_KEY, registry, nbytes)
        if timed and seconds is not None:
            pipe.hincrbyfloat(SECONDS_KEY, f"{registry} sum", max(0.0, seconds))


class LedgerCollector:
    """A prometheus_client collector reading the counters, queues and releases from Redis.

    ``broker`` is the Redis broker's client, or None for another broker (no queue depths).
    When Redis does not answer, only ``fanout_ledger_up 0`` is reported.
    """

    def __init__(self, ledger: redis.Redis[Any], broker: redis.Redis[Any] | None, *,
                 retention: float, clock: Callable[[], float] = time.time) -> None:
        self.ledger = ledger
        self.broker = broker
        self.retention = retention
        self._clock = clock

    def collect(self) -> Iterable[Metric]:
        up = GaugeMetricFamily("fanout_ledger_up",
                               "1 when the ledger's Redis answered this scrape, else 0")
        try:
            families = self._ledger_families()
        except (redis.RedisError, OSError) as exc:
            log.warning("scrape: the ledger's Redis did not answer: %s", type(exc).__name__)
            up.add_metric([], 0)
            return [up]
        up.add_metric([], 1)
        families.append(up)
        if self.broker is not None:
            try:
                families += self._queue_families(self.broker)
            except (redis.RedisError, OSError) as exc:
                log.warning("scrape: the broker's Redis did not answer: %s", type(exc).__name__)
        return families

    # -- counters and releases ------------------------------------------------------------

    def _ledger_families(self) -> list[Metric]:
        with self.ledger.pipeline(transaction=False) as pipe:
            pipe.hgetall(ATTEMPTS_KEY)
            pipe.hgetall(COPIES_KEY)
            pipe.hgetall(BYTES_KEY)
            pipe.hgetall(SECONDS_KEY)
            pipe.hgetall(verify_metrics.VERIFY_KEY)
            attempts, copies, nbytes, seconds, verified = (decode_map(m)
                                                           for m in pipe.execute())
        _fold_attempts(attempts, copies, nbytes, seconds)
        return [*_copy_families(copies), _bytes_family(nbytes), _seconds_family(seconds),
                self._releases_family(), *verify_metrics.families(verified)]

    def _releases_family(self) -> Metric:
        family = GaugeMetricFamily("fanout_releases", "Releases in the ledger by state (the "
                                   f"newest {RELEASE_LIMIT} within retention)", labels=["state"])
        counts = dict.fromkeys(RELEASE_STATES, 0)
        for release in self._recent_releases():
            state = "running" if not release.done else "done-ok" if release.ok else "done-failed"
            counts[state] += 1
        for state, count in counts.items():
            family.add_metric([state], count)
        return family

    def _recent_releases(self) -> list[Release]:
        """The newest releases within retention, with each destination's state only: three
        round trips whatever their number."""
        oldest = self._clock() - self.retention
        ids = [text(i) for i in self.ledger.zrevrangebyscore(
            RELEASES_KEY, "+inf", oldest, start=0, num=RELEASE_LIMIT)]
        with self.ledger.pipeline(transaction=False) as pipe:
            for release_id in ids:
                pipe.zrange(dests_key(release_id), 0, -1)
            names = [[text(n) for n in found] for found in pipe.execute()]
        with self.ledger.pipeline(transaction=False) as pipe:
            for release_id, dests in zip(ids, names, strict=True):
                for name in dests:
                    pipe.hmget(dest_key(release_id, name), "state", "optional")
            rows = iter(pipe.execute())
        releases = []
        for release_id, dests in zip(ids, names, strict=True):
            records = {}
            for name in dests:
                state, optional = next(rows)
                if state is not None:  # expired under us
                    records[name] = parse_record(name, {"state": text(state),
                                                        "optional": text(optional or "0")})
            if records:
                releases.append(Release(id=release_id, source="", digest="", created_at=0.0,
                                        destinations=records))
        return releases

    # -- the broker -----------------------------------------------------------------------

    def _queue_families(self, broker: redis.Redis[Any]) -> list[Metric]:
        queues = sorted(_fanout_queues(broker))
        with broker.pipeline(transaction=False) as pipe:
            for queue in queues:
                pipe.llen(queue)
                for priority in _KOMBU_PRIORITIES:
                    pipe.llen(f"{queue}{_KOMBU_SEP}{priority}")
            pipe.hlen(_KOMBU_UNACKED)
            lengths = [int(n) for n in pipe.execute()]
        depth = GaugeMetricFamily("fanout_queue_depth", "Copy tasks waiting in a broker queue",
                                  labels=["queue"])
        per_queue = 1 + len(_KOMBU_PRIORITIES)
        for index, queue in enumerate(queues):
            depth.add_metric([queue], sum(lengths[index * per_queue:(index + 1) * per_queue]))
        unacked = GaugeMetricFamily(
            "fanout_unacked_messages", "Messages delivered to a worker and not yet acknowledged "
            "(copies running, and retries waiting for their countdown)")
        unacked.add_metric([], lengths[-1])
        return [depth, unacked]


def _fanout_queues(broker: redis.Redis[Any]) -> set[str]:
    """The default queue and every ``fanout.*`` queue kombu has bound, empty or not."""
    queues = {DEFAULT_QUEUE}
    keys = list(broker.scan_iter(match=_KOMBU_BINDINGS, count=1000))
    if keys:
        with broker.pipeline(transaction=False) as pipe:
            for key in keys:
                pipe.smembers(key)
            for members in pipe.execute():
                for member in members:
                    queue = text(member).rsplit(_KOMBU_SEP, 1)[-1]
                    if queue.startswith(f"{DEFAULT_QUEUE}."):
                        queues.add(queue)
    return queues


def _fold_attempts(attempts: Mapping[str, str], copies: dict[str, str],
                   nbytes: dict[str, str], seconds: dict[str, str]) -> None:
    """Add the attempts hash into the older hashes' shape: each field counts as copies of its
    outcome and, when timed, in its histogram bucket and count; a registry with a success has
    a bytes counter, zero if nothing was sent (no ``HINCRBY`` of zero is written)."""
    def add(into: dict[str, str], field: str, count: int) -> None:
        into[field] = str(int(into.get(field) or 0) + count)

    for field, value in attempts.items():
        parts = field.rsplit(" ", 2)
        if len(parts) != 3 or not parts[0]:
            continue
        registry, outcome, bucket = parts
        count = int(value)
        add(copies, f"{registry} {outcome}", count)
        if bucket != _UNTIMED:
            add(seconds, f"{registry} {bucket}", count)
            add(seconds, f"{registry} count", count)
        if outcome == "succeeded":
            nbytes.setdefault(registry, "0")


def _split(fields: Mapping[str, str]) -> Iterable[tuple[str, str, str]]:
    """``"<registry> <name>"`` fields as (registry, name, value)."""
    for field, value in fields.items():
        registry, _, name = field.rpartition(" ")
        if registry:
            yield registry, name, value


def _copy_families(copies: Mapping[str, str]) -> list[Metric]:
    totals: dict[str, dict[str, int]] = {}
    lost = 0
    for registry, outcome, value in _split(copies):
        counts = totals.setdefault(registry, dict.fromkeys(sorted(set(OUTCOMES.values())), 0))
        if outcome in OUTCOMES:
            counts[OUTCOMES[outcome]] += int(value)
        if outcome == "lost":
            lost += int(value)
    family = CounterMetricFamily("fanout_copies", "Copy attempts that ended, by destination "
                                 "registry and outcome (a lost worker's attempt counts as "
                                 "retried)", labels=["registry", "outcome"])
    for registry, counts in sorted(totals.items()):
        for outcome, count in counts.items():
            family.add_metric([registry, outcome], count)
    lost_family = CounterMetricFamily("fanout_lost_workers",
                                      "Copy attempts whose worker died (handed over)", value=lost)
    return [family, lost_family]


def _bytes_family(nbytes: Mapping[str, str]) -> Metric:
    family = CounterMetricFamily("fanout_bytes", "Bytes sent by succeeded copies, by "
                                 "destination registry", labels=["registry"])
    for registry, value in sorted(nbytes.items()):
        family.add_metric([registry], int(value))
    return family


def _seconds_family(fields: Mapping[str, str]) -> Metric:
    family = HistogramMetricFamily("fanout_copy_seconds", "How long copy attempts took (those "
                                   "that ended on their own), by destination registry",
                                   labels=["registry"])
    by_registry: dict[str, dict[str, str]] = {}
    for registry, name, value in _split(fields):
        by_registry.setdefault(registry, {})[name] = value
    for registry, row in sorted(by_registry.items()):
        family.add_metric([registry], _cumulative(row), float(row.get("sum") or 0))
    return family


def _cumulative(row: Mapping[str, str]) -> Sequence[tuple[str, float]]:
    buckets: list[tuple[str, float]] = []
    running = 0
    for bound in BUCKETS:
        running += int(row.get(f"le={bound:g}") or 0)
        buckets.append((repr(bound), running))  # 0.1, 1.0: as prometheus_client writes le
    # +Inf is the count, so attempts in a bucket no longer listed still add up.
    buckets.append(("+Inf", max(running, int(row.get("count") or 0))))
    return buckets
