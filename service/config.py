"""What ``fanout serve`` reads from ``fanout.toml``: tokens, webhook rules and hook settings.

::

    [[tokens]]
    name = "ci"
    sha256 = "<hex sha256 of the token>"     # never the token itself
    sets = ["release"]                       # destination sets it may enqueue to ("*": all)
    sources = ["ghcr.io/acme/*"]             # source repositories it may copy from

    [[rules]]
    source = "registry.corp/acme/*"          # pattern of the pushed repository
    tags = ["v*"]                            # optional tag patterns
    to = "release"                           # the destination set

    [hooks]
    dedup_seconds = 600                      # the same push again within this: one release
    [hooks.github]
    secret_env = "FANOUT_GITHUB_HOOK_SECRET" # the HMAC secret, read from the environment
    registry = "ghcr.io"                     # the host pushed repositories are named under

The destination sets and registry options are :mod:`workers.config_file`'s; this module adds the
sections only the service reads, and checks them once at start: a bad file stops the server
with a message naming the key, rather than failing each request.
"""

from __future__ import annotations

import os
import re
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from registry.envconfig import ConfigError, check_known_keys
from workers.config_file import DEFAULT_FILE, FanoutConfig, parse_config

HOOK_KINDS = ("distribution", "harbor", "github", "dockerhub", "quay")
DEFAULT_DEDUP_SECONDS = 600.0
_SHA256 = re.compile(r"[0-9a-f]{64}")
_TOKEN_KEYS = frozenset({"name", "sha256", "sets", "sources"})
_RULE_KEYS = frozenset({"source", "tags", "to"})
_HOOK_KEYS = frozenset({"secret_env", "registry"})
SERVICE_KEYS = frozenset({"tokens", "rules", "hooks"})


@dataclass(frozen=True, slots=True)
class TokenGrant:
    """A token's name and what it may do; the token itself is known only by its hash."""

    name: str
    sha256: str
    sets: tuple[str, ...]
    sources: tuple[str, ...]

    def may_use_set(self, name: str) -> bool:
        return "*" in self.sets or name in self.sets


@dataclass(frozen=True, slots=True)
class Rule:
    """A pushed repository matching ``source`` (and a tag matching ``tags``) goes to set ``to``."""

    source: str
    tags: tuple[str, ...]
    to: str


@dataclass(frozen=True, slots=True)
class HookSettings:
    """One webhook kind's settings: where its secret is, and the registry host it names."""

    kind: str
    secret_env: str | None = None
    registry: str | None = None

    def secret(self, env: Mapping[str, str]) -> str | None:
        return env.get(self.secret_env) or None if self.secret_env else None


@dataclass(frozen=True, slots=True)
class ServeConfig:
    """Everything ``fanout serve`` was configured with."""

    fanout: FanoutConfig
    tokens: tuple[TokenGrant, ...] = ()
    rules: tuple[Rule, ...] = ()
    hooks: Mapping[str, HookSettings] = field(default_factory=dict)
    dedup_seconds: float = DEFAULT_DEDUP_SECONDS

    def hook(self, kind: str) -> HookSettings:
        return self.hooks.get(kind) or HookSettings(kind)


def load_serve_config(path: str | os.PathLike[str] | None, env: Mapping[str, str]) -> ServeConfig:
    """Read ``path``, ``FANOUT_CONFIG`` or ``./fanout.toml``; the service needs one, with tokens."""
    file = Path(path or env.get("FANOUT_CONFIG") or DEFAULT_FILE)
    try:
        document = tomllib.loads(file.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"config file {file} does not exist (fanout serve needs its "
                          "[[tokens]])") from None
    except OSError as exc:
        raise ConfigError(f"config file {file}: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {file}: {exc}") from None
    config = parse_serve_config(document, file)
    if not config.tokens:
        raise ConfigError(f"{file}: no [[tokens]]: nobody could use the service")
    return config


def parse_serve_config(document: Mapping[str, Any], path: Path | None = None) -> ServeConfig:
    """Check and convert a parsed document; errors name the file and the key."""
    where = str(path) if path else "config"
    fanout = parse_config(document, path)
    raw_tokens = _tables(document.get("tokens", []), f"{where}: tokens")
    tokens = tuple(_token(entry, f"{where}: tokens[{i}]", fanout)
                   for i, entry in enumerate(raw_tokens))
    names = [t.name for t in tokens]
    if len(set(names)) != len(names):
        raise ConfigError(f"{where}: two [[tokens]] share a name")
    hashes = [t.sha256 for t in tokens]
    if len(set(hashes)) != len(hashes):
        raise ConfigError(f"{where}: two [[tokens]] have the same sha256")
    rules = tuple(_rule(entry, f"{where}: rules[{i}]", fanout)
                  for i, entry in enumerate(_tables(document.get("rules", []), f"{where}: rules")))
    hooks, dedup = _hooks(document.get("hooks", {}), f"{where}: hooks")
    return ServeConfig(fanout, tokens, rules, hooks, dedup)


def _tables(value: object, where: str) -> list[Mapping[str, Any]]:
    if not isinstance(value, list) or not all(isinstance(v, Mapping) for v in value):
        raise ConfigError(f"{where} must be an array of tables ([[...]])")
    return value


def _text(value: Mapping[str, Any], key: str, where: str) -> str:
    found = value.get(key)
    if not isinstance(found, str) or not found.strip():
        raise ConfigError(f"{where}: {key} must be a non-empty string")
    return found.strip()


def _texts(value: Mapping[str, Any], key: str, where: str) -> tuple[str, ...]:
    found = value.get(key, [])
    if not isinstance(found, Sequence) or isinstance(found, str) or not all(
            isinstance(v, str) and v.strip() for v in found):
        raise ConfigError(f"{where}: {key} must be a list of strings")
    return tuple(v.strip() for v in found)


def _patterns(value: Mapping[str, Any], key: str, where: str) -> tuple[str, ...]:
    patterns = tuple(p.lower() for p in _texts(value, key, where))
    for pattern in patterns:
        if "/" not in pattern:
            raise ConfigError(f"{where}: {key}: {pattern!r} is not a host/path pattern "
                              f"(for every repository of a host: '{pattern}/*')")
    return patterns


def _check_set(name: str, fanout: FanoutConfig, where: str) -> None:
    if name != "*" and name not in fanout.destination_sets:
        known = ", ".join(sorted(fanout.destination_sets)) or "none"
        raise ConfigError(f"{where}: no destination set {name!r} in [destinations] "
                          f"(sets: {known})")


def _token(value: Mapping[str, Any], where: str, fanout: FanoutConfig) -> TokenGrant:
    check_known_keys(value, _TOKEN_KEYS, where)
    name = _text(value, "name", where)
    digest = _text(value, "sha256", where).lower()
    if not _SHA256.fullmatch(digest):
        raise ConfigError(f"{where} ({name}): sha256 must be 64 hex digits, the sha256 of the "
                          "token (printf %s \"$TOKEN\" | sha256sum), never the token")
    sets = _texts(value, "sets", where)
    for set_name in sets:
        _check_set(set_name, fanout, f"{where} ({name}): sets")
    return TokenGrant(name, digest, sets, _patterns(value, "sources", where))


def _rule(value: Mapping[str, Any], where: str, fanout: FanoutConfig) -> Rule:
    check_known_keys(value, _RULE_KEYS, where)
    source = _patterns({"source": [_text(value, "source", where)]}, "source", where)[0]
    to = _text(value, "to", where)
    _check_set(to, fanout, f"{where}: to")
    if to == "*":
        raise ConfigError(f"{where}: to must name one destination set")
    return Rule(source, _texts(value, "tags", where), to)


def _hooks(value: object, where: str) -> tuple[dict[str, HookSettings], float]:
    if not isinstance(value, Mapping):
        raise ConfigError(f"{where} must be a table")
    dedup = value.get("dedup_seconds", DEFAULT_DEDUP_SECONDS)
    if isinstance(dedup, bool) or not isinstance(dedup, int | float) or dedup < 0:
        raise ConfigError(f"{where}: dedup_seconds must be a number of seconds, 0 or more")
    hooks: dict[str, HookSettings] = {}
    for kind, settings in value.items():
        if kind == "dedup_seconds":
            continue
        if kind not in HOOK_KINDS:
            raise ConfigError(f"{where}: unknown hook kind {kind!r} "
                              f"(known: {', '.join(HOOK_KINDS)})")
        if not isinstance(settings, Mapping):
            raise ConfigError(f"{where}.{kind} must be a table")
        check_known_keys(settings, _HOOK_KEYS, f"{where}.{kind}")
        secret_env = settings.get("secret_env")
        registry = settings.get("registry")
        for key, found in (("secret_env", secret_env), ("registry", registry)):
            if found is not None and (not isinstance(found, str) or not found.strip()):
                raise ConfigError(f"{where}.{kind}: {key} must be a non-empty string")
        hooks[kind] = HookSettings(kind, secret_env, registry.lower() if registry else None)
    return hooks, float(dedup)
