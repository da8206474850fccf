"""Bandwidth caps: which host gets how many bytes per second, read from ``FANOUT_BANDWIDTH``.

::

    FANOUT_BANDWIDTH="harbor.dr.example=40MiB,*.partner.example=10MiB,source:docker.io=20MiB"

An entry caps the uploads to a destination host; one with the ``source:`` prefix caps the
downloads from a source host. Patterns are globs (``fnmatch``) matched against ``host[:port]``
and the bare host name, so ``harbor.dr.example`` also caps ``harbor.dr.example:5000``. Each
matching host has a cap of its own (two partners under ``*.partner.example`` get 10 MiB/s
each). An exact name wins over a glob; among globs, the first written wins.

A leaf: the caps say how fast, a :class:`registry.throttle.Throttle` keeps to them.
"""

from __future__ import annotations

import fnmatch
import functools
import re
from dataclasses import dataclass
from typing import Literal

from .hosts import bare_hostname, canonical_host

Direction = Literal["upload", "download"]
UPLOAD: Direction = "upload"
DOWNLOAD: Direction = "download"
SOURCE_PREFIX = "source:"

_SIZE = re.compile(r"(\d+(?:\.\d+)?)\s*([KMGT]?)(I?B)?(?:/S)?", re.ASCII)
_SCALE = {"": 0, "K": 1, "M": 2, "G": 3, "T": 4}
_HOST = re.compile(r"[A-Za-z0-9.*?\[\]:_-]+", re.ASCII)


class BandwidthError(ValueError):
    """An entry of ``FANOUT_BANDWIDTH`` that cannot be used; the message names it."""


def parse_rate(text: str) -> int:
    """Bytes per second from ``40MiB``, ``10MB``, ``500KiB``, ``1.5G``, ``1048576``: ``KiB``
    and ``KB`` alike are powers of 1024 (as ``FANOUT_CHUNK_SIZE`` reads them)."""
    found = _SIZE.fullmatch(text.strip().upper())
    if found is None:
        raise BandwidthError(f"{text!r} is not a rate (try 40MiB, 500KiB or 1048576)")
    number, unit, _ = found.groups()
    value = int(float(number) * 1024 ** _SCALE[unit])
    if value <= 0:
        raise BandwidthError(f"{text!r} must be more than zero bytes per second")
    return value


@dataclass(frozen=True, slots=True)
class Cap:
    """One entry: uploads to (or, ``direction="download"``, downloads from) hosts matching
    ``pattern``, at most ``rate`` bytes per second each."""

    pattern: str
    direction: Direction
    rate: int

    def matches(self, host: str) -> bool:
        return any(fnmatch.fnmatchcase(name, self.pattern)
                   for name in (host, bare_hostname(host)))


@dataclass(frozen=True)
class BandwidthCaps:
    """Every cap; empty means unlimited everywhere (the default)."""

    caps: tuple[Cap, ...] = ()

    def __bool__(self) -> bool:
        return bool(self.caps)

    @functools.lru_cache(maxsize=1024)  # noqa: B019 - frozen, few instances, hosts repeat
    def rate(self, host: str, direction: Direction) -> int | None:
        """The cap on ``direction`` bytes for ``host`` (``host[:port]``), or None."""
        host = canonical_host(host)
        candidates = [c for c in self.caps if c.direction == direction and c.matches(host)]
        exact = [c for c in candidates if not _is_glob(c.pattern)]
        chosen = (exact or candidates)[:1]
        return chosen[0].rate if chosen else None


def parse_caps(value: str) -> BandwidthCaps:
    """``host=rate`` entries, comma- or whitespace-separated; ``source:host=rate`` caps
    downloads. Raises :class:`BandwidthError` naming the first bad entry."""
    caps: list[Cap] = []
    seen: set[tuple[str, Direction]] = set()
    for entry in value.replace(",", " ").split():
        pattern, equals, rate_text = entry.partition("=")
        direction: Direction = UPLOAD
        if pattern.lower().startswith(SOURCE_PREFIX):
            pattern, direction = pattern[len(SOURCE_PREFIX):], DOWNLOAD
        pattern = pattern.strip().lower()
        if not equals or not pattern or not rate_text.strip():
            raise BandwidthError(f"entry {entry!r}: give host=rate (e.g. "
                                 "harbor.example=40MiB, source:docker.io=20MiB)")
        if _HOST.fullmatch(pattern) is None:
            raise BandwidthError(f"entry {entry!r}: {pattern!r} is not a host name or pattern")
        try:
            rate = parse_rate(rate_text)
        except BandwidthError as exc:
            raise BandwidthError(f"entry {entry!r}: {exc}") from None
        if not _is_glob(pattern):
            pattern = canonical_host(pattern)
        if (pattern, direction) in seen:
            raise BandwidthError(f"entry {entry!r}: {pattern} is capped twice")
        seen.add((pattern, direction))
        caps.append(Cap(pattern, direction, rate))
    return BandwidthCaps(tuple(caps))


def _is_glob(pattern: str) -> bool:
    return any(ch in pattern for ch in "*?[")
