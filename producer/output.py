"""How results look: a line per destination and a summary for people, JSON for machines."""

from __future__ import annotations

import json
from collections.abc import Sequence, Set
from typing import TYPE_CHECKING, Any, TextIO

if TYPE_CHECKING:  # annotations only: `fanout --help` loads this module (status_cmd, table)
    from registry.results import CopyResult


def human_bytes(count: int) -> str:
    value = float(count)
    for unit in ("B", "kB", "MB", "GB"):
        if value < 1000 or unit == "GB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1000
    return f"{value:.1f} GB"  # pragma: no cover


def short_digest(digest: str) -> str:
    return digest[:19] if digest else "-"


def all_ok(results: Sequence[CopyResult], optional: Set[str] = frozenset()) -> bool:
    """Every required destination succeeded (every one, when all are optional)."""
    required = [r for r in results if r.destination not in optional] or list(results)
    return all(r.ok for r in required)


def result_line(result: CopyResult, optional: bool = False) -> str:
    status = "ok    " if result.ok else "FAILED"
    stats = result.stats
    name = f"{result.destination} (optional)" if optional else result.destination
    line = (f"{status} {name}  {short_digest(result.digest)}  "
            f"{human_bytes(stats.bytes_transferred)}  {result.seconds:.1f}s")
    if result.ok:
        detail = (f"blobs: {stats.blobs_uploaded} uploaded, {stats.blobs_mounted} mounted, "
                  f"{stats.blobs_skipped} present")
        if stats.referrers_copied:
            detail += f"; {stats.referrers_copied} referrers"
        if result.tags:
            detail += f"; tags: {', '.join(result.tags)}"
        return f"{line}  ({detail})"
    return f"{line}  error: {result.error}"


def print_results(results: Sequence[CopyResult], seconds: float, out: TextIO,
                  optional: Set[str] = frozenset()) -> None:
    for result in results:
        print(result_line(result, result.destination in optional), file=out)
    succeeded = sum(1 for r in results if r.ok)
    total = sum(r.stats.bytes_transferred for r in results)
    failed_optional = sum(1 for r in results if not r.ok and r.destination in optional)
    note = f" ({failed_optional} optional failed)" if failed_optional else ""
    print(f"{succeeded} of {len(results)} destinations succeeded{note}, "
          f"{human_bytes(total)} sent in {seconds:.1f}s", file=out)


def results_json(results: Sequence[CopyResult], seconds: float,
                 optional: Set[str] = frozenset()) -> str:
    document: dict[str, Any] = {
        "ok": all_ok(results, optional),
        "seconds": round(seconds, 3),
        "destinations": [{**r.to_dict(), "optional": r.destination in optional}
                         for r in results],
    }
    return json.dumps(document, indent=2)
