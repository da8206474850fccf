"""A release as people read it: a header, one row per destination with its attempts under it,
a summary line."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, TextIO

if TYPE_CHECKING:
    from workers.ledger import Attempt, DestinationRecord, Release


from .output import human_bytes, short_digest

COLUMNS = ("DESTINATION", "STATE", "ATTEMPTS", "BYTES", "DURATION", "LAST ERROR")
_ERROR_WIDTH = 120


def duration(record: DestinationRecord, now: float) -> str:
    """Time spent so far (running) or in total (finished); ``-`` before the first attempt."""
    if record.started_at is None:
        return "-"
    if record.state in ("succeeded", "failed") and record.seconds:
        return f"{record.seconds:.1f}s"
    end = record.finished_at if record.finished_at is not None else now
    return f"{max(0.0, end - record.started_at):.1f}s"


def state_text(record: DestinationRecord, now: float) -> str:
    if record.state == "retrying" and record.next_retry_at is not None:
        return f"retrying (in {max(0.0, record.next_retry_at - now):.0f}s)"
    return record.state


def error_text(record: DestinationRecord) -> str:
    return _one_line(record.last_error, record.error_type)


def _one_line(error: str | None, error_type: str | None) -> str:
    if not error:
        return ""
    text = " ".join(error.split())
    if error_type:
        text = f"{error_type}: {text}"
    return text if len(text) <= _ERROR_WIDTH else text[: _ERROR_WIDTH - 1] + "…"


def rows(release: Release, now: float) -> list[tuple[str, ...]]:
    return [
        (f"{name} (optional)" if rec.optional else name, state_text(rec, now), str(rec.attempts),
         human_bytes(rec.bytes) if rec.bytes else "-", duration(rec, now), error_text(rec))
        for name, rec in sorted(release.destinations.items())
    ]


def superseded_lines(record: DestinationRecord) -> list[str]:
    """The tags this release left to a newer one there (the tag order rule), a line each."""
    return [f"    tag {tag}: superseded by {newer}"
            for tag, newer in sorted(record.superseded.items())]


def history_lines(record: DestinationRecord) -> list[str]:
    """Every finished attempt of a destination, oldest first: number, worker, start and end,
    outcome, error. An operator's retry is marked where its round began."""
    lines = []
    retried = record.round_base > 0
    for attempt in record.history:
        if retried and attempt.attempt > record.round_base:
            when = _clock(record.round_at) if record.round_at else "?"
            lines.append(f"    -- retried at {when}")
            retried = False
        lines.append(f"    {attempt_text(attempt)}")
    return lines


def attempt_text(attempt: Attempt) -> str:
    started = _clock(attempt.started_at) if attempt.started_at else "?"
    took = (f" ({attempt.ended_at - attempt.started_at:.1f}s)"
            if attempt.started_at is not None else "")
    text = (f"#{attempt.attempt}  {attempt.worker or '-'}  {started} -> "
            f"{time.strftime('%H:%M:%S', time.localtime(attempt.ended_at))}{took}  "
            f"{attempt.outcome}")
    error = _one_line(attempt.error, attempt.error_type)
    return f"{text}  {error}" if error else text


def _clock(timestamp: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(timestamp))


def summary(release: Release) -> str:
    counts: dict[str, int] = {}
    for record in release.destinations.values():
        counts[record.state] = counts.get(record.state, 0) + 1
    order = ("succeeded", "failed", "retrying", "running", "queued")
    parts = [f"{counts[s]} {s}" for s in order if counts.get(s)]
    superseded = sum(len(record.superseded) for record in release.destinations.values())
    if superseded:
        parts.append(f"{superseded} tag{'' if superseded == 1 else 's'} superseded by newer "
                     "releases")
    count = len(release.destinations)
    optional = sum(1 for record in release.destinations.values() if record.optional)
    kinds = f" ({optional} optional)" if optional else ""
    return (f"{count} destination{'' if count == 1 else 's'}{kinds}: "
            f"{', '.join(parts) or 'none'}")


def render(release: Release, *, now: float | None = None) -> str:
    """The status table of one release, as text without a trailing newline."""
    now = time.time() if now is None else now
    created = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(release.created_at))
    lines = [f"release {release.id}  source {release.source}",
             f"digest  {short_digest(release.digest)}…  created {created}", ""]
    table = [COLUMNS, *rows(release, now)]
    widths = [max(len(row[i]) for row in table) for i in range(len(COLUMNS) - 1)]
    records = [None, *(record for _, record in sorted(release.destinations.items()))]
    for row, record in zip(table, records, strict=True):
        cells = [cell.ljust(width) for cell, width in zip(row, widths, strict=False)]
        lines.append("  ".join([*cells, row[-1]]).rstrip())
        if record is not None:
            lines += superseded_lines(record)
            lines += history_lines(record)
    lines += ["", summary(release)]
    return "\n".join(lines)


def print_releases(releases: Sequence[Release], out: TextIO,
                   clock: Callable[[], float] = time.time) -> None:
    for index, release in enumerate(releases):
        if index:
            print(file=out)
        print(render(release, now=clock()), file=out)


def print_recent(releases: Sequence[Release], out: TextIO) -> None:
    """One line per release, newest first: id, when, source, and how its destinations stand."""
    if not releases:
        print("no releases in the ledger", file=out)
        return
    for release in releases:
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(release.created_at))
        print(f"{release.id}  {when}  {release.source}  {summary(release)}", file=out)
