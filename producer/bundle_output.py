"""How ``fanout export`` and ``fanout import`` report: a line per image and a summary for
people, one JSON document for machines."""

from __future__ import annotations

import json
from typing import Any, TextIO

from .bundle_results import BundleResult, ImageOutcome
from .output import human_bytes, short_digest


def image_line(image: ImageOutcome, *, command: str, dry_run: bool = False) -> str:
    status = "would " if dry_run else "ok     " if image.ok else "FAILED "
    arrow = "->" if command == "import" else "in"
    name = f"{image.repository}@{short_digest(image.digest)}"
    line = f"{status}{'push ' if dry_run else ''}{name} {arrow} {image.destination}"
    tags = f"tags: {', '.join(image.tags)}" if image.tags else "by digest (no tags)"
    if not image.ok:
        return f"{line}  error: {image.error}"
    detail = [tags]
    if not dry_run:
        detail.insert(0, human_bytes(image.bytes_transferred))
    if image.referrers:
        detail.append(f"{image.referrers} referrers")
    return f"{line}  ({'; '.join(detail)})"


def print_export(result: BundleResult, out: TextIO) -> None:
    for image in result.images:
        print(image_line(image, command="export"), file=out)
    failed = sum(1 for i in result.images if not i.ok)
    tags = sum(len(i.tags) for i in result.images)
    if failed:
        print(f"{failed} of {len(result.images)} images could not be read; "
              f"{result.bundle} was not written", file=out)
        return
    print(f"{len(result.images)} images, {tags} tags written to {result.bundle}: "
          f"{human_bytes(result.size or 0)}, sha256 {result.sha256}, {result.seconds:.1f}s",
          file=out)
    if result.base is not None:
        print(f"incremental on {result.base.describe()}: {len(result.blobs_left_out)} blobs "
              f"left out (import it where that bundle was imported)", file=out)


def print_import(result: BundleResult, out: TextIO) -> None:
    for image in result.images:
        print(image_line(image, command="import", dry_run=result.dry_run), file=out)
        if image.missing:
            for digest in image.missing:
                print(f"    missing at {image.destination}: {digest}", file=out)
    if result.dry_run:
        print(f"dry run: {len(result.images)} images would be pushed; nothing was", file=out)
        return
    pushed = sum(1 for i in result.images if i.ok)
    total = sum(i.bytes_transferred for i in result.images)
    print(f"{pushed} of {len(result.images)} images pushed, {human_bytes(total)} sent in "
          f"{result.seconds:.1f}s", file=out)


def _image_json(image: ImageOutcome) -> dict[str, Any]:
    return {"repository": image.repository, "digest": image.digest, "tags": list(image.tags),
            "destination": image.destination, "releases": list(image.releases),
            "ok": image.ok, "error": image.error, "bytes": image.bytes_transferred,
            "referrers": image.referrers, "missing": list(image.missing)}


def _document(result: BundleResult) -> dict[str, Any]:
    base = None if result.base is None else {
        "name": result.base.name, "sha256": result.base.sha256,
        "left_out": list(result.base.left_out or result.blobs_left_out)}
    return {"ok": result.ok, "bundle": result.bundle, "seconds": round(result.seconds, 3),
            "base": base, "images": [_image_json(i) for i in result.images]}


def export_json(result: BundleResult) -> str:
    return json.dumps({**_document(result), "sha256": result.sha256, "size": result.size},
                      indent=2)


def import_json(result: BundleResult) -> str:
    return json.dumps({**_document(result), "dry_run": result.dry_run}, indent=2)
