"""``[[mirrors]]`` and ``[verify]`` of ``fanout.toml``, checked into :class:`Mirror` and
:class:`VerifySchedule`.

::

    [[mirrors]]
    name = "nginx"                       # [a-z0-9-]+, unique
    source = "docker.io/library/nginx"   # a repository (no tag, no digest)
    tags = ["1.*", "stable"]             # globs of the tags to keep; none: every tag
    exclude = ["*-rc*", "*-perl"]        # globs dropped after tags
    versions = ">=1.25, <2"              # a version range over tags that parse as versions
    newest = 5                           # then only the newest N, in version order
    to = "mirrors"                       # a set of [destinations]; or destinations = [...]
    every = "1h"                         # how often the scheduler runs it; absent: on demand
    prune = false                        # delete destination tags that left the filtered source
    prune_limit = 3                      # cap per run; default 10% of the mirror's tags there

    [verify]
    every = "6h"                         # the scheduler runs fanout verify --since SINCE
    since = "7d"
    repair = true                        # ... --repair

Every error names the file, the mirror and the key. Filters are explained in
:mod:`workers.mirror_filter`.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence

from registry.envconfig import ConfigError, check_known_keys, parse_duration
from registry.errors import InvalidReference
from registry.reference import parse_repository

from . import mirror_filter
from .mirror_model import Mirror, VerifySchedule

_NAME = re.compile(r"[a-z0-9-]+")
MIRROR_KEYS = frozenset({"name", "source", "tags", "exclude", "versions", "newest", "to",
                         "destinations", "every", "prune", "prune_limit"})
VERIFY_KEYS = frozenset({"every", "since", "repair"})


def parse_mirrors(value: object, sets: Mapping[str, Sequence[str]],
                  optional_sets: Mapping[str, frozenset[str]], where: str) -> tuple[Mirror, ...]:
    """``[[mirrors]]``: every entry checked, ``to`` resolved against the destination sets."""
    if not isinstance(value, list) or not all(isinstance(v, Mapping) for v in value):
        raise ConfigError(f"{where}: mirrors must be an array of tables ([[mirrors]])")
    mirrors: list[Mirror] = []
    seen: set[str] = set()
    for index, entry in enumerate(value):
        mirror = _mirror(entry, sets, optional_sets, f"{where}: mirrors[{index}]")
        if mirror.name in seen:
            raise ConfigError(f"{where}: mirrors[{index}]: name: two mirrors are called "
                              f"{mirror.name!r}")
        seen.add(mirror.name)
        mirrors.append(mirror)
    return tuple(mirrors)


def parse_verify(value: object, where: str) -> VerifySchedule:
    """``[verify]``: ``every`` and ``since`` durations, ``repair`` true or false."""
    where = f"{where}: verify"
    if not isinstance(value, Mapping):
        raise ConfigError(f"{where} must be a table ([verify])")
    check_known_keys(value, VERIFY_KEYS, where)
    for key, example in (("every", "6h"), ("since", "7d")):
        if key not in value:
            raise ConfigError(f"{where}: {key} is required, e.g. {key} = \"{example}\"")
    return VerifySchedule(every=_duration(value, "every", where),
                          since=_duration(value, "since", where),
                          repair=_flag(value, "repair", where))


def _mirror(entry: Mapping[str, object], sets: Mapping[str, Sequence[str]],
            optional_sets: Mapping[str, frozenset[str]], where: str) -> Mirror:
    name = entry.get("name")
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise ConfigError(f"{where}: name must be lowercase letters, digits and '-' "
                          f"([a-z0-9-]+), not {name!r}")
    where = f"{where} ({name})"
    check_known_keys(entry, MIRROR_KEYS, where)
    source = _repository(entry.get("source"), f"{where}: source")
    destinations, to, optional = _destinations(entry, sets, optional_sets, where)
    if source in destinations:
        raise ConfigError(f"{where}: {'to' if to else 'destinations'}: {source} is the "
                          "source itself")
    versions = entry.get("versions")
    if versions is not None:
        if not isinstance(versions, str):
            raise ConfigError(f"{where}: versions must be a string, e.g. \">=1.25, <2\"")
        try:
            mirror_filter.check_range(versions)
        except ValueError as exc:
            raise ConfigError(f"{where}: versions: {exc}") from None
    return Mirror(name=name, source=source, destinations=destinations, to=to, optional=optional,
                  tags=_globs(entry, "tags", where), exclude=_globs(entry, "exclude", where),
                  versions=versions, newest=_count(entry, "newest", where),
                  every=_duration(entry, "every", where) if "every" in entry else None,
                  prune=_flag(entry, "prune", where),
                  prune_limit=_count(entry, "prune_limit", where))


def _destinations(entry: Mapping[str, object], sets: Mapping[str, Sequence[str]],
                  optional_sets: Mapping[str, frozenset[str]],
                  where: str) -> tuple[tuple[str, ...], str | None, frozenset[str]]:
    """(destinations, the set's name or None, those of them optional)."""
    has_to, has_list = "to" in entry, "destinations" in entry
    if has_to == has_list:
        raise ConfigError(f"{where}: give to = \"SET\" or destinations = [\"host/repo\", ...]"
                          f", {'not both' if has_to else 'one of them'}")
    if has_list:
        raw = entry["destinations"]
        if (not isinstance(raw, list) or not raw
                or not all(isinstance(item, str) for item in raw)):
            raise ConfigError(f"{where}: destinations must be a non-empty list of repositories")
        found = [_repository(item, f"{where}: destinations[{i}]") for i, item in enumerate(raw)]
        return _distinct(found, f"{where}: destinations"), None, frozenset()
    to = entry["to"]
    if not isinstance(to, str):
        raise ConfigError(f"{where}: to must name a set of [destinations]")
    if to not in sets:
        known = ", ".join(sorted(sets)) or "none"
        raise ConfigError(f"{where}: to: no destination set {to!r} in [destinations] "
                          f"(sets: {known})")
    optional: set[str] = set()
    found = []
    for item in sets[to]:
        repository = _repository(item, f"{where}: to: set {to!r}")
        found.append(repository)
        if item in optional_sets.get(to, frozenset()):
            optional.add(repository)
    return _distinct(found, f"{where}: to: set {to!r}"), to, frozenset(optional)


def _repository(value: object, where: str) -> str:
    """A repository, normalised (``nginx`` → ``docker.io/library/nginx``); no tag, no digest."""
    if not isinstance(value, str) or not value.strip():
        raise ConfigError(f"{where} must be a repository, e.g. \"ghcr.io/acme/app\"")
    try:
        return str(parse_repository(value.strip()))
    except InvalidReference as exc:
        raise ConfigError(f"{where}: {exc} (a mirror's source and destinations are "
                          "repositories: the mirror picks the tags)") from None


def _distinct(repositories: list[str], where: str) -> tuple[str, ...]:
    for repository in repositories:
        if repositories.count(repository) > 1:
            raise ConfigError(f"{where}: {repository} is named twice")
    return tuple(repositories)


def _globs(entry: Mapping[str, object], key: str, where: str) -> tuple[str, ...]:
    value = entry.get(key, [])
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ConfigError(f"{where}: {key} must be a list of globs, e.g. {key} = [\"1.*\"]")
    for glob in value:
        try:
            mirror_filter.check_glob(glob)
        except ValueError as exc:
            raise ConfigError(f"{where}: {key}: {exc}") from None
    return tuple(value)


def _count(entry: Mapping[str, object], key: str, where: str) -> int | None:
    value = entry.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"{where}: {key} must be a whole number, 1 or more, not {value!r}")
    return value


def _duration(entry: Mapping[str, object], key: str, where: str) -> float:
    value = entry.get(key)
    if not isinstance(value, str):
        raise ConfigError(f"{where}: {key} must be a duration such as \"30s\", \"15m\", "
                          f"\"1h\" or \"7d\", not {value!r}")
    try:
        return parse_duration(value)
    except ConfigError as exc:
        raise ConfigError(f"{where}: {key}: {exc}") from None


def _flag(entry: Mapping[str, object], key: str, where: str) -> bool:
    value = entry.get(key, False)
    if not isinstance(value, bool):
        raise ConfigError(f"{where}: {key} must be true or false")
    return value
