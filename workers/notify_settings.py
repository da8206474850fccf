"""The settings of release-finished notifications (``workers/notifications.py``), read once at
worker start into a frozen :class:`NotifySettings`; ``fanout enqueue`` reads them too, to refuse a
bad one before anything is enqueued. Each error names its variable and never quotes a URL's
credentials or path.

::

    FANOUT_NOTIFY_URL           (none)   http(s) URLs, comma-separated; none: no notifications
    FANOUT_NOTIFY_ON            always   always | failure (only releases that are not ok)
    FANOUT_NOTIFY_FORMAT        json     json (the release document) | slack
    FANOUT_NOTIFY_SECRET        (none)   HMAC key of X-Fanout-Signature-256; none: unsigned
    FANOUT_NOTIFY_MAX_RETRIES   8        retries of one notification after its first POST
    FANOUT_NOTIFY_BACKOFF       5        first retry's countdown bound, seconds (full jitter)
    FANOUT_NOTIFY_BACKOFF_MAX   300      longest countdown; caps a receiver's Retry-After
    FANOUT_NOTIFY_TIMEOUT       10       connect / read / write timeout of one POST, seconds

Worst case with the defaults: 9 POSTs within about 16 minutes, then the notification is given up.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from urllib.parse import urlsplit

import httpx

from registry.envconfig import ConfigError, env_number

from .policy import TaskRetryPolicy

ON_CHOICES = ("always", "failure")
FORMATS = ("json", "slack")


@dataclass(frozen=True, slots=True)
class Target:
    """One ``FANOUT_NOTIFY_URL`` entry. Known elsewhere only by ``id`` and ``shown``."""

    url: str = field(repr=False)

    @property
    def id(self) -> str:
        """A stable, secret-free name of the URL: what a task message carries."""
        return hashlib.sha256(self.url.encode()).hexdigest()[:16]

    @property
    def shown(self) -> str:
        """``scheme://host[:port]/…``: fit for a log line (the path may be a credential)."""
        return _shown(self.url)


@dataclass(frozen=True, slots=True)
class NotifySettings:
    """Where, when and how release-finished notifications go."""

    targets: tuple[Target, ...] = ()
    on: str = "always"
    format: str = "json"
    secret: str | None = field(default=None, repr=False)
    max_retries: int = 8
    backoff: float = 5.0
    backoff_max: float = 300.0
    timeout: float = 10.0

    def __post_init__(self) -> None:
        if self.on not in ON_CHOICES:
            raise ConfigError(f"FANOUT_NOTIFY_ON={self.on!r} is not one of "
                              f"{', '.join(ON_CHOICES)}")
        if self.format not in FORMATS:
            raise ConfigError(f"FANOUT_NOTIFY_FORMAT={self.format!r} is not one of "
                              f"{', '.join(FORMATS)}")
        if self.backoff > self.backoff_max:
            raise ConfigError(f"FANOUT_NOTIFY_BACKOFF={self.backoff:g} exceeds "
                              f"FANOUT_NOTIFY_BACKOFF_MAX={self.backoff_max:g}")

    @property
    def enabled(self) -> bool:
        return bool(self.targets)

    @property
    def policy(self) -> TaskRetryPolicy:
        """The notification's retries: bounded by count; a ``Retry-After`` is a floor."""
        return TaskRetryPolicy(max_retries=self.max_retries, max_age=float("inf"),
                               backoff=self.backoff, backoff_max=self.backoff_max)

    def target(self, target_id: str) -> Target | None:
        return next((t for t in self.targets if t.id == target_id), None)

    def wants(self, release_ok: bool) -> bool:
        """Whether a release that finished ``ok`` (or not) is notified."""
        return self.on == "always" or not release_ok

    @classmethod
    def from_env(cls, env: Mapping[str, str], *,
                 visibility_timeout: float | None = None) -> NotifySettings:
        """Read the ``FANOUT_NOTIFY_*`` variables; raise ``ConfigError`` naming a bad one.

        ``visibility_timeout``: the broker's; a retry's countdown must stay below it."""
        settings = cls(
            targets=parse_targets(env.get("FANOUT_NOTIFY_URL", "")),
            on=env.get("FANOUT_NOTIFY_ON", "").strip().lower() or "always",
            format=env.get("FANOUT_NOTIFY_FORMAT", "").strip().lower() or "json",
            # Not stripped: a secret is taken exactly as given.
            secret=env.get("FANOUT_NOTIFY_SECRET") or None,
            max_retries=int(env_number(env, "FANOUT_NOTIFY_MAX_RETRIES", 8, minimum=0)),
            backoff=env_number(env, "FANOUT_NOTIFY_BACKOFF", 5.0, minimum=0),
            backoff_max=env_number(env, "FANOUT_NOTIFY_BACKOFF_MAX", 300.0, minimum=0),
            timeout=env_number(env, "FANOUT_NOTIFY_TIMEOUT", 10.0, minimum=0.1),
        )
        if (settings.enabled and visibility_timeout is not None
                and settings.backoff_max + settings.timeout >= visibility_timeout):
            # A waiting retry would outlast the visibility timeout and be delivered twice.
            raise ConfigError(
                f"FANOUT_NOTIFY_BACKOFF_MAX={settings.backoff_max:g} plus "
                f"FANOUT_NOTIFY_TIMEOUT={settings.timeout:g} must be less than "
                f"FANOUT_VISIBILITY_TIMEOUT={visibility_timeout:g}")
        return settings


def parse_targets(raw: str) -> tuple[Target, ...]:
    """The comma-separated URLs of ``FANOUT_NOTIFY_URL``; http(s) only, each once."""
    targets: dict[str, Target] = {}
    for number, entry in enumerate((e.strip() for e in raw.split(",")), start=1):
        if not entry:
            continue
        try:
            url = httpx.URL(entry)
        except httpx.InvalidURL:
            url = None
        if url is None or url.scheme not in ("http", "https") or not url.host:
            raise ConfigError(f"FANOUT_NOTIFY_URL: entry {number} ({_shown(entry)}) is not an "
                              "http:// or https:// URL")
        targets.setdefault(entry, Target(entry))
    return tuple(targets.values())


def _shown(url: str) -> str:
    parts = urlsplit(url)
    host = parts.netloc.rpartition("@")[2]
    if parts.scheme and host:
        return f"{parts.scheme}://{host}/…"
    # No scheme: the first part, without anything that looks like credentials.
    head = url.split("/", 1)[0].rpartition("@")[2][:40]
    return f"{head}/…" if "/" in url else head or "empty"
