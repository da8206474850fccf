"""Mirror metrics for ``fanout metrics``, read from the runs' record
(``workers/mirror_runs.py``) at each scrape::

    fanout_mirror_last_success_timestamp_seconds{mirror}   when its last ok run finished
    fanout_mirror_tags{mirror,state}                       its last run's plan: in_sync, add,
                                                           update, prune, held_back
    fanout_mirror_last_run_ok{mirror}                      1 if its last run was ok, else 0

Which mirrors: those of ``fanout.toml`` when the exporter was given one (a mirror taken out of
the file leaves the metrics at once), else those Redis recorded a run of within its retention.
A mirror never run has no samples. One round trip per scrape (two without a config).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import redis
from prometheus_client.core import GaugeMetricFamily, Metric

from .mirror_runs import MirrorRuns

log = logging.getLogger("fanout.metrics")

TAG_STATES = ("in_sync", "add", "update", "prune", "held_back")


class MirrorCollector:
    """A prometheus_client collector of each mirror's last run; nothing when Redis is down
    (``fanout_ledger_up`` says so)."""

    def __init__(self, client: redis.Redis[Any], names: Sequence[str] | None = None, *,
                 clock: Callable[[], float] = time.time) -> None:
        """``names``: the configured mirrors; None: those Redis has records of."""
        self.runs = MirrorRuns(client)
        self.names = names
        self._clock = clock

    def collect(self) -> Iterable[Metric]:
        try:
            names = self.names if self.names is not None else self.runs.recorded(self._clock())
            states = self.runs.states(names)
        except (redis.RedisError, OSError) as exc:
            log.warning("scrape: no mirror metrics, Redis did not answer: %s",
                        type(exc).__name__)
            return []
        success = GaugeMetricFamily("fanout_mirror_last_success_timestamp_seconds",
                                    "When the mirror's last ok run finished (Unix time)",
                                    labels=["mirror"])
        tags = GaugeMetricFamily("fanout_mirror_tags", "Tags by state in the mirror's last "
                                 "run's plan, summed over its destinations",
                                 labels=["mirror", "state"])
        ok = GaugeMetricFamily("fanout_mirror_last_run_ok",
                               "1 if the mirror's last run was ok, else 0", labels=["mirror"])
        for name, state in sorted(states.items()):
            if state.last_success is not None:
                success.add_metric([name], state.last_success)
            if state.last is not None:
                ok.add_metric([name], 1 if state.last.ok else 0)
                for tag_state in TAG_STATES:
                    tags.add_metric([name, tag_state], int(state.last.counts.get(tag_state, 0)))
        return [success, tags, ok]
