"""``fanout check DEST…``: before a destination joins a release, can fanout push there?

``fanout --help`` builds this command's parser, so the engine (httpx) loads when it runs.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, TextIO

from .common import UsageError, add_transport_flags
from .output import human_bytes

if TYPE_CHECKING:
    import httpx

    from registry.options import TransportOptions
    from registry.preflight import DestinationCheck
    from registry.reference import Reference

COLUMNS = ("DESTINATION", "READY", "SCHEME", "AUTH", "CREDENTIALS", "PULL", "PUSH",
           "REPOSITORY", "MOUNTS", "REFERRERS", "DELETE", "CHUNKS")


def add_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = commands.add_parser(
        "check", help="check that each destination is ready: reachable, credentials, push",
        description="For each DEST: is the registry reachable (and over HTTPS or HTTP), which "
                    "auth it asks for and whether the credentials work, whether fanout may "
                    "pull and push there (an upload is opened and cancelled: nothing is "
                    "written), whether the repository exists, whether it may delete there "
                    "(for a mirror's prune: a digest no manifest has is deleted), and what "
                    "is known of mounts, the referrers API and chunk rules. Exit 0 when "
                    "every destination is ready, 1 when any is not, 2 for usage errors "
                    "(nothing contacted).",
    )
    parser.add_argument("destinations", metavar="DEST", nargs="+",
                        help="repository, optionally with a tag")
    parser.add_argument("--json", action="store_true",
                        help="print a JSON list, an object per destination")
    add_transport_flags(parser)  # the same flags, and the same environment, as `fanout copy`
    parser.set_defaults(run=run)


def parse_targets(texts: Sequence[str]) -> list[Reference]:
    """Destinations as ``fanout copy`` takes them: a repository, optionally with a tag."""
    from .inputs import destination_references

    if not texts:
        raise UsageError("no destinations given")
    return destination_references(texts)


async def check_all(
    targets: Sequence[Reference],
    *,
    options: TransportOptions,
    env: Mapping[str, str],
    transport: httpx.AsyncBaseTransport | None = None,
) -> list[DestinationCheck]:
    """Check every destination at once, with the credentials ``env`` leads to."""
    from registry.preflight import check_destinations
    from registry.session import Registries

    from .inputs import credentials

    async with Registries(credentials(env), options, transport=transport) as registries:
        return await check_destinations(registries, targets)


def run(args: argparse.Namespace) -> int:
    import asyncio

    from .inputs import transport_options

    env = os.environ
    targets = parse_targets(args.destinations)
    options = transport_options(args, env)
    checks = asyncio.run(check_all(targets, options=options, env=env))
    if args.json:
        print(json.dumps([c.to_dict() for c in checks], indent=2))
    else:
        print_checks(checks, sys.stdout)
    return 0 if all(c.ready for c in checks) else 1


# -- the table ---------------------------------------------------------------------------------


def _answer(value: bool | None) -> str:
    return "unknown" if value is None else "yes" if value else "no"


def delete_text(check: DestinationCheck) -> str:
    """``yes``, ``disabled`` (at the registry), ``denied`` (to these credentials), ``unknown``."""
    if check.delete:
        return "yes"
    return check.delete_refusal or "unknown"


def chunk_text(check: DestinationCheck) -> str:
    """The chunk rules known: ``min 5.2 MB, max 100.0 MB, chunks only``, or ``-``."""
    parts = []
    if check.chunk_min:
        parts.append(f"min {human_bytes(check.chunk_min)}")
    if check.chunk_max:
        parts.append(f"max {human_bytes(check.chunk_max)}")
    if check.whole_blob is False:
        parts.append("chunks only")
    return ", ".join(parts) or "-"


def row(check: DestinationCheck) -> tuple[str, ...]:
    reached = bool(check.reachable)
    return (
        check.destination,
        "yes" if check.ready else "NO",
        check.scheme or "-",
        check.auth or "-",
        check.credentials,
        _answer(check.pull) if reached else "-",
        _answer(check.push) if reached else "-",
        _answer(check.repository_exists) if reached else "-",
        _answer(check.mounts),
        _answer(check.referrers_api) if reached else "-",
        delete_text(check) if reached else "-",
        chunk_text(check),
    )


def render(checks: Sequence[DestinationCheck]) -> str:
    """The table, then each destination's problems, then a summary; no trailing newline."""
    table = [COLUMNS, *(row(c) for c in checks)]
    widths = [max(len(r[i]) for r in table) for i in range(len(COLUMNS) - 1)]
    lines = []
    for cells in table:
        padded = [cell.ljust(width) for cell, width in zip(cells, widths, strict=False)]
        lines.append("  ".join([*padded, cells[-1]]).rstrip())
    problems = [f"{c.destination}: {p}" for c in checks for p in c.problems]
    if problems:
        lines += ["", "problems:", *(f"  {p}" for p in problems)]
    ready = sum(1 for c in checks if c.ready)
    count = len(checks)
    lines += ["", f"{count} destination{'' if count == 1 else 's'}: {ready} ready"
                  + (f", {count - ready} not ready" if count != ready else "")]
    return "\n".join(lines)


def print_checks(checks: Sequence[DestinationCheck], out: TextIO) -> None:
    print(render(checks), file=out)
