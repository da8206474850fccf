"""``fanout metrics``' view of the bandwidth caps: what ``workers.bandwidth`` counts in Redis.

Families, each labelled by ``host`` and ``direction`` (``upload`` to a destination,
``download`` from a source)::

    fanout_bandwidth_bytes_per_second       bytes granted per second over the last
                                            RATE_WINDOW_S whole seconds
    fanout_bandwidth_cap_bytes_per_second   the cap (FANOUT_BANDWIDTH, as the workers read it)
    fanout_bandwidth_bytes_total            bytes granted under a cap
    fanout_bandwidth_wait_seconds_total     time copies spent waiting on the cap

A scrape is one pipelined round trip: three hashes and the window's per-second hashes.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable
from typing import Any

import redis
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from .bandwidth import BYTES_KEY, CAP_KEY, SECOND_PREFIX, WAIT_KEY
from .records import decode_map

log = logging.getLogger("fanout.metrics")

# Whole seconds averaged for the rate; the second under way is left out, being incomplete.
RATE_WINDOW_S = 5
_LABELS = ["host", "direction"]


class BandwidthCollector:
    """A prometheus_client collector for the caps' counters; reports nothing when Redis does
    not answer (``fanout_ledger_up`` says so)."""

    def __init__(self, ledger: redis.Redis[Any], *,
                 clock: Callable[[], float] = time.time) -> None:
        self.ledger = ledger
        self._clock = clock

    def collect(self) -> Iterable[Metric]:
        now = int(self._clock())
        seconds = [f"{SECOND_PREFIX}{now - i}" for i in range(1, RATE_WINDOW_S + 1)]
        try:
            with self.ledger.pipeline(transaction=False) as pipe:
                for key in (BYTES_KEY, WAIT_KEY, CAP_KEY, *seconds):
                    pipe.hgetall(key)
                nbytes, waits, caps, *window = (decode_map(m) for m in pipe.execute())
        except (redis.RedisError, OSError) as exc:
            log.warning("scrape: no bandwidth counters, Redis did not answer: %s",
                        type(exc).__name__)
            return []
        rate = GaugeMetricFamily(
            "fanout_bandwidth_bytes_per_second", "Bytes per second sent to (upload) or read "
            f"from (download) a capped host, over the last {RATE_WINDOW_S} s", labels=_LABELS)
        cap = GaugeMetricFamily("fanout_bandwidth_cap_bytes_per_second",
                                "The host's cap, bytes per second", labels=_LABELS)
        total = CounterMetricFamily("fanout_bandwidth_bytes",
                                    "Bytes sent to or read from a capped host", labels=_LABELS)
        waited = CounterMetricFamily("fanout_bandwidth_wait_seconds",
                                     "Time copies spent waiting on a host's cap",
                                     labels=_LABELS)
        fields = sorted(set(nbytes) | set(caps) | set(waits))
        for field in fields:
            direction, _, host = field.partition(" ")
            labels = [host, direction]
            in_window = sum(int(second.get(field) or 0) for second in window)
            rate.add_metric(labels, in_window / RATE_WINDOW_S)
            if field in caps:
                cap.add_metric(labels, float(caps[field]))
            total.add_metric(labels, int(nbytes.get(field) or 0))
            waited.add_metric(labels, int(waits.get(field) or 0) / 1_000_000)
        return [rate, cap, total, waited]
