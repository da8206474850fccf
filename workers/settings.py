"""The worker's settings, read once from the environment at worker start (and by the producer).

=============================  ==========================  ========================================
variable                       default                     meaning
=============================  ==========================  ========================================
FANOUT_BROKER_URL              redis://localhost:6379/0    Celery broker (``redis://``, ``amqp://``,
                                                           ``sentinel://``: workers/connections.py)
FANOUT_LEDGER_URL              the broker, if Redis        Redis holding the release ledger
FANOUT_SENTINEL_MASTER         (none)                      the master's name, for ``sentinel://``
FANOUT_SENTINEL_PASSWORD       (none)                      the sentinels' own password, if any
FANOUT_TASK_MAX_RETRIES        8                           retries per destination after the first
FANOUT_TASK_MAX_AGE            3600                        seconds a destination keeps retrying
FANOUT_TASK_TIME_LIMIT         3600                        hard limit of one attempt (worker killed)
FANOUT_TASK_SOFT_TIME_LIMIT    limit - 60 (or 90%)         the copy is abandoned and retried
FANOUT_RETRY_BACKOFF           10                          first retry countdown bound, seconds
FANOUT_RETRY_BACKOFF_MAX       600                         longest retry countdown, seconds
FANOUT_LOCK_TTL                20                          the copy's lock lease: renewed while it
                                                           runs; a dead worker's lapses this soon
FANOUT_HEARTBEAT_INTERVAL      lock ttl / 4                how often a running copy renews it
FANOUT_REAPER_INTERVAL         5                           how often each worker looks for copies
                                                           whose heartbeat stopped, to hand over
FANOUT_LOCK_RETRY              10                          countdown while another copy holds it
FANOUT_RETENTION               604800 (7 days)             ledger retention after the last update
FANOUT_ROUTE_BY_REGISTRY       0                           1: one queue per destination registry
FANOUT_VISIBILITY_TIMEOUT      see below                   Redis broker redelivery timeout
FANOUT_BLOB_INDEX_TTL          86400 (a day)               how long a blob's location is kept as a
                                                           hint to mount from (workers/locations.py)
FANOUT_SPOOL_DIR               $TMPDIR/fanout-spool-UID    where the host's worker processes share
                                                           source blobs (registry/spool.py)
FANOUT_SPOOL_BYTES             2G                          the spool's budget; 0 turns it off
=============================  ==========================  ========================================

The worst case a message waits unacknowledged: a retry is published with a countdown of at most
``retry_backoff_max`` (or ``lock_retry``); the worker holds it, unacknowledged, until then, and
runs it for at most ``time_limit``. A Redis broker redelivers any message unacknowledged for
``visibility_timeout``, so it must be longer than ``max(retry_backoff_max, lock_retry) +
time_limit``, or a waiting retry would be delivered twice. The default adds five minutes of
margin; a smaller explicit value is refused.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from registry.envconfig import (
    DEFAULT_SPOOL_BYTES,
    ConfigError,
    default_spool_dir,
    env_number,
    spool_from_env,
)

from .connections import (
    REDIS_SCHEMES,
    SentinelOptions,
    is_sentinel_url,
    parse_sentinel_url,
    redact,
)

DEFAULT_BROKER_URL = "redis://localhost:6379/0"
_VISIBILITY_MARGIN = 300.0


@dataclass(frozen=True, slots=True)
class WorkerSettings:
    """Everything the workers (and the producer, for the broker and ledger) need to know."""

    broker_url: str = DEFAULT_BROKER_URL
    ledger_url: str = DEFAULT_BROKER_URL
    max_retries: int = 8
    max_age: float = 3600.0
    time_limit: float = 3600.0
    soft_time_limit: float = 3540.0
    retry_backoff: float = 10.0
    retry_backoff_max: float = 600.0
    lock_ttl: float = 20.0
    heartbeat_interval: float = 5.0
    reaper_interval: float = 5.0
    lock_retry: float = 10.0
    retention: float = 7 * 86400.0
    route_by_registry: bool = False
    visibility_timeout: float = 3600.0 + 600.0 + _VISIBILITY_MARGIN
    blob_index_ttl: float = 86400.0
    spool_dir: str = field(default_factory=default_spool_dir)
    spool_bytes: int = DEFAULT_SPOOL_BYTES
    sentinel_master: str | None = None
    sentinel_password: str | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        self._check_sentinel_urls()
        if self.soft_time_limit > self.time_limit:
            raise ConfigError(f"FANOUT_TASK_SOFT_TIME_LIMIT={self.soft_time_limit:g} exceeds "
                              f"FANOUT_TASK_TIME_LIMIT={self.time_limit:g}")
        if self.heartbeat_interval * 2 >= self.lock_ttl:
            # A renewal may be late by one interval and still land in time; two would not.
            raise ConfigError(f"FANOUT_LOCK_TTL={self.lock_ttl:g} must be more than twice "
                              f"FANOUT_HEARTBEAT_INTERVAL={self.heartbeat_interval:g}")
        if self.retry_backoff > self.retry_backoff_max:
            raise ConfigError(f"FANOUT_RETRY_BACKOFF={self.retry_backoff:g} exceeds "
                              f"FANOUT_RETRY_BACKOFF_MAX={self.retry_backoff_max:g}")
        if self.visibility_timeout <= self.worst_unacked:
            raise ConfigError(
                f"FANOUT_VISIBILITY_TIMEOUT={self.visibility_timeout:g} must exceed the longest "
                f"retry countdown plus FANOUT_TASK_TIME_LIMIT ({self.worst_unacked:g} s)")

    def _check_sentinel_urls(self) -> None:
        for name, url in (("FANOUT_BROKER_URL", self.broker_url),
                          ("FANOUT_LEDGER_URL", self.ledger_url)):
            if not is_sentinel_url(url):
                continue
            parse_sentinel_url(url, name)
            if not self.sentinel_master:
                raise ConfigError(f"{name}={redact(url)} is a Sentinel URL: set "
                                  "FANOUT_SENTINEL_MASTER to the name of the master the "
                                  "sentinels watch")

    @property
    def sentinel(self) -> SentinelOptions | None:
        """The master's name and the sentinels' password, when a URL is ``sentinel://``."""
        if not self.sentinel_master:
            return None
        return SentinelOptions(self.sentinel_master, self.sentinel_password)

    @property
    def worst_unacked(self) -> float:
        """Longest time a message can stay delivered but unacknowledged (see the module doc)."""
        return max(self.retry_backoff_max, self.lock_retry) + self.time_limit

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> WorkerSettings:
        """Read the ``FANOUT_*`` variables above; raise ``ConfigError`` naming a bad one."""
        broker = env.get("FANOUT_BROKER_URL", "").strip() or DEFAULT_BROKER_URL
        ledger = env.get("FANOUT_LEDGER_URL", "").strip() or (
            broker if broker.startswith(REDIS_SCHEMES) else DEFAULT_BROKER_URL)
        time_limit = env_number(env, "FANOUT_TASK_TIME_LIMIT", 3600.0, minimum=1)
        backoff_max = env_number(env, "FANOUT_RETRY_BACKOFF_MAX", 600.0, minimum=0)
        lock_retry = env_number(env, "FANOUT_LOCK_RETRY", 10.0, minimum=0)
        lock_ttl = env_number(env, "FANOUT_LOCK_TTL", 20.0, minimum=0.2)
        # Leave the copy a minute (or a tenth of a short limit) to give up cleanly.
        soft_default = max(time_limit - 60.0, time_limit * 0.9)
        return cls(
            broker_url=broker,
            ledger_url=ledger,
            max_retries=int(env_number(env, "FANOUT_TASK_MAX_RETRIES", 8, minimum=0)),
            max_age=env_number(env, "FANOUT_TASK_MAX_AGE", 3600.0, minimum=0),
            time_limit=time_limit,
            soft_time_limit=env_number(env, "FANOUT_TASK_SOFT_TIME_LIMIT", soft_default,
                                    minimum=1),
            retry_backoff=env_number(env, "FANOUT_RETRY_BACKOFF", 10.0, minimum=0),
            retry_backoff_max=backoff_max,
            lock_ttl=lock_ttl,
            heartbeat_interval=env_number(env, "FANOUT_HEARTBEAT_INTERVAL", lock_ttl / 4,
                                          minimum=0.05),
            reaper_interval=env_number(env, "FANOUT_REAPER_INTERVAL", 5.0, minimum=0.05),
            lock_retry=lock_retry,
            retention=env_number(env, "FANOUT_RETENTION", 7 * 86400.0, minimum=1),
            route_by_registry=_flag(env, "FANOUT_ROUTE_BY_REGISTRY"),
            visibility_timeout=env_number(
                env, "FANOUT_VISIBILITY_TIMEOUT",
                max(backoff_max, lock_retry) + time_limit + _VISIBILITY_MARGIN, minimum=1),
            blob_index_ttl=env_number(env, "FANOUT_BLOB_INDEX_TTL", 86400.0, minimum=1),
            spool_dir=spool_from_env(env)[0],
            spool_bytes=spool_from_env(env)[1],
            sentinel_master=env.get("FANOUT_SENTINEL_MASTER", "").strip() or None,
            # Not stripped: a password is taken exactly as given.
            sentinel_password=env.get("FANOUT_SENTINEL_PASSWORD") or None,
        )


def _flag(env: Mapping[str, str], name: str) -> bool:
    raw = env.get(name, "").strip().lower()
    if raw in ("", "0", "false", "no", "off"):
        return False
    if raw in ("1", "true", "yes", "on"):
        return True
    raise ConfigError(f"{name}={raw!r} is not 0 or 1")
