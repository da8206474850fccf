"""How results look: a line per destination and a summary for people, JSON for machines."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any, TextIO

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


def result_line(result: CopyResult) -> str:
    status = "ok    " if result.ok else "FAILED"
    stats = result.stats
    line = (f"{status} {result.destination}  {short_digest(result.digest)}  "
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


def print_results(results: Sequence[CopyResult], seconds: float, out: TextIO) -> None:
    for result in results:
        print(result_line(result), file=out)
    succeeded = sum(1 for r in results if r.ok)
    total = sum(r.stats.bytes_transferred for r in results)
    print(f"{succeeded} of {len(results)} destinations succeeded, "
          f"{human_bytes(total)} sent in {seconds:.1f}s", file=out)


def results_json(results: Sequence[CopyResult], seconds: float) -> str:
    document: dict[str, Any] = {
        "ok": all(r.ok for r in results),
        "seconds": round(seconds, 3),
        "destinations": [r.to_dict() for r in results],
    }
    return json.dumps(document, indent=2)
