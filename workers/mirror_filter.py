"""Which of a source's tags a mirror keeps: ``tags`` globs, then ``exclude``, then ``versions``,
then the ``newest`` N.

Globs are :func:`fnmatch.fnmatchcase` patterns (``*``, ``?``, ``[...]``, case-sensitive), matched
against the whole tag. Versions are PEP 440 versions as ``packaging`` parses them: numbers compared
part by part (``1.22.10`` after ``1.22.9``, ``1.10`` after ``1.9``). How lenient that is:

=====================  ===========================================================
tag                    version
=====================  ===========================================================
``1.25``, ``1``        1.25, 1
``v1.25.3``            1.25.3 (a leading ``v`` or ``V`` is allowed)
``01.02``              1.2 (leading zeros dropped)
``20240101``           20240101 (a date-like number is a version)
``1.25.3-1``           1.25.3.post1 (a post-release: after 1.25.3)
``1.25.3-r1``          1.25.3.post1 (``r``/``rev``/``post``: post-releases)
``1.25-rc1``           1.25rc1, a pre-release (also ``a``, ``b``, ``c``, ``alpha``, ``beta``,
                       ``pre``, ``preview``)
``1.25.3-dev``         1.25.3.dev0, a pre-release
``1.25.3-alpine``      not a version (nor ``-debian``, ``-alpine3.19``, ``-perl``, ...)
``1.25.x``, ``1.25_1`` not a version
``latest``, ``stable`` not a version
=====================  ===========================================================

A tag that is not a version never passes ``versions`` or ``newest``. A pre-release passes them
only when the ``versions`` range itself names a pre-release (``>=1.26rc1``); so ``newest`` without
such a range counts final releases (and post-releases) only. Without ``versions`` and ``newest``,
versions play no part and the globs alone decide.

Order: versions newest first (equal versions, ``v1.2`` and ``1.2``, by tag, descending), then the
tags that are not versions by name. ``select`` returns that order, and ``newest`` keeps its head.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from fnmatch import fnmatchcase
from functools import lru_cache

from packaging.specifiers import InvalidSpecifier, SpecifierSet
from packaging.version import InvalidVersion, Version

from .mirror_model import Mirror

# What may stand outside brackets in a glob: a tag's own characters, and * and ?.
_GLOB_OUTSIDE = re.compile(r"[A-Za-z0-9_.*?-]*")


def check_glob(pattern: str) -> str:
    """``pattern`` if it is a glob that can match a tag; ValueError saying why not.

    Bad: empty; an unclosed ``[``; a stray ``]``; any character no tag holds (``/``, ``:``,
    ``+``, ``^``, a space, ...), since such a pattern matches nothing (or is a regex by mistake).
    """
    if not pattern:
        raise ValueError("an empty glob matches no tag")
    outside: list[str] = []
    i = 0
    while i < len(pattern):
        char = pattern[i]
        if char == "[":
            # fnmatch's rule: an optional '!', then a ']' right away is literal, then up to ']'.
            j = i + 1
            if j < len(pattern) and pattern[j] == "!":
                j += 1
            if j < len(pattern) and pattern[j] == "]":
                j += 1
            close = pattern.find("]", j)
            if close < 0:
                raise ValueError(f"glob {pattern!r} has a '[' that is never closed")
            i = close + 1
            continue
        if char == "]":
            raise ValueError(f"glob {pattern!r} has a ']' that closes no '['")
        outside.append(char)
        i += 1
    if not _GLOB_OUTSIDE.fullmatch("".join(outside)):
        raise ValueError(f"glob {pattern!r} holds characters no tag has (tags are letters, "
                         "digits, '_', '.' and '-'; a glob adds *, ? and [...])")
    return pattern


def check_range(text: str) -> SpecifierSet:
    """The version range ``text`` (``>=1.25, <2``: comma is and); ValueError if it is not one."""
    if not text.strip():
        raise ValueError("an empty version range (leave versions out to keep every version)")
    try:
        return _range(text)
    except InvalidSpecifier:
        raise ValueError(f"bad version range {text!r}: write comparisons joined by commas, "
                         "e.g. \">=1.25, <2\" or \"==1.*\"") from None


@lru_cache(maxsize=256)
def _range(text: str) -> SpecifierSet:
    return SpecifierSet(text)


def version_of(tag: str) -> Version | None:
    """The version ``tag`` names (see the table above), or None when it names none."""
    try:
        return Version(tag)
    except InvalidVersion:
        return None


def order(tags: Iterable[str]) -> list[str]:
    """``tags`` in a mirror's order: versions newest first, then the others by name."""
    versions: list[tuple[Version, str]] = []
    others: list[str] = []
    for tag in dict.fromkeys(tags):
        version = version_of(tag)
        if version is None:
            others.append(tag)
        else:
            versions.append((version, tag))
    versions.sort(reverse=True)
    return [tag for _, tag in versions] + sorted(others)


def matches(mirror: Mirror, tag: str) -> bool:
    """``tag`` passes the mirror's own filters: globs, exclude, versions, and (for ``newest``)
    being a version at all — every filter but the cut to N. What prune may touch."""
    if mirror.tags and not any(fnmatchcase(tag, glob) for glob in mirror.tags):
        return False
    if any(fnmatchcase(tag, glob) for glob in mirror.exclude):
        return False
    if mirror.versions is None and mirror.newest is None:
        return True
    version = version_of(tag)
    if version is None:
        return False
    if mirror.versions is None:
        return not version.is_prerelease
    wanted = _range(mirror.versions)
    if version.is_prerelease and wanted.prereleases is not True:
        return False
    # Pre-releases were decided above; packaging's own default differs between its versions.
    return wanted.contains(version, prereleases=True)


def select(mirror: Mirror, tags: Iterable[str]) -> list[str]:
    """The tags the mirror keeps, in :func:`order`: those that :func:`matches`, cut to the
    ``newest`` N."""
    kept = order(tag for tag in tags if matches(mirror, tag))
    return kept[:mirror.newest] if mirror.newest is not None else kept
