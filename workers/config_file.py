"""``fanout.toml``: named destination sets and per-registry options, read by the producer,
``fanout serve`` and the scheduler (which is why it lives in ``workers/``, below them all).

::

    default = "release"            # the set used when neither DEST nor --to is given

    [destinations]
    release = ["ghcr.io/acme/app", "quay.io/acme/app:stable"]
    mirrors = ["harbor.internal:8443/mirror/app",
               { to = "registry.airgap.example/app", optional = true }]

    [registries."harbor.internal:8443"]
    insecure = true                # plain HTTP to this registry (loopback always may)

    [[mirrors]]                    # kept in sync by fanout sync and the scheduler
    name = "nginx"
    source = "docker.io/library/nginx"
    tags = ["1.*"]
    to = "mirrors"

    [verify]                       # the scheduler's fanout verify
    every = "6h"
    since = "7d"

Found at ``--config PATH``, else ``$FANOUT_CONFIG``, else ``./fanout.toml``; a missing default
file is no error (an explicitly named one is). Registry options apply where the producer talks to
registries (resolving the source); workers take theirs from their own environment.
``[[mirrors]]`` and ``[verify]`` are :mod:`workers.mirror_config`'s.
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from registry.envconfig import ConfigError, check_known_keys, split_list

from .mirror_config import parse_mirrors, parse_verify
from .mirror_model import Mirror, VerifySchedule

DEFAULT_FILE = "fanout.toml"
_REGISTRY_KEYS = frozenset({"insecure"})
_ENTRY_KEYS = frozenset({"to", "optional"})
# tokens, rules and hooks are read by `fanout serve` (service/config.py) and ignored here.
_TOP_KEYS = frozenset({"default", "destinations", "registries", "mirrors", "verify", "tokens",
                       "rules", "hooks"})


@dataclass(frozen=True, slots=True)
class RegistryOptions:
    insecure: bool = False


@dataclass(frozen=True, slots=True)
class FanoutConfig:
    """What ``fanout.toml`` says; an empty one when there is no file."""

    destination_sets: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    default_set: str | None = None
    registries: Mapping[str, RegistryOptions] = field(default_factory=dict)
    path: Path | None = None
    # Per set, its destinations marked ``optional = true``: copied, but free to fail.
    optional_sets: Mapping[str, frozenset[str]] = field(default_factory=dict)
    mirrors: tuple[Mirror, ...] = ()
    verify: VerifySchedule | None = None  # None: the scheduler does not verify

    @property
    def insecure_registries(self) -> list[str]:
        return sorted(host for host, options in self.registries.items() if options.insecure)

    def destination_set(self, name: str | None) -> tuple[str, ...] | None:
        """The set called ``name``, or the default set when ``name`` is None (None if none)."""
        where = f" in {self.path}" if self.path else ""
        if name is None:
            name = self.default_set
            if name is None:
                return None
        found = self.destination_sets.get(name)
        if found is None:
            known = ", ".join(sorted(self.destination_sets)) or "none"
            raise ConfigError(f"no destination set {name!r}{where} (sets: {known})")
        return found

    def mirror(self, name: str) -> Mirror:
        """The mirror called ``name``; ConfigError naming the known ones if there is none."""
        for mirror in self.mirrors:
            if mirror.name == name:
                return mirror
        where = f" in {self.path}" if self.path else ""
        known = ", ".join(m.name for m in self.mirrors) or "none"
        raise ConfigError(f"no mirror {name!r}{where} (mirrors: {known})")

    def optional_in(self, name: str | None) -> frozenset[str]:
        """The destinations of set ``name`` (None: the default set) marked optional."""
        name = self.default_set if name is None else name
        return self.optional_sets.get(name, frozenset()) if name is not None else frozenset()


def load_config(path: str | os.PathLike[str] | None, env: Mapping[str, str]) -> FanoutConfig:
    """Read the config file named by ``path``, ``FANOUT_CONFIG`` or the default location."""
    explicit = path or env.get("FANOUT_CONFIG") or None
    file = Path(explicit) if explicit else Path(DEFAULT_FILE)
    try:
        text = file.read_text(encoding="utf-8")
    except FileNotFoundError:
        if explicit:
            raise ConfigError(f"config file {file} does not exist") from None
        return FanoutConfig()
    except OSError as exc:
        raise ConfigError(f"config file {file}: {exc.strerror}") from None
    try:
        document = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {file}: {exc}") from None
    return parse_config(document, file)


def parse_config(document: Mapping[str, Any], path: Path | None = None) -> FanoutConfig:
    """Check and convert a parsed TOML document; errors name the file and the key."""
    where = str(path) if path else "config"
    check_known_keys(document, _TOP_KEYS, where)
    sets: dict[str, tuple[str, ...]] = {}
    optional: dict[str, frozenset[str]] = {}
    raw_sets = document.get("destinations", {})
    if not isinstance(raw_sets, Mapping):
        raise ConfigError(f"{where}: [destinations] must be a table of name = [repositories]")
    for name, value in raw_sets.items():
        sets[name], optional[name] = _repository_list(value, f"{where}: destinations.{name}")
    default = document.get("default")
    if default is not None and (not isinstance(default, str) or default not in sets):
        raise ConfigError(f"{where}: default = {default!r} names no set in [destinations]")
    registries: dict[str, RegistryOptions] = {}
    raw_registries = document.get("registries", {})
    if not isinstance(raw_registries, Mapping):
        raise ConfigError(f"{where}: [registries] must be a table of host = {{options}}")
    for host, options in raw_registries.items():
        registries[host] = _registry_options(options, f"{where}: registries.{host!r}")
    mirrors = parse_mirrors(document.get("mirrors", []), sets, optional, where)
    verify = parse_verify(document["verify"], where) if "verify" in document else None
    return FanoutConfig(sets, default, registries, path, optional, mirrors, verify)


def _repository_list(value: object, where: str) -> tuple[tuple[str, ...], frozenset[str]]:
    """A set's destinations, and those of them marked optional."""
    if isinstance(value, str):
        return _nonempty(split_list(value), where), frozenset()
    if not isinstance(value, Sequence):
        raise ConfigError(f"{where} must be a list of repositories")
    items: list[str] = []
    optional: set[str] = set()
    for index, entry in enumerate(value):
        if isinstance(entry, str):
            if entry.strip():
                items.append(entry.strip())
            continue
        destination, is_optional = _entry(entry, f"{where}[{index}]")
        items.append(destination)
        if is_optional:
            optional.add(destination)
    return _nonempty(items, where), frozenset(optional)


def _entry(value: object, where: str) -> tuple[str, bool]:
    """``{ to = "host/repo[:tag]", optional = true }``."""
    if not isinstance(value, Mapping):
        raise ConfigError(f"{where} must be a repository or a table "
                          '{ to = "host/repo", optional = true }')
    check_known_keys(value, _ENTRY_KEYS, where)
    to = value.get("to")
    if not isinstance(to, str) or not to.strip():
        raise ConfigError(f"{where}: to must be a repository, e.g. to = \"host/repo\"")
    optional = value.get("optional", False)
    if not isinstance(optional, bool):
        raise ConfigError(f"{where}: optional must be true or false")
    return to.strip(), optional


def _nonempty(items: Sequence[str], where: str) -> tuple[str, ...]:
    if not items:
        raise ConfigError(f"{where} is empty")
    return tuple(items)


def _registry_options(value: object, where: str) -> RegistryOptions:
    if not isinstance(value, Mapping):
        raise ConfigError(f"{where} must be a table")
    unknown = set(value) - _REGISTRY_KEYS
    if unknown:
        raise ConfigError(f"{where}: unknown option(s) {', '.join(sorted(unknown))}")
    insecure = value.get("insecure", False)
    if not isinstance(insecure, bool):
        raise ConfigError(f"{where}: insecure must be true or false")
    return RegistryOptions(insecure=insecure)
