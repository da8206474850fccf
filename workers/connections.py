"""Redis clients for the ledger, locks and holds, from the URL the broker or ledger is given.

``redis://``, ``rediss://`` and ``unix://`` are redis-py's own. A Redis watched by Sentinel,
which may fail over to a replica, is named by its sentinels, in kombu's form::

    sentinel://[[user]:password@]host[:port][;sentinel://host[:port]...][/db]

The password (and user, and db) are the master's, read from the first sentinel as kombu reads
them; later entries may repeat them, not differ. The master's name comes from
``FANOUT_SENTINEL_MASTER``; the sentinels' own password, when they ask for one (``requirepass``
in sentinel.conf), from ``FANOUT_SENTINEL_PASSWORD``. Both feed kombu (``master_name``,
``sentinel_kwargs``) and redis-py (``Sentinel(...).master_for``), so the broker and the ledger
find the same master.

A client asks the sentinels for the master's address each time it connects, so after a
failover its next connection (a retry of the command that failed) reaches the new master. The
caller's ``retry`` is what rides out the switch; a sentinel that is down is skipped at once.

Passwords stay out of what this module shows: :func:`redact` masks them in a URL (every entry
of a sentinel list), :func:`scrub` removes them from a driver's message, and errors raised
here never quote them.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote, urlsplit

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry
from redis.sentinel import Sentinel

from registry.envconfig import ConfigError

SENTINEL_SCHEME = "sentinel://"
REDIS_SCHEMES = ("redis://", "rediss://", "unix://", SENTINEL_SCHEME)
DEFAULT_SENTINEL_PORT = 26379
MASK = "**"
_PASSWORD_PARAM = re.compile(r"(?i)([?&]password=)([^&#]*)")


@dataclass(frozen=True, slots=True)
class SentinelOptions:
    """What a ``sentinel://`` URL leaves out: the master's name and the sentinels' password."""

    master: str
    password: str | None = field(default=None, repr=False)


@dataclass(frozen=True, slots=True)
class SentinelURL:
    """A parsed ``sentinel://`` URL: the sentinels, and the master's db and credentials."""

    sentinels: tuple[tuple[str, int], ...]
    db: int = 0
    username: str | None = None
    password: str | None = field(default=None, repr=False)


def is_redis_url(url: str) -> bool:
    """A Redis the ledger can live in (and a Redis broker): Sentinel counts."""
    return url.startswith(REDIS_SCHEMES)


def is_sentinel_url(url: str) -> bool:
    return url.startswith(SENTINEL_SCHEME)


def parse_sentinel_url(url: str, name: str = "the URL") -> SentinelURL:
    """The sentinels and master credentials of ``url``; ``ConfigError`` (naming ``name``, never
    the password) when it is malformed."""
    shown = redact(url)
    sentinels: list[tuple[str, int]] = []
    first: tuple[int, str | None, str | None] | None = None
    for entry in url.split(";"):
        entry = entry.strip()
        if not entry.startswith(SENTINEL_SCHEME):
            raise ConfigError(f"{name}={shown}: every entry must be sentinel://host[:port]")
        try:
            parts = urlsplit(entry)
            port = parts.port or DEFAULT_SENTINEL_PORT
        except ValueError:
            raise ConfigError(f"{name}={shown}: a sentinel's port is not a number") from None
        if not parts.hostname:
            raise ConfigError(f"{name}={shown}: a sentinel has no host")
        if parts.query or parts.fragment:
            raise ConfigError(f"{name}={shown}: a sentinel URL takes no options; the master's "
                              "name goes in FANOUT_SENTINEL_MASTER")
        db = _db(parts.path, name, shown)
        creds = (db, _unquoted(parts.username), _unquoted(parts.password))
        if first is None:
            first = creds
        elif (db and db != first[0]) or any(c is not None and c != f
                                            for c, f in zip(creds[1:], first[1:], strict=True)):
            raise ConfigError(f"{name}={shown}: give the master's password, user and db on the "
                              "first sentinel (the broker reads them from there); the others "
                              "may only repeat them")
        sentinels.append((parts.hostname, port))
    assert first is not None  # split() gives at least one entry
    return SentinelURL(tuple(sentinels), db=first[0], username=first[1], password=first[2])


# Redis on the workers' network answers in a millisecond; one that takes this long is as good
# as down for advice (a rate-limit hold, a blob's location, a bandwidth grant).
ADVISORY_TIMEOUT_S = 0.5


def advisory_client(url: str, sentinel: SentinelOptions | None = None) -> redis.Redis[Any]:
    """A client for what only advises a copy (holds, blob locations, bandwidth caps): short
    timeouts and no retries, unlike the ledger's client, which rides out a Redis restart; the
    caller treats an error as "no advice" and stays quiet for a while."""
    return redis_client(url, sentinel, decode_responses=True,
                        socket_connect_timeout=ADVISORY_TIMEOUT_S,
                        socket_timeout=ADVISORY_TIMEOUT_S, retry=Retry(NoBackoff(), 0))


def redis_client(url: str, sentinel: SentinelOptions | None = None,
                 **options: Any) -> redis.Redis[Any]:
    """A client for ``url`` with ``options`` (timeouts, retry, decoding) as the caller gives
    them; for ``sentinel://``, one that follows the master through a failover."""
    if not is_sentinel_url(url):
        return redis.Redis.from_url(url, **options)
    if sentinel is None:
        raise ConfigError(f"{redact(url)} is a Sentinel URL: set FANOUT_SENTINEL_MASTER to the "
                          "name of the master the sentinels watch")
    target = parse_sentinel_url(url)
    # A sentinel that does not answer is skipped for the next one at once: the command's own
    # retry (the caller's) is what waits for a failover to finish.
    sentinel_kwargs: dict[str, Any] = {
        k: v for k, v in options.items() if k.startswith("socket_")}
    sentinel_kwargs["retry"] = Retry(NoBackoff(), 0)
    if sentinel.password is not None:
        sentinel_kwargs["password"] = sentinel.password
    manager = Sentinel(list(target.sentinels), sentinel_kwargs=sentinel_kwargs)
    client: redis.Redis[Any] = manager.master_for(
        sentinel.master, db=target.db, username=target.username, password=target.password,
        **options)
    return client


def broker_transport_options(url: str, sentinel: SentinelOptions | None) -> dict[str, Any]:
    """kombu's transport options a broker at ``url`` needs beyond the usual: for Sentinel,
    ``master_name`` and (when the sentinels want one) their password."""
    if not is_sentinel_url(url) or sentinel is None:
        return {}
    options: dict[str, Any] = {"master_name": sentinel.master}
    if sentinel.password is not None:
        options["sentinel_kwargs"] = {"password": sentinel.password}
    return options


def redact(url: str) -> str:
    """``url`` with every password masked (each entry of a ``;`` list, and ``?password=``)."""
    return ";".join(_redact_entry(entry) for entry in url.split(";"))


def scrub(message: str, *urls: str, secrets: tuple[str | None, ...] = ()) -> str:
    """``message`` with the passwords of ``urls`` (and ``secrets``) removed: driver messages
    sometimes echo the URL or the credentials they were given."""
    for url in urls:
        if url:
            message = message.replace(url, redact(url))
    for secret in sorted({s for u in urls for s in _secrets(u)} | {s for s in secrets if s},
                         key=len, reverse=True):
        message = message.replace(secret, MASK)
    return message


def error_text(exc: BaseException) -> str:
    """A driver error, short: redis-py's "no master" error quotes every sentinel client's repr
    (hundreds of characters each); the first clause says it all."""
    text = str(exc)
    if text.startswith("No master found for "):
        return text.split(" : ", 1)[0] + " (no sentinel answered, or none knows that name)"
    return text


def _redact_entry(entry: str) -> str:
    scheme, sep, rest = entry.partition("://")
    if not sep:
        return entry
    end = min((i for i in (rest.find(c) for c in "/?#") if i >= 0), default=len(rest))
    netloc, tail = rest[:end], rest[end:]
    userinfo, at, hostport = netloc.rpartition("@")
    if at:
        user, colon, _ = userinfo.partition(":")
        # A lone userinfo may be a password typed without its colon: mask it too.
        netloc = f"{user}:{MASK}@{hostport}" if colon else f"{MASK}@{hostport}"
    return f"{scheme}://{netloc}{_PASSWORD_PARAM.sub(lambda m: m.group(1) + MASK, tail)}"


def _secrets(url: str) -> set[str]:
    found: set[str] = set()
    for entry in url.split(";"):
        _, sep, rest = entry.partition("://")
        if not sep:
            continue
        end = min((i for i in (rest.find(c) for c in "/?#") if i >= 0), default=len(rest))
        userinfo, at, _ = rest[:end].rpartition("@")
        if at:
            user, colon, password = userinfo.partition(":")
            found.update({password, unquote(password)} if colon else {user, unquote(user)})
        for match in _PASSWORD_PARAM.finditer(rest[end:]):
            found.update({match.group(2), unquote(match.group(2))})
    return {s for s in found if s}


def _db(path: str, name: str, shown: str) -> int:
    text = path.strip("/")
    if not text:
        return 0
    if not text.isdigit():
        raise ConfigError(f"{name}={shown}: the database must be a number, not {text!r}")
    return int(text)


def _unquoted(value: str | None) -> str | None:
    return unquote(value) if value else None
