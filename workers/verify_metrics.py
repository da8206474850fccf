"""The last verification's findings per registry, kept in Redis beside the ledger so that any
exporter (``fanout metrics``) reports them. ``fanout verify`` and ``POST
/v1/releases/{id}/verify`` write them; :class:`workers.metrics.LedgerCollector` reads them.

One hash, never expiring (a registry no verification has looked at for long keeps its last
numbers; the timestamp says how old they are)::

    fanout:metrics:verify   "<registry> drift"        landed destinations found drifted
                            "<registry> unreachable"  landed destinations that could not be checked
                            "<registry> checked"      landed destinations checked
                            "<registry> at"           when (Unix time)

Each run overwrites the registries it checked, and only those: "the last verification" of a
registry is the last run that looked at any destination on it, however narrow.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import redis
from prometheus_client.core import GaugeMetricFamily, Metric

VERIFY_KEY = "fanout:metrics:verify"
_FIELDS = ("drift", "unreachable", "checked")


@dataclass
class RegistryFindings:
    """One registry's tally in one verification."""

    drift: int = 0
    unreachable: int = 0
    checked: int = 0


def record(client: redis.Redis[Any], findings: Mapping[str, RegistryFindings],
           at: float) -> None:
    """Store one run's findings, one registry's fields at once (a scrape never sees half)."""
    if not findings:
        return
    fields: dict[str, str] = {}
    for registry, found in findings.items():
        fields.update({f"{registry} {name}": str(getattr(found, name)) for name in _FIELDS})
        fields[f"{registry} at"] = repr(at)
    client.hset(VERIFY_KEY, mapping=fields)  # type: ignore[arg-type]  # str values are fine


def families(fields: Mapping[str, str]) -> Iterable[Metric]:
    """The gauges, from the hash as read (decoded)."""
    drift = GaugeMetricFamily("fanout_verify_drift", "Destinations the last verification found "
                              "drifted (tag moved, content missing), by registry",
                              labels=["registry"])
    unreachable = GaugeMetricFamily("fanout_verify_unreachable", "Destinations the last "
                                    "verification could not check, by registry",
                                    labels=["registry"])
    at = GaugeMetricFamily("fanout_verify_last_timestamp_seconds", "When a verification last "
                           "checked a destination on the registry", labels=["registry"])
    gauges = {"drift": drift, "unreachable": unreachable, "at": at}
    for field, value in sorted(fields.items()):
        registry, _, name = field.rpartition(" ")
        if registry and name in gauges:
            try:
                gauges[name].add_metric([registry], float(value))
            except ValueError:
                continue  # a damaged field shows nothing rather than failing the scrape
    return [drift, unreachable, at]
