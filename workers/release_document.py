"""A release as a JSON document: what ``fanout status --json`` prints and a notification posts.

Plain data, no Redis or Celery: the producer prints it, the workers send it, and both build it
here so the two can never drift apart.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from .records import Release

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_TIMEOUT = 3


def exit_code(releases: Sequence[Release]) -> int:
    """0 every destination succeeded, 1 any failed for good, 3 some still running; optional
    destinations count for nothing (unless a release has only optional ones)."""
    states = [d.state for r in releases for d in r.required]
    if "failed" in states:
        return EXIT_FAILED
    if any(state != "succeeded" for state in states):
        return EXIT_TIMEOUT
    return EXIT_OK


def release_document(release: Release) -> dict[str, Any]:
    """The release's document: its ledger record plus the exit code ``fanout status`` gives."""
    document = release.to_dict()
    document["exit_code"] = exit_code([release])
    return document
