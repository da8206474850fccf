"""What a worker may copy from and to: ``FANOUT_ALLOWED_SOURCES`` and
``FANOUT_ALLOWED_DESTINATIONS``, comma-separated glob patterns of ``host/path``.

The broker is not a trust boundary of its own: anyone who can write a task message could
otherwise make the workers push any image anywhere with their credentials. Checked before the
copy starts, so a refused task sends no request at all, to any registry.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from fnmatch import fnmatchcase

from registry.envconfig import ConfigError
from registry.errors import PermanentError
from registry.reference import parse_reference, parse_repository

from .job import CopyJob


class PolicyDenied(PermanentError):
    """The task names a source or destination this worker is not allowed to use."""


def _patterns(env: Mapping[str, str], name: str) -> tuple[str, ...]:
    raw = env.get(name, "")
    patterns = tuple(part.strip().lower() for part in raw.split(",") if part.strip())
    for pattern in patterns:
        if "/" not in pattern:
            # A bare host pattern would be read as a repository name; say what was meant.
            raise ConfigError(f"{name}: {pattern!r} is not a host/path pattern "
                              f"(for every repository of a host: '{pattern}/*')")
    return patterns


@dataclass(frozen=True, slots=True)
class AccessPolicy:
    """Patterns are matched against the canonical repository (``docker.io/library/x`` for
    ``x``); ``*`` matches any run of characters, ``/`` included. No patterns: anything."""

    sources: tuple[str, ...] = ()
    destinations: tuple[str, ...] = ()

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> AccessPolicy:
        return cls(_patterns(env, "FANOUT_ALLOWED_SOURCES"),
                   _patterns(env, "FANOUT_ALLOWED_DESTINATIONS"))

    def check(self, job: CopyJob) -> None:
        """Raise :class:`PolicyDenied` unless ``job``'s source and destination are allowed."""
        source = str(parse_reference(job.source).repository)
        destination = str(parse_repository(job.destination))
        if not _allowed(source, self.sources):
            raise PolicyDenied(f"source {source} is not allowed on this worker "
                               "(FANOUT_ALLOWED_SOURCES)")
        if not _allowed(destination, self.destinations):
            raise PolicyDenied(f"destination {destination} is not allowed on this worker "
                               "(FANOUT_ALLOWED_DESTINATIONS)")


def _allowed(repository: str, patterns: tuple[str, ...]) -> bool:
    return not patterns or any(fnmatchcase(repository, pattern) for pattern in patterns)
