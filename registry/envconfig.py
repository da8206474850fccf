"""Turn an environment mapping into the core's settings. The edges (CLI, worker start) pass
``os.environ``; the core itself never reads the environment."""

from __future__ import annotations

import math
import os
import re
import tempfile
from collections.abc import Collection, Mapping
from dataclasses import replace
from pathlib import Path

from .bandwidth import BandwidthCaps, BandwidthError, parse_caps
from .options import (
    DEFAULT_BLOB_CONCURRENCY,
    DEFAULT_PRECONNECT,
    CopyOptions,
    TransportOptions,
)
from .retry import REQUEST_RETRY


class ConfigError(ValueError):
    """A setting that cannot be used; the message names the variable and the value's problem."""


def check_known_keys(value: Collection[str], keys: Collection[str], where: str) -> None:
    """A config table's keys are all known ones; else a :class:`ConfigError` naming the
    table, what is unknown and what is known (a typo should not be silently ignored)."""
    unknown = set(value) - set(keys)
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {', '.join(sorted(unknown))} "
                          f"(known: {', '.join(sorted(keys))})")


def split_list(value: str) -> list[str]:
    """Comma- or whitespace-separated items, blanks dropped."""
    return [item for item in value.replace(",", " ").split() if item]


def env_number(env: Mapping[str, str], name: str, default: float, *, minimum: float) -> float:
    """A finite number of at least ``minimum`` from ``env[name]``, else ``default``."""
    raw = env.get(name, "").strip()
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        raise ConfigError(f"{name}={raw!r} is not a number") from None
    if not math.isfinite(value) or value < minimum:
        raise ConfigError(f"{name}={raw!r} must be a number of at least {minimum:g}")
    return value


def parse_size(text: str, *, name: str = "size") -> int:
    """Bytes from ``8388608``, ``8M``, ``8MiB``, ``512k``."""
    raw = text.strip().upper().removesuffix("IB").removesuffix("B")
    scale = 1
    for suffix, factor in (("K", 1024), ("M", 1024**2), ("G", 1024**3)):
        if raw.endswith(suffix):
            raw, scale = raw[:-1], factor
            break
    try:
        value = int(float(raw) * scale)
    except ValueError:
        raise ConfigError(f"{name} {text!r} is not a size (try 8M or 8388608)") from None
    if value <= 0:
        raise ConfigError(f"{name} {text!r} must be positive")
    return value


_DURATION_UNITS = {"s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, "w": 604800.0}
_DURATION = re.compile(r"(?:\d+(?:\.\d+)?[smhdw])+")
_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)([smhdw])")


def parse_duration(text: str) -> float:
    """``30s``, ``90m``, ``2h``, ``7d``, ``1w``, ``1h30m`` → seconds, more than zero."""
    compact = text.strip().lower()
    if not _DURATION.fullmatch(compact):
        raise ConfigError(f"bad duration {text!r}: give a number and a unit, s, m, h, d or w "
                          "(e.g. 90m, 7d, 1h30m)")
    seconds = sum(float(number) * _DURATION_UNITS[unit]
                  for number, unit in _DURATION_PART.findall(compact))
    if seconds <= 0:
        raise ConfigError(f"bad duration {text!r}: must be more than zero")
    return seconds


def transport_options_from_env(
    env: Mapping[str, str], *, insecure: list[str] | None = None, ca_bundle: str | None = None,
    chunk_size: int | None = None,
) -> TransportOptions:
    """``FANOUT_INSECURE_REGISTRIES``, ``FANOUT_CA_BUNDLE``, ``FANOUT_CHUNK_SIZE``, the
    timeouts and ``FANOUT_PRECONNECT``, with explicit (flag) values added or winning."""
    hosts = set(split_list(env.get("FANOUT_INSECURE_REGISTRIES", "")))
    hosts.update(insecure or [])
    chunk = chunk_size
    if chunk is None and env.get("FANOUT_CHUNK_SIZE", "").strip():
        chunk = parse_size(env["FANOUT_CHUNK_SIZE"], name="FANOUT_CHUNK_SIZE")
    return TransportOptions(
        insecure_registries=frozenset(hosts),
        ca_bundle=ca_bundle or env.get("FANOUT_CA_BUNDLE") or None,
        connect_timeout=env_number(env, "FANOUT_CONNECT_TIMEOUT", 10.0, minimum=0.1),
        read_timeout=env_number(env, "FANOUT_READ_TIMEOUT", 60.0, minimum=0.1),
        chunk_size=chunk,
        preconnect=int(env_number(env, "FANOUT_PRECONNECT", DEFAULT_PRECONNECT, minimum=0)),
    )


def copy_options_from_env(
    env: Mapping[str, str], *, blob_concurrency: int | None = None, referrers: bool | None = None,
    referrer_types: tuple[str, ...] = (),
) -> CopyOptions:
    """``FANOUT_BLOB_CONCURRENCY``, ``FANOUT_REFERRERS`` (``0`` turns referrers off) and the
    request-tier retry policy (``FANOUT_REQUEST_ATTEMPTS``, ``FANOUT_REQUEST_MAX_ELAPSED``)."""
    concurrency = blob_concurrency or int(env_number(
        env, "FANOUT_BLOB_CONCURRENCY", DEFAULT_BLOB_CONCURRENCY, minimum=1))
    if referrers is None:
        referrers = env.get("FANOUT_REFERRERS", "1").strip().lower() not in ("0", "false", "no")
    retry = replace(
        REQUEST_RETRY,
        attempts=int(env_number(env, "FANOUT_REQUEST_ATTEMPTS", REQUEST_RETRY.attempts,
                                minimum=1)),
        max_elapsed=env_number(env, "FANOUT_REQUEST_MAX_ELAPSED", REQUEST_RETRY.max_elapsed,
                               minimum=0),
    )
    return CopyOptions(blob_concurrency=concurrency, referrers=referrers,
                       referrer_types=referrer_types, retry=retry)


# The spool's default budget: the blobs a worker host has in flight at once, with room to spare.
DEFAULT_SPOOL_BYTES = 2 * 1024**3


def default_spool_dir() -> str:
    """A directory of this user's under the system's temporary directory."""
    return str(Path(tempfile.gettempdir()) / f"fanout-spool-{os.getuid()}")


def spool_from_env(env: Mapping[str, str]) -> tuple[str, int]:
    """``FANOUT_SPOOL_DIR`` and ``FANOUT_SPOOL_BYTES`` (the budget; ``0`` turns it off): where
    source blobs are read once for every destination of the host (registry.spool)."""
    directory = env.get("FANOUT_SPOOL_DIR", "").strip() or default_spool_dir()
    raw = env.get("FANOUT_SPOOL_BYTES", "").strip()
    if raw == "0":
        return directory, 0
    return directory, (parse_size(raw, name="FANOUT_SPOOL_BYTES") if raw
                       else DEFAULT_SPOOL_BYTES)


def bandwidth_from_env(env: Mapping[str, str]) -> BandwidthCaps:
    """``FANOUT_BANDWIDTH``: bytes per second per host (``harbor.example=40MiB``, globs,
    ``source:`` for downloads; registry.bandwidth). Unset or blank: no caps."""
    try:
        return parse_caps(env.get("FANOUT_BANDWIDTH", ""))
    except BandwidthError as exc:
        raise ConfigError(f"FANOUT_BANDWIDTH: {exc}") from None
